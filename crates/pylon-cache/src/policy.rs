//! RFC 9111 for a shared cache: whether a response may be stored (§3), how long it is
//! fresh (§4.2.1, heuristics §4.2.2), its age (§4.2.3), whether a request may reuse it
//! (§4.2, §5.2.1) or must revalidate it, when it may be served stale (RFC 5861's
//! `stale-while-revalidate` and `stale-if-error`), how a 304 updates it (§3.2, §4.3.4),
//! and targeted fields such as `CDN-Cache-Control` (RFC 9213).
//!
//! Written here rather than taken from the `http-cache-semantics` crate: that crate
//! follows RFC 7234, keeps a copy of both header maps in every policy and parses
//! Cache-Control again on each lookup, knows neither RFC 5861 nor targeted fields nor
//! qualified `private`/`no-cache`, and unwraps on header values it rebuilds. A stored
//! response here keeps only the numbers below, computed once when it is stored.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderName};
use http::{HeaderMap, Method, StatusCode};

use crate::directives::{Directives, MaxStale};

/// A zone's policy settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// The fraction of `Date - Last-Modified` a heuristically cacheable response stays
    /// fresh without an explicit lifetime (RFC 9111 §4.2.2 suggests 10%).
    pub heuristic_fraction: f64,
    /// The most a heuristic lifetime may be.
    pub heuristic_max: Duration,
    /// Staleness served while revalidating in the background, when the response does
    /// not say (`stale-while-revalidate`).
    pub stale_while_revalidate: Duration,
    /// Staleness served when the upstream fails, when the response does not say.
    pub stale_if_error: Duration,
    /// Targeted Cache-Control fields this cache obeys, first match wins (RFC 9213), e.g.
    /// `pylon-cache-control`, `cdn-cache-control`.
    pub targeted: Vec<HeaderName>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            heuristic_fraction: 0.1,
            heuristic_max: Duration::from_secs(86_400),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            targeted: vec![HeaderName::from_static("cdn-cache-control")],
        }
    }
}

/// Why a response was not stored (the `Cache-Status` detail and a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    /// Nothing makes it reusable: no lifetime, not cacheable by default.
    NoFreshness,
}

impl NotStorable {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::VaryStar => "vary",
            NotStorable::NoFreshness => "no-freshness",
        }
    }
}

/// Statuses cacheable by default (RFC 9110 §15.1), so heuristics apply to them.
/// 206 is one, but a partial response is not stored here (ranges are served from full
/// stored responses).
const HEURISTIC: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The directives that govern this cache for a response: its targeted field's when it
/// has one (then Cache-Control and Expires are ignored, RFC 9213 §2.2), else its
/// Cache-Control. The flag says whether a targeted field was used.
pub fn response_directives(headers: &HeaderMap, opts: &Options) -> (Directives, bool) {
    for name in &opts.targeted {
        // A targeted field that is not a valid Structured Field Dictionary, or gives
        // a directive the wrong type, is ignored as a whole (RFC 9213 §2.1).
        if headers.contains_key(name) && crate::directives::valid_targeted(headers, name) {
            return (Directives::parse(headers, name), true);
        }
    }
    let mut d = Directives::parse(headers, &header::CACHE_CONTROL);
    // `Pragma: no-cache` counts only without Cache-Control (RFC 9111 §5.4 reads it for
    // requests; caches commonly honour it on responses too).
    if !headers.contains_key(header::CACHE_CONTROL) && pragma_no_cache(headers) {
        d.no_cache = true;
    }
    (d, false)
}

/// A request's directives: Cache-Control, or `Pragma: no-cache` without it.
pub fn request_directives(headers: &HeaderMap) -> Directives {
    let mut d = Directives::parse(headers, &header::CACHE_CONTROL);
    if !headers.contains_key(header::CACHE_CONTROL) && pragma_no_cache(headers) {
        d.no_cache = true;
    }
    d
}

fn pragma_no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::PRAGMA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("no-cache"))
}

