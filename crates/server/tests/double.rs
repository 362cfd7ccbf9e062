//! The API over a runner double: its validation, authorization and error
//! answers, and the undo of a step the runner failed, as a client sees
//! them. Needs neither root nor a lab: the double keeps what the API asked
//! of it and fails what a test tells it to (the real runner's behaviour is
//! the lab suites' to show).

#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, Case, Send, ADMIN};
use sandgate_contract::{Runner, RunnerError};
use sandgate_testkit::double::{Op, RunnerDouble};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[test]
fn malformed_requests_get_their_status_and_code_and_store_nothing() {
    // One sandbox per organization at most, to see the quota refuse.
    let api = Api::with_double(|cfg| cfg.max_sandboxes_per_org = 1);
    let (org, k) = api.organization("acme", 3);
    let (_, k1) = api.organization("small", 1);
    let existing = api.sandbox(&k, json!({"name": "existing"}));
    let ex = id(&existing);
    let json_body = |v: Value| Send::Json(v);
    let raw = |ctype: &'static str, body: &str| Send::Raw(ctype, body.as_bytes().to_vec());
    let big = "x".repeat(2 << 20);
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            raw("application/json", "{"),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            raw("application/json", "{\"name\": }"),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            raw("text/plain", "{}"),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!([])),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"egressMbps": 0})),
            400,
            "invalid_budget",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"egressMbps": 100001})),
            400,
            "invalid_budget",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/network-settings"),
            Some(&k),
            json_body(json!({"egressMbps": "fast"})),
            422,
            "invalid_request",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/network-settings"),
            Some(&k),
            json_body(json!({"egressMbps": 0})),
            400,
            "invalid_budget",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"maxConnections": 0})),
            400,
            "invalid_budget",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"maxConnections": 1_000_000})),
            403,
            "budget_exceeds_tier",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/network-settings"),
            Some(&k),
            json_body(json!({"newConnectionsPerSecond": 0})),
            400,
            "invalid_budget",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/network-settings"),
            Some(&k),
            json_body(json!({"newConnectionsPerSecond": "many"})),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"networkAllowlist": "192.0.2.10/32"})),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"networkBlockAll": "yes"})),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"networkAllowList": 5})),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"networkAllowList": "192.0.2.300/32"})),
            400,
            "invalid_network_allow_list",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"networkAllowList": "192.0.2.10/33"})),
            400,
            "invalid_network_allow_list",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"networkAllowList": "example.com"})),
            400,
            "invalid_network_allow_list",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(
                json!({"networkAllowList": "1.1.1.1/32,2.2.2.2/32,3.3.3.3/32,4.4.4.4/32,5.5.5.5/32,6.6.6.6/32,7.7.7.7/32,8.8.8.8/32,9.9.9.9/32,11.1.1.1/32,12.1.1.1/32"}),
            ),
            400,
            "invalid_network_allow_list",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"domainAllowList": "exa mple.com"})),
            400,
            "invalid_domain_allow_list",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"domainAllowList": "*.*.example.com"})),
            400,
            "invalid_domain_allow_list",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"domainAllowList": "192.0.2.10"})),
            400,
            "invalid_domain_allow_list",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k1),
            json_body(json!({"domainAllowList": "example.com"})),
            403,
            "network_restricted_by_tier",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k1),
            json_body(json!({"httpRules": [{"host": "api.example.com", "methods": ["GET"]}]})),
            403,
            "network_restricted_by_tier",
        ),
        (
            "POST",
            "/api/secrets".into(),
            Some(&k),
            json_body(json!({"name": "gh-token", "value": "v", "hosts": ["api.example.com"]})),
            400,
            "invalid_secret_name",
        ),
        (
            "POST",
            "/api/secrets".into(),
            Some(&k),
            json_body(json!({"name": "GH", "value": "a\nb", "hosts": ["api.example.com"]})),
            400,
            "invalid_secret_value",
        ),
        (
            "POST",
            "/api/secrets".into(),
            Some(&k),
            json_body(json!({"name": "GH", "value": "a\u{1}b", "hosts": ["api.example.com"]})),
            400,
            "invalid_secret_value",
        ),
        (
            "POST",
            "/api/secrets".into(),
            Some(&k),
            json_body(json!({"name": "GH", "value": "v", "hosts": []})),
            400,
            "invalid_secret_hosts",
        ),
        (
            "POST",
            "/api/secrets".into(),
            Some(&k),
            json_body(json!({"name": "GH", "value": "v", "hosts": ["*"]})),
            400,
            "invalid_secret_hosts",
        ),
        (
            "POST",
            "/api/secrets".into(),
            Some(&k),
            json_body(
                json!({"name": "GH", "value": "v", "hosts": ["a.example.com"], "expires": 1}),
            ),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"secrets": ["NOPE"]})),
            400,
            "unknown_secret",
        ),
        (
            "DELETE",
            "/api/secrets/NOPE".into(),
            Some(&k),
            Send::Nothing,
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"httpRules": [{"host": "api.example.com", "methods": ["get"]}]})),
            400,
            "invalid_http_rules",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/network-settings"),
            Some(&k),
            json_body(json!({"httpRules": [{"host": "api.example.com", "paths": ["repos/**"]}]})),
            400,
            "invalid_http_rules",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/network-settings"),
            Some(&k),
            json_body(json!({"httpRules": [{"host": "api.example.com", "path": ["/repos/**"]}]})),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"name": "bad name"})),
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"name": "sb-123"})),
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"name": "existing"})),
            409,
            "quota_exceeded",
        ),
        (
            "GET",
            format!("/api/sandbox/{ex}/network/events?follow=perhaps"),
            Some(&k),
            Send::Nothing,
            400,
            "invalid_request",
        ),
        (
            "GET",
            format!("/api/sandbox/{ex}/network/flows?limit=0"),
            Some(&k),
            Send::Nothing,
            400,
            "invalid_request",
        ),
        (
            "GET",
            format!("/api/sandbox/{ex}/network/flows?limit=1001"),
            Some(&k),
            Send::Nothing,
            400,
            "invalid_request",
        ),
        (
            "GET",
            format!("/api/sandbox/{ex}/network/flows?since=yesterday"),
            Some(&k),
            Send::Nothing,
            400,
            "invalid_request",
        ),
        (
            "GET",
            format!("/api/sandbox/{ex}/network/flows?until=1"),
            Some(&k),
            Send::Nothing,
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/api/sandbox/nobody/network/flows".into(),
            Some(&k),
            Send::Nothing,
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"snapshot": "nope"})),
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"snapshot": "../busybox"})),
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"env": {"1BAD": "x"}})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({"env": {"A": 1}})),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(&k),
            raw("application/json", &format!("{{\"name\":\"{big}\"}}")),
            413,
            "payload_too_large",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            None,
            json_body(json!({})),
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/api/sandbox".into(),
            Some(ADMIN),
            json_body(json!({})),
            403,
            "forbidden",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/network-settings"),
            Some(&k),
            json_body(json!({})),
            400,
            "invalid_network_settings",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/network-settings"),
            Some(&k),
            json_body(json!({"networkAllowList": "10.0.0.0/8/8"})),
            400,
            "invalid_network_allow_list",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/network-settings"),
            Some(&k1),
            json_body(json!({"networkBlockAll": true})),
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/sandbox/missing/network-settings".into(),
            Some(&k),
            json_body(json!({"networkBlockAll": true})),
            404,
            "not_found",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/process/execute"),
            Some(&k),
            json_body(json!({"command": ""})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/process/execute"),
            Some(&k),
            json_body(json!({"command": "true", "timeout": -1})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/process/execute"),
            Some(&k),
            json_body(json!({"command": "true", "timeout": 1e9})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/process/execute"),
            Some(&k),
            json_body(json!({"command": "true", "cwd": "tmp"})),
            400,
            "invalid_cwd",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/process/execute"),
            Some(&k),
            json_body(json!({"command": "true", "cwd": "/tmp\nx"})),
            400,
            "invalid_cwd",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/process/execute"),
            Some(&k),
            json_body(json!({"command": "true", "cwd": format!("/{}", "a".repeat(4096))})),
            400,
            "invalid_cwd",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/process/execute"),
            Some(&k),
            json_body(json!({"cmd": "true"})),
            422,
            "invalid_request",
        ),
        (
            "GET",
            format!("/api/sandbox/{ex}/network/explain"),
            Some(&k),
            Send::Nothing,
            400,
            "invalid_request",
        ),
        (
            "GET",
            format!("/api/sandbox/{ex}/network/explain?dest=not%20a%20host"),
            Some(&k),
            Send::Nothing,
            400,
            "invalid_destination",
        ),
        (
            "POST",
            "/api/admin/organizations".into(),
            Some(ADMIN),
            json_body(json!({"name": "acme", "tier": 3})),
            409,
            "name_taken",
        ),
        (
            "POST",
            "/api/admin/organizations".into(),
            Some(ADMIN),
            json_body(json!({"name": "new", "tier": 9})),
            400,
            "invalid_tier",
        ),
        (
            "POST",
            "/api/admin/organizations".into(),
            Some(ADMIN),
            json_body(json!({"name": "new", "tier": 300})),
            422,
            "invalid_request",
        ),
        (
            "PUT",
            format!("/api/admin/organizations/{org}/tier"),
            Some(ADMIN),
            json_body(json!({"tier": 0})),
            400,
            "invalid_tier",
        ),
        (
            "PUT",
            format!("/api/admin/organizations/{org}/egress-address"),
            Some(ADMIN),
            json_body(json!({"ipv4": "nope"})),
            400,
            "invalid_egress_address",
        ),
        (
            "PUT",
            format!("/api/admin/organizations/{org}/egress-address"),
            Some(ADMIN),
            json_body(json!({"ipv6": "203.0.113.65"})),
            400,
            "invalid_egress_address",
        ),
        (
            "PUT",
            format!("/api/admin/organizations/{org}/egress-address"),
            Some(ADMIN),
            json_body(json!({})),
            400,
            "invalid_egress_address",
        ),
        (
            "PUT",
            format!("/api/admin/organizations/{org}/egress-address"),
            Some(ADMIN),
            json_body(json!({"ipv4": "127.0.0.1"})),
            400,
            "invalid_egress_address",
        ),
        (
            "PUT",
            format!("/api/admin/organizations/{org}/egress-address"),
            Some(ADMIN),
            json_body(json!({"ipv4": "203.0.113.65", "address": "x"})),
            422,
            "invalid_request",
        ),
        (
            "PUT",
            format!("/api/admin/organizations/{org}/egress-address"),
            Some(&k),
            json_body(json!({"ipv4": "203.0.113.65"})),
            403,
            "forbidden",
        ),
        (
            // The double's host holds no address at all.
            "PUT",
            format!("/api/admin/organizations/{org}/egress-address"),
            Some(ADMIN),
            json_body(json!({"ipv4": "203.0.113.65"})),
            409,
            "egress_address_not_local",
        ),
        (
            "DELETE",
            "/api/admin/organizations/org-missing/egress-address".into(),
            Some(ADMIN),
            Send::Nothing,
            404,
            "not_found",
        ),
        (
            "PUT",
            "/api/admin/organizations/org-missing/tier".into(),
            Some(ADMIN),
            json_body(json!({"tier": 2})),
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/admin/organizations/org-missing/keys".into(),
            Some(ADMIN),
            Send::Nothing,
            404,
            "not_found",
        ),
        (
            "GET",
            "/api/nothing-here".into(),
            Some(&k),
            Send::Nothing,
            404,
            "not_found",
        ),
        (
            "PATCH",
            "/api/sandbox".into(),
            Some(&k),
            json_body(json!({})),
            405,
            "method_not_allowed",
        ),
    ];
    assert!(cases.len() >= 28);
    let n = cases.len();
    common::refused(&api, cases);
    // Nothing stored, nothing changed, nothing run.
    assert!(api.double().held(&ex).unwrap().commands.is_empty());
    let (_, list) = api.get("/api/sandbox", &k);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (_, g) = api.get("/api/sandbox/existing", &k);
    assert_eq!(
        (
            g["networkBlockAll"].as_bool(),
            g["effectiveNetwork"]["mode"].as_str()
        ),
        (Some(false), Some("open"))
    );
    let (_, orgs) = api.get("/api/admin/organizations", ADMIN);
    assert_eq!(orgs.as_array().unwrap().len(), 2);
    assert_eq!(api.get("/api/organization", &k).1["tier"], 3);
    assert_eq!(api.double().ids(), vec![ex.clone()]);
    println!("{n} malformed requests refused");
}

