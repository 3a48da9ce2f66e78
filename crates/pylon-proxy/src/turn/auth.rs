//! TURN's long-term credentials (RFC 8489 §9.2): passwords from the users file or
//! from coturn's shared-secret scheme (the "TURN REST API": a username `EXPIRY[:NAME]`
//! whose password is base64(HMAC-SHA1(secret, username)), valid until EXPIRY), and
//! nonces that carry their own expiry and the client's address under an HMAC, so that
//! no nonce needs to be stored.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use pylon_config::model::TurnRelay;

/// Why a request's credentials were refused (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No MESSAGE-INTEGRITY: the first request of every client (answered 401 with a
    /// nonce; counted apart from real failures).
    Challenge,
    UnknownUser,
    /// A shared-secret username whose time has passed.
    Expired,
    BadIntegrity,
    StaleNonce,
    BadNonce,
    /// A request on an allocation made by another user (441).
    WrongUser,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 7] = [
        AuthFailure::Challenge,
        AuthFailure::UnknownUser,
        AuthFailure::Expired,
        AuthFailure::BadIntegrity,
        AuthFailure::StaleNonce,
        AuthFailure::BadNonce,
        AuthFailure::WrongUser,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Challenge => "challenge",
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::Expired => "expired",
            AuthFailure::BadIntegrity => "bad_integrity",
            AuthFailure::StaleNonce => "stale_nonce",
            AuthFailure::BadNonce => "bad_nonce",
            AuthFailure::WrongUser => "wrong_user",
        }
    }
}

/// Who may allocate, and the nonces they are given.
pub struct Credentials {
    users: HashMap<String, String>,
    secret: Option<String>,
    nonce_key: hmac::Key,
    nonce_lifetime: Duration,
}

impl Credentials {
    pub fn new(relay: &TurnRelay) -> Credentials {
        let mut seed = [0u8; 32];
        // A fresh key per start: nonces of an earlier run are stale, which clients
        // handle (438, then a retry with the new nonce).
        if aws_lc_rs::rand::fill(&mut seed).is_err() {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            seed[..16].copy_from_slice(&now.to_le_bytes());
        }
        Credentials {
            users: relay.users.iter().cloned().collect(),
            secret: relay.secret.clone(),
            nonce_key: hmac::Key::new(hmac::HMAC_SHA256, &seed),
            nonce_lifetime: relay.nonce_lifetime,
        }
    }

    /// The password for `username`.
    pub fn password(&self, username: &str) -> Result<String, AuthFailure> {
        if let Some(p) = self.users.get(username) {
            return Ok(p.clone());
        }
        let Some(secret) = &self.secret else {
            return Err(AuthFailure::UnknownUser);
        };
        let expiry = username.split(':').next().unwrap_or("");
        let Ok(expiry) = expiry.parse::<u64>() else {
            return Err(AuthFailure::UnknownUser);
        };
        if expiry < unix_now() {
            return Err(AuthFailure::Expired);
        }
        Ok(rest_password(secret, username))
    }

    /// A nonce for `client`, valid for the nonce lifetime.
    pub fn nonce(&self, client: IpAddr) -> String {
        let expiry = unix_now() + self.nonce_lifetime.as_secs().max(1);
        format!("{expiry:010x}{}", self.nonce_mac(expiry, client))
    }

    /// Whether `nonce` is one of ours for `client`, and still fresh.
    pub fn check_nonce(&self, nonce: &str, client: IpAddr) -> Result<(), AuthFailure> {
        let (Some(expiry), Some(mac)) = (nonce.get(..10), nonce.get(10..)) else {
            return Err(AuthFailure::BadNonce);
        };
        let Ok(expiry) = u64::from_str_radix(expiry, 16) else {
            return Err(AuthFailure::BadNonce);
        };
        if self.nonce_mac(expiry, client) != mac {
            return Err(AuthFailure::BadNonce);
        }
        if expiry < unix_now() {
            return Err(AuthFailure::StaleNonce);
        }
        Ok(())
    }

    fn nonce_mac(&self, expiry: u64, client: IpAddr) -> String {
        let mut ctx = hmac::Context::with_key(&self.nonce_key);
        ctx.update(&expiry.to_be_bytes());
        match client {
            IpAddr::V4(v4) => ctx.update(&v4.octets()),
            IpAddr::V6(v6) => ctx.update(&v6.octets()),
        }
        let tag = ctx.sign();
        tag.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// coturn's `use-auth-secret` password for `username`.
pub fn rest_password(secret: &str, username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = hmac::sign(&key, username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(secret: Option<&str>, users: &[(&str, &str)]) -> TurnRelay {
        TurnRelay {
            realm: "r".into(),
            relay_ip: None,
            external_ip: None,
            relay_ports: (49152, 65535),
            secret: secret.map(str::to_owned),
            secret_file: None,
            users: users
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
            users_file: None,
            allowed_peers: vec![],
            denied_peers: vec![],
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            nonce_lifetime: Duration::from_secs(600),
            max_allocations: 10,
            user_quota: 10,
            bandwidth: None,
            unauthenticated_rate: 20,
        }
    }

    #[test]
    fn shared_secret_passwords_match_coturns() {
        // As coturn's docs make one:
        // `echo -n 1433895918:alice | openssl dgst -binary -sha1 -hmac north | base64`.
        assert_eq!(
            rest_password("north", "1433895918:alice"),
            "RqMvcGPYTJMGThVLSi4amT4zFtI="
        );
        let c = Credentials::new(&relay(Some("north"), &[("bob", "pw")]));
        assert_eq!(c.password("bob").unwrap(), "pw");
        assert_eq!(c.password("1433895918:alice"), Err(AuthFailure::Expired));
        let later = format!("{}:alice", unix_now() + 60);
        assert_eq!(c.password(&later).unwrap(), rest_password("north", &later));
        assert_eq!(c.password("carol"), Err(AuthFailure::UnknownUser));
    }

    #[test]
    fn nonces_are_bound_to_the_client_and_expire() {
        let c = Credentials::new(&relay(None, &[]));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let n = c.nonce(a);
        assert_eq!(c.check_nonce(&n, a), Ok(()));
        assert_eq!(c.check_nonce(&n, b), Err(AuthFailure::BadNonce));
        assert_eq!(c.check_nonce("junk", a), Err(AuthFailure::BadNonce));
        let old = format!("{:010x}{}", 1u64, c.nonce_mac(1, a));
        assert_eq!(c.check_nonce(&old, a), Err(AuthFailure::StaleNonce));
    }
}
