//! Raw TOML → validated model. Every problem is collected, never just the first: each
//! becomes a [`ConfigError`] with file, line, column, key path and reason.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{ConfigError, ConfigErrors};
use crate::model::*;
use crate::raw::*;
use crate::units::{parse_duration, parse_size};

mod acme;
mod auth;
mod cache;
mod cluster;
mod entry;
mod http3;
mod l4;
mod listeners;
mod route;
mod tcp;
mod tracing;
mod turn;
use cluster::cluster;
use entry::{Dropped, declared_names, entry};
use listeners::{ListenerAt, listener};

const SECTIONS: &[&str] = &[
    "server",
    "admin",
    "access_log",
    "listeners",
    "routes",
    "clusters",
    "caches",
    "auth",
    "rate_limits",
    "tracing",
];

/// Problems found so far, by byte span in the source.
#[derive(Default)]
struct Problems(Vec<(Option<Range<usize>>, String)>);

impl Problems {
    fn at<T>(&mut self, v: &Spanned<T>, msg: impl Into<String>) {
        self.0.push((Some(v.span()), msg.into()));
    }
    fn span(&mut self, span: Range<usize>, msg: impl Into<String>) {
        self.0.push((Some(span), msg.into()));
    }
}

pub fn parse(text: &str, file: &str, base: &std::path::Path) -> Result<Config, ConfigErrors> {
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let problems = Problems(
            syntax
                .into_iter()
                .map(|e| (e.span(), e.message().to_owned()))
                .collect(),
        );
        return Err(locate(text, file, doc.get_ref(), problems));
    }
    let mut p = Problems::default();
    let ctx = Ctx {
        text,
        file,
        root: doc.get_ref(),
        base: base.to_path_buf(),
    };
    let config = build(&ctx, &mut p);
    if p.0.is_empty() {
        Ok(config)
    } else {
        Err(locate(text, file, doc.get_ref(), p))
    }
}

/// What validation needs to record where things were written.
struct Ctx<'a, 'i> {
    text: &'a str,
    file: &'a str,
    root: &'a DeTable<'i>,
    /// Directory of the config file: relative paths in it are resolved against this.
    base: std::path::PathBuf,
}

impl Ctx<'_, '_> {
    fn location(&self, span: Range<usize>) -> Location {
        let (line, column) = line_col(self.text, span.start);
        Location {
            file: self.file.to_owned(),
            line,
            column,
            key: key_path(self.root, span.start),
        }
    }

    fn file_ref(&self, v: &Spanned<String>) -> FileRef {
        let path = std::path::Path::new(v.get_ref());
        FileRef {
            path: if path.is_absolute() {
                path.to_path_buf()
            } else {
                self.base.join(path)
            },
            at: self.location(v.span()),
        }
    }
}

/// Turns spans into line, column and key path.
fn locate(text: &str, file: &str, root: &DeTable<'_>, p: Problems) -> ConfigErrors {
    let mut errors: Vec<ConfigError> =
        p.0.into_iter()
            .map(|(span, message)| {
                let (line, column, key) = match span {
                    Some(s) => {
                        let (l, c) = line_col(text, s.start);
                        (l, c, key_path(root, s.start))
                    }
                    None => (0, 0, String::new()),
                };
                ConfigError {
                    file: file.to_owned(),
                    line,
                    column,
                    key,
                    message,
                }
            })
            .collect();
    errors.sort_by_key(|e| (e.line, e.column));
    errors.dedup();
    ConfigErrors(errors)
}

fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = text.get(..pos).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn contains(v: &Spanned<DeValue<'_>>, pos: usize) -> bool {
    if v.span().contains(&pos) {
        return true;
    }
    match v.get_ref() {
        DeValue::Table(t) => t
            .iter()
            .any(|(k, v)| k.span().contains(&pos) || contains(v, pos)),
        DeValue::Array(a) => a.iter().any(|e| contains(e, pos)),
        _ => false,
    }
}

/// The key path (`routes[3].cluster`) of the deepest key or value at `pos`.
fn key_path(root: &DeTable<'_>, pos: usize) -> String {
    let mut path = String::new();
    let mut table = root;
    'walk: loop {
        for (k, v) in table.iter() {
            if !(k.span().contains(&pos) || contains(v, pos)) {
                continue;
            }
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(k.get_ref());
            let mut value = v;
            while let DeValue::Array(a) = value.get_ref() {
                match a.iter().position(|e| contains(e, pos)) {
                    Some(i) => {
                        path.push_str(&format!("[{i}]"));
                        value = &a[i];
                    }
                    None => break 'walk,
                }
            }
            if let DeValue::Table(t) = value.get_ref() {
                table = t;
                continue 'walk;
            }
            break 'walk;
        }
        break;
    }
    path
}