#[test]
fn a_runner_that_is_full_or_failing_leaves_nothing_and_says_whose_fault() {
    let mut api = Api::with_double(|_| {});
    let (_, k) = api.organization("acme", 3);
    let double = api.double().clone();

    // No room on the host, or a host that does not answer: the caller
    // may retry later, and is told when.
    for (error, want, after) in [
        (
            RunnerError::Capacity("no free slot".into()),
            "capacity_exhausted",
            "10",
        ),
        (
            RunnerError::Unavailable("no answer".into()),
            "runner_unavailable",
            "5",
        ),
    ] {
        double.fail(Op::Create, error);
        let (s, v, retry) = api.answer(
            "POST",
            "/api/sandbox",
            Some(&k),
            Send::Json(json!({"name": "a"})),
        );
        assert_eq!(
            (s, code(&v), retry.as_deref()),
            (503, want, Some(after)),
            "{v}"
        );
    }

    // The host's fault: 500, its cause in the log, not in the answer.
    let cause = "runc: exec: \"runc\": executable file not found in $PATH";
    double.fail(Op::Create, RunnerError::host(cause));
    let (s, v) = api.post("/api/sandbox", &k, json!({"name": "a"}));
    assert_eq!((s, code(&v)), (500, "internal"), "{v}");
    assert!(!v.to_string().contains("runc"), "{v}");

    // Neither left a row or anything on the runner.
    assert_eq!(api.get("/api/sandbox", &k).1, json!([]));
    assert!(double.ids().is_empty());

    // A failed create whose undo fails too is left as `deleting`, and the
    // next start finishes it.
    double.fail(Op::Create, RunnerError::host("the slot's links"));
    double.fail(Op::Delete, RunnerError::host("the slot's namespace"));
    let (s, _) = api.post("/api/sandbox", &k, json!({"name": "a"}));
    assert_eq!(s, 500);
    let (_, list) = api.get("/api/sandbox", &k);
    assert_eq!(list[0]["state"], "deleting", "{list}");
    api.restart();
    assert_eq!(api.get("/api/sandbox", &k).1, json!([]));
    // The name is free again.
    api.sandbox(&k, json!({"name": "a"}));
}

