//! STUN and TURN listeners with independent clients: coturn's `turnutils_stunclient`
//! and `turnutils_uclient` (users file and shared-secret credentials, UDP, TCP and TLS,
//! channels and Send indications, client to client), and the test kit's TURN client for
//! precise answers: 401 then success, MESSAGE-INTEGRITY-SHA256, wrong and expired
//! credentials, stale nonces, quotas, special-purpose and own peers refused,
//! permissions enforced both ways, bandwidth, unauthenticated rate limits, IPv6 relays,
//! expiry and Refresh with lifetime 0 with the allocation's log line, reloads, and
//! malformed messages counted. The browser test is `turn_browser.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use pylon_testkit::turn::{TurnClient, rest_credentials};
use pylon_testkit::*;

const SECRET: &str = "north";

/// A TURN listener `turn` (UDP and TCP) with the users file and shared secret, and an
/// admin listener; `extra` goes into `[listeners.turn]`, `top` before the listeners.
fn config(dir: &std::path::Path, top: &str, extra: &str) -> String {
    let users = dir.join("users.txt");
    std::fs::write(
        &users,
        "# name:password\nalice:wonderland\ncarol:caroline\n",
    )
    .unwrap();
    format!(
        r#"
{top}
[admin]
bind = "127.0.0.1:0"

[[listeners]]
name = "turn"
bind = "127.0.0.1:0"
protocol = "turn"

[listeners.turn]
realm = "pylon.test"
secret = "{SECRET}"
users_file = "{}"
{extra}
"#,
        users.display()
    )
}

