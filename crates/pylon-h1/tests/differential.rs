//! The codec against hyper's HTTP/1.1 server on generated request heads: on every head
//! both accept they agree on method, target, version and fields, and the codec accepts
//! nothing hyper refuses (it is the stricter of the two).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use http::request::Parts;
use proptest::prelude::*;
use pylon_h1::*;
use tokio::io::AsyncWriteExt;

/// hyper's reading of `head`: the request parts its server handed to the service, or
/// `None` when it refused the head.
fn hyper_parse(rt: &tokio::runtime::Runtime, head: &[u8]) -> Option<Parts> {
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let seen: Arc<Mutex<Option<Parts>>> = Arc::default();
        let keep = Arc::clone(&seen);
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let keep = Arc::clone(&keep);
                async move {
                    let (parts, _) = req.into_parts();
                    *keep.lock().unwrap() = Some(parts);
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                        bytes::Bytes,
                    >::new(
                    )))
                }
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(hyper_util::rt::TokioIo::new(server), service);
        client.write_all(head).await.unwrap();
        client.shutdown().await.unwrap();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
        seen.lock().unwrap().take()
    })
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "CONNECT"
        ])
        .prop_map(str::to_owned),
        "[A-Z!#$%&'*+.^_`|~-]{1,8}",
    ]
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "/[a-zA-Z0-9/._~%?=&+-]{0,24}",
        1 => Just("*".to_owned()),
        1 => "http://[a-z]{1,6}\\.example(:[0-9]{1,5})?/[a-z]{0,6}",
        1 => "[a-z]{1,6}\\.example:[0-9]{1,5}",
    ]
}

fn field() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        1 => prop::sample::select(vec![
            "Host", "host", "Content-Length", "Transfer-Encoding", "Connection", "Expect",
            "Upgrade", "X-Mixed-Case",
        ])
        .prop_map(str::to_owned),
        3 => "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}",
    ];
    let value = prop_oneof![
        prop::sample::select(vec![
            "a.example",
            "chunked",
            "close",
            "keep-alive",
            "upgrade",
            "100-continue",
            "5",
            "0",
            "07",
            "5, 5",
            "gzip, chunked",
        ])
        .prop_map(str::to_owned),
        "[ -~\t]{0,20}",
        "[0-9]{1,21}",
    ];
    (name, value)
}

/// A request head from the grammar, mostly with a `Host`, sometimes with one byte put
/// in anywhere.
fn head() -> impl Strategy<Value = Vec<u8>> {
    (
        method(),
        target(),
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]),
        prop::collection::vec(field(), 0..8),
        prop::bool::weighted(0.8),
        prop::option::weighted(
            0.3,
            (
                any::<prop::sample::Index>(),
                prop::sample::select(b"\n\r\0 \t:\x7f\x80,;".to_vec()),
            ),
        ),
    )
        .prop_map(|(m, t, v, fields, host, mutation)| {
            let mut h = format!("{m} {t} {v}\r\n").into_bytes();
            if host {
                h.extend_from_slice(b"Host: a.example\r\n");
            }
            for (n, val) in fields {
                h.extend_from_slice(format!("{n}: {val}\r\n").as_bytes());
            }
            h.extend_from_slice(b"\r\n");
            if let Some((at, byte)) = mutation {
                let i = at.index(h.len());
                h.insert(i, byte);
            }
            h
        })
}

#[test]
fn the_codec_agrees_with_hyper_where_both_accept_and_is_stricter() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let both = std::cell::Cell::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(1000));
    let outcome = runner.run(&head(), |raw| {
        let mut buf = BytesMut::from(&raw[..]);
        let ours = parse_request(&mut buf, &HeadLimits::default());
        match (ours, hyper_parse(&rt, &raw)) {
            (Ok(Some(head)), Some(parts)) => {
                both.set(both.get() + 1);
                prop_assert_eq!(&head.method, &parts.method);
                prop_assert_eq!(&head.uri, &parts.uri);
                prop_assert_eq!(head.version, parts.version);
                prop_assert_eq!(head.fields.to_header_map(), parts.headers);
            }
            (Ok(Some(head)), None) => {
                prop_assert!(
                    false,
                    "hyper refused what the codec accepted: {:?} -> {:?}",
                    String::from_utf8_lossy(&raw),
                    head
                );
            }
            _ => {}
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // The grammar makes heads both accept often enough for the comparison to mean
    // something.
    assert!(
        both.get() >= 250,
        "only {} heads accepted by both",
        both.get()
    );
}
