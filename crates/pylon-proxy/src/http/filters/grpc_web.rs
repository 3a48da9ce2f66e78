//! The gRPC-Web filter, on routes with `grpc_web = true`: browsers'
//! `application/grpc-web(+proto)` and `application/grpc-web-text` (base64) requests
//! become native gRPC to the upstream (phase 4: head and body), and the answer comes
//! back as gRPC-Web (phase 5): messages as they stream, the trailers encoded as a final
//! frame in the body (flag 0x80), all base64 for `-text`. CORS preflights for the
//! route's `cors_allow_origins` are answered in phase 3, and answers (proxy-made errors
//! included) carry the CORS headers a browser needs to read the status.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use std::sync::Arc;

use crate::conn::ClientBody;
use http::request::Parts;
use pylon_config::model::Action;

use super::{Filter, FilterCtx};
use crate::http::body::{BoxError, RequestBody, RequestPayload, ResponseBody};
use crate::http::error::ErrorKind;

pub(super) fn build(site: &super::FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    let route = site.route;
    match &route.action {
        Action::Proxy(p) if p.grpc_web => Some(Arc::new(GrpcWebFilter {
            allowed: p.cors_allow_origins.clone(),
        })),
        _ => None,
    }
}

struct GrpcWebFilter {
    /// `cors_allow_origins`.
    allowed: Vec<String>,
}

/// A gRPC-Web call in progress: how its client talks, and the origin its answers name.
#[derive(Clone)]
struct WebCall {
    web: GrpcWeb,
    origin: Option<HeaderValue>,
}

impl Filter for GrpcWebFilter {
    fn name(&self) -> &'static str {
        "grpc_web"
    }

    fn request(
        &self,
        req: &mut Request<ClientBody>,
        cx: &mut FilterCtx<'_>,
    ) -> Result<Option<Response<ResponseBody>>, ErrorKind> {
        if is_preflight(req) {
            return preflight(req.headers(), &self.allowed).map(Some);
        }
        if let Some(web) = detect(req.headers()) {
            let origin = allowed_origin(req.headers(), &self.allowed);
            cx.state.insert(WebCall { web, origin });
        }
        Ok(None)
    }

    fn upstream_head(&self, head: &mut Parts, cx: &mut FilterCtx<'_>) {
        if let Some(call) = cx.state.get::<WebCall>() {
            call.web.upstream_headers(&mut head.headers);
        }
    }

    fn request_body(
        &self,
        body: RequestPayload,
        cx: &mut FilterCtx<'_>,
    ) -> Result<RequestPayload, ErrorKind> {
        if !cx.state.get::<WebCall>().is_some_and(|c| c.web.text) {
            return Ok(body);
        }
        // gRPC-Web text: the body arrives in base64.
        Ok(match body {
            RequestPayload::Replay(b) => RequestPayload::Replay(
                BASE64
                    .decode(
                        b.iter()
                            .filter(|c| !c.is_ascii_whitespace())
                            .copied()
                            .collect::<Vec<u8>>(),
                    )
                    .map(Bytes::from)
                    .map_err(|_| ErrorKind::MalformedRequest)?,
            ),
            RequestPayload::Stream(inner) => RequestPayload::Stream(inner.map(|b| {
                RequestBody::Boxed(http_body_util::combinators::BoxBody::new(
                    TextRequestBody::new(b),
                ))
            })),
        })
    }

    fn response(&self, resp: &mut Response<ResponseBody>, cx: &mut FilterCtx<'_>) {
        if let Some(call) = cx.state.get::<WebCall>() {
            call.web.response(resp, call.origin.clone());
        }
    }

    fn error_answer(&self, resp: &mut Response<ResponseBody>, state: &http::Extensions) {
        // A proxy-made gRPC error to a gRPC-Web call from an allowed origin gets the
        // same CORS headers as an upstream's answer, without which the browser hides
        // `grpc-status` from the page.
        if let Some(origin) = state.get::<WebCall>().and_then(|c| c.origin.clone()) {
            cors_headers(resp.headers_mut(), origin);
        }
    }
}

/// How a gRPC-Web client talks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GrpcWeb {
    /// `application/grpc-web-text`: base64 both ways.
    text: bool,
    /// `+proto` (or another `+suffix`) was given.
    suffix: Option<&'static str>,
}

/// A gRPC-Web request, if this is one.
fn detect(headers: &HeaderMap) -> Option<GrpcWeb> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let ct = ct.split(';').next()?.trim().to_ascii_lowercase();
    let (text, rest) = if let Some(r) = ct.strip_prefix("application/grpc-web-text") {
        (true, r)
    } else if let Some(r) = ct.strip_prefix("application/grpc-web") {
        (false, r)
    } else {
        return None;
    };
    let suffix = match rest {
        "" => None,
        "+proto" => Some("+proto"),
        "+json" => Some("+json"),
        _ => return None,
    };
    Some(GrpcWeb { text, suffix })
}

/// Whether this is a CORS preflight (OPTIONS with `Access-Control-Request-Method`).
fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        && req.headers().contains_key(header::ORIGIN)
}

/// The allowed origin for this request (`*` or one of `allowed`), if any.
fn allowed_origin(headers: &HeaderMap, allowed: &[String]) -> Option<HeaderValue> {
    allow(headers.get(header::ORIGIN)?, allowed)
}

/// What `Access-Control-Allow-Origin` says to `origin`: `*` or the origin itself when
/// `allowed` has it.
fn allow(origin: &HeaderValue, allowed: &[String]) -> Option<HeaderValue> {
    let o = origin.to_str().ok()?;
    if allowed.iter().any(|a| a == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(o))
        .then(|| origin.clone())
}

