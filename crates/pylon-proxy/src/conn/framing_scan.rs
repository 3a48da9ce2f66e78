//! HTTP/1.x framing watched on the socket, beside the parser, for what the parser lets
//! through silently: a head with both Content-Length and Transfer-Encoding (the parser
//! keeps one of them), and chunked bodies whose framing a stricter or laxer peer would
//! read differently (a bare LF anywhere in the chunk framing: sizes, extensions, the
//! line after the data, trailers), or whose chunk size alone is over the body limit.
//! Both are request-smuggling material and are refused; `conn.rs` (`TrackedIo`) feeds
//! them every byte read and stops the byte stream at a violation.
//!
//! Written by hand: the parser (hyper) keeps its decoder private; these scanners only
//! find line ends (memchr) and skip chunk data in bulk, and allocate nothing.

/// Where an HTTP/1.x request head ended, and what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadEnd {
    /// Both Content-Length and Transfer-Encoding lines were in the head.
    pub conflict: bool,
    /// Offset just past the head's blank line in the bytes fed last.
    pub at: usize,
    /// A Content-Length line was in the head (a body of that length follows).
    pub content_length: bool,
    /// A Transfer-Encoding line was in the head (a chunked body follows: any other
    /// coding is refused by the request path).
    pub transfer_encoding: bool,
}

impl HeadEnd {
    pub fn bodyless(&self) -> bool {
        !self.content_length && !self.transfer_encoding
    }
}

/// Watches a request head for Content-Length and Transfer-Encoding lines. Only the
/// start of each header line is looked at, up to the blank line that ends the head.
#[derive(Debug, Default)]
pub struct HeadScan {
    pub active: bool,
    /// The first bytes of the current line, lower-cased.
    line: [u8; 17],
    len: usize,
    /// Non-zero once the current line has a byte other than CR.
    line_bytes: usize,
    content_length: bool,
    transfer_encoding: bool,
}

impl HeadScan {
    /// A scan of a head that starts with the next bytes read.
    pub fn started() -> Self {
        HeadScan {
            active: true,
            ..HeadScan::default()
        }
    }

    /// A head has started and not ended: the next read continues it.
    pub fn mid_head(&self) -> bool {
        self.active && (self.len > 0 || self.content_length || self.transfer_encoding)
    }

    /// Feeds bytes of the head; `Some` once it ends (the scan is then inactive).
    /// Jumps from line end to line end, looking only at the first bytes of each line.
    pub fn feed(&mut self, data: &[u8]) -> Option<HeadEnd> {
        let mut rest = data;
        loop {
            let (line, end) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], Some(i)),
                None => (rest, None),
            };
            for &b in line
                .iter()
                .filter(|&&b| b != b'\r')
                .take(self.line.len() - self.len)
            {
                self.line[self.len] = b.to_ascii_lowercase();
                self.len += 1;
            }
            if line.iter().any(|&b| b != b'\r') {
                self.line_bytes += 1;
            }
            let i = end?;
            rest = &rest[i + 1..];
            if self.line_bytes == 0 {
                let end = HeadEnd {
                    conflict: self.content_length && self.transfer_encoding,
                    at: data.len() - rest.len(),
                    content_length: self.content_length,
                    transfer_encoding: self.transfer_encoding,
                };
                *self = HeadScan::default();
                return Some(end);
            }
            let name = &self.line[..self.len];
            if name.starts_with(b"content-length") {
                self.content_length = true;
            } else if name.starts_with(b"transfer-encoding") {
                self.transfer_encoding = true;
            }
            self.len = 0;
            self.line_bytes = 0;
        }
    }
}

/// What was wrong with a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkViolation {
    /// Framing a peer could read differently: a bare LF or CR, a size that is not hex
    /// or too long, data not followed by CRLF.
    Malformed,
    /// A chunk size that alone takes the body over the listener's limit.
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (`digits` read so far).
    Size {
        digits: u8,
        value: u64,
    },
    /// After the size: whitespace and `;extensions` up to CR.
    Extension {
        value: u64,
    },
    /// CR seen after a size line: LF must follow.
    SizeLf {
        value: u64,
    },
    /// Chunk data still to come.
    Data {
        left: u64,
    },
    /// After the data: CR then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final blank line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// CR seen in a trailer line: LF must follow.
    TrailerLf,
    /// CR seen on the final blank line: LF ends the body.
    EndLf,
}

