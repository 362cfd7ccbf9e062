//! sandgate's TC-BPF fast path.
//!
//! Established TCP and UDP flows that netfilter allowed are forwarded,
//! and translated as connection tracking translated them, by a BPF
//! program on TC ingress (`tcx`), without entering netfilter again. The
//! program (`bpf/fastpath.c`, built by clang) says in its header when a
//! packet takes the fast path; anything else goes on to netfilter, which
//! decides as it always did.
//!
//! Two handles share the program's maps:
//! - [`FastPath`] attaches the program to interfaces and holds `valid`,
//!   the marks (generations) whose flows may take the fast path: a mirror
//!   of nftables' `valid` map without metered slots' marks, kept by the
//!   dataplane as it commits;
//! - [`FlowTable`] holds `flows`, each flow's two entries (from the slot,
//!   to it), filled and emptied from connection tracking's events.
//!
//! Nothing is pinned: when the process ends, its links and maps go with
//! it and every packet goes through netfilter again.

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use aya::programs::{tc::TcAttachType, ProgramError, SchedClassifier};
use aya::{Ebpf, EbpfError};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

/// The program, as clang built it.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastpath.o"));

/// The size of `struct flow_key` and `struct flow_value`.
const KEY: usize = 44;
const VALUE: usize = 88;

type Key = [u8; KEY];
type Value = [u8; VALUE];

/// What went wrong, and where.
#[derive(Debug)]
pub enum Error {
    /// The kernel refused the program or its maps (no BPF, no rights).
    Load(EbpfError),
    /// A program could not be loaded or attached to an interface.
    Program(String, ProgramError),
    /// A map could not be read or written.
    Map(&'static str, MapError),
    /// The object lacks a part this crate expects (a build fault).
    Missing(&'static str),
    /// The kernel's count of programs' runs could not be turned on.
    Stats(aya::sys::SyscallError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Load(e) => write!(f, "loading the fast path's BPF program: {e}"),
            Error::Program(what, e) => write!(f, "fast path program ({what}): {e}"),
            Error::Map(name, e) => write!(f, "fast path map {name}: {e}"),
            Error::Missing(what) => write!(f, "the fast path's BPF object has no {what}"),
            Error::Stats(e) => write!(f, "counting BPF programs' runs: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::other(e)
    }
}

/// Which side of the host an interface is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// A slot's host-side interface: packets from a sandbox.
    Slot,
    /// Any other interface: replies to a sandbox.
    Uplink,
}

impl Side {
    fn program(self) -> &'static str {
        match self {
            Side::Slot => "slot",
            Side::Uplink => "uplink",
        }
    }
}

/// How often a program ran, and the time it took in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Runs {
    /// Runs (one a packet).
    pub count: u64,
    /// Time inside the program.
    pub time: std::time::Duration,
}

impl Runs {
    /// The time of a run, on average, since `earlier` (nanoseconds).
    pub fn nanos_since(&self, earlier: Runs) -> Option<f64> {
        let count = self.count.checked_sub(earlier.count)?;
        let time = self.time.checked_sub(earlier.time)?;
        (count > 0).then(|| time.as_nanos() as f64 / count as f64)
    }
}

/// Turns on the kernel's count of every BPF program's runs and run time,
/// for as long as the returned descriptor is open. Each run of every
/// program of the host then costs two clock reads more: a benchmark's
/// tool, never a server's.
pub fn count_runs() -> Result<std::os::fd::OwnedFd, Error> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(Error::Stats)
}

/// The loaded program, its attachments, and the `valid` map.
pub struct FastPath {
    ebpf: Ebpf,
    valid: BpfHashMap<MapData, u32, u8>,
    /// By interface name: the side, the interface's index when attached
    /// (a name given to a new interface is a new attachment), the link.
    links: HashMap<String, (Side, u32, aya::programs::tc::SchedClassifierLinkId)>,
}

