//! The fast path's place in the dataplane (the operator's switch,
//! [`DataplaneConfig::fast_path`]; by default on where the kernel can run
//! it).
//!
//! The program ([`sandgate_fastpath`]) is attached to every slot's host
//! interface that has no pacer (a pacer's `ingress` filter would be walked
//! around by a redirect ahead of it) and, at start, to every other
//! interface of the host namespace but loopback (replies come in there).
//! What it may carry comes from two places:
//! - `valid`: every change the dataplane commits to nftables' `valid` map
//!   is repeated here right after the commit ([`FastPathState::mirror`]),
//!   without the marks of metered slots (a transfer quota is counted by
//!   netfilter), so that a policy change, a grant's end, a cut or a delete
//!   takes a slot's flows off the fast path in the same step as it takes
//!   them off netfilter's established path; a mirror that fails empties
//!   `valid` (every flow back to netfilter);
//! - `flows`: a thread reads connection tracking's events in the host
//!   namespace and puts a slot's flow on the fast path once netfilter
//!   confirmed it (UDP: at once; TCP: once connection tracking calls it
//!   established), with its mark and translation, and takes it off when
//!   connection tracking forgets it. Lost events empty the table.

use crate::config::{DataplaneConfig, SLOT_IF_PREFIX};
use crate::flows::ends;
use crate::flows::{NFNLGRP_CONNTRACK_DESTROY, NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE};
use crate::in_ns;
use netlink_packet_core::Nla;
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, ProtoInfo, ProtoInfoTCP, Protocol, Tuple,
};
use netlink_packet_netfilter::NetfilterMessageInner;
use netlink_sys::Socket;
use sandgate_fastpath::{Counts, FastPath, Flow, FlowTable, Runs, Side};
use sandgate_netns::Netns;
use sandgate_nftables::{ElementData, Transaction, Verb};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Connection tracking's TCP state `ESTABLISHED`.
const TCP_ESTABLISHED: u8 = 3;

/// What the fast path did: the flows on it now, and what they forwarded
/// there, with the flows it let go since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastPathStats {
    /// Flows on the fast path now.
    pub flows: usize,
    /// Packets and bytes the flows on it now forwarded there.
    pub now: Counts,
    /// Packets and bytes every flow forwarded there since the start.
    pub forwarded: Counts,
    /// Times since the start a flow was put on the fast path, or its
    /// entry re-marked.
    pub taken: u64,
    /// Times the table was emptied because events were lost.
    pub cleared: u64,
}

/// What flows that ended forwarded on the fast path, for the flow log's
/// reader, which reads their ends from a socket of its own: whichever of
/// the two readers comes first takes the flow off the fast path, under
/// the table's lock, so that the log gets its bytes either way.
#[derive(Clone)]
pub struct FastPathEnded(Arc<Mutex<FlowTable>>);

impl std::fmt::Debug for FastPathEnded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastPathEnded")
    }
}

impl FastPathEnded {
    /// Bytes from the slot and to it that ended flow `id` forwarded on the
    /// fast path (nothing, once taken).
    pub fn take(&self, id: u32) -> (u64, u64) {
        let Ok(mut table) = self.0.lock() else {
            return (0, 0);
        };
        match table.take_ended(id) {
            Ok(Some(c)) => (c.out.1, c.back.1),
            Ok(None) => (0, 0),
            Err(e) => {
                tracing::warn!(error = %e, "reading what an ended flow forwarded on the fast path");
                (0, 0)
            }
        }
    }
}

/// The loaded fast path and its event reader.
pub struct FastPathState {
    path: FastPath,
    table: Arc<Mutex<FlowTable>>,
    taken: Arc<AtomicU64>,
    cleared: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FastPathState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPathState")
            .field("path", &self.path)
            .finish()
    }
}

