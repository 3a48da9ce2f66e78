//! The body of a request on its way to an upstream: streamed frame by frame from the
//! client (metered against the listener's body limit), kept whole for replay, or
//! transformed; what every upstream connection (HTTP/1.1, HTTP/2, health checks) sends.
//! And the body of an upstream's answer, from either kind of connection.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a request body has done so far; shared with the pipeline for the access log
/// and to tell a body-limit abort from an upstream failure.
#[derive(Debug, Default)]
pub struct RequestMeter {
    pub bytes: AtomicU64,
    pub too_large: AtomicBool,
    pub client_error: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// A request body on its way to an upstream.
pub enum RequestBody {
    Empty,
    /// A small body kept in memory (so that a retry can send it again).
    Full(Option<Bytes>),
    /// A transformed body (gRPC-Web text decoding).
    Boxed(http_body_util::combinators::BoxBody<Bytes, BoxError>),
    Stream {
        inner: crate::conn::ClientBody,
        limit: u64,
        meter: Arc<RequestMeter>,
        /// The frames carry the chunked framing as it came (see
        /// [`RequestBody::pass_chunked`]): the body's limit is held by its decoder,
        /// and the bytes counted include the framing.
        passed: bool,
    },
}

impl RequestBody {
    /// A client's chunked HTTP/1.1 body, untransformed, goes to an HTTP/1.1 upstream
    /// with its framing as it came instead of re-chunked: from now on its frames carry
    /// that framing. The bytes to write before them, or `None` when this body cannot
    /// be passed through.
    pub fn pass_chunked(&mut self) -> Option<Bytes> {
        let RequestBody::Stream {
            inner: crate::conn::ClientBody::H1(b),
            passed,
            ..
        } = self
        else {
            return None;
        };
        let first = b.pass_chunked()?;
        *passed = true;
        Some(first)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Boxed(inner) => Pin::new(inner).poll_frame(cx),
            RequestBody::Stream {
                inner,
                limit,
                meter,
                passed,
            } => match ready!(Pin::new(inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let total = meter.bytes.fetch_add(data.len() as u64, Ordering::Relaxed)
                            + data.len() as u64;
                        if total > *limit && !*passed {
                            meter.too_large.store(true, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*limit)))));
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Some(Err(e)) => {
                    meter.client_error.store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err(e)))
                }
                None => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full(b) => b.is_none(),
            RequestBody::Boxed(inner) => inner.is_end_stream(),
            RequestBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RequestBody::Boxed(inner) => inner.size_hint(),
            RequestBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// An upstream's answer body: read inline from an HTTP/1.1 connection, or a stream of
/// an HTTP/2 one. (Kept small: it is moved with its response through every layer of
/// the request path, so the rare HTTP/3 body is boxed.)
pub enum UpstreamBody {
    H1(super::h1::H1Body),
    H2(Incoming),
    H3(Box<super::h3::H3Body>),
}

impl UpstreamBody {
    /// An HTTP/1.1 chunked body's frames carry its framing from now on, for a writer
    /// that forwards it as it came: the bytes to write first, or `None` when this body
    /// cannot be passed through.
    pub fn pass_chunked(&mut self) -> Option<Bytes> {
        match self {
            UpstreamBody::H1(b) => b.pass_chunked(),
            UpstreamBody::H2(_) | UpstreamBody::H3(_) => None,
        }
    }

    /// After a 101 from an HTTP/1.1 upstream: its connection, for a tunnel.
    pub fn into_upgraded(self) -> Option<super::h1::Prefixed<crate::tls::upstream::UpstreamIo>> {
        match self {
            UpstreamBody::H1(b) => b.into_upgraded(),
            UpstreamBody::H2(_) | UpstreamBody::H3(_) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::H2(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
            UpstreamBody::H3(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
            UpstreamBody::H3(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
            UpstreamBody::H3(b) => b.size_hint(),
        }
    }
}
