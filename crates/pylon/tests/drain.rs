//! Long-lived connections across a stop, a binary upgrade and a reload, through the
//! binary: WebSockets (HTTP/1.1 Upgrade and HTTP/2 extended CONNECT), a gRPC
//! bidirectional stream and a Layer 4 TCP session keep flowing after SIGTERM or a
//! handover until `drain_timeout`; then each WebSocket gets a Close frame 1001 "going
//! away" from Pylon on both sides (the client, and the origin), the gRPC stream ends
//! with UNAVAILABLE, the TCP session is closed, and each closure is logged with its
//! reason. A reload that removes a WebSocket's route closes it the same way at
//! `reload_grace`, logged `route_removed`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Frame;
use pylon_testkit::tungstenite::Message;
use pylon_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PYLON: &str = env!("CARGO_BIN_EXE_pylon");

/// A front listener with a WebSocket route, an L4 TCP listener, a drain timeout of
/// `drain` and the upgrade socket in `dir`. `with_ws_route` false removes the route.
fn config(b: &Backends, dir: &Path, drain: &str, with_ws_route: bool) -> String {
    let (ws, tcp, grpc) = (b.ws.addr, b.tcp, b.grpc.addr);
    let ws_route = if with_ws_route {
        r#"
[[routes]]
name = "ws"
path_prefix = "/ws"
cluster = "ws"
"#
    } else {
        ""
    };
    format!(
        r#"
[server]
drain_timeout = "{drain}"
reload_grace = "1s"
upgrade_socket = "{sock}"

[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[listeners]]
name = "tcp"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "echo"
{ws_route}
[[routes]]
name = "grpc"
grpc = true
cluster = "grpc"

[[routes]]
name = "hello"
respond = {{ body = "{hello}" }}

[[clusters]]
name = "ws"
endpoints = ["{ws}"]

[[clusters]]
name = "echo"
endpoints = ["{tcp}"]

[[clusters]]
name = "grpc"
protocol = "h2c"
endpoints = ["{grpc}"]
"#,
        sock = dir.join("upgrade.sock").display(),
        // The reload that removes the WebSocket route changes this one too.
        hello = if with_ws_route { "hello" } else { "bye" },
    )
}

struct Backends {
    ws: WsOrigin,
    tcp: SocketAddr,
    grpc: Origin,
}

async fn backends() -> Backends {
    Backends {
        ws: WsOrigin::start(WsBehaviour::Echo).await,
        tcp: tcp_echo().await,
        // Streams back whatever a call sends, as it arrives (a bidirectional gRPC
        // call's shape).
        grpc: Origin::start(|req: Request<hyper::body::Incoming>| async move {
            let body = req.into_body().map_err(|e| e.into()).boxed();
            http::Response::builder()
                .header("content-type", "application/grpc")
                .body(body)
                .unwrap()
        })
        .await,
    }
}

fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// A bidirectional gRPC-shaped call over h2c: messages sent and read back one by one
/// until the stream ends; returns the round trips after `mark` and the trailers'
/// `grpc-status` and `grpc-message`.
async fn grpc_converse(
    front: SocketAddr,
    mark: std::sync::Arc<std::sync::atomic::AtomicBool>,
    opened: tokio::sync::oneshot::Sender<()>,
) -> (usize, Option<(String, String)>) {
    let mut sender = h2_conn(front).await;
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(16);
    let stream =
        http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
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
    let _ = opened.send(());
    let mut body = resp.into_body();
    let mut after_mark = 0;
    let mut n = 0u64;
    loop {
        let f = grpc_frame(format!("m{n}").as_bytes());
        n += 1;
        if tx.send(Ok(Frame::data(f.clone()))).await.is_err() {
            return (after_mark, None);
        }
        let mut got = BytesMut::new();
        while got.len() < f.len() {
            let frame = match body.frame().await {
                Some(Ok(frame)) => frame,
                Some(Err(_)) | None => return (after_mark, None),
            };
            match frame.into_data() {
                Ok(d) => got.extend_from_slice(&d),
                Err(frame) => {
                    let t = frame.into_trailers().unwrap();
                    let text = |k: &str| {
                        t.get(k)
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default()
                    };
                    return (
                        after_mark,
                        Some((text("grpc-status"), text("grpc-message"))),
                    );
                }
            }
        }
        assert_eq!(got.freeze(), f);
        if mark.load(Ordering::SeqCst) {
            after_mark += 1;
        }
    }
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

/// How a WebSocket client's conversation ended.
#[derive(Debug)]
struct Ended {
    /// Round trips after `mark` was set (the stop or the handover).
    after_mark: usize,
    /// The Close frame Pylon sent: code and reason.
    close: Option<(u16, String)>,
}

/// Sends messages and reads their echoes back to back until the connection closes.
async fn converse<S>(
    mut ws: WsClient<S>,
    mark: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Ended
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut round_trips, mut after_mark) = (0, 0);
    loop {
        let text = format!("message {round_trips}");
        if ws.send(Message::text(text.clone())).await.is_err() {
            return Ended {
                after_mark,
                close: None,
            };
        }
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    assert_eq!(t.as_str(), text, "echoes come back in order");
                    round_trips += 1;
                    if mark.load(Ordering::SeqCst) {
                        after_mark += 1;
                    }
                    break;
                }
                Some(Ok(Message::Close(frame))) => {
                    // tungstenite answers the Close itself; read on to the end.
                    while let Some(Ok(_)) = ws.next().await {}
                    return Ended {
                        after_mark,
                        close: frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    return Ended {
                        after_mark,
                        close: None,
                    };
                }
            }
        }
    }
}

