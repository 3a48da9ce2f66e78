//! Listening sockets: bind (socket2), accept, and hand each connection to its protocol's
//! server. Also tracks live connections so a graceful stop can wait for them.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::coalesce::Coalescing;
use crate::conn::ConnState;
use crate::conn::parking::Parking;
use crate::http::pipeline::{ConnCtx, ListenerCtx};
use crate::http::server_h1h2;
use crate::observe::Metrics;
use crate::observe::stats::ListenerStats;
use crate::runtime::{ListenerRuntime, Runtime};
use crate::shared::Shared;
use crate::tls::server::{ClientIdentity, ServerTls};

/// Binds a TCP listening socket with the options a proxy wants.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Binds a UDP socket (Layer 4 `udp` listeners).
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Room for bursts of datagrams while sessions are being set up.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Live connections, so that shutdown can wait for them to finish, and the process's
/// connection counters.
pub struct ConnTracker {
    live: AtomicUsize,
    /// Tasks in [`ConnTracker::wait_idle`]: a connection's end tells `changed` only
    /// while some wait (telling it takes a lock, once per connection otherwise).
    waiting: AtomicUsize,
    changed: Notify,
    metrics: Arc<Metrics>,
}

/// Counts a connection open (live, and in its listener's and the process's counters)
/// until dropped.
pub struct ConnGuard(
    Arc<ConnTracker>,
    Arc<ListenerStats>,
    /// The client IP, when counted per IP.
    Option<std::net::IpAddr>,
);

impl ConnTracker {
    /// A tracker that counts connections in `metrics` too.
    pub fn new(metrics: Arc<Metrics>) -> ConnTracker {
        ConnTracker {
            live: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            changed: Notify::new(),
            metrics,
        }
    }

    /// Counts a new connection in, unless a limit refuses it (counted in metrics): the
    /// process-wide `[server] max_connections` of the runtime in force, the listener's
    /// `max_connections_per_ip` for `client`.
    pub fn admit(
        self: &Arc<Self>,
        runtime: &Runtime,
        listener: &ListenerRuntime,
        client: std::net::IpAddr,
    ) -> Option<ConnGuard> {
        let max_connections = runtime.config.server.max_connections;
        let per_ip = listener.config.max_connections_per_ip;
        let stats = &listener.stats;
        if self.live() as u64 >= max_connections {
            self.metrics
                .refused_max_connections
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%client, limit = max_connections, "connection refused: max_connections");
            return None;
        }
        let counted_ip = match per_ip {
            None => None,
            Some(limit) => {
                let mut map = crate::lock(&stats.per_ip);
                let n = map.entry(client).or_insert(0);
                if *n >= limit {
                    drop(map);
                    self.metrics.refused_per_ip.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%client, limit, "connection refused: max_connections_per_ip");
                    return None;
                }
                *n += 1;
                Some(client)
            }
        };
        self.live.fetch_add(1, Ordering::SeqCst);
        stats.connection_opened();
        self.metrics.connection_opened();
        Some(ConnGuard(Arc::clone(self), Arc::clone(stats), counted_ip))
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Waits until no connection is left, or `limit` passes; true if none is left.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let deadline = tokio::time::Instant::now() + limit;
        let notified = self.changed.notified();
        // Counted after the first wait is made and before the count is read: a
        // connection that ends after the read sees the waiter and tells it; one that
        // ended before, the read sees.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        let mut notified = Box::pin(notified);
        loop {
            if self.live() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified.as_mut())
                .await
                .is_err()
            {
                return self.live() == 0;
            }
            notified.set(self.changed.notified());
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let tracker = &self.0;
        tracker.live.fetch_sub(1, Ordering::SeqCst);
        self.1.connection_closed();
        if let Some(ip) = self.2 {
            let mut map = crate::lock(&self.1.per_ip);
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        tracker.metrics.connection_closed();
        if tracker.waiting.load(Ordering::SeqCst) > 0 {
            tracker.changed.notify_waiters();
        }
    }
}

/// A client's TLS connection: its records written through [`Coalescing`], so that a
/// record goes out as `send(2)`, not `writev(2)`.
pub type TlsClientStream = tokio_rustls::server::TlsStream<Coalescing<tokio::net::TcpStream>>;

