//! Access requests: what a sandbox with `networkApprovals` was refused,
//! for its owner to approve or deny (docs/REQUIREMENTS.md, "Approvals").
//!
//! The server watches the events of each running sandbox that has
//! approvals on (the runner's stream, as any subscriber gets it): a name
//! the DNS service refused (`dns_not_allowed`) or a connection the kernel
//! denied for not being in the allow list (`not_in_allow_list`) counts as
//! an attempt at its target, which opens an access request, or counts on
//! the one open (deduplicated by target). What a deny list or an
//! always-denied range refuses opens none: no approval could open it.
//!
//! An approval is a grant (with a TTL) or a permanent list entry (without),
//! made under the write lock like any other change, and the request is
//! decided in the same step. The requests are stored: they survive a
//! restart, and go with their sandbox.

use crate::error::ApiError;
use crate::service::{self, transaction};
use crate::store::{
    AccessRequest, Attempt, Organization, RequestState, SandboxRow, SandboxState, TargetKind,
};
use crate::AppState;
use axum::http::StatusCode;
use sandgate_contract::{EventKind, NetworkEvent};
use sandgate_policy::DECLINED_MAX;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

/// The most access requests a sandbox holds (decided ones included);
/// attempts at further targets are counted in the metrics only.
pub const REQUESTS_MAX: usize = 100;

/// The target an event is an attempt at, if it opens a request.
fn attempt_of(e: &NetworkEvent) -> Option<(String, TargetKind)> {
    match (e.kind, e.reason.as_str()) {
        (EventKind::Dns, "dns_not_allowed") => Some((e.domain.clone()?, TargetKind::Name)),
        (EventKind::Connection, "not_in_allow_list") => {
            let addr: std::net::IpAddr = e.destination.as_deref()?.parse().ok()?;
            Some((addr.to_string(), TargetKind::Address))
        }
        _ => None,
    }
}

/// Watches sandbox `row`'s events for attempts if it has approvals on
/// (and is not watched yet), from `since_ms` on (its recent events from
/// then are counted too); stops watching it if it has them off.
pub async fn watch(st: &Arc<AppState>, row: &SandboxRow, since_ms: u64) {
    if !row.network_approvals {
        forget(st, &row.id);
        return;
    }
    // Another replica leads: it watches (see [`lead`]).
    if !st.leads_approvals.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    if crate::lock(&st.watchers).contains_key(&row.id) {
        return;
    }
    let id = row.id.clone();
    let (recent, mut live) = match service::on_runner(st, &row.runner, move |r| r.subscribe(&id))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(sandbox = %row.id, error = %e.message, "watching a sandbox's events for access requests");
            return;
        }
    };
    let watcher = Watcher {
        store: st.store.clone(),
        requests: st.requests.clone(),
        counts: st.metrics.approvals.clone(),
        sandbox: row.id.clone(),
    };
    let mut stopping = st.stopping.subscribe();
    let task = tokio::spawn(async move {
        let stop = async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stop);
        for e in recent.iter().filter(|e| e.time_ms >= since_ms) {
            watcher.note(e, true).await;
        }
        loop {
            tokio::select! {
                next = live.recv() => match next {
                    Ok(e) => watcher.note(&e, false).await,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(sandbox = %watcher.sandbox, lost = n, "access requests: events lost while busy");
                    }
                    Err(RecvError::Closed) => break,
                },
                () = &mut stop => break,
            }
        }
    });
    let mut watchers = crate::lock(&st.watchers);
    // Another call may have started one meanwhile: one watcher each.
    if watchers.contains_key(&row.id) {
        task.abort();
    } else {
        watchers.insert(row.id.clone(), task.abort_handle());
    }
}

/// What a task watching one sandbox's events holds.
struct Watcher {
    store: crate::store::Store,
    requests: tokio::sync::broadcast::Sender<AccessRequest>,
    counts: Arc<crate::metrics::ApprovalCounts>,
    sandbox: String,
}

