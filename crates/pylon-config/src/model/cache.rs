//! Cache zones (`[[caches]]`) in the model.

use std::time::Duration;

use super::FileRef;

/// A cache zone (`[[caches]]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Cache {
    pub name: String,
    /// Bytes the memory tier holds.
    pub memory: u64,
    /// The largest body stored.
    pub max_object: u64,
    /// Staleness served while revalidating in the background, unless a response says.
    pub stale_while_revalidate: Duration,
    /// Staleness served when the upstream fails, unless a response says.
    pub stale_if_error: Duration,
    /// How long a request waits for another's fill of the same key.
    pub lock_timeout: Duration,
    /// The fraction of `Date - Last-Modified` a response without a lifetime stays fresh.
    pub heuristic_fraction: f64,
    pub heuristic_max: Duration,
    /// Targeted Cache-Control fields obeyed, in order (RFC 9213), lower-case.
    pub targeted_cache_control: Vec<String>,
    /// This cache's name in `Cache-Status` (RFC 9211).
    pub status_name: String,
    pub key: CacheKey,
    /// The disk tier, when the zone has one.
    pub disk: Option<CacheDisk>,
}

/// A zone's disk tier: a directory of its own, and the bytes it may hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CacheDisk {
    pub path: FileRef,
    pub size: u64,
}

pub const DEFAULT_CACHE_DISK: u64 = 1024 * 1024 * 1024;

/// What a zone's keys are made of besides scheme, host and target.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheKey {
    /// Lower-case header names.
    pub headers: Vec<String>,
    pub cookies: Vec<String>,
    pub ignore_query: Vec<String>,
    pub sort_query: bool,
}

pub const DEFAULT_CACHE_MEMORY: u64 = 64 * 1024 * 1024;
pub const DEFAULT_CACHE_MAX_OBJECT: u64 = 8 * 1024 * 1024;
pub const DEFAULT_CACHE_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
