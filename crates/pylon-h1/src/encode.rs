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

/// Writes `name` (lower case, as a `HeaderName` holds it) as it is usually spelled:
/// one of [`SPELLINGS`], else each word (split at `-`) with its first letter upper case.
fn canonical(out: &mut BytesMut, name: &str) {
    let known = match name {
        "etag" => Some(0),
        "te" => Some(1),
        "www-authenticate" => Some(2),
        "content-md5" => Some(3),
        "dnt" => Some(4),
        "x-xss-protection" => Some(5),
        "x-ua-compatible" => Some(6),
        _ => None,
    };
    if let Some(i) = known {
        out.put_slice(SPELLINGS[i].as_bytes());
        return;
    }
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
