//! Element transactions: one nfnetlink batch, all or nothing.

use crate::key::Key;
use netlink_packet_core::{
    DefaultNla, Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLA_F_NESTED,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementList,
    SetElementMessage, TableAttribute, TableMessage, Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::{
    none::ControlMessage, NetfilterHeader, NetfilterMessage, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use std::io;
use std::time::Duration;

/// The smallest socket buffer a transaction socket keeps, in bytes.
const MIN_BUFFER: usize = 4 << 20;

/// The nfnetlink subsystem of nf_tables (`NFNL_SUBSYS_NFTABLES`), which a
/// batch names as its resource.
const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// What a map element maps its key to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElementData {
    /// `jump CHAIN` (a verdict map).
    Jump(String),
    /// `accept` (a verdict map).
    Accept,
    /// A value, laid out like a key (a mark, an address).
    Value(Key),
}

/// What a change does to its element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Add; fails if the element is there.
    Add,
    /// Delete; fails if the element is missing.
    Delete,
    /// Delete if present (`NFT_MSG_DESTROYSETELEM`, Linux 6.3 and later).
    Destroy,
    /// Delete every element of the set.
    Flush,
}

/// `NFT_MSG_DESTROYSETELEM`.
const NFT_MSG_DESTROYSETELEM: u8 = 30;

/// A quota an element carries (`quota over BYTES used CONSUMED`): a
/// lookup that finds the element matches only once `bytes` have passed
/// through it, and every lookup that finds it adds its packet's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// The bytes allowed (at most `i64::MAX`).
    pub bytes: u64,
    /// The bytes counted so far (at most `bytes`).
    pub consumed: u64,
}

// include/uapi/linux/netfilter/nf_tables.h: an element's expression, an
// expression's name and data, the quota expression's attributes and its
// `over` flag (`NFT_QUOTA_F_INV`).
pub(crate) const NFTA_SET_ELEM_EXPR: u16 = 7;
pub(crate) const NFTA_EXPR_NAME: u16 = 1;
pub(crate) const NFTA_EXPR_DATA: u16 = 2;
pub(crate) const NFTA_QUOTA_BYTES: u16 = 1;
const NFTA_QUOTA_FLAGS: u16 = 2;
pub(crate) const NFTA_QUOTA_CONSUMED: u16 = 4;
const NFT_QUOTA_F_INV: u32 = 1;

impl Quota {
    /// The element's expression attribute (`netlink-packet-netfilter`'s
    /// typed one holds a single attribute of an expression, not its name
    /// and data together).
    fn attribute(&self) -> SetElementAttribute {
        fn emit(nlas: &[DefaultNla]) -> Vec<u8> {
            let mut out = vec![0; nlas.buffer_len()];
            nlas.emit(&mut out);
            out
        }
        let bytes = self.bytes.min(i64::MAX as u64);
        let data = emit(&[
            DefaultNla::new(NFTA_QUOTA_BYTES, bytes.to_be_bytes().to_vec()),
            DefaultNla::new(NFTA_QUOTA_FLAGS, NFT_QUOTA_F_INV.to_be_bytes().to_vec()),
            DefaultNla::new(
                NFTA_QUOTA_CONSUMED,
                self.consumed.min(bytes).to_be_bytes().to_vec(),
            ),
        ]);
        let expr = emit(&[
            DefaultNla::new(NFTA_EXPR_NAME, b"quota\0".to_vec()),
            DefaultNla::new(NFTA_EXPR_DATA | NLA_F_NESTED, data),
        ]);
        SetElementAttribute::Other(DefaultNla::new(NFTA_SET_ELEM_EXPR | NLA_F_NESTED, expr))
    }
}

#[derive(Debug, Clone)]
struct Op {
    verb: Verb,
    set: String,
    key: Key,
    key_end: Option<Key>,
    data: Option<ElementData>,
    timeout: Option<Duration>,
    quota: Option<Quota>,
}

/// Element changes to one table, applied by the kernel in one batch: every
/// change or none. An addition of an element that exists, or a deletion of
/// one that does not, fails the whole batch.
#[derive(Debug, Clone)]
pub struct Transaction {
    table: String,
    ops: Vec<Op>,
}

