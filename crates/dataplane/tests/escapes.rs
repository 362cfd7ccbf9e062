//! Escapes from inside a slot, as root in its namespace. Each attempt must
//! fail, and each test first shows that the same attempt would succeed
//! without the protection it tests (a listener that answers, a path that
//! works for the slot's own address), so that a missing protection makes
//! the test fail.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sandgate_dataplane::probe::Proto;
use sandgate_lab::addrs::*;
use sandgate_netns::{Netns, Rtnl};
use sandgate_nftables::list_set;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

/// Sends a datagram from `ns` with the source address `source`: a forged
/// source needs no answer to carry data out, so what counts is whether it
/// arrives.
fn send_from(ns: &Netns, source: IpAddr, dest: SocketAddr, payload: &[u8]) {
    ns.run(|| {
        let domain = if dest.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, None)?;
        s.bind(&SocketAddr::new(source, 0).into())?;
        s.send_to(payload, &dest.into()).map(drop)
    })
    .unwrap()
}

/// A UDP listener in the world on `addr`; returns what arrived in 500 ms.
struct Sink(UdpSocket);

impl Sink {
    fn new(rig: &Rig, addr: SocketAddr) -> Sink {
        Sink(
            rig.lab
                .world()
                .run(|| {
                    let u = UdpSocket::bind(addr)?;
                    u.set_read_timeout(Some(Duration::from_millis(500)))?;
                    Ok(u)
                })
                .unwrap(),
        )
    }

    fn received(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = self.0.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }
}

#[test]
fn a_forged_source_address_carries_nothing_out() {
    let mut rig = Rig::new();
    let policy = rig.resolve(3, open());
    let (slot, ns) = rig.sandbox("spoofer", &policy);
    // Root in the slot adds addresses that are not its own: one of another
    // sandbox, and one from nowhere.
    ns.run(|| {
        let mut rt = Rtnl::open()?;
        let eth = rt.link_index("eth0")?.unwrap();
        rt.add_address(eth, "198.18.200.7/32".parse().unwrap())?;
        rt.add_address(eth, "2001:db8:5a00:77::2/128".parse().unwrap())
    })
    .unwrap();
    for (own, forged, server) in [
        (IpAddr::V4(slot.sandbox4), "198.18.200.7", SERVER4),
        (IpAddr::V6(slot.sandbox6), "2001:db8:5a00:77::2", SERVER6),
    ] {
        let sink = Sink::new(&rig, SocketAddr::new(server, 9999));
        let dest = SocketAddr::new(server, 9999);
        send_from(&ns, own, dest, b"from my own address");
        send_from(&ns, forged.parse().unwrap(), dest, b"from a forged address");
        assert_eq!(
            sink.received(),
            vec![b"from my own address".to_vec()],
            "{server}"
        );
    }
}

#[test]
fn changing_its_own_address_and_routes_cuts_the_slot_off() {
    let mut rig = Rig::new();
    let policy = rig.resolve(3, open());
    let (slot, ns) = rig.sandbox("renamer", &policy);
    let sink = Sink::new(&rig, SocketAddr::new(SERVER4, 9999));
    send_from(
        &ns,
        IpAddr::V4(slot.sandbox4),
        SocketAddr::new(SERVER4, 9999),
        b"before",
    );
    // Root in the slot drops its address, takes another, and routes to the
    // gateway by hand.
    let new: IpAddr = "198.18.123.45".parse().unwrap();
    ns.run(|| {
        let mut rt = Rtnl::open()?;
        let eth = rt.link_index("eth0")?.unwrap();
        rt.delete_address(eth, slot.sandbox4_net())?;
        rt.add_address(eth, ipnet::IpNet::new(new, 32).unwrap())?;
        rt.add_route(
            ipnet::IpNet::new(IpAddr::V4(slot.gateway4), 32).unwrap(),
            None,
            eth,
        )?;
        rt.add_route(
            "0.0.0.0/0".parse().unwrap(),
            Some(IpAddr::V4(slot.gateway4)),
            eth,
        )
    })
    .unwrap();
    send_from(&ns, new, SocketAddr::new(SERVER4, 9999), b"after");
    assert_eq!(sink.received(), vec![b"before".to_vec()]);
}

