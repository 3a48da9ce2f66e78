//! etcd discovery (`discovery = "etcd://HOST:PORT/PREFIX"`): the cluster's endpoints are
//! its fixed ones plus one per key under the prefix (value `IP:PORT`, or
//! `{"address": "IP:PORT", "weight": N, "ready": BOOL}`, which is what fleet members
//! write under `PREFIX/members/`), read at start and followed by watch. `"ready": false`
//! drains the endpoint: it keeps its place (and, with `maglev` or `ring_hash`, every
//! other endpoint keeps its keys) but takes no new requests or connections while the
//! ones it has go on. A lost connection keeps the last known set and is retried with
//! backoff; a value that is not an endpoint is logged and skipped. Endpoints that stay
//! keep their pools and health.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use pylon_config::model::EtcdDiscovery;

use super::{ClusterRuntime, EndpointSpec};
use crate::fleet::etcd::{Change, Etcd, EtcdError};

const TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Starts the cluster's discovery task; it ends with the cluster.
pub(super) fn spawn(cluster: &Arc<ClusterRuntime>, d: EtcdDiscovery) {
    tokio::spawn(run(Arc::downgrade(cluster), d));
}

/// One key's endpoint, and its readiness when the value says.
struct Discovered {
    spec: EndpointSpec,
    ready: Option<bool>,
}

/// The state of the discovery task across connections: the keys known, and the drain
/// put in force for each address (with the endpoint state it was put on).
#[derive(Default)]
struct Known {
    keys: BTreeMap<String, Discovered>,
    drained: HashMap<SocketAddr, (bool, usize)>,
}

/// An endpoint from a key's value, and its readiness when the value says.
fn parse(value: &[u8]) -> Result<(EndpointSpec, Option<bool>), String> {
    let text = std::str::from_utf8(value)
        .map_err(|_| "not UTF-8".to_owned())?
        .trim();
    let mut ready = None;
    let (address, weight) = if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        ready = match &v["ready"] {
            serde_json::Value::Null => None,
            r => Some(r.as_bool().ok_or("\"ready\" must be true or false")?),
        };
        let address = v["address"].as_str().ok_or("no \"address\"")?.to_owned();
        let weight = match &v["weight"] {
            serde_json::Value::Null => 1,
            w => w
                .as_u64()
                .and_then(|w| u32::try_from(w).ok())
                .filter(|w| (1..=10_000).contains(w))
                .ok_or("\"weight\" must be 1 to 10000")?,
        };
        (address, weight)
    } else {
        (text.to_owned(), 1)
    };
    let address: SocketAddr = address
        .parse()
        .map_err(|_| format!("\"{address}\" is not IP:PORT"))?;
    if address.ip().is_unspecified() || address.port() == 0 {
        // An instance bound to 0.0.0.0 that was not given --advertise.
        return Err(format!("{address} is not an address to connect to"));
    }
    Ok((
        EndpointSpec {
            address,
            weight,
            host: None,
        },
        ready,
    ))
}

