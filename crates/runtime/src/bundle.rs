//! The OCI bundle of a sandbox: `config.json` for runc (or another OCI
//! runtime), that of a default container plus sandgate's choices.
//!
//! - namespaces: the slot's network namespace, joined by path; new mount,
//!   PID, IPC and UTS namespaces; the hostname is the sandbox id;
//! - the capabilities of a default container (no `CAP_SYS_ADMIN`, no
//!   `CAP_NET_ADMIN`, no `CAP_NET_RAW`); `noNewPrivileges`;
//! - the seccomp allowlist of [`crate::seccomp`]: system calls a default
//!   container may make, socket families `AF_UNIX`, `AF_INET`, `AF_INET6`
//!   and `AF_NETLINK` only, no namespaces, the native architecture only;
//! - masked and read-only `/proc` paths, `/sys` read-only;
//! - limits: processes always; memory and CPU where given.

use sandgate_contract::RuntimeClass;
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
    /// The files bound on [`SYSTEM_BUNDLE`] (the snapshot's bundle and the
    /// gateway's CA) and on [`CA_FILE`] (the CA alone), if the sandbox
    /// trusts the gateway's CA.
    pub trust: Option<(&'a Path, &'a Path)>,
    /// Whether the snapshot had a bundle of its own (then the variables
    /// naming the system bundle are set too).
    pub system_bundle: bool,
    /// The OCI runtime it runs under.
    pub class: RuntimeClass,
}

/// Host tasks a sandbox of the `runsc` class may have per process it may
/// have: gVisor's ptrace platform gives each of the sandbox's processes a
/// stub process of a few threads on the host, and the sentry threads of
/// its own (about 8 host tasks a process, measured: 36 idle, 762 with 100
/// sleeping processes, 1,582 with 200).
const RUNSC_HOST_TASKS_PER_PROCESS: i64 = 10;

/// Host tasks of a `runsc` sandbox besides those of its processes (the
/// sentry and the gofer idle).
const RUNSC_HOST_TASKS_BASE: i64 = 256;

/// The open-processes limit of a sandbox's processes (`RLIMIT_NPROC`),
/// if its class needs one: under gVisor the host's pids cgroup counts
/// gVisor's own threads, not the sandbox's processes, so the sandbox's
/// limit is kept by gVisor's kernel through this rlimit (root inside has
/// neither `CAP_SYS_ADMIN` nor `CAP_SYS_RESOURCE`, so it applies), and
/// the cgroup's bound is the host's backstop. The rlimit counts one
/// user's processes: those spread over several users (root inside may
/// take any uid) meet the backstop, which ends that sandbox alone.
pub fn nproc(class: RuntimeClass, pids_limit: i64) -> Option<i64> {
    (class == RuntimeClass::Runsc).then_some(pids_limit)
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

/// The system's CA bundle in a sandbox (Debian's path, which OpenSSL,
/// curl, Python and most tools read by default): the snapshot's own
/// bundle and the gateway's CA.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The gateway's CA alone, in a sandbox.
pub const CA_FILE: &str = "/etc/sandgate/ca.pem";

/// What tells the usual TLS clients where the trusted CAs are, beside the
/// system bundle: OpenSSL's (`SSL_CERT_FILE`), Python requests', and
/// Node's (which adds to its own roots).
pub const TRUST_ENV: &[(&str, &str)] = &[
    ("SSL_CERT_FILE", SYSTEM_BUNDLE),
    ("REQUESTS_CA_BUNDLE", SYSTEM_BUNDLE),
    ("NODE_EXTRA_CA_CERTS", CA_FILE),
];

/// The environment of a sandbox's processes: [`BASE_ENV`], and
/// [`TRUST_ENV`] if it trusts the gateway's CA (those naming the system
/// bundle only if its snapshot had one: `system_bundle`).
pub fn base_env(trusts: bool, system_bundle: bool) -> Vec<String> {
    let base = BASE_ENV.iter().map(|e| e.to_string());
    let trust = TRUST_ENV
        .iter()
        .filter(|(_, v)| trusts && (system_bundle || *v != SYSTEM_BUNDLE))
        .map(|(k, v)| format!("{k}={v}"));
    base.chain(trust).collect()
}

/// A process of a sandbox as the OCI spec describes it: root, the
/// capabilities above, no new privileges, the open-files limit. The
/// sandbox's first process and every exec (given to `runc exec --process`
/// in a file, so that its command and environment never show in the
/// host's process list) are made from this.
pub fn process(args: &[String], env: &[String], cwd: &str, nproc: Option<i64>) -> Value {
    let caps: Vec<&str> = CAPABILITIES.to_vec();
    let mut rlimits = vec![json!({ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 })];
    if let Some(n) = nproc {
        rlimits.push(json!({ "type": "RLIMIT_NPROC", "hard": n, "soft": n }));
    }
    json!({
        "terminal": false,
        "user": { "uid": 0, "gid": 0 },
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
        },
        "rlimits": rlimits,
        "noNewPrivileges": true,
    })
}

/// The `config.json` of a sandbox.
pub fn config(spec: &BundleSpec<'_>) -> Value {
    let host_pids = match spec.class {
        RuntimeClass::Runc => spec.pids_limit,
        RuntimeClass::Runsc => spec
            .pids_limit
            .saturating_mul(RUNSC_HOST_TASKS_PER_PROCESS)
            .saturating_add(RUNSC_HOST_TASKS_BASE),
    };
    let mut resources = json!({
        "devices": [{ "allow": false, "access": "rwm" }],
        "pids": { "limit": host_pids },
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
    let mut mounts = json!([
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
    ]);
    if let (Some((bundle, ca)), Some(list)) = (spec.trust, mounts.as_array_mut()) {
        // Read-only: the sandbox cannot trust another CA system-wide
        // behind its own processes' backs (it may point its own
        // processes elsewhere).
        for (source, destination) in [(bundle, SYSTEM_BUNDLE), (ca, CA_FILE)] {
            list.push(
                json!({ "destination": destination, "type": "bind", "source": source,
                "options": ["bind", "ro", "nosuid", "nodev", "noexec"] }),
            );
        }
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
            &base_env(spec.trust.is_some(), spec.system_bundle),
            "/",
            nproc(spec.class, spec.pids_limit),
        ),
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "namespaces": [
                { "type": "pid" },
                { "type": "network", "path": spec.netns },
                { "type": "ipc" },
                { "type": "uts" },
                { "type": "mount" },
            ],
            "seccomp": crate::seccomp::profile(),
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

/// The network namespace the bundle `config` (a `config.json`) joins, if
/// it names one by path.
pub fn netns_of(config: &serde_json::Value) -> Option<&Path> {
    config["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")?["path"]
        .as_str()
        .map(Path::new)
}
