//! The HTTP cache (routes with `cache = "zone"`), end to end over real sockets: what is
//! stored and what is not (RFC 9111 §3), freshness and `Age`, revalidation with 304
//! merging, the client's conditionals, `HEAD` and ranges answered from the store, Vary,
//! invalidation by unsafe methods, `stale-while-revalidate` and `stale-if-error`,
//! request collapsing with a streamed fill, targeted `CDN-Cache-Control`,
//! `Cache-Status` on every answer, purges and counters through the admin API, and bad
//! input that must store nothing wrong.
//!
//! The origin here is told by each request what to answer: `x-set-NAME: VALUE` makes it
//! send `NAME: VALUE`, `x-status` its status, `x-size` a body of that many bytes
//! (`x-chunked: 1` without a length), `x-gate: 1` holds the answer until the test opens
//! the gate. Its body is `#N`, N its request count, so a test sees which answer it got.
//! Times are controlled by the responses themselves (`Age`, `Date`), never by waiting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use pylon_testkit::*;
use tokio::sync::Notify;

/// The scripted origin, with the methods it received and the gate it holds answers at.
struct Script {
    origin: Origin,
    methods: Arc<std::sync::Mutex<Vec<String>>>,
    gate: Arc<Notify>,
}

async fn script() -> Script {
    let count = Arc::new(AtomicUsize::new(0));
    let methods = Arc::new(std::sync::Mutex::new(Vec::new()));
    let gate = Arc::new(Notify::new());
    let (m, g) = (Arc::clone(&methods), Arc::clone(&gate));
    let origin = Origin::start(move |req: Request<hyper::body::Incoming>| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        m.lock().unwrap().push(req.method().to_string());
        let g = Arc::clone(&g);
        async move {
            let h = req.headers();
            let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            if get("x-gate").is_some() {
                g.notified().await;
            }
            let mut resp = Response::builder();
            for (name, value) in h {
                if let Some(n) = name.as_str().strip_prefix("x-set-") {
                    resp = resp.header(n, value.clone());
                }
            }
            // Answers a conditional for the entity tag it would send with 304.
            let etag = get("x-set-etag");
            let inm = get("if-none-match");
            if let (Some(e), Some(i)) = (&etag, &inm)
                && i.split(',').any(|t| t.trim() == e)
            {
                return resp.status(304).body(full(Bytes::new())).unwrap();
            }
            let status: u16 = get("x-status").and_then(|s| s.parse().ok()).unwrap_or(200);
            resp = resp.status(status);
            let body = match get("x-size").and_then(|s| s.parse::<usize>().ok()) {
                Some(n) => Bytes::from(vec![b'x'; n]),
                None => Bytes::from(format!("#{n}")),
            };
            if get("x-chunked").is_some() {
                let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = body
                    .chunks(16 * 1024)
                    .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
                    .collect();
                let stream = futures_util::stream::iter(chunks);
                let b = http_body_util::StreamBody::new(stream)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                    .boxed();
                return resp.body(b).unwrap();
            }
            resp.body(full(body)).unwrap()
        }
    })
    .await;
    Script {
        origin,
        methods,
        gate,
    }
}

fn config(origin: SocketAddr, zone: &str) -> String {
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
cache = "z"

[[clusters]]
name = "c"
endpoints = ["{origin}"]

[[caches]]
name = "z"
{zone}
"#
    )
}

async fn start(zone: &str) -> (Script, TestProxy) {
    let s = script().await;
    let p = TestProxy::start(&config(s.origin.addr, zone)).await;
    (s, p)
}

async fn ask(p: &TestProxy, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "test.local");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send_h1(p.addr("front"), req.body(empty()).unwrap()).await
}

async fn get(p: &TestProxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    ask(p, Method::GET, path, headers).await
}

fn status_of(a: &Answer) -> String {
    a.header("cache-status").unwrap_or("").to_owned()
}

