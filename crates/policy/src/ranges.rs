//! The always-denied and private address ranges (BRIEF section 1).
//!
//! Always denied, whatever the mode: loopback, link-local (cloud metadata
//! lives at 169.254.169.254), multicast, broadcast and the rest of the
//! reserved 240.0.0.0/4, 0.0.0.0/8, the IPv6 unspecified address, and the
//! IPv6 ranges that embed an IPv4 address (IPv4-mapped, IPv4-compatible,
//! NAT64), which would otherwise be second spellings of IPv4 destinations.
//! The sandbox subnets ("other sandboxes") and the host's own addresses are
//! added by the configuration, since only it knows them.
//!
//! Private ranges are denied in `open` and `restricted` modes and reachable
//! only through a sandbox's own `networkAllowList` entries inside them.

use ipnet::IpNet;
use serde::Serialize;
use std::net::IpAddr;

/// A named address range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedRange {
    /// The range.
    pub net: IpNet,
    /// What it is, in a few words ("loopback", "link-local (cloud metadata)").
    pub label: String,
}

impl NamedRange {
    /// A range with a label.
    pub fn new(net: IpNet, label: impl Into<String>) -> Self {
        NamedRange {
            net,
            label: label.into(),
        }
    }
}

/// The built-in always-denied ranges.
const ALWAYS_DENIED: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this network"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible IPv6"),
    ("::ffff:0.0.0.0/96", "IPv4-mapped IPv6"),
    ("64:ff9b::/96", "NAT64"),
    ("64:ff9b:1::/48", "NAT64 (local use)"),
    ("2002::/16", "6to4 (embeds IPv4)"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// Built-in ranges to which port 53 is still redirected to sandgate's DNS
/// service: unicast destinations the sandbox can address through its
/// gateway. (Loopback never leaves the sandbox; multicast, broadcast and
/// the rest are not unicast.)
const DNS_REDIRECTED: &[&str] = &["169.254.0.0/16", "fe80::/10"];

/// The private ranges.
const PRIVATE: &[(&str, &str)] = &[
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "shared address space (carrier-grade NAT)"),
    ("fc00::/7", "unique local"),
];

fn table(rows: &[(&str, &str)]) -> Vec<NamedRange> {
    rows.iter()
        .map(|(net, label)| {
            // The tables above are constants checked by the unit tests below.
            let net: IpNet = net.parse().unwrap_or_else(|_| unreachable!("{net}"));
            NamedRange::new(net, *label)
        })
        .collect()
}

/// The ranges no tenant can open, and the private ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ranges {
    /// Denied in every mode: the built-in ranges.
    pub builtin: Vec<NamedRange>,
    /// Denied in every mode: the configuration's ranges (sandbox subnets,
    /// the host's addresses).
    pub configured: Vec<NamedRange>,
    /// Denied unless the sandbox's own `networkAllowList` opens them.
    pub private: Vec<NamedRange>,
}

impl Default for Ranges {
    /// The built-in ranges only.
    fn default() -> Self {
        Ranges {
            builtin: table(ALWAYS_DENIED),
            configured: Vec::new(),
            private: table(PRIVATE),
        }
    }
}

impl Ranges {
    /// The built-in ranges plus `configured` always-denied ranges.
    pub fn with_configured(configured: impl IntoIterator<Item = NamedRange>) -> Self {
        Ranges {
            configured: configured.into_iter().collect(),
            ..Ranges::default()
        }
    }

    fn always_denied_all(&self) -> impl Iterator<Item = &NamedRange> {
        self.builtin.iter().chain(&self.configured)
    }

    /// The most specific always-denied range that contains `addr`, if any.
    pub fn always_denied(&self, addr: IpAddr) -> Option<&NamedRange> {
        most_specific(self.always_denied_all(), |r| r.net.contains(&addr))
    }

    /// The most specific private range that contains `addr`, if any.
    pub fn private(&self, addr: IpAddr) -> Option<&NamedRange> {
        most_specific(self.private.iter(), |r| r.net.contains(&addr))
    }

    /// The always-denied range that contains the whole of `net`, if any: an
    /// allow-list entry inside it could never take effect.
    pub fn always_denied_covering(&self, net: &IpNet) -> Option<&NamedRange> {
        most_specific(self.always_denied_all(), |r| r.net.contains(net))
    }

    /// Whether a packet to `addr` on port 53 is redirected to sandgate's DNS
    /// service: every unicast destination outside the sandbox itself.
    pub fn dns_redirected(&self, addr: IpAddr) -> bool {
        match most_specific(self.builtin.iter(), |r| r.net.contains(&addr)) {
            None => true,
            Some(range) => DNS_REDIRECTED.contains(&range.net.to_string().as_str()),
        }
    }
}

fn most_specific<'a>(
    ranges: impl Iterator<Item = &'a NamedRange>,
    hit: impl Fn(&NamedRange) -> bool,
) -> Option<&'a NamedRange> {
    ranges.filter(|r| hit(r)).max_by_key(|r| r.net.prefix_len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_parse_and_are_canonical() {
        for (net, _) in ALWAYS_DENIED.iter().chain(PRIVATE) {
            let parsed: IpNet = net.parse().expect(net);
            assert_eq!(parsed.trunc(), parsed, "{net} has host bits set");
            assert_eq!(parsed.to_string(), *net);
        }
        for net in DNS_REDIRECTED {
            assert!(ALWAYS_DENIED.iter().any(|(n, _)| n == net), "{net}");
        }
    }

    #[test]
    fn metadata_and_loopback_are_denied_and_private_is_private() {
        let r = Ranges::default();
        let meta: IpAddr = "169.254.169.254".parse().unwrap();
        assert_eq!(
            r.always_denied(meta).unwrap().net.to_string(),
            "169.254.0.0/16"
        );
        assert_eq!(
            r.always_denied("::1".parse().unwrap()).unwrap().label,
            "loopback"
        );
        assert_eq!(
            r.always_denied("::a9fe:a9fe".parse().unwrap())
                .unwrap()
                .label,
            "IPv4-compatible IPv6"
        );
        assert_eq!(
            r.always_denied("64:ff9b::a9fe:a9fe".parse().unwrap())
                .unwrap()
                .label,
            "NAT64"
        );
        assert!(r.always_denied("192.0.2.1".parse().unwrap()).is_none());
        assert_eq!(
            r.private("172.31.255.255".parse().unwrap())
                .unwrap()
                .net
                .to_string(),
            "172.16.0.0/12"
        );
        assert!(r.private("172.32.0.0".parse().unwrap()).is_none());
        // Broadcast is reported as broadcast, not as the wider reserved range.
        assert_eq!(
            r.always_denied("255.255.255.255".parse().unwrap())
                .unwrap()
                .label,
            "broadcast"
        );
    }

    #[test]
    fn port_53_is_redirected_for_unicast_only() {
        let r = Ranges::default();
        for yes in [
            "192.0.2.53",
            "10.0.0.1",
            "169.254.169.254",
            "fe80::1",
            "2001:db8::53",
        ] {
            assert!(r.dns_redirected(yes.parse().unwrap()), "{yes}");
        }
        for no in [
            "127.0.0.53",
            "::1",
            "224.0.0.251",
            "255.255.255.255",
            "0.0.0.0",
            "ff02::fb",
        ] {
            assert!(!r.dns_redirected(no.parse().unwrap()), "{no}");
        }
    }
}