impl Watcher {
    /// Counts `e`, if it is an attempt (`replayed`: one of the recent
    /// events a new watcher is given, perhaps counted before).
    async fn note(&self, e: &NetworkEvent, replayed: bool) {
        let Some((target, kind)) = attempt_of(e) else {
            return;
        };
        let attempt = Attempt {
            sandbox_id: &self.sandbox,
            target: &target,
            kind,
            protocol: (kind == TargetKind::Address).then_some(e.protocol.as_str()),
            port: e.port,
            at_ms: e.time_ms,
            replayed,
        };
        let id = match crate::auth::random_id("ar-", 8) {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e.message, "an access request's id");
                return;
            }
        };
        match self.store.note_attempt(&attempt, &id, REQUESTS_MAX).await {
            Ok(Some(request)) => {
                if request.attempts == 1 {
                    self.counts.opened.inc();
                }
                // Nobody following is no fault.
                let _ = self.requests.send(request);
            }
            Ok(None) if !replayed => {
                self.counts.dropped.inc();
            }
            Ok(None) => {}
            Err(err) => {
                tracing::error!(sandbox = %self.sandbox, error = %err, "recording an access request");
            }
        }
    }
}

/// Stops watching sandbox `id`.
pub fn forget(st: &AppState, id: &str) {
    if let Some(task) = crate::lock(&st.watchers).remove(id) {
        task.abort();
    }
}

/// Access request `id` of `row`, or 404.
async fn request_of(st: &AppState, row: &SandboxRow, id: &str) -> Result<AccessRequest, ApiError> {
    st.store.access_request(&row.id, id).await?.ok_or_else(|| {
        ApiError::not_found(format!("sandbox {} has no access request {id}", row.name))
    })
}

/// 409 `request_decided` unless `request` is pending.
fn pending(request: &AccessRequest) -> Result<(), ApiError> {
    if request.state == RequestState::Pending {
        return Ok(());
    }
    let mut e = ApiError::new(
        StatusCode::CONFLICT,
        "request_decided",
        format!(
            "access request {} was {} already; a new attempt at {} after its approval ended opens it again",
            request.id,
            request.state.as_str(),
            request.target
        ),
    );
    e.details = Some(serde_json::json!({ "state": request.state.as_str() }));
    Err(e)
}

/// How an approval opens its target.
#[derive(Debug, Clone, Copy)]
pub enum Approval {
    /// A grant for this many seconds.
    For(u64),
    /// A permanent entry of the allow list.
    Permanently,
}

/// Approves access request `id` of sandbox `key`: its target granted for
/// a time or added to the allow list, in force before the answer (a DNS
/// query held for it is answered then).
pub async fn approve(
    st: &Arc<AppState>,
    org: Organization,
    key: String,
    id: String,
    how: Approval,
) -> Result<AccessRequest, ApiError> {
    let decided = transaction(st, move |st| async move {
        // Read under the lock: the tier as it is now.
        let org = service::organization(&st, &org.id).await?;
        let row = service::sandbox(&st, &org, &key).await?;
        let request = request_of(&st, &row, &id).await?;
        pending(&request)?;
        let grant = match how {
            Approval::For(ttl_seconds) => {
                let new = service::NewGrant {
                    target: request.target.clone(),
                    ttl_seconds,
                    reason: Some(format!("access request {}", request.id)),
                };
                Some(service::grant_locked(&st, &org, row, new).await?.id)
            }
            Approval::Permanently => {
                let target = request.target.clone();
                let kind = request.kind;
                service::update_locked(&st, &org, &row.id, move |row| {
                    let (list, field) = match kind {
                        TargetKind::Name => (&row.domain_allow_list, "domain"),
                        TargetKind::Address => (&row.network_allow_list, "network"),
                    };
                    let joined = if list.is_empty() {
                        target
                    } else {
                        format!("{list},{target}")
                    };
                    let mut change = service::SettingsChange::default();
                    match field {
                        "domain" => change.domain_allow_list = Some(joined),
                        _ => change.network_allow_list = Some(joined),
                    }
                    Ok(change)
                })
                .await?;
                None
            }
        };
        decide(&st, &request, RequestState::Approved, grant.as_deref()).await
    })
    .await?;
    st.metrics.approvals.approved.inc();
    let _ = st.requests.send(decided.clone());
    Ok(decided)
}

/// Decides pending `request` (under the write lock, so it is pending
/// still).
async fn decide(
    st: &AppState,
    request: &AccessRequest,
    to: RequestState,
    grant: Option<&str>,
) -> Result<AccessRequest, ApiError> {
    st.store
        .decide(&request.id, to, grant, service::now_ms())
        .await?
        .ok_or_else(|| {
            ApiError::internal(format!(
                "access request {} changed under the write lock",
                request.id
            ))
        })
}

