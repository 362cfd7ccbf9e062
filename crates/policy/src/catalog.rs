//! The essential-services catalog (REQUIREMENTS.md section 1, "Essential services").
//!
//! A data file in reverse-label notation, shipped with the binary and
//! validated when loaded; an operator file of the same format extends it or
//! replaces it. Loading takes text, not paths: reading files is the caller's
//! business, so this crate stays free of I/O.

use crate::domain::DomainPattern;
use crate::error::{ErrorCode, PolicyError, Problem};
use crate::matcher::NameMatcher;
use crate::Rule;
use serde::{Deserialize, Serialize};

/// The catalog shipped with sandgate.
pub const BUILTIN_CATALOG: &str = include_str!("../catalog/essential-services.toml");

/// The only catalog file format version.
const VERSION: u32 = 1;

/// One category of essential services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Category {
    /// A short stable identifier (`npm`, `python`, `platform`); it appears in
    /// reason codes as `essential_service:<id>`.
    pub id: String,
    /// A title for people ("Ubuntu/Debian").
    pub title: String,
    /// The names, exact or `*.` wildcards.
    pub hosts: Vec<DomainPattern>,
}

/// The validated catalog, with its names compiled into a matcher.
#[derive(Debug, Clone)]
pub struct Catalog {
    categories: Vec<Category>,
    matcher: NameMatcher<Rule>,
}

