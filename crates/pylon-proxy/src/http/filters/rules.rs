//! Header and URL rules on a route: `request_headers` and `response_headers` (`remove`,
//! then `set`, `add` when absent, `append`), `regex_rewrite` of the upstream path
//! (after `prefix_rewrite`), and `query` parameters set and removed. Values are
//! templates with `{variables}` (`client_ip`, `request_id`, `route`, `cluster`,
//! `claim:NAME`, ...), compiled once per configuration into text and variable parts.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use pylon_config::model::{Action, HeaderRules, QueryRules};

use super::{ChosenCluster, Filter, FilterCtx, FilterSite};
use crate::conn::ClientBody;
use crate::http::body::ResponseBody;
use crate::http::error::ErrorKind;

/// A template: text and variables, in order.
#[derive(Clone)]
struct Template(Vec<Part>);

#[derive(Clone)]
enum Part {
    Text(String),
    Var(Var),
}

#[derive(Clone)]
enum Var {
    ClientIp,
    ClientPort,
    RequestId,
    Route,
    Cluster,
    Endpoint,
    Host,
    Method,
    Path,
    RequestUri,
    Query,
    Scheme,
    CertSubject,
    CertFingerprint,
    CertDns,
    TlsVersion,
    TlsCipher,
    TlsSni,
    TlsAlpn,
    TimeUnix,
    TimeHttp,
    Claim(String),
}

impl Template {
    /// Compiles a validated template (`{{` and `}}` are literal braces).
    fn parse(t: &str) -> Template {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = t;
        while let Some(i) = rest.find(['{', '}']) {
            text.push_str(&rest[..i]);
            let (c, after) = (rest.as_bytes()[i] as char, &rest[i + 1..]);
            if after.starts_with(c) {
                text.push(c);
                rest = &after[1..];
                continue;
            }
            let end = after.find('}').unwrap_or(after.len());
            let var = match &after[..end] {
                "client_ip" => Var::ClientIp,
                "client_port" => Var::ClientPort,
                "request_id" => Var::RequestId,
                "route" => Var::Route,
                "cluster" => Var::Cluster,
                "endpoint" => Var::Endpoint,
                "host" => Var::Host,
                "method" => Var::Method,
                "path" => Var::Path,
                "request_uri" => Var::RequestUri,
                "query" => Var::Query,
                "scheme" => Var::Scheme,
                "client_cert_subject" => Var::CertSubject,
                "client_cert_fingerprint" => Var::CertFingerprint,
                "client_cert_dns" => Var::CertDns,
                "tls_version" => Var::TlsVersion,
                "tls_cipher" => Var::TlsCipher,
                "tls_sni" => Var::TlsSni,
                "tls_alpn" => Var::TlsAlpn,
                "time_unix" => Var::TimeUnix,
                "time_http" => Var::TimeHttp,
                other => Var::Claim(other.strip_prefix("claim:").unwrap_or(other).to_owned()),
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Var(var));
            rest = after.get(end + 1..).unwrap_or("");
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Template(parts)
    }

    /// Whether it names a variable of the request's own (method, path, target, query),
    /// which phase 3 must then keep for the later phases.
    fn uses_request(&self) -> bool {
        self.0.iter().any(|p| {
            matches!(
                p,
                Part::Var(Var::Method | Var::Path | Var::RequestUri | Var::Query)
            )
        })
    }

    /// Whether it names what a TLS handshake negotiated, which TLS connections then
    /// keep ([`needs_tls_info`]).
    fn uses_tls(&self) -> bool {
        self.0.iter().any(|p| {
            matches!(
                p,
                Part::Var(Var::TlsVersion | Var::TlsCipher | Var::TlsSni | Var::TlsAlpn)
            )
        })
    }

    fn render(&self, cx: &FilterCtx<'_>, at: &At<'_>) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => match v {
                    Var::ClientIp => out.push_str(cx.conn.client_ip.to_str().unwrap_or("")),
                    Var::ClientPort => out.push_str(&cx.conn.client.port().to_string()),
                    Var::RequestId => {
                        if let Some(id) = &cx.request_id {
                            out.push_str(id.to_str().unwrap_or(""));
                        }
                    }
                    Var::Route => out.push_str(at.route),
                    Var::Cluster => {
                        if let Some(c) = cx.state.get::<ChosenCluster>() {
                            out.push_str(&c.0.name);
                        } else {
                            out.push_str(at.cluster);
                        }
                    }
                    Var::Endpoint => {
                        if let Some(e) = cx.endpoint {
                            out.push_str(&e.to_string());
                        }
                    }
                    Var::Host => {
                        if let Some(h) = &cx.client_authority {
                            out.push_str(h.to_str().unwrap_or(""));
                        }
                    }
                    Var::Method => out.push_str(at.request.map_or("", |f| &f.method)),
                    Var::Path => out.push_str(at.request.map_or("", |f| &f.path)),
                    Var::RequestUri => out.push_str(at.request.map_or("", |f| &f.target)),
                    Var::Query => out.push_str(at.request.map_or("", |f| &f.query)),
                    Var::Scheme => out.push_str(cx.conn.scheme),
                    Var::CertSubject => {
                        if let Some(c) = &cx.conn.client_cert {
                            out.push_str(&c.subject);
                        }
                    }
                    Var::CertFingerprint => {
                        if let Some(c) = &cx.conn.client_cert {
                            out.push_str(&c.fingerprint);
                        }
                    }
                    Var::CertDns => {
                        if let Some(c) = &cx.conn.client_cert {
                            out.push_str(&c.dns_names.join(","));
                        }
                    }
                    Var::TlsVersion => {
                        out.push_str(tls(cx).and_then(|t| t.version.as_deref()).unwrap_or(""));
                    }
                    Var::TlsCipher => {
                        out.push_str(tls(cx).and_then(|t| t.cipher.as_deref()).unwrap_or(""));
                    }
                    Var::TlsSni => {
                        out.push_str(tls(cx).and_then(|t| t.server_name.as_deref()).unwrap_or(""));
                    }
                    Var::TlsAlpn => out.push_str(
                        tls(cx)
                            .and_then(|t| t.alpn.as_deref())
                            .and_then(|a| std::str::from_utf8(a).ok())
                            .unwrap_or(""),
                    ),
                    Var::TimeUnix => out.push_str(
                        &std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs())
                            .to_string(),
                    ),
                    Var::TimeHttp => {
                        out.push_str(&httpdate::fmt_http_date(std::time::SystemTime::now()));
                    }
                    Var::Claim(name) => super::rate_limit::Claims::push(cx.state, name, &mut out),
                },
            }
        }
        out
    }
}

