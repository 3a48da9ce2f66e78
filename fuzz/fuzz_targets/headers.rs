//! Header normalisation: hop-by-hop removal (including headers a `Connection` header
//! names), `Via`, and the forwarding headers, on arbitrary header maps; never a panic,
//! and what `strip_hop_by_hop` leaves has no hop-by-hop header (TE only as `trailers`)
//! and nothing `Connection` named.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pylon_proxy::http::headers::{append_via, strip_hop_by_hop};

fuzz_target!(|data: &[u8]| {
    let mut h = http::HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            h.append(n, v);
        }
    }
    let named: Vec<String> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty() && t != "te")
        .collect();
    strip_hop_by_hop(&mut h);
    // `Trailer` is end to end (RFC 9110 §6.6.2: it announces the trailer fields), so it
    // is not in this list.
    for hop in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(!h.contains_key(hop), "{hop} left");
    }
    // TE survives only as `TE: trailers` (gRPC needs it end to end).
    if let Some(te) = h.get(http::header::TE) {
        assert_eq!(te, "trailers");
    }
    for n in &named {
        assert!(!h.contains_key(n.as_str()), "{n} named by Connection left");
    }
    append_via(&mut h, http::Version::HTTP_11);
    assert!(h.contains_key(http::header::VIA));
});
