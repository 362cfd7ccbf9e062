//! The always-denied and private address ranges (REQUIREMENTS.md section 1).
//!
//! Always denied, whatever the mode: loopback, link-local, multicast,
//! broadcast and the rest of the reserved 240.0.0.0/4, 0.0.0.0/8, the IPv6
//! unspecified address, the IPv6 ranges that embed an IPv4 address
//! (IPv4-mapped, IPv4-compatible, NAT64), which would otherwise be second
//! spellings of IPv4 destinations, and the cloud metadata services
//! wherever they live (169.254.169.254, fd00:ec2::254, 168.63.129.16,
//! 100.100.100.200; the operator adds more). The sandbox subnets ("other
//! sandboxes"), the operator's internal networks and the host's own
//! addresses are added by the configuration and the running host, since
//! only they know them.
//!
//! Each range has a [`RangeKind`]; the reason code of a denial names the
//! kind where the kind says more than the range (`always_denied:host`,
//! `always_denied:metadata`), and the range otherwise
//! (`always_denied:169.254.0.0/16`).
//!
//! Private ranges are denied in `open` and `restricted` modes and reachable
//! only through a sandbox's own `networkAllowList` entries inside them.

use ipnet::IpNet;
use serde::Serialize;
use std::net::IpAddr;

/// What a range is, for the reason codes of denials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RangeKind {
    /// A built-in range (loopback, link-local, multicast, ...).
    Builtin,
    /// A cloud metadata service (built in, or named by the operator).
    Metadata,
    /// The sandbox subnets: other sandboxes.
    SandboxSubnet,
    /// An address of the host itself, read from the running host.
    Host,
    /// A range the operator declared (internal networks, management).
    Operator,
    /// A private range (denied unless a sandbox's own list opens it).
    Private,
}

/// A named address range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedRange {
    /// The range.
    pub net: IpNet,
    /// What it is, in a few words ("loopback", "cloud metadata service").
    pub label: String,
    /// What kind of range it is.
    pub kind: RangeKind,
}

impl NamedRange {
    /// A range of `kind` with a label.
    pub fn new(net: IpNet, label: impl Into<String>, kind: RangeKind) -> Self {
        NamedRange {
            net,
            label: label.into(),
            kind,
        }
    }

    /// The reason code of a destination denied because it is in this
    /// always-denied range: `always_denied:host`, `always_denied:metadata`,
    /// or `always_denied:<range>`.
    pub fn denied_code(&self) -> String {
        match self.kind {
            RangeKind::Host => "always_denied:host".into(),
            RangeKind::Metadata => "always_denied:metadata".into(),
            _ => format!("always_denied:{}", self.net),
        }
    }
}

/// The built-in always-denied ranges.
const ALWAYS_DENIED: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this network"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
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

/// The cloud metadata services built in: AWS, GCP, Azure, Oracle and
/// OpenStack at 169.254.169.254; AWS over IPv6; Azure's wire server;
/// Alibaba Cloud. The operator adds more (`metadata_services`).
pub const METADATA_SERVICES: &[&str] = &[
    "169.254.169.254/32",
    "fd00:ec2::254/128",
    "168.63.129.16/32",
    "100.100.100.200/32",
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

fn table(rows: &[(&str, &str)], kind: RangeKind) -> Vec<NamedRange> {
    rows.iter()
        .map(|(net, label)| {
            // The tables above are constants checked by the unit tests below.
            let net: IpNet = net.parse().unwrap_or_else(|_| unreachable!("{net}"));
            NamedRange::new(net, *label, kind)
        })
        .collect()
}

/// The built-in metadata services as ranges.
fn metadata() -> Vec<NamedRange> {
    let rows: Vec<(&str, &str)> = METADATA_SERVICES
        .iter()
        .map(|n| (*n, "cloud metadata service"))
        .collect();
    table(&rows, RangeKind::Metadata)
}

/// The ranges no tenant can open, and the private ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ranges {
    /// Denied in every mode: the built-in ranges.
    pub builtin: Vec<NamedRange>,
    /// Denied in every mode: the configuration's ranges (sandbox subnets,
    /// the operator's internal networks and metadata services, the host's
    /// addresses).
    pub configured: Vec<NamedRange>,
    /// Denied unless the sandbox's own `networkAllowList` opens them.
    pub private: Vec<NamedRange>,
}

