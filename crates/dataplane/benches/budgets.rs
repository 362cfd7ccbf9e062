//! Egress budgets: how closely the pacer holds a slot to its budget, and
//! what a budget costs a slot that sends less than it, each against a
//! baseline in the same run, in the lab (nothing leaves the machine).
//!
//! 1. accuracy: one TCP connection sending as fast as it can from a slot
//!    with a budget of 10, 50, 100, 500 and 1,000 Mbit/s, payload
//!    received against the budget (the budget counts the headers on the wire
//!    too, about 4% of a full-size packet);
//! 2. cost: the same transfer from a slot without a budget and from one
//!    with a budget it never reaches (100 Gbit/s): what the redirect
//!    through the pacer's `ifb` device and the token bucket cost.
//!
//! `cargo bench -p sandgate-dataplane --bench budgets` (as root).
//! `SANDGATE_BENCH_SECONDS` sets the length of each run (3 s).

#![allow(clippy::unwrap_used, missing_docs)]

use sandgate_dataplane::{Dataplane, DataplaneConfig};
use sandgate_lab::addrs::SERVER4;
use sandgate_lab::bench::upload_mbit;
use sandgate_lab::Lab;
use sandgate_netns::Netns;
use sandgate_policy::{EffectivePolicy, SettingsRequest};
use std::time::Duration;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds: u64 = std::env::var("SANDGATE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let time = Duration::from_secs(seconds);
    let lab = Lab::up().unwrap();
    let policy = sandgate_lab::lab_policy();
    let dir = std::env::temp_dir().join(format!("sandgate-bench-budgets-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = DataplaneConfig::new(&policy, lab.tag(), dir.join("dataplane.json")).unwrap();
    cfg.host_netns = Some(lab.host().name().to_string());
    let (mut dp, _) = Dataplane::start(cfg, policy.clone()).unwrap();
    let open: EffectivePolicy = policy
        .resolve(
            3,
            &policy
                .settings_for_create(3, &SettingsRequest::default())
                .unwrap(),
        )
        .unwrap();
    let with = |mbps: Option<u32>| {
        let mut p = open.clone();
        p.budgets.egress_mbps = mbps;
        p
    };
    let slot = dp.create("bench", &open).unwrap();
    let ns = Netns::open(&slot.netns).unwrap();

    println!("egress budget accuracy ({seconds} s of one TCP connection each):");
    for mbps in [10, 50, 100, 500, 1000] {
        dp.update(slot.index, &with(Some(mbps))).unwrap();
        let got = upload_mbit(&ns, SERVER4, time).unwrap();
        println!(
            "  budget {mbps:>5} Mbit/s   payload {got:>8.1} Mbit/s   {:.3}x of the budget",
            got / f64::from(mbps)
        );
    }

    println!("the cost of a budget never reached:");
    dp.update(slot.index, &with(None)).unwrap();
    let base: Vec<f64> = (0..3)
        .map(|_| upload_mbit(&ns, SERVER4, time).unwrap())
        .collect();
    dp.update(slot.index, &with(Some(sandgate_policy::EGRESS_MBPS_MAX)))
        .unwrap();
    let paced: Vec<f64> = (0..3)
        .map(|_| upload_mbit(&ns, SERVER4, time).unwrap())
        .collect();
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (b, p) = (median(&base), median(&paced));
    println!("  no budget                 {b:>8.1} Mbit/s (baseline, median of 3)");
    println!(
        "  budget of 100 Gbit/s      {p:>8.1} Mbit/s   {:.3}x of the baseline",
        p / b
    );
    dp.delete(slot.index).unwrap();
    drop(dp);
    let _ = std::fs::remove_dir_all(&dir);
}
