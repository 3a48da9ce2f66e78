//! THE request path. Every protocol's server hands its `http::Request` to [`handle`]:
//!
//! 0. runtime snapshot (ArcSwap load), fixed for this request
//! 1. request id and limits (URI, header count and bytes, declared body size, Host)
//! 2. router → action (proxy, respond, redirect)
//! 3. the route's filters on the request (`http/filters/`; may answer)
//! 4. upstream request: filters on the head and body, balancer → pool → send, retries
//!    (`http/proxy.rs`)
//! 5. response: head checked, filters on the answer; then [`finish`], the one finaliser
//!    of every answer (stats, request id, access-log record)
//! 6. on body end: upstream connection back to its pool, access log, metrics
//!
//! `docs/LIFECYCLE.md` lists these phases with file paths.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use crate::conn::ClientBody;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use pylon_config::model::{Action, RespondAction};

use super::body::{Completion, RequestMeter, ResponseBody};
use super::error::{ErrorKind, error_response};
use super::headers::protocol_name;
use super::router::normalize_host;
use crate::cluster::{EndpointLease, Pooled};
use crate::conn::{ConnState, InFlight};
use crate::observe::access_log::millis;
use crate::observe::stats::{ListenerStats, RouteStats};
use crate::observe::timing::Timing;
use crate::observe::{AccessLogger, AccessRecord};
use crate::runtime::{ListenerRuntime, Runtime};
use crate::shared::Shared;
use crate::tls::server::ClientIdentity;

/// A request that came in early data (0-RTT), which an attacker could replay: only safe
/// methods go on (phase 1 refuses the others with 425), forwarded with `Early-Data: 1`.
#[derive(Debug, Clone, Copy)]
pub struct EarlyData;

/// What a listener's connections share, made once for its accept loop: each
/// connection holds one reference to it, where it held one to each of these (a
/// reference taken and given back is an atomic read-modify-write apiece, some 9 ns).
/// A [`ConnCtx`] reads these fields as its own (`Deref`).
pub struct ListenerCtx {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub listener: Arc<str>,
    pub scheme: &'static str,
    /// `Alt-Svc` for answers on a TCP listener whose HTTP/3 is advertised.
    pub alt_svc: Option<HeaderValue>,
    pub shared: Arc<Shared>,
    /// The listener's traffic counters.
    pub stats: Arc<ListenerStats>,
}

/// What a connection's requests share: its listener's ([`ListenerCtx`], read through
/// `Deref`) and its own.
pub struct ConnCtx {
    pub on: Arc<ListenerCtx>,
    pub client: SocketAddr,
    /// The address the client reached (from a PROXY header, else the socket's; for a
    /// wildcard bind, the socket's only when some cluster sends PROXY headers).
    pub local: SocketAddr,
    /// The client's IP as a header value, made once per connection.
    pub client_ip: HeaderValue,
    /// The verified client certificate, on TLS listeners that ask for one.
    pub client_cert: Option<Arc<ClientIdentity>>,
    /// What TLS negotiated, on TLS listeners with clusters that send PROXY v2 headers.
    pub tls: Option<Arc<crate::l4::proxy_protocol::TlsInfo>>,
    pub state: Arc<ConnState>,
    /// The response timeouts of an HTTP/1.1 connection's requests, on one timer
    /// (`conn::ResponseTimer`); let go when the connection's task ends.
    pub response_timer: crate::conn::ResponseTimer,
    /// Counts the client connection as open (graceful stop waits for it, the
    /// connection limits count it) for as long as anything holds it: the connection's
    /// task, and a tunnel that outlives the HTTP/1.1 connection it was upgraded from.
    pub guard: Option<Arc<crate::listener::ConnGuard>>,
    /// The client's TCP socket (a duplicate handle), on cleartext listeners with a
    /// route that has `abort_on_client_close`: watched for the client's FIN while its
    /// request waits for the upstream (the HTTP/1.1 parser reads nothing then).
    pub client_socket: Option<Arc<std::net::TcpStream>>,
    /// The TLS (or QUIC) handshake's time in nanoseconds, until the connection's first
    /// request takes it for its timing breakdown; 0 then, or without TLS.
    pub handshake_ns: std::sync::atomic::AtomicU64,
}

impl std::ops::Deref for ConnCtx {
    type Target = ListenerCtx;

    fn deref(&self) -> &ListenerCtx {
        &self.on
    }
}

