//! A JWT policy's keys from a JWKS URL (`jwt = { jwks = { url, cluster } }`): fetched
//! through the cluster (its balancer, pools and TLS) when first needed, kept, fetched
//! again every `refresh` in the background and at once when a token names a `kid` the
//! set lacks (at most once per `min_refresh`, however many such tokens come). A fetch
//! that fails (the endpoint down, an answer that is not a key set) keeps the last good
//! set in use, logged and counted; concurrent fetches are one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use pylon_config::model::Jwks;

use crate::cluster::ClusterRuntime;
use crate::cluster::subrequest::{self, Subrequest};

/// The largest JWKS document read.
const MAX_JWKS: usize = 1 << 20;

/// One fetched key set.
struct KeySet {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    /// Every key, for tokens without a `kid`.
    all: Vec<Arc<DecodingKey>>,
    fetched: Instant,
}

/// A policy's JWKS: the keys in use and how they are kept fresh.
pub(crate) struct JwksKeys {
    settings: Jwks,
    cluster: Option<Arc<ClusterRuntime>>,
    set: ArcSwapOption<KeySet>,
    /// Held while fetching (concurrent needs wait and reuse the result); the time of
    /// the last attempt.
    fetch: tokio::sync::Mutex<Option<Instant>>,
    refreshing: AtomicBool,
    /// Bumped each time a fetched set replaces the one in use.
    generation: AtomicU64,
    pub(crate) fetches: AtomicU64,
    pub(crate) failures: AtomicU64,
}

/// What a token's key lookup came to.
pub(crate) enum KeyLookup {
    Found(Arc<DecodingKey>),
    /// Several candidates (a token without `kid`).
    Candidates(Vec<Arc<DecodingKey>>),
    /// The set has no such key.
    Unknown,
    /// No key set could be fetched yet.
    Unavailable,
}

impl JwksKeys {
    pub(crate) fn new(settings: Jwks, cluster: Option<Arc<ClusterRuntime>>) -> JwksKeys {
        JwksKeys {
            settings,
            cluster,
            set: ArcSwapOption::empty(),
            fetch: tokio::sync::Mutex::new(None),
            refreshing: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Which fetched set is in use (tokens verified with an older one are verified
    /// again).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The key for a token's `kid`, fetching the set when there is none yet or it
    /// lacks that `kid` (rate-limited), and starting a background refresh when the set
    /// is older than `refresh`.
    pub(crate) async fn key(self: &Arc<Self>, kid: Option<&str>) -> KeyLookup {
        let seen = self.set.load_full();
        if let Some(set) = &seen {
            if set.fetched.elapsed() >= self.settings.refresh {
                self.refresh_in_background();
            }
            let found = lookup(set, kid);
            if !matches!(found, KeyLookup::Unknown) {
                return found;
            }
        }
        // None yet, or an unknown kid: fetch now (or take the fetch another request
        // just made).
        self.fetch_now(seen.as_ref()).await;
        match self.set.load_full() {
            Some(set) => lookup(&set, kid),
            None => KeyLookup::Unavailable,
        }
    }

    /// Fetches the set unless another fetch replaced `seen` meanwhile, or the last
    /// attempt was less than `min_refresh` ago.
    async fn fetch_now(&self, seen: Option<&Arc<KeySet>>) {
        let mut last = self.fetch.lock().await;
        let current = self.set.load_full();
        let replaced = match (seen, &current) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (None, Some(_)) => true,
            _ => false,
        };
        if replaced || last.is_some_and(|t| t.elapsed() < self.settings.min_refresh) {
            return;
        }
        *last = Some(Instant::now());
        self.fetch_once().await;
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            {
                let mut last = me.fetch.lock().await;
                if me
                    .set
                    .load()
                    .as_ref()
                    .is_none_or(|s| s.fetched.elapsed() >= me.settings.refresh)
                {
                    *last = Some(Instant::now());
                    me.fetch_once().await;
                }
            }
            me.refreshing.store(false, Ordering::Release);
        });
    }

    /// One fetch; the new set replaces the old only when it parsed and has a key.
    async fn fetch_once(&self) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.download().await {
            Ok(set) => {
                tracing::debug!(url = %self.settings.url, keys = set.all.len(), "JWKS fetched");
                self.set.store(Some(Arc::new(set)));
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let keeping = self.set.load().is_some();
                tracing::warn!(url = %self.settings.url, %error, keeping_last_good = keeping, "JWKS fetch failed");
                if let Some(set) = self.set.load_full() {
                    // The stale set stays in use; its age restarts so the refresh
                    // does not run on every request while the endpoint is down.
                    self.set.store(Some(Arc::new(KeySet {
                        by_kid: set.by_kid.clone(),
                        all: set.all.clone(),
                        fetched: Instant::now(),
                    })));
                }
            }
        }
    }

    async fn download(&self) -> Result<KeySet, String> {
        let cluster = self
            .cluster
            .as_ref()
            .ok_or_else(|| format!("no cluster \"{}\"", self.settings.cluster))?;
        let target = http::uri::PathAndQuery::try_from(self.settings.target.as_str())
            .map_err(|e| e.to_string())?;
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/jwk-set+json, application/json"),
        );
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("pylon-jwks"),
        );
        let answer = subrequest::fetch(
            cluster,
            Subrequest {
                method: http::Method::GET,
                target,
                host: http::HeaderValue::from_str(&self.settings.host).ok(),
                headers,
                body: bytes::Bytes::new(),
            },
            self.settings.timeout,
            MAX_JWKS,
        )
        .await
        .map_err(|e| e.to_string())?;
        if !answer.status.is_success() {
            return Err(format!("status {}", answer.status));
        }
        parse(&answer.body)
    }
}

/// The usable keys of a JWKS document: signing keys (`use` absent or `sig`) that
/// `jsonwebtoken` can read; others are skipped. A document that is not JSON, has no
/// `keys` list or no usable key is an error.
fn parse(body: &[u8]) -> Result<KeySet, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("not a JWK set: no \"keys\" list")?;
    let mut set = KeySet {
        by_kid: HashMap::new(),
        all: Vec::new(),
        fetched: Instant::now(),
    };
    for k in keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
            continue;
        };
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let key = Arc::new(key);
        if let Some(kid) = &jwk.common.key_id {
            set.by_kid.insert(kid.clone(), Arc::clone(&key));
        }
        set.all.push(key);
    }
    if set.all.is_empty() {
        return Err("no usable signing key in the set".into());
    }
    Ok(set)
}

fn lookup(set: &KeySet, kid: Option<&str>) -> KeyLookup {
    match kid {
        Some(kid) => set
            .by_kid
            .get(kid)
            .map_or(KeyLookup::Unknown, |k| KeyLookup::Found(Arc::clone(k))),
        None => KeyLookup::Candidates(set.all.iter().take(8).cloned().collect()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn documents_that_are_not_key_sets_are_errors() {
        for bad in [
            &b"<html>down</html>"[..],
            b"{}",
            b"{\"keys\": 3}",
            b"{\"keys\": [{\"kty\": \"nope\"}]}",
        ] {
            assert!(
                super::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let ok = br#"{"keys": [
            {"kty": "oct", "kid": "x", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"},
            {"kty": "EC", "crv": "P-256", "kid": "a", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "b",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let set = super::parse(ok).unwrap_or_else(|e| panic!("{e}"));
        assert!(set.by_kid.contains_key("b"));
        assert!(
            !set.by_kid.contains_key("a"),
            "an encryption key is skipped"
        );
    }
}
