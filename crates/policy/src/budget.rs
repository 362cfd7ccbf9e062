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

/// The largest transfer quota anyone may write, MiB a period (1 PiB).
pub const TRANSFER_QUOTA_MIB_MAX: u32 = 1 << 30;

/// The period of transfer quotas unless the operator sets one: a day.
pub const DEFAULT_TRANSFER_PERIOD_SECONDS: u32 = 86_400;

/// The shortest and longest transfer period an operator may set (a
/// minute; 366 days).
pub const TRANSFER_PERIOD_RANGE: std::ops::RangeInclusive<u32> = 60..=31_622_400;

/// A sandbox's budgets as enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budgets {
    /// Egress bandwidth, megabits a second (bytes on the wire, headers
    /// included); `None`: no limit of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_mbps: Option<u32>,
    /// Bytes both ways a period, MiB (IP packets, headers included);
    /// `None`: no quota.
    #[serde(
        default,
        rename = "transferQuotaMiB",
        skip_serializing_if = "Option::is_none"
    )]
    pub transfer_quota_mib: Option<u32>,
    /// The period of the quota, seconds (in force only with a quota):
    /// periods start at multiples of it since the Unix epoch (a day's at
    /// 00:00 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_period_seconds: Option<u32>,
}

impl Budgets {
    /// Whether it sets no limit.
    pub fn is_empty(&self) -> bool {
        self.egress_mbps.is_none() && self.transfer_quota_mib.is_none()
    }
}

/// What a sandbox asked for, each `None` when it asked for nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AskedBudgets {
    /// `egressMbps`.
    pub egress_mbps: Option<u32>,
    /// `transferQuotaMiB`.
    pub transfer_quota_mib: Option<u32>,
}

/// A tier's budgets: what a sandbox gets when it asks for nothing, and
/// the most it may ask for (`None`: no default limit, no maximum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct TierBudgets {
    /// When the sandbox asks for nothing.
    pub default: Budgets,
    /// The most it may ask for.
    pub max: Budgets,
    /// The period of transfer quotas, seconds.
    pub transfer_period_seconds: u32,
}

impl Default for TierBudgets {
    fn default() -> Self {
        TierBudgets {
            default: Budgets::default(),
            max: Budgets::default(),
            transfer_period_seconds: DEFAULT_TRANSFER_PERIOD_SECONDS,
        }
    }
}

/// Budgets as written in the configuration, each key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierBudgetsRepr {
    /// The default egress bandwidth, Mbit/s.
    pub egress_mbps: Option<u32>,
    /// The most egress bandwidth a sandbox may ask for, Mbit/s.
    pub max_egress_mbps: Option<u32>,
    /// The default transfer quota, MiB a period.
    pub transfer_quota_mib: Option<u32>,
    /// The most transfer quota a sandbox may ask for, MiB a period.
    pub max_transfer_quota_mib: Option<u32>,
    /// The period of transfer quotas, seconds.
    pub transfer_period_seconds: Option<u32>,
}

/// One budget's name in the API and the configuration, its unit, and its
/// largest value.
struct Kind {
    field: &'static str,
    key: &'static str,
    unit: &'static str,
    max: u32,
}

const EGRESS: Kind = Kind {
    field: "egressMbps",
    key: "egress_mbps",
    unit: "Mbit/s",
    max: EGRESS_MBPS_MAX,
};

