//! What a reload changes, worked out from the two configurations alone.
//!
//! [`diff`] says, by name, which listeners, addresses, routes, clusters and listener
//! certificates are kept, changed, added or removed, and whose long-lived connections
//! must end. Plain data: the engine executes the [`ReloadPlan`] (it finds the sockets,
//! pools and acceptors to keep). A first start is the plan from [`Config::empty`].

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use crate::model::{Config, Listener, Route};

/// What becomes of one listener, address, route, cluster or certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// In both configurations, identical: kept as it is.
    Kept,
    /// In both, with other settings: an address is restarted (same socket, a new
    /// accept loop), a cluster or a certificate is rebuilt, a route or listener gets a
    /// new life (the old one's long-lived connections end).
    Changed,
    /// Only in the new configuration.
    Added,
    /// Only in the old configuration.
    Removed,
}

impl Change {
    /// `None`: not there before; `Some(same)`: there, identical or not.
    fn of(same: Option<bool>) -> Change {
        match same {
            None => Change::Added,
            Some(true) => Change::Kept,
            Some(false) => Change::Changed,
        }
    }
}

/// What becomes of each item of one kind, by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<K: Ord>(BTreeMap<K, Change>);

impl<K: Ord> Default for Changes<K> {
    fn default() -> Self {
        Changes(BTreeMap::new())
    }
}

impl<K: Ord> Changes<K> {
    /// What becomes of `key`; `None` when it is in neither configuration.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<Change>
    where
        K: Borrow<Q>,
    {
        self.0.get(key).copied()
    }

    /// Whether `key` is in both configurations, identical.
    pub fn is_kept<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.get(key) == Some(Change::Kept)
    }

    /// The keys with this change, in key order.
    pub fn keys(&self, change: Change) -> Vec<&K> {
        self.iter()
            .filter(|(_, c)| *c == change)
            .map(|(k, _)| k)
            .collect()
    }

    /// Every key with its change, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, Change)> {
        self.0.iter().map(|(k, c)| (k, *c))
    }

    /// Nothing changed, added or removed.
    pub fn all_kept(&self) -> bool {
        self.0.values().all(|c| *c == Change::Kept)
    }

    fn set(&mut self, key: K, change: Change) {
        self.0.insert(key, change);
    }
}

/// One address of a listener.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BindKey {
    pub listener: String,
    pub addr: SocketAddr,
    /// A UDP socket (TCP otherwise): one cannot serve as the other.
    pub udp: bool,
}

impl BindKey {
    pub fn new(listener: &Listener, addr: SocketAddr) -> BindKey {
        BindKey {
            listener: listener.name.clone(),
            addr,
            udp: listener.main_is_udp(),
        }
    }

    /// The UDP socket beside a listener's TCP one on `addr` (an https listener's
    /// HTTP/3, STUN and TURN over UDP).
    pub fn quic(listener: &Listener, addr: SocketAddr) -> BindKey {
        BindKey {
            listener: listener.name.clone(),
            addr,
            udp: true,
        }
    }
}

impl fmt::Display for BindKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let udp = if self.udp { " (udp)" } else { "" };
        write!(f, "listener {} on {}{udp}", self.listener, self.addr)
    }
}

/// A route as attached to one listener (a route without `listeners` is attached to
/// every HTTP listener, and has one key for each).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub listener: String,
    pub route: String,
}

impl RouteKey {
    pub fn new(listener: &str, route: &str) -> RouteKey {
        RouteKey {
            listener: listener.to_owned(),
            route: route.to_owned(),
        }
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route {} (listener {})", self.route, self.listener)
    }
}

/// Whose life a reload ends: the long-lived connections opened through it (WebSockets,
/// CONNECT tunnels, Layer 4 sessions) get the reload grace period, then close.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LifeKey {
    /// A listener's own life (Layer 4 sessions, forward-proxy tunnels).
    Listener(String),
    Route(RouteKey),
}

