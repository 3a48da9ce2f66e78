//! HTTP/1.1 and HTTP/2 on a listener: a cleartext connection is told apart by its first
//! bytes (the HTTP/2 connection preface, h2c with prior knowledge), a TLS connection
//! serves exactly the protocol ALPN chose (RFC 7301; `h2`, else HTTP/1.1), so that a
//! connection that chose `h2` and then sends something else gets an HTTP/2 connection
//! error, not an HTTP/1.1 answer. Owns the connection's life: idle and header-read
//! timeouts and graceful shutdown. HTTP/1.1 is Pylon's own engine (`h1.rs`), HTTP/2 its
//! server on the h2 crate (`server_h2.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use pylon_config::model::Limits;
use tokio::io::AsyncRead;
use tokio::sync::watch;

use super::error::ErrorKind;
use super::pipeline::{self, ConnCtx};
use super::server_h2::H2Settings;
use crate::conn::parking::{LotTask, PARK_AFTER, Parking};
use crate::conn::{ClientIo, ConnState, TrackedIo, Verdict, Watchers};
use crate::l4::relay::CONNECTION_LINGER;
use crate::observe::Metrics;

/// A draining idle HTTP/1.1 connection closes once it has been idle this long (or
/// after its next response).
const DRAIN_IDLE: Duration = Duration::from_secs(1);
/// How often a draining idle connection looks for a request.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Cleartext: HTTP/2 if the first bytes are its preface, else HTTP/1.1.
    Detect,
    Http1,
    Http2,
}

impl Protocol {
    /// What a TLS connection serves, by the protocol ALPN chose.
    pub fn from_alpn(alpn: Option<&[u8]>) -> Protocol {
        match alpn {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        }
    }
}

/// A listener's HTTP/2 connection settings, from its limits (HTTP/1.1 is Pylon's own
/// server, `h1.rs`).
pub struct Builders {
    /// HTTP/2 settings (`server_h2`).
    h2: H2Settings,
    /// Where idle plain HTTP/1.1 connections wait without a task (cleartext listeners).
    parking: Option<Parking<Arc<ConnCtx>>>,
}

impl Builders {
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Builders {
        // h2's own header-list limit is a backstop at twice ours, so that the request
        // path can give the precise answer (with x-pylon-error) for anything between.
        let backstop_bytes = (limits.max_header_bytes.saturating_mul(2)).max(8192);
        let h2 = H2Settings {
            send_timeout: limits.send_timeout,
            metrics,
            max_concurrent_streams: limits.max_concurrent_streams,
            max_reset_streams: limits.h2_max_reset_streams,
            max_error_resets: limits.h2_max_error_resets,
            max_header_list: u32::try_from(backstop_bytes).unwrap_or(u32::MAX),
        };
        Builders { h2, parking: None }
    }

    /// Parks this listener's idle plain HTTP/1.1 connections in `parking`; start its
    /// lot with [`Builders::start_parking`] once the builders are shared.
    pub fn with_parking(mut self, parking: Parking<Arc<ConnCtx>>) -> Builders {
        self.parking = Some(parking);
        self
    }

    /// Starts the lot's task: a connection that comes back is served as HTTP/1.1 again
    /// with these builders and limits.
    pub fn start_parking(
        self: &Arc<Self>,
        lot: LotTask<Arc<ConnCtx>>,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
        stop: watch::Receiver<bool>,
    ) {
        let builders = Arc::clone(self);
        let drain = shutdown.clone();
        lot.start(
            Box::new(move |stream, ctx: Arc<ConnCtx>| {
                ctx.state.unparked();
                tokio::spawn(serve_connection(
                    Arc::clone(&builders),
                    stream,
                    ctx,
                    limits.clone(),
                    shutdown.clone(),
                    Protocol::Http1,
                ));
            }),
            drain,
            stop,
        );
    }

    /// The listener stopped accepting: its lot ends once empty.
    pub fn orphan_parking(&self) {
        if let Some(p) = &self.parking {
            p.orphan();
        }
    }
}

