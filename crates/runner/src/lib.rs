//! The runner: the sandboxes of one host.
//!
//! A sandbox here is a dataplane slot (namespace, links, its policy in the
//! kernel), the DNS service's view of it (its addresses and policy, for
//! answers and admissions), and a runtime sandbox in the slot's namespace.
//! [`Runner`] makes, changes and removes the three as one step: a create
//! puts the policy in the kernel before the sandbox's first process runs,
//! and any failure undoes what was done.
//!
//! This is the narrow interface the server drives (docs/API.md): ids,
//! effective policies, exec requests in; addresses, results and reports
//! out. It keeps nothing the server does not also keep, so that after a
//! restart [`Runner::restore`] rebuilds it from the server's records.

mod dirlock;
pub mod events;
pub mod flows;
mod grants;
pub mod host;
pub mod probe;

pub use dirlock::{DirLock, LOCK_FILE};
pub use events::{EventKind, NetworkEvent};
pub use host::LivePolicy;
pub use probe::{Observed, ProbeTarget};
pub use sandgate_contract::{
    DnsCounts, Expected, PulledSnapshot, RestoreReport, RunnerError, SandboxSecret, SandboxSpec,
    TransferUsage,
};
pub use sandgate_dataplane::{FastPathMode, NoFreeSlot};

use sandgate_dataplane::{Dataplane, DataplaneConfig, KernelCounters, Reading, SlotAddrs};
use sandgate_dns::{Asker, Directory, DnsConfig, DnsService, Upstream};
use sandgate_gateway::bindings::Bindings;
use sandgate_gateway::secrets::Secret;
use sandgate_gateway::terminate::{Terminator, TerminatorConfig};
use sandgate_gateway::{Gateway, GatewayConfig, GatewayEvent, Holder};
use sandgate_netns::Netns;
use sandgate_policy::{Catalog, DomainPattern, EffectivePolicy, PolicyConfig, Reason};
use sandgate_runtime::{
    Adopted, ExecRequest, ExecResult, InitWatch, Resources, Runtime, RuntimeConfig, RuntimeError,
};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the runner runs.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The dataplane's state file and the runtime's data live here.
    pub data_dir: PathBuf,
    /// The dataplane instance (prefix of the slots' namespace names).
    pub instance: String,
    /// The namespace the dataplane and the DNS service work in (the lab's
    /// `host`); `None` for the process's own.
    pub host_netns: Option<String>,
    /// Where the DNS service sends allowed queries.
    pub upstream: Upstream,
    /// Prepared slots kept ready.
    pub warm_pool: usize,
    /// Whether the host forwards traffic that is no sandbox's (see
    /// `DataplaneConfig::forward_other`).
    pub forward_other: bool,
    /// Whether established flows take the TC-BPF fast path (see
    /// `DataplaneConfig::fast_path`).
    pub fast_path: FastPathMode,
    /// The disk size most sandboxes get (bytes): `warm_pool` disks of it
    /// are prepared ahead, so that a create takes one instead of making it.
    pub warm_disk: Option<u64>,
    /// The runtime's settings (its `data_dir` is set under `data_dir`).
    pub runtime: RuntimeConfig,
    /// The TCP ports on which connections to addresses admitted by name
    /// go through the name-checking gateway (see
    /// `DataplaneConfig::name_checked_ports`).
    pub name_checked_ports: Vec<u16>,
    /// Whether QUIC (UDP 443) to addresses admitted by name is refused.
    pub deny_quic_to_names: bool,
    /// The CA certificates (PEM) that a destination's certificate must
    /// chain to when the gateway terminates a sandbox's TLS (names with
    /// HTTP rules): the host's bundle by default.
    pub tls_roots: PathBuf,
    /// The registries snapshots may be pulled from (none unless the
    /// operator says).
    pub registries: Vec<sandgate_images::Registry>,
    /// The most an image's layers may add up to, bytes.
    pub max_image_bytes: u64,
}

/// The most an image's layers may add up to unless the operator says:
/// 8 GiB.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 8 << 30;

impl RunnerConfig {
    /// Defaults under `data_dir`, with the host's resolvers upstream.
    pub fn new(data_dir: PathBuf, instance: &str, upstream: Upstream) -> RunnerConfig {
        RunnerConfig {
            runtime: RuntimeConfig::new(data_dir.join("runtime")),
            data_dir,
            instance: instance.to_string(),
            host_netns: None,
            upstream,
            warm_pool: 4,
            forward_other: false,
            fast_path: FastPathMode::default(),
            warm_disk: None,
            name_checked_ports: sandgate_dataplane::config::NAME_CHECKED_PORTS.to_vec(),
            deny_quic_to_names: true,
            tls_roots: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            registries: Vec::new(),
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
        }
    }
}

/// The disk size (bytes) most tiers give their sandboxes by default: what
/// the warm pool prepares ahead.
pub fn usual_disk(policy: &PolicyConfig) -> Option<u64> {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for rule in policy.tiers().values() {
        *counts.entry(rule.resources.default.disk_mib).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(mib, _)| mib << 20)
}

/// What the runtime makes of a sandbox's resources (MiB and
/// thousandths of a core, as resolved for its tier).
fn runtime_resources(
    resources: &sandgate_policy::Resources,
    class: sandgate_contract::RuntimeClass,
) -> Resources {
    const MIB: u64 = 1 << 20;
    Resources {
        memory: i64::try_from(resources.memory_mib.saturating_mul(MIB)).ok(),
        cpu: Some(f64::from(resources.cpu_millicores) / 1000.0),
        disk: Some(resources.disk_mib.saturating_mul(MIB)),
        class,
    }
}

/// Where a sandbox is on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Its slot.
    pub slot: SlotAddrs,
}

/// What the DNS service and the gateway ask of the runner: which sandbox
/// an address is and its policy, admissions in the dataplane, and which
/// names resolved to which addresses for whom.
#[derive(Debug)]
struct Sandboxes {
    dp: Mutex<Dataplane>,
    known: Mutex<Known>,
    /// The names the DNS service answered each holder, to the addresses
    /// it admitted for them (the gateway's check).
    bindings: Mutex<Bindings>,
    /// Each held slot's secrets, in memory only (never in the journal).
    secrets: Mutex<HashMap<u32, Arc<[Secret]>>>,
    live: Arc<LivePolicy>,
    /// The last lease handed out (see [`sandgate_dns::Asker::lease`]).
    leases: std::sync::atomic::AtomicU64,
    /// Held from reading a sandbox's policy to putting a changed one in
    /// force (an update, a grant's end), so that neither puts back what
    /// the other changed meanwhile.
    changing: Mutex<()>,
    /// Bumped at every change of a sandbox's policy (or its end): wakes
    /// the DNS queries held for an approval.
    changes: tokio::sync::watch::Sender<u64>,
}
/// Who holds each slot, and the slots whose DNS is answered, by address.
#[derive(Debug, Default)]
struct Known {
    /// Each held slot's sandbox: its lease, partition and policy.
    held: HashMap<u32, Asker>,
    /// Addresses whose queries are answered (a cut-off sandbox has none).
    by_addr: HashMap<IpAddr, u32>,
}

/// Takes a lock, also one whose holder panicked (its data is used as
/// that holder left it).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn addrs_of(slot: &SlotAddrs) -> [IpAddr; 2] {
    [IpAddr::V4(slot.sandbox4), IpAddr::V6(slot.sandbox6)]
}

impl Directory for Sandboxes {
    fn sandbox(&self, source: IpAddr) -> Option<Asker> {
        let known = lock(&self.known);
        let slot = known.by_addr.get(&source)?;
        known.held.get(slot).cloned()
    }

    fn admit(
        &self,
        asker: &Asker,
        addr: IpAddr,
        name: &str,
        rule: &Reason,
        lifetime: Duration,
    ) -> io::Result<Option<IpAddr>> {
        // The dataplane's lock first, held while admitting, and the lease
        // checked under it: a delete forgets its sandbox here before it
        // takes that lock to touch the slot, so an admission either sees
        // the lease gone or ends before the slot is cleared. (`known` is
        // never held across the dataplane's lock: lookups of every
        // sandbox wait on it, and the dataplane's may be held for a
        // slot's making.)
        let mut dp = lock(&self.dp);
        if !self.holds(asker) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("slot {} changed hands since the query", asker.slot),
            ));
        }
        let evicted = dp.admit(asker.slot, addr, rule, lifetime)?;
        // Bound for as long as admitted; at most twice as many bindings
        // as admissions (several names may share an address).
        let cap = usize::try_from(asker.policy.fair_shares.admitted_addresses)
            .unwrap_or(usize::MAX)
            .saturating_mul(2);
        let until = std::time::Instant::now() + lifetime;
        lock(&self.bindings).bind((asker.slot, asker.lease), name, addr, until, cap);
        Ok(evicted)
    }

    fn holds(&self, asker: &Asker) -> bool {
        lock(&self.known).held.get(&asker.slot).map(|a| a.lease) == Some(asker.lease)
    }

    fn current(&self, asker: &Asker) -> Option<Asker> {
        lock(&self.known)
            .held
            .get(&asker.slot)
            .filter(|a| a.lease == asker.lease)
            .cloned()
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn config(&self) -> Arc<PolicyConfig> {
        self.live.current()
    }
}

