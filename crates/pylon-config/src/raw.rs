//! The TOML schema as written by users: serde structs with `deny_unknown_fields`, and
//! spans kept on every value that validation may complain about. The `expecting` texts
//! of the hand-written visitors are shown to users, so they are in plain words.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub worker_threads: Option<Spanned<usize>>,
    pub drain_timeout: Option<Spanned<String>>,
    pub reload_grace: Option<Spanned<String>>,
    pub watch_config: Option<bool>,
    pub watch_debounce: Option<Spanned<String>>,
    pub upgrade_socket: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub enabled: Option<bool>,
    pub bind: Option<Spanned<String>>,
    pub token: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub enabled: Option<bool>,
    /// `"stdout"`, `"stderr"` or a file path.
    pub path: Option<Spanned<String>>,
}

/// `[tracing]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    pub enabled: Option<bool>,
    pub endpoint: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    pub service_name: Option<Spanned<String>>,
    pub sampler: Option<Spanned<String>>,
    pub ratio: Option<Spanned<f64>>,
    pub always_sample_errors: Option<bool>,
    pub headers: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    pub max_queue: Option<Spanned<usize>>,
    pub max_batch: Option<Spanned<usize>>,
    pub flush_interval: Option<Spanned<String>>,
    pub export_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// Required; optional here so that a listener without it still has its other keys
    /// checked (validation reports the missing key).
    pub name: Option<Spanned<String>>,
    pub bind: Option<Spanned<StrList>>,
    pub protocol: Option<Spanned<String>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub send_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<Size>>,
    pub max_headers: Option<Spanned<usize>>,
    pub max_uri_bytes: Option<Spanned<Size>>,
    pub max_request_body: Option<Spanned<Size>>,
    pub max_concurrent_streams: Option<Spanned<u32>>,
    pub h2_max_reset_streams: Option<Spanned<usize>>,
    pub h2_max_error_resets: Option<Spanned<usize>>,
    pub max_connections_per_ip: Option<Spanned<u64>>,
    pub tcp_keepalive: Option<Spanned<RawTcpKeepalive>>,
    pub tcp_user_timeout: Option<Spanned<DurationOrBool>>,
    pub defer_accept: Option<Spanned<bool>>,
    pub x_forwarded: Option<bool>,
    pub forwarded: Option<bool>,
    pub via: Option<bool>,
    /// Header name, or `false` to turn request ids off.
    pub request_id: Option<Spanned<StrOrBool>>,
    pub tls: Option<Spanned<RawListenerTls>>,
    /// HTTP/3 beside an https listener: `true`, or a table of its settings.
    pub http3: Option<Spanned<RawHttp3>>,
    pub proxy_protocol: Option<Spanned<RawProxyProtocolIn>>,
    // Layer 4 (`tcp` and `udp` listeners).
    pub cluster: Option<Spanned<String>>,
    pub sni_routes: Option<Vec<Spanned<RawSniRoute>>>,
    pub max_lifetime: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u64>>,
    pub inspect_timeout: Option<Spanned<String>>,
    pub splice: Option<Spanned<bool>>,
    pub forward: Option<Spanned<RawForward>>,
    pub rate_limit: Option<Spanned<StrList>>,
    // STUN and TURN listeners.
    pub transports: Option<Spanned<StrList>>,
    pub turn: Option<Spanned<RawTurn>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTurn {
    pub realm: Option<Spanned<String>>,
    pub relay_ip: Option<Spanned<String>>,
    pub external_ip: Option<Spanned<String>>,
    pub relay_ports: Option<Spanned<String>>,
    pub secret: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<String>>,
    pub users_file: Option<Spanned<String>>,
    pub allowed_peers: Option<Spanned<StrList>>,
    pub denied_peers: Option<Spanned<StrList>>,
    pub default_lifetime: Option<Spanned<String>>,
    pub max_lifetime: Option<Spanned<String>>,
    pub nonce_lifetime: Option<Spanned<String>>,
    pub max_allocations: Option<Spanned<u64>>,
    pub user_quota: Option<Spanned<u64>>,
    pub bandwidth: Option<Spanned<Size>>,
    pub unauthenticated_rate: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    pub rules: Option<Vec<Spanned<RawAccessRule>>>,
    pub connect_ports: Option<Vec<u16>>,
    pub allow_private: Option<bool>,
    pub users: Option<Vec<Spanned<RawProxyUser>>>,
    pub strip_client_headers: Option<bool>,
    pub connect_timeout: Option<Spanned<String>>,
    pub tunnel_idle_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub resolvers: Option<Vec<Spanned<String>>>,
    pub resolve_timeout: Option<Spanned<String>>,
    pub cache: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessRule {
    pub name: Spanned<String>,
    pub action: Spanned<String>,
    pub hosts: Option<Spanned<StrList>>,
    pub ports: Option<Vec<u16>>,
    pub networks: Option<Spanned<StrList>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyUser {
    pub name: String,
    pub password_hash: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSniRoute {
    pub server_names: Option<Spanned<StrList>>,
    pub alpn: Option<Spanned<StrList>>,
    pub cluster: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyProtocolIn {
    pub trusted: Spanned<StrList>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub server_names: Option<Spanned<StrList>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub certificates: Option<Spanned<Vec<Spanned<RawCertificate>>>>,
    pub acme: Option<Spanned<RawAcme>>,
    pub min_version: Option<Spanned<String>>,
    pub alpn: Option<Spanned<StrList>>,
    pub handshake_timeout: Option<Spanned<String>>,
    pub client_auth: Option<Spanned<String>>,
    pub client_ca: Option<Spanned<String>>,
    pub forward_client_cert: Option<bool>,
    pub unknown_sni: Option<Spanned<String>>,
    pub ocsp_stapling: Option<bool>,
    pub ocsp_cache: Option<Spanned<String>>,
}

/// `[listeners.tls.acme]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: Option<Spanned<String>>,
    pub staging: Option<Spanned<bool>>,
    pub contact: Option<Spanned<StrList>>,
    pub names: Option<Spanned<StrList>>,
    pub storage: Option<Spanned<String>>,
    pub challenge: Option<Spanned<String>>,
    pub ca: Option<Spanned<String>>,
    pub external_account: Option<Spanned<RawExternalAccount>>,
    pub retry_backoff: Option<Spanned<String>>,
    pub retry_max: Option<Spanned<String>>,
    pub on_demand: Option<Spanned<bool>>,
    pub ask: Option<Spanned<String>>,
    pub on_demand_per_minute: Option<Spanned<u32>>,
    pub start_without_certificate: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExternalAccount {
    pub key_id: Spanned<String>,
    pub hmac_key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub insecure_skip_verify: Option<bool>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: Spanned<String>,
    pub value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRespond {
    pub status: Option<Spanned<u16>>,
    #[serde(default)]
    pub headers: BTreeMap<Spanned<String>, Spanned<String>>,
    pub body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    pub root: Spanned<String>,
    pub index: Option<Spanned<StrList>>,
    pub browse: Option<bool>,
    pub follow_symlinks: Option<bool>,
    pub precompressed: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub status: Option<Spanned<u16>>,
    pub location: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<Spanned<String>>,
    pub listeners: Option<Spanned<StrList>>,
    pub host: Option<Spanned<StrList>>,
    pub path: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub path_regex: Option<Spanned<String>>,
    pub methods: Option<Spanned<StrList>>,
    pub headers: Option<Vec<RawHeaderMatch>>,
    pub grpc: Option<bool>,
    pub client_cert_subject: Option<Spanned<String>>,
    pub client_cert_dns: Option<Spanned<String>>,
    pub client_cert_fingerprint: Option<Spanned<String>>,
    pub claims: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub cluster: Option<Spanned<String>>,
    pub backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    pub split: Option<Spanned<RawSplit>>,
    pub mirror: Option<Spanned<RawMirror>>,
    pub compression: Option<Spanned<RawCompression>>,
    pub request_headers: Option<Spanned<RawHeaderRules>>,
    pub response_headers: Option<Spanned<RawHeaderRules>>,
    pub regex_rewrite: Option<Spanned<RawRegexRewrite>>,
    pub query: Option<Spanned<RawQueryRules>>,
    pub error_pages: Option<Vec<Spanned<RawErrorPage>>>,
    pub request_buffering: Option<Spanned<RawBuffering>>,
    pub response_buffering: Option<Spanned<RawBuffering>>,
    pub prefix_rewrite: Option<Spanned<String>>,
    pub host_rewrite: Option<Spanned<String>>,
    pub websocket: Option<Spanned<bool>>,
    pub grpc_web: Option<Spanned<bool>>,
    pub cors_allow_origins: Option<Spanned<StrList>>,
    pub tunnel_idle_timeout: Option<Spanned<String>>,
    pub tunnel_max_lifetime: Option<Spanned<String>>,
    pub abort_on_client_close: Option<Spanned<bool>>,
    pub server_timing: Option<Spanned<bool>>,
    pub cache: Option<Spanned<String>>,
    pub auth: Option<Spanned<StrList>>,
    pub auth_skip: Option<Spanned<StrList>>,
    pub auth_require: Option<Spanned<String>>,
    pub rate_limit: Option<Spanned<StrList>>,
    pub respond: Option<Spanned<RawRespond>>,
    pub files: Option<Spanned<RawFiles>>,
    pub redirect: Option<Spanned<RawRedirect>>,
}

/// One of a route's weighted `backends`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub cluster: Spanned<String>,
    pub weight: Option<Spanned<u32>>,
    pub header: Option<Spanned<String>>,
    pub cookie: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
}

/// Header rules: `set` (replace or add), `add` (only when absent), `append` (one more
/// value), `remove`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderRules {
    pub set: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    pub add: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    pub append: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    pub remove: Option<Spanned<StrList>>,
}

/// `request_buffering` or `response_buffering`: how much is held, and where.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuffering {
    pub max: Option<Spanned<Size>>,
    pub memory: Option<Spanned<Size>>,
}

/// One of a route's `error_pages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawErrorPage {
    pub status: Spanned<Vec<u16>>,
    pub file: Option<Spanned<String>>,
    pub body: Option<String>,
    pub content_type: Option<Spanned<String>>,
    pub upstream: Option<bool>,
}

/// A route's `regex_rewrite` of the upstream path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegexRewrite {
    pub pattern: Spanned<String>,
    pub replacement: Spanned<String>,
}

