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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A running download from the world's stream service, counting bytes.
struct Transfer {
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Transfer {
    fn start(ns: &Netns, server: IpAddr) -> Transfer {
        let mut conn = ns
            .run(|| TcpStream::connect_timeout(&SocketAddr::new(server, TCP_STREAM), WAIT))
            .unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (bytes.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            while !s.load(Ordering::SeqCst) {
                if let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    b.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        });
        Transfer {
            bytes,
            stop,
            thread: Some(thread),
        }
    }

    /// Bytes received during `window`, starting now.
    fn progress(&self, window: Duration) -> u64 {
        let before = self.bytes.load(Ordering::SeqCst);
        thread::sleep(window);
        self.bytes.load(Ordering::SeqCst) - before
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn an_update_to_blocked_cuts_a_running_transfer_within_a_second() {
    let mut rig = Rig::new();
    let listed = rig.resolve(3, allow("192.0.2.10/32, 2001:db8:1::10/128"));
    let (slot, ns) = rig.sandbox("downloader", &listed);
    for server in [SERVER4, SERVER6] {
        let t = Transfer::start(&ns, server);
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
    let t = Transfer::start(&ns, SERVER4);
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
    let t = Transfer::start(&ns, SERVER4);
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
    let t = Transfer::start(&ns, SERVER4);
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
    let running = Transfer::start(&ns, SERVER4);
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
