//! Header and URL rules on a route over real sockets: request headers set, added when
//! absent, appended and removed with `{variables}`; response headers set and removed; the
//! upstream path rewritten by a regex with captures; query parameters set and removed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{Request, Response};
use pylon_testkit::*;
use serde_json::json;

#[tokio::test]
async fn headers_paths_and_queries_are_rewritten_with_variables() {
    // An origin that echoes the request and answers with headers to remove.
    let origin = Origin::start(|req| async move {
        let mut r: Response<OriginBody> = echo_response(req).await;
        r.headers_mut()
            .insert("server", "origin/1.0".parse().unwrap());
        r.headers_mut()
            .insert("x-powered-by", "php".parse().unwrap());
        r
    })
    .await;
    let p = TestProxy::start(&format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
name = "api-v1"
path_prefix = "/v1/"
cluster = "c"
regex_rewrite = {{ pattern = "^/v1/(?P<rest>.*)$", replacement = "/api/${{rest}}" }}
query = {{ set = {{ src = "pylon", who = "{{client_ip}}" }}, remove = ["debug"] }}
request_headers = {{ set = {{ x-env = "prod", x-route = "{{route}}/{{method}}" }}, add = {{ x-client = "{{client_ip}}", x-keep = "pylon" }}, append = {{ x-trace = "id={{request_id}}" }}, remove = ["x-debug"] }}
response_headers = {{ set = {{ strict-transport-security = "max-age=63072000", x-served-by = "{{cluster}} {{{{braces}}}}", x-endpoint = "{{endpoint}}" }}, remove = ["server", "x-powered-by"] }}

[[clusters]]
name = "c"
endpoints = ["{}"]
"#,
        origin.addr
    ))
    .await;
    let req = Request::get("/v1/users/7?debug=1&a=1&src=client")
        .header("host", "api.test")
        .header("x-debug", "yes")
        .header("x-env", "dev")
        .header("x-keep", "client")
        .header("x-trace", "first")
        .header("x-request-id", "req-42")
        .body(empty())
        .unwrap();
    let a = send_h1(p.addr("front"), req).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = a.json();
    assert_eq!(
        seen["uri"],
        "/api/users/7?a=1&src=pylon&who=127%2E0%2E0%2E1"
    );
    let h = &seen["headers"];
    assert!(h.get("x-debug").is_none());
    assert_eq!(h["x-env"], json!(["prod"]));
    assert_eq!(h["x-route"], json!(["api-v1/GET"]));
    assert_eq!(h["x-client"], json!(["127.0.0.1"]));
    assert_eq!(h["x-keep"], json!(["client"]), "add keeps what is there");
    assert_eq!(h["x-trace"], json!(["first", "id=req-42"]));
    assert_eq!(
        a.header("strict-transport-security"),
        Some("max-age=63072000")
    );
    assert_eq!(a.header("x-served-by"), Some("c {braces}"));
    assert_eq!(
        a.header("x-endpoint"),
        Some(origin.addr.to_string().as_str())
    );
    assert!(a.header("server").is_none() && a.header("x-powered-by").is_none());
}

#[tokio::test]
async fn redirects_take_the_same_variables() {
    let p = TestProxy::start(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
name = "old"
path_prefix = "/old/"
redirect = { status = 308, location = "https://{host}/new{path}?{query}&from={client_ip}&id={request_id}&r={route}" }
"#,
    )
    .await;
    let req = Request::get("/old/a?b=1")
        .header("host", "shop.test")
        .header("x-request-id", "rid-7")
        .body(empty())
        .unwrap();
    let a = send_h1(p.addr("front"), req).await;
    assert_eq!(a.status, 308);
    assert_eq!(
        a.header("location"),
        Some("https://shop.test/new/old/a?b=1&from=127.0.0.1&id=rid-7&r=old")
    );
}
