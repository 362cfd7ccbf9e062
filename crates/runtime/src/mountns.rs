//! The mount namespace the OCI runtime runs in.
//!
//! Each sandbox's overlay (and its disk, if it has one) is mounted in the
//! host's mount namespace, and each slot's network namespace is pinned
//! there by a bind mount: with a thousand sandboxes the host's mount
//! table holds thousands of entries. A container's mount namespace is
//! made by copying the namespace runc runs in, and runc reads that
//! namespace's mount table several times per run and per exec, so both
//! grew with the number of sandboxes alive (3.3x for `runc run` and 2x for
//! an exec at 1,000; docs/BENCHMARKS.md, "Creation flat at scale").
//!
//! So the OCI runtime never runs in the host's namespace. The runtime
//! keeps a **clean namespace**: a copy of the host's, made once when the
//! runtime starts, private (nothing mounted in the host later appears in
//! it, nothing mounted in it appears in the host), from which every mount
//! below the data directory and every pin below `/run/netns` was detached.
//! Every runc invocation starts in it ([`CleanNs::spawn`]: from a thread
//! of the runtime's process that entered it, so the rest of the process
//! stays where it is, without `unsafe` code between fork and exec).
//! `runc run` starts in a fresh copy of it ([`CleanNs::spawn_with`]) in
//! which the sandbox's own mounts are attached at their paths (clones of
//! its overlay and of its network namespace's pin, taken from the host's
//! namespace): the container's namespace is copied from that, a few dozen
//! mounts whatever the number of sandboxes, and the copy dies with the
//! runc process that made the container.
//!
//! Invariants:
//! - The host's namespace keeps every mount the runtime makes (overlays,
//!   disks) and the dataplane's pins, as before: the host sees and cleans
//!   them; the clean namespace holds none of them, nor another runtime's
//!   (a second data directory on the same host: its overlays and disks
//!   are detached too, so that no copy here holds a stopped sandbox's).
//! - A mount of one sandbox is never attached where another's container
//!   is made: each `runc run` has a namespace of its own.
//! - The runtime's process never leaves the host's namespace: only the
//!   short-lived threads that start runc do, each with a file system
//!   context of its own.
//! - A mount made in the host after the runtime started is not seen by
//!   runc (the clean namespace is a copy taken then): the data directory's
//!   file system must be mounted before.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags, CWD};
use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;

/// Where network namespaces are pinned (by the dataplane, as by `ip netns`).
const PINS: &str = "/run/netns";

/// A handle of the clean namespace; it lives as long as a clone of this.
#[derive(Debug, Clone)]
pub(crate) struct CleanNs {
    ns: Arc<OwnedFd>,
}

impl CleanNs {
    /// Makes the clean namespace of a runtime whose data lives in
    /// `data_dir` (an absolute path): a private copy of the calling process's mount
    /// namespace without the mounts below `data_dir` and `/run/netns`.
    pub(crate) fn make(data_dir: &Path) -> io::Result<CleanNs> {
        let data_dir = data_dir.to_path_buf();
        let ns = on_a_thread(|| {
            unshare(CloneFlags::CLONE_NEWNS).map_err(|e| {
                io::Error::other(format!("copying the OCI runtime's mount namespace: {e}"))
            })?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )?;
            let table = fs::read_to_string("/proc/thread-self/mountinfo")?;
            for point in crowd(&table, &data_dir) {
                match umount2(&point, MntFlags::MNT_DETACH) {
                    // Gone with a parent detached before it.
                    Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
                    Err(e) => {
                        return Err(io::Error::other(format!(
                            "detaching {} from the OCI runtime's mount namespace: {e}",
                            point.display()
                        )))
                    }
                }
            }
            Ok(rustix::fs::open(
                "/proc/thread-self/ns/mnt",
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?)
        })?;
        Ok(CleanNs { ns: Arc::new(ns) })
    }

    /// Starts `command` in the clean namespace.
    pub(crate) fn spawn(&self, command: &mut Command) -> io::Result<Child> {
        on_a_thread(|| {
            self.enter()?;
            command.spawn()
        })
    }

