//! HTTP/3 end to end, with a quinn + h3 client: requests on an https listener's UDP
//! side reach the same request path as HTTP/1.1 and HTTP/2 (routes, forwarding
//! headers, proxy-made errors), bodies stream both ways with trailers, many streams
//! share one connection, the TCP side advertises HTTP/3 with Alt-Svc, a reload keeps
//! QUIC connections, and bad bodies are refused while the connection goes on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request};
use pylon_testkit::*;

/// An https listener `front` with `http3` (`h3` is its value, `true` or a table) in
/// front of `rest` (routes and clusters).
fn h3_config(ca: &TestCa, h3: &str, rest: &str) -> String {
    h3_config_with(ca, h3, "", rest)
}

/// The same, with `listener_extra` lines in the listener's table.
fn h3_config_with(ca: &TestCa, h3: &str, listener_extra: &str, rest: &str) -> String {
    let dir = temp_dir();
    let (cert, key) = ca.server(&["localhost"]).write(&dir, "leaf");
    format!(
        r#"
access_log = {{ enabled = false }}
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
protocol = "https"
http3 = {h3}
{listener_extra}
[listeners.tls]
certificates = [{{ cert = "{}", key = "{}" }}]
{rest}
"#,
        cert.display(),
        key.display()
    )
}

fn proxy_to(origin: SocketAddr, cluster_extra: &str) -> String {
    format!(
        r#"
[[routes]]
cluster = "c"
[[clusters]]
name = "c"
endpoints = ["{origin}"]
{cluster_extra}
"#
    )
}

async fn start(ca: &TestCa, h3: &str, rest: &str) -> (TestProxy, SocketAddr) {
    let proxy = TestProxy::start(&h3_config(ca, h3, rest)).await;
    let udp = proxy.proxy.h3_addr("front").expect("an HTTP/3 address");
    assert_eq!(
        udp.port(),
        proxy.addr("front").port(),
        "HTTP/3 takes the TCP listener's port"
    );
    (proxy, udp)
}

#[tokio::test]
async fn a_get_over_http3_goes_through_the_request_path_to_an_http1_origin() {
    let origin = Origin::echo().await;
    let ca = TestCa::new("h3");
    let route = proxy_to(origin.addr, "").replacen(
        "cluster = \"c\"",
        "cluster = \"c\"\nrequest_headers = { set = { x-tls = \"{tls_version}|{tls_cipher}|{tls_sni}|{tls_alpn}\" } }",
        1,
    );
    let (proxy, udp) = start(&ca, "true", &route).await;
    let client = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    let a = client.get("localhost", "/some/path?q=1").await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    let echo: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["uri"], "/some/path?q=1");
    assert_eq!(echo["version"], "HTTP/1.1", "HTTP/1.1 to the origin");
    assert_eq!(echo["body_len"], 0);
    let h = &echo["headers"];
    assert_eq!(h["host"][0], "localhost");
    assert_eq!(h["x-forwarded-proto"][0], "https");
    assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(h["via"][0], "3 pylon");
    // What the handshake said, for templates (QUIC does not tell the cipher suite).
    assert_eq!(h["x-tls"][0], "TLSv1.3||localhost|h3");
    assert!(
        h.get("transfer-encoding").is_none() && h.get("content-length").is_none(),
        "a GET whose stream ended with its head goes upstream without a body: {h}"
    );
    // The origin's hop-by-hop fields stay behind; no Alt-Svc over HTTP/3 itself.
    assert!(a.header("connection").is_none() && a.header("keep-alive").is_none());
    assert!(a.header("x-hop").is_none());
    assert!(a.header("alt-svc").is_none());
    assert!(a.header("x-request-id").is_some(), "the finaliser ran");
    let m = proxy.proxy.render_metrics();
    assert!(m.contains("pylon_quic_connections_total 1"), "{m}");
}

#[tokio::test]
async fn many_streams_share_one_connection() {
    let origin = Origin::echo().await;
    let ca = TestCa::new("h3");
    let (proxy, udp) = start(&ca, "true", &proxy_to(origin.addr, "")).await;
    let client = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    let mut set = tokio::task::JoinSet::new();
    let client = std::sync::Arc::new(client);
    for i in 0..40 {
        let c = std::sync::Arc::clone(&client);
        set.spawn(async move { (i, c.get("localhost", &format!("/n/{i}")).await.unwrap()) });
    }
    while let Some(r) = set.join_next().await {
        let (i, a) = r.unwrap();
        assert_eq!(a.status, 200);
        let echo: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(echo["uri"], format!("/n/{i}"));
    }
    let m = proxy.proxy.render_metrics();
    assert!(
        m.contains("pylon_quic_connections_total 1\n"),
        "one QUIC connection: {m}"
    );
    assert!(m.contains("pylon_responses_total{class=\"2xx\"} 40"), "{m}");
}

#[tokio::test]
async fn request_bodies_stream_up_and_trailers_pass_to_an_h2_origin() {
    let origin = Origin::echo().await;
    let ca = TestCa::new("h3");
    let (_proxy, udp) = start(&ca, "true", &proxy_to(origin.addr, "protocol = \"h2c\"")).await;
    let client = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    // 4 MiB in 64 KiB pieces: more than the stream window, so flow control turns.
    let piece = Bytes::from(vec![b'x'; 64 * 1024]);
    let pieces: Vec<Bytes> = (0..64).map(|_| piece.clone()).collect();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let req = Request::post("https://localhost/upload")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let a = client.send(req, &pieces, Some(trailers)).await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    let echo: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["body_len"], 64 * 64 * 1024);
    assert_eq!(echo["trailers"][0], "x-checksum=abc");

    // A declared length, sent in pieces, to an HTTP/1.1 origin.
    let origin1 = Origin::echo().await;
    let (_p1, udp1) = start(&ca, "true", &proxy_to(origin1.addr, "")).await;
    let client1 = H3Client::connect(&ca, udp1, "localhost").await.unwrap();
    let req = Request::put("https://localhost/put")
        .header("content-length", "300000")
        .body(())
        .unwrap();
    let body = [
        Bytes::from(vec![b'a'; 100_000]),
        Bytes::from(vec![b'b'; 200_000]),
    ];
    let a = client1.send(req, &body, None).await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    let echo: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(echo["body_len"], 300_000);
    assert_eq!(echo["headers"]["content-length"][0], "300000");
}

