//! `[[auth]]` policies: a name and exactly one kind (`basic`, `api_key`, `jwt`), checked where they
//! are written; routes name them in `auth`.

use std::collections::HashSet;
use std::ops::Range;

use std::time::Duration;

use toml::Spanned;

use super::{Problems, check_name, header_value_ok};
use crate::model::*;
use crate::raw::RawAuth;

pub(super) fn policy(
    r: RawAuth,
    span: Range<usize>,
    ctx: &super::Ctx<'_, '_>,
    names: &mut HashSet<String>,
    p: &mut Problems,
) -> Option<AuthPolicy> {
    let Some(name) = &r.name else {
        p.span(span, "an [[auth]] policy needs a `name`");
        return None;
    };
    check_name(name, "auth policy", names, p);
    let kinds = [
        r.basic.is_some(),
        r.api_key.is_some(),
        r.jwt.is_some(),
        r.external.is_some(),
    ]
    .iter()
    .filter(|k| **k)
    .count();
    if kinds > 1 {
        p.span(
            span,
            "an [[auth]] policy has exactly one kind: `basic`, `api_key`, `jwt` or `external`",
        );
        return None;
    }
    if let Some(e) = r.external {
        return Some(AuthPolicy {
            name: name.get_ref().clone(),
            kind: AuthKind::External(external(e.into_inner(), ctx, p)),
        });
    }
    if let Some(j) = r.jwt {
        let j = j.into_inner();
        let algorithms = j.algorithms.get_ref().0.clone();
        let family = |a: &str| match a {
            "HS256" | "HS384" | "HS512" => Some("HS"),
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => Some("RS"),
            "ES256" | "ES384" => Some("ES"),
            "EdDSA" => Some("Ed"),
            _ => None,
        };
        let families: HashSet<Option<&str>> = algorithms.iter().map(|a| family(a)).collect();
        if algorithms.is_empty() {
            p.at(&j.algorithms, "list at least one algorithm");
        } else if families.contains(&None) {
            p.at(
                &j.algorithms,
                "unknown algorithm: expected HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA",
            );
        } else if families.len() > 1 {
            p.at(
                &j.algorithms,
                "one key verifies one family: HS*, RS*/PS*, ES* or EdDSA, not a mix",
            );
        }
        let leeway = match &j.leeway {
            None => std::time::Duration::from_secs(60),
            Some(l) => crate::units::parse_duration(l.get_ref()).unwrap_or_else(|e| {
                p.at(l, e);
                std::time::Duration::from_secs(60)
            }),
        };
        let mut claims_to_headers = Vec::new();
        if let Some(m) = &j.claims_to_headers {
            for (claim, header) in m.get_ref() {
                if !super::header_name_ok(header.get_ref()) {
                    p.at(
                        header,
                        format!("invalid header name \"{}\"", header.get_ref()),
                    );
                }
                claims_to_headers.push((claim.clone(), header.get_ref().to_ascii_lowercase()));
            }
        }
        let keys = match (&j.key_file, j.jwks) {
            (Some(f), None) => JwtKeys::File(ctx.file_ref(f)),
            (None, Some(k)) => JwtKeys::Jwks(jwks(k.into_inner(), ctx, p)),
            (Some(f), Some(_)) => {
                p.at(f, "give `key_file` or `jwks`, not both");
                return None;
            }
            (None, None) => {
                p.span(
                    span,
                    "a jwt policy needs its key: `key_file` (a secret or PEM public key) or `jwks` (a JWKS URL)",
                );
                return None;
            }
        };
        return Some(AuthPolicy {
            name: name.get_ref().clone(),
            kind: AuthKind::Jwt(Jwt {
                algorithms,
                keys,
                issuer: j.issuer.map(|s| s.into_inner()),
                audience: j.audience.map(|s| s.into_inner()),
                leeway,
                required_claims: j
                    .required_claims
                    .map(|c| c.into_inner().0)
                    .unwrap_or_default(),
                claims_to_headers,
                strip_token: j.strip_token.unwrap_or(false),
            }),
        });
    }
    if let Some(k) = r.api_key {
        let k = k.into_inner();
        let header = k.header.as_ref().map(|h| h.get_ref().to_ascii_lowercase());
        let query = k.query.as_ref().map(|q| q.get_ref().clone());
        match (&k.header, &k.query) {
            (Some(_), Some(q)) => p.at(q, "give `header` or `query`, not both"),
            (None, None) => p.span(span, "an api_key policy needs `header` or `query`"),
            (Some(h), None) if !super::header_name_ok(h.get_ref()) => {
                p.at(h, format!("invalid header name \"{}\"", h.get_ref()));
            }
            (None, Some(q)) if q.get_ref().is_empty() || q.get_ref().contains(['&', '=']) => {
                p.at(q, "invalid query parameter name");
            }
            _ => {}
        }
        return Some(AuthPolicy {
            name: name.get_ref().clone(),
            kind: AuthKind::ApiKey {
                header,
                query,
                keys_file: ctx.file_ref(&k.keys_file),
            },
        });
    }
    let kind = match r.basic {
        Some(b) => {
            let b = b.into_inner();
            let realm = match &b.realm {
                Some(r)
                    if r.get_ref().is_empty()
                        || r.get_ref().contains('"')
                        || !header_value_ok(r.get_ref()) =>
                {
                    p.at(
                        r,
                        "realm must be non-empty text without quotes or control characters",
                    );
                    name.get_ref().clone()
                }
                Some(r) => r.get_ref().clone(),
                None => name.get_ref().clone(),
            };
            let mut users = Vec::new();
            for u in b.users.iter().flatten() {
                let ru = u.get_ref();
                if !ru.password_hash.get_ref().starts_with("$argon2") {
                    p.at(
                        &ru.password_hash,
                        "password_hash must be an argon2 PHC string ($argon2id$...); make one with `pylon passwd`",
                    );
                }
                if ru.name.is_empty() || ru.name.contains(':') {
                    p.at(u, "a user name must be non-empty, without ':'");
                }
                users.push(ProxyUser {
                    name: ru.name.clone(),
                    password_hash: ru.password_hash.get_ref().clone(),
                });
            }
            if users.is_empty() {
                p.span(span, "a basic policy needs at least one user in `users`");
            }
            AuthKind::Basic { realm, users }
        }
        None => {
            p.span(
                span,
                "an [[auth]] policy needs its kind: `basic = { ... }`, `api_key = { ... }`, `jwt = { ... }` or `external = { ... }`",
            );
            return None;
        }
    };
    Some(AuthPolicy {
        name: name.get_ref().clone(),
        kind,
    })
}

