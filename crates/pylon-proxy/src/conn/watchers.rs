//! The connection task's watchers (its timer, the listener's close, the process's stop)
//! polled only when one of them was woken. A `tokio::select!` over the connection and
//! its watchers polls every watcher each time the task wakes, which is at least twice
//! per request (the request's arrival, the upstream's answer): about 1,000
//! instructions a request spent asking three futures that had not moved. Here the
//! watchers get a waker of their own that marks them woken and wakes the task; the
//! connection is polled with the task's waker as before.
//!
//! The task's waker is kept, not taken by a wake (as an `AtomicWaker` does), so that a
//! poll whose waker is the one kept touches no atomic but the flag's load: registering
//! on every poll cost three atomic read-modify-writes (about 9 ns each on the
//! benchmark's machine), six per request.
//!
//! (Written here: `futures::select!` and `FuturesUnordered` give per-future wakers, but
//! for futures of one type each, boxed; this is the one flag over three futures of
//! different types that stay where they are.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

use crate::lock;

/// Marks the watchers woken and wakes the connection's task.
struct Flag {
    woken: AtomicBool,
    /// The task's waker, as last registered; kept (a wake clones it, rare).
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Set before the task is woken: the poll the wake brings finds it set.
        self.woken.store(true, Ordering::Release);
        if let Some(task) = lock(&self.task).as_ref() {
            task.wake_by_ref();
        }
    }
}

/// The watchers' waker, made once per connection.
pub struct Watchers {
    flag: Arc<Flag>,
    waker: Waker,
    /// A copy of the waker in `flag.task`, which only [`Watchers::woken`] writes.
    registered: Option<Waker>,
}

impl Default for Watchers {
    fn default() -> Self {
        let flag = Arc::new(Flag {
            // New watchers have to be polled once to register.
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        let waker = Waker::from(Arc::clone(&flag));
        Watchers {
            flag,
            waker,
            registered: None,
        }
    }
}

impl Watchers {
    /// Called with the task's context on each poll: `Some` (a context for polling the
    /// watchers) when one of them was woken since they were last polled, or when
    /// [`Watchers::renew`] asked; `None` when none needs polling.
    pub fn woken<'a>(&'a mut self, task: &Context<'_>) -> Option<Context<'a>> {
        // Registered before the flag is read: a wake in between finds the task. (The
        // same task polls with the same waker, so this is almost always skipped.)
        if !self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(task.waker()))
        {
            let w = task.waker().clone();
            *lock(&self.flag.task) = Some(w.clone());
            self.registered = Some(w);
        }
        // Read first: the swap, a read-modify-write, only when it was set.
        (self.flag.woken.load(Ordering::Acquire) && self.flag.woken.swap(false, Ordering::AcqRel))
            .then(|| Context::from_waker(&self.waker))
    }

    /// The watchers were made anew: poll them on the next poll.
    pub fn renew(&self) {
        self.flag.woken.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::Poll;

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn watchers_are_polled_first_then_only_after_a_wake() {
        let count = Arc::new(Count(0.into()));
        let task = Waker::from(Arc::clone(&count));
        let task_cx = Context::from_waker(&task);
        let mut watchers = Watchers::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut rx = pin!(rx);
        // First poll: the watcher registers.
        let mut cx = watchers.woken(&task_cx).expect("polled the first time");
        assert!(rx.as_mut().poll(&mut cx).is_pending());
        // Nothing moved: not polled again.
        assert!(watchers.woken(&task_cx).is_none());
        // The watcher fires: the task is woken, and the watcher is polled.
        tx.send(()).expect("the receiver is alive");
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task was woken");
        let mut cx = watchers.woken(&task_cx).expect("woken");
        assert_eq!(rx.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
        assert!(watchers.woken(&task_cx).is_none());
        // New watchers are polled once.
        watchers.renew();
        assert!(watchers.woken(&task_cx).is_some());
    }
}
