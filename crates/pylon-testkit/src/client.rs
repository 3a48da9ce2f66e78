//! Clients for tests: hyper HTTP/1.1 and h2c connections, raw bytes, and curl.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::DEADLINE;

pub type ClientBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn body(b: impl Into<Bytes>) -> ClientBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> ClientBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// An HTTP/1.1 client connection.
pub async fn h1_conn(addr: SocketAddr) -> http1::SendRequest<ClientBody> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    tx
}

/// An h2c (prior knowledge) client connection.
pub async fn h2_conn(addr: SocketAddr) -> http2::SendRequest<ClientBody> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

/// A whole response: status, headers and body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn collect(resp: Response<Incoming>) -> Answer {
    let (parts, b) = resp.into_parts();
    let body = tokio::time::timeout(DEADLINE, b.collect())
        .await
        .expect("body within deadline")
        .expect("body completes")
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Sends one request on a fresh HTTP/1.1 connection and reads the whole answer.
pub async fn send_h1(addr: SocketAddr, req: Request<ClientBody>) -> Answer {
    let mut tx = h1_conn(addr).await;
    let resp = tokio::time::timeout(DEADLINE, tx.send_request(req))
        .await
        .expect("response within deadline")
        .expect("response");
    collect(resp).await
}

/// Sends one request on a fresh h2c connection and reads the whole answer.
pub async fn send_h2(addr: SocketAddr, req: Request<ClientBody>) -> Answer {
    let mut tx = h2_conn(addr).await;
    let resp = tokio::time::timeout(DEADLINE, tx.send_request(req))
        .await
        .expect("response within deadline")
        .expect("response");
    collect(resp).await
}

/// GET `path` over HTTP/1.1 with `Host: test.local`.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    let req = Request::get(path)
        .header("host", "test.local")
        .body(empty())
        .unwrap();
    send_h1(addr, req).await
}

/// Writes raw bytes and reads until the server closes (or the deadline).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_to_close(&mut s).await
}

/// Reads until EOF or error; panics if the peer keeps the connection open past the deadline.
pub async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let r = tokio::time::timeout(DEADLINE, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "connection not closed within the deadline; got {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs curl with `args` (curl must be installed: `.ci/run` installs it).
pub async fn curl(args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "20"]).args(args);
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("curl finishes")
        .expect("curl runs (is it installed?)")
}
