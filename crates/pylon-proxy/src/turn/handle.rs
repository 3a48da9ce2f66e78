//! What a STUN or TURN listener does with one message from a client: Binding answered
//! with the client's address; Allocate, Refresh, CreatePermission and ChannelBind
//! authenticated with long-term credentials and answered (RFC 8656 §7 to §11); Send
//! indications and ChannelData relayed to peers. Malformed messages and what is not a
//! request are dropped unanswered; answers to unauthenticated requests are rate
//! limited per client IP, and never much larger than the request (amplification).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use turn_types::attribute::{
    ChannelNumber, Data, DontFragment, EvenPort, Lifetime, RequestedAddressFamily,
    RequestedTransport, ReservationToken, XorPeerAddress, XorRelayedAddress,
};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};
use turn_types::stun::AddressFamily;
use turn_types::stun::attribute::{
    AttributeStaticType, AttributeType, ErrorCode, MessageIntegrity, MessageIntegritySha256, Nonce,
    Realm, Software, UnknownAttributes, Username, XorMappedAddress,
};
use turn_types::stun::message::{
    BINDING, IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass,
    MessageIntegrityCredentials, MessageWrite, MessageWriteExt, MessageWriteVec,
};
use turn_types::stun::prelude::{Attribute as _, AttributeWrite};

use super::allocation::{Allocation, ClientLink, NewAllocation};
use super::{AuthFailure, Dropped, FiveTuple, TurnService};
use crate::lock;

/// UDP, the one relayed transport (RFC 8656 §14.7).
const UDP: u8 = 17;
const SOFTWARE: &str = "pylon";
/// Channel numbers: RFC 8656 narrowed them to 0x4000-0x4FFF, but clients written to
/// RFC 5766 (coturn's among them) use up to 0x7FFF, which ChannelData can carry.
const CHANNELS: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;
/// Relay ports tried before an Allocate is refused with 508.
const PORT_TRIES: u32 = 64;

/// A request that passed authentication.
struct Authed {
    username: String,
    credentials: MessageIntegrityCredentials,
    algorithm: IntegrityAlgorithm,
}

impl TurnService {
    /// One message from `five.client`: the answer to send back, if any. `link` makes
    /// the way back for relayed data, when an allocation is made.
    pub fn handle(
        &self,
        data: &[u8],
        five: FiveTuple,
        link: impl FnOnce() -> ClientLink,
    ) -> Option<Bytes> {
        if data.first().is_some_and(|b| b & 0xC0 == 0x40) {
            self.channel_data(data, &five);
            return None;
        }
        let Ok(msg) = Message::from_bytes(data) else {
            self.stats.dropped(Dropped::Malformed);
            return None;
        };
        match (msg.class(), msg.method()) {
            (MessageClass::Request, BINDING) => self.binding(&msg, &five),
            (MessageClass::Indication, SEND) => {
                self.send_indication(&msg, &five);
                None
            }
            (MessageClass::Request, m)
                if self.config.relay.is_some()
                    && [ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND].contains(&m) =>
            {
                self.turn_request(&msg, five, link)
            }
            (MessageClass::Request, _) => {
                if !self.admit_unauthenticated(five.client.ip()) {
                    return None;
                }
                error(&msg, 400, "Bad Request", &[], None)
            }
            // Binding indications (keep-alives), responses: nothing to answer.
            _ => None,
        }
    }

    fn binding(&self, msg: &Message, five: &FiveTuple) -> Option<Bytes> {
        if !self.admit_unauthenticated(five.client.ip()) {
            return None;
        }
        self.stats.bindings.fetch_add(1, Ordering::Relaxed);
        let id = msg.transaction_id();
        let mapped = XorMappedAddress::new(five.client, id);
        // RESPONSE-ORIGIN and SOFTWARE only for requests at least as large as the answer
        // they make (36 more bytes): a spoofed source gains nothing from a small one.
        let full = msg.as_bytes().len() >= 76;
        let origin =
            (full && !five.server.ip().is_unspecified()).then(|| response_origin(five.server));
        let mut attrs: Vec<&dyn AttributeWrite> = vec![&mapped];
        if let Some(o) = &origin {
            attrs.push(o);
        }
        let m = Message::builder_success(msg, MessageWriteVec::with_capacity(80));
        finish(m, &attrs, None, full)
    }

