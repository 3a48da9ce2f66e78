//! Upstream connection pools end to end: warm connections handed to HTTP/1.1 requests
//! (plain and TLS) and refilled, one ready HTTP/2 connection, more HTTP/2 connections when the
//! origin's stream limit is reached, and PING keepalive dropping a connection whose
//! peer stopped answering.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pylon_proxy::cluster::EndpointPool;
use pylon_testkit::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, watch};

/// The pool of the only endpoint of cluster `c`.
fn pool(p: &TestProxy) -> Arc<EndpointPool> {
    Arc::clone(&p.proxy.cluster("c").unwrap().endpoints().pools[0])
}

/// GET through Pylon within the deadline; the answer must be 200.
async fn ok(addr: SocketAddr, path: &str) {
    let a = tokio::time::timeout(DEADLINE, get(addr, path))
        .await
        .expect("answer within the deadline");
    assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_take_warm_connections_and_the_pool_refills_after_a_burst() {
    const BURST: usize = 6;
    // `/burst` answers once all the burst's requests are in, each with
    // `Connection: close`: the burst needs BURST connections at once and leaves none.
    let barrier = Arc::new(Barrier::new(BURST));
    let origin = Origin::start(move |req| {
        let barrier = Arc::clone(&barrier);
        async move {
            let mut answer = Response::builder();
            if req.uri().path() == "/burst" {
                barrier.wait().await;
                answer = answer.header("connection", "close");
            }
            answer.body(full("ok")).unwrap()
        }
    })
    .await;
    let p = TestProxy::start(&simple_config(
        &[origin.addr],
        "",
        "pool = { warm_connections = 2 }",
    ))
    .await;
    let front = p.addr("front");
    let pool = pool(&p);

    eventually("two connections open before any request", || {
        origin.connection_count() == 2 && pool.ready_connections() == 2
    })
    .await;
    for _ in 0..2 {
        ok(front, "/").await;
    }
    assert_eq!(origin.connection_count(), 2, "both requests used warm ones");
    assert_eq!(origin.request_count(), 2);

    let burst: Vec<_> = (0..BURST)
        .map(|_| tokio::spawn(async move { ok(front, "/burst").await }))
        .collect();
    for t in burst {
        t.await.unwrap();
    }
    // The burst took the two ready connections and opened four; all closed after
    // their answer, and two new ones replace them.
    eventually("refilled to the warm count", || {
        pool.ready_connections() == 2 && origin.connection_count() == BURST + 2
    })
    .await;
    for _ in 0..2 {
        ok(front, "/").await;
    }
    assert_eq!(
        origin.connection_count(),
        BURST + 2,
        "the first requests after the burst used the refilled connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_connections_of_a_tls_cluster_carry_requests() {
    let ca = TestCa::new("Upstream CA");
    let server = ca.server(&["backend.internal"]);
    let origin = Origin::start_tls(origin_tls_config(&server, None, &["http/1.1"])).await;
    let p = TestProxy::start(&simple_config(
        &[origin.addr],
        "",
        "tls = { insecure_skip_verify = true }\npool = { warm_connections = 1 }",
    ))
    .await;
    let pool = pool(&p);
    eventually("one connection open before any request", || {
        origin.connection_count() == 1 && pool.ready_connections() == 1
    })
    .await;
    let a = tokio::time::timeout(DEADLINE, get(p.addr("front"), "/"))
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["version"], "HTTP/1.1");
    assert_eq!(
        origin.connection_count(),
        1,
        "the request used the warm one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_cluster_keeps_one_ready_connection() {
    let origin = Origin::named("a").await;
    let p = TestProxy::start(&simple_config(
        &[origin.addr],
        "",
        "protocol = \"h2c\"\npool = { warm_connections = 1 }",
    ))
    .await;
    let pool = pool(&p);
    eventually("one HTTP/2 connection open before any request", || {
        origin.connection_count() == 1 && pool.h2_connections() == 1
    })
    .await;
    for _ in 0..3 {
        ok(p.addr("front"), "/").await;
    }
    assert_eq!(origin.connection_count(), 1);
}

/// An h2c origin allowing `max_streams` streams per connection, counting connections
/// and requests in progress; requests are held until `release` turns true.
async fn h2_origin(
    max_streams: u32,
    release: watch::Receiver<bool>,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(AtomicUsize::new(0));
    let (c, h) = (Arc::clone(&connections), Arc::clone(&held));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let (h, release) = (Arc::clone(&h), release.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let (h, mut release) = (Arc::clone(&h), release.clone());
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        let _ = release.wait_for(|r| *r).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(max_streams)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, connections, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_h2_connections_open_when_the_stream_limit_is_reached() {
    let (release, rx) = watch::channel(false);
    let (origin, connections, held) = h2_origin(2, rx).await;
    let p = TestProxy::start(&simple_config(&[origin], "", "protocol = \"h2c\"")).await;
    let front = p.addr("front");
    let calls: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { ok(front, "/slow").await }))
        .collect();
    // Two streams per connection: six requests at the origin at once need three.
    eventually("all six requests reach the origin", || {
        held.load(Ordering::SeqCst) == 6
    })
    .await;
    let opened = connections.load(Ordering::SeqCst);
    assert!(
        (2..=4).contains(&opened),
        "{opened} connections: more than one, within max_h2_connections (4)"
    );
    assert_eq!(pool(&p).h2_streams(), 6);
    release.send_replace(true);
    for c in calls {
        c.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_whose_peer_stops_answering_pings_is_replaced() {
    let origin = Origin::named("a").await;
    // A TCP relay in front of the origin that can stop forwarding on the connections
    // it has (holding them open), while new ones go through.
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let (freeze, frozen) = watch::channel(0u32);
    let target = origin.addr;
    tokio::spawn(async move {
        loop {
            let (mut client, _) = relay.accept().await.unwrap();
            let mut frozen = frozen.clone();
            frozen.mark_unchanged();
            tokio::spawn(async move {
                let mut upstream = TcpStream::connect(target).await.unwrap();
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    _ = frozen.changed() => std::future::pending::<()>().await,
                }
            });
        }
    });
    let p = TestProxy::start(&simple_config(
        &[relay_addr],
        "",
        "protocol = \"h2c\"\npool = { h2_keepalive_interval = \"200ms\", h2_keepalive_timeout = \"300ms\" }",
    ))
    .await;
    let front = p.addr("front");
    let pool = pool(&p);
    ok(front, "/").await;
    assert_eq!(origin.connection_count(), 1);
    assert_eq!(pool.h2_connections(), 1);

    freeze.send_replace(1);
    eventually("the unanswered PING closed the connection", || {
        pool.h2_connections() == 0
    })
    .await;
    ok(front, "/").await;
    assert_eq!(origin.connection_count(), 2, "a new connection was opened");
    assert_eq!(pool.h2_connections(), 1);
}
