//! Keeps the runner in line with the store while the server runs.
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
//!   marked lost (it may well run on); it is restored as soon as the
//!   runner answers ([`Upkeep::unsettle`]; on PostgreSQL the journal stays
//!   open too, so another replica does it if this one dies);
//! - a replica died amid a change (PostgreSQL): the journal it left open
//!   is found here even when no write comes to find it.
//!
//! A call that finds the runner out of reach wakes the loop at once
//! ([`Upkeep::wake`]) rather than at its next look.

use crate::{release, restore, writes, writing, AppState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;

/// What the service tells the loop.
#[derive(Debug, Default)]
pub struct Upkeep {
    unsettled: AtomicBool,
    wake: Notify,
}

impl Upkeep {
    /// A sandbox's policy on the runner may not be the store's (a change
    /// could not reach it): every sandbox is restored once it answers.
    pub fn unsettle(&self) {
        self.unsettled.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Whether a restore is owed since [`Upkeep::unsettle`].
    pub fn unsettled(&self) -> bool {
        self.unsettled.load(Ordering::SeqCst)
    }

    /// The runner was found out of reach: look at it now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Why the loop restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    Restarted,
    Unsettled,
    CutShort,
}

impl Owed {
    fn as_str(self) -> &'static str {
        match self {
            Owed::Restarted => "the runner restarted",
            Owed::Unsettled => "a change could not reach the runner",
            Owed::CutShort => "a change was cut short",
        }
    }
}

/// The loop (see the module), until the server is gone or stopping.
/// `seen` is the runner's instance restored at the start: `None` for a
/// runner without one (in the server's process).
pub(crate) async fn run(state: Weak<AppState>, mut seen: Option<String>) {
    // Said once when the runner stops answering, once when it answers
    // again.
    let mut away = false;
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
        // The runner's instance, if it has one; the server not held while
        // the runner is asked.
        let now = match &seen {
            None => None,
            Some(_) => {
                let Some(runner) = state.upgrade().map(|st| st.runner.clone()) else {
                    return;
                };
                match tokio::task::spawn_blocking(move || runner.instance()).await {
                    Ok(Ok(now)) => {
                        if std::mem::take(&mut away) {
                            tracing::info!("the runner answers again");
                        }
                        now
                    }
                    Ok(Err(e)) => {
                        if !std::mem::replace(&mut away, true) {
                            tracing::warn!(error = %e, "the runner does not answer; it keeps enforcing what it was last told until it does");
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "looking at the runner");
                        continue;
                    }
                }
            }
        };
        let Some(st) = state.upgrade() else { return };
        if *st.stopping.borrow() {
            return;
        }
        let owed = if now.is_some() && now != seen {
            Some(Owed::Restarted)
        } else if st.upkeep.unsettled() {
            Some(Owed::Unsettled)
        } else {
            // The lock only when there is something to finish.
            match st.store.left_open().await {
                Ok(true) => Some(Owed::CutShort),
                Ok(false) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the write journal");
                    None
                }
            }
        };
        let Some(owed) = owed else { continue };
        let mut guard = match writing(&st).await {
            Ok(guard) => guard,
            Err(e) => {
                tracing::warn!(error = %e, why = owed.as_str(), "taking the write lock to restore the sandboxes");
                continue;
            }
        };
        let done = guard
            .scope()
            .run(async {
                // A restart another replica has restored already: nothing
                // owed (unless something else is).
                if owed == Owed::Restarted
                    && !st.upkeep.unsettled()
                    && guard.left_open().is_none()
                    && st.store.restored_instance().await? == now
                {
                    return Ok(false);
                }
                tracing::warn!(
                    why = owed.as_str(),
                    "restoring every sandbox from the store"
                );
                restore(&st).await?;
                if let Some(now) = &now {
                    st.store.set_restored_instance(now).await?;
                }
                Ok::<_, crate::error::StartError>(true)
            })
            .await;
        match done {
            Ok(_) => {
                guard.recovered();
                st.upkeep.unsettled.store(false, Ordering::SeqCst);
                if now.is_some() {
                    seen = now;
                }
            }
            Err(e) => {
                // Left owed: the journal stays open (PostgreSQL) and the
                // loop tries again.
                guard.keep_open();
                tracing::error!(error = %e, why = owed.as_str(), "restoring the sandboxes; trying again");
            }
        }
        release(guard).await;
    }
}

/// Starts the loop for `state` (see [`run`]).
pub(crate) fn start(state: &Arc<AppState>, seen: Option<String>) {
    tokio::spawn(run(Arc::downgrade(state), seen));
}
