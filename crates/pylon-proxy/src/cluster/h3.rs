//! HTTP/3 to one endpoint (clusters with `protocol = "h3"`), on quinn and h3: one QUIC
//! connection per endpoint carries every request as a stream of its own (QUIC's own
//! stream limit queues the excess), opened on the first request and again once it has
//! closed (idle timeout, GOAWAY, an error). The request body is pumped into its stream
//! by a task of its own while the response head is awaited; the response body is read
//! from the stream as the client takes it ([`H3Body`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::body::{BoxError, RequestBody};

pub(super) type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
type RecvStream = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;

/// Requests sent over an `h3` cluster's TCP fallback, and the QUIC connects that turned
/// to it, by cause (the endpoint unreachable over UDP, the handshake timing out), in the
/// whole process (`pylon_upstream_h3_fallbacks_total`,
/// `pylon_upstream_quic_unreachable_total`, `pylon_upstream_quic_timeouts_total`).
pub static FALLBACKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static QUIC_UNREACHABLE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static QUIC_TIMEOUTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// HTTP/3's "no error" and "request cancelled" codes (RFC 9114 §8.1).
const H3_NO_ERROR: u32 = 0x100;
const H3_REQUEST_CANCELLED: u64 = 0x10c;

/// One live QUIC connection.
struct Conn {
    send: SendRequest,
    quic: quinn::Connection,
}

/// The endpoint's QUIC side: its client endpoint (one UDP socket) and its connection.
pub(super) struct H3Pool {
    config: quinn::ClientConfig,
    server_name: String,
    endpoint: std::sync::OnceLock<quinn::Endpoint>,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

/// Why a request got no answer head.
#[derive(Debug, thiserror::Error)]
pub enum H3Error {
    #[error("QUIC connect: {0}")]
    Connect(String),
    #[error("QUIC handshake timed out")]
    ConnectTimeout,
    #[error("HTTP/3: {0}")]
    Stream(String),
}

impl H3Pool {
    pub(super) fn new(config: quinn::ClientConfig, server_name: String) -> H3Pool {
        H3Pool {
            config,
            server_name,
            endpoint: std::sync::OnceLock::new(),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// The live connection's request sender, else one connected now.
    pub(super) async fn sender(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<SendRequest, H3Error> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = &*conn
            && c.quic.close_reason().is_none()
        {
            return Ok(c.send.clone());
        }
        let connect = self.connect(addr);
        let c = tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| H3Error::ConnectTimeout)??;
        let send = c.send.clone();
        *conn = Some(c);
        Ok(send)
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, H3Error> {
        let endpoint = match self.endpoint.get() {
            Some(e) => e.clone(),
            None => {
                let any: SocketAddr = if addr.is_ipv6() {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                };
                let mut e =
                    quinn::Endpoint::client(any).map_err(|e| H3Error::Connect(e.to_string()))?;
                e.set_default_client_config(self.config.clone());
                self.endpoint.get_or_init(|| e).clone()
            }
        };
        let quic = endpoint
            .connect(addr, &self.server_name)
            .map_err(|e| H3Error::Connect(e.to_string()))?
            .await
            .map_err(|e| H3Error::Connect(e.to_string()))?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
            .await
            .map_err(|e| H3Error::Connect(e.to_string()))?;
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        Ok(Conn { send, quic })
    }

    /// Sends `req` on the endpoint's connection, `first` its sender (a new connection
    /// when a closed one refused the stream before anything of it went out), and reads
    /// the answer's head.
    pub(super) async fn send(
        &self,
        addr: SocketAddr,
        first: SendRequest,
        req: Request<RequestBody>,
        connect_timeout: Duration,
    ) -> Result<Response<H3Body>, H3Error> {
        let (parts, body) = req.into_parts();
        let head = Request::from_parts(parts, ());
        let mut stream = None;
        let mut first = Some(first);
        for _ in 0..2 {
            let mut send = match first.take() {
                Some(s) => s,
                None => self.sender(addr, connect_timeout).await?,
            };
            match send.send_request(head.clone()).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                // The connection was closing: nothing was sent on it.
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "HTTP/3 upstream connection closed; opening another");
                    *self.conn.lock().await = None;
                }
            }
        }
        let stream = stream.ok_or_else(|| H3Error::Stream("no stream".into()))?;
        let (mut up, mut down) = stream.split();
        // The body goes up while the answer is awaited (an upstream may answer first).
        tokio::spawn(async move {
            let mut body = body;
            loop {
                match body.frame().await {
                    None => break,
                    Some(Ok(frame)) => {
                        let sent = match frame.into_data() {
                            Ok(d) => up.send_data(d).await,
                            Err(f) => match f.into_trailers() {
                                Ok(t) => up.send_trailers(t).await,
                                Err(_) => Ok(()),
                            },
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                    Some(Err(_)) => {
                        // The client's body broke: the upstream must not take the
                        // cut request for a whole one.
                        up.stop_stream(h3::error::Code::from(H3_REQUEST_CANCELLED));
                        return;
                    }
                }
            }
            let _ = up.finish().await;
        });
        let resp = down
            .recv_response()
            .await
            .map_err(|e| H3Error::Stream(e.to_string()))?;
        Ok(resp.map(|()| H3Body {
            recv: Some(down),
            data_done: false,
        }))
    }
}

impl Drop for H3Pool {
    fn drop(&mut self) {
        if let Some(e) = self.endpoint.get() {
            e.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"");
        }
    }
}

/// An HTTP/3 upstream's answer body: DATA frames, then trailers. Dropped before its
/// end, its stream tells the upstream to stop sending (quinn's STOP_SENDING as it
/// drops; h3-quinn's own `stop_sending` panics while a read is under way, and h3
/// leaves one under way after each DATA frame).
pub struct H3Body {
    /// `None` once everything was read.
    recv: Option<RecvStream>,
    data_done: bool,
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(recv) = &mut this.recv else {
            return Poll::Ready(None);
        };
        if !this.data_done {
            match ready!(recv.poll_recv_data(cx)) {
                Ok(Some(mut buf)) => {
                    return Poll::Ready(Some(Ok(Frame::data(buf.copy_to_bytes(buf.remaining())))));
                }
                Ok(None) => this.data_done = true,
                Err(e) => {
                    this.recv = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
        let trailers = ready!(recv.poll_recv_trailers(cx));
        this.recv = None;
        match trailers {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
