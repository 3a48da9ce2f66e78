//! Operations through the admin API: probes, Prometheus metrics that move with the
//! traffic, the effective config, clusters, endpoint drain; hot reloads that keep
//! WebSockets, gRPC streams and TCP tunnels flowing, refuse invalid configs with their
//! errors, and close a removed route's long-lived connections after the grace period.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request};
use http_body_util::BodyExt;
use hyper::body::Frame;
use pylon_testkit::tungstenite::Message;
use pylon_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "0123456789abcdef-test-token";

async fn admin(addr: SocketAddr, method: Method, path: &str, token: bool, text: &str) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin");
    if token {
        req = req.header("authorization", format!("Bearer {TOKEN}"));
    }
    send_h1(addr, req.body(body(text.to_owned())).unwrap()).await
}

async fn metrics(addr: SocketAddr) -> String {
    let a = admin(addr, Method::GET, "/metrics", true, "").await;
    assert_eq!(a.status, 200);
    assert!(
        a.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    a.text()
}

/// The value of the sample `series` (name with labels, exactly as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Checks the OpenMetrics text structure: every sample belongs to a family declared
/// by `# TYPE`, has a numeric value, and the text ends with `# EOF`.
fn assert_valid_exposition(text: &str) {
    assert!(text.ends_with("# EOF\n"), "no EOF marker");
    let mut families: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.push((name.to_owned(), kind.to_owned()));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(
            value == "+Inf" || value.parse::<f64>().is_ok(),
            "bad value: {line}"
        );
        let name = series.split('{').next().unwrap();
        if series.contains('{') {
            assert!(series.ends_with('}'), "bad labels: {line}");
        }
        let (_, kind) = families
            .iter()
            .rev()
            .find(|(f, _)| name.starts_with(f.as_str()))
            .unwrap_or_else(|| panic!("sample without a family: {line}"));
        let suffix = &name[families
            .iter()
            .rev()
            .find(|(f, _)| name.starts_with(f.as_str()))
            .unwrap()
            .0
            .len()..];
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "gauge" => &[""],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "info" => &["_info"],
            other => panic!("unexpected type {other}"),
        };
        assert!(allowed.contains(&suffix), "{line} in a {kind}");
    }
    // An independent parser: the Prometheus Python client, where installed.
    if let Ok(py) = std::env::var("PYLON_TEST_PYTHON") {
        let mut child = std::process::Command::new(py)
            .args([
                "-c",
                "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nn = sum(len(f.samples) for f in p(sys.stdin.read()))\nprint(n)",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "prometheus_client refused the exposition: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_probes_metrics_config_and_clusters() {
    let origin = Origin::named("o").await;
    let p = TestProxy::start(&format!(
        r#"
[admin]
bind = "127.0.0.1:0"
token = "{TOKEN}"

[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
name = "app"
path_prefix = "/app"
cluster = "c"

[[clusters]]
name = "c"
endpoints = ["{}"]
health_check = {{ interval = "100ms", path = "/" }}
"#,
        origin.addr
    ))
    .await;
    let a = p.proxy.admin_addr().await.unwrap();
    let front = p.addr("front");

    assert_eq!(
        admin(a, Method::GET, "/healthz", false, "").await.status,
        200
    );
    eventually_async("ready after the first health round", || async {
        admin(a, Method::GET, "/readyz", false, "").await.status == 200
    })
    .await;
    // Everything else needs the token.
    let refused = admin(a, Method::GET, "/metrics", false, "").await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    assert_eq!(admin(a, Method::GET, "/nope", true, "").await.status, 404);
    let wrong = admin(a, Method::DELETE, "/reload", true, "").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST"));

    // The counters move as the traffic says.
    for _ in 0..7 {
        assert_eq!(get(front, "/app").await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(front, "/missing").await.status, 404);
    }
    let text = metrics(a).await;
    assert_valid_exposition(&text);
    let ok = r#"pylon_requests_total{listener="front",route="app",cluster="c",class="2xx"}"#;
    assert_eq!(sample(&text, ok), Some(7.0), "{text}");
    let unrouted = r#"pylon_requests_total{listener="front",route="",cluster="",class="4xx"}"#;
    assert_eq!(sample(&text, unrouted), Some(3.0));
    assert_eq!(
        sample(
            &text,
            r#"pylon_request_duration_seconds_count{listener="front",route="app",cluster="c"}"#
        ),
        Some(7.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"pylon_upstream_response_seconds_count{cluster="c"}"#
        ),
        Some(7.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"pylon_listener_connections_total{listener="front"}"#
        ),
        Some(10.0)
    );
    assert!(
        sample(
            &text,
            r#"pylon_listener_received_bytes_total{listener="front"}"#
        )
        .unwrap()
            > 0.0
    );
    let endpoint = format!(
        r#"pylon_endpoint_healthy{{cluster="c",endpoint="{}"}}"#,
        origin.addr
    );
    assert_eq!(sample(&text, &endpoint), Some(1.0));
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(sample(&text, "process_open_fds").unwrap() > 3.0);
    assert!(text.contains("pylon_config_info{hash=\""));

    // The effective config: TOML in the file's keys, defaults in, the token redacted.
    let config = config_answer(a, None).await;
    assert_eq!(config.status, 200);
    assert_eq!(config.header("content-type"), Some("application/toml"));
    let hash = config.header("x-pylon-config-hash").unwrap().to_owned();
    assert_eq!(hash.len(), 16);
    let toml = config.text();
    assert!(toml.starts_with(&format!("# hash: {hash}\n")), "{toml}");
    assert!(!toml.contains(TOKEN), "{toml}");
    for line in [
        "token = \"<redacted-admin-token>\"",
        "drain_timeout = \"30s\"",
        "name = \"c\"",
        "lb = \"round_robin\"",
    ] {
        assert!(toml.contains(line), "{line} in\n{toml}");
    }
    assert!(text.contains(&format!("pylon_config_info{{hash=\"{hash}\"}} 1")));

    let clusters = admin(a, Method::GET, "/clusters", true, "").await.json();
    let ep = &clusters["clusters"][0]["endpoints"][0];
    assert_eq!(ep["address"], origin.addr.to_string());
    assert_eq!(ep["healthy"], true);
    assert_eq!(ep["in_flight"], 0);
    assert!(ep["latency_ewma_ms"].as_f64().unwrap() > 0.0);

    // In-process there is no logger to change: a clear refusal.
    let level = admin(a, Method::PUT, "/log-level", true, "debug").await;
    assert_eq!(level.status, 400);
}

/// Words of the model's Rust shapes that the file's form never has.
const RUST_SHAPES: &str = "Stdout Stderr RoundRobin Socket binds matcher action secs";

/// `GET /config`, as TOML or with `Accept`.
async fn config_answer(addr: SocketAddr, accept: Option<&str>) -> Answer {
    let mut req = Request::builder()
        .uri("/config")
        .header("host", "admin")
        .header("authorization", format!("Bearer {TOKEN}"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    send_h1(addr, req.body(body("")).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_effective_config_is_a_file_pylon_check_accepts() {
    let origin = Origin::named("o").await;
    let ca = TestCa::new("Config CA");
    let dir = temp_dir();
    let (cert, key) = ca.server(&["localhost"]).write(&dir, "site");
    let hash = pylon_proxy::http::forward::hash_password("pw").unwrap();
    let text = format!(
        r#"
[server]
drain_timeout = "10s"

[admin]
bind = "127.0.0.1:0"
token = "{TOKEN}"

[access_log]
path = "stderr"

[[listeners]]
name = "front"
bind = "127.0.0.1:0"
max_request_body = "10MiB"
request_id = false

[[listeners]]
name = "secure"
bind = "127.0.0.1:0"
protocol = "https"
tls = {{ certificates = [{{ cert = "{cert}", key = "{key}" }}], min_version = "1.3" }}

[[listeners]]
name = "fwd"
bind = "127.0.0.1:0"
forward = {{ allow_private = true, users = [{{ name = "alice", password_hash = "{hash}" }}] }}

[[listeners]]
name = "tcp"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "c"

[[routes]]
name = "app"
listeners = ["front", "secure"]
host = ["localhost", "*.example.com"]
path_prefix = "/app"
methods = ["get"]
cluster = "c"

[[routes]]
listeners = ["front"]
path = "/down"
respond = {{ status = 503, body = "down\n", headers = {{ "retry-after" = "60" }} }}

[[routes]]
listeners = ["front"]
redirect = {{ location = "https://{{host}}{{request_uri}}" }}

[[clusters]]
name = "c"
endpoints = ["{origin}", {{ address = "127.0.0.1:1", weight = 2 }}]
lb = "ring_hash"
hash_key = "cookie:session"
health_check = {{ interval = "1s", path = "/" }}
retry = {{ max_retries = 1 }}
sticky = {{ cookie = "srv", secret = "sticky-secret-value" }}
"#,
        cert = cert.display(),
        key = key.display(),
        origin = origin.addr,
    );
    let p = TestProxy::start(&text).await;
    let a = p.proxy.admin_addr().await.unwrap();

    // The TOML answer, saved to a file, passes the real binary's `pylon check`.
    let answer = config_answer(a, None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/toml"));
    let hash_header = answer.header("x-pylon-config-hash").unwrap().to_owned();
    let toml = answer.text();
    for secret in [TOKEN, hash.as_str(), "sticky-secret-value"] {
        assert!(!toml.contains(secret), "{secret} shown:\n{toml}");
    }
    let saved = temp_dir().join("effective.toml");
    std::fs::write(&saved, &toml).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_pylon"))
        .arg("check")
        .arg(&saved)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "pylon check refused the effective config:\n{}\n---\n{toml}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("4 listener(s)"),
        "{check:?}"
    );

    // It means what the original file means, secrets aside.
    let original = pylon_config::parse(&text, "original.toml").unwrap();
    let back = pylon_config::load_file(&saved).unwrap();
    let doc = |c: &pylon_config::Config| {
        serde_json::to_value(pylon_config::effective::document(c)).unwrap()
    };
    assert_eq!(doc(&back), doc(&original));

    // JSON on request: the same keys and values as the TOML, no Rust shapes.
    let answer = config_answer(a, Some("text/html, application/json;q=0.9")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(
        answer.header("x-pylon-config-hash"),
        Some(hash_header.as_str())
    );
    let json_text = answer.text();
    for shape in RUST_SHAPES.split(' ') {
        assert!(!json_text.contains(shape), "{shape} in {json_text}");
        assert!(!toml.contains(shape), "{shape} in {toml}");
    }
    let json: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(json, doc(&back), "JSON and TOML hold the same document");
    assert_eq!(json["access_log"]["path"], "stderr");
    assert_eq!(json["listeners"][0]["bind"], "127.0.0.1:0");
    assert_eq!(json["listeners"][0]["max_request_body"], "10MiB");
    assert_eq!(json["listeners"][0]["request_id"], false);
    assert_eq!(
        json["listeners"][1]["tls"]["certificates"][0]["cert"],
        cert.display().to_string()
    );
    assert_eq!(json["routes"][0]["methods"][0], "GET");
    assert_eq!(json["routes"][1]["respond"]["status"], 503);
    assert_eq!(json["routes"][2]["redirect"]["status"], 302);
    assert_eq!(json["clusters"][0]["lb"], "ring_hash");
    assert_eq!(json["clusters"][0]["endpoints"][1]["weight"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_405_answers_name_the_methods_the_path_takes() {
    let p = TestProxy::start(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n[access_log]\nenabled = false\n[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\n"
    ))
    .await;
    let a = p.proxy.admin_addr().await.unwrap();
    for (method, path, allow) in [
        (Method::POST, "/config", "GET"),
        (Method::PUT, "/metrics", "GET"),
        (Method::DELETE, "/clusters", "GET"),
        (Method::POST, "/healthz", "GET"),
        (Method::POST, "/readyz", "GET"),
        (Method::GET, "/reload", "POST"),
        (Method::GET, "/clusters/c/endpoints/e/drain", "POST"),
        (Method::DELETE, "/clusters/c/endpoints/e/undrain", "POST"),
        (Method::POST, "/log-level", "PUT"),
    ] {
        let r = admin(a, method.clone(), path, true, "").await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
    // Unknown paths are 404 without `Allow`.
    let r = admin(a, Method::POST, "/clusters/c/endpoints/x/remove", true, "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("allow"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_beyond_loopback_needs_a_token() {
    let err = pylon_config::parse(
        "[admin]\nbind = \"0.0.0.0:9901\"\n[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\n[[routes]]\nrespond = { body = \"x\" }\n",
        "admin.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("admin.toml:2") && err.contains("token"),
        "{err}"
    );
    let short = pylon_config::parse(
        "[admin]\ntoken = \"short\"\n[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\n[[routes]]\nrespond = { body = \"x\" }\n",
        "admin.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(short.contains("at least 16"), "{short}");
}

fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// An origin that streams back whatever a request sends, as it arrives (a
/// bidirectional gRPC call's shape).
async fn stream_echo_origin() -> Origin {
    Origin::start(|req: Request<hyper::body::Incoming>| async move {
        let body = req.into_body().map_err(|e| e.into()).boxed();
        http::Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap()
    })
    .await
}

/// A UDP echo server.
async fn udp_echo() -> SocketAddr {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

async fn udp_round_trip(s: &tokio::net::UdpSocket, text: &str) {
    s.send(text.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(DEADLINE, s.recv(&mut buf))
        .await
        .expect("udp echo in time")
        .unwrap();
    assert_eq!(&buf[..n], text.as_bytes());
}

/// A TCP echo server.
async fn tcp_echo() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Another address for the TCP server at `to`: every connection is relayed there.
async fn tcp_forward(to: SocketAddr) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                }
            });
        }
    });
    addr
}

struct Backends {
    ws: SocketAddr,
    grpc: SocketAddr,
    /// The gRPC origin again, through another loopback address.
    grpc_alias: SocketAddr,
    tcp: SocketAddr,
    udp: SocketAddr,
    web: SocketAddr,
    spare: SocketAddr,
}

/// The config of round `i`: the routes and listeners the long-lived streams use stay
/// the same, while the clusters behind them change every round (an endpoint's weight,
/// a second endpoint to the same backend, a timeout); an extra route, the `web`
/// cluster's endpoints and a side listener change too. The `steady` cluster never
/// changes.
fn round_config(b: &Backends, i: usize, grace: &str, long_routes: bool) -> String {
    let web = if i.is_multiple_of(2) {
        format!("\"{}\"", b.web)
    } else {
        format!("\"{}\", \"{}\"", b.web, b.spare)
    };
    let weight = 1 + i % 2;
    // The gRPC backend also listens on another loopback address on odd rounds' extra
    // endpoint: the same origin, reached twice.
    let grpc = if i.is_multiple_of(2) {
        format!("\"{}\"", b.grpc)
    } else {
        format!(
            "\"{}\", {{ address = \"{}\", weight = 2 }}",
            b.grpc, b.grpc_alias
        )
    };
    let timeout = 1 + i % 3;
    // The routes the long-lived streams use.
    let long = if long_routes {
        r#"
[[routes]]
name = "ws"
listeners = ["front"]
path_prefix = "/ws"
cluster = "ws"

[[routes]]
name = "grpc"
listeners = ["front"]
path_prefix = "/test.Echo/"
grpc = true
cluster = "grpc"
"#
    } else {
        ""
    };
    format!(
        r#"
[server]
reload_grace = "{grace}"

[admin]
bind = "127.0.0.1:0"
token = "{TOKEN}"

[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[listeners]]
name = "side-{side}"
bind = "127.0.0.1:0"

[[listeners]]
name = "tunnel"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "tcp"

[[listeners]]
name = "datagrams"
bind = "127.0.0.1:0"
protocol = "udp"
cluster = "udp"

{long}
[[routes]]
name = "extra"
listeners = ["front"]
path = "/extra"
respond = {{ body = "round {i}" }}

[[routes]]
name = "steady"
listeners = ["front"]
path = "/steady"
cluster = "steady"

[[routes]]
name = "web"
listeners = ["front", "side-{side}"]
cluster = "web"

[[clusters]]
name = "ws"
endpoints = [{{ address = "{ws}", weight = {weight} }}]

[[clusters]]
name = "grpc"
protocol = "h2c"
endpoints = [{grpc}]

[[clusters]]
name = "tcp"
connect_timeout = "{timeout}s"
endpoints = ["{tcp}"]

[[clusters]]
name = "udp"
endpoints = [{{ address = "{udp}", weight = {weight} }}]

[[clusters]]
name = "web"
endpoints = [{web}]

[[clusters]]
name = "steady"
endpoints = ["{steady}"]
"#,
        side = i % 2,
        ws = b.ws,
        tcp = b.tcp,
        udp = b.udp,
        steady = b.web,
    )
}

/// A bidirectional gRPC-shaped call over h2c: send one framed message, read it back.
struct Bidi {
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>,
    rx: hyper::body::Incoming,
}

impl Bidi {
    async fn open(front: SocketAddr) -> Bidi {
        let mut sender = h2_conn(front).await;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let req = Request::post("http://grpc.test/test.Echo/Chat")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(
                stream
                    .map_err(|e: std::convert::Infallible| e.into())
                    .boxed(),
            )
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        Bidi {
            tx,
            rx: resp.into_body(),
        }
    }

    async fn round_trip(&mut self, msg: &[u8]) {
        let f = frame(msg);
        self.tx.send(Ok(Frame::data(f.clone()))).await.unwrap();
        let mut got = BytesMut::new();
        while got.len() < f.len() {
            let frame = tokio::time::timeout(DEADLINE, self.rx.frame())
                .await
                .expect("gRPC stream answer in time")
                .expect("gRPC stream still open")
                .unwrap();
            if let Ok(d) = frame.into_data() {
                got.extend_from_slice(&d);
            }
        }
        assert_eq!(got.freeze(), f);
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn ws_round_trip<S>(ws: &mut WsClient<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    let m = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("echo in time")
        .expect("websocket still open")
        .unwrap();
    assert_eq!(m.into_text().unwrap().as_str(), text);
}

async fn tcp_round_trip(s: &mut tokio::net::TcpStream, text: &str) {
    s.write_all(text.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; text.len()];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut buf))
        .await
        .expect("tcp echo in time")
        .expect("tcp tunnel still open");
    assert_eq!(buf, text.as_bytes());
}

async fn backends() -> (Backends, Vec<Box<dyn std::any::Any + Send>>) {
    let ws = WsOrigin::start(WsBehaviour::Echo).await;
    let grpc = stream_echo_origin().await;
    let web = Origin::named("web").await;
    let spare = Origin::named("spare").await;
    let b = Backends {
        ws: ws.addr,
        grpc: grpc.addr,
        grpc_alias: tcp_forward(grpc.addr).await,
        tcp: tcp_echo().await,
        udp: udp_echo().await,
        web: web.addr,
        spare: spare.addr,
    };
    (
        b,
        vec![Box::new(ws), Box::new(grpc), Box::new(web), Box::new(spare)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_grpc_streams_tcp_tunnels_and_udp_sessions_flow_across_100_reloads() {
    let (b, _keep) = backends().await;
    let p = TestProxy::start(&round_config(&b, 0, "30s", true)).await;
    let a = p.proxy.admin_addr().await.unwrap();
    let front = p.addr("front");
    let mut ws = ws_connect(front, "/ws/chat").await.unwrap();
    let mut bidi = Bidi::open(front).await;
    let mut tcp = tokio::net::TcpStream::connect(p.addr("tunnel"))
        .await
        .unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.connect(p.addr("datagrams")).await.unwrap();
    let steady_before = p.proxy.cluster("steady").map(|c| Arc::as_ptr(&c));
    let mut ws_cluster_before = p.proxy.cluster("ws").map(|c| Arc::as_ptr(&c));

    for i in 1..=100 {
        let r = admin(
            a,
            Method::POST,
            "/reload",
            true,
            &round_config(&b, i, "30s", true),
        )
        .await;
        assert_eq!(r.status, 200, "round {i}: {}", r.text());
        // The clusters behind the long-lived streams were rebuilt, their routes and
        // listeners kept; the steady cluster was kept as it was.
        let changes: Vec<String> = r.json()["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        for cluster in ["ws", "grpc", "tcp", "udp"] {
            let rebuilt = format!("cluster {cluster}: built anew");
            assert!(changes.contains(&rebuilt), "round {i}: {changes:?}");
        }
        for kept in [
            "cluster steady",
            "route ws ",
            "route grpc ",
            "listener front",
            "listener tunnel",
            "listener datagrams",
        ] {
            assert!(
                !changes.iter().any(|c| c.starts_with(kept)),
                "round {i}: {kept} changed: {changes:?}"
            );
        }
        let ws_cluster = p.proxy.cluster("ws").map(|c| Arc::as_ptr(&c));
        assert_ne!(ws_cluster, ws_cluster_before, "round {i}: ws rebuilt");
        ws_cluster_before = ws_cluster;
        // The new config is in force...
        assert_eq!(get(front, "/extra").await.text(), format!("round {i}"));
        assert_eq!(get(front, "/steady").await.text(), "web");
        let side = p.addr(&format!("side-{}", i % 2));
        assert_eq!(get(side, "/").await.status, 200);
        // ...and the long-lived streams never noticed.
        ws_round_trip(&mut ws, &format!("ws {i}")).await;
        bidi.round_trip(format!("grpc {i}").as_bytes()).await;
        tcp_round_trip(&mut tcp, &format!("tcp {i}\n")).await;
        udp_round_trip(&udp, &format!("udp {i}")).await;
    }
    // The cluster that never changed was kept as it was (pools, health), not rebuilt.
    assert_eq!(
        p.proxy.cluster("steady").map(|c| Arc::as_ptr(&c)),
        steady_before
    );
    let text = metrics(a).await;
    assert_eq!(sample(&text, "pylon_config_reloads_ok_total"), Some(100.0));
    assert_eq!(
        sample(&text, "pylon_config_reloads_failed_total"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, r#"pylon_listener_tunnels_active{listener="front"}"#),
        Some(1.0)
    );
    // New streams open through the rebuilt clusters.
    let mut fresh = Bidi::open(front).await;
    fresh.round_trip(b"after the reloads").await;
    ws_round_trip(&mut ws_connect(front, "/ws/chat").await.unwrap(), "new").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_gets_its_errors_back_and_traffic_is_unaffected() {
    let (b, _keep) = backends().await;
    let p = TestProxy::start(&round_config(&b, 0, "30s", true)).await;
    let a = p.proxy.admin_addr().await.unwrap();
    let front = p.addr("front");
    let served = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (served, failed, stop) = (Arc::clone(&served), Arc::clone(&failed), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut tx = h1_conn(front).await;
            while !stop.load(Ordering::SeqCst) {
                let req = Request::get("/extra")
                    .header("host", "t")
                    .body(empty())
                    .unwrap();
                match tx.send_request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = resp.into_body().collect().await;
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
        })
    };
    let broken =
        round_config(&b, 1, "30s", true).replace("cluster = \"web\"\n", "cluster = \"nowhere\"\n");
    let r = admin(a, Method::POST, "/reload", true, &broken).await;
    assert_eq!(r.status, 400);
    let j = r.json();
    assert_eq!(j["status"], "refused");
    let e = &j["errors"][0];
    assert_eq!(e["file"], "<POST /reload>");
    assert!(e["line"].as_u64().unwrap() > 0);
    assert!(e["key"].as_str().unwrap().starts_with("routes["), "{e}");
    assert!(e["message"].as_str().unwrap().contains("nowhere"), "{e}");
    // Not TOML at all.
    let r = admin(a, Method::POST, "/reload", true, "[[listeners\n").await;
    assert_eq!(r.status, 400);
    // A reload from the file, when the config came from none, is refused plainly.
    let r = admin(a, Method::POST, "/reload", true, "").await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("not started from a config file"));

    eventually("traffic kept flowing", || {
        served.load(Ordering::SeqCst) > 50
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    assert_eq!(
        get(front, "/extra").await.text(),
        "round 0",
        "the old config serves"
    );
    let text = metrics(a).await;
    assert_eq!(
        sample(&text, "pylon_config_reloads_failed_total"),
        Some(3.0)
    );
    assert_eq!(sample(&text, "pylon_config_reloads_ok_total"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_sockets_and_pools_and_a_removed_route_drains_after_its_grace() {
    let (b, _keep) = backends().await;
    let p = TestProxy::start(&round_config(&b, 0, "300ms", true)).await;
    let a = p.proxy.admin_addr().await.unwrap();
    let front = p.addr("front");
    let mut ws = ws_connect(front, "/ws/chat").await.unwrap();
    ws_round_trip(&mut ws, "before").await;
    let mut tcp = tokio::net::TcpStream::connect(p.addr("tunnel"))
        .await
        .unwrap();
    tcp_round_trip(&mut tcp, "before\n").await;
    let mut bidi = Bidi::open(front).await;
    bidi.round_trip(b"before").await;

    // The `ws` and `grpc` routes go away: their WebSocket and gRPC stream may go on for
    // the grace period, then close (the gRPC call with UNAVAILABLE); the TCP tunnel,
    // whose listener did not change, stays.
    let r = admin(
        a,
        Method::POST,
        "/reload",
        true,
        &round_config(&b, 2, "300ms", false),
    )
    .await;
    assert_eq!(r.status, 200);
    let changes = r.json()["changes"].to_string();
    assert!(changes.contains("route ws"), "{changes}");
    assert_eq!(p.addr("front"), front, "the front listener kept its socket");
    ws_round_trip(&mut ws, "during the grace period").await;
    bidi.round_trip(b"during the grace period").await;
    let trailers = tokio::time::timeout(DEADLINE, async {
        loop {
            let f = bidi.rx.frame().await.expect("trailers").unwrap();
            if let Ok(t) = f.into_trailers() {
                return t;
            }
        }
    })
    .await
    .expect("the removed route's gRPC stream ended");
    assert_eq!(trailers["grpc-status"], "14");
    assert_eq!(trailers["grpc-message"], "route_removed");
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the removed route's websocket was closed");
    tcp_round_trip(&mut tcp, "after\n").await;
    // New WebSocket handshakes no longer find the route.
    assert!(ws_connect(front, "/ws/chat").await.is_err());

    // The side listener moved (side-0 → side-1 → ... ): the old one's socket closed.
    let side0 = p.addr("side-0");
    let r = admin(
        a,
        Method::POST,
        "/reload",
        true,
        &round_config(&b, 1, "300ms", false),
    )
    .await;
    assert_eq!(r.status, 200);
    eventually_async("the removed listener refuses connections", || async {
        tokio::net::TcpStream::connect(side0).await.is_err()
    })
    .await;
    assert_eq!(get(p.addr("side-1"), "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_an_endpoint_stops_new_requests_while_its_in_flight_ones_finish() {
    let release = Arc::new(tokio::sync::Notify::new());
    let r = Arc::clone(&release);
    let slow = Origin::start(move |req: Request<hyper::body::Incoming>| {
        let r = Arc::clone(&r);
        async move {
            if req.uri().path() == "/slow" {
                r.notified().await;
            }
            http::Response::new(full("slow-origin"))
        }
    })
    .await;
    let other = Origin::named("other").await;
    let p = TestProxy::start(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n{}",
        simple_config(&[slow.addr, other.addr], "", "")
    ))
    .await;
    let a = p.proxy.admin_addr().await.unwrap();
    let front = p.addr("front");
    // Requests until one is held by the slow endpoint (each lands on one of the two).
    let mut held = None;
    while held.is_none() {
        let before = other.request_count();
        let t = tokio::spawn(async move { get(front, "/slow").await });
        eventually("the request reached an endpoint", || {
            slow.request_count() == 1 || other.request_count() > before
        })
        .await;
        if slow.request_count() == 1 {
            held = Some(t);
        } else {
            assert_eq!(t.await.unwrap().text(), "other");
        }
    }
    let path = format!("/clusters/c/endpoints/{}/drain", slow.addr);
    let d = admin(a, Method::POST, &path, false, "").await;
    assert_eq!(d.status, 200);
    assert_eq!(d.json()["in_flight"], 1);
    for _ in 0..20 {
        assert_eq!(get(front, "/").await.text(), "other");
    }
    assert_eq!(
        slow.request_count(),
        1,
        "no new request reached the drained endpoint"
    );
    assert_eq!(p.proxy.endpoint_available("c", slow.addr), Some(false));
    // Its request in flight finishes normally.
    release.notify_one();
    assert_eq!(held.unwrap().await.unwrap().text(), "slow-origin");
    // Undrained, it takes traffic again.
    let u = admin(
        a,
        Method::POST,
        &format!("/clusters/c/endpoints/{}/undrain", slow.addr),
        false,
        "",
    )
    .await;
    assert_eq!(u.status, 200);
    for _ in 0..4 {
        get(front, "/").await;
    }
    assert!(slow.request_count() > 1);
    assert_eq!(
        admin(
            a,
            Method::POST,
            "/clusters/c/endpoints/10.0.0.1:1/drain",
            false,
            ""
        )
        .await
        .status,
        404
    );
}
