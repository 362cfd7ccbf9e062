//! Keeps each runner in line with the store while the server runs; says
//! which answer (one that does not has its sandboxes shown
//! `unreachable`); joins the runners that registered with another
//! replica ([`crate::registry`]).
//!
//! The store is the record; what a runner enforces must never be wider.
//! Three things can leave the runner apart from the record, and each is
//! mended the same way, by restoring every sandbox from the store under
//! the write lock, as at a start (on a live runner a restore reconciles:
//! each sandbox gets its stored policy, one nobody expects is removed):
//!
//! - the runner (apart from the API) restarted alone: it serves nothing
//!   until it is told what to, and answers 503 `runner_restoring` until
//!   then. Its instance (an id of its process) is read every
//!   [`writes::SWEEP`]; when it changed, its sandboxes are restored (once
//!   for all replicas: the store records which instance was restored);
//! - a change could not reach the runner to settle a sandbox (its update
//!   and the cut-off after it both out of reach): the runner keeps what it
//!   was last told, which may not be the record. Such a sandbox is not
//!   marked lost (it may well run on); its runner is owed a restore
//!   ([`owe`], recorded in the store, so that any replica pays it), done
//!   as soon as the runner answers;
//! - a replica died amid a change (PostgreSQL): the journal it left open
//!   is found here even when no write comes to find it.
//!
//! A call that finds the runner out of reach wakes the loop at once
//! ([`Upkeep::wake`]) rather than at its next look.

use crate::fleet::Member;
use crate::writes::RunnerMark;
use crate::{release, restore_runner, writes, writing, AppState};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::Notify;

/// What the service tells the loop.
#[derive(Debug, Default)]
pub struct Upkeep {
    /// The runners owed a restore, as this replica knows (the store's
    /// record is what every replica reads; this one stands in while the
    /// store does not answer).
    owed: Mutex<BTreeSet<String>>,
    wake: Notify,
}

impl Upkeep {
    /// A runner was found out of reach: look at it now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// A sandbox's policy on runner `runner` may not be the store's (a change
/// could not reach it): every sandbox of that runner is restored once it
/// answers, by whichever replica sees it first (the store says so).
pub(crate) async fn owe(st: &AppState, runner: &str, wake: bool) {
    crate::lock(&st.upkeep.owed).insert(runner.to_string());
    if let Err(e) = st.store.mark_runner(runner, RunnerMark::Owed, true).await {
        tracing::error!(runner, error = %e, "recording a restore owed to a runner (this replica still owes it)");
    }
    if wake {
        st.upkeep.wake();
    }
}

/// Whether runner `runner` is owed a restore (`owed`: the store's record).
fn owes(st: &AppState, owed: &BTreeSet<String>, runner: &str) -> bool {
    owed.contains(runner) || crate::lock(&st.upkeep.owed).contains(runner)
}

/// Why the loop restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owed {
    /// The runner's instance changed, or it joined the fleet.
    Restarted,
    /// A change could not reach it ([`Upkeep::unsettle`]).
    Unsettled,
    /// A replica died amid a change (the journal left open).
    CutShort,
    /// A runner that registered joins the fleet.
    Joined,
}

impl Owed {
    fn as_str(self) -> &'static str {
        match self {
            Owed::Restarted => "the runner restarted",
            Owed::Unsettled => "a change could not reach the runner",
            Owed::CutShort => "a change was cut short",
            Owed::Joined => "a runner joined",
        }
    }
}

/// The loop (see the module), until the server is gone or stopping.
pub(crate) async fn run(state: Weak<AppState>) {
    loop {
        {
            // Nothing of the server held while waiting.
            let Some(st) = state.upgrade() else { return };
            let upkeep = st.upkeep.clone();
            let mut stopping = st.stopping.subscribe();
            drop(st);
            tokio::select! {
                _ = tokio::time::sleep(writes::SWEEP) => {}
                _ = upkeep.wake.notified() => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
        // A change a dead replica cut short: every runner restored.
        let cut_short = {
            let Some(st) = state.upgrade() else { return };
            match st.store.left_open().await {
                Ok(open) => open,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the write journal");
                    false
                }
            }
        };
        if cut_short {
            let Some(st) = state.upgrade() else { return };
            let Ok(mut guard) = lock_for(&st, Owed::CutShort).await else {
                continue;
            };
            // Looked at without the lock, the journal is open for every
            // change in flight too: only one the lock's holder left open
            // is finished ([`crate::recover`] looks again under the lock).
            match guard.scope().run(crate::recover(&st, &mut guard)).await {
                Ok(()) => {}
                Err(e) => {
                    guard.keep_open();
                    tracing::error!(error = %e, why = Owed::CutShort.as_str(), "restoring the sandboxes; trying again");
                }
            }
            release(guard).await;
        }
        // Runners that registered with another replica.
        if let Some(st) = state.upgrade() {
            crate::registry::join_registered(&st).await;
        }
        let (members, owed) = match state.upgrade() {
            Some(st) => {
                let owed = st
                    .store
                    .marked(&[RunnerMark::Owed])
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "reading the restores owed");
                        BTreeSet::new()
                    });
                (st.fleet.members(), owed)
            }
            None => return,
        };
        for member in members {
            if !keep_one(&state, &member, &owed).await {
                return;
            }
        }
    }
}

