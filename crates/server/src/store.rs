//! The store: organizations, API keys (hashed) and sandboxes, through
//! sqlx's `Any` driver on SQLite (the default: `sandgate.db` in the data
//! directory) or PostgreSQL (`--database postgres://...`), with embedded
//! migrations for each (`migrations/sqlite`, `migrations/postgres`). Every
//! statement runs on both as it is written: `$n` placeholders, text and
//! integer columns (64-bit on PostgreSQL), timestamps as RFC 3339 text.
//!
//! Writes are serialized by [`Store::writing`] (see [`crate::writes`]):
//! within a process by a mutex, across API replicas on PostgreSQL by an
//! advisory lock held for the whole change, with a journal that tells the
//! next holder when the last one died holding it.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

/// Where the store keeps its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sandgate.db` in the data directory: one server.
    Sqlite,
    /// A PostgreSQL database: any number of API replicas.
    Postgres,
}

impl Backend {
    /// The backend a database URL names: PostgreSQL only. (SQLite is the
    /// store without a URL, `sandgate.db` in the data directory, which
    /// one server locks: a URL would let two servers share the file with
    /// no lock between them.)
    pub fn of(url: &str) -> Result<Backend, String> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            _ => Err(format!(
                "the database URL must start with postgres://, not {scheme:?} (without a URL the store is SQLite in the data directory)"
            )),
        }
    }
}

/// An organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    /// Its id.
    pub id: String,
    /// Its name, unique.
    pub name: String,
    /// Its tier.
    pub tier: u8,
    /// When it was made.
    pub created_at: String,
    /// Where its sandboxes' connections leave from, if the operator gave
    /// it a known egress address.
    pub egress_address: Option<sandgate_policy::EgressAddress>,
}

pub use sandgate_contract::SandboxState;

/// What an API key may do (docs/REQUIREMENTS.md, "Scoped keys").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Read sandboxes, their policy, events; explain.
    SandboxesRead,
    /// Create and delete sandboxes.
    SandboxesWrite,
    /// Run commands and network tests in sandboxes.
    SandboxesExec,
    /// Change a sandbox's network settings (and give network settings at
    /// create).
    NetworkWrite,
    /// Store and remove secrets.
    SecretsWrite,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 5] = [
        Scope::SandboxesRead,
        Scope::SandboxesWrite,
        Scope::SandboxesExec,
        Scope::NetworkWrite,
        Scope::SecretsWrite,
    ];

    /// The scope as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::SandboxesRead => "sandboxes:read",
            Scope::SandboxesWrite => "sandboxes:write",
            Scope::SandboxesExec => "sandboxes:exec",
            Scope::NetworkWrite => "network:write",
            Scope::SecretsWrite => "secrets:write",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Scope::ALL.iter().map(|x| x.as_str()).collect();
                format!("{s:?} is no scope; the scopes are {}", known.join(", "))
            })
    }
}

