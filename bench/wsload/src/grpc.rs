//! gRPC load and origin for bench/grpc.py: tonic on both ends, messages as raw bytes.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Request, Response, Status};

use crate::Error;

#[derive(Clone, Copy, Default)]
pub(crate) struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;
type MsgStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>, Status>> + Send>>;

struct Echo;
impl tonic::server::UnaryService<Vec<u8>> for Echo {
    type Response = Vec<u8>;
    type Future = BoxFut<Vec<u8>>;
    fn call(&mut self, req: Request<Vec<u8>>) -> Self::Future {
        Box::pin(async move { Ok(Response::new(req.into_inner())) })
    }
}

/// An endless stream of 1 KiB messages (the client stops reading).
struct Endless;
impl tonic::server::ServerStreamingService<Vec<u8>> for Endless {
    type Response = Vec<u8>;
    type ResponseStream = MsgStream;
    type Future = BoxFut<MsgStream>;
    fn call(&mut self, _req: Request<Vec<u8>>) -> Self::Future {
        Box::pin(async move {
            let s = futures_util::stream::repeat_with(|| Ok(vec![7u8; 1024]));
            Ok(Response::new(Box::pin(s) as MsgStream))
        })
    }
}

pub async fn server(port: u16) -> Result<(), Error> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let mut grpc = tonic::server::Grpc::new(Raw);
                    let resp = match req.uri().path() {
                        "/bench.B/Echo" => grpc.unary(Echo, req).await,
                        "/bench.B/Stream" => grpc.server_streaming(Endless, req).await,
                        _ => Status::unimplemented("no such method").into_http(),
                    };
                    Ok::<_, Infallible>(resp)
                },
            );
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn channel(url: &str) -> Result<tonic::transport::Channel, Error> {
    Ok(tonic::transport::Channel::from_shared(url.to_owned())?
        .connect()
        .await?)
}

/// CONNS connections with 10 unary calls (64-byte messages) in flight on each.
pub async fn unary(url: String, conns: usize, seconds: u64) -> Result<(), Error> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..conns {
        let ch = channel(&url).await?;
        for _ in 0..10 {
            let (done, stop, ch) = (Arc::clone(&done), Arc::clone(&stop), ch.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = tonic::client::Grpc::new(ch);
                let path = PathAndQuery::from_static("/bench.B/Echo");
                while !stop.load(Ordering::Relaxed) {
                    if client.ready().await.is_err() {
                        return;
                    }
                    match client
                        .unary(Request::new(vec![1u8; 64]), path.clone(), Raw)
                        .await
                    {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    println!(
        "{{\"calls\": {n}, \"seconds\": {elapsed:.3}, \"per_second\": {:.1}}}",
        n as f64 / elapsed
    );
    Ok(())
}

/// One server stream read for SECONDS.
pub async fn stream(url: String, seconds: u64) -> Result<(), Error> {
    let mut client = tonic::client::Grpc::new(channel(&url).await?);
    client.ready().await?;
    let mut s = client
        .server_streaming(
            Request::new(Vec::new()),
            PathAndQuery::from_static("/bench.B/Stream"),
            Raw,
        )
        .await?
        .into_inner();
    let start = Instant::now();
    let mut bytes: u64 = 0;
    let mut messages: u64 = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        match s.next().await {
            Some(Ok(m)) => {
                bytes += m.len() as u64;
                messages += 1;
            }
            _ => break,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"messages\": {messages}, \"bytes\": {bytes}, \"seconds\": {elapsed:.3}, \"mib_s\": {:.1}}}",
        bytes as f64 / elapsed / (1 << 20) as f64
    );
    Ok(())
}
