//! HTTP/3 over QUIC (RFC 9114) on quinn and h3: the QUIC-aware server (with
//! `h3_tunnel.rs`, a WebSocket's request stream as a tunnel).
//!
//! An https listener with `http3` has a UDP socket beside each TCP one, on the same
//! address, served by one quinn endpoint ([`H3Listener`]) with the listener's own
//! certificates, SNI selection and client-certificate settings (ALPN `h3`, TLS 1.3,
//! no 0-RTT). Each request goes to the one request path (`pipeline::handle`) exactly
//! as HTTP/1.1 and HTTP/2 requests do; bodies stream both ways under QUIC flow control
//! ([`H3Body`] reads the client's, the response's is written frame by frame). A
//! WebSocket's extended CONNECT (RFC 9220) becomes a tunnel over its stream.
//!
//! What is QUIC's own stays here: address validation (a Retry once handshakes come
//! faster than `validation_above` per second, or always), the listener's connection
//! limit, the handshake timeout, the idle close, graceful close with GOAWAY (a removed
//! address, a stop), and the send stall guard for a client that stops reading. A
//! reload that changes the listener keeps the endpoint and its connections: new
//! settings and certificates apply to new connections and requests.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pylon_config::model::{AddressValidation, Http3, Limits, Listener};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::body::BoxError;
use super::error::ErrorKind;
use super::h3_tunnel::{H3Tunnel, RecvStream, SendStream};
use super::pipeline::{self, ConnCtx, EarlyData, ListenerCtx};
use crate::conn::{ClientBody, ConnState, OwnUpgrade, Upgraded};
use crate::l4::relay::CONNECTION_LINGER;
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::tls::server::{ClientIdentity, ServerTls};

/// HTTP/3 error codes (RFC 9114 §8.1) this server closes with.
const H3_NO_ERROR: u32 = 0x100;
const H3_INTERNAL_ERROR: u32 = 0x102;
const H3_REQUEST_CANCELLED: u32 = 0x10c;
const H3_EXCESSIVE_LOAD: u32 = 0x107;
/// Unidirectional streams a client may open at once: HTTP/3 needs three (control,
/// QPACK encoder and decoder); the rest leaves room for reserved (grease) types.
const MAX_UNI_STREAMS: u32 = 16;
/// Before a graceful close, how many looks without sending or credit tell that what was
/// written is delivered ([`delivered`]), and the least time between looks.
const QUIET_POLLS: u32 = 3;
const QUIET_POLL_MIN: Duration = Duration::from_millis(100);
/// QUIC keep-alive pings go out at least this often (clients' own idle timeouts are
/// often 30 s).
const KEEP_ALIVE_MAX: Duration = Duration::from_secs(10);
/// After a handover, how long the closing connections get to send their close on the
/// shared socket.
const RELEASE_FLUSH: Duration = Duration::from_millis(100);

/// What an HTTP/3 socket needs from the running proxy.
pub struct H3Deps {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub shared: Arc<Shared>,
    pub tracker: Arc<crate::listener::ConnTracker>,
}

/// One UDP socket serving HTTP/3 for an https listener.
pub struct H3Listener {
    endpoint: quinn::Endpoint,
    settings: ArcSwap<Settings>,
    /// Asks the connections to finish (GOAWAY): the address was removed, or the
    /// process stops.
    drain: watch::Sender<bool>,
    /// Stops accepting.
    stop: watch::Sender<bool>,
    /// QUIC connections open on this socket.
    live: Arc<AtomicU64>,
    local: SocketAddr,
}

/// The listener's settings as of its last (re)start.
struct Settings {
    name: Arc<str>,
    limits: Limits,
    http3: Http3,
    tls: Arc<ServerTls>,
    /// The QUIC server config, with the rustls config it was made from: made again
    /// when that changes (certificates reloaded from disk).
    quic: Mutex<Option<(Arc<rustls::ServerConfig>, Arc<quinn::ServerConfig>)>>,
}

impl Settings {
    fn new(l: &Listener, tls: Arc<ServerTls>) -> Settings {
        Settings {
            name: Arc::from(l.name.as_str()),
            limits: l.limits.clone(),
            http3: l.http3.clone().unwrap_or_default(),
            tls,
            quic: Mutex::new(None),
        }
    }

