//! `explain`: whether a destination is allowed for a policy, and by which
//! rule, without sending anything.
//!
//! The same rules the dataplane and the DNS service enforce, in the same
//! order: what never leaves the sandbox (its loopback, its own addresses,
//! the unspecified address: `not_egress`); `blocked`; port 53, which the
//! dataplane sends to sandgate's DNS service whatever the (unicast)
//! address; the always-denied ranges; the sandbox's lists and the catalog;
//! then the mode's default. An IPv4-mapped address is first taken for the
//! IPv4 address it spells (a socket connects to it over IPv4).

use crate::catalog::Catalog;
use crate::config::PolicyConfig;
use crate::domain::{DomainName, DomainPattern};
use crate::error::{ErrorCode, PolicyError};
use crate::matcher::NameMatcher;
use crate::ranges::{NamedRange, RangeKind, Ranges};
use crate::resolve::{EffectivePolicy, Mode};
use crate::Rule;
use ipnet::IpNet;
use serde::{Serialize, Serializer};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The DNS port, which the dataplane redirects to sandgate's DNS service.
pub const DNS_PORT: u16 = 53;

/// An address or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An IPv4 or IPv6 address.
    Address(IpAddr),
    /// A DNS name.
    Name(DomainName),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Address(a) => write!(f, "{a}"),
            Target::Name(n) => write!(f, "{n}"),
        }
    }
}

/// A destination: an address or a name, and an optional port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Where.
    pub target: Target,
    /// Which port, if any.
    pub port: Option<u16>,
}

impl FromStr for Destination {
    type Err = PolicyError;

    /// Parses `ADDRESS_OR_NAME[:PORT]`; an IPv6 address with a port is
    /// written in brackets, `[2001:db8::1]:443`.
    fn from_str(text: &str) -> Result<Self, PolicyError> {
        let bad = |why: &str| {
            PolicyError::new(
                ErrorCode::InvalidDestination,
                format!("destination \"{text}\" {why}; write an address or a name, optionally with :PORT (IPv6 as [2001:db8::1]:443)"),
            )
        };
        let text = text.trim();
        if text.is_empty() {
            return Err(bad("is empty"));
        }
        if let Ok(addr) = text.parse::<IpAddr>() {
            return Ok(Destination {
                target: Target::Address(addr),
                port: None,
            });
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("has '[' without ']'"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("has text after ']' that is not :PORT"))?,
                    ),
                ),
            }
        } else {
            match text.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (text, None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => {
                let port: u16 = p
                    .parse()
                    .ok()
                    .filter(|n| *n > 0 && p.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| {
                        bad(&format!("has port \"{p}\", not a number from 1 to 65535"))
                    })?;
                Some(port)
            }
        };
        let target = match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) if text.starts_with('[') => {
                return Err(bad(
                    "puts an IPv4 address in brackets; brackets are for IPv6",
                ));
            }
            Ok(addr) => Target::Address(addr),
            Err(_) if text.starts_with('[') => {
                return Err(bad("puts a name in brackets; brackets are for IPv6"));
            }
            Err(_) if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
                return Err(bad("is not a valid IPv4 address"));
            }
            Err(_) => Target::Name(DomainName::parse(host).map_err(|why| bad(&why))?),
        };
        Ok(Destination { target, port })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.target, self.port) {
            (Target::Address(IpAddr::V6(a)), Some(p)) => write!(f, "[{a}]:{p}"),
            (t, Some(p)) => write!(f, "{t}:{p}"),
            (t, None) => write!(f, "{t}"),
        }
    }
}

