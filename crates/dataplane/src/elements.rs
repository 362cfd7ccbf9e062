//! A slot's policy as set and map elements, and the transactions that
//! install, change and remove it.

use crate::config::SlotAddrs;
use crate::ruleset::{
    allow_set, deny_chain, deny_set, dropped_set, grant_set, meter_set, mode_chain, steer_chain,
    ShareClass, DNS_MARK_BIT, LOG_CLASSES, METERED_CHAIN,
};
use ipnet::IpNet;
use sandgate_nftables::{ElementData, Key, Quota, Transaction, Verb};
use sandgate_policy::{EffectivePolicy, Mode, Ranges, Reason};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The rule key of admissions made for any essential service.
pub const ESSENTIAL: &str = "essential_service";

/// What the kernel holds for one slot's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotPolicy {
    /// The mode.
    pub mode: Mode,
    /// Entries outside the private ranges (or wider than them).
    pub allow: Vec<IpNet>,
    /// Entries inside a private range: they open it.
    pub allow_private: Vec<IpNet>,
    /// The name rules that may admit addresses: [`ESSENTIAL`] and
    /// `domain_allow_list:<pattern>` keys (see [`rule_key`]).
    pub rules: Vec<String>,
    /// The slot's share chain (its tier's tracked connections and new
    /// connections a second).
    #[serde(default = "default_shares")]
    pub shares: ShareClass,
    /// The most addresses admitted for the slot at once.
    #[serde(default = "default_admitted")]
    pub admitted_max: u32,
    /// `networkDenyList` entries: refused before the mode is looked at.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<IpNet>,
    /// Whether every new TCP connection to a name-checked port goes to
    /// the gateway (`open` mode with a `domainDenyList`: the names are
    /// checked there).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub steer_all: bool,
    /// Network grants, each with its end: kernel elements with a timeout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<GrantNet>,
    /// `domainDenyList` entries (canonical): the kernel does not know
    /// which name admitted an address, so a new entry withdraws every
    /// admission of the slot (see [`denies_new_names`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_names: Vec<String>,
    /// Whether an address admitted by name is reached on the name-checked
    /// ports only (the tier's rule).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub names_only: bool,
    /// The IPv4 source address its connections leave from (the
    /// organization's known egress address), instead of the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress4: Option<Ipv4Addr>,
    /// The IPv6 source address its connections leave from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress6: Option<Ipv6Addr>,
    /// What it may send, Mbit/s (`egressMbps`): paced on the host side
    /// (see [`crate::Dataplane`]'s pacer), not by an element.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_mbps: Option<u32>,
    /// Its transfer quota (`transferQuotaMiB`): an element of the
    /// `transfer` set with a quota of its own, kept apart from the other
    /// elements (its count outlives a change of policy; see
    /// [`crate::Dataplane`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
}

/// A transfer quota: bytes both ways a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Bytes a period (IP packets, headers included).
    pub bytes: u64,
    /// The period, seconds: periods start at its multiples since the Unix
    /// epoch.
    pub period_seconds: u32,
}

impl Transfer {
    /// The start of the period holding `now_s` (seconds since the epoch).
    pub fn period_start(&self, now_s: u64) -> u64 {
        let period = u64::from(self.period_seconds.max(1));
        now_s - now_s % period
    }
}

/// The set whose elements carry the slots' transfer quotas.
pub const TRANSFER_SET: &str = "transfer";

/// Puts slot `slot`'s transfer quota in the kernel anew (`bytes`, with
/// `consumed` counted already), or takes it out (`None`).
pub fn transfer_quota(tx: &mut Transaction, slot: &SlotAddrs, quota: Option<(u64, u64)>) {
    let k = if_key(slot);
    tx.destroy(TRANSFER_SET, k.clone());
    if let Some((bytes, consumed)) = quota {
        tx.add_with_quota(TRANSFER_SET, k, Quota { bytes, consumed });
    }
}

/// Whether `new` denies a name `old` did not: then every admission of the
/// slot goes (the programs resolve again, and a denied name is refused).
pub fn denies_new_names(old: &SlotPolicy, new: &SlotPolicy) -> bool {
    new.deny_names.iter().any(|n| !old.deny_names.contains(n))
}

