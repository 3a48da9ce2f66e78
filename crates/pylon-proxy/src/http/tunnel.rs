//! WebSocket tunnels. A client's HTTP/1.1 `Upgrade: websocket`, or HTTP/2 or HTTP/3
//! extended CONNECT (RFC 8441, RFC 9220, `:protocol = websocket`), is forwarded as the
//! handshake the cluster speaks: an HTTP/1.1 Upgrade to `http1` clusters, an extended CONNECT to
//! `h2c`/`h2` ones. Only a successful answer (101, or 2xx to a CONNECT) turns the two
//! streams into a byte tunnel, relayed by `ws_relay` (frame-aware, so that Pylon can
//! close it with 1001 "going away") with the route's tunnel idle timeout and lifetime;
//! any other answer goes back as an ordinary response.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use pylon_config::model::{ProxyAction, UpstreamProtocol};

use super::body::ResponseBody;
use super::error::ErrorKind;
use super::headers::strip_hop_by_hop;
use crate::cluster::{EndpointLease, Prefixed, UpstreamBody};
use crate::conn::InFlight;
use crate::conn::{ClientBody, ClientUpgrade};
use crate::l4::relay::{self, Activity, RelayLimits};
use crate::listener::ConnGuard;
use crate::observe::Metrics;
use crate::tls::upstream::UpstreamIo;

static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
static SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
static SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");

/// How the client asked.
enum ClientHandshake {
    /// HTTP/1.1 Upgrade, with its `Sec-WebSocket-Key`.
    Upgrade(Option<HeaderValue>),
    /// HTTP/2 extended CONNECT.
    ExtendedConnect,
}

/// A WebSocket handshake on its way upstream.
pub(super) struct WebSocket {
    client: ClientHandshake,
    client_upgrade: ClientUpgrade,
    /// The `Sec-WebSocket-Key` sent to HTTP/1.1 upstreams: the client's, or one made
    /// here (an HTTP/2 client sends none); the upstream's accept must match it.
    upstream_key: HeaderValue,
}

