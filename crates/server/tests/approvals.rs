//! Approvals (issue 15): what a sandbox with `networkApprovals` is refused
//! opens an access request, deduplicated by target with its attempts; its
//! owner approves it (a grant, or a permanent list entry) or denies it
//! through the API, and a DNS query held for it (`approvalHoldSeconds`)
//! is answered as soon as it is approved. Requests survive a restart of
//! the server. Every connection here is made from the sandbox's own
//! network namespace, to lab addresses only.

#![allow(clippy::unwrap_used)]

mod common;

use common::{refused, Api, Case, Send};
use sandgate_lab::addrs::{SERVER4, SERVER4_B, SERVER6_B};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn requests(api: &Api, key: &str, id: &str) -> Vec<Value> {
    let (s, v) = api.get(&format!("/api/sandbox/{id}/network/requests"), key);
    assert_eq!(s, 200, "{v}");
    v["requests"].as_array().unwrap().clone()
}

/// The request for `target`, once it shows with at least `attempts`
/// attempts (within ten seconds).
fn request_for(api: &Api, key: &str, id: &str, target: &str, attempts: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = requests(api, key, id)
            .into_iter()
            .find(|r| r["target"] == target && r["attempts"].as_u64().unwrap() >= attempts);
        if let Some(r) = found {
            return r;
        }
        assert!(Instant::now() < deadline, "no request for {target}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn decide(api: &Api, key: &str, id: &str, request: &str, how: &str, body: Value) -> (u16, Value) {
    api.post(
        &format!("/api/sandbox/{id}/network/requests/{request}/{how}"),
        key,
        body,
    )
}

fn resolves(api: &Api, key: &str, id: &str, name: &str, addr: &str) -> bool {
    api.exec(key, id, &format!("nslookup {name} 2>&1"))["stdout"]
        .as_str()
        .unwrap()
        .contains(addr)
}

#[test]
fn approvals_are_refused_where_they_have_no_place() {
    let api = Api::start();
    let (_, low) = api.organization("restricted", 1);
    let (_, key) = api.organization("asking", 3);
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            "/api/sandbox".into(),
            Some(low.as_str()),
            Send::Json(json!({"networkApprovals": true})),
            403,
            "network_restricted_by_tier",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(key.as_str()),
            Send::Json(json!({"approvalHoldSeconds": 61})),
            400,
            "invalid_approval_hold",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(key.as_str()),
            Send::Json(json!({"networkApprovals": "yes"})),
            422,
            "invalid_request",
        ),
    ];
    refused(&api, cases);
    // Off, or in open mode, it is stored and said to be inactive.
    let s = api.sandbox(&key, json!({"name": "open", "networkApprovals": true}));
    assert_eq!(s["networkApprovals"], true);
    assert!(s["effectiveNetwork"]["approvals"].is_null(), "{s}");
    assert_eq!(
        s["effectiveNetwork"]["inactive"][0]["setting"],
        "networkApprovals"
    );
    assert_eq!(s["effectiveNetwork"]["inactive"][0]["reason"], "open");
    let id = s["id"].as_str().unwrap();
    let (status, v) = decide(&api, &key, id, "ar-00000000", "approve", json!({}));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
}

#[test]
fn a_held_query_is_answered_when_its_request_is_approved() {
    let api = Api::start();
    let (_, key) = api.organization("approvals", 3);
    let s = api.sandbox(
        &key,
        json!({"name": "asking", "networkAllowList": format!("{SERVER4}/32"),
               "networkApprovals": true, "approvalHoldSeconds": 20}),
    );
    assert_eq!(
        s["effectiveNetwork"]["approvals"],
        json!({"holdSeconds": 20})
    );
    let id = s["id"].as_str().unwrap().to_string();
    let b4 = SERVER4_B.to_string();

    // The lookup waits while its request opens; the approval answers it.
    let (answered, request, took) = std::thread::scope(|scope| {
        let asked = scope.spawn(|| resolves(&api, &key, &id, "api.example.com", &b4));
        let r = request_for(&api, &key, &id, "api.example.com", 1);
        assert_eq!(r["state"], "pending", "{r}");
        assert_eq!(r["kind"], "name");
        assert!(!asked.is_finished(), "the query was not held");
        let started = Instant::now();
        let (status, v) = decide(
            &api,
            &key,
            &id,
            r["id"].as_str().unwrap(),
            "approve",
            json!({"ttlSeconds": 300}),
        );
        assert_eq!(status, 200, "{v}");
        let answered = asked.join().unwrap();
        (answered, v, started.elapsed())
    });
    assert!(
        answered,
        "the held lookup was not answered with the address"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(request["state"], "approved");
    let grant = request["grantId"].as_str().unwrap();
    assert!(api.echoes(&key, &id, &b4));
    let (_, grants) = api.get(&format!("/api/sandbox/{id}/network/grants"), &key);
    assert_eq!(grants["grants"][0]["id"], grant, "{grants}");
    assert_eq!(grants["grants"][0]["target"], "api.example.com");
    // Decided once.
    let rid = request["id"].as_str().unwrap();
    let (status, v) = decide(&api, &key, &id, rid, "deny", json!({}));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("request_decided")),
        "{v}"
    );
    // Its A and AAAA queries were both held and both answered.
    let metrics = api.metrics();
    let held: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sandgate_dns_held_approved_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(held >= 1, "{metrics}");
    assert!(
        metrics.contains("sandgate_access_requests_approved_total 1"),
        "{metrics}"
    );
}

