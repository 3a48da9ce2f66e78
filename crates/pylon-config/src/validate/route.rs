//! Route validation: what a route matches (listeners, hosts, paths, methods, headers,
//! client certificates) and its one action (`cluster`, `respond` or `redirect`).

use std::collections::HashSet;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::entry::Dropped;
use super::{
    Problems, check_name, duration, header_name_ok, header_value_ok, host_match, http_token,
};
use crate::model::*;
use crate::raw::*;

/// What routes may refer to.
pub(super) struct Refs<'a> {
    /// Listener names written in the file, valid or not.
    pub listeners: &'a HashSet<String>,
    /// Listeners known to be tcp or udp: they take no routes.
    pub l4_listeners: &'a HashSet<String>,
    /// Cluster names written in the file, valid or not.
    pub clusters: &'a HashSet<String>,
    /// Cache zone names written in the file, valid or not.
    pub caches: &'a HashSet<String>,
    /// Auth policy names written in the file, valid or not.
    pub auth: &'a HashSet<String>,
    /// Those of them that are `jwt` policies.
    pub jwt_auth: &'a HashSet<String>,
    /// Rate-limit policy names written in the file, valid or not.
    pub rate_limits: &'a HashSet<String>,
    /// The config file's directory (relative `files.root` is taken from it).
    pub base: &'a std::path::Path,
}

