//! HTTP/1.1 message I/O shared by the upstream client (`cluster/h1.rs`) and the
//! downstream server (`http/h1.rs`): the writer that sends a head and then a streamed
//! body framed by Content-Length, chunked or the connection's close; the read buffer
//! that grows only while a message is being read; trailer fields; and a connection
//! handed on with the bytes already read from it (upgrades, and an HTTP/2 connection
//! whose preface was read to recognise it).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use pylon_h1::{ChunkError, ChunkStep, ChunkedDecoder, Handover};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::cluster::body::BoxError;

/// The first read of a message; later reads of a large body grow up to the maximum.
const READ_FIRST: usize = 8 * 1024;
const READ_MAX: usize = 256 * 1024;
/// Body bytes queued for one vectored write, at most.
const WRITE_QUEUE: usize = 64 * 1024;

/// Why a message could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Io(#[source] io::Error),
    #[error("body: {0}")]
    Body(#[source] BoxError),
    #[error("body does not match its content-length")]
    Length,
}

/// How a message body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Until the connection closes (an answer to an HTTP/1.0 client of unknown length).
    UntilClose,
    Length(u64),
    Chunked,
    /// Chunked, with the framing already in the body's frames: a chunked body
    /// forwarded as it came ([`BodyDecoder::pass_chunked`]).
    ChunkedPassed,
}

/// A message's way out: the head, then the body as it comes, framed, in vectored
/// writes. The body is polled only when the queue has room, and never while the
/// connection is borrowed for a write.
pub struct Writer<B> {
    queue: VecDeque<Bytes>,
    queued: usize,
    body: Option<B>,
    encoding: Encoding,
    /// Body bytes still to come under a Content-Length.
    left: u64,
    flushed: bool,
    /// Bytes have gone out.
    pub started: bool,
}

impl<B> Writer<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    pub fn new(head: Bytes, body: B, encoding: Encoding) -> Writer<B> {
        let left = match encoding {
            Encoding::Length(n) => n,
            Encoding::Chunked | Encoding::ChunkedPassed | Encoding::UntilClose => 0,
        };
        let mut queue = VecDeque::with_capacity(4);
        let queued = head.len();
        queue.push_back(head);
        Writer {
            queue,
            queued,
            body: (!body.is_end_stream()).then_some(body),
            encoding,
            left,
            flushed: false,
            started: false,
        }
    }

    /// Queues bytes to go out before the body's next frame.
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.queued += b.len();
            self.queue.push_back(b);
        }
    }

    /// Takes a frame of the body into the queue.
    fn frame(&mut self, frame: Frame<Bytes>) -> Result<(), WriteError> {
        match frame.into_data() {
            Ok(data) if data.is_empty() => Ok(()),
            Ok(data) => match self.encoding {
                Encoding::UntilClose | Encoding::ChunkedPassed => {
                    self.push(data);
                    Ok(())
                }
                Encoding::Length(_) => {
                    let n = data.len() as u64;
                    if n > self.left {
                        return Err(WriteError::Length);
                    }
                    self.left -= n;
                    self.push(data);
                    Ok(())
                }
                Encoding::Chunked => {
                    let mut line = BytesMut::with_capacity(18);
                    pylon_h1::write_chunk_size(&mut line, data.len() as u64);
                    self.push(line.freeze());
                    self.push(data);
                    self.push(Bytes::from_static(b"\r\n"));
                    Ok(())
                }
            },
            Err(frame) => {
                if let (Encoding::Chunked, Ok(trailers)) = (self.encoding, frame.into_trailers()) {
                    let mut end = BytesMut::from(&b"0\r\n"[..]);
                    for (name, value) in &trailers {
                        end.extend_from_slice(name.as_str().as_bytes());
                        end.extend_from_slice(b": ");
                        end.extend_from_slice(value.as_bytes());
                        end.extend_from_slice(b"\r\n");
                    }
                    end.extend_from_slice(b"\r\n");
                    self.push(end.freeze());
                    self.body = None;
                }
                Ok(())
            }
        }
    }

    fn body_ended(&mut self) -> Result<(), WriteError> {
        self.body = None;
        match self.encoding {
            Encoding::Chunked => {
                self.push(Bytes::from_static(b"0\r\n\r\n"));
                Ok(())
            }
            Encoding::Length(_) if self.left != 0 => Err(WriteError::Length),
            Encoding::Length(_) | Encoding::UntilClose | Encoding::ChunkedPassed => Ok(()),
        }
    }

    /// Writes what it can. Ready once everything is written and flushed.
    pub fn poll<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            // Frames the body has ready join the queue first, so that the head and the
            // first data go out in one write.
            if let Some(body) = &mut self.body
                && self.queued < WRITE_QUEUE
            {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        self.frame(frame)?;
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(WriteError::Body(e))),
                    Poll::Ready(None) => {
                        self.body_ended()?;
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            if !self.queue.is_empty() {
                let n = match self.poll_write_queue(io, cx) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                    }
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(WriteError::Io(e))),
                    Poll::Pending => return Poll::Pending,
                };
                self.started = true;
                self.flushed = false;
                self.advance(n);
                continue;
            }
            if !self.flushed {
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(WriteError::Io)?;
                self.flushed = true;
            }
            return if self.body.is_some() {
                // Waiting on the client for more of the body.
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            };
        }
    }

    /// Writes from the front of the queue, shaped for the socket
    /// ([`crate::coalesce`]: a head and a short body leave in one plain write).
    fn poll_write_queue<W: AsyncWrite + Unpin + ?Sized>(
        &self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let mut slices = [IoSlice::new(&[]); 8];
        let mut k = 0;
        for b in self.queue.iter().take(slices.len()) {
            slices[k] = IoSlice::new(b);
            k += 1;
        }
        crate::coalesce::poll_write(io, cx, &slices[..k])
    }

    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.queue.pop_front();
        }
    }
}

