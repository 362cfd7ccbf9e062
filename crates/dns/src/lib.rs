//! sandgate's DNS service (BRIEF section 1, "DNS").
//!
//! Every query from a sandbox, to any address, reaches this service: the
//! dataplane redirects port 53 to it on the sandbox's gateway. The service
//! knows the sandbox by the query's source address (which the dataplane has
//! checked against the sandbox's interface) and answers by its policy:
//!
//! - `open`: forwarded upstream;
//! - `restricted`, `allowlist`: a name the policy allows (an essential
//!   service, a `domainAllowList` entry) is forwarded, and every A/AAAA
//!   address of the answer, CNAME chains included, is admitted for that
//!   sandbox alone, with lifetime max(TTL, floor), **before** the answer is
//!   sent; addresses in always-denied or private ranges are removed from the
//!   answer and admitted never (DNS rebinding). Any other name gets REFUSED
//!   with an Extended DNS Error (RFC 8914, INFO-CODE 15, "Blocked") saying
//!   why, and nothing is forwarded: no tunnel out through DNS;
//! - `blocked`: every query refused the same way.
//!
//! Refusals and rebinding answers become events, limited per sandbox.
//! Transport ([`DnsService`]) is kept apart from message handling
//! ([`protocol`]), as hickory does; the sandbox directory and the
//! admissions are the caller's ([`Directory`]): the service holds no
//! policy of its own.

pub mod cache;
pub mod protocol;
pub mod upstream;

use cache::Cache;
use hickory_proto::op::Message;
use hickory_proto::op::ResponseCode;
use protocol::{
    addresses, explained, failure, parse_query, read_framed, refused, strip, upstream_query,
    write_framed, Question, Unserved, EDE_NETWORK_ERROR, EDE_OTHER,
};
use sandgate_netns::Netns;
use sandgate_policy::{Catalog, CompiledPolicy, EffectivePolicy, Mode, PolicyConfig, Reason};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};
pub use upstream::Upstream;

/// Who a query comes from, and what may be done for it: implemented by
/// whoever holds the sandboxes' policies and the dataplane.
pub trait Directory: Send + Sync {
    /// The slot and current policy of the sandbox whose address is
    /// `source`, if it is one.
    fn sandbox(&self, source: IpAddr) -> Option<(u32, EffectivePolicy)>;

    /// Admits `addr` for slot `slot` for `lifetime`, because a name allowed
    /// by `rule` answered it.
    fn admit(&self, slot: u32, addr: IpAddr, rule: &Reason, lifetime: Duration) -> io::Result<()>;
}

/// How the service runs.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The port it listens on, on every address of the host namespace (the
    /// dataplane redirects port 53 of sandboxes to it).
    pub port: u16,
    /// Where allowed queries go.
    pub upstream: Upstream,
    /// The shortest admission, whatever the TTL (BRIEF: 60 s by default).
    pub lifetime_floor: Duration,
    /// The most answers kept in the cache.
    pub cache_entries: usize,
    /// Events per sandbox and second, at most.
    pub event_rate: u32,
    /// Worker threads answering UDP queries.
    pub workers: usize,
    /// Queries of one sandbox waiting on upstream at once, at most; more
    /// get SERVFAIL at once, so that one sandbox cannot hold every worker.
    pub per_sandbox: usize,
}

impl DnsConfig {
    /// Defaults for everything but the port and the upstream resolvers.
    pub fn new(port: u16, upstream: Upstream) -> Self {
        DnsConfig {
            port,
            upstream,
            lifetime_floor: Duration::from_secs(60),
            cache_entries: 10_000,
            event_rate: 20,
            workers: 16,
            per_sandbox: 4,
        }
    }
}

/// A refused query or a rebinding answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEvent {
    /// When.
    pub time: SystemTime,
    /// The sandbox's slot.
    pub slot: u32,
    /// The name asked.
    pub name: String,
    /// The record type asked.
    pub qtype: String,
    /// `dns_not_allowed`, `blocked`, `dns_rebinding`, or
    /// `upstream_unreachable` (no upstream resolver answered: the sandbox
    /// got SERVFAIL and nothing was admitted).
    pub reason: String,
    /// For `dns_rebinding`: the addresses removed from the answer.
    pub removed: Vec<IpAddr>,
}

