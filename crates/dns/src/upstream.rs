//! Forwarding to upstream resolvers: a pool of UDP sockets made once and
//! shared by every query (no socket per query), TCP when an answer was
//! truncated, the next resolver when one does not answer in time.
//!
//! An answer is taken only from the resolver asked, with the query's id and
//! its question spelled exactly as sent: the name of every query goes out
//! in a case of its own drawn at random (the "0x20" defence), so a forged
//! answer must guess the id, the port of one of the pool's sockets and the
//! case of every letter. Anything else arriving on a pool socket is
//! dropped and counted.

use crate::protocol::{answers, upstream_query, Question};
use hickory_proto::op::Message;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;

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
}

/// A random `u16`, and random bits for the case of a name.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if getrandom::fill(&mut b).is_err() {
        // Without the kernel's randomness, the clock's nanoseconds: weak,
        // but a query still goes out.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8;
        }
    }
    b
}

/// `name` with each letter's case drawn at random.
pub fn random_case(name: &str) -> String {
    let bits: [u8; 32] = random_bytes();
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            let upper = bits[(i / 8) % bits.len()] >> (i % 8) & 1 == 1;
            if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// A query waiting for its answer on a pool socket.
struct Waiter {
    server: SocketAddr,
    /// The name as sent, in its random case, and the type.
    name: String,
    qtype: hickory_proto::rr::RecordType,
    answer: oneshot::Sender<Message>,
}

/// One socket of the pool and the queries waiting on it, by id.
struct PoolSocket {
    socket: UdpSocket,
    waiting: Mutex<HashMap<u16, Waiter>>,
}

/// What the pool has seen.
#[derive(Debug, Default)]
pub struct PoolCounters {
    /// Datagrams on a pool socket that answered no waiting query (late,
    /// from another address, another id or another spelling): dropped.
    pub unmatched: AtomicU64,
}

/// The pool: sockets of both families, made where the service runs (the
/// host's network namespace), each read by a task of its own.
pub struct Pool {
    upstream: Upstream,
    v4: Vec<Arc<PoolSocket>>,
    v6: Vec<Arc<PoolSocket>>,
    next: AtomicUsize,
    counters: Arc<PoolCounters>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Binds `size` sockets per family (the families the upstream servers
    /// use) and starts their readers. Call inside the runtime, in the
    /// namespace the queries must leave from.
    pub fn start(upstream: Upstream, size: usize) -> io::Result<Arc<Pool>> {
        let bind = |any: SocketAddr| -> io::Result<Vec<Arc<PoolSocket>>> {
            (0..size.max(1))
                .map(|_| {
                    let std = std::net::UdpSocket::bind(any)?;
                    std.set_nonblocking(true)?;
                    Ok(Arc::new(PoolSocket {
                        socket: UdpSocket::from_std(std)?,
                        waiting: Mutex::new(HashMap::new()),
                    }))
                })
                .collect()
        };
        let wants = |v4: bool| upstream.servers.iter().any(|s| s.is_ipv4() == v4);
        let v4 = if wants(true) {
            bind(SocketAddr::from(([0, 0, 0, 0], 0)))?
        } else {
            Vec::new()
        };
        let v6 = if wants(false) {
            bind(SocketAddr::from(([0u16; 8], 0)))?
        } else {
            Vec::new()
        };
        let counters = Arc::new(PoolCounters::default());
        for s in v4.iter().chain(&v6) {
            tokio::spawn(read(s.clone(), counters.clone()));
        }
        Ok(Arc::new(Pool {
            upstream,
            v4,
            v6,
            next: AtomicUsize::new(0),
            counters,
        }))
    }

    /// What the pool has seen.
    pub fn counters(&self) -> &PoolCounters {
        &self.counters
    }

    /// The answer to `question` from the first resolver that gives one in
    /// time, or the last error.
    pub async fn resolve(&self, question: &Question) -> io::Result<Message> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no upstream resolver configured");
        for server in &self.upstream.servers {
            match self.udp(*server, question).await {
                Ok(answer) if answer.metadata.truncation => {
                    match self.tcp(*server, question).await {
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

    fn socket(&self, server: SocketAddr) -> io::Result<Arc<PoolSocket>> {
        let family = if server.is_ipv4() { &self.v4 } else { &self.v6 };
        if family.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("no pool socket for {server}"),
            ));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % family.len();
        Ok(family[i].clone())
    }

    async fn udp(&self, server: SocketAddr, question: &Question) -> io::Result<Message> {
        let sock = self.socket(server)?;
        let name = random_case(&question.name);
        let qtype = question.qtype;
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut waiting = sock.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let mut id = u16::from_ne_bytes(random_bytes());
            while waiting.contains_key(&id) {
                id = id.wrapping_add(1);
            }
            waiting.insert(
                id,
                Waiter {
                    server,
                    name: name.clone(),
                    qtype,
                    answer: tx,
                },
            );
            id
        };
        // The waiter leaves the table whatever happens next.
        struct Leave<'a>(&'a PoolSocket, u16);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0
                    .waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&self.1);
            }
        }
        let _leave = Leave(&sock, id);
        let query = upstream_query(&name, question.qtype, id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unencodable question"))?;
        sock.socket.send_to(&query, server).await?;
        match tokio::time::timeout(self.upstream.timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(io::Error::other("the pool's reader stopped")),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{server} did not answer in {:?}", self.upstream.timeout),
            )),
        }
    }

    async fn tcp(&self, server: SocketAddr, question: &Question) -> io::Result<Message> {
        let exchange = async {
            let name = random_case(&question.name);
            let id = u16::from_ne_bytes(random_bytes());
            let query = upstream_query(&name, question.qtype, id).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "unencodable question")
            })?;
            let mut conn = TcpStream::connect(server).await?;
            write_framed(&mut conn, &query).await?;
            let m = Message::from_vec(&read_framed(&mut conn).await?)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            if m.metadata.id != id || !answers(&m, &name, question.qtype) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "an answer to another query",
                ));
            }
            Ok(m)
        };
        tokio::time::timeout(self.upstream.timeout, exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upstream TCP timed out"))?
    }
}

