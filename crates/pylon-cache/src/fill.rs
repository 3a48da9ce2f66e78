//! Request collapsing and streaming fills. The first request that misses a key becomes
//! its fill's leader ([`Fills::join`]); requests for the same key that arrive while the
//! fill is in progress follow it: they wait for its head (with the zone's lock timeout,
//! applied by the caller), then read its body as it arrives, as the leader's own client
//! does. One upstream request serves them all (Varnish's waiting list, NGINX's
//! `proxy_cache_lock`, but streamed).
//!
//! The writer keeps every chunk while the body may still be stored (up to the zone's
//! largest object). Past that the fill stops storing, leaves the registry (later requests
//! go upstream on their own) and becomes a bounded relay: chunks every reader has read
//! are dropped, and the writer waits while more than [`RELAY_WINDOW`] bytes are unread.
//! A fill whose writer ends without finishing (upstream error, process stop) fails its
//! readers and stores nothing.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;

use crate::entry::{Entry, Head};

/// Unread bytes a fill that no longer stores holds for its slowest reader.
pub const RELAY_WINDOW: u64 = 256 * 1024;

/// The fills in progress of a zone, by key.
#[derive(Default)]
pub struct Fills {
    map: Arc<Mutex<HashMap<String, Arc<Fill>>>>,
}

/// What [`Fills::join`] made of a request.
pub enum Joined {
    /// It fetches for everyone: its slot, to start the fill once it has a head.
    Leader(FillSlot),
    /// Another request is fetching it.
    Follower(Arc<Fill>),
}

impl Fills {
    /// Joins the fill of `key`, or starts one.
    pub fn join(&self, key: &str) -> Joined {
        let mut map = lock(&self.map);
        if let Some(f) = map.get(key) {
            return Joined::Follower(Arc::clone(f));
        }
        let fill = Arc::new(Fill::default());
        map.insert(key.to_owned(), Arc::clone(&fill));
        Joined::Leader(FillSlot {
            registry: Some(Registration {
                map: Arc::clone(&self.map),
                key: key.to_owned(),
                fill: Some(Arc::clone(&fill)),
            }),
            fill,
        })
    }

    /// Whether a fill of `key` is in progress.
    pub fn contains(&self, key: &str) -> bool {
        lock(&self.map).contains_key(key)
    }

