//! What happened lately, for the dashboard: the slowest requests of the last minutes
//! (with their timing breakdown, taken from their access-log records) and the recent
//! reloads with their results. Cheap on the request path: a request is compared with
//! an atomic threshold and only one slower than the slowest kept takes the lock.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::AccessRecord;
use crate::lock;

/// The slowest requests kept.
const SLOWEST: usize = 10;
/// How long a slow request stays listed.
const SLOW_WINDOW: Duration = Duration::from_secs(300);
/// The reloads kept.
const RELOADS: usize = 20;

/// One of the slowest requests.
#[derive(Debug, Clone, Serialize)]
pub struct SlowRequest {
    /// Its access-log record (the timing breakdown included).
    #[serde(flatten)]
    pub record: AccessRecord,
    #[serde(skip)]
    ended: SystemTime,
}

/// One reload: when, whether it took effect, and its changes or errors.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadEntry {
    #[serde(serialize_with = "super::access_log::rfc3339")]
    pub time: SystemTime,
    pub ok: bool,
    /// The changes applied, or the errors that refused it.
    pub detail: Vec<String>,
}

/// The slowest recent requests and the recent reloads.
#[derive(Debug, Default)]
pub struct Recent {
    /// The duration (ns) a request must beat to be listed: the slowest list's shortest
    /// once it is full, else 0.
    threshold_ns: AtomicU64,
    slowest: Mutex<Vec<SlowRequest>>,
    reloads: Mutex<VecDeque<ReloadEntry>>,
}

impl Recent {
    /// Offers a finished request (tunnels, which last as long as their users, are not).
    pub fn offer(&self, record: &AccessRecord) {
        let ns = (record.duration_ms * 1e6) as u64;
        if ns <= self.threshold_ns.load(Ordering::Relaxed)
            || record.closed_by.is_some()
            || record.status == 101
        {
            return;
        }
        let mut list = lock(&self.slowest);
        list.push(SlowRequest {
            record: record.clone(),
            ended: SystemTime::now(),
        });
        list.sort_by(|a, b| b.record.duration_ms.total_cmp(&a.record.duration_ms));
        list.truncate(SLOWEST);
        self.set_threshold(&list);
    }

    fn set_threshold(&self, list: &[SlowRequest]) {
        let t = match list.last() {
            Some(last) if list.len() >= SLOWEST => (last.record.duration_ms * 1e6) as u64,
            _ => 0,
        };
        self.threshold_ns.store(t, Ordering::Relaxed);
    }

    /// The slowest requests of the last five minutes, slowest first.
    pub fn slowest(&self) -> Vec<SlowRequest> {
        let mut list = lock(&self.slowest);
        let before = list.len();
        list.retain(|s| s.ended.elapsed().unwrap_or_default() < SLOW_WINDOW);
        if list.len() != before {
            self.set_threshold(&list);
        }
        list.clone()
    }

    pub fn reload(&self, ok: bool, detail: Vec<String>) {
        let mut r = lock(&self.reloads);
        if r.len() == RELOADS {
            r.pop_front();
        }
        r.push_back(ReloadEntry {
            time: SystemTime::now(),
            ok,
            detail,
        });
    }

    /// The recent reloads, newest first.
    pub fn reloads(&self) -> Vec<ReloadEntry> {
        lock(&self.reloads).iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ms: f64) -> AccessRecord {
        AccessRecord {
            time: SystemTime::now(),
            listener: "l".into(),
            client: "127.0.0.1:1".parse().unwrap(),
            method: "GET".into(),
            authority: String::new(),
            path: format!("/{ms}"),
            protocol: "HTTP/1.1",
            status: 200,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: ms,
            route: None,
            cluster: None,
            upstream: None,
            upstream_ms: None,
            request_id: None,
            client_cert: None,
            user: None,
            error: None,
            user_agent: None,
            referer: None,
            grpc_status: None,
            closed_by: None,
            timing: Default::default(),
        }
    }

    #[test]
    fn keeps_the_slowest_ten_slowest_first() {
        let r = Recent::default();
        for ms in 1..=30 {
            r.offer(&record(f64::from(ms)));
        }
        let mut tunnel = record(1e6);
        tunnel.closed_by = Some("client");
        r.offer(&tunnel);
        let slow: Vec<f64> = r.slowest().iter().map(|s| s.record.duration_ms).collect();
        assert_eq!(slow, (21..=30).rev().map(f64::from).collect::<Vec<_>>());
        assert_eq!(r.threshold_ns.load(Ordering::Relaxed), 21_000_000);
    }

    #[test]
    fn reloads_newest_first_bounded() {
        let r = Recent::default();
        for i in 0..25 {
            r.reload(i % 2 == 0, vec![format!("{i}")]);
        }
        let list = r.reloads();
        assert_eq!(list.len(), RELOADS);
        assert_eq!(list[0].detail, ["24"]);
        assert!(list[0].ok && !list[1].ok);
    }
}
