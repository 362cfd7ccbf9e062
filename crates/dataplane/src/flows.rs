//! Kernel flows: each connection of a slot that the host's connection
//! tracking forwards, told when it is made and when it is forgotten (with
//! its byte counts), read from ctnetlink's event groups in the host
//! namespace.
//!
//! Why connection tracking's events rather than an NFLOG rule for new and
//! ended flows: a rule sees packets, not a flow's end, and could not give
//! its bytes; the events come once per flow (never per packet), after the
//! flow passed every hook (what the ruleset refused is never confirmed,
//! so never told: refusals come from the deny events), and carry the
//! byte counts once `nf_conntrack_acct` is on (set at start, for the host
//! namespace). A flow redirected to one of sandgate's own services (the
//! DNS service, the gateway) is not told here: the gateway keeps the
//! record of what it relays, with the name.

use crate::config::DataplaneConfig;
use crate::fastpath::FastPathEnded;
use netlink_packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, Nla, NlasIterator, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Protocol,
    Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use sandgate_netns::Netns;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

/// ctnetlink's multicast groups: new flows, changed flows, and flows
/// forgotten.
pub(crate) const NFNLGRP_CONNTRACK_NEW: u32 = 1;
pub(crate) const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
pub(crate) const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
/// Attributes the crate leaves unparsed: the flow's id, its counters.
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
pub(crate) const CTA_ID: u16 = 12;
const CTA_COUNTERS_BYTES: u16 = 2;
/// The kind of an attribute without its flags (nested, byte order).
pub(crate) const NLA_TYPE_MASK: u16 = 0x3fff;

/// How many records wait for a reader before new ones are counted and
/// dropped.
const QUEUE: usize = 16_384;
/// The socket's receive buffer: the events of a burst of new flows wait
/// here while the reader catches up.
const RECEIVE_BUFFER: usize = 4 << 20;

/// A flow of a slot, made or forgotten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFlow {
    /// When it was told.
    pub time: SystemTime,
    /// The slot it came from.
    pub slot: u32,
    /// The kernel's id of the flow (the same when it is made and
    /// forgotten).
    pub id: u32,
    /// `None` when it is made; its bytes from the slot and to it (IP
    /// packets, headers included) when it is forgotten.
    pub ended: Option<(u64, u64)>,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or the IP protocol number.
    pub protocol: String,
    /// The slot's address.
    pub source: IpAddr,
    /// The slot's port, for TCP and UDP.
    pub source_port: Option<u16>,
    /// Where it goes.
    pub destination: IpAddr,
    /// The destination port, for TCP and UDP.
    pub port: Option<u16>,
}

