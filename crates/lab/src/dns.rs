//! The world's authoritative DNS server: answers the catalog's names and
//! the lab's test domains with world addresses, over UDP and TCP, and
//! counts every query it receives (so a test can prove that none arrived).

use crate::addrs::*;
use hickory_proto::op::{Message, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use sandgate_policy::Catalog;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};

/// How long the lab's server takes to answer `slow.example.com`.
pub const SLOW: std::time::Duration = std::time::Duration::from_millis(1500);

/// What a name answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A and AAAA records, with a TTL.
    Addrs {
        /// IPv4 addresses.
        v4: Vec<Ipv4Addr>,
        /// IPv6 addresses.
        v6: Vec<Ipv6Addr>,
        /// The TTL in seconds.
        ttl: u32,
    },
    /// A CNAME to another name of the zone.
    Cname(String),
}

/// The lab's zone: exact names and `*.` wildcards.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    exact: BTreeMap<String, Answer>,
    wildcard: BTreeMap<String, Answer>,
}

fn addrs(v4: IpAddr, v6: IpAddr, ttl: u32) -> Answer {
    let (IpAddr::V4(a), IpAddr::V6(b)) = (v4, v6) else {
        unreachable!("lab addresses are one of each family")
    };
    Answer::Addrs {
        v4: vec![a],
        v6: vec![b],
        ttl,
    }
}

impl Zone {
    /// The lab's zone: every catalog name (a wildcard entry as `lab.` below
    /// its base) at [`SERVER4`]/[`SERVER6`]; `example.com`, `example.net`
    /// and everything below them at [`SERVER4_B`]/[`SERVER6_B`];
    /// `cname.example.com`, a CNAME to `www.example.com`;
    /// `rebind.example.com`, a private and an always-denied lab address;
    /// `short.example.com`, a TTL of 1 second; `slow.example.com`, answered
    /// after [`SLOW`] (see [`Zone::delay`]).
    pub fn lab(catalog: &Catalog) -> Zone {
        let mut z = Zone::default();
        for (_, pattern) in catalog.names() {
            let name = if pattern.is_wildcard() {
                format!("lab.{}", pattern.base())
            } else {
                pattern.base().to_string()
            };
            z.exact.insert(name, addrs(SERVER4, SERVER6, 30));
        }
        for base in ["example.com", "example.net"] {
            z.exact.insert(base.into(), addrs(SERVER4_B, SERVER6_B, 30));
            z.wildcard
                .insert(base.into(), addrs(SERVER4_B, SERVER6_B, 30));
        }
        z.exact.insert(
            "cname.example.com".into(),
            Answer::Cname("www.example.com".into()),
        );
        z.exact.insert(
            "rebind.example.com".into(),
            addrs(PRIVATE_SERVER4, DENIED_SERVER6, 30),
        );
        z.exact
            .insert("short.example.com".into(), addrs(SERVER4_B, SERVER6_B, 1));
        z
    }

    /// How long the server waits before it answers `query` (a query for
    /// `slow.example.com` waits [`SLOW`]: a lookup still in flight when a
    /// test changes something), if it waits.
    pub fn delay(query: &[u8]) -> Option<std::time::Duration> {
        let request = Message::from_vec(query).ok()?;
        let q = request.queries.first()?;
        let name = q.name().to_lowercase().to_ascii();
        (name.trim_end_matches('.') == "slow.example.com").then_some(SLOW)
    }

    /// The names the zone answers exactly (for the lab's certificate).
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.exact.keys().cloned().collect();
        v.extend(self.wildcard.keys().map(|b| format!("*.{b}")));
        v
    }

    /// What `name` (lowercase, no trailing dot) answers, if anything.
    pub fn lookup(&self, name: &str) -> Option<&Answer> {
        if let Some(a) = self.exact.get(name) {
            return Some(a);
        }
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(a) = self.wildcard.get(parent) {
                return Some(a);
            }
            rest = parent;
        }
        None
    }

    /// The answer to a DNS query message, or `None` for what is not a query.
    pub fn answer(&self, query: &[u8], queries: &AtomicU64) -> Option<Vec<u8>> {
        queries.fetch_add(1, Ordering::Relaxed);
        let request = Message::from_vec(query).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut response = Message::new(
            request.metadata.id,
            MessageType::Response,
            request.metadata.op_code,
        );
        response.metadata = Metadata::response_from_request(&request.metadata);
        response.metadata.authoritative = true;
        let Some(q) = request.queries.first() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response.to_vec().ok();
        };
        response.add_query(q.clone());
        let mut name = q.name().to_lowercase().to_ascii();
        if name.ends_with('.') {
            name.pop();
        }
        let mut hops = 0;
        loop {
            match self.lookup(&name) {
                None if hops == 0 => {
                    response.metadata.response_code = ResponseCode::NXDomain;
                    break;
                }
                None => break,
                Some(Answer::Cname(target)) => {
                    let owner = Name::from_ascii(format!("{name}.")).ok()?;
                    let target_name = Name::from_ascii(format!("{target}.")).ok()?;
                    response.add_answer(Record::from_rdata(
                        owner,
                        30,
                        RData::CNAME(CNAME(target_name)),
                    ));
                    name = target.clone();
                    hops += 1;
                    if hops > 8 {
                        break;
                    }
                }
                Some(Answer::Addrs { v4, v6, ttl }) => {
                    let owner = Name::from_ascii(format!("{name}.")).ok()?;
                    if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
                        for a in v4 {
                            response.add_answer(Record::from_rdata(
                                owner.clone(),
                                *ttl,
                                RData::A(A(*a)),
                            ));
                        }
                    }
                    if matches!(q.query_type(), RecordType::AAAA | RecordType::ANY) {
                        for a in v6 {
                            response.add_answer(Record::from_rdata(
                                owner.clone(),
                                *ttl,
                                RData::AAAA(AAAA(*a)),
                            ));
                        }
                    }
                    break;
                }
            }
        }
        response.to_vec().ok()
    }
}
