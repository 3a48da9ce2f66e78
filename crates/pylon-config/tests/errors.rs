//! Every configuration mistake is reported with file:line:column, key path and reason,
//! and all of them at once.

use pylon_config::model::*;
use pylon_config::{QUICKSTART, parse};

fn errors(text: &str) -> Vec<String> {
    match parse(text, "test.toml") {
        Ok(_) => panic!("config unexpectedly valid"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

/// Checks that `text` gives exactly these errors, in order, each starting as written.
fn assert_errors(text: &str, expected: &[&str]) {
    let e = errors(text);
    assert_eq!(e.len(), expected.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expected) {
        assert!(got.starts_with(want), "{got}\n  expected: {want}");
    }
}

#[test]
fn quickstart_is_valid() {
    let c = parse(QUICKSTART, "quickstart.toml").expect("quickstart parses");
    assert_eq!(c.listeners.len(), 3);
    assert_eq!(c.clusters[0].endpoints.len(), 2);
    assert_eq!(c.routes_for("front").count(), 2);
    assert_eq!(c.routes_for("backend-a").count(), 1);
}

#[test]
fn three_mistakes_three_errors_with_lines() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:99999"

[[routes]]
path_prefix = "/"
cluster = "missing"

[[clusters]]
name = "c"
endpoints = ["127.0.0.1:1"]
connect_timeout = "soon"
"#;
    let e = errors(text);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].starts_with("test.toml:4:8: listeners[0].bind: invalid address"),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("test.toml:8:11: routes[0].cluster: unknown cluster \"missing\""),
        "{}",
        e[1]
    );
    assert!(
        e[2].starts_with("test.toml:13:19: clusters[0].connect_timeout: invalid duration"),
        "{}",
        e[2]
    );
}

#[test]
fn unknown_keys_are_reported_per_element() {
    let text = r#"
[[listeners]]
name = "a"
bind = "127.0.0.1:0"
colour = "blue"

[[listeners]]
name = "b"
bind = "127.0.0.1:0"
prot = "http"

[bogus]
x = 1
"#;
    let e = errors(text);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].contains(":5:1: listeners[0].colour: unknown field `colour`"),
        "{}",
        e[0]
    );
    assert!(
        e[1].contains(":10:1: listeners[1].prot: unknown field `prot`"),
        "{}",
        e[1]
    );
    assert!(
        e[2].contains(":12:2: bogus: unknown section `bogus`"),
        "{}",
        e[2]
    );
}

#[test]
fn duplicate_names_regex_and_types() {
    let text = r#"
[[listeners]]
name = "a"
bind = ["127.0.0.1:8080"]

[[listeners]]
name = "a"
bind = "127.0.0.1:8080"

[[listeners]]
name = "typed"
bind = "127.0.0.1:0"
max_headers = "many"

[[routes]]
path_regex = "(unclosed"
respond = { status = 200 }

[[routes]]
path = "/x"

[[clusters]]
name = "c"
endpoints = ["localhost:80x", { address = "127.0.0.1:1", weight = 0 }]
protocol = "spdy"
"#;
    let e = errors(text).join("\n");
    for want in [
        "listeners[2].max_headers: invalid type",
        "routes[0].path_regex: invalid regex: unclosed group",
        "listeners[1].name: duplicate listener name \"a\"",
        "listeners[1].bind: address 127.0.0.1:8080 is already bound by listener \"a\"",
        "routes[0].path_regex: invalid regex",
        "routes[1]: route has no action",
        "clusters[0].endpoints[0]: invalid address \"localhost:80x\"",
        "clusters[0].endpoints[1]: endpoint weight must be between 1 and 10000",
        "clusters[0].protocol: unknown upstream protocol \"spdy\"",
    ] {
        assert!(e.contains(want), "missing {want:?} in\n{e}");
    }
}

#[test]
fn syntax_error_has_line() {
    let e = errors("[[listeners]]\nname = \"a\nbind = 1\n");
    assert!(e[0].starts_with("test.toml:2:"), "{e:?}");
}

#[test]
fn no_listeners_is_an_error() {
    let e = errors("[[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\"]\n");
    assert!(e.iter().any(|e| e.contains("no listeners")), "{e:?}");
}

#[test]
fn defaults_and_values() {
    let text = r#"
[[listeners]]
name = "a"
bind = "127.0.0.1:0"
max_request_body = "10MiB"
header_read_timeout = "2s"
request_id = false
forwarded = true

[[routes]]
host = ["Example.com", "*.example.org"]
methods = ["get", "post"]
headers = [{ name = "X-Env", value = "canary" }, { name = "x-debug" }]
path_prefix = "/api/"
cluster = "c"
prefix_rewrite = "/"

[[routes]]
redirect = { location = "https://{host}{request_uri}" }

[[clusters]]
name = "c"
protocol = "h2c"
host_header = "endpoint"
endpoints = [{ address = "[::1]:9000", weight = 3 }]
pool = { idle_timeout = "5s", max_idle_per_endpoint = 4 }
"#;
    let c = parse(text, "t.toml").expect("valid");
    let l = &c.listeners[0];
    assert_eq!(l.limits.max_request_body, 10 << 20);
    assert_eq!(l.limits.header_read_timeout.as_secs(), 2);
    assert_eq!(l.limits.max_headers, 100);
    assert_eq!(l.headers.request_id, None);
    assert!(l.headers.forwarded && l.headers.x_forwarded && l.headers.via);
    let r = &c.routes[0];
    assert_eq!(
        r.matcher.hosts,
        vec![
            HostMatch::Exact("example.com".into()),
            HostMatch::Suffix(".example.org".into())
        ]
    );
    assert_eq!(r.matcher.methods, vec!["GET", "POST"]);
    assert_eq!(r.matcher.headers[0].name, "x-env");
    assert_eq!(r.name, "routes[0]");
    match &c.routes[1].action {
        Action::Redirect(rd) => assert_eq!(rd.status, 302),
        a => panic!("{a:?}"),
    }
    let cl = &c.clusters[0];
    assert_eq!(cl.protocol, UpstreamProtocol::H2c);
    assert_eq!(cl.host_header, HostHeader::Endpoint);
    assert_eq!(cl.endpoints[0].weight, 3);
    assert_eq!(cl.pool.max_idle_per_endpoint, 4);
}

#[test]
fn tls_settings_are_checked() {
    let text = r#"
[[listeners]]
name = "a"
bind = "127.0.0.1:0"
protocol = "https"

[[listeners]]
name = "b"
bind = "127.0.0.1:0"
tls = { certificates = [{ cert = "c.pem", key = "k.pem" }] }

[[listeners]]
name = "c"
bind = "127.0.0.1:0"
protocol = "https"
tls = { certificates = [{ cert = "c.pem", key = "k.pem" }], client_auth = "required", min_version = "1.1", alpn = ["spdy"] }

[[clusters]]
name = "x"
endpoints = ["127.0.0.1:1"]
protocol = "h2"

[[clusters]]
name = "y"
endpoints = ["127.0.0.1:1"]
protocol = "h2c"
tls = { cert = "c.pem" }
"#;
    let e = errors(text).join("\n");
    for want in [
        "listeners[0].protocol: protocol \"https\" needs a [listeners.tls] table",
        "listeners[1].tls: `tls` applies only to listeners with protocol = \"https\"",
        "listeners[2].tls: client_auth needs `client_ca`",
        "listeners[2].tls.min_version: unknown TLS version \"1.1\"",
        "listeners[2].tls.alpn: unsupported ALPN protocol \"spdy\"",
        "clusters[0].protocol: protocol \"h2\" is HTTP/2 over TLS",
        "clusters[1].protocol: protocol \"h2c\" is cleartext",
        "clusters[1].tls: a client certificate needs both `cert` and `key`",
    ] {
        assert!(e.contains(want), "missing {want:?} in\n{e}");
    }
}

