//! Upstream clusters at run time: endpoints, their connection pools and the balancer.

pub mod body;
pub mod destinations;
pub(crate) mod discovery;
mod etcd_discovery;
mod h1;
mod h2;
mod h3;
mod pool;
mod sticky;
pub mod subrequest;
mod timing;
pub mod warm;

pub use body::UpstreamBody;
pub use h1::{H1Body, Prefixed, SendError};
pub use h3::{
    FALLBACKS as H3_FALLBACKS, H3Body as H3UpstreamBody, H3Error, QUIC_TIMEOUTS, QUIC_UNREACHABLE,
};
pub use pool::{ClientAddresses, EndpointPool, Pooled, UpstreamError};
pub use pylon_lb::hash_key;
pub use sticky::StickyCookie;
pub use timing::TryTiming;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use pylon_config::ConfigError;
use pylon_config::model::{self, HostHeader, UpstreamProtocol};

use crate::tls::upstream::TlsConnector;
use pylon_config::model::{CircuitBreaker, EndpointAddress, HashKey, LbPolicy, Retry};
use pylon_lb::{
    Algorithm, Balancer, EndpointState, Endpoints, OutlierPolicy, RequestGuard, RetryBudget,
    RetryBudgetPolicy, RetryGuard, RetryShare, SlowStart,
};

/// The endpoints a cluster balances over now, index-aligned: pools, live state, the
/// balancer built over them and their ids. Replaced whole when DNS answers change; a
/// request keeps the set it picked from until it ends.
pub struct EndpointSet {
    pub pools: Vec<Arc<EndpointPool>>,
    pub state: Endpoints,
    balancer: Box<dyn Balancer>,
    /// The endpoints' addresses, as sticky cookies and hash rings name them.
    pub ids: Vec<String>,
    /// What outlier detection needs of the cluster, so a lease holds the set alone.
    outlier: Option<OutlierPolicy>,
    ejections: Arc<AtomicU64>,
    cluster: Arc<str>,
}

impl EndpointSet {
    fn new(
        c: &ClusterRuntime,
        pools: Vec<Arc<EndpointPool>>,
        states: Vec<Arc<EndpointState>>,
    ) -> Self {
        let weights: Vec<u32> = states.iter().map(|s| s.weight).collect();
        let ids: Vec<String> = pools.iter().map(|p| p.address.to_string()).collect();
        EndpointSet {
            balancer: algorithm(c.lb).build(&weights, &ids),
            state: Endpoints::from_states(states),
            pools,
            ids,
            outlier: c.outlier,
            ejections: Arc::clone(&c.ejections),
            cluster: Arc::clone(&c.name),
        }
    }

    /// No endpoint yet (a cluster being built).
    fn empty(c: &model::Cluster) -> Self {
        EndpointSet {
            pools: Vec::new(),
            state: Endpoints::new(&[]),
            balancer: algorithm(c.lb).build(&[], &[]),
            ids: Vec::new(),
            outlier: None,
            ejections: Arc::new(AtomicU64::new(0)),
            cluster: Arc::from(c.name.as_str()),
        }
    }

    pub fn len(&self) -> usize {
        self.pools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// The index of the endpoint at `addr`.
    pub fn position(&self, addr: SocketAddr) -> Option<usize> {
        self.pools.iter().position(|p| p.address == addr)
    }
}

/// One endpoint of a new set: where, with which weight, and the DNS name it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub address: SocketAddr,
    pub weight: u32,
    pub host: Option<Arc<str>>,
}

/// A cluster ready to take requests.
pub struct ClusterRuntime {
    pub name: Arc<str>,
    pub protocol: UpstreamProtocol,
    pub host_header: HostHeader,
    pub response_timeout: Duration,
    set: ArcSwap<EndpointSet>,
    lb: LbPolicy,
    /// What new endpoints are built from (DNS updates).
    config: model::Cluster,
    tls: Option<TlsConnector>,
    /// `h3` clusters with `h3_fallback`: the TCP protocol's settings and TLS, for each
    /// endpoint's fallback pool.
    fallback: Option<(model::Cluster, TlsConnector)>,
    limits: pool::ConnectionLimits,
    /// The hash key, for `ring_hash` and `maglev` clusters.
    pub hash_key: Option<HashKey>,
    /// Endpoint health changes so far (in and out of rotation).
    pub health_changes: AtomicU64,
    /// Passive health checking, when configured.
    outlier: Option<OutlierPolicy>,
    /// Ejections by outlier detection so far.
    pub ejections: Arc<AtomicU64>,
    pub retry: Option<Retry>,
    /// Requests and retries in flight, and the retry budget and request limits over
    /// them.
    budget: RetryBudget,
    /// Retries sent so far.
    pub retries: AtomicU64,
    pub breaker: CircuitBreaker,
    slow_start: Option<SlowStart>,
    panic_threshold: u32,
    /// Sticky sessions.
    pub sticky: Option<StickyCookie>,
    /// Upstream connections open, and requests waiting for one to open (all endpoints).
    pub(crate) open_connections: Arc<AtomicU64>,
    pub(crate) pending: Arc<AtomicU64>,
    /// DNS discovery: endpoint set changes applied, and failed resolutions, so far.
    pub dns_updates: AtomicU64,
    pub dns_failures: AtomicU64,
    /// Set once the first DNS round is done (at once without DNS endpoints).
    dns_ready: tokio::sync::watch::Sender<bool>,
    /// Bumped whenever a new endpoint set goes in force (discovery), for sessions that
    /// must end when their endpoint leaves (UDP).
    set_changes: tokio::sync::watch::Sender<()>,
    /// Upstream latency, kept across reloads.
    pub stats: Arc<crate::observe::stats::ClusterStats>,
}