/// A route's `query` rules for the upstream request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueryRules {
    pub set: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    pub remove: Option<Spanned<StrList>>,
}

/// A route's `mirror`: copies of its requests to a shadow cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    pub cluster: Spanned<String>,
    pub percent: Option<Spanned<f64>>,
    pub max_body: Option<Spanned<Size>>,
    pub host_suffix: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

/// A route's `split`: how requests stay on one backend, and the canary's rollback.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    pub sticky: Option<Spanned<String>>,
    pub cookie_name: Option<Spanned<String>>,
    pub canary: Option<Spanned<String>>,
    pub max_5xx_ratio: Option<Spanned<f64>>,
    pub min_requests: Option<Spanned<u32>>,
    pub window: Option<Spanned<String>>,
}

/// A `[[rate_limits]]` policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub name: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub rate: Option<Spanned<u32>>,
    pub per: Option<Spanned<String>>,
    pub burst: Option<Spanned<u32>>,
    pub delay: Option<Spanned<String>>,
    pub concurrency: Option<Spanned<u32>>,
    pub global: Option<Spanned<RawGlobalLimit>>,
}

/// A rate limit's `global` table: its buckets in Redis, shared by every instance.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlobalLimit {
    pub redis: Spanned<String>,
    pub timeout: Option<Spanned<String>>,
    pub on_error: Option<Spanned<String>>,
    pub batch: Option<Spanned<u32>>,
    pub prefix: Option<Spanned<String>>,
}

