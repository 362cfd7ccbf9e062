//! sandgate's sandbox runtime.
//!
//! - **Snapshots**: a snapshot is a root filesystem with a name, under
//!   `<data>/snapshots/<name>/rootfs`. Built in: `busybox`, made from
//!   Debian's `busybox-static` (the binary and its applet links, `/etc`,
//!   `/tmp`) in well under a second.
//! - **Sandboxes**: each gets a copy-on-write overlay of its snapshot
//!   (`<data>/sandboxes/<id>/{upper,work,rootfs}`), a `resolv.conf` naming
//!   its gateway, and an OCI bundle ([`bundle`]) run by runc (path from
//!   configuration, so crun, youki or runsc can replace it) in the network
//!   namespace of its slot.
//! - **Exec**: a command through `/bin/sh -c`, with optional working
//!   directory, environment and timeout; on timeout the command's whole
//!   process group is killed.
//!
//! The runtime knows nothing of policies: the network namespace it is
//! given is the slot the dataplane made and enforces.

pub mod bundle;
pub mod exec;

pub use exec::{ExecRequest, ExecResult};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How the runtime runs.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Snapshots and sandboxes live here.
    pub data_dir: PathBuf,
    /// The OCI runtime program (`runc`).
    pub oci_runtime: PathBuf,
    /// The busybox binary the built-in snapshot is made from.
    pub busybox: PathBuf,
    /// The most processes in a sandbox (a fork bomb stops there).
    pub pids_limit: i64,
    /// The most memory of a sandbox, in bytes, where the host's cgroups
    /// allow a limit.
    pub memory_limit: Option<i64>,
    /// The most bytes of stdout and of stderr an exec returns.
    pub output_cap: usize,
}

impl RuntimeConfig {
    /// Defaults with data under `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        RuntimeConfig {
            data_dir,
            oci_runtime: PathBuf::from("runc"),
            busybox: PathBuf::from("/bin/busybox"),
            pids_limit: 512,
            memory_limit: None,
            output_cap: 1 << 20,
        }
    }
}

/// The runtime of one host.
#[derive(Debug, Clone)]
pub struct Runtime {
    cfg: RuntimeConfig,
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// Names of snapshots and sandboxes: letters, digits, `-`, `_`, `.`, not
/// starting with a dot, at most 64 bytes.
fn check_name(kind: &str, name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{kind} name {name:?}: use letters, digits, '-', '_' and '.', at most 64"
        )))
    }
}

/// The host pids of sandbox `id`'s processes, as the OCI runtime `runc`
/// lists them.
fn ps(mut runc: Command, id: &str) -> io::Result<Vec<i32>> {
    let program = runc.get_program().to_string_lossy().into_owned();
    let out = runc.args(["ps", "--format", "json", id]).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{program} ps {id}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(io::Error::other)
}

impl Runtime {
    /// A runtime with `cfg`.
    pub fn new(cfg: RuntimeConfig) -> io::Result<Runtime> {
        fs::create_dir_all(cfg.data_dir.join("snapshots"))?;
        fs::create_dir_all(cfg.data_dir.join("sandboxes"))?;
        fs::create_dir_all(cfg.data_dir.join("runc"))?;
        Ok(Runtime { cfg })
    }

    fn snapshot_dir(&self, name: &str) -> PathBuf {
        self.cfg.data_dir.join("snapshots").join(name)
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("sandboxes").join(id)
    }

