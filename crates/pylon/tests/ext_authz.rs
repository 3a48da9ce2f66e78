//! External authorization (`[[auth]] external`) against a real authorization service
//! on loopback that allows (its headers go upstream), denies with 401 and 403 (relayed
//! to the client with its challenge and body), stalls past the timeout and fails with
//! 500 (503 `auth_unavailable`, or let through with `on_error = "allow"`); verdicts
//! reused for `cache_ttl`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use pylon_testkit::*;

/// What the authorization service saw: method, target, and its headers of interest.
type Seen = Arc<Mutex<Vec<(String, String, Option<String>, Option<String>)>>>;

async fn service(seen: Seen) -> Origin {
    Origin::start(move |req| {
        let seen = seen.clone();
        async move {
            let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
            seen.lock().unwrap().push((
                req.method().to_string(),
                req.uri().to_string(),
                h("x-forwarded-host"),
                h("content-length"),
            ));
            let auth = h("authorization").unwrap_or_default();
            let mut resp = Response::new(full(""));
            match auth.as_str() {
                "Bearer good" => {
                    let hd = resp.headers_mut();
                    hd.insert("x-user-id", "u-42".parse().unwrap());
                    hd.insert("x-auth-user", "alice".parse().unwrap());
                    hd.insert("x-internal", "not for upstream".parse().unwrap());
                }
                "Bearer forbidden" => {
                    *resp.status_mut() = StatusCode::FORBIDDEN;
                    resp.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    *resp.body_mut() = full("{\"error\":\"not your tenant\"}");
                }
                "Bearer stall" => std::future::pending::<()>().await,
                "Bearer boom" => *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
                _ => {
                    *resp.status_mut() = StatusCode::UNAUTHORIZED;
                    resp.headers_mut()
                        .insert("www-authenticate", "Bearer realm=\"ext\"".parse().unwrap());
                }
            }
            resp
        }
    })
    .await
}

#[tokio::test]
async fn an_authorization_service_allows_denies_stalls_and_fails() {
    let seen: Seen = Arc::default();
    let authz = service(seen.clone()).await;
    let app = Origin::echo().await;
    let p = TestProxy::start(&format!(
        r#"
[access_log]
enabled = false

[admin]
bind = "127.0.0.1:0"

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/strict/"
cluster = "app"
auth = ["ext"]

[[routes]]
path_prefix = "/lenient/"
cluster = "app"
auth = ["ext-open"]

[[clusters]]
name = "app"
endpoints = ["{}"]

[[clusters]]
name = "authz"
endpoints = ["{}"]

[[auth]]
name = "ext"
external = {{ cluster = "authz", path_prefix = "/check", headers = ["authorization"], upstream_headers = ["x-user-id"], user_header = "x-auth-user", timeout = "300ms" }}

[[auth]]
name = "ext-open"
external = {{ cluster = "authz", headers = ["authorization"], timeout = "300ms", on_error = "allow", cache_ttl = "1h" }}
"#,
        app.addr, authz.addr
    ))
    .await;
    let front = p.addr("front");
    let ask = |method: &'static str, path: &'static str, token: Option<&'static str>| async move {
        let mut r = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "shop.test")
            .header("x-user-id", "spoofed");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        send_h1(front, r.body(body("payload")).unwrap()).await
    };

    // Allowed: the service's chosen header goes upstream (the client's copy does not),
    // others stay behind.
    let ok = ask("POST", "/strict/cart?id=7", Some("good")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let up = ok.json();
    assert_eq!(up["headers"]["x-user-id"], serde_json::json!(["u-42"]));
    assert!(up["headers"].get("x-internal").is_none());
    assert_eq!(up["body_len"], 7, "the body goes upstream whole");
    // The service saw the method, the prefixed target and the host, and no body.
    let first = seen.lock().unwrap()[0].clone();
    assert_eq!(first.0, "POST");
    assert_eq!(first.1, "/check/strict/cart?id=7");
    assert_eq!(first.2.as_deref(), Some("shop.test"));
    assert!(first.3.is_none() || first.3.as_deref() == Some("0"));

    // 401 and 403 are relayed with their challenge and body.
    let anon = ask("GET", "/strict/x", None).await;
    assert_eq!(anon.status, 401);
    assert_eq!(
        anon.header("www-authenticate"),
        Some("Bearer realm=\"ext\"")
    );
    assert_eq!(anon.header("x-pylon-error"), Some("unauthorized"));
    let denied = ask("GET", "/strict/x", Some("forbidden")).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.header("x-pylon-error"), Some("auth_denied"));
    assert_eq!(denied.header("content-type"), Some("application/json"));
    assert_eq!(denied.text(), "{\"error\":\"not your tenant\"}");

    // Stalled past the timeout, or failing: 503 by default...
    for token in ["stall", "boom"] {
        let a = ask("GET", "/strict/x", Some(token)).await;
        assert_eq!(a.status, 503, "{token}");
        assert_eq!(a.header("x-pylon-error"), Some("auth_unavailable"));
    }
    // ...or through with on_error = "allow".
    for token in ["stall", "boom"] {
        assert_eq!(
            ask("GET", "/lenient/x", Some(token)).await.status,
            200,
            "{token}"
        );
    }
    assert_eq!(
        app.request_count(),
        3,
        "refused requests never reach the app"
    );

    // Verdicts are reused within cache_ttl (per method, path and sent headers).
    let before = seen.lock().unwrap().len();
    for _ in 0..3 {
        assert_eq!(ask("GET", "/lenient/y", Some("good")).await.status, 200);
        assert_eq!(
            ask("GET", "/lenient/y", Some("forbidden")).await.status,
            403
        );
    }
    assert_eq!(seen.lock().unwrap().len(), before + 2);

    // Counted per policy: the checks made, and the ones that failed.
    let m = p.metrics().await;
    let sample = |series: &str| metric(&m, series);
    assert_eq!(
        sample("pylon_auth_service_requests_total{policy=\"ext\",kind=\"external\"}"),
        5
    );
    assert_eq!(
        sample("pylon_auth_service_failures_total{policy=\"ext\",kind=\"external\"}"),
        2
    );
}
