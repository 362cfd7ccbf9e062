//! A sandbox's resources: memory, CPU and disk (docs/REQUIREMENTS.md,
//! "Resources"). Each tier has defaults and maxima in the operator's
//! configuration; a create may ask for less than the maxima (or more than
//! the defaults, up to the maxima), never more. Validation is here, with
//! the other rules of a request; applying them is the runtime's.

use crate::error::{ErrorCode, PolicyError};
use serde::{Deserialize, Serialize};

/// What a sandbox gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Memory, MiB (swap included): a sandbox over it has a process killed,
    /// in it alone.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    /// CPU time, in thousandths of a core.
    #[serde(rename = "cpuMillicores")]
    pub cpu_millicores: u32,
    /// Disk, MiB: what the sandbox may write over its snapshot; a full
    /// disk is full for that sandbox only.
    #[serde(rename = "diskMiB")]
    pub disk_mib: u64,
}

/// A tier's resources: what a sandbox gets when it asks for nothing, and
/// the most it may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct TierResources {
    /// When the create asks for nothing.
    pub default: Resources,
    /// The most a create may ask for.
    pub max: Resources,
}

impl Default for TierResources {
    fn default() -> Self {
        TierResources {
            default: Resources {
                memory_mib: 1024,
                cpu_millicores: 1000,
                disk_mib: 2048,
            },
            max: Resources {
                memory_mib: 4096,
                cpu_millicores: 2000,
                disk_mib: 10240,
            },
        }
    }
}

/// Resources as written in the configuration, each key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierResourcesRepr {
    /// Default memory, MiB.
    pub memory_mib: Option<u64>,
    /// Default CPU, cores (0.5 is half a core).
    pub cpus: Option<f64>,
    /// Default disk, MiB.
    pub disk_mib: Option<u64>,
    /// The most memory a create may ask for, MiB.
    pub max_memory_mib: Option<u64>,
    /// The most CPU a create may ask for, cores.
    pub max_cpus: Option<f64>,
    /// The most disk a create may ask for, MiB.
    pub max_disk_mib: Option<u64>,
}

/// Cores as thousandths, for a key of the configuration or a request.
fn millicores(cores: f64) -> Option<u32> {
    let m = (cores * 1000.0).round();
    (cores.is_finite() && m >= 1.0 && m <= f64::from(u32::MAX)).then_some(m as u32)
}

impl TierResourcesRepr {
    /// `base` with the keys written here in place of its own.
    pub fn over(&self, base: TierResources, key: &str) -> Result<TierResources, PolicyError> {
        let bad = |what: &str| {
            PolicyError::new(
                ErrorCode::InvalidConfig,
                format!("{key}.{what} must be above 0"),
            )
        };
        let size = |name: &str, v: Option<u64>, d: u64| match v {
            Some(0) => Err(bad(name)),
            Some(n) => Ok(n),
            None => Ok(d),
        };
        let cpu = |name: &str, v: Option<f64>, d: u32| match v {
            Some(c) => millicores(c).ok_or_else(|| bad(name)),
            None => Ok(d),
        };
        let r = TierResources {
            default: Resources {
                memory_mib: size("memory_mib", self.memory_mib, base.default.memory_mib)?,
                cpu_millicores: cpu("cpus", self.cpus, base.default.cpu_millicores)?,
                disk_mib: size("disk_mib", self.disk_mib, base.default.disk_mib)?,
            },
            max: Resources {
                memory_mib: size("max_memory_mib", self.max_memory_mib, base.max.memory_mib)?,
                cpu_millicores: cpu("max_cpus", self.max_cpus, base.max.cpu_millicores)?,
                disk_mib: size("max_disk_mib", self.max_disk_mib, base.max.disk_mib)?,
            },
        };
        let d = r.default;
        let m = r.max;
        if d.memory_mib > m.memory_mib
            || d.cpu_millicores > m.cpu_millicores
            || d.disk_mib > m.disk_mib
        {
            return Err(PolicyError::new(
                ErrorCode::InvalidConfig,
                format!("{key}: a default is above its maximum"),
            ));
        }
        Ok(r)
    }
}

