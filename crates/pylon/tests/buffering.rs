//! Request and response buffering on routes: a chunked upload reaches the upstream whole
//! with its `Content-Length` (in memory, and spilled to a temporary file past `memory`);
//! an upload over `max` is refused with 413 before the upstream sees anything; an answer
//! read ahead through a small buffer arrives whole.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::Response;
use pylon_testkit::*;

async fn start(origin: std::net::SocketAddr) -> TestProxy {
    TestProxy::start(&format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/small/"
cluster = "c"
request_buffering = {{ max = "10KiB", memory = "1KiB" }}

[[routes]]
path_prefix = "/up/"
cluster = "c"
request_buffering = {{ max = "1MiB", memory = "1KiB" }}

[[routes]]
path_prefix = "/down/"
cluster = "c"
response_buffering = {{ max = "64KiB" }}

[[clusters]]
name = "c"
endpoints = ["{origin}"]
"#
    ))
    .await
}

/// A chunked POST of `n` bytes in 1 KiB chunks, over a raw connection.
async fn chunked_post(front: std::net::SocketAddr, path: &str, n: usize) -> String {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    let mut left = n;
    while left > 0 {
        let c = left.min(1024);
        req.extend_from_slice(format!("{c:x}\r\n").as_bytes());
        req.extend(std::iter::repeat_n(b'z', c));
        req.extend_from_slice(b"\r\n");
        left -= c;
    }
    req.extend_from_slice(b"0\r\n\r\n");
    raw(front, &req).await
}

fn json_of(answer: &str) -> serde_json::Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("{answer}"))
}

#[tokio::test]
async fn uploads_reach_the_upstream_whole_with_their_length() {
    let origin = Origin::echo().await;
    let p = start(origin.addr).await;
    let front = p.addr("front");
    // In memory (under 1 KiB) and spilled to a file (100 KiB).
    for n in [700usize, 100 * 1024] {
        let answer = chunked_post(front, "/up/x", n).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let seen = json_of(&answer);
        assert_eq!(seen["body_len"], n);
        assert_eq!(
            seen["headers"]["content-length"],
            serde_json::json!([n.to_string()])
        );
        assert!(seen["headers"].get("transfer-encoding").is_none());
    }
    // Over max: 413 and nothing upstream.
    let before = origin.request_count();
    let answer = chunked_post(front, "/small/x", 20 * 1024).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"));
    assert_eq!(origin.request_count(), before);
}

#[tokio::test]
async fn an_answer_read_ahead_through_a_small_buffer_arrives_whole() {
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let copy = big.clone();
    let origin = Origin::start(move |_req| {
        let b = copy.clone();
        async move { Response::new(full(b)) }
    })
    .await;
    let p = start(origin.addr).await;
    let a = get(p.addr("front"), "/down/file").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), big.len());
    assert!(a.body.as_ref() == big.as_slice());
}
