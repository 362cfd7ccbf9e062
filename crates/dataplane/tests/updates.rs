//! Live updates: a new policy applies to connections already open. One it
//! denies stops passing packets within a second; one it still allows runs
//! on; one admitted through DNS outlives its admission while the policy
//! that allowed it stands.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sandgate_dataplane::probe::Proto;
use sandgate_lab::addrs::*;
use sandgate_netns::Netns;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn an_update_to_blocked_cuts_a_running_transfer_within_a_second() {
    let mut rig = Rig::new();
    let listed = rig.resolve(3, allow("192.0.2.10/32, 2001:db8:1::10/128"));
    let (slot, ns) = rig.sandbox("downloader", &listed);
    for server in [SERVER4, SERVER6] {
        let t = transfer(&ns, server);
        assert!(
            t.progress(Duration::from_millis(300)) > 0,
            "{server}: the transfer runs"
        );
        let blocked_policy = rig.resolve(3, blocked());
        let start = Instant::now();
        rig.dp().update(slot.index, &blocked_policy).unwrap();
        let applied = start.elapsed();
        // Whatever was in flight has arrived after a second; then nothing.
        thread::sleep(Duration::from_secs(1).saturating_sub(applied));
        assert_eq!(
            t.progress(Duration::from_secs(1)),
            0,
            "{server}: bytes after the cut"
        );
        // And back, for the next family.
        rig.dp().update(slot.index, &listed).unwrap();
    }
}

#[test]
fn an_update_that_keeps_the_destination_leaves_the_transfer_running() {
    let mut rig = Rig::new();
    let listed = rig.resolve(3, allow("192.0.2.10/32"));
    let (slot, ns) = rig.sandbox("downloader", &listed);
    let t = transfer(&ns, SERVER4);
    assert!(t.progress(Duration::from_millis(300)) > 0);
    // More entries, and a narrower list that still holds SERVER4.
    for list in [
        "192.0.2.10/32, 198.51.100.0/24",
        "192.0.2.0/24",
        "192.0.2.10/32",
    ] {
        let p = rig.resolve(3, allow(list));
        rig.dp().update(slot.index, &p).unwrap();
        assert!(
            t.progress(Duration::from_millis(500)) > 0,
            "stalled after update to {list}"
        );
    }
    // Removing it stops it.
    let p = rig.resolve(3, allow("198.51.100.0/24"));
    rig.dp().update(slot.index, &p).unwrap();
    thread::sleep(Duration::from_secs(1));
    assert_eq!(t.progress(Duration::from_secs(1)), 0);
    assert!(!probe(&ns, Proto::Tcp, SERVER4, TCP_ECHO));
    assert!(probe(&ns, Proto::Tcp, SERVER4_B, TCP_ECHO));
}

#[test]
fn an_admitted_connection_outlives_its_admission_while_the_policy_stands() {
    let mut rig = Rig::new();
    let restricted = rig.resolve(1, open());
    let (slot, ns) = rig.sandbox("resolver-user", &restricted);
    rig.dp()
        .admit(slot.index, SERVER4, &essential(), Duration::from_secs(1))
        .unwrap();
    let t = transfer(&ns, SERVER4);
    thread::sleep(Duration::from_millis(2500));
    // The admission is over: no new connection ...
    assert!(!probe(&ns, Proto::Tcp, SERVER4, TCP_ECHO));
    // ... but the one it allowed still runs.
    assert!(t.progress(Duration::from_millis(500)) > 0);
}

