//! The effective configuration in the file's own terms: a validated [`Config`] written
//! back as a TOML document with the keys and values `docs/config.md` lists (what
//! `GET /config` answers). Every key that has a default is written with the value in
//! force; options that are off or empty unless set (`tls`, `retry`, a route's `host`)
//! appear only when set. Durations are written in their largest exact unit (`"30s"`,
//! `"10m"`), sizes in KiB/MiB/GiB when exact, file paths absolute.
//!
//! Secrets (`admin.token`, forward-proxy users' `password_hash`, `sticky.secret`, a
//! TURN listener's inline `secret`) are
//! replaced by placeholders that still pass validation, and the rendered TOML opens with
//! a comment naming each redacted key: the document passes `pylon check` and parses back
//! to the same model as [`redact`] of the original.
//!
//! One quirk of the model is kept faithful rather than complete: a `tcp` listener's
//! `idle_timeout` is written only when it was set in the file, since its default differs
//! from the HTTP one the model also records.

use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use crate::model::*;

mod routes;
use routes::route;

/// Placeholder for `admin.token` (long enough to be accepted).
pub const REDACTED_TOKEN: &str = "<redacted-admin-token>";
/// Placeholder for a forward-proxy user's `password_hash` (no password matches it).
pub const REDACTED_PASSWORD_HASH: &str = "$argon2id$<redacted>";
/// Placeholder for `clusters.sticky.secret`.
pub const REDACTED_SECRET: &str = "<redacted>";
/// What an ACME External Account Binding's MAC key becomes: base64url, as the key must
/// be (it decodes to `redacted`).
pub const REDACTED_MAC_KEY: &str = "cmVkYWN0ZWQ";

/// The configuration as a document in the file's keys (secrets as placeholders). It
/// serializes with any serde serializer: TOML through [`to_toml`], JSON with the same
/// keys through `serde_json`.
pub fn document(config: &Config) -> Table {
    let mut doc = Table::new();
    doc.insert("server".into(), server(&config.server).into());
    doc.insert("admin".into(), admin(config.admin.as_ref()).into());
    doc.insert("access_log".into(), access_log(&config.access_log).into());
    let listeners: Vec<Value> = config.listeners.iter().map(listener).collect();
    doc.insert("listeners".into(), listeners.into());
    if !config.routes.is_empty() {
        let routes: Vec<Value> = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| route(i, r))
            .collect();
        doc.insert("routes".into(), routes.into());
    }
    if !config.clusters.is_empty() {
        let clusters: Vec<Value> = config.clusters.iter().map(cluster).collect();
        doc.insert("clusters".into(), clusters.into());
    }
    if !config.caches.is_empty() {
        let caches: Vec<Value> = config.caches.iter().map(cache).collect();
        doc.insert("caches".into(), caches.into());
    }
    if !config.auth.is_empty() {
        let auth: Vec<Value> = config.auth.iter().map(auth_policy).collect();
        doc.insert("auth".into(), auth.into());
    }
    if !config.rate_limits.is_empty() {
        let limits: Vec<Value> = config
            .rate_limits
            .iter()
            .map(|l| {
                let key: Vec<String> = l.key.iter().map(ToString::to_string).collect();
                let mut t = T::default();
                t.put("name", l.name.as_str()).put("key", key.join("+"));
                match l.concurrency {
                    Some(n) => {
                        t.put("concurrency", int(n));
                    }
                    None => {
                        t.put("rate", int(l.rate))
                            .put("per", dur(l.per))
                            .put("burst", int(l.burst))
                            .put("delay", dur(l.delay));
                    }
                }
                if let Some(g) = &l.global {
                    let on_error = match g.on_error {
                        FailMode::Allow => "allow",
                        FailMode::Deny => "deny",
                    };
                    t.put(
                        "global",
                        Value::Table(
                            T::default()
                                .put("redis", g.redis.as_str())
                                .put("timeout", dur(g.timeout))
                                .put("on_error", on_error)
                                .put("batch", int(g.batch))
                                .put("prefix", g.prefix.as_str())
                                .done(),
                        ),
                    );
                }
                Value::Table(t.done())
            })
            .collect();
        doc.insert("rate_limits".into(), limits.into());
    }
    if let Some(t) = &config.tracing {
        doc.insert("tracing".into(), tracing(t).into());
    }
    doc
}

