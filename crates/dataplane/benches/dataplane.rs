//! Dataplane benchmarks, each against its baseline in the same run, in
//! the lab (nothing leaves the machine):
//!
//! 1. forwarding: 64-byte UDP (packets/s) and bulk TCP (Mbit/s), IPv4
//!    and IPv6, from a slot through the host namespace to the world, with
//!    1, 100 and 1,000 live slots, against no rules at all and against
//!    NAT and connection tracking alone, sandgate without and with the
//!    TC-BPF fast path (`fast_path`); for IPv4 UDP also against a
//!    linear chain of one rule per sandbox (the reference platform's
//!    layout); at 1,000 slots also with a deny list
//!    of 20 entries on every slot, with the sender's egress paced by a
//!    budget it never reaches, and with a transfer quota on every slot
//!    that none spends; and, at each size, sandgate's ruleset taken apart
//!    a hook at a time (where its share of the cost goes);
//! 2. slot creation, cold and from the warm pool, p50/p99, against making
//!    a namespace and a veth pair with the `ip` program;
//! 3. policy update and DNS admission latency, p50/p99, against one
//!    `nft add element` by the `nft` program.
//!
//! `cargo bench -p sandgate-dataplane --bench dataplane` (as root).
//! `SANDGATE_BENCH_SECONDS` sets the length of each forwarding run (2 s),
//! `SANDGATE_BENCH_ROUNDS` the rounds of the main figures (3; the median
//! is printed);
//! `SANDGATE_BENCH_ONLY=forwarding` runs the forwarding rounds alone,
//! `=fast-path` the fast path's program alone (one slot, against no
//! rules, with its time a packet), `=creation` slot creation and updates
//! alone.

#![allow(clippy::unwrap_used, missing_docs)]

use sandgate_dataplane::{Dataplane, DataplaneConfig, FastPathMode};
use sandgate_lab::addrs::*;
use sandgate_lab::bench::{stats, upload_mbit};
use sandgate_lab::Lab;
use sandgate_netns::Netns;
use sandgate_nftables::load_ruleset;
use sandgate_policy::{EffectivePolicy, PolicyConfig, SettingsRequest};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SINK_PORT: u16 = 9;

fn policy(p: &PolicyConfig, tier: u8, list: Option<&str>) -> EffectivePolicy {
    let req = SettingsRequest {
        network_allow_list: list,
        ..Default::default()
    };
    p.resolve(tier, &p.settings_for_create(tier, &req).unwrap())
        .unwrap()
}

/// A counter of UDP packets to the sink port, in the world, in the kernel.
fn sink(lab: &Lab) {
    lab.world()
        .run(|| {
            load_ruleset(&format!(
                "table inet sink {{}}\ndelete table inet sink\n\
                 table inet sink {{\n  counter pkts {{ }}\n\
                 \x20 chain input {{ type filter hook input priority 0;\n    udp dport {SINK_PORT} counter name pkts drop\n  }}\n}}\n"
            ))
        })
        .unwrap();
}

fn sink_count(lab: &Lab) -> u64 {
    let out = lab
        .world()
        .run(|| {
            Command::new("nft")
                .args(["-j", "list", "counter", "inet", "sink", "pkts"])
                .output()
        })
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i["counter"]["packets"].as_u64())
        .unwrap()
}

/// What a forwarding run sends from the slot to the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// 64-byte UDP datagrams to the world's counting sink, packets/s.
    Udp(IpAddr),
    /// One TCP connection writing as fast as it can to the lab's sink,
    /// Mbit/s of payload received.
    Tcp(IpAddr),
}

/// The loads of every round: UDP and TCP, IPv4 and IPv6 (to addresses
/// the slots' allow list names).
const LOADS: [Load; 4] = [
    Load::Udp(SERVER4),
    Load::Udp(SERVER6_B),
    Load::Tcp(SERVER4),
    Load::Tcp(SERVER6_B),
];