    fn turn_request(
        &self,
        msg: &Message,
        five: FiveTuple,
        link: impl FnOnce() -> ClientLink,
    ) -> Option<Bytes> {
        if let Some(unknown) = unknown_required(msg) {
            if !self.admit_unauthenticated(five.client.ip()) {
                return None;
            }
            let list = UnknownAttributes::new(&unknown);
            return error(msg, 420, "Unknown Attribute", &[&list], None);
        }
        let auth = match self.authenticate(msg, five.client.ip()) {
            Ok(a) => a,
            Err(answer) => return answer,
        };
        let existing = self.allocation(&five);
        if let Some(a) = &existing
            && a.user() != auth.username
        {
            self.stats.auth_failed(AuthFailure::WrongUser);
            return error(msg, 441, "Wrong Credentials", &[], Some(&auth));
        }
        let method = msg.method();
        if method == ALLOCATE {
            return self.allocate(msg, five, existing, &auth, link);
        }
        let Some(a) = existing else {
            return error(msg, 437, "Allocation Mismatch", &[], Some(&auth));
        };
        if method == REFRESH {
            self.refresh(msg, &a, &auth)
        } else if method == CREATE_PERMISSION {
            self.create_permission(msg, &a, &auth)
        } else {
            self.channel_bind(msg, &a, &auth)
        }
    }

    /// Long-term credentials (RFC 8489 §9.2.4): `Err` holds the answer (401 or 438
    /// with a fresh nonce, 400), or `None` when it is dropped.
    fn authenticate(&self, msg: &Message, ip: IpAddr) -> Result<Authed, Option<Bytes>> {
        let (Some(credentials), Some(relay)) = (&self.credentials, &self.config.relay) else {
            return Err(None);
        };
        let challenge = |code: u16, reason: &str, failure: AuthFailure| {
            self.stats.auth_failed(failure);
            if !self.admit_unauthenticated(ip) {
                return None;
            }
            let realm = Realm::new(&relay.realm).ok()?;
            let nonce = Nonce::new(&credentials.nonce(ip)).ok()?;
            error(msg, code, reason, &[&realm, &nonce], None)
        };
        let signed = msg.has_attribute(MessageIntegrity::TYPE)
            || msg.has_attribute(MessageIntegritySha256::TYPE);
        if !signed {
            return Err(challenge(401, "Unauthorized", AuthFailure::Challenge));
        }
        let (Ok(user), Ok(realm), Ok(nonce)) = (
            msg.attribute::<Username>(),
            msg.attribute::<Realm>(),
            msg.attribute::<Nonce>(),
        ) else {
            if !self.admit_unauthenticated(ip) {
                return Err(None);
            }
            return Err(error(msg, 400, "Bad Request", &[], None));
        };
        match credentials.check_nonce(nonce.nonce(), ip) {
            Ok(()) => {}
            Err(AuthFailure::StaleNonce) => {
                return Err(challenge(438, "Stale Nonce", AuthFailure::StaleNonce));
            }
            Err(f) => return Err(challenge(401, "Unauthorized", f)),
        }
        if realm.realm() != relay.realm {
            return Err(challenge(401, "Unauthorized", AuthFailure::BadIntegrity));
        }
        let password = match credentials.password(user.username()) {
            Ok(p) => p,
            Err(f) => return Err(challenge(401, "Unauthorized", f)),
        };
        let key: MessageIntegrityCredentials =
            LongTermKeyCredentials::new(user.username().to_owned(), password, relay.realm.clone())
                .into();
        match msg.validate_integrity(&key) {
            Ok(algorithm) => Ok(Authed {
                username: user.username().to_owned(),
                credentials: key,
                algorithm,
            }),
            Err(_) => Err(challenge(401, "Unauthorized", AuthFailure::BadIntegrity)),
        }
    }

