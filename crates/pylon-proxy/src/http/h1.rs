//! Pylon's HTTP/1.1 server, on its codec (`pylon-h1`).
//!
//! One connection, one loop: read a request head (strict framing at parse: what
//! docs/security.md refuses never becomes a request), hand the request to the request
//! path (`pipeline::handle`) with a body that reads from the connection only when the
//! path asks for it (`conn::H1Body`, `100 Continue` on its first read), write the
//! answer (its fields as given, framed by Content-Length, chunked, or the close for
//! HTTP/1.0), then the next request (pipelined ones are already buffered). A
//! protocol switch (101 to a WebSocket handshake, 2xx to CONNECT) hands the connection
//! itself, with the bytes read past the head, to the tunnel.
//!
//! Memory follows work: between requests the connection holds no read or write
//! buffer (a head is first read into the stack and copied out at its size), and once
//! quiet for a moment it gives its socket back to be parked without a task
//! (`Head::Park`, `conn::parking`). Timeouts, draining and the process's stop are the
//! connection timer's (`server_h1h2::drive`), fed by the socket wrapper
//! (`conn::TrackedIo`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use http_body::Body;
use pylon_config::model::Limits;
use pylon_h1::{
    BodyFraming, ChunkedDecoder, HeadError, HeadLimits, HeaderCase, RequestHead, Spelled,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::body::{FileRegion, ResponseBody};
use super::error::{ErrorKind, error_response};
use super::pipeline::{self, ConnCtx};
use crate::conn::{ClientBody, ClientIo, H1Body, OwnUpgrade, Upgraded, Wire, WireLock};
use crate::h1_io::{BodyDecoder, Encoding, Writer};

/// What is left of a request body the request path did not read is read and dropped,
/// up to this much, to keep the connection; a larger rest closes it.
const DRAIN_MAX: u64 = 64 * 1024;
/// How long a connection whose last answer promised keep-alive, before a graceful close
/// began, waits for the request the client may have sent on that promise.
const PROMISED_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// One `sendfile(2)` call is asked for this much at most (the socket's buffer takes
/// less; the kernel's own cap is 2 GiB).
const SENDFILE_MAX: u64 = 1 << 30;

/// The connection's future, for the connection timer. It ends with the socket when
/// it parked (idle, nothing read), to be parked by the caller.
pub(super) struct Connection {
    run: Pin<Box<dyn Future<Output = Ended> + Send>>,
}

/// How a connection's loop ended: closed, or with its socket when it parked.
type Ended = io::Result<Option<Box<dyn ClientIo>>>;

impl Future for Connection {
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().run.as_mut().poll(cx)
    }
}

impl Connection {
    /// `parks`: the connection is parked when idle (its request state is then inline
    /// in its future); one that is not boxes each request's state, so that it holds
    /// kilobytes only while it serves.
    pub(super) fn new(
        parks: bool,
        io: Box<dyn ClientIo>,
        ahead: Vec<u8>,
        ctx: Arc<ConnCtx>,
        limits: &Limits,
    ) -> Connection {
        // Back from a park, or new: not asked to park (a graceful close is never asked
        // of a connection that parks).
        ctx.state.park_withdrawn();
        let sendfile = io.can_sendfile();
        let wire = Arc::new(WireLock::new(Wire::new(io, ahead, Arc::clone(&ctx.state))));
        let head_limits = HeadLimits {
            // A backstop at twice the listener's limits, so that the request path
            // gives the precise answer for anything in between.
            max_bytes: limits.max_header_bytes.saturating_mul(2).max(8192),
            max_fields: limits.max_headers.saturating_mul(2),
        };
        let served = Served {
            wire,
            ctx,
            head_limits,
            body_limit: limits.max_request_body,
            sendfile,
        };
        Connection {
            // Made in place: a parked connection's loop is 6 KiB.
            run: if parks {
                super::pinned_in_place(|| served.run::<Inline>())
            } else {
                super::pinned_in_place(|| served.run::<Boxed>())
            },
        }
    }
}

/// Where a request's state lives while it is served (see [`Connection::new`]).
trait Exchanging {
    fn exchange(
        served: &Served,
        head: RequestHead,
    ) -> impl Future<Output = io::Result<Next>> + Send + '_;
}

