//! A `sandgate server` process in a lab, for the tests that drive the
//! real binary (the CLI, the SDKs).

#![allow(dead_code, clippy::unwrap_used)]

use sandgate_lab::addrs::*;
use sandgate_lab::Lab;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub const TOKEN: &str = "operator-token-of-the-cli-test";

/// A `sandgate server` process in the lab.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
}

impl ServerProcess {
    /// SIGTERM, and the server must exit successfully (a graceful stop).
    pub fn stop_gracefully(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert!(self.child.wait().unwrap().success());
    }
}

pub fn start_server(lab: &Lab, dir: &std::path::Path) -> ServerProcess {
    start_server_with(lab, dir, &[])
}

/// [`start_server`] with more of `sandgate server`'s arguments.
pub fn start_server_with(lab: &Lab, dir: &std::path::Path, more: &[&str]) -> ServerProcess {
    let (child, url) = spawn_listening(&mut server_command(lab, dir, more));
    ServerProcess { child, url }
}

/// The command of a `sandgate server` in `lab` with its data in `dir`
/// (standard output piped, for [`spawn_listening`]).
pub fn server_command(lab: &Lab, dir: &std::path::Path, more: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandgate"));
    cmd.args(["server", "--listen", "127.0.0.1:0"])
        .env("SANDGATE_ADMIN_TOKEN", TOKEN)
        .arg("--data-dir")
        .arg(dir)
        .args(["--instance", lab.tag(), "--host-netns", lab.host().name()])
        .args(["--upstream", &format!("{DNS4}:53"), "--warm-pool", "1"])
        .env_remove("SANDGATE_CONFIG")
        .args(more)
        .stdout(Stdio::piped());
    for t in sandgate_lab::probe_targets(&sandgate_policy::Catalog::builtin()) {
        cmd.args(["--probe-target", &t]);
    }
    cmd
}

/// Spawns `cmd` (a `sandgate server` or `sandgate runner`, its standard
/// output piped) and reads the URL of its first line, which it prints once
/// it listens.
pub fn spawn_listening(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    (child, url)
}

/// Runs `sandgate <args> --json` against `url` with `key`: exit code and
/// JSON output.
pub fn cli(url: &str, key: &str, args: &[&str]) -> (i32, Value) {
    cli_keyed(url, Some(key), args)
}

/// Writes at `archive` a root filesystem archive (`docker export`'s
/// shape): the busybox root of the runner whose data is in `dir`, with
/// the file `extra` (its path under the root, its content) over it if
/// given.
pub fn busybox_archive(
    dir: &std::path::Path,
    archive: &std::path::Path,
    extra: Option<(&str, &str)>,
) {
    let mut roots = vec![(dir.join("runner/runtime/snapshots/busybox/rootfs"), "-cf")];
    if let Some((path, content)) = extra {
        let more = archive.with_extension("extra");
        let file = more.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, content).unwrap();
        roots.push((more, "-rf"));
    }
    for (root, op) in roots {
        let tarred = Command::new("tar")
            .arg("-C")
            .arg(root)
            .arg(op)
            .arg(archive)
            .arg(".")
            .status()
            .unwrap();
        assert!(tarred.success());
    }
}

/// A new organization named `name` of `tier`, made with the operator
/// token `token` through the CLI: its id and a key of it.
pub fn organization(url: &str, token: &str, name: &str, tier: u8) -> (String, String) {
    let tier = tier.to_string();
    let (code, org) = cli(
        url,
        token,
        &["admin", "org", "create", name, "--tier", &tier],
    );
    assert_eq!(code, 0, "{org}");
    let id = org["id"].as_str().unwrap().to_string();
    let (code, key) = cli(url, token, &["admin", "org", "key", &id]);
    assert_eq!(code, 0, "{key}");
    (id, key["key"].as_str().unwrap().to_string())
}

/// [`cli`] with `key` in `SANDGATE_API_KEY`, or none there at all.
pub fn cli_keyed(url: &str, key: Option<&str>, args: &[&str]) -> (i32, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandgate"));
    cmd.arg("--json")
        .args(args)
        .env("SANDGATE_API_URL", url)
        .env_remove("SANDGATE_CONFIG");
    match key {
        Some(k) => cmd.env("SANDGATE_API_KEY", k),
        None => cmd.env_remove("SANDGATE_API_KEY"),
    };
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// Whether the lab's TCP echo at `dest` answers from inside `sandbox`.
pub fn echoes(url: &str, key: &str, sandbox: &str, dest: std::net::IpAddr) -> bool {
    assert!(is_lab_address(dest));
    let command = format!("echo sandgate | nc -w 1 {dest} {TCP_ECHO}");
    let (_, v) = cli(url, key, &["sandbox", "exec", sandbox, "--", &command]);
    v["stdout"] == "sandgate\n"
}

pub struct Cleanup {
    pub dir: PathBuf,
    pub server: Option<ServerProcess>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        let runner = sandgate_runner::RunnerConfig::new(
            self.dir.join("runner"),
            "unused",
            sandgate_dns::Upstream {
                servers: Vec::new(),
                timeout: std::time::Duration::from_secs(1),
            },
        );
        let _ = sandgate_runner::purge_runtime(&runner);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
