//! Authentication on routes (`auth = ["policy", ...]`, policies in `[[auth]]`): a
//! request goes on when one of the route's policies accepts it (every one with
//! `auth_require = "all"`), else it is refused with 401 `unauthorized` and a
//! `WWW-Authenticate` challenge per policy. The accepted user is written to the access
//! log. `auth_skip` paths (exact, or prefixes ending in `*`) go on without. Policies:
//! `basic` (argon2 hashes, verified on the blocking pool with the verdicts cached, as
//! the forward proxy's users are), `api_key` (a key in a header or query parameter, its
//! SHA-256 looked up among the hashes of a keys file), `jwt` (bearer tokens verified
//! with a key file or the keys of a JWKS URL, `jwks.rs`) and `external` (a subrequest
//! to an authorization service, `ext_authz.rs`, whose 401 and 403 are relayed).

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use pylon_config::model::{Action, AuthKind, ProxyUser};
use pylon_config::{Config, ConfigError};

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
    ApiKey {
        header: Option<http::HeaderName>,
        query: Option<String>,
        /// SHA-256 of each key, to the key's name.
        keys: HashMap<[u8; 32], Arc<str>>,
    },
    Jwt(Box<JwtPolicy>),
    External(Box<super::ext_authz::ExternalPolicy>),
}

/// Where a JWT policy's keys are.
enum JwtKeys {
    Static(jsonwebtoken::DecodingKey),
    Jwks(Arc<super::jwks::JwksKeys>),
}

/// What a bearer token came to.
enum TokenCheck {
    Claims(Arc<serde_json::Map<String, serde_json::Value>>),
    Refused,
    /// No key set could be fetched to check it with.
    Unavailable,
}

/// A JWT policy ready to verify tokens.
pub(crate) struct JwtPolicy {
    keys: JwtKeys,
    validation: jsonwebtoken::Validation,
    required: Vec<String>,
    claims_to_headers: Vec<(String, http::HeaderName)>,
    strip: bool,
    /// Tokens verified so far, by their text: a token seen again costs a lookup and a
    /// check of its times, not a signature verification.
    verified: moka::sync::Cache<String, Arc<VerifiedToken>>,
}

/// A token whose signature and claims checked out.
struct VerifiedToken {
    claims: Arc<serde_json::Map<String, serde_json::Value>>,
    exp: Option<i64>,
    nbf: Option<i64>,
    /// The key set it was verified with (a JWKS replaced since makes it verify again).
    generation: u64,
}

/// Verified tokens kept per policy, and for how long at most.
const VERIFIED_TOKENS: u64 = 10_000;
const VERIFIED_FOR: std::time::Duration = std::time::Duration::from_secs(300);

