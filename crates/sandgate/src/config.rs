//! The operator configuration file, `sandgate.toml`.
//!
//! ```toml
//! [policy]                      # see sandgate_policy::PolicyConfigRepr
//! network_allow_list_max = 5
//! [policy.tiers."3"]
//! network = "configurable"
//!
//! [catalog]
//! file = "/etc/sandgate/catalog.toml"   # extends or replaces the shipped catalog
//!
//! [placement.tiers."4"]         # sandboxes of tier 4 go to runners
//! labels = { pool = "dedicated" } # registered with these labels only
//! ```
//!
//! Found through `--config PATH` or `SANDGATE_CONFIG`; without either, the
//! defaults of REQUIREMENTS.md section 1 apply.

use sandgate_policy::{Catalog, ErrorCode, PolicyConfig, PolicyConfigRepr, PolicyError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The whole configuration file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRepr {
    #[serde(default)]
    policy: PolicyConfigRepr,
    #[serde(default)]
    catalog: CatalogRepr,
    #[serde(default)]
    placement: PlacementRepr,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementRepr {
    /// By tier: the labels a runner must carry to take its sandboxes.
    #[serde(default)]
    tiers: BTreeMap<String, TierPlacementRepr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierPlacementRepr {
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogRepr {
    /// An operator catalog file, relative to the configuration file.
    file: Option<PathBuf>,
}

/// The loaded configuration: policy rules and the catalog.
#[derive(Debug, Clone)]
pub struct Config {
    /// The policy part.
    pub policy: PolicyConfig,
    /// The essential-services catalog, with the operator's file applied.
    pub catalog: Catalog,
    /// By tier, the labels a runner must carry to take its sandboxes.
    pub placement: BTreeMap<u8, BTreeMap<String, String>>,
}

fn config_error(message: String) -> PolicyError {
    PolicyError::new(ErrorCode::InvalidConfig, message)
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path)
        .map_err(|e| config_error(format!("cannot read {}: {e}", path.display())))
}

impl Config {
    /// Loads the configuration from `path`, or the defaults when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, PolicyError> {
        let Some(path) = path else {
            return Ok(Config {
                policy: PolicyConfig::default(),
                catalog: Catalog::builtin(),
                placement: BTreeMap::new(),
            });
        };
        let text = read(path)?;
        let repr: FileRepr = toml::from_str(&text)
            .map_err(|e| config_error(format!("{} is invalid: {e}", path.display())))?;
        let policy = PolicyConfig::from_repr(repr.policy)
            .map_err(|e| config_error(format!("{}: {}", path.display(), e.message)))?;
        let mut catalog = Catalog::builtin();
        if let Some(file) = repr.catalog.file {
            let file = match path.parent() {
                Some(dir) if file.is_relative() => dir.join(file),
                _ => file,
            };
            let text = read(&file)?;
            catalog = catalog.with_operator_file(&text, &file.display().to_string())?;
        }
        let mut placement = BTreeMap::new();
        for (tier, row) in repr.placement.tiers {
            let t: u8 = tier
                .parse()
                .ok()
                .filter(|t: &u8| policy.tier(*t).is_ok())
                .ok_or_else(|| {
                    config_error(format!(
                        "{}: placement.tiers has \"{tier}\", not a tier of the tier table",
                        path.display()
                    ))
                })?;
            for (k, v) in &row.labels {
                sandgate_server::fleet::check_label("name", k)
                    .and_then(|()| sandgate_server::fleet::check_label("value", v))
                    .map_err(|e| config_error(format!("{}: placement: {e}", path.display())))?;
            }
            placement.insert(t, row.labels);
        }
        Ok(Config {
            policy,
            catalog,
            placement,
        })
    }
}
