//! Pylon's HTTP/1.1 server on the wire: pipelined requests answered in order, HTTP/1.0
//! clients (close-delimited and keep-alive), a body the request path never read drained
//! so the connection carries on, a refused head answered with its status and reason,
//! `Date` on every answer, header names in the case they arrived with, and chunked
//! uploads forwarded with their framing as it came; and in a drain, a request sent on a
//! promised keep-alive or on a connection accepted just before the listener closed is
//! still answered. Idle keep-alive connections are parked (no task) and come back for
//! their next request, close at their idle timeout, and close when their listener
//! drains or goes on serving when it only restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use pylon_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A listener with a route answered by Pylon itself (`/static`) and the rest proxied.
fn config(origin: SocketAddr) -> String {
    format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
name = "static"
path = "/static"
respond = {{ body = "static" }}

[[routes]]
name = "app"
cluster = "c"

[[clusters]]
name = "c"
endpoints = ["{origin}"]
"#
    )
}

/// [`config`] with one more setting on the listener.
fn config_with(origin: SocketAddr, listener_setting: &str) -> String {
    config(origin).replace(
        "bind = \"127.0.0.1:0\"",
        &format!("bind = \"127.0.0.1:0\"\n{listener_setting}"),
    )
}

/// Moves the listener to another address with a reload: its old listening socket
/// closes (waited for) and its connections drain.
async fn move_listener(p: &TestProxy, origin: SocketAddr) {
    let front = p.addr("front");
    let moved = config(origin).replace("127.0.0.1:0", "127.0.0.2:0");
    p.proxy
        .reload(&pylon_config::parse(&moved, "t.toml").unwrap())
        .await
        .unwrap();
    eventually_async("the old listening socket closed", || async {
        TcpStream::connect(front).await.is_err()
    })
    .await;
}

/// Reads until `marker` has arrived `count` times.
async fn read_until(s: &mut TcpStream, marker: &str, count: usize) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while String::from_utf8_lossy(&got).matches(marker).count() < count {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("answers within the deadline")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&config(origin.addr)).await;
    let mut s = TcpStream::connect(p.addr("front")).await.unwrap();
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /static HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /three HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .unwrap();
    // Answers come in order, so the third one's body ends the read.
    let text = read_until(&mut s, "\"/three\"", 1).await;
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    let one = text.find("\"/one\"").expect("first answer");
    let two = text.find("static").expect("second answer");
    let three = text.find("\"/three\"").expect("third answer");
    assert!(one < two && two < three, "in order: {text}");
}

#[tokio::test]
async fn http10_clients_get_http10_answers_closed_or_kept_as_they_ask() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&config(origin.addr)).await;
    // No keep-alive: the answer, then the close.
    let answer = raw(p.addr("front"), b"GET /static HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.ends_with("static"), "{answer}");
    // Keep-alive asked for: said back, and a second request on the same connection.
    let mut s = TcpStream::connect(p.addr("front")).await.unwrap();
    s.write_all(b"GET /static HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let first = read_until(&mut s, "static", 1).await;
    assert!(first.starts_with("HTTP/1.0 200"), "{first}");
    assert!(
        first
            .to_ascii_lowercase()
            .contains("connection: keep-alive"),
        "{first}"
    );
    s.write_all(b"GET /static HTTP/1.0\r\n\r\n").await.unwrap();
    let second = read_to_close(&mut s).await;
    assert!(second.starts_with("HTTP/1.0 200"), "{second}");
}

#[tokio::test]
async fn a_body_the_route_never_reads_is_drained_and_the_connection_carries_on() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&config(origin.addr)).await;
    let mut s = TcpStream::connect(p.addr("front")).await.unwrap();
    // Pylon answers /static itself and never reads the body; it comes in two writes.
    s.write_all(b"POST /static HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'x'; 1000]).await.unwrap();
    let first = read_until(&mut s, "static", 1).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(!first.to_ascii_lowercase().contains("connection: close"));
    s.write_all(&[b'x'; 1000]).await.unwrap();
    s.write_all(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let second = read_until(&mut s, "\"/after\"", 1).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
}

#[tokio::test]
async fn a_refused_head_gets_its_status_and_reason_then_the_close() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&config(origin.addr)).await;
    let answer = raw(
        p.addr("front"),
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("\r\nX-Pylon-Error: malformed_request\r\n"),
        "{answer}"
    );
    assert!(answer.to_ascii_lowercase().contains("connection: close"));
    let answer = raw(p.addr("front"), b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("\r\nX-Pylon-Error: missing_host\r\n"),
        "{answer}"
    );
    assert_eq!(origin.request_count(), 0, "nothing reached the origin");
}

