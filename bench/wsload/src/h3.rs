//! HTTP/3 load (quinn + h3): CONNS QUIC connections with STREAMS request loops each,
//! GET of a URL for SECONDS; prints requests, requests/s, p50/p99 latency, bytes and
//! errors as one JSON line (bench/h3.py reads it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use rustls_pki_types::pem::PemObject;

use crate::Error;

/// What one request loop saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    bytes: u64,
    errors: u64,
}

pub async fn load(
    url: String,
    addr: SocketAddr,
    ca: String,
    conns: usize,
    streams: usize,
    seconds: u64,
) -> Result<(), Error> {
    let uri: http::Uri = url.parse()?;
    let host = uri.host().ok_or("URL without a host")?.to_owned();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(&ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let config = quinn::ClientConfig::new(Arc::new(quic));
    let mut senders = Vec::new();
    let mut endpoints = Vec::new();
    for _ in 0..conns {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(config.clone());
        let conn = endpoint.connect(addr, &host)?.await?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        senders.push(send);
        endpoints.push(endpoint);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for send in &senders {
        for _ in 0..streams {
            let mut send = send.clone();
            let uri = uri.clone();
            tasks.push(tokio::spawn(async move {
                let mut t = Tally::default();
                while Instant::now() < deadline {
                    let began = Instant::now();
                    match get(&mut send, uri.clone()).await {
                        Ok(n) => {
                            t.bytes += n;
                            t.latencies_us
                                .push(began.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        }
                        Err(_) => t.errors += 1,
                    }
                }
                t
            }));
        }
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await?;
        all.latencies_us.extend(t.latencies_us);
        all.bytes += t.bytes;
        all.errors += t.errors;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((all.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(all.latencies_us[i]) / 1000.0
    };
    let n = all.latencies_us.len();
    println!(
        "{{\"requests\": {n}, \"seconds\": {elapsed:.3}, \"rps\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"bytes\": {}, \"errors\": {}}}",
        n as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        all.bytes,
        all.errors
    );
    for e in endpoints {
        e.close(0u32.into(), b"");
    }
    Ok(())
}

/// One GET; the body's length.
async fn get(
    send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    uri: http::Uri,
) -> Result<u64, Error> {
    let req = http::Request::get(uri).body(())?;
    let mut stream = send.send_request(req).await?;
    stream.finish().await?;
    let resp = stream.recv_response().await?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()).into());
    }
    let mut n = 0u64;
    while let Some(mut chunk) = stream.recv_data().await? {
        n += chunk.remaining() as u64;
        chunk.advance(chunk.remaining());
    }
    Ok(n)
}