    /// The QUIC config for a new connection, from the listener's current certificates.
    fn quic(&self) -> Result<Arc<quinn::ServerConfig>, String> {
        let current = self.tls.current();
        let mut made = crate::lock(&self.quic);
        if let Some((from, quic)) = &*made
            && Arc::ptr_eq(from, &current)
        {
            return Ok(Arc::clone(quic));
        }
        let quic = Arc::new(quic_config(&current, &self.limits, &self.http3)?);
        *made = Some((current, Arc::clone(&quic)));
        Ok(quic)
    }
}

/// The listener's rustls config made fit for QUIC: ALPN `h3` only, early data only when
/// the listener takes it.
fn quic_config(
    tls: &rustls::ServerConfig,
    limits: &Limits,
    h3: &Http3,
) -> Result<quinn::ServerConfig, String> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    // QUIC takes 0 (no 0-RTT) or all of it (RFC 9001 §4.6.1).
    tls.max_early_data_size = if h3.early_data { u32::MAX } else { 0 };
    if h3.early_data {
        // rustls takes early data only on stateful resumption (its session cache, which
        // hands each session out once: a replayed ClientHello finds it gone).
        tls.ticketer = Arc::new(NoTickets);
    }
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("TLS settings unfit for QUIC: {e}"))?;
    let var = |n: u64| quinn::VarInt::from_u64(n).unwrap_or(quinn::VarInt::MAX);
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(limits.max_concurrent_streams))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_UNI_STREAMS))
        .max_idle_timeout(quinn::IdleTimeout::try_from(limits.idle_timeout).ok())
        // QUIC closes a connection that hears nothing for the idle timeout (the lower
        // of the two sides'); pings at half of ours, and at least every
        // `KEEP_ALIVE_MAX` for a client with a shorter one, keep a quiet one with a
        // request or a tunnel in progress (a WebSocket) open. The connection's own loop closes it once it has nothing in
        // progress for `idle_timeout`.
        .keep_alive_interval(Some((limits.idle_timeout / 2).min(KEEP_ALIVE_MAX)))
        .stream_receive_window(var(h3.initial_stream_window))
        .receive_window(var(h3.initial_connection_window));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(t)).migration(true);
    Ok(config)
}

/// Session tickets off: resumption from the session cache only.
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

impl H3Listener {
    /// Serves HTTP/3 for `listener` on `socket` (bound to one of its addresses).
    pub fn start(
        listener: &Listener,
        socket: std::net::UdpSocket,
        tls: Arc<ServerTls>,
        deps: H3Deps,
    ) -> std::io::Result<Arc<H3Listener>> {
        let local = socket.local_addr()?;
        let settings = Settings::new(listener, tls);
        let first = settings.quic().map_err(std::io::Error::other)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some((*first).clone()),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let h3 = Arc::new(H3Listener {
            endpoint,
            settings: ArcSwap::from_pointee(settings),
            drain: watch::Sender::new(false),
            stop: watch::Sender::new(false),
            live: Arc::new(AtomicU64::new(0)),
            local,
        });
        tokio::spawn(Arc::clone(&h3).accept_loop(deps));
        Ok(h3)
    }

    /// New settings for `listener` (a reload): new connections and requests use them;
    /// the endpoint and its connections go on.
    pub fn update(&self, listener: &Listener, tls: Arc<ServerTls>) {
        self.settings.store(Arc::new(Settings::new(listener, tls)));
    }

    /// A new process serves on this socket now (a binary upgrade): QUIC connections
    /// cannot be handed over, and two endpoints reading one socket would take each
    /// other's packets (and answer them with stateless resets). So the connections
    /// close at once (their clients connect again, to the new process) and this
    /// endpoint moves off the shared socket.
    pub async fn release(&self) {
        let _ = self.stop.send(true);
        self.endpoint.set_server_config(None);
        self.endpoint
            .close(quinn::VarInt::from_u32(H3_NO_ERROR), b"restarting");
        // The closes go out on the shared socket first (a moment, not the whole
        // draining period).
        let _ = tokio::time::timeout(RELEASE_FLUSH, self.endpoint.wait_idle()).await;
        match std::net::UdpSocket::bind((self.local.ip(), 0)) {
            Ok(elsewhere) => {
                if let Err(e) = self.endpoint.rebind(elsewhere) {
                    tracing::warn!(error = %e, "HTTP/3: cannot move off the handed-over socket");
                }
            }
            Err(e) => tracing::warn!(error = %e, "HTTP/3: cannot move off the handed-over socket"),
        }
    }