fn tracing(t: &Tracing) -> Table {
    let mut headers = T::default();
    for (k, _) in &t.headers {
        headers.put(k, REDACTED_SECRET);
    }
    T::default()
        .put("enabled", true)
        .put("endpoint", t.endpoint.as_str())
        .put(
            "protocol",
            match t.protocol {
                OtlpProtocol::Grpc => "grpc",
                OtlpProtocol::HttpProtobuf => "http/protobuf",
            },
        )
        .put("service_name", t.service_name.as_str())
        .put(
            "sampler",
            match t.sampler {
                Sampler::ParentBased => "parent_based",
                Sampler::Ratio => "ratio",
            },
        )
        .put("ratio", Value::Float(t.ratio))
        .put("always_sample_errors", t.always_sample_errors)
        .put("headers", headers.done())
        .put("max_queue", int(t.max_queue))
        .put("max_batch", int(t.max_batch))
        .put("flush_interval", dur(t.flush_interval))
        .put("export_timeout", dur(t.export_timeout))
        .done()
}

/// The TOML text of [`document`], opening with `# hash: HASH` (when given) and a
/// comment naming the redacted keys.
pub fn to_toml(config: &Config, hash: Option<&str>) -> Result<String, toml::ser::Error> {
    let body = toml::to_string(&document(config))?;
    let mut out = String::new();
    if let Some(h) = hash {
        out.push_str(&format!("# hash: {h}\n"));
    }
    out.push_str(
        "# The effective configuration: every key with the value in force, defaults included.\n",
    );
    let redacted = redacted_keys(config);
    if !redacted.is_empty() {
        out.push_str(
            "# Redacted: these keys hold placeholders, not the real values; put the real\n\
             # ones back before serving with this file.\n",
        );
        for k in redacted {
            out.push_str(&format!("#   {k}\n"));
        }
    }
    out.push('\n');
    out.push_str(&body);
    Ok(out)
}

/// Key paths (`listeners[2].forward.users[0].password_hash`) of the secrets that
/// [`document`] replaces with placeholders.
pub fn redacted_keys(config: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    if config.admin.as_ref().is_some_and(|a| a.token.is_some()) {
        keys.push("admin.token".to_owned());
    }
    for (i, l) in config.listeners.iter().enumerate() {
        for (j, _) in l.forward.iter().flat_map(|f| f.users.iter()).enumerate() {
            keys.push(format!("listeners[{i}].forward.users[{j}].password_hash"));
        }
    }
    for (i, a) in config.auth.iter().enumerate() {
        if let AuthKind::Basic { users, .. } = &a.kind {
            for j in 0..users.len() {
                keys.push(format!("auth[{i}].basic.users[{j}].password_hash"));
            }
        }
    }
    for (i, c) in config.clusters.iter().enumerate() {
        if c.sticky.as_ref().is_some_and(|s| s.secret.is_some()) {
            keys.push(format!("clusters[{i}].sticky.secret"));
        }
    }
    for (k, _) in config.tracing.iter().flat_map(|t| t.headers.iter()) {
        keys.push(format!("tracing.headers.{k}"));
    }
    for (i, l) in config.listeners.iter().enumerate() {
        let acme = l.tls.as_ref().and_then(|t| t.acme.as_ref());
        if acme.is_some_and(|a| a.external_account.is_some()) {
            keys.push(format!("listeners[{i}].tls.acme.external_account.hmac_key"));
        }
    }
    for (i, l) in config.listeners.iter().enumerate() {
        let relay = l.stun.as_ref().and_then(|s| s.relay.as_ref());
        if relay.is_some_and(|r| r.secret_file.is_none() && r.secret.is_some()) {
            keys.push(format!("listeners[{i}].turn.secret"));
        }
    }
    keys
}

/// The configuration with its secrets replaced by the placeholders [`document`] writes:
/// what the document parses back to.
pub fn redact(config: &Config) -> Config {
    let mut c = config.clone();
    if let Some(token) = c.admin.as_mut().and_then(|a| a.token.as_mut()) {
        *token = REDACTED_TOKEN.to_owned();
    }
    for f in c.listeners.iter_mut().filter_map(|l| l.forward.as_mut()) {
        for u in &mut f.users {
            u.password_hash = REDACTED_PASSWORD_HASH.to_owned();
        }
    }
    for a in &mut c.auth {
        if let AuthKind::Basic { users, .. } = &mut a.kind {
            for u in users {
                u.password_hash = REDACTED_PASSWORD_HASH.to_owned();
            }
        }
    }
    for s in c.clusters.iter_mut().filter_map(|c| c.sticky.as_mut()) {
        if let Some(secret) = s.secret.as_mut() {
            *secret = REDACTED_SECRET.to_owned();
        }
    }
    for r in c
        .listeners
        .iter_mut()
        .filter_map(|l| l.stun.as_mut()?.relay.as_mut())
    {
        if let (None, Some(secret)) = (&r.secret_file, r.secret.as_mut()) {
            *secret = REDACTED_SECRET.to_owned();
        }
    }
    for (_, v) in c.tracing.iter_mut().flat_map(|t| t.headers.iter_mut()) {
        *v = REDACTED_SECRET.to_owned();
    }
    for e in c
        .listeners
        .iter_mut()
        .filter_map(|l| l.tls.as_mut()?.acme.as_mut()?.external_account.as_mut())
    {
        e.hmac_key = REDACTED_MAC_KEY.to_owned();
    }
    c
}

