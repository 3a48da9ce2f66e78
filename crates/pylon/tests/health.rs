//! Active health checks: endpoints leave rotation after failing checks and come back
//! after passing ones; traffic only goes to healthy endpoints; none healthy → 503.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use http::Request;
use pylon_testkit::*;

/// An origin answering its name, and `/healthz` with a status (and body) the test sets.
async fn switchable(name: &'static str) -> (Origin, Arc<AtomicU16>) {
    let status = Arc::new(AtomicU16::new(200));
    let s = Arc::clone(&status);
    let origin = Origin::start(move |req: Request<hyper::body::Incoming>| {
        let s = Arc::clone(&s);
        async move {
            if req.uri().path() == "/healthz" {
                let code = s.load(Ordering::SeqCst);
                let body = if code == 299 {
                    "status: degraded"
                } else {
                    "status: ok"
                };
                let code = if code == 299 { 200 } else { code };
                http::Response::builder()
                    .status(code)
                    .body(full(body))
                    .unwrap()
            } else {
                http::Response::new(full(name))
            }
        }
    })
    .await;
    (origin, status)
}

fn config(endpoints: &[SocketAddr], check: &str) -> String {
    let checks = format!(
        "[clusters.health_check]\ninterval = \"50ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n{check}"
    );
    simple_config(endpoints, "", &checks)
}

