//! Header and URL rules on a route over real sockets: request headers set, added when
//! absent, appended and removed with `{variables}`; response headers set and removed; the
//! upstream path rewritten by a regex with captures; query parameters set and removed;
//! what the TLS handshake and the client certificate said, as variables.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_client_certificate_fields_reach_templates() {
    let ca = TestCa::new("Server CA");
    let clients = TestCa::new("Client CA");
    let leaf = ca.server(&["m.test"]);
    let origin = Origin::echo().await;
    let dir = temp_dir();
    let (cert, key) = leaf.write(&dir, "leaf");
    let client_ca = dir.join("client-ca.pem");
    std::fs::write(&client_ca, clients.cert_pem()).unwrap();
    let p = TestProxy::start(&format!(
        r#"
access_log = {{ enabled = false }}
[[listeners]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "https"
[listeners.tls]
certificates = [{{ cert = "{}", key = "{}" }}]
client_auth = "optional"
client_ca = "{}"

[[routes]]
cluster = "c"
request_headers = {{ set = {{ x-tls = "{{tls_version}}|{{tls_cipher}}|{{tls_sni}}|{{tls_alpn}}", x-peer = "{{client_cert_subject}}|{{client_cert_dns}}" }} }}

[[clusters]]
name = "c"
endpoints = ["{}"]
"#,
        cert.display(),
        key.display(),
        client_ca.display(),
        origin.addr
    ))
    .await;
    let header = |a: &Answer, name: &str| a.json()["headers"][name][0].as_str().unwrap().to_owned();

    // HTTP/2 with a client certificate.
    let alice = clients.client("alice", "alice.clients.test");
    let with = tls_client(&ca, &["h2"], Some(&alice));
    let req = Request::get("https://m.test/").body(empty()).unwrap();
    let a = https_send(&with, p.addr("tls"), "m.test", req)
        .await
        .unwrap();
    let tls = header(&a, "x-tls");
    let parts: Vec<&str> = tls.split('|').collect();
    assert_eq!(parts[0], "TLSv1.3", "{tls}");
    assert!(
        parts[1].starts_with("TLS_")
            && (parts[1].contains("_GCM_") || parts[1].contains("CHACHA20")),
        "an IANA cipher suite name: {tls}"
    );
    assert_eq!(&parts[2..], ["m.test", "h2"], "{tls}");
    assert_eq!(header(&a, "x-peer"), "CN=alice|alice.clients.test");

    // HTTP/1.1 without one: the certificate's fields are empty.
    let anon = tls_client(&ca, &["http/1.1"], None);
    let req = Request::get("https://m.test/")
        .header("host", "m.test")
        .body(empty())
        .unwrap();
    let a = https_send(&anon, p.addr("tls"), "m.test", req)
        .await
        .unwrap();
    assert!(header(&a, "x-tls").ends_with("|m.test|http/1.1"));
    assert_eq!(header(&a, "x-peer"), "|");
}

#[tokio::test]
async fn response_rules_apply_to_cache_hits_and_are_not_stored() {
    let origin = Origin::start(|_req| async move {
        Response::builder()
            .header("cache-control", "max-age=60")
            .body(full("cached body"))
            .unwrap()
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
path_prefix = "/"
cluster = "c"
cache = "z"
response_headers = {{ set = {{ x-request = "{{request_id}}" }}, append = {{ x-trace = "edge" }} }}

[[clusters]]
name = "c"
endpoints = ["{}"]

[[caches]]
name = "z"
"#,
        origin.addr
    ))
    .await;
    let get = |id: &'static str| {
        Request::get("/doc")
            .header("host", "a.test")
            .header("x-request-id", id)
            .body(empty())
            .unwrap()
    };
    let miss = send_h1(p.addr("front"), get("first")).await;
    assert!(
        miss.header("cache-status").unwrap_or("").contains("miss"),
        "{miss:?}"
    );
    assert_eq!(miss.header("x-request"), Some("first"));
    let hit = send_h1(p.addr("front"), get("second")).await;
    assert!(
        hit.header("cache-status").unwrap_or("").contains("hit"),
        "{hit:?}"
    );
    assert_eq!(hit.text(), "cached body");
    // The rules ran for this request, on the stored answer, which did not keep the
    // first request's values.
    assert_eq!(hit.header("x-request"), Some("second"));
    assert_eq!(hit.headers.get_all("x-trace").iter().count(), 1);
}