impl sandgate_gateway::Directory for Sandboxes {
    fn sandbox(&self, source: IpAddr) -> Option<Holder> {
        let asker = Directory::sandbox(self, source)?;
        Some(Holder {
            secrets: self.secrets_of(asker.slot),
            slot: asker.slot,
            lease: asker.lease,
            policy: asker.policy,
        })
    }

    fn resolved(&self, holder: &Holder, name: &str, addr: IpAddr) -> bool {
        lock(&self.bindings).resolved(holder.key(), name, addr)
    }

    fn config(&self) -> Arc<PolicyConfig> {
        self.live.current()
    }
}

impl Sandboxes {
    /// The holder of `slot` whose connections may pass: none for a slot
    /// cut off (its addresses are not answered) or not held.
    fn passing(&self, slot: &SlotAddrs) -> Option<Holder> {
        let known = lock(&self.known);
        let answered = addrs_of(slot)
            .iter()
            .all(|a| known.by_addr.get(a) == Some(&slot.index));
        let asker = known.held.get(&slot.index).filter(|_| answered)?;
        Some(Holder {
            secrets: self.secrets_of(asker.slot),
            slot: asker.slot,
            lease: asker.lease,
            policy: asker.policy.clone(),
        })
    }

    fn secrets_of(&self, slot: u32) -> Arc<[Secret]> {
        lock(&self.secrets)
            .get(&slot)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// The DNS service answers `slot`'s addresses for a new holder,
    /// `organization`'s sandbox, with `policy`.
    fn hand_over(
        &self,
        slot: &SlotAddrs,
        organization: &str,
        policy: &EffectivePolicy,
        secrets: &[SandboxSecret],
    ) {
        let secrets: Vec<Secret> = secrets
            .iter()
            .map(|s| Secret {
                name: s.name.clone(),
                placeholder: s.placeholder.clone(),
                value: s.value.clone(),
                // Canonical when stored: one that is not is no host.
                hosts: s
                    .hosts
                    .iter()
                    .filter_map(|h| DomainPattern::parse(h).ok())
                    .collect(),
            })
            .collect();
        lock(&self.secrets).insert(slot.index, Arc::from(secrets));
        let lease = self
            .leases
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let asker = Asker {
            slot: slot.index,
            lease,
            partition: Arc::from(organization),
            policy: policy.clone(),
        };
        let mut known = lock(&self.known);
        known.held.insert(slot.index, asker);
        for addr in addrs_of(slot) {
            known.by_addr.insert(addr, slot.index);
        }
    }

    /// The DNS service answers `slot`'s holder by `policy` from now on
    /// (again, if it was cut off).
    fn set_policy(&self, slot: &SlotAddrs, policy: &EffectivePolicy) {
        let mut known = lock(&self.known);
        if let Some(a) = known.held.get_mut(&slot.index) {
            a.policy = policy.clone();
            for addr in addrs_of(slot) {
                known.by_addr.insert(addr, slot.index);
            }
        }
    }

    /// Wakes the DNS queries held for an approval: a policy changed, in
    /// the kernel as well (a query woken earlier would admit under a rule
    /// the kernel does not have yet).
    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn policy_of(&self, slot: &SlotAddrs) -> Option<EffectivePolicy> {
        lock(&self.known)
            .held
            .get(&slot.index)
            .map(|a| a.policy.clone())
    }

    /// The DNS service stops answering `slot`'s holder (cut off), which
    /// keeps the slot.
    fn silence(&self, slot: &SlotAddrs) {
        let mut known = lock(&self.known);
        for addr in addrs_of(slot) {
            known.by_addr.remove(&addr);
        }
    }

    /// The slot's holder is gone: nothing it asked before is admitted or
    /// answered any more.
    fn forget(&self, slot: &SlotAddrs) {
        lock(&self.secrets).remove(&slot.index);
        let mut known = lock(&self.known);
        for addr in addrs_of(slot) {
            known.by_addr.remove(&addr);
        }
        known.held.remove(&slot.index);
        drop(known);
        lock(&self.bindings).forget(slot.index);
        self.changed();
    }
}

/// Removes every runtime sandbox (processes, mounts, files) and every
/// prepared disk under the runtime data of `cfg`, with no runner running:
/// for a lab that is being torn down (its slots go with its namespaces).
pub fn purge_runtime(cfg: &RunnerConfig) -> io::Result<()> {
    let runtime = Runtime::new(cfg.runtime.clone())?;
    for id in runtime.sandboxes()? {
        runtime.delete(&id)?;
    }
    Ok(runtime.clear_disks()?)
}

/// The sandboxes of one host.
pub struct Runner {
    sandboxes: Arc<Sandboxes>,
    /// Kernel flows the flow log lost (`sandgate_dataplane::Flows::lost`).
    flows_lost: Arc<std::sync::atomic::AtomicU64>,
    runtime: Runtime,
    /// Pulls images for snapshots (from the host's namespace).
    images: sandgate_images::Puller,
    /// Where each image snapshot's layers are recorded (`<name>.json`):
    /// what the blob store keeps.
    image_refs: PathBuf,
    /// One snapshot change at a time (a pull and a delete of one name
    /// must not interleave; two pulls share the blob store, which a
    /// change prunes).
    snapshot_changes: Mutex<()>,
    /// The snapshots' files: read by a create until its record names its
    /// snapshot (from then on the runtime refuses to replace or remove
    /// it), written by a change only while it replaces or removes one.
    snapshot_files: std::sync::RwLock<()>,
    // Behind a lock only because its event receiver is not `Sync`.
    dns: Arc<Mutex<DnsService>>,
    /// The name-checking gateway.
    gateway: Arc<Gateway>,
    host: Option<Netns>,
    slots: Arc<Mutex<HashMap<String, SlotAddrs>>>,
    events: Arc<events::EventHub>,
    /// When each slot was handed to its current sandbox: events logged
    /// before that belong to a previous owner and are dropped.
    assigned: Arc<Mutex<HashMap<u32, std::time::SystemTime>>>,
    stop: Arc<AtomicBool>,
    pump: Option<JoinHandle<()>>,
    refill: std::sync::mpsc::SyncSender<()>,
    refiller: Option<JoinHandle<()>>,
    live: Arc<LivePolicy>,
    _host_watch: host::HostWatch,
    /// The kernel's counts as last sampled.
    reading: Arc<Mutex<Option<Reading>>>,
    /// The inits of running sandboxes, watched for their death.
    inits: Arc<InitWatch>,
    watcher: Option<JoinHandle<()>>,
    /// Ends grants on time.
    expirer: Option<JoinHandle<()>>,
    /// Sandboxes whose init died, as they die (taken once, by the server).
    deaths: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    died: tokio::sync::mpsc::UnboundedSender<String>,
    /// Set by the first restore: a later one reconciles a live runner
    /// ([`Runner::restore`]).
    restored: AtomicBool,
    /// This runner's data directory, held while it lives.
    _lock: DirLock,
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the refiller, which then sees `stop`.
        let _ = self.refill.try_send(());
        for t in [
            self.pump.take(),
            self.refiller.take(),
            self.watcher.take(),
            self.expirer.take(),
        ]
        .into_iter()
        .flatten()
        {
            if t.join().is_err() {
                tracing::error!("a thread of the runner panicked");
            }
        }
    }
}

/// Puts `policy` in force for the sandbox of `slot` (see
/// [`Runner::update`]): the DNS service's view, then the kernel; on a
/// refusal the old policy goes back whole, or the sandbox is cut off.
/// Then the gateway cuts what the policy in force no longer allows.
fn apply(
    sandboxes: &Sandboxes,
    gateway: &Gateway,
    slot: &SlotAddrs,
    policy: &EffectivePolicy,
) -> io::Result<()> {
    let old = sandboxes.policy_of(slot);
    sandboxes.set_policy(slot, policy);
    let applied = lock(&sandboxes.dp).update(slot.index, policy);
    let result = match applied {
        Ok(()) => Ok(()),
        Err(e) => {
            // The kernel may hold the old policy, the new one, or neither
            // (the dataplane cut the slot). Put the old one back whole,
            // which is what the caller still has on record; if even that
            // fails, cut the sandbox off.
            let restored = match &old {
                Some(old) => lock(&sandboxes.dp).update(slot.index, old),
                None => Err(io::Error::other("no policy to put back")),
            };
            match (restored, old) {
                (Ok(()), Some(old)) => sandboxes.set_policy(slot, &old),
                _ => block_slot(sandboxes, gateway, slot)?,
            }
            Err(e)
        }
    };
    sandboxes.changed();
    gateway.revalidate(slot.index, sandboxes.passing(slot).as_ref());
    result
}

