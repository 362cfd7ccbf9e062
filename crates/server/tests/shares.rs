//! Fair shares through the API (docs/REQUIREMENTS.md, "Fair shares"): one
//! sandbox's flood, bounded in count and aimed at lab addresses only,
//! reaches its own limits and leaves a sandbox of another organization
//! working; every limit reached is an event, and what the event rate
//! holds back is counted and reported. Also: a slot handed to a new
//! sandbox while a lookup of its old one is in flight gets nothing of it.
//! Needs root, runc and busybox-static.

#![allow(clippy::unwrap_used)]

mod common;

use common::Api;
use sandgate_lab::addrs::*;
use sandgate_policy::{FairSharesRepr, PolicyConfig};
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// A server whose every tier has these fair shares, with `flood` in the
/// snapshot.
fn server(shares: FairSharesRepr, subnets: Option<Vec<String>>) -> Api {
    let api = Api::start_with(|cfg| {
        let mut repr = sandgate_lab::lab_policy_repr(subnets);
        repr.fair_shares = shares;
        cfg.policy = PolicyConfig::from_repr(repr).unwrap();
    });
    api.install("flood");
    api
}

/// `(open, refused, other)` of a `flood` run's output.
fn counts(out: &Value) -> (u64, u64, u64) {
    let text = out["stdout"].as_str().unwrap();
    let words: Vec<&str> = text.split_whitespace().collect();
    let n = |label: &str| {
        let i = words
            .iter()
            .position(|w| *w == label)
            .unwrap_or_else(|| panic!("no {label} in {out}"));
        words[i + 1].parse::<u64>().unwrap()
    };
    (n("open"), n("refused"), n("other"))
}

/// The sandbox's IPv4 address, read inside it.
fn address(api: &Api, key: &str, id: &str) -> Ipv4Addr {
    let r = api.exec(key, id, "ip -4 -o addr show eth0");
    let text = r["stdout"].as_str().unwrap();
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap();
    cidr.split('/').next().unwrap().parse().unwrap()
}

/// Connections the host tracks from `addr`.
fn tracked(api: &Api, addr: Ipv4Addr) -> usize {
    let out = api
        .lab()
        .host()
        .run(|| {
            std::process::Command::new("conntrack")
                .args(["-L", "-f", "ipv4", "-s", &addr.to_string()])
                .output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Sandbox `id`'s events so far.
fn events(api: &Api, key: &str, id: &str) -> Vec<Value> {
    api.events(key, id, false, |_| true)
}

/// Waits (a few seconds at most) until `id`'s events hold one `accept`s.
fn wait_event(api: &Api, key: &str, id: &str, accept: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = events(api, key, id);
        if seen.iter().any(&accept) || Instant::now() > deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tracked_connections_are_capped_per_sandbox() {
    let api = server(
        FairSharesRepr {
            connections: Some(32),
            ..Default::default()
        },
        None,
    );
    let (_, greedy) = api.organization("greedy", 3);
    let (_, calm) = api.organization("calm", 3);
    api.sandbox(&greedy, json!({"name": "hog"}));
    api.sandbox(&calm, json!({"name": "neighbour"}));
    let hog = address(&api, &greedy, "hog");
    // 100 connections held open at once: 32 are let out, the rest refused
    // at once (a reset), while the neighbour connects as ever.
    let (out, neighbour_ok) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            api.exec(
                &greedy,
                "hog",
                &format!("flood hold {SERVER4} {TCP_ECHO} 100 3000"),
            )
        });
        std::thread::sleep(Duration::from_millis(1500));
        let held = tracked(&api, hog);
        let ok = api.echoes(&calm, "neighbour", &SERVER4.to_string());
        (flood.join().unwrap(), (ok, held))
    });
    let (open, refused, other) = counts(&out);
    assert_eq!((open, refused, other), (32, 68, 0), "{out}");
    let (ok, held) = neighbour_ok;
    assert!(ok, "the neighbour could not connect");
    assert!(held <= 32, "the host tracked {held} connections of the hog");
    let seen = wait_event(&api, &greedy, "hog", |e| e["reason"] == "connection_limit");
    assert!(
        seen.iter().any(|e| e["kind"] == "connection"
            && e["reason"] == "connection_limit"
            && e["destination"] == SERVER4.to_string()),
        "{seen:?}"
    );
    // The share is given back as connections close.
    assert_eq!(
        counts(&api.exec(
            &greedy,
            "hog",
            &format!("flood hold {SERVER4} {TCP_ECHO} 10 0")
        )),
        (10, 0, 0)
    );
}

