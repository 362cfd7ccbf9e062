//! Snapshot import: a root filesystem from a tar archive (what `docker
//! export` writes), plain or gzip-compressed, or from an OCI image's
//! layers applied in order ([`apply_layer`]: whiteouts and opaque
//! directories as the OCI image spec says).
//!
//! Unpacking is the `tar` crate's, which keeps every entry inside the
//! destination: `..` components and leading `/` are refused or stripped,
//! a hard link must point inside, and an entry that would be written
//! through a symbolic link leading outside is refused (the parent is
//! resolved and checked first). Ownership and modes are kept (the sandbox
//! is root inside). Device nodes and FIFOs are skipped: a sandbox's `/dev`
//! is a fresh tmpfs and its device access is denied by the bundle anyway.

use flate2::read::GzDecoder;
use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use tar::{Archive, EntryType};

/// The archive `reader`, gunzipped if it is gzip, ready to unpack.
fn archive<'a>(reader: impl Read + 'a) -> io::Result<Archive<Box<dyn Read + 'a>>> {
    let mut reader = BufReader::new(reader);
    let gzip = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read + 'a> = if gzip {
        Box::new(GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut archive = Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_overwrite(true);
    Ok(archive)
}

/// What a snapshot's files may still add up to, bytes, as its entries
/// unpack.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    left: u64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Budget {
        Budget { limit, left: limit }
    }

    /// Takes the entry's size from the budget; refused past it.
    fn take(&mut self, entry: &tar::Entry<'_, impl Read>) -> io::Result<()> {
        let size = entry.header().size().unwrap_or(u64::MAX);
        self.left = self.left.checked_sub(size).ok_or_else(|| {
            bad(format!(
                "the root filesystem passes the most a snapshot may hold unpacked ({} bytes)",
                self.limit
            ))
        })?;
        Ok(())
    }
}

/// Unpacks the archive `reader` into `root` (an empty directory), within
/// `budget`.
pub fn unpack(reader: impl Read, root: &Path, budget: &mut Budget) -> io::Result<()> {
    let mut archive = archive(reader)?;
    let mut entries = 0usize;
    for entry in archive.entries()? {
        let mut entry = entry.map_err(|e| bad(format!("reading the archive: {e}")))?;
        budget.take(&entry)?;
        let kind = entry.header().entry_type();
        if skipped(kind) {
            continue;
        }
        let path = entry.path()?.display().to_string();
        unpack_inside(&mut entry, root, &path)?;
        entries += 1;
    }
    if entries == 0 {
        return Err(bad("the archive has no entries".into()));
    }
    has_shell(root)
}

/// Whether entries of `kind` are left out: device nodes and FIFOs (a
/// sandbox's `/dev` is a fresh tmpfs, and its device access is denied).
fn skipped(kind: EntryType) -> bool {
    matches!(kind, EntryType::Char | EntryType::Block | EntryType::Fifo)
}

/// Unpacks `entry` (named `path`) inside `root` (the `tar` crate's
/// checks); refused if it would land outside.
fn unpack_inside(
    entry: &mut tar::Entry<'_, impl Read>,
    root: &Path,
    path: &impl std::fmt::Debug,
) -> io::Result<()> {
    let unpacked = entry
        .unpack_in(root)
        .map_err(|e| bad(format!("entry {path:?}: {e}")))?;
    if !unpacked {
        return Err(bad(format!(
            "entry {path:?} points outside the root filesystem"
        )));
    }
    Ok(())
}

/// Refused unless `root` has a `/bin/sh` (a link to one counts), which
/// every exec runs through.
pub fn has_shell(root: &Path) -> io::Result<()> {
    if root.join("bin/sh").symlink_metadata().is_err() {
        return Err(bad(
            "the root filesystem has no /bin/sh, which every exec runs through".into(),
        ));
    }
    Ok(())
}

/// The prefix of a whiteout's name (`.wh.NAME` hides `NAME` of the layers
/// below).
const WHITEOUT: &str = ".wh.";
/// The name of an opaque directory's marker: the directory hides what the
/// layers below had in it.
const OPAQUE: &str = ".wh..wh..opq";

