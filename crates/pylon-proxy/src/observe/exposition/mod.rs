//! `/metrics`: every counter, gauge and histogram rendered as OpenMetrics text with
//! `prometheus-client`, read at scrape time from the atomics the request path updates
//! (no locks there): process-wide counters, per-listener, per-route and per-cluster
//! stats, endpoint state from the runtime in force, reloads and the loaded config's
//! hash, and the process's CPU, memory and file descriptors.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::registry::Registry;

use super::Metrics;
use super::stats::{Histogram, RouteStats, StatsRegistry};
use crate::runtime::Runtime;

mod features;

/// The media type of what [`render`] returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One metric family being written.
struct Family<'e, 'w> {
    enc: &'e mut DescriptorEncoder<'w>,
}

impl Family<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, v: u64) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        m.encode_counter::<NoLabelSet, u64, u64>(&v, None)
    }

    fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        v: V,
    ) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        m.encode_gauge(&v)
    }

    fn counters<'a>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels<'a>, u64)>,
    ) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in rows {
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
        }
        Ok(())
    }

    fn gauges<'a, V: prometheus_client::encoding::EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels<'a>, V)>,
    ) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in rows {
            m.encode_family(&labels)?.encode_gauge(&v)?;
        }
        Ok(())
    }

    fn histograms<'a>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels<'a>, &'a Histogram)>,
    ) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in rows {
            let (sum, count, buckets) = h.snapshot();
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                sum,
                count,
                &buckets,
                None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
            )?;
        }
        Ok(())
    }

    fn info(&mut self, name: &str, help: &str, labels: &impl EncodeLabelSet) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Info)?;
        m.encode_info(labels)
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// The process-wide counters alone.
#[derive(Debug)]
pub struct Global(pub Arc<Metrics>);

impl Collector for Global {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        encode_global(&self.0, &mut Family { enc: &mut enc })
    }
}

