//! The validated configuration model: what the proxy builds its runtime from.
//!
//! Every value here has been checked; defaults are filled in. Names follow Envoy:
//! listener, route, cluster, endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::ConfigError;

mod acme;
mod cache;
mod cluster;
mod gateway;
mod tracing;
mod turn;
pub use acme::*;
pub use cache::*;
pub use cluster::*;
pub use gateway::*;
pub use tracing::*;
pub use turn::*;

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    pub server: Server,
    /// The admin API, when enabled.
    pub admin: Option<Admin>,
    pub access_log: AccessLog,
    pub listeners: Vec<Listener>,
    /// In file order: the first matching route wins.
    pub routes: Vec<Route>,
    pub clusters: Vec<Cluster>,
    /// Cache zones (`[[caches]]`), used by routes with `cache`.
    pub caches: Vec<Cache>,
    /// Authentication policies (`[[auth]]`), used by routes with `auth`.
    pub auth: Vec<AuthPolicy>,
    /// Rate-limit policies (`[[rate_limits]]`), used by routes with `rate_limit`.
    pub rate_limits: Vec<RateLimit>,
    /// OpenTelemetry traces (`[tracing]`), when enabled.
    pub tracing: Option<Tracing>,
}

impl Config {
    /// A configuration with nothing in it: what runs before the first one (a first
    /// start is a reload from it).
    pub fn empty() -> Config {
        Config {
            server: Server::default(),
            admin: None,
            access_log: AccessLog::default(),
            listeners: Vec::new(),
            routes: Vec::new(),
            clusters: Vec::new(),
            caches: Vec::new(),
            auth: Vec::new(),
            rate_limits: Vec::new(),
            tracing: None,
        }
    }

    pub fn cache(&self, name: &str) -> Option<&Cache> {
        self.caches.iter().find(|c| c.name == name)
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// Routes that apply to the named listener, in file order.
    pub fn routes_for<'a>(&'a self, listener: &'a str) -> impl Iterator<Item = &'a Route> + 'a {
        self.routes
            .iter()
            .filter(move |r| r.listeners.is_empty() || r.listeners.iter().any(|l| l == listener))
            .filter(move |_| {
                self.listeners
                    .iter()
                    .find(|l| l.name == listener)
                    .is_none_or(|l| l.protocol.is_http())
            })
    }

    /// One line for `pylon check`.
    pub fn summary(&self) -> String {
        let binds: usize = self.listeners.iter().map(|l| l.binds.len()).sum();
        let endpoints: usize = self.clusters.iter().map(|c| c.endpoints.len()).sum();
        let admin = self
            .admin
            .as_ref()
            .map_or(String::new(), |a| format!(", admin API on {}", a.bind));
        let quic: usize = self
            .listeners
            .iter()
            .filter(|l| l.http3.is_some())
            .map(|l| l.binds.len())
            .sum();
        let http3 = if quic > 0 {
            format!(" (HTTP/3 on {quic} of them)")
        } else {
            String::new()
        };
        let caches = match self.caches.len() {
            0 => String::new(),
            n => {
                let disk = self.caches.iter().filter(|c| c.disk.is_some()).count();
                let disk = if disk > 0 {
                    format!(" ({disk} with a disk tier)")
                } else {
                    String::new()
                };
                format!(", {n} cache zone(s){disk}")
            }
        };
        format!(
            "{} listener(s) on {} address(es){http3}, {} route(s), {} cluster(s) with {} endpoint(s){caches}{admin}",
            self.listeners.len(),
            binds,
            self.routes.len(),
            self.clusters.len(),
            endpoints
        )
    }
}

/// Process-wide settings (`[server]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Server {
    /// Worker threads; 0 means one per CPU.
    pub worker_threads: usize,
    /// How long a graceful stop waits for in-flight requests.
    pub drain_timeout: Duration,
    /// After a reload, how long the long-lived connections (WebSockets, tunnels, TCP
    /// and UDP sessions) of a removed or changed route or listener may go on.
    pub reload_grace: Duration,
    /// Reload when the configuration file changes.
    pub watch_config: bool,
    /// How long the file must stay unchanged before a watched change is loaded.
    pub watch_debounce: Duration,
    /// Unix socket on which this process hands its listening sockets to a new one
    /// (zero-downtime binary upgrade).
    pub upgrade_socket: Option<String>,
    /// Client connections open at once, all listeners together; more are closed at
    /// once and counted.
    pub max_connections: u64,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            worker_threads: 0,
            drain_timeout: Duration::from_secs(30),
            reload_grace: Duration::from_secs(30),
            watch_config: false,
            watch_debounce: Duration::from_millis(500),
            upgrade_socket: None,
            max_connections: 100_000,
        }
    }
}

