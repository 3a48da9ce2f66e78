//! The configuration from etcd (`pylon run --config-source etcd://HOST:PORT/PREFIX`):
//! one TOML document at `PREFIX/config`, or sections at `PREFIX/config/NAME` joined in
//! name order (`sections.rs`), validated exactly as `pylon check` validates a file.
//!
//! - At start it is read from etcd and written to a local cache; while etcd cannot be
//!   reached, the cache is used, so that a restart without etcd still starts.
//! - Then it is watched: each new revision is validated and applied with the same hot
//!   reload as SIGHUP. An invalid revision is refused and logged with its errors and
//!   its revision; the one in force keeps serving.
//! - A lost connection is retried with backoff (1 s, doubling to 30 s); on reconnect,
//!   what changed meanwhile is applied first.
//! - `pylon config push` writes a document or a directory of sections in one
//!   transaction that replaces what the prefix held, only if none of its keys changed
//!   since they were read (compare-and-swap).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use pylon_config::Config;

use super::etcd::{Change, Etcd, EtcdError, Versioned};
use super::sections::{self, Section};
use crate::Proxy;

/// How long one etcd request may take.
const TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where the configuration lives in etcd, and its local cache.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// As given on the command line.
    pub url: String,
    endpoints: Vec<String>,
    /// `/PREFIX`: the fleet's keys are under it.
    pub prefix: String,
    /// The key holding the document (sections are under `key/`).
    pub key: String,
    cache: PathBuf,
    /// Relative paths in the document are resolved against this (the working directory).
    base: PathBuf,
}

impl ConfigSource {
    /// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX` (the document at `PREFIX/config`; the
    /// prefix defaults to `/pylon`), with its cache file.
    pub fn parse(url: &str, cache: PathBuf) -> Result<ConfigSource, String> {
        let bad = || {
            format!(
                "config source \"{url}\": expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX, e.g. etcd://127.0.0.1:2379/pylon"
            )
        };
        let rest = url.strip_prefix("etcd://").ok_or_else(bad)?;
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() || endpoints.iter().any(|h| !h.contains(':')) {
            return Err(bad());
        }
        let prefix = match prefix.trim_matches('/') {
            "" => "pylon",
            p => p,
        };
        Ok(ConfigSource {
            url: url.to_owned(),
            endpoints,
            prefix: format!("/{prefix}"),
            key: format!("/{prefix}/config"),
            cache,
            base: std::env::current_dir().unwrap_or_default(),
        })
    }

    /// What errors in revision `revision` are reported against.
    fn origin(&self, revision: i64) -> String {
        format!(
            "etcd://{}{}@{revision}",
            self.endpoints.first().map_or("", String::as_str),
            self.key
        )
    }

    /// Validates a revision as `pylon check` would (its files included); errors in a
    /// document made of sections name their section.
    pub fn validate(&self, text: &[u8], revision: i64) -> Result<Config, String> {
        let origin = self.origin(revision);
        let text = std::str::from_utf8(text)
            .map_err(|e| format!("{origin}: the configuration is not UTF-8 text ({e})"))?;
        validate_text(text, &origin, &self.base).map_err(|e| e.to_string())
    }

    /// Whether `key` is one of the configuration's: the document's or a section's.
    fn is_config_key(&self, key: &str) -> bool {
        key == self.key
            || key
                .strip_prefix(self.key.as_str())
                .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
    }

    /// The configuration's keys as etcd lists them under the prefix.
    fn config_keys(&self, listed: Vec<(String, Versioned)>) -> BTreeMap<String, Versioned> {
        listed
            .into_iter()
            .filter(|(k, _)| self.is_config_key(k))
            .collect()
    }

