//! The listening sockets of a running Pylon and the loops accepting on them, across
//! reloads: a socket whose listener keeps its address is never closed (a reload that
//! changes the listener's settings starts a new accept loop on the same socket, and
//! the old loop stops); a removed address stops accepting and its connections drain.
//! Also what a binary upgrade hands over: every socket, with the listener it serves.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pylon_config::model::{self, ListenerProtocol};
use tokio::sync::watch;

use crate::http::server_h3::{H3Deps, H3Listener};
use crate::listener::{AcceptLoop, ConnTracker};
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::tls::server::ServerTls;

/// A bound socket, not yet served.
pub enum Socket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl Socket {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Socket::Tcp(s) => s.local_addr(),
            Socket::Udp(s) => s.local_addr(),
        }
    }

    pub fn is_udp(&self) -> bool {
        matches!(self, Socket::Udp(_))
    }

    pub fn try_clone(&self) -> std::io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
            Socket::Udp(s) => Socket::Udp(s.try_clone()?),
        })
    }

    /// The file descriptor, for handing the socket to a new process.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            Socket::Tcp(s) => s.as_fd(),
            Socket::Udp(s) => s.as_fd(),
        }
    }
}

/// A socket bound before start (by a test, or handed over by the Pylon being
/// upgraded), with the listener and configured address it served.
pub struct PreboundSocket {
    pub listener: Option<String>,
    pub configured: SocketAddr,
    pub socket: Socket,
}

/// A socket being served.
pub(crate) struct RunningSocket {
    pub listener: String,
    /// The address as configured (its port may be 0).
    pub configured: SocketAddr,
    pub local: SocketAddr,
    pub protocol: ListenerProtocol,
    /// The listener's settings its accept loop was started with.
    pub config: model::Listener,
    pub tls: Option<Arc<ServerTls>>,
    /// Our own handle on the socket (the loop holds another).
    pub socket: Socket,
    /// A UDP socket beside the listener's TCP one on the same port: an https
    /// listener's HTTP/3, or STUN and TURN over UDP beside TCP.
    pub quic: bool,
    /// Its QUIC endpoint, which outlives reloads that keep the address.
    h3: Option<Arc<H3Listener>>,
    /// Stops the accept loop.
    pub stop: watch::Sender<bool>,
    /// Asks the socket's connections to finish (removed listener, shutdown).
    pub drain: watch::Sender<bool>,
}

/// What every loop needs.
pub(crate) struct LoopCtx {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub shared: Arc<Shared>,
    pub tracker: Arc<ConnTracker>,
}

impl RunningSocket {
    /// Starts serving `socket` for `listener`.
    pub fn start(
        listener: &model::Listener,
        configured: SocketAddr,
        socket: Socket,
        quic: bool,
        tls: Option<Arc<ServerTls>>,
        ctx: &LoopCtx,
    ) -> std::io::Result<RunningSocket> {
        let local = socket.local_addr()?;
        let mut running = RunningSocket {
            listener: listener.name.clone(),
            configured,
            local,
            protocol: listener.protocol,
            config: listener.clone(),
            tls,
            socket,
            quic,
            h3: None,
            stop: watch::Sender::new(false),
            drain: watch::Sender::new(false),
        };
        running.spawn_loop(ctx)?;
        Ok(running)
    }

    /// Replaces the accept loop with one for `listener`'s new settings, on the same
    /// socket; connections already accepted go on as they are.
    pub fn restart(
        &mut self,
        listener: &model::Listener,
        tls: Option<Arc<ServerTls>>,
        ctx: &LoopCtx,
    ) -> std::io::Result<()> {
        self.listener = listener.name.clone();
        self.protocol = listener.protocol;
        self.config = listener.clone();
        self.tls = tls;
        // QUIC connections live in the endpoint: it stays, with the new settings.
        if let (Some(h3), Some(tls)) = (&self.h3, &self.tls) {
            h3.update(listener, Arc::clone(tls));
            return Ok(());
        }
        let _ = self.stop.send(true);
        self.stop = watch::Sender::new(false);
        self.spawn_loop(ctx)
    }

    /// Stops accepting and asks the connections to finish.
    pub fn close(&self) {
        let _ = self.stop.send(true);
        let _ = self.drain.send(true);
        if let Some(h3) = &self.h3 {
            h3.close();
        }
    }

    /// Its HTTP/3 endpoint, when it serves one.
    pub fn h3(&self) -> Option<&Arc<H3Listener>> {
        self.h3.as_ref()
    }

