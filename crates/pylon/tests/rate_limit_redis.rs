//! Global rate limits (`global = { redis = ... }`) against a real `redis-server` that the
//! tests start on a free port: three Pylon instances share one limit and together admit
//! within 5% of it, with far fewer Redis round trips than requests; a Redis killed
//! mid-test gives each policy's `on_error` answer, and the limits count again once it
//! is back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::Request;
use pylon_testkit::*;

fn config(origin: std::net::SocketAddr, redis: &str, policies: &str, batch: u32) -> String {
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
path_prefix = "/open/"
cluster = "c"
rate_limit = ["fail-open"]

[[routes]]
path_prefix = "/closed/"
cluster = "c"
rate_limit = ["fail-closed"]

[[clusters]]
name = "c"
endpoints = ["{origin}"]

[[rate_limits]]
name = "fail-open"
key = "header:x-user"
{policies}
global = {{ redis = "{redis}", timeout = "200ms", on_error = "allow", batch = {batch} }}

[[rate_limits]]
name = "fail-closed"
key = "header:x-user"
{policies}
global = {{ redis = "{redis}", timeout = "200ms", on_error = "deny", batch = 1 }}
"#
    )
}

async fn ask(front: std::net::SocketAddr, path: &str, user: &str) -> Answer {
    let r = Request::get(path)
        .header("host", "test.local")
        .header("x-user", user);
    send_h1(front, r.body(empty()).unwrap()).await
}

#[tokio::test]
async fn three_instances_share_one_global_limit_within_five_percent() {
    let redis = RedisServer::start();
    let origin = Origin::named("app").await;
    // 300 per hour: nothing refills while the test runs.
    let toml = config(origin.addr, &redis.url(), "rate = 300\nper = \"1h\"", 10);
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(TestProxy::start(&toml).await);
    }
    // 250 requests to each instance, ten at a time per instance.
    let mut tasks = Vec::new();
    for p in &fleet {
        let front = p.addr("front");
        for _ in 0..10 {
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0u32;
                for _ in 0..25 {
                    let a = ask(front, "/open/x", "shared").await;
                    match a.status.as_u16() {
                        200 => admitted += 1,
                        429 => assert_eq!(a.header("x-pylon-error"), Some("rate_limited")),
                        s => panic!("unexpected {s}"),
                    }
                }
                admitted
            }));
        }
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    assert!(
        (285..=315).contains(&admitted),
        "the fleet admitted {admitted} of a limit of 300"
    );
    assert_eq!(origin.request_count(), admitted as usize);
    let mut round_trips = 0;
    for p in &fleet {
        let m = p.metrics().await;
        round_trips += metric(
            &m,
            "pylon_rate_limit_redis_round_trips_total{policy=\"fail-open\"}",
        );
        assert_eq!(
            metric(
                &m,
                "pylon_rate_limit_redis_errors_total{policy=\"fail-open\"}"
            ),
            0
        );
    }
    eprintln!("the fleet admitted {admitted} of 300 with {round_trips} Redis round trips");
    // Tokens are leased ten at a time, and an empty bucket is not asked again before
    // its next token is due: about 30 leases and one refusal per instance.
    assert!(
        round_trips <= 60,
        "{round_trips} Redis round trips for 750 requests"
    );
    // The bucket is in Redis under the policy's prefix.
    assert!(
        redis
            .cli(&["--scan", "--pattern", "pylon:rl:fail-open:*"])
            .contains("pylon:rl:fail-open:shared")
    );
}

#[tokio::test]
async fn a_redis_outage_gives_each_policys_on_error_answer_and_recovers() {
    let mut redis = RedisServer::start();
    let origin = Origin::named("app").await;
    let p = TestProxy::start(&config(
        origin.addr,
        &redis.url(),
        "rate = 1\nper = \"1h\"\nburst = 1",
        1,
    ))
    .await;
    let front = p.addr("front");
    // Counted in Redis: one request per user, then 429.
    for path in ["/open/a", "/closed/a"] {
        assert_eq!(ask(front, path, "ann").await.status, 200, "{path}");
        assert_eq!(ask(front, path, "ann").await.status, 429, "{path}");
    }

    redis.stop();
    // New keys need Redis: the fail-open policy lets them through, the fail-closed one
    // answers 503.
    for user in ["ben", "cat", "dan"] {
        assert_eq!(ask(front, "/open/a", user).await.status, 200);
        let closed = ask(front, "/closed/a", user).await;
        assert_eq!(closed.status, 503);
        assert_eq!(
            closed.header("x-pylon-error"),
            Some("rate_limit_unavailable")
        );
    }
    let m = p.metrics().await;
    assert!(
        metric(
            &m,
            "pylon_rate_limit_redis_errors_total{policy=\"fail-closed\"}"
        ) >= 1
    );

    // Back (empty): decisions are made in Redis again.
    redis.resume();
    eventually_async("the fail-closed policy admits again", || async {
        ask(front, "/closed/a", "eve").await.status == 200
    })
    .await;
    assert_eq!(ask(front, "/closed/a", "eve").await.status, 429);
    assert_eq!(ask(front, "/closed/a", "fay").await.status, 200);
}
