//! A cluster's retry budget and request limits: counts the requests and the retries in
//! flight, and decides whether one more may start (`budget_percent`,
//! `budget_min_concurrent`, the circuit breaker's `max_retries` and `max_requests`).

use std::sync::atomic::{AtomicU64, Ordering};

/// How many requests may retry at once, relative to the requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryShare {
    /// Requests retrying at once, as a percentage of the requests in flight.
    pub budget_percent: u32,
    /// Requests that may retry at once whatever the percentage gives.
    pub budget_min_concurrent: u32,
}

/// What a [`RetryBudget`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryBudgetPolicy {
    /// The retry budget; `None` when the cluster never retries (then no retry is
    /// granted, and none is counted as refused).
    pub retry: Option<RetryShare>,
    /// Circuit breaker: requests retrying at once, on top of the budget.
    pub max_retries: Option<u64>,
    /// Circuit breaker: requests in flight at once.
    pub max_requests: Option<u64>,
}

impl RetryBudgetPolicy {
    /// The retries allowed at once while `active` requests are in flight:
    /// `max(active * budget_percent / 100, budget_min_concurrent)`, then at most
    /// `max_retries`; 0 when the cluster never retries.
    pub fn allowed_retries(&self, active: u64) -> u64 {
        let Some(share) = self.retry else { return 0 };
        let allowed = (active.saturating_mul(u64::from(share.budget_percent)) / 100)
            .max(u64::from(share.budget_min_concurrent));
        self.max_retries.map_or(allowed, |max| allowed.min(max))
    }
}

/// Requests and retries in flight on one cluster, and the refusals so far. Shared by
/// every request to the cluster (`Send + Sync`, lock free).
#[derive(Debug, Default)]
pub struct RetryBudget {
    policy: RetryBudgetPolicy,
    active_requests: AtomicU64,
    active_retries: AtomicU64,
    /// Retries refused by the budget so far.
    exhausted: AtomicU64,
    /// Requests refused at `max_requests` so far.
    overloaded: AtomicU64,
}

/// A request in flight, counted until dropped.
#[derive(Debug)]
#[must_use = "the request counts in flight only while its guard lives"]
pub struct RequestGuard<'a>(&'a AtomicU64);