/// RFC 9111 §3: whether the response to a `method` request with `req` headers may be
/// stored, given its status, headers and governing directives `cc`.
pub fn storable(
    method: &Method,
    req: &HeaderMap,
    req_cc: &Directives,
    status: StatusCode,
    resp: &HeaderMap,
    cc: &Directives,
    targeted: bool,
) -> Result<(), NotStorable> {
    if *method != Method::GET {
        return Err(NotStorable::Method);
    }
    let code = status.as_u16();
    if !(200..600).contains(&code) || code == 206 || code == 304 {
        return Err(NotStorable::Status);
    }
    // `must-understand` limits storing to a cache that understands the status (one
    // with a registered meaning), and then no-store gives way (RFC 9111 §5.2.2.3).
    let understood = status.canonical_reason().is_some();
    if cc.must_understand && !understood {
        return Err(NotStorable::Status);
    }
    if (cc.no_store && !cc.must_understand) || req_cc.no_store {
        return Err(NotStorable::NoStore);
    }
    if cc.private {
        return Err(NotStorable::Private);
    }
    if req.contains_key(header::AUTHORIZATION)
        && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
    {
        return Err(NotStorable::Authorization);
    }
    if resp.contains_key(header::SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    if crate::key::vary_fields(resp).is_none() {
        return Err(NotStorable::VaryStar);
    }
    let explicit = cc.max_age.is_some()
        || cc.s_maxage.is_some()
        || (!targeted && resp.contains_key(header::EXPIRES));
    if !(explicit || cc.public || HEURISTIC.contains(&code)) {
        return Err(NotStorable::NoFreshness);
    }
    Ok(())
}

/// What a stored response keeps to judge its freshness and age.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Freshness {
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    /// The `Date` the response carried, else when it arrived.
    pub date: SystemTime,
    /// Its `Age` on arrival, in seconds.
    pub age_value: u64,
    pub lifetime: Duration,
    /// The lifetime is a guess from `Last-Modified` (RFC 9111 §4.2.2).
    pub heuristic: bool,
    /// Never served stale: `must-revalidate`, `proxy-revalidate` or `s-maxage`.
    pub must_revalidate: bool,
    /// Revalidated before every reuse (`no-cache`).
    pub no_cache: bool,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

impl Freshness {
    /// The freshness facts of a response received at `response_time` for a request sent
    /// at `request_time`.
    pub fn of(
        status: StatusCode,
        resp: &HeaderMap,
        cc: &Directives,
        targeted: bool,
        request_time: SystemTime,
        response_time: SystemTime,
        opts: &Options,
    ) -> Freshness {
        let date = http_date(resp, header::DATE)
            .flatten()
            .unwrap_or(response_time);
        // The first value of the first line (`Age: 7200, 0` is 7200); unreadable is none.
        let age_value = resp
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let (lifetime, heuristic) = lifetime(status, resp, cc, targeted, date, opts);
        Freshness {
            request_time,
            response_time,
            date,
            age_value,
            lifetime,
            heuristic,
            must_revalidate: cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some(),
            no_cache: cc.no_cache,
            stale_while_revalidate: cc
                .stale_while_revalidate
                .map_or(opts.stale_while_revalidate, Duration::from_secs),
            stale_if_error: cc
                .stale_if_error
                .map_or(opts.stale_if_error, Duration::from_secs),
        }
    }

    /// RFC 9111 §4.2.3: the response's current age at `now`.
    pub fn current_age(&self, now: SystemTime) -> Duration {
        let apparent = self
            .response_time
            .duration_since(self.date)
            .unwrap_or_default();
        let delay = self
            .response_time
            .duration_since(self.request_time)
            .unwrap_or_default();
        let corrected = Duration::from_secs(self.age_value).saturating_add(delay);
        let initial = apparent.max(corrected);
        let resident = now.duration_since(self.response_time).unwrap_or_default();
        initial.saturating_add(resident)
    }

    /// Seconds of freshness left at `now`: negative once stale (by that much).
    pub fn ttl(&self, now: SystemTime) -> i64 {
        let age = self.current_age(now).as_secs() as i64;
        (self.lifetime.as_secs() as i64).saturating_sub(age)
    }

    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.lifetime > self.current_age(now)
    }

    /// How long it has been stale at `now` (zero while fresh).
    fn staleness(&self, now: SystemTime) -> Duration {
        self.current_age(now).saturating_sub(self.lifetime)
    }

    /// Whether a request with directives `req` may be answered with this response, and
    /// how (RFC 9111 §4.2, §5.2.1; RFC 5861 §3).
    pub fn reuse(&self, req: &Directives, now: SystemTime) -> Reuse {
        if self.no_cache || req.no_cache {
            return Reuse::Revalidate;
        }
        let age = self.current_age(now);
        if req.max_age.is_some_and(|m| age > Duration::from_secs(m)) {
            return Reuse::Revalidate;
        }
        let left = self.lifetime.saturating_sub(age);
        if req.min_fresh.is_some_and(|m| left < Duration::from_secs(m)) {
            return Reuse::Revalidate;
        }
        if self.is_fresh(now) {
            return Reuse::Fresh;
        }
        if self.must_revalidate {
            return Reuse::Revalidate;
        }
        let stale = self.staleness(now);
        match req.max_stale {
            Some(MaxStale::Any) => return Reuse::StaleAllowed,
            Some(MaxStale::Seconds(s)) if stale <= Duration::from_secs(s) => {
                return Reuse::StaleAllowed;
            }
            _ => {}
        }
        if stale <= self.stale_while_revalidate {
            return Reuse::StaleWhileRevalidate;
        }
        Reuse::Revalidate
    }

    /// Whether it may answer for an upstream that failed (RFC 5861 §4): within the
    /// response's (or the zone's, or the request's) `stale-if-error`, and never past
    /// `must-revalidate`.
    pub fn serves_on_error(&self, req: &Directives, now: SystemTime) -> bool {
        if self.must_revalidate {
            return false;
        }
        let allowed = req.stale_if_error.map_or(self.stale_if_error, |s| {
            self.stale_if_error.max(Duration::from_secs(s))
        });
        self.staleness(now) <= allowed && !allowed.is_zero()
    }
}

