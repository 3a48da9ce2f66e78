//! A request body as the client sends it, and what a client connection becomes after a
//! protocol switch.
//!
//! [`ClientBody`] is what the request path reads: an HTTP/2 stream's body (hyper's), or
//! an HTTP/1.1 body that Pylon's own server (`http/h1.rs`) reads from the connection
//! when the request path asks for it ([`H1Body`], over the connection's [`Wire`]:
//! Content-Length or chunked, an `Expect: 100-continue` answered on the first read).
//! [`ClientUpgrade`] hands a tunnel the client's side once the answer to a WebSocket
//! handshake or a CONNECT has gone out: hyper's upgrade for HTTP/2 streams, or the
//! connection itself (with the bytes read past the head) from the HTTP/1.1 server.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pylon_h1::{ChunkError, ChunkStep};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{ChunkViolation, ConnState, TrackedIo};
use crate::cluster::body::BoxError;
use crate::h1_io::{BodyDecoder, Prefixed, Reader};
use crate::lock;

/// A client connection as the HTTP/1.1 server holds it.
pub trait ClientIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The plain TCP socket underneath (for splice), or the connection back when it is
    /// TLS.
    fn into_tcp(self: Box<Self>) -> Result<TcpStream, Box<dyn ClientIo>>;

    /// Whether [`ClientIo::poll_sendfile`] works here (a plain TCP socket).
    fn can_sendfile(&self) -> bool {
        false
    }

    /// Whether dropping it closes the connection as a `shutdown` would, so that an
    /// orderly close needs no `shutdown` first: a plain TCP socket, whose FIN the
    /// kernel sends when its last descriptor closes. (TLS sends its close_notify
    /// first.)
    fn closes_on_drop(&self) -> bool {
        false
    }

    /// Holds partial segments back (`TCP_CORK`) while an answer's head and its file
    /// go out, so that they leave in full segments; released with `false`.
    fn cork(&self, _on: bool) {}

    /// Sends up to `count` bytes of `file` from `*offset` with `sendfile(2)`, moving
    /// `*offset` past them.
    fn poll_sendfile(
        &mut self,
        _cx: &mut Context<'_>,
        _file: &std::fs::File,
        _offset: &mut u64,
        _count: usize,
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
}

impl ClientIo for TrackedIo<TcpStream> {
    fn into_tcp(self: Box<Self>) -> Result<TcpStream, Box<dyn ClientIo>> {
        Ok(self.into_inner())
    }

    fn can_sendfile(&self) -> bool {
        true
    }

    fn closes_on_drop(&self) -> bool {
        true
    }

    fn cork(&self, on: bool) {
        let _ = socket2::SockRef::from(self.get_ref()).set_tcp_cork(on);
    }

    fn poll_sendfile(
        &mut self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: &mut u64,
        count: usize,
    ) -> Poll<io::Result<usize>> {
        TrackedIo::poll_sendfile(self, cx, file, offset, count)
    }
}

impl ClientIo for TrackedIo<crate::listener::TlsClientStream> {
    fn into_tcp(self: Box<Self>) -> Result<TcpStream, Box<dyn ClientIo>> {
        Err(self)
    }
}

/// In-memory connections (the fuzzing harness).
impl ClientIo for TrackedIo<tokio::io::DuplexStream> {
    fn into_tcp(self: Box<Self>) -> Result<TcpStream, Box<dyn ClientIo>> {
        Err(self)
    }
}

/// The lock of a [`Wire`]: a spin lock that yields the thread while it waits. The
/// server loop and the request's body use the wire in turn, from the connection's one
/// task, so the lock is all but never contended; a std `Mutex` spends two atomic
/// read-modify-writes per use (its release swaps, to learn of waiters), this one
/// spends one (its release is a plain store). An atomic read-modify-write cost about
/// 9 ns on the benchmark's machine, and the wire is locked some seven times per request
/// (docs/performance.md).
pub type WireLock = spin::mutex::SpinMutex<Wire, spin::relax::Yield>;

