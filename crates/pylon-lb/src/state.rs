//! Live endpoint state shared by balancers, health checks and the request path:
//! availability, requests in flight and a peak-EWMA of response latency.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Times kept in endpoint state count nanoseconds from the process's first reading
/// (so that a state keeps its meaning when it moves into a new endpoint set, on DNS
/// updates), on the coarse clock: these times are seconds (ejections, slow start, the
/// latency average's decay), and the request path reads it with every response.
fn epoch() -> u64 {
    static EPOCH: OnceLock<u64> = OnceLock::new();
    *EPOCH.get_or_init(crate::clock::coarse_ns)
}

fn now_ns() -> u64 {
    crate::clock::coarse_ns().saturating_sub(epoch()).max(1)
}

/// Decay time of the latency average.
const EWMA_DECAY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct EndpointState {
    pub weight: u32,
    available: AtomicBool,
    in_flight: AtomicU64,
    /// Peak-EWMA latency in nanoseconds (0 = no sample yet).
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last updated, nanoseconds since the epoch.
    ewma_at: AtomicU64,
    /// Passive health: consecutive failed requests, and the ejection in force.
    consecutive_failures: AtomicU32,
    /// Nanoseconds since the epoch until which the endpoint is ejected; 0: not.
    ejected_until: AtomicU64,
    /// How many times it has been ejected (the ejection time grows with it).
    ejections: AtomicU32,
    /// Nanoseconds since the epoch when it last came back into rotation; 0:
    /// in rotation from the start (no slow start).
    back_since: AtomicU64,
    /// Drained by an operator: no new requests, whatever its health.
    drained: AtomicBool,
    /// Whether an active health check has given a first result.
    checked: AtomicBool,
}

/// Passive health (outlier detection) settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Consecutive failures (5xx, connect failure, reset, timeout) that eject.
    pub consecutive_failures: u32,
    /// Ejection time, multiplied by the number of times the endpoint was ejected.
    pub base_ejection: Duration,
    /// At most this percentage of the endpoints is ejected at once.
    pub max_ejection_percent: u32,
}

impl EndpointState {
    /// A new endpoint, in rotation.
    pub fn new(weight: u32) -> EndpointState {
        EndpointState {
            weight: weight.max(1),
            available: AtomicBool::new(true),
            in_flight: AtomicU64::new(0),
            ewma_ns: AtomicU64::new(0),
            ewma_at: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            back_since: AtomicU64::new(0),
            drained: AtomicBool::new(false),
            checked: AtomicBool::new(false),
        }
    }

    /// Takes the endpoint out of rotation for new requests (or puts it back); requests
    /// in flight on it finish.
    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Records that an active health check has judged the endpoint once.
    pub fn mark_checked(&self) {
        self.checked.store(true, Ordering::Relaxed);
    }

    pub fn is_checked(&self) -> bool {
        self.checked.load(Ordering::Relaxed)
    }

