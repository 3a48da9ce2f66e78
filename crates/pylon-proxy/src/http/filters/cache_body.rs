//! The cache filter's bodies: a stored response's chunks as a body, a reader of a fill
//! in progress as a body, and the task that feeds a fill from the upstream's body and
//! stores the response once it is whole.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pylon_cache::{Entry, FillFrame, FillReader, FillWriter, Key, Zone};

use crate::http::body::{BoxError, ResponseBody};

/// A stored response's body: its chunks, then its trailers.
pub(super) struct StoredBody {
    entry: Arc<Entry>,
    next: usize,
    trailers_sent: bool,
}

impl StoredBody {
    pub(super) fn body(entry: Arc<Entry>) -> ResponseBody {
        if entry.trailers.is_none() && entry.body.len() <= 1 {
            return ResponseBody::full(entry.body.first().cloned().unwrap_or_default());
        }
        ResponseBody::boxed(StoredBody {
            entry,
            next: 0,
            trailers_sent: false,
        })
    }
}

impl Body for StoredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.entry.body.get(this.next) {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if !this.trailers_sent {
            this.trailers_sent = true;
            if let Some(t) = &this.entry.trailers {
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.entry.body.len() && (self.trailers_sent || self.entry.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let left: u64 = self.entry.body[self.next.min(self.entry.body.len())..]
            .iter()
            .map(|b| b.len() as u64)
            .sum();
        SizeHint::with_exact(left)
    }
}

/// A fill's body as one client reads it, as it arrives.
pub(super) struct FillBody {
    reader: FillReader,
    /// The declared length, for the size hint.
    len: Option<u64>,
    read: u64,
}

impl FillBody {
    pub(super) fn body(reader: FillReader, len: Option<u64>) -> ResponseBody {
        ResponseBody::boxed(FillBody {
            reader,
            len,
            read: 0,
        })
    }
}

impl Body for FillBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match std::task::ready!(this.reader.poll_frame(cx)) {
            Some(Ok(FillFrame::Data(b))) => {
                this.read += b.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Some(Ok(FillFrame::Trailers(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(n) => SizeHint::with_exact(n.saturating_sub(self.read)),
            None => SizeHint::default(),
        }
    }
}

/// Feeds `writer` from the upstream `body` until it ends, then stores the whole
/// response under `key`. Runs in its own task, so the fill completes (and is stored)
/// whatever its readers do; it stops early only when no one reads a fill that no
/// longer stores. A body that fails stores nothing and fails the readers.
pub(super) async fn drive_fill(
    mut body: ResponseBody,
    mut writer: FillWriter,
    zone: Arc<Zone>,
    key: Key,
    started: Instant,
) {
    let mut trailers: Option<HeaderMap> = None;
    loop {
        if !writer.room().await {
            return;
        }
        let Ok(frame) = tokio::time::timeout(FILL_IDLE_TIMEOUT, body.frame()).await else {
            pylon_cache::ZoneStats::add(&zone.stats.fills_failed);
            tracing::warn!(zone = zone.name(), key = %key.text, "cache fill: no body bytes from the upstream for {FILL_IDLE_TIMEOUT:?}; nothing stored");
            return;
        };
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if !data.is_empty() {
                        writer.push(data);
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                }
            },
            Some(Err(e)) => {
                pylon_cache::ZoneStats::add(&zone.stats.fills_failed);
                tracing::debug!(zone = zone.name(), key = %key.text, error = %e, "cache fill failed: nothing stored");
                return;
            }
            None => break,
        }
    }
    if let Some(entry) = writer.finish(trailers) {
        store(&zone, &key, Arc::new(entry), started);
    }
    // Out of the registry only now: a request for the key finds the stored entry.
    drop(writer);
}

/// A fill whose upstream sends nothing for this long fails (its readers are cut, its
/// upstream connection closed, nothing stored).
pub(super) const FILL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Stores a whole response fetched since `started`: in memory at once, on the disk tier
/// (when the zone has one) from the blocking pool; not at all when its URL was
/// invalidated or purged meanwhile (it would bring the old answer back).
pub(super) fn store(zone: &Arc<Zone>, key: &Key, entry: Arc<Entry>, started: Instant) {
    if zone.removed_since(key, started) || !zone.insert(key, Arc::clone(&entry)) {
        return;
    }
    let Some(disk) = zone.disk.clone() else {
        return;
    };
    // A bounded queue: past it the answer stays in memory only.
    let Some(slot) = disk.begin_write() else {
        return;
    };
    let (zone, key) = (Arc::clone(zone), key.clone());
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        if let Err(e) = disk.write(&key.text, &entry) {
            tracing::warn!(zone = zone.name(), key = %key.text, error = %e, "cache: disk tier write failed");
        } else if zone.removed_since(&key, started) {
            // Purged while it was being written.
            disk.remove_key(&key.text);
        }
    });
}
