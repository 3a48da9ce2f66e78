//! Automatic certificates for an https listener (`[listeners.tls.acme]`): the ACME
//! directory, the names to order, where accounts and certificates are kept, the
//! challenge that proves control of the names.

use std::time::Duration;

use super::FileRef;

/// Let's Encrypt's production directory, the default.
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`staging = true`).
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// An ACME-managed certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Acme {
    /// The CA's directory URL.
    pub directory: String,
    /// Account contacts, `mailto:` URLs.
    pub contact: Vec<String>,
    /// The DNS names the certificate covers (the first is its file name on disk); may
    /// be empty with `on_demand`.
    pub names: Vec<String>,
    /// The directory holding the account, the certificates and the order lock; shared
    /// by instances that serve the same names.
    pub storage: FileRef,
    pub challenge: AcmeChallenge,
    /// Roots trusted for the directory's HTTPS (a private or test CA); else the
    /// system's.
    pub ca: Option<FileRef>,
    /// External Account Binding, for CAs that require it.
    pub external_account: Option<ExternalAccount>,
    /// The wait after a failed order; doubled after each further failure, up to
    /// `retry_max`.
    pub retry_backoff: Duration,
    pub retry_max: Duration,
    /// Certificates for names not known in advance, ordered at their first handshake.
    pub on_demand: Option<OnDemand>,
    /// Start (and reload) without a usable stored certificate, ordering one meanwhile;
    /// `false` refuses to, with an error naming the storage.
    pub start_without_certificate: bool,
}

/// On-demand certificates (`on_demand = true`): a name the listener has no certificate
/// for gets one at its first handshake, when the `ask` URL approves it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OnDemand {
    /// Asked `GET ask?domain=NAME` before a certificate is ordered; a 2xx approves.
    pub ask: String,
    /// New certificates ordered per minute at most (names asked for beyond wait for the
    /// next minute: their handshakes fail meanwhile).
    pub per_minute: u32,
}

/// How the CA checks that Pylon controls a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum AcmeChallenge {
    /// A file at `http://NAME/.well-known/acme-challenge/TOKEN`, answered by every
    /// plain-HTTP listener (port 80 for a public CA).
    Http01,
    /// A self-signed certificate in a TLS handshake with ALPN `acme-tls/1`, answered
    /// by this listener (port 443 for a public CA).
    TlsAlpn01,
}

/// An External Account Binding: the key id and the MAC key the CA gave (base64url, as
/// CAs hand it out).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExternalAccount {
    pub key_id: String,
    #[serde(skip)]
    pub hmac_key: String,
}

/// A DNS name a public CA could issue for: labels of letters, digits and hyphens.
pub fn is_dns_name(n: &str) -> bool {
    n.len() <= 253
        && n.contains('.')
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