impl fmt::Debug for FastPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastPath")
            .field("attached", &self.links.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A flow as connection tracking translated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    /// The slot's host-side interface.
    pub slot_ifindex: u32,
    /// The sandbox's address and port.
    pub source: (IpAddr, u16),
    /// Where the flow goes.
    pub destination: (IpAddr, u16),
    /// The address and port replies come to (the translated source).
    pub translated: (IpAddr, u16),
    /// The connection's mark.
    pub mark: u32,
}

/// Packets and bytes a flow's entries forwarded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// From the slot: packets, bytes.
    pub out: (u64, u64),
    /// To the slot: packets, bytes.
    pub back: (u64, u64),
}

fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

fn family(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        4
    } else {
        6
    }
}

fn key(protocol: u8, src: (IpAddr, u16), dst: (IpAddr, u16), ifindex: u32) -> Key {
    let mut k = [0u8; KEY];
    k[0..16].copy_from_slice(&addr16(src.0));
    k[16..32].copy_from_slice(&addr16(dst.0));
    k[32..34].copy_from_slice(&src.1.to_be_bytes());
    k[34..36].copy_from_slice(&dst.1.to_be_bytes());
    k[36..40].copy_from_slice(&ifindex.to_ne_bytes());
    k[40] = protocol;
    k[41] = family(src.0);
    k
}

fn value(to: (IpAddr, u16), mark: u32, ifindex: u32) -> Value {
    let mut v = [0u8; VALUE];
    v[0..16].copy_from_slice(&addr16(to.0));
    v[16..18].copy_from_slice(&to.1.to_be_bytes());
    v[20..24].copy_from_slice(&mark.to_ne_bytes());
    v[24..28].copy_from_slice(&ifindex.to_ne_bytes());
    v
}

/// Whether a map's answer says the key is not there (a lookup says so
/// in its own words, a removal by the system call's `ENOENT`).
fn absent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(2),
        _ => false,
    }
}

/// Succeeds where the key was not there.
fn unless_absent(r: Result<(), MapError>, name: &'static str) -> Result<(), Error> {
    match r {
        Err(e) if !absent(&e) => Err(Error::Map(name, e)),
        _ => Ok(()),
    }
}

fn u64_at(v: &Value, at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[at..at + 8]);
    u64::from_ne_bytes(b)
}

fn counts_of(v: &Value) -> (u64, u64) {
    (u64_at(v, 32), u64_at(v, 40))
}

impl Flow {
    /// The entry of packets from the slot.
    fn out(&self) -> (Key, Value) {
        (
            key(
                self.protocol,
                self.source,
                self.destination,
                self.slot_ifindex,
            ),
            value(self.translated, self.mark, 0),
        )
    }

    /// The entry of replies to the slot.
    fn back(&self) -> (Key, Value) {
        (
            key(self.protocol, self.destination, self.translated, 0),
            value(self.source, self.mark, self.slot_ifindex),
        )
    }

    /// Whether the fast path can carry it: TCP or UDP, one family
    /// throughout, the ports kept by the destination (no redirect).
    pub fn is_eligible(&self) -> bool {
        matches!(self.protocol, 6 | 17)
            && family(self.source.0) == family(self.destination.0)
            && family(self.source.0) == family(self.translated.0)
            && self.mark != 0
    }
}

/// The program of `side`, as a TC classifier.
fn classifier(ebpf: &mut Ebpf, side: Side) -> Result<&mut SchedClassifier, Error> {
    let name = side.program();
    ebpf.program_mut(name)
        .ok_or(Error::Missing("program"))?
        .try_into()
        .map_err(|e| Error::Program(name.to_string(), e))
}

