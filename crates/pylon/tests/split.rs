//! Traffic splitting and canary releases (`backends`, `split`) over real sockets: 10,000
//! requests split within one percentage point of the weights; overrides by header,
//! cookie and query; sticky cookies and sticky hashes; weights changed, shifted and a
//! shift aborted through the admin API; a canary that answers 5xx rolled back by itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{Method, Request};
use pylon_testkit::*;
use serde_json::Value;

fn config(v1: std::net::SocketAddr, v2: std::net::SocketAddr, route: &str) -> String {
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
name = "shop"
{route}

[[clusters]]
name = "v1"
endpoints = ["{v1}"]

[[clusters]]
name = "v2"
endpoints = ["{v2}"]
"#
    )
}

/// Which origin answered ("v1" or "v2": the named origins answer with their name).
fn side(a: &Answer) -> String {
    a.text().split_whitespace().next().unwrap_or("").to_owned()
}

async fn ask(front: std::net::SocketAddr, headers: &[(&str, &str)], path: &str) -> Answer {
    let mut r = Request::get(path).header("host", "shop.test");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    send_h1(front, r.body(empty()).unwrap()).await
}

#[tokio::test]
async fn ten_thousand_requests_split_within_one_point_and_overrides_pick_a_side() {
    let v1 = Origin::named("v1").await;
    let v2 = Origin::named("v2").await;
    let p = TestProxy::start(&config(
        v1.addr,
        v2.addr,
        r#"path_prefix = "/"
backends = [
  { cluster = "v1", weight = 95 },
  { cluster = "v2", weight = 5, header = "x-canary=1", cookie = "canary=yes", query = "canary=1" },
]"#,
    ))
    .await;
    let front = p.addr("front");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut conn = h1_conn(front).await;
            for _ in 0..500 {
                let req = Request::get("/item")
                    .header("host", "shop.test")
                    .body(empty())
                    .unwrap();
                let resp = conn.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                collect(resp).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (n1, n2) = (v1.request_count(), v2.request_count());
    assert_eq!(n1 + n2, 10_000);
    assert!(
        (400..=600).contains(&n2),
        "v2 took {n2} of 10,000 (5% wanted)"
    );
    // Overrides send a request to the canary whatever the weights.
    for h in [
        vec![("x-canary", "1")],
        vec![("cookie", "session=a; canary=yes")],
    ] {
        for _ in 0..5 {
            assert_eq!(side(&ask(front, &h, "/x").await), "v2");
        }
    }
    for _ in 0..5 {
        assert_eq!(side(&ask(front, &[], "/x?a=b&canary=1").await), "v2");
    }
    // Counted per backend.
    let m = p.admin(Method::GET, "/metrics", "").await.text();
    let line = format!(
        "pylon_split_requests_total{{route=\"shop\",cluster=\"v2\"}} {}",
        n2 + 15
    );
    assert!(m.contains(&line), "{line} not in\n{m}");
    assert!(m.contains("pylon_split_weight{route=\"shop\",cluster=\"v1\"} 95"));
}

#[tokio::test]
async fn sticky_cookies_and_hashes_keep_a_client_on_one_side() {
    let v1 = Origin::named("v1").await;
    let v2 = Origin::named("v2").await;
    let p = TestProxy::start(&format!(
        "{}\n[[routes]]\nname = \"hashed\"\npath_prefix = \"/h/\"\nbackends = [{{ cluster = \"v1\" }}, {{ cluster = \"v2\" }}]\nsplit = {{ sticky = \"header:x-user\" }}\n",
        config(
            v1.addr,
            v2.addr,
            r#"path_prefix = "/c/"
backends = [{ cluster = "v1", weight = 1 }, { cluster = "v2", weight = 1 }]
split = { sticky = "cookie", cookie_name = "side" }"#,
        )
    ))
    .await;
    let front = p.addr("front");
    // The first answer names the side in a cookie; a client that sends it back stays.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let first = ask(front, &[], "/c/a").await;
        let cookie = first
            .header("set-cookie")
            .expect("a sticky cookie")
            .to_owned();
        assert!(cookie.starts_with("side="), "{cookie}");
        let value = cookie.split(';').next().unwrap().to_owned();
        let s = side(&first);
        assert_eq!(value, format!("side={s}"));
        for _ in 0..5 {
            let again = ask(front, &[("cookie", value.as_str())], "/c/a").await;
            assert_eq!(side(&again), s);
            assert!(again.header("set-cookie").is_none());
        }
        seen.insert(s);
    }
    assert_eq!(seen.len(), 2, "new clients go to both sides");
    // A hash of the key: the same user always lands on the same side, users spread.
    let mut sides = std::collections::HashSet::new();
    for u in 0..40 {
        let user = format!("user-{u}");
        let h = [("x-user", user.as_str())];
        let s = side(&ask(front, &h, "/h/a").await);
        for _ in 0..3 {
            assert_eq!(side(&ask(front, &h, "/h/a").await), s, "{user}");
        }
        sides.insert(s);
    }
    assert_eq!(sides.len(), 2);
}

