//! The world's servers: plain sockets on threads, bound in the world
//! namespace on every address (dual-stack), stopped by a flag.

use crate::addrs::{
    DNS4, DNS6, HTTP, HTTPS, QUIC, SINK, TCP_ECHO, TCP_STREAM, UDP_ECHO, WHOAMI, WORLD_ADDRESSES,
};
use crate::dns::Zone;
use crate::http;
use sandgate_netns::Netns;
use socket2::{Domain, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::AtomicU64;
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

/// What the world serves: its DNS zone, query counter and TLS setup.
pub struct World {
    /// The authoritative zone.
    pub zone: Arc<Zone>,
    /// DNS queries received, over UDP and TCP.
    pub dns_queries: Arc<AtomicU64>,
    /// The HTTPS server's configuration.
    pub tls: Arc<rustls::ServerConfig>,
}

type Handler = Arc<dyn Fn(TcpStream, &AtomicBool) + Send + Sync>;

/// Starts the servers in `world_ns`; they stop when `stop` is set.
pub fn start(
    world_ns: &Netns,
    world: &World,
    stop: &Arc<AtomicBool>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let (tcp, udp, dns_udp, dns_tcp) = world_ns.run(|| {
        let mut tcp = Vec::new();
        for port in [TCP_ECHO, TCP_STREAM, HTTP, HTTPS, WHOAMI, SINK] {
            let s = dual_stack(Type::STREAM, port)?;
            s.listen(128)?;
            tcp.push(TcpListener::from(s));
        }
        // One UDP socket per address, so that each answer comes from the
        // address that was asked.
        // The echo, and a QUIC-shaped listener on 443 (it echoes too: a
        // test sees whether a datagram to it got through).
        let mut udp = Vec::new();
        for net in WORLD_ADDRESSES {
            let addr: IpAddr = net
                .split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| io::Error::other(format!("bad lab address {net}")))?;
            for port in [UDP_ECHO, QUIC] {
                udp.push(UdpSocket::bind(SocketAddr::new(addr, port))?);
            }
        }
        let mut dns_udp = Vec::new();
        let mut dns_tcp = Vec::new();
        for addr in [DNS4, DNS6] {
            dns_udp.push(UdpSocket::bind(SocketAddr::new(addr, 53))?);
            let l = TcpListener::bind(SocketAddr::new(addr, 53))?;
            dns_tcp.push(l);
        }
        Ok((tcp, udp, dns_udp, dns_tcp))
    })?;
    let tls = world.tls.clone();
    let handlers: [Handler; 6] = [
        Arc::new(echo_conn),
        Arc::new(stream_conn),
        Arc::new(|mut c: TcpStream, _: &AtomicBool| {
            let peer = c.peer_addr().ok().map(|a| a.ip());
            let _ = http::serve(&mut c, peer);
        }),
        Arc::new(move |c: TcpStream, _: &AtomicBool| {
            if let Ok(conn) = rustls::ServerConnection::new(tls.clone()) {
                let peer = c.peer_addr().ok().map(|a| a.ip());
                let mut stream = rustls::StreamOwned::new(conn, c);
                let _ = http::serve(&mut stream, peer);
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
        }),
        Arc::new(whoami_conn),
        Arc::new(sink_conn),
    ];
    let mut threads = Vec::new();
    for (listener, handler) in tcp.into_iter().zip(handlers) {
        threads.push(tcp_server(listener, stop.clone(), handler));
    }
    for sock in udp {
        threads.push(udp_echo(sock, stop.clone())?);
    }
    for sock in dns_udp {
        threads.push(dns_udp_server(
            sock,
            world.zone.clone(),
            world.dns_queries.clone(),
            stop.clone(),
        )?);
    }
    for listener in dns_tcp {
        let (zone, count) = (world.zone.clone(), world.dns_queries.clone());
        let handler: Handler = Arc::new(move |c, _| dns_tcp_conn(c, &zone, &count));
        threads.push(tcp_server(listener, stop.clone(), handler));
    }
    Ok(threads)
}

fn dns_udp_server(
    sock: UdpSocket,
    zone: Arc<Zone>,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    sock.set_read_timeout(Some(POLL))?;
    Ok(thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let Some(answer) = zone.answer(&buf[..n], &count) else {
                    continue;
                };
                match (Zone::delay(&buf[..n]), sock.try_clone()) {
                    // A slow name is answered later, by a thread of its own.
                    (Some(delay), Ok(late)) => {
                        thread::spawn(move || {
                            thread::sleep(delay);
                            let _ = late.send_to(&answer, from);
                        });
                    }
                    _ => {
                        let _ = sock.send_to(&answer, from);
                    }
                }
            }
        }
    }))
}

/// DNS over TCP: two-byte length, message; as many as the client sends.
fn dns_tcp_conn(mut conn: TcpStream, zone: &Zone, count: &AtomicU64) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    loop {
        let mut len = [0u8; 2];
        if conn.read_exact(&mut len).is_err() {
            return;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if conn.read_exact(&mut msg).is_err() {
            return;
        }
        let Some(answer) = zone.answer(&msg, count) else {
            return;
        };
        let Ok(n) = u16::try_from(answer.len()) else {
            return;
        };
        if conn.write_all(&n.to_be_bytes()).is_err() || conn.write_all(&answer).is_err() {
            return;
        }
    }
}

fn tcp_server(listener: TcpListener, stop: Arc<AtomicBool>, handle: Handler) -> JoinHandle<()> {
    thread::spawn(move || {
        // `accept` waits at most `POLL` (Linux applies the receive timeout
        // to it), so a connection is taken at once and the stop flag is
        // still seen; a sleep between non-blocking tries would add up to
        // `POLL` to every connection's first answer.
        if socket2::SockRef::from(&listener)
            .set_read_timeout(Some(POLL))
            .is_err()
        {
            return;
        }
        let mut conns = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((conn, _)) => {
                    let stop = stop.clone();
                    let handle = handle.clone();
                    conns.push(thread::spawn(move || {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(POLL));
                        let _ = conn.set_write_timeout(Some(POLL));
                        handle(conn, &stop)
                    }));
                }
                Err(e) if retryable(&e) => {}
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
fn echo_conn(mut conn: TcpStream, stop: &AtomicBool) {
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

/// Reads until the peer's end of stream, then writes the count.
fn sink_conn(mut conn: TcpStream, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    // From the first byte to the last: the rate as the sink saw it,
    // without the connection's setup or the answer's way back.
    let mut first: Option<std::time::Instant> = None;
    let mut last = std::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        match conn.read(&mut buf) {
            Ok(0) => {
                let micros = first.map_or(0, |f| last.duration_since(f).as_micros());
                let _ = writeln!(conn, "{total} {micros}");
                return;
            }
            Ok(n) => {
                let now = std::time::Instant::now();
                first.get_or_insert(now);
                last = now;
                total += n as u64;
            }
            Err(e) if retryable(&e) => {}
            Err(_) => return,
        }
    }
}

/// Writes the peer's address and a newline.
fn whoami_conn(mut conn: TcpStream, _: &AtomicBool) {
    if let Ok(peer) = conn.peer_addr() {
        let _ = writeln!(conn, "{}", peer.ip().to_canonical());
    }
}

/// Sends bytes until the peer closes or stops reading for good.
fn stream_conn(mut conn: TcpStream, stop: &AtomicBool) {
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
