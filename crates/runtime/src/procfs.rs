//! Host processes, as the runtime looks at and signals them: fields of
//! `/proc/<pid>/stat` and `/proc/<pid>/status`, and signals through a
//! pidfd, so that a pid reused by another process between looking and
//! signalling is never hit.

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use std::os::fd::OwnedFd;
use std::time::Duration;

/// A process held by a pidfd: it stays this process, whatever its pid
/// number comes to name later. The pidfd is readable once it has exited.
pub(crate) struct Held(OwnedFd);

impl std::os::fd::AsFd for Held {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Held {
    /// Holds process `pid`, if it exists.
    pub(crate) fn open(pid: i32) -> Option<Held> {
        let pid = Pid::from_raw(pid)?;
        pidfd_open(pid, PidfdFlags::empty()).ok().map(Held)
    }

    /// Holds process `pid`: `None` only if it does not exist (`ESRCH`);
    /// any other failure (out of file descriptors) is an error, never
    /// taken for the process being gone.
    pub(crate) fn try_open(pid: i32) -> std::io::Result<Option<Held>> {
        let Some(p) = Pid::from_raw(pid) else {
            return Ok(None);
        };
        match pidfd_open(p, PidfdFlags::empty()) {
            Ok(fd) => Ok(Some(Held(fd))),
            Err(rustix::io::Errno::SRCH) => Ok(None),
            Err(e) => Err(std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!("holding process {pid}: {e}"),
            )),
        }
    }

    /// Sends it `SIGKILL` (nothing if it has exited).
    pub(crate) fn kill(&self) {
        let _ = pidfd_send_signal(&self.0, Signal::KILL);
    }

    /// Waits up to `timeout` for it to exit; whether it did.
    pub(crate) fn wait_exit(&self, timeout: Duration) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
        let timeout = Timespec::try_from(timeout).ok();
        poll(&mut fds, timeout.as_ref()).is_ok_and(|n| n > 0)
    }
}

/// What `child` writes on its stderr (a pipe) until it exits, at most
/// `cap` bytes, and its exit status. The pipe may have other writers that
/// outlive the child (a detached container inherits the OCI runtime's
/// stderr): nothing is read after the child's exit, and the pipe is closed
/// when this returns, so that a later write there fails (`EPIPE`) and
/// takes nothing on the host, where a file would take the host's disk.
/// On an error the child is killed and reaped: none is left running or a
/// zombie.
pub(crate) fn stderr_until_exit(
    child: &mut std::process::Child,
    cap: usize,
) -> std::io::Result<(std::process::ExitStatus, Vec<u8>)> {
    match read_until_exit(child, cap) {
        Ok(said) => Ok((child.wait()?, said)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// [`stderr_until_exit`]'s reading: returns once `child` has exited and
/// what it wrote before is read.
fn read_until_exit(child: &mut std::process::Child, cap: usize) -> std::io::Result<Vec<u8>> {
    use rustix::event::{poll, PollFd, PollFlags};
    let Some(mut pipe) = child.stderr.take() else {
        return Ok(Vec::new());
    };
    // Our child, not yet reaped: its pid is its own, and it exists.
    let runtime = Held::try_open(child.id() as i32)?.ok_or_else(|| {
        std::io::Error::other("the OCI runtime's process is gone before it was reaped")
    })?;
    rustix::io::ioctl_fionbio(&pipe, true)?;
    let mut said = Vec::new();
    let mut closed = false;
    loop {
        let exited = {
            let mut fds = vec![PollFd::new(&runtime, PollFlags::IN)];
            if !closed {
                fds.push(PollFd::new(&pipe, PollFlags::IN));
            }
            match poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            fds[0].revents().contains(PollFlags::IN)
        };
        if !closed {
            closed = drain(&mut pipe, &mut said, cap, exited)?;
        }
        if exited {
            return Ok(said);
        }
    }
}

/// Reads what `pipe` holds into `said` (up to `cap` bytes kept, the rest
/// read and dropped), returning whether its every writer is gone. A few
/// reads at a time while the writer runs (a writer that keeps the pipe
/// full does not keep the caller from seeing its end); all once it has
/// `exited`.
fn drain(
    pipe: &mut std::process::ChildStderr,
    said: &mut Vec<u8>,
    cap: usize,
    exited: bool,
) -> std::io::Result<bool> {
    use std::io::{ErrorKind, Read};
    let mut buf = [0u8; 4096];
    let mut reads = 0;
    // What is left in the pipe after the writer's exit is bounded by the
    // pipe's size (other writers may still add to it: a sandbox's).
    let most = if exited { 64 } else { 16 };
    while reads < most {
        match pipe.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                let keep = n.min(cap.saturating_sub(said.len()));
                said.extend_from_slice(&buf[..keep]);
                reads += 1;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Whether host process `pid` is gone or a zombie.
pub(crate) fn ended(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The command name (field 2) is in parentheses and may hold spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    state.is_none_or(|s| s == 'Z')
}

/// The last (innermost namespace's) number of field `field` (`NSpid`,
/// `NSpgid`) of host process `pid`'s `/proc/<pid>/status`.
pub(crate) fn ns_number(pid: i32, field: &str) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// `sh -c script`, its stderr a pipe (its stdin and stdout nothing).
    fn sh(script: &str) -> std::process::Child {
        Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_programs_stderr_is_read_until_it_exits_though_a_child_keeps_the_pipe() {
        // The child that keeps the pipe (as a detached container does)
        // lives 30 s: waiting for the pipe's end would wait for it.
        let mut program = sh("echo said >&2; sleep 30 & echo $! >&2; exit 3");
        let started = std::time::Instant::now();
        let (status, said) = stderr_until_exit(&mut program, 1024).unwrap();
        let waited = started.elapsed();
        let said = String::from_utf8(said).unwrap();
        let (words, keeper) = said.split_once('\n').unwrap();
        let keeper: i32 = keeper.trim().parse().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(keeper),
            nix::sys::signal::Signal::SIGKILL,
        );
        assert_eq!(status.code(), Some(3));
        assert_eq!(words, "said");
        assert!(
            waited < Duration::from_secs(25),
            "waited {waited:?} for the pipe's end"
        );
    }

    #[test]
    fn the_pipe_is_closed_once_read_so_a_later_write_fails() {
        // The child that keeps the pipe writes until a write fails, then
        // leaves a mark.
        let mark = std::env::temp_dir().join(format!("sandgate-pipe-{}", std::process::id()));
        let _ = std::fs::remove_file(&mark);
        let script = format!(
            "(trap '' PIPE; while echo more >&2 2>/dev/null; do sleep 0.05; done; echo closed > {}) & exit 0",
            mark.display()
        );
        let mut program = sh(&script);
        let (status, _) = stderr_until_exit(&mut program, 1024).unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !mark.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let closed = std::fs::read_to_string(&mark);
        let _ = std::fs::remove_file(&mark);
        assert_eq!(
            closed.ok().as_deref(),
            Some("closed\n"),
            "the pipe is still open"
        );
    }

    #[test]
    fn a_program_that_says_more_than_the_pipe_holds_is_not_blocked_and_is_cut_at_the_cap() {
        let mut program = sh("head -c 1000000 /dev/zero >&2");
        let (status, said) = stderr_until_exit(&mut program, 1000).unwrap();
        assert!(status.success());
        assert_eq!(said.len(), 1000);
    }
}
