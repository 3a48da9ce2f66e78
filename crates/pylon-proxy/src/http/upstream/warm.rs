//! Warm connections (Layer 4): TCP connections opened ahead to one endpoint, each handed
//! to a new client so it skips the connect round trip. A background task refills the
//! set after each hand-out, closes connections idle past the pool's idle timeout, and
//! ends when the endpoint is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::Notify;

pub struct WarmConnections {
    address: SocketAddr,
    target: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    idle: Mutex<Vec<(Instant, TcpStream)>>,
    wake: Arc<Notify>,
    /// Connections handed to clients so far.
    pub handed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a pooled connection is still open: no EOF or error waiting on it. Bytes the
/// upstream sent first (a protocol greeting) stay queued for the client.
fn alive(s: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(s).peek(&mut probe) {
        Ok(n) => n > 0,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

impl WarmConnections {
    /// Starts filling up to `target` connections to `address`.
    pub fn start(
        address: SocketAddr,
        target: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Arc<WarmConnections> {
        let warm = Arc::new(WarmConnections {
            address,
            target,
            idle_timeout,
            connect_timeout,
            idle: Mutex::new(Vec::with_capacity(target)),
            wake: Arc::new(Notify::new()),
            handed: AtomicU64::new(0),
        });
        tokio::spawn(fill(Arc::downgrade(&warm), Arc::clone(&warm.wake)));
        warm
    }

    /// The most recently opened connection that is still open, if any.
    pub fn take(&self) -> Option<TcpStream> {
        let mut idle = lock(&self.idle);
        let found = loop {
            let (_, s) = idle.pop()?;
            if alive(&s) {
                break s;
            }
        };
        drop(idle);
        self.handed.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        Some(found)
    }

    /// Connections ready now.
    pub fn ready(&self) -> usize {
        lock(&self.idle).len()
    }

    fn expire(&self) {
        let now = Instant::now();
        lock(&self.idle)
            .retain(|(since, s)| now.duration_since(*since) < self.idle_timeout && alive(s));
    }
}

async fn fill(warm: Weak<WarmConnections>, wake: Arc<Notify>) {
    let mut failures = 0u32;
    loop {
        let Some(w) = warm.upgrade() else { return };
        w.expire();
        while w.ready() < w.target {
            match tokio::time::timeout(w.connect_timeout, TcpStream::connect(w.address)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    lock(&w.idle).insert(0, (Instant::now(), s));
                    failures = 0;
                }
                _ => {
                    failures = failures.saturating_add(1);
                    break;
                }
            }
        }
        let period = if failures > 0 {
            // A dead endpoint is retried with a growing delay, up to 30 s.
            Duration::from_millis(100 << failures.min(8)).min(Duration::from_secs(30))
        } else {
            (w.idle_timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(5))
        };
        drop(w);
        tokio::select! {
            _ = wake.notified(), if failures == 0 => {}
            _ = tokio::time::sleep(period) => {}
        }
    }
}
