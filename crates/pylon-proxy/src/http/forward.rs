//! The forward proxy: absolute-form requests (`GET http://host/path`) and CONNECT
//! tunnels (HTTP/1.1 and HTTP/2), behind `Proxy-Authorization: Basic` (argon2 hashes)
//! and access rules. Non-public destinations (every block of the IANA special-purpose
//! registries that is not globally reachable, see `forward_addr`) are denied unless
//! allowed: the rule is checked against every address a name resolves to, and only
//! allowed addresses are connected to (no DNS-rebinding way around it). Names are
//! resolved with hickory-resolver: the configured `resolvers`, else the system's.
//! Absolute-form requests go through the shared upstream code: a pool per destination
//! address (`upstream::destinations`, the same `EndpointPool` as a cluster endpoint's)
//! with its connect and response timeouts, connections reused, answers checked as a
//! cluster's are; CONNECT tunnels relay raw bytes.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::conn::ClientBody;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::LookupIpStrategy;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use pylon_config::model::{AccessRule, ForwardProxy};
use tokio::net::TcpStream;

use super::body::{RequestBody, ResponseBody};
use super::error::{ErrorKind, error_response};
use super::forward_addr;
use super::forward_auth::Credentials;
pub use super::forward_auth::hash_password;
use super::headers::strip_hop_by_hop;
use super::pipeline::{ConnCtx, Exchange, TunnelLog};
use crate::cluster::destinations::DestinationPools;
use crate::cluster::{EndpointPool, TryTiming};
use crate::l4::relay::{self, Activity, RelayLimits};
use crate::observe::access_log::millis;
use crate::runtime::ListenerRuntime;

static PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");
static PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

pub struct ForwardRuntime {
    pub config: ForwardProxy,
    credentials: Credentials,
    /// Resolves destination names; the error says why none could be set up (then
    /// every name answers `destination_unresolved`).
    resolver: Result<TokioResolver, String>,
    /// Connections to destinations, reused by absolute-form requests.
    pub destinations: Arc<DestinationPools>,
    /// The filters of absolute-form requests (the cache, when configured).
    filters: super::filters::FilterChain,
}

impl ForwardRuntime {
    pub fn new(config: ForwardProxy, filters: super::filters::FilterChain) -> ForwardRuntime {
        let resolver = resolver(&config);
        if let Err(e) = &resolver {
            tracing::warn!(error = %e, "forward proxy: cannot set up DNS resolution");
        }
        let destinations = DestinationPools::new(
            "forward",
            config.connect_timeout,
            config.response_timeout,
            config.idle_timeout,
        );
        ForwardRuntime {
            config,
            credentials: Credentials::new(),
            resolver,
            destinations,
            filters,
        }
    }

    /// The filters of absolute-form requests, for their part of an error answer.
    pub(super) fn filters(&self) -> &super::filters::FilterChain {
        &self.filters
    }

    /// How many argon2 verifications this runtime has started (cache misses).
    pub fn argon2_verifications(&self) -> u64 {
        self.credentials.verifications.load(Ordering::Relaxed)
    }

    /// The authenticated user (`Some("")` when no authentication is configured), or
    /// `None` when the credentials are missing or wrong.
    async fn authenticate(&self, headers: &http::HeaderMap) -> Option<Arc<str>> {
        if self.config.users.is_empty() {
            return Some(Arc::from(""));
        }
        self.credentials
            .check_basic(headers.get(&PROXY_AUTHORIZATION), &self.config.users)
            .await
    }
}

/// A resolver for destination names: the configured name servers, else the system's
/// configuration; A and AAAA both asked, so every address a name has is checked.
fn resolver(cfg: &ForwardProxy) -> Result<TokioResolver, String> {
    crate::cluster::discovery::build_resolver(
        &cfg.resolvers,
        cfg.resolve_timeout,
        LookupIpStrategy::Ipv4AndIpv6,
        "[listeners.forward] resolvers",
    )
}

/// Where a request wants to go.
struct Destination {
    host: String,
    port: u16,
}

/// Why a destination was denied.
#[derive(Debug, PartialEq)]
struct Denial {
    /// The rule's name, or `connect_port` / `private_address`: `x-pylon-error`.
    rule: String,
    /// For `private_address`: the address and the block it falls in, for the log.
    detail: Option<String>,
}

impl Denial {
    fn rule(rule: &str) -> Denial {
        Denial {
            rule: rule.to_owned(),
            detail: None,
        }
    }
}

