//! OCSP stapling against a real responder (`openssl ocsp` over a test CA made with the
//! openssl command line): a good certificate is stapled, a revoked one is stapled as
//! revoked, the last good response stays stapled while the responder is down and is
//! served from the disk cache after a restart, and a Must-Staple certificate is served
//! only once it has a staple.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pylon_testkit::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A free port, held until the responder is started on it: the certificates name it
/// before then, and a port given back at once could be taken by another test's socket
/// meanwhile (the responder then fails to start). Bound, not listening: until the
/// responder starts, a connection to it is refused, as to a responder that is down.
fn reserve_port() -> (u16, tokio::net::TcpSocket) {
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (held.local_addr().unwrap().port(), held)
}

/// A test CA, its certificates and its OCSP responder's database.
struct Pki {
    dir: PathBuf,
    port: u16,
    /// The port's socket, closed just before the responder starts.
    held: std::sync::Mutex<Option<tokio::net::TcpSocket>>,
}

impl Pki {
    fn new() -> Pki {
        let dir = temp_dir();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                "/CN=Pylon OCSP Test CA",
            ],
        );
        std::fs::write(dir.join("index.txt"), "").unwrap();
        let (port, held) = reserve_port();
        Pki {
            dir,
            port,
            held: std::sync::Mutex::new(Some(held)),
        }
    }

    /// Issues `name` (serial `serial`, hex) with the responder in its AIA; returns the
    /// chain (leaf, then the CA) and key paths. `revoked` marks it so in the database.
    fn issue(
        &self,
        name: &str,
        serial: &str,
        must_staple: bool,
        revoked: bool,
    ) -> (PathBuf, PathBuf) {
        let d = &self.dir;
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        let mut ext = format!(
            "subjectAltName=DNS:{name}\nauthorityInfoAccess=OCSP;URI:http://127.0.0.1:{}/\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            self.port
        );
        if must_staple {
            ext.push_str("tlsfeature=status_request\n");
        }
        std::fs::write(d.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &format!("0x{serial}"),
                "-days",
                "10",
                "-out",
                &format!("{name}.leaf"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
        let chain = d.join(format!("{name}.pem"));
        let mut pem = std::fs::read_to_string(d.join(format!("{name}.leaf"))).unwrap();
        pem.push_str(&std::fs::read_to_string(d.join("ca.pem")).unwrap());
        std::fs::write(&chain, pem).unwrap();
        let line = if revoked {
            format!("R\t301231235959Z\t251201000000Z\t{serial}\tunknown\t/CN={name}\n")
        } else {
            format!("V\t301231235959Z\t\t{serial}\tunknown\t/CN={name}\n")
        };
        let mut index = std::fs::read_to_string(d.join("index.txt")).unwrap();
        index.push_str(&line);
        std::fs::write(d.join("index.txt"), index).unwrap();
        (chain, d.join(format!("{name}.key")))
    }

    /// Starts `openssl ocsp` on the port the certificates name; responses are valid for
    /// five minutes.
    fn responder(&self) -> Responder {
        drop(self.held.lock().unwrap().take());
        let child = Command::new("openssl")
            .current_dir(&self.dir)
            .args([
                "ocsp",
                "-index",
                "index.txt",
                "-port",
                &self.port.to_string(),
                "-rsigner",
                "ca.pem",
                "-rkey",
                "ca.key",
                "-CA",
                "ca.pem",
                "-nmin",
                "5",
                "-ignore_err",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl ocsp runs");
        // Ready once it answers a request: it serves one connection at a time, so the
        // probe is a whole (empty) request, never a bare connect.
        let answers = || {
            use std::io::{Read, Write};
            let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 64];
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0)
        };
        let deadline = std::time::Instant::now() + DEADLINE;
        while !answers() {
            assert!(
                std::time::Instant::now() < deadline,
                "openssl ocsp did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Responder(child)
    }
}

struct Responder(Child);

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `openssl s_client -status` prints about the handshake with `name`.
async fn s_client(addr: SocketAddr, name: &str, ca: &Path) -> String {
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            name,
            "-status",
            "-CAfile",
            ca.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("openssl s_client runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn config(certs: &[(PathBuf, PathBuf)], cache: &Path) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|(c, k)| {
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
[admin]
bind = "127.0.0.1:0"
[[listeners]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "https"
[listeners.tls]
certificates = [{}]
ocsp_cache = "{}"
[[routes]]
respond = {{ body = "ok" }}
"#,
        list.join(", "),
        cache.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_and_revoked_certificates_are_stapled_and_the_last_good_response_outlives_the_responder()
 {
    let pki = Pki::new();
    let good = pki.issue("good.pylon.test", "1001", false, false);
    let revoked = pki.issue("revoked.pylon.test", "1002", false, true);
    let ca = pki.dir.join("ca.pem");
    let cache = temp_dir().join("ocsp");
    let responder = pki.responder();
    let text = config(&[good.clone(), revoked.clone()], &cache);
    let proxy = TestProxy::start(&text).await;
    let addr = proxy.addr("tls");
    eventually_async("the good certificate's staple", || async {
        let out = s_client(addr, "good.pylon.test", &ca).await;
        out.contains("OCSP Response Status: successful") && out.contains("Cert Status: good")
    })
    .await;
    eventually_async("the revoked certificate's staple", || async {
        s_client(addr, "revoked.pylon.test", &ca)
            .await
            .contains("Cert Status: revoked")
    })
    .await;
    let m = proxy.metrics().await;
    assert!(
        metric(&m, "pylon_ocsp_fetches_total{result=\"good\"}") >= 1,
        "{m}"
    );
    assert!(
        metric(&m, "pylon_ocsp_fetches_total{result=\"revoked\"}") >= 1,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "pylon_ocsp_staple_expiry_timestamp_seconds{certificate=\"good.pylon.test\"}"
        ) > 0
    );
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        2,
        "both responses cached"
    );

    // The responder goes down: the response in hand stays stapled.
    drop(responder);
    let out = s_client(addr, "good.pylon.test", &ca).await;
    assert!(out.contains("Cert Status: good"), "{out}");
    proxy.proxy.shutdown(Duration::from_secs(1)).await;
    drop(proxy);

    // A restart with the responder still down staples from the disk cache at once.
    let proxy = TestProxy::start(&text).await;
    let out = s_client(proxy.addr("tls"), "good.pylon.test", &ca).await;
    assert!(out.contains("Cert Status: good"), "{out}");
    // Without stapling, no staple.
    let off = text.replace("ocsp_cache", "ocsp_stapling = false\nocsp_cache");
    let proxy = TestProxy::start(&off).await;
    let out = s_client(proxy.addr("tls"), "good.pylon.test", &ca).await;
    assert!(out.contains("OCSP response: no response sent"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_must_staple_certificate_is_served_only_with_a_staple() {
    let pki = Pki::new();
    let must = pki.issue("must.pylon.test", "2001", true, false);
    let ca = pki.dir.join("ca.pem");
    let cache = temp_dir().join("ocsp");
    // The responder is down at start: nothing to staple, so nothing is served.
    let proxy = TestProxy::start(&config(&[must], &cache)).await;
    let addr = proxy.addr("tls");
    let out = s_client(addr, "must.pylon.test", &ca).await;
    assert!(
        !out.contains("BEGIN CERTIFICATE"),
        "served without a staple: {out}"
    );
    eventually_async("the failed fetch is counted", || async {
        metric(
            &proxy.metrics().await,
            "pylon_ocsp_fetches_total{result=\"failed\"}",
        ) >= 1
    })
    .await;
    // Once the responder answers (the next try), it is served, stapled.
    let _responder = pki.responder();
    eventually_async_within(
        Duration::from_secs(30),
        "a stapled Must-Staple certificate",
        || async {
            let out = s_client(addr, "must.pylon.test", &ca).await;
            out.contains("BEGIN CERTIFICATE") && out.contains("Cert Status: good")
        },
    )
    .await;
}