/// The admin API (`[admin]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Admin {
    pub bind: SocketAddr,
    /// Bearer token every admin request must carry; required beyond loopback.
    pub token: Option<String>,
}

pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:9901";

/// Where access-log lines go (`[access_log]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    Stderr,
    File(String),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessLog {
    pub target: AccessLogTarget,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            target: AccessLogTarget::Stdout,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 cleartext (prior knowledge), detected per connection.
    Http,
    /// HTTP/1.1 and HTTP/2 over TLS (ALPN).
    Https,
    /// Layer 4: TCP connections relayed to a cluster's endpoints (TLS terminated when
    /// the listener has `tls`; routed by SNI without terminating with `sni_routes`).
    Tcp,
    /// Layer 4: UDP datagrams relayed per client session.
    Udp,
    /// STUN Binding requests (RFC 8489): clients learn their public address.
    Stun,
    /// TURN (RFC 8656): STUN, and relayed addresses for clients behind NATs.
    Turn,
}

impl ListenerProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Https => "https",
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::Udp => "udp",
            ListenerProtocol::Stun => "stun",
            ListenerProtocol::Turn => "turn",
        }
    }
}

/// Where in the configuration something was written: for errors found later (reading
/// a certificate file, say) that must still name the file, line and key. Not part of
/// what the configuration means: any two locations compare equal, so that a reload
/// after an edit elsewhere in the file (lines moved) keeps what did not change.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub key: String,
}

impl PartialEq for Location {
    fn eq(&self, _: &Location) -> bool {
        true
    }
}

impl Eq for Location {}

impl Location {
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            key: self.key.clone(),
            message: message.into(),
        }
    }
}

/// A file named in the configuration, resolved against the config file's directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileRef {
    pub path: PathBuf,
    pub at: Location,
}

/// A certificate chain and its private key (PEM).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertificateFiles {
    pub cert: FileRef,
    pub key: FileRef,
    /// Names this certificate answers for (exact or `*.example.com`); empty means the
    /// DNS names in the certificate itself.
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

/// TLS termination on a listener (`[listeners.tls]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ListenerTls {
    /// The first one is the default, for clients without SNI or with an unknown name.
    pub certificates: Vec<CertificateFiles>,
    /// A certificate ordered and renewed over ACME, for its names (before the files');
    /// the default when there are no files.
    pub acme: Option<Acme>,
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<String>,
    pub handshake_timeout: Duration,
    pub client_auth: ClientAuth,
    /// CA bundle that client certificates must chain to.
    pub client_ca: Option<FileRef>,
    /// Forward the verified client identity to upstreams as `x-client-cert-*` headers.
    pub forward_client_cert: bool,
    /// What a handshake for a name no certificate covers (or without SNI) gets.
    pub unknown_sni: UnknownSni,
    /// Staple OCSP responses to handshakes, for certificates that name a responder.
    pub ocsp_stapling: bool,
    /// Where OCSP responses are cached (ACME certificates' go to their storage).
    pub ocsp_cache: Option<FileRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum UnknownSni {
    /// The first certificate.
    Default,
    /// The handshake is refused.
    Reject,
}

/// HTTP/3 beside an https listener (`http3 = true` or `[listeners.http3]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Http3 {
    /// Advertise HTTP/3 on the listener's TCP answers (`Alt-Svc: h3=":port"; ma=...`).
    pub alt_svc: bool,
    /// The `ma` of the advertisement: how long clients may remember it.
    pub alt_svc_max_age: Duration,
    /// When a client must prove its address (a QUIC Retry) before its handshake.
    pub address_validation: AddressValidation,
    /// QUIC connections open at once on this listener (each address); more are refused.
    pub max_connections: u64,
    /// Bytes a client may send on one request stream before Pylon reads them.
    pub initial_stream_window: u64,
    /// Bytes a client may send on all its streams before Pylon reads them.
    pub initial_connection_window: u64,
    /// Accept 0-RTT (early data) from resuming clients: safe methods only, forwarded
    /// with `Early-Data: 1`; others get 425 Too Early (RFC 8470).
    pub early_data: bool,
}

