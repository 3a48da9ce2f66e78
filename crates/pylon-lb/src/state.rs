//! Live endpoint state shared by balancers, health checks and the request path:
//! availability, requests in flight and a peak-EWMA of response latency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Decay time of the latency average.
const EWMA_DECAY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct EndpointState {
    pub weight: u32,
    available: AtomicBool,
    in_flight: AtomicU64,
    /// Peak-EWMA latency in nanoseconds (0 = no sample yet).
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last updated, nanoseconds since `Endpoints::epoch`.
    ewma_at: AtomicU64,
}

/// The endpoints of one cluster, in configuration order.
#[derive(Debug)]
pub struct Endpoints {
    epoch: Instant,
    states: Vec<EndpointState>,
}

impl Endpoints {
    pub fn new(weights: &[u32]) -> Endpoints {
        Endpoints {
            epoch: Instant::now(),
            states: weights
                .iter()
                .map(|&w| EndpointState {
                    weight: w.max(1),
                    available: AtomicBool::new(true),
                    in_flight: AtomicU64::new(0),
                    ewma_ns: AtomicU64::new(0),
                    ewma_at: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&EndpointState> {
        self.states.get(i)
    }

    pub fn is_available(&self, i: usize) -> bool {
        self.states
            .get(i)
            .is_some_and(|s| s.available.load(Ordering::Relaxed))
    }

    /// Marks an endpoint in or out of rotation (health checks, outlier ejection).
    pub fn set_available(&self, i: usize, available: bool) {
        if let Some(s) = self.states.get(i) {
            s.available.store(available, Ordering::Relaxed);
        }
    }

    pub fn available_count(&self) -> usize {
        (0..self.len()).filter(|&i| self.is_available(i)).count()
    }

    pub fn in_flight(&self, i: usize) -> u64 {
        self.states
            .get(i)
            .map_or(0, |s| s.in_flight.load(Ordering::Relaxed))
    }

    /// A request starts on endpoint `i`.
    pub fn begin(&self, i: usize) {
        if let Some(s) = self.states.get(i) {
            s.in_flight.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request on endpoint `i` ended; `latency` is its time to the response head.
    pub fn end(&self, i: usize, latency: Option<Duration>) {
        let Some(s) = self.states.get(i) else { return };
        s.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(l) = latency {
            self.observe(s, l);
        }
    }

    /// Peak EWMA: a slower sample is taken at once, faster ones decay in over time.
    fn observe(&self, s: &EndpointState, latency: Duration) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let sample = latency.as_nanos().min(u128::from(u64::MAX)) as u64;
        let prev = s.ewma_ns.load(Ordering::Relaxed);
        let next = if prev == 0 || sample > prev {
            sample
        } else {
            let elapsed = now.saturating_sub(s.ewma_at.load(Ordering::Relaxed)) as f64;
            let w = (-elapsed / EWMA_DECAY.as_nanos() as f64).exp();
            (prev as f64 * w + sample as f64 * (1.0 - w)) as u64
        };
        s.ewma_ns.store(next.max(1), Ordering::Relaxed);
        s.ewma_at.store(now, Ordering::Relaxed);
    }

    /// The latency average in nanoseconds; 0 before any sample.
    pub fn ewma_ns(&self, i: usize) -> u64 {
        self.states
            .get(i)
            .map_or(0, |s| s.ewma_ns.load(Ordering::Relaxed))
    }
}