/// The verdict on a destination: the addresses that may be connected to, or what
/// denied it.
fn check(
    cfg: &ForwardProxy,
    dest: &Destination,
    addrs: &[IpAddr],
    connect: bool,
) -> Result<Vec<IpAddr>, Denial> {
    let host = dest.host.to_ascii_lowercase();
    let matches = |r: &AccessRule, ip: IpAddr| {
        (r.hosts.is_empty() || r.hosts.iter().any(|h| h.matches(&host)))
            && (r.ports.is_empty() || r.ports.contains(&dest.port))
            && (r.networks.is_empty() || r.networks.iter().any(|n| n.contains(ip)))
    };
    let mut allowed = Vec::new();
    for &ip in addrs {
        match cfg.rules.iter().find(|r| matches(r, ip)) {
            Some(r) if r.allow => allowed.push(ip),
            Some(r) => return Err(Denial::rule(&r.name)),
            None => {
                if connect && !cfg.connect_ports.contains(&dest.port) {
                    return Err(Denial::rule("connect_port"));
                }
                if !cfg.allow_private
                    && let Some(why) = forward_addr::classify(ip)
                {
                    return Err(Denial {
                        rule: "private_address".into(),
                        detail: Some(format!("{ip} in {why}")),
                    });
                }
                allowed.push(ip);
            }
        }
    }
    Ok(allowed)
}

fn denied(reason: &str) -> Response<ResponseBody> {
    let mut resp = error_response(ErrorKind::Denied);
    if let Ok(v) = HeaderValue::from_str(&format!("denied: {reason}")) {
        resp.headers_mut().insert("x-pylon-error", v);
    }
    resp
}

fn destination(req: &Request<ClientBody>) -> Result<Destination, ErrorKind> {
    let uri = req.uri();
    let authority = uri.authority().ok_or(ErrorKind::NotAProxyRequest)?;
    if req.method() != Method::CONNECT && uri.scheme_str() != Some("http") {
        // `https://` URLs go through CONNECT; anything else is not ours to fetch.
        return Err(ErrorKind::NotAProxyRequest);
    }
    let default = if req.method() == Method::CONNECT {
        443
    } else {
        80
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(ErrorKind::NotAProxyRequest);
    }
    Ok(Destination {
        host: host.to_owned(),
        port: authority.port_u16().unwrap_or(default),
    })
}

/// The destination's addresses (IPv4-mapped IPv6 ones as IPv4), or why there are none.
async fn resolve(fwd: &ForwardRuntime, dest: &Destination) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = dest.host.parse::<IpAddr>() {
        return Ok(vec![ip.to_canonical()]);
    }
    let resolver = fwd.resolver.as_ref().map_err(Clone::clone)?;
    let timeout = fwd.config.resolve_timeout;
    let lookup = match tokio::time::timeout(timeout, resolver.lookup_ip(dest.host.as_str())).await {
        Err(_) => return Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) if e.is_nx_domain() => return Err("no such name (NXDOMAIN)".into()),
        Ok(Err(e)) if e.is_no_records_found() => return Err("no A or AAAA records".into()),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(lookup)) => lookup,
    };
    let mut found: Vec<IpAddr> = Vec::new();
    for ip in lookup.iter().map(|ip| ip.to_canonical()) {
        if !found.contains(&ip) {
            found.push(ip);
        }
    }
    if found.is_empty() {
        return Err("no A or AAAA records".into());
    }
    Ok(found)
}

async fn connect(addrs: &[IpAddr], port: u16, cfg: &ForwardProxy) -> Result<TcpStream, ErrorKind> {
    let mut last = ErrorKind::ConnectFailed;
    for &ip in addrs {
        match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect((ip, port))).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(_)) => last = ErrorKind::ConnectFailed,
            Err(_) => last = ErrorKind::ConnectTimeout,
        }
    }
    Err(last)
}