impl Default for Http3 {
    fn default() -> Self {
        Http3 {
            alt_svc: true,
            alt_svc_max_age: Duration::from_secs(86_400),
            address_validation: AddressValidation::Above(1000),
            max_connections: 10_000,
            initial_stream_window: 1 << 20,
            initial_connection_window: 8 << 20,
            early_data: false,
        }
    }
}

/// QUIC address validation (RFC 9000 §8.1): a Retry costs the client one round trip
/// and protects against handshakes from spoofed addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum AddressValidation {
    /// Every new connection.
    Always,
    /// Never (the 3x amplification limit still holds).
    Never,
    /// Once more than this many handshakes per second arrive.
    Above(u32),
}

/// TLS from Pylon to a cluster's endpoints (`[clusters.tls]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UpstreamTls {
    /// CA bundle to verify the upstream with; `None` means the system's roots.
    pub ca: Option<FileRef>,
    /// Name sent as SNI and verified; default: the request's host for
    /// `host_header = "preserve"` clusters is not used, the endpoint IP is.
    pub server_name: Option<String>,
    /// Lab use only: accept any upstream certificate.
    pub insecure_skip_verify: bool,
    /// Client certificate for mutual TLS to the upstream.
    pub client_cert: Option<CertificateFiles>,
}

/// A listener: addresses to bind and how to serve them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Listener {
    pub name: String,
    /// Every address to bind: the `bind` entries, host names resolved.
    pub binds: Vec<SocketAddr>,
    /// The `bind` entries as written (`127.0.0.1:8080`, `localhost:8080`).
    pub bind_as_written: Vec<String>,
    pub protocol: ListenerProtocol,
    pub limits: Limits,
    /// Connections one client IP may have open at once on this listener (HTTP and
    /// TCP listeners); more are closed at once and counted.
    pub max_connections_per_ip: Option<u64>,
    /// Dead-peer detection on accepted connections (`tcp_keepalive`,
    /// `tcp_user_timeout`); not for `udp` listeners.
    pub tcp: TcpOptions,
    /// `TCP_DEFER_ACCEPT` (Linux) on its TCP sockets: a connection is handed to Pylon
    /// when its first bytes arrive rather than when its handshake completes. On by
    /// default for `http` and `https` listeners (their clients speak first), off for
    /// `tcp` ones (a server-first protocol's client would wait); STUN and TURN
    /// listeners never.
    pub defer_accept: bool,
    pub headers: ForwardingHeaders,
    /// Present when `protocol` is `https` (always) or `tcp` (TLS termination at L4).
    pub tls: Option<ListenerTls>,
    /// HTTP/3 over QUIC on the same addresses (UDP), with the same certificates: on
    /// `https` listeners with `http3`.
    pub http3: Option<Http3>,
    /// For `tcp` and `udp` listeners.
    pub l4: Option<L4Listener>,
    /// PROXY protocol (v1 or v2) expected from trusted sources; others are refused.
    pub proxy_protocol: Option<ProxyProtocolIn>,
    /// A forward proxy (absolute-form requests and CONNECT) instead of routes.
    pub forward: Option<ForwardProxy>,
    /// Rate-limit policies every route of this listener applies before its own.
    pub rate_limit: Vec<String>,
    /// For `stun` and `turn` listeners.
    pub stun: Option<StunListener>,
}

impl Listener {
    /// Whether its socket on each address is UDP (a `udp` listener, a STUN or TURN
    /// listener on UDP alone); TCP otherwise.
    pub fn main_is_udp(&self) -> bool {
        self.protocol == ListenerProtocol::Udp || self.stun.as_ref().is_some_and(|s| !s.uses_tcp())
    }

