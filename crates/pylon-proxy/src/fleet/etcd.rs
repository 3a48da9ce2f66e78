//! A small etcd v3 client on tonic: read a key or a prefix, write a key only if its
//! revision is the one expected (a transaction) or under a lease, keep a lease alive,
//! and watch a key or a prefix; over TLS (with a client certificate) and as an etcd user
//! when the command line says so ([`set_access`]). The API is generated at build time from
//! etcd's own protocol files (`proto/etcd/`, see `build.rs`). Not the `etcd-client`
//! crate: its build script needs `protoc` on the machine, and a fresh clone of Pylon
//! must build with Rust alone.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// etcd's generated API.
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod api {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use api::etcdserverpb::auth_client::AuthClient;
use api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use api::etcdserverpb::kv_client::KvClient;
use api::etcdserverpb::lease_client::LeaseClient;
use api::etcdserverpb::request_op::Request as Op;
use api::etcdserverpb::watch_client::WatchClient;
use api::etcdserverpb::watch_request::RequestUnion;
use api::etcdserverpb::{
    AuthenticateRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchRequest,
};

/// Why etcd could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoint answered ({0})")]
    Unreachable(String),
    #[error("etcd: {}", status_text(.0))]
    Status(#[from] tonic::Status),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
}

/// A connection to an etcd cluster.
#[derive(Clone)]
pub struct Etcd {
    channel: Channel,
    timeout: Duration,
    /// The user's token, sent with every request, when a user is set; signed in for
    /// again every minute (etcd's tokens expire, 5 minutes by default).
    token: Arc<RwLock<Option<AsciiMetadataValue>>>,
}

/// How often a user's token is renewed.
const TOKEN_RENEWAL: Duration = Duration::from_secs(60);

/// How every etcd connection of the process is made beyond plain text: TLS, trusting
/// `ca` (PEM) and showing a client certificate when given, and as an etcd user.
#[derive(Clone, Default)]
pub struct EtcdAccess {
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and key (PEM).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// User name and password.
    pub user: Option<(String, String)>,
}

static ACCESS: OnceLock<EtcdAccess> = OnceLock::new();

/// Sets how etcd is reached, once at start (configuration source, membership, ticket
/// keys and `discovery` clusters alike); plain text without a user when never called.
pub fn set_access(access: EtcdAccess) {
    let _ = ACCESS.set(access);
}

/// Adds the user's token to a request.
#[derive(Clone)]
pub struct WithToken(Arc<RwLock<Option<AsciiMetadataValue>>>);

impl Interceptor for WithToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let token = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(t) = token {
            req.metadata_mut().insert("token", t);
        }
        Ok(req)
    }
}

/// A key's value and the revision that last changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// What a watch reports: the key's new value at a revision, or its deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Versioned),
    Deleted(i64),
}

/// A change under a watched prefix: which key, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    pub key: String,
    pub change: Change,
}

/// etcd's message; for a broken connection, its causes and what to check.
fn status_text(status: &tonic::Status) -> String {
    use std::error::Error as _;
    if status.code() != tonic::Code::Unknown || status.source().is_none() {
        return status.message().to_owned();
    }
    let causes = status.source().map(describe).unwrap_or_default();
    let hint = if ACCESS.get().is_none_or(|a| a.ca.is_none()) {
        " (does etcd serve TLS only? then give --etcd-ca)"
    } else {
        ""
    };
    format!("{}: {causes}{hint}", status.message())
}

/// Signs in as `name`: the token every later request carries.
async fn sign_in(
    channel: &Channel,
    timeout: Duration,
    name: &str,
    password: &str,
) -> Result<AsciiMetadataValue, EtcdError> {
    let mut auth = AuthClient::new(channel.clone());
    let request = auth.authenticate(AuthenticateRequest {
        name: name.to_owned(),
        password: password.to_owned(),
    });
    let resp = match tokio::time::timeout(timeout, request).await {
        Ok(r) => r?.into_inner(),
        Err(_) => return Err(EtcdError::Timeout(timeout)),
    };
    MetadataValue::try_from(resp.token.as_str()).map_err(|_| {
        EtcdError::Status(tonic::Status::unauthenticated(
            "etcd answered a token that is not ASCII",
        ))
    })
}

