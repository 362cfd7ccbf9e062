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
use std::sync::{Arc, Mutex, RwLock};

/// A runner's labels: names to values.
pub type Labels = std::collections::BTreeMap<String, String>;

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
    /// Its labels (a runner that registered says them), by which the
    /// tiers' placement picks ([`crate::ServerConfig::placement`]).
    pub labels: Labels,
    /// Whether it answered at the last look.
    reachable: AtomicBool,
    /// Its instance whose sandboxes were restored last: `None` for a
    /// runner without one (in the server's process, never looked at);
    /// empty when not known (restored again at the next look).
    restored: Mutex<Option<String>>,
    /// Restores of it that failed in a row, and when to try again.
    retry: Mutex<(u32, Option<std::time::Instant>)>,
    /// For a runner that registered: the URL it is reached at and the
    /// token it is called with, as its heartbeat said when it joined (a
    /// heartbeat that says otherwise has it join again).
    pub link: Option<(String, String)>,
}

impl Member {
    /// A member named `name`, whose instance `restored` was restored.
    pub fn new(name: String, runner: Arc<dyn Runner>, restored: Option<String>) -> Member {
        Member {
            name,
            runner,
            labels: Labels::new(),
            reachable: AtomicBool::new(true),
            restored: Mutex::new(restored),
            retry: Mutex::new((0, None)),
            link: None,
        }
    }

    /// The member reached at `url` with `call_token` (one that
    /// registered).
    pub fn with_link(self, url: String, call_token: String) -> Member {
        Member {
            link: Some((url, call_token)),
            ..self
        }
    }

    /// Whether a restore of it may be tried now: not before the back-off
    /// after failed ones (2 s doubled at each, at most 32 s) is over.
    pub(crate) fn may_try(&self) -> bool {
        crate::lock(&self.retry)
            .1
            .is_none_or(|at| std::time::Instant::now() >= at)
    }

    /// A restore of it was tried and `succeeded`: the failures in a row
    /// before it (the back-off grows with them).
    pub(crate) fn tried(&self, succeeded: bool) -> u32 {
        let mut retry = crate::lock(&self.retry);
        let before = retry.0;
        if succeeded {
            *retry = (0, None);
        } else {
            retry.0 = retry.0.saturating_add(1);
            let wait = std::time::Duration::from_secs((1u64 << retry.0.min(5)).min(60));
            retry.1 = Some(std::time::Instant::now() + wait);
        }
        before
    }

    /// The member with `labels`.
    pub fn with_labels(self, labels: Labels) -> Member {
        Member { labels, ..self }
    }

    /// Whether it carries every label of `wanted`.
    pub fn carries(&self, wanted: &Labels) -> bool {
        wanted.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// Whether it answered at the last look of the upkeep loop.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::SeqCst)
    }

    /// Whether it may be placed on: it answered at the last look and its
    /// sandboxes were restored since it started.
    pub fn ready(&self) -> bool {
        self.reachable() && self.restored().is_none_or(|i| !i.is_empty())
    }

    /// Records whether it answered; whether that changed.
    pub(crate) fn set_reachable(&self, reachable: bool) -> bool {
        self.reachable.swap(reachable, Ordering::SeqCst) != reachable
    }

    /// Its instance restored last (see [`Member::new`]).
    pub(crate) fn restored(&self) -> Option<String> {
        crate::lock(&self.restored).clone()
    }

    /// Its instance `instance` was restored.
    pub(crate) fn set_restored(&self, instance: Option<String>) {
        *crate::lock(&self.restored) = instance;
    }
}

/// The runners, in the operator's order (those that registered
/// themselves after, in the order they did).
#[derive(Debug)]
pub struct Fleet {
    members: RwLock<Vec<Arc<Member>>>,
    /// The names joining now (one join at a time for each).
    joining: Mutex<std::collections::BTreeSet<String>>,
    /// The names whose last join failed (said once).
    failing: Mutex<std::collections::BTreeSet<String>>,
}

impl Fleet {
    /// The one runner of a server, named [`MAIN`].
    pub fn one(runner: Arc<dyn Runner>) -> Fleet {
        let fleet = Fleet::empty();
        fleet
            .members
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(Member::new(
                MAIN.into(),
                runner,
                Some(String::new()),
            )));
        fleet
    }

    /// No runner yet: those that register themselves join it.
    pub fn empty() -> Fleet {
        Fleet {
            members: RwLock::new(Vec::new()),
            joining: Mutex::default(),
            failing: Mutex::default(),
        }
    }

    /// Puts `member` in the fleet, in place of one of its name that
    /// registered before (a runner that joins again); refused when the
    /// name is one the server was started with.
    pub fn put(&self, member: Member) -> Result<Arc<Member>, String> {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let member = Arc::new(member);
        match members.iter_mut().find(|m| m.name == member.name) {
            Some(old) if old.link.is_some() => *old = member.clone(),
            Some(_) => return Err(format!("runner {:?} named twice", member.name)),
            None => members.push(member.clone()),
        }
        Ok(member)
    }

    /// Takes runner `name` out of the fleet if it registered (its token
    /// was replaced, or it registers elsewhere): its sandboxes are
    /// `unreachable` until it joins again.
    pub fn remove_registered(&self, name: &str) -> bool {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let before = members.len();
        members.retain(|m| m.name != name || m.link.is_none());
        members.len() != before
    }

    /// Starts a join of `name`: `false` when one is under way.
    pub(crate) fn begin_join(&self, name: &str) -> bool {
        crate::lock(&self.joining).insert(name.to_string())
    }

    /// Ends a join of `name` begun with [`Fleet::begin_join`], `joined` or
    /// not: whether to say why not (the first failure since the last
    /// success).
    pub(crate) fn end_join(&self, name: &str, joined: bool) -> bool {
        crate::lock(&self.joining).remove(name);
        let mut failing = crate::lock(&self.failing);
        if joined {
            failing.remove(name);
            false
        } else {
            failing.insert(name.to_string())
        }
    }

    /// Runners by name, each name of 1 to 63 lowercase letters, digits
    /// and dashes, none twice; none for a server whose runners all
    /// register themselves.
    pub fn new(runners: Vec<(String, Arc<dyn Runner>)>) -> Result<Fleet, String> {
        let fleet = Fleet::empty();
        for (name, runner) in runners {
            check_name(&name)?;
            fleet.put(Member::new(name, runner, Some(String::new())))?;
        }
        Ok(fleet)
    }

    /// Every runner, in order, as they are now.
    pub fn members(&self) -> Vec<Arc<Member>> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The first runner that may be placed on (the one runner of most
    /// servers): where what belongs to no sandbox is asked (the
    /// snapshots).
    pub fn first_ready(&self) -> Option<Arc<Member>> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|m| m.ready())
            .cloned()
    }

    /// Runner `name`; one this server does not drive (its sandboxes were
    /// placed there by a server started with other runners, or it has not
    /// registered with this one yet) is out of reach, and said so.
    pub fn get(&self, name: &str) -> Result<Arc<Member>, RunnerError> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .ok_or_else(|| {
                RunnerError::Unavailable(format!(
                    "runner {name:?} is not one this server drives (see --runner), or has not registered yet"
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

/// A label's name or value: 1 to 63 letters, digits, `-`, `_` and `.`.
pub fn check_label(what: &str, text: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "label {what} {text:?}: 1 to 63 letters, digits, '-', '_' and '.'"
        ))
    }
}
