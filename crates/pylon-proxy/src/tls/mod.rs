//! TLS: certificate loading shared by both directions, termination on listeners
//! ([`server`]) and TLS to upstreams ([`upstream`]). rustls with aws-lc-rs only.
//!
//! Every error names where the file was configured (file, line, key) and why it failed.

pub mod acme;
pub mod ocsp;
pub mod server;
pub mod tickets;
pub mod upstream;

use std::sync::Arc;

use pylon_config::ConfigError;
use pylon_config::model::{CertificateFiles, FileRef};
use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// What every TLS listener of the process shares: ACME certificates and their challenge
/// answers, OCSP staplers, the session ticket producer.
#[derive(Default)]
pub struct TlsServices {
    pub acme: Arc<acme::AcmeRegistry>,
    pub ocsp: Arc<ocsp::OcspRegistry>,
    pub tickets: Arc<tickets::Tickets>,
}

/// The crypto provider every TLS config in Pylon uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(file: &FileRef) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(&file.path).map_err(|e| {
        file.at
            .error(format!("cannot read {}: {e}", file.path.display()))
    })
}

/// Reads a PEM certificate chain (leaf first).
pub fn load_chain(file: &FileRef) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(file)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            file.at
                .error(format!("{}: invalid PEM: {e}", file.path.display()))
        })?;
    if chain.is_empty() {
        return Err(file.at.error(format!(
            "{}: no certificate in file (expected -----BEGIN CERTIFICATE-----)",
            file.path.display()
        )));
    }
    Ok(chain)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn load_key(file: &FileRef) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read(file)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        file.at.error(format!(
            "{}: no private key in file ({e}); expected PKCS#8, RSA or EC PEM",
            file.path.display()
        ))
    })
}

/// What Pylon reads from a leaf certificate.
#[derive(Debug, Clone, Default)]
pub struct LeafInfo {
    pub subject: String,
    pub dns_names: Vec<String>,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

pub fn leaf_info(der: &CertificateDer<'_>) -> Option<LeafInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                dns_names.push(d.to_ascii_lowercase());
            }
        }
    }
    Some(LeafInfo {
        subject: cert.subject().to_string(),
        dns_names,
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// A certificate chain and its key, both read before either error is returned: when
/// both files are missing, both are named.
pub fn load_pair(
    files: &CertificateFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Vec<ConfigError>> {
    match (load_chain(&files.cert), load_key(&files.key)) {
        (Ok(chain), Ok(key)) => Ok((chain, key)),
        (chain, key) => Err(chain.err().into_iter().chain(key.err()).collect()),
    }
}

/// A certificate chain with its key, checked to belong together.
pub fn load_certified_key(
    files: &CertificateFiles,
) -> Result<(Arc<CertifiedKey>, LeafInfo), Vec<ConfigError>> {
    let (chain, key) = load_pair(files)?;
    let info = chain.first().and_then(leaf_info).ok_or_else(|| {
        vec![files.cert.at.error(format!(
            "{}: the first certificate cannot be parsed",
            files.cert.path.display()
        ))]
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        vec![files.key.at.error(format!(
            "{}: does not match the certificate in {} ({e})",
            files.key.path.display(),
            files.cert.path.display()
        ))]
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if info.not_after < now {
        tracing::warn!(
            certificate = %files.cert.path.display(),
            subject = %info.subject,
            "certificate has expired; clients will refuse it"
        );
    }
    Ok((Arc::new(certified), info))
}

/// A root store from a PEM CA bundle.
pub fn load_roots(file: &FileRef) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for c in load_chain(file)? {
        roots.add(c).map_err(|e| {
            file.at.error(format!(
                "{}: not a usable CA certificate: {e}",
                file.path.display()
            ))
        })?;
    }
    Ok(roots)
}

/// Every TLS problem in a config: unreadable files, missing keys, mismatched pairs.
/// `pylon check` reports these together with the syntax errors.
pub fn check(config: &pylon_config::Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for l in &config.listeners {
        if let Some(t) = &l.tls
            && let Err(e) = server::build(t, None, None, None)
        {
            errors.extend(e);
        }
        if let Some(ca) = l.tls.as_ref().and_then(|t| t.acme.as_ref()?.ca.as_ref())
            && let Err(e) = load_roots(ca)
        {
            errors.push(e);
        }
    }
    for c in &config.clusters {
        let Some(t) = &c.tls else { continue };
        // The client certificate and key are named together when both are missing;
        // building stops at the first.
        if let Some(files) = &t.client_cert
            && let Err(e) = load_pair(files)
        {
            errors.extend(e);
        }
        if let Err(e) = upstream::build(t, c.protocol)
            && !errors.contains(&e)
        {
            errors.push(e);
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_certificate_and_key_are_both_named() {
        let dir = std::env::temp_dir().join(format!("pylon-tls-check-{}", std::process::id()));
        let text = format!(
            r#"
[[listeners]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "https"
tls = {{ certificates = [{{ cert = "{0}/site.pem", key = "{0}/site-key.pem" }}] }}

[[clusters]]
name = "c"
endpoints = ["127.0.0.1:1"]
tls = {{ insecure_skip_verify = true, cert = "{0}/client.pem", key = "{0}/client-key.pem" }}
"#,
            dir.display()
        );
        let config = pylon_config::parse(&text, "test.toml").expect("valid");
        let errors: Vec<String> = check(&config).iter().map(|e| e.to_string()).collect();
        let want = [
            (
                "test.toml:6:34: listeners[0].tls.certificates[0].cert: cannot read",
                "site.pem",
            ),
            (
                "listeners[0].tls.certificates[0].key: cannot read",
                "site-key.pem",
            ),
            ("clusters[0].tls.cert: cannot read", "client.pem"),
            ("clusters[0].tls.key: cannot read", "client-key.pem"),
        ];
        assert_eq!(errors.len(), want.len(), "{errors:#?}");
        for ((start, file), got) in want.iter().zip(&errors) {
            assert!(
                got.contains(start) && got.contains(&format!("/{file}: ")),
                "{got}"
            );
        }
    }
}
