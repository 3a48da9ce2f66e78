//! Pylon's engine: listeners, the one request path, upstream pools, observation.
//!
//! [`Proxy::start`] turns a validated config into running listeners;
//! [`Proxy::reload`] swaps in a new config without closing what did not change;
//! [`Proxy::shutdown`] stops accepting and drains.

pub mod activation;
pub mod admin;
pub mod allocator;
mod clock;
pub mod cluster;
mod coalesce;
mod conn;
mod disk;
mod fetch;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
mod h1_io;
pub mod handover;
pub mod health;
pub mod http;
mod inspect;
pub mod l4;
pub mod life;
pub mod listener;
pub mod memory;
pub mod observe;
mod reload;
pub mod runtime;
pub mod shared;
pub mod sockets;
pub mod tcp_options;
pub mod tls;
pub mod turn;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use pylon_config::{Config, ConfigError, ConfigErrors};

use crate::listener::ConnTracker;
use crate::observe::{Metrics, StatsRegistry};
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::sockets::{PreboundSocket, RunningSocket, Socket};
use crate::tls::server::ServerTls;

/// Sockets already bound by the caller, used instead of binding these addresses
/// (tests that need their ports known up front).
pub type Prebound = HashMap<SocketAddr, std::net::TcpListener>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener \"{listener}\": cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    #[error("{0}")]
    Config(ConfigErrors),
}

impl StartError {
    /// The errors as config errors (a bind failure names the listener's key).
    pub fn into_config_errors(self) -> Vec<ConfigError> {
        match self {
            StartError::Config(e) => e.0,
            other => vec![ConfigError {
                file: String::new(),
                line: 0,
                column: 0,
                key: String::new(),
                message: other.to_string(),
            }],
        }
    }
}

/// An address a listener is serving on.
#[derive(Debug, Clone)]
pub struct BoundAddr {
    pub listener: String,
    pub addr: SocketAddr,
    /// `http`, `https`, `h3` (an https listener's HTTP/3, on UDP), `tcp` or `udp`.
    pub scheme: &'static str,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// The hash of the config now in force.
    pub hash: String,
    /// One line per change: sockets bound or closed, accept loops restarted, clusters
    /// rebuilt, routes and listeners whose long-lived connections now drain.
    pub changes: Vec<String>,
}

/// The sockets being served and the TLS acceptors, changed only under the reload lock.
#[derive(Default)]
struct Sockets {
    running: Vec<RunningSocket>,
    tls: Vec<(String, Arc<ServerTls>)>,
    admin: Option<admin::AdminHandle>,
}

/// Called with a log filter (`PUT /log-level`); set by the binary, which owns logging.
pub type LogLevelHook = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// A running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    tracker: Arc<ConnTracker>,
    runtime: Arc<ArcSwap<Runtime>>,
    sockets: tokio::sync::Mutex<Sockets>,
    bound: ArcSwap<Vec<BoundAddr>>,
    draining: AtomicBool,
    /// The file reloads read, when the config came from one.
    source: Mutex<Option<PathBuf>>,
    /// Where the config in force came from when not from a file (etcd) and its revision.
    config_origin: Mutex<Option<(String, i64)>>,
    /// Marked when readiness turns off for the drain or the configuration in force
    /// changes: the fleet entry follows at once.
    state_changes: tokio::sync::watch::Sender<()>,
    /// The fleet's members as etcd lists them (`GET /fleet`), when this instance is one.
    members: Mutex<Vec<serde_json::Value>>,
    log_level: Mutex<Option<LogLevelHook>>,
    this: Weak<Proxy>,
}

/// What `pylon check` finds beyond the configuration text: certificate, key and CA
/// files that cannot be used, and authentication files (users, API keys) likewise.
pub fn check_files(config: &Config) -> Vec<ConfigError> {
    let mut errors = tls::check(config);
    errors.extend(http::filters::auth::check(config));
    errors
}

