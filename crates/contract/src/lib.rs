//! The contract between sandgate's API and a runner.
//!
//! The API decides (who may do what, which policy a sandbox gets, what is
//! stored); a runner does (slots, the kernel's rules, the DNS service, the
//! OCI runtime of one host). Everything that passes between the two is
//! here, and nothing else does:
//!
//! - [`Runner`]: the operations the API drives, one trait with an
//!   implementation per way of reaching a runner (in the API's process;
//!   across hosts) and a double for the API's own tests;
//! - the requests and answers ([`SandboxSpec`], [`Expected`],
//!   [`RestoreReport`], [`ExecRequest`], [`ExecResult`], [`ProbeTarget`],
//!   [`Observed`], [`NetworkEvent`], [`Flow`], [`Counts`]);
//! - [`SandboxState`]: where a sandbox is in its life, an enum;
//! - [`RunnerError`]: what went wrong, typed, carrying its HTTP status and
//!   code, the caller's faults kept apart from the host's.
//!
//! The crate does no I/O and holds no state: it is types and one trait.

mod error;
mod event;
mod flow;
mod runner;
mod state;
mod types;

pub use error::RunnerError;
pub use event::{EventKind, NetworkEvent};
pub use flow::{Flow, FlowLog, FlowSubscription, FlowVerdict, FlowVia, NameSource};
pub use runner::{Runner, Subscription};

/// A file with no name (made in the temporary directory and unlinked at
/// once), for an upload to be spooled into before it is read: it goes
/// with its last descriptor, whatever happens.
pub fn spool_file() -> std::io::Result<std::fs::File> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "sandgate-spool-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}
pub use sandgate_policy::RuntimeClass;
pub use state::SandboxState;
pub use types::{
    Capacity, Counts, DnsCounts, ExecRequest, ExecResult, Expected, GatewayCounts, Observed,
    ProbeTarget, PulledSnapshot, RestoreReport, SandboxSecret, SandboxSpec, TransferUsage,
};