impl Transaction {
    /// A transaction on the `inet` table `table`.
    pub fn new(table: &str) -> Self {
        Transaction {
            table: table.to_string(),
            ops: Vec::new(),
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The changes to set or map `set`, in order: what each does, its key
    /// and what it maps the key to (for a mirror of the set kept
    /// elsewhere, such as the fast path's `valid`).
    pub fn changes_to<'a>(
        &'a self,
        set: &'a str,
    ) -> impl Iterator<Item = (Verb, &'a Key, Option<&'a ElementData>)> + 'a {
        self.ops
            .iter()
            .filter(move |op| op.set == set)
            .map(|op| (op.verb, &op.key, op.data.as_ref()))
    }

    fn push(
        &mut self,
        verb: Verb,
        set: &str,
        key: Key,
        key_end: Option<Key>,
        data: Option<ElementData>,
        timeout: Option<Duration>,
    ) -> &mut Self {
        self.ops.push(Op {
            verb,
            set: set.to_string(),
            key,
            key_end,
            data,
            timeout,
            quota: None,
        });
        self
    }

    /// Adds `key` to a set with a quota of its own (see [`Quota`]): a
    /// rule that looks the set up matches a packet only once the element
    /// has counted its bytes.
    pub fn add_with_quota(&mut self, set: &str, key: Key, quota: Quota) -> &mut Self {
        self.push(Verb::Add, set, key, None, None, None);
        if let Some(op) = self.ops.last_mut() {
            op.quota = Some(quota);
        }
        self
    }

    /// Adds `key` to a set.
    pub fn add(&mut self, set: &str, key: Key) -> &mut Self {
        self.push(Verb::Add, set, key, None, None, None)
    }

    /// Adds the interval `start..=end` to an interval set.
    pub fn add_interval(&mut self, set: &str, start: Key, end: Key) -> &mut Self {
        self.push(Verb::Add, set, start, Some(end), None, None)
    }

    /// Adds `key` to a set with timeouts; it expires after `timeout`.
    pub fn add_with_timeout(&mut self, set: &str, key: Key, timeout: Duration) -> &mut Self {
        self.push(Verb::Add, set, key, None, None, Some(timeout))
    }

    /// Adds the interval `start..=end` to an interval set with timeouts;
    /// it expires after `timeout`.
    pub fn add_interval_with_timeout(
        &mut self,
        set: &str,
        start: Key,
        end: Key,
        timeout: Duration,
    ) -> &mut Self {
        self.push(Verb::Add, set, start, Some(end), None, Some(timeout))
    }

    /// Adds `key -> data` to a map.
    pub fn add_mapping(&mut self, map: &str, key: Key, data: ElementData) -> &mut Self {
        self.push(Verb::Add, map, key, None, Some(data), None)
    }

    /// Deletes `key` from a set or map.
    pub fn delete(&mut self, set: &str, key: Key) -> &mut Self {
        self.push(Verb::Delete, set, key, None, None, None)
    }

    /// Deletes the interval `start..=end` from an interval set.
    pub fn delete_interval(&mut self, set: &str, start: Key, end: Key) -> &mut Self {
        self.push(Verb::Delete, set, start, Some(end), None, None)
    }

    /// Adds, deletes or destroys one element: `key` (to `end`, for an
    /// interval), mapped to `data` in a map. The general form of the
    /// methods above and below.
    pub fn element(
        &mut self,
        verb: Verb,
        set: &str,
        key: Key,
        end: Option<Key>,
        data: Option<ElementData>,
    ) -> &mut Self {
        let data = if verb == Verb::Add { data } else { None };
        self.push(verb, set, key, end, data, None)
    }

    /// Deletes `key` from a set or map if it is there (an element with a
    /// timeout may have expired); never fails for a missing element.
    pub fn destroy(&mut self, set: &str, key: Key) -> &mut Self {
        self.push(Verb::Destroy, set, key, None, None, None)
    }

    /// Deletes the interval `start..=end` if it is there.
    pub fn destroy_interval(&mut self, set: &str, start: Key, end: Key) -> &mut Self {
        self.push(Verb::Destroy, set, start, Some(end), None, None)
    }

    /// Deletes every element of a set or map.
    pub fn flush(&mut self, set: &str) -> &mut Self {
        self.push(Verb::Flush, set, Key::new(), None, None, None)
    }

