//! Probes from inside a slot's namespace: does a TCP connection, a UDP
//! echo or an ICMP echo get through? No tool inside the sandbox is needed;
//! the probe's sockets are opened in the slot's namespace by a thread of
//! ours, so they leave through the slot's veth like the sandbox's own.

use sandgate_netns::Netns;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// A TCP connection (a SYN answered by SYN-ACK or RST got through).
    Tcp,
    /// A UDP datagram to an echo service, answered.
    Udp,
    /// An ICMP (or ICMPv6) echo request, answered.
    Icmp,
}

/// Whether `proto` to `dest` (and `port`, for TCP and UDP) gets an answer
/// from inside `ns` within `timeout`.
pub fn reachable(
    ns: &Netns,
    proto: Proto,
    dest: IpAddr,
    port: u16,
    timeout: Duration,
) -> io::Result<bool> {
    ns.run(|| match proto {
        Proto::Tcp => tcp(SocketAddr::new(dest, port), timeout),
        Proto::Udp => udp(SocketAddr::new(dest, port), timeout),
        Proto::Icmp => icmp(dest, timeout),
    })
}

fn tcp(dest: SocketAddr, timeout: Duration) -> io::Result<bool> {
    match TcpStream::connect_timeout(&dest, timeout) {
        Ok(_) => Ok(true),
        // A reset came back: the packet reached a host.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::HostUnreachable
                    | io::ErrorKind::NetworkUnreachable
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn udp(dest: SocketAddr, timeout: Duration) -> io::Result<bool> {
    let bind: SocketAddr = if dest.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| io::Error::other("bind address"))?;
    let sock = UdpSocket::bind(bind)?;
    sock.connect(dest)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send(b"sandgate-probe")?;
    let mut buf = [0u8; 64];
    match sock.recv(&mut buf) {
        Ok(n) => Ok(&buf[..n] == b"sandgate-probe"),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The Internet checksum (RFC 1071) of ICMP messages and IPv4 headers.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop above folded `sum` into 16 bits.
    !u16::try_from(sum).unwrap_or(0)
}

fn icmp(dest: IpAddr, timeout: Duration) -> io::Result<bool> {
    let (domain, proto, request, reply) = match dest {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8),
    };
    let sock = Socket::new(domain, Type::RAW, Some(proto))?;
    let id = std::process::id().to_be_bytes();
    let id = [id[2], id[3]];
    let mut packet = [request, 0, 0, 0, id[0], id[1], 0, 1, b's', b'g', b'p', b'r'];
    if dest.is_ipv4() {
        let sum = checksum(&packet).to_be_bytes();
        packet[2..4].copy_from_slice(&sum);
    } // The kernel computes ICMPv6 checksums itself.
      // A raw socket reads and writes like a datagram socket; the standard
      // library's type does that without uninitialised buffers.
    let sock = UdpSocket::from(sock);
    sock.send_to(&packet, SocketAddr::new(dest, 0))?;
    let deadline = Instant::now() + timeout;
    let mut data = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        sock.set_read_timeout(Some(left))?;
        let (n, from) = match sock.recv_from(&mut data) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false)
            }
            Err(e) => return Err(e),
        };
        let data = &data[..n];
        // IPv4 raw sockets deliver the IP header too; IPv6 ones do not.
        let body = match dest {
            IpAddr::V4(_) => data
                .get(usize::from(data.first().map_or(0, |b| b & 0x0f)) * 4..)
                .unwrap_or(&[]),
            IpAddr::V6(_) => data,
        };
        if from.ip() == dest && body.len() >= 8 && body[0] == reply && body[4..6] == id {
            return Ok(true);
        }
    }
}
