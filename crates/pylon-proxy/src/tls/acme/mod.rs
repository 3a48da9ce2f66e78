//! Certificates ordered and renewed over ACME (RFC 8555) for https listeners with an
//! `acme` table. A [`ManagedCert`] per distinct setting, shared by the listeners that
//! name it and kept across reloads while a listener still names it, runs one task:
//!
//! 1. pick up the stored certificate (at start, so no network round trip is needed to
//!    serve; or one another instance sharing the storage stored);
//! 2. wait until renewal is due: two thirds of the certificate's lifetime, less a random
//!    jitter of up to a twentieth, so that instances and names spread out;
//! 3. take the storage's order lock (one instance orders at a time; the others wait
//!    and pick its result up), order (`order.rs`), store, and install: new handshakes
//!    use the new certificate at once, without a reload;
//! 4. on failure, log why, count it, keep serving the last good certificate, and retry
//!    after `retry_backoff`, doubled per failure up to `retry_max`, with jitter.
//!
//! Challenges are answered from [`challenge::Challenges`], process-wide.

pub mod challenge;
pub mod on_demand;
mod order;
mod store;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use pylon_config::ConfigError;
use pylon_config::model::Acme;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use order::FailureReason;

use super::ocsp::{OcspRegistry, Stapler};
use challenge::Challenges;
use store::Store;

/// How long an instance may hold the order lock (an order gives up well before).
const LOCK_TTL: Duration = Duration::from_secs(10 * 60);
/// How often an instance waiting for another's order looks for its result.
const LOCK_POLL: Duration = Duration::from_secs(1);
/// How often the storage is looked at while nothing is due (another instance's renewal).
const RECHECK: Duration = Duration::from_secs(60);
/// The CA's answers are small: a chain, a directory, an order.
const MAX_ANSWER: usize = 1 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The process's ACME certificates and challenge answers.
#[derive(Default)]
pub struct AcmeRegistry {
    pub challenges: Arc<Challenges>,
    certs: Mutex<Vec<Weak<ManagedCert>>>,
    /// What on-demand listeners' asking came to.
    pub on_demand: on_demand::OnDemandStats,
}

impl AcmeRegistry {
    /// The managed certificate for `settings`: the running one when a listener already
    /// names the same settings, else a new one whose task starts now (inside tokio).
    /// With `ocsp`, the certificate's OCSP responses are stapled (and cached in the
    /// storage folder).
    pub fn certificate(
        &self,
        settings: &Acme,
        ocsp: Option<&Arc<OcspRegistry>>,
    ) -> Result<Arc<ManagedCert>, ConfigError> {
        let mut certs = crate::lock(&self.certs);
        certs.retain(|w| w.strong_count() > 0);
        if let Some(c) = certs
            .iter()
            .filter_map(Weak::upgrade)
            .find(|c| c.settings == *settings)
        {
            return Ok(c);
        }
        let roots = match &settings.ca {
            Some(ca) => super::load_roots(ca)?,
            None => crate::fetch::system_roots(),
        };
        let http = crate::fetch::Fetcher::new(REQUEST_TIMEOUT, MAX_ANSWER, roots);
        let store = Store::new(settings);
        let cert = Arc::new(ManagedCert {
            settings: settings.clone(),
            ocsp: ocsp.cloned(),
            ocsp_cache: store.folder().join("ocsp"),
            current: ArcSwapOption::empty(),
            renew_at: AtomicI64::new(0),
            not_after: AtomicI64::new(0),
            stats: AcmeStats::default(),
            task: Mutex::new(None),
        });
        self.challenges.watch_folder(store.folder());
        // Installed before the task runs: a listener starting with a stored certificate
        // serves it from its first handshake.
        if let Ok(Some(s)) = store.load_certificate()
            && let Err(e) = cert.install_pem(&s, false)
        {
            tracing::warn!(file = %store.certificate_path().display(), error = %e, "ACME: the stored certificate is unusable; ordering a new one");
            cert.stats.stored_invalid.fetch_add(1, Ordering::Relaxed);
        }
        let task = tokio::spawn(run(
            Arc::downgrade(&cert),
            store,
            Arc::clone(&self.challenges),
            http,
        ));
        *crate::lock(&cert.task) = Some(task.abort_handle());
        certs.push(Arc::downgrade(&cert));
        Ok(cert)
    }