/// The route at `routes[index]`, written at `span`; `dropped` lists its keys left out
/// because of errors already reported.
pub(super) fn route(
    index: usize,
    span: Range<usize>,
    r: RawRoute,
    dropped: &Dropped,
    refs: &Refs<'_>,
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
            if !refs.listeners.contains(l) {
                p.at(ls, format!("unknown listener \"{l}\""));
            } else if refs.l4_listeners.contains(l) {
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
    let mut claims = Vec::new();
    if let Some(c) = &r.claims {
        let jwt = r
            .auth
            .as_ref()
            .is_some_and(|a| a.get_ref().0.iter().any(|n| refs.jwt_auth.contains(n)));
        if !jwt {
            p.at(
                c,
                "`claims` needs a jwt policy in this route's `auth` to verify the token",
            );
        }
        if c.get_ref().is_empty() {
            p.at(c, "`claims` lists at least one claim");
        }
        for (name, value) in c.get_ref() {
            claims.push((name.clone(), value.get_ref().clone()));
        }
    }
    let mut r = r;
    let (backends, split) = split(&mut r, refs, p);
    let mirror = r.mirror.take().map(|m| mirror(m, refs, p));
    let compression = r.compression.take().and_then(|c| compression(c, p));
    let request_headers = r
        .request_headers
        .take()
        .map(|h| header_rules(h, p))
        .unwrap_or_default();
    let response_headers = r
        .response_headers
        .take()
        .map(|h| header_rules(h, p))
        .unwrap_or_default();
    let regex_rewrite = r.regex_rewrite.take().map(|rr| {
        let rr = rr.into_inner();
        if let Err(e) = regex::Regex::new(rr.pattern.get_ref()) {
            p.at(&rr.pattern, format!("invalid regex: {e}"));
        }
        if !rr.replacement.get_ref().starts_with('/') {
            p.at(&rr.replacement, "replacement must start with '/'");
        }
        RegexRewrite {
            pattern: rr.pattern.into_inner(),
            replacement: rr.replacement.into_inner(),
        }
    });
    let query = r
        .query
        .take()
        .map(|q| query_rules(q, p))
        .unwrap_or_default();
    let error_pages: Vec<ErrorPage> = r
        .error_pages
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| error_page(e, refs.base, p))
        .collect();
    let request_buffering = r.request_buffering.take().map(|b| {
        let b = b.into_inner();
        Buffering {
            max: super::size(&b.max, 64 << 20, p),
            memory: super::size(&b.memory, 1 << 20, p),
        }
    });
    let response_buffering = r.response_buffering.take().map(|b| {
        let b = b.into_inner();
        if let Some(m) = &b.memory {
            p.at(m, "response buffering is held in memory: give only `max`");
        }
        let max = super::size(&b.max, 1 << 20, p);
        Buffering { max, memory: max }
    });
    let actions = [
        r.cluster.as_ref().map(|s| s.span()),
        r.respond.as_ref().map(|s| s.span()),
        r.redirect.as_ref().map(|s| s.span()),
        r.files.as_ref().map(|s| s.span()),
    ];
    let count = actions.iter().filter(|a| a.is_some()).count();
    if count > 1 {
        let s = actions.iter().flatten().nth(1).cloned().unwrap_or_default();
        p.span(
            s,
            "a route has exactly one action: `cluster`, `respond`, `redirect` or `files`",
        );
        return None;
    }
    // A key left out because of an error may have been the action.
    let action_dropped = ["cluster", "respond", "redirect", "files"]
        .iter()
        .any(|k| dropped.has(k));
    if r.cluster.is_none() && !action_dropped {
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
        if let Some(a) = &r.abort_on_client_close {
            p.at(
                a,
                "`abort_on_client_close` only applies to a route with `cluster`",
            );
        }
        if let Some(s) = &r.server_timing {
            p.at(s, "`server_timing` only applies to a route with `cluster`");
        }
        if let Some(c) = &r.cache {
            p.at(c, "`cache` only applies to a route with `cluster`");
        }
        if let Some(a) = &r.auth {
            p.at(a, "`auth` only applies to a route with `cluster`");
        }
        if let Some(a) = &r.rate_limit {
            p.at(a, "`rate_limit` only applies to a route with `cluster`");
        }
    }
    let action = if let Some(c) = r.cluster {
        if !refs.clusters.contains(c.get_ref()) {
            p.at(&c, format!("unknown cluster \"{}\"", c.get_ref()));
        }
        if let Some(pr) = &r.prefix_rewrite {
            if r.path_prefix.is_none() {
                if !dropped.has("path_prefix") {
                    p.at(pr, "`prefix_rewrite` needs `path_prefix` on the same route");
                }
            } else if !pr.get_ref().starts_with('/') {
                p.at(pr, "prefix_rewrite must start with '/'");
            }
        }
        if let Some(hr) = &r.host_rewrite
            && (hr.get_ref().is_empty() || !header_value_ok(hr.get_ref()))
        {
            p.at(hr, "invalid host_rewrite");
        }
        if let Some(z) = &r.cache
            && !refs.caches.contains(z.get_ref())
        {
            p.at(
                z,
                format!(
                    "unknown cache \"{}\": define it in a [[caches]] section",
                    z.get_ref()
                ),
            );
        }
        if let Some(a) = &r.auth {
            if a.get_ref().0.is_empty() {
                p.at(a, "`auth` lists at least one policy");
            }
            for name in &a.get_ref().0 {
                if !refs.auth.contains(name) {
                    p.at(
                        a,
                        format!("unknown auth policy \"{name}\": define it in an [[auth]] section"),
                    );
                }
            }
        }
        if let Some(m) = &r.auth_require {
            if r.auth.is_none() {
                p.at(m, "`auth_require` needs `auth` on the same route");
            }
            if !matches!(m.get_ref().as_str(), "any" | "all") {
                p.at(
                    m,
                    format!(
                        "unknown auth_require \"{}\", expected any or all",
                        m.get_ref()
                    ),
                );
            }
        }
        if let Some(skip) = &r.auth_skip {
            if r.auth.is_none() {
                p.at(skip, "`auth_skip` needs `auth` on the same route");
            }
            if skip.get_ref().0.iter().any(|s| !s.starts_with('/')) {
                p.at(
                    skip,
                    "auth_skip paths must start with '/' (a trailing '*' makes a prefix)",
                );
            }
        }
        if let Some(l) = &r.rate_limit {
            for name in &l.get_ref().0 {
                if !refs.rate_limits.contains(name) {
                    p.at(
                        l,
                        format!(
                            "unknown rate limit \"{name}\": define it in a [[rate_limits]] section"
                        ),
                    );
                }
            }
        }
        Action::Proxy(ProxyAction {
            auth_all: r
                .auth_require
                .as_ref()
                .is_some_and(|m| m.get_ref() == "all"),
            rate_limit: r
                .rate_limit
                .as_ref()
                .map(|a| a.get_ref().0.clone())
                .unwrap_or_default(),
            auth: r
                .auth
                .as_ref()
                .map(|a| a.get_ref().0.clone())
                .unwrap_or_default(),
            auth_skip: r
                .auth_skip
                .as_ref()
                .map(|a| a.get_ref().0.clone())
                .unwrap_or_default(),
            cache: r.cache.map(|s| s.into_inner()),
            cluster: c.into_inner(),
            backends,
            split,
            mirror,
            compression,
            request_headers,
            response_headers,
            regex_rewrite,
            query,
            error_pages,
            request_buffering,
            response_buffering,
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
            abort_on_client_close: r
                .abort_on_client_close
                .as_ref()
                .is_some_and(|a| *a.get_ref()),
            server_timing: r.server_timing.as_ref().is_some_and(|s| *s.get_ref()),
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
    } else if let Some(f) = r.files {
        let f = f.into_inner();
        let root = std::path::Path::new(f.root.get_ref());
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            refs.base.join(root)
        };
        if !root.is_dir() {
            p.at(
                &f.root,
                format!("files.root {} is not a directory", root.display()),
            );
        }
        // Resolved once, when the configuration is loaded (symbolic links included).
        let root = std::fs::canonicalize(&root).unwrap_or(root);
        let index = f
            .index
            .as_ref()
            .map_or_else(|| vec!["index.html".to_owned()], |i| i.get_ref().0.clone());
        if let Some(i) = &f.index
            && i.get_ref()
                .0
                .iter()
                .any(|n| n.is_empty() || n.contains(['/', '\\']) || n == "..")
        {
            p.at(i, "index names are file names, without '/'");
        }
        Action::Files(FilesAction {
            root,
            index,
            browse: f.browse.unwrap_or(false),
            follow_symlinks: f.follow_symlinks.unwrap_or(false),
            precompressed: f.precompressed.unwrap_or(true),
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
        } else if let Some(e) = template_error(red.location.get_ref()) {
            p.at(&red.location, e);
        }
        Action::Redirect(RedirectAction {
            status,
            location: red.location.into_inner(),
        })
    } else {
        if !action_dropped {
            p.span(
                span,
                "route has no action: set one of `cluster`, `respond`, `redirect` or `files`",
            );
        }
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
            claims,
        },
        action,
    })
}