impl fmt::Display for LifeKey {
    /// As the reload log names it: `listener front`, `route ws (listener front)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LifeKey::Listener(name) => write!(f, "listener {name}"),
            LifeKey::Route(r) => r.fmt(f),
        }
    }
}

/// What a reload from one configuration to another keeps, changes, adds and removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Listeners by name; changed: same name, other settings.
    pub listeners: Changes<String>,
    /// Every listener's addresses. Kept: the listener is identical. Changed
    /// (restarted): same listener and address, other settings; the socket is kept and
    /// a new accept loop serves it. An address moving to another listener, or between
    /// UDP and TCP, is removed from one and added to the other.
    pub binds: Changes<BindKey>,
    /// Routes, per listener they are attached to; changed: same name, other settings.
    pub routes: Changes<RouteKey>,
    /// Kept: identical config, its pools and health state go on; changed: rebuilt.
    pub clusters: Changes<String>,
    /// The TLS acceptors of listeners with `tls`, by listener. Kept: same settings
    /// (the files are read again); changed: built anew.
    pub certificates: Changes<String>,
    /// Lives that end: every listener and every route changed or removed, in the old
    /// configuration's order (a listener, then its routes).
    pub retired: Vec<LifeKey>,
}

impl ReloadPlan {
    /// Nothing changes: every item is kept, no life ends.
    pub fn is_empty(&self) -> bool {
        self.listeners.all_kept()
            && self.binds.all_kept()
            && self.routes.all_kept()
            && self.clusters.all_kept()
            && self.certificates.all_kept()
            && self.retired.is_empty()
    }

    /// One line per thing that is not kept, for logs (`cluster api: rebuilt`).
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        lines(
            &mut out,
            &self.listeners,
            |k| format!("listener {k}"),
            WORDS,
        );
        lines(&mut out, &self.binds, ToString::to_string, BIND_WORDS);
        lines(&mut out, &self.routes, ToString::to_string, WORDS);
        lines(
            &mut out,
            &self.clusters,
            |k| format!("cluster {k}"),
            REBUILT,
        );
        lines(
            &mut out,
            &self.certificates,
            |k| format!("listener {k} certificates"),
            REBUILT,
        );
        out.extend(
            self.retired
                .iter()
                .map(|l| format!("{l}: long-lived connections retired")),
        );
        out
    }
}

/// Words for changed, added and removed.
const WORDS: [&str; 3] = ["changed", "added", "removed"];
const BIND_WORDS: [&str; 3] = ["restarted", "bound", "closed"];
const REBUILT: [&str; 3] = ["rebuilt", "added", "removed"];

fn lines<K: Ord>(
    out: &mut Vec<String>,
    changes: &Changes<K>,
    name: impl Fn(&K) -> String,
    [changed, added, removed]: [&str; 3],
) {
    for (k, c) in changes.iter() {
        let word = match c {
            Change::Kept => continue,
            Change::Changed => changed,
            Change::Added => added,
            Change::Removed => removed,
        };
        out.push(format!("{}: {word}", name(k)));
    }
}

/// What a reload from `old` to `new` does.
pub fn diff(old: &Config, new: &Config) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    for l in &new.listeners {
        added_or_kept(&mut plan, old, new, l);
    }
    for o in &old.listeners {
        removed_or_retired(&mut plan, old, new, o);
    }
    for c in &new.clusters {
        let same = old.cluster(&c.name).map(|o| o == c);
        plan.clusters.set(c.name.clone(), Change::of(same));
    }
    for o in &old.clusters {
        if new.cluster(&o.name).is_none() {
            plan.clusters.set(o.name.clone(), Change::Removed);
        }
    }
    plan
}

fn listener<'a>(config: &'a Config, name: &str) -> Option<&'a Listener> {
    config.listeners.iter().find(|l| l.name == name)
}

/// The routes attached to `listener` in `config` (none when it has no such listener).
fn routes<'a>(config: &'a Config, listener: Option<&'a Listener>) -> Vec<&'a Route> {
    listener.map_or_else(Vec::new, |l| config.routes_for(&l.name).collect())
}

