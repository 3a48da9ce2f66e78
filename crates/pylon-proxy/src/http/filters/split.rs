//! Traffic splitting and canary releases (`backends = [...]` on a route, `split` for
//! stickiness and rollback): in phase 3 each request is given one of the route's
//! clusters, by an override (a header, cookie or query value naming a backend), a
//! sticky cookie, a hash of a sticky key, or else at random by the current weights; it
//! leaves its choice as the request's [`ChosenCluster`]. Answers are counted per backend
//! (all, and 5xx ones, proxy-made included); a canary whose 5xx share over `window`
//! passes `max_5xx_ratio` is rolled back to weight 0 at once, logged and counted.
//!
//! Weights live here, per route (by name, shared by the listeners the route is on): the
//! admin API changes them without a reload and runs gradual shifts (`shift`); a reload
//! starts again from the file's weights.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response};
use pylon_config::model::{Action, Backend, Canary, SplitSticky};

use super::{ChosenCluster, Filter, FilterCtx, FilterSite};
use crate::cluster::ClusterRuntime;
use crate::conn::ClientBody;
use crate::http::body::ResponseBody;
use crate::http::error::ErrorKind;

/// Every split route's state, by route name.
pub(crate) type Splits = HashMap<String, Arc<SplitState>>;

/// One route's backends, their weights now, and what they answered.
pub(crate) struct SplitState {
    pub(crate) route: String,
    pub(crate) backends: Vec<BackendRuntime>,
    sticky: Option<SplitSticky>,
    canary: Option<(usize, Canary)>,
    /// A gradual shift in progress.
    shift: Mutex<Option<Shift>>,
    draws: AtomicU64,
    pub(crate) rollbacks: AtomicU64,
}

/// One backend of a split route.
pub(crate) struct BackendRuntime {
    pub(crate) cluster: Arc<ClusterRuntime>,
    pub(crate) config: Backend,
    pub(crate) weight: AtomicU32,
    pub(crate) requests: AtomicU64,
    pub(crate) errors: AtomicU64,
    window: Mutex<Window>,
    cookie_value: HeaderValue,
}

/// Answers and 5xx ones over the current and the previous window (a sliding count).
#[derive(Default)]
struct Window {
    started: Option<Instant>,
    now: (u32, u32),
    before: (u32, u32),
}

/// A gradual shift: where it goes and how it stops.
pub(crate) struct Shift {
    pub(crate) cluster: String,
    pub(crate) to: u32,
    pub(crate) step: u32,
    pub(crate) every: Duration,
    /// The weights when it started (an abort returns to them).
    before: Vec<u32>,
    stop: Arc<AtomicBool>,
}

/// The split routes of `config`, linked to their clusters.
pub(crate) fn splits(
    config: &pylon_config::Config,
    clusters: &HashMap<String, Arc<ClusterRuntime>>,
) -> Splits {
    let mut out = Splits::new();
    for r in &config.routes {
        let Action::Proxy(p) = &r.action else {
            continue;
        };
        if p.backends.is_empty() {
            continue;
        }
        let backends: Vec<BackendRuntime> = p
            .backends
            .iter()
            .filter_map(|b| {
                Some(BackendRuntime {
                    cluster: Arc::clone(clusters.get(&b.cluster)?),
                    weight: AtomicU32::new(b.weight),
                    config: b.clone(),
                    requests: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                    window: Mutex::new(Window::default()),
                    cookie_value: HeaderValue::from_str(&b.cluster)
                        .unwrap_or_else(|_| HeaderValue::from_static("")),
                })
            })
            .collect();
        let canary = p.split.canary.as_ref().and_then(|c| {
            let i = backends
                .iter()
                .position(|b| b.config.cluster == c.cluster)?;
            Some((i, c.clone()))
        });
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        out.insert(
            r.name.clone(),
            Arc::new(SplitState {
                route: r.name.clone(),
                backends,
                sticky: p.split.sticky.clone(),
                canary,
                shift: Mutex::new(None),
                draws: AtomicU64::new(seed),
                rollbacks: AtomicU64::new(0),
            }),
        );
    }
    out
}

