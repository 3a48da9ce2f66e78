//! The cache filter: routes with `cache = "zone"` store their answers in a zone
//! (`[[caches]]`, `pylon-cache`) and answer from it.
//!
//! - Phase 3 (`lookup`, which may wait): a `GET` or `HEAD` finds its key's stored
//!   variant (Vary) and answers it when RFC 9111 allows reuse (with the client's
//!   conditionals, `HEAD` and ranges answered from it); a stale one within
//!   `stale-while-revalidate` answers and is revalidated in the background; otherwise the
//!   request joins the key's fill in progress (request collapsing: it waits for that
//!   fill's head, then streams its body) or leads a new one and goes upstream.
//! - Phase 4 (`upstream_head`): a leader asks for the whole representation (the client's
//!   conditionals and range are the cache's to answer, `HEAD` goes as `GET`), a
//!   revalidation sends the stored validators.
//! - Phase 5 (`response`): a 304 updates the stored response and answers from it; a 5xx
//!   may be replaced by a stale answer (`stale-if-error`); a storable answer starts the
//!   fill, whose own task streams the upstream body to every reader and stores it whole;
//!   an unsafe method's success invalidates its URL and `Location`/`Content-Location`.
//! - Every answer of the route carries `Cache-Status` (RFC 9211).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use pylon_cache::{
    Directives, Entry, FillSlot, Freshness, Head, HeadOutcome, Joined, Key, Reuse, Zone, ZoneStats,
    policy, serve,
};
use pylon_config::model::{self, Action};
use pylon_config::{Config, ConfigError};

use super::cache_body::{FillBody, StoredBody, drive_fill};
use super::{Filter, FilterCtx, FilterSite, Lookup};
use crate::conn::ClientBody;
use crate::http::body::ResponseBody;
use crate::http::error::ErrorKind;

/// The runtime's cache zones, by name.
pub type Zones = HashMap<String, Arc<CacheZone>>;

/// One zone and the settings it was built from (a reload that leaves them alone keeps
/// the zone and what it stores).
pub struct CacheZone {
    pub zone: Arc<Zone>,
    pub config: model::Cache,
}

/// The zones of `config`, keeping those of `previous` whose settings did not change (a
/// changed zone with a disk tier finds what its directory holds); a disk tier that
/// cannot be opened is an error naming where the file sets it.
pub fn zones(config: &Config, previous: Option<&Zones>) -> Result<Zones, Vec<ConfigError>> {
    let mut zones = Zones::new();
    let mut errors = Vec::new();
    for c in &config.caches {
        let kept = previous
            .and_then(|p| p.get(&c.name))
            .filter(|z| z.config == *c)
            .cloned();
        let zone = match kept {
            Some(z) => z,
            None => match Zone::new(zone_config(c)) {
                Ok(z) => Arc::new(CacheZone {
                    zone: Arc::new(z),
                    config: c.clone(),
                }),
                Err(e) => {
                    if let Some(d) = &c.disk {
                        errors.push(d.path.at.error(format!(
                            "cannot open the disk tier {}: {e}",
                            d.path.path.display()
                        )));
                    }
                    continue;
                }
            },
        };
        zones.insert(c.name.clone(), zone);
    }
    if errors.is_empty() {
        Ok(zones)
    } else {
        Err(errors)
    }
}

fn zone_config(c: &model::Cache) -> pylon_cache::ZoneConfig {
    let names = |v: &[String]| -> Vec<HeaderName> {
        v.iter()
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect()
    };
    pylon_cache::ZoneConfig {
        name: c.name.clone(),
        memory: c.memory,
        max_object: c.max_object,
        key: pylon_cache::KeySpec {
            headers: names(&c.key.headers),
            cookies: c.key.cookies.clone(),
            ignore_query: c.key.ignore_query.clone(),
            sort_query: c.key.sort_query,
        },
        policy: pylon_cache::Options {
            heuristic_fraction: c.heuristic_fraction,
            heuristic_max: c.heuristic_max,
            stale_while_revalidate: c.stale_while_revalidate,
            stale_if_error: c.stale_if_error,
            targeted: names(&c.targeted_cache_control),
        },
        lock_timeout: c.lock_timeout,
        disk: c.disk.as_ref().map(|d| (d.path.path.clone(), d.size)),
    }
}

