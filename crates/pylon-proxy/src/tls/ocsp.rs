//! OCSP stapling (RFC 6960, RFC 6066 `status_request`): for each served certificate whose
//! Authority Information Access names an OCSP responder, a [`Stapler`] fetches the
//! certificate's status, keeps the latest response, staples it to handshakes (rustls's
//! `CertifiedKey::ocsp`), caches it on disk, and refreshes it halfway to its
//! `nextUpdate`. A responder that is down leaves the last good response stapled until
//! its `nextUpdate`; after that handshakes go without a staple (logged), except for
//! Must-Staple certificates (TLS Feature `status_request`), which are then not served.
//!
//! Requests and responses are encoded with RustCrypto's `x509-ocsp`; the CertID hashes
//! are SHA-1 as RFC 5019 requires responders to accept. Pylon checks that a response
//! answers for its certificate and is current; its signature is for the client to
//! verify, as with every staple.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use der::{Decode, Encode};
use rustls::sign::CertifiedKey;
use x509_ocsp::{CertStatus, OcspResponse, OcspResponseStatus};

use crate::fetch::Fetcher;

const OID_SHA1: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OID_OCSP_BASIC: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
const OID_AIA_OCSP: &str = "1.3.6.1.5.5.7.48.1";
const OID_TLS_FEATURE: &str = "1.3.6.1.5.5.7.1.24";

/// The first retry after a failed fetch; doubled per failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(3600);
/// The least time between two successful fetches for one certificate.
const MIN_REFETCH: u64 = 60;
/// A response without `nextUpdate` is fetched again after this long, and stapled as
/// long.
const NO_NEXT_UPDATE: i64 = 3600;
/// Clock difference tolerated between Pylon and the responder.
const SKEW: i64 = 300;

/// Process-wide: the staplers in use (one per certificate) and their counters.
#[derive(Default)]
pub struct OcspRegistry {
    staplers: Mutex<Vec<Weak<Stapler>>>,
    pub counts: OcspCounts,
}

/// Fetches by result.
#[derive(Default)]
pub struct OcspCounts {
    pub good: AtomicU64,
    pub revoked: AtomicU64,
    pub unknown: AtomicU64,
    pub failed: AtomicU64,
}

/// What stapling needs to know of a certificate.
pub struct StapleTarget {
    pub responder: String,
    pub request: Vec<u8>,
    cert_id: x509_ocsp::CertId,
    pub must_staple: bool,
    /// The leaf's first DNS name (or subject), for logs and metrics.
    pub name: String,
    /// SHA-256 of the leaf, hex: the cache file's name.
    fingerprint: String,
}

/// A certificate's staple in force.
struct Staple {
    key: Arc<CertifiedKey>,
    next_update: i64,
    this_update: i64,
}

