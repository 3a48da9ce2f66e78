//! Upstream clusters at run time: endpoints, their connection pools and the balancer.

mod pool;
mod sticky;

pub use pool::{EndpointPool, Pooled, UpstreamError};
pub use pylon_lb::hash_key;
pub use sticky::StickyCookie;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use pylon_config::ConfigError;
use pylon_config::model::{self, HostHeader, UpstreamProtocol};

use crate::tls::upstream::TlsConnector;
use pylon_config::model::{CircuitBreaker, HashKey, LbPolicy, Retry};
use pylon_lb::{Algorithm, Balancer, Endpoints, OutlierPolicy};

/// A cluster ready to take requests.
pub struct ClusterRuntime {
    pub name: Arc<str>,
    pub protocol: UpstreamProtocol,
    pub host_header: HostHeader,
    pub response_timeout: Duration,
    pub endpoints: Vec<Arc<EndpointPool>>,
    /// Live state per endpoint (availability, in flight, latency), index-aligned with
    /// `endpoints`.
    pub state: Endpoints,
    balancer: Box<dyn Balancer>,
    /// The hash key, for `ring_hash` and `maglev` clusters.
    pub hash_key: Option<HashKey>,
    /// Endpoint health changes so far (in and out of rotation).
    pub health_changes: AtomicU64,
    /// Passive health checking, when configured.
    outlier: Option<OutlierPolicy>,
    /// Ejections by outlier detection so far.
    pub ejections: AtomicU64,
    pub retry: Option<Retry>,
    /// Requests and retries in flight, for the retry budget.
    active_requests: AtomicU64,
    active_retries: AtomicU64,
    /// Retries sent, and retries refused by the budget, so far.
    pub retries: AtomicU64,
    pub retry_budget_exhausted: AtomicU64,
    pub breaker: CircuitBreaker,
    slow_start: Option<Duration>,
    panic_threshold: u32,
    /// Sticky sessions, and the endpoints' addresses as the cookie names them.
    pub sticky: Option<StickyCookie>,
    pub endpoint_ids: Vec<String>,
    /// Upstream connections open, and requests waiting for one to open (all endpoints).
    pub(crate) open_connections: Arc<AtomicU64>,
    pub(crate) pending: Arc<AtomicU64>,
    /// Requests refused by the circuit breaker so far.
    pub overloaded: AtomicU64,
}

/// A request (or a retry) in flight on a cluster; dropping it ends it.
pub struct ActiveGuard<'a>(&'a AtomicU64);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request's claim on an endpoint: counted in flight until dropped, when the
/// latency to its response head (if any) feeds the endpoint's average.
pub struct EndpointLease {
    cluster: Arc<ClusterRuntime>,
    index: usize,
    latency: Option<Duration>,
}

impl EndpointLease {
    pub fn endpoint(&self) -> &Arc<EndpointPool> {
        &self.cluster.endpoints[self.index]
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn record_latency(&mut self, d: Duration) {
        self.latency = Some(d);
    }

    /// Feeds outlier detection with this request's outcome (`ok` false for a 5xx answer
    /// or an upstream failure).
    pub fn report(&self, ok: bool) {
        let c = &self.cluster;
        let Some(policy) = &c.outlier else { return };
        if let Some(d) = c.state.record_outcome(self.index, ok, policy) {
            c.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                cluster = %c.name,
                endpoint = %c.endpoints[self.index].address,
                ejection = ?d,
                "endpoint ejected after consecutive failures"
            );
        }
    }
}

