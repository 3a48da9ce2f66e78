//! Cache keys and Vary. A key names a stored resource: by default the request's
//! scheme, host and target (GET and HEAD share it: they are one method class), with
//! optional request headers, cookies and query rules from the zone's `key` settings. A
//! stored response with `Vary` is one variant under its key, selected by the request's
//! values of the varying fields, normalised so that equivalent requests share it.

use http::HeaderMap;
use http::header::{self, HeaderName};

/// How a zone builds its keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySpec {
    /// Request headers whose values join the key.
    pub headers: Vec<HeaderName>,
    /// Cookies whose values join the key.
    pub cookies: Vec<String>,
    /// Query parameters left out of the key (`*`: the whole query).
    pub ignore_query: Vec<String>,
    /// Query parameters sorted by name, so that their order does not matter.
    pub sort_query: bool,
}

/// A request's cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The whole key (the store's index).
    pub text: String,
    /// Where its URL part ends (`scheme://host/path?query`).
    url_len: usize,
}

impl Key {
    /// The URL part: what purges by URL and prefix compare.
    pub fn url(&self) -> &str {
        &self.text[..self.url_len]
    }
}

impl KeySpec {
    /// The key of a request for `scheme://host` + `path_and_query`, with `headers`.
    pub fn key(&self, scheme: &str, host: &str, path_and_query: &str, headers: &HeaderMap) -> Key {
        let mut text = url_key(scheme, host, "");
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        text.push_str(if path.is_empty() { "/" } else { path });
        if let Some(q) = query {
            let q = self.query(q);
            if !q.is_empty() {
                text.push('?');
                text.push_str(&q);
            }
        }
        let url_len = text.len();
        for name in &self.headers {
            text.push('\n');
            text.push_str(name.as_str());
            text.push(':');
            let mut first = true;
            for v in headers.get_all(name) {
                if !first {
                    text.push(',');
                }
                first = false;
                text.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
        }
        for name in &self.cookies {
            text.push_str("\ncookie:");
            text.push_str(name);
            if let Some(v) = cookie(headers, name) {
                text.push('=');
                text.push_str(v);
            }
        }
        Key { text, url_len }
    }

    fn query(&self, q: &str) -> String {
        if self.ignore_query.iter().any(|p| p == "*") {
            return String::new();
        }
        if self.ignore_query.is_empty() && !self.sort_query {
            return q.to_owned();
        }
        let mut params: Vec<&str> = q
            .split('&')
            .filter(|kv| !kv.is_empty())
            .filter(|kv| {
                let name = kv.split_once('=').map_or(*kv, |(k, _)| k);
                !self.ignore_query.iter().any(|i| i == name)
            })
            .collect();
        if self.sort_query {
            // Stable: repeated names keep their order.
            params.sort_by_key(|kv| kv.split_once('=').map_or(*kv, |(k, _)| k));
        }
        params.join("&")
    }
}

/// The URL part of a key for `scheme://host` + `path_and_query` (what a purge by URL,
/// or an invalidation by `Location`, names).
pub fn url_key(scheme: &str, host: &str, path_and_query: &str) -> String {
    let mut text = String::with_capacity(scheme.len() + host.len() + path_and_query.len() + 3);
    text.push_str(&scheme.to_ascii_lowercase());
    text.push_str("://");
    // Hosts compare case-insensitively; a default port is the same origin.
    let host = host.to_ascii_lowercase();
    let host = match (scheme, host.rsplit_once(':')) {
        ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => h.to_owned(),
        _ => host,
    };
    text.push_str(&host);
    text.push_str(path_and_query);
    text
}

/// A cookie's value in the request's `Cookie` fields.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The most fields a `Vary` may name for its response to be stored; more is refused
/// (a response varying on many fields would fill the zone with variants no one reuses).
pub const MAX_VARY_FIELDS: usize = 16;

/// A response's `Vary`, as a stored variant keeps it: the field names, or `None` for
/// `Vary: *` (never reused) or a list too long to keep.
pub fn vary_fields(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(header::VARY) {
        let text = v.to_str().ok()?;
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    (names.len() <= MAX_VARY_FIELDS).then_some(names)
}

/// The request's values of the varying `fields`, normalised (absent stays `None`,
/// distinct from empty).
pub fn vary_values(fields: &[HeaderName], headers: &HeaderMap) -> Vec<Option<String>> {
    fields.iter().map(|f| normalized(f, headers)).collect()
}

/// One field's value as Vary compares it: all lines joined, whitespace around commas
/// dropped; `Accept-Encoding` also as a sorted set of the codings it accepts (q=0 and
/// parameters dropped, case folded), so `gzip, br` and `br;q=1.0,GZIP` are one variant.
fn normalized(name: &HeaderName, headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let joined: Vec<String> = values
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let joined = joined.join(",");
    if name == header::ACCEPT_ENCODING {
        let mut codings: Vec<String> = joined
            .split(',')
            .filter_map(|item| {
                let mut parts = item.split(';');
                let coding = parts.next()?.trim().to_ascii_lowercase();
                let refused = parts.any(|p| {
                    let p = p.trim();
                    p.strip_prefix("q=")
                        .or_else(|| p.strip_prefix("Q="))
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                (!coding.is_empty() && !refused).then_some(coding)
            })
            .collect();
        codings.sort();
        codings.dedup();
        return Some(codings.join(","));
    }
    Some(
        joined
            .split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(","),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn the_default_key_is_scheme_host_and_target() {
        let spec = KeySpec::default();
        let k = spec.key("http", "Example.COM:80", "/a?b=1", &HeaderMap::new());
        assert_eq!(k.text, "http://example.com/a?b=1");
        assert_eq!(k.url(), "http://example.com/a?b=1");
        assert_ne!(
            spec.key("https", "example.com", "/a?b=1", &HeaderMap::new()),
            k
        );
    }

    #[test]
    fn query_rules_sort_and_ignore() {
        let spec = KeySpec {
            ignore_query: vec!["utm_source".into()],
            sort_query: true,
            ..KeySpec::default()
        };
        let h = HeaderMap::new();
        let a = spec.key("http", "h", "/p?z=1&utm_source=x&a=2", &h);
        let b = spec.key("http", "h", "/p?a=2&z=1", &h);
        assert_eq!(a, b);
        assert_eq!(a.url(), "http://h/p?a=2&z=1");
        let all = KeySpec {
            ignore_query: vec!["*".into()],
            ..KeySpec::default()
        };
        assert_eq!(all.key("http", "h", "/p?x", &h).text, "http://h/p");
    }

    #[test]
    fn headers_and_cookies_join_the_key_after_the_url() {
        let spec = KeySpec {
            headers: vec![HeaderName::from_static("x-tenant")],
            cookies: vec!["lang".into()],
            ..KeySpec::default()
        };
        let a = spec.key(
            "http",
            "h",
            "/",
            &headers(&[("x-tenant", "a"), ("cookie", "id=1; lang=fr")]),
        );
        let b = spec.key(
            "http",
            "h",
            "/",
            &headers(&[("x-tenant", "b"), ("cookie", "lang=fr")]),
        );
        assert_ne!(a, b);
        assert_eq!(a.url(), b.url());
        assert!(a.text.ends_with("\ncookie:lang=fr"));
    }

    #[test]
    fn accept_encoding_is_normalised_for_vary() {
        let f = [header::ACCEPT_ENCODING];
        let a = vary_values(&f, &headers(&[("accept-encoding", "gzip, br")]));
        let b = vary_values(
            &f,
            &headers(&[
                ("accept-encoding", "BR;q=1.0"),
                ("accept-encoding", "gzip,identity;q=0"),
            ]),
        );
        assert_eq!(a, b);
        assert_eq!(vary_values(&f, &HeaderMap::new()), vec![None]);
        assert_eq!(
            vary_values(&f, &headers(&[("accept-encoding", "")])),
            vec![Some(String::new())]
        );
    }

    #[test]
    fn vary_star_and_huge_varies_are_not_kept() {
        assert_eq!(vary_fields(&headers(&[("vary", "accept, *")])), None);
        let many: Vec<String> = (0..40).map(|i| format!("x-f{i}")).collect();
        assert_eq!(vary_fields(&headers(&[("vary", &many.join(","))])), None);
        assert_eq!(
            vary_fields(&headers(&[
                ("vary", "Accept, accept-language"),
                ("vary", "accept")
            ])),
            Some(vec![header::ACCEPT, header::ACCEPT_LANGUAGE])
        );
        // A name that is no field name cannot be matched: not kept.
        assert_eq!(vary_fields(&headers(&[("vary", "a b")])), None);
    }
}