/// Echo round trips on a TCP session until it ends; counts those after `mark`.
async fn tcp_converse(
    mut s: tokio::net::TcpStream,
    mark: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> usize {
    let mut after_mark = 0;
    let mut buf = [0u8; 5];
    loop {
        if s.write_all(b"ping!").await.is_err() {
            return after_mark;
        }
        match s.read_exact(&mut buf).await {
            Ok(_) => {
                assert_eq!(&buf, b"ping!");
                if mark.load(Ordering::SeqCst) {
                    after_mark += 1;
                }
            }
            Err(_) => return after_mark,
        }
    }
}

fn logged(p: &PylonProcess, text: &str) -> bool {
    p.stderr.lock().unwrap().iter().any(|l| l.contains(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_keeps_websockets_and_tcp_sessions_until_the_drain_timeout_then_says_1001() {
    let b = backends().await;
    let origin = &b.ws;
    let dir = temp_dir();
    let file = dir.join("pylon.toml");
    std::fs::write(&file, config(&b, &dir, "3s", true)).unwrap();
    let mut p = PylonProcess::start(PYLON, &["run", "-c", file.to_str().unwrap()], None);
    let front = p.addr("front");
    let tcp = p.addr("tcp");

    let mark = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h1 = ws_connect(front, "/ws/one").await.unwrap();
    let h2 = ws_connect_h2(front, "/ws/two").await.unwrap();
    let session = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let h1 = tokio::spawn(converse(h1, mark.clone()));
    let h2 = tokio::spawn(converse(h2, mark.clone()));
    let session = tokio::spawn(tcp_converse(session, mark.clone()));
    let (opened, grpc_open) = tokio::sync::oneshot::channel();
    let grpc = tokio::spawn(grpc_converse(front, mark.clone(), opened));
    grpc_open.await.unwrap();
    eventually("both websockets are open at the origin", || {
        origin.connections.load(Ordering::SeqCst) == 2
    })
    .await;

    mark.store(true, Ordering::SeqCst);
    p.signal(libc::SIGTERM);
    let h1 = h1.await.unwrap();
    let h2 = h2.await.unwrap();
    let tcp_after = session.await.unwrap();
    let (grpc_after, grpc_end) = grpc.await.unwrap();
    assert!(
        logged(&p, "drain timeout reached"),
        "the websockets closed at the drain timeout, not before: {:#?}",
        p.stderr.lock().unwrap()
    );
    for (name, ended) in [("HTTP/1.1", &h1), ("HTTP/2", &h2)] {
        assert!(
            ended.after_mark > 10,
            "{name} websocket kept flowing while draining: {ended:?}"
        );
        let (code, reason) = ended.close.clone().expect("a Close frame, not a cut");
        assert_eq!(code, 1001, "{name}: {reason}");
        assert!(reason.contains("going away"), "{reason}");
    }
    assert!(tcp_after > 10, "the TCP session kept flowing: {tcp_after}");
    assert!(
        grpc_after > 10,
        "the gRPC stream kept flowing: {grpc_after}"
    );
    assert_eq!(
        grpc_end,
        Some(("14".to_owned(), "drain_timeout".to_owned())),
        "the gRPC stream ends UNAVAILABLE, which clients may retry"
    );
    eventually("the origin got Pylon's 1001", || {
        origin
            .last_close
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|(code, _)| *code == 1001)
    })
    .await;
    assert_eq!(p.wait_exit().code(), Some(0));
    let lines = p.stderr.lock().unwrap().clone();
    let ws_closed = lines
        .iter()
        .filter(|l| l.contains("websocket closed by the proxy") && l.contains("drain_timeout"))
        .count();
    assert_eq!(ws_closed, 2, "{lines:#?}");
    assert!(
        lines.iter().any(
            |l| l.contains("tcp connection closed by the proxy") && l.contains("drain_timeout")
        ),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_upgrade_the_old_process_keeps_its_websockets_until_its_drain_timeout() {
    let b = backends().await;
    let origin = &b.ws;
    let dir = temp_dir();
    let file = dir.join("pylon.toml");
    std::fs::write(&file, config(&b, &dir, "3s", true)).unwrap();
    let mut old = PylonProcess::start(PYLON, &["run", "-c", file.to_str().unwrap()], None);
    let front = old.addr("front");

    let mark = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ws = ws_connect(front, "/ws/old").await.unwrap();
    let ws = tokio::spawn(converse(ws, mark.clone()));
    eventually("the websocket is open at the origin", || {
        origin.connections.load(Ordering::SeqCst) == 1
    })
    .await;

    let new = PylonProcess::start(
        PYLON,
        &["run", "-c", file.to_str().unwrap(), "--upgrade"],
        None,
    );
    assert_eq!(new.addr("front"), front, "same socket");
    mark.store(true, Ordering::SeqCst);
    // A new connection meanwhile reaches the new process.
    let mut fresh = ws_connect(front, "/ws/new").await.unwrap();
    fresh.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        fresh.next().await.unwrap().unwrap(),
        Message::text("hi"),
        "new websockets are served"
    );

    let ended = ws.await.unwrap();
    assert!(
        ended.after_mark > 10,
        "the old websocket kept flowing after the handover: {ended:?}"
    );
    assert_eq!(
        ended.close.as_ref().map(|c| c.0),
        Some(1001),
        "then a Close 1001: {ended:?}\n{:#?}",
        old.stderr.lock().unwrap()
    );
    assert_eq!(old.wait_exit().code(), Some(0));
    assert!(logged(&old, "websocket closed by the proxy"));
    // The client reconnects, to the new process, and carries on.
    let mut again = ws_connect(front, "/ws/again").await.unwrap();
    again.send(Message::text("back")).await.unwrap();
    assert_eq!(again.next().await.unwrap().unwrap(), Message::text("back"));
    // Still served after the old one is gone: the new process answers.
    fresh.send(Message::text("still")).await.unwrap();
    assert_eq!(fresh.next().await.unwrap().unwrap(), Message::text("still"));
    drop(new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_the_route_closes_its_websockets_with_1001_after_the_grace() {
    let b = backends().await;
    let origin = &b.ws;
    let dir = temp_dir();
    let file = dir.join("pylon.toml");
    std::fs::write(&file, config(&b, &dir, "3s", true)).unwrap();
    let p = PylonProcess::start(PYLON, &["run", "-c", file.to_str().unwrap()], None);
    let front = p.addr("front");

    let mark = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ws = ws_connect(front, "/ws/x").await.unwrap();
    let ws = tokio::spawn(converse(ws, mark.clone()));
    eventually("the websocket is open at the origin", || {
        origin.connections.load(Ordering::SeqCst) == 1
    })
    .await;
    std::fs::write(&file, config(&b, &dir, "3s", false)).unwrap();
    mark.store(true, Ordering::SeqCst);
    p.signal(libc::SIGHUP);
    let ended = ws.await.unwrap();
    assert!(
        ended.after_mark > 10,
        "flowing through the grace period: {ended:?}"
    );
    let (code, reason) = ended.close.clone().expect("a Close frame");
    assert_eq!(code, 1001);
    assert!(reason.contains("route removed"), "{reason}");
    eventually("the route_removed line is logged", || {
        logged(&p, "websocket closed by the proxy") && logged(&p, "route_removed")
    })
    .await;
    eventually("the origin got Pylon's 1001", || {
        origin
            .last_close
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|(code, _)| *code == 1001)
    })
    .await;
    // The reload log counts the long-lived connections of each retired route.
    let lines = p.stderr.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.contains(
            "route ws (listener front): removed or changed; its 1 long-lived connection(s) close in 1s"
        )),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("route hello (listener front): removed or changed")),
        "a route without long-lived connections closes none: {lines:#?}"
    );
    // The process goes on serving.
    assert_eq!(get(front, "/").await.text(), "bye");
}

/// A keep-alive connection whose listening socket closes (a reload moved the listener)
/// drains: a request that then arrives on it is still answered, and a WebSocket
/// handshake among them becomes a working tunnel, not a `101` with `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_on_a_draining_keep_alive_connection_still_upgrades() {
    let origin = WsOrigin::start(WsBehaviour::Echo).await;
    let cfg = |bind: &str| {
        format!(
            r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "{bind}"

[[routes]]
cluster = "ws"

[[clusters]]
name = "ws"
endpoints = ["{}"]
"#,
            origin.addr
        )
    };
    let p = TestProxy::start(&cfg("127.0.0.1:0")).await;
    // Whether the drain has begun when the handshake arrives is up to the scheduler:
    // several rounds make it all but certain that some handshakes meet a draining
    // connection, and every one must upgrade.
    for round in 0..6 {
        let front = p.addr("front");
        let mut conn = tokio::net::TcpStream::connect(front).await.unwrap();
        // The connection carried a request and is idle, kept alive.
        conn.write_all(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "answer expected");
            seen.extend_from_slice(&buf[..n]);
        }
        // The listener moves: its old socket closes and its connections drain.
        p.proxy
            .reload(&pylon_config::parse(&cfg("127.0.0.1:0"), "t.toml").unwrap())
            .await
            .unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{front}/ws"), conn)
            .await
            .unwrap_or_else(|e| {
                panic!("round {round}: the handshake fails on the draining connection: {e}")
            });
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("still here")
        );
    }
}