/// The resources of a create request, as sent (camelCase, each optional).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesRequest {
    /// Memory, MiB.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: Option<u64>,
    /// CPU, cores (0.5 is half a core).
    pub cpus: Option<f64>,
    /// Disk, MiB.
    #[serde(rename = "diskMiB")]
    pub disk_mib: Option<u64>,
}

impl TierResources {
    /// What a create asking for `request` gets in a tier with these
    /// resources: 400 `invalid_resources` for a value that is no amount,
    /// 403 `resources_exceed_tier` for more than the tier's maximum.
    pub fn resolve(&self, tier: u8, request: &ResourcesRequest) -> Result<Resources, PolicyError> {
        let invalid = |field: &str, why: String| {
            PolicyError::new(
                ErrorCode::InvalidResources,
                format!("resources.{field}: {why}"),
            )
        };
        let over = |field: &str, asked: String, max: String| {
            PolicyError::new(
                ErrorCode::ResourcesExceedTier,
                format!("resources.{field}: {asked} is more than tier {tier} allows ({max}); ask for at most that, or ask the operator for a higher tier"),
            )
        };
        let memory_mib = match request.memory_mib {
            None => self.default.memory_mib,
            Some(0) => return Err(invalid("memoryMiB", "give a number of MiB above 0".into())),
            Some(m) if m > self.max.memory_mib => {
                return Err(over(
                    "memoryMiB",
                    format!("{m} MiB"),
                    format!("{} MiB", self.max.memory_mib),
                ))
            }
            Some(m) => m,
        };
        let cpu_millicores = match request.cpus {
            None => self.default.cpu_millicores,
            Some(c) => {
                let m = millicores(c).ok_or_else(|| {
                    invalid(
                        "cpus",
                        format!("{c} is not a number of cores of at least 0.001"),
                    )
                })?;
                if m > self.max.cpu_millicores {
                    return Err(over(
                        "cpus",
                        format!("{c} cores"),
                        format!("{} cores", f64::from(self.max.cpu_millicores) / 1000.0),
                    ));
                }
                m
            }
        };
        let disk_mib = match request.disk_mib {
            None => self.default.disk_mib,
            Some(0) => return Err(invalid("diskMiB", "give a number of MiB above 0".into())),
            Some(d) if d > self.max.disk_mib => {
                return Err(over(
                    "diskMiB",
                    format!("{d} MiB"),
                    format!("{} MiB", self.max.disk_mib),
                ))
            }
            Some(d) => d,
        };
        Ok(Resources {
            memory_mib,
            cpu_millicores,
            disk_mib,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_gets_the_default_or_what_it_asks_within_the_maximum() {
        let t = TierResources::default();
        assert_eq!(
            t.resolve(3, &ResourcesRequest::default()).unwrap(),
            t.default
        );
        let asked = ResourcesRequest {
            memory_mib: Some(256),
            cpus: Some(0.5),
            disk_mib: Some(4096),
        };
        assert_eq!(
            t.resolve(3, &asked).unwrap(),
            Resources {
                memory_mib: 256,
                cpu_millicores: 500,
                disk_mib: 4096
            }
        );
        let more = ResourcesRequest {
            memory_mib: Some(8192),
            ..Default::default()
        };
        let e = t.resolve(3, &more).unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourcesExceedTier);
        assert!(e.message.contains("4096 MiB"), "{}", e.message);
        for bad in [
            ResourcesRequest {
                cpus: Some(f64::NAN),
                ..Default::default()
            },
            ResourcesRequest {
                cpus: Some(-1.0),
                ..Default::default()
            },
            ResourcesRequest {
                cpus: Some(0.0),
                ..Default::default()
            },
            ResourcesRequest {
                disk_mib: Some(0),
                ..Default::default()
            },
        ] {
            assert_eq!(
                t.resolve(3, &bad).unwrap_err().code,
                ErrorCode::InvalidResources
            );
        }
    }
}