/// The elements of an array-of-tables section, or one error if it is not an array.
fn elements<'a, 'i>(
    root: &'a DeTable<'i>,
    key: &str,
    p: &mut Problems,
) -> Vec<(usize, &'a Spanned<DeValue<'i>>)> {
    let Some(v) = root.get(key) else {
        return Vec::new();
    };
    match v.get_ref() {
        DeValue::Array(a) => a.iter().enumerate().collect(),
        _ => {
            p.span(
                v.span(),
                format!("`{key}` must be an array of tables: write [[{key}]]"),
            );
            Vec::new()
        }
    }
}

fn build(ctx: &Ctx<'_, '_>, p: &mut Problems) -> Config {
    let root = ctx.root;
    for (k, _) in root.iter() {
        if !SECTIONS.contains(&k.get_ref().as_ref()) {
            p.span(
                k.span(),
                format!(
                    "unknown section `{}`, expected one of {}",
                    k.get_ref(),
                    SECTIONS.join(", ")
                ),
            );
        }
    }

    let server = root
        .get("server")
        .and_then(|v| entry::<RawServer>(v, p))
        .map(|(r, _)| server(r, p))
        .unwrap_or_default();
    let admin = root
        .get("admin")
        .and_then(|v| entry::<RawAdmin>(v, p))
        .and_then(|(r, dropped)| admin(r, &dropped, p));
    let access_log = root
        .get("access_log")
        .and_then(|v| entry::<RawAccessLog>(v, p))
        .map(|(r, _)| access_log(r, p))
        .unwrap_or_default();
    let tracing = root
        .get("tracing")
        .and_then(|v| entry::<crate::raw::RawTracing>(v, p).map(|(r, _)| (v.span(), r)))
        .and_then(|(span, r)| tracing::tracing(r, span, p));

    // Every entry is read, whatever is wrong with the others or with some of its keys;
    // references are checked against the names written in the file, so an entry with
    // an error is not also reported as unknown where it is used.
    let raw_listeners: Vec<(Range<usize>, RawListener, Dropped)> = elements(root, "listeners", p)
        .into_iter()
        .filter_map(|(_, v)| entry(v, p).map(|(r, d)| (v.span(), r, d)))
        .collect();
    let raw_clusters: Vec<(Range<usize>, RawCluster, Dropped)> = elements(root, "clusters", p)
        .into_iter()
        .filter_map(|(_, v)| entry(v, p).map(|(r, d)| (v.span(), r, d)))
        .collect();
    let raw_routes: Vec<(usize, Range<usize>, RawRoute, Dropped)> = elements(root, "routes", p)
        .into_iter()
        .filter_map(|(i, v)| entry(v, p).map(|(r, d)| (i, v.span(), r, d)))
        .collect();
    let raw_caches: Vec<(Range<usize>, RawCache)> = elements(root, "caches", p)
        .into_iter()
        .filter_map(|(_, v)| entry(v, p).map(|(r, _)| (v.span(), r)))
        .collect();
    let declared_listeners = declared_names(root, "listeners");
    let declared_clusters = declared_names(root, "clusters");
    let declared_caches = declared_names(root, "caches");
    let declared_auth = declared_names(root, "auth");
    let declared_limits = declared_names(root, "rate_limits");
    let raw_limits: Vec<(Range<usize>, RawRateLimit)> = elements(root, "rate_limits", p)
        .into_iter()
        .filter_map(|(_, v)| entry(v, p).map(|(r, _)| (v.span(), r)))
        .collect();
    let raw_auth: Vec<(Range<usize>, RawAuth)> = elements(root, "auth", p)
        .into_iter()
        .filter_map(|(_, v)| entry(v, p).map(|(r, _)| (v.span(), r)))
        .collect();

    if root.get("listeners").is_none() {
        p.0.push((
            None,
            "no listeners: add at least one [[listeners]] with a name and a bind address".into(),
        ));
    }

    let mut listener_names = HashSet::new();
    let mut bound = HashMap::new();
    let mut cluster_refs = Vec::new();
    // Listeners known to be tcp or udp, for routes.
    let mut l4_listeners = HashSet::new();
    let mut listeners = Vec::new();
    for (span, r, dropped) in raw_listeners {
        let protocol_known = !dropped.has("protocol");
        let at = ListenerAt {
            span,
            dropped: &dropped,
        };
        let built = listener(
            r,
            &at,
            ctx,
            &mut listener_names,
            &mut bound,
            &mut cluster_refs,
            p,
        );
        if let Some(l) = built {
            if protocol_known && !l.protocol.is_http() {
                l4_listeners.insert(l.name.clone());
            }
            listeners.push(l);
        }
    }

    let mut cluster_names = HashSet::new();
    let clusters: Vec<Cluster> = raw_clusters
        .into_iter()
        .filter_map(|(span, r, dropped)| cluster(r, span, &dropped, ctx, &mut cluster_names, p))
        .collect();
    for (span, c) in cluster_refs {
        if !declared_clusters.contains(&c) {
            p.span(span, format!("unknown cluster \"{c}\""));
        } else if clusters
            .iter()
            .any(|k| k.name == c && k.protocol == UpstreamProtocol::H3)
        {
            // Layer 4 relays bytes over TCP or UDP sessions; an h3 cluster's endpoints
            // speak QUIC with HTTP/3 on top.
            p.span(
                span,
                format!("cluster \"{c}\" speaks HTTP/3 (protocol = \"h3\"): a Layer 4 listener cannot relay to it"),
            );
        }
    }

    let mut route_names = HashSet::new();
    let refs = route::Refs {
        listeners: &declared_listeners,
        l4_listeners: &l4_listeners,
        clusters: &declared_clusters,
        caches: &declared_caches,
        auth: &declared_auth,
        jwt_auth: &jwt_policies(root),
        rate_limits: &declared_limits,
        base: &ctx.base,
    };
    let routes: Vec<Route> = raw_routes
        .into_iter()
        .filter_map(|(i, span, r, dropped)| {
            route::route(i, span, r, &dropped, &refs, &mut route_names, p)
        })
        .collect();
    let mut cache_names = HashSet::new();
    let caches: Vec<Cache> = raw_caches
        .into_iter()
        .filter_map(|(span, r)| cache::cache(r, span, ctx, &mut cache_names, p))
        .collect();

    let mut auth_names = HashSet::new();
    let auth: Vec<AuthPolicy> = raw_auth
        .into_iter()
        .filter_map(|(span, r)| auth::policy(r, span, ctx, &mut auth_names, p))
        .collect();

    let mut limit_names = HashSet::new();
    let rate_limits: Vec<RateLimit> = raw_limits
        .into_iter()
        .filter_map(|(span, r)| auth::rate_limit(r, span, &mut limit_names, p))
        .collect();

    Config {
        server,
        admin,
        access_log,
        listeners,
        routes,
        clusters,
        caches,
        auth,
        rate_limits,
        tracing,
    }
}