/// A network grant as the kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantNet {
    /// What it opens.
    pub net: IpNet,
    /// Whether it lies in a private range (which it opens, as a list
    /// entry inside the range would).
    pub private: bool,
    /// When it ends, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn default_shares() -> ShareClass {
    ShareClass::of(&sandgate_policy::FairShares::default())
}

fn default_admitted() -> u32 {
    sandgate_policy::FairShares::default().admitted_addresses
}

/// Drops entries that another entry of the list contains: the kernel's
/// interval sets refuse overlaps, and coverage is all that matters there.
fn outermost(nets: &[IpNet]) -> Vec<IpNet> {
    nets.iter()
        .filter(|n| !nets.iter().any(|m| m != *n && m.contains(*n)))
        .copied()
        .collect()
}

/// The key under which an admission allowed by `rule` is kept; `None` for
/// reasons that admit nothing.
pub fn rule_key(rule: &Reason) -> Option<String> {
    match rule {
        Reason::EssentialService(_) => Some(ESSENTIAL.to_string()),
        Reason::DomainAllowList(p) => Some(format!("domain_allow_list:{p}")),
        Reason::Grant(id) => Some(format!("grant:{id}")),
        _ => None,
    }
}

impl SlotPolicy {
    /// The elements for an effective policy.
    pub fn from_policy(policy: &EffectivePolicy, ranges: &Ranges) -> Self {
        let mut allow = Vec::new();
        let mut allow_private = Vec::new();
        for net in policy.network_allow_list.nets() {
            if ranges.private.iter().any(|r| r.net.contains(net)) {
                allow_private.push(*net);
            } else {
                allow.push(*net);
            }
        }
        let mut rules: Vec<String> = policy
            .domain_allow_list
            .patterns()
            .iter()
            .filter_map(|p| rule_key(&Reason::DomainAllowList(p.clone())))
            .collect();
        let mut grants = Vec::new();
        for g in &policy.grants {
            match &g.target {
                sandgate_policy::GrantTarget::Name(_) => {
                    rules.extend(rule_key(&Reason::Grant(g.id.clone())));
                }
                sandgate_policy::GrantTarget::Network(net) => grants.push(GrantNet {
                    net: *net,
                    private: ranges.private.iter().any(|r| r.net.contains(net)),
                    expires_at_ms: g.expires_at_ms,
                }),
            }
        }
        if policy.essential_services {
            rules.push(ESSENTIAL.to_string());
        }
        let admits = matches!(policy.mode, Mode::Allowlist | Mode::Restricted);
        SlotPolicy {
            mode: policy.mode,
            allow: outermost(&allow),
            allow_private: outermost(&allow_private),
            rules: if admits { rules } else { Vec::new() },
            shares: ShareClass::of(&policy.fair_shares),
            admitted_max: policy.fair_shares.admitted_addresses,
            deny: outermost(policy.network_deny_list.nets()),
            // Open mode admits no name, so the gateway sees nothing unless
            // it is sent everything: for a denied name, and for HTTP rules.
            steer_all: policy.mode == Mode::Open
                && (!policy.domain_deny_list.is_empty() || !policy.http_rules.is_empty()),
            grants: if policy.mode == Mode::Allowlist {
                grants
            } else {
                Vec::new()
            },
            names_only: policy.name_ports_only,
            egress4: policy.egress_address.and_then(|e| e.ipv4),
            egress6: policy.egress_address.and_then(|e| e.ipv6),
            egress_mbps: policy.budgets.egress_mbps,
            transfer: policy.budgets.transfer_quota_mib.map(|mib| Transfer {
                bytes: u64::from(mib) << 20,
                period_seconds: policy
                    .budgets
                    .transfer_period_seconds
                    .unwrap_or(sandgate_policy::DEFAULT_TRANSFER_PERIOD_SECONDS),
            }),
            deny_names: policy
                .domain_deny_list
                .patterns()
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }

    /// Whether the slot may hold DNS admissions.
    pub fn admits(&self) -> bool {
        matches!(self.mode, Mode::Allowlist | Mode::Restricted)
    }
}

/// A slot's connection generations: connections marked with a current one
/// pass without evaluation; a change that could revoke something moves the
/// generation on. 0 is the quarantine value: connections marked 0 are
/// evaluated at every packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generations {
    /// For connections allowed by address (list entries, `open`).
    pub net: u32,
    /// For connections to addresses admitted by the DNS service.
    pub dns: u32,
}

