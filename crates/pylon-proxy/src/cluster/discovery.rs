//! DNS discovery: resolves a cluster's host-name (A/AAAA) and SRV endpoints with
//! hickory-resolver, again whenever the records' TTL runs out (within `min_ttl` and
//! `max_ttl`), and swaps in a new endpoint set when the answer changed. Endpoints that
//! stay keep their pools and health; requests in flight finish where they are. A name
//! that fails to resolve (timeout, SERVFAIL, no records) keeps its last known addresses
//! and is retried with a growing delay.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use pylon_config::ConfigError;
use pylon_config::model::{Dns, Endpoint, EndpointAddress, IpFamily};

use super::{ClusterRuntime, EndpointSpec};

/// Longest wait between retries of a failing resolution.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Starts the cluster's discovery task; it ends with the cluster.
pub(super) fn spawn(cluster: &Arc<ClusterRuntime>) -> Result<(), ConfigError> {
    let resolver = resolver(&cluster.config.dns).map_err(|e| {
        ConfigError::general(format!(
            "cluster {}: cannot set up DNS resolution: {e}",
            cluster.name
        ))
    })?;
    tokio::spawn(run(Arc::downgrade(cluster), resolver));
    Ok(())
}

fn resolver(dns: &Dns) -> Result<TokioResolver, String> {
    let strategy = match dns.family {
        IpFamily::Any => LookupIpStrategy::Ipv4AndIpv6,
        IpFamily::V4 => LookupIpStrategy::Ipv4Only,
        IpFamily::V6 => LookupIpStrategy::Ipv6Only,
    };
    build_resolver(
        &dns.resolvers,
        dns.timeout,
        strategy,
        "[clusters.dns] resolvers",
    )
}

