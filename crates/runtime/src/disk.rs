//! A sandbox's own disk: what it writes over its snapshot (the overlay's
//! upper and work directories) lives on a file system of its own, a sparse
//! image file formatted ext4 and mounted by loop. A sandbox that fills it
//! gets `ENOSPC` and nobody else notices; its size is the sandbox's disk
//! limit.
//!
//! A disk is a directory: `disk.img` and `mnt/` (the mount), with `upper/`
//! and `work/` on it. A sandbox's is `<sandbox>/disk`. Formatting and
//! mounting cost about 20 ms, so disks of the usual size are prepared
//! ahead, off the request's path, in `<data>/disks/ready-<bytes>-<n>`; a
//! create takes one by renaming its directory into the sandbox's (the
//! mount follows its directory). A disk half made is in `making-<n>` and
//! never taken.
//!
//! The image is sparse: it takes on the host only what the sandbox wrote
//! (and the file system's metadata, a few MiB), so the sum of the limits
//! may exceed the host's disk, as with thin provisioning; the operator
//! watches the data directory's free space.
//!
//! `mkfs.ext4` (e2fsprogs) formats the image and `mount -o loop`
//! (util-linux, which sets the loop device up and frees it with the
//! mount) mounts it: programs, as for runc, rather than loop-device ioctls
//! in this process.

use nix::mount::{umount2, MntFlags};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A sandbox's disk, in its directory.
const DIR: &str = "disk";
const IMAGE: &str = "disk.img";
const MOUNT: &str = "mnt";

/// Whether the sandbox in `sandbox` has a disk of its own.
pub(crate) fn has(sandbox: &Path) -> bool {
    sandbox.join(DIR).join(IMAGE).exists()
}

/// The error of a program that failed: `ENOSPC` when it says the host's
/// disk is full (so the caller reports a full disk, not a fault), else its
/// message.
fn failed(what: &str, output: &std::process::Output) -> io::Error {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    if text.contains("No space left on device") {
        return io::Error::from_raw_os_error(nix::libc::ENOSPC);
    }
    crate::RuntimeError::Program {
        what: what.to_string(),
        said: text.trim().to_string(),
    }
    .into()
}

/// Makes a disk of `bytes` in `dir` (made here), with empty upper and
/// work directories on it, and leaves it mounted.
fn make_at(dir: &Path, bytes: u64) -> io::Result<()> {
    fs::create_dir_all(dir.join(MOUNT))?;
    let image = dir.join(IMAGE);
    fs::File::create(&image)?.set_len(bytes)?;
    // No journal (a sandbox's disk lives no longer than the sandbox, and
    // a crash of the host loses it anyway); the inode tables and journal
    // are initialized lazily, so that formatting writes almost nothing;
    // no blocks reserved for root (root inside is the only user).
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-O",
            "^has_journal",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        ])
        .arg(&image)
        .output()?;
    if !out.status.success() {
        return Err(failed("mkfs.ext4 of a sandbox disk", &out));
    }
    let layers = mount_at(dir)?;
    for d in ["upper", "work"] {
        fs::create_dir_all(layers.join(d))?;
    }
    Ok(())
}

/// Mounts the disk in `dir` (if it is not), `nosuid` and `nodev` like
/// the overlay; returns where its layers are.
fn mount_at(dir: &Path) -> io::Result<PathBuf> {
    let at = dir.join(MOUNT);
    if !crate::is_mount_point(&at) {
        let out = Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime"])
            .arg(dir.join(IMAGE))
            .arg(&at)
            .output()?;
        if !out.status.success() {
            return Err(failed("mounting a sandbox disk", &out));
        }
    }
    Ok(at)
}

/// Unmounts the disk in `dir`, if mounted; the loop device goes with it.
fn unmount_at(dir: &Path) -> io::Result<()> {
    let at = dir.join(MOUNT);
    if !crate::is_mount_point(&at) {
        return Ok(());
    }
    match umount2(&at, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(cause) => Err(crate::RuntimeError::Mount {
            what: "unmounting a sandbox disk".into(),
            cause,
        }
        .into()),
    }
}

/// Gives the sandbox in `sandbox` a disk of `bytes`: a prepared one from
/// `pool` if there is one of that size, else one made now. It is left
/// mounted.
pub(crate) fn give(pool: &Path, sandbox: &Path, bytes: u64) -> io::Result<()> {
    let prefix = format!("ready-{bytes}-");
    let ready = fs::read_dir(pool)
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        });
    if let Some(ready) = ready {
        // Renamed, it is this sandbox's alone (a concurrent taker's rename
        // of the same one fails, and that one makes its own).
        if fs::rename(ready.path(), sandbox.join(DIR)).is_ok() {
            return Ok(());
        }
    }
    make_at(&sandbox.join(DIR), bytes)
}

/// Mounts the disk of the sandbox in `sandbox` (if it is not); returns
/// where its layers are.
pub(crate) fn mount(sandbox: &Path) -> io::Result<PathBuf> {
    mount_at(&sandbox.join(DIR))
}

/// Unmounts the disk of the sandbox in `sandbox`, if mounted. Tolerates
/// what is missing.
pub(crate) fn unmount(sandbox: &Path) -> io::Result<()> {
    unmount_at(&sandbox.join(DIR))
}

/// Prepares one disk of `bytes` in `pool`.
pub(crate) fn prepare(pool: &Path, bytes: u64) -> io::Result<()> {
    fs::create_dir_all(pool)?;
    let n = u64::from_ne_bytes(random8());
    let making = pool.join(format!("making-{n:016x}"));
    if let Err(e) = make_at(&making, bytes) {
        // What is left is removed at the next start (`clear`).
        if let Err(left) = unmount_at(&making).and_then(|()| fs::remove_dir_all(&making)) {
            tracing::warn!(disk = %making.display(), error = %left, "removing a disk not made");
        }
        return Err(e);
    }
    fs::rename(&making, pool.join(format!("ready-{bytes}-{n:016x}")))
}

/// How many disks of `bytes` are ready in `pool`.
pub(crate) fn ready(pool: &Path, bytes: u64) -> usize {
    let prefix = format!("ready-{bytes}-");
    fs::read_dir(pool)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .count()
}

/// Removes every disk of `pool` (at a start: they are quick to make
/// again, and one a crash cut short must not be taken), and whatever else
/// is there. Each entry is tried; the first failure is returned after. (A
/// `ready-` disk that could not be removed was made whole before its
/// rename, so it may still be given; a `making-` one never is.)
pub(crate) fn clear(pool: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(pool) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut first = Ok(());
    for e in entries {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                if first.is_ok() {
                    first = Err(err);
                }
                continue;
            }
        };
        let path = e.path();
        let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
            unmount_at(&path).and_then(|()| fs::remove_dir_all(&path))
        } else {
            fs::remove_file(&path)
        };
        if let Err(err) = removed {
            if first.is_ok() {
                first = Err(io::Error::new(
                    err.kind(),
                    format!("removing the prepared disk {}: {err}", path.display()),
                ));
            }
        }
    }
    first
}

fn random8() -> [u8; 8] {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = (t as u64).to_ne_bytes();
    }
    b
}
