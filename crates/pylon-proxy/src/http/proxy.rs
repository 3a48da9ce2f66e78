//! Phase 4 of the request path: the upstream request (target, proxy headers), the
//! balancer's pick, the send with retries (bounded body replay, per-try timeout,
//! backoff with jitter, a different endpoint, the cluster's retry budget), and the
//! upstream's answer streamed back.

use std::net::SocketAddr;

use crate::http::upstream::ClientAddresses;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pylon_config::model::{Action, HashKey, HostHeader, Retry, UpstreamProtocol};

use super::body::{RequestBody, RequestMeter, ResponseBody};
use super::error::ErrorKind;
use super::headers::{Peer, add_forwarding, append_via, strip_hop_by_hop};
use super::pipeline::{ConnCtx, Exchange};
use super::router::RouteRuntime;
use super::upstream::{ClusterRuntime, EndpointPool, UpstreamError, hash_key};
use crate::observe::access_log::millis;
use crate::runtime::ListenerRuntime;
use crate::tls::server::ClientIdentity;

static CLIENT_CERT_SUBJECT: header::HeaderName =
    header::HeaderName::from_static("x-client-cert-subject");
static CLIENT_CERT_DNS: header::HeaderName = header::HeaderName::from_static("x-client-cert-dns");
static CLIENT_CERT_FINGERPRINT: header::HeaderName =
    header::HeaderName::from_static("x-client-cert-fingerprint");

/// How the request body reaches each try.
enum Body {
    /// Streamed to the one and only try.
    Stream(Option<RequestBody>),
    /// Kept in memory (bounded by `retry.max_body_bytes`) and sent again on retries.
    Replay(Bytes),
}

impl Body {
    fn next(&mut self) -> RequestBody {
        match self {
            Body::Stream(b) => b.take().unwrap_or(RequestBody::Empty),
            Body::Replay(b) if b.is_empty() => RequestBody::Empty,
            Body::Replay(b) => RequestBody::Full(Some(b.clone())),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Body::Replay(_))
    }
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
    r.into_parts().0
}

