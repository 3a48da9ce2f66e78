//! External authorization (`[[auth]] external = { cluster = ... }`, NGINX's
//! `auth_request`, Envoy's `ext_authz` over HTTP): a subrequest to the authorization
//! service with the request's method, `path_prefix` + path and query, and the chosen
//! headers (never its body). A 2xx lets the request through with the answer's
//! `upstream_headers` added upstream; a 401 or 403 is relayed to the client (status,
//! challenge, cookies, body); anything else, a failure or a timeout gives 503
//! `auth_unavailable`, or lets the request through with `on_error = "allow"`. Verdicts
//! are reused for `cache_ttl` per key (at most [`CACHE_ENTRIES`] kept).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use pylon_config::model::{ExternalAuth, FailMode};

use super::FilterCtx;
use crate::cluster::ClusterRuntime;
use crate::cluster::subrequest::{self, Subrequest};
use crate::conn::ClientBody;

/// Verdicts kept for reuse, at most.
const CACHE_ENTRIES: u64 = 10_000;
/// The largest refusal body relayed.
const MAX_BODY: usize = 64 * 1024;

/// A policy ready to ask its service.
pub(crate) struct ExternalPolicy {
    settings: ExternalAuth,
    cluster: Option<Arc<ClusterRuntime>>,
    headers: Vec<HeaderName>,
    upstream_headers: Vec<HeaderName>,
    user_header: Option<HeaderName>,
    cache: Option<moka::sync::Cache<String, Arc<Verdict>>>,
    pub(crate) checks: AtomicU64,
    pub(crate) failures: AtomicU64,
}

/// What the service said.
pub(crate) enum Verdict {
    Allow {
        headers: Vec<(HeaderName, HeaderValue)>,
        user: Option<Arc<str>>,
    },
    /// A 401 or 403 to relay.
    Deny(Arc<Refusal>),
    /// It failed, timed out or answered something else.
    Failed,
}

/// A refusal as the service wrote it.
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Bytes,
}

/// The service's headers a refusal takes to the client.
const RELAYED: [HeaderName; 4] = [
    header::WWW_AUTHENTICATE,
    header::CONTENT_TYPE,
    header::LOCATION,
    header::SET_COOKIE,
];

fn names(list: &[String]) -> Vec<HeaderName> {
    list.iter()
        .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
        .collect()
}

impl ExternalPolicy {
    pub(crate) fn new(
        settings: &ExternalAuth,
        cluster: Option<Arc<ClusterRuntime>>,
    ) -> ExternalPolicy {
        ExternalPolicy {
            headers: names(&settings.headers),
            upstream_headers: names(&settings.upstream_headers),
            user_header: settings
                .user_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            cache: (!settings.cache_ttl.is_zero()).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(CACHE_ENTRIES)
                    .time_to_live(settings.cache_ttl)
                    .build()
            }),
            settings: settings.clone(),
            cluster,
            checks: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// The headers an accepting answer sets upstream.
    pub(crate) fn upstream_headers(&self) -> &[HeaderName] {
        &self.upstream_headers
    }

    pub(crate) fn fail_mode(&self) -> FailMode {
        self.settings.on_error
    }

    /// The service's verdict on `req`, from the cache when it holds one.
    pub(crate) async fn check(
        &self,
        req: &Request<ClientBody>,
        cx: &FilterCtx<'_>,
    ) -> Arc<Verdict> {
        let key = self.cache.as_ref().map(|_| self.cache_key(req, cx));
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(v) = cache.get(key)
        {
            return v;
        }
        let verdict = Arc::new(self.ask(req).await);
        if let (Some(cache), Some(key)) = (&self.cache, key)
            && !matches!(*verdict, Verdict::Failed)
        {
            cache.insert(key, Arc::clone(&verdict));
        }
        verdict
    }

    /// The verdict cache's key: the configured parts, else the method, path and query,
    /// and the headers sent.
    fn cache_key(&self, req: &Request<ClientBody>, cx: &FilterCtx<'_>) -> String {
        if let Some(parts) = &self.settings.cache_key {
            return super::rate_limit::key_text(parts, req, cx);
        }
        let mut key = format!(
            "{} {}",
            req.method(),
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        for h in &self.headers {
            for v in req.headers().get_all(h) {
                key.push('\u{1f}');
                key.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
        }
        key
    }

    async fn ask(&self, req: &Request<ClientBody>) -> Verdict {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let Some(cluster) = &self.cluster else {
            return Verdict::Failed;
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let Ok(target) =
            http::uri::PathAndQuery::try_from(format!("{}{path}", self.settings.path_prefix))
        else {
            return Verdict::Failed;
        };
        let mut headers = HeaderMap::new();
        for h in &self.headers {
            for v in req.headers().get_all(h) {
                headers.append(h.clone(), v.clone());
            }
        }
        let host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if let Some(h) = &host {
            headers.insert(HeaderName::from_static("x-forwarded-host"), h.clone());
        }
        let answer = subrequest::fetch(
            cluster,
            Subrequest {
                method: req.method().clone(),
                target,
                host: None,
                headers,
                body: bytes::Bytes::new(),
            },
            self.settings.timeout,
            MAX_BODY,
        )
        .await;
        let answer = match answer {
            Ok(a) => a,
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(cluster = %self.settings.cluster, %error, "external authorization failed");
                return Verdict::Failed;
            }
        };
        let copy = |names: &[HeaderName]| {
            let mut out = Vec::new();
            for n in names {
                for v in answer.headers.get_all(n) {
                    out.push((n.clone(), v.clone()));
                }
            }
            out
        };
        match answer.status {
            s if s.is_success() => Verdict::Allow {
                headers: copy(&self.upstream_headers),
                user: self
                    .user_header
                    .as_ref()
                    .and_then(|h| answer.headers.get(h))
                    .and_then(|v| v.to_str().ok())
                    .map(Arc::from),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Verdict::Deny(Arc::new(Refusal {
                status: answer.status,
                headers: copy(&RELAYED),
                body: answer.body.clone(),
            })),
            other => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(cluster = %self.settings.cluster, status = %other, "external authorization answered neither 2xx, 401 nor 403");
                Verdict::Failed
            }
        }
    }
}