    /// The document the keys make: the one at `key`, or its sections joined (its
    /// revision the latest of theirs); `None` when there is neither.
    fn assemble(&self, keys: &BTreeMap<String, Versioned>) -> Result<Option<Versioned>, String> {
        let host = self.endpoints.first().map_or("", String::as_str);
        let parts: Vec<(&String, &Versioned)> =
            keys.iter().filter(|(k, _)| **k != self.key).collect();
        match (keys.get(&self.key), parts.is_empty()) {
            (None, true) => Ok(None),
            (Some(doc), true) => Ok(Some(doc.clone())),
            (Some(_), false) => Err(format!(
                "etcd holds both a document at {key} and sections under {key}/: keep one (pylon config push replaces both)",
                key = self.key
            )),
            (None, false) => {
                let sections: Vec<Section> = parts
                    .iter()
                    .map(|(k, v)| Section {
                        name: format!("etcd://{host}{k}@{}", v.mod_revision),
                        text: v.value.clone(),
                    })
                    .collect();
                Ok(Some(Versioned {
                    value: sections::join(&sections),
                    mod_revision: parts.iter().map(|(_, v)| v.mod_revision).max().unwrap_or(0),
                }))
            }
        }
    }

    pub async fn connect(&self) -> Result<Etcd, EtcdError> {
        Etcd::connect(&self.endpoints, TIMEOUT).await
    }

    /// The configuration to start with and its revision: etcd's, else the cache's.
    pub async fn initial(&self) -> Result<(Config, Started), String> {
        let fetched = match self.connect().await {
            Ok(etcd) => etcd
                .get_prefix(&self.key)
                .await
                .map(|(listed, _)| self.assemble(&self.config_keys(listed))),
            Err(e) => Err(e),
        };
        let why = match fetched {
            Ok(Err(e)) => e,
            Ok(Ok(Some(v))) => match self.validate(&v.value, v.mod_revision) {
                Ok(config) => {
                    self.write_cache(&v);
                    tracing::info!(source = %self.url, revision = v.mod_revision, "configuration read from etcd");
                    return Ok((config, Started::of(&v)));
                }
                Err(errors) => format!(
                    "the configuration in etcd (revision {}) is invalid:\n{errors}",
                    v.mod_revision
                ),
            },
            Ok(Ok(None)) => format!(
                "etcd has no configuration at {} (write one with `pylon config push FILE {}`)",
                self.key, self.url
            ),
            Err(e) => e.to_string(),
        };
        let Some(cached) = self.read_cache() else {
            return Err(format!(
                "{why}; and there is no cached configuration at {}",
                self.cache.display()
            ));
        };
        let config = self
            .validate(&cached.value, cached.mod_revision)
            .map_err(|e| {
                format!(
                    "{why}; and the cached configuration at {} is invalid:\n{e}",
                    self.cache.display()
                )
            })?;
        tracing::warn!(
            source = %self.url,
            cache = %self.cache.display(),
            revision = cached.mod_revision,
            "{why}; starting on the cached configuration"
        );
        Ok((config, Started::of(&cached)))
    }

