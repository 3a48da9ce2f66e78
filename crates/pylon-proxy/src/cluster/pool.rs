//! Connection pool for one endpoint, over `hyper::client::conn`.
//!
//! HTTP/1.1: idle connections kept LIFO up to `max_idle_per_endpoint`, each returned
//! only once its response has been read to the end; a request that finds none takes a
//! warm connection (`warm.rs`) before it opens one. HTTP/2 (h2c, h2): multiplexed
//! connections, as many as the peer's stream limit calls for up to
//! `max_h2_connections` (`h2.rs`), with PING keepalive. A request that a pooled
//! connection could not even start sending (it was closed under us) goes once more on a
//! fresh connection: it never reached the upstream, so this is not a retry. Every
//! upstream socket gets the cluster's TCP keepalive and user timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pylon_config::model::{self, TcpOptions, UpstreamProtocol};
use tokio::net::TcpStream;

use super::h2::{self, Choice, H2Conn, H2Set, H2Stream, SettingsWatch};
use super::warm::{WarmConnections, WarmIo};
use crate::cluster::body::RequestBody;
use crate::lock;
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
    Send(SocketAddr, hyper::Error),
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

struct Idle {
    since: Instant,
    sender: http1::SendRequest<RequestBody>,
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
    max_idle: usize,
    tcp: TcpOptions,
    /// HTTP/2 PING interval and timeout; `None`: no PING.
    h2_keepalive: Option<(Duration, Duration)>,
    idle: Mutex<Vec<Idle>>,
    /// HTTP/1.1 connections lent to requests now (or being opened for them).
    lent: AtomicUsize,
    h2: H2Set,
}

/// An upstream connection (HTTP/1.1) or stream (HTTP/2) lent to one exchange until its
/// response body ends; the HTTP/1.1 connection goes back to the pool via
/// [`Pooled::release`].
pub struct Pooled(Lent);

enum Lent {
    H1 {
        sender: http1::SendRequest<RequestBody>,
        guard: H1Lent,
    },
    H2 {
        _stream: H2Stream,
    },
}

/// An HTTP/1.1 connection counted as lent until dropped (warm connections count lent
/// ones as open, so a request in flight does not make them open another).
struct H1Lent(Arc<EndpointPool>);

impl H1Lent {
    fn new(pool: &Arc<EndpointPool>) -> Self {
        pool.lent.fetch_add(1, Ordering::Relaxed);
        H1Lent(Arc::clone(pool))
    }
}

impl Drop for H1Lent {
    fn drop(&mut self) {
        self.0.lent.fetch_sub(1, Ordering::Relaxed);
        if let Some(w) = &self.0.warm {
            w.wake();
        }
    }
}