impl ConnCtx {
    /// A client IP as the header value forwarding headers carry.
    pub fn ip_value(ip: std::net::IpAddr) -> HeaderValue {
        match ip {
            // Written digit by digit: one per connection, where `to_string` went through
            // the formatting machinery and a growing string (about 1,500 instructions).
            std::net::IpAddr::V4(a) => {
                let mut text = [0u8; 15];
                let mut len = 0;
                for (i, octet) in a.octets().into_iter().enumerate() {
                    if i > 0 {
                        text[len] = b'.';
                        len += 1;
                    }
                    if octet >= 100 {
                        text[len] = b'0' + octet / 100;
                        len += 1;
                    }
                    if octet >= 10 {
                        text[len] = b'0' + octet / 10 % 10;
                        len += 1;
                    }
                    text[len] = b'0' + octet % 10;
                    len += 1;
                }
                HeaderValue::from_bytes(&text[..len])
            }
            std::net::IpAddr::V6(_) => HeaderValue::from_str(&ip.to_string()),
        }
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }

    /// The handshake's time, for the connection's first request only.
    fn take_handshake(&self) -> Option<Duration> {
        if self.handshake_ns.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let ns = self.handshake_ns.swap(0, Ordering::Relaxed);
        (ns != 0).then(|| Duration::from_nanos(ns))
    }

    /// Resolves once the client has ended its sending side (a FIN before any further
    /// byte); never when it cannot be watched or sends more (pipelining).
    pub async fn client_closed(&self) {
        let watched = self.client_socket.as_deref().and_then(|s| {
            let dup = s.try_clone().ok()?;
            dup.set_nonblocking(true).ok()?;
            tokio::net::TcpStream::from_std(dup).ok()
        });
        if let Some(s) = watched {
            let mut byte = [0u8; 1];
            if matches!(s.peek(&mut byte).await, Ok(0) | Err(_)) {
                return;
            }
        }
        std::future::pending::<()>().await;
    }
}

/// One request on its way through the phases, in parts each with one job.
pub(super) struct Exchange {
    /// What its access-log line will say (phases 0 to 5 fill it; [`finish`] makes the
    /// one record from it).
    pub(super) log: RequestLog,
    /// What it holds on the upstream side until its response body ends (phase 4).
    pub(super) held: UpstreamHold,
    /// What the route that took it keeps (phase 2 on).
    pub(super) routed: Routed,
    /// Counts it active on its listener until its response body ends.
    active: Option<ActiveRequest>,
}

/// The fields of a request's access-log line, gathered along the path.
pub(super) struct RequestLog {
    pub(super) start: Instant,
    pub(super) method: String,
    pub(super) authority: String,
    pub(super) path: String,
    pub(super) version: Version,
    pub(super) route: Option<Arc<str>>,
    /// Kept only when [`RequestLog::recorded`] (a clone and its drop of a shared name
    /// are two atomic read-modify-writes).
    pub(super) cluster: Option<Arc<str>>,
    /// A record will be made of the request: an access-log line or a trace span.
    pub(super) recorded: bool,
    pub(super) upstream: Option<SocketAddr>,
    /// From the last try's start to the upstream's response head.
    pub(super) upstream_time: Option<Duration>,
    /// As a header value: sent upstream and back to the client as it is.
    pub(super) request_id: Option<HeaderValue>,
    pub(super) error: Option<ErrorKind>,
    /// The forward-proxy user.
    pub(super) user: Option<Arc<str>>,
    pub(super) user_agent: Option<String>,
    pub(super) referer: Option<String>,
    /// A CONNECT tunnel takes the record, to write it when the tunnel ends.
    pub(super) tunnel: Option<TunnelLog>,
    /// Where its time went.
    pub(super) timing: Timing,
    /// From its arrival to its last upstream try's start.
    pub(super) upstream_start: Option<Duration>,
    /// Its place in its trace, and the tracer that makes its spans, when the
    /// configuration traces.
    pub(super) trace: Option<crate::observe::trace::TraceCtx>,
    tracer: Option<Arc<crate::observe::trace::Tracer>>,
}

/// Where a tunnel finds its request's access-log record when it ends.
pub(super) type TunnelLog = Arc<std::sync::Mutex<Option<Box<AccessRecord>>>>;

