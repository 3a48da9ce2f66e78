//! TLS termination on listeners: certificates chosen by SNI (exact names and
//! `*.example.com` wildcards, then the default), ALPN, minimum version, session
//! resumption (tickets and a cache), client certificates, and reload from disk. A
//! listener with `acme` serves its managed certificate for its names (the one in force
//! at each handshake, so renewals need no reload) and answers TLS-ALPN-01 challenges.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pylon_config::ConfigError;
use pylon_config::model::{AcmeChallenge, ClientAuth, ListenerTls, TlsVersion, UnknownSni};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;

use super::TlsServices;
use super::acme::ManagedCert;
use super::acme::challenge::{ACME_TLS_ALPN, Challenges};
use super::acme::on_demand::OnDemandCerts;
use super::ocsp::{OcspRegistry, Stapler};
use super::tickets::Tickets;
use super::{leaf_info, load_certified_key, load_roots, provider};

/// A listener's ACME certificates and where challenge answers are.
#[derive(Clone)]
pub struct AcmeSource {
    /// The certificate for the configured names (none with only `on_demand`).
    pub cert: Option<Arc<ManagedCert>>,
    pub on_demand: Option<Arc<OnDemandCerts>>,
    pub challenges: Arc<Challenges>,
}

/// A certificate as served: as loaded, or with its OCSP staple in force.
#[derive(Clone)]
enum Served {
    Plain(Arc<CertifiedKey>),
    Stapled(Arc<Stapler>),
}

impl Served {
    fn get(&self) -> Option<Arc<CertifiedKey>> {
        match self {
            Served::Plain(k) => Some(Arc::clone(k)),
            Served::Stapled(s) => s.current(),
        }
    }
}

/// Picks a certificate by SNI.
struct SniResolver {
    exact: HashMap<String, Served>,
    /// `(".example.com", key)` for `*.example.com`, in configuration order.
    wildcard: Vec<(String, Served)>,
    /// The first certificate file's.
    default: Option<Served>,
    acme: Option<AcmeSource>,
    /// Refuse handshakes for names no certificate covers (and without SNI).
    reject_unknown: bool,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("exact", &self.exact.keys())
            .field(
                "acme",
                &self
                    .acme
                    .as_ref()
                    .and_then(|a| Some(&a.cert.as_ref()?.settings.names)),
            )
            .finish()
    }
}

impl SniResolver {
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let acme = || self.acme.as_ref()?.cert.as_ref()?.current();
        let fallback = || {
            if self.reject_unknown {
                return None;
            }
            match &self.default {
                Some(d) => d.get(),
                None => acme(),
            }
        };
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return fallback();
        };
        if let Some(a) = &self.acme {
            if a.cert.as_ref().is_some_and(|c| c.covers(&name))
                && let Some(k) = acme()
            {
                return Some(k);
            }
            if let Some(k) = a.on_demand.as_ref().and_then(|o| o.cert_for(&name)) {
                return Some(k);
            }
        }
        if let Some(k) = self.exact.get(&name) {
            return k.get();
        }
        // `*.example.com` covers one label, as in certificates.
        if let Some((_, rest)) = name.split_once('.') {
            let suffix = format!(".{rest}");
            if let Some((_, k)) = self.wildcard.iter().find(|(s, _)| *s == suffix) {
                return k.get();
            }
        }
        fallback()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A CA validating a TLS-ALPN-01 challenge offers `acme-tls/1` alone (RFC 8737).
        if let Some(acme) = &self.acme
            && hello
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN))
        {
            return acme.challenges.tls_alpn01_cert(hello.server_name());
        }
        self.pick(hello.server_name())
    }
}

