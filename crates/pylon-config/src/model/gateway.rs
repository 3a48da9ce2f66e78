//! The gateway's part of the model: authentication policies (`[[auth]]`) and rate
//! limits (`[[rate_limits]]`).

use std::time::Duration;

use super::{FileRef, ProxyUser};

/// A named rate limit (`[[rate_limits]]`): `rate` requests per `per` for each key, with
/// bursts of up to `burst`, or (`concurrency`) a number of requests in flight per key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RateLimit {
    pub name: String,
    /// What it counts by: the parts of one key (`client_ip+claim:sub`).
    pub key: Vec<RateKey>,
    pub rate: u32,
    pub per: Duration,
    pub burst: u32,
    /// A request over the rate waits up to this long for its turn instead of being
    /// refused (zero: refused at once).
    pub delay: Duration,
    /// In-flight requests per key, instead of a rate.
    pub concurrency: Option<u32>,
    /// Buckets in Redis, shared by every Pylon instance that names the same server.
    pub global: Option<GlobalLimit>,
}

/// Where a global rate limit keeps its buckets, and what happens when it cannot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GlobalLimit {
    /// `redis://host:port[/db]`.
    pub redis: String,
    /// The longest a decision waits for Redis.
    pub timeout: Duration,
    /// Admit (`Allow`) or refuse (`Deny`) while Redis is slow or down.
    pub on_error: FailMode,
    /// Tokens an instance leases per Redis round trip.
    pub batch: u32,
    /// Prefix of the Redis keys.
    pub prefix: String,
}

/// What a check does when the service it depends on fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    Allow,
    Deny,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum RateKey {
    ClientIp,
    /// The client's network: its IPv4 address cut to `v4` bits, IPv6 to `v6`.
    ClientNet {
        v4: u8,
        v6: u8,
    },
    /// Lower-case header name.
    Header(String),
    Cookie(String),
    /// A claim of the JWT an `auth` policy accepted.
    Claim(String),
    /// One bucket for the whole route.
    Route,
}

impl std::fmt::Display for RateKey {
    /// As written in a `key`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateKey::ClientIp => f.write_str("client_ip"),
            RateKey::ClientNet { v4, v6 } => write!(f, "client_ip/{v4}/{v6}"),
            RateKey::Route => f.write_str("route"),
            RateKey::Header(h) => write!(f, "header:{h}"),
            RateKey::Cookie(c) => write!(f, "cookie:{c}"),
            RateKey::Claim(c) => write!(f, "claim:{c}"),
        }
    }
}

/// A named authentication policy (`[[auth]]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuthPolicy {
    pub name: String,
    pub kind: AuthKind,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum AuthKind {
    /// `Authorization: Basic` against argon2 hashes.
    Basic {
        realm: String,
        users: Vec<ProxyUser>,
    },
    /// An API key in a header or a query parameter, checked against a file of
    /// SHA-256 hashes (`NAME HEX` lines, as `pylon apikey` prints them).
    ApiKey {
        /// Lower-case header name, when the key comes in a header.
        header: Option<String>,
        /// Query parameter, when it comes in the query.
        query: Option<String>,
        keys_file: FileRef,
    },
    /// `Authorization: Bearer` JWTs verified with one key or a JWKS.
    Jwt(Jwt),
    /// A subrequest to an authorization service decides (NGINX `auth_request`, Envoy
    /// `ext_authz`).
    External(ExternalAuth),
}

/// An external authorization policy's settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExternalAuth {
    /// The authorization service.
    pub cluster: String,
    /// Prepended to the request's path for the subrequest.
    pub path_prefix: String,
    /// Lower-case request headers sent along.
    pub headers: Vec<String>,
    /// Lower-case headers of an accepting answer copied to the upstream request.
    pub upstream_headers: Vec<String>,
    /// A header of an accepting answer naming the user, for the access log.
    pub user_header: Option<String>,
    pub timeout: Duration,
    /// Admit or refuse (503) when the service fails, times out or answers other than
    /// 2xx, 401 and 403.
    pub on_error: FailMode,
    /// How long a verdict is reused for the same key (zero: never).
    pub cache_ttl: Duration,
    /// The verdict cache's key; `None`: the method, path and sent headers.
    pub cache_key: Option<Vec<RateKey>>,
}