// ---- values -------------------------------------------------------------------------

/// A duration in its largest exact unit: `"30s"`, `"10m"`, `"1h"`, `"250ms"` (a single
/// minute is written `"60s"`, as the defaults are documented).
pub fn duration_text(d: Duration) -> String {
    const UNITS: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_owned();
    }
    UNITS
        .iter()
        .find(|(n, u)| ns.is_multiple_of(*n) && !(*u == "m" && ns / n == 1))
        .map_or_else(|| format!("{ns}ns"), |(n, u)| format!("{}{u}", ns / n))
}

fn dur(d: Duration) -> Value {
    Value::String(duration_text(d))
}

/// A size: `"64KiB"`, `"1GiB"` when exact, else the number of bytes.
fn size(n: u64) -> Value {
    for (m, unit) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if n >= m && n.is_multiple_of(m) {
            return Value::String(format!("{}{unit}", n / m));
        }
    }
    // Beyond a TOML integer, the file takes the digits as a size string.
    i64::try_from(n).map_or_else(|_| Value::String(n.to_string()), Value::Integer)
}

fn int(n: impl TryInto<i64>) -> Value {
    Value::Integer(n.try_into().unwrap_or(i64::MAX))
}

fn text(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

fn texts<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Value {
    Value::Array(items.into_iter().map(|s| text(s.as_ref())).collect())
}

fn ints(items: &[u16]) -> Value {
    Value::Array(items.iter().map(|n| int(*n)).collect())
}

fn path(p: &Path) -> Value {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    text(abs.to_string_lossy())
}

fn host(h: &HostMatch) -> String {
    match h {
        HostMatch::Any => "*".to_owned(),
        HostMatch::Exact(name) => name.clone(),
        HostMatch::Suffix(suffix) => format!("*{suffix}"),
    }
}

fn network(n: &IpNet) -> String {
    format!("{}/{}", n.addr, n.prefix)
}

/// A table built in the order keys are written.
#[derive(Default)]
struct T(Table);

impl T {
    fn put(&mut self, key: &str, v: impl Into<Value>) -> &mut Self {
        self.0.insert(key.to_owned(), v.into());
        self
    }
    fn opt(&mut self, key: &str, v: Option<impl Into<Value>>) -> &mut Self {
        if let Some(v) = v {
            self.put(key, v);
        }
        self
    }
    /// A list, left out when empty.
    fn list(&mut self, key: &str, v: Value) -> &mut Self {
        if matches!(&v, Value::Array(a) if !a.is_empty()) {
            self.put(key, v);
        }
        self
    }
    /// Lets `f` add keys in the middle of a chain.
    fn and(&mut self, f: impl FnOnce(&mut Self)) -> &mut Self {
        f(self);
        self
    }
    fn done(&mut self) -> Table {
        std::mem::take(&mut self.0)
    }
}

// ---- sections -----------------------------------------------------------------------

fn server(s: &Server) -> Table {
    T::default()
        .put("worker_threads", int(s.worker_threads))
        .put("drain_timeout", dur(s.drain_timeout))
        .put("reload_grace", dur(s.reload_grace))
        .put("watch_config", s.watch_config)
        .put("watch_debounce", dur(s.watch_debounce))
        .opt("upgrade_socket", s.upgrade_socket.as_deref())
        .put("max_connections", int(s.max_connections))
        .done()
}

fn admin(a: Option<&Admin>) -> Table {
    let mut t = T::default();
    match a {
        None => t.put("enabled", false),
        Some(a) => t
            .put("enabled", true)
            .put("bind", a.bind.to_string())
            .opt("token", a.token.as_ref().map(|_| REDACTED_TOKEN)),
    };
    t.done()
}

fn access_log(a: &AccessLog) -> Table {
    let mut t = T::default();
    match &a.target {
        AccessLogTarget::Off => t.put("enabled", false),
        AccessLogTarget::Stdout => t.put("enabled", true).put("path", "stdout"),
        AccessLogTarget::Stderr => t.put("enabled", true).put("path", "stderr"),
        AccessLogTarget::File(p) => t.put("enabled", true).put("path", p.as_str()),
    };
    t.done()
}

fn listener(l: &Listener) -> Value {
    let mut t = T::default();
    t.put("name", l.name.as_str());
    // As written: a host name stays a name (it is resolved again when loaded).
    match l.bind_as_written.as_slice() {
        [one] => t.put("bind", one.as_str()),
        many => t.put("bind", texts(many.iter().cloned())),
    };
    t.put("protocol", l.protocol.as_str());
    t.list("rate_limit", texts(&l.rate_limit));
    if let Some(l4) = &l.l4 {
        t.opt("cluster", l4.cluster.as_deref());
        // Written when set in the file (the model then holds it twice, see above).
        if l.limits.idle_timeout == l4.idle_timeout {
            t.put("idle_timeout", dur(l4.idle_timeout));
        }
        t.opt("max_lifetime", l4.max_lifetime.map(dur))
            .put("max_connections", int(l4.max_connections))
            .put("inspect_timeout", dur(l4.inspect_timeout))
            .put("splice", l4.splice)
            .opt("max_connections_per_ip", l.max_connections_per_ip.map(int));
        let routes: Vec<Value> = l4.sni_routes.iter().map(sni_route).collect();
        t.list("sni_routes", routes.into());
    } else if let Some(stun) = &l.stun {
        t.put(
            "transports",
            texts(stun.transports.iter().map(|t| t.as_str())),
        );
        t.opt("turn", stun.relay.as_ref().map(turn_relay));
    } else {
        let lim = &l.limits;
        let h = &l.headers;
        t.put("header_read_timeout", dur(lim.header_read_timeout))
            .put("idle_timeout", dur(lim.idle_timeout))
            .put("send_timeout", dur(lim.send_timeout))
            .put("max_header_bytes", size(lim.max_header_bytes as u64))
            .put("max_headers", int(lim.max_headers))
            .put("max_uri_bytes", size(lim.max_uri_bytes as u64))
            .put("max_request_body", size(lim.max_request_body))
            .put("max_concurrent_streams", int(lim.max_concurrent_streams))
            .put("h2_max_reset_streams", int(lim.h2_max_reset_streams))
            .put("h2_max_error_resets", int(lim.h2_max_error_resets))
            .opt("max_connections_per_ip", l.max_connections_per_ip.map(int))
            .put("x_forwarded", h.x_forwarded)
            .put("forwarded", h.forwarded)
            .put("via", h.via)
            .put(
                "request_id",
                h.request_id.as_deref().map_or(Value::Boolean(false), text),
            );
    }
    if !l.main_is_udp() {
        tcp_options(&mut t, &l.tcp);
    }
    if matches!(
        l.protocol,
        ListenerProtocol::Http | ListenerProtocol::Https | ListenerProtocol::Tcp
    ) {
        t.put("defer_accept", l.defer_accept);
    }
    if let Some(pp) = &l.proxy_protocol {
        let trusted = texts(pp.trusted.iter().map(network));
        t.put(
            "proxy_protocol",
            T::default().put("trusted", trusted).done(),
        );
    }
    t.opt("tls", l.tls.as_ref().map(listener_tls));
    t.opt("http3", l.http3.as_ref().map(http3));
    t.opt("forward", l.forward.as_ref().map(forward));
    Value::Table(t.done())
}

/// `[listeners.turn]`: an inline `secret` redacted, files by path.
fn turn_relay(r: &TurnRelay) -> Table {
    let mut t = T::default();
    t.put("realm", r.realm.as_str())
        .opt("relay_ip", r.relay_ip.map(|ip| ip.to_string()))
        .opt("external_ip", r.external_ip.map(|ip| ip.to_string()))
        .put(
            "relay_ports",
            format!("{}-{}", r.relay_ports.0, r.relay_ports.1),
        );
    match (&r.secret_file, &r.secret) {
        (Some(f), _) => t.put("secret_file", path(f)),
        (None, Some(_)) => t.put("secret", REDACTED_SECRET),
        (None, None) => &mut t,
    };
    t.opt("users_file", r.users_file.as_deref().map(path))
        .list("allowed_peers", texts(r.allowed_peers.iter().map(network)))
        .list("denied_peers", texts(r.denied_peers.iter().map(network)))
        .put("default_lifetime", dur(r.default_lifetime))
        .put("max_lifetime", dur(r.max_lifetime))
        .put("nonce_lifetime", dur(r.nonce_lifetime))
        .put("max_allocations", int(r.max_allocations))
        .put("user_quota", int(r.user_quota))
        .opt("bandwidth", r.bandwidth.map(size))
        .put("unauthenticated_rate", int(r.unauthenticated_rate));
    t.done()
}

/// `tcp_keepalive` as a table (or `false`), `tcp_user_timeout` (or `false`).
fn tcp_options(t: &mut T, o: &TcpOptions) {
    let keepalive = o.keepalive.map_or(Value::Boolean(false), |k| {
        Value::Table(
            T::default()
                .put("idle", dur(k.idle))
                .put("interval", dur(k.interval))
                .put("probes", int(k.probes))
                .done(),
        )
    });
    t.put("tcp_keepalive", keepalive).put(
        "tcp_user_timeout",
        o.user_timeout.map_or(Value::Boolean(false), dur),
    );
}

fn sni_route(r: &SniRoute) -> Value {
    let mut t = T::default();
    t.list("server_names", texts(r.server_names.iter().map(host)))
        .list("alpn", texts(&r.alpn))
        .put("cluster", r.cluster.as_str());
    Value::Table(t.done())
}

fn listener_tls(tls: &ListenerTls) -> Table {
    let certificates: Vec<Value> = tls
        .certificates
        .iter()
        .map(|c| {
            let mut t = T::default();
            t.put("cert", path(&c.cert.path))
                .put("key", path(&c.key.path))
                .list("server_names", texts(&c.server_names));
            Value::Table(t.done())
        })
        .collect();
    let min_version = match tls.min_version {
        TlsVersion::Tls12 => "1.2",
        TlsVersion::Tls13 => "1.3",
    };
    let client_auth = match tls.client_auth {
        ClientAuth::None => "none",
        ClientAuth::Optional => "optional",
        ClientAuth::Required => "required",
    };
    let unknown_sni = match tls.unknown_sni {
        UnknownSni::Default => "default",
        UnknownSni::Reject => "reject",
    };
    T::default()
        .put("min_version", min_version)
        .put("alpn", texts(&tls.alpn))
        .put("handshake_timeout", dur(tls.handshake_timeout))
        .put("unknown_sni", unknown_sni)
        .put("client_auth", client_auth)
        .opt("client_ca", tls.client_ca.as_ref().map(|f| path(&f.path)))
        .put("forward_client_cert", tls.forward_client_cert)
        .put("certificates", certificates)
        .put("ocsp_stapling", tls.ocsp_stapling)
        .opt("ocsp_cache", tls.ocsp_cache.as_ref().map(|f| path(&f.path)))
        .opt("acme", tls.acme.as_ref().map(acme))
        .done()
}

fn acme(a: &Acme) -> Table {
    let mut t = T::default();
    t.put("directory", a.directory.as_str())
        .list("contact", texts(&a.contact))
        .list("names", texts(&a.names))
        .put("storage", path(&a.storage.path))
        .put(
            "challenge",
            match a.challenge {
                AcmeChallenge::Http01 => "http-01",
                AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            },
        )
        .opt("ca", a.ca.as_ref().map(|f| path(&f.path)));
    if let Some(e) = &a.external_account {
        t.put(
            "external_account",
            T::default()
                .put("key_id", e.key_id.as_str())
                .put("hmac_key", REDACTED_MAC_KEY)
                .done(),
        );
    }
    if let Some(o) = &a.on_demand {
        t.put("on_demand", true)
            .put("ask", o.ask.as_str())
            .put("on_demand_per_minute", int(o.per_minute));
    }
    t.put("retry_backoff", dur(a.retry_backoff))
        .put("retry_max", dur(a.retry_max))
        .put("start_without_certificate", a.start_without_certificate)
        .done()
}

fn http3(h: &Http3) -> Table {
    let mut t = T::default();
    t.put("alt_svc", h.alt_svc)
        .put("alt_svc_max_age", dur(h.alt_svc_max_age));
    match h.address_validation {
        AddressValidation::Always => t.put("address_validation", "always"),
        AddressValidation::Never => t.put("address_validation", "never"),
        AddressValidation::Above(n) => t
            .put("address_validation", "auto")
            .put("validation_above", int(n)),
    };
    t.put("max_connections", int(h.max_connections))
        .put("initial_stream_window", size(h.initial_stream_window))
        .put(
            "initial_connection_window",
            size(h.initial_connection_window),
        )
        .put("early_data", h.early_data);
    t.done()
}

fn forward(f: &ForwardProxy) -> Table {
    let rules: Vec<Value> = f
        .rules
        .iter()
        .map(|r| {
            let mut t = T::default();
            t.put("name", r.name.as_str())
                .put("action", if r.allow { "allow" } else { "deny" })
                .list("hosts", texts(r.hosts.iter().map(host)))
                .list("ports", ints(&r.ports))
                .list("networks", texts(r.networks.iter().map(network)));
            Value::Table(t.done())
        })
        .collect();
    let users: Vec<Value> = f
        .users
        .iter()
        .map(|u| {
            let t = T::default()
                .put("name", u.name.as_str())
                .put("password_hash", REDACTED_PASSWORD_HASH)
                .done();
            Value::Table(t)
        })
        .collect();
    let mut t = T::default();
    t.put("connect_ports", ints(&f.connect_ports))
        .put("allow_private", f.allow_private)
        .put("strip_client_headers", f.strip_client_headers)
        .put("connect_timeout", dur(f.connect_timeout))
        .opt("cache", f.cache.as_deref())
        .put("tunnel_idle_timeout", dur(f.tunnel_idle_timeout))
        .put("response_timeout", dur(f.response_timeout))
        .put("idle_timeout", dur(f.idle_timeout))
        .list(
            "resolvers",
            texts(f.resolvers.iter().map(ToString::to_string)),
        )
        .put("resolve_timeout", dur(f.resolve_timeout))
        .list("rules", rules.into())
        .list("users", users.into());
    t.done()
}

fn auth_policy(a: &AuthPolicy) -> Value {
    let mut t = T::default();
    t.put("name", a.name.as_str());
    match &a.kind {
        AuthKind::Basic { realm, users } => {
            let users: Vec<Value> = users
                .iter()
                .map(|u| {
                    Value::Table(
                        T::default()
                            .put("name", u.name.as_str())
                            .put("password_hash", REDACTED_PASSWORD_HASH)
                            .done(),
                    )
                })
                .collect();
            let basic = T::default()
                .put("realm", realm.as_str())
                .put("users", users)
                .done();
            t.put("basic", basic);
        }
        AuthKind::ApiKey {
            header,
            query,
            keys_file,
        } => {
            let key = T::default()
                .opt("header", header.as_deref())
                .opt("query", query.as_deref())
                .put("keys_file", keys_file.path.to_string_lossy().as_ref())
                .done();
            t.put("api_key", key);
        }
        AuthKind::Jwt(j) => {
            let mut map = T::default();
            for (claim, header) in &j.claims_to_headers {
                map.put(claim, header.as_str());
            }
            let mut jwt = T::default();
            jwt.put("algorithms", texts(&j.algorithms));
            match &j.keys {
                JwtKeys::File(f) => {
                    jwt.put("key_file", f.path.to_string_lossy().as_ref());
                }
                JwtKeys::Jwks(k) => {
                    jwt.put(
                        "jwks",
                        T::default()
                            .put("url", k.url.as_str())
                            .put("cluster", k.cluster.as_str())
                            .put("refresh", dur(k.refresh))
                            .put("min_refresh", dur(k.min_refresh))
                            .put("timeout", dur(k.timeout))
                            .done(),
                    );
                }
            }
            let jwt = jwt
                .opt("issuer", j.issuer.as_deref())
                .opt("audience", j.audience.as_deref())
                .put("leeway", dur(j.leeway))
                .list("required_claims", texts(&j.required_claims))
                .opt(
                    "claims_to_headers",
                    (!j.claims_to_headers.is_empty()).then(|| map.done()),
                )
                .put("strip_token", j.strip_token)
                .done();
            t.put("jwt", jwt);
        }
        AuthKind::External(e) => {
            let ext = T::default()
                .put("cluster", e.cluster.as_str())
                .put("path_prefix", e.path_prefix.as_str())
                .put("headers", texts(&e.headers))
                .list("upstream_headers", texts(&e.upstream_headers))
                .opt("user_header", e.user_header.as_deref())
                .put("timeout", dur(e.timeout))
                .put(
                    "on_error",
                    match e.on_error {
                        FailMode::Allow => "allow",
                        FailMode::Deny => "deny",
                    },
                )
                .put("cache_ttl", dur(e.cache_ttl))
                .opt(
                    "cache_key",
                    e.cache_key.as_ref().map(|k| {
                        k.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("+")
                    }),
                )
                .done();
            t.put("external", ext);
        }
    }
    Value::Table(t.done())
}

fn cache(c: &Cache) -> Value {
    let k = &c.key;
    let key = T::default()
        .list("headers", texts(&k.headers))
        .list("cookies", texts(&k.cookies))
        .list("ignore_query", texts(&k.ignore_query))
        .put("sort_query", k.sort_query)
        .done();
    let mut t = T::default();
    t.put("name", c.name.as_str())
        .put("memory", size(c.memory))
        .put("max_object", size(c.max_object))
        .put("stale_while_revalidate", dur(c.stale_while_revalidate))
        .put("stale_if_error", dur(c.stale_if_error))
        .put("lock_timeout", dur(c.lock_timeout))
        .put("heuristic_fraction", Value::Float(c.heuristic_fraction))
        .put("heuristic_max", dur(c.heuristic_max))
        .put("targeted_cache_control", texts(&c.targeted_cache_control))
        .put("status_name", c.status_name.as_str())
        .put("key", key);
    if let Some(d) = &c.disk {
        let disk = T::default()
            .put("path", d.path.path.to_string_lossy().as_ref())
            .put("size", size(d.size))
            .done();
        t.put("disk", disk);
    }
    Value::Table(t.done())
}

fn cluster(c: &Cluster) -> Value {
    let endpoints: Vec<Value> = c.endpoints.iter().map(endpoint).collect();
    let mut t = T::default();
    t.put("name", c.name.as_str())
        .put("endpoints", endpoints)
        .opt("discovery", c.discovery.as_ref().map(|d| d.url.as_str()))
        .put("protocol", upstream_protocol(c.protocol))
        .put("lb", lb_name(c.lb));
    if c.lb.uses_key() {
        t.put("hash_key", hash_key(&c.hash_key));
    }
    t.put("connect_timeout", dur(c.connect_timeout))
        .put("response_timeout", dur(c.response_timeout))
        .put(
            "host_header",
            match c.host_header {
                HostHeader::Preserve => "preserve",
                HostHeader::Endpoint => "endpoint",
            },
        )
        .put("panic_threshold", int(c.panic_threshold))
        .opt("slow_start", c.slow_start.map(dur))
        .opt(
            "proxy_protocol",
            c.proxy_protocol.map(|v| match v {
                ProxyProtocolVersion::V1 => "v1",
                ProxyProtocolVersion::V2 => "v2",
            }),
        )
        .opt("h3_fallback", c.h3_fallback.map(upstream_protocol))
        .put(
            "pool",
            T::default()
                .put("idle_timeout", dur(c.pool.idle_timeout))
                .put("max_idle_per_endpoint", int(c.pool.max_idle_per_endpoint))
                .put("warm_connections", int(c.pool.warm_connections))
                .put("max_h2_connections", int(c.pool.max_h2_connections))
                .put(
                    "h2_keepalive_interval",
                    c.pool
                        .h2_keepalive_interval
                        .map_or(Value::Boolean(false), dur),
                )
                .put("h2_keepalive_timeout", dur(c.pool.h2_keepalive_timeout))
                .and(|t| tcp_options(t, &c.pool.tcp))
                .done(),
        )
        .opt("tls", c.tls.as_ref().map(upstream_tls))
        .opt("health_check", c.health_check.as_ref().map(health_check))
        .opt(
            "outlier_detection",
            c.outlier_detection.as_ref().map(|o| {
                T::default()
                    .put("consecutive_failures", int(o.consecutive_failures))
                    .put("base_ejection_time", dur(o.base_ejection_time))
                    .put("max_ejection_percent", int(o.max_ejection_percent))
                    .done()
            }),
        )
        .opt("retry", c.retry.as_ref().map(retry));
    let b = &c.circuit_breaker;
    if *b != CircuitBreaker::default() {
        let breaker = T::default()
            .opt("max_connections", b.max_connections.map(int))
            .opt("max_pending_requests", b.max_pending_requests.map(int))
            .opt("max_requests", b.max_requests.map(int))
            .opt("max_retries", b.max_retries.map(int))
            .done();
        t.put("circuit_breaker", breaker);
    }
    t.opt("sticky", c.sticky.as_ref().map(sticky));
    if c.dns != Dns::default() || c.endpoints.iter().any(|e| e.address.is_dns()) {
        t.put("dns", dns(&c.dns));
    }
    Value::Table(t.done())
}

fn endpoint(e: &Endpoint) -> Value {
    match &e.address {
        EndpointAddress::Srv { name } => {
            Value::Table(T::default().put("srv", name.as_str()).done())
        }
        address if e.weight == 1 => text(address.to_string()),
        address => Value::Table(
            T::default()
                .put("address", address.to_string())
                .put("weight", int(e.weight))
                .done(),
        ),
    }
}

fn upstream_protocol(p: UpstreamProtocol) -> &'static str {
    match p {
        UpstreamProtocol::Http1 => "http1",
        UpstreamProtocol::H2c => "h2c",
        UpstreamProtocol::H2 => "h2",
        UpstreamProtocol::H3 => "h3",
    }
}