/// The reader: a thread on a ctnetlink socket in the host namespace.
#[derive(Debug)]
pub struct Flows {
    receiver: Receiver<KernelFlow>,
    lost: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Flows {
    /// Starts reading the flows of `cfg`'s slots in `host` (or here, for
    /// `None`), with the kernel's byte counts turned on there; an ended
    /// flow's bytes add what it forwarded on the fast path, when there is
    /// one (`fast`: [`crate::Dataplane::fast_path_ended`]).
    pub fn start(
        host: Option<&Netns>,
        cfg: &DataplaneConfig,
        fast: Option<FastPathEnded>,
    ) -> io::Result<Flows> {
        // Counts bytes per flow, for flows made from now on.
        crate::in_ns(host, || {
            std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", "1")
        })?;
        let socket = conntrack_events(host, &[NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY])?;
        let (tx, receiver) = sync_channel(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            socket,
            cfg: cfg.clone(),
            fast,
            tx,
            lost: lost.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("sandgate-flows".into())
            .spawn(move || reader.run())?;
        Ok(Flows {
            receiver,
            lost,
            stop,
            thread: Some(thread),
        })
    }

    /// The flows, in the order the kernel told them.
    pub fn receiver(&self) -> &Receiver<KernelFlow> {
        &self.receiver
    }

    /// Times records were lost: the kernel's (its socket buffer
    /// overflowed: an unknown number at once) and ours (nobody read them
    /// in time).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// The count of [`Flows::lost`], to be read where the reader is not.
    pub fn lost_counter(&self) -> Arc<AtomicU64> {
        self.lost.clone()
    }
}

/// A ctnetlink socket in `host` (or here) bound to connection tracking's
/// event `groups`, with a receive buffer for bursts and a read timeout
/// (its reader looks at its stop flag in between).
pub(crate) fn conntrack_events(host: Option<&Netns>, groups: &[u32]) -> io::Result<Socket> {
    let mask = groups.iter().fold(0, |m, g| m | (1 << (g - 1)));
    let socket = crate::in_ns(host, || {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind(&SocketAddr::new(0, mask))?;
        Ok(socket)
    })?;
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::RcvBufForce,
        &RECEIVE_BUFFER,
    )
    .map_err(io::Error::from)?;
    crate::events::set_timeout(&socket, std::time::Duration::from_millis(100))?;
    Ok(socket)
}

/// `IP_CT_TCP_FLAG_BE_LIBERAL`: connection tracking does not check this
/// side's sequence numbers against its window.
const TCP_FLAG_BE_LIBERAL: u8 = 0x08;
/// `CTA_PROTOINFO_TCP_FLAGS_ORIGINAL` and `_REPLY`.
const CTA_PROTOINFO_TCP_FLAGS: [u16; 2] = [4, 5];

/// A ctnetlink socket for requests, in `host` (or here).
pub(crate) fn conntrack_requests(host: Option<&Netns>) -> io::Result<Socket> {
    let socket = crate::in_ns(host, crate::events::request_socket)?;
    crate::events::set_timeout(&socket, std::time::Duration::from_millis(500))?;
    Ok(socket)
}

/// Whether connection tracking checks neither side of a TCP flow against
/// its window (both sides' flags, as an event tells them).
pub(crate) fn is_liberal(infos: &[ProtoInfo]) -> bool {
    let mut sides = 0;
    for info in infos {
        if let ProtoInfo::TCP(tcp) = info {
            for t in tcp {
                if let ProtoInfoTCP::OriginalFlags(f) | ProtoInfoTCP::ReplyFlags(f) = t {
                    if f.flags & TCP_FLAG_BE_LIBERAL != 0 {
                        sides += 1;
                    }
                }
            }
        }
    }
    sides == 2
}

/// Tells connection tracking not to check either side of the TCP flow
/// whose original tuple is `orig` against its window, as nftables'
/// flowtable does for the flows it offloads: a flow on the fast path
/// shows it one packet a second, whose sequence numbers are past the
/// window it last saw. Per flow, never the host-wide
/// `nf_conntrack_tcp_be_liberal`. An error if the flow is gone.
pub(crate) fn make_liberal(socket: &Socket, orig: &[Tuple], v6: bool) -> io::Result<()> {
    let family = if v6 {
        NetfilterProtoFamily::IPv6
    } else {
        NetfilterProtoFamily::IPv4
    };
    let flags = CTA_PROTOINFO_TCP_FLAGS
        .map(|kind| {
            ProtoInfoTCP::Other(DefaultNla::new(
                kind,
                vec![TCP_FLAG_BE_LIBERAL, TCP_FLAG_BE_LIBERAL],
            ))
        })
        .to_vec();
    let request = NetfilterMessage::new(
        NetfilterHeader::new(family, 0, 0),
        // An update (no NLM_F_CREATE): the flow's entry, or ENOENT.
        ConntrackMessage::New(vec![
            ConntrackAttribute::CtaTupleOrig(orig.to_vec()),
            ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(flags)]),
        ]),
    );
    let mut message = NetlinkMessage::from(request);
    message.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut ack = vec![0; 4096];
    let n = socket.recv(&mut &mut ack[..], 0)?;
    match NetlinkMessage::<NetfilterMessage>::deserialize(&ack[..n]) {
        Ok(NetlinkMessage {
            payload: NetlinkPayload::Error(e),
            ..
        }) => match e.code {
            None => Ok(()),
            Some(_) => Err(e.to_io()),
        },
        Ok(other) => Err(io::Error::other(format!(
            "connection tracking answered a flow's update with {other:?}"
        ))),
        Err(e) => Err(io::Error::other(format!(
            "connection tracking's answer to a flow's update: {e}"
        ))),
    }
}

impl Drop for Flows {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the kernel flow reader's thread panicked");
            }
        }
    }
}