/// Why a destination is allowed or denied. Its [`Reason::code`] is the
/// reason code of deny events and of `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The sandbox's loopback, its own address, or the unspecified
    /// address (which means its own host): a connection to it never
    /// leaves the sandbox, and no policy applies.
    NotEgress,
    /// `networkBlockAll`.
    Blocked,
    /// In an always-denied range: the range, and what kind of range it is.
    AlwaysDenied(IpNet, RangeKind),
    /// Port 53: answered by sandgate's DNS service.
    DnsService,
    /// In a private range the sandbox's list does not name.
    PrivateRange(IpNet),
    /// In an entry of `networkDenyList`.
    NetworkDenyList(IpNet),
    /// Matches an entry of `domainDenyList`.
    DomainDenyList(DomainPattern),
    /// In an entry of `networkAllowList`.
    AllowList(IpNet),
    /// Matches an entry of `domainAllowList`.
    DomainAllowList(DomainPattern),
    /// An essential service of this catalog category id.
    EssentialService(String),
    /// A grant in force, by id.
    Grant(String),
    /// `allowlist` mode, and no list entry or catalog name matches.
    NotInAllowList,
    /// `restricted` mode, and not an essential service.
    RestrictedByTier,
    /// `open` mode.
    Open,
    /// The sandbox's transfer quota for the period is spent (state, not
    /// policy: see [`Verdict::with_quota_spent`]).
    TransferQuota,
}

impl Reason {
    /// The reason code: `not_egress`, `blocked`, `always_denied:host`,
    /// `always_denied:metadata`, `always_denied:<range>`, `dns_service`,
    /// `private_range`, `network_deny_list:<cidr>`,
    /// `domain_deny_list:<pattern>`, `allow_list:<cidr>`,
    /// `domain_allow_list:<pattern>`,
    /// `essential_service:<category>`, `grant:<id>`, `not_in_allow_list`,
    /// `restricted_by_tier`, `open` or `transfer_quota`.
    pub fn code(&self) -> String {
        match self {
            Reason::NotEgress => "not_egress".into(),
            Reason::Blocked => "blocked".into(),
            Reason::AlwaysDenied(net, kind) => NamedRange::new(*net, "", *kind).denied_code(),
            Reason::DnsService => "dns_service".into(),
            Reason::PrivateRange(_) => "private_range".into(),
            Reason::NetworkDenyList(net) => format!("network_deny_list:{net}"),
            Reason::DomainDenyList(p) => format!("domain_deny_list:{p}"),
            Reason::AllowList(net) => format!("allow_list:{net}"),
            Reason::DomainAllowList(p) => format!("domain_allow_list:{p}"),
            Reason::EssentialService(id) => format!("essential_service:{id}"),
            Reason::Grant(id) => format!("grant:{id}"),
            Reason::NotInAllowList => "not_in_allow_list".into(),
            Reason::RestrictedByTier => "restricted_by_tier".into(),
            Reason::Open => "open".into(),
            Reason::TransferQuota => "transfer_quota".into(),
        }
    }
}

impl Reason {
    /// The reason code of a deny event: [`Reason::code`] without the deny
    /// list entry (`network_deny_list`, `domain_deny_list`), as the
    /// kernel's events give it (they do not know the entry; `explain`
    /// names it), so that one reason counts under one code.
    pub fn event_code(&self) -> String {
        match self {
            Reason::NetworkDenyList(_) => "network_deny_list".into(),
            Reason::DomainDenyList(_) => "domain_deny_list".into(),
            other => other.code(),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.code())
    }
}

/// The answer of `explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Whether a connection would pass.
    pub allowed: bool,
    /// The reason code.
    pub reason: Reason,
    /// The rule, in words.
    pub rule: String,
}

impl Verdict {
    /// The verdict once the sandbox's transfer quota for the period is
    /// spent: what would pass (a DNS query included) is refused until the
    /// period ends; a refusal keeps its own reason, and what never leaves
    /// the sandbox is untouched.
    pub fn with_quota_spent(self) -> Verdict {
        if !self.allowed || self.reason == Reason::NotEgress {
            return self;
        }
        Verdict {
            allowed: false,
            reason: Reason::TransferQuota,
            rule: "the sandbox's transfer quota for this period is spent: nothing passes until the period ends"
                .into(),
        }
    }
}

/// An effective policy compiled for lookups: the catalog's names (shared,
/// not copied) and the sandbox's `domainAllowList` (its own small trie),
/// walked together, with the ranges of the configuration.
#[derive(Debug, Clone)]
pub struct CompiledPolicy<'a> {
    policy: EffectivePolicy,
    catalog: &'a Catalog,
    ranges: &'a Ranges,
    own: NameMatcher<Rule>,
    /// The sandbox's name grants.
    granted: NameMatcher<Rule>,
    /// The sandbox's `domainDenyList`, by entry index.
    denied: NameMatcher<usize>,
    /// The sandbox's own addresses (see [`CompiledPolicy::with_own_addresses`]).
    own_addresses: Vec<IpAddr>,
}

