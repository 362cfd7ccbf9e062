//! `sandgate server` and the API client commands, as an operator and a
//! user run them: the real binary in a lab (needs root, runc and
//! busybox-static), driven by `sandgate admin` and `sandgate sandbox`;
//! then `kill -9` of the server with sandboxes running, and a restart.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sandgate_gateway::hello::craft;
use sandgate_lab::addrs::*;
use sandgate_lab::Lab;
use serde_json::Value;
use std::process::Command;

#[test]
fn the_cli_drives_the_server_and_a_killed_server_restarts_with_everything_enforced() {
    let lab = Lab::up().unwrap();
    let dir = std::env::temp_dir().join(format!("sandgate-cli-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut guard = Cleanup {
        dir: dir.clone(),
        server: Some(start_server(&lab, &dir)),
    };
    let url = guard.server.as_ref().unwrap().url.clone();

    // A second server on the same data directory says so, and leaves the
    // first alone.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_sandgate"))
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .args(["--instance", "second", "--host-netns", lab.host().name()])
        .args(["--upstream", &format!("{}:53", sandgate_lab::addrs::DNS4)])
        .env_remove("SANDGATE_CONFIG")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{said}");
    let pid = guard.server.as_ref().unwrap().child.id();
    assert!(
        said.contains(&format!(
            "another sandgate server (process {pid}) is using the data directory"
        )),
        "{said}"
    );
    assert!(!said.contains("Operation not permitted"), "{said}");

    // The operator makes an organization and a key.
    let (code, org) = cli(
        &url,
        TOKEN,
        &["admin", "org", "create", "acme", "--tier", "3"],
    );
    assert_eq!(code, 0, "{org}");
    let org_id = org["id"].as_str().unwrap().to_string();
    let (code, key) = cli(&url, TOKEN, &["admin", "org", "key", &org_id]);
    assert_eq!(code, 0);
    let key = key["key"].as_str().unwrap().to_string();
    // The key comes from the environment or a file, never an argument
    // (the process list would show it).
    // In the data directory: the guard removes it whatever happens.
    let key_file = dir.join("api.key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let bare = |args: &[&str]| cli_keyed(&url, None, args);
    let from_file = bare(&[
        "sandbox",
        "list",
        "--api-key-file",
        key_file.to_str().unwrap(),
    ]);
    assert_eq!(
        (from_file.0, from_file.1.is_array()),
        (0, true),
        "{from_file:?}"
    );
    let (code, e) = bare(&["sandbox", "list", "--api-key", &key]);
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (2, Some("invalid_arguments")),
        "{e}"
    );
    let (code, e) = bare(&["sandbox", "list", "--api-key-file", "/nonexistent/key"]);
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (2, Some("invalid_api_key_file")),
        "{e}"
    );
    let _ = std::fs::remove_file(&key_file);

    // Many at once, with progress on standard error; the first refusal
    // stops the rest and says how far it got.
    let many = |count: &str| {
        Command::new(env!("CARGO_BIN_EXE_sandgate"))
            .args([
                "--json", "sandbox", "create", "--name", "many", "--count", count,
            ])
            .args(["--network-block-all"])
            .env("SANDGATE_API_URL", &url)
            .env("SANDGATE_API_KEY", &key)
            .env_remove("SANDGATE_CONFIG")
            .output()
            .unwrap()
    };
    let made = many("3");
    let said = String::from_utf8_lossy(&made.stderr);
    assert!(made.status.success(), "{said}");
    let list: Value = serde_json::from_slice(&made.stdout).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["many-1", "many-2", "many-3"]);
    assert!(said.contains("[3/3] created many-3 (sb-"), "{said}");
    assert!(said.contains("created 3 sandboxes in"), "{said}");
    let again = many("2");
    let said = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{said}");
    assert!(said.contains("stopped after 0 of 2"), "{said}");
    let answer: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(answer["error"]["code"], "name_taken", "{answer}");
    for n in names {
        assert_eq!(cli(&url, &key, &["sandbox", "delete", n]).0, 0);
    }
    // An organization's key cannot do the operator's work.
    let (code, e) = cli(&url, &key, &["admin", "org", "tier", &org_id, "4"]);
    assert_eq!((code, e["error"]["code"].as_str()), (2, Some("forbidden")));
    // A key with scopes: it reads, and may not change a network.
    let (code, scoped) = cli(
        &url,
        TOKEN,
        &[
            "admin",
            "org",
            "key",
            &org_id,
            "--scope",
            "sandboxes:read",
            "--scope",
            "sandboxes:exec",
        ],
    );
    assert_eq!(code, 0, "{scoped}");
    assert_eq!(
        scoped["scopes"],
        serde_json::json!(["sandboxes:read", "sandboxes:exec"])
    );
    let scoped = scoped["key"].as_str().unwrap().to_string();
    let (code, e) = cli(&url, &scoped, &["sandbox", "create", "--name", "nope"]);
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (2, Some("insufficient_scope")),
        "{e}"
    );
    let (code, e) = cli(
        &url,
        TOKEN,
        &["admin", "org", "key", &org_id, "--scope", "root"],
    );
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (2, Some("invalid_scope")),
        "{e}"
    );

    // The user makes sandboxes in three modes.
    let (code, v) = cli(
        &url,
        &key,
        &[
            "sandbox",
            "create",
            "--name",
            "listed",
            "--network-allow-list",
            "192.0.2.10/32",
        ],
    );
    assert_eq!(
        (code, v["effectiveNetwork"]["mode"].as_str()),
        (0, Some("allowlist")),
        "{v}"
    );
    let (code, _) = cli(
        &url,
        &key,
        &[
            "sandbox",
            "create",
            "--name",
            "blocked",
            "--network-block-all",
        ],
    );
    assert_eq!(code, 0);
    let (code, _) = cli(
        &url,
        &key,
        &[
            "sandbox",
            "create",
            "--name",
            "open",
            "--env",
            "GREETING=hello",
        ],
    );
    assert_eq!(code, 0);
    let (code, e) = cli(
        &url,
        &key,
        &["sandbox", "create", "--network-allow-list", "192.0.2.300"],
    );
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (2, Some("invalid_network_allow_list")),
        "{e}"
    );
    // gVisor, which this operator's tiers do not allow (runc alone by
    // default); a class that does not exist never leaves the CLI.
    let (code, e) = cli(
        &url,
        &key,
        &["sandbox", "create", "--runtime-class", "runsc"],
    );
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (2, Some("runtime_class_not_allowed")),
        "{e}"
    );
    let (code, e) = cli(
        &url,
        &key,
        &["sandbox", "create", "--runtime-class", "gvisor"],
    );
    assert_eq!(code, 2, "{e}");
    assert!(e.to_string().contains("no runtime class"), "{e}");

    // Snapshots: listed for a key; made and removed by the operator only,
    // from the registries it configured (none here), and one in use
    // stays. (Pulls: crates/server/tests/snapshots.rs.)
    let (code, list) = cli(&url, &key, &["snapshot", "list"]);
    assert_eq!(code, 0, "{list}");
    assert_eq!(
        list,
        serde_json::json!([{"name": "busybox", "runners": ["main"]}])
    );
    for (who, args, want) in [
        (
            key.as_str(),
            vec!["snapshot", "create", "py", "--image", "python:3.12-slim"],
            "forbidden",
        ),
        (
            TOKEN,
            vec!["snapshot", "create", "py", "--image", "python:3.12-slim"],
            "registry_not_allowed",
        ),
        (
            TOKEN,
            vec!["snapshot", "delete", "busybox"],
            "snapshot_in_use",
        ),
        (TOKEN, vec!["snapshot", "delete", "absent"], "not_found"),
    ] {
        let (code, e) = cli(&url, who, &args);
        assert_eq!(
            (code, e["error"]["code"].as_str()),
            (2, Some(want)),
            "{args:?}: {e}"
        );
    }
    // From an archive (`docker export`'s shape): the runner's own busybox
    // root, uploaded; a file that is not there is said so.
    let archive = dir.join("exported.tar");
    busybox_archive(&dir, &archive, None);
    let (code, v) = cli(
        &url,
        TOKEN,
        &[
            "snapshot",
            "create",
            "exported",
            "--file",
            archive.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        v,
        serde_json::json!({"name": "exported", "runners": ["main"]})
    );
    let (code, e) = cli(
        &url,
        TOKEN,
        &[
            "snapshot",
            "create",
            "other",
            "--file",
            "/nonexistent/archive.tar",
        ],
    );
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (2, Some("invalid_file")),
        "{e}"
    );
    let (code, _) = cli(&url, TOKEN, &["snapshot", "delete", "exported"]);
    assert_eq!(code, 0);

    // A budget: asked at create, back to the tier's default by update.
    let (code, v) = cli(
        &url,
        &key,
        &[
            "sandbox",
            "create",
            "--name",
            "paced",
            "--egress-mbps",
            "30",
            "--max-connections",
            "40",
        ],
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["effectiveNetwork"]["budgets"]["egressMbps"], 30, "{v}");
    assert_eq!(
        v["effectiveNetwork"]["fairShares"]["connections"], 40,
        "{v}"
    );
    let (code, v) = cli(
        &url,
        &key,
        &[
            "sandbox",
            "network",
            "update",
            "paced",
            "--egress-mbps",
            "default",
            "--max-connections",
            "default",
        ],
    );
    assert_eq!(code, 0, "{v}");
    assert!(v["effectiveNetwork"].get("budgets").is_none(), "{v}");
    assert!(v.get("maxConnections").is_none(), "{v}");
    let (code, e) = cli(
        &url,
        &key,
        &[
            "sandbox",
            "network",
            "update",
            "paced",
            "--egress-mbps",
            "0",
        ],
    );
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (2, Some("invalid_budget")),
        "{e}"
    );
    let (code, _) = cli(&url, &key, &["sandbox", "delete", "paced"]);
    assert_eq!(code, 0);

    let check = |url: &str| {
        assert!(echoes(url, &key, "listed", SERVER4));
        assert!(!echoes(url, &key, "listed", SERVER4_B));
        assert!(!echoes(url, &key, "blocked", SERVER4));
        assert!(echoes(url, &key, "open", SERVER4_B));
        let (_, v) = cli(
            url,
            &key,
            &["sandbox", "exec", "open", "--", "echo $GREETING"],
        );
        assert_eq!(v["stdout"], "hello\n");
        // (Not the catalog's names: in the lab they resolve to 192.0.2.10,
        // and an answer for one would admit it for the sandbox.)
        let (code, t) = cli(
            url,
            &key,
            &[
                "sandbox",
                "network",
                "test",
                "listed",
                "--target",
                "192.0.2.10:7",
                "--target",
                "198.51.100.10:7",
            ],
        );
        assert_eq!((code, t["ok"].as_bool()), (0, Some(true)), "{t}");
        let (_, x) = cli(
            url,
            &key,
            &["sandbox", "network", "explain", "listed", "198.51.100.10:7"],
        );
        assert_eq!(x["reason"], "not_in_allow_list");
    };
    check(&url);
    // The denials are events, one JSON object per line with --json.
    let out = Command::new(env!("CARGO_BIN_EXE_sandgate"))
        .args(["--json", "sandbox", "network", "events", "listed"])
        .env("SANDGATE_API_URL", &url)
        .env("SANDGATE_API_KEY", &key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["destination"] == "198.51.100.10" && e["reason"] == "not_in_allow_list"),
        "{events:?}"
    );
    // So are the flows, allowed and denied: JSON with --json, a line each
    // without.
    let (code, log) = cli(&url, &key, &["sandbox", "network", "flows", "listed"]);
    assert_eq!(code, 0, "{log}");
    let flows = log["flows"].as_array().unwrap();
    for (dest, verdict) in [("192.0.2.10", "allowed"), ("198.51.100.10", "denied")] {
        assert!(
            flows
                .iter()
                .any(|f| f["destination"] == dest && f["verdict"] == verdict),
            "{log:#}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sandgate"))
        .args(["sandbox", "network", "flows", "listed", "--limit", "1000"])
        .env("SANDGATE_API_URL", &url)
        .env("SANDGATE_API_KEY", &key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains(" denied ")
            && l.contains("not_in_allow_list")
            && l.contains("-> 198.51.100.10:7")),
        "{text}"
    );
    // exec exits with the command's status.
    let (code, v) = cli(&url, &key, &["sandbox", "exec", "blocked", "--", "exit 3"]);
    assert_eq!((code, v["exitCode"].as_i64()), (3, Some(3)));

    // A grant: the listed sandbox reaches SERVER4_B for ten minutes.
    let b = SERVER4_B.to_string();
    let (code, g) = cli(
        &url,
        &key,
        &[
            "sandbox",
            "network",
            "grant",
            "listed",
            &b,
            "--ttl",
            "600",
            "--reason",
            "a dependency",
        ],
    );
    assert_eq!(code, 0, "{g}");
    let grant = g["id"].as_str().unwrap().to_string();
    assert!(echoes(&url, &key, "listed", SERVER4_B));
    // And one of four seconds to another address, which ends while the
    // server is down.
    let b6 = SERVER6_B.to_string();
    let (code, short) = cli(
        &url,
        &key,
        &["sandbox", "network", "grant", "listed", &b6, "--ttl", "4"],
    );
    assert_eq!(code, 0, "{short}");
    let short_end = short["expiresAtMs"].as_u64().unwrap();
    // A transfer quota: an open sandbox that may move 1 MiB a day moves a
    // little less (headers count), then nothing more, not even a new
    // connection; the count outlives the kill and the restart below.
    let (code, v) = cli(
        &url,
        &key,
        &[
            "sandbox",
            "create",
            "--name",
            "metered",
            "--transfer-quota-mib",
            "1",
        ],
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (
            v["effectiveNetwork"]["budgets"]["transferQuotaMiB"].as_u64(),
            v["effectiveNetwork"]["budgets"]["transferPeriodSeconds"].as_u64()
        ),
        (Some(1), Some(86_400)),
        "{v}"
    );
    let metered =
        sandgate_testkit::slot_netns(&dir.join("runner"), lab.tag(), v["id"].as_str().unwrap())
            .unwrap();
    let day = || now_s() / 86_400;
    let spent_on = day();
    let got = sandgate_testkit::drain_stream(&metered, SERVER4).unwrap();
    assert!(
        got < 1 << 20 && got > 3 << 18,
        "{got} bytes under a quota of 1 MiB"
    );
    let metered_reaches = || {
        metered
            .run(|| {
                let to = std::net::SocketAddr::new(SERVER4_B, TCP_ECHO);
                Ok(
                    std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(1))
                        .is_ok(),
                )
            })
            .unwrap()
    };
    assert!(!metered_reaches(), "a spent quota let a connection through");
    // Of the slots (four sandboxes and the prepared one, unless its
    // refill was cut), how many reach `dest`, tried from their namespaces.
    let slots = sandgate_netns::Netns::list(&format!("{}-s", lab.tag())).unwrap();
    assert!((4..=5).contains(&slots.len()), "{slots:?}");
    let reaching = |dest: std::net::IpAddr| {
        slots
            .iter()
            .filter(|name| {
                sandgate_netns::Netns::open(name)
                    .unwrap()
                    .run(|| {
                        let to = std::net::SocketAddr::new(dest, TCP_ECHO);
                        Ok(std::net::TcpStream::connect_timeout(
                            &to,
                            std::time::Duration::from_secs(1),
                        )
                        .is_ok())
                    })
                    .unwrap()
            })
            .count()
    };
    assert_eq!(reaching(SERVER6_B), 2);
    // Approvals: a name the listed sandbox is refused opens a request,
    // left pending across the kill.
    let (code, v) = cli(
        &url,
        &key,
        &[
            "sandbox",
            "network",
            "update",
            "listed",
            "--network-approvals",
        ],
    );
    assert_eq!(
        (code, v["networkApprovals"].as_bool()),
        (0, Some(true)),
        "{v}"
    );
    let resolves = |url: &str| {
        let (_, v) = cli(
            url,
            &key,
            &[
                "sandbox",
                "exec",
                "listed",
                "--",
                "nslookup www.example.com",
            ],
        );
        v["stdout"].as_str().unwrap().contains(&b)
    };
    assert!(!resolves(&url));
    let pending = |url: &str| {
        let (code, v) = cli(
            url,
            &key,
            &[
                "sandbox", "network", "requests", "listed", "--state", "pending",
            ],
        );
        assert_eq!(code, 0, "{v}");
        // What it was denied before approvals were on opens nothing.
        let all = v["requests"].as_array().unwrap();
        assert!(all.iter().all(|r| r["target"] != b.as_str()), "{v}");
        all.iter()
            .filter(|r| r["target"] == "www.example.com")
            .cloned()
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pending(&url).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no access request");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // kill -9 of the server: the sandboxes stay enforced while it is
    // down (the rules are in the kernel, not in the process): only the
    // open sandbox and the granted one reach 198.51.100.10...
    let mut s = guard.server.take().unwrap();
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    assert_eq!(reaching(SERVER4_B), 2);
    // ...and a grant ends on time with nobody to end it (the kernel's
    // element timeout).
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    std::thread::sleep(std::time::Duration::from_millis(
        (short_end + 1000).saturating_sub(now_ms()),
    ));
    assert_eq!(reaching(SERVER6_B), 1, "a grant outlived its end");
    // ...and after a restart every sandbox is listed, enforced and
    // manageable again.
    guard.server = Some(start_server(&lab, &dir));
    let url = guard.server.as_ref().unwrap().url.clone();
    let (code, list) = cli(&url, &key, &["sandbox", "list"]);
    assert_eq!(code, 0);
    let mut names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["blocked", "listed", "metered", "open"]);
    // The spent quota stayed spent (unless a day began meanwhile).
    if day() == spent_on {
        assert!(!metered_reaches(), "a restart gave a spent quota back");
        let (code, u) = cli(&url, &key, &["sandbox", "network", "usage", "metered"]);
        assert_eq!(
            (
                code,
                u["transfer"]["spent"].as_bool(),
                u["transfer"]["usedBytes"].as_u64()
            ),
            (0, Some(true), Some(1 << 20)),
            "{u}"
        );
    }
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "running"),
        "{list}"
    );
    // The grant came back with its time, in force (the one that ended
    // meanwhile did not); revoked, it is gone.
    let (code, gs) = cli(&url, &key, &["sandbox", "network", "grants", "listed"]);
    assert_eq!(
        (code, gs["grants"][0]["id"].as_str()),
        (0, Some(grant.as_str())),
        "{gs}"
    );
    assert_eq!(gs["grants"].as_array().unwrap().len(), 1, "{gs}");
    assert_eq!(reaching(SERVER6_B), 1);
    // The request is still pending, its name still refused; approved now
    // for a minute, the name resolves.
    let open = pending(&url);
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["target"], "www.example.com");
    assert!(!resolves(&url), "a pending request widened the policy");
    let request = open[0]["id"].as_str().unwrap();
    let (code, v) = cli(
        &url,
        &key,
        &[
            "sandbox", "network", "approve", "listed", request, "--ttl", "60",
        ],
    );
    assert_eq!((code, v["state"].as_str()), (0, Some("approved")), "{v}");
    assert!(resolves(&url));
    let approval = v["grantId"].as_str().unwrap().to_string();
    let (code, _) = cli(
        &url,
        &key,
        &["sandbox", "network", "revoke", "listed", &approval],
    );
    assert_eq!(code, 0);
    assert!(echoes(&url, &key, "listed", SERVER4_B));
    let (code, _) = cli(
        &url,
        &key,
        &["sandbox", "network", "revoke", "listed", &grant],
    );
    assert_eq!(code, 0);
    assert!(!echoes(&url, &key, "listed", SERVER4_B));
    check(&url);
    let (code, _) = cli(
        &url,
        &key,
        &[
            "sandbox",
            "network",
            "update",
            "listed",
            "--network-allow-list",
            "198.51.100.0/24",
        ],
    );
    assert_eq!(code, 0);
    assert!(echoes(&url, &key, "listed", SERVER4_B));
    assert!(!echoes(&url, &key, "listed", SERVER4));

    // Delete everything; the host keeps nothing of them.
    for name in ["listed", "blocked", "open", "metered"] {
        let (code, _) = cli(&url, &key, &["sandbox", "delete", name]);
        assert_eq!(code, 0);
    }
    let (code, e) = cli(&url, &key, &["sandbox", "get", "listed"]);
    assert_eq!((code, e["error"]["code"].as_str()), (2, Some("not_found")));
    assert_eq!(
        std::fs::read_dir(dir.join("runner/runtime/sandboxes"))
            .unwrap()
            .count(),
        0
    );

    // SIGTERM: a graceful stop.
    guard.server.take().unwrap().stop_gracefully();
}

