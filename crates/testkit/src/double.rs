//! A runner double: the contract's [`Runner`] kept in memory, for the
//! API's own tests (validation, authorization, error answers, the undo of
//! a failed step), which then need neither root nor a lab. It enforces
//! nothing: the real runner's tests and the lab suites do that.
//!
//! It keeps what the API asked of it (each sandbox's policy, whether it
//! was cut off or stopped, the commands run), fails an operation on
//! demand with the error a test chooses, and reports deaths when told.

use sandgate_contract::{
    Counts, ExecRequest, ExecResult, Expected, Flow, FlowLog, FlowSubscription, NetworkEvent,
    Observed, ProbeTarget, PulledSnapshot, RestoreReport, Runner, RunnerError, SandboxSpec,
    Subscription, TransferUsage,
};
use sandgate_policy::{EffectivePolicy, PolicyConfig};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, mpsc};

/// An operation of the contract, to fail on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Runner::snapshots`].
    Snapshots,
    /// [`Runner::create`].
    Create,
    /// [`Runner::update`].
    Update,
    /// [`Runner::block`].
    Block,
    /// [`Runner::delete`].
    Delete,
    /// [`Runner::exec`].
    Exec,
    /// [`Runner::probe`].
    Probe,
    /// [`Runner::restore`].
    Restore,
    /// [`Runner::pull_snapshot`].
    PullSnapshot,
    /// [`Runner::delete_snapshot`].
    DeleteSnapshot,
}

/// A sandbox as the double keeps it.
#[derive(Debug, Clone)]
pub struct Held {
    /// Its organization.
    pub organization: String,
    /// The policy last put in force.
    pub policy: EffectivePolicy,
    /// Whether it was cut off (until its next update).
    pub blocked: bool,
    /// Whether its processes were stopped.
    pub stopped: bool,
    /// The runtime class it runs under.
    pub runtime_class: sandgate_contract::RuntimeClass,
    /// The snapshot it started from.
    pub snapshot: String,
    /// The commands run in it, in order.
    pub commands: Vec<ExecRequest>,
}

#[derive(Debug, Default)]
struct Inner {
    sandboxes: HashMap<String, Held>,
    failures: HashMap<Op, Vec<RunnerError>>,
    events: HashMap<String, broadcast::Sender<NetworkEvent>>,
    flows: HashMap<String, (FlowLog, broadcast::Sender<Flow>)>,
    healthy: bool,
    update_delay: std::time::Duration,
    updates: u64,
    restores: u64,
    slots: u32,
    /// Its instance, when it plays a runner apart from the API.
    instance: Option<String>,
    /// It plays a runner that does not answer.
    away: bool,
    /// The runtime classes its host cannot run (none unless told).
    without: Vec<sandgate_contract::RuntimeClass>,
    /// It plays a runner older than runtime classes: it reads no class
    /// in a create (runs runc whatever is asked) and lists none.
    predates_classes: bool,
}

