//! The effective configuration, written back in the file's own keys, parses back to the
//! same model (secrets aside): for every example and for a config that sets nearly
//! every key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use pylon_config::effective::{
    REDACTED_PASSWORD_HASH, REDACTED_SECRET, REDACTED_TOKEN, document, redact, redacted_keys,
    to_toml,
};
use pylon_config::model::*;
use pylon_config::{Config, load_file, parse};

/// Words of the model's Rust shapes that must never show in the file's form.
const RUST_SHAPES: &[&str] = &[
    "Stdout",
    "RoundRobin",
    "Socket",
    "binds",
    "matcher",
    "Exact",
    "Prefix",
    "secs",
    "nanos",
];

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .canonicalize()
        .unwrap()
}

/// Where things were written differs between the two files: forget it.
fn without_locations(mut c: Config) -> Config {
    let clear = |f: &mut FileRef| f.at = Location::default();
    for l in &mut c.listeners {
        if let Some(tls) = &mut l.tls {
            for cert in &mut tls.certificates {
                clear(&mut cert.cert);
                clear(&mut cert.key);
            }
            if let Some(ca) = &mut tls.client_ca {
                clear(ca);
            }
        }
    }
    for cl in &mut c.clusters {
        if let Some(tls) = &mut cl.tls {
            if let Some(ca) = &mut tls.ca {
                clear(ca);
            }
            if let Some(cert) = &mut tls.client_cert {
                clear(&mut cert.cert);
                clear(&mut cert.key);
            }
        }
    }
    c
}

/// Renders `config`, checks the text, parses it back and compares.
fn round_trip(config: &Config) -> String {
    let text = to_toml(config, Some("0123456789abcdef")).unwrap();
    assert!(text.starts_with("# hash: 0123456789abcdef\n"), "{text}");
    for shape in RUST_SHAPES {
        assert!(!text.contains(shape), "{shape:?} in\n{text}");
    }
    let back = match parse(&text, "effective.toml") {
        Ok(c) => c,
        Err(e) => panic!("the effective config does not parse:\n{e}\n---\n{text}"),
    };
    assert_eq!(
        without_locations(back),
        without_locations(redact(config)),
        "\n{text}"
    );
    text
}