impl Load {
    fn name(self) -> String {
        match self {
            Load::Udp(a) => format!("64-byte UDP, {}", family(a)),
            Load::Tcp(a) => format!("bulk TCP, {}", family(a)),
        }
    }
    fn unit(self) -> &'static str {
        match self {
            Load::Udp(_) => "packets/s",
            Load::Tcp(_) => "Mbit/s",
        }
    }
}

fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// What the world receives while a slot sends `load` as fast as it can.
/// Every run starts with no tracked connection: the runs before it leave
/// theirs (a UDP flow 30 s, a closed TCP connection two minutes), which
/// would count against the slot's fair share of tracked connections and
/// be refused past it.
fn rate(lab: &Lab, ns: &Netns, load: Load, seconds: f64) -> f64 {
    let out = Command::new("ip")
        .args(["netns", "exec", lab.host().name(), "conntrack", "-F"])
        .output()
        .unwrap();
    assert!(out.status.success(), "conntrack -F: {out:?}");
    match load {
        Load::Udp(to) => udp_rate(lab, ns, to, seconds),
        // The lab's sink counts what it received, first byte to last. A
        // connection that could not be made is tried again (said on
        // stderr): a port the last configuration's flows left behind.
        Load::Tcp(to) => (0..3)
            .find_map(
                |_| match upload_mbit(ns, to, Duration::from_secs_f64(seconds)) {
                    Ok(rate) => Some(rate),
                    Err(e) => {
                        eprintln!("bulk TCP to {to}: {e}; again");
                        None
                    }
                },
            )
            .expect("bulk TCP failed three times"),
    }
}

/// Packets/s of 64-byte IPv4 UDP the world receives while a slot sends as
/// fast as it can (the round's main figure), from no tracked connection
/// as every [`rate`].
fn forwarding_rate(lab: &Lab, ns: &Netns, seconds: f64) -> f64 {
    rate(lab, ns, Load::Udp(SERVER4), seconds)
}

