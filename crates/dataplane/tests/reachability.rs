//! The reachability matrix: for each mode, from inside a slot, TCP, UDP and
//! ICMP over IPv4 and IPv6 to listed, public, private and always-denied
//! destinations. What gets through must be exactly what `explain` says.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sandgate_dataplane::probe::Proto;
use sandgate_lab::addrs::*;
use sandgate_policy::SettingsRequest;
use std::net::IpAddr;
use std::time::Duration;

const TARGETS: [IpAddr; 8] = [
    SERVER4,
    SERVER4_B,
    SERVER6,
    SERVER6_B,
    PRIVATE_SERVER4,
    PRIVATE_SERVER6,
    DENIED_SERVER4,
    DENIED_SERVER6,
];

const PROTOS: [(Proto, u16); 3] = [
    (Proto::Tcp, TCP_ECHO),
    (Proto::Udp, UDP_ECHO),
    (Proto::Icmp, 0),
];

/// SERVER4 by address, the lab's private IPv4 range, SERVER6_B's /48.
const LIST: &str = "192.0.2.10/32, 203.0.113.128/26, 2001:db8:2::/48";

fn matrix(
    rig: &mut Rig,
    name: &str,
    tier: u8,
    request: SettingsRequest<'static>,
) -> (usize, usize) {
    let policy = rig.resolve(tier, request);
    let (_slot, ns) = rig.sandbox(name, &policy);
    let cases: Vec<(IpAddr, Proto, u16)> = TARGETS
        .iter()
        .flat_map(|t| PROTOS.iter().map(move |(p, port)| (*t, *p, *port)))
        .collect();
    // All probes of a mode at once: a drop costs a wait, not a reply.
    let observed: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(t, p, port)| {
                let ns = &ns;
                s.spawn(move || probe(ns, *p, *t, *port))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut mismatches = Vec::new();
    let mut allowed = 0;
    for ((target, proto, port), seen) in cases.iter().zip(&observed) {
        let port = (*proto != Proto::Icmp).then_some(*port);
        let expected = rig.expected(&policy, *target, port);
        allowed += usize::from(expected);
        if expected != *seen {
            mismatches.push(format!(
                "{name}: {proto:?} to {target}: expected {expected}, observed {seen}"
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    (allowed, cases.len() - allowed)
}

#[test]
fn observed_reachability_equals_explain_in_every_mode() {
    let mut rig = Rig::new();
    let (allowed, denied) = matrix(&mut rig, "open", 3, open());
    // Open: the four public servers over three protocols, nothing else.
    assert_eq!((allowed, denied), (12, 12));
    let (allowed, denied) = matrix(&mut rig, "allowlist", 3, allow(LIST));
    // SERVER4, SERVER6_B and the lab-private IPv4 server, three protocols each.
    assert_eq!((allowed, denied), (9, 15));
    let (allowed, _) = matrix(&mut rig, "restricted", 1, open());
    assert_eq!(
        allowed, 0,
        "restricted reaches addresses only through DNS admissions"
    );
    let (allowed, _) = matrix(&mut rig, "blocked", 3, blocked());
    assert_eq!(allowed, 0);
}

#[test]
fn dns_admissions_open_an_address_for_their_slot_only() {
    let mut rig = Rig::new();
    let restricted = rig.resolve(1, open());
    let (a, ns_a) = rig.sandbox("a", &restricted);
    let (_b, ns_b) = rig.sandbox("b", &restricted);
    assert!(!probe(&ns_a, Proto::Tcp, SERVER4_B, TCP_ECHO));
    rig.dp()
        .admit(a.index, SERVER4_B, &essential(), Duration::from_secs(60))
        .unwrap();
    rig.dp()
        .admit(a.index, SERVER6, &essential(), Duration::from_secs(60))
        .unwrap();
    assert!(probe(&ns_a, Proto::Tcp, SERVER4_B, TCP_ECHO));
    assert!(probe(&ns_a, Proto::Udp, SERVER6, UDP_ECHO));
    // Only that address, and only for that slot.
    assert!(!probe(&ns_a, Proto::Tcp, SERVER4, TCP_ECHO));
    assert!(!probe(&ns_b, Proto::Tcp, SERVER4_B, TCP_ECHO));
    // No admission may open a private or always-denied address.
    for addr in [PRIVATE_SERVER4, DENIED_SERVER6] {
        let err = rig
            .dp()
            .admit(a.index, addr, &essential(), Duration::from_secs(60))
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{addr}");
    }
    assert!(!probe(&ns_a, Proto::Tcp, PRIVATE_SERVER4, TCP_ECHO));
    // Open and blocked slots take no admissions.
    let open_policy = rig.resolve(3, open());
    let (o, _) = rig.sandbox("o", &open_policy);
    assert!(rig
        .dp()
        .admit(o.index, SERVER4, &essential(), Duration::from_secs(60))
        .is_err());
}

/// A small generator for the property test below (xorshift64*): the seed
/// is printed, and `SANDGATE_SEED` replays one.
struct Gen(u64);

impl Gen {
    fn seeded() -> Gen {
        let seed = std::env::var("SANDGATE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            });
        eprintln!("SANDGATE_SEED={seed}");
        Gen(seed)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let n = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        from[(n % from.len() as u64) as usize]
    }
}

/// The IPv4-mapped IPv6 spelling of an IPv4 address.
fn mapped(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    }
}

#[test]
fn explain_agrees_with_the_kernel_for_generated_destinations_in_every_mode() {
    let mut rig = Rig::new();
    let mut gen = Gen::seeded();
    // The host's addresses, read as the runner reads them: explain denies
    // them as the host's.
    let host: Vec<IpAddr> = rig
        .lab
        .host()
        .run(|| sandgate_netns::Rtnl::open()?.addresses())
        .unwrap()
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    let config = rig.policy.with_host_addresses(
        host.iter()
            .copied()
            .filter(|a| rig.policy.ranges().host_relevant(*a)),
    );
    // Another sandbox, with a listener-free stack: a SYN that reached it
    // would be answered by a reset, and count as reached.
    let other_policy = rig.resolve(3, open());
    let (other, _other_ns) = rig.sandbox("other", &other_policy);
    let world: Vec<IpAddr> = WORLD_ADDRESSES
        .iter()
        .map(|n| n.parse::<ipnet::IpNet>().unwrap().addr())
        .chain([WORLD_LINK4.addr(), WORLD_LINK6.addr()])
        .collect();
    let modes: [(&str, u8, SettingsRequest<'static>); 5] = [
        ("open", 3, open()),
        ("allowlist", 3, allow(LIST)),
        ("wide", 3, allow("0.0.0.0/0,::/0")),
        ("restricted", 1, open()),
        ("blocked", 3, blocked()),
    ];
    let mut seen_allowed = 0;
    for (name, tier, request) in modes {
        let policy = rig.resolve(tier, request);
        let (slot, ns) = rig.sandbox(name, &policy);
        let own = [IpAddr::V4(slot.sandbox4), IpAddr::V6(slot.sandbox6)];
        let mut targets: Vec<IpAddr> = world.clone();
        targets.extend([HOST_LINK4.addr(), HOST_LINK6.addr()]);
        targets.extend([
            IpAddr::V4(slot.gateway4),
            IpAddr::V6(slot.gateway6),
            IpAddr::V4(other.gateway4),
            IpAddr::V6(other.gateway6),
            IpAddr::V4(other.sandbox4),
            IpAddr::V6(other.sandbox6),
        ]);
        targets.extend(own);
        targets.extend(["127.0.0.1", "::1", "0.0.0.0", "::"].map(|a| a.parse::<IpAddr>().unwrap()));
        // Each IPv4 target also in its IPv4-mapped spelling.
        let v4: Vec<IpAddr> = targets.iter().copied().filter(IpAddr::is_ipv4).collect();
        targets.extend(v4.into_iter().map(mapped));
        let compiled = sandgate_policy::CompiledPolicy::new(policy.clone(), &rig.catalog, &config)
            .with_own_addresses(&own);
        // TCP to a port drawn for each target (every world address serves
        // all four), and UDP to the echo port where the target is egress.
        let mut cases = Vec::new();
        for t in targets {
            assert!(is_lab_address(t), "{t} is no lab address");
            let port = gen.pick(&[TCP_ECHO, TCP_STREAM, HTTP, HTTPS]);
            cases.push((t, Proto::Tcp, port));
            let verdict = compiled.explain(&sandgate_policy::Destination {
                target: sandgate_policy::Target::Address(t),
                port: Some(UDP_ECHO),
            });
            // (The world's link answers TCP only: its echo is bound to the
            // server addresses.)
            let link = [WORLD_LINK4.addr(), WORLD_LINK6.addr()].contains(&t.to_canonical());
            if verdict.reason != sandgate_policy::Reason::NotEgress && !link {
                cases.push((t, Proto::Udp, UDP_ECHO));
            }
        }
        let observed: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = cases
                .iter()
                .map(|(t, p, port)| {
                    let ns = &ns;
                    s.spawn(move || {
                        sandgate_dataplane::probe::reachable(ns, *p, *t, *port, WAIT).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut mismatches = Vec::new();
        for ((t, proto, port), seen) in cases.iter().zip(&observed) {
            let v = compiled.explain(&sandgate_policy::Destination {
                target: sandgate_policy::Target::Address(*t),
                port: Some(*port),
            });
            // Rows that leave the sandbox and got through.
            seen_allowed += usize::from(*seen && v.reason != sandgate_policy::Reason::NotEgress);
            if v.allowed != *seen {
                mismatches.push(format!(
                    "{name}: {proto:?} to {t} port {port}: explain says {} ({}), the kernel {}",
                    v.allowed,
                    v.reason.code(),
                    if *seen { "let it through" } else { "did not" }
                ));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }
    assert!(
        seen_allowed > 0,
        "nothing outside a sandbox was reached in any mode"
    );
    // IPv6 spellings a translator would carry (NAT64, 6to4) and the old
    // IPv4-compatible one are not sent (they are no lab address): explain
    // denies them, and the kernel's always-denied set holds them.
    let policy = rig.resolve(3, allow("0.0.0.0/0,::/0"));
    let compiled = sandgate_policy::CompiledPolicy::new(policy, &rig.catalog, &config);
    for spelled in ["64:ff9b::c000:20a", "2002:c000:20a::1", "::c000:20a"] {
        let v = compiled.explain(&format!("[{spelled}]:80").parse().unwrap());
        assert!(!v.allowed, "{spelled}: {}", v.rule);
        assert!(v.reason.code().starts_with("always_denied:"), "{spelled}");
        let table = rig.cfg.table.clone();
        let held = rig
            .lab
            .host()
            .run(|| {
                std::process::Command::new("nft")
                    .args(["get", "element", "inet", &table, "denied6"])
                    .arg(format!("{{ {spelled} }}"))
                    .output()
            })
            .unwrap();
        assert!(
            held.status.success(),
            "{spelled} is not in the kernel's denied6: {}",
            String::from_utf8_lossy(&held.stderr)
        );
    }
}

#[test]
fn a_one_way_udp_stream_passes_at_more_than_the_new_connection_rate() {
    // A flow that is never answered stays `new` in connection tracking;
    // once its first datagram was let out, the rest pass on its mark, and
    // are not counted as new connections (500 a second by default).
    let mut rig = Rig::new();
    let policy = rig.resolve(3, open());
    let (_slot, ns) = rig.sandbox("stream", &policy);
    let sink = rig
        .lab
        .world()
        .run(|| {
            let u = std::net::UdpSocket::bind(std::net::SocketAddr::new(SERVER4, 9995))?;
            u.set_read_timeout(Some(std::time::Duration::from_millis(500)))?;
            Ok(u)
        })
        .unwrap();
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut n = 0u32;
        while sink.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    let sent = 3_000u32;
    ns.run(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..sent {
            s.send_to(b"one way", std::net::SocketAddr::new(SERVER4, 9995))?;
            std::thread::sleep(std::time::Duration::from_micros(300));
        }
        Ok(())
    })
    .unwrap();
    let got = counter.join().unwrap();
    assert!(got > sent * 9 / 10, "{got} of {sent} datagrams arrived");
}