fn lb_name(lb: LbPolicy) -> &'static str {
    match lb {
        LbPolicy::RoundRobin => "round_robin",
        LbPolicy::LeastConnections => "least_connections",
        LbPolicy::LeastRequest => "least_request",
        LbPolicy::Random => "random",
        LbPolicy::RingHash => "ring_hash",
        LbPolicy::Maglev => "maglev",
    }
}

fn hash_key(k: &HashKey) -> String {
    match k {
        HashKey::ClientIp => "client_ip".to_owned(),
        HashKey::Path => "path".to_owned(),
        HashKey::CacheKey => "cache_key".to_owned(),
        HashKey::Header(n) => format!("header:{n}"),
        HashKey::Cookie(n) => format!("cookie:{n}"),
        HashKey::Query(n) => format!("query:{n}"),
    }
}

fn upstream_tls(tls: &UpstreamTls) -> Table {
    let mut t = T::default();
    t.opt("ca", tls.ca.as_ref().map(|f| path(&f.path)))
        .opt("server_name", tls.server_name.as_deref())
        .put("insecure_skip_verify", tls.insecure_skip_verify);
    if let Some(c) = &tls.client_cert {
        t.put("cert", path(&c.cert.path))
            .put("key", path(&c.key.path));
    }
    t.done()
}