/// What the client connection's TLS handshake negotiated (none on cleartext).
fn tls<'c>(cx: &'c FilterCtx<'_>) -> Option<&'c crate::l4::proxy_protocol::TlsInfo> {
    cx.conn.tls.as_deref()
}

/// Whether some route's templates name a TLS variable (`{tls_version}`, ...): TLS
/// connections then keep what their handshake negotiated (`ConnCtx::tls`).
pub(crate) fn needs_tls_info(config: &pylon_config::model::Config) -> bool {
    config.routes.iter().any(|r| match &r.action {
        Action::Proxy(p) => p
            .request_headers
            .templates()
            .chain(p.response_headers.templates())
            .chain(p.query.set.iter().map(|(_, v)| v.as_str()))
            .any(|t| Template::parse(t).uses_tls()),
        Action::Redirect(rd) => Template::parse(&rd.location).uses_tls(),
        _ => false,
    })
}

/// Header rules compiled.
#[derive(Default)]
struct Headers {
    set: Vec<(HeaderName, Template)>,
    add: Vec<(HeaderName, Template)>,
    append: Vec<(HeaderName, Template)>,
    remove: Vec<HeaderName>,
}

impl Headers {
    fn new(r: &HeaderRules) -> Headers {
        let compile = |list: &[(String, String)]| {
            list.iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        Template::parse(v),
                    ))
                })
                .collect()
        };
        Headers {
            set: compile(&r.set),
            add: compile(&r.add),
            append: compile(&r.append),
            remove: r
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
            && self.remove.is_empty()
    }

    fn uses_request(&self) -> bool {
        [&self.set, &self.add, &self.append]
            .iter()
            .any(|l| l.iter().any(|(_, t)| t.uses_request()))
    }

    fn apply(&self, h: &mut HeaderMap, cx: &FilterCtx<'_>, at: &At<'_>) {
        for n in &self.remove {
            h.remove(n);
        }
        let value = |t: &Template| HeaderValue::from_str(&t.render(cx, at)).ok();
        for (n, t) in &self.set {
            if let Some(v) = value(t) {
                h.insert(n.clone(), v);
            }
        }
        for (n, t) in &self.add {
            if !h.contains_key(n)
                && let Some(v) = value(t)
            {
                h.insert(n.clone(), v);
            }
        }
        for (n, t) in &self.append {
            if let Some(v) = value(t) {
                h.append(n.clone(), v);
            }
        }
    }
}

/// Where a template is rendered: the route, its cluster (when no split chose one), and
/// the request's own parts when some template names them.
struct At<'s> {
    route: &'s str,
    cluster: &'s str,
    request: Option<&'s Facts>,
}

