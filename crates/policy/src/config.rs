//! Operator configuration of the policy: the tier table, list limits and
//! extra always-denied ranges.
//!
//! The table of REQUIREMENTS.md section 1 is the default: tiers 1 and 2 restricted to
//! essential services, tiers 3 and 4 open by default and free to set lists;
//! at most 5 `networkAllowList` and 50 `domainAllowList` entries.

use crate::budget::{TierBudgets, TierBudgetsRepr};
use crate::error::{ErrorCode, PolicyError};
use crate::ranges::{NamedRange, RangeKind, Ranges};
use crate::resources::{TierResources, TierResourcesRepr};
use crate::runtime_class::{RuntimeClass, TierRuntimeClasses};
use crate::shares::{FairShares, FairSharesRepr};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The default limit on `networkAllowList` entries (the reference's number).
pub const DEFAULT_NETWORK_ALLOW_LIST_MAX: usize = 5;
/// The default limit on `domainAllowList` entries.
pub const DEFAULT_DOMAIN_ALLOW_LIST_MAX: usize = 50;
/// The default limit on `networkDenyList` entries.
pub const DEFAULT_NETWORK_DENY_LIST_MAX: usize = 20;
/// The default limit on `domainDenyList` entries.
pub const DEFAULT_DOMAIN_DENY_LIST_MAX: usize = 50;
/// The default sandbox subnets: the benchmarking range for IPv4, a
/// documentation prefix for IPv6. Sandboxes are numbered from them, and
/// they are always denied as destinations ("other sandboxes").
pub const DEFAULT_SANDBOX_SUBNETS: [&str; 2] = ["198.18.0.0/15", "2001:db8:5a00::/48"];

/// A billing tier number, as set by the operator's billing system.
pub type Tier = u8;

/// What a tier lets its organizations do with the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierNetwork {
    /// Essential services only; sandbox lists are refused (403).
    Restricted,
    /// Open by default; sandboxes may set lists, which make them `allowlist`.
    Configurable,
}

/// What a sandbox may do with an address admitted because a name resolved
/// to it, besides the name-checked ports (whose connections the gateway
/// checks by name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtherPorts {
    /// Every port and protocol, as the policy allows the address (an
    /// admitted database name on 5432 keeps working).
    #[default]
    Allow,
    /// The name-checked ports only: anything else to the address is
    /// refused, since no name can be checked there.
    Deny,
}

/// The rules of one tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TierRule {
    /// What the tier allows.
    pub network: TierNetwork,
    /// The most `networkAllowList` entries a request may set.
    pub network_allow_list_max: usize,
    /// The most `domainAllowList` entries a request may set.
    pub domain_allow_list_max: usize,
    /// The most `networkDenyList` entries a request may set.
    pub network_deny_list_max: usize,
    /// The most `domainDenyList` entries a request may set.
    pub domain_deny_list_max: usize,
    /// Other ports of a name-admitted address.
    pub name_admitted_other_ports: OtherPorts,
    /// What each sandbox of the tier may take of the host's shared
    /// resources.
    pub fair_shares: FairShares,
    /// Each sandbox's memory, CPU and disk: defaults and maxima.
    pub resources: TierResources,
    /// Each sandbox's budgets: defaults and maxima.
    pub budgets: TierBudgets,
    /// The runtime classes its sandboxes may run under, the default first.
    pub runtime_classes: TierRuntimeClasses,
}

/// The policy part of the operator configuration, resolved and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    tiers: BTreeMap<Tier, TierRule>,
    sandbox_subnets: Vec<IpNet>,
    ranges: Ranges,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig::from_repr(PolicyConfigRepr::default())
            .unwrap_or_else(|e| unreachable!("the default policy config is valid: {e}"))
    }
}