/// A UDP echo server: what `turnutils_peer` does.
async fn udp_echo() -> SocketAddr {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

async fn run(cmd: &str, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(cmd).args(args).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{cmd} {args:?} finishes"))
    .unwrap_or_else(|e| {
        panic!("{cmd} runs (coturn's utilities, installed by scripts/test.sh): {e}")
    });
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `turnutils_uclient` through `server` to the echo `peer`: `n` messages from each of
/// `m` clients; true when every one came back.
async fn uclient(server: SocketAddr, peer: SocketAddr, extra: &[&str], n: usize) -> String {
    let port = server.port().to_string();
    let peer_port = peer.port().to_string();
    let count = n.to_string();
    let mut args = vec![
        "-c",
        "-n",
        &count,
        "-m",
        "2",
        "-l",
        "120",
        "-z",
        "5",
        "-p",
        &port,
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
    ];
    args.extend_from_slice(extra);
    args.push("127.0.0.1");
    run("turnutils_uclient", &args).await
}

fn all_delivered(out: &str, expected: usize) -> bool {
    out.contains(&format!(
        "tot_send_msgs={expected}, tot_recv_msgs={expected}"
    )) && out.contains("Total lost packets 0 ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_clients_relay_over_udp_and_tcp_with_users_and_a_shared_secret() {
    let dir = temp_dir();
    let p = TestProxy::start(&config(&dir, "", "allowed_peers = [\"127.0.0.0/8\"]")).await;
    let server = p.addr("turn");
    let peer = udp_echo().await;

    // STUN Binding, with coturn's client.
    let out = run(
        "turnutils_stunclient",
        &["-p", &server.port().to_string(), "127.0.0.1"],
    )
    .await;
    assert!(out.contains("UDP reflexive addr: 127.0.0.1:"), "{out}");

    let (user, password) = rest_credentials(SECRET, "bob", Duration::from_secs(600));
    let modes: [(&str, Vec<&str>); 6] = [
        (
            "users file, UDP, channels",
            vec!["-u", "alice", "-w", "wonderland"],
        ),
        (
            "users file, TCP",
            vec!["-t", "-u", "alice", "-w", "wonderland"],
        ),
        ("shared secret, UDP", vec!["-W", SECRET, "-u", &user]),
        ("shared secret, TCP", vec!["-t", "-W", SECRET, "-u", &user]),
        (
            "Send indications",
            vec!["-s", "-u", "carol", "-w", "caroline"],
        ),
        (
            "client to client",
            vec!["-y", "-u", "alice", "-w", "wonderland"],
        ),
    ];
    // All at once (each run waits seconds for stragglers).
    let runs = modes
        .iter()
        .map(|(_, args)| uclient(server, peer, args, 10));
    let outs = futures_util::future::join_all(runs).await;
    for ((what, _), out) in modes.iter().zip(&outs) {
        assert!(all_delivered(out, 20), "{what}:\n{out}");
    }
    let _ = password;
    let m = p.metrics().await;
    assert!(metric(&m, "pylon_stun_binding_requests_total{listener=\"turn\"}") >= 1);
    assert!(metric(&m, "pylon_turn_allocations_total{listener=\"turn\"}") >= 12);
    assert!(
        metric(
            &m,
            "pylon_turn_relayed_packets_total{listener=\"turn\",direction=\"to_peer\"}"
        ) >= 100
    );
    assert!(
        metric(
            &m,
            "pylon_turn_relayed_bytes_total{listener=\"turn\",direction=\"from_peer\"}"
        ) >= 100 * 120
    );
    assert!(
        metric(
            &m,
            "pylon_turn_auth_failures_total{listener=\"turn\",reason=\"challenge\"}"
        ) >= 12
    );
}

#[tokio::test]
async fn allocations_authenticate_and_enforce_permissions_both_ways() {
    let dir = temp_dir();
    let p = TestProxy::start(&config(&dir, "", "allowed_peers = [\"127.0.0.0/8\"]")).await;
    let server = p.addr("turn");

    // The first Allocate is challenged; the signed one succeeds and is signed back.
    let mut c = TurnClient::udp(server, "alice", "wonderland").await;
    let first = c
        .request(c.finish_signed(
            turn_types_request(turn_types::message::ALLOCATE),
            &[&turn_types::attribute::RequestedTransport::new(17)],
        ))
        .await
        .unwrap();
    assert_eq!(first.code, Some(401));
    assert!(c.realm.as_deref() == Some("pylon.test") && c.nonce.is_some());
    let a = c.allocate().await;
    assert!(a.success, "{a:?}");
    assert!(a.has_integrity() && a.verifies("alice", "wonderland", "pylon.test"));
    let relayed = a.relayed().unwrap();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    assert_eq!(a.xor_mapped(), Some(c.local_addr()));
    assert_eq!(a.lifetime(), Some(600));

    // A peer: nothing passes either way without a permission.
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    peer.send_to(b"early", relayed).await.unwrap();
    c.send_to(peer_addr, b"too early").await;
    let mut buf = [0u8; 1500];
    let got = tokio::time::timeout(Duration::from_millis(300), peer.recv_from(&mut buf)).await;
    assert!(got.is_err(), "no permission, nothing relayed to the peer");
    assert!(c.permit(peer_addr).await.success);
    c.send_to(peer_addr, b"hello peer").await;
    let (n, from) = peer.recv_from(&mut buf).await.unwrap();
    assert_eq!((&buf[..n], from), (&b"hello peer"[..], relayed));
    peer.send_to(b"hello client", relayed).await.unwrap();
    let (from, channel, data) = c.next_data().await.unwrap();
    assert_eq!(
        (from, channel, data.as_slice()),
        (Some(peer_addr), None, &b"hello client"[..])
    );

    // A channel: ChannelData both ways.
    assert!(c.bind_channel(0x4001, peer_addr).await.success);
    c.send_channel(0x4001, b"on the channel").await;
    let (n, _) = peer.recv_from(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"on the channel");
    peer.send_to(b"back on it", relayed).await.unwrap();
    let (_, channel, data) = c.next_data().await.unwrap();
    assert_eq!(
        (channel, data.as_slice()),
        (Some(0x4001), &b"back on it"[..])
    );
    // The channel cannot be bound to another peer.
    let other: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert_eq!(c.bind_channel(0x4001, other).await.code, Some(400));

    // A second Allocate on the same 5-tuple is a mismatch; Refresh keeps it.
    let again = c.allocate().await;
    assert_eq!(again.code, Some(437));
    let r = c.refresh(1200).await;
    assert_eq!(r.lifetime(), Some(1200));
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, "pylon_turn_allocations_active{listener=\"turn\"}"),
        1
    );
    assert_eq!(
        metric(&m, "pylon_turn_channels_active{listener=\"turn\"}"),
        1
    );
    assert_eq!(
        metric(&m, "pylon_turn_permissions_active{listener=\"turn\"}"),
        1
    );
    assert!(
        metric(
            &m,
            "pylon_turn_dropped_total{listener=\"turn\",reason=\"no_permission\"}"
        ) >= 2
    );
    // Lifetime 0 deletes it.
    assert_eq!(c.refresh(0).await.lifetime(), Some(0));
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, "pylon_turn_allocations_active{listener=\"turn\"}"),
        0
    );
    assert_eq!(
        metric(&m, "pylon_turn_channels_active{listener=\"turn\"}"),
        0
    );
    assert_eq!(c.refresh(600).await.code, Some(437));
}

