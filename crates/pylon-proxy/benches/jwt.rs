//! What a JWT policy's check costs when the token was not verified before: one
//! signature verification and the claim checks, as `jsonwebtoken` runs them for the
//! policy (HS256 and ES256 on aws-lc-rs), beside the lookup a token seen before costs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};

type Claims = serde_json::Map<String, serde_json::Value>;

fn claims() -> serde_json::Value {
    serde_json::json!({ "sub": "bench", "iss": "https://issuer.bench", "exp": 4_000_000_000u64 })
}

fn bench(c: &mut Criterion) {
    let secret = b"a-benchmark-secret-of-32-bytes!!";
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap();
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&["https://issuer.bench"]);
    let hs_key = DecodingKey::from_secret(secret).unwrap();
    c.bench_function("jwt_verify_hs256", |b| {
        b.iter(|| black_box(decode::<Claims>(black_box(&hs), &hs_key, &v).unwrap()))
    });

    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let es = encode(
        &Header::new(Algorithm::ES256),
        &claims(),
        &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&["https://issuer.bench"]);
    let es_key = DecodingKey::from_ec_pem(ec.public_key_pem().as_bytes()).unwrap();
    c.bench_function("jwt_verify_es256", |b| {
        b.iter(|| black_box(decode::<Claims>(black_box(&es), &es_key, &v).unwrap()))
    });

    // A token verified before: the policy's lookup (moka, by the token's text).
    let cache: moka::sync::Cache<String, std::sync::Arc<Claims>> =
        moka::sync::Cache::builder().max_capacity(10_000).build();
    let decoded = decode::<Claims>(&es, &es_key, &v).unwrap().claims;
    cache.insert(es.clone(), std::sync::Arc::new(decoded));
    c.bench_function("jwt_known_token_lookup", |b| {
        b.iter(|| black_box(cache.get(black_box(es.as_str())).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