/// A route's `backends` and `split`. With `backends` and no `cluster`, the first
/// backend's cluster becomes the route's `cluster` (the action).
fn split(r: &mut RawRoute, refs: &Refs<'_>, p: &mut Problems) -> (Vec<Backend>, Split) {
    let mut backends = Vec::new();
    if let Some(list) = r.backends.take() {
        let span = list.span();
        let list = list.into_inner();
        if r.cluster.is_some() {
            p.span(span.clone(), "give `cluster` or `backends`, not both");
        } else if list.is_empty() {
            p.span(span.clone(), "`backends` lists at least one cluster");
        }
        let pair = |v: &Option<Spanned<String>>, p: &mut Problems, header: bool| {
            let v = v.as_ref()?;
            let parsed = v.get_ref().split_once('=').filter(|(n, val)| {
                let name_ok = if header {
                    super::header_name_ok(n)
                } else {
                    !n.is_empty()
                };
                name_ok && super::header_value_ok(val)
            });
            match parsed {
                Some((n, val)) => Some((
                    if header {
                        n.to_ascii_lowercase()
                    } else {
                        n.to_owned()
                    },
                    val.to_owned(),
                )),
                None => {
                    p.at(v, "expected NAME=VALUE");
                    None
                }
            }
        };
        let mut seen = HashSet::new();
        for b in &list {
            let raw = b.get_ref();
            let name = raw.cluster.get_ref();
            if !refs.clusters.contains(name) {
                p.at(&raw.cluster, format!("unknown cluster \"{name}\""));
            }
            if !seen.insert(name.clone()) {
                p.at(&raw.cluster, format!("cluster \"{name}\" is listed twice"));
            }
            backends.push(Backend {
                cluster: name.clone(),
                weight: raw.weight.as_ref().map_or(1, |w| *w.get_ref()),
                header: pair(&raw.header, p, true),
                cookie: pair(&raw.cookie, p, false),
                query: pair(&raw.query, p, false),
            });
        }
        if !list.is_empty() && backends.iter().all(|b| b.weight == 0) {
            p.span(
                span,
                "the backends' weights add up to zero: give one a weight",
            );
        }
        if r.cluster.is_none()
            && let Some(first) = list.first()
        {
            let c = &first.get_ref().cluster;
            r.cluster = Some(Spanned::new(c.span(), c.get_ref().clone()));
        }
    }
    let Some(raw) = r.split.take() else {
        return (backends, Split::default());
    };
    if backends.is_empty() {
        p.at(&raw, "`split` needs `backends` on the same route");
    }
    let raw = raw.into_inner();
    let sticky = raw.sticky.as_ref().and_then(|s| match s.get_ref().as_str() {
        "cookie" => Some(SplitSticky::Cookie(
            raw.cookie_name
                .as_ref()
                .map_or_else(|| "pylon-backend".to_owned(), |c| c.get_ref().clone()),
        )),
        key => {
            let parts: Option<Vec<RateKey>> = key
                .split('+')
                .map(|k| super::auth::rate_key(k.trim()).filter(|k| !matches!(k, RateKey::Claim(_))))
                .collect();
            if parts.is_none() {
                p.at(s, format!("invalid sticky \"{key}\", expected cookie, or a key: client_ip, client_ip/BITS, header:NAME or cookie:NAME, several joined with '+'"));
            }
            parts.map(SplitSticky::Hash)
        }
    });
    if let Some(c) = &raw.cookie_name
        && (!super::http_token(c.get_ref()) || !matches!(sticky, Some(SplitSticky::Cookie(_))))
    {
        p.at(c, "cookie_name is a cookie name, for sticky = \"cookie\"");
    }
    let canary = raw.canary.as_ref().map(|c| {
        if !backends.iter().any(|b| &b.cluster == c.get_ref()) {
            p.at(
                c,
                format!("the canary \"{}\" is not one of the backends", c.get_ref()),
            );
        }
        let ratio = raw.max_5xx_ratio.as_ref().map_or(0.05, |r| {
            let v = *r.get_ref();
            if !(v > 0.0 && v <= 1.0) {
                p.at(r, "max_5xx_ratio is a share above 0 and at most 1");
            }
            v
        });
        Canary {
            cluster: c.get_ref().clone(),
            max_5xx_ratio: ratio,
            min_requests: raw
                .min_requests
                .as_ref()
                .map_or(20, |m| (*m.get_ref()).max(1)),
            window: super::nonzero_duration(
                &raw.window,
                Duration::from_secs(30),
                "window is a duration above zero, such as \"30s\"",
                p,
            ),
        }
    });
    if canary.is_none() {
        for (key, v) in [
            (
                "max_5xx_ratio",
                raw.max_5xx_ratio.as_ref().map(Spanned::span),
            ),
            ("min_requests", raw.min_requests.as_ref().map(Spanned::span)),
            ("window", raw.window.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = v {
                p.span(span, format!("`{key}` needs `canary` in the same split"));
            }
        }
    }
    (backends, Split { sticky, canary })
}

/// A route's `mirror`.
fn mirror(m: Spanned<RawMirror>, refs: &Refs<'_>, p: &mut Problems) -> Mirror {
    let m = m.into_inner();
    if !refs.clusters.contains(m.cluster.get_ref()) {
        p.at(
            &m.cluster,
            format!("unknown cluster \"{}\"", m.cluster.get_ref()),
        );
    }
    let percent = m.percent.as_ref().map_or(100.0, |v| {
        let x = *v.get_ref();
        if !(0.0..=100.0).contains(&x) {
            p.at(v, "percent is a share from 0 to 100");
        }
        x
    });
    let suffix = m.host_suffix.as_ref().map_or_else(
        || "-shadow".to_owned(),
        |s| {
            if !header_value_ok(s.get_ref()) {
                p.at(s, "host_suffix must be text without control characters");
            }
            s.get_ref().clone()
        },
    );
    Mirror {
        cluster: m.cluster.get_ref().clone(),
        percent,
        max_body: super::size(&m.max_body, 64 * 1024, p),
        host_suffix: suffix,
        timeout: super::nonzero_duration(
            &m.timeout,
            Duration::from_secs(5),
            "timeout is a duration above zero, such as \"5s\"",
            p,
        ),
    }
}

/// A route's `compression`.
fn compression(c: Spanned<RawCompression>, p: &mut Problems) -> Option<Compression> {
    let span = c.span();
    let t = match c.into_inner() {
        RawCompression::Bool(false) => return None,
        RawCompression::Bool(true) => return Some(Compression::defaults()),
        RawCompression::Table(t) => t,
    };
    let d = Compression::defaults();
    let mut problem = |m: String| p.span(span.clone(), m);
    let algorithms = t.algorithms.unwrap_or(d.algorithms);
    if algorithms.is_empty() {
        problem("compression.algorithms lists at least one of zstd, br, gzip".into());
    }
    for a in &algorithms {
        if !matches!(a.as_str(), "zstd" | "br" | "gzip") {
            problem(format!(
                "compression.algorithms: unknown \"{a}\", expected zstd, br or gzip"
            ));
        }
    }
    let content_types: Vec<String> = t
        .content_types
        .unwrap_or(d.content_types)
        .into_iter()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    for c in &content_types {
        let ok = c.split_once('/').is_some_and(|(ty, sub)| {
            super::http_token(ty) && (sub == "*" || super::http_token(sub))
        });
        if !ok {
            problem(format!(
                "compression.content_types: \"{c}\" is not a media type such as text/* or application/json"
            ));
        }
    }
    let gzip_level = t.gzip_level.unwrap_or(d.gzip_level);
    if !(1..=9).contains(&gzip_level) {
        problem("compression.gzip_level is 1 to 9".into());
    }
    let brotli_level = t.brotli_level.unwrap_or(d.brotli_level);
    if brotli_level > 11 {
        problem("compression.brotli_level is 0 to 11".into());
    }
    let zstd_level = t.zstd_level.unwrap_or(d.zstd_level);
    if !(1..=19).contains(&zstd_level) {
        problem("compression.zstd_level is 1 to 19".into());
    }
    Some(Compression {
        algorithms,
        content_types,
        min_size: match t.min_size {
            None => d.min_size,
            Some(Size::Bytes(n)) => n,
            Some(Size::Text(text)) => crate::units::parse_size(&text).unwrap_or_else(|e| {
                problem(format!("compression.min_size: {e}"));
                d.min_size
            }),
        },
        gzip_level,
        brotli_level,
        zstd_level,
        decompress_requests: t.decompress_requests.unwrap_or(false).then(|| {
            match &t.max_decompressed {
                None => 10 << 20,
                Some(Size::Bytes(n)) => *n,
                Some(Size::Text(text)) => crate::units::parse_size(text).unwrap_or_else(|e| {
                    problem(format!("compression.max_decompressed: {e}"));
                    10 << 20
                }),
            }
        }),
    })
}

/// A template's value, checked: header-safe text with known `{variables}`.
fn template(v: &Spanned<String>, p: &mut Problems) -> String {
    if !header_value_ok(v.get_ref()) {
        p.at(v, "control characters are not allowed");
    } else if let Some(e) = template_error(v.get_ref()) {
        p.at(v, e);
    }
    v.get_ref().clone()
}

/// `request_headers` or `response_headers`.
fn header_rules(h: Spanned<RawHeaderRules>, p: &mut Problems) -> HeaderRules {
    let h = h.into_inner();
    let list = |m: Option<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>,
                p: &mut Problems| {
        m.unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                if !header_name_ok(k.get_ref()) {
                    p.at(&k, format!("invalid header name \"{}\"", k.get_ref()));
                }
                (k.get_ref().to_ascii_lowercase(), template(&v, p))
            })
            .collect::<Vec<_>>()
    };
    let set = list(h.set, p);
    let add = list(h.add, p);
    let append = list(h.append, p);
    let remove = h.remove.map_or_else(Vec::new, |r| {
        for n in &r.get_ref().0 {
            if !header_name_ok(n) {
                p.at(&r, format!("invalid header name \"{n}\""));
            }
        }
        r.get_ref()
            .0
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect()
    });
    HeaderRules {
        set,
        add,
        append,
        remove,
    }
}

