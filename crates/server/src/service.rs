//! What each API call does, between the handlers and the runner.
//!
//! The handlers ([`crate::api`]) parse a request and authorize its caller;
//! then they call a function here, which resolves the request against the
//! organization's tier, drives the runner (through the contract's
//! [`Runner`] trait, on a blocking thread) and the store, and holds the
//! transactions and their undo:
//!
//! - create, update, delete and tier changes are one transaction each,
//!   serialized by one write lock and run to their end even if the client
//!   goes away;
//! - a row is written in state `creating` (or `deleting`) before the
//!   runner acts and settled after, so that a crash in between leaves a row
//!   that the next start recognizes and cleans (see
//!   [`crate::Server::start`]);
//! - a failure puts back what was there, or cuts the sandbox off: never a
//!   wider policy than the one on record.

use crate::auth::{hash_key, random_id};
use crate::error::ApiError;
use crate::store::{now, Organization, SandboxRow, SandboxState, Scope};
use crate::writes::RunnerMark;
use crate::AppState;
use axum::http::StatusCode;
use sandgate_contract::{
    ExecRequest, ExecResult, FlowSubscription, Observed, ProbeTarget, Runner, RunnerError,
    SandboxSpec, Subscription,
};
use sandgate_policy::{
    check_ttl, overlaps, CompiledPolicy, Destination, EffectivePolicy, EgressAddress, Grant,
    GrantTarget, Mode, NetworkSettings, Resources, ResourcesRequest, RuntimeClass, SettingsRequest,
    Verdict,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Runs blocking work on runner `runner` ([`crate::fleet`]) off the async
/// threads.
pub(crate) async fn on_runner<T: Send + 'static>(
    st: &AppState,
    runner: &str,
    work: impl FnOnce(&dyn Runner) -> Result<T, RunnerError> + Send + 'static,
) -> Result<T, ApiError> {
    runner_call(st, runner, work).await.map_err(ApiError::from)
}

/// [`on_runner`], its error as the runner's.
async fn runner_call<T: Send + 'static>(
    st: &AppState,
    runner: &str,
    work: impl FnOnce(&dyn Runner) -> Result<T, RunnerError> + Send + 'static,
) -> Result<T, RunnerError> {
    let runner = st.fleet.get(runner)?.runner.clone();
    let done = tokio::task::spawn_blocking(move || work(&*runner))
        .await
        .map_err(RunnerError::host)?;
    if matches!(&done, Err(e) if e.is_out_of_reach()) {
        // Away or restarting: looked at now rather than at the next
        // round (a restarted runner is restored at once).
        st.upkeep.wake();
    }
    done
}

