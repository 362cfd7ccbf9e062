//! Shaping what a link receives (what a sandbox sends through its veth),
//! on the host side, over rtnetlink.
//!
//! A qdisc shapes what a link *sends*; what a link *receives* can only be
//! policed where it arrives, and a policer drops whatever exceeds its
//! bucket, which TCP answers with collapses and retransmissions. So, as
//! the CNI bandwidth plugin does, what arrives on the link is redirected
//! (an `ingress` qdisc, a `u32` filter that matches every packet, a
//! `mirred` redirect) to an `ifb` device of its own, whose root qdisc, a
//! token bucket (`tbf`), queues and paces it; the `ifb` device then hands
//! every packet back to the link's receive path, as if it had just
//! arrived there (netfilter sees the link as the packet's input
//! interface). Nothing of it is reachable from the link's peer.
//!
//! The `ingress` qdisc, the filter and the redirect have types in
//! `netlink-packet-route`; `tbf`'s options do not, and are laid out here
//! (`struct tc_tbf_qopt` of `<linux/pkt_sched.h>`).

use crate::rtnl::Rtnl;
use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcStats2, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;
use nix::errno::Errno;
use std::io;

/// A token bucket: the rate, the burst sent at line speed after a pause,
/// and the queue that holds what waits (beyond it, packets are dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Bytes a second (on the wire: Ethernet, IP and TCP headers
    /// included).
    pub rate: u64,
    /// Bytes.
    pub burst: u32,
    /// Bytes.
    pub queue: u32,
}

impl TokenBucket {
    /// The bucket of a limit of `mbit` megabits a second: a burst of 10 ms
    /// of it (at least 64 KiB, so that a segmentation-offloaded packet is
    /// sent whole) and a queue of 50 ms of it (at least 128 KiB, at most
    /// 64 MiB).
    pub fn of_mbit(mbit: u32) -> TokenBucket {
        let rate = u64::from(mbit) * 1_000_000 / 8;
        let part = |ms: u64, least: u64, most: u64| {
            u32::try_from((rate * ms / 1000).clamp(least, most)).unwrap_or(u32::MAX)
        };
        TokenBucket {
            rate,
            burst: part(10, 64 * 1024, u64::from(u32::MAX)),
            queue: part(50, 128 * 1024, 64 << 20),
        }
    }
}

/// What a token bucket has done since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketStats {
    /// Bytes it sent on.
    pub bytes: u64,
    /// Times a packet had to wait for tokens: the link sent faster than
    /// the rate.
    pub overlimits: u64,
    /// Packets dropped because the queue was full.
    pub drops: u64,
}

/// `ETH_P_ALL`: a filter for every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// `TCA_TBF_PARMS`, `TCA_TBF_RATE64` (a rate of 2^32 bytes a second or
/// more) and `TCA_TBF_BURST`.
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
/// `TC_LINKLAYER_ETHERNET`: the kernel computes the rate table itself.
const TC_LINKLAYER_ETHERNET: u8 = 1;

/// The ingress qdisc's handle (`ffff:`), the parent of its filters.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

/// `struct tc_tbf_qopt`: rate, no peak rate, the queue; the burst goes in
/// `TCA_TBF_BURST` (in bytes, which the kernel turns into time).
fn tbf_options(bucket: TokenBucket) -> Vec<TcOption> {
    let mut qopt = Vec::with_capacity(36);
    // struct tc_ratespec rate: cell_log, linklayer, overhead, cell_align,
    // mpu, rate.
    qopt.push(0u8);
    qopt.push(TC_LINKLAYER_ETHERNET);
    qopt.extend_from_slice(&0u16.to_ne_bytes());
    qopt.extend_from_slice(&0i16.to_ne_bytes());
    qopt.extend_from_slice(&0u16.to_ne_bytes());
    let rate32 = u32::try_from(bucket.rate).unwrap_or(u32::MAX);
    qopt.extend_from_slice(&rate32.to_ne_bytes());
    // struct tc_ratespec peakrate: none.
    qopt.extend_from_slice(&[0u8; 12]);
    // limit, buffer (from TCA_TBF_BURST), mtu (no peak rate).
    qopt.extend_from_slice(&bucket.queue.to_ne_bytes());
    qopt.extend_from_slice(&0u32.to_ne_bytes());
    qopt.extend_from_slice(&0u32.to_ne_bytes());
    let mut options = vec![
        TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, qopt)),
        TcOption::Other(DefaultNla::new(
            TCA_TBF_BURST,
            bucket.burst.to_ne_bytes().to_vec(),
        )),
    ];
    if rate32 == u32::MAX {
        options.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_RATE64,
            bucket.rate.to_ne_bytes().to_vec(),
        )));
    }
    options
}

