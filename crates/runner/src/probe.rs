//! Probes from a sandbox's point of view: from its slot's network
//! namespace (its address, its routes, its rules), without any tool inside
//! the sandbox. A name is resolved by the sandbox's own DNS service on its
//! gateway (so a refusal shows, and an answer admits as it would for the
//! sandbox), then a TCP connection is tried.
//!
//! Denied packets are dropped, so "unreachable" is a connection that got
//! no answer in time; a refused connection (a reset from the destination)
//! got there and counts as reachable.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
pub use sandgate_contract::{Observed, ProbeTarget};
use sandgate_dns::protocol::{addresses, extended_error, upstream_query, Question};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

/// How long a connection or a DNS answer is waited for.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Resolves `name` (A, then AAAA if there is no A) through the DNS service
/// on `gateway`. `Err` carries why there is no address.
fn resolve(gateway: IpAddr, name: &str) -> Result<Vec<IpAddr>, String> {
    for qtype in [RecordType::A, RecordType::AAAA] {
        let question = Question {
            name: name.trim_end_matches('.').to_string(),
            qtype,
        };
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
        let id = NEXT.fetch_add(40_503, std::sync::atomic::Ordering::Relaxed);
        let query = upstream_query(&question.name, qtype, id)
            .ok_or_else(|| format!("{name:?} is not a DNS name"))?;
        let bind = if gateway.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(PROBE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        sock.send_to(&query, SocketAddr::new(gateway, 53))
            .map_err(|e| format!("DNS query not sent: {e}"))?;
        let mut buf = [0u8; 4096];
        let n = sock
            .recv(&mut buf)
            .map_err(|_| "DNS: no answer (DNS itself is blocked)".to_string())?;
        let answer = Message::from_vec(&buf[..n]).map_err(|e| format!("DNS: bad answer: {e}"))?;
        if answer.metadata.id != id {
            return Err("DNS: an answer to another query".into());
        }
        match answer.metadata.response_code {
            ResponseCode::NoError => {}
            ResponseCode::Refused => {
                let why = extended_error(&answer).map(|(_, t)| t).unwrap_or_default();
                return Err(format!("DNS refused: {why}")
                    .trim_end_matches(": ")
                    .to_string());
            }
            code => return Err(format!("DNS: {code}")),
        }
        let found: Vec<IpAddr> = addresses(&answer, &question)
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        if !found.is_empty() {
            return Ok(found);
        }
    }
    Err("DNS: no address".into())
}

/// Probes `target` from the current network namespace, whose DNS service
/// is on `gateway`.
pub fn probe(gateway: IpAddr, target: &ProbeTarget) -> Observed {
    let resolved = match target.host.parse::<IpAddr>() {
        Ok(ip) => Ok(vec![ip]),
        Err(_) => resolve(gateway, &target.host),
    };
    let addresses = match resolved {
        Ok(a) => a,
        Err(detail) => {
            return Observed {
                target: target.clone(),
                addresses: Vec::new(),
                reachable: false,
                detail,
            }
        }
    };
    let to = SocketAddr::new(addresses[0], target.port);
    let (reachable, detail) = match TcpStream::connect_timeout(&to, PROBE_TIMEOUT) {
        Ok(_) => (true, format!("connected to {to}")),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            (true, format!("refused by the destination {to}"))
        }
        Err(e) if e.kind() == io::ErrorKind::TimedOut => (false, format!("no answer from {to}")),
        Err(e) => (false, format!("{to}: {e}")),
    };
    Observed {
        target: target.clone(),
        addresses,
        reachable,
        detail,
    }
}
