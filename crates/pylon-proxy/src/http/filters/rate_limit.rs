//! Rate limits on routes and listeners (`rate_limit = ["policy", ...]`, policies in
//! `[[rate_limits]]`), each counted per key (the client's address or network, a header,
//! a cookie, a claim of the accepted JWT, the route, or several of these at once):
//!
//! - **local** GCRA buckets from the `governor` crate, in memory, swept of idle keys
//!   every 10 s; each instance counts on its own;
//! - **global** buckets in Redis shared by every instance (`rate_limit_redis.rs`);
//! - **concurrency**: requests in flight per key, released when the answer's body ends.
//!
//! A request over a limit is refused with 429 `rate_limited`, `Retry-After`, and the
//! `RateLimit-Policy` and `RateLimit` fields of the IETF httpapi draft, or, with `delay`,
//! waits up to that long for its turn. Local limits on keys that need no claim are
//! decided in phase 3 before authentication (a flood is refused before any token is
//! verified); the others after it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::header::{self, HeaderValue};
use http::{Request, Response};
use pylon_config::Config;
use pylon_config::model::{Action, FailMode, RateKey};

use super::rate_limit_redis::{Decision, Global};
use super::{Filter, FilterCtx, FilterSite, Lookup};
use crate::conn::ClientBody;
use crate::http::body::ResponseBody;
use crate::http::error::ErrorKind;

/// The runtime's rate limits, by name.
pub(crate) type Limiters = HashMap<String, Arc<Limiter>>;

/// One policy: how it counts and its counters.
pub(crate) struct Limiter {
    pub(crate) name: String,
    key: Vec<RateKey>,
    kind: Kind,
    /// A request over the rate waits up to this long instead of being refused.
    delay: Duration,
    /// `RateLimit-Policy` for this policy.
    policy: HeaderValue,
    pub(crate) stats: LimitStats,
}

enum Kind {
    Local {
        buckets: DefaultKeyedRateLimiter<String>,
        clock: DefaultClock,
        /// Decisions so far, to look at the number of keys every [`KEYS_CHECK_EVERY`].
        decisions: AtomicU64,
    },
    Global(Global),
    Concurrency {
        max: u32,
        in_flight: Mutex<HashMap<String, u32>>,
    },
}

/// A policy's decisions, for `/metrics`.
#[derive(Default)]
pub(crate) struct LimitStats {
    pub(crate) admitted: AtomicU64,
    pub(crate) limited: AtomicU64,
    pub(crate) delayed: AtomicU64,
}

impl Limiter {
    /// The global side's Redis round trips and failures, when the policy is global.
    pub(crate) fn redis_counts(&self) -> Option<(u64, u64)> {
        match &self.kind {
            Kind::Global(g) => Some((
                g.round_trips.load(Ordering::Relaxed),
                g.errors.load(Ordering::Relaxed),
            )),
            _ => None,
        }
    }

    /// Decided in phase 3 without waiting: local, no claim in the key, no delay.
    fn decided_early(&self) -> bool {
        !matches!(self.kind, Kind::Global(_))
            && self.delay.is_zero()
            && !self.key.iter().any(|k| matches!(k, RateKey::Claim(_)))
    }
}

/// How often idle keys are dropped.
const SWEEP: Duration = Duration::from_secs(10);
/// Keys a local limit holds before it drops idle ones at once instead of at the next
/// sweep (a flood of distinct keys), and how often (in decisions) it looks.
const MAX_KEYS: usize = 100_000;
const KEYS_CHECK_EVERY: u64 = 1024;

