//! Phases 3 to 5 of the request path for a route that proxies: the route's filters
//! (`http/filters/`), then the upstream steps of phase 4 in order (WebSocket upgrade,
//! gRPC deadline, the request body, sticky session and the balancer's pick, the send
//! with retries: bounded body replay, per-try timeout, backoff with jitter, another
//! endpoint, the cluster's retry budget; PROXY headers out), and phase 5: the
//! upstream's answer checked, a tunnel opened or the body streamed back through the
//! filters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::conn::ClientBody;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use pylon_config::model::{Action, HashKey, HostHeader, ProxyAction, Retry, UpstreamProtocol};

use super::body::{RequestBody, RequestMeter, RequestPayload, ResponseBody};
use super::error::ErrorKind;
use super::filters::FilterCtx;
use super::headers::{append_via, strip_hop_by_hop};
use super::pipeline::{ConnCtx, Exchange};
use super::router::RouteRuntime;
use crate::cluster::{
    ClientAddresses, ClusterRuntime, EndpointLease, EndpointPool, EndpointSet, Pooled, TryTiming,
    UpstreamBody, UpstreamError, hash_key,
};
use crate::runtime::ListenerRuntime;

/// One proxied request's upstream side, decided before the first try.
struct Call<'a> {
    conn: &'a ConnCtx,
    route: &'a RouteRuntime,
    action: &'a ProxyAction,
    cluster: &'a Arc<ClusterRuntime>,
    /// The hash-balancing key.
    key: Option<u64>,
    /// The gRPC call's deadline: it bounds the whole exchange, retries included.
    deadline: Option<Instant>,
    grpc: bool,
    /// One endpoint set for the whole request, retries included.
    endpoints: arc_swap::Guard<Arc<EndpointSet>>,
    /// The sticky session's endpoint.
    sticky_to: Option<usize>,
    downstream_version: Version,
    /// The client's authority as a header value (`Host`, or `:authority`).
    client_host: Option<HeaderValue>,
    /// The upstream path (after `prefix_rewrite`).
    path: PathAndQuery,
    websocket: Option<super::tunnel::WebSocket>,
}

/// Phases 3 to 5 for a proxy route. (Not an `async fn`, which would keep `req` twice in
/// its state, captured and moved into its body; the state is copied into every
/// request's future.)
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
pub(super) fn proxy<'a>(
    mut req: Request<ClientBody>,
    route: &'a RouteRuntime,
    fx: &'a mut FilterCtx<'_>,
    ex: &'a mut Exchange,
) -> impl Future<Output = Result<Response<ResponseBody>, ErrorKind>> + 'a {
    async move {
        let (Some(route_cluster), Action::Proxy(action)) = (&route.cluster, route.action()) else {
            return Err(ErrorKind::NoEndpoint);
        };
        if ex.log.recorded {
            ex.log.cluster = Some(Arc::clone(&route_cluster.name));
        }
        // Phase 3: the route's filters may answer by themselves, or choose the cluster.
        let answered = route.filters.request(&mut req, fx).await;
        if let Some(user) = fx.user.take() {
            ex.log.user = Some(user);
        }
        if let Some(answer) = answered? {
            return Ok(answer);
        }
        let chosen = fx
            .state
            .get::<super::filters::ChosenCluster>()
            .map(|c| Arc::clone(&c.0));
        let cluster = chosen.as_ref().unwrap_or(route_cluster);
        if ex.log.recorded && chosen.is_some() {
            ex.log.cluster = Some(Arc::clone(&cluster.name));
        }
        let websocket = websocket_step(&mut req, action)?;
        if websocket.is_some() && req.version() <= Version::HTTP_11 {
            fx.conn.state.upgrade_requested();
        }
        let grpc = super::grpc::is_grpc(req.headers());
        let endpoints = cluster.current_endpoints();
        let mut call = Call {
            conn: fx.conn,
            route,
            action,
            cluster,
            key: cluster
                .hash_key
                .as_ref()
                .and_then(|k| request_key(k, &req, fx)),
            deadline: grpc
                .then(|| super::grpc::timeout(req.headers()))
                .flatten()
                .map(|t| Instant::now() + t),
            grpc,
            sticky_to: cluster
                .sticky
                .as_ref()
                .and_then(|s| s.lookup(req.headers(), &endpoints.ids)),
            endpoints,
            downstream_version: req.version(),
            client_host: fx.client_authority.clone(),
            // Set from the head once the filters have seen it (a rewrite may change it).
            path: PathAndQuery::from_static("/"),
            websocket,
        };
        // Phase 4: the head every try shares, and the body.
        let (mut parts, incoming) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        super::headers::normalize_content_length(&mut parts.headers);
        parts.headers.remove(header::EXPECT);
        route.filters.upstream_head(&mut parts, fx);
        if let Some(p) = parts.uri.path_and_query() {
            call.path = p.clone();
        }
        let body = request_payload(incoming, cluster, fx, ex).await?;
        let body = route.filters.request_body(body, fx)?;
        let _active = if cluster.counts_requests() {
            Some(cluster.request_started().ok_or(ErrorKind::Overloaded)?)
        } else {
            None
        };
        let (result, lease) = send_with_retries(&call, parts, body, ex).await?;
        // Phase 5.
        answer(call, result, lease, fx, ex)
    }
}

