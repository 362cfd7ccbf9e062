//! The name-checking gateway.
//!
//! An address is admitted for a sandbox because an allowed name resolved
//! to it; many unrelated sites share such an address (a CDN's, a cloud
//! front end's). The dataplane therefore steers a sandbox's TCP
//! connections to a name-admitted address, on the name-checked ports, to
//! this gateway (an nftables `redirect` to its port on the slot's
//! gateway address), and the gateway passes a connection on only if the
//! name it is for is one the sandbox's policy allows **and** one that
//! resolved, for this sandbox, to this very address:
//!
//! - TLS: the server name of the ClientHello ([`hello`]); a hello with no
//!   name is `no_server_name`, one with an encrypted name (ECH) is
//!   `encrypted_client_hello`. A passed connection is relayed with
//!   `splice(2)` ([`splice`]), the hello included, unchanged.
//! - Anything else is read as HTTP/1 ([`http`]): every request's `Host`
//!   (and an absolute target's authority) is checked, not only the
//!   first's.
//!
//! Otherwise the connection is reset and a deny event says why
//! (`name_mismatch`, `no_server_name`, `encrypted_client_hello`,
//! `unrecognized_protocol`, or the policy's own code for a destination or
//! name it denies: `always_denied:<range>`, `network_deny_list`,
//! `domain_deny_list`, `private_range`, `blocked`). The gateway
//! connects only to the connection's original destination (from
//! connection tracking: `SO_ORIGINAL_DST`), checked again against the
//! policy (the always-denied ranges, the deny lists).
//!
//! In `open` mode with a `domainDenyList`, every connection to the
//! name-checked ports comes here: a denied name is reset, any other
//! passes (open mode asks no DNS answer of it).
//!
//! A policy change reaches connections already passed: [`Gateway::revalidate`]
//! cuts those whose name or destination the new policy no longer allows,
//! at once (a reset each way), and [`Gateway::cut`] all of a slot's.

pub mod bindings;
pub mod flows;
pub mod hello;
pub mod http;
pub mod secrets;
pub mod splice;
pub mod terminate;

use hello::Hello;
use sandgate_netns::Netns;
use sandgate_policy::{
    Catalog, CompiledPolicy, Destination, DomainName, EffectivePolicy, Mode, PolicyConfig, Reason,
    Target,
};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// How the gateway reaches a passed connection's destination: from the
/// sandbox's known egress address where its organization has one (as the
/// kernel's address translation would have sent it), within a time.
#[derive(Debug, Clone, Copy)]
pub struct Dial {
    /// The original destination.
    pub dest: SocketAddr,
    /// The source address to bind, if not the host's own.
    pub from: Option<IpAddr>,
    /// How long the connect may take.
    pub timeout: Duration,
}

impl Dial {
    /// The dial of `holder`'s connection to `dest`.
    fn of(holder: &Holder, dest: SocketAddr, timeout: Duration) -> Dial {
        Dial {
            dest,
            from: holder
                .policy
                .egress_address
                .and_then(|e| e.source_for(dest.ip())),
            timeout,
        }
    }

    /// Connects; an egress address this host does not hold fails (never
    /// a connection from another address).
    pub async fn connect(&self) -> io::Result<TcpStream> {
        let connect = async {
            let Some(from) = self.from else {
                return TcpStream::connect(self.dest).await;
            };
            let socket = if self.dest.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(from, 0))?;
            socket.connect(self.dest).await
        };
        tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

/// The holder of a slot, as the gateway needs it.
#[derive(Debug, Clone)]
pub struct Holder {
    /// Its slot.
    pub slot: u32,
    /// The lease under which it holds the slot (see
    /// [`bindings::HolderKey`]).
    pub lease: u64,
    /// Its policy now.
    pub policy: EffectivePolicy,
    /// Its secrets (given at create; never in its policy, which is kept
    /// on disk).
    pub secrets: Arc<[secrets::Secret]>,
}

impl Holder {
    /// The key of its bindings.
    pub fn key(&self) -> bindings::HolderKey {
        (self.slot, self.lease)
    }
}

/// What the gateway asks of whoever holds the sandboxes (the runner).
pub trait Directory: Send + Sync {
    /// The sandbox whose address is `source`, if it is one whose traffic
    /// may pass (a cut-off sandbox is none).
    fn sandbox(&self, source: IpAddr) -> Option<Holder>;