    fn message(&self, op: &Op) -> NfTablesMessage {
        let mut element = vec![SetElementAttribute::Key(DataAttribute::Value(
            op.key.bytes().to_vec(),
        ))];
        if let Some(end) = &op.key_end {
            element.push(SetElementAttribute::KeyEnd(vec![DefaultNla::new(
                1,
                end.bytes().to_vec(),
            )]));
        }
        match &op.data {
            Some(ElementData::Jump(chain)) => {
                element.push(SetElementAttribute::Data(DataAttribute::Verdict(vec![
                    VerdictAttribute::Code(Verdict::Jump),
                    VerdictAttribute::Chain(chain.clone()),
                ])))
            }
            Some(ElementData::Accept) => element.push(SetElementAttribute::Data(
                // NF_ACCEPT: netfilter's own verdict, which the crate has no name for.
                DataAttribute::Verdict(vec![VerdictAttribute::Code(Verdict::Other(1))]),
            )),
            Some(ElementData::Value(v)) => element.push(SetElementAttribute::Data(
                DataAttribute::Value(v.bytes().to_vec()),
            )),
            None => {}
        }
        if let Some(t) = op.timeout {
            let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1);
            element.push(SetElementAttribute::Timeout(ms));
        }
        if let Some(q) = &op.quota {
            element.push(q.attribute());
        }
        let mut attributes = vec![
            SetElementList::Table(self.table.clone()),
            SetElementList::Set(op.set.clone()),
        ];
        if op.verb != Verb::Flush {
            attributes.push(SetElementList::Elements(vec![ListAttribute::Element(
                element,
            )]));
        }
        match op.verb {
            Verb::Add => NfTablesMessage::NewSetElement(SetElementMessage { attributes }),
            Verb::Delete | Verb::Flush => {
                NfTablesMessage::DeleteSetElement(SetElementMessage { attributes })
            }
            Verb::Destroy => NfTablesMessage::Other {
                message_type: NFT_MSG_DESTROYSETELEM,
                attributes: attributes
                    .iter()
                    .map(|a| {
                        let mut value = vec![0; a.value_len()];
                        a.emit_value(&mut value);
                        let nested = if a.is_nested() { NLA_F_NESTED } else { 0 };
                        DefaultNla::new(a.kind() | nested, value)
                    })
                    .collect(),
            },
        }
    }
}

/// A netlink socket for nf_tables in the calling thread's namespace.
#[derive(Debug)]
pub struct NftSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    /// The socket buffer size set so far, in bytes.
    buffers: usize,
}

