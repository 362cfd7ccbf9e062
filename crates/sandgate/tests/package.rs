//! sandgate's Debian package (`scripts/package-deb`): the production
//! feature set links no lab crate; the package installs into a fresh
//! Debian root file system; the command of its systemd unit, run as the
//! unit runs it, starts a server there that runs a sandbox; a purge takes
//! away what the package made. Needs root; the root file system is the
//! cached one of the userland tests (`sandgate_lab::debian`), which holds
//! the package's dependencies, so the install itself is offline.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sandgate_lab::addrs::*;
use sandgate_lab::Lab;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The crates `sandgate` links with `features` (`cargo tree`).
fn linked(features: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "-p", "sandgate", "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}"])
        .args(features)
        .current_dir(repository())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn the_production_feature_set_links_no_lab_crate() {
    let production = linked(&["--no-default-features"]);
    assert!(
        production.iter().any(|c| c == "sandgate-server"),
        "{production:?}"
    );
    for lab in ["sandgate-lab", "sandgate-testkit"] {
        assert!(
            !production.iter().any(|c| c == lab),
            "{lab} in {production:?}"
        );
    }
    // The default (the README's demo) has them: the check can fail.
    let default = linked(&[]);
    assert!(default.iter().any(|c| c == "sandgate-lab"), "{default:?}");
}

/// A directory holding a Debian root file system, removed on drop once
/// what runs in it is gone: everything started in the root (the server,
/// its runc sandboxes) lives in a PID namespace of its own that dies with
/// the `unshare` killed here, and the root's mounts are in a mount
/// namespace that dies with its last process, never in this one.
struct Root {
    dir: PathBuf,
    server: Option<std::process::Child>,
}