/// Packets/s the world receives while a slot sends 64-byte datagrams to
/// `to` as fast as it can.
fn udp_rate(lab: &Lab, ns: &Netns, to: IpAddr, seconds: f64) -> f64 {
    let sock = ns
        .run(|| {
            let s = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
            s.connect(SocketAddr::new(to, SINK_PORT))?;
            Ok(s)
        })
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    // 18 bytes of payload over IPv4, a 64-byte Ethernet frame (IPv6's
    // header is 20 bytes longer: 84 bytes).
    let sender = std::thread::spawn(move || {
        let payload = [0u8; 18];
        while !s2.load(Ordering::Relaxed) {
            let _ = sock.send(&payload);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let (c0, t0) = (sink_count(lab), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (c1, t1) = (sink_count(lab), Instant::now());
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

/// The router a sandbox host needs whatever its policy: source NAT on the
/// way out, which brings connection tracking with it.
const NAT: &str = "  chain linear_nat {\n    type nat hook postrouting priority srcnat; policy accept;\n    iifname \"sgh*\" oifname != \"sgh*\" masquerade\n  }\n";

/// Replaces the host's tables with table `linear` holding `chains`.
fn host_tables(lab: &Lab, chains: &str) {
    let mut text = String::from(
        "table inet sandgate {}\ndelete table inet sandgate\ntable inet linear {}\ndelete table inet linear\n",
    );
    if !chains.is_empty() {
        text.push_str(&format!("table inet linear {{\n{chains}}}\n"));
    }
    lab.host().run(|| load_ruleset(&text)).unwrap();
}

/// The reference layout: one rule per sandbox keyed on its source address,
/// the sender's rule last (the worst case, as for most sandboxes), with the
/// same NAT as sandgate's.
fn linear_chain(lab: &Lab, cfg: &DataplaneConfig, slots: &[u32], sender: u32) {
    let mut chain = String::from(
        "  chain linear_forward {\n    type filter hook forward priority 0; policy accept;\n    iifname != \"sgh*\" accept\n",
    );
    for &i in slots
        .iter()
        .filter(|i| **i != sender)
        .chain(std::iter::once(&sender))
    {
        chain.push_str(&format!(
            "    ip saddr {} ip daddr {{ 192.0.2.10, 198.51.100.0/24, 203.0.113.128/26 }} accept\n",
            cfg.slot(i).sandbox4
        ));
    }
    chain.push_str("    drop\n  }\n");
    host_tables(lab, &format!("{chain}{NAT}"));
}

/// A dataplane with a fresh state in the lab, the fast path as `fast`.
fn fresh(lab: &Lab, policy: &PolicyConfig, fast: FastPathMode) -> (Dataplane, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sandgate-bench-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    (restart_with(lab, policy, &dir, 0, fast), dir)
}

/// The dataplane again on the state in `dir`, as after a restart, with a
/// warm pool of `pool`, and netfilter's path alone (no fast path).
fn restart(lab: &Lab, policy: &PolicyConfig, dir: &Path, pool: usize) -> Dataplane {
    restart_with(lab, policy, dir, pool, FastPathMode::Off)
}

/// [`restart`], with the fast path as `fast`.
fn restart_with(
    lab: &Lab,
    policy: &PolicyConfig,
    dir: &Path,
    pool: usize,
    fast: FastPathMode,
) -> Dataplane {
    let mut cfg = DataplaneConfig::new(policy, lab.tag(), dir.join("state.json")).unwrap();
    cfg.host_netns = Some(lab.host().name().to_string());
    cfg.warm_pool = pool;
    cfg.fast_path = fast;
    Dataplane::start(cfg, policy.clone()).unwrap().0
}

/// Where sandgate's share of the per-packet cost goes: its live ruleset
/// (every slot's policy in it, no dataplane running), taken apart a piece
/// at a time, each step measured: the rates after each removal, in
/// [`SHARE_STEPS`]' order. The established path of a forwarded packet
/// meets the raw hook (the source check) and the forward hook (the
/// generation check); the NAT hooks evaluate their rules for a
/// connection's first packet only, but a packet still enters each (the
/// prerouting one is sandgate's own: the DNS redirect and the steering
/// to the gateway).
fn share(lab: &Lab, cfg: &DataplaneConfig, ns: &Netns, seconds: f64) -> [f64; SHARE_STEPS.len()] {
    let table = &cfg.table;
    let nft = |args: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", lab.host().name(), "nft"])
            .args(args.split(' '))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nft {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    SHARE_STEPS.map(|step| {
        match step.0 {
            "stopped" => {}
            "raw" => nft(&format!("flush chain inet {table} ingress_hook")),
            "forward" => nft(&format!("flush chain inet {table} forward_hook")),
            "hooks" => {
                nft(&format!("delete chain inet {table} ingress_hook"));
                nft(&format!("delete chain inet {table} forward_hook"));
            }
            "dnat" => nft(&format!("delete chain inet {table} dns_hook")),
            other => unreachable!("step {other}"),
        }
        forwarding_rate(lab, ns, seconds)
    })
}

/// The steps of [`share`], each with what is left after it.
const SHARE_STEPS: [(&str, &str); 5] = [
    ("stopped", "sandgate, the dataplane's process stopped"),
    ("raw", "... less the source check (raw hook empty)"),
    ("forward", "... less the generation check (forward empty)"),
    ("hooks", "... less the two empty hooks"),
    ("dnat", "... less the prerouting NAT hook (DNS redirect)"),
];

fn row(name: &str, load: Load, rate: f64, base: f64, bare: f64) {
    println!(
        "    {name:<48} {rate:>9.0} {:<9}  {:>5.2}x of NAT only  {:>5.2}x of no rules",
        load.unit(),
        rate / base,
        rate / bare
    );
}

/// The median of `runs` (each a run of every load, or of every step),
/// figure by figure.
fn medians<const N: usize>(runs: &[[f64; N]]) -> [f64; N] {
    std::array::from_fn(|k| {
        let mut v: Vec<f64> = runs.iter().map(|r| r[k]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    })
}

fn forwarding(seconds: f64, rounds: usize) {
    println!(
        "\nforwarding: slot -> host namespace -> world, {seconds} s per run, \
         the median of {rounds} rounds (sandgate, no rules, NAT only in turn)"
    );
    let lab = Lab::up().unwrap();
    let pc = PolicyConfig::default();
    sink(&lab);
    let (mut dp, dir) = fresh(&lab, &pc, FastPathMode::Off);
    let cfg = dp.config().clone();
    let listed = policy(
        &pc,
        3,
        Some("192.0.2.10/32, 198.51.100.0/24, 2001:db8:2::/48"),
    );
    let sender = dp.create("sender", &listed).unwrap();
    let ns = Netns::open(&sender.netns).unwrap();
    let mut slots = vec![sender.index];
    routes_back(&lab, &cfg);
    // The baselines swap the host's tables: no dataplane (and so no
    // watchdog, which would cut the slots off) runs meanwhile.
    drop(dp);
    host_tables(&lab, NAT);
    let base = forwarding_rate(&lab, &ns, seconds);
    let all = |what: &dyn Fn(Load) -> f64| LOADS.map(what);
    for target in [1usize, 100, 1000] {
        // The sandgate ruleset back, with every live slot's policy.
        let mut dp = restart(&lab, &pc, &dir, 0);
        while slots.len() < target {
            slots.push(
                dp.create(&format!("s{}", slots.len()), &listed)
                    .unwrap()
                    .index,
            );
        }
        // The main figures: sandgate, sandgate with the fast path, no
        // rules and NAT only in turn, round after round, so that the
        // machine's drift falls on all four.
        let (mut ours, mut fast, mut bare, mut nat) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut live = Some(dp);
        for _ in 0..rounds {
            let dp = live.take().unwrap_or_else(|| restart(&lab, &pc, &dir, 0));
            ours.push(all(&|load| rate(&lab, &ns, load, seconds)));
            drop(dp);
            let dp = restart_with(&lab, &pc, &dir, 0, FastPathMode::On);
            fast.push(all(&|load| rate(&lab, &ns, load, seconds)));
            drop(dp);
            host_tables(&lab, "");
            bare.push(all(&|load| rate(&lab, &ns, load, seconds)));
            host_tables(&lab, NAT);
            nat.push(all(&|load| rate(&lab, &ns, load, seconds)));
        }
        let (ours, fast, bare, nat) = (
            medians(&ours),
            medians(&fast),
            medians(&bare),
            medians(&nat),
        );
        let program = program_time(&lab, &pc, &dir, &ns, seconds);
        let dp = restart(&lab, &pc, &dir, 0);
        // The flow log's part: the kernel counting each flow's bytes and
        // telling its new and ended flows to a reader (the runner's).
        let logged = {
            let flows =
                sandgate_dataplane::Flows::start(Some(lab.host()), dp.config(), None).unwrap();
            let rate = forwarding_rate(&lab, &ns, seconds);
            drop(flows);
            conntrack_acct(&lab, false);
            rate
        };
        // Where the share goes; the dataplane (and its watchdog) is
        // stopped meanwhile and puts its ruleset back whole after.
        // (Round after round too: each puts the whole ruleset back.)
        drop(dp);
        let mut parts = vec![share(&lab, &cfg, &ns, seconds)];
        let mut dp = restart(&lab, &pc, &dir, 0);
        for _ in 1..rounds {
            drop(dp);
            parts.push(share(&lab, &cfg, &ns, seconds));
            dp = restart(&lab, &pc, &dir, 0);
        }
        let parts = medians(&parts);
        // At 1,000 slots: every slot with a deny list of 20 entries, then
        // the sender paced too, at a budget it never reaches (the pacer
        // goes again before the baselines, which it would slow too).
        let narrowed = (target == 1000).then(|| {
            let deny: Vec<String> = (10..30).map(|k| format!("203.0.113.{k}/32")).collect();
            let req = SettingsRequest {
                network_allow_list: Some("192.0.2.10/32, 198.51.100.0/24, 2001:db8:2::/48"),
                network_deny_list: Some(&deny.join(",")),
                ..Default::default()
            };
            let denying = pc
                .resolve(3, &pc.settings_for_create(3, &req).unwrap())
                .unwrap();
            for i in &slots {
                dp.update(*i, &denying).unwrap();
            }
            let with_deny = forwarding_rate(&lab, &ns, seconds);
            let mut paced = denying.clone();
            paced.budgets.egress_mbps = Some(sandgate_policy::EGRESS_MBPS_MAX);
            dp.update(sender.index, &paced).unwrap();
            let with_pacer = forwarding_rate(&lab, &ns, seconds);
            dp.update(sender.index, &denying).unwrap();
            // Every slot with a transfer quota it never spends.
            let mut metered = denying.clone();
            metered.budgets.transfer_quota_mib = Some(sandgate_policy::TRANSFER_QUOTA_MIB_MAX);
            metered.budgets.transfer_period_seconds = Some(31_622_400);
            for i in &slots {
                dp.update(*i, &metered).unwrap();
            }
            let with_quota = forwarding_rate(&lab, &ns, seconds);
            (with_deny, with_pacer, with_quota)
        });
        drop(dp);
        linear_chain(&lab, &cfg, &slots, sender.index);
        let linear = forwarding_rate(&lab, &ns, seconds);
        // Its drop of everything unlisted (IPv6 too) goes with it.
        host_tables(&lab, "");
        println!("  with {target} slots' links and routes on the host:");
        for (k, load) in LOADS.iter().enumerate() {
            let (load, base_n, bare_n) = (*load, nat[k], bare[k]);
            println!("   {}:", load.name());
            row("no rules at all", load, bare_n, base_n, bare_n);
            row(
                "NAT and conntrack only (baseline)",
                load,
                base_n,
                base_n,
                bare_n,
            );
            row("sandgate", load, ours[k], base_n, bare_n);
            row("sandgate, fast path on", load, fast[k], base_n, bare_n);
            if k > 0 {
                continue;
            }
            row("sandgate, flow log on", load, logged, base_n, bare_n);
            let (program_ns, counted) = program;
            println!(
                "    {:<48} {program_ns:>9.0} ns a packet of {:.0} ns at no rules' rate \
                 ({:.0} packets/s while counted)",
                "the fast path's slot program alone",
                1e9 / bare_n,
                counted
            );
            for ((_, name), rate) in SHARE_STEPS.iter().zip(&parts) {
                row(name, load, *rate, base_n, bare_n);
            }
            if let Some((with_deny, with_pacer, with_quota)) = narrowed {
                row(
                    "sandgate, deny lists of 20 everywhere",
                    load,
                    with_deny,
                    base_n,
                    bare_n,
                );
                row(
                    "... and the sender paced (unreached)",
                    load,
                    with_pacer,
                    base_n,
                    bare_n,
                );
                row(
                    "deny lists, every slot a transfer quota (unspent)",
                    load,
                    with_quota,
                    base_n,
                    bare_n,
                );
            }
            row("linear chain + NAT", load, linear, base_n, bare_n);
        }
    }
    println!(
        "  drift: NAT only, IPv4 UDP, 1 slot {base:.0} packets/s at the start, {:.0} at the end",
        forwarding_rate(&lab, &ns, seconds)
    );
    clean_up(&lab, &pc, dir);
}

/// With no rules at all (no NAT), the world answers the sandbox's own
/// address: the way back to it leads through the host.
fn routes_back(lab: &Lab, cfg: &DataplaneConfig) {
    let world = lab.world().name().to_string();
    for (net, via) in [
        (cfg.subnet4.to_string(), HOST_LINK4.addr()),
        (cfg.subnet6.to_string(), HOST_LINK6.addr()),
    ] {
        ip(&["-n", &world, "route", "add", &net, "via", &via.to_string()]);
    }
}

/// Puts the ruleset back so that the slots can be removed cleanly, and
/// removes them and the state.
fn clean_up(lab: &Lab, pc: &PolicyConfig, dir: PathBuf) {
    let mut dp = restart(lab, pc, &dir, 0);
    for (i, _) in dp.active_slots() {
        dp.delete(i).unwrap();
    }
    drop(dp);
    let _ = std::fs::remove_dir_all(dir);
}

/// The fast path's slot program's own time a packet (ns) and the rate
/// meanwhile, by the kernel's count of its runs: on for this run alone
/// (it costs each run two clock reads).
fn program_time(lab: &Lab, pc: &PolicyConfig, dir: &Path, ns: &Netns, seconds: f64) -> (f64, f64) {
    let mut dp = restart_with(lab, pc, dir, 0, FastPathMode::On);
    let counting = sandgate_fastpath::count_runs().unwrap();
    let before = dp.fast_path_runs().unwrap().unwrap();
    let rate = forwarding_rate(lab, ns, seconds);
    let after = dp.fast_path_runs().unwrap().unwrap();
    drop(counting);
    (after[0].nanos_since(before[0]).unwrap_or(f64::NAN), rate)
}

/// The fast path's program alone (`SANDGATE_BENCH_ONLY=fast-path`, for
/// work on the program): one slot, IPv4 64-byte UDP with the fast path
/// against no rules, round after round, and the program's own time a
/// packet by the kernel's count of its runs (in a run of its own: the
/// count costs each run two clock reads).
fn fast_path_alone(seconds: f64, rounds: usize) {
    println!(
        "
the fast path alone: one slot, 64-byte UDP, IPv4, {seconds} s per run"
    );
    let lab = Lab::up().unwrap();
    let pc = PolicyConfig::default();
    sink(&lab);
    let (mut dp, dir) = fresh(&lab, &pc, FastPathMode::Off);
    let listed = policy(&pc, 3, Some("192.0.2.10/32"));
    let sender = dp.create("sender", &listed).unwrap();
    let ns = Netns::open(&sender.netns).unwrap();
    routes_back(&lab, dp.config());
    drop(dp);
    for round in 1..=rounds {
        let dp = restart_with(&lab, &pc, &dir, 0, FastPathMode::On);
        let fast = forwarding_rate(&lab, &ns, seconds);
        drop(dp);
        let (program, _) = program_time(&lab, &pc, &dir, &ns, seconds);
        host_tables(&lab, "");
        let bare = forwarding_rate(&lab, &ns, seconds);
        println!(
            "  round {round}: fast path {fast:.0} packets/s, no rules {bare:.0}: {:.2}x; \
             the program {program:.0} ns a packet of {:.0}",
            fast / bare,
            1e9 / bare
        );
    }
    clean_up(&lab, &pc, dir);
}

/// Turns the kernel's byte counts per flow on or off in the lab's host.
fn conntrack_acct(lab: &Lab, on: bool) {
    let value = if on { "1" } else { "0" };
    lab.host()
        .run(|| std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", value))
        .unwrap();
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip").args(args).status().unwrap().success();
    assert!(ok, "ip {args:?}");
}

fn creation_and_updates() {
    println!("\nslot creation (create() returns with the policy in the kernel)");
    let lab = Lab::up().unwrap();
    let pc = PolicyConfig::default();
    let listed = policy(&pc, 3, Some("192.0.2.10/32"));
    let n = 200;
    // Baseline: a namespace and a veth pair by the ip program.
    let mut base = Vec::new();
    for i in 0..50 {
        let name = format!("{}-ipbase{i}", lab.tag());
        let t = Instant::now();
        ip(&["netns", "add", &name]);
        ip(&[
            "-n",
            lab.host().name(),
            "link",
            "add",
            &format!("ipb{i}"),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &name,
        ]);
        base.push(t.elapsed());
    }
    stats("baseline: ip netns add + ip link add veth", &base, None);
    // Without the fast path, then as a server has it (the fast path where
    // the kernel can run it: a warm slot's program attached when the pool
    // was filled, a cold slot's by the step after its create, as the
    // runner's refiller does, timed apart).
    let mut made = Vec::new();
    let mut last = None;
    for (mode, label) in [
        (FastPathMode::Off, "fast path off"),
        (FastPathMode::default(), "fast path auto"),
    ] {
        drop(last.take());
        let (mut d, dir) = fresh(&lab, &pc, mode);
        let (mut cold, mut after) = (Vec::new(), Vec::new());
        for i in 0..n {
            let t = Instant::now();
            made.push(d.create(&format!("c{i}"), &listed).unwrap().index);
            cold.push(t.elapsed());
            let t = Instant::now();
            d.attach_later();
            after.push(t.elapsed());
        }
        stats(
            &format!("sandgate create, cold, {label}"),
            &cold,
            Some(&base),
        );
        if mode != FastPathMode::Off {
            stats(
                &format!("  then off the create's path: its program attached, {label}"),
                &after,
                None,
            );
        }
        for i in made.drain(..) {
            d.delete(i).unwrap();
        }
        drop(d);
        let mut d = restart_with(&lab, &pc, &dir, 4, mode);
        let mut warm = Vec::new();
        for i in 0..n {
            d.fill_pool().unwrap();
            let t = Instant::now();
            made.push(d.create(&format!("p{i}"), &listed).unwrap().index);
            warm.push(t.elapsed());
        }
        stats(
            &format!("sandgate create, warm pool, {label}"),
            &warm,
            Some(&base),
        );
        // The last mode's slots stay for the updates below.
        if mode == FastPathMode::Off {
            for i in made.drain(..) {
                d.delete(i).unwrap();
            }
        }
        last = Some((d, dir));
    }
    let (mut dp, dir) = last.unwrap();

    println!("\npolicy update and DNS admission (one netlink transaction each)");
    let mut nft_base = Vec::new();
    for i in 0..50u32 {
        let t = Instant::now();
        let ok = lab
            .host()
            .run(|| {
                Command::new("nft")
                    .args([
                        "add",
                        "element",
                        "inet",
                        "sandgate",
                        "admit4",
                        &format!("{{ \"sgh1\" . 192.0.2.{} timeout 60s }}", i % 250),
                    ])
                    .status()
            })
            .unwrap()
            .success();
        assert!(ok);
        nft_base.push(t.elapsed());
    }
    stats(
        "baseline: nft add element (the nft program)",
        &nft_base,
        None,
    );
    let a = policy(&pc, 3, Some("192.0.2.10/32"));
    let b = policy(
        &pc,
        3,
        Some("192.0.2.10/32, 198.51.100.0/24, 2001:db8:2::/48"),
    );
    let slot = made[0];
    let mut updates = Vec::new();
    for i in 0..1000 {
        let p = if i % 2 == 0 { &b } else { &a };
        let t = Instant::now();
        dp.update(slot, p).unwrap();
        updates.push(t.elapsed());
    }
    stats(
        "sandgate update (add or remove two entries)",
        &updates,
        Some(&nft_base),
    );
    let restricted = policy(&pc, 1, None);
    let r = dp.create("restricted", &restricted).unwrap();
    let mut admits = Vec::new();
    for i in 0..1000u32 {
        let addr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, (i % 250) as u8 + 1));
        let t = Instant::now();
        dp.admit(
            r.index,
            addr,
            &sandgate_policy::Reason::EssentialService("python".into()),
            Duration::from_secs(60),
        )
        .unwrap();
        admits.push(t.elapsed());
    }
    stats("sandgate admit (DNS admission)", &admits, Some(&nft_base));
    for (i, _) in dp.active_slots() {
        dp.delete(i).unwrap();
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        // `cargo test --benches` asks benches to list or test themselves.
        return;
    }
    let seconds: f64 = std::env::var("SANDGATE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let rounds: usize = std::env::var("SANDGATE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    // `SANDGATE_BENCH_ONLY=forwarding` runs the forwarding rounds alone,
    // `=fast-path` the fast path's program alone, `=creation` creation
    // and updates alone.
    match std::env::var("SANDGATE_BENCH_ONLY").as_deref() {
        Ok("fast-path") => fast_path_alone(seconds, rounds),
        Ok("creation") => creation_and_updates(),
        Ok("forwarding") => forwarding(seconds, rounds),
        _ => {
            creation_and_updates();
            forwarding(seconds, rounds);
        }
    }
}
