//! Labelled statistics kept on the request path: per listener (connections, requests,
//! tunnels, bytes), per route (responses by status class, latency) and per cluster
//! (upstream latency). Atomics updated without locks, those counted on every request
//! or connection sharded by thread (`observe::shard`); the handles live in a
//! registry keyed by name, so a reload that keeps a listener, route or cluster keeps
//! its counters. `exposition/` renders them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::shard::Sharded;
use crate::lock;

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const BOUNDS_NS: [u64; 14] = {
    let mut out = [0u64; 14];
    let mut i = 0;
    while i < 14 {
        out[i] = (LATENCY_BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// A latency histogram with fixed buckets, lock-free: one count per bound, the
/// overflow bucket (+Inf), the sum in nanoseconds and the count.
#[derive(Debug, Default)]
pub struct Histogram(Sharded<17>);

/// Where a [`Histogram`] keeps its sum and its count.
const SUM: usize = 15;
const COUNT: usize = 16;

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.iter().position(|&b| ns <= b).unwrap_or(14);
        self.0.add_each(&[(i, 1), (SUM, ns), (COUNT, 1)]);
    }

    /// Sum in seconds, count, and per-bucket (not cumulative) counts with their bounds
    /// (the last one `f64::MAX`, written `+Inf`).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets = (0..15)
            .map(|i| {
                let bound = LATENCY_BOUNDS.get(i).copied().unwrap_or(f64::MAX);
                (bound, self.0.get(i))
            })
            .collect();
        (self.0.get(SUM) as f64 / 1e9, self.0.get(COUNT), buckets)
    }
}

/// One listener's traffic.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections open per client IP, kept only for listeners with
    /// `max_connections_per_ip`.
    pub per_ip: Mutex<std::collections::HashMap<std::net::IpAddr, u64>>,
    /// Connections and requests, open and in all, and bytes: counted once or more per
    /// connection and request, sharded by thread (indices [`CONNECTIONS_ACTIVE`]...).
    counts: Sharded<5>,
    pub tunnels_active: AtomicU64,
    /// TLS (and QUIC) handshakes completed, by version: TLS 1.2, TLS 1.3.
    pub tls_versions: [AtomicU64; 2],
}

/// Where [`ListenerStats`] keeps each count.
const CONNECTIONS_ACTIVE: usize = 0;
const CONNECTIONS: usize = 1;
const REQUESTS_ACTIVE: usize = 2;
const RECEIVED_BYTES: usize = 3;
const SENT_BYTES: usize = 4;

impl ListenerStats {
    /// A client connection opened (counted active until [`Self::connection_closed`]).
    pub fn connection_opened(&self) {
        self.counts
            .add_each(&[(CONNECTIONS_ACTIVE, 1), (CONNECTIONS, 1)]);
    }

    pub fn connection_closed(&self) {
        self.counts.sub(CONNECTIONS_ACTIVE, 1);
    }

    pub fn connections_active(&self) -> u64 {
        self.counts.gauge(CONNECTIONS_ACTIVE)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counts.get(CONNECTIONS)
    }

    /// A request started (counted active until [`Self::request_ended`]).
    pub fn request_started(&self) {
        self.counts.add(REQUESTS_ACTIVE, 1);
    }

    pub fn request_ended(&self) {
        self.counts.sub(REQUESTS_ACTIVE, 1);
    }

    pub fn requests_active(&self) -> u64 {
        self.counts.gauge(REQUESTS_ACTIVE)
    }

    /// Bytes read from a client.
    pub fn received(&self, n: u64) {
        self.counts.add(RECEIVED_BYTES, n);
    }

    /// Bytes written to a client.
    pub fn sent(&self, n: u64) {
        self.counts.add(SENT_BYTES, n);
    }

    pub fn received_bytes(&self) -> u64 {
        self.counts.get(RECEIVED_BYTES)
    }

    pub fn sent_bytes(&self) -> u64 {
        self.counts.get(SENT_BYTES)
    }