/// A WebSocket handshake (HTTP/1.1 Upgrade or HTTP/2 extended CONNECT), when the
/// request is one and the route tunnels them.
fn websocket_step(
    req: &mut Request<ClientBody>,
    action: &ProxyAction,
) -> Result<Option<super::tunnel::WebSocket>, ErrorKind> {
    let websocket = super::tunnel::detect(req);
    if websocket.is_some() && !action.websocket {
        // An HTTP/1.1 Upgrade goes on as a plain request (hop-by-hop headers are
        // dropped); an extended CONNECT has no plain form.
        if req.method() == Method::CONNECT {
            return Err(ErrorKind::WebSocketDisabled);
        }
        return Ok(None);
    }
    Ok(websocket)
}

/// The request body as the tries get it: kept whole (for replay) when the cluster
/// retries and it is small enough, else streamed, metered against the body limit.
async fn request_payload(
    incoming: ClientBody,
    cluster: &ClusterRuntime,
    fx: &FilterCtx<'_>,
    ex: &mut Exchange,
) -> Result<RequestPayload, ErrorKind> {
    if http_body::Body::is_end_stream(&incoming) {
        return Ok(match cluster.retry {
            Some(_) => RequestPayload::Replay(Bytes::new()),
            None => RequestPayload::Stream(Some(RequestBody::Empty)),
        });
    }
    let limit = fx.listener.config.limits.max_request_body;
    let meter = Arc::new(RequestMeter::default());
    ex.held.meter = Some(Arc::clone(&meter));
    let declared = http_body::Body::size_hint(&incoming).exact();
    match &cluster.retry {
        Some(r) if declared.is_some_and(|n| n <= r.max_body_bytes.min(limit)) => {
            let collected = collect_small(incoming, r.max_body_bytes, &meter)
                .await
                .map_err(|kind| {
                    fx.conn
                        .state
                        .chunk_violation()
                        .map_or(kind, super::pipeline::violation_kind)
                })?;
            collected
                .map(RequestPayload::Replay)
                .ok_or(ErrorKind::MalformedRequest)
        }
        _ => Ok(RequestPayload::Stream(Some(RequestBody::Stream {
            inner: incoming,
            limit,
            meter,
            passed: false,
        }))),
    }
}

type Sent = Result<(Response<UpstreamBody>, Option<Pooled>), UpstreamError>;

