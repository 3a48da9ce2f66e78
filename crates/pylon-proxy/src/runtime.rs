//! The runtime snapshot built from a validated config: listeners with their routers,
//! clusters with their pools. Swapped atomically on reload; every request reads one
//! snapshot for its whole life. A new snapshot built over the previous one follows the
//! reload plan ([`pylon_config::diff`]): it keeps the clusters the plan keeps (pools,
//! health, ejections) and the lives of the routes and listeners it keeps, and hands
//! back the lives the plan retires.

use std::collections::HashMap;
use std::sync::Arc;

use pylon_config::diff::{LifeKey, ReloadPlan, RouteKey};
use pylon_config::model::{self, Action};
use pylon_config::{Config, ConfigError};

use crate::cluster::ClusterRuntime;
use crate::http::router::{RouteRuntime, Router};
use crate::life::Life;
use crate::observe::StatsRegistry;
use crate::observe::stats::{ListenerStats, RouteStats};

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
    /// Traffic counters, kept across reloads.
    pub stats: Arc<ListenerStats>,
    /// Where requests that no route took are counted.
    pub unrouted: Arc<RouteStats>,
    /// The listener's own life (Layer 4 sessions, forward-proxy tunnels).
    pub life: Life,
    /// A route of this listener has `abort_on_client_close`: connections keep a
    /// handle on their socket to watch for the client's FIN.
    pub watches_client_close: bool,
}

pub struct Runtime {
    /// Looked up by name for every request: hashed with FxHash (a listener's name is
    /// configuration, not something a client sends), about 200 instructions fewer
    /// than SipHash.
    listeners: HashMap<String, Arc<ListenerRuntime>, rustc_hash::FxBuildHasher>,
    pub clusters: HashMap<String, Arc<ClusterRuntime>>,
    /// Cache zones, kept across reloads that leave their settings alone.
    pub caches: crate::http::filters::cache::Zones,
    /// Rate-limit policies, for their counters.
    pub(crate) rate_limits: crate::http::filters::rate_limit::Limiters,
    /// Auth policies, for their counters.
    pub(crate) auth: crate::http::filters::auth::Policies,
    /// Split routes' weights and counters, by route name (the admin API changes them).
    pub(crate) splits: crate::http::filters::split::Splits,
    /// Mirroring routes' counters, by route name.
    pub(crate) mirrors: crate::http::filters::mirror::Mirrors,
    /// Whether any cluster sends PROXY headers (which need each connection's local
    /// address).
    pub sends_proxy_protocol: bool,
    /// Whether TLS connections keep what their handshake negotiated: for clusters that
    /// send it in PROXY v2 headers, and for templates that name it (`{tls_version}`).
    pub keeps_tls_info: bool,
    /// OpenTelemetry traces (`[tracing]`): set by the reload that builds the runtime,
    /// kept from the previous runtime when its settings did not change.
    pub tracer: Option<Arc<crate::observe::trace::Tracer>>,
    /// The validated config this runtime was built from, and its hash.
    pub config: Arc<Config>,
    pub config_hash: String,
}

/// What a new runtime replaced: lives to retire once it is in force.
#[derive(Default)]
pub struct Retired {
    pub lives: Vec<Life>,
    /// Routes and listeners whose lives end, for the log.
    pub names: Vec<String>,
}