impl Generations {
    /// The connection mark of the `net` generation (0 in quarantine).
    pub fn net_mark(self) -> u32 {
        self.net & !DNS_MARK_BIT
    }
    /// The connection mark of the `dns` generation (0 in quarantine).
    pub fn dns_mark(self) -> u32 {
        if self.dns == 0 {
            0
        } else {
            self.dns | DNS_MARK_BIT
        }
    }
}

fn if_key(slot: &SlotAddrs) -> Key {
    Key::new().ifname(&slot.host_if)
}

/// The key (and end) of an allow-list entry.
fn interval(slot: &SlotAddrs, net: &IpNet) -> (Key, Key) {
    let k = if_key(slot);
    match net {
        IpNet::V4(n) => (k.clone().ipv4(n.network()), k.ipv4(n.broadcast())),
        IpNet::V6(n) => (k.clone().ipv6(n.network()), k.ipv6(n.broadcast())),
    }
}

/// The set and key of an admission.
pub fn admission_key(slot: &SlotAddrs, addr: IpAddr) -> (&'static str, Key) {
    match addr {
        IpAddr::V4(a) => ("admit4", if_key(slot).ipv4(a)),
        IpAddr::V6(a) => ("admit6", if_key(slot).ipv6(a)),
    }
}

fn mark(v: u32) -> ElementData {
    ElementData::Value(Key::new().mark(v))
}

/// The generation maps and `valid` entries for `g`. A quarantined
/// generation (0) has its map entry but no `valid` entry.
///
/// `valid` is keyed by the mark alone: generations are unique across
/// slots (one counter for the host), so a mark names its slot, and a
/// packet carrying it belongs to a connection that slot opened (the raw
/// hook's source check binds a slot's packets to its own addresses, and
/// the forward hook looks a mark up only for new or established packets
/// from or to a slot interface, never for related ones). The entry passes the connection (`accept`), or, for a slot
/// with a transfer quota (`metered`), sends it through the quota's count.
fn generations(tx: &mut Transaction, slot: &SlotAddrs, g: Generations, metered: bool, verb: Verb) {
    let k = if_key(slot);
    let pass = if metered {
        ElementData::Jump(METERED_CHAIN.to_string())
    } else {
        ElementData::Accept
    };
    for (map, m) in [("netgen", g.net_mark()), ("dnsgen", g.dns_mark())] {
        tx.element(verb, map, k.clone(), None, Some(mark(m)));
        if m != 0 {
            tx.element(verb, "valid", Key::new().mark(m), None, Some(pass.clone()));
        }
    }
}

fn mode(tx: &mut Transaction, slot: &SlotAddrs, p: &SlotPolicy, verb: Verb) {
    let k = if_key(slot);
    let jump = |reply| {
        Some(ElementData::Jump(mode_chain(
            p.mode.as_str(),
            reply,
            slot.index,
        )))
    };
    tx.element(verb, "mode", k.clone(), None, jump(false));
    tx.element(verb, "back_mode", k, None, jump(true));
}

fn shares(tx: &mut Transaction, slot: &SlotAddrs, p: &SlotPolicy, verb: Verb) {
    let k = if_key(slot);
    let jump = |chain: String| Some(ElementData::Jump(chain));
    tx.element(verb, "shares", k.clone(), None, jump(p.shares.chain()));
    tx.element(verb, "dns_shares", k, None, jump(p.shares.dns_chain()));
}

