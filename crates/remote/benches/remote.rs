//! What the API adds over its runner, in process and across HTTP, in the
//! lab, the three series taking turns in one run over one runner:
//!
//! 1. create-to-ready: the runner's own `create` (slot, policy in the
//!    kernel, DNS service told, runc), the baseline; `POST /api/sandbox`
//!    to its 201 through a server with that runner in its process; the
//!    same through a server driving it over HTTP on loopback
//!    (`RemoteRunner`); the same through a replica whose store is on
//!    PostgreSQL (a cluster of the bench's own on a Unix socket, Debian's
//!    package), driving it over HTTP: the write lock is then PostgreSQL's
//!    advisory lock with its journal;
//! 2. a policy update: the runner's own `update`, the baseline; `POST
//!    .../network-settings` to its 200 through each server.
//!
//! The target (issue 16): the API adds at most 5 ms p50 over the
//! runner's own time.
//!
//! `cargo bench -p sandgate-remote --bench remote` (as root).
//! `SANDGATE_BENCH_RUNS` sets the runs per series (40).

#![allow(clippy::unwrap_used, missing_docs)]

use sandgate_contract::{Runner, SandboxSpec};
use sandgate_lab::bench::stats;
use sandgate_lab::Lab;
use sandgate_policy::{EffectivePolicy, SettingsRequest};
use sandgate_remote::{service, RemoteRunner};
use sandgate_testkit::{Http, InProcess, Purge};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN: &str = "bench-operator-token";
const TOKEN: &str = "bench-runner-token-of-sixteen";
const LISTS: [&str; 2] = ["192.0.2.10/32", "198.51.100.0/24"];

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = sandgate_lab::bench::runs(40);
    let lab = Lab::up().unwrap();
    let dir = std::env::temp_dir().join(format!("sandgate-bench-remote-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = sandgate_testkit::lab_server_config(&lab, &dir, 4, ADMIN);
    cfg.runner.warm_disk = sandgate_runner::usual_disk(&cfg.policy);
    let _purge = Purge(cfg.runner.clone(), dir.clone());
    let runner = Arc::new(
        sandgate_runner::Runner::start(
            cfg.runner.clone(),
            Arc::new(cfg.policy.clone()),
            Arc::new(cfg.catalog.clone()),
        )
        .unwrap(),
    );

    // The runner served on loopback, twice: a runner serves one store's
    // APIs (it refuses a change without a write lock's generation after
    // one with), and two of the servers below have stores of different
    // kinds.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let serve = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served: Arc<dyn Runner> = runner.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let router = service::router(served, TOKEN).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
        url
    };
    let (url, pg_url) = (serve(), serve());

    // Two servers over it, each with a store of its own: one holds it in
    // its process, one drives it over HTTP.
    let local_cfg = {
        let mut c = cfg.clone();
        c.data_dir = dir.join("local");
        c
    };
    let remote_cfg = {
        let mut c = cfg.clone();
        c.data_dir = dir.join("remote");
        c
    };
    let in_process: Arc<dyn Runner> = runner.clone();
    let local = InProcess::start_with_runner(local_cfg, in_process).unwrap();
    let remote_runner = RemoteRunner::connect(&url, TOKEN, cfg.policy.clone()).unwrap();
    let remote = InProcess::start_with_runner(remote_cfg, Arc::new(remote_runner)).unwrap();
    let pg = sandgate_testkit::postgres::Postgres::start().unwrap();
    let replica = {
        let mut c = cfg.clone();
        c.data_dir = dir.join("replica");
        c.database = Some(pg.database("bench").unwrap());
        let r = RemoteRunner::connect(&pg_url, TOKEN, cfg.policy.clone()).unwrap();
        InProcess::start_with_runner(c, Arc::new(r)).unwrap()
    };
    let client = |base: &str| {
        let admin = Http::new(base, ADMIN, Duration::from_secs(60));
        admin.with_key(&admin.organization("bench", 3))
    };
    // The API's three paths: its label, its client, and the prefix of the
    // names of its sandboxes.
    let paths = [
        ("runner in process", client(&local.base), "l"),
        ("runner over HTTP", client(&remote.base), "r"),
        ("over HTTP, on PostgreSQL", client(&replica.base), "p"),
    ];

    let policy = |list: &str| -> EffectivePolicy {
        let request = SettingsRequest {
            network_allow_list: Some(list),
            ..SettingsRequest::default()
        };
        let settings = cfg.policy.settings_for_create(3, &request).unwrap();
        cfg.policy.resolve(3, &settings).unwrap()
    };
    let resources = cfg.policy.tier(3).unwrap().resources.default;
    let create_via = |http: &Http, name: String| {
        let t = Instant::now();
        let (s, v) = http.call(
            "POST",
            "/api/sandbox",
            Some(json!({"name": name, "networkAllowList": LISTS[0]})),
        );
        let took = t.elapsed();
        assert_eq!(s, 201, "{v}");
        took
    };

    println!("\ncreate to ready ({runs} runs each, the series taking turns, warm pool of 4 slots)");
    let mut own = Vec::new();
    let mut via: [Vec<Duration>; 3] = Default::default();
    for i in 0..runs {
        // Let the pool refill between creates, as between real requests.
        std::thread::sleep(Duration::from_millis(30));
        let spec = SandboxSpec {
            id: format!("sb-own{i:08x}"),
            organization: "org-own".into(),
            snapshot: "busybox".into(),
            policy: policy(LISTS[0]),
            resources,
            runtime_class: Default::default(),
            secrets: Vec::new(),
        };
        let t = Instant::now();
        Runner::create(&*runner, &spec).unwrap();
        own.push(t.elapsed());
        for ((_, http, prefix), series) in paths.iter().zip(&mut via) {
            std::thread::sleep(Duration::from_millis(30));
            series.push(create_via(http, format!("{prefix}{i}")));
        }
    }
    stats("baseline: the runner's own create", &own, None);
    for ((label, _, _), series) in paths.iter().zip(&via) {
        stats(&format!("POST /api/sandbox, {label}"), series, Some(&own));
    }
    added("create", &own, &paths, &via);

    println!(
        "\npolicy update ({} runs each, the series taking turns)",
        runs * 5
    );
    let mut own = Vec::new();
    let mut via: [Vec<Duration>; 3] = Default::default();
    let update_via = |http: &Http, name: &str, i: usize| {
        let t = Instant::now();
        let (s, v) = http.call(
            "POST",
            &format!("/api/sandbox/{name}/network-settings"),
            Some(json!({"networkAllowList": LISTS[i % 2]})),
        );
        let took = t.elapsed();
        assert_eq!(s, 200, "{v}");
        took
    };
    for i in 0..runs * 5 {
        let p = policy(LISTS[i % 2]);
        let t = Instant::now();
        Runner::update(&*runner, "sb-own00000000", &p).unwrap();
        own.push(t.elapsed());
        for ((_, http, prefix), series) in paths.iter().zip(&mut via) {
            series.push(update_via(http, &format!("{prefix}0"), i));
        }
    }
    stats("baseline: the runner's own update", &own, None);
    for ((label, _, _), series) in paths.iter().zip(&via) {
        stats(&format!("network-settings, {label}"), series, Some(&own));
    }
    added("update", &own, &paths, &via);

    for i in 0..runs {
        for (_, http, prefix) in &paths {
            http.call("DELETE", &format!("/api/sandbox/{prefix}{i}"), None);
        }
        let _ = Runner::delete(&*runner, &format!("sb-own{i:08x}"));
    }
    drop(replica);
    drop(pg);
    drop(remote);
    drop(local);
    drop(rt);
}

/// What each API path adds over the runner's own time, p50.
fn added(what: &str, own: &[Duration], paths: &[(&str, Http, &str)], via: &[Vec<Duration>]) {
    let p50 = |v: &[Duration]| sandgate_lab::bench::percentile(v, 0.5).as_secs_f64() * 1e3;
    let each: Vec<String> = paths
        .iter()
        .zip(via)
        .map(|((label, _, _), series)| format!("{:.2} ms {label}", p50(series) - p50(own)))
        .collect();
    println!(
        "  the API adds to {what}s, p50: {} (target: at most 5 ms)",
        each.join(", ")
    );
}
