//! The edge tier in front of a fleet, against a real etcd: a Pylon with a TCP and a UDP
//! Layer 4 listener balances TLS and QUIC flows with Maglev on the client address across
//! the instances the fleet's membership lists. Flows stay on their instance while
//! instances join and leave; a new instance takes about its share of new flows and only
//! few others move; an instance that stops leaves the list at once, and only its flows
//! move (its UDP sessions end so the clients' next datagrams go to a live instance).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pylon_testkit::etcd::EtcdServer;
use pylon_testkit::h3::{H3Client, h3_client_config};
use pylon_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_pylon");
/// Distinct clients: one loopback address each.
const CLIENTS: u8 = 60;

/// The fleet's document: an https listener with HTTP/3 on the same port.
fn write_doc(dir: &Path, cert: &Path, key: &Path) -> String {
    write_file(
        dir,
        "fleet.toml",
        &format!(
            r#"
[access_log]
enabled = false
[server]
drain_timeout = "3s"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
protocol = "https"
tls = {{ certificates = [{{ cert = "{}", key = "{}" }}] }}
http3 = {{ alt_svc = false }}
[[routes]]
respond = {{ body = "ok" }}
"#,
            cert.display(),
            key.display()
        ),
    )
}

/// The edge tier: its own file, its endpoints the fleet's members.
fn write_edge(dir: &Path, members: &str) -> String {
    write_file(
        dir,
        "edge.toml",
        &format!(
            r#"
[access_log]
path = "stderr"
[admin]
bind = "127.0.0.1:0"
[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "fleet"
[[listeners]]
name = "edge-udp"
bind = "127.0.0.1:0"
protocol = "udp"
cluster = "fleet"
[[clusters]]
name = "fleet"
lb = "maglev"
discovery = "{members}"
"#
        ),
    )
}

fn start_instance(url: &str, dir: &Path, name: &str) -> PylonProcess {
    PylonProcess::start(
        BIN,
        &[
            "run",
            "--config-source",
            url,
            "--config-cache",
            dir.join(format!("{name}.cache")).to_str().unwrap(),
            "--instance-name",
            name,
            "--member-ttl",
            "3s",
        ],
        None,
    )
}

fn client_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + n))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection through the edge from `from`, and its local address.
async fn connect(
    edge: SocketAddr,
    tls: &tokio_rustls::TlsConnector,
    from: IpAddr,
) -> (Tls, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let local = socket.local_addr().unwrap();
    let tcp = socket.connect(edge).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("fleet.test").unwrap();
    let stream = tls.connect(name, tcp).await.unwrap();
    (stream, local)
}

/// One request on a kept-alive connection: the instance answers "ok".
async fn ask(stream: &mut Tls) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: fleet.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !(answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"ok")) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
}

/// The upstream and end of the first session of `kind` the edge logged after line
/// `since` for a client `from` accepts.
fn session_log(
    edge: &PylonProcess,
    since: usize,
    kind: &str,
    from: impl Fn(SocketAddr) -> bool,
) -> Option<(String, String)> {
    edge.stderr
        .lock()
        .unwrap()
        .iter()
        .skip(since)
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let client: SocketAddr = v["client"].as_str()?.parse().ok()?;
            (v["kind"] == kind && from(client)).then(|| {
                (
                    v["upstream"].as_str().unwrap_or("").to_owned(),
                    v["end"].as_str().unwrap_or("").to_owned(),
                )
            })
        })
}

fn log_len(p: &PylonProcess) -> usize {
    p.stderr.lock().unwrap().len()
}

/// One new flow from each client: which instance each went to.
async fn map_flows(edge: &PylonProcess, tls: &tokio_rustls::TlsConnector) -> BTreeMap<u8, String> {
    let mut map = BTreeMap::new();
    for n in 0..CLIENTS {
        let since = log_len(edge);
        let (mut stream, local) = connect(edge.addr("edge"), tls, client_ip(n)).await;
        ask(&mut stream).await;
        drop(stream);
        let mut upstream = None;
        eventually("the session's log line", || {
            upstream = session_log(edge, since, "tcp_session", |c| c == local);
            upstream.is_some()
        })
        .await;
        map.insert(n, upstream.unwrap().0);
    }
    map
}