impl FastPathState {
    /// Loads the program, attaches it to the host namespace's interfaces
    /// other than slots and loopback, and starts reading events.
    pub fn start(host: Option<&Netns>, cfg: &DataplaneConfig) -> io::Result<FastPathState> {
        let (mut path, table) = FastPath::load()?;
        let uplinks: Vec<String> = in_ns(host, || {
            Ok(sandgate_netns::Rtnl::open()?
                .links()?
                .into_iter()
                .map(|l| l.name)
                .filter(|n| n != "lo" && !n.starts_with(SLOT_IF_PREFIX))
                .collect())
        })?;
        for name in &uplinks {
            in_ns(host, || Ok(path.attach(name, Side::Uplink)?))?;
        }
        tracing::info!(uplinks = ?uplinks, "fast path loaded");
        let socket = crate::flows::conntrack_events(
            host,
            &[
                NFNLGRP_CONNTRACK_NEW,
                NFNLGRP_CONNTRACK_UPDATE,
                NFNLGRP_CONNTRACK_DESTROY,
            ],
        )?;
        let requests = crate::flows::conntrack_requests(host)?;
        let table = Arc::new(Mutex::new(table));
        let stop = Arc::new(AtomicBool::new(false));
        let (taken, cleared) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let reader = Reader {
            socket,
            requests,
            cfg: cfg.clone(),
            table: table.clone(),
            taken: taken.clone(),
            cleared: cleared.clone(),
            stop: stop.clone(),
        };
        // In the host namespace: interface names are looked up there.
        let thread = match host {
            Some(ns) => ns.spawn("sandgate-fastpath", move || reader.run())?,
            None => std::thread::Builder::new()
                .name("sandgate-fastpath".into())
                .spawn(move || reader.run())?,
        };
        Ok(FastPathState {
            path,
            table,
            taken,
            cleared,
            stop,
            thread: Some(thread),
        })
    }

    /// Attaches the slot program to slot interface `name` (nothing if it
    /// is there).
    pub fn attach_slot(&mut self, host: Option<&Netns>, name: &str) -> io::Result<()> {
        let path = &mut self.path;
        in_ns(host, || Ok(path.attach(name, Side::Slot)?))
    }

    /// Attaches the slot program to slot interface `name` unless it is
    /// attached there already (the interface a slot was made with keeps
    /// its name and index until the slot goes): no trip into the host
    /// namespace for a slot that has it.
    pub fn ensure_slot(&mut self, host: Option<&Netns>, name: &str) -> io::Result<()> {
        if self.path.is_attached(name) {
            return Ok(());
        }
        self.attach_slot(host, name)
    }

    /// Detaches the program from `name`. A failure is logged: an interface
    /// that is gone took its program with it.
    pub fn detach(&mut self, name: &str) {
        if let Err(e) = self.path.detach(name) {
            tracing::warn!(interface = name, error = %e, "detaching the fast path");
        }
    }

    /// Repeats what `tx` did to nftables' `valid` map (`committed`), or
    /// only its removals (a transaction the kernel refused). On any
    /// failure every mark is revoked (every flow back to netfilter) and
    /// the error told.
    pub fn mirror(&mut self, tx: &Transaction, committed: bool) {
        let mut apply = || -> Result<(), sandgate_fastpath::Error> {
            for (verb, key, data) in tx.changes_to("valid") {
                if !committed && verb == Verb::Add && data == Some(&ElementData::Accept) {
                    continue;
                }
                if verb == Verb::Flush {
                    self.path.revoke_all()?;
                    continue;
                }
                let Some(mark) = key.as_mark() else {
                    continue;
                };
                match (verb, data) {
                    (Verb::Add, Some(ElementData::Accept)) => self.path.allow(mark)?,
                    _ => self.path.revoke(mark)?,
                }
            }
            Ok(())
        };
        if let Err(e) = apply() {
            tracing::error!(error = %e, "mirroring valid marks to the fast path; every flow goes back to netfilter");
            if let Err(e) = self.path.revoke_all() {
                tracing::error!(error = %e, "emptying the fast path's valid marks");
            }
        }
    }

    /// The flow log's handle on what ended flows forwarded here.
    pub fn ended(&self) -> FastPathEnded {
        FastPathEnded(self.table.clone())
    }

    /// How often the slot and the uplink programs ran, and for how long.
    pub fn runs(&mut self) -> io::Result<[Runs; 2]> {
        Ok([self.path.runs(Side::Slot)?, self.path.runs(Side::Uplink)?])
    }