    /// Whether `name` resolved for `holder` to `addr`, lately (the DNS
    /// service's answer has not expired).
    fn resolved(&self, holder: &Holder, name: &str, addr: IpAddr) -> bool;

    /// The policy configuration now.
    fn config(&self) -> Arc<PolicyConfig>;
}

/// Why the gateway reset a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Denial {
    /// The name is not one the sandbox may reach, or did not resolve for
    /// it to this address (or a request named two).
    NameMismatch,
    /// No server name in the ClientHello, no `Host` in the request, or
    /// nothing sent in time.
    NoServerName,
    /// The ClientHello's real server name is encrypted (ECH).
    EncryptedClientHello,
    /// Neither a TLS ClientHello nor an HTTP/1 request.
    UnrecognizedProtocol,
    /// The sandbox is gone, or was cut off, while its connection was open.
    Blocked,
    /// The name has HTTP rules, which the gateway cannot check inside a
    /// TLS connection it does not terminate.
    HttpRulesNeedTermination,
    /// HTTP rules refused a request (answered 403, the connection kept).
    Http(sandgate_policy::HttpRefusal),
    /// The sandbox's TLS handshake with the gateway failed, for a name
    /// the gateway terminates (most often: its trust store lacks the
    /// gateway's CA).
    TlsHandshake,
    /// The destination's certificate is not one the host's roots vouch
    /// for (answered 502).
    UpstreamUntrusted,
    /// The policy denies the original destination (an always-denied
    /// range, a private range, a `networkDenyList` entry, `blocked`) or
    /// the name (a `domainDenyList` entry): the policy's reason code.
    Policy(String),
}

impl Denial {
    /// The reason code of its deny event.
    pub fn code(&self) -> String {
        match self {
            Denial::NameMismatch => "name_mismatch".into(),
            Denial::NoServerName => "no_server_name".into(),
            Denial::EncryptedClientHello => "encrypted_client_hello".into(),
            Denial::UnrecognizedProtocol => "unrecognized_protocol".into(),
            Denial::Blocked => "blocked".into(),
            Denial::HttpRulesNeedTermination => "http_rules_need_termination".into(),
            Denial::Http(refusal) => refusal.code().into(),
            Denial::TlsHandshake => "tls_handshake_failed".into(),
            Denial::UpstreamUntrusted => "upstream_certificate_untrusted".into(),
            Denial::Policy(code) => code.clone(),
        }
    }
}

/// A connection the gateway reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayEvent {
    /// The slot of the sandbox.
    pub slot: u32,
    /// When.
    pub time: SystemTime,
    /// The connection's original destination.
    pub destination: SocketAddr,
    /// The name it was for, if it named one.
    pub name: Option<String>,
    /// Why.
    pub reason: String,
}

/// How the gateway runs.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The port it listens on, on every address of the host namespace
    /// (the dataplane redirects steered connections to it).
    pub port: u16,
    /// Threads of its runtime.
    pub workers: usize,
    /// Connections open at once, from all sandboxes; more are reset.
    pub max_connections: u64,
    /// How long a connection may take to say what it is for.
    pub hello_timeout: Duration,
    /// How long a connection to a destination may take.
    pub connect_timeout: Duration,
    /// Termination of TLS for the names whose requests the gateway must
    /// read; without it, TLS to such a name is refused.
    pub terminator: Option<Arc<terminate::Terminator>>,
}

impl GatewayConfig {
    /// Defaults for everything but the port.
    pub fn new(port: u16) -> GatewayConfig {
        GatewayConfig {
            port,
            workers: 2,
            max_connections: 65_536,
            hello_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            terminator: None,
        }
    }
}

/// What the gateway has done since it started.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections steered to it.
    pub accepted: AtomicU64,
    /// Connections passed on to their destination.
    pub passed: AtomicU64,
    /// Connections reset for a reason of [`Denial`].
    pub refused: AtomicU64,
    /// Connections cut by a policy change.
    pub cut: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Events lost because nobody read them in time.
    pub events_lost: AtomicU64,
    /// Requests in which a secret was put in its placeholder's place.
    pub secrets_replaced: AtomicU64,
    /// Flow records lost because nobody read them in time.
    pub flows_lost: AtomicU64,
}