/// How much of a message body is still to be read, and how it is framed: the one
/// decoder of request bodies (the server) and response bodies (the upstream client).
#[derive(Debug)]
pub enum BodyDecoder {
    /// No body, or all of it read.
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the connection closes (answers only; the reader ends it at EOF).
    UntilClose,
    /// The chunked body has ended; its trailers are handed out next (boxed: rare, and
    /// large beside the other states).
    Trailers(Box<HeaderMap>),
    /// A chunked body handed out as it came, framing and trailers included, for a
    /// writer that forwards it as it is ([`Encoding::ChunkedPassed`]). `drop_crlf`: the
    /// CRLF that ends the current chunk's data went out already.
    Passing {
        decoder: ChunkedDecoder,
        drop_crlf: bool,
    },
}

impl BodyDecoder {
    pub fn is_done(&self) -> bool {
        matches!(self, BodyDecoder::Done)
    }

    pub fn size_hint(&self) -> SizeHint {
        match self {
            BodyDecoder::Done => SizeHint::with_exact(0),
            BodyDecoder::Length(n) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }

    /// From now on the body's frames carry its chunked framing, checked as strictly as
    /// ever but forwarded as it came rather than re-chunked. `None` when the body is
    /// not a chunked one still being read; else the bytes to write before the next
    /// frame (the size line of a chunk whose data has begun).
    pub fn pass_chunked(&mut self) -> Option<Bytes> {
        let BodyDecoder::Chunked(decoder) = self else {
            return None;
        };
        let (prefix, drop_crlf) = match decoder.handover() {
            Handover::Done => return None,
            Handover::Boundary => (Bytes::new(), false),
            Handover::AfterData => (Bytes::new(), true),
            Handover::InChunk(left) => {
                let mut line = BytesMut::with_capacity(18);
                pylon_h1::write_chunk_size(&mut line, left);
                (line.freeze(), false)
            }
        };
        *self = BodyDecoder::Passing {
            decoder: decoder.clone(),
            drop_crlf,
        };
        Some(prefix)
    }

    /// Takes what `buf` holds of the body: one data frame (with the chunk framing after
    /// it, as far as it has arrived, so that the body's end is seen with its last
    /// data), or the trailers. `Ok(None)`: nothing buffered yet, or the body is done.
    pub fn take(&mut self, buf: &mut BytesMut) -> Result<Option<Frame<Bytes>>, ChunkError> {
        match self {
            BodyDecoder::Done => Ok(None),
            BodyDecoder::Trailers(t) => {
                let t = std::mem::take(&mut **t);
                *self = BodyDecoder::Done;
                Ok(Some(Frame::trailers(t)))
            }
            BodyDecoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(n).freeze();
                *left -= n as u64;
                if *left == 0 {
                    *self = BodyDecoder::Done;
                }
                Ok(Some(Frame::data(data)))
            }
            BodyDecoder::UntilClose => {
                Ok((!buf.is_empty()).then(|| Frame::data(buf.split().freeze())))
            }
            BodyDecoder::Chunked(decoder) => {
                let mut data = None;
                loop {
                    if data.is_some() && decoder.in_data() {
                        break;
                    }
                    match decoder.step(buf)? {
                        ChunkStep::NeedMore => break,
                        ChunkStep::Data(n) => data = Some(buf.split_to(n).freeze()),
                        ChunkStep::Framing { len, .. } => buf.advance(len),
                        ChunkStep::End { len, trailers, .. } => {
                            let fields = trailer_fields(&buf[trailers]);
                            buf.advance(len);
                            *self = if fields.is_empty() {
                                BodyDecoder::Done
                            } else {
                                BodyDecoder::Trailers(Box::new(fields))
                            };
                            if data.is_none() {
                                return self.take(buf);
                            }
                            break;
                        }
                    }
                }
                Ok(data.map(Frame::data))
            }
            BodyDecoder::Passing { decoder, drop_crlf } => {
                // Everything complete in `buf` goes out in one frame, as it came but
                // for a line whose extension is dropped.
                let mut n = 0;
                loop {
                    match decoder.step(&buf[n..])? {
                        ChunkStep::NeedMore => break,
                        ChunkStep::Data(k) => n += k,
                        ChunkStep::Framing { len, rewrite: None } if *drop_crlf => {
                            *drop_crlf = false;
                            buf.advance(len);
                        }
                        ChunkStep::Framing { len, rewrite: None } => n += len,
                        ChunkStep::Framing {
                            len,
                            rewrite: Some(size),
                        } => {
                            let mut out = BytesMut::with_capacity(n + 18);
                            out.extend_from_slice(&buf[..n]);
                            buf.advance(n + len);
                            pylon_h1::write_chunk_size(&mut out, size);
                            return Ok(Some(Frame::data(out.freeze())));
                        }
                        ChunkStep::End {
                            len,
                            trailers,
                            rewrite,
                        } => {
                            let last = if rewrite {
                                let mut out = BytesMut::with_capacity(n + len);
                                out.extend_from_slice(&buf[..n]);
                                out.extend_from_slice(b"0\r\n");
                                out.extend_from_slice(&buf[n + trailers.start..n + trailers.end]);
                                out.extend_from_slice(b"\r\n");
                                buf.advance(n + len);
                                out.freeze()
                            } else {
                                buf.split_to(n + len).freeze()
                            };
                            *self = BodyDecoder::Done;
                            return Ok(Some(Frame::data(last)));
                        }
                    }
                }
                Ok((n > 0).then(|| Frame::data(buf.split_to(n).freeze())))
            }
        }
    }
}

