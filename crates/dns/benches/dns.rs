//! What the DNS service adds to a query, in the lab: the same questions
//! to the same upstream (the lab's world server), side by side:
//!
//! - baseline: asked of the upstream directly, from the host namespace;
//! - forward: through the service for an `open` sandbox (forwarding only);
//! - admit: through the service for an `allowlist` sandbox whose list
//!   allows the name (policy check, forwarding, and an admission in the
//!   kernel before the answer).
//!
//! The cache is off, so that every query is forwarded. One client asks
//! one question at a time, so queries per second are those of one core;
//! the three paths take turns, 100 queries at a time. The fair shares are
//! set far above what one client reaches: this measures the service's
//! cost, not its limits.
//!
//! `cargo bench -p sandgate-dns --bench dns` (as root).

#![allow(clippy::unwrap_used, missing_docs, dead_code)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use hickory_proto::rr::RecordType;
use sandgate_lab::addrs::DNS4;
use sandgate_netns::Netns;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const N: usize = 2000;

fn timed(ns: &Netns, server: SocketAddr, names: &[String]) -> Vec<Duration> {
    ns.run(|| {
        let bind = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let u = UdpSocket::bind(bind)?;
        u.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = Vec::with_capacity(names.len());
        let mut buf = [0u8; 4096];
        for name in names {
            let q = query(name, RecordType::A);
            let t = Instant::now();
            u.send_to(&q, server)?;
            u.recv(&mut buf)?;
            out.push(t.elapsed());
        }
        Ok(out)
    })
    .unwrap()
}

fn pct(v: &[Duration], q: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn row(name: &str, v: &[Duration], base: &[Duration]) {
    let total: Duration = v.iter().sum();
    println!(
        "  {name:<42} p50 {:>8.1} us  p99 {:>8.1} us  {:>7.0} queries/s  +{:.1} us p50 over the baseline",
        pct(v, 0.5).as_secs_f64() * 1e6,
        pct(v, 0.99).as_secs_f64() * 1e6,
        v.len() as f64 / total.as_secs_f64(),
        (pct(v, 0.5).as_secs_f64() - pct(base, 0.5).as_secs_f64()) * 1e6
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    // The service's cost, not its limits: every share far above what one
    // client asking as fast as it can reaches.
    let mut repr = sandgate_lab::lab_policy_repr(None);
    repr.fair_shares = sandgate_policy::FairSharesRepr {
        dns_queries_per_second: Some(1_000_000),
        dns_in_flight: Some(1_000_000),
        events_per_second: Some(1_000_000),
        ..Default::default()
    };
    let policy = sandgate_policy::PolicyConfig::from_repr(repr).unwrap();
    let rig = Rig::with_policy(policy, Duration::from_secs(60), 0, None);
    let (o, ns_open) = rig.sandbox("open", 3, Default::default());
    let (a, ns_list) = rig.sandbox("allowlist", 3, allow_domains("*.example.com"));
    // Distinct names below example.com: all answered by the world.
    let names: Vec<String> = (0..N).map(|i| format!("host{i}.example.com")).collect();
    let host = Netns::open(rig.lab.host().name()).unwrap();
    // Warm up each path once.
    for (ns, server) in [
        (&host, SocketAddr::new(DNS4, 53)),
        (&ns_open, SocketAddr::new(IpAddr::V4(o.gateway4), 53)),
        (&ns_list, SocketAddr::new(IpAddr::V4(a.gateway4), 53)),
    ] {
        timed(ns, server, &names[..50]);
    }
    // The three paths take turns, 100 queries at a time, so that the
    // machine's drift over the run falls on each alike.
    let (mut base, mut forward, mut admit) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in names.chunks(100) {
        base.extend(timed(&host, SocketAddr::new(DNS4, 53), chunk));
        forward.extend(timed(
            &ns_open,
            SocketAddr::new(IpAddr::V4(o.gateway4), 53),
            chunk,
        ));
        admit.extend(timed(
            &ns_list,
            SocketAddr::new(IpAddr::V4(a.gateway4), 53),
            chunk,
        ));
    }
    println!("\nDNS: {N} A queries each, one at a time, cache off");
    row("baseline: the upstream, asked directly", &base, &base);
    row("service, open sandbox (forward)", &forward, &base);
    row("service, allowlist (check, forward, admit)", &admit, &base);
    println!(
        "  admission adds {:.1} us p50, {:.1} us p99 over forwarding alone",
        (pct(&admit, 0.5).as_secs_f64() - pct(&forward, 0.5).as_secs_f64()) * 1e6,
        (pct(&admit, 0.99).as_secs_f64() - pct(&forward, 0.99).as_secs_f64()) * 1e6
    );
}
