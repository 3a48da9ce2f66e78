//! `[listeners.tls.acme]`: the directory (or Let's Encrypt, production or staging), the
//! names, the storage directory, the challenge, the CA roots, External Account Binding
//! and the retry backoff.

use std::ops::Range;
use std::time::Duration;

use super::{Ctx, Problems, duration};
use crate::model::{
    Acme, AcmeChallenge, ExternalAccount, LETSENCRYPT, LETSENCRYPT_STAGING, OnDemand,
};
use crate::raw::RawAcme;
use toml::Spanned;

pub(super) fn acme(r: Spanned<RawAcme>, ctx: &Ctx<'_, '_>, p: &mut Problems) -> Option<Acme> {
    let span: Range<usize> = r.span();
    let r = r.into_inner();
    let staging = r.staging.as_ref().is_some_and(|s| *s.get_ref());
    let directory = match &r.directory {
        Some(d) if staging => {
            p.at(
                d,
                "`staging = true` picks Let's Encrypt's staging directory: set `directory` or `staging`, not both",
            );
            d.get_ref().clone()
        }
        Some(d) => {
            let url = d.get_ref();
            let host = url
                .strip_prefix("https://")
                .map(|r| r.split('/').next().unwrap_or(""));
            if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
                p.at(
                    d,
                    "`directory` must be an https:// URL, the CA's ACME directory",
                );
            }
            url.clone()
        }
        None if staging => LETSENCRYPT_STAGING.to_owned(),
        None => LETSENCRYPT.to_owned(),
    };
    let on_demand_asked = r.on_demand.as_ref().is_some_and(|o| *o.get_ref());
    let mut names = Vec::new();
    match &r.names {
        None if on_demand_asked => {}
        None => p.span(
            span.clone(),
            "acme needs `names`: the DNS names the certificate is ordered for",
        ),
        Some(list) if list.get_ref().0.is_empty() && !on_demand_asked => {
            p.at(list, "`names` must not be empty")
        }
        Some(list) => {
            for n in &list.get_ref().0 {
                let n = n.trim().to_ascii_lowercase();
                if n.starts_with("*.") {
                    p.at(
                        list,
                        format!("\"{n}\": wildcard names need the DNS-01 challenge, which Pylon does not answer; name each host"),
                    );
                } else if !crate::model::is_dns_name(&n) {
                    p.at(list, format!("\"{n}\" is not a DNS name"));
                } else if names.contains(&n) {
                    p.at(list, format!("\"{n}\" is named twice"));
                } else {
                    names.push(n);
                }
            }
        }
    }
    let mut contact = Vec::new();
    for c in r.contact.iter().flat_map(|l| l.get_ref().0.iter()) {
        let c = c.trim();
        let url = if c.contains(':') {
            c.to_owned()
        } else {
            format!("mailto:{c}")
        };
        match url.strip_prefix("mailto:") {
            Some(addr) if addr.contains('@') && !addr.contains(char::is_whitespace) => {
                contact.push(url)
            }
            _ => {
                if let Some(l) = &r.contact {
                    p.at(
                        l,
                        format!("\"{c}\" is not an email address (or mailto: URL)"),
                    );
                }
            }
        }
    }
    let storage = match &r.storage {
        Some(s) if s.get_ref().trim().is_empty() => {
            p.at(s, "`storage` must name a directory");
            ctx.file_ref(s)
        }
        Some(s) => ctx.file_ref(s),
        None => ctx.file_ref(&Spanned::new(span.clone(), "acme".to_owned())),
    };
    let challenge = match r.challenge.as_ref().map(|c| c.get_ref().as_str()) {
        None | Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
        Some("http-01") => AcmeChallenge::Http01,
        Some(other) => {
            if let Some(c) = &r.challenge {
                p.at(
                    c,
                    format!("unknown challenge \"{other}\": use \"tls-alpn-01\" or \"http-01\""),
                );
            }
            AcmeChallenge::TlsAlpn01
        }
    };
    let external_account = r.external_account.as_ref().map(|e| {
        let e = e.get_ref();
        if e.key_id.get_ref().is_empty() {
            p.at(&e.key_id, "`key_id` must not be empty");
        }
        let key = e.hmac_key.get_ref().trim_end_matches('=');
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            p.at(
                &e.hmac_key,
                "`hmac_key` must be the base64url MAC key the CA gave",
            );
        }
        ExternalAccount {
            key_id: e.key_id.get_ref().clone(),
            hmac_key: key.to_owned(),
        }
    });
    let retry_backoff = duration(&r.retry_backoff, Duration::from_secs(60), p);
    let retry_max = duration(&r.retry_max, Duration::from_secs(24 * 3600), p);
    if let Some(m) = &r.retry_max
        && retry_max < retry_backoff
    {
        p.at(m, "`retry_max` cannot be shorter than `retry_backoff`");
    }
    let on_demand = match (&r.on_demand, &r.ask) {
        (Some(o), None) if *o.get_ref() => {
            p.at(
                o,
                "on_demand needs `ask`: the URL that approves each name before a certificate is ordered",
            );
            None
        }
        (Some(o), Some(ask)) if *o.get_ref() => {
            let url = ask.get_ref();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.at(ask, "`ask` must be an http:// or https:// URL");
            }
            let per_minute = match &r.on_demand_per_minute {
                Some(n) if *n.get_ref() == 0 => {
                    p.at(n, "must be at least 1");
                    10
                }
                Some(n) => *n.get_ref(),
                None => 10,
            };
            Some(OnDemand {
                ask: url.clone(),
                per_minute,
            })
        }
        (_, Some(ask)) => {
            p.at(ask, "`ask` is for `on_demand = true`");
            None
        }
        _ => None,
    };
    Some(Acme {
        on_demand,
        start_without_certificate: r.start_without_certificate.unwrap_or(true),
        directory,
        contact,
        names,
        storage,
        challenge,
        ca: r.ca.as_ref().map(|c| ctx.file_ref(c)),
        external_account,
        retry_backoff,
        retry_max,
    })
}
