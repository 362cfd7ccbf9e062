//! Slots over their life: many create/delete cycles leave nothing behind;
//! a restart puts every slot's policy back and removes what belongs to no
//! slot; a kill -9 at any moment leaves every slot at its intended policy
//! or removed.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sandgate_dataplane::probe::Proto;
use sandgate_dataplane::ruleset::{
    allow_set, dropped_set, meter_set, mode_chain, LOG_CLASSES, SHARDS,
};
use sandgate_dataplane::state::{Phase, State};
use sandgate_dataplane::{Dataplane, DataplaneConfig};
use sandgate_lab::addrs::*;
use sandgate_netns::{Netns, Rtnl};
use sandgate_nftables::list_set;
use sandgate_policy::Mode;
use std::collections::BTreeSet;
use std::io::BufRead;
use std::time::{Duration, Instant};

/// Every per-slot set and map of the ruleset.
fn per_slot_sets() -> Vec<String> {
    let mut sets: Vec<String> = [
        "slots",
        "src4",
        "src6",
        "mode",
        "back_mode",
        "netgen",
        "dnsgen",
        "admit4",
        "admit6",
        "shares",
        "dns_shares",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // What traffic leaves in the dynamic sets: log meters, held-back
    // counts, connection counts and rates (a deleted slot's go with it).
    for class in LOG_CLASSES {
        sets.push(meter_set(class));
        sets.push(dropped_set(class));
    }
    for class in DataplaneConfig::new(&lab_policy(), "x", "x".into())
        .unwrap()
        .share_classes
    {
        sets.extend(class.sets());
    }
    for k in 0..SHARDS {
        for v4 in [true, false] {
            for private in [true, false] {
                sets.push(allow_set(v4, private, k));
            }
        }
    }
    sets
}

fn iface_of(value: &serde_json::Value) -> Option<u32> {
    let name = match value {
        serde_json::Value::String(s) => s.as_str(),
        serde_json::Value::Array(parts) => parts.first()?.as_str()?,
        _ => return None,
    };
    name.strip_prefix("sgh")?.parse().ok()
}

/// The slot indexes each per-slot set holds elements for.
fn kernel_slots(host: &Netns, table: &str) -> Vec<(String, BTreeSet<u32>)> {
    host.run(|| {
        let mut out = Vec::new();
        for set in per_slot_sets() {
            let elems = list_set(table, &set)?.unwrap_or_default();
            let slots = elems.iter().filter_map(|e| iface_of(&e.value)).collect();
            out.push((set, slots));
        }
        Ok(out)
    })
    .unwrap()
}

/// The kernel and the state file agree: the namespaces and links are those
/// of the recorded slots, and exactly the active ones have policy elements,
/// the policy recorded.
fn assert_consistent(host: &Netns, cfg: &DataplaneConfig) {
    let state = State::load(&cfg.state_file).unwrap();
    let recorded: BTreeSet<u32> = state.slots.keys().copied().collect();
    let active: BTreeSet<u32> = state
        .slots
        .iter()
        .filter(|(_, r)| r.phase == Phase::Active)
        .map(|(i, _)| *i)
        .collect();
    for (i, r) in &state.slots {
        assert!(
            matches!(r.phase, Phase::Active | Phase::Pool),
            "slot {i} left {:?}",
            r.phase
        );
    }
    let namespaces: BTreeSet<u32> = Netns::list(&format!("{}-s", cfg.instance))
        .unwrap()
        .iter()
        .filter_map(|n| cfg.index_of_netns(n))
        .collect();
    assert_eq!(namespaces, recorded, "namespaces");
    let links: BTreeSet<u32> = host
        .run(|| Rtnl::open()?.links())
        .unwrap()
        .iter()
        .filter_map(|l| l.name.strip_prefix("sgh")?.parse().ok())
        .collect();
    assert_eq!(links, recorded, "links");
    // Each active slot's mode in the kernel is its recorded mode.
    let modes = host
        .run(|| list_set(&cfg.table, "mode"))
        .unwrap()
        .unwrap_or_default();
    for e in modes {
        let index = iface_of(&e.value).unwrap();
        let target = e.value[1]["jump"]["target"].as_str().unwrap().to_string();
        let recorded = state.slots[&index].policy.as_ref().unwrap().mode;
        assert_eq!(
            target,
            mode_chain(recorded.as_str(), false, index),
            "slot {index}"
        );
    }
    // `valid` holds exactly the active slots' current marks, by mark
    // alone (generations are unique across slots).
    let valid: BTreeSet<u64> = host
        .run(|| list_set(&cfg.table, "valid"))
        .unwrap()
        .unwrap_or_default()
        .iter()
        .map(|e| e.value[0].as_u64().unwrap())
        .collect();
    let current: BTreeSet<u64> = state
        .slots
        .values()
        .filter(|r| r.phase == Phase::Active)
        .flat_map(|r| [r.gens.net_mark(), r.gens.dns_mark()])
        .filter(|m| *m != 0)
        .map(u64::from)
        .collect();
    assert_eq!(valid, current, "valid marks");
    for (set, slots) in kernel_slots(host, &cfg.table) {
        match &*set {
            "slots" | "src4" | "src6" | "mode" | "back_mode" | "netgen" | "dnsgen" | "shares"
            | "dns_shares" => {
                assert_eq!(slots, active, "set {set}")
            }
            _ => assert!(
                slots.is_subset(&active),
                "set {set} holds {slots:?}, active {active:?}"
            ),
        }
    }
}

#[test]
fn a_thousand_create_delete_cycles_leave_nothing_behind() {
    let cycles: usize = std::env::var("SANDGATE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut rig = Rig::with(|c| c.warm_pool = 2);
    let policies = [
        rig.resolve(3, open()),
        rig.resolve(3, allow("192.0.2.10/32, 203.0.113.128/26, 2001:db8:2::/48")),
        rig.resolve(1, open()),
        rig.resolve(3, blocked()),
    ];
    let started = Instant::now();
    for i in 0..cycles {
        let p = &policies[i % policies.len()];
        let slot = rig.dp().create(&format!("cycle-{i}"), p).unwrap();
        if p.mode.as_str() == "restricted" {
            rig.dp()
                .admit(slot.index, SERVER4, &essential(), Duration::from_secs(60))
                .unwrap();
        }
        // Now and then, traffic: a connection let out or denied leaves
        // elements in the dynamic sets (counts, meters), which the delete
        // must take along.
        if i % 100 < 4 {
            let ns = Netns::open(&slot.netns).unwrap();
            probe(&ns, Proto::Tcp, SERVER4, TCP_ECHO);
        }
        rig.dp().delete(slot.index).unwrap();
        rig.dp().fill_pool().unwrap();
    }
    eprintln!("{cycles} cycles in {:?}", started.elapsed());
    let host = Netns::open(rig.lab.host().name()).unwrap();
    assert_consistent(&host, &rig.cfg);
    // Only the warm pool is left, with no policy, and the state says so.
    let state = State::load(&rig.cfg.state_file).unwrap();
    assert_eq!(state.slots.len(), 2);
    assert!(state.slots.values().all(|r| r.phase == Phase::Pool));
    for (set, slots) in kernel_slots(&host, &rig.cfg.table) {
        assert!(slots.is_empty(), "{set} still holds {slots:?}");
    }
    // Deleting the pool too leaves the host as the lab made it.
    let indexes: Vec<u32> = state.slots.keys().copied().collect();
    rig.dp.as_mut().unwrap();
    let mut cfg = rig.cfg.clone();
    cfg.warm_pool = 0;
    rig.dp = None;
    let (mut dp, _) = Dataplane::start(cfg.clone(), rig.policy.clone()).unwrap();
    for i in indexes {
        dp.delete(i).unwrap();
    }
    assert!(Netns::list(&format!("{}-s", cfg.instance))
        .unwrap()
        .is_empty());
    rig.lab.assert_isolated_with("no-slot-links-left").unwrap();
}

#[test]
fn a_restart_puts_policies_back_and_removes_strays() {
    let mut rig = Rig::new();
    let listed = rig.resolve(3, allow("192.0.2.10/32"));
    let restricted = rig.resolve(1, open());
    let (a, ns_a) = rig.sandbox("a", &listed);
    let (b, ns_b) = rig.sandbox("b", &restricted);
    rig.dp()
        .admit(b.index, SERVER4_B, &essential(), Duration::from_secs(300))
        .unwrap();
    // Leftovers of no slot: a namespace and a link.
    let stray_ns = Netns::create(&format!("{}-s77", rig.lab.tag())).unwrap();
    let fd = stray_ns.fd();
    rig.lab
        .host()
        .run(|| Rtnl::open()?.add_veth("sgh78", "x", Some(fd)))
        .unwrap();
    // The daemon goes away: enforcement stays in the kernel.
    rig.dp = None;
    assert!(probe(&ns_a, Proto::Tcp, SERVER4, TCP_ECHO));
    assert!(!probe(&ns_a, Proto::Tcp, SERVER4_B, TCP_ECHO));
    // It comes back.
    let (dp, report) = Dataplane::start(rig.cfg.clone(), rig.policy.clone()).unwrap();
    rig.dp = Some(dp);
    assert_eq!(report.restored, vec![a.index, b.index]);
    let mut strays = report.strays.clone();
    strays.sort();
    assert_eq!(strays.len(), 2, "{strays:?}");
    assert!(Netns::open(&format!("{}-s77", rig.lab.tag())).is_err());
    let host = Netns::open(rig.lab.host().name()).unwrap();
    assert_consistent(&host, &rig.cfg);
    // Same behaviour as before, the admission included.
    assert!(probe(&ns_a, Proto::Tcp, SERVER4, TCP_ECHO));
    assert!(!probe(&ns_a, Proto::Tcp, SERVER4_B, TCP_ECHO));
    assert!(probe(&ns_b, Proto::Tcp, SERVER4_B, TCP_ECHO));
    assert!(!probe(&ns_b, Proto::Tcp, SERVER4, TCP_ECHO));
}

/// The child of the kill -9 test: works the dataplane of an existing lab
/// until it is killed. Run by the test below, never on its own.
#[test]
#[ignore]
fn child_worker() {
    let Ok(spec) = std::env::var("SANDGATE_CHILD") else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let policy = lab_policy();
    let mut cfg = DataplaneConfig::new(
        &policy,
        v["instance"].as_str().unwrap(),
        v["state"].as_str().unwrap().into(),
    )
    .unwrap();
    cfg.host_netns = Some(v["host"].as_str().unwrap().to_string());
    cfg.warm_pool = 1;
    let (mut dp, _) = Dataplane::start(cfg, policy.clone()).unwrap();
    let policies = [
        policy
            .resolve(
                3,
                &policy
                    .settings_for_create(3, &allow("192.0.2.10/32"))
                    .unwrap(),
            )
            .unwrap(),
        policy
            .resolve(3, &policy.settings_for_create(3, &blocked()).unwrap())
            .unwrap(),
        policy
            .resolve(1, &policy.settings_for_create(1, &open()).unwrap())
            .unwrap(),
    ];
    // Slots of earlier children count too, so that their number stays small.
    let mut live: Vec<u32> = dp.active_slots().into_iter().map(|(i, _)| i).collect();
    for i in 0.. {
        let p = &policies[i % 3];
        match i % 4 {
            0 | 1 => live.push(dp.create(&format!("k{i}"), p).unwrap().index),
            2 => {
                if let Some(&s) = live.last() {
                    dp.update(s, p).unwrap();
                }
            }
            _ => {
                if live.len() > 3 {
                    let s = live.remove(0);
                    dp.delete(s).unwrap();
                }
            }
        }
        dp.fill_pool().unwrap();
        println!("op {i}");
    }
}

#[test]
fn kill_9_at_any_moment_leaves_every_slot_intended_or_removed() {
    let trials: u64 = std::env::var("SANDGATE_KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let mut rig = Rig::new();
    rig.dp = None;
    let spec = serde_json::json!({
        "instance": rig.cfg.instance,
        "state": rig.cfg.state_file,
        "host": rig.lab.host().name(),
    })
    .to_string();
    let host = Netns::open(rig.lab.host().name()).unwrap();
    let mut rng = sandgate_lab::bench::XorShift::new(0x9e3779b97f4a7c15);
    let mut restored_any = false;
    for trial in 0..trials {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_worker",
                "--ignored",
                "--test-threads=1",
                "--nocapture",
            ])
            .env("SANDGATE_CHILD", &spec)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill it after a random number of operations, while it is busy
        // with the next one.
        let target = 3 + rng.below(40);
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut done = 0;
        while done < target {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("op ") => done += 1,
                Some(Ok(_)) => {}
                _ => panic!("the child stopped before being killed"),
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (dp, report) = Dataplane::start(rig.cfg.clone(), rig.policy.clone()).unwrap();
        assert_consistent(&host, &rig.cfg);
        eprintln!(
            "trial {trial}: killed after {done} operations; restored {:?}, removed {:?}",
            report.restored, report.removed
        );
        restored_any |= !report.restored.is_empty();
        drop(dp);
    }
    assert!(
        restored_any,
        "no trial had a slot to restore: the child did nothing"
    );
    // Every restored slot enforces its recorded policy.
    let (mut dp, _) = Dataplane::start(rig.cfg.clone(), rig.policy.clone()).unwrap();
    let state = State::load(&rig.cfg.state_file).unwrap();
    for (i, r) in &state.slots {
        if let (Phase::Active, Some(p)) = (r.phase, &r.policy) {
            let ns = Netns::open(&dp.slot(*i).netns).unwrap();
            assert_eq!(
                probe(&ns, Proto::Tcp, SERVER4, TCP_ECHO),
                p.mode == Mode::Allowlist,
                "slot {i} in {}",
                p.mode
            );
        }
    }
    for (i, _) in dp.active_slots() {
        dp.delete(i).unwrap();
    }
}
