//! The lab (REQUIREMENTS.md section 5): the only place tests, benchmarks and the demo
//! send packets.
//!
//! Two network namespaces, made fresh for each lab:
//!
//! - `host`: where the daemon under test runs, its rules and its slots. Its
//!   only links are `lo`, the uplink to `world`, and the slots' veths; its
//!   only routes lead to `world`. It has no device that touches this
//!   machine's real interfaces, so nothing can leave.
//! - `world`: plays the internet. Servers listen on TEST-NET and
//!   2001:db8::/32 addresses ([`addrs`]): TCP echo, a TCP stream source, UDP
//!   echo, HTTP, HTTPS with a certificate of the lab's own CA
//!   ([`Lab::ca_pem`]), and an authoritative DNS server ([`dns::Zone`]) for
//!   the catalog's names and the test domains, which counts its queries;
//!   and, under the HTTP servers, stand-ins of the essential services a
//!   Debian sandbox uses ([`mirrors`]: apt, PyPI, npm).
//!
//! [`Lab`] removes itself on drop, also when a test panics; labs left by a
//! killed process are swept by the next [`Lab::up`].

pub mod addrs;
pub mod bench;
pub mod debian;
pub mod dns;
mod http;
pub mod mirrors;
pub mod registry;
mod servers;
pub mod tls;