#[test]
fn tls_paths_are_relative_to_the_config_file() {
    let text = r#"
[[listeners]]
name = "a"
bind = "127.0.0.1:0"
protocol = "https"
[listeners.tls]
certificates = [{ cert = "certs/c.pem", key = "/abs/k.pem", server_names = ["*.Example.com"] }]
"#;
    let c = parse(text, "/etc/pylon/pylon.toml").expect("valid");
    let t = c.listeners[0].tls.as_ref().unwrap();
    let cert = &t.certificates[0];
    assert_eq!(
        cert.cert.path,
        std::path::Path::new("/etc/pylon/certs/c.pem")
    );
    assert_eq!(cert.key.path, std::path::Path::new("/abs/k.pem"));
    assert_eq!(cert.server_names, vec!["*.example.com"]);
    assert_eq!(cert.cert.at.key, "listeners[0].tls.certificates[0].cert");
    assert_eq!(cert.cert.at.line, 7);
    assert_eq!(t.alpn, vec!["h2", "http/1.1"]);
    assert_eq!(t.min_version, TlsVersion::Tls12);
}

#[test]
fn balancers_and_hash_keys() {
    let text = r#"
[[listeners]]
name = "a"
bind = "127.0.0.1:0"

[[clusters]]
name = "h"
endpoints = ["127.0.0.1:1"]
lb = "maglev"
hash_key = "cookie:session"

[[clusters]]
name = "bad"
endpoints = ["127.0.0.1:1"]
lb = "fastest"

[[clusters]]
name = "rr"
endpoints = ["127.0.0.1:1"]
hash_key = "path"

[[clusters]]
name = "k"
endpoints = ["127.0.0.1:1"]
lb = "ring_hash"
hash_key = "header:"
"#;
    let e = errors(text).join("\n");
    for want in [
        "clusters[1].lb: unknown lb policy \"fastest\", expected one of: round_robin, least_connections, least_request, random, ring_hash, maglev",
        "clusters[2].hash_key: `hash_key` only applies to lb = \"ring_hash\" or \"maglev\"",
        "clusters[3].hash_key: invalid hash_key \"header:\"",
    ] {
        assert!(e.contains(want), "missing {want:?} in\n{e}");
    }
    let ok = text.split("[[clusters]]\nname = \"bad\"").next().unwrap();
    let c = parse(ok, "t.toml").expect("valid");
    assert_eq!(c.clusters[0].lb, LbPolicy::Maglev);
    assert_eq!(c.clusters[0].hash_key, HashKey::Cookie("session".into()));
}

#[test]
fn health_checks_are_checked() {
    let text = r#"
[[listeners]]
name = "a"
bind = "127.0.0.1:0"

[[clusters]]
name = "ok"
endpoints = ["127.0.0.1:1"]
health_check = { path = "/healthz", expected_statuses = [200, 204], interval = "2s" }

[[clusters]]
name = "bad"
endpoints = ["127.0.0.1:1"]
health_check = { kind = "tcp", path = "/x", unhealthy_threshold = 0 }

[[clusters]]
name = "worse"
endpoints = ["127.0.0.1:1"]
health_check = { kind = "icmp", expected_statuses = [700] }
"#;
    let e = errors(text).join("\n");
    for want in [
        "clusters[1].health_check.kind: method, path, host, expected_statuses and body_contains need kind = \"http\"",
        "clusters[1].health_check.unhealthy_threshold: a threshold must be at least 1",
        "clusters[2].health_check.kind: unknown health check kind \"icmp\"",
    ] {
        assert!(e.contains(want), "missing {want:?} in\n{e}");
    }
    let ok = text.split("[[clusters]]\nname = \"bad\"").next().unwrap();
    let c = parse(ok, "t.toml").expect("valid");
    let hc = c.clusters[0].health_check.as_ref().unwrap();
    assert_eq!(hc.interval.as_secs(), 2);
    assert_eq!((hc.healthy_threshold, hc.unhealthy_threshold), (2, 3));
    match &hc.kind {
        HealthCheckKind::Http {
            path,
            expected_statuses,
            method,
            ..
        } => {
            assert_eq!((path.as_str(), method.as_str()), ("/healthz", "GET"));
            assert_eq!(expected_statuses, &vec![200, 204]);
        }
        k => panic!("{k:?}"),
    }
}

#[test]
fn dns_endpoints_and_their_settings() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
cluster = "c"

[[clusters]]
name = "c"
endpoints = ["api.internal:8080", { srv = "_http._tcp.api.internal." }, "10.0.0.1:80"]

[clusters.dns]
resolvers = ["10.0.0.2", "127.0.0.1:5353"]
family = "ipv4"
min_ttl = "2s"
max_ttl = "60s"
"#;
    let c = parse(text, "test.toml").expect("valid");
    let cl = &c.clusters[0];
    assert_eq!(
        cl.endpoints[0].address,
        EndpointAddress::Host {
            name: "api.internal".into(),
            port: 8080
        }
    );
    assert_eq!(
        cl.endpoints[1].address,
        EndpointAddress::Srv {
            name: "_http._tcp.api.internal.".into()
        }
    );
    assert!(!cl.endpoints[2].address.is_dns());
    assert_eq!(
        cl.dns.resolvers,
        vec![
            "10.0.0.2:53".parse().unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        ]
    );
    assert_eq!(cl.dns.family, IpFamily::V4);
    assert_eq!(cl.dns.min_ttl, std::time::Duration::from_secs(2));
    assert_eq!(cl.dns.timeout, std::time::Duration::from_secs(5), "default");

    let bad = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
cluster = "c"

[[clusters]]
name = "c"
endpoints = ["bad_host!:80", "api.internal:0", "api.internal", "1.2.3:80", { srv = "_x._tcp.a", weight = 2 }]

[clusters.dns]
resolvers = ["nameserver"]
family = "ipv5"
min_ttl = "10s"
max_ttl = "1s"
"#;
    let e = errors(bad);
    assert_eq!(e.len(), 8, "{e:#?}");
    for (i, want) in [
        "clusters[0].endpoints[0]: invalid address \"bad_host!:80\"",
        "clusters[0].endpoints[1]: invalid address \"api.internal:0\"",
        "clusters[0].endpoints[2]: invalid address \"api.internal\"",
        "clusters[0].endpoints[3]: invalid address \"1.2.3:80\"",
        "weight",
        "clusters[0].dns.resolvers[0]: invalid resolver \"nameserver\"",
        "clusters[0].dns.family: unknown family \"ipv5\"",
        "clusters[0].dns.max_ttl: max_ttl must not be shorter than min_ttl",
    ]
    .iter()
    .enumerate()
    {
        assert!(e.iter().any(|x| x.contains(want)), "{i}: {want} in {e:#?}");
    }
}

