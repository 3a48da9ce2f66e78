//! A STUN and TURN client for tests, on the `turn-types` message codec: Binding,
//! Allocate (answering the 401 challenge with long-term credentials), Refresh,
//! CreatePermission, ChannelBind, Send indications and ChannelData, over UDP or TCP,
//! with every answer's class and error code exposed for precise assertions.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use turn_types::attribute::{
    ChannelNumber, Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayedAddress,
};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND};
use turn_types::stun::attribute::{
    ErrorCode, MessageIntegrity, Nonce, Realm, Username, XorMappedAddress,
};
use turn_types::stun::message::{
    BINDING, IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass,
    MessageIntegrityCredentials, MessageWrite, MessageWriteExt, MessageWriteVec, Method,
    TransactionId,
};
use turn_types::stun::prelude::AttributeWrite;

pub use turn_types::stun::message::IntegrityAlgorithm as Integrity;

/// Attributes for one request.
pub type Attrs = Vec<Box<dyn AttributeWrite>>;

const WAIT: Duration = Duration::from_secs(5);

enum Wire {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream, BytesMut),
}

/// What came back from the server.
#[derive(Debug, Clone)]
pub enum Received {
    /// A STUN message: its bytes.
    Message(Vec<u8>),
    /// ChannelData: channel and payload.
    Channel(u16, Vec<u8>),
}

/// An answer to a request, decoded enough for assertions.
#[derive(Debug, Clone)]
pub struct StunAnswer {
    pub raw: Vec<u8>,
    pub success: bool,
    /// The ERROR-CODE, when it is an error.
    pub code: Option<u16>,
}

impl StunAnswer {
    fn message(&self) -> Message<'_> {
        Message::from_bytes(&self.raw).expect("an answer parses")
    }

    pub fn xor_mapped(&self) -> Option<SocketAddr> {
        let m = self.message();
        let a = m.attribute::<XorMappedAddress>().ok()?;
        Some(a.addr(m.transaction_id()))
    }

    pub fn relayed(&self) -> Option<SocketAddr> {
        let m = self.message();
        let a = m.attribute::<XorRelayedAddress>().ok()?;
        Some(a.addr(m.transaction_id()))
    }

    pub fn lifetime(&self) -> Option<u32> {
        self.message()
            .attribute::<Lifetime>()
            .ok()
            .map(|l| l.seconds())
    }

    /// Whether it carries an attribute of this type.
    pub fn has(&self, attribute: u16) -> bool {
        self.message()
            .has_attribute(turn_types::stun::attribute::AttributeType::new(attribute))
    }

    pub fn has_integrity(&self) -> bool {
        self.message().has_attribute(
            <MessageIntegrity as turn_types::stun::prelude::AttributeStaticType>::TYPE,
        )
    }

    /// Whether its MESSAGE-INTEGRITY checks out with `password`.
    pub fn verifies(&self, user: &str, password: &str, realm: &str) -> bool {
        let key: MessageIntegrityCredentials =
            LongTermKeyCredentials::new(user.into(), password.into(), realm.into()).into();
        self.message().validate_integrity(&key).is_ok()
    }

    fn text_attr<A>(&self, pick: impl Fn(&A) -> String) -> Option<String>
    where
        A: for<'a> turn_types::stun::prelude::AttributeFromRaw<'a>
            + turn_types::stun::prelude::AttributeStaticType,
    {
        let m = self.message();
        m.attribute::<A>().ok().map(|a| pick(&a))
    }
}

/// A TURN client on one 5-tuple.
pub struct TurnClient {
    wire: Wire,
    pub user: String,
    pub password: String,
    pub realm: Option<String>,
    pub nonce: Option<String>,
    pub algorithm: IntegrityAlgorithm,
    /// Data and ChannelData received while waiting for answers.
    pub inbox: Vec<Received>,
}