/// An `[[auth]]` policy: a name and exactly one kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub name: Option<Spanned<String>>,
    pub basic: Option<Spanned<RawBasicAuth>>,
    pub api_key: Option<Spanned<RawApiKeyAuth>>,
    pub jwt: Option<Spanned<RawJwtAuth>>,
    pub external: Option<Spanned<RawExternalAuth>>,
}

/// An `external` auth policy: a subrequest to an authorization service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExternalAuth {
    pub cluster: Spanned<String>,
    pub path_prefix: Option<Spanned<String>>,
    pub headers: Option<Spanned<StrList>>,
    pub upstream_headers: Option<Spanned<StrList>>,
    pub user_header: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub on_error: Option<Spanned<String>>,
    pub cache_ttl: Option<Spanned<String>>,
    pub cache_key: Option<Spanned<String>>,
}

/// A JWT policy's `jwks`: keys fetched from a JWKS URL through a cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwks {
    pub url: Spanned<String>,
    pub cluster: Spanned<String>,
    pub refresh: Option<Spanned<String>>,
    pub min_refresh: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtAuth {
    pub algorithms: Spanned<StrList>,
    pub key_file: Option<Spanned<String>>,
    pub jwks: Option<Spanned<RawJwks>>,
    pub issuer: Option<Spanned<String>>,
    pub audience: Option<Spanned<String>>,
    pub leeway: Option<Spanned<String>>,
    pub required_claims: Option<Spanned<StrList>>,
    pub claims_to_headers: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    pub strip_token: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKeyAuth {
    pub header: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
    pub keys_file: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    pub realm: Option<Spanned<String>>,
    pub users: Option<Vec<Spanned<RawProxyUser>>>,
}

/// A `[[caches]]` zone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub name: Option<Spanned<String>>,
    pub memory: Option<Spanned<Size>>,
    pub max_object: Option<Spanned<Size>>,
    pub stale_while_revalidate: Option<Spanned<String>>,
    pub stale_if_error: Option<Spanned<String>>,
    pub lock_timeout: Option<Spanned<String>>,
    pub heuristic_fraction: Option<Spanned<f64>>,
    pub heuristic_max: Option<Spanned<String>>,
    pub targeted_cache_control: Option<Spanned<StrList>>,
    pub status_name: Option<Spanned<String>>,
    pub key: Option<Spanned<RawCacheKey>>,
    pub disk: Option<Spanned<RawCacheDisk>>,
}

