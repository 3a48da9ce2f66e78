//! systemd's service notifications (`Type=notify`, `sd_notify(3)`) through the
//! `sd-notify` crate: ready once every listener is bound, reloading and ready again
//! around a SIGHUP reload, stopping when a stop begins, and the new main PID after a
//! binary upgrade. Nothing is sent outside systemd (no `NOTIFY_SOCKET`). Also the
//! sockets of socket activation (`LISTEN_FDS`).

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Every listener is bound: the service is up.
pub fn ready(listeners: usize) {
    let status = format!("serving {listeners} address(es)");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// A reload begins (systemd ≥ 253 wants the monotonic time with it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The reload ended (applied or refused: the service serves either way).
pub fn reloaded(ok: bool) {
    let status = if ok {
        "configuration reloaded"
    } else {
        "reload refused; serving the previous configuration"
    };
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// This process took over from the one systemd started (`NotifyAccess=all`).
pub fn main_pid() {
    send(&[NotifyState::MainPid(std::process::id())]);
}

/// The listening sockets the service manager passed (socket activation: `LISTEN_FDS`
/// for this PID), for the listeners of `config`; none outside socket activation.
pub fn activated_sockets(
    config: &pylon_config::Config,
) -> anyhow::Result<Vec<pylon_proxy::sockets::PreboundSocket>> {
    let fds: Vec<_> = sd_notify::listen_fds_with_names(true)?.collect();
    Ok(pylon_proxy::activation::adopt(fds, config)?)
}