use addrs::*;
use sandgate_netns::{set_sysctl, Netns, Rtnl};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The destinations a `network/test` probes in the lab (`host:port`, TCP
/// echo): each kind of lab server (public v4 twice, v6, the private and
/// always-denied stand-ins), a test name, and a catalog name (the lab's
/// DNS answers it with [`SERVER4`]). Never an address outside the lab.
pub fn probe_targets(catalog: &sandgate_policy::Catalog) -> Vec<String> {
    let mut targets: Vec<String> = [SERVER4, SERVER4_B, SERVER6, PRIVATE_SERVER4, DENIED_SERVER4]
        .iter()
        .map(|a| std::net::SocketAddr::new(*a, TCP_ECHO).to_string())
        .collect();
    targets.push(format!("example.com:{TCP_ECHO}"));
    if let Some(name) = catalog_name(catalog) {
        targets.push(format!("{name}:{TCP_ECHO}"));
    }
    targets
}

/// A name of the catalog (its first that is not a `*.` wildcard), taken
/// from it at run time: the lab's DNS server answers it with [`SERVER4`].
pub fn catalog_name(catalog: &sandgate_policy::Catalog) -> Option<String> {
    catalog
        .names()
        .map(|(_, p)| p)
        .find(|p| !p.is_wildcard())
        .map(|p| p.base().to_string())
}

/// The policy configuration of a lab: its TEST-NET stand-ins declared
/// private ([`LAB_PRIVATE4`], [`LAB_PRIVATE6`]), an operator's internal
/// network ([`LAB_DENIED4`], [`LAB_DENIED6`]) and metadata services
/// ([`METADATA_SERVER4`], [`METADATA_SERVER6`]), since the lab never sends
/// to the built-in private and always-denied ranges.
pub fn lab_policy() -> sandgate_policy::PolicyConfig {
    lab_policy_with(None)
}

/// [`lab_policy`] with other sandbox subnets (inside the lab's
/// 198.18.0.0/15 and 2001:db8::/32), such as a small one to run out of.
pub fn lab_policy_with(sandbox_subnets: Option<Vec<String>>) -> sandgate_policy::PolicyConfig {
    sandgate_policy::PolicyConfig::from_repr(lab_policy_repr(sandbox_subnets))
        .unwrap_or_else(|e| unreachable!("the lab's policy configuration is valid: {e}"))
}

/// [`lab_policy_with`] as written, for a test to change more (fair shares,
/// tiers) before it is validated.
pub fn lab_policy_repr(sandbox_subnets: Option<Vec<String>>) -> sandgate_policy::PolicyConfigRepr {
    let range = |net: ipnet::IpNet, label: &str| sandgate_policy::DeniedRepr {
        cidr: net.to_string(),
        label: label.to_string(),
    };
    sandgate_policy::PolicyConfigRepr {
        extra_private: vec![
            range(LAB_PRIVATE4, "lab private"),
            range(LAB_PRIVATE6, "lab private"),
        ],
        extra_always_denied: vec![
            range(LAB_DENIED4, "lab internal network"),
            range(LAB_DENIED6, "lab internal network"),
        ],
        metadata_services: vec![METADATA_SERVER4.to_string(), METADATA_SERVER6.to_string()],
        sandbox_subnets,
        ..Default::default()
    }
}

/// The prefix of every lab namespace name: `sgl-<pid>-<n>-...`.
pub const LAB_PREFIX: &str = "sgl-";

/// A running lab.
pub struct Lab {
    tag: String,
    host: Option<Netns>,
    world: Option<Netns>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
    dns_queries: Arc<AtomicU64>,
    ca_pem: String,
    /// The world's certificate chain and key (PEM).
    server_pem: (String, String),
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

/// The name of the host end of the uplink, in `host`.
pub const UPLINK: &str = "uplink";
/// The name of the world end of the uplink, in `world`.
pub const WAN: &str = "wan";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// Builds a lab: namespaces, link, addresses, routes, servers.
    pub fn up() -> io::Result<Lab> {
        Lab::sweep_stale()?;
        let tag = format!(
            "{LAB_PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let zone = Arc::new(dns::Zone::lab(&sandgate_policy::Catalog::builtin()));
        let tls = tls::LabTls::new(&zone.names())?;
        let mut lab = Lab {
            host: Some(Netns::create(&format!("{tag}-host"))?),
            world: None,
            tag: tag.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
            dns_queries: Arc::new(AtomicU64::new(0)),
            ca_pem: tls.ca_pem.clone(),
            server_pem: (tls.server_chain_pem.clone(), tls.server_key_pem.clone()),
        };
        // From here on, dropping `lab` removes whatever was made.
        lab.world = Some(Netns::create(&format!("{tag}-world"))?);
        lab.wire()?;
        let world = servers::World {
            zone,
            dns_queries: lab.dns_queries.clone(),
            tls: tls.server,
        };
        lab.servers = servers::start(lab.world(), &world, &lab.stop)?;
        lab.assert_isolated()?;
        Ok(lab)
    }

    /// A tag unique to this lab, for names of things made in it.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// How many DNS queries the world's DNS server has received.
    pub fn dns_queries(&self) -> u64 {
        self.dns_queries.load(Ordering::SeqCst)
    }

    /// The lab CA's certificate (PEM), which signed the world's HTTPS
    /// certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The world's certificate chain and private key (PEM), which the
    /// lab CA signed for every world name and address: for a server the
    /// lab runs as a program ([`registry::LabRegistry`]).
    pub fn server_pem(&self) -> (&str, &str) {
        (&self.server_pem.0, &self.server_pem.1)
    }

    /// The namespace of the daemon under test.
    pub fn host(&self) -> &Netns {
        self.host
            .as_ref()
            .unwrap_or_else(|| unreachable!("a lab always has a host"))
    }

    /// The namespace that plays the internet.
    pub fn world(&self) -> &Netns {
        self.world
            .as_ref()
            .unwrap_or_else(|| unreachable!("a lab always has a world"))
    }

    fn wire(&self) -> io::Result<()> {
        let world_fd = self.world().fd();
        self.host().run(|| {
            let mut rt = Rtnl::open()?;
            let lo = index(&mut rt, "lo")?;
            rt.set_up(lo)?;
            // The known egress addresses an operator can give an
            // organization: the host's own (on `lo`, so that the host's
            // own connections never pick them as a source), routed to the
            // host by the world.
            rt.add_address(lo, ipnet::IpNet::from(EGRESS4))?;
            rt.add_address(lo, ipnet::IpNet::from(EGRESS6))?;
            rt.add_veth(UPLINK, WAN, Some(world_fd))?;
            let up = index(&mut rt, UPLINK)?;
            rt.add_address(up, HOST_LINK4)?;
            rt.add_address(up, HOST_LINK6)?;
            rt.set_up(up)?;
            rt.add_route(
                "0.0.0.0/0".parse().map_err(invalid)?,
                Some(WORLD_LINK4.addr()),
                up,
            )?;
            rt.add_route(
                "::/0".parse().map_err(invalid)?,
                Some(WORLD_LINK6.addr()),
                up,
            )?;
            set_sysctl("net/ipv4/ip_forward", "1")?;
            set_sysctl("net/ipv6/conf/all/forwarding", "1")
        })?;
        let mac = |ns: &Netns, name: &str| {
            ns.run(|| {
                Rtnl::open()?
                    .link(name)?
                    .map(|l| l.mac)
                    .ok_or_else(|| io::Error::other(format!("no link {name}")))
            })
        };
        let (uplink_mac, wan_mac) = (mac(self.host(), UPLINK)?, mac(self.world(), WAN)?);
        // Both ends of the uplink know each other: no neighbour discovery
        // delays the first packet of a test.
        self.host().run(|| {
            let mut rt = Rtnl::open()?;
            let up = index(&mut rt, UPLINK)?;
            rt.add_neighbour(up, WORLD_LINK4.addr(), &wan_mac)?;
            rt.add_neighbour(up, WORLD_LINK6.addr(), &wan_mac)
        })?;
        self.world().run(|| {
            let mut rt = Rtnl::open()?;
            let lo = index(&mut rt, "lo")?;
            rt.set_up(lo)?;
            for net in WORLD_ADDRESSES {
                rt.add_address(lo, net.parse().map_err(invalid)?)?;
            }
            let wan = index(&mut rt, WAN)?;
            rt.add_address(wan, WORLD_LINK4)?;
            rt.add_address(wan, WORLD_LINK6)?;
            rt.set_up(wan)?;
            rt.add_neighbour(wan, HOST_LINK4.addr(), &uplink_mac)?;
            rt.add_neighbour(wan, HOST_LINK6.addr(), &uplink_mac)?;
            rt.add_route(LAB_EGRESS4, Some(HOST_LINK4.addr()), wan)?;
            rt.add_route(LAB_EGRESS6, Some(HOST_LINK6.addr()), wan)
        })
    }

    /// Checks the lab's one network rule in the kernel: the host namespace
    /// has no link but `lo`, the uplink and slot veths (`slot_prefix`), so
    /// it cannot reach this machine's real interfaces; the world has only
    /// `lo` and its end of the uplink.
    pub fn assert_isolated(&self) -> io::Result<()> {
        self.assert_isolated_with("sgh")
    }

    /// [`Lab::assert_isolated`] with the slot interface prefix in use.
    pub fn assert_isolated_with(&self, slot_prefix: &str) -> io::Result<()> {
        let host_links = self.host().run(|| Rtnl::open()?.links())?;
        for link in host_links {
            if link.name != "lo" && link.name != UPLINK && !link.name.starts_with(slot_prefix) {
                return Err(io::Error::other(format!(
                    "lab host namespace has an unexpected link {}",
                    link.name
                )));
            }
        }
        let world_links = self.world().run(|| Rtnl::open()?.links())?;
        for link in world_links {
            if link.name != "lo" && link.name != WAN {
                return Err(io::Error::other(format!(
                    "lab world namespace has an unexpected link {}",
                    link.name
                )));
            }
        }
        Ok(())
    }

    /// Removes namespaces of labs whose process is gone (a test killed
    /// before its lab's drop ran).
    pub fn sweep_stale() -> io::Result<()> {
        for name in Netns::list(LAB_PREFIX)? {
            let pid = name[LAB_PREFIX.len()..]
                .split('-')
                .next()
                .and_then(|p| p.parse::<i32>().ok());
            let alive = pid.is_some_and(|p| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok()
            });
            if !alive {
                Netns::delete_name(&name)?;
            }
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.servers.drain(..) {
            let _ = t.join();
        }
        // Everything named after this lab goes: its two namespaces and the
        // slots a dataplane made in it.
        if let Ok(names) = Netns::list(&format!("{}-", self.tag)) {
            for name in names {
                let _ = Netns::delete_name(&name);
            }
        }
        self.host = None;
        self.world = None;
    }
}

fn index(rt: &mut Rtnl, name: &str) -> io::Result<u32> {
    rt.link_index(name)?
        .ok_or_else(|| io::Error::other(format!("no link {name}")))
}

fn invalid<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}