struct Reader {
    socket: Socket,
    cfg: DataplaneConfig,
    fast: Option<FastPathEnded>,
    tx: SyncSender<KernelFlow>,
    lost: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Reader {
    fn run(self) {
        let mut buf = vec![0u8; 1 << 16];
        while !self.stop.load(Ordering::SeqCst) {
            let n = match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("the kernel told more flows than the reader could take; some are not in the flow log");
                    continue;
                }
                Err(_) => continue,
            };
            for message in crate::events::messages(&buf, n) {
                let NetfilterMessageInner::Conntrack(message) = message else {
                    continue;
                };
                let (attributes, ended) = match message {
                    ConntrackMessage::New(a) => (a, false),
                    ConntrackMessage::Delete(a) => (a, true),
                    _ => continue,
                };
                if let Some(mut flow) = flow(&self.cfg, &attributes, ended) {
                    if let (Some((out, back)), Some(fast)) = (&mut flow.ended, &self.fast) {
                        let (fast_out, fast_back) = fast.take(flow.id);
                        *out += fast_out;
                        *back += fast_back;
                    }
                    if let Err(TrySendError::Full(_)) = self.tx.try_send(flow) {
                        self.lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// The addresses, protocol and ports of a tuple.
#[derive(Default)]
pub(crate) struct Ends {
    pub(crate) source: Option<IpAddr>,
    pub(crate) destination: Option<IpAddr>,
    pub(crate) protocol: Option<Protocol>,
    pub(crate) source_port: Option<u16>,
    pub(crate) port: Option<u16>,
}

pub(crate) fn ends(tuple: &[Tuple]) -> Ends {
    let mut e = Ends::default();
    for t in tuple {
        match t {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => e.source = Some(*a),
                        IPTuple::DestinationAddress(a) => e.destination = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(protos) => {
                for p in protos {
                    match p {
                        ProtoTuple::Protocol(p) => e.protocol = Some(*p),
                        ProtoTuple::SourcePort(p) => e.source_port = Some(*p),
                        ProtoTuple::DestinationPort(p) => e.port = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    e
}

/// The value of an attribute the crate left unparsed.
pub(crate) fn value_of(nla: &DefaultNla) -> Vec<u8> {
    let mut value = vec![0; nla.value_len()];
    nla.emit_value(&mut value);
    value
}

/// The bytes of a `CTA_COUNTERS_*` attribute's value.
fn counted_bytes(value: &[u8]) -> Option<u64> {
    NlasIterator::new(value).flatten().find_map(|nla| {
        (nla.kind() & NLA_TYPE_MASK == CTA_COUNTERS_BYTES)
            .then(|| nla.value().try_into().ok().map(u64::from_be_bytes))
            .flatten()
    })
}

/// The record of a ctnetlink message about a flow, if the flow is a
/// slot's own (from a sandbox address, not redirected to sandgate).
fn flow(
    cfg: &DataplaneConfig,
    attributes: &[ConntrackAttribute],
    ended: bool,
) -> Option<KernelFlow> {
    let (mut orig, mut reply) = (None, None);
    let (mut id, mut out, mut back) = (None, 0u64, 0u64);
    for a in attributes {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(ends(t)),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(ends(t)),
            ConntrackAttribute::Other(nla) => {
                let value = value_of(nla);
                match nla.kind() & NLA_TYPE_MASK {
                    CTA_ID => id = value[..].try_into().ok().map(u32::from_be_bytes),
                    CTA_COUNTERS_ORIG => out = counted_bytes(&value).unwrap_or(0),
                    CTA_COUNTERS_REPLY => back = counted_bytes(&value).unwrap_or(0),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let (orig, reply) = (orig?, reply?);
    let (source, destination) = (orig.source?, orig.destination?);
    let slot = cfg.slot_of_sandbox(source)?;
    // To the host (the slot's gateway address), or redirected to the DNS
    // service or the gateway: its answers come from another address or
    // port than the one asked.
    let own = cfg.slot(slot);
    if destination == IpAddr::V4(own.gateway4)
        || destination == IpAddr::V6(own.gateway6)
        || reply.source != Some(destination)
        || reply.source_port != orig.port
    {
        return None;
    }
    let protocol = match orig.protocol? {
        Protocol::Tcp => "tcp".to_string(),
        Protocol::Udp => "udp".to_string(),
        Protocol::Icmp => "icmp".to_string(),
        Protocol::Ipv6Icmp => "icmpv6".to_string(),
        other => u8::from(other).to_string(),
    };
    let ports = matches!(protocol.as_str(), "tcp" | "udp");
    Some(KernelFlow {
        time: SystemTime::now(),
        slot,
        id: id?,
        ended: ended.then_some((out, back)),
        protocol,
        source,
        source_port: orig.source_port.filter(|_| ports),
        destination,
        port: orig.port.filter(|_| ports),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_netfilter::conntrack::ProtoTuple;

    fn config() -> DataplaneConfig {
        let policy = sandgate_policy::PolicyConfig::default();
        DataplaneConfig::new(&policy, "t", "/nonexistent/state.json".into()).unwrap()
    }

    fn tuple(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<Tuple> {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(src),
                IPTuple::DestinationAddress(dst),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::Tcp),
                ProtoTuple::SourcePort(sport),
                ProtoTuple::DestinationPort(dport),
            ]),
        ]
    }

    /// A `CTA_COUNTERS_*` attribute: packets 3, then `bytes`, nested.
    fn counters(kind: u16, bytes: u64) -> ConntrackAttribute {
        let mut value = Vec::new();
        for (k, v) in [(1u16, 3u64), (CTA_COUNTERS_BYTES, bytes)] {
            value.extend_from_slice(&12u16.to_ne_bytes());
            value.extend_from_slice(&k.to_ne_bytes());
            value.extend_from_slice(&v.to_be_bytes());
        }
        ConntrackAttribute::Other(DefaultNla::new(kind, value))
    }

    #[test]
    fn a_slots_flow_is_read_with_its_bytes_and_a_redirected_one_is_left_out() {
        let cfg = config();
        let slot = cfg.slot(5);
        let me = IpAddr::V4(slot.sandbox4);
        let far: IpAddr = "192.0.2.10".parse().unwrap();
        let id = ConntrackAttribute::Other(DefaultNla::new(CTA_ID, 77u32.to_be_bytes().to_vec()));
        let ended = [
            ConntrackAttribute::CtaTupleOrig(tuple(me, far, 40000, 443)),
            ConntrackAttribute::CtaTupleReply(tuple(far, me, 443, 40000)),
            id.clone(),
            counters(CTA_COUNTERS_ORIG, 1500),
            counters(CTA_COUNTERS_REPLY, 9000),
        ];
        let f = flow(&cfg, &ended, true).unwrap();
        assert_eq!((f.slot, f.id), (5, 77));
        assert_eq!(f.ended, Some((1500, 9000)));
        assert_eq!(
            (f.protocol.as_str(), f.port, f.source_port),
            ("tcp", Some(443), Some(40000))
        );
        assert_eq!(flow(&cfg, &ended[..3], false).unwrap().ended, None);
        // Redirected to the gateway (its reply from the slot's gateway
        // address and the gateway's port), or to the DNS service on the
        // same address's other port: not the kernel's to tell.
        let gw = IpAddr::V4(slot.gateway4);
        for reply in [tuple(gw, me, 10080, 40000), tuple(far, me, 10053, 40000)] {
            let redirected = [
                ConntrackAttribute::CtaTupleOrig(tuple(me, far, 40000, 443)),
                ConntrackAttribute::CtaTupleReply(reply),
                id.clone(),
            ];
            assert_eq!(flow(&cfg, &redirected, false), None);
        }
        // Not a sandbox's address: the host's own flows, a gateway
        // address.
        for src in [far, gw] {
            let other = [
                ConntrackAttribute::CtaTupleOrig(tuple(src, far, 40000, 443)),
                ConntrackAttribute::CtaTupleReply(tuple(far, src, 443, 40000)),
                id.clone(),
            ];
            assert_eq!(flow(&cfg, &other, false), None);
        }
    }

    #[test]
    fn a_sandbox_address_names_its_slot_and_no_other_address_does() {
        let cfg = config();
        for index in [1, 7, cfg.max_slots()] {
            let s = cfg.slot(index);
            assert_eq!(cfg.slot_of_sandbox(IpAddr::V4(s.sandbox4)), Some(index));
            assert_eq!(cfg.slot_of_sandbox(IpAddr::V6(s.sandbox6)), Some(index));
            assert_eq!(cfg.slot_of_sandbox(IpAddr::V4(s.gateway4)), None);
            assert_eq!(cfg.slot_of_sandbox(IpAddr::V6(s.gateway6)), None);
        }
        let mapped = IpAddr::V6(cfg.slot(3).sandbox4.to_ipv6_mapped());
        assert_eq!(cfg.slot_of_sandbox(mapped), Some(3));
        assert_eq!(cfg.slot_of_sandbox("192.0.2.10".parse().unwrap()), None);
        assert_eq!(cfg.slot_of_sandbox(IpAddr::V4(cfg.slot(0).sandbox4)), None);
    }
}
