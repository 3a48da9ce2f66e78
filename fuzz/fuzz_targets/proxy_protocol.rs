//! PROXY protocol v1/v2 parsing: never a panic, a complete header never claims more
//! bytes than were given, and headers Pylon encodes parse back to their addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pylon_proxy::l4::proxy_protocol::{Parsed, parse_header};

fuzz_target!(|data: &[u8]| {
    if let Parsed::Complete(len, _) = parse_header(data) {
        assert!(len <= data.len());
    }
    // Round trip: addresses taken from the input, encoded by Pylon, parsed back.
    if data.len() >= 13 {
        let v4 = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        let src =
            std::net::SocketAddr::from((v4(&data[0..4]), u16::from_be_bytes([data[4], data[5]])));
        let dst = std::net::SocketAddr::from((
            v4(&data[6..10]),
            u16::from_be_bytes([data[10], data[11]]),
        ));
        let version = if data[12] & 1 == 0 {
            pylon_config::model::ProxyProtocolVersion::V1
        } else {
            pylon_config::model::ProxyProtocolVersion::V2
        };
        let encoded = pylon_proxy::l4::proxy_protocol::encode(version, src, dst, None);
        match parse_header(&encoded) {
            Parsed::Complete(len, Some((s, d))) => {
                assert_eq!(len, encoded.len());
                assert_eq!((s, d), (src, dst));
            }
            other => panic!("{other:?} for {encoded:?}"),
        }
    }
});
