//! HTTP/1.1 and HTTP/2 cleartext on one listener, detected per connection by
//! hyper-util's auto builder. Owns the connection's life: idle and header-read
//! timeouts, graceful shutdown, and the log line for requests hyper itself rejected.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pylon_config::model::Limits;
use tokio::sync::watch;

use super::error::ErrorKind;
use super::pipeline::{self, ConnCtx};
use super::stall::{self, StallExecutor};
use crate::conn::{TrackedIo, Verdict};
use crate::l4::relay::CLOSE_LINGER;
use crate::observe::{AccessRecord, Metrics};

/// A draining idle HTTP/1.1 connection closes once it has been idle this long (or
/// after its next response).
const DRAIN_IDLE: Duration = Duration::from_secs(1);
/// How often a draining idle connection looks for a request.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// A connection builder configured from a listener's limits.
pub fn builder(limits: &Limits, metrics: Arc<Metrics>) -> auto::Builder<StallExecutor> {
    // HTTP/2 streams run under the send stall guard (`send_timeout` per stream).
    let mut b = auto::Builder::new(StallExecutor::new(limits.send_timeout, metrics));
    // hyper's own limits are a backstop at twice ours, so that the request path can
    // give the precise answer (with x-pylon-error) for anything in between.
    let backstop_bytes = (limits.max_header_bytes.saturating_mul(2)).max(8192);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(backstop_bytes)
        .max_headers(limits.max_headers.saturating_mul(2));
    b.http2()
        .timer(TokioTimer::new())
        // RFC 8441: WebSockets over HTTP/2 (extended CONNECT).
        .enable_connect_protocol()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_error_resets)
        .max_header_list_size(u32::try_from(backstop_bytes).unwrap_or(u32::MAX));
    b
}

/// Serves one accepted connection until it closes, times out or is drained.
pub async fn serve_connection<S>(
    builder: Arc<auto::Builder<StallExecutor>>,
    stream: S,
    ctx: Arc<ConnCtx>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::clone(&ctx.state);
    let io = TokioIo::new(TrackedIo::new(
        stream,
        Arc::clone(&state),
        Arc::clone(&ctx.stats),
    ));
    let svc_ctx = Arc::clone(&ctx);
    let svc = service_fn(move |req| {
        let ctx = Arc::clone(&svc_ctx);
        async move {
            let response = pipeline::handle(req, ctx).await;
            stall::response_ready();
            Ok::<_, Infallible>(response)
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let mut draining = false;
    // Asked to drain while an HTTP/1.1 connection was idle: it closes after its next
    // response, or once idle for DRAIN_IDLE, so that a request already on its way is
    // answered rather than cut.
    let mut soft_drain = false;
    let mut hard_stop: Option<Instant> = None;
    // The process's stop: once the drain timeout has passed, what is still open closes
    // (streams and tunnels get [`CLOSE_LINGER`] to say goodbye in their protocol).
    let mut stop = Some(ctx.shared.stop.watch());
    let mut stopping = false;
    loop {
        let wake = match state.verdict(
            limits.idle_timeout,
            limits.header_read_timeout,
            limits.send_timeout,
        ) {
            _ if draining => hard_stop.unwrap_or_else(|| Instant::now() + limits.idle_timeout),
            _ if soft_drain => {
                if state.in_flight() > 0 || state.idle_for() >= DRAIN_IDLE.min(limits.idle_timeout)
                {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                    continue;
                }
                Instant::now() + DRAIN_POLL
            }
            Verdict::Wait(at) => at,
            Verdict::Idle => {
                conn.as_mut().graceful_shutdown();
                draining = true;
                hard_stop = Some(Instant::now() + limits.header_read_timeout);
                continue;
            }
            Verdict::SendTimeout => {
                log_rejected(&ctx, ErrorKind::SendTimeout);
                tracing::debug!(client = %ctx.client, "client took nothing of its response in time; closing");
                return;
            }
            Verdict::HeaderTimeout => {
                log_rejected(&ctx, ErrorKind::HeaderTimeout);
                tracing::debug!(client = %ctx.client, "request header not received in time; closing");
                return;
            }
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    connection_error(&ctx, e.as_ref());
                }
                return;
            }
            changed = shutdown.changed(), if !draining && !soft_drain => {
                if changed.is_err() || *shutdown.borrow() {
                    if state.is_h2() || state.in_flight() > 0 {
                        // HTTP/2: GOAWAY; HTTP/1.1 busy: close after this response.
                        conn.as_mut().graceful_shutdown();
                        draining = true;
                    } else {
                        soft_drain = true;
                    }
                }
            }
            () = crate::runtime::retired(&mut stop), if !stopping => {
                stopping = true;
                if !draining {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                hard_stop = Some(Instant::now() + CLOSE_LINGER + Duration::from_millis(500));
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                if hard_stop.is_some_and(|t| Instant::now() >= t) {
                    if stopping {
                        tracing::info!(
                            listener = %ctx.listener,
                            client = %ctx.client,
                            http2 = state.is_h2(),
                            in_flight = state.in_flight(),
                            reason = "drain_timeout",
                            "connection closed by the proxy"
                        );
                    }
                    return;
                }
            }
        }
    }
}

/// Connection-level errors: hyper answered a malformed request itself (400/431/414),
/// or the socket failed. Counted, and logged like a request.
fn connection_error(ctx: &ConnCtx, e: &(dyn std::error::Error + 'static)) {
    let Some(h) = e.downcast_ref::<hyper::Error>() else {
        tracing::debug!(client = %ctx.client, error = %e, "connection error");
        return;
    };
    if h.is_parse_too_large() {
        log_rejected(ctx, ErrorKind::HeadersTooLarge);
    } else if h.is_parse() {
        log_rejected(ctx, ErrorKind::MalformedRequest);
    } else {
        tracing::debug!(client = %ctx.client, error = %e, "connection error");
    }
}

fn log_rejected(ctx: &ConnCtx, kind: ErrorKind) {
    ctx.shared.metrics.error(kind);
    ctx.shared.metrics.response(kind.status().as_u16());
    ctx.shared.logger.log(AccessRecord {
        time: SystemTime::now(),
        listener: Arc::clone(&ctx.listener),
        client: ctx.client,
        method: String::new(),
        authority: String::new(),
        path: String::new(),
        protocol: "HTTP/1.1",
        status: kind.status().as_u16(),
        bytes_in: 0,
        bytes_out: 0,
        duration_ms: 0.0,
        route: None,
        cluster: None,
        upstream: None,
        upstream_ms: None,
        request_id: None,
        client_cert: None,
        user: None,
        error: Some(kind.as_str()),
    });
}
