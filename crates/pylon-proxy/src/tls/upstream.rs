//! TLS from Pylon to upstream endpoints: verification against the system roots or a
//! CA file, SNI override, client certificates (mutual TLS), ALPN for HTTP/2, and an
//! explicit lab-only switch to skip verification.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pylon_config::ConfigError;
use pylon_config::model::{UpstreamProtocol, UpstreamTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{load_roots, provider};
use crate::coalesce::Coalescing;

/// Accepts any server certificate: `insecure_skip_verify = true`, for lab use only.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "while loading the system's CA certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, "system CA certificates loaded");
    roots
}

/// Builds the client config for a cluster.
pub fn build(
    t: &UpstreamTls,
    protocol: UpstreamProtocol,
) -> Result<Arc<ClientConfig>, ConfigError> {
    // QUIC is TLS 1.3 only (RFC 9001).
    let versions: &[&'static rustls::SupportedProtocolVersion] = match protocol {
        UpstreamProtocol::H3 => &[&rustls::version::TLS13],
        _ => rustls::DEFAULT_VERSIONS,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| ConfigError::general(format!("TLS versions: {e}")))?;
    let builder = if t.insecure_skip_verify {
        tracing::warn!("upstream TLS verification is OFF (insecure_skip_verify): lab use only");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let roots = match &t.ca {
            Some(ca) => load_roots(ca)?,
            None => system_roots(),
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match &t.client_cert {
        Some(files) => {
            // Each file read once; rustls checks that the key matches the certificate.
            let chain = super::load_chain(&files.cert)?;
            let key = super::load_key(&files.key)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                files.key.at.error(format!(
                    "{}: client certificate and key: {e}",
                    files.key.path.display()
                ))
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match protocol {
        UpstreamProtocol::H2 => vec![b"h2".to_vec()],
        UpstreamProtocol::H3 => vec![b"h3".to_vec()],
        _ => vec![b"http/1.1".to_vec()],
    };
    Ok(Arc::new(config))
}

/// Opens TLS connections to a cluster's endpoints.
#[derive(Clone)]
pub struct TlsConnector {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
    /// The same settings for QUIC (HTTP/3 clusters).
    quic: Option<quinn::ClientConfig>,
}

impl TlsConnector {
    pub fn new(t: &UpstreamTls, protocol: UpstreamProtocol) -> Result<Self, ConfigError> {
        let server_name = match &t.server_name {
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|e| ConfigError::general(format!("invalid server_name {n}: {e}")))?,
            ),
            None => None,
        };
        let config = build(t, protocol)?;
        let quic = match protocol {
            UpstreamProtocol::H3 => {
                let q = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::clone(&config))
                    .map_err(|e| {
                        ConfigError::general(format!("TLS settings unfit for QUIC: {e}"))
                    })?;
                Some(quinn::ClientConfig::new(Arc::new(q)))
            }
            _ => None,
        };
        Ok(TlsConnector {
            connector: tokio_rustls::TlsConnector::from(config),
            server_name,
            quic,
        })
    }

    /// The QUIC client config, for HTTP/3 clusters.
    pub fn quic(&self) -> Option<&quinn::ClientConfig> {
        self.quic.as_ref()
    }

    /// The name a handshake with `addr` sends and checks: the cluster's `server_name`,
    /// else the endpoint's DNS name, else its IP address.
    pub fn name_for(
        &self,
        addr: SocketAddr,
        endpoint_name: Option<&ServerName<'static>>,
    ) -> ServerName<'static> {
        self.server_name
            .clone()
            .or_else(|| endpoint_name.cloned())
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }

    /// The TLS handshake over `tcp`, naming (SNI, certificate check) the cluster's
    /// `server_name`, else the endpoint's DNS name, else its IP address.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        endpoint_name: Option<&ServerName<'static>>,
        tcp: TcpStream,
    ) -> io::Result<UpstreamIo> {
        let name = self.name_for(addr, endpoint_name);
        let tls = self.connector.connect(name, Coalescing::new(tcp)).await?;
        Ok(UpstreamIo {
            stream: Stream::Tls(Box::new(tls)),
            _held: None,
        })
    }
}

/// An upstream connection, plain or TLS, with whatever must live as long as it (a
/// circuit-breaker slot).
pub struct UpstreamIo {
    stream: Stream,
    _held: Option<Box<dyn Send + Sync>>,
}

enum Stream {
    Plain(TcpStream),
    /// Its records written through [`Coalescing`] (`send(2)`, not `writev(2)`).
    Tls(Box<tokio_rustls::client::TlsStream<Coalescing<TcpStream>>>),
}

impl UpstreamIo {
    pub fn plain(s: TcpStream) -> Self {
        UpstreamIo {
            stream: Stream::Plain(s),
            _held: None,
        }
    }

    /// The TCP stream itself when there is no TLS (for splice), else `self`.
    pub fn into_plain(self) -> Result<TcpStream, Self> {
        match self.stream {
            Stream::Plain(s) if self._held.is_none() => Ok(s),
            stream => Err(UpstreamIo {
                stream,
                _held: self._held,
            }),
        }
    }

    /// The TCP connection underneath (to look for a close with `peek`).
    pub fn tcp(&self) -> &TcpStream {
        match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0.get_ref(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Keeps `value` alive until the connection is dropped.
    pub fn hold(&mut self, value: Box<dyn Send + Sync>) {
        self._held = Some(value);
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, b),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            // An HTTP/2 connection's frames: shaped for the socket as a TLS record is.
            Stream::Plain(s) => crate::coalesce::poll_write(s, cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
