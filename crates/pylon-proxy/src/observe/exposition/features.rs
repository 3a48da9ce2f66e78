//! The gateway features', TURN's and ACME's series in `/metrics`: mirroring, traffic
//! splits, authentication, TURN listeners, rate limits, cache zones and managed
//! certificates, each read from the runtime in force at scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Exposition, Family, Labels, load};

impl Exposition {
    /// Mirroring routes: copies answered, failed, skipped (body too large) and dropped
    /// (too many out).
    pub(super) fn encode_mirrors(&self, f: &mut Family<'_, '_>) -> std::fmt::Result {
        let rt = self.runtime.load_full();
        let mut mirrors: Vec<_> = rt.mirrors.values().collect();
        if mirrors.is_empty() {
            return Ok(());
        }
        mirrors.sort_by(|a, b| a.route.cmp(&b.route));
        type Pick = fn(&crate::http::filters::mirror::MirrorState) -> &AtomicU64;
        let results: [(&str, Pick); 4] = [
            ("sent", |m| &m.sent),
            ("failed", |m| &m.failed),
            ("skipped", |m| &m.skipped),
            ("dropped", |m| &m.dropped),
        ];
        f.counters(
            "pylon_mirror_requests",
            "Copies of requests for a route's shadow cluster, by result: sent (answered, answer discarded), failed (no answer), skipped (body over max_body), dropped (too many out).",
            mirrors.iter().flat_map(|m| {
                results.iter().map(move |(result, pick)| {
                    (
                        vec![
                            ("route", m.route.as_str()),
                            ("cluster", m.settings.cluster.as_str()),
                            ("result", *result),
                        ],
                        load(pick(m)),
                    )
                })
            }),
        )
    }

    /// Split routes: each backend's answers, 5xx answers and weight now; rollbacks.
    pub(super) fn encode_splits(&self, f: &mut Family<'_, '_>) -> std::fmt::Result {
        let rt = self.runtime.load_full();
        let mut splits: Vec<_> = rt.splits.values().collect();
        if splits.is_empty() {
            return Ok(());
        }
        splits.sort_by(|a, b| a.route.cmp(&b.route));
        let rows = || {
            splits.iter().flat_map(|s| {
                s.backends
                    .iter()
                    .map(move |b| (s.route.as_str(), b.config.cluster.as_str(), b))
            })
        };
        f.counters(
            "pylon_split_requests",
            "Answers to requests a split route sent upstream, by route and the backend cluster chosen.",
            rows().map(|(r, c, b)| (vec![("route", r), ("cluster", c)], load(&b.requests))),
        )?;
        f.counters(
            "pylon_split_errors_5xx",
            "Of those, 5xx answers (the upstream's and proxy-made ones), by route and backend.",
            rows().map(|(r, c, b)| (vec![("route", r), ("cluster", c)], load(&b.errors))),
        )?;
        f.gauges(
            "pylon_split_weight",
            "A split route's backend weight now (the file's, the admin API's or a shift's).",
            rows().map(|(r, c, b)| {
                (
                    vec![("route", r), ("cluster", c)],
                    i64::from(b.weight.load(Ordering::Relaxed)),
                )
            }),
        )?;
        f.counters(
            "pylon_split_rollbacks",
            "Canary rollbacks (the canary's 5xx share passed max_5xx_ratio), by route.",
            splits
                .iter()
                .map(|s| (vec![("route", s.route.as_str())], load(&s.rollbacks))),
        )
    }

