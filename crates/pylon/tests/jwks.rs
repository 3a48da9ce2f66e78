//! JWT policies against every algorithm family, and keys from a JWKS URL fetched
//! through a cluster: tokens signed here with HS256/384/512, RS256, PS256, ES256/384
//! and EdDSA; a JWKS origin that rotates its key mid-test (the new `kid` fetched at
//! once, the old one refused), a flood of unknown `kid`s that costs no extra fetch, an
//! origin that goes down (the last good set still serves) and one that answers HTML
//! (503 `auth_unavailable`, nothing ever verified).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use http::Request;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use pylon_testkit::*;
use serde_json::json;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn ask(front: std::net::SocketAddr, path: &str, token: &str) -> Answer {
    let r = Request::get(path)
        .header("host", "test.local")
        .header("authorization", format!("Bearer {token}"));
    send_h1(front, r.body(empty()).unwrap()).await
}

#[tokio::test]
async fn every_algorithm_family_verifies_with_its_key_file() {
    let origin = Origin::named("app").await;
    let dir = std::env::temp_dir().join(format!("pylon-jwt-algs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hs.key"), "a-test-secret-of-thirty-two-bytes!\n").unwrap();
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    for (name, k) in [("rsa", &rsa), ("p256", &p256), ("p384", &p384), ("ed", &ed)] {
        std::fs::write(dir.join(format!("{name}.pub.pem")), k.public_key_pem()).unwrap();
    }
    let policies = [
        ("hs", "HS256\", \"HS384\", \"HS512", "hs.key"),
        ("rs", "RS256\", \"PS256", "rsa.pub.pem"),
        ("es256", "ES256", "p256.pub.pem"),
        ("es384", "ES384", "p384.pub.pem"),
        ("ed", "EdDSA", "ed.pub.pem"),
    ];
    let mut toml = format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[clusters]]