    /// Stops accepting and asks every connection to finish (GOAWAY).
    pub fn close(&self) {
        let _ = self.stop.send(true);
        let _ = self.drain.send(true);
    }

    async fn accept_loop(self: Arc<Self>, deps: H3Deps) {
        let mut stop = self.stop.subscribe();
        let mut rate = PerSecond::default();
        let metrics = Arc::clone(&deps.shared.metrics);
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => return,
                },
                _ = stop.changed() => break,
            };
            let s = self.settings.load_full();
            let busy = must_validate(s.http3.address_validation, rate.count());
            if busy && !incoming.remote_address_validated() && incoming.may_retry() {
                metrics.quic_retries.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
                continue;
            }
            if self.live.load(Ordering::Relaxed) >= s.http3.max_connections {
                metrics.quic_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listener = %s.name, client = %incoming.remote_address(), "HTTP/3 connection refused: max_connections");
                incoming.refuse();
                continue;
            }
            let runtime = deps.runtime.load();
            let Some(lr) = runtime.listener(&s.name) else {
                incoming.refuse();
                continue;
            };
            let client = incoming.remote_address();
            let Some(guard) = deps.tracker.admit(&runtime, &lr, client.ip()) else {
                metrics.quic_refused.fetch_add(1, Ordering::Relaxed);
                incoming.refuse();
                continue;
            };
            let config = match s.quic() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(listener = %s.name, error = %e, "HTTP/3 connection refused");
                    incoming.refuse();
                    continue;
                }
            };
            let connecting = match incoming.accept_with(config) {
                Ok(c) => c,
                Err(e) => {
                    metrics
                        .quic_handshake_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%client, error = %e, "QUIC handshake failed");
                    continue;
                }
            };
            // The listener's settings may change with any connection (a reload).
            let on = Arc::new(ListenerCtx {
                runtime: Arc::clone(&deps.runtime),
                listener: Arc::clone(&s.name),
                scheme: "https",
                alt_svc: None,
                shared: Arc::clone(&deps.shared),
                stats: Arc::clone(&lr.stats),
            });
            let ctx = ConnCtx {
                on,
                client,
                local: self.local,
                client_ip: ConnCtx::ip_value(client.ip()),
                client_cert: None,
                tls: None,
                state: Arc::new(ConnState::default()),
                response_timer: Default::default(),
                guard: Some(Arc::new(guard)),
                client_socket: None,
                handshake_ns: Default::default(),
            };
            let open = Open::new(&self.live);
            tokio::spawn(connection(connecting, ctx, s, self.drain.subscribe(), open));
        }
        // No new connections; those open finish (they were asked to by `close`).
        self.endpoint.set_server_config(None);
    }
}

/// Counts a QUIC connection open on its socket while held.
struct Open(Arc<AtomicU64>);

