//! The live dashboard on the admin listener: `GET /dashboard` (one self-contained page,
//! embedded in the binary: no asset from the internet), `GET /dashboard/data` (the same
//! data as JSON) and `GET /dashboard/events` (server-sent events: the data again every
//! sample). A sampler reads the counters every [`INTERVAL`] and keeps the last five
//! minutes: request and error rates, proxy-made errors by reason, and per route its
//! request rate and latency percentiles (from the route's histogram, the buckets that
//! filled during each interval). The rest is read when asked: clusters and endpoints,
//! listeners, recent reloads and the slowest recent requests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::Proxy;
use crate::http::error::ErrorKind;
use crate::lock;
use crate::observe::stats::{LATENCY_BOUNDS, RouteStats};

/// How often the counters are sampled.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept: five minutes.
const POINTS: usize = 150;
/// Routes with a series of their own (the first by listener and name); the others
/// count in the totals.
const MAX_ROUTES: usize = 50;

/// The page: HTML, CSS and script in one file.
const PAGE: &str = include_str!("dashboard.html");

/// One route's series.
#[derive(Default)]
struct RouteSeries {
    /// Its answers and latency buckets at the last sample.
    last: (u64, [u64; 15]),
    /// Per sample: requests per second, and the 50th, 90th and 99th percentile in
    /// milliseconds (`None` when it had no requests).
    points: VecDeque<(f32, Option<[f32; 3]>)>,
}

/// What the sampler keeps.
#[derive(Default)]
struct History {
    /// Per sample: Unix time (s), requests per second, proxy-made errors per second.
    points: VecDeque<(u64, f32, f32)>,
    /// Totals at the last sample: answers, proxy-made errors.
    last: (u64, u64),
    /// Proxy-made errors by reason, cumulative, at each sample (the oldest is the
    /// base of the window's counts).
    errors: VecDeque<Vec<u64>>,
    routes: BTreeMap<(String, String, String), RouteSeries>,
}

/// The dashboard's state, shared by the sampler and the admin listener.
pub struct Dashboard {
    history: Mutex<History>,
    /// Bumped after each sample: what the event streams wait on.
    tick: watch::Sender<u64>,
}

impl Dashboard {
    pub fn new() -> Arc<Dashboard> {
        Arc::new(Dashboard {
            history: Mutex::new(History::default()),
            tick: watch::channel(0).0,
        })
    }

    /// Samples every [`INTERVAL`] until `stop` (or the proxy is gone).
    pub async fn run(self: Arc<Self>, proxy: Weak<Proxy>, mut stop: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.changed() => return,
            }
            let Some(p) = proxy.upgrade() else { return };
            self.sample(&p);
            self.tick.send_modify(|t| *t += 1);
        }
    }

    fn sample(&self, proxy: &Proxy) {
        let metrics = &proxy.shared.metrics;
        let answers: u64 = (0..=5).map(|c| metrics.responses(c)).sum();
        let by_reason: Vec<u64> = ErrorKind::ALL.iter().map(|k| metrics.errors(*k)).collect();
        let errors: u64 = by_reason.iter().sum();
        let secs = INTERVAL.as_secs_f32();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut routes = proxy.shared.stats.routes();
        routes.sort_by(|a, b| (&a.listener, &a.route).cmp(&(&b.listener, &b.route)));
        routes.retain(|r| !r.route.is_empty());
        routes.truncate(MAX_ROUTES);
        let mut h = lock(&self.history);
        let first = h.points.is_empty() && h.last == (0, 0);
        let rate = |now: u64, before: u64| now.saturating_sub(before) as f32 / secs;
        if !first {
            let point = (now, rate(answers, h.last.0), rate(errors, h.last.1));
            push(&mut h.points, point);
        }
        h.last = (answers, errors);
        push(&mut h.errors, by_reason);
        let mut seen = Vec::with_capacity(routes.len());
        for r in &routes {
            let key = (
                r.listener.to_string(),
                r.route.to_string(),
                r.cluster.to_string(),
            );
            let now_counts = counts(r);
            let series = h.routes.entry(key.clone()).or_default();
            let fresh = series.last == (0, [0; 15]) && series.points.is_empty();
            if !fresh || now_counts.0 == 0 {
                let delta: Vec<u64> = now_counts
                    .1
                    .iter()
                    .zip(series.last.1)
                    .map(|(n, b)| n.saturating_sub(b))
                    .collect();
                let point = (
                    rate(now_counts.0, series.last.0),
                    percentiles(&delta, [0.5, 0.9, 0.99]),
                );
                push(&mut series.points, point);
            }
            series.last = now_counts;
            seen.push(key);
        }
        h.routes.retain(|k, _| seen.contains(k));
    }

    /// Everything the page shows, as JSON.
    pub fn data(&self, proxy: &Proxy) -> Value {
        let rt = proxy.runtime();
        let h = lock(&self.history);
        let t: Vec<u64> = h.points.iter().map(|p| p.0).collect();
        let errors_by_reason: BTreeMap<&str, u64> = match (h.errors.front(), h.errors.back()) {
            (Some(old), Some(new)) => ErrorKind::ALL
                .iter()
                .zip(old.iter().zip(new))
                .filter(|(_, (o, n))| n > o)
                .map(|(k, (o, n))| (k.as_str(), n - o))
                .collect(),
            _ => BTreeMap::new(),
        };
        let routes: Vec<Value> = h
            .routes
            .iter()
            .map(|((listener, route, cluster), s)| {
                let pick = |i: usize| -> Vec<Option<f32>> {
                    s.points.iter().map(|p| p.1.map(|q| q[i])).collect()
                };
                json!({
                    "listener": listener, "route": route, "cluster": cluster,
                    "requests_per_s": s.points.iter().map(|p| p.0).collect::<Vec<_>>(),
                    "p50_ms": pick(0), "p90_ms": pick(1), "p99_ms": pick(2),
                })
            })
            .collect();
        let series = json!({
            "t": t,
            "requests_per_s": h.points.iter().map(|p| p.1).collect::<Vec<_>>(),
            "errors_per_s": h.points.iter().map(|p| p.2).collect::<Vec<_>>(),
        });
        drop(h);
        let stats: HashMap<String, _> = proxy.shared.stats.listeners().into_iter().collect();
        let bound = proxy.bound();
        let listeners: Vec<Value> = rt
            .config
            .listeners
            .iter()
            .map(|l| {
                let s = stats.get(&l.name);
                let n = |f: fn(&crate::observe::stats::ListenerStats) -> u64| s.map_or(0, |s| f(s));
                json!({
                    "name": l.name,
                    "protocol": l.protocol,
                    "bind": l.bind_as_written,
                    "addresses": bound
                        .iter()
                        .filter(|b| b.listener == l.name)
                        .map(|b| format!("{} {}", b.scheme, b.addr))
                        .collect::<Vec<_>>(),
                    "connections_active": n(|s| s.connections_active()),
                    "connections_total": n(|s| s.connections()),
                    "requests_active": n(|s| s.requests_active()),
                    "tunnels_active": n(|s| s.tunnels_active.load(Ordering::Relaxed)),
                    "tls_versions": {
                        "1.2": n(|s| s.tls_versions[0].load(Ordering::Relaxed)),
                        "1.3": n(|s| s.tls_versions[1].load(Ordering::Relaxed)),
                    },
                })
            })
            .collect();
        json!({
            "interval_s": INTERVAL.as_secs(),
            "config_hash": rt.config_hash,
            "series": series,
            "errors_by_reason": errors_by_reason,
            "routes": routes,
            "clusters": super::clusters(&rt)["clusters"],
            "listeners": listeners,
            "reloads": proxy.shared.recent.reloads(),
            "slowest": proxy.shared.recent.slowest(),
        })
    }

    /// `GET /dashboard/events`: the data now, then after every sample, as server-sent
    /// events, until the client goes away or the admin listener closes.
    pub fn events(
        self: &Arc<Self>,
        proxy: Weak<Proxy>,
        stop: watch::Receiver<bool>,
    ) -> Response<EventBody> {
        let state = (Arc::clone(self), proxy, self.tick.subscribe(), stop, true);
        let stream = futures_util::stream::unfold(
            state,
            |(d, proxy, mut tick, mut stop, first)| async move {
                if !first {
                    tokio::select! {
                        changed = tick.changed() => changed.ok()?,
                        _ = stop.changed() => return None,
                    }
                }
                let p = proxy.upgrade()?;
                let text = format!("data: {}\n\n", d.data(&p));
                drop(p);
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(text))),
                    (d, proxy, tick, stop, false),
                ))
            },
        );
        let mut r = Response::new(StreamBody::new(Box::pin(stream) as EventStream));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        r
    }
}

type EventStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>;

/// The event stream's body.
pub type EventBody = StreamBody<EventStream>;

/// `GET /dashboard`: the page.
pub fn page() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Nothing from elsewhere: the page's own script and styles only.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        ),
    );
    r
}

fn push<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == POINTS {
        q.pop_front();
    }
    q.push_back(v);
}

/// A route's answers so far and its latency histogram's bucket counts.
fn counts(r: &RouteStats) -> (u64, [u64; 15]) {
    let (_, count, buckets) = r.latency.snapshot();
    let mut b = [0u64; 15];
    for (slot, (_, n)) in b.iter_mut().zip(buckets) {
        *slot = n;
    }
    (count, b)
}

/// Percentiles (in milliseconds) from per-bucket counts over [`LATENCY_BOUNDS`],
/// interpolated linearly within the bucket; `None` for no samples. The overflow
/// bucket reports the last bound.
fn percentiles(buckets: &[u64], qs: [f64; 3]) -> Option<[f32; 3]> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let mut out = [0f32; 3];
    for (slot, q) in out.iter_mut().zip(qs) {
        let rank = q * total as f64;
        let mut seen = 0f64;
        let mut value = LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1];
        for (i, &n) in buckets.iter().enumerate() {
            let n = n as f64;
            if n > 0.0 && seen + n >= rank {
                let lower = if i == 0 { 0.0 } else { LATENCY_BOUNDS[i - 1] };
                let upper = LATENCY_BOUNDS.get(i).copied().unwrap_or(lower);
                value = lower + (upper - lower) * ((rank - seen) / n).clamp(0.0, 1.0);
                break;
            }
            seen += n;
        }
        *slot = (value * 1000.0) as f32;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_within_buckets() {
        let mut b = [0u64; 15];
        // 100 answers between 1 and 2.5 ms (bucket 2), one over 10 s.
        b[2] = 100;
        let p = percentiles(&b, [0.5, 0.9, 0.99]).unwrap();
        assert!((p[0] - 1.75).abs() < 0.01, "{p:?}");
        assert!((p[1] - 2.35).abs() < 0.01, "{p:?}");
        b[14] = 100;
        let p = percentiles(&b, [0.5, 0.9, 0.99]).unwrap();
        assert!((p[0] - 2.5).abs() < 0.01, "{p:?}");
        assert_eq!(p[2], 10_000.0);
        assert_eq!(percentiles(&[0; 15], [0.5, 0.9, 0.99]), None);
    }
}
