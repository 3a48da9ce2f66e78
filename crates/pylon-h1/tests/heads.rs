//! Request and response heads: the smuggling corpus refused by the codec itself, valid
//! heads parsed to exactly what they say (names as written, framing, keep-alive,
//! `Expect`, upgrades, pipelining), and heads written back out parsing the same.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Buf, BytesMut};
use http::{Method, StatusCode, Version};
use pylon_h1::*;

const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 64 * 1024,
    max_fields: 100,
};

/// What the codec says of one raw request: its head, then its chunked body.
fn verdict(bytes: &[u8]) -> Result<(), String> {
    let mut buf = BytesMut::from(bytes);
    let head = match parse_request(&mut buf, &LIMITS) {
        Err(e) => return Err(format!("head: {e}")),
        Ok(None) => return Ok(()),
        Ok(Some(h)) => h,
    };
    if head.framing != BodyFraming::Chunked {
        return Ok(());
    }
    // The proxy's default body limit.
    let mut body = ChunkedDecoder::new(1 << 30);
    loop {
        match body.step(&buf) {
            Err(ChunkError::TooLarge) => return Err("body: too large".into()),
            Err(e) => return Err(format!("body: {e}")),
            Ok(ChunkStep::NeedMore | ChunkStep::End { .. }) => return Ok(()),
            Ok(ChunkStep::Data(n) | ChunkStep::Framing { len: n, .. }) => buf.advance(n),
        }
    }
}

#[test]
fn every_smuggling_case_whose_fault_is_in_the_bytes_is_refused_by_the_codec() {
    // Refused by the request path, not the codec: the request is well formed.
    const ROUTING: &[&str] = &["connect_on_reverse_proxy"];
    let mut failures = Vec::new();
    for (name, bytes, status) in pylon_testkit::smuggling::CASES {
        let v = verdict(bytes);
        let ok = match (ROUTING.contains(name), *status, &v) {
            (true, _, v) => v.is_ok(),
            (false, 413, Err(e)) => e.ends_with("too large"),
            (false, 400, Err(e)) => !e.ends_with("too large"),
            _ => false,
        };
        if !ok {
            failures.push(format!("{name} (status {status}): {v:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn request(bytes: &[u8]) -> RequestHead {
    let mut buf = BytesMut::from(bytes);
    parse_request(&mut buf, &LIMITS)
        .expect("valid")
        .expect("complete")
}

#[test]
fn a_request_head_keeps_its_names_order_and_framing() {
    let mut buf = BytesMut::from(
        &b"POST /up?x=1 HTTP/1.1\r\nHost: a.example\r\nX-Mixed-Case: one\r\nx-mixed-case: two \r\nContent-Length: 010\r\nContent-Length: 10\r\n\r\n0123456789GET"[..],
    );
    let head = parse_request(&mut buf, &LIMITS).unwrap().unwrap();
    assert_eq!(head.method, Method::POST);
    assert_eq!(head.target(), b"/up?x=1");
    assert_eq!(head.uri.query(), Some("x=1"));
    assert_eq!(head.form, TargetForm::Origin);
    assert_eq!(head.version, Version::HTTP_11);
    assert_eq!(
        head.framing,
        BodyFraming::Length(10),
        "the same length twice is one"
    );
    assert!(head.keep_alive && !head.upgrade && !head.expect_continue);
    let names: Vec<&[u8]> = head.fields.iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            &b"Host"[..],
            b"X-Mixed-Case",
            b"x-mixed-case",
            b"Content-Length",
            b"Content-Length"
        ]
    );
    let values: Vec<&[u8]> = head.fields.get_all("X-MIXED-CASE").collect();
    assert_eq!(
        values,
        [&b"one"[..], b"two"],
        "trailing space is not the value's"
    );
    assert_eq!(head.host(), Some(&b"a.example"[..]));
    assert_eq!(&buf[..], b"0123456789GET", "the body and what follows stay");
    let map = head.fields.to_header_map();
    assert_eq!(map.get_all("x-mixed-case").iter().count(), 2);
}

#[test]
fn agreeing_content_length_lines_go_on_as_one() {
    let mut buf = BytesMut::from(
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n"[..],
    );
    let head = parse_request(&mut buf, &HeadLimits::default())
        .expect("agreeing lengths are accepted")
        .expect("a whole head");
    assert_eq!(head.framing, BodyFraming::Length(5));
    let map = head.fields.to_header_map();
    let lengths: Vec<_> = map.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["5"], "one Content-Length goes on");
}

#[test]
fn forwarded_fields_leave_out_only_what_spoke_of_persistence() {
    for (raw, connection) in [
        // Persistence alone: read into the head, left out of what goes on.
        (
            &b"GET / HTTP/1.0\r\nHost: a\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\n\r\n"[..],
            None,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, keep-alive\r\nX-A: 1\r\n\r\n",
            None,
        ),
        // Options naming other fields stay, for the proxy to strip those too.
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n",
            Some("keep-alive, X-A"),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-A: 1\r\n\r\n",
            Some("Upgrade"),
        ),
    ] {
        let head = request(raw);
        let forwarded = head.fields.to_forwarded_header_map();
        assert_eq!(
            forwarded.get("connection").map(|v| v.to_str().unwrap()),
            connection,
            "{}",
            String::from_utf8_lossy(raw)
        );
        assert!(!forwarded.contains_key("keep-alive"));
        assert_eq!(forwarded.get("x-a").map(|v| v.as_bytes()), Some(&b"1"[..]));
        // The plain map keeps every field.
        let all = head.fields.to_header_map();
        assert!(all.contains_key("connection"));
        assert_eq!(all.len(), forwarded.len() + usize::from(connection.is_none()) + usize::from(all.contains_key("keep-alive")));
    }
}

