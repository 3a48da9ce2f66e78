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

/// Reads exactly the PROXY header at the start of `stream`, within `limit`: the bytes
/// after it (the client's own) stay in the socket for whoever reads next.
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

/// How a v1 header starts, and its longest length (CRLF included).
const V1_PREFIX: &[u8] = b"PROXY ";
const V1_MAX: usize = 107;

/// The v2 signature; its fixed part is 16 bytes, the last two the length of the rest.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Parses a PROXY header (v1 or v2) at the start of `buf`, without consuming anything.
/// `Incomplete` means every byte of `buf` belongs to the header (v1: no CRLF yet; v2:
/// fewer bytes than its length says).
pub fn parse_header(buf: &[u8]) -> Parsed {
    // A v1 line is parsed once its end is in: ppp takes some cut lines for invalid
    // ones (one cut after the space before the destination port, say), and some
    // whole ones that lack fields for cut ones.
    let v1 = buf.starts_with(V1_PREFIX) || V1_PREFIX.starts_with(buf);
    let line_end = buf.iter().position(|&b| b == b'\r');
    if v1 && buf.len() < V1_MAX && line_end.is_none() {
        return Parsed::Incomplete;
    }
    match HeaderResult::parse(buf) {
        r if r.is_incomplete() => {
            if v1 && line_end.is_some_and(|i| i + 1 < buf.len()) {
                Parsed::Invalid("invalid PROXY v1 header: fields missing".into())
            } else if buf.len() >= MAX_HEADER || v2_declared_len(buf) > MAX_HEADER {
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

/// The whole length a v2 header announces, once its fixed 16 bytes are in `buf`.
fn v2_declared_len(buf: &[u8]) -> usize {
    match buf.get(..16) {
        Some(fixed) if fixed.starts_with(V2_SIGNATURE) => {
            16 + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]))
        }
        _ => 0,
    }
}

/// Reads the header into `buf` in rounds: wait for bytes and look at them (peek), parse
/// what has been read plus what arrived, then read exactly the arrived bytes that belong
/// to the header (all of them while it is incomplete, only up to its end once it is
/// complete). Each round takes at least one byte, and the next peek waits for new ones.
async fn read_header_inner(stream: &mut TcpStream) -> Result<Addresses, String> {
    let mut buf = vec![0u8; MAX_HEADER];
    let mut have = 0;
    loop {
        let n = stream
            .peek(&mut buf[have..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before a complete PROXY header".into());
        }
        let (take, done) = match parse_header(&buf[..have + n]) {
            Parsed::Incomplete => (n, None),
            Parsed::Complete(len, addresses) => (len.saturating_sub(have), Some(addresses)),
            Parsed::Invalid(e) => return Err(e),
        };
        // The peeked bytes are in the socket's buffer: this read returns at once.
        stream
            .read_exact(&mut buf[have..have + take])
            .await
            .map_err(|e| e.to_string())?;
        have += take;
        if let Some(addresses) = done {
            return Ok(addresses);
        }
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
    /// What a finished server-side handshake negotiated, named as IANA and HAProxy
    /// name them (`TLSv1.3`, `TLS_AES_128_GCM_SHA256`).
    pub fn from_connection(conn: &rustls::ServerConnection) -> TlsInfo {
        TlsInfo {
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            server_name: conn.server_name().map(str::to_owned),
            version: conn
                .protocol_version()
                .and_then(|v| v.as_str())
                .map(|v| v.replace('_', ".")),
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .map(|c| match c.strip_prefix("TLS13_") {
                    Some(rest) => format!("TLS_{rest}"),
                    None => c.to_owned(),
                }),
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

    #[test]
    fn every_cut_header_is_incomplete() {
        for (header, addresses) in headers() {
            for cut in 0..header.len() {
                assert_eq!(
                    parse_header(&header[..cut]),
                    Parsed::Incomplete,
                    "{:?}",
                    String::from_utf8_lossy(&header[..cut])
                );
            }
            let mut more = header.clone();
            more.extend_from_slice(REQUEST);
            assert_eq!(
                parse_header(&more),
                Parsed::Complete(header.len(), addresses)
            );
        }
        for cut in ["PROXY TCP4 192.0.2.1 198.51.100.2 5555 ", "PROXY TCP6 ::1 "] {
            assert_eq!(parse_header(cut.as_bytes()), Parsed::Incomplete, "{cut}");
        }
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 x y 1 2\r\n",
            b"\r\n\r\n\0\r\nQUIX\n",
            b"PROXY TCP4 192.0.2.1\r\nGET / HTTP/1.1\r\n",
            b"PROXY TCP4 192.0.2.1\r\n",
        ] {
            assert!(
                matches!(parse_header(bad), Parsed::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY TCP4 {}", "1".repeat(120));
        assert!(matches!(parse_header(long.as_bytes()), Parsed::Invalid(_)));
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        client.set_nodelay(true).unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, server)
    }

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    /// Headers with the addresses they carry: v1 (TCP4 and the 15-byte UNKNOWN, shorter
    /// than v2's fixed part) and v2 with TLVs.
    fn headers() -> Vec<(Vec<u8>, Addresses)> {
        let src: SocketAddr = "192.0.2.1:5555".parse().unwrap();
        let dst: SocketAddr = "198.51.100.2:443".parse().unwrap();
        let tls = TlsInfo {
            alpn: Some(b"h2".to_vec()),
            server_name: Some("example.com".into()),
            version: Some("TLSv1.3".into()),
            cipher: Some("TLS13_AES_128_GCM_SHA256".into()),
        };
        vec![
            (
                encode(ProxyProtocolVersion::V1, src, dst, None),
                Some((src, dst)),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), None),
            (
                encode(ProxyProtocolVersion::V2, src, dst, Some(&tls)),
                Some((src, dst)),
            ),
        ]
    }

    /// Sends `pieces` as separate writes (apart in time, so in separate segments) and
    /// checks that the header is read and the request after it is left intact.
    async fn check_delivery(pieces: Vec<Vec<u8>>, expected: Addresses) {
        use tokio::io::AsyncWriteExt as _;
        let (mut client, mut server) = pair().await;
        let writer = tokio::spawn(async move {
            for p in pieces {
                client.write_all(&p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            client
        });
        let got = read_header(&mut server, Duration::from_secs(5)).await;
        assert_eq!(got, Ok(expected));
        let mut rest = vec![0u8; REQUEST.len()];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, REQUEST, "the bytes after the header are the client's");
        drop(writer.await.unwrap());
        let mut more = Vec::new();
        server.read_to_end(&mut more).await.unwrap();
        assert!(more.is_empty(), "{more:?}");
    }

    #[tokio::test]
    async fn a_header_and_the_request_after_it_in_one_write() {
        for (header, addresses) in headers() {
            check_delivery(vec![[header.as_slice(), REQUEST].concat()], addresses).await;
        }
    }

    #[tokio::test]
    async fn a_header_split_across_writes() {
        for (header, addresses) in headers() {
            let len = header.len();
            // Cut before and after v2's fixed 16 bytes, inside v1's CRLF, byte by byte;
            // the request follows the header's last piece in the same write.
            let mut cuts: Vec<Vec<usize>> = vec![
                vec![1],
                vec![5, 12],
                vec![15, 16, 17],
                vec![len - 1],
                (1..len).collect(),
            ];
            for c in &mut cuts {
                c.retain(|&i| i > 0 && i < len);
                c.dedup();
            }
            for cut in cuts {
                let mut pieces = Vec::new();
                let mut from = 0;
                for &to in &cut {
                    pieces.push(header[from..to].to_vec());
                    from = to;
                }
                pieces.push([&header[from..], REQUEST].concat());
                check_delivery(pieces, addresses).await;
            }
            // The request in writes of its own after the header.
            check_delivery(vec![header.clone(), REQUEST.to_vec()], addresses).await;
        }
    }

    #[tokio::test]
    async fn bad_stalled_or_cut_headers_are_refused() {
        use tokio::io::AsyncWriteExt as _;
        let limit = Duration::from_millis(300);
        // Not a PROXY header at all.
        let (mut client, mut server) = pair().await;
        client.write_all(REQUEST).await.unwrap();
        assert!(read_header(&mut server, limit).await.is_err());
        // A v1 line with no end within 107 bytes.
        let (mut client, mut server) = pair().await;
        client
            .write_all(format!("PROXY TCP4 {}", "1".repeat(120)).as_bytes())
            .await
            .unwrap();
        assert!(read_header(&mut server, limit).await.is_err());
        // A v2 header announcing more than is accepted: refused from its first 16 bytes.
        let (mut client, mut server) = pair().await;
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        client.write_all(&big).await.unwrap();
        assert_eq!(
            read_header(&mut server, limit).await,
            Err("PROXY header too long".into())
        );
        // Half a header, then nothing: the time limit ends it.
        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4 192.0.2.1 ").await.unwrap();
        let started = std::time::Instant::now();
        let e = read_header(&mut server, limit).await.unwrap_err();
        assert!(e.contains("within"), "{e}");
        assert!(started.elapsed() >= limit);
        // Half a header, then the connection closes.
        client.shutdown().await.unwrap();
        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4 192.0.2.1 ").await.unwrap();
        drop(client);
        let e = read_header(&mut server, limit).await.unwrap_err();
        assert!(e.contains("closed"), "{e}");
    }
}
