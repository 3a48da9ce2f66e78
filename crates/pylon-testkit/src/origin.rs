//! Origins for tests: HTTP/1.1 + h2c servers with a handler, counting connections and
//! requests, and raw TCP origins that misbehave on purpose.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

pub type OriginBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<OriginBody>> + Send>>
        + Send
        + Sync,
>;

/// Wraps bytes as an origin body.
pub fn full(b: impl Into<Bytes>) -> OriginBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// An HTTP origin on 127.0.0.1:0 serving HTTP/1.1 and h2c.
pub struct Origin {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    pub async fn start<F, Fut>(handler: F) -> Origin
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<OriginBody>> + Send + 'static,
    {
        Self::start_inner(Arc::new(move |r| Box::pin(handler(r))), None, "127.0.0.1:0").await
    }

    /// An HTTPS origin (HTTP/1.1 and h2 by ALPN) answering like [`Origin::echo`].
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Origin {
        let handler: Handler = Arc::new(|r| Box::pin(echo_response(r)));
        Self::start_inner(
            handler,
            Some(tokio_rustls::TlsAcceptor::from(config)),
            "127.0.0.1:0",
        )
        .await
    }

    async fn start_inner(
        handler: Handler,
        tls: Option<tokio_rustls::TlsAcceptor>,
        bind: impl tokio::net::ToSocketAddrs,
    ) -> Origin {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let handler = Arc::clone(&handler);
                let r = Arc::clone(&r);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        let h = Arc::clone(&handler);
                        async move { Ok::<_, Infallible>(h(req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Origin {
            addr,
            connections,
            requests,
            task,
        }
    }

    /// Answers 200 with its name as the body.
    pub async fn named(name: &'static str) -> Origin {
        Origin::start(move |_req| async move {
            Response::builder()
                .header("x-origin", name)
                .body(full(name))
                .unwrap()
        })
        .await
    }

    /// Like [`Origin::named`], bound to `addr` (another loopback address, to stand
    /// behind a DNS name on the same port as another origin).
    pub async fn named_at(name: &'static str, addr: SocketAddr) -> Origin {
        let handler: Handler = Arc::new(move |_req| {
            Box::pin(async move {
                Response::builder()
                    .header("x-origin", name)
                    .body(full(name))
                    .unwrap()
            })
        });
        Self::start_inner(handler, None, addr).await
    }

    /// Answers with a JSON description of the request it received: method, URI,
    /// version, headers (name → list of values) and the body length it read.
    pub async fn echo() -> Origin {
        Origin::start(echo_response).await
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A TCP origin that runs `f` on every accepted connection (to misbehave on purpose).
pub struct RawOrigin {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawOrigin {
    pub async fn start<F, Fut>(f: F) -> RawOrigin
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&connections);
        let f = Arc::new(f);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(f(stream));
            }
        });
        RawOrigin {
            addr,
            connections,
            task,
        }
    }
}

/// An address where nothing listens (bound once, then released).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The echo handler: a JSON description of the request (method, URI, version, headers,
/// body length, trailers). Its response carries hop-by-hop headers a proxy must drop.
pub async fn echo_response(req: Request<Incoming>) -> Response<OriginBody> {
    let (parts, body) = req.into_parts();
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        let e = headers
            .entry(k.as_str().to_owned())
            .or_insert_with(|| serde_json::Value::Array(vec![]));
        if let serde_json::Value::Array(a) = e {
            a.push(serde_json::Value::String(
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
    }
    let (len, trailers) = match body.collect().await {
        Ok(c) => {
            let t = c.trailers().map(|t| {
                t.iter()
                    .map(|(k, v)| format!("{}={}", k, v.to_str().unwrap_or("")))
                    .collect::<Vec<_>>()
            });
            (c.to_bytes().len(), t)
        }
        Err(_) => (usize::MAX, None),
    };
    let j = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": len,
        "trailers": trailers,
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("connection", "x-hop")
        .header("x-hop", "must-not-pass")
        .header("keep-alive", "timeout=5")
        .body(full(j.to_string()))
        .unwrap()
}
