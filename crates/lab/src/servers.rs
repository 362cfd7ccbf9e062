//! The world's servers: plain sockets on threads, bound in the world
//! namespace on every address (dual-stack), stopped by a flag.

use crate::addrs::{TCP_ECHO, TCP_STREAM, UDP_ECHO, WORLD_ADDRESSES};
use sandgate_netns::Netns;
use socket2::{Domain, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often a server looks at the stop flag.
const POLL: Duration = Duration::from_millis(20);

fn any(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
}

fn dual_stack(ty: Type, port: u16) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV6, ty, None)?;
    s.set_only_v6(false)?;
    s.set_reuse_address(true)?;
    s.bind(&any(port).into())?;
    Ok(s)
}

/// Starts the servers in `world`; they stop when `stop` is set.
pub fn start(world: &Netns, stop: &Arc<AtomicBool>) -> io::Result<Vec<JoinHandle<()>>> {
    let (echo, stream, udp) = world.run(|| {
        let echo = dual_stack(Type::STREAM, TCP_ECHO)?;
        echo.listen(128)?;
        let stream = dual_stack(Type::STREAM, TCP_STREAM)?;
        stream.listen(128)?;
        // One UDP socket per address, so that each answer comes from the
        // address that was asked.
        let mut udp = Vec::new();
        for net in WORLD_ADDRESSES {
            let addr: IpAddr = net
                .split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| io::Error::other(format!("bad lab address {net}")))?;
            udp.push(UdpSocket::bind(SocketAddr::new(addr, UDP_ECHO))?);
        }
        Ok((TcpListener::from(echo), TcpListener::from(stream), udp))
    })?;
    let mut threads = vec![
        tcp_server(echo, stop.clone(), echo_conn),
        tcp_server(stream, stop.clone(), stream_conn),
    ];
    for sock in udp {
        threads.push(udp_echo(sock, stop.clone())?);
    }
    Ok(threads)
}

fn tcp_server(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    handle: fn(TcpStream, Arc<AtomicBool>),
) -> JoinHandle<()> {
    thread::spawn(move || {
        if listener.set_nonblocking(true).is_err() {
            return;
        }
        let mut conns = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((conn, _)) => {
                    let stop = stop.clone();
                    conns.push(thread::spawn(move || {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(POLL));
                        let _ = conn.set_write_timeout(Some(POLL));
                        handle(conn, stop)
                    }));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
                Err(_) => thread::sleep(POLL),
            }
        }
        for c in conns {
            let _ = c.join();
        }
    })
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Echoes until the peer closes.
fn echo_conn(mut conn: TcpStream, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if retryable(&e) => {}
            Err(_) => return,
        }
    }
}

/// Sends bytes until the peer closes or stops reading for good.
fn stream_conn(mut conn: TcpStream, stop: Arc<AtomicBool>) {
    let chunk = [b'x'; 4096];
    while !stop.load(Ordering::SeqCst) {
        match conn.write(&chunk) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if retryable(&e) => {}
            Err(_) => return,
        }
    }
}

fn udp_echo(sock: UdpSocket, stop: Arc<AtomicBool>) -> io::Result<JoinHandle<()>> {
    sock.set_read_timeout(Some(POLL))?;
    Ok(thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    }))
}
