//! The DNS service in the lab: a dataplane, the service on the lab host,
//! the world's DNS server upstream, and sandboxes that ask through their
//! gateway like any resolver library would.

#![allow(dead_code, clippy::unwrap_used)]

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use sandgate_dataplane::probe::{reachable, Proto};
use sandgate_dataplane::{Dataplane, DataplaneConfig, SlotAddrs};
use sandgate_dns::protocol::{read_framed, write_framed};
use sandgate_dns::{Asker, Directory, DnsConfig, DnsService, Upstream};
use sandgate_lab::addrs::*;
use sandgate_lab::Lab;
use sandgate_netns::Netns;
use sandgate_policy::{Catalog, EffectivePolicy, PolicyConfig, Reason, SettingsRequest};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const WAIT: Duration = Duration::from_millis(400);

/// The sandboxes of the rig and the dataplane that admits for them. Each
/// sandbox is its own organization (its own cache partition) unless made
/// with [`Rig::sandbox_of`].
pub struct LabDirectory {
    pub dp: Mutex<Dataplane>,
    pub sandboxes: Mutex<HashMap<IpAddr, Asker>>,
    pub config: Arc<PolicyConfig>,
    leases: std::sync::atomic::AtomicU64,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Directory for LabDirectory {
    fn sandbox(&self, source: IpAddr) -> Option<Asker> {
        self.sandboxes.lock().unwrap().get(&source).cloned()
    }

    fn admit(
        &self,
        asker: &Asker,
        addr: IpAddr,
        _name: &str,
        rule: &Reason,
        lifetime: Duration,
    ) -> io::Result<Option<IpAddr>> {
        let known = self.sandboxes.lock().unwrap();
        if !known
            .values()
            .any(|a| a.slot == asker.slot && a.lease == asker.lease)
        {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "slot changed hands",
            ));
        }
        self.dp
            .lock()
            .unwrap()
            .admit(asker.slot, addr, rule, lifetime)
    }

    fn holds(&self, asker: &Asker) -> bool {
        self.sandboxes
            .lock()
            .unwrap()
            .values()
            .any(|a| a.slot == asker.slot && a.lease == asker.lease)
    }

    fn current(&self, asker: &Asker) -> Option<Asker> {
        self.sandboxes
            .lock()
            .unwrap()
            .values()
            .find(|a| a.slot == asker.slot && a.lease == asker.lease)
            .cloned()
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn config(&self) -> Arc<PolicyConfig> {
        self.config.clone()
    }
}

pub struct Rig {
    pub service: Option<DnsService>,
    pub directory: Arc<LabDirectory>,
    pub policy: Arc<PolicyConfig>,
    dir: PathBuf,
    pub lab: Lab,
}

pub use sandgate_lab::lab_policy;

impl Rig {
    pub fn new() -> Rig {
        Rig::with_floor(Duration::from_secs(60))
    }

    pub fn with_floor(floor: Duration) -> Rig {
        Rig::with(floor, 10_000)
    }

    /// A rig with the given admission floor and cache size.
    pub fn with(floor: Duration, cache_entries: usize) -> Rig {
        Rig::with_upstream(floor, cache_entries, None)
    }

    /// A rig whose service asks `upstream` (default: the world's server).
    pub fn with_upstream(floor: Duration, cache_entries: usize, upstream: Option<Upstream>) -> Rig {
        Rig::with_policy(lab_policy(), floor, cache_entries, upstream)
    }