fn turn_types_request(
    method: turn_types::stun::message::Method,
) -> turn_types::stun::message::MessageWriteVec {
    turn_types::stun::message::Message::builder_request(
        method,
        turn_types::stun::message::MessageWriteVec::new(),
    )
}

#[tokio::test]
async fn wrong_expired_and_stale_credentials_and_quotas_are_refused() {
    let dir = temp_dir();
    let p = TestProxy::start(&config(
        &dir,
        "",
        "allowed_peers = [\"127.0.0.0/8\"]\nuser_quota = 1\nnonce_lifetime = \"1s\"",
    ))
    .await;
    let server = p.addr("turn");
    let mut wrong = TurnClient::udp(server, "alice", "not-it").await;
    assert_eq!(wrong.allocate().await.code, Some(401));
    let mut nobody = TurnClient::udp(server, "mallory", "x").await;
    assert_eq!(nobody.allocate().await.code, Some(401));
    let (user, password) = rest_credentials(SECRET, "bob", Duration::ZERO);
    let expired_user = user.replace(
        user.split(':').next().unwrap(),
        &(user.split(':').next().unwrap().parse::<u64>().unwrap() - 60).to_string(),
    );
    let expired_password = pylon_proxy::turn::rest_password(SECRET, &expired_user);
    let _ = password;
    let mut expired = TurnClient::udp(server, &expired_user, &expired_password).await;
    assert_eq!(expired.allocate().await.code, Some(401));
    let m = p.metrics().await;
    assert!(
        metric(
            &m,
            "pylon_turn_auth_failures_total{listener=\"turn\",reason=\"bad_integrity\"}"
        ) >= 1
    );
    assert!(
        metric(
            &m,
            "pylon_turn_auth_failures_total{listener=\"turn\",reason=\"unknown_user\"}"
        ) >= 1
    );
    assert!(
        metric(
            &m,
            "pylon_turn_auth_failures_total{listener=\"turn\",reason=\"expired\"}"
        ) >= 1
    );

    // One allocation per user: the second, over TCP, reaches the quota (486).
    let mut first = TurnClient::udp(server, "alice", "wonderland").await;
    assert!(first.allocate().await.success);
    let mut second = TurnClient::tcp(server, "alice", "wonderland").await;
    assert_eq!(second.allocate().await.code, Some(486));
    // Closing the TCP connection of an allocation ends it: carol's quota is free again.
    let mut carol = TurnClient::tcp(server, "carol", "caroline").await;
    assert!(carol.allocate().await.success);
    drop(carol);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut again = TurnClient::tcp(server, "carol", "caroline").await;
        if again.allocate().await.success {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "carol's allocation never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A nonce past its lifetime is stale: 438 with a new one, which then works.
    let stale_nonce = first.nonce.clone().unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        first.nonce = Some(stale_nonce.clone());
        let req = first.finish_signed(
            turn_types_request(turn_types::message::REFRESH),
            &[&turn_types::attribute::Lifetime::new(600)],
        );
        let a = first.request(req).await.unwrap();
        if a.code == Some(438) {
            assert_ne!(first.nonce.as_deref(), Some(stale_nonce.as_str()));
            break;
        }
        assert!(a.success);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nonce never went stale"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        first.refresh(600).await.success,
        "the new nonce is accepted"
    );
}

