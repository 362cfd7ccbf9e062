//! `networkAllowList`: comma-separated IPv4 and IPv6 CIDRs (BRIEF section 1).
//!
//! The grammar is strict on purpose: an entry is exactly `a.b.c.d/n`,
//! `x::/n` or a bare address, and anything else is refused with a message
//! that names the entry and, where there is one, the fix. Forms that other
//! parsers accept silently and that hide mistakes (host bits set, octets with
//! leading zeros that some tools read as octal, prefixes like `/08`) are
//! refused.

use crate::error::{ErrorCode, PolicyError, Problem};
use crate::ranges::Ranges;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The API field name, used in messages.
pub const FIELD: &str = "networkAllowList";

/// A validated `networkAllowList`: canonical CIDRs, duplicates merged, in the
/// order first given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct NetworkAllowList(Vec<IpNet>);

impl NetworkAllowList {
    /// Parses a list as the API receives it.
    ///
    /// `max_entries` counts distinct entries after normalization. `ranges`
    /// is used to refuse entries that lie wholly inside an always-denied
    /// range, which no allow list can open.
    pub fn parse(input: &str, max_entries: usize, ranges: &Ranges) -> Result<Self, PolicyError> {
        let mut nets: Vec<IpNet> = Vec::new();
        let mut problems = Vec::new();
        for (position, entry) in crate::split_list(input) {
            if entry.is_empty() {
                problems.push(crate::empty_entry(FIELD, position));
                continue;
            }
            match parse_entry(entry, ranges) {
                Ok(net) => {
                    if !nets.contains(&net) {
                        nets.push(net);
                    }
                }
                Err((message, suggestion)) => problems.push(Problem {
                    entry: entry.to_string(),
                    position,
                    message,
                    suggestion,
                }),
            }
        }
        if problems.is_empty() && nets.len() > max_entries {
            problems.push(Problem {
                entry: input.trim().to_string(),
                position: 0,
                message: format!(
                    "{FIELD} has {} entries; at most {max_entries} are allowed \
                     (merge neighbouring ranges into a wider CIDR, or ask the operator to raise the limit)",
                    nets.len()
                ),
                suggestion: None,
            });
        }
        if problems.is_empty() {
            Ok(NetworkAllowList(nets))
        } else {
            Err(PolicyError::from_problems(
                ErrorCode::InvalidNetworkAllowList,
                FIELD,
                problems,
            ))
        }
    }

    /// The canonical CIDRs.
    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }

    /// Whether the list is empty (`""`: no list).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The most specific entry that contains `addr`.
    pub fn entry_containing(&self, addr: IpAddr) -> Option<IpNet> {
        self.0
            .iter()
            .filter(|n| n.contains(&addr))
            .max_by_key(|n| n.prefix_len())
            .copied()
    }
}

impl fmt::Display for NetworkAllowList {
    /// The canonical comma-separated form, which parses back to the same list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

impl Serialize for NetworkAllowList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|n| n.to_string()))
    }
}

type EntryError = (String, Option<String>);

fn parse_entry(entry: &str, ranges: &Ranges) -> Result<IpNet, EntryError> {
    if entry.chars().any(char::is_whitespace) {
        let joined: String = entry.chars().filter(|c| !c.is_whitespace()).collect();
        return Err((
            format!("{FIELD} entry \"{entry}\" contains white space; write it without spaces, as \"{joined}\""),
            Some(joined),
        ));
    }
    let mut parts = entry.split('/');
    let addr_part = parts.next().unwrap_or_default();
    let prefix_part = parts.next();
    if parts.next().is_some() {
        return Err((
            format!("{FIELD} entry \"{entry}\" has more than one '/'; write an address, or an address, '/' and a prefix length"),
            None,
        ));
    }
    if addr_part.is_empty() {
        return Err((
            format!("{FIELD} entry \"{entry}\" has no address before the '/'"),
            None,
        ));
    }
    let addr = parse_address(entry, addr_part)?;
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let prefix = match prefix_part {
        None => max,
        Some(p) => parse_prefix(entry, addr_part, p, max)?,
    };
    let net = match addr {
        IpAddr::V4(a) => Ipv4Net::new(a, prefix).map(IpNet::V4),
        IpAddr::V6(a) => Ipv6Net::new(a, prefix).map(IpNet::V6),
    }
    .map_err(|_| {
        (
            format!("{FIELD} entry \"{entry}\" has an out-of-range prefix"),
            None,
        )
    })?;
    let network = net.trunc();
    if network != net {
        return Err((
            format!("{FIELD} entry \"{entry}\" has host bits set: did you mean {network}?"),
            Some(network.to_string()),
        ));
    }
    if let Some(range) = ranges.always_denied_covering(&net) {
        return Err((
            format!(
                "{FIELD} entry \"{entry}\" lies inside {} ({}), which is always denied; no allow list can open it",
                range.net, range.label
            ),
            None,
        ));
    }
    Ok(net)
}

