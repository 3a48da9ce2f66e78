//! Heads and chunk framing written out, one field per line, CRLF line ends. Names go
//! out as they arrived: [`Fields`] as parsed, or a `HeaderMap` (lower-case inside) with
//! the spellings its message arrived with ([`HeaderCase`]); a name that did not arrive
//! with the message (one the proxy added, or from HTTP/2) is written in Title-Case, as
//! NGINX and Apache write theirs (or as a few names are usually spelled: `ETag`).

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, Method, StatusCode, Version};

use crate::Fields;

/// Header fields that can be written into a head.
pub trait WriteFields {
    /// Writes every field as a `name: value` line.
    fn write_fields(self, out: &mut BytesMut);
}

impl WriteFields for &Fields {
    fn write_fields(self, out: &mut BytesMut) {
        for (name, value) in self.iter() {
            field(out, name, value);
        }
    }
}

/// How a message's header names were spelled when it arrived: kept with the message
/// (an `http` extension) only when some name was not in Title-Case, which is how a
/// name without a kept spelling is written.
#[derive(Debug, Clone)]
pub struct HeaderCase(Fields);

impl HeaderCase {
    /// The spellings of `fields`, or `None` when [`Spelled`] writes every name as it
    /// arrived without them.
    pub fn of(fields: Fields) -> Option<HeaderCase> {
        if fields.names().all(is_canonical) {
            None
        } else {
            Some(HeaderCase(fields))
        }
    }

    /// The spelling `name` (lower case) arrived with. A map lists names in the order
    /// they first arrived, so the search starts at the last one found (`from`).
    fn spelling(&self, name: &str, from: &mut usize) -> Option<&[u8]> {
        let n = self.0.len();
        let start = *from;
        for k in 0..n {
            let i = (start + k) % n;
            let s = self.0.name_at(i);
            if s.eq_ignore_ascii_case(name.as_bytes()) {
                *from = i;
                return Some(s);
            }
        }
        None
    }
}

/// A `HeaderMap`'s fields, named as their message spelled them ([`HeaderCase`]), or
/// canonically: in Title-Case, or as a few names are usually spelled (`ETag`).
pub struct Spelled<'a> {
    pub fields: &'a HeaderMap,
    pub case: Option<&'a HeaderCase>,
}

impl WriteFields for Spelled<'_> {
    fn write_fields(self, out: &mut BytesMut) {
        let mut from = 0;
        for (name, value) in self.fields {
            let name = name.as_str();
            let value = value.as_bytes();
            out.reserve(name.len() + value.len() + 4);
            match self.case.and_then(|c| c.spelling(name, &mut from)) {
                Some(s) => out.put_slice(s),
                None => canonical(out, name),
            }
            out.put_slice(b": ");
            out.put_slice(value);
            out.put_slice(b"\r\n");
        }
    }
}

/// Names whose usual spelling is not Title-Case.
const SPELLINGS: [&str; 7] = [
    "ETag",
    "TE",
    "WWW-Authenticate",
    "Content-MD5",
    "DNT",
    "X-XSS-Protection",
    "X-UA-Compatible",
];

/// The usual spelling of a common field name (lower case, as a `HeaderName` holds it):
/// one of [`SPELLINGS`], or the Title-Case of the names most messages carry, written
/// without a pass over the name's bytes.
fn known_spelling(name: &str) -> Option<&'static str> {
    Some(match name {
        "etag" => SPELLINGS[0],
        "te" => SPELLINGS[1],
        "www-authenticate" => SPELLINGS[2],
        "content-md5" => SPELLINGS[3],
        "dnt" => SPELLINGS[4],
        "x-xss-protection" => SPELLINGS[5],
        "x-ua-compatible" => SPELLINGS[6],
        "host" => "Host",
        "date" => "Date",
        "server" => "Server",
        "content-type" => "Content-Type",
        "content-length" => "Content-Length",
        "connection" => "Connection",
        "user-agent" => "User-Agent",
        "accept" => "Accept",
        "accept-encoding" => "Accept-Encoding",
        "accept-language" => "Accept-Language",
        "cache-control" => "Cache-Control",
        "transfer-encoding" => "Transfer-Encoding",
        "x-forwarded-for" => "X-Forwarded-For",
        "x-forwarded-proto" => "X-Forwarded-Proto",
        "x-forwarded-host" => "X-Forwarded-Host",
        "forwarded" => "Forwarded",
        "via" => "Via",
        "x-request-id" => "X-Request-Id",
        "last-modified" => "Last-Modified",
        "vary" => "Vary",
        "location" => "Location",
        "set-cookie" => "Set-Cookie",
        "cookie" => "Cookie",
        "authorization" => "Authorization",
        "referer" => "Referer",
        "content-encoding" => "Content-Encoding",
        "expires" => "Expires",
        "age" => "Age",
        _ => return None,
    })
}