    /// The marks the fast path lets through.
    pub fn allowed(&self) -> io::Result<Vec<u32>> {
        Ok(self.path.allowed()?)
    }

    /// What the fast path did.
    pub fn stats(&self) -> io::Result<FastPathStats> {
        let table = self
            .table
            .lock()
            .map_err(|_| io::Error::other("the fast path's table lock is poisoned"))?;
        Ok(FastPathStats {
            flows: table.len(),
            now: table.total()?,
            forwarded: table.forwarded()?,
            taken: self.taken.load(Ordering::Relaxed),
            cleared: self.cleared.load(Ordering::Relaxed),
        })
    }
}

impl Drop for FastPathState {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the fast path's event reader panicked");
            }
        }
    }
}

struct Reader {
    socket: Socket,
    /// For making a TCP flow's entry liberal before it goes on.
    requests: Socket,
    cfg: DataplaneConfig,
    table: Arc<Mutex<FlowTable>>,
    taken: Arc<AtomicU64>,
    cleared: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// What an event asks of the table.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// On the fast path, or its mark changed.
    Put(u32, Flow),
    /// On the fast path once connection tracking no longer checks the TCP
    /// flow's sequence numbers against its window (it will see one packet
    /// a second; without this it would call the next one invalid and
    /// netfilter would not translate it): its original tuple.
    Liberal(u32, Flow, Vec<Tuple>),
    /// Its mark changed, if it is on the fast path (a TCP flow's event
    /// that does not tell its state).
    Remark(u32, Flow),
    /// Off the fast path (what it forwarded there kept for its end).
    Take(u32),
}