/// The scopes of a key, as stored: `*` for every scope, otherwise the
/// scopes separated by spaces.
pub fn scopes_text(scopes: &std::collections::BTreeSet<Scope>) -> String {
    if Scope::ALL.iter().all(|s| scopes.contains(s)) {
        return "*".into();
    }
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_scopes(text: &str) -> std::collections::BTreeSet<Scope> {
    if text.trim() == "*" {
        return Scope::ALL.into_iter().collect();
    }
    // A scope this version does not know gives nothing.
    text.split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// A sandbox as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRow {
    /// Its id.
    pub id: String,
    /// Its organization.
    pub organization_id: String,
    /// Its name, unique in the organization.
    pub name: String,
    /// Its snapshot.
    pub snapshot: String,
    /// Where it is in its life.
    pub state: SandboxState,
    /// `networkBlockAll`.
    pub network_block_all: bool,
    /// `networkAllowList`, canonical.
    pub network_allow_list: String,
    /// `domainAllowList`, canonical.
    pub domain_allow_list: String,
    /// `networkDenyList`, canonical.
    pub network_deny_list: String,
    /// `domainDenyList`, canonical.
    pub domain_deny_list: String,
    /// `essentialServices`.
    pub essential_services: bool,
    /// Its grants, a JSON array of [`crate::service::StoredGrant`] (ended
    /// ones dropped at the next write).
    pub grants: String,
    /// Environment of every exec, a JSON object.
    pub env: String,
    /// When it was made.
    pub created_at: String,
    /// When its settings last changed.
    pub updated_at: String,
    /// Its resources (0 on rows from before they were stored: the tier's
    /// defaults).
    pub memory_mib: u64,
    /// See [`sandgate_policy::Resources::cpu_millicores`].
    pub cpu_millicores: u32,
    /// See [`sandgate_policy::Resources::disk_mib`].
    pub disk_mib: u64,
    /// `egressMbps` as asked (`None`: the tier's default).
    pub egress_mbps: Option<u32>,
    /// `transferQuotaMiB` as asked (`None`: the tier's default).
    pub transfer_quota_mib: Option<u32>,
    /// `maxConnections` as asked (`None`: the tier's fair share).
    pub max_connections: Option<u32>,
    /// `newConnectionsPerSecond` as asked (`None`: the tier's fair share).
    pub new_connections_per_second: Option<u32>,
    /// `networkApprovals`.
    pub network_approvals: bool,
    /// `approvalHoldSeconds`.
    pub approval_hold_seconds: u8,
    /// `httpRules`, canonical JSON (`""`: none).
    pub http_rules: String,
    /// The secrets it holds, a JSON array of
    /// [`crate::secrets::Held`] (`""`: none).
    pub secrets: String,
    /// The names whose access request its owner denied, a JSON array.
    pub declined_names: String,
    /// The runner it was placed on.
    pub runner: String,
    /// The OCI runtime it runs under.
    pub runtime_class: sandgate_policy::RuntimeClass,
}

impl SandboxRow {
    /// Its network settings as stored.
    pub fn settings(&self) -> sandgate_policy::StoredSettings<'_> {
        sandgate_policy::StoredSettings {
            network_block_all: self.network_block_all,
            network_allow_list: &self.network_allow_list,
            domain_allow_list: &self.domain_allow_list,
            network_deny_list: &self.network_deny_list,
            domain_deny_list: &self.domain_deny_list,
            essential_services: self.essential_services,
            egress_mbps: self.egress_mbps,
            transfer_quota_mib: self.transfer_quota_mib,
            max_connections: self.max_connections,
            new_connections_per_second: self.new_connections_per_second,
            network_approvals: self.network_approvals,
            approval_hold_seconds: self.approval_hold_seconds,
            http_rules: &self.http_rules,
        }
    }

    /// Takes validated network settings, in their canonical text.
    pub fn set_settings(&mut self, s: &sandgate_policy::NetworkSettings) {
        self.network_block_all = s.network_block_all;
        self.network_allow_list = s.network_allow_list.to_string();
        self.domain_allow_list = s.domain_allow_list.to_string();
        self.network_deny_list = s.network_deny_list.to_string();
        self.domain_deny_list = s.domain_deny_list.to_string();
        self.essential_services = s.essential_services;
        self.egress_mbps = s.egress_mbps;
        self.transfer_quota_mib = s.transfer_quota_mib;
        self.max_connections = s.max_connections;
        self.new_connections_per_second = s.new_connections_per_second;
        self.network_approvals = s.network_approvals;
        self.approval_hold_seconds = s.approval_hold_seconds;
        self.http_rules = s.http_rules.to_stored();
    }
}

/// Where an access request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    /// Waiting for its owner.
    Pending,
    /// Approved: a grant, or a permanent list entry.
    Approved,
    /// Denied: its attempts are counted, it is not asked again.
    Denied,
}

impl RequestState {
    /// Every state.
    pub const ALL: [RequestState; 3] = [
        RequestState::Pending,
        RequestState::Approved,
        RequestState::Denied,
    ];

    /// The state as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
        }
    }
}

impl FromStr for RequestState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RequestState::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown access request state {s:?}"))
    }
}

/// What an access request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A name the DNS service refused.
    Name,
    /// An address the kernel denied a connection to.
    Address,
}

impl TargetKind {
    /// Every kind.
    pub const ALL: [TargetKind; 2] = [TargetKind::Name, TargetKind::Address];