    /// Whether it also takes a UDP socket beside its TCP one on each address: HTTP/3
    /// beside an https listener, STUN and TURN over UDP beside TCP or TLS.
    pub fn udp_beside_tcp(&self) -> bool {
        self.http3.is_some()
            || self
                .stun
                .as_ref()
                .is_some_and(|s| s.uses_tcp() && s.serves(TurnTransport::Udp))
    }
}

/// A forward proxy's settings (`[listeners.forward]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ForwardProxy {
    /// Checked in order; the first rule that matches decides.
    pub rules: Vec<AccessRule>,
    /// Ports CONNECT may reach when no rule allows another.
    pub connect_ports: Vec<u16>,
    /// Loopback, private, link-local and other non-public destinations are denied
    /// unless this is set (or a rule allows them).
    pub allow_private: bool,
    /// Users allowed in (`Proxy-Authorization: Basic`); empty: no authentication.
    pub users: Vec<ProxyUser>,
    /// Drop the client's `X-Forwarded-For`, `Forwarded` and `Via` (anonymity).
    pub strip_client_headers: bool,
    pub connect_timeout: Duration,
    /// A CONNECT tunnel with no bytes either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Time from sending an absolute-form request to the destination's response head.
    pub response_timeout: Duration,
    /// A pooled connection to a destination, idle this long, is closed.
    pub idle_timeout: Duration,
    /// Name servers (`ip:port`) for destination names; empty: the system's
    /// (`/etc/resolv.conf`, `/etc/hosts`).
    pub resolvers: Vec<SocketAddr>,
    /// Time allowed to resolve a destination name.
    pub resolve_timeout: Duration,
    /// The cache zone plain-HTTP (absolute-form) answers are stored in and served from.
    pub cache: Option<String>,
}

/// An access rule: all the conditions it has must hold for it to match.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessRule {
    pub name: String,
    pub allow: bool,
    /// Destination host names, exact or `*.suffix`; empty: any.
    pub hosts: Vec<HostMatch>,
    /// Destination ports; empty: any.
    pub ports: Vec<u16>,
    /// Networks the destination's addresses must fall in; empty: any.
    pub networks: Vec<IpNet>,
}

/// A forward-proxy user: a name and an argon2 password hash (PHC string).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProxyUser {
    pub name: String,
    pub password_hash: String,
}

impl ListenerProtocol {
    pub fn is_http(self) -> bool {
        matches!(self, ListenerProtocol::Http | ListenerProtocol::Https)
    }
}

/// A Layer 4 listener's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct L4Listener {
    /// Where connections (or UDP sessions) go when no SNI route takes them; without it,
    /// such connections are closed.
    pub cluster: Option<String>,
    /// TLS passthrough: the ClientHello is read (not terminated) and its server name
    /// (and ALPN) choose the cluster; first match wins.
    pub sni_routes: Vec<SniRoute>,
    /// A TCP connection with no bytes either way for this long is closed; a UDP session
    /// without datagrams either way expires.
    pub idle_timeout: Duration,
    /// Connections are closed after this long whatever their activity.
    pub max_lifetime: Option<Duration>,
    /// Concurrent connections (TCP) or sessions (UDP) of this listener; more are refused.
    pub max_connections: u64,
    /// Time allowed for the client's ClientHello when `sni_routes` must read it.
    pub inspect_timeout: Duration,
    /// Relay with splice(2) (Linux, neither side TLS); off: copy through user space.
    pub splice: bool,
}

/// A TLS-passthrough route: server names (and ALPN) to a cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SniRoute {
    /// Exact or `*.suffix` names; empty matches any (and no) server name.
    pub server_names: Vec<HostMatch>,
    /// Offered ALPN protocols, one of which must be offered; empty: any.
    pub alpn: Vec<String>,
    pub cluster: String,
}