/// One look at runner `member`, restored if owed; `false` once the
/// server is gone.
async fn keep_one(state: &Weak<AppState>, member: &Arc<Member>, owed: &BTreeSet<String>) -> bool {
    let seen = member.restored();
    // The runner's instance, if it has one; the server not held while
    // the runner is asked.
    let now = match &seen {
        None => None,
        Some(_) => {
            let runner = member.runner.clone();
            match tokio::task::spawn_blocking(move || runner.instance()).await {
                Ok(Ok(now)) => {
                    if member.set_reachable(true) {
                        tracing::info!(runner = %member.name, "the runner answers again");
                    }
                    now
                }
                Ok(Err(e)) => {
                    if member.set_reachable(false) {
                        tracing::warn!(runner = %member.name, error = %e, "the runner does not answer; its sandboxes are unreachable, and it keeps enforcing what it was last told");
                    }
                    return true;
                }
                Err(e) => {
                    tracing::error!(runner = %member.name, error = %e, "looking at the runner");
                    return true;
                }
            }
        }
    };
    let Some(st) = state.upgrade() else {
        return false;
    };
    if *st.stopping.borrow() {
        return false;
    }
    let owed = if now.is_some() && now != seen {
        Owed::Restarted
    } else if owes(&st, owed, &member.name) {
        Owed::Unsettled
    } else {
        return true;
    };
    if owed == Owed::Restarted {
        // Served nothing since it started: placed on no more until it is
        // restored.
        member.set_restored(Some(String::new()));
    }
    if !member.may_try() {
        return true;
    }
    let Ok(guard) = lock_for(&st, owed).await else {
        return true;
    };
    let done = guard
        .scope()
        .run(restore_member(&st, member, owed, now.as_deref()))
        .await;
    let restored = match done {
        Ok(restored) => {
            if now.is_some() {
                member.set_restored(now);
            }
            if member.tried(true) > 0 {
                tracing::info!(runner = %member.name, "restored the runner's sandboxes at last");
            }
            restored
        }
        Err(e) => {
            // Left owed: tried again later, backing off (said once).
            owe(&st, &member.name, false).await;
            if member.tried(false) == 0 {
                tracing::error!(runner = %member.name, error = %e, why = owed.as_str(), "restoring the runner's sandboxes; trying again, less and less often");
            } else {
                tracing::debug!(runner = %member.name, error = %e, why = owed.as_str(), "restoring the runner's sandboxes; trying again");
            }
            false
        }
    };
    release(guard).await;
    if restored {
        rewatch(&st).await;
    }
    true
}

/// After a restore, the sandboxes' event streams are new: the access
/// requests are watched again (by the replica that leads them).
pub(crate) async fn rewatch(st: &Arc<AppState>) {
    if !st.leads_approvals.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    if let Err(e) = crate::approvals::watch_all(st, crate::service::now_ms()).await {
        tracing::warn!(error = %e, "watching the sandboxes for access requests again");
    }
}

/// Restores `member`'s sandboxes for `owed` (its instance `now`), under
/// the write lock its caller holds: whether it did (a restart another
/// replica has restored already is not restored again).
pub(crate) async fn restore_member(
    st: &AppState,
    member: &Member,
    owed: Owed,
    now: Option<&str>,
) -> Result<bool, crate::error::StartError> {
    if owed == Owed::Restarted
        && !owes(
            st,
            &st.store.marked(&[RunnerMark::Owed]).await?,
            &member.name,
        )
        && st.store.restored_instance(&member.name).await?.as_deref() == now
    {
        return Ok(false);
    }
    tracing::warn!(runner = %member.name, why = owed.as_str(), "restoring the runner's sandboxes from the store");
    restore_runner(st, member).await?;
    if let Some(now) = now {
        st.store.set_restored_instance(&member.name, now).await?;
    }
    // What was owed is paid.
    st.store
        .mark_runner(&member.name, RunnerMark::Owed, false)
        .await?;
    crate::lock(&st.upkeep.owed).remove(&member.name);
    Ok(true)
}

/// The write lock, to restore for `why`.
async fn lock_for(st: &AppState, why: Owed) -> Result<writes::WriteGuard, ()> {
    writing(st).await.map_err(|e| {
        tracing::warn!(error = %e, why = why.as_str(), "taking the write lock to restore the sandboxes");
    })
}

/// Starts the loop for `state` (see [`run`]).
pub(crate) fn start(state: &Arc<AppState>) {
    tokio::spawn(run(Arc::downgrade(state)));
}