/// An address keeps its socket across settings, not between UDP and TCP.
fn same_transport(a: &Listener, b: &Listener) -> bool {
    a.main_is_udp() == b.main_is_udp()
}

/// A listener of the new config, and its addresses, certificates and routes.
fn added_or_kept(plan: &mut ReloadPlan, old: &Config, new: &Config, l: &Listener) {
    let was = listener(old, &l.name);
    plan.listeners
        .set(l.name.clone(), Change::of(was.map(|o| o == l)));
    for &addr in &l.binds {
        let same = was
            .filter(|o| o.binds.contains(&addr) && same_transport(o, l))
            .map(|o| o == l);
        plan.binds.set(BindKey::new(l, addr), Change::of(same));
        if l.udp_beside_tcp() {
            let same = was
                .filter(|o| o.binds.contains(&addr) && o.udp_beside_tcp())
                .map(|o| o == l);
            plan.binds.set(BindKey::quic(l, addr), Change::of(same));
        }
    }
    if let Some(t) = &l.tls {
        let same = was.and_then(|o| o.tls.as_ref()).map(|o| o == t);
        plan.certificates.set(l.name.clone(), Change::of(same));
    }
    let before = routes(old, was);
    for r in new.routes_for(&l.name) {
        let same = before.iter().find(|o| o.name == r.name).map(|o| *o == r);
        plan.routes
            .set(RouteKey::new(&l.name, &r.name), Change::of(same));
    }
}

