//! A slot's policy as set and map elements, and the transactions that
//! install, change and remove it.

use crate::config::SlotAddrs;
use crate::ruleset::{mode_chain, DNS_MARK_BIT};
use ipnet::IpNet;
use sandgate_nftables::{ElementData, Key, Transaction};
use sandgate_policy::{EffectivePolicy, Mode, Ranges};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// What the kernel holds for one slot's policy: its mode, its allow-list
/// entries split by whether they open a private range, and the names it
/// allows (only to know, on a change, whether names were removed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotPolicy {
    /// `open`, `allowlist`, `restricted` or `blocked`.
    pub mode: String,
    /// Entries outside the private ranges (or wider than them).
    pub allow: Vec<IpNet>,
    /// Entries inside a private range: they open it.
    pub allow_private: Vec<IpNet>,
    /// The domain patterns and whether essential services apply.
    pub names: Vec<String>,
}

impl SlotPolicy {
    /// The elements for an effective policy.
    pub fn from_policy(policy: &EffectivePolicy, ranges: &Ranges) -> Self {
        let mut allow = Vec::new();
        let mut allow_private = Vec::new();
        for net in policy.network_allow_list.nets() {
            let inside_private = ranges.private.iter().any(|r| r.net.contains(net));
            if inside_private {
                allow_private.push(*net);
            } else {
                allow.push(*net);
            }
        }
        let mut names: Vec<String> = policy
            .domain_allow_list
            .patterns()
            .iter()
            .map(|p| p.to_string())
            .collect();
        if policy.essential_services {
            names.push("(essential services)".into());
        }
        SlotPolicy {
            mode: policy.mode.as_str().to_string(),
            allow,
            allow_private,
            names,
        }
    }

    /// Whether the DNS service answers this slot at all.
    pub fn uses_dns(&self) -> bool {
        self.mode != Mode::Blocked.as_str()
    }

    /// Whether the slot may hold DNS admissions.
    pub fn admits(&self) -> bool {
        self.mode == Mode::Allowlist.as_str() || self.mode == Mode::Restricted.as_str()
    }
}

/// A slot's connection generations: connections marked with a current one
/// pass without evaluation; a change that could revoke something moves the
/// generation on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generations {
    /// For connections allowed by address (list entries, `open`).
    pub net: u32,
    /// For connections to addresses admitted by the DNS service.
    pub dns: u32,
}

impl Generations {
    fn net_mark(self) -> u32 {
        self.net & !DNS_MARK_BIT
    }
    fn dns_mark(self) -> u32 {
        self.dns | DNS_MARK_BIT
    }
}

/// What a helper below does with its elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// Add them; fails if one is there.
    Add,
    /// Delete them; fails if one is missing (a change, which must find the
    /// kernel as recorded).
    Delete,
    /// Delete those that are there (a removal, which must succeed whatever
    /// a crash left).
    Destroy,
}

fn put(tx: &mut Transaction, edit: Edit, set: &str, key: Key) {
    match edit {
        Edit::Add => tx.add(set, key),
        Edit::Delete => tx.delete(set, key),
        Edit::Destroy => tx.destroy(set, key),
    };
}

fn put_mapping(tx: &mut Transaction, edit: Edit, map: &str, key: Key, data: ElementData) {
    match edit {
        Edit::Add => tx.add_mapping(map, key, data),
        Edit::Delete => tx.delete(map, key),
        Edit::Destroy => tx.destroy(map, key),
    };
}

fn if_key(slot: &SlotAddrs) -> Key {
    Key::new().ifname(&slot.host_if)
}

fn interval(slot: &SlotAddrs, net: &IpNet) -> (Key, Key) {
    let k = if_key(slot);
    match net {
        IpNet::V4(n) => (k.clone().ipv4(n.network()), k.ipv4(n.broadcast())),
        IpNet::V6(n) => (k.clone().ipv6(n.network()), k.ipv6(n.broadcast())),
    }
}

fn allow_set(net: &IpNet, private: bool) -> &'static str {
    match (net, private) {
        (IpNet::V4(_), false) => "allow4",
        (IpNet::V6(_), false) => "allow6",
        (IpNet::V4(_), true) => "allowpriv4",
        (IpNet::V6(_), true) => "allowpriv6",
    }
}

