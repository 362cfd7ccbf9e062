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
