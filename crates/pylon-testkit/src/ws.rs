//! WebSocket origins and clients (tokio-tungstenite): an echo origin that also reports
//! what it saw, an origin that dies mid-tunnel, and clients over HTTP/1.1 Upgrade and
//! over HTTP/2 extended CONNECT (RFC 8441).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{SinkExt, StreamExt};
use http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

pub use tokio_tungstenite::tungstenite;

/// How a WebSocket origin behaves.
#[derive(Clone, Copy)]
pub enum WsBehaviour {
    /// Echoes every message (text, binary, and pings are answered), closes when asked.
    Echo,
    /// Echoes the first message, then drops the TCP connection without a close frame.
    DieAfterFirst,
}

/// A WebSocket origin on 127.0.0.1:0 (HTTP/1.1 Upgrade).
pub struct WsOrigin {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    /// The last close frame a client sent: code and reason.
    pub last_close: Arc<std::sync::Mutex<Option<(u16, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsOrigin {
    pub async fn start(behaviour: WsBehaviour) -> WsOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&connections);
        let last_close = Arc::new(std::sync::Mutex::new(None));
        let lc = Arc::clone(&last_close);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let c = Arc::clone(&c);
                let lc = Arc::clone(&lc);
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    serve(ws, behaviour, &c, &lc).await;
                });
            }
        });
        WsOrigin {
            addr,
            connections,
            last_close,
            task,
        }
    }
}

type LastClose = Arc<std::sync::Mutex<Option<(u16, String)>>>;

/// One WebSocket connection of an origin.
async fn serve<S>(
    mut ws: WebSocketStream<S>,
    behaviour: WsBehaviour,
    c: &AtomicUsize,
    lc: &LastClose,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    c.fetch_add(1, Ordering::SeqCst);
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            // "close NNNN": the origin closes with that code.
            Message::Text(t) if t.starts_with("close ") => {
                let code: u16 = t[6..].trim().parse().unwrap_or(1000);
                let _ = ws
                    .close(Some(CloseFrame {
                        code: code.into(),
                        reason: "origin says bye".into(),
                    }))
                    .await;
                // Read on until the client's reply completes the close.
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
            Message::Text(_) | Message::Binary(_) => {
                if ws.send(msg).await.is_err() {
                    return;
                }
                if matches!(behaviour, WsBehaviour::DieAfterFirst) {
                    // Gone without a close frame.
                    return;
                }
            }
            Message::Close(frame) => {
                *lc.lock().unwrap() = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                // tungstenite queued the answering Close: it goes out with the flush.
                let _ = ws.flush().await;
                return;
            }
            _ => {}
        }
    }
}

impl WsOrigin {
    /// A WebSocket origin speaking HTTP/2 with extended CONNECT (RFC 8441), cleartext.
    pub async fn start_h2(behaviour: WsBehaviour) -> WsOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let last_close: LastClose = Arc::new(std::sync::Mutex::new(None));
        let (c, lc) = (Arc::clone(&connections), Arc::clone(&last_close));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (c, lc) = (Arc::clone(&c), Arc::clone(&lc));
                let svc =
                    hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                        let (c, lc) = (Arc::clone(&c), Arc::clone(&lc));
                        async move {
                            let is_ws = req.method() == http::Method::CONNECT
                                && req
                                    .extensions()
                                    .get::<hyper::ext::Protocol>()
                                    .is_some_and(|p| p.as_str() == "websocket");
                            if !is_ws {
                                let mut r = http::Response::new(http_body_util::Empty::<
                                    bytes::Bytes,
                                >::new(
                                ));
                                *r.status_mut() = http::StatusCode::BAD_REQUEST;
                                return Ok::<_, std::convert::Infallible>(r);
                            }
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(up) = on.await {
                                    let ws = WebSocketStream::from_raw_socket(
                                        TokioIo::new(up),
                                        Role::Server,
                                        None,
                                    )
                                    .await;
                                    serve(ws, behaviour, &c, &lc).await;
                                }
                            });
                            Ok(http::Response::new(http_body_util::Empty::new()))
                        }
                    });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .enable_connect_protocol()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        WsOrigin {
            addr,
            connections,
            last_close,
            task,
        }
    }
}

pub type WsClient<S> = WebSocketStream<S>;

/// A WebSocket client over HTTP/1.1 Upgrade to `addr` at `path`.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
) -> Result<WsClient<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), stream).await?;
    Ok(ws)
}

/// A WebSocket client over HTTP/2 extended CONNECT (cleartext, prior knowledge).
/// `Err` carries the status when the proxy or the origin refused.
pub async fn ws_connect_h2(
    addr: SocketAddr,
    path: &str,
) -> Result<WsClient<TokioIo<hyper::upgrade::Upgraded>>, http::StatusCode> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::connect(format!("http://{addr}{path}"))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    tx.ready().await.unwrap();
    let resp = tx.send_request(req).await.unwrap();
    if resp.status() != http::StatusCode::OK {
        return Err(resp.status());
    }
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await)
}
