//! The DNS service in the lab, end to end: sandboxes ask through their
//! gateway (or any address: the dataplane redirects port 53), the service
//! answers by their policy, admits what it answered for them alone, and
//! refuses the rest with an Extended DNS Error, forwarding nothing.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use sandgate_dns::protocol::{extended_error, EDE_BLOCKED, EDE_NETWORK_ERROR};
use sandgate_lab::addrs::*;
use sandgate_policy::SettingsRequest;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn addrs(m: &hickory_proto::op::Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn assert_refused(m: &hickory_proto::op::Message, name: &str) {
    assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
    let (code, text) = extended_error(m).unwrap_or_else(|| panic!("{name}: no extended error"));
    assert_eq!(code, EDE_BLOCKED);
    assert!(
        text.contains("egress policy") || text.contains("networkBlockAll"),
        "{text}"
    );
    assert!(m.answers.is_empty());
}

#[test]
fn an_allowlist_sandbox_resolves_and_reaches_only_what_its_policy_names() {
    let rig = Rig::new();
    let (a, ns_a) = rig.sandbox("a", 3, allow_domains("*.example.com"));
    let (_b, ns_b) = rig.sandbox("b", 3, allow_domains("*.example.com"));
    let gateway = IpAddr::V4(a.gateway4);
    // Not admitted yet.
    assert!(!probe(&ns_a, SERVER4, TCP_ECHO));
    assert!(!probe(&ns_a, SERVER4_B, TCP_ECHO));
    // A catalog name, over UDP, and a name of its list, over TCP.
    let essential = ask(&ns_a, gateway, &catalog_name(), RecordType::A, false);
    assert_eq!(addrs(&essential), vec![SERVER4]);
    let listed = ask(&ns_a, gateway, "www.example.com", RecordType::AAAA, true);
    assert_eq!(addrs(&listed), vec![SERVER6_B]);
    let deep = ask(
        &ns_a,
        IpAddr::V6(a.gateway6),
        "a.b.example.com",
        RecordType::A,
        false,
    );
    assert_eq!(addrs(&deep), vec![SERVER4_B]);
    // Admitted for a, before the answer came back.
    assert!(probe(&ns_a, SERVER4, TCP_ECHO));
    assert!(probe(&ns_a, SERVER6_B, TCP_ECHO));
    assert!(probe(&ns_a, SERVER4_B, TCP_ECHO));
    // Only for a: b did not ask.
    assert!(!probe(&ns_b, SERVER4_B, TCP_ECHO));
    assert!(!probe(&ns_b, SERVER4, TCP_ECHO));
    // Names outside the policy: refused, with the reason.
    for name in ["example.com", "www.example.net", "evil.example.org"] {
        assert_refused(&ask(&ns_a, gateway, name, RecordType::A, false), name);
    }
    let events: Vec<_> = rig.service().events().try_iter().collect();
    assert!(events.iter().any(|e| e.name == "evil.example.org"
        && e.reason == "dns_not_allowed"
        && e.slot == a.index));
}

#[test]
fn a_tunnel_through_refused_names_never_reaches_the_world() {
    let rig = Rig::new();
    let (a, ns) = rig.sandbox("tunneller", 3, allow_domains("*.example.com"));
    let before = rig.lab.dns_queries();
    let resolvers = [
        (IpAddr::V4(a.gateway4), false),
        (IpAddr::V4(a.gateway4), true),
        (DNS4, false),
        (DNS6, true),
        (SERVER4_B, false),
    ];
    for i in 0..60 {
        let (server, tcp) = resolvers[i % resolvers.len()];
        let name = format!(
            "c2VjcmV0LWRhdGEt{i:04}.x{}.exfil.example.org",
            i * 7919 % 1000
        );
        for qtype in [RecordType::TXT, RecordType::A, RecordType::NULL] {
            let answer = ask(&ns, server, &name, qtype, tcp);
            assert_refused(&answer, &name);
        }
    }
    assert_eq!(
        rig.lab.dns_queries(),
        before,
        "a refused query reached the world's DNS server"
    );
    assert!(
        rig.service()
            .counters()
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    );
}

#[test]
fn an_admission_ends_but_a_connection_it_allowed_runs_on() {
    let rig = Rig::with_floor(Duration::from_secs(1));
    let (a, ns) = rig.sandbox("short", 3, allow_domains("short.example.com"));
    // TTL 1 s, floor 1 s.
    let answer = ask(
        &ns,
        IpAddr::V4(a.gateway4),
        "short.example.com",
        RecordType::A,
        false,
    );
    assert_eq!(addrs(&answer), vec![SERVER4_B]);
    let mut conn = ns
        .run(|| TcpStream::connect_timeout(&SocketAddr::new(SERVER4_B, TCP_ECHO), WAIT))
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    // Over: no new connection ...
    assert!(!probe(&ns, SERVER4_B, TCP_ECHO));
    // ... but the one it allowed still carries data both ways.
    conn.write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
}

#[test]
fn open_forwards_everything_blocked_refuses_everything_restricted_reaches_the_catalog() {
    let rig = Rig::new();
    let (o, ns_o) = rig.sandbox("open", 3, SettingsRequest::default());
    let world_before = rig.lab.dns_queries();
    let nx = ask(
        &ns_o,
        IpAddr::V4(o.gateway4),
        "nothing.example.org",
        RecordType::A,
        false,
    );
    assert_eq!(
        nx.metadata.response_code,
        ResponseCode::NXDomain,
        "forwarded, answered upstream"
    );
    let www = ask(&ns_o, DNS4, "www.example.net", RecordType::A, true);
    assert_eq!(addrs(&www), vec![SERVER4_B]);
    // Both went to the lab's world, and nowhere else: its server counted
    // exactly the queries the service forwarded.
    let forwarded = rig
        .service()
        .counters()
        .forwarded
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(forwarded, 2);
    assert_eq!(rig.lab.dns_queries() - world_before, forwarded);

    let block = SettingsRequest {
        network_block_all: Some(true),
        ..Default::default()
    };
    let (b, ns_b) = rig.sandbox("blocked", 3, block);
    let forwarded = rig
        .service()
        .counters()
        .forwarded
        .load(std::sync::atomic::Ordering::Relaxed);
    for name in [catalog_name(), "www.example.com".to_string()] {
        assert_refused(
            &ask(&ns_b, IpAddr::V4(b.gateway4), &name, RecordType::A, false),
            &name,
        );
    }

    assert_eq!(
        rig.service()
            .counters()
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed),
        forwarded,
        "a blocked sandbox's query was forwarded"
    );

    let (r, ns_r) = rig.sandbox("tier1", 1, SettingsRequest::default());
    let essential = ask(
        &ns_r,
        IpAddr::V4(r.gateway4),
        &catalog_name(),
        RecordType::A,
        false,
    );
    assert_eq!(addrs(&essential), vec![SERVER4]);
    assert!(probe(&ns_r, SERVER4, TCP_ECHO));
    assert_refused(
        &ask(
            &ns_r,
            IpAddr::V4(r.gateway4),
            "www.example.com",
            RecordType::A,
            false,
        ),
        "www.example.com",
    );
    assert!(!probe(&ns_r, SERVER4_B, TCP_ECHO));
}

