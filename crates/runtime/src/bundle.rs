//! The OCI bundle of a sandbox: `config.json` for runc (or another OCI
//! runtime), that of a default container plus sandgate's choices.
//!
//! - namespaces: the slot's network namespace, joined by path; new mount,
//!   PID, IPC and UTS namespaces; the hostname is the sandbox id;
//! - the capabilities of a default container (no `CAP_SYS_ADMIN`, no
//!   `CAP_NET_ADMIN`, no `CAP_NET_RAW`); `noNewPrivileges`;
//! - a seccomp filter that refuses the system calls a default container
//!   profile refuses to a process without `CAP_SYS_ADMIN` (mounting,
//!   namespaces, modules, keyrings, tracing, BPF, clocks, reboot, ...), so
//!   that they fail with `EPERM` even where a capability check would not
//!   catch them; `clone` with a namespace flag (no user namespace, in
//!   particular); and `clone3` and io_uring as absent (`ENOSYS`);
//! - masked and read-only `/proc` paths, `/sys` read-only;
//! - limits: processes always; memory and CPU where given.

use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::Path;

/// The capabilities of a default container (Docker's and containerd's
/// list), without `CAP_NET_RAW`: a sandbox needs no raw sockets to reach
/// the network.
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// System calls refused with `EPERM`: those a default container profile
/// allows only with `CAP_SYS_ADMIN` or other capabilities a sandbox does
/// not have, or never.
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pidfd_getfd",
    "pivot_root",
    "process_madvise",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
];

/// The `clone` flags that make new namespaces: a sandbox may not make any
/// (a user namespace would hand root inside every capability over the
/// namespaces it then makes, nf_tables included). `unshare` and `setns`
/// are refused outright; `clone` is refused when one of these bits is set.
pub const NAMESPACE_FLAGS: &[(&str, u64)] = &[
    ("CLONE_NEWNS", 0x0002_0000),
    ("CLONE_NEWCGROUP", 0x0200_0000),
    ("CLONE_NEWUTS", 0x0400_0000),
    ("CLONE_NEWIPC", 0x0800_0000),
    ("CLONE_NEWUSER", 0x1000_0000),
    ("CLONE_NEWPID", 0x2000_0000),
    ("CLONE_NEWNET", 0x4000_0000),
];

/// System calls refused with `ENOSYS`, as if the kernel had none, so that
/// programs fall back: `clone3`, whose flags are in memory a filter cannot
/// read (libc then uses `clone`, whose flags it can), and io_uring, which
/// bypasses system-call filtering altogether.
pub const ABSENT_SYSCALLS: &[&str] = &[
    "clone3",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// The seccomp rules of a sandbox: the denylist, `clone` with a namespace
/// flag, and the absent calls.
fn seccomp_rules() -> Vec<Value> {
    let mut rules = vec![
        json!({ "names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }),
        json!({ "names": ABSENT_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 38 }),
    ];
    // One rule per flag: the conditions of one rule are all required, and
    // a masked comparison tests equality, so "any of these bits" is one
    // rule for each bit.
    for (_, bit) in NAMESPACE_FLAGS {
        rules.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1,
            "args": [{ "index": 0, "value": bit, "valueTwo": bit, "op": "SCMP_CMP_MASKED_EQ" }],
        }));
    }
    rules
}

/// What a bundle needs.
#[derive(Debug, Clone)]
pub struct BundleSpec<'a> {
    /// The sandbox id: the hostname.
    pub id: &'a str,
    /// The root filesystem (the overlay's merged directory).
    pub rootfs: &'a Path,
    /// The network namespace to join.
    pub netns: &'a Path,
    /// The file to bind on `/etc/resolv.conf` (naming the gateway).
    pub resolv_conf: &'a Path,
    /// The host's static busybox, bound read-only on [`INIT`]: the
    /// sandbox's first process, whatever the snapshot holds.
    pub init: &'a Path,
    /// The most processes.
    pub pids_limit: i64,
    /// The most memory, in bytes, if limited.
    pub memory_limit: Option<i64>,
    /// The most CPU time, in cores, if limited.
    pub cpu: Option<f64>,
}

/// Where the sandbox's init (the host's static busybox) is bound: the
/// first process must not depend on the snapshot (an imported Debian root
/// has no busybox).
pub const INIT: &str = "/.sandgate/busybox";

/// The `resolv.conf` of a sandbox whose gateway is `gateway`.
pub fn resolv_conf(gateway: IpAddr) -> String {
    format!("# sandgate: the DNS service on this sandbox's gateway\nnameserver {gateway}\noptions ndots:0\n")
}

/// The environment every process of a sandbox starts with.
pub const BASE_ENV: &[&str] = &[
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
];

/// A process of a sandbox as the OCI spec describes it: root, the
/// capabilities above, no new privileges, the open-files limit. The
/// sandbox's first process and every exec (given to `runc exec --process`
/// in a file, so that its command and environment never show in the
/// host's process list) are made from this.
pub fn process(args: &[String], env: &[String], cwd: &str) -> Value {
    let caps: Vec<&str> = CAPABILITIES.to_vec();
    json!({
        "terminal": false,
        "user": { "uid": 0, "gid": 0 },
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
        },
        "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
        "noNewPrivileges": true,
    })
}

/// The `config.json` of a sandbox.
pub fn config(spec: &BundleSpec<'_>) -> Value {
    let mut resources = json!({
        "devices": [{ "allow": false, "access": "rwm" }],
        "pids": { "limit": spec.pids_limit },
    });
    if let Some(m) = spec.memory_limit {
        resources["memory"] = json!({ "limit": m, "swap": m });
    }
    if let Some(cores) = spec.cpu {
        // CFS bandwidth: `cores` periods of CPU time per period.
        const PERIOD: u64 = 100_000;
        resources["cpu"] =
            json!({ "quota": (cores * PERIOD as f64).round() as i64, "period": PERIOD });
    }
    json!({
        "ociVersion": "1.0.2",
        "hostname": spec.id,
        "root": { "path": spec.rootfs, "readonly": false },
        // The sandbox's first process only waits, and reaps the orphans
        // the kernel hands it (a zombie still counts against the pids
        // limit); work comes by exec.
        "process": process(
            &[
                INIT.to_string(),
                "sh".into(),
                "-c".into(),
                format!("trap 'exit 0' TERM; while :; do {INIT} sleep 3600 & wait; done"),
            ],
            &BASE_ENV.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            "/",
        ),
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/etc/resolv.conf", "type": "bind", "source": spec.resolv_conf,
              "options": ["rbind", "ro"] },
            { "destination": INIT, "type": "bind", "source": spec.init,
              "options": ["bind", "ro", "nosuid", "nodev"] },
        ],
        "linux": {
            "resources": resources,
            "namespaces": [
                { "type": "pid" },
                { "type": "network", "path": spec.netns },
                { "type": "ipc" },
                { "type": "uts" },
                { "type": "mount" },
            ],
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"],
                "syscalls": seccomp_rules(),
            },
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    })
}
