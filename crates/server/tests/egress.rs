//! A known egress address per organization (docs/REQUIREMENTS.md, "A
//! known egress address"), through the API, in the lab: the world sees an
//! organization's sandboxes' connections arrive from the address the
//! operator gave it, other organizations' from the host's own, and a
//! change reaches running sandboxes and survives a restart.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, Send, ADMIN};
use sandgate_lab::addrs::*;
use serde_json::{json, Value};

/// The address the lab's world sees a connection from sandbox `id` come
/// from, asked from inside the sandbox.
fn seen_from(api: &Api, key: &str, id: &str, server: std::net::IpAddr) -> String {
    assert!(is_lab_address(server));
    let out = api.exec(key, id, &format!("nc -w 2 {server} {WHOAMI} </dev/null"));
    assert_eq!(out["exitCode"], 0, "{out}");
    out["stdout"].as_str().unwrap().trim().to_string()
}

fn set_egress(api: &Api, org: &str, body: Value) -> Value {
    let (s, v) = api.call(
        "PUT",
        &format!("/api/admin/organizations/{org}/egress-address"),
        Some(ADMIN),
        Send::Json(body),
    );
    assert_eq!(s, 200, "{v}");
    v
}

#[test]
fn an_organizations_sandboxes_leave_from_its_known_egress_address_and_others_do_not() {
    let mut api = Api::start();
    let (known, kk) = api.organization("known", 3);
    let (_, ko) = api.organization("other", 3);
    let a = api.sandbox(&kk, json!({"name": "a"}));
    let a = a["id"].as_str().unwrap().to_string();
    let b = api.sandbox(&ko, json!({"name": "b"}));
    let b = b["id"].as_str().unwrap().to_string();
    let host4 = HOST_LINK4.addr().to_string();
    let host6 = HOST_LINK6.addr().to_string();
    assert_eq!(seen_from(&api, &kk, &a, SERVER4), host4);

    // Given to a running sandbox's organization: its next connections.
    let changed = set_egress(
        &api,
        &known,
        json!({"ipv4": EGRESS4.to_string(), "ipv6": EGRESS6.to_string()}),
    );
    assert_eq!(changed["reapplied"], 1, "{changed}");
    assert_eq!(
        changed["organization"]["egressAddress"],
        json!({"ipv4": EGRESS4.to_string(), "ipv6": EGRESS6.to_string()})
    );
    assert_eq!(seen_from(&api, &kk, &a, SERVER4), EGRESS4.to_string());
    assert_eq!(seen_from(&api, &kk, &a, SERVER6), EGRESS6.to_string());
    assert_eq!(seen_from(&api, &ko, &b, SERVER4), host4);
    assert_eq!(seen_from(&api, &ko, &b, SERVER6), host6);
    // It shows in the sandbox's effective network and the organization.
    let (_, view) = api.call(
        "GET",
        &format!("/api/sandbox/{a}"),
        Some(&kk),
        Send::Nothing,
    );
    assert_eq!(
        view["effectiveNetwork"]["egressAddress"]["ipv4"],
        EGRESS4.to_string()
    );
    let (_, other) = api.call(
        "GET",
        &format!("/api/sandbox/{b}"),
        Some(&ko),
        Send::Nothing,
    );
    assert!(
        other["effectiveNetwork"].get("egressAddress").is_none(),
        "{other}"
    );
    let (_, org) = api.call("GET", "/api/organization", Some(&kk), Send::Nothing);
    assert_eq!(org["egressAddress"]["ipv6"], EGRESS6.to_string());

    // A sandbox made afterwards has it from its first connection; it
    // changes where connections leave from, not what may leave.
    let c = api.sandbox(
        &kk,
        json!({"name": "c", "networkAllowList": format!("{SERVER4_B}/32")}),
    );
    let c = c["id"].as_str().unwrap().to_string();
    assert_eq!(seen_from(&api, &kk, &c, SERVER4_B), EGRESS4.to_string());
    assert!(!api.echoes(&kk, &c, &SERVER4.to_string()));

    // After a restart of the server, from the store.
    api.restart();
    assert_eq!(seen_from(&api, &kk, &a, SERVER4), EGRESS4.to_string());
    assert_eq!(seen_from(&api, &ko, &b, SERVER4), host4);

    // Taken away: the host's own address again.
    let (s, v) = api.call(
        "DELETE",
        &format!("/api/admin/organizations/{known}/egress-address"),
        Some(ADMIN),
        Send::Nothing,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["reapplied"], 2, "{v}");
    assert!(v["organization"].get("egressAddress").is_none(), "{v}");
    assert_eq!(seen_from(&api, &kk, &a, SERVER4), host4);
    assert_eq!(seen_from(&api, &kk, &c, SERVER4_B), host4);
}

#[test]
fn an_address_the_host_does_not_hold_is_refused_and_changes_nothing() {
    let api = Api::start();
    let (org, k) = api.organization("known", 3);
    let a = api.sandbox(&k, json!({"name": "a"}));
    let a = a["id"].as_str().unwrap().to_string();
    // In the world's egress range, but not on the host.
    let (s, v) = api.call(
        "PUT",
        &format!("/api/admin/organizations/{org}/egress-address"),
        Some(ADMIN),
        Send::Json(json!({"ipv4": "203.0.113.66"})),
    );
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "egress_address_not_local");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("203.0.113.66"));
    let out = api.exec(&k, &a, &format!("nc -w 2 {SERVER4} {WHOAMI} </dev/null"));
    assert_eq!(
        out["stdout"].as_str().unwrap().trim(),
        HOST_LINK4.addr().to_string()
    );
}
