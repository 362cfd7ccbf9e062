//! The rig of the dataplane tests: a lab, a dataplane in its host
//! namespace, and helpers to make sandboxes and probe from them.

#![allow(dead_code, clippy::unwrap_used)]

use sandgate_dataplane::probe::{reachable, Proto};
use sandgate_dataplane::{Dataplane, DataplaneConfig, SlotAddrs};
use sandgate_lab::addrs::*;
use sandgate_lab::Lab;
use sandgate_netns::Netns;
use sandgate_policy::{
    Catalog, CompiledPolicy, Destination, EffectivePolicy, PolicyConfig, SettingsRequest,
};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How long a probe waits for an answer. The lab answers in well under a
/// millisecond; a drop is only seen by waiting.
pub const WAIT: Duration = Duration::from_millis(400);

pub struct Rig {
    pub dp: Option<Dataplane>,
    pub policy: PolicyConfig,
    pub catalog: Catalog,
    pub cfg: DataplaneConfig,
    dir: PathBuf,
    // Dropped last: removes every namespace made in it.
    pub lab: Lab,
}

pub use sandgate_lab::lab_policy;

impl Rig {
    pub fn new() -> Rig {
        Rig::with(|_| {})
    }

    pub fn with(tweak: impl FnOnce(&mut DataplaneConfig)) -> Rig {
        let lab = Lab::up().unwrap();
        let policy = lab_policy();
        let dir = std::env::temp_dir().join(format!("sandgate-test-{}", lab.tag()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = DataplaneConfig::new(&policy, lab.tag(), dir.join("dataplane.json")).unwrap();
        cfg.host_netns = Some(lab.host().name().to_string());
        tweak(&mut cfg);
        let (dp, _) = Dataplane::start(cfg.clone(), policy.clone()).unwrap();
        Rig {
            dp: Some(dp),
            policy,
            catalog: Catalog::builtin(),
            cfg,
            dir,
            lab,
        }
    }

    pub fn dp(&mut self) -> &mut Dataplane {
        self.dp.as_mut().unwrap()
    }

    /// The effective policy of a sandbox of `tier` with these settings.
    pub fn resolve(&self, tier: u8, request: SettingsRequest<'_>) -> EffectivePolicy {
        let settings = self.policy.settings_for_create(tier, &request).unwrap();
        self.policy.resolve(tier, &settings).unwrap()
    }

    /// A sandbox's slot, and its namespace.
    pub fn sandbox(&mut self, name: &str, policy: &EffectivePolicy) -> (SlotAddrs, Netns) {
        let slot = self.dp().create(name, policy).unwrap();
        let ns = Netns::open(&slot.netns).unwrap();
        (slot, ns)
    }

    /// What `explain` says of `dest` (and `port`) under `policy`.
    pub fn expected(&self, policy: &EffectivePolicy, dest: IpAddr, port: Option<u16>) -> bool {
        let compiled = CompiledPolicy::new(policy.clone(), &self.catalog, &self.policy);
        let text = match (dest, port) {
            (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
            (a, Some(p)) => format!("{a}:{p}"),
            (a, None) => a.to_string(),
        };
        let d: Destination = text.parse().unwrap();
        compiled.explain(&d).allowed
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.dp = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn probe(ns: &Netns, proto: Proto, dest: IpAddr, port: u16) -> bool {
    assert!(is_lab_address(dest), "{dest} is not a lab address");
    reachable(ns, proto, dest, port, WAIT).unwrap()
}

pub fn open() -> SettingsRequest<'static> {
    SettingsRequest::default()
}

pub fn allow(list: &'static str) -> SettingsRequest<'static> {
    SettingsRequest {
        network_allow_list: Some(list),
        ..Default::default()
    }
}

pub fn blocked() -> SettingsRequest<'static> {
    SettingsRequest {
        network_block_all: Some(true),
        ..Default::default()
    }
}

/// The rule of an admission for an essential service.
pub fn essential() -> sandgate_policy::Reason {
    sandgate_policy::Reason::EssentialService("python".into())
}

pub fn allow_domains(list: &'static str) -> SettingsRequest<'static> {
    SettingsRequest {
        domain_allow_list: Some(list),
        ..Default::default()
    }
}