fn zone(p: &TestProxy) -> Arc<pylon_cache::Zone> {
    Arc::clone(&p.proxy.runtime().caches["z"].zone)
}

const FRESH: (&str, &str) = ("x-set-cache-control", "max-age=3600");

#[tokio::test]
async fn a_fresh_response_is_stored_and_served_with_its_age_and_cache_status() {
    let (s, p) = start("").await;
    let first = get(&p, "/a", &[FRESH]).await;
    assert_eq!((first.status.as_u16(), first.text()), (200, "#1".into()));
    assert!(
        status_of(&first).starts_with("Pylon; fwd=uri-miss; fwd-status=200; stored"),
        "{}",
        status_of(&first)
    );
    let second = get(&p, "/a", &[]).await;
    assert_eq!(second.text(), "#1");
    assert!(
        status_of(&second).starts_with("Pylon; hit; ttl="),
        "{}",
        status_of(&second)
    );
    assert!(second.header("age").is_some());
    assert_eq!(second.header("content-length"), Some("2"));
    // Another URL, another query: another key.
    assert_eq!(get(&p, "/a?x=1", &[FRESH]).await.text(), "#2");
    assert_eq!(s.origin.request_count(), 2);
    // HTTP/2 clients are served from the same store.
    let h2 = send_h2(
        p.addr("front"),
        Request::get("http://test.local/a").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(h2.text(), "#1");
    assert_eq!(s.origin.request_count(), 2);
}

#[tokio::test]
async fn what_rfc_9111_forbids_to_store_is_fetched_every_time() {
    let (s, p) = start("").await;
    let cases: [(&str, &[(&str, &str)]); 7] = [
        (
            "/no-store",
            &[("x-set-cache-control", "no-store, max-age=60")],
        ),
        (
            "/private",
            &[("x-set-cache-control", "private, max-age=60")],
        ),
        ("/auth", &[FRESH, ("authorization", "Bearer x")]),
        ("/cookie", &[FRESH, ("x-set-set-cookie", "id=1")]),
        ("/vary-star", &[FRESH, ("x-set-vary", "*")]),
        ("/created", &[("x-status", "201")]),
        ("/req-no-store", &[FRESH, ("cache-control", "no-store")]),
    ];
    for (path, headers) in cases {
        let a = get(&p, path, headers).await;
        let b = get(&p, path, headers).await;
        assert_ne!(a.text(), b.text(), "{path} was served from the cache");
        assert!(
            status_of(&b).contains("detail="),
            "{path}: {}",
            status_of(&b)
        );
    }
    assert_eq!(s.origin.request_count(), 14);
    // Authorization with `public` may be stored.
    get(
        &p,
        "/auth-public",
        &[
            ("authorization", "Bearer x"),
            ("x-set-cache-control", "public, max-age=60"),
        ],
    )
    .await;
    assert_eq!(
        get(&p, "/auth-public", &[("authorization", "Bearer y")])
            .await
            .text(),
        "#15"
    );
}

#[tokio::test]
async fn stale_responses_are_revalidated_and_a_304_updates_the_stored_headers() {
    let (s, p) = start("").await;
    let stale = [
        ("x-set-cache-control", "max-age=0"),
        ("x-set-etag", "\"v1\""),
    ];
    assert_eq!(get(&p, "/r", &stale).await.text(), "#1");
    // Stale: validated with the stored entity tag; the origin's 304 carries new fields.
    let again = get(
        &p,
        "/r",
        &[
            ("x-set-etag", "\"v1\""),
            ("x-set-cache-control", "max-age=600"),
            ("x-set-x-rev", "2"),
        ],
    )
    .await;
    assert_eq!((again.status.as_u16(), again.text()), (200, "#1".into()));
    assert_eq!(again.header("x-rev"), Some("2"));
    assert!(
        status_of(&again).contains("fwd=stale; fwd-status=304"),
        "{}",
        status_of(&again)
    );
    assert_eq!(s.origin.request_count(), 2);
    // Fresh for ten minutes now, with the merged headers.
    let third = get(&p, "/r", &[]).await;
    assert_eq!(
        (third.text(), third.header("x-rev")),
        ("#1".into(), Some("2"))
    );
    assert_eq!(s.origin.request_count(), 2);
    // The client can ask for revalidation (no-cache) or a younger answer (max-age=0).
    get(
        &p,
        "/r",
        &[("cache-control", "no-cache"), ("x-set-etag", "\"v1\"")],
    )
    .await;
    assert_eq!(s.origin.request_count(), 3);
    // A changed representation replaces the stored one.
    let changed = get(
        &p,
        "/r",
        &[
            ("cache-control", "max-age=0"),
            ("x-set-etag", "\"v2\""),
            FRESH,
        ],
    )
    .await;
    assert_eq!(changed.text(), "#4");
    assert_eq!(get(&p, "/r", &[]).await.text(), "#4");
}

#[tokio::test]
async fn client_conditionals_head_and_ranges_are_answered_from_the_store() {
    let (s, p) = start("").await;
    let lm = "Tue, 14 Nov 2023 22:13:20 GMT";
    get(
        &p,
        "/c",
        &[
            FRESH,
            ("x-set-etag", "\"e\""),
            ("x-set-last-modified", lm),
            ("x-size", "10"),
        ],
    )
    .await;
    let inm = get(&p, "/c", &[("if-none-match", "W/\"e\"")]).await;
    assert_eq!((inm.status.as_u16(), inm.body.len()), (304, 0));
    assert_eq!(inm.header("etag"), Some("\"e\""));
    let ims = get(&p, "/c", &[("if-modified-since", lm)]).await;
    assert_eq!(ims.status, 304);
    let other = get(&p, "/c", &[("if-none-match", "\"x\"")]).await;
    assert_eq!((other.status.as_u16(), other.body.len()), (200, 10));
    let head = ask(&p, Method::HEAD, "/c", &[]).await;
    assert_eq!((head.status.as_u16(), head.body.len()), (200, 0));
    assert_eq!(head.header("content-length"), Some("10"));
    let one = get(&p, "/c", &[("range", "bytes=2-4")]).await;
    assert_eq!((one.status.as_u16(), one.text()), (206, "xxx".into()));
    assert_eq!(one.header("content-range"), Some("bytes 2-4/10"));
    let many = get(&p, "/c", &[("range", "bytes=0-0,-2")]).await;
    assert_eq!(many.status, 206);
    assert!(
        many.header("content-type")
            .unwrap()
            .starts_with("multipart/byteranges; boundary=")
    );
    assert!(many.text().contains("Content-Range: bytes 8-9/10"));
    let none = get(&p, "/c", &[("range", "bytes=50-")]).await;
    assert_eq!(
        (none.status.as_u16(), none.header("content-range")),
        (416, Some("bytes */10"))
    );
    let changed = get(&p, "/c", &[("range", "bytes=0-1"), ("if-range", "\"old\"")]).await;
    assert_eq!((changed.status.as_u16(), changed.body.len()), (200, 10));
    assert_eq!(s.origin.request_count(), 1);
}

#[tokio::test]
async fn a_head_miss_fills_with_a_get_and_the_get_after_it_is_a_hit() {
    let (s, p) = start("").await;
    let head = ask(&p, Method::HEAD, "/h", &[FRESH]).await;
    assert_eq!((head.status.as_u16(), head.body.len()), (200, 0));
    eventually("the fill is stored", || zone(&p).fills.is_empty()).await;
    assert_eq!(get(&p, "/h", &[]).await.text(), "#1");
    assert_eq!(s.methods.lock().unwrap().as_slice(), ["GET"]);
}

#[tokio::test]
async fn vary_selects_variants_and_accept_encoding_is_normalised() {
    let (s, p) = start("").await;
    let vary = ("x-set-vary", "Accept-Language, Accept-Encoding");
    let fr = [
        FRESH,
        vary,
        ("accept-language", "fr"),
        ("accept-encoding", "gzip, br"),
    ];
    assert_eq!(get(&p, "/v", &fr).await.text(), "#1");
    let en = get(
        &p,
        "/v",
        &[
            FRESH,
            vary,
            ("accept-language", "en"),
            ("accept-encoding", "gzip, br"),
        ],
    )
    .await;
    assert_eq!(en.text(), "#2");
    assert!(
        status_of(&en).contains("fwd=vary-miss"),
        "{}",
        status_of(&en)
    );
    let fr_again = get(
        &p,
        "/v",
        &[
            ("accept-language", "fr"),
            ("accept-encoding", "BR;q=1, gzip"),
        ],
    )
    .await;
    assert_eq!(fr_again.text(), "#1");
    assert_eq!(
        get(
            &p,
            "/v",
            &[("accept-language", "en"), ("accept-encoding", "br,gzip")]
        )
        .await
        .text(),
        "#2"
    );
    assert_eq!(s.origin.request_count(), 2);
}

#[tokio::test]
async fn unsafe_methods_invalidate_their_url_and_their_location() {
    let (s, p) = start("").await;
    get(&p, "/doc", &[FRESH]).await;
    get(&p, "/other", &[FRESH]).await;
    assert_eq!(get(&p, "/doc", &[]).await.text(), "#1");
    let post = ask(&p, Method::POST, "/doc", &[]).await;
    assert!(
        status_of(&post).contains("fwd=method"),
        "{}",
        status_of(&post)
    );
    assert_eq!(get(&p, "/doc", &[FRESH]).await.text(), "#4");
    // A PUT elsewhere whose answer names /other in Location.
    ask(&p, Method::PUT, "/new", &[("x-set-location", "/other")]).await;
    assert_eq!(get(&p, "/other", &[]).await.text(), "#6");
    // A failed unsafe request invalidates nothing.
    ask(&p, Method::DELETE, "/doc", &[("x-status", "500")]).await;
    assert_eq!(get(&p, "/doc", &[]).await.text(), "#4");
    assert_eq!(s.origin.request_count(), 7);
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_in_the_background() {
    let (s, p) = start("").await;
    // Stale on arrival (Age past max-age) but within stale-while-revalidate.
    let swr = [
        (
            "x-set-cache-control",
            "max-age=1, stale-while-revalidate=600",
        ),
        ("x-set-age", "5"),
    ];
    assert_eq!(get(&p, "/swr", &swr).await.text(), "#1");
    let stale = get(&p, "/swr", &swr).await;
    assert_eq!(stale.text(), "#1");
    assert!(
        status_of(&stale).contains("detail=stale-while-revalidate"),
        "{}",
        status_of(&stale)
    );
    eventually("the background revalidation reached the origin", || {
        s.origin.request_count() == 2
    })
    .await;
    eventually("its answer is stored", || zone(&p).fills.is_empty()).await;
    assert_eq!(get(&p, "/swr", &[]).await.text(), "#2");
}

#[tokio::test]
async fn stale_if_error_answers_for_a_failing_upstream() {
    let (s, p) = start("").await;
    let sie = [
        ("x-set-cache-control", "max-age=1, stale-if-error=600"),
        ("x-set-age", "5"),
    ];
    assert_eq!(get(&p, "/e", &sie).await.text(), "#1");
    let failing = get(&p, "/e", &[("x-status", "503")]).await;
    assert_eq!(
        (failing.status.as_u16(), failing.text()),
        (200, "#1".into())
    );
    assert!(
        status_of(&failing).contains("fwd-status=503")
            && status_of(&failing).contains("detail=stale-if-error")
    );
    // Without the allowance the failure goes through.
    get(
        &p,
        "/e2",
        &[("x-set-cache-control", "max-age=1"), ("x-set-age", "5")],
    )
    .await;
    assert_eq!(get(&p, "/e2", &[("x-status", "503")]).await.status, 503);
    assert_eq!(s.origin.request_count(), 4);
}

#[tokio::test]
async fn stale_if_error_answers_when_the_upstream_is_unreachable() {
    // Answers once, then closes every connection without answering.
    let served = Arc::new(AtomicUsize::new(0));
    let n = Arc::clone(&served);
    let origin = RawOrigin::start(move |mut s: tokio::net::TcpStream| {
        let n = Arc::clone(&n);
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if n.fetch_add(1, Ordering::SeqCst) > 0 {
                return;
            }
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=1, stale-if-error=600\r\nAge: 5\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
        }
    })
    .await;
    let p = TestProxy::start(&config(origin.addr, "")).await;
    assert_eq!(get(&p, "/down", &[]).await.text(), "ok");
    let after = get(&p, "/down", &[]).await;
    assert_eq!((after.status.as_u16(), after.text()), (200, "ok".into()));
    assert!(
        status_of(&after).contains("detail=stale-if-error"),
        "{}",
        status_of(&after)
    );
}

#[tokio::test]
async fn concurrent_misses_collapse_into_one_upstream_request_and_stream_its_body() {
    let (s, p) = start("").await;
    let front = p.addr("front");
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(tokio::spawn(async move {
            let req = Request::get("/hot")
                .header("host", "test.local")
                .header("x-gate", "1")
                .header("x-set-cache-control", "max-age=60")
                .header("x-size", "300000")
                .header("x-chunked", "1")
                .body(empty())
                .unwrap();
            send_h1(front, req).await
        }));
    }
    let z = zone(&p);
    eventually(
        "one request upstream, nineteen waiting for its fill",
        || s.origin.request_count() == 1 && z.stats.waiting.load(Ordering::Relaxed) == 19,
    )
    .await;
    s.gate.notify_one();
    let mut stored = 0;
    for c in clients {
        let a = c.await.unwrap();
        assert_eq!((a.status.as_u16(), a.body.len()), (200, 300_000));
        let st = status_of(&a);
        if st.contains("stored") {
            stored += 1;
        } else {
            assert!(st.contains("collapsed"), "{st}");
        }
    }
    assert_eq!((stored, s.origin.request_count()), (1, 1));
    assert_eq!(z.stats.collapsed.load(Ordering::Relaxed), 19);
    assert_eq!(get(&p, "/hot", &[]).await.body.len(), 300_000);
}

