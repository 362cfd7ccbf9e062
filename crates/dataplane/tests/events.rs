//! Deny events: denied connection attempts come back from the kernel's
//! NFLOG with the slot, the destination and the reason code, limited per
//! slot so that a flood costs the host little.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sandgate_dataplane::probe::Proto;
use sandgate_dataplane::{DenyEvent, Events};
use sandgate_lab::addrs::*;
use sandgate_netns::Netns;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn next(events: &Events, slot: u32) -> DenyEvent {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = events
            .receiver()
            .recv_timeout(left)
            .expect("no deny event arrived");
        if e.slot == slot {
            return e;
        }
    }
}

fn start_events(rig: &Rig) -> Events {
    let host = Netns::open(rig.lab.host().name()).unwrap();
    Events::start(
        Some(&host),
        rig.cfg.nflog_group,
        rig.policy.ranges().clone(),
    )
    .unwrap()
}

#[test]
fn a_denied_attempt_becomes_an_event_with_its_reason() {
    let mut rig = Rig::new();
    let events = start_events(&rig);
    let listed = rig.resolve(3, allow("192.0.2.10/32"));
    let (a, ns_a) = rig.sandbox("listed", &listed);
    assert!(!probe(&ns_a, Proto::Tcp, SERVER4_B, TCP_ECHO));
    let e = next(&events, a.index);
    assert_eq!(
        (
            e.reason.as_str(),
            e.protocol.as_str(),
            e.destination,
            e.port
        ),
        ("not_in_allow_list", "tcp", SERVER4_B, Some(TCP_ECHO))
    );
    assert_eq!(e.source, IpAddr::V4(a.sandbox4));
    assert!(!probe(&ns_a, Proto::Udp, DENIED_SERVER6, UDP_ECHO));
    let e = next(&events, a.index);
    assert_eq!(
        (e.reason.as_str(), e.protocol.as_str()),
        ("always_denied:2001:db8:dead::/48", "udp")
    );
    assert!(!probe(&ns_a, Proto::Icmp, PRIVATE_SERVER4, 0));
    let e = next(&events, a.index);
    assert_eq!(
        (e.reason.as_str(), e.protocol.as_str()),
        ("private_range", "icmp")
    );

    let blocked_policy = rig.resolve(3, blocked());
    let (b, ns_b) = rig.sandbox("blocked", &blocked_policy);
    assert!(!probe(&ns_b, Proto::Tcp, SERVER4, TCP_ECHO));
    assert_eq!(next(&events, b.index).reason, "blocked");
    let restricted = rig.resolve(1, open());
    let (c, ns_c) = rig.sandbox("restricted", &restricted);
    assert!(!probe(&ns_c, Proto::Tcp, SERVER6, TCP_ECHO));
    assert_eq!(next(&events, c.index).reason, "restricted_by_tier");
    // The host itself, other than DNS.
    assert!(!probe(&ns_c, Proto::Tcp, IpAddr::V4(c.gateway4), 22));
    assert_eq!(next(&events, c.index).reason, "always_denied:host");
    let counts = events.counters(a.index);
    assert_eq!(counts.by_reason.get("not_in_allow_list"), Some(&1));
    // An allowed connection is no event.
    assert!(probe(&ns_a, Proto::Tcp, SERVER4, TCP_ECHO));
    assert!(events
        .receiver()
        .recv_timeout(Duration::from_millis(300))
        .is_err());
}

#[test]
fn a_flood_of_denied_attempts_is_logged_at_the_slot_rate() {
    let mut rig = Rig::with(|c| c.log_rate = 20);
    let events = start_events(&rig);
    let listed = rig.resolve(3, allow("192.0.2.10/32"));
    let (a, ns_a) = rig.sandbox("flooder", &listed);
    let (b, ns_b) = rig.sandbox("neighbour", &listed);
    // Two thousand denied datagrams (new connections: a new port each)
    // within a fraction of a second.
    let started = Instant::now();
    ns_a.run(|| {
        for port in 20000..22000u16 {
            let u = UdpSocket::bind("0.0.0.0:0")?;
            u.send_to(b"x", SocketAddr::new(SERVER4_B, port))?;
        }
        Ok(())
    })
    .unwrap();
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let mut from_a = 0;
    while let Ok(e) = events.receiver().try_recv() {
        from_a += usize::from(e.slot == a.index);
    }
    assert_eq!(
        events.counters(a.index).by_reason.get("not_in_allow_list"),
        Some(&(from_a as u64))
    );
    // At most the rate over the elapsed time plus the burst the kernel
    // allows (it refills per jiffy); far fewer than the two thousand sent.
    let bound = 5.0 + (elapsed.as_secs_f64() + 0.6) * 20.0 * 2.0;
    assert!(
        from_a >= 1 && (from_a as f64) <= bound,
        "{from_a} events in {elapsed:?}"
    );
    // Another slot's events are not starved by the flood.
    assert!(!probe(&ns_b, Proto::Tcp, SERVER4_B, TCP_ECHO));
    assert_eq!(next(&events, b.index).reason, "not_in_allow_list");
}