#[test]
fn a_blocked_sandbox_cannot_fill_the_connection_table_through_dns() {
    let api = server(
        FairSharesRepr {
            connections: Some(32),
            ..Default::default()
        },
        None,
    );
    let (_, key) = api.organization("acme", 3);
    api.sandbox(&key, json!({"name": "cut-off", "networkBlockAll": true}));
    api.sandbox(
        &key,
        json!({"name": "named", "domainAllowList": "example.com"}),
    );
    let cut_off = address(&api, &key, "cut-off");
    // 2,000 datagrams to port 53, each from a port of its own: each would
    // be a tracked connection (redirected to the DNS service) for as long
    // as the host keeps UDP entries.
    let out = api.exec(&key, "cut-off", &format!("flood udp {DNS4} 53 2000"));
    assert_eq!(out["stdout"], "sent 2000\n", "{out}");
    let held = tracked(&api, cut_off);
    assert!(
        held <= 32,
        "the host tracked {held} connections of a blocked sandbox"
    );
    // Another sandbox's lookups are answered, and its connections pass.
    assert!(api.echoes(&key, "named", "example.com"));
}

#[test]
fn new_connections_a_second_are_capped_and_each_limit_is_an_event() {
    let api = server(
        FairSharesRepr {
            new_connections_per_second: Some(20),
            ..Default::default()
        },
        None,
    );
    let (_, key) = api.organization("acme", 3);
    api.sandbox(&key, json!({"name": "churner"}));
    // 500 connections one after another, each closed at once: about 20 a
    // second pass (and a burst of 40), the rest are refused at once.
    let started = Instant::now();
    let (open, refused, other) = counts(&api.exec(
        &key,
        "churner",
        &format!("flood churn {SERVER4} {TCP_ECHO} 500"),
    ));
    let seconds = started.elapsed().as_secs();
    assert_eq!(open + refused + other, 500);
    assert!(
        open <= 40 + 20 * (seconds + 1),
        "{open} let out in {seconds} s"
    );
    assert!(refused > 0);
    let seen = wait_event(&api, &key, "churner", |e| e["reason"] == "connection_rate");
    assert!(
        seen.iter().any(|e| e["reason"] == "connection_rate"),
        "{seen:?}"
    );
}