/// Applies the OCI image layer `reader` (a tar archive, plain or gzip)
/// over `root`, which holds the layers below it: each entry is unpacked
/// as [`unpack`] does (inside `root`, devices and FIFOs skipped), an entry
/// of another kind than what is there replaces it, `.wh.NAME` removes
/// `NAME` of the layers below, and a directory with `.wh..wh..opq` keeps
/// only what this layer put in it. Every path is resolved inside `root`
/// (a link laid by a lower layer leads nowhere outside it). Returns the
/// number of entries.
pub fn apply_layer(reader: impl Read, root: &Path, budget: &mut Budget) -> io::Result<usize> {
    let root_dir = std::fs::File::open(root)?;
    let mut archive = archive(reader)?;
    // What this layer put, with every directory above it: what an opaque
    // directory keeps, and what a whiteout of this layer never removes.
    let mut written: HashSet<PathBuf> = HashSet::new();
    let mut whiteouts = Vec::new();
    let mut opaque = Vec::new();
    let mut entries = 0usize;
    for entry in archive.entries()? {
        let mut entry = entry.map_err(|e| bad(format!("reading a layer: {e}")))?;
        budget.take(&entry)?;
        let path = relative(&entry.path()?)?;
        entries += 1;
        let (parent, name) = match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => (parent.to_path_buf(), name.to_string_lossy()),
            // The root itself: nothing to unpack over it.
            _ => continue,
        };
        if name == OPAQUE {
            opaque.push(parent);
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(bad(format!("entry {path:?} is no whiteout")));
            }
            whiteouts.push(parent.join(hidden));
            continue;
        }
        let kind = entry.header().entry_type();
        if skipped(kind) {
            continue;
        }
        // A directory over a directory merges; anything else replaces
        // what is there.
        if let Some(there) = Within::new(&root_dir, &parent)? {
            if let Some(meta) = there.metadata(&name)? {
                if !(meta.is_dir() && kind == EntryType::Directory) {
                    there.remove(&name)?;
                }
            }
        }
        unpack_inside(&mut entry, root, &path)?;
        written.extend(path.ancestors().map(Path::to_path_buf));
    }
    for hidden in whiteouts {
        if written.contains(&hidden) {
            continue;
        }
        let (Some(parent), Some(name)) = (hidden.parent(), hidden.file_name()) else {
            continue;
        };
        if let Some(there) = Within::new(&root_dir, parent)? {
            there.remove(&name.to_string_lossy())?;
        }
    }
    for dir in opaque {
        let Some(there) = Within::new(&root_dir, &dir)? else {
            continue;
        };
        for child in there.children()? {
            if !written.contains(&dir.join(&child)) {
                there.remove(&child)?;
            }
        }
    }
    Ok(entries)
}

/// An entry's path made relative to the root (`./` and `/` dropped);
/// refused if it climbs (`..`).
fn relative(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(bad(format!(
                    "entry {path:?} climbs out of the root filesystem"
                )))
            }
        }
    }
    Ok(out)
}

/// A directory of a root filesystem, opened with every link on the way
/// resolved inside the root, so that what is done in it by name stays in
/// the root whatever links lower layers laid.
struct Within {
    dir: rustix::fd::OwnedFd,
}

impl Within {
    /// Directory `rel` of the root `root_dir`; `None` if there is none.
    fn new(root_dir: &std::fs::File, rel: &Path) -> io::Result<Option<Within>> {
        use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        match openat2(
            root_dir,
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
        ) {
            Ok(dir) => Ok(Some(Within { dir })),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(None),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// `name` in this directory, reached through the directory's open
    /// file (never a path walked again from the root).
    fn path(&self, name: &str) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd())).join(name)
    }

    /// What `name` is (a link is not followed); `None` if nothing.
    fn metadata(&self, name: &str) -> io::Result<Option<std::fs::Metadata>> {
        match std::fs::symlink_metadata(self.path(name)) {
            Ok(meta) => Ok(Some(meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes `name`, a directory with everything in it; nothing if there
    /// is none.
    fn remove(&self, name: &str) -> io::Result<()> {
        let removed = match self.metadata(name)? {
            None => return Ok(()),
            Some(meta) if meta.is_dir() => std::fs::remove_dir_all(self.path(name)),
            Some(_) => std::fs::remove_file(self.path(name)),
        };
        match removed {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The names in this directory.
    fn children(&self) -> io::Result<Vec<String>> {
        std::fs::read_dir(self.path("."))?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect()
    }
}

fn bad(what: String) -> io::Error {
    crate::RuntimeError::Archive(what).into()
}
