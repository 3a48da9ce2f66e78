//! Process-wide counters: responses by status class, proxy-made errors by reason,
//! connections. Plain atomics on the request path; rendered as Prometheus text for the
//! admin API.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::http::error::ErrorKind;

#[derive(Debug, Default)]
pub struct Metrics {
    /// Index 1..=5 for 1xx..5xx; 0 for anything else.
    responses: [AtomicU64; 6],
    errors: [AtomicU64; ErrorKind::COUNT],
    pub connections_accepted: AtomicU64,
    pub connections_active: AtomicU64,
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
}

impl Metrics {
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100);
        let i = if (1..=5).contains(&class) { class } else { 0 };
        self.responses[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize].load(Ordering::Relaxed)
    }

    pub fn responses(&self, class: u16) -> u64 {
        self.responses[usize::from(class).min(5)].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# TYPE pylon_responses_total counter\n");
        for (i, c) in self.responses.iter().enumerate() {
            let class = if i == 0 {
                "other".to_string()
            } else {
                format!("{i}xx")
            };
            let _ = writeln!(
                out,
                "pylon_responses_total{{class=\"{class}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        out.push_str("# TYPE pylon_proxy_errors_total counter\n");
        for kind in ErrorKind::ALL {
            let _ = writeln!(
                out,
                "pylon_proxy_errors_total{{reason=\"{}\"}} {}",
                kind.as_str(),
                self.errors(kind)
            );
        }
        for (name, v) in [
            (
                "pylon_connections_accepted_total",
                &self.connections_accepted,
            ),
            ("pylon_connections_active", &self.connections_active),
            ("pylon_access_log_dropped_total", &self.access_log_dropped),
            ("pylon_tls_handshakes_total", &self.tls_handshakes),
            (
                "pylon_tls_handshake_failures_total",
                &self.tls_handshake_failures,
            ),
            ("pylon_l4_connections_total", &self.l4_connections),
            ("pylon_l4_connections_refused_total", &self.l4_refused),
            ("pylon_l4_connections_rejected_total", &self.l4_rejected),
            ("pylon_l4_connect_failures_total", &self.l4_connect_failures),
            ("pylon_l4_received_bytes_total", &self.l4_bytes_received),
            ("pylon_l4_sent_bytes_total", &self.l4_bytes_sent),
            (
                "pylon_proxy_protocol_refused_total",
                &self.proxy_protocol_refused,
            ),
            ("pylon_udp_sessions_total", &self.udp_sessions),
            ("pylon_udp_dropped_datagrams_total", &self.udp_dropped),
            ("pylon_tunnels_active", &self.tunnels_active),
            ("pylon_tunnels_total", &self.tunnels_total),
        ] {
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        out
    }
}
