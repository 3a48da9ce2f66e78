//! Test kit: origins, clients and a Pylon started from inline TOML, all on
//! `127.0.0.1:0`, so an end-to-end test reads like the feature's spec.
//!
//! Waiting is always on a condition with a deadline ([`eventually`]), never a sleep.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod client;
pub mod dns;
pub mod etcd;
pub mod grpc;
pub mod h3;
pub mod origin;
pub mod pebble;
pub mod process;
pub mod redis;
pub mod smuggling;
pub mod tls;
pub mod turn;
pub mod ws;

pub use browser::*;
pub use client::*;
pub use dns::*;
pub use grpc::*;
pub use h3::*;
pub use origin::*;
pub use process::*;
pub use redis::*;
pub use tls::*;
pub use ws::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use pylon_proxy::{Prebound, Proxy};

/// The default deadline for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `cond` until it holds or the deadline passes; panics with `what` then.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut pause = Duration::from_millis(1);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Like [`eventually`], for conditions that must do I/O to be checked.
pub async fn eventually_async<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_async_within(DEADLINE, what, cond).await
}

/// [`eventually_async`] with a deadline of its own, for what takes longer by design
/// (a retry after a backoff, a certificate's renewal).
pub async fn eventually_async_within<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A Pylon running in this process.
pub struct TestProxy {
    pub proxy: std::sync::Arc<Proxy>,
}

impl TestProxy {
    /// Starts Pylon from TOML text; panics listing every config error.
    pub async fn start(toml: &str) -> TestProxy {
        Self::start_prebound(toml, Prebound::new()).await
    }

    /// Starts Pylon with some of its addresses already bound by the test.
    pub async fn start_prebound(toml: &str, prebound: Prebound) -> TestProxy {
        let config = match pylon_config::parse(toml, "test.toml") {
            Ok(c) => c,
            Err(e) => panic!("invalid test config:\n{e}\n---\n{toml}"),
        };
        let proxy = Proxy::start_with(&config, prebound)
            .await
            .expect("proxy starts");
        TestProxy { proxy }
    }

    /// A request to the admin API (the config needs an `[admin]` section).
    pub async fn admin(&self, method: http::Method, path: &str, text: &str) -> Answer {
        let a = self.proxy.admin_addr().await.expect("an [admin] listener");
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "admin")
            .body(body(text.to_owned()))
            .expect("an admin request");
        send_h1(a, req).await
    }

    /// The admin API's `GET /metrics` text.
    pub async fn metrics(&self) -> String {
        self.admin(http::Method::GET, "/metrics", "").await.text()
    }

    /// The address of the named listener.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.proxy
            .addr(listener)
            .unwrap_or_else(|| panic!("no listener {listener}"))
    }
}

/// The value of the sample `series` (its name and labels exactly as written) in
/// OpenMetrics text; panics showing the text when there is none.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Binds `n` sockets on 127.0.0.1:0 for a config that needs its ports known up front
/// (listeners that proxy to each other). Returns the addresses and the sockets.
pub fn prebind(n: usize) -> (Vec<SocketAddr>, Prebound) {
    let mut addrs = Vec::new();
    let mut map = HashMap::new();
    for _ in 0..n {
        let l = pylon_proxy::listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let a = l.local_addr().unwrap();
        addrs.push(a);
        map.insert(a, l);
    }
    (addrs, map)
}

/// A config with one `front` listener on 127.0.0.1:0 proxying everything to a cluster
/// `c` of the given endpoints. `listener_extra` and `cluster_extra` are extra TOML lines.
pub fn simple_config(
    endpoints: &[SocketAddr],
    listener_extra: &str,
    cluster_extra: &str,
) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"
{listener_extra}

[[routes]]
cluster = "c"

[[clusters]]
name = "c"
endpoints = [{}]
{cluster_extra}
"#,
        eps.join(", ")
    )
}

/// Raises this process's open-file soft limit to at least `n` (up to the hard limit),
/// for tests that hold many sockets.
pub fn raise_fd_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a local struct.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