/// An HTTP/1.1 client connection shared by its server loop and the body of the request
/// being served (the two run in the connection's one task; the lock is never held
/// across a poll of anything else).
pub struct Wire {
    /// `None` once handed to a tunnel.
    pub io: Option<Box<dyn ClientIo>>,
    pub reader: Reader,
    /// How much of the current request's body is still to be read.
    pub body: BodyDecoder,
    /// The body broke (framing, the client went away): the connection cannot go on.
    pub failed: bool,
    /// `100 Continue` still to be sent (bytes of it already written), before the body
    /// is first read.
    pub continue_at: Option<usize>,
    pub state: Arc<ConnState>,
}

impl Wire {
    pub fn new(io: Box<dyn ClientIo>, ahead: Vec<u8>, state: Arc<ConnState>) -> Wire {
        let mut reader = Reader::default();
        reader.buf.extend_from_slice(&ahead);
        Wire {
            io: Some(io),
            reader,
            body: BodyDecoder::Done,
            failed: false,
            continue_at: None,
            state,
        }
    }

    fn fail(&mut self, violation: Option<ChunkViolation>) -> BoxError {
        self.failed = true;
        if let Some(v) = violation {
            self.state.body_violation(v);
        }
        match violation {
            Some(_) => "request body framing broken".into(),
            None => "client closed the connection before the body's end".into(),
        }
    }

    /// What the buffered bytes hold of the body: data, or trailers.
    fn take_buffered(&mut self) -> Result<Option<Frame<Bytes>>, BoxError> {
        if self.failed {
            return Ok(None);
        }
        match self.body.take(&mut self.reader.buf) {
            Ok(frame) => Ok(frame),
            Err(ChunkError::TooLarge) => Err(self.fail(Some(ChunkViolation::TooLarge))),
            Err(ChunkError::Malformed(_)) => Err(self.fail(Some(ChunkViolation::Malformed))),
        }
    }

    /// Follows a chunked body's framing through the bytes read with its head, without
    /// taking them: a violation there is recorded on the connection, so the request path
    /// refuses the request before anything of it is forwarded.
    pub fn check_buffered(&self) {
        let BodyDecoder::Chunked(decoder) = &self.body else {
            return;
        };
        let mut decoder = decoder.clone();
        let mut rest = &self.reader.buf[..];
        loop {
            match decoder.step(rest) {
                Ok(ChunkStep::NeedMore | ChunkStep::End { .. }) => return,
                Ok(ChunkStep::Data(n) | ChunkStep::Framing { len: n, .. }) => rest = &rest[n..],
                Err(ChunkError::TooLarge) => {
                    return self.state.body_violation(ChunkViolation::TooLarge);
                }
                Err(ChunkError::Malformed(_)) => {
                    return self.state.body_violation(ChunkViolation::Malformed);
                }
            }
        }
    }

