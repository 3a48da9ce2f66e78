//! The cache's parsers and policy on any request and response headers: Cache-Control
//! and targeted fields, storability, freshness and age, reuse decisions, Vary, keys and
//! byte ranges; never a panic, and the properties below hold.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use pylon_cache::{KeySpec, Options, key, policy, serve};

/// `name: value` lines into a header map (lines that are not a field are skipped).
fn headers(data: &[u8]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            h.append(n, v);
        }
    }
    h
}

fuzz_target!(|data: &[u8]| {
    // Request and response fields, split at the first empty line; the first two bytes
    // pick the status and the body length.
    if data.len() < 2 {
        return;
    }
    let status = http::StatusCode::from_u16(200 + u16::from(data[0]) % 400)
        .unwrap_or(http::StatusCode::OK);
    let len = u64::from(data[1]) * 37;
    let rest = &data[2..];
    let split = rest
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(rest.len());
    let req = headers(&rest[..split]);
    let resp = headers(rest.get(split + 2..).unwrap_or(&[]));

    let opts = Options::default();
    let (cc, targeted) = policy::response_directives(&resp, &opts);
    let req_cc = policy::request_directives(&req);
    let _ = policy::storable(&http::Method::GET, &req, &req_cc, status, &resp, &cc, targeted);
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let f = policy::Freshness::of(status, &resp, &cc, targeted, t, t + Duration::from_secs(1), &opts);
    for later in [0, 1, 100, 100_000] {
        let now = t + Duration::from_secs(later);
        let _ = f.reuse(&req_cc, now);
        let _ = f.serves_on_error(&req_cc, now);
        assert!(f.current_age(now) >= f.current_age(t));
    }
    let _ = policy::validates(&resp, &req);
    let merged = policy::update_headers(&resp, &req);
    assert_eq!(
        merged.get(http::header::CONTENT_LENGTH),
        resp.get(http::header::CONTENT_LENGTH),
        "a 304 never changes the stored length"
    );

    if let Some(fields) = key::vary_fields(&resp) {
        assert!(fields.len() <= key::MAX_VARY_FIELDS);
        let values = key::vary_values(&fields, &req);
        assert_eq!(values.len(), fields.len());
        // Normalising is stable: the normalised values select themselves.
        let mut again = http::HeaderMap::new();
        for (f, v) in fields.iter().zip(&values) {
            if let Some(v) = v.as_deref().and_then(|v| http::HeaderValue::from_str(v).ok()) {
                again.insert(f.clone(), v);
            }
        }
        let renormalised = key::vary_values(&fields, &again);
        for (a, b) in values.iter().zip(&renormalised) {
            if a.as_deref().is_some_and(|v| http::HeaderValue::from_str(v).is_ok()) {
                assert_eq!(a, b);
            }
        }
    }

    let spec = KeySpec {
        headers: vec![http::header::ACCEPT_LANGUAGE],
        cookies: vec!["lang".into()],
        ignore_query: vec!["utm".into()],
        sort_query: true,
    };
    let target = String::from_utf8_lossy(rest.get(..split.min(64)).unwrap_or(&[])).into_owned();
    let k = spec.key("http", "Host:80", &format!("/{target}"), &req);
    assert!(k.text.starts_with(k.url()));

    if let Some(range) = req.get(http::header::RANGE)
        && let Some(ranges) = serve::parse_ranges(range.as_bytes(), len)
    {
        assert!(ranges.len() <= serve::MAX_RANGES);
        for r in ranges {
            assert!(r.start < r.end && r.end <= len, "{r:?} of {len}");
        }
    }
});
