//! The flow log of each sandbox: the records of its connections, from the
//! kernel (flows the host's connection tracking forwarded, refusals of
//! the ruleset) and from the gateway (the connections it relayed or
//! reset), each kept once as it stands now, at most [`KEPT`] per sandbox
//! (the oldest make room, counted as dropped). Subscribers get each record
//! as it is written: when a flow opens, and again, with the same id, when
//! it ends.

use crate::events::millis;
use crate::lock;
use sandgate_contract::{Flow, FlowLog, FlowSubscription, FlowVerdict, FlowVia, NameSource};
use sandgate_dataplane::{DenyEvent, KernelFlow};
use sandgate_dns::Asker;
use sandgate_gateway::flows::{FlowStage, GatewayFlow};
use sandgate_policy::{Catalog, CompiledPolicy, Destination, Mode, Reason, Target};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Records kept per sandbox.
pub const KEPT: usize = 4096;
/// Records a subscriber may have waiting.
pub const BACKLOG: usize = 1024;

/// Which source's flow a record is, by the source's own key: the
/// kernel's id of a tracked flow, the gateway's number of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// A flow of the kernel's connection tracking.
    Kernel(u32),
    /// A connection the gateway relayed.
    Gateway(u64),
}

/// One sandbox's log.
#[derive(Debug, Default)]
struct Log {
    records: VecDeque<Flow>,
    /// The id of the next record.
    next: u64,
    /// Records pushed out, or never written.
    dropped: u64,
    /// The open flows' records, by their source's key.
    open: HashMap<Key, u64>,
    /// Made at the first subscription.
    live: Option<broadcast::Sender<Flow>>,
}

impl Log {
    fn send(&self, flow: &Flow) {
        if let Some(live) = &self.live {
            // No subscriber left is not an error.
            let _ = live.send(flow.clone());
        }
    }

    fn find(&mut self, id: u64) -> Option<&mut Flow> {
        // Ids increase along the log.
        let at = self.records.binary_search_by_key(&id, |f| f.id).ok()?;
        self.records.get_mut(at)
    }
}

/// The flow logs of a runner's sandboxes.
#[derive(Debug, Default)]
pub struct FlowLogs {
    logs: Mutex<HashMap<String, Log>>,
}

impl FlowLogs {
    /// Starts keeping sandbox `id`'s flows.
    pub fn open(&self, id: &str) {
        lock(&self.logs).entry(id.to_string()).or_default();
    }

    /// Forgets sandbox `id`'s flows; its subscribers' streams end.
    pub fn forget(&self, id: &str) {
        lock(&self.logs).remove(id);
    }

    /// Writes `flow` (its id given here) to `sandbox`'s log; an open one
    /// is remembered under `key`, to be ended by [`FlowLogs::end`].
    pub fn record(&self, sandbox: &str, key: Option<Key>, mut flow: Flow) {
        let mut logs = lock(&self.logs);
        let Some(log) = logs.get_mut(sandbox) else {
            return;
        };
        log.next += 1;
        flow.id = log.next;
        if log.records.len() == KEPT {
            if let Some(old) = log.records.pop_front() {
                if old.end_ms.is_none() {
                    log.open.retain(|_, id| *id != old.id);
                }
            }
            log.dropped += 1;
        }
        if let (Some(key), None) = (key, flow.end_ms) {
            // A key told open again (the kernel reuses a flow's id once
            // it forgot the flow, whose end was lost): the older record
            // ends where the newer starts.
            if let Some(older) = log.open.insert(key, flow.id) {
                let start = flow.start_ms;
                if let Some(older) = log.find(older) {
                    older.end_ms = Some(start);
                    let older = older.clone();
                    log.send(&older);
                }
            }
        }
        log.send(&flow);
        log.records.push_back(flow);
    }

    /// Ends the open flow of `sandbox` known by `key`: its end and bytes,
    /// and what `change` makes of the rest. `false` if there is none (its
    /// opening was never told, or was pushed out).
    pub fn end(
        &self,
        sandbox: &str,
        key: Key,
        (end_ms, bytes_out, bytes_in): (u64, u64, u64),
        change: impl FnOnce(&mut Flow),
    ) -> bool {
        let mut logs = lock(&self.logs);
        let Some(log) = logs.get_mut(sandbox) else {
            return false;
        };
        let Some(id) = log.open.remove(&key) else {
            return false;
        };
        let Some(flow) = log.find(id) else {
            return false;
        };
        flow.end_ms = Some(end_ms);
        flow.bytes_out = bytes_out;
        flow.bytes_in = bytes_in;
        change(flow);
        let flow = flow.clone();
        log.send(&flow);
        true
    }

    /// Counts `n` records of `sandbox` that were never written (held back
    /// by its rate of events).
    pub fn add_dropped(&self, sandbox: &str, n: u64) {
        if let Some(log) = lock(&self.logs).get_mut(sandbox) {
            log.dropped += n;
        }
    }

