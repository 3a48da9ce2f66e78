//! Limits and errors: every bad input and every upstream failure gets its precise
//! status and `x-pylon-error`, is counted, and the proxy keeps serving others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use pylon_proxy::http::error::ErrorKind;
use pylon_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn still_serves(p: &TestProxy) {
    let a = get(p.addr("front"), "/").await;
    assert_eq!(a.status, StatusCode::OK, "the proxy keeps serving others");
}

fn assert_error(a: &Answer, status: u16, reason: &str) {
    assert_eq!(a.status.as_u16(), status, "{a:?}");
    assert_eq!(a.header("x-pylon-error"), Some(reason), "{a:?}");
    assert!(
        a.text().contains(reason),
        "short body names the reason: {}",
        a.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limits_answer_414_431_413() {
    let origin = Origin::echo().await;
    let cfg = simple_config(
        &[origin.addr],
        "max_uri_bytes = 100\nmax_headers = 20\nmax_header_bytes = \"2KiB\"\nmax_request_body = 1000",
        "",
    );
    let p = TestProxy::start(&cfg).await;
    let addr = p.addr("front");

    let a = get(addr, &format!("/{}", "a".repeat(200))).await;
    assert_error(&a, 414, "uri_too_long");

    let mut b = Request::get("/").header("host", "x");
    for i in 0..25 {
        b = b.header(format!("x-h{i}"), "v");
    }
    assert_error(
        &send_h1(addr, b.body(empty()).unwrap()).await,
        431,
        "too_many_headers",
    );

    let req = Request::get("/")
        .header("host", "x")
        .header("x-big", "b".repeat(3000))
        .body(empty())
        .unwrap();
    assert_error(&send_h1(addr, req).await, 431, "headers_too_large");

    // Declared too large: refused before any byte of the body is read.
    let req = Request::post("/")
        .header("host", "x")
        .body(body(vec![b'x'; 1001]))
        .unwrap();
    assert_error(&send_h1(addr, req).await, 413, "body_too_large");

    // Chunked, no length declared: cut off when the limit is crossed.
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> =
        (0..20)
            .map(|_| Ok(hyper::body::Frame::data(Bytes::from(vec![b'y'; 100]))))
            .collect();
    let req = Request::post("/")
        .header("host", "x")
        .body(BodyExt::boxed(http_body_util::StreamBody::new(
            futures_util::stream::iter(chunks),
        )))
        .unwrap();
    assert_error(&send_h1(addr, req).await, 413, "body_too_large");

    // Same limits over h2c.
    let req = Request::get(format!("http://x/{}", "a".repeat(200)))
        .body(empty())
        .unwrap();
    assert_error(&send_h2(addr, req).await, 414, "uri_too_long");

    // Within the limits everything passes.
    let req = Request::post("/")
        .header("host", "x")
        .body(body(vec![b'x'; 1000]))
        .unwrap();
    let a = send_h1(addr, req).await;
    assert_eq!(a.json()["body_len"], 1000);

    let m = p.proxy.metrics();
    assert_eq!(m.errors(ErrorKind::UriTooLong), 2);
    assert_eq!(m.errors(ErrorKind::TooManyHeaders), 1);
    assert_eq!(m.errors(ErrorKind::HeadersTooLarge), 1);
    assert_eq!(m.errors(ErrorKind::BodyTooLarge), 2);
    assert!(
        m.render()
            .contains("pylon_proxy_errors_total{reason=\"body_too_large\"} 2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_never_reach_the_origin() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let addr = p.addr("front");

    let out = raw(addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("X-Pylon-Error: missing_host"), "{out}");

    let out = raw(addr, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("X-Pylon-Error: malformed_request"), "{out}");

    let out = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    let out = raw(addr, b"GE T / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    let out = raw(addr, b"GET / HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    assert_eq!(origin.request_count(), 0, "nothing malformed was forwarded");
    still_serves(&p).await;
    let m = p.proxy.metrics();
    assert!(m.errors(ErrorKind::MalformedRequest) >= 4, "{}", m.render());
    assert_eq!(m.errors(ErrorKind::MissingHost), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502() {
    let dead = closed_port();
    let origin = Origin::named("alive").await;
    let cfg = format!(
        r#"
access_log = {{ enabled = false }}
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
[[routes]]
path_prefix = "/dead"
cluster = "dead"
[[routes]]
cluster = "c"
[[clusters]]
name = "dead"
endpoints = ["{dead}"]
[[clusters]]
name = "c"
endpoints = ["{}"]
"#,
        origin.addr
    );
    let p = TestProxy::start(&cfg).await;
    assert_error(
        &get(p.addr("front"), "/dead").await,
        502,
        "upstream_connect_failed",
    );
    still_serves(&p).await;
    assert_eq!(p.proxy.metrics().errors(ErrorKind::ConnectFailed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_never_answers_is_504() {
    let (hold_tx, _hold_rx) = tokio::sync::broadcast::channel::<()>(1);
    let tx = hold_tx.clone();
    let silent = RawOrigin::start(move |mut s: TcpStream| {
        let mut rx = tx.subscribe();
        async move {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = rx.recv().await; // hold the connection open, answer nothing
        }
    })
    .await;
    let p = TestProxy::start(&simple_config(
        &[silent.addr],
        "",
        "response_timeout = \"300ms\"",
    ))
    .await;
    assert_error(
        &get(p.addr("front"), "/").await,
        504,
        "upstream_response_timeout",
    );
    assert_eq!(p.proxy.metrics().errors(ErrorKind::ResponseTimeout), 1);
}

/// One client connection's requests share its timer for their response timeouts
/// (`conn::ResponseTimer`): a request answered, then one the upstream never answers
/// (504 at its own deadline, not a later or earlier one), then one answered again,
/// all on one keep-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connections_requests_each_get_their_response_timeout() {
    let (hold_tx, _hold_rx) = tokio::sync::broadcast::channel::<()>(1);
    let tx = hold_tx.clone();
    // Answers each request on the connection, except one for `/silent`, which it holds.
    let origin = RawOrigin::start(move |mut s: TcpStream| {
        let mut rx = tx.subscribe();
        async move {
            let mut buf = Vec::new();
            loop {
                let mut chunk = [0u8; 1024];
                let n = match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                buf.drain(..end + 4);
                if head.starts_with("GET /silent ") {
                    let _ = rx.recv().await;
                    return;
                }
                let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let p = TestProxy::start(&simple_config(
        &[origin.addr],
        "",
        "response_timeout = \"400ms\"",
    ))
    .await;
    let mut conn = h1_conn(p.addr("front")).await;
    let ask = |path: &str| {
        Request::get(path)
            .header("host", "x")
            .body(empty())
            .unwrap()
    };
    for round in 0..2 {
        conn.ready().await.unwrap();
        let ok = collect(conn.send_request(ask("/a")).await.unwrap()).await;
        assert_eq!(ok.status, StatusCode::OK, "round {round}: {ok:?}");
        conn.ready().await.unwrap();
        let started = std::time::Instant::now();
        let answer =
            tokio::time::timeout(Duration::from_secs(10), conn.send_request(ask("/silent")))
                .await
                .expect("answered within 10 s")
                .unwrap();
        let timed_out = collect(answer).await;
        let took = started.elapsed();
        assert_error(&timed_out, 504, "upstream_response_timeout");
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(5),
            "round {round}: answered after {took:?}, the timeout is 400 ms"
        );
    }
    conn.ready().await.unwrap();
    let ok = collect(conn.send_request(ask("/b")).await.unwrap()).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(p.proxy.metrics().errors(ErrorKind::ResponseTimeout), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_is_504() {
    // A listener with a full accept backlog that never accepts: new connects hang.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fillers.push(s);
    }
    let p = TestProxy::start(&simple_config(&[addr], "", "connect_timeout = \"200ms\"")).await;
    assert_error(
        &get(p.addr("front"), "/").await,
        504,
        "upstream_connect_timeout",
    );
    drop(fillers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_garbage_from_upstream_are_502() {
    let reset = RawOrigin::start(|mut s: TcpStream| async move {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        drop(s); // close without answering
    })
    .await;
    let garbage = RawOrigin::start(|mut s: TcpStream| async move {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
        let _ = s.shutdown().await;
    })
    .await;
    let origin = Origin::named("alive").await;
    let cfg = format!(
        r#"
access_log = {{ enabled = false }}
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
[[routes]]
path = "/reset"
cluster = "reset"
[[routes]]
path = "/garbage"
cluster = "garbage"
[[routes]]
cluster = "c"
[[clusters]]
name = "reset"
endpoints = ["{}"]
[[clusters]]
name = "garbage"
endpoints = ["{}"]
[[clusters]]
name = "c"
endpoints = ["{}"]
"#,
        reset.addr, garbage.addr, origin.addr
    );
    let p = TestProxy::start(&cfg).await;
    assert_error(&get(p.addr("front"), "/reset").await, 502, "upstream_reset");
    assert_error(
        &get(p.addr("front"), "/garbage").await,
        502,
        "upstream_invalid_response",
    );
    // Over h2c too.
    let req = Request::get("http://x/reset").body(empty()).unwrap();
    assert_error(&send_h2(p.addr("front"), req).await, 502, "upstream_reset");
    still_serves(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_is_cut_off_and_idle_connections_close() {
    let origin = Origin::named("o").await;
    let cfg = simple_config(
        &[origin.addr],
        "header_read_timeout = \"300ms\"\nidle_timeout = \"300ms\"",
        "",
    );
    let p = TestProxy::start(&cfg).await;
    let addr = p.addr("front");

    // Slowloris: half a request head, then nothing. Pylon closes the connection.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let out = read_to_close(&mut s).await;
    assert!(
        out.is_empty(),
        "no answer to a request never finished: {out}"
    );

    // An idle keep-alive connection is closed after the idle timeout.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // An h2c connection that goes idle is closed too (GOAWAY, then EOF).
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let _ = read_to_close(&mut s).await;

    still_serves(&p).await;
    assert_eq!(p.proxy.metrics().errors(ErrorKind::HeaderTimeout), 1);
    eventually("all connections closed", || p.proxy.live_connections() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_going_away_mid_upload_does_not_hurt_others() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let addr = p.addr("front");
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial")
            .await
            .unwrap();
        drop(s);
    }
    still_serves(&p).await;
    eventually("aborted connections cleaned up", || {
        p.proxy.live_connections() == 0
    })
    .await;
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_killed_mid_response_truncates_cleanly_and_is_counted() {
    // Sends a head promising 100,000 bytes, then 10,000 of them, then dies (the process
    // is gone: the socket is reset) once the client has the head: a reset that came
    // before Pylon read the head would discard it unread, and the client would get a 502
    // instead of a truncation.
    let head_seen = Arc::new(tokio::sync::Notify::new());
    let die = Arc::clone(&head_seen);
    let dying = RawOrigin::start(move |mut s: TcpStream| {
        let die = Arc::clone(&die);
        async move {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                .await;
            let _ = s.write_all(&[b'x'; 10_000]).await;
            let _ = s.flush().await;
            die.notified().await;
            let _ = socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO));
            drop(s);
        }
    })
    .await;
    let p = TestProxy::start(&simple_config(&[dying.addr], "", "")).await;
    let front = p.addr("front");

    // HTTP/1.1: the client gets the head and part of the body, then the connection
    // closes: a clean truncation (short of content-length), never a hang.
    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the head arrives")
            .unwrap();
        assert!(
            n > 0,
            "closed before the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.extend_from_slice(&buf[..n]);
    }
    head_seen.notify_one();
    let out = String::from_utf8_lossy(&head).into_owned() + &read_to_close(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.len() < 100_000, "truncated: {} bytes", out.len());

    // HTTP/2: the stream is reset; the connection serves the next request.
    let mut h2 = h2_conn(front).await;
    let resp = h2
        .send_request(Request::get("http://a/").body(empty()).unwrap())
        .await
        .unwrap();
    head_seen.notify_one();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(
        body.is_err(),
        "the stream ends in an error, not a short success"
    );
    let again = h2
        .send_request(Request::get("http://a/").body(empty()).unwrap())
        .await;
    assert!(
        again.is_ok(),
        "the client connection survived the reset stream"
    );

    eventually("both truncations are counted", || {
        let counted: f64 = p
            .proxy
            .render_metrics()
            .lines()
            .filter(|l| l.starts_with("pylon_requests_incomplete_total{listener=\"front\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        counted >= 2.0
    })
    .await;
}

/// The reference's table of proxy-made answers names every reason Pylon can give, with
/// its status.
#[test]
fn every_proxy_made_error_is_documented_with_its_status() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config.md"))
        .expect("docs/config.md");
    for kind in ErrorKind::ALL {
        let reason = kind.as_str();
        let status = kind.status().as_u16();
        let row = doc.lines().find(|l| {
            l.starts_with(&format!("| {status} | `{reason}"))
                && l[format!("| {status} | `{reason}").len()..].starts_with(['`', ':'])
        });
        assert!(
            row.is_some(),
            "docs/config.md has no `| {status} | `{reason}` ...` row in its proxy-made errors table"
        );
    }
}
