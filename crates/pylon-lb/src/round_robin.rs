//! Round robin honouring weights, in NGINX's smooth order (a, a, b, a with 3:1 becomes
//! a, b, a, a), precomputed once so each pick is one atomic increment.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Balancer, Endpoints};

/// Longest precomputed schedule; weights beyond this are scaled down proportionally.
const MAX_SCHEDULE: u64 = 65_536;

#[derive(Debug)]
pub struct RoundRobin {
    schedule: Vec<u32>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// `weights[i]` is endpoint i's weight; a weight of 0 is treated as 1.
    pub fn new(weights: &[u32]) -> Self {
        let mut w: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
        let total: u64 = w.iter().sum();
        if total > MAX_SCHEDULE {
            for x in &mut w {
                *x = (*x * MAX_SCHEDULE / total).max(1);
            }
        }
        RoundRobin {
            schedule: smooth_schedule(&w),
            next: AtomicUsize::new(0),
        }
    }
}

/// One full cycle of smooth weighted round robin: each step every endpoint gains its
/// weight, the largest is picked and pays back the total.
fn smooth_schedule(weights: &[u64]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

impl Balancer for RoundRobin {
    fn pick(&self, endpoints: &Endpoints, _key: Option<u64>) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        // Usually the slot's endpoint is available; otherwise scan on from it (one full
        // cycle at most). One counter step per pick: concurrent picks cannot make this
        // one skip over every available slot.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|k| self.schedule[(n + k) % len] as usize)
            .find(|&i| endpoints.is_available(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn picks(rr: &RoundRobin, eps: &Endpoints, n: usize) -> Vec<usize> {
        (0..n).map(|_| rr.pick(eps, None).unwrap()).collect()
    }

    #[test]
    fn equal_weights_alternate() {
        let eps = Endpoints::new(&[1, 1]);
        assert_eq!(picks(&RoundRobin::new(&[1, 1]), &eps, 4), vec![0, 1, 0, 1]);
    }

    #[test]
    fn smooth_order() {
        let eps = Endpoints::new(&[5, 1, 1]);
        assert_eq!(
            picks(&RoundRobin::new(&[5, 1, 1]), &eps, 7),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn unavailable_endpoints_are_skipped() {
        let eps = Endpoints::new(&[1, 1, 1]);
        let rr = RoundRobin::new(&[1, 1, 1]);
        eps.set_available(1, false);
        assert!(picks(&rr, &eps, 10).iter().all(|&i| i != 1));
        eps.set_available(0, false);
        eps.set_available(2, false);
        assert_eq!(rr.pick(&eps, None), None);
    }

    #[test]
    fn concurrent_picks_always_find_the_available_endpoint() {
        let eps = std::sync::Arc::new(Endpoints::new(&[1, 1]));
        let rr = std::sync::Arc::new(RoundRobin::new(&[1, 1]));
        eps.set_available(0, false);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (eps, rr) = (eps.clone(), rr.clone());
                std::thread::spawn(move || (0..20_000).all(|_| rr.pick(&eps, None) == Some(1)))
            })
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()));
    }

    #[test]
    fn empty_cluster() {
        assert_eq!(RoundRobin::new(&[]).pick(&Endpoints::new(&[]), None), None);
    }

    proptest! {
        #[test]
        fn weights_are_honoured(weights in proptest::collection::vec(1u32..50, 1..8)) {
            let rr = RoundRobin::new(&weights);
            let eps = Endpoints::new(&weights);
            let total: u32 = weights.iter().sum();
            let mut counts = vec![0u32; weights.len()];
            for _ in 0..total * 3 {
                counts[rr.pick(&eps, None).unwrap()] += 1;
            }
            for (c, w) in counts.iter().zip(&weights) {
                prop_assert_eq!(*c, w * 3);
            }
        }

        #[test]
        fn huge_weights_stay_bounded(weights in proptest::collection::vec(1u32..10_000, 1..40)) {
            let rr = RoundRobin::new(&weights);
            prop_assert!(rr.schedule.len() as u64 <= MAX_SCHEDULE + weights.len() as u64);
            prop_assert!(rr.pick(&Endpoints::new(&weights), None).is_some());
        }
    }
}
