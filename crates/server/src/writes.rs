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
//!   session ends, so a replica killed amid a change (`kill -9`, a lost
//!   host) frees it for the others at once;
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

/// The advisory lock's key ("sandgate" in ASCII).
const LOCK_KEY: i64 = 0x7361_6e64_6761_7465;

/// How often a replica on PostgreSQL checks for a change cut short when
/// no write comes to find it.
pub const SWEEP: std::time::Duration = std::time::Duration::from_secs(2);

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
    /// The connection holding the advisory lock (PostgreSQL).
    shared: Option<PoolConnection<Any>>,
    /// Set when the last holder left the journal open: who, and since when.
    left_open: Option<String>,
    /// The lock's generation: one more at each taking (PostgreSQL; 0 on
    /// SQLite).
    generation: u64,
}

impl Store {
    /// Takes the write lock (waiting for it): this process's, then, on
    /// PostgreSQL, every replica's.
    pub async fn writing(&self) -> Result<WriteGuard, sqlx::Error> {
        let local = self.writes.clone().lock_owned().await;
        let mut guard = WriteGuard {
            _local: local,
            shared: None,
            left_open: None,
            generation: 0,
        };
        if self.backend != Backend::Postgres {
            return Ok(guard);
        }
        let mut conn = self.pool.acquire().await?;
        // `pg_advisory_lock` returns `void`, which the `Any` driver
        // cannot decode: called in FROM, the row it gives is a 1.
        if let Err(e) = sqlx::query("SELECT 1 AS locked FROM pg_advisory_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut *conn)
            .await
        {
            // Whether the lock was taken is unknown: the session goes.
            conn.close_on_drop();
            return Err(e);
        }
        let conn = guard.shared.insert(conn);
        let row = sqlx::query("SELECT open, holder, since FROM write_journal WHERE id = 1")
            .fetch_one(&mut **conn)
            .await?;
        let open = row.try_get::<i64, _>("open")? != 0;
        if open {
            guard.left_open = Some(format!(
                "{} since {}",
                row.try_get::<String, _>("holder")?,
                row.try_get::<String, _>("since")?
            ));
        }
        let generation: i64 = sqlx::query_scalar(
            "UPDATE write_journal SET open = 1, holder = $1, since = $2, \
             generation = generation + 1 WHERE id = 1 RETURNING generation",
        )
        .bind(&self.holder)
        .bind(now())
        .fetch_one(&mut **conn)
        .await?;
        guard.generation = u64::try_from(generation).unwrap_or(0);
        Ok(guard)
    }
}

impl WriteGuard {
    /// Who left the journal open (the last holder died amid a change),
    /// until [`WriteGuard::recovered`].
    pub fn left_open(&self) -> Option<&str> {
        self.left_open.as_deref()
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

    /// Ends the change: the journal closed (unless a change cut short is
    /// still to be finished), the lock freed.
    pub async fn release(mut self) -> Result<(), sqlx::Error> {
        let Some(mut conn) = self.shared.take() else {
            return Ok(());
        };
        let closed = if self.left_open.is_none() {
            sqlx::query("UPDATE write_journal SET open = 0 WHERE id = 1")
                .execute(&mut *conn)
                .await
                .map(drop)
        } else {
            Ok(())
        };
        unlock(conn).await;
        closed
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        let Some(mut conn) = self.shared.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(unlock(conn));
            }
            // No runtime to unlock on: the session ends, which unlocks.
            Err(_) => conn.close_on_drop(),
        }
    }
}

/// Frees the advisory lock held on `conn`; should that fail, the session
/// ends, which frees it too (never a pooled session holding the lock).
async fn unlock(mut conn: PoolConnection<Any>) {
    let freed = sqlx::query("SELECT pg_advisory_unlock($1) AS freed")
        .bind(LOCK_KEY)
        .fetch_one(&mut *conn)
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
