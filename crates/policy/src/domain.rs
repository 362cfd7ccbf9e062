//! DNS names, name patterns, `domainAllowList` and `domainDenyList`
//! (docs/REQUIREMENTS.md, "domainAllowList" and "Deny lists").
//!
//! Users write names in the usual dotted order (`www.example.com`,
//! `*.example.com`); the catalog writes them in reverse-label order
//! (`com.example.www`, `com.example.*`). Both parse to the same
//! [`DomainPattern`].

use crate::error::{ErrorCode, PolicyError};
use crate::list::{parse_list, EntryError, ListSpec};
use serde::{Serialize, Serializer};
use std::fmt;
use std::net::IpAddr;

/// The API field name, used in messages.
pub const FIELD: &str = "domainAllowList";
/// The deny list's API field name.
pub const DENY_FIELD: &str = "domainDenyList";

/// The longest DNS name in presentation form, without the trailing dot.
const MAX_NAME_LEN: usize = 253;
/// The longest label.
const MAX_LABEL_LEN: usize = 63;

/// A valid DNS host name: lowercase ASCII letters, digits and hyphens in
/// labels of 1-63 bytes, at most 253 bytes, no trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    /// Parses a name in the usual dotted order. Case is folded and one
    /// trailing dot is dropped.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.strip_suffix('.').unwrap_or(text);
        let lower = text.to_ascii_lowercase();
        check_labels(&lower)?;
        Ok(DomainName(lower))
    }

    /// The name in dotted order.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The labels, most significant (the top-level domain) first.
    pub fn reversed_labels(&self) -> impl Iterator<Item = &str> {
        self.0.rsplit('.')
    }

    /// The name in reverse-label notation (`com.example.www`).
    pub fn to_reversed(&self) -> String {
        self.reversed_labels().collect::<Vec<_>>().join(".")
    }

    /// The number of labels.
    pub fn label_count(&self) -> usize {
        self.0.split('.').count()
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the label syntax of a lowercase name without a trailing dot.
fn check_labels(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if !name.is_ascii() {
        return Err("contains non-ASCII characters; write an internationalized name in its ASCII (xn--) form".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "is {} characters long; a DNS name has at most {MAX_NAME_LEN}",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("has an empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "has a label of {} characters; a label has at most {MAX_LABEL_LEN}",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "contains '{c}'; a host name has only letters, digits, hyphens and dots"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "has label \"{label}\" that starts or ends with a hyphen"
            ));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("ends in an all-numeric label, so it is not a domain name".into());
    }
    Ok(())
}

/// An exact name or a `*.` wildcard.
///
/// `*.example.com` matches every name below `example.com` at any depth, and
/// not `example.com` itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DomainPattern {
    /// Exactly this name.
    Exact(DomainName),
    /// Every name strictly below this one.
    Wildcard(DomainName),
}

impl DomainPattern {
    /// Parses a pattern in the usual dotted order (`*.example.com`).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" || text == "*." {
            return Err(
                "is a bare '*'; a wildcard needs a name after it, as in *.example.com".into(),
            );
        }
        let (wildcard, base) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if base.contains('*') {
            return Err(
                "has a '*' that is not the whole first label; write a wildcard as *.example.com"
                    .into(),
            );
        }
        let name = DomainName::parse(base)?;
        if wildcard {
            Ok(DomainPattern::Wildcard(name))
        } else if name.label_count() < 2 {
            Err(format!(
                "is a single-label name; write a fully qualified name such as {name}.example.com, or *.{name} for every name below it"
            ))
        } else {
            Ok(DomainPattern::Exact(name))
        }
    }

    /// Parses a pattern in reverse-label notation (`com.example.*`), the
    /// notation of the catalog.
    pub fn parse_reversed(text: &str) -> Result<Self, String> {
        let labels: Vec<&str> = text.split('.').collect();
        let dotted = labels.iter().rev().copied().collect::<Vec<_>>().join(".");
        // A '*' anywhere but last lands inside the dotted base and is refused.
        DomainPattern::parse(&dotted)
    }

    /// The base name: the name itself, or the name below which a wildcard
    /// matches.
    pub fn base(&self) -> &DomainName {
        match self {
            DomainPattern::Exact(n) | DomainPattern::Wildcard(n) => n,
        }
    }

    /// Whether this is a `*.` wildcard.
    pub fn is_wildcard(&self) -> bool {
        matches!(self, DomainPattern::Wildcard(_))
    }

    /// The pattern in reverse-label notation (`com.example.*`).
    pub fn to_reversed(&self) -> String {
        match self {
            DomainPattern::Exact(n) => n.to_reversed(),
            DomainPattern::Wildcard(n) => format!("{}.*", n.to_reversed()),
        }
    }

    /// Whether `name` matches, by plain string comparison. The reference
    /// that the trie of [`crate::NameMatcher`] is tested against.
    pub fn matches(&self, name: &DomainName) -> bool {
        match self {
            DomainPattern::Exact(n) => n == name,
            DomainPattern::Wildcard(base) => name
                .as_str()
                .strip_suffix(base.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Exact(n) => write!(f, "{n}"),
            DomainPattern::Wildcard(n) => write!(f, "*.{n}"),
        }
    }
}