impl Open {
    fn new(live: &Arc<AtomicU64>) -> Open {
        live.fetch_add(1, Ordering::Relaxed);
        Open(Arc::clone(live))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Events in the current one-second window: new connections on a socket (for address
/// validation), cancelled requests on a connection (for the reset-loop guard).
#[derive(Default)]
struct PerSecond {
    second: Option<Instant>,
    count: u64,
}

impl PerSecond {
    /// Counts one; how many the current second has seen, this one included.
    fn count(&mut self) -> u64 {
        let now = Instant::now();
        match self.second {
            Some(s) if now.duration_since(s) < Duration::from_secs(1) => self.count += 1,
            _ => {
                self.second = Some(now);
                self.count = 1;
            }
        }
        self.count
    }
}

/// Whether new clients must prove their address now, with `this_second` handshakes in
/// the current second.
fn must_validate(validation: AddressValidation, this_second: u64) -> bool {
    match validation {
        AddressValidation::Always => true,
        AddressValidation::Never => false,
        AddressValidation::Above(n) => this_second > u64::from(n),
    }
}

/// One QUIC connection: the handshake, then its requests, each in a task of its own,
/// until the client closes, the connection idles out, or it is asked to finish.
async fn connection(
    connecting: quinn::Connecting,
    mut ctx: ConnCtx,
    s: Arc<Settings>,
    mut drain: watch::Receiver<bool>,
    _open: Open,
) {
    let metrics = Arc::clone(&ctx.shared.metrics);
    let handshake = s.tls.settings.handshake_timeout;
    // With early data on, requests are taken up while the handshake completes: those
    // came in 0-RTT. `handshaking` resolves once it has (quinn reports it before any
    // 1-RTT stream can arrive, so a stream taken up while it is pending is early).
    let mut handshaking = None;
    let handshake_deadline = tokio::time::Instant::now() + handshake;
    let started = std::time::Instant::now();
    let conn = if s.http3.early_data {
        let Ok((conn, done)) = connecting.into_0rtt() else {
            return;
        };
        handshaking = Some(done);
        conn
    } else {
        match tokio::time::timeout(handshake, connecting).await {
            Ok(Ok(c)) => {
                metrics.quic_connections.fetch_add(1, Ordering::Relaxed);
                ctx.stats.tls_handshake(None);
                ctx.handshake_ns = std::sync::atomic::AtomicU64::new(
                    crate::observe::timing::nanos(started.elapsed()),
                );
                c
            }
            Ok(Err(e)) => {
                metrics
                    .quic_handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client = %ctx.client, error = %e, "QUIC handshake failed");
                return;
            }
            Err(_) => {
                metrics
                    .quic_handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client = %ctx.client, "QUIC handshake timed out");
                return;
            }
        }
    };
    // (Early data is refused with client certificates: the identity is known here.)
    ctx.client_cert = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().and_then(ClientIdentity::from_der))
        .map(Arc::new);
    // What the handshake negotiated, for templates that name it (QUIC does not say
    // which cipher suite it chose).
    if ctx.runtime.load().keeps_tls_info
        && let Some(hd) = conn
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
    {
        ctx.tls = Some(Arc::new(crate::l4::proxy_protocol::TlsInfo {
            alpn: hd.protocol,
            server_name: hd.server_name,
            version: Some("TLSv1.3".to_owned()),
            cipher: None,
        }));
    }
    let ctx = Arc::new(ctx);
    // h3's own limit is a backstop at twice ours (it answers a bare 431 beyond it), so
    // that the request path gives the precise answer, with x-pylon-error, in between.
    let backstop = (s.limits.max_header_bytes as u64)
        .saturating_mul(2)
        .max(8192);
    // Extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL) is offered for WebSockets
    // (RFC 9220).
    let mut h3 = match h3::server::builder()
        .max_field_section_size(backstop)
        .enable_extended_connect(true)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await
    {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(client = %ctx.client, error = %e, "HTTP/3 connection failed");
            return;
        }
    };
    let mut requests = JoinSet::new();
    // Cancelled requests: a client cannot have had more than `max_concurrent_streams`
    // open within a second, so more cancels than that are a loop.
    let mut resets = PerSecond::default();
    let mut last_busy = Instant::now();
    let mut stop = Some(ctx.shared.stop.watch());
    let mut cut_at = None;
    let mut finishing = *drain.borrow();
    if finishing {
        let _ = h3.shutdown(1).await;
    }
    loop {
        // After a GOAWAY, h3 would wait for the client to close; Pylon closes once the
        // requests it took up are answered.
        if finishing && requests.is_empty() {
            break;
        }
        let idle_at = last_busy + s.limits.idle_timeout;
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    last_busy = Instant::now();
                    if handshaking.as_mut().is_some_and(|d| d.now_or_never().is_some()) {
                        handshaking = None;
                        metrics.quic_connections.fetch_add(1, Ordering::Relaxed);
                    }
                    let early = handshaking.is_some();
                    requests.spawn(request(resolver, Arc::clone(&ctx), s.limits.clone(), early));
                }
                Ok(None) => break,
                Err(e) => {
                    // Pylon closed it for the client's protocol error (a frame out of
                    // place, a malformed field section, a broken control stream).
                    if matches!(e, h3::error::ConnectionError::Local { .. }) && !e.is_h3_no_error() {
                        metrics.quic_protocol_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(client = %ctx.client, error = %e, "HTTP/3 connection closed for a protocol error");
                    } else if !e.is_h3_no_error() {
                        tracing::debug!(client = %ctx.client, error = %e, "HTTP/3 connection ended");
                    }
                    break;
                }
            },
            _ = async { if let Some(d) = handshaking.as_mut() { d.await; } }, if handshaking.is_some() => {
                handshaking = None;
                metrics.quic_connections.fetch_add(1, Ordering::Relaxed);
            }
            () = tokio::time::sleep_until(handshake_deadline), if handshaking.is_some() => {
                metrics.quic_handshake_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client = %ctx.client, "QUIC handshake timed out");
                conn.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"handshake timeout");
                return;
            }
            Some(ended) = requests.join_next(), if !requests.is_empty() => {
                last_busy = Instant::now();
                if matches!(ended, Ok(Ended::ClientReset))
                    && resets.count() > u64::from(s.limits.max_concurrent_streams)
                {
                    // Streams opened and cancelled in a loop: each one's request was
                    // already on its way upstream (HTTP/2's rapid reset, over QUIC).
                    metrics.quic_excessive_resets.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(client = %ctx.client, "HTTP/3 connection closed: too many cancelled requests");
                    conn.close(quinn::VarInt::from_u32(H3_EXCESSIVE_LOAD), b"too many cancelled requests");
                    return;
                }
            }
            changed = drain.changed(), if !finishing => {
                if changed.is_err() || *drain.borrow() {
                    finishing = true;
                    let _ = h3.shutdown(1).await;
                }
            }
            () = tokio::time::sleep_until(idle_at.into()), if requests.is_empty() && !finishing => {
                finishing = true;
                let _ = h3.shutdown(1).await;
            }
            () = crate::life::retired(&mut stop) => {
                // The process's drain deadline: what is still open (a WebSocket, a gRPC
                // stream) gets time to say goodbye in its protocol, then is cut.
                stop = None;
                cut_at = Some(lingered());
                if !finishing {
                    finishing = true;
                    let _ = h3.shutdown(1).await;
                }
            }
            () = until(cut_at) => {
                conn.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"shutting down");
                return;
            }
        }
    }
    // Requests already taken up are answered, and what they wrote is delivered, before
    // the connection closes.
    let delivering = delivered(&conn);
    let mut delivering = std::pin::pin!(delivering);
    let mut answered = false;
    loop {
        tokio::select! {
            next = requests.join_next(), if !answered => answered = next.is_none(),
            () = &mut delivering, if answered => break,
            () = crate::life::retired(&mut stop) => {
                stop = None;
                cut_at = Some(lingered());
            }
            () = until(cut_at) => break,
        }
    }
    conn.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"");
}

