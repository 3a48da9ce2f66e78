//! `[[auth]]` policies: a name and exactly one kind (`basic`, `api_key`, `jwt`), checked where they
//! are written; routes name them in `auth`.

use std::collections::HashSet;
use std::ops::Range;

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
    let kinds = [r.basic.is_some(), r.api_key.is_some(), r.jwt.is_some()]
        .iter()
        .filter(|k| **k)
        .count();
    if kinds > 1 {
        p.span(
            span,
            "an [[auth]] policy has exactly one kind: `basic`, `api_key` or `jwt`",
        );
        return None;
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
        return Some(AuthPolicy {
            name: name.get_ref().clone(),
            kind: AuthKind::Jwt(Jwt {
                algorithms,
                key_file: ctx.file_ref(&j.key_file),
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
                "an [[auth]] policy needs its kind: `basic = { ... }`, `api_key = { ... }` or `jwt = { ... }`",
            );
            return None;
        }
    };
    Some(AuthPolicy {
        name: name.get_ref().clone(),
        kind,
    })
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
    let key = match r.key.as_ref().map(|k| k.get_ref().as_str()) {
        None | Some("client_ip") => RateKey::ClientIp,
        Some("route") => RateKey::Route,
        Some(k) => {
            let net = k.strip_prefix("client_ip/").and_then(|lens| {
                let mut it = lens.split('/');
                let v4: u8 = it.next()?.parse().ok().filter(|n| *n <= 32)?;
                let v6: u8 = match it.next() {
                    Some(n) => n.parse().ok().filter(|n| *n <= 128)?,
                    None => 64,
                };
                it.next().is_none().then_some(RateKey::ClientNet { v4, v6 })
            });
            if let Some(net) = net {
                net
            } else if let Some(h) = k
                .strip_prefix("header:")
                .filter(|h| super::header_name_ok(h))
            {
                RateKey::Header(h.to_ascii_lowercase())
            } else if let Some(c) = k.strip_prefix("cookie:").filter(|c| super::http_token(c)) {
                RateKey::Cookie(c.to_owned())
            } else {
                if let Some(s) = &r.key {
                    p.at(s, format!("invalid key \"{k}\", expected client_ip, client_ip/V4BITS[/V6BITS], route, header:NAME or cookie:NAME"));
                }
                RateKey::ClientIp
            }
        }
    };
    let rate = match &r.rate {
        Some(n) if *n.get_ref() == 0 => {
            p.at(n, "rate must be at least 1");
            1
        }
        Some(n) => *n.get_ref(),
        None => {
            p.span(span, "a rate limit needs `rate` (requests per `per`)");
            1
        }
    };
    let per = match &r.per {
        None => std::time::Duration::from_secs(1),
        Some(s) => match crate::units::parse_duration(s.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                p.at(s, "per must be greater than zero");
                std::time::Duration::from_secs(1)
            }
            Err(e) => {
                p.at(s, e);
                std::time::Duration::from_secs(1)
            }
        },
    };
    let burst = match &r.burst {
        Some(b) if *b.get_ref() == 0 => {
            p.at(b, "burst must be at least 1");
            rate
        }
        Some(b) => *b.get_ref(),
        None => rate,
    };
    Some(RateLimit {
        name: name.get_ref().clone(),
        key,
        rate,
        per,
        burst,
    })
}
