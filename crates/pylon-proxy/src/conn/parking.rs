//! Idle client connections parked off the runtime: a listener's parking lot.
//!
//! An HTTP/1.1 keep-alive connection that has been quiet for [`PARK_AFTER`] gives up
//! its task (its futures, its wire, its timers) and its registration with the runtime's
//! poller: its socket goes into the lot, a slab of sockets watched by an epoll instance
//! of the lot's own (mio's `Poll`, which the runtime watches as one descriptor). A
//! parked connection costs its socket, its connection context and a slot, instead of a
//! task of kilobytes. When the client sends its next request (or closes), the lot's
//! task gives the socket back to the runtime and hands it to `resume`, which serves it
//! again. The idle timeout of parked connections is the lot's, one timer for all (a
//! min-heap of deadlines). When the listener drains or the process stops, every parked
//! connection is resumed, so that it closes the way any idle connection does.
//!
//! Written here because no crate parks sockets of a tokio server; NGINX's keep-alive
//! handler frees an idle connection's buffers in the same spirit.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mio::{Interest, Token};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::lock;

/// How long a keep-alive connection stays quiet before it is parked. Clients that send
/// requests more often than this never pay for parking (two `epoll_ctl` calls each
/// way and a task).
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// Events taken from the lot's poller per call.
const EVENTS: usize = 256;

/// What resumes a parked connection: its socket, back on the runtime, and what was
/// parked with it.
pub type Resume<T> = Box<dyn Fn(TcpStream, T) + Send + Sync>;

/// A listener's parking lot, as its connections see it.
pub struct Parking<T> {
    lot: Arc<Lot<T>>,
}

/// The lot's task, made with the lot and started once the lot's users exist.
pub struct LotTask<T> {
    lot: Arc<Lot<T>>,
    poll: mio::Poll,
}

struct Lot<T> {
    registry: mio::Registry,
    slots: Mutex<Slots<T>>,
    /// Wakes the lot's task: an earlier deadline, or its listener stopped accepting.
    changed: Notify,
    /// Connections parked now, in all lots (a gauge).
    gauge: Arc<AtomicU64>,
}

struct Slots<T> {
    /// Takes new connections; false once the lot's task has ended or is ending.
    open: bool,
    /// The listener stopped accepting: the lot ends once empty.
    orphan: bool,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    parked: usize,
    /// (deadline, slot, generation); entries of slots resumed since are skipped.
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32)>>,
}

struct Slot<T> {
    generation: u32,
    parked: Option<(mio::net::TcpStream, T)>,
}

fn token(index: u32, generation: u32) -> Token {
    Token(((generation as usize) << 32) | index as usize)
}

fn untoken(t: Token) -> (u32, u32) {
    ((t.0 & 0xffff_ffff) as u32, (t.0 >> 32) as u32)
}

