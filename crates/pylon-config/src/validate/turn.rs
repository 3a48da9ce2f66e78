//! `stun` and `turn` listeners: `transports` and the `[listeners.turn]` table, with the
//! secret and users files read and checked here (a bad line is reported with its
//! file's line number).

use std::net::IpAddr;
use std::time::Duration;

use toml::Spanned;

use super::{Ctx, Problems, duration, size};
use crate::model::{IpNet, ListenerProtocol, StunListener, TurnRelay, TurnTransport};
use crate::raw::{RawListener, RawTurn, StrList};

/// RFC 8656 §3.8: 10 minutes unless the client asks otherwise; at most an hour here.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// coturn's default (`stale-nonce=600`).
const NONCE_LIFETIME: Duration = Duration::from_secs(600);

pub(super) fn stun_listener(
    r: &RawListener,
    protocol: ListenerProtocol,
    binds: &[std::net::SocketAddr],
    ctx: &Ctx<'_, '_>,
    p: &mut Problems,
) -> Option<StunListener> {
    let stun = matches!(protocol, ListenerProtocol::Stun | ListenerProtocol::Turn);
    if !stun {
        if let Some(t) = &r.transports {
            p.at(t, "`transports` applies to stun and turn listeners");
        }
        if let Some(t) = &r.turn {
            p.at(t, "`turn` applies to listeners with protocol = \"turn\"");
        }
        return None;
    }
    let transports = transports(r.transports.as_ref(), r.tls.is_some(), p);
    let relay = match (&r.turn, protocol) {
        (Some(t), ListenerProtocol::Turn) => {
            let relay = relay(t, ctx, p)?;
            if relay.relay_ip.is_none() && binds.iter().any(|a| a.ip().is_unspecified()) {
                p.at(
                    t,
                    "[listeners.turn] needs `relay_ip` when the listener binds a wildcard address (0.0.0.0 or ::): relayed addresses must be ones clients can reach",
                );
            }
            Some(relay)
        }
        (None, ListenerProtocol::Turn) => {
            p.at(
                r.protocol.as_ref()?,
                "protocol \"turn\" needs a [listeners.turn] table with at least `realm`",
            );
            return None;
        }
        (Some(t), _) => {
            p.at(
                t,
                "`turn` applies to listeners with protocol = \"turn\" (a \"stun\" listener answers Binding requests only)",
            );
            None
        }
        (None, _) => None,
    };
    Some(StunListener { transports, relay })
}

/// `transports`: `udp`, `tcp`, `tls`; by default UDP and TCP (`tls` when the listener
/// has certificates instead of TCP).
fn transports(v: Option<&Spanned<StrList>>, has_tls: bool, p: &mut Problems) -> Vec<TurnTransport> {
    let Some(v) = v else {
        let tcp = if has_tls {
            TurnTransport::Tls
        } else {
            TurnTransport::Tcp
        };
        return vec![TurnTransport::Udp, tcp];
    };
    let mut out = Vec::new();
    for t in &v.get_ref().0 {
        let t = match t.as_str() {
            "udp" => TurnTransport::Udp,
            "tcp" => TurnTransport::Tcp,
            "tls" => TurnTransport::Tls,
            other => {
                p.at(
                    v,
                    format!("unknown transport \"{other}\", expected udp, tcp or tls"),
                );
                continue;
            }
        };
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        p.at(v, "transports needs at least one of udp, tcp, tls");
    }
    if out.contains(&TurnTransport::Tcp) && out.contains(&TurnTransport::Tls) {
        p.at(
            v,
            "tcp and tls would share one TCP port: use two listeners (TURN over TLS usually listens on 5349)",
        );
    }
    if out.contains(&TurnTransport::Tls) && !has_tls {
        p.at(
            v,
            "transport \"tls\" needs a [listeners.tls] table with a certificate",
        );
    }
    if has_tls && !out.contains(&TurnTransport::Tls) {
        p.at(v, "[listeners.tls] is used only with transport \"tls\"");
    }
    out.sort();
    out
}

