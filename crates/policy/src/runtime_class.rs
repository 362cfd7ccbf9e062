//! A sandbox's runtime class: which OCI runtime runs it (docs/REQUIREMENTS.md,
//! "Runtime classes"). `runc` shares the host's kernel under a seccomp
//! allowlist; `runsc` (gVisor) puts a user-space kernel between the
//! sandbox and the host's. The operator names the classes each tier may
//! use, the first being what a create that names none gets; a create may
//! name any of them, never another.

use crate::error::{ErrorCode, PolicyError};
use serde::{Deserialize, Serialize};
use std::fmt;

/// An OCI runtime a sandbox runs under.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeClass {
    /// runc: namespaces, cgroups and a seccomp allowlist on the host's
    /// kernel.
    #[default]
    Runc,
    /// gVisor's runsc: the sandbox's system calls go to gVisor's own
    /// kernel, which alone talks to the host's.
    Runsc,
}

impl RuntimeClass {
    /// Every class, in the order they are listed.
    pub const ALL: [RuntimeClass; 2] = [RuntimeClass::Runc, RuntimeClass::Runsc];

    /// The class as written in requests and the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeClass::Runc => "runc",
            RuntimeClass::Runsc => "runsc",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for RuntimeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RuntimeClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RuntimeClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("{s:?} is no runtime class; the classes are runc and runsc"))
    }
}

/// The classes a tier's sandboxes may run under, and the one a create
/// that names none gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TierRuntimeClasses {
    default: RuntimeClass,
    allowed: u8,
}

impl Default for TierRuntimeClasses {
    /// runc alone.
    fn default() -> Self {
        TierRuntimeClasses {
            default: RuntimeClass::Runc,
            allowed: RuntimeClass::Runc.bit(),
        }
    }
}

impl TierRuntimeClasses {
    /// The classes as the configuration lists them at `key` (the first
    /// is the default): none, or one twice, is a configuration error.
    pub fn from_list(list: &[RuntimeClass], key: &str) -> Result<Self, PolicyError> {
        let Some(&default) = list.first() else {
            return Err(PolicyError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "{key} is empty; list at least one runtime class (the first is the default)"
                ),
            ));
        };
        let mut allowed = 0;
        for class in list {
            if allowed & class.bit() != 0 {
                return Err(PolicyError::new(
                    ErrorCode::InvalidConfig,
                    format!("{key} lists {class} twice"),
                ));
            }
            allowed |= class.bit();
        }
        Ok(TierRuntimeClasses { default, allowed })
    }

    /// What a create gets.
    pub fn default_class(&self) -> RuntimeClass {
        self.default
    }

    /// The classes allowed, the default first.
    pub fn allowed(&self) -> Vec<RuntimeClass> {
        std::iter::once(self.default)
            .chain(
                RuntimeClass::ALL
                    .into_iter()
                    .filter(|c| *c != self.default && self.allows(*c)),
            )
            .collect()
    }

    /// Whether `class` is allowed.
    pub fn allows(&self, class: RuntimeClass) -> bool {
        self.allowed & class.bit() != 0
    }

    /// What a create of a sandbox in `tier` asking for `asked` gets: the
    /// default when it asks for none; 403 `runtime_class_not_allowed` for
    /// a class the tier does not allow.
    pub fn resolve(
        &self,
        tier: u8,
        asked: Option<RuntimeClass>,
    ) -> Result<RuntimeClass, PolicyError> {
        match asked {
            None => Ok(self.default),
            Some(class) if self.allows(class) => Ok(class),
            Some(class) => Err(PolicyError::new(
                ErrorCode::RuntimeClassNotAllowed,
                format!(
                    "runtimeClass: tier {tier} does not allow {class} (it allows {}); ask for one of those, or ask the operator for a tier that allows {class}",
                    self.allowed()
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}

impl Serialize for TierRuntimeClasses {
    /// As the list the configuration takes (the default first).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.allowed().serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_listed_is_the_default_and_only_those_listed_are_allowed() {
        let both = TierRuntimeClasses::from_list(
            &[RuntimeClass::Runsc, RuntimeClass::Runc],
            "policy.runtime_classes",
        )
        .unwrap();
        assert_eq!(both.resolve(3, None).unwrap(), RuntimeClass::Runsc);
        assert_eq!(
            both.resolve(3, Some(RuntimeClass::Runc)).unwrap(),
            RuntimeClass::Runc
        );
        assert_eq!(
            serde_json::to_value(both).unwrap(),
            serde_json::json!(["runsc", "runc"])
        );
        let runc = TierRuntimeClasses::default();
        let e = runc.resolve(2, Some(RuntimeClass::Runsc)).unwrap_err();
        assert_eq!(e.code, ErrorCode::RuntimeClassNotAllowed);
        assert_eq!(e.code.http_status(), 403);
        assert!(
            e.message
                .contains("tier 2 does not allow runsc (it allows runc)"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_or_repeated_list_is_refused_and_names_are_exact() {
        let e = TierRuntimeClasses::from_list(&[], "policy.tiers.1.runtime_classes").unwrap_err();
        assert!(
            e.message
                .contains("policy.tiers.1.runtime_classes is empty"),
            "{e}"
        );
        let e = TierRuntimeClasses::from_list(
            &[RuntimeClass::Runc, RuntimeClass::Runc],
            "policy.runtime_classes",
        )
        .unwrap_err();
        assert!(e.message.contains("lists runc twice"), "{e}");
        assert_eq!("runsc".parse::<RuntimeClass>(), Ok(RuntimeClass::Runsc));
        assert!("gvisor".parse::<RuntimeClass>().is_err());
        assert!(serde_json::from_str::<RuntimeClass>("\"Runc\"").is_err());
    }
}
