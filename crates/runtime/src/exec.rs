//! Exec: a command in a running sandbox, through `/bin/sh -c`.
//!
//! runc starts the command as the leader of a process group of its own
//! (the test suite checks it), so on timeout, or when the shell ends, the
//! rest of the group (children and grandchildren) is killed too. stdout and stderr are read apart, each up to a cap;
//! `result` is the two together, for the reference API.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// The command, run by `/bin/sh -c`.
    pub command: String,
    /// The working directory.
    pub cwd: Option<String>,
    /// Environment variables, `NAME=value`.
    pub env: Vec<(String, String)>,
    /// Kill the command after this long.
    pub timeout: Option<Duration>,
}

/// What came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// The exit code (128 + signal for a command killed by a signal).
    pub exit_code: i32,
    /// Its standard output, up to the cap.
    pub stdout: String,
    /// Its standard error, up to the cap.
    pub stderr: String,
    /// stdout then stderr: the reference API's `result`.
    pub result: String,
    /// Whether the timeout killed it.
    pub timed_out: bool,
    /// Whether output beyond the cap was dropped.
    pub truncated: bool,
}

/// Output read so far: at most the cap, and whether bytes were dropped.
type Captured = Arc<Mutex<(Vec<u8>, bool)>>;

/// How long the output may stay open once the command is over: what a
/// process that left the command's group (`setsid`) still writes after
/// that is not waited for.
const DRAIN: Duration = Duration::from_millis(500);

/// Reads `r` on a thread of its own until end of file, keeping at most
/// `cap` bytes in what it returns.
fn capture(mut r: impl Read + Send + 'static, cap: usize) -> (Captured, thread::JoinHandle<()>) {
    let captured: Captured = Arc::default();
    let sink = captured.clone();
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = r.read(&mut buf) {
            let mut guard = sink.lock().unwrap_or_else(|e| e.into_inner());
            let (kept, dropped) = &mut *guard;
            let room = cap.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
            *dropped |= n > room;
        }
    });
    (captured, reader)
}

/// What `captured` holds once its reader is done, or [`DRAIN`] from now.
fn collect(captured: Option<(Captured, thread::JoinHandle<()>)>) -> (Vec<u8>, bool) {
    let Some((captured, reader)) = captured else {
        return Default::default();
    };
    let deadline = Instant::now() + DRAIN;
    while !reader.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
    let guard = captured.lock().unwrap_or_else(|e| e.into_inner());
    guard.clone()
}

/// The state letter and process group of host process `pid`, from the
/// fields after the command's closing parenthesis in `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

/// Kills, with `SIGKILL`, the processes of sandbox `id` in process group
/// `pgid`. Only the sandbox's own processes (its runtime lists them) are
/// looked at, so a recycled group number can never reach the host's.
fn kill_group(runc: &dyn Fn() -> Command, id: &str, pgid: i32) {
    let Ok(pids) = crate::ps(runc(), id) else {
        return;
    };
    for pid in pids {
        if stat(pid).is_some_and(|(_, pgrp)| pgrp == pgid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Runs `request` in sandbox `id` with the OCI runtime commands `runc`
/// makes. When the shell ends, or the timeout, what is left of its process
/// group is killed: a command's background processes do not outlive it,
/// and an exec never hangs on them holding its output open.
pub fn run(
    runc: &dyn Fn() -> Command,
    id: &str,
    request: &ExecRequest,
    cap: usize,
    dir: &Path,
) -> io::Result<ExecResult> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let pid_file = dir.join(format!("exec-{}.pid", NEXT.fetch_add(1, Ordering::Relaxed)));
    let mut cmd = runc();
    cmd.arg("exec").arg("--pid-file").arg(&pid_file);
    if let Some(cwd) = &request.cwd {
        cmd.arg("--cwd").arg(cwd);
    }
    for (k, v) in &request.env {
        if k.is_empty() || k.contains('=') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad environment variable name {k:?}"),
            ));
        }
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    cmd.arg(id)
        .args(["/bin/sh", "-c"])
        .arg(&request.command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let out = child.stdout.take().map(|o| capture(o, cap));
    let err = child.stderr.take().map(|e| capture(e, cap));
    let started = Instant::now();
    let mut timed_out = false;
    // The command's process group, in the host's numbering: the pid the
    // runtime wrote, a group leader.
    // runc removes the file when the command ends, so it is read while
    // the command runs: a command that ends within the first poll leaves
    // its background processes alone (see docs/RUNTIME.md).
    let read_pgid = || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
    };
    let mut pgid = None;
    let status = loop {
        if pgid.is_none() {
            pgid = read_pgid();
        }
        if let Some(s) = child.try_wait()? {
            break s;
        }
        // The runtime waits for every process the command left, so the
        // shell's end is seen here: its pid is gone (or a zombie).
        if let Some(leader) = pgid {
            if stat(leader).is_none_or(|(state, _)| state == 'Z') {
                kill_group(runc, id, leader);
            }
        }
        if request.timeout.is_some_and(|t| started.elapsed() >= t) {
            timed_out = true;
            if let Some(pgid) = pgid {
                kill_group(runc, id, pgid);
            }
            let _ = child.kill();
            break child.wait()?;
        }
        thread::sleep(Duration::from_millis(5));
    };
    if let Some(pgid) = pgid {
        kill_group(runc, id, pgid);
    }
    let _ = std::fs::remove_file(&pid_file);
    let (stdout, t1) = collect(out);
    let (stderr, t2) = collect(err);
    use std::os::unix::process::ExitStatusExt;
    let exit_code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => -1,
    };
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    Ok(ExecResult {
        exit_code: if timed_out { 137 } else { exit_code },
        result: format!("{stdout}{stderr}"),
        stdout,
        stderr,
        timed_out,
        truncated: t1 || t2,
    })
}