#[tokio::test]
async fn response_bodies_and_trailers_stream_down() {
    let big = Bytes::from(vec![b'z'; 3 * 1024 * 1024]);
    let body = big.clone();
    let origin = Origin::start(move |_req| {
        let body = body.clone();
        async move {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let stream = futures_util::stream::iter(vec![
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(body)),
                Ok(http_body::Frame::trailers(trailers)),
            ]);
            http::Response::new(http_body_util::BodyExt::boxed(
                http_body_util::StreamBody::new(stream),
            ))
        }
    })
    .await;
    let ca = TestCa::new("h3");
    let (_proxy, udp) = start(&ca, "true", &proxy_to(origin.addr, "protocol = \"h2c\"")).await;
    let client = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    let a = client.get("localhost", "/big").await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), big.len());
    assert!(a.body == big);
    let t = a.trailers.expect("trailers");
    assert_eq!(t["grpc-status"], "0");
}

#[tokio::test]
async fn proxy_made_errors_carry_their_reason_over_http3() {
    let ca = TestCa::new("h3");
    let (_proxy, udp) = start(&ca, "true", &proxy_to(closed_port(), "")).await;
    let client = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    let a = client.get("localhost", "/").await.unwrap();
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(a.header("x-pylon-error"), Some("upstream_connect_failed"));

    // A body longer than its Content-Length is refused, and the connection goes on.
    let origin = Origin::echo().await;
    let (_p2, udp2) = start(&ca, "true", &proxy_to(origin.addr, "")).await;
    let client = H3Client::connect(&ca, udp2, "localhost").await.unwrap();
    let req = Request::post("https://localhost/")
        .header("content-length", "5")
        .body(())
        .unwrap();
    let a = client
        .send(req, &[Bytes::from_static(b"more than five")], None)
        .await
        .unwrap();
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.header("x-pylon-error").is_some());
    // The same with the request's end still to come: Pylon stops reading it (while a
    // read of the stream is under way) and answers.
    let req = Request::post("https://localhost/")
        .header("content-length", "5")
        .body(())
        .unwrap();
    let a = client
        .send_unended(req, &[Bytes::from_static(b"more than five")])
        .await
        .unwrap();
    assert_eq!(a.status, 400, "{a:?}");
    let a = client.get("localhost", "/after").await.unwrap();
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn the_tcp_side_advertises_http3_with_alt_svc() {
    let ca = TestCa::new("h3");
    let (proxy, udp) = start(&ca, "true", "[[routes]]\nrespond = { body = \"hi\" }").await;
    let expected = format!("h3=\":{}\"; ma=86400", udp.port());
    for alpn in [["h2"], ["http/1.1"]] {
        let connector = tls_client(&ca, &alpn, None);
        let req = Request::get("https://localhost/")
            .header("host", "localhost")
            .body(empty())
            .unwrap();
        let a = https_send(&connector, proxy.addr("front"), "localhost", req)
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.header("alt-svc"), Some(expected.as_str()), "{alpn:?}");
    }
    // And the same answer over HTTP/3.
    let client = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    assert_eq!(client.get("localhost", "/").await.unwrap().text(), "hi");

    // Turned off: no advertisement, HTTP/3 still served.
    let (proxy, udp) = start(
        &ca,
        "{ alt_svc = false }",
        "[[routes]]\nrespond = { body = \"hi\" }",
    )
    .await;
    let connector = tls_client(&ca, &["http/1.1"], None);
    let req = Request::get("https://localhost/")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let a = https_send(&connector, proxy.addr("front"), "localhost", req)
        .await
        .unwrap();
    assert!(a.header("alt-svc").is_none());
    let client = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    assert_eq!(client.get("localhost", "/").await.unwrap().status, 200);
}

#[tokio::test]
async fn a_reload_keeps_quic_connections_and_applies_new_routes() {
    let ca = TestCa::new("h3");
    let config = |body: &str, limit: &str| {
        h3_config_with(
            &ca,
            "true",
            &format!("max_headers = {limit}"),
            &format!("[[routes]]\nrespond = {{ body = \"{body}\" }}"),
        )
    };
    let proxy = TestProxy::start(&config("one", "100")).await;
    let udp = proxy.proxy.h3_addr("front").unwrap();
    let client = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    assert_eq!(client.get("localhost", "/").await.unwrap().text(), "one");

    // Same address, other listener settings and another route.
    let report = proxy
        .proxy
        .reload(&pylon_config::parse(&config("two", "50"), "test.toml").unwrap())
        .await
        .unwrap();
    assert!(
        report
            .changes
            .iter()
            .any(|c| c.contains("new settings, same socket")),
        "{:?}",
        report.changes
    );
    assert_eq!(proxy.proxy.h3_addr("front"), Some(udp));
    // The connection opened before the reload goes on, with the new route.
    assert_eq!(client.get("localhost", "/").await.unwrap().text(), "two");
    let id = client.connection.stable_id();
    assert_eq!(
        client.connection.close_reason(),
        None,
        "connection {id} open"
    );
}

