//! gRPC through Pylon with tonic on both ends (raw-bytes messages, no code generation):
//! the four calling modes over h2c and over TLS, metadata, error statuses. (Deadlines
//! are tested in grpc.rs with a raw client: tonic's own timer would race Pylon's.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pylon_testkit::*;
use tonic::{Code, Request, Response, Status, Streaming};

type BoxFut<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;
type MsgStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>, Status>> + Send>>;

/// Unary: echoes, passing metadata back; "fail" answers INVALID_ARGUMENT.
struct Say;
impl tonic::server::UnaryService<Vec<u8>> for Say {
    type Response = Vec<u8>;
    type Future = BoxFut<Vec<u8>>;
    fn call(&mut self, req: Request<Vec<u8>>) -> Self::Future {
        Box::pin(async move {
            let meta = req.metadata().get("x-client-meta").cloned();
            let msg = req.into_inner();
            if msg == b"fail" {
                return Err(Status::invalid_argument("no thanks"));
            }
            let mut resp = Response::new(msg);
            if let Some(m) = meta {
                resp.metadata_mut().insert("x-server-meta", m);
            }
            Ok(resp)
        })
    }
}

/// Server streaming: the request holds N; answers N messages.
struct Count;
impl tonic::server::ServerStreamingService<Vec<u8>> for Count {
    type Response = Vec<u8>;
    type ResponseStream = MsgStream;
    type Future = BoxFut<MsgStream>;
    fn call(&mut self, req: Request<Vec<u8>>) -> Self::Future {
        Box::pin(async move {
            let n: usize = String::from_utf8_lossy(req.get_ref()).parse().unwrap();
            let s = futures_util::stream::iter((0..n).map(|i| Ok(i.to_string().into_bytes())));
            Ok(Response::new(Box::pin(s) as MsgStream))
        })
    }
}

/// Client streaming: answers how many messages and bytes it got.
struct Sum;
impl tonic::server::ClientStreamingService<Vec<u8>> for Sum {
    type Response = Vec<u8>;
    type Future = BoxFut<Vec<u8>>;
    fn call(&mut self, req: Request<Streaming<Vec<u8>>>) -> Self::Future {
        Box::pin(async move {
            let mut s = req.into_inner();
            let (mut n, mut bytes) = (0, 0);
            while let Some(m) = s.next().await {
                let m = m?;
                n += 1;
                bytes += m.len();
            }
            Ok(Response::new(
                format!("{n} messages, {bytes} bytes").into_bytes(),
            ))
        })
    }
}

/// Bidirectional: echoes every message as it comes.
struct Chat;
impl tonic::server::StreamingService<Vec<u8>> for Chat {
    type Response = Vec<u8>;
    type ResponseStream = MsgStream;
    type Future = BoxFut<MsgStream>;
    fn call(&mut self, req: Request<Streaming<Vec<u8>>>) -> Self::Future {
        Box::pin(async move {
            let s = req.into_inner().map(|m| {
                m.map(|mut v| {
                    v.extend_from_slice(b"!");
                    v
                })
            });
            Ok(Response::new(Box::pin(s) as MsgStream))
        })
    }
}

/// A tonic gRPC server (h2c) on 127.0.0.1:0 serving /test.Echo/{Say,Count,Sum,Chat}.
async fn tonic_origin() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let mut grpc = tonic::server::Grpc::new(RawCodec);
                        let resp = match req.uri().path() {
                            "/test.Echo/Say" => grpc.unary(Say, req).await,
                            "/test.Echo/Count" => grpc.server_streaming(Count, req).await,
                            "/test.Echo/Sum" => grpc.client_streaming(Sum, req).await,
                            "/test.Echo/Chat" => grpc.streaming(Chat, req).await,
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
    });
    addr
}

fn config(origin: SocketAddr, listener_extra: &str) -> String {
    format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"
{listener_extra}

[[routes]]
path_prefix = "/test.Echo/"
grpc = true
cluster = "grpc"

[[clusters]]
name = "grpc"
protocol = "h2c"
endpoints = ["{origin}"]
"#
    )
}

