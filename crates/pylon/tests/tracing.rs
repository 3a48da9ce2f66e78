//! OpenTelemetry traces through two chained Pylons, seen by real OTLP receivers: the
//! official OTLP protobufs (`opentelemetry-proto`) served over gRPC with tonic for one
//! Pylon and over HTTP (`POST /v1/traces`, protobuf body) for the other. The client's
//! trace is continued, each Pylon's server span is the child of the span before it,
//! the upstream hears the client span as its parent, the sampler follows the client's
//! flag (failures kept anyway), and a collector that is down costs nothing but
//! counted spans.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use pylon_testkit::*;

/// Spans received, with the `service.name` of the resource that sent them.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

fn keep(received: &Received, req: ExportTraceServiceRequest) {
    let mut r = received.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                r.push((service.clone(), span));
            }
        }
    }
}

struct GrpcReceiver(Received);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on a free port.
async fn grpc_receiver() -> (SocketAddr, Received) {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(GrpcReceiver(Arc::clone(&received)));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    (addr, received)
}

/// An OTLP/HTTP receiver (protobuf bodies) on a free port.
async fn http_receiver() -> (Origin, Received) {
    let received = Received::default();
    let kept = Arc::clone(&received);
    let origin = Origin::start(move |req: Request<hyper::body::Incoming>| {
        let kept = Arc::clone(&kept);
        async move {
            assert_eq!(req.uri().path(), "/v1/traces");
            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
            assert_eq!(req.headers()["x-api-key"], "k-123");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            keep(&kept, ExportTraceServiceRequest::decode(body).unwrap());
            Response::builder()
                .header("content-type", "application/x-protobuf")
                .body(full(ExportTraceServiceResponse::default().encode_to_vec()))
                .unwrap()
        }
    })
    .await;
    (origin, received)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(|v| format!("{:?}", v.value))
}

fn pylon(name: &str, upstream: SocketAddr, tracing: &str) -> String {
    format!(
        r#"
access_log = {{ enabled = false }}
[admin]
bind = "127.0.0.1:0"
[tracing]
{tracing}
flush_interval = "50ms"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
[[routes]]
name = "{name}"
cluster = "next"
[[clusters]]
name = "next"
endpoints = ["{upstream}"]
"#
    )
}

