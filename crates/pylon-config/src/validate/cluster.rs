//! Cluster validation: endpoints, balancing, upstream TLS, health checks and resilience.

use std::collections::HashSet;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::entry::Dropped;
use super::{Ctx, Problems, check_name, duration, host_match, http_token, size, socket_addr};
use crate::model::*;
use crate::raw::*;
use crate::units::parse_duration;

/// A cluster's `tls` table; `dropped` is the cluster's (paths start with `tls.`).
fn upstream_tls(
    t: Spanned<RawUpstreamTls>,
    dropped: &Dropped,
    ctx: &Ctx<'_, '_>,
    p: &mut Problems,
) -> UpstreamTls {
    let span = t.span();
    let t = t.into_inner();
    let client_cert = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => Some(CertificateFiles {
            cert: ctx.file_ref(c),
            key: ctx.file_ref(k),
            server_names: Vec::new(),
        }),
        (None, None) => None,
        _ if dropped.has("tls.cert") || dropped.has("tls.key") => None,
        _ => {
            p.span(span, "a client certificate needs both `cert` and `key`");
            None
        }
    };
    if let Some(n) = &t.server_name
        && !matches!(host_match(n.get_ref()), Ok(HostMatch::Exact(_)))
    {
        p.at(n, format!("invalid server_name \"{}\"", n.get_ref()));
    }
    UpstreamTls {
        ca: t.ca.as_ref().map(|c| ctx.file_ref(c)),
        server_name: t.server_name.map(|s| s.into_inner()),
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
        client_cert,
    }
}

