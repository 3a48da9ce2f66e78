//! Upstream HTTP/1.1 on Pylon's codec (`pylon-h1`), driven by the request's own task.
//!
//! [`exchange`] writes the request head (and the body, as the client sends it) and
//! reads the answer's head on one connection; the answer's body ([`H1Body`]) reads the
//! rest from the same socket as the client takes it, goes on writing a request body the
//! upstream answered early, and at its end gives the connection back to the endpoint's
//! idle list ([`H1Idle`]). No task, channel or dispatcher sits between the request and
//! the socket. An idle connection is its socket alone (no buffer, nothing running) and
//! is checked for closure (a `peek`) before it carries another request.
//!
//! Written here rather than taken from hyper's client: hyper's HTTP/1.1 client needs a
//! connection task per connection and a channel hop per request, keeps 8 KiB buffers
//! for a connection's whole life, and parses heads more leniently than the rules in
//! docs/security.md; the codec crate does the parsing, this module only the I/O.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use super::body::{BoxError, RequestBody};
use super::warm::WarmConnections;
pub use crate::h1_io::Prefixed;
use crate::h1_io::{BodyDecoder, Encoding, Reader, WriteError, Writer};
use crate::lock;
use crate::tls::upstream::UpstreamIo;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use pylon_h1::{BodyFraming, ChunkedDecoder, HeadLimits};

