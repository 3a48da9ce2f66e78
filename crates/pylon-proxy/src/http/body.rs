//! Bodies on the request path, streamed frame by frame, never collected:
//! [`RequestBody`] goes to the upstream (metered against the body limit),
//! [`ResponseBody`] goes to the client and, when it ends, returns the upstream
//! connection to its pool and writes the access-log line.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use crate::cluster::UpstreamBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub use crate::cluster::body::{BodyTooLarge, BoxError, RequestBody, RequestMeter};

/// How a response body ended.
#[derive(Debug, Clone, Copy)]
pub struct BodyEnd {
    /// The whole body went out.
    pub complete: bool,
    /// Bytes sent.
    pub bytes: u64,
    /// Cut by its stream's send timeout (HTTP/2, HTTP/3).
    pub stalled: bool,
    /// The `grpc-status` of its trailers.
    pub grpc_status: Option<u16>,
}

/// A `grpc-status` field's value.
pub fn grpc_status(h: &http::HeaderMap) -> Option<u16> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A request body as the upstream phase holds it for its tries.
pub enum RequestPayload {
    /// Streamed to the one and only try.
    Stream(Option<RequestBody>),
    /// Kept in memory (bounded by `retry.max_body_bytes`) and sent again on retries.
    Replay(Bytes),
}

impl RequestPayload {
    /// The body for the next try.
    pub fn for_try(&mut self) -> RequestBody {
        match self {
            RequestPayload::Stream(b) => b.take().unwrap_or(RequestBody::Empty),
            RequestPayload::Replay(b) if b.is_empty() => RequestBody::Empty,
            RequestPayload::Replay(b) => RequestBody::Full(Some(b.clone())),
        }
    }

    pub fn replayable(&self) -> bool {
        matches!(self, RequestPayload::Replay(_))
    }
}

/// Runs once when a response body is finished (fully sent, or dropped).
pub trait Completion: Send + Sync {
    fn finish(self: Box<Self>, end: BodyEnd);
}

enum Kind {
    Full(Option<Bytes>),
    /// An upstream body, with its first frame when it was read ahead.
    Stream(UpstreamBody, Option<Ahead>),
    /// A transformed body (gRPC-Web).
    Boxed(http_body_util::combinators::BoxBody<Bytes, BoxError>),
    /// A static file's bytes, untransformed: read a chunk at a time, or sent by the
    /// HTTP/1.1 server with `sendfile(2)` ([`ResponseBody::take_file`]).
    File(FileRegion),
}

/// A part of an open file: `left` bytes from `offset`.
pub struct FileRegion {
    pub file: std::fs::File,
    pub offset: u64,
    pub left: u64,
}

impl FileRegion {
    /// What one read of a file body takes at most.
    const CHUNK: u64 = 256 * 1024;

    /// The next chunk (positional reads: the file's own offset is never moved).
    fn read(&mut self) -> Option<Result<Bytes, BoxError>> {
        use std::os::unix::fs::FileExt;
        if self.left == 0 {
            return None;
        }
        let want = usize::try_from(self.left.min(Self::CHUNK)).unwrap_or(0);
        let mut buf = bytes::BytesMut::zeroed(want);
        Some(match self.file.read_at(&mut buf, self.offset) {
            Ok(0) => Err("the file is shorter than when it was opened".into()),
            Ok(n) => {
                buf.truncate(n);
                self.offset += n as u64;
                self.left -= n as u64;
                Ok(buf.freeze())
            }
            Err(e) => Err(Box::new(e)),
        })
    }
}

/// A frame read ahead of the client, kept small (trailers are rare).
enum Ahead {
    Data(Bytes),
    Trailers(Box<http::HeaderMap>),
}

impl Ahead {
    fn new(frame: Frame<Bytes>) -> Option<Ahead> {
        match frame.into_data() {
            Ok(d) => Some(Ahead::Data(d)),
            Err(f) => f.into_trailers().ok().map(|t| Ahead::Trailers(Box::new(t))),
        }
    }

    fn into_frame(self) -> Frame<Bytes> {
        match self {
            Ahead::Data(d) => Frame::data(d),
            Ahead::Trailers(t) => Frame::trailers(*t),
        }
    }
}

/// A response body on its way to the client.
pub struct ResponseBody {
    kind: Kind,
    sent: u64,
    ended: bool,
    completion: Option<Box<dyn Completion>>,
    /// Cut by its stream's send timeout (HTTP/2, HTTP/3): the client left its window
    /// shut.
    stalled: bool,
    /// Kept as long as the body (a concurrency limit's slot).
    held: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// The `grpc-status` its trailers carried.
    grpc_status: Option<u16>,
}

