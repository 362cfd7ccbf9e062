//! sandgate's DNS service (docs/REQUIREMENTS.md, "DNS").
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
//!   sent; addresses in always-denied or private ranges (the host's own
//!   included) are removed from the answer and admitted never (DNS
//!   rebinding). Any other name gets REFUSED with an Extended DNS Error
//!   (RFC 8914, INFO-CODE 15, "Blocked") saying why, and nothing is
//!   forwarded: no tunnel out through DNS;
//! - `blocked`: every query refused the same way.
//!
//! **Fair shares.** One sandbox cannot stall another's lookups: each has a
//! query rate (more are answered REFUSED at once), a number of queries
//! waiting on upstream (more get SERVFAIL at once) and of TCP connections
//! open (more are closed at once), its tier's (`FairShares`); the service
//! is asynchronous (tokio), so a slow client holds a task, not a thread,
//! and TCP connections idle for long are closed. The cache is partitioned
//! by organization. Events are limited per sandbox and reason; what is
//! held back is counted and reported ([`DnsService::take_dropped`]).
//!
//! **Slots change hands.** A query carries the lease of the sandbox that
//! asked ([`Asker::lease`]); an admission or an answer for a lease that
//! no longer holds the slot (the sandbox was deleted while its lookup was
//! in flight, and the slot given to another) is dropped.
//!
//! Transport ([`DnsService`]) is kept apart from message handling
//! ([`protocol`]), as hickory does; the sandbox directory and the
//! admissions are the caller's ([`Directory`]).

pub mod cache;
pub mod protocol;
pub mod upstream;

use cache::Cache;
use hickory_proto::op::{Message, ResponseCode};
use protocol::{
    addresses, explained, failure, parse_query, refused, reply_to, strip, Question, Unserved,
    EDE_NETWORK_ERROR, EDE_OTHER,
};
use sandgate_netns::Netns;
use sandgate_policy::{Catalog, CompiledPolicy, EffectivePolicy, Mode, PolicyConfig, Reason};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
pub use upstream::{Pool, Upstream};

/// A sandbox that asked: its slot, who holds the slot, its cache
/// partition and its policy.
#[derive(Debug, Clone)]
pub struct Asker {
    /// Its slot.
    pub slot: u32,
    /// The holder of the slot: a number that changes each time the slot
    /// is given to a sandbox. What was asked under one lease is never
    /// admitted or answered under another.
    pub lease: u64,
    /// Whose answers it shares: its organization.
    pub partition: Arc<str>,
    /// Its policy (with its tier's fair shares).
    pub policy: EffectivePolicy,
}

/// Who a query comes from, and what may be done for it: implemented by
/// whoever holds the sandboxes' policies and the dataplane.
pub trait Directory: Send + Sync {
    /// The sandbox whose address is `source`, if it is one.
    fn sandbox(&self, source: IpAddr) -> Option<Asker>;

    /// Admits `addr` for `asker`'s slot for `lifetime`, because `name`
    /// (lowercase, no trailing dot), allowed by `rule`, resolved to it;
    /// refused if `asker` no longer holds the slot. Returns the address withdrawn to make room, if the slot
    /// was at its most admissions.
    fn admit(
        &self,
        asker: &Asker,
        addr: IpAddr,
        name: &str,
        rule: &Reason,
        lifetime: Duration,
    ) -> io::Result<Option<IpAddr>>;

    /// Whether `asker` still holds its slot.
    fn holds(&self, asker: &Asker) -> bool;

    /// `asker`'s sandbox as it is now (its policy may have changed since
    /// its query came), if it still holds its slot.
    fn current(&self, asker: &Asker) -> Option<Asker>;

    /// A receiver told of every change of a sandbox's policy, that wakes
    /// the queries held for an approval.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;

    /// The policy configuration now (its ranges include the host's own
    /// addresses as they are now).
    fn config(&self) -> Arc<PolicyConfig>;
}