/// Reads a cleartext connection's first bytes until they are, or cannot be, the HTTP/2
/// preface (an HTTP/1.1 request differs from its first byte). Each read takes what has
/// arrived, as an HTTP/1.1 head's first read does (not only the preface's 24 bytes): a
/// first request usually comes whole, and is then read with one call, not two. `None`
/// when the client sent nothing in time or closed. When the listening socket closes meanwhile (a
/// reload, an upgrade, a stop), a connection accepted just before it may have its
/// first request on the way: it waits [`DRAIN_IDLE`] more for the first bytes, no
/// longer.
async fn detect<T: AsyncRead + Unpin>(
    io: &mut T,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(Protocol, Vec<u8>)> {
    let mut ahead = Vec::new();
    let idle = tokio::time::Instant::now() + limits.idle_timeout;
    let mut deadline = idle;
    let mut closed = false;
    loop {
        let n = tokio::select! {
            // What has arrived first: then neither the timer nor the watch is set (the
            // timer is made when first polled: making one takes the runtime's handle).
            biased;
            r = read_onto(io, &mut ahead) => r.ok()?,
            () = async { tokio::time::sleep_until(deadline).await } => return None,
            changed = shutdown.changed(), if !closed => {
                if changed.is_err() || *shutdown.borrow() {
                    closed = true;
                    if ahead.is_empty() {
                        deadline = deadline.min(tokio::time::Instant::now() + DRAIN_IDLE);
                    }
                }
                continue;
            }
        };
        if n == 0 {
            return None;
        }
        if ahead.is_empty() {
            // Bytes arrived: the head must be whole within the header-read timeout.
            deadline = tokio::time::Instant::now() + limits.header_read_timeout;
        }
        let compared = ahead.len().min(PREFACE.len());
        if ahead[..compared] != PREFACE[..compared] {
            return Some((Protocol::Http1, ahead));
        }
        if ahead.len() >= PREFACE.len() {
            return Some((Protocol::Http2, ahead));
        }
    }
}

/// One read of what has arrived, appended to `ahead`, through the stack (so that no
/// buffer of a first read's size lives in the connection's future).
fn read_onto<'a, T: AsyncRead + Unpin>(
    io: &'a mut T,
    ahead: &'a mut Vec<u8>,
) -> impl Future<Output = std::io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        crate::h1_io::poll_read_first(&mut *io, cx, |read| ahead.extend_from_slice(read))
    })
}

/// Serves one accepted connection until it closes, times out or is drained.
///
/// The connection (a TLS one is kilobytes) goes to the heap first and the future is
/// boxed, so that the task that awaits it carries a pointer, not the connection's
/// largest state.
pub fn serve_connection<S>(
    builders: Arc<Builders>,
    stream: S,
    ctx: Arc<ConnCtx>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    protocol: Protocol,
) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    TrackedIo<S>: crate::conn::ClientIo,
{
    let io = Box::new(TrackedIo::new(
        stream,
        Arc::clone(&ctx.state),
        Arc::clone(&ctx.stats),
    ));
    super::pinned_in_place(|| serve_tracked(builders, io, ctx, limits, shutdown, protocol))
}