/// Serves one request on a forward-proxy listener.
pub(super) async fn serve(
    mut req: Request<ClientBody>,
    fwd: &ForwardRuntime,
    listener: &ListenerRuntime,
    ctx: &Arc<ConnCtx>,
    ex: &mut Exchange,
    filter_state: &mut http::Extensions,
) -> Result<Response<ResponseBody>, ErrorKind> {
    let cfg = &fwd.config;
    let Some(user) = fwd.authenticate(req.headers()).await else {
        ex.log.error = Some(ErrorKind::ProxyAuthRequired);
        let mut resp = error_response(ErrorKind::ProxyAuthRequired);
        resp.headers_mut().insert(
            PROXY_AUTHENTICATE.clone(),
            HeaderValue::from_static("Basic realm=\"pylon\""),
        );
        return Ok(resp);
    };
    if !user.is_empty() {
        ex.log.user = Some(Arc::clone(&user));
    }
    let dest = destination(&req)?;
    let is_connect = req.method() == Method::CONNECT;
    // A deny rule on the name or port alone decides before any DNS lookup.
    let host = dest.host.to_ascii_lowercase();
    if let Some(rule) = cfg
        .rules
        .iter()
        .take_while(|r| r.networks.is_empty())
        .find(|r| {
            (r.hosts.is_empty() || r.hosts.iter().any(|h| h.matches(&host)))
                && (r.ports.is_empty() || r.ports.contains(&dest.port))
        })
        .filter(|r| !r.allow)
    {
        ex.log.error = Some(ErrorKind::Denied);
        return Ok(denied(&rule.name));
    }
    let resolving = Instant::now();
    let resolved = resolve(fwd, &dest).await;
    if dest.host.parse::<IpAddr>().is_err() {
        ex.log.timing.dns_ms = Some(resolving.elapsed());
    }
    let addrs = match resolved {
        Ok(a) => a,
        Err(reason) => {
            tracing::info!(client = %ctx.client, destination = %format!("{}:{}", dest.host, dest.port), reason = %reason, "forward proxy: destination unresolved");
            return Err(ErrorKind::ResolveFailed);
        }
    };
    let allowed = match check(cfg, &dest, &addrs, is_connect) {
        Ok(a) => a,
        Err(d) => {
            ex.log.error = Some(ErrorKind::Denied);
            tracing::info!(client = %ctx.client, destination = %format!("{}:{}", dest.host, dest.port), rule = %d.rule, detail = d.detail.as_deref(), "forward proxy: denied");
            return Ok(denied(&d.rule));
        }
    };
    if is_connect {
        let upstream = connect(&allowed, dest.port, cfg).await?;
        ex.log.upstream = upstream.peer_addr().ok();
        return Ok(tunnel(&mut req, upstream, cfg, ctx, ex));
    }
    // The access rules passed: the filters (the cache) may answer now. What they leave
    // in `filter_state` gives `pipeline::handle` their part of an error answer.
    let mut fx = super::filters::FilterCtx {
        conn: ctx,
        conn_arc: ctx,
        listener,
        request_id: ex.log.request_id.clone(),
        client_authority: req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        state: filter_state,
        user: None,
        endpoint: None,
        trace: ex.log.trace.clone(),
    };
    if let Some(answer) = fwd.filters.request(&mut req, &mut fx).await? {
        return Ok(answer);
    }
    let pool = destination_pool(fwd, &allowed, dest.port, ctx).await?;
    let mut resp = forward_request(req, &pool, listener, ex, cfg, &fwd.filters, &mut fx).await?;
    fwd.filters.response(&mut resp, &mut fx);
    Ok(resp)
}

/// The pool of the first allowed address with a connection ready (an idle one, else one
/// that connects now), each address tried in turn as before a CONNECT.
async fn destination_pool(
    fwd: &ForwardRuntime,
    allowed: &[IpAddr],
    port: u16,
    ctx: &ConnCtx,
) -> Result<Arc<EndpointPool>, ErrorKind> {
    let pools: Vec<Arc<EndpointPool>> = allowed
        .iter()
        .map(|&ip| fwd.destinations.pool(std::net::SocketAddr::new(ip, port)))
        .collect();
    if let Some(p) = pools.iter().find(|p| p.ready_connections() > 0) {
        return Ok(Arc::clone(p));
    }
    let mut last = ErrorKind::ConnectFailed;
    for p in pools {
        match p.prepare_h1().await {
            Ok(()) => return Ok(p),
            Err(e) => last = super::proxy::classify(&e, None, "forward", ctx, None),
        }
    }
    Err(last)
}