#[tokio::test]
async fn special_purpose_and_own_peers_are_refused_by_default() {
    let dir = temp_dir();
    // No allowed_peers: loopback and private peers are refused.
    let p = TestProxy::start(&config(&dir, "", "denied_peers = [\"198.51.100.0/24\"]")).await;
    let server = p.addr("turn");
    let mut c = TurnClient::udp(server, "alice", "wonderland").await;
    assert!(c.allocate().await.success);
    for peer in [
        "127.0.0.1:5000",
        "10.1.2.3:5000",
        "192.168.1.1:5000",
        "169.254.1.1:5000",
        "198.51.100.7:5000",
    ] {
        let a = c.permit(peer.parse().unwrap()).await;
        assert_eq!(a.code, Some(403), "{peer}");
        assert_eq!(
            c.bind_channel(0x4000, peer.parse().unwrap()).await.code,
            Some(403),
            "{peer}"
        );
    }
    // A public peer (nothing is sent to it: a permission is only installed).
    assert!(
        c.permit("8.8.8.8:5000".parse().unwrap()).await.success,
        "a public peer"
    );
    assert!(
        metric(
            &p.metrics().await,
            "pylon_turn_peers_refused_total{listener=\"turn\"}"
        ) >= 10
    );

    // Allowed loopback, but never Pylon's own listeners.
    let p = TestProxy::start(&config(&dir, "", "allowed_peers = [\"127.0.0.0/8\"]")).await;
    let server = p.addr("turn");
    let mut c = TurnClient::udp(server, "alice", "wonderland").await;
    assert!(c.allocate().await.success);
    assert_eq!(
        c.permit(server).await.code,
        Some(403),
        "the TURN listener itself"
    );
    let admin = p.proxy.admin_addr().await.unwrap();
    assert_eq!(c.permit(admin).await.code, Some(403), "the admin listener");
    assert!(c.permit("127.0.0.1:9".parse().unwrap()).await.success);
}

#[tokio::test]
async fn malformed_messages_are_dropped_and_binding_works_over_tcp() {
    let dir = temp_dir();
    let p = TestProxy::start(&config(&dir, "", "")).await;
    let server = p.addr("turn");
    let mut c = TurnClient::udp(server, "alice", "wonderland").await;
    c.send_raw(b"GET / HTTP/1.1\r\n\r\n").await;
    c.send_raw(&[0, 1, 0, 4, 0x21, 0x12, 0xa4, 0x42]).await;
    let b = c.binding().await.expect("a Binding answer after the junk");
    assert!(b.success);
    assert_eq!(b.xor_mapped(), Some(c.local_addr()));
    // A small request gets a small answer: no SOFTWARE (0x8022), no RESPONSE-ORIGIN
    // (0x802B); one as large as the full answer gets both.
    assert!(!b.has(0x8022) && !b.has(0x802B), "{b:?}");
    let big = {
        use turn_types::stun::message::{
            BINDING, Message, MessageWrite, MessageWriteExt, MessageWriteVec,
        };
        let mut m = Message::builder_request(BINDING, MessageWriteVec::new());
        m.add_attribute(&turn_types::stun::attribute::Software::new(&"x".repeat(48)).unwrap())
            .unwrap();
        m.add_fingerprint().unwrap();
        m.finish()
    };
    let full = c.request(big).await.unwrap();
    assert!(
        full.success && full.has(0x8022) && full.has(0x802B),
        "{full:?}"
    );
    let mut t = TurnClient::tcp(server, "alice", "wonderland").await;
    let b = t.binding().await.unwrap();
    assert_eq!(b.xor_mapped(), Some(t.local_addr()));
    assert!(
        metric(
            &p.metrics().await,
            "pylon_turn_dropped_total{listener=\"turn\",reason=\"malformed\"}"
        ) >= 2
    );
}

