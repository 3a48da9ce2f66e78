//! Session tickets (TLS resumption) for every TLS listener of the process: one ticket
//! producer, kept across reloads, so that a reload does not cost clients their
//! resumption. Alone, it is rustls's own (random keys, rotated by rustls); in a fleet
//! (`fleet/tickets.rs`) its keys come from etcd, shared by every instance, so that a
//! client resumes on whichever instance it reaches.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::ProducesTickets;

/// The process's ticket producer; what it delegates to can be replaced at any time.
#[derive(Debug)]
pub struct Tickets {
    inner: ArcSwap<Arc<dyn ProducesTickets>>,
}

impl Default for Tickets {
    fn default() -> Self {
        let own: Arc<dyn ProducesTickets> = match rustls::crypto::aws_lc_rs::Ticketer::new() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "no session ticket keys; TLS resumption by ticket is off");
                Arc::new(Off)
            }
        };
        Tickets {
            inner: ArcSwap::from_pointee(own),
        }
    }
}

impl Tickets {
    /// Hands tickets to `producer` from now on (tickets issued before decrypt only if it
    /// knows their key).
    pub fn replace(&self, producer: Arc<dyn ProducesTickets>) {
        self.inner.store(Arc::new(producer));
    }
}

impl ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        self.inner.load().enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.load().lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.load().encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.inner.load().decrypt(cipher)
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
