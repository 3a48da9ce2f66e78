//! The chunked decoder: bodies decoded the same whatever pieces they arrive in, canonical
//! framing passed through byte for byte, extensions dropped, every broken framing
//! refused, and the limit enforced as soon as a size line ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Buf, BytesMut};
use proptest::prelude::*;
use pylon_h1::*;

/// What a proxy would do with a body arriving in pieces of `piece` bytes: the data,
/// the bytes it forwards, and where the body ended in the input (or the error).
#[derive(Debug, PartialEq)]
struct Decoded {
    data: Vec<u8>,
    forwarded: Vec<u8>,
    trailers: Vec<u8>,
    end: Result<usize, ChunkError>,
}

fn decode(input: &[u8], piece: usize, limit: u64) -> Decoded {
    let mut d = ChunkedDecoder::new(limit);
    let mut out = Decoded {
        data: Vec::new(),
        forwarded: Vec::new(),
        trailers: Vec::new(),
        end: Ok(usize::MAX),
    };
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut consumed = 0;
    loop {
        match d.step(&buf) {
            Err(e) => {
                out.end = Err(e);
                return out;
            }
            Ok(ChunkStep::NeedMore) => {
                if fed == input.len() {
                    return out;
                }
                let n = piece.min(input.len() - fed);
                buf.extend_from_slice(&input[fed..fed + n]);
                fed += n;
            }
            Ok(ChunkStep::Data(n)) => {
                out.data.extend_from_slice(&buf[..n]);
                out.forwarded.extend_from_slice(&buf[..n]);
                buf.advance(n);
                consumed += n;
            }
            Ok(ChunkStep::Framing { len, rewrite }) => {
                match rewrite {
                    None => out.forwarded.extend_from_slice(&buf[..len]),
                    Some(size) => {
                        let mut line = BytesMut::new();
                        write_chunk_size(&mut line, size);
                        out.forwarded.extend_from_slice(&line);
                    }
                }
                buf.advance(len);
                consumed += len;
            }
            Ok(ChunkStep::End {
                len,
                trailers,
                rewrite,
            }) => {
                out.trailers.extend_from_slice(&buf[trailers.clone()]);
                if rewrite {
                    out.forwarded.extend_from_slice(b"0\r\n");
                    out.forwarded.extend_from_slice(&buf[trailers]);
                    out.forwarded.extend_from_slice(b"\r\n");
                } else {
                    out.forwarded.extend_from_slice(&buf[..len]);
                }
                assert!(d.is_done());
                out.end = Ok(consumed + len);
                return out;
            }
        }
    }
}

#[test]
fn a_body_ends_exactly_where_it_ends_in_any_pieces() {
    let body = b"5\r\nhello\r\n6;name=val\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next";
    let end = body.len() - "GET /next".len();
    for piece in [1, 2, 3, 5, 7, 64, 1000] {
        let d = decode(body, piece, 1 << 20);
        assert_eq!(d.end, Ok(end), "pieces of {piece}");
        assert_eq!(d.data, b"hello world");
        assert_eq!(d.trailers, b"X-Trailer: 1\r\n");
        assert_eq!(
            d.forwarded, b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
            "the extension is dropped, the rest passes as it came"
        );
    }
    let d = decode(b"0;last\r\n\r\n", 1, 10);
    assert_eq!((d.end, d.forwarded), (Ok(10), b"0\r\n\r\n".to_vec()));
}

