//! API errors: `{"error": {"code", "message", ...}}` with the status that
//! fits, for everything a client can cause; internal failures are 500
//! with `internal` and the cause.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sandgate_contract::RunnerError;
use sandgate_policy::PolicyError;
use serde_json::{json, Value};
use std::io;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// A sentence for a person: what is wrong and the fix.
    pub message: String,
    /// More, merged into the error object (`field`, `problems`).
    pub details: Option<Value>,
    /// Seconds after which the same request may succeed (`Retry-After`):
    /// set on answers to requests that did nothing (429, and the 503s of
    /// a full or unanswering host), so that a client may send them again
    /// as they were.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, a code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// The same error, telling the client to retry after `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// 500 `internal`. The cause goes to the server's log under an id;
    /// the answer carries the id, not the cause (which can name host paths
    /// and programs' messages).
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = format!(
            "{:x}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        tracing::error!(error_id = %id, "internal error: {cause}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error {id}; the server's log has the cause"),
        )
    }

    /// 507 `storage_full`: the server's disk is full (or a quota is
    /// reached). A create is undone; an update's old policy is put back or
    /// the sandbox cut off (never widened); a delete finishes when retried.
    /// The cause goes to the log.
    pub fn storage_full(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!("disk full: {cause}");
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "storage_full",
            "the server's disk is full, so the request could not be completed; free space in the server's data directory and retry (a sandbox being created is not made; one being updated keeps its previous policy or, if that cannot be recorded, is cut off from the network until its next update; a delete finishes when retried)",
        )
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> ApiError {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut details = json!({});
        if let Some(field) = e.field {
            details["field"] = json!(field);
        }
        if !e.problems.is_empty() {
            details["problems"] = json!(e.problems);
        }
        ApiError {
            status,
            code: e.code.as_str(),
            message: e.message,
            details: Some(details),
            retry_after: None,
        }
    }
}

/// `Retry-After` of a 503 `capacity_exhausted`: a slot frees when a
/// sandbox is deleted, which a client cannot know.
pub const CAPACITY_RETRY_SECONDS: u64 = 10;

/// `Retry-After` of a 503 `runner_unavailable`: about two of a runner's
/// heartbeats.
pub const UNAVAILABLE_RETRY_SECONDS: u64 = 5;
/// `Retry-After` of a `runner_restoring` answer: the API restores a
/// runner that restarted as soon as it sees it.
pub const RESTORING_RETRY_SECONDS: u64 = 2;

/// `Retry-After` of a 429 `too_many_requests`: an exec or a network test
/// usually ends within a second.
pub const BUSY_RETRY_SECONDS: u64 = 1;

/// A runner's error as an answer: a caller's fault with its status, code
/// and message; a host's fault (500, 503, 507) with its code and a
/// message of ours, its cause in the log only.
impl From<RunnerError> for ApiError {
    fn from(e: RunnerError) -> ApiError {
        match e {
            RunnerError::StorageFull(cause) => ApiError::storage_full(cause),
            RunnerError::Host(cause) => ApiError::internal(cause),
            // The host's faults with a code of their own: the cause (the
            // host's subnets, a runner's address) goes to the log.
            RunnerError::Capacity(cause) => {
                tracing::warn!("no room for a sandbox: {cause}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "capacity_exhausted",
                    "the host has no free network slot for another sandbox; delete a sandbox or retry later",
                )
                .retry_after(CAPACITY_RETRY_SECONDS)
            }
            RunnerError::Unavailable(cause) => {
                tracing::error!("a runner does not answer: {cause}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "runner_unavailable",
                    "the host of this sandbox does not answer; retry later",
                )
                .retry_after(UNAVAILABLE_RETRY_SECONDS)
            }
            RunnerError::Restoring(cause) => {
                tracing::warn!("the runner is being restored: {cause}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "runner_restoring",
                    "the host of this sandbox has restarted and is being given its sandboxes back; retry in a few seconds",
                )
                .retry_after(RESTORING_RETRY_SECONDS)
            }
            RunnerError::Superseded(cause) => {
                tracing::error!("the runner refused a change of this replica: {cause}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "writer_superseded",
                    "this API replica lost its hold on the store amid the change, which the runner refused whole; retry",
                )
                .retry_after(BUSY_RETRY_SECONDS)
            }
            e => {
                let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
                let code = e.code();
                ApiError::new(status, code, e.message())
            }
        }
    }
}

/// The server's own I/O (its data directory, random ids) is judged as a
/// runner's is: by its kind.
impl From<io::Error> for ApiError {
    fn from(e: io::Error) -> ApiError {
        RunnerError::from(e).into()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        let full = match &e {
            // SQLITE_FULL; PostgreSQL's disk_full.
            sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("13" | "53100")),
            sqlx::Error::Io(io) => matches!(
                io.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        };
        if full {
            return ApiError::storage_full(format!("store: {e}"));
        }
        // lock_not_available: the write lock waited for too long (another
        // replica holds it and hangs).
        if matches!(&e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03")) {
            tracing::error!("store: {e}");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_busy",
                "another API replica holds the store's write lock for too long; retry later",
            )
            .retry_after(UNAVAILABLE_RETRY_SECONDS);
        }
        ApiError::internal(format!("store: {e}"))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let (status, code) = match &r {
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            JsonRejection::JsonDataError(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request")
            }
            _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            _ => (StatusCode::BAD_REQUEST, "invalid_request"),
        };
        ApiError::new(status, code, r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(Value::Object(more)) = self.details {
            for (k, v) in more {
                error[k] = v;
            }
        }
        let mut response = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

/// Why a server could not start: each a fault of the host or of its
/// operator, never of a client.
#[derive(Debug)]
pub enum StartError {
    /// The data directory is another server's, or cannot be locked.
    Locked(io::Error),
    /// The store cannot be opened, migrated or read.
    Store(sqlx::Error),
    /// The runner (dataplane, DNS service, runtime) cannot start.
    Runner(io::Error),
    /// The runner cannot take back the stored sandboxes.
    Restore(RunnerError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Locked(e) => e.fmt(f),
            StartError::Store(e) => write!(f, "the store: {e}"),
            StartError::Runner(e) => write!(f, "starting the runner: {e}"),
            StartError::Restore(e) => write!(f, "restoring the sandboxes: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Locked(e) | StartError::Runner(e) => Some(e),
            StartError::Store(e) => Some(e),
            StartError::Restore(e) => Some(e),
        }
    }
}

impl From<sqlx::Error> for StartError {
    fn from(e: sqlx::Error) -> StartError {
        StartError::Store(e)
    }
}

/// A restore in the middle of serving (a change cut short, see
/// [`crate::writes`]) that fails fails the request that found it.
impl From<StartError> for ApiError {
    fn from(e: StartError) -> ApiError {
        match e {
            StartError::Store(e) => e.into(),
            StartError::Restore(e) => e.into(),
            e => ApiError::internal(e),
        }
    }
}

impl From<StartError> for io::Error {
    fn from(e: StartError) -> io::Error {
        match e {
            // The lock's own message names the other server.
            StartError::Locked(e) => e,
            e => io::Error::other(e),
        }
    }
}
