//! Budgets through the API (docs/REQUIREMENTS.md, "Budgets"), in the
//! lab: a tier's default and maximum egress bandwidth, a sandbox asking
//! for less, never more, and what it sends paced on the host side while
//! another sandbox sends unhindered. Connections are made from the
//! sandboxes' own network namespaces, to lab addresses only.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, Send};
use sandgate_lab::addrs::{SERVER4, SERVER4_B};
use sandgate_lab::bench::upload_mbit;
use serde_json::json;
use std::time::Duration;

#[test]
fn a_sandbox_sends_within_its_egress_budget_and_its_tier_bounds_it() {
    let api = Api::start_with(|cfg| {
        let mut repr = sandgate_lab::lab_policy_repr(None);
        repr.budgets = sandgate_policy::TierBudgetsRepr {
            egress_mbps: Some(40),
            max_egress_mbps: Some(100),
        };
        cfg.policy = sandgate_policy::PolicyConfig::from_repr(repr).unwrap();
    });
    let (_, key) = api.organization("budgets", 3);
    let (_, small) = api.organization("small", 1);

    // Asking for nothing: the tier's default; for less: that.
    let default = api.sandbox(&key, json!({"name": "default"}));
    assert_eq!(
        default["effectiveNetwork"]["budgets"]["egressMbps"], 40,
        "{default}"
    );
    assert!(default.get("egressMbps").is_none());
    let paced = api.sandbox(&key, json!({"name": "paced", "egressMbps": 20}));
    assert_eq!(paced["egressMbps"], 20);
    assert_eq!(paced["effectiveNetwork"]["budgets"]["egressMbps"], 20);
    // A restricted tier may ask for less too: it only narrows.
    let narrow = api.sandbox(&small, json!({"name": "narrow", "egressMbps": 10}));
    assert_eq!(narrow["effectiveNetwork"]["budgets"]["egressMbps"], 10);
    // More than the tier allows, or no amount, is refused with its code.
    for (body, status, code) in [
        (json!({"egressMbps": 101}), 403, "budget_exceeds_tier"),
        (json!({"egressMbps": 0}), 400, "invalid_budget"),
        (json!({"egressMbps": -5}), 422, "invalid_request"),
    ] {
        let (s, v) = api.post("/api/sandbox", &key, body.clone());
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {v}"
        );
    }

    // What it sends is paced; the other sandbox, at the same time, is not
    // held back by it.
    let id = |v: &serde_json::Value| v["id"].as_str().unwrap().to_string();
    let (paced_ns, default_ns) = (api.slot_netns(&id(&paced)), api.slot_netns(&id(&default)));
    let time = Duration::from_secs(2);
    let other = std::thread::spawn(move || upload_mbit(&default_ns, SERVER4_B, time).unwrap());
    let sent = upload_mbit(&paced_ns, SERVER4, time).unwrap();
    let beside = other.join().unwrap();
    println!("20 Mbit/s: {sent:.1}; 40 Mbit/s beside it: {beside:.1}");
    assert!(
        (sent - 20.0).abs() <= 2.0,
        "{sent:.2} Mbit/s under a budget of 20"
    );
    assert!(
        (beside - 40.0).abs() <= 4.0,
        "{beside:.2} Mbit/s under a budget of 40"
    );
    // Reaching it is an event of the sandbox, and a metric.
    let seen = api.events(&key, &id(&paced), true, |e| e["kind"] == "budget");
    let event = seen.last().unwrap();
    assert_eq!(event["reason"], "egress_mbps", "{seen:?}");
    let metric = api
        .metrics()
        .lines()
        .find_map(|l| {
            l.strip_prefix("sandgate_network_events_total{kind=\"budget\",reason=\"egress_mbps\"} ")
                .map(|n| n.trim().parse::<u64>().unwrap())
        })
        .unwrap_or(0);
    assert!(metric >= 1, "no budget events counted");

    // An update changes it; null goes back to the tier's default.
    let path = format!("/api/sandbox/{}/network-settings", id(&paced));
    let (s, v) = api.post(&path, &key, json!({"egressMbps": 100}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["effectiveNetwork"]["budgets"]["egressMbps"], 100);
    let (s, v) = api.post(&path, &key, json!({"egressMbps": 101}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("budget_exceeds_tier"))
    );
    let (s, v) = api.call(
        "POST",
        &path,
        Some(&key),
        Send::Json(json!({"egressMbps": null})),
    );
    assert_eq!(s, 200, "{v}");
    assert!(v.get("egressMbps").is_none(), "{v}");
    assert_eq!(v["effectiveNetwork"]["budgets"]["egressMbps"], 40);
    let sent = upload_mbit(&api.slot_netns(&id(&paced)), SERVER4, time).unwrap();
    assert!(
        (sent - 40.0).abs() <= 4.0,
        "{sent:.2} Mbit/s back at the default of 40"
    );
}
