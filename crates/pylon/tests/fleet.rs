//! Fleet mode against a real etcd (Debian's `etcd-server`): `pylon config push`
//! validates and writes a configuration with compare-and-swap; three instances run with
//! `--config-source` start from it, apply every new revision with a hot reload, refuse
//! an invalid one (the last good one keeps serving), keep serving while etcd is down,
//! start from their cache without etcd, and catch up when it returns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pylon_testkit::etcd::EtcdServer;
use pylon_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_pylon");

/// A document: an admin API and a `front` listener answering `body`.
fn write_doc(dir: &Path, name: &str, body: &str) -> String {
    write_file(
        dir,
        name,
        &format!(
            r#"
[access_log]
enabled = false
[admin]
bind = "127.0.0.1:0"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
[[routes]]
respond = {{ body = "{body}" }}
"#
        ),
    )
}

fn push(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["config", "push"])
        .args(args)
        .output()
        .unwrap()
}

fn start(url: &str, cache: &Path, name: &str) -> PylonProcess {
    PylonProcess::start(
        BIN,
        &[
            "run",
            "--config-source",
            url,
            "--config-cache",
            cache.to_str().unwrap(),
            "--instance-name",
            name,
            "--member-ttl",
            "3s",
        ],
        None,
    )
}

async fn body(addr: SocketAddr) -> Option<String> {
    let out = curl(&["-sf", "--max-time", "2", &format!("http://{addr}/")]).await;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn fleet(p: &PylonProcess) -> serde_json::Value {
    let out = curl(&["-sf", &format!("http://{}/fleet", p.admin_addr())]).await;
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn revision(p: &PylonProcess) -> i64 {
    fleet(p).await["config_revision"].as_i64().unwrap_or(-1)
}

/// The members `p` lists: (name, config revision) pairs.
async fn members(p: &PylonProcess) -> Vec<(String, i64)> {
    fleet(p).await["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or("").to_owned(),
                        m["config_revision"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_follow_the_configuration_in_etcd_and_survive_its_outage() {
    let mut etcd = EtcdServer::start();
    let url = etcd.url("edge");
    let dir = temp_dir();

    // Pushed once, validated first: a broken file is refused and nothing is written.
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "[[listeners]]\nname = \"x\"\nbind = \"nowhere\"\n").unwrap();
    let out = push(&[broken.to_str().unwrap(), &url]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing pushed"),
        "{out:?}"
    );
    assert_eq!(
        etcd.ctl(&["get", "/edge/config", "--print-value-only"])
            .unwrap()
            .trim(),
        ""
    );
    let out = push(&[&write_doc(&dir, "v1.toml", "v1"), &url]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revision"),
        "{out:?}"
    );

    let instances: Vec<PylonProcess> = (0..3)
        .map(|i| start(&url, &dir.join(format!("cache-{i}.toml")), &format!("i{i}")))
        .collect();
    for p in &instances {
        assert_eq!(body(p.addr("front")).await.as_deref(), Some("v1"));
    }
    let v1 = revision(&instances[0]).await;
    assert!(v1 > 0);

    // A new revision reaches every instance with a hot reload (same sockets).
    assert!(
        push(&[&write_doc(&dir, "v2.toml", "v2"), &url])
            .status
            .success()
    );
    for p in &instances {
        eventually_async_within(Duration::from_secs(20), "v2 everywhere", || async {
            body(p.addr("front")).await.as_deref() == Some("v2")
        })
        .await;
    }
    let v2 = revision(&instances[1]).await;
    assert!(v2 > v1);

    // Membership: every instance lists the three, each at the revision it runs.
    let all_at_v2: Vec<(String, i64)> = (0..3).map(|i| (format!("i{i}"), v2)).collect();
    for p in &instances {
        eventually_async_within(Duration::from_secs(20), "three members at v2", || async {
            members(p).await == all_at_v2
        })
        .await;
    }
    let address = fleet(&instances[0]).await["members"][0]["address"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(address, instances[0].addr("front").to_string());
    // An invalid revision written behind Pylon's back is refused by all three; v2 keeps
    // serving and stays the revision they report.
    etcd.ctl(&["put", "/edge/config", "[[listeners]]\nname = 1\n"])
        .unwrap();
    for p in &instances {
        eventually_async_within(
            Duration::from_secs(20),
            "the bad revision refused",
            || async { p.logged(|l| l.contains("from etcd is invalid")) },
        )
        .await;
        assert_eq!(body(p.addr("front")).await.as_deref(), Some("v2"));
        assert_eq!(revision(p).await, v2);
    }

    // An instance that dies leaves the list when its lease expires.
    let mut instances = instances;
    drop(instances.remove(1));
    eventually_async_within(Duration::from_secs(20), "the dead member gone", || async {
        members(&instances[0]).await.len() == 2
    })
    .await;

    // Compare-and-swap: a push expecting an old revision writes nothing.
    let out = push(&[
        "--expect-revision",
        &v1.to_string(),
        &write_doc(&dir, "v3.toml", "v3"),
        &url,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("changed meanwhile"),
        "{out:?}"
    );

    // etcd goes down: everyone keeps serving; a restart starts from its cache.
    etcd.stop();
    for p in &instances {
        assert_eq!(body(p.addr("front")).await.as_deref(), Some("v2"));
    }

    drop(instances.pop());
    let restarted = start(&url, &dir.join("cache-2.toml"), "i2");
    assert_eq!(body(restarted.addr("front")).await.as_deref(), Some("v2"));
    assert!(
        restarted.logged(|l| l.contains("starting on the cached configuration")),
        "{:#?}",
        restarted.stderr.lock().unwrap()
    );
    instances.push(restarted);

    // etcd returns: the instances reconnect and take what is pushed next.
    etcd.resume();
    assert!(
        push(&[&write_doc(&dir, "v4.toml", "v4"), &url])
            .status
            .success()
    );
    for p in &instances {
        eventually_async_within(Duration::from_secs(60), "v4 after the outage", || async {
            body(p.addr("front")).await.as_deref() == Some("v4")
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_take_their_endpoints_from_an_etcd_prefix() {
    let mut etcd = EtcdServer::start();
    let (a, b) = (Origin::named("a").await, Origin::named("b").await);
    etcd.ctl(&["put", "/services/api/a", &a.addr.to_string()])
        .unwrap();
    let proxy = TestProxy::start(&format!(
        r#"
[access_log]
enabled = false
[admin]
bind = "127.0.0.1:0"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
[[routes]]
cluster = "api"
[[clusters]]
name = "api"
discovery = "etcd://{}/services/api"
"#,
        etcd.client
    ))
    .await;
    let front = proxy.addr("front");
    // Read at start: the first request already has an endpoint.
    assert_eq!(get(front, "/").await.text(), "a");
    // Writes b's entry: its address, weight 3, and `extra` JSON fields.
    let put_b = |extra: &str| {
        etcd.ctl(&[
            "put",
            "/services/api/b",
            &format!(r#"{{"address": "{}", "weight": 3{extra}}}"#, b.addr),
        ])
        .unwrap();
    };
    let b_answers = || async { get(front, "/").await.text() == "b" };
    // A new key joins the cluster...
    put_b("");
    eventually_async("b in rotation", b_answers).await;
    // An entry saying `"ready": false` (as a fleet member writes while draining) keeps
    // its place but takes nothing new; `true` again puts it back.
    put_b(r#", "ready": false"#);
    eventually_async("b drained", || answers_only(front, "a", 8)).await;
    let clusters = proxy.admin(http::Method::GET, "/clusters", "").await.text();
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    let drained: Vec<&serde_json::Value> = clusters["clusters"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["drained"] == true)
        .collect();
    assert_eq!(drained.len(), 1, "{clusters}");
    assert_eq!(drained[0]["address"], b.addr.to_string());
    put_b(r#", "ready": true"#);
    eventually_async("b ready again", b_answers).await;
    // Two keys for one address (a process and its successor): drained only while both
    // say so; a plain address counts as ready.
    put_b(r#", "ready": false"#);
    etcd.ctl(&["put", "/services/api/b-next", &b.addr.to_string()])
        .unwrap();
    eventually_async("b served while one key says ready", b_answers).await;
    etcd.ctl(&["del", "/services/api/b-next"]).unwrap();
    eventually_async("b drained when the ready key goes", || {
        answers_only(front, "a", 8)
    })
    .await;
    put_b("");
    eventually_async("b back without a ready field", b_answers).await;
    // ...a deleted one leaves it, and a value that is no endpoint is skipped.
    etcd.ctl(&["del", "/services/api/a"]).unwrap();
    etcd.ctl(&["put", "/services/api/junk", "not an address"])
        .unwrap();
    eventually_async("only b", || answers_only(front, "b", 6)).await;
    // etcd goes away: the last known endpoints keep serving; back, it is followed again.
    etcd.stop();
    assert_eq!(get(front, "/").await.text(), "b");
    etcd.resume();
    etcd.ctl(&["put", "/services/api/a", &a.addr.to_string()])
        .unwrap();
    eventually_async_within(
        Duration::from_secs(40),
        "a back after the outage",
        || async { get(front, "/").await.text() == "a" },
    )
    .await;
}

/// Whether `n` requests to `front` are all answered by `name`.
async fn answers_only(front: SocketAddr, name: &str, n: usize) -> bool {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        seen.insert(get(front, "/").await.text());
    }
    seen.len() == 1 && seen.contains(name)
}

/// A TLS document: `front` serving `fleet.test` with the given certificate files.
fn write_tls_doc(dir: &Path, cert: &Path, key: &Path) -> String {
    write_file(
        dir,
        "tls.toml",
        &format!(
            r#"
[access_log]
enabled = false
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
protocol = "https"
tls = {{ certificates = [{{ cert = "{}", key = "{}" }}] }}
[[routes]]
respond = {{ body = "ok" }}
"#,
            cert.display(),
            key.display()
        ),
    )
}

/// One HTTPS request through `client` (whose session store carries tickets from one
/// connection to the next): how its handshake went.
async fn visit(client: &tokio_rustls::TlsConnector, addr: SocketAddr) -> rustls::HandshakeKind {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_connect(client, addr, "fleet.test").await.unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: fleet.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    assert!(
        answer.ends_with(b"ok"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    kind
}

/// Whether a client that got its ticket from `a` resumes on `b`.
async fn resumes_across(ca: &TestCa, a: SocketAddr, b: SocketAddr) -> bool {
    let client = tls_client(ca, &[], None);
    assert_eq!(visit(&client, a).await, rustls::HandshakeKind::Full);
    visit(&client, b).await == rustls::HandshakeKind::Resumed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_resume_on_any_instance_through_key_rotations() {
    let etcd = EtcdServer::start();
    let url = etcd.url("tickets");
    let dir = temp_dir();
    let ca = TestCa::new("fleet ca");
    let (cert, key) = ca.server(&["fleet.test"]).write(&dir, "fleet");
    let doc = write_tls_doc(&dir, &cert, &key);

    // Alone, each instance has keys of its own: no resumption across them.
    let (p, q) = (
        PylonProcess::start(BIN, &["run", "-c", &doc], None),
        PylonProcess::start(BIN, &["run", "-c", &doc], None),
    );
    assert!(!resumes_across(&ca, p.addr("front"), q.addr("front")).await);
    drop((p, q));

    assert!(push(&[&doc, &url]).status.success());
    let start = |name: &str| {
        PylonProcess::start(
            BIN,
            &[
                "run",
                "--config-source",
                &url,
                "--config-cache",
                dir.join(format!("{name}.cache")).to_str().unwrap(),
                "--instance-name",
                name,
                "--ticket-key-rotation",
                "2s",
            ],
            None,
        )
    };
    let (a, b) = (start("a"), start("b"));
    let (a, b) = (a.addr("front"), b.addr("front"));
    eventually_async("shared ticket keys", || resumes_across(&ca, a, b)).await;
    // Through three rotations, every ticket from one instance resumes on the other,
    // both ways.
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut tries = 0;
    while tokio::time::Instant::now() < until {
        assert!(resumes_across(&ca, a, b).await, "a to b, try {tries}");
        assert!(resumes_across(&ca, b, a).await, "b to a, try {tries}");
        tries += 1;
    }
    let stored = etcd
        .ctl(&["get", "/tickets/ticket-keys", "-w", "json"])
        .unwrap();
    let version = serde_json::from_str::<serde_json::Value>(&stored).unwrap()["kvs"][0]["version"]
        .as_i64()
        .unwrap();
    assert!(version >= 3, "rotated at least twice: {stored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_reach_etcd_over_tls_with_a_client_certificate_and_a_user() {
    let ca = TestCa::new("etcd ca");
    let mut etcd = EtcdServer::start_secure(&ca);
    etcd.enable_auth("root-secret", "pylon", "pylon-secret", "/secure/");
    let url = etcd.url("secure");
    let dir = temp_dir();
    let doc = write_doc(&dir, "secure.toml", "over tls");
    let t = etcd.tls.clone().unwrap();
    let tls_flags = [
        "--etcd-ca",
        t.ca.to_str().unwrap(),
        "--etcd-cert",
        t.client_cert.to_str().unwrap(),
        "--etcd-key",
        t.client_key.to_str().unwrap(),
        "--etcd-user",
        "pylon",
    ];
    let push_with = |password: &str, flags: &[&str]| {
        Command::new(BIN)
            .args(["config", "push", &doc, &url])
            .args(flags)
            .env("PYLON_ETCD_PASSWORD", password)
            .output()
            .unwrap()
    };

    // Plain text to a TLS-only etcd, or a wrong password: nothing is written, and the
    // error says why.
    let out = push_with("pylon-secret", &[]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--etcd-ca"),
        "{out:?}"
    );
    let out = push_with("wrong", &tls_flags);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("authentication failed"),
        "{out:?}"
    );
    let out = Command::new(BIN)
        .args(["config", "push", &doc, &url])
        .args(tls_flags)
        .env_remove("PYLON_ETCD_PASSWORD")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PYLON_ETCD_PASSWORD"),
        "{out:?}"
    );
    assert_eq!(
        etcd.ctl(&["get", "/secure/config", "--print-value-only"])
            .unwrap()
            .trim(),
        ""
    );

    // With TLS, the certificate and the user: pushed, served, and the instance is a
    // member (its entry written under a lease with the user's rights).
    let out = push_with("pylon-secret", &tls_flags);
    assert!(out.status.success(), "{out:?}");
    let cache = dir.join("secure.cache");
    let mut args = vec![
        "run",
        "--config-source",
        &url,
        "--config-cache",
        cache.to_str().unwrap(),
        "--instance-name",
        "s1",
    ];
    args.extend(tls_flags);
    let p = PylonProcess::start_env(BIN, &args, None, &[("PYLON_ETCD_PASSWORD", "pylon-secret")]);
    assert_eq!(body(p.addr("front")).await.as_deref(), Some("over tls"));
    eventually_async("registered over TLS", || async {
        members(&p).await.len() == 1
    })
    .await;
    assert!(
        !p.logged(|l| l.contains("starting on the cached configuration")),
        "read from etcd, not the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_kept_as_sections_is_joined_checked_and_followed() {
    let etcd = EtcdServer::start();
    let url = etcd.url("sec");
    let dir = temp_dir();
    let sections = dir.join("sections");
    std::fs::create_dir(&sections).unwrap();
    let write = |name: &str, text: &str| std::fs::write(sections.join(name), text).unwrap();
    write(
        "10-base.toml",
        "[access_log]\nenabled = false\n[admin]\nbind = \"127.0.0.1:0\"\n",
    );
    write(
        "20-front.toml",
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n",
    );
    write(
        "30-routes.toml",
        "[[routes]]\nrespond = { body = \"s1\" }\n",
    );
    std::fs::write(sections.join("notes.txt"), "not a section").unwrap();

    // A directory is checked as one document; an error names its file and line.
    write("30-routes.toml", "[[routes]]\ncluster = 7\n");
    let out = push(&[sections.to_str().unwrap(), &url]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("30-routes.toml:2:"), "{said}");
    assert!(said.contains("nothing pushed"), "{said}");
    write(
        "30-routes.toml",
        "[[routes]]\nrespond = { body = \"s1\" }\n",
    );
    let out = push(&[sections.to_str().unwrap(), &url]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 section(s)"),
        "{out:?}"
    );
    assert_eq!(
        etcd.ctl(&["get", "--prefix", "/sec/config/", "--keys-only"])
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        [
            "/sec/config/10-base",
            "/sec/config/20-front",
            "/sec/config/30-routes"
        ]
    );

    let p = start(&url, &dir.join("sec.cache"), "s1");
    assert_eq!(body(p.addr("front")).await.as_deref(), Some("s1"));
    let front = p.addr("front");
    let serves = |want: &'static str| async move { body(front).await.as_deref() == Some(want) };
    // A section at `key` with one route answering `text` (then `tail`).
    let put_route = |key: &str, text: &str, tail: &str| {
        etcd.ctl(&[
            "put",
            key,
            &format!("[[routes]]\nrespond = {{ body = \"{text}\" }}\n{tail}"),
        ])
        .unwrap();
    };

    // One section changed by itself: applied.
    put_route("/sec/config/30-routes", "s2", "");
    eventually_async("s2", || serves("s2")).await;
    // A section deleted by hand is applied, though it is not the latest one.
    put_route("/sec/config/25-first", "first", "");
    eventually_async("first", || serves("first")).await;
    put_route("/sec/config/30-routes", "s2", "# touched\n");
    etcd.ctl(&["del", "/sec/config/25-first"]).unwrap();
    eventually_async("s2 again", || serves("s2")).await;
    let good = revision(&p).await;

    // A bad section is refused with its key, revision and line; s2 keeps serving.
    etcd.ctl(&["put", "/sec/config/30-routes", "[[routes]]\ncluster = 7\n"])
        .unwrap();
    eventually("the bad section refused", || {
        p.logged(|l| l.contains("/sec/config/30-routes@") && l.contains(":2:"))
    })
    .await;
    // A section that starts with a bare key is refused too.
    etcd.ctl(&["put", "/sec/config/40-more", "worker_threads = 2\n"])
        .unwrap();
    eventually("the bare key refused", || {
        p.logged(|l| l.contains("must start with a table header"))
    })
    .await;
    assert_eq!(body(p.addr("front")).await.as_deref(), Some("s2"));
    assert_eq!(revision(&p).await, good);

    // A file pushed replaces the sections in one transaction.
    let out = push(&[&write_doc(&dir, "whole.toml", "whole"), &url]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        etcd.ctl(&["get", "--prefix", "/sec/config/", "--keys-only"])
            .unwrap()
            .trim(),
        ""
    );
    eventually_async("the whole document", || serves("whole")).await;
}
