//! The one constant nftables ruleset.
//!
//! Every per-sandbox fact is an element of a set or map keyed by the host
//! end of the sandbox's veth (`sgh<index>`), an interface the sandbox cannot
//! rename, forge or reach. A packet costs the same few hash lookups whatever
//! the number of sandboxes or list entries; a policy change is an element
//! transaction, never a new ruleset.
//!
//! Paths of a packet from a sandbox:
//!
//! 1. `prerouting` (raw): an interface that is not a known slot is dropped;
//!    a source address that is not the slot's own is dropped (neighbour
//!    discovery from link-local addresses excepted).
//! 2. `prerouting` (nat): TCP and UDP to port 53, any address, go to the DNS
//!    service on the gateway.
//! 3. `input`: the DNS service's port is closed to everything but slots
//!    (it trusts a query's source, which only a slot's checked interface
//!    vouches for); to the host itself, only that DNS service reached through
//!    the redirect (which refuses every query of a `blocked` slot),
//!    neighbour discovery, and replies to connections the host opened pass.
//! 4. `forward`: a new or established packet from or to a slot interface
//!    whose connection's mark is a current generation passes at once (`valid`,
//!    keyed by the mark alone: generations are unique across slots, and
//!    the raw hook bound the packet to its slot's addresses); anything
//!    else (related packets too: an ICMP error is tied to a connection by
//!    what it quotes) is evaluated: a packet from a slot on a connection
//!    the slot did not open is refused, then always-denied ranges, then
//!    the slot's mode chain (`open`, `allowlist`, `restricted`, `blocked`).
//!    What passes is marked with the generation that allowed it: `net`
//!    (addresses and `open`) or `dns` (admissions by the DNS service).
//! 5. `postrouting` (nat): connections let out leave from the slot's known
//!    egress address (`egress4`/`egress6`, the organization's) where it
//!    has one, from the host's address (masquerade) otherwise.
//!
//! Replies to a sandbox pass while their mark is current; after a policy
//! change they are evaluated again against the original destination, so a
//! connection the new policy denies stops in both directions and one it
//! allows runs on. Nothing opens a connection into a sandbox.
//!
//! Fair shares: a new connection let out of a slot (and a DNS query
//! reaching the service) passes its slot's share chain, which refuses it
//! when the slot already has its most tracked connections, or (for
//! connections let out) opens more a second than it may. The limits are a
//! slot's tier's, one chain per distinct pair of values ([`ShareClass`]),
//! chosen by the slot's entry in the `shares` and `dns_shares` maps.
//!
//! Denials of new connections, and the limits reached, are logged to
//! NFLOG at most `log_rate` a second per slot and per reason class, with a
//! prefix naming the class; what the meter holds back is counted per slot
//! and class in the kernel (`ld_<class>` sets, read over netlink by
//! [`crate::counters`]), so that a flood costs user space nothing and is
//! still reported.
//!
//! The host forwards sandbox traffic only: anything else routed through
//! it is dropped, unless the operator's configuration says otherwise
//! (`forward_other`).

use crate::config::{DataplaneConfig, SLOT_IF_PREFIX};
use ipnet::IpNet;
use sandgate_policy::Ranges;
use std::fmt::Write;

/// NFLOG prefixes, one per reason class; the event reader maps them back.
pub mod prefix {
    /// A slot already has its most tracked connections.
    pub const CONNECTIONS: &str = "sg:connections";
    /// A slot opens more connections a second than it may.
    pub const CONNECTION_RATE: &str = "sg:connrate";
    /// A slot sends DNS datagrams faster than twice its query rate.
    pub const DNS_RATE: &str = "sg:dnsrate";
    /// An always-denied range.
    pub const DENIED: &str = "sg:denied";
    /// A private range not opened by the slot's list.
    pub const PRIVATE: &str = "sg:private";
    /// `allowlist` mode, not listed or admitted.
    pub const UNLISTED: &str = "sg:unlisted";
    /// `restricted` mode, not admitted.
    pub const RESTRICTED: &str = "sg:restricted";
    /// `blocked` mode.
    pub const BLOCKED: &str = "sg:blocked";
    /// To the host itself, other than DNS.
    pub const HOST: &str = "sg:host";
    /// A source address that is not the slot's.
    pub const SPOOF: &str = "sg:spoof";
    /// UDP to port 443 (QUIC) of an address admitted by name.
    pub const QUIC: &str = "sg:quic";
    /// An entry of the slot's `networkDenyList`.
    pub const DENY_LIST: &str = "sg:denylist";
    /// Past the slot's transfer quota for the period.
    pub const TRANSFER: &str = "sg:transfer";
}

