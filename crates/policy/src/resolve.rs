//! Resolution of (organization tier, sandbox settings) into an effective
//! policy, and validation of the requests that change settings (REQUIREMENTS.md
//! section 1, "Effective network mode of a sandbox").

use crate::budget::check_connection_budget;
use crate::config::{PolicyConfig, Tier, TierNetwork};
use crate::domain::{self, DomainAllowList, DomainList};
use crate::error::{ErrorCode, PolicyError};
use crate::network::{self, NetworkAllowList, NetworkList};
use crate::shares::FairShares;
use serde::Serialize;
use std::fmt;

/// The effective network mode of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Everything except the always-denied and private ranges.
    Open,
    /// The sandbox's lists plus essential services.
    Allowlist,
    /// Essential services only (the tier forbids more).
    Restricted,
    /// No egress at all, not even DNS.
    Blocked,
}

impl Mode {
    /// The mode as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::Allowlist => "allowlist",
            Mode::Restricted => "restricted",
            Mode::Blocked => "blocked",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Mode::Open, Mode::Allowlist, Mode::Restricted, Mode::Blocked]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown mode {s:?}"))
    }
}

impl<'de> serde::Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The network settings a sandbox stores, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSettings {
    /// `networkBlockAll`.
    pub network_block_all: bool,
    /// `networkAllowList`.
    pub network_allow_list: NetworkAllowList,
    /// `domainAllowList`.
    pub domain_allow_list: DomainAllowList,
    /// `networkDenyList`.
    pub network_deny_list: NetworkList,
    /// `domainDenyList`.
    pub domain_deny_list: DomainList,
    /// `essentialServices` (true unless a request turned them off).
    pub essential_services: bool,
    /// `egressMbps` as the sandbox asked (`None`: the tier's default).
    pub egress_mbps: Option<u32>,
    /// `transferQuotaMiB` as the sandbox asked (`None`: the tier's
    /// default).
    pub transfer_quota_mib: Option<u32>,
    /// `maxConnections` as the sandbox asked (`None`: the tier's fair
    /// share).
    pub max_connections: Option<u32>,
    /// `newConnectionsPerSecond` as the sandbox asked (`None`: the tier's
    /// fair share).
    pub new_connections_per_second: Option<u32>,
    /// `networkApprovals`.
    pub network_approvals: bool,
    /// `approvalHoldSeconds` (0 to 60).
    pub approval_hold_seconds: u8,
    /// `httpRules`.
    pub http_rules: crate::HttpRules,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            network_block_all: false,
            network_allow_list: NetworkList::default(),
            domain_allow_list: DomainList::default(),
            network_deny_list: NetworkList::default(),
            domain_deny_list: DomainList::default(),
            essential_services: true,
            egress_mbps: None,
            transfer_quota_mib: None,
            max_connections: None,
            new_connections_per_second: None,
            network_approvals: false,
            approval_hold_seconds: 0,
            http_rules: crate::HttpRules::default(),
        }
    }
}

/// The network fields of a create or update request, as sent. A field left
/// out is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SettingsRequest<'a> {
    /// `networkBlockAll`.
    pub network_block_all: Option<bool>,
    /// `networkAllowList`, unparsed.
    pub network_allow_list: Option<&'a str>,
    /// `domainAllowList`, unparsed.
    pub domain_allow_list: Option<&'a str>,
    /// `networkDenyList`, unparsed.
    pub network_deny_list: Option<&'a str>,
    /// `domainDenyList`, unparsed.
    pub domain_deny_list: Option<&'a str>,
    /// `essentialServices`.
    pub essential_services: Option<bool>,
    /// `egressMbps`: `Some(None)` (sent as `null`) goes back to the
    /// tier's default.
    pub egress_mbps: Option<Option<u32>>,
    /// `transferQuotaMiB`: `Some(None)` goes back to the tier's default.
    pub transfer_quota_mib: Option<Option<u32>>,
    /// `maxConnections`: `Some(None)` goes back to the tier's.
    pub max_connections: Option<Option<u32>>,
    /// `newConnectionsPerSecond`: `Some(None)` goes back to the tier's.
    pub new_connections_per_second: Option<Option<u32>>,
    /// `networkApprovals`.
    pub network_approvals: Option<bool>,
    /// `approvalHoldSeconds`, unchecked.
    pub approval_hold_seconds: Option<u32>,
    /// `httpRules`, unchecked (`Some(&[])` removes them).
    pub http_rules: Option<&'a [crate::HttpRuleRequest]>,
}

