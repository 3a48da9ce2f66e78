//! Routes in the effective configuration: match keys, the action, and a proxy route's
//! filters (backends and split, mirror, compression, header and URL rules, error pages,
//! buffering).

use super::*;

pub(super) fn route(index: usize, r: &Route) -> Value {
    let mut t = T::default();
    // A route without a name is called `routes[N]` in the model: not a valid name.
    if r.name != format!("routes[{index}]") {
        t.put("name", r.name.as_str());
    }
    t.list("listeners", texts(&r.listeners));
    let m = &r.matcher;
    t.list("host", texts(m.hosts.iter().map(host)));
    match &m.path {
        PathMatch::Any => {}
        PathMatch::Exact(p) => {
            t.put("path", p.as_str());
        }
        PathMatch::Prefix(p) => {
            t.put("path_prefix", p.as_str());
        }
        PathMatch::Regex(re) => {
            t.put("path_regex", re.as_str());
        }
    }
    t.list("methods", texts(&m.methods));
    if m.grpc {
        t.put("grpc", true);
    }
    t.opt("client_cert_subject", m.client_cert.subject.as_deref())
        .opt("client_cert_dns", m.client_cert.dns.as_deref())
        .opt(
            "client_cert_fingerprint",
            m.client_cert.fingerprint.as_deref(),
        );
    if !m.claims.is_empty() {
        let mut claims = T::default();
        for (name, value) in &m.claims {
            claims.put(name, value.as_str());
        }
        t.put("claims", claims.done());
    }
    let headers: Vec<Value> = m
        .headers
        .iter()
        .map(|h| {
            let mut ht = T::default();
            ht.put("name", h.name.as_str())
                .opt("value", h.value.as_deref());
            Value::Table(ht.done())
        })
        .collect();
    t.list("headers", headers.into());
    match &r.action {
        Action::Proxy(p) => {
            if p.backends.is_empty() {
                t.put("cluster", p.cluster.as_str());
            } else {
                t.put("backends", backends(&p.backends));
                if let Some(split) = split(&p.split) {
                    t.put("split", split);
                }
            }
            if !p.request_headers.is_empty() {
                t.put("request_headers", header_rules(&p.request_headers));
            }
            if !p.response_headers.is_empty() {
                t.put("response_headers", header_rules(&p.response_headers));
            }
            if let Some(rr) = &p.regex_rewrite {
                t.put(
                    "regex_rewrite",
                    T::default()
                        .put("pattern", rr.pattern.as_str())
                        .put("replacement", rr.replacement.as_str())
                        .done(),
                );
            }
            if let Some(b) = &p.request_buffering {
                t.put(
                    "request_buffering",
                    T::default()
                        .put("max", size(b.max))
                        .put("memory", size(b.memory))
                        .done(),
                );
            }
            if let Some(b) = &p.response_buffering {
                t.put(
                    "response_buffering",
                    T::default().put("max", size(b.max)).done(),
                );
            }
            if !p.error_pages.is_empty() {
                let pages: Vec<Value> = p
                    .error_pages
                    .iter()
                    .map(|e| {
                        let mut t = T::default();
                        t.put(
                            "status",
                            Value::Array(e.statuses.iter().map(|s| int(*s)).collect()),
                        );
                        match &e.file {
                            Some(f) => t.put("file", path(f)),
                            None => t.put("body", e.body.as_str()),
                        };
                        t.put("content_type", e.content_type.as_str())
                            .put("upstream", e.upstream);
                        Value::Table(t.done())
                    })
                    .collect();
                t.put("error_pages", pages);
            }
            if !p.query.is_empty() {
                let mut q = T::default();
                if !p.query.set.is_empty() {
                    q.put("set", pairs(&p.query.set));
                }
                q.list("remove", texts(&p.query.remove));
                t.put("query", q.done());
            }
            if let Some(c) = &p.compression {
                t.put(
                    "compression",
                    T::default()
                        .put("algorithms", texts(&c.algorithms))
                        .put("content_types", texts(&c.content_types))
                        .put("min_size", size(c.min_size))
                        .put("gzip_level", int(c.gzip_level))
                        .put("brotli_level", int(c.brotli_level))
                        .put("zstd_level", int(c.zstd_level))
                        .put("decompress_requests", c.decompress_requests.is_some())
                        .opt("max_decompressed", c.decompress_requests.map(size))
                        .done(),
                );
            }
            if let Some(m) = &p.mirror {
                t.put(
                    "mirror",
                    T::default()
                        .put("cluster", m.cluster.as_str())
                        .put("percent", Value::Float(m.percent))
                        .put("max_body", size(m.max_body))
                        .put("host_suffix", m.host_suffix.as_str())
                        .put("timeout", dur(m.timeout))
                        .done(),
                );
            }
            t.opt("prefix_rewrite", p.prefix_rewrite.as_deref())
                .opt("host_rewrite", p.host_rewrite.as_deref())
                .put("websocket", p.websocket)
                .put("tunnel_idle_timeout", dur(p.tunnel_idle_timeout))
                .opt("tunnel_max_lifetime", p.tunnel_max_lifetime.map(dur))
                .put("grpc_web", p.grpc_web)
                .list("cors_allow_origins", texts(&p.cors_allow_origins))
                .put("abort_on_client_close", p.abort_on_client_close)
                .put("server_timing", p.server_timing)
                .opt("cache", p.cache.as_deref())
                .list("auth", texts(&p.auth))
                .list("auth_skip", texts(&p.auth_skip))
                .opt(
                    "auth_require",
                    (!p.auth.is_empty()).then_some(if p.auth_all { "all" } else { "any" }),
                )
                .list("rate_limit", texts(&p.rate_limit));
        }
        Action::Respond(a) => {
            let mut headers = T::default();
            for (k, v) in &a.headers {
                headers.put(k, v.as_str());
            }
            let respond = T::default()
                .put("status", int(a.status))
                .put("body", a.body.as_str())
                .opt("headers", (!a.headers.is_empty()).then(|| headers.done()))
                .done();
            t.put("respond", respond);
        }
        Action::Redirect(a) => {
            let redirect = T::default()
                .put("status", int(a.status))
                .put("location", a.location.as_str())
                .done();
            t.put("redirect", redirect);
        }
        Action::Files(f) => {
            let files = T::default()
                .put("root", path(&f.root))
                .put("index", texts(&f.index))
                .put("browse", f.browse)
                .put("follow_symlinks", f.follow_symlinks)
                .put("precompressed", f.precompressed)
                .done();
            t.put("files", files);
        }
    }
    Value::Table(t.done())
}

