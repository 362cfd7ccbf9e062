//! Runners that register themselves (`sandgate runner --api URL`).
//!
//! The operator issues a runner a token under a name
//! (`POST /api/admin/runners`, shown once, kept as its SHA-256). The
//! runner sends a heartbeat with it every few seconds
//! (`POST /api/runners/heartbeat`): the URL the API reaches it at, the
//! token the API calls it with, its slots. The first heartbeat a replica
//! takes (or, for the other replicas, the runners' table read by the
//! upkeep loop) makes the runner a member of the fleet: connected through
//! the server's [`Connector`] (the operator's CA), restored from the store
//! (it serves nothing before), then placed on like any other. Whether it
//! is reachable is still the API's own look ([`crate::upkeep`]); the
//! heartbeat is what makes it known, and what the operator sees.

use crate::error::ApiError;
use crate::fleet::{check_label, check_name, Member};
use crate::upkeep::{restore_member, Owed};
use crate::writes::RunnerBeat;
use crate::{release, writing, AppState};
use axum::http::StatusCode;
use sandgate_contract::{Runner, RunnerError};
use std::sync::Arc;

/// How the server reaches a runner that registered: its URL and the token
/// to call it with, to a runner (the operator's CA checked). Blocking.
#[derive(Clone)]
pub struct Connector(
    #[allow(clippy::type_complexity)]
    pub  Arc<dyn Fn(&str, &str) -> Result<Arc<dyn Runner>, RunnerError> + Send + Sync>,
);

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

/// A heartbeat as a runner sends it.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Heartbeat {
    /// The name its token was issued under.
    pub name: String,
    /// Where the API reaches it (`https://host:port`).
    pub url: String,
    /// The token the API calls it with (at least 16 characters).
    pub call_token: String,
    /// The sandboxes it can hold.
    pub slots: u32,
    /// The sandboxes it holds.
    pub used: u32,
}

/// The heartbeat of a runner that asked for no change: 200 with its name.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    /// Its name.
    pub name: String,
    /// Whether this replica drives it (it is placed on).
    pub member: bool,
}

/// Issues runner `name` a token to register with, and the labels it
/// carries (another token replaces it, and cuts off the runner that
/// registered with the old one: it is out of the fleet until it sends a
/// heartbeat with the new one): the token, shown once. 409 for the name
/// of a runner the server was started with.
pub async fn issue(
    st: &Arc<AppState>,
    name: String,
    labels: crate::fleet::Labels,
) -> Result<String, ApiError> {
    check_name(&name).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", m))?;
    for (k, v) in &labels {
        check_label("name", k)
            .and_then(|()| check_label("value", v))
            .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_label", m))?;
    }
    if st.fleet.get(&name).is_ok_and(|m| m.link.is_none()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "runner_name_taken",
            format!("runner {name} is one this server was started with (--runner); give the new runner another name"),
        ));
    }
    let token = crate::auth::random_id("sgr_", 32)?;
    let hash = crate::auth::hash_key(&token);
    let named = name.clone();
    crate::service::transaction(st, move |st| async move {
        st.store.set_runner_token(&named, &hash, &labels).await?;
        Ok(())
    })
    .await?;
    // The runner of the old token is cut off here at once; the other
    // replicas see it at their next look.
    st.fleet.remove_registered(&name);
    tracing::info!(runner = %name, "issued a runner's token");
    Ok(token)
}

/// Takes runner `beat.name`'s heartbeat, sent with `token`: recorded, and
/// the runner made a member of the fleet (in a task of its own, one at a
/// time for each name) if it is not one yet, or not at the URL and with
/// the call token it says now. 401 for a token that is not the one issued
/// under that name.
pub async fn heartbeat(
    st: &Arc<AppState>,
    token: &str,
    beat: Heartbeat,
) -> Result<Registered, ApiError> {
    let refused = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "not a runner's token for this name: issue one with 'sandgate admin runner token NAME'",
        )
    };
    let Some(hash) = st.store.runner_token(&beat.name).await? else {
        return Err(refused());
    };
    if !crate::auth::same(&hash, &crate::auth::hash_key(token)) {
        return Err(refused());
    }
    if beat.call_token.trim().len() < 16 {
        return Err(ApiError::invalid("callToken: at least 16 characters"));
    }
    let stored = RunnerBeat {
        url: beat.url.clone(),
        call_token: beat.call_token.clone(),
        at_ms: i64::try_from(crate::service::now_ms()).unwrap_or(i64::MAX),
        slots: beat.slots,
        used: beat.used,
        labels: crate::fleet::Labels::new(),
    };
    st.store.heartbeat(&beat.name, &stored).await?;
    let member = joined_as(st, &beat.name, &stored);
    if !member {
        let st = st.clone();
        let name = beat.name.clone();
        tokio::spawn(async move { try_join(&st, &name).await });
    }
    Ok(Registered {
        name: beat.name,
        member,
    })
}