const TRANSFER: Kind = Kind {
    field: "transferQuotaMiB",
    key: "transfer_quota_mib",
    unit: "MiB a period",
    max: TRANSFER_QUOTA_MIB_MAX,
};

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
        let value = |kind: &Kind, name: String, v: Option<u32>, d: Option<u32>| match v {
            Some(0) => Err(PolicyError::new(
                ErrorCode::InvalidConfig,
                format!("{key}.{name} must be above 0 (leave it out for no limit)"),
            )),
            Some(n) if n > kind.max => Err(PolicyError::new(
                ErrorCode::InvalidConfig,
                format!("{key}.{name} is {n}, above {} {}", kind.max, kind.unit),
            )),
            Some(n) => Ok(Some(n)),
            None => Ok(d),
        };
        let pair = |kind: &Kind, d: Option<u32>, m: Option<u32>, base_d, base_m| {
            let d = value(kind, kind.key.to_string(), d, base_d)?;
            let m = value(kind, format!("max_{}", kind.key), m, base_m)?;
            if let (Some(d), Some(m)) = (d, m) {
                if d > m {
                    return Err(PolicyError::new(
                        ErrorCode::InvalidConfig,
                        format!("{key}: {} {d} is above max_{} {m}", kind.key, kind.key),
                    ));
                }
            }
            Ok((d, m))
        };
        let (egress_d, egress_m) = pair(
            &EGRESS,
            self.egress_mbps,
            self.max_egress_mbps,
            base.default.egress_mbps,
            base.max.egress_mbps,
        )?;
        let (transfer_d, transfer_m) = pair(
            &TRANSFER,
            self.transfer_quota_mib,
            self.max_transfer_quota_mib,
            base.default.transfer_quota_mib,
            base.max.transfer_quota_mib,
        )?;
        let period = self
            .transfer_period_seconds
            .unwrap_or(base.transfer_period_seconds);
        if !TRANSFER_PERIOD_RANGE.contains(&period) {
            return Err(PolicyError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "{key}.transfer_period_seconds is {period}: give {} to {} seconds",
                    TRANSFER_PERIOD_RANGE.start(),
                    TRANSFER_PERIOD_RANGE.end()
                ),
            ));
        }
        Ok(TierBudgets {
            default: Budgets {
                egress_mbps: egress_d,
                transfer_quota_mib: transfer_d,
                transfer_period_seconds: None,
            },
            max: Budgets {
                egress_mbps: egress_m,
                transfer_quota_mib: transfer_m,
                transfer_period_seconds: None,
            },
            transfer_period_seconds: period,
        })
    }
}

impl TierBudgets {
    /// Checks what a sandbox of `tier` asks for: 400 `invalid_budget` for
    /// a value that is no amount, 403 `budget_exceeds_tier` above the
    /// tier's maximum.
    pub fn check(&self, tier: u8, asked: AskedBudgets) -> Result<(), PolicyError> {
        check_one(&EGRESS, tier, asked.egress_mbps, self.max.egress_mbps)?;
        check_one(
            &TRANSFER,
            tier,
            asked.transfer_quota_mib,
            self.max.transfer_quota_mib,
        )
    }

    /// What a sandbox that asked for `asked` gets now: its values or the
    /// defaults, never above the maxima (a tier lowered since keeps the
    /// sandbox within the new one).
    pub fn resolve(&self, asked: AskedBudgets) -> Budgets {
        let transfer_quota_mib = lower(
            asked.transfer_quota_mib.or(self.default.transfer_quota_mib),
            self.max.transfer_quota_mib,
        );
        Budgets {
            egress_mbps: lower(
                asked.egress_mbps.or(self.default.egress_mbps),
                self.max.egress_mbps,
            ),
            transfer_quota_mib,
            transfer_period_seconds: transfer_quota_mib.map(|_| self.transfer_period_seconds),
        }
    }
}

