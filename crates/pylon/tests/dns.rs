//! DNS discovery: endpoints given as host names or SRV names follow the DNS answers
//! (served by the testkit's DNS server), without dropping requests in flight, and a
//! failing resolver keeps the last known endpoints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use pylon_testkit::*;

fn config(dns: &DnsServer, endpoints: &str) -> String {
    format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
cluster = "c"

[[clusters]]
name = "c"
endpoints = [{endpoints}]
host_header = "endpoint"

[clusters.dns]
resolvers = ["{}"]
min_ttl = "200ms"
"#,
        dns.addr
    )
}

/// Two named origins on the same port, at 127.0.0.1 and 127.0.0.2.
async fn twin_origins() -> (Origin, Origin) {
    loop {
        let a = Origin::named("a").await;
        let other: SocketAddr = format!("127.0.0.2:{}", a.addr.port()).parse().unwrap();
        if std::net::TcpListener::bind(other).is_ok() {
            return (a, Origin::named_at("b", other).await);
        }
    }
}

async fn origin_of(addr: SocketAddr) -> String {
    let a = get(addr, "/").await;
    assert_eq!(a.status.as_u16(), 200, "{a:?}");
    a.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_name_that_changes_its_answer_moves_traffic() {
    let (a, b) = twin_origins().await;
    let dns = DnsServer::start().await;
    dns.set_ips("app.pylon.test", &[a.addr.ip()]);
    let p = TestProxy::start(&config(
        &dns,
        &format!("\"app.pylon.test:{}\"", a.addr.port()),
    ))
    .await;
    let front = p.addr("front");
    for _ in 0..5 {
        assert_eq!(origin_of(front).await, "a");
    }
    // Host header "endpoint" names the DNS name, not the address.
    let echo = Origin::echo().await;
    dns.set_ips("echo.pylon.test", &[echo.addr.ip()]);
    let p2 = TestProxy::start(&config(
        &dns,
        &format!("\"echo.pylon.test:{}\"", echo.addr.port()),
    ))
    .await;
    let seen = get(p2.addr("front"), "/").await.json();
    assert_eq!(
        seen["headers"]["host"][0],
        format!("echo.pylon.test:{}", echo.addr.port())
    );

    // A keep-alive connection held across the change keeps working.
    let mut held = h1_conn(front).await;
    let req = || Request::get("/").header("host", "x").body(empty()).unwrap();
    let r = collect(held.send_request(req()).await.unwrap()).await;
    assert_eq!(r.text(), "a");

    dns.set_ips("app.pylon.test", &[b.addr.ip()]);
    let mut last = String::new();
    for _ in 0..200 {
        last = origin_of(front).await;
        if last == "b" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, "b", "traffic moved to the new address");
    let c = p.proxy.cluster("c").unwrap();
    assert!(c.dns_updates.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(c.endpoints().len(), 1, "the old address left the set");
    for _ in 0..5 {
        assert_eq!(origin_of(front).await, "b");
    }
    held.ready().await.unwrap();
    let r = collect(held.send_request(req()).await.unwrap()).await;
    assert_eq!(r.status.as_u16(), 200);

    // Both addresses: both take traffic.
    dns.set_ips("app.pylon.test", &[a.addr.ip(), b.addr.ip()]);
    eventually("two endpoints", || c.endpoints().len() == 2).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(origin_of(front).await);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_targets_ports_and_weights() {
    let one = Origin::named("one").await;
    let three = Origin::named("three").await;
    let backup = Origin::named("backup").await;
    let dns = DnsServer::start().await;
    dns.set_ips("one.pylon.test", &[one.addr.ip()]);
    dns.set_ips("three.pylon.test", &[three.addr.ip()]);
    dns.set_ips("backup.pylon.test", &[backup.addr.ip()]);
    dns.set_srv(
        "_http._tcp.app.pylon.test",
        &[
            (10, 1, one.addr.port(), "one.pylon.test"),
            (10, 3, three.addr.port(), "three.pylon.test"),
            // A higher priority value: used only when the lower ones are gone.
            (20, 1, backup.addr.port(), "backup.pylon.test"),
        ],
    );
    let p = TestProxy::start(&config(&dns, "{ srv = \"_http._tcp.app.pylon.test\" }")).await;
    let front = p.addr("front");
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for _ in 0..40 {
        *counts.entry(origin_of(front).await).or_default() += 1;
    }
    assert_eq!(counts.get("one"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("three"), Some(&30), "{counts:?}");
    assert_eq!(counts.get("backup"), None, "{counts:?}");

    dns.set_srv(
        "_http._tcp.app.pylon.test",
        &[(20, 1, backup.addr.port(), "backup.pylon.test")],
    );
    let c = p.proxy.cluster("c").unwrap();
    eventually("the SRV change applied", || {
        let set = c.endpoints();
        set.len() == 1 && set.pools[0].address == backup.addr
    })
    .await;
    assert_eq!(origin_of(front).await, "backup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_resolver_keeps_the_last_known_endpoints() {
    let a = Origin::named("a").await;
    let dns = DnsServer::start().await;
    dns.set_ips("app.pylon.test", &[a.addr.ip()]);
    let cfg = config(&dns, &format!("\"app.pylon.test:{}\"", a.addr.port())).replace(
        "min_ttl = \"200ms\"",
        "min_ttl = \"200ms\"\ntimeout = \"500ms\"",
    );
    let p = TestProxy::start(&cfg).await;
    let front = p.addr("front");
    assert_eq!(origin_of(front).await, "a");
    let c = p.proxy.cluster("c").unwrap();
    dns.set_failing(true);
    eventually("resolution failures counted", || {
        c.dns_failures.load(std::sync::atomic::Ordering::Relaxed) >= 2
    })
    .await;
    for _ in 0..5 {
        assert_eq!(origin_of(front).await, "a", "the last known set serves");
    }
    // A name that stops existing also keeps its last known addresses.
    dns.set_failing(false);
    dns.set_ips("app.pylon.test", &[]);
    let before = dns.queries();
    eventually("asked again", || dns.queries() > before + 2).await;
    assert_eq!(origin_of(front).await, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_unknown_at_start_answers_503_until_it_resolves() {
    let a = Origin::named("a").await;
    let dns = DnsServer::start().await;
    let mut cfg = config(&dns, &format!("\"late.pylon.test:{}\"", a.addr.port()));
    cfg = cfg.replace(
        "min_ttl = \"200ms\"",
        "min_ttl = \"50ms\"\ntimeout = \"1s\"",
    );
    let p = TestProxy::start(&cfg).await;
    let front = p.addr("front");
    let r = get(front, "/").await;
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(r.header("x-pylon-error"), Some("no_endpoint"));
    dns.set_ips("late.pylon.test", &[a.addr.ip()]);
    let c = p.proxy.cluster("c").unwrap();
    eventually("resolved", || c.endpoints().len() == 1).await;
    assert_eq!(origin_of(front).await, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_when_its_endpoint_leaves_the_set() {
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let r = std::sync::Arc::clone(&release);
    let slow = Origin::start(move |_req| {
        let r = std::sync::Arc::clone(&r);
        async move {
            r.notified().await;
            http::Response::new(full("finished"))
        }
    })
    .await;
    let dns = DnsServer::start().await;
    dns.set_ips("app.pylon.test", &[slow.addr.ip()]);
    let p = TestProxy::start(&config(
        &dns,
        &format!("\"app.pylon.test:{}\"", slow.addr.port()),
    ))
    .await;
    let front = p.addr("front");
    let in_flight = tokio::spawn(async move { get(front, "/").await });
    eventually("the request reached the origin", || {
        slow.request_count() == 1
    })
    .await;
    dns.set_ips("app.pylon.test", &["127.0.0.3".parse().unwrap()]);
    let c = p.proxy.cluster("c").unwrap();
    eventually("the set changed", || {
        c.endpoints().pools[0].address.ip().to_string() == "127.0.0.3"
    })
    .await;
    release.notify_one();
    let a = in_flight.await.unwrap();
    assert_eq!(a.status.as_u16(), 200);
    assert_eq!(a.text(), "finished");
}
