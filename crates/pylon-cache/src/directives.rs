//! Cache-Control directives (RFC 9111 §5.2), parsed once per message, tolerant of what
//! real servers send: names are case-insensitive, values may be quoted, unknown
//! directives are kept aside and ignored, and a malformed value makes its directive
//! count as its most conservative reading (an unreadable `max-age` is zero: stale).

use http::HeaderMap;
use http::header::HeaderName;

/// A delta-seconds value too large to represent reads as this (RFC 9111 §1.2.2).
pub const DELTA_MAX: u64 = 2_147_483_648;

/// The directives of one message's Cache-Control field (all its lines together).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    /// `no-cache`; the field names of a qualified `no-cache="a, b"` are in
    /// [`Directives::no_cache_fields`] (and then this is false).
    pub no_cache: bool,
    pub no_cache_fields: Vec<String>,
    /// `private`; qualified as for `no-cache`.
    pub private: bool,
    pub private_fields: Vec<String>,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub immutable: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// Request directives.
    pub max_stale: Option<MaxStale>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
    pub no_transform: bool,
}

/// A request's `max-stale`: any staleness, or at most so many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxStale {
    Any,
    Seconds(u64),
}

impl Directives {
    /// The directives in every `name` line of `headers` (a list across lines).
    pub fn parse(headers: &HeaderMap, name: &HeaderName) -> Directives {
        let mut d = Directives::default();
        for value in headers.get_all(name) {
            // A field that is not text is not understood: none of its directives apply.
            if let Ok(text) = std::str::from_utf8(value.as_bytes()) {
                d.add(text);
            }
        }
        d
    }

    fn add(&mut self, text: &str) {
        for (name, value) in split_directives(text) {
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                "max-age" => self.max_age = Some(first(self.max_age, delta(value))),
                "s-maxage" => self.s_maxage = Some(first(self.s_maxage, delta(value))),
                "no-store" => self.no_store = true,
                "no-cache" => match value {
                    Some(v) if !v.is_empty() => self.no_cache_fields.extend(fields(v)),
                    _ => self.no_cache = true,
                },
                "private" => match value {
                    Some(v) if !v.is_empty() => self.private_fields.extend(fields(v)),
                    _ => self.private = true,
                },
                "public" => self.public = true,
                "must-revalidate" => self.must_revalidate = true,
                "proxy-revalidate" => self.proxy_revalidate = true,
                "must-understand" => self.must_understand = true,
                "immutable" => self.immutable = true,
                "stale-while-revalidate" => {
                    self.stale_while_revalidate = delta_opt(value);
                }
                "stale-if-error" => self.stale_if_error = delta_opt(value),
                "max-stale" => {
                    self.max_stale = Some(match value {
                        None => MaxStale::Any,
                        // An unreadable bound allows no staleness.
                        v => MaxStale::Seconds(delta(v)),
                    });
                }
                "min-fresh" => self.min_fresh = Some(delta(value)),
                "only-if-cached" => self.only_if_cached = true,
                "no-transform" => self.no_transform = true,
                _ => {}
            }
        }
    }
}

/// Whether every `name` line of `headers` is a valid Structured Field Dictionary (RFC
/// 8941 §3.2) whose lifetime directives are non-negative integers: what a targeted
/// Cache-Control field must be to count (RFC 9213 §2.1).
pub fn valid_targeted(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers.get_all(name).iter().all(|v| {
        let Ok(text) = std::str::from_utf8(v.as_bytes()) else {
            return false;
        };
        text.split(',')
            .all(|member| valid_member(member.trim_matches([' ', '\t'])))
    })
}

/// One dictionary member: `key`, `key=item` or either with `;parameters`.
fn valid_member(m: &str) -> bool {
    let (main, _params) = m.split_once(';').unwrap_or((m, ""));
    let (key, value) = match main.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (main, None),
    };
    let key_ok = key
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
        && key.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.' | b'*')
        });
    if !key_ok {
        return false;
    }
    let integer = |v: &str| !v.is_empty() && v.len() <= 15 && v.bytes().all(|b| b.is_ascii_digit());
    match (key, value) {
        ("max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error", Some(v)) => {
            integer(v)
        }
        ("max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error", None) => false,
        (_, None) => true,
        (_, Some(v)) => bare_item(v),
    }
}

/// An sf-item without parameters: integer or decimal, string, token, byte sequence or
/// boolean.
fn bare_item(v: &str) -> bool {
    let b = v.as_bytes();
    match b.first() {
        Some(b'"') => v.len() >= 2 && v.ends_with('"'),
        Some(b':') => v.len() >= 2 && v.ends_with(':'),
        Some(b'?') => v == "?0" || v == "?1",
        Some(c) if c.is_ascii_digit() || *c == b'-' => v
            .trim_start_matches('-')
            .bytes()
            .all(|c| c.is_ascii_digit() || c == b'.'),
        Some(c) if c.is_ascii_alphabetic() || *c == b'*' => v
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c)),
        _ => false,
    }
}