/// Reads a small body whole, for replay; `None` if it turns out larger than `max`.
async fn collect_small(
    body: Incoming,
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

/// Phase 4: send upstream (retrying as the cluster allows) and stream the answer back.
pub(super) async fn proxy(
    req: Request<Incoming>,
    route: &RouteRuntime,
    cluster: &Arc<ClusterRuntime>,
    listener: &ListenerRuntime,
    ctx: &ConnCtx,
    ex: &mut Exchange,
) -> Result<Response<ResponseBody>, ErrorKind> {
    let Action::Proxy(action) = route.action() else {
        return Err(ErrorKind::NoRoute);
    };
    let mut req = req;
    // gRPC-Web: CORS preflights are answered here; requests are translated.
    let grpc_web = if action.grpc_web {
        if super::grpc_web::is_preflight(&req) {
            return super::grpc_web::preflight(req.headers(), &action.cors_allow_origins);
        }
        super::grpc_web::detect(req.headers())
    } else {
        None
    };
    let web_origin = grpc_web.and_then(|_| {
        super::grpc_web::GrpcWeb::answer_origin(req.headers(), &action.cors_allow_origins)
    });
    let mut websocket = super::tunnel::detect(&mut req);
    if websocket.is_some() && !action.websocket {
        // An HTTP/1.1 Upgrade goes on as a plain request (hop-by-hop headers are
        // dropped); an extended CONNECT has no plain form.
        if req.method() == Method::CONNECT {
            return Err(ErrorKind::WebSocketDisabled);
        }
        websocket = None;
    }
    let key = cluster
        .hash_key
        .as_ref()
        .and_then(|k| request_key(k, &req, ctx));
    let downstream_version = req.version();
    // A gRPC deadline bounds the whole exchange, retries included.
    let grpc = super::grpc::is_grpc(req.headers());
    let deadline = grpc
        .then(|| super::grpc::timeout(req.headers()))
        .flatten()
        .map(|t| Instant::now() + t);
    // One endpoint set for the whole request, retries included.
    let endpoints = cluster.current_endpoints();
    let sticky_to = cluster
        .sticky
        .as_ref()
        .and_then(|s| s.lookup(req.headers(), &endpoints.ids));
    let (mut parts, incoming) = req.into_parts();
    // The client's authority as a header value: `Host` as sent (a cheap clone), or
    // `:authority` for HTTP/2.
    let client_host: Option<HeaderValue> = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    let path = rewrite_path(&parts.uri, route, action.prefix_rewrite.as_deref());
    upstream_headers(
        &mut parts.headers,
        listener,
        ctx,
        ex,
        client_host.as_ref(),
        downstream_version,
    );

    if let Some(w) = &grpc_web {
        w.upstream_headers(&mut parts.headers);
    }
    let limit = listener.config.limits.max_request_body;
    let mut body = if http_body::Body::is_end_stream(&incoming) {
        match cluster.retry {
            Some(_) => Body::Replay(Bytes::new()),
            None => Body::Stream(Some(RequestBody::Empty)),
        }
    } else {
        let meter = Arc::new(RequestMeter::default());
        ex.meter = Some(Arc::clone(&meter));
        let declared = http_body::Body::size_hint(&incoming).exact();
        match &cluster.retry {
            Some(r) if declared.is_some_and(|n| n <= r.max_body_bytes.min(limit)) => {
                let collected = collect_small(incoming, r.max_body_bytes, &meter)
                    .await
                    .map_err(|kind| {
                        ctx.state
                            .chunk_violation()
                            .map_or(kind, super::pipeline::violation_kind)
                    })?;
                match collected {
                    Some(b) => Body::Replay(b),
                    None => return Err(ErrorKind::MalformedRequest),
                }
            }
            _ => Body::Stream(Some(RequestBody::Stream {
                inner: incoming,
                limit,
                meter,
            })),
        }
    };
    // gRPC-Web text: the body arrives in base64.
    if grpc_web.is_some_and(|w| w.text) {
        body = match body {
            Body::Replay(b) => Body::Replay(
                base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    b.iter()
                        .filter(|c| !c.is_ascii_whitespace())
                        .copied()
                        .collect::<Vec<u8>>(),
                )
                .map(Bytes::from)
                .map_err(|_| ErrorKind::MalformedRequest)?,
            ),
            Body::Stream(inner) => Body::Stream(inner.map(|b| {
                RequestBody::Boxed(http_body_util::combinators::BoxBody::new(
                    super::grpc_web::TextRequestBody::new(b),
                ))
            })),
        };
    }

    let idempotent = idempotent(&parts.method);
    let _active = if cluster.counts_requests() {
        Some(cluster.request_started().ok_or(ErrorKind::Overloaded)?)
    } else {
        None
    };
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt: u32 = 0;
    let mut retry_slot = None;
    loop {
        let more = cluster
            .retry
            .as_ref()
            .is_some_and(|r| attempt < r.max_retries && body.replayable());
        // Retries go to another endpoint when there is one (a hash key would pin them).
        let pick_key = if attempt == 0 { key } else { None };
        // A sticky session's endpoint first (first try only), else the balancer.
        let pinned = sticky_to
            .filter(|_| attempt == 0)
            .and_then(|i| cluster.lease_for(&endpoints, i));
        let mut lease = match pinned {
            Some(l) => l,
            None => cluster
                .pick_excluding(&endpoints, pick_key, &tried)
                .ok_or(ErrorKind::NoEndpoint)?,
        };
        let endpoint = Arc::clone(lease.endpoint());
        if more {
            // Only a request that may be retried remembers where it went.
            tried.push(endpoint.address);
        }
        let mut try_parts = if more {
            clone_parts(&parts)
        } else {
            // The last try takes the head itself.
            std::mem::replace(&mut parts, Request::new(()).into_parts().0)
        };
        target(
            &mut try_parts,
            &endpoint,
            cluster,
            route,
            client_host.as_ref(),
            path.clone(),
        )?;
        if let Some(ws) = &websocket {
            ws.upstream_request(&mut try_parts, cluster.protocol);
        }
        let mut timeout = cluster
            .retry
            .as_ref()
            .map_or(cluster.response_timeout, |r| r.per_try_timeout);
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ErrorKind::DeadlineExceeded);
            }
            timeout = timeout.min(left);
        }

        if cluster.proxy_protocol().is_some() {
            try_parts.extensions.insert(ClientAddresses {
                client: ctx.client,
                local: ctx.local,
                tls: ctx.tls.clone(),
            });
        }
        let next = body.next();
        if cluster.protocol == UpstreamProtocol::Http1
            && !http_body::Body::is_end_stream(&next)
            && http_body::Body::size_hint(&next).exact().is_none()
            && !try_parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            // A body of unknown length goes chunked whatever the method: the HTTP/1.1
            // client would send a GET's or HEAD's body nowhere otherwise (dropped).
            try_parts.headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        let sent_at = Instant::now();
        let send = endpoint.send(Request::from_parts(try_parts, next), timeout);
        let result = if action.abort_on_client_close {
            tokio::select! {
                r = send => r,
                () = ctx.client_closed() => {
                    ex.upstream = Some(endpoint.address);
                    lease.report(true);
                    tracing::debug!(client = %ctx.client, "client closed its side; upstream exchange aborted");
                    return Err(ErrorKind::ClientAborted);
                }
            }
        } else {
            send.await
        };
        let took = sent_at.elapsed();
        ex.upstream = Some(endpoint.address);
        ex.upstream_ms = Some(millis(took));
        if result.is_ok() {
            lease.record_latency(took);
            cluster.stats.upstream_latency.observe(took);
        }
        let client_caused = ex.meter.as_deref().is_some_and(|m| {
            m.too_large.load(Ordering::Relaxed) || m.client_error.load(Ordering::Relaxed)
        });
        match &result {
            Ok((resp, _)) => lease.report(!resp.status().is_server_error()),
            Err(_) if !client_caused => lease.report(false),
            Err(_) => {}
        }

        let retry_wanted = match (&cluster.retry, &result) {
            (Some(policy), Ok((resp, _))) => {
                more && idempotent && policy.statuses.contains(&resp.status().as_u16())
            }
            (Some(policy), Err(e)) => {
                more && !client_caused && retryable_error(e, policy, idempotent)
            }
            (None, _) => false,
        };
        if retry_wanted {
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
        let index = lease.index();
        let sticky_cookie = match &cluster.sticky {
            Some(sticky) if sticky_to != Some(index) => sticky.set_cookie(lease.id()),
            _ => None,
        };
        ex.lease = Some(lease);
        return match result {
            // Only a WebSocket handshake may switch protocols (checked with it below);
            // a 101 to anything else would hand the connection to whatever the
            // upstream switched to.
            Ok((resp, _))
                if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
                    && websocket.is_none() =>
            {
                tracing::warn!(
                    cluster = %cluster.name,
                    upgrade = ?resp.headers().get(header::UPGRADE),
                    "upstream switched protocols unasked; refused"
                );
                if let Some(l) = &ex.lease {
                    l.report(false);
                }
                Err(ErrorKind::UpgradeInvalid)
            }
            Ok((resp, pooled)) => {
                let resp = match websocket.take() {
                    None => (resp, pooled),
                    Some(ws) => {
                        let tunnel = super::tunnel::Tunnel {
                            limits: super::tunnel::Tunnel::limits(
                                action,
                                &route.life,
                                &ctx.shared.stop,
                            ),
                            conn: ctx.guard.clone(),
                            route: Arc::clone(&route.name),
                            client: ctx.client,
                            lease: ex.lease.take(),
                            in_flight: ctx
                                .state
                                .request_started(downstream_version == Version::HTTP_2),
                            metrics: Arc::clone(&ctx.shared.metrics),
                            stats: Arc::clone(&ctx.stats),
                            // An HTTP/2 tunnel is a stream of its upstream connection,
                            // counted there while it lives.
                            _pooled: pooled,
                        };
                        match ws.finish(resp, cluster.protocol, tunnel) {
                            super::tunnel::Outcome::Tunnel(answer) => return Ok(answer),
                            // Refused: relayed as an ordinary answer (on a connection
                            // that is not pooled again).
                            super::tunnel::Outcome::Refused(resp) => (resp, None),
                            super::tunnel::Outcome::Failed(kind) => return Err(kind),
                        }
                    }
                };
                let (resp, pooled) = resp;
                let (mut rparts, rbody) = resp.into_parts();
                if let Err(kind) = response_head(&mut rparts, listener, downstream_version) {
                    if let Some(l) = &ex.lease {
                        l.report(false);
                    }
                    return Err(kind);
                }
                if let Some(v) = sticky_cookie {
                    rparts.headers.append(header::SET_COOKIE, v);
                }
                ex.pooled = pooled;
                // A gRPC call's deadline covers the streamed messages too, and a reload
                // that removes its route (or a stop) ends it with a status; gRPC-Web
                // calls alike, then translated.
                let body = if grpc {
                    let ended_by = Arc::new(std::sync::OnceLock::new());
                    ex.ended_by = Some(Arc::clone(&ended_by));
                    let body = super::grpc::GrpcBody::new(
                        rbody,
                        deadline,
                        crate::runtime::Ending::new(Some(&route.life), &ctx.shared.stop),
                        ended_by,
                    );
                    if let Some(w) = grpc_web {
                        return Ok(w.response(Response::from_parts(rparts, body), web_origin));
                    }
                    ResponseBody::boxed(body)
                } else {
                    match ResponseBody::stream_checked(rbody) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::debug!(cluster = %cluster.name, error = %e, "upstream body broken from its first bytes");
                            if let Some(l) = &ex.lease {
                                l.report(false);
                            }
                            ex.pooled = None;
                            return Err(ErrorKind::UpstreamInvalid);
                        }
                    }
                };
                Ok(Response::from_parts(rparts, body))
            }
            Err(e) => Err(classify(
                &e,
                ex.meter.as_deref(),
                &cluster.name,
                ctx,
                deadline,
            )),
        };
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
    if rparts.version <= Version::HTTP_11
        && let Some(chunked) = super::headers::chunked_only(&rparts.headers)
        && (!chunked || rparts.headers.contains_key(header::CONTENT_LENGTH))
    {
        return Err(ErrorKind::UpstreamInvalid);
    }
    strip_hop_by_hop(&mut rparts.headers);
    super::headers::normalize_content_length(&mut rparts.headers);
    if listener.config.headers.via {
        append_via(&mut rparts.headers, rparts.version);
    }
    rparts.version = downstream_version;
    Ok(())
}

