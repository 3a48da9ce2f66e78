//! Local rate limits on routes (`rate_limit`, `[[rate_limits]]`) over real sockets: a
//! burst admitted, the next request refused with 429, `Retry-After` and the `RateLimit`
//! fields, per-key buckets, and the refusals counted. Periods are long enough that no
//! bucket refills during a test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::Request;
use pylon_testkit::*;

#[tokio::test]
async fn a_burst_is_admitted_then_refused_with_429_per_key() {
    let origin = Origin::named("app").await;
    let p = TestProxy::start(&format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/ip/"
cluster = "c"
rate_limit = ["per-ip"]

[[routes]]
path_prefix = "/user/"
cluster = "c"
rate_limit = ["per-user"]

[[routes]]
path_prefix = "/net/"
cluster = "c"
rate_limit = ["per-net"]

[[clusters]]
name = "c"
endpoints = ["{}"]

[[rate_limits]]
name = "per-ip"
rate = 3
per = "1h"

[[rate_limits]]
name = "per-net"
key = "client_ip/24"
rate = 1
per = "1h"

[[rate_limits]]
name = "per-user"
key = "header:x-user"
rate = 2
per = "1h"
burst = 2
"#,
        origin.addr
    ))
    .await;
    let front = p.addr("front");
    let ask = |path: &'static str, user: Option<&'static str>| async move {
        let mut r = Request::get(path).header("host", "test.local");
        if let Some(u) = user {
            r = r.header("x-user", u);
        }
        send_h1(front, r.body(empty()).unwrap()).await
    };
    for _ in 0..3 {
        assert_eq!(ask("/ip/a", None).await.status, 200);
    }
    let refused = ask("/ip/a", None).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-pylon-error"), Some("rate_limited"));
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=1200).contains(&retry), "{retry}");
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"per-ip\";q=3;w=3600")
    );
    assert!(
        refused
            .header("ratelimit")
            .unwrap()
            .starts_with("\"per-ip\";r=0;t=")
    );
    // Per-user buckets: one user's use leaves the other's whole.
    assert_eq!(ask("/user/a", Some("ann")).await.status, 200);
    assert_eq!(ask("/user/a", Some("ann")).await.status, 200);
    assert_eq!(ask("/user/a", Some("ann")).await.status, 429);
    assert_eq!(ask("/user/a", Some("ben")).await.status, 200);
    assert_eq!(
        origin.request_count(),
        6,
        "refused requests never reach the upstream"
    );
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn keys_combine_headers_and_jwt_claims_and_listeners_add_their_own_limits() {
    let origin = Origin::named("app").await;
    let dir = std::env::temp_dir().join(format!("pylon-rl-claims-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = b"a-test-secret-of-thirty-two-bytes!";
    std::fs::write(dir.join("hs.key"), secret).unwrap();
    let p = TestProxy::start(&format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"
rate_limit = ["whole-listener"]

[[routes]]
path_prefix = "/api/"
cluster = "c"
auth = ["jwt"]
rate_limit = ["per-tenant-app"]

[[routes]]
path_prefix = "/"
cluster = "c"

[[clusters]]
name = "c"
endpoints = ["{}"]

[[auth]]
name = "jwt"
jwt = {{ algorithms = ["HS256"], key_file = "{}" }}

[[rate_limits]]
name = "per-tenant-app"
key = "claim:tenant+header:x-app"
rate = 2
per = "1h"

[[rate_limits]]
name = "whole-listener"
key = "route"
rate = 9
per = "1h"
"#,
        origin.addr,
        dir.join("hs.key").display(),
    ))
    .await;
    let front = p.addr("front");
    let token = |tenant: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({ "sub": "u", "tenant": tenant, "exp": now() + 600 }),
            &jsonwebtoken::EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    };
    let ask = |tenant: &'static str, app: &'static str| {
        let t = token(tenant);
        async move {
            let r = Request::get("/api/x")
                .header("host", "test.local")
                .header("authorization", format!("Bearer {t}"))
                .header("x-app", app);
            send_h1(front, r.body(empty()).unwrap()).await.status
        }
    };
    // Each (tenant, app) pair has its own bucket of 2.
    assert_eq!(ask("acme", "web").await, 200);
    assert_eq!(ask("acme", "web").await, 200);
    assert_eq!(ask("acme", "web").await, 429);
    assert_eq!(ask("acme", "cli").await, 200);
    assert_eq!(ask("zeta", "web").await, 200);
    assert_eq!(ask("zeta", "web").await, 200);
    assert_eq!(ask("zeta", "web").await, 429);
    // The listener's own limit (9 for all its routes) counted the 7 above, refused
    // ones included: two more go through, anywhere on the listener, then none.
    assert_eq!(get(front, "/other").await.status, 200);
    assert_eq!(ask("new", "web").await, 200);
    let refused = get(front, "/other").await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"whole-listener\";q=9;w=3600")
    );
    assert_eq!(origin.request_count(), 7);
}