    /// A handshake completed with this protocol version.
    pub fn tls_handshake(&self, version: Option<rustls::ProtocolVersion>) {
        let i = usize::from(version != Some(rustls::ProtocolVersion::TLSv1_2));
        self.tls_versions[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// One route's answers: by status class (index 1..=5; 0 for anything else) and the
/// time from the request to the end of its response body.
#[derive(Debug)]
pub struct RouteStats {
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub cluster: Arc<str>,
    responses: Sharded<6>,
    pub latency: Histogram,
    /// The TCP connect of new upstream connections.
    pub upstream_connect: Histogram,
    /// From a try's start to the upstream's response head.
    pub upstream_first_byte: Histogram,
    /// Responses whose body did not reach the client whole (upstream died mid-body,
    /// client went away, upload cut).
    pub incomplete: AtomicU64,
}

impl RouteStats {
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100);
        let i = if (1..=5).contains(&class) { class } else { 0 };
        self.responses.add(i, 1);
    }

    /// Responses of class `class` (1 to 5; 0 for other statuses).
    pub fn responses(&self, class: usize) -> u64 {
        self.responses.get(class)
    }
}

/// One cluster's upstream latency (to the response head), kept across reloads.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub upstream_latency: Histogram,
}

/// The handles by name. Locked only when a runtime is built and when metrics are
/// scraped, never on the request path.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    listeners: Mutex<BTreeMap<String, Arc<ListenerStats>>>,
    routes: Mutex<BTreeMap<(String, String, String), Arc<RouteStats>>>,
    clusters: Mutex<BTreeMap<String, Arc<ClusterStats>>>,
}

impl StatsRegistry {
    pub fn listener(&self, name: &str) -> Arc<ListenerStats> {
        Arc::clone(lock(&self.listeners).entry(name.to_owned()).or_default())
    }

    /// The stats of a route; `route` and `cluster` are empty for requests no route took.
    pub fn route(&self, listener: &str, route: &str, cluster: &str) -> Arc<RouteStats> {
        let key = (listener.to_owned(), route.to_owned(), cluster.to_owned());
        Arc::clone(lock(&self.routes).entry(key).or_insert_with(|| {
            Arc::new(RouteStats {
                listener: Arc::from(listener),
                route: Arc::from(route),
                cluster: Arc::from(cluster),
                responses: Default::default(),
                latency: Histogram::default(),
                upstream_connect: Histogram::default(),
                upstream_first_byte: Histogram::default(),
                incomplete: AtomicU64::new(0),
            })
        }))
    }

    pub fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        Arc::clone(lock(&self.clusters).entry(name.to_owned()).or_default())
    }

    pub fn listeners(&self) -> Vec<(String, Arc<ListenerStats>)> {
        lock(&self.listeners)
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }

    pub fn routes(&self) -> Vec<Arc<RouteStats>> {
        lock(&self.routes).values().cloned().collect()
    }

    pub fn clusters(&self) -> Vec<(String, Arc<ClusterStats>)> {
        lock(&self.clusters)
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }

    /// Forgets the stats of listeners, routes and clusters no longer configured
    /// (after a reload), so their series leave the exposition.
    pub fn retain(
        &self,
        listeners: &dyn Fn(&str) -> bool,
        routes: &dyn Fn(&str, &str, &str) -> bool,
        clusters: &dyn Fn(&str) -> bool,
    ) {
        lock(&self.listeners).retain(|k, _| listeners(k));
        lock(&self.routes).retain(|(l, r, c), _| routes(l, r, c));
        lock(&self.clusters).retain(|k, _| clusters(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_hold_their_samples() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 60.0033).abs() < 1e-6, "{sum}");
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[3], (0.005, 1));
        assert_eq!(buckets[14], (f64::MAX, 1));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 3);
    }

    #[test]
    fn handles_are_shared_by_name() {
        let r = StatsRegistry::default();
        let a = r.route("front", "app", "demo");
        a.response(204);
        assert_eq!(r.route("front", "app", "demo").responses(2), 1);
        r.retain(&|_| true, &|_, route, _| route != "app", &|_| true);
        assert_eq!(r.route("front", "app", "demo").responses(2), 0);
    }
}