/// Sends the request, trying again as the cluster's retry policy and budget allow;
/// the last try's outcome and the endpoint it went to.
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
fn send_with_retries<'a>(
    call: &'a Call<'_>,
    mut parts: Parts,
    mut body: RequestPayload,
    ex: &'a mut Exchange,
) -> impl Future<Output = Result<(Sent, EndpointLease), ErrorKind>> + 'a {
    async move {
        let cluster = call.cluster;
        let idempotent = idempotent(&parts.method);
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut attempt: u32 = 0;
        let mut retry_slot = None;
        loop {
            let more = cluster
                .retry
                .as_ref()
                .is_some_and(|r| attempt < r.max_retries && body.replayable());
            let mut lease = pick(call, attempt, &tried)?;
            if more {
                // Only a request that may be retried remembers where it went.
                tried.push(lease.endpoint().address);
            }
            let try_parts = if more {
                clone_parts(&parts)
            } else {
                // The last try takes the head itself.
                std::mem::replace(&mut parts, Request::new(()).into_parts().0)
            };
            let (request, timeout) = try_request(call, &lease, try_parts, body.for_try())?;
            let endpoint = lease.endpoint();
            // An HTTP/1.1 client's requests come one after another: they wait on the
            // connection's timer.
            let timer = (call.downstream_version <= http::Version::HTTP_11)
                .then_some(&call.conn.response_timer);
            let sent_at = Instant::now();
            let mut timing = TryTiming::default();
            // The send, aborted when the route watches for a client that ends its side
            // (boxed: the watch is the rare setup, and its state would otherwise sit in
            // every request's future beside the plain send's).
            let result = if call.action.abort_on_client_close {
                let raced = Box::pin(async {
                    tokio::select! {
                        r = endpoint.send(request, timeout, timer, &mut timing) => Some(r),
                        () = call.conn.client_closed() => None,
                    }
                })
                .await;
                match raced {
                    Some(r) => r,
                    None => {
                        ex.log.upstream = Some(endpoint.address);
                        lease.report(true);
                        tracing::debug!(client = %call.conn.client, "client closed its side; upstream exchange aborted");
                        return Err(ErrorKind::ClientAborted);
                    }
                }
            } else {
                endpoint.send(request, timeout, timer, &mut timing).await
            };
            record_try(call, &mut lease, sent_at, &timing, result.is_ok(), ex);
            let client_caused = ex.held.meter.as_deref().is_some_and(|m| {
                m.too_large.load(Ordering::Relaxed) || m.client_error.load(Ordering::Relaxed)
            });
            match &result {
                Ok((resp, _)) => lease.report(!resp.status().is_server_error()),
                Err(_) if !client_caused => lease.report(false),
                Err(_) => {}
            }
            let wanted =
                more && retry_wanted(cluster.retry.as_ref(), &result, idempotent, client_caused);
            if wanted {
                // One budget slot per retrying request, held across its retries.
                if retry_slot.is_none() {
                    retry_slot = cluster.try_retry();
                }
                if retry_slot.is_some() {
                    cluster.retries.fetch_add(1, Ordering::Relaxed);
                    if let Some(policy) = &cluster.retry {
                        tokio::time::sleep(backoff(policy, attempt)).await;
                    }
                    attempt += 1;
                    continue;
                }
                tracing::debug!(cluster = %cluster.name, "retry budget exhausted; answering with the last try");
            }
            return Ok((result, lease));
        }
    }
}

/// The endpoint for a try: the sticky session's (first try only), else the balancer's,
/// avoiding endpoints already tried (a hash key would pin retries, so they go without).
fn pick(call: &Call<'_>, attempt: u32, tried: &[SocketAddr]) -> Result<EndpointLease, ErrorKind> {
    let pinned = call
        .sticky_to
        .filter(|_| attempt == 0)
        .and_then(|i| call.cluster.lease_for(&call.endpoints, i));
    match pinned {
        Some(l) => Ok(l),
        None => call
            .cluster
            .pick_excluding(
                &call.endpoints,
                if attempt == 0 { call.key } else { None },
                tried,
            )
            .ok_or(ErrorKind::NoEndpoint),
    }
}

/// Whether a try's outcome is worth another try under the cluster's policy.
fn retry_wanted(
    policy: Option<&Retry>,
    result: &Sent,
    idempotent: bool,
    client_caused: bool,
) -> bool {
    match (policy, result) {
        (Some(policy), Ok((resp, _))) => {
            idempotent && policy.statuses.contains(&resp.status().as_u16())
        }
        (Some(policy), Err(e)) => !client_caused && retryable_error(e, policy, idempotent),
        (None, _) => false,
    }
}

