//! Static files (`files` routes) with curl and raw requests: index files, a directory's
//! redirect and listing, a 1 MiB file whole and by range (206, 416), 304s for
//! `If-None-Match` and `If-Modified-Since`, large files with `sendfile(2)` to cleartext
//! HTTP/1.1 clients (in frames over HTTP/2), precompressed siblings (a real `gzip -k` one
//! decoded by curl), `HEAD`, and every way out of the root refused: `..`, encoded
//! slashes and dots, NUL, and a symbolic link outside.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use http::{Method, Request, StatusCode};
use pylon_testkit::*;

struct Site {
    dir: PathBuf,
    root: PathBuf,
    big: Vec<u8>,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn site(name: &str) -> Site {
    let dir = std::env::temp_dir().join(format!("pylon-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let root = dir.join("www");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("index.html"), "<h1>home</h1>\n").unwrap();
    let js = "function hello() { return 'hello from a static file'; }\n".repeat(50);
    std::fs::write(root.join("app.js"), &js).unwrap();
    let gz = std::process::Command::new("gzip")
        .args(["-k", "-9"])
        .arg(root.join("app.js"))
        .status()
        .expect("gzip runs");
    assert!(gz.success());
    std::fs::write(root.join("app.js.br"), b"pretend-brotli").unwrap();
    let big: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("sub/data.bin"), &big).unwrap();
    std::fs::write(root.join("sub/<odd> & name.txt"), "odd").unwrap();
    std::fs::write(dir.join("secret.txt"), "outside the root").unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), root.join("escape.txt")).unwrap();
    std::os::unix::fs::symlink(root.join("index.html"), root.join("inside.html")).unwrap();
    Site { dir, root, big }
}

async fn start(s: &Site) -> TestProxy {
    TestProxy::start(&format!(
        r#"
[access_log]
enabled = false

[admin]
bind = "127.0.0.1:0"

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
host = "browse.test"
files = {{ root = "{0}", browse = true }}

[[routes]]
path_prefix = "/"
files = {{ root = "{0}" }}
"#,
        s.root.display()
    ))
    .await
}

async fn get(p: &TestProxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut r = Request::get(path).header("host", "files.test");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    send_h1(p.addr("front"), r.body(empty()).unwrap()).await
}