impl<'a> CompiledPolicy<'a> {
    /// Compiles `policy` against a catalog and a configuration.
    pub fn new(policy: EffectivePolicy, catalog: &'a Catalog, config: &'a PolicyConfig) -> Self {
        let mut own = NameMatcher::new();
        for (index, pattern) in policy.domain_allow_list.patterns().iter().enumerate() {
            own.insert(pattern, Rule::DomainAllowList(index));
        }
        // Grants apart: a name the lists or the catalog allow keeps that
        // rule (its admissions outlive the grant), however specific the
        // grant.
        let mut granted = NameMatcher::new();
        for (index, grant) in policy.grants.iter().enumerate() {
            if let crate::grant::GrantTarget::Name(pattern) = &grant.target {
                granted.insert(pattern, Rule::Grant(index));
            }
        }
        let mut denied = NameMatcher::new();
        for (index, pattern) in policy.domain_deny_list.patterns().iter().enumerate() {
            denied.insert(pattern, index);
        }
        CompiledPolicy {
            policy,
            catalog,
            ranges: config.ranges(),
            own,
            granted,
            denied,
            own_addresses: Vec::new(),
        }
    }

    /// The sandbox's own addresses, which are no egress (`not_egress`)
    /// for it: a probe of one reaches its own network stack.
    #[must_use]
    pub fn with_own_addresses(mut self, addresses: &[IpAddr]) -> Self {
        self.own_addresses = addresses.iter().map(IpAddr::to_canonical).collect();
        self
    }

    /// The effective policy.
    pub fn policy(&self) -> &EffectivePolicy {
        &self.policy
    }

    /// The `domainDenyList` entry that `name` matches, if any (whatever
    /// the mode: in `open` mode too, a denied name is refused).
    pub fn name_denied(&self, name: &str) -> Option<Reason> {
        self.denied.find(name).map(|m| {
            Reason::DomainDenyList(self.policy.domain_deny_list.patterns()[m.value].clone())
        })
    }

    /// The `networkDenyList` entry that holds `addr`, if any.
    pub fn address_denied(&self, addr: IpAddr) -> Option<Reason> {
        self.policy
            .network_deny_list
            .entry_containing(addr.to_canonical(), |_| true)
            .map(Reason::NetworkDenyList)
    }

    /// The rule that allows DNS queries for `name`, if any: an essential
    /// service or a `domainAllowList` entry, and no `domainDenyList`
    /// entry. `None` in `open` mode (every name not denied is allowed
    /// there, by no particular rule) and in `blocked` mode (none is).
    pub fn name_rule(&self, name: &str) -> Option<Reason> {
        self.find_name(name).map(|rule| match rule {
            Rule::Essential(index) => {
                Reason::EssentialService(self.catalog.categories()[index].id.clone())
            }
            Rule::DomainAllowList(index) => {
                Reason::DomainAllowList(self.policy.domain_allow_list.patterns()[index].clone())
            }
            Rule::Grant(index) => Reason::Grant(self.policy.grants[index].id.clone()),
        })
    }

    fn find_name(&self, name: &str) -> Option<Rule> {
        if !matches!(self.policy.mode, Mode::Restricted | Mode::Allowlist)
            || self.denied.find(name).is_some()
        {
            return None;
        }
        let listed = if self.policy.essential_services {
            NameMatcher::find_in([self.catalog.matcher(), &self.own], name)
        } else {
            self.own.find(name)
        };
        listed.or_else(|| self.granted.find(name)).map(|m| m.value)
    }

