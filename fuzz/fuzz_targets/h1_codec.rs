//! The HTTP/1.1 codec (`pylon-h1`) on any bytes. The first byte picks the side: a request
//! head, a response head (to a GET or a HEAD), or a chunked body fed in pieces. Beyond "no
//! panic": a head that parses, written back out, parses to the same head; a chunked body
//! decodes the same whole and in pieces, and what a proxy would forward of it decodes to
//! the same data.
#![no_main]

use bytes::{Buf, BytesMut};
use http::{Method, Version};
use libfuzzer_sys::fuzz_target;
use pylon_h1::*;

const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 8 * 1024,
    max_fields: 64,
};

fn same_fields(a: &Fields, b: &Fields) {
    assert!(a.iter().eq(b.iter()), "{a:?} / {b:?}");
}

fn request(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let Ok(Some(head)) = parse_request(&mut buf, &LIMITS) else {
        return;
    };
    // Written out as HTTP/1.1, where a target without an authority needs a Host.
    if head.version == Version::HTTP_10
        && head.host().is_none()
        && head.form != TargetForm::Absolute
    {
        return;
    }
    let mut out = BytesMut::new();
    write_request_head(&mut out, &head.method, head.target(), &head.fields);
    let again = parse_request(&mut out, &LIMITS)
        .expect("written head parses")
        .expect("complete");
    assert_eq!(again.method, head.method);
    assert_eq!(again.uri, head.uri);
    assert_eq!(again.framing, head.framing);
    assert_eq!(again.form, head.form);
    assert_eq!(
        (again.upgrade, again.expect_continue),
        (
            head.upgrade,
            head.expect_continue && head.version == again.version
        )
    );
    same_fields(&again.fields, &head.fields);
}

fn response(data: &[u8], method: &Method) {
    let mut buf = BytesMut::from(data);
    let Ok(Some(head)) = parse_response(&mut buf, method, &LIMITS) else {
        return;
    };
    let mut out = BytesMut::new();
    write_response_head(
        &mut out,
        head.version,
        head.status,
        Some(head.reason()),
        &head.fields,
    );
    let again = parse_response(&mut out, method, &LIMITS)
        .expect("written head parses")
        .expect("complete");
    assert_eq!(
        (again.status, again.version, again.framing, again.keep_alive),
        (head.status, head.version, head.framing, head.keep_alive)
    );
    assert_eq!(again.reason(), head.reason());
    same_fields(&again.fields, &head.fields);
}

/// (data, forwarded bytes, end offset or the error's kind)
fn chunked(input: &[u8], piece: usize) -> (Vec<u8>, Vec<u8>, Result<usize, bool>) {
    let mut d = ChunkedDecoder::new(1 << 20);
    let (mut data, mut fwd) = (Vec::new(), Vec::new());
    let (mut buf, mut fed, mut used) = (BytesMut::new(), 0, 0);
    loop {
        match d.step(&buf) {
            Err(e) => return (data, fwd, Err(e == ChunkError::TooLarge)),
            Ok(ChunkStep::NeedMore) if fed == input.len() => return (data, fwd, Ok(usize::MAX)),
            Ok(ChunkStep::NeedMore) => {
                let n = piece.min(input.len() - fed);
                buf.extend_from_slice(&input[fed..fed + n]);
                fed += n;
            }
            Ok(ChunkStep::Data(n)) => {
                data.extend_from_slice(&buf[..n]);
                fwd.extend_from_slice(&buf[..n]);
                buf.advance(n);
                used += n;
            }
            Ok(ChunkStep::Framing { len, rewrite }) => {
                match rewrite {
                    None => fwd.extend_from_slice(&buf[..len]),
                    Some(size) => {
                        let mut line = BytesMut::new();
                        write_chunk_size(&mut line, size);
                        fwd.extend_from_slice(&line);
                    }
                }
                buf.advance(len);
                used += len;
            }
            Ok(ChunkStep::End {
                len,
                trailers,
                rewrite,
            }) => {
                if rewrite {
                    fwd.extend_from_slice(b"0\r\n");
                    fwd.extend_from_slice(&buf[trailers]);
                    fwd.extend_from_slice(b"\r\n");
                } else {
                    fwd.extend_from_slice(&buf[..len]);
                }
                return (data, fwd, Ok(used + len));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => request(rest),
        1 => response(rest, &Method::GET),
        2 => response(rest, &Method::HEAD),
        _ => {
            let Some((&piece, body)) = rest.split_first() else {
                return;
            };
            let whole = chunked(body, body.len().max(1));
            let pieces = chunked(body, usize::from(piece).max(1));
            assert_eq!(whole, pieces);
            if let (data, fwd, Ok(end)) = whole
                && end != usize::MAX
            {
                let (again, refwd, reend) = chunked(&fwd, 3);
                assert_eq!(again, data);
                assert_eq!(refwd, fwd, "forwarded framing is canonical");
                assert_eq!(reend, Ok(fwd.len()));
            }
        }
    }
});
