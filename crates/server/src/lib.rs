//! sandgate's control plane: the HTTP API of docs/API.md over the
//! runner and the store.
//!
//! - [`api`]: the routes and their request and response types (with
//!   their OpenAPI schemas): each handler parses and authorizes, then
//!   calls the service;
//! - [`service`]: what each call does, over the runner (the contract's
//!   [`sandgate_contract::Runner`]: in process here, or a double in the
//!   API's own tests) and the store, with the transactions and their
//!   undo;
//! - [`store`]: organizations, hashed API keys and sandboxes in SQLite
//!   or PostgreSQL;
//! - [`writes`]: the write lock, across API replicas on PostgreSQL;
//! - [`auth`]: the operator token and organizations' keys;
//! - [`error`]: `{"error": {"code", "message"}}` answers;
//! - [`metrics`]: the Prometheus text at `/metrics`.
//!
//! [`Server::start`] opens the store, starts the runner (ruleset first),
//! and restores every sandbox the store knows before it serves: after a
//! crash, each one is enforced and manageable again, and whatever a request
//! cut short had made is removed.

pub mod api;
pub mod approvals;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod fleet;
pub mod metrics;
pub mod registry;
pub mod secrets;
pub mod service;
pub mod snapshots;
pub mod store;
pub mod upkeep;
pub mod writes;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::Router;
use error::{ApiError, StartError};
use sandgate_contract::{Expected, RestoreReport, Runner};
use sandgate_policy::{Catalog, PolicyConfig};
use sandgate_runner::RunnerConfig;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::{SandboxState, Store};
use tokio::sync::OwnedSemaphorePermit;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The store lives here (`sandgate.db`) unless [`Self::database`]
    /// names one.
    pub data_dir: PathBuf,
    /// The store's database URL: `postgres://...` for a store that API
    /// replicas share (`None`: SQLite in [`Self::data_dir`]).
    pub database: Option<String>,
    /// The operator's token for the admin routes; without one they answer
    /// 401 to everyone.
    pub admin_token: Option<String>,
    /// The runner of this host.
    pub runner: RunnerConfig,
    /// The policy rules (tiers, ranges).
    pub policy: PolicyConfig,
    /// The essential-services catalog.
    pub catalog: Catalog,
    /// The largest request body, bytes.
    pub body_limit: usize,
    /// The largest root filesystem archive uploaded as a snapshot
    /// (`PUT /api/snapshots/{name}`), bytes.
    pub snapshot_upload_limit: u64,
    /// An exec's timeout when the request gives none.
    pub exec_timeout_default: Duration,
    /// The longest timeout an exec may ask for.
    pub exec_timeout_max: Duration,
    /// What `network/test` probes when the request names nothing
    /// (`host:port`).
    pub probe_targets: Vec<String>,
    /// The most sandboxes an organization may have at once.
    pub max_sandboxes_per_org: usize,
    /// The most execs an organization may have running at once.
    pub execs_per_org: usize,
    /// How a runner that registers itself is reached (`None`: this
    /// server takes no registration).
    pub connector: Option<registry::Connector>,
    /// The labels a runner must carry to take a sandbox of each tier
    /// (a tier not named: any runner).
    pub placement: std::collections::BTreeMap<u8, fleet::Labels>,
    /// The key that seals secrets at rest (`None`: secrets are refused,
    /// 503 `secrets_not_configured`).
    pub secrets_key: Option<secrets::SecretsKey>,
}

/// The default targets of `network/test`: those of the reference's
/// "Testing Network Access" (an address on 443; the Debian archive, the
/// npm registry and PyPI, named by the catalog) on 443.
pub fn default_probe_targets(catalog: &Catalog) -> Vec<String> {
    let mut targets = vec!["208.80.154.232:443".to_string()];
    for category in ["ubuntu-debian", "npm", "python"] {
        let name = catalog
            .category_by_id(category)
            .and_then(|c| c.hosts.iter().find(|h| !h.is_wildcard()));
        if let Some(name) = name {
            targets.push(format!("{}:443", name.base()));
        }
    }
    targets
}

