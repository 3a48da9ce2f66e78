//! Where one upstream try's time went, as the endpoint's pool saw it: waiting for a
//! connection or an HTTP/2 stream, the TCP connect and the TLS handshake of a new
//! connection, and when the request (head and body) was written. The request path
//! turns it into the access log's timing fields, the route's histograms, the
//! `Server-Timing` header and the trace span's events (`observe::timing`).

use std::time::{Duration, Instant};

/// One try's steps, filled in by the pool as they happen (`None`: the step did not
/// happen, e.g. no connect on a pooled connection).
#[derive(Debug, Default, Clone, Copy)]
pub struct TryTiming {
    /// Waiting for a connection or stream: zero for an idle pooled connection.
    pub queued: Option<Duration>,
    /// The TCP connect of a new connection.
    pub connect: Option<Duration>,
    /// The TLS handshake of a new connection.
    pub tls: Option<Duration>,
    /// When the request's head and body were written (HTTP/1.1 upstreams; HTTP/2 and
    /// HTTP/3 bodies are sent by their connection).
    pub sent_at: Option<Instant>,
}

impl TryTiming {
    /// The time from `start` until the request was written.
    pub fn sent(&self, start: Instant) -> Option<Duration> {
        self.sent_at.map(|t| t.saturating_duration_since(start))
    }
}
