//! What long-lived connections (WebSockets, tunnels, gRPC streams, Layer 4 sessions)
//! watch to know when to end: the [`Life`] of the route or listener they were opened
//! through, which a reload that removes or changes it retires after its grace period,
//! and the process's [`Stop`] at the drain deadline; [`Ending`] watches both.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// The life of a route or of a Layer 4 / forward-proxy listener across reloads. Its
/// long-lived connections (WebSockets, tunnels, TCP and UDP sessions) watch it: when a
/// reload removes or changes what they were opened through, they get the reload grace
/// period, then close. Unchanged, it passes to the new runtime and nothing happens.
#[derive(Clone, Default)]
pub struct Life(Arc<LifeInner>);

struct LifeInner {
    ended: watch::Sender<bool>,
    /// Long-lived connections open through it (each [`Ending`] made from it counts one,
    /// whatever its clones).
    open: std::sync::atomic::AtomicUsize,
}

impl Default for LifeInner {
    fn default() -> Self {
        LifeInner {
            ended: watch::Sender::new(false),
            open: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

/// One long-lived connection counted open on a life until dropped.
struct Holding(Arc<LifeInner>);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Life {
    /// Resolves once retired and the grace period is over; never otherwise.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.0.ended.subscribe()
    }

    /// Ends the life after `grace`.
    pub fn retire_after(&self, grace: Duration) {
        let inner = Arc::clone(&self.0);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = inner.ended.send(true);
        });
    }

    /// Long-lived connections open through this route or listener now.
    pub fn connections(&self) -> usize {
        self.0.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn hold(&self) -> Holding {
        self.0
            .open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Holding(Arc::clone(&self.0))
    }
}

/// The process's stop: set when a graceful stop (SIGTERM, or the old process of a
/// binary upgrade) reaches `drain_timeout` with long-lived connections still open.
/// Those watch it through [`Ending`] and close with a reason (WebSockets with 1001,
/// gRPC streams with UNAVAILABLE) instead of being cut when the process exits.
pub struct Stop(watch::Sender<bool>);

impl Default for Stop {
    fn default() -> Self {
        Stop(watch::Sender::new(false))
    }
}

impl Stop {
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }

    /// The drain deadline passed: everything still open closes now.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    pub fn fired(&self) -> bool {
        *self.0.borrow()
    }
}

/// Why a long-lived connection was told to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// A reload removed or changed its route or listener, and the grace period passed.
    RouteRemoved,
    /// The process stopped and its drain timeout passed.
    Shutdown,
}

impl EndCause {
    /// The reason as logs and gRPC messages name it.
    pub fn as_str(self) -> &'static str {
        match self {
            EndCause::RouteRemoved => "route_removed",
            EndCause::Shutdown => "drain_timeout",
        }
    }
}

/// What a long-lived connection (tunnel, Layer 4 session, gRPC stream) watches: the
/// life of the route or listener it was opened through, and the process's stop.
#[derive(Clone, Default)]
pub struct Ending {
    life: Option<watch::Receiver<bool>>,
    stop: Option<watch::Receiver<bool>>,
    /// Counts the connection open on its life (the reload log says how many close).
    _held: Option<Arc<Holding>>,
}

impl Ending {
    pub fn new(life: Option<&Life>, stop: &Stop) -> Ending {
        Ending {
            life: life.map(Life::watch),
            stop: Some(stop.watch()),
            _held: life.map(|l| Arc::new(l.hold())),
        }
    }

    /// Resolves when either ends; never when neither does.
    pub async fn ended(&mut self) -> EndCause {
        tokio::select! {
            () = retired(&mut self.life) => EndCause::RouteRemoved,
            () = retired(&mut self.stop) => EndCause::Shutdown,
        }
    }
}

/// Waits until a life watched with [`Life::watch`] ends (never, without one).
pub async fn retired(watch: &mut Option<watch::Receiver<bool>>) {
    match watch {
        Some(w) => {
            if w.wait_for(|ended| *ended).await.is_err() {
                // The life was dropped without ending: nothing to wait for.
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}
