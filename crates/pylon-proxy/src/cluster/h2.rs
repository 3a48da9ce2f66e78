//! HTTP/2 connections to one endpoint. A request takes a stream on the least-loaded
//! live connection that has one free under the peer's `SETTINGS_MAX_CONCURRENT_STREAMS`
//! (read off the wire by [`SettingsWatch`], since hyper does not expose it); when every
//! connection is full another one opens, up to `max_h2_connections`, past which the
//! least-loaded one queues the request until a stream frees. A stream is counted from
//! the request until its response body ends ([`H2Stream`]). PING keepalive (hyper's)
//! closes a connection whose peer stopped answering; the next request opens a new one.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::client::conn::http2;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::cluster::body::RequestBody;
use crate::lock;

/// What a connection carries now, and since when it has carried nothing.
struct Load {
    streams: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// The peer's stream limit: `None` until its first SETTINGS frame arrives; `u32::MAX`
/// when it sets none.
type PeerLimit = Arc<watch::Sender<Option<u32>>>;

/// One open HTTP/2 connection.
pub(super) struct H2Conn {
    sender: http2::SendRequest<RequestBody>,
    load: Arc<Load>,
    peer: PeerLimit,
}

impl H2Conn {
    pub(super) fn new(sender: http2::SendRequest<RequestBody>, peer: PeerLimit) -> Self {
        H2Conn {
            sender,
            load: Arc::new(Load {
                streams: AtomicUsize::new(0),
                idle_since: Mutex::new(Instant::now()),
            }),
            peer,
        }
    }

    fn streams(&self) -> usize {
        self.load.streams.load(Ordering::Relaxed)
    }

    /// Whether a new stream fits under the peer's limit. Before its SETTINGS arrive
    /// only the first stream does (the one the connection was opened for).
    fn has_room(&self) -> bool {
        match *self.peer.borrow() {
            Some(max) => self.streams() < max as usize,
            None => self.streams() == 0,
        }
    }

    fn limit_known(&self) -> bool {
        self.peer.borrow().is_some()
    }

    /// A stream on this connection, counted until the returned guard drops.
    pub(super) fn lend(&self) -> (http2::SendRequest<RequestBody>, H2Stream) {
        self.load.streams.fetch_add(1, Ordering::Relaxed);
        (self.sender.clone(), H2Stream(Arc::clone(&self.load)))
    }

    fn idle_for(&self, now: Instant) -> Option<Duration> {
        (self.streams() == 0).then(|| now.saturating_duration_since(*lock(&self.load.idle_since)))
    }
}

/// A stream counted on its connection; dropping it ends the count.
pub struct H2Stream(Arc<Load>);

impl Drop for H2Stream {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::Relaxed) == 1 {
            *lock(&self.0.idle_since) = Instant::now();
        }
    }
}

/// What a request should do with the connections there are.
pub(super) enum Choice {
    /// Take a stream on this one.
    Use(http2::SendRequest<RequestBody>, H2Stream),
    /// Wait for this connection's SETTINGS, then choose again.
    Wait(PeerLimit),
    /// Open another connection.
    Open,
}

/// The HTTP/2 connections of one endpoint.
pub(super) struct H2Set {
    conns: Mutex<Vec<H2Conn>>,
    /// One opener at a time.
    pub(super) connecting: tokio::sync::Mutex<()>,
    max: usize,
}

impl H2Set {
    pub(super) fn new(max: usize) -> Self {
        H2Set {
            conns: Mutex::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(()),
            max: max.max(1),
        }
    }

    /// Live connections now.
    pub(super) fn live(&self) -> usize {
        let mut conns = lock(&self.conns);
        conns.retain(|c| !c.sender.is_closed());
        conns.len()
    }

    /// Streams in flight now, all connections together.
    pub(super) fn streams(&self) -> usize {
        lock(&self.conns).iter().map(H2Conn::streams).sum()
    }

    pub(super) fn add(&self, conn: H2Conn) {
        lock(&self.conns).push(conn);
    }

    /// The least-loaded live connection with a stream free; else a connection whose
    /// limit is not known yet to wait for; else another connection while under the
    /// cap; else the least-loaded one (the request waits there for a stream).
    pub(super) fn choose(&self) -> Choice {
        let mut conns = lock(&self.conns);
        conns.retain(|c| !c.sender.is_closed());
        let least = |room: bool| {
            conns
                .iter()
                .filter(|c| !room || c.has_room())
                .min_by_key(|c| c.streams())
        };
        if let Some(c) = least(true) {
            let (sender, stream) = c.lend();
            return Choice::Use(sender, stream);
        }
        if let Some(c) = conns.iter().find(|c| !c.limit_known()) {
            return Choice::Wait(Arc::clone(&c.peer));
        }
        if conns.len() < self.max {
            return Choice::Open;
        }
        match least(false) {
            Some(c) => {
                let (sender, stream) = c.lend();
                Choice::Use(sender, stream)
            }
            None => Choice::Open,
        }
    }

    /// Drops closed connections and those without a stream for `idle_timeout`, but
    /// keeps one live connection when `keep_one` (warm connections); true when one
    /// was dropped.
    pub(super) fn sweep(&self, idle_timeout: Duration, keep_one: bool) -> bool {
        let now = Instant::now();
        let mut conns = lock(&self.conns);
        let before = conns.len();
        conns.retain(|c| !c.sender.is_closed());
        let mut kept = 0;
        let live = conns.len();
        let mut index = 0;
        conns.retain(|c| {
            index += 1;
            let expired = c.idle_for(now).is_some_and(|d| d >= idle_timeout);
            // The last live connection stays when asked to, however idle.
            let spare = keep_one && kept == 0 && index == live;
            let keep = !expired || spare;
            kept += usize::from(keep);
            keep
        });
        conns.len() != before
    }
}