#[tokio::test]
async fn files_are_served_whole_by_range_and_conditionally() {
    let s = site("serve");
    let p = start(&s).await;
    let home = get(&p, "/", &[]).await;
    assert_eq!(home.status, 200);
    assert_eq!(home.text(), "<h1>home</h1>\n");
    assert_eq!(home.header("content-type"), Some("text/html"));
    assert_eq!(
        get(&p, "/inside.html", &[]).await.status,
        200,
        "a link inside the root"
    );

    // 1 MiB whole with curl, then a range.
    let url = format!("http://{}/sub/data.bin", p.addr("front"));
    let whole = curl(&[&url]).await;
    assert_eq!(whole.stdout, s.big);
    let part = curl(&["-D", "/dev/stderr", "-r", "1000-1999", &url]).await;
    let head = String::from_utf8_lossy(&part.stderr).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert!(
        head.contains("content-range: bytes 1000-1999/1048576"),
        "{head}"
    );
    assert_eq!(part.stdout, &s.big[1000..2000]);
    let tail = get(&p, "/sub/data.bin", &[("range", "bytes=-10")]).await;
    assert_eq!(tail.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.body.as_ref(), &s.big[s.big.len() - 10..]);
    let beyond = get(&p, "/sub/data.bin", &[("range", "bytes=2000000-")]).await;
    assert_eq!(beyond.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(beyond.header("content-range"), Some("bytes */1048576"));

    // Validators and 304s.
    let first = get(&p, "/app.js", &[]).await;
    let etag = first.header("etag").unwrap().to_owned();
    let modified = first.header("last-modified").unwrap().to_owned();
    assert_eq!(
        get(&p, "/app.js", &[("if-none-match", &etag)]).await.status,
        304
    );
    assert_eq!(
        get(&p, "/app.js", &[("if-modified-since", &modified)])
            .await
            .status,
        304
    );
    assert_eq!(
        get(&p, "/app.js", &[("if-none-match", "\"other\"")])
            .await
            .status,
        200
    );
    // An If-Range that no longer matches: the whole file.
    let stale = get(
        &p,
        "/sub/data.bin",
        &[("range", "bytes=0-9"), ("if-range", "\"old\"")],
    )
    .await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body.len(), 1 << 20);

    // HEAD: the length, no body.
    let req = Request::head("/sub/data.bin")
        .header("host", "t")
        .body(empty())
        .unwrap();
    let h = send_h1(p.addr("front"), req).await;
    assert_eq!(h.header("content-length"), Some("1048576"));
    assert!(h.body.is_empty());
    let post = send_h1(
        p.addr("front"),
        Request::builder()
            .method(Method::POST)
            .uri("/app.js")
            .header("host", "t")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let missing = get(&p, "/nope.txt", &[]).await;
    assert_eq!(
        (missing.status.as_u16(), missing.header("x-pylon-error")),
        (404, Some("file_not_found"))
    );
}

#[tokio::test]
async fn large_files_go_out_with_sendfile_to_cleartext_http1_clients() {
    let s = site("sendfile");
    let p = start(&s).await;
    let sent = |m: String| metric(&m, "pylon_sendfile_bytes_total");
    assert_eq!(sent(p.metrics().await), 0);
    // Twice on one keep-alive connection: the second answer follows the first intact.
    let url = format!("http://{}/sub/data.bin", p.addr("front"));
    let twice = curl(&[&url, &url]).await;
    assert_eq!(twice.stdout.len(), 2 << 20);
    assert!(twice.stdout == [s.big.clone(), s.big.clone()].concat());
    assert_eq!(sent(p.metrics().await), 2 << 20);
    // A range is sent from its offset.
    let part = curl(&["-r", "5000-9999", &url]).await;
    assert_eq!(part.stdout, &s.big[5000..10000]);
    assert_eq!(sent(p.metrics().await), (2 << 20) + 5000);
    // HTTP/2 gets the file in frames, and a small file is read whole: no sendfile.
    let req = Request::get(format!("http://{}/sub/data.bin", p.addr("front")))
        .body(empty())
        .unwrap();
    let h2 = send_h2(p.addr("front"), req).await;
    assert_eq!(h2.status, 200);
    assert!(h2.body.as_ref() == s.big.as_slice());
    assert_eq!(get(&p, "/app.js", &[]).await.status, 200);
    assert_eq!(sent(p.metrics().await), (2 << 20) + 5000);
}

#[tokio::test]
async fn precompressed_siblings_go_to_clients_that_accept_them() {
    let s = site("pre");
    let p = start(&s).await;
    let original = std::fs::read(s.root.join("app.js")).unwrap();
    let url = format!("http://{}/app.js", p.addr("front"));
    // A real gzip sibling, decoded by curl.
    let out = curl(&[
        "-D",
        "/dev/stderr",
        "-H",
        "accept-encoding: gzip",
        "--compressed",
        &url,
    ])
    .await;
    let head = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    assert_eq!(out.stdout, original);
    // brotli preferred when both are accepted.
    let br = get(&p, "/app.js", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert_eq!(br.body.as_ref(), b"pretend-brotli");
    assert_eq!(br.header("content-type"), Some("text/javascript"));
    // Accepting a coding without a sibling: the file itself, and it varies.
    let zstd = get(&p, "/app.js", &[("accept-encoding", "zstd")]).await;
    assert_eq!(zstd.body.as_ref(), original.as_slice());
    assert_eq!(zstd.header("vary"), Some("accept-encoding"));
    assert!(zstd.header("content-encoding").is_none());
    // Accepting none: the file itself, which is right for every client (no lookups).
    let plain = get(&p, "/app.js", &[]).await;
    assert_eq!(plain.body.as_ref(), original.as_slice());
    assert!(plain.header("content-encoding").is_none());
    assert_ne!(plain.header("etag"), br.header("etag"));
}

#[tokio::test]
async fn directories_redirect_list_or_refuse() {
    let s = site("dirs");
    let p = start(&s).await;
    let moved = get(&p, "/sub?x=1", &[]).await;
    assert_eq!(moved.status, 301);
    assert_eq!(moved.header("location"), Some("/sub/?x=1"));
    let no_listing = get(&p, "/sub/", &[]).await;
    assert_eq!(
        (
            no_listing.status.as_u16(),
            no_listing.header("x-pylon-error")
        ),
        (403, Some("file_forbidden"))
    );
    let listed = send_h1(
        p.addr("front"),
        Request::get("/sub/")
            .header("host", "browse.test")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(listed.status, 200);
    let html = listed.text();
    assert!(
        html.contains("<a href=\"data%2Ebin\">data.bin</a>"),
        "{html}"
    );
    assert!(html.contains("&lt;odd&gt; &amp; name.txt"), "{html}");
    assert!(!html.contains("<odd>"));
}

#[tokio::test]
async fn every_way_out_of_the_root_is_refused() {
    let s = site("escape");
    let p = start(&s).await;
    let front = p.addr("front");
    for target in [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/sub%2f..%2f..%2fsecret.txt",
        "/sub%5c..%5c..%5csecret.txt",
        "/app.js%00.html",
    ] {
        let answer = raw(
            front,
            format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
        assert!(answer.contains("path_refused"), "{target}: {answer}");
        assert!(!answer.contains("outside the root"));
    }
    let link = get(&p, "/escape.txt", &[]).await;
    assert_eq!(
        (link.status.as_u16(), link.header("x-pylon-error")),
        (403, Some("file_forbidden"))
    );
    assert!(!link.text().contains("outside the root"));
}

/// Small files are kept in memory for a second after they are read: a file changed,
/// removed or replaced by a link out of the root is answered as it is now once that
/// second has passed, and never from another path's entry.
#[tokio::test]
async fn small_files_kept_in_memory_follow_the_disk_within_a_second() {
    let s = site("kept");
    let p = start(&s).await;
    let page = s.root.join("page.txt");
    std::fs::write(&page, "first").unwrap();
    assert_eq!(get(&p, "/page.txt", &[]).await.text(), "first");
    let etag = get(&p, "/page.txt", &[])
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    // The same bytes under another path stay its own.
    std::fs::write(s.root.join("other.txt"), "other").unwrap();
    assert_eq!(get(&p, "/other.txt", &[]).await.text(), "other");
    // Changed: the new content and validators within the second.
    std::fs::write(&page, "second, longer").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let a = get(&p, "/page.txt", &[]).await;
        if a.text() == "second, longer" {
            assert_ne!(a.header("etag").unwrap(), etag);
            assert_eq!(a.header("content-length"), Some("14"));
            break;
        }
        assert_eq!(a.text(), "first", "old or new, never a mix");
        assert!(
            std::time::Instant::now() < deadline,
            "the change was not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A conditional request against the kept entry gets its 304.
    let now = get(&p, "/page.txt", &[])
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    let cond = get(&p, "/page.txt", &[("if-none-match", now.as_str())]).await;
    assert_eq!(cond.status, StatusCode::NOT_MODIFIED);
    // Replaced by a link out of the root: refused again once the second has passed.
    std::fs::remove_file(&page).unwrap();
    std::os::unix::fs::symlink(s.dir.join("secret.txt"), &page).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let a = get(&p, "/page.txt", &[]).await;
        if a.status == StatusCode::FORBIDDEN {
            break;
        }
        assert_ne!(a.text(), "outside the root");
        assert!(
            std::time::Instant::now() < deadline,
            "the link was not refused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