/// One request's claim on an endpoint: counted in flight until dropped, when the
/// latency to its response head (if any) feeds the endpoint's average.
pub struct EndpointLease {
    set: Arc<EndpointSet>,
    index: usize,
    latency: Option<Duration>,
}

impl EndpointLease {
    pub fn endpoint(&self) -> &Arc<EndpointPool> {
        &self.set.pools[self.index]
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// The endpoint's id (its address), as a sticky cookie names it.
    pub fn id(&self) -> &str {
        &self.set.ids[self.index]
    }

    pub fn record_latency(&mut self, d: Duration) {
        self.latency = Some(d);
    }

    /// Feeds outlier detection with this request's outcome (`ok` false for a 5xx answer
    /// or an upstream failure).
    pub fn report(&self, ok: bool) {
        let set = &self.set;
        let Some(policy) = &set.outlier else { return };
        if let Some(d) = set.state.record_outcome(self.index, ok, policy) {
            set.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                cluster = %set.cluster,
                endpoint = %self.set.pools[self.index].address,
                ejection = ?d,
                "endpoint ejected after consecutive failures"
            );
        }
    }
}

impl Drop for EndpointLease {
    fn drop(&mut self) {
        self.set.state.end(self.index, self.latency);
    }
}

fn algorithm(p: LbPolicy) -> Algorithm {
    match p {
        LbPolicy::RoundRobin => Algorithm::RoundRobin,
        LbPolicy::LeastConnections => Algorithm::LeastConnections,
        LbPolicy::LeastRequest => Algorithm::LeastRequest,
        LbPolicy::Random => Algorithm::Random,
        LbPolicy::RingHash => Algorithm::RingHash,
        LbPolicy::Maglev => Algorithm::Maglev,
    }
}

/// A cluster's endpoints given as addresses (host names come from DNS discovery).
fn fixed_endpoints(c: &model::Cluster) -> Vec<EndpointSpec> {
    c.endpoints
        .iter()
        .filter_map(|e| match e.address {
            EndpointAddress::Socket(address) => Some(EndpointSpec {
                address,
                weight: e.weight,
                host: None,
            }),
            _ => None,
        })
        .collect()
}

/// The cluster's retry budget and request limit.
fn retry_budget(c: &model::Cluster) -> RetryBudget {
    RetryBudget::new(RetryBudgetPolicy {
        retry: c.retry.as_ref().map(|r| RetryShare {
            budget_percent: r.budget_percent,
            budget_min_concurrent: r.budget_min_concurrent,
        }),
        max_retries: c.circuit_breaker.max_retries,
        max_requests: c.circuit_breaker.max_requests,
    })
}