#[test]
fn layer4_listeners_and_their_mistakes() {
    let ok = r#"
[[listeners]]
name = "tcp"
bind = "127.0.0.1:9000"
protocol = "tcp"
cluster = "c"
max_lifetime = "1h"
proxy_protocol = { trusted = ["10.0.0.0/8", "::1"] }

[[listeners]]
name = "pass"
bind = "127.0.0.1:9443"
protocol = "tcp"
sni_routes = [{ server_names = ["*.example.com"], alpn = "h2", cluster = "c" }]
defer_accept = true

[[listeners]]
name = "udp"
bind = "127.0.0.1:9000"
protocol = "udp"
cluster = "c"

[[clusters]]
name = "c"
endpoints = ["127.0.0.1:1"]
proxy_protocol = "v2"
health_check = { kind = "udp", send_hex = "01 ff", expect = "ok" }
"#;
    let c = parse(ok, "test.toml").expect("valid");
    let tcp = c.listeners[0].l4.as_ref().unwrap();
    assert_eq!(tcp.cluster.as_deref(), Some("c"));
    assert_eq!(tcp.idle_timeout, std::time::Duration::from_secs(600));
    assert!(tcp.splice);
    assert_eq!(
        c.listeners[0]
            .proxy_protocol
            .as_ref()
            .unwrap()
            .trusted
            .len(),
        2
    );
    assert!(
        !c.listeners[0].defer_accept,
        "off by default on tcp listeners: a server-first protocol's client would wait"
    );
    assert!(c.listeners[1].defer_accept);
    let pass = c.listeners[1].l4.as_ref().unwrap();
    assert_eq!(pass.sni_routes[0].alpn, vec!["h2".to_string()]);
    assert_eq!(
        c.listeners[2].l4.as_ref().unwrap().idle_timeout,
        std::time::Duration::from_secs(60),
        "UDP sessions idle out sooner; the same port as a TCP listener is fine"
    );
    assert_eq!(c.clusters[0].proxy_protocol, Some(ProxyProtocolVersion::V2));
    assert_eq!(
        c.clusters[0].health_check.as_ref().unwrap().kind,
        HealthCheckKind::Udp {
            send: vec![1, 0xff],
            expect: Some("ok".into())
        }
    );

    let bad = r#"
[[listeners]]
name = "tcp"
bind = "127.0.0.1:9000"
protocol = "tcp"
max_headers = 10
proxy_protocol = { trusted = ["10.0.0.0/33"] }

[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
cluster = "c"

[[listeners]]
name = "u"
bind = "127.0.0.1:53"
protocol = "udp"
cluster = "nope"
defer_accept = false

[[routes]]
listeners = ["tcp"]
cluster = "c"

[[clusters]]
name = "c"
endpoints = ["127.0.0.1:1"]
proxy_protocol = "v3"
health_check = { kind = "tcp", send_hex = "abc" }
"#;
    let e = errors(bad);
    for want in [
        "listeners[0].name: a tcp listener needs `cluster` (or `sni_routes`)",
        "listeners[0].max_headers: `max_headers` applies only to http and https listeners",
        "listeners[0].proxy_protocol.trusted: invalid network \"10.0.0.0/33\"",
        "listeners[1].cluster: `cluster` applies only to tcp and udp listeners",
        "listeners[2].cluster: unknown cluster \"nope\"",
        "listeners[2].defer_accept: `defer_accept` applies to http, https and tcp listeners",
        "routes[0].listeners: listener \"tcp\" is a tcp/udp listener",
        "clusters[0].proxy_protocol: unknown proxy_protocol \"v3\"",
        "clusters[0].health_check.send_hex: send, send_hex and expect need kind = \"udp\"",
    ] {
        assert!(e.iter().any(|x| x.contains(want)), "{want} in {e:#?}");
    }
}

#[test]
fn websocket_route_settings() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/ws"
cluster = "c"
tunnel_idle_timeout = "5m"
tunnel_max_lifetime = "1h"

[[routes]]
path_prefix = "/api"
cluster = "c"
websocket = false

[[routes]]
respond = { body = "x" }
websocket = true
tunnel_idle_timeout = "1m"

[[clusters]]
name = "c"
endpoints = ["127.0.0.1:1"]
"#;
    let e = errors(text);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].contains("routes[2].tunnel_idle_timeout: `tunnel_idle_timeout` only applies to a route with `cluster`") || e[1].contains("routes[2].tunnel_idle_timeout"), "{e:#?}");
    assert!(
        e.iter()
            .any(|x| x.contains("routes[2].websocket: `websocket` only applies")),
        "{e:#?}"
    );
    let ok = text.replace("websocket = true\ntunnel_idle_timeout = \"1m\"\n", "");
    let c = parse(&ok, "test.toml").expect("valid");
    let Action::Proxy(ws) = &c.routes[0].action else {
        panic!()
    };
    assert!(ws.websocket);
    assert_eq!(ws.tunnel_idle_timeout, std::time::Duration::from_secs(300));
    assert_eq!(
        ws.tunnel_max_lifetime,
        Some(std::time::Duration::from_secs(3600))
    );
    let Action::Proxy(api) = &c.routes[1].action else {
        panic!()
    };
    assert!(!api.websocket);
    assert_eq!(api.tunnel_idle_timeout, DEFAULT_TUNNEL_IDLE_TIMEOUT);
}

#[test]
fn forward_proxy_settings() {
    let text = r#"
[[listeners]]
name = "fwd"
bind = "127.0.0.1:3128"

[listeners.forward]
connect_ports = [443, 8443]
users = [{ name = "alice", password_hash = "plain-text" }]
rules = [
  { name = "a", action = "deny", hosts = ["*.ads.example"] },
  { name = "a", action = "maybe", networks = ["10.0.0.0/40"] },
]

[[listeners]]
name = "l4"
bind = "127.0.0.1:9000"
protocol = "tcp"
cluster = "c"
forward = {}

[[clusters]]
name = "c"
endpoints = ["127.0.0.1:1"]
"#;
    let e = errors(text);
    for want in [
        "listeners[0].forward.users[0].password_hash: password_hash must be an argon2 PHC string",
        "listeners[0].forward.rules[1].name: duplicate rule name \"a\"",
        "listeners[0].forward.rules[1].action: unknown action \"maybe\"",
        "listeners[0].forward.rules[1].networks: invalid network \"10.0.0.0/40\"",
        "listeners[1].forward: `forward` applies to http and https listeners",
    ] {
        assert!(e.iter().any(|x| x.contains(want)), "{want} in {e:#?}");
    }
    let ok = r#"
[[listeners]]
name = "fwd"
bind = "127.0.0.1:3128"
forward = { allow_private = true }
"#;
    let c = parse(ok, "test.toml").expect("valid");
    let f = c.listeners[0].forward.as_ref().unwrap();
    assert_eq!(f.connect_ports, vec![443]);
    assert!(f.allow_private && f.users.is_empty() && f.rules.is_empty());
}

#[test]
fn grpc_health_checks() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
cluster = "a"