#[tokio::test]
async fn the_admin_api_sets_weights_shifts_them_and_aborts_a_shift() {
    let v1 = Origin::named("v1").await;
    let v2 = Origin::named("v2").await;
    let p = TestProxy::start(&config(
        v1.addr,
        v2.addr,
        r#"path_prefix = "/"
backends = [{ cluster = "v1", weight = 9 }, { cluster = "v2", weight = 1 }]"#,
    ))
    .await;
    let front = p.addr("front");
    let shown = p.admin(Method::GET, "/splits/shop", "").await.json();
    assert_eq!(shown["backends"][1]["weight"], 1);
    assert_eq!(shown["backends"][1]["share_percent"], 10.0);

    // All to v2, without a reload.
    let set = p
        .admin(
            Method::PUT,
            "/splits/shop",
            r#"{"weights": {"v1": 0, "v2": 1}}"#,
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text());
    for _ in 0..10 {
        assert_eq!(side(&ask(front, &[], "/").await), "v2");
    }
    let bad = p
        .admin(Method::PUT, "/splits/shop", r#"{"weights": {"v3": 1}}"#)
        .await;
    assert_eq!(bad.status, 400);

    // A gradual shift back to v1 in two steps of 50 points.
    let shift = r#"{"cluster": "v1", "to": 100, "step": 50, "every": "50ms"}"#;
    let started = p.admin(Method::POST, "/splits/shop/shift", shift).await;
    assert_eq!(started.status, 202, "{}", started.text());
    assert_eq!(started.json()["shift"]["to_percent"], 100);
    eventually_async("the shift reaches 100%", || async {
        let s = p.admin(Method::GET, "/splits/shop", "").await.json();
        s["backends"][0]["share_percent"] == 100.0 && s["shift"] == Value::Null
    })
    .await;
    for _ in 0..10 {
        assert_eq!(side(&ask(front, &[], "/").await), "v1");
    }

    // A slow shift, aborted: the weights it started from come back.
    let slow = r#"{"cluster": "v2", "to": 50, "step": 10, "every": "1h"}"#;
    assert_eq!(
        p.admin(Method::POST, "/splits/shop/shift", slow)
            .await
            .status,
        202
    );
    let before = p.admin(Method::GET, "/splits/shop", "").await.json();
    assert_eq!(before["shift"]["cluster"], "v2");
    let aborted = p.admin(Method::DELETE, "/splits/shop/shift", "").await;
    assert_eq!(aborted.status, 200);
    assert_eq!(aborted.json()["shift"], Value::Null);
    assert_eq!(aborted.json()["backends"][0]["share_percent"], 100.0);
    assert_eq!(
        p.admin(Method::DELETE, "/splits/shop/shift", "")
            .await
            .status,
        409
    );
    assert_eq!(p.admin(Method::GET, "/splits/nope", "").await.status, 404);
}

#[tokio::test]
async fn a_canary_answering_5xx_is_rolled_back_by_itself() {
    let v1 = Origin::named("v1").await;
    let v2 = Origin::start(|_req| async {
        let mut r = http::Response::new(full("v2 broken"));
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
    .await;
    let p = TestProxy::start(&config(
        v1.addr,
        v2.addr,
        r#"path_prefix = "/"
backends = [{ cluster = "v1", weight = 1 }, { cluster = "v2", weight = 1 }]
split = { canary = "v2", max_5xx_ratio = 0.2, min_requests = 10, window = "1m" }"#,
    ))
    .await;
    let front = p.addr("front");
    let mut failures = 0;
    for _ in 0..100 {
        if ask(front, &[], "/").await.status == 500 {
            failures += 1;
        }
    }
    // Rolled back after its tenth answer: at most ten requests failed.
    assert!((1..=10).contains(&failures), "{failures} failures");
    assert_eq!(v2.request_count(), failures);
    let shown = p.admin(Method::GET, "/splits/shop", "").await.json();
    assert_eq!(shown["backends"][1]["weight"], 0);
    assert_eq!(shown["rollbacks"], 1);
    let m = p.admin(Method::GET, "/metrics", "").await.text();
    assert!(
        m.contains("pylon_split_rollbacks_total{route=\"shop\"} 1"),
        "{m}"
    );
    for _ in 0..20 {
        assert_eq!(ask(front, &[], "/").await.status, 200);
    }
}
