//! The request path's filters. A feature on the request path is one type, in its own
//! file here, implementing the [`Filter`] phases it needs; [`REGISTRY`] lists every filter
//! in the order they run. A route's [`FilterChain`] is built once per config snapshot
//! (`Runtime::build`) from its listener's and its own settings, so no request asks which
//! features its route has: a route with none runs an empty loop per phase.
//!
//! The phases (docs/LIFECYCLE.md lists them with the code that runs each):
//! 3 `request` (may answer by itself), 4 `upstream_head` (the head every try shares) and
//! `request_body`, 5 `response` (the upstream's answer), and `error_answer` (a proxy-made
//! error on its way out). Features that decide how the upstream is reached (WebSocket
//! upgrades, gRPC deadlines, sticky sessions, retries, PROXY headers out) are steps of
//! phase 4 in `http/proxy.rs`.
//!
//! Adding a filter: a file with a type implementing [`Filter`] and a `build` function
//! that returns it for the routes that want it, then one line in [`REGISTRY`].

use std::sync::Arc;

use crate::conn::ClientBody;
use http::request::Parts;
use http::{Request, Response};
use pylon_config::model::{Listener, Route};

use super::body::{RequestPayload, ResponseBody};
use super::error::ErrorKind;
use super::pipeline::ConnCtx;
use crate::runtime::ListenerRuntime;

pub mod auth;
mod buffering;
pub(crate) mod cache;
mod cache_body;
mod client_cert;
pub(crate) mod compression;
mod error_pages;
mod ext_authz;
pub(crate) mod forwarding;
mod grpc_web;
mod jwks;
pub(crate) mod mirror;
mod path_rewrite;
pub(crate) mod rate_limit;
mod rate_limit_redis;
mod request_id;
pub(crate) mod rules;
pub(crate) mod split;
mod trace_context;

/// What a filter sees besides the request and the answer.
pub struct FilterCtx<'a> {
    pub conn: &'a ConnCtx,
    /// The same connection context, owned: for work a filter starts that outlives the
    /// request (a background revalidation).
    pub conn_arc: &'a Arc<ConnCtx>,
    pub listener: &'a ListenerRuntime,
    /// The request's id (phase 1), as a header value.
    pub request_id: Option<http::HeaderValue>,
    /// The client's authority as sent: `:authority` (HTTP/2, absolute form), else
    /// `Host`.
    pub client_authority: Option<http::HeaderValue>,
    /// What filters leave for their own later phases, one value per type; kept by the
    /// request path for their part of an error answer.
    pub state: &'a mut http::Extensions,
    /// The user an authentication filter accepted, for the access log.
    pub user: Option<Arc<str>>,
    /// The endpoint that answered (phase 5).
    pub endpoint: Option<std::net::SocketAddr>,
    /// The request's place in its trace, when the configuration traces.
    pub trace: Option<crate::observe::trace::TraceCtx>,
}

/// What a waiting filter's phase 3 comes to: an answer of its own, or `None` to go on.
pub type Lookup<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<Option<Response<ResponseBody>>, ErrorKind>>
            + Send
            + 'a,
    >,
>;

/// One feature on the request path. Every phase has a default that does nothing.
pub trait Filter: Send + Sync {
    /// The feature's name, for logs and docs.
    fn name(&self) -> &'static str;

    /// Phase 3: the client's request, before its body is read. `Ok(Some(answer))`
    /// answers it without an upstream (a CORS preflight); `Err` refuses it.
    fn request(
        &self,
        _req: &mut Request<ClientBody>,
        _cx: &mut FilterCtx<'_>,
    ) -> Result<Option<Response<ResponseBody>>, ErrorKind> {
        Ok(None)
    }

