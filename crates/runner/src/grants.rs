//! Grants on the runner's side: their events, and their end on time.
//!
//! A grant reaches the runner as part of a sandbox's policy
//! ([`EffectivePolicy::grants`]). The kernel ends a network grant by
//! itself (its elements time out, and a grant's connections are evaluated
//! at every packet); a name grant's admissions end with it. What the
//! kernel cannot do alone, this module does within a tenth of a second of
//! the end: the policy without the grant is put in force, which moves the
//! generation of the connections admitted through the grant's name and
//! lets the gateway cut the connections it passed under it, and an event
//! `grant_expired` says so. The API away, this goes on: a grant never
//! outlives its end.

use crate::{apply, block_slot, lock, Sandboxes};
use sandgate_contract::{EventKind, NetworkEvent};
use sandgate_dataplane::SlotAddrs;
use sandgate_gateway::Gateway;
use sandgate_policy::{EffectivePolicy, Grant, GrantTarget};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the runner looks for grants that ended.
const TICK: Duration = Duration::from_millis(100);

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    sandgate_dataplane::now_ms()
}

fn event(sandbox: &str, grant: &Grant, reason: &str, now: u64) -> NetworkEvent {
    let (destination, domain) = match &grant.target {
        GrantTarget::Network(net) => (Some(net.to_string()), None),
        GrantTarget::Name(pattern) => (None, Some(pattern.to_string())),
    };
    NetworkEvent {
        time_ms: now,
        sandbox: sandbox.to_string(),
        kind: EventKind::Grant,
        protocol: grant.id.clone(),
        destination,
        port: None,
        domain,
        reason: reason.to_string(),
        count: None,
    }
}

/// The grant events of a change of sandbox `sandbox`'s policy from `old`
/// to `new` at `now`: `grant_added` for a grant new to it, and for one
/// that left it `grant_revoked` (before its end) or `grant_expired`.
pub(crate) fn changes(
    sandbox: &str,
    old: Option<&EffectivePolicy>,
    new: &EffectivePolicy,
    now: u64,
) -> Vec<NetworkEvent> {
    let before: &[Grant] = old.map_or(&[], |p| &p.grants);
    let mut out = Vec::new();
    for g in &new.grants {
        if !before.iter().any(|b| b.id == g.id) {
            out.push(event(sandbox, g, "grant_added", now));
        }
    }
    for g in before {
        if !new.grants.iter().any(|n| n.id == g.id) {
            let reason = if g.active(now) {
                "grant_revoked"
            } else {
                "grant_expired"
            };
            out.push(event(sandbox, g, reason, now));
        }
    }
    out
}

/// Puts in force, for every sandbox whose policy holds a grant that
/// ended, the policy without it, and starts the new period of transfer
/// quotas whose period ended, until `stop`.
pub(crate) fn expirer(
    sandboxes: Arc<Sandboxes>,
    gateway: Arc<Gateway>,
    slots: Arc<Mutex<HashMap<String, SlotAddrs>>>,
    hub: Arc<crate::events::EventHub>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(TICK);
        let now = now_ms();
        match lock(&sandboxes.dp).renew_transfer(now / 1000) {
            Ok(slots) if !slots.is_empty() => {
                tracing::info!(slots = ?slots, "a new period of transfer quotas")
            }
            Ok(_) => {}
            // Nothing widened: the quotas stay spent until it succeeds.
            Err(e) => tracing::warn!(error = %e, "starting a new period of transfer quotas"),
        }
        let held: Vec<(String, SlotAddrs)> = lock(&slots)
            .iter()
            .map(|(id, slot)| (id.clone(), slot.clone()))
            .collect();
        for (id, slot) in held {
            let _changing = lock(&sandboxes.changing);
            // A slot cut off stays so until an update rebuilds it: a grant
            // ending is no reason to put its policy back.
            if lock(&sandboxes.dp).is_cut(slot.index) {
                continue;
            }
            let Some(mut policy) = sandboxes.policy_of(&slot) else {
                continue;
            };
            if policy.grants.iter().all(|g| g.active(now)) {
                continue;
            }
            let old = policy.clone();
            policy.expire_grants(now);
            if let Err(e) = apply(&sandboxes, &gateway, &slot, &policy) {
                // `apply` put the old policy back, ended grant and all: the
                // sandbox is cut off instead (never wider than the grant's
                // end allows), until an update rebuilds it.
                tracing::error!(sandbox = %id, error = %e, "ending a grant; cutting the sandbox off");
                if let Err(e) = block_slot(&sandboxes, &gateway, &slot) {
                    tracing::error!(sandbox = %id, error = %e, "cutting off a sandbox whose grant ended");
                }
                continue;
            }
            for e in changes(&id, Some(&old), &policy, now) {
                hub.publish(e);
            }
        }
    }
}
