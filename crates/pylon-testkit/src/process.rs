//! A Pylon process started from its binary, for tests of the command line, signals
//! and memory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::DEADLINE;

/// A Pylon process; stderr is collected in the background.
pub struct PylonProcess {
    pub child: Child,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub addrs: Vec<(String, SocketAddr)>,
}

impl PylonProcess {
    /// Starts `bin` with `args` and waits until it has printed its listening addresses.
    pub fn start(bin: &str, args: &[&str], cwd: Option<&std::path::Path>) -> PylonProcess {
        Self::start_env(bin, args, cwd, &[])
    }

    /// The same, with `env` added to its environment.
    pub fn start_env(
        bin: &str,
        args: &[&str],
        cwd: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> PylonProcess {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        cmd.envs(env.iter().copied());
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        Self::start_command(cmd)
    }

    /// Starts a command made by the test (one that runs Pylon, with its own file
    /// descriptors or wrapper) and waits as [`start`](Self::start) does.
    pub fn start_command(mut cmd: Command) -> PylonProcess {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stderr);
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + DEADLINE;
        loop {
            let lines = stderr.lock().unwrap().clone();
            // The start-up hint comes once every listener is bound.
            if lines.iter().any(|l| l.contains("try: ")) {
                let addrs = lines
                    .iter()
                    .filter_map(|l| {
                        let rest = l.split("listening on ").nth(1)?;
                        let (_scheme, rest) = rest.split_once("://")?;
                        let (addr, name) = rest.split_once(" (listener ")?;
                        let name = name.split(')').next()?;
                        Some((name.to_string(), addr.parse().ok()?))
                    })
                    .collect();
                return PylonProcess {
                    child,
                    stderr,
                    addrs,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("pylon exited early ({status}): {lines:#?}");
            }
            assert!(Instant::now() < deadline, "pylon did not start: {lines:#?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs.iter().find(|(n, _)| n == name).unwrap().1
    }

    /// Whether some line Pylon wrote to stderr so far matches.
    pub fn logged(&self, matches: impl Fn(&str) -> bool) -> bool {
        self.stderr.lock().unwrap().iter().any(|l| matches(l))
    }

    /// The admin API's address, from the log line that announces it.
    pub fn admin_addr(&self) -> SocketAddr {
        let lines = self.stderr.lock().unwrap().clone();
        lines
            .iter()
            .find_map(|l| {
                let rest = l.split("admin API on http://").nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no admin address in {lines:#?}"))
    }

    pub fn signal(&self, sig: i32) {
        // Sending a signal to our own child process.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0);
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "pylon did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }
}

impl Drop for PylonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