#[tokio::test]
async fn http3_is_checked_like_the_rest_of_the_config() {
    let err = pylon_config::parse(
        r#"
[[listeners]]
name = "plain"
bind = "127.0.0.1:8080"
http3 = true
[[routes]]
respond = { body = "x" }
"#,
        "h3.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("h3.toml:5")
            && err.contains("`http3` applies only to listeners with protocol = \"https\""),
        "{err}"
    );

    let err = pylon_config::parse(
        r#"
[[listeners]]
name = "tls"
bind = "127.0.0.1:8443"
protocol = "https"
http3 = { address_validation = "sometimes", initial_stream_window = 10 }
tls = { certificates = [{ cert = "c.pem", key = "k.pem" }] }
[[listeners]]
name = "dns"
bind = "127.0.0.1:8443"
protocol = "udp"
cluster = "c"
[[clusters]]
name = "c"
endpoints = ["127.0.0.1:53"]
[[routes]]
respond = { body = "x" }
"#,
        "h3.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("unknown address_validation \"sometimes\""),
        "{err}"
    );
    assert!(
        err.contains("initial_stream_window must be at least 1KiB"),
        "{err}"
    );
    assert!(
        err.contains("address 127.0.0.1:8443 is already bound by listener \"tls\""),
        "{err}"
    );

    let err = pylon_config::parse(
        r#"
[[listeners]]
name = "tls"
bind = "127.0.0.1:8443"
protocol = "https"
http3 = { early_data = true }
tls = { certificates = [{ cert = "c.pem", key = "k.pem" }], client_auth = "required", client_ca = "ca.pem" }
[[routes]]
respond = { body = "x" }
"#,
        "h3.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("h3.toml:6") && err.contains("early_data cannot be used with tls client_auth"),
        "{err}"
    );

    let err = pylon_config::parse(
        r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:8080"
[[routes]]
cluster = "c"
[[clusters]]
name = "c"
endpoints = ["127.0.0.1:8443"]
protocol = "h3"
[[clusters]]
name = "d"
endpoints = ["127.0.0.1:8443"]
h3_fallback = "h2"
"#,
        "h3.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("h3.toml:10") && err.contains("HTTP/3 over QUIC, always TLS"),
        "{err}"
    );
    assert!(
        err.contains("h3.toml:14")
            && err.contains("`h3_fallback` applies only to clusters with protocol = \"h3\""),
        "{err}"
    );
}