#[test]
fn an_update_the_runner_refuses_keeps_the_stored_settings_and_policy() {
    let api = Api::with_double(|_| {});
    let (_, k) = api.organization("acme", 3);
    let sb = id(&api.sandbox(&k, json!({"networkAllowList": "192.0.2.10/32"})));
    let double = api.double();
    let before = double.held(&sb).unwrap().policy;

    double.fail(Op::Update, RunnerError::host("nft: netlink: Error"));
    let (s, v) = api.post(
        &format!("/api/sandbox/{sb}/network-settings"),
        &k,
        json!({"networkAllowList": "198.51.100.0/24"}),
    );
    assert_eq!((s, code(&v)), (500, "internal"), "{v}");
    assert!(!v.to_string().contains("nft"), "{v}");
    let (_, g) = api.get(&format!("/api/sandbox/{sb}"), &k);
    assert_eq!(g["networkAllowList"], "192.0.2.10/32", "{g}");
    assert_eq!(double.held(&sb).unwrap().policy, before);

    // A good update goes through, to the runner and the store.
    let (s, g) = api.post(
        &format!("/api/sandbox/{sb}/network-settings"),
        &k,
        json!({"networkAllowList": "198.51.100.0/24"}),
    );
    assert_eq!(s, 200, "{g}");
    assert_eq!(g["networkAllowList"], "198.51.100.0/24");
    assert_ne!(double.held(&sb).unwrap().policy, before);
}