/// A listener of the old config: what of it the new config drops, and which of its
/// lives end (its own unless it is identical; each route's unless identical).
fn removed_or_retired(plan: &mut ReloadPlan, old: &Config, new: &Config, o: &Listener) {
    let now = listener(new, &o.name);
    if now.is_none() {
        plan.listeners.set(o.name.clone(), Change::Removed);
    }
    for &addr in &o.binds {
        if !now.is_some_and(|n| n.binds.contains(&addr) && same_transport(o, n)) {
            plan.binds.set(BindKey::new(o, addr), Change::Removed);
        }
        if o.udp_beside_tcp() && !now.is_some_and(|n| n.binds.contains(&addr) && n.udp_beside_tcp())
        {
            plan.binds.set(BindKey::quic(o, addr), Change::Removed);
        }
    }
    if o.tls.is_some() && now.and_then(|n| n.tls.as_ref()).is_none() {
        plan.certificates.set(o.name.clone(), Change::Removed);
    }
    if now != Some(o) {
        plan.retired.push(LifeKey::Listener(o.name.clone()));
    }
    let after = routes(new, now);
    for r in routes(old, Some(o)) {
        let still = after.iter().find(|n| n.name == r.name);
        if still.is_none() {
            plan.routes
                .set(RouteKey::new(&o.name, &r.name), Change::Removed);
        }
        if still != Some(&r) {
            plan.retired
                .push(LifeKey::Route(RouteKey::new(&o.name, &r.name)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three listeners (HTTP, HTTPS, TCP), a route on `front` only, a route on every
    /// HTTP listener, two clusters. Edits keep every line where it is: where the
    /// certificate files are written is part of the TLS settings.
    const BASE: &str = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:8080"
idle_timeout = "61s"

[[listeners]]
name = "secure"
bind = "127.0.0.1:8443"
protocol = "https"
idle_timeout = "62s"
tls = { certificates = [{ cert = "/etc/pylon/site.pem", key = "/etc/pylon/site-key.pem" }] }

[[listeners]]
name = "tcp"
bind = "127.0.0.1:9000"
protocol = "tcp"
cluster = "db"
idle_timeout = "10m"

[[routes]]
name = "old-docs"
listeners = ["front"]
path_prefix = "/old"
redirect = { status = 301, location = "http://{host}/new" }

[[routes]]
name = "app"
path_prefix = "/"
cluster = "app"

[[clusters]]
name = "app"
endpoints = ["127.0.0.1:8081"]

[[clusters]]
name = "db"
endpoints = ["127.0.0.1:9001"]
"#;

    fn config(text: &str) -> Config {
        crate::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// `BASE` with `from` replaced by `to` (which must be there once).
    fn edited(from: &str, to: &str) -> Config {
        assert_eq!(BASE.matches(from).count(), 1, "{from}");
        config(&BASE.replace(from, to))
    }

    fn plan_to(new: &Config) -> ReloadPlan {
        diff(&config(BASE), new)
    }

    fn names<K: Ord + ToString>(changes: &Changes<K>, change: Change) -> Vec<String> {
        changes
            .keys(change)
            .into_iter()
            .map(ToString::to_string)
            .collect()
    }

    fn route(listener: &str, route: &str) -> RouteKey {
        RouteKey::new(listener, route)
    }

    fn bind(listener: &str, addr: &str) -> BindKey {
        BindKey {
            listener: listener.into(),
            addr: addr.parse().unwrap(),
            udp: false,
        }
    }

    fn retired(plan: &ReloadPlan) -> Vec<String> {
        plan.retired.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn unchanged_config_keeps_everything_and_retires_nothing() {
        let plan = plan_to(&config(BASE));
        assert!(plan.is_empty());
        assert!(plan.summary().is_empty());
        assert!(plan.retired.is_empty());
        assert_eq!(
            names(&plan.listeners, Change::Kept),
            ["front", "secure", "tcp"]
        );
        assert_eq!(plan.binds.keys(Change::Kept).len(), 3);
        assert_eq!(
            names(&plan.routes, Change::Kept),
            [
                "route app (listener front)",
                "route old-docs (listener front)",
                "route app (listener secure)",
            ]
        );
        assert_eq!(names(&plan.clusters, Change::Kept), ["app", "db"]);
        assert_eq!(names(&plan.certificates, Change::Kept), ["secure"]);
    }

    #[test]
    fn first_start_adds_everything() {
        let plan = diff(&Config::empty(), &config(BASE));
        assert!(!plan.is_empty());
        assert!(plan.retired.is_empty());
        assert_eq!(plan.listeners.keys(Change::Added).len(), 3);
        assert_eq!(plan.binds.keys(Change::Added).len(), 3);
        assert_eq!(plan.routes.keys(Change::Added).len(), 3);
        assert_eq!(names(&plan.clusters, Change::Added), ["app", "db"]);
        assert_eq!(names(&plan.certificates, Change::Added), ["secure"]);
        for changes in [&plan.listeners, &plan.clusters, &plan.certificates] {
            assert!(changes.iter().all(|(_, c)| c == Change::Added));
        }
    }

    #[test]
    fn cluster_endpoint_changed_rebuilds_that_cluster_only() {
        let plan = plan_to(&edited("127.0.0.1:8081", "127.0.0.1:8082"));
        assert_eq!(plan.clusters.get("app"), Some(Change::Changed));
        assert!(plan.clusters.is_kept("db"));
        assert!(
            plan.routes.all_kept(),
            "routes name the cluster, not its endpoints"
        );
        assert!(plan.listeners.all_kept() && plan.binds.all_kept());
        assert!(plan.retired.is_empty());
        assert_eq!(plan.summary(), ["cluster app: rebuilt"]);
    }

    #[test]
    fn route_path_changed_retires_its_life_only() {
        let plan = plan_to(&edited("\"/old\"", "\"/older\""));
        assert_eq!(
            plan.routes.get(&route("front", "old-docs")),
            Some(Change::Changed)
        );
        assert!(plan.routes.is_kept(&route("front", "app")));
        assert!(plan.routes.is_kept(&route("secure", "app")));
        assert!(plan.listeners.all_kept() && plan.binds.all_kept());
        assert_eq!(retired(&plan), ["route old-docs (listener front)"]);
    }

    #[test]
    fn route_removed() {
        let start = BASE.find("[[routes]]").unwrap();
        let end = start + 1 + BASE[start + 1..].find("[[routes]]").unwrap();
        let mut text = BASE.to_owned();
        text.replace_range(start..end, "");
        let plan = plan_to(&config(&text));
        assert_eq!(
            plan.routes.get(&route("front", "old-docs")),
            Some(Change::Removed)
        );
        assert_eq!(names(&plan.routes, Change::Kept).len(), 2);
        assert_eq!(retired(&plan), ["route old-docs (listener front)"]);
        assert_eq!(
            plan.summary(),
            [
                "route old-docs (listener front): removed",
                "route old-docs (listener front): long-lived connections retired",
            ]
        );
    }

    #[test]
    fn route_moved_off_a_listener_is_removed_there_and_changed_where_it_stays() {
        let plan = plan_to(&edited(
            "path_prefix = \"/\"\n",
            "path_prefix = \"/\"\nlisteners = [\"front\"]\n",
        ));
        assert_eq!(
            plan.routes.get(&route("secure", "app")),
            Some(Change::Removed)
        );
        assert_eq!(
            plan.routes.get(&route("front", "app")),
            Some(Change::Changed)
        );
        assert_eq!(
            retired(&plan),
            ["route app (listener front)", "route app (listener secure)"]
        );
    }

    #[test]
    fn listener_bind_moved_closes_the_old_address_and_binds_the_new() {
        let plan = plan_to(&edited("127.0.0.1:8080", "127.0.0.1:8090"));
        assert_eq!(plan.listeners.get("front"), Some(Change::Changed));
        assert_eq!(
            plan.binds.get(&bind("front", "127.0.0.1:8080")),
            Some(Change::Removed)
        );
        assert_eq!(
            plan.binds.get(&bind("front", "127.0.0.1:8090")),
            Some(Change::Added)
        );
        assert!(plan.routes.all_kept(), "its routes keep their lives");
        assert_eq!(retired(&plan), ["listener front"]);
    }

    #[test]
    fn listener_timeout_changed_restarts_on_the_same_socket() {
        let plan = plan_to(&edited("\"61s\"", "\"5s\""));
        assert_eq!(plan.listeners.get("front"), Some(Change::Changed));
        assert_eq!(
            names(&plan.binds, Change::Changed),
            ["listener front on 127.0.0.1:8080"]
        );
        assert_eq!(plan.binds.keys(Change::Kept).len(), 2);
        assert!(plan.routes.all_kept());
        assert_eq!(retired(&plan), ["listener front"]);
        assert_eq!(
            plan.summary(),
            [
                "listener front: changed",
                "listener front on 127.0.0.1:8080: restarted",
                "listener front: long-lived connections retired",
            ]
        );
    }

    #[test]
    fn tls_settings_changed_rebuild_the_certificate() {
        let plan = plan_to(&edited(
            "site-key.pem\" }] }",
            "site-key.pem\" }], min_version = \"1.3\" }",
        ));
        assert_eq!(plan.certificates.get("secure"), Some(Change::Changed));
        assert_eq!(
            plan.binds.get(&bind("secure", "127.0.0.1:8443")),
            Some(Change::Changed)
        );
        assert_eq!(retired(&plan), ["listener secure"]);
    }

    #[test]
    fn tls_settings_unchanged_keep_the_certificate() {
        // Another setting of the same listener changes: its acceptor stays.
        let plan = plan_to(&edited("\"62s\"", "\"5s\""));
        assert_eq!(plan.listeners.get("secure"), Some(Change::Changed));
        assert!(plan.certificates.is_kept("secure"));
        // And a change elsewhere leaves it alone too.
        let plan = plan_to(&edited("127.0.0.1:8081", "127.0.0.1:8082"));
        assert!(plan.certificates.is_kept("secure"));
    }

    #[test]
    fn lines_moved_by_an_edit_elsewhere_keep_a_tls_listener() {
        // A comment above shifts every line, the certificate files' included.
        let plan = plan_to(&config(&format!("# edited\n\n{BASE}")));
        assert!(plan.certificates.is_kept("secure"));
        assert!(plan.listeners.is_kept("secure"));
        assert!(plan.retired.is_empty(), "{:?}", plan.retired);
        assert!(plan.is_empty(), "{:?}", plan.summary());
    }

    #[test]
    fn l4_listener_changed_retires_its_life() {
        let plan = plan_to(&edited("\"10m\"", "\"1m\""));
        assert_eq!(plan.listeners.get("tcp"), Some(Change::Changed));
        assert_eq!(
            plan.binds.get(&bind("tcp", "127.0.0.1:9000")),
            Some(Change::Changed)
        );
        assert_eq!(retired(&plan), ["listener tcp"]);
        assert!(plan.clusters.all_kept());
    }

    #[test]
    fn an_address_moving_from_tcp_to_udp_is_closed_and_bound_again() {
        let plan = plan_to(&edited("protocol = \"tcp\"", "protocol = \"udp\""));
        let tcp = bind("tcp", "127.0.0.1:9000");
        let udp = BindKey {
            udp: true,
            ..tcp.clone()
        };
        assert_eq!(plan.binds.get(&tcp), Some(Change::Removed));
        assert_eq!(plan.binds.get(&udp), Some(Change::Added));
        assert_eq!(
            plan.summary()[1..3],
            [
                "listener tcp on 127.0.0.1:9000: closed",
                "listener tcp on 127.0.0.1:9000 (udp): bound",
            ]
        );
        assert_eq!(plan.listeners.get("tcp"), Some(Change::Changed));
        assert_eq!(retired(&plan), ["listener tcp"]);
    }

    #[test]
    fn listeners_and_clusters_added_and_removed() {
        let tcp = BASE.find("[[listeners]]\nname = \"tcp\"").unwrap();
        let routes = BASE.find("[[routes]]").unwrap();
        let mut text = BASE.to_owned();
        text.replace_range(tcp..routes, "");
        let text = text
            .replace("name = \"db\"", "name = \"cache\"")
            .replace("127.0.0.1:9001", "127.0.0.1:6379")
            + "\n[[listeners]]\nname = \"extra\"\nbind = \"127.0.0.1:8088\"\n";
        let plan = plan_to(&config(&text));
        assert_eq!(plan.listeners.get("tcp"), Some(Change::Removed));
        assert_eq!(plan.listeners.get("extra"), Some(Change::Added));
        assert_eq!(
            plan.binds.get(&bind("tcp", "127.0.0.1:9000")),
            Some(Change::Removed)
        );
        assert_eq!(
            plan.binds.get(&bind("extra", "127.0.0.1:8088")),
            Some(Change::Added)
        );
        // The route on every HTTP listener is attached to the new one too.
        assert_eq!(plan.routes.get(&route("extra", "app")), Some(Change::Added));
        assert_eq!(plan.clusters.get("db"), Some(Change::Removed));
        assert_eq!(plan.clusters.get("cache"), Some(Change::Added));
        assert!(plan.clusters.is_kept("app"));
        assert_eq!(retired(&plan), ["listener tcp"]);
    }

    #[test]
    fn a_removed_listener_retires_its_life_then_its_routes() {
        let secure = BASE.find("[[listeners]]\nname = \"secure\"").unwrap();
        let tcp = BASE.find("[[listeners]]\nname = \"tcp\"").unwrap();
        let mut text = BASE.to_owned();
        text.replace_range(secure..tcp, "");
        let plan = plan_to(&config(&text));
        assert_eq!(plan.certificates.get("secure"), Some(Change::Removed));
        assert_eq!(
            plan.routes.get(&route("secure", "app")),
            Some(Change::Removed)
        );
        assert!(plan.routes.is_kept(&route("front", "app")));
        assert_eq!(
            retired(&plan),
            ["listener secure", "route app (listener secure)"]
        );
    }
}