/// How an operator file combines with the shipped catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MergeMode {
    /// Add categories and names to the shipped catalog (the default).
    #[default]
    Extend,
    /// Use the operator file alone.
    Replace,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRepr {
    version: u32,
    #[serde(default)]
    mode: Option<MergeMode>,
    #[serde(default)]
    category: Vec<CategoryRepr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryRepr {
    id: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
}

impl Catalog {
    /// The shipped catalog.
    pub fn builtin() -> Catalog {
        // The shipped file is validated by this crate's tests; failing here
        // would be a build defect, not a user error.
        Catalog::from_toml(BUILTIN_CATALOG, "built-in catalog")
            .unwrap_or_else(|e| panic!("the built-in catalog is invalid: {e}"))
    }

    /// Parses and validates a catalog file. `origin` names the file in
    /// messages. A `mode` key is refused here: it belongs to operator files.
    pub fn from_toml(text: &str, origin: &str) -> Result<Catalog, PolicyError> {
        let repr = parse_file(text, origin)?;
        if repr.mode.is_some() {
            return Err(invalid(
                origin,
                "has a `mode` key; only an operator file given to extend or replace the catalog has one",
            ));
        }
        let categories = validate(repr.category, origin)?;
        Ok(Catalog::from_categories(categories))
    }

    /// Applies an operator file: `mode = "extend"` (the default) adds its
    /// categories and names to this catalog, a name already present keeping
    /// its category; `mode = "replace"` makes the file the whole catalog.
    pub fn with_operator_file(&self, text: &str, origin: &str) -> Result<Catalog, PolicyError> {
        let repr = parse_file(text, origin)?;
        let mode = repr.mode.unwrap_or_default();
        let mut extra = repr.category;
        if mode == MergeMode::Extend {
            // An extension may name an existing category without a title.
            for c in extra.iter_mut().filter(|c| c.title.is_none()) {
                c.title = self.category_by_id(&c.id).map(|k| k.title.clone());
            }
        }
        let extra = validate(extra, origin)?;
        let categories = match mode {
            MergeMode::Replace => extra,
            MergeMode::Extend => {
                let mut merged = self.categories.clone();
                for cat in extra {
                    let present =
                        |p: &DomainPattern, m: &[Category]| m.iter().any(|c| c.hosts.contains(p));
                    let hosts: Vec<DomainPattern> = cat
                        .hosts
                        .into_iter()
                        .filter(|h| !present(h, &merged))
                        .collect();
                    match merged.iter_mut().find(|c| c.id == cat.id) {
                        Some(existing) => existing.hosts.extend(hosts),
                        None => merged.push(Category { hosts, ..cat }),
                    }
                }
                merged
            }
        };
        Ok(Catalog::from_categories(categories))
    }

    fn from_categories(categories: Vec<Category>) -> Catalog {
        let mut matcher = NameMatcher::new();
        for (index, category) in categories.iter().enumerate() {
            for host in &category.hosts {
                matcher.insert(host, Rule::Essential(index));
            }
        }
        Catalog {
            categories,
            matcher,
        }
    }

    /// The categories in file order.
    pub fn categories(&self) -> &[Category] {
        &self.categories
    }

    /// The category with this index (as carried by [`Rule::Essential`]).
    pub fn category(&self, index: usize) -> Option<&Category> {
        self.categories.get(index)
    }

    /// The category with this id.
    pub fn category_by_id(&self, id: &str) -> Option<&Category> {
        self.categories.iter().find(|c| c.id == id)
    }

    /// Every name of the catalog with its category.
    pub fn names(&self) -> impl Iterator<Item = (&Category, &DomainPattern)> {
        self.categories
            .iter()
            .flat_map(|c| c.hosts.iter().map(move |h| (c, h)))
    }

    /// The catalog's names compiled into a matcher, ready to be extended
    /// with a sandbox's `domainAllowList`.
    pub fn matcher(&self) -> &NameMatcher<Rule> {
        &self.matcher
    }
}

fn invalid(origin: &str, what: &str) -> PolicyError {
    PolicyError::new(ErrorCode::InvalidCatalog, format!("{origin} {what}"))
}

fn parse_file(text: &str, origin: &str) -> Result<FileRepr, PolicyError> {
    let repr: FileRepr = toml::from_str(text).map_err(|e| {
        PolicyError::new(
            ErrorCode::InvalidCatalog,
            format!("{origin} is not a valid catalog file: {e}"),
        )
    })?;
    if repr.version != VERSION {
        return Err(invalid(
            origin,
            &format!(
                "has version {}; this sandgate reads version {VERSION}",
                repr.version
            ),
        ));
    }
    Ok(repr)
}

fn validate(reprs: Vec<CategoryRepr>, origin: &str) -> Result<Vec<Category>, PolicyError> {
    let mut problems = Vec::new();
    let mut out: Vec<Category> = Vec::new();
    let mut seen: Vec<(DomainPattern, String)> = Vec::new();
    for (index, repr) in reprs.into_iter().enumerate() {
        let position = index + 1;
        let mut problem = |entry: &str, message: String| {
            problems.push(Problem {
                entry: entry.to_string(),
                position,
                message: format!("{origin}: {message}"),
                suggestion: None,
            })
        };
        let id_ok = !repr.id.is_empty()
            && repr
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            problem(
                &repr.id,
                format!(
                    "category id \"{}\" must be lowercase letters, digits and hyphens",
                    repr.id
                ),
            );
        }
        if out.iter().any(|c| c.id == repr.id) {
            problem(
                &repr.id,
                format!("category id \"{}\" appears twice", repr.id),
            );
        }
        let title = match repr.title {
            Some(t) if !t.trim().is_empty() => t,
            _ => {
                problem(&repr.id, format!("category \"{}\" has no title", repr.id));
                String::new()
            }
        };
        let mut hosts = Vec::new();
        for host in &repr.hosts {
            match DomainPattern::parse_reversed(host) {
                Ok(pattern) => {
                    if pattern.to_reversed() != *host {
                        problem(
                            host,
                            format!(
                                "host \"{host}\" in category \"{}\" is not in canonical reverse-label form; write \"{}\"",
                                repr.id,
                                pattern.to_reversed()
                            ),
                        );
                    } else if let Some((_, other)) = seen.iter().find(|(p, _)| *p == pattern) {
                        problem(
                            host,
                            format!(
                                "host \"{host}\" appears twice (categories \"{other}\" and \"{}\")",
                                repr.id
                            ),
                        );
                    } else {
                        seen.push((pattern.clone(), repr.id.clone()));
                        hosts.push(pattern);
                    }
                }
                Err(why) => problem(
                    host,
                    format!(
                        "host \"{host}\" in category \"{}\" {why} (names are written in reverse-label order, as com.example.www)",
                        repr.id
                    ),
                ),
            }
        }
        out.push(Category {
            id: repr.id,
            title,
            hosts,
        });
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        let mut err = PolicyError::from_problems(ErrorCode::InvalidCatalog, "catalog", problems);
        err.field = None;
        Err(err)
    }
}