/// A reason class of deny events: its NFLOG prefix and the name of its
/// meter (`lm_<name>`) and drop counter (`ld_<name>`) sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogClass {
    /// The class's name in set names.
    pub name: &'static str,
    /// Its NFLOG prefix.
    pub prefix: &'static str,
    /// The reason code of its events (for `denied`, an event names the
    /// range: `always_denied:<range>`).
    pub reason: &'static str,
}

/// Every reason class, each metered and counted apart.
pub const LOG_CLASSES: &[LogClass] = &[
    LogClass {
        name: "denied",
        prefix: prefix::DENIED,
        reason: "always_denied",
    },
    LogClass {
        name: "private",
        prefix: prefix::PRIVATE,
        reason: "private_range",
    },
    LogClass {
        name: "unlisted",
        prefix: prefix::UNLISTED,
        reason: "not_in_allow_list",
    },
    LogClass {
        name: "restricted",
        prefix: prefix::RESTRICTED,
        reason: "restricted_by_tier",
    },
    LogClass {
        name: "blocked",
        prefix: prefix::BLOCKED,
        reason: "blocked",
    },
    LogClass {
        name: "host",
        prefix: prefix::HOST,
        reason: "always_denied:host",
    },
    LogClass {
        name: "spoof",
        prefix: prefix::SPOOF,
        reason: "spoofed_source",
    },
    LogClass {
        name: "quic",
        prefix: prefix::QUIC,
        reason: "quic_denied",
    },
    LogClass {
        name: "denylist",
        prefix: prefix::DENY_LIST,
        reason: "network_deny_list",
    },
    LogClass {
        name: "connections",
        prefix: prefix::CONNECTIONS,
        reason: "connection_limit",
    },
    LogClass {
        name: "connrate",
        prefix: prefix::CONNECTION_RATE,
        reason: "connection_rate",
    },
    LogClass {
        name: "dnsrate",
        prefix: prefix::DNS_RATE,
        reason: "dns_rate_limited",
    },
    LogClass {
        name: "transfer",
        prefix: prefix::TRANSFER,
        reason: "transfer_quota",
    },
];

/// The class of `prefix`.
pub fn log_class(prefix: &str) -> Option<&'static LogClass> {
    LOG_CLASSES.iter().find(|c| c.prefix == prefix)
}

/// The set that meters a class's log (`lm_<class>`).
pub fn meter_set(class: &LogClass) -> String {
    format!("lm_{}", class.name)
}

/// The set that counts a class's attempts the meter held back
/// (`ld_<class>`), per slot interface.
pub fn dropped_set(class: &LogClass) -> String {
    format!("ld_{}", class.name)
}

/// The logging and counting of one reason class: under the slot's rate
/// the attempt is logged, over it counted; either way it ends with
/// `verdict`. `only` narrows which packets count as attempts (new
/// connections, in the hooks after connection tracking).
fn log_or_count(class: &LogClass, only: &str, rate: u32, group: u16, verdict: &str) -> String {
    format!(
        "    {only}update @{meter} {{ iifname limit rate {rate}/second }} log group {group} prefix \"{p}\" {verdict}\n\
         \x20   {only}update @{dropped} {{ iifname }} {verdict}\n",
        meter = meter_set(class),
        dropped = dropped_set(class),
        p = class.prefix,
    )
}

/// The limits of one share chain: a tier's tracked connections, new
/// connections a second, and DNS queries a second.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ShareClass {
    /// Tracked connections at once, at most.
    pub connections: u32,
    /// New connections let out a second (a burst of twice as many).
    pub new_per_second: u32,
    /// DNS queries a second: the kernel lets twice as many UDP datagrams
    /// a second reach the DNS service (a burst of four times as many), so
    /// that a flood is cut before it fills the service's socket, and the
    /// service holds the sandbox to the rate itself.
    #[serde(default = "default_dns_rate")]
    pub dns_per_second: u32,
}

fn default_dns_rate() -> u32 {
    sandgate_policy::FairShares::default().dns_queries_per_second
}

impl ShareClass {
    /// The class of a tier's fair shares.
    pub fn of(shares: &sandgate_policy::FairShares) -> ShareClass {
        ShareClass {
            connections: shares.connections,
            new_per_second: shares.new_connections_per_second,
            dns_per_second: shares.dns_queries_per_second,
        }
    }

    fn suffix(&self) -> String {
        format!(
            "{}_{}_{}",
            self.connections, self.new_per_second, self.dns_per_second
        )
    }

