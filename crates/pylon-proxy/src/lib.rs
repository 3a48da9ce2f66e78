//! Pylon's engine: listeners, the one request path, upstream pools, observation.
//!
//! [`Proxy::start`] turns a validated config into running listeners;
//! [`Proxy::shutdown`] stops accepting and drains.

mod conn;
pub mod health;
pub mod http;
pub mod l4;
pub mod listener;
pub mod observe;
pub mod runtime;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pylon_config::Config;
use pylon_config::model::ListenerProtocol;
use tokio::sync::watch;

use crate::http::pipeline::{RequestIds, Shared};
use crate::listener::{AcceptLoop, ConnTracker};
use crate::observe::{AccessLogger, Metrics};
use crate::runtime::Runtime;
use crate::tls::server::ServerTls;

/// Sockets already bound by the caller, used instead of binding these addresses
/// (for tests, and later for taking over sockets from a running Pylon).
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
    Config(pylon_config::ConfigErrors),
}

/// An address a listener is serving on.
#[derive(Debug, Clone)]
pub struct BoundAddr {
    pub listener: String,
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
}

/// A running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tracker: Arc<ConnTracker>,
    bound: Vec<BoundAddr>,
    runtime: Arc<ArcSwap<Runtime>>,
    tls: Vec<(String, Arc<ServerTls>)>,
}

