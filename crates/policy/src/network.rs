//! `networkAllowList` and `networkDenyList`: comma-separated IPv4 and IPv6
//! CIDRs (docs/REQUIREMENTS.md, "networkAllowList" and "Deny lists").
//!
//! The grammar is strict on purpose: an entry is exactly `a.b.c.d/n`,
//! `x::/n` or a bare address, and anything else is refused with a message
//! that names the entry and, where there is one, the fix. Forms that other
//! parsers accept silently and that hide mistakes (host bits set, octets with
//! leading zeros that some tools read as octal, prefixes like `/08`) are
//! refused.

use crate::error::{ErrorCode, PolicyError};
use crate::list::{parse_list, EntryError, ListSpec};
use crate::ranges::Ranges;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The API field name, used in messages.
pub const FIELD: &str = "networkAllowList";
/// The deny list's API field name.
pub const DENY_FIELD: &str = "networkDenyList";

/// A validated list of CIDRs (`networkAllowList` or `networkDenyList`):
/// canonical CIDRs, duplicates merged, in the order first given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct NetworkList(Vec<IpNet>);

/// `networkAllowList`, by its API name.
pub type NetworkAllowList = NetworkList;

/// Which list a network entry is parsed for: the field, its error code, the
/// domain field to point names to, and what an always-denied entry means.
#[derive(Clone, Copy)]
struct Kind {
    field: &'static str,
    code: ErrorCode,
    names: &'static str,
    /// What an entry inside an always-denied range is told; `None`: it is
    /// taken (a stored deny list, which only narrows, whatever the
    /// operator's ranges became since).
    always_denied: Option<&'static str>,
}

const ALLOW: Kind = Kind {
    field: FIELD,
    code: ErrorCode::InvalidNetworkAllowList,
    names: "domainAllowList",
    always_denied: Some("which is always denied; no allow list can open it"),
};

const DENY: Kind = Kind {
    field: DENY_FIELD,
    code: ErrorCode::InvalidNetworkDenyList,
    names: "domainDenyList",
    always_denied: Some("which is always denied already; leave it out"),
};

const DENY_STORED: Kind = Kind {
    always_denied: None,
    ..DENY
};

impl NetworkList {
    /// Parses a `networkAllowList` as the API receives it.
    ///
    /// `max_entries` counts distinct entries after normalization. `ranges`
    /// is used to refuse entries that lie wholly inside an always-denied
    /// range, which no allow list can open.
    pub fn parse(input: &str, max_entries: usize, ranges: &Ranges) -> Result<Self, PolicyError> {
        Self::parse_kind(input, max_entries, ranges, ALLOW)
    }

    /// Parses a `networkDenyList`: the allow list's grammar, its own error
    /// code (`invalid_network_deny_list`); an entry wholly inside an
    /// always-denied range is refused as pointless.
    pub fn parse_deny(
        input: &str,
        max_entries: usize,
        ranges: &Ranges,
    ) -> Result<Self, PolicyError> {
        Self::parse_kind(input, max_entries, ranges, DENY)
    }

    /// Reads back a stored `networkDenyList`: its grammar, but an entry
    /// that the operator's ranges have since made always denied is kept
    /// (a deny list only narrows; it must not stop loading).
    pub fn parse_deny_stored(input: &str, ranges: &Ranges) -> Result<Self, PolicyError> {
        Self::parse_kind(input, usize::MAX, ranges, DENY_STORED)
    }

    fn parse_kind(
        input: &str,
        max_entries: usize,
        ranges: &Ranges,
        kind: Kind,
    ) -> Result<Self, PolicyError> {
        let spec = ListSpec {
            field: kind.field,
            code: kind.code,
            max: max_entries,
            limit_hint: "merge neighbouring ranges into a wider CIDR, or ask the operator to raise the limit",
        };
        parse_list(input, &spec, |entry| parse_entry(entry, ranges, kind)).map(NetworkList)
    }

    /// The canonical CIDRs.
    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }

    /// Whether the list is empty (`""`: no list).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The most specific entry that contains `addr` and satisfies `accept`.
    pub fn entry_containing(&self, addr: IpAddr, accept: impl Fn(&IpNet) -> bool) -> Option<IpNet> {
        self.0
            .iter()
            .filter(|n| n.contains(&addr) && accept(n))
            .max_by_key(|n| n.prefix_len())
            .copied()
    }
}

impl fmt::Display for NetworkList {
    /// The canonical comma-separated form, which parses back to the same list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::list::write_joined(f, &self.0)
    }
}

impl Serialize for NetworkList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|n| n.to_string()))
    }
}

/// Read back from its serialized form (canonical CIDRs), as a runner gets
/// a policy the API resolved: a CIDR that is not canonical is refused; the
/// tier's limits are checked apart ([`crate::PolicyConfig::check_effective`]).
impl<'de> serde::Deserialize<'de> for NetworkList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let nets = Vec::<IpNet>::deserialize(d)?;
        let mut list: Vec<IpNet> = Vec::with_capacity(nets.len());
        for net in nets {
            // Canonical only: host bits set (`192.0.2.5/0`) are refused,
            // never widened to the network they would name.
            if net != net.trunc() {
                return Err(serde::de::Error::custom(format!(
                    "{net} is not canonical (host bits set)"
                )));
            }
            if !list.contains(&net) {
                list.push(net);
            }
        }
        Ok(NetworkList(list))
    }
}

