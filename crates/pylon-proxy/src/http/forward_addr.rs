//! Which destination addresses the forward proxy counts as public (its SSRF defaults:
//! anything else is denied as `private_address` unless `allow_private`).
//!
//! The tables follow the IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890)
//! as of 2025-04 (the IPv6 registry's newest entry, 100:0:0:1::/64, RFC 9780), entry by
//! entry with the registry's names. An entry whose "Globally Reachable" is False is
//! non-public; one whose "Globally Reachable" is True is public even inside a larger
//! non-public block (the most specific entry decides). Entries the registries leave
//! undecided: 192.88.99.0/24 and 2001:10::/28 (terminated allocations) and Teredo
//! (2001::/32) are non-public; 6to4 (2002::/16) and NAT64 (64:ff9b::/96), and the
//! IPv4-mapped block (::ffff:0:0/96), are judged by the IPv4 address they carry.
//!
//! Added from outside the special-purpose registries: IPv4 multicast 224.0.0.0/4 (IPv4
//! Multicast Address Space registry), and from the IPv6 Address Space registry the
//! deprecated IPv4-compatible block ::/96, site-local fec0::/10, multicast ff00::/8, and
//! everything outside 2000::/3 (global unicast) that no entry names ("Reserved by IETF").

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What an entry means for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Not globally reachable: non-public.
    Local,
    /// Globally reachable (the registry's exceptions inside non-public blocks).
    Global,
    /// Carries an IPv4 address, judged in its place.
    Carries(Embedded),
}

/// Where an IPv6 address carries an IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Embedded {
    /// The last 32 bits (IPv4-mapped, NAT64 well-known prefix).
    Last32,
    /// Bits 16 to 47 (6to4).
    Bits16To47,
}

use Reach::{Carries, Global, Local};

struct V4 {
    net: Ipv4Addr,
    len: u8,
    name: &'static str,
    reach: Reach,
}

struct V6 {
    net: Ipv6Addr,
    len: u8,
    name: &'static str,
    reach: Reach,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8, name: &'static str, reach: Reach) -> V4 {
    V4 {
        net: Ipv4Addr::new(a, b, c, d),
        len,
        name,
        reach,
    }
}

const fn v6(s: [u16; 8], len: u8, name: &'static str, reach: Reach) -> V6 {
    V6 {
        net: Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        len,
        name,
        reach,
    }
}

/// The IANA IPv4 Special-Purpose Address Registry, and multicast.
#[rustfmt::skip]
const IPV4: &[V4] = &[
    v4(0, 0, 0, 0, 8, "\"This network\"", Local),
    v4(0, 0, 0, 0, 32, "\"This host on this network\"", Local),
    v4(10, 0, 0, 0, 8, "Private-Use", Local),
    v4(100, 64, 0, 0, 10, "Shared Address Space", Local),
    v4(127, 0, 0, 0, 8, "Loopback", Local),
    v4(169, 254, 0, 0, 16, "Link Local", Local),
    v4(172, 16, 0, 0, 12, "Private-Use", Local),
    v4(192, 0, 0, 0, 24, "IETF Protocol Assignments", Local),
    v4(192, 0, 0, 0, 29, "IPv4 Service Continuity Prefix", Local),
    v4(192, 0, 0, 8, 32, "IPv4 dummy address", Local),
    v4(192, 0, 0, 9, 32, "Port Control Protocol Anycast", Global),
    v4(192, 0, 0, 10, 32, "Traversal Using Relays around NAT Anycast", Global),
    v4(192, 0, 0, 170, 32, "NAT64/DNS64 Discovery", Local),
    v4(192, 0, 0, 171, 32, "NAT64/DNS64 Discovery", Local),
    v4(192, 0, 2, 0, 24, "Documentation (TEST-NET-1)", Local),
    v4(192, 31, 196, 0, 24, "AS112-v4", Global),
    v4(192, 52, 193, 0, 24, "AMT", Global),
    // Terminated 2015-03 (RFC 7526); the registry leaves its flags empty.
    v4(192, 88, 99, 0, 24, "Deprecated (6to4 Relay Anycast)", Local),
    v4(192, 88, 99, 2, 32, "6a44-relay anycast address", Local),
    v4(192, 168, 0, 0, 16, "Private-Use", Local),
    v4(192, 175, 48, 0, 24, "Direct Delegation AS112 Service", Global),
    v4(198, 18, 0, 0, 15, "Benchmarking", Local),
    v4(198, 51, 100, 0, 24, "Documentation (TEST-NET-2)", Local),
    v4(203, 0, 113, 0, 24, "Documentation (TEST-NET-3)", Local),
    v4(240, 0, 0, 0, 4, "Reserved", Local),
    v4(255, 255, 255, 255, 32, "Limited Broadcast", Local),
    // IPv4 Multicast Address Space Registry (RFC 5771).
    v4(224, 0, 0, 0, 4, "Multicast", Local),
];