/// A cluster's health check; when `kind_dropped`, its `kind` was written but left out
/// (already reported), so keys are not judged against the default kind.
fn health_check(h: Spanned<RawHealthCheck>, kind_dropped: bool, p: &mut Problems) -> HealthCheck {
    let h = h.into_inner();
    let kind_name = h.kind.as_ref().map(|k| k.get_ref().as_str());
    let http_keys = h.method.is_some()
        || h.path.is_some()
        || h.host.is_some()
        || h.expected_statuses.is_some()
        || h.body_contains.is_some();
    let udp_keys = h.send.is_some() || h.send_hex.is_some() || h.expect.is_some();
    if udp_keys
        && !kind_dropped
        && kind_name != Some("udp")
        && let Some(k) = h
            .send
            .as_ref()
            .or(h.send_hex.as_ref())
            .or(h.expect.as_ref())
    {
        p.at(k, "send, send_hex and expect need kind = \"udp\"");
    }
    if let Some(sv) = &h.service
        && !kind_dropped
        && kind_name != Some("grpc")
    {
        p.at(sv, "service needs kind = \"grpc\"");
    }
    let kind = match kind_name {
        Some("grpc") => {
            if http_keys && let Some(k) = &h.kind {
                p.at(
                    k,
                    "method, path, host, expected_statuses and body_contains need kind = \"http\"",
                );
            }
            HealthCheckKind::Grpc {
                service: h
                    .service
                    .as_ref()
                    .map(|s| s.get_ref().clone())
                    .unwrap_or_default(),
            }
        }
        Some("udp") => {
            if http_keys && let Some(k) = &h.kind {
                p.at(
                    k,
                    "method, path, host, expected_statuses and body_contains need kind = \"http\"",
                );
            }
            let send = match (&h.send, &h.send_hex) {
                (Some(_), Some(x)) => {
                    p.at(x, "give `send` or `send_hex`, not both");
                    Vec::new()
                }
                (Some(t), None) => t.get_ref().as_bytes().to_vec(),
                (None, Some(x)) => hex(x.get_ref()).unwrap_or_else(|| {
                    p.at(x, "send_hex must be an even number of hex digits");
                    Vec::new()
                }),
                (None, None) => b"ping".to_vec(),
            };
            HealthCheckKind::Udp {
                send,
                expect: h.expect.as_ref().map(|e| e.get_ref().clone()),
            }
        }
        Some("tcp") => {
            if http_keys && let Some(k) = &h.kind {
                p.at(
                    k,
                    "method, path, host, expected_statuses and body_contains need kind = \"http\"",
                );
            }
            HealthCheckKind::Tcp
        }
        None | Some("http") => {
            let path = h
                .path
                .as_ref()
                .map_or("/".to_owned(), |s| s.get_ref().clone());
            if let Some(s) = &h.path
                && !s.get_ref().starts_with('/')
            {
                p.at(s, "path must start with '/'");
            }
            let method = h
                .method
                .as_ref()
                .map_or("GET".to_owned(), |m| m.get_ref().to_ascii_uppercase());
            if let Some(m) = &h.method
                && !http_token(m.get_ref())
            {
                p.at(m, format!("invalid method \"{}\"", m.get_ref()));
            }
            let expected_statuses = h
                .expected_statuses
                .as_ref()
                .map_or(Vec::new(), |v| v.get_ref().clone());
            if let Some(v) = &h.expected_statuses
                && v.get_ref().iter().any(|s| !(100..=599).contains(s))
            {
                p.at(v, "expected statuses must be between 100 and 599");
            }
            HealthCheckKind::Http {
                method,
                path,
                host: h.host.as_ref().map(|s| s.get_ref().clone()),
                expected_statuses,
                body_contains: h.body_contains.clone(),
            }
        }
        Some(other) => {
            if let Some(k) = &h.kind {
                p.at(
                    k,
                    format!(
                        "unknown health check kind \"{other}\", expected tcp, http, grpc or udp"
                    ),
                );
            }
            HealthCheckKind::Tcp
        }
    };
    let threshold = |v: &Option<Spanned<u32>>, default: u32, p: &mut Problems| match v {
        Some(n) if *n.get_ref() == 0 => {
            p.at(n, "a threshold must be at least 1");
            default
        }
        Some(n) => *n.get_ref(),
        None => default,
    };
    let interval = duration(&h.interval, Duration::from_secs(5), p);
    let timeout = duration(&h.timeout, Duration::from_secs(2), p);
    let jitter = match &h.jitter {
        None => Duration::ZERO,
        Some(j) => parse_duration(j.get_ref()).unwrap_or_else(|e| {
            p.at(j, e);
            Duration::ZERO
        }),
    };
    HealthCheck {
        kind,
        interval,
        timeout,
        jitter,
        healthy_threshold: threshold(&h.healthy_threshold, 2, p),
        unhealthy_threshold: threshold(&h.unhealthy_threshold, 3, p),
    }
}

