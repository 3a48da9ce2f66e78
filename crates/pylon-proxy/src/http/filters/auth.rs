//! Authentication on routes (`auth = ["policy", ...]`, policies in `[[auth]]`): a
//! request goes on when one of the route's policies accepts it, else it is refused with
//! 401 `unauthorized` and a `WWW-Authenticate` challenge per policy. The accepted user is
//! written to the access log. `auth_skip` paths (exact, or prefixes ending in `*`) go on
//! without. Policies so far: `basic` (argon2 hashes, verified on the blocking pool with
//! the verdicts cached, as the forward proxy's users are).

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use pylon_config::Config;
use pylon_config::model::{Action, AuthKind, ProxyUser};

use super::{Filter, FilterCtx, FilterSite, Lookup};
use crate::conn::ClientBody;
use crate::http::body::ResponseBody;
use crate::http::error::ErrorKind;
use crate::http::forward_auth::Credentials;

/// The runtime's auth policies, by name.
pub(crate) type Policies = HashMap<String, Arc<Policy>>;

/// One policy, ready to check requests.
pub(crate) enum Policy {
    Basic {
        users: Vec<ProxyUser>,
        /// `Basic realm="..."`.
        challenge: HeaderValue,
        credentials: Credentials,
    },
}

/// The policies of `config` (their credential caches start empty on each reload).
pub(crate) fn policies(config: &Config) -> Policies {
    config
        .auth
        .iter()
        .map(|a| {
            let policy = match &a.kind {
                AuthKind::Basic { realm, users } => Policy::Basic {
                    users: users.clone(),
                    challenge: HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
                        .unwrap_or_else(|_| HeaderValue::from_static("Basic")),
                    credentials: Credentials::new(),
                },
            };
            (a.name.clone(), Arc::new(policy))
        })
        .collect()
}

pub(super) fn build(site: &FilterSite<'_>) -> Option<Arc<dyn Filter>> {
    let Action::Proxy(p) = &site.route.action else {
        return None;
    };
    if p.auth.is_empty() {
        return None;
    }
    let policies: Vec<Arc<Policy>> = p
        .auth
        .iter()
        .filter_map(|n| site.auth.get(n).cloned())
        .collect();
    Some(Arc::new(Auth {
        policies,
        skip: p.auth_skip.clone(),
    }))
}

struct Auth {
    policies: Vec<Arc<Policy>>,
    skip: Vec<String>,
}

/// Left for `error_answer` when the request was refused.
#[derive(Clone)]
struct Refused;

impl Auth {
    fn skipped(&self, path: &str) -> bool {
        self.skip.iter().any(|s| match s.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == s,
        })
    }

    async fn check(
        &self,
        req: &Request<ClientBody>,
        cx: &mut FilterCtx<'_>,
    ) -> Result<Option<Response<ResponseBody>>, ErrorKind> {
        if self.skipped(req.uri().path()) {
            return Ok(None);
        }
        for policy in &self.policies {
            let user = match policy.as_ref() {
                Policy::Basic {
                    users, credentials, ..
                } => {
                    credentials
                        .check_basic(req.headers().get(header::AUTHORIZATION), users)
                        .await
                }
            };
            if let Some(user) = user {
                cx.user = Some(user);
                return Ok(None);
            }
        }
        cx.state.insert(Refused);
        Err(ErrorKind::Unauthorized)
    }
}

impl Filter for Auth {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn lookup<'a>(
        &'a self,
        req: &'a mut Request<ClientBody>,
        cx: &'a mut FilterCtx<'_>,
    ) -> Option<Lookup<'a>> {
        Some(Box::pin(self.check(req, cx)))
    }

    fn error_answer(&self, resp: &mut Response<ResponseBody>, state: &http::Extensions) {
        if state.get::<Refused>().is_none() {
            return;
        }
        for policy in &self.policies {
            let Policy::Basic { challenge, .. } = policy.as_ref();
            resp.headers_mut()
                .append(header::WWW_AUTHENTICATE, challenge.clone());
        }
    }
}