/// What the service has done, in all.
#[derive(Debug, Default)]
pub struct Counters {
    /// Queries forwarded upstream.
    pub forwarded: AtomicU64,
    /// Queries answered from the cache.
    pub cache_hits: AtomicU64,
    /// Queries refused.
    pub refused: AtomicU64,
    /// Addresses admitted.
    pub admitted: AtomicU64,
    /// Addresses removed from answers (rebinding).
    pub rebinding: AtomicU64,
    /// Events dropped by the per-sandbox limit or a full queue.
    pub events_dropped: AtomicU64,
    /// Queries turned away because their sandbox had too many waiting.
    pub busy: AtomicU64,
    /// Queries no upstream resolver answered.
    pub upstream_failures: AtomicU64,
}

struct Core {
    cfg: DnsConfig,
    directory: Arc<dyn Directory>,
    catalog: Arc<Catalog>,
    policy: Arc<PolicyConfig>,
    cache: Mutex<Cache>,
    events: SyncSender<DnsEvent>,
    limiter: Mutex<HashMap<u32, (Instant, u32)>>,
    in_flight: Mutex<HashMap<u32, usize>>,
    counters: Arc<Counters>,
}

/// The running service: UDP and TCP listeners and their threads.
pub struct DnsService {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    events: Receiver<DnsEvent>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for DnsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsService").finish_non_exhaustive()
    }
}

/// How often a listener looks at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// TCP connections served at once, at most.
const MAX_TCP: usize = 256;

