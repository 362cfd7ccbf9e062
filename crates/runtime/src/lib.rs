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
//! - **Lifecycle**: create, stop, start, delete; each sandbox's state is
//!   kept in `<data>/sandboxes/<id>/sandbox.json`, and [`Runtime::adopt`]
//!   takes the sandboxes back after a restart of the process that drives
//!   the runtime.
//!
//! The runtime knows nothing of policies: the network namespace it is
//! given is the slot the dataplane made and enforces.

pub mod bundle;
mod disk;
pub mod error;
pub mod exec;
pub mod import;
pub mod inits;
pub mod limits;
mod mountns;
mod procfs;
pub mod seccomp;

pub use error::RuntimeError;
pub use exec::{ExecRequest, ExecResult};
pub use inits::InitWatch;
pub use limits::{Limit, Limits};
pub use sandgate_contract::RuntimeClass;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The runtime's results.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// How the runtime runs.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Snapshots and sandboxes live here.
    pub data_dir: PathBuf,
    /// The OCI runtime program of the `runc` class (`runc`).
    pub oci_runtime: PathBuf,
    /// The OCI runtime program of the `runsc` class (gVisor's `runsc`):
    /// the host can run that class when it answers `--version` and runs a
    /// sandbox (checked when the runtime starts).
    pub runsc: PathBuf,
    /// The static busybox the built-in snapshot is made from, and every
    /// sandbox's init (bound read-only, so that any root filesystem with a
    /// `/bin/sh` can run).
    pub busybox: PathBuf,
    /// The most processes in a sandbox (a fork bomb stops there).
    pub pids_limit: i64,
    /// The most memory of a sandbox, in bytes, where the host's cgroups
    /// allow a limit.
    pub memory_limit: Option<i64>,
    /// The most CPU time of a sandbox, in cores, where the host's cgroups
    /// allow a limit.
    pub cpu_limit: Option<f64>,
    /// The most a sandbox may write over its snapshot, bytes: a disk of
    /// its own (a sparse image file, formatted ext4, mounted by loop), so
    /// that a full disk is full for that sandbox only. `None`: its writes
    /// go to the data directory's file system, unbounded.
    pub disk_limit: Option<u64>,
    /// The most bytes of stdout and of stderr an exec returns.
    pub output_cap: usize,
    /// The most a snapshot's files may add up to as unpacked (every
    /// entry of an archive, or of all an image's layers): a compressed
    /// archive that would fill the data directory is refused as it
    /// unpacks.
    pub snapshot_max_bytes: u64,
    /// A CA certificate (PEM) every sandbox made from now on trusts, beside
    /// its snapshot's: the name-checking gateway's, for the TLS it
    /// terminates (see [`bundle::TRUST_ENV`]).
    pub trusted_ca: Option<String>,
}

impl RuntimeConfig {
    /// Defaults with data under `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        RuntimeConfig {
            data_dir,
            oci_runtime: PathBuf::from("runc"),
            runsc: PathBuf::from("runsc"),
            busybox: PathBuf::from("/bin/busybox"),
            pids_limit: 512,
            memory_limit: None,
            cpu_limit: None,
            disk_limit: None,
            output_cap: 1 << 20,
            snapshot_max_bytes: 32 << 30,
            trusted_ca: None,
        }
    }
}

/// The runtime of one host.
#[derive(Debug, Clone)]
pub struct Runtime {
    cfg: RuntimeConfig,
    limits: Limits,
    controllers: limits::Controllers,
    /// The mount namespace the OCI runtime runs in ([`mountns`]).
    clean: mountns::CleanNs,
    /// Whether the host can run the `runsc` class, and why not.
    runsc: std::result::Result<(), String>,
}

/// What one sandbox gets, over the runtime's defaults
/// ([`RuntimeConfig::memory_limit`], `cpu_limit`, `disk_limit`).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    /// Memory, bytes (swap included): over it, a process of the sandbox is
    /// killed, in it alone.
    pub memory: Option<i64>,
    /// CPU time, cores.
    pub cpu: Option<f64>,
    /// What it may write over its snapshot, bytes (see
    /// [`RuntimeConfig::disk_limit`]).
    pub disk: Option<u64>,
    /// The OCI runtime it runs under.
    #[serde(default)]
    pub class: RuntimeClass,
}

/// Where a sandbox is in its life, as kept on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Being made: a sandbox found in this state after a restart was cut
    /// short and is removed.
    Creating,
    /// Its processes run.
    Running,
    /// Stopped: no process, no mount; its files are kept and it can start
    /// again.
    Stopped,
}

/// What the runtime keeps of a sandbox.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SandboxInfo {
    /// Its snapshot.
    pub snapshot: String,
    /// Its state.
    pub state: State,
    /// It stopped without being asked to: its init died.
    #[serde(default)]
    pub died: bool,
    /// What it was given.
    #[serde(default)]
    pub resources: Resources,
}

/// What [`Runtime::adopt`] found of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// Running, as it was left: managed again.
    Running,
    /// Stopped, as it was left.
    Stopped,
    /// Its init died (found dead now, or marked so before): its runtime
    /// state and mounts are cleaned, it is marked stopped and `died`, its
    /// files stay, and it can be started (by its owner's choice only).
    Died,
    /// Its creation was cut short: everything of it is removed.
    Removed,
}

