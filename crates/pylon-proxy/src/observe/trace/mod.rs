//! OpenTelemetry traces: W3C trace context in and out (`traceparent`, `tracestate`,
//! with the SDK's `TraceContextPropagator`), the sampling decision, and one span per
//! request made at its end from its access-log record: a server span (route, cluster,
//! endpoint, status, error reason, the client-side steps as events) and, for a request
//! that went upstream, a client span for its last try (queue, connect, TLS, request
//! written and first byte as events). Spans are handed to the exporter's queue
//! (`export.rs`), which never blocks the request.
//!
//! The span is built when the request ends, not when it starts, so that "always for
//! errors" can keep a failed request that the head decision did not sample; its ids
//! are chosen at the start (the upstream is told the client span's id).

mod export;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use pylon_config::model::{Sampler, Tracing};

use super::AccessRecord;
use super::Metrics;

pub use export::ExportError;

/// One request's place in its trace, decided when it arrives.
#[derive(Debug, Clone)]
pub struct TraceCtx {
    /// As bytes: a `TraceId` is a `u128`, whose 16-byte alignment would pass to every
    /// request's state (and make each allocation of it an aligned one).
    trace_id: [u8; 16],
    /// The client's span, when it sent a valid `traceparent`.
    parent: Option<SpanId>,
    /// This request's server span.
    span_id: SpanId,
    /// Its upstream try's client span: the upstream's parent.
    client_span_id: SpanId,
    /// The head decision, sent upstream in the trace flags.
    sampled: bool,
    state: TraceState,
}

impl TraceCtx {
    /// `traceparent` (and `tracestate`, when the client sent one) for the upstream
    /// request, naming the client span as its parent; the client's own are replaced.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let sc = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            self.client_span_id,
            flags,
            true,
            self.state.clone(),
        );
        headers.remove("tracestate");
        let cx = Context::new().with_remote_span_context(sc);
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderWriter(headers));
    }
}

/// What the finaliser knows about a request beyond its access-log record.
pub struct SpanFacts {
    /// From the request's arrival to its answer's head.
    pub answered: Duration,
    /// From the request's arrival to its last upstream try's start.
    pub upstream_start: Option<Duration>,
    /// From that try's start to the upstream's response head.
    pub upstream_time: Option<Duration>,
}

/// The tracer of a configuration: sampler settings and the export queue.
pub struct Tracer {
    settings: Tracing,
    /// `ratio` as a threshold on the trace id's low 64 bits.
    threshold: u64,
    queue: export::Queue,
    scope: InstrumentationScope,
}

impl Tracer {
    /// Starts the exporter for `settings` (within a tokio runtime).
    pub fn start(settings: &Tracing, metrics: Arc<Metrics>) -> Result<Arc<Tracer>, ExportError> {
        let queue = export::Queue::start(settings, metrics)?;
        Ok(Arc::new(Tracer {
            threshold: ratio_threshold(settings.ratio),
            settings: settings.clone(),
            queue,
            scope: InstrumentationScope::builder("pylon")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }))
    }

    /// Whether this tracer was started for `settings` (a reload keeps it then).
    pub fn serves(&self, settings: &Tracing) -> bool {
        self.settings == *settings
    }

    /// The request's place in its trace: the client's trace continued (a valid
    /// `traceparent`), else a new one; sampled as the sampler says.
    pub fn begin(&self, headers: &HeaderMap) -> TraceCtx {
        let cx = TraceContextPropagator::new().extract(&HeaderReader(headers));
        let parent = cx.span().span_context().clone();
        let ids = export::ids();
        let (trace_id, parent_id, state) = if parent.is_valid() {
            (
                parent.trace_id(),
                Some(parent.span_id()),
                parent.trace_state().clone(),
            )
        } else {
            (
                TraceId::from_bytes(ids.0.to_be_bytes()),
                None,
                TraceState::NONE,
            )
        };
        let by_ratio = self.ratio_hit(trace_id);
        let sampled = match (self.settings.sampler, parent_id) {
            (Sampler::ParentBased, Some(_)) => parent.is_sampled(),
            _ => by_ratio,
        };
        TraceCtx {
            trace_id: trace_id.to_bytes(),
            parent: parent_id,
            span_id: SpanId::from_bytes(ids.1.to_be_bytes()),
            client_span_id: SpanId::from_bytes(ids.2.to_be_bytes()),
            sampled,
            state,
        }
    }

