//! The answers to ACME challenges while an order waits for them, shared by every
//! listener of the process: HTTP-01 key authorizations by token (served at
//! `/.well-known/acme-challenge/TOKEN` on plain-HTTP listeners, before routing) and
//! TLS-ALPN-01 certificates by name (RFC 8737: self-signed, with the critical
//! `acmeIdentifier` extension, given to handshakes that offer only ALPN `acme-tls/1`).
//!
//! Each answer is also written to the certificate's storage folder
//! (`challenges/http-01/TOKEN`, `challenges/tls-alpn-01/NAME`), and looked for there when
//! this process has none: instances sharing a storage directory answer each other's
//! challenges, whichever one the CA's validation reaches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use rustls::sign::CertifiedKey;

use crate::http::body::ResponseBody;

/// The ALPN protocol of TLS-ALPN-01 validation handshakes.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The challenges being answered now.
#[derive(Default)]
pub struct Challenges {
    http01: Mutex<HashMap<String, String>>,
    tls_alpn01: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// How many answers are published, plus one per storage folder known: the request
    /// path looks no further (and takes no lock) while it is zero.
    published: AtomicUsize,
    /// The storage folders of the process's ACME certificates, where other instances
    /// publish too.
    folders: Mutex<Vec<PathBuf>>,
    pub answered_http01: AtomicU64,
    pub answered_tls_alpn01: AtomicU64,
}

/// Takes a published answer back when dropped (the order is over).
pub struct Published {
    challenges: Arc<Challenges>,
    key: Key,
    /// The answer's file in the storage folder.
    file: Option<PathBuf>,
}

enum Key {
    Http01(String),
    TlsAlpn01(String),
}

impl Drop for Published {
    fn drop(&mut self) {
        let c = &self.challenges;
        let removed = match &self.key {
            Key::Http01(token) => crate::lock(&c.http01).remove(token).is_some(),
            Key::TlsAlpn01(name) => crate::lock(&c.tls_alpn01).remove(name).is_some(),
        };
        if removed {
            c.published.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// A token or name usable as a file name: base64url characters, dots inside.
fn file_name_ok(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Writes an answer where instances sharing the folder find it.
fn publish_file(folder: &Path, kind: &str, name: &str, content: &str) -> Option<PathBuf> {
    let dir = folder.join("challenges").join(kind);
    let path = dir.join(name);
    let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, content));
    match written {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "ACME: cannot share the challenge answer with other instances");
            None
        }
    }
}

