//! Requests of Pylon's own to a cluster (a JWKS document, an external authorization
//! check): through the cluster's balancer, pools, TLS and outlier detection, like a
//! proxied request, with a deadline and the answer's body read up to a bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version, header};
use http_body_util::BodyExt;
use pylon_config::model::UpstreamProtocol;

use super::ClusterRuntime;
use super::body::RequestBody;

/// A subrequest's answer, its body whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a subrequest has no answer.
#[derive(Debug)]
pub enum SubrequestError {
    NoEndpoint,
    Timeout,
    Upstream(String),
    BodyTooLarge,
}

impl std::fmt::Display for SubrequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubrequestError::NoEndpoint => f.write_str("no endpoint of the cluster is in rotation"),
            SubrequestError::Timeout => f.write_str("no answer in time"),
            SubrequestError::Upstream(e) => f.write_str(e),
            SubrequestError::BodyTooLarge => f.write_str("the answer's body is too large"),
        }
    }
}

/// What to ask: method, target (path and query), `Host` (the endpoint's when `None`),
/// headers and a body (none when empty).
pub struct Subrequest {
    pub method: Method,
    pub target: http::uri::PathAndQuery,
    pub host: Option<HeaderValue>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends `sub` to one endpoint of `cluster` and reads the answer whole (up to
/// `max_body` bytes), all within `timeout`.
pub async fn fetch(
    cluster: &Arc<ClusterRuntime>,
    sub: Subrequest,
    timeout: Duration,
    max_body: usize,
) -> Result<Answer, SubrequestError> {
    let started = Instant::now();
    let mut lease = cluster.pick(None).ok_or(SubrequestError::NoEndpoint)?;
    let endpoint = Arc::clone(lease.endpoint());
    let host = sub.host.unwrap_or_else(|| endpoint.host_value.clone());
    let mut req = Request::new(if sub.body.is_empty() {
        RequestBody::Empty
    } else {
        RequestBody::Full(Some(sub.body.clone()))
    });
    *req.method_mut() = sub.method;
    *req.headers_mut() = sub.headers;
    if !sub.body.is_empty() {
        req.headers_mut().remove(header::TRANSFER_ENCODING);
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(sub.body.len()));
    }
    match cluster.protocol {
        UpstreamProtocol::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            *req.uri_mut() = Uri::from(sub.target);
            req.headers_mut().insert(header::HOST, host);
        }
        protocol => {
            *req.version_mut() = if protocol == UpstreamProtocol::H3 {
                Version::HTTP_3
            } else {
                Version::HTTP_2
            };
            let scheme = if protocol == UpstreamProtocol::H2c {
                "http"
            } else {
                "https"
            };
            let authority = host.to_str().unwrap_or("localhost");
            *req.uri_mut() = Uri::builder()
                .scheme(scheme)
                .authority(authority)
                .path_and_query(sub.target)
                .build()
                .map_err(|e| SubrequestError::Upstream(e.to_string()))?;
            req.headers_mut().remove(header::HOST);
        }
    }
    let exchange = async {
        let (resp, _pooled) = endpoint
            .send(req, timeout, None, &mut super::TryTiming::default())
            .await
            .map_err(|e| SubrequestError::Upstream(e.to_string()))?;
        lease.record_latency(started.elapsed());
        let (parts, body) = resp.into_parts();
        let body = http_body_util::Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    SubrequestError::BodyTooLarge
                } else {
                    SubrequestError::Upstream(e.to_string())
                }
            })?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    let answer = match tokio::time::timeout(timeout, exchange).await {
        Ok(a) => a,
        Err(_) => Err(SubrequestError::Timeout),
    };
    lease.report(answer.as_ref().is_ok_and(|a| !a.status.is_server_error()));
    answer
}
