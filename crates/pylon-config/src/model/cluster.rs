//! Clusters in the model: upstream protocols, balancing, endpoints and their DNS,
//! connection pools, health checks, retries, outlier detection and circuit breaking;
//! and the TCP options that listeners' and upstream connections share.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
    /// HTTP/2 over TLS (needs `tls`).
    H2,
    /// HTTP/3 over QUIC (needs `tls`).
    H3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum HostHeader {
    /// Forward the client's `Host`.
    Preserve,
    /// Use the endpoint's `ip:port`.
    Endpoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LbPolicy {
    /// Round robin, honouring endpoint weights (smooth weighted, as NGINX).
    RoundRobin,
    /// Fewest requests in flight per unit of weight.
    LeastConnections,
    /// Power of two choices over peak-EWMA latency x requests in flight.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing on a ring (ketama), keyed by `hash_key`.
    RingHash,
    /// Consistent hashing with Maglev's lookup table, keyed by `hash_key`.
    Maglev,
}

impl LbPolicy {
    pub const NAMES: &'static [&'static str] = &[
        "round_robin",
        "least_connections",
        "least_request",
        "random",
        "ring_hash",
        "maglev",
    ];

    pub fn from_name(name: &str) -> Option<LbPolicy> {
        Some(match name {
            "round_robin" => LbPolicy::RoundRobin,
            "least_connections" => LbPolicy::LeastConnections,
            "least_request" => LbPolicy::LeastRequest,
            "random" => LbPolicy::Random,
            "ring_hash" => LbPolicy::RingHash,
            "maglev" => LbPolicy::Maglev,
            _ => return None,
        })
    }

    pub fn uses_key(self) -> bool {
        matches!(self, LbPolicy::RingHash | LbPolicy::Maglev)
    }
}

/// What a hash balancer keys requests on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum HashKey {
    ClientIp,
    Path,
    /// The request's cache key (its route's zone's, else scheme, host and target): a
    /// tier of caches stores each object on one endpoint.
    CacheKey,
    /// Lower-case header name.
    Header(String),
    Cookie(String),
    Query(String),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    pub address: EndpointAddress,
    /// The endpoint's weight (for a host name, each address it resolves to gets it; SRV
    /// records carry their own).
    pub weight: u32,
}

/// Where an endpoint is: fixed, or found through DNS (`[clusters.dns]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum EndpointAddress {
    Socket(SocketAddr),
    /// A host name, re-resolved (A/AAAA) as its records' TTL runs out; each address it
    /// resolves to is an endpoint.
    Host {
        name: String,
        port: u16,
    },
    /// An SRV name (`_service._proto.name`): its records give the targets, ports and
    /// weights (the lowest priority in the answer is used).
    Srv {
        name: String,
    },
}

impl EndpointAddress {
    pub fn is_dns(&self) -> bool {
        !matches!(self, EndpointAddress::Socket(_))
    }
}

impl std::fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointAddress::Socket(a) => write!(f, "{a}"),
            EndpointAddress::Host { name, port } => write!(f, "{name}:{port}"),
            EndpointAddress::Srv { name } => write!(f, "srv:{name}"),
        }
    }
}

/// Which address families a host name's endpoints use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum IpFamily {
    /// A and AAAA records.
    Any,
    V4,
    V6,
}

/// DNS discovery settings of a cluster (`[clusters.dns]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Dns {
    /// Name servers (`ip:port`); empty: the system's (`/etc/resolv.conf`, `/etc/hosts`).
    pub resolvers: Vec<SocketAddr>,
    pub family: IpFamily,
    /// Names are re-resolved when their records' TTL runs out, but no more often than
    /// `min_ttl` and at least every `max_ttl`.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// Time allowed for one resolution.
    pub timeout: Duration,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            resolvers: Vec::new(),
            family: IpFamily::Any,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Pool {
    /// An idle upstream connection is closed after this long.
    pub idle_timeout: Duration,
    /// Idle HTTP/1.1 connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// Connections kept open ahead per endpoint: handed to new Layer 4 clients, and
    /// to HTTP/1.1 requests (idle pooled connections count); one ready connection for
    /// HTTP/2 clusters.
    pub warm_connections: usize,
    /// Dead-peer detection on upstream connections.
    pub tcp: TcpOptions,
    /// HTTP/2: connections per endpoint at most; another opens when every open one
    /// carries as many streams as its peer allows.
    pub max_h2_connections: usize,
    /// HTTP/2: PING sent after this long without frames from the endpoint (idle
    /// connections included); `None`: no PING.
    pub h2_keepalive_interval: Option<Duration>,
    /// HTTP/2: a PING unanswered for this long closes the connection.
    pub h2_keepalive_timeout: Duration,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            idle_timeout: Duration::from_secs(90),
            max_idle_per_endpoint: 128,
            warm_connections: 0,
            tcp: TcpOptions::default(),
            max_h2_connections: 4,
            h2_keepalive_interval: Some(Duration::from_secs(30)),
            h2_keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// TCP keepalive probes: after `idle` without traffic, one probe every `interval`;
/// `probes` unanswered ones drop the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TcpKeepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub probes: u32,
}

impl Default for TcpKeepalive {
    fn default() -> Self {
        TcpKeepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            probes: 6,
        }
    }
}

