//! The validated configuration model: what the proxy builds its runtime from.
//!
//! Every value here has been checked; defaults are filled in. Names follow Envoy:
//! listener, route, cluster, endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::ConfigError;

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
}

impl ListenerProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Https => "https",
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::Udp => "udp",
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

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Action {
    Proxy(ProxyAction),
    Respond(RespondAction),
    Redirect(RedirectAction),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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
}

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

/// A cache zone (`[[caches]]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Cache {
    pub name: String,
    /// Bytes the memory tier holds.
    pub memory: u64,
    /// The largest body stored.
    pub max_object: u64,
    /// Staleness served while revalidating in the background, unless a response says.
    pub stale_while_revalidate: Duration,
    /// Staleness served when the upstream fails, unless a response says.
    pub stale_if_error: Duration,
    /// How long a request waits for another's fill of the same key.
    pub lock_timeout: Duration,
    /// The fraction of `Date - Last-Modified` a response without a lifetime stays fresh.
    pub heuristic_fraction: f64,
    pub heuristic_max: Duration,
    /// Targeted Cache-Control fields obeyed, in order (RFC 9213), lower-case.
    pub targeted_cache_control: Vec<String>,
    /// This cache's name in `Cache-Status` (RFC 9211).
    pub status_name: String,
    pub key: CacheKey,
    /// The disk tier, when the zone has one.
    pub disk: Option<CacheDisk>,
}

/// A zone's disk tier: a directory of its own, and the bytes it may hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CacheDisk {
    pub path: FileRef,
    pub size: u64,
}

pub const DEFAULT_CACHE_DISK: u64 = 1024 * 1024 * 1024;

/// What a zone's keys are made of besides scheme, host and target.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheKey {
    /// Lower-case header names.
    pub headers: Vec<String>,
    pub cookies: Vec<String>,
    pub ignore_query: Vec<String>,
    pub sort_query: bool,
}

pub const DEFAULT_CACHE_MEMORY: u64 = 64 * 1024 * 1024;
pub const DEFAULT_CACHE_MAX_OBJECT: u64 = 8 * 1024 * 1024;
pub const DEFAULT_CACHE_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

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