name = "c"
endpoints = ["{}"]
"#,
        origin.addr
    );
    for (name, algs, key) in policies {
        toml.push_str(&format!(
            r#"
[[routes]]
path_prefix = "/{name}/"
cluster = "c"
auth = ["{name}"]

[[auth]]
name = "{name}"
jwt = {{ algorithms = ["{algs}"], key_file = "{}" }}
"#,
            dir.join(key).display()
        ));
    }
    let p = TestProxy::start(&toml).await;
    let front = p.addr("front");
    let claims = json!({ "sub": "alice", "exp": now() + 600 });
    let sign = |alg: Algorithm, key: &EncodingKey| encode(&Header::new(alg), &claims, key).unwrap();
    let hs = EncodingKey::from_secret(b"a-test-secret-of-thirty-two-bytes!").unwrap();
    let pem = |k: &rcgen::KeyPair| k.serialize_pem();
    let rs = EncodingKey::from_rsa_pem(pem(&rsa).as_bytes()).unwrap();
    let es256 = EncodingKey::from_ec_pem(pem(&p256).as_bytes()).unwrap();
    let es384 = EncodingKey::from_ec_pem(pem(&p384).as_bytes()).unwrap();
    let eddsa = EncodingKey::from_ed_pem(pem(&ed).as_bytes()).unwrap();
    let accepted = [
        ("/hs/", sign(Algorithm::HS256, &hs)),
        ("/hs/", sign(Algorithm::HS384, &hs)),
        ("/hs/", sign(Algorithm::HS512, &hs)),
        ("/rs/", sign(Algorithm::RS256, &rs)),
        ("/rs/", sign(Algorithm::PS256, &rs)),
        ("/es256/", sign(Algorithm::ES256, &es256)),
        ("/es384/", sign(Algorithm::ES384, &es384)),
        ("/ed/", sign(Algorithm::EdDSA, &eddsa)),
    ];
    for (path, token) in &accepted {
        let a = ask(front, path, token).await;
        assert_eq!(a.status, 200, "{path} {}", token.split('.').next().unwrap());
    }
    // A listed algorithm with another policy's key, or an algorithm the policy does not
    // list (RS384 on an RS256/PS256 policy), is refused.
    let refused = [
        ("/rs/", sign(Algorithm::RS384, &rs)),
        ("/es256/", sign(Algorithm::ES384, &es384)),
        ("/ed/", sign(Algorithm::ES256, &es256)),
        ("/hs/", sign(Algorithm::RS256, &rs)),
    ];
    for (path, token) in &refused {
        let a = ask(front, path, token).await;
        assert_eq!(a.status, 401, "{path}");
        assert_eq!(a.header("x-pylon-error"), Some("unauthorized"));
    }
    // A huge Authorization header is refused before it is parsed.
    let huge = format!("{}.{}.{}", "e".repeat(9000), "e".repeat(9000), "e");
    assert_eq!(ask(front, "/hs/", &huge).await.status, 401);
    assert_eq!(origin.request_count(), accepted.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A JWKS origin: each path serves the document set for it, counting fetches;
/// "down" paths answer nothing (the connection is closed).
#[derive(Clone, Default)]
struct Jwks {
    docs: Arc<Mutex<HashMap<String, String>>>,
    fetches: Arc<Mutex<HashMap<String, usize>>>,
}

impl Jwks {
    fn set(&self, path: &str, doc: String) {
        self.docs.lock().unwrap().insert(path.to_owned(), doc);
    }
    fn fetches(&self, path: &str) -> usize {
        self.fetches.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// The public JWK of a P-256 key, with its `kid`.
fn ec_jwk(k: &rcgen::KeyPair, kid: &str) -> serde_json::Value {
    let raw = k.public_key_raw();
    json!({ "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]) })
}

#[tokio::test]
async fn jwks_keys_rotate_are_fetched_once_for_unknown_kids_and_serve_stale() {
    let jwks = Jwks::default();
    let state = jwks.clone();
    let idp = Origin::start(move |req| {
        let state = state.clone();
        async move {
            let path = req.uri().path().to_owned();
            *state
                .fetches
                .lock()
                .unwrap()
                .entry(path.clone())
                .or_default() += 1;
            let doc = state.docs.lock().unwrap().get(&path).cloned();
            let mut resp = http::Response::new(full(doc.clone().unwrap_or_default()));
            *resp.status_mut() = if doc.is_some() {
                http::StatusCode::OK
            } else {
                http::StatusCode::SERVICE_UNAVAILABLE
            };
            resp
        }
    })
    .await;
    let app = Origin::named("app").await;
    let first = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let second = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    jwks.set(
        "/rotating",
        json!({ "keys": [ec_jwk(&first, "one")] }).to_string(),
    );
    jwks.set(
        "/strict",
        json!({ "keys": [ec_jwk(&first, "one")] }).to_string(),
    );
    jwks.set("/broken", "<html>maintenance</html>".into());
    jwks.set(
        "/refreshing",
        json!({ "keys": [ec_jwk(&first, "one")] }).to_string(),
    );
    let p = TestProxy::start(&format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/rotating/"
cluster = "app"
auth = ["rotating"]

[[routes]]
path_prefix = "/strict/"
cluster = "app"
auth = ["strict"]

[[routes]]
path_prefix = "/broken/"
cluster = "app"
auth = ["broken"]

[[routes]]
path_prefix = "/refreshing/"
cluster = "app"
auth = ["refreshing"]

[[clusters]]
name = "app"
endpoints = ["{}"]

[[clusters]]
name = "idp"
endpoints = ["{}"]

[[auth]]
name = "rotating"
jwt = {{ algorithms = ["ES256"], jwks = {{ url = "https://idp.test/rotating", cluster = "idp", min_refresh = "10ms" }} }}

[[auth]]
name = "strict"
jwt = {{ algorithms = ["ES256"], jwks = {{ url = "https://idp.test/strict", cluster = "idp", min_refresh = "1h" }} }}

[[auth]]
name = "refreshing"
jwt = {{ algorithms = ["ES256"], jwks = {{ url = "https://idp.test/refreshing", cluster = "idp", refresh = "20ms", min_refresh = "1h" }} }}

[[auth]]
name = "broken"
jwt = {{ algorithms = ["ES256"], jwks = {{ url = "https://idp.test/broken", cluster = "idp", min_refresh = "1h" }} }}
"#,
        app.addr, idp.addr
    ))
    .await;
    let front = p.addr("front");
    let token = |k: &rcgen::KeyPair, kid: &str| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.to_owned());
        let key = EncodingKey::from_ec_pem(k.serialize_pem().as_bytes()).unwrap();
        encode(&h, &json!({ "sub": "alice", "exp": now() + 600 }), &key).unwrap()
    };

    // The first token fetches the set.
    let old = token(&first, "one");
    assert_eq!(ask(front, "/rotating/a", &old).await.status, 200);
    assert_eq!(jwks.fetches("/rotating"), 1);
    assert_eq!(
        ask(front, "/rotating/a", &token(&first, "one"))
            .await
            .status,
        200
    );
    assert_eq!(jwks.fetches("/rotating"), 1, "the set is kept");

    // The issuer rotates: a token with the new kid fetches the set again and passes;
    // the old key is gone from the set and its tokens are refused.
    jwks.set(
        "/rotating",
        json!({ "keys": [ec_jwk(&second, "two")] }).to_string(),
    );
    eventually_async("the new key is fetched", || async {
        ask(front, "/rotating/a", &token(&second, "two"))
            .await
            .status
            == 200
    })
    .await;
    assert_eq!(
        ask(front, "/rotating/a", &token(&first, "one"))
            .await
            .status,
        401
    );
    // The very token verified before (and kept as verified) is checked again
    // against the new set.
    assert_eq!(ask(front, "/rotating/a", &old).await.status, 401);

    // A flood of unknown kids costs one fetch per min_refresh (here an hour): none.
    assert_eq!(
        ask(front, "/strict/a", &token(&first, "one")).await.status,
        200
    );
    for i in 0..20 {
        let a = ask(front, "/strict/a", &token(&second, &format!("forged-{i}"))).await;
        assert_eq!(a.status, 401);
    }
    assert_eq!(jwks.fetches("/strict"), 1);

    // A set older than `refresh` is fetched again in the background while requests
    // go on with it.
    eventually_async("the set is refreshed", || async {
        assert_eq!(
            ask(front, "/refreshing/a", &token(&first, "one"))
                .await
                .status,
            200
        );
        jwks.fetches("/refreshing") >= 3
    })
    .await;

    // The JWKS origin fails: a token naming an unknown kid makes it ask (and fail),
    // and the last good set still verifies the current key's tokens.
    jwks.docs.lock().unwrap().clear();
    let before = jwks.fetches("/rotating");
    let a = ask(front, "/rotating/a", &token(&first, "three")).await;
    assert_eq!(a.status, 401, "an unknown kid while the origin is down");
    assert_eq!(jwks.fetches("/rotating"), before + 1);
    for _ in 0..3 {
        assert_eq!(
            ask(front, "/rotating/a", &token(&second, "two"))
                .await
                .status,
            200
        );
    }

    // A JWKS that is not a key set: nothing can be verified, and it says so.
    let a = ask(front, "/broken/a", &token(&first, "one")).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.header("x-pylon-error"), Some("auth_unavailable"));
    assert_eq!(jwks.fetches("/broken"), 1);
}
