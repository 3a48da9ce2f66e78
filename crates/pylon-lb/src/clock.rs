//! The monotonic clock read as plain nanoseconds, precise or coarse. The request path
//! notes activity on every read and write of a connection, an idle pooled
//! connection's age twice per proxied request, and its endpoint's state once; for
//! those, the kernel's coarse clock (its tick, a few milliseconds; read from the vDSO
//! without the cycle counter) is exact enough, where timing reports keep the precise
//! one. Both are the clock
//! `std::time::Instant` reads on Linux (`CLOCK_MONOTONIC`), so values taken here and
//! instants compare on one timeline.

use nix::time::{ClockId, clock_gettime};

/// Reads `clock` through the C library, which takes it from the vDSO.
fn read(clock: ClockId) -> u64 {
    clock_gettime(clock).map_or(0, |t| {
        u64::try_from(t.tv_sec())
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(t.tv_nsec()).unwrap_or(0))
    })
}

/// Now, in nanoseconds on the monotonic clock.
pub fn precise_ns() -> u64 {
    read(ClockId::CLOCK_MONOTONIC)
}

/// Now to the kernel's last tick (behind [`precise_ns`] by less than a tick), in
/// nanoseconds on the same clock.
pub fn coarse_ns() -> u64 {
    read(ClockId::CLOCK_MONOTONIC_COARSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_trails_the_precise_one_by_less_than_a_tick() {
        let coarse = coarse_ns();
        let precise = precise_ns();
        // A kernel tick is at most 10 ms (HZ=100).
        assert!(
            coarse <= precise && precise - coarse < 20_000_000,
            "{coarse} {precise}"
        );
    }
}