impl Proxy {
    /// Binds every listener and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: &Config) -> Result<Proxy, StartError> {
        Self::start_with(config, Prebound::new()).await
    }

    pub async fn start_with(config: &Config, mut prebound: Prebound) -> Result<Proxy, StartError> {
        // aws-lc-rs is the only crypto provider; installing it twice is harmless.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let metrics = Arc::new(Metrics::default());
        let logger = AccessLogger::start(&config.access_log.target, Arc::clone(&metrics))
            .map_err(StartError::AccessLog)?;
        let shared = Arc::new(Shared {
            metrics,
            logger,
            request_ids: RequestIds::default(),
        });
        // Sockets first: health checks of endpoints this process serves itself (demo
        // backends) find them listening.
        enum Socket {
            Tcp(std::net::TcpListener),
            Udp(std::net::UdpSocket),
        }
        let mut sockets = Vec::new();
        for l in &config.listeners {
            for &addr in &l.binds {
                let bind_err = |source| StartError::Bind {
                    listener: l.name.clone(),
                    addr,
                    source,
                };
                let socket = if l.protocol == ListenerProtocol::Udp {
                    Socket::Udp(listener::bind_udp(addr).map_err(bind_err)?)
                } else {
                    match prebound.remove(&addr) {
                        Some(s) => Socket::Tcp(s),
                        None => Socket::Tcp(listener::bind(addr).map_err(bind_err)?),
                    }
                };
                sockets.push((l.name.clone(), l.protocol, addr, socket));
            }
        }
        let built = Runtime::build(config)
            .map_err(|e| StartError::Config(pylon_config::ConfigErrors(e)))?;
        // Clusters with DNS endpoints get their first answers before traffic arrives
        // (a name that does not resolve leaves its cluster answering 503 no_endpoint
        // until it does).
        for c in built.clusters.values() {
            let limit = c.dns_timeout().saturating_mul(2) + Duration::from_secs(1);
            if !c.wait_dns_ready(limit).await {
                tracing::warn!(cluster = %c.name, "DNS endpoints not resolved yet; serving without them");
            }
        }
        let runtime = Arc::new(ArcSwap::from_pointee(built));
        let mut tls = Vec::new();
        for l in &config.listeners {
            if let Some(t) = &l.tls {
                let server = ServerTls::new(t.clone())
                    .map_err(|e| StartError::Config(pylon_config::ConfigErrors(e)))?;
                tls.push((l.name.clone(), Arc::new(server)));
            }
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let tracker = Arc::new(ConnTracker::default());

        let mut bound = Vec::new();
        for (name, protocol, addr, socket) in sockets {
            let bind_err = |source| StartError::Bind {
                listener: name.clone(),
                addr,
                source,
            };
            let listener_tls = tls
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| Arc::clone(t));
            let scheme = match protocol {
                ListenerProtocol::Http => "http",
                ListenerProtocol::Https => "https",
                ListenerProtocol::Tcp => "tcp",
                ListenerProtocol::Udp => "udp",
            };
            let tcp = match socket {
                Socket::Udp(u) => {
                    u.set_nonblocking(true).map_err(bind_err)?;
                    let socket = tokio::net::UdpSocket::from_std(u).map_err(bind_err)?;
                    let local = socket.local_addr().map_err(bind_err)?;
                    bound.push(BoundAddr {
                        listener: name.clone(),
                        addr: local,
                        scheme,
                    });
                    tokio::spawn(
                        l4::udp::UdpProxyLoop {
                            socket: Arc::new(socket),
                            name: Arc::from(name.as_str()),
                            runtime: Arc::clone(&runtime),
                            shared: Arc::clone(&shared),
                            shutdown: shutdown_rx.clone(),
                        }
                        .run(),
                    );
                    continue;
                }
                Socket::Tcp(t) => t,
            };
            tcp.set_nonblocking(true).map_err(bind_err)?;
            let tl = tokio::net::TcpListener::from_std(tcp).map_err(bind_err)?;
            let local = tl.local_addr().map_err(bind_err)?;
            bound.push(BoundAddr {
                listener: name.clone(),
                addr: local,
                scheme,
            });
            if protocol == ListenerProtocol::Tcp {
                tokio::spawn(
                    l4::tcp::TcpProxyLoop {
                        listener: tl,
                        name: Arc::from(name.as_str()),
                        runtime: Arc::clone(&runtime),
                        shared: Arc::clone(&shared),
                        tracker: Arc::clone(&tracker),
                        shutdown: shutdown_rx.clone(),
                        tls: listener_tls,
                    }
                    .run(),
                );
                continue;
            }
            tokio::spawn(
                AcceptLoop {
                    listener: tl,
                    name: Arc::from(name.as_str()),
                    runtime: Arc::clone(&runtime),
                    shared: Arc::clone(&shared),
                    tracker: Arc::clone(&tracker),
                    shutdown: shutdown_rx.clone(),
                    tls: listener_tls,
                }
                .run(),
            );
        }
        Ok(Proxy {
            shared,
            shutdown,
            tracker,
            bound,
            runtime,
            tls,
        })
    }

    /// Every address being served, in config order.
    pub fn bound(&self) -> &[BoundAddr] {
        &self.bound
    }

    /// The first address of the named listener.
    pub fn addr(&self, listener: &str) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|b| b.listener == listener)
            .map(|b| b.addr)
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Idle HTTP/1.1 upstream connections held for a cluster, summed over endpoints.
    pub fn idle_upstream_connections(&self, cluster: &str) -> usize {
        self.runtime.load().clusters.get(cluster).map_or(0, |c| {
            c.endpoints().pools.iter().map(|e| e.idle_count()).sum()
        })
    }

    /// Re-reads every listener's certificate files: new handshakes use the new
    /// certificates, open connections are untouched. A listener whose files fail keeps
    /// its old certificates; its errors are returned (and logged).
    pub fn reload_certificates(&self) -> Vec<pylon_config::ConfigError> {
        let mut errors = Vec::new();
        for (name, t) in &self.tls {
            match t.reload() {
                Ok(()) => tracing::info!(listener = %name, "certificates reloaded"),
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

    /// The named cluster's runtime (counters, endpoint state), as in the current config.
    pub fn cluster(&self, name: &str) -> Option<Arc<crate::http::upstream::ClusterRuntime>> {
        self.runtime.load().clusters.get(name).cloned()
    }

    /// Whether the endpoint `addr` of `cluster` is in rotation (health checks, ejection).
    pub fn endpoint_available(&self, cluster: &str, addr: SocketAddr) -> Option<bool> {
        let rt = self.runtime.load();
        let c = rt.clusters.get(cluster)?;
        let set = c.endpoints();
        Some(set.state.is_available(set.position(addr)?))
    }

    /// Client connections now open.
    pub fn live_connections(&self) -> usize {
        self.tracker.live()
    }

    /// Stops accepting, asks every connection to finish (HTTP/2 GOAWAY, HTTP/1.1 close
    /// after the current response) and waits up to `drain`. True if all finished.
    pub async fn shutdown(self, drain: Duration) -> bool {
        let _ = self.shutdown.send(true);
        self.tracker.wait_idle(drain).await
    }
}