#[test]
fn every_example_round_trips() {
    let dir = examples();
    for name in [
        "quickstart.toml",
        "https.toml",
        "l4.toml",
        "forward.toml",
        "grpc.toml",
        "turn.toml",
    ] {
        // Certificate files are not read: parsing checks the text only.
        let config = load_file(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = round_trip(&config);
        assert!(text.contains("[[listeners]]"), "{name}:\n{text}");
    }
}

#[test]
fn example_values_are_written_as_the_file_writes_them() {
    let config = load_file(&examples().join("quickstart.toml")).unwrap();
    let doc = document(&config);
    let v = |path: &str| -> toml::Value {
        let mut cur = toml::Value::Table(doc.clone());
        for part in path.split('.') {
            cur = match part.parse::<usize>() {
                Ok(i) => cur.as_array().unwrap()[i].clone(),
                Err(_) => cur
                    .get(part)
                    .unwrap_or_else(|| panic!("no {part} in {path}"))
                    .clone(),
            };
        }
        cur
    };
    assert_eq!(v("server.drain_timeout").as_str(), Some("10s"));
    assert_eq!(v("server.reload_grace").as_str(), Some("30s"));
    assert_eq!(v("server.watch_debounce").as_str(), Some("500ms"));
    assert_eq!(v("admin.bind").as_str(), Some("127.0.0.1:9901"));
    assert_eq!(v("access_log.path").as_str(), Some("stdout"));
    assert_eq!(v("listeners.0.name").as_str(), Some("front"));
    assert_eq!(v("listeners.0.bind").as_str(), Some("127.0.0.1:8080"));
    assert_eq!(v("listeners.0.protocol").as_str(), Some("http"));
    assert_eq!(v("listeners.0.max_header_bytes").as_str(), Some("64KiB"));
    assert_eq!(v("listeners.0.max_request_body").as_str(), Some("1GiB"));
    assert_eq!(v("listeners.0.request_id").as_str(), Some("x-request-id"));
    assert_eq!(v("routes.0.path_prefix").as_str(), Some("/old"));
    assert_eq!(v("routes.0.redirect.status").as_integer(), Some(301));
    assert_eq!(v("routes.1.cluster").as_str(), Some("demo"));
    assert_eq!(v("routes.1.tunnel_idle_timeout").as_str(), Some("1h"));
    assert_eq!(
        v("routes.2.respond.headers.content-type").as_str(),
        Some("text/plain")
    );
    assert_eq!(v("clusters.0.lb").as_str(), Some("round_robin"));
    assert_eq!(v("clusters.0.protocol").as_str(), Some("http1"));
    assert_eq!(v("clusters.0.endpoints.0").as_str(), Some("127.0.0.1:8081"));
    assert_eq!(v("clusters.0.connect_timeout").as_str(), Some("2s"));
    assert_eq!(v("clusters.0.pool.idle_timeout").as_str(), Some("90s"));
    assert!(doc["clusters"][0].get("hash_key").is_none());
    assert!(doc["clusters"][0].get("dns").is_none());
}

/// Nearly every key the file takes, with values other than the defaults.
const EVERYTHING: &str = r#"
[server]
worker_threads = 4
drain_timeout = "1m30s"
reload_grace = "5m"
watch_config = true
watch_debounce = "2s"
upgrade_socket = "/run/pylon/upgrade.sock"
max_connections = 20000

[admin]
bind = "0.0.0.0:9901"
token = "a-real-secret-token-0123456789"

[access_log]
path = "/var/log/pylon/access.log"

[[listeners]]
name = "front"
bind = ["127.0.0.1:8080", "[::1]:8080"]
header_read_timeout = "5s"
idle_timeout = "2m"
send_timeout = "30s"
max_header_bytes = "16KiB"
max_headers = 50
max_uri_bytes = 4000
max_request_body = "10MB"
max_concurrent_streams = 100
h2_max_reset_streams = 50
h2_max_error_resets = 100
max_connections_per_ip = 200
tcp_keepalive = { idle = "2m", interval = "15s", probes = 4 }
tcp_user_timeout = "30s"
defer_accept = false
x_forwarded = false
forwarded = true
via = false
request_id = "X-Trace-Id"
proxy_protocol = { trusted = ["10.0.0.0/8", "::1", "192.168.1.7/16"] }

[[listeners]]
name = "secure"
bind = "127.0.0.1:8443"
protocol = "https"

[listeners.tls]
certificates = [
  { cert = "/etc/pylon/site.pem", key = "/etc/pylon/site-key.pem", server_names = ["example.com", "*.Example.com"] },
  { cert = "/etc/pylon/other.pem", key = "/etc/pylon/other-key.pem" },
]
min_version = "1.3"
alpn = "http/1.1"
handshake_timeout = "3s"
unknown_sni = "reject"
client_auth = "optional"
client_ca = "/etc/pylon/clients-ca.pem"
forward_client_cert = false

[[listeners]]
name = "fwd"
bind = "127.0.0.1:3128"
tcp_keepalive = false
x_forwarded = false
request_id = false

[listeners.forward]
connect_ports = [443, 8443]
allow_private = true
strip_client_headers = true
connect_timeout = "4s"
tunnel_idle_timeout = "1h"
resolvers = ["10.0.0.2", "[::1]:5353"]
resolve_timeout = "2s"
users = [
  { name = "alice", password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g" },
  { name = "bob", password_hash = "$argon2id$v=19$m=19456,t=2,p=1$b3RoZXI$b3RoZXJoYXNo" },
]
rules = [
  { name = "no-ads", action = "deny", hosts = ["*.ads.example", "tracker.example"] },
  { name = "wiki", action = "allow", hosts = "wiki.internal", ports = [80, 443], networks = ["10.1.0.0/16"] },
  { name = "all", action = "allow", hosts = "*" },
]

[[listeners]]
name = "tcp"
bind = "127.0.0.1:9000"
protocol = "tcp"
cluster = "db"
idle_timeout = "1h"
max_lifetime = "24h"
max_connections = 2000
inspect_timeout = "2s"
splice = false
max_connections_per_ip = 20
tcp_keepalive = "30s"
tcp_user_timeout = false
defer_accept = true
proxy_protocol = { trusted = "127.0.0.1" }

[[listeners]]
name = "tcp-defaults"
bind = "127.0.0.1:9001"
protocol = "tcp"
cluster = "db"

[[listeners]]
name = "passthrough"
bind = "127.0.0.1:9443"
protocol = "tcp"
cluster = "db"
sni_routes = [
  { server_names = ["a.example", "*.b.example"], alpn = ["h2"], cluster = "web" },
  { cluster = "db" },
]

[[listeners]]
name = "tls-term"
bind = "127.0.0.1:9444"
protocol = "tcp"
cluster = "db"
tls = { certificates = [{ cert = "/etc/pylon/site.pem", key = "/etc/pylon/site-key.pem" }] }

[[listeners]]
name = "dns"
bind = "127.0.0.1:9053"
protocol = "udp"
cluster = "resolvers"
idle_timeout = "30s"
max_connections = 500

[[routes]]
name = "api"
listeners = ["front", "secure"]
host = ["Example.com", "*.example.org", "*"]
path_prefix = "/api/"
methods = ["get", "Post"]
headers = [{ name = "X-Env", value = "canary" }, { name = "x-debug" }]
cluster = "web"
prefix_rewrite = "/"
host_rewrite = "api.internal"
websocket = false
tunnel_idle_timeout = "10m"
tunnel_max_lifetime = "24h"
cache = "pages"
auth = ["staff"]
auth_require = "all"
auth_skip = ["/api/health", "/api/public/*"]

[[routes]]
name = "grpc"
grpc = true
path_regex = "^/pkg\\.Service/"
cluster = "grpc"
grpc_web = true
cors_allow_origins = ["https://app.example", "http://localhost:3000"]

[[routes]]
name = "mtls"
listeners = "secure"
path = "/admin"
client_cert_subject = "CN=alice, O=Example"
client_cert_dns = "Alice.Clients.Example"
client_cert_fingerprint = "9F:86:D0:81:88:4C:7D:65:9A:2F:EA:A0:C5:5A:D0:15:A3:BF:4F:1B:2B:0B:82:2C:D1:5D:6C:15:B0:F0:0A:08"
cluster = "web"

[[routes]]
path = "/maintenance"
respond = { status = 503, body = "down \"for\" maintenance\nback soon\n", headers = { "content-type" = "text/plain", "retry-after" = "120" } }

[[routes]]
respond = {}

[[routes]]
name = "moved"
path_prefix = "/old"
redirect = { status = 308, location = "https://{host}/new{path}?{query}" }

[[clusters]]
name = "web"
endpoints = ["10.0.0.1:8080", { address = "[::1]:8081", weight = 3 }, "api.internal:8080"]
lb = "ring_hash"
hash_key = "header:X-User-Id"
connect_timeout = "1s"
response_timeout = "15s"
host_header = "endpoint"
panic_threshold = 50
slow_start = "45s"
pool = { idle_timeout = "5s", max_idle_per_endpoint = 16, warm_connections = 2, tcp_keepalive = false, tcp_user_timeout = "2m", max_h2_connections = 8, h2_keepalive_interval = "20s", h2_keepalive_timeout = "5s" }
outlier_detection = { consecutive_failures = 3, base_ejection_time = "10s", max_ejection_percent = 30 }
retry = { max_retries = 3, statuses = [503], on_reset = false, per_try_timeout = "2s", backoff_base = "10ms", backoff_max = "1s", budget_percent = 40, budget_min_concurrent = 5, max_body_bytes = "1MiB" }
circuit_breaker = { max_connections = 100, max_requests = 1000 }
sticky = { cookie = "srv", ttl = "1h", path = "/app", secure = true, http_only = false, same_site = "Strict", secret = "sticky-signing-key" }
dns = { resolvers = ["10.0.0.2", "127.0.0.1:5353"], family = "ipv4", min_ttl = "2s", max_ttl = "60s", timeout = "3s" }
health_check = { kind = "http", method = "head", path = "/healthz", host = "health.internal", expected_statuses = [200, 204], body_contains = "ok", interval = "3s", timeout = "1s", jitter = "500ms", healthy_threshold = 3, unhealthy_threshold = 4 }

[[clusters]]
name = "grpc"
protocol = "h2"
endpoints = [{ srv = "_grpc._tcp.svc.internal." }]
lb = "maglev"
hash_key = "cookie:session"
pool = { h2_keepalive_interval = false, tcp_keepalive = { probes = 3 } }
health_check = { kind = "grpc", service = "pkg.Service" }
tls = { ca = "/etc/pylon/internal-ca.pem", server_name = "svc.internal", cert = "/etc/pylon/client.pem", key = "/etc/pylon/client-key.pem" }
sticky = { cookie = "g" }

[[clusters]]
name = "db"
endpoints = ["10.0.0.5:5432"]
lb = "least_connections"
proxy_protocol = "v2"
health_check = { kind = "tcp", interval = "2s" }
tls = { insecure_skip_verify = true }
retry = {}

[[clusters]]
name = "resolvers"
endpoints = ["10.0.0.53:53", "10.0.0.54:53"]
lb = "random"
health_check = { kind = "udp", send_hex = "ff00 0a", expect = "pong" }

[[clusters]]
name = "echo"
endpoints = ["127.0.0.1:7"]
lb = "least_request"
protocol = "h2c"
health_check = { kind = "udp", send = "ping\u0001" }

[[caches]]
name = "pages"
memory = "32MiB"
max_object = "1MiB"
stale_while_revalidate = "30s"
stale_if_error = "1h"
lock_timeout = "2s"
heuristic_fraction = 0.05
heuristic_max = "1h"
targeted_cache_control = ["Pylon-Cache-Control", "CDN-Cache-Control"]
status_name = "edge-1"
key = { headers = ["X-Tenant"], cookies = ["lang"], ignore_query = ["utm_source"], sort_query = true }
disk = { path = "cache/pages", size = "2GiB" }

[[auth]]
name = "staff"
basic = { realm = "Staff", users = [{ name = "carol", password_hash = "$argon2id$v=19$m=19456,t=2,p=1$Y2Fyb2xzYWx0$Y2Fyb2xoYXNo" }] }
"#;

#[test]
fn a_config_setting_nearly_every_key_round_trips() {
    let config = parse(EVERYTHING, "/etc/pylon/pylon.toml").expect("valid");
    let text = round_trip(&config);

    // Secrets: placeholders in the text, the real values nowhere, each one named.
    for secret in [
        "a-real-secret-token-0123456789",
        "c2FsdHNhbHQ",
        "b3RoZXI",
        "sticky-signing-key",
        "Y2Fyb2xoYXNo",
    ] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    assert_eq!(
        redacted_keys(&config),
        vec![
            "admin.token",
            "listeners[2].forward.users[0].password_hash",
            "listeners[2].forward.users[1].password_hash",
            "auth[0].basic.users[0].password_hash",
            "clusters[0].sticky.secret",
        ]
    );
    for key in redacted_keys(&config) {
        assert!(text.contains(&format!("#   {key}\n")), "{key}:\n{text}");
    }
    let doc = document(&config);
    assert_eq!(doc["admin"]["token"].as_str(), Some(REDACTED_TOKEN));
    assert_eq!(
        doc["listeners"][2]["forward"]["users"][1]["password_hash"].as_str(),
        Some(REDACTED_PASSWORD_HASH)
    );
    assert_eq!(
        doc["clusters"][0]["sticky"]["secret"].as_str(),
        Some(REDACTED_SECRET)
    );
    // A cluster whose sticky cookie has no secret gets none written.
    assert!(doc["clusters"][1]["sticky"].get("secret").is_none());

    // Values in the file's words.
    assert_eq!(doc["server"]["drain_timeout"].as_str(), Some("90s"));
    assert_eq!(
        doc["access_log"]["path"].as_str(),
        Some("/var/log/pylon/access.log")
    );
    let front = &doc["listeners"][0];
    assert_eq!(
        front["bind"].as_array().unwrap().len(),
        2,
        "several addresses: an array"
    );
    assert_eq!(front["max_request_body"].as_integer(), Some(10_000_000));
    assert_eq!(front["max_uri_bytes"].as_integer(), Some(4000));
    assert_eq!(front["request_id"].as_str(), Some("x-trace-id"));
    assert_eq!(doc["listeners"][2]["request_id"].as_bool(), Some(false));
    assert_eq!(
        doc["listeners"][0]["proxy_protocol"]["trusted"][1].as_str(),
        Some("::1/128")
    );
    // A tcp listener's idle_timeout is written when the file set it.
    assert_eq!(doc["listeners"][3]["idle_timeout"].as_str(), Some("1h"));
    assert!(doc["listeners"][4].get("idle_timeout").is_none());
    assert!(doc["listeners"][4].get("max_headers").is_none());
    assert_eq!(doc["routes"][0]["host"][2].as_str(), Some("*"));
    assert_eq!(doc["routes"][0]["methods"][1].as_str(), Some("POST"));
    assert_eq!(
        doc["routes"][2]["client_cert_fingerprint"].as_str(),
        Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
    );
    assert!(
        doc["routes"][3].get("name").is_none(),
        "an unnamed route stays unnamed"
    );
    assert_eq!(
        doc["routes"][4]["respond"]["status"].as_integer(),
        Some(200)
    );
    let web = &doc["clusters"][0];
    assert_eq!(web["lb"].as_str(), Some("ring_hash"));
    assert_eq!(web["hash_key"].as_str(), Some("header:x-user-id"));
    assert_eq!(web["endpoints"][0].as_str(), Some("10.0.0.1:8080"));
    assert_eq!(web["endpoints"][1]["address"].as_str(), Some("[::1]:8081"));
    assert_eq!(web["endpoints"][1]["weight"].as_integer(), Some(3));
    assert_eq!(web["retry"]["max_body_bytes"].as_str(), Some("1MiB"));
    assert_eq!(web["health_check"]["method"].as_str(), Some("HEAD"));
    assert_eq!(
        doc["clusters"][1]["endpoints"][0]["srv"].as_str(),
        Some("_grpc._tcp.svc.internal.")
    );
    assert_eq!(
        doc["clusters"][2]["retry"]["per_try_timeout"].as_str(),
        Some("60s"),
        "per_try_timeout defaults to the cluster's response_timeout, written out"
    );
    assert_eq!(
        doc["clusters"][3]["health_check"]["send_hex"].as_str(),
        Some("ff000a")
    );
    assert_eq!(
        doc["clusters"][4]["health_check"]["send"].as_str(),
        Some("ping\u{1}")
    );
    let pages = &doc["caches"][0];
    assert_eq!(pages["memory"].as_str(), Some("32MiB"));
    assert_eq!(pages["stale_if_error"].as_str(), Some("1h"));
    assert_eq!(
        pages["targeted_cache_control"][0].as_str(),
        Some("pylon-cache-control")
    );
    assert_eq!(pages["key"]["headers"][0].as_str(), Some("x-tenant"));
    assert_eq!(
        pages["disk"]["path"].as_str(),
        Some("/etc/pylon/cache/pages")
    );
    assert_eq!(pages["disk"]["size"].as_str(), Some("2GiB"));
    assert!(
        config
            .summary()
            .contains(", 1 cache zone(s) (1 with a disk tier)"),
        "{}",
        config.summary()
    );
    assert_eq!(doc["routes"][0]["cache"].as_str(), Some("pages"));
    assert_eq!(doc["routes"][0]["auth"][0].as_str(), Some("staff"));
    assert_eq!(doc["routes"][0]["auth_require"].as_str(), Some("all"));
    assert_eq!(doc["auth"][0]["basic"]["realm"].as_str(), Some("Staff"));
}

#[test]
fn a_minimal_config_gets_every_default_written_out() {
    let text = "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\n";
    let config = parse(text, "min.toml").unwrap();
    let out = round_trip(&config);
    for line in [
        "[server]",
        "worker_threads = 0",
        "drain_timeout = \"30s\"",
        "max_connections = 100000",
        "[admin]\nenabled = false",
        "[access_log]\nenabled = true\npath = \"stdout\"",
        "protocol = \"http\"",
        "header_read_timeout = \"10s\"",
        "max_header_bytes = \"64KiB\"",
        "max_uri_bytes = \"8KiB\"",
        "max_request_body = \"1GiB\"",
        "max_concurrent_streams = 256",
        "x_forwarded = true",
        "request_id = \"x-request-id\"",
        "defer_accept = true",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    assert!(
        !out.contains("# Redacted"),
        "nothing to redact, no note:\n{out}"
    );
}

#[test]
fn relative_file_paths_are_written_absolute() {
    let text = r#"
[[listeners]]
name = "s"
bind = "127.0.0.1:0"
protocol = "https"
tls = { certificates = [{ cert = "certs/cert.pem", key = "/abs/key.pem" }] }

[[clusters]]
name = "c"
endpoints = ["127.0.0.1:1"]
tls = { ca = "ca.pem" }
"#;
    let config = parse(text, "conf/pylon.toml").unwrap();
    let doc = document(&config);
    let cwd = std::env::current_dir().unwrap();
    let cert = &doc["listeners"][0]["tls"]["certificates"][0];
    assert_eq!(
        cert["cert"].as_str().map(PathBuf::from),
        Some(cwd.join("conf/certs/cert.pem"))
    );
    assert_eq!(cert["key"].as_str(), Some("/abs/key.pem"));
    assert_eq!(
        doc["clusters"][0]["tls"]["ca"].as_str().map(PathBuf::from),
        Some(cwd.join("conf/ca.pem"))
    );
    // Wherever the rendered file is saved, it names the same files.
    let back = parse(&to_toml(&config, None).unwrap(), "/elsewhere/x.toml").unwrap();
    let tls = back.listeners[0].tls.as_ref().unwrap();
    assert_eq!(
        tls.certificates[0].cert.path,
        cwd.join("conf/certs/cert.pem")
    );
}

#[test]
fn gateway_route_keys_round_trip() {
    let dir = std::env::temp_dir().join(format!("pylon-effective-gw-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("5xx.html"), "<h1>down</h1>").unwrap();
    let text = format!(
        r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
rate_limit = ["per-ip"]

[[clusters]]
name = "v1"
endpoints = ["127.0.0.1:1"]

[[clusters]]
name = "v2"
endpoints = ["127.0.0.1:2"]

[[routes]]
name = "shop"
path_prefix = "/shop/"
backends = [{{ cluster = "v1", weight = 95 }}, {{ cluster = "v2", weight = 5, header = "x-canary=1", cookie = "c=1", query = "q=1" }}]
split = {{ sticky = "header:x-user+client_ip", canary = "v2", max_5xx_ratio = 0.1, min_requests = 5, window = "1m" }}
mirror = {{ cluster = "v2", percent = 12.5, max_body = "8KiB", host_suffix = "-copy", timeout = "2s" }}
compression = {{ algorithms = ["br", "gzip"], content_types = ["text/*"], min_size = 100, gzip_level = 5, brotli_level = 3, zstd_level = 4, decompress_requests = true, max_decompressed = "1MiB" }}
request_headers = {{ set = {{ x-a = "{{client_ip}}" }}, add = {{ x-b = "b" }}, append = {{ x-c = "{{claim:sub}}" }}, remove = ["x-d"] }}
response_headers = {{ set = {{ x-e = "e" }}, remove = ["server"] }}
regex_rewrite = {{ pattern = "^/shop/(.*)$", replacement = "/$1" }}
query = {{ set = {{ src = "edge" }}, remove = ["debug"] }}
error_pages = [{{ status = [502, 503], file = "{0}/5xx.html" }}, {{ status = [404], body = "none", upstream = true }}]
request_buffering = {{ max = "2MiB", memory = "64KiB" }}
response_buffering = {{ max = "512KiB" }}

[[routes]]
name = "static"
files = {{ root = "{0}/www", index = ["index.htm"], browse = true, follow_symlinks = true, precompressed = false }}

[[rate_limits]]
name = "per-ip"
key = "client_ip/24+header:x-app"
rate = 10
delay = "1s"
global = {{ redis = "redis://127.0.0.1:6379/2", timeout = "50ms", on_error = "deny", batch = 2, prefix = "p:" }}

[[rate_limits]]
name = "inflight"
concurrency = 3

[[routes]]
name = "admins"
path_prefix = "/admin/"
claims = {{ role = "admin" }}
cluster = "v1"
auth = ["idp", "ext"]
auth_require = "all"

[[auth]]
name = "idp"
jwt = {{ algorithms = ["RS256"], jwks = {{ url = "https://login.test/jwks.json", cluster = "v2", refresh = "10m", min_refresh = "30s", timeout = "3s" }} }}

[[auth]]
name = "ext"
external = {{ cluster = "v2", path_prefix = "/check", headers = ["cookie"], upstream_headers = ["x-user"], user_header = "x-user", timeout = "250ms", on_error = "allow", cache_ttl = "5s", cache_key = "cookie:session" }}
"#,
        dir.display()
    );
    let config = parse(&text, "/etc/pylon/pylon.toml").expect("valid");
    round_trip(&config);
    let _ = std::fs::remove_dir_all(&dir);
}
