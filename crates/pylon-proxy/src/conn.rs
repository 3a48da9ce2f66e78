//! Per-connection state shared by the socket wrapper, the request path and the
//! connection's timer: last activity, requests in flight, when a request head began.
//! This is what the idle and header-read timeouts are decided from.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::observe::stats::ListenerStats;

#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    /// Nanoseconds since `epoch` of the last byte read or written.
    last_activity: AtomicU64,
    /// Nanoseconds since `epoch` + 1 when a request head began arriving on an idle
    /// connection; 0 when none is being read.
    head_started: AtomicU64,
    in_flight: AtomicU64,
    /// HTTP/2: no header-read timeout between requests (only the idle one).
    h2: AtomicBool,
    first_read: AtomicBool,
}

/// What the connection timer should do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Check again at this instant.
    Wait(Instant),
    /// Idle past the idle timeout: close politely.
    Idle,
    /// A request head took longer than the header-read timeout: drop the connection.
    HeaderTimeout,
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState {
            epoch: Instant::now(),
            last_activity: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            first_read: AtomicBool::new(true),
        }
    }
}

impl ConnState {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn read_activity(&self, data: &[u8]) {
        if self.first_read.swap(false, Ordering::Relaxed) && data.starts_with(b"PRI * HTTP/2.0") {
            self.h2.store(true, Ordering::Relaxed);
        }
        let now = self.now();
        self.last_activity.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(now + 1, Ordering::Relaxed);
        }
    }

    fn write_activity(&self) {
        self.last_activity.store(self.now(), Ordering::Relaxed);
    }

    /// Marks a request as dispatched; the guard ends it.
    pub fn request_started(self: &Arc<Self>, h2: bool) -> InFlight {
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Time since the last byte moved either way.
    pub fn idle_for(&self) -> Duration {
        Duration::from_nanos(
            self.now()
                .saturating_sub(self.last_activity.load(Ordering::Relaxed)),
        )
    }

    /// Decides about idle and header-read timeouts.
    pub fn verdict(&self, idle: Duration, header: Duration) -> Verdict {
        let now = self.now();
        let at = |nanos: u64| self.epoch + Duration::from_nanos(nanos);
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Verdict::Wait(at(now) + idle);
        }
        let head = self.head_started.load(Ordering::Relaxed);
        if head != 0 && !self.h2.load(Ordering::Relaxed) {
            let deadline = head - 1 + header.as_nanos() as u64;
            return if now >= deadline {
                Verdict::HeaderTimeout
            } else {
                Verdict::Wait(at(deadline))
            };
        }
        let deadline = self.last_activity.load(Ordering::Relaxed) + idle.as_nanos() as u64;
        if now >= deadline {
            Verdict::Idle
        } else {
            Verdict::Wait(at(deadline))
        }
    }
}

/// One request in flight on a connection; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.write_activity();
    }
}

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
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.read_activity(&buf.filled()[before..]);
            this.stats
                .received_bytes
                .fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, b);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            this.state.write_activity();
            this.stats.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
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
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            this.state.write_activity();
            this.stats.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let s = Arc::new(ConnState::default());
        let idle = Duration::from_secs(60);
        let header = Duration::from_secs(10);
        assert!(matches!(s.verdict(idle, header), Verdict::Wait(_)));
        // A head started arriving: the header deadline applies, not the idle one.
        s.read_activity(b"GET / HTTP/1.1\r\n");
        match s.verdict(idle, header) {
            Verdict::Wait(at) => assert!(at <= Instant::now() + header),
            v => panic!("{v:?}"),
        }
        assert_eq!(s.verdict(idle, Duration::ZERO), Verdict::HeaderTimeout);
        // Dispatched: no header deadline while the request is in flight.
        let g = s.request_started(false);
        assert_eq!(s.in_flight(), 1);
        assert!(matches!(
            s.verdict(Duration::ZERO, Duration::ZERO),
            Verdict::Wait(_)
        ));
        drop(g);
        assert_eq!(s.verdict(Duration::ZERO, header), Verdict::Idle);
    }
}