    /// The kind as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Name => "name",
            TargetKind::Address => "address",
        }
    }
}

impl FromStr for TargetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TargetKind::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown access request kind {s:?}"))
    }
}

/// An access request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    /// `ar-...`.
    pub id: String,
    /// Its sandbox.
    pub sandbox_id: String,
    /// The name (lowercase) or the address asked for.
    pub target: String,
    /// Which of the two.
    pub kind: TargetKind,
    /// The protocol of the last denied connection (an address only).
    pub protocol: Option<String>,
    /// Its destination port, where it had one.
    pub port: Option<u16>,
    /// Attempts seen, the first included.
    pub attempts: u64,
    /// Where it is.
    pub state: RequestState,
    /// The first attempt, milliseconds since the Unix epoch.
    pub first_seen_ms: u64,
    /// The last attempt.
    pub last_seen_ms: u64,
    /// When it was decided.
    pub decided_at_ms: Option<u64>,
    /// The grant that approved it, if it was approved with a TTL.
    pub grant_id: Option<String>,
}

/// One attempt at a target: what opens or counts an access request.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    /// The sandbox.
    pub sandbox_id: &'a str,
    /// The name or the address.
    pub target: &'a str,
    /// Which of the two.
    pub kind: TargetKind,
    /// The connection's protocol (an address only).
    pub protocol: Option<&'a str>,
    /// Its destination port.
    pub port: Option<u16>,
    /// When.
    pub at_ms: u64,
    /// Seen again (the recent events of a sandbox watched anew): counted
    /// only if later than the request's last attempt.
    pub replayed: bool,
}

fn access_request(r: &AnyRow) -> Result<AccessRequest, sqlx::Error> {
    let decode = |e: String| sqlx::Error::Decode(e.into());
    let count = |column: &str| -> Result<u64, sqlx::Error> {
        Ok(u64::try_from(r.try_get::<i64, _>(column)?).unwrap_or(0))
    };
    Ok(AccessRequest {
        id: r.try_get("id")?,
        sandbox_id: r.try_get("sandbox_id")?,
        target: r.try_get("target")?,
        kind: r.try_get::<String, _>("kind")?.parse().map_err(decode)?,
        protocol: r.try_get("protocol")?,
        port: r
            .try_get::<Option<i64>, _>("port")?
            .and_then(|p| u16::try_from(p).ok()),
        attempts: count("attempts")?,
        state: r.try_get::<String, _>("state")?.parse().map_err(decode)?,
        first_seen_ms: count("first_seen_ms")?,
        last_seen_ms: count("last_seen_ms")?,
        decided_at_ms: r
            .try_get::<Option<i64>, _>("decided_at_ms")?
            .and_then(|v| u64::try_from(v).ok()),
        grant_id: r.try_get("grant_id")?,
    })
}

const REQUEST_COLUMNS: &str = "id, sandbox_id, target, kind, protocol, port, attempts, state, \
     first_seen_ms, last_seen_ms, decided_at_ms, grant_id";

/// Milliseconds as a column holds them.
fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    /// Which database that is.
    pub(crate) backend: Backend,
    /// Held by every write of this process (see [`Store::writing`]).
    pub(crate) writes: Arc<tokio::sync::Mutex<()>>,
    /// Who this process is, in the write journal: host and process id.
    pub(crate) holder: String,
    /// What `/metrics` counts of the sandboxes: every change of a
    /// sandbox's state made here is made there too (its mode, and a
    /// sandbox's first count, come from the service, which knows them).
    tally: crate::metrics::SandboxTally,
}

