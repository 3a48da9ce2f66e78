//! Layer 4 end to end: TCP relays (curl through, half-close, endpoint failures), TLS
//! passthrough by SNI (openssl s_client), TLS termination at L4, the PROXY protocol in
//! both directions, UDP sessions, and the access-log line of each session.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use pylon_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn tcp_config(listener_extra: &str, clusters: &[(&str, Vec<SocketAddr>, &str)]) -> String {
    let mut s = format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "l4"
bind = "127.0.0.1:0"
protocol = "tcp"
{listener_extra}
"#
    );
    for (name, eps, extra) in clusters {
        let eps: Vec<String> = eps.iter().map(|a| format!("\"{a}\"")).collect();
        s.push_str(&format!(
            "\n[[clusters]]\nname = \"{name}\"\nendpoints = [{}]\n{extra}\n",
            eps.join(", ")
        ));
    }
    s
}

async fn curl_body(addr: SocketAddr) -> String {
    let out = curl(&["-sS", "--max-time", "10", &format!("http://{addr}/")]).await;
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_a_tcp_listener_balances_connections() {
    let a = Origin::named("a").await;
    let b = Origin::named("b").await;
    for splice in ["true", "false"] {
        let cfg = tcp_config(
            &format!("cluster = \"web\"\nsplice = {splice}"),
            &[("web", vec![a.addr, b.addr], "")],
        );
        let p = TestProxy::start(&cfg).await;
        let l4 = p.addr("l4");
        let seen: HashSet<String> = [curl_body(l4).await, curl_body(l4).await].into();
        assert_eq!(
            seen,
            HashSet::from(["a".to_string(), "b".to_string()]),
            "splice = {splice}"
        );
        let m = p.proxy.metrics();
        eventually("bytes counted", || {
            m.l4_bytes_sent.load(std::sync::atomic::Ordering::Relaxed) > 0
        })
        .await;
    }
}

/// An origin that reads until the client's FIN, then answers with the byte count.
async fn counting_origin() -> RawOrigin {
    RawOrigin::start(|mut s: TcpStream| async move {
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        s.write_all(format!("got {} bytes", all.len()).as_bytes())
            .await
            .unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_leaves_the_other_direction_open() {
    let origin = counting_origin().await;
    for splice in ["true", "false"] {
        let cfg = tcp_config(
            &format!("cluster = \"c\"\nsplice = {splice}"),
            &[("c", vec![origin.addr], "")],
        );
        let p = TestProxy::start(&cfg).await;
        let mut s = TcpStream::connect(p.addr("l4")).await.unwrap();
        let payload = vec![7u8; 300_000];
        s.write_all(&payload).await.unwrap();
        s.shutdown().await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(DEADLINE, s.read_to_string(&mut answer))
            .await
            .expect("the answer arrives after our FIN")
            .unwrap();
        assert_eq!(answer, "got 300000 bytes", "splice = {splice}");
    }
}

/// Sends `payload` through `s` and half-closes; the answer of a [`counting_origin`].
async fn count_through<S>(mut s: S, payload: &[u8]) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(payload).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut answer))
        .await
        .expect("the answer arrives after our FIN")
        .unwrap();
    answer
}

/// The splice(2) count is the process's: this test runs in a process of its own (this
/// test binary started again for it alone), where no other test's relay splices.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_is_relayed_by_splice_and_tls_or_splice_off_is_copied() {
    const ALONE: &str = "PYLON_TEST_SPLICE_ALONE";
    const NAME: &str = "plain_tcp_is_relayed_by_splice_and_tls_or_splice_off_is_copied";
    if std::env::var_os(ALONE).is_none() {
        let out = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--test-threads=1", "--nocapture"])
            .env(ALONE, "1")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let origin = counting_origin().await;
    let payload = vec![7u8; 1 << 20];
    let expected_answer = format!("got {} bytes", payload.len());
    let run = |listener: &str| {
        let cfg = tcp_config(
            &format!("cluster = \"c\"\n{listener}"),
            &[("c", vec![origin.addr], "")],
        );
        async move { TestProxy::start(&cfg).await }
    };

    // splice on (the default), plain TCP both sides: every byte, both ways, spliced.
    let p = run("").await;
    let m = p.proxy.metrics();
    let before = m.l4_spliced_bytes();
    let s = TcpStream::connect(p.addr("l4")).await.unwrap();
    assert_eq!(count_through(s, &payload).await, expected_answer);
    let moved = (payload.len() + expected_answer.len()) as u64;
    eventually("every byte counted", || {
        m.l4_spliced_bytes() - before >= moved
    })
    .await;
    assert_eq!(m.l4_spliced_bytes() - before, moved);
    let series = format!("pylon_l4_spliced_bytes_total {}\n", m.l4_spliced_bytes());
    assert!(m.render().contains(&series), "{series} in /metrics");
    eventually("the relay ended", || {
        m.l4_bytes_received
            .load(std::sync::atomic::Ordering::Relaxed)
            == payload.len() as u64
    })
    .await;

    // splice off: copied, nothing spliced.
    let p = run("splice = false").await;
    let m = p.proxy.metrics();
    let before = m.l4_spliced_bytes();
    let s = TcpStream::connect(p.addr("l4")).await.unwrap();
    assert_eq!(count_through(s, &payload).await, expected_answer);
    eventually("the relay ended", || {
        m.l4_bytes_received
            .load(std::sync::atomic::Ordering::Relaxed)
            == payload.len() as u64
    })
    .await;
    assert_eq!(m.l4_spliced_bytes(), before, "splice = false copies");

    // TLS terminated at the listener (splice on): the plaintext is copied.
    let ca = TestCa::new("l4 splice CA");
    let dir = temp_dir();
    let (cert, key) = ca.server(&["l4.example"]).write(&dir, "l4");
    let p = run(&format!(
        "[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
        cert.display(),
        key.display()
    ))
    .await;
    let m = p.proxy.metrics();
    let before = m.l4_spliced_bytes();
    let s = tls_connect(&tls_client(&ca, &[], None), p.addr("l4"), "l4.example")
        .await
        .unwrap();
    assert_eq!(count_through(s, &payload).await, expected_answer);
    eventually("the relay ended", || {
        m.l4_bytes_received
            .load(std::sync::atomic::Ordering::Relaxed)
            == payload.len() as u64
    })
    .await;
    assert_eq!(m.l4_spliced_bytes(), before, "TLS on a side copies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoints_are_skipped_and_a_dying_one_never_hangs_the_client() {
    let alive = Origin::named("alive").await;
    let cfg = tcp_config(
        "cluster = \"c\"",
        &[("c", vec![closed_port(), alive.addr], "")],
    );
    let p = TestProxy::start(&cfg).await;
    for _ in 0..4 {
        assert_eq!(curl_body(p.addr("l4")).await, "alive");
    }
    // An origin that takes some bytes then dies mid-stream.
    let dying = RawOrigin::start(|mut s: TcpStream| async move {
        let mut buf = [0u8; 5];
        let _ = s.read_exact(&mut buf).await;
        let _ = s.write_all(b"partial").await;
        let _ = socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO));
    })
    .await;
    let cfg = tcp_config("cluster = \"c\"", &[("c", vec![dying.addr], "")]);
    let p = TestProxy::start(&cfg).await;
    let mut s = TcpStream::connect(p.addr("l4")).await.unwrap();
    s.write_all(b"hello and more").await.unwrap();
    let mut got = Vec::new();
    let r = tokio::time::timeout(DEADLINE, s.read_to_end(&mut got))
        .await
        .expect("the client sees the end, no hang");
    assert!(got.starts_with(b"partial") || r.is_err(), "{got:?} {r:?}");
}