/// One certificate's stapling.
pub struct Stapler {
    base: Arc<CertifiedKey>,
    target: StapleTarget,
    cache: Option<PathBuf>,
    staple: ArcSwapOption<Staple>,
    /// When the staple in force stops being valid (Unix seconds; 0: none).
    pub valid_until: AtomicI64,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Stapler {
    fn drop(&mut self) {
        if let Some(t) = crate::lock(&self.task).take() {
            t.abort();
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Stapler {
    /// The key to serve now: stapled while a current response is in hand; without a
    /// staple otherwise, except a Must-Staple certificate, which is then not served.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        if let Some(s) = &*self.staple.load()
            && unix_now() < s.next_update
        {
            return Some(Arc::clone(&s.key));
        }
        (!self.target.must_staple).then(|| Arc::clone(&self.base))
    }

    pub fn name(&self) -> &str {
        &self.target.name
    }

    /// Puts a checked response in force (and in the cache when `store`).
    fn install(&self, der: Vec<u8>, checked: &Checked, store: bool) {
        if store
            && let Some(path) = &self.cache
            && let Err(e) = crate::disk::replace_file(path, &der, false)
        {
            tracing::warn!(file = %path.display(), error = %e, "OCSP: cannot cache the response");
        }
        let mut key = (*self.base).clone();
        key.ocsp = Some(der);
        self.valid_until
            .store(checked.next_update, Ordering::Relaxed);
        self.staple.store(Some(Arc::new(Staple {
            key: Arc::new(key),
            next_update: checked.next_update,
            this_update: checked.this_update,
        })));
    }

    /// When the next fetch is due: halfway from `thisUpdate` to `nextUpdate`; now when
    /// there is no current staple.
    fn refresh_at(&self) -> i64 {
        match &*self.staple.load() {
            Some(s) if s.next_update > unix_now() => {
                s.this_update + (s.next_update - s.this_update) / 2
            }
            _ => 0,
        }
    }
}

impl OcspRegistry {
    /// The stapler for `key`, or `None` when it has no OCSP responder (or no issuer in
    /// its chain). Shared with any running stapler of the same certificate; a new one
    /// loads `cache_dir`'s response and starts fetching (inside tokio).
    pub fn stapler(
        self: &Arc<Self>,
        key: &Arc<CertifiedKey>,
        cache_dir: Option<&Path>,
    ) -> Option<Arc<Stapler>> {
        let target = match target(key) {
            Ok(t) => t?,
            Err(e) => {
                tracing::warn!(error = %e, "OCSP: cannot staple this certificate");
                return None;
            }
        };
        let mut staplers = crate::lock(&self.staplers);
        staplers.retain(|w| w.strong_count() > 0);
        if let Some(s) = staplers
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| s.target.fingerprint == target.fingerprint)
        {
            return Some(s);
        }
        let cache = cache_dir.map(|d| d.join(format!("{}.ocsp", target.fingerprint)));
        let stapler = Arc::new(Stapler {
            base: Arc::clone(key),
            target,
            cache,
            staple: ArcSwapOption::empty(),
            valid_until: AtomicI64::new(0),
            task: Mutex::new(None),
        });
        if let Some(path) = &stapler.cache
            && let Ok(der) = std::fs::read(path)
        {
            match check(&der, &stapler.target, unix_now()) {
                Ok(c) if c.status == Status::Good || c.status == Status::Revoked => {
                    stapler.install(der, &c, false)
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(file = %path.display(), error = %e, "OCSP: the cached response is not usable")
                }
            }
        }
        let task = tokio::spawn(run(Arc::downgrade(&stapler), Arc::clone(self)));
        *crate::lock(&stapler.task) = Some(task.abort_handle());
        staplers.push(Arc::downgrade(&stapler));
        Some(stapler)
    }

    /// The staplers in use now.
    pub fn live(&self) -> Vec<Arc<Stapler>> {
        crate::lock(&self.staplers)
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }
}

/// The responder, the request and the Must-Staple flag of `key`'s leaf; `Ok(None)`
/// when the certificate names no OCSP responder.
fn target(key: &CertifiedKey) -> Result<Option<StapleTarget>, String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let leaf = key.cert.first().ok_or("no certificate")?;
    let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let mut responder = None;
    let mut must_staple = false;
    for ext in x509.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(aia) => {
                for d in &aia.accessdescs {
                    if d.access_method.to_id_string() == OID_AIA_OCSP
                        && let GeneralName::URI(uri) = &d.access_location
                        && responder.is_none()
                    {
                        responder = Some((*uri).to_owned());
                    }
                }
            }
            _ if ext.oid.to_id_string() == OID_TLS_FEATURE => {
                // TLSFeature ::= SEQUENCE OF INTEGER; 5 is status_request.
                must_staple = ext.value.windows(3).any(|w| w == [0x02, 0x01, 0x05]);
            }
            _ => {}
        }
    }
    let name = x509
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
        })
        .unwrap_or_else(|| x509.subject().to_string());
    let Some(responder) = responder else {
        if must_staple {
            tracing::warn!(certificate = %name, "OCSP: a Must-Staple certificate names no OCSP responder; it cannot be served");
        }
        return Ok(None);
    };
    if !responder.starts_with("http://") && !responder.starts_with("https://") {
        return Err(format!("unsupported OCSP responder URL {responder}"));
    }
    let issuer = key.cert.get(1).ok_or(
        "the chain has no issuer certificate after the leaf (needed to ask its OCSP responder)",
    )?;
    let issuer = x509_cert::Certificate::from_der(issuer.as_ref())
        .map_err(|e| format!("the issuer certificate cannot be parsed: {e}"))?;
    let leaf_cert = x509_cert::Certificate::from_der(leaf.as_ref())
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let sha1 = |b: &[u8]| {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, b)
            .as_ref()
            .to_vec()
    };
    let der_err = |e: der::Error| e.to_string();
    let subject = issuer.tbs_certificate.subject.to_der().map_err(der_err)?;
    let cert_id = x509_ocsp::CertId {
        hash_algorithm: spki_sha1(),
        issuer_name_hash: der::asn1::OctetString::new(sha1(&subject)).map_err(der_err)?,
        issuer_key_hash: der::asn1::OctetString::new(sha1(
            issuer
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes(),
        ))
        .map_err(der_err)?,
        serial_number: leaf_cert.tbs_certificate.serial_number.clone(),
    };
    let request = x509_ocsp::OcspRequest {
        tbs_request: x509_ocsp::TbsRequest {
            version: x509_ocsp::Version::V1,
            requestor_name: None,
            request_list: vec![x509_ocsp::Request {
                req_cert: cert_id.clone(),
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    }
    .to_der()
    .map_err(der_err)?;
    let fingerprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref())
        .as_ref()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Some(StapleTarget {
        responder,
        request,
        cert_id,
        must_staple,
        name,
        fingerprint,
    }))
}

