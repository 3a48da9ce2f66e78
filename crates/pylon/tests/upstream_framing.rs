//! Upstream answers with invalid framing or headers become 502 `upstream_invalid`
//! (never forwarded); the next request is served normally.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pylon_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// (name, raw response the origin sends)
const CASES: &[(&str, &[u8])] = &[
    (
        "cl_and_te",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "te_and_cl",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ),
    (
        "two_differing_cl",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ),
    (
        "cl_not_a_number",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
    ),
    (
        "cl_negative",
        b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello",
    ),
    (
        "te_gzip_only",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    ),
    (
        "te_chunked_not_last",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    ),
    (
        "te_gzip_chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "obs_fold",
        b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "space_before_colon",
        b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
    ),
    (
        "nul_in_value",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "bare_cr_in_value",
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "no_colon",
        b"HTTP/1.1 200 OK\r\nX-A b\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "bad_status_code",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "status_letters",
        b"HTTP/1.1 2xx OK\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "bad_version",
        b"HTTP/9.9 200 OK\r\nContent-Length: 0\r\n\r\n",
    ),
    ("not_http", b"SSH-2.0-OpenSSH_9.6\r\n"),
    (
        "bad_chunk_size",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_upstream_answers_become_502_and_are_never_forwarded() {
    let which = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = std::sync::Arc::clone(&which);
    let origin = RawOrigin::start(move |mut stream| {
        let w = std::sync::Arc::clone(&w);
        async move {
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|x| x == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let i = w.load(std::sync::atomic::Ordering::SeqCst);
            let answer: &[u8] = match CASES.get(i) {
                Some((_, a)) => a,
                None => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            };
            let _ = stream.write_all(answer).await;
            let _ = stream.shutdown().await;
        }
    })
    .await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let front = p.addr("front");
    let mut failures = Vec::new();
    for (i, (name, _)) in CASES.iter().enumerate() {
        which.store(i, std::sync::atomic::Ordering::SeqCst);
        let out = raw(
            front,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        if !out.starts_with("HTTP/1.1 502") || out.contains("hello") {
            failures.push(format!("{name}: {out:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    which.store(CASES.len(), std::sync::atomic::Ordering::SeqCst);
    let a = get(front, "/").await;
    assert_eq!((a.status.as_u16(), a.text().as_str()), (200, "ok"));
}
