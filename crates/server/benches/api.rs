//! API latency through HTTP, in the lab, each beside a baseline measured
//! in the same run:
//!
//! 1. create-to-ready: `POST /api/sandbox` until its 201 (policy in the
//!    kernel, the sandbox's first process running, the row stored), with
//!    a warm pool of network slots; against `runc run --detach` of a
//!    busybox bundle (the OCI runtime's own floor);
//! 2. a network-settings update (`POST .../network-settings` until its
//!    200: validated, resolved, in the kernel, stored); against `GET
//!    /api/sandbox/{id}` (HTTP, auth and a store read: the floor of any
//!    call).
//!
//! `cargo bench -p sandgate-server --bench api` (as root).
//! `SANDGATE_BENCH_RUNS` sets the runs per series (40).

#![allow(clippy::unwrap_used, missing_docs)]

use sandgate_lab::bench::stats;
use sandgate_lab::Lab;
use sandgate_testkit::{Http, InProcess};
use serde_json::json;
use std::time::{Duration, Instant};

const ADMIN: &str = "bench-operator-token";

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = sandgate_lab::bench::runs(40);
    let lab = Lab::up().unwrap();
    let dir = std::env::temp_dir().join(format!("sandgate-bench-api-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = sandgate_testkit::lab_server_config(&lab, &dir, 4, ADMIN);
    let cfg_runner = cfg.runner.clone();
    let server = InProcess::start(cfg, None).unwrap();
    let admin = Http::new(&server.base, ADMIN, Duration::from_secs(60));
    let http = admin.with_key(&admin.organization("bench", 3));
    println!("\ncreate to ready through the API ({runs} runs each, warm pool of 4 slots)");
    // The baseline: runc itself on the bundle of a sandgate sandbox.
    let (s, first) = http.call("POST", "/api/sandbox", Some(json!({"name": "first"})));
    assert_eq!(s, 201);
    let id = first["id"].as_str().unwrap().to_string();
    let bundle = dir.join("runner/runtime/sandboxes").join(&id);
    let base_root = dir.join("runc-baseline");
    let base: Vec<Duration> = (0..runs)
        .map(|i| sandgate_testkit::runc_run_once(&base_root, &bundle, &format!("base{i}")))
        .collect();
    stats("baseline: runc run --detach", &base, None);
    let mut creates = Vec::new();
    for i in 0..runs {
        // Let the pool refill between creates, as between real requests.
        std::thread::sleep(Duration::from_millis(30));
        let t = Instant::now();
        let (s, v) = http.call(
            "POST",
            "/api/sandbox",
            Some(json!({"name": format!("s{i}"), "networkAllowList": "192.0.2.10/32"})),
        );
        creates.push(t.elapsed());
        assert_eq!(s, 201, "{v}");
    }
    stats(
        "POST /api/sandbox (allowlist), to 201",
        &creates,
        Some(&base),
    );
    for i in 0..runs {
        http.call("DELETE", &format!("/api/sandbox/s{i}"), None);
    }

    println!(
        "\nnetwork-settings update through the API ({} runs each)",
        runs * 5
    );
    let mut base = Vec::new();
    for _ in 0..runs * 5 {
        let t = Instant::now();
        let (s, _) = http.call("GET", "/api/sandbox/first", None);
        base.push(t.elapsed());
        assert_eq!(s, 200);
    }
    stats("baseline: GET /api/sandbox/{id}", &base, None);
    let mut updates = Vec::new();
    for i in 0..runs * 5 {
        let list = if i % 2 == 0 {
            "192.0.2.10/32"
        } else {
            "198.51.100.0/24"
        };
        let t = Instant::now();
        let (s, v) = http.call(
            "POST",
            "/api/sandbox/first/network-settings",
            Some(json!({"networkAllowList": list})),
        );
        updates.push(t.elapsed());
        assert_eq!(s, 200, "{v}");
    }
    stats("POST .../network-settings, to 200", &updates, Some(&base));

    http.call("DELETE", "/api/sandbox/first", None);
    drop(server);
    let _ = sandgate_runner::purge_runtime(&cfg_runner);
    let _ = std::fs::remove_dir_all(&dir);
}
