//! STUN and TURN listeners (`protocol = "stun"` or `"turn"`): the transports they serve
//! and, for TURN, the relay's settings (`[listeners.turn]`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::IpNet;

/// How clients reach a STUN or TURN listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnTransport {
    Udp,
    Tcp,
    /// TCP with TLS (`turns:`), on the listener's `[listeners.tls]` certificates.
    Tls,
}

impl TurnTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
            TurnTransport::Tls => "tls",
        }
    }
}

/// A STUN or TURN listener's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StunListener {
    /// On every bind address: UDP, and TCP or TLS (one TCP socket per address).
    pub transports: Vec<TurnTransport>,
    /// `None` for `protocol = "stun"`: Binding requests only.
    pub relay: Option<TurnRelay>,
}

impl StunListener {
    pub fn serves(&self, t: TurnTransport) -> bool {
        self.transports.contains(&t)
    }

    /// Whether it takes a TCP socket (TCP or TLS) on its addresses.
    pub fn uses_tcp(&self) -> bool {
        self.serves(TurnTransport::Tcp) || self.serves(TurnTransport::Tls)
    }
}

/// A TURN relay's settings (`[listeners.turn]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TurnRelay {
    /// The realm of the long-term credentials.
    pub realm: String,
    /// The address relayed sockets bind to; `None`: the address the client reached.
    pub relay_ip: Option<IpAddr>,
    /// The address told to clients instead (a 1:1 NAT in front).
    pub external_ip: Option<IpAddr>,
    /// Relayed sockets take ports in this range (inclusive).
    pub relay_ports: (u16, u16),
    /// coturn's `static-auth-secret`: usernames `EXPIRY[:NAME]`, passwords
    /// base64(HMAC-SHA1(secret, username)).
    pub secret: Option<String>,
    /// Where `secret` was read from, when it was.
    pub secret_file: Option<PathBuf>,
    /// Static users: name and password, read from `users_file`.
    pub users: Vec<(String, String)>,
    pub users_file: Option<PathBuf>,
    /// Peers allowed although their addresses are special-purpose (loopback, private,
    /// link-local, ...), which are refused by default.
    pub allowed_peers: Vec<IpNet>,
    /// Peers refused although public.
    pub denied_peers: Vec<IpNet>,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    /// A nonce older than this is stale (438): the client retries with a new one.
    pub nonce_lifetime: Duration,
    /// Allocations on this listener at once, and per user.
    pub max_allocations: u64,
    pub user_quota: u64,
    /// Bytes per second each allocation may relay each way; `None`: unlimited.
    pub bandwidth: Option<u64>,
    /// Requests per second one client IP may make that fail authentication; beyond
    /// them its requests are dropped unanswered.
    pub unauthenticated_rate: u32,
}