async fn serve_tracked<S>(
    builders: Arc<Builders>,
    mut io: Box<TrackedIo<S>>,
    ctx: Arc<ConnCtx>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    protocol: Protocol,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    TrackedIo<S>: crate::conn::ClientIo,
{
    let (protocol, ahead) = match protocol {
        Protocol::Detect => match detect(&mut io, &limits, &mut shutdown).await {
            Some(found) => found,
            None => return,
        },
        // ALPN chose h2: anything but the preface is a connection error (RFC 9113
        // §3.4), told with GOAWAY(PROTOCOL_ERROR) so the client knows why.
        Protocol::Http2 => match detect(&mut io, &limits, &mut shutdown).await {
            Some((Protocol::Http2, ahead)) => (Protocol::Http2, ahead),
            Some(_) => {
                use tokio::io::AsyncWriteExt as _;
                tracing::debug!(client = %ctx.client, "ALPN chose h2 but the client sent no HTTP/2 preface; GOAWAY");
                // GOAWAY, stream 0, last stream 0, PROTOCOL_ERROR (0x1).
                let goaway = [0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
                let _ = io.write_all(&goaway).await;
                let _ = io.shutdown().await;
                return;
            }
            None => return,
        },
        Protocol::Http1 => (Protocol::Http1, Vec::new()),
    };
    if protocol != Protocol::Http2 {
        serve_h1(builders, io, ahead, ctx, limits, shutdown).await;
        return;
    }
    // Boxed: an HTTP/2 connection is kilobytes, and a future holds its largest
    // branch inline, so every HTTP/1.1 connection's task would carry it too.
    Box::pin(serve_h2(builders, *io, ahead, ctx, limits, shutdown)).await;
}

/// Serves an HTTP/1.1 connection (its first bytes read already, `ahead`), and parks it
/// when it has been quiet for [`PARK_AFTER`] on a listener that parks.
async fn serve_h1(
    builders: Arc<Builders>,
    io: Box<dyn ClientIo>,
    mut ahead: Vec<u8>,
    ctx: Arc<ConnCtx>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut io = io;
    let mut ctx = ctx;
    loop {
        let conn = super::h1::Connection::new(
            builders.parking.is_some(),
            io,
            std::mem::take(&mut ahead),
            Arc::clone(&ctx),
            &limits,
        );
        let parks = builders.parking.as_ref().map(|_| PARK_AFTER);
        let idle = drive(
            conn,
            |_| ctx.state.ask_graceful(),
            (parks, |_: Pin<&mut super::h1::Connection>| {
                ctx.state.ask_park()
            }),
            &ctx,
            &limits,
            &mut shutdown,
        )
        .await;
        // The connection's task ends here, or its socket parks: its timer goes (the
        // waker it holds would keep the task's memory).
        ctx.response_timer.clear();
        let Some(Some(idle)) = idle else {
            return;
        };
        let Some(parking) = &builders.parking else {
            return;
        };
        let idle_left = limits.idle_timeout.saturating_sub(ctx.state.idle_for());
        match idle.into_tcp() {
            Ok(stream) => match parking.park(stream, ctx, idle_left) {
                Ok(()) => return,
                // The lot is closing: served on here.
                Err((stream, back)) => {
                    ctx = back;
                    io = Box::new(TrackedIo::new(
                        stream,
                        Arc::clone(&ctx.state),
                        Arc::clone(&ctx.stats),
                    ));
                }
            },
            Err(back) => io = back,
        }
    }
}

/// Serves an HTTP/2 connection (its preface read already, `ahead`).
async fn serve_h2<S>(
    builders: Arc<Builders>,
    io: TrackedIo<S>,
    ahead: Vec<u8>,
    ctx: Arc<ConnCtx>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = shutdown;
    // Frames leave as one plain write when they are small (`coalesce`).
    let io = crate::coalesce::Coalescing::new(io);
    let conn = builders
        .h2
        .connection(io, bytes::Bytes::from(ahead), Arc::clone(&ctx));
    drive(
        conn,
        |c| c.get_mut().graceful_shutdown(),
        (None, |_: Pin<&mut _>| {}),
        &ctx,
        &limits,
        &mut shutdown,
    )
    .await;
}

/// Runs a connection under the connection timer: idle, header-read and send timeouts,
/// draining on a socket's close, and the process's stop; and, with `park = (Some(after),
/// ask)`, asks a connection quiet for `after` to park. What the connection ended with,
/// unless the timer or an error ended it.
async fn drive<C, T, E>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    park: (Option<Duration>, impl Fn(Pin<&mut C>)),
    ctx: &ConnCtx,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<T>
where
    C: Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    let (park_after, ask_to_park) = park;
    let state = &ctx.state;
    tokio::pin!(conn);
    let mut closing = Closing::default();
    // The process's stop: once the drain timeout has passed, what is still open closes
    // (streams and tunnels get [`CONNECTION_LINGER`] to say goodbye in their protocol).
    // Watched from when the connection drains: a stop closes the listening sockets
    // first, which drains every connection, so one that has not begun to drain has no
    // stop to see (a watch taken, polled and given back is some ten atomic
    // read-modify-writes for each connection).
    let mut stop = None;
    let mut watchers = Watchers::default();
    // The listening socket may have closed already (while the first bytes were read).
    if (shutdown.has_changed().is_err() || *shutdown.borrow()) && closing.socket_closed(state) {
        graceful(conn.as_mut());
    }
    loop {
        let mut wake = match closing.next(state, limits) {
            Next::Wake(at) => at,
            Next::Graceful => {
                graceful(conn.as_mut());
                continue;
            }
            Next::Close(kind) => {
                pipeline::log_rejected(ctx, kind);
                tracing::debug!(client = %ctx.client, reason = kind.as_str(), "connection timed out; closing");
                return None;
            }
        };
        if let Some(after) = park_after.filter(|_| closing.listens()) {
            // Busy: looked at again within `after`; quiet that long: asked to park
            // (and asked again later should a request have come first).
            let quiet = state.quiet_for().unwrap_or_default();
            if quiet >= after {
                ask_to_park(conn.as_mut());
            }
            wake = wake.min(Instant::now() + after.saturating_sub(quiet).max(after / 4));
        }
        if stop.is_none() && !closing.listens() {
            stop = Some(ctx.shared.stop.watch());
        }
        // The watchers are polled only when one of them woke (`conn::Watchers`); new
        // ones each turn, polled once to register.
        watchers.renew();
        let (listens, stopping) = (closing.listens(), closing.stopping);
        let woke = {
            let mut changed = std::pin::pin!(shutdown.changed());
            let mut retired = std::pin::pin!(crate::life::retired(&mut stop));
            let mut timer = std::pin::pin!(tokio::time::sleep_until(wake.into()));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Woke::Conn(r));
                }
                let Some(mut wcx) = watchers.woken(cx) else {
                    return Poll::Pending;
                };
                if listens && let Poll::Ready(changed) = changed.as_mut().poll(&mut wcx) {
                    return Poll::Ready(Woke::Shutdown(changed.is_err()));
                }
                if !stopping && retired.as_mut().poll(&mut wcx).is_ready() {
                    return Poll::Ready(Woke::Stop);
                }
                if timer.as_mut().poll(&mut wcx).is_ready() {
                    return Poll::Ready(Woke::Timer);
                }
                Poll::Pending
            })
            .await
        };
        match woke {
            Woke::Conn(r) => {
                return match r {
                    Ok(done) => Some(done),
                    Err(e) => {
                        connection_error(ctx, &e);
                        None
                    }
                };
            }
            Woke::Shutdown(sender_gone) => {
                if (sender_gone || *shutdown.borrow()) && closing.socket_closed(state) {
                    graceful(conn.as_mut());
                }
            }
            Woke::Stop => {
                if closing.process_stopped() {
                    graceful(conn.as_mut());
                }
            }
            Woke::Timer => {
                if closing.past_hard_stop() {
                    if closing.stopping {
                        tracing::info!(
                            listener = %ctx.listener,
                            client = %ctx.client,
                            http2 = state.is_h2(),
                            in_flight = state.in_flight(),
                            reason = "drain_timeout",
                            "connection closed by the proxy"
                        );
                    }
                    return None;
                }
            }
        }
    }
}

