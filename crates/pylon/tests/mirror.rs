//! Request mirroring (`mirror` on a route) over real sockets: copies with their body and
//! a `-shadow` host reach the shadow cluster; a sampled share is copied; bodies over
//! `max_body` are not; and a shadow that is down, or that never answers, changes
//! nothing for the real requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use http::{Method, Request};
use pylon_testkit::*;

fn config(app: std::net::SocketAddr, shadow: std::net::SocketAddr, mirror: &str) -> String {
    format!(
        r#"
[access_log]
enabled = false

[admin]
bind = "127.0.0.1:0"

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
name = "api"
path_prefix = "/"
cluster = "app"
mirror = {{ {mirror} }}

[[clusters]]
name = "app"
endpoints = ["{app}"]

[[clusters]]
name = "shadow"
endpoints = ["{shadow}"]
"#
    )
}

/// The mirror counter of `result` for the route "api".
async fn mirrored(p: &TestProxy, result: &str) -> u64 {
    metric(
        &p.metrics().await,
        &format!(
            "pylon_mirror_requests_total{{route=\"api\",cluster=\"shadow\",result=\"{result}\"}}"
        ),
    )
}

async fn post(front: std::net::SocketAddr, path: &str, text: &str) -> Answer {
    let r = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "api.test")
        .body(body(text.to_owned()))
        .unwrap();
    send_h1(front, r).await
}

type Copies = Arc<Mutex<Vec<(String, String, Option<String>, Vec<u8>)>>>;

async fn shadow(copies: Copies) -> Origin {
    Origin::start(move |req| {
        let copies = copies.clone();
        async move {
            let method = req.method().to_string();
            let target = req.uri().to_string();
            let host = req
                .headers()
                .get("host")
                .map(|h| h.to_str().unwrap().to_owned());
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .unwrap()
                .to_bytes()
                .to_vec();
            copies.lock().unwrap().push((method, target, host, body));
            http::Response::new(full("shadow answer, discarded"))
        }
    })
    .await
}

#[tokio::test]
async fn copies_reach_the_shadow_with_their_body_and_a_shadow_host() {
    let app = Origin::echo().await;
    let copies: Copies = Arc::default();
    let sh = shadow(copies.clone()).await;
    let p = TestProxy::start(&config(
        app.addr,
        sh.addr,
        r#"cluster = "shadow", max_body = "1KiB""#,
    ))
    .await;
    let front = p.addr("front");
    let a = post(front, "/orders?id=7", "{\"item\": 1}").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["body_len"], 11, "the real request has its body");
    eventually("the copy arrives", || copies.lock().unwrap().len() == 1).await;
    let (method, target, host, body) = copies.lock().unwrap()[0].clone();
    assert_eq!(method, "POST");
    assert_eq!(target, "/orders?id=7");
    assert_eq!(host.as_deref(), Some("api.test-shadow"));
    assert_eq!(body, b"{\"item\": 1}");
    // Over max_body: the real request goes, the copy does not.
    let big = "x".repeat(4096);
    assert_eq!(post(front, "/upload", &big).await.json()["body_len"], 4096);
    eventually_async("the skip is counted", || async {
        mirrored(&p, "skipped").await == 1
    })
    .await;
    assert_eq!(copies.lock().unwrap().len(), 1);
    assert_eq!(mirrored(&p, "sent").await, 1);
}

#[tokio::test]
async fn a_sampled_share_is_copied() {
    let app = Origin::named("app").await;
    let copies: Copies = Arc::default();
    let sh = shadow(copies.clone()).await;
    let p = TestProxy::start(&config(
        app.addr,
        sh.addr,
        r#"cluster = "shadow", percent = 25.0"#,
    ))
    .await;
    let front = p.addr("front");
    let mut conn = h1_conn(front).await;
    for _ in 0..2000 {
        let req = Request::get("/x")
            .header("host", "api.test")
            .body(empty())
            .unwrap();
        let resp = conn.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        collect(resp).await;
    }
    // Every copy answered is counted as sent.
    eventually_async("the copies are answered", || async {
        let sent = mirrored(&p, "sent").await as usize;
        sent > 0 && sent == copies.lock().unwrap().len()
    })
    .await;
    let n = copies.lock().unwrap().len();
    assert!((400..=600).contains(&n), "{n} of 2,000 copied (25% wanted)");
    assert_eq!(app.request_count(), 2000);
}

#[tokio::test]
async fn a_shadow_that_is_down_or_never_answers_changes_nothing_for_real_requests() {
    let app = Origin::named("app").await;
    // Down: a port held bound but not listening, so connections are refused (and no
    // other test can take it meanwhile).
    let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    held.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let down = held.local_addr().unwrap().as_socket().unwrap();
    let p = TestProxy::start(&config(app.addr, down, r#"cluster = "shadow""#)).await;
    let front = p.addr("front");
    for _ in 0..20 {
        let a = post(front, "/x", "payload").await;
        assert_eq!(a.status, 200);
        assert!(a.text().starts_with("app"));
    }
    eventually_async("the failures are counted", || async {
        mirrored(&p, "failed").await == 20
    })
    .await;

    // Stalled: the shadow accepts and never answers; the real requests do not wait.
    let stalled = Origin::start(|_req| async {
        std::future::pending::<()>().await;
        http::Response::new(full(""))
    })
    .await;
    let p = TestProxy::start(&config(
        app.addr,
        stalled.addr,
        r#"cluster = "shadow", timeout = "1h""#,
    ))
    .await;
    let front = p.addr("front");
    for _ in 0..100 {
        assert_eq!(post(front, "/x", "payload").await.status, 200);
    }
    // At most 64 copies are out at once; the rest were dropped, not queued.
    eventually_async("the drops are counted", || async {
        mirrored(&p, "dropped").await == 36
    })
    .await;
    assert_eq!(app.request_count(), 120);
}
