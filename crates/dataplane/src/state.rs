//! The dataplane's own record of its slots, kept across restarts and
//! crashes: which indexes are taken, in which phase, with which policy.
//!
//! On disk it is a snapshot (`<file>`) and a journal (`<file>.log`) of the
//! changes since, one JSON line each, appended before the change is made in
//! the kernel. Appending a line costs microseconds, where rewriting and
//! renaming a whole file costs milliseconds (the file system flushes data
//! replaced by a rename); the journal is folded into a new snapshot every
//! [`COMPACT_AFTER`] lines. A line cut short by a crash is ignored.
//!
//! Nothing is synced to disk: what the records describe (namespaces, links,
//! nftables elements) lives in memory and dies with the machine, while the
//! page cache survives any crash of the daemon. After a reboot the
//! reconciliation finds none of it and removes every record.

use crate::elements::{Generations, SlotPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// How many journal lines are kept before they are folded into a snapshot.
pub const COMPACT_AFTER: usize = 4096;

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
    /// The start of the period (seconds since the epoch) that the kernel's
    /// count of its transfer quota belongs to, when its policy has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_since: Option<u64>,
}

impl SlotRecord {
    /// The egress budget (Mbit/s) its pacer holds it to: its policy's, in
    /// phase `Active`.
    pub fn pacing(&self) -> Option<u32> {
        self.policy
            .as_ref()
            .and_then(|p| p.egress_mbps)
            .filter(|_| self.phase == Phase::Active)
    }
}

/// All records, and the generation counter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The last generation handed out.
    pub last_gen: u32,
    /// Records by slot index.
    pub slots: BTreeMap<u32, SlotRecord>,
}

/// One journal line: slot `index` now has `record` (or none).
#[derive(Debug, Serialize, Deserialize)]
struct Change {
    index: u32,
    record: Option<SlotRecord>,
    last_gen: u32,
}

fn log_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

impl State {
    /// Reads the snapshot and replays the journal; missing files are an
    /// empty state.
    pub fn load(path: &Path) -> io::Result<State> {
        let mut state = match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a dataplane state file: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e),
        };
        match File::open(log_path(path)) {
            Ok(file) => {
                for line in BufReader::new(file).lines() {
                    // A line cut short by a crash ends the journal.
                    let Ok(change) = serde_json::from_str::<Change>(&line?) else {
                        break;
                    };
                    state.last_gen = change.last_gen;
                    match change.record {
                        Some(r) => state.slots.insert(change.index, r),
                        None => state.slots.remove(&change.index),
                    };
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(state)
    }

    /// A fresh generation (never 0).
    pub fn next_gen(&mut self) -> u32 {
        self.last_gen = match self.last_gen.wrapping_add(1) & !crate::ruleset::DNS_MARK_BIT {
            0 => 1,
            g => g,
        };
        self.last_gen
    }

    /// The lowest free index from 1 to `max` that is not `resting`; a
    /// resting one only when no other is free.
    pub fn free_index(&self, max: u32, resting: impl Fn(u32) -> bool) -> Option<u32> {
        let mut free = (1..=max).filter(|i| !self.slots.contains_key(i));
        let first = free.next()?;
        if !resting(first) {
            return Some(first);
        }
        free.find(|i| !resting(*i)).or(Some(first))
    }
}

/// The files of a [`State`].
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    log: File,
    lines: usize,
}

impl Store {
    /// Opens the store at `path` and returns it with the state it holds,
    /// folded into a fresh snapshot.
    pub fn open(path: &Path) -> io::Result<(Store, State)> {
        let state = State::load(path)?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut store = Store {
            path: path.to_path_buf(),
            log: OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_path(path))?,
            lines: 0,
        };
        store.snapshot(&state)?;
        Ok((store, state))
    }

    /// Records slot `index` as `state` has it now.
    pub fn record(&mut self, state: &State, index: u32) -> io::Result<()> {
        if self.lines >= COMPACT_AFTER {
            return self.snapshot(state);
        }
        let change = Change {
            index,
            record: state.slots.get(&index).cloned(),
            last_gen: state.last_gen,
        };
        let mut line = serde_json::to_vec(&change).map_err(io::Error::other)?;
        line.push(b'\n');
        let before = self.log.metadata()?.len();
        if let Err(e) = self.log.write_all(&line) {
            // A line cut short (a full disk) would end the journal for
            // every line after it: cut it off.
            if let Err(cut) = self.log.set_len(before) {
                tracing::error!(error = %cut, "cutting a torn line off the dataplane's journal");
            }
            return Err(e);
        }
        self.lines += 1;
        Ok(())
    }

    /// Writes the whole state as the snapshot and empties the journal.
    pub fn snapshot(&mut self, state: &State) -> io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let written = fs::write(&tmp, serde_json::to_vec(state).map_err(io::Error::other)?)
            .and_then(|()| fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            if let Err(gone) = fs::remove_file(&tmp) {
                tracing::warn!(file = %tmp.display(), error = %gone, "removing a snapshot not written whole");
            }
            return Err(e);
        }
        self.log.set_len(0)?;
        self.lines = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(phase: Phase) -> SlotRecord {
        SlotRecord {
            transfer_since: None,
            phase,
            owner: None,
            policy: None,
            gens: Generations::default(),
        }
    }

    #[test]
    fn the_journal_replays_and_a_torn_line_is_ignored() {
        let dir = std::env::temp_dir().join(format!("sandgate-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("state.json");
        let (mut store, mut state) = Store::open(&path).unwrap();
        state.slots.insert(1, record(Phase::Pool));
        store.record(&state, 1).unwrap();
        state.slots.insert(2, record(Phase::Active));
        state.next_gen();
        store.record(&state, 2).unwrap();
        state.slots.remove(&1);
        store.record(&state, 1).unwrap();
        assert_eq!(State::load(&path).unwrap(), state);
        // A crash in the middle of a line.
        let mut log = OpenOptions::new()
            .append(true)
            .open(log_path(&path))
            .unwrap();
        log.write_all(b"{\"index\":3,\"rec").unwrap();
        assert_eq!(State::load(&path).unwrap(), state);
        // Reopening folds everything into the snapshot.
        let (_, reopened) = Store::open(&path).unwrap();
        assert_eq!(reopened, state);
        assert_eq!(fs::metadata(log_path(&path)).unwrap().len(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_resting_index_is_taken_only_when_no_other_is_free() {
        let mut state = State::default();
        state.slots.insert(1, record(Phase::Active));
        let resting = |i: u32| i == 2;
        assert_eq!(state.free_index(4, resting), Some(3));
        assert_eq!(state.free_index(4, |_| false), Some(2));
        state.slots.insert(3, record(Phase::Active));
        state.slots.insert(4, record(Phase::Active));
        assert_eq!(state.free_index(4, resting), Some(2));
        state.slots.insert(2, record(Phase::Active));
        assert_eq!(state.free_index(4, resting), None);
    }
}