/// The bounds of an upstream's response head (hyper's client allowed 100 fields too).
const RESPONSE_HEAD: HeadLimits = HeadLimits {
    max_bytes: 64 * 1024,
    max_fields: 100,
};
/// Interim (1xx) answers skipped before the final one, at most.
const MAX_INTERIM: usize = 16;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// From hyper's HTTP/2 client.
    #[error("{0}")]
    Hyper(#[from] hyper::Error),
    #[error("invalid response: {0}")]
    Invalid(String),
    #[error("{0}")]
    Io(#[source] io::Error),
    #[error("connection closed before a response")]
    Closed,
    #[error("request body: {0}")]
    Body(#[source] BoxError),
    #[error("request body does not match its content-length")]
    Length,
}

impl From<WriteError> for SendError {
    fn from(e: WriteError) -> SendError {
        match e {
            WriteError::Io(e) => SendError::Io(e),
            WriteError::Body(e) => SendError::Body(e),
            WriteError::Length => SendError::Length,
        }
    }
}

impl SendError {
    /// The upstream's answer broke the protocol.
    pub fn is_invalid(&self) -> bool {
        match self {
            SendError::Hyper(e) => e.is_parse() || e.is_parse_status(),
            SendError::Invalid(_) => true,
            _ => false,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, SendError::Hyper(e) if e.is_timeout())
    }
}

/// An endpoint's idle HTTP/1.1 connections, most recent last, each with when it went
/// idle ([`coarse_ms`]), and how many are lent to requests now.
pub(super) struct H1Idle {
    conns: Mutex<Vec<(u64, UpstreamIo)>>,
    lent: AtomicUsize,
    max_idle: usize,
    /// In milliseconds.
    idle_timeout: u64,
    warm: Option<Arc<WarmConnections>>,
}

/// Milliseconds on the coarse clock (`crate::clock`): an idle connection's age is
/// measured in seconds, and it is read twice per proxied request.
fn coarse_ms() -> u64 {
    crate::clock::coarse_ns() / 1_000_000
}

impl H1Idle {
    pub(super) fn new(
        max_idle: usize,
        idle_timeout: Duration,
        warm: Option<Arc<WarmConnections>>,
    ) -> H1Idle {
        H1Idle {
            conns: Mutex::new(Vec::new()),
            lent: AtomicUsize::new(0),
            max_idle,
            idle_timeout: u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX),
            warm,
        }
    }

    pub(super) fn count(&self) -> usize {
        lock(&self.conns).len()
    }

    /// Idle connections the endpoint has not closed.
    pub(super) fn live(&self) -> usize {
        lock(&self.conns)
            .iter()
            .filter(|(_, io)| reusable(io))
            .count()
    }

    pub(super) fn lent(&self) -> usize {
        self.lent.load(Ordering::Relaxed)
    }

    pub(super) fn put(&self, io: UpstreamIo) {
        let mut conns = lock(&self.conns);
        if conns.len() < self.max_idle {
            conns.push((coarse_ms(), io));
        }
    }

    /// The most recently used idle connection that is still open and young enough.
    pub(super) fn take(&self) -> Option<UpstreamIo> {
        let now = coarse_ms();
        let mut conns = lock(&self.conns);
        let mut dropped = false;
        let mut found = None;
        while let Some((since, io)) = conns.pop() {
            if now.saturating_sub(since) < self.idle_timeout && reusable(&io) {
                found = Some(io);
                break;
            }
            dropped = true;
        }
        drop(conns);
        if dropped {
            self.wake_warm();
        }
        found
    }

    /// Drops connections idle past the timeout and closed ones; whether any went.
    pub(super) fn sweep(&self) -> bool {
        let now = coarse_ms();
        let mut conns = lock(&self.conns);
        let before = conns.len();
        conns.retain(|(since, io)| now.saturating_sub(*since) < self.idle_timeout && reusable(io));
        conns.len() != before
    }

    fn wake_warm(&self) {
        if let Some(w) = &self.warm {
            w.wake();
        }
    }
}

/// A connection counted as lent to a request until dropped (warm connections count lent
/// ones as open, so a request in flight does not make them open another).
pub(super) struct Lent(Arc<H1Idle>);

impl Lent {
    pub(super) fn new(idle: &Arc<H1Idle>) -> Lent {
        idle.lent.fetch_add(1, Ordering::Relaxed);
        Lent(Arc::clone(idle))
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.0.lent.fetch_sub(1, Ordering::Relaxed);
        self.0.wake_warm();
    }
}

/// Whether an idle connection may carry a request: no EOF or error queued on it, and,
/// for a plain one, no bytes either (an answer nobody asked for). A TLS connection may
/// have records queued that are not data (session tickets). The socket is looked at
/// (`peek`) only when the runtime has seen it become readable since it last found it
/// empty, so a quiet pooled connection costs no system call; one closed so recently
/// that the runtime has not seen it yet fails its request unsent, which is sent again
/// on a new connection (`Failure::Unsent`).
fn reusable(io: &UpstreamIo) -> bool {
    let probe = || {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        socket2::SockRef::from(io.tcp()).peek(&mut byte)
    };
    match io.tcp().try_io(tokio::io::Interest::READABLE, probe) {
        Ok(0) => false,
        Ok(_) => io.is_tls(),
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// Chooses the request body's framing as hyper's client did: a body that has already
/// ended is sent as nothing; a `Transfer-Encoding` (only `chunked` gets this far) or a
/// `Content-Length` the request carries is kept; else an exact size becomes a
/// `Content-Length`, and an unknown one `chunked` (none for GET, HEAD and CONNECT).
fn encoding(parts: &mut http::request::Parts, body: &RequestBody) -> Result<Encoding, SendError> {
    let h = &mut parts.headers;
    if body.is_end_stream() {
        h.remove(header::TRANSFER_ENCODING);
        return Ok(Encoding::Length(0));
    }
    if h.contains_key(header::TRANSFER_ENCODING) {
        h.remove(header::CONTENT_LENGTH);
        return Ok(Encoding::Chunked);
    }
    if let Some(v) = h.get(header::CONTENT_LENGTH) {
        return pylon_h1::content_length(v.as_bytes())
            .map(Encoding::Length)
            .ok_or(SendError::Length);
    }
    if let Some(n) = body.size_hint().exact() {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        return Ok(Encoding::Length(n));
    }
    if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT) {
        return Ok(Encoding::Length(0));
    }
    h.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    Ok(Encoding::Chunked)
}

/// One open connection in an exchange, boxed once for it: the exchange's future and
/// the answer's body (moved with its response through every layer of the request
/// path) hold a pointer to it, not its bytes.
struct Conn {
    io: UpstreamIo,
    reader: Reader,
    /// The request still going out; after the answer's head, its body's rest (the
    /// upstream answered before its end).
    writer: Option<Writer<RequestBody>>,
}

/// What stops an exchange before it has an answer.
pub(super) enum Failure {
    /// Nothing reached the upstream, or a connection that had carried requests before
    /// was closed without an answer to an idempotent request: safe to send again on a
    /// fresh connection.
    Unsent(Box<Request<RequestBody>>, SendError),
    Failed(SendError),
}

/// Sends `req` on `io` and reads the answer's head; `reused`: the connection carried
/// requests before. `home`: where the connection goes back after the answer (`None`:
/// closed after it). `sent_at`: when the head and body were written (if before the
/// answer's head).
/// (Not an `async fn`, which would keep its arguments twice in its state, captured
/// and moved into its body: the state is copied into every request's future. The
/// request comes in parts so that none is held whole beside them.)
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
pub(super) fn exchange<'a>(
    io: UpstreamIo,
    mut parts: http::request::Parts,
    mut body: RequestBody,
    home: Option<Lent>,
    reused: bool,
    sent_at: &'a mut Option<Instant>,
) -> impl Future<Output = Result<Response<H1Body>, Failure>> + 'a {
    async move {
        let mut encoding = encoding(&mut parts, &body).map_err(Failure::Failed)?;
        // A client's chunked body goes on with its framing as it came.
        let passed = match encoding {
            Encoding::Chunked => body.pass_chunked(),
            _ => None,
        };
        if passed.is_some() {
            encoding = Encoding::ChunkedPassed;
        }
        let mut head = BytesMut::with_capacity(256 + parts.headers.len() * 32);
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes();
        pylon_h1::write_request_head(
            &mut head,
            &parts.method,
            target,
            pylon_h1::Spelled {
                fields: &parts.headers,
                case: parts.extensions.get(),
            },
        );
        // A body that can be sent again, should a reused connection turn out closed.
        let replay: Option<Option<Bytes>> = match &body {
            RequestBody::Empty => Some(None),
            RequestBody::Full(b) => Some(b.clone()),
            _ => None,
        };
        let mut conn = Box::new(Conn {
            io,
            reader: Reader::default(),
            writer: Some(Writer::new(head.freeze(), body, encoding)),
        });
        if let (Some(first), Some(w)) = (passed, &mut conn.writer) {
            w.push(first);
        }
        let mut write_error = None;
        let mut wrote = false;
        let mut interim = 0;
        let answer = std::future::poll_fn(|cx| {
            let Conn { io, reader, writer } = &mut *conn;
            if let Some(w) = writer {
                let polled = w.poll(io, cx).map_err(SendError::from);
                wrote |= w.started;
                match polled {
                    Poll::Ready(Ok(())) => {
                        *writer = None;
                        *sent_at = Some(Instant::now());
                    }
                    // The client's body failed: the request cannot be completed.
                    Poll::Ready(Err(e @ (SendError::Body(_) | SendError::Length))) => {
                        return Poll::Ready(Err(e));
                    }
                    // The upstream may have answered already (and closed its side); read it.
                    Poll::Ready(Err(e)) => {
                        *writer = None;
                        write_error = Some(e);
                    }
                    Poll::Pending => {}
                }
            }
            loop {
                match pylon_h1::parse_response(&mut reader.buf, &parts.method, &RESPONSE_HEAD) {
                    Ok(Some(h)) if h.status.is_informational() && h.status != 101 => {
                        interim += 1;
                        if interim > MAX_INTERIM {
                            return Poll::Ready(Err(SendError::Invalid(
                                "too many 1xx answers".into(),
                            )));
                        }
                        continue;
                    }
                    Ok(Some(h)) => return Poll::Ready(Ok(h)),
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(SendError::Invalid(e.to_string()))),
                }
                match ready!(reader.poll_fill(io, cx)) {
                    Ok(0) => {
                        return Poll::Ready(Err(write_error.take().unwrap_or(SendError::Closed)));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Poll::Ready(Err(write_error.take().unwrap_or(SendError::Io(e))));
                    }
                }
            }
        })
        .await;
        let head = match answer {
            Ok(h) => h,
            Err(e) => {
                // Nothing written at all, or an idempotent request that a connection closed
                // without a byte of answer (it was closing as the request went out).
                let unsent = reused
                    && conn.reader.read == 0
                    && (!wrote
                        || (idempotent(&parts.method)
                            && matches!(e, SendError::Closed | SendError::Io(_))));
                return Err(match replay {
                    Some(b) if unsent => {
                        let body = b.map_or(RequestBody::Empty, |b| RequestBody::Full(Some(b)));
                        Failure::Unsent(Box::new(Request::from_parts(parts, body)), e)
                    }
                    _ => Failure::Failed(e),
                });
            }
        };
        let upgraded = head.status == StatusCode::SWITCHING_PROTOCOLS;
        let decoder = match head.framing {
            _ if upgraded => BodyDecoder::Done,
            BodyFraming::None | BodyFraming::Length(0) => BodyDecoder::Done,
            BodyFraming::Length(n) => BodyDecoder::Length(n),
            BodyFraming::Chunked => BodyDecoder::Chunked(ChunkedDecoder::new(u64::MAX)),
            BodyFraming::UntilClose => BodyDecoder::UntilClose,
        };
        let mut resp = Response::new(());
        *resp.status_mut() = head.status;
        *resp.version_mut() = if head.version == Version::HTTP_10 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        *resp.headers_mut() = head.fields.to_forwarded_header_map();
        if let Some(case) = pylon_h1::HeaderCase::of(head.fields) {
            resp.extensions_mut().insert(case);
        }
        let mut body = H1Body {
            conn: Some(conn),
            decoder,
            // A failed write leaves the request cut: the connection cannot be reused.
            keep_alive: head.keep_alive && !upgraded && write_error.is_none(),
            home,
        };
        if !upgraded && body.decoder.is_done() {
            body.finish();
        }
        Ok(resp.map(|()| body))
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// An upstream answer's body, read from its connection as the client takes it.
pub struct H1Body {
    conn: Option<Box<Conn>>,
    decoder: BodyDecoder,
    keep_alive: bool,
    home: Option<Lent>,
}

impl H1Body {
    /// The body has been read to its end: the connection goes back to its endpoint when
    /// it can carry another request.
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if let Some(home) = &self.home
            && self.keep_alive
            && conn.writer.is_none()
            && conn.reader.buf.is_empty()
        {
            let Conn { io, .. } = *conn;
            home.0.put(io);
        }
    }

    /// After a 101 answer: the connection and the bytes the upstream sent after the
    /// head, for a tunnel.
    pub fn into_upgraded(mut self) -> Option<Prefixed<UpstreamIo>> {
        let Conn { io, reader, .. } = *self.conn.take()?;
        Some(Prefixed::new(reader.buf.freeze(), io))
    }

    /// Takes what the buffered bytes hold: a data frame, or trailers; the connection
    /// goes back once the body has ended.
    /// From now on the body's frames carry its chunked framing as it came
    /// ([`BodyDecoder::pass_chunked`]); `None` when it is not a chunked body still
    /// being read.
    pub fn pass_chunked(&mut self) -> Option<Bytes> {
        self.conn.as_ref()?;
        self.decoder.pass_chunked()
    }

    fn take_buffered(&mut self) -> Result<Option<Frame<Bytes>>, BoxError> {
        let Some(conn) = &mut self.conn else {
            return Ok(None);
        };
        let frame = self.decoder.take(&mut conn.reader.buf)?;
        if self.decoder.is_done() {
            self.finish();
        }
        Ok(frame)
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = &mut this.conn else {
                return Poll::Ready(None);
            };
            let Conn { io, writer, .. } = &mut **conn;
            if let Some(w) = writer {
                match w.poll(io, cx) {
                    Poll::Ready(Ok(())) => conn.writer = None,
                    Poll::Ready(Err(e)) => {
                        // The request cannot be completed; the answer stops here too.
                        this.conn = None;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    Poll::Pending => {}
                }
            }
            if this.decoder.is_done() {
                this.finish();
                return Poll::Ready(None);
            }
            match this.take_buffered() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if this.conn.is_none() || this.decoder.is_done() {
                continue;
            }
            let Some(conn) = &mut this.conn else { continue };
            match ready!(conn.reader.poll_fill(&mut conn.io, cx)) {
                Ok(0) if matches!(this.decoder, BodyDecoder::UntilClose) => {
                    this.decoder = BodyDecoder::Done;
                    this.keep_alive = false;
                    this.finish();
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(
                        "upstream closed the connection before the body's end".into(),
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }
}
