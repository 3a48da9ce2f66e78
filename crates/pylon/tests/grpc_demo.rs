//! The gRPC example as the README runs it: the demo service (`grpc-demo serve`, built
//! from crates/pylon/examples/grpc-demo.rs) behind Pylon configured by
//! examples/grpc.toml (its ports swapped for free ones), called with the demo's own
//! client, with the README's Python grpcio line, and with tonic for the health service;
//! and the start-up hint the `pylon` binary prints for that example, run as printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use http::uri::PathAndQuery;
use pylon_testkit::*;
use tonic::{Code, Request, Status};

const PYLON: &str = env!("CARGO_BIN_EXE_pylon");

/// The README's Python client line, with its address replaced by the test's.
const PYTHON_CALL: &str = r#"import grpc; n = b"pylon"; r = grpc.insecure_channel("127.0.0.1:50050").unary_unary("/helloworld.Greeter/SayHello")(b"\n" + bytes([len(n)]) + n, timeout=10); print(r[2:].decode())"#;

/// The demo binary, which `cargo test` builds next to the test executables
/// (target/<profile>/deps/) in target/<profile>/examples/.
fn demo_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let bin = profile_dir
        .join("examples")
        .join(format!("grpc-demo{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p pylon --example grpc-demo` \
         (a plain `cargo test` builds the examples)",
        bin.display()
    );
    bin
}

/// A child process whose output lines (one stream) arrive on a channel; killed on drop.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    /// Starts `cmd`, reading its stdout (or its stderr with `stderr`) line by line.
    fn start(mut cmd: Command, stderr: bool) -> Proc {
        if stderr {
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        }
        let mut child = cmd.spawn().unwrap();
        let pipe: Box<dyn std::io::Read + Send> = if stderr {
            Box::new(child.stderr.take().unwrap())
        } else {
            Box::new(child.stdout.take().unwrap())
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // Keeps draining after the test stops listening, so the child never blocks.
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line containing `needle`, waiting up to the deadline.
    fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => self.seen.push(l),
                Err(e) => panic!(
                    "no line with {needle:?} ({e:?}; exit {:?}): {:#?}",
                    self.child.try_wait(),
                    self.seen
                ),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `grpc-demo serve 127.0.0.1:0` and the address it printed.
fn start_demo() -> (Proc, SocketAddr) {
    let mut cmd = Command::new(demo_bin());
    cmd.args(["serve", "127.0.0.1:0"]);
    let mut demo = Proc::start(cmd, false);
    let line = demo.wait_line("listening on ");
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (demo, addr)
}

/// examples/grpc.toml with Pylon on `listen` and the service at `service`.
fn example_config(listen: &str, service: SocketAddr) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/grpc.toml"),
    )
    .unwrap();
    assert!(
        text.contains("bind = \"127.0.0.1:50050\"")
            && text.contains("endpoints = [\"127.0.0.1:50051\"]"),
        "examples/grpc.toml listens on 127.0.0.1:50050 for a service on 127.0.0.1:50051"
    );
    text.replace("127.0.0.1:50050", listen)
        .replace("127.0.0.1:50051", &service.to_string())
        // The access log's lines would only crowd the test output.
        .replace(
            "[access_log]\npath = \"stdout\"",
            "[access_log]\nenabled = false",
        )
}

/// Runs `grpc-demo ARGS...` to completion (with a deadline).
async fn run_demo(args: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(demo_bin())
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("grpc-demo finishes")
    .unwrap()
}

fn show(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `grpc.health.v1.Health/Check` for `service` through `addr`: the reply message, or
/// the status.
async fn health_check(addr: SocketAddr, service: &str) -> Result<Vec<u8>, Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(DEADLINE)
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    // HealthCheckRequest { string service = 1 } (empty: the field is left out).
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        msg.push(u8::try_from(service.len()).unwrap());
        msg.extend_from_slice(service.as_bytes());
    }
    client
        .unary(
            Request::new(msg),
            PathAndQuery::from_static("/grpc.health.v1.Health/Check"),
            RawCodec,
        )
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_service_answers_through_the_grpc_example() {
    let (_demo, service) = start_demo();
    let p = TestProxy::start(&example_config("127.0.0.1:0", service)).await;
    eventually("the gRPC health check passed", || {
        p.proxy.is_ready() && p.proxy.endpoint_available("service", service) == Some(true)
    })
    .await;
    let front = p.addr("grpc").to_string();

    // (a) The demo's own client, with the default name and another.
    let out = run_demo(&["call", &front]).await;
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello pylon\n");
    let out = run_demo(&["call", &front, "gRPC über Pylon"]).await;
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello gRPC über Pylon\n"
    );

    // (b) The README's Python line (grpcio, no generated stubs), where installed.
    if let Ok(python) = std::env::var("PYLON_TEST_PYTHON") {
        let out = tokio::time::timeout(
            DEADLINE * 3,
            tokio::process::Command::new(&python)
                .arg("-c")
                .arg(PYTHON_CALL.replace("127.0.0.1:50050", &front))
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the Python client finishes")
        .expect("python runs (scripts/test.sh installs grpcio into target/test-venv)");
        assert!(out.status.success(), "{}", show(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello pylon\n");
    } else {
        eprintln!("PYLON_TEST_PYTHON not set: the grpcio line is not run");
    }

    // (c) The health service through Pylon: SERVING (status = 1) for the server and
    // the greeter, NOT_FOUND for a service it does not have.
    let front = p.addr("grpc");
    assert_eq!(health_check(front, "").await.unwrap(), [0x08, 0x01]);
    assert_eq!(
        health_check(front, "helloworld.Greeter").await.unwrap(),
        [0x08, 0x01]
    );
    let err = health_check(front, "no.Such").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[test]
fn the_readme_and_the_example_show_the_tested_python_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for file in ["README.md", "examples/grpc.toml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            text.contains(&format!("python3 -c '{PYTHON_CALL}'")),
            "{file} shows the Python line this test runs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_client_exits_non_zero_with_the_grpc_status() {
    // Nothing listens on the service's address: Pylon answers the call UNAVAILABLE.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = TestProxy::start(&example_config("127.0.0.1:0", dead)).await;
    eventually("the health check judged the endpoint", || {
        p.proxy.is_ready()
    })
    .await;
    let out = run_demo(&["call", &p.addr("grpc").to_string()]).await;
    assert!(!out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gRPC status 14 Unavailable"),
        "{}",
        show(&out)
    );

    // And with nothing at all on the address, it says it cannot connect.
    let out = run_demo(&["call", &dead.to_string()]).await;
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect"),
        "{}",
        show(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_hint_of_the_grpc_example_works_as_printed() {
    let (_demo, service) = start_demo();
    let dir = temp_dir();
    let cfg = dir.join("grpc.toml");
    std::fs::write(&cfg, example_config("127.0.0.1:0", service)).unwrap();
    let mut cmd = Command::new(PYLON);
    cmd.arg("run").arg("-c").arg(&cfg);
    let mut pylon = Proc::start(cmd, true);
    let hint = pylon.wait_line("try: ");
    let command = hint.split("try: ").nth(1).unwrap().trim();
    let args = command
        .strip_prefix("cargo run --release --example grpc-demo -- ")
        .unwrap_or_else(|| panic!("the hint is the demo's call: {hint:?}"));
    let args: Vec<&str> = args.split_whitespace().collect();
    assert_eq!(args.first(), Some(&"call"), "{hint:?}");
    let out = run_demo(&args).await;
    assert!(out.status.success(), "{hint}\n{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello pylon\n");
}