/// Runs `examples/h3_client.py` (aioquic, an independent HTTP/3 stack, which
/// scripts/test.sh installs) with `args`; its output.
async fn aioquic_client(args: &[&str]) -> String {
    let python = std::env::var("PYLON_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/h3_client.py");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(&python)
            .arg(&script)
            .args(args)
            .output(),
    )
    .await
    .expect("the aioquic client finishes")
    .expect("python runs (scripts/test.sh installs aioquic into target/test-venv)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The JSON body of the echo origin's answer in an `h3_client.py` output.
fn echoed(out: &str) -> serde_json::Value {
    let json = out
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON body");
    serde_json::from_str(json).unwrap()
}

/// aioquic as the client, through the README's example client: a GET, and a 1 MiB
/// POST in pieces with trailers, to an HTTP/2 origin.
#[tokio::test]
async fn aioquic_as_the_client() {
    let origin = Origin::echo().await;
    let ca = TestCa::new("h3");
    let (_proxy, udp) = start(&ca, "true", &proxy_to(origin.addr, "protocol = \"h2c\"")).await;
    let ca_file = write_file(&temp_dir(), "ca.pem", &ca.cert_pem());
    let url = format!("https://localhost:{}/aioquic?x=1", udp.port());
    let connect = udp.ip().to_string();
    let out = aioquic_client(&["--cacert", &ca_file, "--connect", &connect, &url]).await;
    assert!(out.starts_with("HTTP/3 200\n"), "{out}");
    let get = echoed(&out);
    assert_eq!(
        get["uri"],
        format!("http://localhost:{}/aioquic?x=1", udp.port()),
        "HTTP/2 to the origin"
    );
    assert_eq!(get["headers"]["via"][0], "3 pylon");

    let out = aioquic_client(&[
        "--cacert",
        &ca_file,
        "--connect",
        &connect,
        "--data",
        "1048576",
        "--pieces",
        "16",
        "--trailer",
        "x-sum=42",
        &url,
    ])
    .await;
    assert!(out.starts_with("HTTP/3 200\n"), "{out}");
    let post = echoed(&out);
    assert_eq!(post["method"], "POST");
    assert_eq!(post["body_len"], 1 << 20);
    assert_eq!(post["trailers"][0], "x-sum=42");
}

/// aioquic's extended CONNECT, through the README's example client: Pylon offers it
/// (SETTINGS_ENABLE_CONNECT_PROTOCOL), and the WebSocket over HTTP/3 (RFC 9220)
/// reaches an HTTP/1.1 WebSocket origin, messages and close code included.
#[tokio::test]
async fn aioquic_opens_a_websocket_over_http3() {
    let origin = WsOrigin::start(WsBehaviour::Echo).await;
    let ca = TestCa::new("h3");
    let (_proxy, udp) = start(&ca, "true", &proxy_to(origin.addr, "")).await;
    let ca_file = write_file(&temp_dir(), "ca.pem", &ca.cert_pem());
    let url = format!("https://localhost:{}/chat", udp.port());
    let connect = udp.ip().to_string();
    let out = aioquic_client(&[
        "--cacert",
        &ca_file,
        "--connect",
        &connect,
        "--websocket",
        "hello",
        "--websocket",
        "über drei",
        &url,
    ])
    .await;
    assert!(out.starts_with("HTTP/3 200\n"), "{out}");
    assert!(
        out.ends_with("\nmessage: hello\nmessage: über drei\nclose: 1000\n"),
        "{out}"
    );
    eventually("the origin saw the client's close", || {
        origin.last_close.lock().unwrap().clone() == Some((1000, "bye".to_string()))
    })
    .await;
}

#[tokio::test]
async fn a_field_section_over_the_limit_gets_431_with_its_reason() {
    let origin = Origin::echo().await;
    let ca = TestCa::new("h3");
    let proxy = TestProxy::start(&h3_config_with(
        &ca,
        "true",
        "max_header_bytes = \"4KiB\"",
        &proxy_to(origin.addr, ""),
    ))
    .await;
    let udp = proxy.proxy.h3_addr("front").unwrap();
    let client = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    let req = Request::get("https://localhost/")
        .header("x-big", "v".repeat(6000))
        .body(())
        .unwrap();
    let a = client.send(req, &[], None).await.unwrap();
    assert_eq!(a.status, 431);
    assert_eq!(a.header("x-pylon-error"), Some("headers_too_large"));
    // The connection goes on.
    assert_eq!(client.get("localhost", "/").await.unwrap().status, 200);
}

#[tokio::test]
async fn a_client_that_changes_its_source_port_keeps_its_connection() {
    let origin = Origin::echo().await;
    let ca = TestCa::new("h3");
    let (proxy, udp) = start(&ca, "true", &proxy_to(origin.addr, "")).await;
    let client = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    assert_eq!(client.get("localhost", "/one").await.unwrap().status, 200);
    let moved_to = client.rebind().unwrap();
    for i in 0..5 {
        let a = client
            .get("localhost", &format!("/moved/{i}"))
            .await
            .unwrap();
        assert_eq!(a.status, 200);
    }
    assert_eq!(client.connection.close_reason(), None);
    let m = proxy.proxy.render_metrics();
    assert!(
        m.contains("pylon_quic_connections_total 1\n"),
        "one connection: {m}"
    );
    assert_ne!(moved_to.port(), 0);
}

/// An origin that answers after `delay`, counting the requests it holds at once.
async fn slow_origin(
    delay: std::time::Duration,
) -> (Origin, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let active = std::sync::Arc::new(AtomicUsize::new(0));
    let most = std::sync::Arc::new(AtomicUsize::new(0));
    let (a, m) = (active.clone(), most.clone());
    let origin = Origin::start(move |_req| {
        let (a, m) = (a.clone(), m.clone());
        async move {
            let now = a.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            a.fetch_sub(1, Ordering::SeqCst);
            http::Response::new(full("slow answer"))
        }
    })
    .await;
    (origin, most)
}

#[tokio::test]
async fn requests_cancelled_in_a_loop_stay_bounded_and_close_the_connection() {
    let (origin, most) = slow_origin(std::time::Duration::from_millis(100)).await;
    let ca = TestCa::new("h3");
    let proxy = TestProxy::start(&h3_config_with(
        &ca,
        "true",
        "max_concurrent_streams = 8",
        &proxy_to(origin.addr, ""),
    ))
    .await;
    let udp = proxy.proxy.h3_addr("front").unwrap();
    let attacker = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    // Each cancel frees nothing until Pylon has finished with the stream, so the
    // client can never have more than 8 requests on their way upstream.
    let loop_ = async {
        for i in 0..40 {
            let req = Request::get(format!("https://localhost/r/{i}"))
                .body(())
                .unwrap();
            if attacker.send_and_cancel(req).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), loop_).await;
    eventually(
        "the connection is closed for its cancelled requests",
        || attacker.connection.close_reason().is_some(),
    )
    .await;
    assert!(
        most.load(std::sync::atomic::Ordering::SeqCst) <= 8,
        "at most max_concurrent_streams upstream at once"
    );
    let m = proxy.proxy.render_metrics();
    assert!(m.contains("pylon_quic_excessive_resets_total 1\n"), "{m}");
    // Others are still served.
    let client = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    assert_eq!(
        client.get("localhost", "/").await.unwrap().text(),
        "slow answer"
    );
}

/// Sends `request` and, once `origin` has it, stops Pylon (a 10 s drain): what the
/// request got, and whether the stop drained within its timeout.
async fn stop_with_a_request_in_flight<T: Send + 'static>(
    proxy: TestProxy,
    origin: &Origin,
    request: impl std::future::Future<Output = T> + Send + 'static,
) -> (T, bool) {
    let in_flight = tokio::spawn(request);
    eventually("the request reached the origin", || {
        origin.request_count() == 1
    })
    .await;
    let drained = proxy
        .proxy
        .shutdown(std::time::Duration::from_secs(10))
        .await;
    (in_flight.await.unwrap(), drained)
}

#[tokio::test]
async fn a_stop_lets_requests_in_flight_finish_then_closes() {
    let (origin, _) = slow_origin(std::time::Duration::from_millis(500)).await;
    let ca = TestCa::new("h3");
    let (proxy, udp) = start(&ca, "true", &proxy_to(origin.addr, "")).await;
    let client = std::sync::Arc::new(H3Client::connect(&ca, udp, "localhost").await.unwrap());
    let c = std::sync::Arc::clone(&client);
    let (a, drained) =
        stop_with_a_request_in_flight(
            proxy,
            &origin,
            async move { c.get("localhost", "/slow").await },
        )
        .await;
    let a = a.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "slow answer");
    assert!(
        drained,
        "the QUIC connection ended within the drain timeout"
    );
    eventually("the connection is closed", || {
        client.connection.close_reason().is_some()
    })
    .await;
    // Nothing new is taken.
    assert!(
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            H3Client::connect(&ca, udp, "localhost")
        )
        .await
        .map_or(true, |r| r.is_err())
    );
}

/// A large answer in flight when a stop begins reaches the client whole: the QUIC
/// connection closes only once what was written of it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_delivers_a_large_answer_whole_before_closing() {
    const SIZE: usize = 16 << 20;
    let origin = Origin::start(|_req: Request<hyper::body::Incoming>| async move {
        http::Response::new(full(vec![b'x'; SIZE]))
    })
    .await;
    let ca = TestCa::new("h3");
    let (proxy, udp) = start(&ca, "true", &proxy_to(origin.addr, "")).await;
    let client = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    let download = async move {
        let req = Request::get("https://localhost/big").body(()).unwrap();
        client.send_counting(req, &[]).await
    };
    let (got, drained) = stop_with_a_request_in_flight(proxy, &origin, download).await;
    let (status, n) = got.unwrap();
    assert_eq!((status.as_u16(), n), (200, SIZE as u64));
    assert!(drained);
}