/// A positive duration, or `default`.
fn positive(v: &Option<Spanned<String>>, default: Duration, p: &mut Problems) -> Duration {
    super::nonzero_duration(v, default, "must be greater than zero", p)
}

/// A JWT policy's `jwks`.
fn jwks(k: crate::raw::RawJwks, ctx: &super::Ctx<'_, '_>, p: &mut Problems) -> Jwks {
    let url = k.url.get_ref();
    let parsed = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .and_then(|rest| {
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let path = if path.is_empty() { "/" } else { path };
            let plain = |t: &str| t.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
            (!host.is_empty() && plain(host) && !host.contains(['@', '?']) && plain(path))
                .then(|| (host.to_owned(), path.to_owned()))
        });
    let (host, target) = parsed.unwrap_or_else(|| {
        p.at(
            &k.url,
            format!("invalid JWKS URL \"{url}\", expected https://HOST[:PORT]/PATH"),
        );
        (String::new(), "/".to_owned())
    });
    cluster_named(&k.cluster, ctx, p);
    Jwks {
        url: url.clone(),
        host,
        target,
        cluster: k.cluster.into_inner(),
        refresh: positive(&k.refresh, Duration::from_secs(300), p),
        min_refresh: positive(&k.min_refresh, Duration::from_secs(5), p),
        timeout: positive(&k.timeout, Duration::from_secs(5), p),
    }
}

/// Reports a cluster name no `[[clusters]]` defines.
fn cluster_named(c: &Spanned<String>, ctx: &super::Ctx<'_, '_>, p: &mut Problems) {
    if !super::declared_names(ctx.root, "clusters").contains(c.get_ref()) {
        p.at(
            c,
            format!(
                "unknown cluster \"{}\": define it in a [[clusters]] section",
                c.get_ref()
            ),
        );
    }
}

