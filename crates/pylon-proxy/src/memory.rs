//! Gives memory back to the operating system. Pylon's own allocations go to mimalloc
//! (the binary's global allocator), which gives emptied pages back once they have
//! stayed empty for its purge delay, but only when it is called, and a thread's heap
//! only from that thread: an idle process, or an idle worker thread whose blocks were
//! freed by another, would keep them. So every [`CHECK_EVERY`] this collects its own
//! thread's heap and sends a few tasks to the other workers to collect theirs (8,000
//! parked keep-alive connections settle at 0.45 KiB each instead of 1.5 KiB; 5,000 slow
//! connections' memory is back within about 3 s of their close, against 10 s or more).
//!
//! What C libraries allocate (aws-lc's TLS state) goes to glibc's malloc, which keeps
//! the memory of freed connections in its arenas (it returns only the top of a heap by
//! itself): 3,000 slow TLS connections took RSS from 22 MiB to 120 MiB, and it stayed
//! there after they closed; `malloc_trim(0)` brings it back. This watches the number of
//! open client connections and trims once a flood has ebbed: at least [`EBB`] fewer
//! connections than the peak since the last trim, and at most half of it. Other C
//! libraries (musl) do without.

use std::sync::Arc;
use std::time::Duration;

use crate::listener::ConnTracker;

/// How often the connection count is looked at, and mimalloc asked to purge.
const CHECK_EVERY: Duration = Duration::from_secs(1);
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
        collect_this_thread();
        collect_on_workers();
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

/// Each worker thread's heap is collected by that thread only: every tick, tasks go to
/// the runtime's workers (spawned together, a parked worker is woken to steal some), and
/// each collects its thread's heap unless that thread did within the last tick.
fn collect_on_workers() {
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    for _ in 0..workers.saturating_sub(1) * 2 {
        tokio::spawn(async { collect_this_thread() });
    }
}

/// Collects this thread's heap, at most once per [`CHECK_EVERY`].
fn collect_this_thread() {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> =
            const { std::cell::Cell::new(None) };
    }
    let now = std::time::Instant::now();
    let due = LAST.with(|last| {
        let due = last
            .get()
            .is_none_or(|t| now.duration_since(t) >= CHECK_EVERY / 2);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        purge_freed_pages();
    }
}

/// Lets mimalloc give back the pages that have been empty longer than its purge delay
/// (a no-op when it is not the global allocator: its heaps are then empty).
fn purge_freed_pages() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any
    // time; without `force` it only frees what is already free.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(false);
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