impl ResponseBody {
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    pub fn full(b: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full(if b.is_empty() { None } else { Some(b) }),
            sent: 0,
            ended: false,
            completion: None,
            stalled: false,
            held: None,
            grpc_status: None,
        }
    }

    /// An upstream body whose first frame, if it has already arrived, is read now: a
    /// body that is broken from its first bytes (bad chunk framing) fails here, before
    /// the response head is sent, so the client gets a 502 instead of a cut answer.
    pub fn stream_checked(mut inner: UpstreamBody) -> Result<Self, BoxError> {
        use futures_util::FutureExt;
        let first = match http_body_util::BodyExt::frame(&mut inner).now_or_never() {
            Some(Some(Ok(frame))) => Ahead::new(frame),
            Some(Some(Err(e))) => return Err(e),
            Some(None) | None => None,
        };
        Ok(ResponseBody {
            kind: Kind::Stream(inner, first),
            sent: 0,
            ended: false,
            completion: None,
            stalled: false,
            held: None,
            grpc_status: None,
        })
    }

    pub fn boxed<B>(body: B) -> Self
    where
        B: Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
    {
        ResponseBody {
            kind: Kind::Boxed(http_body_util::combinators::BoxBody::new(body)),
            sent: 0,
            ended: false,
            completion: None,
            stalled: false,
            held: None,
            grpc_status: None,
        }
    }

    /// `left` bytes of `file` from `offset` (a static file's answer).
    pub fn file(file: std::fs::File, offset: u64, left: u64) -> Self {
        ResponseBody {
            kind: Kind::File(FileRegion { file, offset, left }),
            sent: 0,
            ended: false,
            completion: None,
            stalled: false,
            held: None,
            grpc_status: None,
        }
    }

    /// The bytes left of an untransformed file body.
    pub fn file_left(&self) -> Option<u64> {
        match &self.kind {
            Kind::File(region) => Some(region.left),
            _ => None,
        }
    }

    /// The file of an untransformed file body, for a connection that sends it itself
    /// (`sendfile(2)`); the body is then empty and learns what was sent through
    /// [`ResponseBody::sent_outside`].
    pub fn take_file(&mut self) -> Option<FileRegion> {
        if !matches!(self.kind, Kind::File(_)) {
            return None;
        }
        match std::mem::replace(&mut self.kind, Kind::Full(None)) {
            Kind::File(region) => Some(region),
            _ => None,
        }
    }

    /// Records what was sent of a body taken with [`ResponseBody::take_file`], and
    /// finishes the body.
    pub fn sent_outside(&mut self, bytes: u64, complete: bool) {
        self.sent += bytes;
        self.done(complete);
    }

    /// An upstream's chunked HTTP/1.1 body, untransformed, goes to an HTTP/1.1 client
    /// with its framing as it came instead of re-chunked: from now on its frames carry
    /// that framing. The bytes to write before them (a first frame already read,
    /// chunked, and the size line of a chunk begun), or `None` when this body cannot be
    /// passed through. Bytes sent count the framing from then on, as NGINX's
    /// `$body_bytes_sent` does.
    pub fn pass_chunked(&mut self) -> Option<Bytes> {
        let Kind::Stream(inner, ahead) = &mut self.kind else {
            return None;
        };
        if matches!(ahead, Some(Ahead::Trailers(_))) {
            return None;
        }
        let rest = inner.pass_chunked()?;
        let first = match ahead.take() {
            Some(Ahead::Data(first)) if !first.is_empty() => first,
            // (An empty chunk would read as the body's end.)
            _ => return Some(rest),
        };
        let mut out = bytes::BytesMut::with_capacity(first.len() + rest.len() + 20);
        pylon_h1::write_chunk_size(&mut out, first.len() as u64);
        out.extend_from_slice(&first);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&rest);
        self.sent += first.len() as u64;
        Some(out.freeze())
    }

    /// Its stream is being reset for a stall (the send timeout passed with no room in
    /// the client's window): what ends the body now was cut by that.
    pub fn cut_by_stall(&mut self) {
        self.stalled = true;
    }

    /// Keeps `value` until this body is dropped.
    pub fn hold(&mut self, value: Box<dyn std::any::Any + Send + Sync>) {
        self.held = Some(value);
    }

    /// Sets what runs when this body is finished.
    pub fn set_completion(&mut self, c: Box<dyn Completion>) {
        self.completion = Some(c);
    }

    fn done(&mut self, complete: bool) {
        self.ended = true;
        if let Some(c) = self.completion.take() {
            c.finish(BodyEnd {
                complete,
                bytes: self.sent,
                stalled: self.stalled,
                grpc_status: self.grpc_status,
            });
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = ready!(match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(_, first @ Some(_)) => {
                Poll::Ready(first.take().map(|f| Ok(f.into_frame())))
            }
            Kind::Stream(inner, None) => Pin::new(inner).poll_frame(cx),
            Kind::Boxed(inner) => Pin::new(inner).poll_frame(cx),
            Kind::File(region) => Poll::Ready(region.read().map(|r| r.map(Frame::data))),
        });
        match polled {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                } else if let Some(t) = frame.trailers_ref() {
                    this.grpc_status = grpc_status(t);
                }
                if this.is_end_stream_inner() {
                    this.done(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.done(false);
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.done(true);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.is_end_stream_inner()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Stream(inner, None) => inner.size_hint(),
            Kind::Stream(inner, Some(first)) => {
                let n = match first {
                    Ahead::Data(d) => d.len() as u64,
                    Ahead::Trailers(_) => 0,
                };
                let rest = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + n);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + n);
                }
                hint
            }
            Kind::Boxed(inner) => inner.size_hint(),
            Kind::File(region) => SizeHint::with_exact(region.left),
        }
    }
}

impl ResponseBody {
    fn is_end_stream_inner(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Stream(inner, first) => first.is_none() && inner.is_end_stream(),
            Kind::Boxed(inner) => inner.is_end_stream(),
            Kind::File(region) => region.left == 0,
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.completion.is_some() {
            // Unpolled but already finished (HEAD, 204, empty body) counts as complete.
            let complete = self.is_end_stream_inner();
            self.done(complete);
        }
    }
}
