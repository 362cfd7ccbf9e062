//! Exec: a command in a running sandbox, through `/bin/sh -c`.
//!
//! runc starts the command as the leader of a process group of its own
//! (the test suite checks it). Before the command runs, a one-line preamble
//! writes that shell's pid (the group's id, in the sandbox's numbering) as
//! the first line of stdout and then `exec`s the command in the same
//! process, so the group is known before any of the command's processes
//! exist. On timeout, or when the shell ends, the rest of the group
//! (children and grandchildren) is killed. stdout and stderr are read apart,
//! each up to a cap; `result` is the two together, for the reference API.

use crate::procfs::{ended, ns_number, Held};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use rustix::event::{eventfd, EventfdFlags};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub use sandgate_contract::{ExecRequest, ExecResult};

/// The preamble: print the shell's pid, then become the command (same
/// process, so the same group). `$1` is the command.
const PREAMBLE: &str = "echo $$; exec /bin/sh -c \"$1\"";

/// Output read so far: at most the cap, and whether bytes were dropped.
type Captured = Arc<Mutex<(Vec<u8>, bool)>>;

/// How long the output may stay open once the command is over: what a
/// process that left the command's group (`setsid`) still writes after
/// that is not waited for.
const DRAIN: Duration = Duration::from_millis(500);

/// How often the command's leader and the timeout are looked at.
const POLL: Duration = Duration::from_millis(5);

/// How long the killing of a command's group may take (rounds until none
/// of it is left alive).
const KILL_WAIT: Duration = Duration::from_secs(2);

/// A stream read on a thread of its own ([`capture`]).
struct Capture {
    captured: Captured,
    reader: thread::JoinHandle<()>,
    /// An eventfd: written, it stops the reader, which closes the stream's
    /// end it holds.
    stop: Arc<OwnedFd>,
}

/// Reads `r` on a thread of its own until end of file or until stopped
/// ([`collect`]), keeping at most `cap` bytes in what it returns. With
/// `header`, the first line (at most 16 bytes) is not output but the
/// command's process group, sent there (`None` if the stream ends or the
/// line is not a number).
fn capture<R: Read + AsFd + Send + 'static>(
    r: R,
    cap: usize,
    header: Option<mpsc::Sender<Option<i32>>>,
) -> io::Result<Capture> {
    let stop = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
    rustix::io::ioctl_fionbio(&r, true)?;
    let captured: Captured = Arc::default();
    let (sink, stopped) = (captured.clone(), stop.clone());
    let reader = thread::spawn(move || read_stream(r, cap, header, &sink, &stopped));
    Ok(Capture {
        captured,
        reader,
        stop,
    })
}

/// [`capture`]'s reader: reads `r` (non-blocking) as it becomes readable,
/// until its end, an error, or `stop` is written.
fn read_stream<R: Read + AsFd>(
    mut r: R,
    cap: usize,
    mut header: Option<mpsc::Sender<Option<i32>>>,
    sink: &Captured,
    stop: &OwnedFd,
) {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut line = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let mut fds = [
            PollFd::new(&r, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
        if fds[1].revents().contains(PollFlags::IN) {
            break;
        }
        let mut data = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => &buf[..n],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        if header.is_some() {
            let room = &data[..data.len().min(HEADER_MAX - line.len())];
            let take = room
                .iter()
                .position(|&b| b == b'\n')
                .map_or(room.len(), |i| i + 1);
            line.extend_from_slice(&data[..take]);
            data = &data[take..];
            if line.ends_with(b"\n") || line.len() == HEADER_MAX {
                if let Some(tx) = header.take() {
                    let _ = tx.send(pgid_of(&line));
                }
            }
        }
        let mut guard = sink.lock().unwrap_or_else(|e| e.into_inner());
        let (kept, dropped) = &mut *guard;
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&data[..data.len().min(room)]);
        *dropped |= data.len() > room;
    }
    // The stream ended (or was stopped) before the line was whole.
    if let Some(tx) = header {
        let _ = tx.send(pgid_of(&line));
    }
}

/// The longest header line (a pid and its newline).
const HEADER_MAX: usize = 16;

/// The process group a header line names, if it is a number.
fn pgid_of(line: &[u8]) -> Option<i32> {
    std::str::from_utf8(line).ok()?.trim().parse().ok()
}

/// What `capture` holds once its reader is done, or [`DRAIN`] from now.
/// The reader is stopped then: what a process that left the command's
/// group writes later is not read, and its end of the stream is closed
/// (a write there fails), so no host thread reads for it.
fn collect(capture: Option<Capture>) -> (Vec<u8>, bool) {
    let Some(c) = capture else {
        return Default::default();
    };
    let deadline = Instant::now() + DRAIN;
    while !c.reader.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
    if let Err(e) = rustix::io::write(&*c.stop, &1u64.to_ne_bytes()) {
        tracing::warn!(error = %e, "stopping an exec's output reader");
    }
    if c.reader.join().is_err() {
        tracing::warn!("an exec's output reader panicked");
    }
    let guard = c.captured.lock().unwrap_or_else(|e| e.into_inner());
    guard.clone()
}

