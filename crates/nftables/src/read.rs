//! Reading counters back over netlink: named counters, and the counters
//! that the elements of a dynamic set carry (one per slot interface).
//!
//! A dump answers in messages of the kernel's own layout; this walks their
//! attributes with `netlink-packet-core`'s attribute iterator rather than
//! `netlink-packet-netfilter`'s typed set-element parser, which keeps only
//! the first attribute of an element's expression (its name) and drops the
//! counter's values.

use crate::batch::{
    NftSocket, Quota, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_QUOTA_BYTES, NFTA_QUOTA_CONSUMED,
    NFTA_SET_ELEM_EXPR,
};
use netlink_packet_core::{DefaultNla, NlaBuffer, NlasIterator, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_netfilter::nftables::{NfTablesMessage, SetElementList, SetElementMessage};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use std::io;

/// `NLMSG_ERROR`, `NLMSG_DONE`.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// The netlink header and nf_tables' own (`nfgenmsg`) before attributes.
const HEADERS: usize = 16 + 4;
/// Attribute types carry flags in their top bits.
const NLA_TYPE_MASK: u16 = 0x3fff;

// include/uapi/linux/netfilter/nf_tables.h
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_EXPRESSIONS: u16 = 11;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFT_OBJECT_COUNTER: u32 = 1;

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("nf_tables dump: {what}"),
    )
}

/// The attributes of `bytes`, by type (flags masked off), with their values.
fn attributes(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    NlasIterator::new(bytes)
        .filter_map(Result::ok)
        .filter_map(|nla: NlaBuffer<&[u8]>| {
            let kind = nla.kind() & NLA_TYPE_MASK;
            let len = usize::from(nla.length());
            let whole: &[u8] = nla.into_inner();
            // The iterator checked that the attribute fits.
            Some((kind, whole.get(4..len)?))
        })
}

fn attribute(bytes: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(bytes).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// The data of expression `expr` if it is a `name` expression
/// (`NFTA_EXPR_NAME`, `NFTA_EXPR_DATA`).
fn expression_data<'a>(expr: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let found = attribute(expr, NFTA_EXPR_NAME)?;
    if found.split(|b| *b == 0).next() != Some(name.as_bytes()) {
        return None;
    }
    attribute(expr, NFTA_EXPR_DATA)
}

/// The packets of a counter expression, if `expr` is one.
fn counter_packets(expr: &[u8]) -> Option<u64> {
    be_u64(attribute(
        expression_data(expr, "counter")?,
        NFTA_COUNTER_PACKETS,
    )?)
}

/// The bytes and consumption of a quota expression, if `expr` is one.
fn quota(expr: &[u8]) -> Option<Quota> {
    let data = expression_data(expr, "quota")?;
    Some(Quota {
        bytes: be_u64(attribute(data, NFTA_QUOTA_BYTES)?)?,
        consumed: attribute(data, NFTA_QUOTA_CONSUMED)
            .and_then(be_u64)
            .unwrap_or(0),
    })
}

