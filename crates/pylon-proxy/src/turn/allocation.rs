//! One TURN allocation: its relayed UDP socket, the permissions and channels its client
//! installed, its lifetime and bandwidth, and the task that relays what peers send to
//! the socket back to the client (as ChannelData on a bound channel, else as a Data
//! indication).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use turn_types::message::DATA;
use turn_types::stun::message::{Message, MessageWrite, MessageWriteExt, MessageWriteVec};
use turn_types::stun::prelude::AttributeWrite;

use super::{Dropped, FiveTuple, TurnStats};
use crate::lock;
use crate::observe::access_log::AllocationRecord;

/// RFC 8656 §9: a permission lasts 300 s, a channel binding 600 s.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// What one allocation may hold (beyond them: 508).
pub const MAX_PERMISSIONS: usize = 1024;
pub const MAX_CHANNELS: usize = 1024;
/// Peers named in the allocation's log line, at most.
const LOGGED_PEERS: usize = 16;

/// Where answers and relayed data go back to the client.
#[derive(Clone)]
pub enum ClientLink {
    Udp(Arc<UdpSocket>, SocketAddr),
    /// The connection's writer (ChannelData is padded to 4 bytes over TCP).
    Tcp(tokio::sync::mpsc::Sender<Bytes>),
}

impl ClientLink {
    /// Sends without waiting: a full socket buffer or queue drops the datagram, as
    /// the network would.
    pub fn send(&self, data: Bytes) -> bool {
        match self {
            ClientLink::Udp(s, to) => s.try_send_to(&data, *to).is_ok(),
            ClientLink::Tcp(tx) => tx.try_send(data).is_ok(),
        }
    }

    /// The same for bytes in a buffer of the caller's.
    pub fn send_slice(&self, data: &[u8]) -> bool {
        match self {
            ClientLink::Udp(s, to) => s.try_send_to(data, *to).is_ok(),
            ClientLink::Tcp(tx) => tx.try_send(Bytes::copy_from_slice(data)).is_ok(),
        }
    }

    fn is_tcp(&self) -> bool {
        matches!(self, ClientLink::Tcp(_))
    }
}

/// A byte budget refilled at `rate` per second, holding one second's worth at most.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, rate: u64, n: usize, now: Instant) -> bool {
        let rate = rate as f64;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = now;
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

struct State {
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    /// Channel number → (peer, expiry), and peer → channel number.
    channels: HashMap<u16, (SocketAddr, Instant)>,
    by_peer: HashMap<SocketAddr, u16>,
    /// The last Allocate's transaction and answer, for a retransmission.
    allocate: (u128, Bytes),
    up: Bucket,
    down: Bucket,
    peers: BTreeSet<SocketAddr>,
}