    /// The share chain of connections let out.
    pub fn chain(&self) -> String {
        format!("share_{}", self.suffix())
    }

    /// The share chain of DNS reaching the service: tracked connections
    /// (new ones), and the datagram rate.
    pub fn dns_chain(&self) -> String {
        format!("dnsshare_{}", self.suffix())
    }

    fn conns_set(&self) -> String {
        format!("conns_{}", self.suffix())
    }

    fn rate_set(&self) -> String {
        format!("rate_{}", self.suffix())
    }

    fn dns_rate_set(&self) -> String {
        format!("dnsrate_{}", self.suffix())
    }

    /// The dynamic sets of this class, keyed by slot interface.
    pub fn sets(&self) -> [String; 3] {
        [self.conns_set(), self.rate_set(), self.dns_rate_set()]
    }
}

/// The allow-list sets are split into this many shards, by slot index.
///
/// The kernel keeps concatenated interval sets (`ifname . ipv4_addr` with
/// intervals) in a structure whose every change costs time in proportion
/// to the set's size (about 7 us per element here); with shards, a policy
/// update touches a set of `slots / SHARDS` slots' entries. Lookups cost
/// the same either way: a slot's mode map entry jumps straight to its
/// shard's chain.
pub const SHARDS: u32 = 64;

/// The shard of slot `index`.
pub fn shard(index: u32) -> u32 {
    index % SHARDS
}

/// The mode chain of a slot: its mode, the direction evaluated, and for
/// `allowlist` its shard.
pub fn mode_chain(mode: &str, reply: bool, index: u32) -> String {
    let dir = if reply { "back" } else { "out" };
    if mode == "allowlist" {
        format!("{dir}_allowlist_{}", shard(index))
    } else {
        format!("{dir}_{mode}")
    }
}

/// The allow-list set of a slot for an entry of this family, opening a
/// private range or not.
pub fn allow_set(v4: bool, private: bool, index: u32) -> String {
    let family = if v4 { "4" } else { "6" };
    let kind = if private { "allowpriv" } else { "allow" };
    format!("{kind}{family}_{}", shard(index))
}

/// The chain that steers slot `index`'s connections to names to the
/// gateway (its shard's: the allow-list sets it must look at first).
pub fn steer_chain(index: u32) -> String {
    format!("steer_{}", shard(index))
}

/// The grant set of a slot for a network grant of this family, opening a
/// private range or not (interval sets with timeouts: the kernel ends a
/// grant on time whatever the runner does).
pub fn grant_set(v4: bool, private: bool, index: u32) -> String {
    let family = if v4 { "4" } else { "6" };
    let kind = if private { "grantpriv" } else { "grant" };
    format!("{kind}{family}_{}", shard(index))
}

/// The `networkDenyList` set of a slot for an entry of this family.
pub fn deny_set(v4: bool, index: u32) -> String {
    let family = if v4 { "4" } else { "6" };
    format!("deny{family}_{}", shard(index))
}

/// The chain that applies slot `index`'s `networkDenyList` in one
/// direction (`reply`: to the slot).
pub fn deny_chain(reply: bool, index: u32) -> String {
    let dir = if reply { "back" } else { "out" };
    format!("{dir}_deny_{}", shard(index))
}

/// The mark bit of connections admitted through DNS.
pub const DNS_MARK_BIT: u32 = 0x8000_0000;

/// The chain a connection of a slot with a transfer quota passes through
/// when its generation passes it: the quota's count, both ways.
pub const METERED_CHAIN: &str = "metered";

fn elements(nets: impl Iterator<Item = IpNet>) -> String {
    let mut v: Vec<String> = nets.map(|n| n.to_string()).collect();
    v.sort();
    v.dedup();
    v.join(", ")
}

fn set_of(out: &mut String, name: &str, ty: &str, nets: &[IpNet]) {
    let list = elements(nets.iter().copied());
    let _ = write!(
        out,
        "  set {name} {{ type {ty}; flags interval; auto-merge;"
    );
    if !list.is_empty() {
        let _ = write!(out, " elements = {{ {list} }};");
    }
    out.push_str(" }\n");
}