    /// The trace id's low 64 bits under the threshold (as the SDK's ratio sampler).
    fn ratio_hit(&self, id: TraceId) -> bool {
        let bytes = id.to_bytes();
        let mut low = [0u8; 8];
        low.copy_from_slice(&bytes[8..]);
        (u64::from_be_bytes(low) >> 1) < self.threshold
    }

    /// The request ended: its spans are queued for export when it was sampled, or
    /// failed and failures are always kept.
    pub fn finish(&self, t: &TraceCtx, r: &AccessRecord, facts: &SpanFacts) {
        let failed = r.status >= 500 || r.error.is_some();
        if !(t.sampled || (failed && self.settings.always_sample_errors)) {
            return;
        }
        let start = r.time;
        let end = start + Duration::from_secs_f64(r.duration_ms / 1000.0);
        let ctx = |id| {
            SpanContext::new(
                TraceId::from_bytes(t.trace_id),
                id,
                TraceFlags::SAMPLED,
                false,
                t.state.clone(),
            )
        };
        let status = if failed {
            Status::error(r.error.unwrap_or("server_error"))
        } else {
            Status::Unset
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", r.method.clone()),
            KeyValue::new("url.path", path_only(&r.path).to_owned()),
            KeyValue::new("server.address", r.authority.clone()),
            KeyValue::new("network.protocol.version", protocol_version(r.protocol)),
            KeyValue::new("client.address", r.client.ip().to_string()),
            KeyValue::new("http.response.status_code", i64::from(r.status)),
            KeyValue::new("pylon.listener", r.listener.to_string()),
            KeyValue::new("http.request.body.size", r.bytes_in as i64),
            KeyValue::new("http.response.body.size", r.bytes_out as i64),
        ];
        let mut opt = |key: &'static str, v: Option<String>| {
            if let Some(v) = v {
                attributes.push(KeyValue::new(key, v));
            }
        };
        opt("pylon.route", r.route.as_deref().map(str::to_owned));
        opt("pylon.cluster", r.cluster.as_deref().map(str::to_owned));
        opt("pylon.upstream.address", r.upstream.map(|a| a.to_string()));
        opt("error.type", r.error.map(str::to_owned));
        opt("pylon.request_id", r.request_id.clone());
        opt("user_agent.original", r.user_agent.clone());
        let timing = &r.timing;
        let mut events = Vec::new();
        let mut event = |name: &'static str, at: SystemTime, took: Option<Duration>| {
            let attrs = took
                .map(|d| vec![KeyValue::new("duration_ms", super::access_log::millis(d))])
                .unwrap_or_default();
            events.push(Event::new(name, at, attrs, 0));
        };
        if let Some(d) = timing.client_tls_ms {
            event("client_tls_handshake", start, Some(d));
        }
        if let Some(d) = timing.request_head_ms {
            event("request_head_read", start, Some(d));
        }
        if let Some(d) = timing.dns_ms {
            event("dns_resolved", start, Some(d));
        }
        event("response_head_sent", start + facts.answered, None);
        event("response_end", end, timing.response_ms);
        let name = match &r.route {
            Some(route) => format!("{} {route}", r.method),
            None => r.method.clone(),
        };
        let mut spans = vec![SpanData {
            span_context: ctx(t.span_id),
            parent_span_id: t.parent.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: t.parent.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(name),
            start_time: start,
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events: span_events(events),
            links: SpanLinks::default(),
            status: status.clone(),
            instrumentation_scope: self.scope.clone(),
        }];
        if let (Some(offset), Some(upstream)) = (facts.upstream_start, r.upstream) {
            let began = start + offset;
            let mut events = Vec::new();
            let mut at = began;
            for (name, step) in [
                ("queued", timing.queue_ms),
                ("connected", timing.connect_ms),
                ("tls_handshake_done", timing.upstream_tls_ms),
            ] {
                if let Some(d) = step {
                    at += d;
                    events.push(Event::new(
                        name,
                        at,
                        vec![KeyValue::new("duration_ms", super::access_log::millis(d))],
                        0,
                    ));
                }
            }
            if let Some(d) = timing.request_sent_ms {
                events.push(Event::new("request_sent", began + d, Vec::new(), 0));
            }
            if let Some(d) = facts.upstream_time {
                events.push(Event::new("first_byte", began + d, Vec::new(), 0));
            }
            spans.push(SpanData {
                span_context: ctx(t.client_span_id),
                parent_span_id: t.span_id,
                parent_span_is_remote: false,
                span_kind: SpanKind::Client,
                name: Cow::Owned(format!(
                    "{} {}",
                    r.method,
                    r.cluster.as_deref().unwrap_or("upstream")
                )),
                start_time: began,
                end_time: end.max(began),
                attributes: vec![
                    KeyValue::new("http.request.method", r.method.clone()),
                    KeyValue::new("server.address", upstream.ip().to_string()),
                    KeyValue::new("server.port", i64::from(upstream.port())),
                    KeyValue::new("http.response.status_code", i64::from(r.status)),
                ],
                dropped_attributes_count: 0,
                events: span_events(events),
                links: SpanLinks::default(),
                status,
                instrumentation_scope: self.scope.clone(),
            });
        }
        for s in spans {
            self.queue.push(s);
        }
    }
}