fn health_check(h: &HealthCheck) -> Table {
    let mut t = T::default();
    let kind = match &h.kind {
        HealthCheckKind::Tcp => "tcp",
        HealthCheckKind::Http { .. } => "http",
        HealthCheckKind::Grpc { .. } => "grpc",
        HealthCheckKind::Udp { .. } => "udp",
    };
    t.put("kind", kind)
        .put("interval", dur(h.interval))
        .put("timeout", dur(h.timeout))
        .put("jitter", dur(h.jitter))
        .put("healthy_threshold", int(h.healthy_threshold))
        .put("unhealthy_threshold", int(h.unhealthy_threshold));
    match &h.kind {
        HealthCheckKind::Tcp => {}
        HealthCheckKind::Http {
            method,
            path,
            host,
            expected_statuses,
            body_contains,
        } => {
            t.put("method", method.as_str())
                .put("path", path.as_str())
                .opt("host", host.as_deref())
                .list("expected_statuses", ints(expected_statuses))
                .opt("body_contains", body_contains.as_deref());
        }
        HealthCheckKind::Grpc { service } => {
            t.put("service", service.as_str());
        }
        HealthCheckKind::Udp { send, expect } => {
            match std::str::from_utf8(send) {
                Ok(s) => t.put("send", s),
                Err(_) => t.put(
                    "send_hex",
                    send.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                ),
            };
            t.opt("expect", expect.as_deref());
        }
    }
    t.done()
}