/// One allocation.
pub struct Allocation {
    pub five: FiveTuple,
    user: String,
    /// The socket's own address, and the address told to the client.
    relay: Arc<UdpSocket>,
    pub relayed: SocketAddr,
    link: ClientLink,
    state: Mutex<State>,
    bandwidth: Option<u64>,
    started: SystemTime,
    since: Instant,
    stats: Arc<TurnStats>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    packets_up: AtomicU64,
    packets_down: AtomicU64,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

/// What an allocation is made of.
pub struct NewAllocation {
    pub five: FiveTuple,
    pub user: String,
    pub relay: UdpSocket,
    pub relayed: SocketAddr,
    pub link: ClientLink,
    pub lifetime: Duration,
    pub bandwidth: Option<u64>,
    pub transaction: u128,
}

impl Allocation {
    /// Starts relaying for it.
    pub fn start(n: NewAllocation, stats: Arc<TurnStats>) -> Arc<Allocation> {
        let now = Instant::now();
        let a = Arc::new(Allocation {
            five: n.five,
            user: n.user,
            relay: Arc::new(n.relay),
            relayed: n.relayed,
            link: n.link,
            state: Mutex::new(State {
                expires: now + n.lifetime,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                by_peer: HashMap::new(),
                allocate: (n.transaction, Bytes::new()),
                up: Bucket {
                    tokens: n.bandwidth.unwrap_or(0) as f64,
                    at: now,
                },
                down: Bucket {
                    tokens: n.bandwidth.unwrap_or(0) as f64,
                    at: now,
                },
                peers: BTreeSet::new(),
            }),
            bandwidth: n.bandwidth,
            started: SystemTime::now(),
            since: now,
            stats,
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            packets_up: AtomicU64::new(0),
            packets_down: AtomicU64::new(0),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(relay_from_peers(Arc::clone(&a)));
        *lock(&a.task) = Some(task.abort_handle());
        a
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn stop(&self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }

    pub fn expired(&self, now: Instant) -> bool {
        lock(&self.state).expires <= now
    }

    pub fn refresh(&self, lifetime: Duration) {
        lock(&self.state).expires = Instant::now() + lifetime;
    }

    /// Keeps the answer to the Allocate that made it.
    pub fn set_allocate_answer(&self, answer: Bytes) {
        lock(&self.state).allocate.1 = answer;
    }

    /// The answer again, when `transaction` is the Allocate that made it.
    pub fn allocate_retransmit(&self, transaction: u128) -> Option<Bytes> {
        let s = lock(&self.state);
        (s.allocate.0 == transaction).then(|| s.allocate.1.clone())
    }

    /// Permissions and channels held now.
    pub fn counts(&self) -> (u64, u64) {
        let s = lock(&self.state);
        (s.permissions.len() as u64, s.channels.len() as u64)
    }

    /// Installs or refreshes permissions for `peers`; the number new, or `None` when
    /// that would pass [`MAX_PERMISSIONS`].
    pub fn permit(&self, peers: &[IpAddr]) -> Option<u64> {
        let mut s = lock(&self.state);
        let new = peers
            .iter()
            .filter(|p| !s.permissions.contains_key(p))
            .count();
        if s.permissions.len() + new > MAX_PERMISSIONS {
            return None;
        }
        let until = Instant::now() + PERMISSION_LIFETIME;
        for p in peers {
            s.permissions.insert(*p, until);
        }
        Some(new as u64)
    }

    /// Binds (or refreshes) `channel` to `peer`, and the peer's permission. `Err` when
    /// the channel is bound to another peer or the peer to another channel (400), or
    /// the allocation is full (508). Ok: (new permissions, new channels).
    pub fn bind_channel(&self, channel: u16, peer: SocketAddr) -> Result<(u64, u64), u16> {
        let mut s = lock(&self.state);
        match (s.channels.get(&channel), s.by_peer.get(&peer)) {
            (Some((p, _)), _) if *p != peer => return Err(400),
            (_, Some(c)) if *c != channel => return Err(400),
            _ => {}
        }
        let new_channel = !s.channels.contains_key(&channel);
        let new_permission = !s.permissions.contains_key(&peer.ip());
        if (new_channel && s.channels.len() >= MAX_CHANNELS)
            || (new_permission && s.permissions.len() >= MAX_PERMISSIONS)
        {
            return Err(508);
        }
        let now = Instant::now();
        s.channels.insert(channel, (peer, now + CHANNEL_LIFETIME));
        s.by_peer.insert(peer, channel);
        s.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        Ok((u64::from(new_permission), u64::from(new_channel)))
    }

    /// Drops permissions and channels whose time is up: how many of each.
    pub fn expire_bindings(&self, now: Instant) -> (u64, u64) {
        let mut s = lock(&self.state);
        let (p0, c0) = (s.permissions.len(), s.channels.len());
        s.permissions.retain(|_, t| *t > now);
        let gone: Vec<(u16, SocketAddr)> = s
            .channels
            .iter()
            .filter(|(_, (_, t))| *t <= now)
            .map(|(c, (p, _))| (*c, *p))
            .collect();
        for (c, p) in gone {
            s.channels.remove(&c);
            s.by_peer.remove(&p);
        }
        (
            (p0 - s.permissions.len()) as u64,
            (c0 - s.channels.len()) as u64,
        )
    }

    /// Whether `n` bytes may pass to (`up`) or from `peer` now: a live permission, and
    /// room in the allocation's bandwidth that way.
    fn passes(&self, s: &mut State, peer: IpAddr, n: usize, up: bool) -> bool {
        let now = Instant::now();
        if s.permissions.get(&peer).is_none_or(|t| *t <= now) {
            self.stats.dropped(Dropped::NoPermission);
            return false;
        }
        if let Some(rate) = self.bandwidth {
            let bucket = if up { &mut s.up } else { &mut s.down };
            if !bucket.take(rate, n, now) {
                self.stats.dropped(Dropped::Bandwidth);
                return false;
            }
        }
        true
    }

    /// Relays `data` from the client to `peer` (a Send indication), when permitted.
    pub fn send_to_peer(&self, peer: SocketAddr, data: &[u8]) {
        if self.admit_up(&mut lock(&self.state), peer, data.len()) {
            self.relay_up(peer, data);
        }
    }

    /// Relays ChannelData from the client to its channel's peer (one look at the
    /// state for the channel and the permission).
    pub fn send_on_channel(&self, channel: u16, data: &[u8]) {
        let peer = {
            let mut s = lock(&self.state);
            let Some((peer, _)) = s.channels.get(&channel) else {
                self.stats.dropped(Dropped::NoAllocation);
                return;
            };
            let peer = *peer;
            if !self.admit_up(&mut s, peer, data.len()) {
                return;
            }
            peer
        };
        self.relay_up(peer, data);
    }

    /// Whether `n` bytes may go to `peer` now (noting the peer for the log line).
    fn admit_up(&self, s: &mut State, peer: SocketAddr, n: usize) -> bool {
        if !self.passes(s, peer.ip(), n, true) {
            return false;
        }
        if s.peers.len() < LOGGED_PEERS {
            s.peers.insert(peer);
        }
        true
    }

    fn relay_up(&self, peer: SocketAddr, data: &[u8]) {
        if self.relay.try_send_to(data, peer).is_ok() {
            let n = data.len() as u64;
            self.bytes_up.fetch_add(n, Ordering::Relaxed);
            self.packets_up.fetch_add(1, Ordering::Relaxed);
            self.stats.bytes_to_peers.fetch_add(n, Ordering::Relaxed);
            self.stats.packets_to_peers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends the `n` bytes from `peer` at `buf[4..]` to the client: as ChannelData on
    /// its channel, its header written in the 4 bytes before the data (no copy), else
    /// as a Data indication. False without a permission or over the bandwidth.
    fn deliver(&self, peer: SocketAddr, buf: &mut [u8], n: usize) -> bool {
        let channel = {
            let mut s = lock(&self.state);
            if !self.passes(&mut s, peer.ip(), n, false) {
                return false;
            }
            s.by_peer.get(&peer).copied()
        };
        match channel {
            Some(c) => {
                // Over TCP, padded to 4 bytes (the buffer has room past the data).
                let pad = if self.link.is_tcp() {
                    (4 - n % 4) % 4
                } else {
                    0
                };
                let Ok(len) = u16::try_from(n) else {
                    return false;
                };
                buf[..2].copy_from_slice(&c.to_be_bytes());
                buf[2..4].copy_from_slice(&len.to_be_bytes());
                buf[4 + n..4 + n + pad].fill(0);
                self.link.send_slice(&buf[..4 + n + pad])
            }
            None => data_indication(peer, &buf[4..4 + n]).is_some_and(|d| self.link.send(d)),
        }
    }

    /// The access-log line for its end.
    pub fn record(&self, listener: &Arc<str>, why: &'static str) -> AllocationRecord {
        let peers = lock(&self.state).peers.iter().copied().collect();
        AllocationRecord {
            time: SystemTime::now(),
            kind: "turn_allocation",
            listener: Arc::clone(listener),
            client: self.five.client,
            transport: if self.five.tcp { "tcp" } else { "udp" },
            user: self.user.clone(),
            relayed: self.relayed,
            peers,
            bytes_to_peers: self.bytes_up.load(Ordering::Relaxed),
            bytes_from_peers: self.bytes_down.load(Ordering::Relaxed),
            packets_to_peers: self.packets_up.load(Ordering::Relaxed),
            packets_from_peers: self.packets_down.load(Ordering::Relaxed),
            duration_ms: crate::observe::access_log::millis(self.since.elapsed()),
            started: self.started,
            end: why,
        }
    }
}

/// A Data indication carrying `data` from `peer`.
fn data_indication(peer: SocketAddr, data: &[u8]) -> Option<Bytes> {
    let mut m = Message::builder_indication(DATA, MessageWriteVec::with_capacity(data.len() + 48));
    let id = m.transaction_id();
    add(
        &mut m,
        &turn_types::attribute::XorPeerAddress::new(peer, id),
    )?;
    add(&mut m, &turn_types::attribute::Data::new(data))?;
    Some(Bytes::from(m.finish()))
}

fn add(m: &mut MessageWriteVec, a: &dyn AttributeWrite) -> Option<()> {
    m.add_attribute(a).ok()
}

/// Reads the relayed socket until the allocation ends: each datagram is read 4 bytes
/// into the buffer, where a ChannelData header can go in front of it.
async fn relay_from_peers(a: Arc<Allocation>) {
    let mut buf = vec![0u8; 4 + 65_536 + 4];
    loop {
        let (n, peer) = match a.relay.recv_from(&mut buf[4..4 + 65_536]).await {
            Ok(r) => r,
            // ICMP errors of earlier sends surface here; the socket goes on.
            Err(_) => {
                tokio::task::yield_now().await;
                continue;
            }
        };
        if a.deliver(peer, &mut buf, n) {
            let n = n as u64;
            a.bytes_down.fetch_add(n, Ordering::Relaxed);
            a.packets_down.fetch_add(1, Ordering::Relaxed);
            a.stats.bytes_from_peers.fetch_add(n, Ordering::Relaxed);
            a.stats.packets_from_peers.fetch_add(1, Ordering::Relaxed);
        }
    }
}
