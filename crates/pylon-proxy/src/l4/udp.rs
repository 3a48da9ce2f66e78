//! UDP listeners: a session per client address, each with its own upstream socket
//! connected to the endpoint the balancer chose (the client address is the hash key for
//! hash balancers). Replies on that socket go back to that client only. A session
//! without datagrams either way for `idle_timeout` expires; beyond `max_connections`
//! sessions, new clients' datagrams are dropped and counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::cluster::{ClusterRuntime, EndpointLease, EndpointPool};
use crate::lock;
use crate::runtime::Runtime;
use crate::shared::Shared;

/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_535;

pub struct UdpProxyLoop {
    pub socket: Arc<UdpSocket>,
    pub name: Arc<str>,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub shared: Arc<Shared>,
    pub shutdown: watch::Receiver<bool>,
}

struct Session {
    upstream: Arc<UdpSocket>,
    /// When the client last sent, in milliseconds since `EPOCH`.
    last_sent: Arc<AtomicU64>,
    /// Bytes the client sent in this session.
    bytes_in: Arc<AtomicU64>,
}

fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Session>>>;

impl UdpProxyLoop {
    pub async fn run(mut self) {
        let sessions: Sessions = Arc::default();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let received = tokio::select! {
                r = self.socket.recv_from(&mut buf) => r,
                _ = self.shutdown.changed() => return,
            };
            let (n, client) = match received {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors surface here on some systems; nothing to do but go on.
                    tracing::debug!(listener = %self.name, error = %e, "udp receive failed");
                    continue;
                }
            };
            let existing = lock(&sessions).get(&client).map(|s| {
                s.last_sent.store(now_ms(), Ordering::Relaxed);
                s.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                Arc::clone(&s.upstream)
            });
            let upstream = match existing {
                Some(u) => u,
                None => match self.open_session(client, &sessions, n).await {
                    Some(u) => u,
                    None => {
                        self.shared
                            .metrics
                            .udp_dropped
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                },
            };
            // A new session's socket has no readiness yet: wait for it then.
            let sent = match upstream.try_send(&buf[..n]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    upstream.send(&buf[..n]).await
                }
                other => other,
            };
            if let Err(e) = sent {
                tracing::debug!(listener = %self.name, %client, error = %e, "udp send upstream failed");
                self.shared
                    .metrics
                    .udp_dropped
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                self.shared
                    .metrics
                    .l4_bytes_received
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }

    /// A session for `client`, whose first datagram has `first` bytes.
    async fn open_session(
        &self,
        client: SocketAddr,
        sessions: &Sessions,
        first: usize,
    ) -> Option<Arc<UdpSocket>> {
        let runtime = self.runtime.load_full();
        let lr = runtime.listener(&self.name)?;
        let l4 = lr.config.l4.clone()?;
        if lock(sessions).len() as u64 >= l4.max_connections {
            tracing::warn!(listener = %self.name, %client, limit = l4.max_connections, "udp session refused: listener at max_connections");
            return None;
        }
        let cluster = Arc::clone(runtime.clusters.get(l4.cluster.as_deref()?)?);
        drop(runtime);
        let key = crate::cluster::hash_key(client.ip().to_string().as_bytes());
        // Subscribed first: a change while the session opens is not missed.
        let endpoints = cluster.watch_endpoints();
        let lease = cluster.pick(Some(key))?;
        let endpoint = lease.endpoint().address;
        let bind: SocketAddr = if endpoint.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let upstream = match UdpSocket::bind(bind).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(listener = %self.name, error = %e, "udp session socket failed");
                return None;
            }
        };
        if let Err(e) = upstream.connect(endpoint).await {
            tracing::warn!(listener = %self.name, %endpoint, error = %e, "udp connect failed");
            lease.report(false);
            return None;
        }
        let upstream = Arc::new(upstream);
        let last_sent = Arc::new(AtomicU64::new(now_ms()));
        let bytes_in = Arc::new(AtomicU64::new(first as u64));
        lock(sessions).insert(
            client,
            Session {
                upstream: Arc::clone(&upstream),
                last_sent: Arc::clone(&last_sent),
                bytes_in: Arc::clone(&bytes_in),
            },
        );
        self.shared
            .metrics
            .udp_sessions
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(listener = %self.name, %client, %endpoint, "udp session opened");
        tokio::spawn(
            SessionTask {
                upstream: Arc::clone(&upstream),
                listener: Arc::clone(&self.socket),
                client,
                last_sent,
                sessions: Arc::clone(sessions),
                idle: l4.idle_timeout,
                cluster: Following {
                    runtime: Arc::clone(&self.runtime),
                    name: Arc::clone(&cluster.name),
                    cluster: Arc::downgrade(&cluster),
                    changes: endpoints,
                },
                lease,
                shared: Arc::clone(&self.shared),
                end: crate::life::Ending::new(Some(&lr.life), &self.shared.stop),
                log: SessionLog {
                    listener: Arc::clone(&self.name),
                    cluster: Arc::clone(&cluster.name),
                    bytes_in,
                },
            }
            .replies(),
        );
        Some(upstream)
    }
}