#[test]
fn deny_events_are_rate_limited_and_what_is_held_back_is_reported() {
    let api = server(
        FairSharesRepr {
            events_per_second: Some(5),
            ..Default::default()
        },
        None,
    );
    let (_, key) = api.organization("acme", 3);
    api.sandbox(
        &key,
        json!({"name": "listed", "networkAllowList": format!("{SERVER4}/32")}),
    );
    // 2,000 denied datagrams, each a new connection attempt.
    let out = api.exec(
        &key,
        "listed",
        &format!("flood udp {SERVER4_B} {UDP_ECHO} 2000"),
    );
    assert_eq!(out["stdout"], "sent 2000\n", "{out}");
    // A few events, and a report of how many were held back.
    let held_back = |seen: &[Value]| -> u64 {
        seen.iter()
            .filter(|e| e["kind"] == "dropped" && e["reason"] == "not_in_allow_list")
            .map(|e| e["count"].as_u64().unwrap())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let (published, dropped) = loop {
        let seen = events(&api, &key, "listed");
        let published = seen
            .iter()
            .filter(|e| e["kind"] == "connection" && e["reason"] == "not_in_allow_list")
            .count() as u64;
        let dropped = held_back(&seen);
        if published + dropped >= 2000 || Instant::now() > deadline {
            break (published, dropped);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!((1..=60).contains(&published), "{published} published");
    assert_eq!(published + dropped, 2000, "{published} + {dropped}");
    // The metric counts both.
    let metrics = api.metrics();
    assert!(
        metrics.contains(
            "sandgate_network_events_total{kind=\"dropped\",reason=\"not_in_allow_list\"}"
        ),
        "{metrics}"
    );
}

#[test]
fn admitted_addresses_are_capped_the_soonest_ending_making_room() {
    let api = server(
        FairSharesRepr {
            admitted_addresses: Some(2),
            ..Default::default()
        },
        None,
    );
    let (_, key) = api.organization("acme", 3);
    api.sandbox(
        &key,
        json!({"name": "named", "domainAllowList": "example.com"}),
    );
    // example.com answers an IPv4 and an IPv6 address: the two admitted.
    api.exec(&key, "named", "nslookup example.com");
    assert!(api.echoes(&key, "named", &SERVER4_B.to_string()));
    // A catalog name answers two more: the two ending first (the older,
    // of the same TTL) make room.
    let name = sandgate_lab::catalog_name(&sandgate_policy::Catalog::builtin()).unwrap();
    api.exec(&key, "named", &format!("nslookup {name}"));
    assert!(api.echoes(&key, "named", &SERVER4.to_string()));
    assert!(
        !api.echoes(&key, "named", &SERVER4_B.to_string()),
        "an address beyond the cap was still admitted"
    );
    let seen = wait_event(&api, &key, "named", |e| e["reason"] == "admission_limit");
    assert!(
        seen.iter().any(|e| e["reason"] == "admission_limit"),
        "{seen:?}"
    );
}

#[test]
fn a_slot_given_to_a_new_sandbox_gets_nothing_of_the_old_ones_lookup() {
    // Three slots in all, so that the deleted sandbox's slot is the only
    // one to give the next.
    let subnets = ["198.18.0.0/29", "2001:db8:5a00::/48"].map(String::from);
    let api = server(FairSharesRepr::default(), Some(subnets.to_vec()));
    let (_, key) = api.organization("acme", 3);
    let (_, other) = api.organization("other", 3);
    api.sandbox(
        &key,
        json!({"name": "leaving", "domainAllowList": "*.example.com"}),
    );
    api.sandbox(&key, json!({"name": "filler-1"}));
    api.sandbox(&key, json!({"name": "filler-2"}));
    // slow.example.com is answered by the world after 1.5 s: the sandbox
    // asks, and is deleted while the lookup is in flight; its slot goes
    // to another organization's sandbox, whose list allows the name too.
    std::thread::scope(|s| {
        s.spawn(|| {
            // Ends when the sandbox is deleted.
            let _ = api.post(
                "/api/sandbox/leaving/process/execute",
                &key,
                json!({"command": "nslookup slow.example.com", "timeout": 5}),
            );
        });
        std::thread::sleep(Duration::from_millis(400));
        let (status, _) = api.delete("/api/sandbox/leaving", &key);
        assert_eq!(status, 204);
        api.sandbox(
            &other,
            json!({"name": "arriving", "domainAllowList": "*.example.com"}),
        );
    });
    std::thread::sleep(sandgate_lab::dns::SLOW);
    // The old lookup's answer admitted nothing for the new sandbox, and
    // was dropped as stale.
    assert!(
        !api.echoes(&other, "arriving", &SERVER4_B.to_string()),
        "the old sandbox's answer opened the address for the new one"
    );
    let metrics = api.metrics();
    let stale: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sandgate_dns_stale_total "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(stale >= 1, "{metrics}");
}

#[test]
fn a_sandbox_asks_for_fewer_connections_than_its_tier_and_never_more() {
    let api = server(
        FairSharesRepr {
            connections: Some(32),
            new_connections_per_second: Some(200),
            ..Default::default()
        },
        None,
    );
    let (_, key) = api.organization("budgets", 3);
    let (_, small) = api.organization("small", 1);
    let hold = |n: u32| format!("flood hold {SERVER4} {TCP_ECHO} {n} 500");
    let tight = api.sandbox(&key, json!({"name": "tight", "maxConnections": 8}));
    assert_eq!(tight["maxConnections"], 8, "{tight}");
    assert_eq!(tight["effectiveNetwork"]["fairShares"]["connections"], 8);
    // Its own cap, in the kernel: 8 of 20 held at once are let out.
    assert_eq!(counts(&api.exec(&key, "tight", &hold(20))), (8, 12, 0));
    let seen = wait_event(&api, &key, "tight", |e| e["reason"] == "connection_limit");
    assert!(
        seen.iter().any(|e| e["reason"] == "connection_limit"),
        "{seen:?}"
    );
    // An update moves it, within the tier; null goes back to the tier's.
    let path = "/api/sandbox/tight/network-settings";
    let (s, v) = api.post(path, &key, json!({"maxConnections": 12}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(counts(&api.exec(&key, "tight", &hold(20))), (12, 8, 0));
    for (body, status, code) in [
        (json!({"maxConnections": 33}), 403, "budget_exceeds_tier"),
        (json!({"maxConnections": 0}), 400, "invalid_budget"),
        (
            json!({"newConnectionsPerSecond": 201}),
            403,
            "budget_exceeds_tier",
        ),
    ] {
        let (s, v) = api.post(path, &key, body.clone());
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {v}"
        );
    }
    let (s, v) = api.post(path, &key, json!({"maxConnections": null}));
    assert_eq!(s, 200, "{v}");
    assert!(v.get("maxConnections").is_none(), "{v}");
    assert_eq!(v["effectiveNetwork"]["fairShares"]["connections"], 32);
    assert_eq!(counts(&api.exec(&key, "tight", &hold(20))), (20, 0, 0));

    // New connections a second: 5 (a burst of 10) of 40 made at once; a
    // restricted tier may ask too, since it only narrows.
    let narrow = api.sandbox(
        &small,
        json!({"name": "narrow", "newConnectionsPerSecond": 5}),
    );
    assert_eq!(
        narrow["effectiveNetwork"]["fairShares"]["newConnectionsPerSecond"],
        5
    );
    api.sandbox(&key, json!({"name": "slow", "newConnectionsPerSecond": 5}));
    let (open, refused, _) = counts(&api.exec(&key, "slow", &hold(40)));
    assert!(
        (10..=12).contains(&open) && refused >= 28,
        "{open} let out, {refused} refused"
    );
    // The other sandbox, on its tier's rate, is not held to it.
    assert_eq!(counts(&api.exec(&key, "tight", &hold(30))), (30, 0, 0));
}
