//! The lab's addresses: TEST-NET-1/2/3 and 2001:db8::/32 only.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const fn v6(a: u16, b: u16, c: u16, h: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(a, b, c, 0, 0, 0, 0, h))
}

/// The host end of the uplink.
pub const HOST_LINK4: IpNet = IpNet::new_assert(v4(203, 0, 113, 1), 30);
/// The world end of the uplink: the host's default gateway.
pub const WORLD_LINK4: IpNet = IpNet::new_assert(v4(203, 0, 113, 2), 30);
/// The host end of the uplink, IPv6.
pub const HOST_LINK6: IpNet = IpNet::new_assert(v6(0x2001, 0xdb8, 0xffff, 1), 64);
/// The world end of the uplink, IPv6.
pub const WORLD_LINK6: IpNet = IpNet::new_assert(v6(0x2001, 0xdb8, 0xffff, 2), 64);

/// A known egress address the host holds (on its uplink) and the world
/// routes back to it: an organization given it by the operator has its
/// sandboxes' connections arrive from here.
pub const EGRESS4: IpAddr = v4(203, 0, 113, 65);
/// The known egress address, IPv6.
pub const EGRESS6: IpAddr = v6(0x2001, 0xdb8, 0xeeee, 0x65);
/// The range the world routes to the host for known egress addresses.
pub const LAB_EGRESS4: IpNet = IpNet::new_assert(v4(203, 0, 113, 64), 27);
/// The IPv6 range the world routes to the host for known egress addresses.
pub const LAB_EGRESS6: IpNet = IpNet::new_assert(v6(0x2001, 0xdb8, 0xeeee, 0), 48);

/// A public server (every world service listens on every world address).
pub const SERVER4: IpAddr = v4(192, 0, 2, 10);
/// A second public server, in another TEST-NET.
pub const SERVER4_B: IpAddr = v4(198, 51, 100, 10);
/// A public server, IPv6.
pub const SERVER6: IpAddr = v6(0x2001, 0xdb8, 1, 0x10);
/// A second public server, IPv6.
pub const SERVER6_B: IpAddr = v6(0x2001, 0xdb8, 2, 0x10);
/// The world's DNS server.
pub const DNS4: IpAddr = v4(198, 51, 100, 53);
/// The world's DNS server, IPv6.
pub const DNS6: IpAddr = v6(0x2001, 0xdb8, 1, 0x53);

/// A range the lab's configuration declares private (the built-in private
/// ranges are never sent to: the lab rule allows TEST-NET targets only).
pub const LAB_PRIVATE4: IpNet = IpNet::new_assert(v4(203, 0, 113, 128), 26);
/// A server inside [`LAB_PRIVATE4`].
pub const PRIVATE_SERVER4: IpAddr = v4(203, 0, 113, 130);
/// The IPv6 range the lab declares private.
pub const LAB_PRIVATE6: IpNet = IpNet::new_assert(v6(0x2001, 0xdb8, 0xcafe, 0), 48);
/// A server inside [`LAB_PRIVATE6`].
pub const PRIVATE_SERVER6: IpAddr = v6(0x2001, 0xdb8, 0xcafe, 0x10);

/// A range the lab's configuration declares always denied, standing in for
/// the metadata service and the host's other networks.
pub const LAB_DENIED4: IpNet = IpNet::new_assert(v4(203, 0, 113, 192), 26);
/// A server inside [`LAB_DENIED4`].
pub const DENIED_SERVER4: IpAddr = v4(203, 0, 113, 200);
/// A lab address the lab's configuration declares a cloud metadata
/// service (inside [`LAB_DENIED4`]; the lab never sends to
/// 169.254.169.254).
pub const METADATA_SERVER4: IpAddr = v4(203, 0, 113, 254);
/// The IPv6 metadata stand-in (inside [`LAB_DENIED6`]).
pub const METADATA_SERVER6: IpAddr = v6(0x2001, 0xdb8, 0xdead, 0x254);
/// The IPv6 range the lab declares always denied.
pub const LAB_DENIED6: IpNet = IpNet::new_assert(v6(0x2001, 0xdb8, 0xdead, 0), 48);
/// A server inside [`LAB_DENIED6`].
pub const DENIED_SERVER6: IpAddr = v6(0x2001, 0xdb8, 0xdead, 0x10);