/// Cuts the sandbox of `slot` off (see [`Runner::block`]).
fn block_slot(sandboxes: &Sandboxes, gateway: &Gateway, slot: &SlotAddrs) -> io::Result<()> {
    // An unknown source gets no DNS answer, and nothing through the
    // gateway.
    sandboxes.silence(slot);
    gateway.cut(slot.index);
    let cut = lock(&sandboxes.dp).cut(slot.index);
    cut
}

/// Does what creates leave for later when woken (a cold slot's fast path
/// program attached, then the warm pool refilled), one step per hold of
/// the dataplane's lock (so DNS admissions and other calls wait for one
/// step at most), until `stop`.
fn refiller(
    sandboxes: Arc<Sandboxes>,
    disks: Option<(Runtime, u64, usize)>,
    wake: std::sync::mpsc::Receiver<()>,
    stop: Arc<AtomicBool>,
) {
    while wake.recv().is_ok() && !stop.load(Ordering::SeqCst) {
        while !stop.load(Ordering::SeqCst) {
            match lock(&sandboxes.dp).fill_pool_step() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "refilling the warm pool of slots");
                    break;
                }
            }
        }
        // Disks of the usual size, likewise (no lock held).
        if let Some((runtime, bytes, count)) = &disks {
            while !stop.load(Ordering::SeqCst) && runtime.ready_disks(*bytes) < *count {
                if let Err(e) = runtime.prepare_disk(*bytes) {
                    tracing::warn!(error = %e, "preparing a sandbox disk");
                    break;
                }
            }
        }
    }
}

/// Where the pump's events come from.
struct Sources {
    /// The dataplane's NFLOG reader.
    deny: sandgate_dataplane::Events,
    /// The kernel's counters.
    kernel: Option<KernelCounters>,
    /// The DNS service.
    dns: Arc<Mutex<DnsService>>,
    /// The connections the gateway reset.
    refused: std::sync::mpsc::Receiver<GatewayEvent>,
    /// The flows the kernel forwarded (none where it cannot tell them).
    flows: Option<sandgate_dataplane::Flows>,
    /// The connections the gateway relayed or reset.
    relayed: std::sync::mpsc::Receiver<sandgate_gateway::flows::GatewayFlow>,
    /// What writing a flow's record needs.
    context: flows::Context,
}

/// Moves events from the dataplane's NFLOG reader, the gateway and the DNS service to
/// the hub, naming each sandbox by id, and samples the kernel's counts,
/// until `stop`.
fn pump(
    sources: Sources,
    slots: Arc<Mutex<HashMap<String, SlotAddrs>>>,
    assigned: Arc<Mutex<HashMap<u32, std::time::SystemTime>>>,
    hub: Arc<events::EventHub>,
    reading: Arc<Mutex<Option<Reading>>>,
    stop: Arc<AtomicBool>,
) {
    let Sources {
        deny,
        mut kernel,
        dns,
        refused,
        flows,
        relayed,
        context,
    } = sources;
    let mut sampled = Sampled::default();
    let mut last_sample = std::time::Instant::now();
    // The sandbox that had `slot` at `time`: its current owner, unless
    // the slot was handed over after the event.
    let owner = |slot: u32, time: std::time::SystemTime| {
        if lock(&assigned)
            .get(&slot)
            .is_some_and(|since| time < *since)
        {
            return None;
        }
        lock(&slots)
            .iter()
            .find(|(_, s)| s.index == slot)
            .map(|(id, _)| id.clone())
    };
    while !stop.load(Ordering::SeqCst) {
        if let Ok(e) = deny.receiver().recv_timeout(Duration::from_millis(100)) {
            if let Some(sandbox) = owner(e.slot, e.time) {
                context.denied(&hub.flows, &sandbox, &e);
                hub.publish(NetworkEvent {
                    time_ms: events::millis(e.time),
                    sandbox,
                    kind: EventKind::Connection,
                    protocol: e.protocol,
                    destination: Some(e.destination.to_string()),
                    port: e.port,
                    domain: None,
                    reason: e.reason,
                    count: None,
                });
            }
        }
        for f in flows.iter().flat_map(|f| f.receiver().try_iter()) {
            if let Some(sandbox) = owner(f.slot, f.time) {
                context.kernel(&hub.flows, &sandbox, f);
            }
        }
        for f in relayed.try_iter() {
            if let Some(sandbox) = owner(f.slot, f.time) {
                context.gateway(&hub.flows, &sandbox, f);
            }
        }
        for e in refused.try_iter() {
            if let Some(sandbox) = owner(e.slot, e.time) {
                hub.publish(NetworkEvent {
                    time_ms: events::millis(e.time),
                    sandbox,
                    kind: EventKind::Connection,
                    protocol: "tcp".into(),
                    destination: Some(e.destination.ip().to_string()),
                    port: Some(e.destination.port()),
                    domain: e.name,
                    reason: e.reason,
                    count: None,
                });
            }
        }
        let queued: Vec<sandgate_dns::DnsEvent> = lock(&dns).events().try_iter().collect();
        for e in queued {
            if let Some(sandbox) = owner(e.slot, e.time) {
                let removed: Vec<String> = e.removed.iter().map(ToString::to_string).collect();
                hub.publish(NetworkEvent {
                    time_ms: events::millis(e.time),
                    sandbox,
                    kind: EventKind::Dns,
                    protocol: e.qtype,
                    destination: (!removed.is_empty()).then(|| removed.join(",")),
                    port: Some(53),
                    domain: Some((!e.name.is_empty()).then_some(e.name)).flatten(),
                    reason: e.reason,
                    count: None,
                });
            }
        }
        if last_sample.elapsed() >= SAMPLE_EVERY {
            last_sample = std::time::Instant::now();
            sample(
                &mut kernel,
                &mut sampled,
                &assigned,
                &dns,
                &owner,
                &hub,
                &reading,
            );
        }
    }
}

/// Marks the sandboxes whose init died (their processes and mounts
/// cleaned, their files kept) and tells the server, until `stop`.
fn watch_inits(
    inits: &InitWatch,
    runtime: &Runtime,
    died: &tokio::sync::mpsc::UnboundedSender<String>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        let ids = match inits.wait(Duration::from_millis(200)) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "watching the sandboxes' inits");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        for id in ids {
            report_death(runtime, died, id);
        }
    }
}

/// Logs a failed step of an undo or a cleanup, which goes on (what is
/// left is removed at the next start).
fn undone<E: std::fmt::Display>(what: &str, sandbox: &str, result: Result<(), E>) {
    if let Err(e) = result {
        tracing::warn!(sandbox, error = %e, "{what} the sandbox failed");
    }
}

/// Records that sandbox `id`'s init died (its processes and mounts
/// cleaned, its files kept) and tells the server.
fn report_death(runtime: &Runtime, died: &tokio::sync::mpsc::UnboundedSender<String>, id: String) {
    tracing::warn!(sandbox = %id, "the sandbox's init died; it is kept, not restarted");
    if let Err(e) = runtime.mark_died(&id) {
        tracing::warn!(sandbox = %id, error = %e, "recording a dead sandbox");
    }
    if died.send(id).is_err() {
        // No receiver: the server is stopping, or none took the deaths.
        tracing::debug!("a death with nobody to tell");
    }
}

/// How often the kernel's counts are read.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The least time between two `budget` events of one sandbox.
const BUDGET_EVENT_EVERY: Duration = Duration::from_secs(10);