    /// Follows the configuration's keys for as long as the process runs: see the
    /// module comment.
    pub async fn follow(self, proxy: Arc<Proxy>, started: Started) {
        let mut seen = Seen {
            revision: started.revision,
            digest: started.digest,
            missing: false,
        };
        let mut backoff = Duration::from_secs(1);
        loop {
            let mut connected = false;
            let e = self.session(&proxy, &mut seen, &mut connected).await;
            if connected {
                backoff = Duration::from_secs(1);
            }
            let in_force = proxy.config_origin().map_or(0, |o| o.1);
            tracing::warn!(source = %self.url, error = %e, retry_in = ?backoff, "etcd: watch lost; serving the configuration in force (revision {in_force}) meanwhile");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: catch up, then watch until the stream breaks.
    async fn session(&self, proxy: &Proxy, seen: &mut Seen, connected: &mut bool) -> EtcdError {
        let etcd = match self.connect().await {
            Ok(e) => e,
            Err(e) => return e,
        };
        let (listed, store_revision) = match etcd.get_prefix(&self.key).await {
            Ok(l) => l,
            Err(e) => return e,
        };
        let mut keys = self.config_keys(listed);
        self.consider(proxy, &keys, seen).await;
        let mut changes = match etcd.watch_prefix(&self.key, store_revision + 1).await {
            Ok(s) => Box::pin(s),
            Err(e) => return e,
        };
        *connected = true;
        while let Some(batch) = changes.next().await {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => return e,
            };
            let mut touched = false;
            for c in batch {
                if !self.is_config_key(&c.key) {
                    continue;
                }
                touched = true;
                match c.change {
                    Change::Put(v) => {
                        keys.insert(c.key, v);
                    }
                    Change::Deleted(_) => {
                        keys.remove(&c.key);
                    }
                }
            }
            if touched {
                self.consider(proxy, &keys, seen).await;
            }
        }
        EtcdError::Unreachable("the watch ended".to_owned())
    }

    /// Applies the document the keys make now, unless it is the one last looked at.
    async fn consider(&self, proxy: &Proxy, keys: &BTreeMap<String, Versioned>, seen: &mut Seen) {
        match self.assemble(keys) {
            Ok(Some(doc)) => {
                seen.missing = false;
                let digest = digest(&doc.value);
                // A section deleted by hand leaves the revision (its latest section's)
                // as it was: the text tells.
                if doc.mod_revision != seen.revision || digest != seen.digest {
                    seen.digest = digest;
                    self.apply(proxy, doc, seen).await;
                }
            }
            Ok(None) if !seen.missing => {
                seen.missing = true;
                tracing::warn!(key = %self.key, "etcd: the configuration was deleted; the one in force keeps serving");
            }
            Ok(None) => {}
            Err(e) => {
                let in_force = proxy.config_origin().map_or(0, |o| o.1);
                proxy.reload_refused(&format!(
                    "the configuration in etcd is invalid; revision {in_force} keeps serving:\n{e}"
                ));
            }
        }
    }

    /// Validates and applies one revision (an invalid one is not tried again); the
    /// proxy's `config_origin` names it once it is in force.
    async fn apply(&self, proxy: &Proxy, v: Versioned, seen: &mut Seen) {
        let revision = v.mod_revision;
        let in_force = proxy.config_origin().map_or(0, |o| o.1);
        seen.revision = revision;
        let config = match self.validate(&v.value, revision) {
            Ok(c) => c,
            Err(errors) => {
                proxy.reload_refused(&format!(
                    "configuration revision {revision} from etcd is invalid; revision {in_force} keeps serving:\n{errors}"
                ));
                return;
            }
        };
        // A reload that fails is logged and counted by the reload itself.
        if let Ok(report) = proxy.reload(&config).await {
            self.write_cache(&v);
            proxy.set_config_origin(&self.url, revision);
            tracing::info!(
                source = %self.url,
                revision,
                changes = report.changes.len(),
                "configuration revision from etcd applied"
            );
        }
    }

    /// The cached document: a first line `# pylon config cache: revision N`, then the
    /// document as etcd held it.
    fn read_cache(&self) -> Option<Versioned> {
        let text = std::fs::read(&self.cache).ok()?;
        let newline = text.iter().position(|b| *b == b'\n')?;
        let first = std::str::from_utf8(text.get(..newline)?).ok()?;
        let mod_revision = first
            .strip_prefix("# pylon config cache: revision ")?
            .trim()
            .parse()
            .ok()?;
        Some(Versioned {
            value: text.get(newline + 1..)?.to_vec(),
            mod_revision,
        })
    }

    fn write_cache(&self, v: &Versioned) {
        let mut text = format!("# pylon config cache: revision {}\n", v.mod_revision).into_bytes();
        text.extend_from_slice(&v.value);
        if let Err(e) = crate::disk::replace_file(&self.cache, &text, false) {
            tracing::warn!(cache = %self.cache.display(), error = %e, "cannot write the configuration cache; a restart without etcd will not start");
        }
    }

    /// Replaces what etcd holds (a document, or sections) with `sections`, each
    /// `(name, text)`: one section named `""` is the document at `key`, others go to
    /// `key/NAME`. Already validated by the caller. Written in one transaction, only if
    /// none of the keys read changed meanwhile, and only if the configuration's revision
    /// is `expected` when given (0: none yet). Returns the new revision.
    pub async fn push(
        &self,
        sections: &[(String, Vec<u8>)],
        expected: Option<i64>,
    ) -> Result<i64, String> {
        let etcd = self.connect().await.map_err(|e| e.to_string())?;
        let (listed, _) = etcd
            .get_prefix(&self.key)
            .await
            .map_err(|e| e.to_string())?;
        let now = self.config_keys(listed);
        let current = now.values().map(|v| v.mod_revision).max().unwrap_or(0);
        if let Some(expected) = expected
            && expected != current
        {
            return Err(format!(
                "{} changed meanwhile (now at revision {current}, expected {expected}): nothing written; push again",
                self.key
            ));
        }
        let puts: Vec<(String, Vec<u8>)> = sections
            .iter()
            .map(|(name, text)| {
                let key = if name.is_empty() {
                    self.key.clone()
                } else {
                    format!("{}/{name}", self.key)
                };
                (key, text.clone())
            })
            .collect();
        let mut unchanged: Vec<(String, i64)> = now
            .iter()
            .map(|(k, v)| (k.clone(), v.mod_revision))
            .collect();
        for (key, _) in &puts {
            if !now.contains_key(key) {
                unchanged.push((key.clone(), 0));
            }
        }
        let deletes: Vec<String> = now
            .keys()
            .filter(|k| !puts.iter().any(|(p, _)| p == *k))
            .cloned()
            .collect();
        match etcd.replace(&unchanged, &puts, &deletes).await {
            Ok(true) => {
                let (listed, _) = etcd
                    .get_prefix(&self.key)
                    .await
                    .map_err(|e| e.to_string())?;
                let keys = self.config_keys(listed);
                Ok(keys.values().map(|v| v.mod_revision).max().unwrap_or(0))
            }
            Ok(false) => Err(format!(
                "{} changed meanwhile (expected revision {current}): nothing written; push again",
                self.key
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A document (perhaps joined from sections) validated as `pylon check` validates a
/// file, its files included, relative paths resolved against `base`; errors name their
/// section.
pub fn validate_text(
    text: &str,
    origin: &str,
    base: &std::path::Path,
) -> Result<Config, pylon_config::ConfigErrors> {
    let starts = sections::check_starts(text, origin);
    let errors = match pylon_config::parse_in(text, origin, base) {
        Ok(config) if starts.is_empty() => {
            let errors = crate::check_files(&config);
            if errors.is_empty() {
                return Ok(config);
            }
            errors
        }
        Ok(_) => starts,
        Err(e) => starts.into_iter().chain(e.0).collect(),
    };
    Err(pylon_config::ConfigErrors(sections::place(
        text, origin, errors,
    )))
}

/// The document a process started with (from etcd or its cache).
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub revision: i64,
    digest: u64,
}

impl Started {
    fn of(v: &Versioned) -> Started {
        Started {
            revision: v.mod_revision,
            digest: digest(&v.value),
        }
    }
}

/// The document last looked at (applied or refused).
struct Seen {
    revision: i64,
    digest: u64,
    /// The configuration's keys are gone (logged once).
    missing: bool,
}

fn digest(text: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_urls_name_endpoints_and_a_key() {
        let s =
            ConfigSource::parse("etcd://10.0.0.1:2379,10.0.0.2:2379/edge/", "c".into()).unwrap();
        assert_eq!(s.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(s.key, "/edge/config");
        assert_eq!(
            ConfigSource::parse("etcd://h:1", "c".into()).unwrap().key,
            "/pylon/config"
        );
        for bad in ["http://h:1/p", "etcd:///p", "etcd://host/p"] {
            assert!(ConfigSource::parse(bad, "c".into()).is_err(), "{bad}");
        }
    }
}
