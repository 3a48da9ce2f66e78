//! Many and slow clients: the per-IP and process-wide connection limits close what is
//! over them at once (counted), and 5,000 slowloris connections leave a normal client
//! served, Pylon's memory bounded, and are all closed by the header-read timeout, after
//! which their memory goes back to the OS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pylon_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A keep-alive connection that has completed one request and stays open.
async fn idle_connection(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    s
}

/// Whether the server closes a fresh connection without answering.
async fn refused(addr: std::net::SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(DEADLINE, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// `defer_accept`, on by default for HTTP listeners: a connection that has sent nothing
/// stays in the kernel, so one opened after it that sends its request is accepted and
/// answered while the silent one is not yet Pylon's; once it speaks it is served as
/// any other. With `defer_accept = false` the silent one is accepted at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_accepted_once_it_sends_its_request() {
    let origin = Origin::named("o").await;
    let deferred = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let at_once =
        TestProxy::start(&simple_config(&[origin.addr], "defer_accept = false", "")).await;

    // The kernel hands a silent connection over after about a second (its first
    // SYN-ACK retransmission); a look taken later than that proves nothing, so it is
    // taken again on fresh connections.
    let front = deferred.addr("front");
    let mut looks = 0;
    let (mut silent, talker) = loop {
        looks += 1;
        assert!(
            looks <= 5,
            "no look within the kernel's deferral in five tries"
        );
        let opened = std::time::Instant::now();
        let silent = TcpStream::connect(front).await.unwrap();
        let talker = idle_connection(front).await;
        let live = deferred.proxy.live_connections();
        if opened.elapsed() < std::time::Duration::from_millis(800) {
            assert_eq!(
                live, 1,
                "only the connection that sent its request is accepted"
            );
            break (silent, talker);
        }
        drop((silent, talker));
        eventually("the connections are counted out", || {
            deferred.proxy.live_connections() == 0
        })
        .await;
    };
    silent
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(DEADLINE, silent.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(deferred.proxy.live_connections(), 2);
    drop(talker);

    // Off: accepted when the handshake completes, before the one opened after it.
    let front = at_once.addr("front");
    let _silent = TcpStream::connect(front).await.unwrap();
    let _talker = idle_connection(front).await;
    assert_eq!(at_once.proxy.live_connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_and_process_wide_connection_limits_close_the_excess() {
    let origin = Origin::named("o").await;
    let p = TestProxy::start(&format!(
        "[server]\nmax_connections = 6\n{}",
        simple_config(&[origin.addr], "max_connections_per_ip = 3", "")
    ))
    .await;
    let front = p.addr("front");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(idle_connection(front).await);
    }
    assert!(refused(front).await, "a fourth connection from 127.0.0.1");
    let m = p.proxy.metrics();
    assert_eq!(
        m.refused_per_ip.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // One closes: room for one more.
    drop(held.pop());
    eventually("the closed connection is counted out", || {
        p.proxy.live_connections() == 2
    })
    .await;
    held.push(idle_connection(front).await);

    // Another client IP (127.0.0.2) has its own allowance, within the process-wide 6.
    let other = |_: ()| async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        sock.connect(front).await.unwrap()
    };
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut s = other(()).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        others.push(s);
    }
    assert_eq!(p.proxy.live_connections(), 6);
    // From a third IP: the process-wide limit.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let mut s = sock.connect(front).await.unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let mut buf = [0u8; 64];
    assert!(matches!(
        tokio::time::timeout(DEADLINE, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    ));
    assert_eq!(
        m.refused_max_connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(
        m.render()
            .contains("pylon_connections_refused_total{reason=\"max_connections_per_ip\"} 1")
    );
}

/// Pylon's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_slow_clients_leave_a_normal_client_served_and_memory_bounded() {
    raise_fd_limit(20_000);
    let origin = Origin::named("o").await;
    let dir = temp_dir();
    let file = dir.join("pylon.toml");
    std::fs::write(
        &file,
        format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\nheader_read_timeout = \"3s\"\n[[routes]]\ncluster = \"c\"\n[[clusters]]\nname = \"c\"\nendpoints = [\"{}\"]\n",
            origin.addr
        ),
    )
    .unwrap();
    let p = PylonProcess::start(
        env!("CARGO_BIN_EXE_pylon"),
        &["run", "-c", file.to_str().unwrap()],
        None,
    );
    let front = p.addr("front");
    let pid = p.child.id();
    let admin: std::net::SocketAddr = p.admin_addr();
    let active = || async move {
        let text = get(admin, "/metrics").await.text();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("pylon_connections_active ")?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap()
    };
    let before = rss_bytes(pid);

    // 5,000 connections that start a request head and never finish it, opened in
    // batches that Pylon has accepted before the next (the kernel's accept queue
    // holds 4,096).
    let mut slow = Vec::new();
    for _ in 0..10 {
        for _ in 0..500 {
            let mut s = TcpStream::connect(front).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                .await
                .unwrap();
            slow.push(s);
        }
        let n = slow.len() as u64;
        eventually_async("Pylon accepted the batch", || async { active().await >= n }).await;
    }
    // A normal client is served meanwhile.
    assert_eq!(get(front, "/").await.text(), "o");
    let during = rss_bytes(pid);
    let per_connection = (during.saturating_sub(before)) / 5_000;
    assert!(
        during < before + 256 * 1024 * 1024,
        "RSS grew from {before} to {during} ({per_connection} bytes per slow connection)"
    );
    // Every slow connection is closed by the header-read timeout, without an answer.
    let mut closed = 0;
    for s in &mut slow {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            other => panic!("a slow connection got {other:?}"),
        }
    }
    assert_eq!(closed, 5_000);
    assert_eq!(get(front, "/").await.text(), "o");
    // Their memory goes back to the OS once the flood has ebbed (the allocator keeps
    // it otherwise): back within a quarter of what the flood took.
    let back_to = before + (during - before) / 4;
    eventually("the flood's memory is given back", || {
        rss_bytes(pid) <= back_to
    })
    .await;
    eprintln!(
        "RSS before {} KiB, with 5,000 slow connections {} KiB ({} bytes each), after {} KiB",
        before / 1024,
        during / 1024,
        per_connection,
        rss_bytes(pid) / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_after_the_send_timeout() {
    let big = bytes::Bytes::from(vec![b'x'; 32 << 20]);
    let origin = Origin::start(move |_req| {
        let big = big.clone();
        async move { http::Response::new(full(big)) }
    })
    .await;
    let p = TestProxy::start(&simple_config(
        &[origin.addr],
        "send_timeout = \"300ms\"",
        "",
    ))
    .await;
    let front = p.addr("front");
    // Asks for 32 MiB and reads none of it: Pylon's writes block once the socket
    // buffers are full.
    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    eventually("the slow reader is disconnected", || {
        p.proxy
            .metrics()
            .errors(pylon_proxy::http::error::ErrorKind::SendTimeout)
            == 1
    })
    .await;
    eventually("its connection is gone", || p.proxy.live_connections() == 0).await;
    // A reading client gets the whole answer.
    let a = get(front, "/").await;
    assert_eq!(a.body.len(), 32 << 20);
    drop(s);
}

/// Sends `request`, ends the sending side (`shutdown(SHUT_WR)`, as `nc` does) and
/// reads until the server closes.
async fn half_closed_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    s.shutdown().await.unwrap();
    tokio::time::timeout(DEADLINE, read_to_close(&mut s))
        .await
        .expect("the server closes after answering")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_half_close_after_their_request_get_their_answer() {
    // The origin answers after reading the whole body, a moment after the client has
    // already closed its side.
    let origin = Origin::start(|req: http::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let body = req.into_body().collect().await.unwrap().to_bytes();
        http::Response::new(full(format!("got {} bytes", body.len())))
    })
    .await;
    let p = TestProxy::start(&simple_config(&[origin.addr], "", "")).await;
    let front = p.addr("front");
    for i in 0..30 {
        let out = half_closed_exchange(front, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 200"), "GET, try {i}: {out:?}");
        assert!(out.ends_with("got 0 bytes"), "{out}");
        let out = half_closed_exchange(
            front,
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200"), "POST, try {i}: {out:?}");
        assert!(out.ends_with("got 5 bytes"), "{out}");
        let out = half_closed_exchange(front, b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n").await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "malformed, try {i}: {out:?}"
        );
        assert!(out.contains("X-Pylon-Error: malformed_request"), "{out}");
    }
    // An HTTP/1.0 client that closes its side after the request.
    let out = half_closed_exchange(front, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.0 200"), "{out:?}");
    let m = p.proxy.metrics();
    assert_eq!(
        m.errors(pylon_proxy::http::error::ErrorKind::ClientAborted),
        0,
        "{}",
        m.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_abort_the_upstream_exchange_when_the_client_closes_its_side() {
    // Permits rather than a notification: a handler that starts waiting after the
    // release still goes on.
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let r = std::sync::Arc::clone(&release);
    // Whether `/wait` got to the origin (the aborted request may get there too, late).
    let waited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = std::sync::Arc::clone(&waited);
    let origin = Origin::start(move |req| {
        let r = std::sync::Arc::clone(&r);
        if req.uri().path() == "/wait" {
            w.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        async move {
            let _ = r.acquire().await;
            http::Response::new(full("late"))
        }
    })
    .await;
    let p = TestProxy::start(&format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/abort"
cluster = "c"
abort_on_client_close = true

[[routes]]
cluster = "c"

[[clusters]]
name = "c"
endpoints = ["{}"]
"#,
        origin.addr
    ))
    .await;
    let front = p.addr("front");
    // Opted in: the half-close aborts the exchange while the origin still thinks.
    let out = half_closed_exchange(front, b"GET /abort HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(
        out.starts_with("HTTP/1.1 400") && out.contains("X-Pylon-Error: client_aborted"),
        "{out:?}"
    );
    // Not opted in: the answer comes once the origin gives it.
    let waiting = tokio::spawn(half_closed_exchange(
        front,
        b"GET /wait HTTP/1.1\r\nHost: a\r\n\r\n",
    ));
    eventually("the second request reached the origin", || {
        waited.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    release.add_permits(16);
    let out = waiting.await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("late"),
        "{out:?}"
    );
}