#[test]
fn a_rebinding_answer_admits_nothing() {
    let rig = Rig::new();
    let (a, ns) = rig.sandbox("rebind", 3, allow_domains("*.example.com"));
    let answer = ask(
        &ns,
        IpAddr::V4(a.gateway4),
        "rebind.example.com",
        RecordType::A,
        false,
    );
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(
        addrs(&answer).is_empty(),
        "the private address was not removed: {:?}",
        addrs(&answer)
    );
    let answer = ask(
        &ns,
        IpAddr::V4(a.gateway4),
        "rebind.example.com",
        RecordType::AAAA,
        false,
    );
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(addrs(&answer).is_empty());
    assert!(!probe(&ns, PRIVATE_SERVER4, TCP_ECHO));
    let events: Vec<_> = rig.service().events().try_iter().collect();
    for removed in [PRIVATE_SERVER4, DENIED_SERVER6] {
        assert!(
            events
                .iter()
                .any(|e| e.reason == "dns_rebinding" && e.removed == vec![removed]),
            "{removed}: {events:?}"
        );
    }
}

#[test]
fn a_policy_change_withdraws_what_the_removed_name_admitted() {
    let rig = Rig::new();
    let (a, ns) = rig.sandbox("changing", 3, allow_domains("*.example.com"));
    let gateway = IpAddr::V4(a.gateway4);
    assert_eq!(
        addrs(&ask(&ns, gateway, "www.example.com", RecordType::A, false)),
        vec![SERVER4_B]
    );
    assert!(probe(&ns, SERVER4_B, TCP_ECHO));
    rig.update(&a, 3, allow_domains("example.net"));
    assert!(
        !probe(&ns, SERVER4_B, TCP_ECHO),
        "the admission outlived its rule"
    );
    assert_refused(
        &ask(&ns, gateway, "www.example.com", RecordType::A, false),
        "www.example.com",
    );
    // The cache does not leak a name across the change either.
    assert_eq!(
        addrs(&ask(&ns, gateway, "example.net", RecordType::A, false)),
        vec![SERVER4_B]
    );
    assert!(probe(&ns, SERVER4_B, TCP_ECHO));
}