impl Reader {
    fn run(self) {
        let mut buf = vec![0u8; 1 << 16];
        while !self.stop.load(Ordering::SeqCst) {
            let n = match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                    tracing::warn!("connection tracking told more than the fast path could read; every flow goes back to netfilter");
                    self.cleared.fetch_add(1, Ordering::Relaxed);
                    self.with_table(|t| t.clear());
                    continue;
                }
                Err(_) => continue,
            };
            for message in crate::events::messages(&buf, n) {
                let NetfilterMessageInner::Conntrack(message) = message else {
                    continue;
                };
                let change = match message {
                    ConntrackMessage::New(a) => change(&self.cfg, &a, false, if_index),
                    ConntrackMessage::Delete(a) => change(&self.cfg, &a, true, if_index),
                    _ => None,
                };
                match change {
                    Some(Change::Put(id, flow)) => self.put(id, flow),
                    Some(Change::Liberal(id, flow, orig)) => {
                        match crate::flows::make_liberal(
                            &self.requests,
                            &orig,
                            flow.source.0.is_ipv6(),
                        ) {
                            Ok(()) => self.put(id, flow),
                            // Forgotten since: its end is on its way.
                            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "a TCP flow stays on netfilter's path: connection tracking was not made liberal for it")
                            }
                        }
                    }
                    Some(Change::Remark(id, flow)) => self.with_table(|t| {
                        if t.contains(id) {
                            t.insert(id, flow)?;
                        }
                        Ok(())
                    }),
                    Some(Change::Take(id)) => self.with_table(|t| t.take_off(id)),
                    None => {}
                }
            }
        }
    }

    fn put(&self, id: u32, flow: Flow) {
        self.with_table(|t| t.insert(id, flow));
        self.taken.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `f` on the table; a failure empties it (nothing stays on the
    /// fast path that the table may no longer know of).
    fn with_table(&self, f: impl FnOnce(&mut FlowTable) -> Result<(), sandgate_fastpath::Error>) {
        let Ok(mut table) = self.table.lock() else {
            tracing::error!("the fast path's table lock is poisoned");
            return;
        };
        if let Err(e) = f(&mut table) {
            tracing::error!(error = %e, "fast path table; emptying it");
            if let Err(e) = table.clear() {
                tracing::error!(error = %e, "emptying the fast path's table");
            }
        }
    }
}

/// The index of interface `name` here.
fn if_index(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// What a ctnetlink message about a flow asks of the table: a slot's
/// flow netfilter confirmed (UDP) or established (TCP), translated by
/// source only and marked, goes on; one forgotten, or no longer
/// established, goes off.
/// `ifindex` names a slot's interface's index (in the host namespace).
fn change(
    cfg: &DataplaneConfig,
    attributes: &[ConntrackAttribute],
    ended: bool,
    ifindex: impl Fn(&str) -> Option<u32>,
) -> Option<Change> {
    let (mut orig, mut reply, mut orig_tuple) = (None, None, None);
    let (mut id, mut mark, mut tcp_state) = (None, 0u32, None);
    let mut infos: &[ProtoInfo] = &[];
    for a in attributes {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => {
                orig = Some(ends(t));
                orig_tuple = Some(t);
            }
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(ends(t)),
            ConntrackAttribute::CtaMark(m) => mark = *m,
            ConntrackAttribute::CtaProtoInfo(i) => {
                infos = i;
                for info in infos {
                    if let ProtoInfo::TCP(tcp) = info {
                        for t in tcp {
                            if let ProtoInfoTCP::State(s) = t {
                                tcp_state = Some(*s);
                            }
                        }
                    }
                }
            }
            ConntrackAttribute::Other(nla)
                if nla.kind() & crate::flows::NLA_TYPE_MASK == crate::flows::CTA_ID =>
            {
                id = crate::flows::value_of(nla)[..]
                    .try_into()
                    .ok()
                    .map(u32::from_be_bytes);
            }
            _ => {}
        }
    }
    let id = id?;
    if ended {
        return Some(Change::Take(id));
    }
    let liberal = crate::flows::is_liberal(infos);
    let (orig_tuple, (orig, reply)) = (orig_tuple?, (orig?, reply?));
    let source = orig.source?;
    let slot = cfg.slot_of_sandbox(source)?;
    let protocol = match orig.protocol? {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        _ => return None,
    };
    if protocol == 6 && tcp_state.is_some_and(|s| s != TCP_ESTABLISHED) {
        // Not yet established (its handshake is netfilter's), or closing.
        return Some(Change::Take(id));
    }
    let destination = orig.destination?;
    // Redirected to the DNS service or the gateway: not forwarded.
    if reply.source != Some(destination) || reply.source_port != orig.port {
        return None;
    }
    let host_if = cfg.slot(slot).host_if;
    let slot_ifindex = ifindex(&host_if)?;
    let flow = Flow {
        protocol,
        slot_ifindex,
        source: (source, orig.source_port?),
        destination: (destination, orig.port?),
        translated: (reply.destination?, reply.port?),
        mark,
    };
    if !flow.is_eligible() {
        return None;
    }
    Some(match (protocol, tcp_state) {
        (6, None) => Change::Remark(id, flow),
        (6, Some(_)) if !liberal => Change::Liberal(id, flow, orig_tuple.clone()),
        _ => Change::Put(id, flow),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::DefaultNla;
    use netlink_packet_netfilter::conntrack::{IPTuple, ProtoTuple, TCPFlags};
    use std::net::IpAddr;

    fn config() -> DataplaneConfig {
        let policy = sandgate_policy::PolicyConfig::default();
        DataplaneConfig::new(&policy, "t", "/nonexistent/state.json".into()).unwrap()
    }

    fn tuple(protocol: Protocol, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<Tuple> {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(src),
                IPTuple::DestinationAddress(dst),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(protocol),
                ProtoTuple::SourcePort(sport),
                ProtoTuple::DestinationPort(dport),
            ]),
        ]
    }

    /// A flow's event: from `me`:40000 to 192.0.2.10:443, its reply from
    /// 192.0.2.10:`reply_port` to 203.0.113.1:40001 (the translated
    /// source), marked 42, with its TCP state if `tcp` says one.
    fn event(
        protocol: Protocol,
        me: IpAddr,
        reply_port: u16,
        tcp: Option<u8>,
    ) -> Vec<ConntrackAttribute> {
        let far: IpAddr = "192.0.2.10".parse().unwrap();
        let nat: IpAddr = "203.0.113.1".parse().unwrap();
        let mut a = vec![
            ConntrackAttribute::CtaTupleOrig(tuple(protocol, me, far, 40000, 443)),
            ConntrackAttribute::CtaTupleReply(tuple(protocol, far, nat, reply_port, 40001)),
            ConntrackAttribute::CtaMark(42),
            ConntrackAttribute::Other(DefaultNla::new(
                crate::flows::CTA_ID,
                7u32.to_be_bytes().to_vec(),
            )),
        ];
        if let Some(state) = tcp {
            a.push(ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(
                vec![ProtoInfoTCP::State(state)],
            )]));
        }
        a
    }

    #[test]
    fn a_slots_flow_goes_on_when_confirmed_or_established_and_off_when_closing_or_forgotten() {
        let cfg = config();
        let me = IpAddr::V4(cfg.slot(5).sandbox4);
        let index = |name: &str| (name == cfg.slot(5).host_if).then_some(9);
        let put = |c: Option<Change>| match c {
            Some(Change::Put(7, f)) => f,
            other => panic!("not put: {other:?}"),
        };
        let f = put(change(
            &cfg,
            &event(Protocol::Udp, me, 443, None),
            false,
            index,
        ));
        assert_eq!(
            (f.protocol, f.slot_ifindex, f.mark, f.source, f.translated),
            (
                17,
                9,
                42,
                (me, 40000),
                ("203.0.113.1".parse().unwrap(), 40001)
            )
        );
        // An established TCP flow is made liberal first, then put on.
        let established = event(Protocol::Tcp, me, 443, Some(TCP_ESTABLISHED));
        match change(&cfg, &established, false, index) {
            Some(Change::Liberal(7, f, orig)) => {
                assert_eq!(f.protocol, 6);
                assert_eq!(
                    orig,
                    tuple(Protocol::Tcp, me, "192.0.2.10".parse().unwrap(), 40000, 443)
                );
            }
            other => panic!("not made liberal: {other:?}"),
        }
        let flags = |original: bool, flags: u8| {
            let f = TCPFlags::parse(&[flags, flags]).unwrap();
            match original {
                true => ProtoInfoTCP::OriginalFlags(f),
                false => ProtoInfoTCP::ReplyFlags(f),
            }
        };
        let with_flags = |original: u8, reply: u8| {
            let mut a = established.clone();
            a.push(ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(
                vec![
                    ProtoInfoTCP::State(TCP_ESTABLISHED),
                    flags(true, original),
                    flags(false, reply),
                ],
            )]));
            a
        };
        // One side liberal is not enough.
        assert!(matches!(
            change(&cfg, &with_flags(0x08, 0x01), false, index),
            Some(Change::Liberal(7, _, _))
        ));
        put(change(&cfg, &with_flags(0x09, 0x08), false, index));
        // A TCP event that does not tell the state changes a mark only.
        assert!(matches!(
            change(&cfg, &event(Protocol::Tcp, me, 443, None), false, index),
            Some(Change::Remark(7, _))
        ));
        // The handshake, a close, and the end.
        for state in [1, 2, 4, 5, 7] {
            assert_eq!(
                change(
                    &cfg,
                    &event(Protocol::Tcp, me, 443, Some(state)),
                    false,
                    index
                ),
                Some(Change::Take(7))
            );
        }
        assert_eq!(
            change(&cfg, &event(Protocol::Udp, me, 443, None), true, index),
            Some(Change::Take(7))
        );
        // Redirected (its reply from another port), not a slot's, not TCP
        // or UDP, unmarked, or a slot without its interface: never on.
        assert_eq!(
            change(&cfg, &event(Protocol::Udp, me, 10053, None), false, index),
            None
        );
        let host: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            change(&cfg, &event(Protocol::Udp, host, 443, None), false, index),
            None
        );
        assert_eq!(
            change(&cfg, &event(Protocol::Icmp, me, 443, None), false, index),
            None
        );
        let mut unmarked = event(Protocol::Udp, me, 443, None);
        unmarked.retain(|a| !matches!(a, ConntrackAttribute::CtaMark(_)));
        assert_eq!(change(&cfg, &unmarked, false, index), None);
        assert_eq!(
            change(&cfg, &event(Protocol::Udp, me, 443, None), false, |_| None),
            None
        );
    }
}
