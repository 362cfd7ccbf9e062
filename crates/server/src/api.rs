//! The routes of docs/API.md and their request and response types.
//!
//! A handler parses its request (a body's unknown fields refused, each
//! field checked for form), authorizes its caller (the key's organization
//! and scopes), calls the [`crate::service`], which resolves, drives the
//! runner and the store and holds the transactions, and presents the
//! answer.

use crate::auth::{bearer, hash_key, same};
use crate::error::ApiError;
use crate::service::{self, NewSandbox, SettingsChange};
use crate::store::{Organization, SandboxRow, Scope};
use crate::AppState;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandgate_contract::{ExecRequest, ProbeTarget};
use sandgate_policy::{Destination, ResourcesRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

type St = State<Arc<AppState>>;

/// A JSON body whose rejections are API errors (`invalid_json`,
/// `invalid_request`, `unsupported_media_type`, `payload_too_large`).
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| Body(v))
            .map_err(ApiError::from)
    }
}

/// A query string whose rejections are API errors (400 `invalid_request`).
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Params(v))
            .map_err(|e| ApiError::invalid(format!("the query string: {}", e.body_text())))
    }
}

/// The body of an error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An error: a stable code and a message for a person; list errors also
/// carry `field` and `problems`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The stable code, e.g. `invalid_network_allow_list`.
    pub code: String,
    /// What is wrong and the fix.
    pub message: String,
}

// ---------------------------------------------------------------- auth --

/// The organization of the request's API key and the key's scopes: 401
/// without a live key, 403 for the operator token (it has no
/// organization).
async fn organization(
    st: &AppState,
    headers: &HeaderMap,
) -> Result<(Organization, BTreeSet<Scope>), ApiError> {
    let token = bearer(headers)?;
    if st.admin_token.as_deref().is_some_and(|t| same(t, token)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the operator token has no organization: use an organization's API key",
        ));
    }
    st.store
        .organization_by_key(&hash_key(token))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown or revoked API key",
            )
        })
}

/// Admin routes: the operator token only; 403 for an organization's key.
async fn admin(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = bearer(headers)?;
    if st.admin_token.as_deref().is_some_and(|t| same(t, token)) {
        return Ok(());
    }
    if st
        .store
        .organization_by_key(&hash_key(token))
        .await?
        .is_some()
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "admin routes need the operator token, not an organization's key",
        ));
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "unknown token",
    ))
}

/// The organization of the request's key and what the key may do,
/// checked before the body is read (a request without a valid key is 401
/// whatever its body).
#[derive(Debug)]
pub struct Caller(pub Organization, pub Scopes);

/// The scopes of the request's key.
#[derive(Debug, Clone)]
pub struct Scopes(pub BTreeSet<Scope>);

impl Scopes {
    /// 403 `insufficient_scope` unless the key has `scope`.
    pub fn need(&self, scope: Scope) -> Result<(), ApiError> {
        if self.0.contains(&scope) {
            return Ok(());
        }
        let mut e = ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!(
                "this API key lacks the scope {}, which this request needs; the operator issues keys with scopes",
                scope.as_str()
            ),
        );
        e.details = Some(serde_json::json!({ "scope": scope.as_str() }));
        Err(e)
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, ApiError> {
        organization(st, &parts.headers)
            .await
            .map(|(org, scopes)| Caller(org, Scopes(scopes)))
    }
}

/// The operator (the admin token), checked before the body is read.
#[derive(Debug)]
pub struct Operator;

impl FromRequestParts<Arc<AppState>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, ApiError> {
        admin(st, &parts.headers).await.map(|()| Operator)
    }
}

/// The operator, or an organization's key with `sandboxes:read`: for
/// what both may read (the snapshots), checked before the body is read.
#[derive(Debug)]
pub struct Reader;

impl FromRequestParts<Arc<AppState>> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)?;
        if st.admin_token.as_deref().is_some_and(|t| same(t, token)) {
            return Ok(Reader);
        }
        let (_, scopes) = organization(st, &parts.headers).await?;
        Scopes(scopes).need(Scope::SandboxesRead)?;
        Ok(Reader)
    }
}

/// A request's bearer token, whatever it is for (checked by the service):
/// 401 without one, before the body is read.
pub struct Bearer(pub String);

impl FromRequestParts<Arc<AppState>> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<AppState>) -> Result<Self, ApiError> {
        crate::auth::bearer(&parts.headers).map(|t| Bearer(t.to_string()))
    }
}

// ------------------------------------------------------- organizations --

/// An organization.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its billing tier.
    pub tier: u8,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// The known egress address its sandboxes' connections leave from,
    /// if the operator gave it one (absent: the host's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_address: Option<EgressAddressBody>,
}

impl From<Organization> for OrganizationView {
    fn from(o: Organization) -> Self {
        OrganizationView {
            id: o.id,
            name: o.name,
            tier: o.tier,
            created_at: o.created_at,
            egress_address: o.egress_address.map(|e| EgressAddressBody {
                ipv4: e.ipv4.map(|a| a.to_string()),
                ipv6: e.ipv6.map(|a| a.to_string()),
            }),
        }
    }
}

/// The caller's organization.
#[utoipa::path(get, path = "/api/organization", tag = "organization",
    responses((status = 200, body = OrganizationView), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_organization(Caller(org, _): Caller) -> Result<Json<OrganizationView>, ApiError> {
    Ok(Json(org.into()))
}

/// A new organization.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrganization {
    /// Its name, unique: letters, digits, `-`, `_`, `.`, at most 64.
    pub name: String,
    /// Its tier, one of the operator's tier table.
    pub tier: u8,
}

/// A tier change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTier {
    /// The new tier.
    pub tier: u8,
}

pub(crate) fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    let ok = sandgate_runtime::is_valid_name(name);
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            format!("{what} {name:?}: use letters, digits, '-', '_' and '.', at most 64, not starting with '.'"),
        ))
    }
}