/// The text of the whole table, for `nft -f`. It replaces the table
/// atomically (what was there goes, in the same transaction).
pub fn ruleset(cfg: &DataplaneConfig, ranges: &Ranges, classes: &[ShareClass]) -> String {
    let table = &cfg.table;
    let denied: Vec<IpNet> = ranges
        .builtin
        .iter()
        .chain(&ranges.configured)
        .map(|r| r.net)
        .collect();
    let private: Vec<IpNet> = ranges.private.iter().map(|r| r.net).collect();
    let v4 = |n: &&IpNet| matches!(n, IpNet::V4(_));
    let v6 = |n: &&IpNet| matches!(n, IpNet::V6(_));
    let split = |nets: &[IpNet], f: &dyn Fn(&&IpNet) -> bool| -> Vec<IpNet> {
        nets.iter().filter(|n| f(n)).copied().collect()
    };

    let mut r = String::new();
    let _ = writeln!(
        r,
        "table inet {table} {{}}\ndelete table inet {table}\ntable inet {table} {{"
    );
    r.push_str(
        "  counter allowed_net { }\n\
         \x20 counter allowed_dns { }\n\
         \x20 set slots { type ifname; }\n\
         \x20 set src4 { type ifname . ipv4_addr; }\n\
         \x20 set src6 { type ifname . ipv6_addr; }\n\
         \x20 map mode { type ifname : verdict; }\n\
         \x20 map back_mode { type ifname : verdict; }\n\
         \x20 map netgen { type ifname : mark; }\n\
         \x20 map dnsgen { type ifname : mark; }\n\
         \x20 map valid { type mark : verdict; }\n\
         \x20 set admit4 { type ifname . ipv4_addr; flags timeout; }\n\
         \x20 set admit6 { type ifname . ipv6_addr; flags timeout; }\n\
         \x20 map shares { type ifname : verdict; }\n\
         \x20 map steer { type ifname : verdict; }\n\
         \x20 set steer_all { type ifname; }\n\
         \x20 set names_only { type ifname; }\n\
         \x20 map denylist { type ifname : verdict; }\n\
         \x20 map back_denylist { type ifname : verdict; }\n\
         \x20 map dns_shares { type ifname : verdict; }\n\
         \x20 map egress4 { type ifname : ipv4_addr; }\n\
         \x20 map egress6 { type ifname : ipv6_addr; }\n\
         \x20 set transfer { type ifname; }\n",
    );
    for class in LOG_CLASSES {
        let _ = writeln!(
            r,
            "  set {} {{ type ifname; flags dynamic,timeout; timeout 1m; }}\n\
             \x20 set {} {{ type ifname; flags dynamic; counter; }}",
            meter_set(class),
            dropped_set(class)
        );
    }
    for k in 0..SHARDS {
        for (v4, ty) in [(true, "ipv4_addr"), (false, "ipv6_addr")] {
            for private in [false, true] {
                let name = allow_set(v4, private, k);
                let _ = writeln!(r, "  set {name} {{ type ifname . {ty}; flags interval; }}");
            }
            let name = deny_set(v4, k);
            let _ = writeln!(r, "  set {name} {{ type ifname . {ty}; flags interval; }}");
            for private in [false, true] {
                let name = grant_set(v4, private, k);
                let _ = writeln!(
                    r,
                    "  set {name} {{ type ifname . {ty}; flags interval,timeout; }}"
                );
            }
        }
    }
    let mut ports: Vec<String> = cfg.name_checked_ports.iter().map(u16::to_string).collect();
    ports.sort();
    ports.dedup();
    let _ = write!(r, "  set name_ports {{ type inet_service;");
    if !ports.is_empty() {
        let _ = write!(r, " elements = {{ {} }};", ports.join(", "));
    }
    r.push_str(" }\n");
    set_of(&mut r, "denied4", "ipv4_addr", &split(&denied, &v4));
    set_of(&mut r, "denied6", "ipv6_addr", &split(&denied, &v6));
    set_of(&mut r, "private4", "ipv4_addr", &split(&private, &v4));
    set_of(&mut r, "private6", "ipv6_addr", &split(&private, &v6));

    let slots = format!("\"{SLOT_IF_PREFIX}*\"");
    let dns = cfg.dns_port;
    let gw = cfg.gateway_port;
    let group = cfg.nflog_group;
    let rate = cfg.log_rate.max(1);
    let nd = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }";
    let class = |name: &str| {
        LOG_CLASSES
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| unreachable!("reason class {name}"))
    };

    // A forged source: logged (or counted) and dropped. The raw hook's
    // `slot_ingress` ends here; so does a packet from a slot that
    // connection tracking ties to a connection the slot did not open (an
    // ICMP error whose quoted packet is another slot's: connection
    // tracking relates an error by the packet it quotes, not by who sends
    // it), whose source is the slot's own, so the raw hook let it by.
    let _ = write!(
        r,
        "  chain foreign {{\n{spoof}\x20 }}\n",
        spoof = log_or_count(class("spoof"), "", rate, group, "drop"),
    );
    // Ingress: unknown interfaces and forged sources never get further.
    let _ = write!(
        r,
        "  chain ingress_hook {{ type filter hook prerouting priority raw; policy accept;\n\
         \x20   iifname . ip saddr @src4 accept\n\
         \x20   iifname . ip6 saddr @src6 accept\n\
         \x20   iifname {slots} jump slot_ingress\n  }}\n\
         \x20 chain slot_ingress {{\n\
         \x20   iifname != @slots drop\n\
         \x20   ip6 saddr fe80::/10 {nd} return\n\
         \x20   ip6 saddr :: icmpv6 type nd-neighbor-solicit return\n\
         \x20   ip6 saddr {{ ::, fe80::/10 }} ip6 daddr ff02::/16 drop\n\
         \x20   goto foreign\n  }}\n",
    );
    // Transfer quotas: a slot's element in `transfer` counts every packet
    // from the slot and every packet to it, and the lookup matches once
    // the period's bytes are spent. Where: a connection that passes by
    // its generation goes through `metered` when its slot has a quota
    // (its `valid` entry says so; a slot without one pays nothing there);
    // every other packet from a slot meets the lookup at the top of
    // `from_slot` or `slot_input`, every other packet to a slot at the
    // top of `to_slot` or, from the host itself (its DNS service, its
    // gateway), in the output hook. A forwarded packet enters no hook for
    // the quotas alone.
    let _ = write!(
        r,
        "  chain over_transfer {{\n{over}\x20 }}\n\
         \x20 chain {METERED_CHAIN} {{\n\
         \x20   iifname @transfer jump over_transfer\n\
         \x20   oifname @transfer drop\n\
         \x20   accept\n  }}\n\
         \x20 chain output_hook {{ type filter hook output priority filter; policy accept;\n\
         \x20   oifname @transfer drop\n  }}\n",
        over = log_or_count(class("transfer"), "", rate, group, "drop"),
    );
    // DNS, wherever it was sent, goes to sandgate's DNS service.
    let _ = write!(
        r,
        "  chain dns_hook {{ type nat hook prerouting priority dstnat; policy accept;\n\
         \x20   iifname {slots} meta l4proto {{ tcp, udp }} th dport 53 redirect to :{dns}\n\
         \x20   iifname {slots} meta l4proto tcp th dport @name_ports iifname vmap @steer\n  }}\n\
         \x20 chain nat_hook {{ type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   iifname {slots} oifname != {slots} jump slot_nat\n  }}\n\
         \x20 chain slot_nat {{\n\
         \x20   meta nfproto ipv4 snat ip to iifname map @egress4\n\
         \x20   meta nfproto ipv6 snat ip6 to iifname map @egress6\n\
         \x20   masquerade\n  }}\n",
    );
    // The host itself: only DNS.
    let _ = write!(
        r,
        "  chain input_hook {{ type filter hook input priority filter; policy accept;\n\
         \x20   iifname != {slots} meta l4proto {{ tcp, udp }} th dport {dns} drop\n\
         \x20   iifname != {slots} meta l4proto tcp th dport {gw} drop\n\
         \x20   iifname {slots} jump slot_input\n  }}\n\
         \x20 chain slot_input {{\n\
         \x20   iifname != @slots drop\n\
         \x20   iifname @transfer jump over_transfer\n\
         \x20   ct direction reply ct state established,related accept\n\
         \x20   {nd} accept\n\
         \x20   ct status dnat meta l4proto {{ tcp, udp }} th dport {dns} iifname vmap @dns_shares\n\
         \x20   ct status dnat meta l4proto {{ tcp, udp }} th dport {dns} accept\n\
         \x20   ct status dnat meta l4proto tcp th dport {gw} ct state new iifname vmap @shares\n\
         \x20   ct status dnat meta l4proto tcp th dport {gw} accept\n\
         {host}\x20   drop\n  }}\n",
        host = log_or_count(class("host"), "ct state new ", rate, group, "drop"),
    );
    let _ = write!(
        r,
        "  chain forward_hook {{ type filter hook forward priority filter; policy accept;\n\
         \x20   iifname {slots} ct state new,established ct mark vmap @valid\n\
         \x20   oifname {slots} ct state new,established ct mark vmap @valid\n\
         \x20   iifname {slots} ct status expected drop\n\
         \x20   oifname {slots} ct status expected drop\n\
         \x20   iifname {slots} jump from_slot\n\
         \x20   oifname {slots} jump to_slot\n\
         \x20   {other}\n  }}\n\
         \x20 chain from_slot {{\n\
         \x20   iifname != @slots drop\n\
         \x20   meta nfproto ipv4 iifname . ct original ip saddr != @src4 goto foreign\n\
         \x20   meta nfproto ipv6 iifname . ct original ip6 saddr != @src6 goto foreign\n\
         \x20   iifname @transfer jump over_transfer\n\
         \x20   ct state invalid,untracked drop\n\
         \x20   ip daddr @denied4 goto deny_denied\n\
         \x20   ip6 daddr @denied6 goto deny_denied\n\
         \x20   iifname vmap @denylist\n\
         \x20   iifname vmap @mode\n\
         \x20   drop\n  }}\n\
         \x20 chain to_slot {{\n\
         \x20   oifname != @slots drop\n\
         \x20   ct state invalid,untracked drop\n\
         \x20   ct direction original drop\n\
         \x20   oifname @transfer drop\n\
         \x20   ct original ip daddr @denied4 drop\n\
         \x20   ct original ip6 daddr @denied6 drop\n\
         \x20   oifname vmap @back_denylist\n\
         \x20   oifname vmap @back_mode\n\
         \x20   drop\n  }}\n",
        // Traffic that neither comes from nor goes to a slot is not
        // sandgate's to forward, unless the operator says so.
        other = if cfg.forward_other { "accept" } else { "drop" },
    );
    // Steering to the gateway (reached from the nat hook, so only a
    // connection's first packet): a denied address is not redirected (the
    // forward hook refuses it, and says why); an address the slot's allow
    // list opens is no name's to check; one admitted by name goes to the
    // gateway, and so does every other (public) address of a slot in
    // `steer_all` (open mode with a domainDenyList).
    for k in 0..SHARDS {
        let (a4, a6) = (allow_set(true, false, k), allow_set(false, false, k));
        let (n4, n6) = (deny_set(true, k), deny_set(false, k));
        let (g4, g6) = (grant_set(true, false, k), grant_set(false, false, k));
        let _ = write!(
            r,
            "  chain steer_{k} {{\n\
             \x20   iifname . ip daddr @{n4} return\n\
             \x20   iifname . ip6 daddr @{n6} return\n\
             \x20   iifname . ip daddr @{a4} return\n\
             \x20   iifname . ip6 daddr @{a6} return\n\
             \x20   iifname . ip daddr @{g4} return\n\
             \x20   iifname . ip6 daddr @{g6} return\n\
             \x20   meta l4proto tcp iifname . ip daddr @admit4 redirect to :{gw}\n\
             \x20   meta l4proto tcp iifname . ip6 daddr @admit6 redirect to :{gw}\n\
             \x20   iifname != @steer_all return\n\
             \x20   ip daddr @denied4 return\n\
             \x20   ip6 daddr @denied6 return\n\
             \x20   ip daddr @private4 return\n\
             \x20   ip6 daddr @private6 return\n\
             \x20   meta l4proto tcp redirect to :{gw}\n  }}\n",
        );
        for reply in [false, true] {
            let (iface, d4, d6, deny) = if reply {
                (
                    "oifname",
                    "ct original ip daddr",
                    "ct original ip6 daddr",
                    "drop".to_string(),
                )
            } else {
                (
                    "iifname",
                    "ip daddr",
                    "ip6 daddr",
                    "goto deny_denylist".to_string(),
                )
            };
            let _ = write!(
                r,
                "  chain {} {{\n\
                 \x20   {iface} . {d4} @{n4} {deny}\n\
                 \x20   {iface} . {d6} @{n6} {deny}\n  }}\n",
                deny_chain(reply, k),
            );
        }
    }
    for reply in [false, true] {
        eval_chains(&mut r, reply, cfg.deny_quic_to_names);
    }
    for name in [
        "denied",
        "private",
        "unlisted",
        "restricted",
        "blocked",
        "quic",
        "denylist",
    ] {
        let _ = write!(
            r,
            "  chain deny_{name} {{\n{}\x20   drop\n  }}\n",
            log_or_count(class(name), "ct state new ", rate, group, "drop")
        );
    }
    // A limit reached: logged or counted (the class's chain returns), then
    // refused at once (a reset, or an ICMP error), so that the program
    // sees an error rather than a silent wait.
    let _ = write!(
        r,
        "  chain over_dns_rate {{\n{}  }}\n",
        log_or_count(class("dnsrate"), "", rate, group, "drop"),
    );
    for (name, chain) in [
        ("connections", "over_connections"),
        ("connrate", "over_connection_rate"),
    ] {
        let _ = write!(
            r,
            "  chain log_{name} {{\n{}  }}\n\
             \x20 chain {chain} {{\n\
             \x20   jump log_{name}\n\
             \x20   meta l4proto tcp reject with tcp reset\n\
             \x20   reject with icmpx admin-prohibited\n  }}\n",
            log_or_count(class(name), "", rate, group, "return"),
        );
    }
    for c in classes {
        share_class_body(&mut r, c);
    }
    r.push_str("}\n");
    r
}

