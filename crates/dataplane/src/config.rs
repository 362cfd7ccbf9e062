//! The dataplane's configuration and the addresses of a slot.

use crate::ruleset::ShareClass;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sandgate_policy::PolicyConfig;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

/// The prefix of the host end of every slot's veth (`sgh<index>`).
pub const SLOT_IF_PREFIX: &str = "sgh";
/// The name of the sandbox end of every slot's veth, inside its namespace.
pub const SANDBOX_IF: &str = "eth0";

/// How the dataplane is set up.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// The prefix of the slots' namespace names (`<instance>-s<index>`),
    /// so that several instances (labs) can share a machine.
    pub instance: String,
    /// The network namespace the dataplane works in (the lab's `host`);
    /// `None` for the namespace of the process.
    pub host_netns: Option<String>,
    /// Sandboxes' IPv4 addresses come from here, a /31 per slot.
    pub subnet4: Ipv4Net,
    /// Sandboxes' IPv6 addresses come from here, a /64 per slot.
    pub subnet6: Ipv6Net,
    /// The port of sandgate's DNS service on every gateway; all port-53
    /// traffic from sandboxes is redirected to it.
    pub dns_port: u16,
    /// The NFLOG group deny events are logged to.
    pub nflog_group: u16,
    /// Denied connection attempts logged per slot and second, at most (the
    /// kernel drops the rest of a flood before it reaches user space).
    pub log_rate: u32,
    /// The file that keeps slot allocations across restarts.
    pub state_file: PathBuf,
    /// How many prepared slots to keep ready.
    pub warm_pool: usize,
    /// The nftables table (`inet`).
    pub table: String,
    /// The distinct fair shares of the tiers (tracked connections, new
    /// connections a second): one share chain each.
    pub share_classes: Vec<ShareClass>,
    /// Whether the host forwards traffic that is no sandbox's (default:
    /// no, it is dropped: a sandbox host is not a router for anything
    /// else).
    pub forward_other: bool,
    /// The port of the name-checking gateway, on every slot's gateway
    /// address (connections steered to it are redirected there).
    pub gateway_port: u16,
    /// The TCP ports on which connections to an address admitted by name
    /// (and not opened by `networkAllowList`) are steered to the gateway
    /// (default 80 and 443; empty: none is, and names are not bound to
    /// connections).
    pub name_checked_ports: Vec<u16>,
    /// Whether UDP to port 443 (QUIC) of an address admitted by name is
    /// refused (`quic_denied`; the default): the gateway cannot read the
    /// name of a QUIC connection, so without this the name check on 443
    /// could be walked around over UDP.
    pub deny_quic_to_names: bool,
    /// Whether established flows take the TC-BPF fast path
    /// (`crate::fastpath`; default: where the kernel can run it).
    pub fast_path: FastPathMode,
}

/// Whether established flows of sandboxes take the TC-BPF fast path
/// (`crate::fastpath`). Either way every new connection, every denial and
/// every cut is netfilter's; the fast path only carries what netfilter
/// already allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FastPathMode {
    /// Never: netfilter forwards every packet.
    Off,
    /// Where the kernel can load and attach the program (the default);
    /// where it cannot (no BPF, no `tcx` before Linux 6.6), the start
    /// says why and netfilter forwards every packet.
    #[default]
    Auto,
    /// Always: the dataplane does not start without it.
    On,
}

impl std::str::FromStr for FastPathMode {
    type Err = String;

    fn from_str(text: &str) -> Result<FastPathMode, String> {
        match text {
            "off" | "false" => Ok(FastPathMode::Off),
            "auto" => Ok(FastPathMode::Auto),
            "on" | "true" => Ok(FastPathMode::On),
            other => Err(format!("the fast path is auto, on or off, not {other:?}")),
        }
    }
}

impl std::fmt::Display for FastPathMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FastPathMode::Off => "off",
            FastPathMode::Auto => "auto",
            FastPathMode::On => "on",
        })
    }
}

/// The name-checked ports by default.
pub const NAME_CHECKED_PORTS: [u16; 2] = [80, 443];