pub(super) fn build(site: &FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    let Action::Proxy(p) = &site.route.action else {
        return None;
    };
    Some(for_zone(site.caches.get(p.cache.as_deref()?)?))
}

/// The cache filter over `zone` (a route's, or a forward proxy's).
pub(super) fn for_zone(zone: &CacheZone) -> Arc<dyn Filter> {
    Arc::new(CacheFilter {
        zone: Arc::clone(&zone.zone),
        status_name: zone.config.status_name.clone(),
    })
}

struct CacheFilter {
    zone: Arc<Zone>,
    /// This cache's name in `Cache-Status`.
    status_name: String,
}

/// Marks a request the cache made itself to revalidate a stale response in the
/// background (`stale-while-revalidate`): it never answers from the store.
#[derive(Debug, Clone, Copy)]
pub struct BackgroundRevalidation;

/// What phase 3 left for the later phases (shared: filter state must be `Clone`).
#[derive(Clone)]
struct CacheState(Arc<Mutex<Pending>>);

struct Pending {
    /// Why the response is not this cache's business, for `Cache-Status`.
    bypass: Option<&'static str>,
    /// An unsafe method: a success invalidates its URL.
    invalidates: bool,
    key: Option<Key>,
    method: Method,
    req_headers: HeaderMap,
    req_cc: Directives,
    request_time: SystemTime,
    /// When the lookup ran: a fill that started before an invalidation of its URL is
    /// not stored.
    started: std::time::Instant,
    /// This request leads its key's fill.
    slot: Option<FillSlot>,
    /// The stored response being revalidated.
    stale: Option<Arc<Entry>>,
    /// The key had stored responses, none for this request's Vary values.
    vary_miss: bool,
    /// Why a follower went upstream alone (its answer is not stored).
    alone: Option<&'static str>,
}

impl CacheFilter {
    fn status(&self, member: &str) -> String {
        format!("{}; {member}", self.status_name)
    }

    /// Adds this cache's member to the answer's `Cache-Status` list.
    fn mark(&self, headers: &mut HeaderMap, member: &str) {
        let ours = self.status(member);
        let value = match headers.get(CACHE_STATUS).and_then(|v| v.to_str().ok()) {
            Some(prior) if !prior.is_empty() => format!("{prior}, {ours}"),
            _ => ours,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(CACHE_STATUS, v);
        }
    }

