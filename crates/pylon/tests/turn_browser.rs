//! A real browser relays through Pylon's TURN listener: headless Chromium opens two
//! RTCPeerConnections with `iceTransportPolicy: "relay"` and Pylon as their only ICE
//! server, and a data channel carries a message each way, which works only if both
//! peers' traffic is relayed (each sends to the other's relayed address, through its
//! own allocation). Needs Debian's `chromium`, installed by scripts/test.sh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::Response;
use http_body_util::BodyExt;
use pylon_testkit::*;

const PAGE: &str = r#"<!doctype html>
<script>
const server = { urls: ["turn:TURN?transport=TRANSPORT"], username: "alice", credential: "wonderland" };
const report = (o) => fetch("/result", { method: "POST", body: JSON.stringify(o) });
async function run() {
  const config = { iceServers: [server], iceTransportPolicy: "relay" };
  const a = new RTCPeerConnection(config), b = new RTCPeerConnection(config);
  const types = [];
  a.onicecandidate = (e) => { if (e.candidate) { types.push(e.candidate.type); b.addIceCandidate(e.candidate); } };
  b.onicecandidate = (e) => { if (e.candidate) { types.push(e.candidate.type); a.addIceCandidate(e.candidate); } };
  const channel = a.createDataChannel("t");
  const atB = new Promise((ok) => {
    b.ondatachannel = (e) => { e.channel.onmessage = (m) => { e.channel.send("pong:" + m.data); ok(m.data); }; };
  });
  const atA = new Promise((ok) => { channel.onmessage = (m) => ok(m.data); });
  channel.onopen = () => channel.send("ping");
  await a.setLocalDescription(await a.createOffer());
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(await b.createAnswer());
  await a.setRemoteDescription(b.localDescription);
  const got = await atB, back = await atA;
  // The selected pair as the transport reports it; stats can lag the first message,
  // so ask again (up to five seconds) until the transport names one.
  let local = null;
  for (let i = 0; i < 50 && local === null; i++) {
    const stats = await a.getStats();
    let pairId = null;
    stats.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId; });
    const pair = pairId && stats.get(pairId);
    if (pair) local = stats.get(pair.localCandidateId)?.candidateType ?? null;
    if (local === null) await new Promise((ok) => setTimeout(ok, 100));
  }
  await report({ got, back, types, local });
}
run().catch((e) => report({ error: String(e) }));
</script>
"#;

async fn browser_relays_over(transport: &str) {
    let dir = temp_dir();
    let users = dir.join("users.txt");
    std::fs::write(&users, "alice:wonderland\n").unwrap();
    let p = TestProxy::start(&format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[[listeners]]
name = "turn"
bind = "127.0.0.1:0"
protocol = "turn"

[listeners.turn]
realm = "pylon.test"
users_file = "{}"
allowed_peers = ["127.0.0.0/8"]
"#,
        users.display()
    ))
    .await;
    let page = PAGE
        .replace("TURN", &p.addr("turn").to_string())
        .replace("TRANSPORT", transport);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
    let origin = Origin::start(move |req| {
        let page = page.clone();
        let tx = tx.clone();
        async move {
            if req.uri().path() == "/result" {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let _ = tx.send(String::from_utf8_lossy(&body).into_owned()).await;
                return Response::new(full(""));
            }
            Response::builder()
                .header("content-type", "text/html")
                .body(full(page))
                .unwrap()
        }
    })
    .await;
    let profile = dir.join("chromium-profile");
    let mut chromium = tokio::process::Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://{}/", origin.addr))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium runs (Debian's chromium, installed by scripts/test.sh)");
    let result = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("the page reports within a minute")
        .unwrap();
    let _ = chromium.kill().await;
    let v: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(v["got"], "ping", "{v}");
    assert_eq!(v["back"], "pong:ping", "{v}");
    assert_eq!(v["local"], "relay", "{v}");
    let types = v["types"].as_array().unwrap();
    assert!(
        !types.is_empty() && types.iter().all(|t| t == "relay"),
        "{v}"
    );
    let m = p.metrics().await;
    assert!(metric(&m, "pylon_turn_allocations_total{listener=\"turn\"}") >= 2);
    assert!(
        metric(
            &m,
            "pylon_turn_relayed_packets_total{listener=\"turn\",direction=\"to_peer\"}"
        ) > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_peers_talk_through_turn_over_udp() {
    browser_relays_over("udp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_peers_talk_through_turn_over_tcp() {
    browser_relays_over("tcp").await;
}
