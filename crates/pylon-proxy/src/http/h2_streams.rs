//! An HTTP/2 connection's streams run inside the connection's own task, not as a task
//! each. hyper hands every accepted stream to its executor; [`StallExecutor`] puts it in
//! the connection's [`NewStreams`], and [`WithStreams`], the future the connection's
//! task awaits, polls the connection and its streams together. A stream then costs no
//! task of its own and no trip through the runtime's scheduler: its request is taken up
//! in the same poll that read its HEADERS, and the frames its answer writes are flushed
//! by the next poll of the connection, without waking another task. NGINX and HAProxy
//! drive a connection's streams from the connection the same way.
//!
//! Streams still open when the connection's future ends (or is dropped by its timer)
//! go to the runtime as tasks of their own, as they would have run before: they then
//! see their connection gone and end with their log line. A stream that panics (a
//! bug) is dropped alone, as its own task would have been: h2 resets it and the
//! connection's other streams go on.
//!
//! [`StallExecutor`]: super::stall::StallExecutor

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;

/// One stream's work: its request through the request path and its answer's body,
/// under its stall guard.
pub type StreamTask = Pin<Box<dyn Future<Output = ()> + Send>>;

pin_project_lite::pin_project! {
    /// A stream whose panic ends the stream, not its connection.
    struct Isolated<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future<Output = ()>> Future for Isolated<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let inner = self.project().inner;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(polled) => polled,
            Err(_) => {
                tracing::error!("an HTTP/2 stream's task panicked; the stream was reset");
                Poll::Ready(())
            }
        }
    }
}

/// Streams hyper accepted on a connection and not yet taken up by its [`WithStreams`].
#[derive(Default)]
pub struct NewStreams(Mutex<Vec<StreamTask>>);

impl NewStreams {
    pub fn push(&self, task: impl Future<Output = ()> + Send + 'static) {
        crate::lock(&self.0).push(Box::pin(Isolated { inner: task }));
    }

    fn take(&self, into: &FuturesUnordered<StreamTask>) {
        for task in crate::lock(&self.0).drain(..) {
            into.push(task);
        }
    }
}

/// A connection's future together with its streams.
pub struct WithStreams<C> {
    conn: Pin<Box<C>>,
    new: Arc<NewStreams>,
    running: FuturesUnordered<StreamTask>,
}

impl<C> WithStreams<C> {
    pub fn new(conn: C, new: Arc<NewStreams>) -> Self {
        WithStreams {
            conn: Box::pin(conn),
            new,
            running: FuturesUnordered::new(),
        }
    }

    /// The connection itself (to start its graceful shutdown).
    pub fn conn(&mut self) -> Pin<&mut C> {
        self.conn.as_mut()
    }
}

impl<C: Future> Future for WithStreams<C> {
    type Output = C::Output;

    /// The connection first (it reads frames and takes up new streams), then the
    /// streams. Frames the streams leave to write wake this task, whose next poll
    /// writes them: by then other connections and upstreams have had their turn, so
    /// answers go out in fewer, larger writes (measured: fewer context switches and
    /// less CPU per request than polling the connection again at once).
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        let conn = this.conn.as_mut().poll(cx);
        this.new.take(&this.running);
        if conn.is_ready() {
            return conn;
        }
        while let Poll::Ready(Some(())) = this.running.poll_next_unpin(cx) {}
        Poll::Pending
    }
}

impl<C> Drop for WithStreams<C> {
    fn drop(&mut self) {
        self.new.take(&self.running);
        if self.running.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for task in std::mem::take(&mut self.running) {
            runtime.spawn(task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A connection that accepts `streams` streams, one per poll, then ends once they
    /// have all finished.
    struct FakeConn {
        new: Arc<NewStreams>,
        left: usize,
        finished: Arc<AtomicUsize>,
        total: usize,
    }

    impl Future for FakeConn {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.left > 0 {
                self.left -= 1;
                let finished = Arc::clone(&self.finished);
                self.new.push(async move {
                    tokio::task::yield_now().await;
                    finished.fetch_add(1, Ordering::SeqCst);
                });
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if self.finished.load(Ordering::SeqCst) == self.total {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// Serves a connection that accepts `streams` streams (besides any already in
    /// `new`) until they have all finished, within a deadline: how many finished.
    async fn serve(new: Arc<NewStreams>, streams: usize) -> usize {
        let finished = Arc::new(AtomicUsize::new(0));
        let conn = FakeConn {
            new: Arc::clone(&new),
            left: streams,
            finished: Arc::clone(&finished),
            total: streams,
        };
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            WithStreams::new(conn, new),
        )
        .await
        .expect("the connection's streams were polled to their end");
        finished.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn streams_run_in_the_connections_task_until_they_end() {
        assert_eq!(serve(Arc::new(NewStreams::default()), 5).await, 5);
    }

    #[tokio::test]
    async fn streams_left_when_the_connection_is_dropped_run_on_as_tasks() {
        let new = Arc::new(NewStreams::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        new.push(async move {
            let _ = tx.send(());
        });
        drop(WithStreams::new(std::future::pending::<()>(), new));
        assert!(
            rx.await.is_ok(),
            "the stream ran after its connection was dropped"
        );
    }

    #[tokio::test]
    async fn a_stream_that_panics_ends_alone() {
        let new = Arc::new(NewStreams::default());
        new.push(async { panic!("a bug in one stream") });
        assert_eq!(
            serve(new, 3).await,
            3,
            "the connection's other streams finished"
        );
    }
}