    /// Runs `command` in the clean namespace to its end, with its output
    /// (as [`Command::output`]: no input, stdout and stderr captured).
    pub(crate) fn output(&self, command: &mut Command) -> io::Result<Output> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.spawn(command)?.wait_with_output()
    }

    /// Starts `command` in a fresh copy of the clean namespace in which
    /// the mounts of the calling thread's namespace at `points` are
    /// attached at the same paths (each point's mount, cloned).
    pub(crate) fn spawn_with(&self, command: &mut Command, points: &[&Path]) -> io::Result<Child> {
        let clones = points
            .iter()
            .map(|point| {
                open_tree(
                    CWD,
                    *point,
                    OpenTreeFlags::OPEN_TREE_CLONE
                        | OpenTreeFlags::OPEN_TREE_CLOEXEC
                        | OpenTreeFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| {
                    io::Error::other(format!("cloning the mount at {}: {e}", point.display()))
                })
            })
            .collect::<io::Result<Vec<OwnedFd>>>()?;
        on_a_thread(|| {
            self.enter()?;
            // A copy of the clean namespace, this thread's alone; the
            // command's process holds it once this thread ends.
            unshare(CloneFlags::CLONE_NEWNS).map_err(|e| {
                io::Error::other(format!("copying the OCI runtime's mount namespace: {e}"))
            })?;
            for (clone, point) in clones.iter().zip(points) {
                move_mount(
                    clone,
                    "",
                    CWD,
                    *point,
                    MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
                )
                .map_err(|e| {
                    io::Error::other(format!("attaching the mount at {}: {e}", point.display()))
                })?;
            }
            command.spawn()
        })
    }

    /// Moves the calling thread, which shares its file system context with
    /// no other, into the clean namespace.
    fn enter(&self) -> io::Result<()> {
        setns(&*self.ns, CloneFlags::CLONE_NEWNS).map_err(|e| {
            io::Error::other(format!("entering the OCI runtime's mount namespace: {e}"))
        })
    }
}

/// Runs `work` on a thread of its own whose file system context (root,
/// working directory, mount namespace) is its own: what it enters, and the
/// processes it starts, leave the rest of the process where it is.
fn on_a_thread<T: Send>(work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("sandgate-oci-ns".into())
            .spawn_scoped(scope, || {
                unshare(CloneFlags::CLONE_FS).map_err(|e| {
                    io::Error::other(format!(
                        "giving a thread a file system context of its own: {e}"
                    ))
                })?;
                work()
            })?
            .join()
            .map_err(|_| {
                io::Error::other("a thread entering the OCI runtime's mount namespace panicked")
            })?
    })
}

/// The mount points of `mountinfo` strictly below `data_dir` or
/// [`PINS`], and the sandbox mounts of other runtimes' data directories
/// ([`a_sandbox_mount`]; never one that holds `data_dir`), shallowest first (detaching one detaches what is
/// below it).
fn crowd(mountinfo: &str, data_dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            let point = PathBuf::from(unescape(line.split(' ').nth(4)?));
            let fstype = line.split(" - ").nth(1)?.split(' ').next()?;
            let below = [data_dir, Path::new(PINS)]
                .iter()
                .any(|root| point != *root && point.starts_with(root));
            // One that holds the data directory is never another's.
            let other = !data_dir.starts_with(&point) && a_sandbox_mount(&point, fstype);
            (below || other).then_some(point)
        })
        .collect();
    points.sort_by_key(|p| p.components().count());
    points
}

