//! Authentication on routes (`auth`, `[[auth]]` policies) end to end: Basic credentials
//! against argon2 hashes with curl and hyper, 401 with its challenge, `auth_skip`, any
//! of several policies, and the refusals counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use http::Request;
use pylon_testkit::*;

fn config(origin: std::net::SocketAddr) -> String {
    let alice = pylon_proxy::http::forward::hash_password("wonderland").unwrap();
    let bob = pylon_proxy::http::forward::hash_password("builder").unwrap();
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
cluster = "c"
auth = ["staff", "contractors"]
auth_skip = ["/healthz", "/public/*"]

[[clusters]]
name = "c"
endpoints = ["{origin}"]

[[auth]]
name = "staff"
basic = {{ realm = "Staff area", users = [{{ name = "alice", password_hash = "{alice}" }}] }}

[[auth]]
name = "contractors"
basic = {{ users = [{{ name = "bob", password_hash = "{bob}" }}] }}
"#
    )
}

async fn ask(p: &TestProxy, path: &str, credentials: Option<&str>) -> Answer {
    let mut req = Request::get(path).header("host", "test.local");
    if let Some(c) = credentials {
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(c)
        );
        req = req.header("authorization", v);
    }
    send_h1(p.addr("front"), req.body(empty()).unwrap()).await
}

#[tokio::test]
async fn basic_credentials_of_any_listed_policy_let_a_request_through() {
    let origin = Origin::named("app").await;
    let p = TestProxy::start(&config(origin.addr)).await;
    let none = ask(&p, "/private", None).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("x-pylon-error"), Some("unauthorized"));
    let challenges: Vec<&str> = none
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        challenges,
        vec!["Basic realm=\"Staff area\"", "Basic realm=\"contractors\""]
    );
    assert_eq!(ask(&p, "/private", Some("alice:wrong")).await.status, 401);
    assert_eq!(
        ask(&p, "/private", Some("mallory:wonderland")).await.status,
        401
    );
    assert_eq!(ask(&p, "/private", Some("not base64")).await.status, 401);
    assert_eq!(
        origin.request_count(),
        0,
        "nothing refused reached the upstream"
    );
    let alice = ask(&p, "/private", Some("alice:wonderland")).await;
    assert_eq!((alice.status.as_u16(), alice.text()), (200, "app".into()));
    let bob = ask(&p, "/private", Some("bob:builder")).await;
    assert_eq!(bob.status, 200);
    // Skipped paths go on without credentials.
    assert_eq!(ask(&p, "/healthz", None).await.status, 200);
    assert_eq!(ask(&p, "/public/logo.png", None).await.status, 200);
    assert_eq!(ask(&p, "/healthz/deep", None).await.status, 401);
    assert_eq!(origin.request_count(), 4);
    // Refusals are counted by reason.
    let a = p.proxy.admin_addr().await.unwrap();
    let metrics = send_h1(
        a,
        Request::get("/metrics")
            .header("host", "admin")
            .body(empty())
            .unwrap(),
    )
    .await
    .text();
    assert!(
        metrics.contains("pylon_proxy_errors_total{reason=\"unauthorized\"} 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn curl_with_user_and_password_is_let_through() {
    let origin = Origin::named("app").await;
    let p = TestProxy::start(&config(origin.addr)).await;
    let url = format!("http://{}/x", p.addr("front"));
    let out = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-u",
        "alice:wonderland",
        &url,
    ])
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let out = curl(&["-sS", "-o", "/dev/null", "-w", "%{http_code}", &url]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}