    /// Sends what is left of `100 Continue`.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
        while let Some(at) = self.continue_at {
            let Some(io) = self.io.as_mut() else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            if at == CONTINUE.len() {
                ready!(Pin::new(io).poll_flush(cx))?;
                self.continue_at = None;
                break;
            }
            let n = ready!(Pin::new(io).poll_write(cx, &CONTINUE[at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.continue_at = Some(at + n);
        }
        Poll::Ready(Ok(()))
    }

    /// The next frame of the request body, reading from the connection as needed.
    pub fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.body.is_done() {
            return Poll::Ready(None);
        }
        if let Err(e) = ready!(self.poll_continue(cx)) {
            self.failed = true;
            return Poll::Ready(Some(Err(Box::new(e))));
        }
        loop {
            match self.take_buffered() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            if self.body.is_done() {
                return Poll::Ready(None);
            }
            if self.failed {
                return Poll::Ready(Some(Err("request body failed".into())));
            }
            let Some(io) = self.io.as_mut() else {
                return Poll::Ready(Some(Err(self.fail(None))));
            };
            match ready!(self.reader.poll_fill(io, cx)) {
                Ok(0) => {
                    let violation = self.state.chunk_violation();
                    return Poll::Ready(Some(Err(self.fail(violation))));
                }
                Ok(_) => {}
                Err(e) => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }
}

/// The body of a request served by the HTTP/1.1 server, read from its connection.
pub struct H1Body {
    wire: Arc<WireLock>,
}

impl H1Body {
    pub fn new(wire: Arc<WireLock>) -> H1Body {
        H1Body { wire }
    }

    /// From now on the body's frames carry its chunked framing as it came
    /// ([`BodyDecoder::pass_chunked`]); `None` when it is not a chunked body still
    /// being read.
    pub fn pass_chunked(&self) -> Option<Bytes> {
        self.wire.lock().body.pass_chunked()
    }
}

/// A request body as the client sends it.
pub enum ClientBody {
    /// Nothing (a request without a body).
    Empty,
    /// An HTTP/2 stream's body (`http/server_h2.rs`).
    H2(crate::http::server_h2::H2Body),
    /// An HTTP/1.1 body, read from the connection as it is asked for.
    H1(H1Body),
    /// A body another server reads itself (an HTTP/3 stream's, `http/server_h3.rs`).
    Other(Box<dyn Body<Data = Bytes, Error = BoxError> + Send + Sync + Unpin>),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::H2(b) => Pin::new(b).poll_frame(cx),
            ClientBody::H1(b) => b.wire.lock().poll_body(cx),
            ClientBody::Other(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::H2(b) => b.is_end_stream(),
            ClientBody::H1(b) => b.wire.lock().body.is_done(),
            ClientBody::Other(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H2(b) => b.size_hint(),
            ClientBody::H1(b) => b.wire.lock().body.size_hint(),
            ClientBody::Other(b) => b.size_hint(),
        }
    }
}

/// The client's side of a tunnel, once the answer that opened it has gone out: the
/// connection or stream, with what was read of it beyond the switch's head.
pub struct Upgraded(Prefixed<Box<dyn ClientIo>>);

impl Upgraded {
    pub fn new(ahead: Bytes, io: Box<dyn ClientIo>) -> Upgraded {
        Upgraded(Prefixed::new(ahead, io))
    }

    /// The plain TCP socket and the bytes already read from it, for splice; the
    /// upgrade as it was when it is TLS or an HTTP/2 or HTTP/3 stream.
    pub fn into_tcp(self) -> Result<(TcpStream, Bytes), Upgraded> {
        let (ahead, io) = self.0.into_parts();
        match io.into_tcp() {
            Ok(tcp) => Ok((tcp, ahead)),
            Err(io) => Err(Upgraded::new(ahead, io)),
        }
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Where the HTTP/1.1 server hands over the connection after a switch (a request
/// extension; clones share the one receiver).
#[derive(Clone)]
pub struct OwnUpgrade(Arc<Mutex<Option<tokio::sync::oneshot::Receiver<Upgraded>>>>);

impl OwnUpgrade {
    pub fn new(rx: tokio::sync::oneshot::Receiver<Upgraded>) -> OwnUpgrade {
        OwnUpgrade(Arc::new(Mutex::new(Some(rx))))
    }
}

/// A request's way to its client connection after a protocol switch (none when the
/// request carried no [`OwnUpgrade`]).
pub struct ClientUpgrade(Option<tokio::sync::oneshot::Receiver<Upgraded>>);

impl ClientUpgrade {
    /// Takes the request's upgrade handle out of it.
    pub fn on<B>(req: &mut http::Request<B>) -> ClientUpgrade {
        ClientUpgrade(
            req.extensions_mut()
                .remove::<OwnUpgrade>()
                .and_then(|own| lock(&own.0).take()),
        )
    }

    /// The client's side once the answer has gone out; `None` if the switch never
    /// happened.
    pub async fn wait(self) -> Option<Upgraded> {
        self.0?.await.ok()
    }
}