#[test]
fn broken_framing_is_refused() {
    for body in [
        &b"5\nhello\r\n0\r\n\r\n"[..],
        b"5;ext\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"0\r\n\nGET /second HTTP/1.1\r\n\r\n",
        b"0\r\nX: 1\n\r\n",
        b"0\r\nX: 1\r\n\n",
        b"5\r\nhello\r\n0\r\r\n",
        b"5\rhello\r\n0\r\n\r\n",
        b"zz\r\n",
        b"\r\n5\r\nhello",
        b"5\r\nhelloXX",
        b"-5\r\nhello\r\n",
        b"0x5\r\nhello\r\n",
        b"00000000000000001\r\n",
        b"5;a\x01b\r\nhello\r\n0\r\n\r\n",
        b"5;a\x00\r\nhello\r\n0\r\n\r\n",
        b"0\r\nbad trailer\r\n\r\n",
        b"0\r\n: v\r\n\r\n",
        b"0\r\nX : v\r\n\r\n",
    ] {
        for piece in [1, 4, 100] {
            let d = decode(body, piece, 1 << 20);
            assert!(
                matches!(d.end, Err(ChunkError::Malformed(_))),
                "{:?} in pieces of {piece}: {d:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

#[test]
fn the_limit_is_known_when_a_size_line_ends() {
    let d = decode(b"FFFFFFFFFFFFFFFF\r\nabc", 3, 1 << 30);
    assert_eq!(d.end, Err(ChunkError::TooLarge));
    assert!(d.forwarded.is_empty(), "nothing of it is forwarded");
    let d = decode(b"8\r\n12345678\r\n8\r\n", 100, 10);
    assert_eq!(d.end, Err(ChunkError::TooLarge));
    assert_eq!(d.data, b"12345678");
    // An over-long size line is refused once the line is longer than any could be.
    let mut long = b"5;".to_vec();
    long.extend(std::iter::repeat_n(b'x', 5000));
    assert!(matches!(
        decode(&long, 512, 10).end,
        Err(ChunkError::Malformed(_))
    ));
}

#[test]
fn after_the_end_nothing_more_is_taken() {
    let mut d = ChunkedDecoder::new(10);
    assert!(matches!(
        d.step(b"0\r\n\r\n"),
        Ok(ChunkStep::End { len: 5, .. })
    ));
    assert!(d.step(b"x").is_err());
}

/// A chunked body made of these chunks, each maybe with an extension, and trailers;
/// `canonical`: as Pylon forwards it, extensions dropped.
fn encode(
    chunks: &[(Vec<u8>, bool)],
    trailers: &[(String, String)],
    upper: bool,
    canonical: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    for (data, ext) in chunks.iter().filter(|(d, _)| !d.is_empty()) {
        // A line whose extension is dropped is written anew, in lower case.
        let size = if upper && !(*ext && canonical) {
            format!("{:X}", data.len())
        } else {
            format!("{:x}", data.len())
        };
        out.extend_from_slice(size.as_bytes());
        if *ext && !canonical {
            out.extend_from_slice(b" ; name=\"v a l\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    for (n, v) in trailers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_valid_body_decodes_whole_in_any_pieces(
        chunks in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..300), any::<bool>()), 0..8),
        trailers in prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,8}", "[ -~]{0,12}"), 0..3),
        upper in any::<bool>(),
        piece in 1usize..64,
        tail in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let body = encode(&chunks, &trailers, upper, false);
        let mut input = body.clone();
        input.extend_from_slice(&tail);
        let d = decode(&input, piece, u64::MAX);
        prop_assert_eq!(d.end, Ok(body.len()));
        let data: Vec<u8> = chunks.iter().flat_map(|(d, _)| d.clone()).collect();
        prop_assert_eq!(&d.data, &data);
        // What is forwarded is the canonical form, and decodes to the same data.
        let canonical = encode(&chunks, &trailers, upper, true);
        prop_assert_eq!(&d.forwarded, &canonical);
        let again = decode(&d.forwarded, 7, u64::MAX);
        prop_assert_eq!(again.data, data);
        // Without extensions, the body passes through byte for byte.
        if chunks.iter().all(|(_, ext)| !ext) {
            prop_assert_eq!(&d.forwarded, &body);
        }
    }

    #[test]
    fn any_input_is_decoded_the_same_in_any_pieces(
        input in prop::collection::vec(prop::sample::select(b"0123456789abcdefXx;= \r\n:\t".to_vec()), 0..80),
        piece in 1usize..16,
    ) {
        // The same outcome; a malformed body may be named for another rule when its
        // fault shows before its line is complete.
        let same = |mut d: Decoded| {
            if let Err(ChunkError::Malformed(_)) = d.end {
                d.end = Err(ChunkError::Malformed("any"));
            }
            d
        };
        let whole = same(decode(&input, input.len().max(1), 1 << 20));
        let pieces = same(decode(&input, piece, 1 << 20));
        prop_assert_eq!(whole, pieces);
    }
}
