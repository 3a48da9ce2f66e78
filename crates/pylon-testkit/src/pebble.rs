//! A real ACME server: Debian's `pebble` (Let's Encrypt's test CA, installed by
//! `scripts/test.sh`) on free loopback ports, with `pebble-challtestsrv` as its DNS
//! server answering 127.0.0.1 for every name, so that validations of any `*.test` name
//! reach Pylon's listeners on the ports the test gives. Stopped when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::DEADLINE;
use crate::tls::{TestCa, temp_dir};

/// What a pebble is started with.
pub struct PebbleOptions {
    /// Where it validates HTTP-01 challenges (a Pylon http listener's port).
    pub http_port: u16,
    /// Where it validates TLS-ALPN-01 challenges (a Pylon https listener's port).
    pub tls_port: u16,
    /// Names it refuses to issue for.
    pub blocklist: Vec<String>,
    /// How long its certificates are valid.
    pub validity: Duration,
    /// External Account Binding keys (key id → base64url MAC key); required when set.
    pub eab: Vec<(String, String)>,
    /// The OCSP responder URL put in issued certificates (pebble runs none itself).
    pub ocsp_responder: String,
}

impl Default for PebbleOptions {
    fn default() -> Self {
        PebbleOptions {
            http_port: 0,
            tls_port: 0,
            blocklist: Vec::new(),
            validity: Duration::from_secs(90 * 24 * 3600),
            eab: Vec::new(),
            ocsp_responder: String::new(),
        }
    }
}

pub struct Pebble {
    pub addr: SocketAddr,
    pub management: SocketAddr,
    /// The CA file that Pylon's `acme.ca` names: the roots of pebble's own HTTPS.
    pub api_ca: PathBuf,
    dir: PathBuf,
    children: Vec<Child>,
}

fn free_tcp() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn free_udp() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

impl Pebble {
    pub fn start(o: PebbleOptions) -> Pebble {
        let dir = temp_dir();
        let ca = TestCa::new("pebble api ca");
        let api_ca = dir.join("pebble-api-ca.pem");
        std::fs::write(&api_ca, ca.cert_pem()).unwrap();
        let (cert, key) = ca
            .server(&["127.0.0.1", "localhost"])
            .write(&dir, "pebble-api");
        let addr: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
        let management: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
        let dns: SocketAddr = ([127, 0, 0, 1], free_udp()).into();
        let eab: serde_json::Map<String, serde_json::Value> = o
            .eab
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": addr.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": cert,
                "privateKey": key,
                "httpPort": o.http_port,
                "tlsPort": o.tls_port,
                "ocspResponderURL": o.ocsp_responder,
                "externalAccountBindingRequired": !o.eab.is_empty(),
                "externalAccountMACKeys": eab,
                "domainBlocklist": o.blocklist,
                "certificateValidityPeriod": o.validity.as_secs(),
            }
        });
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = |name: &str| Stdio::from(std::fs::File::create(dir.join(name)).unwrap());
        let dns_server = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &dns.to_string(),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{}", free_tcp()),
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv runs (scripts/test.sh installs pebble)");
        let pebble = Command::new("pebble")
            .args([
                "-config",
                config_path.to_str().unwrap(),
                "-dnsserver",
                &dns.to_string(),
            ])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble runs (scripts/test.sh installs it)");
        let p = Pebble {
            addr,
            management,
            api_ca,
            dir,
            children: vec![pebble, dns_server],
        };
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(addr).is_err()
            || std::net::TcpStream::connect(management).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "pebble did not start:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://{}/dir", self.addr)
    }

    /// The root that pebble's certificates chain to (random per run), PEM.
    pub fn root_pem(&self) -> String {
        self.management_get("roots/0")
    }

    /// The intermediate that issues pebble's certificates, PEM.
    pub fn intermediate_pem(&self) -> String {
        self.management_get("intermediates/0")
    }

    fn management_get(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args([
                "-sf",
                "--cacert",
                self.api_ca.to_str().unwrap(),
                &format!("https://{}/{path}", self.management),
            ])
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "pebble's {path}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Pebble's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// Stops pebble (the directory becomes unreachable).
    pub fn stop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}