    /// The certificates listeners use now.
    pub fn live(&self) -> Vec<Arc<ManagedCert>> {
        crate::lock(&self.certs)
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }
}

/// Counters of one managed certificate.
#[derive(Default)]
pub struct AcmeStats {
    pub issued: AtomicU64,
    pub failures: [AtomicU64; FailureReason::ALL.len()],
    /// Stored certificates that could not be used (corrupt, key mismatch).
    pub stored_invalid: AtomicU64,
    /// Certificates installed while not yet valid by this machine's clock.
    pub not_yet_valid: AtomicU64,
}

/// One ACME certificate: the one in force, and the task keeping it fresh.
pub struct ManagedCert {
    pub settings: Acme,
    ocsp: Option<Arc<OcspRegistry>>,
    ocsp_cache: std::path::PathBuf,
    /// The certificate in force, stapled when its CA runs an OCSP responder.
    current: ArcSwapOption<Served>,
    /// When the certificate in force is due for renewal (Unix seconds).
    renew_at: AtomicI64,
    /// When it expires (Unix seconds); 0 while there is none.
    pub not_after: AtomicI64,
    pub stats: AcmeStats,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for ManagedCert {
    fn drop(&mut self) {
        if let Some(t) = crate::lock(&self.task).take() {
            t.abort();
        }
    }
}

impl ManagedCert {
    /// The certificate in force; `None` until the first one is issued (or while a
    /// Must-Staple certificate has no current staple).
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        match &*self.current.load() {
            Some(s) => match &s.stapler {
                Some(st) => st.current(),
                None => Some(Arc::clone(&s.key)),
            },
            None => None,
        }
    }

    /// Whether this certificate is the one for `name` (`name` in lower case).
    pub fn covers(&self, name: &str) -> bool {
        self.settings.names.iter().any(|n| n == name)
    }

