//! The byte relay between a client and an upstream connection, both ways, with correct
//! half-close (a FIN one way is passed on and the other way stays open), an idle
//! timeout, an optional maximum lifetime and byte counters. On Linux, two plain TCP
//! sockets are relayed with splice(2) through a pipe per direction (the bytes never
//! enter user space); anything else (TLS on either side) is copied through a buffer.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Copy buffer per direction.
const BUF: usize = 32 * 1024;

/// Bytes relayed with splice(2) so far, both directions, by every relay of the
/// process (`pylon_l4_spliced_bytes_total`): what the Layer 4 byte counters moved
/// without copying.
pub static SPLICED_BYTES: AtomicU64 = AtomicU64::new(0);

/// Bytes relayed each way, and when bytes last moved.
pub struct Activity {
    start: Instant,
    /// Client to upstream.
    pub up: AtomicU64,
    /// Upstream to client.
    pub down: AtomicU64,
    last_ns: AtomicU64,
    /// Directions that reached their end of stream.
    ended: std::sync::atomic::AtomicU8,
    /// The bytes went through splice(2), never through user space.
    pub spliced: std::sync::atomic::AtomicBool,
    /// The side that finished sending first: 1 the client, 2 the upstream.
    first_closed: std::sync::atomic::AtomicU8,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            start: Instant::now(),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            ended: std::sync::atomic::AtomicU8::new(0),
            spliced: std::sync::atomic::AtomicBool::new(false),
            first_closed: std::sync::atomic::AtomicU8::new(0),
        }
    }
}

impl Activity {
    pub(crate) fn moved(&self, counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
        self.last_ns
            .store(self.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Who closed the relay, for its log line: `proxy` when Pylon ended it (a limit, a
    /// reload, a stop), else the side that finished first (`client`, `upstream`: its
    /// end of stream, or for a WebSocket its Close frame); `None` when a side failed
    /// before either finished.
    pub fn closed_by(&self, end: &RelayEnd) -> Option<&'static str> {
        if end.by_proxy() {
            return Some("proxy");
        }
        match self.first_closed.load(Ordering::Relaxed) {
            1 => Some("client"),
            2 => Some("upstream"),
            _ => None,
        }
    }

    /// `side` (1 the client, 2 the upstream) finished first, unless another did before.
    pub(crate) fn side_closed(&self, side: u8) {
        let _ = self
            .first_closed
            .compare_exchange(0, side, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_nanos(self.last_ns.load(Ordering::Relaxed)))
    }
}

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides closed their write side.
    Closed,
    Idle,
    Lifetime,
    /// A reload removed or changed the route or listener, and its grace period ended.
    Retired,
    /// The process stopped and its drain timeout passed.
    Shutdown,
    /// A side reset or failed.
    Error(io::Error),
}

impl RelayEnd {
    pub fn as_str(&self) -> &'static str {
        match self {
            RelayEnd::Closed => "closed",
            RelayEnd::Idle => "idle_timeout",
            RelayEnd::Lifetime => "max_lifetime",
            RelayEnd::Retired => "route_removed",
            RelayEnd::Shutdown => "drain_timeout",
            RelayEnd::Error(_) => "reset",
        }
    }
}

impl RelayEnd {
    /// Whether Pylon ended the relay (a limit, a reload, a stop), not its peers.
    pub fn by_proxy(&self) -> bool {
        matches!(
            self,
            RelayEnd::Idle | RelayEnd::Lifetime | RelayEnd::Retired | RelayEnd::Shutdown
        )
    }
}

#[derive(Clone)]
pub struct RelayLimits {
    pub idle: Duration,
    pub lifetime: Option<Duration>,
    /// The life of the route or listener the relay was opened through, and the
    /// process's stop.
    pub end: crate::life::Ending,
}