/// The TLS handshake, bounded by the handshake timeout; records the client's
/// certificate in `ctx`. `None` (counted and logged) when it fails.
async fn handshake(
    tls: &ServerTls,
    stream: tokio::net::TcpStream,
    ctx: &mut ConnCtx,
) -> Option<TlsClientStream> {
    let metrics = &ctx.shared.metrics;
    let started = std::time::Instant::now();
    let limit = tls.settings.handshake_timeout;
    // The common handshake keeps its future small; the on-demand one is boxed apart.
    let accept = match tls.on_demand() {
        None => futures_util::future::Either::Left(tls.acceptor().accept(Coalescing::new(stream))),
        Some(on_demand) => futures_util::future::Either::Right(Box::pin(accept_on_demand(
            tls, on_demand, stream, limit, started,
        ))),
    };
    match tokio::time::timeout(limit, accept).await {
        Ok(Ok(stream))
            if stream.get_ref().1.alpn_protocol()
                == Some(crate::tls::acme::challenge::ACME_TLS_ALPN) =>
        {
            // A CA validating a TLS-ALPN-01 challenge: the handshake was the answer.
            tracing::debug!(client = %ctx.client, "TLS-ALPN-01 challenge answered");
            None
        }
        Ok(Ok(stream)) => {
            metrics.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            ctx.stats
                .tls_handshake(stream.get_ref().1.protocol_version());
            ctx.handshake_ns =
                std::sync::atomic::AtomicU64::new(crate::observe::timing::nanos(started.elapsed()));
            ctx.client_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(ClientIdentity::from_der)
                .map(Arc::new);
            // Kept only for clusters that pass it on in PROXY v2 TLVs, and templates.
            if ctx.runtime.load().keeps_tls_info {
                ctx.tls = Some(Arc::new(
                    crate::l4::proxy_protocol::TlsInfo::from_connection(stream.get_ref().1),
                ));
            }
            Some(stream)
        }
        Ok(Err(e)) => {
            metrics
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %ctx.client, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %ctx.client, "TLS handshake timed out");
            None
        }
    }
}

/// A handshake on a listener with on-demand certificates: the ClientHello first, so
/// that a new name can get its certificate before the handshake goes on.
async fn accept_on_demand(
    tls: &ServerTls,
    on_demand: &Arc<crate::tls::acme::on_demand::OnDemandCerts>,
    stream: tokio::net::TcpStream,
    limit: std::time::Duration,
    started: std::time::Instant,
) -> std::io::Result<TlsClientStream> {
    let start = tokio_rustls::LazyConfigAcceptor::new(
        rustls::server::Acceptor::default(),
        Coalescing::new(stream),
    )
    .await?;
    let hello = start.client_hello();
    let challenge = hello.alpn().is_some_and(|mut offered| {
        offered.any(|p| p == crate::tls::acme::challenge::ACME_TLS_ALPN)
    });
    if let (Some(name), false) = (hello.server_name().map(str::to_owned), challenge) {
        // What is left of the handshake's time, less a margin for the handshake.
        let left = limit
            .saturating_sub(started.elapsed())
            .saturating_sub(std::time::Duration::from_millis(500));
        on_demand.prepare(&name, left).await;
    }
    start.into_stream(tls.current()).await
}

/// Tells the listener's parking lot that its accept loop has ended.
struct OrphanParking(Arc<server_h1h2::Builders>);

impl Drop for OrphanParking {
    fn drop(&mut self) {
        self.0.orphan_parking();
    }
}

/// Everything an accept loop needs.
pub struct AcceptLoop {
    pub listener: TcpListener,
    pub name: Arc<str>,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub shared: Arc<Shared>,
    pub tracker: Arc<ConnTracker>,
    /// Stops accepting.
    pub stop: watch::Receiver<bool>,
    /// Asks this socket's connections to finish.
    pub drain: watch::Receiver<bool>,
    /// TLS termination, for `https` listeners.
    pub tls: Option<Arc<ServerTls>>,
    /// `Alt-Svc` advertising the listener's HTTP/3, added to its answers.
    pub alt_svc: Option<http::HeaderValue>,
}