    /// Fills in progress.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A fill's place in the registry, given up once (when it stops taking followers).
struct Registration {
    map: Arc<Mutex<HashMap<String, Arc<Fill>>>>,
    key: String,
    fill: Option<Arc<Fill>>,
}

impl Registration {
    fn leave(&mut self) {
        if let Some(fill) = self.fill.take() {
            let mut map = lock(&self.map);
            if map.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, &fill)) {
                map.remove(&self.key);
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The head a follower waits for.
#[derive(Debug, Clone)]
pub enum HeadOutcome {
    /// The response is being stored: read it from the fill.
    Ready(Arc<Head>),
    /// The leader got nothing storable (or failed): go to the upstream alone.
    Abandoned,
}

#[derive(Default)]
enum End {
    #[default]
    Open,
    Done(Option<HeaderMap>),
    Failed,
}

#[derive(Default)]
struct State {
    head: Option<HeadOutcome>,
    chunks: VecDeque<Bytes>,
    /// The index of `chunks[0]` in the whole body.
    base: usize,
    /// Bytes in `chunks`.
    held: u64,
    /// All bytes pushed.
    total: u64,
    end: End,
    /// Still keeping everything, to store it.
    storing: bool,
    /// Each reader's next chunk index.
    readers: HashMap<u64, usize>,
    next_reader: u64,
    wakers: Vec<Waker>,
    writer: Option<Waker>,
}

impl State {
    /// Remembers a waker once (a task polled again before anything happened is not
    /// added twice, so the list stays as long as the waiting tasks).
    fn register(&mut self, waker: &Waker) {
        if !self.wakers.iter().any(|w| w.will_wake(waker)) {
            self.wakers.push(waker.clone());
        }
    }

    fn wake_all(&mut self) {
        for w in self.wakers.drain(..) {
            w.wake();
        }
    }

    /// In relay mode: drops chunks every reader has read, and wakes the writer when
    /// that made room.
    fn trim(&mut self) {
        if self.storing {
            return;
        }
        let lowest = self
            .readers
            .values()
            .copied()
            .min()
            .unwrap_or(self.base + self.chunks.len());
        while self.base < lowest {
            match self.chunks.pop_front() {
                Some(c) => {
                    self.held -= c.len() as u64;
                    self.base += 1;
                }
                None => break,
            }
        }
        if self.held <= RELAY_WINDOW
            && let Some(w) = self.writer.take()
        {
            w.wake();
        }
    }
}

/// One fill: its head and the body so far.
#[derive(Default)]
pub struct Fill {
    state: Mutex<State>,
}

impl Fill {
    /// Waits for the leader's head (or its abandoning the fill).
    pub fn head(self: &Arc<Self>) -> HeadWait {
        HeadWait(Arc::clone(self))
    }

    /// A reader from the body's start; `None` once the fill no longer holds it whole
    /// (it stopped storing).
    pub fn reader(self: &Arc<Self>) -> Option<FillReader> {
        let mut st = lock(&self.state);
        if st.base > 0 || matches!(st.end, End::Failed) {
            return None;
        }
        let id = st.next_reader;
        st.next_reader += 1;
        st.readers.insert(id, 0);
        Some(FillReader {
            fill: Arc::clone(self),
            id,
            trailers_sent: false,
        })
    }
}

/// The future of [`Fill::head`].
pub struct HeadWait(Arc<Fill>);

impl Future for HeadWait {
    type Output = HeadOutcome;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<HeadOutcome> {
        let mut st = lock(&self.0.state);
        match &st.head {
            Some(h) => Poll::Ready(h.clone()),
            None => {
                st.register(cx.waker());
                Poll::Pending
            }
        }
    }
}

/// The leader's claim on a fill, before its head. Dropped unused, it abandons the fill:
/// its followers go to the upstream on their own.
pub struct FillSlot {
    registry: Option<Registration>,
    fill: Arc<Fill>,
}

impl FillSlot {
    /// Starts the fill with the head to store: followers wake. The writer for the
    /// upstream body, and the leader's own reader. A head that others may not reuse
    /// as it is (`shared` false: no freshness left, `no-cache`) is stored but not
    /// shared: its followers go to the upstream on their own, and later requests do
    /// not wait for it.
    pub fn start(
        mut self,
        head: Arc<Head>,
        max_object: u64,
        shared: bool,
    ) -> (FillWriter, FillReader) {
        let fill = Arc::clone(&self.fill);
        let mut registry = self.registry.take().unwrap_or(Registration {
            map: Arc::default(),
            key: String::new(),
            fill: None,
        });
        if !shared {
            registry.leave();
        }
        let reader = {
            let mut st = lock(&fill.state);
            st.head = Some(if shared {
                HeadOutcome::Ready(Arc::clone(&head))
            } else {
                HeadOutcome::Abandoned
            });
            st.storing = true;
            st.readers.insert(0, 0);
            st.next_reader = 1;
            st.wake_all();
            FillReader {
                fill: Arc::clone(&fill),
                id: 0,
                trailers_sent: false,
            }
        };
        (
            FillWriter {
                registry,
                fill,
                head,
                max_object,
                finished: false,
            },
            reader,
        )
    }
}

impl Drop for FillSlot {
    fn drop(&mut self) {
        let mut st = lock(&self.fill.state);
        if st.head.is_none() {
            st.head = Some(HeadOutcome::Abandoned);
            st.end = End::Failed;
            st.wake_all();
        }
    }
}

/// Feeds a fill from the upstream body.
pub struct FillWriter {
    registry: Registration,
    fill: Arc<Fill>,
    head: Arc<Head>,
    max_object: u64,
    finished: bool,
}

impl FillWriter {
    /// Ready to take the next chunk: `true` to go on, `false` when no one reads any
    /// more and nothing will be stored (the upstream body may be dropped).
    pub fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut st = lock(&self.fill.state);
        if st.storing {
            return Poll::Ready(true);
        }
        if st.readers.is_empty() {
            return Poll::Ready(false);
        }
        if st.held <= RELAY_WINDOW {
            return Poll::Ready(true);
        }
        st.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Waits for room (see [`FillWriter::poll_room`]).
    pub async fn room(&mut self) -> bool {
        std::future::poll_fn(|cx| self.poll_room(cx)).await
    }

    /// Appends a chunk of the body.
    pub fn push(&mut self, chunk: Bytes) {
        let stop_storing = {
            let mut st = lock(&self.fill.state);
            st.total += chunk.len() as u64;
            st.held += chunk.len() as u64;
            st.chunks.push_back(chunk);
            let over = st.storing && st.total > self.max_object;
            if over {
                st.storing = false;
            }
            st.trim();
            st.wake_all();
            over
        };
        if stop_storing {
            self.registry.leave();
        }
    }

    /// Whether the fill still keeps the whole body (to store it).
    pub fn storing(&self) -> bool {
        lock(&self.fill.state).storing
    }

    /// The body ended: readers finish, and the whole response to store, when the fill
    /// kept it (and its length agrees with a declared `Content-Length`). The fill stays
    /// in the registry until the writer is dropped, so that the caller can store the
    /// entry first (no request between the two misses both).
    pub fn finish(&mut self, trailers: Option<HeaderMap>) -> Option<Entry> {
        self.finished = true;
        let mut st = lock(&self.fill.state);
        let whole = st.storing && self.head.content_length().is_none_or(|n| n == st.total);
        let entry = whole.then(|| {
            Entry::new(
                (*self.head).clone(),
                st.chunks.iter().cloned().collect(),
                trailers.clone(),
            )
        });
        st.end = End::Done(trailers);
        st.wake_all();
        entry
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        if !self.finished {
            let mut st = lock(&self.fill.state);
            st.end = End::Failed;
            st.wake_all();
        }
    }
}

/// One frame a reader gets.
#[derive(Debug)]
pub enum FillFrame {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// The fill broke off (its upstream failed): the reader's response is incomplete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillFailed;

impl std::fmt::Display for FillFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the cache fill this response streamed from failed")
    }
}

impl std::error::Error for FillFailed {}

/// Reads a fill's body from its start, as it arrives.
pub struct FillReader {
    fill: Arc<Fill>,
    id: u64,
    trailers_sent: bool,
}

impl FillReader {
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<FillFrame, FillFailed>>> {
        let mut st = lock(&self.fill.state);
        let pos = st.readers.get(&self.id).copied().unwrap_or(usize::MAX);
        if pos >= st.base && pos < st.base + st.chunks.len() {
            let chunk = st.chunks[pos - st.base].clone();
            st.readers.insert(self.id, pos + 1);
            st.trim();
            return Poll::Ready(Some(Ok(FillFrame::Data(chunk))));
        }
        match &st.end {
            End::Done(trailers) => {
                if !self.trailers_sent {
                    self.trailers_sent = true;
                    if let Some(t) = trailers {
                        return Poll::Ready(Some(Ok(FillFrame::Trailers(t.clone()))));
                    }
                }
                Poll::Ready(None)
            }
            End::Failed => Poll::Ready(Some(Err(FillFailed))),
            End::Open => {
                st.register(cx.waker());
                Poll::Pending
            }
        }
    }

