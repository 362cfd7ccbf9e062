//! sandgate's dataplane: where a sandbox's egress policy is enforced.
//!
//! Each sandbox gets a *slot*: its own network namespace, a veth pair whose
//! host end (`sgh<index>`) is the key of all its enforcement state, a /31
//! and a /64 from the sandbox subnets, default routes via the host end.
//! Enforcement lives in the host's namespace, out of the sandbox's reach,
//! as one constant nftables ruleset ([`ruleset`]) whose per-slot state is
//! set and map elements ([`elements`]); creating, changing or deleting a
//! slot's policy is one netlink transaction.
//!
//! Fail closed: traffic from a slot interface with no policy is dropped, a
//! slot is handed out only after its policy is in the kernel, and on start
//! [`Dataplane::start`] reconciles the kernel with the state file, removing
//! what belongs to no slot and putting back the policy of every slot before
//! anything else happens.

pub mod config;
pub mod counters;
pub mod elements;
pub mod events;
pub mod fastpath;
pub mod flows;
pub mod probe;
pub mod ruleset;
pub mod state;
pub mod watchdog;

pub use config::{DataplaneConfig, FastPathMode, SlotAddrs, SANDBOX_IF, SLOT_IF_PREFIX};
pub use counters::{KernelCounters, Reading};
pub use elements::{now_ms, Generations, GrantNet, SlotPolicy, Transfer, TRANSFER_SET};
pub use events::{DenyEvent, EventCounters, Events};
pub use fastpath::{FastPathEnded, FastPathStats};
pub use flows::{Flows, KernelFlow};

use elements::{
    admission_key, change, forget_dynamic, release, revokes, rule_key, transfer_quota, whole,
};
use ruleset::ShareClass;
use sandgate_netns::{set_sysctl, Netns, Rtnl, TokenBucket};
use sandgate_nftables::{list_set, load_ruleset, NftSocket, Transaction, Verb};
use sandgate_policy::{EffectivePolicy, PolicyConfig, Reason};
use state::{Phase, SlotRecord, State, Store};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What [`Dataplane::start`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartReport {
    /// Active slots whose policy was put back.
    pub restored: Vec<u32>,
    /// Slots removed: half made, half deleted, or whose namespace or link
    /// was gone (a reboot), with their owners where they had one.
    pub removed: Vec<(u32, Option<String>)>,
    /// Namespaces and links that belonged to no slot, removed.
    pub strays: Vec<String>,
}

/// The dataplane of one host.
#[derive(Debug)]
pub struct Dataplane {
    cfg: DataplaneConfig,
    policy: PolicyConfig,
    host: Option<Netns>,
    rtnl: Rtnl,
    nft: NftSocket,
    state: State,
    store: Store,
    admissions: HashMap<u32, Admissions>,
    watchdog: Option<watchdog::Watchdog>,
    /// Slots cut off by [`Dataplane::cut`]: their next update rebuilds
    /// them whole.
    cut: std::collections::HashSet<u32>,
    /// When each recently deleted slot's index was given back (see
    /// [`REUSE_AFTER`]).
    released: HashMap<u32, Instant>,
    /// The share classes whose chains the kernel has: the configuration's
    /// tiers', and those of slots' policies narrowed by a sandbox's
    /// connection budgets (made as a policy needs one, removed when no
    /// slot uses it).
    classes: BTreeSet<ShareClass>,
    /// The fast path, when the configuration turns it on.
    fast: Option<fastpath::FastPathState>,
    /// Slots made by a create (none was in the warm pool) whose fast path
    /// program is still to be attached, by [`Dataplane::fill_pool_step`]:
    /// each attachment waits for an RCU grace period (about 10 ms), which
    /// a create does not wait for. Until then what the slot sends goes
    /// through netfilter, as without the fast path (and after a failed
    /// attachment, which is logged, until the slot's next update).
    fast_later: BTreeSet<u32>,
}

/// The error (inside an `io::Error`) of a slot asked for when every index
/// of the sandbox subnets is in use: the host is full, not broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoFreeSlot {
    /// The sandbox subnets, as configured.
    pub subnets: String,
    /// How many slots they hold.
    pub max: u32,
}

impl std::fmt::Display for NoFreeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no free network slot: the sandbox subnets ({}) hold {} sandboxes and all are in use",
            self.subnets, self.max
        )
    }
}

impl std::error::Error for NoFreeSlot {}

/// How long a new slot's links may take to come operationally up.
const LINK_UP_WAIT: Duration = Duration::from_secs(5);

/// How long a deleted slot's index rests before a new slot takes it,
/// unless no other is free: deny events its sandbox caused just before
/// the delete may still wait in the NFLOG socket, and they are attributed
/// to whoever holds the index when they are read.
pub const REUSE_AFTER: Duration = Duration::from_secs(5);

/// One slot's admissions: address -> the rules that admitted it, each with
/// its expiry. The rule `*` stands for admissions found in the kernel at
/// start, whose rules are not known.
type Admissions = BTreeMap<IpAddr, BTreeMap<String, Instant>>;

/// The rule key of admissions whose rule is not known.
const UNKNOWN_RULE: &str = "*";

/// Runs `f` in namespace `host`, or here for `None`.
pub(crate) fn in_ns<T: Send>(
    host: Option<&Netns>,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    match host {
        Some(ns) => ns.run(f),
        None => f(),
    }
}

fn other(what: String) -> io::Error {
    io::Error::other(what)
}

