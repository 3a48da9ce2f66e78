//! Request mirroring (`mirror = { cluster = ... }` on a route): a sampled share of the
//! route's requests is copied to a shadow cluster, `Host` suffixed (`-shadow`, as
//! Envoy does), with the body when it is at most `max_body`; the copy's answer is
//! discarded. The real request never waits for the copy and never fails because of
//! it: the copy goes out from a task of its own once the real request's body has been
//! read through (its bytes are kept as they pass, up to the bound), and at most
//! [`MAX_IN_FLIGHT`] copies per route are out at once (more are dropped and counted).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http_body::{Body, Frame};
use pylon_config::model::{Action, Mirror};

use super::{Filter, FilterCtx, FilterSite};
use crate::cluster::ClusterRuntime;
use crate::cluster::body::{BoxError, RequestBody};
use crate::cluster::subrequest::{self, Subrequest};
use crate::http::body::RequestPayload;
use crate::http::error::ErrorKind;

/// Copies out at once per route, at most.
const MAX_IN_FLIGHT: usize = 64;
/// The largest answer body of a copy read (the rest is dropped with the connection).
const MAX_ANSWER: usize = 64 * 1024;

/// Every mirroring route's state, by route name.
pub(crate) type Mirrors = HashMap<String, Arc<MirrorState>>;

/// One route's mirror and its counters.
pub(crate) struct MirrorState {
    pub(crate) route: String,
    pub(crate) settings: Mirror,
    cluster: Option<Arc<ClusterRuntime>>,
    draws: AtomicU64,
    in_flight: AtomicUsize,
    /// Copies answered (any status), failed (no answer), skipped (body over
    /// `max_body`), dropped (too many out).
    pub(crate) sent: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// The mirroring routes of `config`.
pub(crate) fn mirrors(
    config: &pylon_config::Config,
    clusters: &HashMap<String, Arc<ClusterRuntime>>,
) -> Mirrors {
    config
        .routes
        .iter()
        .filter_map(|r| {
            let Action::Proxy(p) = &r.action else {
                return None;
            };
            let m = p.mirror.as_ref()?;
            Some((
                r.name.clone(),
                Arc::new(MirrorState {
                    route: r.name.clone(),
                    cluster: clusters.get(&m.cluster).cloned(),
                    settings: m.clone(),
                    draws: AtomicU64::new(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(7, |d| d.as_nanos() as u64),
                    ),
                    in_flight: AtomicUsize::new(0),
                    sent: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    skipped: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                }),
            ))
        })
        .collect()
}

pub(super) fn build(site: &FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    let state = site.mirrors.get(&site.route.name)?;
    Some(Arc::new(MirrorFilter {
        state: Arc::clone(state),
    }))
}

struct MirrorFilter {
    state: Arc<MirrorState>,
}

/// The copy's head, taken in phase 4, waiting for its body.
#[derive(Clone)]
struct CopyHead {
    method: http::Method,
    target: http::uri::PathAndQuery,
    host: Option<HeaderValue>,
    headers: http::HeaderMap,
}

impl MirrorState {
    /// Whether this request is in the sample.
    fn sampled(&self) -> bool {
        let p = self.settings.percent;
        if p >= 100.0 {
            return true;
        }
        let draw = super::split::mix(self.draws.fetch_add(1, Ordering::Relaxed));
        (draw % 10_000) < (p * 100.0) as u64
    }

    /// Sends the copy from a task of its own, when there is room for one more.
    fn send(self: &Arc<Self>, head: CopyHead, body: Bytes) {
        let Some(cluster) = self.cluster.clone() else {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let sub = Subrequest {
                method: head.method,
                target: head.target,
                host: head.host,
                headers: head.headers,
                body,
            };
            let answer = subrequest::fetch(&cluster, sub, me.settings.timeout, MAX_ANSWER).await;
            match answer {
                Ok(_) | Err(subrequest::SubrequestError::BodyTooLarge) => {
                    me.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    me.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(route = %me.route, cluster = %me.settings.cluster, error = %e, "mirrored request failed");
                }
            }
            me.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl Filter for MirrorFilter {
    fn name(&self) -> &'static str {
        "mirror"
    }

    fn upstream_head(&self, head: &mut http::request::Parts, cx: &mut FilterCtx<'_>) {
        if !self.state.sampled() {
            return;
        }
        let host = cx.client_authority.as_ref().and_then(|h| {
            let mut s = h.to_str().ok()?.to_owned();
            s.push_str(&self.state.settings.host_suffix);
            HeaderValue::from_str(&s).ok()
        });
        let mut headers = head.headers.clone();
        headers.remove(header::HOST);
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        cx.state.insert(CopyHead {
            method: head.method.clone(),
            target: head
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            host,
            headers,
        });
    }

    fn request_body(
        &self,
        body: RequestPayload,
        cx: &mut FilterCtx<'_>,
    ) -> Result<RequestPayload, ErrorKind> {
        let Some(head) = cx.state.remove::<CopyHead>() else {
            return Ok(body);
        };
        let limit = usize::try_from(self.state.settings.max_body).unwrap_or(usize::MAX);
        match body {
            RequestPayload::Replay(bytes) => {
                if bytes.len() <= limit {
                    self.state.send(head, bytes.clone());
                } else {
                    self.state.skipped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(RequestPayload::Replay(bytes))
            }
            RequestPayload::Stream(None) => Ok(RequestPayload::Stream(None)),
            RequestPayload::Stream(Some(inner)) => {
                if inner.is_end_stream() {
                    self.state.send(head, Bytes::new());
                    return Ok(RequestPayload::Stream(Some(inner)));
                }
                if inner.size_hint().lower() > self.state.settings.max_body {
                    self.state.skipped.fetch_add(1, Ordering::Relaxed);
                    return Ok(RequestPayload::Stream(Some(inner)));
                }
                let tee = Tee {
                    inner,
                    kept: BytesMut::new(),
                    limit,
                    copy: Some((head, Arc::clone(&self.state))),
                };
                Ok(RequestPayload::Stream(Some(RequestBody::Boxed(
                    http_body_util::combinators::BoxBody::new(tee),
                ))))
            }
        }
    }
}

/// The real request's body on its way upstream, its bytes kept as they pass (up to
/// the bound) for the copy, which goes out when the body ends.
struct Tee {
    inner: RequestBody,
    kept: BytesMut,
    limit: usize,
    /// Taken when the copy is sent or given up.
    copy: Option<(CopyHead, Arc<MirrorState>)>,
}

impl Tee {
    fn finish(&mut self, whole: bool) {
        if let Some((head, state)) = self.copy.take() {
            if whole {
                state.send(head, std::mem::take(&mut self.kept).freeze());
            } else {
                state.skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref()
                    && this.copy.is_some()
                {
                    if this.kept.len() + d.len() > this.limit {
                        this.kept = BytesMut::new();
                        this.finish(false);
                    } else {
                        this.kept.extend_from_slice(d);
                    }
                }
                // The sender may stop polling once the body says it has ended.
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Some(Err(_)) => this.finish(false),
            None => this.finish(true),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // A body dropped before its end (the client went away): no copy.
        if self.copy.is_some() {
            self.finish(false);
        }
    }
}
