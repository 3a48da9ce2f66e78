//! The forward proxy end to end with curl: plain HTTP (absolute-form), HTTPS through
//! CONNECT to a loopback TLS origin, CONNECT over HTTP/2, access rules (host, port,
//! private addresses), Basic authentication (407), anonymity; destination names
//! resolved through the testkit's DNS server (special-purpose answers, IPv4 and IPv6,
//! NXDOMAIN and a silent resolver).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};

use pylon_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(forward: &str, listener_extra: &str) -> String {
    format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "fwd"
bind = "127.0.0.1:0"
{listener_extra}

[listeners.forward]
{forward}
"#
    )
}

async fn curl_via(proxy: SocketAddr, extra: &[&str], url: &str) -> (u16, String, String) {
    let proxy = format!("http://{proxy}");
    let mut args = vec!["-sS", "--max-time", "10", "-i", "-x", proxy.as_str()];
    args.extend_from_slice(extra);
    args.push(url);
    let out = curl(&args).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // The last response's status line (after any CONNECT answer).
    let status = text
        .lines()
        .rfind(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        text,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_goes_through_in_origin_form() {
    let echo = Origin::echo().await;
    let p = TestProxy::start(&config("allow_private = true", "")).await;
    let url = format!("http://{}/some/path?q=1", echo.addr);
    let (status, text, err) = curl_via(p.addr("fwd"), &[], &url).await;
    assert_eq!(status, 200, "{text}{err}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let seen: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(seen["uri"], "/some/path?q=1", "origin-form upstream");
    assert_eq!(seen["headers"]["host"][0], echo.addr.to_string());
    assert!(seen["headers"].get("proxy-connection").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_goes_through_connect_to_a_loopback_tls_origin() {
    let ca = TestCa::new("forward CA");
    let dir = temp_dir();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let origin = Origin::echo_tls(origin_tls_config(
        &ca.server(&["localhost"]),
        None,
        &["http/1.1"],
    ))
    .await;
    let port = origin.addr.port();
    let p = TestProxy::start(&config(
        &format!("allow_private = true\nconnect_ports = [{port}]"),
        "",
    ))
    .await;
    let url = format!("https://localhost:{port}/secure");
    let (status, text, err) = curl_via(
        p.addr("fwd"),
        &["--cacert", ca_file.to_str().unwrap()],
        &url,
    )
    .await;
    assert_eq!(status, 200, "{text}{err}");
    assert!(text.contains("/secure"), "{text}");
    let m = p.proxy.metrics();
    assert_eq!(
        m.tunnels_total.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_over_http2_opens_a_tunnel() {
    let origin = RawOrigin::start(|mut s: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
    })
    .await;
    let port = origin.addr.port();
    let p = TestProxy::start(&config(
        &format!("allow_private = true\nconnect_ports = [{port}]"),
        "",
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(p.addr("fwd")).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::connect(format!("127.0.0.1:{port}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let up = hyper::upgrade::on(resp).await.unwrap();
    let mut io = hyper_util::rt::TokioIo::new(up);
    io.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    io.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_deny_with_their_name() {
    let echo = Origin::echo().await;
    // Defaults: loopback is not reachable.
    let p = TestProxy::start(&config("", "")).await;
    let (status, text, _) = curl_via(p.addr("fwd"), &[], &format!("http://{}/", echo.addr)).await;
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("X-Pylon-Error: denied: private_address"),
        "{text}"
    );
    assert_eq!(echo.request_count(), 0);

    let rules = r#"allow_private = true
rules = [
  { name = "no-blocked", action = "deny", hosts = ["*.blocked.test"] },
  { name = "no-ssh", action = "deny", ports = [22] },
]"#;
    let p = TestProxy::start(&config(rules, "")).await;
    let (status, text, _) = curl_via(p.addr("fwd"), &[], "http://www.blocked.test/").await;
    assert_eq!(status, 403);
    assert!(text.contains("X-Pylon-Error: denied: no-blocked"), "{text}");
    // CONNECT only to 443 by default.
    let (status, text, _) =
        curl_via(p.addr("fwd"), &["-p"], &format!("http://{}/", echo.addr)).await;
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("X-Pylon-Error: denied: connect_port"),
        "{text}"
    );
    let (status, _, _) = curl_via(p.addr("fwd"), &[], "http://127.0.0.1:22/").await;
    assert_eq!(status, 403);
    assert_eq!(echo.request_count(), 0, "nothing denied reached the origin");
    // Plain HTTP to the allowed origin still works.
    let (status, _, _) = curl_via(p.addr("fwd"), &[], &format!("http://{}/", echo.addr)).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_authentication_answers_407_without_valid_credentials() {
    let echo = Origin::echo().await;
    let hash = pylon_proxy::http::forward::hash_password("s3cret").unwrap();
    let fwd = format!(
        "allow_private = true\nusers = [{{ name = \"alice\", password_hash = \"{hash}\" }}]"
    );
    let p = TestProxy::start(&config(&fwd, "")).await;
    let url = format!("http://{}/", echo.addr);
    let (status, text, _) = curl_via(p.addr("fwd"), &[], &url).await;
    assert_eq!(status, 407, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("proxy-authenticate: basic realm=\"pylon\""),
        "{text}"
    );
    let (status, _, _) = curl_via(p.addr("fwd"), &["--proxy-user", "alice:wrong"], &url).await;
    assert_eq!(status, 407);
    let (status, text, _) = curl_via(p.addr("fwd"), &["--proxy-user", "alice:s3cret"], &url).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        !text.contains("proxy-authorization"),
        "credentials never reach the origin: {text}"
    );
    assert_eq!(echo.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_wrong_credentials_cost_one_argon2_verification() {
    let echo = Origin::echo().await;
    let hash = pylon_proxy::http::forward::hash_password("s3cret").unwrap();
    let fwd = format!(
        "allow_private = true\nusers = [{{ name = \"alice\", password_hash = \"{hash}\" }}]"
    );
    let p = TestProxy::start(&config(&fwd, "")).await;
    let addr = p.addr("fwd");
    let request = |credentials: &str| {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(credentials);
        format!(
            "GET http://{}/ HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: Basic {auth}\r\nConnection: close\r\n\r\n",
            echo.addr, echo.addr
        )
    };
    let verifications = || {
        p.proxy
            .runtime()
            .listener("fwd")
            .unwrap()
            .forward
            .as_ref()
            .unwrap()
            .argon2_verifications()
    };
    let wrong = request("alice:wrong");
    for _ in 0..5 {
        let answer = raw(addr, wrong.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");
    }
    assert_eq!(verifications(), 1, "the wrong password was verified once");
    // Several at once with another wrong password: still one verification.
    let other = request("alice:guess");
    let answers = tokio::join!(
        raw(addr, other.as_bytes()),
        raw(addr, other.as_bytes()),
        raw(addr, other.as_bytes()),
        raw(addr, other.as_bytes())
    );
    for answer in [answers.0, answers.1, answers.2, answers.3] {
        assert!(answer.starts_with("HTTP/1.1 407"), "{answer}");
    }
    assert_eq!(verifications(), 2);
    let right = request("alice:s3cret");
    for _ in 0..3 {
        let answer = raw(addr, right.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(verifications(), 3);
    assert_eq!(echo.request_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_identifying_headers_can_be_stripped() {
    let echo = Origin::echo().await;
    let p = TestProxy::start(&config(
        "allow_private = true\nstrip_client_headers = true",
        "x_forwarded = false\nvia = false",
    ))
    .await;
    let url = format!("http://{}/", echo.addr);
    let (status, text, _) = curl_via(
        p.addr("fwd"),
        &["-H", "X-Forwarded-For: 192.0.2.7", "-H", "Via: 1.1 inner"],
        &url,
    )
    .await;
    assert_eq!(status, 200);
    let lower = text.to_ascii_lowercase();
    assert!(
        !lower.contains("x-forwarded-for") && !lower.contains("192.0.2.7"),
        "{text}"
    );
    assert!(!lower.contains("\"via\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_connect_targets_and_non_proxy_requests_get_400() {
    let p = TestProxy::start(&config("allow_private = true", "")).await;
    for bad in [
        "CONNECT /not-an-authority HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "CONNECT :443 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /origin-form HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw(p.addr("fwd"), bad.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{bad:?} → {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tunnel_is_one_access_log_line_with_bytes_and_user() {
    let origin = RawOrigin::start(|mut s: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"0123456789").await.unwrap();
    })
    .await;
    let port = origin.addr.port();
    let dir = temp_dir();
    let log = dir.join("access.log");
    let hash = pylon_proxy::http::forward::hash_password("pw").unwrap();
    let cfg = config(
        &format!(
            "allow_private = true\nconnect_ports = [{port}]\nusers = [{{ name = \"bob\", password_hash = \"{hash}\" }}]"
        ),
        "",
    )
    .replace(
        "[access_log]\nenabled = false",
        &format!("[access_log]\npath = \"{}\"", log.display()),
    );
    let p = TestProxy::start(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(p.addr("fwd")).await.unwrap();
    let auth = "Ym9iOnB3"; // bob:pw
    s.write_all(
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic {auth}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(b"hello").await.unwrap();
    let text = read_to_close(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("0123456789"), "{text}");
    // Our side closes too: the tunnel ends and writes its line.
    drop(s);
    eventually("the tunnel's log line", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"method\":\"CONNECT\""))
    })
    .await;
    let line = std::fs::read_to_string(&log).unwrap();
    let record: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(record["authority"], format!("127.0.0.1:{port}"));
    assert_eq!(record["user"], "bob");
    assert_eq!(record["bytes_in"], 5);
    assert_eq!(record["bytes_out"], 10);
    assert_eq!(line.lines().count(), 1, "one line per tunnel: {line}");
}

/// The forward proxy resolving names with `dns`.
fn dns_config(dns: SocketAddr, forward: &str) -> String {
    config(&format!("resolvers = [\"{dns}\"]\n{forward}"), "")
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_resolving_to_special_purpose_addresses_are_denied() {
    let dns = DnsServer::start().await;
    let names: &[(&str, &[&str])] = &[
        ("reserved.pylon.test", &["240.0.0.1"]),
        ("cgnat.pylon.test", &["100.64.0.1"]),
        ("benchmark.pylon.test", &["198.18.0.1"]),
        ("nat64-loopback.pylon.test", &["64:ff9b::7f00:1"]),
        ("nat64-private.pylon.test", &["64:ff9b::a00:1"]),
        ("sixtofour.pylon.test", &["2002:a00:1::"]),
        ("mapped.pylon.test", &["::ffff:10.0.0.1"]),
        ("documentation.pylon.test", &["2001:db8::1"]),
        ("teredo.pylon.test", &["2001::1"]),
        // A public A record does not carry a private AAAA one through.
        ("rebind.pylon.test", &["93.184.216.34", "fd00::1"]),
    ];
    for (name, answer) in names {
        dns.set_ips(name, &ips(answer));
    }
    let p = TestProxy::start(&dns_config(dns.addr, "")).await;
    for (name, _) in names {
        let (status, text, err) = curl_via(p.addr("fwd"), &[], &format!("http://{name}/")).await;
        assert_eq!(status, 403, "{name}: {text}{err}");
        assert!(
            text.contains("X-Pylon-Error: denied: private_address"),
            "{name}: {text}"
        );
    }
    // CONNECT to an allowed port, same verdict.
    for name in ["nat64-loopback.pylon.test", "reserved.pylon.test"] {
        let (status, text, err) =
            curl_via(p.addr("fwd"), &["-p"], &format!("http://{name}:443/")).await;
        assert_eq!(status, 403, "{name}: {text}{err}");
        assert!(
            text.contains("X-Pylon-Error: denied: private_address"),
            "{name}: {text}"
        );
    }
    assert!(dns.queries() > 0, "the configured resolver answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_an_allowed_address_goes_through() {
    let echo = Origin::echo().await;
    let dns = DnsServer::start().await;
    dns.set_ips("echo.pylon.test", &[echo.addr.ip()]);
    let p = TestProxy::start(&dns_config(dns.addr, "allow_private = true")).await;
    let authority = format!("echo.pylon.test:{}", echo.addr.port());
    let (status, text, err) =
        curl_via(p.addr("fwd"), &[], &format!("http://{authority}/via-dns")).await;
    assert_eq!(status, 200, "{text}{err}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let seen: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(seen["uri"], "/via-dns");
    assert_eq!(seen["headers"]["host"][0], authority.as_str());
    assert!(dns.queries() > 0, "the configured resolver answered");

    // An AAAA answer (where this host has IPv6 loopback).
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let v6 = Origin::named_at("v6", "[::1]:0".parse().unwrap()).await;
        dns.set_ips("v6.pylon.test", &[v6.addr.ip()]);
        let url = format!("http://v6.pylon.test:{}/", v6.addr.port());
        let (status, text, err) = curl_via(p.addr("fwd"), &[], &url).await;
        assert_eq!(status, 200, "{text}{err}");
        assert!(text.ends_with("v6"), "{text}");
    }

    // Without allow_private the same name is refused, and nothing reaches the origin.
    let strict = TestProxy::start(&dns_config(dns.addr, "")).await;
    let (status, text, _) =
        curl_via(strict.addr("fwd"), &[], &format!("http://{authority}/")).await;
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("X-Pylon-Error: denied: private_address"),
        "{text}"
    );
    assert_eq!(echo.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_destinations_answer_502_destination_unresolved() {
    let dns = DnsServer::start().await;
    let p = TestProxy::start(&dns_config(dns.addr, "allow_private = true")).await;
    let (status, text, err) = curl_via(p.addr("fwd"), &[], "http://missing.pylon.test/").await;
    assert_eq!(status, 502, "{text}{err}");
    assert!(
        text.contains("X-Pylon-Error: destination_unresolved"),
        "{text}"
    );

    // A resolver that never answers: resolve_timeout ends the wait.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p = TestProxy::start(&dns_config(
        silent.local_addr().unwrap(),
        "allow_private = true\nresolve_timeout = \"300ms\"",
    ))
    .await;
    let (status, text, err) = curl_via(p.addr("fwd"), &[], "http://silent.pylon.test/").await;
    assert_eq!(status, 502, "{text}{err}");
    assert!(
        text.contains("X-Pylon-Error: destination_unresolved"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_destination_is_answered_504_after_the_response_timeout() {
    let (hold_tx, _hold_rx) = tokio::sync::broadcast::channel::<()>(1);
    let tx = hold_tx.clone();
    let silent = RawOrigin::start(move |mut s: tokio::net::TcpStream| {
        let mut rx = tx.subscribe();
        async move {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = rx.recv().await; // hold the connection open, answer nothing
        }
    })
    .await;
    let p = TestProxy::start(&config(
        "allow_private = true\nresponse_timeout = \"300ms\"",
        "",
    ))
    .await;
    let url = format!("http://{}/slow", silent.addr);
    let (status, text, err) = curl_via(p.addr("fwd"), &[], &url).await;
    assert_eq!(status, 504, "{text}{err}");
    assert!(
        text.contains("X-Pylon-Error: upstream_response_timeout"),
        "{text}"
    );
    assert_eq!(
        p.proxy
            .metrics()
            .errors(pylon_proxy::http::error::ErrorKind::ResponseTimeout),
        1
    );
    // The client's connection is not pinned: the proxy still answers it.
    let echo = Origin::echo().await;
    let (status, text, err) = curl_via(p.addr("fwd"), &[], &format!("http://{}/", echo.addr)).await;
    assert_eq!(status, 200, "{text}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_requests_to_one_destination_reuse_one_connection() {
    let echo = Origin::echo().await;
    let other = Origin::echo().await;
    let p = TestProxy::start(&config("allow_private = true", "")).await;
    // One client connection, then another: both reach the origin on the same
    // upstream connection, as a cluster's requests would.
    let url = format!("http://{}/one", echo.addr);
    let url2 = format!("http://{}/two", echo.addr);
    let (status, text, err) = curl_via(p.addr("fwd"), &[], &url).await;
    assert_eq!(status, 200, "{text}{err}");
    let (status, text, err) = curl_via(p.addr("fwd"), &[], &url2).await;
    assert_eq!(status, 200, "{text}{err}");
    // Two requests on one client connection, a POST with a body among them.
    let proxy = format!("http://{}", p.addr("fwd"));
    let out = curl(&[
        "-x",
        &proxy,
        "-d",
        "hello",
        &format!("http://{}/three", echo.addr),
        "--next",
        "-x",
        &proxy,
        &format!("http://{}/four", echo.addr),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("\"body_len\":5"), "{body}");
    assert_eq!(echo.request_count(), 4);
    assert_eq!(
        echo.connection_count(),
        1,
        "every request to the destination went over one pooled connection"
    );
    // Another destination has its own connection.
    let (status, _, _) = curl_via(p.addr("fwd"), &[], &format!("http://{}/", other.addr)).await;
    assert_eq!(status, 200);
    assert_eq!(other.connection_count(), 1);
    assert_eq!(echo.connection_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleartext_connect_tunnel_is_relayed_with_splice_and_keeps_its_first_bytes() {
    use std::sync::atomic::Ordering;
    // A TCP echo origin.
    let origin = RawOrigin::start(|mut s: tokio::net::TcpStream| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await;
    let port = origin.addr.port();
    let p = TestProxy::start(&config(
        &format!("allow_private = true\nconnect_ports = [{port}]"),
        "",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(p.addr("fwd")).await.unwrap();
    // The tunnel's first bytes come in the same write as the CONNECT head.
    s.write_all(
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\nearly!")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !got.ends_with(b"early!") {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("echo within the deadline")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // A megabyte each way.
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(DEADLINE, r.read_to_end(&mut back))
        .await
        .expect("the echo ends")
        .unwrap();
    writer.await.unwrap();
    assert!(back == payload, "{} bytes back", back.len());
    eventually("the tunnel is counted as spliced", || {
        p.proxy.metrics().tunnels_spliced.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(
        p.proxy
            .render_metrics()
            .contains("pylon_tunnels_spliced_total 1")
    );
}

#[tokio::test]
async fn plain_http_answers_are_cached_after_the_access_rules_through_curl() {
    let origin = Origin::start(|_req| async move {
        http::Response::builder()
            .header("cache-control", "max-age=600")
            .body(full("cached object"))
            .unwrap()
    })
    .await;
    let port = origin.addr.port();
    let zone = "\n[[caches]]\nname = \"z\"\n";
    let p = TestProxy::start(&config(
        &format!("allow_private = true\ncache = \"z\"{zone}"),
        "",
    ))
    .await;
    let url = format!("http://{}/object", origin.addr);
    let (status, first, _) = curl_via(p.addr("fwd"), &[], &url).await;
    assert_eq!(status, 200, "{first}");
    assert!(
        first
            .to_ascii_lowercase()
            .contains("cache-status: pylon; fwd=uri-miss; fwd-status=200; stored"),
        "{first}"
    );
    let (status, second, _) = curl_via(p.addr("fwd"), &[], &url).await;
    assert_eq!(status, 200);
    assert!(
        second
            .to_ascii_lowercase()
            .contains("cache-status: pylon; hit"),
        "{second}"
    );
    assert!(second.ends_with("cached object"));
    assert_eq!(origin.request_count(), 1);
    // A proxy-made error carries the cache's part too.
    let other = format!("http://{}/never-stored", origin.addr);
    let (status, text, _) = curl_via(
        p.addr("fwd"),
        &["-H", "Cache-Control: only-if-cached"],
        &other,
    )
    .await;
    assert_eq!(status, 504, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("cache-status: pylon; fwd=miss; detail=only-if-cached"),
        "{text}"
    );
    assert_eq!(origin.request_count(), 1);
    // A rule that now denies the destination wins over what is stored.
    let denied = format!(
        "allow_private = true\ncache = \"z\"\nrules = [{{ name = \"no-origin\", action = \"deny\", ports = [{port}] }}]{zone}"
    );
    let model = pylon_config::parse(&config(&denied, ""), "test.toml").unwrap();
    p.proxy.reload(&model).await.unwrap();
    let (status, _, _) = curl_via(p.addr("fwd"), &[], &url).await;
    assert_eq!(status, 403);
    assert_eq!(origin.request_count(), 1);
}