/// CONNECT: answers 200 and relays bytes once the client's side is upgraded. The
/// request's access-log record (made by `pipeline::finish`) is written when the tunnel
/// ends, with the bytes each way.
fn tunnel(
    req: &mut Request<ClientBody>,
    upstream: TcpStream,
    cfg: &ForwardProxy,
    ctx: &ConnCtx,
    ex: &mut Exchange,
) -> Response<ResponseBody> {
    let client_upgrade = crate::conn::ClientUpgrade::on(&mut *req);
    let limits = RelayLimits {
        idle: cfg.tunnel_idle_timeout,
        lifetime: None,
        end: crate::life::Ending::new(
            ctx.runtime
                .load()
                .listener(&ctx.listener)
                .map(|l| l.life.clone())
                .as_ref(),
            &ctx.shared.stop,
        ),
    };
    let log: TunnelLog = Arc::default();
    ex.log.tunnel = Some(Arc::clone(&log));
    let (shared, stats) = (Arc::clone(&ctx.shared), Arc::clone(&ctx.stats));
    let (listener, client) = (Arc::clone(&ctx.listener), ctx.client);
    // In flight, and the client connection counted open, while the tunnel lives.
    let held = (
        ctx.state
            .request_started(super::headers::multiplexed(req.version())),
        ctx.guard.clone(),
    );
    tokio::spawn(async move {
        let started = Instant::now();
        let Some(client_io) = client_upgrade.wait().await else {
            return;
        };
        let open = super::tunnel::OpenTunnel::new(&shared.metrics, &stats);
        let activity = Activity::default();
        // A cleartext client's own socket: both sides plain, relayed with splice(2) as
        // Layer 4 connections are.
        let end = match client_io.into_tcp() {
            Ok((client_tcp, ahead)) => {
                let mut upstream = upstream;
                let early = if ahead.is_empty() {
                    Ok(())
                } else {
                    activity.moved(&activity.up, ahead.len());
                    tokio::io::AsyncWriteExt::write_all(&mut upstream, &ahead).await
                };
                let end = match early {
                    Ok(()) => relay::tcp(client_tcp, upstream, limits, true, &activity).await,
                    Err(e) => relay::RelayEnd::Error(e),
                };
                // The listener's byte counters, which the socket wrapper kept before.
                stats.received(activity.up.load(Ordering::Relaxed));
                stats.sent(activity.down.load(Ordering::Relaxed));
                if activity.spliced.load(Ordering::Relaxed) {
                    shared
                        .metrics
                        .tunnels_spliced
                        .fetch_add(1, Ordering::Relaxed);
                }
                end
            }
            Err(upgraded) => relay::copy(upgraded, upstream, limits, &activity).await,
        };
        drop(open);
        if end.by_proxy() {
            tracing::info!(%listener, %client, reason = end.as_str(), "CONNECT tunnel closed by the proxy");
        }
        if let Some(mut r) = crate::lock(&log).take() {
            r.bytes_in = activity.up.load(Ordering::Relaxed);
            r.bytes_out = activity.down.load(Ordering::Relaxed);
            r.duration_ms = millis(started.elapsed());
            if !matches!(end, relay::RelayEnd::Closed) {
                r.error = Some(end.as_str());
            }
            r.closed_by = activity.closed_by(&end);
            shared.logger.log(r);
        }
        drop(held);
    });
    Response::new(ResponseBody::empty())
}

