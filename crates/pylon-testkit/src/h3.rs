//! An HTTP/3 client on quinn and h3 for tests: one QUIC connection, many requests
//! (concurrent ones too), request bodies sent in pieces with trailers, and answers
//! read whole with their trailers.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, StatusCode};

use crate::tls::TestCa;

/// An answer over HTTP/3.
#[derive(Debug)]
pub struct H3Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl H3Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/3 connection to a server.
pub struct H3Client {
    pub connection: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    endpoint: quinn::Endpoint,
}

/// A QUIC client config trusting `ca`, offering ALPN `h3`.
pub fn h3_client_config(ca: &TestCa) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h3".to_vec()];
    c
}

impl H3Client {
    /// Connects to `addr` (UDP) sending `sni`, trusting `ca`.
    pub async fn connect(ca: &TestCa, addr: SocketAddr, sni: &str) -> std::io::Result<H3Client> {
        Self::connect_with(h3_client_config(ca), addr, sni).await
    }

    pub async fn connect_with(
        tls: rustls::ClientConfig,
        addr: SocketAddr,
        sni: &str,
    ) -> std::io::Result<H3Client> {
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(std::io::Error::other)?;
        let config = quinn::ClientConfig::new(Arc::new(quic));
        Ok(Self::connect_quic(&config, addr, sni, false).await?.0)
    }

    /// Connects with a QUIC client config (reuse one to resume sessions); with
    /// `zero_rtt`, a resumed connection is used before its handshake completes, so its
    /// first requests go in early data. Also says whether that happened.
    pub async fn connect_quic(
        config: &quinn::ClientConfig,
        addr: SocketAddr,
        sni: &str,
        zero_rtt: bool,
    ) -> std::io::Result<(H3Client, bool)> {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("address"))?;
        endpoint.set_default_client_config(config.clone());
        let connecting = endpoint.connect(addr, sni).map_err(std::io::Error::other)?;
        let (connection, early) = if zero_rtt {
            match connecting.into_0rtt() {
                Ok((c, _accepted)) => (c, true),
                Err(connecting) => (connecting.await.map_err(std::io::Error::other)?, false),
            }
        } else {
            (connecting.await.map_err(std::io::Error::other)?, false)
        };
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        let client = H3Client {
            connection,
            send,
            endpoint,
        };
        Ok((client, early))
    }

    /// Moves the client to a new UDP socket (another source port), as a client whose
    /// address changes does: QUIC's connection migration.
    pub fn rebind(&self) -> std::io::Result<SocketAddr> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let addr = socket.local_addr()?;
        self.endpoint.rebind(socket)?;
        Ok(addr)
    }

    /// Sends `req` (no body) and cancels it at once: STOP_SENDING for the answer, as a
    /// client that gave up on it does.
    pub async fn send_and_cancel(&self, req: http::Request<()>) -> std::io::Result<()> {
        let mut send = self.send.clone();
        let mut stream = send
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        stream.finish().await.map_err(std::io::Error::other)?;
        stream.stop_sending(h3::error::Code::H3_REQUEST_CANCELLED);
        Ok(())
    }

    /// Sends `req` with `body` (in these pieces, then `trailers` if any) and reads the
    /// answer whole.
    pub async fn send(
        &self,
        req: http::Request<()>,
        body: &[Bytes],
        trailers: Option<HeaderMap>,
    ) -> std::io::Result<H3Answer> {
        let mut send = self.send.clone();
        let mut stream = send
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        for piece in body {
            stream
                .send_data(piece.clone())
                .await
                .map_err(std::io::Error::other)?;
        }
        if let Some(t) = trailers {
            stream
                .send_trailers(t)
                .await
                .map_err(std::io::Error::other)?;
        }
        stream.finish().await.map_err(std::io::Error::other)?;
        let resp = stream
            .recv_response()
            .await
            .map_err(std::io::Error::other)?;
        let mut data = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(std::io::Error::other)? {
            data.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        let trailers = stream
            .recv_trailers()
            .await
            .map_err(std::io::Error::other)?;
        Ok(H3Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: data.freeze(),
            trailers,
        })
    }

    /// Sends `req` with `body` and reads the answer's body without keeping it: its
    /// status and length.
    pub async fn send_counting(
        &self,
        req: http::Request<()>,
        body: &[Bytes],
    ) -> std::io::Result<(StatusCode, u64)> {
        let mut send = self.send.clone();
        let mut stream = send
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        for piece in body {
            stream
                .send_data(piece.clone())
                .await
                .map_err(std::io::Error::other)?;
        }
        stream.finish().await.map_err(std::io::Error::other)?;
        let resp = stream
            .recv_response()
            .await
            .map_err(std::io::Error::other)?;
        let mut n = 0u64;
        while let Some(mut chunk) = stream.recv_data().await.map_err(std::io::Error::other)? {
            n += chunk.remaining() as u64;
            chunk.advance(chunk.remaining());
        }
        Ok((resp.status(), n))
    }

    /// A GET for `path` on `authority`.
    pub async fn get(&self, authority: &str, path: &str) -> std::io::Result<H3Answer> {
        let req = http::Request::get(format!("https://{authority}{path}"))
            .body(())
            .expect("request");
        self.send(req, &[], None).await
    }
}
