//! Pylon's HTTP/2 server, on the `h2` crate (framing, HPACK, flow control, the flood
//! limits) with no general-purpose layer between it and the request path.
//!
//! A connection's streams run inside the connection's own task, not as a task each:
//! [`H2Connection`], the future the connection's task awaits, reads frames and takes up
//! each new stream in the same poll, then polls its streams. A stream costs no task of
//! its own and no trip through the runtime's scheduler; the frames its answer queues
//! are written by the connection's next poll. NGINX and HAProxy drive a connection's
//! streams from the connection the same way.
//!
//! Each stream ([`serve_stream`]) takes its request through the request path (dropped
//! at once should the client reset the stream meanwhile), then sends the answer's head
//! and pumps its body into the stream's flow-control window. A body that has handed out
//! data and then finds no room in the client's window for the listener's
//! `send_timeout` is a stall: the stream is reset (CANCEL), freeing it and its
//! upstream, while the connection's other streams go on. A 2xx to a CONNECT (a
//! WebSocket's extended CONNECT, RFC 8441, or a forward proxy's tunnel) turns the
//! stream into the tunnel's byte stream ([`H2Tunnel`]).
//!
//! Streams still open when the connection's future ends (or is dropped by its timer)
//! go to the runtime as tasks of their own: they then see their connection gone and
//! end with their log line. A stream that panics (a bug) is dropped alone: h2 resets
//! it and the connection's other streams go on.
//!
//! Written here rather than served through hyper's HTTP/2 server: that layer converted
//! every request and response a second time, stripped connection fields the request
//! path strips already, wrapped each stream in a task of its executor and each body in
//! a channel-shaped adapter (about 2,000 instructions per request, callgrind).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use h2::server::{Connection, Handshake, SendResponse};
use h2::{Reason, RecvStream, SendStream};
use http::{Method, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::body::{BoxError, ResponseBody};
use super::error::ErrorKind;
use super::pipeline::{self, ConnCtx};
use crate::conn::{ClientBody, ClientIo, OwnUpgrade, Upgraded};
use crate::h1_io::Prefixed;
use crate::observe::Metrics;

// Windows larger than the protocol's 64 KiB default, so that a client uploading or an
// answer downloading is not held to one window per round trip (hyper's figures, which
// Pylon's HTTP/2 served with before).
const CONN_WINDOW: u32 = 1024 * 1024;
const STREAM_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
/// What h2 queues for a stream beyond its window, at most.
const MAX_SEND_BUFFER: usize = 400 * 1024;

/// A listener's HTTP/2 settings, from its limits.
pub struct H2Settings {
    pub send_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub max_concurrent_streams: u32,
    pub max_reset_streams: usize,
    pub max_error_resets: usize,
    pub max_header_list: u32,
}

impl H2Settings {
    fn builder(&self) -> h2::server::Builder {
        let mut b = h2::server::Builder::new();
        b.initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(self.max_header_list)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_pending_accept_reset_streams(self.max_reset_streams)
            .max_local_error_reset_streams(Some(self.max_error_resets))
            // RFC 8441: WebSockets over HTTP/2 (extended CONNECT).
            .enable_connect_protocol();
        b
    }

    /// The connection over `io`, whose first bytes (the preface, read to recognise
    /// the protocol) are `ahead`.
    pub fn connection<T>(&self, io: T, ahead: Bytes, ctx: Arc<ConnCtx>) -> H2Connection<T>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        H2Connection {
            state: State::Handshaking(self.builder().handshake(Prefixed::new(ahead, io))),
            close_pending: false,
            streams: FuturesUnordered::new(),
            ctx,
            send_timeout: self.send_timeout,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// One stream's work, boxed: its request through the request path and its answer.
type StreamTask = Pin<Box<dyn Future<Output = ()> + Send>>;

enum State<T> {
    Handshaking(Handshake<Prefixed<T>, Bytes>),
    Serving(Connection<Prefixed<T>, Bytes>),
}

/// An HTTP/2 connection together with its streams.
pub struct H2Connection<T> {
    state: State<T>,
    /// A graceful close was asked for before the handshake finished.
    close_pending: bool,
    streams: FuturesUnordered<StreamTask>,
    ctx: Arc<ConnCtx>,
    send_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> H2Connection<T> {
    /// GOAWAY: no new streams; the connection ends once those open have.
    pub fn graceful_shutdown(&mut self) {
        match &mut self.state {
            State::Handshaking(_) => self.close_pending = true,
            State::Serving(conn) => conn.graceful_shutdown(),
        }
    }

    fn start(&mut self, req: Request<RecvStream>, respond: SendResponse<Bytes>) {
        // Made in its allocation: the stream's future is kilobytes.
        let task = super::pinned_in_place(|| Isolated {
            inner: serve_stream(
                req,
                respond,
                Arc::clone(&self.ctx),
                self.send_timeout,
                Arc::clone(&self.metrics),
            ),
        });
        self.streams.push(task);
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for H2Connection<T> {
    type Output = Result<(), h2::Error>;

    /// The connection first (it reads frames and takes up new streams), then the
    /// streams. Frames the streams queue wake this task, whose next poll writes them:
    /// by then other connections and upstreams have had their turn, so answers go out
    /// in fewer, larger writes (measured: fewer context switches and less CPU per
    /// request than polling the connection again at once).
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Handshaking(hs) => {
                    let conn = ready!(Pin::new(hs).poll(cx))?;
                    this.state = State::Serving(conn);
                }
                State::Serving(conn) => {
                    if std::mem::take(&mut this.close_pending) {
                        conn.graceful_shutdown();
                    }
                    match conn.poll_accept(cx) {
                        Poll::Ready(Some(Ok((req, respond)))) => this.start(req, respond),
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                        Poll::Ready(None) => return Poll::Ready(Ok(())),
                        Poll::Pending => break,
                    }
                }
            }
        }
        while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
        Poll::Pending
    }
}

impl<T> Drop for H2Connection<T> {
    fn drop(&mut self) {
        if self.streams.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for task in std::mem::take(&mut self.streams) {
            runtime.spawn(task);
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream whose panic ends the stream, not its connection.
    struct Isolated<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future<Output = ()>> Future for Isolated<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let inner = self.project().inner;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(polled) => polled,
            Err(_) => {
                tracing::error!("an HTTP/2 stream's task panicked; the stream was reset");
                Poll::Ready(())
            }
        }
    }
}

/// One stream: its request through the request path, then its answer.
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
fn serve_stream(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    ctx: Arc<ConnCtx>,
    send_timeout: Duration,
    metrics: Arc<Metrics>,
) -> impl Future<Output = ()> + Send {
    async move {
        let Some((req, tunnel)) = client_request(req, &mut respond) else {
            return;
        };
        let handled = UntilReset {
            fut: pipeline::handle(req, &ctx),
            respond: &mut respond,
        };
        let Some(resp) = handled.await else {
            return;
        };
        let (mut parts, body) = resp.into_parts();
        super::headers::strip_connection_fields(&mut parts.headers);
        super::headers::add_date(&mut parts.headers);
        // A 2xx from the tunnel that holds the other end (any other 2xx, from a route
        // that answers itself, is an ordinary answer).
        if let Some((recv, tx)) = tunnel
            && parts.status.is_success()
            && !tx.is_closed()
        {
            return switch(respond, Response::from_parts(parts, ()), recv, tx);
        }
        if body.is_end_stream() {
            let _ = respond.send_response(Response::from_parts(parts, ()), true);
            return;
        }
        if let Some(len) = body.size_hint().exact()
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, http::HeaderValue::from(len));
        }
        let send = match respond.send_response(Response::from_parts(parts, ()), false) {
            Ok(send) => send,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 answer's head refused");
                respond.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
        };
        Pump::new(send, body, send_timeout, metrics).await;
    }
}

/// The request as the request path takes it, and for a CONNECT the stream's receiving
/// half with the tunnel's hand-over; `None` when the stream was refused.
#[allow(clippy::type_complexity)]
fn client_request(
    req: Request<RecvStream>,
    respond: &mut SendResponse<Bytes>,
) -> Option<(
    Request<ClientBody>,
    Option<(RecvStream, oneshot::Sender<Upgraded>)>,
)> {
    let (mut parts, recv) = req.into_parts();
    // `:protocol` (RFC 8441) as the request path reads it; only WebSocket is known.
    let websocket = parts
        .extensions
        .remove::<h2::ext::Protocol>()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    if websocket {
        parts
            .extensions
            .insert(hyper::ext::Protocol::from_static("websocket"));
    }
    if parts.method == Method::CONNECT {
        // A CONNECT's stream carries the tunnel's bytes, not a body.
        if super::headers::declared_length(&parts.headers).is_some_and(|n| n != 0) {
            respond.send_reset(Reason::PROTOCOL_ERROR);
            return None;
        }
        let (tx, rx) = oneshot::channel();
        parts.extensions.insert(OwnUpgrade::new(rx));
        return Some((
            Request::from_parts(parts, ClientBody::Empty),
            Some((recv, tx)),
        ));
    }
    let body = if recv.is_end_stream() {
        ClientBody::Empty
    } else {
        let declared = super::headers::declared_length(&parts.headers);
        ClientBody::H2(H2Body {
            recv,
            data_done: false,
            declared,
            received: 0,
        })
    };
    Some((Request::from_parts(parts, body), None))
}

pin_project_lite::pin_project! {
    /// Awaits `fut`, unless the client resets the stream first (then the request's
    /// work, its upstream exchange included, is dropped). A future of its own rather
    /// than a pinned local of an `async fn`, which would hold `fut` twice in the
    /// stream's state (its argument and the pinned copy): the request path's future
    /// is kilobytes, and the stream's state is copied into its box once.
    struct UntilReset<'a, F> {
        #[pin]
        fut: F,
        respond: &'a mut SendResponse<Bytes>,
    }
}