/// The IANA IPv6 Special-Purpose Address Registry, and blocks of the IPv6 Address Space
/// registry that are not global unicast.
#[rustfmt::skip]
const IPV6: &[V6] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "Unspecified Address", Local),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "Loopback Address", Local),
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, "IPv4-mapped Address", Carries(Embedded::Last32)),
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, "IPv4-IPv6 Translat.", Carries(Embedded::Last32)),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "IPv4-IPv6 Translat.", Local),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "Discard-Only Address Block", Local),
    v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, "Dummy IPv6 Prefix", Local),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "IETF Protocol Assignments", Local),
    // Globally Reachable "N/A" in the registry: it tunnels to anywhere.
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "TEREDO", Local),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 1], 128, "Port Control Protocol Anycast", Global),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128, "Traversal Using Relays around NAT Anycast", Global),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 3], 128, "DNS-SD Service Registration Protocol Anycast", Global),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, "Benchmarking", Local),
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32, "AMT", Global),
    v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48, "AS112-v6", Global),
    // Terminated 2014-03; the registry leaves its flags empty.
    v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28, "Deprecated (previously ORCHID)", Local),
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28, "ORCHIDv2", Global),
    v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28, "Drone Remote ID Protocol Entity Tags (DETs) Prefix", Global),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "Documentation", Local),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4", Carries(Embedded::Bits16To47)),
    v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48, "Direct Delegation AS112 Service", Global),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "Documentation", Local),
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "Segment Routing (SRv6) SIDs", Local),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "Unique-Local", Local),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "Link-Local Unicast", Local),
    // IPv6 Address Space registry.
    v6([0, 0, 0, 0, 0, 0, 0, 0], 96, "IPv4-Compatible IPv6 Address (deprecated)", Local),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "Site-Local (deprecated)", Local),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "Multicast", Local),
];

/// Everything outside 2000::/3 (global unicast) that no entry names.
const RESERVED_BY_IETF: &str = "Reserved by IETF (outside 2000::/3)";

/// A block, as named and written in the tables (`len` 0: not one block, the name says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub name: &'static str,
    pub net: IpAddr,
    pub len: u8,
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len == 0 {
            return f.write_str(self.name);
        }
        write!(f, "{} ({}/{})", self.name, self.net, self.len)
    }
}

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonPublic {
    /// The block that decided.
    pub block: Block,
    /// For an IPv6 address carrying an IPv4 one (IPv4-mapped, NAT64, 6to4): the carrying
    /// block and the IPv4 address, whose own block is `block`.
    pub carried_by: Option<(Block, Ipv4Addr)>,
}

impl fmt::Display for NonPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((carrier, v4)) = &self.carried_by {
            write!(f, "{carrier} embedding {v4}: ")?;
        }
        write!(f, "{}", self.block)
    }
}

/// True when `ip` is not a public destination.
pub fn non_public(ip: IpAddr) -> bool {
    classify(ip).is_some()
}