#[tokio::test]
async fn a_targeted_cdn_cache_control_overrides_cache_control() {
    let (s, p) = start("").await;
    let targeted = [
        ("x-set-cache-control", "no-store"),
        ("x-set-cdn-cache-control", "max-age=600"),
    ];
    get(&p, "/t", &targeted).await;
    let again = get(&p, "/t", &[]).await;
    assert_eq!(again.text(), "#1");
    // The client still gets the origin's own Cache-Control.
    assert_eq!(again.header("cache-control"), Some("no-store"));
    assert_eq!(s.origin.request_count(), 1);
}

#[tokio::test]
async fn only_if_cached_is_answered_504_without_the_upstream() {
    let (s, p) = start("").await;
    let a = get(&p, "/oic", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(
        (a.status.as_u16(), a.header("x-pylon-error")),
        (504, Some("not_cached"))
    );
    assert!(status_of(&a).contains("detail=only-if-cached"));
    assert_eq!(s.origin.request_count(), 0);
}

#[tokio::test]
async fn bad_input_is_handled_and_nothing_wrong_is_stored() {
    let (s, p) = start("max_object = \"64KiB\"").await;
    // An unreadable max-age is stale: stored, revalidated next time.
    get(&p, "/bad-cc", &[("x-set-cache-control", "max-age=banana")]).await;
    assert_eq!(get(&p, "/bad-cc", &[]).await.text(), "#2");
    // A Vary naming more fields than kept: not stored.
    let many: Vec<String> = (0..40).map(|i| format!("x-f{i}")).collect();
    let vary = many.join(", ");
    get(&p, "/huge-vary", &[FRESH, ("x-set-vary", &vary)]).await;
    assert_eq!(get(&p, "/huge-vary", &[]).await.text(), "#4");
    // Larger than the zone's largest object, with and without a length: delivered
    // whole, not stored.
    for (path, chunked) in [("/big", false), ("/big-chunked", true)] {
        let mut h = vec![FRESH, ("x-size", "200000")];
        if chunked {
            h.push(("x-chunked", "1"));
        }
        let a = get(&p, path, &h).await;
        assert_eq!(a.body.len(), 200_000, "{path}");
        let b = get(&p, path, &h).await;
        assert_eq!(b.body.len(), 200_000, "{path}");
        assert!(!status_of(&b).contains("hit"), "{path}: {}", status_of(&b));
    }
    assert_eq!(s.origin.request_count(), 8);
    // It still serves and stores.
    get(&p, "/fine", &[FRESH]).await;
    assert_eq!(get(&p, "/fine", &[]).await.text(), "#9");
}

async fn admin(p: &TestProxy, method: Method, path: &str, text: &str) -> Answer {
    let a = p.proxy.admin_addr().await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(body(text.to_owned()))
        .unwrap();
    send_h1(a, req).await
}

#[tokio::test]
async fn the_admin_api_purges_by_url_prefix_and_tag_and_shows_the_zone() {
    let (s, p) = start("").await;
    get(&p, "/img/a", &[FRESH]).await;
    get(&p, "/img/b", &[FRESH, ("x-set-surrogate-key", "red blue")]).await;
    get(&p, "/doc/c", &[FRESH, ("x-set-cache-tag", "green")]).await;
    get(&p, "/img/a", &[]).await;
    let shown = admin(&p, Method::GET, "/caches/z", "").await.json();
    assert_eq!(
        (shown["entries"].as_u64(), shown["hits"].as_u64()),
        (Some(3), Some(1))
    );
    let purge = |what: &'static str| admin(&p, Method::POST, "/caches/z/purge", what);
    assert_eq!(purge(r#"{"tag": "blue"}"#).await.json()["purged"], 1);
    assert_eq!(get(&p, "/img/b", &[FRESH]).await.text(), "#4");
    let z = zone(&p);
    eventually("its fill is stored", || z.fills.is_empty()).await;
    assert_eq!(
        purge(r#"{"url": "http://test.local/doc/c"}"#).await.json()["purged"],
        1
    );
    assert_eq!(
        purge(r#"{"prefix": "http://test.local/img/"}"#)
            .await
            .json()["purged"],
        2
    );
    assert_eq!(get(&p, "/img/a", &[]).await.text(), "#5");
    assert_eq!(purge("{}").await.status, 400);
    assert_eq!(
        admin(&p, Method::POST, "/caches/nope/purge", "{}")
            .await
            .status,
        404
    );
    let metrics = admin(&p, Method::GET, "/metrics", "").await.text();
    assert!(
        metrics.contains("pylon_cache_hits_total{zone=\"z\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pylon_cache_purged_total{zone=\"z\"} 4"),
        "{metrics}"
    );
    assert_eq!(s.origin.request_count(), 5);
}

#[tokio::test]
async fn a_reload_keeps_a_zone_whose_settings_did_not_change() {
    let (s, p) = start("").await;
    get(&p, "/k", &[FRESH]).await;
    let cfg = config(s.origin.addr, "");
    let extra = format!(
        "{cfg}\n[[routes]]\nname = \"late\"\npath = \"/late\"\nrespond = {{ status = 204 }}\n"
    );
    let model = pylon_config::parse(&extra, "test.toml").unwrap();
    p.proxy.reload(&model).await.unwrap();
    assert_eq!(get(&p, "/k", &[]).await.text(), "#1");
    assert_eq!(s.origin.request_count(), 1);
}

#[tokio::test]
async fn three_edges_sharing_three_parents_fetch_each_object_from_the_origin_once() {
    let s = script().await;
    let mut parents = Vec::new();
    for i in 0..3 {
        let zone = format!("status_name = \"parent-{i}\"");
        parents.push(TestProxy::start(&config(s.origin.addr, &zone)).await);
    }
    let endpoints: Vec<String> = parents
        .iter()
        .map(|p| format!("\"{}\"", p.addr("front")))
        .collect();
    let mut edges = Vec::new();
    for i in 0..3 {
        let toml = format!(
            r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
cluster = "parents"
cache = "z"

[[clusters]]
name = "parents"
endpoints = [{}]
lb = "ring_hash"
hash_key = "cache_key"

[[caches]]
name = "z"
status_name = "edge-{i}"
"#,
            endpoints.join(", ")
        );
        edges.push(TestProxy::start(&toml).await);
    }
    for edge in &edges {
        for object in 0..40 {
            let a = get(edge, &format!("/obj/{object}"), &[FRESH]).await;
            assert_eq!(a.status, 200);
        }
    }
    // Each object came from the origin once, and is stored on exactly one parent.
    assert_eq!(s.origin.request_count(), 40);
    let stored: u64 = parents.iter().map(|p| zone(p).size().0).sum();
    assert_eq!(stored, 40);
    assert!(
        parents.iter().all(|p| zone(p).size().0 > 0),
        "the objects are spread over the parents (each holds a third of 40 on average)"
    );
    // The second and third edges found every object in the parent tier.
    let parent_hits: u64 = parents
        .iter()
        .map(|p| zone(p).stats.hits.load(Ordering::Relaxed))
        .sum();
    assert_eq!(parent_hits, 80);
}

/// A fresh directory for a disk tier, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "pylon-cache-{name}-{}-{}",
            std::process::id(),
            pylon_lb::random_u64()
        ));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn the_disk_tier_survives_a_restart_and_purges_reach_it() {
    let s = script().await;
    let dir = TempDir::new("restart");
    let zone_toml = |memory: &str| {
        format!(
            "memory = \"{memory}\"\ndisk = {{ path = \"{}\", size = \"16MiB\" }}",
            dir.0.display()
        )
    };
    {
        let p = TestProxy::start(&config(s.origin.addr, &zone_toml("8MiB"))).await;
        get(&p, "/d/1", &[FRESH, ("x-set-surrogate-key", "group")]).await;
        get(&p, "/d/2", &[FRESH]).await;
        get(&p, "/d/3", &[FRESH, ("x-size", "100000")]).await;
        let z = zone(&p);
        eventually("three answers written to disk", || {
            z.disk.as_ref().unwrap().size().0 == 3
        })
        .await;
        p.proxy.shutdown(std::time::Duration::from_secs(5)).await;
    }
    // A new process (here a new instance) over the same directory.
    let p = TestProxy::start(&config(s.origin.addr, &zone_toml("8MiB"))).await;
    assert_eq!(zone(&p).disk.as_ref().unwrap().size().0, 3);
    let one = get(&p, "/d/1", &[]).await;
    assert_eq!(one.text(), "#1");
    assert!(status_of(&one).contains("hit"), "{}", status_of(&one));
    assert_eq!(get(&p, "/d/3", &[]).await.body.len(), 100_000);
    assert_eq!(s.origin.request_count(), 3);
    // A reload that changes the zone's memory makes a new zone over the same files.
    let model =
        pylon_config::parse(&config(s.origin.addr, &zone_toml("4MiB")), "test.toml").unwrap();
    p.proxy.reload(&model).await.unwrap();
    assert_eq!(get(&p, "/d/2", &[]).await.text(), "#2");
    // Purges reach the disk tier: by tag (/d/1) and by URL (/d/2).
    let purge = |what: &'static str| admin(&p, Method::POST, "/caches/z/purge", what);
    assert_eq!(purge(r#"{"tag": "group"}"#).await.json()["purged"], 1);
    assert_eq!(
        purge(r#"{"url": "http://test.local/d/2"}"#).await.json()["purged"],
        1
    );
    let z = zone(&p);
    assert_eq!(z.disk.as_ref().unwrap().size().0, 1);
    assert_eq!(get(&p, "/d/1", &[FRESH]).await.text(), "#4");
    assert_eq!(get(&p, "/d/2", &[FRESH]).await.text(), "#5");
}

#[tokio::test]
async fn a_fill_whose_upstream_breaks_off_is_never_stored() {
    // Promises 100 bytes, sends 40, closes; then answers whole.
    let served = Arc::new(AtomicUsize::new(0));
    let n = Arc::clone(&served);
    let origin = RawOrigin::start(move |mut s: tokio::net::TcpStream| {
        let n = Arc::clone(&n);
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let first = n.fetch_add(1, Ordering::SeqCst) == 0;
            let body = if first { vec![b'a'; 40] } else { vec![b'b'; 100] };
            let head = "HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 100\r\nConnection: close\r\n\r\n";
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body).await;
        }
    })
    .await;
    let p = TestProxy::start(&config(origin.addr, "")).await;
    let front = p.addr("front");
    let req = b"GET /broken HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n";
    let cut = raw(front, req).await;
    assert!(cut.starts_with("HTTP/1.1 200"), "{cut}");
    assert!(!cut.contains(&"b".repeat(100)));
    let z = zone(&p);
    eventually("the failed fill is counted", || {
        z.stats.fills_failed.load(Ordering::Relaxed) == 1 && z.fills.is_empty()
    })
    .await;
    assert_eq!(z.size().0, 0, "nothing stored");
    // The next request goes to the origin and gets (and stores) the whole answer.
    let whole = raw(front, req).await;
    assert!(whole.ends_with(&"b".repeat(100)), "{whole}");
    assert_eq!(served.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn requests_are_not_collapsed_onto_an_answer_they_may_not_reuse() {
    let (s, p) = start("").await;
    let front = p.addr("front");
    let ask_gated = move || {
        tokio::spawn(async move {
            let req = Request::get("/private-ish")
                .header("host", "test.local")
                .header("x-gate", "1")
                .header("x-set-cache-control", "no-cache")
                .header("x-set-etag", "\"e\"")
                .body(empty())
                .unwrap();
            send_h1(front, req).await
        })
    };
    let (a, b) = (ask_gated(), ask_gated());
    let z = zone(&p);
    eventually("one request upstream, one waiting for its fill", || {
        s.origin.request_count() == 1 && z.stats.waiting.load(Ordering::Relaxed) == 1
    })
    .await;
    s.gate.notify_one();
    // The answer says no-cache: the waiting request goes upstream itself.
    eventually("the second request reached the origin", || {
        s.origin.request_count() == 2
    })
    .await;
    s.gate.notify_one();
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let mut bodies = vec![a.text(), b.text()];
    bodies.sort();
    assert_eq!(bodies, vec!["#1", "#2"]);
    assert_eq!(z.stats.collapsed.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_304_for_another_representation_is_a_502_not_an_empty_answer() {
    let (s, p) = start("").await;
    get(
        &p,
        "/m",
        &[
            ("x-set-cache-control", "max-age=0"),
            ("x-set-etag", "\"v1\""),
        ],
    )
    .await;
    // The origin answers the cache's If-None-Match "v1" with a 304 naming "v2".
    let a = get(&p, "/m", &[("x-status", "304"), ("x-set-etag", "\"v2\"")]).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.header("x-pylon-error"), Some("upstream_invalid_response"));
    // The stored answer is gone: the next request fetches anew.
    assert_eq!(get(&p, "/m", &[FRESH]).await.text(), "#3");
    assert_eq!(s.origin.request_count(), 3);
}