/// An origin that keeps the `traceparent` each request brought.
async fn recording_origin() -> (Origin, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&seen);
    let origin = Origin::start(move |req: Request<hyper::body::Incoming>| {
        let tp = req
            .headers()
            .get("traceparent")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        kept.lock().unwrap().push(tp);
        std::future::ready(Response::new(full("origin")))
    })
    .await;
    (origin, seen)
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_link_across_two_pylons_and_both_otlp_protocols() {
    let (origin, seen) = recording_origin().await;
    let (http_addr, http_spans) = http_receiver().await;
    let (grpc_addr, grpc_spans) = grpc_receiver().await;
    let b = TestProxy::start(&pylon(
        "to-origin",
        origin.addr,
        &format!(
            r#"endpoint = "http://{}"
protocol = "http/protobuf"
service_name = "edge-b"
headers = {{ "x-api-key" = "k-123" }}"#,
            http_addr.addr
        ),
    ))
    .await;
    let a = TestProxy::start(&pylon(
        "to-b",
        b.addr("front"),
        &format!("endpoint = \"http://{grpc_addr}\"\nservice_name = \"edge-a\""),
    ))
    .await;
    let req = Request::get("/x?q=1")
        .header("host", "site.test")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("tracestate", "vendor=abc")
        .body(empty())
        .unwrap();
    assert_eq!(send_h1(a.addr("front"), req).await.text(), "origin");

    eventually("both Pylons' spans reach their collectors", || {
        grpc_spans.lock().unwrap().len() >= 2 && http_spans.lock().unwrap().len() >= 2
    })
    .await;
    let a_spans = grpc_spans.lock().unwrap().clone();
    let b_spans = http_spans.lock().unwrap().clone();
    let find = |spans: &[(String, Span)], kind: SpanKind| {
        spans
            .iter()
            .find(|(_, s)| s.kind == kind as i32)
            .unwrap_or_else(|| panic!("no {kind:?} span in {spans:#?}"))
            .clone()
    };
    let (a_service, a_server) = find(&a_spans, SpanKind::Server);
    let (_, a_client) = find(&a_spans, SpanKind::Client);
    let (b_service, b_server) = find(&b_spans, SpanKind::Server);
    let (_, b_client) = find(&b_spans, SpanKind::Client);
    assert!(a_service.contains("edge-a"), "{a_service}");
    assert!(b_service.contains("edge-b"), "{b_service}");
    for s in [&a_server, &a_client, &b_server, &b_client] {
        assert_eq!(hex(&s.trace_id), TRACE, "{s:#?}");
        assert_eq!(s.trace_state, "vendor=abc");
    }
    // The chain: client → A's server span → A's client span → B's server span → B's
    // client span → the origin.
    assert_eq!(hex(&a_server.parent_span_id), PARENT);
    assert_eq!(a_client.parent_span_id, a_server.span_id);
    assert_eq!(b_server.parent_span_id, a_client.span_id);
    assert_eq!(b_client.parent_span_id, b_server.span_id);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [format!("00-{TRACE}-{}-01", hex(&b_client.span_id))]
    );
    assert_eq!(a_server.name, "GET to-b");
    assert!(attr(&a_server, "pylon.route").unwrap().contains("to-b"));
    assert!(
        attr(&a_server, "http.response.status_code")
            .unwrap()
            .contains("200")
    );
    assert!(attr(&a_server, "url.path").unwrap().contains("/x"));
    assert!(
        attr(&b_client, "server.port")
            .unwrap()
            .contains(&origin.addr.port().to_string())
    );
    // The breakdown as events: the new upstream connection and the first byte.
    let events: Vec<&str> = a_client.events.iter().map(|e| e.name.as_str()).collect();
    for e in ["queued", "connected", "request_sent", "first_byte"] {
        assert!(events.contains(&e), "{e} missing: {events:?}");
    }
    assert!(a_server.start_time_unix_nano <= a_client.start_time_unix_nano);
    assert!(a_client.end_time_unix_nano <= a_server.end_time_unix_nano);
    // Counted once the collector's answer is in (just after it kept the spans).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = a.metrics().await;
        if metric(&m, "pylon_trace_spans_exported_total") >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_requests_are_not_exported_unless_they_fail() {
    let (origin, seen) = recording_origin().await;
    let (grpc_addr, spans) = grpc_receiver().await;
    let p = TestProxy::start(&format!(
        r#"
access_log = {{ enabled = false }}
[admin]
bind = "127.0.0.1:0"
[tracing]
endpoint = "http://{grpc_addr}"
flush_interval = "50ms"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
[[routes]]
name = "broken"
path_prefix = "/broken"
cluster = "gone"
[[routes]]
name = "app"
cluster = "next"
[[clusters]]
name = "next"
endpoints = ["{origin}"]
[[clusters]]
name = "gone"
endpoints = ["{dead}"]
"#,
        origin = origin.addr,
        dead = closed_port()
    ))
    .await;
    let front = p.addr("front");
    let send = |path: &'static str| async move {
        let req = Request::get(path)
            .header("host", "site.test")
            .header("traceparent", format!("00-{TRACE}-{PARENT}-00"))
            .body(empty())
            .unwrap();
        send_h1(front, req).await.status.as_u16()
    };
    assert_eq!(send("/ok").await, 200);
    // Not sampled: the upstream hears so.
    assert!(seen.lock().unwrap()[0].ends_with("-00"), "{seen:?}");
    assert_eq!(send("/broken").await, 502);
    eventually("the failed request's span arrives", || {
        !spans.lock().unwrap().is_empty()
    })
    .await;
    // Spans leave in order: had the good request's been exported, it would be here.
    for (_, s) in spans.lock().unwrap().iter() {
        assert!(
            attr(s, "http.response.status_code")
                .unwrap()
                .contains("502"),
            "{s:#?}"
        );
        assert_eq!(
            s.status.as_ref().unwrap().message,
            "upstream_connect_failed"
        );
        assert_eq!(hex(&s.trace_id), TRACE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_requests_nothing() {
    let origin = Origin::named("o").await;
    let p = TestProxy::start(&pylon(
        "app",
        origin.addr,
        &format!(
            "endpoint = \"http://{}\"\nexport_timeout = \"2s\"",
            closed_port()
        ),
    ))
    .await;
    for _ in 0..20 {
        assert_eq!(get(p.addr("front"), "/").await.text(), "o");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = p.metrics().await;
        if metric(
            &m,
            "pylon_trace_spans_dropped_total{reason=\"export_failed\"}",
        ) > 0
        {
            assert_eq!(metric(&m, "pylon_trace_spans_exported_total"), 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
