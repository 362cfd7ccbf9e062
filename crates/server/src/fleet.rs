//! The runners behind the API: one (in the server's process, or a
//! `sandgate runner` apart), or several, each named. Every sandbox is
//! placed on one (its row says which) and every call about it goes to
//! that one; a new sandbox goes to the reachable runner, not drained by
//! the operator, with the most free slots.
//!
//! Whether a runner answers is the upkeep loop's to say
//! ([`crate::upkeep`]): one that stops answering has its sandboxes shown
//! `unreachable` (never gone: it keeps enforcing what it was last told)
//! until it answers again and is restored from the store.

use sandgate_contract::{Runner, RunnerError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The name of the runner of a server with one (and of every sandbox
/// stored before there were several).
pub const MAIN: &str = "main";

/// One runner of the fleet.
#[derive(Debug)]
pub struct Member {
    /// Its name, the operator's (`main` for the only one).
    pub name: String,
    /// The runner.
    pub runner: Arc<dyn Runner>,
    /// Whether it answered at the last look.
    reachable: AtomicBool,
}

impl Member {
    /// Whether it answered at the last look of the upkeep loop.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::SeqCst)
    }

    /// Records whether it answered; whether that changed.
    pub(crate) fn set_reachable(&self, reachable: bool) -> bool {
        self.reachable.swap(reachable, Ordering::SeqCst) != reachable
    }
}

/// The runners, in the operator's order.
#[derive(Debug)]
pub struct Fleet {
    members: Vec<Member>,
}

impl Fleet {
    /// The one runner of a server, named [`MAIN`].
    pub fn one(runner: Arc<dyn Runner>) -> Fleet {
        Fleet {
            members: vec![Member {
                name: MAIN.into(),
                runner,
                reachable: AtomicBool::new(true),
            }],
        }
    }

    /// Runners by name: at least one, each name of 1 to 63 lowercase
    /// letters, digits and dashes, none twice.
    pub fn new(runners: Vec<(String, Arc<dyn Runner>)>) -> Result<Fleet, String> {
        if runners.is_empty() {
            return Err("no runner".into());
        }
        let mut members: Vec<Member> = Vec::new();
        for (name, runner) in runners {
            check_name(&name)?;
            if members.iter().any(|m| m.name == name) {
                return Err(format!("runner {name:?} named twice"));
            }
            members.push(Member {
                name,
                runner,
                reachable: AtomicBool::new(true),
            });
        }
        Ok(Fleet { members })
    }

    /// Every runner, in the operator's order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The first runner (the one runner of most servers): where what
    /// belongs to no sandbox is asked (the host's addresses, the
    /// snapshots).
    pub fn first(&self) -> &Member {
        &self.members[0]
    }

    /// Runner `name`; one this server does not drive (its sandboxes were
    /// placed there by a server started with other runners) is out of
    /// reach, and said so.
    pub fn get(&self, name: &str) -> Result<&Member, RunnerError> {
        self.members.iter().find(|m| m.name == name).ok_or_else(|| {
            RunnerError::Unavailable(format!(
                "runner {name:?} is not one this server drives (see --runner)"
            ))
        })
    }
}

/// A runner's name: 1 to 63 lowercase letters, digits and dashes, not at
/// either end.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "runner name {name:?}: 1 to 63 lowercase letters, digits and dashes, not at either end"
        ))
    }
}