    /// A rig whose policy configuration is `policy` (its fair shares,
    /// say), with a lab's stand-ins.
    pub fn with_policy(
        policy: PolicyConfig,
        floor: Duration,
        cache_entries: usize,
        upstream: Option<Upstream>,
    ) -> Rig {
        let lab = Lab::up().unwrap();
        let policy = Arc::new(policy);
        let dir = std::env::temp_dir().join(format!("sandgate-dns-test-{}", lab.tag()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = DataplaneConfig::new(&policy, lab.tag(), dir.join("dataplane.json")).unwrap();
        cfg.host_netns = Some(lab.host().name().to_string());
        let port = cfg.dns_port;
        let (dp, _) = Dataplane::start(cfg, (*policy).clone()).unwrap();
        let directory = Arc::new(LabDirectory {
            dp: Mutex::new(dp),
            sandboxes: Mutex::new(HashMap::new()),
            config: policy.clone(),
            leases: std::sync::atomic::AtomicU64::new(0),
            changes: tokio::sync::watch::Sender::new(0),
        });
        let mut dns = DnsConfig::new(
            port,
            upstream.unwrap_or(Upstream {
                servers: vec![SocketAddr::new(DNS4, 53), SocketAddr::new(DNS6, 53)],
                timeout: Duration::from_secs(1),
            }),
        );
        dns.lifetime_floor = floor;
        dns.cache_entries = cache_entries;
        let host = Netns::open(lab.host().name()).unwrap();
        let service = DnsService::start(
            Some(&host),
            dns,
            directory.clone(),
            Arc::new(Catalog::builtin()),
        )
        .unwrap();
        Rig {
            service: Some(service),
            directory,
            policy,
            dir,
            lab,
        }
    }

    pub fn service(&self) -> &DnsService {
        self.service.as_ref().unwrap()
    }

    pub fn resolve_policy(&self, tier: u8, request: SettingsRequest<'_>) -> EffectivePolicy {
        let settings = self.policy.settings_for_create(tier, &request).unwrap();
        self.policy.resolve(tier, &settings).unwrap()
    }

    /// A sandbox of `tier` with these settings, an organization of its
    /// own: its slot and namespace.
    pub fn sandbox(
        &self,
        name: &str,
        tier: u8,
        request: SettingsRequest<'_>,
    ) -> (SlotAddrs, Netns) {
        self.sandbox_of(name, name, tier, request)
    }

    /// A sandbox of organization `org`.
    pub fn sandbox_of(
        &self,
        name: &str,
        org: &str,
        tier: u8,
        request: SettingsRequest<'_>,
    ) -> (SlotAddrs, Netns) {
        let policy = self.resolve_policy(tier, request);
        self.sandbox_with(name, org, &policy)
    }

    /// A sandbox of organization `org` with `policy`.
    pub fn sandbox_with(
        &self,
        name: &str,
        org: &str,
        policy: &EffectivePolicy,
    ) -> (SlotAddrs, Netns) {
        let slot = {
            let mut dp = self.directory.dp.lock().unwrap();
            let slot = dp.create(name, policy).unwrap();
            // Its fast path program, as the runner's refiller attaches it.
            dp.attach_later();
            slot
        };
        self.know(&slot, org, policy);
        let ns = Netns::open(&slot.netns).unwrap();
        (slot, ns)
    }

    /// The DNS service answers `slot` for a new holder of `org`.
    pub fn know(&self, slot: &SlotAddrs, org: &str, policy: &EffectivePolicy) {
        let lease = self
            .directory
            .leases
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let asker = Asker {
            slot: slot.index,
            lease,
            partition: Arc::from(org),
            policy: policy.clone(),
        };
        let mut s = self.directory.sandboxes.lock().unwrap();
        s.insert(IpAddr::V4(slot.sandbox4), asker.clone());
        s.insert(IpAddr::V6(slot.sandbox6), asker);
    }

    /// The DNS service forgets `slot`'s holder, and the dataplane the slot.
    pub fn delete(&self, slot: &SlotAddrs) {
        {
            let mut s = self.directory.sandboxes.lock().unwrap();
            s.remove(&IpAddr::V4(slot.sandbox4));
            s.remove(&IpAddr::V6(slot.sandbox6));
        }
        self.directory
            .dp
            .lock()
            .unwrap()
            .delete(slot.index)
            .unwrap();
    }

    /// Applies a new policy to a sandbox, in the dataplane and for the
    /// DNS service.
    pub fn update(&self, slot: &SlotAddrs, tier: u8, request: SettingsRequest<'_>) {
        let policy = self.resolve_policy(tier, request);
        self.update_policy(slot, &policy);
    }

    /// Applies `policy` to a sandbox, in the dataplane and for the DNS
    /// service.
    pub fn update_policy(&self, slot: &SlotAddrs, policy: &EffectivePolicy) {
        self.directory
            .dp
            .lock()
            .unwrap()
            .update(slot.index, policy)
            .unwrap();
        let mut s = self.directory.sandboxes.lock().unwrap();
        for addr in [IpAddr::V4(slot.sandbox4), IpAddr::V6(slot.sandbox6)] {
            if let Some(a) = s.get_mut(&addr) {
                a.policy = policy.clone();
            }
        }
        drop(s);
        self.directory.changes.send_modify(|n| *n += 1);
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.service = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A query with an id of its own (distinct ids catch an answer that does
/// not carry the question's id).
pub fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let mut m = Message::query();
    m.metadata.id = NEXT.fetch_add(7919, std::sync::atomic::Ordering::Relaxed);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

/// Asks `server` (port 53) from inside `ns`, over UDP or TCP.
pub fn ask(ns: &Netns, server: IpAddr, name: &str, qtype: RecordType, tcp: bool) -> Message {
    let q = query(name, qtype);
    ns.run(|| {
        let to = SocketAddr::new(server, 53);
        let bytes = if tcp {
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            c.set_read_timeout(Some(Duration::from_secs(3)))?;
            write_framed(&mut c, &q)?;
            read_framed(&mut c)?
        } else {
            let bind = if server.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let u = UdpSocket::bind(bind)?;
            u.set_read_timeout(Some(Duration::from_secs(3)))?;
            u.send_to(&q, to)?;
            let mut buf = [0u8; 4096];
            let n = u.recv(&mut buf)?;
            buf[..n].to_vec()
        };
        let answer = Message::from_vec(&bytes).unwrap();
        let asked = Message::from_vec(&q).unwrap();
        assert_eq!(
            answer.metadata.id, asked.metadata.id,
            "the answer carries another id"
        );
        Ok(answer)
    })
    .unwrap()
}

pub fn probe(ns: &Netns, dest: IpAddr, port: u16) -> bool {
    assert!(is_lab_address(dest));
    reachable(ns, Proto::Tcp, dest, port, WAIT).unwrap()
}

pub fn allow_domains(list: &'static str) -> SettingsRequest<'static> {
    SettingsRequest {
        domain_allow_list: Some(list),
        ..Default::default()
    }
}

/// A name of the catalog, taken from it.
pub fn catalog_name() -> String {
    sandgate_lab::catalog_name(&Catalog::builtin()).unwrap()
}