impl<T: Send + 'static> Parking<T> {
    /// A new lot; `gauge` counts the connections parked in it. Start its task with
    /// [`LotTask::start`].
    pub fn new(gauge: Arc<AtomicU64>) -> io::Result<(Parking<T>, LotTask<T>)> {
        let poll = mio::Poll::new()?;
        let lot = Arc::new(Lot {
            registry: poll.registry().try_clone()?,
            slots: Mutex::new(Slots {
                open: true,
                orphan: false,
                slots: Vec::new(),
                free: Vec::new(),
                parked: 0,
                deadlines: BinaryHeap::new(),
            }),
            changed: Notify::new(),
            gauge,
        });
        Ok((
            Parking {
                lot: Arc::clone(&lot),
            },
            LotTask { lot, poll },
        ))
    }

    /// Parks an idle connection until its client sends something or `idle_left` has
    /// passed (then it is closed). The connection comes back when the lot takes no
    /// more (it is ending): the caller goes on serving it.
    pub fn park(
        &self,
        stream: TcpStream,
        with: T,
        idle_left: Duration,
    ) -> Result<(), (TcpStream, T)> {
        let mut s = lock(&self.lot.slots);
        if !s.open {
            return Err((stream, with));
        }
        let std = match stream.into_std() {
            Ok(std) => std,
            Err(e) => {
                // The runtime would not let go of it: the connection is lost, as a
                // broken socket would be.
                tracing::debug!(error = %e, "cannot park a connection; closing it");
                return Ok(());
            }
        };
        let index = s.free.pop().unwrap_or_else(|| {
            s.slots.push(Slot {
                generation: 0,
                parked: None,
            });
            (s.slots.len() - 1) as u32
        });
        let slot = &mut s.slots[index as usize];
        let generation = slot.generation;
        // In the slot before it is watched: its first event may come at once, from the
        // lot's task on another thread, which takes this lock first.
        let (socket, _) = slot
            .parked
            .insert((mio::net::TcpStream::from_std(std), with));
        if let Err(e) =
            self.lot
                .registry
                .register(socket, token(index, generation), Interest::READABLE)
        {
            tracing::debug!(error = %e, "cannot park a connection; serving it on");
            return match s.release(index) {
                Some((socket, with)) => match TcpStream::from_std(socket.into()) {
                    Ok(stream) => Err((stream, with)),
                    Err(_) => Ok(()),
                },
                None => Ok(()),
            };
        }
        let deadline = Instant::now() + idle_left;
        let earliest = s
            .deadlines
            .peek()
            .is_none_or(|Reverse((first, _, _))| deadline < *first);
        s.deadlines.push(Reverse((deadline, index, generation)));
        s.parked += 1;
        s.compact();
        drop(s);
        self.lot.gauge.fetch_add(1, Ordering::Relaxed);
        if earliest {
            self.lot.changed.notify_one();
        }
        Ok(())
    }

    /// Whether the lot takes connections now.
    #[cfg(test)]
    fn is_open(&self) -> bool {
        lock(&self.lot.slots).open
    }

    /// The listener stopped accepting: the lot ends once its last connection has left
    /// (connections parked in it are served on until then).
    pub fn orphan(&self) {
        lock(&self.lot.slots).orphan = true;
        self.lot.changed.notify_one();
    }

    /// Connections parked in this lot now (the gauge counts all lots).
    #[cfg(test)]
    fn parked(&self) -> usize {
        lock(&self.lot.slots).parked
    }
}

impl<T> Slots<T> {
    /// Empties a slot for reuse; what it held.
    fn release(&mut self, index: u32) -> Option<(mio::net::TcpStream, T)> {
        let slot = self.slots.get_mut(index as usize)?;
        let taken = slot.parked.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        Some(taken)
    }

    /// What a token names, if it is still parked.
    fn take(&mut self, index: u32, generation: u32) -> Option<(mio::net::TcpStream, T)> {
        let slot = self.slots.get(index as usize)?;
        if slot.generation != generation || slot.parked.is_none() {
            return None;
        }
        self.parked -= 1;
        self.release(index)
    }

    /// Drops the deadlines of connections resumed since, once they outnumber the
    /// parked ones (a client that comes back often leaves one each time).
    fn compact(&mut self) {
        if self.deadlines.len() <= 2 * self.parked + 64 {
            return;
        }
        let slots = &self.slots;
        self.deadlines.retain(|Reverse((_, index, generation))| {
            slots
                .get(*index as usize)
                .is_some_and(|s| s.generation == *generation && s.parked.is_some())
        });
    }

    /// The next deadline of a connection still parked.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, index, generation))) = self.deadlines.peek().copied() {
            let live = self
                .slots
                .get(index as usize)
                .is_some_and(|s| s.generation == generation && s.parked.is_some());
            if live {
                return Some(at);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Takes the connections whose deadline has passed.
    fn expired(&mut self, now: Instant) -> Vec<(mio::net::TcpStream, T)> {
        let mut out = Vec::new();
        while let Some(Reverse((at, index, generation))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if let Some(p) = self.take(index, generation) {
                out.push(p);
            }
        }
        out
    }

    /// Closes the lot and takes everything in it.
    fn close(&mut self) -> Vec<(mio::net::TcpStream, T)> {
        self.open = false;
        self.deadlines.clear();
        let taken: Vec<_> = self
            .slots
            .iter_mut()
            .filter_map(|s| s.parked.take())
            .collect();
        self.slots.clear();
        self.free.clear();
        self.parked = 0;
        taken
    }
}

impl<T: Send + 'static> LotTask<T> {
    /// Runs the lot until its listener drains, the process stops (`stop`), or its
    /// listener stopped accepting and the lot is empty.
    pub fn start(
        self,
        resume: Resume<T>,
        drain: watch::Receiver<bool>,
        stop: watch::Receiver<bool>,
    ) {
        tokio::spawn(self.run(resume, drain, stop));
    }