/// Runs `work` under the write lock ([`crate::writes`]), to its end even
/// if the client goes away: a dropped request must not stop a change
/// half-way (a tier stored but not applied, a policy in the kernel but not
/// in the store). The lock is taken, and a change another replica cut
/// short finished, in a task of its own, which the handler only awaits.
pub(crate) async fn transaction<T, F, Fut>(st: &Arc<AppState>, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(Arc<AppState>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
{
    let st = st.clone();
    tokio::spawn(async move {
        let mut guard = crate::writing(&st).await?;
        let done = guard
            .scope()
            .run(async {
                crate::recover(&st, &mut guard).await?;
                work(st.clone()).await
            })
            .await;
        // An unexpected failure (a 500: the runner or the store failed
        // amid it) may have left the change half-way: the next holder
        // restores every sandbox. (The others, such as a full disk or a
        // runner away, are undone by the change itself.)
        if matches!(&done, Err(e) if e.status == axum::http::StatusCode::INTERNAL_SERVER_ERROR) {
            guard.keep_open();
        }
        crate::release(guard).await;
        done
    })
    .await
    .map_err(ApiError::internal)?
}

/// 409 `sandbox_not_running`: the sandbox is not running (being made or
/// removed, its init died, or it was lost); the error carries its state.
pub fn not_running(row: &SandboxRow) -> ApiError {
    let why = match row.state {
        SandboxState::Died => ": its init died (it is kept, with its files, and not restarted); delete it and create another",
        SandboxState::Lost => ": it was gone from the host at the server's start; delete it",
        _ => "",
    };
    let mut e = ApiError::new(
        StatusCode::CONFLICT,
        "sandbox_not_running",
        format!("sandbox {} is {}, not running{why}", row.id, row.state),
    );
    e.details = Some(serde_json::json!({ "state": row.state.as_str() }));
    e
}

/// 409 unless the sandbox is running.
pub fn running(row: &SandboxRow) -> Result<(), ApiError> {
    if row.state == SandboxState::Running {
        Ok(())
    } else {
        Err(not_running(row))
    }
}

// ------------------------------------------------------- organizations --

/// Organization `id`, or 404.
pub async fn organization(st: &AppState, id: &str) -> Result<Organization, ApiError> {
    st.store
        .organization(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no organization {id}")))
}

/// Makes an organization named `name` of `tier` (the name is free: the
/// store's unique constraint decides, so that two replicas cannot both
/// make one name).
pub async fn create_organization(
    st: &AppState,
    name: String,
    tier: u8,
) -> Result<Organization, ApiError> {
    st.policy.tier(tier)?;
    let org = Organization {
        id: random_id("org-", 8)?,
        name,
        tier,
        created_at: now(),
        egress_address: None,
    };
    match st.store.add_organization(&org).await {
        Ok(()) => Ok(org),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(ApiError::new(
            StatusCode::CONFLICT,
            "name_taken",
            format!("an organization named {:?} exists", org.name),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Issues a key of organization `id` with `scopes`: the organization, the
/// key's id and the key (only its hash is kept).
pub async fn create_key(
    st: &AppState,
    id: &str,
    scopes: &std::collections::BTreeSet<Scope>,
) -> Result<(Organization, String, String), ApiError> {
    let org = organization(st, id).await?;
    let key = random_id("sg_", 32)?;
    let key_id = random_id("key-", 8)?;
    st.store
        .add_key(&key_id, &org.id, &hash_key(&key), scopes)
        .await?;
    Ok((org, key_id, key))
}

/// Revokes key `key_id` of organization `id`; 404 unless it was live.
pub async fn revoke_key(st: &AppState, id: &str, key_id: &str) -> Result<(), ApiError> {
    if st.store.revoke_key(id, key_id).await? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "no live key {key_id} in organization {id}"
        )))
    }
}

/// Changes organization `id`'s tier and applies it to each of its running
/// sandboxes before it returns (the organization, and how many took it).
/// A sandbox that cannot take its new policy is cut off rather than left
/// with the old one (`partially_applied`).
pub async fn set_tier(
    st: &Arc<AppState>,
    id: String,
    tier: u8,
) -> Result<(Organization, usize), ApiError> {
    st.policy.tier(tier)?;
    transaction(st, move |st| async move {
        let mut org = organization(&st, &id).await?;
        // The store first: should applying fail half-way, a restart
        // applies the stored tier to every sandbox.
        st.store.set_tier(&org.id, tier).await?;
        org.tier = tier;
        let reapplied = reapply(&st, &org, &format!("tier {tier}")).await?;
        Ok((org, reapplied))
    })
    .await
}

/// Gives organization `id` the known egress address `egress` (or, with
/// `None`, takes it away): its running sandboxes' new connections leave
/// from it before the answer. The address must be one of this host's
/// (409 `egress_address_not_local` otherwise): a connection given a
/// source the host does not hold would leave with a forged address.
pub async fn set_egress_address(
    st: &Arc<AppState>,
    id: String,
    egress: Option<EgressAddress>,
) -> Result<(Organization, usize), ApiError> {
    if let Some(egress) = &egress {
        egress.check(&st.policy)?;
    }
    transaction(st, move |st| async move {
        let mut org = organization(&st, &id).await?;
        if let Some(egress) = &egress {
            // An address of every runner's host (the organization's
            // sandboxes may be placed on any).
            for member in st.fleet.members() {
                let live = on_runner(&st, &member.name, |r| Ok(r.live_policy())).await?;
                if let Some((field, addr)) = egress.not_held(live.ranges()) {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "egress_address_not_local",
                        format!("{field} {addr} is not an address of this host; add it to an interface of the host (and route it to the host upstream) first"),
                    ));
                }
            }
        }
        st.store
            .set_egress_address(&org.id, egress.as_ref())
            .await?;
        org.egress_address = egress;
        let what = match &egress {
            Some(e) => format!(
                "egress address {}",
                e.addresses()
                    .map(|(_, a)| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
            None => "the host's own egress address".into(),
        };
        let reapplied = reapply(&st, &org, &what).await?;
        Ok((org, reapplied))
    })
    .await
}

/// Puts the policy of every running sandbox of `org` (as stored now) in
/// force: how many took it. One that cannot is cut off until a retry, and
/// the answer is 500 `partially_applied`, naming `what` changed.
async fn reapply(st: &Arc<AppState>, org: &Organization, what: &str) -> Result<usize, ApiError> {
    let mut reapplied = 0;
    let mut failed = Vec::new();
    for row in st.store.sandboxes(Some(&org.id)).await? {
        let policy = effective(st, org, &row);
        let mode = policy.as_ref().ok().map(|p| p.mode);
        st.metrics.sandboxes.set_mode(&row.id, mode);
        if row.state != SandboxState::Running {
            continue;
        }
        let applied = match policy {
            Ok(policy) => {
                let id = row.id.clone();
                on_runner(st, &row.runner, move |r| r.update(&id, &policy)).await
            }
            Err(e) => Err(e),
        };
        match applied {
            Ok(()) => reapplied += 1,
            Err(e) => {
                cut_off(st, &row).await;
                failed.push(format!("{} ({})", row.id, e.message));
            }
        }
    }
    if !failed.is_empty() {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "partially_applied",
            format!(
                "{what} stored and applied to {reapplied} sandboxes; {} could not take it and are cut off until a retry: {}",
                failed.len(),
                failed.join("; ")
            ),
        ));
    }
    Ok(reapplied)
}

/// Fails closed for a sandbox whose new policy could not be applied: it
/// is cut off rather than left with the old one; if even that fails, its
/// processes are stopped and it is marked lost. A runner out of reach
/// (away, or restarting) can be told neither: it keeps what it was last
/// told (restarting, nothing) until it answers again, and is then given
/// the stored policy of every sandbox ([`crate::upkeep`]); the sandbox is
/// not marked lost, which would have its restore remove it.
async fn cut_off(st: &AppState, row: &SandboxRow) {
    let id = row.id.clone();
    match runner_call(st, &row.runner, move |r| r.block(&id)).await {
        Ok(()) => return,
        Err(e) if e.is_out_of_reach() => {
            tracing::warn!(sandbox = %row.id, error = %e, "the runner is out of reach: the sandbox gets its stored policy when it answers again");
            crate::upkeep::owe(st, &row.runner, true).await;
            return;
        }
        Err(_) => {}
    }
    let id = row.id.clone();
    if let Err(e) = on_runner(st, &row.runner, move |r| r.stop(&id)).await {
        tracing::error!(sandbox = %row.id, error = %e.message, "stopping a sandbox that could be neither updated nor cut off");
    }
    if let Err(e) = st.store.set_state(&row.id, SandboxState::Lost).await {
        tracing::error!(sandbox = %row.id, error = %e, "recording a lost sandbox");
    }
}

// ----------------------------------------------------------- sandboxes --

/// The effective policy of a stored sandbox of an organization of `tier`:
/// its settings resolved, with its grants in force now.
pub fn effective(
    st: &AppState,
    org: &Organization,
    row: &SandboxRow,
) -> Result<EffectivePolicy, ApiError> {
    let settings = st.policy.stored_settings(&row.settings())?;
    resolved(st, org, &settings, row)
}

/// `settings` resolved for `tier`, with the grants of `row` in force now.
fn resolved(
    st: &AppState,
    org: &Organization,
    settings: &NetworkSettings,
    row: &SandboxRow,
) -> Result<EffectivePolicy, ApiError> {
    let grants: Vec<Grant> = stored_grants(row)?
        .into_iter()
        .map(StoredGrant::grant)
        .collect();
    let declined: Vec<String> =
        serde_json::from_str(&row.declined_names).map_err(ApiError::internal)?;
    Ok(st
        .policy
        .resolve(org.tier, settings)?
        .with_grants(&grants, now_ms())
        .with_declined(declined)
        .with_egress_address(org.egress_address))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

// -------------------------------------------------------------- grants --

/// A grant as a sandbox's row keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredGrant {
    /// `gr-...`.
    pub id: String,
    /// What it opens.
    pub target: GrantTarget,
    /// Why, as the caller said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was given (RFC 3339).
    pub created_at: String,
    /// When it ends, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

impl StoredGrant {
    fn grant(self) -> Grant {
        Grant {
            id: self.id,
            target: self.target,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// The most grants a sandbox holds at once.
pub const GRANTS_MAX: usize = 20;

/// The grants of `row` in force now (a row that cannot be read is a host
/// fault: its grants are not guessed).
pub fn stored_grants(row: &SandboxRow) -> Result<Vec<StoredGrant>, ApiError> {
    let all: Vec<StoredGrant> = serde_json::from_str(&row.grants).map_err(ApiError::internal)?;
    let now = now_ms();
    Ok(all.into_iter().filter(|g| g.expires_at_ms > now).collect())
}

/// A grant to add.
#[derive(Debug, Clone)]
pub struct NewGrant {
    /// What it opens, unparsed.
    pub target: String,
    /// How long it lasts.
    pub ttl_seconds: u64,
    /// Why.
    pub reason: Option<String>,
}

/// Puts `new` in force for sandbox `row` on its runner; one that did not
/// answer may or may not have applied it, and the sandbox is cut off
/// (never wider than on record).
async fn in_force(
    st: &Arc<AppState>,
    row: &SandboxRow,
    new: EffectivePolicy,
) -> Result<(), ApiError> {
    let id = row.id.clone();
    if let Err(e) = runner_call(st, &row.runner, move |r| r.update(&id, &new)).await {
        // Any other failure left the old policy in force, or the sandbox
        // cut off (the contract's promise).
        if matches!(e, RunnerError::Unavailable(_)) {
            cut_off(st, row).await;
        }
        return Err(e.into());
    }
    Ok(())
}

/// Puts `old`, the policy on record, back in force after a store that
/// refused the change; should that fail too, the sandbox is cut off.
async fn put_back(st: &Arc<AppState>, row: &SandboxRow, old: EffectivePolicy) {
    let id = row.id.clone();
    if let Err(undo) = on_runner(st, &row.runner, move |r| r.update(&id, &old)).await {
        tracing::error!(sandbox = %row.id, error = %undo.message, "putting back the stored policy");
        cut_off(st, row).await;
    }
}

/// Gives sandbox `key` a grant: refused unless its mode is `allowlist`
/// (403 for a restricted tier, 409 when blocked or open), checked, put in
/// force, then stored.
pub async fn add_grant(
    st: &Arc<AppState>,
    org: Organization,
    key: String,
    new: NewGrant,
) -> Result<StoredGrant, ApiError> {
    transaction(st, move |st| async move {
        let org = organization(&st, &org.id).await?;
        let row = sandbox(&st, &org, &key).await?;
        grant_locked(&st, &org, row, new).await
    })
    .await
}

/// [`add_grant`] to `row`, under the write lock its caller holds, `org`
/// and `row` read under it.
pub(crate) async fn grant_locked(
    st: &Arc<AppState>,
    org: &Organization,
    row: SandboxRow,
    new: NewGrant,
) -> Result<StoredGrant, ApiError> {
    running(&row)?;
    // The request first (400), then whether the sandbox may have it.
    check_ttl(new.ttl_seconds)?;
    let target = GrantTarget::parse(&new.target, st.policy.ranges())?;
    if let Some(reason) = &new.reason {
        if reason.chars().count() > 500 || reason.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "reason: at most 500 characters, without control characters",
            ));
        }
    }
    let old = effective(st, org, &row)?;
    match old.mode {
        Mode::Allowlist => {}
        Mode::Restricted => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "network_restricted_by_tier",
                format!("organizations of tier {} are restricted to essential services and cannot be granted more; tier 3 lifts this restriction", org.tier),
            ))
        }
        Mode::Blocked => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "network_blocked",
                "the sandbox has networkBlockAll set, which no grant opens; unset it first",
            ))
        }
        Mode::Open => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "grant_not_needed",
                "the sandbox is in open mode, which reaches every public destination already; grants widen an allow list",
            ))
        }
    }
    let mut grants = stored_grants(&row)?;
    if let Some(other) = grants.iter().find(|g| overlaps(&g.target, &target)) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "grant_overlaps",
            format!("{target} overlaps grant {} ({}); revoke it first, or grant a range that does not overlap", other.id, other.target),
        ));
    }
    if grants.len() >= GRANTS_MAX {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_grants",
            format!(
                "the sandbox holds {GRANTS_MAX} grants, the most it may; revoke one or let one end"
            ),
        ));
    }
    let grant = StoredGrant {
        id: random_id("gr-", 8)?,
        target,
        reason: new.reason,
        created_at: now(),
        expires_at_ms: now_ms().saturating_add(new.ttl_seconds.saturating_mul(1000)),
    };
    grants.push(grant.clone());
    store_grants(st, row, org, old, grants).await?;
    Ok(grant)
}

