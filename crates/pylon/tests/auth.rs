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

#[tokio::test]
async fn api_keys_in_a_header_or_the_query_are_checked_against_a_keys_file() {
    let origin = Origin::echo().await;
    let dir = std::env::temp_dir().join(format!("pylon-apikeys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The key and its line as `pylon apikey` makes them.
    let (key, digest) = pylon_proxy::http::filters::auth::new_key().unwrap();
    let file = dir.join("keys.txt");
    std::fs::write(&file, format!("# demo keys\nmobile-app {digest}\n")).unwrap();
    let toml = format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/h/"
cluster = "c"
auth = ["by-header"]

[[routes]]
path_prefix = "/q/"
cluster = "c"
auth = ["by-query"]

[[clusters]]
name = "c"
endpoints = ["{}"]

[[auth]]
name = "by-header"
api_key = {{ header = "X-Api-Key", keys_file = "{}" }}

[[auth]]
name = "by-query"
api_key = {{ query = "api_key", keys_file = "{}" }}
"#,
        origin.addr,
        file.display(),
        file.display()
    );
    let p = TestProxy::start(&toml).await;
    let front = p.addr("front");
    let with = |path: &str, header: Option<&str>| {
        let mut r = Request::get(path.to_owned()).header("host", "test.local");
        if let Some(h) = header {
            r = r.header("x-api-key", h);
        }
        r.body(empty()).unwrap()
    };
    assert_eq!(send_h1(front, with("/h/a", Some(&key))).await.status, 200);
    assert_eq!(
        send_h1(front, with("/h/a", Some("pk_wrong"))).await.status,
        401
    );
    assert_eq!(send_h1(front, with("/h/a", None)).await.status, 401);
    let q = format!("/q/a?x=1&api_key={key}");
    assert_eq!(send_h1(front, with(&q, None)).await.status, 200);
    assert_eq!(
        send_h1(front, with("/q/a?api_key=pk_wrong", None))
            .await
            .status,
        401
    );
    // The header key does not open the query route.
    assert_eq!(send_h1(front, with("/q/a", Some(&key))).await.status, 401);
    assert_eq!(origin.request_count(), 2);

    // `pylon check` reads the keys file: a malformed line is an error naming it.
    std::fs::write(&file, "mobile-app not-a-digest\n").unwrap();
    let model = pylon_config::parse(&toml, "test.toml").unwrap();
    let problems = pylon_proxy::http::filters::auth::check(&model);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0]
            .to_string()
            .contains("keys.txt line 1: expected NAME"),
        "{}",
        problems[0]
    );
    // And a reload with it is refused: the running keys stay.
    assert!(p.proxy.reload(&model).await.is_err());
    assert_eq!(send_h1(front, with("/h/a", Some(&key))).await.status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn auth_require_all_needs_every_policy() {
    let origin = Origin::named("app").await;
    let dir = std::env::temp_dir().join(format!("pylon-auth-all-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, digest) = pylon_proxy::http::filters::auth::new_key().unwrap();
    let file = dir.join("keys.txt");
    std::fs::write(&file, format!("device-7 {digest}\n")).unwrap();
    let hash = pylon_proxy::http::forward::hash_password("wonderland").unwrap();
    let p = TestProxy::start(&format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
cluster = "c"
auth = ["staff", "devices"]
auth_require = "all"

[[clusters]]
name = "c"
endpoints = ["{}"]

[[auth]]
name = "staff"
basic = {{ users = [{{ name = "alice", password_hash = "{hash}" }}] }}

[[auth]]
name = "devices"
api_key = {{ header = "x-api-key", keys_file = "{}" }}
"#,
        origin.addr,
        file.display()
    ))
    .await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:wonderland")
    );
    let ask = |auth: Option<&str>, api_key: Option<&str>| {
        let mut r = Request::get("/").header("host", "test.local");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        if let Some(k) = api_key {
            r = r.header("x-api-key", k);
        }
        send_h1(p.addr("front"), r.body(empty()).unwrap())
    };
    assert_eq!(ask(Some(&basic), None).await.status, 401);
    assert_eq!(ask(None, Some(&key)).await.status, 401);
    assert_eq!(ask(Some(&basic), Some(&key)).await.status, 200);
    assert_eq!(origin.request_count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
