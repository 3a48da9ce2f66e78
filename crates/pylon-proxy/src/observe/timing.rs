//! A request's timing breakdown: where its time went on the client side (the TLS
//! handshake of a new connection, reading the request head) and the upstream side
//! (DNS for the forward proxy, waiting for a connection, TCP connect, TLS handshake,
//! the request written, the response streamed). Written as access-log fields, as
//! `Server-Timing` (routes with `server_timing = true`) and as a trace span's events.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::cluster::TryTiming;

/// The steps of one request (`None`: the step did not happen, or is not seen for its
/// protocol). Serialised as fields in milliseconds.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Timing {
    /// The TLS (or QUIC) handshake of the client's connection: on its first request.
    #[serde(serialize_with = "ms")]
    pub client_tls_ms: Option<Duration>,
    /// From the request head's first byte to its end (HTTP/1.x).
    #[serde(serialize_with = "ms")]
    pub request_head_ms: Option<Duration>,
    /// Resolving the destination's name (the forward proxy resolves per request).
    #[serde(serialize_with = "ms")]
    pub dns_ms: Option<Duration>,
    /// Waiting for an upstream connection or HTTP/2 stream.
    #[serde(serialize_with = "ms")]
    pub queue_ms: Option<Duration>,
    /// The TCP connect of a new upstream connection.
    #[serde(serialize_with = "ms")]
    pub connect_ms: Option<Duration>,
    /// The TLS handshake of a new upstream connection.
    #[serde(serialize_with = "ms")]
    pub upstream_tls_ms: Option<Duration>,
    /// From the try's start until the request head and body were written (HTTP/1.1
    /// upstreams).
    #[serde(serialize_with = "ms")]
    pub request_sent_ms: Option<Duration>,
    /// From the response head handed to the client to the end of its body.
    #[serde(serialize_with = "ms")]
    pub response_ms: Option<Duration>,
}

/// A handshake's time in nanoseconds, at least 1 (0 stands for none).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

fn ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(super::access_log::millis(*d)),
        None => s.serialize_none(),
    }
}

impl Timing {
    /// The upstream try's steps (the last try's, when there were retries).
    pub fn upstream(&mut self, t: &TryTiming, sent: Option<Duration>) {
        self.queue_ms = t.queued;
        self.connect_ms = t.connect;
        self.upstream_tls_ms = t.tls;
        self.request_sent_ms = sent;
    }

    /// The steps as named durations, in the order they happen; `upstream` is the time
    /// to the upstream's response head, `proxy` the time from the request's arrival to
    /// its answer's head.
    pub fn steps(
        &self,
        upstream: Option<Duration>,
        proxy: Duration,
    ) -> impl Iterator<Item = (&'static str, Duration)> {
        [
            ("client_tls", self.client_tls_ms),
            ("request_head", self.request_head_ms),
            ("dns", self.dns_ms),
            ("queue", self.queue_ms),
            ("connect", self.connect_ms),
            ("upstream_tls", self.upstream_tls_ms),
            ("request_sent", self.request_sent_ms),
            ("upstream", upstream),
            ("proxy", Some(proxy)),
        ]
        .into_iter()
        .filter_map(|(name, d)| Some((name, d?)))
    }

    /// The `Server-Timing` header's value (W3C Server Timing): one metric per step,
    /// durations in milliseconds.
    pub fn server_timing(&self, upstream: Option<Duration>, proxy: Duration) -> String {
        let mut out = String::with_capacity(160);
        for (name, d) in self.steps(upstream, proxy) {
            if !out.is_empty() {
                out.push_str(", ");
            }
            let _ = write!(out, "{name};dur={:.3}", d.as_secs_f64() * 1000.0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_names_the_steps_that_happened() {
        let mut t = Timing {
            request_head_ms: Some(Duration::from_micros(40)),
            ..Timing::default()
        };
        t.upstream(
            &TryTiming {
                queued: Some(Duration::ZERO),
                connect: Some(Duration::from_micros(250)),
                tls: None,
                sent_at: None,
            },
            Some(Duration::from_micros(300)),
        );
        assert_eq!(
            t.server_timing(Some(Duration::from_millis(2)), Duration::from_micros(2500)),
            "request_head;dur=0.040, queue;dur=0.000, connect;dur=0.250, \
             request_sent;dur=0.300, upstream;dur=2.000, proxy;dur=2.500"
        );
        let v = serde_json::to_value(t).unwrap();
        assert_eq!(v["connect_ms"], 0.25);
        assert_eq!(v["upstream_tls_ms"], serde_json::Value::Null);
    }
}
