//! Budgets through the API (docs/REQUIREMENTS.md, "Budgets"), in the
//! lab: a tier's default and maximum egress bandwidth and transfer quota,
//! a sandbox asking for less, never more, what it sends paced (or, past
//! its quota, dropped) on the host side while another sandbox sends
//! unhindered. Connections are made from the
//! sandboxes' own network namespaces, to lab addresses only.

#![allow(clippy::unwrap_used)]

mod common;

use common::{refused, Api, Send};
use sandgate_lab::addrs::{SERVER4, SERVER4_B};
use sandgate_lab::bench::{upload_mbit, within_budget};
use serde_json::json;
use std::time::Duration;

#[test]
fn a_sandbox_sends_within_its_egress_budget_and_its_tier_bounds_it() {
    let api = Api::start_with(|cfg| {
        let mut repr = sandgate_lab::lab_policy_repr(None);
        repr.budgets = sandgate_policy::TierBudgetsRepr {
            egress_mbps: Some(40),
            max_egress_mbps: Some(100),
            ..Default::default()
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
    refused_at_create(
        &api,
        &key,
        [
            (json!({"egressMbps": 101}), 403, "budget_exceeds_tier"),
            (json!({"egressMbps": 0}), 400, "invalid_budget"),
            (json!({"egressMbps": -5}), 422, "invalid_request"),
        ],
    );

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
        within_budget(sent, 20.0),
        "{sent:.2} Mbit/s under a budget of 20"
    );
    assert!(
        within_budget(beside, 40.0),
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
        within_budget(sent, 40.0),
        "{sent:.2} Mbit/s back at the default of 40"
    );
}

/// Creates with each body and checks the refusal's status and code.
fn refused_at_create<const N: usize>(
    api: &Api,
    key: &str,
    cases: [(serde_json::Value, u16, &str); N],
) {
    refused(
        api,
        cases
            .into_iter()
            .map(|(body, status, code)| {
                (
                    "POST",
                    "/api/sandbox".to_string(),
                    Some(key),
                    Send::Json(body),
                    status,
                    code,
                )
            })
            .collect(),
    );
}

#[test]
fn a_transfer_quota_stops_a_sandbox_for_the_rest_of_its_period() {
    // A year's period: none ends during the test.
    let year = 31_622_400;
    let api = Api::start_with(|cfg| {
        let mut repr = sandgate_lab::lab_policy_repr(None);
        repr.budgets = sandgate_policy::TierBudgetsRepr {
            transfer_quota_mib: Some(8),
            max_transfer_quota_mib: Some(16),
            transfer_period_seconds: Some(year),
            ..Default::default()
        };
        cfg.policy = sandgate_policy::PolicyConfig::from_repr(repr).unwrap();
    });
    let (_, key) = api.organization("quotas", 3);
    let default = api.sandbox(&key, json!({"name": "default"}));
    assert_eq!(
        default["effectiveNetwork"]["budgets"],
        json!({"transferQuotaMiB": 8, "transferPeriodSeconds": year}),
        "{default}"
    );
    let metered = api.sandbox(&key, json!({"name": "metered", "transferQuotaMiB": 1}));
    assert_eq!(metered["transferQuotaMiB"], 1);
    refused_at_create(
        &api,
        &key,
        [
            (json!({"transferQuotaMiB": 17}), 403, "budget_exceeds_tier"),
            (json!({"transferQuotaMiB": 0}), 400, "invalid_budget"),
            (json!({"transferQuotaMib": 1}), 422, "invalid_request"),
        ],
    );

    let id = |v: &serde_json::Value| v["id"].as_str().unwrap().to_string();
    let (metered_ns, default_ns) = (api.slot_netns(&id(&metered)), api.slot_netns(&id(&default)));
    let mib = 1u64 << 20;
    let got = sandgate_testkit::drain_stream(&metered_ns, SERVER4).unwrap();
    assert!(
        got < mib && got > mib / 2,
        "{got} bytes under a quota of 1 MiB"
    );
    // The other sandbox moves its own quota, the tier's default.
    let beside = sandgate_testkit::drain_stream(&default_ns, SERVER4_B).unwrap();
    assert!(
        beside < 8 * mib && beside > 7 * mib,
        "{beside} bytes under the default of 8 MiB, beside a spent quota"
    );
    // Spent: an event of the sandbox, each refused packet a denial
    // with its reason, and a metric.
    let seen = api.events(&key, &id(&metered), true, |e| {
        e["kind"] == "budget" && e["reason"] == "transfer_quota"
    });
    assert!(!seen.is_empty());
    let _ = metered_ns.run(|| {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(SERVER4_B, sandgate_lab::addrs::TCP_ECHO),
            Duration::from_millis(300),
        )
    });
    let denied = api.events(&key, &id(&metered), true, |e| {
        e["reason"] == "transfer_quota" && e["kind"] != "budget"
    });
    assert!(!denied.is_empty());
    let metric = api
        .metrics()
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "sandgate_network_events_total{kind=\"budget\",reason=\"transfer_quota\"} ",
            )
            .map(|n| n.trim().parse::<u64>().unwrap())
        })
        .unwrap_or(0);
    assert!(metric >= 1, "no budget event counted");
    // explain says why nothing passes now.
    let dest = format!("{SERVER4_B}:7");
    assert_eq!(
        api.explain(&key, &id(&metered), &dest),
        (false, "transfer_quota".to_string())
    );
    // What it used, as the kernel counts it at the call.
    let (s, usage) = api.get(
        &format!("/api/sandbox/{}/network/usage", id(&metered)),
        &key,
    );
    assert_eq!(s, 200, "{usage}");
    let t = &usage["transfer"];
    assert_eq!(
        (
            t["quotaBytes"].as_u64(),
            t["usedBytes"].as_u64(),
            t["spent"].as_bool()
        ),
        (Some(mib), Some(mib), Some(true)),
        "{usage}"
    );
    let (start, end) = (
        t["periodStartMs"].as_u64().unwrap(),
        t["periodEndMs"].as_u64().unwrap(),
    );
    assert_eq!(end - start, u64::from(year) * 1000);
    assert_eq!(
        start % (u64::from(year) * 1000),
        0,
        "periods start at multiples of theirs"
    );

    // A larger quota keeps what the period counted: 1 MiB more moves.
    let path = format!("/api/sandbox/{}/network-settings", id(&metered));
    let (s, v) = api.post(&path, &key, json!({"transferQuotaMiB": 2}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["effectiveNetwork"]["budgets"]["transferQuotaMiB"], 2);
    let more = sandgate_testkit::drain_stream(&metered_ns, SERVER4).unwrap();
    assert!(more < mib && more > mib / 2, "{more} bytes from 1 to 2 MiB");
    // null: back to the tier's default of 8 MiB.
    let (s, v) = api.call(
        "POST",
        &path,
        Some(&key),
        Send::Json(json!({"transferQuotaMiB": null})),
    );
    assert_eq!(s, 200, "{v}");
    assert!(v.get("transferQuotaMiB").is_none(), "{v}");
    assert_eq!(v["effectiveNetwork"]["budgets"]["transferQuotaMiB"], 8);
    assert!(sandgate_testkit::drain_stream(&metered_ns, SERVER4).unwrap() > 4 * mib);
    // A larger quota still: what the period counted stays counted.
    let (s, v) = api.post(&path, &key, json!({"transferQuotaMiB": 16}));
    assert_eq!(s, 200, "{v}");
    let (_, usage) = api.get(
        &format!("/api/sandbox/{}/network/usage", id(&metered)),
        &key,
    );
    let t = &usage["transfer"];
    assert_eq!(
        (t["quotaBytes"].as_u64(), t["spent"].as_bool()),
        (Some(16 * mib), Some(false)),
        "{usage}"
    );
    assert!(t["usedBytes"].as_u64().unwrap() >= 8 * mib, "{usage}");
    assert_eq!(
        api.explain(&key, &id(&metered), &dest),
        (true, "open".to_string())
    );
}