[[clusters]]
name = "a"
protocol = "h2c"
endpoints = ["127.0.0.1:1"]
health_check = { kind = "grpc", service = "helloworld.Greeter" }

[[clusters]]
name = "b"
endpoints = ["127.0.0.1:2"]
health_check = { kind = "tcp", service = "x" }
"#;
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].contains("clusters[1].health_check.service: service needs kind = \"grpc\""),
        "{e:#?}"
    );
    let c = parse(&text.replace(", service = \"x\"", ""), "test.toml").expect("valid");
    assert_eq!(
        c.clusters[0].health_check.as_ref().unwrap().kind,
        HealthCheckKind::Grpc {
            service: "helloworld.Greeter".into()
        }
    );
}

/// Messages that mention this key path.
fn at<'a>(e: &'a [String], key: &str) -> Vec<&'a String> {
    let key = format!(": {key}: ");
    e.iter().filter(|x| x.contains(&key)).collect()
}

#[test]
fn cluster_entry_with_several_mistakes_reports_each_and_stays_known() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/"
cluster = "web"

[[clusters]]
name = "web"
endpoints = ["127.0.0.1:1"]
colour = "blue"
panic_threshold = "high"
connect_timeout = "soon"
"#;
    let e = errors(text);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].starts_with("test.toml:13:1: clusters[0].colour: unknown field `colour`"),
        "{e:#?}"
    );
    assert_eq!(
        e[1],
        "test.toml:14:19: clusters[0].panic_threshold: invalid type: expected a percentage from 0 to 100, found text \"high\""
    );
    assert_eq!(
        e[2],
        "test.toml:15:19: clusters[0].connect_timeout: invalid duration \"soon\": expected a number and a unit such as 500ms, 5s, 2m"
    );
}

#[test]
fn listener_entry_with_several_mistakes_reports_each_and_stays_known() {
    let text = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
colour = "blue"
max_headers = "many"
idle_timeout = "-5s"

[[routes]]
listeners = ["web"]
respond = { status = 200 }
"#;
    let e = errors(text);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        at(&e, "listeners[0].colour")[0].contains("unknown field `colour`"),
        "{e:#?}"
    );
    assert_eq!(
        at(&e, "listeners[0].max_headers"),
        [
            "test.toml:6:15: listeners[0].max_headers: invalid type: expected a whole number (0 or more), found text \"many\""
        ]
    );
    assert!(
        at(&e, "listeners[0].idle_timeout")[0].contains("durations cannot be negative"),
        "{e:#?}"
    );
    assert!(!e.iter().any(|x| x.contains("unknown listener")), "{e:#?}");
}

#[test]
fn route_entry_with_several_mistakes_reports_each_and_no_knock_on() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
name = "api"
colour = "x"
grpc = "yes"
path = "api"
tunnel_idle_timeout = "soon"
cluster = "web"

[[routes]]
cluster = 5
prefix_rewrite = "/"

[[clusters]]
name = "web"
endpoints = "127.0.0.1:1"
"#;
    let e = errors(text);
    let want = [
        "test.toml:8:1: routes[0].colour: unknown field `colour`",
        "test.toml:9:8: routes[0].grpc: invalid type: expected true or false, found text \"yes\"",
        "test.toml:10:8: routes[0].path: path must start with '/'",
        "test.toml:11:23: routes[0].tunnel_idle_timeout: invalid duration \"soon\"",
        "test.toml:15:11: routes[1].cluster: invalid type: expected text, found 5",
        "test.toml:20:13: clusters[0].endpoints: invalid type: expected a list of endpoints such as [\"127.0.0.1:8080\"], found text \"127.0.0.1:1\"",
    ];
    assert_eq!(e.len(), want.len(), "{e:#?}");
    for (got, want) in e.iter().zip(want) {
        assert!(got.starts_with(want), "{got}\nwanted {want}");
    }
}

#[test]
fn keys_left_out_are_not_reported_again_as_missing() {
    let text = r#"
[[listeners]]
name = 7
bind = "127.0.0.1:0"
protocol = "https"
tls = { certificates = "c.pem" }

[[listeners]]
name = "l4"
bind = "127.0.0.1:9000"
protocol = "tcp"
cluster = ["c"]

[[clusters]]
name = "c"
endpoints = [{ address = 1 }]
lb = 3
hash_key = "path"
tls = { cert = 5, key = "k.pem" }
health_check = { kind = 1, send = "ping" }

[[clusters]]
lb = "random"
endpoints = ["127.0.0.1:1"]
"#;
    let e = errors(text);
    let want = [
        "listeners[0].name: invalid type: expected text, found 7",
        "listeners[0].tls.certificates: invalid type: expected a list of tables",
        "listeners[1].cluster: invalid type: expected text, found a list",
        "clusters[0].endpoints[0].address: invalid type: expected text, found 1",
        "clusters[0].lb: invalid type: expected text, found 3",
        "clusters[0].tls.cert: invalid type: expected text, found 5",
        "clusters[0].health_check.kind: invalid type: expected text, found 1",
        "clusters[1]: missing field `name`: every cluster needs a name",
    ];
    assert_eq!(e.len(), want.len(), "{e:#?}");
    for w in want {
        assert!(e.iter().any(|x| x.contains(w)), "missing {w:?} in {e:#?}");
    }
}

#[test]
fn messages_name_no_rust_types() {
    let text = r#"
[server]
worker_threads = -1
drain_timeout = 5
watch_config = "yes"
max_connections = 1.5
upgrade_socket = 1

[admin]
bind = ["x"]
token = 5

[[listeners]]
name = 5
bind = 7
max_headers = "many"
max_uri_bytes = -3
max_concurrent_streams = 99999999999
h2_max_reset_streams = -1
max_connections_per_ip = "x"
x_forwarded = 1
request_id = 3
tls = "x"
sni_routes = "x"
proxy_protocol = { trusted = 1 }
forward = { connect_ports = [70000, "x", -1], rules = [{ name = 1, action = [] }], users = "u" }

[[routes]]
listeners = 1
host = { a = 1 }
headers = { name = "x" }
respond = { status = "ok", headers = [1], body = 3 }
redirect = { status = 70000, location = 1 }
grpc = "t"
methods = [1]
websocket = "yes"

[[clusters]]
name = ["web"]
endpoints = [5, { address = "a", colour = 1 }, { weight = -1, address = "x" }]
pool = "big"
retry = { statuses = "x", max_retries = -2, budget_percent = "all" }
panic_threshold = 2026-01-01
health_check = { expected_statuses = [1.5], healthy_threshold = -1, interval = 2 }
circuit_breaker = { max_connections = true }
outlier_detection = { consecutive_failures = [] }
dns = { resolvers = "x", min_ttl = 1 }
sticky = { secure = "yes" }
tls = { insecure_skip_verify = "no" }
"#;
    let e = errors(text);
    assert!(e.len() >= 40, "{e:#?}");
    for word in [
        "usize", "u16", "u32", "u64", "i64", "String", "Vec", "Option", "struct", "sequence",
        " map",
    ] {
        let bad: Vec<&String> = e.iter().filter(|x| x.contains(word)).collect();
        assert!(bad.is_empty(), "{word:?} in {bad:#?}");
    }
    for want in [
        "server.worker_threads: out of range: expected a whole number (0 or more), found -1",
        "server.drain_timeout: invalid type: expected a duration in quotes such as \"5s\" or \"500ms\", found 5",
        "server.watch_config: invalid type: expected true or false, found text \"yes\"",
        "listeners[0].forward.connect_ports[0]: out of range: expected a port 1-65535, found 70000",
        "routes[0].redirect.status: out of range: expected an HTTP status code such as 200, found 70000",
        "listeners[0].bind: invalid type: expected text or a list of text, found 7",
        "clusters[0].pool: invalid type: expected a table, found text \"big\"",
    ] {
        assert!(
            e.iter().any(|x| x.contains(want)),
            "missing {want:?} in {e:#?}"
        );
    }
}

