//! sandgate's egress policy engine.
//!
//! Pure: no I/O, no async, no clock. Everything of REQUIREMENTS.md section 1 that does
//! not touch the network lives here, so that the API, the dataplane, the DNS
//! service and the operator's dry-run commands all apply one set of rules:
//!
//! - [`NetworkAllowList`] and [`DomainAllowList`]: strict parsing with error
//!   codes and messages that name the bad entry and the fix;
//! - [`PolicyConfig`]: the tier table and list limits of the operator;
//! - [`PolicyConfig::resolve`]: (tier, stored settings) to an
//!   [`EffectivePolicy`] with its [`Mode`] and inactive settings;
//! - [`Ranges`]: the always-denied and private ranges;
//! - [`Catalog`]: the essential-services catalog in reverse-label notation;
//! - [`NameMatcher`]: exact and `*.` names in one trie on reversed labels;
//! - [`CompiledPolicy::explain`]: whether a destination is allowed, and why.
//!
//! ```
//! use sandgate_policy::{Catalog, CompiledPolicy, Destination, PolicyConfig, SettingsRequest};
//!
//! let config = PolicyConfig::default();
//! let catalog = Catalog::builtin();
//! let settings = config.settings_for_create(3, &SettingsRequest {
//!     network_allow_list: Some("192.0.2.0/24, 2001:db8::/32"),
//!     ..Default::default()
//! })?;
//! let policy = config.resolve(3, &settings)?;
//! assert_eq!(policy.mode.as_str(), "allowlist");
//!
//! let compiled = CompiledPolicy::new(policy, &catalog, &config);
//! let verdict = compiled.explain(&"192.0.2.7:443".parse()?);
//! assert!(verdict.allowed);
//! assert_eq!(verdict.reason.code(), "allow_list:192.0.2.0/24");
//! let verdict = compiled.explain(&"169.254.169.254".parse::<Destination>()?);
//! assert_eq!(verdict.reason.code(), "always_denied:metadata");
//! # Ok::<(), sandgate_policy::PolicyError>(())
//! ```

mod approval;
mod budget;
mod catalog;
mod config;
mod domain;
mod egress;
mod error;
mod explain;
mod grant;
mod http_rules;
mod list;
mod matcher;
mod network;
mod ranges;
mod resolve;
mod resources;
mod runtime_class;
mod shares;

pub use approval::{check_hold, Approvals, APPROVAL_HOLD_MAX, DECLINED_MAX};
pub use budget::{
    check_connection_budget, AskedBudgets, Budgets, TierBudgets, TierBudgetsRepr,
    DEFAULT_TRANSFER_PERIOD_SECONDS, EGRESS_MBPS_MAX, TRANSFER_QUOTA_MIB_MAX,
};
pub use catalog::{Catalog, Category, MergeMode, BUILTIN_CATALOG};
pub use config::{
    DeniedRepr, OtherPorts, PolicyConfig, PolicyConfigRepr, Tier, TierNetwork, TierRepr, TierRule,
    DEFAULT_DOMAIN_ALLOW_LIST_MAX, DEFAULT_DOMAIN_DENY_LIST_MAX, DEFAULT_NETWORK_ALLOW_LIST_MAX,
    DEFAULT_NETWORK_DENY_LIST_MAX,
};
pub use domain::{DomainAllowList, DomainList, DomainName, DomainPattern};
pub use egress::EgressAddress;
pub use error::{ErrorCode, PolicyError, Problem};
pub use explain::{CompiledPolicy, Destination, Reason, Target, Verdict, DNS_PORT};
pub use grant::{check_ttl, overlaps, Grant, GrantTarget, GRANT_TTL_MAX, GRANT_TTL_MIN};
pub use http_rules::{HttpRefusal, HttpRuleRequest, HttpRules, HTTP_RULES_MAX};
pub use matcher::{Match, NameMatcher};
pub use network::{NetworkAllowList, NetworkList};
pub use ranges::{NamedRange, RangeKind, Ranges, METADATA_SERVICES};
pub use resolve::{
    EffectivePolicy, InactiveSetting, Mode, NetworkSettings, SettingsRequest, StoredSettings,
};
pub use resources::{Resources, ResourcesRequest, TierResources, TierResourcesRepr};
pub use runtime_class::{RuntimeClass, TierRuntimeClasses};
pub use shares::{FairShares, FairSharesRepr};

/// What a name rule of a [`CompiledPolicy`] points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// The catalog category with this index.
    Essential(usize),
    /// The `domainAllowList` entry with this index.
    DomainAllowList(usize),
    /// The grant with this index.
    Grant(usize),
}
