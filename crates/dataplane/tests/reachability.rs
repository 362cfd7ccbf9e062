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