/// How long a relay that Pylon ends keeps going for its protocol's goodbye (WebSocket
/// Close frames both ways and their answers) before both sockets are closed.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How long an HTTP connection still open at the process's drain deadline stays: its
/// streams' and tunnels' [`CLOSE_LINGER`], and a moment for their goodbyes to go out.
pub const CONNECTION_LINGER: Duration = CLOSE_LINGER.saturating_add(Duration::from_millis(500));

/// Tells a relay's pumps that Pylon is ending it, with the reason
/// ([`RelayEnd::as_str`]).
pub type Closer = tokio::sync::watch::Sender<Option<&'static str>>;

/// Runs both directions until both are closed, one fails, or a limit is reached.
/// With a `closer`, an end that Pylon decides is announced through it and the pumps
/// get up to [`CLOSE_LINGER`] to say goodbye in their protocol and finish.
pub(crate) async fn drive<U, D>(
    up: U,
    down: D,
    limits: RelayLimits,
    activity: &Activity,
    closer: Option<&Closer>,
) -> RelayEnd
where
    U: Future<Output = io::Result<()>>,
    D: Future<Output = io::Result<()>>,
{
    let mut up = std::pin::pin!(up);
    let mut down = std::pin::pin!(down);
    let mut end = limits.end.clone();
    let ended = end.ended();
    let mut ended = std::pin::pin!(ended);
    let (mut up_done, mut down_done) = (false, false);
    let deadline = limits.lifetime.map(|l| tokio::time::Instant::now() + l);
    let tick = limits
        .idle
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(10));
    let end = loop {
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => {
                    up_done = true;
                    activity.side_closed(1);
                }
                Err(e) => break RelayEnd::Error(e),
            },
            r = &mut down, if !down_done => match r {
                Ok(()) => {
                    down_done = true;
                    activity.side_closed(2);
                }
                Err(e) => break RelayEnd::Error(e),
            },
            cause = &mut ended => break match cause {
                crate::life::EndCause::RouteRemoved => RelayEnd::Retired,
                crate::life::EndCause::Shutdown => RelayEnd::Shutdown,
            },
            _ = tokio::time::sleep(tick) => {
                if activity.idle_for() >= limits.idle {
                    break RelayEnd::Idle;
                }
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break RelayEnd::Lifetime;
                }
            }
        }
        if up_done && down_done {
            return RelayEnd::Closed;
        }
    };
    if let Some(closer) = closer
        && end.by_proxy()
    {
        closer.send_replace(Some(end.as_str()));
        let up_rest = async {
            if !up_done {
                let _ = up.as_mut().await;
            }
        };
        let down_rest = async {
            if !down_done {
                let _ = down.as_mut().await;
            }
        };
        let _ =
            tokio::time::timeout(CLOSE_LINGER, async { tokio::join!(up_rest, down_rest) }).await;
    }
    end
}

/// Copies `from` to `to` until EOF, then shuts `to`'s write side (passing the FIN on).
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    counter: &AtomicU64,
    activity: &Activity,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        activity.moved(counter, n);
    }
}

/// Relays any two byte streams (TLS on either side) through user-space buffers.
pub async fn copy<C, U>(
    client: C,
    upstream: U,
    limits: RelayLimits,
    activity: &Activity,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    drive(
        pump(cr, uw, &activity.up, activity),
        pump(ur, cw, &activity.down, activity),
        limits,
        activity,
        None,
    )
    .await
}

/// Relays two plain TCP sockets: splice(2) on Linux when `zero_copy`, else copies.
pub async fn tcp(
    client: TcpStream,
    upstream: TcpStream,
    limits: RelayLimits,
    zero_copy: bool,
    activity: &Activity,
) -> RelayEnd {
    #[cfg(target_os = "linux")]
    if zero_copy
        && let Some(end) = splice::relay(&client, &upstream, limits.clone(), activity).await
    {
        return end;
    }
    let _ = zero_copy;
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    drive(
        pump(cr, uw, &activity.up, activity),
        pump(ur, cw, &activity.down, activity),
        limits,
        activity,
        None,
    )
    .await
}

