//! An HTTP/3 client on quinn and h3 for tests: one QUIC connection, many requests
//! (concurrent ones too), request bodies sent in pieces with trailers, answers read
//! whole with their trailers, and WebSockets over extended CONNECT (RFC 9220).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::tls::TestCa;
use crate::ws::WsClient;

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
        let from = "127.0.0.1:0".parse().expect("address");
        Self::connect_quic_from(config, from, addr, sni, zero_rtt).await
    }

    /// As [`H3Client::connect_quic`], from the local address `from` (a loopback address
    /// of the test's choosing: distinct clients for a balancer hashing on the source).
    pub async fn connect_quic_from(
        config: &quinn::ClientConfig,
        from: SocketAddr,
        addr: SocketAddr,
        sni: &str,
        zero_rtt: bool,
    ) -> std::io::Result<(H3Client, bool)> {
        let mut endpoint = quinn::Endpoint::client(from)?;
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

    /// Moves the client to a new UDP socket (another source port, the same address), as a client whose
    /// address changes does: QUIC's connection migration.
    pub fn rebind(&self) -> std::io::Result<SocketAddr> {
        let ip = self.endpoint.local_addr()?.ip();
        let socket = std::net::UdpSocket::bind((ip, 0))?;
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
        let (resp, stream) = self.exchange(req, body, trailers, true).await?;
        read_answer(resp, stream).await
    }

    /// Sends `req` with `body` without ending the request stream (a client whose body
    /// is still to come) and reads the answer whole.
    pub async fn send_unended(
        &self,
        req: http::Request<()>,
        body: &[Bytes],
    ) -> std::io::Result<H3Answer> {
        let (resp, stream) = self.exchange(req, body, None, false).await?;
        read_answer(resp, stream).await
    }

    /// Sends `req` with `body` and reads the answer's body without keeping it: its
    /// status and length.
    pub async fn send_counting(
        &self,
        req: http::Request<()>,
        body: &[Bytes],
    ) -> std::io::Result<(StatusCode, u64)> {
        let (resp, mut stream) = self.exchange(req, body, None, true).await?;
        let mut n = 0u64;
        while let Some(mut chunk) = stream.recv_data().await.map_err(std::io::Error::other)? {
            n += chunk.remaining() as u64;
            chunk.advance(chunk.remaining());
        }
        Ok((resp.status(), n))
    }

    /// Sends a request (head, body pieces, trailers; its end with `end`) and reads its
    /// answer's head; the stream, for the answer's body.
    async fn exchange(
        &self,
        req: http::Request<()>,
        body: &[Bytes],
        trailers: Option<HeaderMap>,
        end: bool,
    ) -> std::io::Result<(
        http::Response<()>,
        h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    )> {
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
        // A server that answers without the rest of the request may decline it
        // (STOP_SENDING); the answer is still to be read (RFC 9114 §4.1.1).
        if end {
            let _ = stream.finish().await;
        }
        let resp = stream
            .recv_response()
            .await
            .map_err(std::io::Error::other)?;
        Ok((resp, stream))
    }

    /// A GET for `path` on `authority`.
    pub async fn get(&self, authority: &str, path: &str) -> std::io::Result<H3Answer> {
        let req = http::Request::get(format!("https://{authority}{path}"))
            .body(())
            .expect("request");
        self.send(req, &[], None).await
    }

    /// A WebSocket over HTTP/3 (RFC 9220): an extended CONNECT (`:protocol` =
    /// `websocket`) for `path` on `authority`, on a new stream of this connection. On a
    /// 200 the WebSocket runs in the stream's DATA frames (bridged here to an in-memory
    /// pipe for tungstenite); `Err` carries any other status.
    pub async fn websocket(
        &self,
        authority: &str,
        path: &str,
    ) -> std::io::Result<Result<WsClient<DuplexStream>, StatusCode>> {
        let mut req = http::Request::connect(format!("https://{authority}{path}"))
            .header("sec-websocket-version", "13")
            .body(())
            .expect("request");
        req.extensions_mut().insert(h3::ext::Protocol::WEBSOCKET);
        let mut send = self.send.clone();
        let mut stream = send
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let resp = stream
            .recv_response()
            .await
            .map_err(std::io::Error::other)?;
        if resp.status() != StatusCode::OK {
            return Ok(Err(resp.status()));
        }
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (mut from_pipe, mut to_pipe) = tokio::io::split(theirs);
        let (mut up, mut down) = stream.split();
        tokio::spawn(async move {
            while let Ok(Some(mut data)) = down.recv_data().await {
                let data = data.copy_to_bytes(data.remaining());
                if to_pipe.write_all(&data).await.is_err() {
                    return;
                }
            }
            let _ = to_pipe.shutdown().await;
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = from_pipe.read(&mut buf).await {
                if up
                    .send_data(Bytes::copy_from_slice(&buf[..n]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = up.finish().await;
        });
        Ok(Ok(WsClient::from_raw_socket(ours, Role::Client, None).await))
    }
}

/// An answer's body and trailers read whole from its stream.
async fn read_answer(
    resp: http::Response<()>,
    mut stream: h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
) -> std::io::Result<H3Answer> {
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

/// An HTTP/3 origin (quinn + h3) on 127.0.0.1:0 (UDP) answering like the echo origin:
/// a JSON description of the request (method, URI, version, headers, body length,
/// trailers), with `grpc-status: 0` trailers when asked for (`te: trailers`); at
/// `/endless`, followed by a body that never ends.
pub struct H3Origin {
    pub addr: SocketAddr,
    /// QUIC connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    endpoint: quinn::Endpoint,
}

impl Drop for H3Origin {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"");
    }
}

impl H3Origin {
    pub async fn echo(cert: &crate::tls::Pem) -> H3Origin {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(cert.chain(), cert.private_key())
            .expect("certificate");
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("QUIC config");
        let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let endpoint =
            quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("address")).expect("bind");
        let addr = endpoint.local_addr().expect("address");
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (e, count) = (endpoint.clone(), Arc::clone(&connections));
        tokio::spawn(async move {
            while let Some(incoming) = e.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    let Ok(mut h3) =
                        h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn))
                            .await
                    else {
                        return;
                    };
                    while let Ok(Some(resolver)) = h3.accept().await {
                        tokio::spawn(async move {
                            let Ok((req, mut stream)) = resolver.resolve_request().await else {
                                return;
                            };
                            let mut len = 0usize;
                            while let Ok(Some(mut chunk)) = stream.recv_data().await {
                                len += chunk.remaining();
                                chunk.advance(chunk.remaining());
                            }
                            let trailers = stream.recv_trailers().await.ok().flatten().map(|t| {
                                t.iter()
                                    .map(|(k, v)| format!("{}={}", k, v.to_str().unwrap_or("")))
                                    .collect::<Vec<_>>()
                            });
                            let mut headers = serde_json::Map::new();
                            for (k, v) in req.headers() {
                                let e = headers
                                    .entry(k.as_str().to_owned())
                                    .or_insert_with(|| serde_json::Value::Array(vec![]));
                                if let serde_json::Value::Array(a) = e {
                                    a.push(serde_json::Value::String(
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    ));
                                }
                            }
                            let j = serde_json::json!({
                                "method": req.method().as_str(),
                                "uri": req.uri().to_string(),
                                "version": format!("{:?}", req.version()),
                                "headers": headers,
                                "body_len": len,
                                "trailers": trailers,
                            });
                            let resp = http::Response::builder()
                                .header("content-type", "application/json")
                                .body(())
                                .expect("response");
                            if stream.send_response(resp).await.is_err() {
                                return;
                            }
                            let _ = stream.send_data(Bytes::from(j.to_string())).await;
                            // `/endless`: 16 KiB pieces after the description, until the
                            // reader gives up.
                            while req.uri().path() == "/endless" {
                                let piece = Bytes::from(vec![b'e'; 16 * 1024]);
                                if stream.send_data(piece).await.is_err() {
                                    return;
                                }
                            }
                            if req.headers().get("te").is_some() {
                                let mut t = HeaderMap::new();
                                t.insert("grpc-status", http::HeaderValue::from_static("0"));
                                let _ = stream.send_trailers(t).await;
                            }
                            let _ = stream.finish().await;
                        });
                    }
                });
            }
        });
        H3Origin {
            addr,
            connections,
            endpoint,
        }
    }
}
