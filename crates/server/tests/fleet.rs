//! The API over several runners (runner doubles, each named): sandboxes
//! placed by free slots, each call sent to the sandbox's own runner, a
//! drained runner given no new sandbox, a runner that stops answering
//! shown `unreachable` with its sandboxes (never gone), and on its return
//! restored from the store (what was deleted meanwhile removed there).
//! Needs neither root nor a lab; the lab's runners are
//! `crates/sandgate/tests/server.rs`'s.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, Send, ADMIN};
use sandgate_testkit::double::RunnerDouble;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const NAMES: [&str; 3] = ["a", "b", "c"];

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// Waits (at most 10 s) until `done`.
fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sandboxes_are_placed_by_free_slots_and_each_call_goes_to_their_runner() {
    let (api, doubles) = Api::with_fleet(&NAMES, |_, cfg| {
        RunnerDouble::new(&["busybox"], cfg.policy.clone())
    });
    // a has room for 2, b and c for 3.
    doubles[0].set_slots(2);
    doubles[1].set_slots(3);
    doubles[2].set_slots(3);
    let (_, k) = api.organization("acme", 3);
    let holder = |sb: &str| -> Vec<&str> {
        NAMES
            .iter()
            .zip(&doubles)
            .filter(|(_, d)| d.held(sb).is_some())
            .map(|(n, _)| *n)
            .collect()
    };

    // The most free slots first (the operator's order on a tie): b (3
    // free), c (3), a (2, as the others now), and round again until all 8
    // are taken.
    let mut placed = Vec::new();
    for i in 0..8 {
        let v = api.sandbox(&k, json!({"name": format!("s{i}")}));
        let sb = id(&v);
        let on = v["runner"].as_str().unwrap().to_string();
        assert_eq!(holder(&sb), vec![on.as_str()], "{v}");
        placed.push((sb, on));
    }
    let on: Vec<&str> = placed.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(on, ["b", "c", "a", "b", "c", "a", "b", "c"]);
    let (s, v) = api.post("/api/sandbox", &k, json!({"name": "one-too-many"}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("capacity_exhausted")),
        "{v}"
    );

    // A change of one sandbox reaches its runner only.
    let (sb, runner) = &placed[0];
    let before: Vec<_> = placed
        .iter()
        .map(|(id, r)| doubles[NAMES.iter().position(|n| n == r).unwrap()].held(id))
        .map(|h| h.unwrap().policy)
        .collect();
    let (s, v) = api.post(
        &format!("/api/sandbox/{sb}/network-settings"),
        &k,
        json!({"networkAllowList": "198.51.100.0/24"}),
    );
    assert_eq!(s, 200, "{v}");
    for (i, (id, r)) in placed.iter().enumerate() {
        let d = &doubles[NAMES.iter().position(|n| n == r).unwrap()];
        let now = d.held(id).unwrap().policy;
        assert_eq!(now != before[i], id == sb, "{id} on {r}");
    }
    // An exec runs on the sandbox's runner; a delete removes it there.
    let (s, v) = api.post(
        &format!("/api/sandbox/{sb}/process/execute"),
        &k,
        json!({"command": "true"}),
    );
    assert_eq!(s, 200, "{v}");
    let d = &doubles[NAMES.iter().position(|n| n == runner).unwrap()];
    assert_eq!(d.held(sb).unwrap().commands.len(), 1);
    let (s, _) = api.call(
        "DELETE",
        &format!("/api/sandbox/{sb}"),
        Some(&k),
        Send::Nothing,
    );
    assert_eq!(s, 204);
    assert!(holder(sb).is_empty());

    // The operator sees each runner, its slots and its sandboxes.
    let (s, runners) = api.get("/api/admin/runners", ADMIN);
    assert_eq!(s, 200, "{runners}");
    let seen: Vec<(String, String, u64, u64, u64)> = runners
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
                r["slots"].as_u64().unwrap(),
                r["used"].as_u64().unwrap(),
                r["sandboxes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("a".into(), "active".into(), 2, 2, 2),
            ("b".into(), "active".into(), 3, 2, 2),
            ("c".into(), "active".into(), 3, 3, 3),
        ]
    );
    let (s, _) = api.get("/api/admin/runners", &k);
    assert_eq!(s, 403, "an organization's key sees no runner");
}