/// A retry slot (a request holds one across all its retries), counted until dropped.
#[derive(Debug)]
#[must_use = "the retry slot is held only while its guard lives"]
pub struct RetryGuard<'a>(&'a AtomicU64);

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for RetryGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RetryBudget {
    pub fn new(policy: RetryBudgetPolicy) -> RetryBudget {
        RetryBudget {
            policy,
            ..RetryBudget::default()
        }
    }

    pub fn policy(&self) -> &RetryBudgetPolicy {
        &self.policy
    }

    /// Whether requests need counting at all (the cluster retries, or limits requests);
    /// when not, callers may skip [`request_started`](Self::request_started).
    pub fn counts_requests(&self) -> bool {
        self.policy.retry.is_some() || self.policy.max_requests.is_some()
    }

    /// Counts a request in flight until the guard drops; `None` (counted as overloaded)
    /// when `max_requests` are in flight already.
    pub fn request_started(&self) -> Option<RequestGuard<'_>> {
        let before = self.active_requests.fetch_add(1, Ordering::Relaxed);
        let guard = RequestGuard(&self.active_requests);
        if self.policy.max_requests.is_some_and(|max| before >= max) {
            self.overloaded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(guard)
    }

    /// A retry slot if the budget allows one more request retrying now
    /// ([`RetryBudgetPolicy::allowed_retries`] of the requests in flight); `None`
    /// otherwise (counted as exhausted, unless the cluster never retries).
    pub fn try_retry(&self) -> Option<RetryGuard<'_>> {
        self.policy.retry?;
        let allowed = self.allowed_retries();
        let retries = self.active_retries.fetch_add(1, Ordering::Relaxed);
        if retries >= allowed {
            self.active_retries.fetch_sub(1, Ordering::Relaxed);
            self.exhausted.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(RetryGuard(&self.active_retries))
    }

    /// The retries allowed at once with the requests in flight now.
    pub fn allowed_retries(&self) -> u64 {
        self.policy.allowed_retries(self.active_requests())
    }

    /// Requests in flight now (refused ones count for the instant of their refusal).
    pub fn active_requests(&self) -> u64 {
        self.active_requests.load(Ordering::Relaxed)
    }

    /// Requests holding a retry slot now.
    pub fn active_retries(&self) -> u64 {
        self.active_retries.load(Ordering::Relaxed)
    }

    /// Retries refused by the budget so far.
    pub fn retry_budget_exhausted(&self) -> u64 {
        self.exhausted.load(Ordering::Relaxed)
    }

    /// Requests refused at `max_requests` so far.
    pub fn overloaded(&self) -> u64 {
        self.overloaded.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn budget(percent: u32, min: u32) -> RetryBudget {
        RetryBudget::new(RetryBudgetPolicy {
            retry: Some(RetryShare {
                budget_percent: percent,
                budget_min_concurrent: min,
            }),
            ..RetryBudgetPolicy::default()
        })
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RetryBudget>();
        check::<RequestGuard<'static>>();
        check::<RetryGuard<'static>>();
    }

    #[test]
    fn percent_of_requests_in_flight_bounds_concurrent_retries() {
        let b = budget(20, 3);
        let requests: Vec<_> = (0..200).map(|_| b.request_started().unwrap()).collect();
        assert_eq!(b.active_requests(), 200);
        assert_eq!(b.allowed_retries(), 40, "20% of 200");
        let retries: Vec<_> = (0..40).map(|_| b.try_retry().unwrap()).collect();
        assert!(b.try_retry().is_none(), "the 41st is refused");
        assert_eq!(b.active_retries(), 40);
        assert_eq!(b.retry_budget_exhausted(), 1);
        drop(retries);
        drop(requests);
        assert_eq!((b.active_requests(), b.active_retries()), (0, 0));
    }

    #[test]
    fn few_requests_get_the_min_concurrent_floor() {
        let b = budget(20, 3);
        let requests: Vec<_> = (0..4).map(|_| b.request_started().unwrap()).collect();
        // 20% of 4 is 0: the floor of 3 applies.
        assert_eq!(b.allowed_retries(), 3);
        let retries: Vec<_> = (0..3).map(|_| b.try_retry().unwrap()).collect();
        assert!(b.try_retry().is_none());
        assert_eq!(b.retry_budget_exhausted(), 1);
        drop((retries, requests));
    }

    #[test]
    fn no_requests_and_no_floor_allow_no_retry() {
        let b = budget(0, 0);
        let _r = b.request_started().unwrap();
        assert!(b.try_retry().is_none());
        assert_eq!(b.retry_budget_exhausted(), 1);
        assert_eq!(b.active_retries(), 0, "a refusal holds nothing");
    }

    #[test]
    fn max_retries_caps_the_budget() {
        let b = RetryBudget::new(RetryBudgetPolicy {
            retry: Some(RetryShare {
                budget_percent: 100,
                budget_min_concurrent: 0,
            }),
            max_retries: Some(2),
            max_requests: None,
        });
        let requests: Vec<_> = (0..10).map(|_| b.request_started().unwrap()).collect();
        assert_eq!(b.allowed_retries(), 2, "100% of 10, capped at 2");
        let a = b.try_retry().unwrap();
        let _b2 = b.try_retry().unwrap();
        assert!(b.try_retry().is_none());
        drop(a);
        assert!(b.try_retry().is_some(), "a released slot is free again");
        drop(requests);
    }

    #[test]
    fn max_requests_refuses_and_counts_overloaded() {
        let b = RetryBudget::new(RetryBudgetPolicy {
            max_requests: Some(2),
            ..RetryBudgetPolicy::default()
        });
        assert!(b.counts_requests());
        let first = b.request_started().unwrap();
        let _second = b.request_started().unwrap();
        assert!(b.request_started().is_none());
        assert_eq!(b.overloaded(), 1);
        assert_eq!(b.active_requests(), 2, "the refused one is not kept");
        drop(first);
        assert!(b.request_started().is_some(), "room again");
        assert_eq!(b.overloaded(), 1);
    }

    #[test]
    fn guards_release_on_drop() {
        let b = budget(50, 1);
        let r = b.request_started().unwrap();
        let s = b.try_retry().unwrap();
        assert_eq!((b.active_requests(), b.active_retries()), (1, 1));
        drop(s);
        assert_eq!(b.active_retries(), 0);
        drop(r);
        assert_eq!(b.active_requests(), 0);
    }

    #[test]
    fn without_a_retry_policy_nothing_retries_or_counts_as_exhausted() {
        let b = RetryBudget::new(RetryBudgetPolicy {
            max_retries: Some(10),
            ..RetryBudgetPolicy::default()
        });
        assert!(!b.counts_requests());
        let _r = b.request_started().unwrap();
        assert!(b.try_retry().is_none());
        assert_eq!(b.retry_budget_exhausted(), 0);
        assert_eq!(b.policy().allowed_retries(1_000), 0);
        assert!(budget(0, 0).counts_requests(), "retries need the count");
    }

    #[test]
    fn counters_return_to_zero_across_threads() {
        let b = budget(25, 2);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2_000 {
                        let r = b.request_started().unwrap();
                        let slot = b.try_retry();
                        drop(slot);
                        drop(r);
                    }
                });
            }
        });
        assert_eq!((b.active_requests(), b.active_retries()), (0, 0));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Start,
        /// The request at this index (modulo those alive) retries: it asks for a slot
        /// if it holds none.
        Retry(usize),
        /// The request at this index ends, releasing its slot.
        End(usize),
        /// The request at this index gives its slot back early.
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Start),
            3 => any::<usize>().prop_map(Op::Retry),
            2 => any::<usize>().prop_map(Op::End),
            1 => any::<usize>().prop_map(Op::Release),
        ]
    }

    proptest! {
        #[test]
        fn retries_alive_never_exceed_the_allowance_at_grant(
            percent in 0u32..=200,
            min in 0u32..5,
            max_retries in proptest::option::of(0u64..8),
            max_requests in proptest::option::of(0u64..30),
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            let b = RetryBudget::new(RetryBudgetPolicy {
                retry: Some(RetryShare { budget_percent: percent, budget_min_concurrent: min }),
                max_retries,
                max_requests,
            });
            let mut requests: Vec<(RequestGuard<'_>, Option<RetryGuard<'_>>)> = Vec::new();
            let (mut overloaded, mut exhausted) = (0u64, 0u64);
            for op in ops {
                match op {
                    Op::Start => match b.request_started() {
                        Some(g) => requests.push((g, None)),
                        None => {
                            overloaded += 1;
                            prop_assert!(max_requests.is_some_and(|m| requests.len() as u64 >= m));
                        }
                    },
                    Op::Retry(i) if !requests.is_empty() => {
                        let n = requests.len();
                        if requests[i % n].1.is_some() {
                            continue;
                        }
                        let active = requests.len() as u64;
                        let allowed = (active * u64::from(percent) / 100)
                            .max(u64::from(min))
                            .min(max_retries.unwrap_or(u64::MAX));
                        prop_assert_eq!(b.allowed_retries(), allowed);
                        let alive = requests.iter().filter(|r| r.1.is_some()).count() as u64;
                        let slot = b.try_retry();
                        prop_assert_eq!(slot.is_some(), alive < allowed, "grant iff room");
                        match slot {
                            Some(s) => {
                                requests[i % n].1 = Some(s);
                                prop_assert!(alive < allowed);
                                prop_assert!(b.active_retries() <= allowed);
                            }
                            None => exhausted += 1,
                        }
                    }
                    Op::End(i) if !requests.is_empty() => {
                        let n = requests.len();
                        drop(requests.swap_remove(i % n));
                    }
                    Op::Release(i) if !requests.is_empty() => {
                        let n = requests.len();
                        requests[i % n].1 = None;
                    }
                    _ => {}
                }
                let alive = requests.iter().filter(|r| r.1.is_some()).count() as u64;
                prop_assert_eq!(b.active_requests(), requests.len() as u64);
                prop_assert_eq!(b.active_retries(), alive);
                prop_assert_eq!(b.overloaded(), overloaded);
                prop_assert_eq!(b.retry_budget_exhausted(), exhausted);
            }
            drop(requests);
            prop_assert_eq!((b.active_requests(), b.active_retries()), (0, 0));
        }
    }
}