/// The cluster written at `span`; `dropped` lists its keys left out because of errors
/// already reported.
pub(super) fn cluster(
    r: RawCluster,
    span: Range<usize>,
    dropped: &Dropped,
    ctx: &Ctx<'_, '_>,
    names: &mut HashSet<String>,
    p: &mut Problems,
) -> Option<Cluster> {
    let ok = match &r.name {
        Some(n) => check_name(n, "cluster", names, p),
        None => {
            if !dropped.has("name") {
                p.span(
                    span.clone(),
                    "missing field `name`: every cluster needs a name",
                );
            }
            false
        }
    };
    let mut endpoints = Vec::new();
    let discovery = r.discovery.as_ref().and_then(|d| etcd_discovery(d, p));
    match &r.endpoints {
        _ if r.discovery.is_some() => {}
        Some(e) if e.get_ref().is_empty() && !dropped.has("endpoints") => {
            p.at(e, "a cluster needs at least one endpoint");
        }
        None if !dropped.has("endpoints") => p.span(
            span,
            "missing field `endpoints`: a cluster needs at least one endpoint, such as endpoints = [\"127.0.0.1:8080\"]",
        ),
        _ => {}
    }
    for e in r.endpoints.iter().flat_map(|e| e.get_ref()) {
        let raw = e.get_ref();
        let weight = raw.weight.unwrap_or(1);
        if weight == 0 || weight > 10_000 {
            p.at(e, "endpoint weight must be between 1 and 10000");
        }
        if raw.srv && raw.weight.is_some() {
            p.at(
                e,
                "an srv endpoint takes its weights from the SRV records: remove `weight`",
            );
        }
        match endpoint_address(raw) {
            Ok(address) => {
                if endpoints.iter().any(|x: &Endpoint| x.address == address) {
                    p.at(e, format!("duplicate endpoint {address}"));
                }
                endpoints.push(Endpoint { address, weight });
            }
            Err(msg) => p.at(e, msg),
        }
    }
    if let Some(d) = &r.discovery
        && endpoints.iter().any(|e| e.address.is_dns())
    {
        p.at(
            d,
            "`discovery` takes endpoints from etcd beside fixed IP addresses, not beside DNS names",
        );
    }
    let dns = r.dns.map(|d| dns(d, p)).unwrap_or_default();
    let protocol = match r.protocol.as_ref() {
        None => UpstreamProtocol::Http1,
        Some(s) => match s.get_ref().as_str() {
            "http1" => UpstreamProtocol::Http1,
            "h2c" => UpstreamProtocol::H2c,
            "h2" => UpstreamProtocol::H2,
            "h3" => UpstreamProtocol::H3,
            other => {
                p.at(
                    s,
                    format!(
                        "unknown upstream protocol \"{other}\", expected one of: http1, h2c, h2, h3"
                    ),
                );
                UpstreamProtocol::Http1
            }
        },
    };
    if protocol == UpstreamProtocol::H2
        && r.tls.is_none()
        && !dropped.has("tls")
        && let Some(s) = &r.protocol
    {
        p.at(
            s,
            "protocol \"h2\" is HTTP/2 over TLS: add a [clusters.tls] table (or use h2c)",
        );
    }
    if protocol == UpstreamProtocol::H3
        && let Some(s) = &r.protocol
    {
        if r.tls.is_none() && !dropped.has("tls") {
            p.at(
                s,
                "protocol \"h3\" is HTTP/3 over QUIC, always TLS: add a [clusters.tls] table",
            );
        }
        if r.proxy_protocol.is_some() {
            p.at(
                s,
                "protocol \"h3\" cannot send PROXY protocol headers (QUIC has none)",
            );
        }
    }
    if protocol == UpstreamProtocol::H2c
        && let (Some(s), Some(_)) = (&r.protocol, &r.tls)
    {
        p.at(
            s,
            "protocol \"h2c\" is cleartext; with `tls` use protocol \"h2\" (or http1)",
        );
    }
    let tls = r.tls.map(|t| upstream_tls(t, dropped, ctx, p));
    let kind_dropped = dropped.has("health_check.kind");
    let health_check = r.health_check.map(|h| health_check(h, kind_dropped, p));
    let response_timeout = duration(&r.response_timeout, DEFAULT_RESPONSE_TIMEOUT, p);
    let retry = r.retry.map(|t| {
        if let Some(st) = &t.statuses
            && st.get_ref().iter().any(|s| !(500..=599).contains(s))
        {
            p.at(st, "retried statuses must be 5xx");
        }
        let budget_percent = match &t.budget_percent {
            Some(n) if *n.get_ref() > 100 => {
                p.at(n, "budget_percent is a percentage: 0 to 100");
                20
            }
            Some(n) => *n.get_ref(),
            None => 20,
        };
        Retry {
            max_retries: t.max_retries.unwrap_or(2),
            statuses: t
                .statuses
                .as_ref()
                .map_or(vec![502, 503, 504], |s| s.get_ref().clone()),
            on_reset: t.on_reset.unwrap_or(true),
            per_try_timeout: duration(&t.per_try_timeout, response_timeout, p),
            backoff_base: duration(&t.backoff_base, Duration::from_millis(25), p),
            backoff_max: duration(&t.backoff_max, Duration::from_millis(250), p),
            budget_percent,
            budget_min_concurrent: t.budget_min_concurrent.unwrap_or(3),
            max_body_bytes: size(&t.max_body_bytes, 64 * 1024, p),
        }
    });
    let outlier_detection = r.outlier_detection.map(|o| {
        let consecutive_failures = match &o.consecutive_failures {
            Some(n) if *n.get_ref() == 0 => {
                p.at(n, "consecutive_failures must be at least 1");
                5
            }
            Some(n) => *n.get_ref(),
            None => 5,
        };
        let max_ejection_percent = match &o.max_ejection_percent {
            Some(n) if *n.get_ref() > 100 => {
                p.at(n, "max_ejection_percent is a percentage: 0 to 100");
                50
            }
            Some(n) => *n.get_ref(),
            None => 50,
        };
        OutlierDetection {
            consecutive_failures,
            base_ejection_time: duration(&o.base_ejection_time, Duration::from_secs(30), p),
            max_ejection_percent,
        }
    });
    let lb = match r.lb.as_ref() {
        None => LbPolicy::RoundRobin,
        Some(s) => LbPolicy::from_name(s.get_ref()).unwrap_or_else(|| {
            p.at(
                s,
                format!(
                    "unknown lb policy \"{}\", expected one of: {}",
                    s.get_ref(),
                    LbPolicy::NAMES.join(", ")
                ),
            );
            LbPolicy::RoundRobin
        }),
    };
    let hash_key = match r.hash_key.as_ref() {
        None => HashKey::ClientIp,
        Some(s) => {
            if !lb.uses_key() && !dropped.has("lb") {
                p.at(
                    s,
                    "`hash_key` only applies to lb = \"ring_hash\" or \"maglev\"",
                );
            }
            let v = s.get_ref();
            let named = |prefix: &str| {
                v.strip_prefix(prefix)
                    .filter(|n| http_token(n))
                    .map(str::to_owned)
            };
            if v == "client_ip" {
                HashKey::ClientIp
            } else if v == "path" {
                HashKey::Path
            } else if v == "cache_key" {
                HashKey::CacheKey
            } else if let Some(n) = named("header:") {
                HashKey::Header(n.to_ascii_lowercase())
            } else if let Some(n) = named("cookie:") {
                HashKey::Cookie(n)
            } else if let Some(n) = named("query:") {
                HashKey::Query(n)
            } else {
                p.at(
                    s,
                    format!(
                        "invalid hash_key \"{v}\", expected client_ip, path, cache_key, header:NAME, cookie:NAME or query:NAME"
                    ),
                );
                HashKey::ClientIp
            }
        }
    };
    let host_header = match r.host_header.as_ref() {
        None => HostHeader::Preserve,
        Some(s) => match s.get_ref().as_str() {
            "preserve" => HostHeader::Preserve,
            "endpoint" => HostHeader::Endpoint,
            other => {
                p.at(
                    s,
                    format!("unknown host_header \"{other}\", expected one of: preserve, endpoint"),
                );
                HostHeader::Preserve
            }
        },
    };
    let dp = Pool::default();
    let pool = match r.pool {
        None => dp,
        Some(rp) => Pool {
            idle_timeout: duration(&rp.idle_timeout, dp.idle_timeout, p),
            max_idle_per_endpoint: rp.max_idle_per_endpoint.unwrap_or(dp.max_idle_per_endpoint),
            warm_connections: match &rp.warm_connections {
                Some(n) if *n.get_ref() > 1024 => {
                    p.at(n, "warm_connections is at most 1024 per endpoint");
                    0
                }
                Some(n) => *n.get_ref(),
                None => 0,
            },
            tcp: super::tcp::tcp_options(&rp.tcp_keepalive, &rp.tcp_user_timeout, p),
            max_h2_connections: match &rp.max_h2_connections {
                Some(n) if !(1..=1024).contains(n.get_ref()) => {
                    p.at(n, "max_h2_connections must be from 1 to 1024");
                    dp.max_h2_connections
                }
                Some(n) => *n.get_ref(),
                None => dp.max_h2_connections,
            },
            h2_keepalive_interval: super::tcp::duration_or_off(
                &rp.h2_keepalive_interval,
                dp.h2_keepalive_interval,
                Duration::from_secs(24 * 3600),
                p,
            ),
            h2_keepalive_timeout: duration(&rp.h2_keepalive_timeout, dp.h2_keepalive_timeout, p),
        },
    };
    ok.then(|| Cluster {
        name: r.name.map(Spanned::into_inner).unwrap_or_default(),
        endpoints,
        protocol,
        lb,
        hash_key,
        connect_timeout: duration(&r.connect_timeout, DEFAULT_CONNECT_TIMEOUT, p),
        response_timeout,
        host_header,
        pool,
        tls,
        health_check,
        outlier_detection,
        retry,
        circuit_breaker: r
            .circuit_breaker
            .map(|b| CircuitBreaker {
                max_connections: b.max_connections,
                max_pending_requests: b.max_pending_requests,
                max_requests: b.max_requests,
                max_retries: b.max_retries,
            })
            .unwrap_or_default(),
        panic_threshold: match &r.panic_threshold {
            Some(n) if *n.get_ref() > 100 => {
                p.at(n, "panic_threshold is a percentage: 0 to 100");
                0
            }
            Some(n) => *n.get_ref(),
            None => 0,
        },
        dns,
        discovery,
        proxy_protocol: super::l4::proxy_protocol_out(&r.proxy_protocol, p),
        h3_fallback: match &r.h3_fallback {
            None => None,
            Some(_) if protocol != UpstreamProtocol::H3 => {
                if let Some(f) = &r.h3_fallback {
                    p.at(
                        f,
                        "`h3_fallback` applies only to clusters with protocol = \"h3\"",
                    );
                }
                None
            }
            Some(f) => match f.get_ref().as_str() {
                "h2" => Some(UpstreamProtocol::H2),
                "http1" => Some(UpstreamProtocol::Http1),
                other => {
                    p.at(
                        f,
                        format!("unknown h3_fallback \"{other}\", expected h2 or http1"),
                    );
                    None
                }
            },
        },
        sticky: r.sticky.map(|st| {
            let cookie = st
                .cookie
                .as_ref()
                .map_or("pylon_sticky".to_owned(), |c| c.get_ref().clone());
            if let Some(c) = &st.cookie
                && !http_token(c.get_ref())
            {
                p.at(c, format!("invalid cookie name \"{}\"", c.get_ref()));
            }
            let same_site = match st.same_site.as_ref().map(|v| v.get_ref().as_str()) {
                None => Some("Lax".to_owned()),
                Some(v @ ("Strict" | "Lax" | "None")) => Some(v.to_owned()),
                Some(other) => {
                    if let Some(v) = &st.same_site {
                        p.at(
                            v,
                            format!("unknown same_site \"{other}\", expected Strict, Lax or None"),
                        );
                    }
                    None
                }
            };
            Sticky {
                cookie,
                ttl: st
                    .ttl
                    .as_ref()
                    .map(|t| duration(&Some(t.clone()), Duration::from_secs(3600), p)),
                path: st.path.clone().unwrap_or_else(|| "/".to_owned()),
                secure: st.secure.unwrap_or(false),
                http_only: st.http_only.unwrap_or(true),
                same_site,
                secret: st.secret.clone(),
            }
        }),
        slow_start: r
            .slow_start
            .as_ref()
            .map(|s| duration(&Some(s.clone()), Duration::from_secs(30), p)),
    })
}

