//! A stored response: its head as the cache keeps it (hop-by-hop fields and fields a
//! qualified `no-cache`/`private` names are not stored), its freshness facts, the
//! request values it was selected by (Vary), its tags, and its body as the chunks it
//! arrived in (shared, never copied when served).

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, StatusCode};

use crate::directives::Directives;
use crate::policy::Freshness;

/// Hop-by-hop fields (RFC 9110 §7.6.1 and the older ones still seen): never stored.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "keep-alive"
            | "proxy-connection"
    )
}

/// A stored response's head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub freshness: Freshness,
    /// The fields it varies on, and the request's values of them when it was stored.
    pub vary: Vec<HeaderName>,
    pub vary_values: Vec<Option<String>>,
    /// `Surrogate-Key` and `Cache-Tag` values, for purges by tag.
    pub tags: Vec<String>,
}

impl Head {
    /// The head to store from a response's `status` and `headers`, governed by `cc`.
    pub fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        cc: &Directives,
        freshness: Freshness,
        vary: Vec<HeaderName>,
        vary_values: Vec<Option<String>>,
    ) -> Head {
        strip_for_storage(&mut headers, cc);
        let tags = tags(&headers);
        Head {
            status,
            headers,
            freshness,
            vary,
            vary_values,
            tags,
        }
    }

    /// The declared body length, when the response has one.
    pub fn content_length(&self) -> Option<u64> {
        self.headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    /// Whether a request with these varying values selects this response.
    pub fn selected_by(&self, values: &[Option<String>]) -> bool {
        self.vary_values == values
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    fn weight(&self) -> u64 {
        let fields: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        (fields + self.tags.iter().map(|t| t.len() + 24).sum::<usize>() + 256) as u64
    }
}

/// Removes what is not stored: hop-by-hop fields and those `Connection` names, `Age`
/// (recomputed on every answer), and fields a qualified `no-cache` or `private` names
/// (RFC 9111 §5.2.2.4, §5.2.2.7: served only after revalidation, so never from here).
fn strip_for_storage(headers: &mut HeaderMap, cc: &Directives) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in hop.iter().chain(&listed) {
        headers.remove(name);
    }
    headers.remove(header::AGE);
    for name in cc.no_cache_fields.iter().chain(&cc.private_fields) {
        headers.remove(name.as_str());
    }
}

/// Tags from `Surrogate-Key` (space-separated) and `Cache-Tag` (comma-separated).
fn tags(headers: &HeaderMap) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let lines = |name: &'static str| {
        headers
            .get_all(name)
            .into_iter()
            .filter_map(|v| v.to_str().ok())
    };
    let surrogate = lines("surrogate-key").flat_map(|v| v.split_ascii_whitespace());
    let cache_tag = lines("cache-tag").flat_map(|v| v.split(',').map(str::trim));
    for t in surrogate.chain(cache_tag) {
        if !t.is_empty() && !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    out
}

/// A whole stored response.
#[derive(Debug)]
pub struct Entry {
    pub head: Head,
    pub body: Vec<Bytes>,
    pub len: u64,
    pub trailers: Option<HeaderMap>,
}

impl Entry {
    pub fn new(head: Head, body: Vec<Bytes>, trailers: Option<HeaderMap>) -> Entry {
        let len = body.iter().map(|b| b.len() as u64).sum();
        Entry {
            head,
            body,
            len,
            trailers,
        }
    }

    /// What it counts against its zone's memory.
    pub fn weight(&self) -> u64 {
        self.len + self.head.weight() + self.body.len() as u64 * 32
    }

    /// Bytes `range` of the body (within it), copied only when it spans chunks.
    pub fn slice(&self, range: std::ops::Range<u64>) -> Bytes {
        let mut out: Vec<u8> = Vec::new();
        let mut at = 0u64;
        for chunk in &self.body {
            let end = at + chunk.len() as u64;
            if end > range.start && at < range.end {
                let from = (range.start.max(at) - at) as usize;
                let to = (range.end.min(end) - at) as usize;
                if out.is_empty() && range.start >= at && range.end <= end {
                    return chunk.slice(from..to);
                }
                out.extend_from_slice(&chunk[from..to]);
            }
            at = end;
        }
        Bytes::from(out)
    }

    /// The body as one piece (tests compare bodies with it).
    #[cfg(test)]
    pub fn contiguous(&self) -> Bytes {
        match self.body.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut v = Vec::with_capacity(self.len as usize);
                for b in many {
                    v.extend_from_slice(b);
                }
                Bytes::from(v)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::{Duration, SystemTime};

    #[test]
    fn storage_drops_hop_by_hop_connection_listed_age_and_qualified_fields() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("age", "10"),
            ("x-secret", "s"),
            ("x-kept", "k"),
            ("surrogate-key", "a b"),
            ("cache-tag", "b, c"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let cc = Directives {
            private_fields: vec!["x-secret".into()],
            ..Directives::default()
        };
        let f = Freshness {
            request_time: SystemTime::UNIX_EPOCH,
            response_time: SystemTime::UNIX_EPOCH,
            date: SystemTime::UNIX_EPOCH,
            age_value: 0,
            lifetime: Duration::ZERO,
            heuristic: false,
            must_revalidate: false,
            no_cache: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        };
        let head = Head::new(StatusCode::OK, h, &cc, f, Vec::new(), Vec::new());
        let mut names: Vec<&str> = head.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["cache-tag", "surrogate-key", "x-kept"]);
        assert_eq!(head.tags, vec!["a", "b", "c"]);
    }
}
