//! WebSocket through Pylon: HTTP/1.1 Upgrade, HTTP/2 extended CONNECT (RFC 8441) and
//! HTTP/3 extended CONNECT (RFC 9220) clients, tokio-tungstenite origins; messages of
//! every kind, close codes, refusals, an origin dying mid-tunnel, idle tunnels, and
//! 1,000 tunnels at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use pylon_testkit::tungstenite::Message;
use pylon_testkit::tungstenite::protocol::CloseFrame;
use pylon_testkit::tungstenite::protocol::frame::coding::CloseCode;
use pylon_testkit::*;

fn config(origin: SocketAddr, route_extra: &str) -> String {
    format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
cluster = "ws"
{route_extra}

[[clusters]]
name = "ws"
endpoints = ["{origin}"]
"#
    )
}

async fn next_message<S>(ws: &mut WsClient<S>) -> Option<Message>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("no hang")
        {
            Some(Ok(Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            _ => return None,
        }
    }
}

async fn exchange_everything<S>(ws: &mut WsClient<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_message(ws).await, Some(Message::text("hello")));
    let binary = vec![0u8, 1, 2, 254, 255];
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(next_message(ws).await, Some(Message::binary(binary)));
    // A large message crosses many frames and reads.
    let big = "x".repeat(1 << 20);
    ws.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(next_message(ws).await, Some(Message::text(big)));
    // Fragmented: three frames, one message.
    use pylon_testkit::tungstenite::protocol::frame::Frame;
    use pylon_testkit::tungstenite::protocol::frame::coding::{Data, OpCode};
    ws.send(Message::Frame(Frame::message(
        "frag".as_bytes().to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        "men".as_bytes().to_vec(),
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        "ted".as_bytes().to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(next_message(ws).await, Some(Message::text("fragmented")));
    // Ping: the origin answers with a pong carrying the same payload.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(b"are you there".to_vec().into()));
    // A close code from the client reaches the origin.
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Library(4000),
        reason: "done here".into(),
    })))
    .await
    .unwrap();
    while let Ok(Some(_)) = tokio::time::timeout(DEADLINE, ws.next()).await {}
}

/// The origin closes with a code; the client sees it.
async fn origin_closes_with_a_code<S>(ws: &mut WsClient<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text("close 4001")).await.unwrap();
    match next_message(ws).await {
        Some(Message::Close(Some(f))) => {
            assert_eq!(f.code, CloseCode::Library(4001));
            assert_eq!(f.reason.as_str(), "origin says bye");
        }
        other => panic!("expected the origin's close frame, got {other:?}"),
    }
}

