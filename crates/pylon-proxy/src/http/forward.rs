//! The forward proxy: absolute-form requests (`GET http://host/path`) and CONNECT
//! tunnels (HTTP/1.1 and HTTP/2), behind `Proxy-Authorization: Basic` (argon2 hashes)
//! and access rules. Non-public destinations (loopback, private, link-local, ...) are
//! denied unless allowed: the rule is checked against every address a name resolves to,
//! and only allowed addresses are connected to (no DNS-rebinding way around it).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pylon_config::model::{AccessRule, ForwardProxy};
use tokio::net::TcpStream;

use super::body::{RequestBody, ResponseBody};
use super::error::{ErrorKind, error_response};
use super::headers::{append_via, strip_hop_by_hop};
use super::pipeline::{ConnCtx, Exchange};
use crate::l4::relay::{self, Activity, RelayLimits};
use crate::observe::AccessRecord;
use crate::observe::access_log::millis;
use crate::runtime::ListenerRuntime;

static PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");
static PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Accepted credentials kept (as SHA-256 of the header value), so argon2 runs once per
/// credential rather than once per request.
const MAX_CACHED_CREDENTIALS: usize = 1024;

pub struct ForwardRuntime {
    pub config: ForwardProxy,
    accepted: Mutex<HashSet<[u8; 32]>>,
}

impl ForwardRuntime {
    pub fn new(config: ForwardProxy) -> ForwardRuntime {
        ForwardRuntime {
            config,
            accepted: Mutex::new(HashSet::new()),
        }
    }

    /// The authenticated user (`Some("")` when no authentication is configured), or
    /// `None` when the credentials are missing or wrong.
    fn authenticate(&self, headers: &http::HeaderMap) -> Option<Arc<str>> {
        if self.config.users.is_empty() {
            return Some(Arc::from(""));
        }
        let value = headers.get(&PROXY_AUTHORIZATION)?.to_str().ok()?;
        let (scheme, b64) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = BASE64.decode(b64.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        let digest: [u8; 32] =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes())
                .as_ref()
                .try_into()
                .ok()?;
        let known = self.config.users.iter().find(|u| u.name == user)?;
        let cached = self
            .accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&digest);
        if !cached {
            use argon2::PasswordVerifier as _;
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), known.password_hash.as_str())
                .ok()?;
            let mut accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
            if accepted.len() >= MAX_CACHED_CREDENTIALS {
                accepted.clear();
            }
            accepted.insert(digest);
        }
        Some(Arc::from(user))
    }
}

/// An argon2id hash (PHC string) of `password` with a random salt, for
/// `[listeners.forward] users`.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher as _;
    use aws_lc_rs::rand::SecureRandom as _;
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no randomness available".to_string())?;
    argon2::Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Addresses that are not on the public internet: the SSRF defaults deny them.
fn non_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                // 100.64.0.0/10 (carrier-grade NAT).
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => non_public(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (s[0] & 0xfe00) == 0xfc00 // unique local
                    || (s[0] & 0xffc0) == 0xfe80 // link-local
            }
        },
    }
}

/// Where a request wants to go.
struct Destination {
    host: String,
    port: u16,
}

