//! The dataplane's own record of its slots, kept in a file across restarts
//! and crashes: which indexes are taken, in which phase, with which policy.

use crate::elements::{Generations, SlotPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Where a slot is in its life. Every step that makes or removes kernel
/// objects is recorded before it starts, so that a crash in the middle
/// leaves a record that says what to clean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Namespace and links being made; removed whole on restart.
    Creating,
    /// Prepared, no policy, not in use; traffic from it is dropped.
    Pool,
    /// In use by a sandbox, with a policy in the kernel.
    Active,
    /// Being removed; removed whole on restart.
    Deleting,
}

/// One slot's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    /// The phase.
    pub phase: Phase,
    /// The sandbox using it, in phase `Active`.
    #[serde(default)]
    pub owner: Option<String>,
    /// The policy in the kernel, in phase `Active`.
    #[serde(default)]
    pub policy: Option<SlotPolicy>,
    /// Its connection generations.
    #[serde(default)]
    pub gens: Generations,
}

/// All records, and the generation counter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The last generation handed out.
    pub last_gen: u32,
    /// Records by slot index.
    pub slots: BTreeMap<u32, SlotRecord>,
}

impl State {
    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> io::Result<State> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a dataplane state file: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes the state file atomically: a new file, synced, renamed over
    /// the old one. A crash leaves the old state or the new, never half.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(self).map_err(io::Error::other)?)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    }

    /// A fresh generation (never 0).
    pub fn next_gen(&mut self) -> u32 {
        self.last_gen = match self.last_gen.wrapping_add(1) & !crate::ruleset::DNS_MARK_BIT {
            0 => 1,
            g => g,
        };
        self.last_gen
    }

    /// The lowest free index from 1 to `max`.
    pub fn free_index(&self, max: u32) -> Option<u32> {
        (1..=max).find(|i| !self.slots.contains_key(i))
    }
}
