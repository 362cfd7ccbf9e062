//! The seccomp profile of every sandbox process: an allowlist.
//!
//! Modelled on the default profile of the well-known container engines
//! (Docker's and containerd's): a system call not named here fails with
//! `EPERM`, whatever kernel the host runs, so a system call added to a
//! future kernel is refused until it is reviewed and listed. Beyond that
//! profile, sandgate narrows what a sandbox without `CAP_SYS_ADMIN` could
//! reach anyway, and what reaches past the dataplane:
//!
//! - **Socket families.** `socket` and `socketpair` are allowed for
//!   `AF_UNIX`, `AF_INET`, `AF_INET6` and `AF_NETLINK` only; every other
//!   family fails with `EAFNOSUPPORT`, as on a kernel built without it.
//!   `AF_VSOCK` in particular reaches the hypervisor of a host that is a
//!   virtual machine without passing any netfilter hook, in every network
//!   mode, `blocked` included; `AF_PACKET`, `AF_ALG`, `AF_XDP`, ... are
//!   surfaces a sandbox has no use for.
//! - **Netlink protocols.** `NETLINK_ROUTE` (addresses and routes, read
//!   by `ip` and by libc's `getifaddrs`) and `NETLINK_SOCK_DIAG` (`ss`)
//!   only; every other protocol fails with `EPROTONOSUPPORT`, as an unknown
//!   protocol does. `NETLINK_KOBJECT_UEVENT` would show the host's device
//!   events to the sandbox; `NETLINK_AUDIT` reaches the host's audit log.
//! - **One architecture.** Only the host's native system-call table:
//!   the i386 entry point (`int 0x80`, where `socketcall` multiplexes every
//!   socket call behind a pointer no filter can read) and the x32 one are
//!   refused outright.
//! - **No namespaces.** `unshare`, `setns` and `mount` are not listed;
//!   `clone` is allowed only without a `CLONE_NEW*` flag (a user namespace
//!   would hand root inside every capability over the namespaces it makes
//!   next, nf_tables included); `clone3`, whose flags are in memory a
//!   filter cannot read, and io_uring, which bypasses system-call
//!   filtering, answer `ENOSYS`, so that libc and runtimes fall back.
//!
//! Every argument a rule compares is a full 64-bit register: a value with
//! bits set above the 32 the kernel reads (`0x1_0000_0028` for
//! `AF_VSOCK`) matches no allowing rule and lands in a refusing one.

use serde_json::{json, Value};

/// `EPERM`: the answer to a system call the profile does not list.
pub const EPERM: u32 = 1;
/// `ENOSYS`: the answer to a call that should look absent.
pub const ENOSYS: u32 = 38;
/// `EPROTONOSUPPORT`: the answer to a refused netlink protocol.
pub const EPROTONOSUPPORT: u32 = 93;
/// `EAFNOSUPPORT`: the answer to a refused socket family.
pub const EAFNOSUPPORT: u32 = 97;

/// The socket families a sandbox may open: `AF_UNIX`, `AF_INET`,
/// `AF_INET6`, `AF_NETLINK`.
pub const SOCKET_FAMILIES: &[(&str, u64)] = &[
    ("AF_UNIX", 1),
    ("AF_INET", 2),
    ("AF_INET6", 10),
    ("AF_NETLINK", 16),
];

/// The netlink protocols a sandbox may open: `NETLINK_ROUTE`,
/// `NETLINK_SOCK_DIAG`.
pub const NETLINK_PROTOCOLS: &[(&str, u64)] = &[("NETLINK_ROUTE", 0), ("NETLINK_SOCK_DIAG", 4)];

const AF_NETLINK: u64 = 16;

/// The `clone` flags that make new namespaces: a sandbox may make none.
pub const NAMESPACE_FLAGS: &[(&str, u64)] = &[
    ("CLONE_NEWNS", 0x0002_0000),
    ("CLONE_NEWCGROUP", 0x0200_0000),
    ("CLONE_NEWUTS", 0x0400_0000),
    ("CLONE_NEWIPC", 0x0800_0000),
    ("CLONE_NEWUSER", 0x1000_0000),
    ("CLONE_NEWPID", 0x2000_0000),
    ("CLONE_NEWNET", 0x4000_0000),
];

