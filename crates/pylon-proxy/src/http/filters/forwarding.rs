//! Forwarding headers on the upstream request: `X-Forwarded-For/-Proto/-Host`, RFC 7239
//! `Forwarded` and `Via`, as the listener's `[listeners.headers]` asks, naming this
//! connection's client.

use std::sync::Arc;

use http::Version;
use http::header::HeaderValue;
use http::request::Parts;

use super::{Filter, FilterCtx};
use crate::http::headers::{Peer, add_forwarding};
use crate::http::pipeline::ConnCtx;
use crate::runtime::ListenerRuntime;

pub(super) fn build(site: &super::FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    let listener = site.listener;
    let h = &listener.headers;
    (h.x_forwarded || h.forwarded || h.via).then(|| Arc::new(Forwarding) as Arc<dyn Filter>)
}

struct Forwarding;

impl Filter for Forwarding {
    fn name(&self) -> &'static str {
        "forwarding"
    }

    fn upstream_head(&self, head: &mut Parts, cx: &mut FilterCtx<'_>) {
        add_client_forwarding(
            &mut head.headers,
            cx.listener,
            cx.conn,
            cx.client_authority.as_ref(),
            head.version,
        );
    }
}

/// The forwarding headers (`X-Forwarded-*`, `Forwarded`) the listener asks for, naming
/// this connection's client.
pub(crate) fn add_client_forwarding(
    h: &mut http::HeaderMap,
    listener: &ListenerRuntime,
    ctx: &ConnCtx,
    client_host: Option<&HeaderValue>,
    downstream_version: Version,
) {
    let peer = Peer {
        ip: ctx.client.ip(),
        ip_value: &ctx.client_ip,
        scheme: ctx.scheme,
    };
    add_forwarding(
        h,
        &listener.config.headers,
        &peer,
        client_host,
        downstream_version,
    );
}
