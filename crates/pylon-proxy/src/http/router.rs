//! Routing: host → path → method → headers (→ client certificate → JWT claims), first
//! match in file order wins, giving the route's action.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method};
use pylon_config::model::{Action, ClientCertMatch, HostMatch, PathMatch, Route};
use regex::RegexSet;

use crate::cluster::ClusterRuntime;
use crate::tls::server::ClientIdentity;

/// A route ready for matching; proxy routes hold their cluster.
pub struct RouteRuntime {
    pub name: Arc<str>,
    pub route: Route,
    pub cluster: Option<Arc<ClusterRuntime>>,
    /// `host_rewrite` as a header value.
    pub host_rewrite: Option<http::HeaderValue>,
    /// Answers by status class and latency, kept across reloads.
    pub stats: Arc<crate::observe::stats::RouteStats>,
    /// Ends (after the reload grace period) when a reload removes or changes the route.
    pub life: crate::life::Life,
    /// The route's filters, built from its settings and its listener's.
    pub filters: super::filters::FilterChain,
    /// For a route matching on `claims`: the jwt policies of its `auth` that verify
    /// the token whose claims are matched.
    pub(crate) claim_policies: Vec<Arc<super::filters::auth::Policy>>,
}

/// The routes of one listener, in file order, indexed so that a request only looks at
/// the routes its host can match:
/// - each exact host named by some route has its candidate list (routes naming it,
///   wildcard routes matching it, and host-less routes, in file order);
/// - any other host scans the wildcard and host-less routes;
/// - every path regex is compiled into one `RegexSet`, run at most once per request.
#[derive(Default)]
pub struct Router {
    routes: Vec<RouteRuntime>,
    by_host: HashMap<String, Vec<u32>>,
    other_hosts: Vec<u32>,
    regexes: Option<RegexSet>,
    /// For each route, its pattern's index in `regexes`.
    regex_slot: Vec<Option<usize>>,
    /// Every jwt policy a route matches claims with (once each): a request's token is
    /// verified with them before routing.
    claim_policies: Vec<Arc<super::filters::auth::Policy>>,
}

impl Router {
    pub fn new(routes: Vec<RouteRuntime>) -> Self {
        let mut exact_hosts: Vec<&str> = Vec::new();
        for r in &routes {
            for h in &r.route.matcher.hosts {
                if let HostMatch::Exact(name) = h
                    && !exact_hosts.contains(&name.as_str())
                {
                    exact_hosts.push(name);
                }
            }
        }
        let by_host: HashMap<String, Vec<u32>> = exact_hosts
            .iter()
            .map(|&host| {
                let candidates = (0..routes.len() as u32)
                    .filter(|&i| hosts_match(&routes[i as usize].route, host))
                    .collect();
                (host.to_owned(), candidates)
            })
            .collect();
        let other_hosts = (0..routes.len() as u32)
            .filter(|&i| {
                let hosts = &routes[i as usize].route.matcher.hosts;
                hosts.is_empty() || hosts.iter().any(|h| !matches!(h, HostMatch::Exact(_)))
            })
            .collect();
        let mut patterns = Vec::new();
        let regex_slot = routes
            .iter()
            .map(|r| match &r.route.matcher.path {
                PathMatch::Regex(re) => {
                    patterns.push(re.as_str().to_owned());
                    Some(patterns.len() - 1)
                }
                _ => None,
            })
            .collect();
        // The patterns compiled one by one during validation, so the set compiles too;
        // if it ever did not, matching falls back to each route's own regex.
        let regexes = (!patterns.is_empty())
            .then(|| RegexSet::new(&patterns).ok())
            .flatten();
        let mut claim_policies: Vec<Arc<super::filters::auth::Policy>> = Vec::new();
        for p in routes.iter().flat_map(|r| &r.claim_policies) {
            if !claim_policies.iter().any(|q| Arc::ptr_eq(p, q)) {
                claim_policies.push(Arc::clone(p));
            }
        }
        Router {
            routes,
            by_host,
            other_hosts,
            regexes,
            regex_slot,
            claim_policies,
        }
    }

    /// The jwt policies routes match claims with; empty when no route does.
    pub(crate) fn claim_policies(&self) -> &[Arc<super::filters::auth::Policy>] {
        &self.claim_policies
    }

    /// Every route, in file order.
    pub fn routes(&self) -> &[RouteRuntime] {
        &self.routes
    }

    /// The route with this name.
    pub fn route_named(&self, name: &str) -> Option<&RouteRuntime> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// The first route matching the request. `host` is lower-case and has no port;
    /// `client` is the verified client certificate, if any.
    pub fn find(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
        client: Option<&ClientIdentity>,
    ) -> Option<&RouteRuntime> {
        self.find_claimed(host, path, method, headers, client, None)
    }

