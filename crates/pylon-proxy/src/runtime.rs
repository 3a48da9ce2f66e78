//! The runtime snapshot built from a validated config: listeners with their routers,
//! clusters with their pools. Swapped atomically on reload; every request reads one
//! snapshot for its whole life.

use std::collections::HashMap;
use std::sync::Arc;

use pylon_config::model::{self, Action};
use pylon_config::{Config, ConfigError};

use crate::http::router::{RouteRuntime, Router};
use crate::http::upstream::ClusterRuntime;

pub struct ListenerRuntime {
    pub config: model::Listener,
    pub router: Router,
    /// The request-id header, when request ids are on.
    pub request_id: Option<http::HeaderName>,
    /// Layer 4 settings, shared by this listener's connections.
    pub l4: Option<Arc<model::L4Listener>>,
    /// Incoming PROXY protocol settings.
    pub proxy_in: Option<Arc<model::ProxyProtocolIn>>,
    /// Forward proxy, when this listener is one.
    pub forward: Option<crate::http::forward::ForwardRuntime>,
}

pub struct Runtime {
    listeners: HashMap<String, Arc<ListenerRuntime>>,
    pub clusters: HashMap<String, Arc<ClusterRuntime>>,
    /// Whether any cluster sends PROXY headers (which need each connection's local
    /// address).
    pub sends_proxy_protocol: bool,
}

impl Runtime {
    /// Builds the runtime; needs a tokio runtime (cluster sweepers are spawned). Fails
    /// with every TLS file problem of the clusters.
    pub fn build(config: &Config) -> Result<Runtime, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut clusters: HashMap<String, Arc<ClusterRuntime>> = HashMap::new();
        for c in &config.clusters {
            match ClusterRuntime::new(c) {
                Ok(rt) => {
                    clusters.insert(c.name.clone(), rt);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let routes = config
                    .routes_for(&l.name)
                    .map(|r| RouteRuntime {
                        name: Arc::from(r.name.as_str()),
                        cluster: match &r.action {
                            Action::Proxy(p) => clusters.get(&p.cluster).cloned(),
                            _ => None,
                        },
                        host_rewrite: match &r.action {
                            Action::Proxy(p) => p
                                .host_rewrite
                                .as_deref()
                                .and_then(|h| http::HeaderValue::from_str(h).ok()),
                            _ => None,
                        },
                        route: r.clone(),
                    })
                    .collect();
                let lr = ListenerRuntime {
                    l4: l.l4.clone().map(Arc::new),
                    proxy_in: l.proxy_protocol.clone().map(Arc::new),
                    forward: l
                        .forward
                        .clone()
                        .map(crate::http::forward::ForwardRuntime::new),
                    config: l.clone(),
                    router: Router::new(routes),
                    request_id: l
                        .headers
                        .request_id
                        .as_deref()
                        .and_then(|n| http::HeaderName::from_bytes(n.as_bytes()).ok()),
                };
                (l.name.clone(), Arc::new(lr))
            })
            .collect();
        Ok(Runtime {
            listeners,
            sends_proxy_protocol: config.clusters.iter().any(|c| c.proxy_protocol.is_some()),
            clusters,
        })
    }

    pub fn listener(&self, name: &str) -> Option<Arc<ListenerRuntime>> {
        self.listeners.get(name).cloned()
    }
}