#[test]
fn a_drained_runner_takes_no_new_sandbox_and_its_own_run_on() {
    let (api, doubles) = Api::with_fleet(&NAMES, |_, cfg| {
        RunnerDouble::new(&["busybox"], cfg.policy.clone())
    });
    let (_, k) = api.organization("acme", 3);
    let first = api.sandbox(&k, json!({"name": "first"}));
    assert_eq!(first["runner"], "a");

    let drain = |name: &str, draining: bool| {
        api.call(
            "PUT",
            &format!("/api/admin/runners/{name}/draining"),
            Some(ADMIN),
            Send::Json(json!({ "draining": draining })),
        )
    };
    for name in ["b", "c"] {
        let (s, v) = drain(name, true);
        assert_eq!((s, v["state"].as_str()), (200, Some("draining")), "{v}");
    }
    // Only a is left, even with fewer free slots than b and c.
    for i in 0..3 {
        let v = api.sandbox(&k, json!({"name": format!("d{i}")}));
        assert_eq!(v["runner"], "a", "{v}");
    }
    // The drained runners' own sandboxes are not touched; ended, a
    // drain gives the runner new sandboxes again.
    let (s, v) = drain("b", false);
    assert_eq!((s, v["state"].as_str()), (200, Some("active")), "{v}");
    assert_eq!(api.sandbox(&k, json!({"name": "back"}))["runner"], "b");
    assert_eq!(doubles[1].ids().len(), 1);

    // Refused: a runner this server does not drive, an unknown field.
    let (s, v) = drain("nowhere", true);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let (s, v) = api.call(
        "PUT",
        "/api/admin/runners/a/draining",
        Some(ADMIN),
        Send::Json(json!({"draining": true, "now": true})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("invalid_request")),
        "{v}"
    );
}

#[test]
fn a_runner_that_stops_answering_shows_its_sandboxes_unreachable_and_reconciles_on_return() {
    // Runners apart from the API: the upkeep loop looks at each.
    let (api, doubles) = Api::with_fleet(&NAMES, |name, cfg| {
        let d = RunnerDouble::new(&["busybox"], cfg.policy.clone());
        d.set_instance(&format!("{name}-1"));
        d
    });
    let (_, k) = api.organization("acme", 3);
    let on_c: Vec<String> = (0..6)
        .map(|i| api.sandbox(&k, json!({"name": format!("s{i}")})))
        .filter(|v| v["runner"] == "c")
        .map(|v| id(&v))
        .collect();
    assert_eq!(on_c.len(), 2);
    let (kept, deleted) = (&on_c[0], &on_c[1]);
    let state = |sb: &str| api.get(&format!("/api/sandbox/{sb}"), &k).1["state"].clone();

    // c stops answering: within a look (2 s), its sandboxes are
    // `unreachable` (not gone: it keeps enforcing what it was told), a
    // call about one is 503 `runner_unavailable`, and new sandboxes go
    // elsewhere. The others serve on; the API stays healthy.
    doubles[2].set_away(true);
    until("c unreachable", || state(kept) == "unreachable");
    let (s, v) = api.post(
        &format!("/api/sandbox/{kept}/process/execute"),
        &k,
        json!({"command": "true"}),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("runner_unavailable")),
        "{v}"
    );
    let (_, runners) = api.get("/api/admin/runners", ADMIN);
    assert_eq!(runners[2]["state"], "unreachable", "{runners}");
    assert!(runners[2]["slots"].is_null(), "{runners}");
    for i in 0..3 {
        let v = api.sandbox(&k, json!({"name": format!("while-away-{i}")}));
        assert_ne!(v["runner"], "c", "{v}");
    }
    assert_eq!(api.get("/health", ADMIN).0, 200);

    // Deleted while c is away: refused there (503), the row kept as
    // `deleting`, finished when c is back.
    let (s, v) = api.call(
        "DELETE",
        &format!("/api/sandbox/{deleted}"),
        Some(&k),
        Send::Nothing,
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("runner_unavailable")),
        "{v}"
    );

    // c comes back, started again: restored from the store at once. The
    // kept sandbox runs again with its policy on record; the deleted one
    // is gone from c and from the store.
    doubles[2].set_instance("c-2");
    doubles[2].set_away(false);
    until("c restored", || doubles[2].held(deleted).is_none());
    assert_eq!(state(kept), "running");
    assert!(doubles[2].held(kept).is_some());
    let (s, _) = api.get(&format!("/api/sandbox/{deleted}"), &k);
    assert_eq!(s, 404);
    let (s, v) = api.post(
        &format!("/api/sandbox/{kept}/process/execute"),
        &k,
        json!({"command": "true"}),
    );
    assert_eq!(s, 200, "{v}");
}