    /// Bytes the whole body has, when it is known (ended).
    pub fn is_end(&self) -> bool {
        let st = lock(&self.fill.state);
        matches!(st.end, End::Done(_))
            && st
                .readers
                .get(&self.id)
                .is_some_and(|p| *p >= st.base + st.chunks.len())
            && (self.trailers_sent || matches!(st.end, End::Done(None)))
    }
}

impl Drop for FillReader {
    fn drop(&mut self) {
        let mut st = lock(&self.fill.state);
        st.readers.remove(&self.id);
        st.trim();
        if st.readers.is_empty()
            && let Some(w) = st.writer.take()
        {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Freshness;
    use http::StatusCode;
    use std::task::Waker;
    use std::time::{Duration, SystemTime};

    fn head(len: Option<u64>) -> Arc<Head> {
        let mut h = HeaderMap::new();
        if let Some(n) = len {
            h.insert(http::header::CONTENT_LENGTH, n.into());
        }
        let f = Freshness {
            request_time: SystemTime::UNIX_EPOCH,
            response_time: SystemTime::UNIX_EPOCH,
            date: SystemTime::UNIX_EPOCH,
            age_value: 0,
            lifetime: Duration::from_secs(60),
            heuristic: false,
            must_revalidate: false,
            no_cache: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        };
        Arc::new(Head::new(
            StatusCode::OK,
            h,
            &Default::default(),
            f,
            vec![],
            vec![],
        ))
    }

    fn poll<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        let mut cx = Context::from_waker(Waker::noop());
        f(&mut cx)
    }

    fn read_all(r: &mut FillReader) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        loop {
            match poll(|cx| r.poll_frame(cx)) {
                Poll::Ready(Some(Ok(FillFrame::Data(b)))) => out.extend_from_slice(&b),
                Poll::Ready(Some(Ok(FillFrame::Trailers(_)))) => {}
                Poll::Ready(None) => return (out, true),
                Poll::Ready(Some(Err(_))) | Poll::Pending => return (out, false),
            }
        }
    }