    /// Sandbox `id`'s log as it stands and a receiver of its next records;
    /// `None` if it is not open.
    pub fn subscribe(&self, id: &str) -> Option<FlowSubscription> {
        let mut logs = lock(&self.logs);
        let log = logs.get_mut(id)?;
        let live = log
            .live
            .get_or_insert_with(|| broadcast::channel(BACKLOG).0)
            .subscribe();
        let now = FlowLog {
            flows: log.records.iter().cloned().collect(),
            dropped: log.dropped,
        };
        Some((now, live))
    }
}

/// What writing a record needs beside the log: who holds each slot and
/// under which policy, the names that resolved for it, the catalog.
pub(crate) struct Context {
    pub(crate) sandboxes: Arc<crate::Sandboxes>,
    pub(crate) catalog: Arc<Catalog>,
}

/// Why a flow passed, and the name it was for.
struct Why {
    reason: String,
    rule: Option<String>,
    name: Option<String>,
}

impl Context {
    /// The holder of `slot` now.
    fn holder(&self, slot: u32) -> Option<Asker> {
        lock(&self.sandboxes.known).held.get(&slot).cloned()
    }

    /// Why `holder`'s flow to `dest` passed the kernel: the rule for the
    /// address, or, for an address admitted by name, the rule of a name
    /// that resolved to it for the sandbox.
    fn kernel_why(&self, holder: &Asker, dest: IpAddr, port: Option<u16>) -> Why {
        let config = self.sandboxes.live.current();
        let compiled = CompiledPolicy::new(holder.policy.clone(), &self.catalog, &config);
        let names = lock(&self.sandboxes.bindings).names((holder.slot, holder.lease), dest);
        let verdict = compiled.explain(&Destination {
            target: Target::Address(dest),
            port,
        });
        if verdict.allowed {
            return Why {
                reason: verdict.reason.code(),
                rule: Some(verdict.rule),
                name: names.into_iter().next(),
            };
        }
        for name in &names {
            if let Some(rule) = compiled.name_rule(name) {
                return Why {
                    rule: Some(format!(
                        "{name} resolved to this address for the sandbox ({})",
                        rule.code()
                    )),
                    reason: rule.code(),
                    name: Some(name.clone()),
                };
            }
        }
        // Admitted by a name whose binding has ended since (the flow
        // outlived the answer's lifetime).
        Why {
            reason: "name_admitted".into(),
            rule: None,
            name: names.into_iter().next(),
        }
    }

    /// Why `holder`'s connection for `name` passed the gateway.
    fn name_why(&self, holder: &Asker, name: Option<&str>) -> String {
        let config = self.sandboxes.live.current();
        let compiled = CompiledPolicy::new(holder.policy.clone(), &self.catalog, &config);
        match name.and_then(|n| compiled.name_rule(n)) {
            Some(rule) => rule.code(),
            None if holder.policy.mode == Mode::Open => Reason::Open.code(),
            None => "name_admitted".into(),
        }
    }

    /// Writes a flow the kernel told of, for `sandbox`. The end of a
    /// flow whose start this log does not hold (its start was lost, or it
    /// was a slot's earlier holder's, forgotten after the slot changed
    /// hands) is left out: it is no flow of `sandbox`'s that it could
    /// vouch for.
    pub(crate) fn kernel(&self, logs: &FlowLogs, sandbox: &str, f: KernelFlow) {
        let time = millis(f.time);
        if let Some((out, back)) = f.ended {
            if !logs.end(sandbox, Key::Kernel(f.id), (time, out, back), |_| {}) {
                tracing::debug!(
                    sandbox,
                    id = f.id,
                    "the end of a flow whose start is not in the log"
                );
            }
            return;
        }
        let Some(holder) = self.holder(f.slot) else {
            return;
        };
        let why = self.kernel_why(&holder, f.destination, f.port);
        let flow = Flow {
            id: 0,
            start_ms: time,
            end_ms: None,
            protocol: f.protocol,
            source: f.source.to_string(),
            source_port: f.source_port,
            destination: f.destination.to_string(),
            port: f.port,
            name_source: why.name.as_ref().map(|_| NameSource::Dns),
            name: why.name,
            bytes_out: 0,
            bytes_in: 0,
            verdict: FlowVerdict::Allowed,
            reason: why.reason,
            rule: why.rule,
            via: FlowVia::Kernel,
        };
        logs.record(sandbox, Some(Key::Kernel(f.id)), flow);
    }

