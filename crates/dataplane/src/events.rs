//! Deny events: denied connection attempts, logged by the ruleset to an
//! NFLOG group, read here over netlink and turned into events with the
//! policy's reason codes.
//!
//! The kernel already limits logging to `log_rate` attempts a second per
//! slot (a flood is dropped before it costs user space anything); what
//! arrives is counted per slot and reason and passed on through a bounded
//! channel, whose overflow is counted too.

use crate::config::SLOT_IF_PREFIX;
use crate::ruleset::{log_class, prefix};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    config_request, ConfigCmd, ConfigMode, ConfigNla, PacketNla, Timeout, ULogMessage,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use sandgate_netns::{Netns, Rtnl};
use sandgate_policy::Ranges;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// A denied connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEvent {
    /// When the kernel logged it.
    pub time: SystemTime,
    /// The slot it came from.
    pub slot: u32,
    /// The reason code (`blocked`, `not_in_allow_list`, `restricted_by_tier`,
    /// `always_denied:<range>`, `private_range`, `spoofed_source`).
    pub reason: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or the IP protocol number.
    pub protocol: String,
    /// The source address.
    pub source: IpAddr,
    /// The destination address.
    pub destination: IpAddr,
    /// The destination port, for TCP and UDP.
    pub port: Option<u16>,
}

/// Counts of one slot's events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventCounters {
    /// Events delivered, by reason code.
    pub by_reason: HashMap<String, u64>,
    /// Events lost because the reader of [`Events::receiver`] was behind.
    pub overflowed: u64,
}

/// The event reader: a thread on an NFLOG socket in the host namespace.
#[derive(Debug)]
pub struct Events {
    receiver: Receiver<DenyEvent>,
    counters: Arc<Mutex<HashMap<u32, EventCounters>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How many events wait for a reader before new ones are counted and
/// dropped.
const QUEUE: usize = 4096;

impl Events {
    /// Starts reading NFLOG group `group` in `host` (or here, for `None`).
    /// `ranges` turns an always-denied destination into its range.
    pub fn start(host: Option<&Netns>, group: u16, ranges: Ranges) -> io::Result<Events> {
        let open = || -> io::Result<(Socket, Rtnl)> {
            let socket = request_socket()?;
            let mut bind = config_request(
                NetfilterProtoFamily::Unspec,
                group,
                vec![
                    ConfigNla::Cmd(ConfigCmd::Bind),
                    ConfigNla::Mode(ConfigMode::new_packet(128)),
                    // Each message at once, not batched for up to a second.
                    ConfigNla::QThresh(1),
                    ConfigNla::Timeout(Timeout::new(1)),
                ],
            );
            bind.header.sequence_number = 1;
            let mut buf = vec![0; bind.buffer_len()];
            bind.serialize(&mut buf);
            socket.send(&buf, 0)?;
            // The acknowledgement of the binding.
            let mut ack = vec![0; 4096];
            let n = socket.recv(&mut &mut ack[..], 0)?;
            if let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(&ack[..n]) {
                if let NetlinkPayload::Error(e) = m.payload {
                    if e.code.is_some() {
                        return Err(e.to_io());
                    }
                }
            }
            Ok((socket, Rtnl::open()?))
        };
        let (socket, rtnl) = match host {
            Some(ns) => ns.run(open)?,
            None => open()?,
        };
        set_timeout(&socket, Duration::from_millis(100))?;
        let (tx, receiver) = sync_channel(QUEUE);
        let counters = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            socket,
            rtnl,
            ranges,
            names: HashMap::new(),
            tx,
            counters: counters.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("sandgate-nflog".into())
            .spawn(move || reader.run())?;
        Ok(Events {
            receiver,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    /// The events, in the order the kernel logged them.
    pub fn receiver(&self) -> &Receiver<DenyEvent> {
        &self.receiver
    }

    /// The counts of slot `slot`.
    pub fn counters(&self, slot: u32) -> EventCounters {
        self.counters
            .lock()
            .map(|c| c.get(&slot).cloned().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the kernel event reader's thread panicked");
            }
        }
    }
}

/// The netfilter messages in the first `n` bytes of `buf` (as many as
/// one read from a netlink socket gives), in order; the rest of a read
/// after one that cannot be parsed is dropped.
pub(crate) fn messages(buf: &[u8], n: usize) -> impl Iterator<Item = NetfilterMessageInner> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || {
        while offset < n {
            let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..n]).ok()?;
            let len = msg.header.length as usize;
            if len == 0 {
                return None;
            }
            offset += len;
            if let NetlinkPayload::InnerMessage(m) = msg.payload {
                return Some(m.inner);
            }
        }
        None
    })
}

