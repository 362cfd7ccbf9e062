//! The always-denied and private address ranges (BRIEF section 1).
//!
//! Always denied, whatever the mode: loopback, link-local (cloud metadata
//! lives at 169.254.169.254), multicast, broadcast and the rest of the
//! reserved 240.0.0.0/4, 0.0.0.0/8, the IPv6 unspecified address and
//! IPv4-mapped IPv6 (which would otherwise be a second spelling of every IPv4
//! rule). The host's own addresses and the sandbox subnets ("other
//! sandboxes") are added by the operator configuration, since only it knows
//! them.
//!
//! Private ranges are denied in `open` and `restricted` modes and reachable
//! only when a sandbox's own `networkAllowList` names them.

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

/// The built-in always-denied ranges, most specific first.
const ALWAYS_DENIED: &[(&str, &str)] = &[
    ("255.255.255.255/32", "broadcast"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("127.0.0.0/8", "loopback"),
    ("0.0.0.0/8", "this network"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0.0.0.0/96", "IPv4-mapped IPv6"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

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

/// The sets of ranges that no tenant can open, and the private ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ranges {
    /// Denied in every mode: the built-in ranges plus the operator's extras.
    pub always_denied: Vec<NamedRange>,
    /// Denied unless the sandbox's own `networkAllowList` names them.
    pub private: Vec<NamedRange>,
}

impl Default for Ranges {
    fn default() -> Self {
        Ranges {
            always_denied: table(ALWAYS_DENIED),
            private: table(PRIVATE),
        }
    }
}

impl Ranges {
    /// The built-in ranges plus `extra` always-denied ranges (the host's
    /// addresses, the sandbox subnets).
    pub fn with_extra_denied(extra: impl IntoIterator<Item = NamedRange>) -> Self {
        let mut ranges = Ranges::default();
        // Operator extras go first: they are usually the most specific.
        let mut all: Vec<NamedRange> = extra.into_iter().collect();
        all.append(&mut ranges.always_denied);
        ranges.always_denied = all;
        ranges
    }

    /// The always-denied range that contains `addr`, if any.
    pub fn always_denied(&self, addr: IpAddr) -> Option<&NamedRange> {
        most_specific(&self.always_denied, |r| r.net.contains(&addr))
    }

    /// The private range that contains `addr`, if any.
    pub fn private(&self, addr: IpAddr) -> Option<&NamedRange> {
        most_specific(&self.private, |r| r.net.contains(&addr))
    }

    /// The always-denied range that contains the whole of `net`, if any: an
    /// allow-list entry inside it could never take effect.
    pub fn always_denied_covering(&self, net: &IpNet) -> Option<&NamedRange> {
        most_specific(&self.always_denied, |r| r.net.contains(net))
    }
}

fn most_specific(ranges: &[NamedRange], hit: impl Fn(&NamedRange) -> bool) -> Option<&NamedRange> {
    ranges
        .iter()
        .filter(|r| hit(r))
        .max_by_key(|r| r.net.prefix_len())
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
}
