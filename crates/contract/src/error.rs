//! What went wrong in a runner, typed: each error carries the HTTP status
//! and the stable code the API answers with, and the caller's faults (a
//! 4xx: a sandbox that is not there, a working directory that does not
//! exist) are kept apart from the host's (a 5xx: a missing `runc`, a full
//! disk), whose causes go to the log and never to the caller.

use std::io;

/// An error of a runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerError {
    /// The runner has no such sandbox: 404 `not_found`.
    NotFound(String),
    /// The sandbox exists already, or is busy: 409 `conflict`.
    Conflict(String),
    /// A value of the request the runner refused: 400 with `code`
    /// (`invalid_request`, `invalid_cwd`).
    Invalid {
        /// The stable code.
        code: &'static str,
        /// What is wrong, for a person.
        message: String,
    },
    /// Data the runner could not take (a malformed archive): 422
    /// `invalid_request`.
    Unprocessable(String),
    /// No room on the host (no free slot): 503 `capacity_exhausted`.
    Capacity(String),
    /// The host cannot run the runtime class asked for (gVisor is not
    /// installed there, or fails): 503 `runtime_class_unavailable`.
    ClassUnavailable(String),
    /// The host's disk is full: 507 `storage_full`.
    StorageFull(String),
    /// An image registry the operator configured could not be reached,
    /// refused the operator's credentials, or sent what its own digests
    /// disprove: 502 `registry_failed`, said to the caller (it names the
    /// registry, nothing of the host).
    Registry(String),
    /// The runner cannot be reached (another host that does not answer):
    /// 503 `runner_unavailable`.
    Unavailable(String),
    /// The runner has started again and serves no sandbox until its API
    /// has told it which to keep ([`crate::Runner::restore`]): 503
    /// `runner_restoring`, for the few seconds that takes.
    Restoring(String),
    /// The change came from an API replica that no longer holds the
    /// write lock (another has taken it since: this one lost its database
    /// session): refused whole, 503 `writer_superseded`. The replica's
    /// fault, never its caller's.
    Superseded(String),
    /// Anything else is the host's fault: 500 `internal`. The text is
    /// the cause, for the log only (it can name host paths and programs'
    /// messages).
    Host(String),
}

impl RunnerError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            RunnerError::NotFound(_) => 404,
            RunnerError::Conflict(_) => 409,
            RunnerError::Invalid { .. } => 400,
            RunnerError::Unprocessable(_) => 422,
            RunnerError::Capacity(_)
            | RunnerError::ClassUnavailable(_)
            | RunnerError::Unavailable(_)
            | RunnerError::Restoring(_)
            | RunnerError::Superseded(_) => 503,
            RunnerError::StorageFull(_) => 507,
            RunnerError::Registry(_) => 502,
            RunnerError::Host(_) => 500,
        }
    }

    /// The stable code the API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            RunnerError::NotFound(_) => "not_found",
            RunnerError::Conflict(_) => "conflict",
            RunnerError::Invalid { code, .. } => code,
            RunnerError::Unprocessable(_) => "invalid_request",
            RunnerError::Capacity(_) => "capacity_exhausted",
            RunnerError::ClassUnavailable(_) => "runtime_class_unavailable",
            RunnerError::StorageFull(_) => "storage_full",
            RunnerError::Registry(_) => "registry_failed",
            RunnerError::Unavailable(_) => "runner_unavailable",
            RunnerError::Restoring(_) => "runner_restoring",
            RunnerError::Superseded(_) => "writer_superseded",
            RunnerError::Host(_) => "internal",
        }
    }

    /// The text: for a person on a caller's fault, for the log on the
    /// host's.
    pub fn message(&self) -> &str {
        match self {
            RunnerError::NotFound(m)
            | RunnerError::Conflict(m)
            | RunnerError::Invalid { message: m, .. }
            | RunnerError::Unprocessable(m)
            | RunnerError::Capacity(m)
            | RunnerError::ClassUnavailable(m)
            | RunnerError::StorageFull(m)
            | RunnerError::Registry(m)
            | RunnerError::Unavailable(m)
            | RunnerError::Restoring(m)
            | RunnerError::Superseded(m)
            | RunnerError::Host(m) => m,
        }
    }

    /// Whether the host is at fault (the answer is a 5xx).
    pub fn is_host_fault(&self) -> bool {
        self.status() >= 500
    }

    /// Whether the runner is out of reach for now (away, or restarting):
    /// it keeps what it was last told (or, restarting, serves nothing)
    /// until its API reaches it again and restores it.
    pub fn is_out_of_reach(&self) -> bool {
        matches!(
            self,
            RunnerError::Unavailable(_) | RunnerError::Restoring(_)
        )
    }

    /// A fault of the host, with its cause.
    pub fn host(cause: impl std::fmt::Display) -> RunnerError {
        RunnerError::Host(cause.to_string())
    }
}

