//! The runtime on the real kernel with runc (needs root, runc and
//! busybox-static): lifecycle, exec semantics, isolation, clean deletion.

#![allow(clippy::unwrap_used)]

use sandgate_netns::TempNetns;
use sandgate_runtime::{
    ExecRequest, Resources, Runtime, RuntimeClass, RuntimeConfig, RuntimeError,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Fixture {
    rt: Runtime,
    dir: PathBuf,
    ids: Vec<String>,
    ns: TempNetns,
    /// The class its sandboxes run under.
    class: RuntimeClass,
}

impl Fixture {
    fn new(tag: &str, tweak: impl FnOnce(&mut RuntimeConfig)) -> Fixture {
        Fixture::under(RuntimeClass::Runc, tag, tweak)
    }

    /// A fixture whose sandboxes run under `class` (which this host must
    /// be able to run: `scripts/setup` installs runsc).
    fn under(class: RuntimeClass, tag: &str, tweak: impl FnOnce(&mut RuntimeConfig)) -> Fixture {
        let tag = format!("{tag}-{class}");
        let dir = std::env::temp_dir().join(format!("sandgate-rt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = RuntimeConfig::new(dir.clone());
        tweak(&mut cfg);
        let rt = Runtime::new(cfg).unwrap();
        if let Err(e) = rt.usable(class) {
            panic!("{e} (scripts/setup installs runsc)");
        }
        rt.build_busybox("busybox").unwrap();
        let ns = TempNetns::new(&format!("sgt-rt-{tag}")).unwrap();
        Fixture {
            rt,
            dir,
            ids: Vec::new(),
            ns,
            class,
        }
    }

    /// A sandbox of the fixture's class, named `id`, the class (the
    /// OCI runtime names a sandbox's cgroup after its id: a test under
    /// each class runs at the same time) and this process.
    fn sandbox(&mut self, id: &str) -> String {
        let id = format!("{id}-{}-{}", self.class, std::process::id());
        self.rt
            .create(
                &id,
                "busybox",
                &self.ns.path(),
                "192.0.2.1".parse().unwrap(),
                &Resources {
                    class: self.class,
                    ..Default::default()
                },
            )
            .unwrap();
        self.ids.push(id.clone());
        id
    }

    fn sh(&self, id: &str, command: &str) -> sandgate_runtime::ExecResult {
        self.sh_within(id, command, None)
    }

    /// [`Fixture::sh`], ended at `timeout`.
    fn sh_for(&self, id: &str, command: &str, timeout: Duration) -> sandgate_runtime::ExecResult {
        self.sh_within(id, command, Some(timeout))
    }

    fn sh_within(
        &self,
        id: &str,
        command: &str,
        timeout: Option<Duration>,
    ) -> sandgate_runtime::ExecResult {
        self.rt
            .exec(
                id,
                &ExecRequest {
                    command: command.into(),
                    timeout,
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
        let _ = self.rt.clear_disks();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn exec_returns_exit_codes_output_env_cwd_and_obeys_timeouts_and_caps() {
    exec_semantics(RuntimeClass::Runc);
}

#[test]
fn under_gvisor_exec_returns_exit_codes_output_env_cwd_and_obeys_timeouts_and_caps() {
    exec_semantics(RuntimeClass::Runsc);
}

fn exec_semantics(class: RuntimeClass) {
    let mut f = Fixture::under(class, "exec", |c| c.output_cap = 1000);
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
    // A working directory the sandbox lacks is the caller's fault, typed.
    let missing =
        f.rt.exec(
            &id,
            &ExecRequest {
                command: "true".into(),
                cwd: Some("/nowhere".into()),
                ..ExecRequest::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(missing, RuntimeError::NoSuchCwd) && missing.is_callers_fault(),
        "{missing:?}"
    );
    // The environment never shows in the host's process list.
    let seen_in_ps = std::thread::scope(|s| {
        let exec = s.spawn(|| {
            f.rt.exec(
                &id,
                &ExecRequest {
                    command: "sleep 1; echo \"$TOKEN\"".into(),
                    env: vec![("TOKEN".into(), "marker-8c1f0e".into())],
                    ..Default::default()
                },
            )
            .unwrap()
        });
        std::thread::sleep(Duration::from_millis(500));
        let seen = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .any(|c| String::from_utf8_lossy(&c).contains("marker-8c1f0e"));
        assert_eq!(exec.join().unwrap().stdout, "marker-8c1f0e\n");
        seen
    });
    assert!(
        !seen_in_ps,
        "the environment shows in the host's process list"
    );
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
    let r = f.sh_for(
        &id,
        "sleep 300 & (sleep 301 &); sleep 302",
        Duration::from_secs(1),
    );
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
    let r = f.sh_for(
        &id,
        "setsid sleep 303 & echo kept; sleep 304",
        Duration::from_secs(1),
    );
    assert!(r.timed_out);
    assert_eq!(r.stdout, "kept\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Nor is it read for once the exec has answered: its output's end is
    // closed, so its next write fails (no host thread reads for it as
    // long as it lives, at the host's cost).
    // (runc waits for it, so there the exec ends at its timeout, as
    // above; runsc does not.)
    let r =
        f.sh_for(&id, "setsid sh -c 'trap \"\" PIPE; while echo more; do sleep 0.05; done; echo closed > /tmp/closed' & sleep 0.2", Duration::from_secs(1));
    assert!(r.stdout.starts_with("more\n"), "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let closed = loop {
        let seen = f.sh(&id, "cat /tmp/closed 2>/dev/null").stdout;
        if seen == "closed\n" || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        closed, "closed\n",
        "the output of a process that left the exec's group is still read"
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
    cannot_change_kernel_state(&f, &id);
    // Forking stops at the pids limit (64): the processes made before it
    // stay until the command's timeout, the rest are refused, and the
    // sandbox survives.
    let bomb = fork_bomb(&f, &id, || {
        let n = f.rt.processes(&id).unwrap().len();
        assert!(n > 32 && n <= 64, "{n} processes while the bomb runs");
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
    // Even those of a command that ends at once, before any poll.
    for _ in 0..5 {
        let started = Instant::now();
        let r = f.sh(&id, "sleep 61 &");
        assert_eq!(r.exit_code, 0, "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(f.rt.processes(&id).unwrap().len(), 2);
    }
}

/// Runs a fork bomb of 200 processes in sandbox `id` for 4 seconds, with
/// `during` called 2 seconds in; what its exec returned.
fn fork_bomb(f: &Fixture, id: &str, during: impl FnOnce()) -> sandgate_runtime::ExecResult {
    std::thread::scope(|s| {
        let bomb = s.spawn(|| {
            f.sh_for(
                id,
                "(for i in $(seq 200); do sleep 30 & done); sleep 30",
                Duration::from_secs(4),
            )
        });
        std::thread::sleep(Duration::from_millis(2000));
        during();
        bomb.join().unwrap()
    })
}

/// What root inside a sandbox tries on the kernel's state, each of which
/// must fail.
const KERNEL_STATE_ATTEMPTS: &[&str] = &[
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
];

fn cannot_change_kernel_state(f: &Fixture, id: &str) {
    for attempt in KERNEL_STATE_ATTEMPTS {
        let r = f.sh(id, attempt);
        assert_ne!(r.exit_code, 0, "{attempt:?} succeeded: {}", r.result);
    }
    assert_eq!(f.sh(id, "hostname").stdout.trim(), id);
}

#[test]
fn under_gvisor_a_sandbox_sees_nothing_of_the_host_and_forks_within_its_limit() {
    let mut f = Fixture::under(RuntimeClass::Runsc, "iso", |c| c.pids_limit = 64);
    let id = f.sandbox("iso");
    // gVisor's kernel: its own processes only, the waiting init pid 1.
    let ps = f.sh(&id, "ps -o pid,args");
    assert!(
        ps.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("sh -c")),
        "{}",
        ps.stdout
    );
    assert_ne!(
        f.sh(&id, "test -e /work || test -e /root/.cargo").exit_code,
        0
    );
    cannot_change_kernel_state(&f, &id);
    // Forking stops at the limit (64 processes, kept by gVisor's kernel:
    // the host's pids cgroup counts gVisor's threads), the sandbox
    // survives, and the bomb's processes end with its exec.
    let bomb = fork_bomb(&f, &id, || {});
    assert!(
        bomb.timed_out && bomb.stderr.contains("can't fork"),
        "{bomb:?}"
    );
    assert!(f.rt.running(&id).unwrap());
    let ps = f.sh(&id, "ps -o pid,args").stdout;
    assert!(
        !ps.contains("sleep 30"),
        "the bomb's processes outlived it:\n{ps}"
    );
    assert_eq!(f.sh(&id, "echo alive").stdout, "alive\n");
}

#[test]
fn a_command_that_keeps_the_sandbox_at_its_process_limit_ends_at_its_timeout() {
    fork_loop_ends(RuntimeClass::Runc);
}

#[test]
fn under_gvisor_a_command_that_keeps_the_sandbox_at_its_process_limit_ends_at_its_timeout() {
    fork_loop_ends(RuntimeClass::Runsc);
}

/// A command that refills the process table as fast as anything leaves
/// it (awk goes on when a fork fails; a shell would give up) still ends at
/// its timeout with every process it made, and the sandbox answers after.
fn fork_loop_ends(class: RuntimeClass) {
    let mut f = Fixture::under(class, "floop", |c| c.pids_limit = 64);
    let id = f.sandbox("floop");
    let started = Instant::now();
    let r = f.sh_for(
        &id,
        r#"awk 'BEGIN { while (1) system("sleep 30 &") }' 2>/dev/null"#,
        Duration::from_secs(3),
    );
    assert!(r.timed_out, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the exec took {:?}",
        started.elapsed()
    );
    let ps = f.sh(&id, "ps -o args").stdout;
    assert!(
        !ps.contains("sleep 30") && !ps.contains("awk"),
        "the command's processes outlived it:\n{ps}"
    );
    assert_eq!(f.sh(&id, "echo alive").stdout, "alive\n");
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
    assert!(matches!(err, RuntimeError::Busy(_)), "{err:?}");
    assert!(err.is_callers_fault());
    assert_eq!(f.rt.snapshots().unwrap(), vec!["busybox".to_string()]);
}

#[test]
fn stop_start_and_adoption_after_a_restart_keep_files_and_clean_the_dead() {
    lifecycle(RuntimeClass::Runc);
}

#[test]
fn under_gvisor_stop_start_and_adoption_after_a_restart_keep_files_and_clean_the_dead() {
    lifecycle(RuntimeClass::Runsc);
}

#[test]
fn a_host_that_cannot_run_gvisor_says_why_and_refuses_the_class() {
    let dir = std::env::temp_dir().join(format!("sandgate-rt-nogvisor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Missing; answering --version but unable to run a sandbox (the
    // wrapper's `do` fails as a runsc on a host without ptrace would).
    let broken = dir.join("broken-runsc");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        &broken,
        "#!/bin/sh
for a; do [ \"$a\" = do ] && { echo 'no platform' >&2; exit 1; }; done
exit 0
",
    )
    .unwrap();
    // One whose sandbox never ends (the start waits 10 s for it, no more).
    let hanging = dir.join("hanging-runsc");
    std::fs::write(
        &hanging,
        "#!/bin/sh
for a; do [ \"$a\" = do ] && exec sleep 3600; done
exit 0
",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    for script in [&broken, &hanging] {
        std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for (program, why) in [
        (dir.join("no-such-runsc"), "No such file"),
        (broken.clone(), "no platform"),
        (hanging.clone(), "did not end within 10 s"),
    ] {
        let mut cfg = RuntimeConfig::new(dir.join("data"));
        cfg.runsc = program;
        let rt = Runtime::new(cfg).unwrap();
        assert_eq!(rt.classes(), vec![RuntimeClass::Runc]);
        let e = rt.usable(RuntimeClass::Runsc).unwrap_err();
        assert!(
            matches!(e, RuntimeError::ClassUnavailable { .. }) && !e.is_callers_fault(),
            "{e:?}"
        );
        assert!(e.to_string().contains(why), "{e}");
        let ns = TempNetns::new("sgt-rt-nogvisor").unwrap();
        let refused = rt
            .create(
                "g",
                "busybox",
                &ns.path(),
                "192.0.2.1".parse().unwrap(),
                &Resources {
                    class: RuntimeClass::Runsc,
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(
            matches!(refused, RuntimeError::ClassUnavailable { .. }),
            "{refused:?}"
        );
        assert!(rt.sandboxes().unwrap().is_empty());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the OCI runtime of `f`'s class keeps state of sandbox `id`
/// (runc a directory, runsc files, named by it).
fn oci_state_left(f: &Fixture, id: &str) -> bool {
    std::fs::read_dir(f.dir.join(f.class.as_str()))
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().contains(id))
}

fn lifecycle(class: RuntimeClass) {
    let mut f = Fixture::under(class, "life", |_| {});
    let id = f.sandbox("life");
    assert_eq!(f.sh(&id, "echo kept > /root/file").exit_code, 0);
    let rootfs = f.dir.join("sandboxes").join(&id).join("rootfs");
    let mounted = |p: &std::path::Path| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(p.to_str().unwrap())
    };

    // Stop: no process, no mount, exec refused; start: the file is back.
    f.rt.stop(&id).unwrap();
    assert!(!f.rt.running(&id).unwrap());
    assert!(!mounted(&rootfs));
    let refused = f.rt.exec(&id, &ExecRequest::default()).unwrap_err();
    assert!(matches!(refused, RuntimeError::Busy(_)), "{refused:?}");
    f.rt.stop(&id).unwrap();
    f.rt.start(&id).unwrap();
    f.rt.start(&id).unwrap();
    assert_eq!(f.sh(&id, "cat /root/file").stdout, "kept\n");

    // A restart of the driving process: a new runtime on the same data
    // takes the running sandbox back.
    let cfg = RuntimeConfig::new(f.dir.clone());
    let again = Runtime::new(cfg.clone()).unwrap();
    assert_eq!(
        again.adopt().unwrap(),
        vec![(id.clone(), sandgate_runtime::Adopted::Running)]
    );
    assert_eq!(f.sh(&id, "cat /root/file").stdout, "kept\n");

    // Its processes die while nobody watches: adoption marks it, cleans
    // the runtime state and the mount, and it can start again.
    // Once the init is killed, the kernel kills the rest of its pid
    // namespace: a process listed may be gone by the time its turn comes
    // (ESRCH), which is what this step wants anyway.
    for pid in f.rt.processes(&id).unwrap() {
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        ) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => panic!("kill {pid}: {e}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.rt.running(&id).unwrap() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let again = Runtime::new(cfg.clone()).unwrap();
    assert_eq!(
        again.adopt().unwrap(),
        vec![(id.clone(), sandgate_runtime::Adopted::Died)]
    );
    let info = again.info(&id).unwrap();
    assert!(info.died && info.state == sandgate_runtime::State::Stopped);
    assert!(!mounted(&rootfs));
    assert!(!oci_state_left(&f, &id));
    again.start(&id).unwrap();
    assert!(!again.info(&id).unwrap().died);
    assert_eq!(f.sh(&id, "cat /root/file").stdout, "kept\n");

    // A stopped sandbox stays stopped.
    again.stop(&id).unwrap();
    assert_eq!(
        Runtime::new(cfg.clone()).unwrap().adopt().unwrap(),
        vec![(id.clone(), sandgate_runtime::Adopted::Stopped)]
    );

    // A creation cut short (the process died before the last write of the
    // record, with the container already running) is removed whole.
    let cut = f.sandbox("cut");
    let record = f.dir.join("sandboxes").join(&cut).join("sandbox.json");
    let text = std::fs::read_to_string(&record).unwrap();
    std::fs::write(&record, text.replace("\"running\"", "\"creating\"")).unwrap();
    // So is one whose record cannot be read (which names its class):
    // its runtime is found all the same, and nothing of it runs on.
    let torn = f.sandbox("torn");
    let record = f.dir.join("sandboxes").join(&torn).join("sandbox.json");
    std::fs::write(&record, "{").unwrap();
    let adopted = Runtime::new(cfg).unwrap().adopt().unwrap();
    for gone in [&cut, &torn] {
        assert!(
            adopted.contains(&(gone.clone(), sandgate_runtime::Adopted::Removed)),
            "{adopted:?}"
        );
        assert!(!f.dir.join("sandboxes").join(gone).exists());
        assert!(
            !oci_state_left(&f, gone),
            "the runtime's state of {gone} is left"
        );
        assert!(!f.rt.running(gone).unwrap());
    }
}

#[test]
fn memory_and_cpu_limits_are_enforced_where_the_host_has_the_controllers() {
    let mut f = Fixture::new("lim", |c| {
        c.memory_limit = Some(64 << 20);
        c.cpu_limit = Some(0.5);
    });
    // This machine has both controllers (see the env notes); a host
    // without them would report them unavailable instead.
    assert_eq!(
        f.rt.limits().memory,
        sandgate_runtime::Limit::Enforced(64 << 20)
    );
    assert_eq!(f.rt.limits().cpu, sandgate_runtime::Limit::Enforced(0.5));
    let id = f.sandbox("lim");
    // 16 MiB fits; 256 MiB gets the process killed, not the sandbox.
    let small = f.sh(&id, "dd if=/dev/zero of=/dev/null bs=16M count=1");
    assert_eq!(small.exit_code, 0, "{small:?}");
    let big = f.sh(&id, "dd if=/dev/zero of=/dev/null bs=256M count=1");
    assert_eq!(big.exit_code, 137, "{big:?}");
    assert_eq!(f.sh(&id, "echo alive").stdout, "alive\n");
    // The CPU quota the kernel holds for the sandbox's cgroup.
    let init = f.rt.processes(&id).unwrap()[0];
    let cgroups = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    let unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let quota = match cgroups.lines().find_map(|l| l.strip_prefix("0::")) {
        Some(path) if unified => {
            std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpu.max")).unwrap()
        }
        _ => {
            let path = cgroups
                .lines()
                .find_map(|l| {
                    let (_, rest) = l.split_once(':')?;
                    let (ctrl, path) = rest.split_once(':')?;
                    ctrl.split(',').any(|c| c == "cpu").then_some(path)
                })
                .unwrap();
            std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{path}/cpu.cfs_quota_us")).unwrap()
        }
    };
    assert!(quota.trim().starts_with("50000"), "{quota}");
}

/// A tar archive of `entries`: (path as written in the header, kind,
/// content or link target), with no checks on the paths (hostile archives
/// are the point).
fn raw_tar(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o755);
        // Numeric fields left empty would make every entry unreadable,
        // and a refusal for that would prove nothing.
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        if kind.is_symlink() {
            h.as_old_mut().linkname[..data.len()].copy_from_slice(data.as_bytes());
            h.set_size(0);
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        } else {
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data.as_bytes()).unwrap();
        }
    }
    b.into_inner().unwrap()
}

#[test]
fn snapshots_from_image_layers_apply_whiteouts_and_opaque_directories_inside_the_root() {
    let mut f = Fixture::new("layers", |c| c.snapshot_max_bytes = 16 << 20);
    // The lowest layer: the busybox root filesystem.
    let root = f.dir.join("snapshots/busybox/rootfs");
    let base = f.dir.join("base.tar");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&base)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    // A host file that a whiteout reached through a link a lower layer
    // laid (`up` -> `/`) would remove, were the link followed on the host.
    let canary_dir = std::env::temp_dir().join(format!("sandgate-canary-{}", std::process::id()));
    std::fs::create_dir_all(&canary_dir).unwrap();
    let canary = canary_dir.join("file");
    std::fs::write(&canary, "host's\n").unwrap();
    let through_link = format!("up{}/.wh.file", canary_dir.display());
    use tar::EntryType::{Directory, Regular, Symlink};
    let second = raw_tar(&[
        ("etc/keep", Regular, "kept\n"),
        ("etc/gone", Regular, "hidden above\n"),
        ("opt/old/a", Regular, "below\n"),
        ("opt/also", Regular, "below\n"),
        ("var/lib/x/y", Regular, "a directory below\n"),
        ("usr/lib/tool", Regular, "through a relative link\n"),
        ("lib", Symlink, "usr/lib"),
        ("up", Symlink, "/"),
    ]);
    let third = raw_tar(&[
        ("etc/.wh.gone", Regular, ""),
        ("opt/new", Regular, "above\n"),
        ("opt/.wh..wh..opq", Regular, ""),
        ("var/lib/x", Regular, "a file above\n"),
        ("lib/.wh.tool", Regular, ""),
        (&through_link, Regular, ""),
        ("etc/.wh.never-there", Regular, ""),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &third).unwrap();
    let third = gz.finish().unwrap();
    let layers: Vec<Box<dyn std::io::Read>> = vec![
        Box::new(std::fs::File::open(&base).unwrap()),
        Box::new(std::io::Cursor::new(second)),
        Box::new(std::io::Cursor::new(third)),
    ];
    f.rt.import_layers("image", layers).unwrap();
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "host's\n");
    let id = format!("image-{}", std::process::id());
    f.rt.create(
        &id,
        "image",
        &f.ns.path(),
        "192.0.2.1".parse().unwrap(),
        &Default::default(),
    )
    .unwrap();
    f.ids.push(id.clone());
    let r = f.sh(
        &id,
        "cat /etc/keep; test -e /etc/gone || echo gone; ls /opt; cat /var/lib/x; \
         test -e /usr/lib/tool || echo tool gone; readlink /lib",
    );
    assert_eq!(
        r.stdout, "kept\ngone\nnew\na file above\ntool gone\nusr/lib\n",
        "{r:?}"
    );
    // Hostile layers: refused, and no snapshot made.
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("dot-dot", raw_tar(&[("../../escaped", Regular, "x")])),
        ("an empty whiteout", raw_tar(&[("etc/.wh.", Regular, "")])),
        (
            "a whiteout of the parent",
            raw_tar(&[("etc/.wh...", Regular, "")]),
        ),
        (
            "a file through a link out",
            raw_tar(&[
                ("out", Symlink, canary_dir.to_str().unwrap()),
                ("out/pwned", Regular, "x"),
            ]),
        ),
        (
            "a directory kind over the root",
            raw_tar(&[("./", Directory, "")]),
        ),
        // 32 MiB of zeros, a few KiB gzip-compressed: past the snapshot's
        // unpacked limit (16 MiB), refused as it unpacks.
        ("a gzip bomb", {
            let zeros = "\0".repeat(32 << 20);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            std::io::Write::write_all(&mut gz, &raw_tar(&[("zeros", Regular, &zeros)])).unwrap();
            gz.finish().unwrap()
        }),
    ];
    for (what, bytes) in hostile {
        let layers: Vec<Box<dyn std::io::Read>> = vec![
            Box::new(std::fs::File::open(&base).unwrap()),
            Box::new(std::io::Cursor::new(bytes)),
        ];
        match f.rt.import_layers("evil", layers) {
            Err(err) => assert!(
                matches!(err, RuntimeError::Archive(_)) && err.is_callers_fault(),
                "{what}: {err:?}"
            ),
            // The root's own entry changes nothing.
            Ok(()) if what.contains("over the root") => {
                f.rt.delete_snapshot("evil").unwrap();
                continue;
            }
            Ok(()) => panic!("{what}: taken"),
        }
        assert!(!f.rt.snapshots().unwrap().contains(&"evil".to_string()));
        assert!(!canary_dir.join("pwned").exists(), "{what}");
    }
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "host's\n");
    let _ = std::fs::remove_dir_all(&canary_dir);
}

#[test]
fn snapshots_import_from_docker_export_tarballs_and_hostile_archives_change_nothing() {
    let mut f = Fixture::new("imp", |_| {});
    // A `docker export`-style archive (entries without a leading "./") of
    // a root filesystem with one file more, plain and gzip-compressed.
    let root = f.dir.join("snapshots/busybox/rootfs");
    std::fs::write(root.join("etc/imported"), "from a tarball\n").unwrap();
    let names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let tarball = f.dir.join("export.tar");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .args(&names)
        .status()
        .unwrap();
    assert!(status.success());
    let gz = std::process::Command::new("gzip")
        .args(["-k", "-f"])
        .arg(&tarball)
        .status()
        .unwrap();
    assert!(gz.success());
    f.rt.import_snapshot("plain", std::fs::File::open(&tarball).unwrap())
        .unwrap();
    f.rt.import_snapshot(
        "zipped",
        std::fs::File::open(tarball.with_extension("tar.gz")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        f.rt.snapshots().unwrap(),
        vec!["busybox", "plain", "zipped"]
    );
    for snapshot in ["plain", "zipped"] {
        let id = format!("{snapshot}-{}", std::process::id());
        f.rt.create(
            &id,
            snapshot,
            &f.ns.path(),
            "192.0.2.1".parse().unwrap(),
            &Default::default(),
        )
        .unwrap();
        f.ids.push(id.clone());
        assert_eq!(f.sh(&id, "cat /etc/imported").stdout, "from a tarball\n");
    }
    // A root with no busybox at all, only a shell (as in a Debian image):
    // the init comes from the host, so it runs.
    let bare = f.dir.join("bare");
    std::fs::create_dir_all(bare.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", bare.join("bin/sh")).unwrap();
    let bare_tar = f.dir.join("bare.tar");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(&bare)
        .arg("-cf")
        .arg(&bare_tar)
        .arg("bin")
        .status()
        .unwrap();
    assert!(status.success());
    f.rt.import_snapshot("bare", std::fs::File::open(&bare_tar).unwrap())
        .unwrap();
    let id = format!("bare-{}", std::process::id());
    f.rt.create(
        &id,
        "bare",
        &f.ns.path(),
        "192.0.2.1".parse().unwrap(),
        &Default::default(),
    )
    .unwrap();
    f.ids.push(id.clone());
    let r = f.sh(
        &id,
        "echo runs; test -e /bin/busybox || echo no busybox here",
    );
    assert_eq!(r.stdout, "runs\nno busybox here\n", "{r:?}");

    // A snapshot in use is not replaced.
    let busy =
        f.rt.import_snapshot("plain", std::fs::File::open(&tarball).unwrap())
            .unwrap_err();
    assert!(matches!(busy, RuntimeError::Busy(_)), "{busy:?}");

    // Hostile or broken archives: refused, with nothing written outside
    // and no snapshot made.
    let outside = std::env::temp_dir().join(format!("sandgate-outside-{}", std::process::id()));
    std::fs::create_dir_all(&outside).unwrap();
    let sh = ("bin/sh", tar::EntryType::Regular, "#!/bin/true\n");
    let link_out = outside.to_str().unwrap();
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        (
            "dot-dot",
            raw_tar(&[sh, ("../../../escaped", tar::EntryType::Regular, "x")]),
        ),
        (
            "through a symlink",
            raw_tar(&[
                sh,
                ("out", tar::EntryType::Symlink, link_out),
                ("out/pwned", tar::EntryType::Regular, "x"),
            ]),
        ),
        (
            "hard link out",
            raw_tar(&[sh, ("passwd", tar::EntryType::Link, "/etc/passwd")]),
        ),
        (
            "no shell",
            raw_tar(&[("etc/hosts", tar::EntryType::Regular, "")]),
        ),
        ("not an archive", b"hello, this is not tar".repeat(40)),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in hostile {
        let err = f.rt.import_snapshot("evil", &bytes[..]).unwrap_err();
        assert!(
            matches!(err, RuntimeError::Archive(_)) && err.is_callers_fault(),
            "{what}: {err:?}"
        );
        assert!(!err.to_string().is_empty());
        assert_eq!(
            f.rt.snapshots().unwrap(),
            vec!["bare", "busybox", "plain", "zipped"],
            "{what}"
        );
    }
    assert!(!outside.join("pwned").exists());
    assert!(!f.dir.join("escaped").exists() && !std::path::Path::new("/escaped").exists());
    assert!(!f.dir.join("snapshots/evil.building").exists());
    let _ = std::fs::remove_dir_all(&outside);
}

/// Builds `tests/<name>.c` statically into the snapshot's `/bin/<name>`
/// (before a sandbox is made from it); returns the binary's path.
fn build_static(f: &Fixture, name: &str) -> PathBuf {
    let source = format!("{}/tests/{name}.c", env!("CARGO_MANIFEST_DIR"));
    let binary = f.dir.join("snapshots/busybox/rootfs/bin").join(name);
    let built = std::process::Command::new("cc")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg(source)
        .status()
        .unwrap();
    assert!(built.success(), "cc {name}.c");
    binary
}

#[test]
fn no_namespace_can_be_made_from_inside_not_even_a_user_namespace() {
    let mut f = Fixture::new("userns", |_| {});
    // A static program that calls clone(2) itself (busybox's unshare uses
    // unshare(2), which is refused by name).
    build_static(&f, "clonetest");
    let id = f.sandbox("userns");
    let r = f.sh(&id, "/bin/clonetest");
    assert_eq!(
        r.stdout,
        "clone newuser: errno 1\nclone newnet: errno 1\nclone plain: allowed\n\
         clone3: errno 38\nio_uring_setup: errno 38\n",
        "{r:?}"
    );
}

/// The lines of `sockfam` output, as a map from attempt to result.
fn attempts(stdout: &str) -> std::collections::BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| {
            let (what, result) = l.rsplit_once(" ok").map(|(w, _)| (w, "ok")).or_else(|| {
                l.find(" errno ")
                    .or_else(|| l.find(" signal "))
                    .map(|i| (&l[..i], &l[i + 1..]))
            })?;
            Some((what.to_string(), result.to_string()))
        })
        .collect()
}

#[test]
fn only_unix_inet_and_netlink_sockets_and_only_the_native_system_calls() {
    let mut f = Fixture::new("sockfam", |_| {});
    let binary = build_static(&f, "sockfam");
    // The same program on the host: families the sandbox is refused exist
    // here (so a refusal inside is the filter's, not the kernel's), among
    // them AF_PACKET, AF_VSOCK where the host is a virtual machine, and
    // NETLINK_KOBJECT_UEVENT. It only creates sockets and closes them.
    let host = std::process::Command::new(&binary).output().unwrap();
    let host = attempts(&String::from_utf8_lossy(&host.stdout));
    assert_eq!(host["family 0x11"], "ok", "AF_PACKET on the host: {host:?}");
    assert_eq!(host["netlink 0xf"], "ok", "uevents on the host: {host:?}");
    let vsock_on_host = host["family 0x28"] == "ok";

    let id = f.sandbox("sockfam");
    let r = f.sh(&id, "/bin/sockfam");
    let inside = attempts(&r.stdout);
    assert_eq!(inside.len(), 48 + 2 + 24 + 1 + 2 + 3, "{r:?}");
    for (what, result) in &inside {
        let expected = match what.as_str() {
            // AF_UNIX, AF_INET, AF_INET6, AF_NETLINK (some type of each).
            "family 0x1" | "family 0x2" | "family 0xa" | "family 0x10" => "ok",
            // NETLINK_ROUTE and NETLINK_SOCK_DIAG.
            "netlink 0" | "netlink 0x4" => "ok",
            "socketpair 0x1" => "ok",
            w if w.starts_with("netlink") => "errno 93",
            w if w.starts_with("family") || w.starts_with("socketpair") => "errno 97",
            // The i386 and x32 entry points: anything but a socket.
            _ => {
                assert_ne!(result, "ok", "{what}: {r:?}");
                continue;
            }
        };
        assert_eq!(result, expected, "{what}: {r:?}");
    }
    if !vsock_on_host {
        eprintln!("note: this host has no AF_VSOCK; the sandbox's refusal of it is the filter's all the same (errno 97 for every family but four)");
    }
}

/// Under gVisor the sandbox's system calls go to gVisor's kernel, which
/// implements four socket families (and no 32-bit entry points), not the
/// host's: the same families as runc's filter allows, with what differs
/// said here.
#[test]
fn under_gvisor_only_unix_inet_and_netlink_sockets_and_no_new_network() {
    let mut f = Fixture::under(RuntimeClass::Runsc, "sockfam", |_| {});
    build_static(&f, "sockfam");
    build_static(&f, "clonetest");
    let id = f.sandbox("sockfam");
    let r = f.sh(&id, "/bin/sockfam");
    let inside = attempts(&r.stdout);
    assert_eq!(inside.len(), 48 + 2 + 24 + 1 + 2 + 3, "{r:?}");
    for (what, result) in &inside {
        let expected = match what.as_str() {
            "family 0x1" | "family 0x2" | "family 0xa" | "family 0x10" => "ok",
            // gVisor takes the family as the int it is (the kernel's own
            // reading): AF_INET.
            "family 0x100000002" => "ok",
            // NETLINK_ROUTE, and gVisor's own uevent socket (it has no
            // devices to announce); no NETLINK_SOCK_DIAG.
            "netlink 0" | "netlink 0xf" | "netlink 0x10000000f" => "ok",
            "socketpair 0x1" => "ok",
            w if w.starts_with("netlink") => "errno 93",
            // AF_PACKET and AF_VSOCK among them.
            w if w.starts_with("family") || w.starts_with("socketpair") => "errno 97",
            // The i386 and x32 entry points are no socket (gVisor runs
            // `int 0x80` as the 64-bit call of that number).
            _ => {
                assert!(
                    !result.starts_with("ok") || what == "i386 socketcall",
                    "{what}: {r:?}"
                );
                continue;
            }
        };
        assert_eq!(result, expected, "{what}: {r:?}");
    }
    // No network namespace can be made (gVisor's kernel uses the slot's
    // through the host's sockets); a user namespace is gVisor's own.
    let r = f.sh(&id, "/bin/clonetest");
    assert!(r.stdout.contains("clone newnet: errno 1\n"), "{r:?}");
    assert!(r.stdout.contains("clone plain: allowed\n"), "{r:?}");
}

#[test]
fn a_debian_userland_runs_under_the_filter() {
    debian_userland(RuntimeClass::Runc);
}

/// The same userland under gVisor's kernel: what it implements is enough
/// for apt, python3 (threads, subprocesses, IPv6 sockets, OpenSSL) and
/// node (worker threads, child processes).
#[test]
fn under_gvisor_a_debian_userland_runs() {
    debian_userland(RuntimeClass::Runsc);
}

fn debian_userland(class: RuntimeClass) {
    // apt, python3 and node from Debian's own packages (built once, kept
    // in a cache outside the repository): the system calls a real
    // userland makes pass the allowlist. The sandbox's namespace has no
    // route anywhere: nothing is fetched from it.
    let tarball = sandgate_lab::debian::rootfs_tarball().unwrap();
    let mut f = Fixture::under(class, "debian", |_| {});
    f.rt.import_snapshot("debian", std::fs::File::open(&tarball).unwrap())
        .unwrap();
    let id = format!("debian-{class}-{}", std::process::id());
    f.rt.create(
        &id,
        "debian",
        &f.ns.path(),
        "192.0.2.1".parse().unwrap(),
        &Resources {
            class,
            ..Default::default()
        },
    )
    .unwrap();
    f.ids.push(id.clone());
    let run = |command: &str| {
        let r = f.sh(&id, command);
        assert_eq!(r.exit_code, 0, "{command}: {r:?}");
        r.stdout
    };
    let python = run(
        "python3 -c 'import hashlib, json, socket, ssl, subprocess, threading; \
         s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.close(); \
         t = threading.Thread(target=lambda: None); t.start(); t.join(); \
         print(\"python\", json.dumps(subprocess.run([\"true\"]).returncode), \
         len(hashlib.sha256(b\"x\").hexdigest()), ssl.OPENSSL_VERSION.split()[0])'",
    );
    assert_eq!(python, "python 0 64 OpenSSL\n");
    let node = run(
        "node -e 'const c = require(\"crypto\"); const cp = require(\"child_process\"); \
         const w = require(\"worker_threads\"); \
         console.log(\"node\", c.createHash(\"sha256\").update(\"x\").digest(\"hex\").length, \
         cp.execSync(\"echo child\").toString().trim(), typeof w.Worker)'",
    );
    assert_eq!(node, "node 64 child function\n");
    // apt: an update with no sources (nothing leaves), then a simulated
    // install, which reads the package lists and resolves dependencies.
    run("apt-get -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=/dev/null update");
    let apt = run("apt-get install --simulate python3 2>&1");
    assert!(
        apt.contains("python3 is already the newest version"),
        "{apt}"
    );
    assert!(run("dpkg-query -W -f '${Status}' nodejs").contains("installed"));
}

#[test]
fn a_sandboxs_own_disk_bounds_its_writes_and_goes_with_it() {
    let mut f = Fixture::new("disk", |c| c.disk_limit = Some(32 << 20));
    // A disk prepared ahead is what a create takes (no formatting on the
    // request's path); a disk of another size is not.
    f.rt.prepare_disk(32 << 20).unwrap();
    f.rt.prepare_disk(48 << 20).unwrap();
    assert_eq!(f.rt.ready_disks(32 << 20), 1);
    let id = f.sandbox("disk");
    assert_eq!(f.rt.ready_disks(32 << 20), 0);
    assert_eq!(f.rt.ready_disks(48 << 20), 1);
    let dir = f.dir.join("sandboxes").join(&id);
    let mounts = || std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mounts().contains(dir.join("disk/mnt").to_str().unwrap()));
    // A full disk is full for this sandbox: the write stops at about its
    // size, and the file it wrote is all it holds.
    let r = f.sh(
        &id,
        "dd if=/dev/zero of=/root/big bs=1M count=64 2>&1; ls -l /root/big",
    );
    assert!(r.stdout.contains("No space left"), "{r:?}");
    let size: u64 = r
        .stdout
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .nth(4)
        .unwrap()
        .parse()
        .unwrap();
    assert!(size <= 32 << 20, "{size}");
    // Nor can it write past its disk to the host's: what its first
    // process inherited from the OCI runtime (stdout and stderr) is no
    // host file, and a write there fails and fills nothing.
    let r = f.sh(
        &id,
        "dd if=/dev/zero of=/proc/1/fd/2 bs=1M count=16 2>&1; echo $?",
    );
    // (dd is killed by SIGPIPE: the pipe's reader is gone.)
    assert_eq!(r.stdout, "141\n", "{r:?}");
    assert_eq!(host_files_of_init(&dir), Vec::<String>::new());
    // The files survive a stop and a start (the disk is mounted again).
    // Stopped, the sandbox holds no loop device, even with a second
    // runtime on the host (whose OCI runtime's namespace was copied from
    // the host's while the disk was mounted).
    let image = dir.join("disk/disk.img");
    let other_dir = std::env::temp_dir().join(format!("sandgate-rt-disk2-{}", std::process::id()));
    let other = Runtime::new(RuntimeConfig::new(other_dir.clone())).unwrap();
    f.rt.stop(&id).unwrap();
    assert!(!mounts().contains(dir.join("disk/mnt").to_str().unwrap()));
    assert!(
        loop_freed(&image),
        "a stopped sandbox's disk is still attached"
    );
    drop(other);
    let _ = std::fs::remove_dir_all(&other_dir);
    f.rt.start(&id).unwrap();
    assert_eq!(f.sh(&id, "ls /root").stdout, "big\n");
    assert_eq!(host_files_of_init(&dir), Vec::<String>::new());
    // Deleted: no mount, no loop device, no image left.
    f.rt.delete(&id).unwrap();
    assert!(!mounts().contains(dir.to_str().unwrap()));
    assert!(!dir.exists());
    assert!(loop_freed(&image));
    // The prepared one left goes too.
    f.rt.clear_disks().unwrap();
    assert_eq!(f.rt.ready_disks(48 << 20), 0);
    assert!(!mounts().contains(f.dir.join("disks").to_str().unwrap()));
}

/// The regular files (host paths) that the first process of the sandbox
/// in `dir` holds open, seen from the host.
fn host_files_of_init(dir: &std::path::Path) -> Vec<String> {
    let init = std::fs::read_to_string(dir.join("init.pid")).unwrap();
    std::fs::read_dir(format!("/proc/{}/fd", init.trim()))
        .unwrap()
        .flatten()
        .filter(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.is_file()))
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|target| target.display().to_string())
        .collect()
}

/// Whether no loop device is backed by `image`, once the kernel has
/// freed the one its last unmount let go (it does so off the unmount's
/// path; waited for up to five seconds).
fn loop_freed(image: &std::path::Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let loops = std::process::Command::new("losetup")
            .args(["--list", "--noheadings", "--output", "BACK-FILE"])
            .output()
            .unwrap();
        if !String::from_utf8_lossy(&loops.stdout).contains(image.to_str().unwrap()) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the namespace of each OCI runtime call of operation `op` held, as
/// a wrapper of runc wrote it down: the mounts below the runtime's data
/// directory, and the network namespace pins.
fn oci_mounts(log: &std::path::Path, op: &str) -> Vec<(usize, usize)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut words = l.split(' ');
            (words.next()? == op).then(|| {
                let mut n = words.map(|w| w.trim().parse::<usize>().unwrap());
                (n.next().unwrap(), n.next().unwrap())
            })
        })
        .collect()
}

#[test]
fn the_oci_runtime_never_sees_the_mounts_of_other_sandboxes() {
    // The fixture's data directory, as `Fixture::new` names it.
    let dir = std::env::temp_dir()
        .join(format!("sandgate-rt-oci-ns-runc-{}", std::process::id()))
        .to_str()
        .unwrap()
        .to_string();
    // A wrapper of runc writes down, for each call (runc's argument 3 is
    // its operation), the mounts below this runtime's data directory and
    // the namespace pins that the namespace it was started in holds.
    let tag = format!("sandgate-rt-oci-wrapper-{}", std::process::id());
    let wrapper = std::env::temp_dir().join(format!("{tag}.sh"));
    let log = std::env::temp_dir().join(format!("{tag}.log"));
    let _ = std::fs::remove_file(&log);
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             ours=$(awk -v d={dir}/ 'index($5, d) == 1' /proc/self/mountinfo | wc -l)\n\
             pins=$(awk 'index($5, \"/run/netns/\") == 1' /proc/self/mountinfo | wc -l)\n\
             echo \"$3 $ours $pins\" >> {}\n\
             exec runc \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut f = Fixture::new("oci-ns", |c| c.oci_runtime = wrapper.clone());
    assert_eq!(f.dir.to_str(), Some(dir.as_str()));
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(f.sandbox(&format!("ns{i}")));
    }
    // The host's namespace holds an overlay per sandbox ...
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let in_host = host
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|p| p.starts_with(&format!("{dir}/")))
        })
        .count();
    assert_eq!(in_host, 6, "{host}");
    // ... and each run was started with its own overlay and pin alone,
    // each exec with none (without the clean namespace, the sixth run
    // saw six overlays).
    assert_eq!(oci_mounts(&log, "run"), vec![(1, 1); 6]);
    for id in &ids {
        assert_eq!(f.sh(id, "echo hi").stdout, "hi\n");
    }
    assert_eq!(oci_mounts(&log, "exec"), vec![(0, 0); 6]);
    // What a container was made with stays its own: each sees its own
    // files only.
    f.sh(&ids[0], "echo mine > /tmp/who");
    assert_eq!(f.sh(&ids[0], "cat /tmp/who").stdout, "mine\n");
    assert_eq!(
        f.sh(&ids[1], "cat /tmp/who 2>&1 || echo none")
            .stdout
            .lines()
            .last(),
        Some("none")
    );
    drop(f);
    let _ = std::fs::remove_file(&wrapper);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_data_directory_given_relative_to_the_working_directory_works() {
    // A directory of the build's, named from the working directory by the
    // way up to their common part and down again (runc starts from `/` in
    // its own namespace, where that name would lead elsewhere).
    let cwd = std::env::current_dir().unwrap();
    let absolute = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sandgate-rt-rel-{}", std::process::id()));
    let common = cwd
        .ancestors()
        .find(|a| absolute.starts_with(a))
        .unwrap()
        .to_path_buf();
    let up = cwd.components().count() - common.components().count();
    let relative = PathBuf::from("../".repeat(up)).join(absolute.strip_prefix(&common).unwrap());
    assert!(
        relative.is_relative() && up < cwd.components().count() - 1,
        "{relative:?}"
    );
    let _ = std::fs::remove_dir_all(&absolute);
    let rt = Runtime::new(RuntimeConfig::new(relative)).unwrap();
    rt.build_busybox("busybox").unwrap();
    let ns = TempNetns::new("sgt-rt-rel").unwrap();
    let id = format!("rel-{}", std::process::id());
    rt.create(
        &id,
        "busybox",
        &ns.path(),
        "192.0.2.1".parse().unwrap(),
        &Default::default(),
    )
    .unwrap();
    let said = rt.exec(
        &id,
        &ExecRequest {
            command: "echo here".into(),
            ..Default::default()
        },
    );
    rt.delete(&id).unwrap();
    let _ = std::fs::remove_dir_all(&absolute);
    assert_eq!(said.unwrap().stdout, "here\n");
}

/// Under gVisor the memory a sandbox's processes use is gVisor's kernel's:
/// over the limit, the host kills that kernel, and the sandbox ends whole
/// (reported died by the runner's watch of its init), where under runc
/// the one process is killed. Either way nothing outside it is touched.
#[test]
fn under_gvisor_memory_over_the_limit_ends_the_sandbox_alone() {
    let mut f = Fixture::under(RuntimeClass::Runsc, "limg", |c| {
        c.memory_limit = Some(128 << 20);
    });
    let id = f.sandbox("limg");
    let neighbour = f.sandbox("limg-neighbour");
    let small = f.sh(&id, "dd if=/dev/zero of=/dev/null bs=16M count=1");
    assert_eq!(small.exit_code, 0, "{small:?}");
    let big = f.sh(&id, "dd if=/dev/zero of=/dev/null bs=512M count=1");
    assert_ne!(big.exit_code, 0, "{big:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.rt.running(&id).unwrap() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!f.rt.running(&id).unwrap());
    assert_eq!(f.sh(&neighbour, "echo alive").stdout, "alive\n");
}