    /// Phase 3, for a filter that may wait before it decides (the cache: its store, a
    /// fill of the same key in progress): runs after every filter's
    /// [`Filter::request`], in registry order. `None` when it has nothing to wait for.
    fn lookup<'a>(
        &'a self,
        _req: &'a mut Request<ClientBody>,
        _cx: &'a mut FilterCtx<'_>,
    ) -> Option<Lookup<'a>> {
        None
    }

    /// Phase 4: the upstream request's head, shared by every try (hop-by-hop headers are
    /// gone; the target and `Host` are set per try afterwards).
    fn upstream_head(&self, _head: &mut Parts, _cx: &mut FilterCtx<'_>) {}

    /// Phase 4: the request body on its way upstream.
    fn request_body(
        &self,
        body: RequestPayload,
        _cx: &mut FilterCtx<'_>,
    ) -> Result<RequestPayload, ErrorKind> {
        Ok(body)
    }

    /// Phase 5: the upstream's answer, its head already checked and cleaned.
    fn response(&self, _resp: &mut Response<ResponseBody>, _cx: &mut FilterCtx<'_>) {}

    /// A proxy-made error answer to this request, after phase 3 ran; `state` is what the
    /// filters left in [`FilterCtx::state`].
    fn error_answer(&self, _resp: &mut Response<ResponseBody>, _state: &http::Extensions) {}

    /// Phase 5, last: the head of an upstream's answer once every filter's `response`
    /// ran (the cache has stored what the upstream sent, or put its stored answer in
    /// its place), and of a cache hit in phase 3. Header rules apply here, so that
    /// stored answers get them as fresh ones do, and are not stored with them.
    fn finish_head(&self, _resp: &mut Response<ResponseBody>, _cx: &mut FilterCtx<'_>) {}
}

/// Marks an answer the cache made from what it stored.
#[derive(Clone, Copy, Debug)]
pub struct StoredAnswer;

/// Where a filter would sit: a route of a listener, and what the runtime built for
/// filters to use (cache zones).
pub struct FilterSite<'a> {
    pub listener: &'a Listener,
    pub route: &'a Route,
    pub caches: &'a cache::Zones,
    pub(crate) auth: &'a auth::Policies,
    pub(crate) rate_limits: &'a rate_limit::Limiters,
    pub(crate) splits: &'a split::Splits,
    pub(crate) mirrors: &'a mirror::Mirrors,
    /// The configuration exports traces (`[tracing]`).
    pub tracing: bool,
}

/// The cluster a filter chose for this request in phase 3 (a traffic split), left in
/// [`FilterCtx::state`]; without one, the route's own cluster takes it.
#[derive(Clone)]
pub struct ChosenCluster(pub Arc<crate::cluster::ClusterRuntime>);

/// Makes a filter for a route of a listener, when their settings ask for it.
type Factory = fn(&FilterSite<'_>) -> Option<Arc<dyn Filter>>;

/// Every filter, in the order its phases run.
const REGISTRY: &[Factory] = &[
    forwarding::build,
    trace_context::build,
    request_id::build,
    path_rewrite::build,
    // After the prefix rewrite: the regex rewrite applies to its result.
    rules::build,
    error_pages::build,
    client_cert::build,
    grpc_web::build,
    auth::build,
    // After auth: keys on a token's claims need them (local limits on other keys are
    // still decided before auth, in the first pass of phase 3).
    rate_limit::build,
    // Before the cache: a zone stores each encoding as a variant of its own.
    compression::build,
    cache::build,
    // After the cache (a hit reads no body) and the checks that refuse requests; its
    // read-ahead wraps the answer as the other filters left it.
    buffering::build,
    // Copies only requests that go upstream, their head as filters made it.
    mirror::build,
    // Last: it counts only requests that went upstream (no cache hit, no refusal).
    split::build,
];

/// A route's filters, in [`REGISTRY`] order.
#[derive(Clone, Default)]
pub struct FilterChain(Arc<[Arc<dyn Filter>]>);

impl FilterChain {
    /// The chain for a route where `site` says.
    pub fn for_route(site: &FilterSite<'_>) -> FilterChain {
        let filters: Vec<Arc<dyn Filter>> =
            REGISTRY.iter().filter_map(|build| build(site)).collect();
        FilterChain(filters.into())
    }

    /// The filters of a forward proxy's absolute-form requests (it has no routes): the
    /// trace context when the configuration traces, and its cache, when it names one.
    pub fn for_forward(
        forward: &pylon_config::model::ForwardProxy,
        caches: &cache::Zones,
        tracing: bool,
    ) -> FilterChain {
        let trace = tracing.then(|| Arc::new(trace_context::TraceContext) as Arc<dyn Filter>);
        let filters: Vec<Arc<dyn Filter>> = trace
            .into_iter()
            .chain(
                forward
                    .cache
                    .as_deref()
                    .and_then(|name| caches.get(name))
                    .map(|z| cache::for_zone(z)),
            )
            .collect();
        FilterChain(filters.into())
    }

    /// Phase 3 for every filter, then the waiting ones; the first that answers or
    /// refuses ends it.
    pub async fn request(
        &self,
        req: &mut Request<ClientBody>,
        cx: &mut FilterCtx<'_>,
    ) -> Result<Option<Response<ResponseBody>>, ErrorKind> {
        for f in self.0.iter() {
            if let Some(answer) = f.request(req, cx)? {
                return Ok(Some(answer));
            }
        }
        for f in self.0.iter() {
            let Some(wait) = f.lookup(req, cx) else {
                continue;
            };
            if let Some(mut answer) = wait.await? {
                // A cache hit: an upstream's answer, stored.
                if answer.extensions().get::<StoredAnswer>().is_some() {
                    self.finish_head(&mut answer, cx);
                }
                return Ok(Some(answer));
            }
        }
        Ok(None)
    }

    /// [`Filter::finish_head`] for every filter.
    fn finish_head(&self, resp: &mut Response<ResponseBody>, cx: &mut FilterCtx<'_>) {
        for f in self.0.iter() {
            f.finish_head(resp, cx);
        }
    }

    pub fn upstream_head(&self, head: &mut Parts, cx: &mut FilterCtx<'_>) {
        for f in self.0.iter() {
            f.upstream_head(head, cx);
        }
    }

    pub fn request_body(
        &self,
        mut body: RequestPayload,
        cx: &mut FilterCtx<'_>,
    ) -> Result<RequestPayload, ErrorKind> {
        for f in self.0.iter() {
            body = f.request_body(body, cx)?;
        }
        Ok(body)
    }

    pub fn response(&self, resp: &mut Response<ResponseBody>, cx: &mut FilterCtx<'_>) {
        for f in self.0.iter() {
            f.response(resp, cx);
        }
        self.finish_head(resp, cx);
    }

    pub fn error_answer(&self, resp: &mut Response<ResponseBody>, state: &http::Extensions) {
        for f in self.0.iter() {
            f.error_answer(resp, state);
        }
    }
}