/// The key of an admission.
pub fn admission_key(slot: &SlotAddrs, addr: IpAddr) -> (&'static str, Key) {
    match addr {
        IpAddr::V4(a) => ("admit4", if_key(slot).ipv4(a)),
        IpAddr::V6(a) => ("admit6", if_key(slot).ipv6(a)),
    }
}

fn generations(tx: &mut Transaction, slot: &SlotAddrs, g: Generations, edit: Edit) {
    let k = if_key(slot);
    put_mapping(
        tx,
        edit,
        "netgen",
        k.clone(),
        ElementData::Value(Key::new().mark(g.net_mark())),
    );
    put_mapping(
        tx,
        edit,
        "dnsgen",
        k.clone(),
        ElementData::Value(Key::new().mark(g.dns_mark())),
    );
    put(tx, edit, "valid", k.clone().mark(g.net_mark()));
    put(tx, edit, "valid", k.mark(g.dns_mark()));
}

fn mode(tx: &mut Transaction, slot: &SlotAddrs, p: &SlotPolicy, edit: Edit) {
    let k = if_key(slot);
    put_mapping(
        tx,
        edit,
        "mode",
        k.clone(),
        ElementData::Jump(mode_chain(&p.mode, false)),
    );
    put_mapping(
        tx,
        edit,
        "back_mode",
        k.clone(),
        ElementData::Jump(mode_chain(&p.mode, true)),
    );
    if p.uses_dns() {
        put(tx, edit, "dns_slots", k);
    }
}

fn lists(tx: &mut Transaction, slot: &SlotAddrs, nets: &[IpNet], private: bool, edit: Edit) {
    for net in nets {
        let (start, end) = interval(slot, net);
        let set = allow_set(net, private);
        match edit {
            Edit::Add => tx.add_interval(set, start, end),
            Edit::Delete => tx.delete_interval(set, start, end),
            Edit::Destroy => tx.destroy_interval(set, start, end),
        };
    }
}

/// Everything a slot needs in the kernel for policy `p`, added, deleted or
/// destroyed. (Admissions are not in it: see [`admission_key`].)
pub fn whole(tx: &mut Transaction, slot: &SlotAddrs, p: &SlotPolicy, g: Generations, edit: Edit) {
    let k = if_key(slot);
    put(tx, edit, "slots", k.clone());
    put(tx, edit, "src4", k.clone().ipv4(slot.sandbox4));
    put(tx, edit, "src6", k.ipv6(slot.sandbox6));
    mode(tx, slot, p, edit);
    generations(tx, slot, g, edit);
    lists(tx, slot, &p.allow, false, edit);
    lists(tx, slot, &p.allow_private, true, edit);
}

/// Which generations a change from `old` to `new` must move on: only
/// changes that can revoke something (a new mode, a removed entry, a
/// removed name) do, so that connections the new policy still allows are
/// not even looked at again.
pub fn revokes(old: &SlotPolicy, new: &SlotPolicy) -> (bool, bool) {
    if old.mode != new.mode {
        return (true, true);
    }
    let removed = |a: &[IpNet], b: &[IpNet]| a.iter().any(|n| !b.contains(n));
    let net = removed(&old.allow, &new.allow) || removed(&old.allow_private, &new.allow_private);
    let dns = old.names.iter().any(|n| !new.names.contains(n));
    (net, dns)
}

/// The transaction from `old` to `new` for one slot.
pub fn change(
    tx: &mut Transaction,
    slot: &SlotAddrs,
    old: (&SlotPolicy, Generations),
    new: (&SlotPolicy, Generations),
) {
    let ((op, og), (np, ng)) = (old, new);
    if op.mode != np.mode {
        mode(tx, slot, op, Edit::Delete);
        mode(tx, slot, np, Edit::Add);
    }
    if og != ng {
        generations(tx, slot, og, Edit::Delete);
        generations(tx, slot, ng, Edit::Add);
    }
    let gone = |a: &[IpNet], b: &[IpNet]| -> Vec<IpNet> {
        a.iter().filter(|n| !b.contains(n)).copied().collect()
    };
    lists(tx, slot, &gone(&op.allow, &np.allow), false, Edit::Delete);
    lists(
        tx,
        slot,
        &gone(&op.allow_private, &np.allow_private),
        true,
        Edit::Delete,
    );
    lists(tx, slot, &gone(&np.allow, &op.allow), false, Edit::Add);
    lists(
        tx,
        slot,
        &gone(&np.allow_private, &op.allow_private),
        true,
        Edit::Add,
    );
}