/// The double.
#[derive(Debug)]
pub struct RunnerDouble {
    snapshots: Mutex<Vec<String>>,
    policy: Arc<PolicyConfig>,
    inner: Mutex<Inner>,
    deaths_tx: mpsc::UnboundedSender<String>,
    deaths: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

impl RunnerDouble {
    /// A double with the snapshots `snapshots`, under `policy` (the
    /// always-denied ranges `explain` reads).
    pub fn new(snapshots: &[&str], policy: PolicyConfig) -> RunnerDouble {
        let (deaths_tx, deaths) = mpsc::unbounded_channel();
        RunnerDouble {
            snapshots: Mutex::new(snapshots.iter().map(ToString::to_string).collect()),
            policy: Arc::new(policy),
            inner: Mutex::new(Inner {
                healthy: true,
                slots: 1000,
                ..Inner::default()
            }),
            deaths_tx,
            deaths: Mutex::new(Some(deaths)),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next call of `op` fails with `error` (calls queued so fail in
    /// turn).
    pub fn fail(&self, op: Op, error: RunnerError) {
        self.inner().failures.entry(op).or_default().push(error);
    }

    fn failure(&self, op: Op) -> Result<(), RunnerError> {
        let mut inner = self.inner();
        if inner.away {
            return Err(RunnerError::Unavailable(
                "the double plays a runner away".into(),
            ));
        }
        match inner.failures.get_mut(&op) {
            Some(queue) if !queue.is_empty() => Err(queue.remove(0)),
            _ => Ok(()),
        }
    }

    /// Sandbox `id` as the double holds it.
    pub fn held(&self, id: &str) -> Option<Held> {
        self.inner().sandboxes.get(id).cloned()
    }

    /// It holds at most `slots` sandboxes (1,000 unless told).
    pub fn set_slots(&self, slots: u32) {
        self.inner().slots = slots;
    }

    /// It plays a runner apart from the API whose process is `instance`
    /// ([`Runner::instance`]): one the API looks at, and restores when
    /// its instance changes.
    pub fn set_instance(&self, instance: &str) {
        self.inner().instance = Some(instance.to_string());
    }

    /// It plays a runner that does not answer (every call out of reach),
    /// or one that answers again.
    pub fn set_away(&self, away: bool) {
        self.inner().away = away;
    }

    /// It plays a runner whose host cannot run `class` (its creates of
    /// that class are refused, and its capacity does not list it).
    pub fn set_without(&self, class: sandgate_contract::RuntimeClass) {
        self.inner().without.push(class);
    }

    /// It plays a runner older than runtime classes: a create's class is
    /// not read (it would run runc), and its capacity names runc alone
    /// (what an older runner's capacity reads as).
    pub fn set_predates_classes(&self) {
        let mut inner = self.inner();
        inner.predates_classes = true;
        inner.without = vec![sandgate_contract::RuntimeClass::Runsc];
    }

    /// How many restores it has taken.
    pub fn restores(&self) -> u64 {
        self.inner().restores
    }

    /// The ids of the sandboxes it holds, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner().sandboxes.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Sandbox `id`'s init dies: reported as a death.
    pub fn kill(&self, id: &str) {
        // Nobody listening (the server stopped) is no error here.
        let _ = self.deaths_tx.send(id.to_string());
    }

    /// Every other [`Runner::update`] answers `delay` after it put its
    /// policy in force (a busy host): of two writers not serialized, the
    /// first to reach the runner would often be the last to reach the
    /// store.
    pub fn slow_updates(&self, delay: std::time::Duration) {
        self.inner().update_delay = delay;
    }

    /// Whether [`Runner::healthy`] says so.
    pub fn set_healthy(&self, healthy: bool) {
        self.inner().healthy = healthy;
    }

    /// Writes `flow` to sandbox `sandbox`'s flow log (as given: its id
    /// too) and hands it to its subscribers.
    pub fn record_flow(&self, sandbox: &str, flow: Flow) {
        if let Some((log, tx)) = self.inner().flows.get_mut(sandbox) {
            log.flows.push(flow.clone());
            // No subscriber is no error.
            let _ = tx.send(flow);
        }
    }

    /// Hands `event` to sandbox `event.sandbox`'s subscribers.
    pub fn publish(&self, event: NetworkEvent) {
        if let Some(tx) = self.inner().events.get(&event.sandbox) {
            // No subscriber is no error.
            let _ = tx.send(event);
        }
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Held) -> T) -> Result<T, RunnerError> {
        let mut inner = self.inner();
        if inner.away {
            return Err(RunnerError::Unavailable(
                "the double plays a runner away".into(),
            ));
        }
        inner
            .sandboxes
            .get_mut(id)
            .map(f)
            .ok_or_else(|| RunnerError::NotFound(format!("no sandbox {id} on this runner")))
    }
}

impl Runner for RunnerDouble {
    fn instance(&self) -> Result<Option<String>, RunnerError> {
        let inner = self.inner();
        if inner.away {
            return Err(RunnerError::Unavailable(
                "the double plays a runner away".into(),
            ));
        }
        Ok(inner.instance.clone())
    }

    fn snapshots(&self) -> Result<Vec<String>, RunnerError> {
        self.failure(Op::Snapshots)?;
        Ok(self
            .snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    /// Adds snapshot `name`, as if made from `image` (whose digest is
    /// that of its reference's text): any image is there.
    fn pull_snapshot(&self, name: &str, image: &str) -> Result<PulledSnapshot, RunnerError> {
        self.failure(Op::PullSnapshot)?;
        if name == "busybox" {
            return Err(RunnerError::Conflict(format!(
                "snapshot {name} is built in"
            )));
        }
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        if self.inner().sandboxes.values().any(|h| h.snapshot == name) {
            return Err(RunnerError::Conflict(format!("snapshot {name} is in use")));
        }
        if !snapshots.iter().any(|s| s == name) {
            snapshots.push(name.to_string());
            snapshots.sort();
        }
        Ok(PulledSnapshot {
            name: name.to_string(),
            image: image.to_string(),
            digest: format!("sha256:{:064x}", image.len()),
            layers: 1,
            fetched: 1,
        })
    }

    /// Adds snapshot `name` if `archive` starts as a tar or gzip archive
    /// does (else `invalid_request`, as the runtime's refusal).
    fn import_snapshot(&self, name: &str, archive: std::fs::File) -> Result<(), RunnerError> {
        use std::io::Read;
        if name == "busybox" {
            return Err(RunnerError::Conflict(format!(
                "snapshot {name} is built in"
            )));
        }
        if self.inner().sandboxes.values().any(|h| h.snapshot == name) {
            return Err(RunnerError::Conflict(format!("snapshot {name} is in use")));
        }
        let mut head = [0u8; 262];
        let n = (&archive).read(&mut head).map_err(RunnerError::from)?;
        let tar = n >= 262 && &head[257..262] == b"ustar";
        if !(tar || head[..n.min(2)] == [0x1f, 0x8b]) {
            return Err(RunnerError::Unprocessable("not a tar archive".into()));
        }
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        if !snapshots.iter().any(|s| s == name) {
            snapshots.push(name.to_string());
            snapshots.sort();
        }
        Ok(())
    }

    fn delete_snapshot(&self, name: &str) -> Result<(), RunnerError> {
        self.failure(Op::DeleteSnapshot)?;
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        if name == "busybox" {
            return Err(RunnerError::Conflict(format!(
                "snapshot {name} is built in"
            )));
        }
        if self.inner().sandboxes.values().any(|h| h.snapshot == name) {
            return Err(RunnerError::Conflict(format!("snapshot {name} is in use")));
        }
        let before = snapshots.len();
        snapshots.retain(|s| s != name);
        if snapshots.len() == before {
            return Err(RunnerError::NotFound(format!("no snapshot {name}")));
        }
        Ok(())
    }

    fn create(&self, spec: &SandboxSpec) -> Result<(), RunnerError> {
        self.failure(Op::Create)?;
        let mut inner = self.inner();
        if inner.sandboxes.contains_key(&spec.id) {
            return Err(RunnerError::Conflict(format!("sandbox {} exists", spec.id)));
        }
        if inner.sandboxes.len() >= inner.slots as usize {
            return Err(RunnerError::Capacity("no free slot".into()));
        }
        if !inner.predates_classes && inner.without.contains(&spec.runtime_class) {
            return Err(RunnerError::ClassUnavailable(format!(
                "this runner's host cannot run runtime class {}",
                spec.runtime_class
            )));
        }
        inner.sandboxes.insert(
            spec.id.clone(),
            Held {
                organization: spec.organization.clone(),
                policy: spec.policy.clone(),
                blocked: false,
                stopped: false,
                runtime_class: spec.runtime_class,
                snapshot: spec.snapshot.clone(),
                commands: Vec::new(),
            },
        );
        inner
            .events
            .insert(spec.id.clone(), broadcast::channel(64).0);
        inner.flows.insert(
            spec.id.clone(),
            (FlowLog::default(), broadcast::channel(64).0),
        );
        Ok(())
    }

    fn update(&self, id: &str, policy: &EffectivePolicy) -> Result<(), RunnerError> {
        self.with(id, |_| ())?;
        self.failure(Op::Update)?;
        self.with(id, |h| {
            h.policy = policy.clone();
            h.blocked = false;
        })?;
        let delay = {
            let mut inner = self.inner();
            inner.updates += 1;
            if inner.updates % 2 == 1 {
                inner.update_delay
            } else {
                std::time::Duration::ZERO
            }
        };
        std::thread::sleep(delay);
        Ok(())
    }

    fn block(&self, id: &str) -> Result<(), RunnerError> {
        self.failure(Op::Block)?;
        self.with(id, |h| h.blocked = true)
    }

    fn stop(&self, id: &str) -> Result<(), RunnerError> {
        self.with(id, |h| h.stopped = true)
    }

    fn delete(&self, id: &str) -> Result<(), RunnerError> {
        self.failure(Op::Delete)?;
        let mut inner = self.inner();
        inner.sandboxes.remove(id);
        inner.events.remove(id);
        inner.flows.remove(id);
        Ok(())
    }

    fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecResult, RunnerError> {
        self.with(id, |_| ())?;
        self.failure(Op::Exec)?;
        self.with(id, |h| h.commands.push(request.clone()))?;
        Ok(ExecResult {
            exit_code: 0,
            stdout: String::new(),
            stderr: String::new(),
            result: String::new(),
            timed_out: false,
            truncated: false,
        })
    }

    fn probe(&self, id: &str, targets: &[ProbeTarget]) -> Result<Vec<Observed>, RunnerError> {
        self.with(id, |_| ())?;
        self.failure(Op::Probe)?;
        // Nothing is sent: every target is unreachable.
        Ok(targets
            .iter()
            .map(|t| Observed {
                target: t.clone(),
                addresses: Vec::new(),
                reachable: false,
                detail: "a runner double sends nothing".into(),
            })
            .collect())
    }

    fn subscribe(&self, id: &str) -> Result<Subscription, RunnerError> {
        let inner = self.inner();
        if inner.away {
            return Err(RunnerError::Unavailable(
                "the double plays a runner away".into(),
            ));
        }
        let tx = inner
            .events
            .get(id)
            .ok_or_else(|| RunnerError::NotFound(format!("no sandbox {id} on this runner")))?;
        Ok((Vec::new(), tx.subscribe()))
    }

    fn flows(&self, id: &str) -> Result<FlowSubscription, RunnerError> {
        let inner = self.inner();
        if inner.away {
            return Err(RunnerError::Unavailable(
                "the double plays a runner away".into(),
            ));
        }
        let (log, tx) = inner
            .flows
            .get(id)
            .ok_or_else(|| RunnerError::NotFound(format!("no sandbox {id} on this runner")))?;
        Ok((log.clone(), tx.subscribe()))
    }

    fn restore(&self, expected: &[Expected]) -> Result<RestoreReport, RunnerError> {
        self.failure(Op::Restore)?;
        let mut report = RestoreReport::default();
        let mut inner = self.inner();
        inner.restores += 1;
        let wanted: HashMap<&str, &Expected> =
            expected.iter().map(|e| (e.id.as_str(), e)).collect();
        let unknown: Vec<String> = inner
            .sandboxes
            .keys()
            .filter(|id| !wanted.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in unknown {
            inner.sandboxes.remove(&id);
            inner.events.remove(&id);
            inner.flows.remove(&id);
            report.removed.push(id);
        }
        report.removed.sort();
        for e in expected {
            match inner.sandboxes.get_mut(&e.id) {
                Some(held) => {
                    held.policy = e.policy.clone();
                    held.blocked = false;
                    report.running.push(e.id.clone());
                }
                None => report.lost.push(e.id.clone()),
            }
        }
        Ok(report)
    }

    fn take_deaths(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.deaths.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn live_policy(&self) -> Arc<PolicyConfig> {
        self.policy.clone()
    }

    fn addresses(&self, _id: &str) -> Option<[IpAddr; 2]> {
        None
    }

    fn transfer_usage(&self, id: &str) -> Result<Option<TransferUsage>, RunnerError> {
        // Nothing is counted: no quota is known.
        self.with(id, |_| ())?;
        Ok(None)
    }

    fn healthy(&self) -> bool {
        self.inner().healthy
    }

    fn counts(&self) -> Counts {
        Counts::default()
    }

    fn capacity(&self) -> Result<sandgate_contract::Capacity, RunnerError> {
        let inner = self.inner();
        if inner.away {
            return Err(RunnerError::Unavailable(
                "the double plays a runner away".into(),
            ));
        }
        Ok(sandgate_contract::Capacity {
            slots: inner.slots,
            used: u32::try_from(inner.sandboxes.len()).unwrap_or(u32::MAX),
            runtime_classes: sandgate_contract::RuntimeClass::ALL
                .into_iter()
                .filter(|c| !inner.without.contains(c))
                .collect(),
        })
    }
}