/// Waits (up to `limit`) for the peer's first SETTINGS; a peer that sends none within
/// it is taken as setting no limit.
pub(super) async fn wait_for_settings(peer: &PeerLimit, limit: Duration) {
    let mut rx = peer.subscribe();
    if tokio::time::timeout(limit, rx.wait_for(Option::is_some))
        .await
        .is_err()
    {
        peer.send_if_modified(|v| v.is_none() && v.replace(u32::MAX).is_none());
    }
}

/// A new peer-limit cell, empty until the connection's SETTINGS arrive.
pub(super) fn peer_limit() -> PeerLimit {
    Arc::new(watch::Sender::new(None))
}

/// An HTTP/2 client connection's IO, watching what the server sends for its
/// `SETTINGS_MAX_CONCURRENT_STREAMS`. Writes pass through untouched.
pub(super) struct SettingsWatch<T> {
    inner: T,
    scan: FrameScan,
    peer: PeerLimit,
}

impl<T> SettingsWatch<T> {
    pub(super) fn new(inner: T, peer: PeerLimit) -> Self {
        SettingsWatch {
            inner,
            scan: FrameScan::default(),
            peer,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SettingsWatch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            for setting in this.scan.feed(&buf.filled()[before..]) {
                match setting {
                    Some(max) => {
                        this.peer.send_replace(Some(max));
                    }
                    None => {
                        this.peer
                            .send_if_modified(|v| v.is_none() && v.replace(u32::MAX).is_none());
                    }
                }
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SettingsWatch<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// SETTINGS payload kept at most (a peer sends a handful of 6-byte entries).
const MAX_SETTINGS_PAYLOAD: usize = 6 * 64;

/// Finds frame boundaries in the bytes a server sends, across reads, and reads the
/// SETTINGS frames among them.
#[derive(Default)]
struct FrameScan {
    head: [u8; FRAME_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    /// The payload of the SETTINGS frame being read.
    settings: Option<Vec<u8>>,
}

impl FrameScan {
    /// Feeds bytes; returns one entry per SETTINGS frame (not ACK) completed in them:
    /// the `SETTINGS_MAX_CONCURRENT_STREAMS` it sets, if it sets one.
    fn feed(&mut self, mut data: &[u8]) -> Vec<Option<u32>> {
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.left == 0 {
                let n = (FRAME_HEADER - self.have).min(data.len());
                self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have < FRAME_HEADER {
                    break;
                }
                self.have = 0;
                let h = &self.head;
                let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                let settings = h[3] == SETTINGS && h[4] & ACK == 0 && stream == 0;
                self.left = len;
                if settings {
                    if len == 0 {
                        out.push(None);
                    } else {
                        self.settings = Some(Vec::with_capacity(len.min(MAX_SETTINGS_PAYLOAD)));
                    }
                }
                continue;
            }
            let n = self.left.min(data.len());
            if let Some(buf) = &mut self.settings {
                let room = MAX_SETTINGS_PAYLOAD.saturating_sub(buf.len());
                buf.extend_from_slice(&data[..n.min(room)]);
            }
            self.left -= n;
            data = &data[n..];
            if self.left == 0
                && let Some(buf) = self.settings.take()
            {
                out.push(max_concurrent_streams(&buf));
            }
        }
        out
    }
}

fn max_concurrent_streams(payload: &[u8]) -> Option<u32> {
    payload
        .chunks_exact(6)
        .filter(|e| u16::from_be_bytes([e[0], e[1]]) == MAX_CONCURRENT_STREAMS)
        .map(|e| u32::from_be_bytes([e[2], e[3], e[4], e[5]]))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::FrameScan;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn setting(id: u16, value: u32) -> Vec<u8> {
        let mut e = id.to_be_bytes().to_vec();
        e.extend_from_slice(&value.to_be_bytes());
        e
    }

    #[test]
    fn settings_are_read_across_reads_of_any_size() {
        let mut wire = Vec::new();
        let mut first = setting(0x4, 65_535);
        first.extend(setting(0x3, 2));
        wire.extend(frame(0x4, 0, 0, &first));
        wire.extend(frame(0x8, 0, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE
        wire.extend(frame(0x4, 0x1, 0, &[])); // SETTINGS ACK: not a setting
        wire.extend(frame(0x0, 0x1, 1, &[7; 300])); // DATA
        wire.extend(frame(0x4, 0, 0, &setting(0x3, 100)));
        wire.extend(frame(0x4, 0, 0, &[])); // empty SETTINGS
        for chunk in [1, 2, 5, 9, 10, 64, wire.len()] {
            let mut scan = FrameScan::default();
            let mut seen = Vec::new();
            for part in wire.chunks(chunk) {
                seen.extend(scan.feed(part));
            }
            assert_eq!(seen, vec![Some(2), Some(100), None], "chunks of {chunk}");
        }
    }

    #[test]
    fn a_settings_frame_on_a_stream_or_without_the_limit_sets_nothing() {
        let mut scan = FrameScan::default();
        let mut wire = frame(0x4, 0, 3, &setting(0x3, 9));
        wire.extend(frame(0x4, 0, 0, &setting(0x4, 1)));
        assert_eq!(scan.feed(&wire), vec![None]);
    }
}