/// Checks one budget a sandbox asked for against its largest value and
/// its tier's maximum.
fn check_one(
    kind: &Kind,
    tier: u8,
    asked: Option<u32>,
    max: Option<u32>,
) -> Result<(), PolicyError> {
    let Some(asked) = asked else {
        return Ok(());
    };
    let field = kind.field;
    if asked == 0 || asked > kind.max {
        return Err(PolicyError {
            field: Some(field),
            ..PolicyError::new(
                ErrorCode::InvalidBudget,
                format!("{field} {asked} is no limit: give 1 to {} ({}), or null for the tier's default", kind.max, kind.unit),
            )
        });
    }
    if let Some(max) = max.filter(|m| asked > *m) {
        return Err(PolicyError {
            field: Some(field),
            ..PolicyError::new(
                ErrorCode::BudgetExceedsTier,
                format!("{field} {asked} is more than tier {tier} allows ({max} {}); ask for at most that, or ask the operator for a higher tier", kind.unit),
            )
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn egress(mbps: Option<u32>) -> AskedBudgets {
        AskedBudgets {
            egress_mbps: mbps,
            ..Default::default()
        }
    }

    fn tier(default: Option<u32>, max: Option<u32>) -> TierBudgets {
        TierBudgetsRepr {
            egress_mbps: default,
            max_egress_mbps: max,
            ..Default::default()
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
                tier(d, m).resolve(egress(asked)).egress_mbps,
                want,
                "{d:?} {m:?} {asked:?}"
            );
        }
    }

    #[test]
    fn asking_for_no_amount_or_above_the_maximum_is_refused_with_its_code() {
        let t = tier(Some(10), Some(100));
        assert_eq!(t.check(3, egress(None)), Ok(()));
        assert_eq!(t.check(3, egress(Some(100))), Ok(()));
        let err = t.check(3, egress(Some(0))).unwrap_err();
        assert_eq!(
            (err.code, err.field),
            (ErrorCode::InvalidBudget, Some("egressMbps"))
        );
        let err = t.check(3, egress(Some(EGRESS_MBPS_MAX + 1))).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidBudget);
        let err = t.check(3, egress(Some(101))).unwrap_err();
        assert_eq!(err.code, ErrorCode::BudgetExceedsTier);
        assert!(
            err.message.contains("tier 3 allows (100 Mbit/s)"),
            "{}",
            err.message
        );
        assert_eq!(
            tier(None, None).check(1, egress(Some(EGRESS_MBPS_MAX))),
            Ok(())
        );
    }

    #[test]
    fn the_configuration_refuses_zero_and_a_default_above_its_maximum() {
        let repr = |d, m| TierBudgetsRepr {
            egress_mbps: d,
            max_egress_mbps: m,
            ..Default::default()
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

    #[test]
    fn a_transfer_quota_resolves_with_its_period_and_is_checked_like_bandwidth() {
        let t = TierBudgetsRepr {
            transfer_quota_mib: Some(1024),
            max_transfer_quota_mib: Some(10_240),
            transfer_period_seconds: Some(3600),
            ..Default::default()
        }
        .over(TierBudgets::default(), "policy.budgets")
        .unwrap();
        let asked = |mib| AskedBudgets {
            transfer_quota_mib: mib,
            ..Default::default()
        };
        let got = t.resolve(asked(None));
        assert_eq!(
            (got.transfer_quota_mib, got.transfer_period_seconds),
            (Some(1024), Some(3600))
        );
        assert_eq!(t.resolve(asked(Some(5))).transfer_quota_mib, Some(5));
        // No quota, no period in force.
        let none = TierBudgets::default().resolve(asked(None));
        assert_eq!(none, Budgets::default());
        assert!(none.is_empty());
        let err = t.check(3, asked(Some(10_241))).unwrap_err();
        assert_eq!(
            (err.code, err.field),
            (ErrorCode::BudgetExceedsTier, Some("transferQuotaMiB"))
        );
        assert!(
            err.message.contains("10240 MiB a period"),
            "{}",
            err.message
        );
        let err = t.check(3, asked(Some(0))).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidBudget);
        // The view names it as the API does.
        let json = serde_json::to_value(got).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"transferQuotaMiB": 1024, "transferPeriodSeconds": 3600})
        );
        // A period outside a minute to 366 days is refused.
        for bad in [59, 31_622_401] {
            let err = TierBudgetsRepr {
                transfer_period_seconds: Some(bad),
                ..Default::default()
            }
            .over(TierBudgets::default(), "policy.budgets")
            .unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidConfig, "{bad}");
            assert!(
                err.message.contains("transfer_period_seconds"),
                "{}",
                err.message
            );
        }
    }
}