/// The first 16 hex digits of the SHA-256 of the config's canonical JSON form.
pub fn config_hash(config: &Config) -> String {
    let json = serde_json::to_vec(config).unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &json);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Runtime {
    /// A runtime with nothing in it (before the first config is in force).
    pub fn empty() -> Runtime {
        let config = Config::empty();
        Runtime {
            listeners: HashMap::default(),
            clusters: HashMap::new(),
            caches: HashMap::new(),
            rate_limits: HashMap::new(),
            auth: HashMap::new(),
            splits: HashMap::new(),
            mirrors: HashMap::new(),
            sends_proxy_protocol: false,
            keeps_tls_info: false,
            tracer: None,
            config_hash: config_hash(&config),
            config: Arc::new(config),
        }
    }

    /// Builds the runtime; needs a tokio runtime (cluster sweepers are spawned). Fails
    /// with every TLS file problem of the clusters. `plan` is the diff from the
    /// `previous` runtime's config (or from an empty one) to `config`: over `previous`,
    /// the clusters it keeps are kept as they are, and the routes and listeners it keeps
    /// keep their lives; [`Retired`] holds the lives it retires.
    pub fn build(
        config: &Config,
        stats: &StatsRegistry,
        previous: Option<&Runtime>,
        plan: &ReloadPlan,
    ) -> Result<(Runtime, Retired), Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut clusters: HashMap<String, Arc<ClusterRuntime>> = HashMap::new();
        for c in &config.clusters {
            let kept = previous
                .filter(|_| plan.clusters.is_kept(&c.name))
                .and_then(|p| p.clusters.get(&c.name));
            if let Some(old) = kept {
                clusters.insert(c.name.clone(), Arc::clone(old));
                continue;
            }
            match ClusterRuntime::new(c, stats.cluster(&c.name)) {
                Ok(rt) => {
                    clusters.insert(c.name.clone(), rt);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let caches = crate::http::filters::cache::zones(config, previous.map(|p| &p.caches))?;
        let auth = crate::http::filters::auth::policies(config, &clusters)?;
        let rate_limits = crate::http::filters::rate_limit::limiters(config);
        let splits = crate::http::filters::split::splits(config, &clusters);
        let mirrors = crate::http::filters::mirror::mirrors(config, &clusters);
        let old_listener = |name: &str| previous.and_then(|p| p.listener(name));
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let old = old_listener(&l.name);
                let routes = config
                    .routes_for(&l.name)
                    .map(|r| {
                        let cluster_name = match &r.action {
                            Action::Proxy(p) => p.cluster.as_str(),
                            _ => "",
                        };
                        let life = old
                            .as_ref()
                            .filter(|_| plan.routes.is_kept(&RouteKey::new(&l.name, &r.name)))
                            .and_then(|o| o.router.route_named(&r.name))
                            .map_or_else(Life::default, |o| o.life.clone());
                        RouteRuntime {
                            claim_policies: crate::http::filters::auth::claim_policies(r, &auth),
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
                            stats: stats.route(&l.name, &r.name, cluster_name),
                            life,
                            filters: crate::http::filters::FilterChain::for_route(
                                &crate::http::filters::FilterSite {
                                    listener: l,
                                    route: r,
                                    caches: &caches,
                                    auth: &auth,
                                    rate_limits: &rate_limits,
                                    splits: &splits,
                                    mirrors: &mirrors,
                                    tracing: config.tracing.is_some(),
                                },
                            ),
                            route: r.clone(),
                        }
                    })
                    .collect();
                let life = old
                    .as_ref()
                    .filter(|_| plan.listeners.is_kept(&l.name))
                    .map_or_else(Life::default, |o| o.life.clone());
                let watches_client_close = config
                    .routes_for(&l.name)
                    .any(|r| matches!(&r.action, Action::Proxy(p) if p.abort_on_client_close));
                let lr = ListenerRuntime {
                    watches_client_close,
                    stats: stats.listener(&l.name),
                    unrouted: stats.route(&l.name, "", ""),
                    life,
                    l4: l.l4.clone().map(Arc::new),
                    proxy_in: l.proxy_protocol.clone().map(Arc::new),
                    forward: l.forward.clone().map(|f| {
                        let filters = crate::http::filters::FilterChain::for_forward(
                            &f,
                            &caches,
                            config.tracing.is_some(),
                        );
                        crate::http::forward::ForwardRuntime::new(f, filters)
                    }),
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
        let sends_proxy_protocol = config.clusters.iter().any(|c| c.proxy_protocol.is_some());
        let runtime = Runtime {
            listeners,
            sends_proxy_protocol,
            keeps_tls_info: sends_proxy_protocol
                || crate::http::filters::rules::needs_tls_info(config),
            clusters,
            caches,
            rate_limits,
            auth,
            splits,
            mirrors,
            config: Arc::new(config.clone()),
            config_hash: config_hash(config),
            tracer: None,
        };
        let retired = previous.map(|p| p.retired(plan)).unwrap_or_default();
        Ok((runtime, retired))
    }

    /// The lives of this (previous) runtime that `plan` retires.
    fn retired(&self, plan: &ReloadPlan) -> Retired {
        let mut out = Retired::default();
        for key in &plan.retired {
            let life = match key {
                LifeKey::Listener(name) => self.listeners.get(name).map(|l| &l.life),
                LifeKey::Route(r) => self
                    .listeners
                    .get(&r.listener)
                    .and_then(|l| l.router.route_named(&r.route))
                    .map(|r| &r.life),
            };
            if let Some(life) = life {
                out.lives.push(life.clone());
                out.names.push(key.to_string());
            }
        }
        out
    }

    /// Every listener, by name.
    pub fn listeners(&self) -> impl Iterator<Item = (&String, &Arc<ListenerRuntime>)> {
        self.listeners.iter()
    }

    pub fn listener(&self, name: &str) -> Option<Arc<ListenerRuntime>> {
        self.listener_ref(name).cloned()
    }

    /// [`Runtime::listener`] borrowed, for a request that holds the runtime anyway (a
    /// clone and its drop are two atomic read-modify-writes).
    pub fn listener_ref(&self, name: &str) -> Option<&Arc<ListenerRuntime>> {
        self.listeners.get(name)
    }
}