/// A `sandgate runner` of the lab's host, on a loopback port: the process
/// and its URL.
fn start_runner(
    lab: &Lab,
    dir: &std::path::Path,
    token_file: &std::path::Path,
    extra: &[&str],
) -> (std::process::Child, String) {
    // A loopback port no connection is given while the runner is
    // stopped (it comes back on it), unless `extra` names where.
    let steady = format!("127.0.0.1:{}", sandgate_testkit::steady_port());
    let listen = if extra.contains(&"--listen") {
        Vec::new()
    } else {
        vec!["--listen", steady.as_str()]
    };
    spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_sandgate"))
            .arg("runner")
            .args(listen)
            .arg("--data-dir")
            .arg(dir)
            .arg("--token-file")
            .arg(token_file)
            .args(["--instance", lab.tag(), "--host-netns", lab.host().name()])
            .args(["--upstream", &format!("{DNS4}:53"), "--warm-pool", "1"])
            .args(extra)
            .env_remove("SANDGATE_CONFIG")
            .stdout(std::process::Stdio::piped()),
    )
}

/// A `sandgate server` over the runner at `runner_url`: the process and
/// its URL.
fn start_api(
    dir: &std::path::Path,
    runner_url: &str,
    token_file: &std::path::Path,
) -> ServerProcess {
    start_replica(dir, runner_url, token_file, None)
}