/// SplitMix64: a well-spread 64-bit value from a counter.
pub(super) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitState {
    /// The weights now.
    pub(crate) fn weights(&self) -> Vec<u32> {
        self.backends
            .iter()
            .map(|b| b.weight.load(Ordering::Relaxed))
            .collect()
    }

    fn set_weights(&self, weights: &[u32]) {
        for (b, w) in self.backends.iter().zip(weights) {
            b.weight.store(*w, Ordering::Relaxed);
            *crate::lock(&b.window) = Window::default();
        }
    }

    /// A backend's weight now.
    fn weight(&self, i: usize) -> u32 {
        self.backends
            .get(i)
            .map_or(0, |b| b.weight.load(Ordering::Relaxed))
    }

    /// The backend at `point` of the cumulative weights now (`point` below their sum; a
    /// change of weights meanwhile falls back to the first).
    fn at(&self, point: u64) -> usize {
        let mut acc = 0u64;
        for (i, b) in self.backends.iter().enumerate() {
            acc += u64::from(b.weight.load(Ordering::Relaxed));
            if point < acc {
                return i;
            }
        }
        0
    }

    /// The backend for a request, and whether it must be told so (a sticky cookie).
    fn choose(&self, req: &Request<ClientBody>, cx: &FilterCtx<'_>) -> (usize, bool) {
        let headers = req.headers();
        for (i, b) in self.backends.iter().enumerate() {
            let c = &b.config;
            let by_header = c.header.as_ref().is_some_and(|(n, v)| {
                headers
                    .get_all(n.as_str())
                    .iter()
                    .any(|h| h.as_bytes() == v.as_bytes())
            });
            let by_cookie = c
                .cookie
                .as_ref()
                .is_some_and(|(n, v)| crate::http::headers::cookie(headers, n) == Some(v.as_str()));
            let by_query = c.query.as_ref().is_some_and(|(n, v)| {
                crate::http::headers::query_param(req.uri(), n) == Some(v.as_str())
            });
            if by_header || by_cookie || by_query {
                return (i, false);
            }
        }
        // Read from the atomics as they are (no copy of the weights per request).
        let total: u64 = (0..self.backends.len())
            .map(|i| u64::from(self.weight(i)))
            .sum();
        if total == 0 {
            return (0, false);
        }
        match &self.sticky {
            Some(SplitSticky::Cookie(name)) => {
                let held = crate::http::headers::cookie(headers, name).and_then(|v| {
                    self.backends
                        .iter()
                        .position(|b| b.config.cluster == v)
                        .filter(|i| self.weight(*i) > 0)
                });
                match held {
                    Some(i) => (i, false),
                    None => (self.at(self.draw() % total), true),
                }
            }
            Some(SplitSticky::Hash(key)) => {
                let text = super::rate_limit::key_text(key, req, cx);
                let point = mix(pylon_lb::hash_key(text.as_bytes()));
                (self.at(point % total), false)
            }
            None => (self.at(self.draw() % total), false),
        }
    }

    fn draw(&self) -> u64 {
        mix(self.draws.fetch_add(1, Ordering::Relaxed))
    }

    /// Counts an answer of backend `i`; a canary failing too often is rolled back.
    fn record(&self, i: usize, status: u16) {
        let Some(b) = self.backends.get(i) else {
            return;
        };
        b.requests.fetch_add(1, Ordering::Relaxed);
        let failed = status >= 500;
        if failed {
            b.errors.fetch_add(1, Ordering::Relaxed);
        }
        let Some((canary, c)) = &self.canary else {
            return;
        };
        if *canary != i {
            return;
        }
        let (total, errors) = {
            let mut w = crate::lock(&b.window);
            let now = Instant::now();
            let started = *w.started.get_or_insert(now);
            let elapsed = now.duration_since(started);
            if elapsed >= c.window * 2 {
                *w = Window {
                    started: Some(now),
                    ..Window::default()
                };
            } else if elapsed >= c.window {
                w.before = w.now;
                w.now = (0, 0);
                w.started = Some(started + c.window);
            }
            w.now.0 += 1;
            w.now.1 += u32::from(failed);
            // The previous window counts for the part of it still inside the sliding
            // window.
            let into = w.started.map_or(0.0, |s| {
                now.duration_since(s).as_secs_f64() / c.window.as_secs_f64()
            });
            let keep = (1.0 - into).clamp(0.0, 1.0);
            (
                f64::from(w.now.0) + f64::from(w.before.0) * keep,
                f64::from(w.now.1) + f64::from(w.before.1) * keep,
            )
        };
        if failed
            && total >= f64::from(c.min_requests)
            && errors / total > c.max_5xx_ratio
            && b.weight.load(Ordering::Relaxed) > 0
        {
            self.roll_back(*canary, errors / total);
        }
    }

    /// The canary to weight 0, a shift in progress stopped.
    fn roll_back(&self, canary: usize, ratio: f64) {
        if let Some(s) = crate::lock(&self.shift).take() {
            s.stop.store(true, Ordering::Relaxed);
        }
        let mut weights = self.weights();
        weights[canary] = 0;
        if weights.iter().all(|w| *w == 0) {
            // Everything on the canary: the others get their file weights back.
            for (i, b) in self.backends.iter().enumerate() {
                if i != canary {
                    weights[i] = b.config.weight.max(1);
                }
            }
        }
        self.set_weights(&weights);
        self.rollbacks.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            route = %self.route,
            canary = %self.backends[canary].config.cluster,
            five_xx_ratio = format!("{ratio:.3}"),
            "canary rolled back: its 5xx share passed max_5xx_ratio"
        );
    }

    /// Sets the weights by cluster name (the others keep theirs); a shift in progress
    /// stops.
    pub(crate) fn set_by_name(&self, weights: &HashMap<String, u32>) -> Result<Vec<u32>, String> {
        let mut now = self.weights();
        for (name, w) in weights {
            let i = self
                .backends
                .iter()
                .position(|b| &b.config.cluster == name)
                .ok_or_else(|| {
                    format!("\"{name}\" is not a backend of route \"{}\"", self.route)
                })?;
            now[i] = *w;
        }
        if now.iter().all(|w| *w == 0) {
            return Err("the weights would add up to zero".into());
        }
        if let Some(s) = crate::lock(&self.shift).take() {
            s.stop.store(true, Ordering::Relaxed);
        }
        self.set_weights(&now);
        tracing::info!(route = %self.route, weights = ?now, "split weights set through the admin API");
        Ok(now)
    }

    /// Starts moving `cluster`'s share to `to` percent, `step` points every `every`
    /// (the others share the rest as their weights did).
    pub(crate) fn start_shift(
        self: &Arc<Self>,
        cluster: &str,
        to: u32,
        step: u32,
        every: Duration,
    ) -> Result<(), String> {
        let target = self
            .backends
            .iter()
            .position(|b| b.config.cluster == cluster)
            .ok_or_else(|| format!("\"{cluster}\" is not a backend of route \"{}\"", self.route))?;
        if to > 100 || step == 0 || every.is_zero() {
            return Err("to is a percentage (0 to 100), step at least 1, every above zero".into());
        }
        let before = self.weights();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let mut shift = crate::lock(&self.shift);
            if let Some(old) = shift.take() {
                old.stop.store(true, Ordering::Relaxed);
            }
            *shift = Some(Shift {
                cluster: cluster.to_owned(),
                to,
                step,
                every,
                before: before.clone(),
                stop: Arc::clone(&stop),
            });
        }
        let total: u64 = before.iter().map(|w| u64::from(*w)).sum::<u64>().max(1);
        let mut share = u32::try_from(u64::from(before[target]) * 100 / total).unwrap_or(0);
        let me: Weak<SplitState> = Arc::downgrade(self);
        tracing::info!(route = %self.route, %cluster, from = share, to, step, ?every, "split shift started");
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(s) = me.upgrade() else { return };
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                share = if share < to {
                    (share + step).min(to)
                } else {
                    share.saturating_sub(step).max(to)
                };
                // Shares in basis points: the target's, and the rest split among the
                // others as their weights were when the shift started.
                let others: u64 = before
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != target)
                    .map(|(_, w)| u64::from(*w))
                    .sum();
                let rest = 10_000 - u64::from(share) * 100;
                let weights: Vec<u32> = before
                    .iter()
                    .enumerate()
                    .map(|(i, w)| {
                        if i == target {
                            share * 100
                        } else {
                            (rest * u64::from(*w))
                                .checked_div(others)
                                .and_then(|v| u32::try_from(v).ok())
                                .unwrap_or(0)
                        }
                    })
                    .collect();
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                s.set_weights(&weights);
                tracing::info!(route = %s.route, share, "split shift step");
                if share == to {
                    let mut shift = crate::lock(&s.shift);
                    if shift
                        .as_ref()
                        .is_some_and(|sh| Arc::ptr_eq(&sh.stop, &stop))
                    {
                        *shift = None;
                    }
                    tracing::info!(route = %s.route, share, "split shift done");
                    return;
                }
            }
        });
        Ok(())
    }

    /// Stops a shift in progress and returns to the weights it started from.
    pub(crate) fn abort_shift(&self) -> bool {
        let Some(s) = crate::lock(&self.shift).take() else {
            return false;
        };
        s.stop.store(true, Ordering::Relaxed);
        self.set_weights(&s.before);
        tracing::info!(route = %self.route, cluster = %s.cluster, "split shift aborted");
        true
    }

    /// The shift in progress: cluster, target, step and period.
    pub(crate) fn shift_state(&self) -> Option<(String, u32, u32, Duration)> {
        crate::lock(&self.shift)
            .as_ref()
            .map(|s| (s.cluster.clone(), s.to, s.step, s.every))
    }
}

