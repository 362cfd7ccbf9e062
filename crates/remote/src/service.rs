//! The runner's side: one runner served to its API over HTTP.
//!
//! | route | body | answer |
//! | --- | --- | --- |
//! | `GET /v1/status` | | [`crate::Status`] |
//! | `GET /v1/snapshots` | | names |
//! | `POST /v1/snapshots` | `{"name", "image"}` | `PulledSnapshot` |
//! | `PUT /v1/snapshots/{name}/archive` | a root filesystem tar archive | 204 |
//! | `DELETE /v1/snapshots/{name}` | | 204 |
//! | `POST /v1/sandboxes` | `SandboxSpec` | 204 |
//! | `PUT /v1/sandboxes/{id}/policy` | `EffectivePolicy` | 204 |
//! | `POST /v1/sandboxes/{id}/block`, `.../stop` | | 204 |
//! | `DELETE /v1/sandboxes/{id}` | | 204 |
//! | `POST /v1/sandboxes/{id}/exec` | `ExecRequest` | `ExecResult` |
//! | `POST /v1/sandboxes/{id}/probe` | `[ProbeTarget]` | `[Observed]` |
//! | `GET /v1/sandboxes/{id}/addresses` | | `[v4, v6]`, or 404 |
//! | `GET /v1/sandboxes/{id}/events` | | events: the recent ones, an event named [`crate::LIVE`], then new ones |
//! | `GET /v1/sandboxes/{id}/flows` | | events: the flow log as it stands (one event, `log`), [`crate::LIVE`], then each record written (`flow`) |
//! | `POST /v1/restore` | `[Expected]` | `RestoreReport` |
//! | `GET /v1/deaths` | | events: ids of sandboxes whose init died (those since the start first) |
//!
//! Until its first restore the runner answers every call about a sandbox
//! (those of the table from `POST /v1/sandboxes` to `.../events`) 503
//! `runner_restoring` (see [`restored_first`]).
//!
//! Every request needs the runner's token (`Authorization: Bearer`); the
//! token is kept as its SHA-256 digest and compared as such. The changes
//! (create, policy, block, stop, delete, restore) carry the generation of
//! the API's write lock ([`crate::FENCE`]); one older than a generation
//! already taken is refused, 503 `writer_superseded` (see [`fenced`]). The runner's
//! blocking calls run on tokio's blocking pool.
//!
//! [`serve`] serves the router over TLS with the runner's certificate
//! ([`tls_config`]; rustls on ring, through axum-server), or in plain
//! HTTP, which the runner's command allows on a loopback address only.

use crate::{Status, LIVE};
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use sandgate_contract::{
    ExecRequest, ExecResult, Expected, Flow, Observed, ProbeTarget, RestoreReport, Runner,
    RunnerError, SandboxSpec, TransferUsage,
};
use sandgate_policy::EffectivePolicy;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// Deaths kept for an API that connects later (it records each one once;
/// a death it already knows is no change).
const DEATHS_KEPT: usize = 4096;

/// How often an idle stream sends a comment, so that both ends notice a
/// peer that went away.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

struct Served {
    runner: Arc<dyn Runner>,
    token: [u8; 32],
    deaths: broadcast::Sender<String>,
    dead: Mutex<VecDeque<String>>,
    /// The newest generation of the API's write lock a change came with;
    /// held for the length of each change (see [`fenced`]).
    fence: Arc<tokio::sync::Mutex<u64>>,
    /// This serving's id (see [`crate::Status::instance`]).
    instance: String,
    /// Whether the API has restored the runner since it started: until
    /// then a call about a sandbox is answered 503 `runner_restoring`
    /// (see [`restored_first`]).
    restored: std::sync::atomic::AtomicBool,
}

