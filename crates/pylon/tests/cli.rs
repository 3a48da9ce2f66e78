//! The `pylon` binary: check, version, help, logging formats, graceful stop, access
//! log, and 100 MiB streamed both ways with bounded memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use pylon_testkit::*;

const PYLON: &str = env!("CARGO_BIN_EXE_pylon");

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let p = temp_dir().join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

#[test]
fn check_reports_three_mistakes_with_lines() {
    let cfg = temp_file(
        "bad.toml",
        r#"[[listeners]]
name = "front"
bind = "127.0.0.1:99999"

[[routes]]
cluster = "nope"

[[clusters]]
name = "c"
endpoints = ["127.0.0.1:1"]
response_timeout = "fast"
"#,
    );
    let out = Command::new(PYLON).arg("check").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    let f = cfg.display().to_string();
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(&f) && !l.ends_with("error(s)"))
        .collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with(&format!("{f}:3:8: listeners[0].bind: invalid address")),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("{f}:6:11: routes[0].cluster: unknown cluster")),
        "{err}"
    );
    assert!(
        lines[2].starts_with(&format!(
            "{f}:11:20: clusters[0].response_timeout: invalid duration"
        )),
        "{err}"
    );
}

#[test]
fn check_accepts_the_examples_with_a_summary() {
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.toml");
    let out = Command::new(PYLON)
        .arg("check")
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    assert_eq!(s.lines().count(), 1, "{s}");
    assert!(
        s.contains(
            "OK: 3 listener(s) on 3 address(es), 4 route(s), 1 cluster(s) with 2 endpoint(s), admin API on 127.0.0.1:9901"
        ),
        "{s}"
    );
}

#[test]
fn check_missing_file_is_an_error() {
    let out = Command::new(PYLON)
        .args(["check", "/nonexistent/pylon.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read file"));
}

#[test]
fn version_and_help() {
    let out = Command::new(PYLON).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("pylon {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(PYLON).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for word in ["run", "check", "--log-format", "--log-level"] {
        assert!(help.contains(word), "{help}");
    }
}

