//! The field rules a proxy holds every HTTP/1.x head to, on the fields' bytes: how a
//! body is framed (`Content-Length`, `Transfer-Encoding`), what `Connection` asks for,
//! and what a `Host` may be.

use crate::head::{BodyFraming, Fields, HeadError};

/// What the framing fields of a head say, before the message kind decides the body.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Framing {
    pub(crate) length: Option<u64>,
    pub(crate) chunked: bool,
}

impl Framing {
    /// The body framing when the message may have a body at all.
    pub(crate) fn body(self, otherwise: BodyFraming) -> BodyFraming {
        match (self.chunked, self.length) {
            (true, _) => BodyFraming::Chunked,
            (false, Some(n)) => BodyFraming::Length(n),
            (false, None) => otherwise,
        }
    }
}

/// `Content-Length` and `Transfer-Encoding` (RFC 9112 §6): one framing only. Lengths
/// are digits only; several lines must agree; a list is refused. `Transfer-Encoding`
/// must be exactly one `chunked` (any other coding would have to be guessed at), and
/// never beside `Content-Length`.
pub(crate) fn framing(fields: &Fields) -> Result<Framing, HeadError> {
    let mut f = Framing::default();
    let mut te_lines = 0;
    for (name, value) in fields.iter() {
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = content_length(value).ok_or(HeadError::Invalid("content-length"))?;
            if f.length.is_some_and(|m| m != n) {
                return Err(HeadError::Invalid("content-length differs"));
            }
            f.length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_lines += 1;
            if te_lines > 1 || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::Invalid("transfer-encoding"));
            }
            f.chunked = true;
        }
    }
    if f.chunked && f.length.is_some() {
        return Err(HeadError::Invalid("content-length with transfer-encoding"));
    }
    Ok(f)
}

/// A `Content-Length` value: 1 to 19 digits (no sign, no inner space, no list).
pub fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The `Connection` options of a head that matter to a proxy.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionOptions {
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    pub(crate) upgrade: bool,
    /// An option other than `close` and `keep-alive` (`upgrade`, or a field's name).
    pub(crate) other: bool,
}

/// The `close`, `keep-alive` and `upgrade` tokens of every `Connection` line, and
/// whether any other option is there.
pub(crate) fn connection(fields: &Fields) -> ConnectionOptions {
    let mut o = ConnectionOptions::default();
    for v in fields.get_all("connection") {
        for token in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                o.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                o.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                o.upgrade = true;
                o.other = true;
            } else if !token.is_empty() {
                o.other = true;
            }
        }
    }
    o
}

/// The bytes of a registered name (RFC 3986 §3.2.2: unreserved, sub-delims and
/// percent-encodings), looked up in one table: this runs on every request.
const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
            );
        b += 1;
    }
    t
};

/// `Host` must be a plain authority: a registered name or an IP literal and an
/// optional port; no user info, path or spaces (RFC 9110 §7.2). Empty is allowed (a
/// target without an authority). Checked on the bytes, without allocating.
pub fn valid_host(v: &[u8]) -> bool {
    if v.is_empty() {
        return true;
    }
    let (host, port) = if v[0] == b'[' {
        let Some(end) = memchr::memchr(b']', v) else {
            return false;
        };
        let inner = &v[1..end];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        (&v[..=end], &v[end + 1..])
    } else {
        match memchr::memchr(b':', v) {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        }
    };
    if host.is_empty() || (host[0] != b'[' && !host.iter().all(|&b| REG_NAME[usize::from(b)])) {
        return false;
    }
    match port {
        [] | [b':'] => true,
        [b':', digits @ ..] => {
            digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && digits
                    .iter()
                    .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
                    <= 65535
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b" 010 "), Some(10));
        assert_eq!(
            content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"5, 5",
            b"5 5",
            b"0x10",
            b"1e3",
            b"99999999999999999999",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn hosts() {
        for good in [
            &b""[..],
            b"a",
            b"example.com:8080",
            b"[::1]:443",
            b"[::1]",
            b"a:",
            b"10.0.0.1:65535",
        ] {
            assert!(valid_host(good), "{:?}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b"a b"[..],
            b"u@h",
            b"h/p",
            b"h:65536",
            b"h:x",
            b"[::1",
            b"[]",
            b"[zz]",
            b":80",
            b"h:123456",
        ] {
            assert!(!valid_host(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
