//! DNS messages, without transport: the answers the service builds and the
//! checks it makes on upstream answers. Message types are hickory's.

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use std::net::IpAddr;

/// The EDNS option code of Extended DNS Errors (RFC 8914).
pub const EDE_OPTION: u16 = 15;
/// The Extended DNS Error INFO-CODE "Other" (RFC 8914, 4.1).
pub const EDE_OTHER: u16 = 0;
/// The Extended DNS Error INFO-CODE "Blocked" (RFC 8914, 4.16).
pub const EDE_BLOCKED: u16 = 15;
/// The Extended DNS Error INFO-CODE "Network Error" (RFC 8914, 4.24).
pub const EDE_NETWORK_ERROR: u16 = 23;

/// A query as the service sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The name asked, lowercase, without the trailing dot.
    pub name: String,
    /// The record type asked.
    pub qtype: RecordType,
}

/// Why a query is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unserved {
    /// Not a standard query of class IN for one ordinary type.
    NotImplemented,
    /// A name with a byte outside letters, digits, `-` and `_` in a label
    /// (an escaped dot, a space, a control byte): refused rather than
    /// matched against names it does not mean.
    BadName,
}

/// Parses a query. `None` for bytes that are no DNS query at all (no
/// answer is owed); `Err` for a query the service will not serve.
pub fn parse_query(bytes: &[u8]) -> Option<(Message, Result<Question, Unserved>)> {
    let message = Message::from_vec(bytes).ok()?;
    if message.metadata.message_type != MessageType::Query {
        return None;
    }
    if message.metadata.op_code != OpCode::Query || message.queries.len() != 1 {
        return Some((message, Err(Unserved::NotImplemented)));
    }
    let q = &message.queries[0];
    let qtype = q.query_type();
    if q.query_class() != DNSClass::IN
        || matches!(
            qtype,
            RecordType::ANY | RecordType::AXFR | RecordType::IXFR | RecordType::OPT
        )
    {
        return Some((message, Err(Unserved::NotImplemented)));
    }
    let mut labels = Vec::new();
    for label in q.name().iter() {
        let ok = !label.is_empty()
            && label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
        if !ok {
            return Some((message, Err(Unserved::BadName)));
        }
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
    }
    let question = Question {
        name: labels.join("."),
        qtype,
    };
    Some((message, Ok(question)))
}

