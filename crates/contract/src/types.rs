//! The requests a runner takes and the answers it gives.

use sandgate_policy::{EffectivePolicy, Resources, RuntimeClass};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::Duration;

/// A sandbox to make ([`crate::Runner::create`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Its id.
    pub id: String,
    /// Its organization (whose DNS answers it shares).
    pub organization: String,
    /// The snapshot it starts from.
    pub snapshot: String,
    /// Its policy.
    pub policy: EffectivePolicy,
    /// Its memory, CPU and disk, as resolved for its tier.
    pub resources: Resources,
    /// The OCI runtime it runs under, as resolved for its tier (runc from
    /// an API that does not say).
    #[serde(default)]
    pub runtime_class: RuntimeClass,
    /// Its secrets, with their values: held in the runner's memory only,
    /// for the gateway to put in their placeholders' place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SandboxSecret>,
}

/// A snapshot made from an OCI image ([`crate::Runner::pull_snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PulledSnapshot {
    /// The snapshot's name.
    pub name: String,
    /// The image, its reference in full (`docker.io/library/python:3.12-slim`).
    pub image: String,
    /// The digest of the manifest it was made from (this platform's).
    pub digest: String,
    /// Its layers.
    pub layers: usize,
    /// How many of them this pull fetched (the rest the runner held).
    pub fetched: usize,
}

/// A secret of a sandbox, as its runner gets it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSecret {
    /// Its name (the environment variable holding the placeholder).
    pub name: String,
    /// The placeholder the sandbox sees.
    pub placeholder: String,
    /// The value.
    pub value: String,
    /// The hosts it is for: names and `*.` wildcards, canonical.
    pub hosts: Vec<String>,
}

impl std::fmt::Debug for SandboxSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the value: specs are logged.
        f.debug_struct("SandboxSecret")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// A sandbox the API expects [`crate::Runner::restore`] to take back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    /// Its id.
    pub id: String,
    /// Its organization (whose DNS answers it shares).
    pub organization: String,
    /// Its policy, as the API resolves it now.
    pub policy: EffectivePolicy,
    /// Its secrets (see [`SandboxSpec::secrets`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SandboxSecret>,
}

/// What [`crate::Runner::restore`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// Sandboxes running again with their policy re-applied.
    pub running: Vec<String>,
    /// Sandboxes whose init died while the runner was away: kept, with
    /// their files and slot, and not started again.
    pub died: Vec<String>,
    /// Sandboxes expected but lost (no slot or no runtime sandbox left,
    /// as after a reboot): whatever was left of them is removed.
    pub lost: Vec<String>,
    /// Slots and runtime sandboxes nobody expected (a create cut short),
    /// removed.
    pub removed: Vec<String>,
}

/// A command to run in a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The command, run by `/bin/sh -c`.
    pub command: String,
    /// The working directory.
    pub cwd: Option<String>,
    /// Environment variables, `NAME=value`.
    pub env: Vec<(String, String)>,
    /// Kill the command after this long.
    pub timeout: Option<Duration>,
}

/// What came of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// The exit code (128 + signal for a command killed by a signal).
    pub exit_code: i32,
    /// Its standard output, up to the cap.
    pub stdout: String,
    /// Its standard error, up to the cap.
    pub stderr: String,
    /// stdout then stderr: the reference API's `result`.
    pub result: String,
    /// Whether the timeout killed it.
    pub timed_out: bool,
    /// Whether output beyond the cap was dropped.
    pub truncated: bool,
}

/// A destination to probe: an address or a name, and a TCP port; written
/// as `host:port` (`[v6]:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// An address or a name.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl std::str::FromStr for ProbeTarget {
    type Err = String;

    /// `host:port`, `[v6]:port`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: give a target as host:port or [IPv6]:port");
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
            (h, p)
        } else {
            s.rsplit_once(':').ok_or_else(bad)?
        };
        let port = port.parse().map_err(|_| bad())?;
        if host.is_empty() || (host.contains(':') && host.parse::<IpAddr>().is_err()) {
            return Err(bad());
        }
        Ok(ProbeTarget {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl std::fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for ProbeTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ProbeTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// The target.
    pub target: ProbeTarget,
    /// The addresses its name resolved to (the address itself for one).
    pub addresses: Vec<IpAddr>,
    /// Whether a connection got through.
    pub reachable: bool,
    /// What happened, for a person: `connected`, `refused by the
    /// destination`, `no answer`, `DNS refused: ...`, ...
    pub detail: String,
}

/// A sandbox's transfer quota as its runner's kernel counts it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferUsage {
    /// Bytes both ways a period.
    pub quota_bytes: u64,
    /// Bytes counted this period, at most `quota_bytes`.
    pub used_bytes: u64,
    /// Whether the quota is spent: nothing passes until the period ends.
    pub spent: bool,
    /// When the period began and ends, milliseconds since the epoch.
    pub period_start_ms: u64,
    /// See `period_start_ms`.
    pub period_end_ms: u64,
}