impl JwtPolicy {
    fn new(j: &pylon_config::model::Jwt, clusters: &Clusters) -> Result<JwtPolicy, String> {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation};
        let algorithms: Vec<Algorithm> = j
            .algorithms
            .iter()
            .filter_map(|a| a.parse::<Algorithm>().ok())
            .collect();
        let first = *algorithms.first().ok_or("no algorithm")?;
        let keys = match &j.keys {
            pylon_config::model::JwtKeys::Jwks(k) => JwtKeys::Jwks(Arc::new(
                super::jwks::JwksKeys::new(k.clone(), clusters.get(&k.cluster).cloned()),
            )),
            pylon_config::model::JwtKeys::File(f) => {
                let bytes = std::fs::read(&f.path)
                    .map_err(|e| format!("cannot read the key file {}: {e}", f.path.display()))?;
                JwtKeys::Static(
                    match first {
                        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                            DecodingKey::from_secret(bytes.trim_ascii_end())
                        }
                        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&bytes),
                        Algorithm::EdDSA => DecodingKey::from_ed_pem(&bytes),
                        _ => DecodingKey::from_rsa_pem(&bytes),
                    }
                    .map_err(|e| format!("{}: not a key for {first:?}: {e}", f.path.display()))?,
                )
            }
        };
        let mut validation = Validation::new(first);
        validation.algorithms = algorithms;
        validation.leeway = j.leeway.as_secs();
        validation.validate_nbf = true;
        match &j.audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        if let Some(i) = &j.issuer {
            validation.set_issuer(&[i]);
        }
        Ok(JwtPolicy {
            keys,
            validation,
            required: j.required_claims.clone(),
            claims_to_headers: j
                .claims_to_headers
                .iter()
                .filter_map(|(c, h)| {
                    Some((c.clone(), http::HeaderName::from_bytes(h.as_bytes()).ok()?))
                })
                .collect(),
            strip: j.strip_token,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_TOKENS)
                .time_to_live(VERIFIED_FOR)
                .build(),
        })
    }

    /// The generation of the keys in use.
    fn generation(&self) -> u64 {
        match &self.keys {
            JwtKeys::Static(_) => 0,
            JwtKeys::Jwks(k) => k.generation(),
        }
    }

    /// A token verified before, still within its times (with leeway) and verified with
    /// the keys in use.
    fn known(&self, token: &str) -> Option<Arc<serde_json::Map<String, serde_json::Value>>> {
        let t = self.verified.get(token)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let leeway = i64::try_from(self.validation.leeway).unwrap_or(0);
        let fresh = t.exp.is_none_or(|exp| now <= exp.saturating_add(leeway))
            && t.nbf.is_none_or(|nbf| nbf <= now.saturating_add(leeway))
            && t.generation == self.generation();
        fresh.then(|| Arc::clone(&t.claims))
    }

    /// The token's claims, when it verifies and carries the required ones.
    async fn verify_token(&self, req: &Request<ClientBody>) -> TokenCheck {
        let Some(token) = bearer(req) else {
            return TokenCheck::Refused;
        };
        if let Some(claims) = self.known(token) {
            return TokenCheck::Claims(claims);
        }
        let generation = self.generation();
        let decode = |key: &jsonwebtoken::DecodingKey| {
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                key,
                &self.validation,
            )
            .ok()
        };
        let data = match &self.keys {
            JwtKeys::Static(key) => decode(key),
            JwtKeys::Jwks(jwks) => {
                let Ok(header) = jsonwebtoken::decode_header(token) else {
                    return TokenCheck::Refused;
                };
                if !self.validation.algorithms.contains(&header.alg) {
                    return TokenCheck::Refused;
                }
                match jwks.key(header.kid.as_deref()).await {
                    super::jwks::KeyLookup::Found(key) => decode(&key),
                    super::jwks::KeyLookup::Candidates(keys) => keys.iter().find_map(|k| decode(k)),
                    super::jwks::KeyLookup::Unknown => None,
                    super::jwks::KeyLookup::Unavailable => return TokenCheck::Unavailable,
                }
            }
        };
        match data {
            Some(d) if self.required.iter().all(|c| d.claims.contains_key(c)) => {
                let time = |name: &str| d.claims.get(name).and_then(serde_json::Value::as_i64);
                let (exp, nbf) = (time("exp"), time("nbf"));
                let claims = Arc::new(d.claims);
                self.verified.insert(
                    token.to_owned(),
                    Arc::new(VerifiedToken {
                        exp,
                        nbf,
                        claims: Arc::clone(&claims),
                        generation,
                    }),
                );
                TokenCheck::Claims(claims)
            }
            _ => TokenCheck::Refused,
        }
    }
}

/// The bearer token of `Authorization`, unless it is too long to look at.
fn bearer(req: &Request<ClientBody>) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && token.len() <= MAX_TOKEN).then(|| token.trim())
}

/// The longest bearer token looked at (a huge `Authorization` is refused unparsed).
const MAX_TOKEN: usize = 16 * 1024;

