//! Forwarding to upstream resolvers: UDP first, TCP when the answer was
//! truncated, the next resolver when one does not answer in time.

use crate::protocol::{answers, read_framed, write_framed, Question};
use hickory_proto::op::Message;
use std::io;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

/// The upstream resolvers and how long to wait for each.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Resolvers, tried in order.
    pub servers: Vec<SocketAddr>,
    /// How long to wait for one answer.
    pub timeout: Duration,
}

impl Upstream {
    /// The resolvers of `resolv.conf` text (its `nameserver` lines), the
    /// host's own resolver configuration: the default upstream.
    pub fn from_resolv_conf(text: &str, timeout: Duration) -> Upstream {
        let servers = text
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                match (words.next(), words.next()) {
                    (Some("nameserver"), Some(addr)) => {
                        // A zone index (fe80::1%eth0) does not survive here.
                        addr.parse::<std::net::IpAddr>().ok()
                    }
                    _ => None,
                }
            })
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
        Upstream { servers, timeout }
    }

    /// The host's resolvers, from `/etc/resolv.conf`.
    pub fn system(timeout: Duration) -> io::Result<Upstream> {
        let text = std::fs::read_to_string("/etc/resolv.conf")?;
        Ok(Upstream::from_resolv_conf(&text, timeout))
    }

    /// Sends `query` (wire format, with id `id`, asking `question`) and
    /// returns the first answer to it, or the last error. Each resolver
    /// gets `timeout` in all.
    pub fn resolve(&self, query: &[u8], id: u16, question: &Question) -> io::Result<Message> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no upstream resolver configured");
        for server in &self.servers {
            match self.udp(*server, query, id, question) {
                Ok(answer) if answer.metadata.truncation => {
                    match self.tcp(*server, query, id, question) {
                        Ok(a) => return Ok(a),
                        Err(e) => last = e,
                    }
                }
                Ok(answer) => return Ok(answer),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn udp(
        &self,
        server: SocketAddr,
        query: &[u8],
        id: u16,
        question: &Question,
    ) -> io::Result<Message> {
        let bind: SocketAddr = if server.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        // A socket of its own per query: a fresh port, and only this
        // server's answers.
        let sock = UdpSocket::bind(bind)?;
        sock.connect(server)?;
        sock.send(query)?;
        let deadline = std::time::Instant::now() + self.timeout;
        let mut buf = vec![0u8; 65535];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "upstream did not answer",
                ));
            }
            sock.set_read_timeout(Some(left))?;
            let n = sock.recv(&mut buf)?;
            if let Ok(m) = Message::from_vec(&buf[..n]) {
                if m.metadata.id == id && answers(&m, question) {
                    return Ok(m);
                }
            }
        }
    }

    fn tcp(
        &self,
        server: SocketAddr,
        query: &[u8],
        id: u16,
        question: &Question,
    ) -> io::Result<Message> {
        let mut conn = TcpStream::connect_timeout(&server, self.timeout)?;
        conn.set_read_timeout(Some(self.timeout))?;
        write_framed(&mut conn, query)?;
        let m = Message::from_vec(&read_framed(&mut conn)?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if m.metadata.id != id || !answers(&m, question) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "answer to another query",
            ));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_the_upstreams() {
        let text = "# comment\nsearch lab.example\nnameserver 192.0.2.53\nnameserver 2001:db8::53\nnameserver fe80::1%eth0\noptions ndots:1\n";
        let u = Upstream::from_resolv_conf(text, Duration::from_secs(1));
        assert_eq!(
            u.servers,
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
    }
}