/// One try's request: the head shaped for the endpoint of `lease` (target, WebSocket
/// handshake, PROXY addresses when the cluster sends them, chunked framing for a body
/// of unknown length), and the time the try may wait for its answer.
fn try_request(
    call: &Call<'_>,
    lease: &EndpointLease,
    mut head: Parts,
    body: RequestBody,
) -> Result<(Request<RequestBody>, Duration), ErrorKind> {
    let (cluster, ctx) = (call.cluster, call.conn);
    target(&mut head, lease.endpoint(), call)?;
    if let Some(ws) = &call.websocket {
        ws.upstream_request(&mut head, cluster.protocol);
    }
    let mut timeout = cluster
        .retry
        .as_ref()
        .map_or(cluster.response_timeout, |r| r.per_try_timeout);
    if let Some(d) = call.deadline {
        let left = d.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::DeadlineExceeded);
        }
        timeout = timeout.min(left);
    }
    if cluster.proxy_protocol().is_some() {
        head.extensions.insert(ClientAddresses {
            client: ctx.client,
            local: ctx.local,
            tls: ctx.tls.clone(),
        });
    }
    if cluster.protocol == UpstreamProtocol::Http1
        && !http_body::Body::is_end_stream(&body)
        && http_body::Body::size_hint(&body).exact().is_none()
        && !head.headers.contains_key(header::CONTENT_LENGTH)
    {
        // A body of unknown length goes chunked whatever the method: the HTTP/1.1
        // client would send a GET's or HEAD's body nowhere otherwise (dropped).
        head.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    Ok((Request::from_parts(head, body), timeout))
}

/// One try sent: its endpoint and timing breakdown in the log, its latency for the
/// balancer and the histograms.
fn record_try(
    call: &Call<'_>,
    lease: &mut EndpointLease,
    sent_at: Instant,
    timing: &TryTiming,
    ok: bool,
    ex: &mut Exchange,
) {
    let took = sent_at.elapsed();
    ex.log.upstream_start = Some(sent_at.saturating_duration_since(ex.log.start));
    ex.log.upstream = Some(lease.endpoint().address);
    ex.log.upstream_time = Some(took);
    ex.log.timing.upstream(timing, timing.sent(sent_at));
    let route = &call.route.stats;
    if let Some(connect) = timing.connect {
        route.upstream_connect.observe(connect);
    }
    if ok {
        lease.record_latency(took);
        call.cluster.stats.upstream_latency.observe(took);
        route.upstream_first_byte.observe(took);
    }
}

/// Phase 5: the last try's outcome as the client's answer.
fn answer(
    mut call: Call<'_>,
    result: Sent,
    lease: EndpointLease,
    fx: &mut FilterCtx<'_>,
    ex: &mut Exchange,
) -> Result<Response<ResponseBody>, ErrorKind> {
    let cluster = call.cluster;
    let sticky_cookie = match &cluster.sticky {
        Some(sticky) if call.sticky_to != Some(lease.index()) => sticky.set_cookie(lease.id()),
        _ => None,
    };
    ex.held.lease = Some(lease);
    let (resp, pooled) = match result {
        Err(e) => {
            return Err(classify(
                &e,
                ex.held.meter.as_deref(),
                &cluster.name,
                call.conn,
                call.deadline,
            ));
        }
        Ok(sent) => sent,
    };
    let (resp, pooled) = match call.websocket.take() {
        None => {
            // Only a WebSocket handshake may switch protocols (checked with it); a 101
            // to anything else would hand the connection to whatever the upstream
            // switched to.
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                tracing::warn!(
                    cluster = %cluster.name,
                    upgrade = ?resp.headers().get(header::UPGRADE),
                    "upstream switched protocols unasked; refused"
                );
                return Err(fail_upstream(ex, ErrorKind::UpgradeInvalid));
            }
            (resp, pooled)
        }
        Some(ws) => match open_tunnel(ws, &call, resp, pooled, ex) {
            super::tunnel::Outcome::Tunnel(answer) => return Ok(answer),
            // Refused: relayed as an ordinary answer (on a connection that is not
            // pooled again).
            super::tunnel::Outcome::Refused(resp) => (resp, None),
            super::tunnel::Outcome::Failed(kind) => return Err(kind),
        },
    };
    let (mut rparts, rbody) = resp.into_parts();
    if let Err(kind) = response_head(&mut rparts, fx.listener, call.downstream_version) {
        return Err(fail_upstream(ex, kind));
    }
    if let Some(v) = sticky_cookie {
        rparts.headers.append(header::SET_COOKIE, v);
    }
    ex.held.pooled = pooled;
    let body = response_body(&call, rbody, ex)?;
    let mut resp = Response::from_parts(rparts, body);
    fx.endpoint = ex.log.upstream;
    call.route.filters.response(&mut resp, fx);
    Ok(resp)
}

