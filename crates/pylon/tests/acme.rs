//! Automatic certificates against a real ACME server (Debian's pebble, with its DNS
//! test server answering 127.0.0.1): TLS-ALPN-01 and HTTP-01 orders, the account and
//! certificate stored and served again at start without the CA, External Account
//! Binding, a corrupt stored certificate, renewal without a reload, a CA that goes
//! down (the last good certificate keeps serving), refused names and failed challenges
//! (logged, counted, retried), and two instances sharing one storage directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pylon_testkit::pebble::{Pebble, PebbleOptions};
use pylon_testkit::*;

/// Orders take a few round trips; renewals wait for two thirds of a short lifetime.
const ACME_DEADLINE: Duration = Duration::from_secs(60);

async fn within<F: FnMut() -> Fut, Fut: Future<Output = bool>>(what: &str, cond: F) {
    eventually_async_within(ACME_DEADLINE, what, cond).await
}

struct Site<'a> {
    pebble: &'a Pebble,
    /// Keys of the https listener.
    listener: &'a str,
    storage: &'a Path,
    names: &'a [&'a str],
    challenge: &'a str,
    extra: &'a str,
}

/// A config with an http listener `web` and an https listener `tls` whose certificate
/// comes from pebble.
fn config(http: SocketAddr, https: SocketAddr, s: &Site<'_>) -> String {
    let names: Vec<String> = s.names.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        r#"
access_log = {{ enabled = false }}
[admin]
bind = "127.0.0.1:0"

[[listeners]]
name = "web"
bind = "{http}"

[[listeners]]
name = "tls"
bind = "{https}"
protocol = "https"
{listener}
[listeners.tls.acme]
directory = "{directory}"
ca = "{ca}"
contact = ["ops@pylon.test"]
names = [{names}]
storage = "{storage}"
challenge = "{challenge}"
retry_backoff = "1s"
retry_max = "2s"
{extra}

[[routes]]
respond = {{ body = "served" }}
"#,
        directory = s.pebble.directory(),
        listener = s.listener,
        ca = s.pebble.api_ca.display(),
        names = names.join(", "),
        storage = s.storage.display(),
        challenge = s.challenge,
        extra = s.extra,
    )
}

/// The certificate `addr` serves for `name`, verified against pebble's root; `None`
/// while the handshake fails.
async fn served(addr: SocketAddr, name: &str, root_pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tls_connect(
        &tokio_rustls::TlsConnector::from(Arc::new(config)),
        addr,
        name,
    )
    .await
    .ok()?;
    Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec())
}

/// The certificate `addr` serves for `name` once one is issued (within the ACME
/// deadline).
async fn issued_certificate(addr: SocketAddr, name: &str, root_pem: &str) -> Vec<u8> {
    within(&format!("a certificate for {name}"), || async {
        served(addr, name, root_pem).await.is_some()
    })
    .await;
    served(addr, name, root_pem).await.expect("still served")
}

/// A QUIC client config trusting pebble's root, offering `h3`.
fn h3_config(root_pem: &str) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![b"h3".to_vec()];
    c
}

