//! Connection pool for one endpoint.
//!
//! HTTP/1.1 (`h1.rs`, driven inline by the request's task): idle connections kept LIFO
//! up to `max_idle_per_endpoint`, each returned only once its response has been read
//! to the end; a request that finds none takes a warm connection (`warm.rs`) before it
//! opens one. HTTP/2 (h2c, h2, over `hyper::client::conn`): multiplexed
//! connections, as many as the peer's stream limit calls for up to
//! `max_h2_connections` (`h2.rs`), with PING keepalive. A request that a pooled
//! connection could not even start sending (it was closed under us) goes once more on a
//! fresh connection: it never reached the upstream, so this is not a retry. Every
//! upstream socket gets the cluster's TCP keepalive and user timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pylon_config::model::{self, TcpOptions, UpstreamProtocol};
use tokio::net::TcpStream;

use super::body::UpstreamBody;
use super::h1::{self as client, Failure, H1Idle, SendError};
use super::h2::{self, Choice, H2Conn, H2Set, H2Stream, SettingsWatch};
use super::timing::TryTiming;
use super::warm::{WarmConnections, WarmIo};
use crate::cluster::body::RequestBody;
use crate::conn::ResponseTimer;
use crate::tls::upstream::{TlsConnector, UpstreamIo};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("handshake with {0} failed: {1}")]
    Handshake(SocketAddr, hyper::Error),
    #[error("no response head from {0} within the response timeout")]
    ResponseTimeout(SocketAddr),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(SocketAddr, std::io::Error),
    #[error("cluster limit reached: {0}")]
    Overloaded(&'static str),
    #[error("request to {0} failed: {1}")]
    Send(SocketAddr, SendError),
    #[error("HTTP/3 to {0}: {1}")]
    H3(SocketAddr, super::h3::H3Error),
}

/// The client a request is made for, as a PROXY header to a cluster with
/// `proxy_protocol` names it (a request extension).
#[derive(Debug, Clone)]
pub struct ClientAddresses {
    pub client: SocketAddr,
    pub local: SocketAddr,
    /// What the client's TLS negotiated (v2 TLVs), when Pylon terminated it.
    pub tls: Option<Arc<crate::l4::proxy_protocol::TlsInfo>>,
}

/// The cluster-wide connection limits an endpoint pool enforces.
#[derive(Clone, Default)]
pub struct ConnectionLimits {
    pub open: Arc<AtomicU64>,
    pub max_open: Option<u64>,
    pub pending: Arc<AtomicU64>,
    pub max_pending: Option<u64>,
}

/// Takes one unit of `counter` under `max`, released on drop.
struct Slot(Arc<AtomicU64>);