/// The `[policy]` section of the operator configuration file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfigRepr {
    /// Default limit on `networkAllowList` entries for every tier.
    #[serde(default)]
    pub network_allow_list_max: Option<usize>,
    /// Default limit on `domainAllowList` entries for every tier.
    #[serde(default)]
    pub domain_allow_list_max: Option<usize>,
    /// Default limit on `networkDenyList` entries for every tier.
    #[serde(default)]
    pub network_deny_list_max: Option<usize>,
    /// Default limit on `domainDenyList` entries for every tier.
    #[serde(default)]
    pub domain_deny_list_max: Option<usize>,
    /// Other ports of a name-admitted address, for every tier (default
    /// `allow`).
    #[serde(default)]
    pub name_admitted_other_ports: Option<OtherPorts>,
    /// The tier table; when given it replaces the default table whole.
    #[serde(default)]
    pub tiers: Option<BTreeMap<String, TierRepr>>,
    /// The subnets sandboxes are numbered from, one IPv4 and one IPv6
    /// (default [`DEFAULT_SANDBOX_SUBNETS`]); always denied as destinations.
    #[serde(default)]
    pub sandbox_subnets: Option<Vec<String>>,
    /// Ranges denied to every sandbox besides the built-in ones and the
    /// sandbox subnets: the operator's internal networks (a management
    /// network, the control plane's). No allow list opens them.
    #[serde(default)]
    pub extra_always_denied: Vec<DeniedRepr>,
    /// Cloud metadata services besides the built-in ones
    /// ([`crate::ranges::METADATA_SERVICES`]), as addresses or CIDRs:
    /// always denied, with the reason `always_denied:metadata`.
    #[serde(default)]
    pub metadata_services: Vec<String>,
    /// Ranges treated like the private ranges (denied in `open` and
    /// `restricted`, opened only by list entries inside them): an
    /// operator's internal networks that use public addresses.
    #[serde(default)]
    pub extra_private: Vec<DeniedRepr>,
    /// Fair shares of every tier, over the defaults of
    /// [`FairShares::default`].
    #[serde(default)]
    pub fair_shares: FairSharesRepr,
    /// Resources of every tier, over [`TierResources::default`].
    #[serde(default)]
    pub resources: TierResourcesRepr,
    /// Budgets of every tier (none by default).
    #[serde(default)]
    pub budgets: TierBudgetsRepr,
    /// The runtime classes of every tier, the default first (default
    /// `["runc"]`).
    #[serde(default)]
    pub runtime_classes: Option<Vec<RuntimeClass>>,
}

/// One row of the tier table, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierRepr {
    /// `restricted` or `configurable`.
    pub network: TierNetwork,
    /// This tier's limit on `networkAllowList` entries.
    #[serde(default)]
    pub network_allow_list_max: Option<usize>,
    /// This tier's limit on `domainAllowList` entries.
    #[serde(default)]
    pub domain_allow_list_max: Option<usize>,
    /// This tier's limit on `networkDenyList` entries.
    #[serde(default)]
    pub network_deny_list_max: Option<usize>,
    /// This tier's limit on `domainDenyList` entries.
    #[serde(default)]
    pub domain_deny_list_max: Option<usize>,
    /// This tier's rule for other ports of a name-admitted address.
    #[serde(default)]
    pub name_admitted_other_ports: Option<OtherPorts>,
    /// This tier's fair shares, over those of every tier.
    #[serde(default)]
    pub fair_shares: FairSharesRepr,
    /// This tier's resources, over those of every tier.
    #[serde(default)]
    pub resources: TierResourcesRepr,
    /// This tier's budgets, over those of every tier.
    #[serde(default)]
    pub budgets: TierBudgetsRepr,
    /// This tier's runtime classes, the default first, in place of those
    /// of every tier.
    #[serde(default)]
    pub runtime_classes: Option<Vec<RuntimeClass>>,
}

/// One extra range (always-denied or private), as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeniedRepr {
    /// The range, in canonical CIDR form.
    pub cidr: String,
    /// What it is ("sandbox subnet", "host address").
    pub label: String,
}

fn config_error(message: String) -> PolicyError {
    PolicyError::new(ErrorCode::InvalidConfig, message)
}

