//! Slow start: the linear ramp of an endpoint back in rotation, and whether it takes a
//! request the balancer picked for it (else the balancer picks again, a few times).

use std::time::Duration;

use crate::Endpoints;

/// The share (0 to 1) of its normal traffic an endpoint should get at `now_ns`: rising
/// linearly from 0 when it came back into rotation (`back_since_ns`) to 1 after
/// `window`. An endpoint in rotation from the start (`back_since_ns` 0) and a zero
/// window get 1. Times are nanoseconds from one epoch ([`Endpoints::now_ns`]).
pub fn ramp_factor(back_since_ns: u64, now_ns: u64, window: Duration) -> f64 {
    if back_since_ns == 0 || window.is_zero() {
        return 1.0;
    }
    let elapsed = now_ns.saturating_sub(back_since_ns) as f64;
    (elapsed / window.as_nanos() as f64).clamp(0.0, 1.0)
}

/// Whether an endpoint at ramp `factor` takes the request, given a uniformly random
/// `random`: with probability `factor` (in steps of 1/10 000), always at 1.
pub fn admit(factor: f64, random: u64) -> bool {
    factor >= 1.0 || (random % 10_000) as f64 / 10_000.0 < factor
}

/// Slow start over a window, for one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowStart {
    window: Duration,
}

impl SlowStart {
    /// Re-picks at most this many times for one request; the last pick then stands.
    pub const REPICKS: usize = 4;