#[test]
fn keep_alive_expect_and_upgrade_follow_rfc_9112() {
    for (raw, keep_alive) in [
        (&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..], true),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            false,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x, CLOSE\r\n\r\n",
            false,
        ),
        (b"GET / HTTP/1.0\r\n\r\n", false),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
        (
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
            false,
        ),
    ] {
        assert_eq!(
            request(raw).keep_alive,
            keep_alive,
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
    assert!(
        request(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
            .expect_continue
    );
    assert!(
        !request(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
            .expect_continue
    );
    assert!(request(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n").upgrade);
    assert!(!request(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").upgrade);
}

#[test]
fn target_forms_fit_their_methods() {
    let h = request(b"GET http://a.example:8080/x HTTP/1.1\r\nHost: A.example:8080\r\n\r\n");
    assert_eq!(h.form, TargetForm::Absolute);
    assert_eq!(
        request(b"GET http://a.example/x HTTP/1.1\r\n\r\n").form,
        TargetForm::Absolute
    );
    assert_eq!(
        request(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").form,
        TargetForm::Asterisk
    );
    let c = request(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n");
    assert_eq!(c.form, TargetForm::Authority);
    assert_eq!(c.framing, BodyFraming::None);
    for bad in [
        &b"CONNECT a.example HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"CONNECT u@a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let mut buf = BytesMut::from(bad);
        assert!(
            matches!(parse_request(&mut buf, &LIMITS), Err(HeadError::Invalid(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
    assert_eq!(
        parse_request(&mut buf, &LIMITS).unwrap_err(),
        HeadError::MissingHost
    );
}

#[test]
fn heads_arrive_in_pieces_and_pipelined() {
    let two = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut buf = BytesMut::new();
    let mut targets = Vec::new();
    for &b in two.iter() {
        buf.extend_from_slice(&[b]);
        while let Some(h) = parse_request(&mut buf, &LIMITS).unwrap() {
            targets.push(h.target().to_vec());
        }
    }
    assert_eq!(targets, [b"/1".to_vec(), b"/2".to_vec()]);
    assert!(buf.is_empty());
}

#[test]
fn limits_bound_heads() {
    let small = HeadLimits {
        max_bytes: 64,
        max_fields: 3,
    };
    let mut partial = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: "[..]);
    assert!(parse_request(&mut partial, &small).unwrap().is_none());
    partial.extend_from_slice(&[b'x'; 64]);
    assert_eq!(
        parse_request(&mut partial, &small).unwrap_err(),
        HeadError::TooLarge
    );
    let mut many =
        BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"[..]);
    assert_eq!(
        parse_request(&mut many, &small).unwrap_err(),
        HeadError::TooManyFields
    );
    // More fields than fit on the stack.
    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..199 {
        big.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let wide = HeadLimits {
        max_bytes: 1 << 20,
        max_fields: 200,
    };
    let h = parse_request(&mut BytesMut::from(&big[..]), &wide)
        .unwrap()
        .unwrap();
    assert_eq!(h.fields.len(), 200);
}

fn response(bytes: &[u8], method: &Method) -> Result<ResponseHead, HeadError> {
    let mut buf = BytesMut::from(bytes);
    parse_response(&mut buf, method, &LIMITS).map(|h| h.expect("complete"))
}

#[test]
fn response_framing_follows_status_and_method() {
    let get = &Method::GET;
    let r = response(
        b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 5\r\n\r\n",
        get,
    )
    .unwrap();
    assert_eq!(
        (r.status, r.framing, r.keep_alive),
        (StatusCode::OK, BodyFraming::Length(5), true)
    );
    assert_eq!(r.reason(), b"Fine Thanks");
    let r = response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        get,
    )
    .unwrap();
    assert_eq!(r.framing, BodyFraming::Chunked);
    let r = response(b"HTTP/1.1 200 OK\r\n\r\n", get).unwrap();
    assert_eq!((r.framing, r.keep_alive), (BodyFraming::UntilClose, false));
    let r = response(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", get).unwrap();
    assert_eq!((r.version, r.keep_alive), (Version::HTTP_10, false));
    for (raw, method) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"[..],
            &Method::HEAD,
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", get),
        (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            get,
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\n", get),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            get,
        ),
        (
            b"HTTP/1.1 200 Connection established\r\n\r\n",
            &Method::CONNECT,
        ),
    ] {
        let r = response(raw, method).unwrap();
        assert_eq!(
            r.framing,
            BodyFraming::None,
            "{}",
            String::from_utf8_lossy(raw)
        );
        assert!(r.keep_alive);
    }
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
        b"HTTP/1.1 200 OK\nX: a\n\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
    ] {
        assert!(
            matches!(response(bad, get), Err(HeadError::Invalid(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn heads_written_out_parse_back_the_same() {
    let h = request(
        b"PATCH /p?q HTTP/1.1\r\nHost: a\r\nX-Case: V\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let mut out = BytesMut::new();
    write_request_head(&mut out, &h.method, h.target(), &h.fields);
    assert_eq!(&out[..], &h.raw()[..]);
    let again = request(&out);
    assert_eq!(
        (again.method, again.framing),
        (Method::PATCH, BodyFraming::Chunked)
    );
    let r = response(
        b"HTTP/1.1 404 Gone Fishing\r\nX-Case: V\r\n\r\n",
        &Method::GET,
    )
    .unwrap();
    let mut out = BytesMut::new();
    write_response_head(&mut out, r.version, r.status, Some(r.reason()), &r.fields);
    assert_eq!(&out[..], &r.raw()[..]);
    let mut out = BytesMut::new();
    write_response_head(
        &mut out,
        Version::HTTP_10,
        StatusCode::BAD_GATEWAY,
        None,
        &Fields::default(),
    );
    assert_eq!(&out[..], b"HTTP/1.0 502 Bad Gateway\r\n\r\n");
}

#[test]
fn a_header_map_goes_out_with_the_names_spelled_as_they_arrived() {
    let h = request(
        b"GET / HTTP/1.1\r\nhost: a\r\nX-API-Key: k\r\nx-lower: 1\r\nAccept: */*\r\nx-lower: 2\r\n\r\n",
    );
    let case = HeaderCase::of(h.fields.clone()).expect("names not all in Title-Case");
    let mut map = h.fields.to_header_map();
    map.remove("accept");
    map.insert("x-forwarded-for", http::HeaderValue::from_static("1.2.3.4"));
    let mut out = BytesMut::new();
    write_request_head(
        &mut out,
        &h.method,
        h.target(),
        Spelled {
            fields: &map,
            case: Some(&case),
        },
    );
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        "GET / HTTP/1.1\r\nhost: a\r\nX-API-Key: k\r\nx-lower: 1\r\nx-lower: 2\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"
    );
    // Names all in Title-Case (or spelled as usual, `TE`) need nothing kept: they are
    // written that way anyway.
    let t = request(
        b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: u\r\nX-Request-Id: 7\r\nTE: trailers\r\n\r\n",
    );
    assert!(HeaderCase::of(t.fields.clone()).is_none());
    let mut out = BytesMut::new();
    write_request_head(
        &mut out,
        &t.method,
        t.target(),
        Spelled {
            fields: &t.fields.to_header_map(),
            case: None,
        },
    );
    assert_eq!(&out[..], &t.raw()[..]);
}