#[test]
fn cname_chains_and_cache_hits_admit_for_the_asking_sandbox() {
    let rig = Rig::new();
    // Two sandboxes of one organization, one of another.
    let (a, ns_a) = rig.sandbox_of("first", "acme", 3, allow_domains("*.example.com"));
    let (b, ns_b) = rig.sandbox_of("second", "acme", 3, allow_domains("*.example.com"));
    let (c, ns_c) = rig.sandbox_of("third", "other", 3, allow_domains("*.example.com"));
    // cname.example.com -> www.example.com -> 198.51.100.10: the address at
    // the end of the chain is admitted.
    let chained = ask(
        &ns_a,
        IpAddr::V4(a.gateway4),
        "cname.example.com",
        RecordType::A,
        false,
    );
    assert_eq!(addrs(&chained), vec![SERVER4_B]);
    assert!(probe(&ns_a, SERVER4_B, TCP_ECHO));
    let forwarded = rig
        .service()
        .counters()
        .forwarded
        .load(std::sync::atomic::Ordering::Relaxed);
    // The same question from b: answered from the cache, and admitted for b.
    assert!(!probe(&ns_b, SERVER4_B, TCP_ECHO));
    let cached = ask(
        &ns_b,
        IpAddr::V4(b.gateway4),
        "cname.example.com",
        RecordType::A,
        false,
    );
    assert_eq!(addrs(&cached), vec![SERVER4_B]);
    assert_eq!(
        rig.service()
            .counters()
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed),
        forwarded,
        "the second answer came from upstream"
    );
    assert!(probe(&ns_b, SERVER4_B, TCP_ECHO));
    // Another organization's sandbox shares no answer: its question goes
    // upstream (no timing channel, no answer of another tenant), and its
    // answer is its own.
    let other = ask(
        &ns_c,
        IpAddr::V4(c.gateway4),
        "CNAME.Example.com",
        RecordType::A,
        false,
    );
    assert_eq!(addrs(&other), vec![SERVER4_B]);
    assert_eq!(
        rig.service()
            .counters()
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed),
        forwarded + 1,
        "another organization's question was answered from the cache"
    );
    // The question comes back as it was asked, letter for letter.
    assert_eq!(other.queries[0].name().to_ascii(), "CNAME.Example.com.");
}