impl SettingsRequest<'_> {
    fn is_empty(&self) -> bool {
        self.network_block_all.is_none()
            && self.network_allow_list.is_none()
            && self.domain_allow_list.is_none()
            && self.network_deny_list.is_none()
            && self.domain_deny_list.is_none()
            && self.essential_services.is_none()
            && self.egress_mbps.is_none()
            && self.transfer_quota_mib.is_none()
            && self.max_connections.is_none()
            && self.new_connections_per_second.is_none()
            && self.network_approvals.is_none()
            && self.approval_hold_seconds.is_none()
            && self.http_rules.is_none()
    }
}

/// A sandbox's network settings as a store keeps them: canonical text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredSettings<'a> {
    /// `networkBlockAll`.
    pub network_block_all: bool,
    /// `networkAllowList`.
    pub network_allow_list: &'a str,
    /// `domainAllowList`.
    pub domain_allow_list: &'a str,
    /// `networkDenyList`.
    pub network_deny_list: &'a str,
    /// `domainDenyList`.
    pub domain_deny_list: &'a str,
    /// `essentialServices`.
    pub essential_services: bool,
    /// `egressMbps` as asked.
    pub egress_mbps: Option<u32>,
    /// `transferQuotaMiB` as asked.
    pub transfer_quota_mib: Option<u32>,
    /// `maxConnections` as asked.
    pub max_connections: Option<u32>,
    /// `newConnectionsPerSecond` as asked.
    pub new_connections_per_second: Option<u32>,
    /// `networkApprovals`.
    pub network_approvals: bool,
    /// `approvalHoldSeconds`.
    pub approval_hold_seconds: u8,
    /// `httpRules`, canonical (`""`: none).
    pub http_rules: &'a str,
}

/// A stored setting that the tier or `networkBlockAll` makes inactive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InactiveSetting {
    /// The setting's API name (`networkAllowList`, `domainAllowList`).
    pub setting: &'static str,
    /// Its stored value, canonical.
    pub value: String,
    /// A reason code: `blocked`, `restricted_by_tier` or `open` (for
    /// `essentialServices: false`, which open mode does not need).
    pub reason: &'static str,
    /// Why, for a person.
    pub message: String,
}

/// What a sandbox may reach, resolved from its tier and its settings. It
/// reads back from its serialized form (as a runner on another host gets
/// it) without `inactive`, which only the API shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectivePolicy {
    /// The organization's tier at resolution time.
    pub tier: Tier,
    /// The effective mode.
    pub mode: Mode,
    /// The active CIDRs (empty unless `allowlist`).
    pub network_allow_list: NetworkAllowList,
    /// The active domain patterns (empty unless `allowlist`).
    pub domain_allow_list: DomainAllowList,
    /// The denied CIDRs (empty when `blocked`): they win over every rule
    /// that allows.
    #[serde(default)]
    pub network_deny_list: NetworkList,
    /// The denied name patterns (empty when `blocked`).
    #[serde(default)]
    pub domain_deny_list: DomainList,
    /// Whether the essential services are reachable (never when
    /// `blocked`; not when the sandbox turned them off).
    pub essential_services: bool,
    /// The HTTP rules in force (every mode but `blocked`: they only
    /// narrow).
    #[serde(default, skip_serializing_if = "crate::HttpRules::is_empty")]
    pub http_rules: crate::HttpRules,
    /// The grants in force (`allowlist` mode only; see
    /// [`EffectivePolicy::with_grants`]).
    #[serde(default)]
    pub grants: Vec<crate::grant::Grant>,
    /// Whether an address admitted by name is reached on the
    /// name-checked ports only (the tier's
    /// [`crate::OtherPorts::Deny`]).
    #[serde(default)]
    pub name_ports_only: bool,
    /// The organization's known egress address, if the operator gave it
    /// one: where connections leave from (see
    /// [`EffectivePolicy::with_egress_address`]); never what may leave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_address: Option<crate::egress::EgressAddress>,
    /// Stored settings that have no effect, and why.
    #[serde(skip_deserializing, default)]
    pub inactive: Vec<InactiveSetting>,
    /// What the sandbox may take of the host's shared resources (its
    /// tier's fair shares).
    pub fair_shares: FairShares,
    /// Its budgets: what it asked for or its tier's defaults, within the
    /// tier's maxima.
    #[serde(default, skip_serializing_if = "crate::budget::Budgets::is_empty")]
    pub budgets: crate::budget::Budgets,
    /// Whether what it is refused opens access requests (`allowlist`
    /// mode only), and how long a refused query waits for an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<crate::approval::Approvals>,
}

