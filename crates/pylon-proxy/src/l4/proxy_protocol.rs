//! PROXY protocol v1 and v2 (HAProxy's specification): reading the header a trusted
//! load balancer puts in front of a connection's bytes (parsed with the `ppp` crate),
//! and writing one to upstreams, with v2 TLVs for ALPN, authority and TLS when Pylon
//! terminated TLS.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::v2::{Builder, Command, Protocol, Type, Version};
use ppp::{HeaderResult, PartialResult, v1, v2};
use pylon_config::model::ProxyProtocolVersion;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest header accepted: v1 is at most 107 bytes; v2 at most 16 + 65535, but no
/// sender needs more than a few hundred bytes of TLVs.
const MAX_HEADER: usize = 4096;

/// The addresses a PROXY header carries; `None` for `LOCAL` (v2) or `UNKNOWN` (v1)
/// connections, which keep their own addresses.
pub type Addresses = Option<(SocketAddr, SocketAddr)>;

/// Reads exactly the PROXY header at the start of `stream`, within `limit`. Peeks until
/// the header is complete, so no byte after it is consumed.
pub async fn read_header(stream: &mut TcpStream, limit: Duration) -> Result<Addresses, String> {
    tokio::time::timeout(limit, read_header_inner(stream))
        .await
        .map_err(|_| format!("no complete PROXY header within {limit:?}"))?
}

/// What the bytes at the start of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole header yet.
    Incomplete,
    /// A header of this many bytes, with these addresses.
    Complete(usize, Addresses),
    Invalid(String),
}

/// Parses a PROXY header (v1 or v2) at the start of `buf`, without consuming anything.
pub fn parse_header(buf: &[u8]) -> Parsed {
    match HeaderResult::parse(buf) {
        r if r.is_incomplete() => {
            if buf.len() >= MAX_HEADER {
                Parsed::Invalid("PROXY header too long".into())
            } else {
                Parsed::Incomplete
            }
        }
        HeaderResult::V1(Ok(h)) => Parsed::Complete(h.header.len(), v1_addresses(&h.addresses)),
        HeaderResult::V2(Ok(h)) => Parsed::Complete(h.len(), v2_addresses(&h)),
        HeaderResult::V1(Err(e)) => Parsed::Invalid(format!("invalid PROXY v1 header: {e}")),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(format!("invalid PROXY v2 header: {e}")),
    }
}

async fn read_header_inner(stream: &mut TcpStream) -> Result<Addresses, String> {
    let mut buf = vec![0u8; MAX_HEADER];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before a PROXY header".into());
        }
        let (len, addresses) = match parse_header(&buf[..n]) {
            Parsed::Incomplete => {
                // Peek returns at once while data is buffered: wait a little for more.
                if n == seen {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                seen = n;
                continue;
            }
            Parsed::Complete(len, addresses) => (len, addresses),
            Parsed::Invalid(e) => return Err(e),
        };
        let mut header = vec![0u8; len];
        stream
            .read_exact(&mut header)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(addresses);
    }
}

fn v1_addresses(a: &v1::Addresses) -> Addresses {
    match a {
        v1::Addresses::Tcp4(a) => Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )),
        v1::Addresses::Tcp6(a) => Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )),
        v1::Addresses::Unknown => None,
    }
}

fn v2_addresses(h: &v2::Header<'_>) -> Addresses {
    if h.command == Command::Local {
        return None;
    }
    match h.addresses {
        v2::Addresses::IPv4(a) => Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )),
        v2::Addresses::IPv6(a) => Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )),
        _ => None,
    }
}

/// What Pylon learnt terminating the client's TLS, for v2 TLVs.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub alpn: Option<Vec<u8>>,
    pub server_name: Option<String>,
    pub version: Option<String>,
    pub cipher: Option<String>,
}

impl TlsInfo {
    /// What a finished server-side handshake negotiated.
    pub fn from_connection(conn: &rustls::ServerConnection) -> TlsInfo {
        TlsInfo {
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            server_name: conn.server_name().map(str::to_owned),
            version: conn
                .protocol_version()
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .map(str::to_owned),
        }
    }
}

