//! Learning when a sandbox's init dies: its pid is held by a pidfd (so a
//! reused pid is never mistaken for it), and every held pidfd is in one
//! epoll set, which says at once which inits have exited. A sandbox whose
//! init died is reported, never started again behind its owner's back.

use crate::procfs::Held;
use crate::Runtime;
use rustix::event::epoll;
use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::Duration;

/// The inits being watched.
pub struct InitWatch {
    epoll: OwnedFd,
    held: Mutex<Watched>,
}

#[derive(Default)]
struct Watched {
    next: u64,
    by_key: HashMap<u64, (String, Held)>,
    keys: HashMap<String, u64>,
}

impl std::fmt::Debug for InitWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitWatch").finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Watched>) -> std::sync::MutexGuard<'_, Watched> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl InitWatch {
    /// An empty watch.
    pub fn new() -> io::Result<InitWatch> {
        Ok(InitWatch {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            held: Mutex::new(Watched::default()),
        })
    }

    /// Watches sandbox `id`'s init; `false` if it does not run (nothing to
    /// watch). A failure to look (out of file descriptors, an unreadable
    /// process list) is an error, never taken for a death.
    pub fn watch(&self, runtime: &Runtime, id: &str) -> io::Result<bool> {
        let Some(pid) = runtime.init_pid(id)? else {
            return Ok(false);
        };
        let Some(held) = Held::try_open(pid)? else {
            return Ok(false);
        };
        self.forget(id);
        let mut w = lock(&self.held);
        w.next += 1;
        let key = w.next;
        epoll::add(
            &self.epoll,
            &held,
            epoll::EventData::new_u64(key),
            epoll::EventFlags::IN,
        )?;
        w.by_key.insert(key, (id.to_string(), held));
        w.keys.insert(id.to_string(), key);
        Ok(true)
    }

    /// Stops watching sandbox `id` (before it is stopped or deleted on
    /// purpose: that exit is no death).
    pub fn forget(&self, id: &str) {
        let mut w = lock(&self.held);
        if let Some(key) = w.keys.remove(id) {
            if let Some((_, held)) = w.by_key.remove(&key) {
                // Closing the pidfd takes it out of the set anyway.
                let _ = epoll::delete(&self.epoll, &held);
            }
        }
    }

    /// Waits up to `timeout` and returns the sandboxes whose init exited
    /// (no longer watched).
    pub fn wait(&self, timeout: Duration) -> io::Result<Vec<String>> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
        let timeout = rustix::event::Timespec::try_from(timeout).ok();
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut events),
            timeout.as_ref(),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
        let mut w = lock(&self.held);
        let mut died = Vec::new();
        for event in &events {
            let key = event.data.u64();
            if let Some((id, held)) = w.by_key.remove(&key) {
                let _ = epoll::delete(&self.epoll, &held);
                w.keys.remove(&id);
                died.push(id);
            }
        }
        Ok(died)
    }
}
