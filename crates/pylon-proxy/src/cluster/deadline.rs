//! The response timeout: a request waits for its answer's head within a limit, on a
//! timer reused across the requests its worker thread sends.
//!
//! A new tokio timer takes the time driver's lock to enter its wheel and again to
//! leave it (about 570 instructions per request, with a clock reading); a timer still
//! entered moves to a later deadline with one atomic write, its wheel entry moving
//! only when the old deadline comes. So the timers a thread has used wait, still
//! entered, in a list of that thread's for its next requests. One left unused past its
//! deadline fires once, waking for nothing the task that last waited on it, and its
//! next user enters it anew.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Timers kept per thread, beyond which a returned one is dropped (a timer is about
/// 100 bytes).
const KEPT: usize = 1024;

thread_local! {
    /// A thread's spare timers, each with the runtime whose driver it is entered in.
    static SPARE: RefCell<Vec<(tokio::runtime::Id, Pin<Box<Sleep>>)>> =
        const { RefCell::new(Vec::new()) };
}

/// `answer`'s output, or `None` when `limit` passed first.
pub(super) async fn within<F: Future + Unpin>(limit: Duration, mut answer: F) -> Option<F::Output> {
    let mut timer = Timer::start(Instant::now() + limit);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = Pin::new(&mut answer).poll(cx) {
            return Poll::Ready(Some(out));
        }
        match &mut timer.sleep {
            Some(sleep) => sleep.as_mut().poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    })
    .await
}

/// A timer taken from the thread's spares (or made), given back when dropped.
struct Timer {
    runtime: tokio::runtime::Id,
    /// Always there until dropped.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Timer {
    fn start(deadline: Instant) -> Timer {
        let runtime = tokio::runtime::Handle::current().id();
        let spare = SPARE.with(|s| {
            let mut s = s.try_borrow_mut().ok()?;
            // A spare of another runtime (one that ended on this thread) is dropped.
            while let Some((id, sleep)) = s.pop() {
                if id == runtime {
                    return Some(sleep);
                }
            }
            None
        });
        let sleep = match spare {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Timer {
            runtime,
            sleep: Some(sleep),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let Some(sleep) = self.sleep.take() else {
            return;
        };
        let _ = SPARE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut()
                && s.len() < KEPT
            {
                s.push((self.runtime, sleep));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spares() -> usize {
        SPARE.with(|s| s.borrow().len())
    }

    fn paused() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn a_timer_goes_back_to_the_spares_and_keeps_its_new_deadline() {
        paused().block_on(async {
            let before = spares();
            assert_eq!(
                within(Duration::from_millis(50), std::future::ready(7)).await,
                Some(7)
            );
            assert_eq!(spares(), before + 1, "given back");
            // Taken again, moved later: it fires at the new deadline, not the old one.
            let start = Instant::now();
            let never = std::future::pending::<()>();
            assert_eq!(within(Duration::from_millis(400), never).await, None);
            assert!(
                start.elapsed() >= Duration::from_millis(400),
                "{:?}",
                start.elapsed()
            );
            assert_eq!(spares(), before + 1, "reused, not a second one");
        });
    }

    #[test]
    fn a_spare_left_past_its_deadline_fires_unseen_and_serves_again() {
        paused().block_on(async {
            assert_eq!(
                within(Duration::from_millis(10), std::future::ready(())).await,
                Some(())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let start = Instant::now();
            let never = std::future::pending::<()>();
            assert_eq!(within(Duration::from_millis(30), never).await, None);
            assert!(
                start.elapsed() >= Duration::from_millis(30),
                "{:?}",
                start.elapsed()
            );
        });
    }

    #[test]
    fn a_spare_of_an_ended_runtime_is_not_used() {
        paused().block_on(async {
            assert_eq!(
                within(Duration::from_millis(10), std::future::ready(())).await,
                Some(())
            );
        });
        // A new runtime on this thread: the old runtime's timer would panic if polled.
        paused().block_on(async {
            let never = std::future::pending::<()>();
            assert_eq!(within(Duration::from_millis(20), never).await, None);
        });
    }
}