/// Both addresses in one family (an IPv4 address is mapped into IPv6 when they differ).
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if source.is_ipv4() == destination.is_ipv4() {
        (source, destination)
    } else {
        (v6(source), v6(destination))
    }
}

/// The header to send first on an upstream connection made for `source` (the client)
/// arriving at `destination` (Pylon's listening address).
pub fn encode(
    version: ProxyProtocolVersion,
    source: SocketAddr,
    destination: SocketAddr,
    tls: Option<&TlsInfo>,
) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        ProxyProtocolVersion::V1 => {
            let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            )
            .into_bytes()
        }
        ProxyProtocolVersion::V2 => {
            let mut b = Builder::with_addresses(
                Version::Two | Command::Proxy,
                Protocol::Stream,
                (source, destination),
            );
            if let Some(t) = tls {
                if let Some(alpn) = &t.alpn {
                    b = b
                        .write_tlv(Type::ALPN, alpn)
                        .unwrap_or_else(|_| unreachable_builder());
                }
                if let Some(name) = &t.server_name {
                    b = b
                        .write_tlv(Type::Authority, name.as_bytes())
                        .unwrap_or_else(|_| unreachable_builder());
                }
                // PP2_TYPE_SSL: client flags (PP2_CLIENT_SSL), verify (non-zero: no
                // verified client certificate), then sub-TLVs.
                let mut ssl = vec![0x01, 0, 0, 0, 1];
                for (kind, value) in [(Type::SSLVersion, &t.version), (Type::SSLCipher, &t.cipher)]
                {
                    if let Some(v) = value {
                        ssl.push(kind as u8);
                        ssl.extend_from_slice(&(v.len() as u16).to_be_bytes());
                        ssl.extend_from_slice(v.as_bytes());
                    }
                }
                b = b
                    .write_tlv(Type::SSL, &ssl)
                    .unwrap_or_else(|_| unreachable_builder());
            }
            b.build().unwrap_or_default()
        }
    }
}

/// Writing into the builder's in-memory buffer cannot fail; a fresh builder stands in.
fn unreachable_builder() -> Builder {
    Builder::new(Version::Two | Command::Local, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_headers_parse_back() {
        let src: SocketAddr = "192.0.2.1:5555".parse().unwrap();
        let dst: SocketAddr = "198.51.100.2:443".parse().unwrap();
        let v1 = encode(ProxyProtocolVersion::V1, src, dst, None);
        assert_eq!(v1, b"PROXY TCP4 192.0.2.1 198.51.100.2 5555 443\r\n");
        let tls = TlsInfo {
            alpn: Some(b"h2".to_vec()),
            server_name: Some("example.com".into()),
            version: Some("TLSv1.3".into()),
            cipher: None,
        };
        let v2 = encode(ProxyProtocolVersion::V2, src, dst, Some(&tls));
        match HeaderResult::parse(&v2) {
            HeaderResult::V2(Ok(h)) => {
                assert_eq!(v2_addresses(&h), Some((src, dst)));
                let tlvs: Vec<_> = h.tlvs().filter_map(Result::ok).collect();
                assert!(
                    tlvs.iter()
                        .any(|t| t.kind == Type::ALPN as u8 && t.value.as_ref() == b"h2")
                );
                assert!(
                    tlvs.iter()
                        .any(|t| t.kind == Type::Authority as u8
                            && t.value.as_ref() == b"example.com")
                );
            }
            other => panic!("{other:?}"),
        }
        let mixed = encode(
            ProxyProtocolVersion::V1,
            "[2001:db8::1]:1".parse().unwrap(),
            dst,
            None,
        );
        assert!(
            String::from_utf8(mixed)
                .unwrap()
                .starts_with("PROXY TCP6 2001:db8::1 ::ffff:198.51.100.2 ")
        );
    }
}