/// What a runner has counted so far (for the API's metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// New connections let out, as last sampled: (by a list or the mode,
    /// by a DNS admission); `None` before the first sample.
    pub allowed: Option<(u64, u64)>,
    /// What the DNS service has done.
    pub dns: DnsCounts,
    /// Network events by kind and reason (for `dropped`, the events held
    /// back, by their reason).
    pub events: Vec<(crate::EventKind, String, u64)>,
    /// What the name-checking gateway has done.
    #[serde(default)]
    pub gateway: GatewayCounts,
    /// Records the flow log lost before they were written: the kernel's
    /// socket overflowed, or the queue of the kernel's or the gateway's
    /// records was full.
    #[serde(default)]
    pub flows_lost: u64,
}

impl Counts {
    /// Adds `other`'s counts to these (the counts of several runners as
    /// one).
    pub fn add(&mut self, other: &Counts) {
        self.allowed = match (self.allowed, other.allowed) {
            (Some((a, b)), Some((c, d))) => Some((a + c, b + d)),
            (mine, theirs) => mine.or(theirs),
        };
        let (d, o) = (&mut self.dns, &other.dns);
        for (mine, theirs) in [
            (&mut d.forwarded, o.forwarded),
            (&mut d.cache_hits, o.cache_hits),
            (&mut d.refused, o.refused),
            (&mut d.admitted, o.admitted),
            (&mut d.rebinding, o.rebinding),
            (&mut d.upstream_failures, o.upstream_failures),
            (&mut d.busy, o.busy),
            (&mut d.rate_limited, o.rate_limited),
            (&mut d.tcp_refused, o.tcp_refused),
            (&mut d.stale, o.stale),
            (&mut d.held, o.held),
            (&mut d.held_approved, o.held_approved),
            (&mut d.upstream_unmatched, o.upstream_unmatched),
        ] {
            *mine += theirs;
        }
        for (kind, reason, n) in &other.events {
            match self
                .events
                .iter_mut()
                .find(|(k, r, _)| k == kind && r == reason)
            {
                Some((_, _, mine)) => *mine += n,
                None => self.events.push((*kind, reason.clone(), *n)),
            }
        }
        let (g, o) = (&mut self.gateway, &other.gateway);
        g.accepted += o.accepted;
        g.passed += o.passed;
        g.refused += o.refused;
        g.cut += o.cut;
        g.active += o.active;
        self.flows_lost += other.flows_lost;
    }
}

/// How many sandboxes a runner can hold (its network slots), and holds,
/// and the runtime classes its host can run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// The sandboxes it can hold.
    pub slots: u32,
    /// The sandboxes it holds now.
    pub used: u32,
    /// The runtime classes it can run (runc alone from a runner that
    /// does not say).
    #[serde(default = "runc_alone")]
    pub runtime_classes: Vec<RuntimeClass>,
}

fn runc_alone() -> Vec<RuntimeClass> {
    vec![RuntimeClass::Runc]
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            slots: 0,
            used: 0,
            runtime_classes: runc_alone(),
        }
    }
}

impl Capacity {
    /// The sandboxes it can still take.
    pub fn free(&self) -> u32 {
        self.slots.saturating_sub(self.used)
    }
}

/// What a runner's name-checking gateway has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayCounts {
    /// Connections steered to it.
    pub accepted: u64,
    /// Connections it passed on to their destination.
    pub passed: u64,
    /// Connections it reset (each with a deny event).
    pub refused: u64,
    /// Connections it cut because a policy change no longer allowed them.
    pub cut: u64,
    /// Connections open through it now.
    pub active: u64,
}

/// What a runner's DNS service has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCounts {
    /// Queries forwarded upstream.
    pub forwarded: u64,
    /// Queries answered from the cache.
    pub cache_hits: u64,
    /// Queries refused.
    pub refused: u64,
    /// Addresses admitted.
    pub admitted: u64,
    /// Answers stripped of private addresses.
    pub rebinding: u64,
    /// Queries no upstream resolver answered.
    pub upstream_failures: u64,
    /// Queries turned away: their sandbox had its most waiting upstream.
    pub busy: u64,
    /// Queries over their sandbox's rate.
    pub rate_limited: u64,
    /// TCP connections closed at once (a sandbox's or the service's most).
    pub tcp_refused: u64,
    /// Answers and admissions dropped: the slot changed hands meanwhile.
    pub stale: u64,
    /// Refused queries held for an approval.
    #[serde(default)]
    pub held: u64,
    /// Held queries answered because an approval came in time.
    #[serde(default)]
    pub held_approved: u64,
    /// Datagrams on the upstream pool that answered no query.
    pub upstream_unmatched: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_targets_read_host_and_port_and_refuse_the_rest() {
        let t: ProbeTarget = "Example.COM:443".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("example.com", 443));
        let t: ProbeTarget = "[2001:db8::1]:80".parse().unwrap();
        assert_eq!(t.to_string(), "[2001:db8::1]:80");
        // It crosses between hosts as it is written.
        assert_eq!(serde_json::to_value(&t).unwrap(), "[2001:db8::1]:80");
        let back: ProbeTarget =
            serde_json::from_value(serde_json::json!("[2001:db8::1]:80")).unwrap();
        assert_eq!(back, t);
        for bad in ["example.com", ":443", "[2001:db8::1]", "a:99999", "::1"] {
            assert!(bad.parse::<ProbeTarget>().is_err(), "{bad}");
        }
    }
}