impl DataplaneConfig {
    /// A configuration with the sandbox subnets of `policy` and defaults
    /// for the rest.
    pub fn new(policy: &PolicyConfig, instance: &str, state_file: PathBuf) -> io::Result<Self> {
        let mut subnet4 = None;
        let mut subnet6 = None;
        for net in policy.sandbox_subnets() {
            match net {
                IpNet::V4(n) if subnet4.is_none() => subnet4 = Some(*n),
                IpNet::V6(n) if subnet6.is_none() => subnet6 = Some(*n),
                _ => {}
            }
        }
        let (Some(subnet4), Some(subnet6)) = (subnet4, subnet6) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the sandbox subnets need one IPv4 and one IPv6 subnet",
            ));
        };
        if subnet4.prefix_len() > 30 || subnet6.prefix_len() > 63 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the sandbox subnets are too small (at most /30 for IPv4, /63 for IPv6)",
            ));
        }
        let mut share_classes: Vec<ShareClass> = policy
            .tiers()
            .values()
            .map(|t| ShareClass::of(&t.fair_shares))
            .collect();
        share_classes.sort();
        share_classes.dedup();
        // The kernel's meter holds back what no tier would publish anyway.
        let log_rate = policy
            .tiers()
            .values()
            .map(|t| t.fair_shares.events_per_second)
            .max()
            .unwrap_or(20);
        Ok(DataplaneConfig {
            share_classes,
            forward_other: false,
            gateway_port: 10080,
            name_checked_ports: NAME_CHECKED_PORTS.to_vec(),
            deny_quic_to_names: true,
            fast_path: FastPathMode::default(),
            instance: instance.to_string(),
            host_netns: None,
            subnet4,
            subnet6,
            dns_port: 10053,
            nflog_group: 7100,
            log_rate,
            state_file,
            warm_pool: 0,
            table: "sandgate".into(),
        })
    }

    /// The largest slot index the subnets allow (slot 0 is not used).
    pub fn max_slots(&self) -> u32 {
        let v4 = 1u64 << (32 - self.subnet4.prefix_len() - 1);
        let v6 = 1u64 << (64 - self.subnet6.prefix_len()).min(32);
        let n = v4.min(v6).saturating_sub(1);
        // Interface names carry the index in at most 12 characters.
        u32::try_from(n).unwrap_or(u32::MAX).min(999_999)
    }

    /// The addresses and names of slot `index`.
    pub fn slot(&self, index: u32) -> SlotAddrs {
        let base4 = u32::from(self.subnet4.network());
        let gw4 = Ipv4Addr::from(base4 + 2 * index);
        let sandbox4 = Ipv4Addr::from(base4 + 2 * index + 1);
        let base6 = u128::from(self.subnet6.network());
        let prefix6 = base6 | (u128::from(index) << 64);
        SlotAddrs {
            index,
            netns: format!("{}-s{index}", self.instance),
            host_if: format!("{SLOT_IF_PREFIX}{index}"),
            gateway4: gw4,
            sandbox4,
            gateway6: Ipv6Addr::from(prefix6 | 1),
            sandbox6: Ipv6Addr::from(prefix6 | 2),
        }
    }

    /// The slot whose sandbox address `addr` is (not its gateway's).
    pub fn slot_of_sandbox(&self, addr: IpAddr) -> Option<u32> {
        let index = match addr.to_canonical() {
            IpAddr::V4(a) => {
                let offset = u32::from(a).checked_sub(u32::from(self.subnet4.network()))?;
                (self.subnet4.contains(&a) && offset % 2 == 1).then_some(offset / 2)?
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let host = bits & u128::from(u64::MAX);
                (self.subnet6.contains(&a) && host == 2).then_some(())?;
                let offset = (bits - u128::from(self.subnet6.network())) >> 64;
                u32::try_from(offset).ok()?
            }
        };
        (index > 0 && index <= self.max_slots()).then_some(index)
    }

    /// The slot index of a slot namespace name of this instance.
    pub fn index_of_netns(&self, name: &str) -> Option<u32> {
        name.strip_prefix(&format!("{}-s", self.instance))?
            .parse()
            .ok()
    }
}

/// Where a slot lives: its names and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotAddrs {
    /// The slot's index.
    pub index: u32,
    /// The name of its network namespace.
    pub netns: String,
    /// The host end of its veth, the key of all its enforcement state.
    pub host_if: String,
    /// The gateway (host end), IPv4, of a /31.
    pub gateway4: Ipv4Addr,
    /// The sandbox's IPv4 address.
    pub sandbox4: Ipv4Addr,
    /// The gateway, IPv6, of a /64.
    pub gateway6: Ipv6Addr,
    /// The sandbox's IPv6 address.
    pub sandbox6: Ipv6Addr,
}

impl SlotAddrs {
    /// The gateway's IPv4 network (/31).
    pub fn gateway4_net(&self) -> IpNet {
        IpNet::V4(Ipv4Net::new_assert(self.gateway4, 31))
    }
    /// The sandbox's IPv4 network (/31).
    pub fn sandbox4_net(&self) -> IpNet {
        IpNet::V4(Ipv4Net::new_assert(self.sandbox4, 31))
    }
    /// The gateway's IPv6 network (/64).
    pub fn gateway6_net(&self) -> IpNet {
        IpNet::V6(Ipv6Net::new_assert(self.gateway6, 64))
    }
    /// The sandbox's IPv6 network (/64).
    pub fn sandbox6_net(&self) -> IpNet {
        IpNet::V6(Ipv6Net::new_assert(self.sandbox6, 64))
    }
}