fn relay(t: &Spanned<RawTurn>, ctx: &Ctx<'_, '_>, p: &mut Problems) -> Option<TurnRelay> {
    let raw = t.get_ref();
    let realm = match &raw.realm {
        Some(r) if !r.get_ref().is_empty() && r.get_ref().len() < 128 => r.get_ref().clone(),
        Some(r) => {
            p.at(r, "realm must be 1 to 127 characters");
            String::new()
        }
        None => {
            p.at(
                t,
                "[listeners.turn] needs `realm` (the realm of its credentials)",
            );
            String::new()
        }
    };
    let ip = |v: &Option<Spanned<String>>, p: &mut Problems| -> Option<IpAddr> {
        let v = v.as_ref()?;
        match v.get_ref().parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => {
                p.at(v, "an address to bind or advertise, not 0.0.0.0 or ::");
                None
            }
            Ok(ip) => Some(ip),
            Err(_) => {
                p.at(v, format!("invalid IP address \"{}\"", v.get_ref()));
                None
            }
        }
    };
    let relay_ip = ip(&raw.relay_ip, p);
    let external_ip = ip(&raw.external_ip, p);
    let relay_ports = match &raw.relay_ports {
        None => (49152, 65535),
        Some(v) => match ports(v.get_ref()) {
            Some(r) => r,
            None => {
                p.at(
                    v,
                    "relay_ports is a range of ports such as \"49152-65535\" (first at least 1024, not above the last)",
                );
                (49152, 65535)
            }
        },
    };
    let secret = match (&raw.secret, &raw.secret_file) {
        (Some(s), None) if s.get_ref().is_empty() => {
            p.at(s, "secret must not be empty");
            None
        }
        (Some(s), None) => Some(s.get_ref().clone()),
        (None, Some(f)) => read_secret(f, ctx, p),
        (Some(s), Some(_)) => {
            p.at(s, "`secret` and `secret_file` are one or the other");
            None
        }
        (None, None) => None,
    };
    let users = match &raw.users_file {
        Some(f) => read_users(f, ctx, p),
        None => Vec::new(),
    };
    let secret_file = raw.secret_file.as_ref().map(|f| ctx.file_ref(f).path);
    let users_file = raw.users_file.as_ref().map(|f| ctx.file_ref(f).path);
    if secret.is_none() && users.is_empty() && raw.secret.is_none() && raw.users_file.is_none() {
        p.at(
            t,
            "[listeners.turn] needs credentials: `secret` (or `secret_file`, coturn's use-auth-secret) or `users_file`",
        );
    }
    let nets = |v: &Option<Spanned<StrList>>, p: &mut Problems| -> Vec<IpNet> {
        let mut out = Vec::new();
        if let Some(v) = v {
            for n in &v.get_ref().0 {
                match n.parse::<IpNet>() {
                    Ok(net) => out.push(net),
                    Err(e) => p.at(v, e),
                }
            }
        }
        out
    };
    let default_lifetime = duration(&raw.default_lifetime, DEFAULT_LIFETIME, p);
    let max_lifetime = duration(&raw.max_lifetime, MAX_LIFETIME, p);
    if default_lifetime > max_lifetime
        && let Some(d) = raw.default_lifetime.as_ref().or(raw.max_lifetime.as_ref())
    {
        p.at(d, "default_lifetime must not exceed max_lifetime");
    }
    let at_least_one = |v: &Option<Spanned<u64>>, default: u64, p: &mut Problems| match v {
        Some(n) if *n.get_ref() == 0 => {
            p.at(n, "must be at least 1");
            default
        }
        Some(n) => *n.get_ref(),
        None => default,
    };
    let unauthenticated_rate = match &raw.unauthenticated_rate {
        Some(n) if *n.get_ref() == 0 => {
            p.at(
                n,
                "unauthenticated_rate must be at least 1 (requests per second)",
            );
            20
        }
        Some(n) => *n.get_ref(),
        None => 20,
    };
    Some(TurnRelay {
        realm,
        relay_ip,
        external_ip,
        relay_ports,
        secret,
        secret_file,
        users,
        users_file,
        allowed_peers: nets(&raw.allowed_peers, p),
        denied_peers: nets(&raw.denied_peers, p),
        default_lifetime,
        max_lifetime,
        nonce_lifetime: duration(&raw.nonce_lifetime, NONCE_LIFETIME, p),
        max_allocations: at_least_one(&raw.max_allocations, 10_000, p),
        user_quota: at_least_one(&raw.user_quota, 100, p),
        bandwidth: raw.bandwidth.as_ref().map(|_| size(&raw.bandwidth, 0, p)),
        unauthenticated_rate,
    })
}

/// `"49152-65535"`.
fn ports(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
    (1024 <= a && a <= b).then_some((a, b))
}

/// A secret file: its first line, trimmed.
fn read_secret(f: &Spanned<String>, ctx: &Ctx<'_, '_>, p: &mut Problems) -> Option<String> {
    let path = ctx.file_ref(f).path;
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.lines().next().unwrap_or("").trim().to_owned();
            if secret.is_empty() {
                p.at(f, format!("{}: the secret file is empty", path.display()));
                return None;
            }
            Some(secret)
        }
        Err(e) => {
            p.at(f, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// A users file: `name:password` per line (`#` comments, blank lines ignored).
fn read_users(f: &Spanned<String>, ctx: &Ctx<'_, '_>, p: &mut Problems) -> Vec<(String, String)> {
    let path = ctx.file_ref(f).path;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            p.at(f, format!("cannot read {}: {e}", path.display()));
            return Vec::new();
        }
    };
    let mut users: Vec<(String, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((name, password)) if !name.is_empty() && !password.is_empty() => {
                if users.iter().any(|(n, _)| n == name) {
                    p.at(
                        f,
                        format!(
                            "{} line {}: user \"{name}\" is listed twice",
                            path.display(),
                            i + 1
                        ),
                    );
                }
                users.push((name.to_owned(), password.to_owned()));
            }
            _ => p.at(
                f,
                format!("{} line {}: expected name:password", path.display(), i + 1),
            ),
        }
    }
    users
}
