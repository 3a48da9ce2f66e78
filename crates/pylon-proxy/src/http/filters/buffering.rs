//! Request and response buffering on a route (NGINX's `proxy_request_buffering` and
//! `proxy_buffering`):
//!
//! - `request_buffering`: the request body is read whole before the upstream is chosen
//!   and contacted, in memory up to `memory` and past it in an unlinked temporary file,
//!   at most `max` (else 413 `body_too_large`). A slow upload then never holds an
//!   upstream connection, and the body goes upstream with its `Content-Length` (and
//!   can be replayed by retries within their bound).
//! - `response_buffering`: the upstream's answer is read ahead of the client into up to
//!   `max` bytes by a task of its own, so a slow client does not hold the upstream
//!   connection for longer than the answer takes to arrive.
//!
//! Streaming stays the default; both are bounded.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use pylon_config::model::{Action, Buffering};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::{Filter, FilterCtx, FilterSite, Lookup};
use crate::cluster::body::BoxError;
use crate::conn::ClientBody;
use crate::http::body::ResponseBody;
use crate::http::error::ErrorKind;

pub(super) fn build(site: &FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    let Action::Proxy(p) = &site.route.action else {
        return None;
    };
    if p.request_buffering.is_none() && p.response_buffering.is_none() {
        return None;
    }
    Some(Arc::new(Buffers {
        request: p.request_buffering,
        response: p.response_buffering,
    }))
}

struct Buffers {
    request: Option<Buffering>,
    response: Option<Buffering>,
}

/// A request body read whole: the part in memory, then the rest from a file.
struct Buffered {
    memory: VecDeque<Bytes>,
    file: Option<(tokio::fs::File, u64)>,
    left: u64,
}

impl Body for Buffered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(b) = self.memory.pop_front() {
            self.left -= b.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        let this = self.as_mut().get_mut();
        let Some((file, remaining)) = &mut this.file else {
            return Poll::Ready(None);
        };
        if *remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from((*remaining).min(256 * 1024)).unwrap_or(256 * 1024);
        let mut buf = bytes::BytesMut::with_capacity(want);
        match tokio_util::io::poll_read_buf(Pin::new(file), cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(Ok(0)) => Poll::Ready(Some(Err("the buffer file ended early".into()))),
            Poll::Ready(Ok(n)) => {
                let n = (n as u64).min(*remaining);
                buf.truncate(usize::try_from(n).unwrap_or(0));
                *remaining -= n;
                this.left -= n;
                Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

impl Buffers {
    /// Reads the request body whole (memory, then a temporary file) and puts it back
    /// with its length.
    async fn buffer_request(
        &self,
        limits: Buffering,
        req: &mut Request<ClientBody>,
    ) -> Result<Option<Response<ResponseBody>>, ErrorKind> {
        if req.body().is_end_stream() {
            return Ok(None);
        }
        let mut body = std::mem::replace(req.body_mut(), ClientBody::Empty);
        let mut memory = VecDeque::new();
        let mut in_memory = 0u64;
        let mut file: Option<(tokio::fs::File, u64)> = None;
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| ErrorKind::ClientAborted)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total += data.len() as u64;
            if total > limits.max {
                return Err(ErrorKind::BodyTooLarge);
            }
            if file.is_none() && in_memory + data.len() as u64 <= limits.memory {
                in_memory += data.len() as u64;
                memory.push_back(data);
                continue;
            }
            if file.is_none() {
                file = Some((spill_file().await.map_err(|_| ErrorKind::BodyTooLarge)?, 0));
            }
            if let Some((f, n)) = &mut file {
                f.write_all(&data)
                    .await
                    .map_err(|_| ErrorKind::BodyTooLarge)?;
                *n += data.len() as u64;
            }
        }
        if let Some((f, _)) = &mut file {
            f.flush().await.map_err(|_| ErrorKind::BodyTooLarge)?;
            f.rewind().await.map_err(|_| ErrorKind::BodyTooLarge)?;
        }
        let h = req.headers_mut();
        h.remove(header::TRANSFER_ENCODING);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
        *req.body_mut() = ClientBody::Other(Box::new(Buffered {
            memory,
            file,
            left: total,
        }));
        Ok(None)
    }
}

/// A temporary file, already unlinked: it is gone when closed, whatever happens.
async fn spill_file() -> std::io::Result<tokio::fs::File> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "pylon-body-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .await?;
    tokio::fs::remove_file(&path).await?;
    Ok(file)
}

/// The upstream's body read ahead into at most `max` bytes by a task of its own.
fn read_ahead(body: ResponseBody, max: u64) -> ResponseBody {
    let permits = usize::try_from(max / 1024).unwrap_or(usize::MAX).max(16);
    let budget = Arc::new(tokio::sync::Semaphore::new(permits));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(
        Result<Frame<Bytes>, BoxError>,
        Option<tokio::sync::OwnedSemaphorePermit>,
    )>();
    let room = Arc::clone(&budget);
    tokio::spawn(async move {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let kib = frame
                .as_ref()
                .ok()
                .and_then(|f| f.data_ref())
                .map_or(0, |d| d.len().div_ceil(1024));
            // Waits while `max` bytes are ahead of the client.
            let permit = match u32::try_from(kib.min(permits)) {
                Ok(0) => None,
                Ok(n) => match Arc::clone(&room).acquire_many_owned(n).await {
                    Ok(p) => Some(p),
                    Err(_) => return,
                },
                Err(_) => None,
            };
            if tx.send((frame, permit)).is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let (frame, permit) = rx.recv().await?;
        drop(permit);
        Some((frame, rx))
    });
    ResponseBody::boxed(http_body_util::StreamBody::new(stream))
}

impl Filter for Buffers {
    fn name(&self) -> &'static str {
        "buffering"
    }

    fn lookup<'a>(
        &'a self,
        req: &'a mut Request<ClientBody>,
        _cx: &'a mut FilterCtx<'_>,
    ) -> Option<Lookup<'a>> {
        let limits = self.request?;
        Some(Box::pin(self.buffer_request(limits, req)))
    }

    fn response(&self, resp: &mut Response<ResponseBody>, _cx: &mut FilterCtx<'_>) {
        let Some(limits) = self.response else {
            return;
        };
        if resp.body().is_end_stream() {
            return;
        }
        let body = std::mem::replace(resp.body_mut(), ResponseBody::empty());
        *resp.body_mut() = read_ahead(body, limits.max);
    }
}