#[test]
fn removing_a_domain_withdraws_its_admissions_and_cuts_their_connections() {
    let mut rig = Rig::new();
    let both = rig.resolve(3, allow_domains("*.example.com, example.net"));
    let (slot, ns) = rig.sandbox("names", &both);
    let example_com = sandgate_policy::Reason::DomainAllowList(
        sandgate_policy::DomainPattern::parse("*.example.com").unwrap(),
    );
    let example_net = sandgate_policy::Reason::DomainAllowList(
        sandgate_policy::DomainPattern::parse("example.net").unwrap(),
    );
    rig.dp()
        .admit(slot.index, SERVER4, &example_com, Duration::from_secs(300))
        .unwrap();
    rig.dp()
        .admit(
            slot.index,
            SERVER4_B,
            &example_net,
            Duration::from_secs(300),
        )
        .unwrap();
    // A rule the policy does not have admits nothing.
    let other = sandgate_policy::Reason::DomainAllowList(
        sandgate_policy::DomainPattern::parse("*.example.org").unwrap(),
    );
    assert!(rig
        .dp()
        .admit(slot.index, SERVER6, &other, Duration::from_secs(300))
        .is_err());
    let t = transfer(&ns, SERVER4);
    assert!(t.progress(Duration::from_millis(300)) > 0);
    // example.com goes; example.net stays.
    let one = rig.resolve(3, allow_domains("example.net"));
    rig.dp().update(slot.index, &one).unwrap();
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        t.progress(Duration::from_secs(1)),
        0,
        "the transfer admitted for example.com runs on"
    );
    assert!(!probe(&ns, Proto::Tcp, SERVER4, TCP_ECHO));
    assert!(probe(&ns, Proto::Tcp, SERVER4_B, TCP_ECHO));
    // A tier downgrade to restricted keeps only essential-service admissions.
    rig.dp()
        .admit(slot.index, SERVER6, &essential(), Duration::from_secs(300))
        .unwrap();
    let restricted = rig.resolve(1, open());
    rig.dp().update(slot.index, &restricted).unwrap();
    assert!(!probe(&ns, Proto::Tcp, SERVER4_B, TCP_ECHO));
    assert!(probe(&ns, Proto::Tcp, SERVER6, TCP_ECHO));
}

#[test]
fn overlapping_entries_and_a_restart_after_updates_keep_working() {
    let mut rig = Rig::new();
    // A /32 inside a /24, given in both orders, at create and by update.
    let nested = rig.resolve(3, allow("192.0.2.0/24, 192.0.2.10"));
    let (a, ns_a) = rig.sandbox("nested", &nested);
    let single = rig.resolve(3, allow("192.0.2.10"));
    let (b, ns_b) = rig.sandbox("single", &single);
    let widened = rig.resolve(3, allow("192.0.2.10, 192.0.2.0/24, 198.51.100.0/24"));
    rig.dp().update(b.index, &widened).unwrap();
    assert!(probe(&ns_a, Proto::Tcp, SERVER4, TCP_ECHO));
    assert!(probe(&ns_b, Proto::Tcp, SERVER4_B, TCP_ECHO));
    // Restart: both slots come back as they were.
    rig.dp = None;
    let (dp, report) =
        sandgate_dataplane::Dataplane::start(rig.cfg.clone(), rig.policy.clone()).unwrap();
    rig.dp = Some(dp);
    assert_eq!(report.restored, vec![a.index, b.index]);
    assert!(probe(&ns_a, Proto::Tcp, SERVER4, TCP_ECHO));
    assert!(!probe(&ns_a, Proto::Tcp, SERVER4_B, TCP_ECHO));
    assert!(probe(&ns_b, Proto::Tcp, SERVER4_B, TCP_ECHO));
    // And updates after the restart work from what was restored.
    rig.dp().update(b.index, &single).unwrap();
    assert!(!probe(&ns_b, Proto::Tcp, SERVER4_B, TCP_ECHO));
    assert!(probe(&ns_b, Proto::Tcp, SERVER4, TCP_ECHO));
}

#[test]
fn a_cut_slot_passes_nothing_until_its_next_update_rebuilds_it() {
    let mut rig = Rig::new();
    let listed = rig.resolve(3, allow("192.0.2.10/32"));
    let (slot, ns) = rig.sandbox("cut", &listed);
    assert!(probe(&ns, Proto::Tcp, SERVER4, TCP_ECHO));
    let running = transfer(&ns, SERVER4);
    assert!(running.progress(Duration::from_millis(300)) > 0);
    rig.dp().cut(slot.index).unwrap();
    // Cut: the open connection stops and nothing new passes.
    thread::sleep(Duration::from_millis(100));
    assert_eq!(running.progress(Duration::from_millis(500)), 0);
    assert!(!probe(&ns, Proto::Tcp, SERVER4, TCP_ECHO));
    // The next update (here: the same policy) puts the slot back whole.
    rig.dp().update(slot.index, &listed).unwrap();
    assert!(probe(&ns, Proto::Tcp, SERVER4, TCP_ECHO));
    assert!(!probe(&ns, Proto::Tcp, SERVER4_B, TCP_ECHO));
}