/// Writes `name` (lower case, as a `HeaderName` holds it) as it is usually spelled:
/// one of [`SPELLINGS`], else each word (split at `-`) with its first letter upper case.
pub(crate) fn canonical(out: &mut BytesMut, name: &str) {
    if let Some(s) = known_spelling(name) {
        out.put_slice(s.as_bytes());
        return;
    }
    title_case(out, name);
}

fn title_case(out: &mut BytesMut, name: &str) {
    let at = out.len();
    out.put_slice(name.as_bytes());
    let mut start = true;
    for b in &mut out[at..] {
        if start {
            b.make_ascii_uppercase();
        }
        start = *b == b'-';
    }
}

/// `name` is as [`canonical`] writes it.
fn is_canonical(name: &[u8]) -> bool {
    // The names most messages carry, spelled as [`known_spelling`] writes them: one
    // match instead of a pass over the bytes.
    if matches!(
        name,
        b"Host"
            | b"Date"
            | b"Server"
            | b"Content-Type"
            | b"Content-Length"
            | b"Connection"
            | b"User-Agent"
            | b"Accept"
            | b"Accept-Encoding"
            | b"Accept-Language"
            | b"Cache-Control"
            | b"Transfer-Encoding"
            | b"Last-Modified"
            | b"Vary"
            | b"Location"
            | b"Set-Cookie"
            | b"Cookie"
            | b"Authorization"
            | b"Referer"
            | b"Content-Encoding"
            | b"Expires"
            | b"ETag"
    ) {
        return true;
    }
    let mut start = true;
    for &b in name {
        if (start && b.is_ascii_lowercase()) || (!start && b.is_ascii_uppercase()) {
            return SPELLINGS.iter().any(|s| s.as_bytes() == name);
        }
        start = b == b'-';
    }
    true
}

/// Writes `method target HTTP/1.1`, the fields and the blank line.
pub fn write_request_head(
    out: &mut BytesMut,
    method: &Method,
    target: &[u8],
    fields: impl WriteFields,
) {
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target);
    out.put_slice(b" HTTP/1.1\r\n");
    fields.write_fields(out);
    out.put_slice(b"\r\n");
}

/// Writes the status line (the status's canonical reason when `reason` is `None`), the
/// fields and the blank line.
pub fn write_response_head(
    out: &mut BytesMut,
    version: Version,
    status: StatusCode,
    reason: Option<&[u8]>,
    fields: impl WriteFields,
) {
    out.put_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(
        reason
            .or_else(|| status.canonical_reason().map(str::as_bytes))
            .unwrap_or_default(),
    );
    out.put_slice(b"\r\n");
    fields.write_fields(out);
    out.put_slice(b"\r\n");
}

fn field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Writes a chunk's size line, `size` in lower-case hex, no extension.
pub fn write_chunk_size(out: &mut BytesMut, size: u64) {
    let mut digits = [0u8; 16];
    let mut n = size;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling in the table is the Title-Case rule's, or one of [`SPELLINGS`]
    /// (which the rule would spell otherwise).
    #[test]
    fn known_spellings_agree_with_the_title_case_rule() {
        let names = [
            "etag",
            "te",
            "www-authenticate",
            "content-md5",
            "dnt",
            "x-xss-protection",
            "x-ua-compatible",
            "host",
            "date",
            "server",
            "content-type",
            "content-length",
            "connection",
            "user-agent",
            "accept",
            "accept-encoding",
            "accept-language",
            "cache-control",
            "transfer-encoding",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
            "via",
            "x-request-id",
            "last-modified",
            "vary",
            "location",
            "set-cookie",
            "cookie",
            "authorization",
            "referer",
            "content-encoding",
            "expires",
            "age",
        ];
        for name in names {
            let known = known_spelling(name).expect(name);
            assert!(known.eq_ignore_ascii_case(name), "{name}: {known}");
            let mut ruled = BytesMut::new();
            title_case(&mut ruled, name);
            assert!(
                known.as_bytes() == &ruled[..] || SPELLINGS.contains(&known),
                "{name}: {known}"
            );
            assert!(
                is_canonical(known.as_bytes()),
                "{known} is read back as canonical"
            );
        }
        for spelled in [
            "Host",
            "Date",
            "Server",
            "Content-Type",
            "Content-Length",
            "Connection",
            "User-Agent",
            "Accept",
            "Accept-Encoding",
            "Accept-Language",
            "Cache-Control",
            "Transfer-Encoding",
            "Last-Modified",
            "Vary",
            "Location",
            "Set-Cookie",
            "Cookie",
            "Authorization",
            "Referer",
            "Content-Encoding",
            "Expires",
            "ETag",
        ] {
            assert!(is_canonical(spelled.as_bytes()), "{spelled}");
            let lower = spelled.to_ascii_lowercase();
            assert_eq!(known_spelling(&lower), Some(spelled), "the two lists agree");
        }
        for not in ["host", "content-length", "CONTENT-TYPE", "x-Lower"] {
            assert!(!is_canonical(not.as_bytes()), "{not}");
        }
        let mut out = BytesMut::new();
        canonical(&mut out, "x-custom-name");
        assert_eq!(&out[..], b"X-Custom-Name");
    }
}