/// How a stored response may answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Fresh: served as it is.
    Fresh,
    /// Stale, but the request accepts that (`max-stale`).
    StaleAllowed,
    /// Stale within `stale-while-revalidate`: served, and revalidated in the background.
    StaleWhileRevalidate,
    /// Must be validated with the upstream first.
    Revalidate,
}

/// RFC 9111 §4.2.1: the freshness lifetime for a shared cache, and whether it is a
/// heuristic one.
fn lifetime(
    status: StatusCode,
    resp: &HeaderMap,
    cc: &Directives,
    targeted: bool,
    date: SystemTime,
    opts: &Options,
) -> (Duration, bool) {
    if let Some(s) = cc.s_maxage {
        return (Duration::from_secs(s), false);
    }
    if let Some(m) = cc.max_age {
        return (Duration::from_secs(m), false);
    }
    if !targeted && resp.contains_key(header::EXPIRES) {
        // Invalid or duplicated `Expires` (`0` included) means already expired.
        let mut lines = resp.get_all(header::EXPIRES).iter();
        let (first, second) = (lines.next(), lines.next());
        return match (first.and_then(|v| parse_date(v.as_bytes())), second) {
            (Some(expires), None) => (expires.duration_since(date).unwrap_or_default(), false),
            _ => (Duration::ZERO, false),
        };
    }
    if HEURISTIC.contains(&status.as_u16())
        && let Some(Some(modified)) = http_date(resp, header::LAST_MODIFIED)
        && let Ok(since) = date.duration_since(modified)
    {
        let guess = since.mul_f64(opts.heuristic_fraction.clamp(0.0, 1.0));
        return (guess.min(opts.heuristic_max), true);
    }
    (Duration::ZERO, false)
}

/// A date field: `None` when absent, `Some(None)` when unreadable.
pub fn http_date(h: &HeaderMap, name: HeaderName) -> Option<Option<SystemTime>> {
    h.get(name).map(|v| parse_date(v.as_bytes()))
}

/// An HTTP date in any of its three forms (RFC 9110 §5.6.7), read leniently as caches
/// commonly do: names in any case, and a weekday that does not match its date ignored.
pub fn parse_date(v: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(v).ok()?.trim();
    httpdate::parse_http_date(text)
        .ok()
        .or_else(|| lenient_date(text))
}