/// Where a JWT policy's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum JwtKeys {
    /// The HMAC secret (HS*) or the PEM public key.
    File(FileRef),
    Jwks(Jwks),
}

/// A JWKS URL fetched through a cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Jwks {
    /// As written.
    pub url: String,
    /// The URL's authority, sent as `Host`.
    pub host: String,
    /// The URL's path and query.
    pub target: String,
    pub cluster: String,
    /// The key set is fetched again this often.
    pub refresh: Duration,
    /// A token naming an unknown `kid` fetches the set again at most this often.
    pub min_refresh: Duration,
    pub timeout: Duration,
}

/// A JWT policy's settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Jwt {
    /// Accepted algorithms (one family: HS*, RS*/PS*, ES*, or EdDSA), as written.
    pub algorithms: Vec<String>,
    pub keys: JwtKeys,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Claims the token must carry (`exp` always).
    pub required_claims: Vec<String>,
    /// Claim → upstream header (lower-case), set from the token and never from the client.
    pub claims_to_headers: Vec<(String, String)>,
    /// Remove `Authorization` before forwarding.
    pub strip_token: bool,
}

/// One of a route's weighted clusters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Backend {
    pub cluster: String,
    /// Its share: `weight` of the sum of the backends' weights.
    pub weight: u32,
    /// Requests with this header (lower-case name, value) go here whatever the weights.
    pub header: Option<(String, String)>,
    /// ... with this cookie (name, value).
    pub cookie: Option<(String, String)>,
    /// ... with this query parameter (name, value).
    pub query: Option<(String, String)>,
}

/// How a route's backends are chosen beyond their weights.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Default)]
pub struct Split {
    pub sticky: Option<SplitSticky>,
    /// The backend watched for errors, rolled back to weight 0 when it fails too often.
    pub canary: Option<Canary>,
}

/// How a client stays on one backend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum SplitSticky {
    /// A cookie naming the backend, set on the first answer.
    Cookie(String),
    /// A hash of the request's key (as a rate limit's `key`) picks the backend, so
    /// the same key stays on one side while the weights stay.
    Hash(Vec<RateKey>),
}

/// A canary's automatic rollback.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Canary {
    pub cluster: String,
    /// Rolled back when more than this share of its answers in `window` are 5xx...
    pub max_5xx_ratio: f64,
    /// ...out of at least this many.
    pub min_requests: u32,
    pub window: Duration,
}

/// A route's request mirroring: copies sent to a shadow cluster, answers discarded.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Mirror {
    pub cluster: String,
    /// The share of requests copied, 0 to 100.
    pub percent: f64,
    /// Requests with a larger body are not copied.
    pub max_body: u64,
    /// Appended to the copy's `Host` (Envoy's `-shadow`).
    pub host_suffix: String,
    /// The longest a copy may take.
    pub timeout: Duration,
}

/// A route's response compression.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Compression {
    /// `zstd`, `br`, `gzip`, in the order preferred when a client accepts several
    /// equally.
    pub algorithms: Vec<String>,
    /// Compressed media types: exact (`application/json`) or a type's prefix
    /// (`text/*`).
    pub content_types: Vec<String>,
    /// Answers known to be smaller are sent as they are.
    pub min_size: u64,
    pub gzip_level: u32,
    pub brotli_level: u32,
    pub zstd_level: i32,
    /// Request bodies in gzip, br or zstd go upstream decoded, at most this many bytes
    /// (`None`: left as they are).
    pub decompress_requests: Option<u64>,
}

