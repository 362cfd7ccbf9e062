//! Approvals: asking to allow (docs/REQUIREMENTS.md, "Approvals").
//!
//! With `networkApprovals`, a name the DNS service refuses or a connection
//! the kernel denies opens an access request that the sandbox's owner may
//! approve (a grant, or a permanent list entry) or deny. With
//! `approvalHoldSeconds`, the DNS query that was refused is held that long
//! first, so that an approval in time answers it. Approvals take effect in
//! `allowlist` mode only, as grants do: a restricted tier may not have
//! them, open mode has nothing to ask for, blocked reaches nothing.

use crate::error::{ErrorCode, PolicyError};
use serde::{Deserialize, Serialize};

/// The longest a refused query is held for an approval, seconds.
pub const APPROVAL_HOLD_MAX: u32 = 60;

/// The most names a sandbox's owner can have denied (a sandbox holds at
/// most this many access requests).
pub const DECLINED_MAX: usize = 100;

/// Approvals as a policy in force carries them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Approvals {
    /// How long the DNS service holds a refused query for an approval
    /// (0: it answers at once).
    pub hold_seconds: u8,
    /// Names whose access request the owner denied (lowercase): a query
    /// for one is refused at once, never held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub declined: Vec<String>,
}

impl Approvals {
    /// Whether the owner denied `name` (lowercase, no trailing dot).
    pub fn declined(&self, name: &str) -> bool {
        self.declined.iter().any(|d| d == name)
    }

    /// Whether it is one the API gives: a hold of 0 to 60 s, at most
    /// [`DECLINED_MAX`] names, each a name.
    pub fn check(&self) -> Result<(), String> {
        check_hold(u32::from(self.hold_seconds)).map_err(|e| e.message)?;
        if self.declined.len() > DECLINED_MAX {
            return Err(format!("more than {DECLINED_MAX} declined names"));
        }
        // As the DNS service reads names: lowercase letters, digits, '-'
        // and '_' in labels, at most 253 bytes.
        for name in &self.declined {
            let plain = name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if name.is_empty() || name.len() > 253 || !plain {
                return Err(format!("declined name {name:?} is no name"));
            }
        }
        Ok(())
    }
}

/// `approvalHoldSeconds` as a request sends it: 0 to 60; 400
/// `invalid_approval_hold` otherwise.
pub fn check_hold(seconds: u32) -> Result<u8, PolicyError> {
    match u8::try_from(seconds) {
        Ok(s) if seconds <= APPROVAL_HOLD_MAX => Ok(s),
        _ => Err(PolicyError {
            field: Some("approvalHoldSeconds"),
            ..PolicyError::new(
                ErrorCode::InvalidApprovalHold,
                format!("approvalHoldSeconds is {seconds}; a query is held at most {APPROVAL_HOLD_MAX} seconds"),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_zero_to_sixty_seconds() {
        assert_eq!(check_hold(0).unwrap(), 0);
        assert_eq!(check_hold(60).unwrap(), 60);
        for bad in [61, 256, u32::MAX] {
            let e = check_hold(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidApprovalHold);
            assert_eq!(e.code.http_status(), 400);
        }
    }
}