impl Slot {
    fn take(counter: &Arc<AtomicU64>, max: Option<u64>) -> Option<Slot> {
        let before = counter.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(Arc::clone(counter));
        if max.is_some_and(|m| before >= m) {
            return None;
        }
        Some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct EndpointPool {
    pub address: SocketAddr,
    /// `ip:port`, or `name:port` for an endpoint found through DNS, as a header value
    /// (for `host_header = "endpoint"` and health checks).
    pub host_value: http::HeaderValue,
    /// The DNS name the endpoint came from: the TLS server name unless the cluster
    /// sets one.
    server_name: Option<rustls_pki_types::ServerName<'static>>,
    /// PROXY protocol to this endpoint: every HTTP request then gets a connection of its
    /// own, opened with its client's header.
    proxy_protocol: Option<model::ProxyProtocolVersion>,
    /// Connections opened ahead, when the cluster asks for them.
    pub warm: Option<Arc<WarmConnections>>,
    protocol: UpstreamProtocol,
    tls: Option<TlsConnector>,
    limits: ConnectionLimits,
    connect_timeout: Duration,
    idle_timeout: Duration,
    tcp: TcpOptions,
    /// HTTP/2 PING interval and timeout; `None`: no PING.
    h2_keepalive: Option<(Duration, Duration)>,
    /// Idle HTTP/1.1 connections, and those lent to requests now (or being opened for
    /// them).
    h1: Arc<H1Idle>,
    h2: H2Set,
    /// The QUIC connection of an HTTP/3 cluster's endpoint.
    h3: Option<super::h3::H3Pool>,
    /// The same endpoint over TCP, for an `h3` cluster with `h3_fallback`.
    h3_fallback: std::sync::OnceLock<Arc<EndpointPool>>,
    /// Until when QUIC is taken to be blocked to this endpoint (requests go over the
    /// fallback meanwhile).
    quic_broken_until: std::sync::Mutex<Option<std::time::Instant>>,
}

/// After a QUIC connect fails, how long requests go over the TCP fallback before QUIC
/// is tried again.
const QUIC_RETRY_AFTER: Duration = Duration::from_secs(60);

/// An HTTP/2 stream lent to one exchange until its response body ends (an HTTP/1.1
/// connection is held by the response body itself).
pub struct Pooled {
    _stream: H2Stream,
}

impl Pooled {
    /// The exchange is over: the stream no longer counts against its connection.
    pub fn release(self) {}
}

impl EndpointPool {
    /// The pool, with its warm connections filling when the cluster has them.
    pub fn new(
        address: SocketAddr,
        host: Option<&str>,
        c: &model::Cluster,
        tls: Option<TlsConnector>,
        limits: ConnectionLimits,
    ) -> Arc<Self> {
        let authority = match host {
            Some(h) => format!("{}:{}", h.trim_end_matches('.'), address.port()),
            None => address.to_string(),
        };
        let warm = (c.pool.warm_connections > 0).then(|| {
            Arc::new(WarmConnections::new(
                c.pool.warm_connections,
                c.pool.idle_timeout,
            ))
        });
        let server_name: Option<rustls_pki_types::ServerName<'static>> = host.and_then(|h| {
            rustls_pki_types::ServerName::try_from(h.trim_end_matches('.').to_owned()).ok()
        });
        let h3 = tls.as_ref().and_then(|t| {
            let quic = t.quic()?.clone();
            let name = t
                .name_for(address, server_name.as_ref())
                .to_str()
                .into_owned();
            Some(super::h3::H3Pool::new(quic, name))
        });
        let pool = Arc::new(EndpointPool {
            h3,
            h3_fallback: std::sync::OnceLock::new(),
            quic_broken_until: std::sync::Mutex::new(None),
            tls,
            limits,
            address,
            host_value: http::HeaderValue::from_str(&authority)
                .unwrap_or_else(|_| http::HeaderValue::from_static("localhost")),
            proxy_protocol: c.proxy_protocol,
            h1: Arc::new(H1Idle::new(
                c.pool.max_idle_per_endpoint,
                c.pool.idle_timeout,
                warm.clone(),
            )),
            warm,
            server_name,
            protocol: c.protocol,
            connect_timeout: c.connect_timeout,
            idle_timeout: c.pool.idle_timeout,
            tcp: c.pool.tcp,
            h2_keepalive: c
                .pool
                .h2_keepalive_interval
                .map(|i| (i, c.pool.h2_keepalive_timeout)),
            h2: H2Set::new(c.pool.max_h2_connections),
        });
        if let Some(w) = &pool.warm {
            super::warm::spawn_fill(&pool, w);
        }
        pool
    }

    /// Idle HTTP/1.1 connections now held.
    pub fn idle_count(&self) -> usize {
        self.h1.count()
    }

    /// Live HTTP/2 connections now open.
    pub fn h2_connections(&self) -> usize {
        self.h2.live()
    }

    /// HTTP/2 streams in flight now.
    pub fn h2_streams(&self) -> usize {
        self.h2.streams()
    }

    /// Connections ready for a request now without a connect: warm ones and idle
    /// HTTP/1.1 ones that are still open.
    pub fn ready_connections(&self) -> usize {
        self.warm.as_ref().map_or(0, |w| w.ready()) + self.live_idle()
    }

    fn live_idle(&self) -> usize {
        self.h1.live()
    }

    /// Makes sure an HTTP/1.1 connection is ready for the next request: an idle one,
    /// else one opened now and kept idle. A caller with several addresses for one
    /// destination finds one that connects before it hands over a request body.
    pub async fn prepare_h1(&self) -> Result<(), UpstreamError> {
        if self.live_idle() > 0 {
            return Ok(());
        }
        let io = self
            .connect_io(&[], true, &mut TryTiming::default())
            .await?;
        self.h1.put(io);
        Ok(())
    }