/// Bytes read from a connection and not yet taken. The buffer has capacity only while
/// a message is being read.
#[derive(Default)]
pub struct Reader {
    pub buf: BytesMut,
    next: usize,
    /// Bytes read in all.
    pub read: u64,
}

/// One read of up to [`READ_FIRST`] bytes through the stack, handed to `take`: what
/// has arrived, without a buffer of a first read's size held anywhere.
pub(crate) fn poll_read_first<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    cx: &mut Context<'_>,
    take: impl FnOnce(&[u8]),
) -> Poll<io::Result<usize>> {
    let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_FIRST];
    let mut rb = ReadBuf::uninit(&mut stack);
    ready!(Pin::new(&mut *io).poll_read(cx, &mut rb))?;
    take(rb.filled());
    Poll::Ready(Ok(rb.filled().len()))
}

impl Reader {
    /// Between messages, with nothing buffered: no buffer held, and the next message's
    /// first read goes through the stack again.
    pub fn release(&mut self) {
        self.buf = BytesMut::new();
        self.next = 0;
    }

    /// Reads more; `Ok(0)` at EOF.
    pub fn poll_fill<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.next == 0 && self.buf.capacity() == 0 {
            // A message's first read, with no buffer yet (a new exchange, or a
            // connection idle until now, [`Reader::release`]): the bytes go through the
            // stack, then into a buffer of their size. Most heads and small bodies come
            // in one read, and a small block costs the allocator a fraction of what a
            // first read's large one does. Later reads (a large body) grow as below.
            let n = ready!(poll_read_first(io, cx, |read| self.buf = BytesMut::from(read)))?;
            self.next = if n == READ_FIRST {
                READ_FIRST * 2
            } else {
                READ_FIRST
            };
            self.read += n as u64;
            return Poll::Ready(Ok(n));
        }
        if self.buf.capacity() - self.buf.len() == 0 {
            self.next = self.next.clamp(READ_FIRST, READ_MAX);
            self.buf.reserve(self.next);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut *io),
            cx,
            &mut self.buf
        ))?;
        if n == room {
            // A full read: the next may be larger.
            self.next = (self.next * 2).min(READ_MAX);
        }
        self.read += n as u64;
        Poll::Ready(Ok(n))
    }
}

