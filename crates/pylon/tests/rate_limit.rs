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
