//! A Debian root file system for tests that need a real userland (apt,
//! python3, node) in a sandbox, and for the install test of sandgate's
//! Debian package: built once with `mmdebstrap` from the
//! Debian mirror this machine's apt sources name, kept as a tarball in a
//! cache outside the repository, and reused by every later run.
//!
//! The build is the only step of the tests that reaches a network beyond
//! the lab: the package registry, through the host's own apt
//! configuration, never from a sandbox.

use std::io;
use std::path::PathBuf;
use std::process::Command;

/// The packages the tarball holds, beyond Debian's minimal `apt` variant:
/// a userland for sandboxes (python3, node), and the dependencies of
/// sandgate's own Debian package, so that its install test installs it
/// offline into a copy of this root.
pub const PACKAGES: &[&str] = &[
    "python3",
    "nodejs",
    "ca-certificates",
    "nftables",
    "runc",
    "busybox-static",
    "conntrack",
    "e2fsprogs",
    "mount",
];

/// The release it is built from.
pub const SUITE: &str = "bookworm";

/// Where the tarball is kept (`SANDGATE_CACHE`, default
/// `/var/cache/sandgate`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SANDGATE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/sandgate"))
}

/// The tarball of a Debian root file system with [`PACKAGES`], built on
/// first use. A build runs once at a time on a machine (a lock file), and
/// a tarball appears whole or not at all (built under another name, then
/// renamed).
pub fn rootfs_tarball() -> io::Result<PathBuf> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir)?;
    let name = format!("debian-{SUITE}-{}.tar", PACKAGES.join("-"));
    let tarball = dir.join(&name);
    let lock = std::fs::File::create(dir.join(format!("{name}.lock")))?;
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map(|held| {
            let built = build(&tarball);
            drop(held);
            built
        })
        .map_err(|(_, e)| io::Error::from(e))??;
    Ok(tarball)
}

fn build(tarball: &std::path::Path) -> io::Result<()> {
    if tarball.exists() {
        return Ok(());
    }
    let partial = tarball.with_extension("partial.tar");
    let _ = std::fs::remove_file(&partial);
    // No mirror argument: mmdebstrap takes the host's apt sources, which
    // name the mirror this machine reaches.
    let out = Command::new("mmdebstrap")
        .args(["--variant=apt", "--quiet", "--format=tar"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&partial)
        .output()?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(io::Error::other(format!(
            "mmdebstrap could not build the Debian root file system (is the Debian mirror of /etc/apt/sources.list reachable?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::rename(&partial, tarball)
}