/// Revokes grant `grant` of sandbox `key` (404 when it has none such, or
/// it ended).
pub async fn revoke_grant(
    st: &Arc<AppState>,
    org: Organization,
    key: String,
    grant: String,
) -> Result<(), ApiError> {
    transaction(st, move |st| async move {
        let org = organization(&st, &org.id).await?;
        let row = sandbox(&st, &org, &key).await?;
        running(&row)?;
        let old = effective(&st, &org, &row)?;
        let mut grants = stored_grants(&row)?;
        let before = grants.len();
        grants.retain(|g| g.id != grant);
        if grants.len() == before {
            return Err(ApiError::not_found(format!(
                "sandbox {key} has no grant {grant} in force"
            )));
        }
        store_grants(&st, row, &org, old, grants).await
    })
    .await
}

/// Puts the policy of `row` (of an organization of `tier`) with `grants`
/// in force, then stores them (the old policy put back should the store
/// refuse).
async fn store_grants(
    st: &Arc<AppState>,
    mut row: SandboxRow,
    org: &Organization,
    old: EffectivePolicy,
    grants: Vec<StoredGrant>,
) -> Result<(), ApiError> {
    row.grants = serde_json::to_string(&grants).map_err(ApiError::internal)?;
    in_force_then_store(
        st,
        org,
        &row,
        old,
        st.store.set_grants(&row.id, &row.grants),
    )
    .await
}