impl std::fmt::Display for RunnerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message(), self.code())
    }
}

impl std::error::Error for RunnerError {}

/// An error as it crosses between hosts: its status, code and message.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    status: u16,
    code: String,
    message: String,
}

impl serde::Serialize for RunnerError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            status: self.status(),
            code: self.code().to_string(),
            message: self.message().to_string(),
        }
        .serialize(s)
    }
}

/// Read back by its status (and, for a 400, its code); a status this
/// version does not know is the host's fault.
impl<'de> serde::Deserialize<'de> for RunnerError {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Wire {
            status,
            code,
            message,
        } = Wire::deserialize(d)?;
        Ok(match status {
            404 => RunnerError::NotFound(message),
            409 => RunnerError::Conflict(message),
            400 => RunnerError::Invalid {
                code: INVALID_CODES
                    .into_iter()
                    .find(|c| *c == code)
                    .unwrap_or("invalid_request"),
                message,
            },
            422 => RunnerError::Unprocessable(message),
            503 if code == "runner_unavailable" => RunnerError::Unavailable(message),
            503 if code == "runner_restoring" => RunnerError::Restoring(message),
            503 if code == "writer_superseded" => RunnerError::Superseded(message),
            503 if code == "runtime_class_unavailable" => RunnerError::ClassUnavailable(message),
            503 => RunnerError::Capacity(message),
            507 => RunnerError::StorageFull(message),
            502 if code == "registry_failed" => RunnerError::Registry(message),
            _ => RunnerError::Host(message),
        })
    }
}

/// The codes of [`RunnerError::Invalid`].
pub const INVALID_CODES: [&str; 4] = [
    "invalid_request",
    "invalid_cwd",
    "invalid_image",
    "registry_not_allowed",
];

/// An I/O error that nobody refused on purpose is the host's fault,
/// whatever its kind (a `NotFound` from spawning a missing program is the
/// host's, not the caller's); a full disk is said so. A runner that
/// refuses something on purpose says so with its own variant.
impl From<io::Error> for RunnerError {
    fn from(e: io::Error) -> RunnerError {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                RunnerError::StorageFull(e.to_string())
            }
            _ => RunnerError::Host(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_nobody_refused_is_the_hosts_fault() {
        let of = |kind| RunnerError::from(io::Error::new(kind, "x"));
        // A missing program, a permission the host lacks, a record it
        // cannot read: the host's, never a 404 or a 400.
        for kind in [
            io::ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied,
            io::ErrorKind::InvalidData,
            io::ErrorKind::InvalidInput,
            io::ErrorKind::Other,
        ] {
            let e = of(kind);
            assert!(e.is_host_fault(), "{kind:?}");
            assert_eq!(e.code(), "internal");
        }
        assert_eq!(of(io::ErrorKind::StorageFull).code(), "storage_full");
        assert_eq!(of(io::ErrorKind::QuotaExceeded).status(), 507);
    }

    #[test]
    fn every_error_crosses_between_hosts_as_it_was() {
        for e in [
            RunnerError::NotFound("a".into()),
            RunnerError::Conflict("b".into()),
            RunnerError::Superseded("s".into()),
            RunnerError::Invalid {
                code: "invalid_cwd",
                message: "c".into(),
            },
            RunnerError::Invalid {
                code: "invalid_request",
                message: "d".into(),
            },
            RunnerError::Unprocessable("e".into()),
            RunnerError::Capacity("f".into()),
            RunnerError::StorageFull("g".into()),
            RunnerError::Unavailable("i".into()),
            RunnerError::Host("h".into()),
        ] {
            let text = serde_json::to_string(&e).unwrap();
            assert_eq!(
                serde_json::from_str::<RunnerError>(&text).unwrap(),
                e,
                "{text}"
            );
        }
        // A status this version does not know: the host's fault.
        let odd: RunnerError =
            serde_json::from_str(r#"{"status":418,"code":"teapot","message":"x"}"#).unwrap();
        assert!(odd.is_host_fault());
    }
}
