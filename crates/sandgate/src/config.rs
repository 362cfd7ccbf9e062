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
//!
//! [images]                      # snapshots from OCI images (POST /api/snapshots)
//! max_bytes = 8589934592        # the most an image's layers may add up to
//! max_unpacked_bytes = 34359738368   # and a snapshot's files, unpacked
//! [[images.registries]]         # the only registries a runner pulls from
//! host = "registry.example.com:5000"
//! ca_file = "/etc/sandgate/registry-ca.pem"   # trusted beside the built-in roots
//! username = "puller"
//! password_file = "/etc/sandgate/registry-password"
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
    #[serde(default)]
    images: ImagesRepr,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImagesRepr {
    /// The most an image's layers may add up to, bytes.
    max_bytes: Option<u64>,
    /// The most a snapshot's files may add up to unpacked, bytes.
    max_unpacked_bytes: Option<u64>,
    /// The registries runners may pull from.
    #[serde(default)]
    registries: Vec<RegistryRepr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryRepr {
    host: String,
    #[serde(default)]
    insecure: bool,
    ca_file: Option<PathBuf>,
    username: Option<String>,
    /// A file holding the password (never the password itself in this
    /// file, which many can read).
    password_file: Option<PathBuf>,
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
    /// The registries runners pull images from (none unless said).
    pub registries: Vec<sandgate_images::Registry>,
    /// The most an image's layers may add up to, bytes (the runner's
    /// default unless said).
    pub max_image_bytes: Option<u64>,
    /// The most a snapshot's files may add up to unpacked, bytes (the
    /// runtime's default unless said).
    pub max_unpacked_bytes: Option<u64>,
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
                registries: Vec::new(),
                max_image_bytes: None,
                max_unpacked_bytes: None,
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
        let mut registries = Vec::new();
        for r in repr.images.registries {
            if r.host.is_empty() || r.host.contains('/') || r.host.chars().any(char::is_whitespace)
            {
                return Err(config_error(format!(
                    "{}: images.registries: {:?} is no registry host (host, or host:port)",
                    path.display(),
                    r.host
                )));
            }
            let relative = |file: PathBuf| match path.parent() {
                Some(dir) if file.is_relative() => dir.join(file),
                _ => file,
            };
            let password = match r.password_file {
                Some(file) => Some(read(&relative(file))?.trim().to_string()),
                None => None,
            };
            if r.username.is_some() != password.is_some() {
                return Err(config_error(format!(
                    "{}: images.registries {}: username and password_file go together",
                    path.display(),
                    r.host
                )));
            }
            registries.push(sandgate_images::Registry {
                host: r.host,
                insecure: r.insecure,
                ca_file: r.ca_file.map(relative),
                username: r.username,
                password,
            });
        }
        Ok(Config {
            policy,
            catalog,
            placement,
            registries,
            max_image_bytes: repr.images.max_bytes,
            max_unpacked_bytes: repr.images.max_unpacked_bytes,
        })
    }

    /// Gives `runner` the image settings: the registries it pulls from and
    /// the size limit.
    pub fn apply_images(&self, runner: &mut sandgate_runner::RunnerConfig) {
        runner.registries = self.registries.clone();
        if let Some(max) = self.max_image_bytes {
            runner.max_image_bytes = max;
        }
        if let Some(max) = self.max_unpacked_bytes {
            runner.runtime.snapshot_max_bytes = max;
        }
    }
}