/// Kills, with `SIGKILL`, the processes of the sandbox (`ps` lists them)
/// in its process group `pgid` (the sandbox's numbering), until none is
/// left alive or [`KILL_WAIT`] has passed: a member forked while a round
/// was listing (a fork loop) is caught by the next round, and the call
/// returns once the group is gone, not merely signalled. Only the
/// sandbox's own processes are looked at, so the host's can never be
/// reached.
fn kill_group(ps: &dyn Fn() -> io::Result<Vec<i32>>, pgid: i32) {
    let deadline = Instant::now() + KILL_WAIT;
    while kill_round(ps, pgid) > 0 && Instant::now() < deadline {
        thread::sleep(POLL);
    }
}

/// One round of [`kill_group`]: the members of group `pgid` still alive
/// (not ended), each sent `SIGKILL`; how many there were.
fn kill_round(ps: &dyn Fn() -> io::Result<Vec<i32>>, pgid: i32) -> usize {
    let Ok(pids) = ps() else {
        return 0;
    };
    // Each process is held by a pidfd first; a pid still listed after that
    // names the held process, so the check and the signal concern the
    // same process even if a pid is reused in between.
    let held: Vec<(i32, Held)> = pids
        .into_iter()
        .filter_map(|pid| Held::open(pid).map(|h| (pid, h)))
        .collect();
    let Ok(listed) = ps() else {
        return 0;
    };
    let mut alive = 0;
    for (pid, process) in held {
        if listed.contains(&pid) && !ended(pid) && ns_number(pid, "NSpgid") == Some(pgid) {
            process.kill();
            alive += 1;
        }
    }
    alive
}

/// How an exec reaches the processes of its command's group.
pub(crate) enum Group<'a> {
    /// They are host processes (runc), which `ps` lists (host pids): the
    /// leader is watched and the group killed from the host.
    Host(&'a dyn Fn() -> io::Result<Vec<i32>>),
    /// The host sees none of them (runsc: gVisor's kernel runs them): the
    /// runtime's end is the leader's, and the group is killed from
    /// inside, by the function given (with the group's number).
    Inside(&'a dyn Fn(i32)),
}

impl Group<'_> {
    /// Kills what is left of group `pgid`.
    fn kill(&self, pgid: i32) {
        match self {
            Group::Host(ps) => kill_group(*ps, pgid),
            Group::Inside(kill) => kill(pgid),
        }
    }

    /// The host pid of the group's leader, numbered `pgid` in the
    /// sandbox, to watch: `None` when it is gone or cannot be watched.
    fn leader(&self, pgid: i32) -> Option<i32> {
        match self {
            Group::Host(ps) => host_pid(*ps, pgid),
            Group::Inside(_) => None,
        }
    }

    /// Whether the leader's end is seen by watching it (else by the
    /// runtime's end).
    fn watched(&self) -> bool {
        matches!(self, Group::Host(_))
    }
}

/// The host pid of the process numbered `pid` in the sandbox (`ps` lists
/// its processes), if alive.
fn host_pid(ps: &dyn Fn() -> io::Result<Vec<i32>>, pid: i32) -> Option<i32> {
    ps().ok()?
        .into_iter()
        .find(|&p| ns_number(p, "NSpid") == Some(pid))
}

/// Runs `request` in sandbox `id` with `runc`, an OCI runtime command
/// (with its global options) that `spawn` starts; `group` reaches the
/// command's processes (under runsc, every exec has the limits of the
/// sandbox's init: runsc reads none from an exec's process file). When
/// the shell ends, or the timeout, what is left of its process group is
/// killed: a command's background processes do not outlive it, and an
/// exec never hangs on them holding its output open.
pub(crate) fn run(
    mut runc: Command,
    spawn: &dyn Fn(&mut Command) -> io::Result<std::process::Child>,
    group: &Group<'_>,
    id: &str,
    request: &ExecRequest,
    cap: usize,
    dir: &Path,
) -> io::Result<ExecResult> {
    let mut env = crate::bundle::base_env(
        dir.join(crate::TRUSTED_CA).exists(),
        dir.join(crate::OWN_BUNDLE).exists(),
    );
    for (k, v) in &request.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad environment variable {k:?}"),
            ));
        }
        env.retain(|e| !e.starts_with(&format!("{k}=")));
        env.push(format!("{k}={v}"));
    }
    let args: Vec<String> = ["/bin/sh", "-c", PREAMBLE, "sandgate", &request.command]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let cwd = request.cwd.as_deref().unwrap_or("/");
    let process = crate::bundle::process(&args, &env, cwd, None);
    // The environment (where secrets tend to be) goes to the runtime in a
    // file only root can read, never as arguments, which every local user
    // can read in /proc while the exec runs. (The command itself is the
    // shell's argument inside the sandbox, visible on the host like any
    // process's.)
    // Named by process and call, so that a file a crashed server left can
    // never collide with a new one (`adopt` and `delete` clean them up).
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let spec = dir.join(format!(
        "exec-{}-{}.json",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&spec)?;
        let bytes = serde_json::to_vec(&process)
            .map_err(|e| crate::RuntimeError::record(format!("the exec file of {id}"), e))?;
        f.write_all(&bytes)?;
    }
    let result = run_spec(&mut runc, spawn, group, id, &spec, cap, request.timeout);
    // A file left behind is removed with the sandbox, or at the next start.
    let _ = std::fs::remove_file(&spec);
    result
}

