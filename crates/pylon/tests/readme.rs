//! The README's commands, run as written through the same `cargo run` entry a user
//! types (debug profile: what matters is which binary `cargo run` picks and that each
//! command's arguments are right). `run -c FILE` is run as `check FILE`, which validates
//! the same file without serving; the gRPC demo service is started on a free port and
//! its client calls it there. The example files' own header comments are held to the
//! same.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `cargo` as the test run was started with.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Every `cargo run ...` command in a text: README code blocks and `#   cargo run`
/// lines of the example files, with a leading `echo ... |` kept apart.
fn commands(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter(|l| l.contains("cargo run "))
        .map(|l| {
            // Drop a trailing comment ("   # run Pylon ...").
            let l = match l.find("  #") {
                Some(i) => &l[..i],
                None => l,
            };
            l.trim().to_owned()
        })
        .collect()
}

/// A README command split into cargo's arguments and the program's, with the text
/// an `echo ... |` in front of it feeds to its standard input.
struct Written {
    cargo_args: Vec<String>,
    args: Vec<String>,
    stdin: Option<String>,
}

fn split(line: &str) -> Written {
    let (stdin, line) = match line.split_once('|') {
        Some((echo, rest)) if echo.trim_start().starts_with("echo ") => {
            let text = echo
                .trim()
                .trim_start_matches("echo ")
                .trim()
                .trim_matches('\'');
            (Some(format!("{text}\n")), rest.trim())
        }
        _ => (None, line),
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&words[..2], ["cargo", "run"], "{line}");
    let sep = words
        .iter()
        .position(|w| *w == "--")
        .unwrap_or_else(|| panic!("no `--` in {line}"));
    Written {
        cargo_args: words[2..sep]
            .iter()
            .filter(|w| **w != "--release")
            .map(|w| w.to_string())
            .collect(),
        args: words[sep + 1..].iter().map(|w| w.to_string()).collect(),
        stdin,
    }
}

/// `cargo run -q [cargo args] -- args`, from the repository root.
fn cargo_run(cargo_args: &[String], args: &[String]) -> Command {
    let mut cmd = cargo();
    cmd.arg("run")
        .arg("-q")
        .args(cargo_args)
        .arg("--")
        .args(args);
    cmd
}

/// A demo service started by a README command, stopped when dropped.
struct Serving {
    child: std::process::Child,
    addr: String,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one README command the way a test can: `--release` dropped, `-q` added;
/// `run -c FILE` is checked instead of served; an example's `serve` is started on a
/// free port in the background (kept in `serving`), and its `call` is pointed at it.
fn run_as_written(line: &str, serving: &mut Option<Serving>) -> Output {
    let w = split(line);
    let mut args = w.args.clone();
    match args.first().map(String::as_str) {
        Some("run") => {
            // `run -c FILE` (or `run --config FILE`) → `check FILE`.
            let file = args
                .windows(2)
                .find(|a| a[0] == "-c" || a[0] == "--config")
                .map(|a| a[1].clone())
                .unwrap_or_else(|| panic!("no -c FILE in {line}"));
            args = vec!["check".into(), file];
        }
        Some("serve") => {
            args.truncate(1);
            args.push("127.0.0.1:0".into());
            let mut child = cargo_run(&w.cargo_args, &args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                use std::io::BufRead as _;
                for l in std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                {
                    let _ = tx.send(l);
                }
            });
            let first = rx.recv_timeout(std::time::Duration::from_secs(120));
            let addr = first
                .as_deref()
                .ok()
                .and_then(|l| l.strip_prefix("listening on "))
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_owned);
            let Some(addr) = addr else {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                return Output {
                    status: out.status,
                    stdout: format!("{first:?}").into_bytes(),
                    stderr: out.stderr,
                };
            };
            *serving = Some(Serving { child, addr });
            return Output {
                status: std::process::ExitStatus::default(),
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
        }
        Some("call") => {
            // The README's call goes through Pylon on 127.0.0.1:50050; here it goes to
            // the demo service started above, on its free port.
            let addr = serving
                .as_ref()
                .map(|s| s.addr.clone())
                .unwrap_or_else(|| panic!("`{line}` needs the demo service started first"));
            args.truncate(1);
            args.push(addr);
        }
        _ => {}
    }
    let mut cmd = cargo_run(&w.cargo_args, &args);
    match w.stdin {
        None => cmd.output().unwrap(),
        Some(text) => {
            use std::io::Write as _;
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        }
    }
}

#[test]
fn cargo_run_picks_the_pylon_binary() {
    let out = cargo()
        .args(["run", "-q", "--", "--version"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`cargo run -- --version` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with("pylon "), "{version}");
}

#[test]
fn every_readme_and_example_command_works_as_written() {
    let mut lines = commands(&std::fs::read_to_string(root().join("README.md")).unwrap());
    assert!(
        lines.len() >= 6,
        "the README shows its cargo run commands: {lines:?}"
    );
    for name in [
        "quickstart.toml",
        "https.toml",
        "h3.toml",
        "l4.toml",
        "forward.toml",
        "grpc.toml",
        "cdn.toml",
        "gateway.toml",
        "turn.toml",
        "acme.toml",
        "fleet/fleet.toml",
        "fleet/edge.toml",
        "fleet/backend.toml",
    ] {
        let text = std::fs::read_to_string(root().join("examples").join(name)).unwrap();
        let found = commands(&text);
        assert!(!found.is_empty(), "examples/{name} shows how to run it");
        lines.extend(found);
    }
    // The certificate comes first (the HTTPS and L4 examples name it; the README
    // writes it into examples/certs, which git ignores), a demo service before the
    // call to it.
    lines.sort_by_key(|l| {
        if l.contains("cert selfsigned") {
            0
        } else if l.contains("-- serve") {
            1
        } else {
            2
        }
    });
    let mut seen = std::collections::HashSet::new();
    lines.retain(|l| seen.insert(l.clone()));
    let mut serving = None;
    let mut failed = Vec::new();
    for line in &lines {
        let out = run_as_written(line, &mut serving);
        if line.contains("-- call") && out.status.success() {
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains("Hello pylon"), "{line}: {said}");
        }
        if !out.status.success() {
            failed.push(format!(
                "{line}\n  exit {:?}\n  {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "README commands failed:\n{}",
        failed.join("\n")
    );
}
