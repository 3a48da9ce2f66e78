//! Active health checks: TCP connects and HTTP requests per endpoint, on an interval with
//! jitter, moving endpoints in and out of rotation (`pylon_lb::Endpoints`) after
//! consecutive failures or successes. Every change is logged and counted.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pylon_config::model::{HealthCheck, HealthCheckKind, UpstreamProtocol};

use crate::cluster::body::RequestBody;
use crate::cluster::{ClusterRuntime, EndpointPool};
use pylon_lb::EndpointState;

/// Largest response body read to look for `body_contains`.
const MAX_BODY: usize = 64 * 1024;

/// Starts the checking task of one endpoint; it ends when the cluster is dropped or the
/// endpoint leaves it (DNS discovery).
pub fn spawn(
    cluster: &Arc<ClusterRuntime>,
    endpoint: Arc<EndpointPool>,
    state: Arc<EndpointState>,
    hc: &HealthCheck,
) {
    tokio::spawn(run(Arc::downgrade(cluster), endpoint, state, hc.clone()));
}

async fn run(
    cluster: Weak<ClusterRuntime>,
    endpoint: Arc<EndpointPool>,
    state: Arc<EndpointState>,
    hc: HealthCheck,
) {
    let mut successes = 0u32;
    let mut failures = 0u32;
    let mut first = true;
    loop {
        let protocol = match cluster.upgrade() {
            Some(c) if c.has_endpoint(&endpoint) => c.protocol,
            _ => return,
        };
        let outcome = tokio::time::timeout(hc.timeout, check(&endpoint, protocol, &hc.kind)).await;
        let result = match outcome {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", hc.timeout)),
        };
        let Some(c) = cluster.upgrade() else { return };
        match &result {
            Ok(()) => {
                successes += 1;
                failures = 0;
            }
            Err(_) => {
                failures += 1;
                successes = 0;
            }
        }
        // The first result decides at once: a dead endpoint is not tried by traffic first.
        let change = if state.is_up() {
            (result.is_err() && (first || failures >= hc.unhealthy_threshold)).then_some(false)
        } else {
            (result.is_ok() && successes >= hc.healthy_threshold).then_some(true)
        };
        first = false;
        if let Some(up) = change {
            state.set_available(up);
            c.health_changes.fetch_add(1, Ordering::Relaxed);
            match &result {
                Ok(()) => tracing::info!(
                    cluster = %c.name,
                    endpoint = %endpoint.address,
                    "endpoint healthy: back in rotation"
                ),
                Err(e) => tracing::warn!(
                    cluster = %c.name,
                    endpoint = %endpoint.address,
                    reason = %e,
                    "endpoint unhealthy: out of rotation"
                ),
            }
        }
        state.mark_checked();
        drop(c);
        tokio::time::sleep(hc.interval + jitter(hc.jitter)).await;
    }
}

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let nanos = max.as_nanos().min(u128::from(u64::MAX)) as u64;
    Duration::from_nanos(pylon_lb::random_u64() % nanos)
}