/// An absolute-form request: sent in origin form on a pooled connection to the
/// destination, its answer checked and streamed back as a cluster's is.
async fn forward_request(
    req: Request<ClientBody>,
    pool: &Arc<EndpointPool>,
    listener: &ListenerRuntime,
    ex: &mut Exchange,
    cfg: &ForwardProxy,
    filters: &super::filters::FilterChain,
    fx: &mut super::filters::FilterCtx<'_>,
) -> Result<Response<ResponseBody>, ErrorKind> {
    let ctx = fx.conn;
    let (mut parts, body) = req.into_parts();
    let downstream_version = parts.version;
    let authority = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .ok_or(ErrorKind::NotAProxyRequest)?;
    let h = &mut parts.headers;
    h.remove(&PROXY_AUTHORIZATION);
    h.remove(&PROXY_CONNECTION);
    strip_hop_by_hop(h);
    super::headers::normalize_content_length(h);
    if cfg.strip_client_headers {
        h.remove(header::FORWARDED);
        h.remove(HeaderName::from_static("x-forwarded-for"));
        h.remove(header::VIA);
    }
    super::filters::forwarding::add_client_forwarding(
        h,
        listener,
        ctx,
        Some(&authority),
        downstream_version,
    );
    h.insert(header::HOST, authority);
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|p| Uri::from(p.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    filters.upstream_head(&mut parts, fx);
    let body = if http_body::Body::is_end_stream(&body) {
        RequestBody::Empty
    } else {
        let meter = Arc::new(super::body::RequestMeter::default());
        ex.held.meter = Some(Arc::clone(&meter));
        if http_body::Body::size_hint(&body).exact().is_none() {
            parts.headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        RequestBody::Stream {
            inner: body,
            limit: listener.config.limits.max_request_body,
            meter,
            passed: false,
        }
    };
    ex.log.upstream = Some(pool.address);
    let sent_at = Instant::now();
    let mut timing = TryTiming::default();
    let sent = pool
        .send(
            Request::from_parts(parts, body),
            cfg.response_timeout,
            None,
            &mut timing,
        )
        .await;
    ex.log.timing.upstream(&timing, timing.sent(sent_at));
    let (resp, pooled) = sent
        .map_err(|e| super::proxy::classify(&e, ex.held.meter.as_deref(), "forward", ctx, None))?;
    ex.log.upstream_time = Some(sent_at.elapsed());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Nothing asked for a switch (the upgrade headers are hop-by-hop).
        return Err(ErrorKind::UpgradeInvalid);
    }
    let (mut rparts, rbody) = resp.into_parts();
    super::proxy::response_head(&mut rparts, listener, downstream_version)?;
    let body = ResponseBody::stream_checked(rbody).map_err(|_| ErrorKind::UpstreamInvalid)?;
    // The connection goes back to the pool when the answer has been read to its end.
    ex.held.pooled = pooled;
    Ok(Response::from_parts(rparts, body))
}

#[cfg(test)]
mod tests {
    use super::super::forward_auth::{ACCEPTED_TTL, REFUSED_TTL};
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use pylon_config::model::HostMatch;

    fn cfg(rules: Vec<AccessRule>) -> ForwardProxy {
        ForwardProxy {
            rules,
            connect_ports: vec![443],
            allow_private: false,
            users: Vec::new(),
            strip_client_headers: false,
            connect_timeout: std::time::Duration::from_secs(1),
            tunnel_idle_timeout: std::time::Duration::from_secs(1),
            response_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
            resolvers: Vec::new(),
            resolve_timeout: std::time::Duration::from_secs(1),
            cache: None,
        }
    }

    /// The verdict with only the rule's name.
    fn verdict(
        c: &ForwardProxy,
        d: &Destination,
        addrs: &[IpAddr],
        connect: bool,
    ) -> Result<Vec<IpAddr>, String> {
        check(c, d, addrs, connect).map_err(|d| d.rule)
    }

    fn dest(host: &str, port: u16) -> Destination {
        Destination {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn defaults_deny_private_addresses_and_odd_connect_ports() {
        let c = cfg(Vec::new());
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        assert_eq!(
            verdict(&c, &dest("example.com", 443), &[public], true),
            Ok(vec![public])
        );
        assert_eq!(
            verdict(&c, &dest("example.com", 22), &[public], true),
            Err("connect_port".into())
        );
        assert_eq!(
            verdict(&c, &dest("example.com", 8080), &[public], false),
            Ok(vec![public])
        );
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "192.0.0.8",
            "2001:db8::1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "2002:a00:1::",
            "::ffff:10.0.0.1",
            "2001::1",
            "100::1",
            "5f00::1",
            "3fff::1",
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert_eq!(
                verdict(&c, &dest("x", 443), &[ip], true),
                Err("private_address".into()),
                "{private}"
            );
        }
        for public in [
            "64:ff9b::808:808",
            "2002:808:808::",
            "::ffff:8.8.8.8",
            "192.0.0.9",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert_eq!(
                verdict(&c, &dest("x", 443), &[ip], true),
                Ok(vec![ip]),
                "{public}"
            );
        }
        // A name resolving to a public and a private address is denied (rebinding).
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(verdict(&c, &dest("x", 443), &[public, lo], true).is_err());
        // allow_private lets them all through.
        let open = ForwardProxy {
            allow_private: true,
            ..cfg(Vec::new())
        };
        assert_eq!(
            verdict(&open, &dest("x", 443), &[public, lo], true),
            Ok(vec![public, lo])
        );
    }

    #[test]
    fn a_private_address_denial_names_the_address_and_its_block() {
        let c = cfg(Vec::new());
        let ip: IpAddr = "2002:a00:1::".parse().unwrap();
        assert_eq!(
            check(&c, &dest("x", 443), &[ip], true),
            Err(Denial {
                rule: "private_address".into(),
                detail: Some(
                    "2002:a00:1:: in 6to4 (2002::/16) embedding 10.0.0.1: Private-Use (10.0.0.0/8)"
                        .into()
                ),
            })
        );
        assert_eq!(
            check(&c, &dest("x", 22), &[ip], true),
            Err(Denial::rule("connect_port"))
        );
    }

    fn with_user(password: &str) -> ForwardRuntime {
        ForwardRuntime::new(
            ForwardProxy {
                users: vec![pylon_config::model::ProxyUser {
                    name: "alice".into(),
                    password_hash: hash_password(password).unwrap(),
                }],
                ..cfg(Vec::new())
            },
            super::super::filters::FilterChain::default(),
        )
    }

    fn basic(credentials: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        let v = format!("Basic {}", BASE64.encode(credentials));
        h.insert(&PROXY_AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
        h
    }

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let fwd = with_user("s3cret");
        let good = basic("alice:s3cret");
        assert_eq!(fwd.authenticate(&good).await.as_deref(), Some("alice"));
        assert_eq!(
            fwd.authenticate(&good).await.as_deref(),
            Some("alice"),
            "cached"
        );
        assert_eq!(fwd.argon2_verifications(), 1);
        assert_eq!(fwd.authenticate(&basic("alice:wrong")).await, None);
        assert_eq!(fwd.authenticate(&basic("bob:s3cret")).await, None);
        assert_eq!(fwd.authenticate(&http::HeaderMap::new()).await, None);
        assert_eq!(
            fwd.argon2_verifications(),
            3,
            "an unknown user costs an argon2 check too: no timing oracle on user names"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refused_credentials_are_cached_for_a_minute() {
        let fwd = with_user("s3cret");
        let wrong = basic("alice:wrong");
        // At once and one after another: one argon2 verification for them all.
        let (a, b, c) = tokio::join!(
            fwd.authenticate(&wrong),
            fwd.authenticate(&wrong),
            fwd.authenticate(&wrong)
        );
        assert_eq!((a, b, c), (None, None, None));
        for _ in 0..5 {
            assert_eq!(fwd.authenticate(&wrong).await, None);
        }
        assert_eq!(fwd.argon2_verifications(), 1);
        // Another wrong password is another credential.
        assert_eq!(fwd.authenticate(&basic("alice:wrong2")).await, None);
        assert_eq!(fwd.argon2_verifications(), 2);
        // The right one is not refused by the cached failures, and is cached too.
        let good = basic("alice:s3cret");
        assert!(fwd.authenticate(&good).await.is_some());
        assert_eq!(fwd.argon2_verifications(), 3);
        tokio::time::advance(REFUSED_TTL + std::time::Duration::from_secs(1)).await;
        assert_eq!(fwd.authenticate(&wrong).await, None);
        assert_eq!(
            fwd.argon2_verifications(),
            4,
            "a refusal expires after a minute"
        );
        assert!(fwd.authenticate(&good).await.is_some());
        assert_eq!(fwd.argon2_verifications(), 4, "an acceptance lasts longer");
        tokio::time::advance(ACCEPTED_TTL).await;
        assert!(fwd.authenticate(&good).await.is_some());
        assert_eq!(fwd.argon2_verifications(), 5);
    }

    #[test]
    fn rules_decide_in_order() {
        let rule = |name: &str, allow: bool, hosts: Vec<HostMatch>, ports: Vec<u16>| AccessRule {
            name: name.into(),
            allow,
            hosts,
            ports,
            networks: Vec::new(),
        };
        let c = cfg(vec![
            rule(
                "no-ads",
                false,
                vec![HostMatch::Suffix(".ads.example".into())],
                vec![],
            ),
            rule(
                "local-dev",
                true,
                vec![HostMatch::Exact("localhost".into())],
                vec![8080],
            ),
        ]);
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            verdict(&c, &dest("x.ads.example", 443), &[public], true),
            Err("no-ads".into())
        );
        assert_eq!(
            verdict(&c, &dest("localhost", 8080), &[lo], true),
            Ok(vec![lo]),
            "an allow rule overrides the defaults"
        );
        assert_eq!(
            verdict(&c, &dest("localhost", 8081), &[lo], true),
            Err("connect_port".into())
        );
    }
}
