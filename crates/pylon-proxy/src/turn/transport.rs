//! How STUN and TURN messages arrive: datagrams on a UDP socket, or a stream of
//! messages and ChannelData (padded to 4 bytes, RFC 8656 §12.5) on TCP connections,
//! over TLS when the listener has certificates. One allocation per TCP connection; it
//! ends when the connection does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};

use super::allocation::ClientLink;
use super::{Dropped, FiveTuple, TurnService};
use crate::tls::server::ServerTls;

/// Largest message on a stream: a STUN header and the most its length can say.
const MAX_FRAME: usize = 20 + 65_535;
/// Answers and relayed data queued for one TCP client; beyond them data is dropped.
const TCP_QUEUE: usize = 256;

/// STUN and TURN over UDP.
pub struct TurnUdpLoop {
    pub socket: Arc<UdpSocket>,
    pub service: Arc<TurnService>,
    pub shutdown: watch::Receiver<bool>,
}

impl TurnUdpLoop {
    pub async fn run(mut self) {
        let local = self
            .socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let mut buf = vec![0u8; 65_536];
        loop {
            let received = tokio::select! {
                r = self.socket.recv_from(&mut buf) => r,
                _ = self.shutdown.changed() => return,
            };
            let (n, client) = match received {
                Ok(r) => r,
                // ICMP errors of earlier sends surface here on some systems.
                Err(_) => continue,
            };
            let five = FiveTuple {
                client,
                server: local,
                tcp: false,
            };
            let socket = &self.socket;
            let answer = self.service.handle(&buf[..n], five, || {
                ClientLink::Udp(Arc::clone(socket), client)
            });
            if let Some(a) = answer {
                let _ = socket.try_send_to(&a, client);
            }
        }
    }
}

/// STUN and TURN over TCP, or TLS.
pub struct TurnTcpLoop {
    pub listener: TcpListener,
    pub service: Arc<TurnService>,
    /// The listener's name, runtime, services and connection tracker: each connection
    /// is counted (`[server] max_connections`, `max_connections_per_ip`, the listener's
    /// connection metrics, a graceful stop's wait) as HTTP and Layer 4 ones are.
    pub name: Arc<str>,
    pub runtime: Arc<arc_swap::ArcSwap<crate::runtime::Runtime>>,
    pub shared: Arc<crate::shared::Shared>,
    pub tracker: Arc<crate::listener::ConnTracker>,
    pub tls: Option<Arc<ServerTls>>,
    /// A connection with no allocation and nothing received for this long is closed.
    pub idle_timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
    /// Closes the connections (the listener was removed, or Pylon stops).
    pub drain: watch::Receiver<bool>,
}

impl TurnTcpLoop {
    pub async fn run(mut self) {
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = self.shutdown.changed() => return,
            };
            let (stream, client) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = %self.service.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let runtime = self.runtime.load();
            let guard = runtime
                .listener(&self.name)
                .and_then(|lr| self.tracker.admit(&runtime, &lr, client.ip()));
            let Some(guard) = guard else {
                // Closed at once: a limit refused it (counted).
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().unwrap_or(client);
            let five = FiveTuple {
                client,
                server: local,
                tcp: true,
            };
            let service = Arc::clone(&self.service);
            let tls = self.tls.clone();
            let idle = self.idle_timeout;
            let drain = self.drain.clone();
            let metrics = Arc::clone(&self.shared.metrics);
            tokio::spawn(async move {
                let _guard = guard;
                match tls {
                    None => connection(stream, five, service, idle, drain).await,
                    Some(tls) => {
                        let accept = tls.acceptor().accept(stream);
                        match tokio::time::timeout(tls.settings.handshake_timeout, accept).await {
                            Ok(Ok(s)) => {
                                metrics
                                    .tls_handshakes
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                connection(s, five, service, idle, drain).await
                            }
                            _ => {
                                metrics
                                    .tls_handshake_failures
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                tracing::debug!(%client, "TURN TLS handshake failed");
                            }
                        }
                    }
                }
            });
        }
    }
}

/// One client's connection: messages in, answers and relayed data out (through a
/// queue, so that a slow client never holds up the relay).
async fn connection<S>(
    stream: S,
    five: FiveTuple,
    service: Arc<TurnService>,
    idle: Duration,
    mut drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Bytes>(TCP_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut buf = BytesMut::with_capacity(4096);
    'read: loop {
        let read = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = tokio::time::sleep(idle) => {
                if service.allocation(&five).is_some() {
                    continue;
                }
                break;
            }
            _ = drain.changed() => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            let len = match frame_len(&buf) {
                Frame::Incomplete => break,
                Frame::Bad => {
                    service.stats().dropped(Dropped::Malformed);
                    break 'read;
                }
                Frame::Complete(n) => n,
            };
            let frame = buf.split_to(len);
            let link = || ClientLink::Tcp(tx.clone());
            if let Some(answer) = service.handle(&frame, five, link)
                && tx.send(answer).await.is_err()
            {
                break 'read;
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        if buf.is_empty() && buf.capacity() > 64 * 1024 {
            buf = BytesMut::with_capacity(4096);
        }
    }
    service.connection_closed(&five);
    drop(tx);
    let _ = writer.await;
}

enum Frame {
    Incomplete,
    Complete(usize),
    /// Neither STUN nor ChannelData: the stream cannot be followed.
    Bad,
}

/// The length of the message at the start of `buf`.
fn frame_len(buf: &[u8]) -> Frame {
    if buf.len() < 4 {
        return Frame::Incomplete;
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let total = match buf[0] & 0xC0 {
        // ChannelData, padded to a multiple of 4 over a stream.
        0x40 => 4 + len.div_ceil(4) * 4,
        0x00 => 20 + len,
        _ => return Frame::Bad,
    };
    if total > MAX_FRAME {
        return Frame::Bad;
    }
    if buf.len() < total {
        Frame::Incomplete
    } else {
        Frame::Complete(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_on_a_stream() {
        assert!(matches!(frame_len(&[0, 1]), Frame::Incomplete));
        let mut stun = vec![0u8, 1, 0, 8];
        stun.extend_from_slice(&[0; 24]);
        assert!(matches!(frame_len(&stun), Frame::Complete(28)));
        assert!(matches!(frame_len(&stun[..27]), Frame::Incomplete));
        // ChannelData of 5 bytes takes 8 with its padding.
        let cd = [0x40u8, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0];
        assert!(matches!(frame_len(&cd), Frame::Complete(12)));
        assert!(matches!(frame_len(&cd[..11]), Frame::Incomplete));
        assert!(matches!(frame_len(&[0x80, 0, 0, 0]), Frame::Bad));
    }
}
