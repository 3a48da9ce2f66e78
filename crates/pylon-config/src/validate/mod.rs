//! Raw TOML → validated model. Every problem is collected, never just the first: each
//! becomes a [`ConfigError`] with file, line, column, key path and reason.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::error::{ConfigError, ConfigErrors};
use crate::model::*;
use crate::raw::*;
use crate::units::{parse_duration, parse_size};

mod cluster;
mod l4;
use cluster::cluster;

const SECTIONS: &[&str] = &[
    "server",
    "admin",
    "access_log",
    "listeners",
    "routes",
    "clusters",
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

pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
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
        base: std::path::Path::new(file)
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default(),
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

/// Deserializes one element of a section, recording its error (if any).
fn element<T: for<'de> Deserialize<'de>>(v: &Spanned<DeValue<'_>>, p: &mut Problems) -> Option<T> {
    match T::deserialize(ValueDeserializer::from(v.clone())) {
        Ok(t) => Some(t),
        Err(e) => {
            p.0.push((e.span().or(Some(v.span())), e.message().to_owned()));
            None
        }
    }
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
        .and_then(|v| element::<RawServer>(v, p))
        .map(|r| server(r, p))
        .unwrap_or_default();
    let admin = root
        .get("admin")
        .and_then(|v| element::<RawAdmin>(v, p))
        .and_then(|r| admin(r, p));
    let access_log = root
        .get("access_log")
        .and_then(|v| element::<RawAccessLog>(v, p))
        .map(|r| access_log(r, p))
        .unwrap_or_default();

    let raw_listeners: Vec<RawListener> = elements(root, "listeners", p)
        .into_iter()
        .filter_map(|(_, v)| element(v, p))
        .collect();
    let raw_clusters: Vec<RawCluster> = elements(root, "clusters", p)
        .into_iter()
        .filter_map(|(_, v)| element(v, p))
        .collect();
    let raw_routes: Vec<(usize, Range<usize>, RawRoute)> = elements(root, "routes", p)
        .into_iter()
        .filter_map(|(i, v)| element(v, p).map(|r| (i, v.span(), r)))
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
    let listeners: Vec<Listener> = raw_listeners
        .into_iter()
        .filter_map(|r| {
            listener(
                r,
                ctx,
                &mut listener_names,
                &mut bound,
                &mut cluster_refs,
                p,
            )
        })
        .collect();
    // Listener name → whether it is a Layer 4 (tcp/udp) listener, for routes.
    let listener_kinds: HashMap<String, bool> = listener_names
        .iter()
        .map(|n| {
            let l4 = listeners
                .iter()
                .any(|l| &l.name == n && !l.protocol.is_http());
            (n.clone(), l4)
        })
        .collect();

    let mut cluster_names = HashSet::new();
    let clusters: Vec<Cluster> = raw_clusters
        .into_iter()
        .filter_map(|r| cluster(r, ctx, &mut cluster_names, p))
        .collect();
    for (span, c) in cluster_refs {
        if !cluster_names.contains(&c) {
            p.span(span, format!("unknown cluster \"{c}\""));
        }
    }

    let mut route_names = HashSet::new();
    let routes: Vec<Route> = raw_routes
        .into_iter()
        .filter_map(|(i, span, r)| {
            route(
                i,
                span,
                r,
                &listener_kinds,
                &cluster_names,
                &mut route_names,
                p,
            )
        })
        .collect();

    Config {
        server,
        admin,
        access_log,
        listeners,
        routes,
        clusters,
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
    match v {
        None => default,
        Some(s) => match parse_duration(s.get_ref()) {
            Ok(d) if d.is_zero() => {
                p.at(s, "duration must be greater than zero");
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

fn admin(r: RawAdmin, p: &mut Problems) -> Option<Admin> {
    if r.enabled == Some(false) {
        return None;
    }
    let bind = match &r.bind {
        None => DEFAULT_ADMIN_BIND.parse().ok()?,
        Some(b) => match socket_addr(b.get_ref()) {
            Ok(a) => a,
            Err(e) => {
                p.at(b, e);
                return None;
            }
        },
    };
    let token = match r.token {
        Some(t) if t.get_ref().len() < 16 => {
            p.at(&t, "`token` must be at least 16 characters");
            None
        }
        t => t.map(Spanned::into_inner),
    };
    if !bind.ip().is_loopback() && token.is_none() {
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

fn listener(
    r: RawListener,
    ctx: &Ctx<'_, '_>,
    names: &mut HashSet<String>,
    bound: &mut HashMap<(SocketAddr, bool), String>,
    cluster_refs: &mut Vec<(Range<usize>, String)>,
    p: &mut Problems,
) -> Option<Listener> {
    let ok = check_name(&r.name, "listener", names, p);
    let name = r.name.get_ref().clone();
    let mut binds = Vec::new();
    if r.bind.get_ref().0.is_empty() {
        p.at(&r.bind, "no bind address: give at least one IP:port");
    }
    let udp = r
        .protocol
        .as_ref()
        .is_some_and(|s| s.get_ref().as_str() == "udp");
    for b in &r.bind.get_ref().0 {
        match socket_addr(b) {
            Ok(a) => {
                // TCP and UDP ports are separate spaces.
                if a.port() != 0
                    && let Some(other) = bound.insert((a, udp), name.clone())
                {
                    p.at(
                        &r.bind,
                        format!("address {a} is already bound by listener \"{other}\""),
                    );
                }
                binds.push(a);
            }
            Err(e) => p.at(&r.bind, e),
        }
    }
    let protocol = match r.protocol.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("http") => ListenerProtocol::Http,
        Some("https") => ListenerProtocol::Https,
        Some("tcp") => ListenerProtocol::Tcp,
        Some("udp") => ListenerProtocol::Udp,
        Some(other) => {
            let s = r.protocol.as_ref().map(|s| s.span()).unwrap_or_default();
            p.span(
                s,
                format!(
                    "unknown listener protocol \"{other}\", expected one of: http, https, tcp, udp"
                ),
            );
            ListenerProtocol::Http
        }
    };
    let l4 = l4::l4_listener(&r, protocol, cluster_refs, p);
    let proxy_protocol = l4::proxy_protocol_in(&r.proxy_protocol, protocol, p);
    let forward = l4::forward(&r.forward, protocol, p);
    let tls = match (protocol, r.tls) {
        (ListenerProtocol::Https, Some(t)) => listener_tls(t, ctx, p),
        (ListenerProtocol::Tcp, Some(t))
            if l4.as_ref().is_some_and(|l| l.sni_routes.is_empty()) =>
        {
            listener_tls(t, ctx, p)
        }
        (ListenerProtocol::Tcp | ListenerProtocol::Udp, Some(_)) => None,
        (ListenerProtocol::Https, None) => {
            p.at(
                &r.name,
                "protocol \"https\" needs a [listeners.tls] table with at least one certificate",
            );
            None
        }
        (_, Some(t)) => {
            p.at(
                &t,
                "`tls` applies only to listeners with protocol = \"https\" or \"tcp\"",
            );
            None
        }
        (_, None) => None,
    };
    let d = Limits::default();
    let max_headers = match &r.max_headers {
        Some(n) if *n.get_ref() == 0 => {
            p.at(n, "max_headers must be at least 1");
            d.max_headers
        }
        Some(n) => *n.get_ref(),
        None => d.max_headers,
    };
    let max_concurrent_streams = match &r.max_concurrent_streams {
        Some(n) if *n.get_ref() == 0 => {
            p.at(n, "max_concurrent_streams must be at least 1");
            d.max_concurrent_streams
        }
        Some(n) => *n.get_ref(),
        None => d.max_concurrent_streams,
    };
    let limits = Limits {
        header_read_timeout: duration(&r.header_read_timeout, d.header_read_timeout, p),
        send_timeout: duration(&r.send_timeout, d.send_timeout, p),
        idle_timeout: duration(&r.idle_timeout, d.idle_timeout, p),
        max_header_bytes: usize_size(&r.max_header_bytes, d.max_header_bytes, p),
        max_headers,
        max_uri_bytes: usize_size(&r.max_uri_bytes, d.max_uri_bytes, p),
        max_request_body: size(&r.max_request_body, d.max_request_body, p),
        max_concurrent_streams,
        h2_max_reset_streams: at_least_one(&r.h2_max_reset_streams, d.h2_max_reset_streams, p),
        h2_max_error_resets: at_least_one(&r.h2_max_error_resets, d.h2_max_error_resets, p),
    };
    let dh = ForwardingHeaders::default();
    let request_id = match r.request_id.as_ref() {
        None => dh.request_id.clone(),
        Some(v) => match v.get_ref() {
            StrOrBool::Bool(false) => None,
            StrOrBool::Bool(true) => dh.request_id.clone(),
            StrOrBool::Str(s) if header_name_ok(s) => Some(s.to_ascii_lowercase()),
            StrOrBool::Str(s) => {
                p.at(v, format!("invalid header name \"{s}\""));
                None
            }
        },
    };
    let headers = ForwardingHeaders {
        x_forwarded: r.x_forwarded.unwrap_or(dh.x_forwarded),
        forwarded: r.forwarded.unwrap_or(dh.forwarded),
        via: r.via.unwrap_or(dh.via),
        request_id,
    };
    let max_connections_per_ip = match &r.max_connections_per_ip {
        Some(n) if *n.get_ref() == 0 => {
            p.at(n, "max_connections_per_ip must be at least 1");
            None
        }
        Some(n) if protocol == ListenerProtocol::Udp => {
            p.at(
                n,
                "`max_connections_per_ip` applies to http, https and tcp listeners",
            );
            None
        }
        n => n.as_ref().map(|n| *n.get_ref()),
    };
    ok.then_some(Listener {
        name,
        binds,
        protocol,
        limits,
        max_connections_per_ip,
        headers,
        tls,
        l4,
        proxy_protocol,
        forward,
    })
}

fn certificate(
    r: &Spanned<RawCertificate>,
    ctx: &Ctx<'_, '_>,
    p: &mut Problems,
) -> CertificateFiles {
    let raw = r.get_ref();
    let mut server_names = Vec::new();
    if let Some(names) = &raw.server_names {
        for n in &names.get_ref().0 {
            match host_match(n) {
                Ok(HostMatch::Exact(h)) => server_names.push(h),
                Ok(HostMatch::Suffix(s)) => server_names.push(format!("*{s}")),
                Ok(HostMatch::Any) | Err(_) => p.at(
                    names,
                    format!("invalid server name \"{n}\": expected example.com or *.example.com"),
                ),
            }
        }
    }
    CertificateFiles {
        cert: ctx.file_ref(&raw.cert),
        key: ctx.file_ref(&raw.key),
        server_names,
    }
}

fn listener_tls(
    t: Spanned<RawListenerTls>,
    ctx: &Ctx<'_, '_>,
    p: &mut Problems,
) -> Option<ListenerTls> {
    let span = t.span();
    let t = t.into_inner();
    if t.certificates.get_ref().is_empty() {
        p.at(&t.certificates, "at least one certificate is needed");
    }
    let certificates = t
        .certificates
        .get_ref()
        .iter()
        .map(|c| certificate(c, ctx, p))
        .collect();
    let min_version = match t.min_version.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("1.2") => TlsVersion::Tls12,
        Some("1.3") => TlsVersion::Tls13,
        Some(other) => {
            if let Some(v) = &t.min_version {
                p.at(
                    v,
                    format!("unknown TLS version \"{other}\", expected \"1.2\" or \"1.3\""),
                );
            }
            TlsVersion::Tls12
        }
    };
    let alpn = match &t.alpn {
        None => vec!["h2".to_owned(), "http/1.1".to_owned()],
        Some(list) => {
            for a in &list.get_ref().0 {
                if !matches!(a.as_str(), "h2" | "http/1.1") {
                    p.at(
                        list,
                        format!("unsupported ALPN protocol \"{a}\", expected h2 or http/1.1"),
                    );
                }
            }
            list.get_ref().0.clone()
        }
    };
    let client_auth = match t.client_auth.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("none") => ClientAuth::None,
        Some("optional") => ClientAuth::Optional,
        Some("required") => ClientAuth::Required,
        Some(other) => {
            if let Some(v) = &t.client_auth {
                p.at(
                    v,
                    format!("unknown client_auth \"{other}\", expected none, optional or required"),
                );
            }
            ClientAuth::None
        }
    };
    let client_ca = t.client_ca.as_ref().map(|c| ctx.file_ref(c));
    if client_auth != ClientAuth::None && client_ca.is_none() {
        p.span(
            span.clone(),
            "client_auth needs `client_ca`, the CA bundle client certificates must chain to",
        );
    }
    if client_auth == ClientAuth::None
        && let Some(c) = &t.client_ca
    {
        p.at(c, "`client_ca` is set but client_auth is \"none\"");
    }
    let unknown_sni = match t.unknown_sni.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("default") => UnknownSni::Default,
        Some("reject") => UnknownSni::Reject,
        Some(other) => {
            if let Some(v) = &t.unknown_sni {
                p.at(
                    v,
                    format!("unknown unknown_sni policy \"{other}\", expected default or reject"),
                );
            }
            UnknownSni::Default
        }
    };
    Some(ListenerTls {
        unknown_sni,
        certificates,
        min_version,
        alpn,
        handshake_timeout: duration(&t.handshake_timeout, Duration::from_secs(10), p),
        client_auth,
        client_ca,
        forward_client_cert: t
            .forward_client_cert
            .unwrap_or(client_auth != ClientAuth::None),
    })
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

fn route(
    index: usize,
    span: Range<usize>,
    r: RawRoute,
    listeners: &HashMap<String, bool>,
    clusters: &HashSet<String>,
    names: &mut HashSet<String>,
    p: &mut Problems,
) -> Option<Route> {
    let name = match &r.name {
        Some(n) => {
            check_name(n, "route", names, p);
            n.get_ref().clone()
        }
        None => format!("routes[{index}]"),
    };
    let mut route_listeners = Vec::new();
    if let Some(ls) = &r.listeners {
        for l in &ls.get_ref().0 {
            if !listeners.contains_key(l) {
                p.at(ls, format!("unknown listener \"{l}\""));
            } else if listeners.get(l) == Some(&true) {
                p.at(
                    ls,
                    format!("listener \"{l}\" is a tcp/udp listener: it takes `cluster` or `sni_routes`, not routes"),
                );
            }
            route_listeners.push(l.clone());
        }
    }
    let mut hosts = Vec::new();
    if let Some(hs) = &r.host {
        for h in &hs.get_ref().0 {
            match host_match(h) {
                Ok(m) => hosts.push(m),
                Err(e) => p.at(hs, e),
            }
        }
    }
    let path_keys = [&r.path, &r.path_prefix, &r.path_regex]
        .iter()
        .filter(|x| x.is_some())
        .count();
    let mut path = PathMatch::Any;
    if path_keys > 1 {
        let s = [&r.path_prefix, &r.path_regex]
            .iter()
            .find_map(|x| x.as_ref().map(|s| s.span()))
            .unwrap_or_default();
        p.span(s, "give only one of `path`, `path_prefix` and `path_regex`");
    } else if let Some(s) = &r.path {
        if !s.get_ref().starts_with('/') {
            p.at(s, "path must start with '/'");
        }
        path = PathMatch::Exact(s.get_ref().clone());
    } else if let Some(s) = &r.path_prefix {
        if !s.get_ref().starts_with('/') {
            p.at(s, "path_prefix must start with '/'");
        }
        path = PathMatch::Prefix(s.get_ref().clone());
    } else if let Some(s) = &r.path_regex {
        match regex::Regex::new(s.get_ref()) {
            Ok(re) => path = PathMatch::Regex(re),
            Err(e) => {
                let detail = e.to_string();
                let last = detail
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim_start_matches("error: ");
                p.at(s, format!("invalid regex: {last}"));
            }
        }
    }
    let mut methods = Vec::new();
    if let Some(ms) = &r.methods {
        for m in &ms.get_ref().0 {
            if !http_token(m) {
                p.at(ms, format!("invalid method \"{m}\""));
            }
            methods.push(m.to_ascii_uppercase());
        }
    }
    let mut headers = Vec::new();
    for h in r.headers.iter().flatten() {
        if !header_name_ok(h.name.get_ref()) {
            p.at(
                &h.name,
                format!("invalid header name \"{}\"", h.name.get_ref()),
            );
        }
        headers.push(HeaderMatch {
            name: h.name.get_ref().to_ascii_lowercase(),
            value: h.value.clone(),
        });
    }

    let fingerprint = match &r.client_cert_fingerprint {
        Some(f) => {
            let hex: String = f
                .get_ref()
                .chars()
                .filter(|c| *c != ':')
                .collect::<String>()
                .to_ascii_lowercase();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                p.at(
                    f,
                    "client_cert_fingerprint must be a SHA-256 in hex (64 digits, ':' allowed)",
                );
            }
            Some(hex)
        }
        None => None,
    };
    let client_cert = ClientCertMatch {
        subject: r.client_cert_subject.as_ref().map(|s| s.get_ref().clone()),
        dns: r
            .client_cert_dns
            .as_ref()
            .map(|s| s.get_ref().to_ascii_lowercase()),
        fingerprint,
    };
    let actions = [
        r.cluster.as_ref().map(|s| s.span()),
        r.respond.as_ref().map(|s| s.span()),
        r.redirect.as_ref().map(|s| s.span()),
    ];
    let count = actions.iter().filter(|a| a.is_some()).count();
    if count > 1 {
        let s = actions.iter().flatten().nth(1).cloned().unwrap_or_default();
        p.span(
            s,
            "a route has exactly one action: `cluster`, `respond` or `redirect`",
        );
        return None;
    }
    if r.cluster.is_none() {
        for (key, v) in [
            ("prefix_rewrite", &r.prefix_rewrite),
            ("host_rewrite", &r.host_rewrite),
            ("tunnel_idle_timeout", &r.tunnel_idle_timeout),
            ("tunnel_max_lifetime", &r.tunnel_max_lifetime),
        ] {
            if let Some(v) = v {
                p.at(v, format!("`{key}` only applies to a route with `cluster`"));
            }
        }
        if let Some(w) = &r.websocket {
            p.at(w, "`websocket` only applies to a route with `cluster`");
        }
        if let Some(w) = &r.grpc_web {
            p.at(w, "`grpc_web` only applies to a route with `cluster`");
        }
    }
    let action = if let Some(c) = r.cluster {
        if !clusters.contains(c.get_ref()) {
            p.at(&c, format!("unknown cluster \"{}\"", c.get_ref()));
        }
        if let Some(pr) = &r.prefix_rewrite {
            if r.path_prefix.is_none() {
                p.at(pr, "`prefix_rewrite` needs `path_prefix` on the same route");
            } else if !pr.get_ref().starts_with('/') {
                p.at(pr, "prefix_rewrite must start with '/'");
            }
        }
        if let Some(hr) = &r.host_rewrite
            && (hr.get_ref().is_empty() || !header_value_ok(hr.get_ref()))
        {
            p.at(hr, "invalid host_rewrite");
        }
        Action::Proxy(ProxyAction {
            cluster: c.into_inner(),
            websocket: r.websocket.as_ref().is_none_or(|w| *w.get_ref()),
            grpc_web: r.grpc_web.as_ref().is_some_and(|w| *w.get_ref()),
            cors_allow_origins: r
                .cors_allow_origins
                .as_ref()
                .map(|o| o.get_ref().0.clone())
                .unwrap_or_default(),
            tunnel_idle_timeout: duration(&r.tunnel_idle_timeout, DEFAULT_TUNNEL_IDLE_TIMEOUT, p),
            tunnel_max_lifetime: r
                .tunnel_max_lifetime
                .as_ref()
                .map(|_| duration(&r.tunnel_max_lifetime, Duration::ZERO, p)),
            prefix_rewrite: r.prefix_rewrite.map(|s| s.into_inner()),
            host_rewrite: r.host_rewrite.map(|s| s.into_inner()),
        })
    } else if let Some(resp) = r.respond {
        let resp = resp.into_inner();
        let status = match &resp.status {
            Some(s) if !(100..=599).contains(s.get_ref()) || *s.get_ref() == 101 => {
                p.at(s, "status must be between 100 and 599 (and not 101)");
                200
            }
            Some(s) => *s.get_ref(),
            None => 200,
        };
        let mut headers = Vec::new();
        for (k, v) in &resp.headers {
            if !header_name_ok(k.get_ref()) {
                p.at(k, format!("invalid header name \"{}\"", k.get_ref()));
            }
            if !header_value_ok(v.get_ref()) {
                p.at(
                    v,
                    "invalid header value: control characters are not allowed",
                );
            }
            headers.push((k.get_ref().to_ascii_lowercase(), v.get_ref().clone()));
        }
        Action::Respond(RespondAction {
            status,
            headers,
            body: resp.body.unwrap_or_default(),
        })
    } else if let Some(red) = r.redirect {
        let red = red.into_inner();
        let status = match &red.status {
            Some(s) if ![301, 302, 303, 307, 308].contains(s.get_ref()) => {
                p.at(s, "redirect status must be one of 301, 302, 303, 307, 308");
                302
            }
            Some(s) => *s.get_ref(),
            None => 302,
        };
        if red.location.get_ref().is_empty() || !header_value_ok(red.location.get_ref()) {
            p.at(&red.location, "invalid redirect location");
        }
        Action::Redirect(RedirectAction {
            status,
            location: red.location.into_inner(),
        })
    } else {
        p.span(
            span,
            "route has no action: set one of `cluster`, `respond` or `redirect`",
        );
        return None;
    };
    Some(Route {
        name,
        listeners: route_listeners,
        matcher: RouteMatch {
            hosts,
            path,
            methods,
            headers,
            grpc: r.grpc.unwrap_or(false),
            client_cert,
        },
        action,
    })
}
