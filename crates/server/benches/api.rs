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

use sandgate_dns::Upstream;
use sandgate_lab::addrs::*;
use sandgate_lab::bench::stats;
use sandgate_lab::{lab_policy, Lab};
use sandgate_policy::Catalog;
use sandgate_runner::RunnerConfig;
use sandgate_server::{Server, ServerConfig};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "bench-operator-token";

struct Http {
    base: String,
    agent: ureq::Agent,
}

impl Http {
    fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {key}");
        let r = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            (_, Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(&b),
            (_, None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
        };
        let mut r = r.unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = sandgate_lab::bench::runs(40);
    let lab = Lab::up().unwrap();
    let dir = std::env::temp_dir().join(format!("sandgate-bench-api-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut runner = RunnerConfig::new(
        dir.join("runner"),
        lab.tag(),
        Upstream {
            servers: vec![SocketAddr::new(DNS4, 53)],
            timeout: Duration::from_secs(1),
        },
    );
    runner.host_netns = Some(lab.host().name().to_string());
    runner.warm_pool = 4;
    let runner_cfg = runner.clone();
    let mut cfg = ServerConfig::new(dir.join("store"), runner, lab_policy(), Catalog::builtin());
    cfg.admin_token = Some(ADMIN.into());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (server, _) = rt.block_on(Server::start(cfg)).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { server.serve(listener, std::future::pending()).await });
    let http = Http {
        base,
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into(),
    };
    let (_, org) = http.call(
        "POST",
        "/api/admin/organizations",
        ADMIN,
        Some(json!({"name": "bench", "tier": 3})),
    );
    let org = org["id"].as_str().unwrap().to_string();
    let (_, key) = http.call(
        "POST",
        &format!("/api/admin/organizations/{org}/keys"),
        ADMIN,
        None,
    );
    let key = key["key"].as_str().unwrap().to_string();

    println!("\ncreate to ready through the API ({runs} runs each, warm pool of 4 slots)");
    // The baseline: runc itself on the bundle of a sandgate sandbox.
    let (s, first) = http.call("POST", "/api/sandbox", &key, Some(json!({"name": "first"})));
    assert_eq!(s, 201);
    let id = first["id"].as_str().unwrap().to_string();
    let bundle = dir.join("runner/runtime/sandboxes").join(&id);
    let base_root = dir.join("runc-baseline");
    let runc = |args: &[&str]| {
        let ok = Command::new("runc")
            .arg("--root")
            .arg(&base_root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "runc {args:?}");
    };
    let mut base = Vec::new();
    for i in 0..runs {
        let cid = format!("base{i}");
        let t = Instant::now();
        runc(&[
            "run",
            "--detach",
            "--bundle",
            bundle.to_str().unwrap(),
            &cid,
        ]);
        base.push(t.elapsed());
        runc(&["delete", "--force", &cid]);
    }
    stats("baseline: runc run --detach", &base, None);
    let mut creates = Vec::new();
    for i in 0..runs {
        // Let the pool refill between creates, as between real requests.
        std::thread::sleep(Duration::from_millis(30));
        let t = Instant::now();
        let (s, v) = http.call(
            "POST",
            "/api/sandbox",
            &key,
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
        http.call("DELETE", &format!("/api/sandbox/s{i}"), &key, None);
    }

    println!(
        "\nnetwork-settings update through the API ({} runs each)",
        runs * 5
    );
    let mut base = Vec::new();
    for _ in 0..runs * 5 {
        let t = Instant::now();
        let (s, _) = http.call("GET", "/api/sandbox/first", &key, None);
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
            &key,
            Some(json!({"networkAllowList": list})),
        );
        updates.push(t.elapsed());
        assert_eq!(s, 200, "{v}");
    }
    stats("POST .../network-settings, to 200", &updates, Some(&base));

    http.call("DELETE", "/api/sandbox/first", &key, None);
    drop(rt);
    let _ = sandgate_runner::purge_runtime(&runner_cfg);
    let _ = std::fs::remove_dir_all(&dir);
}