/// What an accepted JWT sends upstream: headers from its claims, and whether the token
/// itself is removed.
#[derive(Clone, Default)]
struct FromToken {
    headers: Vec<(http::HeaderName, HeaderValue)>,
    strip: bool,
    /// The accepted token's claims (for rate-limit keys).
    claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

/// A keys file: `NAME HEX` lines (the SHA-256 of each key in hex), `#` comments.
fn read_keys(path: &std::path::Path) -> Result<HashMap<[u8; 32], Arc<str>>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the keys file {}: {e}", path.display()))?;
    let mut keys = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line
            .split_once(char::is_whitespace)
            .and_then(|(name, hex)| {
                let hex = hex.trim();
                (hex.len() == 64 && !name.is_empty()).then_some(())?;
                let mut digest = [0u8; 32];
                for (i, b) in digest.iter_mut().enumerate() {
                    *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some((digest, Arc::from(name)))
            });
        match parsed {
            Some((digest, name)) => {
                keys.insert(digest, name);
            }
            None => {
                return Err(format!(
                    "{} line {}: expected NAME and the key's SHA-256 in hex (as `pylon apikey` prints)",
                    path.display(),
                    n + 1
                ));
            }
        }
    }
    Ok(keys)
}

/// The problems `pylon check` reports for the auth policies' files (keys files that
/// cannot be read or have a malformed line).
pub fn check(config: &Config) -> Vec<ConfigError> {
    policies(config, &Clusters::new()).err().unwrap_or_default()
}

/// A new random API key (32 bytes, URL-safe base64 without padding) and its SHA-256 in
/// hex, for `pylon apikey`.
pub fn new_key() -> Result<(String, String), String> {
    use aws_lc_rs::rand::SecureRandom as _;
    use base64::Engine as _;
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| "no randomness available".to_string())?;
    let key = format!(
        "pk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let digest: String = key_digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((key, digest))
}

/// The SHA-256 of a key.
pub fn key_digest(key: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The jwt policies of a route that matches on `claims` (none for other routes).
pub(crate) fn claim_policies(
    route: &pylon_config::model::Route,
    policies: &Policies,
) -> Vec<Arc<Policy>> {
    let Action::Proxy(p) = &route.action else {
        return Vec::new();
    };
    if route.matcher.claims.is_empty() {
        return Vec::new();
    }
    p.auth
        .iter()
        .filter_map(|n| policies.get(n))
        .filter(|p| matches!(p.as_ref(), Policy::Jwt(_)))
        .cloned()
        .collect()
}

/// The verdict of each routing jwt policy on a request's token, made before routing
/// and kept in the request's extensions so that its route's auth filter does not verify
/// the token again.
#[derive(Clone)]
pub(crate) struct RoutingClaims(Arc<Vec<(usize, Verified)>>);

/// A routing verdict: the claims, or why there are none.
#[derive(Clone)]
enum Verified {
    Claims(Arc<serde_json::Map<String, serde_json::Value>>),
    Refused,
    Unavailable,
}

impl RoutingClaims {
    fn of(&self, policy: &Policy) -> Option<&Verified> {
        let id = std::ptr::from_ref(policy) as usize;
        self.0.iter().find(|(p, _)| *p == id).map(|(_, v)| v)
    }

    /// Whether a token verified by one of `policies` (a route's) carries every claim
    /// of `wanted` (its `claims`) (a string equal to the value, another JSON value whose
    /// text is, or a list holding one of these).
    pub(crate) fn satisfy(&self, policies: &[Arc<Policy>], wanted: &[(String, String)]) -> bool {
        policies.iter().any(|p| {
            let Some(Verified::Claims(c)) = self.of(p) else {
                return false;
            };
            wanted.iter().all(|(name, want)| {
                let is = |v: &serde_json::Value| match v {
                    serde_json::Value::String(s) => s == want,
                    other => serde_json::to_string(other).is_ok_and(|t| t == *want),
                };
                match c.get(name) {
                    Some(serde_json::Value::Array(items)) => items.iter().any(is),
                    Some(v) => is(v),
                    None => false,
                }
            })
        })
    }
}

/// Verifies the request's token with each of `policies` (jwt ones), for routing.
pub(crate) async fn routing_claims(
    policies: &[Arc<Policy>],
    req: &Request<ClientBody>,
) -> RoutingClaims {
    let mut out = Vec::with_capacity(policies.len());
    for p in policies {
        if let Policy::Jwt(j) = p.as_ref() {
            let v = match j.verify_token(req).await {
                TokenCheck::Claims(c) => Verified::Claims(c),
                TokenCheck::Refused => Verified::Refused,
                TokenCheck::Unavailable => Verified::Unavailable,
            };
            out.push((Arc::as_ptr(p) as usize, v));
        }
    }
    RoutingClaims(Arc::new(out))
}

impl Policy {
    /// The counters of a policy that asks another service: (label, requests made,
    /// failures) for a JWKS or an external authorization service.
    pub(crate) fn service_counts(&self) -> Option<(&'static str, u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        match self {
            Policy::Jwt(j) => match &j.keys {
                JwtKeys::Jwks(k) => {
                    Some(("jwks", k.fetches.load(Relaxed), k.failures.load(Relaxed)))
                }
                JwtKeys::Static(_) => None,
            },
            Policy::External(e) => {
                Some(("external", e.checks.load(Relaxed), e.failures.load(Relaxed)))
            }
            Policy::Basic { .. } | Policy::ApiKey { .. } => None,
        }
    }
}