    /// The answer to a request from a stored response.
    fn answer_stored(
        &self,
        entry: &Arc<Entry>,
        method: &Method,
        req: &HeaderMap,
        now: SystemTime,
        member: &str,
    ) -> Response<ResponseBody> {
        let head = &entry.head;
        let mut resp = match serve::choose(method, req, head, Some(entry.len)) {
            serve::Answer::NotModified => {
                let mut r = Response::new(ResponseBody::empty());
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                *r.headers_mut() = serve::not_modified_headers(head, now);
                r
            }
            serve::Answer::Partial(ranges) => {
                let boundary = format!("{:016x}", pylon_lb::random_u64());
                let (headers, body) = serve::partial(entry, &ranges, now, &boundary);
                let mut r = Response::new(ResponseBody::full(body));
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                *r.headers_mut() = headers;
                r
            }
            serve::Answer::Unsatisfiable => {
                let mut r = Response::new(ResponseBody::empty());
                *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                *r.headers_mut() = serve::headers_at(head, now);
                r.headers_mut()
                    .insert(header::CONTENT_RANGE, serve::unsatisfiable_range(entry.len));
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                r
            }
            serve::Answer::Full => {
                let body = if *method == Method::HEAD {
                    ResponseBody::empty()
                } else {
                    StoredBody::body(Arc::clone(entry))
                };
                let mut r = Response::new(body);
                *r.status_mut() = head.status;
                *r.headers_mut() = serve::headers_at(head, now);
                if entry.trailers.is_none() && head.status != StatusCode::NO_CONTENT {
                    r.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(entry.len));
                }
                r
            }
        };
        self.mark(resp.headers_mut(), member);
        resp.extensions_mut().insert(super::StoredAnswer);
        resp
    }

    /// The answer to a request from a fill in progress (its body streams).
    fn answer_filling(
        &self,
        head: &Head,
        reader: pylon_cache::FillReader,
        method: &Method,
        req: &HeaderMap,
        now: SystemTime,
        member: &str,
    ) -> Response<ResponseBody> {
        let mut resp = match serve::choose(method, req, head, None) {
            serve::Answer::NotModified => {
                let mut r = Response::new(ResponseBody::empty());
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                *r.headers_mut() = serve::not_modified_headers(head, now);
                r
            }
            _ => {
                let body = if *method == Method::HEAD {
                    ResponseBody::empty()
                } else {
                    FillBody::body(reader, head.content_length())
                };
                let mut r = Response::new(body);
                *r.status_mut() = head.status;
                *r.headers_mut() = serve::headers_at(head, now);
                r
            }
        };
        self.mark(resp.headers_mut(), member);
        resp.extensions_mut().insert(super::StoredAnswer);
        resp
    }

    async fn lookup_inner(
        &self,
        req: &mut Request<ClientBody>,
        cx: &mut FilterCtx<'_>,
    ) -> Result<Option<Response<ResponseBody>>, ErrorKind> {
        let method = req.method().clone();
        let mut pending = Pending {
            bypass: None,
            invalidates: false,
            key: None,
            method: method.clone(),
            req_headers: HeaderMap::new(),
            req_cc: Directives::default(),
            request_time: SystemTime::now(),
            started: std::time::Instant::now(),
            slot: None,
            stale: None,
            vary_miss: false,
            alone: None,
        };
        let zone = &self.zone;
        let authority = cx
            .client_authority
            .as_ref()
            .and_then(|a| a.to_str().ok())
            .unwrap_or("");
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        // A forward proxy's absolute-form target names its own scheme.
        let scheme = req.uri().scheme_str().unwrap_or(cx.conn.scheme);
        if method != Method::GET && method != Method::HEAD {
            if !method.is_safe() {
                pending.invalidates = true;
                pending.key = Some(zone.key(scheme, authority, target, req.headers()));
            }
            pending.bypass = Some("method");
            cx.state.insert(CacheState(Arc::new(Mutex::new(pending))));
            return Ok(None);
        }
        if serve::has_preconditions(req.headers()) {
            pending.bypass = Some("bypass");
            cx.state.insert(CacheState(Arc::new(Mutex::new(pending))));
            return Ok(None);
        }
        let key = zone.key(scheme, authority, target, req.headers());
        pending.req_cc = policy::request_directives(req.headers());
        let background = req.extensions().get::<BackgroundRevalidation>().is_some();
        let (mut found, mut known) = zone.lookup(&key, req.headers());
        if !known && let Some(disk) = zone.disk.clone().filter(|d| d.contains(&key.text)) {
            // Not in memory, on disk: read on the blocking pool, then from memory.
            let text = key.text.clone();
            if let Ok(entries) = tokio::task::spawn_blocking(move || disk.read(&text)).await {
                zone.promote(&key, entries);
                (found, known) = zone.lookup(&key, req.headers());
            }
        }
        let now = SystemTime::now();
        pending.vary_miss = known && found.is_none();
        if let Some(entry) = found {
            let f = &entry.head.freshness;
            let reuse = if background {
                Reuse::Revalidate
            } else {
                f.reuse(&pending.req_cc, now)
            };
            match reuse {
                Reuse::Fresh | Reuse::StaleAllowed => {
                    ZoneStats::add(&zone.stats.hits);
                    let member = format!("hit; ttl={}", f.ttl(now));
                    return Ok(Some(self.answer_stored(
                        &entry,
                        &method,
                        req.headers(),
                        now,
                        &member,
                    )));
                }
                Reuse::StaleWhileRevalidate => {
                    ZoneStats::add(&zone.stats.stale);
                    revalidate_in_background(req, cx, &key, zone);
                    let member = format!("hit; ttl={}; detail=stale-while-revalidate", f.ttl(now));
                    return Ok(Some(self.answer_stored(
                        &entry,
                        &method,
                        req.headers(),
                        now,
                        &member,
                    )));
                }
                Reuse::Revalidate => pending.stale = Some(entry),
            }
        } else if pending.req_cc.only_if_cached {
            ZoneStats::add(&zone.stats.misses);
            cx.state.insert(CacheState(Arc::new(Mutex::new(pending))));
            return Err(ErrorKind::NotCached);
        }
        // Past the hits: what the response phase needs of the request.
        pending.req_headers = req.headers().clone();
        if pending.stale.is_none() {
            ZoneStats::add(&zone.stats.misses);
        } else if pending.req_cc.only_if_cached {
            // Stored, but not usable without the upstream, which the client refuses.
            cx.state.insert(CacheState(Arc::new(Mutex::new(pending))));
            return Err(ErrorKind::NotCached);
        }
        match zone.fills.join(&key.text) {
            Joined::Leader(slot) => pending.slot = Some(slot),
            Joined::Follower(fill) => {
                let waited = {
                    let _waiting = Waiting::new(&zone.stats);
                    tokio::time::timeout(zone.config.lock_timeout, fill.head()).await
                };
                match waited {
                    Ok(HeadOutcome::Ready(head)) => {
                        let values = pylon_cache::key::vary_values(&head.vary, req.headers());
                        // Only what this request may reuse as it is: its Vary values,
                        // and fresh for its own directives.
                        let reusable = head.selected_by(&values)
                            && matches!(
                                head.freshness.reuse(&pending.req_cc, SystemTime::now()),
                                Reuse::Fresh | Reuse::StaleAllowed
                            );
                        match fill.reader().filter(|_| reusable) {
                            Some(reader) => {
                                ZoneStats::add(&zone.stats.collapsed);
                                let member = "fwd=uri-miss; collapsed";
                                let now = SystemTime::now();
                                return Ok(Some(self.answer_filling(
                                    &head,
                                    reader,
                                    &method,
                                    req.headers(),
                                    now,
                                    member,
                                )));
                            }
                            None => pending.alone = Some("not-shared"),
                        }
                    }
                    Ok(HeadOutcome::Abandoned) => pending.alone = Some("not-stored"),
                    Err(_) => pending.alone = Some("lock-timeout"),
                }
            }
        }
        // Going upstream: the key is what a `hash_key = "cache_key"` cluster balances on.
        cx.state.insert(LookupKey(Arc::from(key.text.as_str())));
        pending.key = Some(key);
        cx.state.insert(CacheState(Arc::new(Mutex::new(pending))));
        Ok(None)
    }
}

