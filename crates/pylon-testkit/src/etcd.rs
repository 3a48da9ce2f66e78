//! A real etcd (Debian's `etcd-server`, installed by `scripts/test.sh`) on free loopback
//! ports with its data in a temporary directory; it can be stopped and started again on
//! the same ports and data to test an outage. Stopped when dropped. [`EtcdServer::start_secure`]
//! serves TLS only and asks clients for a certificate from the test CA;
//! [`EtcdServer::enable_auth`] turns etcd's users on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::DEADLINE;
use crate::tls::{TestCa, temp_dir};

pub struct EtcdServer {
    pub client: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
    /// With TLS: the files of both sides.
    pub tls: Option<EtcdTlsFiles>,
    /// `etcdctl --user` once authentication is on.
    root: Option<String>,
}

/// The CA, etcd's certificate and a client certificate (for etcdctl and Pylon), as files.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        let mut e = EtcdServer {
            client: ([127, 0, 0, 1], free_port()).into(),
            peer: ([127, 0, 0, 1], free_port()).into(),
            dir: temp_dir().join("etcd"),
            child: None,
            tls: None,
            root: None,
        };
        e.resume();
        e
    }

    /// An etcd serving clients over TLS only, with a certificate from `ca`, and asking
    /// them for a certificate from `ca` too (`--client-cert-auth`).
    pub fn start_secure(ca: &TestCa) -> EtcdServer {
        let dir = temp_dir();
        let ca_path = dir.join("etcd-ca.pem");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        let (cert, key) = ca.server(&["127.0.0.1"]).write(&dir, "etcd-server");
        let (client_cert, client_key) = ca.client("pylon", "pylon.test").write(&dir, "etcd-client");
        let mut e = EtcdServer {
            client: ([127, 0, 0, 1], free_port()).into(),
            peer: ([127, 0, 0, 1], free_port()).into(),
            dir: dir.join("etcd"),
            child: None,
            tls: Some(EtcdTlsFiles {
                ca: ca_path,
                cert,
                key,
                client_cert,
                client_key,
            }),
            root: None,
        };
        e.resume();
        e
    }

    /// Turns etcd's authentication on, with `root` (password `root_password`, used by
    /// [`ctl`](Self::ctl) from now on) and `user` allowed to read and write the keys
    /// under `prefix` only.
    pub fn enable_auth(&mut self, root_password: &str, user: &str, password: &str, prefix: &str) {
        let steps: [&[&str]; 6] = [
            &["user", "add", &format!("root:{root_password}")],
            &["role", "add", "fleet"],
            &[
                "role",
                "grant-permission",
                "fleet",
                "--prefix=true",
                "readwrite",
                prefix,
            ],
            &["user", "add", &format!("{user}:{password}")],
            &["user", "grant-role", user, "fleet"],
            &["auth", "enable"],
        ];
        for step in steps {
            assert!(self.ctl(step).is_some(), "etcdctl {step:?} failed");
        }
        self.root = Some(format!("root:{root_password}"));
    }

    /// `etcd://127.0.0.1:PORT/prefix` (the scheme is the same with TLS: Pylon's
    /// `--etcd-ca` turns TLS on).
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.client)
    }

    /// Kills the server (an outage); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same ports and data.
    pub fn resume(&mut self) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}", self.client);
        let peer = format!("http://{}", self.peer);
        let mut cmd = Command::new("etcd");
        if let Some(t) = &self.tls {
            cmd.args(["--client-cert-auth", "--trusted-ca-file"])
                .arg(&t.ca)
                .arg("--cert-file")
                .arg(&t.cert)
                .arg("--key-file")
                .arg(&t.key);
        }
        let child = cmd
            .args([
                "--name",
                "test",
                "--data-dir",
                self.dir.to_str().unwrap(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("test={peer}"),
                "--log-level",
                "error",
                "--logger",
                "zap",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs (scripts/test.sh installs etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        while !self.healthy() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        self.ctl(&["endpoint", "health"]).is_some()
    }

    /// Runs `etcdctl` against this server; its output when it succeeded.
    pub fn ctl(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3").args([
            "--endpoints",
            &self.client.to_string(),
            "--dial-timeout",
            "1s",
        ]);
        if let Some(t) = &self.tls {
            cmd.arg("--cacert")
                .arg(&t.ca)
                .arg("--cert")
                .arg(&t.client_cert)
                .arg("--key")
                .arg(&t.client_key);
        }
        if let Some(root) = &self.root {
            cmd.args(["--user", root]);
        }
        let out = cmd
            .args(args)
            .output()
            .expect("etcdctl runs (scripts/test.sh installs etcd-client)");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