/// The runtime's clusters, by name (for JWKS and external authorization).
pub(crate) type Clusters = HashMap<String, Arc<crate::cluster::ClusterRuntime>>;

/// The policies of `config` (credential caches start empty, keys files are read again
/// on each reload); a keys file that cannot be read is an error naming where it is set.
pub(crate) fn policies(config: &Config, clusters: &Clusters) -> Result<Policies, Vec<ConfigError>> {
    let mut out = Policies::new();
    let mut errors = Vec::new();
    for a in &config.auth {
        let policy = match &a.kind {
            AuthKind::Basic { realm, users } => Policy::Basic {
                users: users.clone(),
                challenge: HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
                    .unwrap_or_else(|_| HeaderValue::from_static("Basic")),
                credentials: Credentials::new(),
            },
            AuthKind::ApiKey {
                header,
                query,
                keys_file,
            } => match read_keys(&keys_file.path) {
                Ok(keys) => Policy::ApiKey {
                    header: header
                        .as_deref()
                        .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
                    query: query.clone(),
                    keys,
                },
                Err(e) => {
                    errors.push(keys_file.at.error(e));
                    continue;
                }
            },
            AuthKind::Jwt(j) => match JwtPolicy::new(j, clusters) {
                Ok(p) => Policy::Jwt(Box::new(p)),
                Err(e) => {
                    if let pylon_config::model::JwtKeys::File(f) = &j.keys {
                        errors.push(f.at.error(e));
                    }
                    continue;
                }
            },
            AuthKind::External(e) => Policy::External(Box::new(
                super::ext_authz::ExternalPolicy::new(e, clusters.get(&e.cluster).cloned()),
            )),
        };
        out.insert(a.name.clone(), Arc::new(policy));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
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
        all: p.auth_all,
    }))
}

struct Auth {
    policies: Vec<Arc<Policy>>,
    skip: Vec<String>,
    /// Every policy must accept (else any one).
    all: bool,
}

/// Left for `error_answer` when the request was refused, and how.
#[derive(Clone)]
enum Refused {
    /// No policy accepted: challenges.
    Plain,
    /// An external service's refusal, relayed.
    Relay(Arc<super::ext_authz::Refusal>),
    /// A policy could not decide.
    Unavailable,
}