#[test]
fn odd_queries_are_refused_or_not_implemented_and_never_forwarded() {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Label, Name};
    let rig = Rig::new();
    let (a, ns) = rig.sandbox("odd", 3, allow_domains("*.example.com"));
    let gateway = SocketAddr::new(IpAddr::V4(a.gateway4), 53);
    let send = |m: &Message| -> Message {
        let q = m.to_vec().unwrap();
        ns.run(|| {
            let u = std::net::UdpSocket::bind("0.0.0.0:0")?;
            u.set_read_timeout(Some(Duration::from_secs(3)))?;
            u.send_to(&q, gateway)?;
            let mut buf = [0u8; 4096];
            let n = u.recv(&mut buf)?;
            Ok(Message::from_vec(&buf[..n]).unwrap())
        })
        .unwrap()
    };
    let forwarded = || {
        rig.service()
            .counters()
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = forwarded();
    // A label with a dot inside ("x.evil" . example . com) would read as a
    // name below example.com if labels were split on dots.
    let escaped = Name::from_labels(vec![
        Label::from_raw_bytes(b"x.evil").unwrap(),
        Label::from_raw_bytes(b"example").unwrap(),
        Label::from_raw_bytes(b"com").unwrap(),
    ])
    .unwrap();
    let mut m = Message::query();
    m.metadata.id = 7;
    m.add_query(Query::query(escaped, RecordType::A));
    assert_refused(&send(&m), "escaped label");
    // ANY, and two questions at once: not implemented.
    for queries in [
        vec![Query::query(
            Name::from_ascii("www.example.com.").unwrap(),
            RecordType::ANY,
        )],
        vec![
            Query::query(Name::from_ascii("www.example.com.").unwrap(), RecordType::A),
            Query::query(
                Name::from_ascii("evil.example.org.").unwrap(),
                RecordType::A,
            ),
        ],
    ] {
        let mut m = Message::query();
        m.metadata.id = 8;
        m.add_queries(queries);
        assert_eq!(send(&m).metadata.response_code, ResponseCode::NotImp);
    }
    assert_eq!(forwarded(), before);
    // The service's own port is closed to anything but sandboxes (it trusts
    // a query's source, which only a slot's checked interface vouches for):
    // a query from the world, which it would refuse and count, never gets
    // to it.
    let refused = || {
        rig.service()
            .counters()
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let refused_before = refused();
    rig.lab
        .world()
        .run(|| {
            let u = std::net::UdpSocket::bind("0.0.0.0:0")?;
            let q = query("evil.example.org", RecordType::A);
            u.send_to(&q, SocketAddr::new(HOST_LINK4.addr(), 10053))?;
            Ok(())
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        refused(),
        refused_before,
        "a query from outside reached the service"
    );
}

/// A rig whose upstreams are `first`, then a socket in the world that
/// reads nothing (returned: it stays silent while held), each given
/// `timeout`.
fn rig_with_silent_upstream(first: &[SocketAddr], timeout: Duration) -> (Rig, std::net::UdpSocket) {
    let silent = SocketAddr::new(SERVER4_B, 5353);
    let mut servers = first.to_vec();
    servers.push(silent);
    let upstream = sandgate_dns::Upstream { servers, timeout };
    let rig = Rig::with_upstream(Duration::from_secs(60), 0, Some(upstream));
    let hole = rig
        .lab
        .world()
        .run(|| std::net::UdpSocket::bind(silent))
        .unwrap();
    (rig, hole)
}

#[test]
fn a_failing_upstream_is_explained_and_admits_nothing() {
    // Two upstreams in the world: one that refuses (no socket: port
    // unreachable) and one that never answers.
    let refusing = SocketAddr::new(SERVER4_B, 5354);
    let (rig, _hole) = rig_with_silent_upstream(&[refusing], Duration::from_millis(500));
    let (a, ns) = rig.sandbox("cut-off", 3, allow_domains("example.net"));
    for tcp in [false, true] {
        let m = ask(
            &ns,
            IpAddr::V4(a.gateway4),
            "example.net",
            RecordType::A,
            tcp,
        );
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        let (code, text) = extended_error(&m).expect("an Extended DNS Error");
        assert_eq!(code, EDE_NETWORK_ERROR);
        assert!(text.contains("no upstream resolver answered"), "{text}");
    }
    // Nothing was admitted: the name's address stays out of reach.
    assert!(!probe(&ns, SERVER4_B, TCP_ECHO));
    let failures = rig
        .service()
        .counters()
        .upstream_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(failures, 2);
    let events: Vec<_> = rig.service().events().try_iter().collect();
    assert!(
        events
            .iter()
            .any(|e| e.reason == "upstream_unreachable" && e.name == "example.net"),
        "{events:?}"
    );
}

#[test]
fn a_sandbox_asking_a_silent_upstream_cannot_hold_every_worker() {
    // An upstream that never answers: a socket in the world that reads
    // nothing.
    let (rig, _hole) = rig_with_silent_upstream(&[], Duration::from_secs(2));
    // Four queries waiting on the upstream at most (the tier's share).
    let mut policy = rig.resolve_policy(3, SettingsRequest::default());
    policy.fair_shares.dns_in_flight = 4;
    let (a, ns_a) = rig.sandbox_with("greedy", "greedy", &policy);
    let (b, ns_b) = rig.sandbox_with("patient", "patient", &policy);
    let busy = || {
        rig.service()
            .counters()
            .busy
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // Twelve questions from a at once: four wait on the upstream, the rest
    // are turned away at once.
    let started = Instant::now();
    let quick = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let ns = &ns_a;
                s.spawn(move || {
                    let t = std::time::Instant::now();
                    let m = ask(
                        ns,
                        IpAddr::V4(a.gateway4),
                        &format!("q{i}.example.net"),
                        RecordType::A,
                        false,
                    );
                    (m.metadata.response_code, t.elapsed())
                })
            })
            .collect();
        // Meanwhile b still gets its turn at the upstream.
        let forwarded_before = rig
            .service()
            .counters()
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
        let m = ask(
            &ns_b,
            IpAddr::V4(b.gateway4),
            "b.example.net",
            RecordType::A,
            false,
        );
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        let forwarded_after = rig
            .service()
            .counters()
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            forwarded_after > forwarded_before,
            "b's query was not forwarded"
        );
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|(code, t)| *code == ResponseCode::ServFail && *t < Duration::from_millis(500))
            .count()
    });
    assert_eq!(
        quick, 8,
        "the queries beyond a's four were not turned away at once"
    );
    assert_eq!(busy(), 8);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Sends `count` queries for distinct names below `example.net` from