/// The process-wide counters of [`Metrics`].
fn encode_global(m: &Metrics, f: &mut Family<'_, '_>) -> std::fmt::Result {
    {
        let classes = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];
        f.counters(
            "pylon_responses",
            "Responses sent, by status class (all listeners).",
            classes
                .iter()
                .enumerate()
                .map(|(i, c)| (vec![("class", *c)], m.responses(i as u16))),
        )?;
        f.counters(
            "pylon_proxy_errors",
            "Proxy-made error answers, by reason (the x-pylon-error value).",
            crate::http::error::ErrorKind::ALL
                .iter()
                .map(|k| (vec![("reason", k.as_str())], m.errors(*k))),
        )?;
        f.counter(
            "pylon_connections_accepted",
            "Client connections accepted (all listeners).",
            m.connections_accepted(),
        )?;
        for (name, help, v) in [
            (
                "pylon_access_log_dropped",
                "Access-log lines dropped because the writer fell behind.",
                &m.access_log_dropped,
            ),
            (
                "pylon_tls_handshakes",
                "TLS handshakes completed.",
                &m.tls_handshakes,
            ),
            (
                "pylon_tls_handshake_failures",
                "TLS handshakes failed or timed out.",
                &m.tls_handshake_failures,
            ),
            (
                "pylon_quic_connections",
                "HTTP/3: QUIC connections established.",
                &m.quic_connections,
            ),
            (
                "pylon_quic_handshake_failures",
                "HTTP/3: QUIC handshakes failed or timed out.",
                &m.quic_handshake_failures,
            ),
            (
                "pylon_quic_refused",
                "HTTP/3: new QUIC connections refused at a connection limit.",
                &m.quic_refused,
            ),
            (
                "pylon_quic_retries",
                "HTTP/3: Retry packets sent to validate a client's address.",
                &m.quic_retries,
            ),
            (
                "pylon_quic_excessive_resets",
                "HTTP/3: connections closed for cancelling more requests in a second than they may have open.",
                &m.quic_excessive_resets,
            ),
            (
                "pylon_quic_protocol_errors",
                "HTTP/3: connections closed for the client's protocol errors (frames out of place, malformed fields).",
                &m.quic_protocol_errors,
            ),
            (
                "pylon_l4_connections",
                "Layer 4 connections accepted.",
                &m.l4_connections,
            ),
            (
                "pylon_l4_connections_refused",
                "Layer 4 connections refused at max_connections.",
                &m.l4_refused,
            ),
            (
                "pylon_l4_connections_rejected",
                "Layer 4 connections closed for want of a cluster or a valid first flight.",
                &m.l4_rejected,
            ),
            (
                "pylon_l4_connect_failures",
                "Layer 4 connections that reached no endpoint.",
                &m.l4_connect_failures,
            ),
            (
                "pylon_l4_received_bytes",
                "Bytes received from Layer 4 clients.",
                &m.l4_bytes_received,
            ),
            (
                "pylon_l4_sent_bytes",
                "Bytes sent to Layer 4 clients.",
                &m.l4_bytes_sent,
            ),
            (
                "pylon_l4_spliced_bytes",
                "Layer 4 bytes relayed with splice(2), both directions (never copied through user space).",
                &crate::l4::relay::SPLICED_BYTES,
            ),
            (
                "pylon_upstream_quic_unreachable",
                "QUIC connects to h3 endpoints that failed (unreachable over UDP), turning their requests to the TCP fallback.",
                &crate::cluster::QUIC_UNREACHABLE,
            ),
            (
                "pylon_upstream_quic_timeouts",
                "QUIC handshakes with h3 endpoints that timed out, turning their requests to the TCP fallback.",
                &crate::cluster::QUIC_TIMEOUTS,
            ),
            (
                "pylon_upstream_h3_fallbacks",
                "Requests to h3 clusters sent over their TCP fallback (h3_fallback).",
                &crate::cluster::H3_FALLBACKS,
            ),
            (
                "pylon_proxy_protocol_refused",
                "Connections refused for their PROXY header.",
                &m.proxy_protocol_refused,
            ),
            (
                "pylon_udp_sessions",
                "UDP sessions opened.",
                &m.udp_sessions,
            ),
            (
                "pylon_udp_dropped_datagrams",
                "UDP datagrams dropped (session limit, no endpoint).",
                &m.udp_dropped,
            ),
            ("pylon_tunnels", "Tunnels opened.", &m.tunnels_total),
            (
                "pylon_tunnels_spliced",
                "CONNECT tunnels relayed with splice(2): both sockets plain, the bytes never copied through the proxy.",
                &m.tunnels_spliced,
            ),
            (
                "pylon_sendfile_bytes",
                "Static file bytes sent with sendfile(2) to cleartext HTTP/1.1 clients, never copied through the proxy.",
                &m.sendfile_bytes,
            ),
            (
                "pylon_config_reloads_ok",
                "Configuration reloads applied.",
                &m.reloads_ok,
            ),
            (
                "pylon_config_reloads_failed",
                "Configuration reloads refused (the old configuration kept serving).",
                &m.reloads_failed,
            ),
            (
                "pylon_trace_spans_exported",
                "Trace spans the collector accepted.",
                &m.spans.exported,
            ),
        ] {
            f.counter(name, help, load(v))?;
        }
        f.counters(
            "pylon_trace_spans_dropped",
            "Trace spans dropped: the export queue was full, or their export failed or timed out.",
            [
                (
                    vec![("reason", "queue_full")],
                    load(&m.spans.dropped_queue_full),
                ),
                (
                    vec![("reason", "export_failed")],
                    load(&m.spans.dropped_export_failed),
                ),
            ],
        )?;
        f.counters(
            "pylon_connections_refused",
            "Connections closed at once for a limit: max_connections (all listeners), max_connections_per_ip.",
            [
                (
                    vec![("reason", "max_connections")],
                    load(&m.refused_max_connections),
                ),
                (
                    vec![("reason", "max_connections_per_ip")],
                    load(&m.refused_per_ip),
                ),
            ],
        )?;
        f.gauge(
            "pylon_connections_active",
            "Client connections open now (all listeners).",
            m.connections_active(),
        )?;
        f.gauge(
            "pylon_connections_parked",
            "Idle HTTP/1.1 keep-alive connections parked until their next request (no task, no buffers; counted in pylon_connections_active too).",
            load(&m.connections_parked),
        )?;
        f.gauge(
            "pylon_tunnels_active",
            "Tunnels (WebSocket, CONNECT) open now.",
            load(&m.tunnels_active),
        )?;
        f.gauge(
            "pylon_config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded (Unix time).",
            load(&m.config_loaded_at),
        )?;
        Ok(())
    }
}