/// Resolves once what the connection has written is most likely delivered, or the
/// client has closed it: quinn's `close` drops what is unsent or unacknowledged, and
/// h3 does not give the per-stream acknowledgement (quinn's `SendStream::stopped`). So
/// it waits for a quiet spell: no STREAM frame sent (first sends and retransmissions)
/// and no flow-control credit from the client, over [`QUIET_POLLS`] looks a round trip
/// apart (at least [`QUIET_POLL_MIN`]). A client that reads nothing for that long has
/// the rest of its answer cut.
async fn delivered(conn: &quinn::Connection) {
    let activity = || {
        let s = conn.stats();
        (
            s.frame_tx.stream,
            s.frame_rx.max_data + s.frame_rx.max_stream_data,
        )
    };
    let mut last = activity();
    let mut quiet = 0;
    while quiet < QUIET_POLLS {
        let wait = (conn.rtt() * 2).max(QUIET_POLL_MIN);
        tokio::select! {
            _ = conn.closed() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let now = activity();
        if now == last {
            quiet += 1;
        } else {
            quiet = 0;
            last = now;
        }
    }
}

/// When what is still open at the drain deadline is cut ([`CONNECTION_LINGER`], as for
/// HTTP/1.1 and HTTP/2 connections).
fn lingered() -> tokio::time::Instant {
    tokio::time::Instant::now() + CONNECTION_LINGER
}

/// Resolves at `at`; never without one.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How a request stream ended.
enum Ended {
    Done,
    /// The client cancelled it (reset its stream or stopped reading the answer).
    ClientReset,
}

type RequestResolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

/// One request stream: its head (within the header-read timeout), the request path,
/// and the answer streamed back.
/// `early`: the stream was opened in 0-RTT.
async fn request(
    resolver: RequestResolver,
    ctx: Arc<ConnCtx>,
    limits: Limits,
    early: bool,
) -> Ended {
    let resolved = tokio::time::timeout(limits.header_read_timeout, resolver.resolve_request());
    let (req, stream) = match resolved.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return refused(&ctx, &e),
        Err(_) => {
            pipeline::log_rejected(&ctx, ErrorKind::HeaderTimeout);
            return Ended::Done;
        }
    };
    let (mut send, recv) = stream.split();
    // A WebSocket's extended CONNECT (RFC 9220): its stream carries no body but the
    // tunnel's bytes, once the answer is 2xx.
    let (mut req, websocket) = if is_websocket_connect(&req) {
        let (tx, rx) = oneshot::channel();
        let mut req = req.map(|()| ClientBody::Empty);
        // As the other protocols' servers say it (h3's own must not reach an HTTP/3
        // upstream, whose client would send it on).
        req.extensions_mut().remove::<h3::ext::Protocol>();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        req.extensions_mut().insert(OwnUpgrade::new(rx));
        (req, Some((recv, tx)))
    } else {
        let body = H3Body::new(recv, req.headers()).await;
        (req.map(|()| body.into_client_body()), None)
    };
    if early {
        req.extensions_mut().insert(EarlyData);
        req.headers_mut()
            .insert("early-data", http::HeaderValue::from_static("1"));
    }
    let resp = pipeline::handle(req, &ctx).await;
    match websocket {
        // A 2xx from the tunnel (one that holds the other end); any other 2xx (a route
        // that answers itself) is an ordinary answer.
        Some((recv, tx)) if resp.status().is_success() && !tx.is_closed() => {
            switch(send, recv, resp, tx, &limits).await
        }
        _ => respond(&mut send, resp, &limits).await,
    }
}