/// The limits of `config`, each with a sweeper task that ends with it (needs a tokio
/// runtime). Local buckets start full on each reload; global ones live in Redis.
pub(crate) fn limiters(config: &Config) -> Limiters {
    let servers = super::rate_limit_redis::servers(config);
    config
        .rate_limits
        .iter()
        .map(|l| {
            let (kind, policy) = match (l.concurrency, &l.global) {
                (Some(max), _) => (
                    Kind::Concurrency {
                        max,
                        in_flight: Mutex::new(HashMap::new()),
                    },
                    format!("\"{}\";q={max}", l.name),
                ),
                (None, global) => {
                    let policy =
                        format!("\"{}\";q={};w={}", l.name, l.burst, l.per.as_secs().max(1));
                    let kind = match global
                        .as_ref()
                        .and_then(|g| Some((g, Arc::clone(servers.get(&g.redis)?))))
                    {
                        Some((g, redis)) => Kind::Global(Global::new(
                            redis,
                            g.clone(),
                            &l.name,
                            l.rate,
                            l.per,
                            l.burst,
                        )),
                        None => {
                            let period = l.per / l.rate.max(1);
                            let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
                                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                                .allow_burst(NonZeroU32::new(l.burst).unwrap_or(NonZeroU32::MIN));
                            Kind::Local {
                                buckets: RateLimiter::keyed(quota),
                                clock: DefaultClock::default(),
                                decisions: AtomicU64::new(0),
                            }
                        }
                    };
                    (kind, policy)
                }
            };
            let limiter = Arc::new(Limiter {
                name: l.name.clone(),
                key: l.key.clone(),
                kind,
                delay: l.delay,
                policy: HeaderValue::from_str(&policy)
                    .unwrap_or_else(|_| HeaderValue::from_static("\"limit\"")),
                stats: LimitStats::default(),
            });
            sweep(Arc::downgrade(&limiter));
            (l.name.clone(), limiter)
        })
        .collect()
}

/// Drops idle keys every [`SWEEP`] while the limiter lives.
fn sweep(limiter: Weak<Limiter>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP).await;
            let Some(l) = limiter.upgrade() else {
                return;
            };
            match &l.kind {
                Kind::Local { buckets, .. } => {
                    buckets.retain_recent();
                    buckets.shrink_to_fit();
                }
                Kind::Global(g) => g.sweep(),
                Kind::Concurrency { .. } => {}
            }
        }
    });
}