/// `ns` to `gateway` as fast as the socket takes them, reading no answer
/// (a flood: bounded in count, lab addresses only). Returns how many the
/// socket took.
fn flood(ns: &sandgate_netns::Netns, gateway: IpAddr, count: usize) -> u64 {
    ns.run(|| {
        let u = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let mut sent = 0;
        for i in 0..count {
            let q = query(&format!("f{i}.example.net"), RecordType::A);
            // A full socket buffer refuses a datagram: a flood does that.
            if u.send_to(&q, SocketAddr::new(gateway, 53)).is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    })
    .unwrap()
}

#[test]
fn a_flood_from_one_sandbox_leaves_another_organization_answered() {
    let rig = Rig::new();
    let (a, ns_a) = rig.sandbox_of("flooder", "noisy", 3, SettingsRequest::default());
    let (b, ns_b) = rig.sandbox_of("quiet", "calm", 3, allow_domains("*.example.com"));
    let count = |f: fn(&sandgate_dns::Counters) -> &std::sync::atomic::AtomicU64| {
        f(rig.service().counters()).load(std::sync::atomic::Ordering::Relaxed)
    };
    let shares = rig
        .resolve_policy(3, SettingsRequest::default())
        .fair_shares;
    let rate = u64::from(shares.dns_queries_per_second);
    // The kernel's log meter runs at the largest tier's event rate (with
    // nftables' default burst of five).
    let logged = rig
        .policy
        .tiers()
        .values()
        .map(|t| u64::from(t.fair_shares.events_per_second))
        .max()
        .unwrap();
    let started = Instant::now();
    // 20,000 queries for names nobody asked before, each one the upstream
    // would have to answer, while b asks its own names one by one.
    let (answered, sent) = std::thread::scope(|s| {
        let flooder = s.spawn(|| flood(&ns_a, IpAddr::V4(a.gateway4), 20_000));
        let mut answered = 0;
        for i in 0..40 {
            let m = ask(
                &ns_b,
                IpAddr::V4(b.gateway4),
                &format!("b{i}.example.com"),
                RecordType::A,
                i % 2 == 1,
            );
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "b{i}");
            assert_eq!(addrs(&m), vec![SERVER4_B]);
            answered += 1;
        }
        (answered, flooder.join().unwrap())
    });
    assert_eq!(answered, 40);
    // a was held to its share: the kernel let through about twice its
    // rate (the rest never reached the service's socket, where it would
    // have stood before b's queries), the service refused what was over
    // the rate itself, and little reached the upstream.
    let held_back = rig
        .lab
        .host()
        .run(|| sandgate_dataplane::KernelCounters::open(None, "sandgate")?.read())
        .unwrap()
        .held_back
        .iter()
        .filter(|((slot, class), _)| *slot == a.index && class.reason == "dns_rate_limited")
        .map(|(_, n)| *n)
        .sum::<u64>();
    // The bounds follow from the rates and how long the flood took (a
    // slow machine sends more slowly, and more of it is within the rate):
    // the kernel lets through twice the rate a second and a burst of four
    // times it and logs (rather than counts) a few refusals a second, the
    // service's bucket the rate and a burst of twice it (b's 40 queries
    // besides).
    let secs = started.elapsed().as_secs() + 1;
    let through = 2 * rate * secs + 4 * rate + logged * secs + 5;
    assert!(
        held_back + through >= sent,
        "held back in the kernel: {held_back} of {sent} sent in {secs} s"
    );
    assert!(held_back > 0, "nothing held back in the kernel");
    let forwarded = count(|c| &c.forwarded);
    assert!(
        forwarded <= rate * secs + 2 * rate + 40,
        "forwarded: {forwarded} in {secs} s at {rate} a second"
    );
    // The service's refusals are events, a few, the rest counted.
    let limited = count(|c| &c.rate_limited);
    if limited > 40 {
        let events: Vec<_> = rig.service().events().try_iter().collect();
        let published = events
            .iter()
            .filter(|e| e.slot == a.index && e.reason == "dns_rate_limited")
            .count();
        assert!((1..=40).contains(&published), "{published} events");
        let dropped: u64 = rig
            .service()
            .take_dropped()
            .iter()
            .filter(|d| d.slot == a.index && d.reason == "dns_rate_limited")
            .map(|d| d.count)
            .sum();
        assert!(dropped > 0, "nothing held back of {limited}");
    }
}