impl ServerConfig {
    /// Defaults: 1 MiB bodies, exec timeouts of 60 s by default and 1 h at
    /// most.
    pub fn new(
        data_dir: PathBuf,
        runner: RunnerConfig,
        policy: PolicyConfig,
        catalog: Catalog,
    ) -> Self {
        ServerConfig {
            data_dir,
            database: None,
            admin_token: None,
            runner,
            policy,
            probe_targets: default_probe_targets(&catalog),
            catalog,
            body_limit: 1 << 20,
            snapshot_upload_limit: 4 << 30,
            exec_timeout_default: Duration::from_secs(60),
            exec_timeout_max: Duration::from_secs(3600),
            max_sandboxes_per_org: 100,
            execs_per_org: 32,
            connector: None,
            placement: Default::default(),
            secrets_key: None,
        }
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// The runners ([`fleet`]).
    pub fleet: fleet::Fleet,
    /// The policy rules.
    pub policy: Arc<PolicyConfig>,
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// The operator token.
    pub admin_token: Option<String>,
    /// The largest snapshot archive taken, bytes.
    pub snapshot_upload_limit: u64,
    /// One snapshot change at a time ([`snapshots`]): two of one name
    /// never reach the runners in different orders.
    pub snapshot_changes: tokio::sync::Mutex<()>,
    /// Becomes `true` when the server stops: endless streams end then.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// See [`ServerConfig::max_sandboxes_per_org`].
    pub max_sandboxes_per_org: usize,
    /// Execs running in all (at most [`EXECS`]).
    pub execs: Arc<tokio::sync::Semaphore>,
    /// See [`ServerConfig::execs_per_org`].
    pub execs_per_org: usize,
    /// Execs running per organization.
    pub org_execs: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Counters for `/metrics`.
    pub metrics: metrics::Metrics,
    /// See [`ServerConfig::exec_timeout_default`].
    pub exec_timeout_default: Duration,
    /// See [`ServerConfig::exec_timeout_max`].
    pub exec_timeout_max: Duration,
    /// See [`ServerConfig::probe_targets`].
    pub probe_targets: Vec<String>,
    /// Access requests as they open, count and are decided (to those who
    /// follow them).
    pub requests: tokio::sync::broadcast::Sender<store::AccessRequest>,
    /// The tasks watching sandboxes' events for access requests, by
    /// sandbox.
    pub watchers: std::sync::Mutex<std::collections::HashMap<String, tokio::task::AbortHandle>>,
    /// Whether this server watches the sandboxes for access requests: on
    /// SQLite always; on PostgreSQL while it holds the lead
    /// ([`approvals::lead`]).
    pub leads_approvals: std::sync::atomic::AtomicBool,
    /// What keeps the runner in line with the store ([`upkeep`]).
    pub upkeep: Arc<upkeep::Upkeep>,
    /// See [`ServerConfig::connector`].
    pub connector: Option<registry::Connector>,
    /// See [`ServerConfig::placement`].
    pub placement: std::collections::BTreeMap<u8, fleet::Labels>,
    /// The key that seals secrets at rest.
    pub secrets_key: Option<secrets::SecretsKey>,
    /// The lock on the store's directory (the runner holds its own on
    /// its directory, for as long as it lives).
    _lock: sandgate_runner::DirLock,
}

/// Takes a lock, also one whose holder panicked (its data is used as that
/// holder left it).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The most execs running at once on a server: each holds one of tokio's
/// 512 blocking threads, and the writes need some too.
pub const EXECS: usize = 256;
impl AppState {
    /// Permits for one long blocking call (an exec, a network test) of
    /// organization `org`: one of its own and one of the server's. Such a
    /// call holds a blocking thread for its length, so both are bounded:
    /// one tenant cannot starve the others, or the writes, which need
    /// those threads too. 429 when either is used up. The caller keeps
    /// them for as long as the call runs.
    pub fn blocking_permits(
        &self,
        org: &str,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), ApiError> {
        let too_many = |what: String| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!("{what} commands and tests are running already; wait for one to end"),
            )
            .retry_after(error::BUSY_RETRY_SECONDS)
        };
        let own = {
            let mut all = self.org_execs.lock().unwrap_or_else(|e| e.into_inner());
            all.entry(org.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.execs_per_org)))
                .clone()
        };
        Ok((
            own.try_acquire_owned()
                .map_err(|_| too_many(format!("{} of this organization's", self.execs_per_org)))?,
            self.execs
                .clone()
                .try_acquire_owned()
                .map_err(|_| too_many(format!("{EXECS} (the server's most)")))?,
        ))
    }
}