impl Serialize for DomainPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A validated list of name patterns (`domainAllowList` or
/// `domainDenyList`): canonical patterns, duplicates merged, in the order
/// first given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DomainList(Vec<DomainPattern>);

/// `domainAllowList`, by its API name.
pub type DomainAllowList = DomainList;

impl DomainList {
    /// Parses a `domainAllowList` as the API receives it. `max_entries`
    /// counts distinct entries after normalization.
    pub fn parse(input: &str, max_entries: usize) -> Result<Self, PolicyError> {
        Self::parse_kind(input, max_entries, FIELD, ErrorCode::InvalidDomainAllowList)
    }

    /// Parses a `domainDenyList`: the allow list's grammar, its own error
    /// code (`invalid_domain_deny_list`).
    pub fn parse_deny(input: &str, max_entries: usize) -> Result<Self, PolicyError> {
        Self::parse_kind(
            input,
            max_entries,
            DENY_FIELD,
            ErrorCode::InvalidDomainDenyList,
        )
    }

    fn parse_kind(
        input: &str,
        max_entries: usize,
        field: &'static str,
        code: ErrorCode,
    ) -> Result<Self, PolicyError> {
        let spec = ListSpec {
            field,
            code,
            max: max_entries,
            limit_hint:
                "use a *. wildcard to cover several names, or ask the operator to raise the limit",
        };
        parse_list(input, &spec, |entry| parse_entry(entry, field)).map(DomainList)
    }

    /// The canonical patterns.
    pub fn patterns(&self) -> &[DomainPattern] {
        &self.0
    }

    /// Whether the list is empty (`""`: no list).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for DomainList {
    /// The canonical comma-separated form, which parses back to the same list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::list::write_joined(f, &self.0)
    }
}

impl Serialize for DomainList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

/// Read back from its serialized form (canonical patterns), as a runner
/// gets a policy the API resolved: each pattern is parsed again, so a
/// malformed one is refused; no limit of a tier applies.
impl<'de> serde::Deserialize<'de> for DomainList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        let mut list: Vec<DomainPattern> = Vec::with_capacity(texts.len());
        for text in texts {
            let pattern = DomainPattern::parse(&text)
                .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))?;
            if !list.contains(&pattern) {
                list.push(pattern);
            }
        }
        Ok(DomainList(list))
    }
}

fn parse_entry(entry: &str, field: &str) -> Result<DomainPattern, EntryError> {
    if entry.chars().any(char::is_whitespace) {
        return Err(EntryError::new("contains white space"));
    }
    if let Some((_, rest)) = entry.split_once("://") {
        return Err(EntryError::with_fix(
            "is a URL; write the host name alone",
            host_of(rest),
        ));
    }
    if looks_like_ip(entry) {
        return Err(EntryError::new(if field == DENY_FIELD {
            "is an IP address or CIDR; put addresses in networkDenyList"
        } else {
            "is an IP address or CIDR; put addresses in networkAllowList"
        }));
    }
    if entry.contains('/') || entry.contains('@') {
        return Err(EntryError::with_fix(
            "has a path or user part; write the host name alone",
            host_of(entry),
        ));
    }
    if let Some((host, port)) = entry.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(EntryError::with_fix(
                format!("has a port; {field} takes names without ports"),
                host,
            ));
        }
    }
    DomainPattern::parse(entry).map_err(EntryError::new)
}

/// Whether `text` is an IP address or CIDR in any common spelling.
fn looks_like_ip(text: &str) -> bool {
    let addr = text.split('/').next().unwrap_or(text);
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    addr.parse::<IpAddr>().is_ok()
        || (!addr.is_empty() && addr.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

/// The host part of `user@host:port/path`.
fn host_of(text: &str) -> &str {
    let no_path = text.split('/').next().unwrap_or(text);
    let no_user = no_path.rsplit('@').next().unwrap_or(no_path);
    match no_user.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => no_user,
    }
}