/// A CIDR in canonical form (no host bits), for the key `key`.
fn parse_cidr(key: &str, text: &str) -> Result<IpNet, PolicyError> {
    let net: IpNet = text
        .parse()
        .map_err(|_| config_error(format!("{key} has \"{text}\", which is not a CIDR")))?;
    if net.trunc() != net {
        return Err(config_error(format!(
            "{key} has \"{text}\" with host bits set; write {}",
            net.trunc()
        )));
    }
    Ok(net)
}

impl PolicyConfig {
    /// Parses a TOML document whose top level holds the keys of the
    /// `[policy]` table.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let repr: PolicyConfigRepr = toml::from_str(text)
            .map_err(|e| config_error(format!("the policy configuration is invalid: {e}")))?;
        PolicyConfig::from_repr(repr)
    }

    /// Validates a configuration as written.
    pub fn from_repr(repr: PolicyConfigRepr) -> Result<Self, PolicyError> {
        let net_max = repr
            .network_allow_list_max
            .unwrap_or(DEFAULT_NETWORK_ALLOW_LIST_MAX);
        let dom_max = repr
            .domain_allow_list_max
            .unwrap_or(DEFAULT_DOMAIN_ALLOW_LIST_MAX);
        let net_deny_max = repr
            .network_deny_list_max
            .unwrap_or(DEFAULT_NETWORK_DENY_LIST_MAX);
        let dom_deny_max = repr
            .domain_deny_list_max
            .unwrap_or(DEFAULT_DOMAIN_DENY_LIST_MAX);
        let shares = repr
            .fair_shares
            .over(FairShares::default(), "policy.fair_shares")?;
        let resources = repr
            .resources
            .over(TierResources::default(), "policy.resources")?;
        let budgets = repr
            .budgets
            .over(TierBudgets::default(), "policy.budgets")?;
        let classes = match &repr.runtime_classes {
            Some(list) => TierRuntimeClasses::from_list(list, "policy.runtime_classes")?,
            None => TierRuntimeClasses::default(),
        };
        let rule = |network,
                    row: Option<&TierRepr>,
                    fair_shares,
                    resources,
                    budgets,
                    runtime_classes| TierRule {
            network,
            network_allow_list_max: row
                .and_then(|r| r.network_allow_list_max)
                .unwrap_or(net_max),
            domain_allow_list_max: row.and_then(|r| r.domain_allow_list_max).unwrap_or(dom_max),
            network_deny_list_max: row
                .and_then(|r| r.network_deny_list_max)
                .unwrap_or(net_deny_max),
            domain_deny_list_max: row
                .and_then(|r| r.domain_deny_list_max)
                .unwrap_or(dom_deny_max),
            name_admitted_other_ports: row
                .and_then(|r| r.name_admitted_other_ports)
                .or(repr.name_admitted_other_ports)
                .unwrap_or_default(),
            fair_shares,
            resources,
            budgets,
            runtime_classes,
        };
        let tiers: BTreeMap<Tier, TierRule> = match repr.tiers {
            None => [
                (1, TierNetwork::Restricted),
                (2, TierNetwork::Restricted),
                (3, TierNetwork::Configurable),
                (4, TierNetwork::Configurable),
            ]
            .into_iter()
            .map(|(t, n)| (t, rule(n, None, shares, resources, budgets, classes)))
            .collect(),
            Some(table) => {
                let mut tiers = BTreeMap::new();
                for (key, row) in table {
                    let tier: Tier = key
                        .parse()
                        .ok()
                        .filter(|t: &Tier| key == t.to_string())
                        .ok_or_else(|| {
                            config_error(format!(
                                "policy.tiers has key \"{key}\"; tiers are numbers from 0 to 255"
                            ))
                        })?;
                    let tier_shares = row
                        .fair_shares
                        .over(shares, &format!("policy.tiers.{tier}.fair_shares"))?;
                    let tier_resources = row
                        .resources
                        .over(resources, &format!("policy.tiers.{tier}.resources"))?;
                    let tier_budgets = row
                        .budgets
                        .over(budgets, &format!("policy.tiers.{tier}.budgets"))?;
                    let tier_classes = match &row.runtime_classes {
                        Some(list) => TierRuntimeClasses::from_list(
                            list,
                            &format!("policy.tiers.{tier}.runtime_classes"),
                        )?,
                        None => classes,
                    };
                    tiers.insert(
                        tier,
                        rule(
                            row.network,
                            Some(&row),
                            tier_shares,
                            tier_resources,
                            tier_budgets,
                            tier_classes,
                        ),
                    );
                }
                if tiers.is_empty() {
                    return Err(config_error("policy.tiers is empty".into()));
                }
                tiers
            }
        };
        let subnets: Vec<String> = repr
            .sandbox_subnets
            .unwrap_or_else(|| DEFAULT_SANDBOX_SUBNETS.map(String::from).to_vec());
        let mut sandbox_subnets = Vec::new();
        for text in &subnets {
            sandbox_subnets.push(parse_cidr("policy.sandbox_subnets", text)?);
        }
        if !sandbox_subnets.iter().any(|n| matches!(n, IpNet::V4(_)))
            || !sandbox_subnets.iter().any(|n| matches!(n, IpNet::V6(_)))
        {
            return Err(config_error(
                "policy.sandbox_subnets needs one IPv4 and one IPv6 subnet".into(),
            ));
        }
        let mut denied: Vec<NamedRange> = sandbox_subnets
            .iter()
            .map(|n| {
                NamedRange::new(
                    *n,
                    "sandbox subnet (other sandboxes)",
                    RangeKind::SandboxSubnet,
                )
            })
            .collect();
        for d in repr.extra_always_denied {
            denied.push(NamedRange::new(
                parse_cidr("policy.extra_always_denied", &d.cidr)?,
                d.label,
                RangeKind::Operator,
            ));
        }
        for m in &repr.metadata_services {
            // A bare address is its own /32 or /128.
            let text = match m.parse::<std::net::IpAddr>() {
                Ok(a) => IpNet::from(a).to_string(),
                Err(_) => m.clone(),
            };
            denied.push(NamedRange::new(
                parse_cidr("policy.metadata_services", &text)?,
                "cloud metadata service",
                RangeKind::Metadata,
            ));
        }
        let mut ranges = Ranges::with_configured(denied);
        for p in repr.extra_private {
            ranges.private.push(NamedRange::new(
                parse_cidr("policy.extra_private", &p.cidr)?,
                p.label,
                RangeKind::Private,
            ));
        }
        Ok(PolicyConfig {
            tiers,
            sandbox_subnets,
            ranges,
        })
    }

    /// The rules of `tier`, or `invalid_tier` when the table lacks it.
    pub fn tier(&self, tier: Tier) -> Result<&TierRule, PolicyError> {
        self.tiers.get(&tier).ok_or_else(|| {
            let known: Vec<String> = self.tiers.keys().map(|t| t.to_string()).collect();
            PolicyError::new(
                ErrorCode::InvalidTier,
                format!(
                    "tier {tier} is not in the tier table; the tiers are {}",
                    known.join(", ")
                ),
            )
        })
    }

    /// The tier table.
    pub fn tiers(&self) -> &BTreeMap<Tier, TierRule> {
        &self.tiers
    }

    /// The always-denied and private ranges.
    pub fn ranges(&self) -> &Ranges {
        &self.ranges
    }

    /// The subnets sandboxes are numbered from.
    pub fn sandbox_subnets(&self) -> &[IpNet] {
        &self.sandbox_subnets
    }

    /// This configuration with the host's own addresses as they are now
    /// (see [`Ranges::with_host_addresses`]): only the running host knows
    /// them, and they change.
    pub fn with_host_addresses(&self, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        PolicyConfig {
            tiers: self.tiers.clone(),
            sandbox_subnets: self.sandbox_subnets.clone(),
            ranges: self.ranges.with_host_addresses(addrs),
        }
    }
}
