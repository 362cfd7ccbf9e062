//! A server driving a runner across HTTP, in the lab: the real runner
//! (slots, kernel rules, DNS service, runc) served by this crate's
//! service on loopback, and a server over a `RemoteRunner` of it. What a
//! client sees is what it sees of a server with its runner in process:
//! policies enforced and updated, events, explain and network tests, exec,
//! a restart of the API that finds its sandboxes running, a delete that
//! leaves nothing; and a runner that is away or refuses the token is said
//! so. Needs root, runc and busybox-static.

#![allow(clippy::unwrap_used)]

use sandgate_contract::{Runner, RunnerError};
use sandgate_lab::addrs::{DENIED_SERVER4, SERVER4, SERVER4_B, TCP_ECHO};
use sandgate_lab::Lab;
use sandgate_remote::{service, RemoteRunner};
use sandgate_testkit::{Http, InProcess, Purge};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const ADMIN: &str = "operator-token-for-tests";
const TOKEN: &str = "the-runners-token-for-tests";

/// Serves `runner` on `addr` (loopback) from `rt`, until the task is
/// aborted: its URL and the task.
fn serve(
    rt: &tokio::runtime::Runtime,
    runner: &Arc<sandgate_runner::Runner>,
    addr: &str,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served: Arc<dyn Runner> = runner.clone();
    let task = rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(listener, service::router(served, TOKEN).unwrap())
            .await
            .unwrap();
    });
    (url, task)
}