/// The upstream answered something unusable: its endpoint is told, its connection not
/// reused.
fn fail_upstream(ex: &mut Exchange, kind: ErrorKind) -> ErrorKind {
    if let Some(l) = &ex.held.lease {
        l.report(false);
    }
    ex.held.pooled = None;
    kind
}

/// The upstream's body as the client gets it: a gRPC call's under its deadline (which
/// covers the streamed messages too) and its route's life and the process's stop (a
/// reload that removes the route, or a stop, ends it with a status); any other checked
/// from its first bytes.
fn response_body(
    call: &Call<'_>,
    rbody: UpstreamBody,
    ex: &mut Exchange,
) -> Result<ResponseBody, ErrorKind> {
    if call.grpc {
        let ended_by = Arc::new(std::sync::OnceLock::new());
        ex.held.ended_by = Some(Arc::clone(&ended_by));
        return Ok(ResponseBody::boxed(super::grpc::GrpcBody::new(
            rbody,
            call.deadline,
            crate::life::Ending::new(Some(&call.route.life), &call.conn.shared.stop),
            ended_by,
        )));
    }
    ResponseBody::stream_checked(rbody).map_err(|e| {
        tracing::debug!(cluster = %call.cluster.name, error = %e, "upstream body broken from its first bytes");
        fail_upstream(ex, ErrorKind::UpstreamInvalid)
    })
}

/// The WebSocket step's end: the upstream's answer to the handshake opens a tunnel, or
/// is refused.
fn open_tunnel(
    ws: super::tunnel::WebSocket,
    call: &Call<'_>,
    resp: Response<UpstreamBody>,
    pooled: Option<Pooled>,
    ex: &mut Exchange,
) -> super::tunnel::Outcome {
    let ctx = call.conn;
    // The request's access-log line is written when the tunnel ends, with its bytes
    // (a refused handshake's answer goes back as a response, and takes the line back).
    let log: super::pipeline::TunnelLog = Arc::default();
    ex.log.tunnel = ctx.shared.logger.enabled().then(|| Arc::clone(&log));
    let tunnel = super::tunnel::Tunnel {
        log,
        logger: ctx.shared.logger.clone(),
        limits: super::tunnel::Tunnel::limits(call.action, &call.route.life, &ctx.shared.stop),
        conn: ctx.guard.clone(),
        route: Arc::clone(&call.route.name),
        client: ctx.client,
        lease: ex.held.lease.take(),
        in_flight: ctx
            .state
            .request_started(super::headers::multiplexed(call.downstream_version)),
        metrics: Arc::clone(&ctx.shared.metrics),
        stats: Arc::clone(&ctx.stats),
        // An HTTP/2 tunnel is a stream of its upstream connection, counted there while
        // it lives.
        _pooled: pooled,
    };
    let outcome = ws.finish(resp, call.cluster.protocol, tunnel);
    if !matches!(outcome, super::tunnel::Outcome::Tunnel(_)) {
        ex.log.tunnel = None;
    }
    outcome
}

/// Methods a retry may repeat after the upstream may have seen them (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether a failed try may be retried, and so whether it never reached the upstream.
fn retryable_error(e: &UpstreamError, policy: &Retry, idempotent: bool) -> bool {
    match e {
        // Never reached the upstream: safe for any method.
        UpstreamError::Connect(..) | UpstreamError::ConnectTimeout(_) | UpstreamError::Tls(..) => {
            true
        }
        UpstreamError::Handshake(..) => true,
        UpstreamError::ResponseTimeout(_) => idempotent,
        UpstreamError::Send(..) => policy.on_reset && idempotent,
        UpstreamError::Overloaded(_) => false,
        // Nothing of the request went out before the connection failed; after, as a reset.
        UpstreamError::H3(
            _,
            crate::cluster::H3Error::Connect(_) | crate::cluster::H3Error::ConnectTimeout,
        ) => true,
        UpstreamError::H3(..) => policy.on_reset && idempotent,
    }
}