/// A started server.
#[derive(Debug, Clone)]
pub struct Server {
    state: Arc<AppState>,
    body_limit: usize,
}

/// The OpenAPI document's frame (title, security, tags); its paths come
/// from [`routes`], where each route is declared once.
#[derive(OpenApi)]
#[openapi(
    info(title = "sandgate", description = "Sandboxes whose network egress is enforced in the kernel."),
    modifiers(&BearerAuth),
    tags(
        (name = "sandbox", description = "Sandboxes of the caller's organization"),
        (name = "organization", description = "The caller's organization"),
        (name = "admin", description = "Operator routes (the operator token)"),
        (name = "snapshots", description = "Snapshots sandboxes start from, made from OCI images (made and removed with the operator token)"),
        (name = "system", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// Every route of the API with its handler, each declared once: the
/// router and the OpenAPI document are both made from this (each
/// handler's `#[utoipa::path]` gives its method and path).
fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(api::get_organization))
        .routes(routes!(api::create_organization, api::list_organizations))
        .routes(routes!(api::set_tier))
        .routes(routes!(api::list_runners, api::issue_runner_token))
        .routes(routes!(api::create_snapshot, api::list_snapshots))
        .routes(routes!(api::delete_snapshot, api::upload_snapshot))
        .routes(routes!(api::runner_heartbeat))
        .routes(routes!(api::set_draining))
        .routes(routes!(api::set_egress_address, api::delete_egress_address))
        .routes(routes!(api::create_key))
        .routes(routes!(api::revoke_key))
        .routes(routes!(api::create_sandbox, api::list_sandboxes))
        .routes(routes!(api::get_sandbox, api::delete_sandbox))
        .routes(routes!(api::update_settings))
        .routes(routes!(api::execute))
        .routes(routes!(api::explain))
        .routes(routes!(api::create_grant, api::list_grants))
        .routes(routes!(api::revoke_grant))
        .routes(routes!(api::access_requests))
        .routes(routes!(api::approve_request))
        .routes(routes!(api::deny_request))
        .routes(routes!(api::network_test))
        .routes(routes!(api::network_events))
        .routes(routes!(api::network_flows))
        .routes(routes!(api::network_usage))
        .routes(routes!(api::create_secret, api::list_secrets))
        .routes(routes!(api::delete_secret))
        .routes(routes!(api::health))
        .routes(routes!(metrics::metrics))
}

/// Where the OpenAPI document and the API's reference page are served.
pub const OPENAPI_PATH: &str = "/api/openapi.json";
/// See [`OPENAPI_PATH`].
pub const REFERENCE_PATH: &str = "/api/docs";

/// The span of one API request: its id, method and path.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path())
}

async fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see /api/openapi.json",
    )
}

async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /api/openapi.json",
    )
}

impl Server {
    /// Opens the store, starts the runner and restores every stored
    /// sandbox: running ones get their stored policy re-applied; rows of
    /// requests cut short (`creating`, `deleting`) are removed with
    /// whatever they had made; sandboxes whose slot or files are gone (a
    /// reboot) are marked `lost`.
    pub async fn start(cfg: ServerConfig) -> Result<(Server, RestoreReport), StartError> {
        // One server per data directory: a second one would fight the
        // first over its sandboxes, slots and ruleset.
        let lock = sandgate_runner::DirLock::take(&cfg.data_dir).map_err(StartError::Locked)?;
        let runner = {
            let mut rc = cfg.runner.clone();
            let (p, c) = (Arc::new(cfg.policy.clone()), Arc::new(cfg.catalog.clone()));
            // Disks of the size most tiers give are prepared ahead.
            if rc.warm_disk.is_none() {
                rc.warm_disk = sandgate_runner::usual_disk(&p);
            }
            tokio::task::spawn_blocking(move || sandgate_runner::Runner::start(rc, p, c))
                .await
                .map_err(|e| StartError::Runner(io::Error::other(e)))?
                .map_err(StartError::Runner)?
        };
        Server::assemble(cfg, lock, fleet::Fleet::one(Arc::new(runner))).await
    }

