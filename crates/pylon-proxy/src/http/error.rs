//! Proxy-made errors: each kind has one status and one `x-pylon-error` reason, and
//! becomes a short plain-text answer.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::ResponseBody;

macro_rules! error_kinds {
    ($($variant:ident => ($status:expr, $reason:literal),)*) => {
        /// Why the proxy answered by itself.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorKind { $($variant,)* }

        impl ErrorKind {
            pub const ALL: [ErrorKind; [$(ErrorKind::$variant,)*].len()] = [$(ErrorKind::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();

            pub fn status(self) -> StatusCode {
                match self { $(ErrorKind::$variant => $status,)* }
            }

            /// The `x-pylon-error` value and access-log reason.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorKind::$variant => $reason,)* }
            }
        }
    };
}

error_kinds! {
    MalformedRequest => (StatusCode::BAD_REQUEST, "malformed_request"),
    MissingHost => (StatusCode::BAD_REQUEST, "missing_host"),
    HeaderTimeout => (StatusCode::REQUEST_TIMEOUT, "header_read_timeout"),
    SendTimeout => (StatusCode::REQUEST_TIMEOUT, "send_timeout"),
    UriTooLong => (StatusCode::URI_TOO_LONG, "uri_too_long"),
    HeadersTooLarge => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large"),
    TooManyHeaders => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too_many_headers"),
    BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
    ClientAborted => (StatusCode::BAD_REQUEST, "client_aborted"),
    NoRoute => (StatusCode::NOT_FOUND, "no_route"),
    NotAProxyRequest => (StatusCode::BAD_REQUEST, "not_a_proxy_request"),
    ProxyAuthRequired => (StatusCode::PROXY_AUTHENTICATION_REQUIRED, "proxy_auth_required"),
    Denied => (StatusCode::FORBIDDEN, "denied"),
    ResolveFailed => (StatusCode::BAD_GATEWAY, "destination_unresolved"),
    WebSocketDisabled => (StatusCode::FORBIDDEN, "websocket_disabled"),
    CorsOriginDenied => (StatusCode::FORBIDDEN, "cors_origin_denied"),
    RedirectInvalid => (StatusCode::INTERNAL_SERVER_ERROR, "redirect_location_invalid"),
    NoEndpoint => (StatusCode::SERVICE_UNAVAILABLE, "no_endpoint"),
    Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
    ConnectFailed => (StatusCode::BAD_GATEWAY, "upstream_connect_failed"),
    ConnectTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_connect_timeout"),
    ResponseTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_response_timeout"),
    DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
    UpstreamReset => (StatusCode::BAD_GATEWAY, "upstream_reset"),
    UpstreamInvalid => (StatusCode::BAD_GATEWAY, "upstream_invalid_response"),
    UpstreamTls => (StatusCode::BAD_GATEWAY, "upstream_tls_failed"),
    UpgradeRefused => (StatusCode::BAD_GATEWAY, "websocket_upgrade_refused"),
    UpgradeInvalid => (StatusCode::BAD_GATEWAY, "upstream_invalid_upgrade"),
    ConnectNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "connect_not_allowed"),
    RouteRemoved => (StatusCode::SERVICE_UNAVAILABLE, "route_removed"),
    Shutdown => (StatusCode::SERVICE_UNAVAILABLE, "drain_timeout"),
    TooEarly => (StatusCode::TOO_EARLY, "too_early"),
    // `Cache-Control: only-if-cached` and nothing stored that may answer (RFC 9111 §5.2.1.7).
    NotCached => (StatusCode::GATEWAY_TIMEOUT, "not_cached"),
    // A route's `auth`: no policy accepted the request's credentials.
    Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
    // An external authorization service refused the request with 403.
    AuthDenied => (StatusCode::FORBIDDEN, "auth_denied"),
    // An external authorization service failed or did not answer in time (and the
    // policy does not let requests through then).
    AuthUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable"),
    // A route's `rate_limit`: the key's bucket is empty.
    RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
    // A `files` route: a path that could leave the root (`..`, an encoded `/`, NUL).
    PathRefused => (StatusCode::BAD_REQUEST, "path_refused"),
    // A `files` route: a symbolic link out of the root, a directory without an index
    // (and no listing), or a file the process may not read.
    FileForbidden => (StatusCode::FORBIDDEN, "file_forbidden"),
    FileNotFound => (StatusCode::NOT_FOUND, "file_not_found"),
    // A route that decompresses request bodies got one in a coding it does not know.
    UnsupportedEncoding => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding"),
    // A `files` route takes GET and HEAD.
    MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    // A global rate limit with `on_error = "deny"` whose Redis failed or was too slow.
    RateLimitUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "rate_limit_unavailable"),
}

/// The answer for a proxy-made error: status, a one-line body and `x-pylon-error`.
pub fn error_response(kind: ErrorKind) -> Response<ResponseBody> {
    let status = kind.status();
    let body = format!(
        "{} {}: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        kind.as_str()
    );
    let mut resp = Response::new(ResponseBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert("x-pylon-error", HeaderValue::from_static(kind.as_str()));
    if matches!(
        kind,
        ErrorKind::MalformedRequest
            | ErrorKind::MissingHost
            | ErrorKind::HeadersTooLarge
            | ErrorKind::TooManyHeaders
            | ErrorKind::UriTooLong
            | ErrorKind::BodyTooLarge
            | ErrorKind::ClientAborted
            // The upstream switched protocols without the client's consent: neither
            // side of the exchange can go on.
            | ErrorKind::UpgradeInvalid
            // A CONNECT client may already be sending its tunnel's bytes.
            | ErrorKind::ConnectNotAllowed
    ) {
        // The rest of the connection cannot be trusted to be in sync.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if kind == ErrorKind::MethodNotAllowed {
        h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    if kind == ErrorKind::ConnectNotAllowed {
        // RFC 9110 §15.5.6: a 405 names the methods the target takes.
        h.insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"),
        );
    }
    resp
}