impl Auth {
    fn skipped(&self, path: &str) -> bool {
        self.skip.iter().any(|s| match s.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == s,
        })
    }

    /// What `policy` makes of the request: the user it accepts it as (a JWT's claims
    /// and an external service's headers to send upstream are left in `from_token`),
    /// or why not.
    async fn outcome(
        &self,
        policy: &Policy,
        req: &Request<ClientBody>,
        cx: &FilterCtx<'_>,
        from_token: &mut FromToken,
    ) -> Outcome {
        let user = match policy {
            Policy::Jwt(j) => {
                // Verified already when routing looked at its claims.
                let routed = req
                    .extensions()
                    .get::<RoutingClaims>()
                    .and_then(|r| r.of(policy).cloned());
                let claims = match routed {
                    Some(Verified::Claims(c)) => c,
                    Some(Verified::Refused) => return Outcome::Refused,
                    Some(Verified::Unavailable) => return Outcome::Unavailable,
                    None => match j.verify_token(req).await {
                        TokenCheck::Claims(c) => c,
                        TokenCheck::Refused => return Outcome::Refused,
                        TokenCheck::Unavailable => return Outcome::Unavailable,
                    },
                };
                for (claim, name) in &j.claims_to_headers {
                    let text = match claims.get(claim) {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                            v.to_string()
                        }
                        _ => continue,
                    };
                    if let Ok(v) = HeaderValue::from_str(&text) {
                        from_token.headers.push((name.clone(), v));
                    }
                }
                from_token.strip |= j.strip;
                let subject: Arc<str> =
                    Arc::from(claims.get("sub").and_then(|s| s.as_str()).unwrap_or("jwt"));
                from_token.claims = Some(claims);
                Some(subject)
            }
            Policy::Basic {
                users, credentials, ..
            } => {
                credentials
                    .check_basic(req.headers().get(header::AUTHORIZATION), users)
                    .await
            }
            Policy::ApiKey {
                header,
                query,
                keys,
            } => presented_key(req, header.as_ref(), query.as_deref())
                .and_then(|k| keys.get(&key_digest(k)).cloned()),
            Policy::External(e) => {
                use super::ext_authz::Verdict;
                match &*e.check(req, cx).await {
                    Verdict::Allow { headers, user } => {
                        from_token.headers.extend(headers.iter().cloned());
                        Some(user.clone().unwrap_or_else(|| Arc::from("external")))
                    }
                    Verdict::Deny(refusal) => return Outcome::Relay(Arc::clone(refusal)),
                    Verdict::Failed => match e.fail_mode() {
                        pylon_config::model::FailMode::Allow => Some(Arc::from("external")),
                        pylon_config::model::FailMode::Deny => return Outcome::Unavailable,
                    },
                }
            }
        };
        user.map_or(Outcome::Refused, Outcome::Accepted)
    }

    async fn check(
        &self,
        req: &Request<ClientBody>,
        cx: &mut FilterCtx<'_>,
    ) -> Result<Option<Response<ResponseBody>>, ErrorKind> {
        if self.skipped(req.uri().path()) {
            return Ok(None);
        }
        // Any one policy lets it through; with `auth_require = "all"`, every one must
        // (the first one's user is the one logged).
        let mut first: Option<Arc<str>> = None;
        let mut from_token = FromToken::default();
        let mut refusal = Refused::Plain;
        for policy in &self.policies {
            let mut this = FromToken::default();
            match self.outcome(policy, req, cx, &mut this).await {
                Outcome::Accepted(user) => {
                    from_token.headers.extend(this.headers);
                    from_token.strip |= this.strip;
                    from_token.claims = from_token.claims.or(this.claims);
                    first.get_or_insert(user);
                    if !self.all {
                        break;
                    }
                }
                other => {
                    // Why it is refused, if it is: a service that could not decide
                    // outweighs a relayed refusal, which outweighs a plain one.
                    refusal = match (other, refusal) {
                        (Outcome::Unavailable, _) | (_, Refused::Unavailable) => {
                            Refused::Unavailable
                        }
                        (Outcome::Relay(r), _) => Refused::Relay(r),
                        (_, kept) => kept,
                    };
                    if self.all {
                        first = None;
                        break;
                    }
                }
            }
        }
        if let Some(user) = first {
            cx.user = Some(user);
            accept(cx, from_token);
            return Ok(None);
        }
        let kind = match &refusal {
            Refused::Plain => ErrorKind::Unauthorized,
            Refused::Unavailable => ErrorKind::AuthUnavailable,
            Refused::Relay(r) if r.status == http::StatusCode::FORBIDDEN => ErrorKind::AuthDenied,
            Refused::Relay(_) => ErrorKind::Unauthorized,
        };
        cx.state.insert(refusal);
        Err(kind)
    }
}

