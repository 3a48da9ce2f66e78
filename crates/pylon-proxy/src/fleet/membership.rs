//! Membership: each instance run with `--config-source` registers itself under
//! `PREFIX/members/NAME` with a lease (so that a dead instance's entry goes when its
//! lease expires) and keeps its entry current: address, version, the configuration
//! revision it runs, readiness. It watches the other entries, which `GET /fleet` lists.
//! A lost connection or lease is retried with backoff, and the entry written again.
//! When the process stops, the entry says `"ready": false` as the drain begins (an edge
//! tier sends no new flows, the ones there go on) and goes when the drain is over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
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
    /// The lease the entry is written under now (0: none yet).
    pub lease: Arc<AtomicI64>,
    /// Set once the entry says `"ready": false` in etcd (the drain is announced).
    pub announced_drain: tokio::sync::watch::Sender<bool>,
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

    /// Waits (up to `limit`) until etcd holds the entry with `"ready": false`, so that
    /// edge tiers stop sending new flows before the listeners close.
    pub async fn announce_drain(&self, limit: Duration) {
        let mut rx = self.announced_drain.subscribe();
        if tokio::time::timeout(limit, rx.wait_for(|done| *done))
            .await
            .is_err()
        {
            tracing::warn!(member = %self.name, "the drain could not be announced in etcd in time; closing the listeners anyway");
        }
    }

    /// Takes the entry out of the fleet at once (its lease revoked), at the end of a
    /// graceful stop; otherwise it would linger until its lease expired. The task
    /// running [`Member::run`] must have been stopped first.
    pub async fn leave(&self, source: &ConfigSource) {
        let lease = self.lease.swap(0, Ordering::Relaxed);
        if lease == 0 {
            return;
        }
        let left = match source.connect().await {
            Ok(etcd) => etcd.revoke(lease).await,
            Err(e) => Err(e),
        };
        match left {
            Ok(()) => tracing::info!(member = %self.name, "left the fleet"),
            Err(e) => {
                tracing::warn!(member = %self.name, error = %e, "could not leave the fleet; the entry goes when its lease expires")
            }
        }
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
        if proxy.is_draining() {
            // A process that stops does not register again: after a binary upgrade its
            // successor holds the name.
            return std::future::pending().await;
        }
        let ttl = self.ttl.as_secs().max(2) as i64;
        let etcd = match source.connect().await {
            Ok(e) => e,
            Err(e) => return e,
        };
        let lease = match etcd.grant(ttl).await {
            Ok(l) => l,
            Err(e) => return e,
        };
        self.lease.store(lease, Ordering::Relaxed);
        let key = self.key(source);
        let mut state = proxy.watch_state();
        let mut written = self.record(proxy, started);
        // Registering takes the name, from a predecessor too (a binary upgrade that
        // keeps `--instance-name`); later writes only while the entry is still ours.
        let mut at = match etcd.put(&key, &written, lease).await {
            Ok(r) => r,
            Err(e) => return e,
        };
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
            let wrote = tokio::select! {
                a = alive.next() => match a {
                    Some(Ok(())) => None,
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
                                Change::Deleted(_) if c.key == key => {
                                    // Deleted by hand, or its lease expired: written again.
                                    return EtcdError::Unreachable("this instance's entry was deleted".to_owned());
                                }
                                Change::Deleted(_) => {
                                    members.remove(&c.key);
                                }
                            }
                        }
                        proxy.set_members(members.values().cloned().collect());
                        None
                    }
                    Some(Err(e)) => return e,
                    None => return EtcdError::Unreachable("the members watch ended".to_owned()),
                },
                // The revision in force or readiness changed: the entry says so (at
                // once for a drain or a new revision; health-check readiness is polled).
                _ = tick.tick() => Some(self.record(proxy, started)),
                Ok(()) = state.changed() => Some(self.record(proxy, started)),
            };
            let Some(wrote) = wrote else { continue };
            if wrote != written {
                match etcd.put_if(&key, &wrote, at, lease).await {
                    Ok(Ok(r)) => at = r,
                    Ok(Err(0)) => {
                        return EtcdError::Unreachable(
                            "this instance's entry was deleted".to_owned(),
                        );
                    }
                    Ok(Err(_)) => {
                        // Another process took the name: its entry stands, this one's
                        // lease has nothing left to take away.
                        self.lease.store(0, Ordering::Relaxed);
                        self.announced_drain.send_replace(true);
                        tracing::warn!(member = %self.name, "another process registered under this name; this one leaves the entry to it");
                        return std::future::pending().await;
                    }
                    Err(e) => return e,
                }
                written = wrote;
            }
            if proxy.is_draining() {
                self.announced_drain.send_replace(true);
            }
        }
    }
}
