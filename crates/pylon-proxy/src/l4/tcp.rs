//! TCP listeners: accept, (PROXY header in), then one of plain relay, TLS passthrough
//! routed by SNI, or TLS termination; pick an endpoint with the cluster's balancer and
//! health state (client-address hash for hash balancers), connect with the cluster's
//! timeout and try the next endpoint on failure, (PROXY header out), then relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pylon_config::model::L4Listener;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::proxy_protocol::{self, TlsInfo};
use super::relay::{self, Activity, RelayLimits};
use super::sni;
use crate::cluster::{ClusterRuntime, EndpointLease};
use crate::listener::ConnTracker;
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::tls::server::ServerTls;
use crate::tls::upstream::UpstreamIo;

/// Endpoints tried per connection before the client is closed.
const MAX_CONNECT_TRIES: usize = 3;

pub struct TcpProxyLoop {
    pub listener: TcpListener,
    pub name: Arc<str>,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub shared: Arc<Shared>,
    pub tracker: Arc<ConnTracker>,
    pub shutdown: watch::Receiver<bool>,
    /// TLS termination at L4.
    pub tls: Option<Arc<ServerTls>>,
}

impl TcpProxyLoop {
    pub async fn run(mut self) {
        let inherited = self.runtime.load().listener(&self.name).is_some_and(|lr| {
            crate::tcp_options::inherit_from_listener(&self.listener, &lr.config.tcp)
        });
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = self.shutdown.changed() => return,
            };
            let (stream, client) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = %self.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let runtime = self.runtime.load();
            let Some(lr) = runtime.listener(&self.name) else {
                continue;
            };
            let Some(l4) = lr.l4.clone() else {
                continue;
            };
            // The listener's open connections, counted in its stats, which outlive this
            // accept loop: a reload that restarts the loop keeps the count.
            if lr.stats.connections_active() >= l4.max_connections {
                self.shared
                    .metrics
                    .l4_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(listener = %self.name, %client, limit = l4.max_connections, "connection refused: listener at max_connections");
                continue;
            }
            crate::tcp_options::accepted(&stream, &lr.config.tcp, inherited);
            let Some(guard) = self.tracker.admit(&runtime, &lr, client.ip()) else {
                drop(stream);
                continue;
            };
            let conn = Connection {
                listener: Arc::clone(&self.name),
                runtime: Arc::clone(&self.runtime),
                shared: Arc::clone(&self.shared),
                tls: self.tls.clone(),
                proxy_in: lr.proxy_in.clone(),
                l4,
                client,
                life: lr.life.clone(),
            };
            tokio::spawn(async move {
                conn.serve(stream).await;
                drop(guard);
            });
        }
    }
}

struct Connection {
    listener: Arc<str>,
    runtime: Arc<ArcSwap<Runtime>>,
    shared: Arc<Shared>,
    tls: Option<Arc<ServerTls>>,
    proxy_in: Option<Arc<pylon_config::model::ProxyProtocolIn>>,
    l4: Arc<L4Listener>,
    client: SocketAddr,
    /// The listener's life: a reload that removes or changes it ends the session
    /// after the grace period.
    life: crate::life::Life,
}