impl AcceptLoop {
    pub async fn run(self) {
        let Some(lr) = self.runtime.load().listener(&self.name) else {
            return;
        };
        let limits = lr.config.limits.clone();
        let proxy_in = lr.proxy_in.clone();
        let mut builders = server_h1h2::Builders::new(&limits, Arc::clone(&self.shared.metrics));
        // Idle keep-alive connections of a cleartext listener wait in a parking lot
        // (`conn::parking`); TLS ones keep their task (their TLS state stays anyway).
        let mut lot = None;
        if self.tls.is_none() {
            match Parking::new(Arc::clone(&self.shared.metrics.connections_parked)) {
                Ok((parking, task)) => {
                    builders = builders.with_parking(parking);
                    lot = Some(task);
                }
                Err(e) => {
                    tracing::warn!(listener = %self.name, error = %e, "cannot make a parking lot; idle connections keep their tasks");
                }
            }
        }
        let builders = Arc::new(builders);
        if let Some(task) = lot {
            builders.start_parking(
                task,
                limits.clone(),
                self.drain.clone(),
                self.shared.stop.watch(),
            );
        }
        // When this loop ends (a restart or a close), the lot ends once empty.
        let _orphan = OrphanParking(Arc::clone(&builders));
        let on = Arc::new(ListenerCtx {
            runtime: Arc::clone(&self.runtime),
            listener: Arc::clone(&self.name),
            scheme: if self.tls.is_some() { "https" } else { "http" },
            alt_svc: self.alt_svc.clone(),
            shared: Arc::clone(&self.shared),
            stats: Arc::clone(&lr.stats),
        });
        // A listener bound to one address knows every connection's local address; a
        // wildcard one asks the socket, and only when a PROXY header will need it.
        let bound = self.listener.local_addr().ok();
        let inherited = crate::tcp_options::inherit_from_listener(&self.listener, &lr.config.tcp);
        // One wait for the stop, kept across accepts (made anew for each, its waiter
        // was registered and removed again on every connection), and looked at only
        // when no connection is waiting (tokio's budget makes an accept wait at least
        // every 128 connections).
        let mut stop = self.stop.clone();
        let stopped = stop.changed();
        tokio::pin!(stopped);
        loop {
            let accepted = tokio::select! {
                biased;
                a = self.listener.accept() => a,
                _ = &mut stopped => return,
            };
            let (mut stream, client) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %self.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let runtime = self.runtime.load();
            let Some(guard) = self.tracker.admit(&runtime, &lr, client.ip()) else {
                // Closed at once: the client sees the connection end.
                drop(stream);
                continue;
            };
            crate::tcp_options::accepted(&stream, &lr.config.tcp, inherited);
            let mut ctx = ConnCtx {
                on: Arc::clone(&on),
                client,
                local: match bound {
                    Some(b) if !b.ip().is_unspecified() => b,
                    _ if runtime.sends_proxy_protocol => stream.local_addr().unwrap_or(client),
                    Some(b) => b,
                    None => client,
                },
                client_ip: ConnCtx::ip_value(client.ip()),
                client_cert: None,
                tls: None,
                state: Arc::new(ConnState::default()),
                response_timer: Default::default(),
                guard: Some(Arc::new(guard)),
                client_socket: (lr.watches_client_close && self.tls.is_none())
                    .then(|| socket2::SockRef::from(&stream).try_clone().ok())
                    .flatten()
                    .map(|s| Arc::new(std::net::TcpStream::from(s))),
                handshake_ns: Default::default(),
            };
            drop(runtime);
            let builders = Arc::clone(&builders);
            let limits = limits.clone();
            let shutdown = self.drain.clone();
            let tls = self.tls.clone();
            let proxy_in = proxy_in.clone();
            // Made in its own allocation, so that the task holds a pointer: tokio moves
            // a task's future in whole when it spawns it and again when it ends.
            let fut = crate::http::pinned_in_place(move || async move {
                if let Some(pp) = &proxy_in {
                    let limit = limits.header_read_timeout;
                    // Boxed: its read buffer would stay in the task for the connection's life.
                    let header = Box::pin(crate::l4::accept_proxy_header(
                        &mut stream,
                        client,
                        pp,
                        limit,
                    ));
                    match header.await {
                        Ok(Some((source, destination))) => {
                            ctx.client = source;
                            ctx.local = destination;
                            ctx.client_ip = ConnCtx::ip_value(source.ip());
                        }
                        Ok(None) => {}
                        Err(e) => {
                            ctx.shared
                                .metrics
                                .proxy_protocol_refused
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(client = %client, error = %e, "PROXY protocol: connection refused");
                            return;
                        }
                    }
                }
                match tls {
                    None => {
                        let ctx = Arc::new(ctx);
                        server_h1h2::serve_connection(
                            builders,
                            stream,
                            ctx,
                            limits,
                            shutdown,
                            server_h1h2::Protocol::Detect,
                        )
                        .await;
                    }
                    Some(tls) => {
                        // Boxed: the handshake's state (rustls's) is kilobytes that the
                        // connection's task would otherwise carry for its whole life; and
                        // the TLS stream it yields is moved out within a block, so that
                        // the task keeps no slot for it across the serving await.
                        let serve = {
                            let handshake = Box::pin(handshake(&tls, stream, &mut ctx));
                            let Some(stream) = handshake.await else {
                                return;
                            };
                            let protocol = server_h1h2::Protocol::from_alpn(
                                stream.get_ref().1.alpn_protocol(),
                            );
                            server_h1h2::serve_connection(
                                builders,
                                stream,
                                Arc::new(ctx),
                                limits,
                                shutdown,
                                protocol,
                            )
                        };
                        serve.await;
                    }
                }
            });
            tokio::spawn(fut);
        }
    }
}