/// How the service runs.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The port it listens on, on every address of the host namespace (the
    /// dataplane redirects port 53 of sandboxes to it).
    pub port: u16,
    /// Where allowed queries go.
    pub upstream: Upstream,
    /// The shortest admission, whatever the TTL (60 s by default).
    pub lifetime_floor: Duration,
    /// The most answers kept in the cache, in all partitions.
    pub cache_entries: usize,
    /// Threads of the service's runtime.
    pub workers: usize,
    /// Sockets of the upstream pool, per family.
    pub pool_sockets: usize,
    /// TCP connections open at once, from all sandboxes.
    pub tcp_connections: usize,
    /// How long a TCP connection may wait for its next message (and for
    /// the rest of one begun).
    pub tcp_idle: Duration,
}

impl DnsConfig {
    /// Defaults for everything but the port and the upstream resolvers.
    pub fn new(port: u16, upstream: Upstream) -> Self {
        DnsConfig {
            port,
            upstream,
            lifetime_floor: Duration::from_secs(60),
            cache_entries: 10_000,
            workers: 2,
            pool_sockets: 16,
            tcp_connections: 1024,
            tcp_idle: Duration::from_secs(5),
        }
    }
}

/// A refused query, a rebinding answer, a limit reached.
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
    /// `dns_not_allowed`, `blocked`, `dns_rebinding`,
    /// `upstream_unreachable` (no upstream resolver answered: the sandbox
    /// got SERVFAIL and nothing was admitted), `dns_rate_limited`,
    /// `dns_in_flight_limit`, `dns_tcp_limit`, or `admission_limit` (the
    /// admission ending soonest made room).
    pub reason: String,
    /// For `dns_rebinding`: the addresses removed from the answer; for
    /// `admission_limit`: the address withdrawn.
    pub removed: Vec<IpAddr>,
}

/// Events of one reason held back for one holder of a slot (over its
/// events a second), as [`DnsService::take_dropped`] reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The sandbox's slot.
    pub slot: u32,
    /// The reason of the events held back.
    pub reason: &'static str,
    /// When the first of them was held back.
    pub first: SystemTime,
    /// How many.
    pub count: u64,
}

/// Why a refused query was not answered after a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unheld {
    /// The sandbox has no approvals (or no longer: turned off, the slot
    /// changed hands).
    NoApprovals,
    /// It holds no queries, or is at its queries in flight.
    NotHeld,
    /// Its owner denied the name.
    Declined,
    /// Nobody approved within the hold, seconds.
    NotApprovedWithin(u8),
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
    /// Events held back by the per-sandbox limit or a full queue.
    pub events_dropped: AtomicU64,
    /// Queries turned away because their sandbox had too many waiting.
    pub busy: AtomicU64,
    /// Queries no upstream resolver answered.
    pub upstream_failures: AtomicU64,
    /// Queries over their sandbox's rate.
    pub rate_limited: AtomicU64,
    /// TCP connections closed at once (the sandbox's, or the service's,
    /// most were open).
    pub tcp_refused: AtomicU64,
    /// Answers not sent, or admissions not made, because the slot had
    /// changed hands while the query was in flight.
    pub stale: AtomicU64,
    /// Refused queries held for an approval (`approvalHoldSeconds`).
    pub held: AtomicU64,
    /// Held queries answered because an approval came in time.
    pub held_approved: AtomicU64,
}

/// One sandbox's use of the service, under one lease.
#[derive(Debug)]
struct Share {
    /// Tokens of the query rate, and when they were last counted.
    tokens: f64,
    counted: Instant,
    in_flight: u32,
    tcp: u32,
    /// Events published this second, by reason.
    events: HashMap<&'static str, u32>,
    events_since: Instant,
    last_used: Instant,
}

impl Share {
    fn new(rate: u32) -> Share {
        let now = Instant::now();
        Share {
            tokens: f64::from(rate) * 2.0,
            counted: now,
            in_flight: 0,
            tcp: 0,
            events: HashMap::new(),
            events_since: now,
            last_used: now,
        }
    }
}