#[test]
fn a_tier_change_a_sandbox_cannot_take_cuts_it_off_and_never_leaves_it_wider() {
    let api = Api::with_double(|_| {});
    let (org, k) = api.organization("acme", 3);
    let a = id(&api.sandbox(&k, json!({"name": "a"})));
    let b = id(&api.sandbox(&k, json!({"name": "b"})));
    let double = api.double();

    // The first sandbox's update fails: it is cut off; the second takes
    // the new tier; the answer says so.
    double.fail(Op::Update, RunnerError::host("the kernel refused"));
    let (s, v) = api.call(
        "PUT",
        &format!("/api/admin/organizations/{org}/tier"),
        Some(ADMIN),
        Send::Json(json!({"tier": 2})),
    );
    assert_eq!((s, code(&v)), (500, "partially_applied"), "{v}");
    let blocked: Vec<&String> = [&a, &b]
        .into_iter()
        .filter(|id| double.held(id).unwrap().blocked)
        .collect();
    assert_eq!(blocked.len(), 1, "exactly one cut off");
    assert_eq!(api.get("/api/organization", &k).1["tier"], 2);

    // Neither updated nor cut off: stopped, and shown lost.
    double.fail(Op::Update, RunnerError::host("the kernel refused"));
    double.fail(Op::Block, RunnerError::host("the kernel refused again"));
    let (s, v) = api.call(
        "PUT",
        &format!("/api/admin/organizations/{org}/tier"),
        Some(ADMIN),
        Send::Json(json!({"tier": 3})),
    );
    assert_eq!((s, code(&v)), (500, "partially_applied"), "{v}");
    // The one that could take neither is stopped and lost; the other has
    // the tier (and is no longer cut off).
    let state = |id: &str| api.get(&format!("/api/sandbox/{id}"), &k).1["state"].clone();
    let (lost, kept) = if double.held(&a).unwrap().stopped {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert!(double.held(lost).unwrap().stopped);
    assert_eq!(state(lost), "lost");
    assert_eq!(state(kept), "running");
    assert!(!double.held(kept).unwrap().blocked);
}

#[test]
fn a_runner_out_of_reach_amid_a_change_keeps_its_sandboxes_and_gets_the_record_back() {
    let api = Api::with_double(|_| {});
    let (org, k) = api.organization("acme", 3);
    let a = id(&api.sandbox(&k, json!({"name": "a"})));
    let double = api.double();
    let before = double.held(&a).unwrap().policy;
    let state = |id: &str| api.get(&format!("/api/sandbox/{id}"), &k).1["state"].clone();

    // A tier change the runner can take neither as an update nor as a
    // cut-off because it is away (or restarting): the sandbox is not
    // stopped, nor taken for lost (a lost sandbox's restore removes it:
    // the runner would delete a sandbox that runs on).
    for away in [
        RunnerError::Unavailable("the runner does not answer".into()),
        RunnerError::Restoring("the runner has started again".into()),
    ] {
        double.fail(Op::Update, away.clone());
        double.fail(Op::Block, away);
        let (s, v) = api.call(
            "PUT",
            &format!("/api/admin/organizations/{org}/tier"),
            Some(ADMIN),
            Send::Json(json!({"tier": 2})),
        );
        assert_eq!((s, code(&v)), (500, "partially_applied"), "{v}");
        assert_eq!(state(&a), "running");
        let held = double.held(&a).unwrap();
        assert!(!held.stopped, "{held:?}");

        // Once it answers (here at once), it is given every stored policy:
        // the sandbox runs with its tier's.
        let deadline = Instant::now() + Duration::from_secs(10);
        while double.held(&a).unwrap().policy == before {
            assert!(Instant::now() < deadline, "the record never restored");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(state(&a), "running");
        let (s, v) = api.call(
            "PUT",
            &format!("/api/admin/organizations/{org}/tier"),
            Some(ADMIN),
            Send::Json(json!({"tier": 3})),
        );
        assert_eq!(s, 200, "{v}");
        assert_eq!(double.held(&a).unwrap().policy, before);
    }

    // An update of the sandbox's own settings that finds the runner away:
    // 503, the record kept, and the runner given it back once it answers.
    let restores = double.restores();
    double.fail(Op::Update, RunnerError::Unavailable("away".into()));
    double.fail(Op::Block, RunnerError::Unavailable("away".into()));
    let (s, v) = api.post(
        &format!("/api/sandbox/{a}/network-settings"),
        &k,
        json!({"networkAllowList": "198.51.100.0/24"}),
    );
    assert_eq!((s, code(&v)), (503, "runner_unavailable"), "{v}");
    assert_eq!(state(&a), "running");
    let deadline = Instant::now() + Duration::from_secs(10);
    while double.restores() == restores {
        assert!(Instant::now() < deadline, "the record never restored");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(double.held(&a).unwrap().policy, before);
}

#[test]
fn a_dead_init_shows_died_and_refuses_what_needs_a_running_sandbox() {
    let api = Api::with_double(|_| {});
    let (_, k) = api.organization("acme", 3);
    let sb = id(&api.sandbox(&k, json!({})));
    api.double().kill(&sb);
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.get(&format!("/api/sandbox/{sb}"), &k).1["state"] != "died" {
        assert!(Instant::now() < deadline, "never shown died");
        std::thread::sleep(Duration::from_millis(20));
    }
    for (method, path, body) in [
        ("POST", "process/execute", json!({"command": "true"})),
        ("POST", "network-settings", json!({"networkBlockAll": true})),
        ("POST", "network/test", json!({})),
        ("GET", "network/events?follow=false", Value::Null),
    ] {
        let path = format!("/api/sandbox/{sb}/{path}");
        let body = if body.is_null() {
            Send::Nothing
        } else {
            Send::Json(body)
        };
        let (s, v) = api.call(method, &path, Some(&k), body);
        assert_eq!((s, code(&v)), (409, "sandbox_not_running"), "{path}: {v}");
        assert_eq!(v["error"]["state"], "died", "{v}");
    }
    assert!(api.double().held(&sb).unwrap().commands.is_empty());
    assert_eq!(api.delete(&format!("/api/sandbox/{sb}"), &k).0, 204);
    assert!(api.double().ids().is_empty());
}

#[test]
fn the_runners_refusals_keep_the_callers_faults_apart_from_the_hosts() {
    let api = Api::with_double(|_| {});
    let (_, k) = api.organization("acme", 3);
    let sb = id(&api.sandbox(&k, json!({"env": {"A": "1"}})));
    let exec = |body: Value| api.post(&format!("/api/sandbox/{sb}/process/execute"), &k, body);
    let double = api.double();

    double.fail(
        Op::Exec,
        RunnerError::Invalid {
            code: "invalid_cwd",
            message: "cwd: /srv: no such directory in the sandbox".into(),
        },
    );
    let (s, v) = exec(json!({"command": "ls", "cwd": "/srv"}));
    assert_eq!((s, code(&v)), (400, "invalid_cwd"), "{v}");

    double.fail(
        Op::Exec,
        RunnerError::host("runc exec: container_linux.go:380"),
    );
    let (s, v) = exec(json!({"command": "ls"}));
    assert_eq!((s, code(&v)), (500, "internal"), "{v}");
    assert!(!v.to_string().contains("runc"), "{v}");

    // What reaches the runner: the command, the sandbox's environment
    // under the exec's, the timeout asked.
    let (s, v) = exec(json!({"command": "ls", "env": {"B": "2"}, "timeout": 5}));
    assert_eq!(s, 200, "{v}");
    let ran = double.held(&sb).unwrap().commands;
    let last = ran.last().unwrap();
    assert_eq!(last.command, "ls");
    assert_eq!(
        last.env,
        vec![("A".into(), "1".into()), ("B".into(), "2".into())]
    );
    assert_eq!(last.timeout, Some(Duration::from_secs(5)));
}

#[test]
fn a_restart_marks_what_the_runner_lost_and_keeps_the_rest() {
    let mut api = Api::with_double(|_| {});
    let (_, k) = api.organization("acme", 3);
    let a = id(&api.sandbox(&k, json!({"name": "a"})));
    let b = id(&api.sandbox(&k, json!({"name": "b"})));
    // The host lost one of them while the server was away.
    let double = api.double().clone();
    Runner::delete(&*double, &a).unwrap();
    let again = Arc::new(RunnerDouble::new(&["busybox"], sandgate_lab::lab_policy()));
    for id in double.ids() {
        let held = double.held(&id).unwrap();
        let spec = sandgate_contract::SandboxSpec {
            id: id.clone(),
            organization: held.organization,
            snapshot: "busybox".into(),
            policy: held.policy,
            resources: sandgate_policy::Resources {
                memory_mib: 64,
                cpu_millicores: 500,
                disk_mib: 64,
            },
            runtime_class: Default::default(),
            secrets: Vec::new(),
        };
        again.create(&spec).unwrap();
    }
    api.restart_over(again.clone());
    let state = |id: &str| api.get(&format!("/api/sandbox/{id}"), &k).1["state"].clone();
    assert_eq!(state(&a), "lost");
    assert_eq!(state(&b), "running");
    assert_eq!(again.ids(), vec![b.clone()]);
}

#[test]
fn health_says_when_the_runner_does_not_enforce() {
    let api = Api::with_double(|_| {});
    let health = || api.call("GET", "/health", None, Send::Nothing);
    assert_eq!(health().0, 200);
    api.double().set_healthy(false);
    let (s, v) = health();
    assert_eq!((s, code(&v)), (503, "unavailable"), "{v}");
    api.double().set_healthy(true);
    assert_eq!(health().0, 200);
}

#[test]
fn a_server_without_a_secrets_key_stores_no_secret_and_says_why() {
    let api = Api::with_double(|cfg| cfg.secrets_key = None);
    let (_, k) = api.organization("keyless", 3);
    common::refused(
        &api,
        vec![
            (
                "POST",
                "/api/secrets".into(),
                Some(&k),
                Send::Json(json!({"name": "GH", "value": "v", "hosts": ["api.example.com"]})),
                503,
                "secrets_not_configured",
            ),
            (
                "POST",
                "/api/sandbox".into(),
                Some(&k),
                Send::Json(json!({"secrets": ["GH"]})),
                503,
                "secrets_not_configured",
            ),
        ],
    );
}

#[test]
fn a_flow_log_is_listed_by_since_and_limit_and_followed_as_written() {
    use sandgate_contract::{Flow, FlowVerdict, FlowVia};
    let api = Api::with_double(|_| {});
    let (_, k) = api.organization("flows", 3);
    let (status, sb) = api.post("/api/sandbox", &k, json!({"name": "logged"}));
    assert_eq!(status, 201, "{sb}");
    let sb = id(&sb);
    let flow = |id: u64, start: u64, end: Option<u64>| Flow {
        id,
        start_ms: start,
        end_ms: end,
        protocol: "tcp".into(),
        source: "10.77.0.3".into(),
        source_port: Some(40000),
        destination: "192.0.2.10".into(),
        port: Some(443),
        name: None,
        name_source: None,
        bytes_out: 1,
        bytes_in: 2,
        verdict: FlowVerdict::Allowed,
        reason: "open".into(),
        rule: None,
        via: FlowVia::Kernel,
    };
    for (i, end) in [Some(100), Some(200), None, Some(300)]
        .into_iter()
        .enumerate()
    {
        let i = i as u64 + 1;
        api.double().record_flow(&sb, flow(i, i * 10, end));
    }
    let ids = |query: &str| -> Vec<u64> {
        let (status, v) = api.get(&format!("/api/sandbox/{sb}/network/flows{query}"), &k);
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["dropped"], 0);
        v["flows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(""), [1, 2, 3, 4]);
    assert_eq!(ids("?limit=2"), [3, 4]);
    // Open, or ended at or after `since`.
    assert_eq!(ids("?since=200"), [2, 3, 4]);
    assert_eq!(ids("?since=301"), [3]);
    assert_eq!(ids("?since=200&limit=1"), [4]);
    // Followed: the records as they stand, then each one written.
    let recorder = {
        let double = api.double().clone();
        let sb = sb.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            double.record_flow(&sb, flow(3, 30, Some(400)));
        })
    };
    let seen = api.stream(
        &k,
        &format!("/api/sandbox/{sb}/network/flows?follow=true&since=301"),
        |f| f["endMs"] == 400,
    );
    recorder.join().unwrap();
    let seen: Vec<(u64, Value)> = seen
        .iter()
        .map(|f| (f["id"].as_u64().unwrap(), f["endMs"].clone()))
        .collect();
    assert_eq!(seen, [(3, Value::Null), (3, json!(400))]);
}
