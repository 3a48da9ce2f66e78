//! A strict chunked-body decoder (RFC 9112 §7.1) that says, step by step, what the bytes
//! at the front of its input are: chunk data, framing that can be forwarded as it is,
//! framing to rewrite (a size line whose extension is dropped), or the body's end with
//! its trailers. A proxy forwarding a chunked body copies data and canonical framing
//! straight through, so a body nothing changes is never re-chunked.
//!
//! Framing is taken whole or not at all: a size line, the CRLF after data, or the last
//! chunk with its trailer section is consumed only once complete, so the caller keeps
//! partial framing in its buffer and reads more. Every line ends in CRLF; a bare LF or
//! CR anywhere, a size that is not 1-16 hex digits, control bytes in an extension, data
//! not followed by CRLF and malformed trailer fields are refused.

use std::ops::Range;

/// A size line with its extensions may be this long at most.
pub const MAX_SIZE_LINE: usize = 4096;
/// The trailer section may be this long at most.
pub const MAX_TRAILERS: usize = 16 * 1024;
/// Trailer fields at most.
const MAX_TRAILER_FIELDS: usize = 32;
/// More hex digits than this cannot be a 64-bit size.
const MAX_SIZE_DIGITS: usize = 16;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// The framing is broken; the text says how.
    Malformed(&'static str),
    /// The chunks' sizes add up to more than the body's limit.
    TooLarge,
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkError::Malformed(what) => write!(f, "malformed chunked body: {what}"),
            ChunkError::TooLarge => f.write_str("chunked body over its limit"),
        }
    }
}

impl std::error::Error for ChunkError {}

/// What the bytes at the front of the input are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkStep {
    /// Nothing can be taken until more bytes arrive.
    NeedMore,
    /// This many bytes of chunk data.
    Data(usize),
    /// This many bytes of valid framing (a size line, or the CRLF after data). Forward
    /// them as they are, or, when `rewrite` is `Some(size)` (the line had an extension,
    /// which is dropped), a size line for `size` in their place.
    Framing { len: usize, rewrite: Option<u64> },
    /// The body's end: the last chunk, its trailer section and the final CRLF, `len`
    /// bytes. `trailers` are the trailer lines within them (empty when none). When
    /// `rewrite`, the last-chunk line had an extension: forward `0\r\n`, the trailers and
    /// `\r\n` in place of the bytes.
    End {
        len: usize,
        trailers: Range<usize>,
        rewrite: bool,
    },
}

/// Where a body stands for a forwarder that has so far sent its data re-chunked, each
/// piece a chunk of its own, and from now on forwards the framing as it comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// Between chunks: what comes next goes out as it is.
    Boundary,
    /// Within a chunk whose size line was taken: write a size line for this many bytes,
    /// then the rest of the chunk goes out as it is.
    InChunk(u64),
    /// The chunk's data was all taken but not the CRLF after it, which the forwarder
    /// wrote already: drop that CRLF.
    AfterData,
    /// The body has ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Done,
}

/// Follows one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    total: u64,
    limit: u64,
}