async fn check(
    endpoint: &EndpointPool,
    protocol: UpstreamProtocol,
    kind: &HealthCheckKind,
) -> Result<(), String> {
    if let HealthCheckKind::Udp { send, expect } = kind {
        return check_udp(endpoint.address, send, expect.as_deref()).await;
    }
    if protocol == UpstreamProtocol::H3 {
        return check_h3(endpoint, kind).await;
    }
    let io = endpoint.connect().await.map_err(|e| e.to_string())?;
    if let HealthCheckKind::Grpc { service } = kind {
        return check_grpc(io, endpoint, protocol, service).await;
    }
    let HealthCheckKind::Http {
        method,
        path,
        host,
        expected_statuses,
        body_contains,
    } = kind
    else {
        return Ok(());
    };
    let host = host.clone().unwrap_or_else(|| endpoint_authority(endpoint));
    let h2 = matches!(protocol, UpstreamProtocol::H2c | UpstreamProtocol::H2);
    let uri = if h2 {
        let scheme = if protocol == UpstreamProtocol::H2 {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{host}{path}")
    } else {
        path.clone()
    };
    let mut req = Request::builder()
        .method(method.as_str())
        .uri(uri)
        .header(http::header::USER_AGENT, "pylon-health-check");
    if !h2 {
        req = req.header(http::header::HOST, host.as_str());
    }
    let req = req.body(RequestBody::Empty).map_err(|e| e.to_string())?;
    let resp = if h2 {
        let (mut tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        tx.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut tx, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        tx.send_request(req).await.map_err(|e| e.to_string())?
    };
    judge(resp, expected_statuses, body_contains.as_deref()).await
}

/// The endpoint as a check's authority: its `host:port` (or `ip:port`).
fn endpoint_authority(endpoint: &EndpointPool) -> String {
    endpoint
        .host_value
        .to_str()
        .map_or_else(|_| endpoint.address.to_string(), str::to_owned)
}

/// An HTTP health check over HTTP/3, on the endpoint's QUIC connection.
async fn check_h3(endpoint: &EndpointPool, kind: &HealthCheckKind) -> Result<(), String> {
    let HealthCheckKind::Http {
        method,
        path,
        host,
        expected_statuses,
        body_contains,
    } = kind
    else {
        return Err("only HTTP health checks are made over HTTP/3".into());
    };
    let host = host.clone().unwrap_or_else(|| endpoint_authority(endpoint));
    let req = Request::builder()
        .method(method.as_str())
        .uri(format!("https://{host}{path}"))
        .version(http::Version::HTTP_3)
        .header(http::header::USER_AGENT, "pylon-health-check")
        .body(RequestBody::Empty)
        .map_err(|e| e.to_string())?;
    let resp = endpoint.request_h3(req).await.map_err(|e| e.to_string())?;
    judge(resp, expected_statuses, body_contains.as_deref()).await
}

/// The check's verdict on an answer: its status, and its body when it must hold a text.
async fn judge<B>(
    resp: http::Response<B>,
    expected_statuses: &[u16],
    body_contains: Option<&str>,
) -> Result<(), String>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let status = resp.status().as_u16();
    let status_ok = if expected_statuses.is_empty() {
        (200..300).contains(&status)
    } else {
        expected_statuses.contains(&status)
    };
    if !status_ok {
        return Err(format!("status {status}"));
    }
    if let Some(needle) = body_contains {
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if !body
            .windows(needle.len().max(1))
            .any(|w| w == needle.as_bytes())
        {
            return Err(format!("body does not contain {needle:?}"));
        }
    }
    Ok(())
}

/// A datagram to the endpoint gets a reply (holding `expect`, when set). The caller
/// bounds the wait with the check's timeout.
async fn check_udp(
    addr: std::net::SocketAddr,
    send: &[u8],
    expect: Option<&str>,
) -> Result<(), String> {
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    socket.connect(addr).await.map_err(|e| e.to_string())?;
    socket.send(send).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65_535];
    let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
    match expect {
        Some(needle)
            if !buf[..n]
                .windows(needle.len().max(1))
                .any(|w| w == needle.as_bytes()) =>
        {
            Err(format!("reply does not contain {needle:?}"))
        }
        _ => Ok(()),
    }
}

/// `grpc.health.v1.Health/Check` over HTTP/2: the answer must be grpc-status 0 with
/// status SERVING (1). The two protobuf messages are one string and one enum field, so
/// they are encoded and read here directly.
async fn check_grpc<I>(
    io: I,
    endpoint: &EndpointPool,
    protocol: UpstreamProtocol,
    service: &str,
) -> Result<(), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // HealthCheckRequest { string service = 1; } in a gRPC length-prefixed frame.
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        let mut len = service.len();
        while len >= 0x80 {
            msg.push((len as u8) | 0x80);
            len >>= 7;
        }
        msg.push(len as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let scheme = if protocol == UpstreamProtocol::H2 {
        "https"
    } else {
        "http"
    };
    let authority = endpoint_authority(endpoint);
    let req = Request::post(format!(
        "{scheme}://{authority}/grpc.health.v1.Health/Check"
    ))
    .header(http::header::CONTENT_TYPE, "application/grpc")
    .header(http::header::TE, "trailers")
    .header(http::header::USER_AGENT, "pylon-health-check")
    .body(RequestBody::Full(Some(bytes::Bytes::from(frame))))
    .map_err(|e| e.to_string())?;
    let (mut tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("HTTP status {}", resp.status().as_u16()));
    }
    let header_status = resp.headers().get("grpc-status").cloned();
    let collected = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(header_status);
    match grpc_status.as_ref().and_then(|v| v.to_str().ok()) {
        Some("0") => {}
        Some(s) => return Err(format!("grpc-status {s}")),
        None => return Err("no grpc-status".into()),
    }
    let body = collected.to_bytes();
    // HealthCheckResponse { ServingStatus status = 1; } SERVING = 1.
    let msg = body.get(5..).unwrap_or_default();
    // Field 1, varint (tag 0x08); proto3 leaves out the default (0, UNKNOWN).
    let status = match msg {
        [0x08, v, ..] => *v,
        _ => 0,
    };
    if status == 1 {
        Ok(())
    } else {
        Err(format!("serving status {status} (1 is SERVING)"))
    }
}
