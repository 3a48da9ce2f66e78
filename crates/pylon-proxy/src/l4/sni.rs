//! TLS passthrough: reads the client's ClientHello without terminating TLS (rustls's
//! `Acceptor` parses it), so its server name and ALPN offer can choose a cluster; the
//! bytes read are then replayed to the upstream, which completes the handshake.

use std::time::Duration;

use pylon_config::model::SniRoute;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The largest first flight read while looking for a complete ClientHello.
const MAX_FIRST_FLIGHT: usize = 64 * 1024;

/// What the ClientHello offered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientHelloInfo {
    pub server_name: Option<String>,
    pub alpn: Vec<Vec<u8>>,
}

/// Reads from `stream` until a whole ClientHello has arrived (within `limit`); returns
/// what it offered and every byte read. Anything that is not a TLS ClientHello is an
/// error.
pub async fn read_client_hello(
    stream: &mut TcpStream,
    limit: Duration,
) -> Result<(ClientHelloInfo, Vec<u8>), String> {
    tokio::time::timeout(limit, read_inner(stream))
        .await
        .map_err(|_| format!("no complete ClientHello within {limit:?}"))?
}

async fn read_inner(stream: &mut TcpStream) -> Result<(ClientHelloInfo, Vec<u8>), String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut read = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before a complete ClientHello".into());
        }
        // The first byte of a TLS record carrying a handshake is 0x16.
        if read.is_empty() && chunk[0] != 0x16 {
            return Err("not TLS: the first bytes are not a handshake record".into());
        }
        read.extend_from_slice(&chunk[..n]);
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            acceptor
                .read_tls(&mut fresh)
                .map_err(|e| format!("malformed TLS record: {e}"))?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let info = ClientHelloInfo {
                    server_name: hello.server_name().map(|s| s.to_ascii_lowercase()),
                    alpn: hello
                        .alpn()
                        .map(|a| a.map(<[u8]>::to_vec).collect())
                        .unwrap_or_default(),
                };
                return Ok((info, read));
            }
            Ok(None) if read.len() < MAX_FIRST_FLIGHT => {}
            Ok(None) => return Err("ClientHello too large".into()),
            Err((e, _)) => return Err(format!("malformed ClientHello: {e}")),
        }
    }
}

/// The first route whose server names and ALPN the ClientHello satisfies.
pub fn choose<'a>(routes: &'a [SniRoute], hello: &ClientHelloInfo) -> Option<&'a SniRoute> {
    routes.iter().find(|r| {
        let name_ok = r.server_names.is_empty()
            || hello
                .server_name
                .as_deref()
                .is_some_and(|n| r.server_names.iter().any(|m| m.matches(n)));
        let alpn_ok = r.alpn.is_empty()
            || r.alpn
                .iter()
                .any(|want| hello.alpn.iter().any(|o| o == want.as_bytes()));
        name_ok && alpn_ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pylon_config::model::HostMatch;

    #[test]
    fn routes_match_names_wildcards_and_alpn_in_order() {
        let route = |names: &[HostMatch], alpn: &[&str], cluster: &str| SniRoute {
            server_names: names.to_vec(),
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
            cluster: cluster.into(),
        };
        let routes = vec![
            route(&[HostMatch::Exact("a.example".into())], &[], "a"),
            route(
                &[HostMatch::Suffix(".example.org".into())],
                &["h2"],
                "org-h2",
            ),
            route(&[HostMatch::Suffix(".example.org".into())], &[], "org"),
        ];
        let hello = |n: Option<&str>, alpn: &[&str]| ClientHelloInfo {
            server_name: n.map(str::to_owned),
            alpn: alpn.iter().map(|a| a.as_bytes().to_vec()).collect(),
        };
        let pick = |h: ClientHelloInfo| choose(&routes, &h).map(|r| r.cluster.clone());
        assert_eq!(pick(hello(Some("a.example"), &[])), Some("a".into()));
        assert_eq!(
            pick(hello(Some("x.example.org"), &["h2", "http/1.1"])),
            Some("org-h2".into())
        );
        assert_eq!(
            pick(hello(Some("x.example.org"), &["http/1.1"])),
            Some("org".into())
        );
        assert_eq!(
            pick(hello(Some("example.org"), &[])),
            None,
            "a wildcard needs a label"
        );
        assert_eq!(pick(hello(None, &[])), None);
    }
}