#[tokio::test]
async fn connection_limits_and_address_validation() {
    let ca = TestCa::new("h3");
    let respond = "[[routes]]\nrespond = { body = \"hi\" }";
    let (proxy, udp) = start(&ca, "{ max_connections = 1 }", respond).await;
    let first = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    assert_eq!(first.get("localhost", "/").await.unwrap().status, 200);
    assert!(
        H3Client::connect(&ca, udp, "localhost").await.is_err(),
        "refused"
    );
    let m = proxy.proxy.render_metrics();
    assert!(m.contains("pylon_quic_refused_total 1\n"), "{m}");
    // The first one is still served.
    assert_eq!(first.get("localhost", "/").await.unwrap().status, 200);

    // Every new client proves its address with a Retry first.
    let (proxy, udp) = start(&ca, "{ address_validation = \"always\" }", respond).await;
    for _ in 0..2 {
        let c = H3Client::connect(&ca, udp, "localhost").await.unwrap();
        assert_eq!(c.get("localhost", "/").await.unwrap().text(), "hi");
    }
    let m = proxy.proxy.render_metrics();
    assert!(m.contains("pylon_quic_retries_total 2\n"), "{m}");
    assert!(m.contains("pylon_quic_connections_total 2\n"), "{m}");
}

#[tokio::test]
async fn early_data_takes_safe_methods_only_and_says_so_upstream() {
    let origin = Origin::echo().await;
    let ca = TestCa::new("h3");
    let (_proxy, udp) = start(&ca, "{ early_data = true }", &proxy_to(origin.addr, "")).await;
    let mut tls = h3_client_config(&ca);
    tls.enable_early_data = true;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let config = quinn::ClientConfig::new(std::sync::Arc::new(quic));
    // A first connection gets a session ticket.
    let (first, early) = H3Client::connect_quic(&config, udp, "localhost", true)
        .await
        .unwrap();
    assert!(!early, "nothing to resume yet");
    let a = first.get("localhost", "/first").await.unwrap();
    let echo: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert!(
        echo["headers"].get("early-data").is_none(),
        "not in early data"
    );
    // A client that did not resume sends nothing early: its POSTs go through at once.
    for _ in 0..5 {
        let post = Request::post("https://localhost/full").body(()).unwrap();
        let p = first
            .send(post, &[Bytes::from_static(b"x")], None)
            .await
            .unwrap();
        assert_eq!(p.status, 200, "{}", p.text());
    }
    // The session ticket came with the answers above (the server sends it right after
    // the handshake, ahead of any response).
    first.connection.close(0u32.into(), b"");
    drop(first);

    // The second resumes and sends its first requests in 0-RTT.
    let (second, early) = H3Client::connect_quic(&config, udp, "localhost", true)
        .await
        .unwrap();
    assert!(early, "the client resumed with 0-RTT");
    let get = Request::get("https://localhost/early").body(()).unwrap();
    let post = Request::post("https://localhost/early").body(()).unwrap();
    let replayable = [Bytes::from_static(b"replayable")];
    let (g, p) = tokio::join!(
        second.send(get, &[], None),
        second.send(post, &replayable, None)
    );
    let (g, p) = (g.unwrap(), p.unwrap());
    assert_eq!(g.status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
    assert_eq!(echo["headers"]["early-data"][0], "1", "{echo}");
    assert_eq!(p.status, 425, "{}", p.text());
    assert_eq!(p.header("x-pylon-error"), Some("too_early"));
    // Once the handshake is done, the same POST goes through, without the marker.
    let post = Request::post("https://localhost/later").body(()).unwrap();
    let p = second
        .send(post, &[Bytes::from_static(b"ok")], None)
        .await
        .unwrap();
    assert_eq!(p.status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
    assert!(echo["headers"].get("early-data").is_none());
}

/// 100 MiB up and 100 MiB down over HTTP/3 through the `pylon` binary: streamed under
/// QUIC flow control, never held, so the process's peak RSS stays far below the size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_streams_both_ways_in_bounded_memory() {
    use http_body_util::BodyExt;
    const TOTAL: usize = 100 << 20;
    const CHUNK: usize = 64 << 10;
    let origin = Origin::start(|req: Request<hyper::body::Incoming>| async move {
        if req.method() == http::Method::POST {
            let mut body = req.into_body();
            let mut n = 0usize;
            while let Some(f) = body.frame().await {
                if let Ok(d) = f.unwrap().into_data() {
                    n += d.len();
                }
            }
            http::Response::new(full(n.to_string()))
        } else {
            let chunk = Bytes::from(vec![7u8; CHUNK]);
            let frames = (0..TOTAL / CHUNK).map(move |_| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(
                    chunk.clone(),
                ))
            });
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            http::Response::builder()
                .header("content-length", TOTAL.to_string())
                .body(BodyExt::boxed(body))
                .unwrap()
        }
    })
    .await;
    let ca = TestCa::new("h3");
    let config = h3_config_with(
        &ca,
        "true",
        "max_request_body = \"200MiB\"",
        &proxy_to(origin.addr, ""),
    );
    let file = temp_dir().join("big-h3.toml");
    std::fs::write(&file, config).unwrap();
    let p = PylonProcess::start(
        env!("CARGO_BIN_EXE_pylon"),
        &["run", "-c", file.to_str().unwrap()],
        None,
    );
    let client = H3Client::connect(&ca, p.addr("front"), "localhost")
        .await
        .unwrap();
    let before = p.peak_rss();
    let piece = Bytes::from(vec![9u8; CHUNK]);
    let pieces: Vec<Bytes> = (0..TOTAL / CHUNK).map(|_| piece.clone()).collect();
    let up = Request::post("https://localhost/upload").body(()).unwrap();
    let a = client.send(up, &pieces, None).await.unwrap();
    assert_eq!(
        a.text(),
        TOTAL.to_string(),
        "the origin received every byte"
    );
    let down = Request::get("https://localhost/download").body(()).unwrap();
    let (status, n) = client.send_counting(down, &[]).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(n, TOTAL as u64);
    let grew = p.peak_rss().saturating_sub(before);
    eprintln!("peak RSS grew by {} MiB", grew >> 20);
    assert!(grew < 40 << 20, "peak RSS grew by {} MiB", grew >> 20);
}