/// Everything `/metrics` shows.
pub struct Exposition {
    pub metrics: Arc<Metrics>,
    pub stats: Arc<StatsRegistry>,
    pub runtime: Arc<ArcSwap<Runtime>>,
    /// STUN and TURN listeners' counters, by listener.
    pub turn: Vec<(String, Arc<crate::turn::TurnStats>)>,
    /// The ACME certificates listeners use now, challenges and on-demand names.
    pub acme: Arc<crate::tls::acme::AcmeRegistry>,
    /// OCSP staplers and their fetches.
    pub ocsp: Arc<crate::tls::ocsp::OcspRegistry>,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exposition")
    }
}

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let mut f = Family { enc: &mut enc };
        encode_global(&self.metrics, &mut f)?;
        let listeners = self.stats.listeners();
        let by_listener = |pick: fn(&super::stats::ListenerStats) -> u64| {
            listeners
                .iter()
                .map(move |(n, s)| (vec![("listener", n.as_str())], pick(s)))
        };
        f.gauges(
            "pylon_listener_connections_active",
            "Client connections open now, by listener.",
            by_listener(|s| s.connections_active()),
        )?;
        f.counters(
            "pylon_listener_connections",
            "Client connections accepted, by listener.",
            by_listener(|s| s.connections()),
        )?;
        f.gauges(
            "pylon_listener_requests_active",
            "Requests in flight, by listener.",
            by_listener(|s| s.requests_active()),
        )?;
        f.gauges(
            "pylon_listener_tunnels_active",
            "WebSocket and CONNECT tunnels open now, by listener.",
            by_listener(|s| load(&s.tunnels_active)),
        )?;
        f.counters(
            "pylon_listener_received_bytes",
            "Bytes read from clients, by listener (HTTP listeners, TLS included).",
            by_listener(|s| s.received_bytes()),
        )?;
        f.counters(
            "pylon_listener_sent_bytes",
            "Bytes written to clients, by listener (HTTP listeners, TLS included).",
            by_listener(|s| s.sent_bytes()),
        )?;
        f.counters(
            "pylon_listener_tls_handshakes",
            "TLS and QUIC handshakes completed, by listener and TLS version.",
            listeners.iter().flat_map(|(n, s)| {
                ["1.2", "1.3"]
                    .into_iter()
                    .zip(&s.tls_versions)
                    .map(|(v, c)| (vec![("listener", n.as_str()), ("version", v)], load(c)))
            }),
        )?;

        let routes = self.stats.routes();
        let classes = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];
        f.counters(
            "pylon_requests",
            "Requests answered, by listener, route, cluster and status class.",
            routes.iter().flat_map(|r| {
                (1..=5).chain(0..1).map(move |i| {
                    (
                        vec![
                            ("listener", &*r.listener),
                            ("route", &*r.route),
                            ("cluster", &*r.cluster),
                            ("class", classes[i]),
                        ],
                        r.responses(i),
                    )
                })
            }),
        )?;
        f.counters(
            "pylon_requests_incomplete",
            "Responses whose body did not reach the client whole (upstream died mid-body, client gone).",
            routes.iter().map(|r| {
                (
                    vec![
                        ("listener", &*r.listener),
                        ("route", &*r.route),
                        ("cluster", &*r.cluster),
                    ],
                    r.incomplete.load(Ordering::Relaxed),
                )
            }),
        )?;
        let by_route = |h: fn(&RouteStats) -> &Histogram| {
            routes.iter().map(move |r| {
                (
                    vec![
                        ("listener", &*r.listener),
                        ("route", &*r.route),
                        ("cluster", &*r.cluster),
                    ],
                    h(r),
                )
            })
        };
        f.histograms(
            "pylon_request_duration_seconds",
            "Time from a request's arrival to the end of its response body, by route.",
            by_route(|r| &r.latency),
        )?;
        f.histograms(
            "pylon_route_upstream_connect_seconds",
            "TCP connect time of new upstream connections, by route.",
            by_route(|r| &r.upstream_connect),
        )?;
        f.histograms(
            "pylon_route_upstream_first_byte_seconds",
            "Time from sending a request upstream to its response head, by route.",
            by_route(|r| &r.upstream_first_byte),
        )?;
        let clusters = self.stats.clusters();
        f.histograms(
            "pylon_upstream_response_seconds",
            "Time from sending a request upstream to its response head, by cluster.",
            clusters
                .iter()
                .map(|(n, s)| (vec![("cluster", n.as_str())], &s.upstream_latency)),
        )?;

        self.encode_clusters(&mut f)?;
        self.encode_caches(&mut f)?;
        self.encode_rate_limits(&mut f)?;
        self.encode_auth(&mut f)?;
        self.encode_splits(&mut f)?;
        self.encode_mirrors(&mut f)?;
        self.encode_turn(&mut f)?;
        self.encode_acme(&mut f)?;
        self.encode_ocsp(&mut f)?;
        encode_process(&mut f)
    }
}