/// An extended CONNECT for a WebSocket (`:protocol` = `websocket`, RFC 9220).
fn is_websocket_connect(req: &http::Request<()>) -> bool {
    req.method() == http::Method::CONNECT
        && req.extensions().get::<h3::ext::Protocol>() == Some(&h3::ext::Protocol::WEBSOCKET)
}

/// Sends the 2xx that opens a WebSocket's tunnel, then hands the stream to the tunnel
/// waiting for it and lasts as long as the tunnel does (the connection counts it as a
/// request in progress).
async fn switch(
    mut send: SendStream,
    recv: RecvStream,
    resp: Response<super::body::ResponseBody>,
    tx: oneshot::Sender<Upgraded>,
    limits: &Limits,
) -> Ended {
    let (mut parts, _) = resp.into_parts();
    super::headers::strip_connection_fields(&mut parts.headers);
    let head = Response::from_parts(parts, ());
    match tokio::time::timeout(limits.send_timeout, send.send_response(head)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Ended::ClientReset,
        Err(_) => {
            send.stop_stream(h3::error::Code::from(u64::from(H3_REQUEST_CANCELLED)));
            return Ended::Done;
        }
    }
    let (open, ended) = oneshot::channel();
    let tunnel = H3Tunnel::new(send, recv, open);
    if tx
        .send(Upgraded::new(Bytes::new(), Box::new(tunnel)))
        .is_ok()
    {
        let _ = ended.await;
    }
    Ended::Done
}

/// A request stream whose head never became a request: counted and logged like the
/// other protocols' (h3 answered an oversized one with a bare 431 itself, and a
/// malformed one with `H3_MESSAGE_ERROR`).
fn refused(ctx: &ConnCtx, e: &h3::error::StreamError) -> Ended {
    use h3::error::StreamError;
    tracing::debug!(client = %ctx.client, error = %e, "HTTP/3 request refused");
    match e {
        StreamError::HeaderTooBig { .. } => {
            pipeline::log_rejected(ctx, ErrorKind::HeadersTooLarge);
            Ended::Done
        }
        StreamError::RemoteTerminate { .. } => Ended::ClientReset,
        StreamError::ConnectionError { .. } => Ended::Done,
        _ => {
            pipeline::log_rejected(ctx, ErrorKind::MalformedRequest);
            Ended::Done
        }
    }
}