/// Destroys what the kernel's dynamic sets hold for a slot's interface:
/// its log meters and held-back counts, and its counts and rates in the
/// share classes `classes`. A slot given to another sandbox starts from
/// nothing.
pub fn forget_dynamic(tx: &mut Transaction, slot: &SlotAddrs, classes: &[ShareClass]) {
    let k = if_key(slot);
    for class in LOG_CLASSES {
        tx.destroy(&meter_set(class), k.clone());
        tx.destroy(&dropped_set(class), k.clone());
    }
    for class in classes {
        for set in class.sets() {
            tx.destroy(&set, k.clone());
        }
    }
}

fn lists(tx: &mut Transaction, slot: &SlotAddrs, nets: &[IpNet], private: bool, verb: Verb) {
    for net in nets {
        let (start, end) = interval(slot, net);
        let set = allow_set(matches!(net, IpNet::V4(_)), private, slot.index);
        tx.element(verb, &set, start, Some(end), None);
    }
}

fn deny_entries(tx: &mut Transaction, slot: &SlotAddrs, nets: &[IpNet], verb: Verb) {
    for net in nets {
        let (start, end) = interval(slot, net);
        let set = deny_set(matches!(net, IpNet::V4(_)), slot.index);
        tx.element(verb, &set, start, Some(end), None);
    }
}

/// The slot's entries in the maps that send it to its deny chains: only a
/// slot with a deny list has them (the others pay one missed lookup).
fn deny_jumps(tx: &mut Transaction, slot: &SlotAddrs, verb: Verb) {
    let k = if_key(slot);
    for (map, reply) in [("denylist", false), ("back_denylist", true)] {
        let jump = Some(ElementData::Jump(deny_chain(reply, slot.index)));
        tx.element(verb, map, k.clone(), None, jump);
    }
}

/// Grants added with what is left of their time (one that ended is not
/// added), or destroyed (the kernel may have ended them already).
fn grant_entries(tx: &mut Transaction, slot: &SlotAddrs, grants: &[GrantNet], verb: Verb) {
    let now = now_ms();
    for g in grants {
        let (start, end) = interval(slot, &g.net);
        let set = grant_set(matches!(g.net, IpNet::V4(_)), g.private, slot.index);
        if verb == Verb::Add {
            let left = g.expires_at_ms.saturating_sub(now);
            if left > 0 {
                tx.add_interval_with_timeout(
                    &set,
                    start,
                    end,
                    std::time::Duration::from_millis(left),
                );
            }
        } else {
            tx.element(Verb::Destroy, &set, start, Some(end), None);
        }
    }
}

/// The slot in or out of a set of interfaces that stands for a flag of
/// its policy (`steer_all`, `names_only`).
fn flag(tx: &mut Transaction, slot: &SlotAddrs, set: &str, verb: Verb) {
    tx.element(verb, set, if_key(slot), None, None);
}

/// A flag's change from `old` to `new`.
fn flag_change(tx: &mut Transaction, slot: &SlotAddrs, set: &str, old: bool, new: bool) {
    match (old, new) {
        (false, true) => flag(tx, slot, set, Verb::Add),
        (true, false) => flag(tx, slot, set, Verb::Delete),
        _ => {}
    }
}

/// The slot's known egress addresses in or out of the `egress4` and
/// `egress6` maps.
fn egress(
    tx: &mut Transaction,
    slot: &SlotAddrs,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
    verb: Verb,
) {
    if let Some(a) = v4 {
        let data = Some(ElementData::Value(Key::new().ipv4(a)));
        tx.element(verb, "egress4", if_key(slot), None, data);
    }
    if let Some(a) = v6 {
        let data = Some(ElementData::Value(Key::new().ipv6(a)));
        tx.element(verb, "egress6", if_key(slot), None, data);
    }
}