/// The error of an exec whose shell the runtime could not start, from
/// what the runtime wrote: a working directory that is not one in the
/// sandbox is the caller's fault (said in our words); anything else is the
/// host's, with the runtime's text for the log.
fn not_started(runtime_said: &str) -> io::Error {
    // runc's words, then runsc's.
    if runtime_said.contains("chdir to cwd")
        || runtime_said.contains("failed to find initial working directory")
    {
        crate::RuntimeError::NoSuchCwd.into()
    } else {
        crate::RuntimeError::NotStarted(runtime_said.trim().to_string()).into()
    }
}

/// Runs the process described in the file `spec` in sandbox `id`.
fn run_spec(
    runc: &mut Command,
    spawn: &dyn Fn(&mut Command) -> io::Result<std::process::Child>,
    group: &Group<'_>,
    id: &str,
    spec: &Path,
    cap: usize,
    timeout: Option<Duration>,
) -> io::Result<ExecResult> {
    let cmd = runc;
    cmd.arg("exec")
        .arg("--process")
        .arg(spec)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(cmd)?;
    let (header_tx, header) = mpsc::channel();
    let captures = (|| {
        let out = child
            .stdout
            .take()
            .map(|o| capture(o, cap, Some(header_tx)))
            .transpose()?;
        let err = child
            .stderr
            .take()
            .map(|e| capture(e, cap, None))
            .transpose()?;
        io::Result::Ok((out, err))
    })();
    let (out, err) = match captures {
        Ok(both) => both,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    // The runtime's end is waited for on a thread, so it is seen at once;
    // the loop below wakes for it or every POLL. The thread does not reap
    // (`WNOWAIT`): only `child` does, so its pid stays the runtime's until
    // then and `child.kill` cannot reach another process.
    let (exit_tx, exit) = mpsc::channel();
    let runtime_pid = Pid::from_raw(child.id() as i32);
    thread::spawn(move || {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
        let _ = exit_tx.send(waitid(Id::Pid(runtime_pid), flags));
    });
    let started = Instant::now();
    let mut timed_out = false;
    // The group (sandbox numbering), once the preamble's line is in, and
    // whether its leader (host pid, watched through /proc) still runs.
    let mut pgid = None;
    let mut leader = None;
    let status = loop {
        if pgid.is_none() {
            if let Ok(Some(g)) = header.try_recv() {
                pgid = Some(g);
                leader = group.watched().then(|| group.leader(g));
            }
        }
        if exit.recv_timeout(POLL).is_ok() {
            break child.wait()?;
        }
        // The runtime waits for every process the command left, so the
        // shell's end is seen here: its pid is gone (or a zombie). The
        // rest of the group is killed once.
        if let (Some(g), Some(l)) = (pgid, leader) {
            if l.is_none_or(ended) {
                group.kill(g);
                leader = None;
            }
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            timed_out = true;
            if let Some(g) = pgid {
                group.kill(g);
            }
            let _ = child.kill();
            break child.wait()?;
        }
    };
    // The preamble's line is written before the command starts, so it is
    // in the pipe by now even when the command was quicker than a poll.
    let pgid = pgid.or_else(|| header.recv_timeout(DRAIN).ok().flatten());
    if let Some(g) = pgid {
        group.kill(g);
    }
    let (stdout, t1) = collect(out);
    let (stderr, t2) = collect(err);
    // Once more now that the output is read (its reader may have been
    // slow to send the line).
    let pgid = pgid.or_else(|| header.try_recv().ok().flatten());
    if pgid.is_none() && !timed_out {
        // The shell never ran: what the runtime wrote is its own error,
        // never the command's output.
        return Err(not_started(&String::from_utf8_lossy(&stderr)));
    }
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
