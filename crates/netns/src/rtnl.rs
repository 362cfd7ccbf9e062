//! A blocking rtnetlink client: one socket, one request at a time, each
//! acknowledged. The socket belongs to the network namespace of the thread
//! that opened it.

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// A link: its index, name and hardware address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The interface index.
    pub index: u32,
    /// The interface name.
    pub name: String,
    /// The hardware (MAC) address, where the link has one.
    pub mac: Vec<u8>,
    /// Whether it is operationally up (RFC 2863 `up`): for a veth, both
    /// ends up and the kernel's link watcher done with it, so that its
    /// queue passes packets rather than dropping them.
    pub oper_up: bool,
}

/// A blocking rtnetlink connection in the calling thread's namespace.
#[derive(Debug)]
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The message naming `net` on link `index`.
fn address_message(index: u32, net: IpNet) -> AddressMessage {
    let addr = net.addr();
    let mut msg = AddressMessage::default();
    msg.header.family = family(addr);
    msg.header.prefix_len = net.prefix_len();
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    msg
}

/// The address an address message names (its local address, for a
/// point-to-point link whose `Address` is the peer's).
fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

/// The rtnetlink multicast groups of address changes
/// (`RTNLGRP_IPV4_IFADDR`, `RTNLGRP_IPV6_IFADDR`).
const ADDRESS_GROUPS: [u32; 2] = [5, 9];

/// A subscription to the address changes of the namespace of the thread
/// that opened it: [`AddressMonitor::wait`] returns the addresses added or
/// removed since the last call.
#[derive(Debug)]
pub struct AddressMonitor {
    socket: Socket,
    buf: Vec<u8>,
}

impl AddressMonitor {
    /// Subscribes, in the calling thread's network namespace.
    pub fn open() -> io::Result<AddressMonitor> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        for group in ADDRESS_GROUPS {
            socket.add_membership(group)?;
        }
        socket.set_non_blocking(true)?;
        Ok(AddressMonitor {
            socket,
            buf: vec![0; 1 << 16],
        })
    }

    /// Waits at most `timeout` for address changes and returns the
    /// addresses they name (empty when none came). An overrun of the
    /// socket's buffer (changes were lost) is reported as `Ok(None)`: the
    /// caller should read every address again.
    pub fn wait(&mut self, timeout: std::time::Duration) -> io::Result<Option<Vec<IpAddr>>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(Some(Vec::new())),
            Err(e) => return Err(e.into()),
        }
        let mut changed = Vec::new();
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(changed)),
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut offset = 0;
            while offset < n {
                let Ok(msg) =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                else {
                    // Something this parser does not know: read everything again.
                    return Ok(None);
                };
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len;
                if let NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a),
                ) = &msg.payload
                {
                    changed.extend(address_of(a));
                }
            }
        }
    }
}

impl Rtnl {
    /// Opens a connection in the calling thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl {
            socket,
            seq: 0,
            buf: vec![0; 1 << 16],
        })
    }

    /// Sends one request and collects the messages of its answer until the
    /// acknowledgement (or the end of a dump).
    pub(crate) fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answers),
                            Some(_) => Err(e.to_io()),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(m) => {
                        answers.push(m);
                        if !dump {
                            continue;
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    pub(crate) fn ack(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(message, NLM_F_ACK | flags).map(drop)
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let answers = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers.into_iter().filter_map(link_of).collect())
    }

    /// Every address of the namespace, with the index of its link.
    pub fn addresses(&mut self) -> io::Result<Vec<(u32, IpAddr)>> {
        let answers = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => {
                    address_of(&a).map(|addr| (a.header.index, addr))
                }
                _ => None,
            })
            .collect())
    }

    /// The link named `name`, if there is one: asked for by name, so that
    /// the cost does not grow with the number of links (a dump of two
    /// thousand slot links took 25 ms).
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        // No link has a name longer than the kernel's limit (the kernel
        // refuses to look one up: EINVAL).
        if name.len() >= nix::libc::IFNAMSIZ {
            return Ok(None);
        }
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(message), NLM_F_ACK) {
            Ok(answers) => Ok(answers.into_iter().find_map(link_of)),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits until the link named `name` is operationally up, at most
    /// `timeout`. A link just set up can drop what it is given to send
    /// until then: the kernel attaches its queue asynchronously (the link
    /// watcher), once both ends of a veth are up.
    pub fn wait_oper_up(&mut self, name: &str, timeout: std::time::Duration) -> io::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.link(name)?.is_some_and(|l| l.oper_up) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{name} is not operationally up after {timeout:?}"),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The index of the link named `name`, if there is one.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        Ok(self.link(name)?.map(|l| l.index))
    }

    /// Creates a veth pair: `name` here, `peer` in the namespace of
    /// `peer_ns` (or here when `None`). Fails if `name` exists.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_ns: Option<BorrowedFd<'_>>,
    ) -> io::Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        if let Some(fd) = peer_ns {
            peer_msg
                .attributes
                .push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Sets a link up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.ack(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Sets a link down.
    pub fn set_down(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = LinkFlags::Up;
        self.ack(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Deletes a link (for a veth, both ends).
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.ack(RouteNetlinkMessage::DelLink(msg), 0)
    }

    /// Adds `addr/prefix` to a link. IPv6 addresses skip duplicate address
    /// detection (the link is a private point-to-point pair), so they are
    /// usable at once.
    pub fn add_address(&mut self, index: u32, net: IpNet) -> io::Result<()> {
        let mut msg = address_message(index, net);
        if net.addr().is_ipv6() {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.ack(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Removes `addr/prefix` from a link.
    pub fn delete_address(&mut self, index: u32, net: IpNet) -> io::Result<()> {
        self.ack(
            RouteNetlinkMessage::DelAddress(address_message(index, net)),
            0,
        )
    }

    /// Adds a permanent neighbour entry: `addr` is at `mac` on link `index`.
    /// With both ends of a veth pinned this way, no ARP or neighbour
    /// discovery stands between a new slot and its first packet.
    pub fn add_neighbour(&mut self, index: u32, addr: IpAddr, mac: &[u8]) -> io::Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(addr);
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(NeighbourAttribute::Destination(match addr {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.ack(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Adds a route to `dest` through `gateway` (if any) on link `oif`.
    pub fn add_route(&mut self, dest: IpNet, gateway: Option<IpAddr>, oif: u32) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(dest.addr());
        msg.header.destination_prefix_length = dest.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        msg.header.kind = RouteType::Unicast;
        if dest.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dest.addr())));
        }
        if let Some(gw) = gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(oif));
        self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}

/// The link a `NewLink` message describes (one with a name).
fn link_of(message: RouteNetlinkMessage) -> Option<Link> {
    let RouteNetlinkMessage::NewLink(l) = message else {
        return None;
    };
    let name = l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })?;
    let mac = l
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => Some(m.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let oper_up = l
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::OperState(State::Up)));
    Some(Link {
        index: l.header.index,
        name,
        mac,
        oper_up,
    })
}