/// A gRPC call over HTTP/3 to an HTTP/2 (h2c) gRPC origin: the message and the
/// trailers (`grpc-status`, metadata) go through; a call that finds no endpoint gets a
/// gRPC status, not an HTTP error.
#[tokio::test]
async fn grpc_over_http3_to_an_h2_origin() {
    use bytes::{Buf, BufMut, BytesMut};
    use http_body_util::BodyExt;
    fn frame(msg: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(5 + msg.len());
        b.put_u8(0);
        b.put_u32(msg.len() as u32);
        b.put_slice(msg);
        b.freeze()
    }
    let origin = Origin::start(|req: Request<hyper::body::Incoming>| async move {
        assert_eq!(req.version(), http::Version::HTTP_2);
        let mut body = req.into_body().collect().await.unwrap().to_bytes();
        body.advance(5);
        let mut reply = b"echo: ".to_vec();
        reply.extend_from_slice(&body);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("x-trailer-meta", "from-the-trailers".parse().unwrap());
        let frames = [
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(frame(
                &reply,
            ))),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        http::Response::builder()
            .header("content-type", "application/grpc")
            .body(BodyExt::boxed(body))
            .unwrap()
    })
    .await;
    let ca = TestCa::new("h3");
    let rest = format!(
        r#"
[[routes]]
name = "grpc"
path_prefix = "/test."
cluster = "g"
[[routes]]
name = "none"
path_prefix = "/gone."
cluster = "dead"
[[clusters]]
name = "g"
protocol = "h2c"
endpoints = ["{}"]
[[clusters]]
name = "dead"
protocol = "h2c"
endpoints = ["{}"]
"#,
        origin.addr,
        closed_port()
    );
    let (_proxy, udp) = start(&ca, "true", &rest).await;
    let client = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    let call = |path: &str| {
        Request::post(format!("https://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap()
    };
    let a = client
        .send(call("/test.Echo/Say"), &[frame(b"hi")], None)
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    assert!(a.body.len() > 5, "{a:?}");
    assert_eq!(&a.body[5..], b"echo: hi");
    let t = a.trailers.expect("trailers");
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["x-trailer-meta"], "from-the-trailers");

    let a = client
        .send(call("/gone.Echo/Say"), &[frame(b"hi")], None)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "gRPC callers get a gRPC status");
    assert_eq!(a.header("grpc-status"), Some("14"), "{:?}", a.headers);
}

/// Frames HTTP/3 forbids, sent on raw QUIC streams: the offending connection is closed
/// with the HTTP/3 error for it, and another client is served meanwhile.
#[tokio::test]
async fn malformed_frames_close_only_their_connection() {
    let ca = TestCa::new("h3");
    let (proxy, udp) = start(&ca, "true", "[[routes]]\nrespond = { body = \"ok\" }").await;
    let bystander = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    let raw = |first: &'static [u8]| {
        let ca = &ca;
        async move {
            let quic =
                quinn::crypto::rustls::QuicClientConfig::try_from(h3_client_config(ca)).unwrap();
            let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(quic)));
            let conn = endpoint.connect(udp, "localhost").unwrap().await.unwrap();
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            send.write_all(first).await.unwrap();
            let _ = send.finish();
            let reason = tokio::time::timeout(std::time::Duration::from_secs(10), conn.closed())
                .await
                .expect("the connection is closed by the server");
            (reason, endpoint)
        }
    };
    // A DATA frame (type 0x00, 3 bytes) where the request's HEADERS must come first.
    let (reason, _e) = raw(&[0x00, 0x03, b'a', b'b', b'c']).await;
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(0x105)),
        "H3_FRAME_UNEXPECTED: {reason:?}"
    );
    // A frame type reserved from HTTP/2 (0x02, PRIORITY) is a connection error.
    let (reason, _e) = raw(&[0x02, 0x01, 0x00]).await;
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(0x105)),
        "H3_FRAME_UNEXPECTED: {reason:?}"
    );
    assert_eq!(bystander.get("localhost", "/").await.unwrap().text(), "ok");
    eventually("both protocol errors are counted", || {
        proxy
            .proxy
            .render_metrics()
            .contains("pylon_quic_protocol_errors_total 2\n")
    })
    .await;
}

/// New certificate files, reloaded: new QUIC handshakes present them, and a connection
/// opened before goes on.
#[tokio::test]
async fn reloaded_certificates_serve_new_quic_handshakes() {
    let old_ca = TestCa::new("old");
    let new_ca = TestCa::new("new");
    let dir = temp_dir();
    let (cert, key) = old_ca.server(&["localhost"]).write(&dir, "leaf");
    let config = format!(
        r#"
access_log = {{ enabled = false }}
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
protocol = "https"
http3 = true
[listeners.tls]
certificates = [{{ cert = "{}", key = "{}" }}]
[[routes]]
respond = {{ body = "ok" }}
"#,
        cert.display(),
        key.display()
    );
    let proxy = TestProxy::start(&config).await;
    let udp = proxy.proxy.h3_addr("front").unwrap();
    let before = H3Client::connect(&old_ca, udp, "localhost").await.unwrap();
    assert!(H3Client::connect(&new_ca, udp, "localhost").await.is_err());

    let (new_cert, new_key) = new_ca.server(&["localhost"]).write(&dir, "next");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    assert!(proxy.proxy.reload_certificates().await.is_empty());

    let after = H3Client::connect(&new_ca, udp, "localhost").await.unwrap();
    assert_eq!(after.get("localhost", "/").await.unwrap().text(), "ok");
    assert!(
        H3Client::connect(&old_ca, udp, "localhost").await.is_err(),
        "the old certificate is gone from new handshakes"
    );
    assert_eq!(before.get("localhost", "/").await.unwrap().text(), "ok");
}