impl Connection {
    async fn serve(mut self, mut stream: TcpStream) {
        let started = Instant::now();
        let metrics = Arc::clone(&self.shared.metrics);
        metrics.l4_connections.fetch_add(1, Ordering::Relaxed);
        // The address the client reached: from its PROXY header, else read from the
        // socket when a PROXY header goes out.
        let mut destination = None;
        if let Some(pp) = &self.proxy_in {
            match super::accept_proxy_header(&mut stream, self.client, pp, self.l4.inspect_timeout)
                .await
            {
                Ok(Some((src, dst))) => {
                    self.client = src;
                    destination = Some(dst);
                }
                Ok(None) => {}
                Err(e) => {
                    metrics
                        .proxy_protocol_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(listener = %self.listener, client = %self.client, error = %e, "PROXY protocol: connection refused");
                    return;
                }
            }
        }
        // TLS passthrough: the ClientHello picks the cluster and is replayed upstream.
        let mut first_flight = Vec::new();
        let mut cluster_name = self.l4.cluster.clone();
        let mut sni_name = None;
        if !self.l4.sni_routes.is_empty() {
            match sni::read_client_hello(&mut stream, self.l4.inspect_timeout).await {
                Ok((hello, bytes)) => {
                    first_flight = bytes;
                    if let Some(r) = sni::choose(&self.l4.sni_routes, &hello) {
                        cluster_name = Some(r.cluster.clone());
                    }
                    sni_name = hello.server_name;
                }
                Err(e) => {
                    metrics.l4_rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(listener = %self.listener, client = %self.client, error = %e, "TLS passthrough: first flight refused");
                    return;
                }
            }
        }
        let runtime = self.runtime.load_full();
        let Some(cluster) = cluster_name
            .as_deref()
            .and_then(|c| runtime.clusters.get(c))
        else {
            metrics.l4_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::info!(listener = %self.listener, client = %self.client, server_name = ?sni_name, "no cluster for this connection; closed");
            return;
        };
        let cluster = Arc::clone(cluster);
        drop(runtime);
        let destination = match destination {
            Some(d) => d,
            None if cluster.proxy_protocol().is_some() => {
                stream.local_addr().unwrap_or(self.client)
            }
            None => self.client,
        };

        // TLS termination at L4 happens before the upstream is chosen.
        let mut tls_info = None;
        let (stream, client_tls) = match &self.tls {
            Some(tls) => {
                match tokio::time::timeout(
                    tls.settings.handshake_timeout,
                    tls.acceptor().accept(stream),
                )
                .await
                {
                    Ok(Ok(s)) => {
                        metrics.tls_handshakes.fetch_add(1, Ordering::Relaxed);
                        tls_info = Some(TlsInfo::from_connection(s.get_ref().1));
                        (None, Some(s))
                    }
                    _ => {
                        metrics
                            .tls_handshake_failures
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(listener = %self.listener, client = %self.client, "TLS handshake failed");
                        return;
                    }
                }
            }
            None => (Some(stream), None),
        };

        let passthrough = !first_flight.is_empty();
        // A PROXY header or a passed-through ClientHello goes first on plain TCP.
        let raw = passthrough || cluster.proxy_protocol().is_some();
        let Some((lease, opened)) = connect(&cluster, self.client, raw).await else {
            metrics.l4_connect_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(listener = %self.listener, client = %self.client, cluster = %cluster.name, "no endpoint reachable; connection closed");
            return;
        };
        let endpoint = Arc::clone(lease.endpoint());
        let activity = Activity::default();
        let upstream = match opened {
            // A warm connection with its TLS handshake done.
            Opened::Ready(io) => io,
            Opened::Tcp(mut tcp) => {
                // The PROXY header goes first, at the TCP level; a passed-through
                // ClientHello follows it as is.
                let mut preface = Vec::new();
                if let Some(v) = cluster.proxy_protocol() {
                    preface =
                        proxy_protocol::encode(v, self.client, destination, tls_info.as_ref());
                }
                preface.extend_from_slice(&first_flight);
                if let Err(e) = tcp.write_all(&preface).await {
                    lease.report(false);
                    tracing::debug!(cluster = %cluster.name, upstream = %endpoint.address, error = %e, "upstream closed at once");
                    return;
                }
                activity
                    .up
                    .fetch_add(first_flight.len() as u64, Ordering::Relaxed);
                // TLS to the upstream (not for passthrough, which is end-to-end TLS
                // already).
                if endpoint.has_tls() && !passthrough {
                    match endpoint.tls_over(tcp).await {
                        Ok(io) => io,
                        Err(e) => {
                            lease.report(false);
                            metrics.l4_connect_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(cluster = %cluster.name, upstream = %endpoint.address, error = %e, "upstream TLS handshake failed; connection closed");
                            return;
                        }
                    }
                } else {
                    UpstreamIo::plain(tcp)
                }
            }
        };
        let limits = RelayLimits {
            idle: self.l4.idle_timeout,
            lifetime: self.l4.max_lifetime,
            end: crate::life::Ending::new(Some(&self.life), &self.shared.stop),
        };
        let end = match (stream, client_tls) {
            (Some(client), None) => match upstream.into_plain() {
                Ok(tcp) => relay::tcp(client, tcp, limits, self.l4.splice, &activity).await,
                Err(io) => relay::copy(client, io, limits, &activity).await,
            },
            (_, Some(client)) => relay::copy(client, upstream, limits, &activity).await,
            (None, None) => return,
        };
        let up = activity.up.load(Ordering::Relaxed);
        let down = activity.down.load(Ordering::Relaxed);
        metrics.l4_bytes_received.fetch_add(up, Ordering::Relaxed);
        metrics.l4_bytes_sent.fetch_add(down, Ordering::Relaxed);
        if matches!(end, relay::RelayEnd::Error(_)) {
            lease.report(false);
        }
        if self.shared.logger.enabled() {
            let elapsed = started.elapsed();
            self.shared
                .logger
                .log_session(Box::new(crate::observe::access_log::SessionRecord {
                    time: crate::observe::access_log::SessionRecord::since(elapsed),
                    kind: "tcp_session",
                    listener: Arc::clone(&self.listener),
                    client: self.client,
                    cluster: Some(Arc::clone(&cluster.name)),
                    upstream: Some(endpoint.address),
                    bytes_in: up,
                    bytes_out: down,
                    duration_ms: crate::observe::access_log::millis(elapsed),
                    end: if matches!(end, relay::RelayEnd::Error(_)) {
                        "error"
                    } else {
                        end.as_str()
                    },
                    closed_by: activity.closed_by(&end),
                }));
        }
        if end.by_proxy() {
            // Closed by Pylon: a limit, a reload that removed the listener, or a stop.
            tracing::info!(
                listener = %self.listener,
                client = %self.client,
                cluster = %cluster.name,
                upstream = %endpoint.address,
                bytes_up = up,
                bytes_down = down,
                duration_ms = started.elapsed().as_millis() as u64,
                reason = end.as_str(),
                "tcp connection closed by the proxy"
            );
            return;
        }
        tracing::debug!(
            listener = %self.listener,
            client = %self.client,
            cluster = %cluster.name,
            upstream = %endpoint.address,
            bytes_up = up,
            bytes_down = down,
            duration_ms = started.elapsed().as_millis() as u64,
            end = end.as_str(),
            "tcp connection closed"
        );
    }
}

