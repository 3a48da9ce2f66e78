//! The client socket's wrapper: reports activity and bytes, and watches HTTP/1.x
//! framing beside the parser.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ConnState;
use super::framing_scan::{ChunkScan, ChunkStep, HeadScan};
use crate::observe::stats::ListenerStats;

/// A socket that reports its activity to [`ConnState`] and its bytes to its
/// listener's counters, and watches HTTP/1.x framing beside the parser
/// (`framing_scan.rs`): a head with two framings is flagged for the request path; a
/// chunked body that breaks its framing, or whose chunk size alone exceeds the body
/// limit, is flagged and the byte stream ends just before the offending byte, so that
/// the parser never sees what follows (a smuggled request) and the request path
/// answers 400 or 413 (the connection is half-closed for reading, then closed).
pub struct TrackedIo<T> {
    inner: T,
    state: Arc<ConnState>,
    stats: Arc<ListenerStats>,
    head: HeadScan,
    chunks: Option<ChunkScan>,
    /// The listener's `max_request_body`, for chunk sizes.
    body_limit: u64,
    /// A framing violation was found: reads end here.
    stopped: bool,
}

impl<T> TrackedIo<T> {
    pub fn new(
        inner: T,
        state: Arc<ConnState>,
        stats: Arc<ListenerStats>,
        body_limit: u64,
    ) -> Self {
        TrackedIo {
            inner,
            state,
            stats,
            head: HeadScan::default(),
            chunks: None,
            body_limit,
            stopped: false,
        }
    }

    /// The connection itself (for a tunnel that relays it raw).
    pub fn into_inner(self) -> T {
        self.inner
    }

    /// Follows heads and chunked bodies through `data`; the length to keep of it (all
    /// of it, unless a chunked body broke its framing).
    fn scan(&mut self, data: &[u8]) -> usize {
        let mut at = 0;
        while at < data.len() {
            if let Some(chunks) = &mut self.chunks {
                match chunks.feed(&data[at..]) {
                    ChunkStep::More => return data.len(),
                    ChunkStep::End(n) => {
                        // The next head starts right after (pipelined, or next read).
                        self.chunks = None;
                        at += n;
                        self.head = HeadScan::started();
                    }
                    ChunkStep::Bad(n, violation) => {
                        self.state.body_violation(violation);
                        self.stopped = true;
                        return at + n;
                    }
                }
            } else if self.head.active {
                let Some(end) = self.head.feed(&data[at..]) else {
                    return data.len();
                };
                at += end.at;
                if end.conflict {
                    self.state.framing_conflict.store(true, Ordering::Relaxed);
                    return data.len();
                }
                if end.transfer_encoding {
                    self.chunks = Some(ChunkScan::new(self.body_limit));
                } else if end.bodyless() {
                    // A head pipelined behind a bodyless one starts right here.
                    self.head = HeadScan::started();
                } else {
                    // Behind a Content-Length body the next head is not looked for.
                    return data.len();
                }
            } else {
                return data.len();
            }
        }
        data.len()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stopped {
            // What follows a broken framing is never read: the end of the stream.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) {
            let read = buf.filled().len() - before;
            if read == 0 {
                return r;
            }
            this.stats
                .received_bytes
                .fetch_add(read as u64, Ordering::Relaxed);
            let data = &buf.filled()[before..];
            if this.state.read_activity(data)
                && !this.state.is_h2()
                && !this.head.mid_head()
                && this.chunks.is_none()
            {
                this.head = HeadScan::started();
            }
            if this.head.active || this.chunks.is_some() {
                let keep = this.scan(&buf.filled()[before..]);
                if keep < read {
                    buf.set_filled(before + keep);
                }
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, b);
        match r {
            Poll::Ready(Ok(n)) if n > 0 => {
                this.state.write_activity();
                this.stats.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Poll::Pending => this.state.write_pending(),
            _ => {}
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        match r {
            Poll::Ready(Ok(n)) if n > 0 => {
                this.state.write_activity();
                this.stats.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Poll::Pending => this.state.write_pending(),
            _ => {}
        }
        r
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
