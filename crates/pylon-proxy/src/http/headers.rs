//! The headers of a correct proxy (RFC 9110 §7.6): hop-by-hop headers removed in both
//! directions, and `X-Forwarded-*`, `Forwarded`, `Via` added on the way up.

use std::net::IpAddr;

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use pylon_config::model::ForwardingHeaders;

/// A cookie's value in the request's `Cookie` fields (the first of that name).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A query parameter's value as sent (not percent-decoded), the first of that name.
pub fn query_param<'a>(uri: &'a http::Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    // The h2c upgrade's settings (RFC 7540 §3.2.1): never forwarded, whatever
    // `Connection` says, since Pylon never forwards an h2c upgrade.
    HeaderName::from_static("http2-settings"),
];

/// The index in [`HOP_BY_HOP`] of a (lower-case) field name: one string match, cheaper
/// than comparing the name with each entry (this runs for every field of every message).
fn hop_by_hop_bit(name: &str) -> Option<u8> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authorization" => 3,
        "proxy-authenticate" => 4,
        "transfer-encoding" => 5,
        "upgrade" => 6,
        "http2-settings" => 7,
        _ => return None,
    })
}

/// Removes hop-by-hop headers and every header named in `Connection`. `TE` is kept only
/// as `TE: trailers` (what gRPC needs end to end). One pass over the names finds what
/// is present, so a message without hop-by-hop headers costs no lookups.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let mut present = 0u8;
    let mut te = false;
    for k in h.keys() {
        match hop_by_hop_bit(k.as_str()) {
            Some(i) => present |= 1 << i,
            None => te |= k == header::TE,
        }
    }
    if present == 0 && !te {
        return;
    }
    if present & 1 != 0
        && let http::header::Entry::Occupied(connection) = h.entry(header::CONNECTION)
    {
        // `Connection` (index 0) taken out with its values in one lookup; the names it
        // lists beyond the usual keep-alive/close go too.
        let mut named: Vec<HeaderName> = Vec::new();
        for v in connection.remove_entry_mult().1 {
            for t in v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"keep-alive")
                    && !t.eq_ignore_ascii_case(b"close")
                    && !t.eq_ignore_ascii_case(b"te")
                    && let Ok(n) = HeaderName::from_bytes(t)
                {
                    named.push(n);
                }
            }
        }
        for n in named {
            h.remove(&n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
    if te && let Some(v) = h.get(header::TE) {
        let trailers = v
            .to_str()
            .map(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
        if trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            h.remove(header::TE);
        }
    }
}

/// Writes `Content-Length` as a plain decimal number (`010` becomes `10`): a backend
/// that reads leading zeros as octal, or a sign, would frame the body differently.
/// Validated values only reach here; the usual value costs one byte compare.
pub fn normalize_content_length(h: &mut HeaderMap) {
    let Some(v) = h.get(header::CONTENT_LENGTH) else {
        return;
    };
    let b = v.as_bytes();
    if b.len() > 1 && b[0] == b'0'
        || b.first().is_some_and(|c| !c.is_ascii_digit())
        || b.last().is_some_and(|c| !c.is_ascii_digit())
    {
        let digits = b.trim_ascii();
        let n = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<u64>().ok());
        if let Some(n) = n {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

/// The `Content-Length` a request declares, when it is a number (HTTP/2 and HTTP/3
/// bodies are held to it).
pub fn declared_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Appends `Via: <version> pylon`.
pub fn append_via(h: &mut HeaderMap, received: Version) {
    let via = match received {
        Version::HTTP_2 => HeaderValue::from_static("2 pylon"),
        Version::HTTP_10 => HeaderValue::from_static("1.0 pylon"),
        Version::HTTP_3 => HeaderValue::from_static("3 pylon"),
        _ => HeaderValue::from_static("1.1 pylon"),
    };
    h.append(header::VIA, via);
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Appends `value` to a comma-separated list header, merging earlier lines into one.
/// (One lookup: the usual request has no earlier line.)
fn append_list(h: &mut HeaderMap, name: &HeaderName, value: &HeaderValue) {
    let mut earlier = match h.entry(name) {
        http::header::Entry::Vacant(e) => {
            e.insert(value.clone());
            return;
        }
        http::header::Entry::Occupied(e) => e,
    };
    let mut joined = Vec::with_capacity(64);
    for v in earlier.iter() {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(value.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        earlier.insert(v);
    }
}

/// The downstream peer, as the forwarding headers describe it.
pub struct Peer<'a> {
    pub ip: IpAddr,
    /// `ip` as a header value, made once per connection.
    pub ip_value: &'a HeaderValue,
    pub scheme: &'static str,
}

/// Adds the forwarding headers a listener is configured for. `host` is the client's
/// authority (`Host` or `:authority`).
pub fn add_forwarding(
    h: &mut HeaderMap,
    cfg: &ForwardingHeaders,
    peer: &Peer<'_>,
    host: Option<&HeaderValue>,
    received: Version,
) {
    if cfg.x_forwarded {
        append_list(h, &X_FORWARDED_FOR, peer.ip_value);
        h.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(peer.scheme),
        );
        match host {
            Some(v) => {
                h.insert(X_FORWARDED_HOST.clone(), v.clone());
            }
            None => {
                h.remove(&X_FORWARDED_HOST);
            }
        }
    }
    if cfg.forwarded {
        let node = match peer.ip {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("\"[{a}]\""),
        };
        let mut element = format!("for={node};proto={}", peer.scheme);
        if let Some(host) = host.and_then(|v| v.to_str().ok())
            && host
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            element.push_str(&format!(";host=\"{host}\""));
        }
        if let Ok(v) = HeaderValue::from_str(&element) {
            append_list(h, &FORWARDED, &v);
        }
    }
    if cfg.via {
        append_via(h, received);
    }
}

/// Whether requests of this version share their connection with others (HTTP/2 and
/// HTTP/3): no header-read timeout between them, and a graceful close is a GOAWAY.
pub fn multiplexed(v: Version) -> bool {
    matches!(v, Version::HTTP_2 | Version::HTTP_3)
}

pub fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// `Date`, as every origin server with a clock sends it (RFC 9110 §6.6.1), unless the
/// answer has one; formatted once a second.
pub fn add_date(h: &mut HeaderMap) {
    if h.contains_key(header::DATE) {
        return;
    }
    thread_local! {
        static DATE: std::cell::RefCell<(u64, HeaderValue)> =
            const { std::cell::RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let value = DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs
            && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(now))
        {
            *d = (secs, v);
        }
        d.1.clone()
    });
    h.insert(header::DATE, value);
}

/// Removes the fields that are connection-specific and have no place in HTTP/2 or
/// HTTP/3 (RFC 9113 §8.2.2, RFC 9114 §4.2): `Connection`, `Keep-Alive`,
/// `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, and a `TE` other than
/// `trailers`. One pass over the names finds whether any is present, so an answer
/// without them (the usual case: the request path strips them already) costs no
/// lookups.
pub fn strip_connection_fields(h: &mut HeaderMap) {
    let present = h.keys().any(|k| {
        matches!(
            k.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
                | "upgrade"
                | "te"
        )
    });
    if !present {
        return;
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        h.remove(name);
    }
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hop_by_hop_name_has_its_own_bit() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_bit(n.as_str()), u8::try_from(i).ok(), "{n}");
        }
        assert_eq!(hop_by_hop_bit("te"), None, "TE is kept as `TE: trailers`");
        assert_eq!(hop_by_hop_bit("content-length"), None);
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret, te".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("te", "trailers, deflate".parse().unwrap());
        h.insert("x-keep", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn te_other_than_trailers_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert("te", "gzip".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn forwarding_headers_append() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2".parse().unwrap());
        h.insert("forwarded", "for=1.1.1.1".parse().unwrap());
        let cfg = ForwardingHeaders {
            x_forwarded: true,
            forwarded: true,
            via: true,
            request_id: None,
        };
        let ip_value = HeaderValue::from_static("::1");
        let peer = Peer {
            ip: "::1".parse().unwrap(),
            ip_value: &ip_value,
            scheme: "http",
        };
        let host = HeaderValue::from_static("a.com");
        add_forwarding(&mut h, &cfg, &peer, Some(&host), Version::HTTP_2);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, ::1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.com");
        assert_eq!(
            h["forwarded"],
            "for=1.1.1.1, for=\"[::1]\";proto=http;host=\"a.com\""
        );
        assert_eq!(h["via"], "2 pylon");
    }
}