async fn run(cluster: Weak<ClusterRuntime>, d: EtcdDiscovery) {
    let mut known = Known::default();
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut watching = false;
        let Some(e) = session(&cluster, &d, &mut known, &mut watching).await else {
            return;
        };
        if watching {
            backoff = Duration::from_secs(1);
        }
        let Some(c) = cluster.upgrade() else { return };
        // The first round is over, answered or not: a reload waiting for it goes on.
        c.dns_ready.send_replace(true);
        tracing::warn!(cluster = %c.name, discovery = %d.url, error = %e, endpoints = known.keys.len(), retry_in = ?backoff, "etcd discovery lost; keeping the last known endpoints");
        drop(c);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Puts the fixed and discovered endpoints in force, and their readiness; `false` when
/// the cluster is gone.
fn apply(cluster: &Weak<ClusterRuntime>, known: &mut Known) -> bool {
    let Some(c) = cluster.upgrade() else {
        return false;
    };
    let mut specs = super::fixed_endpoints(c.config());
    for d in known.keys.values() {
        if !specs.iter().any(|x| x.address == d.spec.address) {
            specs.push(d.spec.clone());
        }
    }
    if c.replace_endpoints(&specs) {
        tracing::info!(cluster = %c.name, endpoints = specs.len(), "endpoints from etcd updated");
    }
    // An address is drained when every key naming it says `"ready": false` (two
    // entries for one address: a process and its successor). Only a change is put in
    // force, so an operator's drain through the admin API stands until the entries
    // say otherwise.
    let mut wanted: HashMap<SocketAddr, bool> = HashMap::new();
    for d in known.keys.values() {
        *wanted.entry(d.spec.address).or_insert(true) &= d.ready == Some(false);
    }
    let set = c.endpoints();
    for (address, drained) in &wanted {
        let Some(state) = set.position(*address).and_then(|i| set.state.state(i)) else {
            continue;
        };
        let id = Arc::as_ptr(state) as usize;
        let changed = known.drained.insert(*address, (*drained, id)) != Some((*drained, id));
        if changed && state.is_drained() != *drained {
            state.set_drained(*drained);
            tracing::info!(cluster = %c.name, endpoint = %address, ready = !*drained, "endpoint readiness from etcd");
        }
    }
    known.drained.retain(|a, _| wanted.contains_key(a));
    c.dns_ready.send_replace(true);
    true
}

fn learn(name: &str, key: String, value: &[u8], known: &mut BTreeMap<String, Discovered>) {
    match parse(value) {
        Ok((spec, ready)) => {
            known.insert(key, Discovered { spec, ready });
        }
        Err(e) => {
            tracing::warn!(cluster = name, key, error = %e, "etcd discovery: not an endpoint; skipped");
            known.remove(&key);
        }
    }
}

/// One connection: read the prefix, then follow it. `None` when the cluster is gone.
async fn session(
    cluster: &Weak<ClusterRuntime>,
    d: &EtcdDiscovery,
    known: &mut Known,
    watching: &mut bool,
) -> Option<EtcdError> {
    let name = cluster.upgrade()?.name.clone();
    let etcd = match Etcd::connect(&d.etcd, TIMEOUT).await {
        Ok(e) => e,
        Err(e) => return Some(e),
    };
    let (listed, revision) = match etcd.get_prefix(&d.prefix).await {
        Ok(l) => l,
        Err(e) => return Some(e),
    };
    known.keys.clear();
    for (key, v) in listed {
        learn(&name, key, &v.value, &mut known.keys);
    }
    if !apply(cluster, known) {
        return None;
    }
    let mut changes = match etcd.watch_prefix(&d.prefix, revision + 1).await {
        Ok(s) => Box::pin(s),
        Err(e) => return Some(e),
    };
    *watching = true;
    while let Some(batch) = changes.next().await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return Some(e),
        };
        for c in batch {
            match c.change {
                Change::Put(v) => learn(&name, c.key, &v.value, &mut known.keys),
                Change::Deleted(_) => {
                    known.keys.remove(&c.key);
                }
            }
        }
        if !apply(cluster, known) {
            return None;
        }
    }
    Some(EtcdError::Unreachable("the watch ended".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_addresses_or_json_with_a_weight() {
        let (s, ready) = parse(b" 10.0.0.1:80\n").unwrap();
        assert_eq!(ready, None);
        assert_eq!(
            (s.address.to_string(), s.weight),
            ("10.0.0.1:80".to_owned(), 1)
        );
        let (s, _) = parse(br#"{"address": "[::1]:8080", "weight": 5}"#).unwrap();
        assert_eq!(
            (s.address.to_string(), s.weight),
            ("[::1]:8080".to_owned(), 5)
        );
        // A fleet member's entry: its readiness comes along.
        let member =
            br#"{"name": "i1", "address": "127.0.0.1:8443", "ready": false, "config_revision": 7}"#;
        let (s, ready) = parse(member).unwrap();
        assert_eq!((s.address.port(), ready), (8443, Some(false)));
        for bad in [
            &br#"{"address": "10.0.0.1:80", "ready": "no"}"#[..],
            &b"api.internal:80"[..],
            b"0.0.0.0:443",
            b"10.0.0.1:0",
            b"{\"weight\": 2}",
            br#"{"address": "10.0.0.1:80", "weight": 0}"#,
            b"\xff",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
