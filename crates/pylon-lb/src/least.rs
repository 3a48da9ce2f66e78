//! Load-aware and random balancers: least connections, least request (power of two
//! choices over peak-EWMA latency, as Envoy and linkerd), and weighted random.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Balancer, Endpoints};

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish() | 1
}

/// A fast per-thread pseudo-random number (xorshift64*); not for cryptography.
pub(crate) fn random() -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// The available endpoint with the fewest requests in flight per unit of weight; ties
/// broken by rotating where the scan starts.
#[derive(Debug, Default)]
pub struct LeastConnections {
    start: AtomicUsize,
}

impl Balancer for LeastConnections {
    fn pick(&self, eps: &Endpoints, _key: Option<u64>) -> Option<usize> {
        let n = eps.len();
        if n == 0 {
            return None;
        }
        let start = self.start.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, u128)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !eps.is_available(i) {
                continue;
            }
            let weight = eps.get(i).map_or(1, |s| s.weight) as u128;
            // Compare in_flight / weight without division: scale by the other weights.
            let load = u128::from(eps.in_flight(i)) * 1_000_000 / weight;
            if best.is_none_or(|(_, b)| load < b) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Power of two choices: two random available endpoints, the one with the lower
/// `ewma latency x (in flight + 1) / weight` wins.
#[derive(Debug, Default)]
pub struct LeastRequest;

impl LeastRequest {
    fn cost(eps: &Endpoints, i: usize) -> f64 {
        let weight = f64::from(eps.get(i).map_or(1, |s| s.weight));
        // No sample yet: assume 1 ms, so that new endpoints get tried.
        let ewma = match eps.ewma_ns(i) {
            0 => 1_000_000.0,
            v => v as f64,
        };
        ewma * (eps.in_flight(i) as f64 + 1.0) / weight
    }
}

impl Balancer for LeastRequest {
    fn pick(&self, eps: &Endpoints, _key: Option<u64>) -> Option<usize> {
        let available: Vec<usize> = (0..eps.len()).filter(|&i| eps.is_available(i)).collect();
        match available.len() {
            0 => None,
            1 => Some(available[0]),
            n => {
                let a = available[(random() % n as u64) as usize];
                let mut b = available[(random() % (n as u64 - 1)) as usize];
                if b == a {
                    b = available[n - 1];
                }
                Some(if Self::cost(eps, b) < Self::cost(eps, a) {
                    b
                } else {
                    a
                })
            }
        }
    }
}

/// Weighted random among the available endpoints.
#[derive(Debug)]
pub struct Random {
    weights: Vec<u64>,
}

impl Random {
    pub fn new(weights: &[u32]) -> Random {
        Random {
            weights: weights.iter().map(|&w| u64::from(w.max(1))).collect(),
        }
    }
}

impl Balancer for Random {
    fn pick(&self, eps: &Endpoints, _key: Option<u64>) -> Option<usize> {
        let total: u64 = (0..self.weights.len())
            .filter(|&i| eps.is_available(i))
            .map(|i| self.weights[i])
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = random() % total;
        for (i, &w) in self.weights.iter().enumerate() {
            if !eps.is_available(i) {
                continue;
            }
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn least_connections_prefers_the_idle_endpoint() {
        let eps = Endpoints::new(&[1, 1, 1]);
        let lc = LeastConnections::default();
        eps.begin(0);
        eps.begin(0);
        eps.begin(2);
        for _ in 0..10 {
            assert_eq!(lc.pick(&eps, None), Some(1));
        }
        eps.set_available(1, false);
        assert_eq!(lc.pick(&eps, None), Some(2));
    }

    #[test]
    fn least_connections_honours_weight() {
        let eps = Endpoints::new(&[1, 4]);
        let lc = LeastConnections::default();
        eps.begin(0);
        eps.begin(1);
        eps.begin(1);
        // 1/1 against 2/4: the heavier endpoint is less loaded.
        assert_eq!(lc.pick(&eps, None), Some(1));
    }

    #[test]
    fn least_request_avoids_the_slow_endpoint() {
        let eps = Endpoints::new(&[1, 1]);
        let lr = LeastRequest;
        eps.begin(0);
        eps.end(0, Some(Duration::from_millis(200)));
        eps.begin(1);
        eps.end(1, Some(Duration::from_millis(2)));
        for _ in 0..50 {
            assert_eq!(lr.pick(&eps, None), Some(1));
        }
    }

    #[test]
    fn random_respects_weights_and_availability() {
        let eps = Endpoints::new(&[1, 3, 1]);
        let r = Random::new(&[1, 3, 1]);
        let mut counts = [0u32; 3];
        for _ in 0..50_000 {
            counts[r.pick(&eps, None).unwrap()] += 1;
        }
        let share = f64::from(counts[1]) / 50_000.0;
        assert!((share - 0.6).abs() < 0.03, "{counts:?}");
        eps.set_available(1, false);
        assert!((0..1000).all(|_| r.pick(&eps, None) != Some(1)));
        eps.set_available(0, false);
        eps.set_available(2, false);
        assert_eq!(r.pick(&eps, None), None);
    }
}