#[test]
fn a_runner_registers_with_the_token_issued_to_it_and_is_placed_on() {
    // No runner of its own: those that register only.
    let (api, doubles) = Api::with_fleet(&[], |_, cfg| {
        RunnerDouble::new(&["busybox"], cfg.policy.clone())
    });
    let joined = &doubles[0];
    let (_, k) = api.organization("acme", 3);
    let (s, v) = api.post("/api/sandbox", &k, json!({}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("capacity_exhausted")),
        "no runner yet: {v}"
    );

    // The operator issues a token under a name; the runner's heartbeat
    // with it makes it a member, restored first, then placed on.
    let (s, issued) = api.post("/api/admin/runners", ADMIN, json!({"name": "r1"}));
    assert_eq!(s, 201, "{issued}");
    let token = issued["token"].as_str().unwrap().to_string();
    let beat = |token: &str, body: Value| api.post("/api/runners/heartbeat", token, body);
    let body = |name: &str| {
        json!({"name": name, "url": "double://0", "callToken": "a-call-token-of-the-double",
               "slots": 10, "used": 0})
    };
    for (token, body, status) in [
        ("sgr_not-the-token", body("r1"), 401),
        (token.as_str(), body("r2"), 401),
        (ADMIN, body("r1"), 401),
        (k.as_str(), body("r1"), 401),
    ] {
        let (s, v) = beat(token, body);
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some("unauthorized")),
            "{v}"
        );
    }
    let (s, v) = beat(
        &token,
        json!({"name": "r1", "url": "double://0", "callToken": "x".repeat(16), "slots": 1, "used": 0, "more": 1}),
    );
    assert_eq!(s, 422, "{v}");
    assert_eq!(joined.restores(), 0);
    // It joins in a task of its own (the heartbeat is answered at once);
    // a heartbeat while it joins starts no second join.
    let (s, _) = beat(&token, body("r1"));
    assert_eq!(s, 200);
    assert_eq!(beat(&token, body("r1")).0, 200);
    let is_member = || beat(&token, body("r1")).1["member"] == true;
    until("r1 joined", is_member);
    assert_eq!(
        joined.restores(),
        1,
        "restored before it is placed on, once"
    );
    let made = api.sandbox(&k, json!({"name": "on-r1"}));
    assert_eq!(made["runner"], "r1", "{made}");
    assert!(joined.held(&id(&made)).is_some());
    // Its next heartbeats change nothing.
    let (s, v) = beat(&token, body("r1"));
    assert_eq!((s, v["member"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(joined.restores(), 1);
    let (_, runners) = api.get("/api/admin/runners", ADMIN);
    assert_eq!(runners[0]["name"], "r1", "{runners}");
    assert_eq!(runners[0]["state"], "active", "{runners}");

    // A new token replaces the old one, and cuts the runner off until
    // it registers with the new one (its sandboxes unreachable).
    let (s, again) = api.post("/api/admin/runners", ADMIN, json!({"name": "r1"}));
    assert_eq!(s, 201, "{again}");
    assert_eq!(beat(&token, body("r1")).0, 401);
    let state = || api.get(&format!("/api/sandbox/{}", id(&made)), &k).1["state"].clone();
    assert_eq!(state(), "unreachable");
    let new = again["token"].as_str().unwrap().to_string();
    until("r1 joined again", || {
        api.post("/api/runners/heartbeat", &new, body("r1")).1["member"] == true
    });
    assert_eq!(state(), "running");
    // A heartbeat that says another call token has it join again with it.
    let mut moved = body("r1");
    moved["callToken"] = json!("another-call-token-of-the-double");
    until("r1 joined with its new call token", || {
        api.post("/api/runners/heartbeat", &new, moved.clone()).1["member"] == true
    });
    // A name the operator cannot give.
    let (s, v) = api.post("/api/admin/runners", ADMIN, json!({"name": "Not A Name"}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_name")),
        "{v}"
    );
}

#[test]
fn a_runner_the_server_was_started_with_keeps_its_name() {
    let (api, _) = Api::with_fleet(&["a"], |_, cfg| {
        RunnerDouble::new(&["busybox"], cfg.policy.clone())
    });
    let (s, v) = api.post("/api/admin/runners", ADMIN, json!({"name": "a"}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("runner_name_taken")),
        "{v}"
    );
}

#[test]
fn a_tiers_sandboxes_go_to_the_runners_with_its_labels_only() {
    // Tier 4 on runners labelled pool=dedicated; the other tiers anywhere.
    let (api, doubles) = Api::with_fleet_and(
        &[],
        |_, cfg| RunnerDouble::new(&["busybox"], cfg.policy.clone()),
        |cfg| {
            cfg.placement
                .insert(4, [("pool".to_string(), "dedicated".to_string())].into());
        },
    );
    let (dedicated, shared) = (&doubles[0], &doubles[1]);
    shared.set_slots(100);
    dedicated.set_slots(2);
    // The labels are the operator's, given with the token (a runner
    // cannot say its own).
    for (name, url, labels) in [
        (
            "dedicated",
            "double://0",
            json!({"pool": "dedicated", "zone": "a"}),
        ),
        ("shared", "double://1", json!({})),
    ] {
        let (s, issued) = api.post(
            "/api/admin/runners",
            ADMIN,
            json!({ "name": name, "labels": labels }),
        );
        assert_eq!(s, 201, "{issued}");
        let token = issued["token"].as_str().unwrap().to_string();
        let body = json!({"name": name, "url": url, "callToken": "a-call-token-of-the-double",
                          "slots": 1, "used": 0});
        until(name, || {
            api.post("/api/runners/heartbeat", &token, body.clone()).1["member"] == true
        });
        let (s, v) = api.post(
            "/api/runners/heartbeat",
            &token,
            json!({"name": name, "url": url, "callToken": "a-call-token-of-the-double",
                   "slots": 1, "used": 0, "labels": {"pool": "dedicated"}}),
        );
        assert_eq!(s, 422, "a runner says no labels of its own: {v}");
    }
    let (_, k4) = api.organization("big", 4);
    let (_, k3) = api.organization("small", 3);
    // Tier 4: the dedicated runner, though the shared one has more room,
    // until it is full.
    for i in 0..2 {
        let v = api.sandbox(&k4, json!({"name": format!("t4-{i}")}));
        assert_eq!(v["runner"], "dedicated", "{v}");
    }
    let (s, v) = api.post("/api/sandbox", &k4, json!({"name": "t4-more"}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("capacity_exhausted")),
        "{v}"
    );
    // Tier 3: anywhere; the most free slots win.
    let v = api.sandbox(&k3, json!({"name": "t3"}));
    assert_eq!(v["runner"], "shared", "{v}");
    let (_, runners) = api.get("/api/admin/runners", ADMIN);
    assert_eq!(
        runners[0]["labels"],
        json!({"pool": "dedicated", "zone": "a"}),
        "{runners}"
    );
    // A label that is not one.
    let (s, v) = api.post(
        "/api/admin/runners",
        ADMIN,
        json!({"name": "odd", "labels": {"pool": "not a value"}}),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_label")),
        "{v}"
    );
}
