//! JWT bearer tokens on routes (`[[auth]] jwt`), signed here with HS256 and ES256:
//! accepted tokens go on with their claims as upstream headers (never the client's own)
//! and the token stripped when asked; expired, not yet valid, wrong-issuer, tampered,
//! unsigned and claim-less tokens are refused with 401 and a Bearer challenge.

#![allow(clippy::unwrap_used, clippy::expect_used)]

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

#[tokio::test]
async fn tokens_are_verified_and_their_claims_go_upstream() {
    let origin = Origin::echo().await;
    let dir = std::env::temp_dir().join(format!("pylon-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = b"a-test-secret-of-thirty-two-bytes!";
    std::fs::write(dir.join("hs.key"), secret).unwrap();
    let ec = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.join("es.pub.pem"), ec.public_key_pem()).unwrap();
    let p = TestProxy::start(&format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/hs/"
cluster = "c"
auth = ["hs"]

[[routes]]
path_prefix = "/es/"
cluster = "c"
auth = ["es"]

[[clusters]]
name = "c"
endpoints = ["{}"]

[[auth]]
name = "hs"
jwt = {{ algorithms = ["HS256"], key_file = "{}", issuer = "https://issuer.test", required_claims = ["sub"], claims_to_headers = {{ sub = "x-user-id", tier = "x-tier" }}, strip_token = true }}

[[auth]]
name = "es"
jwt = {{ algorithms = ["ES256"], key_file = "{}", audience = "pylon" }}
"#,
        origin.addr,
        dir.join("hs.key").display(),
        dir.join("es.pub.pem").display()
    ))
    .await;
    let front = p.addr("front");
    let ask = |path: &'static str, token: Option<String>| async move {
        let mut r = Request::get(path)
            .header("host", "test.local")
            .header("x-user-id", "spoofed");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        send_h1(front, r.body(empty()).unwrap()).await
    };
    let hs = |claims: serde_json::Value| {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    };
    let good =
        json!({ "sub": "alice", "tier": "gold", "iss": "https://issuer.test", "exp": now() + 600 });
    let ok = ask("/hs/a", Some(hs(good.clone()))).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let seen = ok.json();
    assert_eq!(
        seen["headers"]["x-user-id"],
        json!(["alice"]),
        "from the token, not the client"
    );
    assert_eq!(seen["headers"]["x-tier"], json!(["gold"]));
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the token is stripped"
    );

    let refused = [
        hs(json!({ "sub": "alice", "iss": "https://issuer.test", "exp": now() - 3600 })),
        hs(
            json!({ "sub": "alice", "iss": "https://issuer.test", "exp": now() + 600, "nbf": now() + 3600 }),
        ),
        hs(json!({ "sub": "alice", "iss": "https://elsewhere.test", "exp": now() + 600 })),
        hs(json!({ "iss": "https://issuer.test", "exp": now() + 600 })),
        format!("{}x", hs(good.clone())),
        // Unsigned.
        format!(
            "eyJhbGciOiJub25lIn0.{}.",
            hs(good.clone()).split('.').nth(1).unwrap()
        ),
        "not-a-jwt".to_owned(),
        "a".repeat(20_000),
    ];
    for token in refused {
        let a = ask("/hs/a", Some(token.clone())).await;
        assert_eq!(a.status, 401, "{token}");
        assert_eq!(a.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(ask("/hs/a", None).await.status, 401);

    // ES256 with an audience.
    let es_key = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap();
    let es = |claims: serde_json::Value| {
        encode(&Header::new(Algorithm::ES256), &claims, &es_key).unwrap()
    };
    assert_eq!(
        ask(
            "/es/a",
            Some(es(json!({ "aud": "pylon", "exp": now() + 600 })))
        )
        .await
        .status,
        200
    );
    assert_eq!(
        ask(
            "/es/a",
            Some(es(json!({ "aud": "other", "exp": now() + 600 })))
        )
        .await
        .status,
        401
    );
    // An HS token on the ES route: another algorithm, refused.
    assert_eq!(ask("/es/a", Some(hs(good))).await.status, 401);
    assert_eq!(origin.request_count(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn routes_match_on_the_claims_of_a_verified_token() {
    let admin = Origin::named("admin-app").await;
    let user = Origin::named("user-app").await;
    let dir = std::env::temp_dir().join(format!("pylon-jwt-claims-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = b"a-test-secret-of-thirty-two-bytes!";
    std::fs::write(dir.join("hs.key"), secret).unwrap();
    let p = TestProxy::start(&format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
name = "admins"
path_prefix = "/api/"
claims = {{ role = "admin" }}
cluster = "admin"
auth = ["jwt"]

[[routes]]
name = "gold"
path_prefix = "/api/"
claims = {{ tier = "3", groups = "beta" }}
cluster = "admin"
auth = ["jwt"]

[[routes]]
name = "everyone"
path_prefix = "/api/"
cluster = "user"
auth = ["jwt"]

[[clusters]]
name = "admin"
endpoints = ["{}"]

[[clusters]]
name = "user"
endpoints = ["{}"]

[[auth]]
name = "jwt"
jwt = {{ algorithms = ["HS256"], key_file = "{}" }}
"#,
        admin.addr,
        user.addr,
        dir.join("hs.key").display()
    ))
    .await;
    let front = p.addr("front");
    let sign = |claims: serde_json::Value| {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    };
    let ask = |token: Option<String>| async move {
        let mut r = Request::get("/api/x").header("host", "test.local");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        send_h1(front, r.body(empty()).unwrap()).await
    };
    let served_by = |a: &Answer| a.text().split_whitespace().next().unwrap_or("").to_owned();
    let admin_token = sign(json!({ "sub": "ann", "role": "admin", "exp": now() + 600 }));
    let a = ask(Some(admin_token)).await;
    assert_eq!(
        (a.status.as_u16(), served_by(&a)),
        (200, "admin-app".into())
    );
    // A number compared by its text, a list by its members.
    let gold =
        sign(json!({ "sub": "bo", "tier": 3, "groups": ["alpha", "beta"], "exp": now() + 600 }));
    let a = ask(Some(gold)).await;
    assert_eq!(
        (a.status.as_u16(), served_by(&a)),
        (200, "admin-app".into())
    );
    let plain = sign(json!({ "sub": "cy", "role": "user", "tier": 3, "exp": now() + 600 }));
    let a = ask(Some(plain)).await;
    assert_eq!((a.status.as_u16(), served_by(&a)), (200, "user-app".into()));
    // A forged admin token matches no claims route, and its own route refuses it.
    let forged = format!(
        "{}.{}.{}",
        "eyJhbGciOiJIUzI1NiJ9",
        base64_url(&json!({ "role": "admin", "exp": now() + 600 }).to_string()),
        "AAAA"
    );
    assert_eq!(ask(Some(forged)).await.status, 401);
    assert_eq!(ask(None).await.status, 401);
    assert_eq!(admin.request_count(), 2);
    assert_eq!(user.request_count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn a_token_verified_before_is_refused_once_it_expires() {
    let origin = Origin::named("app").await;
    let dir = std::env::temp_dir().join(format!("pylon-jwt-exp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = b"a-test-secret-of-thirty-two-bytes!";
    std::fs::write(dir.join("hs.key"), secret).unwrap();
    let p = TestProxy::start(&format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "front"
bind = "127.0.0.1:0"

[[routes]]
cluster = "c"
auth = ["jwt"]

[[clusters]]
name = "c"
endpoints = ["{}"]

[[auth]]
name = "jwt"
jwt = {{ algorithms = ["HS256"], key_file = "{}", leeway = "0s" }}
"#,
        origin.addr,
        dir.join("hs.key").display()
    ))
    .await;
    let front = p.addr("front");
    let token = encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "alice", "exp": now() + 3 }),
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap();
    let ask = || {
        let t = token.clone();
        async move {
            let r = Request::get("/x")
                .header("host", "test.local")
                .header("authorization", format!("Bearer {t}"));
            send_h1(front, r.body(empty()).unwrap()).await.status
        }
    };
    assert_eq!(ask().await, 200);
    assert_eq!(
        ask().await,
        200,
        "verified before: served from the kept verdict"
    );
    eventually_async("the kept token expires", || async { ask().await == 401 }).await;
    let _ = std::fs::remove_dir_all(&dir);
}
