//! Connection pool for one endpoint, over `hyper::client::conn`.
//!
//! HTTP/1.1: idle connections kept LIFO up to `max_idle_per_endpoint`, each returned
//! only once its response has been read to the end. h2c: one multiplexed connection,
//! shared by every request, reopened when it closes. A request that a pooled connection
//! could not even start sending (it was closed under us) goes once more on a fresh
//! connection: it never reached the upstream, so this is not a retry.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pylon_config::model::{self, UpstreamProtocol};
use tokio::net::TcpStream;

use crate::http::body::RequestBody;
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

struct H2Conn {
    sender: http2::SendRequest<RequestBody>,
    last_used: Instant,
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
    /// Layer 4 warm connections, when the cluster asks for them.
    pub warm: Option<Arc<super::warm::WarmConnections>>,
    protocol: UpstreamProtocol,
    tls: Option<TlsConnector>,
    limits: ConnectionLimits,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<H2Conn>>,
    h2_connecting: tokio::sync::Mutex<()>,
}

/// An HTTP/1.1 connection lent to one exchange; back to the pool via [`Pooled::release`].
pub struct Pooled {
    pool: Arc<EndpointPool>,
    sender: http1::SendRequest<RequestBody>,
}

impl Pooled {
    /// Returns the connection to the pool. Its response has been read to the end, so
    /// it becomes ready for the next request as soon as hyper has noticed; checkout
    /// waits for that instead of a task per request here.
    pub fn release(self) {
        let Pooled { pool, sender } = self;
        if !sender.is_closed() {
            pool.put_idle(sender);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EndpointPool {
    pub fn new(
        address: SocketAddr,
        host: Option<&str>,
        c: &model::Cluster,
        tls: Option<TlsConnector>,
        limits: ConnectionLimits,
    ) -> Self {
        let authority = match host {
            Some(h) => format!("{}:{}", h.trim_end_matches('.'), address.port()),
            None => address.to_string(),
        };
        EndpointPool {
            tls,
            limits,
            address,
            host_value: http::HeaderValue::from_str(&authority)
                .unwrap_or_else(|_| http::HeaderValue::from_static("localhost")),
            proxy_protocol: c.proxy_protocol,
            warm: (c.pool.warm_connections > 0).then(|| {
                super::warm::WarmConnections::start(
                    address,
                    c.pool.warm_connections,
                    c.pool.idle_timeout,
                    c.connect_timeout,
                )
            }),
            server_name: host.and_then(|h| {
                rustls_pki_types::ServerName::try_from(h.trim_end_matches('.').to_owned()).ok()
            }),
            protocol: c.protocol,
            connect_timeout: c.connect_timeout,
            idle_timeout: c.pool.idle_timeout,
            max_idle: c.pool.max_idle_per_endpoint,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            h2_connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Idle HTTP/1.1 connections now held.
    pub fn idle_count(&self) -> usize {
        lock(&self.idle).len()
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

    /// Drops connections idle for longer than the idle timeout.
    pub fn sweep(&self) {
        let now = Instant::now();
        lock(&self.idle)
            .retain(|i| now.duration_since(i.since) < self.idle_timeout && !i.sender.is_closed());
        let mut h2 = lock(&self.h2);
        if h2.as_ref().is_some_and(|c| {
            c.sender.is_closed() || now.duration_since(c.last_used) >= self.idle_timeout
        }) {
            *h2 = None;
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
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
        self.connect_with(&[]).await
    }

    /// Like [`connect`](Self::connect), sending `preface` (a PROXY header) first, before
    /// any TLS.
    async fn connect_with(&self, preface: &[u8]) -> Result<TokioIo<UpstreamIo>, UpstreamError> {
        let connection = Slot::take(&self.limits.open, self.limits.max_open)
            .ok_or(UpstreamError::Overloaded("max_connections"))?;
        let _pending = Slot::take(&self.limits.pending, self.limits.max_pending)
            .ok_or(UpstreamError::Overloaded("max_pending_requests"))?;
        let connect = async {
            let mut stream = TcpStream::connect(self.address)
                .await
                .map_err(|e| UpstreamError::Connect(self.address, e))?;
            let _ = stream.set_nodelay(true);
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
            UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                self.send_h2(req, response_timeout).await.map(|r| (r, None))
            }
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
        let io = self.connect_with(&preface).await?;
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
                let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
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
        while let Some(i) = idle.pop() {
            if now.duration_since(i.since) < self.idle_timeout && !i.sender.is_closed() {
                return Some(i.sender);
            }
        }
        None
    }

    /// An idle connection that is ready now (or within a moment), else a new one.
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
        Ok((self.connect_h1().await?, true))
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let io = self.connect().await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Handshake(self.address, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
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
            let (mut sender, fresh) = self.ready_h1().await?;
            let sent = tokio::time::timeout(response_timeout, sender.try_send_request(req)).await;
            match sent {
                Err(_) => return Err(UpstreamError::ResponseTimeout(self.address)),
                Ok(Ok(resp)) => {
                    let pooled = Pooled {
                        pool: Arc::clone(self),
                        sender,
                    };
                    return Ok((resp, Some(pooled)));
                }
                Ok(Err(mut e)) => match e.take_message() {
                    // Never started on a reused connection: send it on a fresh one.
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(UpstreamError::Send(self.address, e.into_error())),
                },
            }
        }
    }

    async fn h2_sender(&self) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
        {
            let mut h2 = lock(&self.h2);
            if let Some(c) = h2.as_mut()
                && !c.sender.is_closed()
            {
                c.last_used = Instant::now();
                return Ok(c.sender.clone());
            }
        }
        let _one_connect = self.h2_connecting.lock().await;
        if let Some(c) = lock(&self.h2).as_ref()
            && !c.sender.is_closed()
        {
            return Ok(c.sender.clone());
        }
        let io = self.connect().await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Handshake(self.address, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream h2 connection ended with an error");
            }
        });
        *lock(&self.h2) = Some(H2Conn {
            sender: sender.clone(),
            last_used: Instant::now(),
        });
        Ok(sender)
    }

    async fn send_h2(
        &self,
        req: Request<RequestBody>,
        response_timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = self.h2_sender().await?;
        let sent = tokio::time::timeout(response_timeout, async {
            sender.ready().await?;
            sender.send_request(req).await
        })
        .await;
        match sent {
            Err(_) => Err(UpstreamError::ResponseTimeout(self.address)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(UpstreamError::Send(self.address, e)),
        }
    }
}