impl Compression {
    /// What `compression = true` means.
    pub fn defaults() -> Compression {
        Compression {
            algorithms: vec!["zstd".into(), "br".into(), "gzip".into()],
            content_types: [
                "text/*",
                "application/json",
                "application/javascript",
                "application/xml",
                "application/xhtml+xml",
                "application/rss+xml",
                "application/atom+xml",
                "application/ld+json",
                "application/manifest+json",
                "application/wasm",
                "image/svg+xml",
                "font/ttf",
                "font/otf",
            ]
            .map(str::to_owned)
            .to_vec(),
            min_size: 256,
            gzip_level: 6,
            brotli_level: 4,
            zstd_level: 3,
            decompress_requests: None,
        }
    }
}

/// Header changes, values being templates with `{variables}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct HeaderRules {
    /// Replace every value (or add).
    pub set: Vec<(String, String)>,
    /// Only when the header is absent.
    pub add: Vec<(String, String)>,
    /// One more value.
    pub append: Vec<(String, String)>,
    /// Lower-case names removed (before the others apply).
    pub remove: Vec<String>,
}

impl HeaderRules {
    /// Every value template, in no particular order.
    pub fn templates(&self) -> impl Iterator<Item = &str> {
        self.set
            .iter()
            .chain(&self.add)
            .chain(&self.append)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
            && self.remove.is_empty()
    }
}

/// The upstream path rewritten: the first match of `pattern` replaced by `replacement`
/// (`$1`, `${name}` captures).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegexRewrite {
    pub pattern: String,
    pub replacement: String,
}

/// Query parameters set (templates) and removed on the upstream request.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct QueryRules {
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl QueryRules {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// The variables header and query templates may use, as `{name}`.
pub const TEMPLATE_VARIABLES: &[&str] = &[
    "client_ip",
    "client_port",
    "request_id",
    "route",
    "cluster",
    "endpoint",
    "host",
    "method",
    "path",
    "request_uri",
    "query",
    "scheme",
    "client_cert_subject",
    "client_cert_fingerprint",
    "client_cert_dns",
    "tls_version",
    "tls_cipher",
    "tls_sni",
    "tls_alpn",
    "time_unix",
    "time_http",
];

/// Whether `t` is a valid template: every `{...}` names a variable of
/// [`TEMPLATE_VARIABLES`] or `claim:NAME`, braces balanced (`{{` and `}}` are literal).
pub fn template_error(t: &str) -> Option<String> {
    let mut rest = t;
    while let Some(i) = rest.find(['{', '}']) {
        let (c, after) = (rest.as_bytes()[i], &rest[i + 1..]);
        if after.starts_with(c as char) {
            rest = &after[1..];
            continue;
        }
        if c == b'}' {
            return Some("unmatched '}' (write '}}' for a brace)".into());
        }
        let Some(end) = after.find('}') else {
            return Some("unclosed '{' (write '{{' for a brace)".into());
        };
        let name = &after[..end];
        let known = TEMPLATE_VARIABLES.contains(&name)
            || name.strip_prefix("claim:").is_some_and(|c| !c.is_empty());
        if !known {
            return Some(format!(
                "unknown variable {{{name}}}, expected one of {}, or claim:NAME",
                TEMPLATE_VARIABLES.join(", ")
            ));
        }
        rest = &after[end + 1..];
    }
    None
}

/// A page that replaces the body of error answers with these statuses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ErrorPage {
    pub statuses: Vec<u16>,
    /// Where the page came from, when it is a file (read when the config is loaded).
    pub file: Option<std::path::PathBuf>,
    pub body: String,
    pub content_type: String,
    /// Also for the upstream's answers with these statuses (else only proxy-made ones).
    pub upstream: bool,
}

/// Buffering of a request or response body: at most `max` bytes; a request body past
/// `memory` goes to a temporary file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Buffering {
    pub max: u64,
    pub memory: u64,
}