#[test]
fn negative_duration_says_so() {
    let e = errors("[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\nidle_timeout = \"-5s\"\n");
    assert_eq!(
        e,
        [
            "test.toml:4:16: listeners[0].idle_timeout: invalid duration \"-5s\": durations cannot be negative; expected a number and a unit such as 500ms, 5s, 2m"
        ]
    );
}

#[test]
fn invalid_utf8_has_a_line_and_column() {
    let path = std::env::temp_dir().join(format!("pylon-utf8-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        b"[[listeners]]\nname = \"caf\xe9\"\nbind = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let e = pylon_config::load_file(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(
        e.0[0].to_string(),
        format!(
            "{}:2:12: invalid UTF-8 (byte 0xe9): the configuration must be UTF-8 text",
            path.display()
        )
    );
}

#[test]
fn https_without_tls_is_reported_at_protocol() {
    let e = errors("[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\n");
    assert_eq!(
        e,
        [
            "test.toml:4:12: listeners[0].protocol: protocol \"https\" needs a [listeners.tls] table with at least one certificate"
        ]
    );
    // A `tls` that is there but not a table is reported once, as itself.
    let e = errors(
        "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\ntls = \"c.pem\"\n",
    );
    assert_eq!(
        e,
        ["test.toml:5:7: listeners[0].tls: invalid type: expected a table, found text \"c.pem\""]
    );
}

#[test]
fn listeners_bind_host_names_resolved_to_every_address() {
    let c = parse(
        "[[listeners]]\nname = \"a\"\nbind = [\"localhost:8080\", \"127.0.0.1:9090\"]\n[[routes]]\nrespond = { body = \"x\" }\n",
        "test.toml",
    )
    .expect("a host name is a valid bind");
    let l = &c.listeners[0];
    assert!(
        l.binds.contains(&"127.0.0.1:8080".parse().unwrap()),
        "{:?}",
        l.binds
    );
    assert!(
        l.binds.iter().all(|a| a.ip().is_loopback()),
        "{:?}",
        l.binds
    );
    assert_eq!(l.binds.last(), Some(&"127.0.0.1:9090".parse().unwrap()));
    assert_eq!(l.bind_as_written, ["localhost:8080", "127.0.0.1:9090"]);
    // The admin API takes a name too.
    let c = parse(
        "[admin]\nbind = \"localhost:9901\"\n[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\n[[routes]]\nrespond = { body = \"x\" }\n",
        "test.toml",
    )
    .expect("admin bind by name");
    assert!(c.admin.unwrap().bind.ip().is_loopback());
}

#[test]
fn bind_names_that_do_not_resolve_or_are_not_names_are_errors() {
    let e = errors(
        "[[listeners]]\nname = \"a\"\nbind = \"no-such-host.invalid:8080\"\n[[listeners]]\nname = \"b\"\nbind = \"bad host!:80\"\n[[listeners]]\nname = \"c\"\nbind = \"localhost\"\n",
    );
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].starts_with(
            "test.toml:3:8: listeners[0].bind: cannot resolve \"no-such-host.invalid\" to listen on"
        ),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("test.toml:6:8: listeners[1].bind: invalid address \"bad host!:80\""),
        "{}",
        e[1]
    );
    assert!(
        e[2].starts_with(
            "test.toml:9:8: listeners[2].bind: invalid address \"localhost\": no port"
        ),
        "{}",
        e[2]
    );
}

#[test]
fn cache_zone_mistakes_are_reported_where_they_are_written() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path = "/a"
cluster = "c"
cache = "nope"

[[routes]]
path = "/b"
respond = {}
cache = "z"

[[clusters]]
name = "c"
endpoints = ["127.0.0.1:1"]

[[caches]]
name = "z"
memory = "1MiB"
max_object = "2MiB"
stale_if_error = "later"
heuristic_fraction = 2.0
key = { headers = ["bad header"] }

[[caches]]
memory = "1MiB"

[[caches]]
name = "d"
disk = { path = "", size = "1KiB" }
"#;
    assert_errors(
        text,
        &[
            "test.toml:9:9: routes[0].cache: unknown cache \"nope\"",
            "test.toml:14:9: routes[1].cache: `cache` only applies to a route with `cluster`",
            "test.toml:23:14: caches[0].max_object: max_object must not be larger than the zone's memory",
            "test.toml:24:18: caches[0].stale_if_error: invalid duration",
            "test.toml:25:22: caches[0].heuristic_fraction: heuristic_fraction must be between 0 and 1",
            "test.toml:26:19: caches[0].key.headers: invalid header name \"bad header\"",
            "test.toml:28:1: caches[1]: a [[caches]] entry needs a `name`",
            "test.toml:33:17: caches[2].disk.path: the disk tier needs a directory path",
            "test.toml:33:28: caches[2].disk.size: the disk size must be at least max_object",
        ],
    );
}

#[test]
fn auth_policy_mistakes_are_reported_where_they_are_written() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path = "/a"
cluster = "c"
auth = ["staff", "nobody"]
auth_skip = ["healthz"]

[[routes]]
path = "/b"
respond = {}
auth = ["staff"]

[[clusters]]
name = "c"
endpoints = ["127.0.0.1:1"]

[[auth]]
name = "staff"
basic = { realm = "a \"quoted\" realm", users = [{ name = "alice", password_hash = "plain" }] }

[[auth]]
name = "empty"
basic = {}

[[auth]]
name = "kindless"
"#;
    assert_errors(
        text,
        &[
            "test.toml:9:8: routes[0].auth: unknown auth policy \"nobody\"",
            "test.toml:10:13: routes[0].auth_skip: auth_skip paths must start with '/'",
            "test.toml:15:8: routes[1].auth: `auth` only applies to a route with `cluster`",
            "test.toml:23:19: auth[0].basic.realm: realm must be non-empty text without quotes",
            "test.toml:23:84: auth[0].basic.users[0].password_hash: password_hash must be an argon2 PHC string",
            "test.toml:25:1: auth[1]: a basic policy needs at least one user",
            "test.toml:29:1: auth[2]: an [[auth]] policy needs its kind",
        ],
    );
}

#[test]
fn an_api_key_policy_takes_a_header_or_a_query_parameter() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[auth]]
name = "both"
api_key = { header = "x-key", query = "key", keys_file = "k.txt" }

[[auth]]
name = "neither"
api_key = { keys_file = "k.txt" }