/// Puts the policy of `row` as it is now (changed from `old`, the policy
/// on record) in force, then stores the change with `store`; should the
/// store refuse, `old` goes back in force.
pub(crate) async fn in_force_then_store(
    st: &Arc<AppState>,
    org: &Organization,
    row: &SandboxRow,
    old: EffectivePolicy,
    store: impl std::future::Future<Output = Result<(), sqlx::Error>>,
) -> Result<(), ApiError> {
    let new = effective(st, org, row)?;
    in_force(st, row, new).await?;
    if let Err(e) = store.await {
        put_back(st, row, old).await;
        return Err(e.into());
    }
    Ok(())
}

/// Stores organization `org`'s new secret.
pub async fn create_secret(
    st: &AppState,
    org: &Organization,
    new: crate::secrets::NewSecret,
) -> Result<crate::secrets::SecretView, ApiError> {
    let hosts = crate::secrets::check(&new)?;
    let key = crate::secrets::key(st)?;
    if st.store.secrets(&org.id).await?.len() >= crate::secrets::SECRETS_MAX {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "quota_exceeded",
            format!(
                "the organization has {} secrets, the most it may have; delete one first",
                crate::secrets::SECRETS_MAX
            ),
        ));
    }
    let row = crate::store::SecretRow {
        sealed: key.seal(&org.id, &new.name, &new.value)?,
        name: new.name,
        hosts,
        created_at: now(),
    };
    if !st.store.add_secret(&org.id, &row).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "secret_exists",
            format!(
                "the organization has a secret named {}; delete it first to store another value",
                row.name
            ),
        ));
    }
    tracing::info!(target: "sandgate::audit", organization = %org.id, secret = %row.name, hosts = ?row.hosts, "secret stored");
    Ok(secret_view(row))
}

fn secret_view(row: crate::store::SecretRow) -> crate::secrets::SecretView {
    crate::secrets::SecretView {
        name: row.name,
        hosts: row.hosts,
        created_at: row.created_at,
    }
}

/// Organization `org`'s secrets, never their values.
pub async fn secrets(
    st: &AppState,
    org: &Organization,
) -> Result<Vec<crate::secrets::SecretView>, ApiError> {
    Ok(st
        .store
        .secrets(&org.id)
        .await?
        .into_iter()
        .map(secret_view)
        .collect())
}

/// Removes organization `org`'s secret `name`: refused while a sandbox
/// holds it (under the write lock, as creates take secrets).
pub async fn delete_secret(
    st: &Arc<AppState>,
    org: &Organization,
    name: String,
) -> Result<(), ApiError> {
    let org_id = org.id.clone();
    transaction(st, move |st| async move {
        remove_secret(&st, &org_id, &name).await
    })
    .await
}

async fn remove_secret(st: &AppState, org_id: &str, name: &str) -> Result<(), ApiError> {
    // A sandbox whose record of its secrets cannot be read may hold it:
    // an error, not a delete.
    let mut holders = Vec::new();
    for row in st.store.sandboxes(Some(org_id)).await? {
        if crate::secrets::read_held(&row)?
            .iter()
            .any(|h| h.name == name)
        {
            holders.push(row.name);
        }
    }
    if !holders.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "secret_in_use",
            format!(
                "secret {name} is held by sandbox {}; delete {} first",
                holders.join(", "),
                if holders.len() == 1 { "it" } else { "them" }
            ),
        ));
    }
    if !st.store.remove_secret(org_id, name).await? {
        return Err(ApiError::not_found(format!("no secret {name}")));
    }
    tracing::info!(target: "sandgate::audit", organization = %org_id, secret = %name, "secret deleted");
    Ok(())
}

