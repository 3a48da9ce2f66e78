//! Heads and chunk framing written out: names exactly as given (a head forwarded from
//! [`crate::Fields`] keeps the case it arrived with), one field per line, CRLF line ends.

use bytes::{BufMut, BytesMut};
use http::{Method, StatusCode, Version};

/// Writes `method target HTTP/1.1`, the fields and the blank line.
pub fn write_request_head<'a>(
    out: &mut BytesMut,
    method: &Method,
    target: &[u8],
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) {
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target);
    out.put_slice(b" HTTP/1.1\r\n");
    write_fields(out, fields);
}

/// Writes the status line (the status's canonical reason when `reason` is `None`), the
/// fields and the blank line.
pub fn write_response_head<'a>(
    out: &mut BytesMut,
    version: Version,
    status: StatusCode,
    reason: Option<&[u8]>,
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
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
    write_fields(out, fields);
}

fn write_fields<'a>(out: &mut BytesMut, fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) {
    for (name, value) in fields {
        out.reserve(name.len() + value.len() + 4);
        out.put_slice(name);
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    }
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