fn retry(r: &Retry) -> Table {
    T::default()
        .put("max_retries", int(r.max_retries))
        .put("statuses", ints(&r.statuses))
        .put("on_reset", r.on_reset)
        .put("per_try_timeout", dur(r.per_try_timeout))
        .put("backoff_base", dur(r.backoff_base))
        .put("backoff_max", dur(r.backoff_max))
        .put("budget_percent", int(r.budget_percent))
        .put("budget_min_concurrent", int(r.budget_min_concurrent))
        .put("max_body_bytes", size(r.max_body_bytes))
        .done()
}

fn sticky(s: &Sticky) -> Table {
    T::default()
        .put("cookie", s.cookie.as_str())
        .opt("ttl", s.ttl.map(dur))
        .put("path", s.path.as_str())
        .put("secure", s.secure)
        .put("http_only", s.http_only)
        .opt("same_site", s.same_site.as_deref())
        .opt("secret", s.secret.as_ref().map(|_| REDACTED_SECRET))
        .done()
}

fn dns(d: &Dns) -> Table {
    let family = match d.family {
        IpFamily::Any => "any",
        IpFamily::V4 => "ipv4",
        IpFamily::V6 => "ipv6",
    };
    let mut t = T::default();
    t.list(
        "resolvers",
        texts(d.resolvers.iter().map(ToString::to_string)),
    )
    .put("family", family)
    .put("min_ttl", dur(d.min_ttl))
    .put("max_ttl", dur(d.max_ttl))
    .put("timeout", dur(d.timeout));
    t.done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_their_largest_exact_unit() {
        let cases = [
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(600), "10m"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(60), "60s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1500), "1500us"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::ZERO, "0s"),
        ];
        for (d, want) in cases {
            assert_eq!(duration_text(d), want);
            assert_eq!(crate::parse_duration(want), Ok(d), "{want}");
        }
    }

    #[test]
    fn sizes_in_binary_units_when_exact() {
        assert_eq!(size(64 * 1024), Value::String("64KiB".into()));
        assert_eq!(size(1 << 30), Value::String("1GiB".into()));
        assert_eq!(size(3 << 20), Value::String("3MiB".into()));
        assert_eq!(size(1000), Value::Integer(1000));
        assert_eq!(size(u64::MAX), Value::String(u64::MAX.to_string()));
        assert_eq!(crate::parse_size(&u64::MAX.to_string()), Ok(u64::MAX));
    }
}
