//! The runtime with many sandboxes alive: `Runtime::create` and an exec of
//! `true`, with one sandbox alive against `SANDGATE_LOAD_SANDBOXES`
//! (1,000), each in a network namespace of its own (so the host's mount
//! table holds an overlay and a pin per sandbox, as on a loaded host);
//! beside them, `runc run --detach` of the same bundle started from the
//! host's mount namespace (what the runtime did before it ran runc in a
//! clean one), at both sizes.
//!
//! No traffic: the namespaces have no links.
//! `cargo bench -p sandgate-runtime --bench crowd` (as root).
//! `SANDGATE_BENCH_RUNS` sets the runs per series (20).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use sandgate_lab::bench::stats;
use sandgate_netns::TempNetns;
use sandgate_runtime::{ExecRequest, Runtime, RuntimeConfig};
use std::path::Path;
use std::time::{Duration, Instant};

/// Series of `runs` creates, execs of `true`, and `runc run --detach` of
/// the bundle of sandbox `bundle` from the host's mount namespace.
struct Series {
    create: Vec<Duration>,
    exec: Vec<Duration>,
    runc_host: Vec<Duration>,
}

fn series(rt: &Runtime, dir: &Path, ns: &TempNetns, tag: &str, runs: usize) -> Series {
    let mut s = Series {
        create: Vec::new(),
        exec: Vec::new(),
        runc_host: Vec::new(),
    };
    let truth = ExecRequest {
        command: "true".into(),
        ..Default::default()
    };
    for i in 0..runs {
        let id = format!("{tag}{i}");
        let t = Instant::now();
        rt.create(
            &id,
            "busybox",
            &ns.path(),
            "192.0.2.1".parse().unwrap(),
            &Default::default(),
        )
        .unwrap();
        s.create.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(rt.exec(&id, &truth).unwrap().exit_code, 0);
        s.exec.push(t.elapsed());
        // The same bundle (its overlay is mounted in the host's
        // namespace), run by runc from there, under a state directory of
        // its own.
        let (root, host_id) = (dir.join("runc-host"), format!("host-{id}"));
        let bundle = dir.join("sandboxes").join(&id);
        let t = Instant::now();
        common::runc(
            &root,
            &[
                "run",
                "--detach",
                "--bundle",
                bundle.to_str().unwrap(),
                &host_id,
            ],
        );
        s.runc_host.push(t.elapsed());
        common::runc(&root, &["delete", "--force", &host_id]);
        rt.delete(&id).unwrap();
    }
    s
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let total = sandgate_lab::bench::load_sandboxes(1000);
    let runs = sandgate_lab::bench::runs(20);
    let dir = std::env::temp_dir().join(format!("sandgate-bench-crowd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = Runtime::new(RuntimeConfig::new(dir.clone())).unwrap();
    rt.build_busybox("busybox").unwrap();
    let tag = format!("sgcr{}", std::process::id());
    let ns = TempNetns::new(&format!("{tag}-probe")).unwrap();
    let one = series(&rt, &dir, &ns, "a", runs);

    let t = Instant::now();
    let mut crowd = Vec::new();
    for i in 0..total {
        let pin = TempNetns::new(&format!("{tag}-{i}")).unwrap();
        rt.create(
            &format!("crowd{i}"),
            "busybox",
            &pin.path(),
            "192.0.2.1".parse().unwrap(),
            &Default::default(),
        )
        .unwrap();
        crowd.push(pin);
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    println!(
        "\n{total} sandboxes made in {:.1} s; the host's mount table holds {mounts} entries",
        t.elapsed().as_secs_f64()
    );
    let all = series(&rt, &dir, &ns, "b", runs);

    println!("\n{runs} runs each, one alive against {} alive", total + 1);
    stats("Runtime::create, one alive", &one.create, None);
    stats("Runtime::create, all alive", &all.create, Some(&one.create));
    stats("exec of true, one alive", &one.exec, None);
    stats("exec of true, all alive", &all.exec, Some(&one.exec));
    stats(
        "runc run --detach from the host's namespace, one alive",
        &one.runc_host,
        None,
    );
    stats(
        "runc run --detach from the host's namespace, all alive",
        &all.runc_host,
        Some(&one.runc_host),
    );

    for i in 0..total {
        rt.delete(&format!("crowd{i}")).unwrap();
    }
    drop(crowd);
    let _ = std::fs::remove_dir_all(&dir);
}