/// [`start_api`], its store the database at `database` if given (in
/// `SANDGATE_DATABASE_URL`, as an operator's environment file gives it).
fn start_replica(
    dir: &std::path::Path,
    runner_url: &str,
    token_file: &std::path::Path,
    database: Option<&str>,
) -> ServerProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandgate"));
    cmd.args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(["--runner-url", runner_url, "--runner-token-file"])
        .arg(token_file)
        .env("SANDGATE_ADMIN_TOKEN", TOKEN)
        .env_remove("SANDGATE_CONFIG")
        .env_remove("SANDGATE_DATABASE_URL")
        .stdout(std::process::Stdio::piped());
    if let Some(url) = database {
        cmd.env("SANDGATE_DATABASE_URL", url);
    }
    // A runner over TLS: its CA, beside the token ([`runner_tls`]).
    if runner_url.starts_with("https://") {
        cmd.arg("--runner-ca")
            .arg(token_file.with_file_name(RUNNERS_CA));
    }
    let (child, url) = spawn_listening(&mut cmd);
    ServerProcess { child, url }
}

/// The file of the runners' CA, in a test's directory.
const RUNNERS_CA: &str = "runners-ca.pem";

/// The runner's TLS flags for a test's directory `dir`: a CA of the
/// test's own ([`RUNNERS_CA`]) and a certificate it signed for the
/// runner's loopback address, made once.
fn runner_tls(dir: &std::path::Path) -> Vec<String> {
    let (cert, key) = (dir.join("runner.crt"), dir.join("runner.key"));
    if !cert.exists() {
        let ca = sandgate_testkit::tls::Ca::new("sandgate runners CA (tests)");
        let (c, k) = ca.issue(&["127.0.0.1"]);
        std::fs::write(dir.join(RUNNERS_CA), ca.pem()).unwrap();
        std::fs::write(&cert, c).unwrap();
        std::fs::write(&key, k).unwrap();
    }
    vec![
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ]
}

