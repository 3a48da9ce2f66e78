//! Counters that a thread adds to without an atomic read-modify-write: each of the
//! first threads to count owns a shard, which only it writes (a load and a store);
//! other threads share shard 0 (`fetch_add`); readers add the shards up. A
//! `fetch_add` cost about 9 ns on the benchmark's machine (a locked instruction
//! drains the store buffer), and every request bumped some eleven counters (three
//! latency histograms, two status classes): about 0.1 µs of a request's 3.5 µs of
//! user time (docs/performance.md).
//!
//! (Written here: the sharded-counter crates keep one cache line per counter and
//! thread, 17 of them for one histogram; here a shard holds all of a histogram's.)

use std::cell::Cell;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Shards owned by one thread each, at most.
const MAX_OWNED: usize = 8;

/// Shard 0 and one per thread that may own one: as many as the machine has cores, up
/// to [`MAX_OWNED`] (a runtime's workers are the threads that count).
static SHARDS: LazyLock<usize> = LazyLock::new(|| {
    1 + std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_OWNED)
});

/// The next shard to hand to a thread.
static NEXT: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's shard; `usize::MAX` until it first counts.
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The calling thread's shard: its own, or 0 once all are taken. A shard is never
/// handed to a second thread, even after its owner ended.
#[inline]
fn slot() -> usize {
    SLOT.with(|s| {
        let slot = s.get();
        if slot != usize::MAX {
            return slot;
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let slot = if n < *SHARDS { n } else { 0 };
        s.set(slot);
        slot
    })
}

/// One shard's `K` counters, on cache lines of their own.
#[repr(align(64))]
struct Shard<const K: usize>([AtomicU64; K]);

/// `K` counters, sharded by thread.
pub struct Sharded<const K: usize> {
    shards: Box<[Shard<K>]>,
}

impl<const K: usize> Default for Sharded<K> {
    fn default() -> Self {
        Sharded {
            shards: (0..*SHARDS)
                .map(|_| Shard(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }
}

impl<const K: usize> std::fmt::Debug for Sharded<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries((0..K).map(|i| self.get(i))).finish()
    }
}

impl<const K: usize> Sharded<K> {
    /// Adds `v` to counter `i` (which must be below `K`).
    #[inline]
    pub fn add(&self, i: usize, v: u64) {
        self.add_each(&[(i, v)]);
    }

    /// Adds each `(i, v)`: `v` to counter `i`, the thread's shard looked up once.
    #[inline]
    pub fn add_each(&self, adds: &[(usize, u64)]) {
        let slot = slot();
        let Some(shard) = self.shards.get(slot) else {
            return;
        };
        for &(i, v) in adds {
            let Some(c) = shard.0.get(i) else {
                continue;
            };
            if slot == 0 {
                c.fetch_add(v, Ordering::Relaxed);
            } else {
                // Only this thread writes this shard.
                c.store(c.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
            }
        }
    }

    /// Takes `v` from counter `i` (a gauge's: see [`Self::gauge`]).
    #[inline]
    pub fn sub(&self, i: usize, v: u64) {
        self.add_each(&[(i, v.wrapping_neg())]);
    }

    /// Gauge `i`, summed over the shards: what was added less what was taken, 0 when
    /// the sum is below it (a reader may see a shard's take before another shard's
    /// add that came first).
    pub fn gauge(&self, i: usize) -> u64 {
        let sum = self.get(i);
        if sum > u64::MAX / 2 { 0 } else { sum }
    }

    /// Counter `i`, summed over the shards (0 for an `i` past the last).
    pub fn get(&self, i: usize) -> u64 {
        self.shards.iter().fold(0u64, |sum, s| {
            sum.wrapping_add(s.0.get(i).map_or(0, |c| c.load(Ordering::Relaxed)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_from_many_threads_add_up() {
        // More threads than shards: some own one, the rest share shard 0.
        let c = Arc::new(Sharded::<3>::default());
        let threads: Vec<_> = (0..MAX_OWNED * 2 + 3)
            .map(|_| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        c.add(1, 1);
                        c.add(2, 3);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("the counting thread ended");
        }
        let n = (MAX_OWNED as u64 * 2 + 3) * 10_000;
        assert_eq!(c.get(0), 0);
        assert_eq!(c.get(1), n);
        assert_eq!(c.get(2), 3 * n);
    }

    #[test]
    fn a_gauge_taken_on_other_threads_adds_up_and_never_reads_negative() {
        let g = Arc::new(Sharded::<1>::default());
        // Added here, taken on threads of their own (each on its own shard or on
        // shard 0).
        for _ in 0..MAX_OWNED * 2 {
            g.add(0, 5);
        }
        let threads: Vec<_> = (0..MAX_OWNED * 2)
            .map(|_| {
                let g = Arc::clone(&g);
                std::thread::spawn(move || g.sub(0, 3))
            })
            .collect();
        for t in threads {
            t.join().expect("the taking thread ended");
        }
        assert_eq!(g.gauge(0), (MAX_OWNED as u64 * 2) * 2);
        // Taken before it is added (as a reader may see shards): 0, not a wrapped sum.
        let h = Sharded::<1>::default();
        h.sub(0, 1);
        assert_eq!(h.gauge(0), 0);
        h.add(0, 1);
        assert_eq!(h.gauge(0), 0);
        h.add(0, 1);
        assert_eq!(h.gauge(0), 1);
    }
}