/// A passed connection, cut by [`Gateway::revalidate`] when its name is
/// no longer allowed.
struct Tracked {
    lease: u64,
    /// Whether it is TLS relayed as it is (not terminated).
    tls: bool,
    /// Its original destination.
    dest: IpAddr,
    /// The name it was passed for (for HTTP: its last request's).
    name: Arc<Mutex<Option<String>>>,
    cut: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Registry {
    next: u64,
    by_slot: HashMap<u32, HashMap<u64, Tracked>>,
    /// Moves on at every revalidation of a slot: a connection checked
    /// under one epoch and registered under another is checked again.
    epoch: HashMap<u32, u64>,
}

struct Shared {
    cfg: GatewayConfig,
    directory: Arc<dyn Directory>,
    catalog: Arc<Catalog>,
    registry: Mutex<Registry>,
    events: SyncSender<GatewayEvent>,
    flows: flows::FlowSink,
    counters: Arc<Counters>,
}

/// Takes a lock, also one whose holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `policy` lets a connection to `dest` run on under `name`
/// (normalized; `None` before an HTTP connection's first request), relayed
/// as TLS it does not see into (`tls`) or as HTTP it reads. The name's
/// binding to the address is checked apart ([`Directory::resolved`]).
fn policy_passes(
    policy: &EffectivePolicy,
    catalog: &Catalog,
    config: &PolicyConfig,
    (dest, tls): (IpAddr, bool),
    name: Option<&str>,
) -> Result<(), Denial> {
    let compiled = CompiledPolicy::new(policy.clone(), catalog, config);
    let verdict = compiled.explain(&Destination {
        target: Target::Address(dest),
        port: None,
    });
    // An address admitted by name is in no list: "not in the allow list"
    // and "restricted to essential services" are what its name's
    // admission answers. Every other refusal stands (and a deny list
    // wins over the admission).
    if !verdict.allowed
        && !matches!(
            verdict.reason,
            Reason::NotInAllowList | Reason::RestrictedByTier
        )
    {
        return Err(Denial::Policy(verdict.reason.event_code()));
    }
    let Some(name) = name else {
        return Ok(());
    };
    if let Some(denied) = compiled.name_denied(name) {
        return Err(Denial::Policy(denied.event_code()));
    }
    let allowed = match policy.mode {
        Mode::Open => true,
        Mode::Blocked => false,
        Mode::Restricted | Mode::Allowlist => compiled.name_rule(name).is_some(),
    };
    if !allowed {
        Err(Denial::NameMismatch)
    } else if tls && policy.http_rules.covers(name) {
        // Its requests cannot be checked: refused rather than let
        // through unchecked.
        Err(Denial::HttpRulesNeedTermination)
    } else {
        Ok(())
    }
}

impl Shared {
    fn report(
        &self,
        holder: &Holder,
        destination: SocketAddr,
        name: Option<&str>,
        denial: &Denial,
    ) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        self.event(holder, destination, name, denial.code());
    }

