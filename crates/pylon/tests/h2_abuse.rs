//! HTTP/2 abuse at the frame level, with raw frames written by the test: rapid reset
//! (CVE-2023-44487), CONTINUATION floods, HPACK bombs, too many streams, PING and
//! SETTINGS floods, zero-window stalls. Each is bounded (GOAWAY, stream reset or back-pressure) while a
//! second, well-behaved client keeps being served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use pylon_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// GET / with `:authority: a`, HPACK-encoded with static-table indices.
const GET_BLOCK: &[u8] = &[0x82, 0x84, 0x86, 0x41, 0x01, b'a'];

/// A connection that has sent the preface and an empty SETTINGS frame.
async fn h2_raw(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    s
}

/// Frames in `buf`: (type, flags, stream, payload); a partial frame at the end is left
/// out.
fn parse_frames(buf: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut i = 0;
    while i + 9 <= buf.len() {
        let len =
            (usize::from(buf[i]) << 16) | (usize::from(buf[i + 1]) << 8) | usize::from(buf[i + 2]);
        if i + 9 + len > buf.len() {
            break;
        }
        let stream =
            u32::from_be_bytes([buf[i + 5], buf[i + 6], buf[i + 7], buf[i + 8]]) & 0x7fff_ffff;
        frames.push((
            buf[i + 3],
            buf[i + 4],
            stream,
            buf[i + 9..i + 9 + len].to_vec(),
        ));
        i += 9 + len;
    }
    frames
}

/// Everything the server sends until it closes the connection, and whether it did
/// close it (rather than the deadline passing).
async fn read_until_closed<R: AsyncReadExt + Unpin>(r: &mut R) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (buf, closed)
}

/// Frames the server sent until it closed (or the deadline): (type, flags, stream,
/// payload).
async fn read_frames(s: &mut TcpStream) -> Vec<(u8, u8, u32, Vec<u8>)> {
    parse_frames(&read_until_closed(s).await.0)
}

fn goaway_code(frames: &[(u8, u8, u32, Vec<u8>)]) -> Option<u32> {
    goaway(frames).map(|g| g.code)
}

/// A GOAWAY frame's content.
#[derive(Debug)]
struct GoAway {
    last_stream: u32,
    code: u32,
    debug: String,
}

/// The last GOAWAY among `frames`.
fn goaway(frames: &[(u8, u8, u32, Vec<u8>)]) -> Option<GoAway> {
    frames.iter().rev().find(|f| f.0 == GOAWAY).map(|f| GoAway {
        last_stream: u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]]) & 0x7fff_ffff,
        code: u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]),
        debug: String::from_utf8_lossy(&f.3[8..]).into_owned(),
    })
}