[[auth]]
name = "two-kinds"
api_key = { header = "x-key", keys_file = "k.txt" }
basic = { users = [] }
"#;
    assert_errors(
        text,
        &[
            "test.toml:8:39: auth[0].api_key.query: give `header` or `query`, not both",
            "test.toml:10:1: auth[1]: an api_key policy needs `header` or `query`",
            "test.toml:14:1: auth[2]: an [[auth]] policy has exactly one kind",
        ],
    );
}

#[test]
fn rate_limit_mistakes_are_reported_where_they_are_written() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
cluster = "c"
rate_limit = ["nope"]

[[clusters]]
name = "c"
endpoints = ["127.0.0.1:1"]

[[rate_limits]]
name = "a"
key = "ip"
rate = 0
per = "soon"
burst = 0

[[rate_limits]]
name = "b"
"#;
    assert_errors(
        text,
        &[
            "test.toml:8:14: routes[0].rate_limit: unknown rate limit \"nope\"",
            "test.toml:16:7: rate_limits[0].key: invalid key \"ip\"",
            "test.toml:17:8: rate_limits[0].rate: rate must be at least 1",
            "test.toml:18:7: rate_limits[0].per: invalid duration",
            "test.toml:19:9: rate_limits[0].burst: burst must be at least 1",
            "test.toml:21:1: rate_limits[1]: a rate limit needs `rate`",
        ],
    );
}

#[test]
fn global_and_concurrency_limit_mistakes_are_reported_where_they_are_written() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
rate_limit = ["ghost"]

[[listeners]]
name = "l4"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "c"
rate_limit = ["g"]

[[clusters]]
name = "c"
endpoints = ["127.0.0.1:1"]

[[rate_limits]]
name = "g"
key = "claim:+client_ip"
rate = 10
global = { redis = "http://cache:6379", timeout = "0s", on_error = "maybe", batch = 11 }

[[rate_limits]]
name = "both"
concurrency = 4
rate = 3
"#;
    assert_errors(
        text,
        &[
            "test.toml:5:14: listeners[0].rate_limit: unknown rate limit \"ghost\"",
            "test.toml:12:14: listeners[1].rate_limit: `rate_limit` on a listener applies to the routes of an http or https listener",
            "test.toml:20:7: rate_limits[0].key: invalid key \"claim:\"",
            "test.toml:22:20: rate_limits[0].global.redis: invalid Redis address \"http://cache:6379\"",
            "test.toml:22:51: rate_limits[0].global.timeout: timeout must be greater than zero",
            "test.toml:22:68: rate_limits[0].global.on_error: unknown on_error \"maybe\", expected allow or deny",
            "test.toml:22:85: rate_limits[0].global.batch: batch must be between 1 and the burst (10)",
            "test.toml:27:8: rate_limits[1].rate: a concurrency limit counts requests in flight",
        ],
    );
}

#[test]
fn jwks_and_external_auth_mistakes_are_reported_where_they_are_written() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[clusters]]
name = "idp"
endpoints = ["127.0.0.1:1"]

[[auth]]
name = "keyless"
jwt = { algorithms = ["ES256"] }

[[auth]]
name = "both"
jwt = { algorithms = ["ES256"], key_file = "k.pem", jwks = { url = "https://idp/keys", cluster = "idp" } }

[[auth]]
name = "bad-jwks"
jwt = { algorithms = ["RS256"], jwks = { url = "ftp://idp/keys", cluster = "nowhere", refresh = "0s" } }

[[auth]]
name = "ext"
external = { cluster = "ghost", path_prefix = "check", on_error = "shrug", cache_key = "header:", upstream_headers = ["bad header"] }

[[routes]]
path = "/x"
cluster = "idp"
auth = ["ext"]
claims = { role = "admin" }
"#;
    assert_errors(
        text,
        &[
            "test.toml:10:1: auth[0]: a jwt policy needs its key: `key_file` (a secret or PEM public key) or `jwks` (a JWKS URL)",
            "test.toml:16:44: auth[1].jwt.key_file: give `key_file` or `jwks`, not both",
            "test.toml:20:48: auth[2].jwt.jwks.url: invalid JWKS URL \"ftp://idp/keys\"",
            "test.toml:20:76: auth[2].jwt.jwks.cluster: unknown cluster \"nowhere\"",
            "test.toml:20:97: auth[2].jwt.jwks.refresh: must be greater than zero",
            "test.toml:24:24: auth[3].external.cluster: unknown cluster \"ghost\"",
            "test.toml:24:47: auth[3].external.path_prefix: path_prefix must start with '/'",
            "test.toml:24:67: auth[3].external.on_error: unknown on_error \"shrug\", expected allow or deny",
            "test.toml:24:88: auth[3].external.cache_key: invalid key \"header:\"",
            "test.toml:24:118: auth[3].external.upstream_headers: invalid header name \"bad header\"",
            "test.toml:30:10: routes[0].claims: `claims` needs a jwt policy in this route's `auth`",
        ],
    );
}

#[test]
fn backend_and_split_mistakes_are_reported_where_they_are_written() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[clusters]]
name = "v1"
endpoints = ["127.0.0.1:1"]

[[routes]]
path = "/a"
cluster = "v1"
backends = [{ cluster = "v1" }]

[[routes]]
path = "/b"
backends = [{ cluster = "v1", weight = 0 }, { cluster = "v9", header = "x-canary" }, { cluster = "v1" }]
split = { sticky = "claim:sub", canary = "v7", max_5xx_ratio = 1.5, window = "0s" }

[[routes]]
path = "/c"
cluster = "v1"
split = { sticky = "cookie", cookie_name = "bad cookie" }
"#;
    assert_errors(
        text,
        &[
            "test.toml:13:12: routes[0].backends: give `cluster` or `backends`, not both",
            "test.toml:17:57: routes[1].backends[1].cluster: unknown cluster \"v9\"",
            "test.toml:17:72: routes[1].backends[1].header: expected NAME=VALUE",
            "test.toml:17:98: routes[1].backends[2].cluster: cluster \"v1\" is listed twice",
            "test.toml:18:20: routes[1].split.sticky: invalid sticky \"claim:sub\"",
            "test.toml:18:42: routes[1].split.canary: the canary \"v7\" is not one of the backends",
            "test.toml:18:64: routes[1].split.max_5xx_ratio: max_5xx_ratio is a share above 0 and at most 1",
            "test.toml:18:78: routes[1].split.window: window is a duration above zero",
            "test.toml:23:9: routes[2].split: `split` needs `backends` on the same route",
            "test.toml:23:44: routes[2].split.cookie_name: cookie_name is a cookie name",
        ],
    );
}

#[test]
fn mirror_mistakes_are_reported_where_they_are_written() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[clusters]]
name = "app"
endpoints = ["127.0.0.1:1"]

[[routes]]
path = "/a"
cluster = "app"
mirror = { cluster = "ghost", percent = 150.0, timeout = "0s", max_body = "lots" }
"#;
    assert_errors(
        text,
        &[
            "test.toml:13:22: routes[0].mirror.cluster: unknown cluster \"ghost\"",
            "test.toml:13:41: routes[0].mirror.percent: percent is a share from 0 to 100",
            "test.toml:13:58: routes[0].mirror.timeout: timeout is a duration above zero",
            "test.toml:13:75: routes[0].mirror.max_body: invalid size \"lots\"",
        ],
    );
}

