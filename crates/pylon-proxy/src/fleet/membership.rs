//! Membership: each instance run with `--config-source` registers itself under
//! `PREFIX/members/NAME` with a lease (so that a dead instance's entry goes when its
//! lease expires) and keeps its entry current: address, version, the configuration
//! revision it runs, readiness. It watches the other entries, which `GET /fleet` lists.
//! A lost connection or lease is retried with backoff, and the entry written again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::config_source::ConfigSource;
use super::etcd::{Change, EtcdError};
use crate::Proxy;

const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// This instance, as the fleet sees it.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    /// Where the edge tier and operators reach it.
    pub address: String,
    /// How long an entry outlives its instance.
    pub ttl: Duration,
}

impl Member {
    fn key(&self, source: &ConfigSource) -> String {
        format!("{}/members/{}", source.prefix, self.name)
    }

    fn record(&self, proxy: &Proxy, started: u64) -> Vec<u8> {
        json!({
            "name": self.name,
            "address": self.address,
            "version": env!("CARGO_PKG_VERSION"),
            "config_revision": proxy.config_origin().map(|o| o.1),
            "ready": proxy.is_ready(),
            "started": started,
        })
        .to_string()
        .into_bytes()
    }

    /// Registers and follows the fleet for as long as the process runs.
    pub async fn run(self, source: ConfigSource, proxy: Arc<Proxy>) {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut backoff = Duration::from_secs(1);
        loop {
            let mut registered = false;
            let e = self
                .session(&source, &proxy, started, &mut registered)
                .await;
            if registered {
                backoff = Duration::from_secs(1);
            }
            tracing::warn!(member = %self.name, error = %e, retry_in = ?backoff, "fleet membership lost; registering again");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn session(
        &self,
        source: &ConfigSource,
        proxy: &Proxy,
        started: u64,
        registered: &mut bool,
    ) -> EtcdError {
        let ttl = self.ttl.as_secs().max(2) as i64;
        let etcd = match source.connect().await {
            Ok(e) => e,
            Err(e) => return e,
        };
        let lease = match etcd.grant(ttl).await {
            Ok(l) => l,
            Err(e) => return e,
        };
        let key = self.key(source);
        let mut written = self.record(proxy, started);
        if let Err(e) = etcd.put(&key, &written, lease).await {
            return e;
        }
        let refresh = Duration::from_secs((ttl / 3).max(1) as u64);
        let mut alive = match etcd.keep_alive(lease, refresh).await {
            Ok(s) => Box::pin(s),
            Err(e) => return e,
        };
        let members_prefix = format!("{}/members/", source.prefix);
        let (listed, revision) = match etcd.get_prefix(&members_prefix).await {
            Ok(l) => l,
            Err(e) => return e,
        };
        let mut members: BTreeMap<String, Value> = listed
            .into_iter()
            .filter_map(|(k, v)| Some((k, serde_json::from_slice(&v.value).ok()?)))
            .collect();
        proxy.set_members(members.values().cloned().collect());
        let mut changes = match etcd.watch_prefix(&members_prefix, revision + 1).await {
            Ok(s) => Box::pin(s),
            Err(e) => return e,
        };
        *registered = true;
        tracing::info!(member = %self.name, address = %self.address, "registered in the fleet");
        let mut tick = tokio::time::interval(refresh);
        loop {
            tokio::select! {
                a = alive.next() => match a {
                    Some(Ok(())) => {}
                    Some(Err(e)) => return e,
                    None => return EtcdError::Unreachable("the lease keep-alive ended".to_owned()),
                },
                c = changes.next() => match c {
                    Some(Ok(batch)) => {
                        for c in batch {
                            match c.change {
                                Change::Put(v) => {
                                    if let Ok(value) = serde_json::from_slice(&v.value) {
                                        members.insert(c.key, value);
                                    }
                                }
                                Change::Deleted(_) => {
                                    members.remove(&c.key);
                                }
                            }
                        }
                        proxy.set_members(members.values().cloned().collect());
                    }
                    Some(Err(e)) => return e,
                    None => return EtcdError::Unreachable("the members watch ended".to_owned()),
                },
                _ = tick.tick() => {
                    // The revision in force or readiness changed: the entry says so.
                    let now = self.record(proxy, started);
                    if now != written {
                        if let Err(e) = etcd.put(&key, &now, lease).await {
                            return e;
                        }
                        written = now;
                    }
                }
            }
        }
    }
}