/// Builds a rustls server config from the listener's TLS settings, reading every file.
/// `acme` is the listener's managed certificate, `ocsp` staples certificates and
/// `tickets` is the process's ticket producer (all `None` when only checking files).
pub fn build(
    t: &ListenerTls,
    acme: Option<&AcmeSource>,
    ocsp: Option<&Arc<OcspRegistry>>,
    tickets: Option<&Arc<Tickets>>,
) -> Result<Arc<ServerConfig>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    let mut default = None;
    for files in &t.certificates {
        match load_certified_key(files) {
            Ok((key, info)) => {
                let stapler = ocsp
                    .filter(|_| t.ocsp_stapling)
                    .and_then(|o| o.stapler(&key, t.ocsp_cache.as_ref().map(|c| c.path.as_path())));
                let key = match stapler {
                    Some(s) => Served::Stapled(s),
                    None => Served::Plain(key),
                };
                let names = if files.server_names.is_empty() {
                    info.dns_names.clone()
                } else {
                    files.server_names.clone()
                };
                for n in names {
                    match n.strip_prefix('*') {
                        Some(suffix) => wildcard.push((suffix.to_owned(), key.clone())),
                        None => {
                            exact.entry(n).or_insert_with(|| key.clone());
                        }
                    }
                }
                default.get_or_insert(key);
            }
            Err(e) => errors.extend(e),
        }
    }
    let verifier = match (t.client_auth, &t.client_ca) {
        (ClientAuth::None, _) | (_, None) => None,
        (mode, Some(ca)) => match load_roots(ca) {
            Ok(roots) => {
                let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let b = if mode == ClientAuth::Optional {
                    b.allow_unauthenticated()
                } else {
                    b
                };
                match b.build() {
                    Ok(v) => Some(v),
                    Err(e) => {
                        errors.push(ca.at.error(format!("client CA {}: {e}", ca.path.display())));
                        None
                    }
                }
            }
            Err(e) => {
                errors.push(e);
                None
            }
        },
    };
    if default.is_none() && t.acme.is_none() {
        return Err(errors);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| vec![ConfigError::general(format!("TLS versions: {e}"))])?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver {
        exact,
        wildcard,
        default,
        acme: acme.cloned(),
        reject_unknown: t.unknown_sni == UnknownSni::Reject,
    }));
    config.alpn_protocols = t.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    if t.acme
        .as_ref()
        .is_some_and(|a| a.challenge == AcmeChallenge::TlsAlpn01)
    {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    config.ticketer = match tickets {
        Some(t) => Arc::clone(t) as Arc<dyn rustls::server::ProducesTickets>,
        None => match rustls::crypto::aws_lc_rs::Ticketer::new() {
            Ok(t) => t,
            Err(_) => config.ticketer,
        },
    };
    Ok(Arc::new(config))
}

/// A listener's TLS settings and its current server config, replaceable on reload.
pub struct ServerTls {
    pub settings: ListenerTls,
    acme: Option<AcmeSource>,
    ocsp: Arc<OcspRegistry>,
    tickets: Arc<Tickets>,
    current: ArcSwap<ServerConfig>,
    /// SHA-256 of the certificate, key and client CA files the config was built from.
    files: std::sync::Mutex<Option<Vec<u8>>>,
}

/// SHA-256 over the contents of every file the settings name; `None` when one cannot
/// be read (building then says why).
fn files_digest(t: &ListenerTls) -> Option<Vec<u8>> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let paths = t
        .certificates
        .iter()
        .flat_map(|c| [&c.cert.path, &c.key.path])
        .chain(t.client_ca.iter().map(|c| &c.path));
    for path in paths {
        let bytes = std::fs::read(path).ok()?;
        ctx.update(&(bytes.len() as u64).to_le_bytes());
        ctx.update(&bytes);
    }
    Some(ctx.finish().as_ref().to_vec())
}