impl Dataplane {
    /// Starts the dataplane: sets up forwarding, reconciles the kernel with
    /// the state file (see [`StartReport`]), loads the ruleset with every
    /// known slot's policy, and prepares the warm pool.
    pub fn start(
        cfg: DataplaneConfig,
        policy: PolicyConfig,
    ) -> io::Result<(Dataplane, StartReport)> {
        let host = match &cfg.host_netns {
            Some(name) => Some(Netns::open(name)?),
            None => None,
        };
        let open = || -> io::Result<(Rtnl, NftSocket)> { Ok((Rtnl::open()?, NftSocket::open()?)) };
        let (rtnl, nft) = match &host {
            Some(ns) => ns.run(open)?,
            None => open()?,
        };
        let (store, state) = Store::open(&cfg.state_file)?;
        let mut dp = Dataplane {
            cfg,
            policy,
            host,
            rtnl,
            nft,
            state,
            store,
            admissions: HashMap::new(),
            watchdog: None,
            cut: Default::default(),
            released: HashMap::new(),
            classes: BTreeSet::new(),
            fast: None,
            fast_later: BTreeSet::new(),
        };
        let mode = dp.cfg.fast_path;
        if mode != FastPathMode::Off {
            match fastpath::FastPathState::start(dp.host.as_ref(), &dp.cfg) {
                Ok(fast) => dp.fast = Some(fast),
                Err(e) if mode == FastPathMode::Auto => {
                    tracing::warn!(error = %e, "the fast path cannot run on this host; netfilter forwards every packet");
                }
                Err(e) => return Err(e),
            }
        }
        let report = dp.reconcile()?;
        // Forwarding only once the ruleset is in place.
        dp.in_host(|| {
            set_sysctl("net/ipv4/ip_forward", "1")?;
            set_sysctl("net/ipv6/conf/all/forwarding", "1")
        })?;
        dp.fill_pool()?;
        dp.watchdog = Some(watchdog::Watchdog::start(
            dp.host.as_ref(),
            &dp.cfg.table,
            Duration::from_millis(200),
        )?);
        Ok((dp, report))
    }

    /// The kernel's form of `policy` for this dataplane, its share class's
    /// chains made if the kernel has none yet.
    fn slot_policy(&mut self, policy: &EffectivePolicy) -> io::Result<SlotPolicy> {
        let p = SlotPolicy::from_policy(policy, self.policy.ranges());
        if !self.classes.contains(&p.shares) {
            let text = ruleset::add_share_class(&self.cfg.table, &p.shares);
            self.in_host(|| load_ruleset(&text))?;
            self.classes.insert(p.shares);
        }
        Ok(p)
    }

    /// Removes the share classes that neither the configuration nor any
    /// slot's record uses any more (their chains are jumped to from no
    /// element). One that cannot be removed stays, and is tried again
    /// next time.
    fn prune_classes(&mut self) {
        let used = self.classes_in_use();
        let unused: Vec<ShareClass> = self.classes.difference(&used).copied().collect();
        for class in unused {
            let text = ruleset::remove_share_class(&self.cfg.table, &class);
            match self.in_host(|| load_ruleset(&text)) {
                Ok(()) => {
                    self.classes.remove(&class);
                }
                Err(e) => {
                    tracing::warn!(class = %class.chain(), error = %e, "a share class no slot uses stays for now")
                }
            }
        }
    }

    /// The configuration's share classes and those of the slots' records.
    fn classes_in_use(&self) -> BTreeSet<ShareClass> {
        self.state
            .slots
            .values()
            .filter_map(|r| r.policy.as_ref().map(|p| p.shares))
            .chain(self.cfg.share_classes.iter().copied())
            .collect()
    }

    /// Applies `tx` to the kernel, and repeats what it did to `valid` on
    /// the fast path. A transaction the kernel refused still takes the
    /// marks it would have removed off the fast path (never widening:
    /// netfilter decides for those flows, as it did before).
    fn commit(&mut self, tx: &Transaction) -> io::Result<()> {
        let result = self.nft.commit(tx);
        if let Some(fast) = &mut self.fast {
            fast.mirror(tx, result.is_ok());
        }
        result
    }

    /// Attaches the fast path's program to a slot's interface (nothing
    /// without a fast path).
    fn fast_attach(&mut self, slot: &SlotAddrs) -> io::Result<()> {
        match &mut self.fast {
            Some(fast) => fast.attach_slot(self.host.as_ref(), &slot.host_if),
            None => Ok(()),
        }
    }

    /// [`Dataplane::fast_attach`] where the program is not attached
    /// already (a pacer's removal; every update of an unpaced slot), and
    /// is not left for later ([`Dataplane::fast_later`]): no trip into
    /// the host namespace where it is there.
    fn fast_ensure(&mut self, slot: &SlotAddrs) -> io::Result<()> {
        if self.fast_later.contains(&slot.index) {
            return Ok(());
        }
        match &mut self.fast {
            Some(fast) => fast.ensure_slot(self.host.as_ref(), &slot.host_if),
            None => Ok(()),
        }
    }

    /// Detaches the fast path's program from a slot's interface (and
    /// leaves none to attach later).
    fn fast_detach(&mut self, slot: &SlotAddrs) {
        self.fast_later.remove(&slot.index);
        if let Some(fast) = &mut self.fast {
            fast.detach(&slot.host_if);
        }
    }

    /// Attaches the program of one slot whose attachment a create left
    /// for later, unless the slot is paced or gone since; whether there
    /// was one. A failure is logged (the slot's next update tries again),
    /// so that the slots after it and the pool's refill go on.
    fn fast_attach_later(&mut self) -> bool {
        let Some(index) = self.fast_later.pop_first() else {
            return false;
        };
        let unpaced = self.state.slots.get(&index).is_some_and(|r| {
            matches!(r.phase, Phase::Active | Phase::Pool) && r.pacing().is_none()
        });
        let slot = self.cfg.slot(index);
        if unpaced {
            if let Err(e) = self.fast_ensure(&slot) {
                tracing::warn!(slot = index, interface = %slot.host_if, error = %e, "attaching the fast path after a create; the slot's packets stay on netfilter's path until its next update");
            }
        }
        true
    }

    /// What the fast path did, when there is one.
    pub fn fast_path_stats(&self) -> Option<io::Result<FastPathStats>> {
        self.fast.as_ref().map(|f| f.stats())
    }