impl Drop for Root {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The mounts a command in the root needs (in a private mount namespace,
/// gone with its last process), then the command with the root as the
/// namespace's root: `pivot_root`, as a container engine does, not a mere
/// chroot (runc needs `/` to be a mount of its namespace).
const IN_ROOT: &str = r#"set -e
r="$1"; shift
mount --bind "$r" "$r"
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"
mkdir -p "$r/run/netns"
mount --rbind /run/netns "$r/run/netns"
cd "$r"
mkdir -p .old-root
pivot_root . .old-root
exec chroot . sh -c 'umount -l /.old-root && rmdir /.old-root && exec "$@"' sh "$@""#;

/// `argv` run in `root` with exactly `env` (and a `PATH`), as the first
/// process of new mount and PID namespaces (killing the `unshare` kills
/// every process in them).
fn in_root(root: &Path, env: &BTreeMap<String, String>, argv: &[String]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private"])
        .args(["--pid", "--fork", "--kill-child"])
        .args(["sh", "-c", IN_ROOT, "sh"])
        .arg(root)
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env);
    cmd
}

fn run_in_root(root: &Path, command: &str) -> Output {
    let out = in_root(
        root,
        &BTreeMap::new(),
        &["sh".into(), "-c".into(), command.into()],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{command}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A value of an environment file or an `Environment=` line, its quotes
/// taken off.
fn unquote(v: &str) -> String {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
        .to_string()
}

/// What systemd would run for `unit` in `root`: its environment
/// (`Environment=`, then `EnvironmentFile=`) and `ExecStart=`, with `$NAME`
/// split into words and `${NAME}` kept as one.
fn unit_command(root: &Path, unit: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let mut env = BTreeMap::new();
    let mut exec = None;
    for line in unit.lines().map(str::trim) {
        if let Some(kv) = line.strip_prefix("Environment=") {
            let (k, v) = kv.split_once('=').unwrap();
            env.insert(k.to_string(), unquote(v));
        } else if let Some(file) = line.strip_prefix("EnvironmentFile=") {
            let (optional, file) = match file.strip_prefix('-') {
                Some(f) => (true, f),
                None => (false, file),
            };
            let text = match std::fs::read_to_string(root.join(file.trim_start_matches('/'))) {
                Ok(t) => t,
                Err(_) if optional => continue,
                Err(e) => panic!("{file}: {e}"),
            };
            for l in text.lines().map(str::trim) {
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                let (k, v) = l.split_once('=').unwrap();
                env.insert(k.to_string(), unquote(v));
            }
        } else if let Some(cmd) = line.strip_prefix("ExecStart=") {
            exec = Some(cmd.to_string());
        }
    }
    let mut argv = Vec::new();
    for word in exec.expect("no ExecStart=").split_whitespace() {
        if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            argv.push(env.get(name).cloned().unwrap_or_default());
        } else if let Some(name) = word.strip_prefix('$') {
            argv.extend(
                env.get(name)
                    .map(|v| v.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_else(Vec::new),
            );
        } else {
            argv.push(word.to_string());
        }
    }
    (env, argv)
}

#[test]
fn the_package_installs_on_a_fresh_debian_root_and_its_unit_runs_the_server() {
    let lab = Lab::up().unwrap();
    let mut guard = Root {
        dir: std::env::temp_dir().join(format!("sandgate-package-{}", lab.tag())),
        server: None,
    };
    let work = guard.dir.clone();
    let _ = std::fs::remove_dir_all(&work);

    // The package, built from this checkout.
    let built = Command::new(repository().join("scripts/package-deb"))
        .arg("--out")
        .arg(work.join("deb"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(built.status.success());
    let deb = PathBuf::from(String::from_utf8(built.stdout).unwrap().trim());
    let listed = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for file in [
        "./usr/bin/sandgate",
        "./lib/systemd/system/sandgate.service",
        "./etc/sandgate/sandgate.toml",
        "./usr/share/man/man1/sandgate-server.1.gz",
        "./usr/share/bash-completion/completions/sandgate",
    ] {
        assert!(listed.contains(file), "{file} not in {listed}");
    }

    // A fresh Debian root, and the package installed into it.
    let root = work.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let tarball = sandgate_lab::debian::rootfs_tarball().unwrap();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(&deb, root.join("tmp/sandgate.deb")).unwrap();
    let installed = run_in_root(&root, "dpkg -i /tmp/sandgate.deb");
    assert!(
        String::from_utf8_lossy(&installed.stdout)
            .contains("the operator token is in /etc/sandgate/admin-token"),
        "{installed:?}"
    );
    let token_file = root.join("etc/sandgate/admin-token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(mode(&root.join("var/lib/sandgate")), 0o700);
    // The production binary: its manual is there, and it has no lab.
    let out = run_in_root(
        &root,
        "sandgate --version; zcat /usr/share/man/man1/sandgate.1.gz | head -c 200",
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("sandgate "), "{said}");
    assert!(said.contains(".TH sandgate"), "{said}");
    let demo = in_root(&root, &BTreeMap::new(), &["sandgate".into(), "demo".into()])
        .output()
        .unwrap();
    assert_eq!(demo.status.code(), Some(2), "{demo:?}");

    // The unit's command, as systemd runs it, with this lab's options in
    // /etc/default/sandgate (the operator's place for them).
    let mut opts = format!(
        "--instance {} --host-netns {} --upstream {DNS4}:53 --warm-pool 1",
        lab.tag(),
        lab.host().name()
    );
    for t in sandgate_lab::probe_targets(&sandgate_policy::Catalog::builtin()) {
        opts.push_str(&format!(" --probe-target {t}"));
    }
    std::fs::write(
        root.join("etc/default/sandgate"),
        format!("# the test's\nSANDGATE_LISTEN=127.0.0.1:0\nSANDGATE_OPTS=\"{opts}\"\n"),
    )
    .unwrap();
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/sandgate.service")).unwrap();
    let (env, argv) = unit_command(&root, &unit);
    assert_eq!(env["SANDGATE_CONFIG"], "/etc/sandgate/sandgate.toml");
    let mut server = in_root(&root, &env, &argv);
    server.stdout(Stdio::piped());
    let (child, url) = spawn_listening(&mut server);
    guard.server = Some(child);

    // The operator token of the package works; a sandbox runs, from the
    // built-in snapshot of the package's busybox, under runc, with its
    // policy enforced.
    let (_, key) = organization(&url, &token, "acme", 3);
    let (code, made) = cli(
        &url,
        &key,
        &[
            "sandbox",
            "create",
            "--name",
            "s",
            "--network-allow-list",
            &format!("{SERVER4_B}/32"),
        ],
    );
    assert_eq!(code, 0, "{made}");
    assert!(echoes(&url, &key, "s", SERVER4_B));
    assert!(!echoes(&url, &key, "s", SERVER4));
    let (code, gone) = cli(&url, &key, &["sandbox", "delete", "s"]);
    assert_eq!(code, 0, "{gone}");

    // A stop is graceful; a purge takes the package's files and token and
    // leaves the data.
    let mut child = guard.server.take().unwrap();
    // The server is the first process of the PID namespace, the child of
    // `unshare`, which waits for it and exits as it does.
    let children = format!("/proc/{0}/task/{0}/children", child.id());
    let server: i32 = std::fs::read_to_string(children)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    run_in_root(&root, "dpkg --purge sandgate");
    for gone in [
        "usr/bin/sandgate",
        "etc/sandgate",
        "lib/systemd/system/sandgate.service",
    ] {
        assert!(!root.join(gone).exists(), "{gone} is left");
    }
    assert!(root.join("var/lib/sandgate/store/sandgate.db").exists());
}