fn span_events(events: Vec<Event>) -> SpanEvents {
    let mut e = SpanEvents::default();
    e.events = events;
    e
}

fn path_only(p: &str) -> &str {
    p.split('?').next().unwrap_or(p)
}

fn protocol_version(p: &str) -> &'static str {
    match p {
        "HTTP/2" => "2",
        "HTTP/3" => "3",
        "HTTP/1.0" => "1.0",
        _ => "1.1",
    }
}

/// The SDK's ratio sampler's threshold: trace ids whose low 63 bits fall under it.
fn ratio_threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else {
        (ratio.max(0.0) * (1u64 << 63) as f64) as u64
    }
}

/// Reads trace context from a request's headers.
struct HeaderReader<'a>(&'a HeaderMap);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes trace context into an upstream request's headers.
struct HeaderWriter<'a>(&'a mut HeaderMap);

impl Injector for HeaderWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Spans exported and dropped, for the metrics.
#[derive(Debug, Default)]
pub struct SpanCounts {
    pub exported: AtomicU64,
    /// The queue was full (the collector slow or down for a while).
    pub dropped_queue_full: AtomicU64,
    /// An export failed or timed out.
    pub dropped_export_failed: AtomicU64,
}

impl SpanCounts {
    pub(super) fn add(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_thresholds() {
        assert_eq!(ratio_threshold(1.0), u64::MAX);
        assert_eq!(ratio_threshold(0.0), 0);
        assert_eq!(ratio_threshold(0.5), 1u64 << 62);
    }

    #[test]
    fn the_client_span_is_the_upstreams_parent() {
        let t = TraceCtx {
            trace_id: TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736")
                .unwrap()
                .to_bytes(),
            parent: None,
            span_id: SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            client_span_id: SpanId::from_hex("00f067aa0ba902b8").unwrap(),
            sampled: true,
            state: TraceState::NONE,
        };
        let mut h = HeaderMap::new();
        h.insert("traceparent", http::HeaderValue::from_static("00-x-y-01"));
        t.inject(&mut h);
        assert_eq!(
            h["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b8-01"
        );
    }
}