/// Sandbox `key` (id or name) of `org`, or 404.
pub async fn sandbox(st: &AppState, org: &Organization, key: &str) -> Result<SandboxRow, ApiError> {
    st.store
        .sandbox(&org.id, key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no sandbox {key}")))
}

/// Network settings as a request sends them: a field left out is `None`.
#[derive(Debug, Clone, Default)]
pub struct SettingsChange {
    /// `networkBlockAll`.
    pub network_block_all: Option<bool>,
    /// `networkAllowList`, unparsed.
    pub network_allow_list: Option<String>,
    /// `domainAllowList`, unparsed.
    pub domain_allow_list: Option<String>,
    /// `networkDenyList`, unparsed.
    pub network_deny_list: Option<String>,
    /// `domainDenyList`, unparsed.
    pub domain_deny_list: Option<String>,
    /// `essentialServices`.
    pub essential_services: Option<bool>,
    /// `egressMbps`: `Some(None)` goes back to the tier's default.
    pub egress_mbps: Option<Option<u32>>,
    /// `transferQuotaMiB`: `Some(None)` goes back to the tier's default.
    pub transfer_quota_mib: Option<Option<u32>>,
    /// `maxConnections`: `Some(None)` goes back to the tier's fair share.
    pub max_connections: Option<Option<u32>>,
    /// `newConnectionsPerSecond`: `Some(None)` goes back to the tier's
    /// fair share.
    pub new_connections_per_second: Option<Option<u32>>,
    /// `networkApprovals`.
    pub network_approvals: Option<bool>,
    /// `approvalHoldSeconds`.
    pub approval_hold_seconds: Option<u32>,
    /// `httpRules` (`Some(vec![])` removes them).
    pub http_rules: Option<Vec<sandgate_policy::HttpRuleRequest>>,
}

impl SettingsChange {
    fn request(&self) -> SettingsRequest<'_> {
        SettingsRequest {
            network_block_all: self.network_block_all,
            network_allow_list: self.network_allow_list.as_deref(),
            domain_allow_list: self.domain_allow_list.as_deref(),
            network_deny_list: self.network_deny_list.as_deref(),
            domain_deny_list: self.domain_deny_list.as_deref(),
            essential_services: self.essential_services,
            egress_mbps: self.egress_mbps,
            transfer_quota_mib: self.transfer_quota_mib,
            max_connections: self.max_connections,
            new_connections_per_second: self.new_connections_per_second,
            network_approvals: self.network_approvals,
            approval_hold_seconds: self.approval_hold_seconds,
            http_rules: self.http_rules.as_deref(),
        }
    }

    /// Whether, at create, it can only narrow what a sandbox reaches (no
    /// allow list sent, blocking not turned off, no bandwidth asked that
    /// could be above the tier's default; the essential services are on
    /// by default, connection budgets only ever lower the tier's fair
    /// shares): the network scope is not needed for it then.
    pub fn only_narrows(&self) -> bool {
        self.network_allow_list.is_none()
            && self.domain_allow_list.is_none()
            && self.network_block_all != Some(false)
            && self.egress_mbps.is_none()
            && self.transfer_quota_mib.is_none()
    }
}

/// A sandbox to make, its fields checked for form (names, environment);
/// what depends on the tier is checked here.
#[derive(Debug, Clone, Default)]
pub struct NewSandbox {
    /// Its name (default: its id).
    pub name: Option<String>,
    /// Its snapshot.
    pub snapshot: String,
    /// Environment variables of every exec.
    pub env: BTreeMap<String, String>,
    /// Its network settings.
    pub settings: SettingsChange,
    /// The resources it asks for.
    pub resources: ResourcesRequest,
    /// The runtime class it asks for (`None`: the tier's default).
    pub runtime_class: Option<RuntimeClass>,
    /// The organization's secrets it holds, by name.
    pub secrets: Vec<String>,
}

impl NewSandbox {
    /// The settings it asks for, validated for an organization of `tier`.
    fn settings(&self, st: &AppState, tier: u8) -> Result<NetworkSettings, ApiError> {
        Ok(st
            .policy
            .settings_for_create(tier, &self.settings.request())?)
    }

    /// The resources it gets in an organization of `tier`: the tier's
    /// defaults where it asks for nothing.
    fn resources(&self, st: &AppState, tier: u8) -> Result<Resources, ApiError> {
        Ok(st
            .policy
            .tier(tier)?
            .resources
            .resolve(tier, &self.resources)?)
    }

    /// The runtime class it gets in an organization of `tier`: the
    /// tier's default where it asks for none.
    fn runtime_class(&self, st: &AppState, tier: u8) -> Result<RuntimeClass, ApiError> {
        Ok(st
            .policy
            .tier(tier)?
            .runtime_classes
            .resolve(tier, self.runtime_class)?)
    }
}