/// Locks a mutex; a panic elsewhere while it was held does not poison our counters.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Proxy {
    /// Binds every listener and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: &Config) -> Result<Arc<Proxy>, StartError> {
        Self::start_inherited(config, Vec::new()).await
    }

    /// Starts with some addresses already bound by the caller.
    pub async fn start_with(config: &Config, prebound: Prebound) -> Result<Arc<Proxy>, StartError> {
        let sockets = prebound
            .into_iter()
            .map(|(addr, l)| PreboundSocket {
                listener: None,
                configured: addr,
                socket: Socket::Tcp(l),
            })
            .collect();
        Self::start_inherited(config, sockets).await
    }

    /// Starts on sockets handed over by the Pylon being upgraded (binding whatever
    /// they do not cover).
    pub async fn start_inherited(
        config: &Config,
        prebound: Vec<PreboundSocket>,
    ) -> Result<Arc<Proxy>, StartError> {
        // aws-lc-rs is the only crypto provider; installing it twice is harmless.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        observe::exposition::process_start_time();
        let shared = Shared::start(
            &config.access_log.target,
            Arc::new(Metrics::default()),
            Arc::new(StatsRegistry::default()),
        )
        .map_err(StartError::AccessLog)?;
        let tracker = Arc::new(ConnTracker::new(Arc::clone(&shared.metrics)));
        let proxy = Arc::new_cyclic(|this| Proxy {
            shared,
            tracker,
            runtime: Arc::new(ArcSwap::from_pointee(Runtime::empty())),
            sockets: tokio::sync::Mutex::new(Sockets::default()),
            bound: ArcSwap::from_pointee(Vec::new()),
            draining: AtomicBool::new(false),
            source: Mutex::new(None),
            config_origin: Mutex::new(None),
            state_changes: tokio::sync::watch::Sender::new(()),
            members: Mutex::new(Vec::new()),
            log_level: Mutex::new(None),
            this: this.clone(),
        });
        {
            let mut sockets = proxy.sockets.lock().await;
            proxy.apply(&mut sockets, config, prebound, true).await?;
        }
        proxy.shared.metrics.config_loaded();
        Ok(proxy)
    }

    /// Reloads: validates nothing (the caller parsed `config`), builds the new runtime
    /// next to the old one and swaps it in. Listeners that keep their address keep
    /// their socket; clusters with an unchanged config keep pools and health state;
    /// connections and requests in flight go on. On any error nothing changes.
    pub async fn reload(&self, config: &Config) -> Result<ReloadReport, StartError> {
        let mut sockets = self.sockets.lock().await;
        let result = self.apply(&mut sockets, config, Vec::new(), false).await;
        let metrics = &self.shared.metrics;
        match &result {
            Ok(report) => {
                metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                metrics.config_loaded();
                tracing::info!(hash = %report.hash, changes = report.changes.len(), "configuration reloaded");
                for c in &report.changes {
                    tracing::info!("reload: {c}");
                }
                self.shared.recent.reload(true, report.changes.clone());
            }
            Err(e) => self.reload_refused(e),
        }
        result
    }

    /// A reload that did not take effect: counted, logged and listed (the dashboard's
    /// recent reloads).
    pub fn reload_refused(&self, e: &dyn std::fmt::Display) {
        self.shared
            .metrics
            .reloads_failed
            .fetch_add(1, Ordering::Relaxed);
        let text = e.to_string();
        tracing::error!("reload refused, the running configuration keeps serving:\n{text}");
        self.shared
            .recent
            .reload(false, text.lines().map(str::to_owned).collect());
    }

    /// Records that the config in force is `revision` of `source` (etcd).
    pub fn set_config_origin(&self, source: &str, revision: i64) {
        *lock(&self.config_origin) = Some((source.to_owned(), revision));
        self.state_changes.send_replace(());
    }

    /// Changes when readiness turns off for the drain or the configuration in force
    /// changes (readiness from health checks is polled by the watcher).
    pub fn watch_state(&self) -> tokio::sync::watch::Receiver<()> {
        self.state_changes.subscribe()
    }

    /// Where the config in force came from when not from a file, and its revision.
    pub fn config_origin(&self) -> Option<(String, i64)> {
        lock(&self.config_origin).clone()
    }

    /// The session ticket producer of every TLS listener.
    pub fn tickets(&self) -> Arc<tls::tickets::Tickets> {
        Arc::clone(&self.shared.tls.tickets)
    }

    /// The fleet's members, as the membership task last saw them.
    pub fn members(&self) -> Vec<serde_json::Value> {
        lock(&self.members).clone()
    }

    pub fn set_members(&self, members: Vec<serde_json::Value>) {
        *lock(&self.members) = members;
    }

    /// Sets the file that [`Proxy::reload_from_source`] reads.
    pub fn set_source(&self, path: PathBuf) {
        *lock(&self.source) = Some(path);
    }

    /// Whether the config came from a file that reloads read again.
    pub fn has_source(&self) -> bool {
        lock(&self.source).is_some()
    }

    /// Re-reads the config file (and every certificate) and reloads.
    pub async fn reload_from_source(&self) -> Result<ReloadReport, StartError> {
        let path = lock(&self.source).clone();
        let Some(path) = path else {
            let e = ConfigErrors(vec![ConfigError {
                file: String::new(),
                line: 0,
                column: 0,
                key: String::new(),
                message: "this Pylon was not started from a config file; send the config in the request body".into(),
            }]);
            self.reload_refused(&e);
            return Err(StartError::Config(e));
        };
        match pylon_config::load_file(&path) {
            Ok(c) => self.reload(&c).await,
            Err(e) => {
                self.reload_refused(&e);
                Err(StartError::Config(e))
            }
        }
    }

    /// The binary's log-level setter, for the admin API.
    pub fn set_log_level_hook(&self, hook: LogLevelHook) {
        *lock(&self.log_level) = Some(hook);
    }

    pub(crate) fn set_log_level(&self, filter: &str) -> Result<(), String> {
        match &*lock(&self.log_level) {
            Some(hook) => hook(filter),
            None => Err("this Pylon cannot change its log level".into()),
        }
    }

    /// After a binary upgrade: closes this process's QUIC connections and leaves the
    /// UDP sockets to the new process (see `handover`).
    pub async fn release_quic(&self) {
        let endpoints: Vec<_> = {
            let sockets = self.sockets.lock().await;
            sockets
                .running
                .iter()
                .filter_map(|r| r.h3().cloned())
                .collect()
        };
        for h3 in endpoints {
            h3.release().await;
        }
    }

    /// Every address being served, in config order.
    pub fn bound(&self) -> Arc<Vec<BoundAddr>> {
        self.bound.load_full()
    }

    /// Reopens the access log's file at its path (SIGUSR1: after logrotate moved it).
    pub fn reopen_logs(&self) {
        self.shared.logger.reopen();
    }

    /// `/metrics`: everything, as OpenMetrics text.
    pub fn render_metrics(&self) -> String {
        observe::exposition::render(observe::exposition::Exposition {
            metrics: Arc::clone(&self.shared.metrics),
            stats: Arc::clone(&self.shared.stats),
            runtime: Arc::clone(&self.runtime),
            turn: self.shared.turn.stats(),
            acme: Arc::clone(&self.shared.tls.acme),
            ocsp: Arc::clone(&self.shared.tls.ocsp),
        })
    }

    /// Re-reads every listener's certificate files: new handshakes use the new
    /// certificates, open connections are untouched. A listener whose files fail keeps
    /// its old certificates; its errors are returned (and logged).
    pub async fn reload_certificates(&self) -> Vec<ConfigError> {
        let sockets = self.sockets.lock().await;
        let mut errors = Vec::new();
        for (name, t) in &sockets.tls {
            match t.reload() {
                Ok(true) => tracing::info!(listener = %name, "certificates reloaded: they changed"),
                Ok(false) => tracing::info!(listener = %name, "certificates unchanged"),
                Err(e) => {
                    for err in &e {
                        tracing::error!(listener = %name, "certificate reload refused, old certificates keep serving: {err}");
                    }
                    errors.extend(e);
                }
            }
        }
        errors
    }

    /// The count of open client connections (for [`memory::give_back_after_floods`]).
    pub fn connections(&self) -> Arc<ConnTracker> {
        Arc::clone(&self.tracker)
    }

    /// Ready for traffic: serving, not draining, and every health-checked endpoint
    /// judged once.
    pub fn is_ready(&self) -> bool {
        if self.draining.load(Ordering::Relaxed) {
            return false;
        }
        let rt = self.runtime.load();
        rt.clusters.values().all(|c| {
            c.config().health_check.is_none() || {
                let set = c.endpoints();
                (0..set.len()).all(|i| set.state.get(i).is_some_and(|s| s.is_checked()))
            }
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Every listening socket (and the admin one), duplicated, with the listener and
    /// configured address it serves: what a binary upgrade hands over.
    pub async fn listening_sockets(&self) -> std::io::Result<Vec<PreboundSocket>> {
        let sockets = self.sockets.lock().await;
        let mut out = Vec::new();
        for r in &sockets.running {
            out.push(PreboundSocket {
                listener: Some(r.listener.clone()),
                configured: r.configured,
                socket: r.socket.try_clone()?,
            });
        }
        if let Some(a) = &sockets.admin {
            out.push(PreboundSocket {
                listener: Some(admin::LISTENER.to_owned()),
                configured: a.configured,
                socket: Socket::Tcp(a.socket.try_clone()?),
            });
        }
        Ok(out)
    }

    /// Stops accepting on every socket, connections left as they are (a binary
    /// upgrade's new process accepts on the same sockets from now).
    pub async fn stop_accepting(&self) {
        let sockets = self.sockets.lock().await;
        for r in &sockets.running {
            let _ = r.stop.send(true);
        }
    }

    /// Turns readiness false (`/readyz`, the fleet entry) while still accepting: what a
    /// stop does first, so that load balancers can stop sending before the listeners
    /// close.
    pub fn begin_drain(&self) {
        if !self.draining.swap(true, Ordering::Relaxed) {
            self.state_changes.send_replace(());
        }
    }

    /// Stops accepting (readiness turns false first), asks every connection to
    /// finish (HTTP/2 GOAWAY, HTTP/1.1 close after the current response) and waits up
    /// to `drain` for all of them, long-lived ones included (WebSockets, CONNECT and
    /// Layer 4 tunnels, gRPC streams). What is still open then is closed by Pylon, each
    /// with its protocol's goodbye (WebSocket Close 1001 both ways, gRPC UNAVAILABLE)
    /// and a log line. True if all finished within `drain`.
    pub async fn shutdown(&self, drain: Duration) -> bool {
        self.begin_drain();
        {
            let mut sockets = self.sockets.lock().await;
            // Closing our handles too: the kernel refuses new connections from now
            // (unless a new process holds the sockets after an upgrade).
            for r in sockets.running.drain(..) {
                r.close();
            }
        }
        if self.tracker.wait_idle(drain).await {
            return true;
        }
        tracing::warn!(
            connections = self.tracker.live(),
            "drain timeout reached; closing what is still open"
        );
        self.shared.stop.fire();
        let _ = self
            .tracker
            .wait_idle(l4::relay::CLOSE_LINGER + Duration::from_secs(1))
            .await;
        false
    }
}
