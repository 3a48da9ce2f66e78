//! Zero-downtime binary upgrade: the running Pylon listens on a Unix socket
//! (`[server] upgrade_socket`); a new Pylon started with `--upgrade` connects, receives
//! every listening socket (SCM_RIGHTS) with a manifest naming the listener and the
//! configured address of each, starts serving on them, and says `ready`. Only then
//! does the old process stop accepting (and says `gone`, which the new one waits for
//! before it reports itself ready) and drain. Both accept on the same sockets
//! meanwhile, so no connection is refused. QUIC is the exception: its connections
//! live in the process that holds them and cannot move, so the old process closes
//! them at once and leaves the UDP socket to the new one (`H3Listener::release`);
//! their clients connect again.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::Proxy;
use crate::sockets::{PreboundSocket, Socket};

/// Most file descriptors one SCM_RIGHTS message carries on Linux.
const MAX_FDS: usize = 253;
/// Largest manifest.
const MAX_MANIFEST: usize = 256 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    pid: u32,
    sockets: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    listener: Option<String>,
    configured: SocketAddr,
    udp: bool,
}

/// The new process's side of a handover in progress.
pub struct Handover {
    stream: UnixStream,
    /// The old process.
    pub from_pid: u32,
}

impl Handover {
    /// Tells the old process that this one serves, and waits (briefly) until it has
    /// stopped accepting: from then on every new connection reaches this process. An
    /// old process that does not say so (an older Pylon) is waited for 5 s at most.
    pub fn ready(mut self) -> io::Result<()> {
        self.stream.write_all(b"ready\n")?;
        self.stream.set_read_timeout(Some(GONE_WAIT))?;
        let mut answer = [0u8; 5];
        if self.stream.read_exact(&mut answer).is_err() || &answer != b"gone\n" {
            tracing::warn!("the old process did not confirm it stopped accepting");
        }
        Ok(())
    }
}

/// How long a new process waits for the old one to confirm it stopped accepting.
const GONE_WAIT: Duration = Duration::from_secs(5);

/// Connects to the running Pylon at `path` and takes its listening sockets.
pub fn take_over(path: &Path) -> io::Result<(Vec<PreboundSocket>, Handover)> {
    let stream = UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot reach the running Pylon at {}: {e}", path.display()),
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut data = vec![0u8; MAX_MANIFEST];
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut data)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    let manifest: Manifest = serde_json::from_slice(&data[..received.bytes])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad manifest: {e}")))?;
    if manifest.sockets.len() != fds.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "manifest names {} sockets, {} received",
                manifest.sockets.len(),
                fds.len()
            ),
        ));
    }
    let sockets = manifest
        .sockets
        .into_iter()
        .zip(fds)
        .map(|(e, fd)| PreboundSocket {
            listener: e.listener,
            configured: e.configured,
            socket: if e.udp {
                Socket::Udp(std::net::UdpSocket::from(fd))
            } else {
                Socket::Tcp(std::net::TcpListener::from(fd))
            },
        })
        .collect();
    stream.set_read_timeout(None)?;
    Ok((
        sockets,
        Handover {
            stream,
            from_pid: manifest.pid,
        },
    ))
}

/// Sends every listening socket of `proxy` and waits for the new process's `ready`;
/// the stream back, for the answer that this process stopped accepting.
fn hand_over(mut stream: UnixStream, sockets: &[PreboundSocket]) -> io::Result<UnixStream> {
    if sockets.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} sockets: more than one message carries ({MAX_FDS})",
            sockets.len()
        )));
    }
    let manifest = Manifest {
        pid: std::process::id(),
        sockets: sockets
            .iter()
            .map(|s| Entry {
                listener: s.listener.clone(),
                configured: s.configured,
                udp: s.socket.is_udp(),
            })
            .collect(),
    };
    let data = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
    let fds: Vec<_> = sockets.iter().map(|s| s.socket.as_fd()).collect();
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("cannot attach the sockets"));
    }
    rustix::net::sendmsg(
        &stream,
        &[IoSlice::new(&data)],
        &mut control,
        SendFlags::empty(),
    )?;
    // The new process may take a while to start (DNS, health checks).
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut answer = [0u8; 6];
    stream.read_exact(&mut answer)?;
    if &answer != b"ready\n" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the new process did not say ready",
        ));
    }
    Ok(stream)
}

/// Serves handover requests on `path` (replacing a stale socket file) until one
/// succeeds; returns then, and the caller stops accepting and drains. A failed
/// handover (the new process died or refused) is logged and this process serves on.
pub async fn serve(path: PathBuf, proxy: Arc<Proxy>) -> io::Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("upgrade socket {}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "upgrade socket ready");
    loop {
        let (stream, _) = listener.accept().await?;
        let sockets = proxy.listening_sockets().await?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        let result = tokio::task::spawn_blocking(move || hand_over(stream, &sockets))
            .await
            .map_err(io::Error::other)?;
        match result {
            Ok(mut stream) => {
                tracing::info!("listening sockets handed over to the new process");
                // New connections go to the new process only, once it hears this.
                proxy.stop_accepting().await;
                let _ = tokio::task::spawn_blocking(move || stream.write_all(b"gone\n")).await;
                proxy.release_quic().await;
                return Ok(());
            }
            Err(e) => tracing::error!(error = %e, "binary upgrade failed; this process serves on"),
        }
    }
}