fn at_least_one(v: &Option<Spanned<usize>>, default: usize, p: &mut Problems) -> usize {
    match v {
        Some(n) if *n.get_ref() == 0 => {
            p.at(n, "must be at least 1");
            default
        }
        Some(n) => *n.get_ref(),
        None => default,
    }
}

fn duration(v: &Option<Spanned<String>>, default: Duration, p: &mut Problems) -> Duration {
    nonzero_duration(v, default, "duration must be greater than zero", p)
}

/// A duration above zero (`zero` is the message for one that is not), or `default`.
fn nonzero_duration(
    v: &Option<Spanned<String>>,
    default: Duration,
    zero: &str,
    p: &mut Problems,
) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(s.get_ref()) {
            Ok(d) if d.is_zero() => {
                p.at(s, zero);
                default
            }
            Ok(d) => d,
            Err(e) => {
                p.at(s, e);
                default
            }
        },
    }
}

fn size(v: &Option<Spanned<Size>>, default: u64, p: &mut Problems) -> u64 {
    match v {
        None => default,
        Some(s) => {
            let n = match s.get_ref() {
                Size::Bytes(n) => Ok(*n),
                Size::Text(t) => parse_size(t),
            };
            match n {
                Ok(0) => {
                    p.at(s, "size must be greater than zero");
                    default
                }
                Ok(n) => n,
                Err(e) => {
                    p.at(s, e);
                    default
                }
            }
        }
    }
}

fn usize_size(v: &Option<Spanned<Size>>, default: usize, p: &mut Problems) -> usize {
    let n = size(v, default as u64, p);
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn check_name(
    n: &Spanned<String>,
    kind: &str,
    seen: &mut HashSet<String>,
    p: &mut Problems,
) -> bool {
    let s = n.get_ref();
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        p.at(
            n,
            format!("invalid {kind} name \"{s}\": use letters, digits, '-', '_' and '.'"),
        );
        return false;
    }
    if !seen.insert(s.clone()) {
        p.at(n, format!("duplicate {kind} name \"{s}\""));
        return false;
    }
    true
}

fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!("invalid address \"{s}\": expected IP:port such as 127.0.0.1:8080 or [::1]:8080")
    })
}