async fn still_served(addr: SocketAddr) {
    let mut h2 = h2_conn(addr).await;
    let resp = h2
        .send_request(http::Request::get("http://a/").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

fn config(origin: SocketAddr, listener_extra: &str) -> String {
    simple_config(&[origin], listener_extra, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway_enhance_your_calm() {
    const LIMIT: u32 = 10;
    let origin = Origin::named("o").await;
    let p = TestProxy::start(&config(
        origin.addr,
        &format!("h2_max_reset_streams = {LIMIT}"),
    ))
    .await;
    let front = p.addr("front");
    let mut s = h2_raw(front).await;
    // Streams opened and reset at once, in one burst, far more than the limit.
    let mut flood = Vec::new();
    for i in 0..5_000u32 {
        let id = 2 * i + 1;
        flood.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, GET_BLOCK));
        flood.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    let (mut r, mut w) = s.split();
    let write = async {
        let _ = w.write_all(&flood).await;
    };
    let (_, (out, closed)) = tokio::join!(write, read_until_closed(&mut r));
    let frames = parse_frames(&out);
    let g = goaway(&frames).unwrap_or_else(|| panic!("no GOAWAY in {} frames", frames.len()));
    assert_eq!(
        (g.code, g.debug.as_str()),
        (ENHANCE_YOUR_CALM, "too_many_resets"),
        "{g:?}"
    );
    assert!(closed, "the connection is closed after the GOAWAY");
    // The GOAWAY names the last stream Pylon took: the flood was stopped just past
    // the limit of streams reset before Pylon took them up, not thousands of
    // streams later.
    let resets = g.last_stream.div_ceil(2);
    assert!(
        resets > LIMIT && resets <= 2 * LIMIT,
        "GOAWAY after {resets} opened and reset streams (limit {LIMIT})"
    );
    assert!(
        origin.request_count() <= resets as usize,
        "{} requests reached the origin",
        origin.request_count()
    );
    still_served(front).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off() {
    let origin = Origin::named("o").await;
    // The default max_header_bytes (64 KiB): an HTTP/2 header block may hold twice
    // that (128 KiB), so that the request path answers 431 for what lies between.
    let p = TestProxy::start(&config(origin.addr, "")).await;
    let front = p.addr("front");
    let mut s = h2_raw(front).await;
    // A HEADERS frame that never ends its header block, then CONTINUATION frames of
    // literal headers (16 KiB each, about 19 KiB once decoded), 256 KiB in all: twice
    // what a header block may hold. Pylon must end the connection within them.
    let mut first = GET_BLOCK.to_vec();
    first.extend([0x40, 0x01, b'x', 0x01, b'y']);
    let mut junk = Vec::new();
    while junk.len() < 16_000 {
        junk.extend([0x40, 0x02, b'x', b'z', 0x7f, 0x00]);
        junk.extend(std::iter::repeat_n(b'v', 127));
    }
    let cont = frame(CONTINUATION, 0, 1, &junk);
    let frames_sent = (256 << 10) / junk.len();
    let (mut r, mut w) = s.split();
    let write = async {
        let mut flood = frame(HEADERS, END_STREAM, 1, &first);
        for _ in 0..frames_sent {
            flood.extend_from_slice(&cont);
        }
        // Pylon may close before it has read everything: a failed write is fine.
        let _ = w.write_all(&flood).await;
    };
    let (_, (out, closed)) = tokio::join!(write, read_until_closed(&mut r));
    let frames = parse_frames(&out);
    let g = goaway(&frames).unwrap_or_else(|| panic!("no GOAWAY: {frames:?}"));
    assert_eq!(
        (g.code, g.debug.as_str(), g.last_stream),
        (ENHANCE_YOUR_CALM, "too_many_continuations", 0),
        "{g:?}"
    );
    assert!(closed, "the connection is closed after the GOAWAY");
    assert!(
        !frames.iter().any(|f| f.0 == HEADERS),
        "no answer to the unfinished header block"
    );
    assert_eq!(origin.request_count(), 0);
    still_served(front).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpack_bomb_is_refused() {
    let origin = Origin::named("o").await;
    // max_header_bytes of 16 KiB: an HTTP/2 header list may decode to twice that
    // (32 KiB, the request path answering 431 for what lies between), and decoding
    // stops for good at four times that (128 KiB).
    let p = TestProxy::start(&config(origin.addr, "max_header_bytes = \"16KiB\"")).await;
    let front = p.addr("front");
    let mut s = h2_raw(front).await;
    // One 4,000-byte header put in the dynamic table (it fits the default 4,096-byte
    // table), then referenced 2,000 times: 8 KB on the wire, 8 MB once decoded.
    let mut block = GET_BLOCK.to_vec();
    block.extend([0x40, 0x01, b'b', 0x7f, 0xa1, 0x1e]); // literal, value length 4,000
    block.extend(std::iter::repeat_n(b'x', 4000));
    block.extend(std::iter::repeat_n(0xbe, 2_000)); // indexed: dynamic entry 62
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
        .await
        .unwrap();
    let (out, closed) = read_until_closed(&mut s).await;
    let frames = parse_frames(&out);
    let g = goaway(&frames).unwrap_or_else(|| panic!("no GOAWAY: {frames:?}"));
    assert_eq!(
        (g.code, g.debug.as_str()),
        (ENHANCE_YOUR_CALM, "header_list_way_too_large"),
        "decoding stopped at the size limit: {g:?}"
    );
    assert!(closed, "the connection is closed after the GOAWAY");
    assert!(
        !frames.iter().any(|f| f.0 == HEADERS),
        "no answer for the bomb's stream: {frames:?}"
    );
    assert_eq!(origin.request_count(), 0, "never forwarded");
    still_served(front).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_limit_are_refused() {
    // Slow until released.
    let (release, released) = tokio::sync::watch::channel(false);
    let origin = Origin::start(move |_req| {
        let mut released = released.clone();
        async move {
            let _ = released.wait_for(|r| *r).await;
            http::Response::new(full("slow"))
        }
    })
    .await;
    let p = TestProxy::start(&config(origin.addr, "max_concurrent_streams = 2")).await;
    let front = p.addr("front");
    let mut s = h2_raw(front).await;
    let mut opens = Vec::new();
    for i in 0..6u32 {
        opens.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            2 * i + 1,
            GET_BLOCK,
        ));
    }
    s.write_all(&opens).await.unwrap();
    eventually("two streams reached the origin", || {
        origin.request_count() == 2
    })
    .await;
    // The others are refused; the two in flight finish.
    let _ = release.send(true);
    let frames = read_frames(&mut s).await;
    let refused = frames
        .iter()
        .filter(|f| {
            f.0 == RST_STREAM
                && u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]]) == REFUSED_STREAM
        })
        .count();
    let goaway = goaway_code(&frames);
    assert!(refused >= 1 || goaway.is_some(), "{frames:?}");
    assert_eq!(
        origin.request_count(),
        2,
        "refused streams never reach the origin"
    );
    still_served(front).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_settings_flooders_are_cut_off_while_others_are_served() {
    let origin = Origin::named("o").await;
    let p = TestProxy::start(&config(
        origin.addr,
        "send_timeout = \"500ms\"\nidle_timeout = \"2s\"",
    ))
    .await;
    let front = p.addr("front");
    // A client that floods PINGs and SETTINGS and never reads the answers: once its
    // socket is full of them, Pylon stops reading it, and after the send timeout
    // closes it.
    let mut s = h2_raw(front).await;
    let mut flood = Vec::new();
    for i in 0..4_096u64 {
        flood.extend(frame(PING, 0, 0, &i.to_be_bytes()));
        flood.extend(frame(SETTINGS, 0, 0, &[]));
    }
    let flooder = tokio::spawn(async move {
        let mut sent = 0usize;
        loop {
            match s.write_all(&flood).await {
                Ok(()) => sent += flood.len(),
                Err(e) => return (sent, e),
            }
        }
    });
    // Others are served meanwhile.
    for _ in 0..20 {
        still_served(front).await;
    }
    let (sent, e) = tokio::time::timeout(DEADLINE, flooder)
        .await
        .expect("the flooder is cut off")
        .unwrap();
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "after {sent} bytes: {e}"
    );
    assert_eq!(
        p.proxy
            .metrics()
            .errors(pylon_proxy::http::error::ErrorKind::SendTimeout),
        1,
        "closed as a client that takes none of its answers"
    );
    still_served(front).await;
}

/// Reads a connection frame by frame.
struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// The next frame (type, flags, stream, payload); None when the server closed.
    async fn next(&mut self, s: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
        loop {
            if self.buf.len() >= 9 {
                let b = &self.buf;
                let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
                if b.len() >= 9 + len {
                    let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
                    let f = (b[3], b[4], stream, b[9..9 + len].to_vec());
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            match tokio::time::timeout(DEADLINE, s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }
}

/// Sets its flag when dropped.
struct SetOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_window_stays_shut_is_reset_after_the_send_timeout() {
    // The stream's own window: SETTINGS_INITIAL_WINDOW_SIZE = 0.
    window_stall(&[0, 4, 0, 0, 0, 0], 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_window_never_reopened_resets_the_stream_after_the_send_timeout() {
    // Default windows, never a WINDOW_UPDATE: the connection's 65,535 bytes go out,
    // then nothing.
    window_stall(&[], 65_535).await;
}

/// A client that reads everything the server sends but, with `settings`, keeps the
/// window shut after `window` bytes of stream 1: the stream is reset (CANCEL) after
/// the send timeout, its upstream response abandoned, and the connection goes on.
async fn window_stall(settings: &[u8], window: usize) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use http_body_util::BodyExt;

    // `/` streams 64 MiB and says when its body is dropped; `/small` is 1 MiB.
    let big_dropped = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&big_dropped);
    let origin = Origin::start(move |req| {
        let flag = Arc::clone(&flag);
        async move {
            if req.uri().path() == "/small" {
                return http::Response::new(full(vec![b's'; 1 << 20]));
            }
            let on_drop = SetOnDrop(flag);
            let chunks = futures_util::stream::iter((0..1024).map(move |_| {
                let _held = &on_drop;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(
                    bytes::Bytes::from(vec![b'x'; 64 * 1024]),
                ))
            }));
            http::Response::new(http_body_util::StreamBody::new(chunks).boxed())
        }
    })
    .await;
    let p = TestProxy::start(&config(origin.addr, "send_timeout = \"300ms\"")).await;
    let front = p.addr("front");

    let mut s = TcpStream::connect(front).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, settings));
    hello.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, GET_BLOCK));
    s.write_all(&hello).await.unwrap();
    let mut reader = FrameReader { buf: Vec::new() };
    let mut status_sent = false;
    let mut data = 0;
    let reset = loop {
        let Some((kind, flags, stream, payload)) = reader.next(&mut s).await else {
            panic!("the connection closed before stream 1 was reset");
        };
        match (kind, stream) {
            (SETTINGS, 0) if flags & ACK == 0 => {
                s.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
            }
            (HEADERS, 1) => status_sent = true,
            (DATA, 1) => {
                data += payload.len();
                assert!(
                    data <= window,
                    "{data} bytes sent into a {window}-byte window"
                );
            }
            (RST_STREAM, 1) => {
                break u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            }
            (GOAWAY, _) => panic!("the connection was closed, not the stream"),
            _ => {}
        }
    };
    assert!(
        status_sent,
        "the response head goes out; only data waits on the window"
    );
    assert_eq!(data, window, "what the window allowed was sent");
    assert_eq!(reset, CANCEL);
    assert_eq!(
        p.proxy
            .metrics()
            .errors(pylon_proxy::http::error::ErrorKind::SendTimeout),
        1
    );
    eventually("the upstream response is abandoned", || {
        big_dropped.load(Ordering::SeqCst)
    })
    .await;

    // The same connection goes on: a new stream whose window the client opens is
    // served in full.
    let small_block: &[u8] = &[
        0x82, 0x86, 0x41, 0x01, b'a', 0x04, 0x06, b'/', b's', b'm', b'a', b'l', b'l',
    ];
    let mut next = frame(HEADERS, END_STREAM | END_HEADERS, 3, small_block);
    next.extend(frame(WINDOW_UPDATE, 0, 0, &(8u32 << 20).to_be_bytes()));
    next.extend(frame(WINDOW_UPDATE, 0, 3, &(8u32 << 20).to_be_bytes()));
    s.write_all(&next).await.unwrap();
    let mut received = 0;
    loop {
        let Some((kind, flags, stream, payload)) = reader.next(&mut s).await else {
            panic!("the connection closed after {received} bytes of stream 3");
        };
        match (kind, stream) {
            (DATA, 3) => {
                received += payload.len();
                if flags & END_STREAM != 0 {
                    break;
                }
            }
            (RST_STREAM, 3) | (GOAWAY, _) => panic!("stream 3 was cut after {received} bytes"),
            _ => {}
        }
    }
    assert_eq!(received, 1 << 20);
    still_served(front).await;
}