    /// Whether active health checks have it in rotation (ejection and panic aside).
    pub fn is_up(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// Marks the endpoint in or out of rotation (active health checks); one coming
    /// back starts its slow start.
    pub fn set_available(&self, available: bool) {
        let was = self.available.swap(available, Ordering::Relaxed);
        if available && !was {
            self.back_since.store(now_ns(), Ordering::Relaxed);
        }
    }

    /// Requests in flight on it now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// The endpoints of one cluster, in configuration order. The states are shared, so a
/// new set (after a DNS change) keeps the health, load and latency of the endpoints it
/// has in common with the old one.
#[derive(Debug)]
pub struct Endpoints {
    states: Vec<Arc<EndpointState>>,
    /// Panic mode: too few endpoints are healthy, so every endpoint takes traffic.
    panic: AtomicBool,
}

impl Endpoints {
    /// Fresh endpoints with these weights.
    pub fn new(weights: &[u32]) -> Endpoints {
        Self::from_states(
            weights
                .iter()
                .map(|&w| Arc::new(EndpointState::new(w)))
                .collect(),
        )
    }

    /// A set over existing (possibly shared) endpoint states.
    pub fn from_states(states: Vec<Arc<EndpointState>>) -> Endpoints {
        epoch();
        Endpoints {
            states,
            panic: AtomicBool::new(false),
        }
    }

    /// The shared state of endpoint `i`.
    pub fn state(&self, i: usize) -> Option<&Arc<EndpointState>> {
        self.states.get(i)
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&EndpointState> {
        self.states.get(i).map(|s| &**s)
    }

    fn now(&self) -> u64 {
        now_ns()
    }

    /// In rotation: healthy (active checks) and not ejected (passive), or any endpoint
    /// while in panic mode.
    pub fn is_available(&self, i: usize) -> bool {
        if self.states.get(i).is_some_and(|s| s.is_drained()) {
            return false;
        }
        if self.panic.load(Ordering::Relaxed) && i < self.states.len() {
            return true;
        }
        self.is_healthy(i)
    }

    /// Healthy and not ejected, whatever the panic mode.
    pub fn is_healthy(&self, i: usize) -> bool {
        self.states.get(i).is_some_and(|s| {
            s.available.load(Ordering::Relaxed) && !s.is_drained() && {
                let until = s.ejected_until.load(Ordering::Relaxed);
                until == 0 || self.now() >= until
            }
        })
    }

    /// Whether the endpoint is ejected by outlier detection now.
    pub fn is_ejected(&self, i: usize) -> bool {
        self.states.get(i).is_some_and(|s| {
            let until = s.ejected_until.load(Ordering::Relaxed);
            until != 0 && self.now() < until
        })
    }

    /// Records a request's outcome for outlier detection. Returns the ejection time when
    /// this outcome ejected the endpoint.
    pub fn record_outcome(&self, i: usize, ok: bool, policy: &OutlierPolicy) -> Option<Duration> {
        let s = self.states.get(i)?;
        if ok {
            s.consecutive_failures.store(0, Ordering::Relaxed);
            return None;
        }
        let failures = s.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < policy.consecutive_failures || self.is_ejected(i) {
            return None;
        }
        let ejected = (0..self.len()).filter(|&j| self.is_ejected(j)).count();
        if (ejected + 1) * 100 > self.len() * policy.max_ejection_percent as usize {
            return None;
        }
        let times = s.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = policy.base_ejection.saturating_mul(times.min(10));
        s.ejected_until.store(
            self.now() + duration.as_nanos().min(u128::from(u64::MAX / 2)) as u64,
            Ordering::Relaxed,
        );
        s.consecutive_failures.store(0, Ordering::Relaxed);
        Some(duration)
    }

    /// Marks an endpoint in or out of rotation (health checks, outlier ejection).
    pub fn set_available(&self, i: usize, available: bool) {
        if let Some(s) = self.states.get(i) {
            s.set_available(available);
        }
    }

    /// Slow start: the share (0 to 1) of its normal traffic an endpoint should get,
    /// ramping up linearly over `window` after it came back into rotation
    /// ([`ramp_factor`](crate::ramp_factor) at the current time).
    pub fn slow_start_factor(&self, i: usize, window: Duration) -> f64 {
        crate::ramp_factor(self.back_since_ns(i), self.now(), window)
    }

    /// When endpoint `i` last came back into rotation, in nanoseconds on the clock of
    /// [`now_ns`](Self::now_ns); 0 when in rotation from the start (or no such endpoint).
    pub fn back_since_ns(&self, i: usize) -> u64 {
        self.states
            .get(i)
            .map_or(0, |s| s.back_since.load(Ordering::Relaxed))
    }

    /// The clock endpoint times are kept on: nanoseconds from a process-wide epoch
    /// (never 0).
    pub fn now_ns(&self) -> u64 {
        self.now()
    }

    pub fn available_count(&self) -> usize {
        (0..self.len()).filter(|&i| self.is_available(i)).count()
    }

    /// Enters panic mode when fewer than `threshold_percent` of the endpoints are
    /// healthy, and leaves it when enough are again (as Envoy's panic threshold).
    pub fn update_panic(&self, threshold_percent: u32) -> bool {
        let healthy = (0..self.len()).filter(|&i| self.is_healthy(i)).count();
        let panic = healthy * 100 < self.len() * threshold_percent as usize;
        self.panic.store(panic, Ordering::Relaxed);
        panic
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
        let now = self.now();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_eject_for_a_growing_time_within_the_cap() {
        let eps = Endpoints::new(&[1, 1, 1, 1]);
        let policy = OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        };
        assert_eq!(eps.record_outcome(0, false, &policy), None);
        assert_eq!(
            eps.record_outcome(0, true, &policy),
            None,
            "a success resets the count"
        );
        assert_eq!(eps.record_outcome(0, false, &policy), None);
        assert_eq!(eps.record_outcome(0, false, &policy), None);
        assert_eq!(
            eps.record_outcome(0, false, &policy),
            Some(Duration::from_secs(30))
        );
        assert!(!eps.is_available(0));
        for _ in 0..3 {
            eps.record_outcome(1, false, &policy);
        }
        assert!(eps.is_ejected(1));
        // 2 of 4 ejected is the 50% cap: a third is not ejected.
        for _ in 0..5 {
            assert_eq!(eps.record_outcome(2, false, &policy), None);
        }
        assert!(eps.is_available(2));
    }

    #[test]
    fn drained_endpoints_take_nothing_even_in_panic_mode() {
        let eps = Endpoints::new(&[1, 1]);
        eps.states[0].set_drained(true);
        assert!(!eps.is_available(0));
        eps.set_available(1, false);
        assert!(eps.update_panic(50));
        assert!(!eps.is_available(0), "drained stays out in panic mode");
        assert!(eps.is_available(1));
        eps.states[0].set_drained(false);
        assert!(eps.is_available(0));
    }

    #[test]
    fn panic_mode_uses_every_endpoint() {
        let eps = Endpoints::new(&[1, 1, 1]);
        eps.set_available(0, false);
        assert!(!eps.update_panic(50), "2 of 3 healthy");
        eps.set_available(1, false);
        assert!(eps.update_panic(50), "1 of 3 healthy");
        assert!(eps.is_available(0) && eps.is_available(1));
        assert!(!eps.is_healthy(0));
        eps.set_available(1, true);
        assert!(!eps.update_panic(50));
        assert!(!eps.is_available(0));
    }

    #[test]
    fn slow_start_ramps_after_recovery_only() {
        let eps = Endpoints::new(&[1, 1]);
        let window = Duration::from_secs(3600);
        assert_eq!(
            eps.slow_start_factor(0, window),
            1.0,
            "in rotation from the start"
        );
        eps.set_available(0, false);
        eps.set_available(0, true);
        let f = eps.slow_start_factor(0, window);
        assert!(f < 0.01, "just back: {f}");
        assert_eq!(
            eps.slow_start_factor(0, Duration::ZERO),
            1.0,
            "no window, no ramp"
        );
        assert_eq!(eps.slow_start_factor(1, window), 1.0);
    }
}
