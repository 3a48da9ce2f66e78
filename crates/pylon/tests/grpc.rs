//! gRPC through Pylon, with gRPC framing over h2c (an hyper client and origin speaking
//! the gRPC wire format): routes that match gRPC only, messages and trailers (status,
//! custom metadata) passed through, streaming, proxy-made errors as gRPC statuses,
//! `grpc-timeout` deadlines, and calls on one client connection balanced one by one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body_util::BodyExt;
use hyper::body::Frame;
use pylon_testkit::*;

/// One length-prefixed gRPC message.
fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

fn unframe(mut b: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while b.remaining() >= 5 {
        b.advance(1);
        let n = b.get_u32() as usize;
        out.push(b.split_to(n));
    }
    out
}

/// An origin implementing `/test.Echo/Say` (unary echo, with metadata) and
/// `/test.Echo/Count` (server streaming: N messages), `/test.Echo/Slow` (answers
/// after two seconds).
async fn grpc_origin() -> Origin {
    Origin::start(|req: Request<hyper::body::Incoming>| async move {
        let path = req.uri().path().to_owned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let msgs = unframe(body);
        let mut out = Vec::new();
        match path.as_str() {
            "/test.Echo/Say" => out.push(frame(&msgs[0])),
            "/test.Echo/Count" => {
                let n: usize = String::from_utf8_lossy(&msgs[0]).parse().unwrap();
                for i in 0..n {
                    out.push(frame(i.to_string().as_bytes()));
                }
            }
            "/test.Echo/Slow" => tokio::time::sleep(Duration::from_secs(2)).await,
            _ => {}
        }
        let mut trailers = HeaderMap::new();
        let status = if path == "/test.Echo/Fail" { "5" } else { "0" };
        trailers.insert("grpc-status", status.parse().unwrap());
        trailers.insert("x-trailer-meta", "from-the-trailers".parse().unwrap());
        let frames = out
            .into_iter()
            .map(|b| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b)))
            .chain(std::iter::once(Ok(Frame::trailers(trailers))));
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        http::Response::builder()
            .header("content-type", "application/grpc")
            .header("x-header-meta", "from-the-headers")
            .body(BodyExt::boxed(body))
            .unwrap()
    })
    .await
}

fn config(endpoint: SocketAddr, extra_route: &str) -> String {
    format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/test.Echo/"
grpc = true
cluster = "grpc"
{extra_route}

[[routes]]
path_prefix = "/plain"
respond = {{ body = "not grpc" }}

[[clusters]]
name = "grpc"
protocol = "h2c"
endpoints = ["{endpoint}"]
"#
    )
}

/// A gRPC call over h2c: the status, the response headers, the messages and trailers.
struct Call {
    headers: HeaderMap,
    messages: Vec<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Call {
    /// `grpc-status`, from the trailers or (trailers-only) the headers.
    fn status(&self) -> Option<u8> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok()?.parse().ok())
    }
}

async fn call(addr: SocketAddr, method: &str, msg: &[u8], timeout: Option<&str>) -> Call {
    let mut tx = h2_conn(addr).await;
    call_on(&mut tx, method, msg, timeout).await
}