/// A listen address: `IP:port`, or `host:port` with a host name resolved now (when
/// the config is loaded: at start, on each reload and by `pylon check`) to every
/// address it has, as NGINX's `listen` does; each is bound.
fn listen_addrs(s: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let expected =
        "expected IP:port or host:port, such as 127.0.0.1:8080, [::1]:8080 or localhost:8080";
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("invalid address \"{s}\": no port; {expected}"));
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err(format!(
            "invalid address \"{s}\": the port must be a number 0-65535; {expected}"
        ));
    };
    let is_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !is_name {
        return Err(format!("invalid address \"{s}\": {expected}"));
    }
    use std::net::ToSocketAddrs as _;
    let mut addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve \"{host}\" to listen on: {e}"))?
        .collect();
    // The system may list an address once per socket type.
    let mut seen = HashSet::new();
    addrs.retain(|a| seen.insert(*a));
    if addrs.is_empty() {
        return Err(format!("\"{host}\" resolves to no address to listen on"));
    }
    Ok(addrs)
}

fn server(r: RawServer, p: &mut Problems) -> Server {
    let d = Server::default();
    Server {
        worker_threads: r
            .worker_threads
            .map_or(d.worker_threads, |w| w.into_inner()),
        drain_timeout: duration(&r.drain_timeout, d.drain_timeout, p),
        reload_grace: duration(&r.reload_grace, d.reload_grace, p),
        watch_config: r.watch_config.unwrap_or(d.watch_config),
        watch_debounce: duration(&r.watch_debounce, d.watch_debounce, p),
        max_connections: match &r.max_connections {
            Some(n) if *n.get_ref() == 0 => {
                p.at(n, "max_connections must be at least 1");
                d.max_connections
            }
            Some(n) => *n.get_ref(),
            None => d.max_connections,
        },
        upgrade_socket: match r.upgrade_socket {
            Some(s) if s.get_ref().is_empty() => {
                p.at(&s, "`upgrade_socket` must be a file path");
                None
            }
            s => s.map(Spanned::into_inner),
        },
    }
}

fn admin(r: RawAdmin, dropped: &Dropped, p: &mut Problems) -> Option<Admin> {
    if r.enabled == Some(false) {
        return None;
    }
    let bind = match &r.bind {
        None => DEFAULT_ADMIN_BIND.parse().ok()?,
        // A host name: its first address.
        Some(b) => match listen_addrs(b.get_ref()).map(|a| a.first().copied()) {
            Ok(Some(a)) => a,
            Ok(None) => return None,
            Err(e) => {
                p.at(b, e);
                return None;
            }
        },
    };
    // A token that was written but refused is reported once, as itself.
    let token_written = r.token.is_some() || dropped.has("token");
    let token = match r.token {
        Some(t) if t.get_ref().len() < 16 => {
            p.at(&t, "`token` must be at least 16 characters");
            None
        }
        t => t.map(Spanned::into_inner),
    };
    if !bind.ip().is_loopback() && !token_written {
        match &r.bind {
            Some(b) => p.at(
                b,
                "the admin API beyond loopback needs a bearer `token` in [admin]",
            ),
            None => {
                p.0.push((None, "admin: beyond loopback needs a `token`".into()))
            }
        }
    }
    Some(Admin { bind, token })
}

fn access_log(r: RawAccessLog, _p: &mut Problems) -> AccessLog {
    if r.enabled == Some(false) {
        return AccessLog {
            target: AccessLogTarget::Off,
        };
    }
    let target = match r.path.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("stdout") | Some("-") => AccessLogTarget::Stdout,
        Some("stderr") => AccessLogTarget::Stderr,
        Some(path) => AccessLogTarget::File(path.to_owned()),
    };
    AccessLog { target }
}

/// The names of the `[[auth]]` entries that are `jwt` policies.
fn jwt_policies(root: &DeTable<'_>) -> HashSet<String> {
    let Some(DeValue::Array(entries)) = root.get("auth").map(Spanned::get_ref) else {
        return HashSet::new();
    };
    entries
        .iter()
        .filter_map(|e| match e.get_ref() {
            DeValue::Table(t) if t.contains_key("jwt") => {
                t.get("name").and_then(|n| n.get_ref().as_str())
            }
            _ => None,
        })
        .map(str::to_owned)
        .collect()
}

fn header_name_ok(s: &str) -> bool {
    http_token(s)
}

fn http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn header_value_ok(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn host_match(h: &str) -> Result<HostMatch, String> {
    let h = h.trim().to_ascii_lowercase();
    if h == "*" {
        return Ok(HostMatch::Any);
    }
    let (wild, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h.as_str()),
    };
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':' | '[' | ']'));
    if !valid {
        return Err(format!(
            "invalid host \"{h}\": expected a name such as example.com or *.example.com"
        ));
    }
    Ok(if wild {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_owned())
    })
}
