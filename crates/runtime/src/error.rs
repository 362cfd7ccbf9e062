//! The runtime's errors: what its caller asked wrongly (a bad name, a
//! snapshot that does not exist, a sandbox not running, a working
//! directory the sandbox lacks, a hostile archive) kept apart from what
//! failed on the host (the OCI runtime, a mount, a program, a record, any
//! other I/O). A caller decides by variant, never by the words.
//!
//! Inside the crate, helpers that work in `io::Result` carry a
//! [`RuntimeError`] in an `io::Error` (`From<RuntimeError>`), and
//! `From<io::Error>` takes it back out whole.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// An error of the runtime.
#[derive(Debug)]
pub enum RuntimeError {
    /// A snapshot's or a sandbox's name that cannot be one.
    InvalidName {
        /// `snapshot` or `sandbox`.
        kind: &'static str,
        /// The name given.
        name: String,
    },
    /// No snapshot of that name.
    NoSnapshot(String),
    /// A sandbox of that id exists already.
    Exists(String),
    /// Refused as things stand: a sandbox not running, a snapshot in use.
    Busy(String),
    /// The command's working directory does not exist in the sandbox.
    NoSuchCwd,
    /// A snapshot archive refused (a path out of the root, a device, ...).
    Archive(String),
    /// The OCI runtime failed `op` (`run`, `delete`, `ps`) on sandbox `id`.
    Oci {
        /// The OCI runtime program.
        program: PathBuf,
        /// What it was asked to do.
        op: &'static str,
        /// The sandbox.
        id: String,
        /// What it said.
        said: String,
    },
    /// The OCI runtime could not start an exec's command.
    NotStarted(String),
    /// A program the runtime runs (busybox, mkfs.ext4, mount) failed.
    Program {
        /// What it was doing.
        what: String,
        /// What it said.
        said: String,
    },
    /// A mount or an unmount.
    Mount {
        /// What was being mounted or unmounted.
        what: String,
        /// The kernel's answer.
        cause: nix::Error,
    },
    /// A record (a sandbox's, a pid file, the OCI runtime's state) that
    /// cannot be read or written.
    Record {
        /// Which record.
        what: String,
        /// Why.
        cause: String,
    },
    /// The host cannot run sandboxes of a runtime class (its program is
    /// missing or fails): the host's condition, not the caller's fault.
    ClassUnavailable {
        /// The class.
        class: sandgate_contract::RuntimeClass,
        /// Why, for the operator's log.
        why: String,
    },
    /// Any other I/O error of the host.
    Io(io::Error),
}

impl RuntimeError {
    /// Whether the caller asked for something wrong (its fault), rather
    /// than the host failing.
    pub fn is_callers_fault(&self) -> bool {
        matches!(
            self,
            RuntimeError::InvalidName { .. }
                | RuntimeError::NoSnapshot(_)
                | RuntimeError::Exists(_)
                | RuntimeError::Busy(_)
                | RuntimeError::NoSuchCwd
                | RuntimeError::Archive(_)
        )
    }

    /// The nearest I/O error kind (for callers that speak `io::Error`).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            RuntimeError::InvalidName { .. } | RuntimeError::NoSuchCwd => {
                io::ErrorKind::InvalidInput
            }
            RuntimeError::NoSnapshot(_) => io::ErrorKind::NotFound,
            RuntimeError::Exists(_) => io::ErrorKind::AlreadyExists,
            RuntimeError::Busy(_) => io::ErrorKind::ResourceBusy,
            RuntimeError::Archive(_) | RuntimeError::Record { .. } => io::ErrorKind::InvalidData,
            RuntimeError::Io(e) => e.kind(),
            RuntimeError::Oci { .. }
            | RuntimeError::ClassUnavailable { .. }
            | RuntimeError::NotStarted(_)
            | RuntimeError::Program { .. }
            | RuntimeError::Mount { .. } => io::ErrorKind::Other,
        }
    }

    /// A record that cannot be read or written.
    pub(crate) fn record(what: impl Into<String>, cause: impl fmt::Display) -> RuntimeError {
        RuntimeError::Record {
            what: what.into(),
            cause: cause.to_string(),
        }
    }
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::InvalidName { kind, name } => write!(
                f,
                "{kind} name {name:?}: use letters, digits, '-', '_' and '.', at most 64"
            ),
            RuntimeError::NoSnapshot(name) => write!(f, "no snapshot {name}"),
            RuntimeError::Exists(id) => write!(f, "sandbox {id} exists"),
            RuntimeError::Busy(what) | RuntimeError::Archive(what) => f.write_str(what),
            RuntimeError::NoSuchCwd => f.write_str("cwd: no such directory in the sandbox"),
            RuntimeError::Oci {
                program,
                op,
                id,
                said,
            } => write!(f, "{} {op} {id}: {said}", program.display()),
            RuntimeError::NotStarted(said) => {
                write!(f, "the OCI runtime could not start the command: {said}")
            }
            RuntimeError::Program { what, said } => write!(f, "{what}: {said}"),
            RuntimeError::ClassUnavailable { class, why } => {
                write!(f, "this host cannot run runtime class {class}: {why}")
            }
            RuntimeError::Mount { what, cause } => write!(f, "{what}: {cause}"),
            RuntimeError::Record { what, cause } => write!(f, "{what}: {cause}"),
            RuntimeError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RuntimeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RuntimeError::Io(e) => Some(e),
            RuntimeError::Mount { cause, .. } => Some(cause),
            _ => None,
        }
    }
}

impl From<io::Error> for RuntimeError {
    fn from(e: io::Error) -> RuntimeError {
        // An OS error has no payload: kept as it is (its errno with it).
        if e.get_ref().is_none() {
            return RuntimeError::Io(e);
        }
        let kind = e.kind();
        match e.into_inner().map(|inner| inner.downcast::<RuntimeError>()) {
            Some(Ok(ours)) => *ours,
            Some(Err(other)) => RuntimeError::Io(io::Error::new(kind, other)),
            None => RuntimeError::Io(io::Error::from(kind)),
        }
    }
}

impl From<RuntimeError> for io::Error {
    fn from(e: RuntimeError) -> io::Error {
        match e {
            RuntimeError::Io(e) => e,
            e => io::Error::new(e.kind(), e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_error_crosses_io_and_comes_back_whole() {
        let e = io::Error::from(RuntimeError::NoSuchCwd);
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(matches!(RuntimeError::from(e), RuntimeError::NoSuchCwd));
        let plain = RuntimeError::from(io::Error::from_raw_os_error(nix::libc::ENOSPC));
        assert_eq!(plain.kind(), io::ErrorKind::StorageFull);
        assert!(!plain.is_callers_fault());
        assert_eq!(
            io::Error::from(plain).raw_os_error(),
            Some(nix::libc::ENOSPC)
        );
    }
}