    /// A server over `runner` (which restores what the store expects, as
    /// [`Server::start`] says): the runner double of the API's own tests,
    /// or a runner started elsewhere. `cfg.runner` is not used.
    pub async fn with_runner(
        cfg: ServerConfig,
        runner: Arc<dyn Runner>,
    ) -> Result<(Server, RestoreReport), StartError> {
        Server::with_fleet(cfg, fleet::Fleet::one(runner)).await
    }

    /// [`Server::with_runner`] over several runners, each named
    /// ([`fleet`]).
    pub async fn with_fleet(
        cfg: ServerConfig,
        fleet: fleet::Fleet,
    ) -> Result<(Server, RestoreReport), StartError> {
        let lock = sandgate_runner::DirLock::take(&cfg.data_dir).map_err(StartError::Locked)?;
        Server::assemble(cfg, lock, fleet).await
    }

    async fn assemble(
        cfg: ServerConfig,
        lock: sandgate_runner::DirLock,
        fleet: fleet::Fleet,
    ) -> Result<(Server, RestoreReport), StartError> {
        let store = Store::open(&cfg.data_dir, cfg.database.as_deref()).await?;
        // The only server of its store (SQLite), or one of its replicas.
        let alone = store.backend() == store::Backend::Sqlite;
        let metrics = metrics::Metrics::new(store.tally().clone());
        let state = Arc::new(AppState {
            store,
            fleet,
            policy: Arc::new(cfg.policy),
            catalog: Arc::new(cfg.catalog),
            admin_token: cfg.admin_token,
            snapshot_upload_limit: cfg.snapshot_upload_limit,
            snapshot_changes: tokio::sync::Mutex::new(()),
            stopping: tokio::sync::watch::channel(false).0,
            max_sandboxes_per_org: cfg.max_sandboxes_per_org,
            execs: Arc::new(tokio::sync::Semaphore::new(EXECS)),
            execs_per_org: cfg.execs_per_org,
            org_execs: Default::default(),
            metrics,
            exec_timeout_default: cfg.exec_timeout_default,
            exec_timeout_max: cfg.exec_timeout_max,
            probe_targets: cfg.probe_targets,
            requests: tokio::sync::broadcast::channel(1024).0,
            watchers: Default::default(),
            leads_approvals: std::sync::atomic::AtomicBool::new(alone),
            upkeep: Arc::default(),
            connector: cfg.connector.clone(),
            placement: cfg.placement.clone(),
            secrets_key: cfg.secrets_key.clone(),
            _lock: lock,
        });
        // Under the write lock: on a store that replicas share, a change
        // another replica has in flight is not one cut short. Each
        // runner's instance is read first: a restart of a runner after it
        // is one the upkeep loop sees. A runner out of reach now is
        // restored when it answers.
        for member in state.fleet.members() {
            let runner = member.runner.clone();
            let instance = tokio::task::spawn_blocking(move || runner.instance())
                .await
                .map_err(|e| StartError::Runner(io::Error::other(e)))?;
            // Not read (yet restored): restored again at the first look
            // (on a live runner, a reconcile).
            member.set_restored(instance.unwrap_or_else(|_| Some(String::new())));
        }
        let report = {
            let mut guard = writing(&state).await?;
            let report = guard
                .scope()
                .run(async {
                    let report = restore(&state).await?;
                    for member in state.fleet.members() {
                        if let Some(instance) = member.restored().filter(|i| !i.is_empty()) {
                            state
                                .store
                                .set_restored_instance(&member.name, &instance)
                                .await?;
                        }
                    }
                    Ok::<_, StartError>(report)
                })
                .await?;
            // A change cut short before this start is finished with it.
            guard.recovered();
            release(guard).await;
            report
        };
        if state.store.backend() == store::Backend::Postgres {
            tokio::spawn(approvals::lead(Arc::downgrade(&state)));
        } else {
            // What a sandbox was refused while no server watched is not
            // counted.
            approvals::watch_all(&state, service::now_ms()).await?;
        }
        for member in state.fleet.members() {
            follow_deaths(&state, &member);
        }
        // Runners that registered before this start join it now.
        registry::join_registered(&state).await;
        upkeep::start(&state);
        Ok((
            Server {
                state,
                body_limit: cfg.body_limit,
            },
            report,
        ))
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The routes.
    pub fn router(&self) -> Router {
        let (routes, doc) = routes().split_for_parts();
        // The document, and a reference page reading it (Swagger UI, its
        // files in the binary).
        let reference = utoipa_swagger_ui::SwaggerUi::new(REFERENCE_PATH).url(OPENAPI_PATH, doc);
        routes
            .merge(reference)
            .merge(dashboard::routes())
            .fallback(no_route)
            .method_not_allowed_fallback(wrong_method)
            .layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                metrics::track,
            ))
            .layer(DefaultBodyLimit::max(self.body_limit))
            // Each request gets an id (the client's `x-request-id`, or a
            // new UUID), a span that carries it into every log line the
            // request causes, one line when it is answered, and the id
            // back in the answer's `x-request-id`. (The last layer added
            // is the outermost.)
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
            )
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .with_state(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then finishes the
    /// requests in flight.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let state = self.state.clone();
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move {
                shutdown.await;
                // Followed event streams never end by themselves.
                state.stopping.send_replace(true);
            })
            .await
    }
}