/// Incoming PROXY protocol.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProxyProtocolIn {
    /// Sources allowed (and required) to send a PROXY header.
    pub trusted: Vec<IpNet>,
}

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (std::net::IpAddr::V6(_), std::net::IpAddr::V4(v4)) => {
                std::net::IpAddr::V6(v4.to_ipv6_mapped())
            }
            (std::net::IpAddr::V4(_), std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => std::net::IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        let (a, b, bits) = match (self.addr, ip) {
            (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => (
                u128::from(u32::from(a)) << 96,
                u128::from(u32::from(b)) << 96,
                self.prefix,
            ),
            (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => {
                (u128::from(a), u128::from(b), self.prefix)
            }
            _ => return false,
        };
        if bits == 0 {
            return true;
        }
        let mask = u128::MAX << (128 - u32::from(bits.min(128)));
        a & mask == b & mask
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<IpNet, String> {
        let bad =
            || format!("invalid network \"{s}\": expected an IP or a CIDR such as 10.0.0.0/8");
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, n)) => (ip, Some(n.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(IpNet { addr, prefix })
    }
}

/// PROXY protocol version sent to upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ProxyProtocolVersion {
    V1,
    V2,
}

/// Limits on what a client controls, with safe defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Limits {
    /// Time allowed to receive a request's whole header (slowloris guard).
    pub header_read_timeout: Duration,
    /// An idle keep-alive connection is closed after this long.
    pub idle_timeout: Duration,
    /// A client that takes nothing of what Pylon is writing to it for this long (its
    /// socket stays full) is disconnected: the slow-reader guard.
    pub send_timeout: Duration,
    /// Request line plus headers, in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Number of request headers (431 beyond).
    pub max_headers: usize,
    /// Request target length in bytes (414 beyond).
    pub max_uri_bytes: usize,
    /// Request body in bytes (413 beyond).
    pub max_request_body: u64,
    /// Concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams a client may open and reset before Pylon has taken them up
    /// (rapid reset, CVE-2023-44487); beyond: GOAWAY ENHANCE_YOUR_CALM.
    pub h2_max_reset_streams: usize,
    /// HTTP/2 streams Pylon may reset for the client's protocol errors on one
    /// connection; beyond: GOAWAY.
    pub h2_max_error_resets: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_request_body: 1 << 30,
            max_concurrent_streams: 256,
            h2_max_reset_streams: 20,
            h2_max_error_resets: 1024,
        }
    }
}

/// Which proxy headers a listener adds to requests it forwards.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ForwardingHeaders {
    /// `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `X-Forwarded-Host`.
    pub x_forwarded: bool,
    /// RFC 7239 `Forwarded` (appended).
    pub forwarded: bool,
    /// `Via` (appended), and on responses.
    pub via: bool,
    /// Header carrying the request id; generated when absent and returned to the client.
    pub request_id: Option<String>,
}

impl Default for ForwardingHeaders {
    fn default() -> Self {
        ForwardingHeaders {
            x_forwarded: true,
            forwarded: false,
            via: true,
            request_id: Some("x-request-id".into()),
        }
    }
}

/// Host match: exact (case-insensitive) or a `*.suffix` wildcard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com` stored as `.example.com`: matches any name ending in it.
    Suffix(String),
}

impl HostMatch {
    /// Whether `host` (lower-case, without port) matches; a wildcard needs at least one
    /// more label.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(#[serde(serialize_with = "regex_source")] regex::Regex),
}

fn regex_source<S: serde::Serializer>(r: &regex::Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PathMatch::Any, PathMatch::Any) => true,
            (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Prefix(a), PathMatch::Prefix(b)) => a == b,
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeaderMatch {
    /// Lower-case header name.
    pub name: String,
    /// Exact value; `None` means the header only has to be present.
    pub value: Option<String>,
}

/// What a request must look like for a route to apply. Empty parts match anything.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RouteMatch {
    pub hosts: Vec<HostMatch>,
    pub path: PathMatch,
    /// Upper-case method names; empty means any method.
    pub methods: Vec<String>,
    pub headers: Vec<HeaderMatch>,
    /// Only gRPC requests (`content-type: application/grpc*`, gRPC-Web included).
    pub grpc: bool,
    /// Conditions on the verified client certificate; a request without one does not
    /// match a route that has any.
    pub client_cert: ClientCertMatch,
    /// Claims the request's JWT (verified by one of the route's `auth` jwt policies)
    /// must carry with these values; a request without such a token does not match a
    /// route that has any.
    pub claims: Vec<(String, String)>,
}

/// Conditions on the verified client certificate (all given ones must hold).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ClientCertMatch {
    /// Exact subject, e.g. `CN=alice`.
    pub subject: Option<String>,
    /// One of the certificate's DNS names, exact.
    pub dns: Option<String>,
    /// SHA-256 fingerprint, lower-case hex without separators.
    pub fingerprint: Option<String>,
}