fn backoff(policy: &Retry, attempt: u32) -> Duration {
    let exp = policy
        .backoff_base
        .saturating_mul(1u32 << attempt.min(16))
        .min(policy.backoff_max);
    let nanos = exp.as_nanos().min(u128::from(u64::MAX)) as u64;
    // Full jitter: anywhere between zero and the exponential step.
    Duration::from_nanos(if nanos == 0 {
        0
    } else {
        pylon_lb::random_u64() % nanos
    })
}

/// A copy of the request head for another try.
fn clone_parts(p: &Parts) -> Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    if let Some(case) = p.extensions.get::<pylon_h1::HeaderCase>() {
        r.extensions_mut().insert(case.clone());
    }
    r.into_parts().0
}

/// Reads a small body whole, for replay; `None` if it turns out larger than `max`.
async fn collect_small(
    body: ClientBody,
    max: u64,
    meter: &RequestMeter,
) -> Result<Option<Bytes>, ErrorKind> {
    match http_body_util::Limited::new(body, max as usize)
        .collect()
        .await
    {
        Ok(c) => {
            let b = c.to_bytes();
            meter.bytes.store(b.len() as u64, Ordering::Relaxed);
            Ok(Some(b))
        }
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Ok(None)
        }
        Err(_) => {
            meter.client_error.store(true, Ordering::Relaxed);
            Err(ErrorKind::ClientAborted)
        }
    }
}

/// The upstream's response head as the client gets it: one framing only from an
/// HTTP/1.x upstream (a Transfer-Encoding other than exactly `chunked`, or with a
/// Content-Length, is refused, not guessed at), hop-by-hop headers out, `Via` in, the
/// client's HTTP version.
pub(super) fn response_head(
    rparts: &mut http::response::Parts,
    listener: &ListenerRuntime,
    downstream_version: Version,
) -> Result<(), ErrorKind> {
    // An HTTP/1.x answer's framing (`Transfer-Encoding` exactly one `chunked`, never
    // with `Content-Length`) was checked as its head was read (`pylon_h1::parse_response`,
    // the only reader of HTTP/1.x answers): one that broke it never became a response.
    strip_hop_by_hop(&mut rparts.headers);
    super::headers::normalize_content_length(&mut rparts.headers);
    if listener.config.headers.via {
        append_via(&mut rparts.headers, rparts.version);
    }
    rparts.version = downstream_version;
    Ok(())
}

/// The target and host for one endpoint: origin-form plus `Host` for HTTP/1.1,
/// scheme and `:authority` for HTTP/2.
fn target(parts: &mut Parts, endpoint: &EndpointPool, call: &Call<'_>) -> Result<(), ErrorKind> {
    let cluster = call.cluster;
    let upstream_host: Option<HeaderValue> = match (&call.route.host_rewrite, cluster.host_header) {
        (Some(h), _) => Some(h.clone()),
        (None, HostHeader::Endpoint) => Some(endpoint.host_value.clone()),
        (None, HostHeader::Preserve) => call.client_host.clone(),
    };
    let path = call.path.clone();
    let h = &mut parts.headers;
    match cluster.protocol {
        UpstreamProtocol::Http1 => {
            parts.version = Version::HTTP_11;
            parts.uri = Uri::from(path);
            match upstream_host {
                Some(v) => {
                    h.insert(header::HOST, v);
                }
                None => {
                    h.remove(header::HOST);
                }
            }
        }
        UpstreamProtocol::H2c | UpstreamProtocol::H2 | UpstreamProtocol::H3 => {
            parts.version = if cluster.protocol == UpstreamProtocol::H3 {
                Version::HTTP_3
            } else {
                Version::HTTP_2
            };
            let host = upstream_host.unwrap_or_else(|| endpoint.host_value.clone());
            let authority = host
                .to_str()
                .ok()
                .and_then(|s| http::uri::Authority::try_from(s).ok())
                .ok_or(ErrorKind::MalformedRequest)?;
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(if cluster.protocol != UpstreamProtocol::H2c {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            });
            uri.authority = Some(authority);
            uri.path_and_query = Some(path);
            parts.uri = Uri::from_parts(uri).map_err(|_| ErrorKind::MalformedRequest)?;
            h.remove(header::HOST);
        }
    }
    Ok(())
}