/// Restores every runner's sandboxes from the store (see
/// [`Server::start`]): their reports together. A runner out of reach is
/// owed a restore, which the upkeep loop pays when it answers (said once);
/// any other failure is the error.
async fn restore(st: &AppState) -> Result<RestoreReport, StartError> {
    let mut all = RestoreReport::default();
    let members = st.fleet.members();
    let owed = st.store.marked(&[writes::RunnerMark::Owed]).await?;
    for member in &members {
        match restore_runner(st, member).await {
            Ok(report) => {
                all.running.extend(report.running);
                all.died.extend(report.died);
                all.lost.extend(report.lost);
                all.removed.extend(report.removed);
            }
            Err(StartError::Restore(e)) if e.is_out_of_reach() => {
                if !owed.contains(&member.name) {
                    tracing::warn!(runner = %member.name, error = %e, "a runner out of reach: restored when it answers");
                }
                member.set_reachable(false);
                upkeep::owe(st, &member.name, false).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(all)
}

/// Restores the sandboxes placed on `member` from the store.
pub(crate) async fn restore_runner(
    st: &AppState,
    member: &fleet::Member,
) -> Result<RestoreReport, StartError> {
    let rows = st.store.sandboxes(None).await?;
    let mut expected = Vec::new();
    let mut unresolved = Vec::new();
    let mut orgs = std::collections::HashMap::new();
    for row in rows.iter().filter(|r| r.runner == member.name) {
        // Cut short: not expected, so the runner removes what is left of
        // them.
        if matches!(row.state, SandboxState::Creating | SandboxState::Deleting) {
            st.store.remove_sandbox(&row.id).await?;
            continue;
        }
        if !orgs.contains_key(&row.organization_id) {
            let org = st.store.organization(&row.organization_id).await?;
            orgs.insert(row.organization_id.clone(), org);
        }
        let org = orgs.get(&row.organization_id).and_then(Option::as_ref);
        let policy = org.map(|o| service::effective(st, o, row));
        // What `/metrics` counts from now on: the states the store writes
        // below (lost, died) and later, the modes the service sets.
        let mode = policy
            .as_ref()
            .and_then(|p| p.as_ref().ok())
            .map(|p| p.mode);
        st.metrics.sandboxes.add(&row.id, row.state, mode);
        // A sandbox whose init died is kept too (with its slot and
        // files), and not started again. One whose policy cannot be
        // resolved any more (its organization or tier gone from the
        // configuration) is not expected: the runner removes it, and it
        // is marked lost. One lost before stays so.
        if matches!(row.state, SandboxState::Running | SandboxState::Died) {
            match policy {
                Some(Ok(policy)) => expected.push(Expected {
                    id: row.id.clone(),
                    organization: row.organization_id.clone(),
                    policy,
                    // A secret that cannot be opened (another key) is not
                    // put in its placeholder's place: that narrows only.
                    secrets: secrets::for_runner(st, row).await.unwrap_or_else(|e| {
                        tracing::error!(sandbox = %row.id, error = %e.message, "a sandbox's secrets cannot be handed to its runner; their placeholders stay as they are");
                        Vec::new()
                    }),
                }),
                _ => unresolved.push(row.id.clone()),
            }
        }
    }
    let runner = member.runner.clone();
    let mut report = tokio::task::spawn_blocking(move || runner.restore(&expected))
        .await
        .map_err(|e| StartError::Runner(io::Error::other(e)))?
        .map_err(StartError::Restore)?;
    report.lost.extend(unresolved);
    for id in &report.lost {
        st.store.set_state(id, SandboxState::Lost).await?;
    }
    for id in &report.died {
        st.store.set_state(id, SandboxState::Died).await?;
    }
    tracing::info!(
        runner = %member.name,
        running = report.running.len(),
        died = report.died.len(),
        lost = report.lost.len(),
        removed = report.removed.len(),
        "restored the sandboxes from the store"
    );
    Ok(report)
}

/// Takes the write lock for a change of the runner's: the runner's
/// changes carry its generation from now on (see [`writes`]).
pub(crate) async fn writing(st: &AppState) -> Result<writes::WriteGuard, sqlx::Error> {
    let guard = st.store.writing().await?;
    for member in st.fleet.members() {
        member.runner.fence(guard.generation());
    }
    Ok(guard)
}

/// Ends a change: logs a journal that could not be closed (the next
/// holder then restores every sandbox, which is safe, only slower).
pub(crate) async fn release(guard: writes::WriteGuard) {
    if let Err(e) = guard.release().await {
        tracing::error!(error = %e, "closing the write journal; the next change restores every sandbox first");
    }
}

/// Finishes a change that a replica cut short (it died holding the write
/// lock, see [`writes`]): every sandbox restored from the rows, as at a
/// start. Nothing to do unless the journal was left open.
pub(crate) async fn recover(
    st: &AppState,
    guard: &mut writes::WriteGuard,
) -> Result<(), StartError> {
    let Some(left) = guard.left_open().map(str::to_string) else {
        return Ok(());
    };
    tracing::warn!(holder = %left, "a change was cut short; restoring every sandbox from the store");
    restore(st).await?;
    guard.recovered();
    Ok(())
}

/// Records the deaths `member`'s runner reports (see [`record_deaths`]).
pub(crate) fn follow_deaths(st: &AppState, member: &fleet::Member) {
    if let Some(deaths) = member.runner.take_deaths() {
        tokio::spawn(record_deaths(st.store.clone(), deaths));
    }
}

/// Records each sandbox whose init dies as `died`, as it dies (the
/// runner has cleaned what was left of its processes; it is not started
/// again), until the runner stops. It holds the store only: the server's
/// state (and the runner in it) is not kept alive by it. Each death is
/// recorded under the write lock, so that the store and its tally see it
/// after, never amid, a create or an update in flight. (A change cut short
/// that the lock reveals is left to the next change or sweep, which hold
/// the runner.)
async fn record_deaths(store: Store, mut deaths: tokio::sync::mpsc::UnboundedReceiver<String>) {
    while let Some(id) = deaths.recv().await {
        let writing = match store.writing().await {
            Ok(guard) => guard,
            Err(e) => {
                tracing::error!(sandbox = %id, error = %e, "taking the write lock to record a dead sandbox");
                continue;
            }
        };
        // Only a running sandbox (or one being made) dies: one being
        // deleted is no death.
        let moved = writing
            .scope()
            .run(async {
                let mut moved = Ok(false);
                for from in [SandboxState::Running, SandboxState::Creating] {
                    moved = store.move_state(&id, from, SandboxState::Died).await;
                    if !matches!(moved, Ok(false)) {
                        break;
                    }
                }
                moved
            })
            .await;
        match moved {
            Ok(true) => tracing::warn!(sandbox = %id, "the sandbox's init died"),
            Ok(false) => {}
            Err(e) => tracing::error!(sandbox = %id, error = %e, "recording a dead sandbox"),
        }
        release(writing).await;
    }
}
