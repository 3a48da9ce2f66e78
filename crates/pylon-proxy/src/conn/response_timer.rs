//! The response timeout of an HTTP/1.1 connection's requests, on one timer of the
//! connection's where each request made its own (`tokio::time::timeout`). A new tokio
//! timer is entered in the time driver's wheel under its lock and taken out under it
//! again, with its waker registered and the runtime's handle counted: twelve atomic
//! read-modify-writes per request (about 9 ns each on the benchmark's machine,
//! docs/performance.md).
//!
//! The connection's timer stays entered between requests, and stays set for the
//! deadline of the request that set it: a later request whose deadline comes after
//! that one leaves it (an earlier fire is looked past, and the timer set again, once
//! per response timeout at most), one whose deadline comes first sets it earlier. The
//! task's waker stays registered with it across requests (the same task waits on it
//! each time): a request registers it again only when the timer fired or was set
//! again, or the task's waker is another. What is left per request is the lock that
//! lends the timer out and takes it back: two.
//!
//! One request at a time has it (an HTTP/1.1 connection's come one after another); a
//! request that finds it lent out makes a timer of its own. The connection lets the
//! timer go when its task ends ([`ResponseTimer::clear`]): the waker it holds would
//! keep the task's memory, and a parked connection keeps its context but no task.
//!
//! (Written here: a timer reused across requests needs the connection's own task to
//! wait on it, which only the connection knows.)

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// An HTTP/1.1 connection's timer for its requests' response timeouts.
#[derive(Default)]
pub struct ResponseTimer(spin::mutex::SpinMutex<Option<Kept>, spin::relax::Yield>);

/// The timer, and the waker registered with it (by identity, `Waker::will_wake`'s
/// test) while it is: the registered waker holds its task, so no other task has
/// that identity meanwhile.
struct Kept {
    sleep: Pin<Box<Sleep>>,
    waker: Option<(usize, usize)>,
}

impl ResponseTimer {
    /// `answer`'s output, or `None` when `limit` passed first.
    pub async fn within<F: Future>(&self, limit: Duration, answer: F) -> Option<F::Output> {
        let Some(deadline) = Instant::now().checked_add(limit) else {
            // Past what the clock can name: no limit.
            return Some(answer.await);
        };
        let mut lent = Lent {
            from: self,
            kept: Some(self.take(deadline)),
        };
        let mut answer = pin!(answer);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = answer.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            match lent.kept.as_mut() {
                Some(kept) => kept.wait(deadline, cx).map(|()| None),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// The connection's timer set to fire by `deadline`, or a new one when it is
    /// lent out.
    fn take(&self, deadline: Instant) -> Kept {
        match self.0.try_lock().and_then(|mut kept| kept.take()) {
            Some(mut kept) => {
                if kept.sleep.is_elapsed() || kept.sleep.deadline() > deadline {
                    kept.sleep.as_mut().reset(deadline);
                    kept.waker = None;
                }
                kept
            }
            None => Kept {
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
                waker: None,
            },
        }
    }

    /// Lets the timer go (the connection's task ends).
    pub fn clear(&self) {
        if let Some(mut kept) = self.0.try_lock() {
            *kept = None;
        }
    }
}

impl Kept {
    /// Ready once `deadline` has passed; the timer is set for it or before it.
    fn wait(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let waker = (
            cx.waker().data() as usize,
            std::ptr::from_ref(cx.waker().vtable()) as usize,
        );
        loop {
            if self.waker == Some(waker) && !self.sleep.is_elapsed() {
                // Registered with this task, not fired: nothing to do until it fires.
                return Poll::Pending;
            }
            // Registered now (outside the task's budget, which could leave the waker
            // unregistered).
            self.waker = None;
            if pin!(tokio::task::coop::unconstrained(self.sleep.as_mut()))
                .poll(cx)
                .is_pending()
            {
                self.waker = Some(waker);
                return Poll::Pending;
            }
            if self.sleep.deadline() >= deadline {
                return Poll::Ready(());
            }
            // An earlier request's deadline: set for this one's.
            self.sleep.as_mut().reset(deadline);
        }
    }
}

/// The timer lent to one request, given back when it is done.
struct Lent<'a> {
    from: &'a ResponseTimer,
    kept: Option<Kept>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(mut slot) = self.from.0.try_lock()
            && slot.is_none()
        {
            *slot = self.kept.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `within` ends by itself: a timer that never woke its request would hang it,
    /// and is reported after 10 s of the paused clock instead.
    async fn ended<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("the request's wait ended")
    }

    fn paused() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime")
    }