/// One policy's answer to a request.
enum Outcome {
    Accepted(Arc<str>),
    Refused,
    /// An external service's 401 or 403.
    Relay(Arc<super::ext_authz::Refusal>),
    /// The policy could not decide (an external service or a JWKS that failed).
    Unavailable,
}

/// Leaves what an accepted request carries on: a token's claims for rate-limit keys,
/// and what goes upstream.
fn accept(cx: &mut FilterCtx<'_>, from_token: FromToken) {
    if let Some(c) = &from_token.claims {
        cx.state.insert(super::rate_limit::Claims(Arc::clone(c)));
    }
    cx.state.insert(from_token);
}

/// The API key a request presents: the header's value, or the query parameter's.
fn presented_key<'r>(
    req: &'r Request<ClientBody>,
    header: Option<&http::HeaderName>,
    query: Option<&str>,
) -> Option<&'r [u8]> {
    if let Some(h) = header {
        return req.headers().get(h).map(HeaderValue::as_bytes);
    }
    crate::http::headers::query_param(req.uri(), query?).map(str::as_bytes)
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

    fn upstream_head(&self, head: &mut http::request::Parts, cx: &mut FilterCtx<'_>) {
        // Headers a JWT's claims or an authorization service fill come from them,
        // never from the client.
        for policy in &self.policies {
            match policy.as_ref() {
                Policy::Jwt(j) => {
                    for (_, name) in &j.claims_to_headers {
                        head.headers.remove(name);
                    }
                }
                Policy::External(e) => {
                    for name in e.upstream_headers() {
                        head.headers.remove(name);
                    }
                }
                Policy::Basic { .. } | Policy::ApiKey { .. } => {}
            }
        }
        if let Some(from) = cx.state.get::<FromToken>() {
            for (name, value) in &from.headers {
                head.headers.append(name.clone(), value.clone());
            }
            if from.strip {
                head.headers.remove(header::AUTHORIZATION);
            }
        }
    }

    fn error_answer(&self, resp: &mut Response<ResponseBody>, state: &http::Extensions) {
        match state.get::<Refused>() {
            Some(Refused::Plain) => {}
            Some(Refused::Relay(r)) => {
                // The service's own answer: its status is the error's, its headers and
                // body replace the proxy's text.
                if !r.body.is_empty() {
                    resp.headers_mut().remove(header::CONTENT_TYPE);
                    *resp.body_mut() = ResponseBody::full(r.body.clone());
                }
                for (name, value) in &r.headers {
                    resp.headers_mut().append(name.clone(), value.clone());
                }
                return;
            }
            Some(Refused::Unavailable) | None => return,
        }
        for policy in &self.policies {
            match policy.as_ref() {
                Policy::Basic { challenge, .. } => {
                    resp.headers_mut()
                        .append(header::WWW_AUTHENTICATE, challenge.clone());
                }
                Policy::Jwt(_) => {
                    resp.headers_mut()
                        .append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                Policy::ApiKey { .. } | Policy::External(_) => {}
            }
        }
    }
}