/// The source address the world sees a connection from `ns` come from.
fn source_seen(ns: &Netns, dest: IpAddr) -> IpAddr {
    let text = ns
        .run(|| {
            let mut c = TcpStream::connect_timeout(&SocketAddr::new(dest, WHOAMI), WAIT)?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut text = String::new();
            c.read_to_string(&mut text)?;
            Ok(text)
        })
        .unwrap();
    text.trim().parse().unwrap()
}

#[test]
fn a_known_egress_address_is_where_connections_leave_from_and_an_update_moves_it() {
    let mut rig = Rig::new();
    let plain = rig.resolve(3, open());
    let (IpAddr::V4(e4), IpAddr::V6(e6)) = (EGRESS4, EGRESS6) else {
        unreachable!()
    };
    let both = sandgate_policy::EgressAddress {
        ipv4: Some(e4),
        ipv6: Some(e6),
    };
    let known = plain.clone().with_egress_address(Some(both));
    let (a, a_ns) = rig.sandbox("a", &known);
    let (_, b_ns) = rig.sandbox("b", &plain);
    let host = (HOST_LINK4.addr(), HOST_LINK6.addr());
    assert_eq!(source_seen(&a_ns, SERVER4), EGRESS4);
    assert_eq!(source_seen(&a_ns, SERVER6_B), EGRESS6);
    // Another organization's sandbox leaves from the host's address.
    assert_eq!(source_seen(&b_ns, SERVER4), host.0);
    assert_eq!(source_seen(&b_ns, SERVER6_B), host.1);

    // IPv4 only: IPv6 leaves from the host's address again.
    let v4_only = sandgate_policy::EgressAddress {
        ipv4: Some(e4),
        ipv6: None,
    };
    rig.dp()
        .update(a.index, &plain.clone().with_egress_address(Some(v4_only)))
        .unwrap();
    assert_eq!(source_seen(&a_ns, SERVER4_B), EGRESS4);
    assert_eq!(source_seen(&a_ns, SERVER6), host.1);
    // Without one, both families leave from the host's addresses.
    rig.dp().update(a.index, &plain).unwrap();
    assert_eq!(source_seen(&a_ns, SERVER4), host.0);
    assert_eq!(source_seen(&a_ns, SERVER6), host.1);
    // And back, after a restart of the dataplane that rebuilds its state.
    rig.dp().update(a.index, &known).unwrap();
    rig.dp = None;
    let (dp, _) =
        sandgate_dataplane::Dataplane::start(rig.cfg.clone(), rig.policy.clone()).unwrap();
    rig.dp = Some(dp);
    assert_eq!(source_seen(&a_ns, SERVER4), EGRESS4);
    assert_eq!(source_seen(&a_ns, SERVER6), EGRESS6);
    assert_eq!(source_seen(&b_ns, SERVER4), host.0);
}

/// Whether slot `index` has its pacer (`sgh<index>p`) in the host.
fn paced(rig: &Rig, index: u32) -> bool {
    let name = format!("{}p", rig.cfg.slot(index).host_if);
    rig.lab
        .host()
        .run(|| sandgate_netns::Rtnl::open()?.link_index(&name))
        .unwrap()
        .is_some()
}

