//! Socket activation (systemd's `LISTEN_FDS`, sd_listen_fds(3)): listening sockets the
//! service manager opened (a `.socket` unit) and passed as file descriptors 3, 4, ...
//! are served instead of binding. A socket named (`FileDescriptorName=`, in
//! `LISTEN_FDNAMES`) after a listener serves that listener's addresses in order,
//! whatever address the unit gave it; an unnamed one serves the listener bound to its
//! address. The binary reads the environment (through the `sd-notify` crate); this
//! module turns the descriptors into sockets.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use pylon_config::Config;

use crate::sockets::{PreboundSocket, Socket};

/// The sockets behind `fds` (descriptor, name), each with the address it stands for:
/// the next address of the listener it is named after, else its own. An fd that is
/// not an IP socket is an error (the unit is wrong).
pub fn adopt(fds: Vec<(RawFd, String)>, config: &Config) -> std::io::Result<Vec<PreboundSocket>> {
    // How many sockets of each (listener, UDP) have been named so far.
    let mut taken: Vec<(String, bool, usize)> = Vec::new();
    let mut out = Vec::with_capacity(fds.len());
    for (fd, name) in fds {
        // SAFETY: the service manager passed these descriptors to this process for it
        // to serve (sd_listen_fds(3)); each number is taken once, here, and nothing
        // else in the process opened or owns it.
        #[allow(unsafe_code)]
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let s = socket2::Socket::from(owned);
        let local = s.local_addr()?.as_socket().ok_or_else(|| {
            std::io::Error::other(format!(
                "socket activation: descriptor {fd} ({name}) is not an IP socket"
            ))
        })?;
        let ty = s.r#type()?;
        let socket = if ty == socket2::Type::STREAM {
            Socket::Tcp(s.into())
        } else if ty == socket2::Type::DGRAM {
            Socket::Udp(s.into())
        } else {
            return Err(std::io::Error::other(format!(
                "socket activation: descriptor {fd} ({name}) is neither a stream nor a datagram socket"
            )));
        };
        let udp = socket.is_udp();
        let listener = config.listeners.iter().find(|l| l.name == name);
        let configured = match listener {
            Some(l) => {
                let n = match taken.iter_mut().find(|t| t.0 == name && t.1 == udp) {
                    Some(t) => {
                        t.2 += 1;
                        t.2 - 1
                    }
                    None => {
                        taken.push((name.clone(), udp, 1));
                        0
                    }
                };
                l.binds.get(n).copied().unwrap_or(local)
            }
            None => local,
        };
        tracing::info!(
            fd,
            name = %name,
            address = %local,
            serves = %listener.map_or("the listener bound to its address", |l| l.name.as_str()),
            "socket from the service manager"
        );
        out.push(PreboundSocket {
            listener: listener.map(|l| l.name.clone()),
            configured,
            socket,
        });
    }
    Ok(out)
}