impl Rtnl {
    /// Shapes what link `index` receives to `bucket`, through the `ifb`
    /// device `ifb`. Whatever of it exists already is kept and completed
    /// (the device made and brought up, the bucket set in place without a
    /// moment unshaped, the redirect made if missing), so that it can be
    /// called again after a crash or after the device was set down.
    pub fn shape_received(&mut self, index: u32, ifb: &str, bucket: TokenBucket) -> io::Result<()> {
        let (ifb_index, made) = match self.link_index(ifb)? {
            Some(i) => (i, false),
            None => {
                let mut link = LinkMessage::default();
                link.attributes.push(LinkAttribute::IfName(ifb.to_string()));
                link.attributes
                    .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]));
                self.ack(
                    RouteNetlinkMessage::NewLink(link),
                    NLM_F_CREATE | NLM_F_EXCL,
                )?;
                let i = self
                    .link_index(ifb)?
                    .ok_or_else(|| io::Error::other(format!("{ifb} vanished as it was made")))?;
                (i, true)
            }
        };
        let shaped = self
            .token_bucket(ifb_index, bucket)
            .and_then(|()| self.set_up(ifb_index))
            .and_then(|()| {
                if made {
                    // A redirect left to a device of the same name that
                    // is gone would drop every packet: it goes first.
                    self.remove_ingress(index)?;
                    self.redirect_received(index, ifb_index)
                } else if !self.redirects_received(index)? {
                    self.redirect_received(index, ifb_index)
                } else {
                    Ok(())
                }
            });
        match shaped {
            Ok(()) => Ok(()),
            // Nothing half-made stays (the filter goes with the qdisc);
            // a device that was there before stays, shaped or not.
            Err(e) if made => match self.unshape_received(index, ifb) {
                Ok(()) => Err(e),
                Err(left) => Err(io::Error::new(
                    e.kind(),
                    format!("{e}; and what was half made stays: {left}"),
                )),
            },
            Err(e) => Err(e),
        }
    }

    /// Stops shaping what link `index` receives: its ingress qdisc (with
    /// the redirect) and the `ifb` device go. Nothing to remove is fine.
    pub fn unshape_received(&mut self, index: u32, ifb: &str) -> io::Result<()> {
        self.remove_ingress(index)?;
        if let Some(ifb_index) = self.link_index(ifb)? {
            self.delete_link(ifb_index)?;
        }
        Ok(())
    }

    /// Removes link `index`'s ingress qdisc and its filters, if any.
    fn remove_ingress(&mut self, index: u32) -> io::Result<()> {
        let mut qdisc = TcMessage::default();
        qdisc.header.index = i32::try_from(index).map_err(io::Error::other)?;
        qdisc.header.parent = TcHandle::INGRESS;
        qdisc.header.handle = INGRESS_HANDLE;
        match self.ack(RouteNetlinkMessage::DelQueueDiscipline(qdisc), 0) {
            Ok(()) => Ok(()),
            // No ingress qdisc (or no such link): nothing to remove.
            Err(e)
                if matches!(
                    e.raw_os_error().map(Errno::from_raw),
                    Some(Errno::ENOENT | Errno::EINVAL | Errno::ENODEV)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The token buckets at the root of links of this namespace, by link
    /// name (none, cheaply, when no link has one).
    pub fn token_bucket_stats(&mut self) -> io::Result<Vec<(String, BucketStats)>> {
        let answers = self.request(
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut by_index = Vec::new();
        for answer in answers {
            let RouteNetlinkMessage::NewQueueDiscipline(q) = answer else {
                continue;
            };
            let tbf = q
                .attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(k) if k == "tbf"));
            if !tbf || q.header.parent != TcHandle::ROOT {
                continue;
            }
            let mut stats = BucketStats::default();
            for a in &q.attributes {
                if let TcAttribute::Stats2(s2) = a {
                    for s in s2 {
                        match s {
                            TcStats2::Basic(b) => stats.bytes = b.bytes,
                            TcStats2::Queue(q) => {
                                stats.overlimits = u64::from(q.overlimits);
                                stats.drops = u64::from(q.drops);
                            }
                            _ => {}
                        }
                    }
                }
            }
            by_index.push((q.header.index, stats));
        }
        if by_index.is_empty() {
            return Ok(Vec::new());
        }
        let names: std::collections::HashMap<u32, String> = self
            .links()?
            .into_iter()
            .map(|l| (l.index, l.name))
            .collect();
        Ok(by_index
            .into_iter()
            .filter_map(|(i, s)| Some((names.get(&u32::try_from(i).ok()?)?.clone(), s)))
            .collect())
    }

    /// `tbf` with `bucket` at the root of link `index`, in place of
    /// whatever root qdisc it had.
    fn token_bucket(&mut self, index: u32, bucket: TokenBucket) -> io::Result<()> {
        let mut msg = TcMessage::default();
        msg.header.index = i32::try_from(index).map_err(io::Error::other)?;
        msg.header.parent = TcHandle::ROOT;
        msg.header.handle = TcHandle { major: 1, minor: 0 };
        msg.attributes.push(TcAttribute::Kind("tbf".into()));
        msg.attributes
            .push(TcAttribute::Options(tbf_options(bucket)));
        self.ack(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Whether link `index` has a filter with actions on its ingress
    /// qdisc (none when it has no ingress qdisc).
    fn redirects_received(&mut self, index: u32) -> io::Result<bool> {
        let mut filters = TcMessage::default();
        filters.header.index = i32::try_from(index).map_err(io::Error::other)?;
        filters.header.parent = INGRESS_HANDLE;
        let answers = self.request(RouteNetlinkMessage::GetTrafficFilter(filters), NLM_F_DUMP)?;
        Ok(answers.iter().any(|a| {
            matches!(a, RouteNetlinkMessage::NewTrafficFilter(f) if f.attributes.iter().any(|a| {
                matches!(a, TcAttribute::Options(o) if o.iter().any(|o| {
                    matches!(o, TcOption::U32(TcFilterU32Option::Action(_)))
                }))
            }))
        }))
    }

    /// Every packet link `index` receives, redirected to the egress of
    /// link `to` (an ingress qdisc there already is kept).
    fn redirect_received(&mut self, index: u32, to: u32) -> io::Result<()> {
        let ifindex = i32::try_from(index).map_err(io::Error::other)?;
        let mut qdisc = TcMessage::default();
        qdisc.header.index = ifindex;
        qdisc.header.parent = TcHandle::INGRESS;
        qdisc.header.handle = INGRESS_HANDLE;
        qdisc.attributes.push(TcAttribute::Kind("ingress".into()));
        match self.ack(
            RouteNetlinkMessage::NewQueueDiscipline(qdisc),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() != Some(Errno::EEXIST as i32) => return Err(e),
            _ => {}
        }
        let mut generic = TcActionGeneric::default();
        generic.action = TcActionType::Stolen;
        let mut mirror = TcMirror::default();
        mirror.generic = generic;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to;
        let mut redirect = TcAction::default();
        redirect.attributes = vec![
            TcActionAttribute::Kind("mirred".into()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        // One key that matches every packet (mask 0).
        let mut key = TcU32Key::default();
        key.mask = 0;
        key.val = 0;
        let mut every = TcU32Selector::default();
        every.flags = TcU32SelectorFlags::Terminal;
        every.nkeys = 1;
        every.keys = vec![key];
        let mut filter = TcMessage::default();
        filter.header.index = ifindex;
        filter.header.parent = INGRESS_HANDLE;
        // Priority 1, every protocol (in network order).
        filter.header.info = (1 << 16) | u32::from(ETH_P_ALL.to_be());
        filter.attributes.push(TcAttribute::Kind("u32".into()));
        filter.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(every)),
            TcOption::U32(TcFilterU32Option::Action(vec![redirect])),
        ]));
        self.ack(
            RouteNetlinkMessage::NewTrafficFilter(filter),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_is_sized_from_its_rate_within_its_bounds() {
        let ten = TokenBucket::of_mbit(10);
        assert_eq!(ten.rate, 1_250_000);
        assert_eq!((ten.burst, ten.queue), (64 * 1024, 128 * 1024));
        let big = TokenBucket::of_mbit(100_000);
        assert_eq!(big.rate, 12_500_000_000);
        assert_eq!((big.burst, big.queue), (125_000_000, 64 << 20));
        // Above 2^32 bytes a second, the rate goes in TCA_TBF_RATE64.
        assert_eq!(tbf_options(big).len(), 3);
        assert_eq!(tbf_options(ten).len(), 2);
    }
}
