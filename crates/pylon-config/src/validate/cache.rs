//! `[[caches]]` zones: sizes, stale allowances, the fill lock, heuristics, targeted
//! Cache-Control fields, the `Cache-Status` name and the key settings.

use std::collections::HashSet;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::{Problems, check_name, header_name_ok, http_token, size};
use crate::model::*;
use crate::raw::{RawCache, StrList};
use crate::units::parse_duration;

pub(super) fn cache(
    r: RawCache,
    span: Range<usize>,
    ctx: &super::Ctx<'_, '_>,
    names: &mut HashSet<String>,
    p: &mut Problems,
) -> Option<Cache> {
    let Some(name) = &r.name else {
        p.span(span, "a [[caches]] entry needs a `name`");
        return None;
    };
    check_name(name, "cache", names, p);
    let memory = size(&r.memory, DEFAULT_CACHE_MEMORY, p);
    let max_object = size(&r.max_object, DEFAULT_CACHE_MAX_OBJECT, p);
    if max_object > memory
        && let Some(m) = &r.max_object
    {
        p.at(m, "max_object must not be larger than the zone's memory");
    }
    let heuristic_fraction = match &r.heuristic_fraction {
        Some(f) if !(0.0..=1.0).contains(f.get_ref()) => {
            p.at(f, "heuristic_fraction must be between 0 and 1");
            0.1
        }
        Some(f) => *f.get_ref(),
        None => 0.1,
    };
    let mut targeted = vec!["cdn-cache-control".to_owned()];
    if let Some(t) = &r.targeted_cache_control {
        targeted = names_list(t, p);
    }
    let status_name = match &r.status_name {
        Some(s) if !http_token(s.get_ref()) => {
            p.at(
                s,
                "status_name must be a token (letters, digits, '-', '_', '.')",
            );
            "Pylon".to_owned()
        }
        Some(s) => s.get_ref().clone(),
        None => "Pylon".to_owned(),
    };
    let mut key = CacheKey::default();
    if let Some(k) = &r.key {
        let k = k.get_ref();
        if let Some(h) = &k.headers {
            key.headers = names_list(h, p);
        }
        if let Some(c) = &k.cookies {
            key.cookies = c.get_ref().0.clone();
            if key.cookies.iter().any(|c| c.is_empty() || !http_token(c)) {
                p.at(c, "cookie names must be tokens");
            }
        }
        if let Some(q) = &k.ignore_query {
            key.ignore_query = q.get_ref().0.clone();
        }
        key.sort_query = k.sort_query.unwrap_or(false);
    }
    let disk = r.disk.as_ref().map(|d| {
        let d = d.get_ref();
        if d.path.get_ref().is_empty() {
            p.at(&d.path, "the disk tier needs a directory path");
        }
        let size = size(&d.size, DEFAULT_CACHE_DISK, p);
        if max_object > size
            && let Some(s) = &d.size
        {
            p.at(s, "the disk size must be at least max_object");
        }
        CacheDisk {
            path: ctx.file_ref(&d.path),
            size,
        }
    });
    Some(Cache {
        disk,
        name: name.get_ref().clone(),
        memory,
        max_object,
        stale_while_revalidate: allowance(&r.stale_while_revalidate, Duration::ZERO, p),
        stale_if_error: allowance(&r.stale_if_error, Duration::ZERO, p),
        lock_timeout: allowance(&r.lock_timeout, DEFAULT_CACHE_LOCK_TIMEOUT, p),
        heuristic_fraction,
        heuristic_max: allowance(&r.heuristic_max, Duration::from_secs(86_400), p),
        targeted_cache_control: targeted,
        status_name,
        key,
    })
}

/// A duration that may be zero (off).
fn allowance(v: &Option<Spanned<String>>, default: Duration, p: &mut Problems) -> Duration {
    match v {
        None => default,
        Some(s) => parse_duration(s.get_ref()).unwrap_or_else(|e| {
            p.at(s, e);
            default
        }),
    }
}

/// Header names, lower-cased; a bad one is reported.
fn names_list(v: &Spanned<StrList>, p: &mut Problems) -> Vec<String> {
    let mut out = Vec::new();
    for n in &v.get_ref().0 {
        if !header_name_ok(n) {
            p.at(v, format!("invalid header name \"{n}\""));
        }
        out.push(n.to_ascii_lowercase());
    }
    out
}
