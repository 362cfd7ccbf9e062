//! Forwarding to upstream resolvers: UDP first, TCP when the answer was
//! truncated, the next resolver when one does not answer in time.

use hickory_proto::op::Message;
use std::io::{self, Read, Write};
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
    /// Sends `query` (wire format) and returns the answer, or the last error.
    pub fn resolve(&self, query: &[u8], id: u16) -> io::Result<Message> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no upstream resolver configured");
        for server in &self.servers {
            match self.udp(*server, query, id) {
                Ok(answer) if answer.metadata.truncation => match self.tcp(*server, query, id) {
                    Ok(a) => return Ok(a),
                    Err(e) => last = e,
                },
                Ok(answer) => return Ok(answer),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn udp(&self, server: SocketAddr, query: &[u8], id: u16) -> io::Result<Message> {
        let bind: SocketAddr = if server.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        // A socket of its own per query: a fresh port, and only this
        // server's answers.
        let sock = UdpSocket::bind(bind)?;
        sock.connect(server)?;
        sock.set_read_timeout(Some(self.timeout))?;
        sock.send(query)?;
        let mut buf = [0u8; 4096];
        loop {
            let n = sock.recv(&mut buf)?;
            if let Ok(m) = Message::from_vec(&buf[..n]) {
                if m.metadata.id == id {
                    return Ok(m);
                }
            }
        }
    }

    fn tcp(&self, server: SocketAddr, query: &[u8], id: u16) -> io::Result<Message> {
        let mut conn = TcpStream::connect_timeout(&server, self.timeout)?;
        conn.set_read_timeout(Some(self.timeout))?;
        let len = u16::try_from(query.len()).map_err(|_| io::Error::other("query too long"))?;
        conn.write_all(&len.to_be_bytes())?;
        conn.write_all(query)?;
        let mut len = [0u8; 2];
        conn.read_exact(&mut len)?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        conn.read_exact(&mut buf)?;
        let m = Message::from_vec(&buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if m.metadata.id != id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "answer to another query",
            ));
        }
        Ok(m)
    }
}
