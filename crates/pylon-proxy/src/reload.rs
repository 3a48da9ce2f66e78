//! Putting a configuration in force, at start and on reload. The [`ReloadPlan`] from
//! the config in force to the new one says what is kept, changed, added and removed;
//! the steps here execute it: find the sockets to keep (by listener and address, then
//! by address) and bind the others, build the runtime over the previous one, keep or
//! build the TLS acceptors, then commit (the runtime, the accept loops, the admin API,
//! the retired lives). An error before the commit changes nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pylon_config::diff::{BindKey, ReloadPlan};
use pylon_config::model::Listener;
use pylon_config::{Config, ConfigErrors};

use crate::runtime::{Retired, Runtime};
use crate::sockets::{LoopCtx, PreboundSocket, RunningSocket, Socket};
use crate::tls::server::ServerTls;
use crate::{BoundAddr, Proxy, ReloadReport, Sockets, StartError, admin, listener};

/// The TLS acceptors, by listener name.
type Acceptors = Vec<(String, Arc<ServerTls>)>;

/// One address of a listener and the socket that will serve it.
struct PlannedSocket<'a> {
    listener: &'a Listener,
    addr: SocketAddr,
    /// The UDP socket of an https listener's HTTP/3 (beside its TCP one).
    quic: bool,
    socket: SocketChoice,
}

enum SocketChoice {
    /// The running socket at this index goes on serving.
    Keep(usize),
    /// Bound now, or handed over.
    New(Socket),
}

impl Proxy {
    /// Puts `config` in force. `first`: at start (no previous runtime).
    pub(crate) async fn apply(
        &self,
        sockets: &mut Sockets,
        config: &Config,
        mut prebound: Vec<PreboundSocket>,
        first: bool,
    ) -> Result<ReloadReport, StartError> {
        let previous = self.runtime.load_full();
        let plan = pylon_config::diff(&previous.config, config);
        if !first {
            for line in plan.summary() {
                tracing::debug!("reload plan: {line}");
            }
        }
        let mut changes = Vec::new();
        // Sockets first: health checks of endpoints this process serves itself find
        // them listening.
        let planned = plan_sockets(&sockets.running, config, &mut prebound)?;
        let admin_socket = admin::prepare(sockets.admin.as_ref(), config, &mut prebound)?;
        for p in &prebound {
            tracing::warn!(
                address = ?p.socket.local_addr().ok(),
                listener = p.listener.as_deref().unwrap_or("-"),
                "a socket handed to Pylon matches no listener of the configuration; closed"
            );
        }
        let previous = (!first).then_some(&*previous);
        let (built, retired) = self
            .build_runtime(config, &plan, previous, first, &mut changes)
            .await?;
        let tls = prepare_tls(
            &sockets.tls,
            &self.shared.tls,
            config,
            &plan,
            first,
            &mut changes,
        )?;

        // Commit: the new runtime, then the loops.
        let hash = built.config_hash.clone();
        self.runtime.store(Arc::new(built));
        self.start_loops(sockets, planned, tls, &plan, first, &mut changes)?;
        if let Some(change) = admin::commit(&mut sockets.admin, admin_socket, self.this.clone()) {
            changes.push(change);
        }
        retire(&retired, config.server.reload_grace, &mut changes);
        if !first {
            self.forget_stats(config);
        }
        self.publish_bound(sockets);
        Ok(ReloadReport { hash, changes })
    }

    /// Builds the runtime over the previous one; clusters built anew get their first
    /// DNS answers before traffic arrives (a name that does not resolve leaves its
    /// cluster answering 503 no_endpoint until it does).
    async fn build_runtime(
        &self,
        config: &Config,
        plan: &ReloadPlan,
        previous: Option<&Runtime>,
        first: bool,
        changes: &mut Vec<String>,
    ) -> Result<(Runtime, Retired), StartError> {
        let (mut built, retired) = Runtime::build(config, &self.shared.stats, previous, plan)
            .map_err(|e| StartError::Config(ConfigErrors(e)))?;
        built.tracer = match (&config.tracing, previous.and_then(|p| p.tracer.as_ref())) {
            (Some(t), Some(old)) if old.serves(t) => Some(Arc::clone(old)),
            (Some(t), _) => {
                let tracer =
                    crate::observe::trace::Tracer::start(t, Arc::clone(&self.shared.metrics))
                        .map_err(|e| {
                            StartError::Config(ConfigErrors(vec![pylon_config::ConfigError {
                                file: String::new(),
                                line: 0,
                                column: 0,
                                key: "tracing".into(),
                                message: e.to_string(),
                            }]))
                        })?;
                if !first {
                    changes.push(format!("tracing: exporting to {}", t.endpoint));
                }
                Some(tracer)
            }
            (None, _) => None,
        };
        for c in &config.clusters {
            if plan.clusters.is_kept(&c.name) {
                continue;
            }
            let Some(c) = built.clusters.get(&c.name) else {
                continue;
            };
            if !first {
                changes.push(format!("cluster {}: built anew", c.name));
            }
            let limit = c.dns_timeout().saturating_mul(2) + Duration::from_secs(1);
            if !c.wait_dns_ready(limit).await {
                tracing::warn!(cluster = %c.name, "DNS endpoints not resolved yet; serving without them");
            }
        }
        Ok((built, retired))
    }

