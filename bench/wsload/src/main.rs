//! Load client for the tunnel, gRPC, HTTP/3 and TURN benchmarks (bench/*.py), and the
//! origins they talk to.
//!
//! ```text
//! pylon-bench-load ws-echo-server PORT            WebSocket echo origin on 127.0.0.1:PORT
//! pylon-bench-load ws URL CONNS SECONDS           echo round trips; prints messages/s
//! pylon-bench-load sink-server PORT               TCP origin that discards what it reads
//! pylon-bench-load connect PROXY TARGET SECONDS   CONNECT through PROXY to TARGET, then
//!                                                 send as fast as possible; prints Gbit/s
//! pylon-bench-load grpc-server PORT               gRPC origin (h2c): /bench.B/Echo (unary)
//!                                                 and /bench.B/Stream (1 KiB messages)
//! pylon-bench-load grpc-unary URL CONNS SECONDS   unary calls, 10 in flight per connection
//! pylon-bench-load grpc-stream URL SECONDS        one server stream; prints MiB/s
//! pylon-bench-load soak ADDR SECONDS              mixed HTTP/1.1, HTTP/2, WebSocket and
//!                                                 gRPC traffic; prints outcomes by cause
//! pylon-bench-load h3 URL ADDR CA CONNS STREAMS SECONDS
//!                                                 HTTP/3 GETs of URL at ADDR (UDP), CA the
//!                                                 server's certificate; prints requests/s
//! pylon-bench-load turn ADDR USER PASSWORD CLIENTS SIZE SECONDS WINDOW
//!                                                 TURN channel relaying to an echo peer;
//!                                                 prints relayed packets/s
//! pylon-bench-load turn-alloc ADDR USER PASSWORD SECONDS CONC
//!                                                 TURN allocations (and deletions); prints
//!                                                 allocations/s
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

mod grpc;
mod h3;
mod soak;
mod turn;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, Error> {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("missing or invalid {what}").into())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("ws-echo-server") => ws_echo_server(arg(&args, 2, "PORT")?).await,
        Some("ws") => {
            ws_load(
                args.get(2).ok_or("missing URL")?.clone(),
                arg(&args, 3, "CONNS")?,
                arg(&args, 4, "SECONDS")?,
            )
            .await
        }
        Some("sink-server") => sink_server(arg(&args, 2, "PORT")?).await,
        Some("connect") => {
            connect_load(
                arg(&args, 2, "PROXY")?,
                args.get(3).ok_or("missing TARGET")?.clone(),
                arg(&args, 4, "SECONDS")?,
            )
            .await
        }
        Some("grpc-server") => grpc::server(arg(&args, 2, "PORT")?).await,
        Some("grpc-unary") => {
            grpc::unary(
                args.get(2).ok_or("missing URL")?.clone(),
                arg(&args, 3, "CONNS")?,
                arg(&args, 4, "SECONDS")?,
            )
            .await
        }
        Some("grpc-stream") => {
            grpc::stream(
                args.get(2).ok_or("missing URL")?.clone(),
                arg(&args, 3, "SECONDS")?,
            )
            .await
        }
        Some("soak") => {
            soak::run(
                args.get(2).ok_or("missing ADDR")?.clone(),
                arg(&args, 3, "SECONDS")?,
            )
            .await
        }
        Some("h3") => {
            h3::load(
                args.get(2).ok_or("missing URL")?.clone(),
                arg(&args, 3, "ADDR")?,
                args.get(4).ok_or("missing CA")?.clone(),
                arg(&args, 5, "CONNS")?,
                arg(&args, 6, "STREAMS")?,
                arg(&args, 7, "SECONDS")?,
            )
            .await
        }
        Some("turn") => {
            turn::relay(
                arg(&args, 2, "ADDR")?,
                arg(&args, 3, "USER")?,
                arg(&args, 4, "PASSWORD")?,
                arg(&args, 5, "CLIENTS")?,
                arg(&args, 6, "SIZE")?,
                arg(&args, 7, "SECONDS")?,
                arg(&args, 8, "WINDOW")?,
            )
            .await
        }
        Some("turn-alloc") => {
            turn::allocations(
                arg(&args, 2, "ADDR")?,
                arg(&args, 3, "USER")?,
                arg(&args, 4, "PASSWORD")?,
                arg(&args, 5, "SECONDS")?,
                arg(&args, 6, "CONC")?,
            )
            .await
        }
        _ => Err("usage: see the module documentation".into()),
    }
}

async fn ws_echo_server(port: u16) -> Result<(), Error> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// CONNS connections, each sending a 64-byte message and waiting for its echo, for
/// SECONDS; prints the round trips per second.
async fn ws_load(url: String, conns: usize, seconds: u64) -> Result<(), Error> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..conns {
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        clients.push(ws);
    }
    let start = Instant::now();
    for mut ws in clients {
        let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let payload = "x".repeat(64);
            while !stop.load(Ordering::Relaxed) {
                if ws.send(Message::text(payload.clone())).await.is_err() {
                    return;
                }
                match ws.next().await {
                    Some(Ok(_)) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => return,
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    println!(
        "{{\"messages\": {n}, \"seconds\": {elapsed:.3}, \"per_second\": {:.1}}}",
        n as f64 / elapsed
    );
    Ok(())
}

async fn sink_server(port: u16) -> Result<(), Error> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    return;
                }
            }
        });
    }
}

/// One CONNECT tunnel (or a direct connection when PROXY equals TARGET), written to as
/// fast as possible for SECONDS; prints the throughput.
async fn connect_load(proxy: SocketAddr, target: String, seconds: u64) -> Result<(), Error> {
    let mut s = TcpStream::connect(proxy).await?;
    if proxy.to_string() != target {
        s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await? == 0 {
                return Err("proxy closed during CONNECT".into());
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 200") {
            return Err(format!("CONNECT refused: {}", String::from_utf8_lossy(&head)).into());
        }
    }
    let buf = vec![7u8; 256 * 1024];
    let start = Instant::now();
    let mut sent: u64 = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        s.write_all(&buf).await?;
        sent += buf.len() as u64;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"bytes\": {sent}, \"seconds\": {elapsed:.3}, \"gbit_s\": {:.3}}}",
        sent as f64 * 8.0 / elapsed / 1e9
    );
    Ok(())
}