/// What later phases' templates need from the request (kept only when one names it).
#[derive(Clone)]
struct Facts {
    method: String,
    path: String,
    /// Path and query as the client sent them.
    target: String,
    query: String,
}

impl Facts {
    fn of<B>(req: &Request<B>) -> Facts {
        Facts {
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            target: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            query: req.uri().query().unwrap_or("").to_owned(),
        }
    }
}

/// A template (a redirect's `location`) rendered for a request outside a proxy route.
pub(crate) fn render_request<B>(
    text: &str,
    req: &Request<B>,
    cx: &FilterCtx<'_>,
    route: &str,
) -> String {
    let facts = Facts::of(req);
    let at = At {
        route,
        cluster: "",
        request: Some(&facts),
    };
    Template::parse(text).render(cx, &at)
}

pub(super) fn build(site: &FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    let Action::Proxy(p) = &site.route.action else {
        return None;
    };
    let request = Headers::new(&p.request_headers);
    let response = Headers::new(&p.response_headers);
    if request.is_empty() && response.is_empty() && p.regex_rewrite.is_none() && p.query.is_empty()
    {
        return None;
    }
    let regex = p
        .regex_rewrite
        .as_ref()
        .and_then(|r| Some((regex::Regex::new(&r.pattern).ok()?, r.replacement.clone())));
    let query = compile_query(&p.query);
    let needs_request = request.uses_request()
        || response.uses_request()
        || query.0.iter().any(|(_, t)| t.uses_request());
    Some(Arc::new(Rules {
        route: site.route.name.clone(),
        cluster: p.cluster.clone(),
        request,
        response,
        regex,
        query,
        needs_request,
    }))
}

fn compile_query(q: &QueryRules) -> (Vec<(String, Template)>, Vec<String>) {
    (
        q.set
            .iter()
            .map(|(k, v)| (k.clone(), Template::parse(v)))
            .collect(),
        q.remove.clone(),
    )
}

struct Rules {
    route: String,
    cluster: String,
    request: Headers,
    response: Headers,
    regex: Option<(regex::Regex, String)>,
    query: (Vec<(String, Template)>, Vec<String>),
    /// Some template names the request's method, path, target or query: phase 3 keeps
    /// them.
    needs_request: bool,
}

impl Rules {
    fn at<'s>(&'s self, cx: &'s FilterCtx<'_>) -> At<'s> {
        At {
            route: &self.route,
            cluster: &self.cluster,
            request: cx.state.get::<Facts>(),
        }
    }

    /// The upstream target after the regex rewrite and the query rules.
    fn target(&self, uri: &http::Uri, cx: &FilterCtx<'_>, at: &At<'_>) -> Option<http::Uri> {
        let mut path = uri.path().to_owned();
        if let Some((re, with)) = &self.regex {
            path = re.replace(&path, with.as_str()).into_owned();
        }
        let (set, remove) = &self.query;
        let mut params: Vec<(String, String)> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (p.to_owned(), String::new()),
            })
            .filter(|(k, _)| !remove.contains(k) && !set.iter().any(|(s, _)| s == k))
            .collect();
        for (k, t) in set {
            let v: String = percent_encoding::utf8_percent_encode(
                &t.render(cx, at),
                percent_encoding::NON_ALPHANUMERIC,
            )
            .collect();
            params.push((k.clone(), v));
        }
        let query: Vec<String> = params
            .into_iter()
            .map(|(k, v)| if v.is_empty() { k } else { format!("{k}={v}") })
            .collect();
        let target = if query.is_empty() {
            path
        } else {
            format!("{path}?{}", query.join("&"))
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(target.parse().ok()?);
        http::Uri::from_parts(parts).ok()
    }
}

impl Filter for Rules {
    fn name(&self) -> &'static str {
        "rules"
    }

    fn request(
        &self,
        req: &mut Request<ClientBody>,
        cx: &mut FilterCtx<'_>,
    ) -> Result<Option<Response<ResponseBody>>, ErrorKind> {
        if self.needs_request {
            cx.state.insert(Facts::of(req));
        }
        Ok(None)
    }

    fn upstream_head(&self, head: &mut http::request::Parts, cx: &mut FilterCtx<'_>) {
        let cx: &FilterCtx<'_> = cx;
        let at = self.at(cx);
        if (self.regex.is_some() || !self.query.0.is_empty() || !self.query.1.is_empty())
            && let Some(uri) = self.target(&head.uri, cx, &at)
        {
            head.uri = uri;
        }
        self.request.apply(&mut head.headers, cx, &at);
    }

    fn finish_head(&self, resp: &mut Response<ResponseBody>, cx: &mut FilterCtx<'_>) {
        let cx: &FilterCtx<'_> = cx;
        self.response.apply(resp.headers_mut(), cx, &self.at(cx));
    }
}