/// Signs in again every [`TOKEN_RENEWAL`] for as long as the connection is used.
async fn renew_token(
    token: std::sync::Weak<RwLock<Option<AsciiMetadataValue>>>,
    channel: Channel,
    timeout: Duration,
    name: String,
    password: String,
) {
    loop {
        tokio::time::sleep(TOKEN_RENEWAL).await;
        let Some(slot) = token.upgrade() else { return };
        match sign_in(&channel, timeout, &name, &password).await {
            Ok(t) => *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(t),
            Err(e) => {
                tracing::warn!(user = %name, error = %e, "etcd: renewing the sign-in failed; retrying in a minute")
            }
        }
    }
}

/// A connection error with its causes (tonic's own says only "transport error").
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The end of the key range of every key starting with `prefix` (etcd's convention:
/// the prefix with its last byte incremented).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    /// Connects to the first of `endpoints` (`host:port`) that answers, over TLS and
    /// signed in as the user when [`set_access`] said so.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Etcd, EtcdError> {
        let access = ACCESS.get().cloned().unwrap_or_default();
        let tls = (access.ca.is_some() || access.identity.is_some()).then(|| {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &access.ca {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &access.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            tls
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut errors = Vec::new();
        for e in endpoints {
            let endpoint = match Endpoint::from_shared(format!("{scheme}://{e}")) {
                // HTTP/2 pings find a node that vanished without closing (powered off,
                // partitioned): watches would otherwise wait on it forever.
                Ok(ep) => ep
                    .connect_timeout(timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .keep_alive_while_idle(true),
                Err(err) => {
                    errors.push(format!("{e}: {err}"));
                    continue;
                }
            };
            let endpoint = match &tls {
                Some(t) => match endpoint.tls_config(t.clone()) {
                    Ok(ep) => ep,
                    Err(err) => {
                        errors.push(format!("{e}: TLS: {err}"));
                        continue;
                    }
                },
                None => endpoint,
            };
            let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
                Ok(Ok(channel)) => channel,
                Ok(Err(err)) => {
                    errors.push(format!("{e}: {}", describe(&err)));
                    continue;
                }
                Err(_) => {
                    errors.push(format!("{e}: timed out"));
                    continue;
                }
            };
            let etcd = Etcd {
                channel,
                timeout,
                token: Arc::default(),
            };
            if let Some((name, password)) = access.user {
                let token = sign_in(&etcd.channel, timeout, &name, &password).await?;
                *etcd.token.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
                tokio::spawn(renew_token(
                    Arc::downgrade(&etcd.token),
                    etcd.channel.clone(),
                    timeout,
                    name,
                    password,
                ));
            }
            return Ok(etcd);
        }
        Err(EtcdError::Unreachable(errors.join("; ")))
    }

    fn auth(&self) -> WithToken {
        WithToken(self.token.clone())
    }

    async fn bounded<T>(
        &self,
        f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => Ok(r?.into_inner()),
            Err(_) => Err(EtcdError::Timeout(self.timeout)),
        }
    }

    /// The key's value, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>, EtcdError> {
        Ok(self.get_at(key).await?.0)
    }

    /// The key's value, if it exists, and the store's revision then: a watch of the
    /// key starts after it (a key's own revision may be compacted away long since).
    pub async fn get_at(&self, key: &str) -> Result<(Option<Versioned>, i64), EtcdError> {
        let mut kv = KvClient::with_interceptor(self.channel.clone(), self.auth());
        let resp = self
            .bounded(kv.range(RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            }))
            .await?;
        let revision = resp.header.map_or(0, |h| h.revision);
        let value = resp.kvs.into_iter().next().map(|kv| Versioned {
            value: kv.value,
            mod_revision: kv.mod_revision,
        });
        Ok((value, revision))
    }

    /// Every key under `prefix` with its value, and the store's revision then.
    pub async fn get_prefix(
        &self,
        prefix: &str,
    ) -> Result<(Vec<(String, Versioned)>, i64), EtcdError> {
        let mut kv = KvClient::with_interceptor(self.channel.clone(), self.auth());
        let resp = self
            .bounded(kv.range(RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                ..Default::default()
            }))
            .await?;
        let revision = resp.header.map_or(0, |h| h.revision);
        let kvs = resp
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    Versioned {
                        value: kv.value,
                        mod_revision: kv.mod_revision,
                    },
                )
            })
            .collect();
        Ok((kvs, revision))
    }

    /// A lease of `ttl` seconds: its id.
    pub async fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let mut lease = LeaseClient::with_interceptor(self.channel.clone(), self.auth());
        let resp = self
            .bounded(lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }))
            .await?;
        if !resp.error.is_empty() {
            return Err(EtcdError::Status(tonic::Status::unavailable(resp.error)));
        }
        Ok(resp.id)
    }

    /// Ends `lease` now: the keys written under it go at once.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let mut client = LeaseClient::with_interceptor(self.channel.clone(), self.auth());
        self.bounded(client.lease_revoke(LeaseRevokeRequest { id: lease }))
            .await?;
        Ok(())
    }

    /// Writes `value` under `lease` (0: none): the key goes when the lease does.
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut kv = KvClient::with_interceptor(self.channel.clone(), self.auth());
        let resp = self
            .bounded(kv.put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.to_vec(),
                lease,
                ..Default::default()
            }))
            .await?;
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// Keeps `lease` alive: refreshes it every `every` for as long as the stream is
    /// polled; an item per refresh, `Err` when the lease has expired or the stream broke.
    pub async fn keep_alive(
        &self,
        lease: i64,
        every: Duration,
    ) -> Result<impl futures_util::Stream<Item = Result<(), EtcdError>> + use<>, EtcdError> {
        let mut client = LeaseClient::with_interceptor(self.channel.clone(), self.auth());
        let ticks = tokio::time::interval(every);
        let requests = futures_util::stream::unfold(ticks, move |mut ticks| async move {
            ticks.tick().await;
            Some((LeaseKeepAliveRequest { id: lease }, ticks))
        });
        let responses = tokio::time::timeout(self.timeout, client.lease_keep_alive(requests))
            .await
            .map_err(|_| EtcdError::Timeout(self.timeout))??
            .into_inner();
        Ok(responses.map(|r| match r {
            Ok(r) if r.ttl > 0 => Ok(()),
            Ok(_) => Err(EtcdError::Status(tonic::Status::not_found(
                "the lease expired",
            ))),
            Err(e) => Err(e.into()),
        }))
    }

    /// Writes `value` under `lease` (0: none) if the key was last changed at `expected`
    /// (0: if it does not exist). `Ok(Ok(revision))` when written, `Ok(Err(current))`
    /// when the key has changed meanwhile (its revision now; 0 when deleted).
    pub async fn put_if(
        &self,
        key: &str,
        value: &[u8],
        expected: i64,
        lease: i64,
    ) -> Result<Result<i64, i64>, EtcdError> {
        let mut kv = KvClient::with_interceptor(self.channel.clone(), self.auth());
        let key = key.as_bytes().to_vec();
        let resp = self
            .bounded(kv.txn(TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: key.clone(),
                    target_union: Some(TargetUnion::ModRevision(expected)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(Op::RequestPut(PutRequest {
                        key: key.clone(),
                        value: value.to_vec(),
                        lease,
                        ..Default::default()
                    })),
                }],
                failure: vec![RequestOp {
                    request: Some(Op::RequestRange(RangeRequest {
                        key,
                        ..Default::default()
                    })),
                }],
            }))
            .await?;
        let revision = resp.header.map_or(0, |h| h.revision);
        if resp.succeeded {
            return Ok(Ok(revision));
        }
        let current = resp
            .responses
            .into_iter()
            .find_map(|r| match r.response? {
                api::etcdserverpb::response_op::Response::ResponseRange(range) => {
                    Some(range.kvs.first().map_or(0, |kv| kv.mod_revision))
                }
                _ => None,
            })
            .unwrap_or(0);
        Ok(Err(current))
    }

    /// In one transaction: if every key of `unchanged` is still at its revision (0: it
    /// does not exist), deletes `deletes` and writes `puts`. Whether it was done.
    pub async fn replace(
        &self,
        unchanged: &[(String, i64)],
        puts: &[(String, Vec<u8>)],
        deletes: &[String],
    ) -> Result<bool, EtcdError> {
        let mut kv = KvClient::with_interceptor(self.channel.clone(), self.auth());
        let compare = unchanged
            .iter()
            .map(|(key, revision)| Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: key.as_bytes().to_vec(),
                target_union: Some(TargetUnion::ModRevision(*revision)),
                ..Default::default()
            })
            .collect();
        let deletions = deletes.iter().map(|key| RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })),
        });
        let writes = puts.iter().map(|(key, value)| RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.clone(),
                ..Default::default()
            })),
        });
        let resp = self
            .bounded(kv.txn(TxnRequest {
                compare,
                success: deletions.chain(writes).collect(),
                failure: Vec::new(),
            }))
            .await?;
        Ok(resp.succeeded)
    }

    /// Watches `key` from `start_revision` on: its changes, in order, until the stream
    /// breaks (then `None`; the caller reconnects).
    pub async fn watch(
        &self,
        key: &str,
        start_revision: i64,
    ) -> Result<impl futures_util::Stream<Item = Result<Vec<Change>, EtcdError>> + use<>, EtcdError>
    {
        let changes = self
            .watch_range(key.as_bytes(), Vec::new(), start_revision)
            .await?;
        Ok(changes.map(|batch| Ok(batch?.into_iter().map(|c| c.change).collect())))
    }

    /// Watches every key under `prefix` from `start_revision` on.
    pub async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<
        impl futures_util::Stream<Item = Result<Vec<KeyChange>, EtcdError>> + use<>,
        EtcdError,
    > {
        self.watch_range(
            prefix.as_bytes(),
            prefix_end(prefix.as_bytes()),
            start_revision,
        )
        .await
    }

    async fn watch_range(
        &self,
        key: &[u8],
        range_end: Vec<u8>,
        start_revision: i64,
    ) -> Result<
        impl futures_util::Stream<Item = Result<Vec<KeyChange>, EtcdError>> + use<>,
        EtcdError,
    > {
        let mut client = WatchClient::with_interceptor(self.channel.clone(), self.auth());
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.to_vec(),
                range_end,
                start_revision,
                ..Default::default()
            })),
        };
        // The request stream stays open: etcd ends a watch whose client half-closes.
        let requests = futures_util::stream::iter([create]).chain(futures_util::stream::pending());
        let responses = tokio::time::timeout(self.timeout, client.watch(requests))
            .await
            .map_err(|_| EtcdError::Timeout(self.timeout))??
            .into_inner();
        Ok(responses.map(|r| {
            let r = r?;
            if r.canceled {
                return Err(EtcdError::Status(tonic::Status::aborted(format!(
                    "watch canceled: {} (compacted to revision {})",
                    r.cancel_reason, r.compact_revision
                ))));
            }
            Ok(r.events
                .into_iter()
                .filter_map(|e| {
                    let kv = e.kv?;
                    let change = if e.r#type == api::mvccpb::event::EventType::Delete as i32 {
                        Change::Deleted(kv.mod_revision)
                    } else {
                        Change::Put(Versioned {
                            value: kv.value,
                            mod_revision: kv.mod_revision,
                        })
                    };
                    Some(KeyChange {
                        key: String::from_utf8_lossy(&kv.key).into_owned(),
                        change,
                    })
                })
                .collect())
        }))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_ends_increment_the_last_byte() {
        assert_eq!(super::prefix_end(b"/a/"), b"/a0");
        assert_eq!(super::prefix_end(b"a\xff"), b"b");
        assert_eq!(super::prefix_end(b"\xff"), [0]);
    }
}