/// What the sampler keeps from one sample to the next.
#[derive(Default)]
struct Sampled {
    /// Events held back, by slot and reason: the handover of the slot the
    /// count belongs to, and the count.
    held_back: BTreeMap<(u32, &'static str), (Option<std::time::SystemTime>, u64)>,
    /// Pacers, by slot.
    paced: BTreeMap<u32, Pacing>,
    /// Slots whose transfer quota was reached this period and said so
    /// (with the handover of the slot it was reached in).
    spent: BTreeMap<u32, Option<std::time::SystemTime>>,
}

/// A slot's pacer as last sampled.
struct Pacing {
    /// The handover of the slot its counts belong to.
    since: Option<std::time::SystemTime>,
    /// Times a packet waited for tokens.
    overlimits: u64,
    /// Whether it held packets back in the last second.
    holding: bool,
    /// When a `budget` event last said so.
    reported: Option<std::time::Instant>,
}

/// Reads the kernel's counts into `reading`, and reports the events held
/// back since the last sample (the kernel's meters', the DNS service's)
/// as one `dropped` event per sandbox and reason, and a sandbox's pacer
/// starting to hold back what it sends as a `budget` event (at most one
/// each [`BUDGET_EVENT_EVERY`]).
fn sample(
    kernel: &mut Option<KernelCounters>,
    sampled: &mut Sampled,
    assigned: &Mutex<HashMap<u32, std::time::SystemTime>>,
    dns: &Mutex<DnsService>,
    owner: &dyn Fn(u32, std::time::SystemTime) -> Option<String>,
    hub: &events::EventHub,
    reading: &Mutex<Option<Reading>>,
) {
    let now = std::time::SystemTime::now();
    // `when`: a time the counted events are known to be the slot's
    // current holder's (no later than the first of them).
    let report = |slot: u32, reason: &str, n: u64, when: std::time::SystemTime| {
        if n == 0 {
            return;
        }
        if let Some(sandbox) = owner(slot, when) {
            hub.publish(NetworkEvent {
                time_ms: events::millis(now),
                sandbox,
                kind: EventKind::Dropped,
                protocol: String::new(),
                destination: None,
                port: None,
                domain: None,
                reason: reason.to_string(),
                count: Some(n),
            });
        }
    };
    // A budget reached, as an event of the slot's sandbox: whether it had
    // one to tell.
    let budget = |slot: u32, reason: &str| {
        let Some(sandbox) = owner(slot, now) else {
            return false;
        };
        hub.publish(NetworkEvent {
            time_ms: events::millis(now),
            sandbox,
            kind: EventKind::Budget,
            protocol: String::new(),
            destination: None,
            port: None,
            domain: None,
            reason: reason.to_string(),
            count: None,
        });
        true
    };
    if let Some(k) = kernel.as_mut() {
        match k.read() {
            Ok(r) => {
                // Each count is kept with the handover of its slot it
                // belongs to. A slot handed over since has counters made
                // anew with it (a delete destroys them): they count from
                // nothing, and all they hold is the new holder's. (What
                // the old holder's counters gained in its last second is
                // not reported: it is gone.)
                let handed = lock(assigned).clone();
                let mut seen = BTreeMap::new();
                for ((slot, class), n) in &r.held_back {
                    let key = (*slot, class.reason);
                    let since = handed.get(slot).copied();
                    let before = match sampled.held_back.get(&key) {
                        Some((then, before)) if *then == since => *before,
                        _ => 0,
                    };
                    let held = n.saturating_sub(before);
                    report(*slot, class.reason, held, now);
                    // Refusals not told are not in the flow log either.
                    if let Some(sandbox) = owner(*slot, now).filter(|_| held > 0) {
                        hub.flows.add_dropped(&sandbox, held);
                    }
                    seen.insert(key, (since, *n));
                }
                sampled.held_back = seen;
                let mut paced = BTreeMap::new();
                for (slot, stats) in &r.paced {
                    let since = handed.get(slot).copied();
                    let last = sampled.paced.remove(slot).filter(|p| p.since == since);
                    let grew = stats.overlimits > last.as_ref().map_or(0, |p| p.overlimits);
                    let mut reported = last.as_ref().and_then(|p| p.reported);
                    let was_holding = last.as_ref().is_some_and(|p| p.holding);
                    let quiet = reported.is_none_or(|t| t.elapsed() >= BUDGET_EVENT_EVERY);
                    if grew && !was_holding && quiet && budget(*slot, "egress_mbps") {
                        reported = Some(std::time::Instant::now());
                    }
                    paced.insert(
                        *slot,
                        Pacing {
                            since,
                            overlimits: stats.overlimits,
                            holding: grew,
                            reported,
                        },
                    );
                }
                sampled.paced = paced;
                // A quota reached says so once a period (a new period's
                // count starts below it again).
                let mut spent = BTreeMap::new();
                for (slot, quota) in &r.transfer {
                    if quota.consumed < quota.bytes {
                        continue;
                    }
                    let since = handed.get(slot).copied();
                    if sampled.spent.get(slot) != Some(&since) {
                        budget(*slot, "transfer_quota");
                    }
                    spent.insert(*slot, since);
                }
                sampled.spent = spent;
                *lock(reading) = Some(r);
            }
            Err(e) => tracing::warn!(error = %e, "reading the dataplane's counters"),
        }
    }
    for d in lock(dns).take_dropped() {
        report(d.slot, d.reason, d.count, d.first);
    }
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").finish_non_exhaustive()
    }
}

