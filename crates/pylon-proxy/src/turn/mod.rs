//! STUN and TURN listeners (`protocol = "stun"` or `"turn"`): Binding requests (RFC
//! 8489) on UDP and TCP, and TURN relaying (RFC 8656) for WebRTC clients behind NATs.
//!
//! Messages are parsed and written with the `turn-types` crate (and the `stun-types`
//! it re-exports); the server itself is Pylon's: `turn-server-proto`, the one sans-IO
//! TURN server crate, takes static users only, and Pylon needs coturn's shared-secret
//! credentials, the refusal of special-purpose peer addresses, quotas, bandwidth
//! limits, and its own metrics and log lines per allocation.
//!
//! One [`TurnService`] per listener holds the allocations of all its transports (the
//! 5-tuple of client, server address and transport is an allocation's key); it lives
//! as long as the listener's settings do, so a reload that leaves a listener as it
//! was keeps its allocations. Each allocation has one relayed UDP socket and a task
//! reading it; what a client sends is relayed from the socket's receive loop
//! (`transport.rs`) without a task hop.

mod allocation;
mod auth;
mod handle;
mod transport;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use pylon_config::model::{Listener, StunListener};

use crate::lock;
use crate::shared::Shared;
pub use allocation::Allocation;
pub use auth::{AuthFailure, rest_password};
pub use transport::{TurnTcpLoop, TurnUdpLoop};

/// An allocation's key: who, where to, and over what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub tcp: bool,
}

/// Why a message was dropped without an answer (a metric label).
#[derive(Debug, Clone, Copy)]
pub enum Dropped {
    /// Not STUN, or a STUN message that does not parse (bad length, fingerprint).
    Malformed,
    /// An unauthenticated client over its rate.
    RateLimited,
    /// Data for a peer, or from a peer, without a permission.
    NoPermission,
    /// Data over the allocation's bandwidth.
    Bandwidth,
    /// ChannelData or a Send indication without an allocation or channel.
    NoAllocation,
}

impl Dropped {
    const ALL: [Dropped; 5] = [
        Dropped::Malformed,
        Dropped::RateLimited,
        Dropped::NoPermission,
        Dropped::Bandwidth,
        Dropped::NoAllocation,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Dropped::Malformed => "malformed",
            Dropped::RateLimited => "rate_limited",
            Dropped::NoPermission => "no_permission",
            Dropped::Bandwidth => "bandwidth",
            Dropped::NoAllocation => "no_allocation",
        }
    }
}

/// One listener's counters.
#[derive(Default)]
pub struct TurnStats {
    pub bindings: AtomicU64,
    pub allocations: AtomicU64,
    pub allocations_total: AtomicU64,
    pub permissions: AtomicU64,
    pub channels: AtomicU64,
    pub bytes_to_peers: AtomicU64,
    pub bytes_from_peers: AtomicU64,
    pub packets_to_peers: AtomicU64,
    pub packets_from_peers: AtomicU64,
    /// By [`AuthFailure`], in its order.
    auth_failures: [AtomicU64; 7],
    /// By [`Dropped`], in its order.
    dropped: [AtomicU64; 5],
    /// Peers refused (special-purpose addresses, `denied_peers`, Pylon's own).
    pub peers_refused: AtomicU64,
    /// Allocations refused for a quota (486) or no free relay port (508).
    pub quota_refused: AtomicU64,
}