/// Every sandbox's share, by (slot, lease).
#[derive(Debug)]
struct Shares {
    by_lease: HashMap<(u32, u64), Share>,
    /// Events held back, by slot, lease and reason, not yet taken: when
    /// the first was held back, and how many.
    dropped: HashMap<(u32, u64, &'static str), (SystemTime, u64)>,
    /// When idle shares were last forgotten.
    pruned: Instant,
}

impl Default for Shares {
    fn default() -> Shares {
        Shares {
            by_lease: HashMap::new(),
            dropped: HashMap::new(),
            pruned: Instant::now(),
        }
    }
}

/// Shares unused this long are forgotten (looked for once a second).
const SHARE_IDLE: Duration = Duration::from_secs(60);

impl Shares {
    fn get(&mut self, asker: &Asker) -> &mut Share {
        if self.pruned.elapsed() >= Duration::from_secs(1) {
            self.pruned = Instant::now();
            self.by_lease
                .retain(|_, s| s.last_used.elapsed() < SHARE_IDLE || s.in_flight + s.tcp > 0);
        }
        let rate = asker.policy.fair_shares.dns_queries_per_second;
        let share = self
            .by_lease
            .entry((asker.slot, asker.lease))
            .or_insert_with(|| Share::new(rate));
        share.last_used = Instant::now();
        share
    }

    /// Counts an event of `asker` held back.
    fn hold_back(&mut self, asker: &Asker, reason: &'static str, time: SystemTime) {
        self.dropped
            .entry((asker.slot, asker.lease, reason))
            .or_insert((time, 0))
            .1 += 1;
    }

    /// Whether `asker` may send one more query now (a token bucket of its
    /// rate, holding a burst of twice the rate).
    fn take_query(&mut self, asker: &Asker) -> bool {
        let rate = f64::from(asker.policy.fair_shares.dns_queries_per_second.max(1));
        let s = self.get(asker);
        let now = Instant::now();
        s.tokens = (s.tokens + now.duration_since(s.counted).as_secs_f64() * rate).min(rate * 2.0);
        s.counted = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Core {
    cfg: DnsConfig,
    directory: Arc<dyn Directory>,
    catalog: Arc<Catalog>,
    cache: Mutex<Cache>,
    pool: Arc<Pool>,
    events: SyncSender<DnsEvent>,
    shares: Mutex<Shares>,
    counters: Arc<Counters>,
}

/// The running service: UDP and TCP listeners on a runtime of its own.
pub struct DnsService {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    events: Receiver<DnsEvent>,
    counters: Arc<Counters>,
    core: Arc<Core>,
}

impl std::fmt::Debug for DnsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsService").finish_non_exhaustive()
    }
}

/// Takes a lock, also one whose holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DnsService {
    /// Starts listening on `cfg.port` in `host` (or here, for `None`).
    pub fn start(
        host: Option<&Netns>,
        cfg: DnsConfig,
        directory: Arc<dyn Directory>,
        catalog: Arc<Catalog>,
    ) -> io::Result<DnsService> {
        let port = cfg.port;
        // The listeners, the upstream pool and every socket the runtime's
        // threads open later live in the host namespace: the runtime is
        // built on a thread of it, and its threads are that thread's.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<Arc<Core>>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (events_tx, events) = sync_channel(4096);
        let counters = Arc::new(Counters::default());
        let workers = cfg.workers.max(1);
        let run = {
            let counters = counters.clone();
            move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .thread_name("sandgate-dns")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let setup = async {
                        let any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
                        // [::] takes IPv4 too (as mapped addresses): sandboxes
                        // reach the service over both families.
                        let udp = std::net::UdpSocket::bind(any)?;
                        udp.set_nonblocking(true)?;
                        // A burst from many sandboxes waits here, not lost.
                        if let Err(e) = nix::sys::socket::setsockopt(
                            &udp,
                            nix::sys::socket::sockopt::RcvBuf,
                            &(4 << 20),
                        ) {
                            tracing::warn!(error = %e, "the DNS service's receive buffer stays at the system's default; bursts may be dropped");
                        }
                        let udp = Arc::new(UdpSocket::from_std(udp)?);
                        let tcp = TcpListener::bind(any).await?;
                        let pool = Pool::start(cfg.upstream.clone(), cfg.pool_sockets)?;
                        let core = Arc::new(Core {
                            cache: Mutex::new(Cache::new(cfg.cache_entries)),
                            cfg,
                            directory,
                            catalog,
                            pool,
                            events: events_tx,
                            shares: Mutex::new(Shares::default()),
                            counters,
                        });
                        Ok::<_, io::Error>((core, udp, tcp))
                    };
                    match setup.await {
                        Ok((core, udp, tcp)) => {
                            let _ = ready_tx.send(Ok(core.clone()));
                            let serving = async {
                                tokio::join!(serve_udp(core.clone(), udp), serve_tcp(core, tcp));
                            };
                            tokio::select! {
                                _ = serving => {}
                                _ = stop_rx => {}
                            }
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
                // Tasks still running (a TCP client, a lookup) end here.
                rt.shutdown_timeout(Duration::from_secs(1));
            }
        };
        let thread = match host {
            Some(ns) => ns.spawn("sandgate-dns", Box::new(run))?,
            None => std::thread::Builder::new()
                .name("sandgate-dns".into())
                .spawn(run)?,
        };
        let core = ready_rx
            .recv()
            .map_err(|_| io::Error::other("the DNS service's thread ended before it served"))??;
        Ok(DnsService {
            stop: Some(stop_tx),
            thread: Some(thread),
            events,
            counters,
            core,
        })
    }

    /// Refusals, rebinding answers and limits reached, in order.
    pub fn events(&self) -> &Receiver<DnsEvent> {
        &self.events
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Datagrams the upstream pool received that answered no query.
    pub fn upstream_unmatched(&self) -> u64 {
        self.core.pool.counters().unmatched.load(Ordering::Relaxed)
    }

    /// The events held back since the last call, by slot and reason, for
    /// each holder of the slot apart: when the first of them was held back
    /// (so that a holder's counts never reach the slot's next holder).
    pub fn take_dropped(&self) -> Vec<Dropped> {
        lock(&self.core.shares)
            .dropped
            .drain()
            .map(|((slot, _, reason), (first, count))| Dropped {
                slot,
                reason,
                first,
                count,
            })
            .collect()
    }
}

impl Drop for DnsService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the DNS service's thread panicked");
            }
        }
    }
}