    /// Tells of something on `holder`'s connection to `destination`
    /// (a refusal, or a secret's placeholder left as it is).
    fn event(&self, holder: &Holder, destination: SocketAddr, name: Option<&str>, reason: String) {
        let event = GatewayEvent {
            slot: holder.slot,
            time: SystemTime::now(),
            destination,
            name: name.map(str::to_string),
            reason,
        };
        if self.events.try_send(event).is_err() {
            self.counters.events_lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Resets `down` for `denial`, reported as an event and in `flow`'s
    /// record.
    fn refuse(
        &self,
        (holder, flow): (&Holder, &flows::FlowTrack),
        dest: SocketAddr,
        down: &TcpStream,
        name: Option<&str>,
        denial: Denial,
    ) {
        flow.refuse(denial.code(), name);
        self.report(holder, dest, name, &denial);
        reset(down);
    }

    /// The name `raw` as checked, if `holder` may reach it at `dest` (by
    /// TLS relayed as it is, `tls`, or by HTTP).
    fn check(
        &self,
        holder: &Holder,
        raw: &str,
        (dest, tls): (IpAddr, bool),
    ) -> Result<String, Denial> {
        let name = DomainName::parse(raw).map_err(|_| Denial::NameMismatch)?;
        let name = name.as_str();
        let config = self.directory.config();
        policy_passes(
            &holder.policy,
            &self.catalog,
            &config,
            (dest, tls),
            Some(name),
        )?;
        if holder.policy.mode == Mode::Open || self.directory.resolved(holder, name, dest) {
            Ok(name.to_string())
        } else {
            Err(Denial::NameMismatch)
        }
    }

    fn epoch(&self, slot: u32) -> u64 {
        lock(&self.registry).epoch.get(&slot).copied().unwrap_or(0)
    }

    /// Tracks a passed connection of `holder` (whose address is
    /// `source`); `None` if the slot was revalidated since `epoch` and
    /// the connection's name is no longer allowed.
    fn track(
        self: &Arc<Self>,
        holder: &Holder,
        (source, dest, tls): (IpAddr, IpAddr, bool),
        name: Arc<Mutex<Option<String>>>,
        epoch: u64,
    ) -> Option<(Untrack, oneshot::Receiver<()>)> {
        let (tx, rx) = oneshot::channel();
        let mut checked = epoch;
        let mut reg = lock(&self.registry);
        loop {
            let now = reg.epoch.get(&holder.slot).copied().unwrap_or(0);
            if now == checked {
                break;
            }
            drop(reg);
            // A policy change came between the check and now: the
            // connection is checked against its holder as it is now
            // (again, until no change comes in between).
            let config = self.directory.config();
            let current = self
                .directory
                .sandbox(source)
                .filter(|h| h.lease == holder.lease)?;
            let name = lock(&name).clone();
            policy_passes(
                &current.policy,
                &self.catalog,
                &config,
                (dest, tls),
                name.as_deref(),
            )
            .ok()?;
            checked = now;
            reg = lock(&self.registry);
        }
        reg.next += 1;
        let id = reg.next;
        reg.by_slot.entry(holder.slot).or_default().insert(
            id,
            Tracked {
                lease: holder.lease,
                tls,
                dest,
                name,
                cut: Some(tx),
            },
        );
        Some((
            Untrack {
                shared: self.clone(),
                slot: holder.slot,
                id,
            },
            rx,
        ))
    }
}

/// Forgets a tracked connection when it ends.
struct Untrack {
    shared: Arc<Shared>,
    slot: u32,
    id: u64,
}

impl Drop for Untrack {
    fn drop(&mut self) {
        let mut reg = lock(&self.shared.registry);
        if let Some(conns) = reg.by_slot.get_mut(&self.slot) {
            conns.remove(&self.id);
            if conns.is_empty() {
                reg.by_slot.remove(&self.slot);
            }
        }
    }
}

/// The running gateway: its listeners on a runtime of its own.
pub struct Gateway {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// Flow records that wait for a reader before new ones are counted and
/// dropped (`Counters::flows_lost`).
const FLOW_QUEUE: usize = 8192;

fn listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        // Each family apart: the original destination is read with the
        // family's own option.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

impl Gateway {
    /// Starts listening on `cfg.port` in `host` (or here, for `None`);
    /// the connections it resets are told, in order, on the first
    /// receiver, and the record of each connection (see [`flows`]) on the
    /// second.
    pub fn start(
        host: Option<&Netns>,
        cfg: GatewayConfig,
        directory: Arc<dyn Directory>,
        catalog: Arc<Catalog>,
    ) -> io::Result<(
        Gateway,
        Receiver<GatewayEvent>,
        Receiver<flows::GatewayFlow>,
    )> {
        let (events_tx, events) = sync_channel(4096);
        let (flows_tx, flow_records) = sync_channel(FLOW_QUEUE);
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            cfg,
            directory,
            catalog,
            registry: Mutex::new(Registry::default()),
            events: events_tx,
            flows: flows::FlowSink {
                tx: flows_tx,
                counters: counters.clone(),
                next: Arc::new(AtomicU64::new(0)),
            },
            counters,
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let run = {
            let shared = shared.clone();
            move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(shared.cfg.workers.max(1))
                    .thread_name("sandgate-gateway")
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
                    let port = shared.cfg.port;
                    let bound = (|| {
                        let v4 = listener(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
                        let v6 = listener(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))?;
                        Ok::<_, io::Error>((TcpListener::from_std(v4)?, TcpListener::from_std(v6)?))
                    })();
                    match bound {
                        Ok((v4, v6)) => {
                            let _ = ready_tx.send(Ok(()));
                            tokio::select! {
                                _ = async { tokio::join!(serve(shared.clone(), v4), serve(shared.clone(), v6)) } => {}
                                _ = stop_rx => {}
                            }
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
                // Connections still open end here (their sockets close).
                rt.shutdown_timeout(Duration::from_secs(1));
            }
        };
        let thread = match host {
            Some(ns) => ns.spawn("sandgate-gateway", Box::new(run))?,
            None => std::thread::Builder::new()
                .name("sandgate-gateway".into())
                .spawn(run)?,
        };
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("the gateway's thread ended before it served"))??;
        let gateway = Gateway {
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        Ok((gateway, events, flow_records))
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Cuts the connections of `slot` that its holder's policy no longer
    /// allows: all of them if `now` is `None` (the slot is cut off or
    /// deleted) or another holder's, else those whose name `now.policy`
    /// has no rule for (or every one, for `blocked`).
    pub fn revalidate(&self, slot: u32, now: Option<&Holder>) {
        let config = self.shared.directory.config();
        let mut reg = lock(&self.shared.registry);
        *reg.epoch.entry(slot).or_insert(0) += 1;
        let Some(conns) = reg.by_slot.get_mut(&slot) else {
            return;
        };
        let mut cut = 0;
        for t in conns.values_mut() {
            let keep = now.is_some_and(|h| {
                let name = lock(&t.name).clone();
                h.lease == t.lease
                    && policy_passes(
                        &h.policy,
                        &self.shared.catalog,
                        &config,
                        (t.dest, t.tls),
                        name.as_deref(),
                    )
                    .is_ok()
            });
            if !keep {
                if let Some(tx) = t.cut.take() {
                    let _ = tx.send(());
                    cut += 1;
                }
            }
        }
        self.shared.counters.cut.fetch_add(cut, Ordering::Relaxed);
    }

    /// Cuts every connection of `slot`.
    pub fn cut(&self, slot: u32) {
        self.revalidate(slot, None);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the gateway's thread panicked");
            }
        }
    }
}

async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: the next accept may succeed.
                tracing::warn!(error = %e, "gateway: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        if shared.counters.active.load(Ordering::Relaxed) >= shared.cfg.max_connections {
            reset(&conn);
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.counters.active.fetch_add(1, Ordering::Relaxed);
            handle(shared.clone(), conn, peer).await;
            shared.counters.active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Makes the socket's close a reset.
fn reset(conn: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(conn).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(error = %e, "gateway: cannot make a close a reset");
    }
}

/// The destination a redirected connection was sent to.
fn original_destination(conn: &TcpStream) -> io::Result<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let local = conn.local_addr()?;
    if local.is_ipv4() {
        let a = getsockopt(conn, sockopt::OriginalDst).map_err(io::Error::from)?;
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
            u16::from_be(a.sin_port),
        )))
    } else {
        let a = getsockopt(conn, sockopt::Ip6tOriginalDst).map_err(io::Error::from)?;
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(a.sin6_addr.s6_addr),
            u16::from_be(a.sin6_port),
            0,
            0,
        )))
    }
}

