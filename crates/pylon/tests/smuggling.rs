//! Request smuggling: a table of raw HTTP/1.1 requests whose framing or syntax is
//! ambiguous or invalid. For each, Pylon answers with the status in the table, closes
//! the connection, and the origin (a raw TCP listener that records every byte) receives
//! nothing. Valid controls at the end prove the harness sees what is forwarded. An
//! upstream's protocol switch (101) opens a tunnel only for the WebSocket handshake Pylon
//! sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use pylon_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use pylon_testkit::smuggling::CASES;

/// A TCP origin that answers nothing and records every byte it receives.
async fn recording_origin() -> (RawOrigin, Arc<Mutex<Vec<u8>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let origin = RawOrigin::start(move |mut stream| {
        let s = Arc::clone(&s);
        async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                s.lock().unwrap().extend_from_slice(&buf[..n]);
                // Answer whatever arrives, so a forwarded request completes.
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nforwarded")
                    .await;
            }
        }
    })
    .await;
    (origin, seen)
}

/// Sends `bytes` and reads until Pylon closes; `closed` is false when the connection
/// was still open at the deadline (a failure for a refused request).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Sends `bytes` and reads until the first answer is whole (the connection may stay
/// open).
async fn send_until_answered(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        // The recording origin answers with a 9-byte body ("forwarded").
        if n == 0 || text.contains("\r\n\r\nforwarded") {
            return text;
        }
    }
}

