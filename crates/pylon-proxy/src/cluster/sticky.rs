//! Sticky sessions: a cookie naming the endpoint that served the client, signed
//! (HMAC-SHA256) so that clients cannot steer themselves to an endpoint of their choice.
//! An unknown, forged or unavailable endpoint falls back to the balancer, and the
//! answer carries a fresh cookie.

use aws_lc_rs::hmac;
use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};
use pylon_config::model::Sticky;

pub struct StickyCookie {
    config: Sticky,
    key: hmac::Key,
}

impl StickyCookie {
    /// The cookie handling for a cluster. Without a configured `secret` the signing key
    /// is 32 bytes from the system's CSPRNG, drawn again whenever the cluster is rebuilt;
    /// when the CSPRNG fails the error says so and the cluster is not built.
    pub fn new(config: &Sticky) -> Result<StickyCookie, String> {
        let key = match &config.secret {
            Some(s) => hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()),
            None => random_key()?,
        };
        Ok(StickyCookie {
            config: config.clone(),
            key,
        })
    }

    fn sign(&self, endpoint: &str) -> String {
        let tag = hmac::sign(&self.key, endpoint.as_bytes());
        let hex: String = tag.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}.{hex}", endpoint_token(endpoint))
    }

    /// The endpoint (`ip:port` among `endpoints`) the request's cookie names, if the
    /// cookie is present and genuine.
    pub fn lookup(&self, headers: &HeaderMap, endpoints: &[String]) -> Option<usize> {
        let value = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == self.config.cookie)
            .map(|(_, v)| v)?;
        endpoints.iter().position(|e| {
            let expected = self.sign(e);
            // Compare as HMAC verification would: the whole value, constant time.
            aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), value.as_bytes())
                .is_ok()
        })
    }

    /// The `Set-Cookie` value pinning the client to `endpoint`.
    pub fn set_cookie(&self, endpoint: &str) -> Option<HeaderValue> {
        let c = &self.config;
        let mut v = format!("{}={}; Path={}", c.cookie, self.sign(endpoint), c.path);
        if let Some(ttl) = c.ttl {
            v.push_str(&format!("; Max-Age={}", ttl.as_secs()));
        }
        if c.http_only {
            v.push_str("; HttpOnly");
        }
        if c.secure {
            v.push_str("; Secure");
        }
        if let Some(s) = &c.same_site {
            v.push_str(&format!("; SameSite={s}"));
        }
        HeaderValue::from_str(&v).ok()
    }
}

/// A signing key from the system's CSPRNG.
fn random_key() -> Result<hmac::Key, String> {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut material = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut material)
        .map_err(|_| {
            "sticky: the system random number generator failed; cannot make a cookie signing key (set `secret` to use a fixed one)".to_string()
        })?;
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &material))
}

/// A short stable token for an endpoint (not secret; the signature is what counts).
fn endpoint_token(endpoint: &str) -> String {
    format!("{:016x}", pylon_lb::hash_key(endpoint.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sticky(secret: Option<&str>) -> StickyCookie {
        StickyCookie::new(&Sticky {
            cookie: "s".into(),
            ttl: Some(std::time::Duration::from_secs(60)),
            path: "/".into(),
            secure: true,
            http_only: true,
            same_site: Some("Lax".into()),
            secret: secret.map(str::to_owned),
        })
        .unwrap()
    }

    #[test]
    fn cookies_round_trip_and_forgeries_fail() {
        let s = sticky(Some("k"));
        let eps = vec!["10.0.0.1:80".to_owned(), "10.0.0.2:80".to_owned()];
        let set = s.set_cookie(&eps[1]).unwrap();
        let set = set.to_str().unwrap();
        assert!(
            set.ends_with("; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=Lax"),
            "{set}"
        );
        let pair = set.split(';').next().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("a=b; {pair}")).unwrap(),
        );
        assert_eq!(s.lookup(&h, &eps), Some(1));
        // Another key does not accept it; a tampered value is refused.
        assert_eq!(sticky(Some("other")).lookup(&h, &eps), None);
        let forged = pair.replace(&endpoint_token(&eps[1]), &endpoint_token(&eps[0]));
        h.insert(COOKIE, HeaderValue::from_str(&forged).unwrap());
        assert_eq!(s.lookup(&h, &eps), None);
    }

    #[test]
    fn generated_keys_differ_per_cluster() {
        // Without a secret each cluster draws its own key: its cookies are its own.
        let (a, b) = (sticky(None), sticky(None));
        let eps = vec!["10.0.0.1:80".to_owned()];
        let pair = |s: &StickyCookie| {
            let set = s.set_cookie(&eps[0]).unwrap();
            set.to_str().unwrap().split(';').next().unwrap().to_owned()
        };
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&pair(&a)).unwrap());
        assert_eq!(a.lookup(&h, &eps), Some(0));
        assert_eq!(b.lookup(&h, &eps), None);
        assert_ne!(pair(&a), pair(&b));
    }
}
