//! The error type every user-caused failure of the policy engine becomes.
//!
//! One shape serves the CLI, the API and the SDKs: a stable machine code, a
//! sentence for a person that names the bad input and, where one exists, the
//! fix, and for list fields every problem found, entry by entry.

use serde::Serialize;
use std::fmt;

/// A stable, machine-readable error code. Clients match on these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `networkAllowList` is malformed or too long.
    InvalidNetworkAllowList,
    /// `domainAllowList` is malformed or too long.
    InvalidDomainAllowList,
    /// `networkDenyList` is malformed or too long.
    InvalidNetworkDenyList,
    /// `domainDenyList` is malformed or too long.
    InvalidDomainDenyList,
    /// A grant's target is no CIDR, address or name.
    InvalidGrantTarget,
    /// A grant's `ttlSeconds` is out of range.
    InvalidGrantTtl,
    /// An organization's egress address is not one a connection can
    /// leave from.
    InvalidEgressAddress,
    /// A budget (`egressMbps`) is no amount.
    InvalidBudget,
    /// A budget above the tier's maximum.
    BudgetExceedsTier,
    /// `approvalHoldSeconds` is out of range.
    InvalidApprovalHold,
    /// `httpRules` holds a rule that is no rule, or too many.
    InvalidHttpRules,
    /// An update of network settings sets nothing.
    InvalidNetworkSettings,
    /// The organization's tier does not allow sandbox-level network lists.
    NetworkRestrictedByTier,
    /// The tier is not in the operator's tier table.
    InvalidTier,
    /// A destination given to `explain` is neither an address nor a name.
    InvalidDestination,
    /// An essential-services catalog file is malformed.
    InvalidCatalog,
    /// The operator configuration is malformed.
    InvalidConfig,
    /// A create's `resources` hold a value that is no amount.
    InvalidResources,
    /// A create's `resources` ask for more than the tier allows.
    ResourcesExceedTier,
    /// A create's `runtimeClass` is one the tier does not allow.
    RuntimeClassNotAllowed,
}

impl ErrorCode {
    /// The code as it appears on the wire, e.g. `invalid_network_allow_list`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidNetworkAllowList => "invalid_network_allow_list",
            ErrorCode::InvalidDomainAllowList => "invalid_domain_allow_list",
            ErrorCode::InvalidNetworkDenyList => "invalid_network_deny_list",
            ErrorCode::InvalidDomainDenyList => "invalid_domain_deny_list",
            ErrorCode::InvalidGrantTarget => "invalid_grant_target",
            ErrorCode::InvalidGrantTtl => "invalid_grant_ttl",
            ErrorCode::InvalidEgressAddress => "invalid_egress_address",
            ErrorCode::InvalidBudget => "invalid_budget",
            ErrorCode::BudgetExceedsTier => "budget_exceeds_tier",
            ErrorCode::InvalidApprovalHold => "invalid_approval_hold",
            ErrorCode::InvalidHttpRules => "invalid_http_rules",
            ErrorCode::InvalidNetworkSettings => "invalid_network_settings",
            ErrorCode::NetworkRestrictedByTier => "network_restricted_by_tier",
            ErrorCode::InvalidTier => "invalid_tier",
            ErrorCode::InvalidDestination => "invalid_destination",
            ErrorCode::InvalidCatalog => "invalid_catalog",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::InvalidResources => "invalid_resources",
            ErrorCode::ResourcesExceedTier => "resources_exceed_tier",
            ErrorCode::RuntimeClassNotAllowed => "runtime_class_not_allowed",
        }
    }

    /// The HTTP status the API answers this error with.
    ///
    /// Bad input is 400; a tier that forbids what was asked is 403; an
    /// operator's own bad configuration is a server-side 500.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidNetworkAllowList
            | ErrorCode::InvalidDomainAllowList
            | ErrorCode::InvalidNetworkDenyList
            | ErrorCode::InvalidDomainDenyList
            | ErrorCode::InvalidGrantTarget
            | ErrorCode::InvalidGrantTtl
            | ErrorCode::InvalidEgressAddress
            | ErrorCode::InvalidBudget
            | ErrorCode::InvalidApprovalHold
            | ErrorCode::InvalidNetworkSettings
            | ErrorCode::InvalidHttpRules
            | ErrorCode::InvalidTier
            | ErrorCode::InvalidDestination
            | ErrorCode::InvalidResources => 400,
            ErrorCode::NetworkRestrictedByTier
            | ErrorCode::ResourcesExceedTier
            | ErrorCode::RuntimeClassNotAllowed
            | ErrorCode::BudgetExceedsTier => 403,
            ErrorCode::InvalidCatalog | ErrorCode::InvalidConfig => 500,
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One bad entry of a comma-separated list, or one bad item of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The entry exactly as the user wrote it (after trimming white space).
    pub entry: String,
    /// The 1-based position of the entry in its list (0 where not a list).
    pub position: usize,
    /// What is wrong with it, as a sentence that names the entry.
    pub message: String,
    /// The corrected entry, where there is an obvious one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

/// A failure the user (or the operator, for configuration) can fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyError {
    /// The stable code.
    pub code: ErrorCode,
    /// A sentence for a person: what is wrong, naming the input, and the fix.
    pub message: String,
    /// The request field at fault, in the API's camelCase, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    /// Every problem found, for list fields and files.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

impl PolicyError {
    /// An error with a code and a message and nothing else.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        PolicyError {
            code,
            message: message.into(),
            field: None,
            problems: Vec::new(),
        }
    }

    /// An error about the list in `field`, made of one or more problems.
    ///
    /// The message is that of the first problem, with a count of the others.
    pub fn from_problems(code: ErrorCode, field: &'static str, problems: Vec<Problem>) -> Self {
        let mut message = match problems.first() {
            Some(p) => p.message.clone(),
            None => format!("{field} is invalid"),
        };
        if problems.len() > 1 {
            let more = problems.len() - 1;
            let noun = if more == 1 { "problem" } else { "problems" };
            message.push_str(&format!(" ({more} more {noun} in {field})"));
        }
        PolicyError {
            code,
            message,
            field: Some(field),
            problems,
        }
    }

    /// The HTTP status the API answers this error with.
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for PolicyError {}