fn spki_sha1() -> x509_cert::spki::AlgorithmIdentifierOwned {
    x509_cert::spki::AlgorithmIdentifierOwned {
        oid: OID_SHA1,
        parameters: Some(der::asn1::Null.into()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Good,
    Revoked,
    Unknown,
}

/// What a response says, once checked.
struct Checked {
    status: Status,
    this_update: i64,
    next_update: i64,
}

/// Checks that `der` is a successful basic response for `target`'s certificate that is
/// current at `now`.
fn check(der: &[u8], target: &StapleTarget, now: i64) -> Result<Checked, String> {
    let resp = OcspResponse::from_der(der).map_err(|e| format!("not an OCSP response: {e}"))?;
    if resp.response_status != OcspResponseStatus::Successful {
        return Err(format!("the responder answered {:?}", resp.response_status));
    }
    let bytes = resp
        .response_bytes
        .ok_or("a successful response without a body")?;
    if bytes.response_type != OID_OCSP_BASIC {
        return Err(format!("unsupported response type {}", bytes.response_type));
    }
    let basic = x509_ocsp::BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| format!("not a basic OCSP response: {e}"))?;
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| r.cert_id == target.cert_id)
        .ok_or("the response is not for this certificate")?;
    let secs = |t: &x509_ocsp::OcspGeneralizedTime| t.0.to_unix_duration().as_secs() as i64;
    let this_update = secs(&single.this_update);
    let next_update = single
        .next_update
        .as_ref()
        .map_or(this_update + NO_NEXT_UPDATE, secs);
    if this_update > now + SKEW {
        return Err("the response is from the future (is the clock behind?)".to_owned());
    }
    if next_update <= now {
        return Err("the response has expired (nextUpdate has passed)".to_owned());
    }
    let status = match single.cert_status {
        CertStatus::Good(_) => Status::Good,
        CertStatus::Revoked(_) => Status::Revoked,
        CertStatus::Unknown(_) => Status::Unknown,
    };
    Ok(Checked {
        status,
        this_update,
        next_update,
    })
}

/// Asks the responder (POST, `application/ocsp-request`).
async fn fetch(http: &Fetcher, target: &StapleTarget) -> Result<Vec<u8>, String> {
    let req = http::Request::post(&target.responder)
        .header(http::header::CONTENT_TYPE, "application/ocsp-request")
        .header(http::header::ACCEPT, "application/ocsp-response")
        .body(Bytes::from(target.request.clone()))
        .map_err(|e| e.to_string())?;
    let resp = http.send(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("the responder answered HTTP {}", resp.status()));
    }
    Ok(resp.into_body().to_vec())
}