/// Hop-by-hop headers out, proxy headers in: what every try sends.
fn upstream_headers(
    h: &mut http::HeaderMap,
    listener: &ListenerRuntime,
    ctx: &ConnCtx,
    ex: &Exchange,
    client_host: Option<&HeaderValue>,
    downstream_version: Version,
) {
    strip_hop_by_hop(h);
    super::headers::normalize_content_length(h);
    h.remove(header::EXPECT);
    add_client_forwarding(h, listener, ctx, client_host, downstream_version);
    if let (Some(name), Some(id)) = (&listener.request_id, &ex.request_id)
        && let Ok(v) = HeaderValue::from_str(id)
    {
        h.insert(name.clone(), v);
    }
    // On TLS listeners a client never legitimately sends these: always drop its copies,
    // and add the verified identity when forwarding is on.
    if let Some(tls) = &listener.config.tls {
        let id = ctx
            .client_cert
            .as_deref()
            .filter(|_| tls.forward_client_cert);
        forward_client_cert(h, id);
    }
}

/// The forwarding headers (`X-Forwarded-*`, `Forwarded`) the listener asks for, naming
/// this connection's client.
pub(super) fn add_client_forwarding(
    h: &mut http::HeaderMap,
    listener: &ListenerRuntime,
    ctx: &ConnCtx,
    client_host: Option<&HeaderValue>,
    downstream_version: Version,
) {
    let peer = Peer {
        ip: ctx.client.ip(),
        ip_value: &ctx.client_ip,
        scheme: ctx.scheme,
    };
    add_forwarding(
        h,
        &listener.config.headers,
        &peer,
        client_host,
        downstream_version,
    );
}

