//! The write lock: one change at a time (a create, an update, a delete, a
//! tier change, a grant, a decision, a death), across every API replica
//! of a store.
//!
//! A change spans the store and the runner (a row written `creating`, the
//! runner's part, the row settled), so a database transaction cannot hold
//! it: the runner's part is no statement. Instead:
//!
//! - within a process, a mutex ([`Store::writing`] takes it first, so
//!   that a replica queues its own writers and uses one database
//!   connection for the lock, never its whole pool);
//! - on PostgreSQL, then, a session-level advisory lock, held on that
//!   connection for the whole change. PostgreSQL releases it when the
//!   session ends: at once for a replica killed amid a change (`kill -9`:
//!   its host closes the connection); for a host lost or cut off, when
//!   the server's TCP keepalive gives the connection up (its
//!   `tcp_keepalives_*` settings; docs/OPERATIONS.md). The store's calls
//!   within a change go through that same connection, so a replica
//!   whose session ended writes nothing more, and the runner refuses
//!   what it still sends (the generation below);
//! - the write journal (one row) says whether the last holder finished:
//!   the holder sets `open` as it takes the lock and clears it when its
//!   change ended, done or undone. A holder that finds it set knows that
//!   the last one died amid a change, which may have left a row
//!   `creating` or `deleting`, or a policy in force that differs from the
//!   stored one; before its own change it restores every sandbox from the
//!   rows, exactly as a start does ([`crate::recover`]). A change cut short
//!   is therefore finished by the next write of any replica (and by a
//!   check every [`SWEEP`] otherwise), and never widens a policy: what the
//!   runner holds is made what the store says.
//!
//! On SQLite one server owns the store (its data directory is locked), so
//! the mutex is the whole lock, and a change cut short by a crash is
//! finished by the next start.

use crate::store::{now, Backend, Store};
use sqlx::pool::PoolConnection;
use sqlx::{Any, Row};
use std::sync::Arc;

/// The advisory lock's key ("sandgate" in ASCII).
const LOCK_KEY: i64 = 0x7361_6e64_6761_7465;

/// The key of the lead over the approvals' watchers ("sgapprov").
const LEAD_KEY: i64 = 0x7367_6170_7072_6f76;

/// How often a replica on PostgreSQL checks for a change cut short when
/// no write comes to find it.
pub const SWEEP: std::time::Duration = std::time::Duration::from_secs(2);

/// The longest a change waits for the lock before its request is answered
/// 503 `store_busy` (a holder that hangs without its session ending): set
/// on each of the pool's connections as it connects.
pub(crate) const LOCK_WAIT: &str = "SET lock_timeout = '30s'";

/// The connection holding the advisory lock, shared by the guard and the
/// store's calls made within the change.
type Held = Arc<tokio::sync::Mutex<Option<PoolConnection<Any>>>>;

tokio::task_local! {
    /// In the task of a change ([`within`]): the connection holding the
    /// lock, which the store's calls go through ([`Store::conn`]), so that
    /// a replica whose session ended (and with it its lock, which another
    /// replica may hold now) writes nothing more.
    static HELD: Held;
}

/// Who holds the lock, as the journal names it: the host and the process.
pub(crate) fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    format!("{host}:{}", std::process::id())
}

/// The write lock, held; [`WriteGuard::release`] it when the change has
/// ended. Dropped unreleased (a panic, an error taking it), it frees the
/// lock but leaves the journal open, so that the next holder recovers.
pub struct WriteGuard {
    _local: tokio::sync::OwnedMutexGuard<()>,
    /// The connection holding the advisory lock (PostgreSQL), in the
    /// guard from before the lock is asked for until it is freed.
    shared: Option<Held>,
    /// Set when the last holder left the journal open: who, and since when.
    left_open: Option<String>,
    /// The change failed unexpectedly: the journal stays open, for
    /// the next holder to restore every sandbox.
    keep_open: bool,
    /// The lock's generation: one more at each taking (PostgreSQL; 0 on
    /// SQLite).
    generation: u64,
}

/// A connection for the store's calls: the lock's, within a change on
/// PostgreSQL; one of the pool's otherwise.
pub(crate) enum Conn {
    Pool(PoolConnection<Any>),
    Held(tokio::sync::OwnedMappedMutexGuard<Option<PoolConnection<Any>>, PoolConnection<Any>>),
}