fn origin_config(origin: SocketAddr, extra_top: &str) -> String {
    format!(
        r#"{extra_top}
[server]
drain_timeout = "10s"

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
cluster = "c"

[[clusters]]
name = "c"
endpoints = ["{origin}"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_bound_by_host_name_serves_and_is_shown_as_written() {
    let origin = Origin::named("o").await;
    let text = origin_config(origin.addr, "access_log = { enabled = false }")
        .replace("bind = \"127.0.0.1:0\"", "bind = \"localhost:0\"")
        + "\n[admin]\nbind = \"127.0.0.1:0\"\n";
    let cfg = temp_file("named.toml", &text);
    let check = Command::new(PYLON).arg("check").arg(&cfg).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let p = PylonProcess::start(PYLON, &["run", "-c", cfg.to_str().unwrap()], None);
    let front = p.addr("front");
    assert!(front.ip().is_loopback(), "{front}");
    assert_eq!(get(front, "/").await.text(), "o");
    let admin: SocketAddr = p.admin_addr();
    let config = get(admin, "/config").await.text();
    assert!(config.contains("bind = \"localhost:0\""), "{config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_pylon_toml_from_the_working_directory_with_json_logs() {
    let origin = Origin::named("o").await;
    let cfg = temp_file(
        "pylon.toml",
        &origin_config(origin.addr, "access_log = { enabled = false }"),
    );
    let p = PylonProcess::start(PYLON, &["--log-format", "json", "run"], cfg.parent());
    assert_eq!(get(p.addr("front"), "/").await.text(), "o");
    let lines = p.stderr.lock().unwrap().clone();
    for l in &lines {
        let j: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(j.get("level").is_some(), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let release = Arc::new(tokio::sync::Notify::new());
    let r = Arc::clone(&release);
    let origin = Origin::start(move |_req| {
        let r = Arc::clone(&r);
        async move {
            r.notified().await;
            http::Response::new(full("finished"))
        }
    })
    .await;
    let cfg = temp_file(
        "drain.toml",
        &origin_config(origin.addr, "access_log = { enabled = false }"),
    );
    let mut p = PylonProcess::start(PYLON, &["run", "-c", cfg.to_str().unwrap()], None);
    let addr = p.addr("front");
    let in_flight = tokio::spawn(async move { get(addr, "/slow").await });
    eventually("request reached the origin", || origin.request_count() == 1).await;

    p.signal(libc::SIGTERM);
    // New connections are refused once Pylon stops accepting.
    let deadline = Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "exits only after the in-flight request: {:#?}",
        p.stderr.lock().unwrap()
    );
    release.notify_one();
    let a = in_flight.await.unwrap();
    assert_eq!(a.text(), "finished");
    assert_eq!(p.wait_exit().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request() {
    let origin = Origin::named("o").await;
    let log = temp_file("access.log", "");
    let top = format!("access_log = {{ path = \"{}\" }}", log.display());
    let cfg = temp_file("log.toml", &origin_config(origin.addr, &top));
    let p = PylonProcess::start(PYLON, &["run", "-c", cfg.to_str().unwrap()], None);
    let addr = p.addr("front");
    let req = Request::post("/up?x=1")
        .header("host", "site.test")
        .header("x-request-id", "abc123")
        .header("user-agent", "curl/8.0")
        .header("referer", "https://site.test/form")
        .body(body("12345"))
        .unwrap();
    assert_eq!(send_h1(addr, req).await.text(), "o");
    let long = get(addr, &format!("/{}", "x".repeat(9000))).await;
    assert_eq!(long.status.as_u16(), 414);

    let mut lines = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while lines.len() < 2 {
        assert!(Instant::now() < deadline, "access log lines: {lines:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
        lines = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
    }
    let ok: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["authority"], "site.test");
    assert_eq!(ok["path"], "/up?x=1");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["bytes_in"], 5);
    assert_eq!(ok["bytes_out"], 1);
    assert_eq!(ok["upstream"], origin.addr.to_string());
    assert_eq!(ok["request_id"], "abc123");
    assert_eq!(ok["cluster"], "c");
    assert!(ok["duration_ms"].as_f64().unwrap() >= ok["upstream_ms"].as_f64().unwrap());
    assert!(ok["error"].is_null());
    assert!(ok["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(ok["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(ok["user_agent"], "curl/8.0");
    assert_eq!(ok["referer"], "https://site.test/form");
    assert!(ok["grpc_status"].is_null());
    let err: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(err["status"], 414);
    assert_eq!(err["error"], "uri_too_long");
    assert!(err["user_agent"].is_null());

    // logrotate: the file moved away keeps its lines; after SIGUSR1 new ones go to a
    // new file at the configured path.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    p.signal(libc::SIGUSR1);
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert_eq!(get(addr, "/after").await.status.as_u16(), 200);
        let fresh = std::fs::read_to_string(&log).unwrap_or_default();
        if fresh.contains("\"/after\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new access log at {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("\"/up?x=1\""), "{old}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_streams_both_ways_in_bounded_memory() {
    const TOTAL: usize = 100 << 20;
    const CHUNK: usize = 64 << 10;
    let origin = Origin::start(|req: Request<hyper::body::Incoming>| async move {
        if req.method() == http::Method::POST {
            // Count the upload frame by frame; never hold it.
            let mut body = req.into_body();
            let mut n = 0usize;
            while let Some(f) = body.frame().await {
                if let Ok(d) = f.unwrap().into_data() {
                    n += d.len();
                }
            }
            http::Response::new(full(n.to_string()))
        } else {
            let chunk = Bytes::from(vec![7u8; CHUNK]);
            let frames = (0..TOTAL / CHUNK).map(move |_| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(
                    chunk.clone(),
                ))
            });
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            http::Response::builder()
                .header("content-length", TOTAL.to_string())
                .body(BodyExt::boxed(body))
                .unwrap()
        }
    })
    .await;
    let cfg = temp_file(
        "big.toml",
        &origin_config(origin.addr, "access_log = { enabled = false }").replace(
            "bind = \"127.0.0.1:0\"",
            "bind = \"127.0.0.1:0\"\nmax_request_body = \"200MiB\"",
        ),
    );
    let p = PylonProcess::start(PYLON, &["run", "-c", cfg.to_str().unwrap()], None);
    let addr = p.addr("front");

    let chunk = Bytes::from(vec![9u8; CHUNK]);
    let frames = (0..TOTAL / CHUNK).map(move |_| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(chunk.clone()))
    });
    let upload = BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )));
    let req = Request::post("/upload")
        .header("host", "x")
        .body(upload)
        .unwrap();
    let mut c = h1_conn(addr).await;
    let a = collect(c.send_request(req).await.unwrap()).await;
    assert_eq!(a.text(), TOTAL.to_string(), "origin received every byte");

    c.ready().await.unwrap();
    let req = Request::get("/download")
        .header("host", "x")
        .body(empty())
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            n += d.len();
        }
    }
    assert_eq!(n, TOTAL);
    let rss = p.peak_rss();
    assert!(rss < 50 << 20, "peak RSS {} MiB", rss >> 20);
}

