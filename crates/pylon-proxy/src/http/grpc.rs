//! gRPC on the request path: recognising gRPC requests, their `grpc-timeout` deadline,
//! and proxy-made errors answered the gRPC way (HTTP 200, trailers-only, `grpc-status`
//! mapped as gRPC's HTTP-to-gRPC table suggests), never as a plain-text page a gRPC
//! client cannot read.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::body::ResponseBody;
use super::error::ErrorKind;

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// gRPC status codes used for proxy-made errors.
pub mod code {
    pub const CANCELLED: u8 = 1;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
    pub const UNAUTHENTICATED: u8 = 16;
}

/// `content-type: application/grpc`, `application/grpc+proto`, gRPC-Web, ...
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The deadline a gRPC client set (`grpc-timeout`: up to 8 digits and a unit, H M S m
/// u n); `None` when absent or malformed.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl ErrorKind {
    /// The gRPC status a gRPC client gets for this proxy-made error.
    pub fn grpc_status(self) -> u8 {
        use ErrorKind::*;
        match self {
            NoRoute | ConnectNotAllowed | MethodNotAllowed => code::UNIMPLEMENTED,
            FileNotFound => code::NOT_FOUND,
            ResponseTimeout | DeadlineExceeded => code::DEADLINE_EXCEEDED,
            Overloaded | BodyTooLarge | RateLimited => code::RESOURCE_EXHAUSTED,
            ClientAborted => code::CANCELLED,
            ProxyAuthRequired | Unauthorized => code::UNAUTHENTICATED,
            Denied | WebSocketDisabled | CorsOriginDenied | AuthDenied | FileForbidden => {
                code::PERMISSION_DENIED
            }
            NoEndpoint | ConnectFailed | ConnectTimeout | UpstreamReset | UpstreamInvalid
            | UpstreamTls | UpgradeRefused | UpgradeInvalid | ResolveFailed | RouteRemoved
            | Shutdown | TooEarly | NotCached | RateLimitUnavailable | AuthUnavailable => {
                code::UNAVAILABLE
            }
            MalformedRequest | MissingHost | HeaderTimeout | SendTimeout | UriTooLong
            | HeadersTooLarge | TooManyHeaders | NotAProxyRequest | RedirectInvalid
            | PathRefused | UnsupportedEncoding => code::INTERNAL,
        }
    }
}

/// A proxy-made error as a gRPC answer: 200, `content-type: application/grpc`, and
/// `grpc-status`/`grpc-message` in the headers of an empty response (trailers-only).
pub fn error_response(
    kind: ErrorKind,
    content_type: Option<&HeaderValue>,
) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        content_type
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/grpc")),
    );
    h.insert(
        GRPC_STATUS.clone(),
        HeaderValue::from(u16::from(kind.grpc_status())),
    );
    // The reason is plain ASCII without spaces: no percent-encoding needed.
    h.insert(
        GRPC_MESSAGE.clone(),
        HeaderValue::from_static(kind.as_str()),
    );
    h.insert("x-pylon-error", HeaderValue::from_static(kind.as_str()));
    resp
}

/// A gRPC answer as it streams: when the call's deadline passes while messages are
/// still streaming, the upstream stream is dropped (reset) and the client gets trailers
/// with DEADLINE_EXCEEDED instead of a stream cut short; when a reload removed the
/// route and its grace period is over, the client gets UNAVAILABLE (and may retry).
pub struct GrpcBody {
    inner: crate::cluster::UpstreamBody,
    /// Set when Pylon ends the call itself, for the access log and the error counter.
    ended_by: Arc<std::sync::OnceLock<ErrorKind>>,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    retired: Option<std::pin::Pin<Box<dyn Future<Output = crate::life::EndCause> + Send + Sync>>>,
    done: bool,
}

impl GrpcBody {
    pub fn new(
        inner: crate::cluster::UpstreamBody,
        deadline: Option<std::time::Instant>,
        mut end: crate::life::Ending,
        ended_by: Arc<std::sync::OnceLock<ErrorKind>>,
    ) -> Self {
        GrpcBody {
            inner,
            ended_by,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
            retired: Some(Box::pin(async move { end.ended().await })),
            done: false,
        }
    }

    fn end(&mut self, kind: ErrorKind) -> http_body::Frame<bytes::Bytes> {
        self.done = true;
        let _ = self.ended_by.set(kind);
        let (code, message) = (kind.grpc_status(), kind.as_str());
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(code)));
        trailers.insert(GRPC_MESSAGE.clone(), HeaderValue::from_static(message));
        http_body::Frame::trailers(trailers)
    }
}

impl http_body::Body for GrpcBody {
    type Data = bytes::Bytes;
    type Error = super::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            if frame
                .as_ref()
                .is_none_or(|f| f.as_ref().is_ok_and(|f| f.is_trailers()))
            {
                this.done = true;
            }
            return Poll::Ready(frame);
        }
        if let Some(d) = &mut this.deadline
            && d.as_mut().poll(cx).is_ready()
        {
            tracing::info!("grpc call ended by the proxy at its deadline: DEADLINE_EXCEEDED");
            return Poll::Ready(Some(Ok(this.end(ErrorKind::DeadlineExceeded))));
        }
        if let Some(r) = &mut this.retired
            && let Poll::Ready(cause) = r.as_mut().poll(cx)
        {
            tracing::info!(
                reason = cause.as_str(),
                "grpc stream ended by the proxy: UNAVAILABLE"
            );
            let kind = match cause {
                crate::life::EndCause::RouteRemoved => ErrorKind::RouteRemoved,
                crate::life::EndCause::Shutdown => ErrorKind::Shutdown,
            };
            return Poll::Ready(Some(Ok(this.end(kind))));
        }
        Poll::Pending
    }

    /// A trailers-only answer (status in the headers, no body) ends with the headers
    /// (HEADERS with END_STREAM), as gRPC clients expect.
    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.is_end_stream() {
            http_body::SizeHint::with_exact(0)
        } else {
            http_body::SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let t = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(&GRPC_TIMEOUT, HeaderValue::from_str(v).unwrap());
            timeout(&h)
        };
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5n"), Some(Duration::from_nanos(5)));
        assert_eq!(t("123456789S"), None, "at most 8 digits");
        assert_eq!(t("10x"), None);
        assert_eq!(t("S"), None);
    }
}