/// A gRPC call on an HTTP/2 connection the caller keeps.
async fn call_on(
    tx: &mut hyper::client::conn::http2::SendRequest<ClientBody>,
    method: &str,
    msg: &[u8],
    timeout: Option<&str>,
) -> Call {
    let mut req = Request::post(format!("http://grpc.test{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = timeout {
        req = req.header("grpc-timeout", t);
    }
    let resp = tx
        .send_request(req.body(body(frame(msg))).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "gRPC answers are HTTP 200");
    let (parts, mut b) = resp.into_parts();
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(f) = tokio::time::timeout(DEADLINE, b.frame()).await.unwrap() {
        let f = f.unwrap();
        if let Some(d) = f.data_ref() {
            data.extend_from_slice(d);
        } else if let Ok(t) = f.into_trailers() {
            trailers = Some(t);
        }
    }
    Call {
        headers: parts.headers,
        messages: unframe(data.freeze()),
        trailers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_keep_messages_metadata_and_trailers() {
    let origin = grpc_origin().await;
    let p = TestProxy::start(&config(origin.addr, "")).await;
    let front = p.addr("front");
    let c = call(front, "/test.Echo/Say", b"hello grpc", None).await;
    assert_eq!(c.messages, vec![Bytes::from_static(b"hello grpc")]);
    assert_eq!(c.status(), Some(0));
    assert_eq!(c.headers["x-header-meta"], "from-the-headers");
    assert_eq!(
        c.trailers.as_ref().unwrap()["x-trailer-meta"],
        "from-the-trailers"
    );
    // Server streaming: 10,000 messages, in order.
    let c = call(front, "/test.Echo/Count", b"10000", None).await;
    assert_eq!(c.messages.len(), 10_000);
    assert_eq!(c.messages[9_999], Bytes::from_static(b"9999"));
    assert_eq!(c.status(), Some(0));
    // A 4 MiB message both ways.
    let big = vec![b'x'; 4 << 20];
    let c = call(front, "/test.Echo/Say", &big, None).await;
    assert_eq!(c.messages[0].len(), 4 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_routes_take_only_grpc_requests() {
    let origin = grpc_origin().await;
    let p = TestProxy::start(&config(origin.addr, "")).await;
    // Not gRPC: the gRPC route does not match, nothing else does.
    let a = get(p.addr("front"), "/test.Echo/Say").await;
    assert_eq!(a.status.as_u16(), 404);
    assert_eq!(origin.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_made_errors_are_grpc_statuses() {
    // No endpoint answers: UNAVAILABLE, trailers-only, never a text page.
    let p = TestProxy::start(&config(closed_port(), "")).await;
    let c = call(p.addr("front"), "/test.Echo/Say", b"x", None).await;
    assert_eq!(c.status(), Some(14), "{:?}", c.headers);
    assert_eq!(c.headers["content-type"], "application/grpc");
    assert!(c.messages.is_empty());
    assert_eq!(c.headers["x-pylon-error"], "upstream_connect_failed");
    // No route: UNIMPLEMENTED.
    let c = call(p.addr("front"), "/other.Service/Method", b"x", None).await;
    assert_eq!(c.status(), Some(12));
    // The circuit breaker: RESOURCE_EXHAUSTED.
    let origin = grpc_origin().await;
    let cfg = config(origin.addr, "").replace(
        "protocol = \"h2c\"",
        "protocol = \"h2c\"\ncircuit_breaker = { max_requests = 0 }",
    );
    let p = TestProxy::start(&cfg).await;
    let c = call(p.addr("front"), "/test.Echo/Say", b"x", None).await;
    assert_eq!(c.status(), Some(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_bounds_the_call_with_deadline_exceeded() {
    let origin = grpc_origin().await;
    let p = TestProxy::start(&config(origin.addr, "")).await;
    let c = call(p.addr("front"), "/test.Echo/Slow", b"x", Some("200m")).await;
    assert_eq!(c.status(), Some(4), "{:?}", c.headers);
    assert_eq!(c.headers["x-pylon-error"], "deadline_exceeded");
    // Without a deadline the same call completes.
    let c = call(p.addr("front"), "/test.Echo/Slow", b"x", None).await;
    assert_eq!(c.status(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cancel_reaches_the_upstream() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let cancelled = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&cancelled);
    // Never answers; counts the calls whose stream went away.
    let origin = Origin::start(move |_req: Request<hyper::body::Incoming>| {
        let guard = Dropped(Arc::clone(&c));
        async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(guard);
            http::Response::new(full(""))
        }
    })
    .await;
    let p = TestProxy::start(&config(origin.addr, "")).await;
    let mut tx = h2_conn(p.addr("front")).await;
    let req = Request::post("http://grpc.test/test.Echo/Hang")
        .header("content-type", "application/grpc")
        .body(body(frame(b"x")))
        .unwrap();
    let pending = tokio::spawn(async move { tx.send_request(req).await });
    eventually("the call reached the origin", || {
        origin.request_count() == 1
    })
    .await;
    pending.abort();
    eventually("the cancel reset the upstream stream", || {
        cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
}

/// An origin answering `grpc.health.v1.Health/Check` with the status in `status`
/// (1 SERVING, 2 NOT_SERVING), for the service asked about.
async fn health_origin(status: std::sync::Arc<std::sync::atomic::AtomicU8>) -> Origin {
    Origin::start(move |req: Request<hyper::body::Incoming>| {
        let status = std::sync::Arc::clone(&status);
        async move {
            assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
            let asked = unframe(req.into_body().collect().await.unwrap().to_bytes());
            // HealthCheckRequest { service = "test.Echo" }.
            assert_eq!(asked[0].as_ref(), b"\x0a\x09test.Echo");
            let msg = [0x08, status.load(std::sync::atomic::Ordering::SeqCst)];
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = vec![
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(frame(&msg))),
                Ok(Frame::trailers(trailers)),
            ];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            http::Response::builder()
                .header("content-type", "application/grpc")
                .body(BodyExt::boxed(body))
                .unwrap()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_follow_the_serving_status() {
    use std::sync::atomic::{AtomicU8, Ordering};
    let status = std::sync::Arc::new(AtomicU8::new(1));
    let origin = health_origin(std::sync::Arc::clone(&status)).await;
    let cfg = config(origin.addr, "").replace(
        "protocol = \"h2c\"",
        "protocol = \"h2c\"\nhealth_check = { kind = \"grpc\", service = \"test.Echo\", interval = \"50ms\", healthy_threshold = 1, unhealthy_threshold = 1 }",
    );
    let p = TestProxy::start(&cfg).await;
    eventually("checked and healthy", || {
        origin.request_count() >= 1 && p.proxy.endpoint_available("grpc", origin.addr) == Some(true)
    })
    .await;
    status.store(2, Ordering::SeqCst);
    eventually("NOT_SERVING takes it out", || {
        p.proxy.endpoint_available("grpc", origin.addr) == Some(false)
    })
    .await;
    status.store(1, Ordering::SeqCst);
    eventually("SERVING brings it back", || {
        p.proxy.endpoint_available("grpc", origin.addr) == Some(true)
    })
    .await;
}

/// A gRPC-Web call over HTTP/1.1 or HTTP/2: the answer's headers, messages and the
/// trailers from the body's trailer frame.
async fn grpc_web_call(
    addr: SocketAddr,
    method: &str,
    msg: &[u8],
    text: bool,
    h2: bool,
) -> (HeaderMap, Vec<Bytes>, String) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let ct = if text {
        "application/grpc-web-text+proto"
    } else {
        "application/grpc-web+proto"
    };
    let payload = if text {
        Bytes::from(b64.encode(frame(msg)))
    } else {
        frame(msg)
    };
    let req = Request::post(format!("http://grpc.test{method}"))
        .header("host", "grpc.test")
        .header("content-type", ct)
        .header("x-grpc-web", "1")
        .header("origin", "https://app.example")
        .body(body(payload))
        .unwrap();
    let a = if h2 {
        send_h2(addr, req).await
    } else {
        send_h1(addr, req).await
    };
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("content-type"), Some(ct));
    let raw = if text {
        Bytes::from(b64.decode(&a.body).expect("base64 answer"))
    } else {
        a.body.clone()
    };
    let mut rest = raw;
    let mut messages = Vec::new();
    let mut trailers = String::new();
    while rest.remaining() >= 5 {
        let flag = rest.get_u8();
        let n = rest.get_u32() as usize;
        let chunk = rest.split_to(n);
        if flag & 0x80 != 0 {
            trailers = String::from_utf8(chunk.to_vec()).unwrap();
        } else {
            messages.push(chunk);
        }
    }
    (a.headers, messages, trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_binary_and_text_reach_a_native_grpc_origin() {
    let origin = grpc_origin().await;
    let p = TestProxy::start(&config(
        origin.addr,
        "grpc_web = true\ncors_allow_origins = [\"https://app.example\"]",
    ))
    .await;
    let front = p.addr("front");
    for (text, h2) in [(false, false), (true, false), (false, true), (true, true)] {
        let (headers, messages, trailers) =
            grpc_web_call(front, "/test.Echo/Say", b"from a browser", text, h2).await;
        assert_eq!(
            messages,
            vec![Bytes::from_static(b"from a browser")],
            "text={text} h2={h2}"
        );
        assert!(trailers.contains("grpc-status:0\r\n"), "{trailers:?}");
        assert!(
            trailers.contains("x-trailer-meta:from-the-trailers\r\n"),
            "{trailers:?}"
        );
        assert_eq!(
            headers["access-control-allow-origin"],
            "https://app.example"
        );
        assert!(
            headers["access-control-expose-headers"]
                .to_str()
                .unwrap()
                .contains("grpc-status")
        );
    }
    // Streaming through the text encoding: 1,000 messages survive the base64 chunking.
    let (_, messages, trailers) =
        grpc_web_call(front, "/test.Echo/Count", b"1000", true, false).await;
    assert_eq!(messages.len(), 1000);
    assert_eq!(messages[999], Bytes::from_static(b"999"));
    assert!(trailers.contains("grpc-status:0"));

    // The CORS preflight: allowed origin 204, other origins 403.
    let preflight = |origin: &'static str| {
        Request::builder()
            .method("OPTIONS")
            .uri("/test.Echo/Say")
            .header("host", "grpc.test")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-grpc-web")
            .body(empty())
            .unwrap()
    };
    let a = send_h1(front, preflight("https://app.example")).await;
    assert_eq!(a.status.as_u16(), 204, "{a:?}");
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        a.header("access-control-allow-headers"),
        Some("content-type,x-grpc-web")
    );
    let a = send_h1(front, preflight("https://evil.example")).await;
    assert_eq!(a.status.as_u16(), 403);
    assert_eq!(a.header("x-pylon-error"), Some("cors_origin_denied"));
    assert!(a.header("access-control-allow-origin").is_none());
    assert_eq!(
        p.proxy
            .metrics()
            .errors(pylon_proxy::http::error::ErrorKind::CorsOriginDenied),
        1,
        "a refused preflight is a counted proxy-made answer"
    );
    assert_eq!(
        origin.request_count(),
        5,
        "preflights never reach the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_clients_get_proxy_errors_as_grpc_statuses() {
    let p = TestProxy::start(&config(
        closed_port(),
        "grpc_web = true\ncors_allow_origins = [\"https://app.example\"]",
    ))
    .await;
    // A browser page on an allowed origin reads the status: the error carries the
    // same CORS headers as an upstream's answer. Another origin gets none.
    for (origin, allowed) in [
        ("https://app.example", true),
        ("https://evil.example", false),
    ] {
        for h2 in [false, true] {
            let req = Request::post("http://grpc.test/test.Echo/Say")
                .header("host", "grpc.test")
                .header("content-type", "application/grpc-web+proto")
                .header("x-grpc-web", "1")
                .header("origin", origin)
                .body(body(frame(b"x")))
                .unwrap();
            let a = if h2 {
                send_h2(p.addr("front"), req).await
            } else {
                send_h1(p.addr("front"), req).await
            };
            let case = format!("origin {origin}, h2 {h2}: {a:?}");
            assert_eq!(a.status, 200, "{case}");
            assert_eq!(a.header("grpc-status"), Some("14"), "{case}");
            assert_eq!(
                a.header("grpc-message"),
                Some("upstream_connect_failed"),
                "{case}"
            );
            assert_eq!(
                a.header("content-type"),
                Some("application/grpc-web+proto"),
                "{case}"
            );
            if allowed {
                assert_eq!(
                    a.header("access-control-allow-origin"),
                    Some(origin),
                    "{case}"
                );
                let exposed = a.header("access-control-expose-headers").unwrap_or("");
                assert!(
                    exposed.contains("grpc-status") && exposed.contains("grpc-message"),
                    "{case}"
                );
            } else {
                assert_eq!(a.header("access-control-allow-origin"), None, "{case}");
                assert_eq!(a.header("access-control-expose-headers"), None, "{case}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_also_ends_a_stream_in_progress() {
    // A server stream that never ends: one message every 20 ms.
    let origin = Origin::start(|_req: Request<hyper::body::Incoming>| async move {
        let frames = futures_util::stream::unfold(0u64, |i| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(frame(
                    i.to_string().as_bytes(),
                ))),
                i + 1,
            ))
        });
        http::Response::builder()
            .header("content-type", "application/grpc")
            .body(BodyExt::boxed(http_body_util::StreamBody::new(frames)))
            .unwrap()
    })
    .await;
    let p = TestProxy::start(&config(
        origin.addr,
        "grpc_web = true\ncors_allow_origins = [\"https://app.example\"]",
    ))
    .await;
    let c = call(p.addr("front"), "/test.Echo/Forever", b"x", Some("300m")).await;
    assert!(
        !c.messages.is_empty(),
        "messages flowed before the deadline"
    );
    assert_eq!(c.status(), Some(4), "{:?}", c.trailers);
    // Ended by Pylon, so counted (and logged) as its deadline, not as a clean end.
    let m = p.proxy.metrics();
    eventually("the native call is counted as deadline_exceeded", || {
        m.errors(pylon_proxy::http::error::ErrorKind::DeadlineExceeded) == 1
    })
    .await;

    // gRPC-Web gets the same: the deadline ends the stream with DEADLINE_EXCEEDED in
    // its trailer frame, and the answer carries what every proxied answer carries.
    let req = Request::post("http://grpc.test/test.Echo/Forever")
        .header("host", "grpc.test")
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("grpc-timeout", "300m")
        .header("origin", "https://app.example")
        .body(body(frame(b"x")))
        .unwrap();
    let a = send_h1(p.addr("front"), req).await;
    assert_eq!(a.status, 200, "{a:?}");
    // The upstream answered over HTTP/2 (RFC 9110 §7.6.3: the received protocol).
    assert_eq!(a.header("via"), Some("2 pylon"), "{a:?}");
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let mut rest = a.body.clone();
    let (mut messages, mut trailers) = (0, String::new());
    while rest.remaining() >= 5 {
        let flag = rest.get_u8();
        let n = rest.get_u32() as usize;
        let chunk = rest.split_to(n);
        if flag & 0x80 != 0 {
            trailers = String::from_utf8(chunk.to_vec()).unwrap();
        } else {
            messages += 1;
        }
    }
    assert!(messages > 0, "messages flowed before the deadline");
    assert!(
        trailers.contains("grpc-status:4") && trailers.contains("deadline_exceeded"),
        "{trailers:?}"
    );
    eventually("the gRPC-Web call is counted as deadline_exceeded", || {
        m.errors(pylon_proxy::http::error::ErrorKind::DeadlineExceeded) == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_goaway_drains_its_connection_while_new_calls_use_a_fresh_one() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;
    // An h2c origin whose connections can be told to shut down gracefully (GOAWAY);
    // "/test.Echo/Slow" is held until released, anything else answers at once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let goaway = Arc::new(Notify::new());
    let (release, released) = tokio::sync::watch::channel(false);
    let connections = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let slow_started = Arc::new(AtomicUsize::new(0));
    let (g, c, cl, st) = (
        Arc::clone(&goaway),
        Arc::clone(&connections),
        Arc::clone(&closed),
        Arc::clone(&slow_started),
    );
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let (g, cl, st) = (Arc::clone(&g), Arc::clone(&cl), Arc::clone(&st));
            let released = released.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let st = Arc::clone(&st);
                    let mut released = released.clone();
                    async move {
                        if req.uri().path() == "/test.Echo/Slow" {
                            st.fetch_add(1, Ordering::SeqCst);
                            let _ = released.wait_for(|r| *r).await;
                        }
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let frames = vec![
                            Ok::<_, std::convert::Infallible>(Frame::data(frame(b"ok"))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(http_body_util::StreamBody::new(futures_util::stream::iter(
                                    frames,
                                )))
                                .unwrap(),
                        )
                    }
                });
                let conn =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = g.notified() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
                cl.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let p = TestProxy::start(&config(addr, "")).await;
    let front = p.addr("front");
    assert_eq!(
        call(front, "/test.Echo/Say", b"x", None).await.status(),
        Some(0)
    );
    // A slow call in flight, then the origin says GOAWAY on that connection.
    let slow = tokio::spawn(async move { call(front, "/test.Echo/Slow", b"x", None).await });
    eventually("the slow call reached the origin", || {
        slow_started.load(Ordering::SeqCst) == 1
    })
    .await;
    goaway.notify_waiters();
    // Pylon took the GOAWAY while the call is still held at the origin: new calls go
    // to a fresh connection, and the old one stays open for the call in flight.
    eventually_async("a new call goes to a fresh connection", || async {
        call(front, "/test.Echo/Say", b"x", None).await.status() == Some(0)
            && connections.load(Ordering::SeqCst) == 2
    })
    .await;
    assert!(!slow.is_finished(), "the slow call is still held");
    assert_eq!(
        closed.load(Ordering::SeqCst),
        0,
        "the drained connection stays open for its call"
    );
    // Released, the call in flight finishes on the drained connection, which then
    // closes.
    release.send_replace(true);
    let c = tokio::time::timeout(DEADLINE, slow)
        .await
        .expect("the call in flight finishes")
        .unwrap();
    assert_eq!(c.status(), Some(0), "{:?}", c.trailers);
    assert_eq!(c.messages, vec![Bytes::from_static(b"ok")]);
    eventually("the drained connection closes", || {
        closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_one_client_connection_spread_across_endpoints() {
    // The classic failure of connection-level balancing for gRPC: one client connection
    // carries every call. Pylon balances each call.
    let a = grpc_origin().await;
    let b = grpc_origin().await;
    let cfg = config(a.addr, "").replace(
        &format!("endpoints = [\"{}\"]", a.addr),
        &format!("endpoints = [\"{}\", \"{}\"]", a.addr, b.addr),
    );
    let p = TestProxy::start(&cfg).await;
    let mut tx = h2_conn(p.addr("front")).await;
    for _ in 0..20 {
        let c = call_on(&mut tx, "/test.Echo/Say", b"x", None).await;
        assert_eq!(c.status(), Some(0));
    }
    assert_eq!(a.request_count() + b.request_count(), 20);
    assert_eq!(a.request_count(), 10, "round robin, call by call");
    assert_eq!(b.request_count(), 10, "round robin, call by call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_says_each_calls_grpc_status() {
    let origin = grpc_origin().await;
    let log = temp_dir().join("grpc-access.log");
    let cfg = config(origin.addr, "").replace(
        "[access_log]\nenabled = false",
        &format!("[access_log]\npath = \"{}\"", log.display()),
    );
    let p = TestProxy::start(&cfg).await;
    assert_eq!(
        call(p.addr("front"), "/test.Echo/Say", b"x", None)
            .await
            .status(),
        Some(0)
    );
    assert_eq!(
        call(p.addr("front"), "/test.Echo/Fail", b"x", None)
            .await
            .status(),
        Some(5)
    );
    // Trailers-only, made by Pylon: UNIMPLEMENTED in the head.
    assert_eq!(
        call(p.addr("front"), "/other.S/M", b"x", None)
            .await
            .status(),
        Some(12)
    );
    let deadline = std::time::Instant::now() + DEADLINE;
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 3 {
            break lines;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .map(|l| (l["status"].clone(), l["grpc_status"].clone()))
    };
    assert_eq!(status("/test.Echo/Say"), Some((200.into(), 0.into())));
    assert_eq!(status("/test.Echo/Fail"), Some((200.into(), 5.into())));
    assert_eq!(status("/other.S/M"), Some((200.into(), 12.into())));
}
