//! The export side: a bounded queue the request path pushes spans into without ever
//! waiting (a full queue drops the span, counted), and a task that sends them to the
//! collector in batches with `opentelemetry-otlp`'s exporter, over gRPC (tonic) or HTTP
//! with protobuf bodies. An export that fails or takes longer than `export_timeout`
//! drops its batch (counted); the next batch tries again. The HTTP client is Pylon's
//! own small one on hyper, TLS through rustls with aws-lc-rs: the exporter's bundled
//! clients (reqwest) would bring a second TLS stack.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
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
#[derive(Clone)]
struct HttpClient {
    timeout: Duration,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Largest collector answer read.
const MAX_ANSWER: usize = 1 << 20;

impl HttpClient {
    fn new(timeout: Duration) -> HttpClient {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .ok()
        .map(|b| {
            let mut c = b.with_root_certificates(roots).with_no_client_auth();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsConnector::from(Arc::new(c))
        });
        HttpClient { timeout, tls }
    }

    async fn send(
        &self,
        req: Request<Bytes>,
    ) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
        let uri = req.uri().clone();
        let host = uri.host().ok_or("collector URL without a host")?.to_owned();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
        let _ = tcp.set_nodelay(true);
        let (mut parts, body) = req.into_parts();
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or(host.clone());
        parts.headers.insert(http::header::HOST, authority.parse()?);
        parts.uri = uri
            .path_and_query()
            .map_or_else(|| "/".parse(), |p| p.as_str().parse())?;
        let req = Request::from_parts(parts, Full::new(body));
        let resp = if https {
            let tls = self.tls.as_ref().ok_or("no TLS configuration")?;
            let name =
                rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())?;
            let stream = tls.connect(name, tcp).await?;
            exchange(TokioIo::new(stream), req).await?
        } else {
            exchange(TokioIo::new(tcp), req).await?
        };
        Ok(resp)
    }
}

async fn exchange<T>(
    io: T,
    req: Request<Full<Bytes>>,
) -> Result<Response<Bytes>, opentelemetry_http::HttpError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpClient {
    async fn send_bytes(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
        tokio::time::timeout(self.timeout, self.send(request))
            .await
            .map_err(|_| "collector did not answer in time")?
    }
}
