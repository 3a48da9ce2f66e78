//! TLS end to end: SNI and wildcard and default certificates, ALPN h2 and HTTP/1.1,
//! minimum version, wrong CA, expired leaf, client certificates and identity headers,
//! TLS to upstreams (with and without mutual TLS, HTTP/1.1 and h2), certificate reload
//! under load, handshake timeout, and config errors for bad files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::Request;
use pylon_proxy::http::error::ErrorKind;
use pylon_testkit::*;
use tokio::io::AsyncWriteExt;

fn respond_https(dir: &Path, certs: &[(&str, &Pem)], tls_extra: &str) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|(name, pem)| {
            let (c, k) = pem.write(dir, name);
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                c.display(),
                k.display()
            )
        })
        .collect();
    format!(
        r#"
access_log = {{ enabled = false }}
[[listeners]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "https"
[listeners.tls]
certificates = [{}]
{tls_extra}
[[routes]]
respond = {{ body = "secure" }}
"#,
        list.join(", ")
    )
}

/// An https listener `tls` with client certificates from `clients` in `mode`, followed
/// by `rest` (routes and clusters).
fn mtls_config(server: &Pem, clients: &TestCa, mode: &str, rest: &str) -> String {
    let dir = temp_dir();
    let (cert, key) = server.write(&dir, "leaf");
    let client_ca = dir.join("client-ca.pem");
    std::fs::write(&client_ca, clients.cert_pem()).unwrap();
    format!(
        r#"
access_log = {{ enabled = false }}
[[listeners]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "https"
[listeners.tls]
certificates = [{{ cert = "{}", key = "{}" }}]
client_auth = "{mode}"
client_ca = "{}"
{rest}
"#,
        cert.display(),
        key.display(),
        client_ca.display()
    )
}

fn get_req(host: &str) -> Request<ClientBody> {
    Request::get(format!("https://{host}/"))
        .header("host", host)
        .body(empty())
        .unwrap()
}

/// Runs openssl with `input` on stdin (then EOF).
async fn openssl_with_input(args: &[&str], input: &[u8]) -> String {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("openssl finishes")
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn openssl(args: &[&str]) -> String {
    let out = tokio::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_exact_wildcard_and_default_certificates_with_alpn() {
    let ca = TestCa::new("Pylon Test CA");
    let dir = temp_dir();
    let default = ca.server(&["default.test"]);
    let exact = ca.server(&["a.example.com"]);
    let wild = ca.server(&["*.wild.test"]);
    let cfg = respond_https(
        &dir,
        &[("default", &default), ("exact", &exact), ("wild", &wild)],
        "",
    );
    let p = TestProxy::start(&cfg).await;
    let addr = p.addr("tls");

    let both = tls_client(&ca, &["h2", "http/1.1"], None);
    for (sni, want) in [
        ("a.example.com", "a.example.com"),
        ("x.wild.test", "*.wild.test"),
        ("default.test", "default.test"),
    ] {
        let s = tls_connect(&both, addr, sni).await.unwrap();
        let (alpn, names) = negotiated(&s);
        assert_eq!(names, vec![want.to_string()], "SNI {sni}");
        assert_eq!(alpn.as_deref(), Some("h2"));
    }
    // An unknown name gets the default certificate (the client then refuses the name).
    let out = openssl(&[
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        "unknown.test",
    ])
    .await;
    assert!(out.contains("CN = default.test"), "{out}");

    // Requests over HTTP/2 and HTTP/1.1 chosen by ALPN.
    let a = https_send(&both, addr, "a.example.com", get_req("a.example.com"))
        .await
        .unwrap();
    assert_eq!(a.text(), "secure");
    let h1 = tls_client(&ca, &["http/1.1"], None);
    let s = tls_connect(&h1, addr, "a.example.com").await.unwrap();
    assert_eq!(negotiated(&s).0.as_deref(), Some("http/1.1"));
    let a = https_send(&h1, addr, "a.example.com", get_req("a.example.com"))
        .await
        .unwrap();
    assert_eq!(a.text(), "secure");

    // curl with the CA, both protocols.
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let resolve = format!("a.example.com:{}:127.0.0.1", addr.port());
    let url = format!("https://a.example.com:{}/", addr.port());
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = curl(&[
            "--cacert",
            ca_file.to_str().unwrap(),
            "--resolve",
            &resolve,
            flag,
            "-w",
            "|%{http_version}",
            &url,
        ])
        .await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("secure|{version}"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // openssl: TLS 1.3 and ALPN h2 by default.
    let out = openssl(&[
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        "a.example.com",
        "-alpn",
        "h2,http/1.1",
    ])
    .await;
    assert!(out.contains("TLSv1.3"), "{out}");
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    assert!(
        p.proxy
            .metrics()
            .render()
            .contains("pylon_tls_handshakes_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimum_version_and_untrusted_or_expired_certificates_fail_the_handshake() {
    let ca = TestCa::new("CA one");
    let other = TestCa::new("CA two");
    let dir = temp_dir();
    let leaf = ca.server(&["v.test"]);
    let p = TestProxy::start(&respond_https(
        &dir,
        &[("leaf", &leaf)],
        "min_version = \"1.3\"",
    ))
    .await;
    let addr = p.addr("tls").to_string();
    let out = openssl(&[
        "s_client",
        "-connect",
        &addr,
        "-servername",
        "v.test",
        "-tls1_2",
    ])
    .await;
    assert!(
        out.contains("no peer certificate available") && !out.contains("TLSv1.2,"),
        "{out}"
    );
    let out = openssl(&[
        "s_client",
        "-connect",
        &addr,
        "-servername",
        "v.test",
        "-tls1_3",
    ])
    .await;
    assert!(out.contains("TLSv1.3"), "{out}");

    // A client trusting another CA refuses the certificate.
    let wrong = tls_client(&other, &["h2"], None);
    assert!(tls_connect(&wrong, p.addr("tls"), "v.test").await.is_err());

    // An expired leaf loads (with a warning) but clients refuse it.
    let expired = ca.expired_server(&["old.test"]);
    let p2 = TestProxy::start(&respond_https(&temp_dir(), &[("old", &expired)], "")).await;
    let err = tls_connect(&tls_client(&ca, &["h2"], None), p2.addr("tls"), "old.test")
        .await
        .err()
        .unwrap_or_else(|| panic!("expired certificate refused"));
    assert!(err.to_string().to_lowercase().contains("expired"), "{err}");

    // The proxy keeps serving good clients after the failures.
    let good = tls_client(&ca, &["h2"], None);
    let a = https_send(&good, p.addr("tls"), "v.test", get_req("v.test"))
        .await
        .unwrap();
    assert_eq!(a.text(), "secure");
    assert!(
        p.proxy
            .metrics()
            .render()
            .contains("pylon_tls_handshake_failures_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_required_and_forwarded_as_identity_headers() {
    let ca = TestCa::new("Server CA");
    let clients = TestCa::new("Client CA");
    let leaf = ca.server(&["m.test"]);
    let origin = Origin::echo().await;
    let rest = format!(
        "[[routes]]\ncluster = \"c\"\n[[clusters]]\nname = \"c\"\nendpoints = [\"{}\"]",
        origin.addr
    );
    let cfg = |mode: &str| mtls_config(&leaf, &clients, mode, &rest);
    let required = TestProxy::start(&cfg("required")).await;
    let alice = clients.client("alice", "alice.clients.test");

    // Without a certificate the handshake (or the first exchange, in TLS 1.3) fails.
    let anon = tls_client(&ca, &["http/1.1"], None);
    assert!(
        https_send(&anon, required.addr("tls"), "m.test", get_req("m.test"))
            .await
            .is_err()
    );

    let with = tls_client(&ca, &["h2"], Some(&alice));
    let req = Request::get("https://m.test/")
        .header("x-client-cert-subject", "CN=mallory")
        .body(empty())
        .unwrap();
    let a = https_send(&with, required.addr("tls"), "m.test", req)
        .await
        .unwrap();
    let h = &a.json()["headers"];
    assert_eq!(h["x-client-cert-subject"][0], "CN=alice");
    assert_eq!(h["x-client-cert-dns"][0], "alice.clients.test");
    assert_eq!(
        h["x-client-cert-fingerprint"][0].as_str().unwrap().len(),
        64
    );
    assert_eq!(h["x-forwarded-proto"][0], "https");

    // Optional: no certificate is allowed, and a spoofed identity header is dropped.
    let optional = TestProxy::start(&cfg("optional")).await;
    let req = Request::get("https://m.test/")
        .header("x-client-cert-subject", "CN=mallory")
        .body(empty())
        .unwrap();
    let a = https_send(&anon, optional.addr("tls"), "m.test", req)
        .await
        .unwrap();
    assert!(
        a.json()["headers"].get("x-client-cert-subject").is_none(),
        "{}",
        a.text()
    );
}

fn upstream_config(origin: SocketAddr, protocol: &str, tls: &str) -> String {
    format!(
        r#"
access_log = {{ enabled = false }}
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
[[routes]]
cluster = "c"
[[clusters]]
name = "c"
endpoints = ["{origin}"]
protocol = "{protocol}"
tls = {{ {tls} }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_upstreams_http1_h2_and_mutual() {
    let ca = TestCa::new("Upstream CA");
    let dir = temp_dir();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let server = ca.server(&["backend.internal"]);
    let origin = Origin::start_tls(origin_tls_config(&server, None, &["h2", "http/1.1"])).await;
    let base = format!(
        "ca = \"{}\", server_name = \"backend.internal\"",
        ca_file.display()
    );

    let p = TestProxy::start(&upstream_config(origin.addr, "http1", &base)).await;
    let j = get(p.addr("front"), "/").await.json();
    assert_eq!(j["version"], "HTTP/1.1");
    let p = TestProxy::start(&upstream_config(origin.addr, "h2", &base)).await;
    let j = get(p.addr("front"), "/").await.json();
    assert_eq!(j["version"], "HTTP/2.0");

    // The wrong name fails verification: 502 upstream_tls_failed.
    let wrong = format!(
        "ca = \"{}\", server_name = \"other.internal\"",
        ca_file.display()
    );
    let p = TestProxy::start(&upstream_config(origin.addr, "http1", &wrong)).await;
    let a = get(p.addr("front"), "/").await;
    assert_eq!(a.status.as_u16(), 502);
    assert_eq!(a.header("x-pylon-error"), Some("upstream_tls_failed"));
    assert_eq!(p.proxy.metrics().errors(ErrorKind::UpstreamTls), 1);
    // Unless verification is explicitly off (lab use).
    let p = TestProxy::start(&upstream_config(
        origin.addr,
        "http1",
        "insecure_skip_verify = true",
    ))
    .await;
    assert_eq!(get(p.addr("front"), "/").await.status.as_u16(), 200);

    // Mutual TLS to an origin that requires client certificates.
    let clients = TestCa::new("Upstream client CA");
    let mtls_origin =
        Origin::start_tls(origin_tls_config(&server, Some(&clients), &["http/1.1"])).await;
    let p = TestProxy::start(&upstream_config(mtls_origin.addr, "http1", &base)).await;
    assert_eq!(
        get(p.addr("front"), "/").await.status.as_u16(),
        502,
        "no client certificate"
    );
    let (cc, ck) = clients
        .client("pylon", "pylon.internal")
        .write(&dir, "pylon-client");
    let with = format!(
        "{base}, cert = \"{}\", key = \"{}\"",
        cc.display(),
        ck.display()
    );
    let p = TestProxy::start(&upstream_config(mtls_origin.addr, "http1", &with)).await;
    assert_eq!(get(p.addr("front"), "/").await.status.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_under_load_fails_no_request() {
    let ca = TestCa::new("Reload CA");
    let dir = temp_dir();
    let first = ca.server(&["r.test"]);
    let cfg = respond_https(&dir, &[("live", &first)], "");
    let p = TestProxy::start(&cfg).await;
    let addr = p.addr("tls");
    let client = tls_client(&ca, &["h2", "http/1.1"], None);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, stop, ok, failed) = (
            client.clone(),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match https_send(&client, addr, "r.test", get_req("r.test")).await {
                    Ok(a) if a.text() == "secure" => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    eventually("load running", || ok.load(Ordering::SeqCst) > 20).await;

    // A broken new pair is refused; the old certificate keeps serving.
    std::fs::write(dir.join("live-key.pem"), "not a key").unwrap();
    let errors = p.proxy.reload_certificates().await;
    assert!(
        errors
            .iter()
            .any(|e| e.to_string().contains("no private key")),
        "{errors:?}"
    );
    let s = tls_connect(&client, addr, "r.test").await.unwrap();
    assert_eq!(negotiated(&s).1, vec!["r.test".to_string()]);

    // A good new pair: new handshakes get it.
    let second = ca.server(&["r.test", "reloaded.test"]);
    second.write(&dir, "live");
    assert!(p.proxy.reload_certificates().await.is_empty());
    let s = tls_connect(&client, addr, "reloaded.test").await.unwrap();
    assert_eq!(
        negotiated(&s).1,
        vec!["r.test".to_string(), "reloaded.test".to_string()]
    );
    let before = ok.load(Ordering::SeqCst);
    eventually("load continues after reload", || {
        ok.load(Ordering::SeqCst) > before + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no request failed across reloads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_cut_at_the_handshake_timeout() {
    let ca = TestCa::new("Timeout CA");
    let leaf = ca.server(&["t.test"]);
    let p = TestProxy::start(&respond_https(
        &temp_dir(),
        &[("t", &leaf)],
        "handshake_timeout = \"200ms\"",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(p.addr("tls")).await.unwrap();
    s.write_all(b"\x16\x03\x01").await.unwrap(); // the start of a ClientHello, then nothing
    let out = read_to_close(&mut s).await;
    assert!(out.is_empty());
    eventually("handshake failure counted", || {
        p.proxy
            .metrics()
            .render()
            .contains("pylon_tls_handshake_failures_total 1")
    })
    .await;
}

#[test]
fn check_names_bad_certificate_files() {
    let ca = TestCa::new("Check CA");
    let dir = temp_dir();
    let (c1, _) = ca.server(&["one.test"]).write(&dir, "one");
    let (_, k2) = ca.server(&["two.test"]).write(&dir, "two");
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let cfg = format!(
        r#"[[listeners]]
name = "a"
bind = "127.0.0.1:0"
protocol = "https"
tls = {{ certificates = [{{ cert = "{c1}", key = "{k2}" }}] }}

[[listeners]]
name = "b"
bind = "127.0.0.1:0"
protocol = "https"
tls = {{ certificates = [{{ cert = "{c1}", key = "{empty}" }}] }}

[[listeners]]
name = "c"
bind = "127.0.0.1:0"
protocol = "https"
tls = {{ certificates = [{{ cert = "missing.pem", key = "{k2}" }}] }}
"#,
        c1 = c1.display(),
        k2 = k2.display(),
        empty = empty.display()
    );
    let file = dir.join("bad.toml");
    std::fs::write(&file, cfg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pylon"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = file.display().to_string();
    assert!(
        err.contains(&format!("{f}:5:"))
            && err.contains("listeners[0].tls.certificates[0].key")
            && err.contains("does not match the certificate"),
        "{err}"
    );
    assert!(
        err.contains("listeners[1].tls.certificates[0].key")
            && err.contains("no private key in file"),
        "{err}"
    );
    assert!(
        err.contains("listeners[2].tls.certificates[0].cert")
            && err.contains("missing.pem")
            && err.contains("cannot read"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_on_the_client_certificate() {
    let ca = TestCa::new("Route CA");
    let clients = TestCa::new("Route client CA");
    let rest = r#"
[[routes]]
path = "/admin"
client_cert_dns = "alice.clients.test"
respond = { body = "admin for alice" }
[[routes]]
path = "/admin"
respond = { status = 403, body = "forbidden" }
"#;
    let cfg = mtls_config(&ca.server(&["r.test"]), &clients, "optional", rest);
    let p = TestProxy::start(&cfg).await;
    let admin = || Request::get("https://r.test/admin").body(empty()).unwrap();
    let alice = clients.client("alice", "alice.clients.test");
    let bob = clients.client("bob", "bob.clients.test");
    let a = https_send(
        &tls_client(&ca, &["h2"], Some(&alice)),
        p.addr("tls"),
        "r.test",
        admin(),
    )
    .await
    .unwrap();
    assert_eq!(a.text(), "admin for alice");
    let b = https_send(
        &tls_client(&ca, &["h2"], Some(&bob)),
        p.addr("tls"),
        "r.test",
        admin(),
    )
    .await
    .unwrap();
    assert_eq!(b.status.as_u16(), 403);
    let n = https_send(
        &tls_client(&ca, &["h2"], None),
        p.addr("tls"),
        "r.test",
        admin(),
    )
    .await
    .unwrap();
    assert_eq!(n.status.as_u16(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_can_be_rejected() {
    let ca = TestCa::new("Reject CA");
    let leaf = ca.server(&["known.test"]);
    let p = TestProxy::start(&respond_https(
        &temp_dir(),
        &[("k", &leaf)],
        "unknown_sni = \"reject\"",
    ))
    .await;
    let addr = p.addr("tls").to_string();
    let out = openssl(&["s_client", "-connect", &addr, "-servername", "unknown.test"]).await;
    assert!(out.contains("no peer certificate available"), "{out}");
    let out = openssl(&["s_client", "-connect", &addr, "-servername", "known.test"]).await;
    assert!(out.contains("CN = known.test"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_in_the_running_binary() {
    let ca = TestCa::new("Sighup CA");
    let dir = temp_dir();
    let cfg = respond_https(&dir, &[("live", &ca.server(&["one.test"]))], "");
    let file = dir.join("pylon.toml");
    std::fs::write(&file, cfg).unwrap();
    let p = PylonProcess::start(
        env!("CARGO_BIN_EXE_pylon"),
        &["run", "-c", file.to_str().unwrap()],
        None,
    );
    let addr = p.addr("tls");
    let client = tls_client(&ca, &["h2"], None);
    assert!(
        tls_connect(&client, addr, "two.test").await.is_err(),
        "not yet valid for two.test"
    );

    ca.server(&["one.test", "two.test"]).write(&dir, "live");
    p.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(s) = tls_connect(&client, addr, "two.test").await {
            assert_eq!(
                negotiated(&s).1,
                vec!["one.test".to_string(), "two.test".to_string()]
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new certificate not served after SIGHUP"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let a = https_send(&client, addr, "two.test", get_req("two.test"))
        .await
        .unwrap();
    assert_eq!(a.text(), "secure");
    let lines = || p.stderr.lock().unwrap().clone();
    eventually("the reload names the certificate change", || {
        lines()
            .iter()
            .any(|l| l.contains("reload: listener tls: certificates changed"))
    })
    .await;

    // A broken key is refused, logged once, and the old certificate keeps serving.
    let key = dir.join("live-key.pem");
    let good_key = std::fs::read(&key).unwrap();
    std::fs::write(&key, "not a key").unwrap();
    p.signal(libc::SIGHUP);
    eventually("the broken key is refused", || {
        lines().iter().any(|l| l.contains("reload refused"))
    })
    .await;
    assert!(tls_connect(&client, addr, "two.test").await.is_ok());
    // Put it back and reload again: once that reload is logged, the previous SIGHUP
    // has logged all it will.
    std::fs::write(&key, good_key).unwrap();
    let reloaded = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("configuration reloaded"))
            .count()
    };
    let before = reloaded(&lines());
    p.signal(libc::SIGHUP);
    eventually("the repaired file reloads", || reloaded(&lines()) > before).await;
    let key_errors = lines()
        .iter()
        .filter(|l| l.contains("live-key.pem"))
        .count();
    assert_eq!(
        key_errors,
        1,
        "the key error is logged once: {:#?}",
        lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_ecdsa_and_ed25519_keys_and_session_resumption() {
    let ca = TestCa::new("Keys CA");
    let dir = temp_dir();
    let rsa = ca.server_with(&["rsa.test"], &rcgen::PKCS_RSA_SHA256);
    let ed = ca.server_with(&["ed.test"], &rcgen::PKCS_ED25519);
    let ec = ca.server(&["ec.test"]);
    let p = TestProxy::start(&respond_https(
        &dir,
        &[("ec", &ec), ("rsa", &rsa), ("ed", &ed)],
        "",
    ))
    .await;
    let addr = p.addr("tls");
    let client = tls_client(&ca, &["h2"], None);
    for name in ["rsa.test", "ed.test", "ec.test"] {
        let a = https_send(&client, addr, name, get_req(name))
            .await
            .unwrap();
        assert_eq!(a.text(), "secure", "{name}");
    }
    // Session resumption: a second openssl handshake with the saved session is resumed.
    let sess = dir.join("session.pem");
    let target = addr.to_string();
    // A whole request, so that the session ticket (sent after the handshake) is read.
    let request = b"GET / HTTP/1.1\r\nHost: ec.test\r\nConnection: close\r\n\r\n";
    let base = [
        "s_client",
        "-connect",
        target.as_str(),
        "-servername",
        "ec.test",
        "-tls1_3",
        "-ign_eof",
    ];
    let mut first = base.to_vec();
    first.extend(["-sess_out", sess.to_str().unwrap()]);
    let out = openssl_with_input(&first, request).await;
    assert!(out.contains("New, TLSv1.3"), "{out}");
    let mut second = base.to_vec();
    second.extend(["-sess_in", sess.to_str().unwrap()]);
    let out = openssl_with_input(&second, request).await;
    assert!(out.contains("Reused, TLSv1.3"), "{out}");
}

#[test]
fn an_expired_certificate_loads_with_a_warning() {
    let ca = TestCa::new("Expiry CA");
    let dir = temp_dir();
    let cfg = respond_https(&dir, &[("old", &ca.expired_server(&["old.test"]))], "");
    let file = dir.join("pylon.toml");
    std::fs::write(&file, cfg).unwrap();
    let p = PylonProcess::start(
        env!("CARGO_BIN_EXE_pylon"),
        &["run", "-c", file.to_str().unwrap()],
        None,
    );
    let lines = p.stderr.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("certificate has expired") && l.contains("old.pem")),
        "{lines:#?}"
    );
}

/// Reads HTTP/2 frames until the connection ends: (type, payload) of each.
async fn h2_frames<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut all)).await;
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= all.len() {
        let len = u32::from_be_bytes([0, all[at], all[at + 1], all[at + 2]]) as usize;
        let kind = all[at + 3];
        let end = (at + 9 + len).min(all.len());
        frames.push((kind, all[at + 9..end].to_vec()));
        at += 9 + len;
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_speak_exactly_the_protocol_alpn_chose() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new("ALPN CA");
    let dir = temp_dir();
    let p = TestProxy::start(&respond_https(&dir, &[("a", &ca.server(&["a.test"]))], "")).await;
    let addr = p.addr("tls");

    // ALPN chose h2, then an HTTP/1.1 request instead of the preface: an HTTP/2
    // connection error (GOAWAY PROTOCOL_ERROR), never an HTTP/1.1 answer.
    let mut s = tls_connect(&tls_client(&ca, &["h2"], None), addr, "a.test")
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let frames = h2_frames(&mut s).await;
    let goaway = frames
        .iter()
        .find(|(kind, _)| *kind == 0x7)
        .unwrap_or_else(|| panic!("a GOAWAY: {frames:?}"));
    assert_eq!(
        u32::from_be_bytes([goaway.1[4], goaway.1[5], goaway.1[6], goaway.1[7]]),
        0x1,
        "PROTOCOL_ERROR"
    );

    // ALPN chose http/1.1, then the HTTP/2 preface: not served as HTTP/2.
    let mut s = tls_connect(&tls_client(&ca, &["http/1.1"], None), addr, "a.test")
        .await
        .unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 "),
        "an HTTP/1.1 answer or a close, no HTTP/2 session: {text:?}"
    );
    assert!(!out.starts_with(&[0, 0]), "no HTTP/2 frame: {out:?}");

    // Both protocols still work when used as negotiated.
    for alpn in ["h2", "http/1.1"] {
        let client = tls_client(&ca, &[alpn], None);
        let a = https_send(&client, addr, "a.test", get_req("a.test"))
            .await
            .unwrap();
        assert_eq!(a.text(), "secure", "{alpn}");
    }
}