/// The verdict on a destination: the addresses that may be connected to, or the name
/// of what denied it.
fn check(
    cfg: &ForwardProxy,
    dest: &Destination,
    addrs: &[IpAddr],
    connect: bool,
) -> Result<Vec<IpAddr>, String> {
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
            Some(r) => return Err(r.name.clone()),
            None => {
                if connect && !cfg.connect_ports.contains(&dest.port) {
                    return Err("connect_port".into());
                }
                if non_public(ip) && !cfg.allow_private {
                    return Err("private_address".into());
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

fn destination(req: &Request<Incoming>) -> Result<Destination, ErrorKind> {
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

async fn resolve(dest: &Destination) -> Result<Vec<IpAddr>, ErrorKind> {
    if let Ok(ip) = dest.host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let found: Vec<IpAddr> = tokio::net::lookup_host((dest.host.as_str(), dest.port))
        .await
        .map_err(|_| ErrorKind::ResolveFailed)?
        .map(|a| a.ip())
        .collect();
    if found.is_empty() {
        return Err(ErrorKind::ResolveFailed);
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
    mut req: Request<Incoming>,
    fwd: &ForwardRuntime,
    listener: &ListenerRuntime,
    ctx: &ConnCtx,
    ex: &mut Exchange,
) -> Result<Response<ResponseBody>, ErrorKind> {
    let cfg = &fwd.config;
    let Some(user) = fwd.authenticate(req.headers()) else {
        ex.error = Some(ErrorKind::ProxyAuthRequired);
        let mut resp = error_response(ErrorKind::ProxyAuthRequired);
        resp.headers_mut().insert(
            PROXY_AUTHENTICATE.clone(),
            HeaderValue::from_static("Basic realm=\"pylon\""),
        );
        return Ok(resp);
    };
    if !user.is_empty() {
        ex.user = Some(Arc::clone(&user));
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
        ex.error = Some(ErrorKind::Denied);
        return Ok(denied(&rule.name));
    }
    let addrs = resolve(&dest).await?;
    let allowed = match check(cfg, &dest, &addrs, is_connect) {
        Ok(a) => a,
        Err(rule) => {
            ex.error = Some(ErrorKind::Denied);
            tracing::info!(client = %ctx.client, destination = %format!("{}:{}", dest.host, dest.port), rule = %rule, "forward proxy: denied");
            return Ok(denied(&rule));
        }
    };
    let upstream = connect(&allowed, dest.port, cfg).await?;
    ex.upstream = upstream.peer_addr().ok();
    if is_connect {
        return Ok(tunnel(&mut req, upstream, cfg, ctx, ex, &dest, user));
    }
    forward_request(req, upstream, listener, ctx, cfg).await
}

/// CONNECT: answers 200 and relays bytes once the client's side is upgraded; logs one
/// line when the tunnel ends.
fn tunnel(
    req: &mut Request<Incoming>,
    upstream: TcpStream,
    cfg: &ForwardProxy,
    ctx: &ConnCtx,
    ex: &mut Exchange,
    dest: &Destination,
    user: Arc<str>,
) -> Response<ResponseBody> {
    let h2 = req.version() == Version::HTTP_2;
    let client_upgrade = hyper::upgrade::on(req);
    let limits = RelayLimits {
        idle: cfg.tunnel_idle_timeout,
        lifetime: None,
        end: crate::runtime::Ending::new(
            ctx.runtime
                .load()
                .listener(&ctx.listener)
                .map(|l| l.life.clone())
                .as_ref(),
            &ctx.shared.stop,
        ),
    };
    let shared = Arc::clone(&ctx.shared);
    let stats = Arc::clone(&ctx.stats);
    let in_flight = ctx.state.request_started(h2);
    // The client connection counts as open while the tunnel lives.
    let conn = ctx.guard.clone();
    let listener_name = Arc::clone(&ctx.listener);
    let client_addr = ctx.client;
    let record = shared.logger.enabled().then(|| AccessRecord {
        time: SystemTime::now(),
        listener: Arc::clone(&ctx.listener),
        client: ctx.client,
        method: "CONNECT".into(),
        authority: format!("{}:{}", dest.host, dest.port),
        path: String::new(),
        protocol: if h2 { "HTTP/2" } else { "HTTP/1.1" },
        status: 200,
        bytes_in: 0,
        bytes_out: 0,
        duration_ms: 0.0,
        route: None,
        cluster: None,
        upstream: ex.upstream,
        upstream_ms: None,
        request_id: ex.request_id.clone(),
        client_cert: None,
        user: (!user.is_empty()).then_some(user),
        error: None,
    });
    ex.logged_by_tunnel = true;
    tokio::spawn(async move {
        let started = Instant::now();
        let Ok(client) = client_upgrade.await else {
            return;
        };
        shared
            .metrics
            .tunnels_active
            .fetch_add(1, Ordering::Relaxed);
        shared.metrics.tunnels_total.fetch_add(1, Ordering::Relaxed);
        stats.tunnels_active.fetch_add(1, Ordering::Relaxed);
        let activity = Activity::default();
        let end = relay::copy(TokioIo::new(client), upstream, limits, &activity).await;
        shared
            .metrics
            .tunnels_active
            .fetch_sub(1, Ordering::Relaxed);
        stats.tunnels_active.fetch_sub(1, Ordering::Relaxed);
        if end.by_proxy() {
            tracing::info!(
                listener = %listener_name,
                client = %client_addr,
                reason = end.as_str(),
                "CONNECT tunnel closed by the proxy"
            );
        }
        if let Some(mut r) = record {
            r.bytes_in = activity.up.load(Ordering::Relaxed);
            r.bytes_out = activity.down.load(Ordering::Relaxed);
            r.duration_ms = millis(started.elapsed());
            if !matches!(end, relay::RelayEnd::Closed) {
                r.error = Some(end.as_str());
            }
            shared.logger.log(r);
        }
        drop(in_flight);
        drop(conn);
    });
    Response::new(ResponseBody::empty())
}

/// An absolute-form request: sent in origin form on a connection of its own.
async fn forward_request(
    req: Request<Incoming>,
    upstream: TcpStream,
    listener: &ListenerRuntime,
    ctx: &ConnCtx,
    cfg: &ForwardProxy,
) -> Result<Response<ResponseBody>, ErrorKind> {
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
    if cfg.strip_client_headers {
        h.remove(header::FORWARDED);
        h.remove(HeaderName::from_static("x-forwarded-for"));
        h.remove(header::VIA);
    }
    super::proxy::add_client_forwarding(h, listener, ctx, Some(&authority), downstream_version);
    h.insert(header::HOST, authority);
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|p| Uri::from(p.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    let limit = listener.config.limits.max_request_body;
    let body = if http_body::Body::is_end_stream(&body) {
        RequestBody::Empty
    } else {
        RequestBody::Stream {
            inner: body,
            limit,
            meter: Arc::default(),
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(upstream))
        .await
        .map_err(|_| ErrorKind::UpstreamReset)?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|_| ErrorKind::UpstreamReset)?;
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    if listener.config.headers.via {
        append_via(&mut rparts.headers, rparts.version);
    }
    rparts.version = downstream_version;
    if rparts.status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ErrorKind::UpstreamInvalid);
    }
    Ok(Response::from_parts(rparts, ResponseBody::stream(rbody)))
}

#[cfg(test)]
mod tests {
    use super::*;
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
        }
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
            check(&c, &dest("example.com", 443), &[public], true),
            Ok(vec![public])
        );
        assert_eq!(
            check(&c, &dest("example.com", 22), &[public], true),
            Err("connect_port".into())
        );
        assert_eq!(
            check(&c, &dest("example.com", 8080), &[public], false),
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
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert_eq!(
                check(&c, &dest("x", 443), &[ip], true),
                Err("private_address".into()),
                "{private}"
            );
        }
        // A name resolving to a public and a private address is denied (rebinding).
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(check(&c, &dest("x", 443), &[public, lo], true).is_err());
    }

    #[test]
    fn passwords_hash_and_verify() {
        let c = ForwardProxy {
            users: vec![pylon_config::model::ProxyUser {
                name: "alice".into(),
                password_hash: hash_password("s3cret").unwrap(),
            }],
            ..cfg(Vec::new())
        };
        let fwd = ForwardRuntime::new(c);
        let header = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(&PROXY_AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        let good = format!("Basic {}", BASE64.encode("alice:s3cret"));
        assert_eq!(fwd.authenticate(&header(&good)).as_deref(), Some("alice"));
        assert_eq!(
            fwd.authenticate(&header(&good)).as_deref(),
            Some("alice"),
            "cached"
        );
        let bad = format!("Basic {}", BASE64.encode("alice:wrong"));
        assert_eq!(fwd.authenticate(&header(&bad)), None);
        let nobody = format!("Basic {}", BASE64.encode("bob:s3cret"));
        assert_eq!(fwd.authenticate(&header(&nobody)), None);
        assert_eq!(fwd.authenticate(&http::HeaderMap::new()), None);
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
            check(&c, &dest("x.ads.example", 443), &[public], true),
            Err("no-ads".into())
        );
        assert_eq!(
            check(&c, &dest("localhost", 8080), &[lo], true),
            Ok(vec![lo]),
            "an allow rule overrides the defaults"
        );
        assert_eq!(
            check(&c, &dest("localhost", 8081), &[lo], true),
            Err("connect_port".into())
        );
    }
}