/// The current time, RFC 3339 (UTC, seconds).
pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// `secs` since the Unix epoch, RFC 3339 (UTC, seconds).
pub fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn sandbox_row(r: &AnyRow) -> Result<SandboxRow, sqlx::Error> {
    Ok(SandboxRow {
        id: r.try_get("id")?,
        organization_id: r.try_get("organization_id")?,
        name: r.try_get("name")?,
        snapshot: r.try_get("snapshot")?,
        state: r
            .try_get::<String, _>("state")?
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
        network_block_all: r.try_get::<i64, _>("network_block_all")? != 0,
        network_allow_list: r.try_get("network_allow_list")?,
        domain_allow_list: r.try_get("domain_allow_list")?,
        network_deny_list: r.try_get("network_deny_list")?,
        domain_deny_list: r.try_get("domain_deny_list")?,
        essential_services: r.try_get::<i64, _>("essential_services")? != 0,
        grants: r.try_get("grants")?,
        env: r.try_get("env")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        memory_mib: u64::try_from(r.try_get::<i64, _>("memory_mib")?).unwrap_or(0),
        cpu_millicores: u32::try_from(r.try_get::<i64, _>("cpu_millicores")?).unwrap_or(0),
        disk_mib: u64::try_from(r.try_get::<i64, _>("disk_mib")?).unwrap_or(0),
        egress_mbps: optional_u32(r, "egress_mbps")?,
        transfer_quota_mib: optional_u32(r, "transfer_quota_mib")?,
        max_connections: optional_u32(r, "max_connections")?,
        new_connections_per_second: optional_u32(r, "new_connections_per_second")?,
        network_approvals: r.try_get::<i64, _>("network_approvals")? != 0,
        approval_hold_seconds: u8::try_from(r.try_get::<i64, _>("approval_hold_seconds")?)
            .unwrap_or(0),
        declined_names: r.try_get("declined_names")?,
        http_rules: r.try_get("http_rules")?,
        secrets: r.try_get("secrets")?,
        runner: r.try_get("runner")?,
        runtime_class: r
            .try_get::<String, _>("runtime_class")?
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
    })
}

/// A stored secret: sealed, never its value.
#[derive(Debug, Clone)]
pub struct SecretRow {
    /// Its name.
    pub name: String,
    /// The hosts it is for, canonical.
    pub hosts: Vec<String>,
    /// The value, sealed with the operator's key.
    pub sealed: String,
    /// When it was stored.
    pub created_at: String,
}

fn secret_row(r: &AnyRow) -> Result<SecretRow, sqlx::Error> {
    Ok(SecretRow {
        name: r.try_get("name")?,
        hosts: serde_json::from_str(&r.try_get::<String, _>("hosts")?)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        sealed: r.try_get("sealed")?,
        created_at: r.try_get("created_at")?,
    })
}

/// A nullable count column.
fn optional_u32(r: &AnyRow, column: &str) -> Result<Option<u32>, sqlx::Error> {
    Ok(r.try_get::<Option<i64>, _>(column)?
        .and_then(|v| u32::try_from(v).ok()))
}

fn organization(r: &AnyRow) -> Result<Organization, sqlx::Error> {
    Ok(Organization {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        tier: u8::try_from(r.try_get::<i64, _>("tier")?).unwrap_or(0),
        created_at: r.try_get("created_at")?,
        egress_address: r
            .try_get::<Option<String>, _>("egress_address")?
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    })
}

/// Each SQLite connection's settings: foreign keys checked, the
/// write-ahead log, and waits (not errors) on a lock.
const SQLITE_PRAGMAS: &[&str] = &[
    "PRAGMA foreign_keys = ON",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 5000",
];

/// The columns of an organization.
const ORG_COLUMNS: &str = "id, name, tier, created_at, egress_address";

const SANDBOX_COLUMNS: &str = "id, organization_id, name, snapshot, state, network_block_all, \
     network_allow_list, domain_allow_list, env, created_at, updated_at, memory_mib, \
     cpu_millicores, disk_mib, network_deny_list, domain_deny_list, essential_services, grants, \
     egress_mbps, max_connections, new_connections_per_second, network_approvals, \
     approval_hold_seconds, declined_names, transfer_quota_mib, runner, http_rules, secrets, \
     runtime_class";