pub(super) fn build(site: &FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    let Action::Proxy(p) = &site.route.action else {
        return None;
    };
    let mut names: Vec<&String> = site.listener.rate_limit.iter().collect();
    for n in &p.rate_limit {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let limits: Vec<Arc<Limiter>> = names
        .into_iter()
        .filter_map(|n| site.rate_limits.get(n).cloned())
        .collect();
    if limits.is_empty() {
        return None;
    }
    let (early, late): (Vec<_>, Vec<_>) = limits.into_iter().partition(|l| l.decided_early());
    Some(Arc::new(RateLimits { early, late }))
}

struct RateLimits {
    /// Decided in phase 3's first pass.
    early: Vec<Arc<Limiter>>,
    /// Decided after authentication (claims, delays, Redis).
    late: Vec<Arc<Limiter>>,
}

/// Left for `error_answer`: the policy that refused, and when to try again.
#[derive(Clone)]
struct Limited {
    policy: HeaderValue,
    name: String,
    retry_after: u64,
}

/// The claims of the JWT an `auth` policy accepted, for keys and for logs.
#[derive(Clone)]
pub(crate) struct Claims(pub(crate) Arc<serde_json::Map<String, serde_json::Value>>);

impl Claims {
    /// Appends the request's claim `name` as text to `out` (a string as it is, another
    /// JSON value as its JSON text; nothing when there is no token or no such claim).
    pub(crate) fn push(state: &http::Extensions, name: &str, out: &mut String) {
        match state.get::<Claims>().and_then(|c| c.0.get(name)) {
            Some(serde_json::Value::String(s)) => out.push_str(s),
            Some(v) => out.push_str(&v.to_string()),
            None => {}
        }
    }
}

/// Requests in flight counted by concurrency limits; released when the last handle is
/// dropped (the answer's body ends, or the request fails).
#[derive(Clone)]
pub(crate) struct InFlight(Arc<Mutex<Slots>>);

/// Concurrency slots taken: each policy and key.
pub(crate) struct Slots(Vec<(Arc<Limiter>, String)>);

impl Drop for Slots {
    fn drop(&mut self) {
        for (l, key) in &self.0 {
            if let Kind::Concurrency { in_flight, .. } = &l.kind {
                let mut map = crate::lock(in_flight);
                if let Some(n) = map.get_mut(key) {
                    *n -= 1;
                    if *n == 0 {
                        map.remove(key);
                    }
                }
            }
        }
    }
}

/// One policy's answer.
enum Verdict {
    Admit,
    /// Over the limit; the next slot comes after this long.
    Over(Duration),
    /// A global limit's Redis failed and the policy refuses then.
    Unavailable,
}

impl Limiter {
    fn key_of(&self, req: &Request<ClientBody>, cx: &FilterCtx<'_>) -> String {
        key_text(&self.key, req, cx)
    }

    /// One decision, without waiting (local and concurrency kinds).
    fn check_now(
        &self,
        key: &String,
        held: &mut Vec<(Arc<Limiter>, String)>,
        me: &Arc<Limiter>,
    ) -> Verdict {
        match &self.kind {
            Kind::Local {
                buckets,
                clock,
                decisions,
            } => {
                // Bounded memory: past MAX_KEYS, keys whose bucket has refilled (they
                // would start full anyway) are dropped at once.
                if decisions
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(KEYS_CHECK_EVERY)
                    && buckets.len() > MAX_KEYS
                {
                    buckets.retain_recent();
                }
                match buckets.check_key(key) {
                    Ok(()) => Verdict::Admit,
                    Err(not_until) => Verdict::Over(not_until.wait_time_from(clock.now())),
                }
            }
            Kind::Concurrency { max, in_flight } => {
                let mut map = crate::lock(in_flight);
                let n = map.entry(key.to_owned()).or_insert(0);
                if *n >= *max {
                    return Verdict::Over(Duration::from_secs(1));
                }
                *n += 1;
                held.push((Arc::clone(me), key.to_owned()));
                Verdict::Admit
            }
            Kind::Global(_) => Verdict::Unavailable,
        }
    }

    /// One decision, waiting for Redis when the policy is global.
    async fn check(
        &self,
        key: &String,
        held: &mut Vec<(Arc<Limiter>, String)>,
        me: &Arc<Limiter>,
    ) -> Verdict {
        let Kind::Global(g) = &self.kind else {
            return self.check_now(key, held, me);
        };
        match g.check(key).await {
            Decision::Admit => Verdict::Admit,
            Decision::Wait(d) => Verdict::Over(d),
            Decision::Unavailable => match g.fail_mode() {
                FailMode::Allow => Verdict::Admit,
                FailMode::Deny => Verdict::Unavailable,
            },
        }
    }

    /// The refusal for a verdict that is not `Admit`, counted.
    fn refuse(&self, verdict: Verdict, cx: &mut FilterCtx<'_>) -> ErrorKind {
        self.stats.limited.fetch_add(1, Ordering::Relaxed);
        match verdict {
            Verdict::Over(wait) => {
                cx.state.insert(Limited {
                    policy: self.policy.clone(),
                    name: self.name.clone(),
                    retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                });
                ErrorKind::RateLimited
            }
            Verdict::Admit | Verdict::Unavailable => ErrorKind::RateLimitUnavailable,
        }
    }
}

/// A request's key made of `parts` (joined by a unit separator; a part the request
/// lacks is empty): for rate limits and for external authorization's verdict cache.
pub(crate) fn key_text(parts: &[RateKey], req: &Request<ClientBody>, cx: &FilterCtx<'_>) -> String {
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('\u{1f}');
        }
        match part {
            RateKey::ClientIp => {
                // Written by Pylon from the address: ASCII.
                out.push_str(cx.conn.client_ip.to_str().unwrap_or_default());
            }
            RateKey::ClientNet { v4, v6 } => {
                out.push_str(&network(cx.conn.client.ip(), *v4, *v6));
            }
            RateKey::Header(h) => {
                if let Some(v) = req.headers().get(h.as_str()) {
                    out.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
            }
            RateKey::Cookie(name) => {
                out.push_str(crate::http::headers::cookie(req.headers(), name).unwrap_or_default());
            }
            RateKey::Claim(name) => Claims::push(cx.state, name, &mut out),
            RateKey::Route => {}
        }
    }
    out
}