#[tokio::test]
async fn an_allocation_ends_with_one_access_log_line() {
    let (p, log) = start_logged("allowed_peers = [\"127.0.0.0/8\"]").await;
    let server = p.addr("turn");
    let peer = udp_echo().await;
    let mut c = TurnClient::udp(server, "alice", "wonderland").await;
    let relayed = c.allocate().await.relayed().unwrap();
    assert!(c.permit(peer).await.success);
    c.send_to(peer, b"ping").await;
    let (_, _, data) = c.next_data().await.unwrap();
    assert_eq!(data, b"ping");
    assert!(c.refresh(0).await.success);
    let line = log_line(&log, &["turn_allocation"]).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["user"], "alice");
    assert_eq!(v["listener"], "turn");
    assert_eq!(v["transport"], "udp");
    assert_eq!(v["end"], "deleted");
    assert_eq!(v["relayed"], relayed.to_string());
    assert_eq!(v["client"], c.local_addr().to_string());
    assert_eq!(v["peers"][0], peer.to_string());
    assert_eq!(
        (v["bytes_to_peers"].as_u64(), v["bytes_from_peers"].as_u64()),
        (Some(4), Some(4))
    );
}

#[tokio::test]
async fn a_reload_keeps_allocations_of_an_unchanged_listener() {
    let dir = temp_dir();
    let text = config(&dir, "", "allowed_peers = [\"127.0.0.0/8\"]");
    let p = TestProxy::start(&text).await;
    let server = p.addr("turn");
    let peer = udp_echo().await;
    let mut c = TurnClient::udp(server, "alice", "wonderland").await;
    assert!(c.allocate().await.success);
    assert!(c.permit(peer).await.success);

    // Another listener added: the TURN listener is as it was, its allocation goes on.
    let more = format!(
        "{text}\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n[[routes]]\nrespond = {{ body = \"hi\" }}\n"
    );
    p.proxy
        .reload(&pylon_config::parse(&more, "test.toml").unwrap())
        .await
        .unwrap();
    c.send_to(peer, b"after the reload").await;
    let (_, _, data) = c.next_data().await.unwrap();
    assert_eq!(data, b"after the reload");
    assert!(c.refresh(600).await.success);

    // Its settings changed: its allocations end (a new Refresh finds none).
    let changed = more.replace(
        "realm = \"pylon.test\"",
        "realm = \"pylon.test\"\nuser_quota = 5",
    );
    p.proxy
        .reload(&pylon_config::parse(&changed, "test.toml").unwrap())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let r = c.refresh(600).await;
        if r.code == Some(437) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the allocation outlived its listener's settings: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(
            &p.metrics().await,
            "pylon_turn_allocations_active{listener=\"turn\"}"
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_tls_with_coturns_client() {
    let dir = temp_dir();
    let ca = TestCa::new("turn");
    let (cert, key) = ca.server(&["localhost"]).write(&dir, "leaf");
    let text = config(&dir, "", "allowed_peers = [\"127.0.0.0/8\"]").replace(
        "protocol = \"turn\"\n",
        &format!(
            "protocol = \"turn\"\ntransports = [\"tls\"]\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            cert.display(),
            key.display()
        ),
    );
    let p = TestProxy::start(&text).await;
    let peer = udp_echo().await;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let ca_path = ca_file.display().to_string();
    let out = uclient(
        p.addr("turn"),
        peer,
        &[
            "-t",
            "-S",
            "-E",
            &ca_path,
            "-u",
            "alice",
            "-w",
            "wonderland",
        ],
        10,
    )
    .await;
    assert!(all_delivered(&out, 20), "{out}");
    // A plain TCP client gets nowhere on a TLS listener.
    let mut plain = TurnClient::tcp(p.addr("turn"), "alice", "wonderland").await;
    plain
        .send_raw(&[
            0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ])
        .await;
    assert!(plain.recv(Duration::from_millis(500)).await.is_none());
}

#[tokio::test]
async fn bandwidth_families_sha256_rate_limits_and_expiry() {
    let (p, log) = start_logged("allowed_peers = [\"127.0.0.0/8\"]\nbandwidth = \"1KiB\"\nunauthenticated_rate = 2\ndefault_lifetime = \"1s\"").await;
    let server = p.addr("turn");

    // MESSAGE-INTEGRITY-SHA256: accepted, and the answer is signed the same way.
    let mut c = TurnClient::udp(server, "alice", "wonderland").await;
    c.algorithm = pylon_testkit::turn::Integrity::Sha256;
    let a = c.allocate().await;
    assert!(
        a.success && a.verifies("alice", "wonderland", "pylon.test"),
        "{a:?}"
    );
    let relayed = a.relayed().unwrap();

    // IPv6 asked of an IPv4 relay: 440 (after the challenge).
    let mut six = TurnClient::udp(server, "carol", "caroline").await;
    let v6 = six
        .signed(turn_types::message::ALLOCATE, &|_| ipv6_allocate())
        .await;
    assert_eq!(v6.code, Some(440), "{v6:?}");

    // 1 KiB/s: of 20 datagrams of 200 bytes sent at once, about five pass.
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    assert!(c.permit(peer_addr).await.success);
    for _ in 0..20 {
        c.send_to(peer_addr, &[7u8; 200]).await;
    }
    let mut passed = 0;
    let mut buf = [0u8; 1500];
    while tokio::time::timeout(Duration::from_millis(300), peer.recv_from(&mut buf))
        .await
        .is_ok()
    {
        passed += 1;
    }
    assert!(
        (4..=6).contains(&passed),
        "{passed} datagrams passed 1 KiB/s"
    );
    let m = p.metrics().await;
    assert!(
        metric(
            &m,
            "pylon_turn_dropped_total{listener=\"turn\",reason=\"bandwidth\"}"
        ) >= 14
    );
    let _ = relayed;

    // Two unauthenticated answers a second (bursts of ten): a flood of Bindings from one
    // address is mostly dropped unanswered.
    let mut flood = TurnClient::udp(server, "x", "y").await;
    for _ in 0..40 {
        flood.send_raw(&binding_request()).await;
    }
    let mut answered = 0;
    while flood.recv(Duration::from_millis(300)).await.is_some() {
        answered += 1;
    }
    assert!(answered < 20, "{answered} of 40 answered");
    assert!(
        metric(
            &p.metrics().await,
            "pylon_turn_dropped_total{listener=\"turn\",reason=\"rate_limited\"}"
        ) >= 20
    );

    // A one-second lifetime: the allocation expires, and its line says so.
    assert_eq!(c.refresh(1).await.lifetime(), Some(1));
    let line = log_line(&log, &["\"end\":\"expired\"", "alice"]).await;
    assert!(line.contains(&relayed.to_string()), "{line}");
}

fn binding_request() -> Vec<u8> {
    use turn_types::stun::message::{
        BINDING, Message, MessageWrite, MessageWriteExt, MessageWriteVec,
    };
    let mut m = Message::builder_request(BINDING, MessageWriteVec::new());
    m.add_fingerprint().unwrap();
    m.finish()
}

#[tokio::test]
async fn ipv6_relays_for_clients_that_ask_for_them() {
    let dir = temp_dir();
    let text = config(&dir, "", "allowed_peers = [\"::1/128\"]").replace(
        "bind = \"127.0.0.1:0\"\nprotocol = \"turn\"",
        "bind = \"[::1]:0\"\nprotocol = \"turn\"",
    );
    let p = TestProxy::start(&text).await;
    let server = p.addr("turn");
    assert!(server.is_ipv6());
    let mut c = TurnClient::udp(server, "alice", "wonderland").await;
    // Without REQUESTED-ADDRESS-FAMILY the relay would be IPv4, which this one is not.
    assert_eq!(c.allocate().await.code, Some(440));
    let a = c
        .signed(turn_types::message::ALLOCATE, &|_| ipv6_allocate())
        .await;
    assert!(a.success, "{a:?}");
    let relayed = a.relayed().unwrap();
    assert_eq!(relayed.ip().to_string(), "::1");
    let peer = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    // An IPv4 peer on an IPv6 relay: 443.
    assert_eq!(
        c.permit("127.0.0.1:9".parse().unwrap()).await.code,
        Some(443)
    );
    assert!(c.permit(peer_addr).await.success);
    c.send_to(peer_addr, b"over six").await;
    let mut buf = [0u8; 100];
    let (n, from) = peer.recv_from(&mut buf).await.unwrap();
    assert_eq!((&buf[..n], from), (&b"over six"[..], relayed));
}

/// An Allocate's attributes asking for an IPv6 relay.
fn ipv6_allocate() -> pylon_testkit::turn::Attrs {
    vec![
        Box::new(turn_types::attribute::RequestedTransport::new(17)),
        Box::new(turn_types::attribute::RequestedAddressFamily::new(
            turn_types::stun::AddressFamily::IPV6,
        )),
    ]
}

/// The TURN listener of [`config`] with `extra`, logging to a file: Pylon and the file.
async fn start_logged(extra: &str) -> (TestProxy, std::path::PathBuf) {
    let dir = temp_dir();
    let log = dir.join("access.log");
    let top = format!("access_log = {{ path = \"{}\" }}", log.display());
    (TestProxy::start(&config(&dir, &top, extra)).await, log)
}

/// The first access-log line holding every one of `needles`, once written.
async fn log_line(log: &std::path::Path, needles: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return l.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needles:?} in\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_listener_wide_allocation_quota_holds() {
    let dir = temp_dir();
    let p = TestProxy::start(&config(&dir, "", "max_allocations = 2")).await;
    let server = p.addr("turn");
    let mut held = Vec::new();
    for user in [("alice", "wonderland"), ("carol", "caroline")] {
        let mut c = TurnClient::udp(server, user.0, user.1).await;
        assert!(c.allocate().await.success);
        held.push(c);
    }
    let mut third = TurnClient::udp(server, "alice", "wonderland").await;
    assert_eq!(third.allocate().await.code, Some(486));
    assert_eq!(
        metric(
            &p.metrics().await,
            "pylon_turn_allocations_refused_total{listener=\"turn\"}"
        ),
        1
    );
    // One deleted: room again.
    assert!(held[0].refresh(0).await.success);
    assert!(third.allocate().await.success);
}

/// TURN over TCP counts its connections like every listener: the process-wide
/// `max_connections` refuses one more (closed at once, counted), the listener's gauge
/// shows the one open, and its place is free again once it closes.
#[tokio::test]
async fn tcp_connections_count_against_the_connection_limits() {
    use tokio::io::AsyncReadExt;
    let dir = temp_dir();
    let p = TestProxy::start(&config(&dir, "[server]\nmax_connections = 1", "")).await;
    let server = p.addr("turn");
    let mut first = TurnClient::tcp(server, "alice", "wonderland").await;
    assert!(first.binding().await.unwrap().success);
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, "pylon_listener_connections_active{listener=\"turn\"}"),
        1,
        "{m}"
    );
    let mut second = tokio::net::TcpStream::connect(server).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), second.read(&mut byte))
        .await
        .expect("the refused connection is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(
        metric(
            &p.metrics().await,
            "pylon_connections_refused_total{reason=\"max_connections\"}"
        ),
        1
    );
    drop(first);
    eventually_async("the slot is free again", || async {
        metric(
            &p.metrics().await,
            "pylon_listener_connections_active{listener=\"turn\"}",
        ) == 0
    })
    .await;
    let mut again = TurnClient::tcp(server, "alice", "wonderland").await;
    assert!(again.binding().await.unwrap().success);
}