    /// The flow log's handle on what ended flows forwarded on the fast
    /// path, when there is one (for [`Flows::start`]).
    pub fn fast_path_ended(&self) -> Option<fastpath::FastPathEnded> {
        self.fast.as_ref().map(|f| f.ended())
    }

    /// How often the fast path's slot and uplink programs ran, and for
    /// how long, when there is one (counted only while
    /// [`sandgate_fastpath::count_runs`] is held: a benchmark's figure).
    pub fn fast_path_runs(&mut self) -> Option<io::Result<[sandgate_fastpath::Runs; 2]>> {
        self.fast.as_mut().map(|f| f.runs())
    }

    /// The marks the fast path lets through, when there is one.
    pub fn fast_path_marks(&self) -> Option<io::Result<Vec<u32>>> {
        self.fast.as_ref().map(|f| f.allowed())
    }

    /// Runs `f` in the host namespace (for child processes such as `nft`).
    fn in_host<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        in_ns(self.host.as_ref(), f)
    }

    /// The configuration.
    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    /// Records slot `index` as it now stands.
    fn persist(&mut self, index: u32) -> io::Result<()> {
        self.store.record(&self.state, index)
    }

    fn reconcile(&mut self) -> io::Result<StartReport> {
        let mut report = StartReport::default();
        let prefix = format!("{}-s", self.cfg.instance);
        let namespaces: BTreeSet<u32> = Netns::list(&prefix)?
            .iter()
            .filter_map(|n| self.cfg.index_of_netns(n))
            .collect();
        let links: BTreeSet<u32> = self
            .rtnl
            .links()?
            .into_iter()
            .filter_map(|l| l.name.strip_prefix(SLOT_IF_PREFIX)?.parse().ok())
            .collect();
        // Records whose objects are whole and whose phase is stable stay.
        let records: Vec<(u32, SlotRecord)> = self
            .state
            .slots
            .iter()
            .map(|(i, r)| (*i, r.clone()))
            .collect();
        for (index, record) in records {
            let whole = namespaces.contains(&index) && links.contains(&index);
            let stable = matches!(record.phase, Phase::Pool | Phase::Active);
            if !(whole && stable) {
                self.remove_objects(index)?;
                self.state.slots.remove(&index);
                report.removed.push((index, record.owner));
            }
        }
        for index in namespaces.union(&links) {
            if !self.state.slots.contains_key(index) {
                self.remove_objects(*index)?;
                report.strays.push(self.cfg.slot(*index).netns);
            }
        }
        // Admissions with time left survive the reload.
        let table = self.cfg.table.clone();
        let mut kept_admissions = Vec::new();
        for set in ["admit4", "admit6"] {
            let elems = self.in_host(|| list_set(&table, set))?.unwrap_or_default();
            for e in elems {
                let (Some(iface), Some(addr)) = (e.value[0].as_str(), e.value[1].as_str()) else {
                    continue;
                };
                let (Some(index), Ok(addr)) = (
                    iface
                        .strip_prefix(SLOT_IF_PREFIX)
                        .and_then(|i| i.parse::<u32>().ok()),
                    addr.parse::<IpAddr>(),
                ) else {
                    continue;
                };
                if let Some(ms) = e.expires_ms.filter(|ms| *ms > 0) {
                    kept_admissions.push((index, addr, Duration::from_millis(ms)));
                }
            }
        }
        // So do the counts of transfer quotas (a table of an older
        // version, or none, has none to keep).
        let counted = self.transfer_counted().unwrap_or_else(|e| {
            if e.raw_os_error() != Some(nix::libc::ENOENT) {
                tracing::warn!(error = %e, "the transfer quotas' counts could not be read; they start from nothing");
            }
            BTreeMap::new()
        });
        // Every class a record holds is loaded as it was: a record keeps
        // the limits it had until the server's restore applies the policy
        // anew.
        self.classes = self.classes_in_use();
        let classes: Vec<ShareClass> = self.classes.iter().copied().collect();
        let text = ruleset::ruleset(&self.cfg, self.policy.ranges(), &classes);
        self.in_host(|| load_ruleset(&text))?;
        // Fresh generations: every connection is checked again against the
        // rules as they are now (ranges or catalog may have changed).
        self.seed_generations();
        let active: Vec<u32> = self
            .state
            .slots
            .iter()
            .filter(|(_, r)| r.phase == Phase::Active && r.policy.is_some())
            .map(|(i, _)| *i)
            .collect();
        let mut tx = Transaction::new(&self.cfg.table);
        for index in active {
            let gens = Generations {
                net: self.state.next_gen(),
                dns: self.state.next_gen(),
            };
            let Some(record) = self.state.slots.get_mut(&index) else {
                continue;
            };
            record.gens = gens;
            if let Some(p) = &record.policy {
                whole(&mut tx, &self.cfg.slot(index), p, gens, Verb::Add);
                report.restored.push(index);
            }
            // A count is kept within its period only: a restart neither
            // starts a period early nor carries one past its end.
            if let Some(t) = record.policy.as_ref().and_then(|p| p.transfer) {
                let start = t.period_start(now_ms() / 1000);
                let consumed = match record.transfer_since == Some(start) {
                    true => counted.get(&index).copied().unwrap_or(0),
                    false => 0,
                };
                record.transfer_since = Some(start);
                transfer_quota(&mut tx, &self.cfg.slot(index), Some((t.bytes, consumed)));
            }
        }
        for (index, addr, left) in kept_admissions {
            let admits = self
                .state
                .slots
                .get(&index)
                .and_then(|r| r.policy.as_ref())
                .is_some_and(|p| p.admits());
            if admits {
                let (set, key) = admission_key(&self.cfg.slot(index), addr);
                tx.add_with_timeout(set, key, left);
                self.admissions
                    .entry(index)
                    .or_default()
                    .entry(addr)
                    .or_default()
                    .insert(UNKNOWN_RULE.to_string(), Instant::now() + left);
            }
        }
        self.commit(&tx)?;
        // The pacers as the records say, on every slot (kernel state that a
        // crash may have left half made or half changed).
        let paced: Vec<(u32, Option<u32>)> = self
            .state
            .slots
            .iter()
            .map(|(i, r)| (*i, r.pacing()))
            .collect();
        for (index, mbps) in paced {
            self.pace(&self.cfg.slot(index), None, mbps)?;
        }
        // Interfaces a watchdog set down come up again, now that the
        // ruleset and every policy are back.
        for index in self.state.slots.keys() {
            let name = self.cfg.slot(*index).host_if;
            if let Some(link) = self.rtnl.link_index(&name)? {
                self.rtnl.set_up(link)?;
            }
        }
        self.store.snapshot(&self.state)?;
        Ok(report)
    }

    /// Makes generations start above anything a lost state file may have
    /// handed out: a clock-based floor.
    fn seed_generations(&mut self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Seconds since the epoch, 128 generations a second, in 31 bits.
        let floor = u32::try_from((now << 7) & u64::from(!ruleset::DNS_MARK_BIT)).unwrap_or(1);
        if floor > self.state.last_gen {
            self.state.last_gen = floor;
        }
    }

    /// Forgets the connections of a slot's addresses (conntrack), so that
    /// the next sandbox in the slot inherits none of them.
    fn forget_connections(&self, slot: &SlotAddrs) -> io::Result<()> {
        let addrs = [IpAddr::V4(slot.sandbox4), IpAddr::V6(slot.sandbox6)];
        self.in_host(|| {
            for addr in addrs {
                let family = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
                // Exit status 1 means "none matched".
                let status = std::process::Command::new("conntrack")
                    .args(["-D", "-f", family, "-s", &addr.to_string()])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()?;
                if !matches!(status.code(), Some(0 | 1)) {
                    tracing::warn!(address = %addr, %status, "conntrack could not forget a slot's connections");
                }
            }
            Ok(())
        })
    }

    /// Removes a slot's link and namespace, whichever exist, and its
    /// connections.
    fn remove_objects(&mut self, index: u32) -> io::Result<()> {
        let slot = self.cfg.slot(index);
        self.forget_connections(&slot)?;
        if let Some(pacer) = self.rtnl.link_index(&pacer_name(&slot))? {
            self.rtnl.delete_link(pacer)?;
        }
        if let Some(link) = self.rtnl.link_index(&slot.host_if)? {
            match self.rtnl.delete_link(link) {
                Err(e) if e.raw_os_error() != Some(nix::libc::ENODEV) => return Err(e),
                _ => {}
            }
        }
        Netns::delete_name(&slot.netns)
    }

    /// Makes a slot (namespace, veth, addresses, routes) and records it in
    /// the pool. It has no policy yet: its traffic is dropped.
    ///
    /// The fast path's program is attached to it when `fast` (a slot for
    /// the pool); otherwise the caller attaches it, or leaves it for later.
    fn make_slot(&mut self, fast: bool) -> io::Result<u32> {
        self.released.retain(|_, at| at.elapsed() < REUSE_AFTER);
        let index = self
            .state
            .free_index(self.cfg.max_slots(), |i| self.released.contains_key(&i))
            .ok_or_else(|| {
                io::Error::other(NoFreeSlot {
                    subnets: format!("{}, {}", self.cfg.subnet4, self.cfg.subnet6),
                    max: self.cfg.max_slots(),
                })
            })?;
        self.state.slots.insert(
            index,
            SlotRecord {
                phase: Phase::Creating,
                owner: None,
                policy: None,
                gens: Generations::default(),
                transfer_since: None,
            },
        );
        // Every record change below is undone in memory when it cannot be
        // recorded (a full disk), so that no index is held by a record
        // the journal does not have.
        if let Err(e) = self.persist(index) {
            self.state.slots.remove(&index);
            return Err(e);
        }
        let slot = self.cfg.slot(index);
        let made = self.wire_slot(&slot).and_then(|()| {
            if fast {
                self.fast_attach(&slot)
            } else {
                Ok(())
            }
        });
        if let Err(e) = made {
            if let Err(undo) = self.remove_objects(index) {
                tracing::warn!(slot = index, error = %undo, "removing a half-made slot; the next start removes what is left");
            }
            self.state.slots.remove(&index);
            // (Unrecorded, the journal's `Creating` is removed whole at the
            // next start.)
            if let Err(undo) = self.persist(index) {
                tracing::warn!(slot = index, error = %undo, "recording a half-made slot's removal");
            }
            return Err(e);
        }
        if let Some(r) = self.state.slots.get_mut(&index) {
            r.phase = Phase::Pool;
        }
        self.persist(index)?;
        Ok(index)
    }

    fn wire_slot(&mut self, slot: &SlotAddrs) -> io::Result<()> {
        let ns = Netns::create(&slot.netns)?;
        self.rtnl
            .add_veth(&slot.host_if, SANDBOX_IF, Some(ns.fd()))?;
        let host_if = self
            .rtnl
            .link_index(&slot.host_if)?
            .ok_or_else(|| other(format!("{} vanished", slot.host_if)))?;
        self.rtnl.add_address(host_if, slot.gateway4_net())?;
        self.rtnl.add_address(host_if, slot.gateway6_net())?;
        self.rtnl.set_up(host_if)?;
        let host_mac = self
            .rtnl
            .link(&slot.host_if)?
            .map(|l| l.mac)
            .ok_or_else(|| other(format!("{} vanished", slot.host_if)))?;
        let (gw4, gw6) = (slot.gateway4, slot.gateway6);
        let (a4, a6) = (slot.sandbox4_net(), slot.sandbox6_net());
        let sandbox_mac = ns.run(|| {
            // Static addressing: no router advertisements are taken. The
            // sandbox's end was made with the namespace's defaults of the
            // time (`accept_ra = 1`), so it is set itself, not only the
            // defaults for interfaces made later.
            for iface in ["all", "default", SANDBOX_IF] {
                set_sysctl(&format!("net/ipv6/conf/{iface}/accept_ra"), "0")?;
            }
            let mut rt = Rtnl::open()?;
            let lo = rt.link_index("lo")?.ok_or_else(|| other("no lo".into()))?;
            rt.set_up(lo)?;
            let eth = rt
                .link_index(SANDBOX_IF)?
                .ok_or_else(|| other(format!("no {SANDBOX_IF} in the slot")))?;
            rt.add_address(eth, a4)?;
            rt.add_address(eth, a6)?;
            rt.set_up(eth)?;
            // The gateway's hardware address is known: no neighbour
            // discovery delays the first packet.
            rt.add_neighbour(eth, IpAddr::V4(gw4), &host_mac)?;
            rt.add_neighbour(eth, IpAddr::V6(gw6), &host_mac)?;
            rt.add_route(
                "0.0.0.0/0".parse().map_err(|_| other("route".into()))?,
                Some(IpAddr::V4(gw4)),
                eth,
            )?;
            rt.add_route(
                "::/0".parse().map_err(|_| other("route".into()))?,
                Some(IpAddr::V6(gw6)),
                eth,
            )?;
            rt.wait_oper_up(SANDBOX_IF, LINK_UP_WAIT)?;
            Ok(rt.link(SANDBOX_IF)?.map(|l| l.mac).unwrap_or_default())
        })?;
        self.rtnl
            .add_neighbour(host_if, IpAddr::V4(slot.sandbox4), &sandbox_mac)?;
        self.rtnl
            .add_neighbour(host_if, IpAddr::V6(slot.sandbox6), &sandbox_mac)?;
        // Until the kernel's link watcher has attached the veth's queues
        // (asynchronously, once both ends are up), what either end sends
        // is dropped: a sandbox's first DNS answer or SYN-ACK could be
        // lost. A slot is ready only when both ends are operationally up.
        self.rtnl.wait_oper_up(&slot.host_if, LINK_UP_WAIT)?;
        Ok(())
    }

    /// Does one piece of the work a create leaves for later: attaches the
    /// fast path's program to one slot made by a create (none was in the
    /// warm pool), or else prepares one slot if the warm pool holds fewer
    /// than `warm_pool`; whether there was any. A caller that shares the
    /// dataplane calls it after each create until it says no, one step
    /// per hold of its lock.
    pub fn fill_pool_step(&mut self) -> io::Result<bool> {
        if self.fast_attach_later() {
            return Ok(true);
        }
        if self.pool_size() >= self.cfg.warm_pool {
            return Ok(false);
        }
        self.make_slot(true)?;
        Ok(true)
    }

    /// Attaches the fast path's program to every slot whose attachment a
    /// create left for later (what [`Dataplane::fill_pool_step`] does one
    /// at a time, first); how many there were.
    pub fn attach_later(&mut self) -> usize {
        let mut attached = 0;
        while self.fast_attach_later() {
            attached += 1;
        }
        attached
    }

    /// Prepares slots until the warm pool holds `warm_pool` of them.
    pub fn fill_pool(&mut self) -> io::Result<usize> {
        let mut made = 0;
        while self.pool_size() < self.cfg.warm_pool {
            self.make_slot(true)?;
            made += 1;
        }
        Ok(made)
    }

    /// The number of prepared slots.
    pub fn pool_size(&self) -> usize {
        self.state
            .slots
            .values()
            .filter(|r| r.phase == Phase::Pool)
            .count()
    }

    /// Hands a slot to sandbox `owner` with `policy` in force. The policy
    /// is in the kernel before this returns; a failure leaves no slot in use.
    pub fn create(&mut self, owner: &str, policy: &EffectivePolicy) -> io::Result<SlotAddrs> {
        let pooled = self
            .state
            .slots
            .iter()
            .find(|(_, r)| r.phase == Phase::Pool)
            .map(|(i, _)| *i);
        let index = match pooled {
            Some(i) => i,
            // Its fast path program is attached by the next
            // `fill_pool_step`, off the create's path.
            None => {
                let index = self.make_slot(false)?;
                if self.fast.is_some() {
                    self.fast_later.insert(index);
                }
                index
            }
        };
        let slot_policy = self.slot_policy(policy)?;
        let gens = Generations {
            net: self.state.next_gen(),
            dns: self.state.next_gen(),
        };
        let record = SlotRecord {
            phase: Phase::Active,
            owner: Some(owner.to_string()),
            policy: Some(slot_policy.clone()),
            gens,
            transfer_since: slot_policy
                .transfer
                .map(|t| t.period_start(now_ms() / 1000)),
        };
        let pooled_record = self.state.slots.insert(index, record);
        if let Err(e) = self.persist(index) {
            if let Some(r) = pooled_record {
                self.state.slots.insert(index, r);
            }
            return Err(e);
        }
        let slot = self.cfg.slot(index);
        let mut tx = Transaction::new(&self.cfg.table);
        whole(&mut tx, &slot, &slot_policy, gens, Verb::Add);
        if let Some(t) = slot_policy.transfer {
            transfer_quota(&mut tx, &slot, Some((t.bytes, 0)));
        }
        // Paced before its first packet can pass (a pacer a crash left on
        // the slot goes when it has no budget).
        let committed = self.pace(&slot, None, slot_policy.egress_mbps).and_then(|()| {
            self.commit(&tx).inspect_err(|_| {
                if let Err(e) = self.pace(&slot, slot_policy.egress_mbps, None) {
                    tracing::warn!(slot = index, error = %e, "a pacer stays on a slot back in the pool until its next use");
                }
            })
        });
        if let Err(e) = committed {
            if let Some(r) = self.state.slots.get_mut(&index) {
                *r = SlotRecord {
                    phase: Phase::Pool,
                    owner: None,
                    policy: None,
                    gens: Generations::default(),
                    transfer_since: None,
                };
            }
            // (Unrecorded, the journal's owner is unknown to the server at
            // the next start, which removes the slot.)
            if let Err(undo) = self.persist(index) {
                tracing::warn!(slot = index, error = %undo, "recording a slot handed back to the pool");
            }
            self.prune_classes();
            return Err(e);
        }
        Ok(slot)
    }

    fn active(&self, index: u32) -> io::Result<(SlotPolicy, Generations)> {
        match self.state.slots.get(&index) {
            Some(SlotRecord {
                phase: Phase::Active,
                policy: Some(p),
                gens,
                ..
            }) => Ok((p.clone(), *gens)),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("slot {index} is not in use"),
            )),
        }
    }

    /// Applies a new policy to a slot. Connections the new policy denies
    /// stop at their next packet; those it allows run on; admissions made
    /// for rules the new policy no longer has are withdrawn.
    pub fn update(&mut self, index: u32, policy: &EffectivePolicy) -> io::Result<()> {
        let (old, old_gens) = self.active(index)?;
        let new = self.slot_policy(policy)?;
        let (net, dns) = revokes(&old, &new);
        let gens = Generations {
            net: if net {
                self.state.next_gen()
            } else {
                old_gens.net
            },
            dns: if dns {
                self.state.next_gen()
            } else {
                old_gens.dns
            },
        };
        let quarantine = Generations {
            net: if net { 0 } else { old_gens.net },
            dns: if dns { 0 } else { old_gens.dns },
        };
        let slot = self.cfg.slot(index);
        let withdrawn = self.withdrawable(index, &new, elements::denies_new_names(&old, &new));
        let mut first = Transaction::new(&self.cfg.table);
        change(&mut first, &slot, (&old, old_gens), (&new, quarantine));
        for addr in &withdrawn {
            let (set, key) = admission_key(&slot, *addr);
            first.destroy(set, key);
        }
        let previous = self.state.slots.get(&index).cloned();
        if let Some(r) = self.state.slots.get_mut(&index) {
            r.policy = Some(new.clone());
            r.gens = gens;
        }
        if let Err(e) = self.persist(index) {
            // Nothing reached the kernel: the record goes back to match it.
            if let Some(prev) = previous {
                self.state.slots.insert(index, prev);
            }
            return Err(e);
        }
        // A slot that was cut off is not as recorded: straight to the
        // rebuild.
        let was_cut = self.cut.remove(&index);
        let applied = if was_cut {
            Err(io::Error::other(format!("slot {index} was cut off")))
        } else {
            self.commit(&first)
        };
        if let Err(e) = applied {
            // The kernel is not as recorded: rebuild the slot whole.
            let mut rebuild = Transaction::new(&self.cfg.table);
            whole(&mut rebuild, &slot, &old, old_gens, Verb::Destroy);
            for addr in &withdrawn {
                let (set, key) = admission_key(&slot, *addr);
                rebuild.destroy(set, key);
            }
            whole(&mut rebuild, &slot, &new, quarantine, Verb::Add);
            if self.commit(&rebuild).is_err() {
                // Cut the slot off rather than leave it as it was: neither
                // policy's elements stay.
                let mut cut = Transaction::new(&self.cfg.table);
                whole(&mut cut, &slot, &old, old_gens, Verb::Destroy);
                whole(&mut cut, &slot, &new, quarantine, Verb::Destroy);
                if let Err(e) = self.commit(&cut) {
                    // Its interface stays known to the ruleset only through
                    // the elements left, which the next update or a restart
                    // replaces; say so loudly.
                    tracing::error!(slot = index, error = %e, "a slot whose new policy failed could not be cut off either");
                }
                self.cut.insert(index);
                if let Some(prev) = previous {
                    self.state.slots.insert(index, prev);
                }
                self.persist(index)?;
                return Err(e);
            }
        }
        if let Some(slot_admissions) = self.admissions.get_mut(&index) {
            for addr in &withdrawn {
                slot_admissions.remove(addr);
            }
        }
        if quarantine != gens {
            let mut second = Transaction::new(&self.cfg.table);
            release(&mut second, &slot, &new, quarantine, gens);
            self.commit(&second)?;
        }
        if old.shares != new.shares {
            self.prune_classes();
        }
        if old.transfer != new.transfer {
            self.requota(index, old.transfer, new.transfer)?;
        }
        // A new budget: the caller puts the old policy back should the
        // pacer refuse it (which paces it as before).
        if old.egress_mbps == new.egress_mbps {
            // An unpaced slot whose program is missing (its attachment
            // failed) gets it now; failing again, the slot stays on
            // netfilter's path, as it was, and the update stands.
            if new.egress_mbps.is_none() {
                if let Err(e) = self.fast_ensure(&slot) {
                    tracing::warn!(slot = index, interface = %slot.host_if, error = %e, "attaching the fast path; the slot's packets stay on netfilter's path");
                }
            }
            return Ok(());
        }
        self.pace(&slot, old.egress_mbps, new.egress_mbps)
    }

    /// Puts slot `index`'s new transfer quota in the kernel in place of
    /// `old`: what the period counted so far is kept (a quota lowered
    /// under it is reached at once), and a new period length starts
    /// counting in its own current period.
    fn requota(
        &mut self,
        index: u32,
        old: Option<Transfer>,
        new: Option<Transfer>,
    ) -> io::Result<()> {
        let slot = self.cfg.slot(index);
        let now_s = now_ms() / 1000;
        let since = self.state.slots.get(&index).and_then(|r| r.transfer_since);
        let consumed = match old {
            Some(o) if since == Some(o.period_start(now_s)) => {
                self.transfer_counted()?.remove(&index).unwrap_or(0)
            }
            _ => 0,
        };
        let mut tx = Transaction::new(&self.cfg.table);
        transfer_quota(&mut tx, &slot, new.map(|t| (t.bytes, consumed)));
        self.commit(&tx)?;
        if let Some(r) = self.state.slots.get_mut(&index) {
            r.transfer_since = new.map(|t| t.period_start(now_s));
        }
        self.persist(index)
    }

    /// What the kernel has counted of each slot's transfer quota this
    /// period, bytes.
    fn transfer_counted(&mut self) -> io::Result<BTreeMap<u32, u64>> {
        let table = self.cfg.table.clone();
        Ok(self
            .nft
            .set_quotas(&table, TRANSFER_SET)?
            .into_iter()
            .filter_map(|(key, q)| Some((counters::slot_of(&key)?, q.consumed)))
            .collect())
    }

    /// Slot `index`'s transfer quota, when its policy has one: the quota,
    /// the start of its period (seconds since the epoch), and what the
    /// kernel has counted this period, read now.
    pub fn transfer_count(&mut self, index: u32) -> io::Result<Option<(Transfer, u64, u64)>> {
        let (policy, _) = self.active(index)?;
        let Some(t) = policy.transfer else {
            return Ok(None);
        };
        let since = self
            .state
            .slots
            .get(&index)
            .and_then(|r| r.transfer_since)
            .unwrap_or_else(|| t.period_start(now_ms() / 1000));
        let consumed = self.transfer_counted()?.remove(&index).unwrap_or(0);
        Ok(Some((t, since, consumed)))
    }

    /// Starts a new period for every slot whose transfer quota's period
    /// ended by `now_s` (seconds since the epoch): its count starts from
    /// nothing. Returns the slots renewed. The runner calls it ten times
    /// a second (an in-memory look when no period ended); a slot cut off
    /// is left as it is.
    pub fn renew_transfer(&mut self, now_s: u64) -> io::Result<Vec<u32>> {
        let due: Vec<(u32, Transfer)> = self
            .state
            .slots
            .iter()
            .filter(|(i, r)| r.phase == Phase::Active && !self.cut.contains(i))
            .filter_map(|(i, r)| {
                let t = r.policy.as_ref()?.transfer?;
                (r.transfer_since != Some(t.period_start(now_s))).then_some((*i, t))
            })
            .collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = Transaction::new(&self.cfg.table);
        for (index, t) in &due {
            transfer_quota(&mut tx, &self.cfg.slot(*index), Some((t.bytes, 0)));
        }
        self.commit(&tx)?;
        for (index, t) in &due {
            if let Some(r) = self.state.slots.get_mut(index) {
                r.transfer_since = Some(t.period_start(now_s));
            }
            self.persist(*index)?;
        }
        Ok(due.into_iter().map(|(i, _)| i).collect())
    }

    /// Paces what `slot` sends to `new` Mbit/s (`None`: no budget), from
    /// `old`, what the kernel has now (`None`: not known, or no pacer): an
    /// `ifb` device of its own, `sgh<index>p`, and a token bucket (see
    /// [`sandgate_netns::Rtnl::shape_received`]). Nothing to do when a
    /// known budget did not change.
    fn pace(&mut self, slot: &SlotAddrs, old: Option<u32>, new: Option<u32>) -> io::Result<()> {
        if old.is_some() && old == new {
            return Ok(());
        }
        let pacer = pacer_name(slot);
        let link = self
            .rtnl
            .link_index(&slot.host_if)?
            .ok_or_else(|| other(format!("no link {}", slot.host_if)))?;
        // A redirect by the fast path would walk around the pacer's
        // filter: a paced slot has none.
        match new {
            Some(mbit) => {
                self.fast_detach(slot);
                self.rtnl
                    .shape_received(link, &pacer, TokenBucket::of_mbit(mbit))
            }
            None if old.is_some() || self.rtnl.link_index(&pacer)?.is_some() => {
                self.rtnl.unshape_received(link, &pacer)?;
                self.fast_ensure(slot)
            }
            None => self.fast_ensure(slot),
        }
    }

    /// Whether slot `index` is cut off (see [`Dataplane::cut`]) until its
    /// next update.
    pub fn is_cut(&self, index: u32) -> bool {
        self.cut.contains(&index)
    }

    /// Cuts slot `index` off: every element of its policy leaves the
    /// kernel (its interface's entry among the known slots, its sources,
    /// its connections' generations), so every packet from or to it,
    /// established connections included, is dropped until its next update
    /// rebuilds it whole (or a restart). One kernel transaction and nothing
    /// written to the state file: what to do when a change could not be
    /// applied and nothing else can be trusted.
    pub fn cut(&mut self, index: u32) -> io::Result<()> {
        let (policy, gens) = self.active(index)?;
        let slot = self.cfg.slot(index);
        let mut cut = Transaction::new(&self.cfg.table);
        whole(&mut cut, &slot, &policy, gens, Verb::Destroy);
        self.commit(&cut)?;
        self.cut.insert(index);
        Ok(())
    }

    /// The addresses of slot `index` whose every admitting rule is gone
    /// from `new` (all of them when `new` takes no admissions, or `all`).
    /// Expired admissions are forgotten on the way.
    fn withdrawable(&mut self, index: u32, new: &SlotPolicy, all: bool) -> Vec<IpAddr> {
        let now = Instant::now();
        let Some(slot_admissions) = self.admissions.get_mut(&index) else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        slot_admissions.retain(|addr, rules| {
            rules.retain(|_, expiry| *expiry > now);
            if rules.is_empty() {
                return false;
            }
            let kept = new.admits()
                && !all
                && !rules.contains_key(UNKNOWN_RULE)
                && rules.keys().any(|r| new.rules.contains(r));
            if !kept {
                gone.push(*addr);
            }
            true
        });
        gone
    }

    /// Lets slot `index` connect to `addr` for `lifetime`, because a DNS
    /// answer for a name allowed by `rule` (an essential service or a
    /// `domainAllowList` entry of the slot's policy) gave it. Refused for
    /// slots that take no admissions (`open`, `blocked`), for a rule the
    /// slot's policy does not have, and for addresses that no admission may
    /// open (always denied, private).
    ///
    /// A slot holds at most its policy's `admitted_max` addresses: beyond,
    /// the admission that would end first makes room (withdrawn in the
    /// same transaction), and is returned.
    pub fn admit(
        &mut self,
        index: u32,
        addr: IpAddr,
        rule: &Reason,
        lifetime: Duration,
    ) -> io::Result<Option<IpAddr>> {
        let denied = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
        let (p, _) = self.active(index)?;
        if !p.admits() {
            return Err(denied(format!(
                "slot {index} is in {} mode, which takes no admissions",
                p.mode
            )));
        }
        let key = rule_key(rule)
            .filter(|k| p.rules.contains(k))
            .ok_or_else(|| denied(format!("slot {index}'s policy has no rule {}", rule.code())))?;
        let ranges = self.policy.ranges();
        if let Some(r) = ranges.always_denied(addr).or_else(|| ranges.private(addr)) {
            return Err(denied(format!(
                "{addr} is in {} ({}), which no DNS answer may open",
                r.net, r.label
            )));
        }
        let slot = self.cfg.slot(index);
        let (set, element) = admission_key(&slot, addr);
        let lifetime = lifetime.max(Duration::from_millis(1));
        let mut tx = Transaction::new(&self.cfg.table);
        // Destroy-then-add renews the lifetime of an admission still there.
        tx.destroy(set, element.clone())
            .add_with_timeout(set, element, lifetime);
        let now = Instant::now();
        let slot_admissions = self.admissions.entry(index).or_default();
        slot_admissions.retain(|_, rules| {
            rules.retain(|_, expiry| *expiry > now);
            !rules.is_empty()
        });
        let max = usize::try_from(p.admitted_max.max(1)).unwrap_or(usize::MAX);
        let evicted = if !slot_admissions.contains_key(&addr) && slot_admissions.len() >= max {
            slot_admissions
                .iter()
                .filter_map(|(a, rules)| rules.values().max().map(|end| (*end, *a)))
                .min()
                .map(|(_, a)| a)
        } else {
            None
        };
        if let Some(old) = evicted {
            let (set, key) = admission_key(&slot, old);
            tx.destroy(set, key);
        }
        self.commit(&tx)?;
        let slot_admissions = self.admissions.entry(index).or_default();
        if let Some(old) = evicted {
            slot_admissions.remove(&old);
        }
        slot_admissions
            .entry(addr)
            .or_default()
            .insert(key, now + lifetime);
        Ok(evicted)
    }

    /// The addresses slot `index` holds admitted now.
    pub fn admitted(&self, index: u32) -> usize {
        let now = Instant::now();
        self.admissions.get(&index).map_or(0, |a| {
            a.values()
                .filter(|rules| rules.values().any(|end| *end > now))
                .count()
        })
    }

    /// Removes a slot and everything it made: its elements, admissions,
    /// link and namespace.
    pub fn delete(&mut self, index: u32) -> io::Result<()> {
        let record =
            self.state.slots.get_mut(&index).ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("no slot {index}"))
            })?;
        let policy = record.policy.clone();
        let gens = record.gens;
        let phase = std::mem::replace(&mut record.phase, Phase::Deleting);
        if let Err(e) = self.persist(index) {
            if let Some(r) = self.state.slots.get_mut(&index) {
                r.phase = phase;
            }
            return Err(e);
        }
        let slot = self.cfg.slot(index);
        let mut tx = Transaction::new(&self.cfg.table);
        if let Some(p) = &policy {
            whole(&mut tx, &slot, p, gens, Verb::Destroy);
        }
        for addr in self
            .admissions
            .remove(&index)
            .unwrap_or_default()
            .into_keys()
        {
            let (set, key) = admission_key(&slot, addr);
            tx.destroy(set, key);
        }
        // The slot's counts are in its own class (an update that moved it
        // forgot those of the one before) or, from before a restart, in
        // one of the configuration's.
        let mut classes = self.cfg.share_classes.clone();
        if let Some(p) = policy.as_ref().filter(|p| !classes.contains(&p.shares)) {
            classes.push(p.shares);
        }
        forget_dynamic(&mut tx, &slot, &classes);
        transfer_quota(&mut tx, &slot, None);
        self.commit(&tx)?;
        self.fast_detach(&slot);
        self.remove_objects(index)?;
        self.state.slots.remove(&index);
        self.prune_classes();
        self.released.insert(index, Instant::now());
        // The slot is gone; a journal that cannot say so keeps `Deleting`,
        // which the next start finds nothing of and drops.
        if let Err(e) = self.persist(index) {
            tracing::warn!(slot = index, error = %e, "recording a removed slot; the next start drops it");
        }
        Ok(())
    }

    /// The slots in use: index, owner.
    pub fn active_slots(&self) -> Vec<(u32, String)> {
        self.state
            .slots
            .iter()
            .filter(|(_, r)| r.phase == Phase::Active)
            .map(|(i, r)| (*i, r.owner.clone().unwrap_or_default()))
            .collect()
    }

    /// Whether the ruleset went missing since the start (every slot was
    /// then cut off; a restart restores them).
    pub fn watchdog_tripped(&self) -> bool {
        self.watchdog.as_ref().is_some_and(|w| w.tripped())
    }

    /// The addresses and names of slot `index`.
    pub fn slot(&self, index: u32) -> SlotAddrs {
        self.cfg.slot(index)
    }
}

/// The `ifb` device that paces what `slot` sends: its host interface's
/// name and `p` (within the slot prefix, so that the lab's isolation
/// check and the watchdog see it as the slot's).
fn pacer_name(slot: &SlotAddrs) -> String {
    format!("{}p", slot.host_if)
}
