//! Upstream HTTP/1.1 as Pylon drives it from the request's own task: pooled
//! connections reused and checked for closure first, a request that a closing
//! connection dropped sent again only when that is safe, early answers to uploads,
//! interim answers, trailers, chunked answers passed through with their framing, and
//! the bytes an origin sends right after its 101.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use pylon_proxy::cluster::EndpointPool;

use futures_util::StreamExt;
use pylon_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one request head (requests here carry no body); `None` at EOF.
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn path_of(head: &str) -> String {
    head.split(' ').nth(1).unwrap_or("").to_owned()
}

/// Sends `request` on a new client connection and reads the answer to its end (the
/// request asks for `Connection: close`).
async fn ask(front: std::net::SocketAddr, request: &str) -> String {
    raw(front, request.as_bytes()).await
}

/// The pool of the only endpoint of cluster `c`.
fn pool(p: &TestProxy) -> Arc<EndpointPool> {
    Arc::clone(&p.proxy.cluster("c").unwrap().endpoints().pools[0])
}

fn get_close(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn idle_connections_are_reused_and_one_the_origin_closed_is_not() {
    // Answers every request with its path; after `/last` it closes the connection
    // without saying so (no `Connection: close`).
    let origin = RawOrigin::start(|mut s: TcpStream| async move {
        while let Some(head) = read_head(&mut s).await {
            let path = path_of(&head);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                path.len()
            );
            if s.write_all(answer.as_bytes()).await.is_err() || path == "/last" {
                return;
            }
        }
    })
    .await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let front = p.addr("front");
    for path in ["/a", "/b", "/last"] {
        let answer = ask(front, &get_close(path)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(path), "{answer}");
    }
    assert_eq!(
        origin.connections.load(Ordering::SeqCst),
        1,
        "one pooled connection carried all three requests"
    );
    let pool = pool(&p);
    eventually(
        "the pool sees that the origin closed its connection",
        || pool.ready_connections() == 0,
    )
    .await;
    let answer = ask(front, &get_close("/after")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("/after"), "{answer}");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_get_that_a_closing_connection_dropped_goes_on_a_new_one_and_a_post_does_not() {
    // Every connection answers its first request, then reads the next one and closes
    // without a byte of answer: a connection the origin was closing as the request
    // went out.
    let origin = RawOrigin::start(|mut s: TcpStream| async move {
        if let Some(head) = read_head(&mut s).await {
            let path = path_of(&head);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                path.len()
            );
            let _ = s.write_all(answer.as_bytes()).await;
        }
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
    })
    .await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let front = p.addr("front");
    let answer = ask(front, &get_close("/one")).await;
    assert!(answer.ends_with("/one"), "{answer}");
    // Idempotent: sent again on a new connection, and answered there.
    let answer = ask(front, &get_close("/two")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("/two"), "{answer}");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 2);
    // Not idempotent: the origin may have acted on it, so it is not sent again.
    let answer = ask(
        front,
        "POST /three HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("upstream_reset"), "{answer}");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_answer_before_the_upload_ends_reaches_the_client() {
    // Refuses the upload after its head (keeping the connection), then drains what
    // comes.
    let origin = RawOrigin::start(|mut s: TcpStream| async move {
        if read_head(&mut s).await.is_none() {
            return;
        }
        let _ = s
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
            .await;
        let mut buf = [0u8; 65536];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let mut s = TcpStream::connect(p.addr("front")).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'x'; 20_000]).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("big!") {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("the answer arrives")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 413"));
    // The connection that carried half an upload is not pooled again (the origin
    // would take the next request for more of the upload).
    assert_eq!(pool(&p).idle_count(), 0);
}

#[tokio::test]
async fn interim_answers_are_skipped_and_chunked_bodies_keep_their_trailers() {
    let origin = RawOrigin::start(|mut s: TcpStream| async move {
        while read_head(&mut s).await.is_some() {
            let _ = s
                .write_all(
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n\
                      HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
                      5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
                )
                .await;
        }
    })
    .await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let front = p.addr("front");
    // HTTP/1.1 client: the body, whole.
    let answer = ask(front, &get_close("/t")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains("Early"), "{answer}");
    assert!(answer.contains("hello world") || answer.contains("hello\r\n6\r\n world"));
    // HTTP/2 client: the body and the trailers.
    let mut tx = h2_conn(front).await;
    let req = http::Request::get("http://a/t").body(empty()).unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers.get("x-sum").unwrap(), "11");
    assert_eq!(&collected.to_bytes()[..], b"hello world");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bytes_an_origin_sends_with_its_101_reach_the_client() {
    // Accepts the WebSocket handshake and sends a text frame in the same write as the
    // 101, then echoes what comes.
    let origin = RawOrigin::start(|mut s: TcpStream| async move {
        let Some(head) = read_head(&mut s).await else {
            return;
        };
        let key = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_default();
        let accept =
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        out.extend_from_slice(&[0x81, 0x05]);
        out.extend_from_slice(b"hello");
        let _ = s.write_all(&out).await;
        let mut buf = [0u8; 1024];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let tcp = TcpStream::connect(p.addr("front")).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://a/ws", tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    let first = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("the origin's first message")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_text().unwrap().as_str(), "hello");
    let _ = ws.close(None).await;
}

#[tokio::test]
async fn a_chunked_answer_reaches_an_http11_client_with_its_framing_as_it_came() {
    // The first chunk comes with the head; the rest, with upper-case and zero-padded
    // sizes, an extension and a trailer, once the client has seen the first.
    let (go_tx, go_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let go_rx = Arc::new(tokio::sync::Mutex::new(go_rx));
    let origin = RawOrigin::start(move |mut s: TcpStream| {
        let go_rx = Arc::clone(&go_rx);
        async move {
            if read_head(&mut s).await.is_none() {
                return;
            }
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n00A\r\n01",
                )
                .await;
            if go_rx.lock().await.recv().await.is_none() {
                return;
            }
            let _ = s
                .write_all(
                    b"23456789\r\n1C;name=v\r\n0123456789abcdefghijklmnopqr\r\n\
                      00B\r\nhello world\r\n0\r\nX-Sum: 1\r\n\r\n",
                )
                .await;
        }
    })
    .await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let mut s = TcpStream::connect(p.addr("front")).await.unwrap();
    s.write_all(get_close("/c").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("first") {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("the first chunk within the deadline")
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    go_tx.send(()).unwrap();
    got.extend_from_slice(read_to_close(&mut s).await.as_bytes());
    let text = String::from_utf8(got).unwrap();
    let body = &text[text.find("\r\n\r\n").expect("a head") + 4..];
    // The chunks read with the head went out re-chunked; the rest as it came, but for
    // the extension, which is dropped.
    assert!(body.starts_with("5\r\nfirst\r\n"), "{body:?}");
    assert!(
        body.ends_with(
            "23456789\r\n1c\r\n0123456789abcdefghijklmnopqr\r\n\
             00B\r\nhello world\r\n0\r\nX-Sum: 1\r\n\r\n"
        ),
        "{body:?}"
    );
    // Still a sound body: the client-side decoder agrees on the data.
    let mut raw = bytes::BytesMut::from(body.as_bytes());
    let mut decoder = pylon_h1::ChunkedDecoder::new(u64::MAX);
    let mut data = Vec::new();
    loop {
        match decoder.step(&raw).unwrap() {
            pylon_h1::ChunkStep::Data(n) => data.extend_from_slice(&raw.split_to(n)),
            pylon_h1::ChunkStep::Framing { len, .. } => {
                let _ = raw.split_to(len);
            }
            pylon_h1::ChunkStep::End { .. } => break,
            pylon_h1::ChunkStep::NeedMore => panic!("cut: {body:?}"),
        }
    }
    assert_eq!(
        String::from_utf8(data).unwrap(),
        "first01234567890123456789abcdefghijklmnopqrhello world"
    );
}