async fn openssl_get(addr: SocketAddr, sni: &str, ca: &std::path::Path) -> String {
    let mut child = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            sni,
            "-CAfile",
            ca.to_str().unwrap(),
            "-verify_return_error",
            "-quiet",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            format!("GET /via-{sni} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("openssl finishes")
        .unwrap();
    drop(stdin);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_routes_by_sni() {
    let ca = TestCa::new("passthrough CA");
    let dir = temp_dir();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let a = Origin::echo_tls(origin_tls_config(
        &ca.server(&["a.example"]),
        None,
        &["http/1.1"],
    ))
    .await;
    let b = Origin::echo_tls(origin_tls_config(
        &ca.server(&["x.b.example"]),
        None,
        &["http/1.1"],
    ))
    .await;
    let listener = r#"sni_routes = [
  { server_names = ["a.example"], cluster = "a" },
  { server_names = ["*.b.example"], cluster = "b" },
]"#;
    let cfg = tcp_config(
        listener,
        &[("a", vec![a.addr], ""), ("b", vec![b.addr], "")],
    );
    let p = TestProxy::start(&cfg).await;
    let l4 = p.addr("l4");
    let out = openssl_get(l4, "a.example", &ca_file).await;
    assert!(out.contains("/via-a.example"), "{out}");
    let out = openssl_get(l4, "x.b.example", &ca_file).await;
    assert!(out.contains("/via-x.b.example"), "{out}");
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
    // No route for this name and no default cluster: closed.
    let out = openssl_get(l4, "c.example", &ca_file).await;
    assert!(!out.contains("HTTP/1.1 200"), "{out}");
    // Not TLS at all: closed without reaching an origin.
    let mut s = TcpStream::connect(l4).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
        .await
        .expect("closed");
    assert!(rest.is_empty());
    assert_eq!(a.request_count() + b.request_count(), 2);
    let m = p.proxy.metrics();
    assert!(m.l4_rejected.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_terminates_at_l4_to_a_plain_backend() {
    let ca = TestCa::new("l4 termination CA");
    let dir = temp_dir();
    let (cert, key) = ca.server(&["l4.example"]).write(&dir, "l4");
    let origin = counting_origin().await;
    let listener = format!(
        "cluster = \"c\"\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
        cert.display(),
        key.display()
    );
    let cfg = tcp_config(&listener, &[("c", vec![origin.addr], "")]);
    let p = TestProxy::start(&cfg).await;
    let connector = tls_client(&ca, &[], None);
    let mut s = tls_connect(&connector, p.addr("l4"), "l4.example")
        .await
        .unwrap();
    s.write_all(b"twelve bytes").await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, "got 12 bytes");
}

/// An origin that answers with the first line it received (a PROXY v1 header) or a
/// description of the PROXY v2 header, then echoes the rest.
async fn proxy_header_origin() -> RawOrigin {
    RawOrigin::start(|mut s: TcpStream| async move {
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let done_v1 = got.starts_with(b"PROXY ") && got.ends_with(b"END");
            let done_v2 = got.starts_with(b"\r\n\r\n\0\r\nQUIT\n") && got.ends_with(b"END");
            if done_v1 || done_v2 {
                break;
            }
        }
        let answer = match ppp::HeaderResult::parse(&got) {
            ppp::HeaderResult::V1(Ok(h)) => format!("v1 {}", h.header.trim_end()),
            ppp::HeaderResult::V2(Ok(h)) => format!("v2 {:?}", h.addresses),
            other => format!("none {other:?}"),
        };
        s.write_all(answer.as_bytes()).await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_in_and_out() {
    let origin = proxy_header_origin().await;
    for out in ["v1", "v2"] {
        let cfg = tcp_config(
            "cluster = \"c\"\nproxy_protocol = { trusted = [\"127.0.0.0/8\"] }",
            &[(
                "c",
                vec![origin.addr],
                &format!("proxy_protocol = \"{out}\""),
            )],
        );
        let p = TestProxy::start(&cfg).await;
        let l4 = p.addr("l4");
        // v1 in.
        let mut s = TcpStream::connect(l4).await.unwrap();
        s.write_all(b"PROXY TCP4 192.0.2.9 198.51.100.1 4444 443\r\nEND")
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        match out {
            "v1" => assert_eq!(answer, "v1 PROXY TCP4 192.0.2.9 198.51.100.1 4444 443"),
            _ => assert!(
                answer.contains("192.0.2.9")
                    && answer.contains("4444")
                    && answer.contains("198.51.100.1"),
                "{answer}"
            ),
        }
        // v2 in.
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::7]:5555".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut s = TcpStream::connect(l4).await.unwrap();
        s.write_all(&header).await.unwrap();
        s.write_all(b"END").await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        match out {
            "v1" => assert_eq!(answer, "v1 PROXY TCP6 2001:db8::7 2001:db8::1 5555 443"),
            _ => assert!(
                answer.contains("2001:db8::7") && answer.contains("5555"),
                "{answer}"
            ),
        }
    }
    // An untrusted source is refused before anything reaches the origin.
    let cfg = tcp_config(
        "cluster = \"c\"\nproxy_protocol = { trusted = [\"10.0.0.0/8\"] }",
        &[("c", vec![origin.addr], "")],
    );
    let p = TestProxy::start(&cfg).await;
    let before = origin.connections.load(std::sync::atomic::Ordering::SeqCst);
    let mut s = TcpStream::connect(p.addr("l4")).await.unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.9 198.51.100.1 4444 443\r\nEND")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
    assert_eq!(
        p.proxy
            .metrics()
            .proxy_protocol_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_listener_takes_the_client_address_from_proxy_protocol() {
    let echo = Origin::echo().await;
    let cfg = simple_config(
        &[echo.addr],
        "proxy_protocol = { trusted = [\"127.0.0.1\"] }",
        "",
    );
    let p = TestProxy::start(&cfg).await;
    let mut s = TcpStream::connect(p.addr("front")).await.unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.5 127.0.0.1 6000 80\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("203.0.113.5"),
        "X-Forwarded-For carries the real client: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_get_only_their_own_replies() {
    // Two echo origins that tag replies with their name.
    let mut origins = Vec::new();
    for name in ["u1", "u2"] {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = sock.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let (n, from) = sock.recv_from(&mut buf).await.unwrap();
                let mut reply = format!("{name}:").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, from).await;
            }
        });
        origins.push((addr, task));
    }
    let cfg = format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "dns"
bind = "127.0.0.1:0"
protocol = "udp"
cluster = "c"
idle_timeout = "5s"

[[clusters]]
name = "c"
endpoints = ["{}", "{}"]
"#,
        origins[0].0, origins[1].0
    );
    let p = TestProxy::start(&cfg).await;
    let front = p.addr("dns");
    let mut clients = Vec::new();
    for i in 0..200 {
        clients.push(tokio::spawn(async move {
            let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            s.connect(front).await.unwrap();
            let mut tag = None;
            let mut buf = vec![0u8; 2048];
            for j in 0..5 {
                let msg = format!("client-{i}-msg-{j}");
                // UDP may drop: resend until the reply comes.
                let reply = loop {
                    s.send(msg.as_bytes()).await.unwrap();
                    match tokio::time::timeout(
                        std::time::Duration::from_millis(500),
                        s.recv(&mut buf),
                    )
                    .await
                    {
                        Ok(Ok(n)) => break String::from_utf8_lossy(&buf[..n]).to_string(),
                        _ => continue,
                    }
                };
                let (origin, body) = reply.split_once(':').unwrap();
                assert_eq!(body, msg, "only its own replies");
                // One session, one endpoint.
                assert_eq!(*tag.get_or_insert(origin.to_string()), origin);
            }
            tag.unwrap()
        }));
    }
    let mut per_origin = std::collections::HashMap::<String, usize>::new();
    for c in clients {
        *per_origin
            .entry(
                tokio::time::timeout(DEADLINE * 3, c)
                    .await
                    .unwrap()
                    .unwrap(),
            )
            .or_default() += 1;
    }
    assert_eq!(per_origin.len(), 2, "sessions spread: {per_origin:?}");
    let m = p.proxy.metrics();
    assert_eq!(
        m.udp_sessions.load(std::sync::atomic::Ordering::Relaxed),
        200
    );
    assert_eq!(
        m.udp_dropped.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_health_checks_take_a_silent_endpoint_out() {
    let alive = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let alive_addr = alive.local_addr().unwrap();
    let _task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, from) = alive.recv_from(&mut buf).await.unwrap();
            let reply = if &buf[..n] == b"health?" {
                b"pong".to_vec()
            } else {
                buf[..n].to_vec()
            };
            let _ = alive.send_to(&reply, from).await;
        }
    });
    // Bound then closed: datagrams to it get ICMP port unreachable.
    let dead_addr = UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "u"
