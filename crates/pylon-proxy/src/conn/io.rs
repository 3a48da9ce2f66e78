//! The client socket's wrapper: reports activity and bytes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ConnState;
use crate::observe::stats::ListenerStats;

/// A socket that reports its activity to [`ConnState`] and its bytes to its
/// listener's counters.
pub struct TrackedIo<T> {
    inner: T,
    state: Arc<ConnState>,
    stats: Arc<ListenerStats>,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, state: Arc<ConnState>, stats: Arc<ListenerStats>) -> Self {
        TrackedIo {
            inner,
            state,
            stats,
        }
    }

    /// The connection itself (for a tunnel that relays it raw).
    pub fn into_inner(self) -> T {
        self.inner
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl TrackedIo<tokio::net::TcpStream> {
    /// Sends up to `count` bytes of `file` from `*offset` with `sendfile(2)` (the page
    /// cache's pages go to the socket without a copy through the process), moving
    /// `*offset` past them; pending while the socket's buffer is full.
    pub fn poll_sendfile(
        &mut self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: &mut u64,
        count: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.inner.poll_write_ready(cx)?.is_pending() {
                self.state.write_pending();
                return Poll::Pending;
            }
            let sent = self.inner.try_io(tokio::io::Interest::WRITABLE, || {
                let mut at = libc::off64_t::try_from(*offset)
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                let n = nix::sys::sendfile::sendfile64(&self.inner, file, Some(&mut at), count)?;
                Ok(n)
            });
            match sent {
                Ok(n) => {
                    *offset += n as u64;
                    if n > 0 {
                        self.state.write_activity();
                        self.stats.sent(n as u64);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) {
            let read = buf.filled().len() - before;
            if read > 0 {
                this.stats.received(read as u64);
                this.state.read_activity(&buf.filled()[before..]);
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
                this.stats.sent(n as u64);
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
                this.stats.sent(n as u64);
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