/// Everything a slot needs in the kernel for policy `p` with generations
/// `g`, added, deleted or destroyed. (Admissions are not in it: see
/// [`admission_key`].)
pub fn whole(tx: &mut Transaction, slot: &SlotAddrs, p: &SlotPolicy, g: Generations, verb: Verb) {
    let k = if_key(slot);
    tx.element(verb, "slots", k.clone(), None, None);
    tx.element(verb, "src4", k.clone().ipv4(slot.sandbox4), None, None);
    tx.element(verb, "src6", k.clone().ipv6(slot.sandbox6), None, None);
    let steer = Some(ElementData::Jump(steer_chain(slot.index)));
    tx.element(verb, "steer", k, None, steer);
    mode(tx, slot, p, verb);
    shares(tx, slot, p, verb);
    generations(tx, slot, g, p.transfer.is_some(), verb);
    lists(tx, slot, &p.allow, false, verb);
    lists(tx, slot, &p.allow_private, true, verb);
    if !p.deny.is_empty() {
        deny_jumps(tx, slot, verb);
        deny_entries(tx, slot, &p.deny, verb);
    }
    if p.steer_all {
        flag(tx, slot, "steer_all", verb);
    }
    if p.names_only {
        flag(tx, slot, "names_only", verb);
    }
    egress(tx, slot, p.egress4, p.egress6, verb);
    grant_entries(tx, slot, &p.grants, verb);
}

/// Which generations a change from `old` to `new` must move on: only
/// changes that can revoke something (a new mode, a removed entry, a
/// removed name rule, a new deny entry, names checked from now on) do, so
/// that connections the new policy still allows are not even looked at
/// again.
pub fn revokes(old: &SlotPolicy, new: &SlotPolicy) -> (bool, bool) {
    if old.mode != new.mode || new.deny.iter().any(|n| !old.deny.contains(n)) {
        return (true, true);
    }
    let removed = |a: &[IpNet], b: &[IpNet]| a.iter().any(|n| !b.contains(n));
    let net = removed(&old.allow, &new.allow)
        || removed(&old.allow_private, &new.allow_private)
        || (new.steer_all && !old.steer_all);
    let dns = old.rules.iter().any(|n| !new.rules.contains(n))
        || denies_new_names(old, new)
        || (new.names_only && !old.names_only);
    (net, dns)
}

/// The first transaction of a change from `old` to `new`: mode and lists
/// changed, and the generations that move put in quarantine (`to`, with 0
/// for each one that moves).
///
/// The kernel makes hash set changes visible at the commit's generation
/// flip but swaps in a changed interval set a moment later; a connection
/// evaluated in between against the old lists must not be marked with a
/// generation that stays valid. So the new generations come in a second
/// transaction, [`release`], once the lists are in place; connections
/// evaluated meanwhile are marked 0 and evaluated again.
pub fn change(
    tx: &mut Transaction,
    slot: &SlotAddrs,
    old: (&SlotPolicy, Generations),
    new: (&SlotPolicy, Generations),
) {
    let ((op, og), (np, ng)) = (old, new);
    if op.mode != np.mode {
        mode(tx, slot, op, Verb::Delete);
        mode(tx, slot, np, Verb::Add);
    }
    if op.shares != np.shares {
        // Another tier's limits: the count starts again in the new class
        // (the connections open stay open).
        shares(tx, slot, op, Verb::Delete);
        shares(tx, slot, np, Verb::Add);
        for set in op.shares.sets() {
            tx.destroy(&set, if_key(slot));
        }
    }
    let (om, nm) = (op.transfer.is_some(), np.transfer.is_some());
    if og != ng || om != nm {
        generations(tx, slot, og, om, Verb::Delete);
        generations(tx, slot, ng, nm, Verb::Add);
    }
    let gone = |a: &[IpNet], b: &[IpNet]| -> Vec<IpNet> {
        a.iter().filter(|n| !b.contains(n)).copied().collect()
    };
    lists(tx, slot, &gone(&op.allow, &np.allow), false, Verb::Delete);
    lists(
        tx,
        slot,
        &gone(&op.allow_private, &np.allow_private),
        true,
        Verb::Delete,
    );
    lists(tx, slot, &gone(&np.allow, &op.allow), false, Verb::Add);
    lists(
        tx,
        slot,
        &gone(&np.allow_private, &op.allow_private),
        true,
        Verb::Add,
    );
    deny_entries(tx, slot, &gone(&op.deny, &np.deny), Verb::Delete);
    if op.deny.is_empty() != np.deny.is_empty() {
        let verb = if np.deny.is_empty() {
            Verb::Delete
        } else {
            Verb::Add
        };
        deny_jumps(tx, slot, verb);
    }
    deny_entries(tx, slot, &gone(&np.deny, &op.deny), Verb::Add);
    flag_change(tx, slot, "steer_all", op.steer_all, np.steer_all);
    flag_change(tx, slot, "names_only", op.names_only, np.names_only);
    // A new egress address takes the connections opened from now on
    // (those open keep the address they left from).
    let v4 = (op.egress4 != np.egress4).then_some(());
    let v6 = (op.egress6 != np.egress6).then_some(());
    egress(
        tx,
        slot,
        v4.and(op.egress4),
        v6.and(op.egress6),
        Verb::Delete,
    );
    egress(tx, slot, v4.and(np.egress4), v6.and(np.egress6), Verb::Add);
    // A grant's connections are marked 0 (evaluated at every packet), so
    // a grant that goes needs no generation moved: its next packet finds
    // no element.
    let gone_grants = |a: &[GrantNet], b: &[GrantNet]| -> Vec<GrantNet> {
        a.iter().filter(|g| !b.contains(g)).copied().collect()
    };
    grant_entries(
        tx,
        slot,
        &gone_grants(&op.grants, &np.grants),
        Verb::Destroy,
    );
    grant_entries(tx, slot, &gone_grants(&np.grants, &op.grants), Verb::Add);
}

