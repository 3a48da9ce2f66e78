//! Layer 4 listener validation (`tcp` and `udp`): cluster, SNI routes, relay limits;
//! and the PROXY protocol settings of every listener. Keys that mean something only
//! for one kind of listener are refused on the other, with the reason.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::entry::Dropped;
use super::{Problems, duration, host_match};
use crate::model::*;
use crate::raw::*;

/// Default idle timeout of a TCP relay (as NGINX `proxy_timeout`).
const TCP_IDLE: Duration = Duration::from_secs(600);
/// Default idle expiry of a UDP session.
const UDP_IDLE: Duration = Duration::from_secs(60);
const MAX_CONNECTIONS: u64 = 10_000;

/// The L4 part of a listener; `clusters` collects the cluster names it refers to (with
/// their spans) so they can be checked once clusters are known. Problems of the
/// listener as a whole are reported at `name_span`; `dropped` lists its keys left out
/// because of errors already reported.
pub(super) fn l4_listener(
    r: &RawListener,
    protocol: ListenerProtocol,
    name_span: &Range<usize>,
    dropped: &Dropped,
    clusters: &mut Vec<(Range<usize>, String)>,
    p: &mut Problems,
) -> Option<L4Listener> {
    if !matches!(protocol, ListenerProtocol::Tcp | ListenerProtocol::Udp) {
        let l4_only: [(&str, Option<Range<usize>>); 6] = [
            ("cluster", r.cluster.as_ref().map(|s| s.span())),
            (
                "sni_routes",
                r.sni_routes
                    .as_ref()
                    .and_then(|v| v.first())
                    .map(|s| s.span()),
            ),
            ("max_lifetime", r.max_lifetime.as_ref().map(|s| s.span())),
            (
                "max_connections",
                r.max_connections.as_ref().map(|s| s.span()),
            ),
            (
                "inspect_timeout",
                r.inspect_timeout.as_ref().map(|s| s.span()),
            ),
            ("splice", r.splice.as_ref().map(|s| s.span())),
        ];
        for (key, span) in l4_only {
            if let Some(span) = span {
                p.span(
                    span,
                    format!(
                        "`{key}` applies only to tcp and udp listeners{}",
                        if protocol.is_http() {
                            "; HTTP listeners route with [[routes]]"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
        return None;
    }
    let http_only: [(&str, Option<Range<usize>>); 13] = [
        ("send_timeout", r.send_timeout.as_ref().map(|s| s.span())),
        (
            "header_read_timeout",
            r.header_read_timeout.as_ref().map(|s| s.span()),
        ),
        (
            "max_header_bytes",
            r.max_header_bytes.as_ref().map(|s| s.span()),
        ),
        ("max_headers", r.max_headers.as_ref().map(|s| s.span())),
        ("max_uri_bytes", r.max_uri_bytes.as_ref().map(|s| s.span())),
        (
            "max_request_body",
            r.max_request_body.as_ref().map(|s| s.span()),
        ),
        (
            "max_concurrent_streams",
            r.max_concurrent_streams.as_ref().map(|s| s.span()),
        ),
        (
            "h2_max_reset_streams",
            r.h2_max_reset_streams.as_ref().map(|s| s.span()),
        ),
        (
            "h2_max_error_resets",
            r.h2_max_error_resets.as_ref().map(|s| s.span()),
        ),
        ("request_id", r.request_id.as_ref().map(|s| s.span())),
        ("x_forwarded", r.x_forwarded.map(|_| name_span.clone())),
        ("forwarded", r.forwarded.map(|_| name_span.clone())),
        ("via", r.via.map(|_| name_span.clone())),
    ];
    for (key, span) in http_only {
        if let Some(span) = span {
            p.span(
                span,
                format!("`{key}` applies only to http and https listeners"),
            );
        }
    }
    let cluster = r.cluster.as_ref().map(|c| {
        clusters.push((c.span(), c.get_ref().clone()));
        c.get_ref().clone()
    });
    let mut sni_routes = Vec::new();
    for sr in r.sni_routes.iter().flatten() {
        if protocol == ListenerProtocol::Udp {
            p.at(sr, "`sni_routes` applies only to tcp listeners");
            break;
        }
        let raw = sr.get_ref();
        let mut server_names = Vec::new();
        if let Some(names) = &raw.server_names {
            for n in &names.get_ref().0 {
                match host_match(n) {
                    Ok(HostMatch::Any) => {}
                    Ok(m) => server_names.push(m),
                    Err(e) => p.at(names, e),
                }
            }
        }
        let alpn: Vec<String> = raw
            .alpn
            .as_ref()
            .map(|a| a.get_ref().0.clone())
            .unwrap_or_default();
        clusters.push((raw.cluster.span(), raw.cluster.get_ref().clone()));
        sni_routes.push(SniRoute {
            server_names,
            alpn,
            cluster: raw.cluster.get_ref().clone(),
        });
    }
    if sni_routes.is_empty()
        && cluster.is_none()
        && !dropped.has("cluster")
        && !dropped.has("sni_routes")
    {
        p.span(
            name_span.clone(),
            format!(
                "a {} listener needs `cluster` (or `sni_routes`)",
                protocol.as_str()
            ),
        );
    }
    if !sni_routes.is_empty()
        && let Some(t) = &r.tls
    {
        p.at(
            t,
            "`sni_routes` pass TLS through untouched; a listener with `tls` terminates it: choose one",
        );
    }
    if protocol == ListenerProtocol::Udp
        && let Some(t) = &r.tls
    {
        p.at(t, "`tls` does not apply to udp listeners");
    }
    let max_connections = match &r.max_connections {
        Some(n) if *n.get_ref() == 0 => {
            p.at(n, "max_connections must be at least 1");
            MAX_CONNECTIONS
        }
        Some(n) => *n.get_ref(),
        None => MAX_CONNECTIONS,
    };
    let idle_default = if protocol == ListenerProtocol::Udp {
        UDP_IDLE
    } else {
        TCP_IDLE
    };
    Some(L4Listener {
        cluster,
        sni_routes,
        idle_timeout: duration(&r.idle_timeout, idle_default, p),
        max_lifetime: r
            .max_lifetime
            .as_ref()
            .map(|_| duration(&r.max_lifetime, Duration::ZERO, p)),
        max_connections,
        inspect_timeout: duration(&r.inspect_timeout, Duration::from_secs(5), p),
        splice: r.splice.as_ref().is_none_or(|s| *s.get_ref()),
    })
}

pub(super) fn proxy_protocol_in(
    r: &Option<Spanned<RawProxyProtocolIn>>,
    protocol: ListenerProtocol,
    p: &mut Problems,
) -> Option<ProxyProtocolIn> {
    let r = r.as_ref()?;
    if protocol == ListenerProtocol::Udp {
        p.at(
            r,
            "`proxy_protocol` applies to tcp, http and https listeners",
        );
        return None;
    }
    let raw = r.get_ref();
    let mut trusted = Vec::new();
    for t in &raw.trusted.get_ref().0 {
        match t.parse::<IpNet>() {
            Ok(n) => trusted.push(n),
            Err(e) => p.at(&raw.trusted, e),
        }
    }
    if raw.trusted.get_ref().0.is_empty() {
        p.at(
            &raw.trusted,
            "list the sources allowed to send PROXY headers, e.g. trusted = [\"10.0.0.0/8\"]",
        );
    }
    Some(ProxyProtocolIn { trusted })
}

/// A cluster's `proxy_protocol`: `"v1"` or `"v2"`.
pub(super) fn proxy_protocol_out(
    r: &Option<Spanned<String>>,
    p: &mut Problems,
) -> Option<ProxyProtocolVersion> {
    let v = r.as_ref()?;
    match v.get_ref().as_str() {
        "v1" => Some(ProxyProtocolVersion::V1),
        "v2" => Some(ProxyProtocolVersion::V2),
        other => {
            p.at(
                v,
                format!("unknown proxy_protocol \"{other}\", expected \"v1\" or \"v2\""),
            );
            None
        }
    }
}

/// A listener's `[listeners.forward]`: access rules, users, anonymity.
pub(super) fn forward(
    r: &Option<Spanned<RawForward>>,
    protocol: ListenerProtocol,
    caches: &std::collections::HashSet<String>,
    p: &mut Problems,
) -> Option<ForwardProxy> {
    let f = r.as_ref()?;
    if !protocol.is_http() {
        p.at(f, "`forward` applies to http and https listeners");
        return None;
    }
    let raw = f.get_ref();
    let mut rules = Vec::new();
    let mut names = std::collections::HashSet::new();
    for rule in raw.rules.iter().flatten() {
        let rr = rule.get_ref();
        if !names.insert(rr.name.get_ref().clone()) {
            p.at(
                &rr.name,
                format!("duplicate rule name \"{}\"", rr.name.get_ref()),
            );
        }
        let allow = match rr.action.get_ref().as_str() {
            "allow" => true,
            "deny" => false,
            other => {
                p.at(
                    &rr.action,
                    format!("unknown action \"{other}\", expected allow or deny"),
                );
                false
            }
        };
        let mut hosts = Vec::new();
        if let Some(hs) = &rr.hosts {
            for h in &hs.get_ref().0 {
                match host_match(h) {
                    Ok(m) => hosts.push(m),
                    Err(e) => p.at(hs, e),
                }
            }
        }
        let mut networks = Vec::new();
        if let Some(ns) = &rr.networks {
            for n in &ns.get_ref().0 {
                match n.parse::<IpNet>() {
                    Ok(net) => networks.push(net),
                    Err(e) => p.at(ns, e),
                }
            }
        }
        rules.push(AccessRule {
            name: rr.name.get_ref().clone(),
            allow,
            hosts,
            ports: rr.ports.clone().unwrap_or_default(),
            networks,
        });
    }
    let mut users = Vec::new();
    for u in raw.users.iter().flatten() {
        let ru = u.get_ref();
        if !ru.password_hash.get_ref().starts_with("$argon2") {
            p.at(
                &ru.password_hash,
                "password_hash must be an argon2 PHC string ($argon2id$...); make one with `pylon passwd`",
            );
        }
        users.push(ProxyUser {
            name: ru.name.clone(),
            password_hash: ru.password_hash.get_ref().clone(),
        });
    }
    if let Some(c) = &raw.cache
        && !caches.contains(c.get_ref())
    {
        p.at(
            c,
            format!(
                "unknown cache \"{}\": define it in a [[caches]] section",
                c.get_ref()
            ),
        );
    }
    Some(ForwardProxy {
        cache: raw.cache.as_ref().map(|c| c.get_ref().clone()),
        rules,
        connect_ports: raw.connect_ports.clone().unwrap_or_else(|| vec![443]),
        allow_private: raw.allow_private.unwrap_or(false),
        users,
        strip_client_headers: raw.strip_client_headers.unwrap_or(false),
        connect_timeout: duration(&raw.connect_timeout, Duration::from_secs(10), p),
        tunnel_idle_timeout: duration(&raw.tunnel_idle_timeout, Duration::from_secs(600), p),
        response_timeout: duration(&raw.response_timeout, Duration::from_secs(60), p),
        idle_timeout: duration(&raw.idle_timeout, Duration::from_secs(60), p),
        resolvers: forward_resolvers(raw, p),
        resolve_timeout: duration(&raw.resolve_timeout, Duration::from_secs(5), p),
    })
}

/// `resolvers`: IPs (port 53) or `ip:port`s, as `[clusters.dns] resolvers`.
fn forward_resolvers(raw: &RawForward, p: &mut Problems) -> Vec<std::net::SocketAddr> {
    let mut resolvers = Vec::new();
    for r in raw.resolvers.iter().flatten() {
        let v = r.get_ref();
        match v
            .parse::<std::net::IpAddr>()
            .map(|ip| std::net::SocketAddr::new(ip, 53))
            .or_else(|_| v.parse::<std::net::SocketAddr>())
        {
            Ok(a) => resolvers.push(a),
            Err(_) => p.at(
                r,
                format!("invalid resolver \"{v}\": expected IP or IP:port such as 10.0.0.2:53"),
            ),
        }
    }
    resolvers
}
