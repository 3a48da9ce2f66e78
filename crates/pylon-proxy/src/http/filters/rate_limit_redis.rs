//! Global rate limits (`global = { redis = ... }`): one GCRA bucket per key in Redis,
//! shared by every Pylon instance that names the same server, leased out in batches so
//! that most requests never wait for Redis.
//!
//! An instance that has no tokens left for a key takes up to `batch` of them from the
//! key's bucket with one atomic script (the bucket's clock is Redis's own `TIME`, so the
//! instances' clocks do not matter), then admits that many requests locally. Concurrent
//! requests for the same key wait on the one round trip. A key found empty is refused
//! locally until the time Redis said its next token comes. Leased tokens not used within
//! [`LEASE_LIFE`] are dropped.
//!
//! Accuracy: the fleet never admits more than the bucket grants, since every admitted
//! request spent a token counted in Redis; tokens leased and then dropped make it admit
//! fewer, at most `batch - 1` per instance and key per lease life. A Redis that fails or
//! takes longer than `timeout` gives the policy's `on_error` answer; after a failure the
//! instance stops asking for [`BREAK`], and logs once per outage, not per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pylon_config::model::GlobalLimit;

/// How long leased tokens stay usable.
const LEASE_LIFE: Duration = Duration::from_secs(1);
/// How long an instance stops asking a Redis that failed.
const BREAK: Duration = Duration::from_secs(1);

/// GCRA over a batch: KEYS[1] holds the bucket's theoretical arrival time (µs);
/// ARGV: the emission interval (µs), the burst tolerance (µs), the tokens wanted.
/// Returns {granted, µs until the next token when none was granted}.
const LEASE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local room = math.floor((now + tolerance - tat) / interval)
local granted = math.min(wanted, room)
if granted < 1 then
  return {0, tat + interval - tolerance - now}
end
tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {granted, 0}
";

/// One Redis server, shared by the policies that name it.
pub(crate) struct Redis {
    url: String,
    conn: Option<redis::aio::ConnectionManager>,
    script: redis::Script,
    /// In an outage (logged when it starts and when it ends).
    down: AtomicBool,
    /// No round trips before this (µs since `epoch`), after a failure.
    retry_at: AtomicU64,
    epoch: Instant,
}

impl Redis {
    /// A handle on `url`; connects on first use and reconnects by itself.
    pub(crate) fn new(url: &str, timeout: Duration) -> Arc<Redis> {
        let conn = redis::Client::open(url).ok().and_then(|client| {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            redis::aio::ConnectionManager::new_lazy_with_config(client, config).ok()
        });
        Arc::new(Redis {
            url: url.to_owned(),
            conn,
            script: redis::Script::new(LEASE_SCRIPT),
            down: AtomicBool::new(false),
            retry_at: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Takes up to `wanted` tokens from `key`'s bucket: the number granted, or when the
    /// next token comes if none was.
    async fn lease(
        &self,
        key: &str,
        interval_us: u64,
        tolerance_us: u64,
        wanted: u32,
        timeout: Duration,
        policy: &str,
    ) -> Result<(u32, Duration), ()> {
        if self.now_us() < self.retry_at.load(Ordering::Relaxed) {
            return Err(());
        }
        let Some(conn) = &self.conn else {
            return Err(());
        };
        let mut conn = conn.clone();
        let call = async {
            self.script
                .key(key)
                .arg(interval_us)
                .arg(tolerance_us)
                .arg(wanted)
                .invoke_async::<(i64, i64)>(&mut conn)
                .await
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok((granted, wait_us))) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(redis = %self.url, "Redis answers again; global rate limits are counted there again");
                }
                Ok((
                    u32::try_from(granted.max(0)).unwrap_or(0),
                    Duration::from_micros(u64::try_from(wait_us.max(1)).unwrap_or(1)),
                ))
            }
            failed => {
                self.retry_at.store(
                    self.now_us() + u64::try_from(BREAK.as_micros()).unwrap_or(0),
                    Ordering::Relaxed,
                );
                if !self.down.swap(true, Ordering::Relaxed) {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {timeout:?}"),
                    };
                    tracing::warn!(redis = %self.url, %policy, %error, "Redis unreachable; global rate limits take their on_error policy until it answers");
                }
                Err(())
            }
        }
    }
}