    async fn run(
        self,
        resume: Resume<T>,
        mut drain: watch::Receiver<bool>,
        stop: watch::Receiver<bool>,
    ) {
        let LotTask { lot, poll } = self;
        let mut stop = Some(stop);
        // SAFETY: the poller owns its epoll descriptor from its creation to its drop and
        // `as_raw_fd` always returns that one, as `register_with_interest` requires.
        #[allow(unsafe_code)]
        let registered =
            unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) };
        let mut poller = match registered {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch parked connections; none will be parked");
                lot.end(&resume);
                return;
            }
        };
        let mut events = mio::Events::with_capacity(EVENTS);
        loop {
            let (next, done) = {
                let mut s = lock(&lot.slots);
                let done = s.orphan && s.parked == 0;
                if done {
                    s.open = false;
                }
                (s.next_deadline(), done)
            };
            if done {
                return;
            }
            let changed = lot.changed.notified();
            tokio::select! {
                ready = poller.readable_mut() => {
                    let Ok(mut ready) = ready else {
                        lot.end(&resume);
                        return;
                    };
                    loop {
                        events.clear();
                        if let Err(e) = ready.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                            if e.kind() == io::ErrorKind::Interrupted {
                                continue;
                            }
                            tracing::warn!(error = %e, "parked connections: poll failed; resuming them all");
                            lot.end(&resume);
                            return;
                        }
                        if events.is_empty() {
                            ready.clear_ready();
                            break;
                        }
                        let woken: Vec<_> = {
                            let mut s = lock(&lot.slots);
                            events.iter().filter_map(|e| {
                                let (index, generation) = untoken(e.token());
                                s.take(index, generation)
                            }).collect()
                        };
                        for (socket, with) in woken {
                            lot.resume(&resume, socket, with);
                        }
                    }
                }
                () = sleep_until(next) => {
                    let expired = lock(&lot.slots).expired(Instant::now());
                    for (mut socket, with) in expired {
                        lot.gauge.fetch_sub(1, Ordering::Relaxed);
                        // Idle past the idle timeout: closed, as an idle connection
                        // that was never parked is.
                        let _ = lot.registry.deregister(&mut socket);
                        drop((socket, with));
                    }
                }
                () = changed => {}
                r = drain.changed() => {
                    if r.is_err() || *drain.borrow() {
                        lot.end(&resume);
                        return;
                    }
                }
                () = crate::life::retired(&mut stop) => {
                    lot.end(&resume);
                    return;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<T> Lot<T> {
    /// Gives a parked connection back to the runtime and to `resume`.
    fn resume(&self, resume: &Resume<T>, mut socket: mio::net::TcpStream, with: T) {
        self.gauge.fetch_sub(1, Ordering::Relaxed);
        let _ = self.registry.deregister(&mut socket);
        match TcpStream::from_std(socket.into()) {
            Ok(stream) => resume(stream, with),
            Err(e) => tracing::debug!(error = %e, "cannot resume a parked connection; closing it"),
        }
    }

    /// Closes the lot; every connection in it is resumed (to drain like any other).
    fn end(&self, resume: &Resume<T>) {
        let all = lock(&self.slots).close();
        for (socket, with) in all {
            self.resume(resume, socket, with);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    type Resumed = tokio::sync::mpsc::UnboundedReceiver<(TcpStream, u32)>;

    /// A lot whose task sends what it resumes; with its drain and stop switches.
    fn lot(
        gauge: &Arc<AtomicU64>,
    ) -> (
        Parking<u32>,
        Resumed,
        watch::Sender<bool>,
        watch::Sender<bool>,
    ) {
        let (parking, task) = Parking::new(Arc::clone(gauge)).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let drain = watch::Sender::new(false);
        let stop = watch::Sender::new(false);
        task.start(
            Box::new(move |s, n| {
                let _ = tx.send((s, n));
            }),
            drain.subscribe(),
            stop.subscribe(),
        );
        (parking, rx, drain, stop)
    }

    #[tokio::test]
    async fn a_parked_connection_comes_back_with_its_first_bytes_unread() {
        let gauge = Arc::new(AtomicU64::new(0));
        let (parking, mut resumed, _drain, _stop) = lot(&gauge);
        let (mut client, server) = pair().await;
        assert!(parking.park(server, 7, Duration::from_secs(60)).is_ok());
        assert_eq!(gauge.load(Ordering::Relaxed), 1);
        assert_eq!(parking.parked(), 1);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (mut server, n) = resumed.recv().await.unwrap();
        assert_eq!(n, 7);
        assert_eq!(gauge.load(Ordering::Relaxed), 0);
        let mut buf = [0u8; 18];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET / HTTP/1.1\r\n\r\n");
        // Parked again in the same slot, it comes back again.
        assert!(parking.park(server, 8, Duration::from_secs(60)).is_ok());
        client.write_all(b"x").await.unwrap();
        assert_eq!(resumed.recv().await.unwrap().1, 8);
    }

    #[tokio::test]
    async fn bytes_that_arrived_before_the_park_wake_it_at_once() {
        let gauge = Arc::new(AtomicU64::new(0));
        let (parking, mut resumed, _drain, _stop) = lot(&gauge);
        let (mut client, server) = pair().await;
        client.write_all(b"early").await.unwrap();
        // Until the bytes are in the server's socket.
        server.readable().await.unwrap();
        assert!(parking.park(server, 1, Duration::from_secs(60)).is_ok());
        assert_eq!(resumed.recv().await.unwrap().1, 1);
    }

    #[tokio::test]
    async fn a_parked_connection_past_its_idle_time_is_closed() {
        let gauge = Arc::new(AtomicU64::new(0));
        let (parking, _resumed, _drain, _stop) = lot(&gauge);
        let (mut client, server) = pair().await;
        let (_other_client, other) = pair().await;
        assert!(parking.park(other, 2, Duration::from_secs(3600)).is_ok());
        assert!(parking.park(server, 1, Duration::from_millis(20)).is_ok());
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("closed within the deadline")
            .unwrap();
        assert_eq!(n, 0, "the client sees the close");
        assert_eq!(parking.parked(), 1, "the other one stays");
    }

    #[tokio::test]
    async fn a_drain_resumes_every_parked_connection_and_closes_the_lot() {
        let gauge = Arc::new(AtomicU64::new(0));
        let (parking, mut resumed, drain, _stop) = lot(&gauge);
        let mut clients = Vec::new();
        for n in 0..3 {
            let (c, s) = pair().await;
            clients.push(c);
            assert!(parking.park(s, n, Duration::from_secs(60)).is_ok());
        }
        drain.send_replace(true);
        let mut back: Vec<u32> = Vec::new();
        for _ in 0..3 {
            back.push(resumed.recv().await.unwrap().1);
        }
        back.sort();
        assert_eq!(back, [0, 1, 2]);
        assert_eq!(gauge.load(Ordering::Relaxed), 0);
        let (_c, s) = pair().await;
        assert!(
            parking.park(s, 9, Duration::from_secs(60)).is_err(),
            "closed"
        );
    }

    #[tokio::test]
    async fn an_orphaned_lot_ends_once_empty() {
        let gauge = Arc::new(AtomicU64::new(0));
        let (parking, mut resumed, _drain, _stop) = lot(&gauge);
        let (mut client, server) = pair().await;
        assert!(parking.park(server, 1, Duration::from_secs(60)).is_ok());
        parking.orphan();
        client.write_all(b"x").await.unwrap();
        assert_eq!(resumed.recv().await.unwrap().1, 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while parking.is_open() {
            assert!(std::time::Instant::now() < deadline, "the lot ends");
            tokio::task::yield_now().await;
        }
    }
}