impl NftSocket {
    /// Sends a dump request and returns the attributes of every message of
    /// its answer.
    fn dump(&mut self, message: NfTablesMessage) -> io::Result<Vec<Vec<u8>>> {
        let message = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
            message,
        );
        let mut out = Vec::new();
        let seq = self.frame(NLM_F_REQUEST | NLM_F_DUMP, message, &mut out);
        self.socket().send(&out, 0)?;
        let mut bodies = Vec::new();
        loop {
            let buf = self.recv()?;
            let mut offset = 0;
            while offset + 16 <= buf.len() {
                let word = |at: usize| -> [u8; 4] {
                    let mut w = [0u8; 4];
                    w.copy_from_slice(&buf[offset + at..offset + at + 4]);
                    w
                };
                let len = u32::from_ne_bytes(word(0)) as usize;
                let kind = u16::from_ne_bytes([buf[offset + 4], buf[offset + 5]]);
                let msg_seq = u32::from_ne_bytes(word(8));
                if len < 16 || offset + len > buf.len() {
                    return Err(invalid("a message overruns its datagram"));
                }
                if msg_seq == seq {
                    match kind {
                        NLMSG_DONE => return Ok(bodies),
                        NLMSG_ERROR => {
                            if len < 20 {
                                return Err(invalid("a short error message"));
                            }
                            let code = i32::from_ne_bytes(word(16));
                            return match code {
                                0 => Ok(bodies),
                                c => Err(io::Error::from_raw_os_error(-c)),
                            };
                        }
                        _ if len >= HEADERS => {
                            bodies.push(buf[offset + HEADERS..offset + len].to_vec())
                        }
                        _ => return Err(invalid("a message without nf_tables' header")),
                    }
                }
                offset += (len + 3) & !3;
            }
        }
    }

    /// The elements of set `set` of the `inet` table `table` with the
    /// packets of the counter each carries: (key bytes, packets).
    pub fn set_counters(&mut self, table: &str, set: &str) -> io::Result<Vec<(Vec<u8>, u64)>> {
        self.set_expressions(table, set, "a counter", counter_packets)
    }

    /// The elements of set `set` of the `inet` table `table` with the
    /// quota each carries: (key bytes, quota as counted now).
    pub fn set_quotas(&mut self, table: &str, set: &str) -> io::Result<Vec<(Vec<u8>, Quota)>> {
        self.set_expressions(table, set, "a quota", quota)
    }

    /// The elements of a set with what `read` finds in the expression
    /// each carries (`what`, for the error of an element without one).
    fn set_expressions<T>(
        &mut self,
        table: &str,
        set: &str,
        what: &str,
        read: fn(&[u8]) -> Option<T>,
    ) -> io::Result<Vec<(Vec<u8>, T)>> {
        let bodies = self.dump(NfTablesMessage::GetSetElement(SetElementMessage {
            attributes: vec![
                SetElementList::Table(table.to_string()),
                SetElementList::Set(set.to_string()),
            ],
        }))?;
        let mut out = Vec::new();
        for body in &bodies {
            let Some(elements) = attribute(body, NFTA_SET_ELEM_LIST_ELEMENTS) else {
                continue;
            };
            for (kind, element) in attributes(elements) {
                if kind != NFTA_LIST_ELEM {
                    continue;
                }
                let key = attribute(element, NFTA_SET_ELEM_KEY)
                    .and_then(|k| attribute(k, NFTA_DATA_VALUE))
                    .ok_or_else(|| invalid("an element without a key"))?;
                // One expression comes alone, several in a list.
                let value = attribute(element, NFTA_SET_ELEM_EXPR)
                    .and_then(read)
                    .or_else(|| {
                        attributes(attribute(element, NFTA_SET_ELEM_EXPRESSIONS)?)
                            .filter(|(k, _)| *k == NFTA_LIST_ELEM)
                            .find_map(|(_, e)| read(e))
                    })
                    .ok_or_else(|| invalid(&format!("an element of {set} without {what}")))?;
                out.push((key.to_vec(), value));
            }
        }
        Ok(out)
    }

    /// The packets of every named counter of the `inet` table `table`.
    pub fn counters(&mut self, table: &str) -> io::Result<Vec<(String, u64)>> {
        let mut name = table.as_bytes().to_vec();
        name.push(0);
        let bodies = self.dump(NfTablesMessage::GetObject(vec![
            DefaultNla::new(NFTA_OBJ_TABLE, name),
            DefaultNla::new(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER.to_be_bytes().to_vec()),
        ]))?;
        let mut out = Vec::new();
        for body in &bodies {
            let (Some(name), Some(data)) = (
                attribute(body, NFTA_OBJ_NAME),
                attribute(body, NFTA_OBJ_DATA),
            ) else {
                continue;
            };
            let name = String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or_default());
            let packets = attribute(data, NFTA_COUNTER_PACKETS)
                .and_then(be_u64)
                .ok_or_else(|| invalid(&format!("counter {name} without packets")))?;
            out.push((name.into_owned(), packets));
        }
        Ok(out)
    }
}