impl std::ops::Deref for Conn {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        match self {
            Conn::Pool(c) => c,
            Conn::Held(c) => c,
        }
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        match self {
            Conn::Pool(c) => c,
            Conn::Held(c) => c,
        }
    }
}

/// Where the store's calls of a change go: the lock's connection
/// ([`WriteGuard::scope`]).
pub struct Scope(Option<Held>);

impl Scope {
    /// Runs `work` (a change, or the restore that finishes one) with the
    /// store's calls on the lock's connection.
    pub async fn run<F: std::future::Future>(self, work: F) -> F::Output {
        match self.0 {
            Some(held) => HELD.scope(held, work).await,
            None => work.await,
        }
    }
}

impl Store {
    /// The connection the next statement goes through: within a change
    /// on PostgreSQL the lock's (an error once its session is gone),
    /// otherwise one of the pool's.
    pub(crate) async fn conn(&self) -> Result<Conn, sqlx::Error> {
        if let Ok(held) = HELD.try_with(Arc::clone) {
            return tokio::sync::OwnedMutexGuard::try_map(held.lock_owned().await, Option::as_mut)
                .map(Conn::Held)
                .map_err(|_| sqlx::Error::PoolClosed);
        }
        Ok(Conn::Pool(self.pool.acquire().await?))
    }

    /// Whether a change was left cut short (the journal open), read
    /// without the lock: a sweep takes the lock only then.
    pub async fn left_open(&self) -> Result<bool, sqlx::Error> {
        if self.backend != Backend::Postgres {
            return Ok(false);
        }
        let open: i64 = sqlx::query_scalar("SELECT open FROM write_journal WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(open != 0)
    }

    /// Runner `runner`'s instance whose sandboxes were last restored
    /// (PostgreSQL; `None` on SQLite, whose one server restores at its
    /// start only), read within a change.
    pub async fn restored_instance(&self, runner: &str) -> Result<Option<String>, sqlx::Error> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let instance: Option<String> =
            sqlx::query_scalar("SELECT restored_instance FROM runners WHERE name = $1")
                .bind(runner)
                .fetch_optional(&mut *self.conn().await?)
                .await?;
        Ok(Some(instance.unwrap_or_default()))
    }

