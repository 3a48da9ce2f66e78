//! Session tickets (TLS resumption) for every TLS listener of the process: one ticket
//! producer, kept across reloads, so that a reload does not cost clients their
//! resumption. Alone, it is rustls's own (random keys, rotated by rustls); in a fleet
//! (`fleet/tickets.rs`) its keys come from etcd, shared by every instance, so that a
//! client resumes on whichever instance it reaches.

use std::sync::Arc;

use rustls::server::ProducesTickets;

/// The process's ticket producer; what it delegates to can be replaced at any time.
/// rustls's own is made at the first handshake that needs it (a process without TLS
/// listeners never starts its crypto).
#[derive(Debug, Default)]
pub struct Tickets {
    fleet: arc_swap::ArcSwapOption<Arc<dyn ProducesTickets>>,
    own: std::sync::OnceLock<Arc<dyn ProducesTickets>>,
}

impl Tickets {
    /// Hands tickets to `producer` from now on (tickets issued before decrypt only if it
    /// knows their key).
    pub fn replace(&self, producer: Arc<dyn ProducesTickets>) {
        self.fleet.store(Some(Arc::new(producer)));
    }

    fn with<T>(&self, f: impl FnOnce(&dyn ProducesTickets) -> T) -> T {
        if let Some(p) = &*self.fleet.load() {
            return f(p.as_ref().as_ref());
        }
        let own = self.own.get_or_init(|| match rustls::crypto::aws_lc_rs::Ticketer::new() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "no session ticket keys; TLS resumption by ticket is off");
                Arc::new(Off)
            }
        });
        f(own.as_ref())
    }
}

impl ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        self.with(|t| t.enabled())
    }

    fn lifetime(&self) -> u32 {
        self.with(|t| t.lifetime())
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.with(|t| t.encrypt(plain))
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.with(|t| t.decrypt(cipher))
    }
}

#[derive(Debug)]
struct Off;

impl ProducesTickets for Off {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}