bind = "127.0.0.1:0"
protocol = "udp"
cluster = "c"

[[clusters]]
name = "c"
endpoints = ["{dead_addr}", "{alive_addr}"]
health_check = {{ kind = "udp", send = "health?", expect = "pong", interval = "100ms", timeout = "500ms" }}
"#
    );
    let p = TestProxy::start(&cfg).await;
    eventually("the dead endpoint is out", || {
        p.proxy.endpoint_available("c", dead_addr) == Some(false)
            && p.proxy.endpoint_available("c", alive_addr) == Some(true)
    })
    .await;
    for i in 0..10 {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.connect(p.addr("u")).await.unwrap();
        let msg = format!("m{i}");
        s.send(msg.as_bytes()).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(DEADLINE, s.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            &buf[..n],
            msg.as_bytes(),
            "every session reaches the live endpoint"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_connections_are_opened_ahead_handed_out_and_refilled() {
    let origin = counting_origin().await;
    let cfg = tcp_config(
        "cluster = \"c\"",
        &[("c", vec![origin.addr], "pool = { warm_connections = 2 }")],
    );
    let p = TestProxy::start(&cfg).await;
    let opened = || origin.connections.load(std::sync::atomic::Ordering::SeqCst);
    let warm = p.proxy.cluster("c").unwrap().endpoints().pools[0]
        .warm
        .clone()
        .unwrap();
    eventually("two connections opened before any client", || opened() == 2).await;
    for i in 1..=3 {
        // The origin accepts a warm connection a moment before Pylon holds it ready.
        eventually("two warm connections ready", || warm.ready() == 2).await;
        let mut s = TcpStream::connect(p.addr("l4")).await.unwrap();
        s.write_all(b"abc").await.unwrap();
        s.shutdown().await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "got 3 bytes");
        // The client used a warm connection; one more was opened to refill.
        eventually("refilled", || opened() == 2 + i).await;
    }
    eventually("refilled to two", || warm.ready() == 2).await;
    assert_eq!(warm.handed.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(warm.ready(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_warm_connections_expire_and_are_replaced() {
    let origin = counting_origin().await;
    let cfg = tcp_config(
        "cluster = \"c\"",
        &[(
            "c",
            vec![origin.addr],
            "pool = { warm_connections = 1, idle_timeout = \"100ms\" }",
        )],
    );
    let _p = TestProxy::start(&cfg).await;
    eventually("expired ones replaced", || {
        origin.connections.load(std::sync::atomic::Ordering::SeqCst) >= 4
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_send_each_request_with_its_clients_proxy_header() {
    // Answers with the PROXY line it received before the HTTP request.
    let origin = RawOrigin::start(|mut s: TcpStream| async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).to_string();
        let first = text.lines().next().unwrap_or("").to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{first}",
            first.len()
        );
        s.write_all(resp.as_bytes()).await.unwrap();
    })
    .await;
    let cfg = simple_config(
        &[origin.addr],
        "proxy_protocol = { trusted = [\"127.0.0.1\"] }",
        "proxy_protocol = \"v1\"",
    );
    let p = TestProxy::start(&cfg).await;
    let front = p.addr("front");
    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.5 192.0.2.80 6000 80\r\n")
        .await
        .unwrap();
    // Two requests on one client connection: each gets its own upstream connection.
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut s).await;
    assert_eq!(
        text.matches("PROXY TCP4 203.0.113.5 192.0.2.80 6000 80")
            .count(),
        2,
        "{text}"
    );
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_carries_alpn_and_server_name_when_pylon_terminated_tls() {
    // Reads the v2 header and answers with its TLVs (kind=value, ...).
    let origin = RawOrigin::start(|mut s: TcpStream| async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
            if let ppp::HeaderResult::V2(Ok(h)) = ppp::HeaderResult::parse(&got) {
                let tlvs: Vec<String> = h
                    .tlvs()
                    .filter_map(Result::ok)
                    .filter(|t| t.kind != ppp::v2::Type::SSL as u8)
                    .map(|t| format!("{}={}", t.kind, String::from_utf8_lossy(&t.value)))
                    .collect();
                s.write_all(tlvs.join(",").as_bytes()).await.unwrap();
                return;
            }
        }
    })
    .await;
    let ca = TestCa::new("pp2 CA");
    let dir = temp_dir();
    let (cert, key) = ca.server(&["pp2.example"]).write(&dir, "pp2");
    let listener = format!(
        "cluster = \"c\"\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\nalpn = [\"h2\", \"http/1.1\"]",
        cert.display(),
        key.display()
    );
    let cfg = tcp_config(
        &listener,
        &[("c", vec![origin.addr], "proxy_protocol = \"v2\"")],
    );
    let p = TestProxy::start(&cfg).await;
    let connector = tls_client(&ca, &["http/1.1"], None);
    let mut s = tls_connect(&connector, p.addr("l4"), "pp2.example")
        .await
        .unwrap();
    // The header goes out as soon as the upstream connection opens; the origin answers
    // and closes with nothing unread (a FIN, not a reset).
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        answer, "1=http/1.1,2=pp2.example",
        "ALPN (1) and authority (2) TLVs"
    );
}

/// An origin that echoes whatever it reads, for as long as the client keeps it open.
async fn echo_origin() -> RawOrigin {
    RawOrigin::start(|mut s: TcpStream| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

async fn closed_by_pylon(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_old_ones_are_closed() {
    let origin = echo_origin().await;
    let cfg = tcp_config(
        "cluster = \"c\"\nidle_timeout = \"200ms\"",
        &[("c", vec![origin.addr], "")],
    );
    let p = TestProxy::start(&cfg).await;
    let mut s = TcpStream::connect(p.addr("l4")).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert!(closed_by_pylon(&mut s).await, "an idle relay is closed");

    // A busy connection outlives the idle timeout but not max_lifetime.
    let cfg = tcp_config(
        "cluster = \"c\"\nidle_timeout = \"1h\"\nmax_lifetime = \"300ms\"",
        &[("c", vec![origin.addr], "")],
    );
    let p = TestProxy::start(&cfg).await;
    let s = TcpStream::connect(p.addr("l4")).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        while w.write_all(b"tick").await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "closed at max_lifetime while busy");
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_connection_limit_refuses_more() {
    let origin = echo_origin().await;
    let cfg = tcp_config(
        "cluster = \"c\"\nmax_connections = 2",
        &[("c", vec![origin.addr], "")],
    );
    let p = TestProxy::start(&cfg).await;
    let l4 = p.addr("l4");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(l4).await.unwrap();
        s.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.unwrap();
        held.push(s);
    }
    let mut third = TcpStream::connect(l4).await.unwrap();
    assert!(closed_by_pylon(&mut third).await, "the third is refused");
    let m = p.proxy.metrics();
    assert_eq!(m.l4_refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    // A reload that changes the listener restarts its accept loop on the same socket:
    // the two connections still held count against the limit.
    let changed = cfg.replace(
        "max_connections = 2",
        "max_connections = 2
idle_timeout = \"90s\"",
    );
    p.proxy
        .reload(&pylon_config::parse(&changed, "test.toml").unwrap())
        .await
        .unwrap();
    let mut fourth = TcpStream::connect(l4).await.unwrap();
    assert!(
        closed_by_pylon(&mut fourth).await,
        "still refused after the reload"
    );
    assert_eq!(m.l4_refused.load(std::sync::atomic::Ordering::Relaxed), 2);
    drop(held.pop());
    // Once one has gone, a new connection gets through.
    eventually_async("a slot frees up", || async {
        let Ok(mut s) = TcpStream::connect(l4).await else {
            return false;
        };
        if s.write_all(b"hi").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 2];
        matches!(
            tokio::time::timeout(
                std::time::Duration::from_millis(500),
                s.read_exact(&mut buf)
            )
            .await,
            Ok(Ok(_))
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_expire_when_idle_and_are_limited() {
    let echo = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let echo_addr = echo.local_addr().unwrap();
    let e = Arc::clone(&echo);
    let _task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, from) = e.recv_from(&mut buf).await.unwrap();
            let _ = e.send_to(&buf[..n], from).await;
        }
    });
    let cfg = format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "u"
bind = "127.0.0.1:0"
protocol = "udp"
cluster = "c"
idle_timeout = "200ms"
max_connections = 1

[[clusters]]
name = "c"
endpoints = ["{echo_addr}"]
"#
    );
    let p = TestProxy::start(&cfg).await;
    let m = p.proxy.metrics();
    let front = p.addr("u");
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    a.connect(front).await.unwrap();
    let mut buf = [0u8; 64];
    a.send(b"one").await.unwrap();
    let n = tokio::time::timeout(DEADLINE, a.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"one");
    // A second client while the first session lives: over the limit, dropped.
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    b.connect(front).await.unwrap();
    b.send(b"two").await.unwrap();
    eventually("the datagram over the session limit is dropped", || {
        m.udp_dropped.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    // Once the first session has idled out, the second client gets one.
    eventually_async(
        "the second client is served after the first session expired",
        || async {
            b.send(b"three").await.unwrap();
            matches!(
                tokio::time::timeout(
                    std::time::Duration::from_millis(300),
                    b.recv(&mut [0u8; 64])
                )
                .await,
                Ok(Ok(5))
            )
        },
    )
    .await;
    assert_eq!(m.udp_sessions.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_sends_unmatched_names_to_the_default_cluster() {
    let ca = TestCa::new("passthrough default CA");
    let dir = temp_dir();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let a = Origin::echo_tls(origin_tls_config(
        &ca.server(&["a.example"]),
        None,
        &["http/1.1"],
    ))
    .await;
    let other = Origin::echo_tls(origin_tls_config(
        &ca.server(&["other.example"]),
        None,
        &["http/1.1"],
    ))
    .await;
    let listener = "cluster = \"fallback\"\nsni_routes = [{ server_names = [\"a.example\"], cluster = \"a\" }]";
    let cfg = tcp_config(
        listener,
        &[("a", vec![a.addr], ""), ("fallback", vec![other.addr], "")],
    );
    let p = TestProxy::start(&cfg).await;
    let out = openssl_get(p.addr("l4"), "other.example", &ca_file).await;
    assert!(out.contains("/via-other.example"), "{out}");
    assert_eq!((a.request_count(), other.request_count()), (0, 1));
}

/// The access-log lines of `kind` in `log`, once there are `n`.
async fn session_lines(log: &std::path::Path, kind: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == kind)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {kind} lines in\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_udp_sessions_each_log_one_line_when_they_end() {
    let log = temp_dir().join("l4-access.log");
    let origin = counting_origin().await;
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let cfg = format!(
        r#"
access_log = {{ path = "{}" }}

[[listeners]]
name = "l4"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "c"

[[listeners]]
name = "dgram"
bind = "127.0.0.1:0"
protocol = "udp"
cluster = "u"
idle_timeout = "1s"

[[clusters]]
name = "c"
endpoints = ["{}"]

[[clusters]]
name = "u"
endpoints = ["{echo_addr}"]
"#,
        log.display(),
        origin.addr
    );
    let p = TestProxy::start(&cfg).await;
    let mut s = TcpStream::connect(p.addr("l4")).await.unwrap();
    let client = s.local_addr().unwrap();
    s.write_all(&[1u8; 1000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "got 1000 bytes");
    let tcp = &session_lines(&log, "tcp_session", 1).await[0];
    assert_eq!(tcp["listener"], "l4");
    assert_eq!(tcp["client"], client.to_string());
    assert_eq!(tcp["cluster"], "c");
    assert_eq!(tcp["upstream"], origin.addr.to_string());
    assert_eq!(
        (tcp["bytes_in"].as_u64(), tcp["bytes_out"].as_u64()),
        (Some(1000), Some(14))
    );
    assert_eq!(tcp["end"], "closed");
    assert_eq!(tcp["closed_by"], "client", "our FIN went first");

    let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..3 {
        u.send_to(b"hello", p.addr("dgram")).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = tokio::time::timeout(DEADLINE, u.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"hello");
    }
    // The session idles out after a second, and says so.
    let udp = &session_lines(&log, "udp_session", 1).await[0];
    assert_eq!(udp["client"], u.local_addr().unwrap().to_string());
    assert_eq!(udp["upstream"], echo_addr.to_string());
    assert_eq!(
        (udp["bytes_in"].as_u64(), udp["bytes_out"].as_u64()),
        (Some(15), Some(15))
    );
    assert_eq!(udp["end"], "idle_timeout");
}