impl Store {
    /// Opens the store: the PostgreSQL database at `url`, or without one
    /// `sandgate.db` in `dir` (made if missing); then runs the migrations
    /// of its engine.
    pub async fn open(dir: &Path, url: Option<&str>) -> Result<Store, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let backend = match url {
            Some(url) => Backend::of(url).map_err(|e| sqlx::Error::Configuration(e.into()))?,
            None => Backend::Sqlite,
        };
        let pool = match url {
            Some(url) => {
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(std::time::Duration::from_secs(10))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            use sqlx::Executor;
                            // The longest a statement waits for a lock (the
                            // write lock above all): then 503 `store_busy`.
                            conn.execute(crate::writes::LOCK_WAIT).await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?;
                sqlx::migrate!("./migrations/postgres").run(&pool).await?;
                pool
            }
            None => {
                std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
                let url = format!("sqlite://{}?mode=rwc", dir.join("sandgate.db").display());
                let pool = AnyPoolOptions::new()
                    .max_connections(4)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            use sqlx::Executor;
                            for pragma in SQLITE_PRAGMAS {
                                conn.execute(*pragma).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?;
                sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
                pool
            }
        };
        Ok(Store {
            pool,
            backend,
            writes: Arc::default(),
            holder: crate::writes::holder(),
            tally: crate::metrics::SandboxTally::default(),
        })
    }