    fn allocate(
        &self,
        msg: &Message,
        five: FiveTuple,
        existing: Option<Arc<Allocation>>,
        auth: &Authed,
        link: impl FnOnce() -> ClientLink,
    ) -> Option<Bytes> {
        let relay = self.config.relay.as_ref()?;
        let id = msg.transaction_id();
        if let Some(a) = existing {
            // A retransmission of the Allocate that made it gets the same answer.
            return match a.allocate_retransmit(id.into()) {
                Some(answer) => Some(answer),
                None => error(msg, 437, "Allocation Mismatch", &[], Some(auth)),
            };
        }
        let Ok(transport) = msg.attribute::<RequestedTransport>() else {
            return error(msg, 400, "Bad Request", &[], Some(auth));
        };
        if transport.protocol() != UDP {
            return error(msg, 442, "Unsupported Transport Protocol", &[], Some(auth));
        }
        let even = msg.attribute::<EvenPort>().ok().map(|e| e.requested());
        let token = msg.attribute::<ReservationToken>().ok().map(|t| t.token());
        if even.is_some() && token.is_some() {
            return error(msg, 400, "Bad Request", &[], Some(auth));
        }
        let ip = relay.relay_ip.unwrap_or(five.server.ip());
        let family = match msg.attribute::<RequestedAddressFamily>() {
            Ok(f) => f.family(),
            Err(_) => AddressFamily::IPV4,
        };
        if family_of(ip) != family {
            return error(msg, 440, "Address Family not Supported", &[], Some(auth));
        }
        {
            let allocations = lock(&self.allocations).len() as u64;
            let users = lock(&self.per_user);
            let mine = users.get(&auth.username).copied().unwrap_or(0);
            if allocations >= relay.max_allocations || mine >= relay.user_quota {
                self.stats.quota_refused.fetch_add(1, Ordering::Relaxed);
                return error(msg, 486, "Allocation Quota Reached", &[], Some(auth));
            }
        }
        // EVEN-PORT (RFC 8656 §14.6): an even port, and with its R bit the next port
        // kept for 30 s under a RESERVATION-TOKEN for the client's next Allocate.
        let (socket, reserved) = match token {
            Some(t) => match self.take_reservation(t) {
                Some(s) => (s, None),
                None => return error(msg, 508, "Insufficient Capacity", &[], Some(auth)),
            },
            None => match bind_relay(ip, relay.relay_ports, even.is_some(), even == Some(true)) {
                Some(pair) => pair,
                None => {
                    self.stats.quota_refused.fetch_add(1, Ordering::Relaxed);
                    return error(msg, 508, "Insufficient Capacity", &[], Some(auth));
                }
            },
        };
        let port = socket.local_addr().ok()?.port();
        let relayed = SocketAddr::new(relay.external_ip.unwrap_or(ip), port);
        let lifetime = desired_lifetime(msg, relay.default_lifetime, relay.max_lifetime);
        let a = Allocation::start(
            NewAllocation {
                five,
                user: auth.username.clone(),
                relay: socket,
                relayed,
                link: link(),
                lifetime,
                bandwidth: relay.bandwidth,
                transaction: id.into(),
            },
            Arc::clone(&self.stats),
        );
        let secs = Lifetime::new(lifetime.as_secs() as u32);
        let relayed_attr = XorRelayedAddress::new(relayed, id);
        let mapped = XorMappedAddress::new(five.client, id);
        let reservation = reserved.map(|s| ReservationToken::new(self.reserve(s)));
        let mut attrs: Vec<&dyn AttributeWrite> = vec![&relayed_attr, &secs, &mapped];
        if let Some(r) = &reservation {
            attrs.push(r);
        }
        let answer = success(msg, &attrs, Some(auth))?;
        a.set_allocate_answer(answer.clone());
        lock(&self.allocations).insert(five, a);
        *lock(&self.per_user)
            .entry(auth.username.clone())
            .or_insert(0) += 1;
        self.stats.allocations.fetch_add(1, Ordering::Relaxed);
        self.stats.allocations_total.fetch_add(1, Ordering::Relaxed);
        Some(answer)
    }

