//! The HTTP/1 request path end to end over an in-memory connection: whatever a client
//! sends, Pylon answers with HTTP/1.x responses (HTTP/2 frames after an h2c preface) or
//! closes, never panics or hangs.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pylon_proxy::fuzzing::H1Harness;

const CONFIG: &str = r#"
[access_log]
enabled = false
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
header_read_timeout = "5ms"
idle_timeout = "5ms"
max_header_bytes = "8KiB"
max_request_body = "4KiB"
[[routes]]
path_prefix = "/old"
redirect = { status = 301, location = "http://{host}/new{path}?{query}" }
[[routes]]
path_prefix = "/up"
cluster = "down"
[[routes]]
respond = { status = 200, body = "ok" }
[[clusters]]
name = "down"
endpoints = ["127.0.0.1:9"]
connect_timeout = "5ms"
"#;

fn harness() -> &'static H1Harness {
    static H: OnceLock<H1Harness> = OnceLock::new();
    H.get_or_init(|| {
        let c = pylon_config::parse(CONFIG, "fuzz.toml").expect("valid");
        H1Harness::new(&c, "front")
    })
}

fuzz_target!(|data: &[u8]| {
    let out = harness().serve(data);
    if !out.is_empty() && !data.starts_with(b"PRI * HTTP/2.0") {
        assert!(
            out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
    }
});