/// What ended one turn of a connection's timer loop.
enum Woke<R> {
    /// The connection ended.
    Conn(R),
    /// The listening socket's close was signalled (true: its sender is gone).
    Shutdown(bool),
    /// The process's stop reached its drain timeout.
    Stop,
    /// The timer's instant came.
    Timer,
}

/// Where a connection is on its way out.
#[derive(Default)]
struct Closing {
    /// Told to finish (HTTP/2 GOAWAY; HTTP/1.1: close after the response in flight).
    draining: bool,
    /// Asked to drain while an HTTP/1.1 connection was idle: it closes after its next
    /// response, or once idle for [`DRAIN_IDLE`], so that a request already on its way
    /// is answered rather than cut.
    soft_drain: bool,
    /// When a draining connection is closed whatever it is doing.
    hard_stop: Option<Instant>,
    /// The process's stop reached its drain timeout.
    stopping: bool,
}

/// What the connection timer does next.
enum Next {
    /// Sleep until then (or until something else happens).
    Wake(Instant),
    /// Start a graceful close now.
    Graceful,
    /// Close now, for this reason.
    Close(ErrorKind),
}

impl Closing {
    fn next(&mut self, state: &ConnState, limits: &Limits) -> Next {
        if self.draining {
            return Next::Wake(
                self.hard_stop
                    .unwrap_or_else(|| Instant::now() + limits.idle_timeout),
            );
        }
        if self.soft_drain {
            // A request that arrived is answered with `Connection: close`; a protocol
            // switch is let through (the connection then becomes a tunnel).
            if state.closes_after_response()
                || (state.in_flight() == 0
                    && state.idle_for() >= DRAIN_IDLE.min(limits.idle_timeout))
            {
                self.draining = true;
                return Next::Graceful;
            }
            return Next::Wake(Instant::now() + DRAIN_POLL);
        }
        match state.verdict(
            limits.idle_timeout,
            limits.header_read_timeout,
            limits.send_timeout,
        ) {
            Verdict::Wait(at) => Next::Wake(at),
            Verdict::Idle => {
                self.draining = true;
                self.hard_stop = Some(Instant::now() + limits.header_read_timeout);
                Next::Graceful
            }
            Verdict::SendTimeout => Next::Close(ErrorKind::SendTimeout),
            Verdict::HeaderTimeout => Next::Close(ErrorKind::HeaderTimeout),
        }
    }

    /// Whether the socket's close (a reload or stop that closes the listening socket)
    /// still matters.
    fn listens(&self) -> bool {
        !self.draining && !self.soft_drain
    }

