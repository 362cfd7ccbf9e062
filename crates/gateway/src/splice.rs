//! Relaying a passed connection with the kernel's zero-copy path:
//! `splice(2)` from one socket into a pipe and from the pipe into the
//! other socket, so that the bytes never come up to the gateway.

use crate::flows::FlowCounts;
use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The most bytes moved by one call (a pipe's default capacity is 64 KiB).
const CHUNK: usize = 64 * 1024;

/// Relays between `a` (the sandbox's side) and `b` until both directions
/// are closed; an end of one direction is passed on as a half-close. The
/// bytes are counted in `counts` as they pass (also those of a relay cut
/// short).
pub async fn relay(a: &TcpStream, b: &TcpStream, counts: &FlowCounts) -> io::Result<()> {
    tokio::try_join!(one_way(a, b, &counts.up), one_way(b, a, &counts.down))?;
    Ok(())
}

/// Moves bytes from `from` to `to` until `from` ends; then ends `to`'s
/// writing side.
async fn one_way(from: &TcpStream, to: &TcpStream, counted: &AtomicU64) -> io::Result<()> {
    let flags = PipeFlags::CLOEXEC | PipeFlags::NONBLOCK;
    let (pipe_r, pipe_w): (OwnedFd, OwnedFd) = pipe_with(flags)?;
    let moves = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from, None, &pipe_w, None, CHUNK, moves).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // The sender is done: so is the receiver's reading side,
            // once what it has is read.
            socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write)?;
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(&pipe_r, None, to, None, left, moves).map_err(io::Error::from)
            }) {
                Ok(m) => {
                    left -= m;
                    counted.fetch_add(m as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
