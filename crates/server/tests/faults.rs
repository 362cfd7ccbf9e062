//! Faults a host meets (issue 8): an exhausted address pool and a full
//! disk under the store. Each is a clear error with a code; nothing is
//! widened, nothing is left half-made, and the server works again once the
//! cause is gone. (A failing upstream resolver is in
//! `crates/dns/tests/service.rs`; `kill -9` of the server in
//! `crates/sandgate/tests/faults.rs`.)

#![allow(clippy::unwrap_used)]

mod common;

use common::Api;
use sandgate_lab::addrs::*;
use serde_json::json;
use std::path::PathBuf;

/// The number of slot namespaces of the server's lab.
fn slots(api: &Api) -> usize {
    sandgate_netns::Netns::list(&format!("{}-s", api.lab().tag()))
        .unwrap()
        .len()
}

/// The slots once the warm pool (one slot in these tests) is refilled
/// after `sandboxes` were made: the refill runs after a create has
/// answered, so a count taken at once may miss the slot it is making.
fn settled_slots(api: &Api, sandboxes: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while slots(api) < sandboxes + 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    slots(api)
}

#[test]
fn an_exhausted_address_pool_is_a_clear_error_and_widens_nothing() {
    // A /29 of IPv4 holds three slots.
    let api = Api::start_with(|cfg| {
        let subnets = ["198.18.0.0/29", "2001:db8:5a00::/48"].map(String::from);
        cfg.policy = sandgate_lab::lab_policy_with(Some(subnets.to_vec()));
    });
    let (_, key) = api.organization("acme", 3);
    for name in ["a", "b", "c"] {
        api.sandbox(
            &key,
            json!({"name": name, "networkAllowList": format!("{SERVER4}/32")}),
        );
    }
    let (status, e) = api.post("/api/sandbox", &key, json!({"name": "d"}));
    assert_eq!(status, 503, "{e}");
    assert_eq!(e["error"]["code"], "capacity_exhausted");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("no free network slot"), "{message}");
    // Nothing of the refused one stays, and the others keep their policy.
    let (_, list) = api.get("/api/sandbox", &key);
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    assert_eq!(slots(&api), 3);
    assert!(api.echoes(&key, "a", &SERVER4.to_string()));
    assert!(!api.echoes(&key, "a", &SERVER4_B.to_string()));
    // A slot given back is used again.
    let (status, _) = api.call(
        "DELETE",
        "/api/sandbox/b",
        Some(&key),
        common::Send::Nothing,
    );
    assert_eq!(status, 204);
    let d = api.sandbox(&key, json!({"name": "d", "networkBlockAll": true}));
    assert_eq!(d["effectiveNetwork"]["mode"], "blocked");
    assert!(!api.echoes(&key, "d", &SERVER4.to_string()));
}

/// A small tmpfs mounted on a directory; when dropped (after the server
/// that used it), unmounted and the server's whole directory removed.
struct SmallDisk(PathBuf, PathBuf);

