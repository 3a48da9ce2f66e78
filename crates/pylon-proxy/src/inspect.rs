//! What a running [`Proxy`] shows of itself beyond its admin API: listener and admin
//! addresses, metrics, the runtime in force, clusters, endpoints and pools, open
//! connections. The test suite (and embedders) read these; the request path never
//! does.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::Proxy;
use crate::observe::Metrics;
use crate::runtime::Runtime;

impl Proxy {
    /// The first address of the named listener.
    pub fn addr(&self, listener: &str) -> Option<SocketAddr> {
        self.bound
            .load()
            .iter()
            .find(|b| b.listener == listener)
            .map(|b| b.addr)
    }

    /// The first HTTP/3 (UDP) address of the named https listener.
    pub fn h3_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.bound
            .load()
            .iter()
            .find(|b| b.listener == listener && b.scheme == "h3")
            .map(|b| b.addr)
    }

    /// Where the admin API listens, when it is on.
    pub async fn admin_addr(&self) -> Option<SocketAddr> {
        self.sockets.lock().await.admin.as_ref().map(|a| a.local)
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// The runtime in force.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Idle HTTP/1.1 upstream connections held for a cluster, summed over endpoints.
    pub fn idle_upstream_connections(&self, cluster: &str) -> usize {
        self.runtime.load().clusters.get(cluster).map_or(0, |c| {
            c.endpoints().pools.iter().map(|e| e.idle_count()).sum()
        })
    }

    /// The named cluster's runtime (counters, endpoint state), as in the current config.
    pub fn cluster(&self, name: &str) -> Option<Arc<crate::cluster::ClusterRuntime>> {
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
}