/// Makes a sandbox of `org`: resolved against the organization's tier as
/// it is under the write lock, its row written as `creating`, then made
/// by the runner (its policy in the kernel before its first process
/// runs), then `running`. Any failure leaves nothing. The row and the
/// tier it was resolved for.
pub async fn create_sandbox(
    st: &Arc<AppState>,
    org: &Organization,
    new: NewSandbox,
) -> Result<(SandboxRow, Organization), ApiError> {
    // Validated now for a quick answer, and again under the lock with the
    // tier as it is then (a tier change may have come in between).
    new.settings(st, org.tier)?;
    new.resources(st, org.tier)?;
    new.runtime_class(st, org.tier)?;
    // The runners share their snapshots: the first one's are asked.
    let first = st.fleet.first_ready().ok_or_else(no_runner)?;
    let known = on_runner(st, &first.name, |r| r.snapshots()).await?;
    if !known.contains(&new.snapshot) {
        return Err(ApiError::not_found(format!(
            "no snapshot {}; there are: {}",
            new.snapshot,
            known.join(", ")
        )));
    }
    let org_id = org.id.clone();
    let since = now_ms();
    let made = transaction(st, move |st| async move {
        let org = organization(&st, &org_id).await?;
        let settings = new.settings(&st, org.tier)?;
        let resources = new.resources(&st, org.tier)?;
        let runtime_class = new.runtime_class(&st, org.tier)?;
        let policy = st
            .policy
            .resolve(org.tier, &settings)?
            .with_egress_address(org.egress_address);
        let (held, secrets) = crate::secrets::hold(&st, &org.id, &new.secrets).await?;
        let count = st.store.sandbox_count(&org.id).await?;
        if count >= st.max_sandboxes_per_org {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "quota_exceeded",
                format!(
                    "the organization has {count} sandboxes, the most it may have; delete one first"
                ),
            ));
        }
        let id = random_id("sb-", 8)?;
        let name = new.name.clone().unwrap_or_else(|| id.clone());
        let runner = place(&st, org.tier, runtime_class).await?;
        if st.store.sandbox(&org.id, &name).await?.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "name_taken",
                format!("a sandbox named {name:?} exists in this organization"),
            ));
        }
        let mut env = new.env.clone();
        for h in &held {
            if env.insert(h.name.clone(), h.placeholder.clone()).is_some() {
                return Err(ApiError::invalid(format!(
                    "env: {} is also a secret of this sandbox, whose placeholder it holds; leave it out of env",
                    h.name
                )));
            }
        }
        let stamp = now();
        let mut row = SandboxRow {
            id: id.clone(),
            organization_id: org.id.clone(),
            name,
            snapshot: new.snapshot.clone(),
            state: SandboxState::Creating,
            network_block_all: settings.network_block_all,
            network_allow_list: settings.network_allow_list.to_string(),
            domain_allow_list: settings.domain_allow_list.to_string(),
            network_deny_list: settings.network_deny_list.to_string(),
            domain_deny_list: settings.domain_deny_list.to_string(),
            essential_services: settings.essential_services,
            grants: "[]".into(),
            env: serde_json::to_string(&env).map_err(ApiError::internal)?,
            created_at: stamp.clone(),
            updated_at: stamp,
            memory_mib: resources.memory_mib,
            cpu_millicores: resources.cpu_millicores,
            disk_mib: resources.disk_mib,
            egress_mbps: settings.egress_mbps,
            transfer_quota_mib: settings.transfer_quota_mib,
            max_connections: settings.max_connections,
            new_connections_per_second: settings.new_connections_per_second,
            network_approvals: settings.network_approvals,
            approval_hold_seconds: settings.approval_hold_seconds,
            http_rules: settings.http_rules.to_stored(),
            secrets: if held.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&held).map_err(ApiError::internal)?
            },
            declined_names: "[]".into(),
            runner: runner.clone(),
            runtime_class,
        };
        st.store.add_sandbox(&row).await?;
        st.metrics
            .sandboxes
            .add(&id, SandboxState::Creating, Some(policy.mode));
        let spec = SandboxSpec {
            id: id.clone(),
            organization: org.id.clone(),
            snapshot: new.snapshot,
            policy,
            resources,
            runtime_class,
            secrets,
        };
        let made = on_runner(&st, &runner, move |r| r.create(&spec)).await;
        // Running, unless its init already died (and that was recorded:
        // the sandbox is kept, and shown, as died).
        let settled = match made {
            Ok(()) => st
                .store
                .move_state(&id, SandboxState::Creating, SandboxState::Running)
                .await
                .map_err(ApiError::from),
            Err(e) => Err(e),
        };
        let running = match settled {
            Ok(running) => running,
            Err(e) => {
                undo_create(&st, &runner, &id).await;
                return Err(e);
            }
        };
        row.state = if running {
            SandboxState::Running
        } else {
            SandboxState::Died
        };
        st.metrics.created();
        Ok((row, org))
    })
    .await?;
    crate::approvals::watch(st, &made.0, since).await;
    Ok(made)
}

/// Where a new sandbox of `tier` and runtime class `class` goes, under
/// the write lock: the runner with the most free slots among those that
/// answer, that the operator has not drained, that carry the tier's
/// labels ([`crate::ServerConfig::placement`]) and whose host can run the
/// class (the first in the operator's order on a tie). 503
/// `capacity_exhausted` when none has room; 503
/// `runtime_class_unavailable` when every one answered and none can run
/// the class.
async fn place(st: &AppState, tier: u8, class: RuntimeClass) -> Result<String, ApiError> {
    let wanted = st.placement.get(&tier).cloned().unwrap_or_default();
    let set_aside = st
        .store
        .marked(&[RunnerMark::Draining, RunnerMark::Owed])
        .await?;
    let candidates: Vec<_> = st
        .fleet
        .members()
        .into_iter()
        .filter(|m| !set_aside.contains(&m.name) && m.ready() && m.carries(&wanted))
        .collect();
    // One, for runc: no need to weigh (a full runner refuses, said as
    // `capacity_exhausted`). Any other class is placed only on a runner
    // whose capacity lists it: a runner older than runtime classes would
    // run runc whatever the create says, and lists runc alone.
    if let [one] = candidates.as_slice() {
        if class == RuntimeClass::Runc {
            return Ok(one.name.clone());
        }
    }
    let mut best: Option<(u32, &str)> = None;
    // Whether every runner answered, and whether any of those runs the
    // class at all.
    let (mut all_answered, mut runs_class) = (true, false);
    for member in &candidates {
        let capacity = match runner_call(st, &member.name, |r| r.capacity()).await {
            Ok(capacity) => capacity,
            Err(e) => {
                all_answered = false;
                tracing::warn!(runner = %member.name, error = %e, "reading a runner's capacity; not placing there");
                continue;
            }
        };
        if !capacity.runtime_classes.contains(&class) {
            continue;
        }
        runs_class = true;
        let free = capacity.free();
        if free > 0 && best.is_none_or(|(most, _)| free > most) {
            best = Some((free, &member.name));
        }
    }
    match best {
        Some((_, name)) => Ok(name.to_string()),
        // Said only when every runner answered: one that did not may run
        // it (`capacity_exhausted`, retried, says so then).
        None if all_answered && !candidates.is_empty() && !runs_class => {
            Err(RunnerError::ClassUnavailable(format!(
                "no runner that can take this sandbox runs runtime class {class}"
            ))
            .into())
        }
        None => Err(no_runner()),
    }
}