/// The router serving `runner` to the holder of `token` (at least
/// [`crate::MIN_TOKEN`] characters). It takes the runner's deaths (see
/// [`Runner::take_deaths`]) and keeps them for the API; call it inside a
/// tokio runtime.
pub fn router(runner: Arc<dyn Runner>, token: &str) -> Result<Router, RunnerError> {
    if token.trim().len() < crate::MIN_TOKEN {
        return Err(RunnerError::Invalid {
            code: "invalid_request",
            message: format!(
                "the runner's token must be at least {} characters",
                crate::MIN_TOKEN
            ),
        });
    }
    let (died_tx, _) = broadcast::channel(1024);
    let served = Arc::new(Served {
        runner: runner.clone(),
        token: Sha256::digest(token.trim().as_bytes()).into(),
        deaths: died_tx,
        dead: Mutex::new(VecDeque::new()),
        fence: Arc::new(tokio::sync::Mutex::new(0)),
        instance: format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ),
        restored: std::sync::atomic::AtomicBool::new(false),
    });
    if let Some(mut died) = runner.take_deaths() {
        let served = served.clone();
        tokio::spawn(async move {
            while let Some(id) = died.recv().await {
                {
                    let mut dead = served.dead.lock().unwrap_or_else(|e| e.into_inner());
                    if dead.len() == DEATHS_KEPT {
                        dead.pop_front();
                    }
                    dead.push_back(id.clone());
                }
                // No API following now is no error: it reads `dead` when
                // it connects.
                let _ = served.deaths.send(id);
            }
        });
    }
    // The calls about sandboxes, once the API has restored the runner;
    // the changes among them (and the restore), each checked against the
    // write lock's generation.
    let sandboxes = Router::new()
        .route("/v1/sandboxes", post(create))
        .route("/v1/sandboxes/{id}", axum::routing::delete(delete))
        .route("/v1/sandboxes/{id}/policy", put(update))
        .route("/v1/sandboxes/{id}/block", post(block))
        .route("/v1/sandboxes/{id}/stop", post(stop))
        .route_layer(axum::middleware::from_fn_with_state(served.clone(), fenced))
        .route("/v1/sandboxes/{id}/exec", post(exec))
        .route("/v1/sandboxes/{id}/probe", post(probe))
        .route("/v1/sandboxes/{id}/addresses", get(addresses))
        .route("/v1/sandboxes/{id}/transfer", get(transfer))
        .route("/v1/sandboxes/{id}/events", get(events))
        .route("/v1/sandboxes/{id}/flows", get(flows))
        .route_layer(axum::middleware::from_fn_with_state(
            served.clone(),
            restored_first,
        ));
    let restores = Router::new()
        .route("/v1/restore", post(restore))
        .route_layer(axum::middleware::from_fn_with_state(served.clone(), fenced));
    Ok(Router::new()
        .merge(sandboxes)
        .merge(restores)
        .route("/v1/status", get(status))
        .route("/v1/snapshots", get(snapshots).post(pull_snapshot))
        .route(
            "/v1/snapshots/{name}",
            axum::routing::delete(delete_snapshot),
        )
        .route(
            "/v1/snapshots/{name}/archive",
            put(import_snapshot).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/v1/deaths", get(deaths))
        .layer(axum::middleware::from_fn_with_state(
            served.clone(),
            authorize,
        ))
        .with_state(served))
}

type St = State<Arc<Served>>;

/// How long the requests in flight get to finish once the runner is
/// told to stop (the API's streams never end by themselves).
pub const DRAIN: Duration = Duration::from_secs(5);

/// The runner's TLS: its certificate chain and its key, in PEM. An error
/// says which part is wrong.
pub fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the runner's certificate: {e}"))?;
    if chain.is_empty() {
        return Err("the runner's certificate: no certificate in it (PEM)".into());
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("the runner's key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("the runner's certificate and key: {e}"))?;
    Ok(Arc::new(config))
}

/// Serves `router` on `listener`, over TLS when `tls` is given, until
/// `shutdown` completes; the requests in flight then get [`DRAIN`].
pub async fn serve(
    router: Router,
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.graceful_shutdown(Some(DRAIN));
    });
    let app = router.into_make_service();
    // A peer that connects and says nothing, or sends its request head a
    // byte at a time, is let go after [`HEAD_WAIT`] (hyper starts the
    // wait for each request head, an idle kept-alive connection's too:
    // the client's pool drops its idle connections sooner). The TLS
    // handshake has axum-server's own bound (10 s).
    match tls {
        Some(config) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(config);
            let mut server = axum_server::tls_rustls::from_tcp_rustls(listener, config)?
                .first_request_timeout(HEAD_WAIT);
            server.http_builder().http1().header_read_timeout(HEAD_WAIT);
            server.handle(handle).serve(app).await
        }
        None => {
            let mut server = axum_server::from_tcp(listener)?.first_request_timeout(HEAD_WAIT);
            server.http_builder().http1().header_read_timeout(HEAD_WAIT);
            server.handle(handle).serve(app).await
        }
    }
}