    fn refresh(&self, msg: &Message, a: &Arc<Allocation>, auth: &Authed) -> Option<Bytes> {
        let relay = self.config.relay.as_ref()?;
        if let Ok(f) = msg.attribute::<RequestedAddressFamily>()
            && f.family() != family_of(a.relayed.ip())
        {
            return error(msg, 443, "Peer Address Family Mismatch", &[], Some(auth));
        }
        let asked = msg.attribute::<Lifetime>().ok().map(|l| l.seconds());
        if asked == Some(0) {
            self.remove(&a.five, "deleted");
            return success(msg, &[&Lifetime::new(0)], Some(auth));
        }
        let lifetime = desired_lifetime(msg, relay.default_lifetime, relay.max_lifetime);
        a.refresh(lifetime);
        success(
            msg,
            &[&Lifetime::new(lifetime.as_secs() as u32)],
            Some(auth),
        )
    }

    fn create_permission(
        &self,
        msg: &Message,
        a: &Arc<Allocation>,
        auth: &Authed,
    ) -> Option<Bytes> {
        let id = msg.transaction_id();
        let mut peers = Vec::new();
        for i in 0.. {
            let Ok(p) = msg.nth_attribute::<XorPeerAddress>(i) else {
                break;
            };
            let peer = p.addr(id);
            if family_of(peer.ip()) != family_of(a.relayed.ip()) {
                return error(msg, 443, "Peer Address Family Mismatch", &[], Some(auth));
            }
            if !self.peer_allowed(peer) {
                self.stats.peers_refused.fetch_add(1, Ordering::Relaxed);
                return error(msg, 403, "Forbidden", &[], Some(auth));
            }
            peers.push(peer.ip());
        }
        if peers.is_empty() {
            return error(msg, 400, "Bad Request", &[], Some(auth));
        }
        match a.permit(&peers) {
            Some(new) => {
                self.stats.permissions.fetch_add(new, Ordering::Relaxed);
                success(msg, &[], Some(auth))
            }
            None => error(msg, 508, "Insufficient Capacity", &[], Some(auth)),
        }
    }

    fn channel_bind(&self, msg: &Message, a: &Arc<Allocation>, auth: &Authed) -> Option<Bytes> {
        let id = msg.transaction_id();
        let (Ok(channel), Ok(peer)) = (
            msg.attribute::<ChannelNumber>(),
            msg.attribute::<XorPeerAddress>(),
        ) else {
            tracing::debug!(client = %a.five.client, "ChannelBind without CHANNEL-NUMBER or XOR-PEER-ADDRESS");
            return error(msg, 400, "Bad Request", &[], Some(auth));
        };
        let channel = channel.channel();
        let peer = peer.addr(id);
        if !CHANNELS.contains(&channel) {
            return error(msg, 400, "Bad Request", &[], Some(auth));
        }
        if family_of(peer.ip()) != family_of(a.relayed.ip()) {
            return error(msg, 443, "Peer Address Family Mismatch", &[], Some(auth));
        }
        if !self.peer_allowed(peer) {
            self.stats.peers_refused.fetch_add(1, Ordering::Relaxed);
            return error(msg, 403, "Forbidden", &[], Some(auth));
        }
        match a.bind_channel(channel, peer) {
            Ok((permissions, channels)) => {
                self.stats
                    .permissions
                    .fetch_add(permissions, Ordering::Relaxed);
                self.stats.channels.fetch_add(channels, Ordering::Relaxed);
                success(msg, &[], Some(auth))
            }
            Err(508) => error(msg, 508, "Insufficient Capacity", &[], Some(auth)),
            Err(_) => {
                tracing::debug!(client = %a.five.client, channel, %peer, "ChannelBind conflicts with a binding");
                error(msg, 400, "Bad Request", &[], Some(auth))
            }
        }
    }