/// Reads until the first bytes say what the connection is for (or it
/// ends, or sends too much without saying).
async fn first_bytes(conn: &mut TcpStream) -> io::Result<(Vec<u8>, Hello)> {
    let mut buf = Vec::with_capacity(2048);
    loop {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok((buf, Hello::Incomplete));
        }
        buf.extend_from_slice(&chunk[..n]);
        match hello::parse(&buf) {
            Hello::Incomplete => {}
            other => return Ok((buf, other)),
        }
    }
}

async fn handle(shared: Arc<Shared>, mut down: TcpStream, peer: SocketAddr) {
    // What the gateway writes (a handshake's flights, an answer's head) is
    // sent at once, not held for the sandbox's next acknowledgement.
    if let Err(e) = down.set_nodelay(true) {
        tracing::debug!(error = %e, "gateway: cannot set nodelay");
    }
    let source = peer.ip().to_canonical();
    let Some(holder) = shared.directory.sandbox(source) else {
        // Not a sandbox, or one cut off: nothing passes.
        reset(&down);
        return;
    };
    let dest = match original_destination(&down) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, %peer, "gateway: a connection with no original destination");
            reset(&down);
            return;
        }
    };
    let flow = Arc::new(flows::FlowTrack::new(
        &shared.flows,
        (holder.slot, holder.lease),
        peer,
        dest,
    ));
    let me = (&holder, &*flow);
    let config = shared.directory.config();
    if let Err(denial) = policy_passes(
        &holder.policy,
        &shared.catalog,
        &config,
        (dest.ip(), false),
        None,
    ) {
        return shared.refuse(me, dest, &down, None, denial);
    }
    let epoch = shared.epoch(holder.slot);
    let first = tokio::time::timeout(shared.cfg.hello_timeout, first_bytes(&mut down)).await;
    let (buf, hello) = match first {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "gateway: a connection ended before it said what for");
            return reset(&down);
        }
        Err(_) => return shared.refuse(me, dest, &down, None, Denial::NoServerName),
    };
    match hello {
        Hello::ServerName(raw) => {
            flow.set_tls();
            // A name whose requests must be read is terminated, where the
            // gateway can; otherwise relayed as it is.
            let terminator = shared.cfg.terminator.clone().filter(|_| {
                DomainName::parse(&raw).is_ok_and(|n| {
                    holder.policy.http_rules.covers(n.as_str())
                        || holder.secrets.iter().any(|s| s.covers(n.as_str()))
                })
            });
            let name = match shared.check(&holder, &raw, (dest.ip(), terminator.is_none())) {
                Ok(name) => name,
                Err(denial) => return shared.refuse(me, dest, &down, Some(&raw), denial),
            };
            if let Some(terminator) = terminator {
                let guard = match down.try_clone_fd() {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::warn!(error = %e, "gateway: cannot keep a handle on a connection");
                        return reset(&down);
                    }
                };
                let io = http::Prefixed::new(buf, down, flow.counts.clone());
                let accept = terminator.acceptor().accept(io);
                match tokio::time::timeout(shared.cfg.hello_timeout, accept).await {
                    Ok(Ok(tls)) => {
                        let sni = Some(name);
                        let conn = (source, dest, flow);
                        serve_http(&shared, &holder, conn, tls, guard, sni, epoch).await;
                    }
                    Ok(Err(e)) => {
                        // Most often: the client does not trust the
                        // gateway's CA (a trust store without it).
                        tracing::debug!(error = %e, "gateway: a terminated handshake failed");
                        flow.refuse(Denial::TlsHandshake.code(), Some(&name));
                        shared.report(&holder, dest, Some(&name), &Denial::TlsHandshake);
                        guard.reset();
                    }
                    Err(_) => {
                        flow.refuse(Denial::TlsHandshake.code(), Some(&name));
                        shared.report(&holder, dest, Some(&name), &Denial::TlsHandshake);
                        guard.reset();
                    }
                }
                return;
            }
            *lock(&flow.name) = Some(name.clone());
            let Some((_untrack, cut)) =
                shared.track(&holder, (source, dest.ip(), true), flow.name.clone(), epoch)
            else {
                return shared.refuse(me, dest, &down, Some(&name), Denial::NameMismatch);
            };
            shared.counters.passed.fetch_add(1, Ordering::Relaxed);
            flow.open();
            // Boxed: the compiler cannot prove the state machine `Send`
            // when this one is inlined in it (a known limit of its
            // higher-ranked lifetime inference).
            let relay: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(pass_tls(
                Dial::of(&holder, dest, shared.cfg.connect_timeout),
                down,
                buf,
                (cut, flow.counts.clone()),
            ));
            relay.await;
        }
        Hello::NotTls => {
            let guard = match down.try_clone_fd() {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "gateway: cannot keep a handle on a connection");
                    return reset(&down);
                }
            };
            let io = http::Prefixed::new(buf, down, flow.counts.clone());
            let conn = (source, dest, flow.clone());
            serve_http(&shared, &holder, conn, io, guard, None, epoch).await;
        }
        // Closed before a byte was sent (a connect test, a port scan):
        // nothing was asked, nothing to report.
        Hello::Incomplete if buf.is_empty() => {}
        Hello::NoServerName | Hello::Incomplete => {
            shared.refuse(me, dest, &down, None, Denial::NoServerName)
        }
        Hello::Encrypted => shared.refuse(me, dest, &down, None, Denial::EncryptedClientHello),
        Hello::Malformed => shared.refuse(me, dest, &down, None, Denial::UnrecognizedProtocol),
    }
}