#[test]
fn cert_selfsigned_makes_a_pair_the_https_example_accepts() {
    let dir = temp_file("x", "").parent().unwrap().to_path_buf();
    let certs = dir.join("certs");
    let out = Command::new(PYLON)
        .args(["cert", "selfsigned", "--name", "localhost", "--out"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made = out;
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/https.toml"),
    )
    .unwrap();
    let cfg = dir.join("https.toml");
    std::fs::write(&cfg, example).unwrap();
    let out = Command::new(PYLON).arg("check").arg(&cfg).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Made for the names given (the first is the common name), valid for a year.
    let pem = certs.join("cert.pem");
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .args(["x509", "-noout", "-in"])
            .arg(&pem)
            .args(args)
            .output()
            .unwrap()
    };
    let subject = String::from_utf8_lossy(&openssl(&["-subject"]).stdout).to_string();
    assert!(
        subject.contains("CN = localhost") || subject.contains("CN=localhost"),
        "{subject}"
    );
    let days = |d: u64| (d * 24 * 3600).to_string();
    assert!(
        openssl(&["-checkend", &days(364)]).status.success(),
        "still valid in 364 days"
    );
    assert!(
        !openssl(&["-checkend", &days(366)]).status.success(),
        "expired within 366 days, not in 4096"
    );
    let printed = String::from_utf8_lossy(&made.stdout).to_string();
    assert!(printed.contains("365 days"), "{printed}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(certs.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the private key is readable by its owner only"
    );
}

#[test]
fn the_l4_example_checks_once_its_certificate_exists() {
    let dir = pylon_testkit::temp_dir();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/l4.toml");
    std::fs::copy(&example, dir.join("l4.toml")).unwrap();
    let cert = Command::new(PYLON)
        .args(["cert", "selfsigned", "--out"])
        .arg(dir.join("certs"))
        .output()
        .unwrap();
    assert!(cert.status.success(), "{cert:?}");
    let out = Command::new(PYLON)
        .arg("check")
        .arg(dir.join("l4.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("7 listener(s) on 7 address(es)"),
        "{out:?}"
    );
}

#[test]
fn the_forward_and_grpc_examples_check() {
    for name in ["forward.toml", "grpc.toml"] {
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(name);
        let out = Command::new(PYLON)
            .arg("check")
            .arg(&example)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn passwd_prints_an_argon2_hash() {
    use std::io::Write as _;
    let mut child = Command::new(PYLON)
        .arg("passwd")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
}

#[test]
fn apikey_prints_a_key_and_its_keys_file_line() {
    let out = Command::new(PYLON)
        .args(["apikey", "mobile-app"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().find_map(|l| l.strip_prefix("key: ")).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("keys_file line: "))
        .unwrap();
    assert!(key.starts_with("pk_") && key.len() > 40, "{key}");
    let digest: String = pylon_proxy::http::filters::auth::key_digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(line, format!("mobile-app {digest}"));
    let bad = Command::new(PYLON)
        .args(["apikey", "two words"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