/// What a chunked body did with the bytes fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStep {
    /// Consumed them all; the body goes on.
    More,
    /// The body ended just before this offset (the next head starts there).
    End(usize),
    /// The byte at this offset breaks the framing.
    Bad(usize, ChunkViolation),
}

/// Follows a chunked request body (RFC 9112 §7.1) strictly: CRLF line ends only.
#[derive(Debug)]
pub struct ChunkScan {
    state: State,
    /// Data bytes so far, against `limit`.
    total: u64,
    limit: u64,
}

/// Chunk sizes longer than this many hex digits cannot be honest (2^64 bytes).
const MAX_SIZE_DIGITS: u8 = 16;

impl ChunkScan {
    pub fn new(limit: u64) -> ChunkScan {
        ChunkScan {
            state: State::Size {
                digits: 0,
                value: 0,
            },
            total: 0,
            limit,
        }
    }

    /// A size line is complete: the data that follows, or the trailers.
    fn sized(&mut self, value: u64) -> Result<State, ChunkViolation> {
        if value == 0 {
            return Ok(State::TrailerStart);
        }
        self.total = self.total.saturating_add(value);
        if self.total > self.limit {
            return Err(ChunkViolation::TooLarge);
        }
        Ok(State::Data { left: value })
    }

    pub fn feed(&mut self, data: &[u8]) -> ChunkStep {
        use ChunkViolation::Malformed;
        let mut i = 0;
        while i < data.len() {
            if let State::Data { left } = self.state {
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - i);
                i += n;
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { left }
                };
                continue;
            }
            let b = data[i];
            let next = match (self.state, b) {
                (State::Size { digits, value }, _) if b.is_ascii_hexdigit() => {
                    if digits >= MAX_SIZE_DIGITS {
                        // No 64-bit size: not a size at all.
                        return ChunkStep::Bad(i, Malformed);
                    }
                    let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                    Ok(State::Size {
                        digits: digits + 1,
                        value: value << 4 | d,
                    })
                }
                (State::Size { digits: 0, .. }, _) => Err(Malformed),
                (State::Size { value, .. }, b'\r') => Ok(State::SizeLf { value }),
                (State::Size { value, .. }, b';' | b' ' | b'\t') => Ok(State::Extension { value }),
                (State::Size { .. }, _) => Err(Malformed),
                (State::Extension { value }, b'\r') => Ok(State::SizeLf { value }),
                (State::Extension { .. }, b'\n') => Err(Malformed),
                (State::Extension { value }, _) => Ok(State::Extension { value }),
                (State::SizeLf { value }, b'\n') => self.sized(value),
                (State::SizeLf { .. }, _) => Err(Malformed),
                (State::DataCr, b'\r') => Ok(State::DataLf),
                (State::DataCr, _) => Err(Malformed),
                (State::DataLf, b'\n') => Ok(State::Size {
                    digits: 0,
                    value: 0,
                }),
                (State::DataLf, _) => Err(Malformed),
                (State::TrailerStart, b'\r') => Ok(State::EndLf),
                (State::TrailerStart | State::Trailer, b'\n') => Err(Malformed),
                (State::Trailer, b'\r') => Ok(State::TrailerLf),
                (State::TrailerStart | State::Trailer, _) => Ok(State::Trailer),
                (State::TrailerLf, b'\n') => Ok(State::TrailerStart),
                (State::TrailerLf, _) => Err(Malformed),
                (State::EndLf, b'\n') => return ChunkStep::End(i + 1),
                (State::EndLf, _) => Err(Malformed),
                (State::Data { .. }, _) => Ok(self.state),
            };
            match next {
                Ok(s) => self.state = s,
                Err(v) => return ChunkStep::Bad(i, v),
            }
            i += 1;
        }
        ChunkStep::More
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_scan_finds_both_framings_across_reads() {
        let mut s = HeadScan::started();
        assert_eq!(s.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Enc"), None);
        let end = s
            .feed(b"oding: chunked\r\nconTENT-length: 5\r\n\r\n0\r\n")
            .unwrap();
        assert!(end.conflict);
        assert_eq!(end.at, "oding: chunked\r\nconTENT-length: 5\r\n\r\n".len());
        assert!(!s.active, "stops at the end of the head");
        let mut s = HeadScan::started();
        let end = s
            .feed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nTransfer-Encoding: x")
            .unwrap();
        assert!(!end.conflict && end.content_length && !end.transfer_encoding);
    }

    #[test]
    fn a_head_split_across_reads_goes_on() {
        let mut s = HeadScan::started();
        assert_eq!(s.feed(b"POST /2 HTTP/1.1\r\nContent-Length: 3\r\n"), None);
        assert!(s.mid_head());
        assert!(
            s.feed(b"Transfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .conflict
        );
    }

    /// Feeds `body` in pieces of `chunk` bytes; the step that ended it and where.
    fn scan(body: &[u8], chunk: usize, limit: u64) -> (ChunkStep, usize) {
        let mut s = ChunkScan::new(limit);
        let mut fed = 0;
        for piece in body.chunks(chunk) {
            match s.feed(piece) {
                ChunkStep::More => fed += piece.len(),
                ChunkStep::End(n) => return (ChunkStep::End(n), fed + n),
                ChunkStep::Bad(n, v) => return (ChunkStep::Bad(n, v), fed + n),
            }
        }
        (ChunkStep::More, fed)
    }

    #[test]
    fn valid_chunked_bodies_end_exactly_where_they_end() {
        let body = b"5\r\nhello\r\n6;name=val\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next";
        let end = body.len() - "GET /next".len();
        for chunk in [1, 2, 3, 5, 7, 64] {
            let (step, at) = scan(body, chunk, 1 << 20);
            assert!(matches!(step, ChunkStep::End(_)), "chunk {chunk}: {step:?}");
            assert_eq!(at, end, "chunk {chunk}");
        }
        let (step, at) = scan(b"0\r\n\r\n", 1, 10);
        assert!(matches!(step, ChunkStep::End(_)));
        assert_eq!(at, 5);
    }

    #[test]
    fn a_bare_lf_anywhere_in_the_framing_is_malformed() {
        for (body, at) in [
            (&b"5\nhello\r\n0\r\n\r\n"[..], 1),
            (b"5;ext\nhello\r\n0\r\n\r\n", 5),
            (b"5\r\nhello\n0\r\n\r\n", 8),
            (b"0\r\n\nGET /second HTTP/1.1\r\n\r\n", 3),
            (b"0\r\nX: 1\n\r\n", 7),
            (b"0\r\nX: 1\r\n\n", 9),
            (b"5\r\nhello\r\n0\r\r\n", 12),
            (b"zz\r\n", 0),
            (b"\r\n5\r\nhello", 0),
            (b"5\r\nhelloXX", 8),
        ] {
            for chunk in [1, 4, 100] {
                assert_eq!(
                    scan(body, chunk, 1 << 20),
                    (ChunkStep::Bad(at % chunk, ChunkViolation::Malformed), at),
                    "{:?} in pieces of {chunk}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn a_chunk_size_alone_over_the_limit_is_too_large() {
        let (step, at) = scan(b"FFFFFFFFFFFFFFFF\r\nabc", 3, 1 << 30);
        assert_eq!(step, ChunkStep::Bad(at % 3, ChunkViolation::TooLarge));
        assert_eq!(at, 17, "known when the size line ends");
        // Over the limit in total, across chunks.
        let (step, _) = scan(b"8\r\n12345678\r\n8\r\n", 100, 10);
        assert!(matches!(step, ChunkStep::Bad(_, ChunkViolation::TooLarge)));
        // More than 16 digits is no 64-bit size: malformed.
        let (step, _) = scan(b"00000000000000001\r\n", 100, 10);
        assert!(matches!(step, ChunkStep::Bad(_, ChunkViolation::Malformed)));
        let (step, _) = scan(b"fffffffffffffffff\r\n", 100, 10);
        assert!(matches!(step, ChunkStep::Bad(_, ChunkViolation::Malformed)));
    }
}