impl ChunkedDecoder {
    /// A decoder for a body of at most `limit` data bytes.
    pub fn new(limit: u64) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size,
            total: 0,
            limit,
        }
    }

    /// The body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Where the body stands for a forwarder switching to passing framing through.
    pub fn handover(&self) -> Handover {
        match self.state {
            State::Size => Handover::Boundary,
            State::Data(left) => Handover::InChunk(left),
            State::DataEnd => Handover::AfterData,
            State::Done => Handover::Done,
        }
    }

    /// The next bytes are chunk data.
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data(_))
    }

    /// What the bytes at the front of `input` are; the caller consumes the step's
    /// length and calls again with what follows.
    pub fn step(&mut self, input: &[u8]) -> Result<ChunkStep, ChunkError> {
        match self.state {
            State::Done => Err(ChunkError::Malformed("bytes after the body's end")),
            State::Data(left) => {
                if input.is_empty() {
                    return Ok(ChunkStep::NeedMore);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::DataEnd
                } else {
                    State::Data(left)
                };
                Ok(ChunkStep::Data(n))
            }
            State::DataEnd => match input {
                [b'\r', b'\n', ..] => {
                    self.state = State::Size;
                    Ok(ChunkStep::Framing {
                        len: 2,
                        rewrite: None,
                    })
                }
                [] | [b'\r'] => Ok(ChunkStep::NeedMore),
                _ => Err(ChunkError::Malformed("data not followed by CRLF")),
            },
            State::Size => self.size_line(input),
        }
    }

    fn size_line(&mut self, input: &[u8]) -> Result<ChunkStep, ChunkError> {
        let window = &input[..input.len().min(MAX_SIZE_LINE)];
        let Some(lf) = memchr::memchr(b'\n', window) else {
            size_line(window, false)?;
            return if input.len() >= MAX_SIZE_LINE {
                Err(ChunkError::Malformed("size line too long"))
            } else {
                Ok(ChunkStep::NeedMore)
            };
        };
        let (size, extension) = size_line(&window[..=lf], true)?;
        let len = lf + 1;
        if size == 0 {
            return self.end(input, len, extension);
        }
        self.total = self.total.saturating_add(size);
        if self.total > self.limit {
            return Err(ChunkError::TooLarge);
        }
        self.state = State::Data(size);
        Ok(ChunkStep::Framing {
            len,
            rewrite: extension.then_some(size),
        })
    }

    /// After the last chunk's line (`line` bytes): the trailer section and its blank
    /// line, taken whole.
    fn end(&mut self, input: &[u8], line: usize, extension: bool) -> Result<ChunkStep, ChunkError> {
        let rest = &input[line..];
        let section = match rest {
            [b'\r', b'\n', ..] => 2,
            [] | [b'\r'] => return Ok(ChunkStep::NeedMore),
            _ => {
                let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
                let window = &rest[..rest.len().min(MAX_TRAILERS)];
                match httparse::parse_headers(window, &mut slots) {
                    Ok(httparse::Status::Complete((n, _))) => n,
                    Ok(httparse::Status::Partial) if rest.len() >= MAX_TRAILERS => {
                        return Err(ChunkError::Malformed("trailer section too long"));
                    }
                    Ok(httparse::Status::Partial) => {
                        bare_lf_free(window)?;
                        return Ok(ChunkStep::NeedMore);
                    }
                    Err(httparse::Error::TooManyHeaders) => {
                        return Err(ChunkError::Malformed("too many trailer fields"));
                    }
                    Err(_) => return Err(ChunkError::Malformed("trailer field")),
                }
            }
        };
        bare_lf_free(&rest[..section])?;
        self.state = State::Done;
        Ok(ChunkStep::End {
            len: line + section,
            trailers: line..line + section - 2,
            rewrite: extension,
        })
    }
}

/// Every LF in `bytes` follows a CR.
fn bare_lf_free(bytes: &[u8]) -> Result<(), ChunkError> {
    if memchr::memchr_iter(b'\n', bytes).all(|i| i > 0 && bytes[i - 1] == b'\r') {
        Ok(())
    } else {
        Err(ChunkError::Malformed("bare LF"))
    }
}

/// A size line: 1-16 hex digits, then CRLF, or whitespace or `;` and an extension of
/// visible bytes, spaces and tabs up to CRLF. `complete`: `line` ends with its LF; else
/// it is the start of a line, checked as far as it goes. The size, and whether there
/// was an extension.
fn size_line(line: &[u8], complete: bool) -> Result<(u64, bool), ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits > MAX_SIZE_DIGITS {
        return Err(ChunkError::Malformed("chunk size too long"));
    }
    let rest = &line[digits..];
    if digits == 0 && (complete || !rest.is_empty()) {
        return Err(ChunkError::Malformed("chunk size"));
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| {
        n << 4
            | u64::from(match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                _ => d - b'A' + 10,
            })
    });
    let body = match (complete, rest) {
        (true, [body @ .., b'\r', b'\n']) => body,
        (true, _) => return Err(ChunkError::Malformed("size line end")),
        (false, [body @ .., b'\r']) => body,
        (false, _) => rest,
    };
    match body {
        [] => Ok((size, false)),
        [b';' | b' ' | b'\t', ext @ ..]
            if ext
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80) =>
        {
            Ok((size, true))
        }
        _ => Err(ChunkError::Malformed("chunk extension")),
    }
}