#[test]
fn a_query_over_the_rate_is_refused_and_says_why() {
    let rig = Rig::new();
    // One query a second, a burst of two: of queries asked in a row, one
    // soon is refused (the third, unless the machine takes near a second
    // an answer; asked until one is, sixty at most).
    let mut policy = rig.resolve_policy(3, SettingsRequest::default());
    policy.fair_shares.dns_queries_per_second = 1;
    let (a, ns_a) = rig.sandbox_with("slow-rate", "slow-rate", &policy);
    let mut answers = Vec::new();
    for i in 0..60 {
        let m = ask(
            &ns_a,
            IpAddr::V4(a.gateway4),
            &format!("r{i}.example.net"),
            RecordType::A,
            i % 2 == 0,
        );
        let refused = m.metadata.response_code == ResponseCode::Refused;
        answers.push(m);
        if refused {
            break;
        }
    }
    let refused: Vec<_> = answers
        .iter()
        .filter(|m| m.metadata.response_code == ResponseCode::Refused)
        .collect();
    assert!(!refused.is_empty(), "none of sixty was refused");
    assert!(answers.len() >= 3, "refused within the burst of two");
    let (_, text) = extended_error(refused[0]).unwrap();
    assert!(text.contains("more than 1 queries a second"), "{text}");
    // Nothing refused was forwarded.
    let forwarded = rig
        .service()
        .counters()
        .forwarded
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(forwarded as usize, answers.len() - refused.len());
}

#[test]
fn tcp_connections_are_capped_per_sandbox_and_idle_ones_closed() {
    let rig = Rig::new();
    let mut policy = rig.resolve_policy(3, SettingsRequest::default());
    policy.fair_shares.dns_tcp_connections = 4;
    let (a, ns_a) = rig.sandbox_with("holder", "noisy", &policy);
    let (b, ns_b) = rig.sandbox_of("asker", "calm", 3, allow_domains("*.example.com"));
    let to = SocketAddr::new(IpAddr::V4(a.gateway4), 53);
    // Ten connections from a, held open and silent, the first one with
    // half a message (a slow client).
    let held: Vec<TcpStream> = ns_a
        .run(|| {
            (0..10)
                .map(|_| {
                    let c = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
                    c.set_read_timeout(Some(Duration::from_secs(8)))?;
                    Ok(c)
                })
                .collect::<std::io::Result<Vec<_>>>()
        })
        .unwrap();
    (&held[0]).write_all(&[0]).unwrap();
    // Beyond a's four, each is closed at once.
    let closed_at_once = held[4..]
        .iter()
        .filter(|c| {
            c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut r: &TcpStream = c;
            matches!(r.read(&mut [0u8; 1]), Ok(0) | Err(_))
        })
        .count();
    assert_eq!(closed_at_once, 6);
    let refused = rig
        .service()
        .counters()
        .tcp_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 6);
    // b asks over TCP meanwhile, and is answered.
    let m = ask(
        &ns_b,
        IpAddr::V4(b.gateway4),
        "tcp.example.com",
        RecordType::A,
        true,
    );
    assert_eq!(addrs(&m), vec![SERVER4_B]);
    // a's four, the slow one too, are closed once idle for longer than
    // the service waits (5 s).
    let started = Instant::now();
    for c in &held[..4] {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r: &TcpStream = c;
        let n = r.read(&mut [0u8; 1]);
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(9));
    // And a may connect again.
    let again = ask(
        &ns_a,
        IpAddr::V4(a.gateway4),
        "again.example.net",
        RecordType::A,
        true,
    );
    assert_eq!(again.metadata.response_code, ResponseCode::NoError);
}