/// A zone's `disk` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheDisk {
    pub path: Spanned<String>,
    pub size: Option<Spanned<Size>>,
}

/// A zone's `key` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheKey {
    pub headers: Option<Spanned<StrList>>,
    pub cookies: Option<Spanned<StrList>>,
    pub ignore_query: Option<Spanned<StrList>>,
    pub sort_query: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub idle_timeout: Option<Spanned<String>>,
    pub max_idle_per_endpoint: Option<usize>,
    pub warm_connections: Option<Spanned<usize>>,
    pub tcp_keepalive: Option<Spanned<RawTcpKeepalive>>,
    pub tcp_user_timeout: Option<Spanned<DurationOrBool>>,
    pub max_h2_connections: Option<Spanned<usize>>,
    pub h2_keepalive_interval: Option<Spanned<DurationOrBool>>,
    pub h2_keepalive_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Required; optional here as for [`RawListener::name`].
    pub name: Option<Spanned<String>>,
    pub endpoints: Option<Spanned<Vec<Spanned<RawEndpoint>>>>,
    pub protocol: Option<Spanned<String>>,
    pub lb: Option<Spanned<String>>,
    pub hash_key: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub host_header: Option<Spanned<String>>,
    pub pool: Option<RawPool>,
    pub tls: Option<Spanned<RawUpstreamTls>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub outlier_detection: Option<RawOutlierDetection>,
    pub retry: Option<RawRetry>,
    pub circuit_breaker: Option<RawCircuitBreaker>,
    pub slow_start: Option<Spanned<String>>,
    pub sticky: Option<RawSticky>,
    pub panic_threshold: Option<Spanned<u32>>,
    pub dns: Option<Spanned<RawDns>>,
    pub discovery: Option<Spanned<String>>,
    pub proxy_protocol: Option<Spanned<String>>,
    pub h3_fallback: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub resolvers: Option<Vec<Spanned<String>>>,
    pub family: Option<Spanned<String>>,
    pub min_ttl: Option<Spanned<String>>,
    pub max_ttl: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub cookie: Option<Spanned<String>>,
    pub ttl: Option<Spanned<String>>,
    pub path: Option<String>,
    pub secure: Option<bool>,
    pub http_only: Option<bool>,
    pub same_site: Option<Spanned<String>>,
    pub secret: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    pub max_connections: Option<u64>,
    pub max_pending_requests: Option<u64>,
    pub max_requests: Option<u64>,
    pub max_retries: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_retries: Option<u32>,
    pub statuses: Option<Spanned<Vec<u16>>>,
    pub on_reset: Option<bool>,
    pub per_try_timeout: Option<Spanned<String>>,
    pub backoff_base: Option<Spanned<String>>,
    pub backoff_max: Option<Spanned<String>>,
    pub budget_percent: Option<Spanned<u32>>,
    pub budget_min_concurrent: Option<u32>,
    pub max_body_bytes: Option<Spanned<Size>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    pub consecutive_failures: Option<Spanned<u32>>,
    pub base_ejection_time: Option<Spanned<String>>,
    pub max_ejection_percent: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// `"tcp"`, `"http"` or `"udp"`.
    pub kind: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub jitter: Option<Spanned<String>>,
    pub healthy_threshold: Option<Spanned<u32>>,
    pub unhealthy_threshold: Option<Spanned<u32>>,
    pub method: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub expected_statuses: Option<Spanned<Vec<u16>>>,
    pub body_contains: Option<String>,
    /// UDP checks: the datagram to send (text or hex) and a substring the reply must hold.
    pub send: Option<Spanned<String>>,
    pub send_hex: Option<Spanned<String>>,
    /// gRPC checks: the service name asked about (empty: the server as a whole).
    pub service: Option<Spanned<String>>,
    pub expect: Option<Spanned<String>>,
}