/// The runner of `lab`, as a server would start it.
fn start_runner(cfg: &sandgate_server::ServerConfig) -> Arc<sandgate_runner::Runner> {
    Arc::new(
        sandgate_runner::Runner::start(
            cfg.runner.clone(),
            Arc::new(cfg.policy.clone()),
            Arc::new(cfg.catalog.clone()),
        )
        .unwrap(),
    )
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// Whether the lab's TCP echo at `dest` answers sandbox `sb`.
fn echoes(api: &Http, sb: &str, dest: std::net::IpAddr) -> bool {
    let (s, v) = api.call(
        "POST",
        &format!("/api/sandbox/{sb}/process/execute"),
        Some(
            json!({"command": format!("echo sandgate | nc -w 1 {dest} {TCP_ECHO}"), "timeout": 10}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    v["stdout"] == "sandgate\n"
}

/// The first event of sandbox `sb` about `dest` that a follower of its
/// events sees (within 30 s).
fn first_followed(base: &str, key: &str, sb: &str, dest: std::net::IpAddr) -> Value {
    use std::io::BufRead;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let response = agent
        .get(format!(
            "{base}/api/sandbox/{sb}/network/events?follow=true"
        ))
        .header("Authorization", format!("Bearer {key}"))
        .call()
        .unwrap();
    let reader = std::io::BufReader::new(response.into_body().into_reader());
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(data) = line.strip_prefix("data:") {
            let v: Value = serde_json::from_str(data.trim()).unwrap();
            if v["destination"] == dest.to_string() {
                return v;
            }
        }
    }
    panic!("the stream ended without an event about {dest}");
}

/// Sandbox `sb`'s recent events (not followed), as JSON.
fn recent_events(base: &str, key: &str, sb: &str) -> Vec<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let text = agent
        .get(format!(
            "{base}/api/sandbox/{sb}/network/events?follow=false"
        ))
        .header("Authorization", format!("Bearer {key}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect()
}

#[test]
fn a_server_drives_a_runner_on_another_host_as_one_in_its_process() {
    let lab = Lab::up().unwrap();
    let dir = std::env::temp_dir().join(format!("sandgate-remote-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = sandgate_testkit::lab_server_config(&lab, &dir, 1, ADMIN);
    let _purge = Purge(cfg.runner.clone(), dir.clone());
    let runner = start_runner(&cfg);
    let runner_rt = tokio::runtime::Runtime::new().unwrap();
    let (url, serving) = serve(&runner_rt, &runner, "127.0.0.1:0");

    // A runner takes no short token.
    let served: Arc<dyn Runner> = runner.clone();
    let short = runner_rt.block_on(async { service::router(served, "short").err() });
    assert_eq!(short.map(|e| e.status()), Some(400));

    // A wrong token, and a runner that is not there: said, at connect.
    let wrong = RemoteRunner::connect(&url, "not-the-token", cfg.policy.clone()).unwrap_err();
    assert!(
        wrong.is_host_fault() && wrong.message().contains("token"),
        "{wrong:?}"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let away = RemoteRunner::connect(&nowhere, TOKEN, cfg.policy.clone()).unwrap_err();
    assert!(matches!(away, RunnerError::Unavailable(_)), "{away:?}");
    assert_eq!(away.code(), "runner_unavailable");

    // A policy the runner's own configuration does not give its tier
    // (wider shares than the tier's) is refused, and nothing is made.
    let remote = RemoteRunner::connect(&url, TOKEN, cfg.policy.clone()).unwrap();
    // (Restored first: a runner serves no sandbox until then.)
    remote.restore(&[]).unwrap();
    let mut policy = cfg
        .policy
        .resolve(4, &sandgate_policy::NetworkSettings::default())
        .unwrap();
    policy.fair_shares.connections *= 100;
    let spec = sandgate_contract::SandboxSpec {
        id: "sb-forged".into(),
        organization: "org-x".into(),
        snapshot: "busybox".into(),
        policy,
        resources: cfg.policy.tier(4).unwrap().resources.default,
        runtime_class: Default::default(),
        secrets: Vec::new(),
    };
    let refused = remote.create(&spec).unwrap_err();
    assert!(refused.is_host_fault(), "{refused:?}");
    assert!(runner.addresses("sb-forged").is_none());
    drop(remote);

    let start = || {
        let remote = RemoteRunner::connect(&url, TOKEN, cfg.policy.clone()).unwrap();
        InProcess::start_with_runner(cfg.clone(), Arc::new(remote)).unwrap()
    };
    let mut server = start();
    let admin = Http::new(&server.base, ADMIN, Duration::from_secs(60));
    let key = admin.organization("acme", 3);
    let api = admin.with_key(&key);

    // Made on the runner, its policy enforced there.
    let (s, made) = api.call(
        "POST",
        "/api/sandbox",
        Some(json!({"name": "far", "networkAllowList": format!("{SERVER4}/32")})),
    );
    assert_eq!(s, 201, "{made}");
    let sb = id(&made);
    assert!(runner.addresses(&sb).is_some(), "made on the runner");
    assert!(echoes(&api, &sb, SERVER4));
    assert!(!echoes(&api, &sb, SERVER4_B));

    // Its denial is an event that crossed from the runner, both as a
    // recent one and to a follower as it happens.
    let follower = {
        let (base, key, sb) = (server.base.clone(), key.clone(), sb.clone());
        std::thread::spawn(move || first_followed(&base, &key, &sb, SERVER4_B))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!echoes(&api, &sb, SERVER4_B));
    let followed = follower.join().unwrap();
    assert_eq!(followed["reason"], "not_in_allow_list", "{followed}");
    let events = recent_events(&server.base, &key, &sb);
    assert!(
        events.iter().any(|e| e["kind"] == "connection"
            && e["destination"] == SERVER4_B.to_string()
            && e["reason"] == "not_in_allow_list"),
        "{events:?}"
    );
    // So are its flows: the echo the kernel forwarded, the refusal (each
    // written by the runner's pump, within a moment).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (s, log) = api.call("GET", &format!("/api/sandbox/{sb}/network/flows"), None);
        assert_eq!(s, 200, "{log}");
        let flows = log["flows"].as_array().unwrap();
        let to = |dest: std::net::IpAddr, verdict: &str| {
            flows
                .iter()
                .any(|f| f["destination"] == dest.to_string() && f["verdict"] == verdict)
        };
        if to(SERVER4, "allowed") && to(SERVER4_B, "denied") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log:#}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // explain and the network test agree with the kernel there; the
    // host's own addresses come from the runner.
    let (s, t) = api.call(
        "POST",
        &format!("/api/sandbox/{sb}/network/test"),
        Some(json!({"targets": [
            format!("{SERVER4}:{TCP_ECHO}"),
            format!("{SERVER4_B}:{TCP_ECHO}"),
            format!("{DENIED_SERVER4}:{TCP_ECHO}"),
        ]})),
    );
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["ok"], true, "{t}");
    let observed: Vec<bool> = t["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["observed"].as_bool().unwrap())
        .collect();
    assert_eq!(observed, [true, false, false], "{t}");

    // An update reaches the kernel there before the answer.
    let (s, v) = api.call(
        "POST",
        &format!("/api/sandbox/{sb}/network-settings"),
        Some(json!({"networkAllowList": format!("{SERVER4_B}/32")})),
    );
    assert_eq!(s, 200, "{v}");
    assert!(!echoes(&api, &sb, SERVER4));
    assert!(echoes(&api, &sb, SERVER4_B));

    // The runner's refusal of a working directory is the caller's fault,
    // across the wire too.
    let (s, v) = api.call(
        "POST",
        &format!("/api/sandbox/{sb}/process/execute"),
        Some(json!({"command": "true", "cwd": "/no/such/dir"})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_cwd")),
        "{v}"
    );

    // The API restarts; the runner runs on: the sandbox is taken back,
    // with the policy on record.
    server.stop();
    let mut server = start();
    let api = Http::new(&server.base, &key, Duration::from_secs(60));
    let (_, g) = api.call("GET", &format!("/api/sandbox/{sb}"), None);
    assert_eq!(g["state"], "running", "{g}");
    assert!(echoes(&api, &sb, SERVER4_B));
    assert!(!echoes(&api, &sb, SERVER4));

    // The runner stops answering: an update is 503 `runner_unavailable`,
    // with nothing of the runner's address in it, and the kernel there
    // kept the policy it had (it never got the new one).
    serving.abort();
    let _ = runner_rt.block_on(serving);
    let (s, v) = api.call(
        "POST",
        &format!("/api/sandbox/{sb}/network-settings"),
        Some(json!({"networkAllowList": format!("{SERVER4}/32")})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("runner_unavailable")),
        "{v}"
    );
    assert!(!v.to_string().contains("127.0.0.1"), "{v}");
    let nc = |dest: std::net::IpAddr| sandgate_contract::ExecRequest {
        command: format!("echo sandgate | nc -w 1 {dest} {TCP_ECHO}"),
        cwd: None,
        env: Vec::new(),
        timeout: Some(Duration::from_secs(10)),
    };
    assert_eq!(runner.exec(&sb, &nc(SERVER4)).unwrap().stdout, "");
    assert_eq!(
        runner.exec(&sb, &nc(SERVER4_B)).unwrap().stdout,
        "sandgate\n"
    );
    // Neither updated nor cut off, it is not taken for lost: the runner
    // may well run it on. (Shown `unreachable` once the API has looked
    // at the runner, at once after the failed call or within 2 s.)
    let (_, g) = api.call("GET", &format!("/api/sandbox/{sb}"), None);
    assert!(
        matches!(g["state"].as_str(), Some("running" | "unreachable")),
        "{g}"
    );

    // Back on the same address, served anew (as a runner that started
    // again): until the API has restored it, a call about the sandbox is
    // 503 `runner_restoring` (never a 404 that would have the sandbox
    // recorded as gone); the API restores it at once, and the sandbox
    // runs on with its policy on record.
    let (again, serving) = serve(&runner_rt, &runner, url.trim_start_matches("http://"));
    assert_eq!(again, url);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = api.call(
            "POST",
            &format!("/api/sandbox/{sb}/process/execute"),
            Some(json!({"command": "true"})),
        );
        if s == 200 {
            break;
        }
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (503, Some("runner_restoring")),
            "{v}"
        );
        assert!(std::time::Instant::now() < deadline, "never restored");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(echoes(&api, &sb, SERVER4_B));
    assert!(!echoes(&api, &sb, SERVER4));

    // A delete leaves nothing on the runner.
    assert_eq!(
        api.call("DELETE", &format!("/api/sandbox/{sb}"), None).0,
        204
    );
    assert!(runner.addresses(&sb).is_none());
    let (s, v) = api.call("GET", &format!("/api/sandbox/{sb}"), None);
    assert_eq!(s, 404, "{v}");

    // Two API replicas: a change of an older generation of the write lock
    // than one the runner took is refused whole, before it reaches the
    // runner (a replica that lost the lock amid a change cannot land it
    // after another replica took it), and so is one that says none.
    let newer = RemoteRunner::connect(&url, TOKEN, cfg.policy.clone()).unwrap();
    let older = RemoteRunner::connect(&url, TOKEN, cfg.policy.clone()).unwrap();
    newer.fence(7);
    older.fence(6);
    assert!(matches!(
        newer.block("sb-none"),
        Err(RunnerError::NotFound(_))
    ));
    let refused = older.block("sb-none").unwrap_err();
    assert_eq!(
        (refused.status(), refused.code()),
        (503, "writer_superseded"),
        "{refused:?}"
    );
    assert!(matches!(
        older.delete("sb-none"),
        Err(RunnerError::Superseded(_))
    ));
    older.fence(0);
    assert!(matches!(
        older.block("sb-none"),
        Err(RunnerError::Superseded(_))
    ));
    older.fence(8);
    assert!(matches!(
        older.block("sb-none"),
        Err(RunnerError::NotFound(_))
    ));
    assert!(matches!(
        newer.block("sb-none"),
        Err(RunnerError::Superseded(_))
    ));

    server.stop();
    serving.abort();
    drop(runner_rt);
    drop(runner);
}
