//! Where each request's time went: the access log's timing fields, the route's
//! upstream histograms and the `Server-Timing` header, seen by curl over HTTPS through
//! Pylon to a TLS origin, and to an origin that takes a known time to answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use http::Response;
use pylon_testkit::*;

/// Access-log lines once there are `n`.
async fn log_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(Instant::now() < deadline, "access log: {text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `Server-Timing` metrics of a head, by name, in milliseconds.
fn server_timing(head: &str) -> std::collections::BTreeMap<String, f64> {
    let line = head
        .lines()
        .find_map(|l| l.strip_prefix("server-timing: "))
        .unwrap_or_else(|| panic!("no Server-Timing in {head}"));
    line.split(", ")
        .map(|m| {
            let (name, dur) = m.trim().split_once(";dur=").unwrap();
            (name.to_owned(), dur.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breakdown_is_logged_counted_and_sent_in_server_timing() {
    let ca = TestCa::new("Timing CA");
    let dir = temp_dir();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let (front_cert, front_key) = ca.server(&["site.test"]).write(&dir, "front");
    let backend = ca.server(&["backend.internal"]);
    let tls_origin = Origin::start_tls(origin_tls_config(&backend, None, &["http/1.1"])).await;
    // Answers after a known pause: the upstream's part is at least that long.
    let slow = Origin::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(60)).await;
        Response::new(full("slow"))
    })
    .await;
    let log = dir.join("access.log");
    let p = TestProxy::start(&format!(
        r#"
access_log = {{ path = "{log}" }}
[admin]
bind = "127.0.0.1:0"

[[listeners]]
name = "front"
bind = "127.0.0.1:0"
protocol = "https"
[listeners.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]

[[routes]]
name = "slow"
path_prefix = "/slow"
cluster = "slow"
server_timing = true

[[routes]]
name = "app"
cluster = "tls"
server_timing = true

[[clusters]]
name = "tls"
endpoints = ["{tls_origin}"]
tls = {{ ca = "{ca}", server_name = "backend.internal" }}

[[clusters]]
name = "slow"
endpoints = ["{slow}"]
"#,
        log = log.display(),
        cert = front_cert.display(),
        key = front_key.display(),
        tls_origin = tls_origin.addr,
        ca = ca_file.display(),
        slow = slow.addr,
    ))
    .await;
    let port = p.addr("front").port();
    let resolve = format!("site.test:{port}:127.0.0.1");
    let url = |path: &str| format!("https://site.test:{port}{path}");
    // Two requests on one connection (curl reuses it), then one to the slow origin.
    let out = curl(&[
        "--http1.1",
        "--cacert",
        ca_file.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-D",
        "-",
        "-o",
        "/dev/null",
        &url("/a"),
        "-o",
        "/dev/null",
        &url("/b"),
    ])
    .await;
    let heads = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(out.status.success(), "{heads}");
    let first = server_timing(heads.split("\r\n\r\n").next().unwrap());
    for step in [
        "client_tls",
        "request_head",
        "queue",
        "connect",
        "upstream_tls",
        "request_sent",
        "upstream",
        "proxy",
    ] {
        assert!(first.contains_key(step), "{step} missing: {first:?}");
    }
    assert!(first["proxy"] >= first["upstream"], "{first:?}");
    assert!(first["upstream"] >= first["request_sent"], "{first:?}");
    let second = server_timing(heads.split("\r\n\r\n").nth(1).unwrap());
    // A reused connection: no handshake either side, no connect, no wait.
    assert!(!second.contains_key("client_tls"), "{second:?}");
    assert!(!second.contains_key("connect"), "{second:?}");
    assert_eq!(second["queue"], 0.0, "{second:?}");

    let out = curl(&[
        "--cacert",
        ca_file.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-D",
        "-",
        "-o",
        "/dev/null",
        &url("/slow"),
    ])
    .await;
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let slow_steps = server_timing(&head);
    assert!(slow_steps["upstream"] >= 60.0, "{slow_steps:?}");

    let lines = log_lines(&log, 3).await;
    let (a, b, s) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(a["path"], "/a");
    for field in [
        "client_tls_ms",
        "request_head_ms",
        "queue_ms",
        "connect_ms",
        "upstream_tls_ms",
        "request_sent_ms",
        "upstream_ms",
        "response_ms",
    ] {
        assert!(a[field].as_f64().is_some(), "{field}: {a}");
    }
    assert!(a["dns_ms"].is_null(), "{a}");
    assert!(
        b["client_tls_ms"].is_null() && b["connect_ms"].is_null(),
        "{b}"
    );
    assert!(s["upstream_ms"].as_f64().unwrap() >= 60.0, "{s}");
    // curl spoke HTTP/2 to the slow route: a stream's head is one frame, not timed.
    assert_eq!(s["protocol"], "HTTP/2");
    assert!(s["request_head_ms"].is_null(), "{s}");

    let m = p.metrics().await;
    let series = |name: &str, route: &str, cluster: &str| {
        format!("{name}_count{{listener=\"front\",route=\"{route}\",cluster=\"{cluster}\"}}")
    };
    assert_eq!(
        metric(
            &m,
            &series("pylon_route_upstream_connect_seconds", "app", "tls")
        ),
        1,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &series("pylon_route_upstream_first_byte_seconds", "app", "tls")
        ),
        2
    );
    assert_eq!(
        metric(
            &m,
            &series("pylon_route_upstream_first_byte_seconds", "slow", "slow")
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_without_server_timing_send_none() {
    let origin = Origin::named("o").await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let a = get(p.addr("front"), "/").await;
    assert_eq!(a.text(), "o");
    assert_eq!(a.header("server-timing"), None);
}