/// curl, a real HTTPS client, fetching `/` from `name` at `addr` with pebble's root.
async fn curl_body(addr: SocketAddr, name: &str, root: &Path) -> String {
    let out = curl(&[
        "--cacert",
        root.to_str().unwrap(),
        "--resolve",
        &format!("{name}:{}:127.0.0.1", addr.port()),
        &format!("https://{name}:{}/", addr.port()),
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn write_root(pebble: &Pebble) -> (String, PathBuf) {
    let pem = pebble.root_pem();
    let path = temp_dir().join("pebble-root.pem");
    std::fs::write(&path, &pem).unwrap();
    (pem, path)
}

/// The storage folder Pylon keeps this pebble's account and certificates in.
fn folder(storage: &Path, pebble: &Pebble) -> PathBuf {
    storage.join(format!("127.0.0.1_{}_dir", pebble.addr.port()))
}

fn issued(metrics: &str, names: &str) -> u64 {
    metric(
        metrics,
        &format!("pylon_acme_certificates_issued_total{{certificate=\"{names}\"}}"),
    )
}

fn failures(metrics: &str, names: &str, reason: &str) -> u64 {
    metric(
        metrics,
        &format!("pylon_acme_order_failures_total{{certificate=\"{names}\",reason=\"{reason}\"}}"),
    )
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_certificate_is_ordered_stored_and_served_again_without_the_ca() {
    let (addrs, prebound) = prebind(2);
    let mut pebble = Pebble::start(PebbleOptions {
        http_port: addrs[0].port(),
        tls_port: addrs[1].port(),
        ..Default::default()
    });
    let storage = temp_dir().join("acme");
    let site = Site {
        pebble: &pebble,
        listener: "http3 = true",
        storage: &storage,
        names: &["a.pylon.test", "www.a.pylon.test"],
        challenge: "tls-alpn-01",
        extra: "",
    };
    let proxy = TestProxy::start_prebound(&config(addrs[0], addrs[1], &site), prebound).await;
    let (root_pem, root) = write_root(&pebble);
    within("the certificate is issued and served", || async {
        served(addrs[1], "www.a.pylon.test", &root_pem)
            .await
            .is_some()
    })
    .await;
    assert_eq!(curl_body(addrs[1], "a.pylon.test", &root).await, "served");
    // HTTP/3 on the same port serves the same certificate.
    let h3 = H3Client::connect_with(h3_config(&root_pem), addrs[1], "a.pylon.test")
        .await
        .expect("an HTTP/3 connection verified against pebble's root");
    let answer = h3
        .send(
            http::Request::get("https://a.pylon.test/")
                .body(())
                .unwrap(),
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(answer.text(), "served");
    let m = proxy.metrics().await;
    assert_eq!(issued(&m, "a.pylon.test,www.a.pylon.test"), 1, "{m}");
    assert!(
        metric(
            &m,
            "pylon_acme_challenges_answered_total{type=\"tls-alpn-01\"}"
        ) >= 2
    );
    assert!(
        metric(
            &m,
            "pylon_acme_certificate_expiry_timestamp_seconds{certificate=\"a.pylon.test,www.a.pylon.test\"}"
        ) > 0
    );
    let f = folder(&storage, &pebble);
    #[cfg(unix)]
    {
        assert_eq!(mode(&f.join("account.json")), 0o600);
        let pem = std::fs::read_dir(&f)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let n = p.file_name().unwrap().to_str().unwrap();
                n.starts_with("a.pylon.test+") && n.ends_with(".pem")
            })
            .expect("the certificate's file");
        assert_eq!(mode(&pem), 0o600);
    }
    assert!(
        !f.join("challenges/tls-alpn-01/a.pylon.test").exists(),
        "answers are taken back after the order"
    );
    let first = served(addrs[1], "a.pylon.test", &root_pem).await.unwrap();

    // A reload that leaves the acme table as it was keeps the certificate: no new order.
    let text =
        config(addrs[0], addrs[1], &site).replace("body = \"served\"", "body = \"reloaded\"");
    let reloaded = pylon_config::parse(&text, "acme.toml").unwrap();
    proxy.proxy.reload(&reloaded).await.expect("reload");
    assert_eq!(curl_body(addrs[1], "a.pylon.test", &root).await, "reloaded");
    assert_eq!(
        served(addrs[1], "a.pylon.test", &root_pem).await.as_deref(),
        Some(&first[..])
    );
    let account = std::fs::read(f.join("account.json")).unwrap();
    // One that changes the names orders a certificate for them, with the same account.
    let text = text.replace(
        "\"www.a.pylon.test\"",
        "\"www.a.pylon.test\", \"api.a.pylon.test\"",
    );
    let reloaded = pylon_config::parse(&text, "acme.toml").unwrap();
    proxy.proxy.reload(&reloaded).await.expect("reload");
    within("the new names' certificate", || async {
        served(addrs[1], "api.a.pylon.test", &root_pem)
            .await
            .is_some()
    })
    .await;
    let m = proxy.metrics().await;
    assert_eq!(
        issued(&m, "a.pylon.test,www.a.pylon.test,api.a.pylon.test"),
        1,
        "{m}"
    );
    assert_eq!(
        std::fs::read(f.join("account.json")).unwrap(),
        account,
        "the account is reused"
    );
    proxy.proxy.shutdown(Duration::from_secs(1)).await;
    drop(proxy);

    // A restart with the CA down serves the stored certificate from the first handshake
    // (the two names' own: the three names' is stored beside it).
    let (again, prebound) = prebind(2);
    let text = config(again[0], again[1], &site);
    pebble.stop();
    let proxy = TestProxy::start_prebound(&text, prebound).await;
    assert_eq!(
        served(again[1], "a.pylon.test", &root_pem).await.as_deref(),
        Some(&first[..])
    );
    assert_eq!(
        curl_body(again[1], "www.a.pylon.test", &root).await,
        "served"
    );
    let m = proxy.metrics().await;
    assert_eq!(issued(&m, "a.pylon.test,www.a.pylon.test"), 0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_with_external_account_binding_replaces_a_corrupt_stored_certificate() {
    let (addrs, prebound) = prebind(2);
    let pebble = Pebble::start(PebbleOptions {
        http_port: addrs[0].port(),
        tls_port: addrs[1].port(),
        eab: vec![(
            "kid-1".to_owned(),
            "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W".to_owned(),
        )],
        ..Default::default()
    });
    let storage = temp_dir().join("acme");
    let f = folder(&storage, &pebble);
    std::fs::create_dir_all(&f).unwrap();
    std::fs::write(f.join("b.pylon.test.pem"), "not a certificate").unwrap();
    let site = Site {
        pebble: &pebble,
        listener: "",
        storage: &storage,
        names: &["b.pylon.test"],
        challenge: "http-01",
        extra: r#"external_account = { key_id = "kid-1", hmac_key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W" }"#,
    };
    let proxy = TestProxy::start_prebound(&config(addrs[0], addrs[1], &site), prebound).await;
    let (root_pem, root) = write_root(&pebble);
    issued_certificate(addrs[1], "b.pylon.test", &root_pem).await;
    assert_eq!(curl_body(addrs[1], "b.pylon.test", &root).await, "served");
    let m = proxy.metrics().await;
    assert_eq!(issued(&m, "b.pylon.test"), 1, "{m}");
    assert!(metric(&m, "pylon_acme_challenges_answered_total{type=\"http-01\"}") >= 1);
    assert_eq!(
        metric(
            &m,
            "pylon_acme_stored_certificates_unusable_total{certificate=\"b.pylon.test\"}"
        ),
        1
    );
    // Other paths under the challenge prefix go on to routing.
    let out = curl(&[&format!(
        "http://{}/.well-known/acme-challenge/unknown",
        addrs[0]
    )])
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_takes_effect_without_a_reload_and_a_down_ca_keeps_the_last_good_certificate() {
    let (addrs, prebound) = prebind(2);
    let mut pebble = Pebble::start(PebbleOptions {
        http_port: addrs[0].port(),
        tls_port: addrs[1].port(),
        // Renewal is due after two thirds: about 8 s.
        validity: Duration::from_secs(12),
        ..Default::default()
    });
    let storage = temp_dir().join("acme");
    let site = Site {
        pebble: &pebble,
        listener: "",
        storage: &storage,
        names: &["r.pylon.test"],
        challenge: "tls-alpn-01",
        extra: "",
    };
    let proxy = TestProxy::start_prebound(&config(addrs[0], addrs[1], &site), prebound).await;
    let (root_pem, _) = write_root(&pebble);
    let first = issued_certificate(addrs[1], "r.pylon.test", &root_pem).await;
    within("a renewed certificate is served", || async {
        served(addrs[1], "r.pylon.test", &root_pem)
            .await
            .is_some_and(|c| c != first)
    })
    .await;
    assert!(issued(&proxy.metrics().await, "r.pylon.test") >= 2);

    // The CA goes away: the next renewal fails (counted), the last good one serves.
    pebble.stop();
    within("a failed renewal is counted", || async {
        failures(&proxy.metrics().await, "r.pylon.test", "unreachable") >= 1
    })
    .await;
    assert!(served(addrs[1], "r.pylon.test", &root_pem).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_names_and_failed_challenges_are_counted_and_retried() {
    let (addrs, prebound) = prebind(2);
    // HTTP-01 validations go to a port where nothing listens.
    let nothing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = nothing.local_addr().unwrap().port();
    drop(nothing);
    let pebble = Pebble::start(PebbleOptions {
        http_port: closed_port,
        tls_port: addrs[1].port(),
        blocklist: vec!["blocked.pylon.test".to_owned()],
        ..Default::default()
    });
    let storage = temp_dir().join("acme");
    let site = Site {
        pebble: &pebble,
        listener: "",
        storage: &storage,
        names: &["blocked.pylon.test"],
        challenge: "tls-alpn-01",
        extra: "",
    };
    let mut text = config(addrs[0], addrs[1], &site);
    text.push_str(&format!(
        r#"
[[listeners]]
name = "unvalidated"
bind = "127.0.0.1:0"
protocol = "https"
[listeners.tls.acme]
directory = "{}"
ca = "{}"
names = ["c.pylon.test"]
storage = "{}"
challenge = "http-01"
retry_backoff = "1s"
retry_max = "2s"
"#,
        pebble.directory(),
        pebble.api_ca.display(),
        storage.display()
    ));
    let proxy = TestProxy::start_prebound(&text, prebound).await;
    within("refusals and failed challenges, each retried", || async {
        let m = proxy.metrics().await;
        failures(&m, "blocked.pylon.test", "rejected") >= 2
            && failures(&m, "c.pylon.test", "challenge") >= 2
    })
    .await;
    let m = proxy.metrics().await;
    assert_eq!(issued(&m, "blocked.pylon.test"), 0);
    assert_eq!(issued(&m, "c.pylon.test"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_storage_order_once_and_answer_each_others_challenges() {
    let (a, prebound_a) = prebind(2);
    let (b, prebound_b) = prebind(2);
    let pebble = Pebble::start(PebbleOptions {
        http_port: a[0].port(),
        tls_port: a[1].port(),
        ..Default::default()
    });
    let storage = temp_dir().join("acme");
    let site = Site {
        pebble: &pebble,
        listener: "",
        storage: &storage,
        names: &["shared.pylon.test"],
        challenge: "http-01",
        extra: "",
    };
    // Both start at once; either may take the order lock.
    let (text_a, text_b) = (config(a[0], a[1], &site), config(b[0], b[1], &site));
    let (pa, pb) = tokio::join!(
        TestProxy::start_prebound(&text_a, prebound_a),
        TestProxy::start_prebound(&text_b, prebound_b),
    );
    let (root_pem, _) = write_root(&pebble);
    within("both instances serve the certificate", || async {
        served(a[1], "shared.pylon.test", &root_pem).await.is_some()
            && served(b[1], "shared.pylon.test", &root_pem).await.is_some()
    })
    .await;
    assert_eq!(
        served(a[1], "shared.pylon.test", &root_pem).await,
        served(b[1], "shared.pylon.test", &root_pem).await,
        "one certificate"
    );
    let total = issued(&pa.metrics().await, "shared.pylon.test")
        + issued(&pb.metrics().await, "shared.pylon.test");
    assert_eq!(total, 1, "one order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_names_get_a_certificate_at_their_first_handshake_when_the_ask_url_approves() {
    let (addrs, prebound) = prebind(2);
    let pebble = Pebble::start(PebbleOptions {
        http_port: addrs[0].port(),
        tls_port: addrs[1].port(),
        ..Default::default()
    });
    // Approves names that start with "yes".
    let ask = Origin::start(|req: http::Request<hyper::body::Incoming>| async move {
        let approved = req
            .uri()
            .query()
            .is_some_and(|q| q.starts_with("domain=yes"));
        let mut resp = http::Response::new(full(""));
        *resp.status_mut() = if approved {
            http::StatusCode::OK
        } else {
            http::StatusCode::FORBIDDEN
        };
        resp
    })
    .await;
    let storage = temp_dir().join("acme");
    let site = Site {
        pebble: &pebble,
        listener: "",
        storage: &storage,
        names: &[],
        challenge: "tls-alpn-01",
        extra: &format!(
            "on_demand = true\nask = \"http://{}/check\"\non_demand_per_minute = 2",
            ask.addr
        ),
    };
    let text = config(addrs[0], addrs[1], &site).replace("names = []\n", "");
    let proxy = TestProxy::start_prebound(&text, prebound).await;
    let (root_pem, root) = write_root(&pebble);
    // The first handshake waits for the order, then completes with the new certificate.
    assert_eq!(
        curl_body(addrs[1], "yes1.pylon.test", &root).await,
        "served"
    );
    assert!(
        served(addrs[1], "yes1.pylon.test", &root_pem)
            .await
            .is_some()
    );
    // A name the ask URL refuses gets nothing.
    assert!(served(addrs[1], "no.pylon.test", &root_pem).await.is_none());
    // At most two new names a minute.
    assert!(
        served(addrs[1], "yes2.pylon.test", &root_pem)
            .await
            .is_some()
    );
    assert!(
        served(addrs[1], "yes3.pylon.test", &root_pem)
            .await
            .is_none()
    );
    let m = proxy.metrics().await;
    let names = |r: &str| {
        metric(
            &m,
            &format!("pylon_acme_on_demand_names_total{{result=\"{r}\"}}"),
        )
    };
    assert_eq!(names("approved"), 2, "{m}");
    assert_eq!(names("denied"), 1, "{m}");
    assert_eq!(names("rate_limited"), 1, "{m}");
    assert_eq!(issued(&m, "yes1.pylon.test"), 1);
    // A refused name is remembered: asked once however often it comes.
    let asked = ask.request_count();
    assert!(served(addrs[1], "no.pylon.test", &root_pem).await.is_none());
    assert_eq!(ask.request_count(), asked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_start_is_refused_when_asked_and_a_future_one_is_counted() {
    let storage = temp_dir().join("acme");
    // A directory nobody answers at: nothing can be ordered.
    let text = format!(
        r#"
access_log = {{ enabled = false }}
[admin]
bind = "127.0.0.1:0"
[[listeners]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "https"
[listeners.tls.acme]
directory = "https://127.0.0.1:9/dir"
names = ["skew.pylon.test"]
storage = "{}"
start_without_certificate = false
[[routes]]
respond = {{ body = "served" }}
"#,
        storage.display()
    );
    let config = pylon_config::parse(&text, "acme.toml").unwrap();
    let err = match pylon_proxy::Proxy::start(&config).await {
        Ok(_) => panic!("started without a certificate"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("listeners[0].tls.acme")
            && err.contains("no usable certificate for skew.pylon.test")
            && err.contains("start_without_certificate = false"),
        "{err}"
    );

    // A stored certificate that is not valid yet by this clock: served, and counted.
    let mut params = rcgen::CertificateParams::new(vec!["skew.pylon.test".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2099, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 4, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let folder = storage.join("127.0.0.1_9_dir");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("skew.pylon.test.pem"),
        format!("{}{}", key.serialize_pem(), cert.pem()),
    )
    .unwrap();
    let proxy = TestProxy::start(&text).await;
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "pylon_acme_certificates_not_yet_valid_total{certificate=\"skew.pylon.test\"}"
        ),
        1,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "pylon_acme_certificate_expiry_timestamp_seconds{certificate=\"skew.pylon.test\"}"
        ),
        4_078_684_800,
        "2099-04-01"
    );
    let out = curl(&[
        "-k",
        "--resolve",
        &format!("skew.pylon.test:{}:127.0.0.1", proxy.addr("tls").port()),
        &format!("https://skew.pylon.test:{}/", proxy.addr("tls").port()),
    ])
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "served", "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_certificates_get_their_ocsp_response_stapled() {
    let (addrs, prebound) = prebind(2);
    let ocsp_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pebble = Pebble::start(PebbleOptions {
        http_port: addrs[0].port(),
        tls_port: addrs[1].port(),
        ocsp_responder: format!("http://127.0.0.1:{ocsp_port}/"),
        ..Default::default()
    });
    let storage = temp_dir().join("acme");
    let site = Site {
        pebble: &pebble,
        listener: "",
        storage: &storage,
        names: &["s.pylon.test"],
        challenge: "tls-alpn-01",
        extra: "",
    };
    // The responder's signer is made first: Pylon's first fetch follows the issuance at
    // once and fails (no responder yet), its retries come after 5, then 15, then 35 s,
    // so the responder must be up soon after the certificate is.
    let dir = temp_dir();
    let signer = TestCa::new("ocsp signer").server(&["ocsp.signer.test"]);
    let (signer_cert, signer_key) = signer.write(&dir, "signer");
    let proxy = TestProxy::start_prebound(&config(addrs[0], addrs[1], &site), prebound).await;
    let (root_pem, _) = write_root(&pebble);
    let leaf = issued_certificate(addrs[1], "s.pylon.test", &root_pem).await;
    // Pebble names a responder but runs none: `openssl ocsp` answers for its
    // intermediate, with the issued serial good in its database. It signs with a key of
    // the test's own; Pylon checks what the response is for and when, and leaves the
    // signature to clients.
    let (_, x509) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let serial: String = x509
        .raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02X}"))
        .collect();
    std::fs::write(dir.join("intermediate.pem"), pebble.intermediate_pem()).unwrap();
    std::fs::write(
        dir.join("index.txt"),
        format!("V\t301231235959Z\t\t{serial}\tunknown\t/CN=s.pylon.test\n"),
    )
    .unwrap();
    let mut responder = std::process::Command::new("openssl")
        .current_dir(&dir)
        .args([
            "ocsp",
            "-index",
            "index.txt",
            "-port",
            &ocsp_port.to_string(),
            "-rsigner",
            signer_cert.to_str().unwrap(),
            "-rkey",
            signer_key.to_str().unwrap(),
            "-CA",
            "intermediate.pem",
            "-nmin",
            "5",
            "-ignore_err",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl ocsp runs");
    eventually_async_within(
        Duration::from_secs(60),
        "the ACME certificate stapled",
        || async {
            let out = tokio::process::Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &addrs[1].to_string(),
                    "-servername",
                    "s.pylon.test",
                    "-status",
                ])
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("Cert Status: good")
        },
    )
    .await;
    let m = proxy.metrics().await;
    assert!(
        metric(&m, "pylon_ocsp_fetches_total{result=\"good\"}") >= 1,
        "{m}"
    );
    assert!(
        folder(&storage, &pebble)
            .join("ocsp")
            .read_dir()
            .unwrap()
            .count()
            == 1,
        "cached in the ACME storage"
    );
    let _ = responder.kill();
    let _ = responder.wait();
}