/// Lower-case header names, each checked.
fn header_names(v: &Option<Spanned<crate::raw::StrList>>, p: &mut Problems) -> Option<Vec<String>> {
    let v = v.as_ref()?;
    for h in &v.get_ref().0 {
        if !super::header_name_ok(h) {
            p.at(v, format!("invalid header name \"{h}\""));
        }
    }
    Some(
        v.get_ref()
            .0
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    )
}

/// An `external` policy.
fn external(
    e: crate::raw::RawExternalAuth,
    ctx: &super::Ctx<'_, '_>,
    p: &mut Problems,
) -> ExternalAuth {
    cluster_named(&e.cluster, ctx, p);
    let path_prefix = match &e.path_prefix {
        Some(s) if !s.get_ref().is_empty() && !s.get_ref().starts_with('/') => {
            p.at(s, "path_prefix must start with '/'");
            String::new()
        }
        Some(s) => s.get_ref().trim_end_matches('/').to_owned(),
        None => String::new(),
    };
    let on_error = match e.on_error.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("deny") => FailMode::Deny,
        Some("allow") => FailMode::Allow,
        Some(other) => {
            if let Some(s) = &e.on_error {
                p.at(
                    s,
                    format!("unknown on_error \"{other}\", expected allow or deny"),
                );
            }
            FailMode::Deny
        }
    };
    let cache_ttl = match &e.cache_ttl {
        None => Duration::ZERO,
        Some(v) => crate::units::parse_duration(v.get_ref()).unwrap_or_else(|err| {
            p.at(v, err);
            Duration::ZERO
        }),
    };
    let cache_key = e.cache_key.as_ref().map(|k| {
        k.get_ref()
            .split('+')
            .map(str::trim)
            .filter_map(|part| {
                let parsed = rate_key(part);
                if parsed.is_none() {
                    p.at(k, format!("invalid key \"{part}\", expected client_ip, header:NAME, cookie:NAME or claim:NAME, or several joined with '+'"));
                }
                parsed
            })
            .collect()
    });
    let user_header = e.user_header.as_ref().map(|h| {
        if !super::header_name_ok(h.get_ref()) {
            p.at(h, format!("invalid header name \"{}\"", h.get_ref()));
        }
        h.get_ref().to_ascii_lowercase()
    });
    ExternalAuth {
        cluster: e.cluster.get_ref().clone(),
        path_prefix,
        headers: header_names(&e.headers, p)
            .unwrap_or_else(|| vec!["authorization".to_owned(), "cookie".to_owned()]),
        upstream_headers: header_names(&e.upstream_headers, p).unwrap_or_default(),
        user_header,
        timeout: positive(&e.timeout, Duration::from_secs(1), p),
        on_error,
        cache_ttl,
        cache_key,
    }
}

/// A `[[rate_limits]]` policy.
pub(super) fn rate_limit(
    r: crate::raw::RawRateLimit,
    span: Range<usize>,
    names: &mut HashSet<String>,
    p: &mut Problems,
) -> Option<RateLimit> {
    let Some(name) = &r.name else {
        p.span(span, "a [[rate_limits]] policy needs a `name`");
        return None;
    };
    check_name(name, "rate limit", names, p);
    let mut key = Vec::new();
    let written = r.key.as_ref().map_or("client_ip", |k| k.get_ref().as_str());
    for part in written.split('+').map(str::trim) {
        match rate_key(part) {
            Some(k) => key.push(k),
            None => {
                if let Some(s) = &r.key {
                    p.at(s, format!("invalid key \"{part}\", expected client_ip, client_ip/V4BITS[/V6BITS], route, header:NAME, cookie:NAME or claim:NAME, or several joined with '+'"));
                }
            }
        }
    }
    if let Some(c) = &r.concurrency {
        if *c.get_ref() == 0 {
            p.at(c, "concurrency must be at least 1");
        }
        let rate_keys = [
            r.rate.as_ref().map(Spanned::span),
            r.per.as_ref().map(Spanned::span),
            r.burst.as_ref().map(Spanned::span),
            r.delay.as_ref().map(Spanned::span),
            r.global.as_ref().map(Spanned::span),
        ];
        if let Some(span) = rate_keys.into_iter().flatten().next() {
            p.span(
                span,
                "a concurrency limit counts requests in flight: it takes no rate, per, burst, delay or global",
            );
        }
        return Some(RateLimit {
            name: name.get_ref().clone(),
            key,
            rate: 0,
            per: std::time::Duration::ZERO,
            burst: 0,
            delay: std::time::Duration::ZERO,
            concurrency: Some((*c.get_ref()).max(1)),
            global: None,
        });
    }
    let rate = match &r.rate {
        Some(n) if *n.get_ref() == 0 => {
            p.at(n, "rate must be at least 1");
            1
        }
        Some(n) => *n.get_ref(),
        None => {
            p.span(
                span,
                "a rate limit needs `rate` (requests per `per`) or `concurrency`",
            );
            1
        }
    };
    let per = super::nonzero_duration(
        &r.per,
        Duration::from_secs(1),
        "per must be greater than zero",
        p,
    );
    let burst = match &r.burst {
        Some(b) if *b.get_ref() == 0 => {
            p.at(b, "burst must be at least 1");
            rate
        }
        Some(b) => *b.get_ref(),
        None => rate,
    };
    let delay = match &r.delay {
        None => std::time::Duration::ZERO,
        Some(d) => crate::units::parse_duration(d.get_ref()).unwrap_or_else(|e| {
            p.at(d, e);
            std::time::Duration::ZERO
        }),
    };
    let global = r.global.map(|g| global_limit(g.into_inner(), burst, p));
    Some(RateLimit {
        name: name.get_ref().clone(),
        key,
        rate,
        per,
        burst,
        delay,
        concurrency: None,
        global,
    })
}

