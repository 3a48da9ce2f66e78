//! The soak client (bench/soak.py): mixed traffic for a while — HTTP/1.1 keep-alive,
//! HTTP/2 multiplexed, WebSocket echoes, gRPC unary calls — counting every outcome by
//! cause, so that the soak report can explain each error. Prints one JSON object.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::Error;

/// Outcomes by kind of traffic and cause.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    fn add(&self, what: &str) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.entry(what.to_owned()).or_insert(0) += 1;
    }
}

fn cause(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    // Keep causes few: the first words, without addresses or numbers.
    s.split([':', '(']).next().unwrap_or("").trim().to_owned()
}

async fn h1(addr: String, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut conn: Option<hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) {
        let reusable = match conn.as_mut() {
            Some(c) => c.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            match TcpStream::connect(&addr).await {
                Ok(s) => match hyper::client::conn::http1::handshake(TokioIo::new(s)).await {
                    Ok((tx, c)) => {
                        tokio::spawn(c);
                        conn = Some(tx);
                    }
                    Err(e) => {
                        tally.add(&format!("h1 error: handshake {}", cause(&e)));
                        continue;
                    }
                },
                Err(e) => {
                    tally.add(&format!("h1 error: connect {}", cause(&e)));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(tx) = conn.as_mut() else { continue };
        let req = http::Request::get("/")
            .header("host", "soak")
            .body(Empty::new());
        let Ok(req) = req else { continue };
        match tx.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.into_body().collect().await {
                    Ok(_) if status == 200 => tally.add("h1 ok"),
                    Ok(_) => tally.add(&format!("h1 status {status}")),
                    Err(e) => tally.add(&format!("h1 error: body {}", cause(&e))),
                }
            }
            Err(e) => {
                tally.add(&format!("h1 error: request {}", cause(&e)));
                conn = None;
            }
        }
    }
}

async fn h2(addr: String, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let s = match TcpStream::connect(&addr).await {
            Ok(s) => s,
            Err(e) => {
                tally.add(&format!("h2 error: connect {}", cause(&e)));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok((tx, c)) = hyper::client::conn::http2::handshake::<_, _, Empty<bytes::Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(s),
        )
        .await
        else {
            tally.add("h2 error: handshake");
            continue;
        };
        tokio::spawn(c);
        // 10 streams at a time on this connection, until it fails or for 5 s.
        let until = Instant::now() + Duration::from_secs(5);
        let mut handles = Vec::new();
        for _ in 0..10 {
            let (mut tx, tally, stop) = (tx.clone(), Arc::clone(&tally), Arc::clone(&stop));
            handles.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    let Ok(req) = http::Request::get("http://soak/").body(Empty::new()) else {
                        return;
                    };
                    match tx.send_request(req).await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            match resp.into_body().collect().await {
                                Ok(_) if status == 200 => tally.add("h2 ok"),
                                Ok(_) => tally.add(&format!("h2 status {status}")),
                                Err(e) => tally.add(&format!("h2 error: body {}", cause(&e))),
                            }
                        }
                        Err(e) => {
                            tally.add(&format!("h2 error: request {}", cause(&e)));
                            return;
                        }
                    }
                }
            }));
        }
        for h in handles {
            let _ = h.await;
        }
    }
}

async fn ws(url: String, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let mut ws = match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => ws,
            Err(e) => {
                tally.add(&format!("ws error: handshake {}", cause(&e)));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        for i in 0..200 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Err(e) = ws.send(Message::text(format!("soak {i}"))).await {
                tally.add(&format!("ws error: send {}", cause(&e)));
                break;
            }
            match ws.next().await {
                Some(Ok(_)) => tally.add("ws ok"),
                Some(Err(e)) => {
                    tally.add(&format!("ws error: receive {}", cause(&e)));
                    break;
                }
                None => {
                    tally.add("ws error: closed");
                    break;
                }
            }
        }
        let _ = ws.close(None).await;
    }
}

async fn grpc(url: String, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let ch = match tonic::transport::Channel::from_shared(url.clone()) {
            Ok(c) => c.connect_lazy(),
            Err(_) => return,
        };
        let mut client = tonic::client::Grpc::new(ch);
        for _ in 0..500 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if client.ready().await.is_err() {
                tally.add("grpc error: not ready");
                break;
            }
            match client
                .unary(
                    tonic::Request::new(vec![7u8; 64]),
                    http::uri::PathAndQuery::from_static("/bench.B/Echo"),
                    crate::grpc::Raw,
                )
                .await
            {
                Ok(_) => tally.add("grpc ok"),
                Err(s) => tally.add(&format!("grpc status {:?}", s.code())),
            }
        }
    }
}

/// Runs the mix for `seconds` against Pylon at `addr` (`/` HTTP, `/ws` WebSocket,
/// gRPC by content type), then prints the tally as JSON.
pub async fn run(addr: String, seconds: u64) -> Result<(), Error> {
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(h1(
            addr.clone(),
            Arc::clone(&tally),
            Arc::clone(&stop),
        )));
    }
    for _ in 0..2 {
        tasks.push(tokio::spawn(h2(
            addr.clone(),
            Arc::clone(&tally),
            Arc::clone(&stop),
        )));
        tasks.push(tokio::spawn(ws(
            format!("ws://{addr}/ws"),
            Arc::clone(&tally),
            Arc::clone(&stop),
        )));
        tasks.push(tokio::spawn(grpc(
            format!("http://{addr}"),
            Arc::clone(&tally),
            Arc::clone(&stop),
        )));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let m = tally
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    println!("{}", serde_json_like(&m));
    Ok(())
}

fn serde_json_like(m: &BTreeMap<String, u64>) -> String {
    let items: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("\"{}\": {v}", k.replace('\\', "\\\\").replace('"', "'")))
        .collect();
    format!("{{{}}}", items.join(", "))
}