/// The Redis servers of a config's global limits, one handle per address.
pub(crate) fn servers(config: &pylon_config::Config) -> HashMap<String, Arc<Redis>> {
    let mut out: HashMap<String, Arc<Redis>> = HashMap::new();
    for l in &config.rate_limits {
        if let Some(g) = &l.global {
            out.entry(g.redis.clone())
                .or_insert_with(|| Redis::new(&g.redis, g.timeout));
        }
    }
    out
}

/// One policy's side of a global limit: its settings and the tokens this instance holds.
pub(crate) struct Global {
    redis: Arc<Redis>,
    settings: GlobalLimit,
    interval_us: u64,
    tolerance_us: u64,
    /// Redis key prefix with the policy's name.
    prefix: String,
    policy: String,
    leases: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Lease>>>>,
    pub(crate) round_trips: AtomicU64,
    pub(crate) errors: AtomicU64,
}

#[derive(Default)]
struct Lease {
    tokens: u32,
    expires: Option<Instant>,
    /// The bucket is empty until then.
    empty_until: Option<Instant>,
}

/// A global limit's answer for one request.
pub(crate) enum Decision {
    Admit,
    /// Refused: the next token comes after this long.
    Wait(Duration),
    /// Redis failed or was too slow.
    Unavailable,
}

impl Global {
    pub(crate) fn new(
        redis: Arc<Redis>,
        settings: GlobalLimit,
        policy: &str,
        rate: u32,
        per: Duration,
        burst: u32,
    ) -> Global {
        let interval_us =
            (u64::try_from(per.as_micros()).unwrap_or(u64::MAX) / u64::from(rate.max(1))).max(1);
        Global {
            redis,
            prefix: format!("{}{policy}:", settings.prefix),
            settings,
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(burst.max(1))),
            policy: policy.to_owned(),
            leases: Mutex::new(HashMap::new()),
            round_trips: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// Spends one token of `key`, leasing a batch from Redis when this instance has
    /// none.
    pub(crate) async fn check(&self, key: &str) -> Decision {
        let slot = {
            let mut leases = crate::lock(&self.leases);
            match leases.get(key) {
                Some(slot) => Arc::clone(slot),
                None => Arc::clone(leases.entry(key.to_owned()).or_default()),
            }
        };
        let mut lease = slot.lock().await;
        let now = Instant::now();
        if lease.tokens > 0 && lease.expires.is_some_and(|e| now < e) {
            lease.tokens -= 1;
            return Decision::Admit;
        }
        if let Some(t) = lease.empty_until.filter(|t| now < *t) {
            return Decision::Wait(t - now);
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let redis_key = format!("{}{key}", self.prefix);
        match self
            .redis
            .lease(
                &redis_key,
                self.interval_us,
                self.tolerance_us,
                self.settings.batch,
                self.settings.timeout,
                &self.policy,
            )
            .await
        {
            Ok((0, wait)) => {
                lease.tokens = 0;
                lease.empty_until = Some(now + wait);
                Decision::Wait(wait)
            }
            Ok((granted, _)) => {
                lease.tokens = granted - 1;
                lease.expires = Some(now + LEASE_LIFE);
                lease.empty_until = None;
                Decision::Admit
            }
            Err(()) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Decision::Unavailable
            }
        }
    }

    /// Drops the leases of keys with nothing held and nothing pending.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        crate::lock(&self.leases).retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || slot.try_lock().map_or(true, |l| {
                    (l.tokens > 0 && l.expires.is_some_and(|e| now < e))
                        || l.empty_until.is_some_and(|t| now < t)
                })
        });
    }

    pub(crate) fn fail_mode(&self) -> pylon_config::model::FailMode {
        self.settings.on_error
    }
}