impl RequestLog {
    fn new(version: Version) -> RequestLog {
        RequestLog {
            start: Instant::now(),
            method: String::new(),
            authority: String::new(),
            path: String::new(),
            version,
            route: None,
            cluster: None,
            recorded: false,
            upstream: None,
            upstream_time: None,
            request_id: None,
            error: None,
            user: None,
            user_agent: None,
            referer: None,
            tunnel: None,
            timing: Timing::default(),
            upstream_start: None,
            trace: None,
            tracer: None,
        }
    }

    /// The access-log record: the one place a record is made. (Its wall-clock time is
    /// read here, for the requests that are logged or traced, not for every request.)
    pub(super) fn record(&mut self, ctx: &ConnCtx, status: u16) -> AccessRecord {
        let since = self.start.elapsed();
        AccessRecord {
            time: SystemTime::now()
                .checked_sub(since)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            listener: Arc::clone(&ctx.listener),
            client: ctx.client,
            method: std::mem::take(&mut self.method),
            authority: std::mem::take(&mut self.authority),
            path: std::mem::take(&mut self.path),
            protocol: protocol_name(self.version),
            status,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0.0,
            route: self.route.take(),
            cluster: self.cluster.take(),
            upstream: self.upstream,
            upstream_ms: self.upstream_time.map(millis),
            request_id: self
                .request_id
                .take()
                .and_then(|v| v.to_str().ok().map(str::to_owned)),
            client_cert: ctx.client_cert.as_ref().map(|c| c.subject.clone()),
            user: self.user.take(),
            error: self.error.map(ErrorKind::as_str),
            user_agent: self.user_agent.take(),
            referer: self.referer.take(),
            grpc_status: None,
            closed_by: None,
            timing: self.timing,
        }
    }
}

/// Requests rejected by the HTTP/1.1 parser before they were requests (hyper answers
/// them): counted, and logged through the same record as every answer.
pub(super) fn log_rejected(ctx: &ConnCtx, kind: ErrorKind) {
    let status = kind.status().as_u16();
    ctx.shared.metrics.error(kind);
    ctx.shared.metrics.response(status);
    if ctx.shared.logger.enabled() {
        let mut log = RequestLog::new(Version::HTTP_11);
        log.error = Some(kind);
        ctx.shared.logger.log(Box::new(log.record(ctx, status)));
    }
}

/// What a request holds on the upstream side until its response body ends.
#[derive(Default)]
pub(super) struct UpstreamHold {
    /// The request body's progress (bytes, limit crossed, client failure).
    pub(super) meter: Option<Arc<RequestMeter>>,
    /// The upstream connection (HTTP/1.1) or stream (HTTP/2) lent to this exchange.
    pub(super) pooled: Option<Pooled>,
    /// The endpoint, counted in flight.
    pub(super) lease: Option<EndpointLease>,
    /// How a gRPC call's body ended when Pylon ended it (deadline, retired route,
    /// stop): known only at the body's end.
    pub(super) ended_by: Option<Arc<std::sync::OnceLock<ErrorKind>>>,
}

/// What the route that took a request keeps for it.
#[derive(Default)]
pub(super) struct Routed {
    /// The route's stats.
    pub(super) stats: Option<Arc<RouteStats>>,
    /// The answer carries the timing breakdown in `Server-Timing`.
    pub(super) server_timing: bool,
}