/// Reads a pool socket and hands each answer to its waiter.
async fn read(sock: Arc<PoolSocket>, counters: Arc<PoolCounters>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, from) = match sock.socket.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP errors for an earlier send (a resolver's port closed)
            // come back here; the query they belong to times out.
            Err(_) => continue,
        };
        let Ok(m) = Message::from_vec(&buf[..n]) else {
            counters.unmatched.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let mut waiting = sock.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let matches = waiting
            .get(&m.metadata.id)
            .is_some_and(|w| w.server == from && answers(&m, &w.name, w.qtype));
        if !matches {
            counters.unmatched.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if let Some(w) = waiting.remove(&m.metadata.id) {
            // The asker may have given up (its deadline): nothing to do.
            let _unwanted = w.answer.send(m);
        }
    }
}

/// Reads one message of DNS over TCP (a two-byte length, the message).
pub async fn read_framed<R: AsyncReadExt + Unpin>(conn: &mut R) -> io::Result<Vec<u8>> {
    let len = conn.read_u16().await?;
    let mut message = vec![0u8; usize::from(len)];
    conn.read_exact(&mut message).await?;
    Ok(message)
}

/// Writes one message of DNS over TCP.
pub async fn write_framed<W: AsyncWriteExt + Unpin>(
    conn: &mut W,
    message: &[u8],
) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::other("a DNS message longer than 65535 bytes"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    conn.write_all(&framed).await
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

    #[test]
    fn random_case_changes_only_the_case() {
        let name = "host-1.example.com";
        let mixed: Vec<String> = (0..8).map(|_| random_case(name)).collect();
        for m in &mixed {
            assert_eq!(m.to_ascii_lowercase(), name);
        }
        // 15 letters: eight draws all alike would be a broken generator.
        assert!(mixed.iter().any(|m| m != &mixed[0]), "{mixed:?}");
    }
}