impl TurnStats {
    pub fn auth_failed(&self, f: AuthFailure) {
        let i = AuthFailure::ALL.iter().position(|x| *x == f).unwrap_or(0);
        self.auth_failures[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self, d: Dropped) {
        self.dropped[d as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// `(reason, count)` for every [`AuthFailure`].
    pub fn auth_failures(&self) -> Vec<(&'static str, u64)> {
        AuthFailure::ALL
            .iter()
            .zip(&self.auth_failures)
            .map(|(f, n)| (f.as_str(), n.load(Ordering::Relaxed)))
            .collect()
    }

    /// `(reason, count)` for every [`Dropped`].
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        Dropped::ALL
            .iter()
            .zip(&self.dropped)
            .map(|(d, n)| (d.as_str(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Every STUN and TURN listener's service and counters, by listener name.
#[derive(Default)]
pub struct TurnRegistry {
    services: Mutex<HashMap<String, Arc<TurnService>>>,
    stats: Mutex<BTreeMap<String, Arc<TurnStats>>>,
}

impl TurnRegistry {
    /// The service of `listener`: the running one while its settings are the same, a
    /// new one otherwise (the old one's allocations end with the loops that hold it).
    pub fn service(&self, listener: &Listener, shared: &Arc<Shared>) -> Option<Arc<TurnService>> {
        let config = listener.stun.as_ref()?;
        let mut services = lock(&self.services);
        if let Some(s) = services.get(&listener.name)
            && s.config == *config
        {
            return Some(Arc::clone(s));
        }
        let stats = Arc::clone(lock(&self.stats).entry(listener.name.clone()).or_default());
        let service = TurnService::new(listener, config.clone(), stats, shared);
        services.insert(listener.name.clone(), Arc::clone(&service));
        Some(service)
    }

    /// Listeners' counters, by name.
    pub fn stats(&self) -> Vec<(String, Arc<TurnStats>)> {
        lock(&self.stats)
            .iter()
            .map(|(n, s)| (n.clone(), Arc::clone(s)))
            .collect()
    }

    /// Forgets listeners no longer configured.
    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        lock(&self.services).retain(|n, _| keep(n));
        lock(&self.stats).retain(|n, _| keep(n));
    }
}

/// One STUN or TURN listener's state: its allocations, credentials and limits.
pub struct TurnService {
    pub name: Arc<str>,
    config: StunListener,
    stats: Arc<TurnStats>,
    shared: Arc<Shared>,
    credentials: Option<auth::Credentials>,
    allocations: Mutex<HashMap<FiveTuple, Arc<Allocation>>>,
    /// Allocations per user.
    per_user: Mutex<HashMap<String, u64>>,
    /// Answers to unauthenticated requests (Binding, 401), per client IP.
    unauthenticated: DefaultKeyedRateLimiter<IpAddr>,
    /// Relay sockets kept for an Allocate with a RESERVATION-TOKEN, by token, until
    /// their deadline.
    reservations: Mutex<HashMap<u64, (tokio::net::UdpSocket, tokio::time::Instant)>>,
}

/// How long a reserved relay port waits for its Allocate (RFC 8656 §7.2: 30 s).
const RESERVATION: Duration = Duration::from_secs(30);

impl TurnService {
    fn new(
        listener: &Listener,
        config: StunListener,
        stats: Arc<TurnStats>,
        shared: &Arc<Shared>,
    ) -> Arc<TurnService> {
        let rate = config
            .relay
            .as_ref()
            .map_or(100, |r| r.unauthenticated_rate);
        let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN));
        let service = Arc::new(TurnService {
            name: Arc::from(listener.name.as_str()),
            credentials: config.relay.as_ref().map(auth::Credentials::new),
            config,
            stats,
            shared: Arc::clone(shared),
            allocations: Mutex::default(),
            per_user: Mutex::default(),
            unauthenticated: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            reservations: Mutex::default(),
        });
        tokio::spawn(sweep(Arc::downgrade(&service)));
        service
    }

    pub fn stats(&self) -> &TurnStats {
        &self.stats
    }

    /// Whether an unauthenticated answer may go to `ip` now.
    fn admit_unauthenticated(&self, ip: IpAddr) -> bool {
        let ok = self.unauthenticated.check_key(&ip).is_ok();
        if !ok {
            self.stats.dropped(Dropped::RateLimited);
        }
        ok
    }

    /// Keeps `socket` for a later Allocate; its token.
    fn reserve(&self, socket: tokio::net::UdpSocket) -> u64 {
        let mut token = [0u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut token);
        let token = u64::from_le_bytes(token);
        lock(&self.reservations).insert(token, (socket, tokio::time::Instant::now() + RESERVATION));
        token
    }

    fn take_reservation(&self, token: u64) -> Option<tokio::net::UdpSocket> {
        lock(&self.reservations).remove(&token).map(|(s, _)| s)
    }

    fn allocation(&self, five: &FiveTuple) -> Option<Arc<Allocation>> {
        lock(&self.allocations).get(five).cloned()
    }

    /// Ends the allocation of `five` (the client's TCP connection closed).
    pub fn connection_closed(&self, five: &FiveTuple) {
        self.remove(five, "closed");
    }

    fn remove(&self, five: &FiveTuple, why: &'static str) {
        let gone = lock(&self.allocations).remove(five);
        if let Some(a) = gone {
            self.ended(&a, why);
        }
    }

    /// What an allocation's end leaves: counts, its user's quota, its log line.
    fn ended(&self, a: &Allocation, why: &'static str) {
        a.stop();
        self.stats.allocations.fetch_sub(1, Ordering::Relaxed);
        let (permissions, channels) = a.counts();
        self.stats
            .permissions
            .fetch_sub(permissions, Ordering::Relaxed);
        self.stats.channels.fetch_sub(channels, Ordering::Relaxed);
        {
            let mut users = lock(&self.per_user);
            if let Some(n) = users.get_mut(a.user()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    users.remove(a.user());
                }
            }
        }
        if self.shared.logger.enabled() {
            self.shared
                .logger
                .log_allocation(Box::new(a.record(&self.name, why)));
        }
    }

    /// Expires allocations, permissions and channels whose time is up.
    fn sweep(&self) {
        let now = tokio::time::Instant::now();
        let expired: Vec<FiveTuple> = lock(&self.allocations)
            .iter()
            .filter(|(_, a)| a.expired(now))
            .map(|(k, _)| *k)
            .collect();
        for five in expired {
            self.remove(&five, "expired");
        }
        let live: Vec<Arc<Allocation>> = lock(&self.allocations).values().cloned().collect();
        for a in live {
            let (permissions, channels) = a.expire_bindings(now);
            self.stats
                .permissions
                .fetch_sub(permissions, Ordering::Relaxed);
            self.stats.channels.fetch_sub(channels, Ordering::Relaxed);
        }
        self.unauthenticated.retain_recent();
        lock(&self.reservations).retain(|_, (_, until)| *until > now);
    }
}

impl Drop for TurnService {
    fn drop(&mut self) {
        let all: Vec<Arc<Allocation>> = lock(&self.allocations).drain().map(|(_, a)| a).collect();
        for a in all {
            self.ended(&a, "listener_changed");
        }
    }
}

/// Once a second, while the service lives.
async fn sweep(service: Weak<TurnService>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = service.upgrade() else { return };
        s.sweep();
    }
}