impl ServerTls {
    /// Reads the files; a listener with `acme` gets its managed certificate from
    /// `registry` (the running one when the settings are the same).
    pub fn new(settings: ListenerTls, services: &TlsServices) -> Result<Self, Vec<ConfigError>> {
        let (registry, ocsp, tickets) = (&services.acme, &services.ocsp, &services.tickets);
        let files = files_digest(&settings);
        let stapling = settings.ocsp_stapling.then_some(ocsp);
        let acme = match &settings.acme {
            Some(a) => Some(AcmeSource {
                cert: if a.names.is_empty() {
                    None
                } else {
                    let cert = registry.certificate(a, stapling).map_err(|e| vec![e])?;
                    if !a.start_without_certificate && cert.current().is_none() {
                        return Err(vec![a.storage.at.error(format!(
                            "no usable certificate for {} in {} and start_without_certificate = false: not starting without one (let an instance with it true order it, or copy it there)",
                            a.names.join(", "),
                            a.storage.path.display()
                        ))]);
                    }
                    Some(cert)
                },
                on_demand: OnDemandCerts::new(a, registry, stapling).map(Arc::new),
                challenges: Arc::clone(&registry.challenges),
            }),
            None => None,
        };
        let config = build(&settings, acme.as_ref(), Some(ocsp), Some(tickets))?;
        Ok(ServerTls {
            settings,
            acme,
            ocsp: Arc::clone(ocsp),
            tickets: Arc::clone(tickets),
            current: ArcSwap::new(config),
            files: std::sync::Mutex::new(files),
        })
    }

    /// The server config in force (HTTP/3 makes its QUIC config from it).
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// The listener's on-demand certificates, whose handshakes may wait for an order.
    pub fn on_demand(&self) -> Option<&Arc<OnDemandCerts>> {
        self.acme.as_ref()?.on_demand.as_ref()
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Re-reads the certificate files: `Ok(true)` when they changed and new handshakes
    /// now use them, `Ok(false)` when they are the same (the config in force, with its
    /// session cache and ticket keys, stays). On any error the old config keeps serving.
    pub fn reload(&self) -> Result<bool, Vec<ConfigError>> {
        let files = files_digest(&self.settings);
        if files.is_some() && *crate::lock(&self.files) == files {
            return Ok(false);
        }
        let config = build(
            &self.settings,
            self.acme.as_ref(),
            Some(&self.ocsp),
            Some(&self.tickets),
        )?;
        self.current.store(config);
        *crate::lock(&self.files) = files;
        Ok(true)
    }
}

/// The verified identity of a client certificate.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub subject: String,
    pub dns_names: Vec<String>,
    /// SHA-256 of the certificate (DER), lower-case hex.
    pub fingerprint: String,
}

impl ClientIdentity {
    pub fn from_der(der: &CertificateDer<'_>) -> Option<ClientIdentity> {
        let info = leaf_info(der)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
        let fingerprint = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Some(ClientIdentity {
            subject: info.subject,
            dns_names: info.dns_names,
            fingerprint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let key = |n: &str| {
            let c = rcgen::generate_simple_self_signed(vec![n.to_owned()]).unwrap();
            let der =
                rustls_pki_types::PrivateKeyDer::try_from(c.signing_key.serialize_der()).unwrap();
            Arc::new(CertifiedKey::from_der(vec![c.cert.der().clone()], der, &provider()).unwrap())
        };
        let (a, w, d) = (
            key("a.example.com"),
            key("*.example.org"),
            key("default.test"),
        );
        let mut r = SniResolver {
            exact: HashMap::from([("a.example.com".to_owned(), Served::Plain(Arc::clone(&a)))]),
            wildcard: vec![(".example.org".to_owned(), Served::Plain(Arc::clone(&w)))],
            default: Some(Served::Plain(Arc::clone(&d))),
            acme: None,
            reject_unknown: false,
        };
        let pick = |r: &SniResolver, n| r.pick(n).unwrap();
        assert!(Arc::ptr_eq(&pick(&r, Some("A.example.com")), &a));
        assert!(Arc::ptr_eq(&pick(&r, Some("x.example.org")), &w));
        assert!(
            Arc::ptr_eq(&pick(&r, Some("x.y.example.org")), &d),
            "one label only"
        );
        assert!(Arc::ptr_eq(&pick(&r, Some("example.org")), &d));
        assert!(Arc::ptr_eq(&pick(&r, None), &d));
        r.reject_unknown = true;
        assert!(r.pick(Some("other.test")).is_none());
        assert!(r.pick(None).is_none());
        assert!(r.pick(Some("a.example.com")).is_some());
    }
}