/// Trailer lines (validated by the decoder) as fields; unparseable names are dropped.
pub fn trailer_fields(lines: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// A connection whose first bytes were read already (after an upgrade's head).
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Bytes, inner: T) -> Prefixed<T> {
        Prefixed { prefix, inner }
    }

    /// The bytes not yet read, and the connection.
    pub fn into_parts(self) -> (Bytes, T) {
        (self.prefix, self.inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coalesce::test_io::Recording;
    use http_body_util::BodyExt as _;

    fn write(head: &str, body: Vec<u8>, encoding: Encoding, cap: usize) -> Recording {
        let body = http_body_util::Full::new(Bytes::from(body)).map_err(|e| match e {});
        let mut writer = Writer::new(Bytes::from(head.to_owned()), body, encoding);
        let mut io = Recording::new(cap);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match writer.poll(&mut io, &mut cx) {
            Poll::Ready(r) => r.expect("written"),
            Poll::Pending => panic!("a socket that always takes bytes left the writer pending"),
        }
        io
    }

    #[test]
    fn a_head_and_a_short_body_leave_in_one_plain_write() {
        let io = write(
            "HTTP/1.1 200 OK\r\n\r\n",
            b"hello".to_vec(),
            Encoding::Length(5),
            1 << 20,
        );
        assert_eq!(io.out, b"HTTP/1.1 200 OK\r\n\r\nhello");
        assert_eq!((io.plain, io.vectored), (1, 0));
        let chunked = write(
            "HTTP/1.1 200 OK\r\n\r\n",
            b"hi".to_vec(),
            Encoding::Chunked,
            1 << 20,
        );
        assert_eq!(chunked.out, b"HTTP/1.1 200 OK\r\n\r\n2\r\nhi\r\n0\r\n\r\n");
        assert_eq!((chunked.plain, chunked.vectored), (1, 0));
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        // Short writes of 7 bytes through the copied path, then through the vectored
        // one (a body larger than what is copied).
        let io = write(
            "HEAD-LINE\r\n\r\n",
            b"0123456789".to_vec(),
            Encoding::Length(10),
            7,
        );
        assert_eq!(io.out, b"HEAD-LINE\r\n\r\n0123456789");
        let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let io = write("H\r\n\r\n", big.clone(), Encoding::Length(20_000), 3_000);
        let mut expected = b"H\r\n\r\n".to_vec();
        expected.extend_from_slice(&big);
        assert_eq!(io.out, expected);
        assert!(
            io.vectored > 0,
            "a large body is written vectored, without a copy"
        );
    }
}