impl FastPath {
    /// Loads the program and its maps into the kernel (needs
    /// `CAP_BPF` and `CAP_NET_ADMIN`); nothing is attached yet.
    pub fn load() -> Result<(FastPath, FlowTable), Error> {
        let mut ebpf = Ebpf::load(PROGRAM).map_err(Error::Load)?;
        for side in [Side::Slot, Side::Uplink] {
            classifier(&mut ebpf, side)?
                .load()
                .map_err(|e| Error::Program(side.program().to_string(), e))?;
        }
        let map =
            |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(Error::Missing("map"));
        let valid =
            BpfHashMap::try_from(map(&mut ebpf, "valid")?).map_err(|e| Error::Map("valid", e))?;
        let flows =
            BpfHashMap::try_from(map(&mut ebpf, "flows")?).map_err(|e| Error::Map("flows", e))?;
        Ok((
            FastPath {
                ebpf,
                valid,
                links: HashMap::new(),
            },
            FlowTable {
                flows,
                entries: HashMap::new(),
                carried: HashMap::new(),
                gone: Counts::default(),
            },
        ))
    }

    /// How often the program of `side` ran and the time it took in all,
    /// counted while a [`count_runs`] handle is held (the kernel counts
    /// nothing otherwise).
    pub fn runs(&mut self, side: Side) -> Result<Runs, Error> {
        let info = classifier(&mut self.ebpf, side)?
            .info()
            .map_err(|e| Error::Program(side.program().to_string(), e))?;
        Ok(Runs {
            count: info.run_count(),
            time: info.run_time(),
        })
    }

    /// Attaches the program of `side` to interface `name`'s TC ingress,
    /// ahead of any other program or filter there. Interface names are
    /// the caller's network namespace's: call it there.
    pub fn attach(&mut self, name: &str, side: Side) -> Result<(), Error> {
        let index = nix::net::if_::if_nametoindex(name).map_err(|_| {
            let unknown = ProgramError::UnknownInterface {
                name: name.to_string(),
            };
            Error::Program(side.program().to_string(), unknown)
        })?;
        if self
            .links
            .get(name)
            .is_some_and(|(s, i, _)| *s == side && *i == index)
        {
            return Ok(());
        }
        if let Err(e) = self.detach(name) {
            // The interface it was on is gone, and its link with it.
            tracing::debug!(interface = name, error = %e, "an earlier attachment");
        }
        let program = side.program();
        let link = classifier(&mut self.ebpf, side)?
            .attach(name, TcAttachType::Ingress)
            .map_err(|e| Error::Program(format!("{program} on {name}"), e))?;
        self.links.insert(name.to_string(), (side, index, link));
        Ok(())
    }

    /// Detaches the program from interface `name` (nothing if none is
    /// attached there).
    pub fn detach(&mut self, name: &str) -> Result<(), Error> {
        let Some((side, _, link)) = self.links.remove(name) else {
            return Ok(());
        };
        classifier(&mut self.ebpf, side)?
            .detach(link)
            .map_err(|e| Error::Program(format!("{} off {name}", side.program()), e))
    }

    /// Whether the program is attached to interface `name`.
    pub fn is_attached(&self, name: &str) -> bool {
        self.links.contains_key(name)
    }

    /// Lets the flows marked `mark` take the fast path.
    pub fn allow(&mut self, mark: u32) -> Result<(), Error> {
        self.valid
            .insert(mark, 1, 0)
            .map_err(|e| Error::Map("valid", e))
    }

    /// Sends the flows marked `mark` back through netfilter, from their
    /// next packet on.
    pub fn revoke(&mut self, mark: u32) -> Result<(), Error> {
        unless_absent(self.valid.remove(&mark), "valid")
    }

    /// The marks whose flows may take the fast path.
    pub fn allowed(&self) -> Result<Vec<u32>, Error> {
        self.valid
            .keys()
            .collect::<Result<Vec<u32>, MapError>>()
            .map_err(|e| Error::Map("valid", e))
    }

    /// Sends every flow back through netfilter: no mark is valid.
    pub fn revoke_all(&mut self) -> Result<(), Error> {
        for mark in self.allowed()? {
            self.revoke(mark)?;
        }
        Ok(())
    }
}