impl Exposition {
    fn encode_clusters(&self, f: &mut Family<'_, '_>) -> std::fmt::Result {
        let rt = self.runtime.load_full();
        f.info(
            "pylon_config",
            "The configuration in force: its SHA-256 (first 16 hex digits).",
            &vec![("hash", rt.config_hash.as_str())],
        )?;
        let mut clusters: Vec<_> = rt.clusters.values().cloned().collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        type Pick = fn(&crate::cluster::ClusterRuntime) -> u64;
        let per_cluster: [(&str, &str, Pick); 7] = [
            ("pylon_cluster_retries", "Retries sent.", |c| {
                load(&c.retries)
            }),
            (
                "pylon_cluster_retry_budget_exhausted",
                "Retries refused by the retry budget.",
                |c| c.retry_budget_exhausted(),
            ),
            (
                "pylon_cluster_ejections",
                "Endpoints ejected by outlier detection.",
                |c| load(&c.ejections),
            ),
            (
                "pylon_cluster_health_changes",
                "Endpoints moved in or out of rotation by health checks.",
                |c| load(&c.health_changes),
            ),
            (
                "pylon_cluster_overloaded",
                "Requests refused by the circuit breaker.",
                |c| c.overloaded(),
            ),
            (
                "pylon_cluster_dns_updates",
                "Endpoint set changes from DNS.",
                |c| load(&c.dns_updates),
            ),
            (
                "pylon_cluster_dns_failures",
                "Failed DNS resolutions.",
                |c| load(&c.dns_failures),
            ),
        ];
        for (name, help, pick) in per_cluster {
            f.counters(
                name,
                help,
                clusters
                    .iter()
                    .map(|c| (vec![("cluster", &*c.name)], pick(c))),
            )?;
        }
        f.gauges(
            "pylon_cluster_upstream_connections",
            "Upstream connections open now.",
            clusters
                .iter()
                .map(|c| (vec![("cluster", &*c.name)], c.open_connections())),
        )?;
        let sets: Vec<_> = clusters.iter().map(|c| (c, c.endpoints())).collect();
        let ids: Vec<(&str, &crate::cluster::EndpointSet, usize)> = sets
            .iter()
            .flat_map(|(c, set)| (0..set.len()).map(move |i| (&*c.name, &**set, i)))
            .collect();
        fn labels<'a>(
            (c, set, i): &(&'a str, &'a crate::cluster::EndpointSet, usize),
        ) -> Labels<'a> {
            vec![("cluster", *c), ("endpoint", set.ids[*i].as_str())]
        }
        f.gauges(
            "pylon_endpoint_healthy",
            "1 when the endpoint is in rotation (health checks, ejection, drain), else 0.",
            ids.iter()
                .map(|e| (labels(e), u64::from(e.1.state.is_available(e.2)))),
        )?;
        f.gauges(
            "pylon_endpoint_drained",
            "1 when the endpoint was drained through the admin API.",
            ids.iter().map(|e| {
                (
                    labels(e),
                    u64::from(e.1.state.get(e.2).is_some_and(|s| s.is_drained())),
                )
            }),
        )?;
        f.gauges(
            "pylon_endpoint_requests_active",
            "Requests in flight on the endpoint.",
            ids.iter().map(|e| (labels(e), e.1.state.in_flight(e.2))),
        )?;
        f.gauges(
            "pylon_endpoint_latency_ewma_seconds",
            "Peak-EWMA of the endpoint's time to response head.",
            ids.iter()
                .map(|e| (labels(e), e.1.state.ewma_ns(e.2) as f64 / 1e9)),
        )
    }
}

/// The process's CPU time, resident memory and file descriptors, from /proc.
fn encode_process(f: &mut Family<'_, '_>) -> std::fmt::Result {
    let p = ProcessStats::read();
    if let Some(cpu) = p.cpu_seconds {
        let mut m = f.enc.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent.",
            None,
            MetricType::Counter,
        )?;
        m.encode_counter::<NoLabelSet, f64, f64>(&cpu, None)?;
    }
    if let Some(rss) = p.resident_bytes {
        f.gauge(
            "process_resident_memory_bytes",
            "Resident memory size.",
            rss,
        )?;
    }
    if let Some(n) = p.open_fds {
        f.gauge("process_open_fds", "Open file descriptors.", n)?;
    }
    if let Some(n) = p.max_fds {
        f.gauge("process_max_fds", "Limit on open file descriptors.", n)?;
    }
    f.gauge(
        "process_start_time_seconds",
        "Start time of the process (Unix time).",
        process_start_time(),
    )
}

/// A snapshot of what /proc says about this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    pub fn read() -> ProcessStats {
        // utime and stime (fields 14 and 15) in USER_HZ, which Linux fixes at 100.
        let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let after = s.rsplit_once(')')?.1;
                let fields: Vec<&str> = after.split_whitespace().collect();
                let utime: f64 = fields.get(11)?.parse().ok()?;
                let stime: f64 = fields.get(12)?.parse().ok()?;
                Some((utime + stime) / 100.0)
            });
        let resident_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib * 1024)
            });
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("Max open files"))?;
                line.split_whitespace().nth(3)?.parse().ok()
            });
        ProcessStats {
            cpu_seconds,
            resident_bytes,
            open_fds,
            max_fds,
        }
    }
}

/// When this process started (Unix time, seconds), fixed at first use.
pub fn process_start_time() -> f64 {
    static START: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    })
}

/// Renders a collector as OpenMetrics text.
pub fn render(collector: impl Collector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}