    fn state_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("runc")
    }

    /// Makes (or remakes) the `busybox` snapshot: the static busybox, a
    /// link per applet, `/etc/hosts`, `/etc/passwd`, `/etc/group`, `/tmp`.
    pub fn build_busybox(&self, name: &str) -> io::Result<()> {
        check_name("snapshot", name)?;
        let dir = self.snapshot_dir(name);
        let staging = dir.with_extension("building");
        let _ = fs::remove_dir_all(&staging);
        let root = staging.join("rootfs");
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root", "var", "tmp",
        ] {
            fs::create_dir_all(root.join(d))?;
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
        fs::copy(&self.cfg.busybox, root.join("bin/busybox"))?;
        let out = Command::new(&self.cfg.busybox)
            .arg("--list-full")
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other("busybox --list-full failed"));
        }
        for applet in String::from_utf8_lossy(&out.stdout).lines() {
            let link = root.join(applet.trim_start_matches('/'));
            if link.exists() || !link.starts_with(&root) || applet.contains("..") {
                continue;
            }
            std::os::unix::fs::symlink("/bin/busybox", &link)?;
        }
        fs::write(
            root.join("etc/hosts"),
            "127.0.0.1 localhost\n::1 localhost\n",
        )?;
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )?;
        fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
        fs::write(root.join("etc/resolv.conf"), "")?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&staging, &dir)
    }

    /// The snapshots' names.
    pub fn snapshots(&self) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = fs::read_dir(self.cfg.data_dir.join("snapshots"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".building"))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes a snapshot; refused while a sandbox uses it.
    pub fn delete_snapshot(&self, name: &str) -> io::Result<()> {
        check_name("snapshot", name)?;
        for id in self.sandboxes()? {
            if fs::read_to_string(self.sandbox_dir(&id).join("snapshot"))?.trim() == name {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!("snapshot {name} is in use by sandbox {id}"),
                ));
            }
        }
        fs::remove_dir_all(self.snapshot_dir(name))
    }

    /// The sandboxes that have a directory here.
    pub fn sandboxes(&self) -> io::Result<Vec<String>> {
        let mut ids: Vec<String> = fs::read_dir(self.cfg.data_dir.join("sandboxes"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn runc(&self) -> Command {
        let mut c = Command::new(&self.cfg.oci_runtime);
        c.arg("--root").arg(self.state_dir());
        c
    }

    /// Creates and starts sandbox `id` from `snapshot` in the network
    /// namespace at `netns`, whose DNS resolver is `gateway`. Anything that
    /// fails undoes what was made.
    pub fn create(
        &self,
        id: &str,
        snapshot: &str,
        netns: &Path,
        gateway: IpAddr,
    ) -> io::Result<()> {
        check_name("sandbox", id)?;
        check_name("snapshot", snapshot)?;
        let lower = self.snapshot_dir(snapshot).join("rootfs");
        if !lower.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no snapshot {snapshot}"),
            ));
        }
        let dir = self.sandbox_dir(id);
        if dir.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("sandbox {id} exists"),
            ));
        }
        let made = self.make(id, snapshot, &lower, netns, gateway);
        if made.is_err() {
            let _ = self.delete(id);
        }
        made
    }

    fn make(
        &self,
        id: &str,
        snapshot: &str,
        lower: &Path,
        netns: &Path,
        gateway: IpAddr,
    ) -> io::Result<()> {
        let dir = self.sandbox_dir(id);
        let (upper, work, rootfs) = (dir.join("upper"), dir.join("work"), dir.join("rootfs"));
        for d in [&upper, &work, &rootfs] {
            fs::create_dir_all(d)?;
        }
        fs::write(dir.join("snapshot"), snapshot)?;
        let resolv = dir.join("resolv.conf");
        fs::write(&resolv, bundle::resolv_conf(gateway))?;
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| io::Error::other(format!("mounting the overlay of {id}: {e}")))?;
        let spec = bundle::BundleSpec {
            id,
            rootfs: &rootfs,
            netns,
            resolv_conf: &resolv,
            pids_limit: self.cfg.pids_limit,
            memory_limit: self.cfg.memory_limit,
            cpu_shares: None,
        };
        let config = serde_json::to_vec_pretty(&bundle::config(&spec)).map_err(io::Error::other)?;
        fs::write(dir.join("config.json"), config)?;
        // A detached container inherits the runtime's stdio, so its
        // stderr goes to a file (a pipe would never reach end of file); the
        // file is read on failure and unlinked either way.
        let log_path = dir.join("create.log");
        let log = fs::File::create(&log_path)?;
        let status = self
            .runc()
            .args(["run", "--detach", "--bundle"])
            .arg(&dir)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .status()?;
        let message = fs::read_to_string(&log_path).unwrap_or_default();
        let _ = fs::remove_file(&log_path);
        if !status.success() {
            return Err(io::Error::other(format!(
                "{} run {id}: {}",
                self.cfg.oci_runtime.display(),
                message.trim()
            )));
        }
        Ok(())
    }

    /// Whether sandbox `id` is running (its runtime says so).
    pub fn running(&self, id: &str) -> io::Result<bool> {
        let out = self.runc().arg("state").arg(id).output()?;
        if !out.status.success() {
            return Ok(false);
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(io::Error::other)?;
        Ok(v["status"] == "running")
    }

    /// The host pids of the processes of sandbox `id` (its cgroup's).
    pub fn processes(&self, id: &str) -> io::Result<Vec<i32>> {
        check_name("sandbox", id)?;
        ps(self.runc(), id)
    }

    /// Stops and removes sandbox `id`: its processes, the runtime's state,
    /// the overlay mount and the directory. Tolerates what is missing.
    pub fn delete(&self, id: &str) -> io::Result<()> {
        check_name("sandbox", id)?;
        let _ = self
            .runc()
            .args(["delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let dir = self.sandbox_dir(id);
        match umount2(&dir.join("rootfs"), MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => {
                return Err(io::Error::other(format!(
                    "unmounting the overlay of {id}: {e}"
                )))
            }
        }
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Runs a command in sandbox `id` (see [`exec`]).
    pub fn exec(&self, id: &str, request: &ExecRequest) -> io::Result<ExecResult> {
        check_name("sandbox", id)?;
        exec::run(
            &|| self.runc(),
            id,
            request,
            self.cfg.output_cap,
            &self.sandbox_dir(id),
        )
    }
}