/// A hickory resolver asking `servers` (`ip:port`, UDP then TCP for truncated answers),
/// or the system's configuration when there are none (`key` names the setting to
/// change when that is unusable); two attempts of `timeout` each.
pub(crate) fn build_resolver(
    servers: &[std::net::SocketAddr],
    timeout: std::time::Duration,
    strategy: LookupIpStrategy,
    key: &str,
) -> Result<TokioResolver, String> {
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| {
            format!("the system configuration (/etc/resolv.conf) is unusable ({e}); set {key}")
        })?
    } else {
        let servers = servers
            .iter()
            .map(|a| {
                let mut udp = ConnectionConfig::udp();
                udp.port = a.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = a.port();
                NameServerConfig::new(a.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    opts.timeout = timeout;
    opts.attempts = 2;
    opts.ip_strategy = strategy;
    builder.build().map_err(|e| e.to_string())
}

/// What one configured endpoint resolved to, and until when the answer holds.
struct Answer {
    endpoints: Vec<EndpointSpec>,
    valid_until: Instant,
}

async fn run(cluster: Weak<ClusterRuntime>, resolver: TokioResolver) {
    let Some((entries, dns, name)) = cluster.upgrade().map(|c| {
        (
            c.config.endpoints.clone(),
            c.config.dns.clone(),
            c.name.clone(),
        )
    }) else {
        return;
    };
    // The last known answer of each configured endpoint.
    let mut known: Vec<Vec<EndpointSpec>> = vec![Vec::new(); entries.len()];
    let mut failed_rounds = 0u32;
    loop {
        let mut next = Instant::now() + dns.max_ttl;
        let mut failures = 0;
        for (i, entry) in entries.iter().enumerate() {
            let answer = tokio::time::timeout(dns.timeout, resolve(&resolver, entry))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", dns.timeout)));
            match answer {
                Ok(a) => {
                    next = next.min(a.valid_until);
                    known[i] = a.endpoints;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(
                        cluster = %name,
                        endpoint = %entry.address,
                        error = %e,
                        kept = known[i].len(),
                        "DNS resolution failed; keeping the last known addresses"
                    );
                }
            }
        }
        let mut specs: Vec<EndpointSpec> = Vec::new();
        for s in known.iter().flatten() {
            if !specs.iter().any(|x| x.address == s.address) {
                specs.push(s.clone());
            }
        }
        let Some(c) = cluster.upgrade() else { return };
        c.dns_failures.fetch_add(failures, Ordering::Relaxed);
        if c.replace_endpoints(&specs) {
            c.dns_updates.fetch_add(1, Ordering::Relaxed);
            let list: Vec<String> = specs.iter().map(|s| s.address.to_string()).collect();
            tracing::info!(cluster = %name, endpoints = %list.join(", "), "endpoints changed after DNS resolution");
        }
        c.dns_ready.send_replace(true);
        drop(c);
        let wait = if failures > 0 {
            failed_rounds = failed_rounds.saturating_add(1);
            dns.min_ttl
                .max(Duration::from_millis(100))
                .saturating_mul(1 << failed_rounds.min(8))
                .min(MAX_RETRY_DELAY.min(dns.max_ttl))
        } else {
            failed_rounds = 0;
            next.saturating_duration_since(Instant::now())
                .clamp(dns.min_ttl, dns.max_ttl)
        };
        tokio::time::sleep(wait).await;
    }
}

async fn resolve(resolver: &TokioResolver, entry: &Endpoint) -> Result<Answer, String> {
    match &entry.address {
        EndpointAddress::Socket(address) => Ok(Answer {
            endpoints: vec![EndpointSpec {
                address: *address,
                weight: entry.weight,
                host: None,
            }],
            valid_until: Instant::now() + Duration::from_secs(86_400),
        }),
        EndpointAddress::Host { name, port } => {
            resolve_host(resolver, name, *port, entry.weight).await
        }
        EndpointAddress::Srv { name } => resolve_srv(resolver, name).await,
    }
}

async fn resolve_host(
    resolver: &TokioResolver,
    name: &str,
    port: u16,
    weight: u32,
) -> Result<Answer, String> {
    let lookup = resolver.lookup_ip(name).await.map_err(|e| e.to_string())?;
    let host: Arc<str> = Arc::from(name);
    let mut endpoints: Vec<EndpointSpec> = lookup
        .iter()
        .map(|ip| EndpointSpec {
            address: SocketAddr::new(ip, port),
            weight,
            host: Some(Arc::clone(&host)),
        })
        .collect();
    if endpoints.is_empty() {
        return Err(format!("no addresses for {name}"));
    }
    // A stable order, so a rotated answer is not a change.
    endpoints.sort_by_key(|e| e.address);
    endpoints.dedup_by_key(|e| e.address);
    Ok(Answer {
        endpoints,
        valid_until: lookup.valid_until(),
    })
}

/// SRV records (RFC 2782): the lowest priority present, each target resolved (from the
/// answer's additional records when there, else by a lookup) with the record's port
/// and weight.
async fn resolve_srv(resolver: &TokioResolver, name: &str) -> Result<Answer, String> {
    let lookup = resolver.srv_lookup(name).await.map_err(|e| e.to_string())?;
    let records: Vec<_> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) if !srv.target.is_root() => Some(srv.clone()),
            _ => None,
        })
        .collect();
    let Some(priority) = records.iter().map(|s| s.priority).min() else {
        return Err(format!("no SRV records for {name}"));
    };
    let mut valid_until = lookup.valid_until();
    let mut endpoints = Vec::new();
    for srv in records.iter().filter(|s| s.priority == priority) {
        let target = srv.target.to_ascii();
        let mut ips: Vec<std::net::IpAddr> = lookup
            .additionals()
            .iter()
            .filter(|r| r.name == srv.target)
            .filter_map(|r| match &r.data {
                RData::A(a) if matches!(r.record_type(), RecordType::A) => Some(a.0.into()),
                RData::AAAA(a) => Some(a.0.into()),
                _ => None,
            })
            .collect();
        if ips.is_empty() {
            let found = resolver
                .lookup_ip(srv.target.clone())
                .await
                .map_err(|e| format!("SRV target {target}: {e}"))?;
            valid_until = valid_until.min(found.valid_until());
            ips = found.iter().collect();
        }
        let host: Arc<str> = Arc::from(target.trim_end_matches('.'));
        for ip in ips {
            endpoints.push(EndpointSpec {
                address: SocketAddr::new(ip, srv.port),
                weight: u32::from(srv.weight).clamp(1, 10_000),
                host: Some(Arc::clone(&host)),
            });
        }
    }
    if endpoints.is_empty() {
        return Err(format!("no addresses for the SRV targets of {name}"));
    }
    endpoints.sort_by_key(|e| e.address);
    endpoints.dedup_by_key(|e| e.address);
    Ok(Answer {
        endpoints,
        valid_until,
    })
}