    /// Whether warm connections are HTTP/2 ones (one ready connection in the HTTP/2
    /// set) rather than sockets waiting in the warm set.
    fn warm_h2(&self) -> bool {
        self.proxy_protocol.is_none()
            && matches!(self.protocol, UpstreamProtocol::H2c | UpstreamProtocol::H2)
    }

    /// How many warm connections to open now. For HTTP/1.1 idle pooled connections and
    /// those lent to requests count too: a connection that goes back to the pool stays
    /// ready, so only closed ones are replaced. Clusters with PROXY protocol give HTTP
    /// requests connections of their own: their warm connections serve Layer 4 only.
    pub(super) fn warm_missing(&self) -> usize {
        let Some(w) = &self.warm else { return 0 };
        // HTTP/3 endpoints speak QUIC only: nothing to open ahead over TCP.
        if self.protocol == UpstreamProtocol::H3 {
            return 0;
        }
        if self.warm_h2() {
            return usize::from(self.h2.live() == 0);
        }
        let pooled = if self.proxy_protocol.is_none() {
            self.live_idle() + self.h1.lent()
        } else {
            0
        };
        w.target().saturating_sub(w.ready() + pooled)
    }

    /// Opens one warm connection: a ready HTTP/2 connection for HTTP/2 clusters, else a
    /// TCP connection (TLS-done for TLS clusters without PROXY protocol) in the warm set.
    pub(super) async fn open_warm(&self) -> Result<(), UpstreamError> {
        if self.warm_h2() {
            let _one = self.h2.connecting.lock().await;
            if self.h2.live() == 0 {
                self.h2
                    .add(self.open_h2(false, &mut TryTiming::default()).await?);
            }
            return Ok(());
        }
        let Some(w) = &self.warm else { return Ok(()) };
        let connect = async {
            let stream = self.tcp_connect().await?;
            match (&self.tls, self.proxy_protocol) {
                (Some(tls), None) => {
                    let probe = socket2::SockRef::from(&stream)
                        .try_clone()
                        .map_err(|e| UpstreamError::Connect(self.address, e))?;
                    let io = tls
                        .connect(self.address, self.server_name.as_ref(), stream)
                        .await
                        .map_err(|e| UpstreamError::Tls(self.address, e))?;
                    Ok(WarmIo::Tls { io, probe })
                }
                _ => Ok(WarmIo::Plain(stream)),
            }
        };
        let io = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(self.address))??;
        w.put(io);
        Ok(())
    }

    /// Drops connections idle for longer than the idle timeout, and closed ones.
    pub fn sweep(&self) {
        let mut dropped = self.h1.sweep();
        let keep_one = self.warm.is_some() && self.warm_h2();
        dropped |= self.h2.sweep(self.idle_timeout, keep_one);
        if dropped && let Some(w) = &self.warm {
            w.wake();
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The cluster's TCP keepalive and user timeout, for every upstream socket.
    pub fn tcp_options(&self) -> &TcpOptions {
        &self.tcp
    }

    /// Whether connections to this endpoint are TLS.
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS handshake over an open TCP connection (L4 relays), within the connect
    /// timeout; a plain stream for clusters without TLS.
    pub async fn tls_over(&self, tcp: TcpStream) -> std::io::Result<UpstreamIo> {
        let Some(tls) = &self.tls else {
            return Ok(UpstreamIo::plain(tcp));
        };
        tokio::time::timeout(
            self.connect_timeout,
            tls.connect(self.address, self.server_name.as_ref(), tcp),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }

    /// TCP connect, then the TLS handshake for TLS clusters, all within the connect
    /// timeout.
    pub(crate) async fn connect(&self) -> Result<TokioIo<UpstreamIo>, UpstreamError> {
        self.connect_with(&[], true, &mut TryTiming::default())
            .await
    }

    /// The TCP connection itself, with `TCP_NODELAY` and the cluster's TCP options.
    async fn tcp_connect(&self) -> Result<TcpStream, UpstreamError> {
        let stream = TcpStream::connect(self.address)
            .await
            .map_err(|e| UpstreamError::Connect(self.address, e))?;
        let _ = stream.set_nodelay(true);
        crate::tcp_options::apply(&stream, &self.tcp);
        Ok(stream)
    }

    /// Like [`connect`](Self::connect), sending `preface` (a PROXY header) first, before
    /// any TLS. `for_request`: a request waits for it (counted in
    /// `max_pending_requests`), unlike a warm connection.
    async fn connect_with(
        &self,
        preface: &[u8],
        for_request: bool,
        timing: &mut TryTiming,
    ) -> Result<TokioIo<UpstreamIo>, UpstreamError> {
        self.connect_io(preface, for_request, timing)
            .await
            .map(TokioIo::new)
    }

    /// A new connection, its TCP connect and TLS handshake times in `timing`.
    async fn connect_io(
        &self,
        preface: &[u8],
        for_request: bool,
        timing: &mut TryTiming,
    ) -> Result<UpstreamIo, UpstreamError> {
        let connection = Slot::take(&self.limits.open, self.limits.max_open)
            .ok_or(UpstreamError::Overloaded("max_connections"))?;
        let _pending = if for_request {
            Some(
                Slot::take(&self.limits.pending, self.limits.max_pending)
                    .ok_or(UpstreamError::Overloaded("max_pending_requests"))?,
            )
        } else {
            None
        };
        let connect = async {
            let started = Instant::now();
            let mut stream = self.tcp_connect().await?;
            let connected = Instant::now();
            timing.connect = Some(connected - started);
            if !preface.is_empty() {
                tokio::io::AsyncWriteExt::write_all(&mut stream, preface)
                    .await
                    .map_err(|e| UpstreamError::Connect(self.address, e))?;
            }
            match &self.tls {
                None => Ok(UpstreamIo::plain(stream)),
                Some(tls) => {
                    let io = tls
                        .connect(self.address, self.server_name.as_ref(), stream)
                        .await
                        .map_err(|e| UpstreamError::Tls(self.address, e))?;
                    timing.tls = Some(connected.elapsed());
                    Ok(io)
                }
            }
        };
        let mut io = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(self.address))??;
        // The connection counts against max_connections for as long as it is open.
        io.hold(Box::new(connection));
        Ok(io)
    }

    /// Sends `req` and waits (up to `response_timeout`) for the response head; where
    /// the time went in `timing`. An HTTP/1.1 exchange waits on `timer`, the client
    /// connection's, when it has one (`conn::ResponseTimer`).
    #[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
    pub fn send<'a>(
        self: &'a Arc<Self>,
        req: Request<RequestBody>,
        response_timeout: Duration,
        timer: Option<&'a ResponseTimer>,
        timing: &'a mut TryTiming,
    ) -> impl Future<Output = Result<(Response<UpstreamBody>, Option<Pooled>), UpstreamError>> + 'a
    {
        async move {
            if let Some(version) = self.proxy_protocol {
                // Boxed: a connection per request (PROXY headers) is the rare setup.
                return Box::pin(self.send_dedicated(version, req, response_timeout, timing))
                    .await
                    .map(|r| (r, None));
            }
            match self.protocol {
                UpstreamProtocol::Http1 => self
                    .send_h1(req, response_timeout, timer, timing)
                    .await
                    .map(|r| (r.map(UpstreamBody::H1), None)),
                UpstreamProtocol::H2c | UpstreamProtocol::H2 => self
                    .send_h2(req, response_timeout, timing)
                    .await
                    .map(|(r, p)| (r.map(UpstreamBody::H2), Some(p))),
                UpstreamProtocol::H3 => {
                    Box::pin(self.send_h3_or_fallback(req, response_timeout, timing)).await
                }
            }
        }
    }

    /// An `h3` endpoint's fallback over TCP (`h3_fallback`).
    pub(super) fn set_h3_fallback(&self, tcp: Arc<EndpointPool>) {
        let _ = self.h3_fallback.set(tcp);
    }

    /// HTTP/3, or the TCP fallback while QUIC cannot reach the endpoint: a QUIC connect
    /// that fails or times out (nothing of the request sent yet) sends the request over
    /// TCP and keeps doing so for [`QUIC_RETRY_AFTER`].
    async fn send_h3_or_fallback(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        response_timeout: Duration,
        timing: &mut TryTiming,
    ) -> Result<(Response<UpstreamBody>, Option<Pooled>), UpstreamError> {
        use std::sync::atomic::Ordering::Relaxed;
        let fallback = self.h3_fallback.get();
        let broken =
            crate::lock(&self.quic_broken_until).is_some_and(|t| std::time::Instant::now() < t);
        if let (Some(tcp), true) = (fallback, broken) {
            super::h3::FALLBACKS.fetch_add(1, Relaxed);
            return tcp
                .send(for_tcp(req, tcp.protocol), response_timeout, None, timing)
                .await;
        }
        let h3 = self.quic()?;
        let sender = match h3.sender(self.address, self.connect_timeout).await {
            Ok(s) => s,
            Err(e) => {
                let Some(tcp) = fallback else {
                    return Err(UpstreamError::H3(self.address, e));
                };
                let cause = match e {
                    super::h3::H3Error::ConnectTimeout => &super::h3::QUIC_TIMEOUTS,
                    _ => &super::h3::QUIC_UNREACHABLE,
                };
                cause.fetch_add(1, Relaxed);
                super::h3::FALLBACKS.fetch_add(1, Relaxed);
                tracing::info!(endpoint = %self.address, error = %e, "QUIC unreachable; HTTP/3 requests go over TCP for a while");
                *crate::lock(&self.quic_broken_until) =
                    Some(std::time::Instant::now() + QUIC_RETRY_AFTER);
                return tcp
                    .send(for_tcp(req, tcp.protocol), response_timeout, None, timing)
                    .await;
            }
        };
        self.send_h3_on(sender, req, response_timeout)
            .await
            .map(|r| (r.map(|b| UpstreamBody::H3(Box::new(b))), None))
    }

    /// The endpoint's QUIC side (an `h3` cluster's endpoints always have one).
    fn quic(&self) -> Result<&super::h3::H3Pool, UpstreamError> {
        self.h3.as_ref().ok_or_else(|| {
            UpstreamError::H3(
                self.address,
                super::h3::H3Error::Connect("no QUIC settings".into()),
            )
        })
    }

    /// A request of Pylon's own (a health check) on the endpoint's QUIC connection,
    /// within the connect timeout twice over.
    pub async fn request_h3(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<super::h3::H3Body>, UpstreamError> {
        let h3 = self.quic()?;
        let sender = h3
            .sender(self.address, self.connect_timeout)
            .await
            .map_err(|e| UpstreamError::H3(self.address, e))?;
        self.send_h3_on(sender, req, self.connect_timeout * 2).await
    }

    /// A request on the endpoint's QUIC connection (HTTP/3 clusters); the response
    /// head within `response_timeout`.
    async fn send_h3_on(
        &self,
        sender: super::h3::SendRequest,
        req: Request<RequestBody>,
        response_timeout: Duration,
    ) -> Result<Response<super::h3::H3Body>, UpstreamError> {
        let h3 = self.quic()?;
        let _pending = Slot::take(&self.limits.pending, self.limits.max_pending)
            .ok_or(UpstreamError::Overloaded("max_pending_requests"))?;
        tokio::time::timeout(
            response_timeout,
            h3.send(self.address, sender, req, self.connect_timeout),
        )
        .await
        .map_err(|_| UpstreamError::ResponseTimeout(self.address))?
        .map_err(|e| UpstreamError::H3(self.address, e))
    }

    /// One request on a connection of its own, opened with its client's PROXY header
    /// (so the upstream sees who each request is for); closed after the response.
    async fn send_dedicated(
        &self,
        version: model::ProxyProtocolVersion,
        req: Request<RequestBody>,
        response_timeout: Duration,
        timing: &mut TryTiming,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let preface = match req.extensions().get::<ClientAddresses>() {
            Some(a) => {
                crate::l4::proxy_protocol::encode(version, a.client, a.local, a.tls.as_deref())
            }
            None => Vec::new(),
        };
        let io = Box::pin(self.connect_io(&preface, true, timing)).await?;
        timing.queued = Some(Duration::ZERO);
        let sent_at = &mut timing.sent_at;
        let sent = async {
            if self.protocol == UpstreamProtocol::Http1 {
                let (parts, body) = req.into_parts();
                client::exchange(io, parts, body, None, false, sent_at)
                    .await
                    .map(|r| r.map(UpstreamBody::H1))
                    .map_err(|f| match f {
                        Failure::Unsent(_, e) | Failure::Failed(e) => {
                            UpstreamError::Send(self.address, e)
                        }
                    })
            } else {
                let (mut sender, conn) = self
                    .h2_builder()
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(|e| UpstreamError::Handshake(self.address, e))?;
                tokio::spawn(conn);
                sender
                    .send_request(req)
                    .await
                    .map(|r| r.map(UpstreamBody::H2))
                    .map_err(|e| UpstreamError::Send(self.address, e.into()))
            }
        };
        tokio::time::timeout(response_timeout, sent)
            .await
            .map_err(|_| UpstreamError::ResponseTimeout(self.address))?
    }

    /// An idle connection, else a warm one, else a new one. The flag tells one that
    /// waited open (the endpoint may have closed it meanwhile).
    /// Nothing waits for a connection: one is taken or opened at once, or the
    /// request is refused by the limits.
    async fn ready_h1(&self, timing: &mut TryTiming) -> Result<(UpstreamIo, bool), UpstreamError> {
        timing.queued = Some(Duration::ZERO);
        if let Some(io) = self.h1.take() {
            return Ok((io, true));
        }
        if let Some(io) = self.take_warm()? {
            return Ok((io, true));
        }
        // Boxed: a connect (TCP, TLS) is rare on a pooled endpoint, and its state would
        // otherwise make every request's future as large as a TLS handshake.
        Ok((Box::pin(self.connect_io(&[], true, timing)).await?, false))
    }

    /// A warm connection for an HTTP/1.1 request, counted against `max_connections`
    /// from now on.
    fn take_warm(&self) -> Result<Option<UpstreamIo>, UpstreamError> {
        let Some(w) = &self.warm else { return Ok(None) };
        if w.ready() == 0 {
            return Ok(None);
        }
        let connection = Slot::take(&self.limits.open, self.limits.max_open)
            .ok_or(UpstreamError::Overloaded("max_connections"))?;
        Ok(w.take().map(|warm| {
            let mut io = warm.into_io();
            io.hold(Box::new(connection));
            io
        }))
    }

    /// (Not an `async fn`: one of those keeps its arguments twice in its state, as
    /// captured and as moved into its body, and this state is copied into every
    /// request's future.)
    #[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
    fn send_h1<'a>(
        self: &'a Arc<Self>,
        mut req: Request<RequestBody>,
        response_timeout: Duration,
        timer: Option<&'a ResponseTimer>,
        timing: &'a mut TryTiming,
    ) -> impl Future<Output = Result<Response<client::H1Body>, UpstreamError>> + 'a {
        async move {
            loop {
                // Counted before an idle or warm connection is taken, so that the warm
                // count never sees the connection missing.
                let lent = client::Lent::new(&self.h1);
                let (io, reused) = self.ready_h1(timing).await?;
                // Pinned where it is made: the timer wraps a pointer, not a copy of the
                // exchange's state.
                let (parts, body) = req.into_parts();
                let exchange = std::pin::pin!(client::exchange(
                    io,
                    parts,
                    body,
                    Some(lent),
                    reused,
                    &mut timing.sent_at
                ));
                let sent = match timer {
                    Some(timer) => timer.within(response_timeout, exchange).await,
                    None => tokio::time::timeout(response_timeout, exchange).await.ok(),
                };
                match sent {
                    None => return Err(UpstreamError::ResponseTimeout(self.address)),
                    Some(Ok(resp)) => return Ok(resp),
                    // The connection was closed under the request: a fresh one.
                    Some(Err(Failure::Unsent(unsent, e))) if reused => {
                        tracing::debug!(endpoint = %self.address, error = %e, "pooled connection closed; request sent on a new one");
                        req = *unsent;
                    }
                    Some(Err(Failure::Unsent(_, e) | Failure::Failed(e))) => {
                        return Err(UpstreamError::Send(self.address, e));
                    }
                }
            }
        }
    }

    fn h2_builder(&self) -> http2::Builder<TokioExecutor> {
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new());
        if let Some((interval, timeout)) = self.h2_keepalive {
            b.keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
        }
        b
    }

    /// A new HTTP/2 connection, its server's SETTINGS watched for the stream limit.
    async fn open_h2(
        &self,
        for_request: bool,
        timing: &mut TryTiming,
    ) -> Result<H2Conn, UpstreamError> {
        let io = self.connect_with(&[], for_request, timing).await?;
        let peer = h2::peer_limit();
        let io = TokioIo::new(SettingsWatch::new(io.into_inner(), Arc::clone(&peer)));
        let (sender, conn) = self
            .h2_builder()
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Handshake(self.address, e))?;
        let warm = self.warm.as_ref().map(Arc::downgrade);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream h2 connection ended with an error");
            }
            if let Some(w) = warm.and_then(|w| w.upgrade()) {
                w.wake();
            }
        });
        Ok(H2Conn::new(sender, peer))
    }

    /// A stream on the least-loaded connection with room, opening another connection
    /// (one opener at a time) when all are full and the cap allows. The time spent
    /// waiting for room or for another request's connect is `timing.queued`.
    async fn h2_sender(
        &self,
        timing: &mut TryTiming,
    ) -> Result<(http2::SendRequest<RequestBody>, H2Stream), UpstreamError> {
        if let Choice::Use(sender, stream) = self.h2.choose() {
            timing.queued = Some(Duration::ZERO);
            return Ok((sender, stream));
        }
        let started = Instant::now();
        let lent = self.h2_sender_slow(timing).await;
        let waited = started.elapsed();
        let connecting = timing.connect.unwrap_or_default() + timing.tls.unwrap_or_default();
        timing.queued = Some(waited.saturating_sub(connecting));
        lent
    }

    async fn h2_sender_slow(
        &self,
        timing: &mut TryTiming,
    ) -> Result<(http2::SendRequest<RequestBody>, H2Stream), UpstreamError> {
        loop {
            match self.h2.choose() {
                Choice::Use(sender, stream) => return Ok((sender, stream)),
                Choice::Wait(peer) => h2::wait_for_settings(&peer, self.connect_timeout).await,
                Choice::Open => {
                    let _one = self.h2.connecting.lock().await;
                    // Another opener may have finished meanwhile.
                    match self.h2.choose() {
                        Choice::Use(sender, stream) => return Ok((sender, stream)),
                        Choice::Wait(_) => continue,
                        Choice::Open => {
                            let conn = Box::pin(self.open_h2(true, timing)).await?;
                            let lent = conn.lend();
                            self.h2.add(conn);
                            return Ok(lent);
                        }
                    }
                }
            }
        }
    }

    async fn send_h2(
        &self,
        req: Request<RequestBody>,
        response_timeout: Duration,
        timing: &mut TryTiming,
    ) -> Result<(Response<hyper::body::Incoming>, Pooled), UpstreamError> {
        let (mut sender, stream) = self.h2_sender(timing).await?;
        let sent = tokio::time::timeout(response_timeout, async {
            sender.ready().await?;
            sender.send_request(req).await
        })
        .await;
        match sent {
            Err(_) => Err(UpstreamError::ResponseTimeout(self.address)),
            Ok(Ok(resp)) => Ok((resp, Pooled { _stream: stream })),
            Ok(Err(e)) => Err(UpstreamError::Send(self.address, e.into())),
        }
    }
}

/// A request shaped for HTTP/3 (absolute target, no `Host`) reshaped for `protocol` over
/// TCP: HTTP/2 keeps the absolute target; HTTP/1.1 takes `Host` from it and the path.
fn for_tcp(mut req: Request<RequestBody>, protocol: UpstreamProtocol) -> Request<RequestBody> {
    match protocol {
        UpstreamProtocol::Http1 => {
            *req.version_mut() = http::Version::HTTP_11;
            if let Some(host) = req
                .uri()
                .authority()
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(http::header::HOST, host);
            }
            let path = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            *req.uri_mut() = http::Uri::from(path);
        }
        _ => *req.version_mut() = http::Version::HTTP_2,
    }
    req
}