    /// The listening socket closed: true when the connection should close gracefully
    /// now (HTTP/2: GOAWAY; HTTP/1.1 busy: close after this response), false when an
    /// idle HTTP/1.1 connection waits a moment for a request on its way.
    fn socket_closed(&mut self, state: &ConnState) -> bool {
        if state.is_h2() || state.closes_after_response() {
            self.draining = true;
            return true;
        }
        self.soft_drain = true;
        false
    }

    /// The process's drain timeout passed: close within [`CONNECTION_LINGER`]; true when a
    /// graceful close starts now.
    fn process_stopped(&mut self) -> bool {
        self.stopping = true;
        self.hard_stop = Some(Instant::now() + CONNECTION_LINGER);
        !std::mem::replace(&mut self.draining, true)
    }

    fn past_hard_stop(&self) -> bool {
        self.hard_stop.is_some_and(|t| Instant::now() >= t)
    }
}

/// Connection-level errors: the socket failed, or an HTTP/2 client broke the protocol
/// (h2 told it why with GOAWAY; the flood limits count their own).
fn connection_error(ctx: &ConnCtx, e: &(dyn std::error::Error + 'static)) {
    tracing::debug!(client = %ctx.client, error = %e, "connection error");
}

#[cfg(test)]
mod closing_tests {
    use super::*;

    fn soft_draining(state: &ConnState) -> Closing {
        let mut c = Closing::default();
        assert!(!c.socket_closed(state), "an idle HTTP/1.1 connection waits");
        assert!(c.soft_drain);
        c
    }

    #[test]
    fn a_draining_connection_closes_after_a_plain_request_but_lets_an_upgrade_through() {
        let limits = Limits::default();
        let state = Arc::new(ConnState::default());
        let mut c = soft_draining(&state);
        assert!(
            matches!(c.next(&state, &limits), Next::Wake(_)),
            "idle: waits"
        );

        // A plain request arrives: it is answered with `Connection: close`.
        let plain = state.request_started(false);
        assert!(matches!(c.next(&state, &limits), Next::Graceful));
        drop(plain);

        // A WebSocket handshake arrives: no graceful close while it is in flight.
        let state = Arc::new(ConnState::default());
        let mut c = soft_draining(&state);
        let upgrade = state.request_started(false);
        state.upgrade_requested();
        assert!(matches!(c.next(&state, &limits), Next::Wake(_)));
        assert!(!c.draining);
        // Nor when the socket closes with it in flight.
        let mut c = Closing::default();
        assert!(!c.socket_closed(&state));
        drop(upgrade);

        // The next request on the same connection is judged on its own.
        let _next = state.request_started(false);
        let mut c = soft_draining(&Arc::new(ConnState::default()));
        assert!(matches!(c.next(&state, &limits), Next::Graceful));
    }
}

#[cfg(test)]
mod detect_tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    /// What `detect` finds when the client's bytes come in the writes given.
    async fn detected(writes: &[&[u8]]) -> (Protocol, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let (_tx, mut shutdown) = watch::channel(false);
        let limits = Limits::default();
        let detecting = tokio::spawn(async move {
            detect(&mut server, &limits, &mut shutdown)
                .await
                .expect("detected")
        });
        for w in writes {
            client.write_all(w).await.expect("write");
            tokio::task::yield_now().await;
        }
        detecting.await.expect("detect task")
    }

    #[tokio::test]
    async fn a_whole_first_request_is_read_at_once_not_cut_at_the_preface_length() {
        let request: &[u8] = b"GET /a/longer/path HTTP/1.1\r\nHost: example.test\r\n\r\n";
        let (protocol, ahead) = detected(&[request]).await;
        assert!(matches!(protocol, Protocol::Http1));
        assert_eq!(ahead, request, "the whole request, in one read");
    }

    #[tokio::test]
    async fn the_preface_with_frames_after_it_is_http2_and_keeps_every_byte() {
        // The preface and an empty SETTINGS frame, in one write.
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let (protocol, ahead) = detected(&[&bytes]).await;
        assert!(matches!(protocol, Protocol::Http2));
        assert_eq!(ahead, bytes);
    }

    #[tokio::test]
    async fn a_preface_in_pieces_is_waited_for_and_a_lookalike_is_http1() {
        let (protocol, ahead) = detected(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n"]).await;
        assert!(matches!(protocol, Protocol::Http2));
        assert_eq!(ahead, PREFACE);
        let (protocol, ahead) = detected(&[b"PRI * HT", b"TP/1.1\r\n"]).await;
        assert!(matches!(protocol, Protocol::Http1));
        assert_eq!(ahead, b"PRI * HTTP/1.1\r\n");
    }
}