/// Serves one request. Never fails: every problem becomes a proxy-made answer.
/// (`ctx` borrowed: a clone for each request and its drop were two atomic
/// read-modify-writes.)
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
pub fn handle(
    req: Request<ClientBody>,
    ctx: &Arc<ConnCtx>,
) -> impl Future<Output = Response<ResponseBody>> + '_ {
    // (Not an `async fn`, which would keep `req` twice in its state, captured and moved
    // into its body: the state is copied into every request's future.)
    async move {
        let multiplexed = super::headers::multiplexed(req.version());
        let mut log = RequestLog::new(req.version());
        if !multiplexed {
            log.timing.request_head_ms = ctx.state.head_read_time(log.start);
        }
        log.timing.client_tls_ms = ctx.take_handshake();
        let inflight = ctx.state.request_started(multiplexed);
        let rt = ctx.runtime.load_full();
        let mut ex = Exchange {
            log,
            held: UpstreamHold::default(),
            routed: Routed::default(),
            active: None,
        };
        let Some(listener) = rt.listener_ref(&ctx.listener) else {
            ex.log.error = Some(ErrorKind::NoRoute);
            return finish(
                error_response(ErrorKind::NoRoute),
                &mut ex,
                ctx,
                None,
                inflight,
            );
        };
        ex.active = Some(ActiveRequest::new(&listener.stats));
        if let Some(t) = &rt.tracer {
            ex.log.trace = Some(t.begin(req.headers()));
            ex.log.tracer = Some(Arc::clone(t));
        }
        // The record's fields, for the access log and the trace span.
        if ctx.shared.logger.enabled() || ex.log.trace.is_some() {
            ex.log.recorded = true;
            ex.log.method = req.method().as_str().to_owned();
            ex.log.authority = authority_of(&req).unwrap_or_default().to_owned();
            ex.log.path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let text = |name| {
                req.headers()
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            ex.log.user_agent = text(header::USER_AGENT);
            ex.log.referer = text(header::REFERER);
        }
        // A gRPC client gets proxy-made errors as gRPC statuses (a browser's gRPC-Web call
        // with the CORS headers that let its page read them).
        let grpc = super::grpc::is_grpc(req.headers())
            .then(|| req.headers().get(header::CONTENT_TYPE).cloned())
            .flatten();
        // What the route's filters leave, for their part of an error answer.
        let mut filter_state = http::Extensions::new();
        let resp = match serve(req, listener, ctx, &mut ex, &mut filter_state).await {
            Ok(resp) => resp,
            Err(kind) => {
                ex.log.error = Some(kind);
                let mut resp = match &grpc {
                    Some(ct) => super::grpc::error_response(kind, Some(ct)),
                    None => error_response(kind),
                };
                // The route's filters add their part (a gRPC-Web call's CORS headers, a
                // stale answer); a forward proxy's, theirs.
                let route = ex
                    .log
                    .route
                    .as_deref()
                    .and_then(|r| listener.router.route_named(r));
                let filters = match (&listener.forward, route) {
                    (Some(fwd), _) => Some(fwd.filters()),
                    (None, Some(route)) => Some(&route.filters),
                    (None, None) => None,
                };
                if let Some(filters) = filters {
                    filters.error_answer(&mut resp, &filter_state);
                }
                resp
            }
        };
        finish(resp, &mut ex, ctx, Some(listener), inflight)
    }
}

/// The request's authority: `:authority` / absolute-form, else `Host`.
fn authority_of<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// Phase 1: limits on what the client sent.
fn check_limits<B>(req: &Request<B>, l: &ListenerRuntime) -> Result<(), ErrorKind> {
    // Early data can be replayed by an attacker: only safe methods go on (RFC 8470).
    if req.extensions().get::<EarlyData>().is_some() && !req.method().is_safe() {
        return Err(ErrorKind::TooEarly);
    }
    let limits = &l.config.limits;
    let uri = req.uri();
    let uri_len = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + 3)
        + uri.scheme_str().map_or(0, str::len);
    if uri_len > limits.max_uri_bytes {
        return Err(ErrorKind::UriTooLong);
    }
    let headers = req.headers();
    if headers.len() > limits.max_headers {
        return Err(ErrorKind::TooManyHeaders);
    }
    let mut bytes = req.method().as_str().len() + uri_len + 12;
    for (name, value) in headers {
        bytes += name.as_str().len() + value.len() + 4;
    }
    if bytes > limits.max_header_bytes {
        return Err(ErrorKind::HeadersTooLarge);
    }
    // An HTTP/1.x head was held to the Host, framing and target rules as it was parsed
    // (`pylon_h1::parse_request`, the only reader of HTTP/1.x requests): checking them
    // again cost about 1,000 instructions per request. HTTP/2 and HTTP/3 requests get
    // one `Host`, a plain authority.
    let host = if req.version() > Version::HTTP_11 {
        let mut hosts = headers.get_all(header::HOST).iter();
        let host = hosts.next();
        if hosts.next().is_some() {
            return Err(ErrorKind::MalformedRequest);
        }
        host
    } else {
        None
    };
    if let Some(cl) = headers.get(header::CONTENT_LENGTH) {
        let declared =
            pylon_h1::content_length(cl.as_bytes()).ok_or(ErrorKind::MalformedRequest)?;
        if declared > limits.max_request_body {
            return Err(ErrorKind::BodyTooLarge);
        }
    }
    if let Some(host) = host
        && !pylon_h1::valid_host(host.as_bytes())
    {
        return Err(ErrorKind::MalformedRequest);
    }
    Ok(())
}

