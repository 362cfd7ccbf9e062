//! Snapshots from OCI images, on every runner (`/api/snapshots`).
//!
//! A snapshot is a runner's: each runner pulls the image itself (from the
//! registries its operator configured; the pull is the runner's traffic,
//! never a sandbox's) and keeps its layers by digest. The API asks every
//! runner of the fleet in turn, so that a sandbox can start from the
//! snapshot wherever it is placed; a runner that failed leaves the others
//! with it, and the same request again completes it (a runner that holds
//! the image's layers fetches nothing). One change at a time
//! ([`AppState::snapshot_changes`]), each run to its end on a task of its
//! own: a client that goes away midway leaves no runner behind the others.

use crate::error::ApiError;
use crate::service::on_runner;
use crate::AppState;
use axum::http::StatusCode;
use sandgate_contract::PulledSnapshot;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A change, to run on a task of its own.
type Change<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send>>;

/// Runs `work` (given the state) on a task of its own, under the
/// snapshots' lock: it ends whether or not its caller waits.
async fn change<T: Send + 'static>(
    st: &Arc<AppState>,
    work: impl FnOnce(Arc<AppState>) -> Change<T> + Send + 'static,
) -> Result<T, ApiError> {
    let st = st.clone();
    tokio::spawn(async move {
        let _one = st.snapshot_changes.lock().await;
        work(st.clone()).await
    })
    .await
    .map_err(ApiError::internal)?
}

/// The longest image reference taken.
const IMAGE_MAX: usize = 512;

/// A snapshot as made on each runner.
#[derive(Debug)]
pub struct Made {
    /// What the first runner made (the same image on every one).
    pub pulled: PulledSnapshot,
    /// The runners that made it, in the fleet's order.
    pub runners: Vec<String>,
}

/// Makes snapshot `name` from `image` on every runner. 409
/// `snapshot_in_use` while a sandbox uses a snapshot of that name (its
/// files must not change under it).
pub async fn pull(st: &Arc<AppState>, name: String, image: String) -> Result<Made, ApiError> {
    change(st, move |st| {
        Box::pin(async move { pull_now(&st, name, image).await })
    })
    .await
}

async fn pull_now(st: &AppState, name: String, image: String) -> Result<Made, ApiError> {
    crate::api::check_name("snapshot", &name)?;
    if image.is_empty() || image.len() > IMAGE_MAX || image.chars().any(char::is_whitespace) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_image",
            format!("image: an OCI image reference of 1 to {IMAGE_MAX} characters without spaces (python:3.12-slim, registry.example.com/team/tool@sha256:...)"),
        ));
    }
    in_use(st, &name).await?;
    let mut made: Option<PulledSnapshot> = None;
    let mut runners = Vec::new();
    for member in st.fleet.members() {
        let (n, i) = (name.clone(), image.clone());
        let pulled = on_runner(st, &member.name, move |r| r.pull_snapshot(&n, &i)).await?;
        tracing::info!(runner = %member.name, snapshot = %name, image = %pulled.image, digest = %pulled.digest, fetched = pulled.fetched, "snapshot made from an image");
        made.get_or_insert(pulled);
        runners.push(member.name.clone());
    }
    let pulled = made.ok_or_else(|| ApiError::internal("the fleet has no runner"))?;
    Ok(Made { pulled, runners })
}

/// The media types an uploaded archive may be sent as.
pub const ARCHIVE_TYPES: &[&str] = &[
    "application/x-tar",
    "application/gzip",
    "application/octet-stream",
];

/// Makes snapshot `name` on every runner from the archive `body`, spooled
/// first to a file with no name (at most the operator's upload limit:
/// 413 `payload_too_large`, said as soon as the body passes it). The
/// runners that made it, in the fleet's order.
pub async fn upload(
    st: &Arc<AppState>,
    name: String,
    body: axum::body::Body,
) -> Result<Vec<String>, ApiError> {
    use futures_util::StreamExt;
    use std::io::{Seek, Write};
    crate::api::check_name("snapshot", &name)?;
    in_use(st, &name).await?;
    let mut file = sandgate_contract::spool_file()?;
    let mut stream = body.into_data_stream();
    let mut taken = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("reading the archive: {e}")))?;
        taken += chunk.len() as u64;
        if taken > st.snapshot_upload_limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "a snapshot archive may have at most {} bytes",
                    st.snapshot_upload_limit
                ),
            ));
        }
        file.write_all(&chunk)?;
    }
    if taken == 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "the body is empty: send a root filesystem tar archive",
        ));
    }
    change(st, move |st| {
        Box::pin(async move {
            in_use(&st, &name).await?;
            let mut runners = Vec::new();
            for member in st.fleet.members() {
                file.rewind()?;
                let (n, archive) = (name.clone(), file.try_clone()?);
                on_runner(&st, &member.name, move |r| r.import_snapshot(&n, archive)).await?;
                tracing::info!(runner = %member.name, snapshot = %name, bytes = taken, "snapshot made from an archive");
                runners.push(member.name.clone());
            }
            Ok(runners)
        })
    })
    .await
}

/// The snapshots of every runner that answers: name, and the runners
/// that hold it.
pub async fn list(st: &AppState) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let mut all: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for member in st.fleet.members() {
        if !member.reachable() {
            continue;
        }
        match on_runner(st, &member.name, |r| r.snapshots()).await {
            Ok(names) => {
                for name in names {
                    all.entry(name).or_default().push(member.name.clone());
                }
            }
            Err(e) => {
                tracing::warn!(runner = %member.name, error = ?e, "listing a runner's snapshots");
            }
        }
    }
    Ok(all)
}

/// Removes snapshot `name` from every runner: 409 `snapshot_in_use`
/// while a sandbox uses it, 404 when no runner has it.
pub async fn delete(st: &Arc<AppState>, name: String) -> Result<(), ApiError> {
    change(st, move |st| {
        Box::pin(async move { delete_now(&st, name).await })
    })
    .await
}

async fn delete_now(st: &AppState, name: String) -> Result<(), ApiError> {
    crate::api::check_name("snapshot", &name)?;
    in_use(st, &name).await?;
    let mut found = false;
    for member in st.fleet.members() {
        let n = name.clone();
        match on_runner(st, &member.name, move |r| r.delete_snapshot(&n)).await {
            Ok(()) => found = true,
            Err(e) if e.status == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    if found {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no snapshot {name}")))
    }
}

/// 409 `snapshot_in_use` if a sandbox (of any organization) starts from
/// snapshot `name`.
async fn in_use(st: &AppState, name: &str) -> Result<(), ApiError> {
    let users = st
        .store
        .sandboxes(None)
        .await?
        .into_iter()
        .filter(|s| s.snapshot == name)
        .count();
    if users > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "snapshot_in_use",
            format!("snapshot {name} is in use by {users} sandbox(es); delete them first"),
        ));
    }
    Ok(())
}