impl Challenges {
    /// Answers `GET /.well-known/acme-challenge/TOKEN` for a token an order published;
    /// `None` for every other request (which goes on to routing).
    pub fn http01_answer<B>(&self, req: &Request<B>) -> Option<Response<ResponseBody>> {
        if self.published.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let token = req.uri().path().strip_prefix(HTTP01_PREFIX)?;
        if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
            return None;
        }
        let answer = match crate::lock(&self.http01).get(token).cloned() {
            Some(a) => a,
            None => self.shared_answer("http-01", token)?,
        };
        self.answered_http01.fetch_add(1, Ordering::Relaxed);
        let mut resp = Response::new(ResponseBody::full(Bytes::from(answer)));
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/octet-stream"),
        );
        Some(resp)
    }

    /// The TLS-ALPN-01 certificate for `name`, while an order waits for it.
    pub fn tls_alpn01_cert(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = name?.to_ascii_lowercase();
        let cert = crate::lock(&self.tls_alpn01).get(&name).cloned();
        let cert = cert.or_else(|| {
            let hex = self.shared_answer("tls-alpn-01", &name)?;
            let digest = from_hex(hex.trim())?;
            challenge_cert(&name, &digest).ok().map(Arc::new)
        });
        if cert.is_some() {
            self.answered_tls_alpn01.fetch_add(1, Ordering::Relaxed);
        }
        cert
    }

    /// Another instance's answer, from the storage folders.
    fn shared_answer(&self, kind: &str, name: &str) -> Option<String> {
        if !file_name_ok(name) {
            return None;
        }
        let folders = crate::lock(&self.folders).clone();
        folders
            .iter()
            .find_map(|f| std::fs::read_to_string(f.join("challenges").join(kind).join(name)).ok())
    }

    /// Looks in `folder` for answers other instances publish.
    pub fn watch_folder(&self, folder: &Path) {
        let mut folders = crate::lock(&self.folders);
        if !folders.iter().any(|f| f == folder) {
            folders.push(folder.to_path_buf());
            self.published.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes an HTTP-01 answer: `key_authorization` at the token's path.
    /// Also written to `folder`, for other instances.
    pub fn publish_http01(
        self: &Arc<Self>,
        token: &str,
        key_authorization: &str,
        folder: Option<&Path>,
    ) -> Published {
        let old = crate::lock(&self.http01).insert(token.to_owned(), key_authorization.to_owned());
        if old.is_none() {
            self.published.fetch_add(1, Ordering::Relaxed);
        }
        let file = folder
            .filter(|_| file_name_ok(token))
            .and_then(|f| publish_file(f, "http-01", token, key_authorization));
        Published {
            challenges: Arc::clone(self),
            key: Key::Http01(token.to_owned()),
            file,
        }
    }

    /// Publishes a TLS-ALPN-01 answer for `name`: a certificate whose `acmeIdentifier`
    /// extension holds `digest`, the SHA-256 of the key authorization.
    /// Also written to `folder` (the digest, hex), for other instances.
    pub fn publish_tls_alpn01(
        self: &Arc<Self>,
        name: &str,
        digest: &[u8],
        folder: Option<&Path>,
    ) -> Result<Published, String> {
        let name = name.to_ascii_lowercase();
        let certified = challenge_cert(&name, digest)?;
        let old = crate::lock(&self.tls_alpn01).insert(name.clone(), Arc::new(certified));
        if old.is_none() {
            self.published.fetch_add(1, Ordering::Relaxed);
        }
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let file = folder
            .filter(|_| file_name_ok(&name))
            .and_then(|f| publish_file(f, "tls-alpn-01", &name, &hex));
        Ok(Published {
            challenges: Arc::clone(self),
            key: Key::TlsAlpn01(name),
            file,
        })
    }
}

/// The TLS-ALPN-01 certificate for `name`: self-signed, with `digest` in its critical
/// `acmeIdentifier` extension.
fn challenge_cert(name: &str, digest: &[u8]) -> Result<CertifiedKey, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|x| e(&x))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|x| e(&x))?;
    let cert = params.self_signed(&key).map_err(|x| e(&x))?;
    let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(|x| e(&x))?;
    // Not `from_der`: its key check parses the certificate with webpki, which refuses
    // the critical acmeIdentifier extension it does not know.
    let signing = super::super::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|x| e(&x))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn http01_answers_only_published_tokens_while_published() {
        let c = Arc::new(Challenges::default());
        assert!(
            c.http01_answer(&get("/.well-known/acme-challenge/tok"))
                .is_none()
        );
        let p = c.publish_http01("tok", "tok.thumb", None);
        let resp = c
            .http01_answer(&get("/.well-known/acme-challenge/tok"))
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            c.http01_answer(&get("/.well-known/acme-challenge/other"))
                .is_none()
        );
        assert!(c.http01_answer(&get("/tok")).is_none());
        let post = Request::post("/.well-known/acme-challenge/tok")
            .body(())
            .unwrap();
        assert!(c.http01_answer(&post).is_none());
        drop(p);
        assert!(
            c.http01_answer(&get("/.well-known/acme-challenge/tok"))
                .is_none()
        );
        assert_eq!(c.published.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn tls_alpn01_certificate_names_the_host_and_carries_the_digest() {
        let c = Arc::new(Challenges::default());
        let digest = [7u8; 32];
        let p = c
            .publish_tls_alpn01("a.example.com", &digest, None)
            .unwrap();
        let cert = c.tls_alpn01_cert(Some("A.example.com")).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(cert.cert[0].as_ref()).unwrap();
        let ext = x509
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING of the 32-byte digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
        assert!(c.tls_alpn01_cert(Some("b.example.com")).is_none());
        drop(p);
        assert!(c.tls_alpn01_cert(Some("a.example.com")).is_none());
    }

    #[test]
    fn answers_published_in_a_shared_folder_are_found_by_another_instance() {
        let folder = std::env::temp_dir().join(format!("pylon-acme-ch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&folder);
        let (a, b) = (
            Arc::new(Challenges::default()),
            Arc::new(Challenges::default()),
        );
        b.watch_folder(&folder);
        let path = "/.well-known/acme-challenge/tok-1";
        assert!(b.http01_answer(&get(path)).is_none());
        let p1 = a.publish_http01("tok-1", "tok-1.thumb", Some(&folder));
        let p2 = a
            .publish_tls_alpn01("a.example.com", &[9u8; 32], Some(&folder))
            .unwrap();
        assert_eq!(b.http01_answer(&get(path)).unwrap().status(), 200);
        let cert = b.tls_alpn01_cert(Some("a.example.com")).expect("shared");
        let (_, x509) = x509_parser::parse_x509_certificate(cert.cert[0].as_ref()).unwrap();
        assert!(
            x509.extensions()
                .iter()
                .any(|e| e.value.ends_with(&[9u8; 32]))
        );
        // Paths never leave the folder.
        assert!(
            b.http01_answer(&get("/.well-known/acme-challenge/..%2ftok-1"))
                .is_none()
        );
        drop((p1, p2));
        assert!(b.http01_answer(&get(path)).is_none());
        assert!(b.tls_alpn01_cert(Some("a.example.com")).is_none());
        let _ = std::fs::remove_dir_all(&folder);
    }
}