/// The target and host for one endpoint: origin-form plus `Host` for HTTP/1.1,
/// scheme and `:authority` for HTTP/2.
fn target(
    parts: &mut Parts,
    endpoint: &EndpointPool,
    cluster: &ClusterRuntime,
    route: &RouteRuntime,
    client_host: Option<&HeaderValue>,
    path: PathAndQuery,
) -> Result<(), ErrorKind> {
    let upstream_host: Option<HeaderValue> = match (&route.host_rewrite, cluster.host_header) {
        (Some(h), _) => Some(h.clone()),
        (None, HostHeader::Endpoint) => Some(endpoint.host_value.clone()),
        (None, HostHeader::Preserve) => client_host.cloned(),
    };
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
        UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
            parts.version = Version::HTTP_2;
            let host = upstream_host.unwrap_or_else(|| endpoint.host_value.clone());
            let authority = host
                .to_str()
                .ok()
                .and_then(|s| http::uri::Authority::try_from(s).ok())
                .ok_or(ErrorKind::MalformedRequest)?;
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(if cluster.protocol == UpstreamProtocol::H2 {
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

/// Rewrites the matched `path_prefix` with `prefix_rewrite`, keeping the query.
fn rewrite_path(uri: &Uri, route: &RouteRuntime, rewrite: Option<&str>) -> PathAndQuery {
    let original = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let (Some(new_prefix), pylon_config::model::PathMatch::Prefix(old_prefix)) =
        (rewrite, &route.route.matcher.path)
    else {
        return original;
    };
    let rest = original
        .path()
        .strip_prefix(old_prefix.as_str())
        .unwrap_or(original.path());
    let mut p = String::with_capacity(new_prefix.len() + rest.len() + 16);
    p.push_str(new_prefix);
    if p.ends_with('/') && rest.starts_with('/') {
        p.pop();
    }
    p.push_str(rest);
    if p.is_empty() {
        p.push('/');
    }
    if let Some(q) = original.query() {
        p.push('?');
        p.push_str(q);
    }
    PathAndQuery::try_from(p).unwrap_or(original)
}

/// The hash-balancing key of a request; `None` when the request lacks it (then the
/// balancer spreads it at random).
fn request_key<B>(k: &HashKey, req: &Request<B>, ctx: &ConnCtx) -> Option<u64> {
    match k {
        HashKey::ClientIp => Some(hash_key(ctx.client_ip.as_bytes())),
        HashKey::Path => Some(hash_key(req.uri().path().as_bytes())),
        HashKey::Header(name) => req
            .headers()
            .get(name.as_str())
            .map(|v| hash_key(v.as_bytes())),
        HashKey::Cookie(name) => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash_key(v.as_bytes())),
        HashKey::Query(name) => req
            .uri()
            .query()?
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash_key(v.as_bytes())),
    }
}

/// Replaces any client-sent `x-client-cert-*` headers with the verified identity.
fn forward_client_cert(h: &mut http::HeaderMap, id: Option<&ClientIdentity>) {
    for n in [
        &CLIENT_CERT_SUBJECT,
        &CLIENT_CERT_DNS,
        &CLIENT_CERT_FINGERPRINT,
    ] {
        h.remove(n);
    }
    let Some(id) = id else { return };
    let values = [
        (&CLIENT_CERT_SUBJECT, id.subject.clone()),
        (&CLIENT_CERT_DNS, id.dns_names.join(",")),
        (&CLIENT_CERT_FINGERPRINT, id.fingerprint.clone()),
    ];
    for (name, value) in values {
        if !value.is_empty()
            && let Ok(v) = HeaderValue::from_str(&value)
        {
            h.insert(name.clone(), v);
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
        UpstreamError::Send(_, err) if err.is_parse() || err.is_parse_status() => {
            ErrorKind::UpstreamInvalid
        }
        UpstreamError::Send(_, err) if err.is_timeout() => ErrorKind::ResponseTimeout,
        UpstreamError::Send(..) => ErrorKind::UpstreamReset,
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
