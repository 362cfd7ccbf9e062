//! A PostgreSQL server of a test's own: Debian's `postgresql` package
//! (installed by `scripts/setup`), a cluster made with `initdb` in a
//! temporary directory, listening on a Unix socket in it and on no TCP
//! port, run as the package's `postgres` user (PostgreSQL refuses root),
//! and stopped and removed when dropped. No system service is involved.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL server; see the module.
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    server: Child,
}

/// The superuser of a test's cluster.
const USER: &str = "sandgate";

/// The newest installed PostgreSQL's programs (`/usr/lib/postgresql/N/bin`).
fn bin_dir() -> std::io::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("/usr/lib/postgresql: {e}; install Debian's postgresql (scripts/setup)"),
            )
        })?
        .filter_map(Result::ok)
        .filter_map(|d| {
            let version = d.file_name().to_str()?.parse().ok()?;
            let bin = d.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        std::io::Error::other("no PostgreSQL in /usr/lib/postgresql; run scripts/setup")
    })
}

/// The uid and gid of the `postgres` user the package made.
fn postgres_user() -> std::io::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres") && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .ok_or_else(|| std::io::Error::other("no postgres user; install Debian's postgresql"))
}

impl Postgres {
    /// Makes a cluster and starts its server; returns once it accepts
    /// connections.
    pub fn start() -> std::io::Result<Postgres> {
        let bin = bin_dir()?;
        let (uid, gid) = postgres_user()?;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sandgate-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let as_postgres = |program: &str| {
            let mut c = Command::new(bin.join(program));
            c.uid(uid).gid(gid).current_dir(&dir);
            c
        };
        let init = as_postgres("initdb")
            .args(["--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C"])
            .arg(format!("--username={USER}"))
            .arg("-D")
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .output()?;
        if !init.status.success() {
            return Err(std::io::Error::other(format!(
                "initdb: {}",
                String::from_utf8_lossy(&init.stderr)
            )));
        }
        let log = std::fs::File::create(dir.join("server.log"))?;
        std::os::unix::fs::chown(dir.join("server.log"), Some(uid), Some(gid))?;
        let server = as_postgres("postgres")
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-k")
            .arg(&dir)
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .args(["-c", "max_connections=100"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let pg = Postgres { dir, bin, server };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if pg.psql("postgres", "SELECT 1").is_ok() {
                return Ok(pg);
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "PostgreSQL did not start in 30 s; its log: {}",
                    std::fs::read_to_string(pg.dir.join("server.log")).unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The directory of its socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// Makes database `name`; its URL.
    pub fn database(&self, name: &str) -> std::io::Result<String> {
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(name))
    }

    /// The URL of database `name`, over the socket.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://{USER}@localhost/{name}?host={}",
            self.dir.display()
        )
    }

    /// Runs `sql` in database `db`; what it printed (unaligned, tuples
    /// only).
    pub fn psql(&self, db: &str, sql: &str) -> std::io::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.dir)
            .args([
                "-U",
                USER,
                "-d",
                db,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "psql {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: the immediate shutdown; the backends go with it.
        if let Ok(pid) = i32::try_from(self.server.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGQUIT,
            );
        }
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