/// The hash-balancing key of a request; `None` when the request lacks it (then the
/// balancer spreads it at random).
fn request_key<B>(k: &HashKey, req: &Request<B>, fx: &FilterCtx<'_>) -> Option<u64> {
    let ctx = fx.conn;
    match k {
        HashKey::ClientIp => Some(hash_key(ctx.client_ip.as_bytes())),
        HashKey::Path => Some(hash_key(req.uri().path().as_bytes())),
        HashKey::CacheKey => Some(match super::filters::cache::key_of(fx.state) {
            Some(key) => hash_key(key.as_bytes()),
            None => {
                let host = fx.client_authority.as_ref().and_then(|h| h.to_str().ok());
                let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let url = pylon_cache::key::url_key(ctx.scheme, host.unwrap_or(""), target);
                hash_key(url.as_bytes())
            }
        }),
        HashKey::Header(name) => req
            .headers()
            .get(name.as_str())
            .map(|v| hash_key(v.as_bytes())),
        HashKey::Cookie(name) => {
            super::headers::cookie(req.headers(), name).map(|v| hash_key(v.as_bytes()))
        }
        HashKey::Query(name) => {
            super::headers::query_param(req.uri(), name).map(|v| hash_key(v.as_bytes()))
        }
    }
}

/// Maps an upstream failure to the answer the client gets (and logs it under the
/// cluster's name).
pub(super) fn classify(
    e: &UpstreamError,
    meter: Option<&RequestMeter>,
    cluster: &str,
    ctx: &ConnCtx,
    deadline: Option<Instant>,
) -> ErrorKind {
    if let Some(m) = meter {
        if m.too_large.load(Ordering::Relaxed) {
            return ErrorKind::BodyTooLarge;
        }
        if m.client_error.load(Ordering::Relaxed) {
            // A chunked body that broke its framing ends the client's stream there.
            return ctx
                .state
                .chunk_violation()
                .map_or(ErrorKind::ClientAborted, super::pipeline::violation_kind);
        }
    }
    let kind = match e {
        UpstreamError::Connect(..) => ErrorKind::ConnectFailed,
        UpstreamError::ConnectTimeout(_) => ErrorKind::ConnectTimeout,
        UpstreamError::Tls(..) => ErrorKind::UpstreamTls,
        UpstreamError::Overloaded(_) => ErrorKind::Overloaded,
        UpstreamError::Handshake(..) => ErrorKind::UpstreamInvalid,
        UpstreamError::ResponseTimeout(_) => ErrorKind::ResponseTimeout,
        UpstreamError::Send(_, err) if err.is_invalid() => ErrorKind::UpstreamInvalid,
        UpstreamError::Send(_, err) if err.is_timeout() => ErrorKind::ResponseTimeout,
        UpstreamError::Send(..) => ErrorKind::UpstreamReset,
        UpstreamError::H3(_, crate::cluster::H3Error::Connect(_)) => ErrorKind::ConnectFailed,
        UpstreamError::H3(_, crate::cluster::H3Error::ConnectTimeout) => ErrorKind::ConnectTimeout,
        UpstreamError::H3(..) => ErrorKind::UpstreamReset,
    };
    // A wait cut short by the gRPC call's own deadline is the caller's deadline, not a
    // slow upstream.
    let kind = match kind {
        ErrorKind::ResponseTimeout
            if deadline.is_some_and(|d| Instant::now() + Duration::from_millis(1) >= d) =>
        {
            ErrorKind::DeadlineExceeded
        }
        kind => kind,
    };
    tracing::warn!(
        cluster = %cluster,
        client = %ctx.client,
        error = %e,
        reason = kind.as_str(),
        "upstream request failed"
    );
    kind
}
