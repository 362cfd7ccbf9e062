//! The runtime on the real kernel with runc (needs root, runc and
//! busybox-static): lifecycle, exec semantics, isolation, clean deletion.

#![allow(clippy::unwrap_used)]

use sandgate_netns::TempNetns;
use sandgate_runtime::{ExecRequest, Runtime, RuntimeConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Fixture {
    rt: Runtime,
    dir: PathBuf,
    ids: Vec<String>,
    ns: TempNetns,
}

impl Fixture {
    fn new(tag: &str, tweak: impl FnOnce(&mut RuntimeConfig)) -> Fixture {
        let dir = std::env::temp_dir().join(format!("sandgate-rt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = RuntimeConfig::new(dir.clone());
        tweak(&mut cfg);
        let rt = Runtime::new(cfg).unwrap();
        rt.build_busybox("busybox").unwrap();
        let ns = TempNetns::new(&format!("sgt-rt-{tag}")).unwrap();
        Fixture {
            rt,
            dir,
            ids: Vec::new(),
            ns,
        }
    }

    fn sandbox(&mut self, id: &str) -> String {
        let id = format!("{id}-{}", std::process::id());
        self.rt
            .create(
                &id,
                "busybox",
                &self.ns.path(),
                "192.0.2.1".parse().unwrap(),
            )
            .unwrap();
        self.ids.push(id.clone());
        id
    }

    fn sh(&self, id: &str, command: &str) -> sandgate_runtime::ExecResult {
        self.rt
            .exec(
                id,
                &ExecRequest {
                    command: command.into(),
                    ..Default::default()
                },
            )
            .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = self.rt.delete(id);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn exec_returns_exit_codes_output_env_cwd_and_obeys_timeouts_and_caps() {
    let mut f = Fixture::new("exec", |c| c.output_cap = 1000);
    let id = f.sandbox("exec");
    assert!(f.rt.running(&id).unwrap());
    let r = f.sh(&id, "echo out; echo err >&2; exit 3");
    assert_eq!(
        (r.exit_code, r.stdout.as_str(), r.stderr.as_str()),
        (3, "out\n", "err\n")
    );
    assert_eq!(r.result, "out\nerr\n");
    assert!(!r.timed_out && !r.truncated);
    let r =
        f.rt.exec(
            &id,
            &ExecRequest {
                command: "echo \"$GREETING\"; pwd".into(),
                cwd: Some("/tmp".into()),
                env: vec![("GREETING".into(), "hello sandbox".into())],
                timeout: None,
            },
        )
        .unwrap();
    assert_eq!(r.stdout, "hello sandbox\n/tmp\n");
    assert_eq!(f.sh(&id, "hostname").stdout.trim(), id);
    assert!(f
        .sh(&id, "cat /etc/resolv.conf")
        .stdout
        .contains("nameserver 192.0.2.1"));
    // The cap.
    let r = f.sh(&id, "yes | head -c 5000");
    assert!(r.truncated);
    assert_eq!(r.stdout.len(), 1000);
    // The timeout kills the whole group, children and grandchildren.
    let started = Instant::now();
    let r =
        f.rt.exec(
            &id,
            &ExecRequest {
                command: "sleep 300 & (sleep 301 &); sleep 302".into(),
                timeout: Some(Duration::from_secs(1)),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(r.timed_out);
    assert_eq!(r.exit_code, 137);
    assert!(started.elapsed() < Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    let ps = f.sh(&id, "ps -o args");
    assert!(
        !ps.stdout.contains("sleep 30"),
        "children survived the timeout:\n{}",
        ps.stdout
    );
    // A process that leaves the group and keeps the output open does not
    // hold the exec past its timeout.
    let started = Instant::now();
    let r =
        f.rt.exec(
            &id,
            &ExecRequest {
                command: "setsid sleep 303 & echo kept; sleep 304".into(),
                timeout: Some(Duration::from_secs(1)),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(r.timed_out);
    assert_eq!(r.stdout, "kept\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_sandbox_sees_nothing_of_the_host_and_cannot_change_its_kernel_state() {
    let mut f = Fixture::new("iso", |c| c.pids_limit = 64);
    let id = f.sandbox("iso");
    // Its own processes only: the waiting init is pid 1.
    let ps = f.sh(&id, "ps -o pid,args");
    assert!(
        ps.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("sh -c")),
        "{}",
        ps.stdout
    );
    assert!(ps.stdout.lines().count() < 6, "{}", ps.stdout);
    // The host's files are not there.
    assert_ne!(
        f.sh(&id, "test -e /work || test -e /root/.cargo").exit_code,
        0
    );
    // Each of these must fail for root inside.
    for attempt in [
        "mount -t tmpfs none /mnt",
        // One of the two changes the link's state (busybox skips a no-op).
        "ip link set lo up && ip link set lo down",
        "ip addr add 198.18.9.9/32 dev lo",
        "insmod /nonexistent.ko",
        "echo 0 > /proc/sys/net/ipv4/ip_forward",
        "echo 1 > /proc/sysrq-trigger",
        "hostname other",
        "unshare -n true",
        "mknod /dev/sda b 8 0 && cat /dev/sda",
    ] {
        let r = f.sh(&id, attempt);
        assert_ne!(r.exit_code, 0, "{attempt:?} succeeded: {}", r.result);
    }
    assert_eq!(f.sh(&id, "hostname").stdout.trim(), id);
    // Forking stops at the pids limit (64): the processes made before it
    // stay until the command's timeout, the rest are refused, and the
    // sandbox survives.
    let bomb = std::thread::scope(|s| {
        let bomb = s.spawn(|| {
            f.rt.exec(
                &id,
                &ExecRequest {
                    command: "(for i in $(seq 200); do sleep 30 & done); sleep 30".into(),
                    timeout: Some(Duration::from_secs(4)),
                    ..Default::default()
                },
            )
            .unwrap()
        });
        std::thread::sleep(Duration::from_millis(2000));
        let n = f.rt.processes(&id).unwrap().len();
        assert!(n > 32 && n <= 64, "{n} processes while the bomb runs");
        bomb.join().unwrap()
    });
    assert!(
        bomb.timed_out && bomb.stderr.contains("can't fork"),
        "{bomb:?}"
    );
    assert_eq!(
        f.rt.processes(&id).unwrap().len(),
        2,
        "only the init and its sleep are left"
    );
    assert_eq!(f.sh(&id, "echo alive").stdout, "alive\n");
    // A command's background processes end with it.
    let r = f.sh(&id, "sleep 60 & echo started; sleep 0.2");
    assert_eq!(r.stdout, "started\n", "{r:?}");
    assert_eq!(f.rt.processes(&id).unwrap().len(), 2);
}

#[test]
fn delete_leaves_no_overlay_state_mount_or_process() {
    let mut f = Fixture::new("del", |_| {});
    let id = f.sandbox("del");
    let pid = f.sh(&id, "echo $$").exit_code;
    assert_eq!(pid, 0);
    f.rt.delete(&id).unwrap();
    assert!(!f.dir.join("sandboxes").join(&id).exists());
    assert!(!f.dir.join("runc").join(&id).exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let rootfs = f.dir.join("sandboxes").join(&id).join("rootfs");
    assert!(
        !mounts.contains(rootfs.to_str().unwrap()),
        "the overlay of {id} is left mounted"
    );
    assert!(!f.rt.running(&id).unwrap());
    // The snapshot was in use; now it can go.
    assert!(f.rt.delete_snapshot("busybox").is_ok());
}

#[test]
fn a_snapshot_in_use_cannot_be_deleted() {
    let mut f = Fixture::new("snap", |_| {});
    let _id = f.sandbox("snap");
    let err = f.rt.delete_snapshot("busybox").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ResourceBusy);
    assert_eq!(f.rt.snapshots().unwrap(), vec!["busybox".to_string()]);
}
