//! One process per data directory: an exclusive `flock` on
//! `<dir>/sandgate.lock`, with the holder's pid in it. A second server on
//! the same directory would fight the first over its sandboxes, slots and
//! ruleset; it is refused at once, naming the holder. The kernel releases
//! the lock when its holder ends, a crash included, so a stale lock never
//! needs removing by hand.

use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The file locked in a data directory.
pub const LOCK_FILE: &str = "sandgate.lock";

/// A data directory held by this process (released when dropped).
#[derive(Debug)]
pub struct DirLock {
    _held: nix::fcntl::Flock<std::fs::File>,
}

impl DirLock {
    /// Takes `dir` (made if missing) for this process; another process
    /// holding it is a `ResourceBusy` error that names it.
    pub fn take(dir: &Path) -> io::Result<DirLock> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOCK_FILE);
        // Opened close-on-exec (as every file the standard library opens):
        // no child (runc, a sandbox's process) inherits the lock.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut held) => {
                held.set_len(0)?;
                held.rewind()?;
                writeln!(held, "{}", std::process::id())?;
                Ok(DirLock { _held: held })
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                // The holder's pid is only for the message.
                if file.read_to_string(&mut pid).is_err() {
                    pid.clear();
                }
                let holder = match pid.trim() {
                    "" => String::new(),
                    p => format!(" (process {p})"),
                };
                Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "another sandgate server{holder} is using the data directory {}: it holds {}; stop it, or give this server a data directory of its own",
                        dir.display(),
                        path.display()
                    ),
                ))
            }
            Err((_, e)) => Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("locking {}: {e}", path.display()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first_until_it_lets_go() {
        let dir = std::env::temp_dir().join(format!("sandgate-dirlock-{}", std::process::id()));
        let first = DirLock::take(&dir).unwrap_or_else(|e| panic!("{e}"));
        // Another open file description conflicts, in this process too.
        let e = DirLock::take(&dir).map(|_| ()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);
        let said = e.to_string();
        assert!(
            said.contains(&format!("(process {})", std::process::id())),
            "{said}"
        );
        drop(first);
        let again = DirLock::take(&dir);
        assert!(again.is_ok(), "{again:?}");
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    }
}