/// How long a connection may take to send a whole request head (its
/// first, or the next on a kept-alive connection). Above the client's
/// idle age for pooled connections (a third of it), so that the client
/// never reuses a connection the runner has closed.
pub const HEAD_WAIT: Duration = Duration::from_secs(30);

/// An error answer: the contract's error, with its status.
struct Fault(RunnerError);

impl From<RunnerError> for Fault {
    fn from(e: RunnerError) -> Fault {
        Fault(e)
    }
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        if self.0.is_host_fault() {
            tracing::error!(error = %self.0, "a runner call failed");
        }
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(serde_json::json!({ "error": self.0 }))).into_response()
    }
}

/// A JSON body. One the runner cannot read is the API's fault (another
/// version, a bug), never its caller's: 500 for the log.
struct Body<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Fault;

    async fn from_request(req: Request, state: &S) -> Result<Self, Fault> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| Body(v))
            .map_err(|r| {
                Fault(RunnerError::host(format!(
                    "a request body: {}",
                    r.body_text()
                )))
            })
    }
}

/// 401 unless the request carries the runner's token.
async fn authorize(State(st): St, headers: HeaderMap, req: Request, next: Next) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty());
    match token {
        Some(t) if <[u8; 32]>::from(Sha256::digest(t.as_bytes())) == st.token => {
            next.run(req).await
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": {
                "status": 401,
                "code": "unauthorized",
                "message": "this runner answers its API only: send its token as 'Authorization: Bearer <token>'",
            }})),
        )
            .into_response(),
    }
}

/// A runner that has started again serves no sandbox until its API has
/// restored it: what it would answer meanwhile (a 404 for each sandbox it
/// does not know yet) would have the API record them as gone. Answered
/// 503 `runner_restoring` instead, which the API takes as a runner out of
/// reach for a moment (it restores it at once).
async fn restored_first(State(st): St, req: Request, next: Next) -> Response {
    if st.restored.load(std::sync::atomic::Ordering::SeqCst) {
        return next.run(req).await;
    }
    Fault(RunnerError::Restoring(
        "the runner has started again and serves no sandbox until its API has restored it; try again in a few seconds".into(),
    ))
    .into_response()
}

/// A change of an older generation of the API's write lock than one
/// already taken is refused whole (`writer_superseded`): it comes from a
/// replica that lost the lock amid a change, and another replica may have
/// restored the sandboxes since. Changes are taken one at a time (the API
/// sends them so already), each to its end even if its caller goes away,
/// so none of an older generation runs beside a newer one.
async fn fenced(State(st): St, req: Request, next: Next) -> Response {
    let generation = match req.headers().get(crate::FENCE) {
        None => 0,
        Some(v) => match v.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
            Some(g) => g,
            None => {
                return Fault(RunnerError::host(format!("an unreadable {}", crate::FENCE)))
                    .into_response()
            }
        },
    };
    let mut newest = st.fence.clone().lock_owned().await;
    if generation < *newest {
        return Fault(RunnerError::Superseded(format!(
            "a change of generation {generation} of the write lock, after generation {newest} \
             was taken: the API replica that sent it no longer holds the lock",
            newest = *newest
        )))
        .into_response();
    }
    *newest = generation;
    // To its end in a task of its own, the lock held, even if the API
    // goes away meanwhile (a replica killed amid the change): the next
    // change, a restore by another replica above all, starts after it.
    tokio::spawn(async move {
        let _held = newest;
        next.run(req).await
    })
    .await
    .unwrap_or_else(|e| Fault(RunnerError::host(e)).into_response())
}