impl Default for Ranges {
    /// The built-in ranges only.
    fn default() -> Self {
        let mut builtin = table(ALWAYS_DENIED, RangeKind::Builtin);
        builtin.extend(metadata());
        Ranges {
            builtin,
            configured: Vec::new(),
            private: table(PRIVATE, RangeKind::Private),
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
    /// service: every unicast destination outside the sandbox itself (the
    /// metadata services included).
    pub fn dns_redirected(&self, addr: IpAddr) -> bool {
        let builtin = self.builtin.iter().filter(|r| r.kind == RangeKind::Builtin);
        match most_specific(builtin, |r| r.net.contains(&addr)) {
            None => true,
            Some(range) => DNS_REDIRECTED.contains(&range.net.to_string().as_str()),
        }
    }

    /// These ranges with the host's own addresses as they are now, in place
    /// of those given before: every address of the host is always denied
    /// (`always_denied:host`). Addresses inside the sandbox subnets (the
    /// gateways) are left to the subnets' own range.
    pub fn with_host_addresses(&self, addrs: impl IntoIterator<Item = IpAddr>) -> Ranges {
        let mut ranges = self.clone();
        ranges.configured.retain(|r| r.kind != RangeKind::Host);
        let mut seen = std::collections::BTreeSet::new();
        for addr in addrs {
            let addr = addr.to_canonical();
            // Loopback and link-local addresses are denied by their
            // built-in ranges already; the slots' gateways by the subnets.
            if !self.host_relevant(addr) || !seen.insert(addr) {
                continue;
            }
            ranges.configured.push(NamedRange::new(
                IpNet::from(addr),
                "an address of this host",
                RangeKind::Host,
            ));
        }
        ranges
    }

    /// Whether `addr`, an address of the host, needs a range of its own:
    /// not when a built-in range (loopback, link-local) or the sandbox
    /// subnets (the slots' gateways) cover it already.
    pub fn host_relevant(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        let builtin = self
            .builtin
            .iter()
            .any(|r| r.kind == RangeKind::Builtin && r.net.contains(&addr));
        let subnet = self
            .configured
            .iter()
            .any(|r| r.kind == RangeKind::SandboxSubnet && r.net.contains(&addr));
        !builtin && !subnet
    }

    /// The host's own addresses these ranges hold.
    pub fn host_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.configured
            .iter()
            .filter(|r| r.kind == RangeKind::Host)
            .map(|r| r.net.addr())
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
        let metadata: Vec<(&str, &str)> = METADATA_SERVICES.iter().map(|n| (*n, "")).collect();
        for (net, _) in ALWAYS_DENIED.iter().chain(PRIVATE).chain(&metadata) {
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
        for meta in [
            "169.254.169.254",
            "fd00:ec2::254",
            "168.63.129.16",
            "100.100.100.200",
        ] {
            let range = r.always_denied(meta.parse().unwrap()).unwrap();
            assert_eq!(range.kind, RangeKind::Metadata, "{meta}");
            assert_eq!(range.denied_code(), "always_denied:metadata");
        }
        let link_local = r.always_denied("169.254.1.1".parse().unwrap()).unwrap();
        assert_eq!(link_local.denied_code(), "always_denied:169.254.0.0/16");
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
    fn host_addresses_are_replaced_whole_and_gateways_left_to_their_subnet() {
        let base = Ranges::with_configured([NamedRange::new(
            "198.18.0.0/15".parse().unwrap(),
            "sandbox subnet",
            RangeKind::SandboxSubnet,
        )]);
        let addr = |s: &str| -> IpAddr { s.parse().unwrap() };
        let first = base.with_host_addresses([addr("203.0.113.1"), addr("198.18.0.2")]);
        assert_eq!(
            first
                .always_denied(addr("203.0.113.1"))
                .unwrap()
                .denied_code(),
            "always_denied:host"
        );
        assert_eq!(
            first.always_denied(addr("198.18.0.2")).unwrap().kind,
            RangeKind::SandboxSubnet
        );
        // The host's address changed: the old one is no longer the host's.
        let second = first.with_host_addresses([addr("::ffff:203.0.113.5")]);
        assert!(second.always_denied(addr("203.0.113.1")).is_none());
        assert_eq!(
            second.host_addresses().collect::<Vec<_>>(),
            vec![addr("203.0.113.5")]
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
