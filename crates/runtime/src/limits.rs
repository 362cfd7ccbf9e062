//! Resource limits and what the host's cgroups can enforce.
//!
//! The pids limit is not optional: without the pids controller a fork bomb
//! could take the host down, so the runtime refuses to start. Memory and
//! CPU limits are applied where the controller is there, and reported as
//! unavailable (never silently dropped) where it is not.

use std::fs;
use std::io;

/// One limit as the host applies it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "status", content = "value", rename_all = "snake_case")]
pub enum Limit<T> {
    /// None configured.
    Unlimited,
    /// Configured and enforced by the kernel.
    Enforced(T),
    /// Configured, but the host's cgroups have no such controller: not
    /// enforced.
    Unavailable(T),
}

impl<T: Copy> Limit<T> {
    fn new(value: Option<T>, available: bool) -> Limit<T> {
        match value {
            None => Limit::Unlimited,
            Some(v) if available => Limit::Enforced(v),
            Some(v) => Limit::Unavailable(v),
        }
    }

    /// The value to put in a bundle: only an enforced one.
    pub fn enforced(&self) -> Option<T> {
        match self {
            Limit::Enforced(v) => Some(*v),
            _ => None,
        }
    }
}

/// The limits every sandbox of a runtime gets.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Limits {
    /// The most processes (always enforced).
    pub pids: i64,
    /// The most memory, bytes.
    pub memory: Limit<i64>,
    /// The most CPU time, in cores.
    pub cpu: Limit<f64>,
}

/// The cgroup controllers this host has mounted.
#[derive(Debug, Clone, Default)]
pub struct Controllers {
    /// `pids`.
    pub pids: bool,
    /// `memory`.
    pub memory: bool,
    /// `cpu`.
    pub cpu: bool,
}

impl Controllers {
    /// Reads them: on a unified (v2) hierarchy from
    /// `/sys/fs/cgroup/cgroup.controllers`, otherwise (v1, hybrid) the
    /// enabled controllers of `/proc/cgroups` that are mounted somewhere.
    pub fn detect() -> io::Result<Controllers> {
        let names: Vec<String> = match fs::read_to_string("/sys/fs/cgroup/cgroup.controllers") {
            Ok(v2) => v2.split_whitespace().map(str::to_string).collect(),
            Err(_) => fs::read_to_string("/proc/cgroups")?
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() == 4 && f[1] != "0" && f[3] == "1").then(|| f[0].to_string())
                })
                .collect(),
        };
        let has = |n: &str| names.iter().any(|m| m == n);
        Ok(Controllers {
            pids: has("pids"),
            memory: has("memory"),
            cpu: has("cpu"),
        })
    }

    /// The limits to apply, given the configured ones; an error without
    /// the pids controller.
    pub fn limits(&self, pids: i64, memory: Option<i64>, cpu: Option<f64>) -> io::Result<Limits> {
        if !self.pids {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the host's cgroups have no pids controller: a sandbox's processes could not be \
                 limited, so the runtime does not start",
            ));
        }
        Ok(Limits {
            pids,
            memory: Limit::new(memory, self.memory),
            cpu: Limit::new(cpu, self.cpu),
        })
    }
}
