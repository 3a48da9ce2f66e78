//! Custom error pages on a route: a proxy-made 502 gets the page from a file (status and
//! `x-pylon-error` kept), an upstream 404 gets an inline page when the page says
//! `upstream = true`, and other upstream errors pass untouched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{Response, StatusCode};
use pylon_testkit::*;

#[tokio::test]
async fn proxy_made_and_chosen_upstream_errors_get_the_pages() {
    let origin = Origin::start(|req| async move {
        let status = match req.uri().path() {
            "/missing" => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut r = Response::new(full("the origin's own text"));
        *r.status_mut() = status;
        r
    })
    .await;
    // A port held bound but not listening: connections to it are refused.
    let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    held.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let dead = held.local_addr().unwrap().as_socket().unwrap();
    let dir = std::env::temp_dir().join(format!("pylon-error-pages-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("5xx.html"), "<h1>We are fixing it</h1>\n").unwrap();
    let p = TestProxy::start(&format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/down/"
cluster = "dead"
error_pages = [{{ status = [502, 503, 504], file = "{}" }}]

[[routes]]
path_prefix = "/"
cluster = "app"
error_pages = [{{ status = [404], body = "nothing here\n", upstream = true }}]

[[clusters]]
name = "dead"
endpoints = ["{}"]

[[clusters]]
name = "app"
endpoints = ["{}"]
"#,
        dir.join("5xx.html").display(),
        dead,
        origin.addr
    ))
    .await;
    let front = p.addr("front");
    let down = get(front, "/down/x").await;
    assert_eq!(down.status, 502);
    assert_eq!(
        down.header("x-pylon-error"),
        Some("upstream_connect_failed")
    );
    assert_eq!(
        down.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(down.text(), "<h1>We are fixing it</h1>\n");
    let missing = get(front, "/missing").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.text(), "nothing here\n");
    assert_eq!(
        missing.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let broken = get(front, "/broken").await;
    assert_eq!(broken.status, 500);
    assert_eq!(broken.text(), "the origin's own text");
    let _ = std::fs::remove_dir_all(&dir);
}
