//! The HTTP/2 per-stream send stall guard: a response that makes no progress towards
//! the client for the listener's `send_timeout` because the client keeps its
//! flow-control window (the stream's or the connection's) shut is reset with
//! RST_STREAM, freeing the stream and its upstream, while the connection's other
//! streams go on.
//!
//! hyper drives each HTTP/2 stream as a future given to the connection's executor and
//! only polls the response body once the window has room, so a stalled body is never
//! polled and cannot time itself out. [`StallExecutor`] wraps each stream's future in a
//! [`StallGuard`] and hands it to the connection's own task (`h2_streams`). The two meet through a [`StreamProgress`] per stream: the
//! connection's service makes it when hyper calls it with the stream's request
//! ([`StreamHandoff::begin`]), and the executor takes it for the stream's task, which
//! hyper hands over right after, in the same poll of the connection. The response
//! reports on it when it is ready and when its body hands out data or waits for its
//! upstream. Data handed out and then no body poll for `send_timeout` is a stall: the
//! guard drops the stream task, and h2 resets a dropped stream that was still open
//! (CANCEL).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::error::ErrorKind;
use super::h2_streams::NewStreams;
use crate::observe::Metrics;

use super::body::{NONE, RESPONDED, StreamProgress, WAITING};

/// One connection's hand-over of each new stream's [`StreamProgress`] from its service
/// to its executor. hyper calls the service for a stream's request and gives the
/// stream's future to the executor right after, synchronously, in the same poll of the
/// connection, so the slot is empty whenever anything else reaches the executor: an
/// upgraded stream's relay, which hyper hands over from the stream's own poll, finds it
/// empty and gets none. The thread check is a safety net should a future ever be handed
/// over from another thread between the two.
#[derive(Debug, Default)]
pub struct StreamHandoff(Mutex<Option<(ThreadId, Arc<StreamProgress>)>>);

impl StreamHandoff {
    /// A new stream's progress, kept for the executor's next task on this thread.
    pub fn begin(&self) -> Arc<StreamProgress> {
        let progress = Arc::new(StreamProgress::default());
        *crate::lock(&self.0) = Some((std::thread::current().id(), Arc::clone(&progress)));
        progress
    }

    fn take(&self) -> Option<Arc<StreamProgress>> {
        let mut slot = crate::lock(&self.0);
        match &*slot {
            Some((thread, _)) if *thread == std::thread::current().id() => {
                slot.take().map(|(_, p)| p)
            }
            _ => None,
        }
    }
}

/// Runs each HTTP/2 stream of a connection under a [`StallGuard`], in the connection's
/// own task (its [`NewStreams`]).
#[derive(Clone)]
pub struct StallExecutor {
    timeout: Duration,
    metrics: Arc<Metrics>,
    handoff: Arc<StreamHandoff>,
    streams: Arc<NewStreams>,
}

impl StallExecutor {
    pub fn new(
        timeout: Duration,
        metrics: Arc<Metrics>,
        handoff: Arc<StreamHandoff>,
        streams: Arc<NewStreams>,
    ) -> Self {
        StallExecutor {
            timeout,
            metrics,
            handoff,
            streams,
        }
    }
}

