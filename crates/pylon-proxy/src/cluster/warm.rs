//! Warm connections: connections opened ahead to one endpoint so that a client or a
//! request skips the connect round trip (and the TLS handshake). The set holds TCP
//! connections, TLS-done for TLS clusters without PROXY protocol; a new Layer 4 client
//! takes one as is, an HTTP/1.1 request that finds no idle pooled connection takes one
//! and runs hyper's (local, no round trip) handshake over it, after which it is an
//! ordinary pooled connection. HTTP/2 clusters keep one ready connection instead (in
//! the pool's HTTP/2 set). A background task ([`spawn_fill`]) tops the endpoint up to
//! `warm_connections` at start, after each hand-out and whenever pooled connections
//! close, drops connections idle past the pool's idle timeout or closed by the
//! endpoint, backs off while the endpoint refuses, and ends with the endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::pool::EndpointPool;
use crate::lock;
use crate::tls::upstream::UpstreamIo;

/// A connection opened ahead.
pub enum WarmIo {
    Plain(TcpStream),
    /// TCP and TLS done. `probe` is a second handle on the same socket, to see whether
    /// the endpoint closed it while it waited.
    Tls {
        io: UpstreamIo,
        probe: socket2::Socket,
    },
}

impl WarmIo {
    fn alive(&self) -> bool {
        match self {
            WarmIo::Plain(s) => alive(socket2::SockRef::from(s)),
            WarmIo::Tls { probe, .. } => alive(socket2::SockRef::from(probe)),
        }
    }

    /// The connection, for hyper or a relay.
    pub fn into_io(self) -> UpstreamIo {
        match self {
            WarmIo::Plain(s) => UpstreamIo::plain(s),
            WarmIo::Tls { io, .. } => io,
        }
    }
}

pub struct WarmConnections {
    target: usize,
    idle_timeout: Duration,
    idle: Mutex<Vec<(Instant, WarmIo)>>,
    wake: Arc<Notify>,
    /// Connections handed out so far (Layer 4 clients and HTTP requests).
    pub handed: AtomicU64,
}

/// Whether a waiting connection is still open: no EOF or error queued on it. Bytes the
/// upstream sent first (a protocol greeting, TLS session tickets) stay queued.
fn alive(s: socket2::SockRef<'_>) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match s.peek(&mut probe) {
        Ok(n) => n > 0,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

impl WarmConnections {
    pub(super) fn new(target: usize, idle_timeout: Duration) -> WarmConnections {
        WarmConnections {
            target,
            idle_timeout,
            idle: Mutex::new(Vec::with_capacity(target)),
            wake: Arc::new(Notify::new()),
            handed: AtomicU64::new(0),
        }
    }

    /// The longest-waiting connection that is still open, if any.
    pub fn take(&self) -> Option<WarmIo> {
        self.take_where(|_| true)
    }

    /// A connection for a Layer 4 relay: the TCP stream (`Ok`), or one with its TLS
    /// handshake done (`Err`, not when `raw`: TLS passthrough, a PROXY header before
    /// TLS).
    pub fn take_relay(&self, raw: bool) -> Option<Result<TcpStream, UpstreamIo>> {
        let fits = |w: &WarmIo| !raw || matches!(w, WarmIo::Plain(_));
        Some(match self.take_where(fits)? {
            WarmIo::Plain(s) => Ok(s),
            tls => Err(tls.into_io()),
        })
    }

    fn take_where(&self, fits: impl Fn(&WarmIo) -> bool) -> Option<WarmIo> {
        let mut idle = lock(&self.idle);
        let found = loop {
            let i = idle.iter().rposition(|(_, w)| fits(w))?;
            let (_, w) = idle.remove(i);
            if w.alive() {
                break w;
            }
        };
        drop(idle);
        self.handed.fetch_add(1, Ordering::Relaxed);
        self.wake();
        Some(found)
    }

    /// Connections ready now.
    pub fn ready(&self) -> usize {
        lock(&self.idle).len()
    }

    /// The count the endpoint is topped up to.
    pub fn target(&self) -> usize {
        self.target
    }

    pub(super) fn put(&self, w: WarmIo) {
        lock(&self.idle).insert(0, (Instant::now(), w));
    }

    /// Asks the fill task to look again.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    fn expire(&self) {
        let now = Instant::now();
        lock(&self.idle)
            .retain(|(since, w)| now.duration_since(*since) < self.idle_timeout && w.alive());
    }
}

/// Starts the task that keeps `pool`'s warm connections topped up.
pub(super) fn spawn_fill(pool: &Arc<EndpointPool>, warm: &WarmConnections) {
    tokio::spawn(fill(Arc::downgrade(pool), Arc::clone(&warm.wake)));
}

async fn fill(pool: Weak<EndpointPool>, wake: Arc<Notify>) {
    let mut failures = 0u32;
    loop {
        let Some(p) = pool.upgrade() else { return };
        let Some(warm) = p.warm.as_ref() else { return };
        warm.expire();
        let idle_timeout = warm.idle_timeout;
        while p.warm_missing() > 0 {
            match p.open_warm().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    tracing::debug!(endpoint = %p.address, error = %e, "warm connection failed");
                    failures = failures.saturating_add(1);
                    break;
                }
            }
        }
        drop(p);
        let period = if failures > 0 {
            // A dead endpoint is retried with a growing delay, up to 30 s.
            Duration::from_millis(100 << failures.min(8)).min(Duration::from_secs(30))
        } else {
            (idle_timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(5))
        };
        tokio::select! {
            _ = wake.notified(), if failures == 0 => {}
            _ = tokio::time::sleep(period) => {}
        }
    }
}
