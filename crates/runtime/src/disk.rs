//! A sandbox's own disk: what it writes over its snapshot (the overlay's
//! upper and work directories) lives on a file system of its own, a sparse
//! image file (`disk.img` in the sandbox's directory) formatted ext4 and
//! mounted by loop on `disk/`. A sandbox that fills it gets `ENOSPC` and
//! nobody else notices; its size is the sandbox's disk limit.
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

const IMAGE: &str = "disk.img";
const MOUNT: &str = "disk";

/// Whether the sandbox in `dir` has a disk of its own.
pub(crate) fn has(dir: &Path) -> bool {
    dir.join(IMAGE).exists()
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
    io::Error::other(format!("{what}: {}", text.trim()))
}

/// Makes a disk of `bytes` for the sandbox in `dir`, with empty upper and
/// work directories on it, and leaves it mounted.
pub(crate) fn make(dir: &Path, bytes: u64) -> io::Result<()> {
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
    fs::create_dir_all(dir.join(MOUNT))?;
    let layers = mount(dir)?;
    for d in ["upper", "work"] {
        fs::create_dir_all(layers.join(d))?;
    }
    Ok(())
}

/// Mounts the disk of the sandbox in `dir` (if it is not), `nosuid` and
/// `nodev` like the overlay; returns where its layers are.
pub(crate) fn mount(dir: &Path) -> io::Result<PathBuf> {
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

/// Unmounts the disk of the sandbox in `dir`, if mounted; the loop device
/// goes with it. Tolerates what is missing.
pub(crate) fn unmount(dir: &Path) -> io::Result<()> {
    let at = dir.join(MOUNT);
    if !crate::is_mount_point(&at) {
        return Ok(());
    }
    match umount2(&at, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(io::Error::other(format!("unmounting a sandbox disk: {e}"))),
    }
}