#[tokio::test]
async fn delay_makes_a_request_wait_for_its_turn_instead_of_429() {
    let origin = Origin::named("app").await;
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
path_prefix = "/wait/"
cluster = "c"
rate_limit = ["smooth"]

[[routes]]
path_prefix = "/now/"
cluster = "c"
rate_limit = ["strict"]

[[clusters]]
name = "c"
endpoints = ["{}"]

[[rate_limits]]
name = "smooth"
key = "route"
rate = 5
per = "1s"
burst = 1
delay = "5s"

[[rate_limits]]
name = "strict"
key = "route"
rate = 5
per = "1s"
burst = 1
"#,
        origin.addr
    ))
    .await;
    let front = p.addr("front");
    let burst = |path: &'static str| async move {
        let all = (0..3).map(|_| async move { get(front, path).await.status });
        futures_util::future::join_all(all).await
    };
    assert_eq!(burst("/wait/a").await, vec![200, 200, 200]);
    let mut strict = burst("/now/a").await;
    strict.sort_unstable();
    assert_eq!(strict, vec![200, 429, 429]);
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, "pylon_rate_limit_delayed_total{policy=\"smooth\"}"),
        2
    );
    assert_eq!(
        metric(&m, "pylon_rate_limit_admitted_total{policy=\"smooth\"}"),
        1
    );
    assert_eq!(
        metric(&m, "pylon_rate_limit_refused_total{policy=\"strict\"}"),
        2
    );
}

#[tokio::test]
async fn a_concurrency_limit_counts_requests_until_their_answer_ends() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let entered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (g, e) = (gate.clone(), entered.clone());
    let origin = Origin::start(move |_req| {
        let (g, e) = (g.clone(), e.clone());
        async move {
            e.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            g.acquire().await.unwrap().forget();
            http::Response::new(full("done"))
        }
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
rate_limit = ["two-at-a-time"]

[[clusters]]
name = "c"
endpoints = ["{}"]

[[rate_limits]]
name = "two-at-a-time"
key = "client_ip"
concurrency = 2
"#,
        origin.addr
    ))
    .await;
    let front = p.addr("front");
    let first = tokio::spawn(async move { get(front, "/a").await.status });
    let second = tokio::spawn(async move { get(front, "/b").await.status });
    let e = entered.clone();
    eventually("two requests at the origin", move || {
        e.load(std::sync::atomic::Ordering::SeqCst) == 2
    })
    .await;
    let third = get(front, "/c").await;
    assert_eq!(third.status, 429);
    assert_eq!(third.header("x-pylon-error"), Some("rate_limited"));
    assert_eq!(
        third.header("ratelimit-policy"),
        Some("\"two-at-a-time\";q=2")
    );
    // One answer ends: its slot is free again, the other one's is still taken.
    gate.add_permits(1);
    eventually("one request done", || {
        first.is_finished() || second.is_finished()
    })
    .await;
    let fourth = tokio::spawn(async move { get(front, "/d").await.status });
    let e = entered.clone();
    eventually("the next request at the origin", move || {
        e.load(std::sync::atomic::Ordering::SeqCst) == 3
    })
    .await;
    assert_eq!(get(front, "/e").await.status, 429);
    gate.add_permits(2);
    for t in [first, second, fourth] {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(origin.request_count(), 3);
}
