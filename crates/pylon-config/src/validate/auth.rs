//! `[[auth]]` policies: a name and exactly one kind (`basic` so far), checked where they
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
    if r.basic.is_some() && r.api_key.is_some() {
        p.span(
            span,
            "an [[auth]] policy has exactly one kind: `basic` or `api_key`",
        );
        return None;
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
                "an [[auth]] policy needs its kind: `basic = { ... }` or `api_key = { ... }`",
            );
            return None;
        }
    };
    Some(AuthPolicy {
        name: name.get_ref().clone(),
        kind,
    })
}