fn parse_address(entry: &str, text: &str) -> Result<IpAddr, EntryError> {
    if text.contains(':') {
        if text.starts_with('[') || text.ends_with(']') {
            let bare = text.trim_start_matches('[').trim_end_matches(']');
            return Err((
                format!(
                    "{FIELD} entry \"{entry}\" has brackets; write the IPv6 address without them"
                ),
                Some(entry.replacen(text, bare, 1)),
            ));
        }
        if text.contains('%') {
            return Err((
                format!("{FIELD} entry \"{entry}\" has a zone index ('%'); zone indexes are not allowed"),
                None,
            ));
        }
        return text.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| {
            let hint = if text.bytes().filter(|&b| b == b':').count() == 1 && text.contains('.') {
                "; ports are not part of an allow list"
            } else {
                ""
            };
            (
                format!("{FIELD} entry \"{entry}\" is not a valid IPv6 address{hint}"),
                None,
            )
        });
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_ipv4(entry, text).map(IpAddr::V4);
    }
    if text.bytes().any(|b| b.is_ascii_alphabetic()) && text.contains('.') {
        return Err((
            format!("{FIELD} entry \"{entry}\" looks like a domain name; {FIELD} takes IP addresses and CIDRs, put names in domainAllowList"),
            None,
        ));
    }
    Err((
        format!("{FIELD} entry \"{entry}\" is not an IPv4 or IPv6 address or CIDR"),
        None,
    ))
}

/// Strict dotted-quad: four plain decimal octets, no leading zeros.
fn parse_ipv4(entry: &str, text: &str) -> Result<Ipv4Addr, EntryError> {
    let octets: Vec<&str> = text.split('.').collect();
    if octets.len() != 4 {
        return Err((
            format!(
                "{FIELD} entry \"{entry}\" has {} dot-separated parts; an IPv4 address has exactly four",
                octets.len()
            ),
            None,
        ));
    }
    let mut out = [0u8; 4];
    for (i, octet) in octets.iter().enumerate() {
        if octet.is_empty() {
            return Err((
                format!("{FIELD} entry \"{entry}\" has an empty octet"),
                None,
            ));
        }
        if octet.len() > 1 && octet.starts_with('0') {
            let fixed: Vec<String> = octets
                .iter()
                .map(|o| {
                    let t = o.trim_start_matches('0');
                    if t.is_empty() { "0" } else { t }.to_string()
                })
                .collect();
            let fixed_addr = fixed.join(".");
            let suggestion = entry.replacen(text, &fixed_addr, 1);
            return Err((
                format!(
                    "{FIELD} entry \"{entry}\" has an octet with a leading zero (\"{octet}\"), which some tools read as octal; did you mean {suggestion}?"
                ),
                Some(suggestion),
            ));
        }
        out[i] = octet.parse::<u8>().map_err(|_| {
            (
                format!("{FIELD} entry \"{entry}\" has octet {octet}, greater than 255"),
                None,
            )
        })?;
    }
    Ok(Ipv4Addr::from(out))
}

fn parse_prefix(entry: &str, addr_part: &str, text: &str, max: u8) -> Result<u8, EntryError> {
    let family = if max == 32 { "IPv4" } else { "IPv6" };
    if text.is_empty() {
        return Err((
            format!("{FIELD} entry \"{entry}\" has an empty prefix length after the '/'; write e.g. {addr_part}/{max}"),
            Some(format!("{addr_part}/{max}")),
        ));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err((
            format!("{FIELD} entry \"{entry}\" has prefix length \"{text}\", which is not a plain decimal number (0-{max} for {family})"),
            None,
        ));
    }
    let value: u32 = text.parse().unwrap_or(u32::MAX);
    if value > u32::from(max) {
        return Err((
            format!("{FIELD} entry \"{entry}\" has prefix length /{text}, out of range for {family} (0-{max})"),
            None,
        ));
    }
    if text.len() > 1 && text.starts_with('0') {
        let fixed = format!("{addr_part}/{value}");
        return Err((
            format!("{FIELD} entry \"{entry}\" has a prefix length with a leading zero; did you mean {fixed}?"),
            Some(fixed),
        ));
    }
    u8::try_from(value).map_err(|_| {
        (
            format!("{FIELD} entry \"{entry}\" has an out-of-range prefix"),
            None,
        )
    })
}