/// Every address the world answers on (on its loopback).
pub const WORLD_ADDRESSES: &[&str] = &[
    "192.0.2.10/32",
    "198.51.100.10/32",
    "198.51.100.53/32",
    "203.0.113.130/32",
    "203.0.113.200/32",
    "203.0.113.254/32",
    "2001:db8:1::10/128",
    "2001:db8:2::10/128",
    "2001:db8:1::53/128",
    "2001:db8:cafe::10/128",
    "2001:db8:dead::10/128",
    "2001:db8:dead::254/128",
];

/// TCP: echoes what it receives.
pub const TCP_ECHO: u16 = 7;
/// UDP: echoes each datagram.
pub const UDP_ECHO: u16 = 7;
/// TCP: sends a stream of bytes until the peer closes.
pub const TCP_STREAM: u16 = 19;
/// TCP: reads until the peer shuts its side down, then writes the number
/// of bytes it read and a newline (what a sender's bandwidth is measured
/// with: the count arrives once every byte did).
pub const SINK: u16 = 9;
/// TCP: writes the address the connection came from (as the world sees
/// it, after the host's address translation) and a newline, then closes.
pub const WHOAMI: u16 = 113;
/// HTTP.
pub const HTTP: u16 = 80;
/// HTTPS, with a certificate of the lab's CA.
pub const HTTPS: u16 = 443;
/// UDP: QUIC's port; echoes each datagram, as [`UDP_ECHO`] does.
pub const QUIC: u16 = 443;
/// HTTPS: an OCI distribution registry (Debian's `docker-registry`), on
/// [`SERVER4`] only, while a test runs one ([`crate::registry::LabRegistry`]).
pub const REGISTRY: u16 = 5000;

/// Whether `addr` is one the lab may send to: TEST-NET-1/2/3, the
/// benchmarking range of the sandbox subnets, 2001:db8::/32, or loopback
/// (the unspecified address, which a connection takes for its own host,
/// included). An IPv4-mapped address is the IPv4 address it spells (a
/// socket connects to it over IPv4).
pub fn is_lab_address(addr: IpAddr) -> bool {
    let addr = addr.to_canonical();
    let ranges: [IpNet; 6] = [
        IpNet::new_assert(v4(192, 0, 2, 0), 24),
        IpNet::new_assert(v4(198, 51, 100, 0), 24),
        IpNet::new_assert(v4(203, 0, 113, 0), 24),
        IpNet::new_assert(v4(198, 18, 0, 0), 15),
        IpNet::new_assert(v6(0x2001, 0xdb8, 0, 0), 32),
        IpNet::new_assert(v4(127, 0, 0, 0), 8),
    ];
    addr.is_loopback() || addr.is_unspecified() || ranges.iter().any(|r| r.contains(&addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lab_address_is_in_the_lab_ranges() {
        for a in WORLD_ADDRESSES {
            let net: IpNet = a.parse().unwrap_or_else(|_| panic!("{a}"));
            assert!(is_lab_address(net.addr()), "{a}");
        }
        for a in [
            SERVER4,
            SERVER4_B,
            SERVER6,
            SERVER6_B,
            DNS4,
            DNS6,
            PRIVATE_SERVER4,
            PRIVATE_SERVER6,
            DENIED_SERVER4,
            DENIED_SERVER6,
            METADATA_SERVER4,
            METADATA_SERVER6,
        ] {
            assert!(is_lab_address(a), "{a}");
            assert!(
                WORLD_ADDRESSES
                    .iter()
                    .any(|w| w.starts_with(&a.to_string())),
                "{a}"
            );
        }
        for n in [
            HOST_LINK4,
            WORLD_LINK4,
            HOST_LINK6,
            WORLD_LINK6,
            LAB_PRIVATE4,
            LAB_PRIVATE6,
            LAB_DENIED4,
            LAB_DENIED6,
        ] {
            assert!(is_lab_address(n.addr()), "{n}");
        }
        assert!(!is_lab_address("10.0.0.1".parse().unwrap()));
        assert!(!is_lab_address("169.254.169.254".parse().unwrap()));
    }
}