/// Writes an answer: its head, then its body frame by frame, each write bounded by the
/// send timeout (a client that stops reading has its stream reset, and the access log
/// says the body was cut by a stall).
async fn respond(
    send: &mut SendStream,
    resp: Response<super::body::ResponseBody>,
    limits: &Limits,
) -> Ended {
    let (mut parts, mut body) = resp.into_parts();
    super::headers::strip_connection_fields(&mut parts.headers);
    let head = Response::from_parts(parts, ());
    if send.send_response(head).await.is_err() {
        return Ended::ClientReset;
    }
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(_)) => {
                // The upstream's body broke: the client must not take a cut body for
                // a whole one.
                send.stop_stream(h3::error::Code::from(u64::from(H3_INTERNAL_ERROR)));
                return Ended::Done;
            }
        };
        let sent = match frame.into_data() {
            Ok(data) => tokio::time::timeout(limits.send_timeout, send.send_data(data)).await,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    tokio::time::timeout(limits.send_timeout, send.send_trailers(trailers)).await
                }
                Err(_) => continue,
            },
        };
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Ended::ClientReset,
            Err(_) => {
                body.cut_by_stall();
                send.stop_stream(h3::error::Code::from(u64::from(H3_REQUEST_CANCELLED)));
                return Ended::Done;
            }
        }
    }
    let _ = tokio::time::timeout(limits.send_timeout, send.finish()).await;
    Ended::Done
}

/// A request body as an HTTP/3 client sends it: DATA frames, then trailers, checked
/// against a declared `Content-Length` (RFC 9114 §4.1.2).
pub struct H3Body {
    /// `None` once refused: dropping it stops the client's sending (quinn's
    /// STOP_SENDING). h3-quinn's own `stop_sending` panics while a read is under way,
    /// which h3 always leaves one of after a DATA frame.
    recv: Option<RecvStream>,
    /// What was read before the request went on its way.
    ahead: Option<Result<Frame<Bytes>, BoxError>>,
    /// The DATA frames have ended (trailers may follow).
    data_done: bool,
    /// Everything has been read.
    done: bool,
    declared: Option<u64>,
    received: u64,
}

impl H3Body {
    /// Reads what has already arrived of the body: a request whose stream ended with
    /// its head (a GET) then has an empty body, so that it goes upstream without one.
    async fn new(recv: RecvStream, headers: &HeaderMap) -> H3Body {
        let declared = super::headers::declared_length(headers);
        let mut body = H3Body {
            recv: Some(recv),
            ahead: None,
            data_done: false,
            done: false,
            declared,
            received: 0,
        };
        let mut first = None;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(f) = Pin::new(&mut body).poll_frame(cx) {
                first = f;
            }
            Poll::Ready(())
        })
        .await;
        body.ahead = first;
        body
    }

    fn into_client_body(self) -> ClientBody {
        if self.done && self.ahead.is_none() {
            ClientBody::Empty
        } else {
            ClientBody::Other(Box::new(self))
        }
    }

    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.recv = None;
        Poll::Ready(Some(Err(why.into())))
    }
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(f) = this.ahead.take() {
            return Poll::Ready(Some(f));
        }
        let Some(recv) = this.recv.as_mut().filter(|_| !this.done) else {
            return Poll::Ready(None);
        };
        if !this.data_done {
            match ready!(recv.poll_recv_data(cx)) {
                Ok(Some(mut buf)) => {
                    let data = buf.copy_to_bytes(buf.remaining());
                    this.received += data.len() as u64;
                    if this.declared.is_some_and(|n| this.received > n) {
                        return this.fail("request body longer than its Content-Length");
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) => this.data_done = true,
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
        if this.declared.is_some_and(|n| this.received != n) {
            return this.fail("request body shorter than its Content-Length");
        }
        let trailers = ready!(recv.poll_recv_trailers(cx));
        this.done = true;
        match trailers {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.ahead.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.declared {
            Some(n) => SizeHint::with_exact(n.saturating_sub(self.received)),
            None => SizeHint::default(),
        }
    }
}

/// `Alt-Svc` for a TCP listener whose HTTP/3 listens on `port` (RFC 7838).
pub fn alt_svc(port: u16, h3: &Http3) -> Option<http::HeaderValue> {
    if !h3.alt_svc {
        return None;
    }
    let value = format!("h3=\":{port}\"; ma={}", h3.alt_svc_max_age.as_secs());
    http::HeaderValue::from_str(&value).ok()
}
