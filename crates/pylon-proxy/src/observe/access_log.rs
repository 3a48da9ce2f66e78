//! The access log: one JSON line per request (and one per TURN allocation and per Layer
//! 4 session, when it ends), written by a dedicated thread so the request path only hands over a record
//! (never blocks on I/O).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use pylon_config::model::AccessLogTarget;
use serde::Serialize;

use super::Metrics;

/// Records waiting for the writer; beyond this they are dropped and counted.
const QUEUE: usize = 65_536;

/// Everything one access-log line says.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRecord {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub route: Option<Arc<str>>,
    pub cluster: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
    pub upstream_ms: Option<f64>,
    pub request_id: Option<String>,
    /// Subject of the verified client certificate (mutual TLS).
    pub client_cert: Option<String>,
    /// The forward-proxy user who authenticated.
    pub user: Option<Arc<str>>,
    pub error: Option<&'static str>,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    /// A gRPC call's status, from the answer's head (trailers-only) or its trailers.
    pub grpc_status: Option<u16>,
    /// A tunnel's: `client` or `upstream` (the side that finished first), or `proxy`.
    pub closed_by: Option<&'static str>,
    /// Where the request's time went (`client_tls_ms`, `request_head_ms`, `dns_ms`,
    /// `queue_ms`, `connect_ms`, `upstream_tls_ms`, `request_sent_ms`, `response_ms`).
    #[serde(flatten)]
    pub timing: super::timing::Timing,
}

/// One TURN allocation, logged when it ends.
#[derive(Debug, Clone, Serialize)]
pub struct AllocationRecord {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// `"turn_allocation"`: what the line is about (request lines have a `method`).
    pub kind: &'static str,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub transport: &'static str,
    pub user: String,
    pub relayed: SocketAddr,
    /// The peers it sent to (the first 16).
    pub peers: Vec<SocketAddr>,
    pub bytes_to_peers: u64,
    pub bytes_from_peers: u64,
    pub packets_to_peers: u64,
    pub packets_from_peers: u64,
    pub duration_ms: f64,
    #[serde(serialize_with = "rfc3339")]
    pub started: SystemTime,
    /// `expired`, `deleted` (a Refresh with lifetime 0), `closed` (its TCP
    /// connection), `listener_changed`.
    pub end: &'static str,
}

/// One Layer 4 session (a `tcp` listener's connection, a `udp` listener's session),
/// logged when it ends.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRecord {
    /// When it began.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// `"tcp_session"` or `"udp_session"`.
    pub kind: &'static str,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub cluster: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
    /// From the client, and to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    /// How it ended: `closed` (by the two sides), `idle_timeout`, `max_lifetime`,
    /// `route_removed`, `drain_timeout`, `error`.
    pub end: &'static str,
    /// TCP: `client` or `upstream` (the side that finished first), or `proxy`.
    pub closed_by: Option<&'static str>,
}

impl SessionRecord {
    /// A session that began `elapsed` ago.
    pub fn since(elapsed: Duration) -> SystemTime {
        SystemTime::now()
            .checked_sub(elapsed)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// What the writer thread writes: a request's line, an allocation's or a session's.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Line {
    Request(Box<AccessRecord>),
    Allocation(Box<AllocationRecord>),
    Session(Box<SessionRecord>),
}

pub(super) fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// Hands records to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct AccessLogger {
    tx: Option<SyncSender<Line>>,
    metrics: Arc<Metrics>,
    /// Asks the writer to reopen its file before the next line.
    reopen: Arc<std::sync::atomic::AtomicBool>,
    /// Where the slowest requests are kept (the dashboard's list).
    recent: Arc<super::recent::Recent>,
}

impl AccessLogger {
    /// Starts the writer thread for `target` (none for `Off`).
    pub fn start(
        target: &AccessLogTarget,
        metrics: Arc<Metrics>,
        recent: Arc<super::recent::Recent>,
    ) -> std::io::Result<Self> {
        let reopen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => {
                return Ok(AccessLogger {
                    tx: None,
                    metrics,
                    reopen,
                    recent,
                });
            }
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::Stderr => Box::new(std::io::stderr()),
            AccessLogTarget::File(path) => Box::new(open(path.as_ref())?),
        };
        let path = match target {
            AccessLogTarget::File(p) => Some(std::path::PathBuf::from(p)),
            _ => None,
        };
        let (tx, rx) = sync_channel(QUEUE);
        let asked = Arc::clone(&reopen);
        std::thread::Builder::new()
            .name("pylon-access-log".into())
            .spawn(move || write_loop(rx, out, path, &asked))?;
        Ok(AccessLogger {
            tx: Some(tx),
            metrics,
            reopen,
            recent,
        })
    }

    /// Reopens the file at its path before the next line (a file moved away by
    /// logrotate keeps what was written to it; new lines go to a new file).
    pub fn reopen(&self) {
        self.reopen
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a line (boxed: the queue's 65,536 slots are then a pointer each, not a
    /// record each, which would be 24 MiB held from the start), and offers it to the
    /// slowest-requests list.
    pub fn log(&self, record: Box<AccessRecord>) {
        self.recent.offer(&record);
        self.send(Line::Request(record));
    }

    /// Queues a TURN allocation's line.
    pub fn log_allocation(&self, record: Box<AllocationRecord>) {
        self.send(Line::Allocation(record));
    }

    /// Queues a Layer 4 session's line.
    pub fn log_session(&self, record: Box<SessionRecord>) {
        self.send(Line::Session(record));
    }

    fn send(&self, line: Line) {
        if let Some(tx) = &self.tx {
            match tx.try_send(line) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.metrics
                        .access_log_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

fn write_loop(
    rx: Receiver<Line>,
    out: Box<dyn Write + Send>,
    path: Option<std::path::PathBuf>,
    reopen: &std::sync::atomic::AtomicBool,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(first) = rx.recv() {
        if reopen.swap(false, Ordering::Relaxed)
            && let Some(p) = &path
        {
            let _ = out.flush();
            match open(p) {
                Ok(f) => out = std::io::BufWriter::with_capacity(64 * 1024, Box::new(f)),
                Err(e) => eprintln!("cannot reopen the access log {}: {e}", p.display()),
            }
        }
        let mut next = Some(first);
        while let Some(r) = next {
            if serde_json::to_writer(&mut out, &r).is_ok() {
                let _ = out.write_all(b"\n");
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}
