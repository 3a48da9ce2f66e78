//! Process-wide services every listener reports to (HTTP and Layer 4 alike): metrics,
//! per-listener/route/cluster stats, the access log, request ids, the process's stop,
//! STUN/TURN listeners' state, ACME certificates with their challenge answers, OCSP
//! staplers, and session tickets.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use crate::observe::{AccessLogger, Metrics, StatsRegistry};

/// Process-wide services the request path reports to.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// Per listener, route and cluster.
    pub stats: Arc<StatsRegistry>,
    pub logger: AccessLogger,
    pub request_ids: RequestIds,
    /// Set once a graceful stop reaches its drain timeout.
    pub stop: crate::life::Stop,
    /// STUN and TURN listeners' services and counters.
    pub turn: crate::turn::TurnRegistry,
    /// Every address Pylon serves now (TURN never relays to them).
    pub own_addrs: arc_swap::ArcSwap<Vec<std::net::SocketAddr>>,
    /// The slowest recent requests and the recent reloads (the dashboard's).
    pub recent: Arc<crate::observe::recent::Recent>,
    /// ACME certificates and their challenge answers, OCSP staplers, session tickets.
    pub tls: crate::tls::TlsServices,
}

impl Shared {
    /// The services of a process: its counters in `stats` and `metrics`, and the
    /// access log (its writer started for `target`) feeding the recent-requests list.
    pub fn start(
        target: &pylon_config::model::AccessLogTarget,
        metrics: Arc<Metrics>,
        stats: Arc<StatsRegistry>,
    ) -> std::io::Result<Arc<Shared>> {
        let recent = Arc::new(crate::observe::recent::Recent::default());
        let logger = AccessLogger::start(target, Arc::clone(&metrics), Arc::clone(&recent))?;
        Ok(Arc::new(Shared {
            metrics,
            stats,
            logger,
            request_ids: RequestIds::default(),
            stop: crate::life::Stop::default(),
            turn: Default::default(),
            own_addrs: Default::default(),
            recent,
            tls: Default::default(),
        }))
    }
}

/// Generates request ids: a random per-process prefix and a counter, 32 hex digits.
pub struct RequestIds {
    prefix: u64,
    next: std::sync::atomic::AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        RequestIds {
            prefix: h.finish(),
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Mix the counter so consecutive ids do not look sequential.
        let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.prefix.rotate_left(17);
        format!("{:016x}{:016x}", self.prefix, mixed)
    }
}