async fn close_codes_both_ways(origin: &WsOrigin, front: SocketAddr, h2: bool) {
    if h2 {
        let mut ws = ws_connect_h2(front, "/").await.unwrap();
        exchange_everything(&mut ws).await;
        let mut ws = ws_connect_h2(front, "/").await.unwrap();
        origin_closes_with_a_code(&mut ws).await;
    } else {
        let mut ws = ws_connect(front, "/").await.unwrap();
        exchange_everything(&mut ws).await;
        let mut ws = ws_connect(front, "/").await.unwrap();
        origin_closes_with_a_code(&mut ws).await;
    }
    eventually("the origin saw the client's close code", || {
        origin.last_close.lock().unwrap().clone() == Some((4000, "done here".to_string()))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http1_carries_every_kind_of_message() {
    let origin = WsOrigin::start(WsBehaviour::Echo).await;
    let p = TestProxy::start(&config(origin.addr, "")).await;
    close_codes_both_ways(&origin, p.addr("front"), false).await;
    let m = p.proxy.metrics();
    assert_eq!(
        m.tunnels_total.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_extended_connect_reaches_an_http1_origin() {
    let origin = WsOrigin::start(WsBehaviour::Echo).await;
    let p = TestProxy::start(&config(origin.addr, "")).await;
    close_codes_both_ways(&origin, p.addr("front"), true).await;
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_is_relayed_as_a_normal_answer() {
    let plain = Origin::named("not a websocket").await;
    let p = TestProxy::start(&config(plain.addr, "")).await;
    match ws_connect(p.addr("front"), "/").await {
        Err(pylon_testkit::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 200);
        }
        other => panic!(
            "expected the origin's plain answer, got {:?}",
            other.map(|_| ())
        ),
    }
    // Over HTTP/2 a 200 would mean "tunnel open": the refusal becomes a 502.
    assert_eq!(
        ws_connect_h2(p.addr("front"), "/").await.err(),
        Some(http::StatusCode::BAD_GATEWAY)
    );
    // Ordinary requests are unaffected.
    assert_eq!(get(p.addr("front"), "/").await.text(), "not a websocket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_turn_websockets_off() {
    let echo = Origin::echo().await;
    let p = TestProxy::start(&config(echo.addr, "websocket = false")).await;
    // HTTP/1.1: forwarded as a plain GET, without the upgrade headers.
    match ws_connect(p.addr("front"), "/").await {
        Err(pylon_testkit::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 200);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            assert!(!body.contains("\"upgrade\""), "{body}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // HTTP/2 extended CONNECT has no plain form: refused.
    assert_eq!(
        ws_connect_h2(p.addr("front"), "/").await.err(),
        Some(http::StatusCode::FORBIDDEN)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_connect_to_a_route_that_answers_itself_is_refused() {
    let p = TestProxy::start(
        r#"
[access_log]
enabled = false
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
[[routes]]
respond = { body = "not a tunnel" }
"#,
    )
    .await;
    // A 200 would tell the client its tunnel is open.
    assert_eq!(
        ws_connect_h2(p.addr("front"), "/").await.err(),
        Some(http::StatusCode::FORBIDDEN)
    );
    // An HTTP/1.1 Upgrade gets the plain answer, which is no switch.
    match ws_connect(p.addr("front"), "/").await {
        Err(pylon_testkit::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 200),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_dying_mid_tunnel_closes_the_client_without_a_hang() {
    let origin = WsOrigin::start(WsBehaviour::DieAfterFirst).await;
    let p = TestProxy::start(&config(origin.addr, "")).await;
    for h2 in [false, true] {
        let next = if h2 {
            let mut ws = ws_connect_h2(p.addr("front"), "/").await.unwrap();
            ws.send(Message::text("one")).await.unwrap();
            assert_eq!(next_message(&mut ws).await, Some(Message::text("one")));
            next_message(&mut ws).await
        } else {
            let mut ws = ws_connect(p.addr("front"), "/").await.unwrap();
            ws.send(Message::text("one")).await.unwrap();
            assert_eq!(next_message(&mut ws).await, Some(Message::text("one")));
            next_message(&mut ws).await
        };
        assert!(
            matches!(next, None | Some(Message::Close(_))),
            "h2 = {h2}: {next:?}"
        );
    }
    let m = p.proxy.metrics();
    eventually("tunnels closed", || {
        m.tunnels_active.load(std::sync::atomic::Ordering::Relaxed) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_its_own_timeout() {
    let origin = WsOrigin::start(WsBehaviour::Echo).await;
    let p = TestProxy::start(&config(origin.addr, "tunnel_idle_timeout = \"200ms\"")).await;
    let mut ws = ws_connect(p.addr("front"), "/").await.unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::text("one")));
    assert!(matches!(
        next_message(&mut ws).await,
        None | Some(Message::Close(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_websockets_at_once() {
    raise_fd_limit(8192);
    let origin = WsOrigin::start(WsBehaviour::Echo).await;
    let p = TestProxy::start(&config(origin.addr, "")).await;
    let front = p.addr("front");
    let mut clients = Vec::new();
    for i in 0..1000 {
        clients.push(tokio::spawn(async move {
            let mut ws = ws_connect(front, "/").await.unwrap();
            for j in 0..3 {
                let msg = format!("client {i} message {j}");
                ws.send(Message::text(msg.clone())).await.unwrap();
                assert_eq!(next_message(&mut ws).await, Some(Message::text(msg)));
            }
            ws
        }));
    }
    let mut open = Vec::new();
    for c in clients {
        open.push(c.await.unwrap());
    }
    let m = p.proxy.metrics();
    assert_eq!(
        m.tunnels_active.load(std::sync::atomic::Ordering::Relaxed),
        1000,
        "all open at once"
    );
    drop(open);
    eventually("all closed", || {
        m.tunnels_active.load(std::sync::atomic::Ordering::Relaxed) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstreams_get_extended_connect_from_either_client() {
    let origin = WsOrigin::start_h2(WsBehaviour::Echo).await;
    let cfg = config(origin.addr, "").replace("endpoints = [", "protocol = \"h2c\"\nendpoints = [");
    let p = TestProxy::start(&cfg).await;
    // An HTTP/1.1 Upgrade becomes an extended CONNECT; the accept key is Pylon's.
    close_codes_both_ways(&origin, p.addr("front"), false).await;
    // An extended CONNECT stays one.
    let mut ws = ws_connect_h2(p.addr("front"), "/").await.unwrap();
    ws.send(Message::text("over h2 both ways")).await.unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Some(Message::text("over h2 both ways"))
    );
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_tunnel_ends_at_its_maximum_lifetime() {
    let origin = WsOrigin::start(WsBehaviour::Echo).await;
    let p = TestProxy::start(&config(origin.addr, "tunnel_max_lifetime = \"300ms\"")).await;
    let mut ws = ws_connect(p.addr("front"), "/").await.unwrap();
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            if ws.send(Message::text("busy")).await.is_err() {
                return;
            }
            match tokio::time::timeout(std::time::Duration::from_millis(50), ws.next()).await {
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the tunnel was closed while busy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnels_access_log_line_is_written_when_it_ends_with_its_bytes() {
    let origin = WsOrigin::start(WsBehaviour::Echo).await;
    let log = temp_dir().join("ws-access.log");
    let cfg = config(origin.addr, "").replace(
        "[access_log]\nenabled = false",
        &format!("[access_log]\npath = \"{}\"", log.display()),
    );
    let p = TestProxy::start(&cfg).await;
    for h2 in [false, true] {
        let path = if h2 { "/over-h2" } else { "/over-h1" };
        if h2 {
            let mut ws = ws_connect_h2(p.addr("front"), path).await.unwrap();
            ws.send(Message::text("x".repeat(1000))).await.unwrap();
            assert!(next_message(&mut ws).await.is_some());
            ws.close(None).await.unwrap();
            while next_message(&mut ws).await.is_some() {}
        } else {
            let mut ws = ws_connect(p.addr("front"), path).await.unwrap();
            ws.send(Message::text("x".repeat(1000))).await.unwrap();
            assert!(next_message(&mut ws).await.is_some());
            ws.close(None).await.unwrap();
            while next_message(&mut ws).await.is_some() {}
        }
        let mut line = None;
        eventually("the tunnel's line is written", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            line = text
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .find(|v| v["path"] == path);
            line.is_some()
        })
        .await;
        let v = line.unwrap();
        // Frames both ways: the 1,000-byte message and the close, masked from the client.
        assert!(v["bytes_in"].as_u64().unwrap() > 1000, "{v}");
        assert!(v["bytes_out"].as_u64().unwrap() > 1000, "{v}");
        assert!(v["error"].is_null(), "{v}");
        assert_eq!(
            v["closed_by"], "client",
            "the client's Close went first: {v}"
        );
    }
}

/// An https listener with HTTP/3 (`listener_extra` in its table): `/h2` goes to
/// `h2_origin` (an h2c cluster), `/plain` is answered by Pylon, `/off` goes to `origin`
/// with WebSockets turned off, the rest goes to `origin` (HTTP/1.1).
fn h3_config(
    ca: &TestCa,
    origin: SocketAddr,
    h2_origin: SocketAddr,
    listener_extra: &str,
) -> String {
    let dir = temp_dir();
    let (cert, key) = ca.server(&["localhost"]).write(&dir, "leaf");
    format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"
protocol = "https"
http3 = true
{listener_extra}
[listeners.tls]
certificates = [{{ cert = "{}", key = "{}" }}]

[[routes]]
path_prefix = "/h2"
cluster = "ws-h2"

[[routes]]
path_prefix = "/plain"
respond = {{ body = "plain" }}

[[routes]]
path_prefix = "/off"
cluster = "ws"
websocket = false

[[routes]]
cluster = "ws"

[[clusters]]
name = "ws"
endpoints = ["{origin}"]

[[clusters]]
name = "ws-h2"
protocol = "h2c"
endpoints = ["{h2_origin}"]
"#,
        cert.display(),
        key.display()
    )
}

/// Pylon on `h3_config`, and an HTTP/3 client connected to it.
async fn h3_front(ca: &TestCa, config: &str) -> (TestProxy, H3Client) {
    let p = TestProxy::start(config).await;
    let udp = p.proxy.h3_addr("front").expect("an HTTP/3 address");
    let client = H3Client::connect(ca, udp, "localhost").await.unwrap();
    (p, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http3_extended_connect_reaches_http1_and_http2_origins() {
    let origin = WsOrigin::start(WsBehaviour::Echo).await;
    let h2_origin = WsOrigin::start_h2(WsBehaviour::Echo).await;
    let ca = TestCa::new("ws-h3");
    let (p, client) = h3_front(&ca, &h3_config(&ca, origin.addr, h2_origin.addr, "")).await;
    // To an HTTP/1.1 origin: every kind of message and close codes both ways, two
    // tunnels on one QUIC connection.
    let mut ws = client.websocket("localhost", "/").await.unwrap().unwrap();
    exchange_everything(&mut ws).await;
    drop(ws);
    let mut ws = client.websocket("localhost", "/").await.unwrap().unwrap();
    origin_closes_with_a_code(&mut ws).await;
    drop(ws);
    eventually("the origin saw the client's close code", || {
        origin.last_close.lock().unwrap().clone() == Some((4000, "done here".to_string()))
    })
    .await;
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    // To an HTTP/2 origin: an extended CONNECT there too.
    let mut ws = client.websocket("localhost", "/h2").await.unwrap().unwrap();
    ws.send(Message::text("over h3 then h2")).await.unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Some(Message::text("over h3 then h2"))
    );
    assert_eq!(
        h2_origin
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // Ordinary requests go on beside the tunnel, on the same connection.
    assert_eq!(
        client.get("localhost", "/plain").await.unwrap().text(),
        "plain"
    );
    ws.close(None).await.unwrap();
    while next_message(&mut ws).await.is_some() {}
    drop(ws);
    let m = p.proxy.metrics();
    assert_eq!(
        m.tunnels_total.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    eventually("tunnels closed", || {
        m.tunnels_active.load(std::sync::atomic::Ordering::Relaxed) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_websockets_over_http3_get_an_ordinary_answer() {
    let plain = Origin::named("not a websocket").await;
    let ca = TestCa::new("ws-h3");
    let (_p, client) = h3_front(&ca, &h3_config(&ca, plain.addr, plain.addr, "")).await;
    // A 200 would mean "tunnel open": the origin's refusal becomes a 502.
    assert_eq!(
        client.websocket("localhost", "/").await.unwrap().err(),
        Some(http::StatusCode::BAD_GATEWAY)
    );
    // A route without WebSockets, or one that answers itself: an extended CONNECT has
    // no plain form (a 2xx would say the tunnel is open).
    for path in ["/off", "/plain"] {
        assert_eq!(
            client.websocket("localhost", path).await.unwrap().err(),
            Some(http::StatusCode::FORBIDDEN),
            "{path}"
        );
    }
    // The connection and its other requests are unaffected.
    assert_eq!(
        client.get("localhost", "/").await.unwrap().text(),
        "not a websocket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http3_client_gone_mid_tunnel_ends_the_tunnel() {
    let origin = WsOrigin::start(WsBehaviour::Echo).await;
    let ca = TestCa::new("ws-h3");
    let (p, client) = h3_front(&ca, &h3_config(&ca, origin.addr, origin.addr, "")).await;
    let mut ws = client.websocket("localhost", "/").await.unwrap().unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::text("one")));
    // The client's QUIC connection goes away without a WebSocket close.
    client.connection.close(0u32.into(), b"gone");
    let m = p.proxy.metrics();
    eventually("the tunnel is closed", || {
        m.tunnels_active.load(std::sync::atomic::Ordering::Relaxed) == 0
    })
    .await;
    // New clients are served.
    let again = H3Client::connect(&ca, p.proxy.h3_addr("front").unwrap(), "localhost")
        .await
        .unwrap();
    let mut ws = again.websocket("localhost", "/").await.unwrap().unwrap();
    ws.send(Message::text("two")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::text("two")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_websocket_over_http3_outlives_the_listeners_idle_timeout() {
    let origin = WsOrigin::start(WsBehaviour::Echo).await;
    let ca = TestCa::new("ws-h3");
    let cfg = h3_config(&ca, origin.addr, origin.addr, "idle_timeout = \"2s\"");
    let (_p, client) = h3_front(&ca, &cfg).await;
    let mut ws = client.websocket("localhost", "/").await.unwrap().unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::text("before")));
    // Nothing either way for well past the idle timeout (which is also QUIC's): the
    // tunnel is a request in progress, and QUIC keep-alives (a PING every second here)
    // hold the connection. Four of them span twice the idle timeout.
    let pings = client.connection.stats().frame_rx.ping;
    eventually("four keep-alive pings from Pylon, the tunnel quiet", || {
        client.connection.stats().frame_rx.ping >= pings + 4
    })
    .await;
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::text("after")));
    assert!(client.connection.close_reason().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_keeps_websockets_over_http3_until_the_drain_timeout_then_says_1001() {
    let origin = WsOrigin::start(WsBehaviour::Echo).await;
    let ca = TestCa::new("ws-h3");
    let log = temp_dir().join("ws-h3-access.log");
    let cfg = h3_config(&ca, origin.addr, origin.addr, "").replace(
        "[access_log]\nenabled = false",
        &format!("[access_log]\npath = \"{}\"", log.display()),
    );
    let (p, client) = h3_front(&ca, &cfg).await;
    let tcp = p.addr("front");
    let mut ws = client.websocket("localhost", "/").await.unwrap().unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::text("one")));
    let stop =
        tokio::spawn(async move { p.proxy.shutdown(std::time::Duration::from_secs(3)).await });
    // Draining: the tunnel goes on until the drain timeout.
    eventually("the stop has begun (the listener is closed)", || {
        std::net::TcpStream::connect(tcp).is_err()
    })
    .await;
    ws.send(Message::text("two")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::text("two")));
    assert!(!stop.is_finished());
    // Then Close 1001, which the QUIC connection lingers for.
    match next_message(&mut ws).await {
        Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("expected a close frame 1001, got {other:?}"),
    }
    assert!(
        !stop.await.unwrap(),
        "the tunnel was open at the drain timeout"
    );
    eventually("the QUIC connection is closed", || {
        client.connection.close_reason().is_some()
    })
    .await;
    eventually("the origin got Pylon's 1001", || {
        origin.last_close.lock().unwrap().as_ref().map(|c| c.0) == Some(1001)
    })
    .await;
    // The tunnel's access-log line, written as it ended, says why.
    let text = std::fs::read_to_string(&log).unwrap();
    let line: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .find(|v: &serde_json::Value| v["method"] == "CONNECT")
        .unwrap_or_else(|| panic!("no CONNECT line in {text}"));
    assert_eq!(line["error"], "drain_timeout", "{line}");
    assert_eq!(line["status"], 200, "{line}");
}
