//! Answers from a stored response: the client's conditionals (`If-None-Match`,
//! `If-Modified-Since`, RFC 9110 §13.2.2, RFC 9111 §4.3.2), `HEAD`, and byte ranges
//! (RFC 9110 §14: one range as a 206 with `Content-Range`, several as
//! `multipart/byteranges`, none satisfiable as a 416), with `Age` (RFC 9111 §5.1).

use std::ops::Range;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};

use crate::entry::{Entry, Head};

/// The most ranges one request may ask for; more is answered with the whole body.
pub const MAX_RANGES: usize = 16;

/// How a stored response answers a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 304: the client's validators match.
    NotModified,
    /// The whole response.
    Full,
    /// 206 with these ranges of the body.
    Partial(Vec<Range<u64>>),
    /// 416: no range the client asked for is in the body.
    Unsatisfiable,
}

/// The answer to a `method` request with `req` headers from `head`, whose whole body is
/// `len` bytes when known (ranges need it).
pub fn choose(method: &Method, req: &HeaderMap, head: &Head, len: Option<u64>) -> Answer {
    let get_or_head = *method == Method::GET || *method == Method::HEAD;
    if get_or_head && head.status.is_success() && not_modified(req, &head.headers) {
        return Answer::NotModified;
    }
    if *method != Method::GET || head.status != StatusCode::OK {
        return Answer::Full;
    }
    let (Some(range), Some(len)) = (req.get(header::RANGE), len) else {
        return Answer::Full;
    };
    if !if_range_holds(req, &head.headers) {
        return Answer::Full;
    }
    match parse_ranges(range.as_bytes(), len) {
        None => Answer::Full,
        Some(r) if r.is_empty() => Answer::Unsatisfiable,
        // Ranges that overlap, or ask for more than the body, get the body once
        // (RFC 9110 §14.2 lets a server ignore them): no amplification.
        Some(r) if overlapping(&r) => Answer::Full,
        Some(r) => Answer::Partial(r),
    }
}

fn overlapping(ranges: &[Range<u64>]) -> bool {
    let mut sorted: Vec<&Range<u64>> = ranges.iter().collect();
    sorted.sort_by_key(|r| r.start);
    sorted.windows(2).any(|w| w[1].start < w[0].end)
}

/// Whether a request's conditionals ask for something this cache does not evaluate
/// (`If-Match`, `If-Unmodified-Since`): such a request goes to the upstream.
pub fn has_preconditions(req: &HeaderMap) -> bool {
    req.contains_key(header::IF_MATCH) || req.contains_key(header::IF_UNMODIFIED_SINCE)
}

/// RFC 9110 §13.1.2 and §13.1.3: `If-None-Match` by weak comparison, else
/// `If-Modified-Since` against `Last-Modified` (or `Date`).
fn not_modified(req: &HeaderMap, stored: &HeaderMap) -> bool {
    if req.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return req
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .any(|v| v.as_bytes().trim_ascii() == b"*");
        };
        let etag = etag.trim().trim_start_matches("W/");
        return req
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/") == etag);
    }
    let Some(since) = date(req, header::IF_MODIFIED_SINCE) else {
        return false;
    };
    match date(stored, header::LAST_MODIFIED).or_else(|| date(stored, header::DATE)) {
        Some(modified) => modified <= since,
        None => false,
    }
}