#[test]
fn the_host_is_closed_to_sandboxes_except_for_dns() {
    let mut rig = Rig::new();
    let policy = rig.resolve(3, open());
    let (slot, ns) = rig.sandbox("prober", &policy);
    let blocked_policy = rig.resolve(3, blocked());
    let (blocked_slot, blocked_ns) = rig.sandbox("quiet", &blocked_policy);
    let dns_port = rig.cfg.dns_port;
    // A TCP service and the DNS port, listening on every host address.
    let (tcp, dns) = rig
        .lab
        .host()
        .run(|| {
            let t = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 2222))?;
            let u = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, dns_port))?;
            u.set_read_timeout(Some(Duration::from_millis(500)))?;
            Ok((t, u))
        })
        .unwrap();
    // The service answers on the host (the listener is real).
    rig.lab
        .host()
        .run(|| {
            TcpStream::connect_timeout(&SocketAddr::new(IpAddr::V4(slot.gateway4), 2222), WAIT)
                .map(drop)
        })
        .unwrap();
    // From the sandbox: not on its gateway, not on the host's uplink.
    for addr in [
        IpAddr::V4(slot.gateway4),
        IpAddr::V6(slot.gateway6),
        HOST_LINK4.addr(),
        HOST_LINK6.addr(),
    ] {
        assert!(!probe_any(&ns, Proto::Tcp, addr, 2222), "{addr}");
        assert!(!probe_any(&ns, Proto::Icmp, addr, 0), "{addr}");
    }
    // DNS to the gateway, and to a hard-coded resolver in the world, both
    // reach the host's DNS port, and nothing reaches the world's resolver.
    let world_queries = rig.lab.dns_queries();
    for resolver in [IpAddr::V4(slot.gateway4), DNS4] {
        send_udp(&ns, SocketAddr::new(resolver, 53), b"query");
        let mut buf = [0u8; 16];
        let (n, from) = dns.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"query", "{resolver}");
        assert_eq!(
            from.ip().to_canonical(),
            IpAddr::V4(slot.sandbox4),
            "{resolver}"
        );
    }
    assert_eq!(
        rig.lab.dns_queries(),
        world_queries,
        "a query reached the world's resolver"
    );
    // The DNS service's own port is not open to direct queries, on the
    // gateway or on any other host address: only the redirect leads there.
    for target in [IpAddr::V4(slot.gateway4), HOST_LINK4.addr()] {
        send_udp(&ns, SocketAddr::new(target, dns_port), b"direct");
        assert!(
            dns.recv_from(&mut [0u8; 16]).is_err(),
            "{target}:{dns_port} answered directly"
        );
    }
    // IPv6 resolvers are redirected too.
    send_udp(&ns, SocketAddr::new(DNS6, 53), b"query6");
    let mut buf = [0u8; 16];
    let (n, from) = dns.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from.ip()),
        (&b"query6"[..], IpAddr::V6(slot.sandbox6))
    );
    // A blocked slot reaches the DNS service too (which refuses every one
    // of its queries: REQUIREMENTS.md section 1, "blocked: every query is refused"),
    // and nothing else: not the world's resolver.
    send_udp(&blocked_ns, SocketAddr::new(DNS4, 53), b"blocked");
    let (n, from) = dns.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from.ip().to_canonical()),
        (&b"blocked"[..], IpAddr::V4(blocked_slot.sandbox4))
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rig.lab.dns_queries(), world_queries);
    drop(tcp);
}

fn probe_any(ns: &Netns, proto: Proto, dest: IpAddr, port: u16) -> bool {
    sandgate_dataplane::probe::reachable(ns, proto, dest, port, WAIT).unwrap()
}

fn send_udp(ns: &Netns, dest: SocketAddr, payload: &[u8]) {
    ns.run(|| {
        let bind = if dest.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let u = UdpSocket::bind(bind)?;
        u.send_to(payload, dest).map(drop)
    })
    .unwrap();
}