/// How a TCP connection notices a peer that vanished (`tcp_keepalive`,
/// `tcp_user_timeout`): by default an idle one within about 70 s, one with data
/// unacknowledged within 60 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TcpOptions {
    /// Keepalive probes; `None`: off.
    pub keepalive: Option<TcpKeepalive>,
    /// `TCP_USER_TIMEOUT` (Linux): sent data unacknowledged for this long drops the
    /// connection; `None`: the system's default (retransmissions for about 15 min).
    pub user_timeout: Option<Duration>,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            keepalive: Some(TcpKeepalive::default()),
            user_timeout: Some(Duration::from_secs(60)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub protocol: UpstreamProtocol,
    pub lb: LbPolicy,
    /// The key of `ring_hash` and `maglev`; a request without it is spread at random.
    pub hash_key: HashKey,
    pub connect_timeout: Duration,
    /// Time from sending the request to receiving the response head.
    pub response_timeout: Duration,
    pub host_header: HostHeader,
    pub pool: Pool,
    pub tls: Option<UpstreamTls>,
    pub health_check: Option<HealthCheck>,
    /// Passive health: ejection after consecutive failed requests; off when `None`.
    pub outlier_detection: Option<OutlierDetection>,
    /// Retries; off when `None`.
    pub retry: Option<Retry>,
    /// Limits beyond which requests get an immediate 503 `overloaded`.
    pub circuit_breaker: CircuitBreaker,
    /// An endpoint back in rotation ramps up to its full share over this window.
    pub slow_start: Option<Duration>,
    /// Sticky sessions through a cookie Pylon sets; off when `None`.
    pub sticky: Option<Sticky>,
    /// Below this percentage of healthy endpoints, all endpoints take traffic (0: off).
    pub panic_threshold: u32,
    /// How host-name and SRV endpoints are resolved.
    pub dns: Dns,
    /// A PROXY protocol header opens every upstream connection; off when `None`.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// `h3` clusters: the protocol over TCP (and the same TLS settings) to use while QUIC
    /// cannot reach an endpoint (UDP blocked, handshake timing out); `None`: no fallback.
    pub h3_fallback: Option<UpstreamProtocol>,
    /// More endpoints, listed under a prefix in etcd and followed by watch.
    pub discovery: Option<EtcdDiscovery>,
}

/// Endpoints kept in etcd (`discovery = "etcd://HOST:PORT/PREFIX"`): each key under the
/// prefix is one endpoint, its value `IP:PORT` or `{"address": "IP:PORT", "weight": N}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EtcdDiscovery {
    /// As written.
    pub url: String,
    /// etcd's client addresses, `host:port`.
    pub etcd: Vec<String>,
    /// The key prefix, ending with `/`.
    pub prefix: String,
}

/// Sticky sessions (`[clusters.sticky]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sticky {
    pub cookie: String,
    /// `Max-Age`; `None` makes a session cookie.
    pub ttl: Option<Duration>,
    pub path: String,
    pub secure: bool,
    pub http_only: bool,
    /// `Strict`, `Lax` or `None`.
    pub same_site: Option<String>,
    /// Key signing the cookie; `None`: a random key per process (cookies do not survive
    /// a restart).
    pub secret: Option<String>,
}

/// Circuit breaking (`[clusters.circuit_breaker]`); `None` means no limit.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct CircuitBreaker {
    /// Upstream connections open at once (all endpoints).
    pub max_connections: Option<u64>,
    /// Requests waiting for an upstream connection to open.
    pub max_pending_requests: Option<u64>,
    /// Requests in flight to the cluster.
    pub max_requests: Option<u64>,
    /// Requests retrying at once (on top of the retry budget).
    pub max_retries: Option<u64>,
}

/// Retry policy (`[clusters.retry]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Retry {
    /// Retries after the first try.
    pub max_retries: u32,
    /// Answers that are retried (idempotent methods only).
    pub statuses: Vec<u16>,
    /// Retry idempotent requests whose connection was reset or closed before an answer.
    pub on_reset: bool,
    /// Time to the response head allowed to each try.
    pub per_try_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Retries in flight may be at most this percentage of the requests in flight...
    pub budget_percent: u32,
    /// ...or this many, whichever is larger.
    pub budget_min_concurrent: u32,
    /// Request bodies up to this size are kept for a retry; larger ones are not retried.
    pub max_body_bytes: u64,
}

/// Passive health checking (`[clusters.outlier_detection]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OutlierDetection {
    /// Consecutive failed requests (5xx answers, connect failures, resets, timeouts).
    pub consecutive_failures: u32,
    /// First ejection time; the n-th ejection lasts n times as long (up to 10x).
    pub base_ejection_time: Duration,
    /// At most this percentage of the cluster's endpoints is ejected at once.
    pub max_ejection_percent: u32,
}

/// Active health checking of a cluster's endpoints (`[clusters.health_check]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Up to this much random delay is added to each interval.
    pub jitter: Duration,
    /// Consecutive successes that bring an unhealthy endpoint back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take a healthy endpoint out.
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum HealthCheckKind {
    /// The TCP (and TLS, for TLS clusters) connection opens.
    Tcp,
    /// An HTTP/1.1 request gets an expected status (and body substring).
    Http {
        method: String,
        path: String,
        /// `Host` header; default: the endpoint address.
        host: Option<String>,
        /// Empty means any 2xx.
        expected_statuses: Vec<u16>,
        body_contains: Option<String>,
    },
    /// `grpc.health.v1.Health/Check` answers SERVING (over HTTP/2, TLS for TLS clusters).
    Grpc { service: String },
    /// A datagram gets a reply (holding `expect`, when set) within the timeout.
    Udp {
        send: Vec<u8>,
        expect: Option<String>,
    },
}

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