/// Serves the HTTP requests of `holder`'s connection `io` (in the clear,
/// or TLS the gateway terminated for `sni`), each one checked, until it
/// ends or a policy change cuts it; `guard` makes its close a reset.
async fn serve_http<IO>(
    shared: &Arc<Shared>,
    holder: &Holder,
    (source, dest, flow): (IpAddr, SocketAddr, Arc<flows::FlowTrack>),
    io: IO,
    guard: FdGuard,
    sni: Option<String>,
    epoch: u64,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let name = flow.name.clone();
    *lock(&name) = sni.clone();
    let Some((_untrack, cut)) =
        shared.track(holder, (source, dest.ip(), false), name.clone(), epoch)
    else {
        // A policy change since the check took the name away.
        flow.refuse(Denial::NameMismatch.code(), sni.as_deref());
        return guard.reset();
    };
    let tls = match (&sni, &shared.cfg.terminator) {
        (None, _) => None,
        (Some(n), Some(t)) => match terminate::Terminator::server_name(n) {
            Ok(server) => Some((t.connector(), server)),
            Err(e) => {
                tracing::warn!(error = %e, "gateway: a terminated name is no server name");
                flow.refuse(Denial::TlsHandshake.code(), Some(n));
                return guard.reset();
            }
        },
        (Some(n), None) => {
            flow.refuse(Denial::TlsHandshake.code(), Some(n));
            return guard.reset();
        }
    };
    let upstream = http::Upstream {
        dial: Dial::of(holder, dest, shared.cfg.connect_timeout),
        tls,
    };
    let check = Arc::new(HttpCheck {
        guard,
        shared: shared.clone(),
        holder: holder.clone(),
        source,
        dest,
        name,
        sni,
        passed: AtomicU64::new(0),
        flow,
    });
    // Boxed for the same reason as the TLS relay.
    let served: Pin<Box<dyn Future<Output = Result<(), http::RelayError>> + Send>> =
        Box::pin(http::serve(io, upstream, check.clone()));
    tokio::select! {
        r = served => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "gateway: an HTTP connection ended");
                // Bytes that are no HTTP/1 request are reported (hyper
                // answered 400 and closed); a refused request was reported
                // by its check, and reset.
                if matches!(&e, http::RelayError::Http(h) if h.is_parse() || h.is_parse_too_large()) {
                    check.flow.refuse(Denial::UnrecognizedProtocol.code(), None);
                    shared.report(holder, dest, None, &Denial::UnrecognizedProtocol);
                }
            }
        }
        // The connection (`served`, dropped after this branch) closes
        // with a reset.
        _ = cut => check.guard.reset(),
    }
}

