//! Dead-peer detection on TCP sockets: keepalive probes and `TCP_USER_TIMEOUT`, set on
//! accepted client connections (HTTP and Layer 4 listeners) and on upstream
//! connections (HTTP pools, warm connections, Layer 4 relays) from the listener's or
//! the cluster's `tcp_keepalive` / `tcp_user_timeout`; and `TCP_DEFER_ACCEPT` on
//! listening sockets (a listener's `defer_accept`).

use std::os::fd::AsFd;

use pylon_config::model::TcpOptions;
use socket2::{SockRef, TcpKeepalive};

/// Sets `options` on `socket`; turned-off options are cleared, so a socket keeps no
/// setting from before. A failure is logged and the connection goes on: these options
/// only make a dead peer noticed sooner.
pub fn apply<S: AsFd>(socket: &S, options: &TcpOptions) {
    if let Err(e) = try_apply(socket, options) {
        tracing::debug!(error = %e, "TCP keepalive / user timeout not set");
    }
}

/// Sets `TCP_NODELAY` and `options` on a listening socket, for the connections it will
/// accept: Linux copies a listener's socket options into each accepted socket, which
/// saves six system calls per connection. True when the accepted sockets get them this
/// way; otherwise (another system, or a failure) each accepted socket needs
/// [`accepted`].
pub fn inherit_from_listener<S: AsFd>(listener: &S, options: &TcpOptions) -> bool {
    if !cfg!(any(target_os = "linux", target_os = "android")) {
        return false;
    }
    let set = SockRef::from(listener)
        .set_tcp_nodelay(true)
        .and_then(|()| try_apply(listener, options));
    if let Err(e) = &set {
        tracing::debug!(error = %e, "TCP options not set on the listening socket; set per connection");
    }
    set.is_ok()
}

/// `TCP_NODELAY` and `options` on an accepted socket whose listener could not pass them
/// on ([`inherit_from_listener`]).
pub fn accepted(stream: &tokio::net::TcpStream, options: &TcpOptions, inherited: bool) {
    if !inherited {
        let _ = stream.set_nodelay(true);
        apply(stream, options);
    }
}

/// How long the kernel holds a connection that has sent nothing before handing it
/// over anyway, in seconds. NGINX's choice: Pylon cannot know how long a connection
/// waited in the kernel, so its own `header_read_timeout` starts at most this much
/// late.
const DEFER_ACCEPT_SECS: libc::c_int = 1;

/// `TCP_DEFER_ACCEPT` (Linux) on a listening socket, set or cleared: with it, a
/// connection is handed over when its first bytes arrive rather than when its
/// handshake completes, so accepting it and reading its request take one wake-up
/// instead of two, and the client's `connect` wakes no one. A connection that sends
/// nothing is handed over after about [`DEFER_ACCEPT_SECS`]. A failure (another
/// system) is logged; the listener works either way.
pub fn defer_accept<S: AsFd>(listener: &S, on: bool) {
    if let Err(e) = set_defer_accept(listener, if on { DEFER_ACCEPT_SECS } else { 0 }) {
        tracing::debug!(error = %e, "TCP_DEFER_ACCEPT not set");
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_defer_accept<S: AsFd>(listener: &S, secs: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // Neither socket2 nor nix offers this option; the call is the one line below.
    // SAFETY: the descriptor is open for the borrow's life, and the pointer and length
    // describe `secs`, a live `c_int` the kernel only reads.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            listener.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const secs).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_defer_accept<S: AsFd>(_: &S, _: libc::c_int) -> std::io::Result<()> {
    Ok(())
}

/// Like [`apply`], with the error.
pub fn try_apply<S: AsFd>(socket: &S, options: &TcpOptions) -> std::io::Result<()> {
    let sock = SockRef::from(socket);
    match &options.keepalive {
        Some(k) => {
            let params = TcpKeepalive::new().with_time(k.idle);
            #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
            let params = params.with_interval(k.interval).with_retries(k.probes);
            sock.set_tcp_keepalive(&params)?;
        }
        None => sock.set_keepalive(false)?,
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout(options.user_timeout)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use pylon_config::model::{TcpKeepalive, TcpOptions};
    use socket2::SockRef;
    use tokio::net::{TcpListener, TcpStream};

    /// Both ends of a loopback connection.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn defaults_are_set_on_a_real_socket() {
        let (client, server) = pair().await;
        for s in [&client, &server] {
            let before = SockRef::from(s);
            assert!(!before.keepalive().unwrap(), "off until set");
            super::try_apply(s, &TcpOptions::default()).unwrap();
            let sock = SockRef::from(s);
            assert!(sock.keepalive().unwrap());
            assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
            assert_eq!(
                sock.tcp_keepalive_interval().unwrap(),
                Duration::from_secs(10)
            );
            assert_eq!(sock.tcp_keepalive_retries().unwrap(), 6);
            assert_eq!(
                sock.tcp_user_timeout().unwrap(),
                Some(Duration::from_secs(60))
            );
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn accepted_sockets_inherit_what_the_listener_was_given() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let custom = TcpOptions {
            keepalive: Some(TcpKeepalive {
                idle: Duration::from_secs(7),
                interval: Duration::from_secs(3),
                probes: 4,
            }),
            user_timeout: Some(Duration::from_millis(2500)),
        };
        assert!(super::inherit_from_listener(&listener, &custom));
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        super::accepted(&server, &custom, true);
        let sock = SockRef::from(&server);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(2500))
        );
    }

    #[tokio::test]
    async fn configured_values_and_off() {
        let (client, _server) = pair().await;
        let custom = TcpOptions {
            keepalive: Some(TcpKeepalive {
                idle: Duration::from_secs(5),
                interval: Duration::from_secs(2),
                probes: 3,
            }),
            user_timeout: Some(Duration::from_millis(1500)),
        };
        super::try_apply(&client, &custom).unwrap();
        let sock = SockRef::from(&client);
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(5));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(1500))
        );

        let off = TcpOptions {
            keepalive: None,
            user_timeout: None,
        };
        super::try_apply(&client, &off).unwrap();
        assert!(!sock.keepalive().unwrap());
        assert_eq!(sock.tcp_user_timeout().unwrap(), None);
    }
}