#[test]
fn another_sandbox_is_out_of_reach() {
    let mut rig = Rig::new();
    let policy = rig.resolve(3, allow("0.0.0.0/0, ::/0"));
    let (_a, ns_a) = rig.sandbox("a", &policy);
    let (b, ns_b) = rig.sandbox("b", &policy);
    let listener = ns_b
        .run(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, 7777)))
        .unwrap();
    // B's service answers from the host (through B's veth).
    rig.lab
        .host()
        .run(|| {
            // Generous: this only shows the service is up (a first SYN
            // lost while the machine is busy is retried after 1 s).
            let to = SocketAddr::new(IpAddr::V4(b.sandbox4), 7777);
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            let (mut s, _) = listener.accept()?;
            s.write_all(b"hi")?;
            let mut buf = [0u8; 2];
            c.read_exact(&mut buf)
        })
        .unwrap();
    // Not from A, over either family, even with a list that names everything.
    assert!(!probe_any(&ns_a, Proto::Tcp, IpAddr::V4(b.sandbox4), 7777));
    assert!(!probe_any(&ns_a, Proto::Tcp, IpAddr::V6(b.sandbox6), 7777));
    assert!(!probe_any(&ns_a, Proto::Icmp, IpAddr::V4(b.sandbox4), 0));
}

#[test]
fn ipv6_does_not_get_around_an_ipv4_list_nor_a_wide_list_around_denied_ranges() {
    let mut rig = Rig::new();
    let v4_only = rig.resolve(3, allow("192.0.2.10/32"));
    let (_s, ns) = rig.sandbox("v4only", &v4_only);
    assert!(probe(&ns, Proto::Tcp, SERVER4, TCP_ECHO));
    // The same world host over IPv6: denied.
    for proto in [Proto::Tcp, Proto::Udp, Proto::Icmp] {
        assert!(!probe(&ns, proto, SERVER6, 7), "{proto:?}");
    }
    let everything = rig.resolve(3, allow("0.0.0.0/0, ::/0"));
    let (_w, wide) = rig.sandbox("wide", &everything);
    assert!(probe(&wide, Proto::Tcp, SERVER6_B, TCP_ECHO));
    for addr in [
        DENIED_SERVER4,
        DENIED_SERVER6,
        PRIVATE_SERVER4,
        PRIVATE_SERVER6,
    ] {
        assert!(!probe(&wide, Proto::Tcp, addr, TCP_ECHO), "{addr}");
    }
    // The built-in ranges, which the lab never sends to, are in the
    // kernel's always-denied and private sets.
    let denied = rig
        .lab
        .host()
        .run(|| {
            let mut all = String::new();
            for set in ["denied4", "denied6", "private4", "private6"] {
                for e in list_set("sandgate", set)?.unwrap() {
                    all.push_str(&e.value.to_string());
                }
            }
            Ok(all)
        })
        .unwrap();
    for net in [
        "169.254.0.0",
        "127.0.0.0",
        "224.0.0.0",
        "fe80::",
        "::ffff:0.0.0.0",
        "64:ff9b::",
        "198.18.0.0",
        "10.0.0.0",
        "172.16.0.0",
        "192.168.0.0",
        "100.64.0.0",
        "fc00::",
    ] {
        assert!(
            denied.contains(&format!("\"{net}\"")),
            "{net} missing from {denied}"
        );
    }
}

/// A namespace `tag` beside the slots, joined to the lab's host by a veth
/// whose host end is `host_if` with `gateway`/31 (the namespace's end, the
/// next address, routes everything through it): made behind the
/// dataplane's back.
fn beside(rig: &Rig, tag: &str, host_if: &str, gateway: &str) -> Netns {
    let ns = Netns::create(&format!("{}-{tag}", rig.lab.tag())).unwrap();
    let gw: std::net::Ipv4Addr = gateway.parse().unwrap();
    let own = std::net::Ipv4Addr::from(u32::from(gw) + 1);
    let fd = ns.fd();
    rig.lab
        .host()
        .run(|| {
            let mut rt = Rtnl::open()?;
            rt.add_veth(host_if, "eth0", Some(fd))?;
            let i = rt.link_index(host_if)?.unwrap();
            rt.add_address(i, format!("{gw}/31").parse().unwrap())?;
            rt.set_up(i)
        })
        .unwrap();
    ns.run(|| {
        let mut rt = Rtnl::open()?;
        let i = rt.link_index("eth0")?.unwrap();
        rt.add_address(i, format!("{own}/31").parse().unwrap())?;
        rt.set_up(i)?;
        rt.wait_oper_up("eth0", Duration::from_secs(5))?;
        rt.add_route("0.0.0.0/0".parse().unwrap(), Some(IpAddr::V4(gw)), i)
    })
    .unwrap();
    ns
}