/// A netfilter netlink socket for requests to the kernel (and their
/// answers), in the calling thread's namespace.
pub(crate) fn request_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

pub(crate) fn set_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
    use nix::sys::time::TimeVal;
    let tv = TimeVal::new(0, i64::from(timeout.subsec_micros()));
    setsockopt(socket, ReceiveTimeout, &tv).map_err(io::Error::from)
}

struct Reader {
    socket: Socket,
    rtnl: Rtnl,
    ranges: Ranges,
    names: HashMap<u32, String>,
    tx: SyncSender<DenyEvent>,
    counters: Arc<Mutex<HashMap<u32, EventCounters>>>,
    stop: Arc<AtomicBool>,
}

impl Reader {
    fn run(mut self) {
        let mut buf = vec![0u8; 1 << 16];
        while !self.stop.load(Ordering::SeqCst) {
            let n = match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                Err(_) => continue,
            };
            let packets: Vec<_> = messages(&buf, n)
                .filter_map(|m| match m {
                    NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)) => Some(nlas),
                    _ => None,
                })
                .collect();
            for nlas in packets {
                if let Some(event) = self.event(&nlas) {
                    self.deliver(event);
                }
            }
        }
    }

    fn slot_of(&mut self, ifindex: u32) -> Option<u32> {
        if !self.names.contains_key(&ifindex) {
            if let Ok(links) = self.rtnl.links() {
                self.names = links.into_iter().map(|l| (l.index, l.name)).collect();
            }
        }
        self.names
            .get(&ifindex)?
            .strip_prefix(SLOT_IF_PREFIX)?
            .parse()
            .ok()
    }

    fn event(&mut self, nlas: &[PacketNla]) -> Option<DenyEvent> {
        let mut class = None;
        let mut indev = None;
        let mut payload = None;
        for nla in nlas {
            match nla {
                PacketNla::Prefix(p) => class = Some(p.to_string_lossy().into_owned()),
                PacketNla::IfIndexInDev(i) => indev = Some(*i),
                PacketNla::Payload(p) => payload = Some(p.as_slice()),
                _ => {}
            }
        }
        let (class, indev, payload) = (class?, indev?, payload?);
        let slot = self.slot_of(indev)?;
        let packet = SlicedPacket::from_ip(payload).ok()?;
        let (source, destination, number) = match packet.net? {
            NetSlice::Ipv4(ip) => (
                IpAddr::V4(ip.header().source_addr()),
                IpAddr::V4(ip.header().destination_addr()),
                ip.header().protocol().0,
            ),
            NetSlice::Ipv6(ip) => (
                IpAddr::V6(ip.header().source_addr()),
                IpAddr::V6(ip.header().destination_addr()),
                ip.payload().ip_number.0,
            ),
            _ => return None,
        };
        let (protocol, port) = match packet.transport {
            Some(TransportSlice::Tcp(t)) => ("tcp".to_string(), Some(t.destination_port())),
            Some(TransportSlice::Udp(u)) => ("udp".to_string(), Some(u.destination_port())),
            Some(TransportSlice::Icmpv4(_)) => ("icmp".to_string(), None),
            Some(TransportSlice::Icmpv6(_)) => ("icmpv6".to_string(), None),
            _ => (number.to_string(), None),
        };
        let reason = match log_class(&class) {
            Some(c) if c.prefix == prefix::DENIED => match self.ranges.always_denied(destination) {
                Some(r) => r.denied_code(),
                None => c.reason.to_string(),
            },
            Some(c) => c.reason.to_string(),
            None => class.trim_start_matches("sg:").to_string(),
        };
        Some(DenyEvent {
            time: SystemTime::now(),
            slot,
            reason,
            protocol,
            source,
            destination,
            port,
        })
    }

    fn deliver(&mut self, event: DenyEvent) {
        let slot = event.slot;
        let reason = event.reason.clone();
        let overflowed = matches!(self.tx.try_send(event), Err(TrySendError::Full(_)));
        if let Ok(mut counters) = self.counters.lock() {
            let c = counters.entry(slot).or_default();
            if overflowed {
                c.overflowed += 1;
            } else {
                *c.by_reason.entry(reason).or_default() += 1;
            }
        }
    }
}
