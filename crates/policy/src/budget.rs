//! Budgets: what a sandbox may send (docs/REQUIREMENTS.md, "Budgets").
//!
//! Each tier has a default and a maximum in the operator's configuration
//! (`[policy.budgets]` for every tier, `[policy.tiers.N.budgets]` for
//! one); a sandbox may ask for less than the maximum, never more. No
//! value is no limit of its own (the host's capacity and the fair shares
//! still bound it). Validation is here; the dataplane enforces.

use crate::error::{ErrorCode, PolicyError};
use serde::{Deserialize, Serialize};

/// The largest bandwidth limit anyone may write, megabits a second (100
/// Gbit/s): above it a limit means nothing on one host.
pub const EGRESS_MBPS_MAX: u32 = 100_000;

/// A sandbox's budgets as enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budgets {
    /// Egress bandwidth, megabits a second (bytes on the wire, headers
    /// included); `None`: no limit of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_mbps: Option<u32>,
}

impl Budgets {
    /// Whether it sets no limit.
    pub fn is_empty(&self) -> bool {
        self.egress_mbps.is_none()
    }
}

/// A tier's budgets: what a sandbox gets when it asks for nothing, and
/// the most it may ask for (`None`: no default limit, no maximum).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct TierBudgets {
    /// When the sandbox asks for nothing.
    pub default: Budgets,
    /// The most it may ask for.
    pub max: Budgets,
}

/// Budgets as written in the configuration, each key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierBudgetsRepr {
    /// The default egress bandwidth, Mbit/s.
    pub egress_mbps: Option<u32>,
    /// The most egress bandwidth a sandbox may ask for, Mbit/s.
    pub max_egress_mbps: Option<u32>,
}

/// Checks a connection budget a sandbox asked for (`maxConnections`,
/// `newConnectionsPerSecond`) against its tier's fair share of it, which
/// is both the default and the maximum: 400 `invalid_budget` for 0, 403
/// `budget_exceeds_tier` above the tier's.
pub fn check_connection_budget(
    tier: u8,
    field: &'static str,
    asked: Option<u32>,
    tier_share: u32,
) -> Result<(), PolicyError> {
    match asked {
        Some(0) => Err(PolicyError {
            field: Some(field),
            ..PolicyError::new(
                ErrorCode::InvalidBudget,
                format!("{field} 0 would refuse every connection (networkBlockAll says that more plainly); give 1 to {tier_share}, or null for the tier's"),
            )
        }),
        Some(n) if n > tier_share => Err(PolicyError {
            field: Some(field),
            ..PolicyError::new(
                ErrorCode::BudgetExceedsTier,
                format!("{field} {n} is more than tier {tier} allows ({tier_share}); ask for at most that, or ask the operator for a higher tier"),
            )
        }),
        _ => Ok(()),
    }
}