    fn send_indication(&self, msg: &Message, five: &FiveTuple) {
        let Some(a) = self.allocation(five) else {
            self.stats.dropped(Dropped::NoAllocation);
            return;
        };
        let (Ok(peer), Ok(data)) = (msg.attribute::<XorPeerAddress>(), msg.attribute::<Data>())
        else {
            self.stats.dropped(Dropped::Malformed);
            return;
        };
        a.send_to_peer(peer.addr(msg.transaction_id()), data.data());
    }

    fn channel_data(&self, data: &[u8], five: &FiveTuple) {
        let (Some(head), Some(rest)) = (data.get(..4), data.get(4..)) else {
            self.stats.dropped(Dropped::Malformed);
            return;
        };
        let channel = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let (true, Some(payload)) = (CHANNELS.contains(&channel), rest.get(..len)) else {
            self.stats.dropped(Dropped::Malformed);
            return;
        };
        match self.allocation(five) {
            Some(a) => a.send_on_channel(channel, payload),
            None => self.stats.dropped(Dropped::NoAllocation),
        }
    }

    /// Whether data may be relayed to `peer`: never to Pylon's own listeners nor to
    /// `denied_peers`; to special-purpose addresses (loopback, private, link-local, ...)
    /// only when `allowed_peers` names them.
    fn peer_allowed(&self, peer: SocketAddr) -> bool {
        let Some(relay) = &self.config.relay else {
            return false;
        };
        let ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        if relay.denied_peers.iter().any(|n| n.contains(ip)) {
            return false;
        }
        let own = self.shared.own_addrs.load();
        if own.iter().any(|a| {
            a.port() == peer.port()
                && (a.ip() == ip || a.ip().is_unspecified() || ip.is_unspecified())
        }) {
            return false;
        }
        if relay.allowed_peers.iter().any(|n| n.contains(ip)) {
            return true;
        }
        !crate::http::forward_addr::non_public(ip)
    }
}

/// The lifetime an Allocate or Refresh asks for, within the listener's bounds (RFC
/// 8656 §7.2: the smaller of the asked and the maximum, but not below the default).
fn desired_lifetime(msg: &Message, default: Duration, max: Duration) -> Duration {
    match msg.attribute::<Lifetime>() {
        Ok(l) => Duration::from_secs(u64::from(l.seconds()))
            .min(max)
            .max(default),
        Err(_) => default,
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::IPV4,
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => AddressFamily::IPV4,
        IpAddr::V6(_) => AddressFamily::IPV6,
    }
}

/// A relayed socket on `ip`, on a port of `range` (an even one when asked), and with
/// `pair` the next port's socket too.
fn bind_relay(
    ip: IpAddr,
    range: (u16, u16),
    even: bool,
    pair: bool,
) -> Option<(tokio::net::UdpSocket, Option<tokio::net::UdpSocket>)> {
    let span = u32::from(range.1 - range.0) + 1;
    let mut seed = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut seed);
    let start = u32::from_le_bytes(seed) % span;
    let open = |port: u32| -> Option<tokio::net::UdpSocket> {
        let port = u16::try_from(port).ok()?;
        let s = std::net::UdpSocket::bind(SocketAddr::new(ip, port)).ok()?;
        s.set_nonblocking(true).ok()?;
        tokio::net::UdpSocket::from_std(s).ok()
    };
    for i in 0..PORT_TRIES.min(span) {
        let mut port = u32::from(range.0) + (start + i * 7919) % span;
        if even && port % 2 == 1 {
            port -= 1;
        }
        if port < u32::from(range.0) || (pair && port + 1 > u32::from(range.1)) {
            continue;
        }
        let Some(first) = open(port) else {
            continue;
        };
        if !pair {
            return Some((first, None));
        }
        if let Some(next) = open(port + 1) {
            return Some((first, Some(next)));
        }
    }
    None
}