/// Whether runner `name` is a member reached as `beat` says.
fn joined_as(st: &AppState, name: &str, beat: &RunnerBeat) -> bool {
    st.fleet.get(name).is_ok_and(|m| match &m.link {
        Some((url, call_token)) => *url == beat.url && *call_token == beat.call_token,
        // One the server was started with: not joined again.
        None => true,
    })
}

/// Makes the runners that registered (with any replica) members of this
/// replica's fleet, as the store has them now; a registered member whose
/// token was replaced leaves it.
pub(crate) async fn join_registered(st: &Arc<AppState>) {
    if st.connector.is_none() {
        return;
    }
    let registered = match st.store.registered().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "reading the registered runners");
            return;
        }
    };
    for member in st.fleet.members() {
        if member.link.is_some() && !registered.iter().any(|(n, _)| *n == member.name) {
            st.fleet.remove_registered(&member.name);
            tracing::warn!(runner = %member.name, "a runner's token was replaced: it is cut off until it registers with the new one");
        }
    }
    for (name, beat) in registered {
        if !joined_as(st, &name, &beat) {
            try_join(st, &name).await;
        }
    }
}

/// Joins runner `name` as the store has it, unless a join of it is under
/// way; a failure is said once (until it joins).
async fn try_join(st: &Arc<AppState>, name: &str) {
    if !st.fleet.begin_join(name) {
        return;
    }
    let beat = match st.store.registered().await {
        Ok(all) => all.into_iter().find(|(n, _)| n == name).map(|(_, b)| b),
        Err(e) => {
            tracing::warn!(runner = %name, error = %e, "reading a registered runner");
            None
        }
    };
    let joined = match beat {
        // Joined meanwhile (by the join this one waited on).
        Some(beat) if joined_as(st, name, &beat) => Ok(()),
        Some(beat) => join(st, name, &beat).await,
        None => Err("its token was replaced".into()),
    };
    if st.fleet.end_join(name, joined.is_ok()) {
        if let Err(why) = joined {
            tracing::warn!(runner = %name, error = %why, "a runner that registered cannot join yet");
        }
    }
}

/// Connects to runner `name` as `beat` says, restores it from the store
/// (under the write lock, its changes fenced as every runner's) and puts
/// it in the fleet.
async fn join(st: &Arc<AppState>, name: &str, beat: &RunnerBeat) -> Result<(), String> {
    let url = beat.url.as_str();
    let Some(connector) = st.connector.clone() else {
        return Err("this server takes no registration (start it with --register-runners)".into());
    };
    let (u, t) = (beat.url.clone(), beat.call_token.clone());
    let runner = tokio::task::spawn_blocking(move || (connector.0)(&u, &t))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let instance = {
        let runner = runner.clone();
        match tokio::task::spawn_blocking(move || runner.instance()).await {
            Ok(Ok(instance)) => instance,
            // Not read: restored again at the next look, as at a start.
            _ => Some(String::new()),
        }
    };
    let member = Member::new(name.to_string(), runner, Some(String::new()))
        .with_labels(beat.labels.clone())
        .with_link(beat.url.clone(), beat.call_token.clone());
    let guard = writing(st).await.map_err(|e| e.to_string())?;
    // Its changes carry the lock's generation, as every member's do
    // (a runner refuses an older one than it took).
    member.runner.fence(guard.generation());
    // Restored before it is placed on (a runner serves nothing before).
    let restored = guard
        .scope()
        .run(restore_member(
            st,
            &member,
            Owed::Joined,
            instance.as_deref().filter(|i| !i.is_empty()),
        ))
        .await;
    let joined = match restored {
        Ok(_) => {
            member.set_restored(instance);
            st.fleet.put(member)
        }
        Err(e) => Err(format!("restoring it: {e}")),
    };
    release(guard).await;
    let member = joined?;
    crate::follow_deaths(st, &member);
    tracing::info!(runner = %name, url, "a runner joined");
    crate::upkeep::rewatch(st).await;
    Ok(())
}