impl Pooled {
    /// Returns the connection to the pool (an HTTP/2 stream just ends). Its response
    /// has been read to the end, so it becomes ready for the next request as soon as
    /// hyper has noticed; checkout waits for that instead of a task per request here.
    pub fn release(self) {
        if let Lent::H1 { sender, guard } = self.0
            && !sender.is_closed()
        {
            guard.0.put_idle(sender);
        }
    }
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
        let pool = Arc::new(EndpointPool {
            tls,
            limits,
            address,
            host_value: http::HeaderValue::from_str(&authority)
                .unwrap_or_else(|_| http::HeaderValue::from_static("localhost")),
            proxy_protocol: c.proxy_protocol,
            warm: (c.pool.warm_connections > 0).then(|| {
                Arc::new(WarmConnections::new(
                    c.pool.warm_connections,
                    c.pool.idle_timeout,
                ))
            }),
            server_name: host.and_then(|h| {
                rustls_pki_types::ServerName::try_from(h.trim_end_matches('.').to_owned()).ok()
            }),
            protocol: c.protocol,
            connect_timeout: c.connect_timeout,
            idle_timeout: c.pool.idle_timeout,
            max_idle: c.pool.max_idle_per_endpoint,
            tcp: c.pool.tcp,
            h2_keepalive: c
                .pool
                .h2_keepalive_interval
                .map(|i| (i, c.pool.h2_keepalive_timeout)),
            idle: Mutex::new(Vec::new()),
            lent: AtomicUsize::new(0),
            h2: H2Set::new(c.pool.max_h2_connections),
        });
        if let Some(w) = &pool.warm {
            super::warm::spawn_fill(&pool, w);
        }
        pool
    }

    /// Idle HTTP/1.1 connections now held.
    pub fn idle_count(&self) -> usize {
        lock(&self.idle).len()
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
        lock(&self.idle)
            .iter()
            .filter(|i| !i.sender.is_closed())
            .count()
    }

    /// Makes sure an HTTP/1.1 connection is ready for the next request: an idle one,
    /// else one opened now and kept idle. A caller with several addresses for one
    /// destination finds one that connects before it hands over a request body.
    pub async fn prepare_h1(&self) -> Result<(), UpstreamError> {
        if self.live_idle() > 0 {
            return Ok(());
        }
        let sender = self.connect_h1().await?;
        self.put_idle(sender);
        Ok(())
    }

    fn put_idle(&self, sender: http1::SendRequest<RequestBody>) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(Idle {
                since: Instant::now(),
                sender,
            });
        }
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
        if self.warm_h2() {
            return usize::from(self.h2.live() == 0);
        }
        let pooled = if self.proxy_protocol.is_none() {
            self.live_idle() + self.lent.load(Ordering::Relaxed)
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
                self.h2.add(self.open_h2(false).await?);
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
        let now = Instant::now();
        let mut dropped = {
            let mut idle = lock(&self.idle);
            let before = idle.len();
            idle.retain(|i| {
                now.duration_since(i.since) < self.idle_timeout && !i.sender.is_closed()
            });
            idle.len() != before
        };
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
        self.connect_with(&[], true).await
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
    ) -> Result<TokioIo<UpstreamIo>, UpstreamError> {
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
            let mut stream = self.tcp_connect().await?;
            if !preface.is_empty() {
                tokio::io::AsyncWriteExt::write_all(&mut stream, preface)
                    .await
                    .map_err(|e| UpstreamError::Connect(self.address, e))?;
            }
            match &self.tls {
                None => Ok(UpstreamIo::plain(stream)),
                Some(tls) => tls
                    .connect(self.address, self.server_name.as_ref(), stream)
                    .await
                    .map_err(|e| UpstreamError::Tls(self.address, e)),
            }
        };
        let mut io = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(self.address))??;
        // The connection counts against max_connections for as long as it is open.
        io.hold(Box::new(connection));
        Ok(TokioIo::new(io))
    }

    /// Sends `req` and waits (up to `response_timeout`) for the response head.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        response_timeout: Duration,
    ) -> Result<(Response<Incoming>, Option<Pooled>), UpstreamError> {
        if let Some(version) = self.proxy_protocol {
            return self
                .send_dedicated(version, req, response_timeout)
                .await
                .map(|r| (r, None));
        }
        match self.protocol {
            UpstreamProtocol::Http1 => self.send_h1(req, response_timeout).await,
            UpstreamProtocol::H2c | UpstreamProtocol::H2 => self
                .send_h2(req, response_timeout)
                .await
                .map(|(r, p)| (r, Some(p))),
        }
    }

    /// One request on a connection of its own, opened with its client's PROXY header
    /// (so the upstream sees who each request is for); closed after the response.
    async fn send_dedicated(
        &self,
        version: model::ProxyProtocolVersion,
        req: Request<RequestBody>,
        response_timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let preface = match req.extensions().get::<ClientAddresses>() {
            Some(a) => {
                crate::l4::proxy_protocol::encode(version, a.client, a.local, a.tls.as_deref())
            }
            None => Vec::new(),
        };
        let io = self.connect_with(&preface, true).await?;
        let sent = async {
            if self.protocol == UpstreamProtocol::Http1 {
                let (mut sender, conn) = http1::handshake(io)
                    .await
                    .map_err(|e| UpstreamError::Handshake(self.address, e))?;
                tokio::spawn(conn.with_upgrades());
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| UpstreamError::Send(self.address, e))
            } else {
                let (mut sender, conn) = self
                    .h2_builder()
                    .handshake(io)
                    .await
                    .map_err(|e| UpstreamError::Handshake(self.address, e))?;
                tokio::spawn(conn);
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| UpstreamError::Send(self.address, e))
            }
        };
        tokio::time::timeout(response_timeout, sent)
            .await
            .map_err(|_| UpstreamError::ResponseTimeout(self.address))?
    }

    fn checkout_h1(&self) -> Option<http1::SendRequest<RequestBody>> {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        let mut found = None;
        let mut dropped = false;
        while let Some(i) = idle.pop() {
            if now.duration_since(i.since) < self.idle_timeout && !i.sender.is_closed() {
                found = Some(i.sender);
                break;
            }
            dropped = true;
        }
        drop(idle);
        if dropped && let Some(w) = &self.warm {
            w.wake();
        }
        found
    }

    /// An idle connection that is ready now (or within a moment), else a warm one,
    /// else a new one. The flag tells a new connection.
    async fn ready_h1(&self) -> Result<(http1::SendRequest<RequestBody>, bool), UpstreamError> {
        while let Some(mut s) = self.checkout_h1() {
            if s.is_ready() {
                return Ok((s, false));
            }
            // Released right at the end of its previous response: hyper is finishing it.
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(100), s.ready()).await {
                return Ok((s, false));
            }
        }
        if let Some(io) = self.take_warm()? {
            // Like a reused connection: the endpoint may have closed it while it
            // waited, so a request it cannot start goes on a fresh one.
            return Ok((self.handshake_h1(io).await?, false));
        }
        Ok((self.connect_h1().await?, true))
    }

    /// A warm connection for an HTTP/1.1 request, counted against `max_connections`
    /// from now on.
    fn take_warm(&self) -> Result<Option<TokioIo<UpstreamIo>>, UpstreamError> {
        let Some(w) = &self.warm else { return Ok(None) };
        if w.ready() == 0 {
            return Ok(None);
        }
        let connection = Slot::take(&self.limits.open, self.limits.max_open)
            .ok_or(UpstreamError::Overloaded("max_connections"))?;
        Ok(w.take().map(|warm| {
            let mut io = warm.into_io();
            io.hold(Box::new(connection));
            TokioIo::new(io)
        }))
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let io = self.connect().await?;
        self.handshake_h1(io).await
    }

    /// hyper's HTTP/1.1 client over an open connection (nothing goes on the wire).
    async fn handshake_h1(
        &self,
        io: TokioIo<UpstreamIo>,
    ) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Handshake(self.address, e))?;
        let warm = self.warm.as_ref().map(Arc::downgrade);
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
            // Closed: a warm connection may be missing now.
            if let Some(w) = warm.and_then(|w| w.upgrade()) {
                w.wake();
            }
        });
        Ok(sender)
    }

    async fn send_h1(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        response_timeout: Duration,
    ) -> Result<(Response<Incoming>, Option<Pooled>), UpstreamError> {
        let mut req = req;
        loop {
            // Counted before an idle or warm connection is taken, so that the warm
            // count never sees the connection missing.
            let guard = H1Lent::new(self);
            let (mut sender, fresh) = self.ready_h1().await?;
            let sent = tokio::time::timeout(response_timeout, sender.try_send_request(req)).await;
            match sent {
                Err(_) => return Err(UpstreamError::ResponseTimeout(self.address)),
                Ok(Ok(resp)) => {
                    return Ok((resp, Some(Pooled(Lent::H1 { sender, guard }))));
                }
                Ok(Err(mut e)) => match e.take_message() {
                    // Never started on a reused connection: send it on a fresh one.
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(UpstreamError::Send(self.address, e.into_error())),
                },
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
    async fn open_h2(&self, for_request: bool) -> Result<H2Conn, UpstreamError> {
        let io = self.connect_with(&[], for_request).await?;
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
    /// (one opener at a time) when all are full and the cap allows.
    async fn h2_sender(
        &self,
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
                            let conn = self.open_h2(true).await?;
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
    ) -> Result<(Response<Incoming>, Pooled), UpstreamError> {
        let (mut sender, stream) = self.h2_sender().await?;
        let sent = tokio::time::timeout(response_timeout, async {
            sender.ready().await?;
            sender.send_request(req).await
        })
        .await;
        match sent {
            Err(_) => Err(UpstreamError::ResponseTimeout(self.address)),
            Ok(Ok(resp)) => Ok((resp, Pooled(Lent::H2 { _stream: stream }))),
            Ok(Err(e)) => Err(UpstreamError::Send(self.address, e)),
        }
    }
}