    fn spawn_loop(&mut self, ctx: &LoopCtx) -> std::io::Result<()> {
        let name: Arc<str> = Arc::from(self.listener.as_str());
        let stop = self.stop.subscribe();
        if self.config.stun.is_some() {
            return self.spawn_turn_loop(ctx, stop);
        }
        match self.socket.try_clone()? {
            Socket::Udp(u) if self.quic => {
                let tls = self.tls.clone().ok_or_else(|| {
                    std::io::Error::other("HTTP/3 needs the listener's TLS settings")
                })?;
                let deps = H3Deps {
                    runtime: Arc::clone(&ctx.runtime),
                    shared: Arc::clone(&ctx.shared),
                    tracker: Arc::clone(&ctx.tracker),
                };
                self.h3 = Some(H3Listener::start(&self.config, u, tls, deps)?);
            }
            Socket::Udp(u) => {
                u.set_nonblocking(true)?;
                let socket = tokio::net::UdpSocket::from_std(u)?;
                tokio::spawn(
                    crate::l4::udp::UdpProxyLoop {
                        socket: Arc::new(socket),
                        name,
                        runtime: Arc::clone(&ctx.runtime),
                        shared: Arc::clone(&ctx.shared),
                        shutdown: stop,
                    }
                    .run(),
                );
            }
            Socket::Tcp(t) => {
                t.set_nonblocking(true)?;
                // Set or cleared on every start: a reload may change it.
                crate::tcp_options::defer_accept(&t, self.config.defer_accept);
                let listener = tokio::net::TcpListener::from_std(t)?;
                if self.protocol == ListenerProtocol::Tcp {
                    tokio::spawn(
                        crate::l4::tcp::TcpProxyLoop {
                            listener,
                            name,
                            runtime: Arc::clone(&ctx.runtime),
                            shared: Arc::clone(&ctx.shared),
                            tracker: Arc::clone(&ctx.tracker),
                            shutdown: stop,
                            tls: self.tls.clone(),
                        }
                        .run(),
                    );
                } else {
                    tokio::spawn(
                        AcceptLoop {
                            listener,
                            name,
                            runtime: Arc::clone(&ctx.runtime),
                            shared: Arc::clone(&ctx.shared),
                            tracker: Arc::clone(&ctx.tracker),
                            stop,
                            drain: self.drain.subscribe(),
                            tls: self.tls.clone(),
                            alt_svc: self.config.http3.as_ref().and_then(|h3| {
                                crate::http::server_h3::alt_svc(self.local.port(), h3)
                            }),
                        }
                        .run(),
                    );
                }
            }
        }
        Ok(())
    }

    /// A STUN or TURN listener's loop on this socket, with the listener's service.
    fn spawn_turn_loop(
        &mut self,
        ctx: &LoopCtx,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let service = ctx
            .shared
            .turn
            .service(&self.config, &ctx.shared)
            .ok_or_else(|| std::io::Error::other("not a STUN or TURN listener"))?;
        match self.socket.try_clone()? {
            Socket::Udp(u) => {
                u.set_nonblocking(true)?;
                let socket = tokio::net::UdpSocket::from_std(u)?;
                tokio::spawn(
                    crate::turn::TurnUdpLoop {
                        socket: Arc::new(socket),
                        service,
                        shutdown: stop,
                    }
                    .run(),
                );
            }
            Socket::Tcp(t) => {
                t.set_nonblocking(true)?;
                tokio::spawn(
                    crate::turn::TurnTcpLoop {
                        listener: tokio::net::TcpListener::from_std(t)?,
                        service,
                        name: Arc::from(self.listener.as_str()),
                        runtime: Arc::clone(&ctx.runtime),
                        shared: Arc::clone(&ctx.shared),
                        tracker: Arc::clone(&ctx.tracker),
                        tls: self.tls.clone(),
                        idle_timeout: self.config.limits.idle_timeout,
                        shutdown: stop,
                        drain: self.drain.subscribe(),
                    }
                    .run(),
                );
            }
        }
        Ok(())
    }

    pub fn scheme(&self) -> &'static str {
        if let Some(stun) = &self.config.stun {
            let tls = stun.serves(pylon_config::model::TurnTransport::Tls);
            return match (self.socket.is_udp(), tls, self.protocol) {
                (true, _, ListenerProtocol::Turn) => "turn+udp",
                (true, _, _) => "stun+udp",
                (false, true, ListenerProtocol::Turn) => "turns",
                (false, true, _) => "stuns",
                (false, false, ListenerProtocol::Turn) => "turn+tcp",
                (false, false, _) => "stun+tcp",
            };
        }
        if self.quic {
            return "h3";
        }
        match self.protocol {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Https => "https",
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::Udp => "udp",
            ListenerProtocol::Stun => "stun",
            ListenerProtocol::Turn => "turn",
        }
    }
}
