//! Route matching: any host, path, method and headers against a router with exact,
//! wildcard, prefix, regex, method and header routes; never a panic, and the indexed
//! router agrees with trying each route in file order.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pylon_proxy::http::router::{RouteRuntime, Router};

const CONFIG: &str = r#"
[access_log]
enabled = false
[[listeners]]
name = "l"
bind = "127.0.0.1:0"
[[routes]]
host = ["api.example.com"]
path_prefix = "/v1/"
methods = ["GET", "POST"]
respond = { body = "0" }
[[routes]]
host = ["*.example.com"]
path_regex = "^/users/[0-9]+$"
respond = { body = "1" }
[[routes]]
path = "/exact"
headers = [{ name = "x-tenant", value = "a" }]
respond = { body = "2" }
[[routes]]
host = ["other.test"]
respond = { body = "3" }
[[routes]]
path_prefix = "/"
methods = ["DELETE"]
respond = { body = "4" }
"#;

fn router() -> &'static (Router, Vec<pylon_config::model::Route>) {
    static R: OnceLock<(Router, Vec<pylon_config::model::Route>)> = OnceLock::new();
    R.get_or_init(|| {
        let c = pylon_config::parse(CONFIG, "fuzz.toml").expect("valid");
        let routes = c.routes.clone();
        let r = Router::new(
            c.routes
                .into_iter()
                .map(|r| RouteRuntime::detached(r, None))
                .collect(),
        );
        (r, routes)
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let host = parts.next().unwrap_or("").to_ascii_lowercase();
    let path = parts.next().unwrap_or("/");
    let method = http::Method::from_bytes(parts.next().unwrap_or("GET").as_bytes())
        .unwrap_or(http::Method::GET);
    let mut headers = http::HeaderMap::new();
    if let Some(v) = parts.next()
        && let Ok(v) = http::HeaderValue::from_str(v)
    {
        headers.insert("x-tenant", v);
    }
    let (router, _) = router();
    let found = router
        .find(&host, path, &method, &headers, None)
        .map(|r| Arc::clone(&r.name));
    let naive = router
        .routes()
        .iter()
        .find(|r| r.matches(&host, path, &method, &headers, None))
        .map(|r| Arc::clone(&r.name));
    assert_eq!(found, naive, "host {host:?} path {path:?} method {method}");
});