/// The query the service sends upstream for `name` (spelled as it is to
/// be sent: in a random case) and `qtype`: built afresh, with its own id,
/// recursion desired and a 1232-byte EDNS size, so that nothing of the
/// sandbox's own message (flags, options, extra records) travels on or
/// shapes what is cached.
pub fn upstream_query(name: &str, qtype: RecordType, id: u16) -> Option<Vec<u8>> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    let name = Name::from_ascii(format!("{name}.")).ok()?;
    m.add_query(Query::query(name, qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.edns = Some(edns);
    m.to_vec().ok()
}

/// Whether `answer` is a response to the single question `name` (spelled
/// exactly as it was sent, letter case included) of type `qtype`.
pub fn answers(answer: &Message, name: &str, qtype: RecordType) -> bool {
    answer.metadata.message_type == MessageType::Response
        && answer.queries.len() == 1
        && answer.queries[0].query_type() == qtype
        && answer.queries[0].name().to_ascii().trim_end_matches('.') == name
}

/// `answer` made the reply to `request`: its id, and its question as the
/// sandbox spelled it (a resolver that randomizes the case of its queries
/// drops an answer whose question comes back otherwise).
pub fn reply_to(mut answer: Message, request: &Message) -> Vec<u8> {
    answer.metadata.id = request.metadata.id;
    answer.queries = request.queries.clone();
    answer.to_vec().unwrap_or_default()
}

/// An empty answer to `request` with `code`.
fn response(request: &Message, code: ResponseCode) -> Message {
    let mut response = Message::query();
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.response_code = code;
    response.add_queries(request.queries.iter().cloned());
    response
}

/// A REFUSED answer to `request` carrying an Extended DNS Error "Blocked"
/// whose text says why.
pub fn refused(request: &Message, why: &str) -> Vec<u8> {
    explained(request, ResponseCode::Refused, EDE_BLOCKED, why)
}

/// An answer to `request` that only carries `code` (NOTIMP).
pub fn failure(request: &Message, code: ResponseCode) -> Vec<u8> {
    response(request, code).to_vec().unwrap_or_default()
}

/// An answer to `request` with `code` and an Extended DNS Error
/// `info_code` whose text says why, so that a program (and `dig`) shows
/// the cause, not a bare SERVFAIL.
pub fn explained(request: &Message, code: ResponseCode, info_code: u16, why: &str) -> Vec<u8> {
    let mut response = response(request, code);
    let mut data = info_code.to_be_bytes().to_vec();
    data.extend_from_slice(why.as_bytes());
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.options_mut()
        .insert(EdnsOption::Unknown(EDE_OPTION, data));
    response.edns = Some(edns);
    response.to_vec().unwrap_or_default()
}

/// The Extended DNS Error of a message, if it has one: INFO-CODE and text.
pub fn extended_error(message: &Message) -> Option<(u16, String)> {
    let edns = message.edns.as_ref()?;
    edns.options().options.iter().find_map(|(_, o)| match o {
        EdnsOption::Unknown(EDE_OPTION, data) if data.len() >= 2 => Some((
            u16::from_be_bytes([data[0], data[1]]),
            String::from_utf8_lossy(&data[2..]).into_owned(),
        )),
        _ => None,
    })
}

/// The A and AAAA addresses that answer `question`: those of the answer
/// section on the chain of CNAMEs that starts at the question's name, each
/// with its TTL. Records about other names are not addresses of this
/// question, whatever section they came in.
pub fn addresses(message: &Message, question: &Question) -> Vec<(IpAddr, u32)> {
    let owner = |r: &hickory_proto::rr::Record| {
        r.name
            .to_lowercase()
            .to_ascii()
            .trim_end_matches('.')
            .to_string()
    };
    let mut chain = vec![question.name.clone()];
    // Follow CNAMEs (bounded: a loop ends when nothing new is added).
    for _ in 0..16 {
        let next: Vec<String> = message
            .answers
            .iter()
            .filter(|r| chain.contains(&owner(r)))
            .filter_map(|r| match &r.data {
                RData::CNAME(c) => Some(
                    c.0.to_lowercase()
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_string(),
                ),
                _ => None,
            })
            .filter(|t| !chain.contains(t))
            .collect();
        if next.is_empty() {
            break;
        }
        chain.extend(next);
    }
    message
        .answers
        .iter()
        .filter(|r| chain.contains(&owner(r)))
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
            _ => None,
        })
        .collect()
}

/// Removes from the answer section every A/AAAA record whose address
/// `reject` refuses, and returns those addresses; drops the authority and
/// additional sections, which a sandbox in `restricted` or `allowlist`
/// mode is not given (addresses there are admitted never).
pub fn strip(message: &mut Message, reject: impl Fn(IpAddr) -> bool) -> Vec<IpAddr> {
    message.authorities.clear();
    message.additionals.clear();
    let mut removed = Vec::new();
    message.answers.retain(|r| {
        let addr = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => return true,
        };
        if reject(addr) {
            removed.push(addr);
            false
        } else {
            true
        }
    });
    removed
}

/// Reads one message of DNS over TCP (RFC 1035, 4.2.2: a two-byte length,
/// then the message).
pub fn read_framed(conn: &mut impl std::io::Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    conn.read_exact(&mut len)?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut message)?;
    Ok(message)
}

/// Writes one message of DNS over TCP.
pub fn write_framed(conn: &mut impl std::io::Write, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| std::io::Error::other("a DNS message longer than 65535 bytes"))?;
    conn.write_all(&len.to_be_bytes())?;
    conn.write_all(message)
}