#[cfg(target_os = "linux")]
mod splice {
    use super::*;
    use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, splice};
    use std::os::fd::OwnedFd;
    use tokio::io::Interest;

    /// Each pipe's capacity, and so the bytes moved per splice call. The default 64 KiB
    /// pipe made splice slower than copying through a buffer on loopback (a splice
    /// pair per 64 KiB); Linux lets any process raise a pipe up to
    /// `/proc/sys/fs/pipe-max-size` (1 MiB by default). A pipe that cannot be raised
    /// keeps the size it has, which is read back.
    const PIPE_SIZE: usize = 256 * 1024;
    /// Empty pipes kept for the next relays (each pipe is two descriptors).
    const POOLED_PIPES: usize = 512;

    /// Read end, write end, capacity.
    type Pipe = (OwnedFd, OwnedFd, usize);

    /// Pipes left empty by finished relays: making and closing a pipe per direction
    /// costs six system calls per connection otherwise.
    static PIPES: std::sync::Mutex<Vec<Pipe>> = std::sync::Mutex::new(Vec::new());

    fn pipe() -> io::Result<Pipe> {
        let pooled = PIPES.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(p) => Ok(p),
            None => {
                let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
                    .map_err(io::Error::from)?;
                let size = nix::fcntl::fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32))
                    .or_else(|_| nix::fcntl::fcntl(&w, FcntlArg::F_GETPIPE_SZ))
                    .map_err(io::Error::from)?;
                Ok((r, w, usize::try_from(size).unwrap_or(4096).max(4096)))
            }
        }
    }

    /// Keeps a pipe known to be empty for reuse.
    fn recycle(pipe: Pipe) {
        let mut pool = PIPES.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOLED_PIPES {
            pool.push(pipe);
        }
    }

    /// `None` when pipes cannot be made (out of descriptors): the caller copies instead.
    pub(super) async fn relay(
        client: &TcpStream,
        upstream: &TcpStream,
        limits: RelayLimits,
        activity: &Activity,
    ) -> Option<RelayEnd> {
        let up_pipe = pipe().ok()?;
        let down_pipe = pipe().ok()?;
        activity.spliced.store(true, Ordering::Relaxed);
        Some(
            drive(
                pump(client, upstream, up_pipe, &activity.up, activity),
                pump(upstream, client, down_pipe, &activity.down, activity),
                limits,
                activity,
                None,
            )
            .await,
        )
    }

    /// Moves `from` → pipe → `to` until EOF, then shuts `to`'s write side. The pipe is
    /// reused only after a clean end (it is empty then); on an error, or when the relay
    /// drops this future mid-transfer, it is closed.
    async fn pump(
        from: &TcpStream,
        to: &TcpStream,
        (pipe_r, pipe_w, capacity): Pipe,
        counter: &AtomicU64,
        activity: &Activity,
    ) -> io::Result<()> {
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        loop {
            let n = loop {
                from.readable().await?;
                // A short read drained the socket (as tokio's own reads assume with
                // epoll): report it as WouldBlock so readiness is cleared, sparing the
                // splice that would only say EAGAIN.
                let mut drained = 0;
                match from.try_io(Interest::READABLE, || {
                    let n = splice(from, None, &pipe_w, None, capacity, flags)?;
                    if n > 0 && n < capacity {
                        drained = n;
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(n)
                }) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && drained > 0 => {
                        break drained;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                // The first direction to end passes its FIN on now; after the second,
                // both sockets are about to be closed, which sends the FIN anyway.
                if activity.ended.fetch_add(1, Ordering::Relaxed) == 0 {
                    socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write)?;
                }
                recycle((pipe_r, pipe_w, capacity));
                return Ok(());
            }
            let mut left = n;
            while left > 0 {
                to.writable().await?;
                match to.try_io(Interest::WRITABLE, || {
                    Ok(splice(&pipe_r, None, to, None, left, flags)?)
                }) {
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            activity.moved(counter, n);
            SPLICED_BYTES.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}