impl DnsService {
    /// Starts listening on `cfg.port` in `host` (or here, for `None`).
    pub fn start(
        host: Option<&Netns>,
        cfg: DnsConfig,
        directory: Arc<dyn Directory>,
        catalog: Arc<Catalog>,
        policy: Arc<PolicyConfig>,
    ) -> io::Result<DnsService> {
        let port = cfg.port;
        let bind = move || -> io::Result<(UdpSocket, TcpListener)> {
            let any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            Ok((UdpSocket::bind(any)?, TcpListener::bind(any)?))
        };
        // [::] takes IPv4 too (as mapped addresses) unless the host says
        // otherwise; sandboxes reach the service over both families.
        let (udp, tcp) = match host {
            Some(ns) => ns.run(bind)?,
            None => bind()?,
        };
        udp.set_read_timeout(Some(POLL))?;
        tcp.set_nonblocking(true)?;
        let (events_tx, events) = sync_channel(4096);
        let counters = Arc::new(Counters::default());
        let core = Arc::new(Core {
            cache: Mutex::new(Cache::new(cfg.cache_entries)),
            cfg,
            directory,
            catalog,
            policy,
            events: events_tx,
            limiter: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            counters: counters.clone(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        // Every thread of the service runs in the host namespace: the
        // sockets it opens to reach upstream resolvers must be made there,
        // never in the namespace of the process that started it.
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| -> io::Result<JoinHandle<()>> {
            match host {
                Some(ns) => ns.spawn(name, f),
                None => std::thread::Builder::new().name(name.to_string()).spawn(f),
            }
        };
        let (jobs_tx, jobs_rx) = sync_channel::<(Vec<u8>, SocketAddr)>(1024);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        for _ in 0..core.cfg.workers.max(1) {
            let (core, jobs, sock) = (core.clone(), jobs_rx.clone(), udp.try_clone()?);
            threads.push(spawn(
                "sandgate-dns-worker",
                Box::new(move || loop {
                    let job = match jobs.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((query, from)) = job else { return };
                    if let Some(answer) = core.handle(from.ip(), &query) {
                        let _ = sock.send_to(&answer, from);
                    }
                }),
            )?);
        }
        let s = stop.clone();
        threads.push(spawn(
            "sandgate-dns-udp",
            Box::new(move || {
                let mut buf = [0u8; 4096];
                while !s.load(Ordering::SeqCst) {
                    if let Ok((n, from)) = udp.recv_from(&mut buf) {
                        // A full queue drops the query, as a busy resolver does.
                        let _ = jobs_tx.try_send((buf[..n].to_vec(), from));
                    }
                }
            }),
        )?);
        let (s, c) = (stop.clone(), core.clone());
        threads.push(spawn(
            "sandgate-dns-tcp",
            Box::new(move || serve_tcp(tcp, c, s)),
        )?);
        Ok(DnsService {
            stop,
            threads,
            events,
            counters,
        })
    }

    /// Refusals and rebinding answers, in order.
    pub fn events(&self) -> &Receiver<DnsEvent> {
        &self.events
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

impl Drop for DnsService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Workers end when the reader's sender goes; the reader and the
        // TCP acceptor look at the flag.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(listener: TcpListener, core: Arc<Core>, stop: Arc<AtomicBool>) {
    let open = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, from)) if open.load(Ordering::SeqCst) < MAX_TCP => {
                let guard = Slot::take(&open);
                let core = core.clone();
                std::thread::spawn(move || {
                    let _guard = guard;
                    tcp_conn(conn, from.ip(), &core);
                });
            }
            Ok(_) => {}
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// A sandbox's turn at the upstream, given back when dropped.
struct InFlight<'a> {
    map: &'a Mutex<HashMap<u32, usize>>,
    slot: u32,
}

impl<'a> InFlight<'a> {
    fn take(map: &'a Mutex<HashMap<u32, usize>>, slot: u32, max: usize) -> Option<Self> {
        let mut m = map.lock().ok()?;
        let n = m.entry(slot).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(InFlight { map, slot })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock() {
            if let Some(n) = m.get_mut(&self.slot) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// One of the TCP connection slots, given back when dropped (also when its
/// thread panics).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Slot {
        open.fetch_add(1, Ordering::SeqCst);
        Slot(open.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// DNS over TCP: as many messages as the client sends.
fn tcp_conn(mut conn: TcpStream, from: IpAddr, core: &Core) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    while let Ok(query) = read_framed(&mut conn) {
        let Some(answer) = core.handle(from, &query) else {
            return;
        };
        if write_framed(&mut conn, &answer).is_err() {
            return;
        }
    }
}

impl Core {
    /// The answer to one query from `source`, or `None` to stay silent
    /// (not a query at all).
    fn handle(&self, source: IpAddr, bytes: &[u8]) -> Option<Vec<u8>> {
        let (request, question) = parse_query(bytes)?;
        let question = match question {
            Ok(q) => q,
            Err(Unserved::NotImplemented) => return Some(failure(&request, ResponseCode::NotImp)),
            Err(Unserved::BadName) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return Some(refused(
                    &request,
                    "sandgate: refused by this sandbox's egress policy: the name has a label with bytes other than letters, digits, '-' and '_'",
                ));
            }
        };
        let source = source.to_canonical();
        let Some((slot, policy)) = self.directory.sandbox(source) else {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Some(refused(
                &request,
                "sandgate: this address is not a sandbox of this host",
            ));
        };
        match policy.mode {
            Mode::Blocked => {
                self.event(slot, &question, "blocked", Vec::new());
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                Some(refused(
                    &request,
                    "sandgate: networkBlockAll is set; this sandbox has no network, not even DNS",
                ))
            }
            Mode::Open => {
                let answer = self.lookup(slot, &request, &question)?;
                Some(reply(answer, &request))
            }
            Mode::Restricted | Mode::Allowlist => {
                let compiled = CompiledPolicy::new(policy, &self.catalog, &self.policy);
                let Some(rule) = compiled.name_rule(&question.name) else {
                    self.event(slot, &question, "dns_not_allowed", Vec::new());
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    let why = match compiled.policy().mode {
                        Mode::Restricted => "its tier is restricted to essential services",
                        _ => "it matches neither its domainAllowList nor the essential services",
                    };
                    return Some(refused(
                        &request,
                        &format!(
                            "sandgate: {} is blocked by this sandbox's egress policy: {why}",
                            question.name
                        ),
                    ));
                };
                let mut answer = self.lookup(slot, &request, &question)?;
                let ranges = self.policy.ranges();
                let removed = strip(&mut answer, |a| {
                    ranges.always_denied(a).is_some() || ranges.private(a).is_some()
                });
                if !removed.is_empty() {
                    self.counters
                        .rebinding
                        .fetch_add(removed.len() as u64, Ordering::Relaxed);
                    self.event(slot, &question, "dns_rebinding", removed);
                }
                for (addr, ttl) in addresses(&answer, &question) {
                    let lifetime = Duration::from_secs(u64::from(ttl)).clamp(
                        self.cfg.lifetime_floor,
                        MAX_LIFETIME.max(self.cfg.lifetime_floor),
                    );
                    // No admission, no answer: the sandbox must not be told
                    // an address it cannot reach.
                    if self.directory.admit(slot, addr, &rule, lifetime).is_err() {
                        return Some(explained(
                            &request,
                            ResponseCode::ServFail,
                            EDE_OTHER,
                            "sandgate: the answer's address could not be admitted for this sandbox",
                        ));
                    }
                    self.counters.admitted.fetch_add(1, Ordering::Relaxed);
                }
                Some(reply(answer, &request))
            }
        }
    }

    /// The upstream answer to `question`, from the cache or the upstream
    /// (asked with a query of the service's own making); SERVFAIL when no
    /// upstream answers.
    fn lookup(&self, slot: u32, request: &Message, question: &Question) -> Option<Message> {
        let key = (question.name.clone(), u16::from(question.qtype));
        if let Some(hit) = self.cache.lock().ok().and_then(|mut c| c.get(&key)) {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Some(hit);
        }
        let Some(_turn) = InFlight::take(&self.in_flight, slot, self.cfg.per_sandbox) else {
            self.counters.busy.fetch_add(1, Ordering::Relaxed);
            return Message::from_vec(&explained(
                request,
                ResponseCode::ServFail,
                EDE_OTHER,
                "sandgate: this sandbox has too many queries waiting for an upstream answer",
            ))
            .ok();
        };
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        let id = random_id();
        let answer = upstream_query(question, id)
            .and_then(|q| self.cfg.upstream.resolve(&q, id, question).ok());
        match answer {
            Some(answer) => {
                if let Ok(mut c) = self.cache.lock() {
                    c.put(key, &answer);
                }
                Some(answer)
            }
            None => {
                // Nothing is admitted: the sandbox is told why, and its
                // owner sees it in the events.
                self.counters
                    .upstream_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.event(slot, question, "upstream_unreachable", Vec::new());
                Message::from_vec(&explained(
                    request,
                    ResponseCode::ServFail,
                    EDE_NETWORK_ERROR,
                    "sandgate: no upstream resolver answered",
                ))
                .ok()
            }
        }
    }

    fn event(&self, slot: u32, q: &Question, reason: &str, removed: Vec<IpAddr>) {
        let allowed = match self.limiter.lock() {
            Ok(mut l) => {
                let now = Instant::now();
                let (since, count) = l.entry(slot).or_insert((now, 0));
                if now.duration_since(*since) >= Duration::from_secs(1) {
                    *since = now;
                    *count = 0;
                }
                *count += 1;
                *count <= self.cfg.event_rate
            }
            Err(_) => false,
        };
        let event = DnsEvent {
            time: SystemTime::now(),
            slot,
            name: q.name.clone(),
            qtype: q.qtype.to_string(),
            reason: reason.to_string(),
            removed,
        };
        if !allowed || self.events.try_send(event).is_err() {
            self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The longest admission, whatever the TTL (a TTL of years is a way to
/// keep an address open long after its name is gone).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// An unpredictable query id for upstream queries.
fn random_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(Instant::now().elapsed().as_nanos());
    (h.finish() & 0xffff) as u16
}

/// `answer` as the reply to `request` (its id).
fn reply(mut answer: Message, request: &Message) -> Vec<u8> {
    answer.metadata.id = request.metadata.id;
    answer.to_vec().unwrap_or_default()
}