impl TurnClient {
    pub async fn udp(server: SocketAddr, user: &str, password: &str) -> TurnClient {
        let local = if server.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        };
        let s = UdpSocket::bind(local).await.expect("bind");
        Self::with(Wire::Udp(s, server), user, password)
    }

    pub async fn tcp(server: SocketAddr, user: &str, password: &str) -> TurnClient {
        let s = TcpStream::connect(server).await.expect("connect");
        Self::with(Wire::Tcp(s, BytesMut::new()), user, password)
    }

    fn with(wire: Wire, user: &str, password: &str) -> TurnClient {
        TurnClient {
            wire,
            user: user.into(),
            password: password.into(),
            realm: None,
            nonce: None,
            algorithm: IntegrityAlgorithm::Sha1,
            inbox: Vec::new(),
        }
    }

    /// The UDP socket and the server's address, for a load loop of its own.
    pub fn into_udp(self) -> Option<(UdpSocket, SocketAddr)> {
        match self.wire {
            Wire::Udp(s, to) => Some((s, to)),
            Wire::Tcp(..) => None,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        match &self.wire {
            Wire::Udp(s, _) => s.local_addr().expect("local"),
            Wire::Tcp(s, _) => s.local_addr().expect("local"),
        }
    }

    pub async fn send_raw(&mut self, b: &[u8]) {
        match &mut self.wire {
            Wire::Udp(s, to) => {
                s.send_to(b, *to).await.expect("send");
            }
            Wire::Tcp(s, _) => s.write_all(b).await.expect("send"),
        }
    }

    /// The next message or ChannelData, within `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Option<Received> {
        tokio::time::timeout(wait, self.recv_one())
            .await
            .ok()
            .flatten()
    }

    async fn recv_one(&mut self) -> Option<Received> {
        match &mut self.wire {
            Wire::Udp(s, _) => {
                let mut buf = vec![0u8; 65_536];
                let (n, _) = s.recv_from(&mut buf).await.ok()?;
                buf.truncate(n);
                Some(decode(&buf))
            }
            Wire::Tcp(s, buf) => loop {
                if buf.len() >= 4 {
                    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
                    let total = if buf[0] & 0xC0 == 0x40 {
                        4 + len.div_ceil(4) * 4
                    } else {
                        20 + len
                    };
                    if buf.len() >= total {
                        let frame = buf.split_to(total);
                        let frame = if frame[0] & 0xC0 == 0x40 {
                            &frame[..4 + len]
                        } else {
                            &frame[..]
                        };
                        return Some(decode(frame));
                    }
                }
                if s.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            },
        }
    }

    /// Sends a request and returns its answer (data that arrives meanwhile goes to
    /// the inbox); `None` when nothing answers within the wait.
    pub async fn request(&mut self, req: Vec<u8>) -> Option<StunAnswer> {
        let id = Message::from_bytes(&req).expect("request").transaction_id();
        self.send_raw(&req).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await? {
                Received::Message(raw) => {
                    let m = Message::from_bytes(&raw).expect("parses");
                    if m.transaction_id() != id {
                        self.inbox.push(Received::Message(raw));
                        continue;
                    }
                    let code = m.attribute::<ErrorCode>().ok().map(|e| e.code());
                    let success = m.class() == MessageClass::Success;
                    let a = StunAnswer { raw, success, code };
                    if let Some(r) = a.text_attr::<Realm>(|r| r.realm().to_owned()) {
                        self.realm = Some(r);
                    }
                    if let Some(n) = a.text_attr::<Nonce>(|n| n.nonce().to_owned()) {
                        self.nonce = Some(n);
                    }
                    return Some(a);
                }
                other => self.inbox.push(other),
            }
        }
    }

    /// A request of `method` with the attributes `attrs` makes for its transaction
    /// id, signed once the client knows the realm and nonce; a 401 or 438 challenge
    /// is answered once.
    pub async fn signed(
        &mut self,
        method: Method,
        attrs: &(dyn Fn(TransactionId) -> Attrs + Sync),
    ) -> StunAnswer {
        let mut tries = 0;
        loop {
            tries += 1;
            // Built in a block: the attributes are gone before the await.
            let req = {
                let m = Message::builder_request(method, MessageWriteVec::new());
                let id = m.transaction_id();
                let owned = attrs(id);
                let refs: Vec<&dyn AttributeWrite> = owned.iter().map(|b| b.as_ref()).collect();
                self.finish_signed(m, &refs)
            };
            let a = self.request(req).await.expect("an answer");
            if matches!(a.code, Some(401) | Some(438)) && self.nonce.is_some() && tries < 2 {
                continue;
            }
            return a;
        }
    }

    /// The request `m` with `attrs`, signed when the realm and nonce are known.
    pub fn finish_signed(&self, mut m: MessageWriteVec, attrs: &[&dyn AttributeWrite]) -> Vec<u8> {
        for a in attrs {
            m.add_attribute(*a).expect("attribute");
        }
        if let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
            m.add_attribute(&Username::new(&self.user).expect("user"))
                .expect("user");
            m.add_attribute(&Realm::new(realm).expect("realm"))
                .expect("realm");
            m.add_attribute(&Nonce::new(nonce).expect("nonce"))
                .expect("nonce");
            let key: MessageIntegrityCredentials = LongTermKeyCredentials::new(
                self.user.clone(),
                self.password.clone(),
                realm.clone(),
            )
            .into();
            m.add_message_integrity(&key, self.algorithm)
                .expect("integrity");
        }
        m.add_fingerprint().expect("fingerprint");
        m.finish()
    }

    pub async fn binding(&mut self) -> Option<StunAnswer> {
        let mut m = Message::builder_request(BINDING, MessageWriteVec::new());
        m.add_fingerprint().expect("fingerprint");
        self.request(m.finish()).await
    }

    pub async fn allocate(&mut self) -> StunAnswer {
        self.signed(ALLOCATE, &|_| vec![Box::new(RequestedTransport::new(17))])
            .await
    }

    pub async fn refresh(&mut self, seconds: u32) -> StunAnswer {
        self.signed(REFRESH, &|_| vec![Box::new(Lifetime::new(seconds))])
            .await
    }

    pub async fn permit(&mut self, peer: SocketAddr) -> StunAnswer {
        self.signed(CREATE_PERMISSION, &|id| {
            vec![Box::new(XorPeerAddress::new(peer, id))]
        })
        .await
    }

    pub async fn bind_channel(&mut self, channel: u16, peer: SocketAddr) -> StunAnswer {
        self.signed(CHANNEL_BIND, &|id| {
            vec![
                Box::new(ChannelNumber::new(channel)),
                Box::new(XorPeerAddress::new(peer, id)),
            ]
        })
        .await
    }

    /// A Send indication of `data` to `peer`.
    pub async fn send_to(&mut self, peer: SocketAddr, data: &[u8]) {
        let mut m = Message::builder_indication(SEND, MessageWriteVec::new());
        let id = m.transaction_id();
        m.add_attribute(&XorPeerAddress::new(peer, id))
            .expect("peer");
        m.add_attribute(&Data::new(data)).expect("data");
        m.add_fingerprint().expect("fingerprint");
        let b = m.finish();
        self.send_raw(&b).await;
    }

    /// ChannelData on `channel` (padded over TCP).
    pub async fn send_channel(&mut self, channel: u16, data: &[u8]) {
        let mut b = Vec::with_capacity(data.len() + 8);
        b.extend_from_slice(&channel.to_be_bytes());
        b.extend_from_slice(&(data.len() as u16).to_be_bytes());
        b.extend_from_slice(data);
        if matches!(self.wire, Wire::Tcp(..)) {
            while b.len() % 4 != 0 {
                b.push(0);
            }
        }
        self.send_raw(&b).await;
    }

    /// The next relayed data: from a Data indication (with its peer) or ChannelData
    /// (with its channel as the port of an unspecified address).
    pub async fn next_data(&mut self) -> Option<(Option<SocketAddr>, Option<u16>, Vec<u8>)> {
        let next = if self.inbox.is_empty() {
            self.recv(WAIT).await?
        } else {
            self.inbox.remove(0)
        };
        match next {
            Received::Channel(c, d) => Some((None, Some(c), d)),
            Received::Message(raw) => {
                let m = Message::from_bytes(&raw).ok()?;
                if !(m.class() == MessageClass::Indication && m.method() == DATA) {
                    return None;
                }
                let peer = m
                    .attribute::<XorPeerAddress>()
                    .ok()
                    .map(|p| p.addr(m.transaction_id()));
                let data = m.attribute::<Data>().ok()?.data().to_vec();
                Some((peer, None, data))
            }
        }
    }
}

fn decode(b: &[u8]) -> Received {
    if b.first().is_some_and(|x| x & 0xC0 == 0x40) && b.len() >= 4 {
        let c = u16::from_be_bytes([b[0], b[1]]);
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        let mut rest = &b[4..];
        let take = len.min(rest.len());
        let data = rest[..take].to_vec();
        rest.advance(take);
        Received::Channel(c, data)
    } else {
        Received::Message(b.to_vec())
    }
}

/// coturn's shared-secret credentials: a username valid for `valid` and its password.
pub fn rest_credentials(secret: &str, name: &str, valid: Duration) -> (String, String) {
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + valid.as_secs();
    let user = format!("{expiry}:{name}");
    let password = pylon_proxy::turn::rest_password(secret, &user);
    (user, password)
}
