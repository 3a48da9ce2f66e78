//! `[tracing]`: OpenTelemetry traces of every request, exported over OTLP.

use std::time::Duration;

/// How spans reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (`/opentelemetry.proto.collector.trace.v1.TraceService/Export`),
    /// the collector's port 4317.
    Grpc,
    /// OTLP over HTTP with protobuf bodies (`POST /v1/traces`), port 4318.
    HttpProtobuf,
}

/// Which requests get their spans exported.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Sampler {
    /// The client's `traceparent` decides (its sampled flag); requests that start a
    /// trace are sampled at `ratio`.
    ParentBased,
    /// `ratio` of traces, by trace id, whatever the client's flag.
    Ratio,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Tracing {
    /// The collector: `http://host:4317` (gRPC) or `http://host:4318/v1/traces`
    /// (HTTP); `https://` for TLS.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// The `service.name` resource attribute.
    pub service_name: String,
    pub sampler: Sampler,
    /// Between 0 and 1.
    pub ratio: f64,
    /// Requests that failed (a 5xx answer or a proxy-made error) are exported even
    /// when not sampled.
    pub always_sample_errors: bool,
    /// Sent to the collector with every export (an API key).
    pub headers: Vec<(String, String)>,
    /// Spans waiting for export at most; beyond, new ones are dropped and counted.
    pub max_queue: usize,
    /// Spans per export at most.
    pub max_batch: usize,
    /// How long a span may wait for its batch to fill.
    pub flush_interval: Duration,
    /// How long one export may take before it counts as failed.
    pub export_timeout: Duration,
}
