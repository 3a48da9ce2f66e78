//! Per-connection state shared by the socket wrapper, the request path and the
//! connection's timer: last activity, requests in flight, when a request head began.
//! This is what the idle and header-read timeouts are decided from.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How a chunked request body broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkViolation {
    /// Framing a peer could read differently: a bare LF or CR, a size that is not hex
    /// or too long, data not followed by CRLF.
    Malformed,
    /// The chunks' sizes take the body over the listener's limit.
    TooLarge,
}

#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    /// `epoch` on `crate::clock`'s timeline (the one `Instant` reads), in nanoseconds.
    epoch_ns: u64,
    /// Nanoseconds since `epoch` of the last byte read or written.
    last_activity: AtomicU64,
    /// Nanoseconds since `epoch` + 1 when a request head began arriving on an idle
    /// connection; 0 when none is being read.
    head_started: AtomicU64,
    in_flight: AtomicU64,
    /// HTTP/2: no header-read timeout between requests (only the idle one).
    h2: AtomicBool,
    /// HTTP/1.1: the request in flight asks to switch protocols (a WebSocket
    /// handshake): a graceful close now would turn its `Connection: upgrade` into
    /// `close`, so a draining connection lets it finish (it becomes a tunnel).
    upgrading: AtomicBool,
    first_read: AtomicBool,
    /// A chunked request body broke its framing (1) or its size limit (2); 0 if not.
    body_violation: std::sync::atomic::AtomicU8,
    /// Nanoseconds since `epoch` + 1 since when a write has been waiting for the
    /// client to take data (its socket full); 0 when writes go through.
    write_blocked: AtomicU64,
    /// HTTP/1.1: a graceful close asked for by the connection timer (an idle
    /// connection closes, a busy one after its answer, with `Connection: close`).
    graceful: AtomicBool,
    /// HTTP/1.1: parking asked for by the connection timer (a connection that waits
    /// for a head with nothing read gives its socket back, `conn::parking`).
    park: AtomicBool,
}

/// What the connection timer should do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Check again at this instant.
    Wait(Instant),
    /// Idle past the idle timeout: close politely.
    Idle,
    /// A request head took longer than the header-read timeout: drop the connection.
    HeaderTimeout,
    /// The client took nothing of a response for the send timeout: drop it.
    SendTimeout,
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState {
            epoch: Instant::now(),
            epoch_ns: crate::clock::precise_ns(),
            last_activity: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            upgrading: AtomicBool::new(false),
            first_read: AtomicBool::new(true),
            body_violation: std::sync::atomic::AtomicU8::new(0),
            write_blocked: AtomicU64::new(0),
            graceful: AtomicBool::new(false),
            park: AtomicBool::new(false),
        }
    }
}

impl ConnState {
    fn now(&self) -> u64 {
        crate::clock::precise_ns().saturating_sub(self.epoch_ns)
    }

    /// Now to the kernel's tick: enough for activity, which only the idle and send
    /// timeouts (seconds) read, and cheaper on every read and write.
    fn now_coarse(&self) -> u64 {
        crate::clock::coarse_ns().saturating_sub(self.epoch_ns)
    }