/// In the connection's future: no allocation and no copy per request (kilobytes), for
/// connections that are parked when idle and so hold nothing then anyway.
struct Inline;

impl Exchanging for Inline {
    fn exchange(
        served: &Served,
        head: RequestHead,
    ) -> impl Future<Output = io::Result<Next>> + Send + '_ {
        served.exchange(head)
    }
}

/// In an allocation of its own, only while the request is served (TLS connections,
/// which are not parked).
struct Boxed;

impl Exchanging for Boxed {
    fn exchange(
        served: &Served,
        head: RequestHead,
    ) -> impl Future<Output = io::Result<Next>> + Send + '_ {
        Box::pin(served.exchange(head))
    }
}

/// What a connection's loop keeps between requests.
struct Served {
    wire: Arc<WireLock>,
    ctx: Arc<ConnCtx>,
    head_limits: HeadLimits,
    body_limit: u64,
    /// The socket is plain TCP: file bodies go out with `sendfile(2)`.
    sendfile: bool,
}

/// A file body taken out of its answer to be sent with `sendfile(2)` after the head,
/// and the body, which counts what was sent.
struct FileOut {
    region: FileRegion,
    body: ResponseBody,
}

/// What the connection does after an answer.
enum Next {
    KeepAlive,
    /// Kept alive, but a graceful close began while the answer went out: one more
    /// request, should the client send it, is answered (with `Connection: close`).
    KeptPromise,
    Close,
    /// Handed to a tunnel.
    Switched,
}

/// What waiting for a head found. Returned once and moved at once: boxing the head
/// would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Head {
    Ready(RequestHead),
    /// EOF or a graceful close between requests.
    Closed,
    /// Asked to park, with nothing read.
    Park,
    Refused(ErrorKind),
}

impl Served {
    async fn run<E: Exchanging>(self) -> Ended {
        let mut promised = false;
        loop {
            let next = if promised {
                // Boxed: only this rare wait carries a timer.
                match Box::pin(tokio::time::timeout(PROMISED_WAIT, self.next_head(true))).await {
                    Ok(next) => next,
                    Err(_) => return self.close().await.map(|()| None),
                }
            } else {
                self.next_head(false).await
            };
            let head = match next? {
                Head::Ready(head) => head,
                Head::Closed => return Ok(None),
                Head::Park => return Ok(self.wire.lock().io.take()),
                Head::Refused(kind) => {
                    pipeline::log_rejected(&self.ctx, kind);
                    // Boxed: its writer would otherwise widen every connection's state.
                    let _ = Box::pin(self.refuse(kind)).await;
                    return self.close().await.map(|()| None);
                }
            };
            let next = E::exchange(&self, head).await?;
            promised = matches!(next, Next::KeptPromise);
            match next {
                Next::KeepAlive | Next::KeptPromise => {
                    let mut w = self.wire.lock();
                    if w.reader.buf.is_empty() {
                        // Idle: no buffer.
                        w.reader.release();
                    }
                }
                Next::Close => return self.close().await.map(|()| None),
                Next::Switched => return Ok(None),
            }
        }
    }

    /// Sends the FIN (TLS: close_notify too) after the last answer.
    async fn close(&self) -> io::Result<()> {
        let (io, all_read) = {
            let mut w = self.wire.lock();
            let all_read = !w.failed && w.body.is_done() && w.reader.buf.is_empty();
            (w.io.take(), all_read)
        };
        if let Some(mut io) = io {
            // A plain socket whose request was read to its end sends its FIN as it is
            // dropped here, without a system call of its own (NGINX closes so too);
            // unless the client-close watch holds another descriptor of it, which
            // would keep it open. With bytes of the client's left unread, the FIN goes
            // out first, ahead of the reset that closing such a socket sends.
            if all_read && io.closes_on_drop() && self.ctx.client_socket.is_none() {
                return Ok(());
            }
            let _ = io.shutdown().await;
        }
        Ok(())
    }

    /// The next request head, read as it arrives. `promised`: the last answer promised
    /// keep-alive after a graceful close began, so the close waits for this head.
    async fn next_head(&self, promised: bool) -> io::Result<Head> {
        std::future::poll_fn(|cx| self.poll_head(cx, promised)).await
    }