fn has_token(req_headers: &http::HeaderMap, name: HeaderName, token: &str) -> bool {
    req_headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A WebSocket handshake, if this request is one; takes the client connection's
/// upgrade handle out of the request.
pub(super) fn detect(req: &mut Request<ClientBody>) -> Option<WebSocket> {
    let client = if req.method() == Method::CONNECT {
        let proto = req.extensions().get::<hyper::ext::Protocol>()?;
        if !proto.as_str().eq_ignore_ascii_case("websocket") {
            return None;
        }
        ClientHandshake::ExtendedConnect
    } else if req.method() == Method::GET
        && has_token(req.headers(), header::CONNECTION, "upgrade")
        && has_token(req.headers(), header::UPGRADE, "websocket")
    {
        ClientHandshake::Upgrade(req.headers().get(&SEC_WEBSOCKET_KEY).cloned())
    } else {
        return None;
    };
    let upstream_key = match &client {
        ClientHandshake::Upgrade(Some(key)) => key.clone(),
        _ => random_key(),
    };
    Some(WebSocket {
        client,
        client_upgrade: ClientUpgrade::on(req),
        upstream_key,
    })
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
fn accept_key(key: &[u8]) -> Option<HeaderValue> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    HeaderValue::from_str(&BASE64.encode(ctx.finish().as_ref())).ok()
}

fn random_key() -> HeaderValue {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&pylon_lb::random_u64().to_le_bytes());
    raw[8..].copy_from_slice(&pylon_lb::random_u64().to_le_bytes());
    HeaderValue::from_str(&BASE64.encode(raw))
        .unwrap_or(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

impl WebSocket {
    /// Shapes the upstream request head (already stripped of hop-by-hop headers) into
    /// the handshake the cluster speaks.
    pub(super) fn upstream_request(&self, parts: &mut Parts, protocol: UpstreamProtocol) {
        let h = &mut parts.headers;
        match protocol {
            UpstreamProtocol::Http1 => {
                parts.method = Method::GET;
                parts.extensions.remove::<hyper::ext::Protocol>();
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                h.insert(SEC_WEBSOCKET_KEY.clone(), self.upstream_key.clone());
            }
            UpstreamProtocol::H2c | UpstreamProtocol::H2 | UpstreamProtocol::H3 => {
                parts.method = Method::CONNECT;
                parts
                    .extensions
                    .insert(hyper::ext::Protocol::from_static("websocket"));
                h.remove(&SEC_WEBSOCKET_KEY);
            }
        }
        h.entry(SEC_WEBSOCKET_VERSION.clone())
            .or_insert(HeaderValue::from_static("13"));
    }

    /// After the upstream answered: a tunnel and the client's answer when it accepted,
    /// else the answer back for the ordinary response path.
    pub(super) fn finish(
        self,
        mut resp: Response<UpstreamBody>,
        protocol: UpstreamProtocol,
        tunnel: Tunnel,
    ) -> Outcome {
        let accepted = match protocol {
            UpstreamProtocol::Http1 => resp.status() == StatusCode::SWITCHING_PROTOCOLS,
            UpstreamProtocol::H2c | UpstreamProtocol::H2 | UpstreamProtocol::H3 => {
                resp.status().is_success()
            }
        };
        // A switch to anything but the WebSocket Pylon asked for, or without the proof
        // that the upstream read this handshake (RFC 6455 §4.2.2), opens no tunnel:
        // the bytes after it would reach the upstream unchecked by any route.
        if accepted
            && protocol == UpstreamProtocol::Http1
            && !(has_token(resp.headers(), header::UPGRADE, "websocket")
                && resp.headers().get(&SEC_WEBSOCKET_ACCEPT)
                    == accept_key(self.upstream_key.as_bytes()).as_ref())
        {
            tracing::warn!(
                upgrade = ?resp.headers().get(header::UPGRADE),
                "upstream switched protocols without a valid WebSocket handshake; refused"
            );
            return Outcome::Failed(ErrorKind::UpgradeInvalid);
        }
        if !accepted {
            // A 2xx to an extended CONNECT would tell the client its tunnel is open.
            if matches!(self.client, ClientHandshake::ExtendedConnect) && resp.status().is_success()
            {
                return Outcome::Failed(ErrorKind::UpgradeRefused);
            }
            return Outcome::Refused(resp);
        }
        // An HTTP/1.1 upstream's own connection (with what it sent after the 101);
        // an HTTP/2 upstream's stream, once hyper has it.
        let (parts, upstream) = match protocol {
            UpstreamProtocol::Http1 => {
                let (parts, body) = resp.into_parts();
                let Some(io) = body.into_upgraded() else {
                    return Outcome::Failed(ErrorKind::UpgradeInvalid);
                };
                (parts, UpstreamSide::Raw(io))
            }
            // WebSockets to HTTP/3 upstreams (RFC 9220 from Pylon's side) are not
            // spoken: no tunnel. (From HTTP/3 clients they are: `server_h3`.)
            UpstreamProtocol::H3 => return Outcome::Failed(ErrorKind::UpgradeRefused),
            UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                let upgrade = hyper::upgrade::on(&mut resp);
                (resp.into_parts().0, UpstreamSide::Hyper(upgrade))
            }
        };
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        let upstream_accept = headers.remove(&SEC_WEBSOCKET_ACCEPT);
        let mut answer = Response::new(ResponseBody::empty());
        match &self.client {
            ClientHandshake::Upgrade(key) => {
                *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                // From an HTTP/1.1 upstream its own accept (it saw the client's key);
                // from an HTTP/2 one (no key there), computed from the client's key.
                let accept = match protocol {
                    UpstreamProtocol::Http1 => upstream_accept,
                    _ => key.as_ref().and_then(|k| accept_key(k.as_bytes())),
                };
                if let Some(a) = accept {
                    headers.insert(SEC_WEBSOCKET_ACCEPT.clone(), a);
                }
            }
            ClientHandshake::ExtendedConnect => *answer.status_mut() = StatusCode::OK,
        }
        *answer.headers_mut() = headers;
        let client_upgrade = self.client_upgrade;
        tokio::spawn(tunnel.run(client_upgrade, upstream));
        Outcome::Tunnel(answer)
    }
}

/// The upstream side of an accepted WebSocket handshake.
enum UpstreamSide {
    /// An HTTP/1.1 connection, its bytes after the 101 first.
    Raw(Prefixed<UpstreamIo>),
    /// An HTTP/2 stream, once hyper hands it over.
    Hyper(OnUpgrade),
}

/// What became of a WebSocket handshake.
pub(super) enum Outcome {
    /// Accepted: the answer for the client; the tunnel runs once both upgrades complete.
    Tunnel(Response<ResponseBody>),
    /// Refused by the upstream: its answer goes back as an ordinary response.
    Refused(Response<UpstreamBody>),
    /// Refused in a way the client's protocol cannot be told as is.
    Failed(ErrorKind),
}

/// What a tunnel keeps for its life: limits, the endpoint lease (counted in flight),
/// the client connection's in-flight mark (an HTTP/2 connection is not idle while a
/// tunnel stream is open), metrics.
pub(super) struct Tunnel {
    pub limits: RelayLimits,
    pub lease: Option<EndpointLease>,
    pub in_flight: InFlight,
    pub metrics: Arc<Metrics>,
    /// The listener's counters (tunnels open).
    pub stats: Arc<crate::observe::stats::ListenerStats>,
    /// The client connection, counted open while the tunnel lives (an HTTP/1.1
    /// connection's own task ends when it is upgraded).
    pub conn: Option<Arc<ConnGuard>>,
    /// For the log line when Pylon closes the tunnel.
    pub route: Arc<str>,
    pub client: std::net::SocketAddr,
    /// The upstream connection's hold: an HTTP/2 tunnel counts as one of its streams.
    pub _pooled: Option<crate::cluster::Pooled>,
    /// Where the handshake's access-log line waits for the tunnel's end.
    pub log: super::pipeline::TunnelLog,
    pub logger: crate::observe::AccessLogger,
}

impl Tunnel {
    pub(super) fn limits(
        action: &ProxyAction,
        life: &crate::life::Life,
        stop: &crate::life::Stop,
    ) -> RelayLimits {
        RelayLimits {
            idle: action.tunnel_idle_timeout,
            lifetime: action.tunnel_max_lifetime,
            end: crate::life::Ending::new(Some(life), stop),
        }
    }

    async fn run(self, client: ClientUpgrade, upstream: UpstreamSide) {
        let started = std::time::Instant::now();
        let metrics = self.metrics;
        let activity = Activity::default();
        let (client, upstream) = match upstream {
            UpstreamSide::Raw(io) => (client.wait().await, Some(Ok(io))),
            UpstreamSide::Hyper(up) => {
                let (c, u) = tokio::join!(client.wait(), up);
                (c, u.ok().map(Err))
            }
        };
        let (Some(client), Some(upstream)) = (client, upstream) else {
            tracing::debug!("websocket upgrade did not complete");
            if let Some(r) = crate::lock(&self.log).take() {
                self.logger.log(r);
            }
            return;
        };
        let open = OpenTunnel::new(&metrics, &self.stats);
        let limits = self.limits;
        let end = match upstream {
            Ok(raw) => super::ws_relay::relay(client, raw, limits, &activity).await,
            Err(u) => super::ws_relay::relay(client, TokioIo::new(u), limits, &activity).await,
        };
        drop(open);
        if let (relay::RelayEnd::Error(_), Some(lease)) = (&end, &self.lease) {
            lease.report(false);
        }
        let (up, down) = (
            activity.up.load(Ordering::Relaxed),
            activity.down.load(Ordering::Relaxed),
        );
        if end.by_proxy() {
            tracing::info!(
                route = %self.route,
                client = %self.client,
                bytes_up = up,
                bytes_down = down,
                reason = end.as_str(),
                "websocket closed by the proxy (1001 going away sent both ways)"
            );
        } else {
            tracing::debug!(
                bytes_up = up,
                bytes_down = down,
                end = end.as_str(),
                "websocket tunnel closed"
            );
        }
        // The handshake's line, with the tunnel's bytes each way and its whole life.
        if let Some(mut r) = crate::lock(&self.log).take() {
            r.bytes_in = up;
            r.bytes_out = down;
            // From the request's arrival, as for every line.
            let life = std::time::SystemTime::now()
                .duration_since(r.time)
                .unwrap_or(started.elapsed());
            r.duration_ms = crate::observe::access_log::millis(life);
            if !matches!(end, relay::RelayEnd::Closed) {
                r.error = Some(end.as_str());
            }
            r.closed_by = activity.closed_by(&end);
            self.logger.log(r);
        }
        drop(self.in_flight);
        drop(self.conn);
    }
}

/// A tunnel (WebSocket or CONNECT) counted open, in the process's metrics and its
/// listener's stats, until dropped.
pub(super) struct OpenTunnel {
    metrics: Arc<Metrics>,
    stats: Arc<crate::observe::stats::ListenerStats>,
}

impl OpenTunnel {
    pub(super) fn new(
        metrics: &Arc<Metrics>,
        stats: &Arc<crate::observe::stats::ListenerStats>,
    ) -> OpenTunnel {
        metrics.tunnels_active.fetch_add(1, Ordering::Relaxed);
        metrics.tunnels_total.fetch_add(1, Ordering::Relaxed);
        stats.tunnels_active.fetch_add(1, Ordering::Relaxed);
        OpenTunnel {
            metrics: Arc::clone(metrics),
            stats: Arc::clone(stats),
        }
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.metrics.tunnels_active.fetch_sub(1, Ordering::Relaxed);
        self.stats.tunnels_active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_follows_rfc6455() {
        // The example of RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ==").unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
