//! Routing: host → path → method → headers, first match in file order wins, giving the
//! route's action.

use std::sync::Arc;

use http::{HeaderMap, Method};
use pylon_config::model::{Action, HostMatch, PathMatch, Route};

use super::upstream::ClusterRuntime;

/// A route ready for matching; proxy routes hold their cluster.
pub struct RouteRuntime {
    pub name: Arc<str>,
    pub route: Route,
    pub cluster: Option<Arc<ClusterRuntime>>,
    /// `host_rewrite` as a header value.
    pub host_rewrite: Option<http::HeaderValue>,
}

/// The routes of one listener, in file order.
#[derive(Default)]
pub struct Router {
    routes: Vec<RouteRuntime>,
}

impl Router {
    pub fn new(routes: Vec<RouteRuntime>) -> Self {
        Router { routes }
    }

    /// The first route matching the request. `host` is lower-case and has no port.
    pub fn find(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&RouteRuntime> {
        self.routes
            .iter()
            .find(|r| route_matches(&r.route, host, path, method, headers))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

fn host_matches(m: &HostMatch, host: &str) -> bool {
    match m {
        HostMatch::Any => true,
        HostMatch::Exact(h) => h == host,
        HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
    }
}

fn route_matches(r: &Route, host: &str, path: &str, method: &Method, headers: &HeaderMap) -> bool {
    let m = &r.matcher;
    if !m.hosts.is_empty() && !m.hosts.iter().any(|h| host_matches(h, host)) {
        return false;
    }
    let path_ok = match &m.path {
        PathMatch::Any => true,
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        PathMatch::Regex(re) => re.is_match(path),
    };
    if !path_ok {
        return false;
    }
    if !m.methods.is_empty() && !m.methods.iter().any(|x| x == method.as_str()) {
        return false;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use pylon_config::model::*;

    fn route(
        hosts: Vec<HostMatch>,
        path: PathMatch,
        methods: &[&str],
        headers: Vec<HeaderMatch>,
    ) -> RouteRuntime {
        RouteRuntime {
            name: Arc::from("r"),
            route: Route {
                name: "r".into(),
                listeners: vec![],
                matcher: RouteMatch {
                    hosts,
                    path,
                    methods: methods.iter().map(|s| s.to_string()).collect(),
                    headers,
                },
                action: Action::Respond(RespondAction {
                    status: 200,
                    headers: vec![],
                    body: String::new(),
                }),
            },
            cluster: None,
            host_rewrite: None,
        }
    }

    #[test]
    fn host_forms() {
        assert!(host_matches(
            &HostMatch::Suffix(".example.com".into()),
            "a.example.com"
        ));
        assert!(host_matches(
            &HostMatch::Suffix(".example.com".into()),
            "a.b.example.com"
        ));
        assert!(!host_matches(
            &HostMatch::Suffix(".example.com".into()),
            "example.com"
        ));
        assert!(!host_matches(
            &HostMatch::Suffix(".example.com".into()),
            "badexample.com"
        ));
        assert!(host_matches(
            &HostMatch::Exact("example.com".into()),
            "example.com"
        ));
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
            r.find(host, path, &m, hm)
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