/// A cluster with `protocol = "h3"` and a TLS table (CA, server name) in front of an
/// HTTP/3 origin, behind a plain listener.
fn h3_upstream_config(origin: SocketAddr, ca: &TestCa, extra: &str) -> String {
    let ca_file = temp_dir().join("upstream-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    format!(
        r#"
access_log = {{ enabled = false }}
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
[[routes]]
cluster = "c"
[[clusters]]
name = "c"
endpoints = ["{origin}"]
protocol = "h3"
tls = {{ ca = "{}", server_name = "localhost" }}
{extra}
"#,
        ca_file.display()
    )
}

#[tokio::test]
async fn requests_go_to_an_http3_upstream_on_one_pooled_connection() {
    let ca = TestCa::new("upstream");
    let origin = H3Origin::echo(&ca.server(&["localhost"])).await;
    let proxy = TestProxy::start(&h3_upstream_config(origin.addr, &ca, "")).await;
    let front = proxy.addr("front");
    for i in 0..10 {
        let a = get(front, &format!("/n/{i}?q=1")).await;
        assert_eq!(a.status, 200, "{}", a.text());
        let echo = a.json();
        assert_eq!(echo["version"], "HTTP/3.0");
        assert_eq!(echo["method"], "GET");
        assert!(
            echo["uri"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/n/{i}?q=1")),
            "{echo}"
        );
        assert_eq!(echo["body_len"], 0);
    }
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "every request on one QUIC connection"
    );

    // A body and trailers up over HTTP/2 from the client, trailers back.
    let mut h2 = h2_conn(front).await;
    let req = Request::post("http://localhost/up")
        .header("te", "trailers")
        .body(body(vec![b'y'; 1 << 20]))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    let (parts, b) = resp.into_parts();
    let collected = http_body_util::BodyExt::collect(b).await.unwrap();
    let trailers = collected.trailers().cloned();
    let echo: serde_json::Value = serde_json::from_slice(&collected.to_bytes()).unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_len"], 1 << 20);
    assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
}

/// A client that leaves in the middle of an HTTP/3 upstream's answer: the upstream's
/// stream is stopped without a panic (h3-quinn's own `stop_sending` panics while a read
/// is under way), and the pooled connection serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_answer_stops_the_http3_upstreams_stream() {
    let panics = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&panics);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info
            .location()
            .is_some_and(|l| l.file().contains("h3-quinn"))
        {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        previous(info);
    }));
    let ca = TestCa::new("upstream");
    let origin = H3Origin::echo(&ca.server(&["localhost"])).await;
    let proxy = TestProxy::start(&h3_upstream_config(origin.addr, &ca, "")).await;
    let front = proxy.addr("front");
    for _ in 0..3 {
        let mut tcp = tokio::net::TcpStream::connect(front).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tcp.write_all(b"GET /endless HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut got = vec![0u8; 64 * 1024];
        let mut n = 0;
        while n < got.len() {
            let r = tokio::time::timeout(DEADLINE, tcp.read(&mut got[n..]))
                .await
                .unwrap()
                .unwrap();
            assert!(r > 0, "the answer goes on");
            n += r;
        }
        drop(tcp);
    }
    let a = get(front, "/after").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(panics.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the pooled QUIC connection served on"
    );
}

#[tokio::test]
async fn http3_upstreams_are_health_checked_over_quic_and_fail_cleanly() {
    let ca = TestCa::new("upstream");
    let origin = H3Origin::echo(&ca.server(&["localhost"])).await;
    let checks = "[clusters.health_check]\ninterval = \"50ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 2\npath = \"/health\"";
    let proxy = TestProxy::start(&h3_upstream_config(origin.addr, &ca, checks)).await;
    let front = proxy.addr("front");
    assert_eq!(get(front, "/").await.status, 200);
    // The origin goes away: checks over QUIC fail, the endpoint leaves rotation.
    drop(origin);
    eventually_async("the endpoint is out of rotation", || async {
        get(front, "/").await.header("x-pylon-error") == Some("no_endpoint")
    })
    .await;

    // Nothing listening at all: the request fails as a connect failure, not a hang.
    let dead = TestProxy::start(&h3_upstream_config(
        closed_udp_port(),
        &ca,
        "connect_timeout = \"300ms\"",
    ))
    .await;
    let a = get(dead.addr("front"), "/").await;
    assert!(a.status == 502 || a.status == 504, "{a:?}");
    assert!(
        matches!(
            a.header("x-pylon-error"),
            Some("upstream_connect_failed" | "upstream_connect_timeout")
        ),
        "{a:?}"
    );
}

