//! A small gRPC service and client for trying `examples/grpc.toml`.
//!
//!   grpc-demo serve [ADDR]        serve helloworld.Greeter/SayHello and
//!                                 grpc.health.v1.Health/Check (h2c, default 127.0.0.1:50051)
//!   grpc-demo call [ADDR] [NAME]  call SayHello (default 127.0.0.1:50050, "pylon") and
//!                                 print the reply; exits 1 with the gRPC status on error
//!
//! The protobuf messages (one string or enum field each) are encoded by hand, so there
//! is no code generation and no .proto file to build.

use std::convert::Infallible;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use bytes::{Buf, BufMut};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Request, Response, Status};

const USAGE: &str = "usage:
  grpc-demo serve [ADDR]        serve helloworld.Greeter and grpc.health.v1.Health (default 127.0.0.1:50051)
  grpc-demo call [ADDR] [NAME]  call helloworld.Greeter/SayHello (default 127.0.0.1:50050 pylon)";

/// The services the health service reports SERVING for ("" is the whole server).
const SERVING: &[&str] = &["", "helloworld.Greeter"];

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    match args.first().map(String::as_str) {
        Some("serve") if args.len() <= 2 => serve(&arg(1, "127.0.0.1:50051")).await,
        Some("call") if args.len() <= 3 => call(&arg(1, "127.0.0.1:50050"), &arg(2, "pylon")).await,
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn serve(addr: &str) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(a) => println!("listening on {a} (helloworld.Greeter, grpc.health.v1.Health; h2c)"),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the others.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let mut grpc = tonic::server::Grpc::new(Raw);
                    let resp = match req.uri().path() {
                        "/helloworld.Greeter/SayHello" => grpc.unary(SayHello, req).await,
                        "/grpc.health.v1.Health/Check" => grpc.unary(HealthCheck, req).await,
                        p => Status::unimplemented(format!("no method {p}")).into_http(),
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

async fn call(addr: &str, name: &str) -> ExitCode {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let endpoint = match tonic::transport::Endpoint::from_shared(uri.clone()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10)),
        Err(e) => {
            eprintln!("error: bad address {addr}: {e}");
            return ExitCode::from(2);
        }
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot connect to {uri}: {}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let mut client = tonic::client::Grpc::new(channel);
    if let Err(e) = client.ready().await {
        eprintln!("error: {uri} not ready: {}", error_chain(&e));
        return ExitCode::FAILURE;
    }
    let path = http::uri::PathAndQuery::from_static("/helloworld.Greeter/SayHello");
    let reply = client
        .unary(Request::new(string_field(name)), path, Raw)
        .await;
    match reply.map(|r| read_string_field(&r.into_inner())) {
        Ok(Ok(message)) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("error: bad HelloReply: {e}");
            ExitCode::FAILURE
        }
        Err(status) => {
            eprintln!(
                "error: gRPC status {} {:?}: {}",
                status.code() as i32,
                status.code(),
                status.message()
            );
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    let mut last = s.clone();
    while let Some(c) = cause {
        let text = c.to_string();
        // Layers often repeat their inner error's words; print each once.
        if text != last {
            s.push_str(": ");
            s.push_str(&text);
        }
        last = text;
        cause = c.source();
    }
    s
}

type BoxFut = Pin<Box<dyn Future<Output = Result<Response<Vec<u8>>, Status>> + Send>>;

/// `SayHello(HelloRequest { string name = 1 })` → `HelloReply { string message = 1 }`.
struct SayHello;
impl tonic::server::UnaryService<Vec<u8>> for SayHello {
    type Response = Vec<u8>;
    type Future = BoxFut;
    fn call(&mut self, req: Request<Vec<u8>>) -> BoxFut {
        Box::pin(async move {
            let name = read_string_field(req.get_ref())
                .map_err(|e| Status::invalid_argument(format!("bad HelloRequest: {e}")))?;
            println!("SayHello {name:?}");
            Ok(Response::new(string_field(&format!("Hello {name}"))))
        })
    }
}

/// `Check(HealthCheckRequest { string service = 1 })` →
/// `HealthCheckResponse { ServingStatus status = 1 }`, SERVING (1) for the services
/// served here and NOT_FOUND for others, as the gRPC health protocol says.
struct HealthCheck;
impl tonic::server::UnaryService<Vec<u8>> for HealthCheck {
    type Response = Vec<u8>;
    type Future = BoxFut;
    fn call(&mut self, req: Request<Vec<u8>>) -> BoxFut {
        Box::pin(async move {
            let service = read_string_field(req.get_ref())
                .map_err(|e| Status::invalid_argument(format!("bad HealthCheckRequest: {e}")))?;
            if SERVING.contains(&service.as_str()) {
                // Field 1, varint (tag 0x08): SERVING = 1.
                Ok(Response::new(vec![0x08, 0x01]))
            } else {
                Err(Status::not_found(format!("unknown service {service:?}")))
            }
        })
    }
}

/// A message whose field 1 is the string `s` (tag 0x0a: field 1, wire type 2).
fn string_field(s: &str) -> Vec<u8> {
    let mut out = vec![0x0a];
    put_varint(&mut out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
    out
}

/// Field 1 of a message as a string ("" when absent, as proto3 leaves defaults out);
/// other fields are skipped.
fn read_string_field(mut msg: &[u8]) -> Result<String, String> {
    let mut value = String::new();
    while !msg.is_empty() {
        let key = take_varint(&mut msg)?;
        let (field, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => {
                take_varint(&mut msg)?;
            }
            1 | 5 => {
                let n = if wire_type == 1 { 8 } else { 4 };
                take(&mut msg, n)?;
            }
            2 => {
                let len = usize::try_from(take_varint(&mut msg)?)
                    .map_err(|_| "length out of range".to_string())?;
                let bytes = take(&mut msg, len)?;
                if field == 1 {
                    value = String::from_utf8(bytes.to_vec())
                        .map_err(|_| "field 1 is not UTF-8".to_string())?;
                }
            }
            t => return Err(format!("unsupported wire type {t}")),
        }
    }
    Ok(value)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(msg: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&b, rest)) = msg.split_first() else {
            return Err("truncated varint".into());
        };
        *msg = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

fn take<'a>(msg: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if msg.len() < n {
        return Err("truncated field".into());
    }
    let (head, rest) = msg.split_at(n);
    *msg = rest;
    Ok(head)
}

/// gRPC messages as plain bytes; the protobuf encoding is done above.
#[derive(Clone, Copy, Default)]
struct Raw;

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