/// Whether a mount at `point` of file system `fstype` is one a runtime
/// makes in its data directory, whichever that is: a sandbox's overlay
/// (`sandboxes/<id>/rootfs`) or a disk (`sandboxes/<id>/disk/mnt`,
/// `disks/<name>/mnt`). Another runtime on the same host (a second
/// runner, a test's) has its own data directory; a copy of its mounts
/// here would hold a stopped sandbox's overlay or disk alive while its
/// directory stays, so that a start mounted a second overlay on the same
/// upper directory.
fn a_sandbox_mount(point: &Path, fstype: &str) -> bool {
    let names: Vec<&std::ffi::OsStr> = point.iter().rev().take(4).collect();
    let is = |i: usize, name: &str| names.get(i).is_some_and(|n| *n == name);
    match fstype {
        "overlay" => is(0, "rootfs") && is(2, "sandboxes"),
        "ext4" => is(0, "mnt") && ((is(1, "disk") && is(3, "sandboxes")) || is(2, "disks")),
        _ => false,
    }
}

/// A field of `/proc/*/mountinfo` with its octal escapes (`\040` for a
/// space, `\011`, `\012`, `\134`) undone.
fn unescape(field: &str) -> std::ffi::OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|b| (b'0'..=b'7').contains(b))
                .then(|| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')))
        });
        match (bytes[i], octal) {
            (b'\\', Some(n)) if n <= 0xff => {
                out.push(n as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::os::unix::ffi::OsStringExt::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crowd_is_what_lies_below_the_data_directory_and_the_pins_and_other_runtimes_sandboxes() {
        let table = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
45 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw
50 45 0:4 net:[4026532] /run/netns/sg-slot-1 rw shared:1 - nsfs nsfs rw
60 27 0:50 / /var/lib/sandgate rw - ext4 /dev/vdb rw
61 60 0:51 / /var/lib/sandgate/sandboxes/a/rootfs rw - overlay overlay rw
62 60 7:0 / /var/lib/sandgate/sandboxes/a/disk/mnt rw - ext4 /dev/loop0 rw
63 60 0:52 / /var/lib/sandgate/sandboxes/my\\040box/rootfs rw - overlay overlay rw
64 27 0:53 / /var/lib/sandgate-other/x rw - tmpfs tmpfs rw
70 27 0:54 / /tmp/other/sandboxes/b/rootfs rw - overlay overlay rw,upperdir=/tmp/other/sandboxes/b/disk/mnt/upper
71 27 7:1 / /tmp/other/sandboxes/b/disk/mnt rw - ext4 /dev/loop1 rw
72 27 7:2 / /tmp/other/disks/ready-1-2/mnt rw - ext4 /dev/loop2 rw
73 27 0:55 / /srv/rootfs rw - overlay overlay rw
74 27 7:3 / /srv/images/mnt rw - ext4 /dev/loop3 rw
75 27 0:56 / /srv/sandboxes/c/rootfs rw - tmpfs tmpfs rw
76 27 7:4 / /srv/disks/d/mnt rw - ext4 /dev/loop4 rw
";
        // A runtime whose data directory sits on what looks like another's
        // disk keeps it.
        let inside = crowd(table, Path::new("/srv/disks/d/mnt/data"));
        assert!(!inside.iter().any(|p| p == Path::new("/srv/disks/d/mnt")));
        assert!(inside
            .iter()
            .any(|p| p == Path::new("/tmp/other/disks/ready-1-2/mnt")));
        let crowd = crowd(table, Path::new("/var/lib/sandgate"));
        let names: Vec<&str> = crowd.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "/run/netns/sg-slot-1",
                "/srv/disks/d/mnt",
                "/tmp/other/sandboxes/b/rootfs",
                "/tmp/other/disks/ready-1-2/mnt",
                "/var/lib/sandgate/sandboxes/a/rootfs",
                "/var/lib/sandgate/sandboxes/my box/rootfs",
                "/tmp/other/sandboxes/b/disk/mnt",
                "/var/lib/sandgate/sandboxes/a/disk/mnt",
            ]
        );
    }

    #[test]
    fn escapes_are_undone_and_a_lone_backslash_is_kept() {
        assert_eq!(unescape(r"/a\040b\011c\012d\134e"), "/a b\tc\nd\\e");
        assert_eq!(unescape(r"/a\b\04"), r"/a\b\04");
    }
}