impl Runner {
    /// Starts the dataplane (its ruleset before anything else), the DNS
    /// service and the runtime, and builds the `busybox` snapshot if there
    /// is none. Call [`Runner::restore`] next.
    pub fn start(
        cfg: RunnerConfig,
        policy: Arc<PolicyConfig>,
        catalog: Arc<Catalog>,
    ) -> io::Result<Runner> {
        // Before anything is touched: one runner per data directory.
        let lock = DirLock::take(&cfg.data_dir)?;
        std::fs::set_permissions(
            &cfg.data_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        // The gateway's CA, which every sandbox made from now on trusts.
        // Without it (no upstream roots, say), TLS to a name whose
        // requests must be read is refused, and the log says why.
        let terminator = match Terminator::new(&TerminatorConfig {
            ca_dir: cfg.data_dir.join("gateway-ca"),
            upstream_roots: cfg.tls_roots.clone(),
        }) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "the gateway terminates no TLS: connections over TLS to names with HTTP rules are refused");
                None
            }
        };
        let mut runtime_cfg = cfg.runtime.clone();
        runtime_cfg.trusted_ca = terminator.as_ref().map(|t| t.ca_pem().to_string());
        // The runtime first: its failures leave no thread or socket behind.
        let runtime = Runtime::new(runtime_cfg)?;
        if !runtime.snapshots()?.iter().any(|s| s == BUILT_IN_SNAPSHOT) {
            runtime.build_busybox(BUILT_IN_SNAPSHOT)?;
        }
        let images = sandgate_images::Puller::new(
            &cfg.data_dir.join("images"),
            &cfg.registries,
            cfg.max_image_bytes,
        )?;
        let image_refs = cfg.data_dir.join("images").join("snapshots");
        std::fs::create_dir_all(&image_refs)?;
        let mut dp_cfg =
            DataplaneConfig::new(&policy, &cfg.instance, cfg.data_dir.join("dataplane.json"))?;
        dp_cfg.host_netns = cfg.host_netns.clone();
        dp_cfg.warm_pool = cfg.warm_pool;
        dp_cfg.forward_other = cfg.forward_other;
        dp_cfg.fast_path = cfg.fast_path;
        dp_cfg.name_checked_ports = cfg.name_checked_ports.clone();
        dp_cfg.deny_quic_to_names = cfg.deny_quic_to_names;
        let dns_port = dp_cfg.dns_port;
        let gateway_port = dp_cfg.gateway_port;
        let nflog_group = dp_cfg.nflog_group;
        let (dp, _) = Dataplane::start(dp_cfg, (*policy).clone())?;
        let table = dp.config().table.clone();
        let host = match &cfg.host_netns {
            Some(name) => Some(Netns::open(name)?),
            None => None,
        };
        // Without the kernel's flows the log holds what the gateway and
        // the deny events tell; the log says why.
        let kernel_flows = match sandgate_dataplane::Flows::start(
            host.as_ref(),
            dp.config(),
            dp.fast_path_ended(),
        ) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(error = %e, "the flow log holds no flows of the kernel's: reading its connection tracking failed");
                None
            }
        };
        let live = Arc::new(LivePolicy::new((*policy).clone()));
        let host_watch = host::HostWatch::start(host.as_ref(), live.clone())?;
        let sandboxes = Arc::new(Sandboxes {
            dp: Mutex::new(dp),
            known: Mutex::new(Known::default()),
            bindings: Mutex::new(Bindings::default()),
            secrets: Mutex::new(HashMap::new()),
            live: live.clone(),
            leases: std::sync::atomic::AtomicU64::new(0),
            changing: Mutex::new(()),
            changes: tokio::sync::watch::Sender::new(0),
        });
        let deny =
            sandgate_dataplane::Events::start(host.as_ref(), nflog_group, policy.ranges().clone())?;
        let kernel = KernelCounters::open(host.as_ref(), &table)?;
        let dns = Arc::new(Mutex::new(DnsService::start(
            host.as_ref(),
            DnsConfig::new(dns_port, cfg.upstream.clone()),
            sandboxes.clone(),
            catalog.clone(),
        )?));
        let mut gateway_cfg = GatewayConfig::new(gateway_port);
        gateway_cfg.terminator = terminator;
        let (gateway, refused, relayed) = Gateway::start(
            host.as_ref(),
            gateway_cfg,
            sandboxes.clone(),
            catalog.clone(),
        )?;
        let gateway = Arc::new(gateway);
        let reading = Arc::new(Mutex::new(None));
        let slots = Arc::new(Mutex::new(HashMap::new()));
        let assigned = Arc::new(Mutex::new(HashMap::new()));
        let hub = Arc::new(events::EventHub::default());
        let stop = Arc::new(AtomicBool::new(false));
        let flows_lost = kernel_flows
            .as_ref()
            .map(sandgate_dataplane::Flows::lost_counter)
            .unwrap_or_default();
        let pump = {
            let context = flows::Context {
                sandboxes: sandboxes.clone(),
                catalog,
            };
            let (dns, slots, assigned, hub, reading, stop) = (
                dns.clone(),
                slots.clone(),
                assigned.clone(),
                hub.clone(),
                reading.clone(),
                stop.clone(),
            );
            std::thread::Builder::new()
                .name("sandgate-events".into())
                .spawn(move || {
                    let sources = Sources {
                        deny,
                        kernel: Some(kernel),
                        dns,
                        refused,
                        flows: kernel_flows,
                        relayed,
                        context,
                    };
                    pump(sources, slots, assigned, hub, reading, stop)
                })?
        };
        let inits = Arc::new(InitWatch::new()?);
        let (died_tx, deaths) = tokio::sync::mpsc::unbounded_channel();
        let watcher = {
            let (inits, runtime, stop, died_tx) = (
                inits.clone(),
                runtime.clone(),
                stop.clone(),
                died_tx.clone(),
            );
            std::thread::Builder::new()
                .name("sandgate-inits".into())
                .spawn(move || watch_inits(&inits, &runtime, &died_tx, &stop))?
        };
        let expirer = {
            let (sandboxes, gateway, slots, hub, stop) = (
                sandboxes.clone(),
                gateway.clone(),
                slots.clone(),
                hub.clone(),
                stop.clone(),
            );
            std::thread::Builder::new()
                .name("sandgate-grants".into())
                .spawn(move || grants::expirer(sandboxes, gateway, slots, hub, stop))?
        };
        let (refill, wake) = std::sync::mpsc::sync_channel(1);
        let refiller = {
            let (sandboxes, stop) = (sandboxes.clone(), stop.clone());
            let disks = cfg
                .warm_disk
                .map(|bytes| (runtime.clone(), bytes, cfg.warm_pool));
            std::thread::Builder::new()
                .name("sandgate-refill".into())
                .spawn(move || refiller(sandboxes, disks, wake, stop))?
        };
        Ok(Runner {
            sandboxes,
            runtime,
            dns,
            gateway,
            host,
            slots,
            events: hub,
            assigned,
            stop,
            pump: Some(pump),
            flows_lost,
            refill,
            refiller: Some(refiller),
            live,
            _host_watch: host_watch,
            reading,
            inits,
            watcher: Some(watcher),
            expirer: Some(expirer),
            deaths: Mutex::new(Some(deaths)),
            died: died_tx,
            restored: AtomicBool::new(false),
            images,
            image_refs,
            snapshot_changes: Mutex::new(()),
            snapshot_files: std::sync::RwLock::new(()),
            _lock: lock,
        })
    }

    /// Sandboxes whose init died, each once, as they die: the receiver,
    /// for the one caller that keeps the sandboxes' records (`None` after
    /// the first call).
    pub fn take_deaths(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        lock(&self.deaths).take()
    }

    /// Watches sandbox `id`'s init; one already gone is a death (`false`).
    fn watch_init(&self, id: &str) -> bool {
        match self.inits.watch(&self.runtime, id) {
            Ok(true) => true,
            Ok(false) => {
                report_death(&self.runtime, &self.died, id.to_string());
                false
            }
            Err(e) => {
                // Unwatched, not dead: it is looked at again at the next
                // start.
                tracing::warn!(sandbox = id, error = %e, "cannot watch the sandbox's init");
                true
            }
        }
    }

    /// Stops sandbox `id`'s processes on purpose (no death), keeping its
    /// slot and files.
    #[tracing::instrument(name = "sandbox", skip_all, fields(id = %id, op = "stop"))]
    pub fn stop(&self, id: &str) -> io::Result<()> {
        self.inits.forget(id);
        Ok(self.runtime.stop(id)?)
    }

    /// The policy configuration as this host makes it now: the operator's,
    /// with the host's own addresses (always denied) as they are.
    pub fn policy(&self) -> Arc<PolicyConfig> {
        self.live.current()
    }

    /// The runtime (snapshots, limits).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// What the DNS service has done so far.
    pub fn dns_counts(&self) -> DnsCounts {
        let dns = lock(&self.dns);
        let c = dns.counters();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        DnsCounts {
            forwarded: get(&c.forwarded),
            cache_hits: get(&c.cache_hits),
            refused: get(&c.refused),
            admitted: get(&c.admitted),
            rebinding: get(&c.rebinding),
            upstream_failures: get(&c.upstream_failures),
            busy: get(&c.busy),
            rate_limited: get(&c.rate_limited),
            tcp_refused: get(&c.tcp_refused),
            stale: get(&c.stale),
            held: get(&c.held),
            held_approved: get(&c.held_approved),
            upstream_unmatched: dns.upstream_unmatched(),
        }
    }

    /// What the name-checking gateway has done so far.
    pub fn gateway_counts(&self) -> sandgate_contract::GatewayCounts {
        let c = self.gateway.counters();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        sandgate_contract::GatewayCounts {
            accepted: get(&c.accepted),
            passed: get(&c.passed),
            refused: get(&c.refused),
            cut: get(&c.cut),
            active: get(&c.active),
        }
    }

    /// Makes the sandbox `spec` describes: a slot with its policy in the
    /// kernel, the DNS service told, then the runtime sandbox in the slot,
    /// whose init is then watched. On failure nothing of it is left.
    #[tracing::instrument(name = "sandbox", skip_all, fields(id = %spec.id, op = "create"))]
    pub fn create(&self, spec: &SandboxSpec) -> io::Result<Placement> {
        let SandboxSpec {
            id,
            organization,
            snapshot,
            policy,
            resources,
            runtime_class,
            secrets,
        } = spec;
        let id = id.as_str();
        let resources = &runtime_resources(resources, *runtime_class);
        // Before a slot is taken: a class this host cannot run is said
        // so, with the reason in the log.
        if let Err(e) = self.runtime.usable(*runtime_class) {
            tracing::warn!(sandbox = %id, error = %e, "refused a create");
            return Err(refusal(RunnerError::ClassUnavailable(format!(
                "this runner's host cannot run runtime class {runtime_class}; the operator's log says why"
            ))));
        }
        self.egress_here(policy)?;
        if lock(&self.slots).contains_key(id) {
            return Err(refusal(RunnerError::Conflict(format!(
                "sandbox {id} exists"
            ))));
        }
        let slot = lock(&self.sandboxes.dp).create(id, policy)?;
        lock(&self.assigned).insert(slot.index, std::time::SystemTime::now());
        self.sandboxes
            .hand_over(&slot, organization, policy, secrets);
        let netns = Netns::path_of(&slot.netns);
        let made = {
            let _files = self
                .snapshot_files
                .read()
                .unwrap_or_else(|p| p.into_inner());
            self.runtime
                .create(id, snapshot, &netns, IpAddr::V4(slot.gateway4), resources)
        };
        if let Err(e) = made {
            self.sandboxes.forget(&slot);
            let mut dp = lock(&self.sandboxes.dp);
            if dp.delete(slot.index).is_err() {
                // Cut off, and known, so that the caller's delete (or the
                // next start) can finish it.
                undone("cutting off", id, dp.cut(slot.index));
                drop(dp);
                lock(&self.slots).insert(id.to_string(), slot);
            }
            return Err(e.into());
        }
        self.events.open(id);
        lock(&self.slots).insert(id.to_string(), slot.clone());
        // An init already gone is reported as a death (the server records
        // it, from `creating` too).
        self.watch_init(id);
        // The warm pool is refilled, and a slot made here gets its fast
        // path program, off the request's path (a wake-up already pending
        // is enough).
        let _ = self.refill.try_send(());
        tracing::info!(slot = slot.index, interface = %slot.host_if, address = %slot.sandbox4, "created");
        Ok(Placement { slot })
    }

    /// Whether this host holds the known egress addresses of `policy`: a
    /// connection given a source address the host does not have would
    /// leave with a forged one, and its answers would go elsewhere.
    fn egress_here(&self, policy: &EffectivePolicy) -> io::Result<()> {
        let Some(egress) = &policy.egress_address else {
            return Ok(());
        };
        match egress.not_held(self.policy().ranges()) {
            // The operator's to fix, not the caller's: a host fault.
            Some((_, addr)) => Err(io::Error::other(format!(
                "the known egress address {addr} is not an address of this host"
            ))),
            None => Ok(()),
        }
    }

    /// Sandbox `id`'s own addresses (IPv4, IPv6), if it holds a slot.
    pub fn addresses(&self, id: &str) -> Option<[IpAddr; 2]> {
        lock(&self.slots).get(id).map(addrs_of)
    }

    /// Sandbox `id`'s transfer quota as the kernel counts it now (`None`:
    /// it has none).
    pub fn transfer_usage(&self, id: &str) -> io::Result<Option<TransferUsage>> {
        let slot = self.slot(id)?;
        let counted = lock(&self.sandboxes.dp).transfer_count(slot.index)?;
        Ok(counted.map(|(t, since, consumed)| TransferUsage {
            quota_bytes: t.bytes,
            used_bytes: consumed.min(t.bytes),
            spent: consumed >= t.bytes,
            period_start_ms: since * 1000,
            period_end_ms: (since + u64::from(t.period_seconds)) * 1000,
        }))
    }

    fn slot(&self, id: &str) -> io::Result<SlotAddrs> {
        lock(&self.slots)
            .get(id)
            .cloned()
            .ok_or_else(|| no_sandbox(id))
    }

    /// Puts `policy` in force for sandbox `id`: in the kernel (connections
    /// it denies stop at their next packet) and for the DNS service.
    ///
    /// The DNS service learns the new policy first, so that no query is
    /// forwarded under the old one once the kernel has the new one; should
    /// the kernel refuse the change, the DNS service's view is put back.
    /// Then the gateway cuts the connections whose names the policy in
    /// force no longer allows.
    #[tracing::instrument(name = "sandbox", skip_all, fields(id = %id, op = "update"))]
    pub fn update(&self, id: &str, policy: &EffectivePolicy) -> io::Result<()> {
        let slot = self.slot(id)?;
        self.egress_here(policy)?;
        let _changing = lock(&self.sandboxes.changing);
        let old = self.sandboxes.policy_of(&slot);
        // A grant that ended on the way here is not put in force.
        let now = grants::now_ms();
        let mut policy = policy.clone();
        policy.expire_grants(now);
        apply(&self.sandboxes, &self.gateway, &slot, &policy)?;
        for event in grants::changes(id, old.as_ref(), &policy, now) {
            self.events.publish(event);
        }
        Ok(())
    }

    /// Cuts sandbox `id` off the network entirely (established connections
    /// too) and stops answering its DNS queries, until its next successful
    /// update or a restart: for a policy that could not be applied.
    #[tracing::instrument(name = "sandbox", skip_all, fields(id = %id, op = "block"))]
    pub fn block(&self, id: &str) -> io::Result<()> {
        let slot = self.slot(id)?;
        let _changing = lock(&self.sandboxes.changing);
        block_slot(&self.sandboxes, &self.gateway, &slot)
    }

    /// Removes sandbox `id`: it is cut off first, then its processes and
    /// files go, then its slot. A failure leaves the sandbox known (and
    /// cut off), so that the delete can be tried again.
    #[tracing::instrument(name = "sandbox", skip_all, fields(id = %id, op = "delete"))]
    pub fn delete(&self, id: &str) -> io::Result<()> {
        // Its init's exit from here on is no death.
        self.inits.forget(id);
        let slot = lock(&self.slots).get(id).cloned();
        if let Some(slot) = &slot {
            // Not while a grant's end is being put in force for it.
            let _changing = lock(&self.sandboxes.changing);
            self.sandboxes.forget(slot);
            self.gateway.cut(slot.index);
            if let Err(e) = lock(&self.sandboxes.dp).cut(slot.index) {
                // The delete goes on: the slot's removal below takes its
                // rules with it, or fails and keeps the sandbox known.
                tracing::warn!(sandbox = id, error = %e, "cutting off a sandbox being deleted");
            }
        }
        self.runtime.delete(id)?;
        if let Some(slot) = slot {
            // Forgotten before its namespace goes, so that a probe that
            // opened the namespace and then finds the sandbox still here
            // knows the namespace was this sandbox's.
            lock(&self.slots).remove(id);
            let deleted = lock(&self.sandboxes.dp).delete(slot.index);
            if let Err(e) = deleted {
                lock(&self.slots).insert(id.to_string(), slot);
                return Err(e);
            }
            lock(&self.assigned).remove(&slot.index);
        }
        self.events.forget(id);
        tracing::info!("deleted");
        Ok(())
    }

    /// Runs a command in sandbox `id`.
    #[tracing::instrument(name = "sandbox", skip_all, fields(id = %id, op = "exec"))]
    pub fn exec(&self, id: &str, request: &ExecRequest) -> io::Result<ExecResult> {
        self.slot(id)?;
        Ok(self.runtime.exec(id, request)?)
    }

    /// Rebuilds the runner after a restart from the sandboxes the server
    /// knows (`expected`: id, organization and policy): each one's slot and runtime
    /// sandbox are taken back and its policy re-applied (the server's
    /// record wins over the kernel's); anything nobody expects is removed;
    /// an expected sandbox missing its slot or its runtime sandbox is
    /// removed and reported lost.
    ///
    /// A restore while this runner serves (an API that restarted, or a
    /// replica that finishes another's change cut short) reconciles
    /// instead ([`Runner::reconcile`]).
    pub fn restore(&self, expected: &[Expected]) -> io::Result<RestoreReport> {
        if self.restored.swap(true, Ordering::SeqCst) {
            return Ok(self.reconcile(expected));
        }
        let mut report = RestoreReport::default();
        // A first restore that fails (its one fallible step) is a first
        // restore again when tried again, never a reconcile against the
        // nothing this runner serves yet (which would remove every
        // sandbox).
        let adopted: HashMap<String, Adopted> = match self.runtime.adopt() {
            Ok(adopted) => adopted.into_iter().collect(),
            Err(e) => {
                self.restored.store(false, Ordering::SeqCst);
                return Err(e.into());
            }
        };
        let active: HashMap<String, u32> = lock(&self.sandboxes.dp)
            .active_slots()
            .into_iter()
            .map(|(index, owner)| (owner, index))
            .collect();
        let wanted: HashMap<&str, &EffectivePolicy> = expected
            .iter()
            .map(|e| (e.id.as_str(), &e.policy))
            .collect();
        for Expected {
            id,
            organization,
            policy,
            secrets,
        } in expected
        {
            // Each sandbox on its own: one that cannot be taken back is
            // removed (as far as it can be) and reported lost, and the
            // others are restored all the same.
            let lose = |index: Option<u32>, report: &mut RestoreReport| {
                if let Some(index) = index {
                    undone("cutting off", id, lock(&self.sandboxes.dp).cut(index));
                    undone(
                        "removing the slot of",
                        id,
                        lock(&self.sandboxes.dp).delete(index),
                    );
                }
                self.inits.forget(id);
                undone("removing", id, self.runtime.delete(id));
                report.lost.push(id.clone());
            };
            let Some(index) = active.get(id).copied() else {
                lose(None, &mut report);
                continue;
            };
            // The stored policy goes back into the kernel before any of
            // the sandbox's processes (re)start; an egress address the
            // host lost meanwhile stays its source (none other is put in
            // its place), and the log says so.
            if let Err(e) = self.egress_here(policy) {
                tracing::warn!(sandbox = %id, error = %e, "restored with an egress address this host does not hold: its connections get answers only while the upstream routes the address here");
            }
            let applied = lock(&self.sandboxes.dp).update(index, policy);
            // A sandbox whose init died while nobody watched is not
            // started again behind its owner's back: it is kept, with its
            // files, and reported.
            let died = matches!(adopted.get(id), Some(Adopted::Died));
            let alive = applied.is_ok()
                && match adopted.get(id) {
                    Some(Adopted::Running | Adopted::Died) => true,
                    Some(Adopted::Stopped) => self.runtime.start(id).is_ok(),
                    _ => false,
                };
            if !alive {
                lose(Some(index), &mut report);
                continue;
            }
            let slot = lock(&self.sandboxes.dp).slot(index);
            lock(&self.assigned).insert(slot.index, std::time::SystemTime::now());
            self.sandboxes
                .hand_over(&slot, organization, policy, secrets);
            self.events.open(id);
            lock(&self.slots).insert(id.clone(), slot);
            if died || !self.watch_init(id) {
                report.died.push(id.clone());
            } else {
                report.running.push(id.clone());
            }
        }
        // Whatever nobody expects goes; a failure here is reported, and
        // does not keep the others from being served.
        for (owner, index) in &active {
            if !wanted.contains_key(owner.as_str()) {
                undone("cutting off", owner, lock(&self.sandboxes.dp).cut(*index));
                undone(
                    "removing the slot of",
                    owner,
                    lock(&self.sandboxes.dp).delete(*index),
                );
                report.removed.push(owner.clone());
            }
        }
        for id in adopted.keys() {
            if !wanted.contains_key(id.as_str()) {
                self.inits.forget(id);
                undone("removing", id, self.runtime.delete(id));
                if !report.removed.contains(id) {
                    report.removed.push(id.clone());
                }
            }
        }
        report.removed.sort();
        // The adoption cleared the prepared disks: make them again.
        let _ = self.refill.try_send(());
        Ok(report)
    }

    /// A restore on a live runner: the changes of this runner are
    /// serialized (a restore is one), so what it serves is whole, and
    /// what is left of a crash was cleared by its first restore. Each
    /// sandbox it serves that the server expects gets the stored policy
    /// as an update puts it (the DNS view, the kernel, the gateway's cut
    /// of what it no longer allows); one it serves that the server does
    /// not expect goes as a delete takes it (its init's exit no death);
    /// one expected that it does not serve is reported lost. Exec files,
    /// prepared disks and snapshots being built are live work here, and
    /// stay.
    fn reconcile(&self, expected: &[Expected]) -> RestoreReport {
        let mut report = RestoreReport::default();
        let served: std::collections::HashSet<String> = lock(&self.slots).keys().cloned().collect();
        let wanted: std::collections::HashSet<&str> =
            expected.iter().map(|e| e.id.as_str()).collect();
        for Expected { id, policy, .. } in expected {
            let applied = if served.contains(id) {
                self.update(id, policy)
            } else {
                Err(no_sandbox(id))
            };
            if let Err(e) = applied {
                tracing::warn!(sandbox = %id, error = %e, "the sandbox cannot be restored; removing it");
                if served.contains(id) {
                    undone("removing", id, self.delete(id));
                } else {
                    self.inits.forget(id);
                    undone("removing", id, self.runtime.delete(id));
                }
                report.lost.push(id.clone());
            } else if matches!(self.runtime.info(id), Ok(info) if info.died) {
                report.died.push(id.clone());
            } else {
                report.running.push(id.clone());
            }
        }
        for id in &served {
            if !wanted.contains(id.as_str()) {
                undone("removing", id, self.delete(id));
                report.removed.push(id.clone());
            }
        }
        report.removed.sort();
        report
    }

    /// Probes `targets` from sandbox `id`'s point of view (see [`probe`]),
    /// each bounded by [`probe::PROBE_TIMEOUT`] (twice for a name: its DNS
    /// answer, then the connection). Addresses are probed first, all at
    /// once, then names, all at once: an answer for a name admits its
    /// addresses for the sandbox, and must not change what an address's
    /// row says about the sandbox before any DNS.
    #[tracing::instrument(name = "sandbox", skip_all, fields(id = %id, op = "probe"))]
    pub fn probe(&self, id: &str, targets: &[ProbeTarget]) -> io::Result<Vec<Observed>> {
        let slot = self.slot(id)?;
        let gateway = IpAddr::V4(slot.gateway4);
        let is_address = |t: &ProbeTarget| t.host.parse::<IpAddr>().is_ok();
        // Threads started inside the namespace are in it too. The
        // namespace is held open, then the slot checked to be still this
        // sandbox's (a delete forgets the sandbox before it removes the
        // namespace, so the one held cannot be another sandbox's).
        let ns = Netns::open(&slot.netns)?;
        if lock(&self.slots).get(id).map(|s| s.index) != Some(slot.index) {
            return Err(refusal(RunnerError::NotFound(format!(
                "sandbox {id} was deleted"
            ))));
        }
        let mut seen: Vec<Option<Observed>> = vec![None; targets.len()];
        ns.run(|| {
            for phase in [true, false] {
                std::thread::scope(|s| {
                    let probes: Vec<_> = targets
                        .iter()
                        .enumerate()
                        .filter(|(_, t)| is_address(t) == phase)
                        .map(|(i, t)| (i, s.spawn(move || probe::probe(gateway, t))))
                        .collect();
                    for (i, p) in probes {
                        seen[i] = p.join().ok();
                        if seen[i].is_none() {
                            tracing::error!(target = %targets[i], "a network test's probe panicked; reported as not reached");
                        }
                    }
                });
            }
            Ok(())
        })?;
        Ok(seen
            .into_iter()
            .zip(targets)
            .map(|(o, t)| {
                o.unwrap_or_else(|| Observed {
                    target: t.clone(),
                    addresses: Vec::new(),
                    reachable: false,
                    detail: "the probe failed".into(),
                })
            })
            .collect())
    }

    /// Sandbox `id`'s recent network events and a receiver of its next
    /// ones (see [`events`]).
    pub fn subscribe(
        &self,
        id: &str,
    ) -> io::Result<(
        Vec<NetworkEvent>,
        tokio::sync::broadcast::Receiver<NetworkEvent>,
    )> {
        self.events.subscribe(id).ok_or_else(|| no_sandbox(id))
    }

    /// Sandbox `id`'s flow log as it stands and a receiver of its next
    /// records.
    pub fn flows(&self, id: &str) -> io::Result<sandgate_contract::FlowSubscription> {
        self.events
            .flows
            .subscribe(id)
            .ok_or_else(|| no_sandbox(id))
    }

    /// New connections let out so far, as last sampled (every second, off
    /// every request's path): (by a list or the mode, by a DNS admission).
    pub fn allowed_counts(&self) -> Option<(u64, u64)> {
        lock(&self.reading)
            .as_ref()
            .map(|r| (r.allowed_net, r.allowed_dns))
    }

    /// Network events so far, by kind (`connection`, `dns`) and reason.
    pub fn event_counts(&self) -> std::collections::BTreeMap<(EventKind, String), u64> {
        self.events.counts()
    }

    /// Whether the dataplane's ruleset went missing since the start (every
    /// slot is then cut off until a restart puts it back).
    pub fn ruleset_lost(&self) -> bool {
        lock(&self.sandboxes.dp).watchdog_tripped()
    }

    /// The namespace the dataplane works in, if not the process's.
    pub fn host_netns(&self) -> Option<&Netns> {
        self.host.as_ref()
    }

    /// Makes snapshot `name` from `image` (see
    /// [`sandgate_contract::Runner::pull_snapshot`]): pulled from the
    /// host's namespace (the runner's traffic, never a sandbox's), its
    /// layers applied by the runtime, and recorded so that the blob store
    /// keeps them; blobs no snapshot uses any more are removed.
    pub fn pull_snapshot(&self, name: &str, image: &str) -> Result<PulledSnapshot, RunnerError> {
        if !sandgate_runtime::is_valid_name(name) {
            return Err(fault(
                RuntimeError::InvalidName {
                    kind: "snapshot",
                    name: name.to_string(),
                }
                .into(),
            ));
        }
        if name == BUILT_IN_SNAPSHOT {
            return Err(RunnerError::Conflict(format!(
                "snapshot {name} is built in"
            )));
        }
        let _one = lock(&self.snapshot_changes);
        let pulled = match &self.host {
            Some(ns) => ns.run(|| Ok(self.images.pull(image))).map_err(fault)?,
            None => self.images.pull(image),
        }
        .map_err(image_fault)?;
        let layers = pulled
            .layers
            .iter()
            .map(std::fs::File::open)
            .collect::<io::Result<Vec<_>>>()
            .map_err(fault)?;
        {
            let _files = self.files_changing();
            self.runtime
                .import_layers(name, layers)
                .map_err(|e| fault(e.into()))?;
        }
        let record = ImageRecord {
            image: pulled.reference.clone(),
            digest: pulled.digest.clone(),
            layers: pulled.layers.clone(),
        };
        let bytes = serde_json::to_vec(&record).map_err(RunnerError::host)?;
        std::fs::write(self.image_refs.join(format!("{name}.json")), bytes).map_err(fault)?;
        self.prune_images();
        tracing::info!(snapshot = %name, image = %pulled.reference, digest = %pulled.digest, "made a snapshot from an image");
        Ok(PulledSnapshot {
            name: name.to_string(),
            image: pulled.reference,
            digest: pulled.digest,
            layers: pulled.layers.len(),
            fetched: pulled.fetched,
        })
    }

    /// Makes snapshot `name` from the root filesystem archive `archive`
    /// (see [`sandgate_contract::Runner::import_snapshot`]); a snapshot of
    /// that name made from an image before is one no more (its layers go
    /// unless another uses them).
    pub fn import_snapshot(&self, name: &str, archive: std::fs::File) -> Result<(), RunnerError> {
        let _one = lock(&self.snapshot_changes);
        if name == BUILT_IN_SNAPSHOT {
            return Err(RunnerError::Conflict(format!(
                "snapshot {name} is built in"
            )));
        }
        {
            let _files = self.files_changing();
            self.runtime
                .import_snapshot(name, std::io::BufReader::new(archive))
                .map_err(|e| fault(e.into()))?;
        }
        match std::fs::remove_file(self.image_refs.join(format!("{name}.json"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(fault(e)),
            _ => {}
        }
        self.prune_images();
        tracing::info!(snapshot = %name, "made a snapshot from an archive");
        Ok(())
    }

    /// Removes snapshot `name` (not the built-in one, nor one in use) and
    /// the blobs only it used.
    pub fn delete_snapshot(&self, name: &str) -> Result<(), RunnerError> {
        let _one = lock(&self.snapshot_changes);
        if name == BUILT_IN_SNAPSHOT {
            return Err(RunnerError::Conflict(format!(
                "snapshot {name} is built in"
            )));
        }
        if !self
            .runtime
            .snapshots()
            .map_err(|e| fault(e.into()))?
            .iter()
            .any(|s| s == name)
        {
            return Err(RunnerError::NotFound(format!("no snapshot {name}")));
        }
        {
            let _files = self.files_changing();
            self.runtime
                .delete_snapshot(name)
                .map_err(|e| fault(e.into()))?;
        }
        match std::fs::remove_file(self.image_refs.join(format!("{name}.json"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(fault(e)),
            _ => {}
        }
        self.prune_images();
        Ok(())
    }

    /// Holds the snapshots' files for a change: no create is between its
    /// check of a snapshot and the record that names it.
    fn files_changing(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.snapshot_files
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the blobs no recorded image snapshot uses (a failure is
    /// logged: the blobs stay until the next change).
    fn prune_images(&self) {
        let keep = || -> io::Result<Vec<PathBuf>> {
            let mut keep = Vec::new();
            for entry in std::fs::read_dir(&self.image_refs)? {
                let record: ImageRecord = serde_json::from_slice(&std::fs::read(entry?.path())?)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                keep.extend(record.layers);
            }
            Ok(keep)
        };
        match keep().and_then(|keep| self.images.prune(&keep)) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed image layers no snapshot uses"),
            Err(e) => tracing::warn!(error = %e, "pruning the image store; its blobs stay"),
        }
    }
}

/// The snapshot every runner has, built at its start.
pub const BUILT_IN_SNAPSHOT: &str = "busybox";

/// What a runner keeps of a snapshot made from an image.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ImageRecord {
    image: String,
    digest: String,
    layers: Vec<PathBuf>,
}

/// An image pull's failure as the contract says it: the caller's asks
/// (a registry not allowed, an unknown or unusable image) apart from the
/// registry's faults and the host's.
fn image_fault(e: sandgate_images::ImageError) -> RunnerError {
    use sandgate_images::ImageError;
    let message = e.to_string();
    match e {
        ImageError::NotAllowed { .. } => RunnerError::Invalid {
            code: "registry_not_allowed",
            message,
        },
        ImageError::NotFound(_) => RunnerError::NotFound(message),
        ImageError::BadReference(_) | ImageError::Unsupported(_) | ImageError::TooLarge { .. } => {
            RunnerError::Invalid {
                code: "invalid_image",
                message,
            }
        }
        ImageError::Denied(_) | ImageError::Registry(_) => RunnerError::Registry(message),
        ImageError::Io(e) => fault(e),
    }
}

/// The in-process runner, as the API drives it: its I/O errors become the
/// contract's typed errors here, at the seam (a full host is
/// `capacity_exhausted`; an exec's working directory that cannot be
/// entered is the caller's `invalid_cwd`; every kind the caller cannot
/// cause is the host's fault).
impl sandgate_contract::Runner for Runner {
    fn snapshots(&self) -> Result<Vec<String>, RunnerError> {
        self.runtime.snapshots().map_err(|e| fault(e.into()))
    }

    fn pull_snapshot(&self, name: &str, image: &str) -> Result<PulledSnapshot, RunnerError> {
        Runner::pull_snapshot(self, name, image)
    }

    fn import_snapshot(&self, name: &str, archive: std::fs::File) -> Result<(), RunnerError> {
        Runner::import_snapshot(self, name, archive)
    }

    fn delete_snapshot(&self, name: &str) -> Result<(), RunnerError> {
        Runner::delete_snapshot(self, name)
    }

    fn create(&self, spec: &SandboxSpec) -> Result<(), RunnerError> {
        Runner::create(self, spec).map(drop).map_err(fault)
    }

    fn update(&self, id: &str, policy: &EffectivePolicy) -> Result<(), RunnerError> {
        Runner::update(self, id, policy).map_err(fault)
    }

    fn block(&self, id: &str) -> Result<(), RunnerError> {
        Runner::block(self, id).map_err(fault)
    }

    fn stop(&self, id: &str) -> Result<(), RunnerError> {
        Runner::stop(self, id).map_err(fault)
    }

    fn delete(&self, id: &str) -> Result<(), RunnerError> {
        Runner::delete(self, id).map_err(fault)
    }

    fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecResult, RunnerError> {
        Runner::exec(self, id, request).map_err(fault)
    }

    fn probe(&self, id: &str, targets: &[ProbeTarget]) -> Result<Vec<Observed>, RunnerError> {
        Runner::probe(self, id, targets).map_err(fault)
    }

    fn subscribe(&self, id: &str) -> Result<sandgate_contract::Subscription, RunnerError> {
        Runner::subscribe(self, id).map_err(fault)
    }

    fn flows(&self, id: &str) -> Result<sandgate_contract::FlowSubscription, RunnerError> {
        Runner::flows(self, id).map_err(fault)
    }

    fn restore(&self, expected: &[Expected]) -> Result<RestoreReport, RunnerError> {
        Runner::restore(self, expected).map_err(fault)
    }

    fn take_deaths(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        Runner::take_deaths(self)
    }

    fn live_policy(&self) -> Arc<PolicyConfig> {
        self.policy()
    }

    fn addresses(&self, id: &str) -> Option<[IpAddr; 2]> {
        Runner::addresses(self, id)
    }

    fn transfer_usage(&self, id: &str) -> Result<Option<TransferUsage>, RunnerError> {
        Runner::transfer_usage(self, id).map_err(fault)
    }

    fn healthy(&self) -> bool {
        !self.ruleset_lost()
    }

    fn capacity(&self) -> Result<sandgate_contract::Capacity, RunnerError> {
        let slots = lock(&self.sandboxes.dp).config().max_slots();
        let used = u32::try_from(lock(&self.slots).len()).unwrap_or(u32::MAX);
        Ok(sandgate_contract::Capacity {
            slots,
            used,
            runtime_classes: self.runtime.classes(),
        })
    }

    fn counts(&self) -> sandgate_contract::Counts {
        sandgate_contract::Counts {
            allowed: self.allowed_counts(),
            dns: self.dns_counts(),
            events: self
                .event_counts()
                .into_iter()
                .map(|((kind, reason), n)| (kind, reason, n))
                .collect(),
            gateway: self.gateway_counts(),
            flows_lost: self.flows_lost.load(Ordering::Relaxed)
                + self.gateway.counters().flows_lost.load(Ordering::Relaxed),
        }
    }
}

/// A refusal of this runner's own, for its caller (a sandbox it does not
/// have, one that exists), carried in an I/O error so that the runner's
/// own methods keep their type; [`fault`] takes it back out.
fn refusal(e: RunnerError) -> io::Error {
    let kind = match e {
        RunnerError::NotFound(_) => io::ErrorKind::NotFound,
        RunnerError::Conflict(_) => io::ErrorKind::AlreadyExists,
        _ => io::ErrorKind::InvalidInput,
    };
    io::Error::new(kind, e)
}

/// "No sandbox `id` on this runner", as a refusal.
fn no_sandbox(id: &str) -> io::Error {
    refusal(RunnerError::NotFound(format!(
        "no sandbox {id} on this runner"
    )))
}

/// An I/O error of this runner as the contract's error. Only what the
/// runner refused on purpose is the caller's fault ([`refusal`]); no free
/// slot is the host being full, a full disk is said so; everything else
/// is the host's, whatever its kind (a missing `runc` is a `NotFound` of
/// the host, never a 404).
fn fault(e: io::Error) -> RunnerError {
    if let Some(refused) = e.get_ref().and_then(|i| i.downcast_ref::<RunnerError>()) {
        return refused.clone();
    }
    // What the runtime says is its caller's fault, by variant.
    if let Some(runtime) = e.get_ref().and_then(|i| i.downcast_ref::<RuntimeError>()) {
        let message = runtime.to_string();
        match runtime {
            RuntimeError::NoSnapshot(_) => return RunnerError::NotFound(message),
            RuntimeError::Exists(_) | RuntimeError::Busy(_) => {
                return RunnerError::Conflict(message)
            }
            RuntimeError::NoSuchCwd => {
                return RunnerError::Invalid {
                    code: "invalid_cwd",
                    message,
                }
            }
            RuntimeError::InvalidName { .. } => {
                return RunnerError::Invalid {
                    code: "invalid_request",
                    message,
                }
            }
            RuntimeError::Archive(_) => return RunnerError::Unprocessable(message),
            _ => {}
        }
    }
    if e.get_ref().is_some_and(|inner| inner.is::<NoFreeSlot>()) {
        return RunnerError::Capacity(e.to_string());
    }
    RunnerError::from(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtimes_refusals_are_the_callers_and_the_rest_the_hosts() {
        let f = |e: RuntimeError| fault(io::Error::from(e));
        assert!(matches!(
            f(RuntimeError::NoSnapshot("x".into())),
            RunnerError::NotFound(_)
        ));
        assert!(matches!(
            f(RuntimeError::Busy("sandbox sb-1 is not running".into())),
            RunnerError::Conflict(_)
        ));
        assert!(matches!(
            f(RuntimeError::NoSuchCwd),
            RunnerError::Invalid {
                code: "invalid_cwd",
                ..
            }
        ));
        assert!(matches!(
            f(RuntimeError::Archive("a device".into())),
            RunnerError::Unprocessable(_)
        ));
        // A missing runc, a missing file: the host's, never a 404.
        let missing = f(RuntimeError::Oci {
            program: "runc".into(),
            op: "run",
            id: "sb-1".into(),
            said: "exec: \"runc\": executable file not found in $PATH".into(),
        });
        assert!(missing.is_host_fault(), "{missing:?}");
        let gone = f(RuntimeError::Io(io::Error::from(io::ErrorKind::NotFound)));
        assert!(gone.is_host_fault(), "{gone:?}");
    }
}