impl EffectivePolicy {
    /// The policy with the grants of `grants` in force at `now_ms`: in
    /// `allowlist` mode only (a grant is a temporary list entry; in the
    /// other modes it has nothing to add, or may not).
    #[must_use]
    pub fn with_grants(mut self, grants: &[crate::grant::Grant], now_ms: u64) -> Self {
        self.grants = if self.mode == Mode::Allowlist {
            grants
                .iter()
                .filter(|g| g.active(now_ms))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        self
    }

    /// The policy with the names its owner denied (`declined`), where
    /// approvals are in force.
    #[must_use]
    pub fn with_declined(mut self, declined: Vec<String>) -> Self {
        if let Some(a) = &mut self.approvals {
            a.declined = declined;
        }
        self
    }

    /// The policy with connections leaving from `egress` (the
    /// organization's known egress address) instead of the host's own.
    #[must_use]
    pub fn with_egress_address(mut self, egress: Option<crate::egress::EgressAddress>) -> Self {
        self.egress_address = egress;
        self
    }

    /// The policy without the grants that ended by `now_ms`, and whether
    /// any did.
    pub fn expire_grants(&mut self, now_ms: u64) -> Vec<crate::grant::Grant> {
        let (kept, ended) = std::mem::take(&mut self.grants)
            .into_iter()
            .partition(|g| g.active(now_ms));
        self.grants = kept;
        ended
    }
}

impl PolicyConfig {
    /// Validates the network fields of a create request for an organization
    /// of `tier` and returns the settings to store.
    pub fn settings_for_create(
        &self,
        tier: Tier,
        request: &SettingsRequest<'_>,
    ) -> Result<NetworkSettings, PolicyError> {
        self.merge(tier, &NetworkSettings::default(), request)
    }

    /// Validates an update (`POST .../network-settings`): a field sent
    /// replaces the stored value, a field left out is kept; sending none is
    /// an error.
    pub fn settings_for_update(
        &self,
        tier: Tier,
        stored: &NetworkSettings,
        request: &SettingsRequest<'_>,
    ) -> Result<NetworkSettings, PolicyError> {
        if request.is_empty() {
            return Err(PolicyError::new(
                ErrorCode::InvalidNetworkSettings,
                "the request sets nothing; send at least one of networkBlockAll, networkAllowList, domainAllowList, networkDenyList, domainDenyList, essentialServices, egressMbps, maxConnections, newConnectionsPerSecond, networkApprovals, approvalHoldSeconds, httpRules",
            ));
        }
        self.merge(tier, stored, request)
    }