/// One part of a rate limit's key.
pub(super) fn rate_key(part: &str) -> Option<RateKey> {
    match part {
        "client_ip" => return Some(RateKey::ClientIp),
        "route" => return Some(RateKey::Route),
        _ => {}
    }
    if let Some(lens) = part.strip_prefix("client_ip/") {
        let mut it = lens.split('/');
        let v4: u8 = it.next()?.parse().ok().filter(|n| *n <= 32)?;
        let v6: u8 = match it.next() {
            Some(n) => n.parse().ok().filter(|n| *n <= 128)?,
            None => 64,
        };
        return it.next().is_none().then_some(RateKey::ClientNet { v4, v6 });
    }
    if let Some(h) = part.strip_prefix("header:") {
        return super::header_name_ok(h).then(|| RateKey::Header(h.to_ascii_lowercase()));
    }
    if let Some(c) = part.strip_prefix("cookie:") {
        return super::http_token(c).then(|| RateKey::Cookie(c.to_owned()));
    }
    if let Some(c) = part.strip_prefix("claim:") {
        return (!c.is_empty() && !c.contains(char::is_whitespace))
            .then(|| RateKey::Claim(c.to_owned()));
    }
    None
}

/// A rate limit's `global` table.
fn global_limit(g: crate::raw::RawGlobalLimit, burst: u32, p: &mut Problems) -> GlobalLimit {
    let url = g.redis.get_ref();
    let ok = url
        .strip_prefix("redis://")
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|host| !host.is_empty());
    if !ok {
        p.at(
            &g.redis,
            format!("invalid Redis address \"{url}\", expected redis://HOST:PORT[/DB]"),
        );
    }
    let timeout = super::nonzero_duration(
        &g.timeout,
        Duration::from_millis(100),
        "timeout must be greater than zero",
        p,
    );
    let on_error = match g.on_error.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("allow") => FailMode::Allow,
        Some("deny") => FailMode::Deny,
        Some(other) => {
            if let Some(s) = &g.on_error {
                p.at(
                    s,
                    format!("unknown on_error \"{other}\", expected allow or deny"),
                );
            }
            FailMode::Allow
        }
    };
    let batch = match &g.batch {
        Some(b) if *b.get_ref() == 0 || *b.get_ref() > burst => {
            p.at(
                b,
                format!("batch must be between 1 and the burst ({burst})"),
            );
            1
        }
        Some(b) => *b.get_ref(),
        // A twentieth of the burst: the most a fleet of N instances leaves unused is
        // N times that.
        None => (burst / 20).clamp(1, 100),
    };
    GlobalLimit {
        redis: url.clone(),
        timeout,
        on_error,
        batch,
        prefix: g
            .prefix
            .map_or_else(|| "pylon:rl:".to_owned(), Spanned::into_inner),
    }
}