fn closed_udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// QUIC blocked to an `h3` endpoint (nothing answers on UDP, the TCP side serves
/// HTTP/2 over TLS): with `h3_fallback = "h2"` its requests go over TCP, counted, and
/// QUIC is left alone for a while rather than timed out on every request.
#[tokio::test]
async fn an_h3_cluster_falls_back_to_tcp_when_quic_is_blocked() {
    let ca = TestCa::new("upstream");
    let cert = ca.server(&["localhost"]);
    let origin = Origin::start_tls(origin_tls_config(&cert, None, &["h2", "http/1.1"])).await;
    let config = h3_upstream_config(
        origin.addr,
        &ca,
        "h3_fallback = \"h2\"\nconnect_timeout = \"300ms\"",
    );
    let proxy = TestProxy::start(&config).await;
    let front = proxy.addr("front");
    for i in 0..3 {
        let a = get(front, &format!("/fb/{i}")).await;
        assert_eq!(a.status, 200, "{}", a.text());
        let echo = a.json();
        assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
        assert!(echo["uri"].as_str().unwrap().ends_with(&format!("/fb/{i}")));
    }
    let m = proxy.proxy.render_metrics();
    let counted = |name: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        counted("pylon_upstream_quic_unreachable_total")
            + counted("pylon_upstream_quic_timeouts_total"),
        1,
        "QUIC tried once, counted by its cause: {m}"
    );
    assert!(m.contains("pylon_upstream_h3_fallbacks_total 3\n"), "{m}");

    // HTTP/1.1 as the fallback: Host and an origin-form target.
    let proxy = TestProxy::start(&h3_upstream_config(
        origin.addr,
        &ca,
        "h3_fallback = \"http1\"\nconnect_timeout = \"300ms\"",
    ))
    .await;
    let a = get(proxy.addr("front"), "/one").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let echo = a.json();
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["uri"], "/one");
    assert!(echo["headers"]["host"][0].as_str().is_some(), "{echo}");
}

/// aioquic as the HTTP/3 origin of an `h3` cluster: a GET, and a POST whose body and
/// trailers come from an HTTP/2 client.
#[tokio::test]
async fn an_aioquic_origin_behind_an_h3_cluster() {
    use tokio::io::AsyncBufReadExt;
    let ca = TestCa::new("upstream");
    let dir = temp_dir();
    let (cert, key) = ca.server(&["localhost"]).write(&dir, "aioquic");
    let script = dir.join("h3_origin.py");
    std::fs::write(&script, include_str!("support/h3_origin.py")).unwrap();
    let python = std::env::var("PYLON_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&cert)
        .arg(&key)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs (scripts/test.sh installs aioquic into target/test-venv)");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("the aioquic origin starts")
        .unwrap()
        .expect("its port")
        .trim()
        .parse()
        .unwrap();
    let origin: SocketAddr = ([127, 0, 0, 1], port).into();
    let proxy = TestProxy::start(&h3_upstream_config(origin, &ca, "")).await;
    let front = proxy.addr("front");
    let a = get(front, "/from/h1?x=1").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let echo = a.json();
    assert_eq!(echo["server"], "aioquic");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/from/h1?x=1");
    assert_eq!(echo["body_len"], 0);

    let mut h2 = h2_conn(front).await;
    let req = Request::post("http://localhost/up")
        .body(body(vec![b'z'; 300_000]))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    let a = collect(resp).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let echo = a.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_len"], 300_000);
    drop(child);
}

#[test]
fn a_layer_4_listener_cannot_relay_to_an_h3_cluster() {
    let err = pylon_config::parse(
        r#"
[[listeners]]
name = "l4"
bind = "127.0.0.1:9000"
protocol = "tcp"
cluster = "q"
[[clusters]]
name = "q"
endpoints = ["127.0.0.1:8443"]
protocol = "h3"
tls = { server_name = "x" }
"#,
        "h3.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("h3.toml:6") && err.contains("a Layer 4 listener cannot relay to it"),
        "{err}"
    );
}

/// A client cannot have more request streams open than `max_concurrent_streams`: the
/// rest wait for QUIC stream credit, and every request is answered.
#[tokio::test]
async fn streams_past_the_limit_wait_their_turn() {
    let (origin, most) = slow_origin(std::time::Duration::from_millis(150)).await;
    let ca = TestCa::new("h3");
    let proxy = TestProxy::start(&h3_config_with(
        &ca,
        "true",
        "max_concurrent_streams = 4",
        &proxy_to(origin.addr, ""),
    ))
    .await;
    let udp = proxy.proxy.h3_addr("front").unwrap();
    let client = std::sync::Arc::new(H3Client::connect(&ca, udp, "localhost").await.unwrap());
    let mut set = tokio::task::JoinSet::new();
    for i in 0..12 {
        let c = std::sync::Arc::clone(&client);
        set.spawn(async move { c.get("localhost", &format!("/w/{i}")).await });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap().unwrap().text(), "slow answer");
    }
    assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= 4);
}

/// Pylon's QPACK keeps no dynamic table (capacity 0): what a client writes on its
/// QPACK encoder stream (a table set up, then inserts by the thousand) leaves no state
/// behind, cannot grow past the stream's flow-control window, and disturbs no one.
#[tokio::test]
async fn a_qpack_encoder_stream_flood_keeps_nothing() {
    let ca = TestCa::new("h3");
    let (_proxy, udp) = start(&ca, "true", "[[routes]]\nrespond = { body = \"ok\" }").await;
    let bystander = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(h3_client_config(&ca)).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(quic)));
    let conn = endpoint.connect(udp, "localhost").unwrap().await.unwrap();
    // Stream type 0x02 (QPACK encoder): Set Dynamic Table Capacity 4096, then inserts.
    let mut enc = conn.open_uni().await.unwrap();
    let mut bytes = vec![0x02, 0x3f, 0xe1, 0x1f];
    let insert = [
        0x44, b'n', b'a', b'm', b'e', 0x05, b'v', b'a', b'l', b'u', b'e',
    ];
    while bytes.len() < 4 << 20 {
        bytes.extend_from_slice(&insert);
    }
    // Either Pylon reads and drops it all, or flow control stops the writer: both end
    // within the deadline one way or the other, and nothing of it is kept.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), enc.write_all(&bytes)).await;
    assert_eq!(bystander.get("localhost", "/").await.unwrap().text(), "ok");
    for _ in 0..3 {
        assert_eq!(bystander.get("localhost", "/").await.unwrap().text(), "ok");
    }
    conn.close(0u32.into(), b"");
}