    /// Reads back settings kept in a store: the canonical text of lists
    /// that [`settings_for_create`](Self::settings_for_create) or
    /// [`settings_for_update`](Self::settings_for_update) validated. They
    /// are parsed again without the tier's limits, which held when they
    /// were stored and may have changed since (a stored list of an
    /// organization moved to a restricted tier stays stored, inactive).
    pub fn stored_settings(
        &self,
        stored: &StoredSettings<'_>,
    ) -> Result<NetworkSettings, PolicyError> {
        Ok(NetworkSettings {
            network_block_all: stored.network_block_all,
            network_allow_list: NetworkList::parse(
                stored.network_allow_list,
                usize::MAX,
                self.ranges(),
            )?,
            domain_allow_list: DomainList::parse(stored.domain_allow_list, usize::MAX)?,
            network_deny_list: NetworkList::parse_deny_stored(
                stored.network_deny_list,
                self.ranges(),
            )?,
            domain_deny_list: DomainList::parse_deny(stored.domain_deny_list, usize::MAX)?,
            essential_services: stored.essential_services,
            egress_mbps: stored.egress_mbps,
            transfer_quota_mib: stored.transfer_quota_mib,
            max_connections: stored.max_connections,
            new_connections_per_second: stored.new_connections_per_second,
            network_approvals: stored.network_approvals,
            approval_hold_seconds: stored.approval_hold_seconds,
            http_rules: crate::HttpRules::parse_stored(stored.http_rules)?,
        })
    }

    fn merge(
        &self,
        tier: Tier,
        stored: &NetworkSettings,
        request: &SettingsRequest<'_>,
    ) -> Result<NetworkSettings, PolicyError> {
        let rule = self.tier(tier)?;
        if rule.network == TierNetwork::Restricted {
            let sent: Vec<&'static str> = [
                (network::FIELD, request.network_allow_list),
                (domain::FIELD, request.domain_allow_list),
                (network::DENY_FIELD, request.network_deny_list),
                (domain::DENY_FIELD, request.domain_deny_list),
            ]
            .into_iter()
            .filter(|(_, v)| v.is_some_and(|s| !s.trim().is_empty()))
            .map(|(f, _)| f)
            .chain((request.network_approvals == Some(true)).then_some("networkApprovals"))
            .chain(
                request
                    .http_rules
                    .is_some_and(|r| !r.is_empty())
                    .then_some(crate::http_rules::FIELD),
            )
            .collect();
            if !sent.is_empty() {
                return Err(self.restricted_error(tier, &sent));
            }
        }
        let network_allow_list = match request.network_allow_list {
            Some(s) => NetworkAllowList::parse(s, rule.network_allow_list_max, self.ranges())?,
            None => stored.network_allow_list.clone(),
        };
        let domain_allow_list = match request.domain_allow_list {
            Some(s) => DomainAllowList::parse(s, rule.domain_allow_list_max)?,
            None => stored.domain_allow_list.clone(),
        };
        let network_deny_list = match request.network_deny_list {
            Some(s) => NetworkList::parse_deny(s, rule.network_deny_list_max, self.ranges())?,
            None => stored.network_deny_list.clone(),
        };
        let domain_deny_list = match request.domain_deny_list {
            Some(s) => DomainList::parse_deny(s, rule.domain_deny_list_max)?,
            None => stored.domain_deny_list.clone(),
        };
        // Budgets only narrow: any tier may ask for less.
        rule.budgets.check(
            tier,
            crate::budget::AskedBudgets {
                egress_mbps: request.egress_mbps.flatten(),
                transfer_quota_mib: request.transfer_quota_mib.flatten(),
            },
        )?;
        let egress_mbps = request.egress_mbps.unwrap_or(stored.egress_mbps);
        let transfer_quota_mib = request
            .transfer_quota_mib
            .unwrap_or(stored.transfer_quota_mib);
        let max_connections = request.max_connections.unwrap_or(stored.max_connections);
        let new_connections_per_second = request
            .new_connections_per_second
            .unwrap_or(stored.new_connections_per_second);
        // A value kept from before is not checked again: a tier lowered
        // since keeps it stored, inactive above the new tier's.
        if let Some(asked) = request.max_connections {
            check_connection_budget(tier, "maxConnections", asked, rule.fair_shares.connections)?;
        }
        if let Some(asked) = request.new_connections_per_second {
            check_connection_budget(
                tier,
                "newConnectionsPerSecond",
                asked,
                rule.fair_shares.new_connections_per_second,
            )?;
        }
        let http_rules = match request.http_rules {
            Some(r) => crate::HttpRules::parse(r, crate::HTTP_RULES_MAX)?,
            None => stored.http_rules.clone(),
        };
        let approval_hold_seconds = match request.approval_hold_seconds {
            Some(s) => crate::approval::check_hold(s)?,
            None => stored.approval_hold_seconds,
        };
        Ok(NetworkSettings {
            network_block_all: request
                .network_block_all
                .unwrap_or(stored.network_block_all),
            network_allow_list,
            domain_allow_list,
            network_deny_list,
            domain_deny_list,
            essential_services: request
                .essential_services
                .unwrap_or(stored.essential_services),
            egress_mbps,
            transfer_quota_mib,
            max_connections,
            new_connections_per_second,
            network_approvals: request
                .network_approvals
                .unwrap_or(stored.network_approvals),
            approval_hold_seconds,
            http_rules,
        })
    }