/// Headers with which servers take another method or path than the
/// request line's: taken out of requests to names with HTTP rules.
const OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// A second descriptor of a connection handed to `hyper`, with which the
/// gateway makes its close a reset.
struct FdGuard(std::os::fd::OwnedFd);

impl FdGuard {
    /// The connection's close (by whoever closes it last) is a reset.
    fn reset(&self) {
        if let Err(e) = socket2::SockRef::from(&self.0).set_linger(Some(Duration::ZERO)) {
            tracing::debug!(error = %e, "gateway: cannot make a close a reset");
        }
    }
}

trait CloneFd {
    fn try_clone_fd(&self) -> io::Result<FdGuard>;
}

impl CloneFd for TcpStream {
    fn try_clone_fd(&self) -> io::Result<FdGuard> {
        use std::os::fd::AsFd;
        Ok(FdGuard(self.as_fd().try_clone_to_owned()?))
    }
}

/// The check of each request of one HTTP connection.
struct HttpCheck {
    /// The sandbox's side, to make its close a reset.
    guard: FdGuard,
    shared: Arc<Shared>,
    holder: Holder,
    source: IpAddr,
    dest: SocketAddr,
    /// The name of the last request passed (what a revalidation checks).
    name: Arc<Mutex<Option<String>>>,
    /// The server name of a terminated connection: every request's name
    /// must be it (the gateway's own TLS went to it).
    sni: Option<String>,
    passed: AtomicU64,
    /// The connection's record in the flow log.
    flow: Arc<flows::FlowTrack>,
}