impl Drop for EndpointLease {
    fn drop(&mut self) {
        self.cluster.state.end(self.index, self.latency);
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

impl ClusterRuntime {
    /// Builds the cluster (reading its TLS files) and starts its idle-connection sweeper.
    pub fn new(c: &model::Cluster) -> Result<Arc<Self>, ConfigError> {
        let tls = match &c.tls {
            Some(t) => Some(TlsConnector::new(t, c.protocol)?),
            None => None,
        };
        let open_connections = Arc::new(AtomicU64::new(0));
        let pending = Arc::new(AtomicU64::new(0));
        let limits = pool::ConnectionLimits {
            open: Arc::clone(&open_connections),
            max_open: c.circuit_breaker.max_connections,
            pending: Arc::clone(&pending),
            max_pending: c.circuit_breaker.max_pending_requests,
        };
        let endpoints: Vec<Arc<EndpointPool>> = c
            .endpoints
            .iter()
            .map(|e| Arc::new(EndpointPool::new(e.address, c, tls.clone(), limits.clone())))
            .collect();
        let weights: Vec<u32> = c.endpoints.iter().map(|e| e.weight).collect();
        let ids: Vec<String> = c.endpoints.iter().map(|e| e.address.to_string()).collect();
        let cluster = Arc::new(ClusterRuntime {
            name: Arc::from(c.name.as_str()),
            protocol: c.protocol,
            host_header: c.host_header,
            response_timeout: c.response_timeout,
            endpoints,
            state: Endpoints::new(&weights),
            balancer: algorithm(c.lb).build(&weights, &ids),
            hash_key: c.lb.uses_key().then(|| c.hash_key.clone()),
            health_changes: AtomicU64::new(0),
            outlier: c.outlier_detection.as_ref().map(|o| OutlierPolicy {
                consecutive_failures: o.consecutive_failures,
                base_ejection: o.base_ejection_time,
                max_ejection_percent: o.max_ejection_percent,
            }),
            ejections: AtomicU64::new(0),
            retry: c.retry.clone(),
            active_requests: AtomicU64::new(0),
            active_retries: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            retry_budget_exhausted: AtomicU64::new(0),
            breaker: c.circuit_breaker.clone(),
            slow_start: c.slow_start,
            panic_threshold: c.panic_threshold,
            sticky: c.sticky.as_ref().map(StickyCookie::new),
            endpoint_ids: ids.clone(),
            open_connections,
            pending,
            overloaded: AtomicU64::new(0),
        });
        if let Some(hc) = &c.health_check {
            crate::health::spawn(&cluster, hc);
        }
        spawn_sweeper(Arc::downgrade(&cluster), c.pool.idle_timeout);
        Ok(cluster)
    }

    /// The endpoint for the next request, counted in flight until the lease drops.
    pub fn pick(self: &Arc<Self>, key: Option<u64>) -> Option<EndpointLease> {
        self.pick_excluding(key, &[])
    }

    /// A lease on a given endpoint (a sticky session's), if it is in rotation.
    pub fn lease_for(self: &Arc<Self>, index: usize) -> Option<EndpointLease> {
        if !self.state.is_available(index) {
            return None;
        }
        self.endpoints.get(index)?;
        self.state.begin(index);
        Some(EndpointLease {
            cluster: Arc::clone(self),
            index,
            latency: None,
        })
    }

    /// Like [`pick`](Self::pick), avoiding the endpoints in `tried` when another is
    /// available (retries go elsewhere).
    pub fn pick_excluding(
        self: &Arc<Self>,
        key: Option<u64>,
        tried: &[usize],
    ) -> Option<EndpointLease> {
        if self.panic_threshold > 0 {
            self.state.update_panic(self.panic_threshold);
        }
        let mut index = self.balancer.pick(&self.state, key)?;
        for _ in 0..self.endpoints.len() {
            if !tried.contains(&index) {
                break;
            }
            index = self.balancer.pick(&self.state, None)?;
        }
        // Slow start: an endpoint just back takes a request only with the probability
        // of its ramp; otherwise the balancer picks again (a few times at most).
        if let Some(window) = self.slow_start {
            for _ in 0..4 {
                let f = self.state.slow_start_factor(index, window);
                if f >= 1.0 || (pylon_lb::random_u64() % 10_000) as f64 / 10_000.0 < f {
                    break;
                }
                index = self.balancer.pick(&self.state, None)?;
            }
        }
        self.endpoints.get(index)?;
        self.state.begin(index);
        Some(EndpointLease {
            cluster: Arc::clone(self),
            index,
            latency: None,
        })
    }
}

impl ClusterRuntime {
    /// Counts a request in flight (retry budget, circuit breaker); `None` when the
    /// cluster is at `max_requests`.
    pub fn request_started(&self) -> Option<ActiveGuard<'_>> {
        let before = self.active_requests.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveGuard(&self.active_requests);
        if self.breaker.max_requests.is_some_and(|max| before >= max) {
            self.overloaded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(guard)
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
        self.retry.is_some() || self.breaker.max_requests.is_some()
    }

    /// A retry slot, if the budget allows one (a request holds one across all its
    /// retries): requests retrying at once stay within
    /// `budget_percent` of the requests in flight, or `budget_min_concurrent`.
    pub fn try_retry(&self) -> Option<ActiveGuard<'_>> {
        let policy = self.retry.as_ref()?;
        let active = self.active_requests.load(Ordering::Relaxed);
        let allowed = (active * u64::from(policy.budget_percent) / 100)
            .max(u64::from(policy.budget_min_concurrent));
        let allowed = self
            .breaker
            .max_retries
            .map_or(allowed, |max| allowed.min(max));
        let retries = self.active_retries.fetch_add(1, Ordering::Relaxed);
        if retries >= allowed {
            self.active_retries.fetch_sub(1, Ordering::Relaxed);
            self.retry_budget_exhausted.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(ActiveGuard(&self.active_retries))
    }
}

/// Closes idle upstream connections past their idle timeout; ends with the cluster.
fn spawn_sweeper(cluster: Weak<ClusterRuntime>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(c) = cluster.upgrade() else { return };
            for e in &c.endpoints {
                e.sweep();
            }
        }
    });
}