/// The lower of two limits, `None` being none.
fn lower(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl TierBudgetsRepr {
    /// `base` with the keys written here in place of its own.
    pub fn over(&self, base: TierBudgets, key: &str) -> Result<TierBudgets, PolicyError> {
        let mbps = |name: &str, v: Option<u32>, d: Option<u32>| match v {
            Some(0) => Err(PolicyError::new(
                ErrorCode::InvalidConfig,
                format!("{key}.{name} must be above 0 (leave it out for no limit)"),
            )),
            Some(n) if n > EGRESS_MBPS_MAX => Err(PolicyError::new(
                ErrorCode::InvalidConfig,
                format!("{key}.{name} is {n}, above {EGRESS_MBPS_MAX} Mbit/s"),
            )),
            Some(n) => Ok(Some(n)),
            None => Ok(d),
        };
        let budgets = TierBudgets {
            default: Budgets {
                egress_mbps: mbps("egress_mbps", self.egress_mbps, base.default.egress_mbps)?,
            },
            max: Budgets {
                egress_mbps: mbps(
                    "max_egress_mbps",
                    self.max_egress_mbps,
                    base.max.egress_mbps,
                )?,
            },
        };
        if let (Some(d), Some(m)) = (budgets.default.egress_mbps, budgets.max.egress_mbps) {
            if d > m {
                return Err(PolicyError::new(
                    ErrorCode::InvalidConfig,
                    format!("{key}: egress_mbps {d} is above max_egress_mbps {m}"),
                ));
            }
        }
        Ok(budgets)
    }
}

impl TierBudgets {
    /// Checks what a sandbox of `tier` asks for: 400 `invalid_budget` for
    /// a value that is no amount, 403 `budget_exceeds_tier` above the
    /// tier's maximum.
    pub fn check(&self, tier: u8, egress_mbps: Option<u32>) -> Result<(), PolicyError> {
        let Some(asked) = egress_mbps else {
            return Ok(());
        };
        if asked == 0 || asked > EGRESS_MBPS_MAX {
            return Err(PolicyError {
                field: Some("egressMbps"),
                ..PolicyError::new(
                    ErrorCode::InvalidBudget,
                    format!("egressMbps {asked} is no limit: give megabits a second from 1 to {EGRESS_MBPS_MAX}, or null for the tier's default"),
                )
            });
        }
        if let Some(max) = self.max.egress_mbps.filter(|m| asked > *m) {
            return Err(PolicyError {
                field: Some("egressMbps"),
                ..PolicyError::new(
                    ErrorCode::BudgetExceedsTier,
                    format!("egressMbps {asked} is more than tier {tier} allows ({max} Mbit/s); ask for at most that, or ask the operator for a higher tier"),
                )
            });
        }
        Ok(())
    }

    /// What a sandbox that asked for `egress_mbps` (`None`: nothing) gets
    /// now: its value or the default, never above the maximum (a tier
    /// lowered since keeps the sandbox within the new one).
    pub fn resolve(&self, egress_mbps: Option<u32>) -> Budgets {
        Budgets {
            egress_mbps: lower(
                egress_mbps.or(self.default.egress_mbps),
                self.max.egress_mbps,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tier(default: Option<u32>, max: Option<u32>) -> TierBudgets {
        TierBudgetsRepr {
            egress_mbps: default,
            max_egress_mbps: max,
        }
        .over(TierBudgets::default(), "policy.budgets")
        .unwrap()
    }

    #[test]
    fn a_sandbox_gets_what_it_asks_or_the_default_never_above_the_maximum() {
        let cases = [
            // (default, max, asked, in force)
            (None, None, None, None),
            (None, None, Some(40), Some(40)),
            (Some(100), None, None, Some(100)),
            (Some(100), Some(1000), Some(500), Some(500)),
            (Some(100), Some(1000), Some(20), Some(20)),
            (None, Some(50), None, Some(50)),
            // Asked under an earlier, higher maximum: the new one wins.
            (None, Some(50), Some(200), Some(50)),
        ];
        for (d, m, asked, want) in cases {
            assert_eq!(
                tier(d, m).resolve(asked).egress_mbps,
                want,
                "{d:?} {m:?} {asked:?}"
            );
        }
    }

    #[test]
    fn asking_for_no_amount_or_above_the_maximum_is_refused_with_its_code() {
        let t = tier(Some(10), Some(100));
        assert_eq!(t.check(3, None), Ok(()));
        assert_eq!(t.check(3, Some(100)), Ok(()));
        let err = t.check(3, Some(0)).unwrap_err();
        assert_eq!(
            (err.code, err.field),
            (ErrorCode::InvalidBudget, Some("egressMbps"))
        );
        let err = t.check(3, Some(EGRESS_MBPS_MAX + 1)).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidBudget);
        let err = t.check(3, Some(101)).unwrap_err();
        assert_eq!(err.code, ErrorCode::BudgetExceedsTier);
        assert!(
            err.message.contains("tier 3 allows (100 Mbit/s)"),
            "{}",
            err.message
        );
        assert_eq!(tier(None, None).check(1, Some(EGRESS_MBPS_MAX)), Ok(()));
    }

    #[test]
    fn the_configuration_refuses_zero_and_a_default_above_its_maximum() {
        let repr = |d, m| TierBudgetsRepr {
            egress_mbps: d,
            max_egress_mbps: m,
        };
        for bad in [
            repr(Some(0), None),
            repr(None, Some(0)),
            repr(Some(200), Some(100)),
        ] {
            let err = bad
                .over(TierBudgets::default(), "policy.budgets")
                .unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidConfig, "{bad:?}");
        }
        // A tier's row over every tier's.
        let all = tier(Some(10), Some(100));
        let row = repr(None, Some(1000))
            .over(all, "policy.tiers.4.budgets")
            .unwrap();
        assert_eq!(
            (row.default.egress_mbps, row.max.egress_mbps),
            (Some(10), Some(1000))
        );
    }
}
