//! Process-wide counters: responses by status class, proxy-made errors by reason,
//! connections, reloads. Atomics, those counted on every request or connection
//! sharded by thread (`observe::shard`); `exposition/` renders them for the admin API.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::http::error::ErrorKind;

/// One counter per proxy-made error reason.
#[derive(Debug)]
struct ErrorCounts([AtomicU64; ErrorKind::COUNT]);

impl Default for ErrorCounts {
    fn default() -> Self {
        ErrorCounts(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Index 1..=5 for 1xx..5xx; 0 for anything else.
    responses: super::shard::Sharded<6>,
    errors: ErrorCounts,
    /// Client connections: open now, accepted in all (sharded: counted for each).
    connections: super::shard::Sharded<2>,
    /// Idle HTTP/1.1 keep-alive connections parked (no task, no buffers) now.
    pub connections_parked: Arc<AtomicU64>,
    /// Connections closed at once: over `[server] max_connections`, over a listener's
    /// `max_connections_per_ip`.
    pub refused_max_connections: AtomicU64,
    pub refused_per_ip: AtomicU64,
    pub access_log_dropped: AtomicU64,
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Layer 4: connections accepted, refused at `max_connections`, rejected (no
    /// cluster, bad first flight), failed to reach any endpoint; bytes from and to
    /// clients.
    pub l4_connections: AtomicU64,
    pub l4_refused: AtomicU64,
    pub l4_rejected: AtomicU64,
    pub l4_connect_failures: AtomicU64,
    pub l4_bytes_received: AtomicU64,
    pub l4_bytes_sent: AtomicU64,
    /// Connections refused for their PROXY header (untrusted source, malformed).
    pub proxy_protocol_refused: AtomicU64,
    /// UDP: sessions opened, datagrams dropped (session limit, no endpoint).
    pub udp_sessions: AtomicU64,
    pub udp_dropped: AtomicU64,
    /// WebSocket tunnels open now, and opened so far.
    pub tunnels_active: AtomicU64,
    pub tunnels_total: AtomicU64,
    /// CONNECT tunnels whose two plain sockets were relayed with splice(2).
    pub tunnels_spliced: AtomicU64,
    /// Static file bytes sent with sendfile(2), never copied through the proxy.
    pub sendfile_bytes: AtomicU64,
    /// HTTP/3: QUIC connections established; handshakes that failed or timed out;
    /// new connections refused (a listener's `max_connections`, the process's limits);
    /// Retry packets sent to validate a client's address.
    pub quic_connections: AtomicU64,
    pub quic_handshake_failures: AtomicU64,
    pub quic_refused: AtomicU64,
    pub quic_retries: AtomicU64,
    /// HTTP/3 connections closed for cancelling requests in a loop.
    pub quic_excessive_resets: AtomicU64,
    /// HTTP/3 connections Pylon closed for the client's protocol errors.
    pub quic_protocol_errors: AtomicU64,
    /// Configuration reloads applied and refused; when the config in force was loaded
    /// (Unix seconds).
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub config_loaded_at: AtomicU64,
    /// Trace spans exported, and dropped (queue full, export failed).
    pub spans: super::trace::SpanCounts,
}

/// Where [`Metrics`] keeps its connection counts.
const CONNECTIONS_ACTIVE: usize = 0;
const CONNECTIONS_ACCEPTED: usize = 1;

impl Metrics {
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100);
        let i = if (1..=5).contains(&class) { class } else { 0 };
        self.responses.add(i, 1);
    }

    /// A client connection opened (counted active until [`Self::connection_closed`]).
    pub fn connection_opened(&self) {
        self.connections
            .add_each(&[(CONNECTIONS_ACTIVE, 1), (CONNECTIONS_ACCEPTED, 1)]);
    }

    pub fn connection_closed(&self) {
        self.connections.sub(CONNECTIONS_ACTIVE, 1);
    }

    pub fn connections_active(&self) -> u64 {
        self.connections.gauge(CONNECTIONS_ACTIVE)
    }

    pub fn connections_accepted(&self) -> u64 {
        self.connections.get(CONNECTIONS_ACCEPTED)
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors.0[kind as usize].load(Ordering::Relaxed)
    }

    pub fn responses(&self, class: u16) -> u64 {
        self.responses.get(usize::from(class).min(5))
    }

    /// Layer 4 bytes relayed with splice(2) so far, both directions. Counted by the
    /// relay itself, for the whole process (one Pylon per process).
    pub fn l4_spliced_bytes(&self) -> u64 {
        crate::l4::relay::SPLICED_BYTES.load(Ordering::Relaxed)
    }

    /// OpenMetrics text of these counters (the admin API's `/metrics` adds the
    /// per-listener, per-route and per-cluster series).
    pub fn render(self: &Arc<Self>) -> String {
        super::exposition::render(super::exposition::Global(Arc::clone(self)))
    }

    /// Records a configuration taking effect now.
    pub fn config_loaded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.config_loaded_at.store(now, Ordering::Relaxed);
    }
}