/// Reads every UDP query; a query over its sandbox's rate is answered at
/// once, here, so that a flood costs no task and no upstream query.
async fn serve_udp(core: Arc<Core>, udp: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match udp.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "DNS service: receiving a datagram");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let bytes = buf[..n].to_vec();
        let source = from.ip().to_canonical();
        let asker = core.directory.sandbox(source);
        if let Some(asker) = &asker {
            if !lock(&core.shares).take_query(asker) {
                if let Some(answer) = core.rate_limited(asker, &bytes) {
                    if let Err(e) = udp.send_to(&answer, from).await {
                        tracing::debug!(to = %from, error = %e, "answering a query over its sandbox's rate");
                    }
                }
                continue;
            }
        }
        let (core, udp) = (core.clone(), udp.clone());
        tokio::spawn(async move {
            if let Some(answer) = core.handle(asker, &bytes).await {
                if let Err(e) = udp.send_to(&answer, from).await {
                    tracing::debug!(error = %e, %from, "DNS service: sending an answer");
                }
            }
        });
    }
}

/// Accepts TCP connections, each within its sandbox's and the service's
/// most connections open.
async fn serve_tcp(core: Arc<Core>, listener: TcpListener) {
    let open = Arc::new(tokio::sync::Semaphore::new(core.cfg.tcp_connections.max(1)));
    loop {
        let (conn, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "DNS service: accepting a connection");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            core.counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let source = from.ip().to_canonical();
        let asker = core.directory.sandbox(source);
        let admitted = match &asker {
            None => true,
            Some(a) => {
                let max = a.policy.fair_shares.dns_tcp_connections;
                let mut shares = lock(&core.shares);
                let s = shares.get(a);
                if s.tcp >= max {
                    false
                } else {
                    s.tcp += 1;
                    true
                }
            }
        };
        if !admitted {
            core.counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
            if let Some(a) = &asker {
                core.event_raw(a, "", "", "dns_tcp_limit", Vec::new());
            }
            continue;
        }
        let core = core.clone();
        tokio::spawn(async move {
            tcp_conn(&core, conn, asker.clone()).await;
            if let Some(a) = &asker {
                let mut shares = lock(&core.shares);
                let s = shares.get(a);
                s.tcp = s.tcp.saturating_sub(1);
            }
            drop(permit);
        });
    }
}

