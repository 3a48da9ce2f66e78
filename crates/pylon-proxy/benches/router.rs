//! Route matching cost with 1,000 routes: the first, the middle, the last and no match.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use pylon_proxy::http::router::{RouteRuntime, Router};

fn router_with(n: usize) -> Router {
    let mut toml = String::from(
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\"]\n",
    );
    for i in 0..n {
        // A realistic mix: host + prefix, exact paths, regexes and header matches.
        let route = match i % 4 {
            0 => format!("host = \"svc{i}.example.com\"\npath_prefix = \"/api/v{i}/\""),
            1 => format!("path = \"/exact/{i}\""),
            2 => format!("path_regex = \"^/r{i}/[0-9]+$\""),
            _ => format!(
                "path_prefix = \"/h{i}\"\nheaders = [{{ name = \"x-tenant\", value = \"t{i}\" }}]"
            ),
        };
        toml.push_str(&format!("[[routes]]\n{route}\ncluster = \"c\"\n"));
    }
    let config = pylon_config::parse(&toml, "bench.toml").expect("valid");
    let routes = config
        .routes
        .iter()
        .map(|r| RouteRuntime::detached(r.clone(), None))
        .collect();
    Router::new(routes)
}

fn matching(c: &mut Criterion) {
    let router = router_with(1000);
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", "t999".parse().unwrap());
    let get = Method::GET;
    c.bench_function("router/1000/first", |b| {
        b.iter(|| black_box(router.find("svc0.example.com", "/api/v0/users", &get, &headers, None)))
    });
    c.bench_function("router/1000/middle", |b| {
        b.iter(|| black_box(router.find("any.example.com", "/exact/501", &get, &headers, None)))
    });
    c.bench_function("router/1000/last", |b| {
        b.iter(|| black_box(router.find("any.example.com", "/h999/x", &get, &headers, None)))
    });
    c.bench_function("router/1000/none", |b| {
        b.iter(|| black_box(router.find("nope.example.com", "/nothing", &get, &headers, None)))
    });
}

criterion_group!(benches, matching);
criterion_main!(benches);
