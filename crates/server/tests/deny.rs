//! Deny lists in the kernel (issue 15): a `networkDenyList` entry wins
//! over the allow list, over an address admitted by name and over open
//! mode, for new connections (an event says why) and for open ones (cut
//! within a second of the update); removing it opens the address again.
//! Every connection here is made from the sandbox's own network
//! namespace, to lab addresses only.

#![allow(clippy::unwrap_used)]

mod common;

use common::{stream_from, streams_until_cut, Api};
use sandgate_lab::addrs::{SERVER4, SERVER4_B, SERVER6, SERVER6_B};
use serde_json::json;
use std::io::Read;
use std::time::{Duration, Instant};

#[test]
fn a_network_deny_list_wins_over_every_allow_and_cuts_open_connections() {
    let api = Api::start();
    let (_, key) = api.organization("deny", 3);
    let s = api.sandbox(
        &key,
        json!({"name": "listed", "networkAllowList": format!("{SERVER4}/32,{SERVER6}/128")}),
    );
    let id = s["id"].as_str().unwrap().to_string();
    let ns = api.slot_netns(&id);
    let mut kept = stream_from(&ns, SERVER6);
    let mut denied = stream_from(&ns, SERVER4);

    // The update denies what the allow list opens: the connection stops
    // within a second; the other address streams on.
    let (status, v) = api.post(
        &format!("/api/sandbox/{id}/network-settings"),
        &key,
        json!({"networkDenyList": format!("{SERVER4}/32")}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["networkDenyList"], format!("{SERVER4}/32"));
    assert_eq!(
        v["effectiveNetwork"]["networkDenyList"],
        json!([format!("{SERVER4}/32")])
    );
    let updated = Instant::now();
    let last = streams_until_cut(&mut denied, updated);
    assert!(last < Duration::from_secs(1), "{last:?}");
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..10 {
        assert!(kept.read(&mut buf).unwrap() > 0);
    }
    // New connections: refused, with the reason in the event and in
    // explain.
    assert!(!api.echoes(&key, &id, &SERVER4.to_string()));
    assert!(api.echoes(&key, &id, &SERVER6.to_string()));
    // (Followed until it comes: an event crosses the runner's pump.)
    let seen = api.events(&key, &id, true, |e| {
        e["reason"] == "network_deny_list" && e["destination"] == SERVER4.to_string()
    });
    assert_eq!(
        seen.last().unwrap()["reason"],
        "network_deny_list",
        "{seen:?}"
    );
    assert_eq!(
        api.explain(&key, &id, &SERVER4.to_string()),
        (false, format!("network_deny_list:{SERVER4}/32"))
    );

    // Removed: open again.
    let (status, v) = api.post(
        &format!("/api/sandbox/{id}/network-settings"),
        &key,
        json!({"networkDenyList": ""}),
    );
    assert_eq!(status, 200, "{v}");
    assert!(v.get("networkDenyList").is_none(), "{v}");
    assert!(api.echoes(&key, &id, &SERVER4.to_string()));
}

#[test]
fn a_network_deny_list_wins_over_a_name_and_subtracts_from_open_mode() {
    let api = Api::start();
    let (_, key) = api.organization("deny-names", 3);
    // Addresses admitted by name (api.example.com resolves to both in the
    // lab) and denied: the name resolves, the addresses stay shut.
    let named = api.sandbox(
        &key,
        json!({"name": "named", "domainAllowList": "api.example.com",
               "networkDenyList": format!("{SERVER4_B}/32,{SERVER6_B}/128")}),
    );
    assert_eq!(named["effectiveNetwork"]["mode"], "allowlist");
    let r = api.exec(&key, "named", "nslookup api.example.com 2>&1");
    assert!(
        r["stdout"]
            .as_str()
            .unwrap()
            .contains(&SERVER4_B.to_string()),
        "{r}"
    );
    assert!(!api.echoes(&key, "named", &SERVER4_B.to_string()));
    assert!(!api.echoes(&key, "named", &SERVER6_B.to_string()));
    assert!(!api.echoes(&key, "named", "api.example.com"));

    // Open mode: the list subtracts from the internet.
    let open = api.sandbox(
        &key,
        json!({"name": "open", "networkDenyList": format!("{SERVER4_B}/32")}),
    );
    assert_eq!(open["effectiveNetwork"]["mode"], "open");
    assert!(!api.echoes(&key, "open", &SERVER4_B.to_string()));
    assert!(api.echoes(&key, "open", &SERVER4.to_string()));

    // A tier that is restricted may not set one; a malformed one is
    // refused with its own code.
    let (_, small) = api.organization("deny-small", 1);
    let (status, v) = api.post(
        "/api/sandbox",
        &small,
        json!({"networkDenyList": format!("{SERVER4_B}/32")}),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("network_restricted_by_tier")),
        "{v}"
    );
    let (status, v) = api.post(
        "/api/sandbox",
        &key,
        json!({"networkDenyList": "192.0.2.5/24"}),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_network_deny_list")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("192.0.2.0/24"),
        "{v}"
    );
}

#[test]
fn a_new_domain_deny_entry_withdraws_what_the_names_admitted_and_cuts_their_connections() {
    let api = Api::start();
    let (_, key) = api.organization("deny-admitted", 3);
    let s = api.sandbox(
        &key,
        json!({"name": "named", "domainAllowList": "*.example.com"}),
    );
    let id = s["id"].as_str().unwrap().to_string();
    let resolves = |name: &str| {
        api.exec(&key, &id, &format!("nslookup {name} 2>&1"))["stdout"]
            .as_str()
            .unwrap()
            .contains(&SERVER4_B.to_string())
    };
    assert!(resolves("api.example.com"));
    // The lab's stream is no name-checked port: the kernel alone passes
    // it, through the name's admission.
    let mut open = stream_from(&api.slot_netns(&id), SERVER4_B);
    let (status, v) = api.post(
        &format!("/api/sandbox/{id}/network-settings"),
        &key,
        json!({"domainDenyList": "api.example.com"}),
    );
    assert_eq!(status, 200, "{v}");
    let last = streams_until_cut(&mut open, Instant::now());
    assert!(last < Duration::from_secs(1), "{last:?}");
    assert!(!resolves("api.example.com"));
    // Another name of the list resolves, and its address is admitted
    // again.
    assert!(resolves("www.example.com"));
    assert!(api.echoes(&key, &id, &SERVER4_B.to_string()));
}