#[test]
fn an_egress_budget_paces_what_its_slot_sends_and_no_other() {
    use sandgate_lab::bench::{upload_mbit, upload_mbit_at_most};
    let mut rig = Rig::new();
    let free_policy = rig.resolve(3, open());
    let budget = |mbps: u32| {
        let mut p = free_policy.clone();
        p.budgets.egress_mbps = Some(mbps);
        p
    };
    let (a, a_ns) = rig.sandbox("paced", &budget(20));
    let (b, b_ns) = rig.sandbox("free", &free_policy);
    assert!(paced(&rig, a.index) && !paced(&rig, b.index));
    let time = Duration::from_secs(2);
    // Both at once, each to a server of its own; the one without a
    // budget kept by its sender to 200 Mbit/s (far over the budget, far
    // under what would take both cores from the paced one's sender and
    // sink: unbounded, it once starved it to 16 Mbit/s under CI's load).
    let other = thread::spawn(move || upload_mbit_at_most(&b_ns, SERVER4_B, time, 200.0).unwrap());
    let limited = upload_mbit(&a_ns, SERVER4, time).unwrap();
    let free = other.join().unwrap();
    println!("20 Mbit/s budget: {limited:.1} Mbit/s; beside it, no budget: {free:.1} Mbit/s");
    assert!(
        sandgate_lab::bench::within_budget(limited, 20.0),
        "{limited:.2} Mbit/s under a budget of 20"
    );
    assert!(
        free > 60.0,
        "the sandbox without a budget sent {free:.1} Mbit/s"
    );

    // An update paces it anew, without a moment unpaced; a restart of the
    // dataplane keeps it, and mends what a crash or the watchdog left
    // broken (the pacer set down, the redirect to it gone); no budget
    // removes the pacer.
    rig.dp().update(a.index, &budget(50)).unwrap();
    rig.dp = None;
    let host_if = rig.cfg.slot(a.index).host_if;
    let pacer = format!("{host_if}p");
    for cmd in [
        vec!["ip", "link", "set", &pacer, "down"],
        vec!["tc", "qdisc", "del", "dev", &host_if, "ingress"],
    ] {
        let status = rig
            .lab
            .host()
            .run(|| std::process::Command::new(cmd[0]).args(&cmd[1..]).status())
            .unwrap();
        assert!(status.success(), "{cmd:?}");
    }
    let (dp, _) =
        sandgate_dataplane::Dataplane::start(rig.cfg.clone(), rig.policy.clone()).unwrap();
    rig.dp = Some(dp);
    let fifty = upload_mbit(&a_ns, SERVER6, time).unwrap();
    assert!(
        sandgate_lab::bench::within_budget(fifty, 50.0),
        "{fifty:.2} Mbit/s under a budget of 50"
    );
    rig.dp().update(a.index, &free_policy).unwrap();
    assert!(!paced(&rig, a.index));
    let unpaced = upload_mbit(&a_ns, SERVER4, Duration::from_secs(1)).unwrap();
    assert!(unpaced > 100.0, "{unpaced:.1} Mbit/s without a budget");
    // A deleted slot leaves no pacer behind.
    rig.dp().update(a.index, &budget(10)).unwrap();
    assert!(paced(&rig, a.index));
    rig.dp().delete(a.index).unwrap();
    assert!(!paced(&rig, a.index));
}

/// Whether the host's table has chain `chain`.
fn has_chain(rig: &Rig, chain: &str) -> bool {
    let table = rig.cfg.table.clone();
    rig.lab
        .host()
        .run(|| {
            std::process::Command::new("nft")
                .args(["list", "chain", "inet", &table, chain])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
        })
        .unwrap()
        .success()
}

#[test]
fn a_connection_budget_gets_a_share_class_that_goes_with_its_last_slot() {
    use sandgate_dataplane::ruleset::ShareClass;
    let mut rig = Rig::new();
    let tier = rig.resolve(3, open());
    let mut budget = tier.clone();
    budget.fair_shares = tier.fair_shares.narrowed(Some(3), None);
    let chain = ShareClass::of(&budget.fair_shares).chain();
    assert!(!has_chain(&rig, &chain));
    let (a, a_ns) = rig.sandbox("budgeted", &budget);
    assert!(has_chain(&rig, &chain));
    // Three connections at once; the fourth is refused, in the kernel.
    let connect =
        || a_ns.run(|| TcpStream::connect_timeout(&SocketAddr::new(SERVER4, TCP_ECHO), WAIT));
    let held: Vec<TcpStream> = (0..3).map(|_| connect().unwrap()).collect();
    assert!(connect().is_err(), "a fourth connection passed");
    drop(held);
    // A second slot of the same class shares the chain; the class goes
    // when its last slot leaves it (by an update, then a delete).
    let (b, _) = rig.sandbox("same", &budget);
    rig.dp().update(a.index, &tier).unwrap();
    assert!(has_chain(&rig, &chain));
    rig.dp().delete(b.index).unwrap();
    assert!(!has_chain(&rig, &chain));
    // Back again, kept across a restart, and gone with a delete.
    rig.dp().update(a.index, &budget).unwrap();
    rig.dp = None;
    let (dp, _) =
        sandgate_dataplane::Dataplane::start(rig.cfg.clone(), rig.policy.clone()).unwrap();
    rig.dp = Some(dp);
    assert!(has_chain(&rig, &chain));
    let held: Vec<TcpStream> = (0..3).map(|_| connect().unwrap()).collect();
    assert!(
        connect().is_err(),
        "a fourth connection passed after a restart"
    );
    drop(held);
    rig.dp().delete(a.index).unwrap();
    assert!(!has_chain(&rig, &chain));
}