impl http::Check for HttpCheck {
    fn request(&self, asked: &http::Asked<'_>) -> Result<(), Denial> {
        let checked = match asked.name {
            None => Err(Denial::NoServerName),
            Some(raw) => {
                // The holder's policy as it is now (an update since the
                // connection opened counts).
                let holder = self
                    .shared
                    .directory
                    .sandbox(self.source)
                    .filter(|h| h.lease == self.holder.lease);
                match holder {
                    None => Err(Denial::Blocked),
                    Some(h) => self
                        .shared
                        .check(&h, raw, (self.dest.ip(), false))
                        .map(|name| (h, name)),
                }
            }
        };
        let checked = checked.and_then(|(h, name)| match &self.sni {
            // Another site asked of a connection terminated for one
            // name (domain fronting).
            Some(sni) if *sni != name => Err(Denial::NameMismatch),
            _ => Ok((h, name)),
        });
        let (holder, name) = match checked {
            Ok(passed) => passed,
            Err(denial) => {
                self.flow.refuse(denial.code(), asked.name);
                self.shared
                    .report(&self.holder, self.dest, asked.name, &denial);
                // hyper closes the connection when the check fails: that
                // close is a reset.
                self.guard.reset();
                return Err(denial);
            }
        };
        *lock(&self.name) = Some(name.clone());
        // The connection passed for its name (a request the HTTP rules
        // refuse is an event; the connection stays).
        self.flow.open();
        if let Err(refusal) = holder
            .policy
            .http_rules
            .check(&name, asked.method, asked.path)
        {
            // Answered 403; the connection stays (its name passed).
            let denial = Denial::Http(refusal);
            self.shared
                .report(&self.holder, self.dest, Some(&name), &denial);
            return Err(denial);
        }
        if self.passed.fetch_add(1, Ordering::Relaxed) == 0 {
            self.shared.counters.passed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn refused(&self, name: Option<&str>, denial: &Denial) {
        self.shared.report(&self.holder, self.dest, name, denial);
    }

    fn rewrite(&self, name: &str, headers: &mut hyper::HeaderMap) -> Vec<String> {
        let Ok(name) = DomainName::parse(name) else {
            return Vec::new();
        };
        if self.holder.policy.http_rules.covers(name.as_str()) {
            // Headers with which a server takes another method or path
            // than the request's, the one the rules checked.
            for h in OVERRIDE_HEADERS {
                headers.remove(*h);
            }
        }
        let done = secrets::rewrite(
            &self.holder.secrets,
            name.as_str(),
            self.sni.is_some(),
            headers,
        );
        let notes = [
            (!done.unlisted.is_empty(), "secret_to_unlisted_host"),
            (!done.plain.is_empty(), "secret_over_plain_http"),
            (
                !done.elsewhere.is_empty(),
                "secret_outside_credential_headers",
            ),
        ];
        for (_, reason) in notes.iter().filter(|(any, _)| *any) {
            self.shared.event(
                &self.holder,
                self.dest,
                Some(name.as_str()),
                (*reason).into(),
            );
        }
        if !done.replaced.is_empty() {
            self.shared
                .counters
                .secrets_replaced
                .fetch_add(1, Ordering::Relaxed);
        }
        done.replaced
    }

    fn unrewrite(&self, replaced: &[String], headers: &mut hyper::HeaderMap) {
        secrets::unrewrite(&self.holder.secrets, replaced, headers);
    }
}

/// Relays a passed TLS connection: the hello first, then `splice`.
async fn pass_tls(
    dial: Dial,
    down: TcpStream,
    hello: Vec<u8>,
    (cut, counts): (oneshot::Receiver<()>, Arc<flows::FlowCounts>),
) {
    use tokio::io::AsyncWriteExt;
    let mut up = match dial.connect().await {
        Ok(up) => up,
        Err(e) => {
            tracing::debug!(error = %e, dest = %dial.dest, "gateway: the destination could not be reached");
            return reset(&down);
        }
    };
    if let Err(e) = up.set_nodelay(true) {
        tracing::debug!(error = %e, "gateway: cannot set nodelay");
    }
    if let Err(e) = up.write_all(&hello).await {
        tracing::debug!(error = %e, "gateway: the destination went away");
        return reset(&down);
    }
    counts.add_up(hello.len());
    tokio::select! {
        r = splice::relay(&down, &up, &counts) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "gateway: a relayed connection ended");
                reset(&down);
                reset(&up);
            }
        }
        _ = cut => {
            reset(&down);
            reset(&up);
        }
    }
}