    pub fn new(window: Duration) -> SlowStart {
        SlowStart { window }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Endpoint `i`'s ramp factor at `now_ns` (1 for an unknown index).
    pub fn factor(&self, eps: &Endpoints, i: usize, now_ns: u64) -> f64 {
        ramp_factor(eps.back_since_ns(i), now_ns, self.window)
    }

    /// The endpoint that takes the request, from the balancer's pick `first`: each pick
    /// is admitted with the probability of its ramp, else `repick` asks the balancer
    /// again, [`REPICKS`](Self::REPICKS) times at most. `random` is drawn only for
    /// endpoints still ramping. `None` when a re-pick finds no endpoint.
    pub fn pick(
        &self,
        eps: &Endpoints,
        first: usize,
        now_ns: u64,
        mut random: impl FnMut() -> u64,
        mut repick: impl FnMut() -> Option<usize>,
    ) -> Option<usize> {
        let mut index = first;
        for _ in 0..Self::REPICKS {
            let f = self.factor(eps, index, now_ns);
            if f >= 1.0 || admit(f, random()) {
                break;
            }
            index = repick()?;
        }
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    /// A deterministic random sequence (splitmix64).
    fn sequence(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    #[test]
    fn the_ramp_rises_linearly_over_the_window() {
        let window = Duration::from_secs(40);
        let back = 100 * SEC;
        assert_eq!(ramp_factor(back, back, window), 0.0, "just back");
        assert_eq!(ramp_factor(back, back + 10 * SEC, window), 0.25);
        assert_eq!(ramp_factor(back, back + 20 * SEC, window), 0.5);
        assert_eq!(ramp_factor(back, back + 30 * SEC, window), 0.75);
        assert_eq!(
            ramp_factor(back, back + 40 * SEC, window),
            1.0,
            "at the end"
        );
        assert_eq!(ramp_factor(back, back + 400 * SEC, window), 1.0, "after");
        assert_eq!(ramp_factor(back, back - SEC, window), 0.0, "clock behind");
    }

    #[test]
    fn no_window_or_no_return_means_full_share() {
        assert_eq!(ramp_factor(5 * SEC, 5 * SEC, Duration::ZERO), 1.0);
        assert_eq!(ramp_factor(0, 5 * SEC, Duration::from_secs(60)), 1.0);
        let ss = SlowStart::new(Duration::ZERO);
        let eps = Endpoints::new(&[1]);
        eps.set_available(0, false);
        eps.set_available(0, true);
        assert_eq!(ss.factor(&eps, 0, eps.now_ns()), 1.0);
        for r in [0, 1, 9_999, u64::MAX] {
            assert!(admit(1.0, r));
        }
    }

    #[test]
    fn the_factor_follows_the_endpoints_return() {
        let eps = Endpoints::new(&[1, 1]);
        let ss = SlowStart::new(Duration::from_secs(60));
        let now = eps.now_ns();
        assert_eq!(ss.factor(&eps, 0, now), 1.0, "in rotation from the start");
        assert_eq!(ss.factor(&eps, 7, now), 1.0, "no such endpoint");
        eps.set_available(0, false);
        eps.set_available(0, true);
        let back = eps.back_since_ns(0);
        assert!(back > 0);
        assert_eq!(ss.factor(&eps, 0, back), 0.0);
        assert_eq!(ss.factor(&eps, 0, back + 30 * SEC), 0.5);
        assert_eq!(ss.factor(&eps, 0, back + 60 * SEC), 1.0);
        assert_eq!(ss.factor(&eps, 1, back), 1.0, "the other never left");
    }

    #[test]
    fn admission_matches_the_factor_exactly_over_every_draw() {
        // Every residue modulo 10 000 once: exactly factor * 10 000 are admitted.
        for (factor, admitted) in [(0.0, 0), (0.25, 2_500), (0.5, 5_000), (0.9, 9_000)] {
            let n = (0..10_000u64).filter(|&r| admit(factor, r)).count();
            assert_eq!(n, admitted, "factor {factor}");
        }
    }

    #[test]
    fn admission_matches_the_factor_statistically() {
        let mut random = sequence(42);
        const DRAWS: usize = 100_000;
        for factor in [0.0, 0.1, 0.25, 0.5, 0.75, 0.99] {
            let n = (0..DRAWS).filter(|_| admit(factor, random())).count();
            let share = n as f64 / DRAWS as f64;
            assert!((share - factor).abs() < 0.01, "factor {factor}: {share}");
        }
    }

    #[test]
    fn a_ramping_endpoint_is_picked_again_a_few_times_at_most() {
        let eps = Endpoints::new(&[1, 1]);
        let ss = SlowStart::new(Duration::from_secs(60));
        eps.set_available(0, false);
        eps.set_available(0, true);
        let back = eps.back_since_ns(0);
        // Just back (factor 0): never admitted; the re-pick (endpoint 1) is.
        let mut draws = 0;
        let picked = ss.pick(
            &eps,
            0,
            back,
            || {
                draws += 1;
                0
            },
            || Some(1),
        );
        assert_eq!((picked, draws), (Some(1), 1), "no draw for a full endpoint");
        // A balancer that keeps answering the ramping endpoint: the last pick stands.
        let mut repicks = 0;
        let picked = ss.pick(
            &eps,
            0,
            back,
            || 0,
            || {
                repicks += 1;
                Some(0)
            },
        );
        assert_eq!((picked, repicks), (Some(0), SlowStart::REPICKS));
        // No endpoint on a re-pick: none.
        assert_eq!(ss.pick(&eps, 0, back, || 0, || None), None);
        // Full share: the first pick stands, nothing drawn.
        let picked = ss.pick(&eps, 1, back, || unreachable!(), || unreachable!());
        assert_eq!(picked, Some(1));
    }

    #[test]
    fn a_half_ramped_endpoint_keeps_its_first_pick_half_the_time() {
        let eps = Endpoints::new(&[1, 1]);
        let ss = SlowStart::new(Duration::from_secs(60));
        eps.set_available(0, false);
        eps.set_available(0, true);
        let now = eps.back_since_ns(0) + 30 * SEC;
        let mut random = sequence(7);
        const PICKS: usize = 20_000;
        let kept = (0..PICKS)
            .filter(|_| ss.pick(&eps, 0, now, &mut random, || Some(1)) == Some(0))
            .count();
        let share = kept as f64 / PICKS as f64;
        assert!((share - 0.5).abs() < 0.02, "{share}");
    }

    proptest! {
        #[test]
        fn the_ramp_is_bounded_and_never_decreases(
            back in 1u64..u64::MAX / 4,
            window_ns in 1u64..10_000 * SEC,
            a in 0u64..u64::MAX / 4,
            b in 0u64..u64::MAX / 4,
        ) {
            let window = Duration::from_nanos(window_ns);
            let (t1, t2) = (a.min(b), a.max(b));
            let (f1, f2) = (ramp_factor(back, t1, window), ramp_factor(back, t2, window));
            prop_assert!((0.0..=1.0).contains(&f1) && (0.0..=1.0).contains(&f2));
            prop_assert!(f1 <= f2, "{t1} -> {f1}, {t2} -> {f2}");
            prop_assert_eq!(ramp_factor(back, back, window), 0.0);
            prop_assert_eq!(ramp_factor(back, back + window_ns, window), 1.0);
            prop_assert_eq!(ramp_factor(back, back + window_ns + a, window), 1.0);
            prop_assert_eq!(ramp_factor(back, t1, Duration::ZERO), 1.0);
            prop_assert_eq!(ramp_factor(0, t1, window), 1.0);
        }

        #[test]
        fn admission_grows_with_the_factor(
            f1 in 0.0f64..=1.0,
            f2 in 0.0f64..=1.0,
            random in any::<u64>(),
        ) {
            // A draw admitted at some share is admitted at any larger one.
            let (low, high) = (f1.min(f2), f1.max(f2));
            prop_assert!(!admit(low, random) || admit(high, random));
            prop_assert!(!admit(0.0, random));
            prop_assert!(admit(1.0, random));
        }
    }
}