#[test]
fn requests_count_attempts_are_denied_or_approved_for_good_and_survive_a_restart() {
    let mut api = Api::start();
    let (_, key) = api.organization("deciding", 3);
    let s = api.sandbox(
        &key,
        json!({"name": "asking", "networkAllowList": format!("{SERVER4}/32"),
               "networkApprovals": true}),
    );
    let id = s["id"].as_str().unwrap().to_string();
    let b6 = SERVER6_B.to_string();

    // A refused name, twice: one request, two attempts, answered at once.
    let started = Instant::now();
    assert!(!resolves(&api, &key, &id, "www.example.com", "198.51"));
    assert!(!resolves(&api, &key, &id, "www.example.com", "198.51"));
    assert!(started.elapsed() < Duration::from_secs(5));
    let name = request_for(&api, &key, &id, "www.example.com", 2);
    // A denied connection: a request for its address, with its port.
    assert!(!api.echoes(&key, &id, &b6));
    let addr = request_for(&api, &key, &id, &b6, 1);
    assert_eq!(addr["kind"], "address", "{addr}");
    assert_eq!(addr["port"], 7, "{addr}");
    assert_eq!(addr["protocol"], "tcp", "{addr}");
    // Neither opens a request for what the allow list holds.
    assert!(requests(&api, &key, &id)
        .iter()
        .all(|r| r["target"] != SERVER4.to_string()));

    // Denied: it stays so, later attempts counted.
    let (status, v) = decide(
        &api,
        &key,
        &id,
        name["id"].as_str().unwrap(),
        "deny",
        json!({}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "denied");
    // The policy carries the denied name: its DNS service refuses it at
    // once, never holding it.
    let (_, view) = api.get(&format!("/api/sandbox/{id}"), &key);
    assert_eq!(
        view["effectiveNetwork"]["approvals"],
        json!({"holdSeconds": 0, "declined": ["www.example.com"]}),
        "{view}"
    );
    assert!(!resolves(&api, &key, &id, "www.example.com", "198.51"));
    let again = request_for(&api, &key, &id, "www.example.com", 3);
    assert_eq!(again["state"], "denied", "{again}");

    // Followed, the stream gives the requests as they stand, then each
    // change; pending ones only, here.
    let path = format!("/api/sandbox/{id}/network/requests?follow=true&state=pending");
    let seen = api.stream(&key, &path, |r| r["target"] == b6);
    assert!(seen.iter().all(|r| r["state"] == "pending"), "{seen:?}");

    // A restart keeps them, and they can be decided after it.
    api.restart();
    let kept = requests(&api, &key, &id);
    assert_eq!(kept.len(), 2, "{kept:?}");
    let (status, v) = api.call(
        "POST",
        &format!(
            "/api/sandbox/{id}/network/requests/{}/approve",
            addr["id"].as_str().unwrap()
        ),
        Some(&key),
        Send::Nothing,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "approved");
    assert!(v["grantId"].is_null(), "{v}");
    // For good: in the allow list, no grant.
    let (_, view) = api.get(&format!("/api/sandbox/{id}"), &key);
    assert_eq!(
        view["networkAllowList"],
        format!("{SERVER4}/32,{b6}/128"),
        "{view}"
    );
    assert!(api.echoes(&key, &id, &b6));
    let (status, v) = api.get(
        &format!("/api/sandbox/{id}/network/requests?state=maybe"),
        &key,
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );

    // They go with their sandbox.
    let (status, _) = api.delete(&format!("/api/sandbox/{id}"), &key);
    assert_eq!(status, 204);
    let (status, _) = api.get(&format!("/api/sandbox/{id}/network/requests"), &key);
    assert_eq!(status, 404);
}