/// System calls answered with `ENOSYS`, as if the kernel had none.
pub const ABSENT_SYSCALLS: &[&str] = &[
    "clone3",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// `personality` is allowed only to ask (`0xffffffff`) or to set what
/// ordinary programs set: `PER_LINUX`, `PER_LINUX32`, `UNAME26` and both.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// System calls allowed without conditions. What a default container
/// profile allows, less what sandgate refuses besides (see the module
/// documentation; `ptrace`, `process_vm_*`, `name_to_handle_at`, the NUMA
/// policy calls and `kcmp` are refused too, as they were under the old
/// denylist), plus `chroot` (the sandbox holds `CAP_SYS_CHROOT`, as a
/// default container does).
pub const ALLOWED_SYSCALLS: &[&str] = &[
    // Files and directories.
    "access",
    "chdir",
    "chmod",
    "chown",
    "chroot",
    "close",
    "close_range",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futimesat",
    "getcwd",
    "getdents",
    "getdents64",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "ioctl",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pipe",
    "pipe2",
    "pread64",
    "preadv",
    "preadv2",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "sendfile",
    "setxattr",
    "setxattrat",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "tee",
    "truncate",
    "umask",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vmsplice",
    "write",
    "writev",
    // Polling and events.
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "fanotify_mark",
    "poll",
    "ppoll",
    "pselect6",
    "select",
    "signalfd",
    "signalfd4",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    // Asynchronous I/O (not io_uring).
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_setup",
    "io_submit",
    // Memory.
    "brk",
    "cachestat",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mremap",
    "mseal",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "remap_file_pages",
    // Processes and threads.
    "arch_prctl",
    "capget",
    "capset",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "fork",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "gettid",
    "getuid",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "modify_ldt",
    "pidfd_open",
    "pidfd_send_signal",
    "prctl",
    "prlimit64",
    "process_mrelease",
    "rseq",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setuid",
    "tgkill",
    "tkill",
    "vfork",
    "wait4",
    "waitid",
    // Signals.
    "alarm",
    "pause",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sigaltstack",
    // Time (reading it; setting it needs CAP_SYS_TIME, `adjtimex` reads
    // without it).
    "adjtimex",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "gettimeofday",
    "nanosleep",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "times",
    // Futexes.
    "futex",
    "futex_requeue",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "restart_syscall",
    // System V and POSIX IPC (the sandbox's own IPC namespace).
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    // Sockets, once made (families are filtered at `socket`).
    "accept",
    "accept4",
    "bind",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt",
    "listen",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shutdown",
    // The rest.
    "getrandom",
    "sysinfo",
    "uname",
];

fn errno(names: &[&str], errno: u32) -> Value {
    json!({ "names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": errno })
}

fn eq(index: u32, value: u64) -> Value {
    json!({ "index": index, "value": value, "op": "SCMP_CMP_EQ" })
}

fn gt(index: u32, value: u64) -> Value {
    json!({ "index": index, "value": value, "op": "SCMP_CMP_GT" })
}

/// Rules for `name` (`socket` or `socketpair`): the allowed families,
/// netlink only with its allowed protocols, and every other value of
/// either argument refused, so that no value falls through to the
/// default's `EPERM`.
fn socket_rules(name: &str) -> Vec<Value> {
    let allow =
        |args: Vec<Value>| json!({ "names": [name], "action": "SCMP_ACT_ALLOW", "args": args });
    let refuse = |errno: u32, args: Vec<Value>| json!({ "names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": errno, "args": args });
    let mut rules = Vec::new();
    let allowed: Vec<u64> = SOCKET_FAMILIES.iter().map(|(_, f)| *f).collect();
    let max = allowed.iter().copied().max().unwrap_or(0);
    for family in 0..=max {
        match family {
            AF_NETLINK => {
                let protocols: Vec<u64> = NETLINK_PROTOCOLS.iter().map(|(_, p)| *p).collect();
                let top = protocols.iter().copied().max().unwrap_or(0);
                for protocol in 0..=top {
                    let args = vec![eq(0, AF_NETLINK), eq(2, protocol)];
                    rules.push(if protocols.contains(&protocol) {
                        allow(args)
                    } else {
                        refuse(EPROTONOSUPPORT, args)
                    });
                }
                rules.push(refuse(EPROTONOSUPPORT, vec![eq(0, AF_NETLINK), gt(2, top)]));
            }
            f if allowed.contains(&f) => rules.push(allow(vec![eq(0, f)])),
            f => rules.push(refuse(EAFNOSUPPORT, vec![eq(0, f)])),
        }
    }
    rules.push(refuse(EAFNOSUPPORT, vec![gt(0, max)]));
    rules
}

/// The architectures of the filter: the host's native one only.
pub fn architectures() -> &'static [&'static str] {
    if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64"]
    } else {
        &["SCMP_ARCH_X86_64"]
    }
}

