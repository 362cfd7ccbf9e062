//! Runtime benchmarks, each against runc itself in the same run, in the
//! lab (nothing leaves the machine):
//!
//! 1. create-to-first-exec: a dataplane slot (cold, then from the warm
//!    pool) with its policy, `Runtime::create`, and a first `exec` of
//!    `true` returning; against `runc run --detach` of the same bundle
//!    followed by `runc exec ... /bin/true`;
//! 2. exec round trip: `Runtime::exec` of `true` against `runc exec` of
//!    `/bin/true` on the same container;
//! 3. the `runsc` runtime class (gVisor) against the `runc` class, both
//!    through sandgate: create to first exec (warm slot) and the exec
//!    round trip: what choosing gVisor costs.
//!
//! `cargo bench -p sandgate-runtime --bench runtime` (as root).
//! `SANDGATE_BENCH_RUNS` sets the runs per series (40).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::runc;
use sandgate_dataplane::{Dataplane, DataplaneConfig};
use sandgate_lab::bench::stats;
use sandgate_lab::{lab_policy, Lab};
use sandgate_netns::Netns;
use sandgate_policy::{EffectivePolicy, PolicyConfig};
use sandgate_runtime::{ExecRequest, Resources, Runtime, RuntimeClass, RuntimeConfig};
use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

/// The dataplane on the state in `dir` (fresh or as after a restart) with
/// a warm pool of `pool`.
fn dataplane(lab: &Lab, policy: &PolicyConfig, dir: &Path, pool: usize) -> Dataplane {
    let mut cfg = DataplaneConfig::new(policy, lab.tag(), dir.join("dataplane.json")).unwrap();
    cfg.host_netns = Some(lab.host().name().to_string());
    cfg.warm_pool = pool;
    Dataplane::start(cfg, policy.clone()).unwrap().0
}

/// Slot, sandbox of `class` and first exec, timed, `runs` times.
fn create_to_first_exec(
    dp: &mut Dataplane,
    rt: &Runtime,
    effective: &EffectivePolicy,
    class: RuntimeClass,
    runs: usize,
) -> Vec<std::time::Duration> {
    let first = ExecRequest {
        command: "true".into(),
        ..Default::default()
    };
    let mut times = Vec::new();
    for i in 0..runs {
        dp.fill_pool().unwrap();
        let id = format!("s{i}");
        let t = Instant::now();
        let slot = dp.create(&id, effective).unwrap();
        rt.create(
            &id,
            "busybox",
            &Netns::path_of(&slot.netns),
            IpAddr::V4(slot.gateway4),
            &Resources {
                class,
                ..Default::default()
            },
        )
        .unwrap();
        let r = rt.exec(&id, &first).unwrap();
        times.push(t.elapsed());
        assert_eq!(r.exit_code, 0);
        rt.delete(&id).unwrap();
        dp.delete(slot.index).unwrap();
    }
    times
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = sandgate_lab::bench::runs(40);
    let lab = Lab::up().unwrap();
    let policy = lab_policy();
    let dir = std::env::temp_dir().join(format!("sandgate-bench-rt-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut dp = dataplane(&lab, &policy, &dir, 0);
    let rt = Runtime::new(RuntimeConfig::new(dir.join("runtime"))).unwrap();
    rt.build_busybox("busybox").unwrap();
    let request = sandgate_policy::SettingsRequest {
        network_allow_list: Some("192.0.2.10/32"),
        ..Default::default()
    };
    let effective = policy
        .resolve(3, &policy.settings_for_create(3, &request).unwrap())
        .unwrap();

    // One sandbox whose bundle the baseline runs again and again (under a
    // runc state directory of its own).
    let slot = dp.create("bench", &effective).unwrap();
    rt.create(
        "bench",
        "busybox",
        &Netns::path_of(&slot.netns),
        IpAddr::V4(slot.gateway4),
        &Default::default(),
    )
    .unwrap();
    let bundle = dir.join("runtime/sandboxes/bench");
    let base_root = dir.join("runc-baseline");

    println!("\ncreate to first exec ({runs} runs each)");
    let mut base = Vec::new();
    for i in 0..runs {
        let id = format!("base{i}");
        let t = Instant::now();
        runc(
            &base_root,
            &["run", "--detach", "--bundle", bundle.to_str().unwrap(), &id],
        );
        runc(&base_root, &["exec", &id, "/bin/true"]);
        base.push(t.elapsed());
        runc(&base_root, &["delete", "--force", &id]);
    }
    stats("baseline: runc run --detach + runc exec", &base, None);
    let cold = create_to_first_exec(&mut dp, &rt, &effective, RuntimeClass::Runc, runs);
    stats(
        "sandgate slot + create + exec, cold slot",
        &cold,
        Some(&base),
    );
    drop(dp);
    let mut dp = dataplane(&lab, &policy, &dir, 2);
    let warm = create_to_first_exec(&mut dp, &rt, &effective, RuntimeClass::Runc, runs);
    stats(
        "sandgate slot + create + exec, warm slot",
        &warm,
        Some(&base),
    );

    let n = runs * 5;
    println!("\nexec round trip ({n} runs each)");
    let mut base = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        runc(&dir.join("runtime/runc"), &["exec", "bench", "/bin/true"]);
        base.push(t.elapsed());
    }
    stats("baseline: runc exec /bin/true", &base, None);
    let command = ExecRequest {
        command: "true".into(),
        ..Default::default()
    };
    let mut ours = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let r = rt.exec("bench", &command).unwrap();
        ours.push(t.elapsed());
        assert_eq!(r.exit_code, 0);
    }
    stats("sandgate exec true", &ours, Some(&base));

    if let Err(e) = rt.usable(RuntimeClass::Runsc) {
        println!("\nthe runsc class: not measured ({e})");
    } else {
        println!("\nthe runsc class (gVisor) against the runc class, both through sandgate");
        let gvisor = create_to_first_exec(&mut dp, &rt, &effective, RuntimeClass::Runsc, runs);
        stats("runc class: slot + create + exec, warm slot", &warm, None);
        stats(
            "runsc class: slot + create + exec, warm slot",
            &gvisor,
            Some(&warm),
        );
        let slot = dp.create("gvisor", &effective).unwrap();
        rt.create(
            "gvisor",
            "busybox",
            &Netns::path_of(&slot.netns),
            IpAddr::V4(slot.gateway4),
            &Resources {
                class: RuntimeClass::Runsc,
                ..Default::default()
            },
        )
        .unwrap();
        let mut theirs = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            let r = rt.exec("gvisor", &command).unwrap();
            theirs.push(t.elapsed());
            assert_eq!(r.exit_code, 0);
        }
        stats("runc class: exec true", &ours, None);
        stats("runsc class: exec true", &theirs, Some(&ours));
        rt.delete("gvisor").unwrap();
        dp.delete(slot.index).unwrap();
    }

    rt.delete("bench").unwrap();
    dp.delete(slot.index).unwrap();
    drop(dp);
    let _ = std::fs::remove_dir_all(&dir);
}
