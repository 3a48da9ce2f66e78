//! A cache zone: stored responses by key in a size-bounded memory tier (moka, LRU
//! eviction, weighed in bytes), the variants of each key (Vary), fills in progress
//! (`fill.rs`), purges by URL, prefix and tag, and the zone's counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderMap;
use moka::notification::RemovalCause;

use crate::disk::DiskStore;
use crate::entry::Entry;
use crate::fill::Fills;
use crate::key::{Key, KeySpec, vary_values};
use crate::policy::Options;

/// The most variants one key keeps; a new one past it replaces the oldest.
pub const MAX_VARIANTS: usize = 32;

/// A zone's settings.
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    pub name: String,
    /// Bytes the memory tier may hold.
    pub memory: u64,
    /// The largest body stored.
    pub max_object: u64,
    pub key: KeySpec,
    pub policy: Options,
    /// How long a request waits for another's fill of the same key before going to the
    /// upstream itself.
    pub lock_timeout: std::time::Duration,
    /// The disk tier's directory and the bytes it may hold.
    pub disk: Option<(std::path::PathBuf, u64)>,
}

/// Counters of a zone, read by the metrics and the admin API.
#[derive(Debug, Default)]
pub struct ZoneStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale: AtomicU64,
    pub revalidated: AtomicU64,
    pub collapsed: AtomicU64,
    pub stored: AtomicU64,
    pub not_stored: AtomicU64,
    pub evictions: AtomicU64,
    pub purged: AtomicU64,
    pub invalidated: AtomicU64,
    pub fills_failed: AtomicU64,
    /// Requests waiting now for another request's fill (a gauge).
    pub waiting: AtomicU64,
}

impl ZoneStats {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The stored variants of one key, newest first.
#[derive(Debug, Default)]
struct Variants(Vec<Arc<Entry>>);

/// One cache zone.
pub struct Zone {
    pub config: ZoneConfig,
    memory: moka::sync::Cache<String, Arc<Variants>>,
    /// The disk tier (blocking calls: the engine runs them on its blocking pool).
    pub disk: Option<Arc<DiskStore>>,
    pub fills: Fills,
    pub stats: Arc<ZoneStats>,
    /// When URLs were last invalidated or purged (and the zone as a whole), so that a
    /// fill that started before is not stored after (it would bring the old answer back).
    removals: std::sync::Mutex<Removals>,
}

#[derive(Default)]
struct Removals {
    urls: std::collections::HashMap<String, Instant>,
    all: Option<Instant>,
}

/// How long invalidations are remembered for fills in progress.
const REMEMBER_REMOVALS: Duration = Duration::from_secs(300);

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zone")
            .field("name", &self.config.name)
            .finish()
    }
}