#[tokio::test]
async fn every_answer_carries_date() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&config(origin.addr)).await;
    for path in ["/static", "/proxied"] {
        let a = get(p.addr("front"), path).await;
        let date = a.header("date").expect("Date");
        assert!(date.ends_with(" GMT"), "{date}");
    }
}

#[tokio::test]
async fn request_trailers_that_arrive_with_the_last_chunk_reach_the_origin() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&config(origin.addr)).await;
    let mut s = TcpStream::connect(p.addr("front")).await.unwrap();
    // The whole body, its end and its trailer in one write.
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\nx-checksum: 42\r\n\r\n",
    )
    .await
    .unwrap();
    let text = read_until(&mut s, "\"/up\"", 1).await;
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let body = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let seen: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(seen["body_len"], 5, "{seen}");
    assert_eq!(seen["trailers"][0], "x-checksum=42", "{seen}");
}

#[tokio::test]
async fn header_names_keep_the_case_they_arrived_with_both_ways() {
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let origin = RawOrigin::start(move |mut s: TcpStream| {
        let seen_tx = seen_tx.clone();
        async move {
            let head = read_until(&mut s, "\r\n\r\n", 1).await;
            let _ = seen_tx.send(head);
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-lower-answer: 1\r\n\
                      ETag: \"v1\"\r\nX-CSRF-TOKEN: t\r\n\r\nok",
                )
                .await;
        }
    })
    .await;
    let p = TestProxy::start(&config(origin.addr)).await;
    let answer = raw(
        p.addr("front"),
        b"GET /case HTTP/1.1\r\nhost: a\r\nX-API-Key: k\r\nx-lower: 1\r\n\
          User-Agent: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let seen = seen_rx.recv().await.expect("the origin saw the request");
    for line in [
        "\r\nhost: a\r\n",
        "\r\nX-API-Key: k\r\n",
        "\r\nx-lower: 1\r\n",
        "\r\nUser-Agent: t\r\n",
    ] {
        assert!(seen.contains(line), "{line:?} kept its case: {seen}");
    }
    for line in [
        "\r\nx-lower-answer: 1\r\n",
        "\r\nETag: \"v1\"\r\n",
        "\r\nX-CSRF-TOKEN: t\r\n",
    ] {
        assert!(answer.contains(line), "{line:?} kept its case: {answer}");
    }
    // A field Pylon writes itself is in Title-Case.
    assert!(answer.contains("\r\nDate: "), "{answer}");
}