impl<F> hyper::rt::Executor<F> for StallExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        match self.handoff.take() {
            Some(progress) => self.streams.push(StallGuard::new(
                fut,
                self.timeout,
                Arc::clone(&self.metrics),
                progress,
            )),
            // Not a stream (an upgraded stream's relay, with its own timeouts): a task of
            // its own, since it lives on after the stream's answer.
            None => {
                tokio::spawn(fut);
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// One HTTP/2 stream's task and its stall timer.
    pub struct StallGuard<F> {
        #[pin]
        inner: Option<F>,
        timeout: Duration,
        metrics: Arc<Metrics>,
        progress: Arc<StreamProgress>,
        responded: bool,
        // Data was handed out and the body has not been polled since.
        armed: bool,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<F> StallGuard<F> {
    fn new(
        inner: F,
        timeout: Duration,
        metrics: Arc<Metrics>,
        progress: Arc<StreamProgress>,
    ) -> Self {
        StallGuard {
            inner: Some(inner),
            timeout,
            metrics,
            progress,
            responded: false,
            armed: false,
            timer: None,
        }
    }
}

impl<F: Future> Future for StallGuard<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(());
        };
        let polled = inner.poll(cx);
        let events = this.progress.take();
        if polled.is_ready() {
            this.inner.set(None);
            return Poll::Ready(());
        }
        *this.responded |= events & RESPONDED != 0;
        if !*this.responded || events == NONE {
            // Before the response, the stream waits on its upstream (whose own
            // timeouts apply); a poll that did not reach the body changes nothing.
        } else if events & WAITING != 0 {
            *this.armed = false;
        } else {
            *this.armed = true;
            let deadline = Instant::now() + *this.timeout;
            match this.timer.as_mut() {
                Some(t) => t.as_mut().reset(deadline),
                None => *this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        if !*this.armed {
            return Poll::Pending;
        }
        let Some(timer) = this.timer.as_mut() else {
            return Poll::Pending;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.metrics.error(ErrorKind::SendTimeout);
        tracing::debug!("HTTP/2 stream made no progress within the send timeout; resetting it");
        this.progress.mark_stalled();
        this.inner.set(None);
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream task that answers, hands out one frame, then waits on a window that
    /// never opens (never polls its body again).
    struct StalledStream {
        step: u8,
        progress: Arc<StreamProgress>,
    }

    impl Future for StalledStream {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            if self.step == 0 {
                self.progress.response_ready();
                self.progress.body_polled(true);
                self.step = 1;
            }
            Poll::Pending
        }
    }

    /// A stream task whose body waits on its upstream.
    struct WaitingStream(Arc<StreamProgress>);

    impl Future for WaitingStream {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            self.0.response_ready();
            self.0.body_polled(false);
            Poll::Pending
        }
    }

    fn guard<F: Future>(
        inner: F,
        progress: &Arc<StreamProgress>,
        metrics: &Arc<Metrics>,
    ) -> Pin<Box<StallGuard<F>>> {
        Box::pin(StallGuard::new(
            inner,
            Duration::from_secs(5),
            Arc::clone(metrics),
            Arc::clone(progress),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_whose_window_stays_shut_is_dropped_after_the_timeout() {
        let metrics = Arc::new(Metrics::default());
        let progress = Arc::new(StreamProgress::default());
        let stream = StalledStream {
            step: 0,
            progress: Arc::clone(&progress),
        };
        guard(stream, &progress, &metrics).await;
        assert_eq!(metrics.errors(ErrorKind::SendTimeout), 1);
        assert!(
            progress.stalled(),
            "the response's end is told it was a stall"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_waiting_on_its_upstream_is_not_timed() {
        let metrics = Arc::new(Metrics::default());
        let progress = Arc::new(StreamProgress::default());
        let mut g = guard(WaitingStream(Arc::clone(&progress)), &progress, &metrics);
        let waited = tokio::time::timeout(Duration::from_secs(3600), &mut g).await;
        assert!(
            waited.is_err(),
            "the guard must not end a stream waiting upstream"
        );
        assert_eq!(metrics.errors(ErrorKind::SendTimeout), 0);
    }

    #[test]
    fn a_stream_takes_the_progress_its_request_was_given_on_the_same_thread() {
        let handoff = Arc::new(StreamHandoff::default());
        let p = handoff.begin();
        // Another thread's task (an upgraded stream's relay) gets none and leaves it.
        let other = Arc::clone(&handoff);
        let stolen = std::thread::spawn(move || other.take().is_some())
            .join()
            .unwrap_or(true);
        assert!(!stolen);
        let taken = handoff.take();
        assert!(taken.is_some_and(|t| Arc::ptr_eq(&t, &p)));
        assert!(handoff.take().is_none(), "one stream, one progress");
    }
}