    /// Records that the sandboxes of runner `runner`'s `instance` were
    /// restored (PostgreSQL), within the change that did it.
    pub async fn set_restored_instance(
        &self,
        runner: &str,
        instance: &str,
    ) -> Result<(), sqlx::Error> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO runners (name, restored_instance) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET restored_instance = excluded.restored_instance",
        )
        .bind(runner)
        .bind(instance)
        .execute(&mut *self.conn().await?)
        .await
        .map(drop)
    }

    /// Issues runner `runner` a token to register with (its SHA-256
    /// `hash`) and the labels it carries: a runner issued one before takes
    /// the new one only, and is reached nowhere until its next heartbeat.
    pub async fn set_runner_token(
        &self,
        runner: &str,
        hash: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO runners (name, token_hash, labels) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET token_hash = excluded.token_hash, \
             labels = excluded.labels, url = '', call_token = ''",
        )
        .bind(runner)
        .bind(hash)
        .bind(serde_json::to_string(labels).unwrap_or_else(|_| "{}".into()))
        .execute(&mut *self.conn().await?)
        .await
        .map(drop)
    }

    /// The SHA-256 of the token runner `runner` registers with, if it was
    /// issued one.
    pub async fn runner_token(&self, runner: &str) -> Result<Option<String>, sqlx::Error> {
        let hash: Option<String> =
            sqlx::query_scalar("SELECT token_hash FROM runners WHERE name = $1")
                .bind(runner)
                .fetch_optional(&mut *self.conn().await?)
                .await?;
        Ok(hash.filter(|h| !h.is_empty()))
    }

    /// Records a heartbeat of runner `runner`: where it is reached and
    /// with which token, and its slots.
    pub async fn heartbeat(&self, runner: &str, beat: &RunnerBeat) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE runners SET url = $1, call_token = $2, heartbeat_ms = $3, slots = $4, \
             used = $5 WHERE name = $6",
        )
        .bind(&beat.url)
        .bind(&beat.call_token)
        .bind(beat.at_ms)
        .bind(i64::from(beat.slots))
        .bind(i64::from(beat.used))
        .bind(runner)
        .execute(&mut *self.conn().await?)
        .await
        .map(drop)
    }

    /// The runners that registered themselves, as their last heartbeat
    /// said (its time and slots aside).
    pub async fn registered(&self) -> Result<Vec<(String, RunnerBeat)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT name, url, call_token, labels FROM runners \
             WHERE token_hash <> '' AND url <> '' ORDER BY name",
        )
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter()
            .map(|r| {
                let labels: String = r.try_get(3)?;
                Ok((
                    r.try_get(0)?,
                    RunnerBeat {
                        url: r.try_get(1)?,
                        call_token: r.try_get(2)?,
                        at_ms: 0,
                        slots: 0,
                        used: 0,
                        labels: serde_json::from_str(&labels)
                            .map_err(|e| sqlx::Error::Decode(e.into()))?,
                    },
                ))
            })
            .collect()
    }

    /// Sets `mark` on runner `runner` (`on`), or takes it off.
    pub async fn mark_runner(
        &self,
        runner: &str,
        mark: RunnerMark,
        on: bool,
    ) -> Result<(), sqlx::Error> {
        let column = mark.column();
        sqlx::query(&format!(
            "INSERT INTO runners (name, {column}) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET {column} = excluded.{column}"
        ))
        .bind(runner)
        .bind(i64::from(on))
        .execute(&mut *self.conn().await?)
        .await
        .map(drop)
    }

    /// The runners that carry any of `marks` (one statement for all).
    pub async fn marked(
        &self,
        marks: &[RunnerMark],
    ) -> Result<std::collections::BTreeSet<String>, sqlx::Error> {
        let any: Vec<String> = marks
            .iter()
            .map(|m| format!("{} <> 0", m.column()))
            .collect();
        if any.is_empty() {
            return Ok(Default::default());
        }
        let names: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT name FROM runners WHERE {}",
            any.join(" OR ")
        ))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        Ok(names.into_iter().collect())
    }

    /// Takes the write lock (waiting for it, at most 30 s on PostgreSQL):
    /// this process's, then, on PostgreSQL, every replica's.
    pub async fn writing(&self) -> Result<WriteGuard, sqlx::Error> {
        let local = self.writes.clone().lock_owned().await;
        let mut guard = WriteGuard {
            _local: local,
            shared: None,
            left_open: None,
            keep_open: false,
            generation: 0,
        };
        if self.backend != Backend::Postgres {
            return Ok(guard);
        }
        let held: Held = Arc::new(tokio::sync::Mutex::new(Some(self.pool.acquire().await?)));
        // In the guard before the lock is asked for: whatever happens from
        // here on, its drop frees the lock (or ends the session).
        guard.shared = Some(held.clone());
        let mut slot = held.lock().await;
        let Some(conn) = slot.as_mut() else {
            return Err(sqlx::Error::PoolClosed);
        };
        // `pg_advisory_lock` returns `void`, which the `Any` driver
        // cannot decode: called in FROM, the row it gives is a 1.
        sqlx::query("SELECT 1 AS locked FROM pg_advisory_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut **conn)
            .await?;
        // Open the journal, reading what the last holder left.
        let row = sqlx::query(
            "UPDATE write_journal SET open = 1, holder = $1, since = $2, \
             generation = write_journal.generation + 1 \
             FROM (SELECT open, holder, since FROM write_journal WHERE id = 1) AS last \
             WHERE write_journal.id = 1 \
             RETURNING write_journal.generation, last.open, last.holder, last.since",
        )
        .bind(&self.holder)
        .bind(now())
        .fetch_one(&mut **conn)
        .await?;
        if row.try_get::<i64, _>("open")? != 0 {
            guard.left_open = Some(format!(
                "{} since {}",
                row.try_get::<String, _>("holder")?,
                row.try_get::<String, _>("since")?
            ));
        }
        guard.generation = u64::try_from(row.try_get::<i64, _>("generation")?).unwrap_or(0);
        drop(slot);
        Ok(guard)
    }
}

/// The lead over the watchers of access requests: on PostgreSQL, one
/// replica at a time watches the sandboxes' events for attempts, so that
/// each is counted once. It is held by a connection of its own (out of
/// the pool), and ends with its session: a replica that dies frees it for
/// another, which takes it within a [`SWEEP`].
#[derive(Debug)]
pub struct Lead(Option<sqlx::AnyConnection>);

