//! The HTTP/2 per-stream send stall guard: a response that makes no progress towards
//! the client for the listener's `send_timeout` because the client keeps its
//! flow-control window (the stream's or the connection's) shut is reset with
//! RST_STREAM, freeing the stream and its upstream, while the connection's other
//! streams go on.
//!
//! hyper drives each HTTP/2 stream as a task given to the connection's executor and
//! only polls the response body once the window has room, so a stalled body is never
//! polled and cannot time itself out. [`StallExecutor`] wraps each stream task in a
//! [`StallGuard`]; the request path tells the guard, through a thread-local written
//! while the guard polls its stream, when a response is ready and when its body
//! hands out data or waits for its upstream. Data handed out and then no body poll
//! for `send_timeout` is a stall: the guard drops the stream task, and h2 resets a
//! dropped stream that was still open (CANCEL).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::error::ErrorKind;
use crate::observe::Metrics;

/// Nothing reported during this poll.
const NONE: u8 = 0;
/// The response head is ready: from now on the stream waits on the client.
const RESPONDED: u8 = 1;
/// The body handed out a frame: the next poll of it waits on the client's window.
const HANDED: u8 = 2;
/// The body is waiting for its upstream (or finished): no stall to time.
const WAITING: u8 = 4;

thread_local! {
    static EVENTS: Cell<u8> = const { Cell::new(NONE) };
    static STALLED: Cell<bool> = const { Cell::new(false) };
}

/// The request path's response for this stream is ready to be sent.
pub fn response_ready() {
    EVENTS.with(|e| e.set(RESPONDED | HANDED));
}

/// The response body was polled: `handed` when it gave out a frame, otherwise it is
/// waiting for its upstream or has ended.
pub fn body_polled(handed: bool) {
    EVENTS.with(|e| {
        let responded = e.get() & RESPONDED;
        e.set(responded | if handed { HANDED } else { WAITING });
    });
}

/// True while a stalled stream is being dropped: what finishes then was cut by the
/// send timeout.
pub fn dropping_stalled() -> bool {
    STALLED.with(Cell::get)
}

/// Runs each HTTP/2 stream of a connection under a [`StallGuard`].
#[derive(Clone)]
pub struct StallExecutor {
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl StallExecutor {
    pub fn new(timeout: Duration, metrics: Arc<Metrics>) -> Self {
        StallExecutor { timeout, metrics }
    }
}

impl<F> hyper::rt::Executor<F> for StallExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(StallGuard::new(
            fut,
            self.timeout,
            Arc::clone(&self.metrics),
        ));
    }
}

pin_project_lite::pin_project! {
    /// One HTTP/2 stream's task and its stall timer.
    pub struct StallGuard<F> {
        #[pin]
        inner: Option<F>,
        timeout: Duration,
        metrics: Arc<Metrics>,
        responded: bool,
        // Data was handed out and the body has not been polled since.
        armed: bool,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<F> StallGuard<F> {
    fn new(inner: F, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        StallGuard {
            inner: Some(inner),
            timeout,
            metrics,
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
        let outer = EVENTS.with(|e| e.replace(NONE));
        let polled = inner.poll(cx);
        let events = EVENTS.with(|e| e.replace(outer));
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
        STALLED.with(|s| s.set(true));
        this.inner.set(None);
        STALLED.with(|s| s.set(false));
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
    }

    impl Future for StalledStream {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            if self.step == 0 {
                response_ready();
                body_polled(true);
                self.step = 1;
            }
            Poll::Pending
        }
    }

    /// A stream task whose body waits on its upstream.
    struct WaitingStream;

    impl Future for WaitingStream {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            response_ready();
            body_polled(false);
            Poll::Pending
        }
    }

    fn guard<F: Future>(inner: F, metrics: &Arc<Metrics>) -> Pin<Box<StallGuard<F>>> {
        Box::pin(StallGuard::new(
            inner,
            Duration::from_secs(5),
            Arc::clone(metrics),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_whose_window_stays_shut_is_dropped_after_the_timeout() {
        let metrics = Arc::new(Metrics::default());
        guard(StalledStream { step: 0 }, &metrics).await;
        assert_eq!(metrics.errors(ErrorKind::SendTimeout), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_waiting_on_its_upstream_is_not_timed() {
        let metrics = Arc::new(Metrics::default());
        let mut g = guard(WaitingStream, &metrics);
        let waited = tokio::time::timeout(Duration::from_secs(3600), &mut g).await;
        assert!(
            waited.is_err(),
            "the guard must not end a stream waiting upstream"
        );
        assert_eq!(metrics.errors(ErrorKind::SendTimeout), 0);
    }
}
