//! Grants: time-bounded access (docs/REQUIREMENTS.md, "Grants").
//!
//! A grant is a temporary entry of a sandbox's allow lists: a CIDR or an
//! address (as `networkAllowList` takes it) or a name or `*.` wildcard (as
//! `domainAllowList` takes it), with the moment it ends. It takes effect
//! in `allowlist` mode only (a restricted tier may not have one; open mode
//! reaches every public destination already; blocked reaches nothing), and
//! a deny list wins over it. The crate has no clock: the caller passes
//! "now" where expiry matters.

use crate::domain::DomainPattern;
use crate::error::{ErrorCode, PolicyError};
use crate::network::NetworkList;
use crate::ranges::Ranges;
use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

/// The shortest grant, seconds.
pub const GRANT_TTL_MIN: u64 = 1;
/// The longest grant, seconds (seven days).
pub const GRANT_TTL_MAX: u64 = 7 * 24 * 3600;

/// What a grant opens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GrantTarget {
    /// A CIDR (a bare address is its /32 or /128).
    Network(IpNet),
    /// A name or a `*.` wildcard.
    Name(DomainPattern),
}

impl GrantTarget {
    /// Parses a target as the API receives it: one entry of
    /// `networkAllowList` or of `domainAllowList` (whichever it looks
    /// like), with their rules; 400 `invalid_grant_target` otherwise.
    pub fn parse(text: &str, ranges: &Ranges) -> Result<Self, PolicyError> {
        let text = text.trim();
        let bad = |why: String| {
            PolicyError {
                field: Some("target"),
                ..PolicyError::new(
                    ErrorCode::InvalidGrantTarget,
                    format!("grant target \"{text}\" {why}; write a CIDR, an address, a name or a *. wildcard"),
                )
            }
        };
        if text.is_empty() || text.contains(',') {
            return Err(bad("is not one entry".into()));
        }
        let numeric = text.contains(':')
            || text
                .split('/')
                .next()
                .is_some_and(|a| a.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
        if numeric {
            let list = NetworkList::parse(text, 1, ranges).map_err(|e| bad(e.message))?;
            let net = list
                .nets()
                .first()
                .copied()
                .ok_or_else(|| bad("is empty".into()))?;
            return Ok(GrantTarget::Network(net));
        }
        DomainPattern::parse(text)
            .map(GrantTarget::Name)
            .map_err(|why| bad(format!("is not a valid name: {why}")))
    }
}

impl fmt::Display for GrantTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantTarget::Network(n) => write!(f, "{n}"),
            GrantTarget::Name(p) => write!(f, "{p}"),
        }
    }
}

impl Serialize for GrantTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Read back as a runner gets it: a canonical CIDR, or a pattern.
impl<'de> Deserialize<'de> for GrantTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if let Ok(net) = text.parse::<IpNet>() {
            if net != net.trunc() {
                return Err(serde::de::Error::custom(format!(
                    "{net} is not canonical (host bits set)"
                )));
            }
            return Ok(GrantTarget::Network(net));
        }
        DomainPattern::parse(&text)
            .map(GrantTarget::Name)
            .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }
}

/// A grant in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grant {
    /// Its id (`gr-...`).
    pub id: String,
    /// What it opens.
    pub target: GrantTarget,
    /// When it ends, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

impl Grant {
    /// Whether it is still in force at `now_ms`.
    pub fn active(&self, now_ms: u64) -> bool {
        self.expires_at_ms > now_ms
    }
}

/// Checks a grant's lifetime: 1 s to 7 days, 400 `invalid_grant_ttl`.
pub fn check_ttl(ttl_seconds: u64) -> Result<(), PolicyError> {
    if (GRANT_TTL_MIN..=GRANT_TTL_MAX).contains(&ttl_seconds) {
        return Ok(());
    }
    Err(PolicyError {
        field: Some("ttlSeconds"),
        ..PolicyError::new(
            ErrorCode::InvalidGrantTtl,
            format!("ttlSeconds {ttl_seconds} is out of range; a grant lasts from {GRANT_TTL_MIN} second to {GRANT_TTL_MAX} seconds (7 days)"),
        )
    })
}

/// Whether two targets overlap (a CIDR inside or around another of the
/// same family). The kernel's interval sets refuse overlapping entries,
/// and a grant that ends must not take another's addresses with it.
pub fn overlaps(a: &GrantTarget, b: &GrantTarget) -> bool {
    match (a, b) {
        (GrantTarget::Network(x), GrantTarget::Network(y)) => x.contains(y) || y.contains(x),
        _ => false,
    }
}