/// Why `ip` is not a public destination; `None` when it is.
pub fn classify(ip: IpAddr) -> Option<NonPublic> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<NonPublic> {
    let bits = u32::from(ip);
    let entry = IPV4
        .iter()
        .filter(|e| {
            let mask = u32::MAX.checked_shl(32 - u32::from(e.len)).unwrap_or(0);
            bits & mask == u32::from(e.net) & mask
        })
        .max_by_key(|e| e.len)?;
    match entry.reach {
        Local => Some(NonPublic {
            block: Block {
                name: entry.name,
                net: IpAddr::V4(entry.net),
                len: entry.len,
            },
            carried_by: None,
        }),
        // No IPv4 entry carries another address.
        Global | Carries(_) => None,
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<NonPublic> {
    let bits = u128::from(ip);
    let entry = IPV6
        .iter()
        .filter(|e| {
            let mask = u128::MAX.checked_shl(128 - u32::from(e.len)).unwrap_or(0);
            bits & mask == u128::from(e.net) & mask
        })
        .max_by_key(|e| e.len);
    let Some(entry) = entry else {
        // Outside 2000::/3 and not named: not assigned for global use.
        return ((bits >> 125) != 0b001).then_some(NonPublic {
            block: Block {
                name: RESERVED_BY_IETF,
                net: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                len: 0,
            },
            carried_by: None,
        });
    };
    let block = Block {
        name: entry.name,
        net: IpAddr::V6(entry.net),
        len: entry.len,
    };
    match entry.reach {
        Local => Some(NonPublic {
            block,
            carried_by: None,
        }),
        Global => None,
        Carries(at) => {
            let v4 = Ipv4Addr::from(match at {
                Embedded::Last32 => (bits & 0xffff_ffff) as u32,
                Embedded::Bits16To47 => ((bits >> 80) & 0xffff_ffff) as u32,
            });
            classify_v4(v4).map(|inner| NonPublic {
                block: inner.block,
                carried_by: Some((block, v4)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The name of the block that makes `s` non-public, or `None` when public.
    fn why(s: &str) -> Option<&'static str> {
        classify(ip(s)).map(|n| n.block.name)
    }

    #[track_caller]
    fn denied(addrs: &[&str], name: &str) {
        for a in addrs {
            assert_eq!(why(a), Some(name), "{a}");
            assert!(non_public(ip(a)), "{a}");
        }
    }

    #[track_caller]
    fn public(addrs: &[&str]) {
        for a in addrs {
            assert_eq!(classify(ip(a)), None, "{a}");
            assert!(!non_public(ip(a)), "{a}");
        }
    }

    #[test]
    fn ipv4_registry_blocks_are_non_public_and_their_neighbours_public() {
        denied(&["0.0.0.1", "0.255.255.255"], "\"This network\"");
        denied(&["0.0.0.0"], "\"This host on this network\"");
        public(&["1.0.0.0", "1.1.1.1"]);
        denied(&["10.0.0.0", "10.0.0.1", "10.255.255.255"], "Private-Use");
        public(&["9.255.255.255", "11.0.0.0"]);
        denied(
            &["100.64.0.0", "100.64.0.1", "100.127.255.255"],
            "Shared Address Space",
        );
        public(&["100.63.255.255", "100.128.0.0"]);
        denied(&["127.0.0.1", "127.255.255.254"], "Loopback");
        public(&["126.255.255.255", "128.0.0.0"]);
        denied(&["169.254.0.1", "169.254.169.254"], "Link Local");
        public(&["169.253.255.255", "169.255.0.0"]);
        denied(&["172.16.0.0", "172.31.255.255"], "Private-Use");
        public(&["172.15.255.255", "172.32.0.0"]);
        denied(&["192.0.0.8"], "IPv4 dummy address");
        denied(
            &["192.0.0.0", "192.0.0.7"],
            "IPv4 Service Continuity Prefix",
        );
        denied(
            &["192.0.0.11", "192.0.0.100", "192.0.0.255"],
            "IETF Protocol Assignments",
        );
        denied(&["192.0.0.170", "192.0.0.171"], "NAT64/DNS64 Discovery");
        public(&["191.255.255.255", "192.0.1.0"]);
        denied(&["192.0.2.0", "192.0.2.255"], "Documentation (TEST-NET-1)");
        public(&["192.0.3.0"]);
        denied(
            &["192.88.99.0", "192.88.99.1", "192.88.99.255"],
            "Deprecated (6to4 Relay Anycast)",
        );
        denied(&["192.88.99.2"], "6a44-relay anycast address");
        public(&["192.88.98.255", "192.88.100.0"]);
        denied(&["192.168.0.1", "192.168.255.255"], "Private-Use");
        public(&["192.167.255.255", "192.169.0.0"]);
        denied(&["198.18.0.0", "198.19.255.255"], "Benchmarking");
        public(&["198.17.255.255", "198.20.0.0"]);
        denied(
            &["198.51.100.0", "198.51.100.255"],
            "Documentation (TEST-NET-2)",
        );
        public(&["198.51.99.255", "198.51.101.0"]);
        denied(
            &["203.0.113.0", "203.0.113.255"],
            "Documentation (TEST-NET-3)",
        );
        public(&["203.0.112.255", "203.0.114.0"]);
        denied(&["224.0.0.1", "239.255.255.255"], "Multicast");
        public(&["223.255.255.255"]);
        denied(&["240.0.0.0", "240.0.0.1", "255.255.255.254"], "Reserved");
        denied(&["255.255.255.255"], "Limited Broadcast");
        public(&["8.8.8.8", "93.184.216.34"]);
    }

    #[test]
    fn ipv4_globally_reachable_registry_entries_are_public() {
        // Inside 192.0.0.0/24, the registry's two anycast exceptions.
        public(&["192.0.0.9", "192.0.0.10"]);
        // Registry entries marked globally reachable.
        public(&["192.31.196.1", "192.52.193.1", "192.175.48.1"]);
    }

    #[test]
    fn ipv6_registry_blocks_are_non_public_and_their_neighbours_public() {
        denied(&["::"], "Unspecified Address");
        denied(&["::1"], "Loopback Address");
        denied(
            &["::2", "::a00:1", "::808:808", "::ffff"],
            "IPv4-Compatible IPv6 Address (deprecated)",
        );
        denied(
            &["64:ff9b:1::", "64:ff9b:1:ffff::1", "64:ff9b:1::808:808"],
            "IPv4-IPv6 Translat.",
        );
        denied(
            &["100::", "100::ffff:ffff:ffff:ffff"],
            "Discard-Only Address Block",
        );
        denied(&["100:0:0:1::", "100:0:0:1:ffff::1"], "Dummy IPv6 Prefix");
        denied(&["2001::", "2001:0:ffff::1"], "TEREDO");
        denied(
            &["2001:1::", "2001:1::4", "2001:4::1", "2001:1ff::1"],
            "IETF Protocol Assignments",
        );
        denied(&["2001:2::1", "2001:2:0:ffff::1"], "Benchmarking");
        denied(
            &["2001:10::1", "2001:1f::1"],
            "Deprecated (previously ORCHID)",
        );
        public(&["2001:200::1", "2000:ffff::1"]);
        denied(
            &["2001:db8::", "2001:db8::1", "2001:db8:ffff::1"],
            "Documentation",
        );
        public(&["2001:db7::1", "2001:db9::1"]);
        denied(&["3fff::1", "3fff:fff::1"], "Documentation");
        public(&["3ffe:ffff::1", "3fff:1000::1"]);
        denied(&["5f00::1", "5f00:ffff::1"], "Segment Routing (SRv6) SIDs");
        denied(&["fc00::1", "fd00::1", "fdff::1"], "Unique-Local");
        denied(&["fe80::1", "febf::1"], "Link-Local Unicast");
        denied(&["fec0::1", "feff::1"], "Site-Local (deprecated)");
        denied(&["ff02::1", "ff0e::1"], "Multicast");
        public(&["2606:4700:4700::1111", "2a00:1450:4001::200e", "3ffe::1"]);
    }

    #[test]
    fn ipv6_outside_global_unicast_is_reserved() {
        denied(
            &[
                "::1:0:0:0",
                "::ffff:0:0:0",
                "1::",
                "100:0:0:2::",
                "200::1",
                "4000::1",
                "5f01::1",
                "fb00::1",
                "fe00::1",
            ],
            RESERVED_BY_IETF,
        );
        public(&["2000::1", "3fff:ffff::1"]);
    }

    #[test]
    fn ipv6_globally_reachable_registry_exceptions_are_public() {
        public(&[
            "2001:1::1",
            "2001:1::2",
            "2001:1::3",
            "2001:3::1",
            "2001:3:ffff::1",
            "2001:4:112::1",
            "2001:20::1",
            "2001:2f::1",
            "2001:30::1",
            "2001:3f::1",
            "2620:4f:8000::1",
        ]);
        // Just outside them: back in 2001::/23.
        denied(
            &["2001:4:113::1", "2001:4::1", "2001:40::1"],
            "IETF Protocol Assignments",
        );
    }

    #[test]
    fn embedded_ipv4_addresses_are_judged() {
        // NAT64 (64:ff9b::/96): the last 32 bits.
        denied(&["64:ff9b::a00:1"], "Private-Use");
        denied(&["64:ff9b::7f00:1"], "Loopback");
        denied(&["64:ff9b::a9fe:a9fe"], "Link Local");
        denied(&["64:ff9b::f000:1"], "Reserved");
        public(&["64:ff9b::808:808", "64:ff9b::5db8:d822"]);
        // Just outside 64:ff9b::/96: not NAT64 but reserved space.
        denied(&["64:ff9b:0:0:0:1::"], RESERVED_BY_IETF);
        // 6to4 (2002::/16): bits 16 to 47.
        denied(&["2002:a00:1::", "2002:a00:1:ffff::1"], "Private-Use");
        denied(&["2002:7f00:1::"], "Loopback");
        denied(&["2002:c058:6301::"], "Deprecated (6to4 Relay Anycast)");
        public(&["2002:808:808::", "2002:808:808:1::1"]);
        // IPv4-mapped (::ffff:0:0/96).
        denied(&["::ffff:10.0.0.1", "::ffff:a00:1"], "Private-Use");
        denied(&["::ffff:127.0.0.1"], "Loopback");
        denied(&["::ffff:240.0.0.1"], "Reserved");
        public(&["::ffff:8.8.8.8", "::ffff:192.0.0.9"]);
    }

    #[test]
    fn the_reason_names_the_block_and_the_carried_address() {
        let n = classify(ip("2002:a00:1::")).unwrap();
        assert_eq!(
            n.to_string(),
            "6to4 (2002::/16) embedding 10.0.0.1: Private-Use (10.0.0.0/8)"
        );
        let n = classify(ip("64:ff9b::7f00:1")).unwrap();
        assert_eq!(
            n.to_string(),
            "IPv4-IPv6 Translat. (64:ff9b::/96) embedding 127.0.0.1: Loopback (127.0.0.0/8)"
        );
        assert_eq!(
            classify(ip("240.0.0.1")).unwrap().to_string(),
            "Reserved (240.0.0.0/4)"
        );
        assert_eq!(
            classify(ip("2001:db8::1")).unwrap().to_string(),
            "Documentation (2001:db8::/32)"
        );
    }

    #[test]
    fn every_entry_is_a_well_formed_prefix() {
        for e in IPV4 {
            assert!(e.len <= 32, "{}", e.name);
            let host = u32::MAX.checked_shr(u32::from(e.len)).unwrap_or(0);
            assert_eq!(u32::from(e.net) & host, 0, "{}/{}", e.net, e.len);
        }
        for e in IPV6 {
            assert!(e.len <= 128, "{}", e.name);
            let host = u128::MAX.checked_shr(u32::from(e.len)).unwrap_or(0);
            assert_eq!(u128::from(e.net) & host, 0, "{}/{}", e.net, e.len);
        }
    }
}