    /// Writes a connection the gateway told of, for `sandbox`, if the
    /// sandbox still holds the slot under the lease the connection came
    /// under (a record of the slot's earlier holder, told after the slot
    /// changed hands, is left out).
    pub(crate) fn gateway(&self, logs: &FlowLogs, sandbox: &str, f: GatewayFlow) {
        let Some(holder) = self.holder(f.slot).filter(|h| h.lease == f.lease) else {
            return;
        };
        let time = millis(f.time);
        let name_source = f.name.as_ref().map(|_| match f.tls {
            true => NameSource::Sni,
            false => NameSource::Host,
        });
        let base = |verdict, reason: String| Flow {
            id: 0,
            start_ms: millis(f.start),
            end_ms: None,
            protocol: "tcp".into(),
            source: f.source.ip().to_canonical().to_string(),
            source_port: Some(f.source.port()),
            destination: f.destination.ip().to_canonical().to_string(),
            port: Some(f.destination.port()),
            name: f.name.clone(),
            name_source,
            bytes_out: 0,
            bytes_in: 0,
            verdict,
            reason,
            rule: None,
            via: FlowVia::Gateway,
        };
        match f.stage {
            FlowStage::Opened => {
                let reason = self.name_why(&holder, f.name.as_deref());
                let flow = base(FlowVerdict::Allowed, reason);
                logs.record(sandbox, Some(Key::Gateway(f.conn)), flow);
            }
            FlowStage::Closed { up, down } => {
                let name = f.name.clone();
                logs.end(sandbox, Key::Gateway(f.conn), (time, up, down), |flow| {
                    // An HTTP connection's last request's name.
                    if name.is_some() {
                        flow.name = name;
                        flow.name_source = name_source;
                    }
                });
            }
            FlowStage::Refused(code) => {
                let mut flow = base(FlowVerdict::Denied, code);
                flow.end_ms = Some(time);
                logs.record(sandbox, None, flow);
            }
        }
    }

    /// Writes a connection the ruleset refused, for `sandbox`.
    pub(crate) fn denied(&self, logs: &FlowLogs, sandbox: &str, e: &DenyEvent) {
        let time = millis(e.time);
        let flow = Flow {
            id: 0,
            start_ms: time,
            end_ms: Some(time),
            protocol: e.protocol.clone(),
            source: e.source.to_string(),
            source_port: None,
            destination: e.destination.to_string(),
            port: e.port,
            name: None,
            name_source: None,
            bytes_out: 0,
            bytes_in: 0,
            verdict: FlowVerdict::Denied,
            reason: e.reason.clone(),
            rule: None,
            via: FlowVia::Kernel,
        };
        logs.record(sandbox, None, flow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(port: u16, end: Option<u64>) -> Flow {
        Flow {
            id: 0,
            start_ms: 1,
            end_ms: end,
            protocol: "tcp".into(),
            source: "10.77.0.3".into(),
            source_port: Some(40000),
            destination: "192.0.2.10".into(),
            port: Some(port),
            name: None,
            name_source: None,
            bytes_out: 0,
            bytes_in: 0,
            verdict: FlowVerdict::Allowed,
            reason: "open".into(),
            rule: None,
            via: FlowVia::Kernel,
        }
    }

    #[test]
    fn a_flow_is_told_open_then_ended_in_place_and_the_log_is_bounded() {
        let logs = FlowLogs::default();
        logs.open("sb");
        let (_, mut live) = logs.subscribe("sb").unwrap();
        logs.record("sb", Some(Key::Kernel(7)), flow(443, None));
        logs.record("sb", None, flow(80, Some(1)));
        assert!(logs.end("sb", Key::Kernel(7), (5, 100, 200), |_| {}));
        // Ended once only.
        assert!(!logs.end("sb", Key::Kernel(7), (6, 1, 1), |_| {}));
        let (now, _) = logs.subscribe("sb").unwrap();
        assert_eq!(now.flows.len(), 2);
        assert_eq!(now.flows[0].id, 1);
        assert_eq!(now.flows[0].end_ms, Some(5));
        assert_eq!((now.flows[0].bytes_out, now.flows[0].bytes_in), (100, 200));
        let told: Vec<(u64, Option<u64>)> = std::iter::from_fn(|| live.try_recv().ok())
            .map(|f| (f.id, f.end_ms))
            .collect();
        assert_eq!(told, vec![(1, None), (2, Some(1)), (1, Some(5))]);
        // Bounded: the oldest make room, counted, and an open flow pushed
        // out can no longer be ended.
        logs.record("sb", Some(Key::Gateway(1)), flow(443, None));
        for _ in 0..KEPT {
            logs.record("sb", None, flow(80, Some(1)));
        }
        logs.add_dropped("sb", 3);
        let (now, _) = logs.subscribe("sb").unwrap();
        assert_eq!(now.flows.len(), KEPT);
        assert_eq!(now.dropped, 3 + 3);
        assert!(!logs.end("sb", Key::Gateway(1), (9, 1, 1), |_| {}));
        // A key told open again ends the record it named.
        logs.record("sb", Some(Key::Kernel(9)), flow(22, None));
        logs.record("sb", Some(Key::Kernel(9)), {
            let mut f = flow(22, None);
            f.start_ms = 50;
            f
        });
        let (now, _) = logs.subscribe("sb").unwrap();
        let last: Vec<Option<u64>> = now.flows.iter().rev().take(2).map(|f| f.end_ms).collect();
        assert_eq!(last, [None, Some(50)]);
        // A forgotten sandbox keeps nothing.
        logs.forget("sb");
        logs.record("sb", None, flow(80, Some(1)));
        assert!(logs.subscribe("sb").is_none());
    }
}