/// How long what a flow forwarded here is kept after it left the fast
/// path, for the flow log's reader to take at the flow's end (a closed TCP
/// connection leaves at its FIN and ends after its `TIME_WAIT`, two
/// minutes by default).
const CARRIED_KEPT: std::time::Duration = std::time::Duration::from_secs(600);

/// The `flows` map: each flow's two entries.
pub struct FlowTable {
    flows: BpfHashMap<MapData, Key, Value>,
    /// The flows in the map, by connection tracking's id.
    entries: HashMap<u32, Flow>,
    /// What flows forwarded here before they left the fast path, until
    /// their end is taken ([`FlowTable::take_ended`]), with when they last
    /// left it.
    carried: HashMap<u32, (Counts, std::time::Instant)>,
    /// What the flows taken off the fast path forwarded there, all
    /// together, since the start.
    gone: Counts,
}

impl fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowTable")
            .field("flows", &self.entries.len())
            .field("carried", &self.carried.len())
            .finish()
    }
}

fn add(a: &mut Counts, b: Counts) {
    a.out.0 += b.out.0;
    a.out.1 += b.out.1;
    a.back.0 += b.back.0;
    a.back.1 += b.back.1;
}

impl FlowTable {
    /// Puts flow `id` on the fast path, or changes its mark. Its counts so
    /// far are kept.
    pub fn insert(&mut self, id: u32, flow: Flow) -> Result<(), Error> {
        if let Some(old) = self.entries.get(&id) {
            if *old == flow {
                return Ok(());
            }
            if old.out().0 != flow.out().0 || old.back().0 != flow.back().0 {
                self.take_off(id)?;
            }
        }
        for (k, mut v) in [flow.out(), flow.back()] {
            // A changed mark keeps the entry's counts (the program adds to
            // them between the read and the write at most a packet's worth
            // of a race, which only a mark change on a busy flow meets).
            if let Ok(old) = self.flows.get(&k, 0) {
                v[32..48].copy_from_slice(&old[32..48]);
            }
            self.flows
                .insert(k, v, 0)
                .map_err(|e| Error::Map("flows", e))?;
        }
        self.entries.insert(id, flow);
        Ok(())
    }

    /// Takes flow `id` off the fast path (netfilter forwards all of it from
    /// its next packet); what it forwarded here is kept for its end.
    pub fn take_off(&mut self, id: u32) -> Result<(), Error> {
        let Some(flow) = self.entries.remove(&id) else {
            return Ok(());
        };
        let mut counts = Counts::default();
        for (which, (k, _)) in [(0, flow.out()), (1, flow.back())] {
            let c = match self.flows.get(&k, 0) {
                Ok(v) => counts_of(&v),
                Err(e) if absent(&e) => (0, 0),
                Err(e) => return Err(Error::Map("flows", e)),
            };
            if which == 0 {
                counts.out = c;
            } else {
                counts.back = c;
            }
            unless_absent(self.flows.remove(&k), "flows")?;
        }
        add(&mut self.gone, counts);
        let now = std::time::Instant::now();
        self.carried
            .retain(|_, (_, at)| now.duration_since(*at) < CARRIED_KEPT);
        let kept = self.carried.entry(id).or_insert((Counts::default(), now));
        add(&mut kept.0, counts);
        kept.1 = now;
        Ok(())
    }

    /// What flow `id`, which connection tracking forgot, forwarded on the
    /// fast path, all of it, once (taken off it now if still there).
    pub fn take_ended(&mut self, id: u32) -> Result<Option<Counts>, Error> {
        self.take_off(id)?;
        Ok(self.carried.remove(&id).map(|(c, _)| c))
    }