impl Zone {
    /// The zone, with its disk tier opened (and indexed) when it has one.
    pub fn new(config: ZoneConfig) -> std::io::Result<Zone> {
        let disk = match &config.disk {
            Some((dir, size)) => Some(Arc::new(DiskStore::open(dir, *size)?)),
            None => None,
        };
        let stats = Arc::new(ZoneStats::default());
        let evictions = Arc::clone(&stats);
        let memory = moka::sync::Cache::builder()
            .max_capacity(config.memory)
            .weigher(|_k: &String, v: &Arc<Variants>| {
                let w: u64 = v.0.iter().map(|e| e.weight()).sum();
                u32::try_from(w).unwrap_or(u32::MAX)
            })
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .eviction_listener(move |_k, _v, cause| {
                if cause == RemovalCause::Size {
                    evictions.evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Ok(Zone {
            config,
            memory,
            disk,
            fills: Fills::default(),
            stats,
            removals: std::sync::Mutex::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The key of a request.
    pub fn key(&self, scheme: &str, host: &str, path_and_query: &str, headers: &HeaderMap) -> Key {
        self.config.key.key(scheme, host, path_and_query, headers)
    }

    /// The stored response a request with `headers` selects under `key` (Vary), and
    /// whether the key has any stored response at all (a vary miss, when it has).
    pub fn lookup(&self, key: &Key, headers: &HeaderMap) -> (Option<Arc<Entry>>, bool) {
        let Some(variants) = self.memory.get(&key.text) else {
            return (None, false);
        };
        let found = variants
            .0
            .iter()
            .find(|e| e.head.selected_by(&vary_values(&e.head.vary, headers)))
            .cloned();
        (found, true)
    }

    /// Stores `entry` under `key` in memory, replacing the variant the same request
    /// values select; false when it is too large for the zone. (The engine writes the
    /// disk tier itself, off the request path.)
    pub fn insert(&self, key: &Key, entry: Arc<Entry>) -> bool {
        if entry.len > self.config.max_object || entry.weight() > self.config.memory {
            ZoneStats::add(&self.stats.not_stored);
            return false;
        }
        self.put(key, entry);
        ZoneStats::add(&self.stats.stored);
        true
    }

    /// Brings variants read from the disk tier into memory.
    pub fn promote(&self, key: &Key, entries: Vec<Entry>) {
        for e in entries {
            if e.len <= self.config.max_object && e.weight() <= self.config.memory {
                self.put(key, Arc::new(e));
            }
        }
    }

    fn put(&self, key: &Key, entry: Arc<Entry>) {
        let mut variants: Vec<Arc<Entry>> = vec![Arc::clone(&entry)];
        if let Some(old) = self.memory.get(&key.text) {
            variants.extend(
                old.0
                    .iter()
                    .filter(|e| {
                        e.head.vary != entry.head.vary
                            || e.head.vary_values != entry.head.vary_values
                    })
                    .take(MAX_VARIANTS - 1)
                    .cloned(),
            );
        }
        self.memory
            .insert(key.text.clone(), Arc::new(Variants(variants)));
    }

    /// Removes one stored variant (a 304 that did not validate it, an unusable entry).
    pub fn remove(&self, key: &Key, entry: &Arc<Entry>) {
        if let Some(old) = self.memory.get(&key.text) {
            let left: Vec<Arc<Entry>> = old
                .0
                .iter()
                .filter(|e| !Arc::ptr_eq(e, entry))
                .cloned()
                .collect();
            if left.is_empty() {
                self.memory.invalidate(&key.text);
            } else {
                self.memory
                    .insert(key.text.clone(), Arc::new(Variants(left)));
            }
        }
    }

    /// Invalidates every response stored for the URL `url` (`scheme://host/target`,
    /// as [`crate::key::url_key`] writes it): after an unsafe method (RFC 9111 §4.4).
    pub fn invalidate_url(&self, url: &str) -> usize {
        let n = self.remove_url(url);
        self.stats
            .invalidated
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Purges one URL (admin API).
    pub fn purge_url(&self, url: &str) -> usize {
        let n = self.remove_url(url);
        self.stats.purged.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    fn remove_url(&self, url: &str) -> usize {
        self.removed(Some(url));
        let memory = if self.key_is_url() {
            usize::from(self.memory.remove(url).is_some())
        } else {
            self.purge_where(|k, _| url_of(k) == url)
        };
        let disk = match &self.disk {
            None => 0,
            Some(d) if self.key_is_url() => d.remove_key(url),
            Some(d) => d.remove_where(|k| url_of(k) == url),
        };
        memory.max(disk)
    }

    /// Records a removal of `url` (or of everything, `None`) now.
    fn removed(&self, url: Option<&str>) {
        let now = Instant::now();
        let mut r = self
            .removals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match url {
            Some(u) => {
                if r.urls.len() >= 10_000 {
                    r.urls
                        .retain(|_, at| now.duration_since(*at) < REMEMBER_REMOVALS);
                }
                r.urls.insert(u.to_owned(), now);
            }
            None => r.all = Some(now),
        }
    }

    /// Whether what is stored under `key` was invalidated or purged at or after
    /// `since` (a fill that started then must not be stored).
    pub fn removed_since(&self, key: &Key, since: Instant) -> bool {
        let r = self
            .removals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        r.all.is_some_and(|at| at >= since) || r.urls.get(key.url()).is_some_and(|at| *at >= since)
    }

    /// Purges every URL that starts with `prefix`.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        self.removed(None);
        let memory = self.purge_where(|k, _| url_of(k).starts_with(prefix));
        let disk = self
            .disk
            .as_ref()
            .map_or(0, |d| d.remove_where(|k| url_of(k).starts_with(prefix)));
        let n = memory.max(disk);
        self.stats.purged.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Purges every response tagged `tag` (`Surrogate-Key`, `Cache-Tag`). On the disk
    /// tier, the keys of the tagged responses in memory, and those whose files carry
    /// the tag.
    pub fn purge_tag(&self, tag: &str) -> usize {
        self.removed(None);
        let mut keys: Vec<String> = Vec::new();
        let n = self.purge_where(|k, v| {
            let tagged = v.0.iter().any(|e| e.head.has_tag(tag));
            if tagged {
                keys.push(k.to_owned());
            }
            tagged
        });
        let mut on_disk = 0;
        if let Some(d) = &self.disk {
            on_disk = d.remove_where(|k| keys.iter().any(|t| t == k)) + d.remove_tagged(tag);
        }
        let n = n.max(on_disk);
        self.stats.purged.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Purges everything.
    pub fn purge_all(&self) -> usize {
        self.removed(None);
        let memory = self.purge_where(|_, _| true);
        let disk = self.disk.as_ref().map_or(0, |d| d.remove_where(|_| true));
        memory.max(disk)
    }

    fn purge_where(&self, mut pred: impl FnMut(&str, &Variants) -> bool) -> usize {
        let doomed: Vec<Arc<String>> = self
            .memory
            .iter()
            .filter(|(k, v)| pred(k, v))
            .map(|(k, _)| k)
            .collect();
        for k in &doomed {
            self.memory.invalidate(k.as_str());
        }
        doomed.len()
    }

    fn key_is_url(&self) -> bool {
        self.config.key.headers.is_empty() && self.config.key.cookies.is_empty()
    }

    /// Stored keys and the bytes they weigh (after pending evictions are applied).
    pub fn size(&self) -> (u64, u64) {
        self.memory.run_pending_tasks();
        (self.memory.entry_count(), self.memory.weighted_size())
    }
}

/// The URL part of a stored key's text.
fn url_of(key: &str) -> &str {
    key.split_once('\n').map_or(key, |(u, _)| u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Head;
    use crate::policy::Freshness;
    use bytes::Bytes;
    use http::StatusCode;
    use http::header::{HeaderName, HeaderValue};
    use std::time::{Duration, SystemTime};

    fn zone(memory: u64) -> Zone {
        Zone::new(ZoneConfig {
            name: "z".into(),
            memory,
            max_object: 1 << 20,
            key: KeySpec::default(),
            policy: Options::default(),
            lock_timeout: Duration::from_secs(1),
            disk: None,
        })
        .expect("zone")
    }

    fn entry(body: &'static [u8], vary: &[(&'static str, Option<&str>)], tags: &str) -> Arc<Entry> {
        let mut headers = HeaderMap::new();
        if !tags.is_empty() {
            headers.insert("surrogate-key", HeaderValue::from_static("t1 t2"));
        }
        let f = Freshness {
            request_time: SystemTime::UNIX_EPOCH,
            response_time: SystemTime::UNIX_EPOCH,
            date: SystemTime::UNIX_EPOCH,
            age_value: 0,
            lifetime: Duration::from_secs(60),
            heuristic: false,
            must_revalidate: false,
            no_cache: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        };
        let head = Head::new(
            StatusCode::OK,
            headers,
            &Default::default(),
            f,
            vary.iter()
                .map(|(n, _)| HeaderName::from_static(n))
                .collect(),
            vary.iter().map(|(_, v)| v.map(str::to_owned)).collect(),
        );
        Arc::new(Entry::new(head, vec![Bytes::from_static(body)], None))
    }

    fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn variants_are_selected_by_the_request_values_of_their_vary_fields() {
        let z = zone(1 << 20);
        let k = z.key("http", "h", "/a", &HeaderMap::new());
        assert!(z.insert(&k, entry(b"fr", &[("accept-language", Some("fr"))], "")));
        assert!(z.insert(&k, entry(b"en", &[("accept-language", Some("en"))], "")));
        let (fr, _) = z.lookup(&k, &req(&[("accept-language", "fr")]));
        assert_eq!(fr.map(|e| e.contiguous()), Some(Bytes::from_static(b"fr")));
        let (none, known) = z.lookup(&k, &req(&[("accept-language", "de")]));
        assert!(none.is_none() && known);
        // Replacing a variant keeps the other.
        assert!(z.insert(&k, entry(b"fr2", &[("accept-language", Some("fr"))], "")));
        let (en, _) = z.lookup(&k, &req(&[("accept-language", "en")]));
        assert!(en.is_some());
    }

    #[test]
    fn purges_by_url_prefix_and_tag_and_invalidation() {
        let z = zone(1 << 20);
        let h = HeaderMap::new();
        let a = z.key("http", "h", "/img/a", &h);
        let b = z.key("http", "h", "/img/b", &h);
        let c = z.key("http", "h", "/doc/c", &h);
        z.insert(&a, entry(b"a", &[], ""));
        z.insert(&b, entry(b"b", &[], "tagged"));
        z.insert(&c, entry(b"c", &[], ""));
        assert_eq!(z.purge_tag("t2"), 1);
        assert!(z.lookup(&b, &h).0.is_none());
        assert_eq!(z.purge_prefix("http://h/img/"), 1);
        assert!(z.lookup(&a, &h).0.is_none());
        let before = Instant::now();
        assert_eq!(z.invalidate_url("http://h/doc/c"), 1);
        assert!(z.lookup(&c, &h).0.is_none());
        // A fill that started before the invalidation must not store its answer.
        assert!(z.removed_since(&c, before));
        assert!(!z.removed_since(&c, Instant::now() + Duration::from_millis(1)));
    }

    #[test]
    fn the_memory_bound_evicts_the_least_recently_used_and_refuses_the_oversized() {
        let z = zone(8 * 1024);
        let h = HeaderMap::new();
        static BIG: [u8; 3000] = [b'x'; 3000];
        for i in 0..10 {
            let k = z.key("http", "h", &format!("/{i}"), &h);
            z.insert(&k, entry(&BIG, &[], ""));
        }
        let (count, bytes) = z.size();
        assert!(bytes <= 8 * 1024, "{bytes}");
        assert!(count < 10);
        static HUGE: [u8; 9000] = [b'x'; 9000];
        let k = z.key("http", "h", "/huge", &h);
        assert!(!z.insert(&k, entry(&HUGE, &[], "")));
    }
}