/// `query` rules.
fn query_rules(q: Spanned<RawQueryRules>, p: &mut Problems) -> QueryRules {
    let q = q.into_inner();
    let set = q
        .set
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            if k.get_ref().is_empty() || k.get_ref().contains(['&', '=', '#', ' ']) {
                p.at(&k, "invalid query parameter name");
            }
            (k.get_ref().clone(), template(&v, p))
        })
        .collect();
    QueryRules {
        set,
        remove: q.remove.map_or_else(Vec::new, |r| r.get_ref().0.clone()),
    }
}

/// The largest error page.
const MAX_ERROR_PAGE: u64 = 1 << 20;

/// One of a route's `error_pages`: its file is read now (at most 1 MiB).
fn error_page(
    e: Spanned<RawErrorPage>,
    base: &std::path::Path,
    p: &mut Problems,
) -> Option<ErrorPage> {
    let span = e.span();
    let e = e.into_inner();
    if e.status.get_ref().is_empty() || e.status.get_ref().iter().any(|s| !(400..=599).contains(s))
    {
        p.at(&e.status, "status lists error statuses, 400 to 599");
    }
    let (file, body) = match (&e.file, e.body) {
        (Some(f), None) => {
            let path = std::path::Path::new(f.get_ref());
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                base.join(path)
            };
            let read = std::fs::metadata(&path)
                .map_err(|err| err.to_string())
                .and_then(|m| {
                    if m.len() > MAX_ERROR_PAGE {
                        Err("larger than 1 MiB".to_owned())
                    } else {
                        std::fs::read_to_string(&path).map_err(|err| err.to_string())
                    }
                });
            match read {
                Ok(text) => (Some(path), text),
                Err(err) => {
                    p.at(f, format!("cannot read {}: {err}", path.display()));
                    return None;
                }
            }
        }
        (None, Some(body)) => (None, body),
        _ => {
            p.span(span, "an error page has `file` or `body`, one of them");
            return None;
        }
    };
    let content_type = match &e.content_type {
        Some(c) if header_value_ok(c.get_ref()) && !c.get_ref().is_empty() => c.get_ref().clone(),
        Some(c) => {
            p.at(c, "invalid content_type");
            String::new()
        }
        None if file
            .as_ref()
            .and_then(|f| f.extension())
            .is_some_and(|x| x == "html" || x == "htm") =>
        {
            "text/html; charset=utf-8".to_owned()
        }
        None => "text/plain; charset=utf-8".to_owned(),
    };
    Some(ErrorPage {
        statuses: e.status.into_inner(),
        file,
        body,
        content_type,
        upstream: e.upstream.unwrap_or(false),
    })
}