/// Waits until `t` has received nothing for 300 ms (at most 10 s), and
/// returns what it received in all.
fn until_stalled(t: &Counting) -> u64 {
    let start = Instant::now();
    while t.progress(Duration::from_millis(300)) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the transfer never stopped"
        );
    }
    t.count.load(Ordering::SeqCst)
}

#[test]
fn a_transfer_quota_stops_its_slot_for_the_rest_of_its_period_and_no_other() {
    use sandgate_dataplane::KernelCounters;
    let mib = 1u64 << 20;
    let mut rig = Rig::new();
    let free_policy = rig.resolve(3, open());
    // The longest period: no period ends during the test.
    let year = 31_622_400;
    let quota = |n: u32| {
        let mut p = free_policy.clone();
        p.budgets.transfer_quota_mib = Some(n);
        p.budgets.transfer_period_seconds = Some(year);
        p
    };
    let (a, a_ns) = rig.sandbox("metered", &quota(2));
    let (_, b_ns) = rig.sandbox("unmetered", &free_policy);
    // Headers and the other direction count too: a little less than the
    // quota arrives, then nothing.
    let first = transfer(&a_ns, SERVER4);
    let got = until_stalled(&first);
    assert!(
        got < 2 * mib && got > 3 * mib / 2,
        "{got} bytes under a quota of 2 MiB"
    );
    let free = transfer(&b_ns, SERVER4_B);
    assert!(free.progress(Duration::from_millis(300)) > 2 * mib);
    drop(free);
    let connect = |ns: &Netns| {
        ns.run(|| TcpStream::connect_timeout(&SocketAddr::new(SERVER4, TCP_STREAM), WAIT))
    };
    assert!(connect(&a_ns).is_err(), "a new connection passed");
    // The kernel's count, as the runner reads it.
    let mut counters = KernelCounters::open(Some(rig.lab.host()), &rig.cfg.table).unwrap();
    let counted = counters.read().unwrap().transfer[&a.index];
    assert_eq!(counted.bytes, 2 * mib);
    assert!(counted.consumed >= 2 * mib, "{counted:?}");
    drop(first);

    // A larger quota keeps what the period counted: 2 MiB more.
    rig.dp().update(a.index, &quota(4)).unwrap();
    let more = until_stalled(&transfer(&a_ns, SERVER4));
    assert!(
        more < 2 * mib && more > mib,
        "{more} bytes after the quota went from 2 to 4 MiB"
    );
    // A restart of the dataplane keeps the count within its period.
    rig.dp = None;
    let (dp, _) =
        sandgate_dataplane::Dataplane::start(rig.cfg.clone(), rig.policy.clone()).unwrap();
    rig.dp = Some(dp);
    assert!(connect(&a_ns).is_err(), "a restart gave the quota back");
    // The next period starts from nothing.
    let renewed = rig.dp().renew_transfer(now_s() + u64::from(year)).unwrap();
    assert_eq!(renewed, vec![a.index]);
    let again = transfer(&a_ns, SERVER4);
    assert!(again.progress(Duration::from_millis(300)) > mib);
    drop(again);
    // No quota, no limit; a deleted slot leaves no element behind.
    rig.dp().update(a.index, &free_policy).unwrap();
    assert!(!counters.read().unwrap().transfer.contains_key(&a.index));
    let free = transfer(&a_ns, SERVER4);
    assert!(free.progress(Duration::from_millis(500)) > 4 * mib);
    // A quota given to a slot holds its connections already running too
    // (they pass by their generation, whose entry now counts them): the
    // one above stops after about 1 MiB more (counted from the update's
    // end: what arrived while it ran was not yet counted).
    rig.dp().update(a.index, &quota(1)).unwrap();
    let before = free.count.load(Ordering::SeqCst);
    let after = until_stalled(&free) - before;
    assert!(
        after < 2 * mib,
        "{after} bytes on a running connection after a quota of 1 MiB"
    );
    drop(free);
    assert!(counters.read().unwrap().transfer.contains_key(&a.index));
    rig.dp().delete(a.index).unwrap();
    assert!(counters.read().unwrap().transfer.is_empty());
}

fn now_s() -> u64 {
    sandgate_dataplane::now_ms() / 1000
}
