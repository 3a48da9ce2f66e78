//! Gives memory back to the operating system after connection floods. glibc's malloc
//! keeps the memory of freed connections in its arenas (it returns only the top of a
//! heap by itself): 3,000 slow connections took RSS from 22 MiB to 120 MiB, and it
//! stayed there after they closed; `malloc_trim(0)` brings it back to 24 MiB. This
//! watches the number of open client connections and trims once a flood has ebbed:
//! at least [`EBB`] fewer connections than the peak since the last trim, and at most
//! half of it. Other C libraries (musl) and allocators do without.

use std::sync::Arc;
use std::time::Duration;

use crate::listener::ConnTracker;

/// How often the connection count is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Connections closed since the peak before a trim is worth its cost.
const EBB: usize = 256;

/// Whether a trim is due: the flood has ebbed by at least [`EBB`] connections and to at
/// most half of its peak.
fn ebbed(peak: usize, live: usize) -> bool {
    peak.saturating_sub(live) >= EBB && live <= peak / 2
}

/// Runs for the life of the process (spawn it once, from the binary).
pub async fn give_back_after_floods(tracker: Arc<ConnTracker>) {
    let mut peak = tracker.live();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let live = tracker.live();
        peak = peak.max(live);
        if ebbed(peak, live) {
            let flood = peak;
            peak = live;
            // It walks the heap under the allocator's locks: off the async workers.
            let _ = tokio::task::spawn_blocking(move || {
                let before = crate::observe::exposition::ProcessStats::read().resident_bytes;
                trim();
                let after = crate::observe::exposition::ProcessStats::read().resident_bytes;
                tracing::debug!(
                    peak_connections = flood,
                    connections = live,
                    rss_before = before,
                    rss_after = after,
                    "gave freed memory back to the OS"
                );
            })
            .await;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and is safe to call from any thread at any
    // time; it only releases free memory of glibc's own arenas.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_flood_has_ebbed() {
        assert!(!ebbed(10, 0), "a handful of connections is no flood");
        assert!(!ebbed(3_000, 2_000), "still more than half the peak");
        assert!(ebbed(3_000, 1_500));
        assert!(ebbed(3_000, 0));
        assert!(!ebbed(300, 100), "fewer than EBB closed");
    }
}
