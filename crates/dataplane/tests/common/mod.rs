//! The rig of the dataplane tests: a lab, a dataplane in its host
//! namespace, and helpers to make sandboxes and probe from them.

#![allow(dead_code, clippy::unwrap_used)]

use sandgate_dataplane::probe::{reachable, Proto};
use sandgate_dataplane::{Dataplane, DataplaneConfig, SlotAddrs};
use sandgate_lab::addrs::*;
use sandgate_lab::Lab;
use sandgate_netns::Netns;
use sandgate_policy::{
    Catalog, CompiledPolicy, Destination, EffectivePolicy, PolicyConfig, SettingsRequest,
};
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long a probe waits for an answer. The lab answers in well under a
/// millisecond; a drop is only seen by waiting.
pub const WAIT: Duration = Duration::from_millis(400);

pub struct Rig {
    pub dp: Option<Dataplane>,
    pub policy: PolicyConfig,
    pub catalog: Catalog,
    pub cfg: DataplaneConfig,
    dir: PathBuf,
    // Dropped last: removes every namespace made in it.
    pub lab: Lab,
}

pub use sandgate_lab::lab_policy;

impl Rig {
    pub fn new() -> Rig {
        Rig::with(|_| {})
    }

    pub fn with(tweak: impl FnOnce(&mut DataplaneConfig)) -> Rig {
        let lab = Lab::up().unwrap();
        let policy = lab_policy();
        let dir = std::env::temp_dir().join(format!("sandgate-test-{}", lab.tag()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = DataplaneConfig::new(&policy, lab.tag(), dir.join("dataplane.json")).unwrap();
        cfg.host_netns = Some(lab.host().name().to_string());
        // The fast path as a server has it (auto), or as asked:
        // scripts/test runs these tests again with it off.
        if let Ok(mode) = std::env::var("SANDGATE_TEST_FAST_PATH") {
            cfg.fast_path = mode.parse().expect("SANDGATE_TEST_FAST_PATH");
        }
        tweak(&mut cfg);
        let (dp, _) = Dataplane::start(cfg.clone(), policy.clone()).unwrap();
        Rig {
            dp: Some(dp),
            policy,
            catalog: Catalog::builtin(),
            cfg,
            dir,
            lab,
        }
    }

    pub fn dp(&mut self) -> &mut Dataplane {
        self.dp.as_mut().unwrap()
    }

    /// The effective policy of a sandbox of `tier` with these settings.
    pub fn resolve(&self, tier: u8, request: SettingsRequest<'_>) -> EffectivePolicy {
        let settings = self.policy.settings_for_create(tier, &request).unwrap();
        self.policy.resolve(tier, &settings).unwrap()
    }

    /// A sandbox's slot, and its namespace, its fast path program
    /// attached after the create, as the runner's refiller does.
    pub fn sandbox(&mut self, name: &str, policy: &EffectivePolicy) -> (SlotAddrs, Netns) {
        let slot = self.dp().create(name, policy).unwrap();
        self.dp().attach_later();
        let ns = Netns::open(&slot.netns).unwrap();
        (slot, ns)
    }

    /// What `explain` says of `dest` (and `port`) under `policy`.
    pub fn expected(&self, policy: &EffectivePolicy, dest: IpAddr, port: Option<u16>) -> bool {
        let compiled = CompiledPolicy::new(policy.clone(), &self.catalog, &self.policy);
        let text = match (dest, port) {
            (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
            (a, Some(p)) => format!("{a}:{p}"),
            (a, None) => a.to_string(),
        };
        let d: Destination = text.parse().unwrap();
        compiled.explain(&d).allowed
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.dp = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn probe(ns: &Netns, proto: Proto, dest: IpAddr, port: u16) -> bool {
    assert!(is_lab_address(dest), "{dest} is not a lab address");
    reachable(ns, proto, dest, port, WAIT).unwrap()
}

pub fn open() -> SettingsRequest<'static> {
    SettingsRequest::default()
}

pub fn allow(list: &'static str) -> SettingsRequest<'static> {
    SettingsRequest {
        network_allow_list: Some(list),
        ..Default::default()
    }
}

pub fn blocked() -> SettingsRequest<'static> {
    SettingsRequest {
        network_block_all: Some(true),
        ..Default::default()
    }
}

/// The rule of an admission for an essential service.
pub fn essential() -> sandgate_policy::Reason {
    sandgate_policy::Reason::EssentialService("python".into())
}

pub fn allow_domains(list: &'static str) -> SettingsRequest<'static> {
    SettingsRequest {
        domain_allow_list: Some(list),
        ..Default::default()
    }
}

/// A thread that counts what it receives (bytes, echoes) until dropped.
pub struct Counting {
    pub count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Counting {
    /// Runs `body` on a thread of its own with the count and the stop flag.
    fn spawn(body: impl FnOnce(&AtomicU64, &AtomicBool) + Send + 'static) -> Counting {
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let thread = thread::spawn(move || body(&c, &s));
        Counting {
            count,
            stop,
            thread: Some(thread),
        }
    }

    /// What was counted during `window`, starting now.
    pub fn progress(&self, window: Duration) -> u64 {
        let before = self.count.load(Ordering::SeqCst);
        thread::sleep(window);
        self.count.load(Ordering::SeqCst) - before
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A running download from the world's stream service, counting bytes.
pub fn transfer(ns: &Netns, server: IpAddr) -> Counting {
    // A small receive buffer (64 KiB, which the kernel doubles): what
    // the host let through is counted within about 128 KiB however
    // late the reader runs on a busy machine, so a count taken after
    // an update holds little that passed before it (with the buffer
    // grown by autotuning it held 4.5 MiB once, under the whole
    // suite's load).
    let mut conn = ns
        .run(|| {
            let to = SocketAddr::new(server, TCP_STREAM);
            let s = socket2::Socket::new(
                socket2::Domain::for_address(to),
                socket2::Type::STREAM,
                None,
            )?;
            s.set_recv_buffer_size(64 * 1024)?;
            s.connect_timeout(&to.into(), WAIT)?;
            Ok(TcpStream::from(s))
        })
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    Counting::spawn(move |bytes, stop| {
        let mut buf = [0u8; 64 * 1024];
        while !stop.load(Ordering::SeqCst) {
            if let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    return;
                }
                bytes.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    })
}

/// A UDP socket in `ns` connected to the world's echo service at
/// `server`.
pub fn udp_echo_socket(ns: &Netns, server: IpAddr) -> UdpSocket {
    ns.run(|| {
        let any: IpAddr = match server {
            IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        let s = UdpSocket::bind(SocketAddr::new(any, 0))?;
        s.connect(SocketAddr::new(server, UDP_ECHO))?;
        Ok(s)
    })
    .unwrap()
}

/// A running exchange with the world's UDP echo service: a datagram every
/// 2 ms, counting the echoes.
pub fn udp_stream(ns: &Netns, server: IpAddr) -> Counting {
    let socket = udp_echo_socket(ns, server);
    socket
        .set_read_timeout(Some(Duration::from_millis(2)))
        .unwrap();
    Counting::spawn(move |echoes, stop| {
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::SeqCst) {
            let _ = socket.send(b"sandgate fast path");
            while socket.recv(&mut buf).is_ok() {
                echoes.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
}