/// The sets and chains of share class `c`, as declarations inside the
/// table's block.
fn share_class_body(r: &mut String, c: &ShareClass) {
    let [conns, rate_set, dns_rate_set] = c.sets();
    let _ = writeln!(
        r,
        "  set {conns} {{ type ifname; flags dynamic; }}\n\
         \x20 set {rate_set} {{ type ifname; flags dynamic,timeout; timeout 1m; }}\n\
         \x20 set {dns_rate_set} {{ type ifname; flags dynamic,timeout; timeout 1m; }}"
    );
    let (chain, dns_chain) = (c.chain(), c.dns_chain());
    let (n, per, burst) = (
        c.connections,
        c.new_per_second,
        c.new_per_second.saturating_mul(2),
    );
    let (dns, dns_burst) = (
        c.dns_per_second.saturating_mul(2),
        c.dns_per_second.saturating_mul(4),
    );
    let _ = write!(
        r,
        "  chain {chain} {{\n\
         \x20   add @{conns} {{ iifname ct count over {n} }} goto over_connections\n\
         \x20   update @{rate_set} {{ iifname limit rate over {per}/second burst {burst} packets }} goto over_connection_rate\n  }}\n\
         \x20 chain {dns_chain} {{\n\
         \x20   ct state new add @{conns} {{ iifname ct count over {n} }} goto over_connections\n\
         \x20   meta l4proto udp update @{dns_rate_set} {{ iifname limit rate over {dns}/second burst {dns_burst} packets }} goto over_dns_rate\n  }}\n",
    );
}