/// The first occurrence of a duplicated directive wins, unless the later one is
/// stricter (a smaller lifetime): two differing values make the response no fresher
/// than the smaller (RFC 9111 §4.2.1 allows treating it as stale).
fn first(old: Option<u64>, new: u64) -> u64 {
    match old {
        Some(o) => o.min(new),
        None => new,
    }
}

/// A delta-seconds value; missing or unreadable is zero (the conservative reading).
fn delta(value: Option<&str>) -> u64 {
    delta_opt(value).unwrap_or(0)
}

/// A delta-seconds value, `None` when unreadable (the directive is then ignored).
fn delta_opt(value: Option<&str>) -> Option<u64> {
    let v = value?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().map_or(DELTA_MAX, |n| n.min(DELTA_MAX)))
}

/// Field names of a qualified `no-cache` or `private`, lower-cased.
fn fields(v: &str) -> impl Iterator<Item = String> + '_ {
    v.split(',')
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty())
}

/// Splits `a, b=1, c="x, y"` into `(name, value)` pairs, unquoting quoted values.
pub(crate) fn split_directives(text: &str) -> Vec<(&str, Option<&str>)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // Skip separators and whitespace.
        while i < bytes.len() && matches!(bytes[i], b',' | b' ' | b'\t') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !matches!(bytes[i], b',' | b'=') {
            i += 1;
        }
        let name = text[start..i].trim();
        let mut value = None;
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let vs = i;
                while i < bytes.len() && bytes[i] != b'"' {
                    // A quoted-pair keeps the next character.
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                value = Some(text.get(vs..i.min(bytes.len())).unwrap_or(""));
                // Past the closing quote, up to the next comma.
                while i < bytes.len() && bytes[i] != b',' {
                    i += 1;
                }
            } else {
                let vs = i;
                while i < bytes.len() && bytes[i] != b',' {
                    i += 1;
                }
                value = Some(text[vs..i].trim());
            }
        }
        if !name.is_empty() {
            out.push((name, value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http::header::CACHE_CONTROL;

    fn cc(lines: &[&str]) -> Directives {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(CACHE_CONTROL, HeaderValue::from_str(l).expect("value"));
        }
        Directives::parse(&h, &CACHE_CONTROL)
    }

    #[test]
    fn directives_are_read_across_lines_case_insensitively_with_quoted_values() {
        let d = cc(&[
            "Max-Age=60, PUBLIC",
            "s-maxage=\"30\", no-cache=\"Set-Cookie, x-a\"",
        ]);
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.s_maxage, Some(30));
        assert!(d.public);
        assert!(!d.no_cache);
        assert_eq!(d.no_cache_fields, vec!["set-cookie", "x-a"]);
    }

    #[test]
    fn malformed_values_read_conservatively() {
        assert_eq!(cc(&["max-age=abc"]).max_age, Some(0));
        assert_eq!(cc(&["max-age=-1"]).max_age, Some(0));
        assert_eq!(cc(&["max-age"]).max_age, Some(0));
        assert_eq!(
            cc(&["max-age=99999999999999999999"]).max_age,
            Some(DELTA_MAX)
        );
        // Two values: no fresher than the smaller.
        assert_eq!(cc(&["max-age=100, max-age=5"]).max_age, Some(5));
        assert_eq!(
            cc(&["stale-while-revalidate=x"]).stale_while_revalidate,
            None
        );
        assert_eq!(cc(&["max-stale"]).max_stale, Some(MaxStale::Any));
        assert_eq!(cc(&["max-stale=7"]).max_stale, Some(MaxStale::Seconds(7)));
    }

    #[test]
    fn garbage_never_panics_and_keeps_what_it_can() {
        let d = cc(&[",,, =, \"\", max-age=10, private=\"unterminated"]);
        assert_eq!(d.max_age, Some(10));
        assert_eq!(d.private_fields, vec!["unterminated"]);
    }

    #[test]
    fn a_targeted_field_must_be_a_valid_dictionary_with_integer_lifetimes() {
        let t = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                "cdn-cache-control",
                HeaderValue::from_str(v).expect("value"),
            );
            valid_targeted(&h, &HeaderName::from_static("cdn-cache-control"))
        };
        assert!(t("max-age=600, stale-while-revalidate=30"));
        assert!(t("no-store"));
        assert!(t("private=\"set-cookie\", max-age=5"));
        assert!(!t("max-age=10000, &&&&&"));
        assert!(!t("max-age=\"10000\""));
        assert!(!t("Max-Age=10"));
        assert!(!t("max-age"));
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_without_panicking(s in "\\PC{0,80}") {
            let _ = split_directives(&s);
        }
    }
}
