//! Named network namespaces, as `ip netns` makes them: a namespace kept
//! alive by a bind mount of its handle on `/run/netns/NAME`, so that it
//! outlives the process that made it (a sandbox keeps its network, and its
//! enforcement, across a restart of the daemon) and so that an OCI runtime
//! can join it by path.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// Where named namespaces live.
pub const NETNS_DIR: &str = "/run/netns";

/// A named network namespace.
#[derive(Debug)]
pub struct Netns {
    name: String,
    file: File,
}

fn errno(context: &str, e: nix::Error) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{context}: {e}"))
}

/// Makes `/run/netns` a shared mount point, as iproute2 does, so that
/// namespace handles mounted under it propagate to mount namespaces created
/// later (those of the sandboxes' runtimes among them).
fn prepare_dir() -> io::Result<()> {
    fs::create_dir_all(NETNS_DIR)?;
    let none: Option<&str> = None;
    let shared = |flags| mount(none, NETNS_DIR, none, flags, none);
    if shared(MsFlags::MS_SHARED | MsFlags::MS_REC).is_ok() {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself first.
    mount(
        Some(NETNS_DIR),
        NETNS_DIR,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(|e| errno("bind-mounting /run/netns", e))?;
    shared(MsFlags::MS_SHARED | MsFlags::MS_REC).map_err(|e| errno("sharing /run/netns", e))
}

impl Netns {
    /// The path of the handle of namespace `name`.
    pub fn path_of(name: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(name)
    }

    /// Creates a new, empty network namespace named `name` (only `lo`, down).
    /// Fails if one of that name exists.
    pub fn create(name: &str) -> io::Result<Netns> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad namespace name {name:?}"),
            ));
        }
        prepare_dir()?;
        let path = Netns::path_of(name);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        // A thread of our own unshares its network namespace (the rest of
        // the process keeps the host's) and pins the new one on the file.
        let pinned = std::thread::scope(|s| {
            s.spawn(|| -> io::Result<()> {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|e| errno("unshare", e))?;
                let none: Option<&str> = None;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    none,
                    MsFlags::MS_BIND,
                    none,
                )
                .map_err(|e| errno("pinning the namespace", e))
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
        });
        if let Err(e) = pinned {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Netns::open(name)
    }

    /// Opens the existing namespace `name`.
    pub fn open(name: &str) -> io::Result<Netns> {
        let file = File::open(Netns::path_of(name))?;
        Ok(Netns {
            name: name.to_string(),
            file,
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path of its handle, for `ip netns exec` and OCI runtimes.
    pub fn path(&self) -> PathBuf {
        Netns::path_of(&self.name)
    }

    /// A descriptor of the namespace (for `IFLA_NET_NS_FD`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `f` on a thread that has entered this namespace, and returns
    /// its result. Sockets that `f` opens belong to the namespace for their
    /// whole life, whichever thread uses them later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| errno(&format!("entering namespace {}", self.name), e))?;
                f()
            })
            .join()
            // A panic inside `f` is the caller's panic, message and all.
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Starts a thread that enters this namespace and runs `f`. Every
    /// socket the thread opens, for as long as it lives, belongs to the
    /// namespace, and so do the threads it starts: for servers whose
    /// workers open sockets of their own. `f` never runs if the thread
    /// cannot enter the namespace; the error is returned here.
    pub fn spawn(
        &self,
        name: &str,
        f: impl FnOnce() + Send + 'static,
    ) -> io::Result<std::thread::JoinHandle<()>> {
        let file = self.file.try_clone()?;
        let ns_name = self.name.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let entered = setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| errno(&format!("entering namespace {ns_name}"), e));
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    f();
                }
            })?;
        ready_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread vanished")))?;
        Ok(handle)
    }

    /// Removes the namespace's name. The namespace itself goes away with the
    /// last process or descriptor in it (its devices with it).
    pub fn delete(self) -> io::Result<()> {
        Netns::delete_name(&self.name)
    }

    /// Removes the namespace named `name`, if there is one.
    pub fn delete_name(name: &str) -> io::Result<()> {
        let path = Netns::path_of(name);
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(errno(&format!("unmounting {}", path.display()), e)),
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The names of the namespaces whose names start with `prefix`.
    pub fn list(prefix: &str) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(NETNS_DIR) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Writes a sysctl of the calling thread's network namespace, e.g.
/// `net/ipv4/ip_forward`. Call it inside [`Netns::run`] for another
/// namespace.
pub fn set_sysctl(key: &str, value: &str) -> io::Result<()> {
    let path = Path::new("/proc/sys").join(key);
    fs::write(&path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// A namespace that is deleted when dropped, also when a test panics: for
/// tests and tools that need a scratch namespace.
#[derive(Debug)]
pub struct TempNetns(Option<Netns>);

impl TempNetns {
    /// A new namespace named `<prefix>-<pid>`, replacing a leftover of
    /// that name.
    pub fn new(prefix: &str) -> io::Result<TempNetns> {
        let name = format!("{prefix}-{}", std::process::id());
        Netns::delete_name(&name)?;
        Ok(TempNetns(Some(Netns::create(&name)?)))
    }
}

impl std::ops::Deref for TempNetns {
    type Target = Netns;

    fn deref(&self) -> &Netns {
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl Drop for TempNetns {
    fn drop(&mut self) {
        if let Some(ns) = self.0.take() {
            let _ = ns.delete();
        }
    }
}