/// Denies access request `id` of sandbox `key`: it stays closed, its
/// later attempts counted. A denied name joins the policy's declined
/// names (in force before the answer), so that the DNS service refuses
/// it at once, a query held for it included, instead of holding it.
pub async fn deny(
    st: &Arc<AppState>,
    org: Organization,
    key: String,
    id: String,
) -> Result<AccessRequest, ApiError> {
    let decided = transaction(st, move |st| async move {
        let org = service::organization(&st, &org.id).await?;
        let mut row = service::sandbox(&st, &org, &key).await?;
        let request = request_of(&st, &row, &id).await?;
        pending(&request)?;
        if request.kind == TargetKind::Name && row.state == SandboxState::Running {
            let mut declined: Vec<String> =
                serde_json::from_str(&row.declined_names).map_err(ApiError::internal)?;
            if !declined.contains(&request.target) && declined.len() < DECLINED_MAX {
                declined.push(request.target.clone());
                let old = service::effective(&st, &org, &row)?;
                row.declined_names =
                    serde_json::to_string(&declined).map_err(ApiError::internal)?;
                let stored = st.store.set_declined(&row.id, &row.declined_names);
                service::in_force_then_store(&st, &org, &row, old, stored).await?;
            }
        }
        decide(&st, &request, RequestState::Denied, None).await
    })
    .await?;
    st.metrics.approvals.denied.inc();
    let _ = st.requests.send(decided.clone());
    Ok(decided)
}

/// Watches every running sandbox with approvals on from `since_ms` (a
/// start; a replica taking the lead), and stops watching the others (gone,
/// or no longer running, or their approvals off through another replica).
pub async fn watch_all(st: &Arc<AppState>, since_ms: u64) -> Result<(), sqlx::Error> {
    let rows = st.store.approving().await?;
    let wanted: std::collections::HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    crate::lock(&st.watchers).retain(|id, task| {
        let keep = wanted.contains(id.as_str()) && !task.is_finished();
        if !keep {
            task.abort();
        }
        keep
    });
    for row in &rows {
        watch(st, row, since_ms).await;
    }
    Ok(())
}

/// On a store that replicas share, one of them watches the sandboxes'
/// events for attempts at a time, so that each attempt is counted once:
/// the replica holding the lead ([`crate::store::Store::try_lead`]). It
/// looks again every [`crate::writes::SWEEP`] for sandboxes another
/// replica made or changed; a replica that takes the lead over counts the
/// recent events the runner still holds that the last one had not
/// (those it had are not counted twice: an attempt counts only if newer
/// than the last one counted for its target). On SQLite the one server
/// leads from its start.
pub async fn lead(state: std::sync::Weak<AppState>) {
    let mut held: Option<crate::writes::Lead> = None;
    loop {
        let Some(st) = state.upgrade() else { return };
        if *st.stopping.borrow() {
            return;
        }
        let alive = match held.as_mut() {
            Some(lead) => Some(lead.held().await),
            None => None,
        };
        let since = match alive {
            Some(true) => Some(service::now_ms().saturating_sub(LOOK_BACK_MS)),
            Some(false) => {
                tracing::warn!("lost the lead over access requests");
                held = None;
                st.leads_approvals
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                for (_, task) in crate::lock(&st.watchers).drain() {
                    task.abort();
                }
                None
            }
            None => match st.store.try_lead().await {
                Ok(Some(lead)) => {
                    tracing::info!("leading the watch over access requests");
                    held = Some(lead);
                    st.leads_approvals
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    Some(service::now_ms().saturating_sub(LOOK_BACK_MS))
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "taking the lead over access requests");
                    None
                }
            },
        };
        if let Some(since) = since {
            if let Err(e) = watch_all(&st, since).await {
                tracing::warn!(error = %e, "watching the sandboxes for access requests");
            }
        }
        drop(st);
        tokio::time::sleep(crate::writes::SWEEP).await;
    }
}

/// How far back a replica that starts watching a sandbox it did not make
/// counts its recent events: a few of the lead's looks.
const LOOK_BACK_MS: u64 = 10_000;