#[test]
fn compression_mistakes_are_reported_where_they_are_written() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[clusters]]
name = "app"
endpoints = ["127.0.0.1:1"]

[[routes]]
path = "/a"
cluster = "app"
compression = { algorithms = ["lz4"], content_types = ["json"], gzip_level = 12, zstd_level = 0, min_size = "big" }

[[routes]]
path = "/b"
cluster = "app"
compression = "yes"
"#;
    assert_errors(
        text,
        &[
            "test.toml:13:15: routes[0].compression: compression.algorithms: unknown \"lz4\", expected zstd, br or gzip",
            "test.toml:13:15: routes[0].compression: compression.content_types: \"json\" is not a media type",
            "test.toml:13:15: routes[0].compression: compression.gzip_level is 1 to 9",
            "test.toml:13:15: routes[0].compression: compression.zstd_level is 1 to 19",
            "test.toml:13:15: routes[0].compression: compression.min_size: invalid size \"big\"",
            "test.toml:18:15: routes[1].compression: invalid type: expected true, false, or a table",
        ],
    );
}

#[test]
fn rule_and_files_mistakes_are_reported_where_they_are_written() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[clusters]]
name = "app"
endpoints = ["127.0.0.1:1"]

[[routes]]
path = "/a"
cluster = "app"
regex_rewrite = { pattern = "(unclosed", replacement = "api" }
request_headers = { set = { "bad header" = "x", x-ok = "{nope}" }, remove = ["also bad"] }
response_headers = { add = { x-brace = "{client_ip" } }
query = { set = { "a&b" = "1" } }

[[routes]]
path = "/b"
files = { root = "/definitely/not/here", index = ["../x"] }
"#;
    assert_errors(
        text,
        &[
            "test.toml:13:29: routes[0].regex_rewrite.pattern: invalid regex",
            "test.toml:13:56: routes[0].regex_rewrite.replacement: replacement must start with '/'",
            "test.toml:14:29: routes[0].request_headers.set.bad header: invalid header name \"bad header\"",
            "test.toml:14:56: routes[0].request_headers.set.x-ok: unknown variable {nope}",
            "test.toml:14:77: routes[0].request_headers.remove: invalid header name \"also bad\"",
            "test.toml:15:40: routes[0].response_headers.add.x-brace: unclosed '{'",
            "test.toml:16:19: routes[0].query.set.a&b: invalid query parameter name",
            "test.toml:20:18: routes[1].files.root: files.root /definitely/not/here is not a directory",
            "test.toml:20:50: routes[1].files.index: index names are file names, without '/'",
        ],
    );
}

#[test]
fn error_page_mistakes_are_reported_where_they_are_written() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[clusters]]
name = "app"
endpoints = ["127.0.0.1:1"]

[[routes]]
path = "/a"
cluster = "app"
error_pages = [
  { status = [200], body = "x" },
  { status = [502], file = "no/such/page.html" },
  { status = [503] },
]
"#;
    assert_errors(
        text,
        &[
            "test.toml:14:14: routes[0].error_pages[0].status: status lists error statuses, 400 to 599",
            "test.toml:15:28: routes[0].error_pages[1].file: cannot read",
            "test.toml:16:3: routes[0].error_pages[2]: an error page has `file` or `body`",
        ],
    );
}

#[test]
fn jwt_policy_mistakes_are_reported_where_they_are_written() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[auth]]
name = "mixed"
jwt = { algorithms = ["HS256", "ES256"], key_file = "k" }

[[auth]]
name = "unknown"
jwt = { algorithms = ["none"], key_file = "k", leeway = "later" }
"#;
    assert_errors(
        text,
        &[
            "test.toml:8:22: auth[0].jwt.algorithms: one key verifies one family",
            "test.toml:12:22: auth[1].jwt.algorithms: unknown algorithm",
            "test.toml:12:57: auth[1].jwt.leeway: invalid duration",
        ],
    );
}

