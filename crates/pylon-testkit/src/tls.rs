//! TLS for tests: a throw-away CA that issues server and client certificates (rcgen),
//! PEM files in a temporary directory, TLS clients and TLS origins.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;

use crate::client::{Answer, ClientBody, collect};
use crate::origin::Origin;

/// A certificate and its key, as PEM.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl Pem {
    /// Writes `NAME.pem` and `NAME-key.pem` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{name}.pem"));
        let k = dir.join(format!("{name}-key.pem"));
        std::fs::write(&c, &self.cert).unwrap();
        std::fs::write(&k, &self.key).unwrap();
        (c, k)
    }

    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key.as_bytes()).unwrap()
    }
}

/// A test certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    fn issue(&self, params: CertificateParams, cn: &str) -> Pem {
        self.issue_with(params, cn, KeyPair::generate().unwrap())
    }

    fn issue_with(&self, mut params: CertificateParams, cn: &str, key: KeyPair) -> Pem {
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Pem {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        self.issue(params, names.first().copied().unwrap_or("server"))
    }

    /// A server certificate with a key of the given algorithm (e.g. `rcgen::PKCS_ED25519`,
    /// `rcgen::PKCS_RSA_SHA256`).
    pub fn server_with(&self, names: &[&str], alg: &'static rcgen::SignatureAlgorithm) -> Pem {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate_for(alg).unwrap();
        self.issue_with(params, names.first().copied().unwrap_or("server"), key)
    }

    /// A server certificate that expired in 2021.
    pub fn expired_server(&self, names: &[&str]) -> Pem {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.issue(params, names.first().copied().unwrap_or("server"))
    }

    /// A client certificate with common name `cn` and a DNS SAN `dns`.
    pub fn client(&self, cn: &str, dns: &str) -> Pem {
        let mut params = CertificateParams::new(vec![dns.to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, cn)
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut r = rustls::RootCertStore::empty();
        r.add(self.cert_der()).unwrap();
        r
    }
}

/// A fresh temporary directory (certificate files, configs, sockets), under one
/// directory for this test process that is removed when the process exits.
pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = temp_root().join(N.fetch_add(1, Ordering::SeqCst).to_string());
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `text` to `dir/name` (a configuration, usually) and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// This process's directory of temporary files, made on first use.
fn temp_root() -> &'static PathBuf {
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("pylon-tests-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        // SAFETY: `atexit` takes a plain function with no arguments, registered once;
        // it runs when the test process exits, after every test.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(remove_temp_root);
        }
        root
    })
}

extern "C" fn remove_temp_root() {
    if let Some(root) = ROOT.get() {
        let _ = std::fs::remove_dir_all(root);
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS client trusting `ca`, offering `alpn`, optionally with a client certificate.
pub fn tls_client(ca: &TestCa, alpn: &[&str], client: Option<&Pem>) -> tokio_rustls::TlsConnector {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots());
    let mut c = match client {
        Some(p) => b.with_client_auth_cert(p.chain(), p.private_key()).unwrap(),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(c))
}

/// A TLS connection's negotiated facts.
pub struct Negotiated {
    pub alpn: Option<String>,
    pub peer_subject_cn: Option<String>,
}

/// Connects with TLS to `addr` sending `sni`.
pub async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    connector.connect(name, tcp).await
}

/// What a TLS connection negotiated: ALPN and the server certificate's DNS names.
pub fn negotiated(s: &tokio_rustls::client::TlsStream<TcpStream>) -> (Option<String>, Vec<String>) {
    let conn = s.get_ref().1;
    let alpn = conn
        .alpn_protocol()
        .map(|a| String::from_utf8_lossy(a).into_owned());
    let names = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
            let san = cert.subject_alternative_name().ok()??;
            Some(
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect(),
            )
        })
        .unwrap_or_default();
    (alpn, names)
}

/// Sends one request over HTTPS (HTTP/2 if ALPN chose h2, else HTTP/1.1).
pub async fn https_send(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    sni: &str,
    req: http::Request<ClientBody>,
) -> std::io::Result<Answer> {
    let s = tls_connect(connector, addr, sni).await?;
    let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = hyper_util::rt::TokioIo::new(s);
    let resp = if h2 {
        let (mut tx, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        tx.send_request(req).await.map_err(std::io::Error::other)?
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        tx.send_request(req).await.map_err(std::io::Error::other)?
    };
    Ok(collect(resp).await)
}

/// A TLS server config for an origin, optionally requiring client certificates from `ca`.
pub fn origin_tls_config(
    cert: &Pem,
    client_ca: Option<&TestCa>,
    alpn: &[&str],
) -> Arc<rustls::ServerConfig> {
    let b = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(ca) => b.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.roots()),
                provider(),
            )
            .build()
            .unwrap(),
        ),
        None => b.with_no_client_auth(),
    };
    let mut c = b
        .with_single_cert(cert.chain(), cert.private_key())
        .unwrap();
    c.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(c)
}

impl Origin {
    /// An origin speaking HTTPS (HTTP/1.1 and h2 by ALPN) with `config`; it answers
    /// with a JSON echo like [`Origin::echo`], plus the client certificate's subject.
    pub async fn echo_tls(config: Arc<rustls::ServerConfig>) -> Origin {
        Origin::start_tls(config).await
    }
}