/// The cluster a session's endpoint belongs to, followed by name across reloads that
/// build it anew.
struct Following {
    runtime: Arc<ArcSwap<Runtime>>,
    name: Arc<str>,
    /// The cluster `changes` come from.
    cluster: Weak<ClusterRuntime>,
    changes: watch::Receiver<()>,
}

impl Following {
    /// Resolves when `pool`'s address is no longer one of the cluster's endpoints (a
    /// new weight is the same endpoint); never once the cluster is gone from the
    /// configuration (the listener's life decides then).
    async fn endpoint_left(&mut self, pool: &Arc<EndpointPool>) {
        loop {
            // Woken by a change of the cluster followed, or by its end. Either that
            // cluster no longer has the endpoint (a connection still holding a
            // cluster a reload replaced keeps it following discovery too)...
            let gone = self.changes.changed().await.is_err();
            if !gone
                && let Some(c) = self.cluster.upgrade()
                && c.endpoints().position(pool.address).is_none()
            {
                return;
            }
            // ...or the cluster in force, if a reload built it anew, does not.
            let runtime = self.runtime.load();
            let Some(c) = runtime.clusters.get(&*self.name) else {
                return std::future::pending().await;
            };
            if !std::ptr::eq(self.cluster.as_ptr(), Arc::as_ptr(c)) {
                self.cluster = Arc::downgrade(c);
                self.changes = c.watch_endpoints();
                if c.endpoints().position(pool.address).is_none() {
                    return;
                }
            } else if gone {
                return std::future::pending().await;
            }
        }
    }
}

/// One session's reply side.
struct SessionTask {
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    last_sent: Arc<AtomicU64>,
    sessions: Sessions,
    idle: Duration,
    /// The cluster's endpoint set changes: a session whose endpoint leaves the
    /// cluster (an instance gone from etcd, a name no longer resolving to it) ends, so
    /// that the client's next datagram goes to an endpoint that is there.
    cluster: Following,
    lease: EndpointLease,
    shared: Arc<Shared>,
    /// The listener's life: a reload that removes or changes the listener ends the
    /// session after the grace period.
    end: crate::life::Ending,
    log: SessionLog,
}

/// What the session's access-log line needs.
struct SessionLog {
    listener: Arc<str>,
    cluster: Arc<str>,
    bytes_in: Arc<AtomicU64>,
}

impl SessionTask {
    /// Relays the endpoint's replies to the session's client until the session idles out.
    async fn replies(self) {
        let SessionTask {
            upstream,
            listener,
            client,
            last_sent,
            sessions,
            idle,
            mut cluster,
            lease,
            shared,
            mut end,
            log,
        } = self;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut last_reply = now_ms();
        let started = std::time::Instant::now();
        let mut bytes_out = 0u64;
        let mut why = "idle_timeout";
        // Made once: polled again only when the cluster changes, not per datagram.
        let endpoint = Arc::clone(lease.endpoint());
        let left_cluster = cluster.endpoint_left(&endpoint);
        tokio::pin!(left_cluster);
        loop {
            // Wake when the session would expire if nothing moves either way.
            let last = last_reply.max(last_sent.load(Ordering::Relaxed));
            let left = (last + idle.as_millis() as u64).saturating_sub(now_ms());
            if left == 0 {
                break;
            }
            let recv = tokio::time::timeout(Duration::from_millis(left), upstream.recv(&mut buf));
            let outcome = tokio::select! {
                r = recv => r,
                cause = end.ended() => {
                    tracing::info!(%client, endpoint = %lease.endpoint().address, reason = cause.as_str(), "udp session closed by the proxy");
                    why = cause.as_str();
                    break;
                }
                () = &mut left_cluster => {
                    tracing::info!(%client, endpoint = %lease.endpoint().address, "udp session closed: its endpoint left the cluster");
                    why = "endpoint_removed";
                    break;
                }
            };
            match outcome {
                Ok(Ok(n)) => {
                    last_reply = now_ms();
                    if listener.send_to(&buf[..n], client).await.is_ok() {
                        bytes_out += n as u64;
                        shared
                            .metrics
                            .l4_bytes_sent
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                Ok(Err(e)) => {
                    // Connection refused (ICMP port unreachable): the endpoint is not there.
                    tracing::debug!(%client, endpoint = %lease.endpoint().address, error = %e, "udp upstream error");
                    lease.report(false);
                    why = "error";
                    break;
                }
                // Re-checked at the top: the client may have sent meanwhile.
                Err(_) => {}
            }
        }
        lock(&sessions).remove(&client);
        tracing::debug!(%client, "udp session closed");
        if shared.logger.enabled() {
            use crate::observe::access_log::{SessionRecord, millis};
            let elapsed = started.elapsed();
            shared.logger.log_session(Box::new(SessionRecord {
                time: SessionRecord::since(elapsed),
                kind: "udp_session",
                listener: log.listener,
                client,
                cluster: Some(log.cluster),
                upstream: Some(lease.endpoint().address),
                bytes_in: log.bytes_in.load(Ordering::Relaxed),
                bytes_out,
                duration_ms: millis(elapsed),
                end: why,
                closed_by: None,
            }));
        }
    }
}