/// The edge's endpoints: (address, drained).
async fn edge_endpoints(edge: &PylonProcess) -> Vec<(String, bool)> {
    let text = get(edge.admin_addr(), "/clusters").await.text();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["clusters"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_owned(),
                e["drained"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// How many clients went elsewhere than before, not counting those that went to
/// `newcomer` or came from `leaver`.
fn moved_between_others(
    before: &BTreeMap<u8, String>,
    after: &BTreeMap<u8, String>,
    newcomer: Option<&str>,
    leaver: Option<&str>,
) -> usize {
    before
        .iter()
        .filter(|(n, b)| {
            let a = &after[*n];
            a != *b && Some(a.as_str()) != newcomer && Some(b.as_str()) != leaver
        })
        .count()
}

async fn h3_ok(client: &H3Client) -> bool {
    match client.get("fleet.test", "/").await {
        Ok(a) => a.text() == "ok",
        Err(e) => {
            eprintln!("HTTP/3 request failed: {e}");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_tier_keeps_flows_on_their_instance_as_instances_come_and_go() {
    let etcd = EtcdServer::start();
    let url = etcd.url("edge");
    let dir = temp_dir();
    let ca = TestCa::new("fleet ca");
    let (cert, key) = ca.server(&["fleet.test"]).write(&dir, "fleet");
    let doc = write_doc(&dir, &cert, &key);
    let pushed = Command::new(BIN)
        .args(["config", "push", &doc, &url])
        .output()
        .unwrap();
    assert!(pushed.status.success(), "{pushed:?}");
    let mut instances: Vec<PylonProcess> = (0..3)
        .map(|i| start_instance(&url, &dir, &format!("i{i}")))
        .collect();
    let address = |p: &PylonProcess| p.addr("front").to_string();

    let edge = PylonProcess::start(
        BIN,
        &["run", "-c", &write_edge(&dir, &format!("{url}/members"))],
        None,
    );
    eventually_async("three members at the edge", || async {
        edge_endpoints(&edge).await.len() == 3
    })
    .await;
    let tls = tls_client(&ca, &[], None);

    // Every client's flows go to one instance, and the three share them.
    let first = map_flows(&edge, &tls).await;
    for p in &instances {
        let share = first.values().filter(|a| **a == address(p)).count();
        assert!(
            share >= 8,
            "{} took {share} of {CLIENTS}: {first:?}",
            address(p)
        );
    }
    assert_eq!(
        first,
        map_flows(&edge, &tls).await,
        "the same instance again"
    );

    // Flows that stay open: TLS over TCP and QUIC over UDP, from several clients.
    let mut held = Vec::new();
    for n in 0..6 {
        let (mut stream, _) = connect(edge.addr("edge"), &tls, client_ip(n)).await;
        ask(&mut stream).await;
        held.push(stream);
    }
    let quic = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(h3_client_config(&ca)).unwrap(),
    ));
    let mut quic_clients = Vec::new();
    for n in 0..6 {
        let from = SocketAddr::new(client_ip(n), 0);
        let (c, _) =
            H3Client::connect_quic_from(&quic, from, edge.addr("edge-udp"), "fleet.test", false)
                .await
                .unwrap();
        assert!(h3_ok(&c).await, "HTTP/3 through the edge from client {n}");
        quic_clients.push((n, c));
    }

    // A new instance joins: it takes about its share of new flows; few others move.
    instances.push(start_instance(&url, &dir, "i3"));
    let newcomer = address(&instances[3]);
    eventually_async("four members at the edge", || async {
        edge_endpoints(&edge).await.len() == 4
    })
    .await;
    let second = map_flows(&edge, &tls).await;
    let to_newcomer = second.values().filter(|a| **a == newcomer).count();
    assert!(
        (5..=27).contains(&to_newcomer),
        "the newcomer took {to_newcomer} of {CLIENTS} (about a quarter expected)"
    );
    let others = moved_between_others(&first, &second, Some(&newcomer), None);
    assert!(
        others <= 3,
        "{others} clients moved between the old instances"
    );
    // The open flows were not moved: each still answers on its connection.
    for stream in &mut held {
        ask(stream).await;
    }
    for (n, c) in &quic_clients {
        assert!(
            h3_ok(c).await,
            "client {n}'s QUIC connection after the join"
        );
    }
    // A QUIC client that changes its source port (connection migration) reaches the
    // same instance, hashed on its address: its connection goes on.
    let mut migrated = 0;
    for (n, c) in &quic_clients {
        if second[n] == first[n] {
            c.rebind().unwrap();
            assert!(h3_ok(c).await, "client {n} after migrating");
            migrated += 1;
        }
    }
    assert!(
        migrated > 0,
        "no QUIC client stayed on its instance: {second:?}"
    );

    // An instance stops: as its drain begins the edge sends it nothing new, and once
    // it is over it leaves the list at once (not after its lease expires); only its
    // clients move.
    let leaver = address(&instances[1]);
    instances[1].signal(libc::SIGTERM);
    assert!(instances[1].wait_exit().success());
    eventually_async_within(
        Duration::from_secs(2),
        "the stopped instance gone from the edge",
        || async { edge_endpoints(&edge).await.len() == 3 },
    )
    .await;
    let drained = format!("endpoint={leaver} ready=false");
    assert!(
        edge.logged(|l| l.contains("endpoint readiness from etcd") && l.contains(&drained)),
        "the edge drained the instance first"
    );
    let third = map_flows(&edge, &tls).await;
    assert!(third.values().all(|a| *a != leaver));
    let others = moved_between_others(&second, &third, None, Some(&leaver));
    assert!(others <= 3, "{others} clients of staying instances moved");
    for (n, c) in &quic_clients {
        // Its UDP session began before the join: on the instance of `first`.
        if first[n] == leaver {
            // A new connection from the same client reaches a live instance.
            let from = SocketAddr::new(client_ip(*n), 0);
            let (c, _) = H3Client::connect_quic_from(
                &quic,
                from,
                edge.addr("edge-udp"),
                "fleet.test",
                false,
            )
            .await
            .unwrap();
            assert!(h3_ok(&c).await, "client {n} after its instance left");
        } else {
            assert!(h3_ok(c).await, "client {n} on a staying instance");
        }
    }

    // A UDP session whose instance leaves the list ends at once, though that instance
    // still answers (here its entry is deleted behind its back), so that the client's
    // next datagrams go to an instance that is listed.
    let gone = address(&instances[0]);
    let n = *third.iter().find(|(_, a)| **a == gone).unwrap().0;
    let from = SocketAddr::new(client_ip(n), 0);
    let (c, _) =
        H3Client::connect_quic_from(&quic, from, edge.addr("edge-udp"), "fleet.test", false)
            .await
            .unwrap();
    assert!(h3_ok(&c).await);
    // A reload builds the cluster anew (a changed setting) while the listeners stay:
    // the session goes on, and follows the new cluster.
    let edge_file = dir.join("edge.toml");
    let changed = std::fs::read_to_string(&edge_file).unwrap().replace(
        "lb = \"maglev\"",
        "lb = \"maglev\"\nconnect_timeout = \"3s\"",
    );
    std::fs::write(&edge_file, changed).unwrap();
    let before_reload = log_len(&edge);
    edge.signal(libc::SIGHUP);
    eventually("the edge reloaded", || {
        edge.stderr
            .lock()
            .unwrap()
            .iter()
            .skip(before_reload)
            .any(|l| l.contains("configuration reloaded"))
    })
    .await;
    eventually_async("the new cluster found the members", || async {
        edge_endpoints(&edge).await.len() == 3
    })
    .await;
    assert!(h3_ok(&c).await, "the session outlives the reload");
    let since = log_len(&edge);
    etcd.ctl(&["del", "/edge/members/i0"]).unwrap();
    let mut ended = None;
    eventually("the session ended", || {
        ended = session_log(&edge, since, "udp_session", |a| a.ip() == client_ip(n));
        ended.is_some()
    })
    .await;
    assert_eq!(
        ended.unwrap(),
        (gone.clone(), "endpoint_removed".to_owned())
    );
    // The instance writes its entry again, and the edge takes it back.
    eventually_async("the deleted entry written again", || async {
        edge_endpoints(&edge).await.iter().any(|(a, _)| *a == gone)
    })
    .await;
}
