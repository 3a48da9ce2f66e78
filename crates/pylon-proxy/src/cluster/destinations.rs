//! Connection pools for destinations that are no cluster's endpoints: the forward
//! proxy's absolute-form requests. One [`EndpointPool`] per destination address, built
//! by the same code as a cluster's (HTTP/1.1, connect and response timeouts, idle
//! connections reused), kept while it holds connections and swept when idle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pylon_config::model::{self, HashKey, HostHeader, LbPolicy, UpstreamProtocol};

use super::pool::{ConnectionLimits, EndpointPool};
use crate::lock;

/// Destination pools kept at most before unused ones are dropped on the next new one
/// (pools in use are never dropped).
const MAX_DESTINATIONS: usize = 1024;

pub struct DestinationPools {
    /// The settings every destination's pool is built from.
    template: model::Cluster,
    pools: Mutex<HashMap<SocketAddr, Arc<EndpointPool>>>,
}

impl DestinationPools {
    /// Pools with these timeouts; idle connections are swept for as long as the
    /// returned value lives. Needs a tokio runtime.
    pub fn new(
        name: &str,
        connect_timeout: Duration,
        response_timeout: Duration,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        let template = model::Cluster {
            name: name.to_owned(),
            endpoints: Vec::new(),
            protocol: UpstreamProtocol::Http1,
            lb: LbPolicy::RoundRobin,
            hash_key: HashKey::ClientIp,
            connect_timeout,
            response_timeout,
            host_header: HostHeader::Preserve,
            pool: model::Pool {
                idle_timeout,
                ..model::Pool::default()
            },
            tls: None,
            health_check: None,
            outlier_detection: None,
            retry: None,
            circuit_breaker: model::CircuitBreaker::default(),
            slow_start: None,
            sticky: None,
            panic_threshold: 0,
            dns: model::Dns::default(),
            proxy_protocol: None,
            h3_fallback: None,
            discovery: None,
        };
        let pools = Arc::new(DestinationPools {
            template,
            pools: Mutex::new(HashMap::new()),
        });
        spawn_sweeper(Arc::downgrade(&pools), idle_timeout);
        pools
    }

    /// The pool for `addr`, made on first use.
    pub fn pool(&self, addr: SocketAddr) -> Arc<EndpointPool> {
        let mut pools = lock(&self.pools);
        if let Some(p) = pools.get(&addr) {
            return Arc::clone(p);
        }
        if pools.len() >= MAX_DESTINATIONS {
            pools.retain(|_, p| in_use(p));
        }
        let p = EndpointPool::new(
            addr,
            None,
            &self.template,
            None,
            ConnectionLimits::default(),
        );
        pools.insert(addr, Arc::clone(&p));
        p
    }

    fn sweep(&self) {
        let mut pools = lock(&self.pools);
        for p in pools.values() {
            p.sweep();
        }
        pools.retain(|_, p| in_use(p));
    }
}

/// A pool someone holds (a request in flight) or with idle connections.
fn in_use(p: &Arc<EndpointPool>) -> bool {
    Arc::strong_count(p) > 1 || p.idle_count() > 0
}

fn spawn_sweeper(pools: Weak<DestinationPools>, idle_timeout: Duration) {
    let every = (idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(p) = pools.upgrade() else { return };
            p.sweep();
        }
    });
}