/// `ip` cut to its first `v4` (IPv4) or `v6` (IPv6) bits, as `network/bits` text.
fn network(ip: std::net::IpAddr, v4: u8, v6: u8) -> String {
    match ip {
        std::net::IpAddr::V4(a) => {
            let bits = u32::from(v4.min(32));
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            format!("{}/{bits}", std::net::Ipv4Addr::from(u32::from(a) & mask))
        }
        std::net::IpAddr::V6(a) => {
            let bits = u32::from(v6.min(128));
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            format!("{}/{bits}", std::net::Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

impl RateLimits {
    /// The late policies, in turn: a global one waits for Redis, one with `delay` for
    /// its slot.
    async fn check_late(
        &self,
        req: &Request<ClientBody>,
        cx: &mut FilterCtx<'_>,
    ) -> Result<Option<Response<ResponseBody>>, ErrorKind> {
        let mut held = Vec::new();
        for l in &self.late {
            let key = l.key_of(req, cx);
            let mut waited = Duration::ZERO;
            loop {
                match l.check(&key, &mut held, l).await {
                    Verdict::Admit => {
                        let counter = if waited.is_zero() {
                            &l.stats.admitted
                        } else {
                            &l.stats.delayed
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Verdict::Over(wait) if waited + wait <= l.delay => {
                        tokio::time::sleep(wait).await;
                        waited += wait;
                    }
                    verdict => {
                        drop(held);
                        return Err(l.refuse(verdict, cx));
                    }
                }
            }
        }
        if !held.is_empty() {
            hold(cx, held);
        }
        Ok(None)
    }
}

/// Keeps concurrency slots for the request's life.
fn hold(cx: &mut FilterCtx<'_>, held: Vec<(Arc<Limiter>, String)>) {
    match cx.state.get::<InFlight>() {
        Some(f) => crate::lock(&f.0).0.extend(held),
        None => {
            cx.state.insert(InFlight(Arc::new(Mutex::new(Slots(held)))));
        }
    }
}

impl Filter for RateLimits {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn request(
        &self,
        req: &mut Request<ClientBody>,
        cx: &mut FilterCtx<'_>,
    ) -> Result<Option<Response<ResponseBody>>, ErrorKind> {
        let mut held = Vec::new();
        for l in &self.early {
            let key = l.key_of(req, cx);
            match l.check_now(&key, &mut held, l) {
                Verdict::Admit => {
                    l.stats.admitted.fetch_add(1, Ordering::Relaxed);
                }
                verdict => {
                    drop(held);
                    return Err(l.refuse(verdict, cx));
                }
            }
        }
        if !held.is_empty() {
            hold(cx, held);
        }
        Ok(None)
    }

    fn lookup<'a>(
        &'a self,
        req: &'a mut Request<ClientBody>,
        cx: &'a mut FilterCtx<'_>,
    ) -> Option<Lookup<'a>> {
        (!self.late.is_empty()).then(|| Box::pin(self.check_late(req, cx)) as Lookup<'a>)
    }

    fn response(&self, resp: &mut Response<ResponseBody>, cx: &mut FilterCtx<'_>) {
        // Concurrency slots stay taken until the answer's body ends.
        if let Some(f) = cx.state.remove::<InFlight>() {
            resp.body_mut().hold(Box::new(f));
        }
    }

    fn error_answer(&self, resp: &mut Response<ResponseBody>, state: &http::Extensions) {
        let Some(l) = state.get::<Limited>() else {
            return;
        };
        let h = resp.headers_mut();
        h.insert(header::RETRY_AFTER, HeaderValue::from(l.retry_after));
        h.insert("ratelimit-policy", l.policy.clone());
        if let Ok(v) = HeaderValue::from_str(&format!("\"{}\";r=0;t={}", l.name, l.retry_after)) {
            h.insert("ratelimit", v);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_flood_of_distinct_keys_keeps_a_local_limit_bounded() {
        let config = pylon_config::parse(
            "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\
             [[rate_limits]]\nname = \"r\"\nkey = \"header:x-k\"\nrate = 1000000\nburst = 1\n",
            "t.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let limits = super::limiters(&config);
        let l = &limits["r"];
        let mut held = Vec::new();
        for i in 0..(super::MAX_KEYS + 50_000) {
            let _ = l.check_now(&format!("client-{i}"), &mut held, l);
        }
        let super::Kind::Local { buckets, .. } = &l.kind else {
            panic!("a local limit");
        };
        assert!(
            buckets.len() <= super::MAX_KEYS + super::KEYS_CHECK_EVERY as usize,
            "{} keys",
            buckets.len()
        );
    }

    #[test]
    fn networks_cut_addresses_to_their_prefix() {
        let ip = |s: &str| s.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        assert_eq!(super::network(ip("192.0.2.77"), 24, 64), "192.0.2.0/24");
        assert_eq!(super::network(ip("192.0.2.77"), 0, 64), "0.0.0.0/0");
        assert_eq!(super::network(ip("192.0.2.77"), 32, 64), "192.0.2.77/32");
        assert_eq!(
            super::network(ip("2001:db8:1:2:3::9"), 24, 64),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            super::network(ip("2001:db8:1:2:3::9"), 24, 48),
            "2001:db8:1::/48"
        );
    }
}