/// Comprehension-required attributes of `msg` this server does not know (RFC 8489
/// §14: such a request gets 420 with UNKNOWN-ATTRIBUTES).
fn unknown_required(msg: &Message) -> Option<Vec<AttributeType>> {
    let known = [
        Username::TYPE,
        MessageIntegrity::TYPE,
        MessageIntegritySha256::TYPE,
        Realm::TYPE,
        Nonce::TYPE,
        ErrorCode::TYPE,
        XorMappedAddress::TYPE,
        ChannelNumber::TYPE,
        Lifetime::TYPE,
        XorPeerAddress::TYPE,
        Data::TYPE,
        XorRelayedAddress::TYPE,
        RequestedAddressFamily::TYPE,
        EvenPort::TYPE,
        RequestedTransport::TYPE,
        DontFragment::TYPE,
        ReservationToken::TYPE,
    ];
    let unknown: Vec<AttributeType> = msg
        .iter_attributes()
        .map(|(_, a)| a.get_type())
        .filter(|t| t.comprehension_required() && !known.contains(t))
        .collect();
    (!unknown.is_empty()).then_some(unknown)
}

/// RESPONSE-ORIGIN (RFC 5780 §7.3): the address the answer is sent from.
fn response_origin(addr: SocketAddr) -> turn_types::stun::attribute::RawAttribute<'static> {
    let mut v = Vec::with_capacity(20);
    v.push(0);
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&addr.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v.push(2);
            v.extend_from_slice(&addr.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
    }
    turn_types::stun::attribute::RawAttribute::new_owned(
        AttributeType::new(0x802B),
        v.into_boxed_slice(),
    )
}

fn success(msg: &Message, attrs: &[&dyn AttributeWrite], auth: Option<&Authed>) -> Option<Bytes> {
    let m = Message::builder_success(msg, MessageWriteVec::with_capacity(128));
    finish(m, attrs, auth, true)
}

fn error(
    msg: &Message,
    code: u16,
    reason: &str,
    attrs: &[&dyn AttributeWrite],
    auth: Option<&Authed>,
) -> Option<Bytes> {
    let mut m = Message::builder_error(msg, MessageWriteVec::with_capacity(128));
    m.add_attribute(&ErrorCode::new(code, reason).ok()?).ok()?;
    finish(m, attrs, auth, auth.is_some())
}

