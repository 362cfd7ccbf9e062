//! Each sandbox's resources through the API (docs/REQUIREMENTS.md,
//! "Resources"): the tier's defaults and maxima, what a create may ask
//! for, a memory hog killed alone, a disk filler that fills only its own
//! disk, and a sandbox whose init dies reported as such and never started
//! again. Needs root, runc and busybox-static.

#![allow(clippy::unwrap_used)]

mod common;

use common::Api;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn resources(v: &Value) -> (u64, f64, u64) {
    let r = &v["resources"];
    (
        r["memoryMiB"].as_u64().unwrap(),
        r["cpus"].as_f64().unwrap(),
        r["diskMiB"].as_u64().unwrap(),
    )
}

#[test]
fn a_create_gets_the_tiers_defaults_or_what_it_asks_within_the_maximum() {
    let api = Api::start();
    let (_, key) = api.organization("acme", 3);
    let plain = api.sandbox(&key, json!({"name": "plain"}));
    assert_eq!(resources(&plain), (1024, 1.0, 2048));
    let small = api.sandbox(
        &key,
        json!({"name": "small", "resources": {"memoryMiB": 128, "cpus": 0.25, "diskMiB": 64}}),
    );
    assert_eq!(resources(&small), (128, 0.25, 64));
    // What a create asks for is what it gets, in the kernel too: the
    // sandbox's root file system is a disk of that size.
    let df = api.exec(&key, "small", "df -k / | tail -1");
    let total_kib: u64 = df["stdout"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!((50 * 1024..=64 * 1024).contains(&total_kib), "{df}");
    // More than the tier allows, or no amount at all, is refused whole.
    for (body, status, code) in [
        (json!({"memoryMiB": 1 << 20}), 403, "resources_exceed_tier"),
        (json!({"cpus": 64}), 403, "resources_exceed_tier"),
        (json!({"diskMiB": 1 << 30}), 403, "resources_exceed_tier"),
        (json!({"cpus": 0}), 400, "invalid_resources"),
        (json!({"memoryMiB": 0}), 400, "invalid_resources"),
        (json!({"memory": 64}), 422, "invalid_request"),
    ] {
        let (s, e) = api.post(
            "/api/sandbox",
            &key,
            json!({"name": "refused", "resources": body}),
        );
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {e}"
        );
    }
    let (_, list) = api.get("/api/sandbox", &key);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

#[test]
fn a_memory_hog_is_killed_alone_and_a_disk_filler_fills_only_its_disk() {
    let api = Api::start();
    let (_, key) = api.organization("acme", 3);
    api.sandbox(
        &key,
        json!({"name": "hog", "resources": {"memoryMiB": 64, "diskMiB": 64}}),
    );
    api.sandbox(&key, json!({"name": "neighbour"}));
    // 256 MiB in a sandbox of 64: that process is killed, in it alone.
    let big = api.exec(&key, "hog", "dd if=/dev/zero of=/dev/null bs=256M count=1");
    assert_eq!(big["exitCode"], 137, "{big}");
    assert_eq!(api.exec(&key, "hog", "echo alive")["stdout"], "alive\n");
    let fine = api.exec(
        &key,
        "neighbour",
        "dd if=/dev/zero of=/dev/null bs=256M count=1",
    );
    assert_eq!(fine["exitCode"], 0, "{fine}");
    // 200 MiB written on a disk of 64: the disk is full, for it alone.
    let filled = api.exec(
        &key,
        "hog",
        "dd if=/dev/zero of=/root/big bs=1M count=200 2>&1",
    );
    assert_ne!(filled["exitCode"], 0, "{filled}");
    assert!(
        filled["stdout"].as_str().unwrap().contains("No space left"),
        "{filled}"
    );
    let wrote = api.exec(
        &key,
        "neighbour",
        "dd if=/dev/zero of=/root/fine bs=1M count=100 2>&1 && echo wrote",
    );
    assert!(
        wrote["stdout"].as_str().unwrap().ends_with("wrote\n"),
        "{wrote}"
    );
    // What the hog wrote sits in its own image, bounded by its size.
    let sandboxes = api.runtime_dir().join("sandboxes");
    let hog_id = api.get("/api/sandbox/hog", &key).1["id"]
        .as_str()
        .unwrap()
        .to_string();
    use std::os::unix::fs::MetadataExt;
    let image = std::fs::metadata(sandboxes.join(&hog_id).join("disk/disk.img")).unwrap();
    assert!(
        image.blocks() * 512 <= 64 << 20,
        "{} bytes",
        image.blocks() * 512
    );
    // Room again once the file is gone.
    let again = api.exec(
        &key,
        "hog",
        "rm /root/big && echo x > /root/small && cat /root/small",
    );
    assert_eq!(again["stdout"], "x\n", "{again}");
}

/// Waits (a few seconds at most) for sandbox `name` to be in `state`.
fn wait_state(api: &Api, key: &str, name: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = api.get(&format!("/api/sandbox/{name}"), key);
        if v["state"] == state || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_sandbox_whose_init_dies_is_reported_so_and_never_started_again() {
    let mut api = Api::start();
    let (_, key) = api.organization("acme", 3);
    let made = api.sandbox(&key, json!({"name": "doomed"}));
    let id = made["id"].as_str().unwrap().to_string();
    api.sandbox(&key, json!({"name": "other"}));
    assert_eq!(
        api.exec(&key, "doomed", "echo kept > /root/file")["exitCode"],
        0
    );
    // The init dies (killed from the host: nothing inside may kill it).
    let pid_file = api
        .runtime_dir()
        .join("sandboxes")
        .join(&id)
        .join("init.pid");
    let pid: i32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let seen = wait_state(&api, &key, "doomed", "died");
    assert_eq!(seen["state"], "died", "{seen}");
    // Every read says so; what needs it running is refused with the state.
    let (s, e) = api.post(
        "/api/sandbox/doomed/process/execute",
        &key,
        json!({"command": "true"}),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("sandbox_not_running")),
        "{e}"
    );
    assert_eq!(e["error"]["state"], "died");
    let (_, list) = api.get("/api/sandbox", &key);
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "doomed")
        .unwrap()
        .clone();
    assert_eq!(listed["state"], "died");
    // The metrics count it so, as the death was recorded.
    let mode = listed["effectiveNetwork"]["mode"]
        .as_str()
        .unwrap()
        .to_string();
    let metrics = api.metrics();
    assert!(
        metrics.contains(&format!(
            "sandgate_sandboxes{{state=\"died\",mode=\"{mode}\"}} 1"
        )),
        "{metrics}"
    );
    // The other sandbox is untouched.
    assert_eq!(api.exec(&key, "other", "echo fine")["stdout"], "fine\n");
    // A restart of the server does not start it again on its files.
    api.restart();
    let (_, after) = api.get("/api/sandbox/doomed", &key);
    assert_eq!(after["state"], "died", "{after}");
    let processes = std::fs::read_to_string(
        api.runtime_dir()
            .join("sandboxes")
            .join(&id)
            .join("sandbox.json"),
    )
    .unwrap();
    assert!(processes.contains("\"died\":true"), "{processes}");
    assert_eq!(api.exec(&key, "other", "echo fine")["stdout"], "fine\n");
    // It can still be deleted; the count is taken back from the store at
    // the restart, and the delete takes it away.
    let counted = format!("sandgate_sandboxes{{state=\"died\",mode=\"{mode}\"}} 1");
    assert!(api.metrics().contains(&counted));
    let (s, _) = api.delete("/api/sandbox/doomed", &key);
    assert_eq!(s, 204);
    let metrics = api.metrics();
    assert!(
        metrics.contains(&format!(
            "sandgate_sandboxes{{state=\"died\",mode=\"{mode}\"}} 0"
        )) || !metrics.contains("state=\"died\""),
        "{metrics}"
    );
}