    /// A graceful close between requests closes at once (unless `promised`); one asked
    /// for while a head is arriving waits for that request.
    fn poll_head(&self, cx: &mut Context<'_>, promised: bool) -> Poll<io::Result<Head>> {
        let mut w = self.wire.lock();
        loop {
            if !w.reader.buf.is_empty() {
                match pylon_h1::parse_request(&mut w.reader.buf, &self.head_limits) {
                    Ok(Some(head)) => return Poll::Ready(Ok(Head::Ready(head))),
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Ok(Head::Refused(refusal(e)))),
                }
            } else if self.ctx.state.graceful_asked() && !promised {
                return Poll::Ready(Ok(Head::Closed));
            }
            let w = &mut *w;
            let Some(io) = w.io.as_mut() else {
                return Poll::Ready(Ok(Head::Closed));
            };
            // (Idle until now: the first bytes go through the stack, then into a
            // buffer of their size.)
            let n = match w.reader.poll_fill(io, cx) {
                Poll::Ready(r) => r?,
                // Asked to park, with nothing read and nothing to read.
                Poll::Pending
                    if w.reader.buf.is_empty() && !promised && self.ctx.state.park_asked() =>
                {
                    return Poll::Ready(Ok(Head::Park));
                }
                Poll::Pending => return Poll::Pending,
            };
            if n == 0 {
                // The client closed between requests (or within a head: nothing to
                // answer).
                return Poll::Ready(Ok(Head::Closed));
            }
        }
    }

    /// Answers a head that never became a request, and closes.
    async fn refuse(&self, kind: ErrorKind) -> io::Result<()> {
        let (mut parts, body) = error_response(kind).into_parts();
        let (mut writer, file) =
            self.response_writer(Version::HTTP_11, &mut parts, body, false, &mut false);
        self.send(&mut writer, file).await
    }

    /// Writes an answer: its head and body, then a file body taken out of it with
    /// `sendfile(2)`. (The writer is borrowed, not moved into this future: it is
    /// large, and the caller drops it, ending the answer's body, once this is done.)
    async fn send(
        &self,
        writer: &mut Writer<ResponseBody>,
        file: Option<FileOut>,
    ) -> io::Result<()> {
        // The head waits for the file's first bytes (as NGINX's `tcp_nopush`): sent
        // alone, it would hold the file back a round trip.
        let cork = |on: bool| {
            if let Some(io) = self.wire.lock().io.as_ref() {
                io.cork(on);
            }
        };
        if file.is_some() {
            cork(true);
        }
        let head = std::future::poll_fn(|cx| writer.poll(&mut WireWrite(&self.wire), cx))
            .await
            .map_err(io::Error::other);
        if let Err(e) = head {
            if file.is_some() {
                cork(false);
            }
            return Err(e);
        }
        let Some(FileOut {
            mut region,
            mut body,
        }) = file
        else {
            return Ok(());
        };
        let total = region.left;
        let sent = std::future::poll_fn(|cx| {
            while region.left > 0 {
                let mut w = self.wire.lock();
                let Some(io) = w.io.as_mut() else {
                    return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
                };
                let count = usize::try_from(region.left.min(SENDFILE_MAX)).unwrap_or(0);
                match io.poll_sendfile(cx, &region.file, &mut region.offset, count) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the file is shorter than when it was opened",
                        )));
                    }
                    Poll::Ready(Ok(n)) => region.left -= n as u64,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Poll::Ready(Ok(()))
        })
        .await;
        cork(false);
        let done = total - region.left;
        self.ctx
            .shared
            .metrics
            .sendfile_bytes
            .fetch_add(done, Ordering::Relaxed);
        body.sent_outside(done, sent.is_ok());
        sent
    }

    /// One request through the request path, and its answer back.
    /// (Not an `async fn`, which would keep `head` twice in its state, captured and
    /// moved into its body: the state is part of every request's future.)
    #[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
    fn exchange(&self, head: RequestHead) -> impl Future<Output = io::Result<Next>> + '_ {
        async move {
            // A request came before the park: the connection is busy again.
            self.ctx.state.park_withdrawn();
            let version = head.version;
            let method = head.method.clone();
            let body = {
                let mut w = self.wire.lock();
                w.body = match head.framing {
                    BodyFraming::Length(n) if n > 0 => BodyDecoder::Length(n),
                    BodyFraming::Chunked => {
                        BodyDecoder::Chunked(ChunkedDecoder::new(self.body_limit))
                    }
                    _ => BodyDecoder::Done,
                };
                w.failed = false;
                w.check_buffered();
                let has_body = !w.body.is_done();
                w.continue_at = (head.expect_continue && has_body).then_some(0);
                if has_body {
                    ClientBody::H1(H1Body::new(Arc::clone(&self.wire)))
                } else {
                    ClientBody::Empty
                }
            };
            let mut req = Request::new(body);
            *req.method_mut() = head.method;
            *req.uri_mut() = head.uri;
            *req.version_mut() = version;
            *req.headers_mut() = head.fields.to_forwarded_header_map();
            if let Some(case) = HeaderCase::of(head.fields) {
                req.extensions_mut().insert(case);
            }
            let switch = (head.upgrade || method == Method::CONNECT).then(|| {
                let (tx, rx) = oneshot::channel();
                req.extensions_mut().insert(OwnUpgrade::new(rx));
                tx
            });
            let resp = pipeline::handle(req, &self.ctx).await;
            let (mut parts, body) = resp.into_parts();
            let switched = parts.status == StatusCode::SWITCHING_PROTOCOLS
                || (method == Method::CONNECT && parts.status.is_success());
            if let (true, Some(tx)) = (switched, switch) {
                return self.switch(parts.status, &mut parts, body, tx).await;
            }
            let mut keep_alive =
                head.keep_alive && !self.ctx.state.graceful_asked() && !asks_close(&parts.headers);
            let bodyless = method == Method::HEAD
                || parts.status.is_informational()
                || parts.status == StatusCode::NO_CONTENT
                || parts.status == StatusCode::NOT_MODIFIED;
            // The answer's body ends with the writer, at this block's end (its
            // completion: the upstream connection back to its pool, the access-log
            // line), before the request body is drained.
            {
                let (mut writer, file) =
                    self.response_writer(version, &mut parts, body, bodyless, &mut keep_alive);
                self.send(&mut writer, file).await?;
            }
            if !keep_alive {
                return Ok(Next::Close);
            }
            Ok(if self.drain().await {
                if self.ctx.state.graceful_asked() {
                    // The close began after this answer said keep-alive.
                    Next::KeptPromise
                } else {
                    Next::KeepAlive
                }
            } else {
                Next::Close
            })
        }
    }

    /// Sends the head of an answer that switches protocols, then hands the connection
    /// to the tunnel waiting for it.
    async fn switch(
        &self,
        status: StatusCode,
        parts: &mut http::response::Parts,
        body: ResponseBody,
        tx: oneshot::Sender<Upgraded>,
    ) -> io::Result<Next> {
        super::headers::add_date(&mut parts.headers);
        let mut out = BytesMut::with_capacity(256);
        pylon_h1::write_response_head(
            &mut out,
            Version::HTTP_11,
            status,
            None,
            Spelled {
                fields: &parts.headers,
                case: parts.extensions.get(),
            },
        );
        let mut writer = Writer::new(out.freeze(), ResponseBody::empty(), Encoding::Length(0));
        std::future::poll_fn(|cx| writer.poll(&mut WireWrite(&self.wire), cx))
            .await
            .map_err(io::Error::other)?;
        drop(body);
        let (io, ahead) = {
            let mut w = self.wire.lock();
            let ahead = std::mem::take(&mut w.reader.buf).freeze();
            (w.io.take(), ahead)
        };
        if let Some(io) = io {
            let _ = tx.send(Upgraded::new(ahead, io));
        }
        Ok(Next::Switched)
    }

    /// The head with its framing and connection fields, and a writer for it and the
    /// body, or for the head alone and the file body to send after it with
    /// `sendfile(2)`. `keep_alive` turns false when the body runs until the close.
    fn response_writer(
        &self,
        version: Version,
        parts: &mut http::response::Parts,
        mut body: ResponseBody,
        bodyless: bool,
        keep_alive: &mut bool,
    ) -> (Writer<ResponseBody>, Option<FileOut>) {
        let headers = &mut parts.headers;
        let mut passed = None;
        let encoding = if bodyless {
            None
        } else if let Some(n) = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| pylon_h1::content_length(v.as_bytes()))
        {
            headers.remove(header::TRANSFER_ENCODING);
            Some(Encoding::Length(n))
        } else if body.is_end_stream() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            Some(Encoding::Length(0))
        } else if let Some(n) = body.size_hint().exact() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            Some(Encoding::Length(n))
        } else if version == Version::HTTP_11 {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            // An upstream's chunked body goes on with its framing as it came.
            passed = body.pass_chunked();
            Some(if passed.is_some() {
                Encoding::ChunkedPassed
            } else {
                Encoding::Chunked
            })
        } else {
            *keep_alive = false;
            Some(Encoding::UntilClose)
        };
        headers.remove(header::CONNECTION);
        if !*keep_alive && version == Version::HTTP_11 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        } else if *keep_alive && version == Version::HTTP_10 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        }
        super::headers::add_date(headers);
        let mut out = BytesMut::with_capacity(128 + headers.len() * 48);
        pylon_h1::write_response_head(
            &mut out,
            if version == Version::HTTP_10 {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            },
            parts.status,
            None,
            Spelled {
                fields: headers,
                case: parts.extensions.get::<HeaderCase>(),
            },
        );
        match encoding {
            Some(Encoding::Length(n)) if self.sendfile && body.file_left() == Some(n) => {
                let file = body.take_file().map(|region| FileOut { region, body });
                let head = Writer::new(out.freeze(), ResponseBody::empty(), Encoding::Length(0));
                (head, file)
            }
            Some(e) => {
                let mut writer = Writer::new(out.freeze(), body, e);
                if let Some(first) = passed {
                    writer.push(first);
                }
                (writer, None)
            }
            // Nothing of the body goes out; it ends (and is counted) when dropped.
            None => (
                Writer::new(out.freeze(), ResponseBody::empty(), Encoding::Length(0)),
                None,
            ),
        }
    }

    /// Reads what is left of the request body so that the connection can carry the
    /// next request; false when it cannot (too much left, broken, or a client that was
    /// never told to send it).
    async fn drain(&self) -> bool {
        {
            let w = self.wire.lock();
            if w.failed || (!w.body.is_done() && w.continue_at == Some(0)) {
                return false;
            }
            if w.body.is_done() {
                return true;
            }
        }
        let mut drained = 0u64;
        loop {
            let frame = std::future::poll_fn(|cx| self.wire.lock().poll_body(cx)).await;
            match frame {
                None => return true,
                Some(Ok(f)) => {
                    drained += f.data_ref().map_or(0, |d| d.len() as u64);
                    if drained > DRAIN_MAX {
                        return false;
                    }
                }
                Some(Err(_)) => return false,
            }
        }
    }
}

/// The answer to a head the codec refused.
fn refusal(e: HeadError) -> ErrorKind {
    match e {
        HeadError::TooLarge => ErrorKind::HeadersTooLarge,
        HeadError::TooManyFields => ErrorKind::TooManyHeaders,
        HeadError::MissingHost => ErrorKind::MissingHost,
        HeadError::Invalid(_) => ErrorKind::MalformedRequest,
    }
}

/// The answer says `Connection: close`.
fn asks_close(h: &HeaderMap) -> bool {
    h.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// The connection as a writer for one call at a time (the lock is held only inside
/// each call, never while the body is polled).
struct WireWrite<'a>(&'a Arc<WireLock>);

impl WireWrite<'_> {
    fn with<R>(
        &mut self,
        f: impl FnOnce(Pin<&mut dyn ClientIo>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        let mut w = self.0.lock();
        match w.io.as_mut() {
            Some(io) => f(Pin::new(io.as_mut())),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for WireWrite<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().with(|io| io.poll_write(cx, b))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().with(|io| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().with(|io| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().with(|io| io.poll_shutdown(cx))
    }
}