impl ClusterRuntime {
    /// Builds the cluster (reading its TLS files) and starts its idle-connection
    /// sweeper, health checks and DNS discovery.
    pub fn new(
        c: &model::Cluster,
        stats: Arc<crate::observe::stats::ClusterStats>,
    ) -> Result<Arc<Self>, ConfigError> {
        let tls = match &c.tls {
            Some(t) => Some(TlsConnector::new(t, c.protocol)?),
            None => None,
        };
        let fallback = match (c.h3_fallback, &c.tls) {
            (Some(p), Some(t)) if c.protocol == UpstreamProtocol::H3 => {
                let mut tcp = c.clone();
                tcp.protocol = p;
                tcp.h3_fallback = None;
                Some((tcp, TlsConnector::new(t, p)?))
            }
            _ => None,
        };
        let limits = pool::ConnectionLimits {
            open: Arc::new(AtomicU64::new(0)),
            max_open: c.circuit_breaker.max_connections,
            pending: Arc::new(AtomicU64::new(0)),
            max_pending: c.circuit_breaker.max_pending_requests,
        };
        let (open_connections, pending) = (Arc::clone(&limits.open), Arc::clone(&limits.pending));
        let uses_dns = c.endpoints.iter().any(|e| e.address.is_dns());
        let sticky = match &c.sticky {
            Some(s) => Some(
                StickyCookie::new(s)
                    .map_err(|e| ConfigError::general(format!("cluster {}: {e}", c.name)))?,
            ),
            None => None,
        };
        let cluster = Arc::new(ClusterRuntime {
            name: Arc::from(c.name.as_str()),
            protocol: c.protocol,
            host_header: c.host_header,
            response_timeout: c.response_timeout,
            set: ArcSwap::from_pointee(EndpointSet::empty(c)),
            lb: c.lb,
            config: c.clone(),
            tls,
            fallback,
            limits,
            hash_key: c.lb.uses_key().then(|| c.hash_key.clone()),
            health_changes: AtomicU64::new(0),
            outlier: c.outlier_detection.as_ref().map(|o| OutlierPolicy {
                consecutive_failures: o.consecutive_failures,
                base_ejection: o.base_ejection_time,
                max_ejection_percent: o.max_ejection_percent,
            }),
            ejections: Arc::new(AtomicU64::new(0)),
            retry: c.retry.clone(),
            budget: retry_budget(c),
            retries: AtomicU64::new(0),
            breaker: c.circuit_breaker.clone(),
            slow_start: c.slow_start.map(SlowStart::new),
            panic_threshold: c.panic_threshold,
            sticky,
            open_connections,
            pending,
            dns_updates: AtomicU64::new(0),
            dns_failures: AtomicU64::new(0),
            dns_ready: tokio::sync::watch::Sender::new(!uses_dns && c.discovery.is_none()),
            set_changes: tokio::sync::watch::Sender::new(()),
            stats,
        });
        // Fixed addresses now; DNS names join when first resolved.
        cluster.replace_endpoints(&fixed_endpoints(c));
        if uses_dns {
            discovery::spawn(&cluster)?;
        }
        if let Some(d) = &c.discovery {
            etcd_discovery::spawn(&cluster, d.clone());
        }
        spawn_sweeper(Arc::downgrade(&cluster), c.pool.idle_timeout);
        Ok(cluster)
    }

    /// The config the cluster was built from.
    pub fn config(&self) -> &model::Cluster {
        &self.config
    }