/// The text that adds share class `c` to table `table` as it stands, for
/// `nft -f` (a class a sandbox's connection budgets made, see
/// [`ShareClass`]).
pub fn add_share_class(table: &str, c: &ShareClass) -> String {
    let mut r = format!("table inet {table} {{\n");
    share_class_body(&mut r, c);
    r.push_str("}\n");
    r
}

/// The text that removes share class `c` from table `table`, for `nft -f`:
/// once no slot's element jumps to its chains.
pub fn remove_share_class(table: &str, c: &ShareClass) -> String {
    let mut r = format!(
        "delete chain inet {table} {}\ndelete chain inet {table} {}\n",
        c.chain(),
        c.dns_chain()
    );
    for set in c.sets() {
        let _ = writeln!(r, "delete set inet {table} {set}");
    }
    r
}

/// The mode chains of one direction. From a sandbox the interface is
/// `iifname` and the destination `ip daddr`; for replies to it they are
/// `oifname` and the connection's original destination.
fn eval_chains(r: &mut String, reply: bool, deny_quic: bool) {
    let (dir, iface, d4, d6) = if reply {
        (
            "back",
            "oifname",
            "ct original ip daddr",
            "ct original ip6 daddr",
        )
    } else {
        ("out", "iifname", "ip daddr", "ip6 daddr")
    };
    // Replies are not logged: the attempt was the sandbox's, logged then.
    let deny = |what: &str| {
        if reply {
            "drop".to_string()
        } else {
            format!("goto deny_{what}")
        }
    };
    // New connections let out, counted by what let them (by a list or
    // the mode, or by a DNS admission); replies are not new attempts.
    let (count_net, count_dns) = if reply {
        ("", "")
    } else {
        ("counter name allowed_net ", "counter name allowed_dns ")
    };
    // A new connection let out takes its share first (a refusal there is
    // the end of it, logged as such).
    let shares = if reply {
        ""
    } else {
        "ct state new iifname vmap @shares; "
    };
    // QUIC to an address admitted by name: the gateway cannot read its
    // name, so it is refused (new attempts only; none was ever let out).
    let quic = if deny_quic && !reply {
        format!(
            "{iface} . {d4} @admit4 udp dport 443 goto deny_quic\n\
             \x20   {iface} . {d6} @admit6 udp dport 443 goto deny_quic\n\
             \x20   "
        )
    } else {
        String::new()
    };
    // TCP to a name-checked port of an admitted address is the gateway's:
    // a new connection there was redirected to it and never gets here.
    // What does is a connection some other rule let out (a grant, a list
    // entry) that no longer does: it was never name-checked, so the
    // admission does not carry it on.
    let service_port = if reply { "th sport" } else { "th dport" };
    let unchecked = format!(
        "meta l4proto tcp {service_port} @name_ports {iface} . {d4} @admit4 drop\n\
         \x20   meta l4proto tcp {service_port} @name_ports {iface} . {d6} @admit6 drop\n\
         \x20   "
    );
    let (private, unlisted, restricted, blocked) = (
        deny("private"),
        deny("unlisted"),
        deny("restricted"),
        deny("blocked"),
    );
    // A slot whose tier reaches name-admitted addresses on the
    // name-checked ports only: anything else to such an address is refused
    // (what is for a name-checked port went to the gateway, or was dropped
    // just above).
    let names_only = |refusal: &str| {
        format!(
            "{iface} @names_only {iface} . {d4} @admit4 {refusal}\n\
             \x20   {iface} @names_only {iface} . {d6} @admit6 {refusal}\n\
             \x20   "
        )
    };
    let (names_only_restricted, names_only_unlisted) =
        (names_only(&restricted), names_only(&unlisted));
    // A slot in `steer_all` (open mode with a domainDenyList) has its new
    // connections to the name-checked ports redirected to the gateway, so
    // none reaches this hook: what does is a connection from before the
    // deny list, which the gateway never saw (cut), and QUIC, whose name
    // the gateway cannot read (refused).
    let steered = format!(
        "{iface} @steer_all meta l4proto tcp {service_port} @name_ports drop\n\
         \x20   {}",
        if deny_quic && !reply {
            format!("{iface} @steer_all udp dport 443 goto deny_quic\n\x20   ")
        } else {
            String::new()
        }
    );
    let _ = write!(
        r,
        "  chain {dir}_pass_net {{ {shares}{count_net}ct mark set {iface} map @netgen accept; drop; }}\n\
         \x20 chain {dir}_pass_dns {{ {shares}{count_dns}ct mark set {iface} map @dnsgen accept; drop; }}\n\
         \x20 chain {dir}_pass_grant {{ {shares}{count_net}ct mark set 0 accept; drop; }}\n\
         \x20 chain {dir}_open {{\n\
         \x20   {d4} @private4 {private}\n\
         \x20   {d6} @private6 {private}\n\
         \x20   {steered}goto {dir}_pass_net\n  }}\n\
         \x20 chain {dir}_restricted {{\n\
         \x20   {d4} @private4 {private}\n\
         \x20   {d6} @private6 {private}\n\
         \x20   {unchecked}{quic}{names_only_restricted}{iface} . {d4} @admit4 goto {dir}_pass_dns\n\
         \x20   {iface} . {d6} @admit6 goto {dir}_pass_dns\n\
         \x20   {restricted}\n  }}\n\
         \x20 chain {dir}_blocked {{\n\
         \x20   {blocked}\n  }}\n",
    );
    for k in 0..SHARDS {
        let (a4, a6) = (allow_set(true, false, k), allow_set(false, false, k));
        let (p4, p6) = (allow_set(true, true, k), allow_set(false, true, k));
        let (g4, g6) = (grant_set(true, false, k), grant_set(false, false, k));
        let (gp4, gp6) = (grant_set(true, true, k), grant_set(false, true, k));
        let _ = write!(
            r,
            "  chain {dir}_allowlist_{k} {{\n\
             \x20   {d4} @private4 {iface} . {d4} @{p4} goto {dir}_pass_net\n\
             \x20   {d6} @private6 {iface} . {d6} @{p6} goto {dir}_pass_net\n\
             \x20   {d4} @private4 {iface} . {d4} @{gp4} goto {dir}_pass_grant\n\
             \x20   {d6} @private6 {iface} . {d6} @{gp6} goto {dir}_pass_grant\n\
             \x20   {d4} @private4 {private}\n\
             \x20   {d6} @private6 {private}\n\
             \x20   {iface} . {d4} @{a4} goto {dir}_pass_net\n\
             \x20   {iface} . {d6} @{a6} goto {dir}_pass_net\n\
             \x20   {iface} . {d4} @{g4} goto {dir}_pass_grant\n\
             \x20   {iface} . {d6} @{g6} goto {dir}_pass_grant\n\
             \x20   {unchecked}{quic}{names_only_unlisted}{iface} . {d4} @admit4 goto {dir}_pass_dns\n\
             \x20   {iface} . {d6} @admit6 goto {dir}_pass_dns\n\
             \x20   {unlisted}\n  }}\n",
        );
    }
}