async fn all_four_modes(channel: tonic::transport::Channel) {
    let mut client = tonic::client::Grpc::new(channel);
    let path = |p: &'static str| PathAndQuery::from_static(p);

    // Unary, with metadata both ways.
    client.ready().await.unwrap();
    let mut req = Request::new(b"hello".to_vec());
    req.metadata_mut()
        .insert("x-client-meta", "m1".parse().unwrap());
    let resp = client
        .unary(req, path("/test.Echo/Say"), RawCodec)
        .await
        .unwrap();
    assert_eq!(resp.metadata().get("x-server-meta").unwrap(), "m1");
    assert_eq!(resp.into_inner(), b"hello");

    // A 4 MiB message.
    client.ready().await.unwrap();
    let big = vec![7u8; 4 << 20];
    let resp = client
        .unary(Request::new(big.clone()), path("/test.Echo/Say"), RawCodec)
        .await
        .unwrap();
    assert_eq!(resp.into_inner().len(), big.len());

    // An error status with its message.
    client.ready().await.unwrap();
    let err = client
        .unary(
            Request::new(b"fail".to_vec()),
            path("/test.Echo/Say"),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "no thanks");

    // Server streaming: 10,000 messages.
    client.ready().await.unwrap();
    let mut s = client
        .server_streaming(
            Request::new(b"10000".to_vec()),
            path("/test.Echo/Count"),
            RawCodec,
        )
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(m) = s.next().await {
        assert_eq!(m.unwrap(), n.to_string().into_bytes());
        n += 1;
    }
    assert_eq!(n, 10_000);

    // Client streaming: 10,000 messages up.
    client.ready().await.unwrap();
    let up = futures_util::stream::iter((0..10_000).map(|_| b"0123456789".to_vec()));
    let resp = client
        .client_streaming(Request::new(up), path("/test.Echo/Sum"), RawCodec)
        .await
        .unwrap();
    assert_eq!(resp.into_inner(), b"10000 messages, 100000 bytes");

    // Bidirectional: each message answered as it goes.
    client.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let out = tokio_stream_from(rx);
    let mut answers = client
        .streaming(Request::new(out), path("/test.Echo/Chat"), RawCodec)
        .await
        .unwrap()
        .into_inner();
    for i in 0..100 {
        tx.send(format!("m{i}").into_bytes()).await.unwrap();
        let a = tokio::time::timeout(DEADLINE, answers.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            a,
            format!("m{i}!").into_bytes(),
            "answered before the next is sent"
        );
    }
    drop(tx);
    assert!(answers.next().await.is_none());

    // No route for this method: UNIMPLEMENTED from Pylon.
    client.ready().await.unwrap();
    let err = client
        .unary(
            Request::new(vec![]),
            path("/other.Service/Method"),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> impl Stream<Item = Vec<u8>> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_client_and_server_over_h2c() {
    let origin = tonic_origin().await;
    let p = TestProxy::start(&config(origin, "")).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", p.addr("front")))
        .unwrap()
        .connect()
        .await
        .unwrap();
    all_four_modes(channel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_client_over_tls_to_pylon() {
    let origin = tonic_origin().await;
    let ca = TestCa::new("grpc CA");
    let dir = temp_dir();
    let (cert, key) = ca.server(&["localhost"]).write(&dir, "grpc");
    let listener = format!(
        "protocol = \"https\"\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
        cert.display(),
        key.display()
    );
    let p = TestProxy::start(&config(origin, &listener)).await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!(
        "https://localhost:{}",
        p.addr("front").port()
    ))
    .unwrap()
    .tls_config(tls)
    .unwrap()
    .connect()
    .await
    .unwrap();
    all_four_modes(channel).await;
}

/// The Python gRPC client (grpcio, installed by scripts/test.sh) as an independent
/// second client: unary, all streaming modes, metadata and error statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_python_client_through_pylon() {
    let origin = tonic_origin().await;
    let p = TestProxy::start(&config(origin, "")).await;
    let script = r#"
import sys, grpc
ch = grpc.insecure_channel(sys.argv[1])
say = ch.unary_unary('/test.Echo/Say')
resp, call = say.with_call(b'hello from python', metadata=[('x-client-meta', 'py')])
assert resp == b'hello from python', resp
assert dict(call.initial_metadata()).get('x-server-meta') == 'py', call.initial_metadata()
got = list(ch.unary_stream('/test.Echo/Count')(b'1000'))
assert len(got) == 1000 and got[-1] == b'999', len(got)
assert ch.stream_unary('/test.Echo/Sum')(iter([b'ab'] * 500)) == b'500 messages, 1000 bytes'
assert list(ch.stream_stream('/test.Echo/Chat')(iter([b'a', b'b']))) == [b'a!', b'b!']
try:
    say(b'fail')
    raise SystemExit('expected INVALID_ARGUMENT')
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()
    assert e.details() == 'no thanks', e.details()
try:
    ch.unary_unary('/other.Service/Method')(b'')
    raise SystemExit('expected UNIMPLEMENTED')
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e.code()
print('all calls ok')
"#;
    let dir = temp_dir();
    let path = dir.join("client.py");
    std::fs::write(&path, script).unwrap();
    let python = std::env::var("PYLON_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::time::timeout(
        DEADLINE * 3,
        tokio::process::Command::new(&python)
            .arg(&path)
            .arg(p.addr("front").to_string())
            .output(),
    )
    .await
    .expect("the Python client finishes")
    .expect("python runs (scripts/test.sh installs grpcio into target/test-venv)");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("all calls ok"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
