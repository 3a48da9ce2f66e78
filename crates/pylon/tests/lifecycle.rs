//! The Pylon process's life, through its binary: SIGHUP and file-watch reloads, the
//! log level changed at run time, SIGTERM (readiness off, GOAWAY, in-flight requests
//! finish, exit 0), and a zero-downtime binary upgrade under continuous load with
//! reloads: no failed request, no refused connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Method, Request};
use http_body_util::BodyExt;
use pylon_testkit::*;

const PYLON: &str = env!("CARGO_BIN_EXE_pylon");

/// The admin API's address, from the process's log.
async fn admin(addr: SocketAddr, method: Method, path: &str, text: &str) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(body(text.to_owned()))
        .unwrap();
    send_h1(addr, req).await
}

fn config(origin: SocketAddr, dir: &Path, body: &str, extra_server: &str) -> String {
    format!(
        r#"
[server]
drain_timeout = "10s"
upgrade_socket = "{sock}"
{extra_server}

[admin]
bind = "127.0.0.1:0"

[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
name = "version"
path = "/version"
respond = {{ body = "{body}" }}

[[routes]]
name = "app"
cluster = "c"

[[clusters]]
name = "c"
endpoints = ["{origin}"]
"#,
        sock = dir.join("upgrade.sock").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_the_file_watch_reload_and_a_broken_file_is_refused() {
    let origin = Origin::named("o").await;
    let dir = temp_dir();
    let file = dir.join("pylon.toml");
    std::fs::write(&file, config(origin.addr, &dir, "v1", "")).unwrap();
    let p = PylonProcess::start(PYLON, &["run", "-c", file.to_str().unwrap()], None);
    let front = p.addr("front");
    assert_eq!(get(front, "/version").await.text(), "v1");

    std::fs::write(&file, config(origin.addr, &dir, "v2", "")).unwrap();
    p.signal(libc::SIGHUP);
    eventually_async("SIGHUP reloaded the file", || async {
        get(front, "/version").await.text() == "v2"
    })
    .await;

    std::fs::write(&file, "[[listeners]]\nname = 1\n").unwrap();
    p.signal(libc::SIGHUP);
    eventually("the broken file was refused", || {
        p.logged(|l| l.contains("reload refused"))
    })
    .await;
    assert_eq!(
        get(front, "/version").await.text(),
        "v2",
        "the old config serves on"
    );

    // With the file watch on, writing the file is enough.
    std::fs::write(
        &file,
        config(
            origin.addr,
            &dir,
            "v3",
            "watch_config = true\nwatch_debounce = \"50ms\"",
        ),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    eventually_async("v3 in force", || async {
        get(front, "/version").await.text() == "v3"
    })
    .await;
    std::fs::write(
        &file,
        config(
            origin.addr,
            &dir,
            "v4",
            "watch_config = true\nwatch_debounce = \"50ms\"",
        ),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while get(front, "/version").await.text() != "v4" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watched file did not reload itself: {:#?}",
            p.stderr.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // POST /reload with no body re-reads the file.
    let a = p.admin_addr();
    std::fs::write(&file, config(origin.addr, &dir, "v5", "")).unwrap();
    let r = admin(a, Method::POST, "/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(front, "/version").await.text(), "v5");

    // The log level changes at run time.
    assert_eq!(
        admin(a, Method::PUT, "/log-level", "debug").await.status,
        200
    );
    let bad = admin(a, Method::PUT, "/log-level", "pylon=[").await;
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("invalid log filter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_off_sends_goaway_and_lets_requests_finish() {
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
    let dir = temp_dir();
    let file = dir.join("pylon.toml");
    std::fs::write(&file, config(origin.addr, &dir, "v1", "")).unwrap();
    let mut p = PylonProcess::start(PYLON, &["run", "-c", file.to_str().unwrap()], None);
    let front = p.addr("front");
    let a = p.admin_addr();
    assert_eq!(admin(a, Method::GET, "/readyz", "").await.status, 200);

    // An HTTP/2 client with a request in flight.
    let mut h2 = h2_conn(front).await;
    let req = Request::get("http://t/slow").body(empty()).unwrap();
    let in_flight = h2.send_request(req);
    let in_flight = tokio::spawn(async move {
        let resp = in_flight.await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    });
    eventually("the request reached the origin", || {
        origin.request_count() == 1
    })
    .await;

    p.signal(libc::SIGTERM);
    eventually_async("not ready while draining", || async {
        let r = admin(a, Method::GET, "/readyz", "").await;
        r.status == 503 && r.json()["reason"] == "draining"
    })
    .await;
    // GOAWAY: the HTTP/2 connection takes no new stream.
    eventually_async("GOAWAY received", || {
        let mut h2 = h2.clone();
        async move {
            let req = Request::get("http://t/version").body(empty()).unwrap();
            h2.send_request(req).await.is_err()
        }
    })
    .await;
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "exits only after the in-flight request"
    );
    release.notify_one();
    assert_eq!(in_flight.await.unwrap(), "finished");
    assert_eq!(p.wait_exit().code(), Some(0));
}

/// Load from the test: keep-alive clients (reconnecting when the server closes after a
/// response) and clients opening a connection per request. Any error is a failure.
struct Load {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(front: SocketAddr) -> Load {
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (ok, failed, errors, stop) = (
                Arc::clone(&ok),
                Arc::clone(&failed),
                Arc::clone(&errors),
                Arc::clone(&stop),
            );
            let keep_alive = i < 4;
            tasks.push(tokio::spawn(async move {
                let fail = |what: String| {
                    failed.fetch_add(1, Ordering::SeqCst);
                    errors.lock().unwrap().push(what);
                };
                let mut conn: Option<hyper::client::conn::http1::SendRequest<ClientBody>> = None;
                while !stop.load(Ordering::SeqCst) {
                    let reusable = match conn.as_mut() {
                        Some(c) => c.ready().await.is_ok(),
                        None => false,
                    };
                    if !reusable {
                        let s = match tokio::net::TcpStream::connect(front).await {
                            Ok(s) => s,
                            Err(e) => {
                                fail(format!("connect: {e}"));
                                continue;
                            }
                        };
                        let (tx, c) =
                            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
                                .await
                                .unwrap();
                        tokio::spawn(c);
                        conn = Some(tx);
                    }
                    let tx = conn.as_mut().unwrap();
                    let req = Request::get("/").header("host", "t").body(empty()).unwrap();
                    match tx.send_request(req).await {
                        Ok(resp) if resp.status() == 200 => {
                            match resp.into_body().collect().await {
                                Ok(_) => {
                                    ok.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(e) => fail(format!("body: {e}")),
                            }
                        }
                        Ok(resp) => fail(format!("status {}", resp.status())),
                        Err(e) => {
                            fail(format!("request: {e}"));
                            conn = None;
                        }
                    }
                    if !keep_alive {
                        conn = None;
                    }
                }
            }));
        }
        Load {
            ok,
            failed,
            errors,
            stop,
            tasks,
        }
    }

    /// Waits until `n` more requests have been served.
    async fn progress(&self, n: usize) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        eventually("load progressing", || {
            self.ok.load(Ordering::SeqCst) >= target
        })
        .await;
    }

    async fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            errors,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_and_a_binary_upgrade_under_load_lose_nothing() {
    let origin = Origin::named("o").await;
    let dir = temp_dir();
    let file = dir.join("pylon.toml");
    std::fs::write(&file, config(origin.addr, &dir, "v0", "")).unwrap();
    let mut old = PylonProcess::start(PYLON, &["run", "-c", file.to_str().unwrap()], None);
    let front = old.addr("front");
    let a = old.admin_addr();
    let load = Load::start(front);
    load.progress(200).await;

    for i in 1..=20 {
        let r = admin(
            a,
            Method::POST,
            "/reload",
            &config(origin.addr, &dir, &format!("v{i}"), ""),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        load.progress(20).await;
    }
    assert_eq!(get(front, "/version").await.text(), "v20");

    // A new process takes the sockets over; the old one drains and exits 0.
    std::fs::write(&file, config(origin.addr, &dir, "new", "")).unwrap();
    let new = PylonProcess::start(
        PYLON,
        &["run", "-c", file.to_str().unwrap(), "--upgrade"],
        None,
    );
    assert_eq!(new.addr("front"), front, "same socket, same address");
    assert_eq!(old.wait_exit().code(), Some(0));
    eventually_async("the new process answers", || async {
        get(front, "/version").await.text() == "new"
    })
    .await;
    load.progress(200).await;
    // The admin API moved over too.
    assert_eq!(admin(a, Method::GET, "/healthz", "").await.status, 200);

    let (ok, failed, errors) = load.finish().await;
    assert_eq!(failed, 0, "{errors:#?}");
    assert!(ok > 600, "{ok} requests");
    // A second upgrade works from the new process's own socket.
    drop(new);
}

/// QUIC connections cannot move to another process: on a binary upgrade the old one
/// closes them at once (the clients see a close, not a timeout) and leaves the UDP
/// socket to the new process, which serves the clients' next connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_hands_http3_over_and_closes_the_old_quic_connections() {
    let ca = TestCa::new("upgrade");
    let dir = temp_dir();
    let (cert, key) = ca.server(&["localhost"]).write(&dir, "leaf");
    let file = dir.join("pylon.toml");
    let config = |body: &str| {
        format!(
            r#"
[server]
drain_timeout = "10s"
upgrade_socket = "{sock}"

[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"
protocol = "https"
http3 = true
[listeners.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]

[[routes]]
respond = {{ body = "{body}" }}
"#,
            sock = dir.join("upgrade.sock").display(),
            cert = cert.display(),
            key = key.display(),
        )
    };
    std::fs::write(&file, config("old")).unwrap();
    let mut old = PylonProcess::start(PYLON, &["run", "-c", file.to_str().unwrap()], None);
    let udp = old.addr("front");
    let client = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    assert_eq!(client.get("localhost", "/").await.unwrap().text(), "old");

    std::fs::write(&file, config("new")).unwrap();
    let new = PylonProcess::start(
        PYLON,
        &["run", "-c", file.to_str().unwrap(), "--upgrade"],
        None,
    );
    assert_eq!(new.addr("front"), udp, "same sockets");
    eventually("the old process closed its QUIC connection", || {
        client.connection.close_reason().is_some()
    })
    .await;
    assert_eq!(old.wait_exit().code(), Some(0));
    let again = H3Client::connect(&ca, udp, "localhost").await.unwrap();
    assert_eq!(again.get("localhost", "/").await.unwrap().text(), "new");
    drop(new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_reloading_and_stopping() {
    let origin = Origin::named("o").await;
    let dir = temp_dir();
    let file = dir.join("pylon.toml");
    std::fs::write(&file, config(origin.addr, &dir, "v1", "")).unwrap();
    // systemd's side: a datagram socket named by NOTIFY_SOCKET.
    let sock_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    notify
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let received = |want: &str| {
        let deadline = std::time::Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let mut buf = [0u8; 1024];
            if let Ok(n) = notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == want) {
                    return msg;
                }
                seen.push(msg);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {want} in {seen:?}"
            );
        }
    };
    let mut p = PylonProcess::start_env(
        PYLON,
        &["run", "-c", file.to_str().unwrap()],
        None,
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let ready = received("READY=1");
    assert!(ready.contains("STATUS=serving"), "{ready}");
    p.signal(libc::SIGHUP);
    let reloading = received("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let again = received("READY=1");
    assert!(again.contains("STATUS=configuration reloaded"), "{again}");
    p.signal(libc::SIGTERM);
    received("STOPPING=1");
    assert_eq!(p.wait_exit().code(), Some(0));
}

/// Socket activation as systemd does it (sd_listen_fds(3)): the sockets are opened by
/// the service manager (here the test) and passed as descriptors 3 and 4 with
/// `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`. Pylon serves them without binding:
/// one named after its listener (whose configured address it replaces), one matched by
/// its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_the_sockets_it_is_given() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let origin = Origin::named("o").await;
    let named = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let by_address = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (named_addr, side_addr) = (
        named.local_addr().unwrap(),
        by_address.local_addr().unwrap(),
    );
    let dir = temp_dir();
    let file = dir.join("pylon.toml");
    std::fs::write(
        &file,
        format!(
            r#"
access_log = {{ enabled = false }}
[[listeners]]
name = "front"
# Never bound: the socket named "front" stands for it.
bind = "127.0.0.1:1"
[[listeners]]
name = "side"
bind = "{side_addr}"
[[routes]]
cluster = "c"
[[clusters]]
name = "c"
endpoints = ["{}"]
"#,
            origin.addr
        ),
    )
    .unwrap();
    // `LISTEN_PID` is the shell's PID, which `exec` gives to Pylon.
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "exec env LISTEN_PID=$$ \"$0\" \"$@\"",
        PYLON,
        "run",
        "-c",
        file.to_str().unwrap(),
    ])
    .env("LISTEN_FDS", "2")
    .env("LISTEN_FDNAMES", "front:unknown");
    let fds = [named.as_raw_fd(), by_address.as_raw_fd()];
    // SAFETY: between fork and exec only fcntl(2) and dup2(2), which are
    // async-signal-safe; the descriptors stay open in the parent until the child has
    // started. Copied out of the way first, so that placing one at 3 cannot close the
    // other.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0; 2];
            for (slot, fd) in high.iter_mut().zip(fds) {
                *slot = libc::fcntl(fd, libc::F_DUPFD, 100);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, fd) in high.into_iter().enumerate() {
                if libc::dup2(fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let p = PylonProcess::start_command(cmd);
    // The test's own handles go: only Pylon holds the sockets now.
    drop((named, by_address));
    assert_eq!(p.addr("front"), named_addr);
    assert_eq!(p.addr("side"), side_addr);
    assert_eq!(get(named_addr, "/").await.text(), "o");
    assert_eq!(get(side_addr, "/").await.text(), "o");
    let log = p.stderr.lock().unwrap().join("\n");
    assert!(log.contains("socket from the service manager"), "{log}");
    assert!(!log.contains("127.0.0.1:1 "), "{log}");
}
