//! The operations the API drives on a runner.

use crate::{
    Capacity, Counts, ExecRequest, ExecResult, Expected, FlowSubscription, NetworkEvent, Observed,
    ProbeTarget, PulledSnapshot, RestoreReport, RunnerError, SandboxSpec, TransferUsage,
};
use sandgate_policy::{EffectivePolicy, PolicyConfig};
use std::net::IpAddr;
use std::sync::Arc;

/// A sandbox's recent network events and a receiver of its next ones
/// (closed when the sandbox is deleted).
pub type Subscription = (
    Vec<NetworkEvent>,
    tokio::sync::broadcast::Receiver<NetworkEvent>,
);

/// A runner: the sandboxes of one host, as the API drives them.
///
/// The methods block (a create makes a namespace and starts a container;
/// an exec lasts as long as its command): an async caller runs them on a
/// blocking thread. Every one of them either does all it says or leaves
/// the sandbox as it was (or, where even that failed, cut off from the
/// network: never with more access than before); its error says which
/// side was at fault ([`RunnerError::is_host_fault`]). The one exception
/// is [`RunnerError::Unavailable`]: a runner that did not answer may or
/// may not have done it, and the caller assumes the wider of the two (it
/// cuts the sandbox off).
///
/// A runner keeps nothing the API does not also keep: after a restart,
/// [`Runner::restore`] rebuilds it from the API's records.
pub trait Runner: Send + Sync + std::fmt::Debug {
    /// The changes this caller sends from now on belong to `generation`
    /// of the store's write lock (see the server's `writes`): a runner
    /// that several API replicas drive takes no change of a generation
    /// older than one it has already taken (`Superseded`), so that a
    /// replica that lost the lock amid a change cannot land it after
    /// another replica has restored the sandboxes. The runner in the API's
    /// own process has one caller and ignores it.
    fn fence(&self, generation: u64) {
        let _ = generation;
    }

    /// An id of the runner's process, new at each of its starts, read
    /// within a few seconds; `None` for the runner in the API's own
    /// process, which starts with it. An API that sees it change (the
    /// runner restarted alone, and serves nothing until it is told what
    /// to) restores the runner's sandboxes.
    fn instance(&self) -> Result<Option<String>, RunnerError> {
        Ok(None)
    }

    /// The snapshots sandboxes can start from.
    fn snapshots(&self) -> Result<Vec<String>, RunnerError>;

    /// Makes (or remakes) snapshot `name` from the OCI image `image`,
    /// pulled by the runner from a registry its operator configured. A
    /// snapshot of that name is replaced only once the new one is whole,
    /// and never while a sandbox uses it (`conflict`).
    fn pull_snapshot(&self, name: &str, image: &str) -> Result<PulledSnapshot, RunnerError>;

    /// Makes (or remakes) snapshot `name` from `archive`, a root
    /// filesystem tar archive (plain or gzip; what `docker export`
    /// writes): a hostile or broken one is `invalid_request` (422) with
    /// nothing made. Replaced as [`Runner::pull_snapshot`] replaces.
    fn import_snapshot(&self, name: &str, archive: std::fs::File) -> Result<(), RunnerError>;

    /// Removes snapshot `name`: `conflict` while a sandbox uses it or for
    /// the built-in `busybox`, `not_found` if there is none.
    fn delete_snapshot(&self, name: &str) -> Result<(), RunnerError>;

    /// Makes the sandbox `spec` describes, its policy in the kernel before
    /// its first process runs. On failure nothing of it is left.
    fn create(&self, spec: &SandboxSpec) -> Result<(), RunnerError>;

    /// Puts `policy` in force for sandbox `id` (connections it denies stop
    /// at their next packet). On failure the old policy is back, or the
    /// sandbox is cut off.
    fn update(&self, id: &str, policy: &EffectivePolicy) -> Result<(), RunnerError>;

    /// Cuts sandbox `id` off the network entirely until its next update:
    /// for a policy that could not be applied.
    fn block(&self, id: &str) -> Result<(), RunnerError>;

    /// Stops sandbox `id`'s processes on purpose (no death), keeping its
    /// slot and files.
    fn stop(&self, id: &str) -> Result<(), RunnerError>;

    /// Removes sandbox `id`, cut off first. A failure leaves it known and
    /// cut off, so that the delete can be tried again.
    fn delete(&self, id: &str) -> Result<(), RunnerError>;

    /// Runs a command in sandbox `id`.
    fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecResult, RunnerError>;

    /// Probes `targets` from sandbox `id`'s point of view.
    fn probe(&self, id: &str, targets: &[ProbeTarget]) -> Result<Vec<Observed>, RunnerError>;

    /// Sandbox `id`'s recent network events and a receiver of its next
    /// ones.
    fn subscribe(&self, id: &str) -> Result<Subscription, RunnerError>;

    /// Sandbox `id`'s flow log as it stands and a receiver of its next
    /// records.
    fn flows(&self, id: &str) -> Result<FlowSubscription, RunnerError>;

    /// Takes back the sandboxes the API expects after a restart; removes
    /// whatever nobody expects.
    fn restore(&self, expected: &[Expected]) -> Result<RestoreReport, RunnerError>;

    /// Sandboxes whose init died, each once, as they die: the receiver,
    /// for the one caller that keeps the records (`None` after the first
    /// call).
    fn take_deaths(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>>;

    /// The policy configuration as this host makes it now: the
    /// operator's, with the host's own addresses (always denied) as they
    /// are.
    fn live_policy(&self) -> Arc<PolicyConfig>;

    /// Sandbox `id`'s own addresses (IPv4, IPv6), if it holds a slot.
    fn addresses(&self, id: &str) -> Option<[IpAddr; 2]>;

    /// Whether the runner enforces as it should (its ruleset is in
    /// place).
    fn healthy(&self) -> bool;

    /// What the runner has counted so far.
    fn counts(&self) -> Counts;

    /// How many sandboxes it can hold, and holds: what placement weighs.
    fn capacity(&self) -> Result<Capacity, RunnerError>;

    /// Sandbox `id`'s transfer quota as counted now (`None`: it has
    /// none).
    fn transfer_usage(&self, id: &str) -> Result<Option<TransferUsage>, RunnerError>;
}