impl<F: Future> Future for UntilReset<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        let reset = ready!(this.respond.poll_reset(cx));
        tracing::debug!(reason = ?reset.ok(), "HTTP/2 stream reset by the client");
        Poll::Ready(None)
    }
}

/// Sends the 2xx that opens a tunnel and hands the stream to the tunnel waiting for it.
fn switch(
    mut respond: SendResponse<Bytes>,
    mut head: Response<()>,
    recv: RecvStream,
    tx: oneshot::Sender<Upgraded>,
) {
    // A tunnel's 2xx has no content (RFC 9110 §9.3.6).
    head.headers_mut().remove(header::CONTENT_LENGTH);
    match respond.send_response(head, false) {
        Ok(send) => {
            let tunnel = H2Tunnel {
                send,
                recv,
                read_ahead: Bytes::new(),
                read_done: false,
                ended: false,
            };
            let _ = tx.send(Upgraded::new(Bytes::new(), Box::new(tunnel)));
        }
        Err(e) => tracing::debug!(error = %e, "HTTP/2 tunnel's answer refused"),
    }
}

/// An answer's body pumped into its stream as the client's window allows.
struct Pump {
    send: SendStream<Bytes>,
    body: ResponseBody,
    /// Data polled from the body and waiting for room in the window.
    waiting: Option<(Bytes, bool)>,
    /// Since when the data in `waiting` has found no room (the stall timer).
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    send_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Pump {
    fn new(
        send: SendStream<Bytes>,
        body: ResponseBody,
        send_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Pump {
        Pump {
            send,
            body,
            waiting: None,
            stall: None,
            send_timeout,
            metrics,
        }
    }

    /// Waits for room for the data in `waiting`, under the stall timer.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        while self.send.capacity() == 0 {
            match self.send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => {
                    self.stall = None;
                }
                Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(Err(())),
                Poll::Pending => {
                    let deadline = tokio::time::Instant::now() + self.send_timeout;
                    let timer = self
                        .stall
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    ready!(timer.as_mut().poll(cx));
                    self.stalled();
                    return Poll::Ready(Err(()));
                }
            }
        }
        self.stall = None;
        Poll::Ready(Ok(()))
    }

    /// No room within the send timeout: the stream is reset, and the access log says
    /// the body was cut by a stall.
    fn stalled(&mut self) {
        self.metrics.error(ErrorKind::SendTimeout);
        tracing::debug!("HTTP/2 stream made no progress within the send timeout; resetting it");
        self.body.cut_by_stall();
        self.send.send_reset(Reason::CANCEL);
    }

    /// Frames from the body into the stream until the body ends (`Ok`) or the stream
    /// fails (`Err`: reset by the client, a stall, or a broken body).
    fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        match self.poll_frames(cx) {
            Poll::Ready(done) => Poll::Ready(done),
            // Woken should the client reset the stream while this waits.
            Poll::Pending => match self.send.poll_reset(cx) {
                Poll::Ready(_) => Poll::Ready(Err(())),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn poll_frames(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        loop {
            if self.waiting.is_some() {
                ready!(self.poll_room(cx))?;
                let Some((data, end)) = self.waiting.take() else {
                    continue;
                };
                self.send.send_data(data, end).map_err(|_| ())?;
                if end {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = self.body.is_end_stream();
                        // The body's last frame, when it is small, is handed to h2
                        // as it is: h2 sends it as the window allows and holds at
                        // most that much meanwhile. (A short answer, the usual
                        // case, then costs no claim on the window.)
                        if data.is_empty() || (end && data.len() <= MAX_FRAME_SIZE as usize) {
                            self.send.send_data(data, end).map_err(|_| ())?;
                            if end {
                                return Poll::Ready(Ok(()));
                            }
                            continue;
                        }
                        // A claim of one byte, not the chunk: capacity claimed ahead
                        // of data pins the connection's window against the other
                        // streams. h2 raises it to what is queued once sent.
                        self.send.reserve_capacity(1);
                        self.waiting = Some((data, end));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.send.reserve_capacity(0);
                            self.send.send_trailers(trailers).map_err(|_| ())?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(e)) => {
                    // The upstream's body broke: the client must not take a cut body
                    // for a whole one.
                    self.send.send_reset(reason_of(&*e));
                    return Poll::Ready(Err(()));
                }
                None => {
                    self.send.send_data(Bytes::new(), true).map_err(|_| ())?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl Future for Pump {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().poll_pump(cx).map(|_| ())
    }
}

/// The reason to reset a stream with for a broken body: the upstream stream's own
/// when it was reset, else `INTERNAL_ERROR`.
fn reason_of(e: &(dyn std::error::Error + 'static)) -> Reason {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(reason) = err.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return reason;
        }
        cause = err.source();
    }
    Reason::INTERNAL_ERROR
}

/// The client's next DATA frame on a stream, its window given back; `None` at the
/// stream's end, a reset with `NO_ERROR` included (RFC 9113 §8.1: the client stops
/// sending, the answer already under way; not a failure).
fn poll_client_data(
    recv: &mut RecvStream,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Bytes, h2::Error>>> {
    match ready!(recv.poll_data(cx)) {
        Some(Ok(data)) => {
            let _ = recv.flow_control().release_capacity(data.len());
            Poll::Ready(Some(Ok(data)))
        }
        Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => Poll::Ready(None),
        other => Poll::Ready(other),
    }
}

/// A request body as an HTTP/2 client sends it: its DATA frames (their window given
/// back as each is handed on), then trailers. h2 holds the frames to a declared
/// `Content-Length` (a stream error otherwise).
pub struct H2Body {
    recv: RecvStream,
    data_done: bool,
    declared: Option<u64>,
    received: u64,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(poll_client_data(&mut this.recv, cx)) {
                Some(Ok(data)) => {
                    this.received += data.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) if e.reason() == Some(Reason::NO_ERROR) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.declared {
            Some(n) => SizeHint::with_exact(n.saturating_sub(self.received)),
            None => SizeHint::default(),
        }
    }
}

/// An HTTP/2 stream as a tunnel's byte stream, once the 2xx to its CONNECT has gone
/// out: its DATA frames read and written as bytes, so that the one relay (`tunnel.rs`,
/// `ws_relay.rs`, `forward.rs`) carries it as it carries a socket. Writes wait for room
/// in the client's window and take no more than it has. Dropped before its end was
/// sent, the stream is reset (h2 cancels a stream whose handles are all gone).
struct H2Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// What the last DATA frame brought beyond the reads so far.
    read_ahead: Bytes,
    /// The client finished its side.
    read_done: bool,
    /// The stream's end was sent.
    ended: bool,
}

/// A stream error as the relay reports it.
fn broken(e: h2::Error) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

impl AsyncRead for H2Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.read_ahead.is_empty() {
                let n = this.read_ahead.len().min(buf.remaining());
                buf.put_slice(&this.read_ahead.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(poll_client_data(&mut this.recv, cx)) {
                Some(Ok(data)) => this.read_ahead = data,
                Some(Err(e)) => return Poll::Ready(Err(broken(e))),
                None => this.read_done = true,
            }
        }
    }
}

impl AsyncWrite for H2Tunnel {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if b.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        this.send.reserve_capacity(b.len());
        loop {
            let room = this.send.capacity();
            if room > 0 {
                let n = room.min(b.len());
                this.send
                    .send_data(Bytes::copy_from_slice(&b[..n]), false)
                    .map_err(broken)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(broken(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    /// What was written is h2's to send, as bytes in a socket's buffer are.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends the stream's end after everything written.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.ended {
            this.ended = true;
            this.send.reserve_capacity(0);
            this.send.send_data(Bytes::new(), true).map_err(broken)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl ClientIo for H2Tunnel {
    fn into_tcp(self: Box<Self>) -> Result<TcpStream, Box<dyn ClientIo>> {
        Err(self)
    }
}
