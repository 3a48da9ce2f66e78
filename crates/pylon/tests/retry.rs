//! Retries: connect failures go to another endpoint for any method; configured statuses
//! and resets only for idempotent methods; small bodies are replayed; the retry budget
//! caps retries (counted at the origin).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use http::Request;
use pylon_testkit::*;

fn config(endpoints: &[SocketAddr], retry: &str) -> String {
    simple_config(endpoints, "", retry)
}

async fn status_origin(code: u16) -> Origin {
    Origin::start(move |_req: Request<hyper::body::Incoming>| async move {
        http::Response::builder()
            .status(code)
            .body(full(code.to_string()))
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_on_another_endpoint_for_any_method() {
    let dead = closed_port();
    let alive = Origin::echo().await;
    let retry = "[clusters.retry]\nmax_retries = 2\nbackoff_base = \"1ms\"";
    let p = TestProxy::start(&config(&[dead, alive.addr], retry)).await;
    for i in 0..20 {
        let req = Request::post("/submit")
            .header("host", "x")
            .body(body(format!("payload-{i}")))
            .unwrap();
        let a = send_h1(p.addr("front"), req).await;
        assert_eq!(a.status.as_u16(), 200, "request {i}: {a:?}");
        assert_eq!(
            a.json()["body_len"],
            format!("payload-{i}").len(),
            "the body was replayed"
        );
    }
    // Without retries, the dead endpoint shows.
    let p = TestProxy::start(&config(&[dead, alive.addr], "")).await;
    let mut failed = 0;
    for _ in 0..10 {
        if get(p.addr("front"), "/").await.status.as_u16() == 502 {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 5,
        "round robin sends every other request to the dead endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_are_retried_for_idempotent_methods_only() {
    let bad = status_origin(503).await;
    let good = status_origin(200).await;
    let retry = "[clusters.retry]\nmax_retries = 1\nbackoff_base = \"1ms\"";
    let p = TestProxy::start(&config(&[bad.addr, good.addr], retry)).await;
    for _ in 0..10 {
        assert_eq!(get(p.addr("front"), "/").await.status.as_u16(), 200);
    }
    let mut unavailable = 0;
    for _ in 0..10 {
        let req = Request::post("/")
            .header("host", "x")
            .body(body("x"))
            .unwrap();
        if send_h1(p.addr("front"), req).await.status.as_u16() == 503 {
            unavailable += 1;
        }
    }
    assert_eq!(
        unavailable, 5,
        "a POST that reached the upstream is not repeated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries() {
    let failing = status_origin(503).await;
    // A budget of zero: retries are configured but never allowed.
    let none = "[clusters.retry]\nmax_retries = 3\nbackoff_base = \"1ms\"\nbudget_percent = 0\nbudget_min_concurrent = 0";
    let p = TestProxy::start(&config(&[failing.addr], none)).await;
    for _ in 0..10 {
        assert_eq!(get(p.addr("front"), "/").await.status.as_u16(), 503);
    }
    assert_eq!(failing.request_count(), 10, "no retry went out");

    // A floor of one retrying request: each sequential request gets its full retries.
    let one = "[clusters.retry]\nmax_retries = 3\nbackoff_base = \"1ms\"\nbudget_percent = 0\nbudget_min_concurrent = 1";
    let p = TestProxy::start(&config(&[failing.addr], one)).await;
    for _ in 0..10 {
        assert_eq!(get(p.addr("front"), "/").await.status.as_u16(), 503);
    }
    assert_eq!(
        failing.request_count(),
        10 + 10 * 4,
        "1 try + 3 retries each"
    );
}

/// An origin answering `code` to every request once `release` holds.
async fn held_status_origin(code: u16, release: tokio::sync::watch::Receiver<bool>) -> Origin {
    Origin::start(move |_req: Request<hyper::body::Incoming>| {
        let mut release = release.clone();
        async move {
            let _ = release.wait_for(|r| *r).await;
            http::Response::builder()
                .status(code)
                .body(full(code.to_string()))
                .unwrap()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_stay_within_the_budget_percentage() {
    use std::sync::atomic::Ordering;
    // 40 requests in flight at once, half of them on an endpoint that fails. A budget of
    // 25% of the requests in flight allows 10 retrying at once: more than the floor
    // (2), fewer than the 20 that want one.
    const REQUESTS: usize = 40;
    const ALLOWED: u64 = 10;
    let (fail_now, fail_gate) = tokio::sync::watch::channel(false);
    let (answer_now, answer_gate) = tokio::sync::watch::channel(false);
    let failing = held_status_origin(503, fail_gate).await;
    let healthy = held_status_origin(200, answer_gate).await;
    let retry = "[clusters.retry]\nmax_retries = 1\nbackoff_base = \"1ms\"\nbudget_percent = 25\nbudget_min_concurrent = 2";
    let p = TestProxy::start(&config(&[failing.addr, healthy.addr], retry)).await;
    let c = p.proxy.cluster("c").unwrap();
    let addr = p.addr("front");
    let clients: Vec<_> = (0..REQUESTS)
        .map(|_| tokio::spawn(async move { get(addr, "/").await.status.as_u16() }))
        .collect();
    // Every first try is held at its endpoint: all 40 are in flight.
    eventually("every request reached an endpoint", || {
        failing.request_count() + healthy.request_count() == REQUESTS
    })
    .await;
    assert_eq!(
        (failing.request_count(), healthy.request_count()),
        (REQUESTS / 2, REQUESTS / 2),
        "round robin"
    );
    // The failing endpoint answers 503 now; the retries go to the healthy one, which
    // holds them, so each keeps its budget slot.
    fail_now.send_replace(true);
    eventually("every failed try was retried or refused a retry", || {
        c.retries.load(Ordering::Relaxed) + c.retry_budget_exhausted() == (REQUESTS / 2) as u64
    })
    .await;
    assert_eq!(
        c.retries.load(Ordering::Relaxed),
        ALLOWED,
        "25% of the 40 requests in flight"
    );
    assert_eq!(c.retry_budget_exhausted(), (REQUESTS / 2) as u64 - ALLOWED);
    eventually("the retries reached the healthy endpoint", || {
        healthy.request_count() == REQUESTS / 2 + ALLOWED as usize
    })
    .await;
    answer_now.send_replace(true);
    let mut statuses = Vec::new();
    for t in clients {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let unavailable = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(
        (ok, unavailable),
        (
            REQUESTS / 2 + ALLOWED as usize,
            REQUESTS / 2 - ALLOWED as usize
        ),
        "retried requests succeed; the others get the failed try's answer"
    );
    assert_eq!(
        failing.request_count(),
        REQUESTS / 2,
        "no retry went back to it"
    );
    assert_eq!(healthy.request_count(), REQUESTS / 2 + ALLOWED as usize);
}

/// An origin that holds every request until released.
async fn holding(release: std::sync::Arc<tokio::sync::Notify>) -> Origin {
    Origin::start(move |_req: Request<hyper::body::Incoming>| {
        let r = std::sync::Arc::clone(&release);
        async move {
            r.notified().await;
            http::Response::new(full("done"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_answers_503_overloaded_at_its_limits() {
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let origin = holding(std::sync::Arc::clone(&release)).await;

    // max_requests: the third concurrent request is refused at once.
    let p = TestProxy::start(&config(
        &[origin.addr],
        "[clusters.circuit_breaker]\nmax_requests = 2",
    ))
    .await;
    let addr = p.addr("front");
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "/").await }))
        .collect();
    eventually("two requests held at the origin", || {
        origin.request_count() == 2
    })
    .await;
    let refused = get(addr, "/").await;
    assert_eq!(refused.status.as_u16(), 503);
    assert_eq!(refused.header("x-pylon-error"), Some("overloaded"));
    assert_eq!(p.proxy.cluster("c").unwrap().overloaded(), 1);
    while held.iter().any(|t| !t.is_finished()) {
        release.notify_waiters();
        tokio::task::yield_now().await;
    }
    for t in held {
        assert_eq!(t.await.unwrap().text(), "done");
    }

    // max_connections: one upstream connection is busy; a second one may not open.
    let p = TestProxy::start(&config(
        &[origin.addr],
        "[clusters.circuit_breaker]\nmax_connections = 1",
    ))
    .await;
    let addr = p.addr("front");
    let before = origin.request_count();
    let held = tokio::spawn(async move { get(addr, "/").await });
    eventually("request held", || origin.request_count() == before + 1).await;
    assert_eq!(p.proxy.cluster("c").unwrap().open_connections(), 1);
    let refused = get(addr, "/").await;
    assert_eq!(refused.header("x-pylon-error"), Some("overloaded"));
    while !held.is_finished() {
        release.notify_waiters();
        tokio::task::yield_now().await;
    }
    assert_eq!(held.await.unwrap().text(), "done");
    // The connection went back to the pool: the next request reuses it.
    release.notify_waiters();
    let next = tokio::spawn(async move { get(addr, "/").await });
    while !next.is_finished() {
        release.notify_waiters();
        tokio::task::yield_now().await;
    }
    assert_eq!(next.await.unwrap().text(), "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_stopped_under_load_costs_no_client_errors() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let a = Origin::named("a").await;
    let b = Origin::named("b").await;
    let a_addr = a.addr;
    let extra = r#"
[clusters.retry]
max_retries = 2
backoff_base = "1ms"
[clusters.outlier_detection]
consecutive_failures = 2
base_ejection_time = "30s"
[clusters.health_check]
kind = "tcp"
interval = "100ms"
timeout = "200ms"
unhealthy_threshold = 2
"#;
    let p = TestProxy::start(&config(&[a.addr, b.addr], extra)).await;
    let addr = p.addr("front");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let req = Request::post("/order")
                    .header("host", "x")
                    .body(body("item=1"))
                    .unwrap();
                if send_h1(addr, req).await.status.as_u16() == 200 {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    eventually("load running on both", || {
        a.request_count() > 10 && b.request_count() > 10
    })
    .await;
    drop(a); // the origin stops
    eventually("stopped origin out of rotation", || {
        p.proxy.endpoint_available("c", a_addr) == Some(false)
    })
    .await;
    let before = ok.load(Ordering::SeqCst);
    eventually("load continues", || ok.load(Ordering::SeqCst) > before + 50).await;
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no client saw an error");
}
