//! Response compression (`compression` on a route) with real decoders: curl
//! `--compressed` for gzip, brotli and zstd, and Python's `brotli` and `zstandard`
//! packages on the raw bytes; negotiation by q-value; answers left alone (small, not a
//! listed type, already encoded, `no-transform`, `HEAD` without a body); and a cache zone
//! storing each encoding as a variant of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{Request, Response, StatusCode};
use pylon_testkit::*;

/// A JSON document of about 40 KiB that compresses well.
fn document() -> String {
    let items: Vec<String> = (0..600)
        .map(|i| {
            format!("{{\"id\": {i}, \"name\": \"item number {i}\", \"tags\": [\"a\", \"b\"]}}")
        })
        .collect();
    format!("[{}]", items.join(","))
}

async fn origin() -> Origin {
    Origin::start(|req| async move {
        let path = req.uri().path().to_owned();
        let (ct, body, extra): (&str, Vec<u8>, Option<(&str, &str)>) = match path.as_str() {
            "/small" => ("application/json", b"{\"ok\": true}".to_vec(), None),
            "/png" => ("image/png", vec![0u8; 4096], None),
            "/encoded" => (
                "text/plain",
                b"not really gzip".to_vec(),
                Some(("content-encoding", "gzip")),
            ),
            "/raw" => (
                "text/plain",
                document().into_bytes(),
                Some(("cache-control", "public, no-transform")),
            ),
            "/cached" => (
                "application/json",
                document().into_bytes(),
                Some(("cache-control", "max-age=3600")),
            ),
            _ => (
                "application/json; charset=utf-8",
                document().into_bytes(),
                None,
            ),
        };
        let mut r = Response::new(full(body));
        r.headers_mut().insert("content-type", ct.parse().unwrap());
        r.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
        if let Some((k, v)) = extra {
            r.headers_mut().insert(k, v.parse().unwrap());
        }
        r
    })
    .await
}

async fn start() -> (Origin, TestProxy) {
    let o = origin().await;
    let p = TestProxy::start(&format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path = "/cached"
cluster = "c"
compression = true
cache = "z"

[[routes]]
path_prefix = "/"
cluster = "c"
compression = {{ algorithms = ["zstd", "br", "gzip"], min_size = "1KiB", gzip_level = 6 }}

[[clusters]]
name = "c"
endpoints = ["{}"]

[[caches]]
name = "z"
memory = "16MiB"
"#,
        o.addr
    ))
    .await;
    (o, p)
}

/// curl's headers (lower-case names) and body for `path` with `accept`.
async fn fetch(p: &TestProxy, path: &str, accept: &str, decode: bool) -> (String, Vec<u8>) {
    let url = format!("http://{}{path}", p.addr("front"));
    let mut args = vec!["-D", "/dev/stderr", "-H"];
    let h = format!("accept-encoding: {accept}");
    args.push(&h);
    if decode {
        args.push("--compressed");
    }
    args.push(&url);
    let out = curl(&args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stderr).to_ascii_lowercase(),
        out.stdout,
    )
}

#[tokio::test]
async fn curl_decodes_gzip_brotli_and_zstd_and_the_headers_say_so() {
    let (_o, p) = start().await;
    let doc = document();
    for coding in ["gzip", "br", "zstd"] {
        let (headers, body) = fetch(&p, "/doc", coding, true).await;
        assert_eq!(String::from_utf8(body).unwrap(), doc, "{coding}");
        assert!(
            headers.contains(&format!("content-encoding: {coding}\r\n")),
            "{headers}"
        );
        assert!(headers.contains("vary: accept-encoding"), "{headers}");
        assert!(headers.contains("etag: w/\"v1\""), "{headers}");
        assert!(!headers.contains("content-length"), "{headers}");
        // Smaller on the wire.
        let (_, raw) = fetch(&p, "/doc", coding, false).await;
        assert!(
            raw.len() * 5 < doc.len(),
            "{coding}: {} of {}",
            raw.len(),
            doc.len()
        );
    }
    // q-values: the client's highest wins; equal ones go to the configured order.
    let (h, _) = fetch(&p, "/doc", "gzip;q=1, br;q=0.5", true).await;
    assert!(h.contains("content-encoding: gzip"), "{h}");
    let (h, _) = fetch(&p, "/doc", "gzip, br", true).await;
    assert!(h.contains("content-encoding: br"), "{h}");
    let (h, _) = fetch(&p, "/doc", "identity", true).await;
    assert!(!h.contains("content-encoding"), "{h}");
    assert!(h.contains("vary: accept-encoding"), "{h}");
}

#[tokio::test]
async fn python_decoders_read_brotli_and_zstd() {
    let (_o, p) = start().await;
    let doc = document();
    let python = std::env::var("PYLON_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    for (coding, module) in [
        ("br", "brotli.decompress"),
        (
            "zstd",
            "zstandard.ZstdDecompressor().decompressobj().decompress",
        ),
    ] {
        let (_, raw) = fetch(&p, "/doc", coding, false).await;
        let dir =
            std::env::temp_dir().join(format!("pylon-compression-{}-{coding}", std::process::id()));
        std::fs::write(&dir, &raw).unwrap();
        let script = format!(
            "import sys, brotli, zstandard\ndata = open(sys.argv[1], 'rb').read()\nsys.stdout.buffer.write({module}(data))"
        );
        let out = tokio::process::Command::new(&python)
            .args(["-c", &script, dir.to_str().unwrap()])
            .output()
            .await
            .expect(
                "python runs (scripts/test.sh installs brotli and zstandard into target/test-venv)",
            );
        let _ = std::fs::remove_file(&dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8(out.stdout).unwrap(), doc, "{coding}");
    }
}