    /// Serves the planned sockets: a kept one restarts its accept loop unless the plan
    /// keeps its address for the listener it served (with the same TLS acceptor); a
    /// new one starts; the running ones left over close and their connections drain.
    fn start_loops(
        &self,
        sockets: &mut Sockets,
        planned: Vec<PlannedSocket<'_>>,
        tls: Acceptors,
        plan: &ReloadPlan,
        first: bool,
        changes: &mut Vec<String>,
    ) -> Result<(), StartError> {
        let ctx = LoopCtx {
            runtime: Arc::clone(&self.runtime),
            shared: Arc::clone(&self.shared),
            tracker: Arc::clone(&self.tracker),
        };
        let tls_of = |name: &str| {
            tls.iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| Arc::clone(t))
        };
        let mut old: Vec<Option<RunningSocket>> = sockets.running.drain(..).map(Some).collect();
        let mut running = Vec::new();
        for PlannedSocket {
            listener: l,
            addr,
            quic,
            socket,
        } in planned
        {
            let t = tls_of(&l.name);
            let bind_err = |source| StartError::Bind {
                listener: l.name.clone(),
                addr,
                source,
            };
            match socket {
                SocketChoice::Keep(i) => {
                    let Some(mut r) = old[i].take() else { continue };
                    let same_tls = match (&r.tls, &t) {
                        (None, None) => true,
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        _ => false,
                    };
                    let key = if quic {
                        BindKey::quic(l, addr)
                    } else {
                        BindKey::new(l, addr)
                    };
                    let kept = r.listener == l.name && plan.binds.is_kept(&key);
                    if !kept || !same_tls {
                        r.restart(l, t, &ctx).map_err(bind_err)?;
                        changes.push(format!(
                            "listener {} on {}: new settings, same socket",
                            l.name, r.local
                        ));
                    }
                    running.push(r);
                }
                SocketChoice::New(socket) => {
                    let r =
                        RunningSocket::start(l, addr, socket, quic, t, &ctx).map_err(bind_err)?;
                    if !first {
                        let what = if quic { " (HTTP/3, UDP)" } else { "" };
                        changes.push(format!("listener {} on {}{what}: bound", l.name, r.local));
                    }
                    running.push(r);
                }
            }
        }
        for r in old.into_iter().flatten() {
            r.close();
            changes.push(format!(
                "listener {} on {}: closed, its connections drain",
                r.listener, r.local
            ));
        }
        sockets.running = running;
        sockets.tls = tls;
        Ok(())
    }

    /// Drops the counters of listeners, routes and clusters no longer configured.
    fn forget_stats(&self, config: &Config) {
        let listeners: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        let rt = self.runtime.load_full();
        let turn = |name: &str| {
            config
                .listeners
                .iter()
                .any(|l| l.name == name && l.stun.is_some())
        };
        self.shared.turn.retain(&turn);
        self.shared.stats.retain(
            &|l| listeners.contains(&l),
            &|l, r, c| {
                rt.listener(l).is_some_and(|lr| {
                    (r.is_empty() && c.is_empty())
                        || lr
                            .router
                            .route_named(r)
                            .is_some_and(|x| &*x.stats.cluster == c)
                })
            },
            &|c| rt.clusters.contains_key(c),
        );
    }

    /// Publishes the addresses now served.
    fn publish_bound(&self, sockets: &Sockets) {
        let bound: Vec<BoundAddr> = sockets
            .running
            .iter()
            .map(|r| BoundAddr {
                listener: r.listener.clone(),
                addr: r.local,
                scheme: r.scheme(),
            })
            .collect();
        let admin = sockets.admin.as_ref().map(|a| a.local);
        self.shared.own_addrs.store(Arc::new(
            bound.iter().map(|b| b.addr).chain(admin).collect(),
        ));
        self.bound.store(Arc::new(bound));
    }
}

/// A socket for every address of every listener (and a UDP one beside each address of
/// an https listener with HTTP/3): a running one kept (same listener and address, else
/// the same address unless its port is 0), one handed over, or one bound now.
fn plan_sockets<'a>(
    running: &[RunningSocket],
    config: &'a Config,
    prebound: &mut Vec<PreboundSocket>,
) -> Result<Vec<PlannedSocket<'a>>, StartError> {
    let mut claimed = vec![false; running.len()];
    let mut planned = Vec::new();
    for l in &config.listeners {
        for &addr in &l.binds {
            let udp = l.main_is_udp();
            let socket = plan_socket(running, &mut claimed, prebound, l, addr, udp, addr)?;
            // HTTP/3 takes the same port on UDP as its TCP socket got.
            let port = match &socket {
                SocketChoice::Keep(i) => running[*i].local.port(),
                SocketChoice::New(s) => s.local_addr().map_or(addr.port(), |a| a.port()),
            };
            planned.push(PlannedSocket {
                listener: l,
                addr,
                quic: false,
                socket,
            });
            // HTTP/3, STUN and TURN over UDP take the same port as the TCP socket.
            if l.udp_beside_tcp() {
                let bind = SocketAddr::new(addr.ip(), port);
                let socket = plan_socket(running, &mut claimed, prebound, l, addr, true, bind)?;
                planned.push(PlannedSocket {
                    listener: l,
                    addr,
                    quic: true,
                    socket,
                });
            }
        }
    }
    Ok(planned)
}