/// Counts a request in the zone's `waiting` gauge while it waits for another's fill
/// (also when the wait is dropped: a client that goes away).
struct Waiting<'a>(&'a ZoneStats);

impl<'a> Waiting<'a> {
    fn new(stats: &'a ZoneStats) -> Waiting<'a> {
        stats
            .waiting
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Waiting(stats)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The cache key a request's lookup computed, for balancing on it (`hash_key =
/// "cache_key"`).
#[derive(Clone)]
struct LookupKey(Arc<str>);

/// The cache key the cache filter computed for this request, if it did.
pub fn key_of(state: &http::Extensions) -> Option<&str> {
    state.get::<LookupKey>().map(|k| &*k.0)
}

/// Whether other requests may be answered with `head` as it arrives (collapsed onto
/// its fill): it is fresh and needs no revalidation first.
fn shareable(head: &Head, now: SystemTime) -> bool {
    head.freshness.is_fresh(now) && !head.freshness.no_cache
}

/// `Cache-Status` (RFC 9211).
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

fn lock(s: &CacheState) -> std::sync::MutexGuard<'_, Pending> {
    s.0.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts a background revalidation of `key` (when none is in progress): the request
/// again, without its conditionals, through the whole request path of its connection.
fn revalidate_in_background(req: &Request<ClientBody>, cx: &FilterCtx<'_>, key: &Key, zone: &Zone) {
    if zone.fills.contains(&key.text) {
        return;
    }
    let mut again = Request::new(ClientBody::Empty);
    *again.method_mut() = Method::GET;
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    let mut headers = req.headers().clone();
    for n in CLIENT_CONDITIONALS {
        headers.remove(n);
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    *again.headers_mut() = headers;
    again.extensions_mut().insert(BackgroundRevalidation);
    let conn = Arc::clone(cx.conn_arc);
    tokio::spawn(async move {
        let resp = crate::http::pipeline::handle(again, &conn).await;
        // Read to its end: the fill stores it as it goes.
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
    });
}

/// The client's conditionals and range: the cache answers them from what it stores.
const CLIENT_CONDITIONALS: [HeaderName; 4] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

impl Filter for CacheFilter {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn lookup<'a>(
        &'a self,
        req: &'a mut Request<ClientBody>,
        cx: &'a mut FilterCtx<'_>,
    ) -> Option<Lookup<'a>> {
        Some(Box::pin(self.lookup_inner(req, cx)))
    }

    fn upstream_head(&self, head: &mut Parts, cx: &mut FilterCtx<'_>) {
        let Some(state) = cx.state.get::<CacheState>() else {
            return;
        };
        let p = lock(state);
        if p.slot.is_none() && p.stale.is_none() {
            return;
        }
        for n in CLIENT_CONDITIONALS {
            head.headers.remove(n);
        }
        if head.method == Method::HEAD {
            head.method = Method::GET;
        }
        if let Some(stale) = &p.stale {
            let stored = &stale.head.headers;
            if let Some(etag) = stored.get(header::ETAG) {
                head.headers.insert(header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(lm) = stored.get(header::LAST_MODIFIED) {
                head.headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
            }
        }
    }

    fn response(&self, resp: &mut Response<ResponseBody>, cx: &mut FilterCtx<'_>) {
        let Some(state) = cx.state.get::<CacheState>().cloned() else {
            return;
        };
        let mut p = lock(&state);
        let now = SystemTime::now();
        if p.invalidates && (resp.status().is_success() || resp.status().is_redirection()) {
            self.invalidate(&p, resp.headers());
        }
        if let Some(reason) = p.bypass {
            self.mark(resp.headers_mut(), &format!("fwd={reason}"));
            return;
        }
        let status = resp.status();
        if let Some(stale) = p.stale.clone() {
            if status == StatusCode::NOT_MODIFIED {
                match self.updated(&p, &stale, resp.headers(), now) {
                    Some(entry) => {
                        ZoneStats::add(&self.zone.stats.revalidated);
                        if let Some(key) = &p.key {
                            super::cache_body::store(
                                &self.zone,
                                key,
                                Arc::clone(&entry),
                                p.started,
                            );
                        }
                        if let Some(slot) = p.slot.take() {
                            // Followers read the updated response from the fill.
                            let shared = shareable(&entry.head, now);
                            let (mut w, _leader) =
                                slot.start(Arc::new(entry.head.clone()), u64::MAX, shared);
                            for c in &entry.body {
                                w.push(c.clone());
                            }
                            let _ = w.finish(entry.trailers.clone());
                        }
                        let member = "fwd=stale; fwd-status=304";
                        *resp = self.answer_stored(&entry, &p.method, &p.req_headers, now, member);
                    }
                    None => {
                        // A 304 for another representation than the one stored: it
                        // cannot be used, and the stored one is no longer trusted.
                        if let Some(key) = &p.key {
                            self.zone.remove(key, &stale);
                        }
                        tracing::warn!(
                            zone = self.zone.name(),
                            "upstream answered 304 for another representation than the stored one; removed it"
                        );
                        // The client did not ask for a 304 (the validators were the
                        // cache's): a bad upstream answer, not an empty one.
                        *resp = crate::http::error::error_response(ErrorKind::UpstreamInvalid);
                        self.mark(
                            resp.headers_mut(),
                            "fwd=stale; fwd-status=304; detail=mismatch",
                        );
                    }
                }
                return;
            }
            if matches!(status.as_u16(), 500 | 502 | 503 | 504)
                && stale.head.freshness.serves_on_error(&p.req_cc, now)
            {
                ZoneStats::add(&self.zone.stats.stale);
                let member = format!(
                    "fwd=stale; fwd-status={}; ttl={}; detail=stale-if-error",
                    status.as_u16(),
                    stale.head.freshness.ttl(now)
                );
                *resp = self.answer_stored(&stale, &p.method, &p.req_headers, now, &member);
                return;
            }
        }
        let fwd = if p.stale.is_some() {
            "stale"
        } else if p.vary_miss {
            "vary-miss"
        } else {
            "uri-miss"
        };
        let Some(slot) = p.slot.take() else {
            let detail = p.alone.unwrap_or("not-stored");
            self.mark(
                resp.headers_mut(),
                &format!("fwd={fwd}; fwd-status={}; detail={detail}", status.as_u16()),
            );
            return;
        };
        match self.storable_head(&p, resp, now) {
            Err(reason) => {
                ZoneStats::add(&self.zone.stats.not_stored);
                drop(slot);
                if p.method == Method::HEAD {
                    // The request went as GET: its body is not the client's.
                    *resp.body_mut() = ResponseBody::empty();
                }
                self.mark(
                    resp.headers_mut(),
                    &format!("fwd={fwd}; fwd-status={}; detail={reason}", status.as_u16()),
                );
            }
            Ok(head) => {
                let head = Arc::new(head);
                let shared = shareable(&head, now);
                let (writer, reader) =
                    slot.start(Arc::clone(&head), self.zone.config.max_object, shared);
                let body = std::mem::replace(resp.body_mut(), ResponseBody::empty());
                if let Some(key) = p.key.clone() {
                    tokio::spawn(drive_fill(
                        body,
                        writer,
                        Arc::clone(&self.zone),
                        key,
                        p.started,
                    ));
                }
                let member = format!("fwd={fwd}; fwd-status={}; stored", status.as_u16());
                *resp = self.answer_filling(&head, reader, &p.method, &p.req_headers, now, &member);
            }
        }
    }

    fn error_answer(&self, resp: &mut Response<ResponseBody>, state: &http::Extensions) {
        let Some(state) = state.get::<CacheState>() else {
            return;
        };
        let p = lock(state);
        let now = SystemTime::now();
        if let Some(stale) = &p.stale
            && stale.head.freshness.serves_on_error(&p.req_cc, now)
        {
            ZoneStats::add(&self.zone.stats.stale);
            let member = format!(
                "fwd=stale; ttl={}; detail=stale-if-error",
                stale.head.freshness.ttl(now)
            );
            *resp = self.answer_stored(stale, &p.method, &p.req_headers, now, &member);
            return;
        }
        let detail = if resp.status() == StatusCode::GATEWAY_TIMEOUT && p.req_cc.only_if_cached {
            "fwd=miss; detail=only-if-cached"
        } else {
            "fwd=miss; detail=error"
        };
        self.mark(resp.headers_mut(), detail);
    }
}

impl CacheFilter {
    /// The head to store for this answer, or why it is not stored.
    fn storable_head(
        &self,
        p: &Pending,
        resp: &Response<ResponseBody>,
        now: SystemTime,
    ) -> Result<Head, &'static str> {
        let opts = &self.zone.config.policy;
        let (cc, targeted) = policy::response_directives(resp.headers(), opts);
        policy::storable(
            &Method::GET,
            &p.req_headers,
            &p.req_cc,
            resp.status(),
            resp.headers(),
            &cc,
            targeted,
        )
        .map_err(pylon_cache::NotStorable::as_str)?;
        let head_len = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if head_len.is_some_and(|n| n > self.zone.config.max_object) {
            return Err("too-large");
        }
        let vary = pylon_cache::key::vary_fields(resp.headers()).ok_or("vary")?;
        let values = pylon_cache::key::vary_values(&vary, &p.req_headers);
        let freshness = Freshness::of(
            resp.status(),
            resp.headers(),
            &cc,
            targeted,
            p.request_time,
            now,
            opts,
        );
        // Stale on arrival with nothing to revalidate it by: no later request could use it.
        let validator = resp.headers().contains_key(header::ETAG)
            || resp.headers().contains_key(header::LAST_MODIFIED);
        if !freshness.is_fresh(now)
            && !validator
            && freshness.stale_while_revalidate.is_zero()
            && freshness.stale_if_error.is_zero()
        {
            return Err("no-freshness");
        }
        Ok(Head::new(
            resp.status(),
            resp.headers().clone(),
            &cc,
            freshness,
            vary,
            values,
        ))
    }

    /// The stored response updated by a 304 (RFC 9111 §3.2, §4.3.4), or `None` when
    /// the 304 is not about it.
    fn updated(
        &self,
        p: &Pending,
        stale: &Arc<Entry>,
        new: &HeaderMap,
        now: SystemTime,
    ) -> Option<Arc<Entry>> {
        if !policy::validates(&stale.head.headers, new) {
            return None;
        }
        let mut merged = policy::update_headers(&stale.head.headers, new);
        if !new.contains_key(header::DATE) {
            // The stored Date would make the updated answer as old as the first one.
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
                merged.insert(header::DATE, v);
            }
        }
        let opts = &self.zone.config.policy;
        let (cc, targeted) = policy::response_directives(&merged, opts);
        let freshness = Freshness::of(
            stale.head.status,
            &merged,
            &cc,
            targeted,
            p.request_time,
            now,
            opts,
        );
        let head = Head::new(
            stale.head.status,
            merged,
            &cc,
            freshness,
            stale.head.vary.clone(),
            stale.head.vary_values.clone(),
        );
        Some(Arc::new(Entry::new(
            head,
            stale.body.clone(),
            stale.trailers.clone(),
        )))
    }

    /// An unsafe method succeeded: its URL and the URLs its `Location` and
    /// `Content-Location` name on the same host are invalidated (RFC 9111 §4.4).
    fn invalidate(&self, p: &Pending, answer: &HeaderMap) {
        let Some(key) = &p.key else {
            return;
        };
        self.zone.invalidate_url(key.url());
        let origin = key.url().find("://").map(|i| {
            let rest = &key.url()[i + 3..];
            let host_end = rest.find('/').unwrap_or(rest.len());
            (&key.url()[..i], &rest[..host_end])
        });
        let Some((scheme, host)) = origin else {
            return;
        };
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(v) = answer.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let target = match v.parse::<http::Uri>() {
                Ok(u) if u.authority().is_none() && v.starts_with('/') => {
                    Some(u.path_and_query().map_or("/", |p| p.as_str()).to_owned())
                }
                Ok(u)
                    if u.authority()
                        .is_some_and(|a| a.as_str().eq_ignore_ascii_case(host)) =>
                {
                    Some(u.path_and_query().map_or("/", |p| p.as_str()).to_owned())
                }
                _ => None,
            };
            if let Some(t) = target {
                let k = self.zone.key(scheme, host, &t, &HeaderMap::new());
                self.zone.invalidate_url(k.url());
            }
        }
    }
}