/// A stapler's task: fetch when due, keep the last good response, retry with backoff.
async fn run(weak: Weak<Stapler>, registry: Arc<OcspRegistry>) {
    let http = Fetcher::new(
        Duration::from_secs(10),
        64 * 1024,
        crate::fetch::system_roots(),
    );
    let mut failures = 0u32;
    let mut expired_logged = false;
    loop {
        let Some(s) = weak.upgrade() else { return };
        let now = unix_now();
        let due = s.refresh_at();
        if due > now {
            drop(s);
            tokio::time::sleep(Duration::from_secs((due - now) as u64)).await;
            continue;
        }
        let result = match fetch(&http, &s.target).await {
            Ok(der) => check(&der, &s.target, unix_now()).map(|c| (der, c)),
            Err(e) => Err(e),
        };
        match result {
            Ok((der, c)) => {
                failures = 0;
                expired_logged = false;
                let counter = match c.status {
                    Status::Good => &registry.counts.good,
                    Status::Revoked => &registry.counts.revoked,
                    Status::Unknown => &registry.counts.unknown,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                match c.status {
                    Status::Good => {
                        tracing::debug!(certificate = %s.target.name, next_update = c.next_update, "OCSP: response stapled");
                        s.install(der, &c, true);
                    }
                    Status::Revoked => {
                        tracing::error!(certificate = %s.target.name, "OCSP: the certificate is REVOKED; clients will refuse it. Replace it");
                        s.install(der, &c, true);
                    }
                    Status::Unknown => {
                        tracing::warn!(certificate = %s.target.name, responder = %s.target.responder, "OCSP: the responder does not know this certificate; not stapled");
                    }
                }
                // A response already past its midpoint (a responder's stale cache)
                // would be due again at once: the next fetch waits at least a minute,
                // or half its remaining life when that is shorter.
                let now = unix_now();
                let wait = match c.status {
                    Status::Unknown => RETRY_MAX.as_secs(),
                    _ => {
                        let left = u64::try_from(c.next_update - now).unwrap_or(0);
                        u64::try_from(s.refresh_at() - now)
                            .unwrap_or(0)
                            .max(MIN_REFETCH.min(left / 2))
                    }
                };
                drop(s);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            Err(e) => {
                failures += 1;
                registry.counts.failed.fetch_add(1, Ordering::Relaxed);
                let retry = RETRY_FIRST
                    .saturating_mul(1 << failures.saturating_sub(1).min(10))
                    .min(RETRY_MAX);
                let valid_until = s.valid_until.load(Ordering::Relaxed);
                let now = unix_now();
                if valid_until > now {
                    tracing::warn!(certificate = %s.target.name, responder = %s.target.responder, error = %e, retry_in = ?retry, "OCSP: fetch failed; the last good response stays stapled until it expires");
                } else if !expired_logged {
                    expired_logged = true;
                    tracing::error!(
                        certificate = %s.target.name,
                        responder = %s.target.responder,
                        error = %e,
                        retry_in = ?retry,
                        "OCSP: no current response; handshakes go without a staple{}",
                        if s.target.must_staple { " (Must-Staple: the certificate is not served)" } else { "" }
                    );
                }
                // Wake at the staple's expiry to log it, if that comes first.
                let wait = match u64::try_from(valid_until - now) {
                    Ok(left) if left > 0 => retry.min(Duration::from_secs(left)),
                    _ => retry,
                };
                drop(s);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stapler(must_staple: bool) -> Stapler {
        let c = rcgen::generate_simple_self_signed(vec!["a.example.com".to_owned()]).unwrap();
        let der = rustls_pki_types::PrivateKeyDer::try_from(c.signing_key.serialize_der()).unwrap();
        let key =
            CertifiedKey::from_der(vec![c.cert.der().clone()], der, &super::super::provider())
                .unwrap();
        Stapler {
            base: Arc::new(key),
            target: StapleTarget {
                responder: "http://127.0.0.1:9/".to_owned(),
                request: Vec::new(),
                cert_id: x509_ocsp::CertId {
                    hash_algorithm: spki_sha1(),
                    issuer_name_hash: der::asn1::OctetString::new(vec![0; 20]).unwrap(),
                    issuer_key_hash: der::asn1::OctetString::new(vec![0; 20]).unwrap(),
                    serial_number: x509_cert::serial_number::SerialNumber::new(&[1]).unwrap(),
                },
                must_staple,
                name: "a.example.com".to_owned(),
                fingerprint: "00".to_owned(),
            },
            cache: None,
            staple: ArcSwapOption::empty(),
            valid_until: AtomicI64::new(0),
            task: Mutex::new(None),
        }
    }

    fn checked(this_update: i64, next_update: i64) -> Checked {
        Checked {
            status: Status::Good,
            this_update,
            next_update,
        }
    }

    #[test]
    fn a_staple_is_served_until_its_next_update_then_dropped_or_must_staple_refused() {
        let now = unix_now();
        for must_staple in [false, true] {
            let s = stapler(must_staple);
            // Nothing fetched yet.
            assert_eq!(s.current().is_some(), !must_staple);
            assert_eq!(s.refresh_at(), 0, "fetch at once");
            s.install(b"response".to_vec(), &checked(now - 100, now + 100), false);
            let served = s.current().expect("stapled");
            assert_eq!(served.ocsp.as_deref(), Some(&b"response"[..]));
            assert_eq!(s.refresh_at(), now, "halfway to nextUpdate");
            // Past nextUpdate: no staple; a Must-Staple certificate is not served.
            s.install(b"old".to_vec(), &checked(now - 200, now - 1), false);
            match s.current() {
                Some(k) => {
                    assert!(!must_staple);
                    assert!(k.ocsp.is_none(), "an expired response is never stapled");
                }
                None => assert!(must_staple),
            }
            assert_eq!(s.refresh_at(), 0);
        }
    }
}