/// `name = value` pairs as a table.
fn pairs(list: &[(String, String)]) -> Table {
    let mut t = T::default();
    for (k, v) in list {
        t.put(k, v.as_str());
    }
    t.done()
}

/// A route's header rules.
fn header_rules(r: &HeaderRules) -> Table {
    let mut t = T::default();
    for (key, list) in [("set", &r.set), ("add", &r.add), ("append", &r.append)] {
        if !list.is_empty() {
            t.put(key, pairs(list));
        }
    }
    t.list("remove", texts(&r.remove));
    t.done()
}

/// A route's weighted backends.
fn backends(list: &[Backend]) -> Value {
    let pair = |(n, v): &(String, String)| format!("{n}={v}");
    Value::Array(
        list.iter()
            .map(|b| {
                Value::Table(
                    T::default()
                        .put("cluster", b.cluster.as_str())
                        .put("weight", int(b.weight))
                        .opt("header", b.header.as_ref().map(pair))
                        .opt("cookie", b.cookie.as_ref().map(pair))
                        .opt("query", b.query.as_ref().map(pair))
                        .done(),
                )
            })
            .collect(),
    )
}

/// A route's `split`, when it has settings.
fn split(s: &Split) -> Option<Table> {
    if s.sticky.is_none() && s.canary.is_none() {
        return None;
    }
    let mut t = T::default();
    match &s.sticky {
        Some(SplitSticky::Cookie(name)) => {
            t.put("sticky", "cookie").put("cookie_name", name.as_str());
        }
        Some(SplitSticky::Hash(key)) => {
            let key: Vec<String> = key.iter().map(ToString::to_string).collect();
            t.put("sticky", key.join("+"));
        }
        None => {}
    }
    if let Some(c) = &s.canary {
        t.put("canary", c.cluster.as_str())
            .put("max_5xx_ratio", Value::Float(c.max_5xx_ratio))
            .put("min_requests", int(c.min_requests))
            .put("window", dur(c.window));
    }
    Some(t.done())
}