/// `ip:port`, `host:port` (resolved through DNS) or an SRV name.
fn endpoint_address(raw: &RawEndpoint) -> Result<EndpointAddress, String> {
    let a = raw.address.as_str();
    if raw.srv {
        return if dns_name(a) {
            Ok(EndpointAddress::Srv { name: a.to_owned() })
        } else {
            Err(format!(
                "invalid SRV name \"{a}\": expected a DNS name such as _http._tcp.example.internal"
            ))
        };
    }
    if let Ok(s) = socket_addr(a) {
        return Ok(EndpointAddress::Socket(s));
    }
    let invalid = || {
        format!(
            "invalid address \"{a}\": expected IP:port or host:port such as 127.0.0.1:8080, [::1]:8080 or backend.internal:8080"
        )
    };
    let (host, port) = a.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if port == 0 || !dns_name(host) || host.parse::<std::net::IpAddr>().is_ok() {
        return Err(invalid());
    }
    Ok(EndpointAddress::Host {
        name: host.to_ascii_lowercase(),
        port,
    })
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_` (SRV), at most 63
/// bytes each and 253 in all, with an optional final dot.
fn dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        // An all-numeric name would be a mistyped IP address.
        && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

fn dns(d: Spanned<RawDns>, p: &mut Problems) -> Dns {
    let defaults = Dns::default();
    let d = d.into_inner();
    let mut resolvers = Vec::new();
    for r in d.resolvers.iter().flatten() {
        let v = r.get_ref();
        // A bare IP means port 53.
        match v
            .parse::<std::net::IpAddr>()
            .map(|ip| std::net::SocketAddr::new(ip, 53))
            .or_else(|_| socket_addr(v))
        {
            Ok(a) => resolvers.push(a),
            Err(_) => p.at(
                r,
                format!("invalid resolver \"{v}\": expected IP or IP:port such as 10.0.0.2:53"),
            ),
        }
    }
    let family = match d.family.as_ref() {
        None => defaults.family,
        Some(f) => match f.get_ref().as_str() {
            "any" => IpFamily::Any,
            "ipv4" => IpFamily::V4,
            "ipv6" => IpFamily::V6,
            other => {
                p.at(
                    f,
                    format!("unknown family \"{other}\", expected one of: any, ipv4, ipv6"),
                );
                defaults.family
            }
        },
    };
    let min_ttl = duration(&d.min_ttl, defaults.min_ttl, p);
    let max_ttl = duration(&d.max_ttl, defaults.max_ttl, p);
    if let Some(m) = &d.max_ttl
        && max_ttl < min_ttl
    {
        p.at(m, "max_ttl must not be shorter than min_ttl");
    }
    let timeout = duration(&d.timeout, defaults.timeout, p);
    if let Some(t) = &d.timeout
        && timeout.is_zero()
    {
        p.at(t, "timeout must be greater than zero");
    }
    Dns {
        resolvers,
        family,
        min_ttl,
        max_ttl,
        timeout,
    }
}

/// `"0a1B"` → `[0x0a, 0x1b]`; `None` unless an even number of hex digits (spaces allowed).
fn hex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// `discovery = "etcd://HOST:PORT[,HOST:PORT...]/PREFIX"`.
fn etcd_discovery(d: &Spanned<String>, p: &mut Problems) -> Option<EtcdDiscovery> {
    let url = d.get_ref();
    let parsed = url.strip_prefix("etcd://").and_then(|rest| {
        let (hosts, prefix) = rest.split_once('/')?;
        let etcd: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        let prefix = prefix.trim_matches('/');
        (!etcd.is_empty() && etcd.iter().all(|h| h.contains(':')) && !prefix.is_empty())
            .then(|| (etcd, format!("/{prefix}/")))
    });
    match parsed {
        Some((etcd, prefix)) => Some(EtcdDiscovery {
            url: url.clone(),
            etcd,
            prefix,
        }),
        None => {
            p.at(
                d,
                "`discovery` must be etcd://HOST:PORT[,HOST:PORT...]/PREFIX, e.g. etcd://127.0.0.1:2379/services/api",
            );
            None
        }
    }
}