/// Whether `name` may name a snapshot or a sandbox: letters, digits, `-`,
/// `_`, `.`, not starting with a dot, at most 64 bytes (so it is one safe
/// path component, and a valid runc container id).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks a name (see [`is_valid_name`]).
/// The suffix of a snapshot being built.
const STAGING: &str = ".building";

fn check_name(kind: &'static str, name: &str) -> Result<()> {
    if is_valid_name(name) && !(kind == "snapshot" && name.ends_with(STAGING)) {
        Ok(())
    } else {
        Err(RuntimeError::InvalidName {
            kind,
            name: name.to_string(),
        })
    }
}

/// The `cgroup.procs` file of the cgroup of host process `pid`: under
/// the `pids` controller's hierarchy on cgroup v1, the unified one on v2.
fn procs_file(pid: i32) -> Option<PathBuf> {
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let file = cgroups.lines().find_map(|line| {
        let (_, rest) = line.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        let path = path.trim_start_matches('/');
        match (unified, controllers) {
            (true, "") => Some(Path::new("/sys/fs/cgroup").join(path)),
            (false, c) if c.split(',').any(|c| c == "pids") => {
                Some(Path::new("/sys/fs/cgroup/pids").join(path))
            }
            _ => None,
        }
    })?;
    let file = file.join("cgroup.procs");
    file.exists().then_some(file)
}