/// An endpoint: `"127.0.0.1:8081"` or `{ address = "127.0.0.1:8081", weight = 2 }`.
#[derive(Debug)]
pub struct RawEndpoint {
    /// `address` or `srv`, whichever was given.
    pub address: String,
    pub srv: bool,
    pub weight: Option<u32>,
}

impl<'de> Deserialize<'de> for RawEndpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEndpoint;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an address such as \"127.0.0.1:8080\", or a table such as { address = \"127.0.0.1:8080\", weight = 2 } or { srv = \"_http._tcp.example.internal\" }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawEndpoint, E> {
                Ok(RawEndpoint {
                    address: v.to_owned(),
                    srv: false,
                    weight: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEndpoint, A::Error> {
                let mut address = None;
                let mut srv = None;
                let mut weight = None;
                while let Some(key) = map.next_key::<EndpointKey>()? {
                    match key {
                        EndpointKey::Address => address = Some(map.next_value::<String>()?),
                        EndpointKey::Srv => srv = Some(map.next_value::<String>()?),
                        EndpointKey::Weight => weight = Some(map.next_value::<u32>()?),
                    }
                }
                match (address, srv) {
                    (Some(address), None) => Ok(RawEndpoint {
                        address,
                        srv: false,
                        weight,
                    }),
                    (None, Some(name)) => Ok(RawEndpoint {
                        address: name,
                        srv: true,
                        weight,
                    }),
                    (Some(_), Some(_)) => Err(de::Error::custom(
                        "an endpoint has either `address` or `srv`, not both",
                    )),
                    (None, None) => Err(de::Error::missing_field("address")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A key of an endpoint table; an unknown one is refused as the key itself, so the error
/// points at it.
enum EndpointKey {
    Address,
    Srv,
    Weight,
}

impl<'de> Deserialize<'de> for EndpointKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EndpointKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`address`, `srv` or `weight`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EndpointKey, E> {
                match v {
                    "address" => Ok(EndpointKey::Address),
                    "srv" => Ok(EndpointKey::Srv),
                    "weight" => Ok(EndpointKey::Weight),
                    other => Err(E::unknown_field(other, &["address", "srv", "weight"])),
                }
            }
        }
        d.deserialize_identifier(V)
    }
}

/// One string or an array of strings.
#[derive(Debug, Clone)]
pub struct StrList(pub Vec<String>);

impl<'de> Deserialize<'de> for StrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("text or a list of text")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrList, E> {
                Ok(StrList(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrList, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(StrList(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte size: an integer, or a string with a unit (`"64KiB"`).
#[derive(Debug, Clone)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size: a whole number of bytes or text such as \"64KiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size::Bytes(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size::Bytes)
                    .map_err(|_| {
                        E::custom(
                            "a size cannot be negative; expected a whole number of bytes or text such as \"64KiB\"",
                        )
                    })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Ok(Size::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string, or a boolean (`false` turns a feature off).
#[derive(Debug, Clone)]
pub enum StrOrBool {
    Str(String),
    Bool(bool),
}

impl<'de> Deserialize<'de> for StrOrBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrOrBool;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a header name such as \"x-request-id\", or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<StrOrBool, E> {
                Ok(StrOrBool::Bool(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrOrBool, E> {
                Ok(StrOrBool::Str(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration, or a boolean: `false` turns a feature off, `true` keeps its default.
#[derive(Debug, Clone)]
pub enum DurationOrBool {
    Text(String),
    Bool(bool),
}

impl<'de> Deserialize<'de> for DurationOrBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DurationOrBool;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration in quotes such as \"60s\", or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<DurationOrBool, E> {
                Ok(DurationOrBool::Bool(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationOrBool, E> {
                Ok(DurationOrBool::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `tcp_keepalive`: the idle time before the first probe (`"60s"`), `true` (the
/// defaults), `false` or `"0s"` (off), or a table `{ idle, interval, probes }`.
#[derive(Debug, Clone)]
pub enum RawTcpKeepalive {
    Bool(bool),
    Idle(String),
    Table(RawKeepaliveTable),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeepaliveTable {
    pub idle: Option<String>,
    pub interval: Option<String>,
    pub probes: Option<u32>,
}

impl<'de> Deserialize<'de> for RawTcpKeepalive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTcpKeepalive;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a duration in quotes such as \"60s\", true, false, or a table such as { idle = \"60s\", interval = \"10s\", probes = 6 }",
                )
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawTcpKeepalive, E> {
                Ok(RawTcpKeepalive::Bool(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawTcpKeepalive, E> {
                Ok(RawTcpKeepalive::Idle(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawTcpKeepalive, A::Error> {
                RawKeepaliveTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawTcpKeepalive::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// `http3`: `true` (the defaults), `false`, or a table of settings.
#[derive(Debug, Clone)]
pub enum RawHttp3 {
    Bool(bool),
    Table(RawHttp3Table),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp3Table {
    pub alt_svc: Option<bool>,
    pub alt_svc_max_age: Option<String>,
    pub address_validation: Option<String>,
    pub validation_above: Option<u32>,
    pub max_connections: Option<u64>,
    pub initial_stream_window: Option<Size>,
    pub initial_connection_window: Option<Size>,
    pub early_data: Option<bool>,
}

impl<'de> Deserialize<'de> for RawHttp3 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHttp3;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false, or a table such as { alt_svc = true, address_validation = \"auto\" }")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawHttp3, E> {
                Ok(RawHttp3::Bool(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawHttp3, A::Error> {
                RawHttp3Table::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawHttp3::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// A route's `compression`: `true` (the defaults), `false`, or a table of settings.
#[derive(Debug, Clone)]
pub enum RawCompression {
    Bool(bool),
    Table(RawCompressionTable),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompressionTable {
    pub algorithms: Option<Vec<String>>,
    pub content_types: Option<Vec<String>>,
    pub min_size: Option<Size>,
    pub gzip_level: Option<u32>,
    pub brotli_level: Option<u32>,
    pub zstd_level: Option<i32>,
    pub decompress_requests: Option<bool>,
    pub max_decompressed: Option<Size>,
}

impl<'de> Deserialize<'de> for RawCompression {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCompression;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false, or a table such as { algorithms = [\"br\", \"gzip\"], min_size = 1024 }")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawCompression, E> {
                Ok(RawCompression::Bool(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawCompression, A::Error> {
                RawCompressionTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawCompression::Table)
            }
        }
        d.deserialize_any(V)
    }
}