    /// [`Router::find`], with the claims of the request's token as the router's
    /// [`Router::claim_policies`] verified it (routes with `claims` never match
    /// without).
    pub(crate) fn find_claimed(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
        client: Option<&ClientIdentity>,
        claims: Option<&super::filters::auth::RoutingClaims>,
    ) -> Option<&RouteRuntime> {
        let (candidates, host_checked) = match self.by_host.get(host) {
            Some(c) => (c.as_slice(), true),
            None => (self.other_hosts.as_slice(), false),
        };
        let mut regex_hits: Option<regex::SetMatches> = None;
        candidates.iter().map(|&i| i as usize).find_map(|i| {
            let r = &self.routes[i];
            let m = &r.route.matcher;
            if !host_checked && !m.hosts.is_empty() && !m.hosts.iter().any(|h| h.matches(host)) {
                return None;
            }
            let path_ok = match (&m.path, self.regex_slot[i], &self.regexes) {
                (PathMatch::Regex(_), Some(slot), Some(set)) => regex_hits
                    .get_or_insert_with(|| set.matches(path))
                    .matched(slot),
                (p, _, _) => path_matches(p, path),
            };
            (path_ok
                && rest_matches(&r.route, method, headers)
                && cert_matches(&m.client_cert, client)
                && (m.claims.is_empty()
                    || claims.is_some_and(|c| c.satisfy(&r.claim_policies, &m.claims))))
            .then_some(r)
        })
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

fn hosts_match(r: &Route, host: &str) -> bool {
    let hosts = &r.matcher.hosts;
    hosts.is_empty() || hosts.iter().any(|h| h.matches(host))
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Any => true,
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        PathMatch::Regex(re) => re.is_match(path),
    }
}

/// Client-certificate conditions.
fn cert_matches(m: &ClientCertMatch, client: Option<&ClientIdentity>) -> bool {
    if m.is_empty() {
        return true;
    }
    let Some(c) = client else { return false };
    m.subject.as_ref().is_none_or(|s| *s == c.subject)
        && m.dns
            .as_ref()
            .is_none_or(|d| c.dns_names.iter().any(|n| n == d))
        && m.fingerprint.as_ref().is_none_or(|f| *f == c.fingerprint)
}

/// Method and header conditions.
fn rest_matches(r: &Route, method: &Method, headers: &HeaderMap) -> bool {
    let m = &r.matcher;
    if !m.methods.is_empty() && !m.methods.iter().any(|x| x == method.as_str()) {
        return false;
    }
    if m.grpc && !super::grpc::is_grpc(headers) {
        // A gRPC-Web route also takes the CORS preflights browsers send first.
        let preflight = method == Method::OPTIONS
            && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            && matches!(&r.action, Action::Proxy(a) if a.grpc_web);
        if !preflight {
            return false;
        }
    }
    m.headers.iter().all(|h| match &h.value {
        None => headers.contains_key(h.name.as_str()),
        Some(v) => headers
            .get_all(h.name.as_str())
            .iter()
            .any(|x| x.as_bytes() == v.as_bytes()),
    })
}

/// Lower-cases `authority` and strips its port (keeping IPv6 brackets). Borrows when
/// there is nothing to lower-case.
pub fn normalize_host(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => &authority[..=i],
            None => authority,
        }
    } else {
        match authority.rfind(':') {
            Some(i) => &authority[..i],
            None => authority,
        }
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

impl RouteRuntime {
    pub fn action(&self) -> &Action {
        &self.route.action
    }

    /// Whether this route alone matches the request: the plain definition that
    /// [`Router::find`]'s index must agree with.
    pub fn matches(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
        client: Option<&ClientIdentity>,
    ) -> bool {
        hosts_match(&self.route, host)
            && path_matches(&self.route.matcher.path, path)
            && rest_matches(&self.route, method, headers)
            && cert_matches(&self.route.matcher.client_cert, client)
    }

    /// A route outside any runtime (benchmarks, tests): its own stats, a life that
    /// never ends.
    pub fn detached(route: Route, cluster: Option<Arc<ClusterRuntime>>) -> RouteRuntime {
        RouteRuntime {
            name: Arc::from(route.name.as_str()),
            stats: crate::observe::StatsRegistry::default().route("", &route.name, ""),
            life: crate::life::Life::default(),
            filters: super::filters::FilterChain::default(),
            claim_policies: Vec::new(),
            route,
            cluster,
            host_rewrite: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use pylon_config::model::*;

    fn route(
        hosts: Vec<HostMatch>,
        path: PathMatch,
        methods: &[&str],
        headers: Vec<HeaderMatch>,
    ) -> RouteRuntime {
        RouteRuntime::detached(
            Route {
                name: "r".into(),
                listeners: vec![],
                matcher: RouteMatch {
                    hosts,
                    path,
                    methods: methods.iter().map(|s| s.to_string()).collect(),
                    headers,
                    grpc: false,
                    client_cert: ClientCertMatch::default(),
                    claims: Vec::new(),
                },
                action: Action::Respond(RespondAction {
                    status: 200,
                    headers: vec![],
                    body: String::new(),
                }),
            },
            None,
        )
    }

    /// The plain definition: the first route, in file order, whose every part matches.
    fn naive<'a>(
        r: &'a Router,
        host: &str,
        path: &str,
        m: &Method,
        h: &HeaderMap,
    ) -> Option<&'a RouteRuntime> {
        r.routes.iter().find(|x| x.matches(host, path, m, h, None))
    }

    fn host_strategy() -> impl Strategy<Value = HostMatch> {
        prop_oneof![
            Just(HostMatch::Any),
            prop::sample::select(vec!["a.com", "b.com", "x.a.com"])
                .prop_map(|h| HostMatch::Exact(h.into())),
            prop::sample::select(vec![".a.com", ".com"]).prop_map(|h| HostMatch::Suffix(h.into())),
        ]
    }

    fn path_strategy() -> impl Strategy<Value = PathMatch> {
        prop_oneof![
            Just(PathMatch::Any),
            prop::sample::select(vec!["/", "/x", "/x/1"]).prop_map(|p| PathMatch::Exact(p.into())),
            prop::sample::select(vec!["/", "/x", "/y"]).prop_map(|p| PathMatch::Prefix(p.into())),
            prop::sample::select(vec!["^/x/[0-9]$", "^/y", "1$"])
                .prop_map(|p| PathMatch::Regex(regex::Regex::new(p).unwrap())),
        ]
    }

    proptest::proptest! {
        #[test]
        fn index_agrees_with_the_plain_definition(
            specs in proptest::collection::vec(
                (proptest::collection::vec(host_strategy(), 0..3), path_strategy(), proptest::bool::ANY),
                0..12,
            ),
            host in prop::sample::select(vec!["a.com", "b.com", "x.a.com", "z.a.com", "q.org"]),
            path in prop::sample::select(vec!["/", "/x", "/x/1", "/y/2", "/z1"]),
            post in proptest::bool::ANY,
        ) {
            let routes = specs
                .into_iter()
                .map(|(hosts, path, post_only)| {
                    route(hosts, path, if post_only { &["POST"] } else { &[] }, vec![])
                })
                .collect();
            let r = Router::new(routes);
            let m = if post { Method::POST } else { Method::GET };
            let h = HeaderMap::new();
            let got = r.find(host, path, &m, &h, None).map(|x| x as *const RouteRuntime);
            let want = naive(&r, host, path, &m, &h).map(|x| x as *const RouteRuntime);
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn host_forms() {
        assert!(HostMatch::Suffix(".example.com".into()).matches("a.example.com"));
        assert!(HostMatch::Suffix(".example.com".into()).matches("a.b.example.com"));
        assert!(!HostMatch::Suffix(".example.com".into()).matches("example.com"));
        assert!(!HostMatch::Suffix(".example.com".into()).matches("badexample.com"));
        assert!(HostMatch::Exact("example.com".into()).matches("example.com"));
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("plain"), "plain");
    }

    #[test]
    fn first_match_wins_and_all_parts_must_match() {
        let mut h = HeaderMap::new();
        h.insert("x-env", "canary".parse().unwrap());
        let r = Router::new(vec![
            route(vec![], PathMatch::Exact("/exact".into()), &[], vec![]),
            route(
                vec![],
                PathMatch::Prefix("/api/".into()),
                &["POST"],
                vec![HeaderMatch {
                    name: "x-env".into(),
                    value: Some("canary".into()),
                }],
            ),
            route(
                vec![],
                PathMatch::Regex(regex::Regex::new("^/v[0-9]+/").unwrap()),
                &[],
                vec![],
            ),
            route(
                vec![HostMatch::Exact("a.com".into())],
                PathMatch::Any,
                &[],
                vec![],
            ),
        ]);
        let idx = |host: &str, path: &str, m: Method, hm: &HeaderMap| {
            r.find(host, path, &m, hm, None)
                .map(|x| r.routes.iter().position(|y| std::ptr::eq(x, y)).unwrap())
        };
        let empty = HeaderMap::new();
        assert_eq!(idx("x", "/exact", Method::GET, &empty), Some(0));
        assert_eq!(idx("x", "/exact/", Method::GET, &empty), None);
        assert_eq!(idx("x", "/api/1", Method::POST, &h), Some(1));
        assert_eq!(idx("x", "/api/1", Method::GET, &h), None);
        assert_eq!(idx("x", "/api/1", Method::POST, &empty), None);
        assert_eq!(idx("x", "/v2/x", Method::GET, &empty), Some(2));
        assert_eq!(idx("a.com", "/anything", Method::GET, &empty), Some(3));
    }
}