/// The answer for a chunked body that broke its framing or its size limit.
pub(super) fn violation_kind(v: crate::conn::ChunkViolation) -> ErrorKind {
    match v {
        crate::conn::ChunkViolation::Malformed => ErrorKind::MalformedRequest,
        crate::conn::ChunkViolation::TooLarge => ErrorKind::BodyTooLarge,
    }
}

#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
fn serve<'a>(
    mut req: Request<ClientBody>,
    listener: &'a ListenerRuntime,
    ctx: &'a Arc<ConnCtx>,
    ex: &'a mut Exchange,
    filter_state: &'a mut http::Extensions,
) -> impl Future<Output = Result<Response<ResponseBody>, ErrorKind>> + 'a {
    // (Not an `async fn`: see `handle`.)
    async move {
        if let Some(name) = &listener.request_id {
            ex.log.request_id = match req.headers().get(name) {
                Some(id) if !id.is_empty() && id.to_str().is_ok() => Some(id.clone()),
                _ => HeaderValue::try_from(ctx.shared.request_ids.next()).ok(),
            };
        }
        // A chunked body that broke its framing (or its limit) in the bytes read with its
        // head (`conn::Wire::check_buffered`): refused before anything is forwarded.
        if let Some(v) = ctx.state.chunk_violation() {
            return Err(violation_kind(v));
        }
        check_limits(&req, listener)?;
        // An ACME HTTP-01 challenge an order of this process is waiting on, before routing.
        if let Some(answer) = ctx.shared.tls.acme.challenges.http01_answer(&req) {
            return Ok(answer);
        }
        if let Some(fwd) = &listener.forward {
            return Box::pin(super::forward::serve(
                req,
                fwd,
                listener,
                ctx,
                ex,
                filter_state,
            ))
            .await;
        }
        // A tunnel is only a forward proxy's to open; an extended CONNECT (RFC 8441,
        // `:protocol`) is a WebSocket handshake and goes to its route.
        if req.method() == http::Method::CONNECT
            && req.extensions().get::<hyper::ext::Protocol>().is_none()
        {
            return Err(ErrorKind::ConnectNotAllowed);
        }
        // Routes that match on a token's claims: the token is verified first (once; the
        // route's auth filter reuses the verdict).
        let claims = match listener.router.claim_policies() {
            [] => None,
            policies => Some(Box::pin(super::filters::auth::routing_claims(policies, &req)).await),
        };
        let host = normalize_host(authority_of(&req).unwrap_or(""));
        let route = listener
            .router
            .find_claimed(
                &host,
                req.uri().path(),
                req.method(),
                req.headers(),
                ctx.client_cert.as_deref(),
                claims.as_ref(),
            )
            .ok_or(ErrorKind::NoRoute)?;
        if let Some(c) = claims {
            req.extensions_mut().insert(c);
        }
        ex.log.route = Some(Arc::clone(&route.name));
        ex.routed.stats = Some(Arc::clone(&route.stats));
        match route.action() {
            Action::Proxy(p) if p.server_timing => ex.routed.server_timing = true,
            _ => {}
        }
        // An extended CONNECT here is a WebSocket over HTTP/2 or HTTP/3: it opens a tunnel
        // or is refused. A route that answers itself would send a 2xx, which the client
        // takes for an open tunnel.
        if req.method() == http::Method::CONNECT && !matches!(route.action(), Action::Proxy(_)) {
            return Err(ErrorKind::WebSocketDisabled);
        }
        match route.action() {
            Action::Respond(r) => Ok(respond(r)),
            Action::Redirect(r) => {
                let fx = super::filters::FilterCtx {
                    conn: ctx,
                    conn_arc: ctx,
                    listener,
                    request_id: ex.log.request_id.clone(),
                    client_authority: authority_of(&req)
                        .and_then(|a| HeaderValue::from_str(a).ok()),
                    state: filter_state,
                    user: None,
                    endpoint: None,
                    trace: ex.log.trace.clone(),
                };
                let location =
                    super::filters::rules::render_request(&r.location, &req, &fx, &route.name);
                redirect(r.status, &location)
            }
            Action::Files(f) => super::files::serve(f, &req).await,
            Action::Proxy(_) => {
                let mut fx = super::filters::FilterCtx {
                    conn: ctx,
                    conn_arc: ctx,
                    listener,
                    request_id: ex.log.request_id.clone(),
                    client_authority: match req.uri().authority() {
                        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
                        None => req.headers().get(header::HOST).cloned(),
                    },
                    state: filter_state,
                    user: None,
                    endpoint: None,
                    trace: ex.log.trace.clone(),
                };
                super::proxy::proxy(req, route, &mut fx, ex).await
            }
        }
    }
}