/// The socket for `addr` of `l` (`udp`: its UDP one): kept, handed over, or bound now
/// at `bind`.
fn plan_socket(
    running: &[RunningSocket],
    claimed: &mut [bool],
    prebound: &mut Vec<PreboundSocket>,
    l: &Listener,
    addr: SocketAddr,
    udp: bool,
    bind: SocketAddr,
) -> Result<SocketChoice, StartError> {
    // A UDP socket that is not the listener's own is the one beside its TCP socket.
    let quic = udp && !l.main_is_udp();
    if let Some(i) = find_running(running, claimed, l, addr, udp, quic) {
        claimed[i] = true;
        return Ok(SocketChoice::Keep(i));
    }
    Ok(SocketChoice::New(
        match take_prebound(prebound, l, addr, udp) {
            Some(s) => s,
            None => bind_socket(udp, bind).map_err(|source| StartError::Bind {
                listener: l.name.clone(),
                addr: bind,
                source,
            })?,
        },
    ))
}

/// An unclaimed running socket for `addr` of `l`: its own first, then another
/// listener's on the same address (unless the port is 0: each such bind is its own).
fn find_running(
    running: &[RunningSocket],
    claimed: &[bool],
    l: &Listener,
    addr: SocketAddr,
    udp: bool,
    quic: bool,
) -> Option<usize> {
    // A QUIC endpoint keeps its socket while its connections drain: its socket serves
    // HTTP/3 again or nothing.
    let fits = |i: usize| {
        let r = &running[i];
        !claimed[i] && r.configured == addr && r.socket.is_udp() == udp && r.quic == quic
    };
    (0..running.len())
        .find(|&i| fits(i) && running[i].listener == l.name)
        .or_else(|| (0..running.len()).find(|&i| fits(i) && addr.port() != 0))
}

/// A socket handed over for `addr` of `l`: the one it served first, then one for the
/// same address (configured or bound, unless the port is 0).
fn take_prebound(
    prebound: &mut Vec<PreboundSocket>,
    l: &Listener,
    addr: SocketAddr,
    udp: bool,
) -> Option<Socket> {
    prebound
        .iter()
        .position(|p| {
            p.socket.is_udp() == udp
                && p.configured == addr
                && p.listener.as_deref() == Some(l.name.as_str())
        })
        .or_else(|| {
            prebound.iter().position(|p| {
                p.socket.is_udp() == udp
                    && addr.port() != 0
                    && (p.configured == addr || p.socket.local_addr().ok() == Some(addr))
            })
        })
        .map(|i| prebound.swap_remove(i).socket)
}

/// Binds one address of a listener.
fn bind_socket(udp: bool, addr: SocketAddr) -> std::io::Result<Socket> {
    Ok(if udp {
        Socket::Udp(listener::bind_udp(addr)?)
    } else {
        Socket::Tcp(listener::bind(addr)?)
    })
}

/// The TLS acceptors: the ones the plan keeps go on (their files are read again on a
/// reload), the others are built. Fails with every file problem.
fn prepare_tls(
    current: &Acceptors,
    services: &crate::tls::TlsServices,
    config: &Config,
    plan: &ReloadPlan,
    first: bool,
    changes: &mut Vec<String>,
) -> Result<Acceptors, StartError> {
    let mut tls = Vec::new();
    let mut errors = Vec::new();
    for l in &config.listeners {
        let Some(t) = &l.tls else { continue };
        let kept = current
            .iter()
            .find(|(n, _)| *n == l.name && plan.certificates.is_kept(n))
            .map(|(_, s)| Arc::clone(s));
        match kept {
            Some(s) => {
                if !first {
                    match s.reload() {
                        Ok(true) => changes.push(format!(
                            "listener {}: certificates changed (new handshakes use them)",
                            l.name
                        )),
                        Ok(false) => {}
                        Err(e) => errors.extend(e),
                    }
                }
                tls.push((l.name.clone(), s));
            }
            None => match ServerTls::new(t.clone(), services) {
                Ok(s) => tls.push((l.name.clone(), Arc::new(s))),
                Err(e) => errors.extend(e),
            },
        }
    }
    if errors.is_empty() {
        Ok(tls)
    } else {
        Err(StartError::Config(ConfigErrors(errors)))
    }
}

/// Retires the lives the new runtime did not keep: their long-lived connections get
/// the reload grace period, then close.
fn retire(retired: &Retired, grace: Duration, changes: &mut Vec<String>) {
    for (life, name) in retired.lives.iter().zip(&retired.names) {
        life.retire_after(grace);
        changes.push(match life.connections() {
            0 => format!("{name}: removed or changed"),
            n => format!(
                "{name}: removed or changed; its {n} long-lived connection(s) close in {grace:?}"
            ),
        });
    }
}