#[test]
fn stun_and_turn_mistakes_are_reported_where_they_are_written() {
    let dir = std::env::temp_dir().join(format!("pylon-turn-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("users.txt");
    std::fs::write(&users, "ok:pw\nbroken\nok:again\n").unwrap();
    let text = format!(
        r#"
[[listeners]]
name = "turn"
bind = "0.0.0.0:3478"
protocol = "turn"
transports = ["udp", "sctp", "tcp", "tls"]
cluster = "x"

[listeners.turn]
realm = ""
relay_ports = "80-70"
secret = "s"
secret_file = "nope.txt"
users_file = "{}"
allowed_peers = ["10.0.0.0/33"]
default_lifetime = "2h"
user_quota = 0

[[listeners]]
name = "stun"
bind = "127.0.0.1:3479"
protocol = "stun"

[listeners.turn]
realm = "x"

[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
transports = ["udp"]

[[listeners]]
name = "t2"
bind = "127.0.0.1:3480"
protocol = "turn"
"#,
        users.display()
    );
    assert_errors(
        &text,
        &[
            "test.toml:6:14: listeners[0].transports: unknown transport \"sctp\", expected udp, tcp or tls",
            "test.toml:6:14: listeners[0].transports: tcp and tls would share one TCP port",
            "test.toml:6:14: listeners[0].transports: transport \"tls\" needs a [listeners.tls] table",
            "test.toml:7:11: listeners[0].cluster: `cluster` applies only to tcp and udp listeners",
            "test.toml:9:1: listeners[0].turn: [listeners.turn] needs `relay_ip` when the listener binds a wildcard address",
            "test.toml:10:9: listeners[0].turn.realm: realm must be 1 to 127 characters",
            "test.toml:11:15: listeners[0].turn.relay_ports: relay_ports is a range of ports",
            "test.toml:12:10: listeners[0].turn.secret: `secret` and `secret_file` are one or the other",
            "test.toml:14:14: listeners[0].turn.users_file: ",
            "test.toml:14:14: listeners[0].turn.users_file: ",
            "test.toml:15:17: listeners[0].turn.allowed_peers: invalid network \"10.0.0.0/33\"",
            "test.toml:16:20: listeners[0].turn.default_lifetime: default_lifetime must not exceed max_lifetime",
            "test.toml:17:14: listeners[0].turn.user_quota: must be at least 1",
            "test.toml:24:1: listeners[1].turn: `turn` applies to listeners with protocol = \"turn\"",
            "test.toml:30:14: listeners[2].transports: `transports` applies to stun and turn listeners",
            "test.toml:35:12: listeners[3].protocol: protocol \"turn\" needs a [listeners.turn] table",
        ],
    );
    let e = errors(&text);
    assert!(
        e[8].ends_with("users.txt line 2: expected name:password"),
        "{}",
        e[8]
    );
    assert!(
        e[9].ends_with("users.txt line 3: user \"ok\" is listed twice"),
        "{}",
        e[9]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn server_timing_needs_a_cluster() {
    let text = r#"
[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
respond = { body = "x" }
server_timing = true
"#;
    assert_errors(
        text,
        &[
            "test.toml:8:17: routes[0].server_timing: `server_timing` only applies to a route with `cluster`",
        ],
    );
}

#[test]
fn tracing_settings_are_checked() {
    let text = r#"[tracing]
protocol = "zipkin"
ratio = 1.5
sampler = "always"
endpoint = "ftp://x"

[[listeners]]
name = "front"
bind = "127.0.0.1:0"
"#;
    assert_errors(
        text,
        &[
            "test.toml:2:12: tracing.protocol: unknown protocol \"zipkin\": use \"grpc\" or \"http/protobuf\"",
            "test.toml:3:9: tracing.ratio: `ratio` must be between 0 and 1",
            "test.toml:4:11: tracing.sampler: unknown sampler \"always\": use \"parent_based\" or \"ratio\"",
            "test.toml:5:12: tracing.endpoint: `endpoint` must be an http:// or https:// URL with a host",
        ],
    );
    assert_errors(
        "[tracing]\nservice_name = \"x\"\n[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n",
        &["test.toml:1:1: tracing: [tracing] needs `endpoint`"],
    );
    let ok = pylon_config::parse(
        "[tracing]\nendpoint = \"http://collector:4318\"\nprotocol = \"http/protobuf\"\nheaders = { \"x-api-key\" = \"k\" }\n[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n",
        "test.toml",
    )
    .unwrap();
    let t = ok.tracing.as_ref().unwrap();
    assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
    // The effective config hides the key and parses back to the same settings.
    let text = pylon_config::effective::to_toml(&ok, None).unwrap();
    assert!(!text.contains("\"k\""), "{text}");
    let back = pylon_config::parse(&text, "effective.toml").unwrap();
    assert_eq!(back.tracing.as_ref().unwrap().endpoint, t.endpoint);
    assert_eq!(
        back.tracing.as_ref().unwrap().headers,
        [("x-api-key".to_owned(), "<redacted>".to_owned())]
    );
}

#[test]
fn acme_settings_are_checked() {
    let text = r#"[[listeners]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "https"
[listeners.tls.acme]
directory = "http://ca.example/dir"
names = ["*.example.com", "bad_name", "a.example.com", "a.example.com"]
contact = ["not-an-email"]
challenge = "dns-01"
external_account = { key_id = "", hmac_key = "not base64!" }
retry_backoff = "10m"
retry_max = "1m"

[[listeners]]
name = "l4"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "c"
tls = { acme = { names = ["b.example.com"] } }

[[listeners]]
name = "empty"
bind = "127.0.0.1:0"
protocol = "https"
tls = { min_version = "1.3" }

[[listeners]]
name = "staging"
bind = "127.0.0.1:0"
protocol = "https"
tls = { acme = { staging = true, directory = "https://ca.example/dir" } }

[[clusters]]
name = "c"
endpoints = ["127.0.0.1:1"]
"#;
    assert_errors(
        text,
        &[
            "test.toml:6:13: listeners[0].tls.acme.directory: `directory` must be an https:// URL",
            "test.toml:7:9: listeners[0].tls.acme.names: \"*.example.com\": wildcard names need the DNS-01 challenge",
            "test.toml:7:9: listeners[0].tls.acme.names: \"bad_name\" is not a DNS name",
            "test.toml:7:9: listeners[0].tls.acme.names: \"a.example.com\" is named twice",
            "test.toml:8:11: listeners[0].tls.acme.contact: \"not-an-email\" is not an email address",
            "test.toml:9:13: listeners[0].tls.acme.challenge: unknown challenge \"dns-01\": use \"tls-alpn-01\" or \"http-01\"",
            "test.toml:10:31: listeners[0].tls.acme.external_account.key_id: `key_id` must not be empty",
            "test.toml:10:46: listeners[0].tls.acme.external_account.hmac_key: `hmac_key` must be the base64url MAC key",
            "test.toml:12:13: listeners[0].tls.acme.retry_max: `retry_max` cannot be shorter than `retry_backoff`",
            "test.toml:19:16: listeners[1].tls.acme: acme certificates are for https listeners",
            "test.toml:25:7: listeners[2].tls: tls needs `certificates` (files) or `acme` (ordered automatically)",
            "test.toml:31:16: listeners[3].tls.acme: acme needs `names`",
            "test.toml:31:46: listeners[3].tls.acme.directory: `staging = true` picks Let's Encrypt's staging directory",
        ],
    );
    assert_errors(
        "[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\ntls = { acme = { on_demand = true, on_demand_per_minute = 0 } }\n[[listeners]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\ntls = { acme = { names = [\"b.example.com\"], ask = \"ftp://x\" } }\n",
        &[
            "test.toml:5:30: listeners[0].tls.acme.on_demand: on_demand needs `ask`",
            "test.toml:10:51: listeners[1].tls.acme.ask: `ask` is for `on_demand = true`",
        ],
    );
    // Defaults: Let's Encrypt, staging on request, TLS-ALPN-01, `acme` beside the file.
    let ok = pylon_config::parse(
        "[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\ntls = { acme = { names = [\"Example.com\"], contact = [\"ops@example.com\"], staging = true, external_account = { key_id = \"k\", hmac_key = \"c2VjcmV0\" } } }\n",
        "/etc/pylon/test.toml",
    )
    .unwrap();
    let a = ok.listeners[0].tls.as_ref().unwrap().acme.as_ref().unwrap();
    assert_eq!(a.directory, pylon_config::model::LETSENCRYPT_STAGING);
    assert_eq!(a.names, ["example.com"]);
    assert_eq!(a.contact, ["mailto:ops@example.com"]);
    assert_eq!(a.challenge, pylon_config::model::AcmeChallenge::TlsAlpn01);
    assert_eq!(a.storage.path, std::path::Path::new("/etc/pylon/acme"));
    // The effective config hides the MAC key and parses back.
    let text = pylon_config::effective::to_toml(&ok, None).unwrap();
    assert!(!text.contains("c2VjcmV0"), "{text}");
    let back = pylon_config::parse(&text, "/etc/pylon/effective.toml").unwrap();
    assert_eq!(back, pylon_config::effective::redact(&ok));
}

#[test]
fn etcd_discovery_is_checked() {
    let text = r#"[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[clusters]]
name = "a"
discovery = "http://127.0.0.1:2379/services"

[[clusters]]
name = "b"
endpoints = ["api.internal:80"]
discovery = "etcd://127.0.0.1:2379/services/b"
"#;
    assert_errors(
        text,
        &[
            "test.toml:7:13: clusters[0].discovery: `discovery` must be etcd://HOST:PORT[,HOST:PORT...]/PREFIX",
            "test.toml:12:13: clusters[1].discovery: `discovery` takes endpoints from etcd beside fixed IP addresses, not beside DNS names",
        ],
    );
    // Without `endpoints`, and in the effective config.
    let ok = pylon_config::parse(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n[[clusters]]\nname = \"a\"\ndiscovery = \"etcd://10.0.0.1:2379,10.0.0.2:2379/services/a/\"\n",
        "test.toml",
    )
    .unwrap();
    let d = ok.clusters[0].discovery.as_ref().unwrap();
    assert_eq!(d.etcd, ["10.0.0.1:2379", "10.0.0.2:2379"]);
    assert_eq!(d.prefix, "/services/a/");
    let text = pylon_config::effective::to_toml(&ok, None).unwrap();
    assert_eq!(pylon_config::parse(&text, "effective.toml").unwrap(), ok);
}
