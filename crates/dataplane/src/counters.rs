//! The kernel's counts, read over netlink on a socket of their own: the
//! new connections let out (the named counters `allowed_net` and
//! `allowed_dns`), and, per slot and reason class, the denied attempts and
//! reached limits that the log meter held back (the `ld_<class>` sets);
//! and, per slot with an egress budget, what its pacer's token bucket has
//! done (over rtnetlink).
//!
//! A reader holds no lock of the dataplane and runs no program: the
//! runner samples it off every request's path, and `/metrics` serves the
//! last sample.

use crate::config::SLOT_IF_PREFIX;
use crate::elements::TRANSFER_SET;
use crate::ruleset::{dropped_set, LogClass, LOG_CLASSES};
use sandgate_netns::{BucketStats, Netns, Rtnl};
use sandgate_nftables::{NftSocket, Quota};
use std::collections::BTreeMap;
use std::io;

/// One reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    /// New connections let out by a list entry or the mode, since the
    /// ruleset was loaded.
    pub allowed_net: u64,
    /// New connections let out by a DNS admission, likewise.
    pub allowed_dns: u64,
    /// Attempts the log meter held back, by slot and reason class, since
    /// the slot's counter was made (a slot's counters go with it).
    pub held_back: BTreeMap<(u32, &'static LogClass), u64>,
    /// What each paced slot's token bucket has done since its pacer was
    /// made.
    pub paced: BTreeMap<u32, BucketStats>,
    /// Each slot with a transfer quota: its bytes a period, and what this
    /// period counted so far (packets refused over it included).
    pub transfer: BTreeMap<u32, Quota>,
}

/// A reader of the dataplane's counters.
#[derive(Debug)]
pub struct KernelCounters {
    nft: NftSocket,
    rtnl: Rtnl,
    table: String,
}

impl KernelCounters {
    /// Opens a reader in `host` (or the process's namespace) for the
    /// dataplane's table `table`.
    pub fn open(host: Option<&Netns>, table: &str) -> io::Result<KernelCounters> {
        let (nft, rtnl) = match host {
            Some(ns) => ns.run(|| Ok((NftSocket::open()?, Rtnl::open()?)))?,
            None => (NftSocket::open()?, Rtnl::open()?),
        };
        Ok(KernelCounters {
            nft,
            rtnl,
            table: table.to_string(),
        })
    }

    /// Reads every count.
    pub fn read(&mut self) -> io::Result<Reading> {
        let mut reading = Reading::default();
        for (name, packets) in self.nft.counters(&self.table)? {
            match name.as_str() {
                "allowed_net" => reading.allowed_net = packets,
                "allowed_dns" => reading.allowed_dns = packets,
                _ => {}
            }
        }
        for (key, quota) in self.nft.set_quotas(&self.table, TRANSFER_SET)? {
            if let Some(slot) = slot_of(&key) {
                reading.transfer.insert(slot, quota);
            }
        }
        for class in LOG_CLASSES {
            for (key, packets) in self.nft.set_counters(&self.table, &dropped_set(class))? {
                if let Some(slot) = slot_of(&key) {
                    reading.held_back.insert((slot, class), packets);
                }
            }
        }
        // The pacers' figures are not worth the rest of the reading: a
        // failure to read them leaves them out (and says so).
        match self.rtnl.token_bucket_stats() {
            Ok(buckets) => {
                for (name, stats) in buckets {
                    if let Some(slot) = name.strip_suffix('p').and_then(|n| slot_of(n.as_bytes())) {
                        reading.paced.insert(slot, stats);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "the pacers' token buckets could not be read"),
        }
        Ok(reading)
    }
}

/// The slot of an interface-name key (`sgh<index>`, zero-padded).
pub(crate) fn slot_of(key: &[u8]) -> Option<u32> {
    let name = key.split(|b| *b == 0).next()?;
    std::str::from_utf8(name)
        .ok()?
        .strip_prefix(SLOT_IF_PREFIX)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn interface_keys_name_their_slot() {
        let key = sandgate_nftables::Key::new().ifname("sgh42");
        assert_eq!(super::slot_of(key.bytes()), Some(42));
        let other = sandgate_nftables::Key::new().ifname("uplink");
        assert_eq!(super::slot_of(other.bytes()), None);
    }
}
