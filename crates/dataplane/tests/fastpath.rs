//! The TC-BPF fast path (`fast_path` on): established TCP and UDP flows
//! of a slot are forwarded, and translated, by the program without
//! netfilter, and a policy update, a tier downgrade and a delete each take
//! them off it and cut them within a second, as without it.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sandgate_dataplane::{FastPathMode, FastPathStats};
use sandgate_lab::addrs::*;
use std::thread;
use std::time::{Duration, Instant};

fn stats(rig: &Rig) -> FastPathStats {
    rig.dp
        .as_ref()
        .unwrap()
        .fast_path_stats()
        .expect("the fast path is on")
        .unwrap()
}

/// Waits until the fast path forwards packets both ways (at most 5 s),
/// and says what it did.
fn carried(rig: &Rig) -> FastPathStats {
    let base = stats(rig).forwarded;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = stats(rig);
        if s.forwarded.out.0 > base.out.0 + 10 && s.forwarded.back.0 > base.back.0 + 10 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the fast path carried nothing: {s:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// How a running flow is cut.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Update,
    Downgrade,
    Delete,
}

#[test]
fn established_flows_take_the_fast_path_and_an_update_a_downgrade_and_a_delete_cut_them() {
    let mut rig = Rig::with(|c| c.fast_path = FastPathMode::On);
    for (server, cut) in [
        (SERVER4, Cut::Update),
        (SERVER6, Cut::Update),
        (SERVER4, Cut::Downgrade),
        (SERVER6, Cut::Downgrade),
        (SERVER4, Cut::Delete),
        (SERVER6, Cut::Delete),
    ] {
        let what = format!("{server}, {cut:?}");
        let policy = rig.resolve(3, open());
        let (slot, ns) = rig.sandbox("fast", &policy);
        let tcp = transfer(&ns, server);
        let udp = udp_stream(&ns, server);
        let s = carried(&rig);
        // Both flows run on it, and go on running past the packet a
        // second that connection tracking sees.
        for _ in 0..3 {
            let window = Duration::from_millis(400);
            assert!(tcp.progress(window) > 0, "{what}: the transfer runs");
            assert!(udp.progress(window) > 0, "{what}: the echoes come");
        }
        let later = stats(&rig);
        // Connection tracking was made liberal for these flows, not for
        // the whole host.
        let liberal = rig
            .lab
            .host()
            .run(|| std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal"))
            .unwrap();
        assert_eq!(
            liberal.trim(),
            "0",
            "{what}: the host's setting is untouched"
        );
        assert!(
            later.forwarded.back.1 > s.forwarded.back.1
                && later.forwarded.out.0 > s.forwarded.out.0,
            "{what}: the fast path forwards both ways: {s:?} then {later:?}"
        );
        let (blocked_policy, restricted) = (rig.resolve(3, blocked()), rig.resolve(1, open()));
        let start = Instant::now();
        match cut {
            Cut::Update => rig.dp().update(slot.index, &blocked_policy),
            Cut::Downgrade => rig.dp().update(slot.index, &restricted),
            Cut::Delete => rig.dp().delete(slot.index),
        }
        .unwrap();
        let applied = start.elapsed();
        // Whatever was in flight has arrived after a second; then nothing.
        thread::sleep(Duration::from_secs(1).saturating_sub(applied));
        assert_eq!(
            tcp.progress(Duration::from_secs(1)),
            0,
            "{what}: bytes after the cut"
        );
        assert_eq!(
            udp.progress(Duration::from_secs(1)),
            0,
            "{what}: echoes after the cut"
        );
        drop((tcp, udp));
        if !matches!(cut, Cut::Delete) {
            rig.dp().delete(slot.index).unwrap();
        }
    }
}

#[test]
fn a_flow_that_an_update_still_allows_stays_on_the_fast_path_and_a_metered_slot_has_none() {
    let mut rig = Rig::with(|c| c.fast_path = FastPathMode::On);
    let listed = rig.resolve(3, allow("192.0.2.10/32, 2001:db8:1::10/128"));
    let (slot, ns) = rig.sandbox("fast", &listed);
    let tcp = transfer(&ns, SERVER4);
    carried(&rig);
    // A new generation that still allows it: netfilter evaluates it
    // again, marks it anew, and the flow goes back on the fast path.
    let wider = rig.resolve(3, allow("192.0.2.0/24, 2001:db8:1::10/128"));
    rig.dp().update(slot.index, &wider).unwrap();
    thread::sleep(Duration::from_millis(500));
    let before = stats(&rig).forwarded.back.1;
    assert!(tcp.progress(Duration::from_millis(500)) > 0);
    let after = stats(&rig).forwarded.back.1;
    assert!(
        after > before,
        "back on the fast path: {before} then {after}"
    );
    drop(tcp);
    rig.dp().delete(slot.index).unwrap();

    // With a transfer quota, netfilter counts every packet: the slot's
    // marks are never valid on the fast path, and its flows stay off it.
    let marks = |rig: &mut Rig| {
        let mut m = rig.dp().fast_path_marks().unwrap().unwrap();
        m.sort();
        m
    };
    let before = marks(&mut rig);
    let mut metered = rig.resolve(3, open());
    metered.budgets.transfer_quota_mib = Some(1 << 20);
    metered.budgets.transfer_period_seconds = Some(31_622_400);
    let (_, ns) = rig.sandbox("metered", &metered);
    assert_eq!(
        marks(&mut rig),
        before,
        "a metered slot's marks on the fast path"
    );
    let before = stats(&rig).forwarded;
    let tcp = transfer(&ns, SERVER4);
    assert!(tcp.progress(Duration::from_millis(1500)) > 0);
    let s = stats(&rig);
    assert_eq!(
        s.forwarded, before,
        "a metered flow on the fast path: {s:?}"
    );
}

#[test]
fn the_flow_log_counts_what_a_flow_forwarded_on_the_fast_path() {
    use std::sync::atomic::Ordering;
    let mut rig = Rig::with(|c| c.fast_path = FastPathMode::On);
    let ended = rig.dp.as_ref().unwrap().fast_path_ended();
    let flows = sandgate_dataplane::Flows::start(Some(rig.lab.host()), &rig.cfg, ended).unwrap();
    let policy = rig.resolve(3, open());
    let (slot, ns) = rig.sandbox("logged", &policy);
    let tcp = transfer(&ns, SERVER4);
    carried(&rig);
    thread::sleep(Duration::from_millis(1500));
    let fast = stats(&rig).forwarded.back.1;
    let bytes = tcp.count.clone();
    drop(tcp);
    let received = bytes.load(Ordering::SeqCst);
    assert!(
        fast > received / 2,
        "most of the download went by the fast path: {fast} of {received}"
    );
    // Its end, now (as a delete ends a slot's flows).
    let source = slot.sandbox4.to_string();
    ip(&[
        "netns",
        "exec",
        rig.lab.host().name(),
        "conntrack",
        "-D",
        "-s",
        &source,
    ]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let back = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = flows
            .receiver()
            .recv_timeout(left)
            .expect("the download's end in the flow log");
        if let (Some((_, back)), "tcp", Some(19)) = (f.ended, f.protocol.as_str(), f.port) {
            assert_eq!(f.slot, slot.index);
            break back;
        }
    };
    // IP packets, headers and all: at least what the reader read.
    assert!(
        back >= received,
        "the flow log's bytes to the slot, {back}, are fewer than the {received} it received"
    );
}

/// Runs the `ip` program with `args`; it must succeed.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// Turns off what `dev` in namespace `ns` leaves for the device to
/// complete: checksums, and segmentation (which completes them too).
fn checksums_in_software(ns: &str, dev: &str) {
    ip(&[
        "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off",
    ]);
}

#[test]
fn a_translated_packet_carries_right_checksums_where_no_device_completes_them() {
    // Over veth a checksum the sender left to the device is never
    // checked: with the sandbox's and the world's devices computing them
    // in software, a receiver checks every one, and a wrong translation
    // drops the packet.
    let mut rig = Rig::with(|c| c.fast_path = FastPathMode::On);
    checksums_in_software(rig.lab.world().name(), sandgate_lab::WAN);
    let policy = rig.resolve(3, open());
    let (_, ns) = rig.sandbox("software", &policy);
    checksums_in_software(ns.name(), sandgate_dataplane::SANDBOX_IF);
    for server in [SERVER4, SERVER6] {
        let before = stats(&rig);
        let tcp = transfer(&ns, server);
        let udp = udp_stream(&ns, server);
        thread::sleep(Duration::from_millis(1500));
        for _ in 0..2 {
            let window = Duration::from_millis(500);
            assert!(tcp.progress(window) > 0, "{server}: the transfer runs");
            assert!(udp.progress(window) > 0, "{server}: the echoes come");
        }
        let after = stats(&rig);
        assert!(
            after.forwarded.back.0 > before.forwarded.back.0 + 100
                && after.forwarded.out.0 > before.forwarded.out.0 + 100,
            "{server}: on the fast path: {before:?} then {after:?}"
        );
    }
}

fn mtu(ns: &str, link: &str, mtu: u16) {
    ip(&["-n", ns, "link", "set", link, "mtu", &mtu.to_string()]);
}

#[test]
fn a_datagram_larger_than_the_next_link_takes_gets_its_error_as_without_the_fast_path() {
    // The program keeps a flow's route (its next link's MTU with it) for
    // up to a second: once the uplink's MTU is lowered, a datagram too
    // large for it must still go to netfilter, whose ICMP error (IPv4's
    // "fragmentation needed", IPv6's "packet too big") teaches the sender
    // the path's MTU (it then fragments, and the echo comes). Redirected
    // instead, it would be dropped by the link, untold.
    let mut rig = Rig::with(|c| c.fast_path = FastPathMode::On);
    let policy = rig.resolve(3, open());
    for (name, server) in [("mtu4", SERVER4), ("mtu6", SERVER6)] {
        mtu(rig.lab.host().name(), sandgate_lab::UPLINK, 1500);
        mtu(rig.lab.world().name(), sandgate_lab::WAN, 1500);
        let (_, ns) = rig.sandbox(name, &policy);
        let socket = udp_echo_socket(&ns, server);
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let echoed = |size: usize| {
            let mut buf = [0u8; 2048];
            let _ = socket.send(&vec![7u8; size]);
            let deadline = Instant::now() + Duration::from_millis(100);
            while Instant::now() < deadline {
                if socket.recv(&mut buf).is_ok_and(|n| n == size) {
                    return true;
                }
            }
            false
        };
        // Small datagrams until the fast path carries the flow.
        let base = stats(&rig).forwarded;
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats(&rig).forwarded.out.0 < base.out.0 + 10 {
            assert!(
                Instant::now() < deadline,
                "{server}: the fast path never carried the flow"
            );
            echoed(64);
        }
        assert!(
            echoed(1400),
            "{server}: a 1400-byte datagram before the change"
        );
        mtu(rig.lab.host().name(), sandgate_lab::UPLINK, 1280);
        mtu(rig.lab.world().name(), sandgate_lab::WAN, 1280);
        // Small datagrams for over a second: the flow's entry looks its
        // route up again, and the packets that go to netfilter once a
        // second are small ones.
        let small = Instant::now() + Duration::from_millis(1200);
        while Instant::now() < small {
            echoed(64);
        }
        // Then a large one among many small ones: without the program's
        // size check a large one would reach netfilter only by being a
        // flow's packet of the second (about one chance in 200 each
        // second).
        let deadline = Instant::now() + Duration::from_secs(3);
        while !echoed(1400) {
            assert!(
                Instant::now() < deadline,
                "{server}: no 1400-byte datagram came back in 3 s after the uplink's MTU went to 1280: {:?}",
                stats(&rig)
            );
            for _ in 0..200 {
                echoed(64);
            }
        }
    }
}

#[test]
fn a_slot_its_create_made_forwards_through_netfilter_until_its_program_is_attached_after() {
    // A create that found no warm slot returns before the slot's program
    // is attached (each attachment waits for an RCU grace period):
    // meanwhile what the slot sends goes through netfilter, and the
    // refiller's step after the create attaches it. A paced slot is left
    // none to attach.
    let mut rig = Rig::with(|c| c.fast_path = FastPathMode::On);
    let policy = rig.resolve(3, open());
    let slot = rig.dp().create("cold", &policy).unwrap();
    let ns = sandgate_netns::Netns::open(&slot.netns).unwrap();
    let before = stats(&rig).forwarded.out;
    let udp = udp_stream(&ns, SERVER4);
    assert!(
        udp.progress(Duration::from_millis(1500)) > 0,
        "the echoes come before the slot's program is attached"
    );
    let s = stats(&rig);
    assert_eq!(
        s.forwarded.out, before,
        "the slot's packets on the fast path before its program was attached: {s:?}"
    );
    // The warm pool is empty (0 wanted): the step attaches, and then
    // there is nothing left to do.
    assert!(rig.dp().fill_pool_step().unwrap(), "one to attach");
    assert!(!rig.dp().fill_pool_step().unwrap(), "nothing after it");
    carried(&rig);
    drop(udp);
    rig.dp().delete(slot.index).unwrap();

    let mut paced = rig.resolve(3, open());
    paced.budgets.egress_mbps = Some(1000);
    let slot = rig.dp().create("paced", &paced).unwrap();
    assert_eq!(
        rig.dp().attach_later(),
        0,
        "a paced slot's program left to attach"
    );
    let ns = sandgate_netns::Netns::open(&slot.netns).unwrap();
    let before = stats(&rig).forwarded.out;
    let udp = udp_stream(&ns, SERVER4);
    assert!(udp.progress(Duration::from_millis(1500)) > 0);
    let s = stats(&rig);
    assert_eq!(
        s.forwarded.out, before,
        "a paced slot's packets on the fast path: {s:?}"
    );
}
