//! A Debian snapshot: a root file system built from Debian's own packages
//! with `mmdebstrap`, from Debian's own mirror (mmdebstrap's default),
//! kept as a tarball in a cache and reused by every later build (a second
//! build of the same suite and packages is instant).
//!
//! It holds what the reference's checks and a user's first commands need:
//! apt, python3 with pip and venv, curl, node with npm, and Debian's CA
//! certificates. pip may install into the system's Python
//! (`/etc/pip.conf`: `break-system-packages`), as it may in a container
//! image: a sandbox is a disposable machine of its own.
//!
//! The build is the operator's traffic to Debian's mirror, from the
//! operator's machine, never a sandbox's.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The packages a Debian snapshot holds, beyond Debian's minimal `apt`
/// variant.
pub const PACKAGES: &[&str] = &[
    "python3",
    "python3-pip",
    "python3-venv",
    "curl",
    "nodejs",
    "npm",
    "ca-certificates",
];

/// The release a Debian snapshot is built from unless told otherwise.
pub const SUITE: &str = "bookworm";

/// What pip is told in the snapshot (`/etc/pip.conf`).
const PIP_CONF: &str = "[global]\nbreak-system-packages = true\n";

/// The cache of built tarballs (`SANDGATE_CACHE`, default
/// `/var/cache/sandgate`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SANDGATE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/sandgate"))
}

/// The packages of a build: [`PACKAGES`] and `extra`, sorted, each once.
pub fn packages(extra: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = PACKAGES
        .iter()
        .chain(extra)
        .map(|p| p.to_string())
        .collect();
    all.sort();
    all.dedup();
    all
}

/// The tarball of a Debian root file system of `suite` with [`PACKAGES`]
/// and `extra`, built on first use into [`cache_dir`]. A build runs once
/// at a time on a machine (a lock file), and a tarball appears whole or
/// not at all (built under another name, then renamed). A package name
/// that is not one is refused before anything runs.
pub fn rootfs_tarball(suite: &str, extra: &[&str]) -> io::Result<PathBuf> {
    let packages = packages(extra);
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
            && s.as_bytes()[0].is_ascii_alphanumeric()
    };
    if let Some(bad) = std::iter::once(suite)
        .chain(packages.iter().map(String::as_str))
        .find(|s| !valid(s))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{bad}` is not a Debian package or suite name"),
        ));
    }
    let dir = cache_dir();
    std::fs::create_dir_all(&dir)?;
    let name = format!("debian-{suite}-{}.tar", packages.join("-"));
    let tarball = dir.join(&name);
    let lock = std::fs::File::create(dir.join(format!("{name}.lock")))?;
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io::Error::from(e))?;
    let built = build(&tarball, suite, &packages);
    drop(held);
    built?;
    Ok(tarball)
}

fn build(tarball: &Path, suite: &str, packages: &[String]) -> io::Result<()> {
    if tarball.exists() {
        return Ok(());
    }
    let partial = tarball.with_extension("partial.tar");
    let _ = std::fs::remove_file(&partial);
    tracing::info!(
        suite,
        packages = packages.join(","),
        "building a Debian root file system"
    );
    // No mirror argument: mmdebstrap takes Debian's (`org.debian.deb`,
    // and for a stable release its updates and `org.debian.security`),
    // and the root's own sources name the same.
    let out = Command::new("mmdebstrap")
        .args(["--variant=apt", "--quiet", "--format=tar"])
        .arg(format!("--include={}", packages.join(",")))
        .arg(format!(
            "--customize-hook=printf '{}' > \"$1/etc/pip.conf\"",
            PIP_CONF.replace('\n', "\\n")
        ))
        .arg(suite)
        .arg(&partial)
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("mmdebstrap (Debian's mmdebstrap package) could not run: {e}"),
            )
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(io::Error::other(format!(
            "mmdebstrap could not build the Debian root file system (is Debian's mirror reachable from this machine?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::rename(&partial, tarball)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_debian_names_are_refused_before_a_build() {
        for bad in ["", "a b", "-x", "x;rm", "X", "a/b", "$(id)"] {
            let e = rootfs_tarball(SUITE, &[bad]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
            let e = rootfs_tarball(bad, &[]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn a_builds_packages_are_the_defaults_and_the_extras_once_each() {
        let p = packages(&["nftables", "curl"]);
        assert!(p.windows(2).all(|w| w[0] < w[1]), "{p:?}");
        assert!(p.iter().any(|x| x == "nftables"));
        assert_eq!(p.len(), PACKAGES.len() + 1);
    }
}