impl Store {
    /// Takes the lead if no replica holds it (on SQLite, always: one
    /// server).
    pub async fn try_lead(&self) -> Result<Option<Lead>, sqlx::Error> {
        if self.backend != Backend::Postgres {
            return Ok(Some(Lead(None)));
        }
        let mut conn = self.pool.acquire().await?.detach();
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEAD_KEY)
            .fetch_one(&mut conn)
            .await?;
        if taken {
            return Ok(Some(Lead(Some(conn))));
        }
        if let Err(e) = sqlx::Connection::close(conn).await {
            tracing::warn!(error = %e, "closing a connection that did not take the lead");
        }
        Ok(None)
    }
}

impl Lead {
    /// Whether it is still held (its session is alive).
    pub async fn held(&mut self) -> bool {
        match &mut self.0 {
            None => true,
            Some(conn) => sqlx::Connection::ping(conn).await.is_ok(),
        }
    }
}

impl WriteGuard {
    /// Who left the journal open (the last holder died amid a change),
    /// until [`WriteGuard::recovered`].
    pub fn left_open(&self) -> Option<&str> {
        self.left_open.as_deref()
    }

    /// Where the store's calls of this change go.
    pub fn scope(&self) -> Scope {
        Scope(self.shared.clone())
    }

    /// The lock's generation (0 on SQLite), which the runner's changes
    /// carry ([`sandgate_contract::Runner::fence`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The sandboxes were restored from the rows: the change cut short is
    /// finished.
    pub fn recovered(&mut self) {
        self.left_open = None;
    }

    /// The change failed unexpectedly, perhaps half-way (a tier
    /// stored but not applied): the journal stays open, so that the next
    /// holder (the sweep, within 2 s) restores every sandbox from the rows.
    pub fn keep_open(&mut self) {
        self.keep_open = true;
    }

    /// Ends the change: the journal closed (unless a change is still to
    /// be finished), the lock freed.
    pub async fn release(mut self) -> Result<(), sqlx::Error> {
        let Some(held) = self.shared.clone() else {
            return Ok(());
        };
        let mut slot = held.lock().await;
        let Some(conn) = slot.as_mut() else {
            return Ok(());
        };
        let closed = if self.left_open.is_none() && !self.keep_open {
            sqlx::query("UPDATE write_journal SET open = 0 WHERE id = 1")
                .execute(&mut **conn)
                .await
                .map(drop)
        } else {
            Ok(())
        };
        unlock(conn).await;
        // Back to the pool, unlocked (or closed).
        slot.take();
        self.shared = None;
        closed
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        let Some(held) = self.shared.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let mut slot = held.lock().await;
                    if let Some(conn) = slot.as_mut() {
                        unlock(conn).await;
                    }
                    slot.take();
                });
            }
            // No runtime to unlock on: the session ends, which unlocks.
            Err(_) => {
                if let Ok(mut slot) = held.try_lock() {
                    if let Some(conn) = slot.as_mut() {
                        conn.close_on_drop();
                    }
                    slot.take();
                }
            }
        }
    }
}

/// Frees the advisory lock held on `conn`; should that fail, the session
/// ends when `conn` is dropped, which frees it too (never a pooled session
/// holding the lock).
async fn unlock(conn: &mut PoolConnection<Any>) {
    let freed = sqlx::query("SELECT pg_advisory_unlock($1) AS freed")
        .bind(LOCK_KEY)
        .fetch_one(&mut **conn)
        .await
        .and_then(|row| row.try_get::<bool, _>("freed"));
    match freed {
        Ok(true) => {}
        Ok(false) => {
            tracing::error!("the write lock was not held by its session; closing the session");
            conn.close_on_drop();
        }
        Err(e) => {
            tracing::warn!(error = %e, "freeing the write lock; closing its session instead");
            conn.close_on_drop();
        }
    }
}

/// A runner's heartbeat, as stored.
#[derive(Debug, Clone)]
pub struct RunnerBeat {
    /// Where the API reaches it.
    pub url: String,
    /// The token the API calls it with.
    pub call_token: String,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// The sandboxes it can hold.
    pub slots: u32,
    /// The sandboxes it holds.
    pub used: u32,
    /// Its labels (the operator's, given with its token).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A mark the store keeps on a runner, for every replica to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerMark {
    /// The operator drained it: no sandbox is placed there.
    Draining,
    /// A change could not reach it: every sandbox of it is restored from
    /// the store when it answers again.
    Owed,
}

impl RunnerMark {
    /// Its column in `runners` (a name of this enum's own, never a
    /// caller's text).
    fn column(self) -> &'static str {
        match self {
            RunnerMark::Draining => "draining",
            RunnerMark::Owed => "owed",
        }
    }
}