/// The `linux.seccomp` object of a sandbox's OCI configuration.
pub fn profile() -> Value {
    let mut rules = vec![
        json!({ "names": ALLOWED_SYSCALLS, "action": "SCMP_ACT_ALLOW" }),
        errno(ABSENT_SYSCALLS, ENOSYS),
    ];
    let namespaces = NAMESPACE_FLAGS.iter().fold(0, |all, (_, bit)| all | bit);
    // `value` is the mask, `valueTwo` what the masked argument must equal.
    rules.push(json!({
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{ "index": 0, "value": namespaces, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ" }],
    }));
    for p in PERSONALITIES {
        rules.push(
            json!({ "names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [eq(0, *p)] }),
        );
    }
    rules.extend(socket_rules("socket"));
    rules.extend(socket_rules("socketpair"));
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": architectures(),
        "syscalls": rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_system_call_is_both_allowed_and_refused_by_name() {
        for absent in ABSENT_SYSCALLS {
            assert!(!ALLOWED_SYSCALLS.contains(absent), "{absent}");
        }
        for refused in [
            "socket",
            "socketpair",
            "clone",
            "unshare",
            "setns",
            "mount",
            "ptrace",
            "bpf",
            "keyctl",
            "perf_event_open",
            "userfaultfd",
            "socketcall",
            "personality",
        ] {
            assert!(!ALLOWED_SYSCALLS.contains(&refused), "{refused}");
        }
        let mut sorted = ALLOWED_SYSCALLS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            ALLOWED_SYSCALLS.len(),
            "a name is listed twice"
        );
    }

    #[test]
    fn every_socket_family_and_netlink_protocol_has_exactly_one_rule() {
        // Evaluates the rules as the kernel's filter would, for a range of
        // argument values: exactly one rule must match each, and the
        // allowed ones are exactly the listed families and protocols.
        let rules = socket_rules("socket");
        let matches = |rule: &Value, family: u64, protocol: u64| {
            rule["args"].as_array().into_iter().flatten().all(|a| {
                let v = if a["index"] == 0 { family } else { protocol };
                let want = a["value"].as_u64().unwrap_or(u64::MAX);
                match a["op"].as_str() {
                    Some("SCMP_CMP_EQ") => v == want,
                    Some("SCMP_CMP_GT") => v > want,
                    _ => false,
                }
            })
        };
        let values = (0..64u64).chain([0xffff_ffff, 0x1_0000_0002, 0x1_0000_0028, u64::MAX]);
        for family in values.clone() {
            for protocol in values.clone() {
                let hits: Vec<&Value> = rules
                    .iter()
                    .filter(|r| matches(r, family, protocol))
                    .collect();
                assert_eq!(hits.len(), 1, "family {family:#x} protocol {protocol:#x}");
                let allowed = hits[0]["action"] == "SCMP_ACT_ALLOW";
                let want = match family {
                    1 | 2 | 10 => true,
                    16 => protocol == 0 || protocol == 4,
                    _ => false,
                };
                assert_eq!(allowed, want, "family {family:#x} protocol {protocol:#x}");
                if !allowed {
                    let errno = hits[0]["errnoRet"].as_u64();
                    let expect = if family == 16 {
                        EPROTONOSUPPORT
                    } else {
                        EAFNOSUPPORT
                    };
                    assert_eq!(errno, Some(u64::from(expect)));
                }
            }
        }
    }
}
