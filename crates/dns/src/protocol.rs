//! DNS messages, without transport: the answers the service builds and the
//! checks it makes on upstream answers. Message types are hickory's.

use hickory_proto::op::{Edns, Message, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{RData, RecordType};
use std::net::IpAddr;

/// The EDNS option code of Extended DNS Errors (RFC 8914).
pub const EDE_OPTION: u16 = 15;
/// The Extended DNS Error INFO-CODE "Blocked" (RFC 8914, 4.16).
pub const EDE_BLOCKED: u16 = 15;

/// A query as the service sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The name asked, lowercase, without the trailing dot.
    pub name: String,
    /// The record type asked.
    pub qtype: RecordType,
}

/// Parses a query; `None` for anything that is not a well-formed query
/// with exactly one question.
pub fn parse_query(bytes: &[u8]) -> Option<(Message, Question)> {
    let message = Message::from_vec(bytes).ok()?;
    if message.metadata.message_type != MessageType::Query || message.queries.len() != 1 {
        return None;
    }
    let q = &message.queries[0];
    let mut name = q.name().to_lowercase().to_ascii();
    if name.ends_with('.') {
        name.pop();
    }
    let question = Question {
        name,
        qtype: q.query_type(),
    };
    Some((message, question))
}

/// A REFUSED answer to `request` carrying an Extended DNS Error "Blocked"
/// whose text says why.
pub fn refused(request: &Message, why: &str) -> Vec<u8> {
    let mut response = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.response_code = ResponseCode::Refused;
    response.add_queries(request.queries.iter().cloned());
    let mut data = EDE_BLOCKED.to_be_bytes().to_vec();
    data.extend_from_slice(why.as_bytes());
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.options_mut()
        .insert(EdnsOption::Unknown(EDE_OPTION, data));
    response.edns = Some(edns);
    response.to_vec().unwrap_or_default()
}

/// A SERVFAIL answer to `request` (upstream unreachable).
pub fn servfail(request: &Message) -> Vec<u8> {
    let mut response = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.response_code = ResponseCode::ServFail;
    response.add_queries(request.queries.iter().cloned());
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

/// The A and AAAA addresses of an answer section, each with its TTL.
pub fn addresses(message: &Message) -> Vec<(IpAddr, u32)> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
            _ => None,
        })
        .collect()
}

/// Removes from the answer section every A/AAAA record whose address
/// `reject` refuses, and returns those addresses.
pub fn strip(message: &mut Message, reject: impl Fn(IpAddr) -> bool) -> Vec<IpAddr> {
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