    /// Whether `destination` is allowed, and by which rule.
    pub fn explain(&self, destination: &Destination) -> Verdict {
        if let Target::Address(asked) = destination.target {
            // An IPv4-mapped address (`::ffff:192.0.2.7`) is the IPv4
            // address it spells: a socket connects to it over IPv4.
            let addr = asked.to_canonical();
            let mut verdict = self.explain_canonical(addr, destination.port);
            if addr != asked {
                verdict.rule = format!(
                    "{asked} is the IPv4-mapped spelling of {addr}, which a connection reaches over IPv4: {}",
                    verdict.rule
                );
            }
            return verdict;
        }
        let mut verdict = self.explain_policy(destination);
        if let Target::Name(name) = &destination.target {
            // Admitted by name: its connections on the name-checked ports
            // pass the gateway.
            let by_name = matches!(
                verdict.reason,
                Reason::DomainAllowList(_) | Reason::EssentialService(_) | Reason::Grant(_)
            );
            if verdict.allowed && by_name {
                verdict.rule.push_str(
                    "; a TCP connection to its addresses on the name-checked ports (80 and 443 unless the operator says otherwise) passes the gateway, which resets it (name_mismatch) unless its TLS server name or HTTP Host is a name allowed for the sandbox that resolved for it to that address",
                );
            }
            if verdict.allowed && self.policy.http_rules.covers(name.as_str()) {
                verdict.rule.push_str(
                    "; its HTTP requests are limited by httpRules (methods and paths): the gateway terminates TLS to it (the sandbox trusts the deployment's CA) to read them, or refuses it (http_rules_need_termination) where it terminates none",
                );
            }
        }
        verdict
    }

    fn explain_canonical(&self, addr: IpAddr, port: Option<u16>) -> Verdict {
        if addr.is_loopback() || addr.is_unspecified() || self.own_addresses.contains(&addr) {
            let what = if addr.is_loopback() {
                "the sandbox's loopback"
            } else if addr.is_unspecified() {
                "the unspecified address, which a connection takes for the sandbox's own host"
            } else {
                "the sandbox's own address"
            };
            return Verdict {
                allowed: true,
                reason: Reason::NotEgress,
                rule: format!("{addr} is {what}: a connection to it never leaves the sandbox, and no network policy applies to it"),
            };
        }
        self.explain_policy(&Destination {
            target: Target::Address(addr),
            port,
        })
    }

    /// The policy's verdict (for what leaves the sandbox).
    fn explain_policy(&self, destination: &Destination) -> Verdict {
        if self.policy.mode == Mode::Blocked {
            return Verdict {
                allowed: false,
                reason: Reason::Blocked,
                rule:
                    "networkBlockAll is set: no egress at all, not even DNS or essential services"
                        .into(),
            };
        }
        match &destination.target {
            Target::Address(addr) => self.explain_address(*addr, destination.port),
            Target::Name(name) => self.explain_name(name),
        }
    }

    fn explain_name(&self, name: &DomainName) -> Verdict {
        let mut verdict = self.explain_name_rule(name);
        if verdict.allowed && self.policy.name_ports_only && self.policy.mode != Mode::Open {
            verdict.rule.push_str(
                ", on the name-checked ports only (the tier reaches name-admitted addresses on no other port)",
            );
        }
        verdict
    }

    fn explain_name_rule(&self, name: &DomainName) -> Verdict {
        let p = &self.policy;
        let verdict = |allowed, reason, rule: String| Verdict {
            allowed,
            reason,
            rule,
        };
        if let Some(reason) = self.name_denied(name.as_str()) {
            let Reason::DomainDenyList(pattern) = &reason else {
                unreachable!("name_denied gives domain deny list reasons")
            };
            let rule = format!("{name} matches domainDenyList entry {pattern}, which wins over every rule that allows; its DNS query is refused, and a connection that names it is reset by the gateway");
            return verdict(false, reason, rule);
        }
        if p.mode == Mode::Open {
            return verdict(
                true,
                Reason::Open,
                format!("open mode allows every name; the addresses {name} resolves to are checked like any address (always-denied and private ranges stay closed)"),
            );
        }
        match self.find_name(name.as_str()) {
            Some(Rule::Essential(index)) => {
                let category = &self.catalog.categories()[index];
                verdict(
                    true,
                    Reason::EssentialService(category.id.clone()),
                    format!("{name} is an essential service ({}); the addresses its DNS answer gives are admitted for this sandbox", category.title),
                )
            }
            Some(Rule::DomainAllowList(index)) => {
                let pattern = &p.domain_allow_list.patterns()[index];
                verdict(
                    true,
                    Reason::DomainAllowList(pattern.clone()),
                    format!("{name} matches domainAllowList entry {pattern}; the addresses its DNS answer gives are admitted for this sandbox"),
                )
            }
            Some(Rule::Grant(index)) => {
                let grant = &p.grants[index];
                verdict(
                    true,
                    Reason::Grant(grant.id.clone()),
                    format!("{name} matches grant {} ({}), in force until its end; the addresses its DNS answer gives are admitted for this sandbox until then", grant.id, grant.target),
                )
            }
            None if p.mode == Mode::Restricted => verdict(
                false,
                Reason::RestrictedByTier,
                format!("tier {} is restricted to essential services, and {name} is not one; its DNS query is refused", p.tier),
            ),
            None if !p.essential_services => verdict(
                false,
                Reason::NotInAllowList,
                format!("{name} matches no domainAllowList entry (the essential services are off for this sandbox); its DNS query is refused"),
            ),
            None => verdict(
                false,
                Reason::NotInAllowList,
                format!("{name} matches neither domainAllowList nor the essential services; its DNS query is refused"),
            ),
        }
    }