/// What the filter left for its later phases: the backend, whether its sticky cookie
/// must be set, and whether the request went upstream.
#[derive(Clone)]
struct Chosen {
    index: usize,
    set_cookie: bool,
    sent: bool,
}

pub(super) fn build(site: &FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    let Action::Proxy(_) = &site.route.action else {
        return None;
    };
    let state = site.splits.get(&site.route.name)?;
    Some(Arc::new(SplitFilter {
        state: Arc::clone(state),
    }))
}

struct SplitFilter {
    state: Arc<SplitState>,
}

impl Filter for SplitFilter {
    fn name(&self) -> &'static str {
        "split"
    }

    fn request(
        &self,
        req: &mut Request<ClientBody>,
        cx: &mut FilterCtx<'_>,
    ) -> Result<Option<Response<ResponseBody>>, ErrorKind> {
        let (index, set_cookie) = self.state.choose(req, cx);
        if let Some(b) = self.state.backends.get(index) {
            cx.state.insert(ChosenCluster(Arc::clone(&b.cluster)));
        }
        cx.state.insert(Chosen {
            index,
            set_cookie,
            sent: false,
        });
        Ok(None)
    }

    fn upstream_head(&self, _head: &mut http::request::Parts, cx: &mut FilterCtx<'_>) {
        if let Some(c) = cx.state.get_mut::<Chosen>() {
            c.sent = true;
        }
    }

    fn response(&self, resp: &mut Response<ResponseBody>, cx: &mut FilterCtx<'_>) {
        let Some(c) = cx.state.get::<Chosen>() else {
            return;
        };
        self.state.record(c.index, resp.status().as_u16());
        if c.set_cookie
            && let Some(SplitSticky::Cookie(name)) = &self.state.sticky
            && let Some(b) = self.state.backends.get(c.index)
            && let Ok(v) = HeaderValue::from_str(&format!(
                "{name}={}; Path=/; HttpOnly; SameSite=Lax",
                b.cookie_value.to_str().unwrap_or("")
            ))
        {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }

    fn error_answer(&self, resp: &mut Response<ResponseBody>, state: &http::Extensions) {
        // Only requests that went upstream count for their backend.
        if let Some(c) = state.get::<Chosen>().filter(|c| c.sent) {
            self.state.record(c.index, resp.status().as_u16());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_spread_evenly() {
        let mut hits = [0u32; 100];
        for i in 0..100_000u64 {
            hits[(super::mix(i) % 100) as usize] += 1;
        }
        assert!(hits.iter().all(|h| (850..1150).contains(h)), "{hits:?}");
    }
}