/// 503 `capacity_exhausted`: no runner to place a sandbox on.
fn no_runner() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "capacity_exhausted",
        "no runner that answers, is not drained and takes this tier's sandboxes has a free slot for another sandbox; delete a sandbox or retry later",
    )
    .retry_after(crate::error::CAPACITY_RETRY_SECONDS)
}

/// Every runner behind the API, as an operator sees it.
pub async fn runners(st: &AppState) -> Result<Vec<crate::api::RunnerView>, ApiError> {
    let drained = st.store.marked(&[RunnerMark::Draining]).await?;
    let rows = st.store.sandboxes(None).await?;
    let mut views = Vec::new();
    for member in st.fleet.members() {
        let capacity = if member.reachable() {
            runner_call(st, &member.name, |r| r.capacity()).await.ok()
        } else {
            None
        };
        let state = if capacity.is_none() {
            "unreachable"
        } else if drained.contains(&member.name) {
            "draining"
        } else {
            "active"
        };
        views.push(crate::api::RunnerView {
            name: member.name.clone(),
            state: state.into(),
            slots: capacity.as_ref().map(|c| c.slots),
            used: capacity.as_ref().map(|c| c.used),
            runtime_classes: capacity.map(|c| c.runtime_classes),
            sandboxes: rows.iter().filter(|r| r.runner == member.name).count(),
            labels: member.labels.clone(),
        });
    }
    Ok(views)
}

/// Drains runner `name` (no sandbox placed there from now on), or ends
/// its drain: the runner as it is then. 404 for a runner this server does
/// not drive.
pub async fn set_draining(
    st: &Arc<AppState>,
    name: String,
    draining: bool,
) -> Result<crate::api::RunnerView, ApiError> {
    if st.fleet.get(&name).is_err() {
        return Err(ApiError::not_found(format!("no runner {name}")));
    }
    let done = name.clone();
    transaction(st, move |st| async move {
        st.store
            .mark_runner(&done, RunnerMark::Draining, draining)
            .await?;
        tracing::info!(runner = %done, draining, "a runner's drain");
        Ok(())
    })
    .await?;
    runners(st)
        .await?
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no runner {name}")))
}

/// Removes a half-made sandbox: the runner's part (if any), then its row.
/// What cannot be removed now is left for the next start (a row left as
/// `creating` or `deleting` is finished then).
async fn undo_create(st: &AppState, runner: &str, id: &str) {
    let gone = id.to_string();
    match runner_call(st, runner, move |r| r.delete(&gone)).await {
        Ok(()) => {
            if let Err(e) = st.store.remove_sandbox(id).await {
                tracing::error!(sandbox = %id, error = %e, "removing a half-made sandbox's row");
            }
        }
        Err(undo) => {
            tracing::warn!(sandbox = %id, error = %undo, "undoing a failed create; the next restore finishes it");
            if let Err(e) = st.store.set_state(id, SandboxState::Deleting).await {
                tracing::error!(sandbox = %id, error = %e, "recording a sandbox to remove at the next restore");
            }
            // The runner may have made it (the create's answer lost):
            // its next restore removes it.
            if undo.is_out_of_reach() {
                crate::upkeep::owe(st, runner, true).await;
            }
        }
    }
}

/// Deletes sandbox `key` of `org`: its row marked `deleting`, the
/// runner's part removed, then the row.
pub async fn delete_sandbox(
    st: &Arc<AppState>,
    org: Organization,
    key: String,
) -> Result<(), ApiError> {
    transaction(st, move |st| async move {
        let row = sandbox(&st, &org, &key).await?;
        st.store.set_state(&row.id, SandboxState::Deleting).await?;
        let id = row.id.clone();
        if let Err(e) = runner_call(&st, &row.runner, move |r| r.delete(&id)).await {
            // Out of reach: the row stays `deleting`, and the runner's
            // next restore removes the sandbox there.
            if e.is_out_of_reach() {
                crate::upkeep::owe(&st, &row.runner, true).await;
            }
            return Err(e.into());
        }
        crate::approvals::forget(&st, &row.id);
        st.store.remove_sandbox(&row.id).await?;
        st.metrics.deleted();
        Ok(())
    })
    .await
}

/// Changes sandbox `key`'s network settings: the fields of `change` that
/// are set replace the stored ones; the result is resolved against the
/// tier as it is under the lock, applied in the kernel, then stored (and
/// the old policy put back should the store refuse). The row and its
/// tier.
pub async fn update_settings(
    st: &Arc<AppState>,
    org: Organization,
    key: String,
    change: SettingsChange,
) -> Result<(SandboxRow, Organization), ApiError> {
    let since = now_ms();
    let updated = transaction(st, move |st| async move {
        update_locked(&st, &org, &key, |_| Ok(change)).await
    })
    .await?;
    crate::approvals::watch(st, &updated.0, since).await;
    Ok(updated)
}

/// [`update_settings`] under the write lock its caller holds, the change
/// made from the sandbox's row as it is then.
pub(crate) async fn update_locked(
    st: &Arc<AppState>,
    org: &Organization,
    key: &str,
    change: impl FnOnce(&SandboxRow) -> Result<SettingsChange, ApiError>,
) -> Result<(SandboxRow, Organization), ApiError> {
    let org = organization(st, &org.id).await?;
    let mut row = sandbox(st, &org, key).await?;
    running(&row)?;
    let change = change(&row)?;
    let stored = st.policy.stored_settings(&row.settings())?;
    let settings = st
        .policy
        .settings_for_update(org.tier, &stored, &change.request())?;
    let old = effective(st, &org, &row)?;
    let new = resolved(st, &org, &settings, &row)?;
    let mode = new.mode;
    in_force(st, &row, new).await?;
    row.set_settings(&settings);
    row.updated_at = now();
    if let Err(e) = st.store.set_settings(&row).await {
        // The answer is an error: the stored policy goes back in force.
        put_back(st, &row, old).await;
        return Err(e.into());
    }
    st.metrics.sandboxes.set_mode(&row.id, Some(mode));
    Ok((row, org))
}