    /// What flow `id` forwarded on the fast path so far.
    pub fn counts(&self, id: u32) -> Result<Option<Counts>, Error> {
        let Some(flow) = self.entries.get(&id) else {
            return Ok(None);
        };
        let read = |k: &Key| match self.flows.get(k, 0) {
            Ok(v) => Ok(counts_of(&v)),
            Err(e) if absent(&e) => Ok((0, 0)),
            Err(e) => Err(Error::Map("flows", e)),
        };
        Ok(Some(Counts {
            out: read(&flow.out().0)?,
            back: read(&flow.back().0)?,
        }))
    }

    /// Takes every flow off the fast path (what to do when events were
    /// lost and the table can no longer be trusted).
    pub fn clear(&mut self) -> Result<(), Error> {
        let ids: Vec<u32> = self.entries.keys().copied().collect();
        for id in ids {
            self.take_off(id)?;
        }
        // Entries this table does not know of (none, unless a write
        // failed halfway) go too.
        let keys: Vec<Key> = self.flows.keys().filter_map(Result::ok).collect();
        for k in keys {
            unless_absent(self.flows.remove(&k), "flows")?;
        }
        Ok(())
    }

    /// Whether flow `id` is on the fast path.
    pub fn contains(&self, id: u32) -> bool {
        self.entries.contains_key(&id)
    }

    /// What the flows on the fast path forwarded there, all together.
    pub fn total(&self) -> Result<Counts, Error> {
        let mut sum = Counts::default();
        for id in self.entries.keys() {
            if let Some(c) = self.counts(*id)? {
                add(&mut sum, c);
            }
        }
        Ok(sum)
    }

    /// What every flow forwarded on the fast path since the start: those
    /// on it now and those taken off.
    pub fn forwarded(&self) -> Result<Counts, Error> {
        let mut sum = self.total()?;
        add(&mut sum, self.gone);
        Ok(sum)
    }

    /// The flows on the fast path.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no flow is on the fast path.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flows_two_entries_are_keyed_by_each_direction_and_translate_back() {
        let flow = Flow {
            protocol: 17,
            slot_ifindex: 7,
            source: ("198.18.0.2".parse().unwrap(), 40000),
            destination: ("192.0.2.10".parse().unwrap(), 53),
            translated: ("198.51.100.1".parse().unwrap(), 40001),
            mark: 42,
        };
        let (ko, vo) = flow.out();
        let (kb, vb) = flow.back();
        // From the slot: its own tuple on its interface, to the
        // translated source.
        assert_eq!(&ko[12..16], &[198, 18, 0, 2]);
        assert_eq!(&ko[28..32], &[192, 0, 2, 10]);
        assert_eq!(&ko[32..36], &[0x9c, 0x40, 0, 53]);
        assert_eq!(u32::from_ne_bytes(ko[36..40].try_into().unwrap()), 7);
        assert_eq!((ko[40], ko[41]), (17, 4));
        assert_eq!(&vo[12..16], &[198, 51, 100, 1]);
        assert_eq!(&vo[16..18], &40001u16.to_be_bytes());
        // To the slot: the reply's tuple on any interface, back to the
        // sandbox, which must be reached by the slot's interface.
        assert_eq!(&kb[12..16], &[192, 0, 2, 10]);
        assert_eq!(&kb[28..32], &[198, 51, 100, 1]);
        assert_eq!(u32::from_ne_bytes(kb[36..40].try_into().unwrap()), 0);
        assert_eq!(&vb[12..16], &[198, 18, 0, 2]);
        assert_eq!(u32::from_ne_bytes(vb[24..28].try_into().unwrap()), 7);
        assert_eq!(u32::from_ne_bytes(vb[20..24].try_into().unwrap()), 42);
        assert!(flow.is_eligible());
        assert!(!Flow {
            protocol: 1,
            ..flow
        }
        .is_eligible());
        assert!(!Flow { mark: 0, ..flow }.is_eligible());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(!Flow {
            translated: (v6, 1),
            ..flow
        }
        .is_eligible());
    }
}