/// Whether gVisor's `program` works on this host: it answers `--version`,
/// then runs `/bin/true` in a sandbox of its own with no network (`runsc
/// do`, about 0.25 s: the platform, the sentry and the gofer start, as a
/// sandbox's would), in the OCI runtime's namespace with its state in
/// `root`; why not, if not.
/// How long the start's runsc probe may take.
const RUNSC_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn runsc_runs(
    clean: &mountns::CleanNs,
    program: &Path,
    root: &Path,
) -> std::result::Result<(), String> {
    let said = |what: &str, out: &std::process::Output| {
        format!(
            "{} {what} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    };
    let version = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    if !version.status.success() {
        return Err(said("--version", &version));
    }
    let mut probe = Command::new(program);
    probe
        .arg("--root")
        .arg(root)
        .args(["--network=none", "do", "/bin/true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let failed = |e: io::Error| format!("{}: {e}", program.display());
    let mut child = clean.spawn(&mut probe).map_err(failed)?;
    // It takes about 0.25 s; one that hangs must not hold the runtime's
    // start.
    let deadline = std::time::Instant::now() + RUNSC_PROBE_TIMEOUT;
    while child.try_wait().map_err(failed)?.is_none() {
        if std::time::Instant::now() > deadline {
            if let Err(e) = child.kill() {
                tracing::warn!(error = %e, "killing the runsc probe");
            }
            child.wait().map_err(failed)?;
            return Err(format!(
                "{} do /bin/true did not end within {} s",
                program.display(),
                RUNSC_PROBE_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ran = child.wait_with_output().map_err(failed)?;
    if let Err(e) = fs::remove_dir_all(root) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::debug!(root = %root.display(), error = %e, "removing the runsc probe's state");
        }
    }
    if !ran.status.success() {
        return Err(said("do /bin/true (a sandbox with no network)", &ran));
    }
    Ok(())
}

/// Whether `dir` is a mount point (its device differs from its parent's).
pub(crate) fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(dir), dir.parent().map(fs::metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
}

/// Writes `bytes` to `path` through a file renamed over it, so a crash of
/// the process leaves the old or the new content, never a torn one. Not
/// synced to disk: after a power loss every sandbox is gone anyway, and an
/// unreadable record is taken as a creation cut short ([`Runtime::adopt`]).
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

impl Runtime {
    /// A runtime with `cfg`. Fails if the host cannot limit a sandbox's
    /// processes (see [`limits`]).
    pub fn new(mut cfg: RuntimeConfig) -> Result<Runtime> {
        let controllers = limits::Controllers::detect()?;
        let limits = controllers.limits(cfg.pids_limit, cfg.memory_limit, cfg.cpu_limit)?;
        // Only root may enter: the sandboxes' files (and what root inside
        // made of them) are below.
        fs::create_dir_all(&cfg.data_dir)?;
        fs::set_permissions(
            &cfg.data_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        fs::create_dir_all(cfg.data_dir.join("snapshots"))?;
        fs::create_dir_all(cfg.data_dir.join("sandboxes"))?;
        for class in RuntimeClass::ALL {
            fs::create_dir_all(cfg.data_dir.join(class.as_str()))?;
        }
        // runc starts from a thread that entered its own mount namespace,
        // whose working directory is that namespace's root: every path it
        // is given is absolute (a program named without a slash is looked
        // up in `PATH`).
        cfg.data_dir = fs::canonicalize(&cfg.data_dir)?;
        if cfg.oci_runtime.components().count() > 1 {
            cfg.oci_runtime = fs::canonicalize(&cfg.oci_runtime)?;
        }
        // runsc is optional: a path that names nothing leaves the class
        // unusable, said by `classes`.
        if cfg.runsc.components().count() > 1 {
            if let Ok(path) = fs::canonicalize(&cfg.runsc) {
                cfg.runsc = path;
            }
        }
        let clean =
            mountns::CleanNs::make(&cfg.data_dir).map_err(|cause| RuntimeError::Program {
                what: "making the OCI runtime's mount namespace".into(),
                said: cause.to_string(),
            })?;
        let runsc = runsc_runs(&clean, &cfg.runsc, &cfg.data_dir.join("runsc-probe"));
        if let Err(why) = &runsc {
            tracing::info!(program = %cfg.runsc.display(), %why, "the runsc runtime class is not available on this host");
        }
        Ok(Runtime {
            cfg,
            limits,
            controllers,
            clean,
            runsc,
        })
    }

    /// The runtime classes this host can run.
    pub fn classes(&self) -> Vec<RuntimeClass> {
        RuntimeClass::ALL
            .into_iter()
            .filter(|c| self.usable(*c).is_ok())
            .collect()
    }

    /// Whether this host can run sandboxes of `class`
    /// ([`RuntimeError::ClassUnavailable`] says why not).
    pub fn usable(&self, class: RuntimeClass) -> Result<()> {
        match (class, &self.runsc) {
            (RuntimeClass::Runc, _) | (RuntimeClass::Runsc, Ok(())) => Ok(()),
            (RuntimeClass::Runsc, Err(why)) => Err(RuntimeError::ClassUnavailable {
                class,
                why: why.clone(),
            }),
        }
    }

    /// The limits each sandbox gets, and which of them the host enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn snapshot_dir(&self, name: &str) -> PathBuf {
        self.cfg.data_dir.join("snapshots").join(name)
    }

    /// Where snapshot `name` is built before it takes its place: its name
    /// and `.building` (no snapshot's name ends so: [`check_name`]).
    fn snapshot_staging(&self, name: &str) -> PathBuf {
        self.cfg
            .data_dir
            .join("snapshots")
            .join(format!("{name}{STAGING}"))
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("sandboxes").join(id)
    }

    /// Where disks are prepared ahead of the creates that take them.
    fn disk_pool(&self) -> PathBuf {
        self.cfg.data_dir.join("disks")
    }

    /// Prepares one disk of `bytes` for a create to take (off the
    /// request's path: formatting and mounting cost about 20 ms).
    pub fn prepare_disk(&self, bytes: u64) -> Result<()> {
        Ok(disk::prepare(&self.disk_pool(), bytes)?)
    }

    /// How many disks of `bytes` are prepared.
    pub fn ready_disks(&self, bytes: u64) -> usize {
        disk::ready(&self.disk_pool(), bytes)
    }

    /// Unmounts and removes every prepared disk.
    pub fn clear_disks(&self) -> Result<()> {
        Ok(disk::clear(&self.disk_pool())?)
    }

    /// Makes (or remakes) the `busybox` snapshot: the static busybox, a
    /// link per applet, `/etc/hosts`, `/etc/passwd`, `/etc/group`, `/tmp`.
    pub fn build_busybox(&self, name: &str) -> Result<()> {
        check_name("snapshot", name)?;
        let staging = self.snapshot_staging(name);
        remove_staging(&staging);
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
            return Err(RuntimeError::Program {
                what: "busybox --list-full".into(),
                said: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
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
        self.replace_snapshot(name, &staging)
    }

    /// Imports a snapshot from a root filesystem tar archive (plain or
    /// gzip; see [`import`]). An existing snapshot of that name is
    /// replaced only once the new one is complete; on error nothing
    /// changes.
    pub fn import_snapshot(&self, name: &str, archive: impl io::Read) -> Result<()> {
        check_name("snapshot", name)?;
        let staging = self.snapshot_staging(name);
        remove_staging(&staging);
        fs::create_dir_all(staging.join("rootfs"))?;
        let mut budget = import::Budget::new(self.cfg.snapshot_max_bytes);
        if let Err(e) = import::unpack(archive, &staging.join("rootfs"), &mut budget) {
            remove_staging(&staging);
            return Err(e.into());
        }
        self.replace_snapshot(name, &staging)
    }

    /// Makes snapshot `name` from an OCI image's layers, lowest first
    /// (each a tar archive, plain or gzip; see [`import::apply_layer`]).
    /// As with [`Runtime::import_snapshot`], an existing snapshot of that
    /// name is replaced only once the new one is complete, and on error
    /// nothing changes.
    pub fn import_layers<R: io::Read>(
        &self,
        name: &str,
        layers: impl IntoIterator<Item = R>,
    ) -> Result<()> {
        check_name("snapshot", name)?;
        let staging = self.snapshot_staging(name);
        remove_staging(&staging);
        let root = staging.join("rootfs");
        fs::create_dir_all(&root)?;
        let mut budget = import::Budget::new(self.cfg.snapshot_max_bytes);
        let applied = layers
            .into_iter()
            .enumerate()
            .try_for_each(|(i, layer)| {
                import::apply_layer(layer, &root, &mut budget)
                    .map(|_| ())
                    .map_err(|e| match RuntimeError::from(e) {
                        RuntimeError::Archive(what) => {
                            RuntimeError::Archive(format!("layer {}: {what}", i + 1))
                        }
                        other => other,
                    })
            })
            .and_then(|()| Ok(import::has_shell(&root)?));
        if let Err(e) = applied {
            remove_staging(&staging);
            return Err(e);
        }
        self.replace_snapshot(name, &staging)
    }

    /// Puts the complete snapshot at `staging` in place of snapshot
    /// `name`, refused while a sandbox uses the old one (its overlay's
    /// lower directory must not change under it).
    fn replace_snapshot(&self, name: &str, staging: &Path) -> Result<()> {
        let dir = self.snapshot_dir(name);
        if dir.exists() {
            if let Err(e) = self.delete_snapshot(name) {
                remove_staging(staging);
                return Err(e);
            }
        }
        Ok(fs::rename(staging, &dir)?)
    }

    /// The snapshots' names.
    pub fn snapshots(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = fs::read_dir(self.cfg.data_dir.join("snapshots"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".building"))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes a snapshot; refused while a sandbox uses it.
    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        check_name("snapshot", name)?;
        for id in self.sandboxes()? {
            if self.info(&id).is_ok_and(|i| i.snapshot == name) {
                return Err(RuntimeError::Busy(format!(
                    "snapshot {name} is in use by sandbox {id}"
                )));
            }
        }
        Ok(fs::remove_dir_all(self.snapshot_dir(name))?)
    }

    /// The sandboxes that have a directory here.
    pub fn sandboxes(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = fs::read_dir(self.cfg.data_dir.join("sandboxes"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The OCI runtime program of `class`.
    fn program(&self, class: RuntimeClass) -> &Path {
        match class {
            RuntimeClass::Runc => &self.cfg.oci_runtime,
            RuntimeClass::Runsc => &self.cfg.runsc,
        }
    }

    /// The OCI runtime of `class`, with where it keeps its state (a
    /// directory per class); started through [`mountns::CleanNs`], never
    /// from the host's mount namespace. runsc uses the network of the
    /// namespace it joins, the slot's (`--network=host`: gVisor's own
    /// network stack would stand between the sandbox and the slot, and
    /// this runsc refuses to start it on this kernel; docs/RUNTIME.md).
    fn runc(&self, class: RuntimeClass) -> Command {
        let mut c = Command::new(self.program(class));
        c.arg("--root").arg(self.cfg.data_dir.join(class.as_str()));
        if class == RuntimeClass::Runsc {
            c.arg("--network=host");
        }
        c
    }

    /// The class of sandbox `id` as recorded; for a sandbox whose record
    /// cannot be read, the class whose runtime holds a sandbox of that id
    /// (runc if none: the record is written before any runtime is asked
    /// to run it), so that a torn record never leaves one running.
    fn class_of(&self, id: &str) -> RuntimeClass {
        if let Ok(info) = self.info(id) {
            return info.resources.class;
        }
        let held = |class: RuntimeClass| {
            let mut runtime = self.runc(class);
            runtime.args(["state", id]);
            self.clean
                .output(&mut runtime)
                .is_ok_and(|out| out.status.success())
        };
        RuntimeClass::ALL
            .into_iter()
            .find(|&class| class != RuntimeClass::Runc && self.usable(class).is_ok() && held(class))
            .unwrap_or_default()
    }

    /// The output of sandbox `id`'s OCI runtime run with `args`, in its
    /// namespace.
    fn oci_output(&self, id: &str, args: &[&str]) -> io::Result<std::process::Output> {
        let mut runc = self.runc(self.class_of(id));
        runc.args(args);
        self.clean.output(&mut runc)
    }

    /// Creates and starts sandbox `id` from `snapshot` in the network
    /// namespace at `netns`, whose DNS resolver is `gateway`, with
    /// `resources` (over the runtime's defaults). Anything that fails
    /// undoes what was made.
    pub fn create(
        &self,
        id: &str,
        snapshot: &str,
        netns: &Path,
        gateway: IpAddr,
        resources: &Resources,
    ) -> Result<()> {
        check_name("sandbox", id)?;
        check_name("snapshot", snapshot)?;
        self.usable(resources.class)?;
        if !self.snapshot_dir(snapshot).join("rootfs").is_dir() {
            return Err(RuntimeError::NoSnapshot(snapshot.to_string()));
        }
        // Making the directory claims the id.
        match fs::create_dir(self.sandbox_dir(id)) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::Exists(id.to_string()))
            }
            other => other?,
        }
        let made = self.make(id, snapshot, netns, gateway, resources);
        if made.is_err() {
            if let Err(e) = self.delete(id) {
                tracing::warn!(sandbox = %id, error = %e, "removing a half-made sandbox; the next start removes what is left");
            }
        }
        made
    }

    /// Writes the record of sandbox `id`.
    fn record(&self, id: &str, info: &SandboxInfo) -> Result<()> {
        let bytes = serde_json::to_vec(info)
            .map_err(|e| RuntimeError::record(format!("the record of sandbox {id}"), e))?;
        Ok(write_atomic(
            &self.sandbox_dir(id).join("sandbox.json"),
            &bytes,
        )?)
    }

    /// What the runtime keeps of sandbox `id`: `NotFound` if it has none.
    pub fn info(&self, id: &str) -> Result<SandboxInfo> {
        check_name("sandbox", id)?;
        let bytes = fs::read(self.sandbox_dir(id).join("sandbox.json"))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| RuntimeError::record(format!("the record of sandbox {id}"), e))
    }

    fn make(
        &self,
        id: &str,
        snapshot: &str,
        netns: &Path,
        gateway: IpAddr,
        asked: &Resources,
    ) -> Result<()> {
        let dir = self.sandbox_dir(id);
        fs::create_dir_all(dir.join("rootfs"))?;
        // What the host can enforce: a limit it cannot is reported by
        // `limits()`, and never applied as if it held.
        let resources = Resources {
            memory: asked
                .memory
                .or(self.cfg.memory_limit)
                .filter(|_| self.controllers.memory),
            cpu: asked
                .cpu
                .or(self.cfg.cpu_limit)
                .filter(|_| self.controllers.cpu),
            disk: asked.disk.or(self.cfg.disk_limit),
            class: asked.class,
        };
        let mut info = SandboxInfo {
            snapshot: snapshot.to_string(),
            state: State::Creating,
            died: false,
            resources,
        };
        self.record(id, &info)?;
        match resources.disk {
            Some(bytes) => disk::give(&self.disk_pool(), &dir, bytes)?,
            None => {
                for d in ["upper", "work"] {
                    fs::create_dir_all(dir.join(d))?;
                }
            }
        }
        let resolv = dir.join("resolv.conf");
        fs::write(&resolv, bundle::resolv_conf(gateway))?;
        let (trust_bundle, trusted_ca) = (dir.join(TRUST_BUNDLE), dir.join(TRUSTED_CA));
        let trust = match &self.cfg.trusted_ca {
            Some(ca) => {
                let mut all = snapshot_bundle(&self.snapshot_dir(snapshot).join("rootfs"));
                // Without a bundle of its own, the variables naming the
                // system bundle are not set (they would make every
                // client trust the gateway's CA alone).
                let own = !all.is_empty();
                if own && !all.ends_with(b"\n") {
                    all.push(b'\n');
                }
                all.extend_from_slice(ca.as_bytes());
                fs::write(&trust_bundle, all)?;
                fs::write(&trusted_ca, ca)?;
                if own {
                    fs::write(dir.join(OWN_BUNDLE), b"")?;
                }
                Some((trust_bundle.as_path(), trusted_ca.as_path()))
            }
            None => None,
        };
        let rootfs = dir.join("rootfs");
        let spec = bundle::BundleSpec {
            id,
            rootfs: &rootfs,
            netns,
            resolv_conf: &resolv,
            init: &self.cfg.busybox,
            pids_limit: self.limits.pids,
            memory_limit: resources.memory,
            cpu: resources.cpu,
            trust,
            system_bundle: dir.join(OWN_BUNDLE).exists(),
            class: resources.class,
        };
        let config = serde_json::to_vec_pretty(&bundle::config(&spec))
            .map_err(|e| RuntimeError::record(format!("the OCI bundle of {id}"), e))?;
        fs::write(dir.join("config.json"), config)?;
        self.run(id, snapshot)?;
        info.state = State::Running;
        self.record(id, &info)
    }

    /// Mounts the overlay of sandbox `id` on `snapshot` (if it is not) and
    /// runs its bundle, detached.
    fn run(&self, id: &str, snapshot: &str) -> Result<()> {
        let dir = self.sandbox_dir(id);
        let rootfs = dir.join("rootfs");
        if !is_mount_point(&rootfs) {
            // With a disk of its own, the writable layer is on it.
            let layers = if disk::has(&dir) {
                disk::mount(&dir)?
            } else {
                dir.clone()
            };
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                self.snapshot_dir(snapshot).join("rootfs").display(),
                layers.join("upper").display(),
                layers.join("work").display()
            );
            mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                // Nothing the sandbox writes is ever setuid or a device
                // on the host side (root inside is root here too).
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(options.as_str()),
            )
            .map_err(|cause| RuntimeError::Mount {
                what: format!("mounting the overlay of {id}"),
                cause,
            })?;
        }
        // A detached container inherits the runtime's stdio: its stderr
        // is a pipe, read until the runtime exits and closed then (a file
        // would stay the container's after its removal, where whatever the
        // sandbox writes to its first process's stderr would take the
        // host's disk, past the sandbox's own).
        // The container's mount namespace is copied from one that holds
        // its own mounts and none of the others' ([`mountns`]).
        let config = fs::read(dir.join("config.json"))?;
        let config: serde_json::Value = serde_json::from_slice(&config)
            .map_err(|e| RuntimeError::record(format!("the OCI bundle of {id}"), e))?;
        let mut points = vec![rootfs.as_path()];
        // A pin is a mount of the host's namespace; a path under `/proc`
        // is seen from anywhere.
        points.extend(bundle::netns_of(&config).filter(|ns| !ns.starts_with("/proc")));
        let mut runc = self.runc(self.class_of(id));
        runc.args(["run", "--detach", "--pid-file"])
            .arg(dir.join("init.pid"))
            .arg("--bundle")
            .arg(&dir)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child =
            self.clean
                .spawn_with(&mut runc, &points)
                .map_err(|e| RuntimeError::Program {
                    what: format!("starting the OCI runtime for {id}"),
                    said: e.to_string(),
                })?;
        let (status, said) = procfs::stderr_until_exit(&mut child, RUN_SAID_MAX)?;
        if !status.success() {
            return Err(self.oci("run", id, &String::from_utf8_lossy(&said)));
        }
        // Where its processes are listed (see `ps`).
        let init = fs::read_to_string(dir.join("init.pid"))?;
        if let Some(file) = init.trim().parse().ok().and_then(procs_file) {
            fs::write(dir.join("procs"), file.as_os_str().as_encoded_bytes())?;
        }
        Ok(())
    }

    /// Kills sandbox `id`'s processes, removes its runtime state and
    /// unmounts its overlay; its files stay. Tolerates what is missing.
    fn halt(&self, id: &str) -> Result<()> {
        // `runc delete --force` of a running container sleeps 100 ms after
        // its SIGKILL before it first looks whether the init died. Killing
        // the init ourselves and waiting for its exit (milliseconds; the
        // kernel then kills the rest of its pid namespace) leaves runc a
        // stopped container, which it deletes at once. The init is held
        // by a pidfd and signalled only if, once held, it is still in the
        // sandbox's cgroup: a reused pid is never hit.
        if let Some(state) = self.runc_state(id)? {
            let pid = state["pid"].as_i64().and_then(|p| i32::try_from(p).ok());
            let held = pid
                .filter(|_| state["status"] == "running")
                .and_then(|pid| Some((pid, procfs::Held::open(pid)?)));
            if let Some((pid, init)) = held {
                if self.ps(id).is_ok_and(|procs| procs.contains(&pid)) {
                    init.kill();
                    init.wait_exit(std::time::Duration::from_secs(5));
                }
            }
        }
        let _ = fs::remove_file(self.sandbox_dir(id).join("procs"));
        let out = self.oci_output(id, &["delete", "--force", id])?;
        // A failure is fine only when there was nothing to delete.
        if !out.status.success() && self.runc_state(id)?.is_some() {
            return Err(self.oci("delete", id, &String::from_utf8_lossy(&out.stderr)));
        }
        match umount2(&self.sandbox_dir(id).join("rootfs"), MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => {
                return Err(RuntimeError::Mount {
                    what: format!("unmounting the overlay of {id}"),
                    cause: e,
                })
            }
        }
        Ok(disk::unmount(&self.sandbox_dir(id))?)
    }

    /// Stops sandbox `id`: its processes end, its files stay. Stopping a
    /// stopped sandbox does nothing.
    pub fn stop(&self, id: &str) -> Result<()> {
        let mut info = self.info(id)?;
        self.halt(id)?;
        info.state = State::Stopped;
        self.record(id, &info)
    }

    /// Starts stopped sandbox `id` again, with the files it had. Starting
    /// a running sandbox does nothing.
    pub fn start(&self, id: &str) -> Result<()> {
        let mut info = self.info(id)?;
        match info.state {
            State::Running if self.running(id)? => return Ok(()),
            State::Creating => {
                return Err(RuntimeError::Busy(format!("sandbox {id} is being created")))
            }
            _ => {}
        }
        self.halt(id)?;
        if let Err(e) = self.run(id, &info.snapshot) {
            if let Err(halt) = self.halt(id) {
                tracing::warn!(sandbox = %id, error = %halt, "stopping a sandbox that failed to start again");
            }
            return Err(e);
        }
        info.state = State::Running;
        info.died = false;
        self.record(id, &info)
    }

    /// The host pid of sandbox `id`'s init, if it runs: the one runc
    /// started, still in the sandbox's cgroup (so not a pid reused since).
    pub fn init_pid(&self, id: &str) -> Result<Option<i32>> {
        check_name("sandbox", id)?;
        // No file: never started, or stopped. A file that cannot be read
        // or holds no pid is an error, not a finding that nothing runs.
        let path = self.sandbox_dir(id).join("init.pid");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RuntimeError::record(path.display().to_string(), e)),
        };
        let pid = text.trim().parse::<i32>().map_err(|_| {
            RuntimeError::record(
                path.display().to_string(),
                format!("holds no pid: {:?}", text.trim()),
            )
        })?;
        Ok(self.ps(id)?.contains(&pid).then_some(pid))
    }

    /// Records that sandbox `id`'s init died (it was not asked to stop):
    /// what is left of its processes and mounts is cleaned, its files
    /// stay, and it is not started again by anyone but its owner.
    pub fn mark_died(&self, id: &str) -> Result<()> {
        let mut info = self.info(id)?;
        self.halt(id)?;
        info.state = State::Stopped;
        info.died = true;
        self.record(id, &info)
    }

    /// Takes back the sandboxes of the data directory, after a restart of
    /// the process that drives the runtime (call once, before anything
    /// else): running ones are managed again, dead ones are cleaned and
    /// marked, half-made ones are removed, and half-built snapshots are
    /// dropped. Returns what was found of each sandbox.
    pub fn adopt(&self) -> Result<Vec<(String, Adopted)>> {
        // Prepared disks are made again (one a crash cut short must not be
        // taken); one that cannot be removed keeps no sandbox from being
        // taken back.
        if let Err(e) = disk::clear(&self.disk_pool()) {
            tracing::warn!(error = %e, "clearing the prepared disks");
        }
        for entry in fs::read_dir(self.cfg.data_dir.join("snapshots"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "building") {
                fs::remove_dir_all(&path)?;
            }
        }
        let mut found = Vec::new();
        for id in self.sandboxes()? {
            // Exec files a crashed process left (they hold environments).
            if let Ok(entries) = fs::read_dir(self.sandbox_dir(&id)) {
                for e in entries.flatten() {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    if name.starts_with("exec-") && name.ends_with(".json") {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
            let adopted = match self.info(&id) {
                // Died before: kept so, not started again.
                Ok(info) if info.state == State::Stopped && info.died => {
                    self.halt(&id)?;
                    Adopted::Died
                }
                Ok(info) if info.state == State::Stopped => {
                    self.halt(&id)?;
                    Adopted::Stopped
                }
                Ok(info) if info.state == State::Running && self.running(&id)? => Adopted::Running,
                Ok(mut info) if info.state == State::Running => {
                    self.halt(&id)?;
                    info.state = State::Stopped;
                    info.died = true;
                    self.record(&id, &info)?;
                    Adopted::Died
                }
                // Creating, or no readable record: cut short.
                _ => {
                    self.delete(&id)?;
                    Adopted::Removed
                }
            };
            found.push((id, adopted));
        }
        Ok(found)
    }

    /// Whether sandbox `id` is running (its runtime says so).
    pub fn running(&self, id: &str) -> Result<bool> {
        Ok(self
            .runc_state(id)?
            .is_some_and(|v| v["status"] == "running"))
    }

    /// What `runc state` says of sandbox `id`, if it knows it.
    fn runc_state(&self, id: &str) -> Result<Option<serde_json::Value>> {
        let out = self.oci_output(id, &["state", id])?;
        if !out.status.success() {
            return Ok(None);
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| RuntimeError::record(format!("the OCI runtime's state of {id}"), e))
    }

    /// The host pids of the processes of sandbox `id` (its cgroup's).
    pub fn processes(&self, id: &str) -> Result<Vec<i32>> {
        check_name("sandbox", id)?;
        self.ps(id)
    }

    /// The host pids of sandbox `id`'s processes: its cgroup's
    /// `cgroup.procs`, whose path [`Runtime::run`] keeps in the sandbox's
    /// directory (a file read, where `runc ps` costs a process and about
    /// 10 ms); `runc ps` where there is no such path.
    fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let kept = fs::read_to_string(self.sandbox_dir(id).join("procs"));
        if let Ok(procs) = kept.and_then(|path| fs::read_to_string(path.trim())) {
            return Ok(procs.lines().filter_map(|l| l.parse().ok()).collect());
        }
        let out = self.oci_output(id, &["ps", "--format", "json", id])?;
        if !out.status.success() {
            return Err(self.oci("ps", id, &String::from_utf8_lossy(&out.stderr)));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| RuntimeError::record(format!("the OCI runtime's processes of {id}"), e))
    }

    /// Stops and removes sandbox `id`: its processes, the runtime's state,
    /// the overlay mount and the directory. Tolerates what is missing.
    pub fn delete(&self, id: &str) -> Result<()> {
        check_name("sandbox", id)?;
        self.halt(id)?;
        match fs::remove_dir_all(self.sandbox_dir(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Runs a command in sandbox `id` (see [`exec`]).
    /// Refused (`ResourceBusy`) unless the sandbox is running.
    pub fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecResult> {
        let info = self.info(id)?;
        if info.state != State::Running {
            return Err(RuntimeError::Busy(format!("sandbox {id} is not running")));
        }
        let class = info.resources.class;
        let ps = || self.ps(id).map_err(io::Error::from);
        let kill_inside = |pgid| self.kill_inside(id, class, pgid);
        let group = match class {
            RuntimeClass::Runc => exec::Group::Host(&ps),
            RuntimeClass::Runsc => exec::Group::Inside(&kill_inside),
        };
        Ok(exec::run(
            self.runc(class),
            &|c| self.clean.spawn(c),
            &group,
            id,
            request,
            self.cfg.output_cap,
            &self.sandbox_dir(id),
        )?)
    }

    /// Kills process group `pgid` of sandbox `id` (of `class`) from inside, with the
    /// sandbox's own busybox (under gVisor the host sees none of the
    /// sandbox's processes): `kill` run again until it finds no member
    /// left, for at most two seconds (a member forked meanwhile is caught
    /// by the next round). Each `kill` is a process of its own, never a
    /// shell's child, and holds `CAP_SYS_RESOURCE`, which the process
    /// limit (`RLIMIT_NPROC`, every exec's) does not bind: a group that
    /// keeps the sandbox at its limit is killed all the same.
    fn kill_inside(&self, id: &str, class: RuntimeClass, pgid: i32) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let group = format!("-{pgid}");
        loop {
            let mut runc = self.runc(class);
            runc.args(["exec", "--cap", "CAP_SYS_RESOURCE", id]);
            runc.args([bundle::INIT, "kill", "-9", &group]);
            match self.clean.output(&mut runc) {
                // Signalled: some were left; look again.
                Ok(out) if out.status.success() => {}
                // None left: busybox's kill found no member.
                Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No such process") => {
                    return
                }
                // The kill did not run (or the sandbox is gone, which
                // the next round says again): try once more.
                Ok(out) => {
                    tracing::debug!(sandbox = %id, pgid, said = %String::from_utf8_lossy(&out.stderr).trim(), "a kill inside did not run");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::warn!(sandbox = %id, pgid, error = %e, "killing what is left of an exec's process group");
                    return;
                }
            }
            if std::time::Instant::now() > deadline {
                tracing::warn!(sandbox = %id, pgid, "an exec's process group still has members after two seconds of killing");
                return;
            }
        }
    }

    /// The OCI runtime's failure to `op` sandbox `id`, in its words.
    fn oci(&self, op: &'static str, id: &str, said: &str) -> RuntimeError {
        RuntimeError::Oci {
            program: self.program(self.class_of(id)).to_path_buf(),
            op,
            id: id.to_string(),
            said: said.trim().to_string(),
        }
    }
}

/// The file in a sandbox's directory that holds the CA it trusts beside
/// its snapshot's (bound on [`bundle::CA_FILE`]); its presence says the
/// sandbox trusts it.
pub const TRUSTED_CA: &str = "sandgate-ca.pem";

/// The most of what the OCI runtime says when it starts a sandbox that
/// is kept (for its error).
const RUN_SAID_MAX: usize = 64 << 10;

/// The file in a sandbox's directory bound on [`bundle::SYSTEM_BUNDLE`].
const TRUST_BUNDLE: &str = "ca-bundle.crt";

/// A file in a sandbox's directory whose presence says its snapshot had a
/// CA bundle of its own (the variables naming the system bundle are set).
pub const OWN_BUNDLE: &str = "own-bundle";

/// The most of a snapshot's CA bundle that is read.
const BUNDLE_MAX: u64 = 4 << 20;

/// The snapshot's own CA bundle at [`bundle::SYSTEM_BUNDLE`] under
/// `rootfs`, read with every link resolved inside `rootfs` (a snapshot is
/// not trusted: a link to a host file reads nothing of the host); empty if
/// it has none.
fn snapshot_bundle(rootfs: &Path) -> Vec<u8> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
    use std::io::Read;
    let read = || -> io::Result<Vec<u8>> {
        let root = fs::File::open(rootfs)?;
        let fd = openat2(
            &root,
            bundle::SYSTEM_BUNDLE.trim_start_matches('/'),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
        )?;
        let file = fs::File::from(fd);
        if !file.metadata()?.is_file() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        file.take(BUNDLE_MAX).read_to_end(&mut out)?;
        Ok(out)
    };
    match read() {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            tracing::warn!(rootfs = %rootfs.display(), error = %e, "a snapshot's CA bundle could not be read; its sandboxes trust the gateway's CA alone");
            Vec::new()
        }
    }
}

/// Removes a snapshot's staging directory, if any (one left by a build
/// cut short is removed at the next build or start).
fn remove_staging(staging: &Path) {
    match fs::remove_dir_all(staging) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(dir = %staging.display(), error = %e, "removing a snapshot's staging directory");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshots_bundle_is_read_inside_its_root_and_never_through_a_link_out() {
        let root = std::env::temp_dir().join(format!("sandgate-bundle-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let certs = root.join("etc/ssl/certs");
        fs::create_dir_all(&certs).unwrap();
        let bundle = certs.join("ca-certificates.crt");
        assert_eq!(snapshot_bundle(&root), b"");
        fs::write(&bundle, "-----BEGIN CERTIFICATE-----\n").unwrap();
        assert_eq!(snapshot_bundle(&root), b"-----BEGIN CERTIFICATE-----\n");
        // A link to a host file: resolved inside the snapshot's root,
        // where there is no such file.
        fs::remove_file(&bundle).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &bundle).unwrap();
        assert!(Path::new("/etc/hostname").exists());
        assert_eq!(snapshot_bundle(&root), b"");
        // The same through a relative link that climbs out, and a link of
        // a parent directory.
        fs::remove_file(&bundle).unwrap();
        std::os::unix::fs::symlink("../../../../../../../etc/hostname", &bundle).unwrap();
        assert_eq!(snapshot_bundle(&root), b"");
        fs::remove_dir_all(root.join("etc/ssl")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc/ssl")).unwrap();
        assert_eq!(snapshot_bundle(&root), b"");
        // Not a file: nothing.
        fs::remove_file(root.join("etc/ssl")).unwrap();
        fs::create_dir_all(&bundle).unwrap();
        assert_eq!(snapshot_bundle(&root), b"");
        fs::remove_dir_all(&root).unwrap();
    }
}