/// The three forms with their exact layout (single spaces, two-digit fields), names in
/// any case and the weekday not checked against the date.
fn lenient_date(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = text.get(r)?;
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let alpha = |r: std::ops::Range<usize>| {
        text.get(r)
            .is_some_and(|s| s.bytes().all(|c| c.is_ascii_alphabetic()))
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let gmt =
        |r: std::ops::Range<usize>| text.get(r).is_some_and(|s| s.eq_ignore_ascii_case("gmt"));
    let time = |i: usize| -> Option<(u32, u32, u32)> {
        (at(i + 2, b':') && at(i + 5, b':'))
            .then(|| {
                Some((
                    digits(i..i + 2)?,
                    digits(i + 3..i + 5)?,
                    digits(i + 6..i + 8)?,
                ))
            })
            .flatten()
    };
    let (year, mon, day, (h, m, sec)) = if b.len() == 29 && at(3, b',') && at(4, b' ') {
        // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
        if !(alpha(0..3)
            && at(7, b' ')
            && at(11, b' ')
            && at(16, b' ')
            && at(25, b' ')
            && gmt(26..29))
        {
            return None;
        }
        (
            i64::from(digits(12..16)?),
            month(text.get(8..11)?)?,
            digits(5..7)?,
            time(17)?,
        )
    } else if b.len() == 24 && at(3, b' ') && at(7, b' ') {
        // asctime: "Sun Nov  6 08:49:37 1994".
        let day = match (b.get(8), b.get(9)) {
            (Some(b' '), Some(d)) if d.is_ascii_digit() => u32::from(d - b'0'),
            _ => digits(8..10)?,
        };
        if !(alpha(0..3) && at(10, b' ') && at(19, b' ')) {
            return None;
        }
        (
            i64::from(digits(20..24)?),
            month(text.get(4..7)?)?,
            day,
            time(11)?,
        )
    } else {
        // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT".
        let (wkday, rest) = text.split_once(", ")?;
        let r = rest.as_bytes();
        if wkday.is_empty() || !wkday.bytes().all(|c| c.is_ascii_alphabetic()) || r.len() != 22 {
            return None;
        }
        let off = wkday.len() + 2;
        if !(at(off + 2, b'-')
            && at(off + 6, b'-')
            && at(off + 9, b' ')
            && at(off + 18, b' ')
            && gmt(off + 19..off + 22))
        {
            return None;
        }
        let yy = i64::from(digits(off + 7..off + 9)?);
        // Two digits: the nearest century not more than 50 years ahead.
        let year = yy + if yy < 70 { 2000 } else { 1900 };
        (
            year,
            month(text.get(off + 3..off + 6)?)?,
            digits(off..off + 2)?,
            time(off + 10)?,
        )
    };
    if day == 0 || day > 31 || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if mon <= 2 {
        (year - 1, mon + 9)
    } else {
        (year, mon - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * i64::from(mo) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + i64::from(h * 3600 + m * 60 + sec);
    Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// A month's number from its three-letter name, in any case.
fn month(w: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    MONTHS
        .iter()
        .position(|m| w.eq_ignore_ascii_case(m))
        .map(|i| i as u32 + 1)
}

/// Fields a 304 never replaces in the stored response (RFC 9111 §3.2): its framing and
/// encoding belong to the stored body.
fn kept_on_update(name: &HeaderName) -> bool {
    *name == header::CONTENT_LENGTH
        || *name == header::CONTENT_ENCODING
        || *name == header::TRANSFER_ENCODING
        || *name == header::CONTENT_RANGE
}

/// RFC 9111 §4.3.4: whether a 304 with headers `new` updates a stored response with
/// headers `stored`: the same strong validator, else the same weak one, else the same
/// `Last-Modified`, else neither carries a validator.
pub fn validates(stored: &HeaderMap, new: &HeaderMap) -> bool {
    let etag = |h: &HeaderMap| {
        h.get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .map(str::to_owned)
    };
    let modified = |h: &HeaderMap| h.get(header::LAST_MODIFIED).map(|v| v.as_bytes().to_vec());
    match (etag(stored), etag(new)) {
        // The 304 answers the entity tag the cache sent: the same opaque tag, weak or
        // strong on either side (origins that compress on the fly send `W/` on one and
        // not the other), is the same representation.
        (Some(old), Some(new)) => old.trim_start_matches("W/") == new.trim_start_matches("W/"),
        (None, Some(_)) => false,
        // Without an entity tag: the same `Last-Modified`, or none at all (a 304 with
        // no validator answers the conditional sent for the one response held).
        (_, None) => match (modified(stored), modified(new)) {
            (Some(a), Some(b)) => a == b,
            (None, Some(_)) => false,
            (_, None) => true,
        },
    }
}

/// The stored headers updated by a 304's (RFC 9111 §3.2).
pub fn update_headers(stored: &HeaderMap, new: &HeaderMap) -> HeaderMap {
    let mut merged = stored.clone();
    let mut replaced: Vec<&HeaderName> = Vec::new();
    for (name, value) in new {
        if kept_on_update(name) || crate::entry::is_hop_by_hop(name) {
            continue;
        }
        if !replaced.contains(&name) {
            merged.remove(name);
            replaced.push(name);
        }
        merged.append(name.clone(), value.clone());
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        m
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(at(secs))
    }

    fn fresh(resp: &HeaderMap, opts: &Options) -> Freshness {
        let (cc, t) = response_directives(resp, opts);
        Freshness::of(StatusCode::OK, resp, &cc, t, at(0), at(0), opts)
    }

    fn store(req: &HeaderMap, status: u16, resp: &HeaderMap) -> Result<(), NotStorable> {
        let opts = Options::default();
        let (cc, t) = response_directives(resp, &opts);
        storable(
            &Method::GET,
            req,
            &request_directives(req),
            StatusCode::from_u16(status).expect("status"),
            resp,
            &cc,
            t,
        )
    }

    #[test]
    fn lifetime_prefers_s_maxage_then_max_age_then_expires_then_heuristics() {
        let o = Options::default();
        let both = h(&[
            ("cache-control", "max-age=10, s-maxage=20"),
            ("date", &date(0)),
        ]);
        assert_eq!(fresh(&both, &o).lifetime, Duration::from_secs(20));
        let expires = h(&[("expires", &date(30)), ("date", &date(0))]);
        assert_eq!(fresh(&expires, &o).lifetime, Duration::from_secs(30));
        let bad = h(&[("expires", "0"), ("date", &date(0))]);
        assert_eq!(fresh(&bad, &o).lifetime, Duration::ZERO);
        let heuristic = h(&[("last-modified", &date(0)), ("date", &date(1000))]);
        let f = fresh(&heuristic, &o);
        assert_eq!((f.lifetime, f.heuristic), (Duration::from_secs(100), true));
    }

    #[test]
    fn dates_are_read_leniently() {
        let want = httpdate::parse_http_date("Thu, 18 Aug 2050 02:01:18 GMT").ok();
        assert_eq!(parse_date(b"THU, 18 Aug 2050 02:01:18 GMT"), want);
        assert_eq!(parse_date(b"Thu, 18 AUG 2050 02:01:18 gMT"), want);
        assert_eq!(
            parse_date(b"Mon, 18 Aug 2050 02:01:18 GMT"),
            want,
            "a wrong weekday"
        );
        assert_eq!(parse_date(b"Thursday, 18-Aug-50 02:01:18 GMT"), want);
        assert_eq!(parse_date(b"Thu Aug 18 02:01:18 2050"), want);
        assert_eq!(
            parse_date(b"Thu Aug  8 02:01:18 2050"),
            httpdate::parse_http_date("Mon, 08 Aug 2050 02:01:18 GMT").ok()
        );
        for bad in [
            &b"0"[..],
            b"",
            b"Thu, 32 Aug 2050 02:01:18 GMT",
            b"tomorrow",
        ] {
            assert_eq!(parse_date(bad), None);
        }
    }

    #[test]
    fn age_follows_rfc_9111_4_2_3() {
        let o = Options::default();
        // Date 100 s before arrival and Age 30: the larger (apparent 100) plus residence.
        let resp = h(&[
            ("cache-control", "max-age=200"),
            ("date", &date(0)),
            ("age", "30"),
        ]);
        let (cc, t) = response_directives(&resp, &o);
        let f = Freshness::of(StatusCode::OK, &resp, &cc, t, at(99), at(100), &o);
        assert_eq!(f.current_age(at(100)), Duration::from_secs(100));
        assert_eq!(f.current_age(at(150)), Duration::from_secs(150));
        assert_eq!(f.ttl(at(150)), 50);
        assert_eq!(f.ttl(at(250)), -50);
        // Only the first value of Age counts.
        let listed = h(&[("cache-control", "max-age=3600"), ("age", "7200, 0")]);
        assert!(!fresh(&listed, &o).is_fresh(at(0)));
        let prefix = h(&[("cache-control", "max-age=3600"), ("age", "0, old")]);
        assert!(fresh(&prefix, &o).is_fresh(at(0)));
        // A response that says it is older than its lifetime is stale on arrival.
        let old = h(&[("cache-control", "max-age=60"), ("age", "100")]);
        assert!(!fresh(&old, &o).is_fresh(at(0)));
    }

    #[test]
    fn storability_follows_rfc_9111_3() {
        let none = HeaderMap::new();
        assert_eq!(
            store(&none, 200, &h(&[("cache-control", "max-age=60")])),
            Ok(())
        );
        assert_eq!(
            store(&none, 200, &h(&[("cache-control", "no-store")])),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            store(
                &none,
                200,
                &h(&[("cache-control", "no-store, must-understand, max-age=5")])
            ),
            Ok(())
        );
        assert_eq!(
            store(&none, 200, &h(&[("cache-control", "private")])),
            Err(NotStorable::Private)
        );
        assert_eq!(
            store(
                &none,
                200,
                &h(&[("cache-control", "private=\"x-a\", max-age=5")])
            ),
            Ok(())
        );
        let auth = h(&[("authorization", "Basic eA==")]);
        assert_eq!(
            store(&auth, 200, &h(&[("cache-control", "max-age=5")])),
            Err(NotStorable::Authorization)
        );
        assert_eq!(
            store(&auth, 200, &h(&[("cache-control", "s-maxage=5")])),
            Ok(())
        );
        assert_eq!(
            store(&auth, 200, &h(&[("cache-control", "public, max-age=5")])),
            Ok(())
        );
        assert_eq!(
            store(&none, 206, &h(&[("cache-control", "max-age=5")])),
            Err(NotStorable::Status)
        );
        assert_eq!(
            store(&none, 201, &HeaderMap::new()),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            store(&none, 201, &h(&[("cache-control", "max-age=5")])),
            Ok(())
        );
        assert_eq!(store(&none, 404, &HeaderMap::new()), Ok(()));
        assert_eq!(
            store(&none, 200, &h(&[("vary", "*")])),
            Err(NotStorable::VaryStar)
        );
        assert_eq!(
            store(&none, 200, &h(&[("set-cookie", "a=b")])),
            Err(NotStorable::SetCookie)
        );
        let no_store_req = h(&[("cache-control", "no-store")]);
        assert_eq!(
            store(&no_store_req, 200, &h(&[("cache-control", "max-age=5")])),
            Err(NotStorable::NoStore)
        );
    }

    #[test]
    fn a_targeted_field_overrides_cache_control_and_expires() {
        let o = Options::default();
        let resp = h(&[
            ("cache-control", "no-store"),
            ("expires", "0"),
            ("cdn-cache-control", "max-age=600"),
        ]);
        assert_eq!(store(&HeaderMap::new(), 200, &resp), Ok(()));
        assert_eq!(fresh(&resp, &o).lifetime, Duration::from_secs(600));
        let only_cdn_no_store = h(&[
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "no-store"),
        ]);
        assert_eq!(
            store(&HeaderMap::new(), 200, &only_cdn_no_store),
            Err(NotStorable::NoStore)
        );
    }

    #[test]
    fn reuse_honours_request_directives_and_stale_extensions() {
        let o = Options::default();
        let resp = h(&[("cache-control", "max-age=100, stale-while-revalidate=50")]);
        let f = fresh(&resp, &o);
        let none = Directives::default();
        assert_eq!(f.reuse(&none, at(10)), Reuse::Fresh);
        assert_eq!(f.reuse(&none, at(120)), Reuse::StaleWhileRevalidate);
        assert_eq!(f.reuse(&none, at(200)), Reuse::Revalidate);
        let req = request_directives(&h(&[("cache-control", "max-age=5")]));
        assert_eq!(f.reuse(&req, at(10)), Reuse::Revalidate);
        let req = request_directives(&h(&[("cache-control", "min-fresh=95")]));
        assert_eq!(f.reuse(&req, at(10)), Reuse::Revalidate);
        let req = request_directives(&h(&[("pragma", "no-cache")]));
        assert_eq!(f.reuse(&req, at(10)), Reuse::Revalidate);
        let req = request_directives(&h(&[("cache-control", "max-stale=200")]));
        assert_eq!(f.reuse(&req, at(200)), Reuse::StaleAllowed);
        let strict = fresh(
            &h(&[(
                "cache-control",
                "max-age=100, must-revalidate, stale-while-revalidate=50",
            )]),
            &o,
        );
        assert_eq!(strict.reuse(&req, at(120)), Reuse::Revalidate);
        let no_cache = fresh(&h(&[("cache-control", "max-age=100, no-cache")]), &o);
        assert_eq!(no_cache.reuse(&none, at(1)), Reuse::Revalidate);
    }

    #[test]
    fn stale_if_error_comes_from_the_response_or_the_zone_and_yields_to_must_revalidate() {
        let none = Directives::default();
        let f = fresh(
            &h(&[("cache-control", "max-age=10, stale-if-error=60")]),
            &Options::default(),
        );
        assert!(f.serves_on_error(&none, at(50)));
        assert!(!f.serves_on_error(&none, at(100)));
        let zone = Options {
            stale_if_error: Duration::from_secs(30),
            ..Options::default()
        };
        assert!(
            fresh(&h(&[("cache-control", "max-age=10")]), &zone).serves_on_error(&none, at(30))
        );
        assert!(
            !fresh(&h(&[("cache-control", "max-age=10")]), &Options::default())
                .serves_on_error(&none, at(11))
        );
        let strict = fresh(
            &h(&[(
                "cache-control",
                "max-age=10, must-revalidate, stale-if-error=60",
            )]),
            &zone,
        );
        assert!(!strict.serves_on_error(&none, at(20)));
    }

    #[test]
    fn a_304_updates_only_the_response_it_validates() {
        let stored = h(&[
            ("etag", "\"a\""),
            ("content-length", "5"),
            ("x-old", "1"),
            ("cache-control", "max-age=1"),
        ]);
        assert!(validates(&stored, &h(&[("etag", "\"a\"")])));
        assert!(!validates(&stored, &h(&[("etag", "\"b\"")])));
        assert!(validates(&stored, &h(&[("etag", "W/\"a\"")])));
        assert!(validates(&stored, &HeaderMap::new()));
        let lm = h(&[("last-modified", &date(0))]);
        assert!(validates(&lm, &h(&[("last-modified", &date(0))])));
        assert!(!validates(&lm, &h(&[("last-modified", &date(1))])));
        assert!(validates(&HeaderMap::new(), &HeaderMap::new()));
        let merged = update_headers(
            &stored,
            &h(&[
                ("cache-control", "max-age=60"),
                ("content-length", "0"),
                ("x-new", "2"),
                ("connection", "close"),
            ]),
        );
        assert_eq!(
            merged.get("cache-control").map(|v| v.as_bytes()),
            Some(&b"max-age=60"[..])
        );
        assert_eq!(
            merged.get("content-length").map(|v| v.as_bytes()),
            Some(&b"5"[..])
        );
        assert!(merged.contains_key("x-old") && merged.contains_key("x-new"));
        assert!(!merged.contains_key("connection"));
    }
}