#[tokio::test]
async fn answers_that_must_not_be_compressed_are_left_alone() {
    let (_o, p) = start().await;
    let all = "gzip, br, zstd";
    // Under min_size (Content-Length known): sent as it is, whatever the client takes.
    let (h, b) = fetch(&p, "/small", all, false).await;
    assert!(
        !h.contains("content-encoding") && !h.contains("vary"),
        "{h}"
    );
    assert_eq!(b, b"{\"ok\": true}");
    // A type not listed.
    let (h, b) = fetch(&p, "/png", all, false).await;
    assert!(
        !h.contains("content-encoding") && !h.contains("vary"),
        "{h}"
    );
    assert_eq!(b.len(), 4096);
    // Already encoded by the upstream: untouched.
    let (h, b) = fetch(&p, "/encoded", all, false).await;
    assert!(h.contains("content-encoding: gzip"), "{h}");
    assert_eq!(b, b"not really gzip");
    // no-transform.
    let (h, b) = fetch(&p, "/raw", all, false).await;
    assert!(!h.contains("content-encoding"), "{h}");
    assert_eq!(b.len(), document().len());
    // HEAD: the headers a GET would get, no body.
    let req = Request::head("/doc")
        .header("host", "t")
        .header("accept-encoding", "gzip")
        .body(empty())
        .unwrap();
    let a = send_h1(p.addr("front"), req).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-encoding"), Some("gzip"));
    assert!(a.body.is_empty());
}

#[tokio::test]
async fn a_cache_zone_keeps_each_encoding_as_a_variant() {
    let (o, p) = start().await;
    let doc = document();
    let status = |h: &str| {
        h.lines()
            .find(|l| l.starts_with("cache-status:"))
            .unwrap_or("")
            .to_owned()
    };
    let (h1, b1) = fetch(&p, "/cached", "gzip", true).await;
    let (h2, b2) = fetch(&p, "/cached", "gzip", true).await;
    assert!(h1.contains("content-encoding: gzip") && h2.contains("content-encoding: gzip"));
    assert!(status(&h2).contains("hit"), "{}", status(&h2));
    assert_eq!(b1, doc.as_bytes());
    assert_eq!(b2, doc.as_bytes());
    // Another encoding is another variant: fetched once, then a hit too.
    let (h3, b3) = fetch(&p, "/cached", "br", true).await;
    assert!(h3.contains("content-encoding: br") && !status(&h3).contains("hit"));
    let (h4, _) = fetch(&p, "/cached", "br", true).await;
    assert!(status(&h4).contains("hit"), "{h4}");
    assert_eq!(b3, doc.as_bytes());
    // And a client that takes none gets the identity variant.
    let (h5, b5) = fetch(&p, "/cached", "identity", false).await;
    assert!(!h5.contains("content-encoding"), "{h5}");
    assert_eq!(b5, doc.as_bytes());
    assert_eq!(o.request_count(), 3);
}

#[tokio::test]
async fn compressed_request_bodies_go_upstream_decoded_up_to_a_bound() {
    let echo = Origin::echo().await;
    let p = TestProxy::start(&format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/"
cluster = "c"
compression = {{ decompress_requests = true, max_decompressed = "64KiB" }}

[[clusters]]
name = "c"
endpoints = ["{}"]
"#,
        echo.addr
    ))
    .await;
    let dir = std::env::temp_dir().join(format!("pylon-decompress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write_gz = |name: &str, n: usize| {
        let path = dir.join(name);
        std::fs::write(&path, "x".repeat(n)).unwrap();
        assert!(
            std::process::Command::new("gzip")
                .arg("-f")
                .arg(&path)
                .status()
                .unwrap()
                .success()
        );
        dir.join(format!("{name}.gz"))
    };
    let small = write_gz("small", 30_000);
    let big = write_gz("big", 200_000);
    let url = format!("http://{}/upload", p.addr("front"));
    let post = |file: std::path::PathBuf, coding: &'static str| {
        let url = url.clone();
        async move {
            let data = format!("@{}", file.display());
            curl(&[
                "-H",
                &format!("content-encoding: {coding}"),
                "--data-binary",
                &data,
                "-w",
                "\n%{http_code}",
                &url,
            ])
            .await
        }
    };
    let out = post(small.clone(), "gzip").await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{text}");
    let seen: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(seen["body_len"], 30_000, "decoded upstream");
    assert!(seen["headers"].get("content-encoding").is_none());
    // Over the bound: the request fails rather than reaching the upstream whole.
    let out = post(big, "gzip").await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text.ends_with("\n200"), "{text}");
    // A coding Pylon does not decode: 415.
    let out = post(small, "deflate").await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.ends_with("\n415"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