#[test]
fn two_api_replicas_on_postgresql_drive_one_runner_and_either_survives_the_others_kill() {
    let lab = Lab::up().unwrap();
    let pg = sandgate_testkit::postgres::Postgres::start().unwrap();
    let database = pg.database("split").unwrap();
    // Dropped in turn: replica b, the runner, replica a and the files,
    // PostgreSQL, then the lab.
    let (mut guard, runner, token_file, runner_url) = split(&lab, "replicas", &[], false);
    let dir = guard.dir.clone();
    // Replica a replaces the split's API, on the database.
    if let Some(mut api) = guard.server.take() {
        api.child.kill().unwrap();
        api.child.wait().unwrap();
    }
    guard.server = Some(start_replica(
        &dir.join("a"),
        &runner_url,
        &token_file,
        Some(&database),
    ));
    let b = Cleanup {
        dir: dir.join("b"),
        server: Some(start_replica(
            &dir.join("b"),
            &runner_url,
            &token_file,
            Some(&database),
        )),
    };
    let url_a = guard.server.as_ref().unwrap().url.clone();
    let url_b = b.server.as_ref().unwrap().url.clone();

    // Made through one, seen and enforced through the other.
    let (_, key) = organization(&url_a, TOKEN, "acme", 3);
    let allow = format!("{SERVER4}/32");
    let (code, made) = cli(
        &url_b,
        &key,
        &[
            "sandbox",
            "create",
            "--name",
            "shared",
            "--network-allow-list",
            &allow,
        ],
    );
    assert_eq!(code, 0, "{made}");
    let (code, seen) = cli(&url_a, &key, &["sandbox", "get", "shared"]);
    assert_eq!((code, &seen["id"]), (0, &made["id"]), "{seen}");
    assert!(echoes(&url_a, &key, "shared", SERVER4));
    assert!(!echoes(&url_b, &key, "shared", SERVER4_B));

    // Replica a is killed amid an update, holding the write lock, its
    // call to the runner sent but not answered (the runner is stopped
    // meanwhile). Replica b finishes what a cut short: the stored policy
    // is the one in force, and a's change, whenever the runner reads it,
    // is refused as a change of an older generation of the lock.
    let runner_pid = nix::unistd::Pid::from_raw(runner.0.id() as i32);
    let journal = || pg.psql("split", "SELECT open FROM write_journal").unwrap();
    let kill_amid = |guard: &mut Cleanup, args: Vec<String>| {
        nix::sys::signal::kill(runner_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let url_a = guard.server.as_ref().unwrap().url.clone();
        let key = key.clone();
        let change = std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&url_a, &key, &args).0
        });
        // The journal names the holder: a's process.
        let a_holds = format!(":{}", guard.server.as_ref().unwrap().child.id());
        let holder = || {
            pg.psql("split", "SELECT holder FROM write_journal WHERE open = 1")
                .unwrap()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !holder().ends_with(&a_holds) {
            assert!(
                std::time::Instant::now() < deadline,
                "a never took the lock"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Time for a to send its call (if it has not, the runner never
        // sees the change: the outcome below is the same).
        std::thread::sleep(std::time::Duration::from_millis(500));
        let mut a = guard.server.take().unwrap();
        a.child.kill().unwrap();
        a.child.wait().unwrap();
        nix::sys::signal::kill(runner_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        assert_ne!(change.join().unwrap(), 0, "a's change was cut short");
        while journal() != "0" {
            assert!(
                std::time::Instant::now() < deadline,
                "the change a cut short was not finished"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let to = |args: &[&str]| args.iter().map(ToString::to_string).collect::<Vec<_>>();
    let b_list = format!("{SERVER4_B}/32");
    let to_b = [
        "sandbox",
        "network",
        "update",
        "shared",
        "--network-allow-list",
        &b_list,
    ];
    kill_amid(&mut guard, to(&to_b));
    let (_, g) = cli(&url_b, &key, &["sandbox", "get", "shared"]);
    assert_eq!(
        (g["state"].as_str(), g["networkAllowList"].as_str()),
        (Some("running"), Some(allow.as_str())),
        "{g}"
    );
    assert!(echoes(&url_b, &key, "shared", SERVER4));
    assert!(!echoes(&url_b, &key, "shared", SERVER4_B));

    // b serves on: an update, enforced; a create and a delete.
    let (code, _) = cli(&url_b, &key, &to_b);
    assert_eq!(code, 0);
    assert!(echoes(&url_b, &key, "shared", SERVER4_B));
    assert!(!echoes(&url_b, &key, "shared", SERVER4));
    let (code, other) = cli(&url_b, &key, &["sandbox", "create", "--name", "other"]);
    assert_eq!(code, 0, "{other}");
    let (code, _) = cli(&url_b, &key, &["sandbox", "delete", "other"]);
    assert_eq!(code, 0);

    // Replica a comes back and reads what b wrote; the policy b put in
    // force is the one it enforces.
    guard.server = Some(start_replica(
        &dir.join("a"),
        &runner_url,
        &token_file,
        Some(&database),
    ));
    let url_a = guard.server.as_ref().unwrap().url.clone();
    let (_, g) = cli(&url_a, &key, &["sandbox", "get", "shared"]);
    assert_eq!(g["state"], "running", "{g}");
    assert!(echoes(&url_a, &key, "shared", SERVER4_B));
    assert!(!echoes(&url_a, &key, "shared", SERVER4));

    // Killed amid a delete: the half-deleted sandbox is gone from the
    // store and the runner. (A create asks the runner for its snapshots
    // before it takes the lock, so a stopped runner holds it there; a
    // create cut short is crates/server/tests/replicas.rs's.)
    kill_amid(&mut guard, to(&["sandbox", "delete", "shared"]));
    let (code, list) = cli(&url_b, &key, &["sandbox", "list"]);
    assert_eq!(code, 0);
    assert_eq!(list, serde_json::json!([]), "{list}");
    assert_eq!(
        std::fs::read_dir(dir.join("runner/runtime/sandboxes"))
            .unwrap()
            .count(),
        0,
        "the runner keeps nothing the store does not know"
    );
    assert_eq!(
        pg.psql("split", "SELECT count(*) FROM sandboxes").unwrap(),
        "0"
    );
    drop(b);
}

/// A `sandgate runner` (with `extra` flags) and a `sandgate server` over
/// it, their files in a directory of their own named after `test`: the
/// guard (the API's process and the files), the runner's process, the
/// runner's token file and its URL.
fn split(
    lab: &Lab,
    test: &str,
    extra: &[&str],
    tls: bool,
) -> (Cleanup, KillOnDrop, std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("sandgate-{test}-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("runner.token");
    std::fs::write(&token_file, format!("a-runner-token-for-the-{test}-test\n")).unwrap();
    let mut flags: Vec<String> = extra.iter().map(ToString::to_string).collect();
    if tls {
        flags.extend(runner_tls(&dir));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut guard = Cleanup { dir, server: None };
    let (runner, runner_url) = start_runner(lab, &guard.dir, &token_file, &flags);
    guard.server = Some(start_api(&guard.dir, &runner_url, &token_file));
    (guard, KillOnDrop(runner), token_file, runner_url)
}

#[test]
fn a_server_drives_the_sandgate_runner_of_its_host_and_either_restarts_alone() {
    let lab = Lab::up().unwrap();
    // Dropped in turn: the runner's process, then the API's and the
    // runtime's files (the guard), then the lab.
    // Over TLS, with a CA of the test's own.
    let (mut guard, mut runner, token_file, runner_url) = split(&lab, "split", &[], true);
    let dir = guard.dir.clone();
    assert!(runner_url.starts_with("https://"), "{runner_url}");

    // A runner without TLS listens on loopback only; an API with another
    // token, or that trusts another CA, is turned away at its start.
    let wide = Command::new(env!("CARGO_BIN_EXE_sandgate"))
        .args(["runner", "--listen", "0.0.0.0:0", "--token-file"])
        .arg(&token_file)
        .env_remove("SANDGATE_CONFIG")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&wide.stderr);
    assert!(
        !wide.status.success() && said.contains("loopback"),
        "{said}"
    );
    let other = dir.join("other.token");
    std::fs::write(&other, "not-the-runners-token-at-all").unwrap();
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(
        &other_ca,
        sandgate_testkit::tls::Ca::new("another CA").pem(),
    )
    .unwrap();
    for (token, ca, why) in [
        (&other, dir.join(RUNNERS_CA), "token"),
        (&token_file, other_ca, "not trusted"),
    ] {
        let refused = Command::new(env!("CARGO_BIN_EXE_sandgate"))
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("elsewhere"))
            .args(["--runner-url", &runner_url, "--runner-token-file"])
            .arg(token)
            .arg("--runner-ca")
            .arg(ca)
            .env_remove("SANDGATE_CONFIG")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && said.contains(why), "{said}");
    }

    let url = guard.server.as_ref().unwrap().url.clone();
    let (_, key) = organization(&url, TOKEN, "acme", 3);
    let (code, sb) = cli(
        &url,
        &key,
        &[
            "sandbox",
            "create",
            "--name",
            "split",
            "--network-allow-list",
            &format!("{SERVER4}/32"),
        ],
    );
    assert_eq!(code, 0, "{sb}");
    assert!(echoes(&url, &key, "split", SERVER4));
    assert!(!echoes(&url, &key, "split", SERVER4_B));

    // A snapshot uploaded through the API reaches the runner over its
    // link (streamed, spooled there), and a sandbox starts from it.
    let archive = dir.join("up.tar");
    busybox_archive(&dir, &archive, Some(("etc/marker", "uploaded\n")));
    let (code, v) = cli(
        &url,
        TOKEN,
        &[
            "snapshot",
            "create",
            "up",
            "--file",
            archive.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{v}");
    let (code, v) = cli(
        &url,
        &key,
        &["sandbox", "create", "--name", "from-up", "--snapshot", "up"],
    );
    assert_eq!(code, 0, "{v}");
    let (_, r) = cli(
        &url,
        &key,
        &["sandbox", "exec", "from-up", "cat /etc/marker"],
    );
    assert_eq!(r["stdout"], "uploaded\n", "{r}");
    let (code, _) = cli(&url, &key, &["sandbox", "delete", "from-up"]);
    assert_eq!(code, 0);
    let (code, v) = cli(&url, TOKEN, &["snapshot", "delete", "up"]);
    assert_eq!(code, 0, "{v}");

    // The API is killed and comes back: the runner enforced on, and the
    // sandbox is taken back.
    let mut api = guard.server.take().unwrap();
    api.child.kill().unwrap();
    api.child.wait().unwrap();
    guard.server = Some(start_api(&dir, &runner_url, &token_file));
    let url = guard.server.as_ref().unwrap().url.clone();
    let (_, g) = cli(&url, &key, &["sandbox", "get", "split"]);
    assert_eq!(g["state"], "running", "{g}");
    assert!(echoes(&url, &key, "split", SERVER4));
    assert!(!echoes(&url, &key, "split", SERVER4_B));

    // The runner stops on SIGTERM (the API's streams open), within its
    // grace, and comes back alone on the same files: the API that ran on
    // sees it restarted and gives it its sandboxes back, which run on.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(runner.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(runner.0.wait().unwrap().success());
    // On the same address, as a service manager restarts it.
    let mut flags = runner_tls(&dir);
    flags.extend(["--listen".into(), runner_url.replace("https://", "")]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (again, again_url) = start_runner(&lab, &dir, &token_file, &flags);
    runner.0 = again;
    assert_eq!(again_url, runner_url, "the runner came back elsewhere");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !echoes(&url, &key, "split", SERVER4) {
        assert!(
            std::time::Instant::now() < deadline,
            "the API did not give the restarted runner its sandbox back"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(!echoes(&url, &key, "split", SERVER4_B));
    // And an API that restarts too finds it so.
    let mut api = guard.server.take().unwrap();
    api.child.kill().unwrap();
    api.child.wait().unwrap();
    guard.server = Some(start_api(&dir, &again_url, &token_file));
    let url = guard.server.as_ref().unwrap().url.clone();
    assert!(echoes(&url, &key, "split", SERVER4));
    assert!(!echoes(&url, &key, "split", SERVER4_B));
    let (code, _) = cli(&url, &key, &["sandbox", "delete", "split"]);
    assert_eq!(code, 0);
}

#[test]
fn three_runners_each_in_a_lab_of_its_own_take_sandboxes_by_free_slots_and_one_killed_comes_back_whole(
) {
    // Three sandbox hosts: a lab each (its own host and world), a
    // `sandgate runner` in each, over TLS with one CA; two API replicas on
    // one PostgreSQL over all three. Dropped in turn: the replicas, the
    // runners, the files, PostgreSQL, the labs.
    let labs: Vec<Lab> = (0..3).map(|_| Lab::up().unwrap()).collect();
    let pg = sandgate_testkit::postgres::Postgres::start().unwrap();
    let database = pg.database("fleet").unwrap();
    let names = ["a", "b", "c"];
    let api_dir = std::env::temp_dir().join(format!("sandgate-fleet-{}", labs[0].tag()));
    let _ = std::fs::remove_dir_all(&api_dir);
    std::fs::create_dir_all(&api_dir).unwrap();
    let token_file = api_dir.join("runner.token");
    std::fs::write(&token_file, "a-runners-token-for-the-fleet-test\n").unwrap();
    let tls = runner_tls(&api_dir);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let mut hosts: Vec<Cleanup> = Vec::new();
    let mut runners: Vec<KillOnDrop> = Vec::new();
    let mut urls = Vec::new();
    for lab in &labs {
        let dir = api_dir.join(lab.tag());
        std::fs::create_dir_all(&dir).unwrap();
        let (child, url) = start_runner(lab, &dir, &token_file, &tls);
        hosts.push(Cleanup { dir, server: None });
        runners.push(KillOnDrop(child));
        urls.push(url);
    }
    let mut guard = Cleanup {
        dir: api_dir.join("api"),
        server: None,
    };
    let flags: Vec<String> = names
        .iter()
        .zip(&urls)
        .flat_map(|(n, u)| ["--runner".to_string(), format!("{n}={u}")])
        .collect();
    let replica = |dir: &std::path::Path| {
        spawn_listening(
            Command::new(env!("CARGO_BIN_EXE_sandgate"))
                .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(dir)
                .args(&flags)
                .arg("--runner-token-file")
                .arg(&token_file)
                .arg("--runner-ca")
                .arg(api_dir.join(RUNNERS_CA))
                .env("SANDGATE_ADMIN_TOKEN", TOKEN)
                .env("SANDGATE_DATABASE_URL", &database)
                .env_remove("SANDGATE_CONFIG")
                .stdout(std::process::Stdio::piped()),
        )
    };
    let (child, url) = replica(&guard.dir);
    guard.server = Some(ServerProcess {
        child,
        url: url.clone(),
    });
    let mut guard_b = Cleanup {
        dir: api_dir.join("api-b"),
        server: None,
    };
    let (child, url_b) = replica(&guard_b.dir);
    guard_b.server = Some(ServerProcess {
        child,
        url: url_b.clone(),
    });
    let (_, key) = organization(&url, TOKEN, "acme", 3);
    let allow = format!("{SERVER4}/32");

    // Placed on each in turn (equal slots: the most free, then the
    // operator's order), each enforced by its own host.
    for (i, name) in names.iter().enumerate() {
        let sb = format!("s{i}");
        let (code, v) = cli(
            &url,
            &key,
            &[
                "sandbox",
                "create",
                "--name",
                &sb,
                "--network-allow-list",
                &allow,
            ],
        );
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["runner"], *name, "{v}");
        assert!(echoes(&url, &key, &sb, SERVER4));
        assert!(!echoes(&url, &key, &sb, SERVER4_B));
    }
    let (code, list) = cli(&url, TOKEN, &["admin", "runner", "list"]);
    assert_eq!(code, 0, "{list}");
    let used: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["used"].as_u64().unwrap())
        .collect();
    assert_eq!(used, [1, 1, 1], "{list}");

    // Every mode on each: blocked, then open, one per runner.
    for (prefix, flags) in [("blocked", &["--network-block-all"][..]), ("open", &[][..])] {
        for name in names {
            let sb = format!("{prefix}-{name}");
            let mut args = vec!["sandbox", "create", "--name", sb.as_str()];
            args.extend(flags);
            let (code, v) = cli(&url, &key, &args);
            assert_eq!((code, v["runner"].as_str()), (0, Some(name)), "{v}");
        }
    }
    for name in names {
        assert!(!echoes(&url, &key, &format!("blocked-{name}"), SERVER4));
        assert!(echoes(&url, &key, &format!("open-{name}"), SERVER4_B));
        for sb in [format!("blocked-{name}"), format!("open-{name}")] {
            let (code, v) = cli(&url, &key, &["sandbox", "delete", &sb]);
            assert_eq!(code, 0, "{v}");
        }
    }

    // c is killed: within a look its sandbox is `unreachable`, the others
    // serve on, and a new sandbox goes elsewhere.
    let state = |sb: &str| cli(&url, &key, &["sandbox", "get", sb]).1["state"].clone();
    runners[2].0.kill().unwrap();
    runners[2].0.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while state("s2") != "unreachable" {
        assert!(std::time::Instant::now() < deadline, "{}", state("s2"));
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(echoes(&url, &key, "s0", SERVER4));
    assert!(!echoes(&url, &key, "s1", SERVER4_B));
    // (Through the other replica, which sees c away too.)
    let (code, v) = cli(&url_b, &key, &["sandbox", "create", "--name", "while-away"]);
    assert_eq!(code, 0, "{v}");
    assert_ne!(v["runner"], "c", "{v}");
    let (code, list) = cli(&url, TOKEN, &["admin", "runner", "list"]);
    assert_eq!(
        (code, list[2]["state"].as_str()),
        (0, Some("unreachable")),
        "{list}"
    );

    // c comes back on its address and files: restored from the store,
    // its sandbox runs on with its policy on record.
    let c = start_runner(&labs[2], &hosts[2].dir, &token_file, &{
        let mut f = tls.clone();
        f.extend(["--listen", urls[2].trim_start_matches("https://")]);
        f
    });
    runners[2] = KillOnDrop(c.0);
    assert_eq!(c.1, urls[2]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !echoes(&url, &key, "s2", SERVER4) {
        assert!(
            std::time::Instant::now() < deadline,
            "the API did not restore the runner that came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(state("s2"), "running");
    assert!(!echoes(&url, &key, "s2", SERVER4_B));

    // c killed -9 amid a change, and back each time: what it enforces is
    // what the store says, whole, never wider; what was cut short is
    // finished or gone.
    let c_flags: Vec<&str> = {
        let mut f = tls.clone();
        f.extend(["--listen", urls[2].trim_start_matches("https://")]);
        f
    };
    let amid = |runners: &mut Vec<KillOnDrop>, args: &[&str]| {
        let (u, k) = (url.clone(), key.clone());
        let args: Vec<String> = args.iter().map(ToString::to_string).collect();
        let call = std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&u, &k, &args)
        });
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            % 40;
        std::thread::sleep(std::time::Duration::from_millis(u64::from(jitter)));
        runners[2].0.kill().unwrap();
        runners[2].0.wait().unwrap();
        let _ = call.join().unwrap();
        let (again, _) = start_runner(&labs[2], &hosts[2].dir, &token_file, &c_flags);
        runners[2] = KillOnDrop(again);
        // Back, and restored.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (_, list) = cli(&url, TOKEN, &["admin", "runner", "list"]);
            let (_, v) = cli(&url, &key, &["sandbox", "exec", "s0", "--", "true"]);
            if list[2]["state"] == "active" && v["exitCode"] == 0 {
                let (_, probe) = cli(&url, &key, &["sandbox", "list"]);
                let c_running = probe
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|s| s["runner"] == "c")
                    .all(|s| s["state"] == "running");
                if c_running {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "c never came back: {list}"
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    };
    let stored_allows = |sb: &str| {
        let (_, g) = cli(&url, &key, &["sandbox", "get", sb]);
        g["networkAllowList"].as_str().map(str::to_string)
    };
    let settled = |sb: &str, allowed: std::net::IpAddr, denied: std::net::IpAddr| {
        // Restored within a few seconds of the runner's return.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !echoes(&url, &key, sb, allowed) {
            assert!(
                std::time::Instant::now() < deadline,
                "{sb} never got {allowed}"
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        assert!(!echoes(&url, &key, sb, denied), "{sb} wider than on record");
    };

    // Amid an update: the old list or the new one, as the store says.
    let to_b = format!("{SERVER4_B}/32");
    amid(
        &mut runners,
        &[
            "sandbox",
            "network",
            "update",
            "s2",
            "--network-allow-list",
            &to_b,
        ],
    );
    match stored_allows("s2").as_deref() {
        Some(l) if l == to_b => settled("s2", SERVER4_B, SERVER4),
        Some(l) if l == allow => settled("s2", SERVER4, SERVER4_B),
        other => panic!("s2 stored {other:?}"),
    }

    // Amid a create placed on c (a and b drained): made whole, or gone
    // from the store and from c.
    for name in ["a", "b"] {
        let (code, v) = cli(&url, TOKEN, &["admin", "runner", "drain", name]);
        assert_eq!(code, 0, "{v}");
    }
    amid(
        &mut runners,
        &[
            "sandbox",
            "create",
            "--name",
            "mid",
            "--network-allow-list",
            &allow,
        ],
    );
    let (code, mid) = cli(&url, &key, &["sandbox", "get", "mid"]);
    let made = code == 0;
    if made {
        assert_eq!(
            (mid["runner"].as_str(), mid["state"].as_str()),
            (Some("c"), Some("running")),
            "{mid}"
        );
        settled("mid", SERVER4, SERVER4_B);
    }
    for name in ["a", "b"] {
        let (code, v) = cli(&url, TOKEN, &["admin", "runner", "drain", name, "--undo"]);
        assert_eq!(code, 0, "{v}");
    }

    // Amid a delete: gone, from the store and from c.
    amid(&mut runners, &["sandbox", "delete", "s2"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cli(&url, &key, &["sandbox", "get", "s2"]).0 == 0 {
        assert!(std::time::Instant::now() < deadline, "s2 never went");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let on_c = std::fs::read_dir(hosts[2].dir.join("runner/runtime/sandboxes"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(on_c, usize::from(made), "c keeps what the store says only");

    // Replica a killed -9: b serves on, each sandbox enforced by its
    // runner; everything deleted through b, from each runner.
    let mut a = guard.server.take().unwrap();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(echoes(&url_b, &key, "s0", SERVER4));
    assert!(!echoes(&url_b, &key, "s1", SERVER4_B));
    let mut left = vec!["s0", "s1", "while-away"];
    if made {
        left.push("mid");
    }
    for sb in left {
        let (code, v) = cli(&url_b, &key, &["sandbox", "delete", sb]);
        assert_eq!(code, 0, "{sb}: {v}");
    }
    for host in &hosts {
        let left = std::fs::read_dir(host.dir.join("runner/runtime/sandboxes"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "{}", host.dir.display());
    }
    drop(guard_b);
    drop(guard);
    drop(runners);
    drop(hosts);
    let _ = std::fs::remove_dir_all(&api_dir);
}

#[test]
fn runners_register_with_the_tokens_the_operator_issued_and_an_api_of_no_runner_places_on_them() {
    // An API with no runner of its own (no privilege needed) takes the
    // runners that register: two, each in a lab of its own, over TLS.
    let labs: Vec<Lab> = (0..2).map(|_| Lab::up().unwrap()).collect();
    let dir = std::env::temp_dir().join(format!("sandgate-register-{}", labs[0].tag()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tls = runner_tls(&dir);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let mut guard = Cleanup {
        dir: dir.join("api"),
        server: None,
    };
    let (child, url) = spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_sandgate"))
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&guard.dir)
            .arg("--register-runners")
            .arg("--runner-ca")
            .arg(dir.join(RUNNERS_CA))
            .env("SANDGATE_ADMIN_TOKEN", TOKEN)
            .env_remove("SANDGATE_CONFIG")
            .env_remove("SANDGATE_DATABASE_URL")
            .stdout(std::process::Stdio::piped()),
    );
    guard.server = Some(ServerProcess {
        child,
        url: url.clone(),
    });
    let (_, key) = organization(&url, TOKEN, "acme", 3);
    let (code, v) = cli(&url, &key, &["sandbox", "create", "--name", "early"]);
    assert_ne!(code, 0, "no runner yet: {v}");

    let mut hosts = Vec::new();
    let mut runners = Vec::new();
    for (i, lab) in labs.iter().enumerate() {
        let name = format!("r{i}");
        let zone = format!("zone=z{i}");
        let (code, issued) = cli(
            &url,
            TOKEN,
            &["admin", "runner", "token", &name, "--label", &zone],
        );
        assert_eq!(code, 0, "{issued}");
        let token_file = dir.join(format!("{name}.token"));
        std::fs::write(&token_file, issued["token"].as_str().unwrap()).unwrap();
        let host_dir = dir.join(lab.tag());
        std::fs::create_dir_all(&host_dir).unwrap();
        let mut flags = tls.clone();
        flags.extend(["--api", url.as_str(), "--name", name.as_str()]);
        let (child, _) = start_runner(lab, &host_dir, &token_file, &flags);
        hosts.push(Cleanup {
            dir: host_dir,
            server: None,
        });
        runners.push(KillOnDrop(child));
        // It joins at its first heartbeat.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (_, list) = cli(&url, TOKEN, &["admin", "runner", "list"]);
            let joined = list.as_array().is_some_and(|l| {
                l.iter().any(|r| {
                    r["name"] == name
                        && r["state"] == "active"
                        && r["labels"]["zone"] == format!("z{i}")
                })
            });
            if joined {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never joined: {list}"
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }

    // Placed on each, each enforced by its host.
    let allow = format!("{SERVER4}/32");
    let mut on = Vec::new();
    for sb in ["x", "y"] {
        let (code, v) = cli(
            &url,
            &key,
            &[
                "sandbox",
                "create",
                "--name",
                sb,
                "--network-allow-list",
                &allow,
            ],
        );
        assert_eq!(code, 0, "{v}");
        on.push(v["runner"].as_str().unwrap().to_string());
        assert!(echoes(&url, &key, sb, SERVER4));
        assert!(!echoes(&url, &key, sb, SERVER4_B));
    }
    on.sort();
    assert_eq!(on, ["r0", "r1"]);
    for sb in ["x", "y"] {
        let (code, v) = cli(&url, &key, &["sandbox", "delete", sb]);
        assert_eq!(code, 0, "{v}");
    }
    drop(guard);
    drop(runners);
    drop(hosts);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A connection through the name-checking gateway (the lab's byte stream,
/// checked as a name's port), opened from `ns` under `name`.
fn through_gateway(ns: &sandgate_netns::Netns, name: &'static str) -> std::net::TcpStream {
    use std::io::Read;
    ns.run(move || {
        let mut s = hello_to_stream(name)?;
        let mut buf = [0u8; 4096];
        s.read_exact(&mut buf)?;
        Ok(s)
    })
    .unwrap()
}

/// A connection to the lab's byte stream at the address `api.example.com`
/// resolves to, that sent a TLS hello naming `name` (in the caller's
/// namespace).
fn hello_to_stream(name: &str) -> std::io::Result<std::net::TcpStream> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::new(SERVER4_B, TCP_STREAM),
        std::time::Duration::from_secs(3),
    )?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
    s.write_all(&craft::records(
        &craft::hello_message(&[craft::sni(&[name])]),
        16384,
    ))?;
    Ok(s)
}

/// How a connection ends: read until it does.
fn ends(mut s: std::net::TcpStream) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; 64 * 1024];
    let start = std::time::Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return "closed".into(),
            Ok(_) if start.elapsed() > std::time::Duration::from_secs(3) => {
                return "still open".into()
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return "reset".into(),
            Err(e) => return e.to_string(),
        }
    }
}

#[test]
fn a_runner_killed_takes_its_gateway_connections_with_it_and_widens_nothing() {
    let lab = Lab::up().unwrap();
    let ports = format!("80,443,{TCP_STREAM}");
    let flags = ["--name-checked-ports", ports.as_str()];
    let (mut guard, mut runner, token_file, _) = split(&lab, "gwkill", &flags, false);
    let dir = guard.dir.clone();
    let url = guard.server.as_ref().unwrap().url.clone();
    let (_, key) = organization(&url, TOKEN, "gw", 3);
    let (code, sb) = cli(
        &url,
        &key,
        &[
            "sandbox",
            "create",
            "--name",
            "named",
            "--domain-allow-list",
            "api.example.com",
        ],
    );
    assert_eq!(code, 0, "{sb}");
    let id = sb["id"].as_str().unwrap().to_string();
    let resolve = |url: &str| {
        let (_, r) = cli(
            url,
            &key,
            &["sandbox", "exec", "named", "--", "nslookup api.example.com"],
        );
        assert!(
            r["stdout"]
                .as_str()
                .unwrap()
                .contains(&SERVER4_B.to_string()),
            "{r}"
        );
    };
    resolve(&url);
    let owners = sandgate_testkit::slot_owners(&dir.join("runner"), lab.tag()).unwrap();
    let (ns_name, _) = owners
        .into_iter()
        .find(|(_, o)| o.as_deref() == Some(id.as_str()))
        .unwrap();
    let ns = sandgate_netns::Netns::open(&ns_name).unwrap();
    let open = through_gateway(&ns, "api.example.com");

    // kill -9: the connection ends with the process; while no runner
    // runs, a steered connection finds no gateway and is refused.
    runner.0.kill().unwrap();
    runner.0.wait().unwrap();
    assert_eq!(ends(open), "closed");
    let refused = ns
        .run(|| {
            Ok(std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::new(SERVER4_B, TCP_STREAM),
                std::time::Duration::from_secs(3),
            )
            .map_err(|e| e.kind()))
        })
        .unwrap();
    assert_eq!(refused.err(), Some(std::io::ErrorKind::ConnectionRefused));

    // Back (the API too, which gives the runner its sandboxes again):
    // once the sandbox resolved its name again (its binding died with
    // the process), another name of the address is still reset and the
    // name passes.
    let (again, again_url) = start_runner(&lab, &dir, &token_file, &flags);
    runner.0 = again;
    let mut api = guard.server.take().unwrap();
    api.child.kill().unwrap();
    api.child.wait().unwrap();
    guard.server = Some(start_api(&dir, &again_url, &token_file));
    let url = guard.server.as_ref().unwrap().url.clone();
    resolve(&url);
    let denied = ns
        .run(|| {
            use std::io::Read;
            let mut s = hello_to_stream("www.example.net")?;
            let mut buf = [0u8; 16];
            Ok(s.read(&mut buf).map_err(|e| e.kind()))
        })
        .unwrap();
    assert_eq!(denied.err(), Some(std::io::ErrorKind::ConnectionReset));
    assert_eq!(ends(through_gateway(&ns, "api.example.com")), "still open");
    let (code, _) = cli(&url, &key, &["sandbox", "delete", "named"]);
    assert_eq!(code, 0);
}

/// A child process killed when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_requests_json_log_line_carries_its_id_and_the_answer_says_it() {
    use std::io::{BufRead, Read, Write};
    let lab = Lab::up().unwrap();
    let dir = std::env::temp_dir().join(format!("sandgate-log-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cmd = server_command(&lab, &dir, &["--log-format", "json"]);
    cmd.stderr(std::process::Stdio::piped());
    let (mut child, url) = spawn_listening(&mut cmd);
    let stderr = child.stderr.take().unwrap();
    let _guard = Cleanup {
        dir: dir.clone(),
        server: Some(ServerProcess {
            child,
            url: url.clone(),
        }),
    };
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // A request by hand: its headers sent and read as they are.
    let ask = |id: Option<&str>| {
        let addr = url.trim_start_matches("http://").trim_end_matches('/');
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let id = id
            .map(|i| format!("x-request-id: {i}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET /health HTTP/1.1\r\nHost: x\r\n{id}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    };
    let answer = ask(Some("probe-42"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_lowercase().contains("x-request-id: probe-42"),
        "{answer}"
    );
    // Without one, the server makes one (a UUID) and says it.
    let answer = ask(None).to_lowercase();
    let made = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(made.trim().len(), 36, "{made}");
    // The answer's log line: JSON, in the request's span.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            break None;
        };
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["span"]["id"] == "probe-42" && v["fields"]["message"] == "finished processing request"
        {
            break Some(v);
        }
        seen.push(line);
    };
    let v = found.unwrap_or_else(|| panic!("no log line of request probe-42 in {seen:#?}"));
    assert_eq!(
        (
            &v["span"]["method"],
            &v["span"]["path"],
            &v["fields"]["status"]
        ),
        (
            &Value::from("GET"),
            &Value::from("/health"),
            &Value::from(200)
        ),
        "{v}"
    );
    // What the runner logs of a sandbox is in a span that names it.
    let (_, key) = organization(&url, TOKEN, "logs", 3);
    let (code, made) = cli(&url, &key, &["sandbox", "create", "--name", "logged"]);
    assert_eq!(code, 0, "{made}");
    let id = made["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let created = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            break None;
        };
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["fields"]["message"] == "created" {
            break Some(v);
        }
        seen.push(line);
    };
    let v = created.unwrap_or_else(|| panic!("no line of the create in {seen:#?}"));
    assert_eq!(
        (&v["span"]["name"], &v["span"]["id"], &v["span"]["op"]),
        (
            &Value::from("sandbox"),
            &Value::from(id),
            &Value::from("create")
        ),
        "{v}"
    );
    assert!(v["fields"]["interface"].is_string(), "{v}");
}

#[test]
fn secrets_are_stored_held_and_removed_from_the_command_line() {
    let lab = Lab::up().unwrap();
    let dir = std::env::temp_dir().join(format!("sandgate-cli-secrets-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("secrets.key");
    std::fs::write(&key_file, format!("{}\n", "3c".repeat(32))).unwrap();
    let value_file = dir.join("value");
    std::fs::write(&value_file, "tok_from_a_file\n").unwrap();
    let key_arg = key_file.to_string_lossy().into_owned();
    let guard = Cleanup {
        dir: dir.clone(),
        server: Some(start_server_with(
            &lab,
            &dir,
            &["--secrets-key-file", &key_arg],
        )),
    };
    let url = guard.server.as_ref().unwrap().url.clone();
    let (_, key) = organization(&url, TOKEN, "vault", 3);
    let value_arg = value_file.to_string_lossy().into_owned();
    let (code, v) = cli(
        &url,
        &key,
        &[
            "secret",
            "create",
            "GH_TOKEN",
            "--host",
            "api.example.com",
            "--value-file",
            &value_arg,
        ],
    );
    assert_eq!(code, 0, "{v}");
    let (code, list) = cli(&url, &key, &["secret", "list"]);
    assert_eq!(code, 0, "{list}");
    assert_eq!(list[0]["name"], "GH_TOKEN", "{list}");
    assert!(!list.to_string().contains("tok_from_a_file"), "{list}");
    let (code, s) = cli(
        &url,
        &key,
        &[
            "sandbox", "create", "--name", "holder", "--secret", "GH_TOKEN",
        ],
    );
    assert_eq!(code, 0, "{s}");
    assert!(
        s["env"]["GH_TOKEN"]
            .as_str()
            .is_some_and(|p| p.starts_with("sg_secret_")),
        "{s}"
    );
    let (code, e) = cli(&url, &key, &["secret", "delete", "GH_TOKEN"]);
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (2, Some("secret_in_use")),
        "{e}"
    );
    assert_eq!(cli(&url, &key, &["sandbox", "delete", "holder"]).0, 0);
    assert_eq!(cli(&url, &key, &["secret", "delete", "GH_TOKEN"]).0, 0);
    // A key file that is no key stops the server at its start, saying so.
    std::fs::write(&key_file, "not a key").unwrap();
    let out = server_command(&lab, &dir.join("other"), &["--secrets-key-file", &key_arg])
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("64 hexadecimal digits"),
        "{said}"
    );
}

/// A Debian snapshot, made by the operator from the command line (built
/// from Debian's packages once, then from the cache: the lab's tarball,
/// whose packages are the snapshot's and `EXTRA`). A sandbox of it
/// reaches the lab's stand-ins of apt, PyPI and npm under the catalog's
/// names in restricted mode, and apt trusts the stand-in's archive only
/// once its key is given: what apt is sent is verified.
#[test]
fn the_operator_makes_a_debian_snapshot_whose_sandboxes_reach_the_package_services() {
    let lab = Lab::up().unwrap();
    let dir = std::env::temp_dir().join(format!("sandgate-debian-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    let guard = Cleanup {
        dir: dir.clone(),
        server: Some(start_server(&lab, &dir)),
    };
    let url = guard.server.as_ref().unwrap().url.clone();
    let (_, org) = cli(
        &url,
        TOKEN,
        &["admin", "org", "create", "dev", "--tier", "2"],
    );
    let (_, key) = cli(
        &url,
        TOKEN,
        &["admin", "org", "key", org["id"].as_str().unwrap()],
    );
    let key = key["key"].as_str().unwrap().to_string();

    // Refused before anything is built: a name that is not a package's,
    // and `--include` without `--debian`.
    let (code, e) = cli(
        &url,
        TOKEN,
        &["snapshot", "create", "d", "--debian", "--include", "a;b"],
    );
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (2, Some("invalid_package")),
        "{e}"
    );
    let (code, e) = cli(
        &url,
        TOKEN,
        &["snapshot", "create", "d", "--include", "curl"],
    );
    assert_eq!(code, 2, "{e}");

    let extra = sandgate_lab::debian::EXTRA.join(",");
    let (code, v) = cli(
        &url,
        TOKEN,
        &[
            "snapshot",
            "create",
            "debian",
            "--debian",
            "--include",
            &extra,
        ],
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        v,
        serde_json::json!({"name": "debian", "runners": ["main"]})
    );
    let (code, v) = cli(
        &url,
        &key,
        &["sandbox", "create", "--name", "deb", "--snapshot", "debian"],
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["effectiveNetwork"]["mode"], "restricted", "{v}");
    let run = |command: &str| {
        let (_, v) = cli(&url, &key, &["sandbox", "exec", "deb", "--", command]);
        (
            v["exitCode"].as_i64().unwrap(),
            v["result"].as_str().unwrap().to_string(),
        )
    };
    let (code, out) =
        run("python3 --version; pip --version; node --version; npm --version; curl --version");
    assert_eq!(code, 0, "{out}");
    // Signed by a key apt was not given: refused.
    let (code, out) = run("apt-get update");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("NO_PUBKEY") || out.contains("not signed"),
        "{out}"
    );
    // The lab's CA, for the checks' own bundle (the system's is
    // read-only), and the archive's key.
    let trust = format!(
        "set -e\ncat /etc/ssl/certs/ca-certificates.crt - > /root/trusted.pem <<'EOF'\n{}\nEOF\n\
         cat > /etc/apt/trusted.gpg.d/lab.asc <<'EOF'\n{}\nEOF",
        lab.ca_pem().trim(),
        sandgate_lab::mirrors::apt_key().unwrap().trim()
    );
    assert_eq!(run(&trust).0, 0);
    let (code, out) = run("apt-get update");
    assert_eq!(code, 0, "{out}");
    let env = "export SSL_CERT_FILE=/root/trusted.pem REQUESTS_CA_BUNDLE=/root/trusted.pem \
               PIP_CERT=/root/trusted.pem NODE_EXTRA_CA_CERTS=/root/trusted.pem;";
    let (code, out) = run(&format!("{env} pip install --dry-run requests"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "Would install requests-{}",
            sandgate_lab::mirrors::WHEEL_VERSION
        )),
        "{out}"
    );
    let (code, out) = run(&format!("{env} npm ping"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PONG"), "{out}");
    let (code, _) = cli(&url, &key, &["sandbox", "delete", "deb"]);
    assert_eq!(code, 0);
    let (code, _) = cli(&url, TOKEN, &["snapshot", "delete", "debian"]);
    assert_eq!(code, 0);
    drop(guard);
}
