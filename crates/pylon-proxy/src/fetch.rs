//! The HTTP requests Pylon makes for itself, not for a client: trace exports to an
//! OTLP/HTTP collector and ACME calls to a certificate authority. One connection per
//! request, HTTP/1.1 on hyper's client connection, TLS through rustls with aws-lc-rs
//! (the system's roots, or the roots a setting names); answers read whole up to a bound.
//! The crates' bundled clients (reqwest, hyper-rustls) would bring a second TLS stack.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Request(String),
    #[error("connecting to {host}: {error}")]
    Connect { host: String, error: std::io::Error },
    #[error("TLS with {host}: {error}")]
    Tls { host: String, error: std::io::Error },
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("answer body: {0}")]
    Body(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A client for one kind of request: its timeout, TLS roots and largest answer.
#[derive(Clone)]
pub struct Fetcher {
    timeout: Duration,
    max_answer: usize,
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The system's trusted roots.
pub fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots
}

impl Fetcher {
    /// A client trusting `roots` for `https://` URLs.
    pub fn new(timeout: Duration, max_answer: usize, roots: rustls::RootCertStore) -> Fetcher {
        let mut c = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs offers TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Fetcher {
            timeout,
            max_answer,
            tls: tokio_rustls::TlsConnector::from(Arc::new(c)),
        }
    }

    /// Sends `req` (an absolute URL) and reads its answer, within the timeout.
    pub async fn send(&self, req: Request<Bytes>) -> Result<Response<Bytes>, FetchError> {
        tokio::time::timeout(self.timeout, self.exchange(req))
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))?
    }

    async fn exchange(&self, req: Request<Bytes>) -> Result<Response<Bytes>, FetchError> {
        let uri = req.uri().clone();
        let host = uri
            .host()
            .ok_or_else(|| FetchError::Request(format!("URL without a host: {uri}")))?
            .trim_matches(['[', ']'])
            .to_owned();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(FetchError::Request(format!("not an http(s) URL: {uri}"))),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|error| FetchError::Connect {
                host: format!("{host}:{port}"),
                error,
            })?;
        let _ = tcp.set_nodelay(true);
        let (mut parts, body) = req.into_parts();
        let authority = uri
            .authority()
            .map_or_else(|| host.clone(), |a| a.as_str().to_owned());
        let bad = |e: &dyn std::fmt::Display| FetchError::Request(e.to_string());
        parts
            .headers
            .insert(http::header::HOST, authority.parse().map_err(|e| bad(&e))?);
        parts.uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| bad(&e))?;
        let req = Request::from_parts(parts, Full::new(body));
        if https {
            let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| bad(&e))?;
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|error| FetchError::Tls {
                    host: host.clone(),
                    error,
                })?;
            self.round_trip(TokioIo::new(stream), req).await
        } else {
            self.round_trip(TokioIo::new(tcp), req).await
        }
    }

    async fn round_trip<T>(
        &self,
        io: T,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, FetchError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, self.max_answer)
            .collect()
            .await
            .map_err(|e| FetchError::Body(e.to_string()))?
            .to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}