    /// Makes a stored or issued key and chain the one in force. A stored one that lasts
    /// no longer than the one in force is left aside; a just-issued one (`issued`) always
    /// goes in, so that its renewal time replaces the one that made it due.
    fn install_pem(&self, pem: &[u8], issued: bool) -> Result<(), String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("invalid PEM: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no private key: {e}"))?;
        let leaf = chain.first().ok_or("no certificate")?;
        let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
        let not_before = x509.validity().not_before.timestamp();
        let not_after = x509.validity().not_after.timestamp();
        let mut names = Vec::new();
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                    names.push(d.to_ascii_lowercase());
                }
            }
        }
        if let Some(missing) = self.settings.names.iter().find(|n| !names.contains(n)) {
            return Err(format!("it does not cover {missing}"));
        }
        let certified = CertifiedKey::from_der(chain, key, &super::provider())
            .map_err(|e| format!("the key does not match the certificate: {e}"))?;
        if !issued && self.not_after.load(Ordering::Relaxed) >= not_after {
            return Ok(());
        }
        let now = unix_now();
        if not_after <= now {
            return Err("it has expired".to_owned());
        }
        if not_before > now + 60 {
            self.stats.not_yet_valid.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                names = ?self.settings.names,
                not_before,
                now,
                "ACME: the certificate is not valid yet by this machine's clock: is the clock behind?"
            );
        }
        let lifetime = (not_after - not_before).max(1);
        let jitter = (rand::random::<f64>() * lifetime as f64 / 20.0) as i64;
        self.renew_at
            .store(not_before + lifetime * 2 / 3 - jitter, Ordering::Relaxed);
        self.not_after.store(not_after, Ordering::Relaxed);
        let key = Arc::new(certified);
        let stapler = self
            .ocsp
            .as_ref()
            .and_then(|o| o.stapler(&key, Some(&self.ocsp_cache)));
        self.current.store(Some(Arc::new(Served { key, stapler })));
        Ok(())
    }

    /// How long until renewal is due; zero when it is (or there is no certificate).
    fn until_renewal(&self) -> Duration {
        if self.current.load().is_none() {
            return Duration::ZERO;
        }
        let at = self.renew_at.load(Ordering::Relaxed);
        Duration::from_secs(u64::try_from(at - unix_now()).unwrap_or(0))
    }

    fn failed(&self, reason: FailureReason) {
        let i = FailureReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.stats.failures[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// A certificate in force and its stapler.
struct Served {
    key: Arc<CertifiedKey>,
    stapler: Option<Arc<Stapler>>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The wait after `failures` failed orders in a row: the backoff doubled per failure,
/// at most `max`, plus up to a tenth of jitter.
fn backoff(settings: &Acme, failures: u32) -> Duration {
    let doubled = settings
        .retry_backoff
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let base = doubled.min(settings.retry_max);
    base + base.mul_f64(rand::random::<f64>() / 10.0)
}

/// The certificate's task: see the module comment.
async fn run(
    weak: Weak<ManagedCert>,
    store: Store,
    challenges: Arc<Challenges>,
    http: crate::fetch::Fetcher,
) {
    let mut failures = 0u32;
    let mut seen = store.certificate_modified();
    loop {
        let Some(cert) = weak.upgrade() else { return };
        // A certificate another instance stored (or a file replaced by hand).
        let modified = store.certificate_modified();
        if modified.is_some() && modified != seen {
            seen = modified;
            match store.load_certificate() {
                Ok(Some(s)) => {
                    if let Err(e) = cert.install_pem(&s, false) {
                        tracing::warn!(file = %store.certificate_path().display(), error = %e, "ACME: the stored certificate is unusable");
                        cert.stats.stored_invalid.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures = 0;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(file = %store.certificate_path().display(), error = %e, "ACME: cannot read the stored certificate")
                }
            }
        }
        let wait = cert.until_renewal();
        if !wait.is_zero() {
            drop(cert);
            tokio::time::sleep(wait.min(RECHECK)).await;
            continue;
        }
        let lock = match store.try_lock(LOCK_TTL) {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                drop(cert);
                tokio::time::sleep(LOCK_POLL).await;
                continue;
            }
            Err(e) => {
                failures += 1;
                cert.failed(FailureReason::Storage);
                let retry = backoff(&cert.settings, failures);
                tracing::error!(folder = %store.folder().display(), error = %e, retry_in = ?retry, "ACME: cannot take the order lock in the storage directory");
                drop(cert);
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        // Stored by another instance between the look above and the lock.
        if store.certificate_modified() != seen {
            continue;
        }
        let names = cert.settings.names.join(",");
        tracing::info!(names, directory = %cert.settings.directory, "ACME: ordering a certificate");
        match order::order(&cert.settings, &store, &challenges, &http).await {
            Ok(issued) => {
                if let Err(e) = store.save_certificate(&issued.key_pem, &issued.chain_pem) {
                    cert.failed(FailureReason::Storage);
                    tracing::error!(file = %store.certificate_path().display(), error = %e, "ACME: cannot store the new certificate; serving it from memory");
                }
                seen = store.certificate_modified();
                let pem = format!("{}\n{}", issued.key_pem, issued.chain_pem);
                match cert.install_pem(pem.as_bytes(), true) {
                    Ok(()) => {
                        failures = 0;
                        cert.stats.issued.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            names,
                            not_after = cert.not_after.load(Ordering::Relaxed),
                            "ACME: certificate issued; new handshakes use it"
                        );
                    }
                    Err(e) => {
                        failures += 1;
                        cert.failed(FailureReason::Protocol);
                        let retry = backoff(&cert.settings, failures);
                        tracing::error!(names, error = %e, retry_in = ?retry, "ACME: the CA issued an unusable certificate");
                        drop(lock);
                        drop(cert);
                        tokio::time::sleep(retry).await;
                        continue;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                cert.failed(e.reason);
                let retry = backoff(&cert.settings, failures);
                tracing::error!(
                    names,
                    directory = %cert.settings.directory,
                    reason = e.reason.as_str(),
                    error = %e,
                    retry_in = ?retry,
                    serving = if cert.current().is_some() { "the last good certificate" } else { "no certificate yet" },
                    "ACME: order failed"
                );
                drop(lock);
                drop(cert);
                tokio::time::sleep(retry).await;
                continue;
            }
        }
        drop(lock);
    }
}