#[test]
fn an_interface_the_dataplane_does_not_know_is_dropped() {
    let mut rig = Rig::new();
    let policy = rig.resolve(3, open());
    let (_s, _ns) = rig.sandbox("known", &policy);
    // A veth that looks like a slot's, made behind the dataplane's back.
    let rogue = beside(&rig, "rogue", "sgh4242", "198.18.250.0");
    // Its gateway answers on the link (the link works) ...
    rig.lab
        .host()
        .run(|| UdpSocket::bind("198.18.250.0:5555").map(drop))
        .unwrap();
    // ... but nothing from it is forwarded.
    assert!(!probe(&rogue, Proto::Tcp, SERVER4, TCP_ECHO));
    assert!(!probe(&rogue, Proto::Udp, SERVER4, UDP_ECHO));
}

#[test]
fn untracked_icmpv6_does_not_open_a_way_in() {
    let mut rig = Rig::new();
    let policy = rig.resolve(3, open());
    let (slot, ns) = rig.sandbox("target", &policy);
    // The world learns a route to the sandboxes (an attacker next door).
    rig.lab
        .world()
        .run(|| {
            let mut rt = Rtnl::open()?;
            let wan = rt.link_index("wan")?.unwrap();
            rt.add_route(
                "2001:db8:5a00::/48".parse().unwrap(),
                Some(HOST_LINK6.addr()),
                wan,
            )
        })
        .unwrap();
    let listener = ns
        .run(|| {
            let s = raw_icmp(true)?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            Ok(UdpSocket::from(s))
        })
        .unwrap();
    // Neighbour solicitations, which conntrack does not track, carrying a
    // payload, and an echo request, from the world to the sandbox.
    rig.lab
        .world()
        .run(|| {
            let s = raw_icmp(true)?;
            let to = SocketAddr::new(IpAddr::V6(slot.sandbox6), 0);
            let mut ns_msg = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
            ns_msg.extend_from_slice(&slot.sandbox6.octets());
            ns_msg.extend_from_slice(b"smuggled payload");
            for _ in 0..3 {
                s.send_to(&ns_msg, &to.into())?;
                s.send_to(&[128, 0, 0, 0, 0, 1, 0, 1], &to.into())?;
            }
            Ok(())
        })
        .unwrap();
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = listener.recv_from(&mut buf) {
        assert!(
            !(from.ip() == WORLD_LINK6.addr() || buf[..n].windows(8).any(|w| w == b"smuggled")),
            "an ICMPv6 type {} from {from} reached the sandbox",
            buf[0]
        );
    }
}

#[test]
fn a_flushed_ruleset_cuts_every_slot_off_until_the_restart_puts_it_back() {
    let mut rig = Rig::new();
    let policy = rig.resolve(3, allow("192.0.2.10/32"));
    let (slot, ns) = rig.sandbox("flushed", &policy);
    assert!(probe(&ns, Proto::Tcp, SERVER4, TCP_ECHO));
    // Someone else's firewall reload.
    let status = rig
        .lab
        .host()
        .run(|| {
            std::process::Command::new("nft")
                .args(["flush", "ruleset"])
                .status()
        })
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(600));
    // No enforcement, and no way out either: the slot's link is down.
    // (A datagram needs no answer to carry data out: the world counts what
    // arrives.)
    let sink = Sink::new(&rig, SocketAddr::new(SERVER4_B, 9999));
    send_from(
        &ns,
        IpAddr::V4(slot.sandbox4),
        SocketAddr::new(SERVER4_B, 9999),
        b"out",
    );
    assert!(
        sink.received().is_empty(),
        "data left a slot with no ruleset"
    );
    assert!(!probe(&ns, Proto::Tcp, SERVER4, TCP_ECHO));
    assert!(rig.dp().watchdog_tripped());
    // A restart puts the ruleset, the policy and the link back.
    rig.dp = None;
    let (dp, _) =
        sandgate_dataplane::Dataplane::start(rig.cfg.clone(), rig.policy.clone()).unwrap();
    rig.dp = Some(dp);
    assert!(probe(&ns, Proto::Tcp, SERVER4, TCP_ECHO));
    assert!(!probe(&ns, Proto::Tcp, SERVER4_B, TCP_ECHO));
}