/// Runs blocking runner work off the async threads.
async fn blocking<T: Send + 'static>(
    st: &Served,
    work: impl FnOnce(&dyn Runner) -> Result<T, RunnerError> + Send + 'static,
) -> Result<T, Fault> {
    let runner = st.runner.clone();
    tokio::task::spawn_blocking(move || work(&*runner))
        .await
        .map_err(|e| Fault(RunnerError::host(e)))?
        .map_err(Fault)
}

async fn status(State(st): St) -> Result<Json<Status>, Fault> {
    let instance = st.instance.clone();
    blocking(&st, move |r| {
        let policy = r.live_policy();
        Ok(Status {
            healthy: r.healthy(),
            host_addresses: policy.ranges().host_addresses().collect(),
            counts: r.counts(),
            capacity: r.capacity()?,
            instance,
        })
    })
    .await
    .map(Json)
}

async fn snapshots(State(st): St) -> Result<Json<Vec<String>>, Fault> {
    blocking(&st, |r| r.snapshots()).await.map(Json)
}

/// A snapshot to make from an image.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullSnapshot {
    /// Its name.
    pub name: String,
    /// The image.
    pub image: String,
}

async fn pull_snapshot(
    State(st): St,
    Body(body): Body<PullSnapshot>,
) -> Result<Json<sandgate_contract::PulledSnapshot>, Fault> {
    blocking(&st, move |r| r.pull_snapshot(&body.name, &body.image))
        .await
        .map(Json)
}

