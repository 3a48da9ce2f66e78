//! The export side: a bounded queue the request path pushes spans into without ever
//! waiting (a full queue drops the span, counted), and a task that sends them to the
//! collector in batches with `opentelemetry-otlp`'s exporter, over gRPC (tonic) or HTTP
//! with protobuf bodies. An export that fails or takes longer than `export_timeout`
//! drops its batch (counted); the next batch tries again. The HTTP client is Pylon's
//! own (`fetch.rs`): the exporter's bundled clients (reqwest) would bring a second TLS
//! stack.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use pylon_config::model::{OtlpProtocol, Tracing};
use tokio::sync::mpsc;

use super::SpanCounts;
use crate::observe::Metrics;

/// Why the exporter could not be made.
#[derive(Debug, thiserror::Error)]
#[error("tracing exporter: {0}")]
pub struct ExportError(String);

/// Where the request path leaves spans.
pub(super) struct Queue {
    tx: mpsc::Sender<SpanData>,
    metrics: Arc<Metrics>,
}

impl Queue {
    /// Builds the exporter and starts the task that drains the queue into it.
    pub(super) fn start(settings: &Tracing, metrics: Arc<Metrics>) -> Result<Queue, ExportError> {
        let mut exporter = exporter(settings)?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(settings.service_name.clone())
                .build(),
        );
        let (tx, rx) = mpsc::channel(settings.max_queue);
        tokio::spawn(drain(
            rx,
            exporter,
            settings.max_batch,
            settings.flush_interval,
            settings.export_timeout,
            Arc::clone(&metrics),
        ));
        Ok(Queue { tx, metrics })
    }

    /// Queues a span, or drops it (counted) when the queue is full.
    pub(super) fn push(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            SpanCounts::add(&self.metrics.spans.dropped_queue_full, 1);
        }
    }
}

/// Sends batches until the tracer is gone (a reload that changes `[tracing]` starts
/// another; this one sends what it holds, then ends).
async fn drain(
    mut rx: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    max_batch: usize,
    flush_interval: Duration,
    timeout: Duration,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + flush_interval;
        while batch.len() < max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len();
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
        match tokio::time::timeout(timeout, exporter.export(spans)).await {
            Ok(Ok(())) => SpanCounts::add(&metrics.spans.exported, n),
            Ok(Err(e)) => {
                SpanCounts::add(&metrics.spans.dropped_export_failed, n);
                tracing::debug!(error = %e, spans = n, "span export failed");
            }
            Err(_) => {
                SpanCounts::add(&metrics.spans.dropped_export_failed, n);
                tracing::debug!(spans = n, "span export timed out");
            }
        }
    }
}

fn exporter(s: &Tracing) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
    let built = match s.protocol {
        OtlpProtocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (k, v) in &s.headers {
                let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
                    .map_err(|e| ExportError(format!("header {k}: {e}")))?;
                let value = v
                    .parse()
                    .map_err(|_| ExportError(format!("header {k}: not a valid value")))?;
                metadata.insert(key, value);
            }
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(s.endpoint.clone())
                .with_timeout(s.export_timeout)
                .with_metadata(metadata);
            if s.endpoint.starts_with("https://") {
                b = b
                    .with_tls_config(tonic::transport::ClientTlsConfig::new().with_enabled_roots());
            }
            b.build()
        }
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(s.endpoint.clone())
            .with_timeout(s.export_timeout)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_headers(s.headers.iter().cloned().collect())
            .with_http_client(HttpClient::new(s.export_timeout))
            .build(),
    };
    built.map_err(|e| ExportError(e.to_string()))
}

/// Random ids: a trace id and two span ids.
pub(super) fn ids() -> (u128, u64, u64) {
    loop {
        let ids: (u128, u64, u64) = rand::random();
        // All-zero ids are invalid (W3C trace context).
        if ids.0 != 0 && ids.1 != 0 && ids.2 != 0 {
            return ids;
        }
    }
}

/// OTLP/HTTP's client: one connection per export (a batch a second at most), HTTP/1.1,
/// TLS for `https://` collectors with the system's roots.
#[derive(Clone, Debug)]
struct HttpClient(crate::fetch::Fetcher);

/// Largest collector answer read.
const MAX_ANSWER: usize = 1 << 20;

impl HttpClient {
    fn new(timeout: Duration) -> HttpClient {
        HttpClient(crate::fetch::Fetcher::new(
            timeout,
            MAX_ANSWER,
            crate::fetch::system_roots(),
        ))
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpClient {
    async fn send_bytes(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
        Ok(self.0.send(request).await?)
    }
}
