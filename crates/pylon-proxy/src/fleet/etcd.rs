//! A small etcd v3 client on tonic: read a key, write it only if its revision is the
//! one expected (a transaction), and watch it. The API is generated at build time from
//! etcd's own protocol files (`proto/etcd/`, see `build.rs`). Not the `etcd-client`
//! crate: its build script needs `protoc` on the machine, and a fresh clone of Pylon
//! must build with Rust alone.

use std::time::Duration;

use futures_util::StreamExt;
use tonic::transport::{Channel, Endpoint};

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

use api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use api::etcdserverpb::kv_client::KvClient;
use api::etcdserverpb::request_op::Request as Op;
use api::etcdserverpb::watch_client::WatchClient;
use api::etcdserverpb::watch_request::RequestUnion;
use api::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};

/// Why etcd could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoint answered ({0})")]
    Unreachable(String),
    #[error("etcd: {0}")]
    Status(#[from] tonic::Status),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
}

/// A connection to an etcd cluster.
#[derive(Clone)]
pub struct Etcd {
    channel: Channel,
    timeout: Duration,
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

impl Etcd {
    /// Connects to the first of `endpoints` (`host:port`) that answers.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Etcd, EtcdError> {
        let mut errors = Vec::new();
        for e in endpoints {
            let endpoint = match Endpoint::from_shared(format!("http://{e}")) {
                Ok(ep) => ep.connect_timeout(timeout).tcp_nodelay(true),
                Err(err) => {
                    errors.push(format!("{e}: {err}"));
                    continue;
                }
            };
            match tokio::time::timeout(timeout, endpoint.connect()).await {
                Ok(Ok(channel)) => return Ok(Etcd { channel, timeout }),
                Ok(Err(err)) => errors.push(format!("{e}: {err}")),
                Err(_) => errors.push(format!("{e}: timed out")),
            }
        }
        Err(EtcdError::Unreachable(errors.join("; ")))
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
        let mut kv = KvClient::new(self.channel.clone());
        let resp = self
            .bounded(kv.range(RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            }))
            .await?;
        Ok(resp.kvs.into_iter().next().map(|kv| Versioned {
            value: kv.value,
            mod_revision: kv.mod_revision,
        }))
    }

    /// Writes `value` if the key was last changed at `expected` (0: if it does not
    /// exist). `Ok(Ok(revision))` when written, `Ok(Err(current))` when the key has
    /// changed meanwhile (its revision now; 0 when deleted).
    pub async fn put_if(
        &self,
        key: &str,
        value: &[u8],
        expected: i64,
    ) -> Result<Result<i64, i64>, EtcdError> {
        let mut kv = KvClient::new(self.channel.clone());
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

    /// Watches `key` from `start_revision` on: its changes, in order, until the stream
    /// breaks (then `None`; the caller reconnects).
    pub async fn watch(
        &self,
        key: &str,
        start_revision: i64,
    ) -> Result<impl futures_util::Stream<Item = Result<Vec<Change>, EtcdError>> + use<>, EtcdError>
    {
        let mut client = WatchClient::new(self.channel.clone());
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.as_bytes().to_vec(),
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
                    Some(
                        if e.r#type == api::mvccpb::event::EventType::Delete as i32 {
                            Change::Deleted(kv.mod_revision)
                        } else {
                            Change::Put(Versioned {
                                value: kv.value,
                                mod_revision: kv.mod_revision,
                            })
                        },
                    )
                })
                .collect())
        }))
    }
}
