//! Snapshot import: a root filesystem from a tar archive (what `docker
//! export` writes), plain or gzip-compressed.
//!
//! Unpacking is the `tar` crate's, which keeps every entry inside the
//! destination: `..` components and leading `/` are refused or stripped,
//! a hard link must point inside, and an entry that would be written
//! through a symbolic link leading outside is refused (the parent is
//! resolved and checked first). Ownership and modes are kept (the sandbox
//! is root inside). Device nodes and FIFOs are skipped: a sandbox's `/dev`
//! is a fresh tmpfs and its device access is denied by the bundle anyway.

use flate2::read::GzDecoder;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use tar::{Archive, EntryType};

/// Unpacks the archive `reader` into `root` (an empty directory).
pub fn unpack(reader: impl Read, root: &Path) -> io::Result<()> {
    let mut reader = BufReader::new(reader);
    let gzip = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzip {
        Box::new(GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut archive = Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_overwrite(true);
    let mut entries = 0usize;
    for entry in archive.entries()? {
        let mut entry = entry.map_err(|e| bad(format!("reading the archive: {e}")))?;
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::Char | EntryType::Block | EntryType::Fifo) {
            continue;
        }
        let path = entry.path()?.display().to_string();
        let unpacked = entry
            .unpack_in(root)
            .map_err(|e| bad(format!("entry {path:?}: {e}")))?;
        if !unpacked {
            return Err(bad(format!(
                "entry {path:?} points outside the root filesystem"
            )));
        }
        entries += 1;
    }
    if entries == 0 {
        return Err(bad("the archive has no entries".into()));
    }
    // Exec runs every command through /bin/sh.
    if root.join("bin/sh").symlink_metadata().is_err() {
        return Err(bad(
            "the archive has no /bin/sh, which every exec runs through".into(),
        ));
    }
    Ok(())
}

fn bad(what: String) -> io::Error {
    crate::RuntimeError::Archive(what).into()
}
