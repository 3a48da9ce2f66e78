//! Layer 4: TCP listeners (plain relay, TLS passthrough by SNI, TLS termination), UDP
//! listeners (a session per client address), the byte relay (splice on Linux) and the
//! PROXY protocol, which HTTP listeners use too. Endpoints come from the same clusters,
//! balancers and health state as L7 routes.

pub mod proxy_protocol;
pub mod relay;
pub mod sni;
pub mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::time::Duration;

use pylon_config::model::ProxyProtocolIn;
use tokio::net::TcpStream;

/// Refuses a source outside the trusted networks, else reads its PROXY header. The
/// addresses it carries replace the connection's (`None`: a health check or other
/// `LOCAL` connection, which keeps its own).
pub async fn accept_proxy_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    settings: &ProxyProtocolIn,
    limit: Duration,
) -> Result<proxy_protocol::Addresses, String> {
    if !settings.trusted.iter().any(|n| n.contains(peer.ip())) {
        return Err(format!(
            "{} is not among the trusted PROXY protocol sources",
            peer.ip()
        ));
    }
    proxy_protocol::read_header(stream, limit).await
}