impl SmallDisk {
    /// A tmpfs of `size` on `dir`, inside the server's directory `server_dir`.
    fn mount(dir: PathBuf, size: &str, server_dir: PathBuf) -> SmallDisk {
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("sandgate-test")
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success());
        SmallDisk(dir, server_dir)
    }

    /// Fills the disk: a file that grows until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..512]).is_ok() {}
        path
    }

    /// What takes the disk's room, for a failure's message: its use as
    /// the file system counts it, the largest files on it, and the files
    /// on it that were removed but are still held open, by process (room
    /// a removal does not give back).
    fn report(&self) -> String {
        use std::os::unix::fs::MetadataExt;
        let used_kib = nix::sys::statvfs::statvfs(&self.0)
            .map(|s| ((s.blocks() - s.blocks_free()) * s.fragment_size()) >> 10);
        let dev = std::fs::metadata(&self.0).map_or(0, |m| m.dev());
        // Every file on this file system (not below the mounts on it).
        let mut files = Vec::new();
        let mut dirs = vec![self.0.clone()];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let Ok(m) = e.metadata() else { continue };
                if m.dev() != dev {
                    continue;
                }
                match m.is_dir() {
                    true => dirs.push(e.path()),
                    false => files.push((m.blocks() / 2, e.path())),
                }
            }
        }
        files.sort();
        let largest: Vec<String> = files
            .iter()
            .rev()
            .take(8)
            .map(|(kib, p)| format!("{kib} KiB {}", p.display()))
            .collect();
        let mut held = Vec::new();
        for proc_ in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            for fd in std::fs::read_dir(proc_.path().join("fd"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(target) = std::fs::read_link(fd.path()) {
                    let t = target.to_string_lossy();
                    if t.starts_with(&*self.0.to_string_lossy()) && t.ends_with("(deleted)") {
                        let comm =
                            std::fs::read_to_string(proc_.path().join("comm")).unwrap_or_default();
                        held.push(format!(
                            "{t} by {} ({})",
                            proc_.file_name().to_string_lossy(),
                            comm.trim()
                        ));
                    }
                }
            }
        }
        format!("disk {}: {used_kib:?} KiB used; largest files: {largest:?}; removed but held open: {held:?}", self.0.display())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_loses_nothing() {
    let mut disk = None;
    let api = Api::start_with(|cfg| {
        let dir = cfg.data_dir.parent().unwrap().to_path_buf();
        disk = Some(SmallDisk::mount(dir.clone(), "48m", dir));
    });
    // (`disk` outlives `api`: the server's files go before the disk.)
    let disk = disk.as_ref().unwrap();
    let (_, key) = api.organization("acme", 3);
    api.sandbox(
        &key,
        json!({"name": "kept", "networkAllowList": format!("{SERVER4}/32")}),
    );
    let before = settled_slots(&api, 1);
    let filler = disk.fill();

    // A create: refused with its code, and nothing of it is left.
    let (status, e) = api.post("/api/sandbox", &key, json!({"name": "new"}));
    assert_eq!(status, 507, "{e}");
    assert_eq!(e["error"]["code"], "storage_full");
    let (_, list) = api.get("/api/sandbox", &key);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert!(slots(&api) <= before, "a slot was left");
    // An update: done, or refused with the old policy still in force (or
    // the sandbox cut off), never wider.
    let (status, v) = api.post(
        "/api/sandbox/kept/network-settings",
        &key,
        json!({"networkAllowList": format!("{SERVER4_B}/32")}),
    );
    let reach = |dest: std::net::IpAddr| {
        std::fs::remove_file(&filler).unwrap();
        let r = echoes(&api, disk, &key, "kept", dest);
        disk.fill();
        r
    };
    let (a, b) = (reach(SERVER4), reach(SERVER4_B));
    println!(
        "an update on a full disk: {status} {v}; reaches {SERVER4}: {a}, {SERVER4_B}: {b}; {}",
        disk.report()
    );
    match status {
        200 => assert_eq!((a, b), (false, true)),
        507 => {
            assert_eq!(v["error"]["code"], "storage_full");
            assert!(!b, "a refused update widened the policy");
        }
        other => panic!("{other}: {v}"),
    }

    // Space again: everything works, and nothing was lost.
    std::fs::remove_file(&filler).unwrap();
    let (_, got) = api.get("/api/sandbox/kept", &key);
    assert_eq!(got["state"], "running", "{got}");
    let (s, v) = api.post(
        "/api/sandbox",
        &key,
        json!({"name": "new", "networkBlockAll": true}),
    );
    assert_eq!(s, 201, "{v}; {}", disk.report());
    let (s, v) = api.post(
        "/api/sandbox/kept/network-settings",
        &key,
        json!({"networkAllowList": format!("{SERVER4}/32")}),
    );
    assert_eq!(s, 200, "{v}; {}", disk.report());
    assert!(echoes(&api, disk, &key, "kept", SERVER4));
    assert!(!echoes(&api, disk, &key, "new", SERVER4));
}

/// [`Api::echoes`], an exec refused with what takes `disk`'s room.
fn echoes(api: &Api, disk: &SmallDisk, key: &str, name: &str, dest: std::net::IpAddr) -> bool {
    api.try_echoes(key, name, &dest.to_string())
        .unwrap_or_else(|(s, v)| panic!("exec: {s} {v}; {}", disk.report()))
}

#[test]
fn a_full_runner_disk_leaves_no_slot_behind() {
    // The store has room; the runner's files (slot journal, overlays,
    // bundles) are on a small disk, in a /29 of three slots, so that a
    // slot or an index a failed create kept would show at once.
    let mut disk = None;
    let api = Api::start_with(|cfg| {
        let subnets = ["198.18.0.0/29", "2001:db8:5a00::/48"].map(String::from);
        cfg.policy = sandgate_lab::lab_policy_with(Some(subnets.to_vec()));
        let dir = cfg.data_dir.parent().unwrap().to_path_buf();
        disk = Some(SmallDisk::mount(cfg.runner.data_dir.clone(), "48m", dir));
    });
    let disk = disk.as_ref().unwrap();
    let (_, key) = api.organization("acme", 3);
    api.sandbox(
        &key,
        json!({"name": "kept", "networkAllowList": format!("{SERVER4}/32")}),
    );
    let filler = disk.fill();
    // Each create fails somewhere in the runner (the slot's record, the
    // overlay, the bundle): 507 every time, never a slot kept.
    for i in 0..8 {
        let (status, e) = api.post("/api/sandbox", &key, json!({"name": format!("n{i}")}));
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (507, Some("storage_full")),
            "{e}"
        );
    }
    let (_, list) = api.get("/api/sandbox", &key);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    std::fs::remove_file(&filler).unwrap();
    // With room again all three slots are there to use: two more
    // sandboxes, enforced, and nothing beyond them.
    for name in ["a", "b"] {
        api.sandbox(
            &key,
            json!({"name": name, "networkAllowList": format!("{SERVER4_B}/32")}),
        );
    }
    assert!(api.echoes(&key, "kept", &SERVER4.to_string()));
    assert!(api.echoes(&key, "b", &SERVER4_B.to_string()));
    assert!(!api.echoes(&key, "b", &SERVER4.to_string()));
    assert_eq!(slots(&api), 3);
    let (status, e) = api.post("/api/sandbox", &key, json!({"name": "d"}));
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (503, Some("capacity_exhausted")),
        "{e}"
    );
}