/// An upstream connection for a client.
enum Opened {
    /// TCP only: a PROXY header, the passed-through first flight and TLS come next.
    Tcp(TcpStream),
    /// A warm connection of a TLS cluster, its handshake done.
    Ready(UpstreamIo),
}

/// Connects to an endpoint chosen by the balancer, trying others on failure. A warm
/// connection is taken when there is one (plain TCP only when `raw`).
async fn connect(
    cluster: &ClusterRuntime,
    client: SocketAddr,
    raw: bool,
) -> Option<(EndpointLease, Opened)> {
    let set = cluster.current_endpoints();
    let key = cluster
        .hash_key
        .as_ref()
        .map(|_| crate::cluster::hash_key(client.ip().to_string().as_bytes()));
    let mut tried = Vec::new();
    for attempt in 0..MAX_CONNECT_TRIES.min(set.len().max(1)) {
        let lease = cluster.pick_excluding(&set, if attempt == 0 { key } else { None }, &tried)?;
        let addr = lease.endpoint().address;
        if let Some(warm) = lease
            .endpoint()
            .warm
            .as_ref()
            .and_then(|w| w.take_relay(raw))
        {
            let opened = match warm {
                Ok(tcp) => Opened::Tcp(tcp),
                Err(io) => Opened::Ready(io),
            };
            return Some((lease, opened));
        }
        match tokio::time::timeout(lease.endpoint().connect_timeout(), TcpStream::connect(addr))
            .await
        {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                crate::tcp_options::apply(&s, lease.endpoint().tcp_options());
                return Some((lease, Opened::Tcp(s)));
            }
            Ok(Err(e)) => {
                tracing::debug!(cluster = %cluster.name, endpoint = %addr, error = %e, "connect failed; trying another endpoint");
            }
            Err(_) => {
                tracing::debug!(cluster = %cluster.name, endpoint = %addr, "connect timed out; trying another endpoint");
            }
        }
        lease.report(false);
        tried.push(addr);
    }
    None
}