    fn explain_address(&self, addr: IpAddr, port: Option<u16>) -> Verdict {
        let p = &self.policy;
        let verdict = |allowed, reason, rule: String| Verdict {
            allowed,
            reason,
            rule,
        };
        if port == Some(DNS_PORT) && self.ranges.dns_redirected(addr) {
            return verdict(
                true,
                Reason::DnsService,
                "DNS to any address on port 53 is answered by sandgate's DNS service on the gateway, which applies this sandbox's name policy".into(),
            );
        }
        if let Some(range) = self.ranges.always_denied(addr) {
            return verdict(
                false,
                Reason::AlwaysDenied(range.net, range.kind),
                format!(
                    "{addr} is in {} ({}), which is always denied",
                    range.net, range.label
                ),
            );
        }
        if let Some(reason) = self.address_denied(addr) {
            let Reason::NetworkDenyList(net) = &reason else {
                unreachable!("address_denied gives network deny list reasons")
            };
            let rule = format!(
                "{addr} is in networkDenyList entry {net}, which wins over every rule that allows"
            );
            return verdict(false, reason, rule);
        }
        // A private range opens only to list entries inside it: 0.0.0.0/0
        // means "the internet", not "the operator's private networks".
        let private = self.ranges.private(addr);
        let opens = |net: &IpNet| private.is_none_or(|r| r.net.contains(net));
        if let Some(net) = p.network_allow_list.entry_containing(addr, opens) {
            return verdict(
                true,
                Reason::AllowList(net),
                format!("{addr} is in networkAllowList entry {net}"),
            );
        }
        let granted = p.grants.iter().find(|g| match &g.target {
            crate::grant::GrantTarget::Network(net) => net.contains(&addr) && opens(net),
            crate::grant::GrantTarget::Name(_) => false,
        });
        if let Some(grant) = granted {
            return verdict(
                true,
                Reason::Grant(grant.id.clone()),
                format!(
                    "{addr} is in grant {} ({}), in force until its end",
                    grant.id, grant.target
                ),
            );
        }
        if let Some(range) = private {
            let how = match p.mode {
                Mode::Restricted => format!(
                    "organizations of tier {} cannot set a networkAllowList to open it",
                    p.tier
                ),
                _ => format!(
                    "only a networkAllowList entry inside {} opens it",
                    range.net
                ),
            };
            return verdict(
                false,
                Reason::PrivateRange(range.net),
                format!("{addr} is in {} ({}); {how}", range.net, range.label),
            );
        }
        match p.mode {
            Mode::Allowlist => verdict(
                false,
                Reason::NotInAllowList,
                format!("{addr} is in no entry of networkAllowList ({}); essential services and domainAllowList names are reachable through their DNS answers", p.network_allow_list),
            ),
            Mode::Restricted => verdict(
                false,
                Reason::RestrictedByTier,
                format!("tier {} is restricted to essential services, which are reachable only by name through the sandbox's DNS service", p.tier),
            ),
            _ => verdict(
                true,
                Reason::Open,
                "open mode allows every address outside the always-denied and private ranges".into(),
            ),
        }
    }
}
