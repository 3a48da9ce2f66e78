//! Upstream clusters at run time: endpoints, their connection pools and the balancer.

mod pool;

pub use pool::{EndpointPool, Pooled, UpstreamError};

use std::sync::{Arc, Weak};
use std::time::Duration;

use pylon_config::ConfigError;
use pylon_config::model::{self, HostHeader, UpstreamProtocol};

use crate::tls::upstream::TlsConnector;
use pylon_lb::{Balancer, RoundRobin};

/// A cluster ready to take requests.
pub struct ClusterRuntime {
    pub name: Arc<str>,
    pub protocol: UpstreamProtocol,
    pub host_header: HostHeader,
    pub response_timeout: Duration,
    pub endpoints: Vec<Arc<EndpointPool>>,
    balancer: Box<dyn Balancer>,
}

impl ClusterRuntime {
    /// Builds the cluster (reading its TLS files) and starts its idle-connection sweeper.
    pub fn new(c: &model::Cluster) -> Result<Arc<Self>, ConfigError> {
        let tls = match &c.tls {
            Some(t) => Some(TlsConnector::new(t, c.protocol)?),
            None => None,
        };
        let endpoints: Vec<Arc<EndpointPool>> = c
            .endpoints
            .iter()
            .map(|e| Arc::new(EndpointPool::new(e.address, c, tls.clone())))
            .collect();
        let weights: Vec<u32> = c.endpoints.iter().map(|e| e.weight).collect();
        let cluster = Arc::new(ClusterRuntime {
            name: Arc::from(c.name.as_str()),
            protocol: c.protocol,
            host_header: c.host_header,
            response_timeout: c.response_timeout,
            endpoints,
            balancer: Box::new(RoundRobin::new(&weights)),
        });
        spawn_sweeper(Arc::downgrade(&cluster), c.pool.idle_timeout);
        Ok(cluster)
    }

    /// The endpoint for the next request.
    pub fn pick(&self) -> Option<&Arc<EndpointPool>> {
        self.balancer.pick().and_then(|i| self.endpoints.get(i))
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