impl ClientCertMatch {
    pub fn is_empty(&self) -> bool {
        self.subject.is_none() && self.dns.is_none() && self.fingerprint.is_none()
    }
}

// Built once per configuration and kept in its route: the size of the largest variant
// costs nothing per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Action {
    Proxy(ProxyAction),
    Respond(RespondAction),
    Redirect(RedirectAction),
    Files(FilesAction),
}

/// A route that serves a directory (`files = { root = ... }`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FilesAction {
    /// Absolute (relative ones are taken from the config file's directory).
    pub root: std::path::PathBuf,
    /// Tried in order for a directory's path.
    pub index: Vec<String>,
    /// A directory without an index file is listed (else 403).
    pub browse: bool,
    /// Symbolic links may lead outside `root`.
    pub follow_symlinks: bool,
    /// `FILE.br`, `FILE.zst` and `FILE.gz` beside a file are served to clients that
    /// accept them.
    pub precompressed: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProxyAction {
    pub cluster: String,
    /// Replaces the matched `path_prefix` with this.
    pub prefix_rewrite: Option<String>,
    /// Sets the upstream `Host` (and `:authority`).
    pub host_rewrite: Option<String>,
    /// WebSocket upgrades (HTTP/1.1 `Upgrade`, HTTP/2 extended CONNECT) are tunnelled.
    pub websocket: bool,
    /// A tunnel with no bytes either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Tunnels are closed after this long whatever their activity.
    pub tunnel_max_lifetime: Option<Duration>,
    /// gRPC-Web requests are translated to gRPC for the upstream, and back.
    pub grpc_web: bool,
    /// Browser origins allowed by CORS (`*` for any), for gRPC-Web.
    pub cors_allow_origins: Vec<String>,
    /// A client that ends its sending side (HTTP/1.1 half-close) before the upstream's
    /// answer arrives aborts the upstream exchange (else it gets the answer).
    pub abort_on_client_close: bool,
    /// Answers carry the request's timing breakdown in a `Server-Timing` header.
    pub server_timing: bool,
    /// The cache zone its answers are stored in and served from.
    pub cache: Option<String>,
    /// Authentication: the request must satisfy one of these policies.
    pub auth: Vec<String>,
    /// Paths (exact, or prefixes ending in `*`) that skip `auth`.
    pub auth_skip: Vec<String>,
    /// Every `auth` policy must accept the request (`"all"`), not just one (`"any"`).
    pub auth_all: bool,
    /// Rate-limit policies, each applied in turn.
    pub rate_limit: Vec<String>,
    /// Weighted clusters sharing the route's requests (`cluster` is the first); empty:
    /// all go to `cluster`.
    pub backends: Vec<Backend>,
    /// Stickiness and canary rollback for `backends`.
    pub split: Split,
    /// Copies of a share of the requests sent to a shadow cluster.
    pub mirror: Option<Mirror>,
    /// Answers compressed for clients that accept it.
    pub compression: Option<Compression>,
    /// Changes to the upstream request's headers, and to the answer's.
    pub request_headers: HeaderRules,
    pub response_headers: HeaderRules,
    /// The upstream path rewritten by a regex (after `prefix_rewrite`).
    pub regex_rewrite: Option<RegexRewrite>,
    /// Changes to the upstream request's query.
    pub query: QueryRules,
    /// Pages that replace the body of error answers.
    pub error_pages: Vec<ErrorPage>,
    /// The request body read whole before the upstream is contacted.
    pub request_buffering: Option<Buffering>,
    /// The upstream's answer read ahead of a slow client.
    pub response_buffering: Option<Buffering>,
}

/// Default idle timeout of a WebSocket tunnel.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RespondAction {
    pub status: u16,
    /// Lower-case names, in file order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RedirectAction {
    pub status: u16,
    /// May contain `{scheme}`, `{host}`, `{path}`, `{query}` and `{request_uri}`.
    pub location: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Route {
    pub name: String,
    /// Listener names this route is attached to; empty means every HTTP listener.
    pub listeners: Vec<String>,
    pub matcher: RouteMatch,
    pub action: Action,
}