    /// Requests auth policies made to other services (JWKS fetches, external
    /// authorization checks) and their failures, by policy and kind.
    pub(super) fn encode_auth(&self, f: &mut Family<'_, '_>) -> std::fmt::Result {
        let rt = self.runtime.load_full();
        let mut rows: Vec<(&str, (&'static str, u64, u64))> = rt
            .auth
            .iter()
            .filter_map(|(name, p)| Some((name.as_str(), p.service_counts()?)))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        rows.sort_by(|a, b| a.0.cmp(b.0));
        f.counters(
            "pylon_auth_service_requests",
            "Requests auth policies made to other services (kind jwks: key-set fetches; external: authorization checks), by policy.",
            rows.iter()
                .map(|(n, (kind, req, _))| (vec![("policy", *n), ("kind", *kind)], *req)),
        )?;
        f.counters(
            "pylon_auth_service_failures",
            "Of those, the ones that failed (no answer in time, an unusable answer), by policy.",
            rows.iter()
                .map(|(n, (kind, _, fail))| (vec![("policy", *n), ("kind", *kind)], *fail)),
        )
    }

    /// The rate-limit policies' decisions, and their Redis round trips when global.
    /// STUN and TURN listeners' counters, labelled by listener.
    /// ACME: orders issued and failed (by reason), unusable stored certificates, each
    /// certificate's expiry; challenges answered.
    pub(super) fn encode_acme(&self, f: &mut Family<'_, '_>) -> std::fmt::Result {
        use crate::tls::acme::FailureReason;
        let live = self.acme.live();
        let od = &self.acme.on_demand;
        let asked = [&od.approved, &od.denied, &od.ask_failed, &od.rate_limited];
        if live.is_empty() && asked.iter().all(|c| load(c) == 0) {
            return Ok(());
        }
        f.counters(
            "pylon_acme_on_demand_names",
            "Names without a certificate seen in handshakes of on-demand listeners, by outcome: approved (the ask URL said yes; a certificate was started), denied (it said no), ask_failed (it did not answer), rate_limited (over on_demand_per_minute).",
            [
                (vec![("result", "approved")], load(&od.approved)),
                (vec![("result", "denied")], load(&od.denied)),
                (vec![("result", "ask_failed")], load(&od.ask_failed)),
                (vec![("result", "rate_limited")], load(&od.rate_limited)),
            ],
        )?;
        if live.is_empty() {
            return Ok(());
        }
        let mut certs: Vec<_> = live
            .iter()
            .map(|c| (c.settings.names.join(","), c))
            .collect();
        certs.sort_by(|a, b| a.0.cmp(&b.0));
        f.counters(
            "pylon_acme_certificates_issued",
            "Certificates the ACME CA issued (first orders and renewals), by certificate (its names).",
            certs
                .iter()
                .map(|(n, c)| (vec![("certificate", n.as_str())], load(&c.stats.issued))),
        )?;
        f.counters(
            "pylon_acme_order_failures",
            "ACME orders that failed, by certificate and reason: unreachable (the directory did not answer), rejected (the CA refused the account or a name), challenge (a name was not validated), storage (the storage directory), protocol (anything else).",
            certs.iter().flat_map(|(n, c)| {
                FailureReason::ALL.iter().zip(&c.stats.failures).map(|(r, v)| {
                    (
                        vec![("certificate", n.as_str()), ("reason", r.as_str())],
                        load(v),
                    )
                })
            }),
        )?;
        f.counters(
            "pylon_acme_stored_certificates_unusable",
            "Stored ACME certificates that could not be used (corrupt, expired, not covering the names, key mismatch), by certificate.",
            certs.iter().map(|(n, c)| {
                (
                    vec![("certificate", n.as_str())],
                    load(&c.stats.stored_invalid),
                )
            }),
        )?;
        f.counters(
            "pylon_acme_certificates_not_yet_valid",
            "ACME certificates put in force while not yet valid by this machine's clock (is it behind?), by certificate.",
            certs.iter().map(|(n, c)| {
                (
                    vec![("certificate", n.as_str())],
                    load(&c.stats.not_yet_valid),
                )
            }),
        )?;
        f.gauges(
            "pylon_acme_certificate_expiry_timestamp_seconds",
            "When the ACME certificate in force expires (Unix time; 0 while there is none), by certificate.",
            certs.iter().map(|(n, c)| {
                (
                    vec![("certificate", n.as_str())],
                    c.not_after.load(Ordering::Relaxed),
                )
            }),
        )?;
        let ch = &self.acme.challenges;
        f.counters(
            "pylon_acme_challenges_answered",
            "ACME challenges answered, by type (http-01 on plain-HTTP listeners, tls-alpn-01 in handshakes).",
            [
                (vec![("type", "http-01")], load(&ch.answered_http01)),
                (vec![("type", "tls-alpn-01")], load(&ch.answered_tls_alpn01)),
            ],
        )
    }

    /// OCSP stapling: fetches by result, and each stapled certificate's staple expiry.
    pub(super) fn encode_ocsp(&self, f: &mut Family<'_, '_>) -> std::fmt::Result {
        let staplers = self.ocsp.live();
        if staplers.is_empty() {
            return Ok(());
        }
        let c = &self.ocsp.counts;
        f.counters(
            "pylon_ocsp_fetches",
            "OCSP responses fetched for stapling, by result: good, revoked (stapled, and logged as an error), unknown (not stapled), failed (no usable answer; the last good response stays until it expires).",
            [
                (vec![("result", "good")], load(&c.good)),
                (vec![("result", "revoked")], load(&c.revoked)),
                (vec![("result", "unknown")], load(&c.unknown)),
                (vec![("result", "failed")], load(&c.failed)),
            ],
        )?;
        let mut rows: Vec<_> = staplers
            .iter()
            .map(|s| (s.name().to_owned(), s.valid_until.load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        f.gauges(
            "pylon_ocsp_staple_expiry_timestamp_seconds",
            "When the OCSP response stapled for a certificate expires (its nextUpdate, Unix time; 0 while there is none), by certificate.",
            rows.iter()
                .map(|(n, v)| (vec![("certificate", n.as_str())], *v)),
        )
    }

    pub(super) fn encode_turn(&self, f: &mut Family<'_, '_>) -> std::fmt::Result {
        if self.turn.is_empty() {
            return Ok(());
        }
        type Pick = fn(&crate::turn::TurnStats) -> &AtomicU64;
        fn l(n: &str) -> Labels<'_> {
            vec![("listener", n)]
        }
        let counters: [(&str, &str, Pick); 4] = [
            (
                "pylon_stun_binding_requests",
                "STUN Binding requests answered, by listener.",
                |s| &s.bindings,
            ),
            (
                "pylon_turn_allocations",
                "TURN allocations made, by listener.",
                |s| &s.allocations_total,
            ),
            (
                "pylon_turn_peers_refused",
                "Permissions and channels refused for their peer (special-purpose addresses, denied_peers, Pylon's own listeners), by listener.",
                |s| &s.peers_refused,
            ),
            (
                "pylon_turn_allocations_refused",
                "Allocations refused for a quota (486) or no free relay port (508), by listener.",
                |s| &s.quota_refused,
            ),
        ];
        for (name, help, pick) in counters {
            f.counters(
                name,
                help,
                self.turn.iter().map(|(n, s)| (l(n), load(pick(s)))),
            )?;
        }
        let gauges: [(&str, &str, Pick); 3] = [
            (
                "pylon_turn_allocations_active",
                "TURN allocations open now, by listener.",
                |s| &s.allocations,
            ),
            (
                "pylon_turn_permissions_active",
                "Permissions installed now, by listener.",
                |s| &s.permissions,
            ),
            (
                "pylon_turn_channels_active",
                "Channels bound now, by listener.",
                |s| &s.channels,
            ),
        ];
        for (name, help, pick) in gauges {
            f.gauges(
                name,
                help,
                self.turn.iter().map(|(n, s)| (l(n), load(pick(s)) as i64)),
            )?;
        }
        let relayed = |to: Pick, from: Pick| {
            self.turn.iter().flat_map(move |(n, s)| {
                [
                    (
                        vec![("listener", n.as_str()), ("direction", "to_peer")],
                        load(to(s)),
                    ),
                    (
                        vec![("listener", n.as_str()), ("direction", "from_peer")],
                        load(from(s)),
                    ),
                ]
            })
        };
        f.counters(
            "pylon_turn_relayed_bytes",
            "Bytes relayed between clients and peers, by listener and direction.",
            relayed(|s| &s.bytes_to_peers, |s| &s.bytes_from_peers),
        )?;
        f.counters(
            "pylon_turn_relayed_packets",
            "Datagrams relayed between clients and peers, by listener and direction.",
            relayed(|s| &s.packets_to_peers, |s| &s.packets_from_peers),
        )?;
        type Reasons = fn(&crate::turn::TurnStats) -> Vec<(&'static str, u64)>;
        let by_reason: [(&str, &str, Reasons); 2] = [
            (
                "pylon_turn_auth_failures",
                "TURN requests refused for their credentials, by listener and reason (challenge: the first, unsigned request every client makes).",
                |s| s.auth_failures(),
            ),
            (
                "pylon_turn_dropped",
                "STUN and TURN messages and relayed datagrams dropped, by listener and reason.",
                |s| s.drops(),
            ),
        ];
        for (name, help, reasons) in by_reason {
            let rows: Vec<(&String, Vec<(&'static str, u64)>)> =
                self.turn.iter().map(|(n, s)| (n, reasons(s))).collect();
            f.counters(
                name,
                help,
                rows.iter().flat_map(|(n, rows)| {
                    rows.iter()
                        .map(move |(r, v)| (vec![("listener", n.as_str()), ("reason", *r)], *v))
                }),
            )?;
        }
        Ok(())
    }

    pub(super) fn encode_rate_limits(&self, f: &mut Family<'_, '_>) -> std::fmt::Result {
        let rt = self.runtime.load_full();
        let mut limits: Vec<_> = rt.rate_limits.values().collect();
        if limits.is_empty() {
            return Ok(());
        }
        limits.sort_by(|a, b| a.name.cmp(&b.name));
        type Pick = fn(&crate::http::filters::rate_limit::LimitStats) -> &AtomicU64;
        let rows: [(&str, &str, Pick); 3] = [
            (
                "pylon_rate_limit_admitted",
                "Requests a rate limit let through at once, by policy.",
                |s| &s.admitted,
            ),
            (
                "pylon_rate_limit_delayed",
                "Requests a rate limit let through after waiting (`delay`), by policy.",
                |s| &s.delayed,
            ),
            (
                "pylon_rate_limit_refused",
                "Requests a rate limit refused (429, or 503 when its Redis failed), by policy.",
                |s| &s.limited,
            ),
        ];
        for (name, help, pick) in rows {
            f.counters(
                name,
                help,
                limits
                    .iter()
                    .map(|l| (vec![("policy", l.name.as_str())], load(pick(&l.stats)))),
            )?;
        }
        let global: Vec<(&str, (u64, u64))> = limits
            .iter()
            .filter_map(|l| Some((l.name.as_str(), l.redis_counts()?)))
            .collect();
        if !global.is_empty() {
            f.counters(
                "pylon_rate_limit_redis_round_trips",
                "Round trips to Redis to lease tokens of a global limit, by policy.",
                global
                    .iter()
                    .map(|(n, (rt, _))| (vec![("policy", *n)], *rt)),
            )?;
            f.counters(
                "pylon_rate_limit_redis_errors",
                "Decisions of a global limit whose Redis failed or was too slow, by policy.",
                global.iter().map(|(n, (_, e))| (vec![("policy", *n)], *e)),
            )?;
        }
        Ok(())
    }

    /// The cache zones' counters and sizes, labelled by zone.
    pub(super) fn encode_caches(&self, f: &mut Family<'_, '_>) -> std::fmt::Result {
        let rt = self.runtime.load_full();
        let mut zones: Vec<&Arc<pylon_cache::Zone>> = rt.caches.values().map(|z| &z.zone).collect();
        if zones.is_empty() {
            return Ok(());
        }
        zones.sort_by(|a, b| a.name().cmp(b.name()));
        type Pick = fn(&pylon_cache::ZoneStats) -> &AtomicU64;
        let rows: [(&str, &str, Pick); 11] = [
            (
                "pylon_cache_hits",
                "Requests answered from the cache, by zone.",
                |s| &s.hits,
            ),
            (
                "pylon_cache_misses",
                "Requests with nothing stored to answer them, by zone.",
                |s| &s.misses,
            ),
            (
                "pylon_cache_stale_served",
                "Stale answers served (stale-while-revalidate, stale-if-error), by zone.",
                |s| &s.stale,
            ),
            (
                "pylon_cache_revalidations",
                "Stored responses revalidated by a 304, by zone.",
                |s| &s.revalidated,
            ),
            (
                "pylon_cache_collapsed",
                "Requests served from another request's fill (request collapsing), by zone.",
                |s| &s.collapsed,
            ),
            ("pylon_cache_stored", "Responses stored, by zone.", |s| {
                &s.stored
            }),
            (
                "pylon_cache_not_stored",
                "Fetched responses not stored (not storable, too large), by zone.",
                |s| &s.not_stored,
            ),
            (
                "pylon_cache_evictions",
                "Stored keys evicted for room, by zone.",
                |s| &s.evictions,
            ),
            (
                "pylon_cache_purged",
                "Stored keys purged through the admin API, by zone.",
                |s| &s.purged,
            ),
            (
                "pylon_cache_invalidated",
                "Stored keys invalidated by unsafe requests, by zone.",
                |s| &s.invalidated,
            ),
            (
                "pylon_cache_fill_failures",
                "Fills whose upstream body failed (nothing stored), by zone.",
                |s| &s.fills_failed,
            ),
        ];
        for (name, help, pick) in rows {
            f.counters(
                name,
                help,
                zones
                    .iter()
                    .map(|z| (vec![("zone", z.name())], load(pick(&z.stats)))),
            )?;
        }
        f.gauges(
            "pylon_cache_waiting",
            "Requests waiting now for another request's fill of the same key, by zone.",
            zones
                .iter()
                .map(|z| (vec![("zone", z.name())], load(&z.stats.waiting))),
        )?;
        let sizes: Vec<(u64, u64)> = zones.iter().map(|z| z.size()).collect();
        f.gauges(
            "pylon_cache_entries",
            "Keys stored now, by zone.",
            zones
                .iter()
                .zip(&sizes)
                .map(|(z, s)| (vec![("zone", z.name())], s.0)),
        )?;
        f.gauges(
            "pylon_cache_bytes",
            "Bytes stored now (bodies and heads), by zone.",
            zones
                .iter()
                .zip(&sizes)
                .map(|(z, s)| (vec![("zone", z.name())], s.1)),
        )
    }
}