    #[test]
    fn followers_share_the_leaders_fill_and_the_whole_body_is_stored() {
        let fills = Fills::default();
        let Joined::Leader(slot) = fills.join("k") else {
            panic!("leader")
        };
        let Joined::Follower(f) = fills.join("k") else {
            panic!("follower")
        };
        let mut wait = f.head();
        assert!(poll(|cx| Pin::new(&mut wait).poll(cx)).is_pending());
        let (mut w, mut leader) = slot.start(head(Some(6)), 1024, true);
        assert!(matches!(
            poll(|cx| Pin::new(&mut wait).poll(cx)),
            Poll::Ready(HeadOutcome::Ready(_))
        ));
        let mut follower = f.reader().expect("reader");
        w.push(Bytes::from_static(b"abc"));
        assert_eq!(read_all(&mut follower), (b"abc".to_vec(), false));
        w.push(Bytes::from_static(b"def"));
        let entry = w.finish(None).expect("stored");
        // Still registered until the writer goes (its entry is stored first).
        assert!(!fills.is_empty());
        drop(w);
        assert_eq!(entry.len, 6);
        assert_eq!(read_all(&mut leader), (b"abcdef".to_vec(), true));
        assert_eq!(read_all(&mut follower), (b"def".to_vec(), true));
        // A late joiner of the same fill still reads it whole.
        assert_eq!(
            read_all(&mut f.reader().expect("reader")),
            (b"abcdef".to_vec(), true)
        );
        assert!(fills.is_empty());
    }

    #[test]
    fn an_abandoned_slot_sends_followers_upstream_and_a_dropped_writer_fails_readers() {
        let fills = Fills::default();
        let Joined::Leader(slot) = fills.join("k") else {
            panic!("leader")
        };
        let Joined::Follower(f) = fills.join("k") else {
            panic!("follower")
        };
        drop(slot);
        assert!(matches!(
            poll(|cx| Pin::new(&mut f.head()).poll(cx)),
            Poll::Ready(HeadOutcome::Abandoned)
        ));
        assert!(fills.is_empty());
        let Joined::Leader(slot) = fills.join("k") else {
            panic!("leader")
        };
        let (mut w, mut r) = slot.start(head(None), 1024, true);
        w.push(Bytes::from_static(b"x"));
        drop(w);
        assert_eq!(read_all(&mut r), (b"x".to_vec(), false));
        assert!(matches!(
            poll(|cx| r.poll_frame(cx)),
            Poll::Ready(Some(Err(FillFailed)))
        ));
    }

    #[test]
    fn a_head_that_may_not_be_shared_sends_followers_upstream_at_once() {
        let fills = Fills::default();
        let Joined::Leader(slot) = fills.join("k") else {
            panic!("leader")
        };
        let Joined::Follower(f) = fills.join("k") else {
            panic!("follower")
        };
        let (mut w, mut r) = slot.start(head(None), 1024, false);
        assert!(matches!(
            poll(|cx| Pin::new(&mut f.head()).poll(cx)),
            Poll::Ready(HeadOutcome::Abandoned)
        ));
        assert!(fills.is_empty(), "later requests lead their own fills");
        w.push(Bytes::from_static(b"mine"));
        assert!(w.finish(None).is_some(), "still stored");
        assert_eq!(read_all(&mut r), (b"mine".to_vec(), true));
    }

    #[test]
    fn a_body_shorter_than_its_content_length_is_not_stored() {
        let fills = Fills::default();
        let Joined::Leader(slot) = fills.join("k") else {
            panic!("leader")
        };
        let (mut w, _r) = slot.start(head(Some(10)), 1024, true);
        w.push(Bytes::from_static(b"short"));
        assert!(w.finish(None).is_none());
    }

    #[test]
    fn past_the_largest_object_the_fill_relays_within_a_window_and_stores_nothing() {
        let fills = Fills::default();
        let Joined::Leader(slot) = fills.join("k") else {
            panic!("leader")
        };
        let (mut w, mut r) = slot.start(head(None), 100, true);
        let chunk = Bytes::from(vec![0u8; 64 * 1024]);
        w.push(chunk.clone());
        w.push(chunk.clone());
        assert!(!w.storing());
        // It left the registry: a new request leads its own fill.
        assert!(matches!(fills.join("k"), Joined::Leader(_)));
        for _ in 0..4 {
            w.push(chunk.clone());
        }
        // Six chunks unread: more than the window, the writer waits for the reader.
        assert!(poll(|cx| w.poll_room(cx)).is_pending());
        let (got, _) = read_all(&mut r);
        assert_eq!(got.len(), 6 * 64 * 1024);
        assert_eq!(poll(|cx| w.poll_room(cx)), Poll::Ready(true));
        drop(r);
        // No reader left and nothing to store: the writer may stop.
        assert_eq!(poll(|cx| w.poll_room(cx)), Poll::Ready(false));
        assert!(w.finish(None).is_none());
    }
}