    /// Records bytes read; true when they begin a new request head.
    pub(super) fn read_activity(&self, data: &[u8]) -> bool {
        if self.first_read.swap(false, Ordering::Relaxed) && data.starts_with(b"PRI * HTTP/2.0") {
            self.h2.store(true, Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            // A head's start is timed precisely (the access log's `request_head_ms`).
            let now = self.now();
            self.last_activity.store(now, Ordering::Relaxed);
            self.head_started.store(now + 1, Ordering::Relaxed);
            return true;
        }
        self.last_activity
            .store(self.now_coarse(), Ordering::Relaxed);
        false
    }

    pub(super) fn body_violation(&self, v: ChunkViolation) {
        let code = match v {
            ChunkViolation::Malformed => 1,
            ChunkViolation::TooLarge => 2,
        };
        self.body_violation.store(code, Ordering::Relaxed);
    }

    /// Whether a chunked request body on this connection broke its framing or limit.
    pub fn chunk_violation(&self) -> Option<ChunkViolation> {
        match self.body_violation.load(Ordering::Relaxed) {
            0 => None,
            1 => Some(ChunkViolation::Malformed),
            _ => Some(ChunkViolation::TooLarge),
        }
    }

    pub(super) fn write_activity(&self) {
        self.last_activity
            .store(self.now_coarse(), Ordering::Relaxed);
        if self.write_blocked.load(Ordering::Relaxed) != 0 {
            self.write_blocked.store(0, Ordering::Relaxed);
        }
    }

    pub(super) fn write_pending(&self) {
        if self.write_blocked.load(Ordering::Relaxed) == 0 {
            self.write_blocked
                .store(self.now_coarse() + 1, Ordering::Relaxed);
        }
    }

    /// How long the request head about to be dispatched took from its first byte
    /// (HTTP/1.x; asked before [`request_started`](Self::request_started)).
    /// (`now`: the request's arrival, read once for it.)
    pub fn head_read_time(&self, now: Instant) -> Option<Duration> {
        let began = self.head_started.load(Ordering::Relaxed);
        (began != 0)
            .then(|| now.saturating_duration_since(self.epoch + Duration::from_nanos(began - 1)))
    }

    /// Marks a request as dispatched; the guard ends it.
    pub fn request_started(self: &Arc<Self>, h2: bool) -> InFlight {
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        if self.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            self.upgrading.store(false, Ordering::Relaxed);
        }
        self.head_started.store(0, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Asks the HTTP/1.1 connection to close gracefully. Both this and
    /// [`ConnState::ask_park`] are asked by the connection timer, which runs in the
    /// connection's task and polls the connection right after asking: a loop waiting
    /// for a head finds them on that poll, so nothing wakes it (a waker registered on
    /// each poll for this cost two atomic read-modify-writes per poll, four per
    /// request).
    pub fn ask_graceful(&self) {
        self.graceful.store(true, Ordering::Relaxed);
    }

    pub fn graceful_asked(&self) -> bool {
        self.graceful.load(Ordering::Relaxed)
    }

    /// Asks the HTTP/1.1 connection to give its socket back if it waits for a head
    /// with nothing read; one that is busy goes on (and may be asked again).
    pub fn ask_park(&self) {
        self.park.store(true, Ordering::Relaxed);
    }

    pub fn park_asked(&self) -> bool {
        self.park.load(Ordering::Relaxed)
    }

    /// A request came (or the connection came back from its park): not asked to park.
    pub fn park_withdrawn(&self) {
        self.park.store(false, Ordering::Relaxed);
    }

    /// The request in flight is a protocol switch (see `upgrading`).
    pub fn upgrade_requested(&self) {
        self.upgrading.store(true, Ordering::Relaxed);
    }

    /// Whether a graceful close would cut a request in flight short rather than let it
    /// finish: true for an HTTP/1.1 request that is not switching protocols.
    pub fn closes_after_response(&self) -> bool {
        self.in_flight() > 0 && !self.upgrading.load(Ordering::Relaxed)
    }

    /// Time since the last byte moved either way.
    pub fn idle_for(&self) -> Duration {
        Duration::from_nanos(
            self.now()
                .saturating_sub(self.last_activity.load(Ordering::Relaxed)),
        )
    }

    /// A parked connection came back (its client sent something): it counts as
    /// activity, so that it is not asked to park again before it has read.
    pub fn unparked(&self) {
        self.last_activity.store(self.now(), Ordering::Relaxed);
    }

    /// How long the connection has been quiet between requests: nothing in flight,
    /// no head arriving, no write waiting; `None` while it is busy.
    pub fn quiet_for(&self) -> Option<Duration> {
        let busy = self.in_flight.load(Ordering::Relaxed) != 0
            || self.head_started.load(Ordering::Relaxed) != 0
            || self.write_blocked.load(Ordering::Relaxed) != 0;
        (!busy).then(|| self.idle_for())
    }

    /// Decides about idle, header-read and send timeouts.
    pub fn verdict(&self, idle: Duration, header: Duration, send: Duration) -> Verdict {
        let now = self.now();
        let at = |nanos: u64| self.epoch + Duration::from_nanos(nanos);
        let blocked = self.write_blocked.load(Ordering::Relaxed);
        if blocked != 0 {
            let deadline = blocked - 1 + send.as_nanos() as u64;
            if now >= deadline {
                return Verdict::SendTimeout;
            }
            return Verdict::Wait(at(deadline));
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            // A write may block at any moment: look again within the send timeout.
            return Verdict::Wait(at(now) + idle.min(send));
        }
        let head = self.head_started.load(Ordering::Relaxed);
        if head != 0 && !self.h2.load(Ordering::Relaxed) {
            let deadline = head - 1 + header.as_nanos() as u64;
            return if now >= deadline {
                Verdict::HeaderTimeout
            } else {
                Verdict::Wait(at(deadline))
            };
        }
        let deadline = self.last_activity.load(Ordering::Relaxed) + idle.as_nanos() as u64;
        if now >= deadline {
            Verdict::Idle
        } else {
            // A head may start arriving at any moment: look again within the header
            // timeout, so a slow head is cut at its own deadline, not the idle one.
            let recheck = if self.h2.load(Ordering::Relaxed) {
                deadline
            } else {
                deadline.min(now + header.as_nanos() as u64)
            };
            Verdict::Wait(at(recheck))
        }
    }
}

/// One request in flight on a connection; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.write_activity();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_blocked_past_the_send_timeout_ends_the_connection() {
        let s = Arc::new(ConnState::default());
        let _g = s.request_started(false);
        let idle = Duration::from_secs(60);
        s.write_pending();
        assert_eq!(s.verdict(idle, idle, Duration::ZERO), Verdict::SendTimeout);
        assert!(matches!(s.verdict(idle, idle, idle), Verdict::Wait(_)));
        s.write_activity();
        assert!(matches!(
            s.verdict(idle, idle, Duration::ZERO),
            Verdict::Wait(_)
        ));
    }

    #[test]
    fn verdicts() {
        let s = Arc::new(ConnState::default());
        let idle = Duration::from_secs(60);
        let header = Duration::from_secs(10);
        match s.verdict(idle, header, idle) {
            Verdict::Wait(at) => assert!(
                at <= Instant::now() + header,
                "an idle connection is looked at again within the header timeout"
            ),
            v => panic!("{v:?}"),
        }
        // A head started arriving: the header deadline applies, not the idle one.
        s.read_activity(b"GET / HTTP/1.1\r\n");
        match s.verdict(idle, header, idle) {
            Verdict::Wait(at) => assert!(at <= Instant::now() + header),
            v => panic!("{v:?}"),
        }
        assert_eq!(
            s.verdict(idle, Duration::ZERO, idle),
            Verdict::HeaderTimeout
        );
        // Dispatched: no header deadline while the request is in flight.
        let g = s.request_started(false);
        assert_eq!(s.in_flight(), 1);
        assert!(matches!(
            s.verdict(Duration::ZERO, Duration::ZERO, Duration::ZERO),
            Verdict::Wait(_)
        ));
        drop(g);
        assert_eq!(s.verdict(Duration::ZERO, header, header), Verdict::Idle);
    }
}