/// The requests in flight on the listener `front`, from the metrics.
fn requests_active(p: &TestProxy) -> u64 {
    metric(
        &p.proxy.render_metrics(),
        "pylon_listener_requests_active{listener=\"front\"}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_ends_the_request_waiting_on_its_upstream() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    // `/slow` never answers; anything else does at once.
    let arrived = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&arrived);
    let origin = Origin::start(move |req| {
        let flag = Arc::clone(&flag);
        async move {
            if req.uri().path() == "/slow" {
                flag.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            http::Response::new(full("ok"))
        }
    })
    .await;
    let p = TestProxy::start(&config(origin.addr, "")).await;
    let front = p.addr("front");

    let slow_block: &[u8] = &[
        0x82, 0x86, 0x41, 0x01, b'a', 0x04, 0x05, b'/', b's', b'l', b'o', b'w',
    ];
    let mut s = TcpStream::connect(front).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, slow_block));
    s.write_all(&hello).await.unwrap();
    eventually("the request reaches the origin", || {
        arrived.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(requests_active(&p), 1);

    // The client gives up on it: the request ends in Pylon, its upstream exchange
    // with it, and the connection goes on.
    s.write_all(&frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()))
        .await
        .unwrap();
    eventually("the reset request is no longer in flight", || {
        requests_active(&p) == 0
    })
    .await;
    let mut next = frame(HEADERS, END_STREAM | END_HEADERS, 3, GET_BLOCK);
    next.extend(frame(SETTINGS, ACK, 0, &[]));
    s.write_all(&next).await.unwrap();
    let mut reader = FrameReader { buf: Vec::new() };
    loop {
        let Some((kind, flags, stream, payload)) = reader.next(&mut s).await else {
            panic!("the connection closed after the reset");
        };
        match (kind, stream) {
            (DATA, 3) if flags & END_STREAM != 0 => {
                assert_eq!(payload, b"ok");
                break;
            }
            (RST_STREAM, 3) | (GOAWAY, _) => panic!("stream 3 was not answered"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_answer_waits_for_a_shut_window_and_then_arrives_whole() {
    let origin = Origin::named("short").await;
    let p = TestProxy::start(&config(origin.addr, "")).await;
    let front = p.addr("front");

    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no stream may carry data until its window
    // opens.
    let mut s = TcpStream::connect(front).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    hello.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, GET_BLOCK));
    s.write_all(&hello).await.unwrap();
    let mut reader = FrameReader { buf: Vec::new() };
    loop {
        let Some((kind, flags, stream, _)) = reader.next(&mut s).await else {
            panic!("the connection closed before the answer's head");
        };
        match (kind, stream) {
            (SETTINGS, 0) if flags & ACK == 0 => {
                s.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
            }
            (HEADERS, 1) => break,
            (DATA, 1) => panic!("data sent into a shut window"),
            (RST_STREAM, 1) | (GOAWAY, _) => panic!("stream 1 was cut"),
            _ => {}
        }
    }
    // The window opens: the whole body follows, and the stream ends.
    s.write_all(&frame(WINDOW_UPDATE, 0, 1, &(1u32 << 16).to_be_bytes()))
        .await
        .unwrap();
    let mut body = Vec::new();
    loop {
        let Some((kind, flags, stream, payload)) = reader.next(&mut s).await else {
            panic!("the connection closed after {} bytes", body.len());
        };
        match (kind, stream) {
            (DATA, 1) => {
                body.extend_from_slice(&payload);
                if flags & END_STREAM != 0 {
                    break;
                }
            }
            (RST_STREAM, 1) | (GOAWAY, _) => panic!("stream 1 was cut"),
            _ => {}
        }
    }
    assert_eq!(body, b"short");
}