fn respond(r: &RespondAction) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(Bytes::from(r.body.clone())));
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    for (k, v) in &r.headers {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

/// The redirect's answer to `location` (its template rendered for the request); one
/// that the request's parts made invalid is the proxy-made 500
/// `redirect_location_invalid`.
fn redirect(status: u16, location: &str) -> Result<Response<ResponseBody>, ErrorKind> {
    let value = HeaderValue::from_str(location).map_err(|_| ErrorKind::RedirectInvalid)?;
    let mut resp = Response::new(ResponseBody::full(Bytes::from(format!(
        "Redirecting to {location}\n"
    ))));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    resp.headers_mut().insert(header::LOCATION, value);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}

/// Phase 5 and 6: response headers, metrics, and what runs at the body's end. (The
/// exchange is borrowed, not moved in: it is large, and copied on every move.)
fn finish(
    mut resp: Response<ResponseBody>,
    ex: &mut Exchange,
    ctx: &ConnCtx,
    listener: Option<&ListenerRuntime>,
    inflight: InFlight,
) -> Response<ResponseBody> {
    let status = resp.status().as_u16();
    let metrics = &ctx.shared.metrics;
    metrics.response(status);
    let stats = ex
        .routed
        .stats
        .take()
        .or_else(|| listener.map(|l| Arc::clone(&l.unrouted)));
    if let Some(s) = &stats {
        s.response(status);
    }
    if let Some(kind) = ex.log.error {
        metrics.error(kind);
    }
    if let Some(l) = listener {
        let h = resp.headers_mut();
        if let (Some(name), Some(id)) = (&l.request_id, &ex.log.request_id) {
            h.insert(name.clone(), id.clone());
        }
    }
    let logger = ctx
        .shared
        .logger
        .enabled()
        .then(|| ctx.shared.logger.clone());
    let traced = ex.log.tracer.is_some();
    // Read from the clock only for what reports it.
    let answered = if ex.routed.server_timing || logger.is_some() || traced {
        ex.log.start.elapsed()
    } else {
        Duration::ZERO
    };
    if ex.routed.server_timing {
        let steps = ex.log.timing.server_timing(ex.log.upstream_time, answered);
        if let Ok(v) = HeaderValue::try_from(steps) {
            resp.headers_mut()
                .append(header::HeaderName::from_static("server-timing"), v);
        }
    }
    // The listener's HTTP/3, advertised on its TCP answers (the client reaches Pylon,
    // so an upstream's own Alt-Svc would point it elsewhere).
    if let Some(alt_svc) = &ctx.alt_svc {
        resp.headers_mut().insert(header::ALT_SVC, alt_svc.clone());
    }
    let trace = match (ex.log.tracer.take(), ex.log.trace.take()) {
        (Some(tracer), Some(t)) => Some(Box::new(Traced {
            tracer,
            ctx: t,
            upstream_start: ex.log.upstream_start,
            upstream_time: ex.log.upstream_time,
        })),
        _ => None,
    };
    let mut record = (logger.is_some() || trace.is_some()).then(|| {
        let mut record = Box::new(ex.log.record(ctx, status));
        record.grpc_status = super::body::grpc_status(resp.headers());
        record
    });
    // A tunnel writes its line when it ends (tunnels are not traced: the record is
    // taken either way).
    if let Some(tunnel) = &ex.log.tunnel
        && let Some(r) = record.take()
        && logger.is_some()
    {
        *crate::lock(tunnel) = Some(r);
    }
    resp.body_mut().set_completion(Box::new(ExchangeEnd {
        start: ex.log.start,
        answered,
        _lease: ex.held.lease.take(),
        pooled: ex.held.pooled.take(),
        meter: ex.held.meter.take(),
        record,
        logger,
        trace,
        stats,
        ended_by: ex
            .held
            .ended_by
            .take()
            .map(|e| (e, Arc::clone(&ctx.shared.metrics))),
        _active: ex.active.take(),
        _inflight: inflight,
    }));
    resp
}

/// Runs when the response body is done: pool return, access-log line, in-flight count.
struct ExchangeEnd {
    start: Instant,
    /// When the answer's head was handed to the client (since `start`).
    answered: Duration,
    /// The endpoint stays counted in flight until the response body is done.
    _lease: Option<EndpointLease>,
    pooled: Option<Pooled>,
    meter: Option<Arc<RequestMeter>>,
    /// The request's record, for its access-log line and its trace span.
    record: Option<Box<AccessRecord>>,
    logger: Option<AccessLogger>,
    trace: Option<Box<Traced>>,
    stats: Option<Arc<RouteStats>>,
    /// A gRPC call Pylon may end itself, and where to count it.
    ended_by: Option<(
        Arc<std::sync::OnceLock<ErrorKind>>,
        Arc<crate::observe::Metrics>,
    )>,
    _active: Option<ActiveRequest>,
    _inflight: InFlight,
}

/// A traced request's span, made when it ends.
struct Traced {
    tracer: Arc<crate::observe::trace::Tracer>,
    ctx: crate::observe::trace::TraceCtx,
    upstream_start: Option<Duration>,
    upstream_time: Option<Duration>,
}

/// A request counted in its listener's active requests until dropped.
struct ActiveRequest(Arc<ListenerStats>);

impl ActiveRequest {
    fn new(stats: &Arc<ListenerStats>) -> Self {
        stats.request_started();
        ActiveRequest(Arc::clone(stats))
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

impl Completion for ExchangeEnd {
    fn finish(self: Box<Self>, end: super::body::BodyEnd) {
        let super::body::BodyEnd {
            complete,
            bytes,
            stalled,
            grpc_status,
        } = end;
        let this = *self;
        if let Some(s) = &this.stats {
            s.latency.observe(this.start.elapsed());
            if !complete {
                s.incomplete.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(p) = this.pooled
            && complete
        {
            p.release();
        }
        let ended_by = this.ended_by.and_then(|(e, metrics)| {
            let kind = e.get().copied()?;
            metrics.error(kind);
            Some(kind)
        });
        if let Some(mut record) = this.record {
            if let Some(kind) = ended_by {
                record.error = Some(kind.as_str());
            }
            record.bytes_out = bytes;
            if grpc_status.is_some() {
                record.grpc_status = grpc_status;
            }
            record.bytes_in = this.meter.map_or(0, |m| m.bytes.load(Ordering::Relaxed));
            let total = this.start.elapsed();
            record.duration_ms = millis(total);
            record.timing.response_ms = Some(total.saturating_sub(this.answered));
            if !complete && record.error.is_none() {
                record.error = Some(if stalled {
                    "send_timeout"
                } else {
                    "response_incomplete"
                });
            }
            if let Some(t) = this.trace {
                t.tracer.finish(
                    &t.ctx,
                    &record,
                    &crate::observe::trace::SpanFacts {
                        answered: this.answered,
                        upstream_start: t.upstream_start,
                        upstream_time: t.upstream_time,
                    },
                );
            }
            if let Some(logger) = this.logger {
                logger.log(record);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_ip_is_written_as_its_display_writes_it() {
        let ips = [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "127.0.0.1",
            "192.168.200.255",
            "255.255.255.255",
            "::1",
            "2001:db8::ff00:42:8329",
            "::ffff:10.0.0.1",
        ];
        for ip in ips {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ConnCtx::ip_value(ip).to_str().unwrap(), ip.to_string());
        }
        for n in 0..=255u8 {
            let ip = std::net::IpAddr::from([n, n / 2, n / 10, n % 10]);
            assert_eq!(ConnCtx::ip_value(ip).to_str().unwrap(), ip.to_string());
        }
    }

    #[test]
    fn a_redirect_answers_its_location_or_a_proxy_made_error() {
        let resp = redirect(308, "https://example.com/a?b=1").map_err(ErrorKind::as_str);
        let resp = resp
            .as_ref()
            .map(|r| (r.status(), r.headers().get(header::LOCATION)));
        assert_eq!(
            resp,
            Ok((
                StatusCode::PERMANENT_REDIRECT,
                Some(&HeaderValue::from_static("https://example.com/a?b=1"))
            ))
        );
        // Config validation keeps such templates out; were one to slip through (or a
        // request's parts make it invalid), the answer is a counted proxy-made error,
        // never a redirect without Location.
        assert_eq!(
            redirect(302, "https://x/\u{7f}").err(),
            Some(ErrorKind::RedirectInvalid)
        );
    }
}