async fn send(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_to_close(&mut s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_invalid_requests_are_refused_and_never_forwarded() {
    assert!(CASES.len() >= 60, "{} cases", CASES.len());
    let (origin, seen) = recording_origin().await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let front = p.addr("front");
    let mut failures = Vec::new();
    for (name, bytes, status) in CASES {
        let (out, closed) = exchange(front, bytes).await;
        let forwarded = std::mem::take(&mut *seen.lock().unwrap());
        let got = out
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok());
        if got != Some(*status) || !forwarded.is_empty() || !closed {
            failures.push(format!(
                "{name}: status {got:?} (want {status}), closed {closed}, origin received {:?}",
                String::from_utf8_lossy(&forwarded)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
    // The harness sees forwarding: valid requests of the same shapes do reach the origin,
    // each with exactly one framing, and what the origin receives is checked: (request,
    // what must be in it, what must not be).
    for (valid, present, absent) in [
        (
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"[..],
            &["content-length: 5\r\n", "\r\n\r\nhello"][..],
            &[][..],
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            &["transfer-encoding: chunked", "hello"],
            &[],
        ),
        (
            b"GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
            &["GET /x HTTP/1.1"],
            &[],
        ),
        (
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            &["OPTIONS * HTTP/1.1"],
            &[],
        ),
        // A GET's chunked body is forwarded whole, chunked, never dropped.
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            &["transfer-encoding: chunked", "5\r\nhello\r\n0\r\n\r\n"],
            &[],
        ),
        (
            b"HEAD / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            &["transfer-encoding: chunked", "5\r\nhello\r\n0\r\n\r\n"],
            &[],
        ),
        // Content-Length goes on as a plain decimal number: `010` is ten bytes, not eight.
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 010\r\nConnection: close\r\n\r\n0123456789",
            &["content-length: 10\r\n", "\r\n\r\n0123456789"],
            &["content-length: 010"],
        ),
        // The h2c upgrade's settings never go on, even when `Connection` does not name it.
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
            &["GET / HTTP/1.1"],
            &["http2-settings", "upgrade"],
        ),
    ] {
        let out = send_until_answered(front, valid).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let forwarded = String::from_utf8(std::mem::take(&mut *seen.lock().unwrap())).unwrap();
        let lower = forwarded.to_ascii_lowercase();
        let framings = lower.matches("content-length:").count()
            + lower.matches("transfer-encoding:").count();
        assert!(framings <= 1, "one framing at most: {forwarded}");
        for p in present {
            assert!(
                lower.contains(&p.to_ascii_lowercase()),
                "{p:?} reaches the origin: {forwarded:?}"
            );
        }
        for a in absent {
            assert!(!lower.contains(a), "{a:?} never reaches the origin: {forwarded:?}");
        }
    }
    // A conflicting head pipelined behind clean bodyless requests, in one write: the
    // clean ones are answered, the conflicting one is refused and never forwarded.
    let (out, closed) = exchange(
        front,
        b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\nPOST /third HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    let statuses: Vec<&str> = out
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|r| r.get(..3))
        .collect();
    assert_eq!(statuses, ["200", "200", "400"], "{out}");
    assert!(closed, "the connection is closed after the refusal");
    let forwarded = String::from_utf8(std::mem::take(&mut *seen.lock().unwrap())).unwrap();
    assert!(forwarded.contains("GET /second"), "{forwarded}");
    assert!(!forwarded.contains("/third"), "{forwarded}");
    let m = p.proxy.metrics();
    assert!(
        m.errors(pylon_proxy::http::error::ErrorKind::MalformedRequest) > 0,
        "{}",
        m.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_h2c_is_never_forwarded() {
    let origin = Origin::echo().await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let out = send(
        p.addr("front"),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body = out.split("\r\n\r\n").nth(1).unwrap().to_ascii_lowercase();
    assert!(!body.contains("\"upgrade\""), "{body}");
    assert!(!body.contains("http2-settings"), "{body}");
    assert!(!out.contains("HTTP/1.1 101"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_broken_after_it_started_streaming_is_named_for_what_it_is() {
    use pylon_proxy::http::error::ErrorKind;
    // The origin reads the whole body before answering.
    let origin = Origin::start(|req: http::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        match req.into_body().collect().await {
            Ok(b) => http::Response::new(full(format!("{} bytes", b.to_bytes().len()))),
            Err(_) => http::Response::new(full("cut")),
        }
    })
    .await;
    let p = TestProxy::start(&simple_config(
        &[origin.addr],
        "max_request_body = \"1KiB\"",
        "",
    ))
    .await;
    let front = p.addr("front");
    for (name, later, status, kind) in [
        (
            "bare LF after the last chunk",
            &b"0\r\n\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            "400",
            ErrorKind::MalformedRequest,
        ),
        (
            "a chunk over the limit",
            b"800\r\nabc",
            "413",
            ErrorKind::BodyTooLarge,
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(front).await.unwrap();
        s.write_all(
            b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
        // The request is on its way upstream before the rest arrives.
        eventually("the request reached the origin", || {
            origin.request_count() > 0
        })
        .await;
        s.write_all(later).await.unwrap();
        let out = tokio::time::timeout(DEADLINE, read_to_close(&mut s))
            .await
            .unwrap_or_else(|_| panic!("{name}: closed"));
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status}")),
            "{name}: {out}"
        );
        assert!(!out.contains("/second"), "{out}");
        assert_eq!(p.proxy.metrics().errors(kind), 1, "{name}");
        assert_eq!(
            p.proxy.metrics().errors(ErrorKind::ClientAborted),
            0,
            "{name}"
        );
    }
}

/// An origin that answers the first request head with `answer`, then echoes whatever
/// comes after it (what a tunnel would carry), recording it.
async fn switching_origin(
    answer: &'static str,
) -> (RawOrigin, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = std::sync::Arc::clone(&seen);
    let origin = RawOrigin::start(move |mut stream| {
        let s = std::sync::Arc::clone(&s);
        async move {
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            s.lock().unwrap().extend_from_slice(&head);
            let _ = stream.write_all(answer.as_bytes()).await;
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                s.lock().unwrap().extend_from_slice(&buf[..n]);
                let _ = stream.write_all(&buf[..n]).await;
            }
        }
    })
    .await;
    (origin, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_that_is_not_the_websocket_asked_for_opens_no_tunnel() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The client's key and its proper accept (RFC 6455 §1.3).
    const HANDSHAKE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    for (name, request, answer) in [
        (
            "h2c instead of websocket",
            HANDSHAKE,
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        ),
        (
            "websocket without an accept",
            HANDSHAKE,
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ),
        (
            "websocket with a wrong accept",
            HANDSHAKE,
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        ),
        (
            "a switch nobody asked for",
            &b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        ),
    ] {
        let (origin, seen) = switching_origin(answer).await;
        let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
        let mut s = tokio::net::TcpStream::connect(p.addr("front"))
            .await
            .unwrap();
        s.write_all(request).await.unwrap();
        // What would ride the tunnel: an HTTP/2 preface and a request the route never saw.
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let out = tokio::time::timeout(DEADLINE, read_to_close(&mut s))
            .await
            .unwrap_or_else(|_| panic!("{name}: the connection is closed"));
        assert!(
            out.starts_with("HTTP/1.1 502"),
            "{name}: 502, not a tunnel: {out}"
        );
        assert!(
            out.contains("X-Pylon-Error: upstream_invalid_upgrade"),
            "{name}: {out}"
        );
        let got = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
        assert!(
            !got.contains("PRI *"),
            "{name}: nothing reached the origin through it: {got}"
        );
        assert_eq!(
            p.proxy
                .metrics()
                .errors(pylon_proxy::http::error::ErrorKind::UpgradeInvalid),
            1,
            "{name}"
        );
    }
    // The right answer opens the tunnel.
    let (origin, seen) = switching_origin(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    )
    .await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let mut s = tokio::net::TcpStream::connect(p.addr("front"))
        .await
        .unwrap();
    s.write_all(HANDSHAKE).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s.write_all(b"tunnelled").await.unwrap();
    let mut echo = [0u8; 9];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"tunnelled");
    assert!(String::from_utf8_lossy(&seen.lock().unwrap()).contains("tunnelled"));
}