/// The IPv6 addresses of `ns`'s interface `eth0` and whether it has a
/// default route learnt from a router (one via a link-local address).
fn slot_ipv6_state(ns: &Netns) -> (Vec<String>, bool) {
    ns.run(|| {
        let addrs = std::fs::read_to_string("/proc/thread-self/net/if_inet6")?
            .lines()
            .filter(|l| l.ends_with(" eth0"))
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
            .collect();
        // /proc/net/ipv6_route: destination, prefix length, ..., next hop.
        let learnt = std::fs::read_to_string("/proc/thread-self/net/ipv6_route")?
            .lines()
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 4 && f[0] == "0".repeat(32) && f[1] == "00" && f[4].starts_with("fe80")
            });
        Ok((addrs, learnt))
    })
    .unwrap()
}

#[test]
fn a_router_advertisement_changes_no_slot_address_or_route() {
    let mut rig = Rig::new();
    let policy = rig.resolve(3, open());
    let (slot, ns) = rig.sandbox("ra", &policy);
    let before = slot_ipv6_state(&ns);
    // A router advertisement for a lab prefix, with a default route, sent
    // from the slot's host end to all nodes: what a rogue router on the
    // link would send. A slot that took it would gain an address in the
    // prefix and a route the dataplane did not make.
    let ifindex = rig
        .lab
        .host()
        .run(|| {
            let mut rt = Rtnl::open()?;
            rt.link_index(&slot.host_if)
        })
        .unwrap()
        .unwrap();
    // The advertisement must come from a link-local address, which the
    // host end gets once its duplicate address detection is over.
    let host_if = slot.host_if.clone();
    let link_local_ready = || {
        rig.lab
            .host()
            .run(|| std::fs::read_to_string("/proc/thread-self/net/if_inet6"))
            .unwrap()
            .lines()
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 6
                    && f[5] == host_if
                    && f[0].starts_with("fe80")
                    && u32::from_str_radix(f[4], 16).is_ok_and(|flags| flags & 0x40 == 0)
            })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !link_local_ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "no link-local address on {host_if}: {}",
            rig.lab
                .host()
                .run(|| std::fs::read_to_string("/proc/thread-self/net/if_inet6"))
                .unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut ra = vec![
        134, 0, 0, 0, // type, code, checksum (the kernel's)
        64, 0, 0x07, 0x08, // hop limit, flags, router lifetime 1800 s
        0, 0, 0, 0, 0, 0, 0, 0, // reachable time, retransmission timer
        3, 4, 64, 0xc0, // prefix information: on-link, autonomous
        0, 1, 0x51, 0x80, 0, 0, 0x38, 0x40, 0, 0, 0, 0, // lifetimes, reserved
    ];
    ra.extend_from_slice(&"2001:db8:bad::".parse::<Ipv6Addr>().unwrap().octets());
    rig.lab
        .host()
        .run(|| {
            let s = raw_icmp(true)?;
            s.set_multicast_hops_v6(255)?;
            s.set_multicast_if_v6(ifindex)?;
            let all_nodes = std::net::SocketAddrV6::new("ff02::1".parse().unwrap(), 0, 0, ifindex);
            for _ in 0..3 {
                s.send_to(&ra, &SocketAddr::V6(all_nodes).into())?;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after = slot_ipv6_state(&ns);
    assert!(
        !after.0.iter().any(|a| a.starts_with("20010db80bad")),
        "the slot took an address from the advertisement: {after:?}"
    );
    assert!(
        !after.1,
        "the slot took a default route from the advertisement"
    );
    assert_eq!(before, after);
    let accept_ra = ns
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv6/conf/eth0/accept_ra"))
        .unwrap();
    assert_eq!(accept_ra.trim(), "0");
}

/// A namespace beside the slots, joined to the lab's host by a link of
/// its own (not a slot's), routed through the host: other traffic a
/// sandbox host might be asked to forward. Sends one datagram to the
/// world; whether it arrived.
fn forwarded_for_a_neighbour(rig: &Rig, tag: &str) -> bool {
    let sink = Sink::new(rig, SocketAddr::new(SERVER4, 9999));
    let neighbour = beside(rig, tag, "nbh", "198.51.100.200");
    for _ in 0..3 {
        send_udp(&neighbour, SocketAddr::new(SERVER4, 9999), b"neighbour");
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = sink.received();
    let _ = neighbour.delete();
    !got.is_empty()
}

#[test]
fn the_host_forwards_only_sandbox_traffic_unless_told_otherwise() {
    // By default, what comes in on a link that is no slot's and would be
    // routed through the host is dropped ...
    let rig = Rig::new();
    assert!(!forwarded_for_a_neighbour(&rig, "nb"));
    drop(rig);
    // ... and the operator's switch lets it through (the same path works).
    let rig = Rig::with(|c| c.forward_other = true);
    assert!(forwarded_for_a_neighbour(&rig, "nb"));
}

#[test]
fn a_packet_from_elsewhere_that_matches_a_slots_connection_is_not_forwarded() {
    // A connection from the slot, live: its mark passes its packets
    // without evaluation.
    let mut rig = Rig::new();
    let policy = rig.resolve(3, open());
    let (slot, ns) = rig.sandbox("victim", &policy);
    let server = SocketAddr::new(SERVER4, 9998);
    let sink = Sink::new(&rig, server);
    let port = 40_123;
    let from_slot = ns
        .run(|| UdpSocket::bind(SocketAddr::new(IpAddr::V4(slot.sandbox4), port)))
        .unwrap();
    for _ in 0..2 {
        from_slot.send_to(b"slot", server).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sink.received().len(), 2, "the slot's own datagrams arrive");
    // A neighbour on a link of its own sends the same connection's next
    // packet: the slot's address and port to the same server. Connection
    // tracking takes it for the slot's connection, mark and all; only the
    // interface it came in on tells it apart, and it must not pass.
    let neighbour = beside(&rig, "spoof", "nbh", "198.51.100.200");
    neighbour
        .run(|| {
            let mut rt = Rtnl::open()?;
            let i = rt.link_index("eth0")?.unwrap();
            rt.add_address(i, format!("{}/32", slot.sandbox4).parse().unwrap())
        })
        .unwrap();
    let spoofer = neighbour
        .run(|| UdpSocket::bind(SocketAddr::new(IpAddr::V4(slot.sandbox4), port)))
        .unwrap();
    for _ in 0..3 {
        spoofer.send_to(b"spoofed", server).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = sink.received();
    let _ = neighbour.delete();
    assert!(
        got.is_empty(),
        "a packet that is not the slot's passed as its connection's: {got:?}"
    );
    // The slot's connection still passes.
    from_slot.send_to(b"slot", server).unwrap();
    assert_eq!(sink.received().len(), 1);
}

/// A raw ICMP socket (ICMPv6 for `v6`), in the namespace it is made in.
fn raw_icmp(v6: bool) -> std::io::Result<socket2::Socket> {
    let (domain, protocol) = match v6 {
        true => (socket2::Domain::IPV6, socket2::Protocol::ICMPV6),
        false => (socket2::Domain::IPV4, socket2::Protocol::ICMPV4),
    };
    socket2::Socket::new(domain, socket2::Type::RAW, Some(protocol))
}

/// An ICMP (or ICMPv6) port-unreachable error from `ns` to `to`'s
/// address, quoting a UDP datagram `to` -> `quoted_to` (what `to` would
/// have sent): connection tracking relates it to the connection the quote
/// belongs to.
fn send_port_unreachable(ns: &Netns, to: SocketAddr, quoted_to: SocketAddr) {
    let mut udp = Vec::new();
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&quoted_to.port().to_be_bytes());
    udp.extend_from_slice(&[0, 8, 0, 0]);
    let icmp = match (to.ip(), quoted_to.ip()) {
        (IpAddr::V4(qs), IpAddr::V4(qd)) => {
            let mut ip = vec![0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0];
            ip.extend_from_slice(&qs.octets());
            ip.extend_from_slice(&qd.octets());
            let sum = sandgate_dataplane::probe::checksum(&ip);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&ip);
            icmp.extend_from_slice(&udp);
            let sum = sandgate_dataplane::probe::checksum(&icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            icmp
        }
        (IpAddr::V6(qs), IpAddr::V6(qd)) => {
            // Destination unreachable, port unreachable; the kernel fills
            // in an ICMPv6 raw socket's checksum.
            let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
            icmp.extend_from_slice(&qs.octets());
            icmp.extend_from_slice(&qd.octets());
            icmp.extend_from_slice(&udp);
            icmp
        }
        _ => unreachable!("one family"),
    };
    ns.run(|| {
        let s = raw_icmp(to.is_ipv6())?;
        for _ in 0..3 {
            s.send_to(&icmp, &SocketAddr::new(to.ip(), 0).into())?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })
    .unwrap();
}

/// The ICMP (or ICMPv6) errors the world's `at` receives in 500 ms that
/// quote a datagram to `port` (a raw socket, read through `UdpSocket`'s
/// `recv`).
struct IcmpSink(UdpSocket, bool);

impl IcmpSink {
    fn new(rig: &Rig, at: IpAddr) -> IcmpSink {
        let s = rig
            .lab
            .world()
            .run(|| {
                let s = raw_icmp(at.is_ipv6())?;
                s.set_read_timeout(Some(Duration::from_millis(500)))?;
                Ok(UdpSocket::from(s))
            })
            .unwrap();
        IcmpSink(s, at.is_ipv6())
    }

    fn quoting(&self, port: u16) -> usize {
        let mut n = 0;
        let mut b = [0u8; 1500];
        while let Ok(len) = self.0.recv(&mut b) {
            // IPv4: the IP header (20), the ICMP header (8), the quoted IP
            // header (20), then the quoted UDP ports. IPv6 (a raw socket
            // gets no IP header): the ICMPv6 header (8), the quoted header
            // (40), then the ports. Destination unreachable: 3, and 1.
            let unreachable = match self.1 {
                false => b[20] == 3,
                true => b[0] == 1,
            };
            if len >= 52 && unreachable && u16::from_be_bytes([b[50], b[51]]) == port {
                n += 1;
            }
        }
        n
    }
}

#[test]
fn a_slot_cannot_send_an_error_on_another_slots_connection() {
    an_error_on_another_slots_connection_does_not_leave(SERVER4);
}

#[test]
fn a_slot_cannot_send_an_icmpv6_error_on_another_slots_connection() {
    an_error_on_another_slots_connection_does_not_leave(SERVER6);
}

/// Slot A's connection to the world's `server` (IPv4 or IPv6); slot B
/// beside it, root in its namespace, may send what it likes from its own
/// address: its error about A's connection must not leave.
fn an_error_on_another_slots_connection_does_not_leave(server: IpAddr) {
    let mut rig = Rig::new();
    let policy = rig.resolve(3, open());
    let (a, a_ns) = rig.sandbox("a", &policy);
    let (_b, b_ns) = rig.sandbox("b", &policy);
    let server = SocketAddr::new(server, 9997);
    let _sink = Sink::new(&rig, server);
    let a_ip = match server.ip() {
        IpAddr::V4(_) => IpAddr::V4(a.sandbox4),
        IpAddr::V6(_) => IpAddr::V6(a.sandbox6),
    };
    let a_end = SocketAddr::new(a_ip, 40_321);
    let sock = a_ns.run(|| UdpSocket::bind(a_end)).unwrap();
    for _ in 0..2 {
        sock.send_to(b"a", server).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let errors = IcmpSink::new(&rig, server.ip());
    // A's own error about its connection (as if the server's datagram
    // found no socket) reaches the server: the probe works.
    send_port_unreachable(&a_ns, server, a_end);
    assert!(
        errors.quoting(a_end.port()) > 0,
        "A's own error did not arrive"
    );
    // B sends the same error: connection tracking relates it to A's
    // connection (by the datagram it quotes), but it is not B's, and must
    // not leave (under A's address and on A's allowance).
    send_port_unreachable(&b_ns, server, a_end);
    assert_eq!(
        errors.quoting(a_end.port()),
        0,
        "B's error on A's connection left the host"
    );
}