/// An archive the API sends, spooled to an unnamed file (the runner's
/// temporary directory) before the runner reads it: the API bounds its
/// size (its upload limit).
async fn import_snapshot(
    State(st): St,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Result<StatusCode, Fault> {
    let file = spool(body).await.map_err(|e| Fault(RunnerError::from(e)))?;
    blocking(&st, move |r| r.import_snapshot(&name, file)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `body` written to a file that has no name (unlinked at once), rewound.
async fn spool(body: axum::body::Body) -> std::io::Result<std::fs::File> {
    use futures_util::StreamExt;
    use std::io::{Seek, Write};
    let mut file = sandgate_contract::spool_file()?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(std::io::Error::other)?;
        file.write_all(&chunk)?;
    }
    file.rewind()?;
    Ok(file)
}

async fn delete_snapshot(State(st): St, Path(name): Path<String>) -> Result<StatusCode, Fault> {
    blocking(&st, move |r| r.delete_snapshot(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A policy this runner's own configuration gives its tier: anything
/// else (another version, a bug) is refused as the API's fault, never
/// enforced.
fn check(runner: &dyn Runner, policy: &EffectivePolicy) -> Result<(), RunnerError> {
    runner
        .live_policy()
        .check_effective(policy)
        .map_err(|why| RunnerError::host(format!("a policy this runner does not give: {why}")))
}

async fn create(State(st): St, Body(spec): Body<SandboxSpec>) -> Result<StatusCode, Fault> {
    blocking(&st, move |r| {
        check(r, &spec.policy)?;
        let most = r
            .live_policy()
            .tier(spec.policy.tier)
            .map_err(|e| RunnerError::host(e.message))?
            .resources
            .max;
        let want = spec.resources;
        if want.memory_mib > most.memory_mib
            || want.cpu_millicores > most.cpu_millicores
            || want.disk_mib > most.disk_mib
        {
            return Err(RunnerError::host(
                "resources over the tier's maxima on this runner",
            ));
        }
        r.create(&spec)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn update(
    State(st): St,
    Path(id): Path<String>,
    Body(policy): Body<EffectivePolicy>,
) -> Result<StatusCode, Fault> {
    blocking(&st, move |r| {
        check(r, &policy)?;
        r.update(&id, &policy)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn block(State(st): St, Path(id): Path<String>) -> Result<StatusCode, Fault> {
    blocking(&st, move |r| r.block(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stop(State(st): St, Path(id): Path<String>) -> Result<StatusCode, Fault> {
    blocking(&st, move |r| r.stop(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete(State(st): St, Path(id): Path<String>) -> Result<StatusCode, Fault> {
    blocking(&st, move |r| r.delete(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn exec(
    State(st): St,
    Path(id): Path<String>,
    Body(request): Body<ExecRequest>,
) -> Result<Json<ExecResult>, Fault> {
    blocking(&st, move |r| r.exec(&id, &request))
        .await
        .map(Json)
}

async fn probe(
    State(st): St,
    Path(id): Path<String>,
    Body(targets): Body<Vec<ProbeTarget>>,
) -> Result<Json<Vec<Observed>>, Fault> {
    blocking(&st, move |r| r.probe(&id, &targets))
        .await
        .map(Json)
}

async fn transfer(
    State(st): St,
    Path(id): Path<String>,
) -> Result<Json<Option<TransferUsage>>, Fault> {
    blocking(&st, move |r| r.transfer_usage(&id))
        .await
        .map(Json)
}

async fn addresses(
    State(st): St,
    Path(id): Path<String>,
) -> Result<Json<[std::net::IpAddr; 2]>, Fault> {
    st.runner.addresses(&id).map(Json).ok_or_else(|| {
        Fault(RunnerError::NotFound(format!(
            "no sandbox {id} on this runner"
        )))
    })
}

async fn restore(
    State(st): St,
    Body(expected): Body<Vec<Expected>>,
) -> Result<Json<RestoreReport>, Fault> {
    blocking(&st, move |r| {
        for e in &expected {
            check(r, &e.policy)?;
        }
        r.restore(&expected)
    })
    .await
    .inspect(|_| st.restored.store(true, std::sync::atomic::Ordering::SeqCst))
    .map(Json)
}

async fn events(State(st): St, Path(id): Path<String>) -> Result<Response, Fault> {
    let (recent, live) = st.runner.subscribe(&id)?;
    let event = |e: &sandgate_contract::NetworkEvent| {
        Event::default()
            .event(e.kind.as_str())
            .json_data(e)
            .unwrap_or_else(|_| Event::default().comment("unserializable event"))
    };
    Ok(followed(recent.iter().map(event).collect(), live, event))
}

async fn flows(State(st): St, Path(id): Path<String>) -> Result<Response, Fault> {
    let (log, live) = st.runner.flows(&id)?;
    let unserializable = |_| Event::default().comment("unserializable record");
    let first = vec![Event::default()
        .event("log")
        .json_data(&log)
        .unwrap_or_else(unserializable)];
    let event = move |f: &Flow| {
        Event::default()
            .event("flow")
            .json_data(f)
            .unwrap_or_else(unserializable)
    };
    Ok(followed(first, live, event))
}

/// `first`, an event named [`LIVE`], then each item of `live` as `event`
/// makes it, until the sandbox is deleted (the channel closes) or the API
/// goes away; one that fell behind is told how many it lost.
fn followed<T: Clone + Send + 'static>(
    first: Vec<Event>,
    live: broadcast::Receiver<T>,
    event: impl Fn(&T) -> Event + Send + Sync + Copy + 'static,
) -> Response {
    let first: Vec<Result<Event, Infallible>> = first
        .into_iter()
        .chain([Event::default().event(LIVE).data("")])
        .map(Ok)
        .collect();
    let next = stream::unfold(live, move |mut live| async move {
        let sent = match live.recv().await {
            Ok(e) => event(&e),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                Event::default().event("lagged").data(format!("{n}"))
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(sent), live))
    });
    Sse::new(stream::iter(first).chain(next))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

async fn deaths(State(st): St) -> Response {
    // Subscribed before the kept ones are read: none is missed between.
    let live = st.deaths.subscribe();
    let kept: Vec<Result<Event, Infallible>> = st
        .dead
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|id| Ok(Event::default().data(id)))
        .collect();
    // Those lost by a lag are in `dead`: the stream ends then, and the
    // API reads them again when it reconnects.
    let next = stream::unfold(live, |mut live| async move {
        let id = live.recv().await.ok()?;
        Some((Ok(Event::default().data(id)), live))
    });
    Sse::new(stream::iter(kept).chain(next))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}