    fn restricted_error(&self, tier: Tier, fields: &[&'static str]) -> PolicyError {
        let lift = self
            .tiers()
            .iter()
            .find(|(t, r)| **t > tier && r.network == TierNetwork::Configurable)
            .or_else(|| {
                self.tiers()
                    .iter()
                    .find(|(_, r)| r.network == TierNetwork::Configurable)
            })
            .map(|(t, _)| format!("; tier {t} lifts this restriction"))
            .unwrap_or_default();
        PolicyError {
            field: fields.first().copied(),
            ..PolicyError::new(
                ErrorCode::NetworkRestrictedByTier,
                format!(
                    "{} cannot be set: organizations of tier {tier} are restricted to essential services{lift}",
                    fields.join(" and ")
                ),
            )
        }
    }

    /// Resolves stored settings for an organization of `tier`, in the order
    /// of REQUIREMENTS.md section 1. Never refuses: settings the tier makes inactive
    /// are kept and listed in [`EffectivePolicy::inactive`].
    pub fn resolve(
        &self,
        tier: Tier,
        settings: &NetworkSettings,
    ) -> Result<EffectivePolicy, PolicyError> {
        let rule = self.tier(tier)?;
        let lists = [
            (network::FIELD, settings.network_allow_list.to_string()),
            (domain::FIELD, settings.domain_allow_list.to_string()),
        ];
        let stored_lists = || lists.iter().filter(|(_, v)| !v.is_empty());
        let has_lists = stored_lists().next().is_some();
        let (mode, inactive_reason) = if settings.network_block_all {
            (
                Mode::Blocked,
                Some((
                    "blocked",
                    "networkBlockAll is true, which takes precedence over every list".to_string(),
                )),
            )
        } else if rule.network == TierNetwork::Restricted {
            (
                Mode::Restricted,
                Some((
                    "restricted_by_tier",
                    format!("organizations of tier {tier} are restricted to essential services"),
                )),
            )
        } else if has_lists {
            (Mode::Allowlist, None)
        } else {
            (Mode::Open, None)
        };
        let mut inactive: Vec<InactiveSetting> = match inactive_reason {
            None => Vec::new(),
            Some((reason, message)) => stored_lists()
                .map(|(setting, value)| InactiveSetting {
                    setting,
                    value: value.clone(),
                    reason,
                    message: message.clone(),
                })
                .collect(),
        };
        // Deny lists only narrow: they stay in force in every mode but
        // `blocked` (a tier downgrade keeps them), where nothing passes.
        let denying = mode != Mode::Blocked;
        if !denying {
            let deny_lists = [
                (network::DENY_FIELD, settings.network_deny_list.to_string()),
                (domain::DENY_FIELD, settings.domain_deny_list.to_string()),
                (crate::http_rules::FIELD, settings.http_rules.to_stored()),
            ];
            inactive.extend(deny_lists.into_iter().filter(|(_, v)| !v.is_empty()).map(
                |(setting, value)| InactiveSetting {
                    setting,
                    value,
                    reason: "blocked",
                    message:
                        "networkBlockAll is true, which takes precedence over every list".into(),
                },
            ));
        }
        if mode == Mode::Open && !settings.essential_services {
            inactive.push(InactiveSetting {
                setting: "essentialServices",
                value: "false".into(),
                reason: "open",
                message: "open mode reaches every name, the essential services among them; essentialServices: false takes effect with an allow list".into(),
            });
        }
        for (setting, asked, max, unit) in [
            (
                "egressMbps",
                settings.egress_mbps,
                rule.budgets.max.egress_mbps,
                "Mbit/s",
            ),
            (
                "transferQuotaMiB",
                settings.transfer_quota_mib,
                rule.budgets.max.transfer_quota_mib,
                "MiB a period",
            ),
        ] {
            if let (Some(asked), Some(max)) = (asked, max) {
                if asked > max {
                    inactive.push(InactiveSetting {
                        setting,
                        value: asked.to_string(),
                        reason: "tier_maximum",
                        message: format!(
                            "tier {tier} allows at most {max} {unit}, which is in force"
                        ),
                    });
                }
            }
        }
        for (setting, asked, share) in [
            (
                "maxConnections",
                settings.max_connections,
                rule.fair_shares.connections,
            ),
            (
                "newConnectionsPerSecond",
                settings.new_connections_per_second,
                rule.fair_shares.new_connections_per_second,
            ),
        ] {
            if let Some(asked) = asked.filter(|a| *a > share) {
                inactive.push(InactiveSetting {
                    setting,
                    value: asked.to_string(),
                    reason: "tier_maximum",
                    message: format!("tier {tier} allows at most {share}, which is in force"),
                });
            }
        }
        let active = mode == Mode::Allowlist;
        if settings.network_approvals && !active {
            let (reason, message) = match mode {
                Mode::Open => ("open", "open mode reaches every public destination and has nothing to ask for; approvals take effect with an allow list".to_string()),
                Mode::Blocked => ("blocked", "networkBlockAll is true, which no approval opens".to_string()),
                _ => ("restricted_by_tier", format!("organizations of tier {tier} are restricted to essential services")),
            };
            inactive.push(InactiveSetting {
                setting: "networkApprovals",
                value: "true".into(),
                reason,
                message,
            });
        }
        Ok(EffectivePolicy {
            tier,
            mode,
            network_allow_list: if active {
                settings.network_allow_list.clone()
            } else {
                NetworkAllowList::default()
            },
            domain_allow_list: if active {
                settings.domain_allow_list.clone()
            } else {
                DomainAllowList::default()
            },
            network_deny_list: if denying {
                settings.network_deny_list.clone()
            } else {
                NetworkList::default()
            },
            domain_deny_list: if denying {
                settings.domain_deny_list.clone()
            } else {
                DomainList::default()
            },
            essential_services: mode != Mode::Blocked && settings.essential_services,
            http_rules: if denying {
                settings.http_rules.clone()
            } else {
                crate::HttpRules::default()
            },
            grants: Vec::new(),
            name_ports_only: rule.name_admitted_other_ports == crate::config::OtherPorts::Deny,
            egress_address: None,
            inactive,
            fair_shares: rule.fair_shares.narrowed(
                settings.max_connections,
                settings.new_connections_per_second,
            ),
            budgets: rule.budgets.resolve(crate::budget::AskedBudgets {
                egress_mbps: settings.egress_mbps,
                transfer_quota_mib: settings.transfer_quota_mib,
            }),
            approvals: (active && settings.network_approvals).then(|| crate::approval::Approvals {
                hold_seconds: settings.approval_hold_seconds,
                declined: Vec::new(),
            }),
        })
    }

    /// Whether `policy` is one this configuration resolves for its tier:
    /// the tier exists, its fair shares are the tier's (or narrower in
    /// connections, as a sandbox may ask), its mode is one the
    /// tier gives, its lists are active only in `allowlist` and each is
    /// one a request could set (entries, limits, nothing always denied).
    /// A runner checks what it is asked to enforce with it, so that a
    /// policy from another version or a bug is refused, never enforced
    /// wider than its tier allows.
    pub fn check_effective(&self, policy: &EffectivePolicy) -> Result<(), String> {
        let rule = self.tier(policy.tier).map_err(|e| e.message)?;
        let tier = policy.tier;
        if !policy.fair_shares.within(&rule.fair_shares) {
            return Err(format!(
                "its fair shares are not those of tier {tier} here, nor narrower in connections only"
            ));
        }
        if policy.essential_services && policy.mode == Mode::Blocked {
            return Err("essential services are off when it is blocked".into());
        }
        let deny_lists =
            !policy.network_deny_list.is_empty() || !policy.domain_deny_list.is_empty();
        if deny_lists && policy.mode == Mode::Blocked {
            return Err("deny lists are empty when it is blocked".into());
        }
        if !policy.http_rules.is_empty() && policy.mode == Mode::Blocked {
            return Err("HTTP rules are empty when it is blocked".into());
        }
        // Narrower than the tier's rule is fine; wider is not.
        if rule.name_admitted_other_ports == crate::config::OtherPorts::Deny
            && !policy.name_ports_only
        {
            return Err(format!(
                "tier {tier} reaches name-admitted addresses on the name-checked ports only"
            ));
        }
        if !policy.grants.is_empty() && policy.mode != Mode::Allowlist {
            return Err("grants are in force in allowlist mode only".into());
        }
        if let Some(a) = &policy.approvals {
            if policy.mode != Mode::Allowlist {
                return Err("approvals are in force in allowlist mode only".into());
            }
            a.check()?;
        }
        for g in &policy.grants {
            if let crate::grant::GrantTarget::Network(net) = &g.target {
                if let Some(range) = self.ranges().always_denied_covering(net) {
                    return Err(format!(
                        "grant {} opens {net}, inside {} which is always denied",
                        g.id, range.net
                    ));
                }
            }
        }
        let lists = !policy.network_allow_list.is_empty() || !policy.domain_allow_list.is_empty();
        let allowed = match policy.mode {
            Mode::Blocked => !lists,
            Mode::Restricted => !lists && rule.network == TierNetwork::Restricted,
            Mode::Open => !lists && rule.network == TierNetwork::Configurable,
            Mode::Allowlist => lists && rule.network == TierNetwork::Configurable,
        };
        if !allowed {
            return Err(format!(
                "mode {} with{} lists is not one tier {tier} gives",
                policy.mode,
                if lists { "" } else { "out" }
            ));
        }
        NetworkAllowList::parse(
            &policy.network_allow_list.to_string(),
            rule.network_allow_list_max,
            self.ranges(),
        )
        .map_err(|e| e.message)?;
        DomainAllowList::parse(
            &policy.domain_allow_list.to_string(),
            rule.domain_allow_list_max,
        )
        .map_err(|e| e.message)?;
        // Deny lists only narrow: their grammar is checked, not the tier's
        // limits (a downgrade keeps a longer list in force).
        NetworkList::parse_deny_stored(&policy.network_deny_list.to_string(), self.ranges())
            .map_err(|e| e.message)?;
        DomainList::parse_deny(&policy.domain_deny_list.to_string(), usize::MAX)
            .map_err(|e| e.message)?;
        if let Some(egress) = &policy.egress_address {
            egress.check(self).map_err(|e| e.message)?;
        }
        // A tier with a maximum has no unbudgeted sandbox; the value
        // itself is checked below.
        if let (Some(max), None) = (rule.budgets.max.egress_mbps, policy.budgets.egress_mbps) {
            return Err(format!("tier {tier} sends at most {max} Mbit/s"));
        }
        if let (Some(max), None) = (
            rule.budgets.max.transfer_quota_mib,
            policy.budgets.transfer_quota_mib,
        ) {
            return Err(format!("tier {tier} transfers at most {max} MiB a period"));
        }
        if policy.budgets.transfer_quota_mib.is_some()
            && policy.budgets.transfer_period_seconds != Some(rule.budgets.transfer_period_seconds)
        {
            return Err(format!(
                "tier {tier}'s transfer period is {} seconds",
                rule.budgets.transfer_period_seconds
            ));
        }
        rule.budgets
            .check(
                tier,
                crate::budget::AskedBudgets {
                    egress_mbps: policy.budgets.egress_mbps,
                    transfer_quota_mib: policy.budgets.transfer_quota_mib,
                },
            )
            .map_err(|e| e.message)?;
        Ok(())
    }
}
