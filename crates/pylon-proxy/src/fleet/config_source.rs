//! The configuration from etcd (`pylon run --config-source etcd://HOST:PORT/PREFIX`):
//! one TOML document at `PREFIX/config`, validated exactly as `pylon check` validates a
//! file.
//!
//! - At start it is read from etcd and written to a local cache; while etcd cannot be
//!   reached, the cache is used, so that a restart without etcd still starts.
//! - Then it is watched: each new revision is validated and applied with the same hot
//!   reload as SIGHUP. An invalid revision is refused and logged with its errors and
//!   its revision; the one in force keeps serving.
//! - A lost connection is retried with backoff (1 s, doubling to 30 s); on reconnect,
//!   what changed meanwhile is applied first.
//! - `pylon config push` writes a document, only if the key is still at the revision
//!   it read (compare-and-swap).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use pylon_config::Config;

use super::etcd::{Change, Etcd, EtcdError, Versioned};
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
    /// The key holding the document.
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

    /// Validates a revision as `pylon check` would (its files included).
    pub fn validate(&self, text: &[u8], revision: i64) -> Result<Config, String> {
        let origin = self.origin(revision);
        let text = std::str::from_utf8(text)
            .map_err(|e| format!("{origin}: the configuration is not UTF-8 text ({e})"))?;
        let config =
            pylon_config::parse_in(text, &origin, &self.base).map_err(|e| e.to_string())?;
        let errors = crate::check_files(&config);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(pylon_config::ConfigErrors(errors).to_string())
        }
    }

    pub async fn connect(&self) -> Result<Etcd, EtcdError> {
        Etcd::connect(&self.endpoints, TIMEOUT).await
    }

    /// The configuration to start with and its revision: etcd's, else the cache's.
    pub async fn initial(&self) -> Result<(Config, i64), String> {
        let fetched = match self.connect().await {
            Ok(etcd) => etcd.get(&self.key).await,
            Err(e) => Err(e),
        };
        let why = match fetched {
            Ok(Some(v)) => match self.validate(&v.value, v.mod_revision) {
                Ok(config) => {
                    self.write_cache(&v);
                    tracing::info!(source = %self.url, revision = v.mod_revision, "configuration read from etcd");
                    return Ok((config, v.mod_revision));
                }
                Err(errors) => format!(
                    "the configuration in etcd (revision {}) is invalid:\n{errors}",
                    v.mod_revision
                ),
            },
            Ok(None) => format!(
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
        Ok((config, cached.mod_revision))
    }

    /// Follows the key for as long as the process runs: see the module comment.
    /// `seen` is the last revision looked at (applied or refused); the one in force is
    /// the proxy's `config_origin`.
    pub async fn follow(self, proxy: Arc<Proxy>, mut seen: i64) {
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
    async fn session(&self, proxy: &Proxy, seen: &mut i64, connected: &mut bool) -> EtcdError {
        let etcd = match self.connect().await {
            Ok(e) => e,
            Err(e) => return e,
        };
        let store_revision = match etcd.get_at(&self.key).await {
            Ok((Some(v), rev)) if v.mod_revision > *seen => {
                self.apply(proxy, v, seen).await;
                rev
            }
            Ok((_, rev)) => rev,
            Err(e) => return e,
        };
        let mut changes = match etcd.watch(&self.key, store_revision.max(*seen) + 1).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        *connected = true;
        let applied = seen;
        while let Some(batch) = changes.next().await {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => return e,
            };
            for change in batch {
                match change {
                    Change::Put(v) if v.mod_revision > *applied => {
                        self.apply(proxy, v, applied).await
                    }
                    Change::Put(_) => {}
                    Change::Deleted(revision) => tracing::warn!(
                        key = %self.key,
                        revision,
                        "etcd: the configuration was deleted; the one in force keeps serving"
                    ),
                }
            }
        }
        EtcdError::Unreachable("the watch ended".to_owned())
    }

    /// Validates and applies one revision (an invalid one is not tried again); the
    /// proxy's `config_origin` names it once it is in force.
    async fn apply(&self, proxy: &Proxy, v: Versioned, seen: &mut i64) {
        let revision = v.mod_revision;
        let in_force = proxy.config_origin().map_or(0, |o| o.1);
        *seen = revision;
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

    /// Writes `text` (already validated by the caller) if the key is still at the
    /// revision read first, or at `expected` when given. Returns the new revision.
    pub async fn push(&self, text: &[u8], expected: Option<i64>) -> Result<i64, String> {
        let etcd = self.connect().await.map_err(|e| e.to_string())?;
        let expected = match expected {
            Some(r) => r,
            None => etcd
                .get(&self.key)
                .await
                .map_err(|e| e.to_string())?
                .map_or(0, |v| v.mod_revision),
        };
        match etcd.put_if(&self.key, text, expected, 0).await {
            Ok(Ok(revision)) => Ok(revision),
            Ok(Err(current)) => Err(format!(
                "{} changed meanwhile (now at revision {current}, expected {expected}): nothing written; push again",
                self.key
            )),
            Err(e) => Err(e.to_string()),
        }
    }
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