/// The CORS headers that let a page read a gRPC-Web answer: its origin allowed, the
/// status headers exposed.
fn cors_headers(h: &mut HeaderMap, origin: HeaderValue) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin"),
    );
}

/// The answer to a CORS preflight: 204 with what a gRPC-Web client needs, or the
/// proxy-made 403 `cors_origin_denied` when the origin is not allowed.
fn preflight(headers: &HeaderMap, allowed: &[String]) -> Result<Response<ResponseBody>, ErrorKind> {
    let mut resp = Response::new(ResponseBody::empty());
    let origin = allowed_origin(headers, allowed).ok_or(ErrorKind::CorsOriginDenied)?;
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    let requested = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or(HeaderValue::from_static(
            "content-type, x-grpc-web, x-user-agent, grpc-timeout",
        ));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    Ok(resp)
}

impl GrpcWeb {
    /// The upstream request's headers: native gRPC.
    fn upstream_headers(&self, h: &mut HeaderMap) {
        let ct = match self.suffix {
            Some("+proto") => "application/grpc+proto",
            Some("+json") => "application/grpc+json",
            _ => "application/grpc",
        };
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        if self.text {
            // The decoded body is shorter.
            h.remove(header::CONTENT_LENGTH);
        }
        h.remove("x-grpc-web");
    }

    /// The client's answer: gRPC-Web headers (CORS included) and body.
    fn response(
        &self,
        resp: &mut Response<ResponseBody>,
        request_headers_origin: Option<HeaderValue>,
    ) {
        let base = if self.text {
            "application/grpc-web-text"
        } else {
            "application/grpc-web"
        };
        let ct = match self.suffix {
            Some(s) => format!("{base}{s}"),
            None => base.to_owned(),
        };
        let headers = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&ct) {
            headers.insert(header::CONTENT_TYPE, v);
        }
        headers.remove(header::CONTENT_LENGTH);
        if let Some(origin) = request_headers_origin {
            cors_headers(headers, origin);
        }
        let inner = std::mem::replace(resp.body_mut(), ResponseBody::empty());
        *resp.body_mut() = ResponseBody::boxed(WebResponseBody {
            inner,
            text: self.text,
            carry: BytesMut::new(),
            done: false,
        });
    }
}

/// Encodes trailers as a gRPC-Web trailer frame: flag 0x80, length, `name:value\r\n`.
fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.push(b':');
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let mut out = BytesMut::with_capacity(5 + block.len());
    out.put_u8(0x80);
    out.put_u32(block.len() as u32);
    out.put_slice(&block);
    out.freeze()
}

/// The upstream's body as gRPC-Web: data as is (or base64), trailers as a last frame.
/// It reads the call through the gRPC body the upstream step made (`http/grpc.rs`:
/// `GrpcBody`), so deadlines, retired routes and stops end a gRPC-Web call with a
/// status, as they end a native one.
struct WebResponseBody {
    inner: ResponseBody,
    text: bool,
    /// `-text`: bytes not yet encoded (base64 works in groups of three).
    carry: BytesMut,
    done: bool,
}

impl WebResponseBody {
    fn encode(&mut self, data: &[u8], last: bool) -> Bytes {
        if !self.text {
            return Bytes::copy_from_slice(data);
        }
        self.carry.extend_from_slice(data);
        let whole = if last {
            self.carry.len()
        } else {
            self.carry.len() / 3 * 3
        };
        let chunk = self.carry.split_to(whole);
        Bytes::from(BASE64.encode(&chunk))
    }
}

impl Body for WebResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => {
                        let out = if this.text { this.encode(&d, false) } else { d };
                        if out.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    Err(frame) => {
                        let Ok(trailers) = frame.into_trailers() else {
                            continue;
                        };
                        this.done = true;
                        let block = trailer_frame(&trailers);
                        let out = if this.text {
                            this.encode(&block, true)
                        } else {
                            block
                        };
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.done = true;
                    if this.text && !this.carry.is_empty() {
                        let out = this.encode(&[], true);
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A `-text` request body decoded from base64 on the way (in groups of four).
struct TextRequestBody<B> {
    inner: B,
    carry: BytesMut,
}

impl<B> TextRequestBody<B> {
    fn new(inner: B) -> Self {
        TextRequestBody {
            inner,
            carry: BytesMut::new(),
        }
    }
}

impl<B> Body for TextRequestBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(d) = frame.into_data() else { continue };
                    this.carry
                        .extend(d.iter().filter(|b| !b.is_ascii_whitespace()));
                    let whole = this.carry.len() / 4 * 4;
                    if whole == 0 {
                        continue;
                    }
                    let chunk = this.carry.split_to(whole);
                    return Poll::Ready(Some(
                        BASE64
                            .decode(&chunk)
                            .map(|v| Frame::data(Bytes::from(v)))
                            .map_err(|e| Box::new(e) as BoxError),
                    ));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None if this.carry.is_empty() => return Poll::Ready(None),
                None => {
                    return Poll::Ready(Some(Err("gRPC-Web text body is not whole base64".into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.carry.is_empty() && self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let d = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            detect(&h)
        };
        assert_eq!(
            d("application/grpc-web"),
            Some(GrpcWeb {
                text: false,
                suffix: None
            })
        );
        assert_eq!(
            d("application/grpc-web-text+proto"),
            Some(GrpcWeb {
                text: true,
                suffix: Some("+proto")
            })
        );
        assert_eq!(d("application/grpc"), None);
        assert_eq!(d("application/grpc-web+thrift"), None);
    }

    #[test]
    fn trailers_become_a_final_frame() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        let f = trailer_frame(&t);
        assert_eq!(&f[..], b"\x80\x00\x00\x00\x0fgrpc-status:0\r\n");
    }
}