/// DNS over TCP: as many messages as the client sends, each whole within
/// the idle time.
async fn tcp_conn(core: &Core, mut conn: TcpStream, asker: Option<Asker>) {
    loop {
        let query =
            match tokio::time::timeout(core.cfg.tcp_idle, upstream::read_framed(&mut conn)).await {
                Ok(Ok(q)) => q,
                _ => return,
            };
        if let Some(a) = &asker {
            if !lock(&core.shares).take_query(a) {
                match core.rate_limited(a, &query) {
                    Some(answer) => {
                        if upstream::write_framed(&mut conn, &answer).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    None => return,
                }
            }
        }
        let Some(answer) = core.handle(asker.clone(), &query).await else {
            return;
        };
        let written = tokio::time::timeout(
            core.cfg.tcp_idle,
            upstream::write_framed(&mut conn, &answer),
        )
        .await;
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
    }
}

/// A sandbox's turn at the upstream, given back when dropped.
struct InFlight<'a> {
    shares: &'a Mutex<Shares>,
    asker: &'a Asker,
}

impl<'a> InFlight<'a> {
    fn take(shares: &'a Mutex<Shares>, asker: &'a Asker) -> Option<Self> {
        let max = asker.policy.fair_shares.dns_in_flight.max(1);
        let mut all = lock(shares);
        let s = all.get(asker);
        if s.in_flight >= max {
            return None;
        }
        s.in_flight += 1;
        Some(InFlight { shares, asker })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut all = lock(self.shares);
        let s = all.get(self.asker);
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

impl Core {
    /// The answer to a query over its sandbox's rate: REFUSED, saying why.
    fn rate_limited(&self, asker: &Asker, bytes: &[u8]) -> Option<Vec<u8>> {
        let (request, question) = parse_query(bytes)?;
        self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        if let Ok(q) = &question {
            self.event(asker, q, "dns_rate_limited", Vec::new());
        }
        Some(explained(
            &request,
            ResponseCode::Refused,
            EDE_OTHER,
            &format!(
                "sandgate: this sandbox sends more than {} queries a second, its share",
                asker.policy.fair_shares.dns_queries_per_second
            ),
        ))
    }

    /// The answer to one query from `asker` (`None`: an address that is no
    /// sandbox's), or `None` to stay silent (not a query at all, or the
    /// slot changed hands meanwhile).
    async fn handle(&self, asker: Option<Asker>, bytes: &[u8]) -> Option<Vec<u8>> {
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
        let Some(asker) = asker else {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Some(refused(
                &request,
                "sandgate: this address is not a sandbox of this host",
            ));
        };
        let denied = match asker.policy.mode {
            Mode::Blocked => None,
            _ => self.deny_listed(&asker, &question),
        };
        let answer = match (asker.policy.mode, denied) {
            (Mode::Blocked, _) => {
                self.event(&asker, &question, "blocked", Vec::new());
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                refused(
                    &request,
                    "sandgate: networkBlockAll is set; this sandbox has no network, not even DNS",
                )
            }
            (_, Some(entry)) => {
                self.event(&asker, &question, "domain_deny_list", Vec::new());
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                refused(
                    &request,
                    &format!(
                        "sandgate: {} is blocked by this sandbox's egress policy: it matches domainDenyList entry {entry}",
                        question.name
                    ),
                )
            }
            (Mode::Open, None) => {
                let answer = self.lookup(&asker, &request, &question).await?;
                reply_to(answer, &request)
            }
            (Mode::Restricted | Mode::Allowlist, None) => {
                self.filtered(&asker, &request, &question).await?
            }
        };
        // Asked under one lease, never answered under another.
        if !self.directory.holds(&asker) {
            self.counters.stale.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(answer)
    }

    /// The `domainDenyList` entry the question's name matches, if any
    /// (in every mode: a denied name is refused, in `open` mode too).
    fn deny_listed(&self, asker: &Asker, question: &Question) -> Option<String> {
        if asker.policy.domain_deny_list.is_empty() {
            return None;
        }
        let config = self.directory.config();
        let compiled = CompiledPolicy::new(asker.policy.clone(), &self.catalog, &config);
        match compiled.name_denied(&question.name)? {
            sandgate_policy::Reason::DomainDenyList(pattern) => Some(pattern.to_string()),
            other => Some(other.code()),
        }
    }

    /// The answer for a `restricted` or `allowlist` sandbox.
    async fn filtered(
        &self,
        asker: &Asker,
        request: &Message,
        question: &Question,
    ) -> Option<Vec<u8>> {
        let config = self.directory.config();
        let compiled = CompiledPolicy::new(asker.policy.clone(), &self.catalog, &config);
        let approved: Asker;
        let (asker, rule) = match compiled.name_rule(&question.name) {
            Some(rule) => (asker, rule),
            None => {
                // The event opens an access request where the sandbox
                // has approvals; the query waits for its answer, if the
                // sandbox asked to.
                self.event(asker, question, "dns_not_allowed", Vec::new());
                match self.held(asker, question).await {
                    Ok((now, rule)) => {
                        approved = now;
                        (&approved, rule)
                    }
                    Err(unheld) => {
                        self.counters.refused.fetch_add(1, Ordering::Relaxed);
                        let why = match compiled.policy().mode {
                            Mode::Restricted => "its tier is restricted to essential services",
                            _ => {
                                "it matches neither its domainAllowList nor the essential services"
                            }
                        };
                        let ask = match unheld {
                            Unheld::Declined => {
                                "; its owner denied the access request".to_string()
                            }
                            Unheld::NotApprovedWithin(seconds) => format!(
                                "; an access request is open, and was not approved within {seconds} s"
                            ),
                            Unheld::NotHeld => {
                                "; an access request is open for its owner to approve".into()
                            }
                            Unheld::NoApprovals => String::new(),
                        };
                        return Some(refused(
                            request,
                            &format!(
                                "sandgate: {} is blocked by this sandbox's egress policy: {why}{ask}",
                                question.name
                            ),
                        ));
                    }
                }
            }
        };
        let mut answer = self.lookup(asker, request, question).await?;
        let ranges = config.ranges();
        let removed = strip(&mut answer, |a| {
            ranges.always_denied(a).is_some() || ranges.private(a).is_some()
        });
        if !removed.is_empty() {
            self.counters
                .rebinding
                .fetch_add(removed.len() as u64, Ordering::Relaxed);
            self.event(asker, question, "dns_rebinding", removed);
        }
        let floor = self.cfg.lifetime_floor;
        // A name a grant allows is admitted no longer than the grant lasts.
        let grant_left = match &rule {
            sandgate_policy::Reason::Grant(id) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0);
                asker
                    .policy
                    .grants
                    .iter()
                    .find(|g| &g.id == id)
                    .map(|g| Duration::from_millis(g.expires_at_ms.saturating_sub(now)))
            }
            _ => None,
        };
        let admissions: Vec<(IpAddr, Duration)> = addresses(&answer, question)
            .into_iter()
            .map(|(addr, ttl)| {
                let lifetime =
                    Duration::from_secs(u64::from(ttl)).clamp(floor, MAX_LIFETIME.max(floor));
                (addr, grant_left.map_or(lifetime, |left| lifetime.min(left)))
            })
            .filter(|(_, lifetime)| !lifetime.is_zero())
            .collect();
        if !admissions.is_empty() {
            // The dataplane's lock may be held for a slot's making: the
            // worker says it blocks, so that the runtime's other tasks move
            // to another thread meanwhile (a hand-off to the blocking pool
            // costs more than the admission itself).
            let directory = &self.directory;
            let made = tokio::task::block_in_place(|| {
                let mut evicted = Vec::new();
                for (addr, lifetime) in admissions {
                    match directory.admit(asker, addr, &question.name, &rule, lifetime) {
                        Ok(Some(old)) => evicted.push(old),
                        Ok(None) => {}
                        Err(e) => return Err((e, evicted)),
                    }
                }
                Ok(evicted)
            });
            let evicted = match made {
                Ok(evicted) => evicted,
                Err((e, evicted)) => {
                    self.report_evicted(asker, question, evicted);
                    tracing::debug!(error = %e, slot = asker.slot, "DNS service: an admission failed");
                    if !self.directory.holds(asker) {
                        self.counters.stale.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                    // No admission, no answer: the sandbox must not be told
                    // an address it cannot reach.
                    return Some(explained(
                        request,
                        ResponseCode::ServFail,
                        EDE_OTHER,
                        "sandgate: the answer's address could not be admitted for this sandbox",
                    ));
                }
            };
            self.counters
                .admitted
                .fetch_add(addresses(&answer, question).len() as u64, Ordering::Relaxed);
            self.report_evicted(asker, question, evicted);
        }
        Some(reply_to(answer, request))
    }

    /// Holds a refused query for `asker`'s `approvalHoldSeconds` (it takes
    /// one of the sandbox's queries in flight meanwhile), until a change
    /// of its policy allows the name: then its sandbox as it is now, and
    /// the rule that allows. Otherwise why it is refused: the owner denied
    /// the name (at once, or during the hold), the hold ended, the
    /// sandbox holds no queries (or is at its queries in flight), or it
    /// has approvals no more (turned off, the slot changed hands).
    async fn held(&self, asker: &Asker, question: &Question) -> Result<(Asker, Reason), Unheld> {
        let Some(approvals) = &asker.policy.approvals else {
            return Err(Unheld::NoApprovals);
        };
        if approvals.declined(&question.name) {
            return Err(Unheld::Declined);
        }
        let hold = approvals.hold_seconds;
        if hold == 0 {
            return Err(Unheld::NotHeld);
        }
        let _turn = InFlight::take(&self.shares, asker).ok_or(Unheld::NotHeld)?;
        self.counters.held.fetch_add(1, Ordering::Relaxed);
        // Told of changes from before the first look on, so that none
        // falls between the look and the wait.
        let mut changes = self.directory.changes();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(hold));
        loop {
            let now = self.directory.current(asker).ok_or(Unheld::NoApprovals)?;
            let Some(approvals) = &now.policy.approvals else {
                return Err(Unheld::NoApprovals);
            };
            if approvals.declined(&question.name) {
                return Err(Unheld::Declined);
            }
            let config = self.directory.config();
            let compiled = CompiledPolicy::new(now.policy.clone(), &self.catalog, &config);
            if let Some(rule) = compiled.name_rule(&question.name) {
                self.counters.held_approved.fetch_add(1, Ordering::Relaxed);
                return Ok((now, rule));
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(Unheld::NotApprovedWithin(hold)),
            }
        }
    }

    fn report_evicted(&self, asker: &Asker, question: &Question, evicted: Vec<IpAddr>) {
        if !evicted.is_empty() {
            self.event(asker, question, "admission_limit", evicted);
        }
    }

    /// The upstream answer to `question`, from the asker's partition of
    /// the cache or the upstream; SERVFAIL when no upstream answers.
    async fn lookup(
        &self,
        asker: &Asker,
        request: &Message,
        question: &Question,
    ) -> Option<Message> {
        let key = (
            asker.partition.clone(),
            question.name.clone(),
            u16::from(question.qtype),
        );
        if let Some(hit) = lock(&self.cache).get(&key) {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Some(hit);
        }
        let Some(_turn) = InFlight::take(&self.shares, asker) else {
            self.counters.busy.fetch_add(1, Ordering::Relaxed);
            self.event(asker, question, "dns_in_flight_limit", Vec::new());
            return Message::from_vec(&explained(
                request,
                ResponseCode::ServFail,
                EDE_OTHER,
                "sandgate: this sandbox has too many queries waiting for an upstream answer",
            ))
            .ok();
        };
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        match self.pool.resolve(question).await {
            Ok(answer) => {
                let answer = normalized(answer);
                lock(&self.cache).put(key, &answer);
                Some(answer)
            }
            Err(e) => {
                // Nothing is admitted: the sandbox is told why, and its
                // owner sees it in the events.
                tracing::debug!(error = %e, name = %question.name, "DNS service: no upstream answered");
                self.counters
                    .upstream_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.event(asker, question, "upstream_unreachable", Vec::new());
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

    fn event(&self, asker: &Asker, q: &Question, reason: &'static str, removed: Vec<IpAddr>) {
        self.event_raw(asker, &q.name, &q.qtype.to_string(), reason, removed);
    }

    /// Publishes an event, within the sandbox's events a second of this
    /// reason; what is held back is counted. A lookup that outlived its
    /// lease (the slot given to another since) publishes nothing: its
    /// name must not reach the slot's next holder.
    fn event_raw(
        &self,
        asker: &Asker,
        name: &str,
        qtype: &str,
        reason: &'static str,
        removed: Vec<IpAddr>,
    ) {
        // The time first: a slot handed over after it is given to the new
        // holder later than the event, which is then nobody's.
        let time = SystemTime::now();
        if !self.directory.holds(asker) {
            return;
        }
        let max = asker.policy.fair_shares.events_per_second;
        let allowed = {
            let mut shares = lock(&self.shares);
            let s = shares.get(asker);
            if s.events_since.elapsed() >= Duration::from_secs(1) {
                s.events_since = Instant::now();
                s.events.clear();
            }
            let n = s.events.entry(reason).or_insert(0);
            *n += 1;
            let allowed = *n <= max;
            if !allowed {
                shares.hold_back(asker, reason, time);
            }
            allowed
        };
        let event = DnsEvent {
            time,
            slot: asker.slot,
            name: name.to_string(),
            qtype: qtype.to_string(),
            reason: reason.to_string(),
            removed,
        };
        if !allowed {
            self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
        } else if self.events.try_send(event).is_err() {
            self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
            lock(&self.shares).hold_back(asker, reason, time);
        }
    }
}

/// An upstream answer as the cache keeps it: owner names in lowercase
/// (the query went out in a random case, and every sandbox asks in its
/// own).
fn normalized(mut answer: Message) -> Message {
    for r in answer
        .answers
        .iter_mut()
        .chain(answer.authorities.iter_mut())
        .chain(answer.additionals.iter_mut())
    {
        r.name = r.name.to_lowercase();
    }
    answer
}

/// The longest admission, whatever the TTL (a TTL of years is a way to
/// keep an address open long after its name is gone).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;
    use sandgate_policy::{PolicyConfig, SettingsRequest};

    fn asker(slot: u32, lease: u64) -> Asker {
        let config = PolicyConfig::default();
        let settings = config
            .settings_for_create(3, &SettingsRequest::default())
            .unwrap_or_else(|e| panic!("{e}"));
        Asker {
            slot,
            lease,
            partition: Arc::from("org"),
            policy: config
                .resolve(3, &settings)
                .unwrap_or_else(|e| panic!("{e}")),
        }
    }

    #[test]
    fn events_held_back_are_counted_for_each_holder_of_a_slot_apart() {
        let mut shares = Shares::default();
        let (old, new) = (asker(7, 1), asker(7, 2));
        for _ in 0..3 {
            shares.hold_back(&old, "dns_rate_limited", SystemTime::now());
        }
        std::thread::sleep(Duration::from_millis(5));
        shares.hold_back(&new, "dns_rate_limited", SystemTime::now());
        let mut held: Vec<_> = shares.dropped.into_values().collect();
        held.sort();
        assert_eq!(held.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [3, 1]);
        // The old holder's counts started before the new holder's: the
        // runner gives them to whoever held the slot at that time.
        assert!(held[0].0 < held[1].0);
    }
}