    /// The endpoint set now in force.
    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.set.load_full()
    }

    /// The endpoint set now in force, without taking a reference count (for one
    /// request: leases clone what they keep).
    pub fn current_endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.set.load()
    }

    /// Swaps in a new endpoint set. Endpoints already known (same address and weight)
    /// keep their pool and state (health, ejection, load); new ones get health checks;
    /// requests in flight finish on the set they started with. Returns whether the set
    /// changed.
    pub fn replace_endpoints(self: &Arc<Self>, specs: &[EndpointSpec]) -> bool {
        let old = self.set.load_full();
        let same = old.len() == specs.len()
            && specs.iter().enumerate().all(|(i, s)| {
                old.pools[i].address == s.address
                    && old
                        .state
                        .get(i)
                        .is_some_and(|st| st.weight == s.weight.max(1))
            });
        if same && !old.is_empty() {
            return false;
        }
        let mut pools = Vec::with_capacity(specs.len());
        let mut states = Vec::with_capacity(specs.len());
        let mut fresh = Vec::new();
        for s in specs {
            let kept = old.position(s.address).and_then(|i| {
                let st = old.state.state(i)?;
                (st.weight == s.weight.max(1)).then(|| (Arc::clone(&old.pools[i]), Arc::clone(st)))
            });
            let (pool, state) = kept.unwrap_or_else(|| {
                let pool = EndpointPool::new(
                    s.address,
                    s.host.as_deref(),
                    &self.config,
                    self.tls.clone(),
                    self.limits.clone(),
                );
                if let Some((tcp, tls)) = &self.fallback {
                    pool.set_h3_fallback(EndpointPool::new(
                        s.address,
                        s.host.as_deref(),
                        tcp,
                        Some(tls.clone()),
                        self.limits.clone(),
                    ));
                }
                let state = Arc::new(EndpointState::new(s.weight));
                fresh.push((Arc::clone(&pool), Arc::clone(&state)));
                (pool, state)
            });
            pools.push(pool);
            states.push(state);
        }
        self.set
            .store(Arc::new(EndpointSet::new(self, pools, states)));
        self.set_changes.send_replace(());
        if let Some(hc) = &self.config.health_check {
            for (pool, state) in fresh {
                crate::health::spawn(self, pool, state, hc);
            }
        }
        !same
    }

    /// Changes whenever a new endpoint set goes in force.
    pub(crate) fn watch_endpoints(&self) -> tokio::sync::watch::Receiver<()> {
        self.set_changes.subscribe()
    }

    /// Whether `pool` is still one of the cluster's endpoints.
    pub(crate) fn has_endpoint(&self, pool: &Arc<EndpointPool>) -> bool {
        self.set.load().pools.iter().any(|p| Arc::ptr_eq(p, pool))
    }

    /// The PROXY protocol version sent to this cluster's endpoints, if any.
    pub fn proxy_protocol(&self) -> Option<pylon_config::model::ProxyProtocolVersion> {
        self.config.proxy_protocol
    }

    /// The time allowed for one DNS resolution.
    pub fn dns_timeout(&self) -> Duration {
        self.config.dns.timeout
    }

    /// Waits until the first DNS resolution round is done (or `limit` passes).
    pub async fn wait_dns_ready(&self, limit: Duration) -> bool {
        let mut rx = self.dns_ready.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|ready| *ready))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The endpoint for the next request, counted in flight until the lease drops.
    pub fn pick(&self, key: Option<u64>) -> Option<EndpointLease> {
        self.pick_excluding(&self.current_endpoints(), key, &[])
    }

    /// A lease on a given endpoint of `set` (a sticky session's), if it is in rotation.
    pub fn lease_for(
        self: &Arc<Self>,
        set: &Arc<EndpointSet>,
        index: usize,
    ) -> Option<EndpointLease> {
        if !set.state.is_available(index) {
            return None;
        }
        set.pools.get(index)?;
        set.state.begin(index);
        Some(EndpointLease {
            set: Arc::clone(set),
            index,
            latency: None,
        })
    }

    /// Like [`pick`](Self::pick), from `set`, avoiding the endpoints at the addresses in
    /// `tried` when another is available (retries go elsewhere).
    pub fn pick_excluding(
        &self,
        set: &Arc<EndpointSet>,
        key: Option<u64>,
        tried: &[SocketAddr],
    ) -> Option<EndpointLease> {
        if self.panic_threshold > 0 {
            set.state.update_panic(self.panic_threshold);
        }
        let mut index = set.balancer.pick(&set.state, key)?;
        if !tried.is_empty() {
            for _ in 0..set.len() {
                if !tried.contains(&set.pools.get(index)?.address) {
                    break;
                }
                index = set.balancer.pick(&set.state, None)?;
            }
        }
        // Slow start: an endpoint just back takes a request only with the probability
        // of its ramp; otherwise the balancer picks again (a few times at most).
        if let Some(slow_start) = &self.slow_start {
            index = slow_start.pick(
                &set.state,
                index,
                set.state.now_ns(),
                pylon_lb::random_u64,
                || set.balancer.pick(&set.state, None),
            )?;
        }
        set.pools.get(index)?;
        set.state.begin(index);
        Some(EndpointLease {
            set: Arc::clone(set),
            index,
            latency: None,
        })
    }
}

impl ClusterRuntime {
    /// Counts a request in flight (retry budget, circuit breaker); `None` when the
    /// cluster is at `max_requests`.
    pub fn request_started(&self) -> Option<RequestGuard<'_>> {
        self.budget.request_started()
    }

    /// Upstream connections open now (all endpoints).
    pub fn open_connections(&self) -> u64 {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// Requests waiting for an upstream connection to open.
    pub fn pending_requests(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Whether requests are counted in flight at all (retries or a request limit).
    pub fn counts_requests(&self) -> bool {
        self.budget.counts_requests()
    }

    /// A retry slot, if the budget allows one (a request holds one across all its
    /// retries): requests retrying at once stay within
    /// `budget_percent` of the requests in flight, or `budget_min_concurrent`.
    pub fn try_retry(&self) -> Option<RetryGuard<'_>> {
        self.budget.try_retry()
    }

    /// Retries refused by the budget so far.
    pub fn retry_budget_exhausted(&self) -> u64 {
        self.budget.retry_budget_exhausted()
    }

    /// Requests refused by the circuit breaker (`max_requests`) so far.
    pub fn overloaded(&self) -> u64 {
        self.budget.overloaded()
    }
}

/// Closes idle upstream connections past their idle timeout (HTTP/1.1 ones, and HTTP/2
/// ones without a stream, extra connections included) and closed ones; ends with the
/// cluster.
fn spawn_sweeper(cluster: Weak<ClusterRuntime>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(c) = cluster.upgrade() else { return };
            for e in &c.endpoints().pools {
                e.sweep();
            }
        }
    });
}
