//! The reverse-proxy core end to end: routing, balancing, pools, proxy headers,
//! streaming and trailers, with hyper and curl clients over real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use pylon_testkit::*;

fn quickstart_on(addrs: &[std::net::SocketAddr]) -> String {
    pylon_config::QUICKSTART
        .replace("127.0.0.1:8080", &addrs[0].to_string())
        .replace("127.0.0.1:8081", &addrs[1].to_string())
        .replace("127.0.0.1:8082", &addrs[2].to_string())
        .replace("path = \"stdout\"", "enabled = false")
}

fn count_backends(bodies: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for b in bodies {
        *m.entry(b.trim().to_string()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_splits_evenly_over_http1_and_h2c_with_curl() {
    let (addrs, prebound) = prebind(3);
    let p = TestProxy::start_prebound(&quickstart_on(&addrs), prebound).await;
    let url = format!("http://{}/", p.addr("front"));
    for mode in ["--http1.1", "--http2-prior-knowledge"] {
        let mut bodies = Vec::new();
        for _ in 0..100 {
            let out = curl(&[mode, "-w", "|%{http_version}", &url]).await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let s = String::from_utf8(out.stdout).unwrap();
            let (body, version) = s.rsplit_once('|').unwrap();
            assert_eq!(version, if mode == "--http1.1" { "1.1" } else { "2" });
            bodies.push(body.to_string());
        }
        let counts = count_backends(&bodies);
        assert_eq!(
            counts.get("hello from backend-a"),
            Some(&50),
            "{mode}: {counts:?}"
        );
        assert_eq!(
            counts.get("hello from backend-b"),
            Some(&50),
            "{mode}: {counts:?}"
        );
    }
    // The redirect route.
    let out = curl(&["-i", &format!("http://{}/old/page", p.addr("front"))]).await;
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.starts_with("HTTP/1.1 301"), "{s}");
    assert!(
        s.contains(&format!("Location: http://{}/new", p.addr("front"))),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_follow_rfc9110() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "forwarded = true", "")).await;
    let req = Request::get("/path?q=1")
        .header("host", "Example.com:8080")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-request-id", "client-chosen-id")
        .body(empty())
        .unwrap();
    let a = send_h1(p.addr("front"), req).await;
    assert_eq!(a.status, StatusCode::OK);
    let j = a.json();
    let h = &j["headers"];
    assert_eq!(j["uri"], "/path?q=1");
    assert_eq!(
        h["host"][0], "Example.com:8080",
        "Host is preserved by default"
    );
    assert!(
        h.get("x-secret").is_none(),
        "header named in Connection must go: {h}"
    );
    assert!(h.get("keep-alive").is_none());
    assert!(h.get("proxy-authorization").is_none());
    assert_eq!(h["te"][0], "trailers");
    assert_eq!(h["x-forwarded-for"][0], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "Example.com:8080");
    assert_eq!(
        h["forwarded"][0],
        "for=127.0.0.1;proto=http;host=\"Example.com:8080\""
    );
    assert_eq!(h["via"][0], "1.1 pylon");
    assert_eq!(h["x-request-id"][0], "client-chosen-id");
    // Response side: hop-by-hop from the origin removed, Via and request id added.
    assert!(a.header("x-hop").is_none(), "{:?}", a.headers);
    assert!(a.header("keep-alive").is_none());
    assert_eq!(a.header("via"), Some("1.1 pylon"));
    assert_eq!(a.header("x-request-id"), Some("client-chosen-id"));

    // A generated request id reaches the origin and comes back.
    let a = get(p.addr("front"), "/").await;
    let id = a.header("x-request-id").unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(a.json()["headers"]["x-request-id"][0], id.as_str());
    let b = get(p.addr("front"), "/").await;
    assert_ne!(b.header("x-request-id").unwrap(), id, "ids are unique");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_can_be_turned_off() {
    let origin = Origin::echo().await;
    let cfg = simple_config(
        &[origin.addr],
        "x_forwarded = false\nvia = false\nrequest_id = false",
        "",
    );
    let p = TestProxy::start(&cfg).await;
    let a = get(p.addr("front"), "/").await;
    let h = &a.json()["headers"];
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "via",
        "x-request-id",
        "forwarded",
    ] {
        assert!(h.get(name).is_none(), "{name} present: {h}");
    }
    assert!(a.header("x-request-id").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_options_and_prefix_rewrite() {
    let origin = Origin::echo().await;
    let cfg = format!(
        r#"
access_log = {{ enabled = false }}
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/api/"
cluster = "preserve"
prefix_rewrite = "/v2/"

[[routes]]
path_prefix = "/rewrite"
cluster = "preserve"
host_rewrite = "internal.example"

[[routes]]
path_prefix = "/"
cluster = "endpoint"

[[clusters]]
name = "preserve"
endpoints = ["{0}"]

[[clusters]]
name = "endpoint"
endpoints = ["{0}"]
host_header = "endpoint"
"#,
        origin.addr
    );
    let p = TestProxy::start(&cfg).await;
    let a = get(p.addr("front"), "/api/users/7?x=y").await.json();
    assert_eq!(a["uri"], "/v2/users/7?x=y");
    assert_eq!(a["headers"]["host"][0], "test.local");
    let a = get(p.addr("front"), "/rewrite/me").await.json();
    assert_eq!(a["headers"]["host"][0], "internal.example");
    assert_eq!(a["headers"]["x-forwarded-host"][0], "test.local");
    let a = get(p.addr("front"), "/other").await.json();
    assert_eq!(a["headers"]["host"][0], origin.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_host_path_method_and_headers_in_order() {
    let cfg = r#"
access_log = { enabled = false }
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
host = "api.example.com"
path = "/exact"
respond = { body = "exact" }

[[routes]]
host = "*.example.com"
methods = ["POST"]
respond = { status = 201, body = "wild-post" }

[[routes]]
headers = [{ name = "x-canary", value = "1" }]
respond = { body = "canary" }

[[routes]]
path_regex = "^/v[0-9]+/"
respond = { body = "versioned", headers = { "x-kind" = "regex" } }
"#;
    let p = TestProxy::start(cfg).await;
    let addr = p.addr("front");
    let send = |method: &'static str, host: &'static str, path: &'static str, canary: bool| async move {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        if canary {
            b = b.header("x-canary", "1");
        }
        send_h1(addr, b.body(empty()).unwrap()).await
    };
    assert_eq!(
        send("GET", "API.example.com:80", "/exact", false)
            .await
            .text(),
        "exact"
    );
    let a = send("POST", "a.b.example.com", "/exact", false).await;
    assert_eq!((a.status.as_u16(), a.text()), (201, "wild-post".into()));
    assert_eq!(send("GET", "other", "/", true).await.text(), "canary");
    let a = send("GET", "other", "/v3/x", false).await;
    assert_eq!(a.text(), "versioned");
    assert_eq!(a.header("x-kind"), Some("regex"));
    // Nothing matches: 404 with the reason.
    let a = send("GET", "example.com", "/exact", false).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.header("x-pylon-error"), Some("no_route"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upstream_connections_are_reused() {
    let origin = Origin::named("o").await;
    let p = TestProxy::start(&simple_config(
        &[origin.addr],
        "",
        "pool = { max_idle_per_endpoint = 4 }",
    ))
    .await;
    let mut client = h1_conn(p.addr("front")).await;
    for _ in 0..20 {
        client.ready().await.unwrap();
        let req = Request::get("/").header("host", "x").body(empty()).unwrap();
        let a = collect(client.send_request(req).await.unwrap()).await;
        assert_eq!(a.text(), "o");
    }
    assert_eq!(origin.request_count(), 20);
    assert_eq!(
        origin.connection_count(),
        1,
        "sequential requests share one upstream connection"
    );
    eventually("connection back in the pool", || {
        p.proxy.idle_upstream_connections("c") == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_multiplexes_many_requests_on_one_connection() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "protocol = \"h2c\"")).await;
    let addr = p.addr("front");
    // Warm the connection, then fire 50 concurrent requests from h2c clients.
    assert_eq!(get(addr, "/").await.json()["version"], "HTTP/2.0");
    let client = h2_conn(addr).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get(format!("http://test.local/r/{i}"))
                .body(empty())
                .unwrap();
            collect(c.send_request(req).await.unwrap()).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let a = t.await.unwrap();
        assert_eq!(a.status, StatusCode::OK);
        let j = a.json();
        assert_eq!(j["uri"], format!("http://test.local/r/{i}"));
        assert_eq!(j["version"], "HTTP/2.0");
    }
    assert_eq!(
        origin.connection_count(),
        1,
        "one multiplexed upstream connection"
    );
    assert_eq!(origin.request_count(), 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_trailers_stream_through_h2c() {
    let origin = Origin::start(|req: Request<hyper::body::Incoming>| async move {
        // Echo the body frame by frame, and answer with trailers of our own.
        let collected = req.into_body().collect().await.unwrap();
        let got_trailer = collected
            .trailers()
            .and_then(|t| t.get("x-client-trailer"))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let data = collected.to_bytes();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("x-saw", got_trailer.parse().unwrap());
        let frames = vec![
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(data)),
            Ok(hyper::body::Frame::trailers(trailers)),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        http::Response::new(BodyExt::boxed(body))
    })
    .await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "protocol = \"h2c\"")).await;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-client-trailer", "yes".parse().unwrap());
    let frames = vec![
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(
            Bytes::from_static(b"hello "),
        )),
        Ok(hyper::body::Frame::data(Bytes::from_static(b"trailers"))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let body = BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )));
    let req = Request::post("http://test.local/t")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let mut c = h2_conn(p.addr("front")).await;
    let resp = c.send_request(req).await.unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    let t = collected
        .trailers()
        .cloned()
        .expect("trailers reach the client");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"hello trailers"));
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["x-saw"], "yes", "request trailers reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_with_curl() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let data = "x".repeat(4096);
    let url = format!("http://{}/upload", p.addr("front"));
    let out = curl(&[
        "-v",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &data,
        &url,
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HTTP/1.1 100 Continue"), "{stderr}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["body_len"], 4096);
    assert!(
        j["headers"].get("expect").is_none(),
        "Expect is handled by Pylon, not forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_expire() {
    let origin = Origin::named("o").await;
    let cfg = simple_config(&[origin.addr], "", "pool = { idle_timeout = \"200ms\" }");
    let p = TestProxy::start(&cfg).await;
    assert_eq!(get(p.addr("front"), "/").await.text(), "o");
    eventually("connection pooled", || {
        p.proxy.idle_upstream_connections("c") == 1
    })
    .await;
    eventually("idle connection closed after the idle timeout", || {
        p.proxy.idle_upstream_connections("c") == 0
    })
    .await;
    assert_eq!(get(p.addr("front"), "/").await.text(), "o");
    assert_eq!(
        origin.connection_count(),
        2,
        "a fresh connection after expiry"
    );
}

fn lb_config(endpoints: &[std::net::SocketAddr], lb: &str) -> String {
    simple_config(endpoints, "", lb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_balancing_keeps_keys_on_their_endpoint() {
    let origins = [
        Origin::named("a").await,
        Origin::named("b").await,
        Origin::named("c").await,
    ];
    let addrs: Vec<_> = origins.iter().map(|o| o.addr).collect();
    for lb in [
        "lb = \"ring_hash\"\nhash_key = \"header:x-user\"",
        "lb = \"maglev\"\nhash_key = \"header:x-user\"",
    ] {
        let p = TestProxy::start(&lb_config(&addrs, lb)).await;
        let mut seen = std::collections::HashSet::new();
        for user in 0..30 {
            let ask = || {
                Request::get("/")
                    .header("host", "x")
                    .header("x-user", format!("user-{user}"))
                    .body(empty())
                    .unwrap()
            };
            let first = send_h1(p.addr("front"), ask()).await.text();
            for _ in 0..3 {
                assert_eq!(
                    send_h1(p.addr("front"), ask()).await.text(),
                    first,
                    "{lb}: user-{user} moved"
                );
            }
            seen.insert(first);
        }
        assert_eq!(seen.len(), 3, "{lb}: 30 keys spread over all endpoints");
    }
    // Keyed by client IP: every request from 127.0.0.1 lands on one endpoint.
    let p = TestProxy::start(&lb_config(&addrs, "lb = \"maglev\"")).await;
    let first = get(p.addr("front"), "/").await.text();
    for _ in 0..10 {
        assert_eq!(get(p.addr("front"), "/").await.text(), first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_new_requests_to_the_idle_endpoint() {
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let hold = |name: &'static str| {
        let r = std::sync::Arc::clone(&release);
        Origin::start(move |_req| {
            let r = std::sync::Arc::clone(&r);
            async move {
                r.notified().await;
                http::Response::new(full(name))
            }
        })
    };
    let (a, b) = (hold("a").await, hold("b").await);
    let p = TestProxy::start(&lb_config(&[a.addr, b.addr], "lb = \"least_connections\"")).await;
    let addr = p.addr("front");
    let first = tokio::spawn(async move { get(addr, "/").await });
    eventually("first request at an origin", || {
        a.request_count() + b.request_count() == 1
    })
    .await;
    let second = tokio::spawn(async move { get(addr, "/").await });
    eventually("second request at an origin", || {
        a.request_count() + b.request_count() == 2
    })
    .await;
    assert_eq!(
        (a.request_count(), b.request_count()),
        (1, 1),
        "the busy endpoint was avoided"
    );
    release.notify_waiters();
    while !(first.is_finished() && second.is_finished()) {
        release.notify_waiters();
        tokio::task::yield_now().await;
    }
    let (x, y) = (first.await.unwrap().text(), second.await.unwrap().text());
    assert_ne!(x, y);
}