#[tokio::test]
async fn a_chunked_upload_reaches_the_origin_with_its_framing_as_it_came() {
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let origin = RawOrigin::start(move |mut s: TcpStream| {
        let seen_tx = seen_tx.clone();
        async move {
            // The head's blank line, then the trailer section's.
            let seen = read_until(&mut s, "\r\n\r\n", 2).await;
            let _ = seen_tx.send(seen);
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    })
    .await;
    let p = TestProxy::start(&config(origin.addr)).await;
    let answer = raw(
        p.addr("front"),
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          00A\r\n0123456789\r\n3;x=y\r\nabc\r\n0\r\nX-Sum: 13\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = seen_rx.recv().await.expect("the origin saw the upload");
    let body = &seen[seen.find("\r\n\r\n").unwrap() + 4..];
    // As it came, but for the extension, which is dropped.
    assert_eq!(
        body, "00A\r\n0123456789\r\n3\r\nabc\r\n0\r\nX-Sum: 13\r\n\r\n",
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_on_a_keep_alive_promised_before_a_graceful_close_is_answered() {
    const BIG: usize = 32 << 20;
    let origin = Origin::start(|req: http::Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/big" {
            http::Response::new(full(vec![b'x'; BIG]))
        } else {
            http::Response::new(full("small"))
        }
    })
    .await;
    let p = TestProxy::start(&config(origin.addr)).await;
    let front = p.addr("front");
    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // The head promises keep-alive; the body, not read on yet, fills the sockets.
    let head = read_until(&mut s, "\r\n\r\n", 1).await;
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let mut body = head.len() - head.find("\r\n\r\n").unwrap() - 4;
    // The listener moves to another address while the body goes out: its old socket
    // closes and its connections drain.
    move_listener(&p, origin.addr).await;
    let mut buf = vec![0u8; 1 << 16];
    while body < BIG {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("the body within the deadline")
            .unwrap();
        assert!(n > 0, "cut after {body} bytes");
        body += n;
    }
    assert_eq!(body, BIG);
    // The client takes the promise and sends its next request at once.
    s.write_all(b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
    assert!(answer.ends_with("small"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_accepted_just_before_its_listener_closes_still_gets_its_request_answered() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&config(origin.addr)).await;
    let front = p.addr("front");
    let mut s = TcpStream::connect(front).await.unwrap();
    eventually("the connection accepted", || {
        p.proxy.live_connections() == 1
    })
    .await;
    // The listener moves before the client's first byte: its old socket closes.
    move_listener(&p, origin.addr).await;
    s.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    // (And then the draining connection closed: `read_to_close` saw its end.)
    assert!(answer.contains("\"/first\""), "{answer}");
}

/// Idle keep-alive connections parked now, from the metrics.
fn parked(p: &TestProxy) -> u64 {
    p.proxy
        .render_metrics()
        .lines()
        .find_map(|l| l.strip_prefix("pylon_connections_parked "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the parked-connections gauge")
}

/// Sends a GET for `path` and reads its echoed answer.
async fn get_on(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_until(s, &format!("\"{path}\""), 1).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_parked_and_comes_back_for_each_next_request() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&config(origin.addr)).await;
    let mut s = TcpStream::connect(p.addr("front")).await.unwrap();
    for round in 0..3 {
        get_on(&mut s, &format!("/round{round}")).await;
        eventually("the quiet connection parked", || parked(&p) == 1).await;
        // Parked, it is still an open connection (limits and the drain count it).
        assert_eq!(p.proxy.live_connections(), 1);
    }
    // Two requests in one write: the second is read from the same wake-up.
    s.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let answers = read_until(&mut s, "\"/b\"", 1).await;
    assert!(answers.contains("\"/a\""), "{answers}");
    eventually("parked again", || parked(&p) == 1).await;
    drop(s);
    eventually("the client's close ends it", || {
        parked(&p) == 0 && p.proxy.live_connections() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_closes_at_its_idle_timeout() {
    let origin = Origin::echo().await;
    let toml = config_with(origin.addr, "idle_timeout = \"1s\"");
    let p = TestProxy::start(&toml).await;
    let mut s = TcpStream::connect(p.addr("front")).await.unwrap();
    get_on(&mut s, "/once").await;
    eventually("parked", || parked(&p) == 1).await;
    let rest = read_to_close(&mut s).await;
    assert_eq!(rest, "", "closed without a word, as an idle connection");
    eventually("gone", || {
        parked(&p) == 0 && p.proxy.live_connections() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_closes_when_its_listener_drains_and_the_stop_waits_for_nothing() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&config(origin.addr)).await;
    let front = p.addr("front");
    let mut s = TcpStream::connect(front).await.unwrap();
    get_on(&mut s, "/before").await;
    eventually("parked", || parked(&p) == 1).await;
    // The listener moves: its old socket closes and its connections drain.
    move_listener(&p, origin.addr).await;
    let rest = read_to_close(&mut s).await;
    assert_eq!(rest, "");
    eventually("gone", || {
        parked(&p) == 0 && p.proxy.live_connections() == 0
    })
    .await;

    // On the new address, a parked connection does not hold up a graceful stop.
    let mut s = TcpStream::connect(p.addr("front")).await.unwrap();
    get_on(&mut s, "/after").await;
    eventually("parked", || parked(&p) == 1).await;
    assert!(
        p.proxy.shutdown(DEADLINE).await,
        "every connection finished within the drain timeout"
    );
    assert_eq!(read_to_close(&mut s).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_served_on_when_its_listener_only_restarts() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&config(origin.addr)).await;
    let mut s = TcpStream::connect(p.addr("front")).await.unwrap();
    get_on(&mut s, "/before").await;
    eventually("parked", || parked(&p) == 1).await;
    // New settings on the same socket: the accept loop restarts, connections stay.
    let changed = config_with(origin.addr, "idle_timeout = \"61s\"");
    let report = p
        .proxy
        .reload(&pylon_config::parse(&changed, "t.toml").unwrap())
        .await
        .unwrap();
    let changes = report.changes.join("\n");
    assert!(
        changes.contains("same socket"),
        "the loop restarted: {changes}"
    );
    for path in ["/after", "/again"] {
        let answer = get_on(&mut s, path).await;
        assert!(!answer.contains("Connection: close"), "{answer}");
    }
}
