//! The Debian root file system of the tests and the demo: sandgate's
//! Debian snapshot ([`sandgate_images::debian`]: apt, python3 with pip,
//! curl, node with npm) with, beyond it, the dependencies of sandgate's own
//! Debian package, so that its install test installs it offline into a
//! copy of this root. One tarball for all of them: built once (the only
//! step of the tests that reaches a network beyond the lab: Debian's
//! mirror, from this machine, never from a sandbox), cached outside the repository, reused by every later run.

use std::io;
use std::path::PathBuf;

/// The packages beyond the Debian snapshot's: what sandgate's Debian
/// package depends on, and busybox.
pub const EXTRA: &[&str] = &[
    "nftables",
    "runc",
    "busybox-static",
    "conntrack",
    "e2fsprogs",
    "mount",
];

/// The release it is built from.
pub const SUITE: &str = sandgate_images::debian::SUITE;

/// The tarball, built on first use.
pub fn rootfs_tarball() -> io::Result<PathBuf> {
    sandgate_images::debian::rootfs_tarball(SUITE, EXTRA)
}