#[test]
fn a_lookup_in_flight_when_the_slot_changes_hands_is_neither_answered_nor_admitted() {
    let rig = Rig::new();
    let (a, ns_a) = rig.sandbox_of("leaving", "first", 3, allow_domains("*.example.com"));
    // slow.example.com is answered by the world after 1.5 s; the slot is
    // handed to another organization's sandbox (whose list allows the
    // name too) while the query is in flight.
    let policy = rig.resolve_policy(3, allow_domains("*.example.com"));
    let unanswered = std::thread::scope(|s| {
        let asking = s.spawn(|| {
            ns_a.run(|| {
                let u = std::net::UdpSocket::bind("0.0.0.0:0")?;
                u.set_read_timeout(Some(Duration::from_secs(4)))?;
                u.send_to(
                    &query("slow.example.com", RecordType::A),
                    SocketAddr::new(IpAddr::V4(a.gateway4), 53),
                )?;
                Ok(u.recv(&mut [0u8; 512]).is_err())
            })
            .unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        rig.know(&a, "second", &policy);
        asking.join().unwrap()
    });
    assert!(unanswered, "the old holder's answer was sent to the slot");
    assert_eq!(
        rig.service()
            .counters()
            .stale
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Nothing was admitted for the slot's new holder.
    assert!(!probe(&ns_a, SERVER4_B, TCP_ECHO));
}

#[test]
fn a_query_held_for_an_approval_is_answered_when_the_policy_allows_its_name() {
    let rig = Rig::new();
    let asking = |list: &'static str| SettingsRequest {
        domain_allow_list: Some(list),
        network_approvals: Some(true),
        approval_hold_seconds: Some(2),
        ..Default::default()
    };
    let (a, ns) = rig.sandbox("held", 3, asking("www.example.com"));
    let gateway = IpAddr::V4(a.gateway4);
    let counters = rig.service().counters();
    // The query waits; the owner approves while it does.
    let answered = std::thread::scope(|s| {
        let asked = s.spawn(|| ask(&ns, gateway, "example.net", RecordType::A, false));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!asked.is_finished(), "the refused query was not held");
        assert!(!probe(&ns, SERVER4_B, TCP_ECHO));
        rig.update(&a, 3, asking("www.example.com,example.net"));
        asked.join().unwrap()
    });
    assert_eq!(addrs(&answered), vec![SERVER4_B]);
    assert!(probe(&ns, SERVER4_B, TCP_ECHO), "answered but not admitted");
    assert_eq!(
        counters
            .held_approved
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Nobody approves: refused when the hold ends, saying so.
    let started = Instant::now();
    let refused = ask(&ns, gateway, "other.example.org", RecordType::A, false);
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_refused(&refused, "other.example.org");
    let (_, text) = extended_error(&refused).unwrap();
    assert!(text.contains("not approved within 2 s"), "{text}");
    assert_eq!(counters.held.load(std::sync::atomic::Ordering::Relaxed), 2);
    // Denied while held: refused at once, saying so; and never held again.
    let allowed = rig.resolve_policy(3, asking("www.example.com,example.net"));
    let refused = std::thread::scope(|s| {
        let asked = s.spawn(|| ask(&ns, gateway, "denied.example.org", RecordType::A, false));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!asked.is_finished(), "the refused query was not held");
        rig.update_policy(
            &a,
            &allowed
                .clone()
                .with_declined(vec!["denied.example.org".into()]),
        );
        let started = Instant::now();
        let refused = asked.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        refused
    });
    assert_refused(&refused, "denied.example.org");
    let (_, text) = extended_error(&refused).unwrap();
    assert!(
        text.contains("its owner denied the access request"),
        "{text}"
    );
    let started = Instant::now();
    assert_refused(
        &ask(&ns, gateway, "denied.example.org", RecordType::A, false),
        "denied.example.org",
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(counters.held.load(std::sync::atomic::Ordering::Relaxed), 3);
    // Without approvals, a refusal is at once.
    let (b, ns_b) = rig.sandbox("unheld", 3, allow_domains("www.example.com"));
    let started = Instant::now();
    assert_refused(
        &ask(
            &ns_b,
            IpAddr::V4(b.gateway4),
            "example.net",
            RecordType::A,
            false,
        ),
        "example.net",
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}