/// The second transaction of a change: the quarantined generations `from`
/// replaced by their new values `to`.
pub fn release(
    tx: &mut Transaction,
    slot: &SlotAddrs,
    p: &SlotPolicy,
    from: Generations,
    to: Generations,
) {
    let metered = p.transfer.is_some();
    generations(tx, slot, from, metered, Verb::Delete);
    generations(tx, slot, to, metered, Verb::Add);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sandgate_policy::{PolicyConfig, SettingsRequest};

    fn slot_policy(tier: u8, request: SettingsRequest<'_>) -> SlotPolicy {
        let config = PolicyConfig::default();
        let settings = config.settings_for_create(tier, &request).unwrap();
        let policy = config.resolve(tier, &settings).unwrap();
        SlotPolicy::from_policy(&policy, config.ranges())
    }

    #[test]
    fn a_new_deny_entry_or_a_newly_denied_name_revokes_and_their_removal_does_not() {
        let open = slot_policy(3, SettingsRequest::default());
        let denied = slot_policy(
            3,
            SettingsRequest {
                network_deny_list: Some("198.51.100.0/24,198.51.100.7"),
                ..Default::default()
            },
        );
        // Folded into the entry that holds it, as the interval sets need.
        assert_eq!(denied.deny, vec!["198.51.100.0/24".parse().unwrap()]);
        assert_eq!(revokes(&open, &denied), (true, true));
        assert_eq!(revokes(&denied, &open), (false, false));
        let names = slot_policy(
            3,
            SettingsRequest {
                domain_deny_list: Some("example.org"),
                ..Default::default()
            },
        );
        assert!(names.steer_all && !open.steer_all);
        // `net` for the connections the gateway never saw; `dns` (and
        // every admission withdrawn) for a name newly denied.
        assert_eq!(revokes(&open, &names), (true, true));
        assert!(denies_new_names(&open, &names) && !denies_new_names(&names, &open));
        assert_eq!(revokes(&names, &open), (false, false));
        // Only open mode steers everything: in allowlist mode the gateway
        // sees the names it admitted anyway.
        let listed = slot_policy(
            3,
            SettingsRequest {
                domain_allow_list: Some("example.com"),
                domain_deny_list: Some("example.org"),
                ..Default::default()
            },
        );
        assert!(!listed.steer_all);
        // HTTP rules in open mode: every request must come to the gateway.
        let rules = [sandgate_policy::HttpRuleRequest {
            host: "api.example.com".into(),
            methods: Some(vec!["GET".into()]),
            paths: None,
        }];
        let ruled = slot_policy(
            3,
            SettingsRequest {
                http_rules: Some(&rules),
                ..Default::default()
            },
        );
        assert!(ruled.steer_all);
        assert_eq!(revokes(&open, &ruled), (true, false));
    }
}