    #[test]
    fn a_kept_timer_fires_at_each_new_deadline_not_an_old_one() {
        paused().block_on(async {
            let timer = ResponseTimer::default();
            assert_eq!(
                timer
                    .within(Duration::from_millis(50), std::future::ready(7))
                    .await,
                Some(7)
            );
            assert!(timer.0.lock().is_some(), "kept for the next request");
            // Later than the first deadline: fires at the new one.
            let start = Instant::now();
            let never = std::future::pending::<()>();
            assert_eq!(
                ended(timer.within(Duration::from_millis(400), never)).await,
                None
            );
            assert_eq!(start.elapsed(), Duration::from_millis(400));
            // Earlier than the last: fires at the earlier one.
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(10)).await;
            let never = std::future::pending::<()>();
            assert_eq!(
                ended(timer.within(Duration::from_millis(20), never)).await,
                None
            );
            assert_eq!(start.elapsed(), Duration::from_millis(30));
            // Set for a long deadline that has not come, then a request with a shorter
            // one: fires at the shorter one.
            assert_eq!(
                timer
                    .within(Duration::from_secs(60), std::future::ready(1))
                    .await,
                Some(1)
            );
            let start = Instant::now();
            let never = std::future::pending::<()>();
            assert_eq!(
                ended(timer.within(Duration::from_millis(70), never)).await,
                None
            );
            assert_eq!(start.elapsed(), Duration::from_millis(70));
        });
    }

    #[test]
    fn an_answer_before_the_deadline_wins_and_a_fired_timer_serves_again() {
        paused().block_on(async {
            let timer = ResponseTimer::default();
            let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let _ = tx.send(5);
            });
            assert_eq!(
                timer.within(Duration::from_millis(100), rx).await,
                Some(Ok(5))
            );
            // Right after, on the same task: the waker registered by the first request
            // is woken by the first deadline, which is looked past, and this one's
            // deadline holds.
            let start = Instant::now();
            let never = std::future::pending::<()>();
            assert_eq!(
                ended(timer.within(Duration::from_millis(100), never)).await,
                None
            );
            assert_eq!(start.elapsed(), Duration::from_millis(100));
            // Left idle past its deadline: it fires unseen, and the next request's
            // deadline holds.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let start = Instant::now();
            let never = std::future::pending::<()>();
            assert_eq!(
                ended(timer.within(Duration::from_millis(40), never)).await,
                None
            );
            assert_eq!(start.elapsed(), Duration::from_millis(40));
        });
    }

    #[test]
    fn a_second_request_while_the_timer_is_lent_gets_its_own_and_clear_lets_go() {
        paused().block_on(async {
            let timer = ResponseTimer::default();
            let first = timer.within(Duration::from_millis(100), std::future::pending::<()>());
            let second = timer.within(Duration::from_millis(50), std::future::pending::<()>());
            let start = Instant::now();
            let (a, b) = ended(async { tokio::join!(first, second) }).await;
            assert_eq!((a, b), (None, None));
            assert_eq!(start.elapsed(), Duration::from_millis(100));
            assert!(timer.0.lock().is_some());
            timer.clear();
            assert!(timer.0.lock().is_none());
        });
    }
}
