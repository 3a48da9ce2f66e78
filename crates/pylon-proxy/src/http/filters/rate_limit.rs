//! Local rate limits on routes (`rate_limit = ["policy", ...]`, policies in
//! `[[rate_limits]]`): GCRA buckets per key (the client's IP, a header, a cookie, or the
//! route as a whole) from the `governor` crate, in memory, swept of idle keys every 10 s.
//! A request over a limit is refused with 429 `rate_limited`, `Retry-After`, and the
//! `RateLimit-Policy` and `RateLimit` fields of the IETF httpapi draft. Each Pylon
//! instance counts on its own.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::header::{self, HeaderValue};
use http::{Request, Response};
use pylon_config::Config;
use pylon_config::model::{Action, RateKey};

use super::{Filter, FilterCtx, FilterSite};
use crate::conn::ClientBody;
use crate::http::body::ResponseBody;
use crate::http::error::ErrorKind;

/// The runtime's rate limits, by name.
pub(crate) type Limiters = HashMap<String, Arc<Limiter>>;

/// One policy's buckets.
pub(crate) struct Limiter {
    name: String,
    key: RateKey,
    buckets: DefaultKeyedRateLimiter<String>,
    /// `RateLimit-Policy` for this policy.
    policy: HeaderValue,
    clock: DefaultClock,
}

/// How often idle keys are dropped.
const SWEEP: Duration = Duration::from_secs(10);

/// The limits of `config`, each with a sweeper task that ends with it (needs a tokio
/// runtime). Buckets start full on each reload.
pub(crate) fn limiters(config: &Config) -> Limiters {
    config
        .rate_limits
        .iter()
        .map(|l| {
            let period = l.per / l.rate.max(1);
            let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(l.burst).unwrap_or(NonZeroU32::MIN));
            let policy = HeaderValue::from_str(&format!(
                "\"{}\";q={};w={}",
                l.name,
                l.burst,
                l.per.as_secs().max(1)
            ))
            .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""));
            let limiter = Arc::new(Limiter {
                name: l.name.clone(),
                key: l.key.clone(),
                buckets: RateLimiter::keyed(quota),
                policy,
                clock: DefaultClock::default(),
            });
            sweep(Arc::downgrade(&limiter));
            (l.name.clone(), limiter)
        })
        .collect()
}

/// Drops idle keys' buckets every [`SWEEP`] while the limiter lives.
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
            l.buckets.retain_recent();
            l.buckets.shrink_to_fit();
        }
    });
}

pub(super) fn build(site: &FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    let Action::Proxy(p) = &site.route.action else {
        return None;
    };
    let limits: Vec<Arc<Limiter>> = p
        .rate_limit
        .iter()
        .filter_map(|n| site.rate_limits.get(n).cloned())
        .collect();
    (!limits.is_empty()).then(|| Arc::new(RateLimits { limits }) as Arc<dyn Filter>)
}

struct RateLimits {
    limits: Vec<Arc<Limiter>>,
}

/// Left for `error_answer`: the policy that refused, and when to try again.
#[derive(Clone)]
struct Limited {
    policy: HeaderValue,
    name: String,
    retry_after: u64,
}

impl Limiter {
    /// The request's key for this policy.
    fn key_of(&self, req: &Request<ClientBody>, cx: &FilterCtx<'_>) -> String {
        let text = |v: Option<&HeaderValue>| {
            v.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default()
        };
        match &self.key {
            RateKey::ClientIp => text(Some(&cx.conn.client_ip)),
            RateKey::ClientNet { v4, v6 } => network(cx.conn.client.ip(), *v4, *v6),
            RateKey::Header(h) => text(req.headers().get(h.as_str())),
            RateKey::Cookie(name) => crate::http::headers::cookie(req.headers(), name)
                .unwrap_or_default()
                .to_owned(),
            RateKey::Route => String::new(),
        }
    }
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

impl Filter for RateLimits {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn request(
        &self,
        req: &mut Request<ClientBody>,
        cx: &mut FilterCtx<'_>,
    ) -> Result<Option<Response<ResponseBody>>, ErrorKind> {
        for l in &self.limits {
            let key = l.key_of(req, cx);
            if let Err(not_until) = l.buckets.check_key(&key) {
                let wait = not_until.wait_time_from(l.clock.now());
                cx.state.insert(Limited {
                    policy: l.policy.clone(),
                    name: l.name.clone(),
                    retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                });
                return Err(ErrorKind::RateLimited);
            }
        }
        Ok(None)
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