/// Makes an organization (admin).
#[utoipa::path(post, path = "/api/admin/organizations", tag = "admin", request_body = CreateOrganization,
    responses((status = 201, body = OrganizationView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_organization(
    State(st): St,
    _: Operator,
    Body(body): Body<CreateOrganization>,
) -> Result<(StatusCode, Json<OrganizationView>), ApiError> {
    check_name("organization name", &body.name)?;
    let org = service::create_organization(&st, body.name, body.tier).await?;
    Ok((StatusCode::CREATED, Json(org.into())))
}

/// Every organization (admin).
#[utoipa::path(get, path = "/api/admin/organizations", tag = "admin",
    responses((status = 200, body = [OrganizationView]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_organizations(
    State(st): St,
    _: Operator,
) -> Result<Json<Vec<OrganizationView>>, ApiError> {
    Ok(Json(
        st.store
            .organizations()
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

/// A tier change and what it did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierChanged {
    /// The organization, with its new tier.
    pub organization: OrganizationView,
    /// Running sandboxes whose policy was re-resolved and re-applied.
    pub reapplied: usize,
}

/// Changes an organization's tier (admin). Every running sandbox of the
/// organization has its policy re-resolved and applied before the answer.
#[utoipa::path(put, path = "/api/admin/organizations/{id}/tier", tag = "admin", request_body = SetTier,
    params(("id" = String, Path, description = "organization id")),
    responses((status = 200, body = TierChanged), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_tier(
    State(st): St,
    _: Operator,
    Path(id): Path<String>,
    Body(body): Body<SetTier>,
) -> Result<Json<TierChanged>, ApiError> {
    let (org, reapplied) = service::set_tier(&st, id, body.tier).await?;
    Ok(Json(TierChanged {
        organization: org.into(),
        reapplied,
    }))
}

/// A snapshot to make from an OCI image (admin).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSnapshot {
    /// Its name: letters, digits, `-`, `_` and `.`, at most 64.
    pub name: String,
    /// The image: `python:3.12-slim` (Docker Hub's library),
    /// `registry.example.com:5000/team/tool:1.2`, or pinned by digest
    /// (`...@sha256:...`). Its registry must be one the operator
    /// configured on the runners.
    pub image: String,
}

/// A snapshot made from an image.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotMade {
    /// Its name.
    pub name: String,
    /// The image, its reference in full.
    pub image: String,
    /// The digest of the manifest it was made from (this platform's).
    pub digest: String,
    /// Its layers.
    pub layers: usize,
    /// The runners that hold it.
    pub runners: Vec<String>,
}

/// A snapshot, as the runners hold it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotView {
    /// Its name (what `snapshot` names at a sandbox's create).
    pub name: String,
    /// The runners that hold it (of those that answered).
    pub runners: Vec<String>,
}

/// Makes a snapshot from an OCI image on every runner (admin): each
/// runner pulls it from a registry its operator configured, verifies
/// every layer's digest and keeps layers shared between snapshots once.
/// A snapshot of that name is replaced, unless a sandbox uses it (409
/// `snapshot_in_use`).
#[utoipa::path(post, path = "/api/snapshots", tag = "snapshots", request_body = NewSnapshot,
    responses((status = 201, body = SnapshotMade), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_snapshot(
    State(st): St,
    _: Operator,
    Body(body): Body<NewSnapshot>,
) -> Result<(StatusCode, Json<SnapshotMade>), ApiError> {
    let made = crate::snapshots::pull(&st, body.name, body.image).await?;
    Ok((
        StatusCode::CREATED,
        Json(SnapshotMade {
            name: made.pulled.name,
            image: made.pulled.image,
            digest: made.pulled.digest,
            layers: made.pulled.layers,
            runners: made.runners,
        }),
    ))
}

/// The snapshots sandboxes can start from, and the runners that hold
/// each (the operator, or a key with `sandboxes:read`).
#[utoipa::path(get, path = "/api/snapshots", tag = "snapshots",
    responses((status = 200, body = [SnapshotView]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_snapshots(State(st): St, _: Reader) -> Result<Json<Vec<SnapshotView>>, ApiError> {
    Ok(Json(
        crate::snapshots::list(&st)
            .await?
            .into_iter()
            .map(|(name, runners)| SnapshotView { name, runners })
            .collect(),
    ))
}

/// Makes snapshot `name` on every runner from the root filesystem tar
/// archive in the body (plain or gzip: what `docker export` writes;
/// `Content-Type: application/x-tar` or `application/gzip`), at most the
/// operator's upload limit (413 `payload_too_large`). A hostile or broken
/// archive (an entry out of the root, a link out, no `/bin/sh`) is 422
/// `invalid_request` and nothing is made. Replaced as a pull replaces.
#[utoipa::path(put, path = "/api/snapshots/{name}", tag = "snapshots",
    params(("name" = String, Path, description = "snapshot name")),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "a root filesystem tar archive, plain or gzip"),
    responses((status = 201, body = SnapshotView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn upload_snapshot(
    State(st): St,
    _: Operator,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<SnapshotView>), ApiError> {
    let kind = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let kind = kind.split(';').next().unwrap_or_default().trim();
    if !crate::snapshots::ARCHIVE_TYPES.contains(&kind) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "a snapshot archive is sent as {} (this was {kind:?})",
                crate::snapshots::ARCHIVE_TYPES.join(" or ")
            ),
        ));
    }
    let runners = crate::snapshots::upload(&st, name.clone(), body).await?;
    Ok((StatusCode::CREATED, Json(SnapshotView { name, runners })))
}

/// Removes a snapshot from every runner (admin): 409 `snapshot_in_use`
/// while a sandbox uses it (or for the built-in `busybox`), 404 when no
/// runner has it.
#[utoipa::path(delete, path = "/api/snapshots/{name}", tag = "snapshots",
    params(("name" = String, Path, description = "snapshot name")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_snapshot(
    State(st): St,
    _: Operator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    crate::snapshots::delete(&st, name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A runner behind the API, as an operator sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerView {
    /// Its name (`main` on a server with one).
    pub name: String,
    /// `active` (sandboxes are placed there), `draining` (the operator
    /// drained it: its sandboxes run on, none is placed there) or
    /// `unreachable` (it does not answer: its sandboxes are shown
    /// `unreachable` and keep what it was last told).
    pub state: String,
    /// The sandboxes it can hold (its network slots); absent when it
    /// does not answer.
    pub slots: Option<u32>,
    /// The sandboxes it holds; absent when it does not answer.
    pub used: Option<u32>,
    /// The runtime classes its host can run; absent when it does not
    /// answer.
    #[schema(value_type = Option<Vec<String>>)]
    pub runtime_classes: Option<Vec<sandgate_policy::RuntimeClass>>,
    /// The sandboxes placed on it, by the store.
    pub sandboxes: usize,
    /// Its labels (those a runner that registered said).
    pub labels: crate::fleet::Labels,
}

/// Every runner behind the API (admin), in the operator's order.
#[utoipa::path(get, path = "/api/admin/runners", tag = "admin",
    responses((status = 200, body = [RunnerView]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_runners(State(st): St, _: Operator) -> Result<Json<Vec<RunnerView>>, ApiError> {
    Ok(Json(service::runners(&st).await?))
}

/// A runner to issue a token to.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRunner {
    /// Its name: 1 to 63 lowercase letters, digits and dashes.
    pub name: String,
    /// Its labels, by which the tiers' placement picks (names and values
    /// of 1 to 63 letters, digits, `-`, `_` and `.`).
    #[serde(default)]
    pub labels: crate::fleet::Labels,
}

/// A runner's token, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunnerToken {
    /// The runner's name.
    pub name: String,
    /// The token it registers with (`sandgate runner --api URL
    /// --token-file F`); another one issued under the name replaces it.
    pub token: String,
}

/// Issues a runner a token to register with (admin): shown once.
#[utoipa::path(post, path = "/api/admin/runners", tag = "admin", request_body = NewRunner,
    responses((status = 201, body = RunnerToken), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn issue_runner_token(
    State(st): St,
    _: Operator,
    Body(body): Body<NewRunner>,
) -> Result<(StatusCode, Json<RunnerToken>), ApiError> {
    let token = crate::registry::issue(&st, body.name.clone(), body.labels).await?;
    Ok((
        StatusCode::CREATED,
        Json(RunnerToken {
            name: body.name,
            token,
        }),
    ))
}

/// A runner's heartbeat, with the token issued to it (the runner's
/// route, not a client's): the runner joins the fleet at its first.
#[utoipa::path(post, path = "/api/runners/heartbeat", tag = "admin", request_body = crate::registry::Heartbeat,
    responses((status = 200, body = crate::registry::Registered), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn runner_heartbeat(
    State(st): St,
    Bearer(token): Bearer,
    Body(body): Body<crate::registry::Heartbeat>,
) -> Result<Json<crate::registry::Registered>, ApiError> {
    Ok(Json(crate::registry::heartbeat(&st, &token, body).await?))
}

/// A drain, or its end.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetDraining {
    /// `true`: no new sandbox is placed on the runner (its own run on);
    /// `false`: it takes new ones again.
    pub draining: bool,
}

/// Drains a runner, or ends its drain (admin).
#[utoipa::path(put, path = "/api/admin/runners/{name}/draining", tag = "admin", request_body = SetDraining,
    params(("name" = String, Path, description = "runner name")),
    responses((status = 200, body = RunnerView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_draining(
    State(st): St,
    _: Operator,
    Path(name): Path<String>,
    Body(body): Body<SetDraining>,
) -> Result<Json<RunnerView>, ApiError> {
    Ok(Json(service::set_draining(&st, name, body.draining).await?))
}

/// A known egress address: the source addresses of an organization's
/// sandboxes' connections, per family (a family without one leaves from
/// the host's own address).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressAddressBody {
    /// An IPv4 address of the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// An IPv6 address of the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
}

impl EgressAddressBody {
    /// The addresses, each parsed as its family's; 400
    /// `invalid_egress_address` naming the field otherwise.
    fn parse(&self) -> Result<sandgate_policy::EgressAddress, ApiError> {
        fn one<T: std::str::FromStr>(
            field: &'static str,
            family: &str,
            text: &Option<String>,
        ) -> Result<Option<T>, ApiError> {
            text.as_deref()
                .map(|t| {
                    t.trim().parse().map_err(|_| {
                        ApiError::from(sandgate_policy::PolicyError {
                            field: Some(field),
                            ..sandgate_policy::PolicyError::new(
                                sandgate_policy::ErrorCode::InvalidEgressAddress,
                                format!("{field} {t:?} is not an {family} address"),
                            )
                        })
                    })
                })
                .transpose()
        }
        Ok(sandgate_policy::EgressAddress {
            ipv4: one("ipv4", "IPv4", &self.ipv4)?,
            ipv6: one("ipv6", "IPv6", &self.ipv6)?,
        })
    }
}

/// An egress address change and what it did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressAddressChanged {
    /// The organization, with its egress address as it is now.
    pub organization: OrganizationView,
    /// Running sandboxes whose policy was applied again: their new
    /// connections leave from the new address (open ones keep theirs).
    pub reapplied: usize,
}

/// Gives an organization a known egress address (admin): its sandboxes'
/// connections leave from it, so that its own firewalls can allow-list
/// it. Each address must be one this host holds.
#[utoipa::path(put, path = "/api/admin/organizations/{id}/egress-address", tag = "admin", request_body = EgressAddressBody,
    params(("id" = String, Path, description = "organization id")),
    responses((status = 200, body = EgressAddressChanged), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_egress_address(
    State(st): St,
    _: Operator,
    Path(id): Path<String>,
    Body(body): Body<EgressAddressBody>,
) -> Result<Json<EgressAddressChanged>, ApiError> {
    let egress = body.parse()?;
    let (org, reapplied) = service::set_egress_address(&st, id, Some(egress)).await?;
    Ok(Json(EgressAddressChanged {
        organization: org.into(),
        reapplied,
    }))
}

/// Takes an organization's known egress address away (admin): its
/// sandboxes' new connections leave from the host's own address again.
#[utoipa::path(delete, path = "/api/admin/organizations/{id}/egress-address", tag = "admin",
    params(("id" = String, Path, description = "organization id")),
    responses((status = 200, body = EgressAddressChanged),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_egress_address(
    State(st): St,
    _: Operator,
    Path(id): Path<String>,
) -> Result<Json<EgressAddressChanged>, ApiError> {
    let (org, reapplied) = service::set_egress_address(&st, id, None).await?;
    Ok(Json(EgressAddressChanged {
        organization: org.into(),
        reapplied,
    }))
}

/// A new API key, shown once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewKey {
    /// The key's id (to revoke it).
    pub id: String,
    /// Its organization.
    pub organization_id: String,
    /// The key itself; only its hash is kept, so it is shown this once.
    pub key: String,
    /// What it may do.
    pub scopes: Vec<String>,
}

/// What a new key may do.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Its scopes (`sandboxes:read`, `sandboxes:write`, `sandboxes:exec`,
    /// `network:write`, `secrets:write`); without this field, every scope.
    pub scopes: Option<Vec<String>>,
}

/// Issues an API key for an organization (admin), with every scope or the
/// ones the body names.
#[utoipa::path(post, path = "/api/admin/organizations/{id}/keys", tag = "admin", request_body(content = CreateKey, description = "optional"),
    params(("id" = String, Path, description = "organization id")),
    responses((status = 201, body = NewKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_key(
    State(st): St,
    _: Operator,
    Path(id): Path<String>,
    raw: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<NewKey>), ApiError> {
    let body: CreateKey = optional_body(raw)?;
    let scopes: BTreeSet<Scope> = match &body.scopes {
        None => Scope::ALL.into_iter().collect(),
        Some(list) if list.is_empty() => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "scopes: give at least one scope, or leave the field out for every scope",
            ))
        }
        Some(list) => list
            .iter()
            .map(|s| {
                s.parse::<Scope>().map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_scope",
                        format!("scopes: {e}"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let (org, key_id, key) = service::create_key(&st, &id, &scopes).await?;
    Ok((
        StatusCode::CREATED,
        Json(NewKey {
            id: key_id,
            organization_id: org.id,
            key,
            scopes: scopes.iter().map(|s| s.as_str().to_string()).collect(),
        }),
    ))
}

/// A JSON body that may be left out (empty, or only white space): the
/// type's default then. Its rejections are API errors, like [`Body`]'s.
fn optional_body<T: serde::de::DeserializeOwned + Default>(
    raw: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, ApiError> {
    let raw = raw.map_err(|r| {
        let (status, code) = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
        } else {
            (StatusCode::BAD_REQUEST, "invalid_request")
        };
        ApiError::new(status, code, r.body_text())
    })?;
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&raw).map_err(|e| {
        let (status, code) = if e.is_syntax() || e.is_eof() {
            (StatusCode::BAD_REQUEST, "invalid_json")
        } else {
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request")
        };
        ApiError::new(status, code, format!("the body: {e}"))
    })
}

/// Revokes an API key (admin).
#[utoipa::path(delete, path = "/api/admin/organizations/{id}/keys/{key_id}", tag = "admin",
    params(("id" = String, Path, description = "organization id"), ("key_id" = String, Path, description = "key id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_key(
    State(st): St,
    _: Operator,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    service::revoke_key(&st, &id, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----------------------------------------------------------- sandboxes --

/// A sandbox.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxView {
    /// Its id.
    pub id: String,
    /// Its name, unique in its organization.
    pub name: String,
    /// Its organization.
    pub organization_id: String,
    /// Its snapshot.
    pub snapshot: String,
    /// `creating`, `running`, `deleting`, `died` (its init exited: kept,
    /// not restarted), `lost` (gone from the host at the server's start)
    /// or `unreachable` (running, on a runner that does not answer now:
    /// it keeps enforcing what it was last told; calls about the sandbox
    /// are 503 `runner_unavailable` until it answers again).
    pub state: String,
    /// The runner it was placed on (`main` on a server with one).
    pub runner: String,
    /// Environment variables of every exec.
    pub env: BTreeMap<String, String>,
    /// Stored `networkBlockAll`.
    pub network_block_all: bool,
    /// Stored `networkAllowList`, canonical; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_allow_list: Option<String>,
    /// Stored `domainAllowList`, canonical; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_allow_list: Option<String>,
    /// Stored `networkDenyList`, canonical; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_deny_list: Option<String>,
    /// Stored `domainDenyList`, canonical; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_deny_list: Option<String>,
    /// Stored `essentialServices`.
    pub essential_services: bool,
    /// Stored `egressMbps` as asked; absent: the tier's default
    /// (`effectiveNetwork.budgets` says what is in force).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_mbps: Option<u32>,
    /// Stored `transferQuotaMiB` as asked; absent: the tier's default
    /// (`effectiveNetwork.budgets` says what is in force, with its period).
    #[serde(rename = "transferQuotaMiB", skip_serializing_if = "Option::is_none")]
    pub transfer_quota_mib: Option<u32>,
    /// Stored `maxConnections` as asked; absent: the tier's fair share
    /// (`effectiveNetwork.fairShares.connections` says what is in force).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Stored `newConnectionsPerSecond` as asked; absent: the tier's fair
    /// share (`effectiveNetwork.fairShares.newConnectionsPerSecond`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_connections_per_second: Option<u32>,
    /// Stored `networkApprovals`: what it is refused opens access
    /// requests (`effectiveNetwork.approvals` when in force).
    pub network_approvals: bool,
    /// Stored `approvalHoldSeconds`.
    pub approval_hold_seconds: u8,
    /// The secrets it holds, by name (absent when none); `env` holds
    /// their placeholders.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Stored `httpRules`; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub http_rules: Option<Vec<sandgate_policy::HttpRuleRequest>>,
    /// What the sandbox may reach now: mode, active lists, essential
    /// services, and stored settings that are inactive with why.
    #[schema(value_type = Object)]
    pub effective_network: Value,
    /// When it was made.
    pub created_at: String,
    /// When its settings last changed.
    pub updated_at: String,
    /// Its memory, CPU and disk.
    pub resources: ResourcesView,
    /// The OCI runtime it runs under: `runc` or `runsc` (gVisor).
    #[schema(value_type = String)]
    pub runtime_class: sandgate_policy::RuntimeClass,
}

/// A sandbox's resources.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResourcesView {
    /// Memory, MiB (swap included): over it, a process of the sandbox is
    /// killed, in it alone.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    /// CPU time, cores.
    pub cpus: f64,
    /// What it may write over its snapshot, MiB: a full disk is full for
    /// it alone.
    #[serde(rename = "diskMiB")]
    pub disk_mib: u64,
}

fn view(st: &AppState, org: &Organization, row: SandboxRow) -> Result<SandboxView, ApiError> {
    let effective =
        serde_json::to_value(service::effective(st, org, &row)?).map_err(ApiError::internal)?;
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    // Rows from before resources were stored got the tier's defaults.
    let defaults = st.policy.tier(org.tier)?.resources.default;
    let or = |v: u64, d: u64| if v == 0 { d } else { v };
    let resources = ResourcesView {
        memory_mib: or(row.memory_mib, defaults.memory_mib),
        cpus: f64::from(if row.cpu_millicores == 0 {
            defaults.cpu_millicores
        } else {
            row.cpu_millicores
        }) / 1000.0,
        disk_mib: or(row.disk_mib, defaults.disk_mib),
    };
    let secrets = crate::secrets::held(&row)
        .into_iter()
        .map(|h| h.name)
        .collect();
    Ok(SandboxView {
        resources,
        runtime_class: row.runtime_class,
        env: serde_json::from_str(&row.env).unwrap_or_default(),
        id: row.id,
        name: row.name,
        organization_id: row.organization_id,
        snapshot: row.snapshot,
        state: match st.fleet.get(&row.runner) {
            Ok(m) if row.state == crate::store::SandboxState::Running && !m.reachable() => {
                "unreachable".into()
            }
            Err(_) if row.state == crate::store::SandboxState::Running => "unreachable".into(),
            _ => row.state.as_str().to_string(),
        },
        runner: row.runner.clone(),
        network_block_all: row.network_block_all,
        network_allow_list: non_empty(row.network_allow_list),
        domain_allow_list: non_empty(row.domain_allow_list),
        network_deny_list: non_empty(row.network_deny_list),
        domain_deny_list: non_empty(row.domain_deny_list),
        essential_services: row.essential_services,
        egress_mbps: row.egress_mbps,
        transfer_quota_mib: row.transfer_quota_mib,
        max_connections: row.max_connections,
        new_connections_per_second: row.new_connections_per_second,
        network_approvals: row.network_approvals,
        approval_hold_seconds: row.approval_hold_seconds,
        secrets,
        http_rules: sandgate_policy::HttpRules::parse_stored(&row.http_rules)
            .ok()
            .filter(|r| !r.is_empty())
            .map(|r| r.requests()),
        effective_network: effective,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// A new sandbox.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateSandbox {
    /// Its name, unique in the organization (default: its id).
    pub name: Option<String>,
    /// The snapshot to start from (default `busybox`).
    pub snapshot: Option<String>,
    /// Environment variables of every exec.
    pub env: Option<BTreeMap<String, String>>,
    /// Comma-separated CIDRs the sandbox may reach (REQUIREMENTS.md section 1).
    pub network_allow_list: Option<String>,
    /// Block all egress; wins over every list.
    pub network_block_all: Option<bool>,
    /// Comma-separated domain names and `*.` wildcards.
    pub domain_allow_list: Option<String>,
    /// Comma-separated CIDRs the sandbox may never reach: they win over
    /// every list and the essential services (tier 3/4).
    pub network_deny_list: Option<String>,
    /// Comma-separated names and `*.` wildcards the sandbox may never
    /// reach (tier 3/4).
    pub domain_deny_list: Option<String>,
    /// `false` turns the essential services off (any tier).
    pub essential_services: Option<bool>,
    /// Egress bandwidth, Mbit/s, within the tier's maximum (default: the
    /// tier's default, often none).
    pub egress_mbps: Option<u32>,
    /// Bytes both ways a period, MiB, within the tier's maximum (default:
    /// the tier's default, often none); the period is the operator's.
    #[serde(rename = "transferQuotaMiB")]
    pub transfer_quota_mib: Option<u32>,
    /// Connections tracked at once, at most: within the tier's fair share,
    /// which is also the default.
    pub max_connections: Option<u32>,
    /// New connections a second, at most: within the tier's fair share,
    /// which is also the default.
    pub new_connections_per_second: Option<u32>,
    /// What the sandbox is refused opens access requests for its owner to
    /// approve or deny (tier 3/4; in force in `allowlist` mode).
    pub network_approvals: Option<bool>,
    /// How long a refused DNS query waits for an approval: 0 to 60
    /// seconds (default 0).
    pub approval_hold_seconds: Option<u32>,
    /// Methods and paths per host, enforced by the gateway on each request
    /// (tier 3/4): `[{"host", "methods"?, "paths"?}]`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub http_rules: Option<Vec<sandgate_policy::HttpRuleRequest>>,
    /// The organization's secrets it holds, by name: each an environment
    /// variable holding a placeholder, which the gateway replaces with the
    /// value in requests to the secret's hosts.
    pub secrets: Option<Vec<String>>,
    /// Memory, CPU and disk, each within the tier's maximum (default: the
    /// tier's defaults).
    #[schema(value_type = Option<Object>)]
    pub resources: Option<ResourcesRequest>,
    /// The OCI runtime it runs under, among those its tier allows:
    /// `runc` or `runsc` (gVisor); default: the tier's first.
    #[schema(value_type = Option<String>)]
    pub runtime_class: Option<sandgate_policy::RuntimeClass>,
}

/// New network settings: a field sent replaces the stored value, a field
/// left out is kept; at least one is needed.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateSettings {
    /// `networkAllowList` (`""` removes it).
    pub network_allow_list: Option<String>,
    /// `networkBlockAll`.
    pub network_block_all: Option<bool>,
    /// `domainAllowList` (`""` removes it).
    pub domain_allow_list: Option<String>,
    /// `networkDenyList` (`""` removes it).
    pub network_deny_list: Option<String>,
    /// `domainDenyList` (`""` removes it).
    pub domain_deny_list: Option<String>,
    /// `essentialServices`.
    pub essential_services: Option<bool>,
    /// `egressMbps`, Mbit/s (`null`: back to the tier's default).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u32>, nullable = true)]
    pub egress_mbps: Option<Option<u32>>,
    /// `transferQuotaMiB`, MiB a period (`null`: back to the tier's
    /// default).
    #[serde(rename = "transferQuotaMiB", default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u32>, nullable = true)]
    pub transfer_quota_mib: Option<Option<u32>>,
    /// `maxConnections` (`null`: back to the tier's fair share).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u32>, nullable = true)]
    pub max_connections: Option<Option<u32>>,
    /// `newConnectionsPerSecond` (`null`: back to the tier's fair share).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u32>, nullable = true)]
    pub new_connections_per_second: Option<Option<u32>>,
    /// `networkApprovals`.
    pub network_approvals: Option<bool>,
    /// `approvalHoldSeconds`, 0 to 60.
    pub approval_hold_seconds: Option<u32>,
    /// `httpRules` (`[]` removes them).
    #[schema(value_type = Option<Vec<Object>>)]
    pub http_rules: Option<Vec<sandgate_policy::HttpRuleRequest>>,
}

/// A field that may be left out (`None`), sent as `null` (`Some(None)`)
/// or sent with a value.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// An exec's working directory: an absolute path of at most 4,096 bytes
/// (the kernel's `PATH_MAX`), without control characters.
fn check_cwd(cwd: &str) -> Result<(), ApiError> {
    if !cwd.starts_with('/') || cwd.len() > 4096 || cwd.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_cwd",
            format!(
                "cwd: {:?} is not an absolute path of at most 4,096 bytes without control characters",
                cwd.chars().take(64).collect::<String>()
            ),
        ));
    }
    Ok(())
}

fn check_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if env.len() > 256 {
        return Err(ApiError::invalid("env: at most 256 variables"));
    }
    for (k, v) in env {
        let name_ok = !k.is_empty()
            && k.len() <= 256
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !k.as_bytes()[0].is_ascii_digit();
        if !name_ok {
            return Err(ApiError::invalid(format!(
                "env: {k:?} is not a variable name (letters, digits and '_', not starting with a digit)"
            )));
        }
        if v.contains('\0') || v.len() > 32 * 1024 {
            return Err(ApiError::invalid(format!(
                "env: the value of {k} has a NUL byte or is over 32 KiB"
            )));
        }
    }
    // The environment and the arguments of a process share one limit in
    // the kernel (about 2 MiB here); the sandbox's and an exec's together
    // stay well under it.
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if total > 256 * 1024 {
        return Err(ApiError::invalid(format!(
            "env: {total} bytes in all; at most 256 KiB"
        )));
    }
    Ok(())
}

/// Creates a sandbox: validated, resolved, its policy in the kernel before
/// its first process runs. Any failure leaves nothing.
#[utoipa::path(post, path = "/api/sandbox", tag = "sandbox", request_body = CreateSandbox,
    responses((status = 201, body = SandboxView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_sandbox(
    State(st): St,
    Caller(org, scopes): Caller,
    Body(body): Body<CreateSandbox>,
) -> Result<(StatusCode, Json<SandboxView>), ApiError> {
    scopes.need(Scope::SandboxesWrite)?;
    let settings = SettingsChange {
        network_block_all: body.network_block_all,
        network_allow_list: body.network_allow_list,
        domain_allow_list: body.domain_allow_list,
        network_deny_list: body.network_deny_list,
        domain_deny_list: body.domain_deny_list,
        essential_services: body.essential_services,
        egress_mbps: body.egress_mbps.map(Some),
        transfer_quota_mib: body.transfer_quota_mib.map(Some),
        max_connections: body.max_connections.map(Some),
        new_connections_per_second: body.new_connections_per_second.map(Some),
        network_approvals: body.network_approvals,
        approval_hold_seconds: body.approval_hold_seconds,
        http_rules: body.http_rules,
    };
    // Network settings at create need the network scope too, unless they
    // only narrow (block everything, deny, turn the essential services off).
    if !settings.only_narrows() {
        scopes.need(Scope::NetworkWrite)?;
    }
    // A secret held is a secret sent to its hosts: only a key that may
    // manage secrets gives one to a sandbox.
    if body.secrets.as_ref().is_some_and(|s| !s.is_empty()) {
        scopes.need(Scope::SecretsWrite)?;
    }
    if let Some(name) = &body.name {
        check_name("sandbox name", name)?;
        if name.starts_with("sb-") {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_name",
                format!("sandbox name {name:?}: 'sb-' starts sandbox ids; choose another name"),
            ));
        }
    }
    let snapshot = body.snapshot.unwrap_or_else(|| "busybox".into());
    check_name("snapshot", &snapshot)?;
    let env = body.env.unwrap_or_default();
    check_env(&env)?;
    let new = NewSandbox {
        name: body.name,
        snapshot,
        env,
        settings,
        resources: body.resources.unwrap_or_default(),
        runtime_class: body.runtime_class,
        secrets: body.secrets.unwrap_or_default(),
    };
    let (row, org) = service::create_sandbox(&st, &org, new).await?;
    Ok((StatusCode::CREATED, Json(view(&st, &org, row)?)))
}

/// The organization's sandboxes.
#[utoipa::path(get, path = "/api/sandbox", tag = "sandbox",
    responses((status = 200, body = [SandboxView]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_sandboxes(
    State(st): St,
    Caller(org, scopes): Caller,
) -> Result<Json<Vec<SandboxView>>, ApiError> {
    scopes.need(Scope::SandboxesRead)?;
    let rows = st.store.sandboxes(Some(&org.id)).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| view(&st, &org, r))
            .collect::<Result<_, _>>()?,
    ))
}

/// One sandbox, by id or name.
#[utoipa::path(get, path = "/api/sandbox/{id_or_name}", tag = "sandbox",
    params(("id_or_name" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = SandboxView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_sandbox(
    State(st): St,
    Caller(org, scopes): Caller,
    Path(key): Path<String>,
) -> Result<Json<SandboxView>, ApiError> {
    scopes.need(Scope::SandboxesRead)?;
    let row = service::sandbox(&st, &org, &key).await?;
    Ok(Json(view(&st, &org, row)?))
}

/// Deletes a sandbox: its processes, files, slot and record.
#[utoipa::path(delete, path = "/api/sandbox/{id_or_name}", tag = "sandbox",
    params(("id_or_name" = String, Path, description = "sandbox id or name")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_sandbox(
    State(st): St,
    Caller(org, scopes): Caller,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    scopes.need(Scope::SandboxesWrite)?;
    service::delete_sandbox(&st, org, key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Changes a sandbox's network settings (REQUIREMENTS.md section 1, "Updates"):
/// applied in the kernel before the answer; connections the new policy
/// denies stop at their next packet.
#[utoipa::path(post, path = "/api/sandbox/{id_or_name}/network-settings", tag = "sandbox", request_body = UpdateSettings,
    params(("id_or_name" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = SandboxView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_settings(
    State(st): St,
    Caller(org, scopes): Caller,
    Path(key): Path<String>,
    Body(body): Body<UpdateSettings>,
) -> Result<Json<SandboxView>, ApiError> {
    scopes.need(Scope::NetworkWrite)?;
    let change = SettingsChange {
        network_block_all: body.network_block_all,
        network_allow_list: body.network_allow_list,
        domain_allow_list: body.domain_allow_list,
        network_deny_list: body.network_deny_list,
        domain_deny_list: body.domain_deny_list,
        essential_services: body.essential_services,
        egress_mbps: body.egress_mbps,
        transfer_quota_mib: body.transfer_quota_mib,
        max_connections: body.max_connections,
        new_connections_per_second: body.new_connections_per_second,
        network_approvals: body.network_approvals,
        approval_hold_seconds: body.approval_hold_seconds,
        http_rules: body.http_rules,
    };
    let (row, org) = service::update_settings(&st, org, key, change).await?;
    Ok(Json(view(&st, &org, row)?))
}

/// A command to run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Execute {
    /// Run by `/bin/sh -c`.
    pub command: String,
    /// Working directory.
    pub cwd: Option<String>,
    /// More environment variables (over the sandbox's).
    pub env: Option<BTreeMap<String, String>>,
    /// Seconds before the command's whole process group is killed.
    pub timeout: Option<f64>,
}

/// What a command did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Executed {
    /// Exit code (128 + signal when killed; 137 on timeout).
    pub exit_code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// stdout then stderr, as the reference API's `result`.
    pub result: String,
    /// Whether the timeout killed it.
    pub timed_out: bool,
    /// Whether output over the cap was dropped.
    pub truncated: bool,
}

/// Runs a command in a sandbox (works in every network mode).
#[utoipa::path(post, path = "/api/sandbox/{id_or_name}/process/execute", tag = "sandbox", request_body = Execute,
    params(("id_or_name" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = Executed), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn execute(
    State(st): St,
    Caller(org, scopes): Caller,
    Path(key): Path<String>,
    Body(body): Body<Execute>,
) -> Result<Json<Executed>, ApiError> {
    scopes.need(Scope::SandboxesExec)?;
    let row = service::sandbox(&st, &org, &key).await?;
    service::running(&row)?;
    // The kernel takes one argument of at most 128 KiB.
    if body.command.is_empty() || body.command.len() > 100 * 1024 || body.command.contains('\0') {
        return Err(ApiError::invalid(
            "command: give a non-empty shell command of at most 100 KiB, without NUL bytes",
        ));
    }
    let max = st.exec_timeout_max.as_secs_f64();
    let timeout = match body.timeout {
        None => st.exec_timeout_default,
        Some(t) if t.is_finite() && t > 0.0 && t <= max => Duration::from_secs_f64(t),
        Some(t) => {
            return Err(ApiError::invalid(format!(
                "timeout: {t} is not a number of seconds above 0 and at most {max}"
            )))
        }
    };
    let mut env: BTreeMap<String, String> = serde_json::from_str(&row.env).unwrap_or_default();
    if let Some(more) = &body.env {
        check_env(more)?;
        env.extend(more.clone());
    }
    if let Some(cwd) = &body.cwd {
        check_cwd(cwd)?;
    }
    let request = ExecRequest {
        command: body.command,
        cwd: body.cwd,
        env: env.into_iter().collect(),
        timeout: Some(timeout),
    };
    let r = service::execute(&st, &org, &row, request).await?;
    Ok(Json(Executed {
        exit_code: r.exit_code,
        stdout: r.stdout,
        stderr: r.stderr,
        result: r.result,
        timed_out: r.timed_out,
        truncated: r.truncated,
    }))
}

/// The destination to explain.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    /// An address, a name, or either with `:port` (`[v6]:port`).
    pub dest: Option<String>,
}

/// A time-bounded grant to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateGrant {
    /// A CIDR, an address, a name or a `*.` wildcard.
    pub target: String,
    /// How long it lasts: 1 second to 7 days.
    pub ttl_seconds: u64,
    /// Why, for the people who read the list later.
    pub reason: Option<String>,
}

/// A grant in force.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantView {
    /// `gr-...`.
    pub id: String,
    /// What it opens (canonical).
    pub target: String,
    /// Why, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was given.
    pub created_at: String,
    /// When it ends (RFC 3339, UTC).
    pub expires_at: String,
    /// When it ends, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// Seconds left, rounded up.
    pub seconds_left: u64,
    /// Whether it is in force: a grant takes effect in `allowlist` mode
    /// only, and one kept while the sandbox is blocked (or its tier
    /// restricted, or it open) comes back into force with that mode.
    pub in_force: bool,
}

impl GrantView {
    fn of(g: service::StoredGrant, in_force: bool) -> Self {
        let left_ms = g.expires_at_ms.saturating_sub(service::now_ms());
        GrantView {
            id: g.id,
            target: g.target.to_string(),
            reason: g.reason,
            created_at: g.created_at,
            expires_at: crate::store::rfc3339(g.expires_at_ms / 1000),
            expires_at_ms: g.expires_at_ms,
            seconds_left: left_ms.div_ceil(1000),
            in_force,
        }
    }
}

/// The grants of a sandbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantList {
    /// Those in force, in the order given.
    pub grants: Vec<GrantView>,
}

/// Gives a sandbox time-bounded access to a CIDR, an address or a name,
/// in force before the answer; it ends by itself.
#[utoipa::path(post, path = "/api/sandbox/{id_or_name}/network/grants", tag = "sandbox", request_body = CreateGrant,
    params(("id_or_name" = String, Path, description = "sandbox id or name")),
    responses((status = 201, body = GrantView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_grant(
    State(st): St,
    Caller(org, scopes): Caller,
    Path(key): Path<String>,
    Body(body): Body<CreateGrant>,
) -> Result<(StatusCode, Json<GrantView>), ApiError> {
    scopes.need(Scope::NetworkWrite)?;
    let new = service::NewGrant {
        target: body.target,
        ttl_seconds: body.ttl_seconds,
        reason: body.reason,
    };
    let grant = service::add_grant(&st, org, key, new).await?;
    Ok((StatusCode::CREATED, Json(GrantView::of(grant, true))))
}

/// The grants of a sandbox in force, with the time each has left.
#[utoipa::path(get, path = "/api/sandbox/{id_or_name}/network/grants", tag = "sandbox",
    params(("id_or_name" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = GrantList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_grants(
    State(st): St,
    Caller(org, scopes): Caller,
    Path(key): Path<String>,
) -> Result<Json<GrantList>, ApiError> {
    scopes.need(Scope::SandboxesRead)?;
    let row = service::sandbox(&st, &org, &key).await?;
    let policy = service::effective(&st, &org, &row)?;
    let grants = service::stored_grants(&row)?
        .into_iter()
        .map(|g| {
            let in_force = policy.grants.iter().any(|p| p.id == g.id);
            GrantView::of(g, in_force)
        })
        .collect();
    Ok(Json(GrantList { grants }))
}

/// Revokes a grant: its connections stop before the answer.
#[utoipa::path(delete, path = "/api/sandbox/{id_or_name}/network/grants/{grant_id}", tag = "sandbox",
    params(("id_or_name" = String, Path, description = "sandbox id or name"),
        ("grant_id" = String, Path, description = "grant id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_grant(
    State(st): St,
    Caller(org, scopes): Caller,
    Path((key, grant)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    scopes.need(Scope::NetworkWrite)?;
    service::revoke_grant(&st, org, key, grant).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----------------------------------------------------- access requests --

/// An access request: a target the sandbox was refused, for its owner.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessRequestView {
    /// `ar-...`.
    pub id: String,
    /// The sandbox's id.
    pub sandbox: String,
    /// The name (lowercase) or the address asked for.
    pub target: String,
    /// `name` (refused by the DNS service) or `address` (a connection
    /// denied by the kernel).
    pub kind: crate::store::TargetKind,
    /// The last denied connection's protocol (an address only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Its destination port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Attempts seen, the first included.
    pub attempts: u64,
    /// `pending`, `approved` or `denied`.
    pub state: crate::store::RequestState,
    /// The first attempt (RFC 3339).
    pub first_seen: String,
    /// The first attempt, milliseconds since the Unix epoch.
    pub first_seen_ms: u64,
    /// The last attempt, milliseconds since the Unix epoch.
    pub last_seen_ms: u64,
    /// When it was decided, milliseconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at_ms: Option<u64>,
    /// The grant that approved it for a time; an approval without one
    /// added the target to the allow list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
}

impl From<crate::store::AccessRequest> for AccessRequestView {
    fn from(r: crate::store::AccessRequest) -> Self {
        AccessRequestView {
            first_seen: crate::store::rfc3339(r.first_seen_ms / 1000),
            id: r.id,
            sandbox: r.sandbox_id,
            target: r.target,
            kind: r.kind,
            protocol: r.protocol,
            port: r.port,
            attempts: r.attempts,
            state: r.state,
            first_seen_ms: r.first_seen_ms,
            last_seen_ms: r.last_seen_ms,
            decided_at_ms: r.decided_at_ms,
            grant_id: r.grant_id,
        }
    }
}

/// The access requests of a sandbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessRequestList {
    /// Oldest first.
    pub requests: Vec<AccessRequestView>,
}

/// How to list access requests.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RequestsQuery {
    /// `true`: server-sent events, each request as it stands, then each
    /// change (opened, counted, decided) as it happens.
    pub follow: Option<bool>,
    /// Only requests in this state (`pending`, `approved`, `denied`).
    pub state: Option<String>,
}

/// The access requests of a sandbox (JSON), or, with `follow`, a stream of
/// them (server-sent events named `request`, each `data:` one request).
#[utoipa::path(get, path = "/api/sandbox/{id_or_name}/network/requests", tag = "sandbox",
    params(("id_or_name" = String, Path, description = "sandbox id or name"), RequestsQuery),
    responses((status = 200, body = AccessRequestList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn access_requests(
    State(st): St,
    Caller(org, scopes): Caller,
    Path(key): Path<String>,
    Params(q): Params<RequestsQuery>,
) -> Result<Response, ApiError> {
    scopes.need(Scope::SandboxesRead)?;
    let state: Option<crate::store::RequestState> = q
        .state
        .as_deref()
        .map(|s| {
            s.parse().map_err(|_| {
                ApiError::invalid(format!("state: {s:?} is none of pending, approved, denied"))
            })
        })
        .transpose()?;
    let row = service::sandbox(&st, &org, &key).await?;
    // Subscribed before the list is read: no change falls in between.
    let live = st.requests.subscribe();
    let wanted = move |r: &crate::store::AccessRequest| state.is_none_or(|s| r.state == s);
    let now: Vec<AccessRequestView> = st
        .store
        .access_requests(&row.id)
        .await?
        .into_iter()
        .filter(&wanted)
        .map(AccessRequestView::from)
        .collect();
    if q.follow != Some(true) {
        return Ok(Json(AccessRequestList { requests: now }).into_response());
    }
    let to_sse = |r: &AccessRequestView| {
        Event::default()
            .event("request")
            .data(serde_json::to_string(r).unwrap_or_default())
    };
    let first = now.iter().map(to_sse).collect();
    let sandbox = row.id.clone();
    Ok(followed(&st, first, live, move |r| {
        (r.sandbox_id == sandbox && wanted(&r)).then(|| to_sse(&AccessRequestView::from(r)))
    }))
}

/// An approval.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApproveRequest {
    /// A grant for this long (1 second to 7 days); left out: the target
    /// joins the allow list for good.
    pub ttl_seconds: Option<u64>,
}

/// Approves an access request: its target granted for `ttlSeconds`, or
/// added to the sandbox's allow list, in force before the answer (a DNS
/// query held for it is answered then).
#[utoipa::path(post, path = "/api/sandbox/{id_or_name}/network/requests/{request_id}/approve", tag = "sandbox",
    request_body = ApproveRequest,
    params(("id_or_name" = String, Path, description = "sandbox id or name"),
        ("request_id" = String, Path, description = "access request id")),
    responses((status = 200, body = AccessRequestView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn approve_request(
    State(st): St,
    Caller(org, scopes): Caller,
    Path((key, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<AccessRequestView>, ApiError> {
    scopes.need(Scope::NetworkWrite)?;
    // No body at all is an approval for good.
    let body: ApproveRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ApproveRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("the body: {e}"),
            ),
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body: {e}"),
            ),
        })?
    };
    let how = match body.ttl_seconds {
        Some(ttl) => crate::approvals::Approval::For(ttl),
        None => crate::approvals::Approval::Permanently,
    };
    let request = crate::approvals::approve(&st, org, key, id, how).await?;
    Ok(Json(request.into()))
}

/// Denies an access request: it stays closed, later attempts counted.
#[utoipa::path(post, path = "/api/sandbox/{id_or_name}/network/requests/{request_id}/deny", tag = "sandbox",
    params(("id_or_name" = String, Path, description = "sandbox id or name"),
        ("request_id" = String, Path, description = "access request id")),
    responses((status = 200, body = AccessRequestView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn deny_request(
    State(st): St,
    Caller(org, scopes): Caller,
    Path((key, id)): Path<(String, String)>,
) -> Result<Json<AccessRequestView>, ApiError> {
    scopes.need(Scope::NetworkWrite)?;
    let request = crate::approvals::deny(&st, org, key, id).await?;
    Ok(Json(request.into()))
}

/// Whether a sandbox may reach a destination, and why.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The destination, as understood.
    pub destination: String,
    /// Whether a connection would pass.
    pub allowed: bool,
    /// The reason code.
    pub reason: String,
    /// The rule, in words.
    pub rule: String,
    /// The sandbox's effective mode.
    pub mode: String,
}

/// Explains what the sandbox's policy does with a destination, without
/// sending anything.
#[utoipa::path(get, path = "/api/sandbox/{id_or_name}/network/explain", tag = "sandbox",
    params(("id_or_name" = String, Path, description = "sandbox id or name"), ExplainQuery),
    responses((status = 200, body = Explanation), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn explain(
    State(st): St,
    Caller(org, scopes): Caller,
    Path(key): Path<String>,
    Params(q): Params<ExplainQuery>,
) -> Result<Json<Explanation>, ApiError> {
    scopes.need(Scope::SandboxesRead)?;
    let row = service::sandbox(&st, &org, &key).await?;
    let dest = q.dest.ok_or_else(|| {
        ApiError::invalid("give the destination as ?dest=<address or name>[:port]")
    })?;
    let destination: Destination = dest.parse()?;
    let (verdict, mode) = service::explain(&st, &org, &row, &destination).await?;
    Ok(Json(Explanation {
        destination: destination.to_string(),
        allowed: verdict.allowed,
        reason: verdict.reason.code(),
        rule: verdict.rule,
        mode,
    }))
}

/// What to probe; without targets, the server's configured ones.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkTest {
    /// `host:port` or `[IPv6]:port`, at most 32.
    pub targets: Option<Vec<String>>,
}

/// One probed destination: what the policy says and what happened.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestRow {
    /// The destination.
    pub target: String,
    /// Whether `explain` allows it.
    pub expected: bool,
    /// `explain`'s reason code.
    pub reason: String,
    /// Whether a connection got through from the sandbox's namespace.
    pub observed: bool,
    /// What the probe saw.
    pub detail: String,
    /// The addresses the destination resolved to.
    pub addresses: Vec<String>,
    /// `expected == observed`.
    pub ok: bool,
}

/// The result of a network test.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkTestResult {
    /// The sandbox.
    pub sandbox: String,
    /// Its effective mode.
    pub mode: String,
    /// One row per target.
    pub results: Vec<TestRow>,
    /// Whether every row is ok.
    pub ok: bool,
}

/// A sandbox's use of its budgets.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    /// Its transfer quota this period; `null`: it has none.
    pub transfer: Option<TransferView>,
}

/// A transfer quota as counted now.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferView {
    /// Bytes both ways a period (IP packets, headers included).
    pub quota_bytes: u64,
    /// Bytes counted this period, at most `quotaBytes`.
    pub used_bytes: u64,
    /// Whether the quota is spent: nothing passes until the period ends.
    pub spent: bool,
    /// When the period began, milliseconds since the epoch.
    pub period_start_ms: u64,
    /// When it ends (and the count starts again from nothing).
    pub period_end_ms: u64,
    /// `periodStartMs` in RFC 3339.
    pub period_start: String,
    /// `periodEndMs` in RFC 3339.
    pub period_end: String,
}

/// What the sandbox has used of its budgets: its transfer quota this
/// period, as the kernel counts it at the call.
#[utoipa::path(get, path = "/api/sandbox/{id_or_name}/network/usage", tag = "sandbox",
    params(("id_or_name" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = UsageView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn network_usage(
    State(st): St,
    Caller(org, scopes): Caller,
    Path(key): Path<String>,
) -> Result<Json<UsageView>, ApiError> {
    scopes.need(Scope::SandboxesRead)?;
    let row = service::sandbox(&st, &org, &key).await?;
    let transfer = service::transfer_usage(&st, &row)
        .await?
        .map(|u| TransferView {
            quota_bytes: u.quota_bytes,
            used_bytes: u.used_bytes,
            spent: u.spent,
            period_start_ms: u.period_start_ms,
            period_end_ms: u.period_end_ms,
            period_start: crate::store::rfc3339(u.period_start_ms / 1000),
            period_end: crate::store::rfc3339(u.period_end_ms / 1000),
        });
    Ok(Json(UsageView { transfer }))
}

/// Probes destinations (TCP) from inside the sandbox's network namespace,
/// without any tool in the sandbox, and sets each beside what the policy
/// expects. A name is resolved by the sandbox's own DNS service.
#[utoipa::path(post, path = "/api/sandbox/{id_or_name}/network/test", tag = "sandbox", request_body = NetworkTest,
    params(("id_or_name" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = NetworkTestResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn network_test(
    State(st): St,
    Caller(org, scopes): Caller,
    Path(key): Path<String>,
    raw: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<NetworkTestResult>, ApiError> {
    scopes.need(Scope::SandboxesExec)?;
    // The body is optional: none asks for the configured targets.
    let body: NetworkTest = optional_body(raw)?;
    let row = service::sandbox(&st, &org, &key).await?;
    service::running(&row)?;
    let asked = body.targets.unwrap_or_else(|| st.probe_targets.clone());
    if asked.is_empty() || asked.len() > 32 {
        return Err(ApiError::invalid("targets: give 1 to 32 destinations"));
    }
    let targets = asked
        .iter()
        .map(|t| t.parse::<ProbeTarget>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::invalid(format!("targets: {e}")))?;
    let (rows, mode) = service::network_test(&st, &org, &row, targets).await?;
    let results: Vec<TestRow> = rows
        .into_iter()
        .map(|(e, o)| TestRow {
            target: o.target.to_string(),
            expected: e.allowed,
            reason: e.reason.code(),
            observed: o.reachable,
            detail: o.detail,
            addresses: o.addresses.iter().map(ToString::to_string).collect(),
            ok: e.allowed == o.reachable,
        })
        .collect();
    Ok(Json(NetworkTestResult {
        sandbox: row.id,
        mode,
        ok: results.iter().all(|r| r.ok),
        results,
    }))
}

/// Whether to keep the stream open.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// `false`: send the recent events and close; default `true`: then
    /// keep sending new ones.
    pub follow: Option<bool>,
}

/// The sandbox's network events as server-sent events: first its recent
/// ones (up to 256), then, with `follow`, each new one as it happens. Each
/// `data:` line is one JSON event: `timeMs`, `sandbox`, `kind`
/// (`connection` or `dns`), `protocol`, `destination`, `port`, `domain`,
/// `reason`.
#[utoipa::path(get, path = "/api/sandbox/{id_or_name}/network/events", tag = "sandbox",
    params(("id_or_name" = String, Path, description = "sandbox id or name"), EventsQuery),
    responses((status = 200, description = "text/event-stream of network events", content_type = "text/event-stream"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn network_events(
    State(st): St,
    Caller(org, scopes): Caller,
    Path(key): Path<String>,
    Params(q): Params<EventsQuery>,
) -> Result<Response, ApiError> {
    scopes.need(Scope::SandboxesRead)?;
    let row = service::sandbox(&st, &org, &key).await?;
    let (recent, live) = service::subscribe(&st, &row).await?;
    let to_sse = |e: &sandgate_contract::NetworkEvent| {
        Event::default()
            .event(e.kind.as_str())
            .data(serde_json::to_string(e).unwrap_or_default())
    };
    let first: Vec<Event> = recent.iter().map(to_sse).collect();
    if q.follow == Some(false) {
        let first = futures_util::stream::iter(first.into_iter().map(Ok::<_, Infallible>));
        return Ok(Sse::new(first).into_response());
    }
    Ok(followed(&st, first, live, move |e| Some(to_sse(&e))))
}

/// Which records of a flow log, and whether to follow it.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FlowsQuery {
    /// Milliseconds since the Unix epoch: only flows still open, or ended
    /// at or after it (default: every record kept).
    pub since: Option<u64>,
    /// At most this many records, the latest (default 100, from 1 to
    /// 1000).
    pub limit: Option<u32>,
    /// `true`: server-sent events, the same records first (each an event
    /// named `flow`), then each record as it is written; default `false`:
    /// JSON.
    pub follow: Option<bool>,
}

/// The records a flow log's listing holds by default, and at most.
const FLOWS_LIMIT: (u32, u32) = (100, 1000);

/// A sandbox's flow log.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowLogBody {
    /// The records, in the order of their ids: `id`, `startMs`, `endMs`
    /// (`null` while open), `protocol`, `source`, `sourcePort`,
    /// `destination`, `port`, `name`, `nameSource` (`dns`, `sni`,
    /// `host`), `bytesOut`, `bytesIn`, `verdict` (`allowed`, `denied`),
    /// `reason`, `rule`, `via` (`kernel`, `gateway`).
    #[schema(value_type = Vec<Object>)]
    pub flows: Vec<sandgate_contract::Flow>,
    /// Records lost since the sandbox was made: pushed out of its bounded
    /// log, or refusals its rate of events held back.
    pub dropped: u64,
}

/// The sandbox's flow log: each connection, allowed or denied, relayed
/// by the kernel or by the gateway (REQUIREMENTS.md, "The flow log"). JSON,
/// or with `follow` server-sent events named `flow` (a flow is sent when
/// it opens and again, with the same id, when it ends) and `lagged`
/// (`{"lost": n}`) for a follower that fell behind.
#[utoipa::path(get, path = "/api/sandbox/{id_or_name}/network/flows", tag = "sandbox",
    params(("id_or_name" = String, Path, description = "sandbox id or name"), FlowsQuery),
    responses((status = 200, body = FlowLogBody, description = "the flow log (JSON), or with `follow` a text/event-stream of records"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn network_flows(
    State(st): St,
    Caller(org, scopes): Caller,
    Path(key): Path<String>,
    Params(q): Params<FlowsQuery>,
) -> Result<Response, ApiError> {
    scopes.need(Scope::SandboxesRead)?;
    let (default, most) = FLOWS_LIMIT;
    let limit = q.limit.unwrap_or(default);
    if !(1..=most).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit: {limit} is not from 1 to {most}"
        )));
    }
    let row = service::sandbox(&st, &org, &key).await?;
    let (log, live) = service::flows(&st, &row).await?;
    let since = q.since.unwrap_or(0);
    let mut flows: Vec<_> = log
        .flows
        .into_iter()
        .filter(|f| f.end_ms.is_none_or(|end| end >= since))
        .collect();
    let skip = flows.len().saturating_sub(limit as usize);
    flows.drain(..skip);
    if q.follow != Some(true) {
        let body = FlowLogBody {
            flows,
            dropped: log.dropped,
        };
        return Ok(Json(body).into_response());
    }
    let to_sse = |f: &sandgate_contract::Flow| {
        Event::default()
            .event("flow")
            .data(serde_json::to_string(f).unwrap_or_default())
    };
    let first = flows.iter().map(to_sse).collect();
    Ok(followed(&st, first, live, move |f| Some(to_sse(&f))))
}

/// Server-sent events: `first`, then each item of `live` that `to_sse`
/// makes an event of, until the channel closes (the sandbox is deleted),
/// the client goes away or the server stops. A subscriber that fell
/// behind is told how many items it lost (`event: lagged`).
fn followed<T: Clone + Send + 'static>(
    st: &AppState,
    first: Vec<Event>,
    live: tokio::sync::broadcast::Receiver<T>,
    to_sse: impl Fn(T) -> Option<Event> + Clone + Send + Sync + 'static,
) -> Response {
    use futures_util::stream::{self, StreamExt};
    use tokio::sync::broadcast::error::RecvError;
    let first = stream::iter(first.into_iter().map(Ok::<_, Infallible>));
    let next = stream::unfold(live, move |mut live| {
        let to_sse = to_sse.clone();
        async move {
            loop {
                match live.recv().await {
                    Ok(item) => {
                        if let Some(e) = to_sse(item) {
                            return Some((Ok(e), live));
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        let lost = Event::default()
                            .event("lagged")
                            .data(format!("{{\"lost\":{n}}}"));
                        return Some((Ok(lost), live));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    let mut stopping = st.stopping.subscribe();
    let stop = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    Sse::new(first.chain(next).take_until(stop))
        .keep_alive(KeepAlive::default())
        .into_response()
}

// -------------------------------------------------------------- system --

/// Liveness: the store answers and the dataplane's ruleset is in place.
#[utoipa::path(get, path = "/health", tag = "system",
    responses((status = 200, description = "healthy"), (status = 503, body = ErrorBody)))]
pub async fn health(State(st): St) -> Response {
    match service::healthy(&st).await {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))).into_response(),
        Err(what) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", what).into_response()
        }
    }
}

// ------------------------------------------------------------- secrets --

/// Stores a secret of the organization: its value sealed with the
/// operator's key, never shown again.
#[utoipa::path(post, path = "/api/secrets", tag = "secrets", request_body = crate::secrets::NewSecret,
    responses((status = 201, body = crate::secrets::SecretView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_secret(
    State(st): St,
    Caller(org, scopes): Caller,
    Body(body): Body<crate::secrets::NewSecret>,
) -> Result<(StatusCode, Json<crate::secrets::SecretView>), ApiError> {
    scopes.need(Scope::SecretsWrite)?;
    let view = service::create_secret(&st, &org, body).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// The organization's secrets: names, hosts and dates, never values.
#[utoipa::path(get, path = "/api/secrets", tag = "secrets",
    responses((status = 200, body = [crate::secrets::SecretView]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_secrets(
    State(st): St,
    Caller(org, scopes): Caller,
) -> Result<Json<Vec<crate::secrets::SecretView>>, ApiError> {
    scopes.need(Scope::SandboxesRead)?;
    Ok(Json(service::secrets(&st, &org).await?))
}

/// Removes a secret: refused (409 `secret_in_use`) while a sandbox holds
/// it.
#[utoipa::path(delete, path = "/api/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "secret name")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_secret(
    State(st): St,
    Caller(org, scopes): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    scopes.need(Scope::SecretsWrite)?;
    service::delete_secret(&st, &org, name).await?;
    Ok(StatusCode::NO_CONTENT)
}