impl NftSocket {
    /// Opens the socket.
    pub fn open() -> io::Result<NftSocket> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // A kernel that never answers must not hang the daemon.
        set_recv_timeout(&socket, Duration::from_secs(5))?;
        // Acknowledgements without a copy of the request: a transaction of
        // thousands of elements gets thousands of small answers.
        socket.set_cap_ack(true)?;
        Ok(NftSocket {
            socket,
            seq: 0,
            buf: vec![0; 1 << 16],
            buffers: 0,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// The netlink socket.
    pub(crate) fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Receives one datagram.
    pub(crate) fn recv(&mut self) -> io::Result<&[u8]> {
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        Ok(&self.buf[..n])
    }

    pub(crate) fn frame(
        &mut self,
        flags: u16,
        message: NetfilterMessage,
        out: &mut Vec<u8>,
    ) -> u32 {
        let seq = self.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let start = out.len();
        out.resize(start + packet.buffer_len(), 0);
        packet.serialize(&mut out[start..]);
        seq
    }

    /// Whether the `inet` table `table` exists.
    pub fn table_exists(&mut self, table: &str) -> io::Result<bool> {
        let message = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
            NfTablesMessage::GetTable(TableMessage {
                attributes: vec![TableAttribute::Name(table.to_string())],
            }),
        );
        let mut out = Vec::new();
        let seq = self.frame(NLM_F_REQUEST | NLM_F_ACK, message, &mut out);
        self.socket.send(&out, 0)?;
        let mut found = None;
        while found.is_none() {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            for reply in replies(&self.buf[..n]) {
                let reply = reply?;
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => found = Some(found.unwrap_or(true)),
                        Some(code) if code.get() == -nix::libc::ENOENT => found = Some(false),
                        Some(_) => return Err(e.to_io()),
                    },
                    NetlinkPayload::InnerMessage(_) => found = Some(true),
                    _ => {}
                }
            }
        }
        Ok(found.unwrap_or(false))
    }

    /// Applies a transaction: all its changes, or, on any error, none.
    pub fn commit(&mut self, tx: &Transaction) -> io::Result<()> {
        if tx.is_empty() {
            return Ok(());
        }
        let control = |m: ControlMessage| {
            NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
                m,
            )
        };
        let mut out = Vec::with_capacity(256 * tx.len());
        self.frame(NLM_F_REQUEST, control(ControlMessage::BatchBegin), &mut out);
        let mut pending = Vec::with_capacity(tx.len());
        for op in &tx.ops {
            let flags = match op.verb {
                Verb::Add => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                _ => NLM_F_REQUEST | NLM_F_ACK,
            };
            let message = NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
                tx.message(op),
            );
            pending.push(self.frame(flags, message, &mut out));
        }
        self.frame(NLM_F_REQUEST, control(ControlMessage::BatchEnd), &mut out);
        // A batch goes in one message, and all its answers must fit in the
        // receive queue: grow both buffers to the batch (as root, past the
        // system's default limits, as the nft program does).
        // Each answer costs a socket buffer of about a kilobyte, whatever
        // its size; never go below a few megabytes.
        let need = (out.len() * 2 + tx.len() * 1024).max(MIN_BUFFER);
        if need > self.buffers {
            use nix::sys::socket::{
                setsockopt,
                sockopt::{RcvBufForce, SndBufForce},
            };
            setsockopt(&self.socket, SndBufForce, &need).map_err(io::Error::from)?;
            setsockopt(&self.socket, RcvBufForce, &need).map_err(io::Error::from)?;
            self.buffers = need;
        }
        self.socket.send(&out, 0)?;
        self.collect(tx, &pending)
    }

    /// Reads one answer per change: acknowledgements, or the first error.
    fn collect(&mut self, tx: &Transaction, pending: &[u32]) -> io::Result<()> {
        let (first, last) = match (pending.first(), pending.last()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => return Ok(()),
        };
        let mut answered = 0usize;
        let mut failure: Option<io::Error> = None;
        while answered < pending.len() {
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                // After an error the kernel may skip the acknowledgements
                // of the rest of an aborted batch.
                Err(e) if failure.is_some() && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(failure.unwrap_or(e)),
            };
            for reply in replies(&self.buf[..n]) {
                let reply = reply?;
                let seq = reply.header.sequence_number;
                if !(first..=last).contains(&seq) {
                    continue;
                }
                if let NetlinkPayload::Error(e) = reply.payload {
                    answered += 1;
                    if e.code.is_some() && failure.is_none() {
                        let index = pending.iter().position(|s| *s == seq).unwrap_or(0);
                        let op = &tx.ops[index];
                        let io = e.to_io();
                        failure = Some(io::Error::new(
                            io.kind(),
                            format!(
                                "nf_tables refused to {} an element of set {}: {io}",
                                match op.verb {
                                    Verb::Add => "add",
                                    Verb::Delete | Verb::Destroy => "delete",
                                    Verb::Flush => "flush",
                                },
                                op.set
                            ),
                        ));
                    }
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The netlink messages of one received datagram, in order; an
/// unparsable one ends the walk with an error.
fn replies(buf: &[u8]) -> impl Iterator<Item = io::Result<NetlinkMessage<NetfilterMessage>>> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset >= buf.len() {
            return None;
        }
        let reply = match NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..]) {
            Ok(reply) => reply,
            Err(e) => {
                offset = buf.len();
                return Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    e.to_string(),
                )));
            }
        };
        match reply.header.length as usize {
            0 => None,
            len => {
                offset += len;
                Some(Ok(reply))
            }
        }
    })
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
    use nix::sys::time::TimeVal;
    let tv = TimeVal::new(
        i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        i64::from(timeout.subsec_micros()),
    );
    setsockopt(socket, ReceiveTimeout, &tv).map_err(io::Error::from)
}