    /// Which database this store is on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Adds an organization.
    pub async fn add_organization(&self, org: &Organization) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO organizations (id, name, tier, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&org.id)
        .bind(&org.name)
        .bind(i64::from(org.tier))
        .bind(&org.created_at)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }

    /// The organization `id`.
    pub async fn organization(&self, id: &str) -> Result<Option<Organization>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {ORG_COLUMNS} FROM organizations WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *self.conn().await?)
        .await?
        .as_ref()
        .map(organization)
        .transpose()
    }

    /// Every organization, by name.
    pub async fn organizations(&self) -> Result<Vec<Organization>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {ORG_COLUMNS} FROM organizations ORDER BY name"
        ))
        .fetch_all(&mut *self.conn().await?)
        .await?
        .iter()
        .map(organization)
        .collect()
    }

    /// Sets an organization's tier.
    pub async fn set_tier(&self, id: &str, tier: u8) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE organizations SET tier = $1 WHERE id = $2")
            .bind(i64::from(tier))
            .bind(id)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    /// Sets (or, with `None`, removes) an organization's known egress
    /// address.
    pub async fn set_egress_address(
        &self,
        id: &str,
        egress: Option<&sandgate_policy::EgressAddress>,
    ) -> Result<(), sqlx::Error> {
        let text = egress
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query("UPDATE organizations SET egress_address = $1 WHERE id = $2")
            .bind(text)
            .bind(id)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    /// Adds an API key of `organization_id` with `scopes`, by its hash.
    pub async fn add_key(
        &self,
        id: &str,
        organization_id: &str,
        hash: &str,
        scopes: &std::collections::BTreeSet<Scope>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO api_keys (id, organization_id, hash, created_at, scopes) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(organization_id)
        .bind(hash)
        .bind(now())
        .bind(scopes_text(scopes))
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }

    /// Revokes key `id` of `organization_id`; whether there was one.
    pub async fn revoke_key(&self, organization_id: &str, id: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 \
             WHERE id = $2 AND organization_id = $3 AND revoked_at IS NULL",
        )
        .bind(now())
        .bind(id)
        .bind(organization_id)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The organization whose live key has hash `hash`, and the key's
    /// scopes.
    pub async fn organization_by_key(
        &self,
        hash: &str,
    ) -> Result<Option<(Organization, std::collections::BTreeSet<Scope>)>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT o.id, o.name, o.tier, o.created_at, o.egress_address, k.scopes \
             FROM organizations o \
             JOIN api_keys k ON k.organization_id = o.id \
             WHERE k.hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some((
                organization(&r)?,
                parse_scopes(&r.try_get::<String, _>("scopes")?),
            ))),
        }
    }

    /// Adds a sandbox row.
    pub async fn add_sandbox(&self, s: &SandboxRow) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "INSERT INTO sandboxes ({SANDBOX_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29)"
        ))
        .bind(&s.id)
        .bind(&s.organization_id)
        .bind(&s.name)
        .bind(&s.snapshot)
        .bind(s.state.as_str())
        .bind(i64::from(s.network_block_all))
        .bind(&s.network_allow_list)
        .bind(&s.domain_allow_list)
        .bind(&s.env)
        .bind(&s.created_at)
        .bind(&s.updated_at)
        .bind(i64::try_from(s.memory_mib).unwrap_or(i64::MAX))
        .bind(i64::from(s.cpu_millicores))
        .bind(i64::try_from(s.disk_mib).unwrap_or(i64::MAX))
        .bind(&s.network_deny_list)
        .bind(&s.domain_deny_list)
        .bind(i64::from(s.essential_services))
        .bind(&s.grants)
        .bind(s.egress_mbps.map(i64::from))
        .bind(s.max_connections.map(i64::from))
        .bind(s.new_connections_per_second.map(i64::from))
        .bind(i64::from(s.network_approvals))
        .bind(i64::from(s.approval_hold_seconds))
        .bind(&s.declined_names)
        .bind(s.transfer_quota_mib.map(i64::from))
        .bind(&s.runner)
        .bind(&s.http_rules)
        .bind(&s.secrets)
        .bind(s.runtime_class.as_str())
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }

    /// Stores a secret; `false` if the organization has one of that name.
    pub async fn add_secret(
        &self,
        organization_id: &str,
        secret: &SecretRow,
    ) -> Result<bool, sqlx::Error> {
        let hosts =
            serde_json::to_string(&secret.hosts).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let done = sqlx::query(
            "INSERT INTO secrets (organization_id, name, hosts, sealed, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(organization_id)
        .bind(&secret.name)
        .bind(hosts)
        .bind(&secret.sealed)
        .bind(&secret.created_at)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// An organization's secrets, by name.
    pub async fn secrets(&self, organization_id: &str) -> Result<Vec<SecretRow>, sqlx::Error> {
        sqlx::query(
            "SELECT name, hosts, sealed, created_at FROM secrets \
             WHERE organization_id = $1 ORDER BY name",
        )
        .bind(organization_id)
        .fetch_all(&mut *self.conn().await?)
        .await?
        .iter()
        .map(secret_row)
        .collect()
    }

    /// An organization's secret `name`.
    pub async fn secret(
        &self,
        organization_id: &str,
        name: &str,
    ) -> Result<Option<SecretRow>, sqlx::Error> {
        sqlx::query(
            "SELECT name, hosts, sealed, created_at FROM secrets \
             WHERE organization_id = $1 AND name = $2",
        )
        .bind(organization_id)
        .bind(name)
        .fetch_optional(&mut *self.conn().await?)
        .await?
        .as_ref()
        .map(secret_row)
        .transpose()
    }

    /// Removes an organization's secret; whether there was one.
    pub async fn remove_secret(
        &self,
        organization_id: &str,
        name: &str,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM secrets WHERE organization_id = $1 AND name = $2")
            .bind(organization_id)
            .bind(name)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets the names whose access request a sandbox's owner denied (a
    /// JSON array).
    pub async fn set_declined(&self, id: &str, names: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sandboxes SET declined_names = $1 WHERE id = $2")
            .bind(names)
            .bind(id)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    /// Sets a sandbox's grants (a JSON array).
    pub async fn set_grants(&self, id: &str, grants: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sandboxes SET grants = $1 WHERE id = $2")
            .bind(grants)
            .bind(id)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    /// The count of sandboxes this store keeps as it writes them.
    pub fn tally(&self) -> &crate::metrics::SandboxTally {
        &self.tally
    }

    /// Sets a sandbox's state.
    pub async fn set_state(&self, id: &str, state: SandboxState) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sandboxes SET state = $1 WHERE id = $2")
            .bind(state.as_str())
            .bind(id)
            .execute(&mut *self.conn().await?)
            .await?;
        self.tally.set_state(id, state);
        Ok(())
    }

    /// Sets a sandbox's state to `to` if it is `from`; whether it was.
    pub async fn move_state(
        &self,
        id: &str,
        from: SandboxState,
        to: SandboxState,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("UPDATE sandboxes SET state = $1 WHERE id = $2 AND state = $3")
            .bind(to.as_str())
            .bind(id)
            .bind(from.as_str())
            .execute(&mut *self.conn().await?)
            .await?;
        let moved = done.rows_affected() == 1;
        if moved {
            self.tally.set_state(id, to);
        }
        Ok(moved)
    }

    /// Sets a sandbox's network settings.
    pub async fn set_settings(&self, s: &SandboxRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE sandboxes SET network_block_all = $1, network_allow_list = $2, \
             domain_allow_list = $3, updated_at = $4, network_deny_list = $5, \
             domain_deny_list = $6, essential_services = $7, egress_mbps = $8, \
             max_connections = $9, new_connections_per_second = $10, \
             network_approvals = $11, approval_hold_seconds = $12, \
             transfer_quota_mib = $13, http_rules = $14 WHERE id = $15",
        )
        .bind(i64::from(s.network_block_all))
        .bind(&s.network_allow_list)
        .bind(&s.domain_allow_list)
        .bind(&s.updated_at)
        .bind(&s.network_deny_list)
        .bind(&s.domain_deny_list)
        .bind(i64::from(s.essential_services))
        .bind(s.egress_mbps.map(i64::from))
        .bind(s.max_connections.map(i64::from))
        .bind(s.new_connections_per_second.map(i64::from))
        .bind(i64::from(s.network_approvals))
        .bind(i64::from(s.approval_hold_seconds))
        .bind(s.transfer_quota_mib.map(i64::from))
        .bind(&s.http_rules)
        .bind(&s.id)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }

    /// Removes a sandbox row.
    pub async fn remove_sandbox(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM sandboxes WHERE id = $1")
            .bind(id)
            .execute(&mut *self.conn().await?)
            .await?;
        self.tally.remove(id);
        Ok(())
    }

    /// The sandbox of `organization_id` whose id or name is `key`.
    pub async fn sandbox(
        &self,
        organization_id: &str,
        key: &str,
    ) -> Result<Option<SandboxRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes \
             WHERE organization_id = $1 AND (id = $2 OR name = $2) ORDER BY id"
        ))
        .bind(organization_id)
        .bind(key)
        .fetch_optional(&mut *self.conn().await?)
        .await?
        .as_ref()
        .map(sandbox_row)
        .transpose()
    }

    /// How many sandboxes `organization_id` has (in any state).
    pub async fn sandbox_count(&self, organization_id: &str) -> Result<usize, sqlx::Error> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM sandboxes WHERE organization_id = $1")
                .bind(organization_id)
                .fetch_one(&mut *self.conn().await?)
                .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// The sandboxes of `organization_id` (every one for `None`), by
    /// creation.
    pub async fn sandboxes(
        &self,
        organization_id: Option<&str>,
    ) -> Result<Vec<SandboxRow>, sqlx::Error> {
        let rows = match organization_id {
            Some(org) => {
                sqlx::query(&format!(
                    "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE organization_id = $1 \
                     ORDER BY created_at, id"
                ))
                .bind(org)
                .fetch_all(&mut *self.conn().await?)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {SANDBOX_COLUMNS} FROM sandboxes ORDER BY created_at, id"
                ))
                .fetch_all(&mut *self.conn().await?)
                .await?
            }
        };
        rows.iter().map(sandbox_row).collect()
    }

    /// The running sandboxes with approvals on (those whose events are
    /// watched for access requests).
    pub async fn approving(&self) -> Result<Vec<SandboxRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes \
             WHERE network_approvals = 1 AND state = $1 ORDER BY created_at, id"
        ))
        .bind(SandboxState::Running.as_str())
        .fetch_all(&mut *self.conn().await?)
        .await?
        .iter()
        .map(sandbox_row)
        .collect()
    }

    /// Counts `attempt`: the access request for its sandbox and target,
    /// opened (as `id`) if there was none, while the sandbox has fewer
    /// than `max`; one approved before is pending again (what approved it
    /// ended), one denied stays denied. `None`: a new target over `max`.
    pub async fn note_attempt(
        &self,
        attempt: &Attempt<'_>,
        id: &str,
        max: usize,
    ) -> Result<Option<AccessRequest>, sqlx::Error> {
        let mut conn = self.conn().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let updated = sqlx::query(&format!(
            "UPDATE access_requests SET attempts = attempts + 1, last_seen_ms = $1, \
             protocol = COALESCE($2, protocol), port = COALESCE($3, port), \
             state = CASE state WHEN 'approved' THEN 'pending' ELSE state END, \
             decided_at_ms = CASE state WHEN 'approved' THEN NULL ELSE decided_at_ms END, \
             grant_id = CASE state WHEN 'approved' THEN NULL ELSE grant_id END \
             WHERE sandbox_id = $4 AND target = $5 AND last_seen_ms < $6 \
             RETURNING {REQUEST_COLUMNS}"
        ))
        .bind(ms(attempt.at_ms))
        .bind(attempt.protocol)
        .bind(attempt.port.map(i64::from))
        .bind(attempt.sandbox_id)
        .bind(attempt.target)
        .bind(ms(attempt.at_ms).saturating_add(i64::from(!attempt.replayed)))
        .fetch_optional(&mut *tx)
        .await?;
        let known: Option<i64> =
            match updated {
                Some(_) => None,
                None => sqlx::query_scalar(
                    "SELECT COUNT(*) FROM access_requests WHERE sandbox_id = $1 AND target = $2",
                )
                .bind(attempt.sandbox_id)
                .bind(attempt.target)
                .fetch_optional(&mut *tx)
                .await?,
            };
        let request = match updated {
            Some(row) => Some(access_request(&row)?),
            // Counted before: a replayed attempt.
            None if known.unwrap_or(0) > 0 => None,
            None => {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM access_requests WHERE sandbox_id = $1",
                )
                .bind(attempt.sandbox_id)
                .fetch_one(&mut *tx)
                .await?;
                if usize::try_from(n).unwrap_or(usize::MAX) >= max {
                    None
                } else {
                    let row = sqlx::query(&format!(
                        "INSERT INTO access_requests ({REQUEST_COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, 1, 'pending', $7, $7, NULL, NULL) \
                         RETURNING {REQUEST_COLUMNS}"
                    ))
                    .bind(id)
                    .bind(attempt.sandbox_id)
                    .bind(attempt.target)
                    .bind(attempt.kind.as_str())
                    .bind(attempt.protocol)
                    .bind(attempt.port.map(i64::from))
                    .bind(ms(attempt.at_ms))
                    .fetch_one(&mut *tx)
                    .await?;
                    Some(access_request(&row)?)
                }
            }
        };
        tx.commit().await?;
        Ok(request)
    }

    /// The access requests of sandbox `sandbox_id`, oldest first.
    pub async fn access_requests(
        &self,
        sandbox_id: &str,
    ) -> Result<Vec<AccessRequest>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {REQUEST_COLUMNS} FROM access_requests WHERE sandbox_id = $1 \
             ORDER BY first_seen_ms, id"
        ))
        .bind(sandbox_id)
        .fetch_all(&mut *self.conn().await?)
        .await?
        .iter()
        .map(access_request)
        .collect()
    }

    /// Access request `id` of sandbox `sandbox_id`.
    pub async fn access_request(
        &self,
        sandbox_id: &str,
        id: &str,
    ) -> Result<Option<AccessRequest>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {REQUEST_COLUMNS} FROM access_requests WHERE sandbox_id = $1 AND id = $2"
        ))
        .bind(sandbox_id)
        .bind(id)
        .fetch_optional(&mut *self.conn().await?)
        .await?
        .as_ref()
        .map(access_request)
        .transpose()
    }

    /// Decides access request `id` (`to`, with the grant that approved
    /// it), if it is pending: the request as it is then, `None` if it was
    /// not pending.
    pub async fn decide(
        &self,
        id: &str,
        to: RequestState,
        grant_id: Option<&str>,
        at_ms: u64,
    ) -> Result<Option<AccessRequest>, sqlx::Error> {
        sqlx::query(&format!(
            "UPDATE access_requests SET state = $1, grant_id = $2, decided_at_ms = $3 \
             WHERE id = $4 AND state = 'pending' RETURNING {REQUEST_COLUMNS}"
        ))
        .bind(to.as_str())
        .bind(grant_id)
        .bind(ms(at_ms))
        .bind(id)
        .fetch_optional(&mut *self.conn().await?)
        .await?
        .as_ref()
        .map(access_request)
        .transpose()
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