async fn all_from(p: &TestProxy, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let a = get(p.addr("front"), "/").await;
        assert_eq!(a.status.as_u16(), 200, "{a:?}");
        out.push(a.text());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_take_endpoints_out_and_bring_them_back() {
    let (a, a_status) = switchable("a").await;
    let (b, _) = switchable("b").await;
    let p = TestProxy::start(&config(
        &[a.addr, b.addr],
        "kind = \"http\"\npath = \"/healthz\"",
    ))
    .await;
    eventually("checks ran", || a.request_count() >= 2).await;
    assert!(all_from(&p, 4).await.contains(&"a".to_string()));

    a_status.store(503, Ordering::SeqCst);
    eventually("a out of rotation", || {
        p.proxy.endpoint_available("c", a.addr) == Some(false)
    })
    .await;
    assert!(
        all_from(&p, 20).await.iter().all(|n| n == "b"),
        "no traffic to the unhealthy endpoint"
    );

    a_status.store(200, Ordering::SeqCst);
    eventually("a back in rotation", || {
        p.proxy.endpoint_available("c", a.addr) == Some(true)
    })
    .await;
    assert!(all_from(&p, 4).await.contains(&"a".to_string()));

    // A body that lacks the expected text fails the check too.
    let p2 = TestProxy::start(&config(
        &[a.addr, b.addr],
        "kind = \"http\"\npath = \"/healthz\"\nbody_contains = \"status: ok\"",
    ))
    .await;
    a_status.store(299, Ordering::SeqCst); // 200 with "status: degraded"
    eventually("degraded a out", || {
        p2.proxy.endpoint_available("c", a.addr) == Some(false)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks_notice_a_stopped_origin_and_none_left_is_503() {
    let (a, _) = switchable("a").await;
    let (b, _) = switchable("b").await;
    let (a_addr, b_addr) = (a.addr, b.addr);
    let p = TestProxy::start(&config(&[a_addr, b_addr], "kind = \"tcp\"")).await;
    drop(a); // the origin stops listening
    eventually("stopped origin out", || {
        p.proxy.endpoint_available("c", a_addr) == Some(false)
    })
    .await;
    assert!(all_from(&p, 20).await.iter().all(|n| n == "b"));

    drop(b);
    eventually("both out", || {
        p.proxy.endpoint_available("c", b_addr) == Some(false)
    })
    .await;
    let r = get(p.addr("front"), "/").await;
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(r.header("x-pylon-error"), Some("no_endpoint"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_answering_503_is_ejected_and_comes_back() {
    let (a, a_status) = switchable("a").await;
    let (b, _) = switchable("b").await;
    // `a` answers every request with its /healthz status (here: the whole origin fails).
    let failing = Origin::start({
        let s = Arc::clone(&a_status);
        move |_req: Request<hyper::body::Incoming>| {
            let s = Arc::clone(&s);
            async move {
                http::Response::builder()
                    .status(s.load(Ordering::SeqCst))
                    .body(full("a"))
                    .unwrap()
            }
        }
    })
    .await;
    drop(a);
    let eps = [failing.addr, b.addr];
    let cfg = config(&eps, "").replace(
        "[clusters.health_check]\ninterval = \"50ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n",
        "[clusters.outlier_detection]\nconsecutive_failures = 3\nbase_ejection_time = \"300ms\"\n",
    );
    let p = TestProxy::start(&cfg).await;
    a_status.store(503, Ordering::SeqCst);
    // Round robin sends every other request to the failing origin until it is ejected.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(p.addr("front"), "/").await.status.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        p.proxy.endpoint_available("c", failing.addr),
        Some(false),
        "ejected"
    );
    assert!(all_from(&p, 10).await.iter().all(|n| n == "b"));

    // It recovers; once the ejection time is over it gets traffic again.
    a_status.store(200, Ordering::SeqCst);
    eventually("ejection over", || {
        p.proxy.endpoint_available("c", failing.addr) == Some(true)
    })
    .await;
    assert!(all_from(&p, 4).await.contains(&"a".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_endpoint_ramps_up_slowly() {
    let (a, a_status) = switchable("a").await;
    let (b, _) = switchable("b").await;
    let cfg = config(&[a.addr, b.addr], "kind = \"http\"\npath = \"/healthz\"").replace(
        "[clusters.health_check]",
        "slow_start = \"3s\"\n[clusters.health_check]",
    );
    let p = TestProxy::start(&cfg).await;
    // A batch of 20 requests: how many went to `a`, and whether round robin alternated
    // throughout (a, b, a, b...: each endpoint with its full share, 10).
    let batch = || async {
        let names = all_from(&p, 20).await;
        let to_a = names.iter().filter(|n| *n == "a").count();
        (to_a, names.windows(2).all(|w| w[0] != w[1]))
    };
    // In rotation from the start: no ramp, round robin splits evenly.
    eventually("checks ran", || a.request_count() >= 2).await;
    assert_eq!(batch().await, (10, true));

    a_status.store(503, Ordering::SeqCst);
    eventually("a out", || {
        p.proxy.endpoint_available("c", a.addr) == Some(false)
    })
    .await;
    a_status.store(200, Ordering::SeqCst);
    eventually("a back", || {
        p.proxy.endpoint_available("c", a.addr) == Some(true)
    })
    .await;
    // Right after coming back, a gets a small part of its share...
    let (first, _) = batch().await;
    assert!(first <= 5, "a got {first} of 20 right after coming back");
    // ...which grows batch by batch over the 3 s window, until round robin alternates
    // again, three batches in a row: a has its full share back, the ramp is over.
    const FULL: usize = 3;
    let mut ramp = vec![first];
    let mut alternated = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while alternated < FULL {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a never got its full share back: {ramp:?}"
        );
        let (to_a, alternates) = batch().await;
        ramp.push(to_a);
        alternated = if alternates { alternated + 1 } else { 0 };
    }
    ramp.truncate(ramp.len() - FULL);
    // A ramp, not a step from nothing to everything: batches in between, and more
    // for a late in the ramp than early.
    let between = ramp.iter().filter(|&&n| (2..=8).contains(&n)).count();
    assert!(between >= 2, "no ramp: {ramp:?}");
    let quarter = ramp.len().div_ceil(4);
    let early: usize = ramp[..quarter].iter().sum();
    let late: usize = ramp[ramp.len() - quarter..].iter().sum();
    assert!(early < late, "the share did not grow: {ramp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_keeps_a_client_on_its_endpoint_and_falls_back_when_it_is_down() {
    let (a, a_status) = switchable("a").await;
    let (b, b_status) = switchable("b").await;
    let cfg = config(&[a.addr, b.addr], "kind = \"http\"\npath = \"/healthz\"").replace(
        "[clusters.health_check]",
        "sticky = { cookie = \"srv\", ttl = \"1h\", secret = \"test-secret\" }\n[clusters.health_check]",
    );
    let p = TestProxy::start(&cfg).await;
    eventually("checks ran", || a.request_count() >= 2).await;
    let first = get(p.addr("front"), "/").await;
    let set = first
        .header("set-cookie")
        .expect("a cookie pins the client")
        .to_string();
    assert!(
        set.starts_with("srv=") && set.contains("Max-Age=3600") && set.contains("HttpOnly"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let with_cookie = || {
        Request::get("/")
            .header("host", "x")
            .header("cookie", cookie.clone())
            .body(empty())
            .unwrap()
    };
    for _ in 0..10 {
        let r = send_h1(p.addr("front"), with_cookie()).await;
        assert_eq!(r.text(), first.text(), "stays on its endpoint");
        assert!(
            r.header("set-cookie").is_none(),
            "no new cookie while it holds"
        );
    }
    // A forged cookie is ignored (the balancer picks, and a genuine cookie comes back).
    let forged = Request::get("/")
        .header("host", "x")
        .header("cookie", "srv=0000000000000000.000000000000000000000000")
        .body(empty())
        .unwrap();
    assert!(
        send_h1(p.addr("front"), forged)
            .await
            .header("set-cookie")
            .is_some()
    );

    // Its endpoint goes down: the client moves, and gets a cookie for the new one.
    let (down, down_addr, other) = if first.text() == "a" {
        (a_status, a.addr, "b")
    } else {
        (b_status, b.addr, "a")
    };
    down.store(503, Ordering::SeqCst);
    eventually("pinned endpoint out", || {
        p.proxy.endpoint_available("c", down_addr) == Some(false)
    })
    .await;
    let r = send_h1(p.addr("front"), with_cookie()).await;
    assert_eq!(r.text(), other);
    assert!(r.header("set-cookie").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_panic_threshold_every_endpoint_takes_traffic() {
    let (a, a_status) = switchable("a").await;
    let (b, b_status) = switchable("b").await;
    let (c, _) = switchable("c").await;
    let cfg = config(
        &[a.addr, b.addr, c.addr],
        "kind = \"http\"\npath = \"/healthz\"",
    )
    .replace(
        "[clusters.health_check]",
        "panic_threshold = 50\n[clusters.health_check]",
    );
    let p = TestProxy::start(&cfg).await;
    eventually("checks ran", || c.request_count() >= 2).await;
    a_status.store(503, Ordering::SeqCst);
    eventually("a out", || {
        p.proxy.endpoint_available("c", a.addr) == Some(false)
    })
    .await;
    // 2 of 3 healthy: above the threshold, a gets nothing.
    assert!(all_from(&p, 12).await.iter().all(|n| n != "a"));
    b_status.store(503, Ordering::SeqCst);
    eventually("b unhealthy", || {
        p.proxy.cluster("c").is_some_and(|cl| {
            let set = cl.endpoints();
            !set.state.is_healthy(set.position(b.addr).unwrap())
        })
    })
    .await;
    // 1 of 3 healthy: panic, all three take requests again (they still answer).
    let names = all_from(&p, 12).await;
    for n in ["a", "b", "c"] {
        assert!(
            names.iter().any(|x| x == n),
            "{n} missing in panic mode: {names:?}"
        );
    }
}
