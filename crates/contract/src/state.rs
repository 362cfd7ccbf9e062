//! Where a sandbox is in its life.

use serde::{Deserialize, Serialize};

/// Where a sandbox is in its life, as the API stores and shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Being made: a row found so at start belongs to a create cut short,
    /// and is removed with what it made.
    Creating,
    /// Running, its policy in force.
    Running,
    /// Being removed: finished at start.
    Deleting,
    /// Its init died: kept with its files, not restarted; it may only be
    /// read and deleted.
    Died,
    /// Gone from the host (its slot or files were missing at a start, as
    /// after a reboot): it may only be read and deleted.
    Lost,
}

impl SandboxState {
    /// Every state.
    pub const ALL: [SandboxState; 5] = [
        SandboxState::Creating,
        SandboxState::Running,
        SandboxState::Deleting,
        SandboxState::Died,
        SandboxState::Lost,
    ];

    /// The state as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Deleting => "deleting",
            SandboxState::Died => "died",
            SandboxState::Lost => "lost",
        }
    }
}

impl std::str::FromStr for SandboxState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        SandboxState::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("the unknown sandbox state {s:?}"))
    }
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_as_written_and_serializes_the_same() {
        for state in SandboxState::ALL {
            assert_eq!(state.as_str().parse::<SandboxState>(), Ok(state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        assert!("Running".parse::<SandboxState>().is_err());
    }
}