fn parse_entry(entry: &str, ranges: &Ranges, kind: Kind) -> Result<IpNet, EntryError> {
    if entry.chars().any(char::is_whitespace) {
        let joined: String = entry.chars().filter(|c| !c.is_whitespace()).collect();
        return Err(EntryError::with_fix("contains white space", joined));
    }
    let mut parts = entry.split('/');
    let addr_part = parts.next().unwrap_or_default();
    let prefix_part = parts.next();
    if parts.next().is_some() {
        return Err(EntryError::new(
            "has more than one '/'; write an address, or an address, '/' and a prefix length",
        ));
    }
    if addr_part.is_empty() {
        return Err(EntryError::new("has no address before the '/'"));
    }
    let addr = parse_address(entry, addr_part, kind)?;
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let prefix = match prefix_part {
        None => max,
        Some(p) => parse_prefix(addr_part, p, max)?,
    };
    let net = match addr {
        IpAddr::V4(a) => Ipv4Net::new(a, prefix).map(IpNet::V4),
        IpAddr::V6(a) => Ipv6Net::new(a, prefix).map(IpNet::V6),
    }
    .map_err(|_| EntryError::new("has an out-of-range prefix"))?;
    let network = net.trunc();
    if network != net {
        return Err(EntryError::with_fix(
            "has host bits set",
            network.to_string(),
        ));
    }
    if let (Some(why), Some(range)) = (kind.always_denied, ranges.always_denied_covering(&net)) {
        return Err(EntryError::new(format!(
            "lies inside {} ({}), {why}",
            range.net, range.label
        )));
    }
    Ok(net)
}

fn parse_address(entry: &str, text: &str, kind: Kind) -> Result<IpAddr, EntryError> {
    if text.contains(':') {
        if text.starts_with('[') || text.ends_with(']') {
            let bare = text.trim_start_matches('[').trim_end_matches(']');
            return Err(EntryError::with_fix(
                "has brackets; write the IPv6 address without them",
                entry.replacen(text, bare, 1),
            ));
        }
        if text.contains('%') {
            return Err(EntryError::new(
                "has a zone index ('%'); zone indexes are not allowed",
            ));
        }
        if let Some((host, port)) = text.split_once(':') {
            if host.parse::<Ipv4Addr>().is_ok() && !port.contains(':') {
                return Err(EntryError::with_fix(
                    format!("has a port; {} names addresses, not ports", kind.field),
                    host,
                ));
            }
        }
        return text
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| EntryError::new("is not a valid IPv6 address"));
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_ipv4(entry, text).map(IpAddr::V4);
    }
    let numeric = |part: &str| {
        let hex = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X"));
        match hex {
            Some(h) => !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()),
            None => !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()),
        }
    };
    if text.contains('.') && text.split('.').all(numeric) {
        return Err(EntryError::new(
            "is not a dotted-decimal IPv4 address (hexadecimal octets are not accepted)",
        ));
    }
    if text.bytes().any(|b| b.is_ascii_alphabetic()) && text.contains('.') {
        return Err(EntryError::new(format!(
            "looks like a domain name; {} takes IP addresses and CIDRs, put names in {}",
            kind.field, kind.names
        )));
    }
    Err(EntryError::new("is not an IPv4 or IPv6 address or CIDR"))
}

/// Strict dotted-quad: four plain decimal octets, no leading zeros.
fn parse_ipv4(entry: &str, text: &str) -> Result<Ipv4Addr, EntryError> {
    let octets: Vec<&str> = text.split('.').collect();
    if octets.len() != 4 {
        return Err(EntryError::new(format!(
            "has {} dot-separated parts; an IPv4 address has exactly four",
            octets.len()
        )));
    }
    let mut out = [0u8; 4];
    for (i, octet) in octets.iter().enumerate() {
        if octet.is_empty() {
            return Err(EntryError::new("has an empty octet"));
        }
        if octet.len() > 1 && octet.starts_with('0') {
            let fixed: Vec<&str> = octets
                .iter()
                .map(|o| match o.trim_start_matches('0') {
                    "" => "0",
                    t => t,
                })
                .collect();
            return Err(EntryError::with_fix(
                format!("has an octet with a leading zero (\"{octet}\"), which some tools read as octal"),
                entry.replacen(text, &fixed.join("."), 1),
            ));
        }
        out[i] = octet
            .parse::<u8>()
            .map_err(|_| EntryError::new(format!("has octet {octet}, greater than 255")))?;
    }
    Ok(Ipv4Addr::from(out))
}

fn parse_prefix(addr_part: &str, text: &str, max: u8) -> Result<u8, EntryError> {
    let family = if max == 32 { "IPv4" } else { "IPv6" };
    if text.is_empty() {
        return Err(EntryError::with_fix(
            "has an empty prefix length after the '/'",
            format!("{addr_part}/{max}"),
        ));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EntryError::new(format!(
            "has prefix length \"{text}\", which is not a plain decimal number (0-{max} for {family})"
        )));
    }
    let value: u32 = text.parse().unwrap_or(u32::MAX);
    if value > u32::from(max) {
        return Err(EntryError::new(format!(
            "has prefix length /{text}, out of range for {family} (0-{max})"
        )));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(EntryError::with_fix(
            "has a prefix length with a leading zero",
            format!("{addr_part}/{value}"),
        ));
    }
    u8::try_from(value).map_err(|_| EntryError::new("has an out-of-range prefix"))
}