/// Runs `request` in running sandbox `row` of organization `org`, within
/// the organization's and the server's bounds on long calls.
pub async fn execute(
    st: &AppState,
    org: &Organization,
    row: &SandboxRow,
    request: ExecRequest,
) -> Result<ExecResult, ApiError> {
    running(row)?;
    let permits = st.blocking_permits(&org.id)?;
    let id = row.id.clone();
    // The permits live as long as the command runs, not as long as the
    // request: a client that goes away does not free them early.
    on_runner(st, &row.runner, move |r| {
        let _held = permits;
        r.exec(&id, &request)
    })
    .await
}

/// `work` on the policy of sandbox `row` compiled as the host enforces
/// it now: the host's addresses as they are, the sandbox's own addresses
/// not egress (both read from the runner, off the async threads).
///
/// `work` also learns whether the sandbox's transfer quota for the period
/// is spent (read from the runner when it has one): then nothing passes,
/// whatever the policy says.
async fn with_compiled<T>(
    st: &AppState,
    org: &Organization,
    row: &SandboxRow,
    work: impl FnOnce(&CompiledPolicy, bool) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let policy = effective(st, org, row)?;
    let id = row.id.clone();
    let metered = policy.budgets.transfer_quota_mib.is_some() && row.state == SandboxState::Running;
    let (ranges, own, spent) = on_runner(st, &row.runner, move |r| {
        let own: Vec<_> = r.addresses(&id).map(Vec::from).unwrap_or_default();
        let spent = metered && r.transfer_usage(&id)?.is_some_and(|u| u.spent);
        Ok((r.live_policy(), own, spent))
    })
    .await?;
    work(
        &CompiledPolicy::new(policy, &st.catalog, &ranges).with_own_addresses(&own),
        spent,
    )
}

/// `verdict`, refused when the transfer quota is `spent`.
fn in_quota(verdict: Verdict, spent: bool) -> Verdict {
    match spent {
        true => verdict.with_quota_spent(),
        false => verdict,
    }
}

/// What sandbox `row`'s policy does with `destination`, without sending
/// anything: the verdict and the sandbox's mode.
pub async fn explain(
    st: &AppState,
    org: &Organization,
    row: &SandboxRow,
    destination: &Destination,
) -> Result<(Verdict, String), ApiError> {
    with_compiled(st, org, row, |compiled, spent| {
        Ok((
            in_quota(compiled.explain(destination), spent),
            compiled.policy().mode.as_str().to_string(),
        ))
    })
    .await
}

/// Sandbox `row`'s transfer quota as its runner counts it now (`None`:
/// it has none).
pub async fn transfer_usage(
    st: &AppState,
    row: &SandboxRow,
) -> Result<Option<sandgate_contract::TransferUsage>, ApiError> {
    running(row)?;
    let id = row.id.clone();
    on_runner(st, &row.runner, move |r| r.transfer_usage(&id)).await
}

/// Probes `targets` from running sandbox `row`: each one's verdict beside
/// what the probe saw, and the sandbox's mode.
pub async fn network_test(
    st: &AppState,
    org: &Organization,
    row: &SandboxRow,
    targets: Vec<ProbeTarget>,
) -> Result<(Vec<(Verdict, Observed)>, String), ApiError> {
    running(row)?;
    let (expected, mode) = with_compiled(st, org, row, |compiled, spent| {
        let verdicts = targets
            .iter()
            .map(|t| {
                let verdict = compiled.explain(&t.to_string().parse::<Destination>()?);
                Ok(in_quota(verdict, spent))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok((verdicts, compiled.policy().mode.as_str().to_string()))
    })
    .await?;
    // A test holds a blocking thread and a thread per target for up to
    // 3 s: it counts against the same limits as an exec.
    let permits = st.blocking_permits(&org.id)?;
    let id = row.id.clone();
    let observed = on_runner(st, &row.runner, move |r| {
        let _held = permits;
        r.probe(&id, &targets)
    })
    .await?;
    Ok((expected.into_iter().zip(observed).collect(), mode))
}

/// Running sandbox `row`'s recent network events and its next ones.
pub async fn subscribe(st: &AppState, row: &SandboxRow) -> Result<Subscription, ApiError> {
    running(row)?;
    let id = row.id.clone();
    on_runner(st, &row.runner, move |r| r.subscribe(&id)).await
}

/// Running sandbox `row`'s flow log as it stands and its next records.
pub async fn flows(st: &AppState, row: &SandboxRow) -> Result<FlowSubscription, ApiError> {
    running(row)?;
    let id = row.id.clone();
    on_runner(st, &row.runner, move |r| r.flows(&id)).await
}

/// Whether the store answers and the runner enforces.
pub async fn healthy(st: &AppState) -> Result<(), &'static str> {
    if st.store.organizations().await.is_err() {
        return Err("the store does not answer");
    }
    // The runner may take a lock held for a slot's making: not on an
    // async worker.
    // Every runner that answers enforces (one away is `unreachable`,
    // said by its sandboxes and `GET /api/admin/runners`), and one at
    // least answers.
    let mut answering = 0;
    for member in st.fleet.members() {
        // One the upkeep loop found away is not asked (a runner apart
        // from the API says unhealthy when it does not answer).
        if !member.reachable() {
            continue;
        }
        match runner_call(st, &member.name, |r| Ok(r.healthy())).await {
            Ok(true) => answering += 1,
            Ok(false) => return Err("the dataplane's ruleset went missing"),
            Err(_) => {}
        }
    }
    if answering == 0 {
        return Err("no runner answers");
    }
    Ok(())
}