/// The answer with `attrs`, SOFTWARE when `software`, MESSAGE-INTEGRITY when the request
/// was authenticated, and FINGERPRINT.
fn finish(
    mut m: MessageWriteVec,
    attrs: &[&dyn AttributeWrite],
    auth: Option<&Authed>,
    software: bool,
) -> Option<Bytes> {
    for a in attrs {
        m.add_attribute(*a).ok()?;
    }
    if software {
        m.add_attribute(&Software::new(SOFTWARE).ok()?).ok()?;
    }
    if let Some(auth) = auth {
        m.add_message_integrity(&auth.credentials, auth.algorithm)
            .ok()?;
    }
    m.add_fingerprint().ok()?;
    Some(Bytes::from(m.finish()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use turn_types::stun::message::{Message, MessageWrite, MessageWriteExt, MessageWriteVec};

    use super::*;
    use crate::observe::{Metrics, StatsRegistry};
    use crate::shared::Shared;

    /// A TURN service with a user, as a listener on 127.0.0.1 would have it.
    fn service() -> Arc<TurnService> {
        let text = r#"
[[listeners]]
name = "t"
bind = "127.0.0.1:3478"
protocol = "turn"
transports = ["udp"]
[listeners.turn]
realm = "r"
secret = "s"
allowed_peers = ["127.0.0.0/8"]
"#;
        let config = pylon_config::parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        let shared = Shared::start(
            &pylon_config::model::AccessLogTarget::Off,
            Arc::new(Metrics::default()),
            Arc::new(StatsRegistry::default()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        shared
            .turn
            .service(&config.listeners[0], &shared)
            .unwrap_or_else(|| panic!("a TURN listener"))
    }

    /// Requests of every method the service knows, signed with a valid `nonce`, as
    /// seeds (their integrity breaks with the first changed byte, but the unchanged
    /// ones reach allocation, permissions and channels).
    fn seeds(nonce: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for method in [BINDING, ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND] {
            let mut m = Message::builder_request(method, MessageWriteVec::new());
            let id = m.transaction_id();
            let peer: SocketAddr = "127.0.0.1:9".parse().unwrap_or_else(|e| panic!("{e}"));
            let _ = m.add_attribute(&RequestedTransport::new(UDP));
            let _ = m.add_attribute(&XorPeerAddress::new(peer, id));
            let _ = m.add_attribute(&ChannelNumber::new(0x4001));
            let _ = m.add_attribute(&Lifetime::new(600));
            let _ =
                m.add_attribute(&Username::new("4102444800:u").unwrap_or_else(|e| panic!("{e}")));
            let _ = m.add_attribute(&Realm::new("r").unwrap_or_else(|e| panic!("{e}")));
            let _ = m.add_attribute(&Nonce::new(nonce).unwrap_or_else(|e| panic!("{e}")));
            let key: MessageIntegrityCredentials = LongTermKeyCredentials::new(
                "4102444800:u".into(),
                crate::turn::rest_password("s", "4102444800:u"),
                "r".into(),
            )
            .into();
            let _ = m.add_message_integrity(&key, IntegrityAlgorithm::Sha1);
            let _ = m.add_fingerprint();
            out.push(m.finish());
        }
        out.push(vec![0x40, 0x01, 0x00, 0x04, 1, 2, 3, 4]);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Whatever arrives (a known message with bytes changed, cut or added, or
        /// noise), the handler answers or drops it, never panics, and any answer is a
        /// STUN message.
        #[test]
        fn any_input_is_answered_or_dropped(
            seed in 0usize..6,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
            tail in proptest::collection::vec(any::<u8>(), 0..16),
            noise in proptest::collection::vec(any::<u8>(), 0..64),
            use_noise in any::<bool>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            rt.block_on(async {
                let s = service();
                let ip = "127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"));
                let nonce = s.credentials.as_ref().map(|c| c.nonce(ip)).unwrap_or_default();
                // The Allocate first (unchanged), so that the others find an allocation.
                let all = seeds(&nonce);
                let socket0 = Arc::new(
                    tokio::net::UdpSocket::bind("127.0.0.1:0")
                        .await
                        .unwrap_or_else(|e| panic!("{e}")),
                );
                let five0 = FiveTuple {
                    client: "127.0.0.1:40000".parse().unwrap_or_else(|e| panic!("{e}")),
                    server: "127.0.0.1:3478".parse().unwrap_or_else(|e| panic!("{e}")),
                    tcp: false,
                };
                let c0 = five0.client;
                let allocated = s.handle(&all[1], five0, || ClientLink::Udp(socket0, c0));
                let allocated = allocated.map(|a| Message::from_bytes(&a).map(|m| m.class()).ok());
                prop_assert_eq!(allocated, Some(Some(MessageClass::Success)));
                let mut data = if use_noise { noise } else { all[seed].clone() };
                if !data.is_empty() {
                    for (at, b) in &flips {
                        let i = at % data.len();
                        data[i] ^= b;
                    }
                    data.truncate(cut % (data.len() + 1));
                }
                data.extend_from_slice(&tail);
                let socket = Arc::new(
                    tokio::net::UdpSocket::bind("127.0.0.1:0")
                        .await
                        .unwrap_or_else(|e| panic!("{e}")),
                );
                let five = FiveTuple {
                    client: "127.0.0.1:40000".parse().unwrap_or_else(|e| panic!("{e}")),
                    server: "127.0.0.1:3478".parse().unwrap_or_else(|e| panic!("{e}")),
                    tcp: false,
                };
                let client = five.client;
                if let Some(answer) = s.handle(&data, five, || ClientLink::Udp(socket, client)) {
                    prop_assert!(Message::from_bytes(&answer).is_ok(), "an answer is STUN");
                }
                Ok(())
            })?;
        }
    }
}