/// `If-Range`: a strong entity tag equal to the stored one, or the stored
/// `Last-Modified` exactly (RFC 9110 §13.1.5); absent holds.
fn if_range_holds(req: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(v) = req.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let v = v.trim();
    if v.starts_with('"') {
        return stored
            .get(header::ETAG)
            .and_then(|e| e.to_str().ok())
            .is_some_and(|e| e.trim() == v);
    }
    if v.starts_with("W/") {
        return false;
    }
    match (
        httpdate::parse_http_date(v).ok(),
        date(stored, header::LAST_MODIFIED),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn date(h: &HeaderMap, name: HeaderName) -> Option<SystemTime> {
    crate::policy::parse_date(h.get(name)?.as_bytes())
}

/// `bytes=` ranges against a body of `len` bytes: `None` when the field is not one
/// this cache reads (another unit, bad syntax, too many ranges: the whole body is sent),
/// else the satisfiable ranges (empty: none is).
pub fn parse_ranges(v: &[u8], len: u64) -> Option<Vec<Range<u64>>> {
    let v = std::str::from_utf8(v).ok()?.trim();
    let (unit, set) = v.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let specs: Vec<&str> = set
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if specs.is_empty() || specs.len() > MAX_RANGES {
        return None;
    }
    let mut out = Vec::new();
    for spec in specs {
        let (first, last) = spec.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let range = match (first.trim(), last.trim()) {
            (f, l) if digits(f) => {
                let start: u64 = f.parse().ok()?;
                let end = if l.is_empty() {
                    len
                } else if digits(l) {
                    let l: u64 = l.parse().ok()?;
                    if l < start {
                        return None;
                    }
                    l.saturating_add(1).min(len)
                } else {
                    return None;
                };
                (start < len).then_some(start..end)
            }
            ("", l) if digits(l) => {
                let n: u64 = l.parse().ok()?;
                (n > 0 && len > 0).then(|| len.saturating_sub(n)..len)
            }
            _ => return None,
        };
        out.extend(range);
    }
    Some(out)
}

/// The stored headers as an answer carries them, with its `Age` at `now`.
pub fn headers_at(head: &Head, now: SystemTime) -> HeaderMap {
    let mut h = head.headers.clone();
    h.insert(
        header::AGE,
        HeaderValue::from(head.freshness.current_age(now).as_secs()),
    );
    h
}

/// The fields a 304 carries (RFC 9110 §15.4.5), with `Age`.
pub fn not_modified_headers(head: &Head, now: SystemTime) -> HeaderMap {
    let mut h = HeaderMap::new();
    for name in [
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::VARY,
        header::LAST_MODIFIED,
    ] {
        for v in head.headers.get_all(&name) {
            h.append(name.clone(), v.clone());
        }
    }
    h.insert(
        header::AGE,
        HeaderValue::from(head.freshness.current_age(now).as_secs()),
    );
    h
}

/// A 206's headers and body for `ranges` of `entry`: one range with `Content-Range`,
/// several as `multipart/byteranges` with `boundary`.
pub fn partial(
    entry: &Entry,
    ranges: &[Range<u64>],
    now: SystemTime,
    boundary: &str,
) -> (HeaderMap, Bytes) {
    let mut h = headers_at(&entry.head, now);
    let len = entry.len;
    let slice = |r: &Range<u64>| entry.slice(r.clone());
    if let [one] = ranges {
        h.insert(header::CONTENT_RANGE, content_range(one, len));
        h.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(one.end - one.start),
        );
        return (h, slice(one));
    }
    let content_type = h.remove(header::CONTENT_TYPE);
    let mut out = Vec::new();
    for r in ranges {
        out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        if let Some(ct) = &content_type {
            out.extend_from_slice(b"Content-Type: ");
            out.extend_from_slice(ct.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Content-Range: ");
        out.extend_from_slice(content_range(r, len).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&slice(r));
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}")) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    (h, Bytes::from(out))
}

fn content_range(r: &Range<u64>, len: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "bytes {}-{}/{len}",
        r.start,
        r.end.saturating_sub(1)
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
}

/// A 416's `Content-Range`.
pub fn unsatisfiable_range(len: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("bytes */{len}"))
        .unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::policy::Freshness;
    use std::time::Duration;

    fn head(pairs: &[(&'static str, &str)]) -> Head {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("value"));
        }
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let f = Freshness {
            request_time: t,
            response_time: t,
            date: t,
            age_value: 0,
            lifetime: Duration::from_secs(60),
            heuristic: false,
            must_revalidate: false,
            no_cache: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        };
        Head::new(StatusCode::OK, h, &Default::default(), f, vec![], vec![])
    }

    fn req(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn conditionals_are_answered_with_304_when_they_match() {
        let lm = "Tue, 14 Nov 2023 22:13:20 GMT";
        let h = head(&[("etag", "\"v1\""), ("last-modified", lm)]);
        let get = Method::GET;
        assert_eq!(
            choose(
                &get,
                &req(&[("if-none-match", "\"v0\", W/\"v1\"")]),
                &h,
                Some(3)
            ),
            Answer::NotModified
        );
        assert_eq!(
            choose(&get, &req(&[("if-none-match", "\"v0\"")]), &h, Some(3)),
            Answer::Full
        );
        // If-None-Match takes precedence over If-Modified-Since.
        assert_eq!(
            choose(
                &get,
                &req(&[("if-none-match", "\"v0\""), ("if-modified-since", lm)]),
                &h,
                Some(3)
            ),
            Answer::Full
        );
        assert_eq!(
            choose(&get, &req(&[("if-modified-since", lm)]), &h, Some(3)),
            Answer::NotModified
        );
        assert_eq!(
            choose(
                &get,
                &req(&[("if-modified-since", "Mon, 13 Nov 2023 22:13:20 GMT")]),
                &h,
                Some(3)
            ),
            Answer::Full
        );
        assert_eq!(
            choose(&Method::HEAD, &req(&[("if-none-match", "*")]), &h, Some(3)),
            Answer::NotModified
        );
    }

    #[test]
    fn ranges_single_multiple_suffix_and_unsatisfiable() {
        assert_eq!(parse_ranges(b"bytes=0-4", 10), Some(vec![0..5]));
        assert_eq!(parse_ranges(b"bytes=8-", 10), Some(vec![8..10]));
        assert_eq!(parse_ranges(b"bytes=-3", 10), Some(vec![7..10]));
        assert_eq!(parse_ranges(b"bytes=5-100", 10), Some(vec![5..10]));
        assert_eq!(parse_ranges(b"bytes=0-1, 4-5", 10), Some(vec![0..2, 4..6]));
        assert_eq!(parse_ranges(b"bytes=20-30", 10), Some(vec![]));
        assert_eq!(parse_ranges(b"bytes=5-2", 10), None);
        assert_eq!(parse_ranges(b"items=0-1", 10), None);
        assert_eq!(parse_ranges(b"bytes=a-b", 10), None);
        let many = format!("bytes={}", vec!["0-0"; 40].join(","));
        assert_eq!(parse_ranges(many.as_bytes(), 10), None);
    }

    #[test]
    fn if_range_with_another_validator_gets_the_whole_body() {
        let h = head(&[("etag", "\"v1\"")]);
        let get = Method::GET;
        assert_eq!(
            choose(
                &get,
                &req(&[("range", "bytes=0-1"), ("if-range", "\"v1\"")]),
                &h,
                Some(5)
            ),
            Answer::Partial(vec![0..2])
        );
        assert_eq!(
            choose(
                &get,
                &req(&[("range", "bytes=0-1"), ("if-range", "\"v2\"")]),
                &h,
                Some(5)
            ),
            Answer::Full
        );
        assert_eq!(
            choose(&get, &req(&[("range", "bytes=9-")]), &h, Some(5)),
            Answer::Unsatisfiable
        );
        assert_eq!(
            choose(&Method::HEAD, &req(&[("range", "bytes=0-1")]), &h, Some(5)),
            Answer::Full
        );
    }

    #[test]
    fn multipart_byteranges_frame_each_part() {
        let h = head(&[("content-type", "text/plain")]);
        let e = Entry::new(
            h,
            vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")],
            None,
        );
        let now = e.head.freshness.response_time;
        let (one, body) = partial(&e, &[6..11], now, "B");
        assert_eq!(&body[..], b"world");
        assert_eq!(
            one.get("content-range").map(|v| v.as_bytes()),
            Some(&b"bytes 6-10/11"[..])
        );
        let (hs, body) = partial(&e, &[0..1, 10..11], now, "B");
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("Content-Range: bytes 0-0/11\r\n\r\nh"));
        assert!(text.contains("Content-Range: bytes 10-10/11\r\n\r\nd"));
        assert!(text.ends_with("--B--\r\n"));
        assert_eq!(
            hs.get("content-type").map(|v| v.as_bytes()),
            Some(&b"multipart/byteranges; boundary=B"[..])
        );
    }
}
