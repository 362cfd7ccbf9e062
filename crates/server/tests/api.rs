//! The API through HTTP, with a real runner in the lab: REQUIREMENTS.md section 1's
//! rules as a client sees them (what the API answers and what the sandbox
//! then reaches), auth, what only the real runtime refuses, the OpenAPI
//! document (the API's own validation runs over a runner double in
//! tests/double.rs). Needs root, runc and busybox-static.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, Case, Send, ADMIN};
use serde_json::{json, Value};

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn sandboxes_reach_what_the_api_says_and_follow_updates_and_tier_changes() {
    let api = Api::start();
    let (org3, k3) = api.organization("acme", 3);
    let (_org1, k1) = api.organization("small", 1);

    // Tier 3, allow list of one server: that server and nothing else.
    let listed = api.sandbox(
        &k3,
        json!({"name": "listed", "networkAllowList": " 192.0.2.10 "}),
    );
    assert_eq!(listed["effectiveNetwork"]["mode"], "allowlist", "{listed}");
    // The stored list comes back canonical.
    assert_eq!(listed["networkAllowList"], "192.0.2.10/32");
    assert!(api.echoes(&k3, "listed", "192.0.2.10"));
    assert!(!api.echoes(&k3, "listed", "198.51.100.10"));
    assert!(!api.echoes(&k3, "listed", "2001:db8:1::10"));

    // Every denied attempt is an event, with its reason.
    let seen = api.events(&k3, "listed", false, |_| true);
    assert!(
        seen.iter().any(|e| e["kind"] == "connection"
            && e["destination"] == "198.51.100.10"
            && e["port"] == 7
            && e["reason"] == "not_in_allow_list"),
        "{seen:?}"
    );

    // The network test probes the lab's servers from the sandbox's
    // namespace and sets each beside what explain expects. (Its catalog
    // name resolves to 192.0.2.10 in the lab, which the answer then admits
    // for the sandbox as an essential service: hence a sandbox of its own.)
    api.sandbox(
        &k3,
        json!({"name": "probed", "networkAllowList": "192.0.2.10/32"}),
    );
    let (s, t) = api.call(
        "POST",
        "/api/sandbox/probed/network/test",
        Some(&k3),
        Send::Nothing,
    );
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["ok"], true, "{t}");
    let rows = t["results"].as_array().unwrap();
    assert!(rows.len() >= 7);
    let row = |target: &str| rows.iter().find(|r| r["target"] == target).unwrap().clone();
    assert_eq!(
        (
            row("192.0.2.10:7")["expected"].as_bool(),
            row("192.0.2.10:7")["observed"].as_bool()
        ),
        (Some(true), Some(true))
    );
    assert_eq!(row("198.51.100.10:7")["observed"], false);
    assert_eq!(row("example.com:7")["reason"], "not_in_allow_list");
    assert_eq!(row("203.0.113.200:7")["expected"], false);
    assert!(
        rows.iter().any(|r| r["reason"]
            .as_str()
            .unwrap()
            .starts_with("essential_service:")
            && r["observed"] == true),
        "{t}"
    );

    // Open: everything but the always-denied and private ranges.
    let open = api.sandbox(&k3, json!({"name": "open"}));
    assert_eq!(open["effectiveNetwork"]["mode"], "open");
    assert!(api.echoes(&k3, "open", "198.51.100.10"));
    // Followed: a denial shows up on the stream as it happens.
    let followed = std::thread::scope(|s| {
        let reader =
            s.spawn(|| api.events(&k3, "open", true, |e| e["destination"] == "203.0.113.200"));
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!api.echoes(&k3, "open", "203.0.113.200"));
        reader.join().unwrap()
    });
    assert_eq!(
        followed.last().unwrap()["reason"],
        "always_denied:203.0.113.192/26",
        "{followed:?}"
    );

    // Block all wins over a list; exec still works.
    let both = api.sandbox(
        &k3,
        json!({"name": "both", "networkBlockAll": true, "networkAllowList": "192.0.2.10/32"}),
    );
    assert_eq!(both["effectiveNetwork"]["mode"], "blocked");
    assert_eq!(
        both["effectiveNetwork"]["inactive"][0]["setting"],
        "networkAllowList"
    );
    assert_eq!(api.exec(&k3, "both", "echo ran")["stdout"], "ran\n");
    assert!(!api.echoes(&k3, "both", "192.0.2.10"));

    // A domain allow list: the name resolves through the sandbox's DNS
    // service and only then is its address reachable.
    api.sandbox(
        &k3,
        json!({"name": "named", "domainAllowList": "example.com"}),
    );
    assert!(
        !api.echoes(&k3, "named", "198.51.100.10"),
        "reached before any DNS answer"
    );
    assert!(api.echoes(&k3, "named", "example.com"));
    let r = api.exec(&k3, "named", "nslookup example.net 2>&1; echo rc=$?");
    assert!(
        !r["stdout"].as_str().unwrap().contains("198.51.100.10"),
        "{r}"
    );

    // Tier 1: lists refused with 403 and the code; restricted otherwise.
    let (s, e) = api.post(
        "/api/sandbox",
        &k1,
        json!({"networkAllowList": "192.0.2.10/32"}),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("network_restricted_by_tier")),
        "{e}"
    );
    let small = api.sandbox(&k1, json!({"name": "small"}));
    assert_eq!(small["effectiveNetwork"]["mode"], "restricted");
    assert!(!api.echoes(&k1, "small", "198.51.100.10"));

    // An update replaces what it sends and keeps the rest; it is in the
    // kernel before the answer.
    let (s, u) = api.post(
        "/api/sandbox/listed/network-settings",
        &k3,
        json!({"networkAllowList": "198.51.100.0/24"}),
    );
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["networkAllowList"], "198.51.100.0/24");
    assert!(api.echoes(&k3, "listed", "198.51.100.10"));
    assert!(!api.echoes(&k3, "listed", "192.0.2.10"));
    let (s, u) = api.post(
        "/api/sandbox/listed/network-settings",
        &k3,
        json!({"networkBlockAll": true}),
    );
    assert_eq!(s, 200, "{u}");
    assert_eq!(
        (
            u["networkAllowList"].as_str(),
            u["effectiveNetwork"]["mode"].as_str()
        ),
        (Some("198.51.100.0/24"), Some("blocked"))
    );
    assert!(!api.echoes(&k3, "listed", "198.51.100.10"));
    let (s, _) = api.post(
        "/api/sandbox/listed/network-settings",
        &k3,
        json!({"networkBlockAll": false}),
    );
    assert_eq!(s, 200);
    assert!(api.echoes(&k3, "listed", "198.51.100.10"));

    // Explain, without sending anything.
    let (s, x) = api.get(
        "/api/sandbox/listed/network/explain?dest=198.51.100.7:443",
        &k3,
    );
    assert_eq!((s, x["allowed"].as_bool()), (200, Some(true)), "{x}");
    let (s, x) = api.get("/api/sandbox/listed/network/explain?dest=192.0.2.10", &k3);
    assert_eq!(
        (s, x["allowed"].as_bool(), x["reason"].as_str()),
        (200, Some(false), Some("not_in_allow_list")),
        "{x}"
    );

    // A tier change re-applies every running sandbox before it answers:
    // down to 2, the list goes inactive; back to 3, it works again.
    let (s, t) = api.call(
        "PUT",
        &format!("/api/admin/organizations/{org3}/tier"),
        Some(ADMIN),
        Send::Json(json!({"tier": 2})),
    );
    assert_eq!((s, t["reapplied"].as_u64()), (200, Some(5)), "{t}");
    assert!(!api.echoes(&k3, "listed", "198.51.100.10"));
    assert!(!api.echoes(&k3, "open", "198.51.100.10"));
    let (_, g) = api.get("/api/sandbox/listed", &k3);
    assert_eq!(g["effectiveNetwork"]["mode"], "restricted");
    assert_eq!(
        g["effectiveNetwork"]["inactive"][0]["reason"], "restricted_by_tier",
        "{g}"
    );
    let (s, _) = api.call(
        "PUT",
        &format!("/api/admin/organizations/{org3}/tier"),
        Some(ADMIN),
        Send::Json(json!({"tier": 3})),
    );
    assert_eq!(s, 200);
    assert!(api.echoes(&k3, "listed", "198.51.100.10"));

    // Auth: no key, a bad key, another organization's sandbox, admin
    // routes with an organization's key, a tier change by an organization.
    assert_eq!(api.call("GET", "/api/sandbox", None, Send::Nothing).0, 401);
    assert_eq!(api.get("/api/sandbox", "sg_not-a-key").0, 401);
    // The scheme's name is case-insensitive.
    assert_eq!(
        api.get_authorized("/api/organization", &format!("bearer {k3}")),
        200
    );
    assert_eq!(
        api.get_authorized("/api/organization", &format!("Basic {k3}")),
        401
    );
    // Names are unique in an organization.
    let (s, e) = api.post("/api/sandbox", &k3, json!({"name": "open"}));
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("name_taken")),
        "{e}"
    );
    assert_eq!(
        api.get(&format!("/api/sandbox/{}", id(&listed)), &k1).0,
        404
    );
    assert_eq!(api.get("/api/sandbox/listed", &k1).0, 404);
    assert_eq!(
        api.call("DELETE", "/api/sandbox/listed", Some(&k1), Send::Nothing)
            .0,
        404
    );
    assert_eq!(api.get("/api/admin/organizations", &k3).0, 403);
    let (s, _) = api.call(
        "PUT",
        &format!("/api/admin/organizations/{org3}/tier"),
        Some(&k3),
        Send::Json(json!({"tier": 4})),
    );
    assert_eq!(s, 403);
    assert_eq!(api.get("/api/organization", &k3).1["tier"], 3);
    // The organization sees its own sandboxes only.
    let (_, list) = api.get("/api/sandbox", &k1);
    assert_eq!(list.as_array().unwrap().len(), 1);

    // A revoked key stops working.
    let (s, key) = api.call(
        "POST",
        &format!("/api/admin/organizations/{org3}/keys"),
        Some(ADMIN),
        Send::Nothing,
    );
    assert_eq!(s, 201);
    let (k, kid) = (key["key"].as_str().unwrap(), key["id"].as_str().unwrap());
    assert_eq!(api.get("/api/sandbox", k).0, 200);
    let (s, _) = api.call(
        "DELETE",
        &format!("/api/admin/organizations/{org3}/keys/{kid}"),
        Some(ADMIN),
        Send::Nothing,
    );
    assert_eq!(s, 204);
    assert_eq!(api.get("/api/sandbox", k).0, 401);

    // Delete: gone from the API and from the host.
    for name in ["listed", "probed", "open", "both", "named"] {
        assert_eq!(
            api.call(
                "DELETE",
                &format!("/api/sandbox/{name}"),
                Some(&k3),
                Send::Nothing
            )
            .0,
            204
        );
        assert_eq!(api.get(&format!("/api/sandbox/{name}"), &k3).0, 404);
    }
    assert_eq!(
        api.call("DELETE", "/api/sandbox/small", Some(&k1), Send::Nothing)
            .0,
        204
    );
    let runtime = api.dir.join("runner/runtime/sandboxes");
    assert_eq!(std::fs::read_dir(runtime).unwrap().count(), 0);
}

#[test]
fn the_runtimes_refusals_are_said_in_sandgates_words_and_execs_are_bounded() {
    // The API's own validation runs over a runner double (tests/double.rs);
    // here, what only the real runtime can refuse, and the bound on
    // execs running at once.
    let api = Api::start_with(|cfg| cfg.execs_per_org = 1);
    let (_, k) = api.organization("acme", 3);
    let existing = api.sandbox(&k, json!({"name": "existing"}));
    let ex = id(&existing);
    let json_body = |v: Value| Send::Json(v);
    let cases: Vec<Case<'_>> = vec![
        // A directory the sandbox does not have: said in sandgate's words,
        // not the OCI runtime's, and never as the command's output.
        (
            "POST",
            format!("/api/sandbox/{ex}/process/execute"),
            Some(&k),
            json_body(json!({"command": "echo ran", "cwd": "/no/such/dir"})),
            400,
            "invalid_cwd",
        ),
        (
            "POST",
            format!("/api/sandbox/{ex}/process/execute"),
            Some(&k),
            json_body(json!({"command": "echo ran", "cwd": "/bin/sh"})),
            400,
            "invalid_cwd",
        ),
    ];
    // One exec at a time for this organization: a second while one runs
    // is 429, and the first is unharmed.
    std::thread::scope(|s| {
        let first = s.spawn(|| api.exec(&k, "existing", "sleep 2; echo done"));
        std::thread::sleep(std::time::Duration::from_millis(700));
        let (s2, e, retry) = api.answer(
            "POST",
            &format!("/api/sandbox/{ex}/process/execute"),
            Some(&k),
            Send::Json(json!({"command": "true"})),
        );
        assert_eq!(
            (s2, e["error"]["code"].as_str(), retry.as_deref()),
            (429, Some("too_many_requests"), Some("1")),
            "{e}"
        );
        assert_eq!(first.join().unwrap()["stdout"], "done\n");
    });
    assert_eq!(api.exec(&k, "existing", "echo again")["stdout"], "again\n");
    // Said in sandgate's words: the OCI runtime's never reach the client.
    common::refused(&api, cases);
    assert_eq!(
        std::fs::read_dir(api.dir.join("runner/runtime/sandboxes"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn the_reference_page_is_served_from_the_binary_and_reads_the_document() {
    let api = Api::start();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |path: &str| {
        let mut r = agent.get(&format!("{}{path}", api.base)).call().unwrap();
        let status = r.status().as_u16();
        let kind = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (
            status,
            kind,
            r.body_mut().read_to_string().unwrap_or_default(),
        )
    };
    let (s, kind, page) = get("/api/docs/");
    assert_eq!(s, 200, "{page}");
    assert!(kind.starts_with("text/html"), "{kind}");
    // Its scripts and styles come from the server itself, never a CDN.
    assert!(page.contains("./swagger-ui-bundle.js"), "{page}");
    assert!(
        !page.contains("https://") && !page.contains("http://"),
        "{page}"
    );
    let (s, kind, bundle) = get("/api/docs/swagger-ui-bundle.js");
    assert_eq!(s, 200);
    assert!(kind.contains("javascript"), "{kind}");
    assert!(bundle.len() > 100_000, "{} bytes", bundle.len());
    // It is told where the document is.
    let (s, _, config) = get("/api/docs/swagger-initializer.js");
    assert_eq!(s, 200);
    assert!(config.contains("/api/openapi.json"), "{config}");
}

#[test]
fn the_openapi_document_lists_every_route_and_its_references_resolve() {
    let api = Api::start();
    let (s, doc) = api.call("GET", "/api/openapi.json", None, Send::Nothing);
    assert_eq!(s, 200);
    // It reads back as an OpenAPI document.
    let parsed: utoipa::openapi::OpenApi = serde_json::from_value(doc.clone()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for (path, method) in [
        ("/api/organization", "get"),
        ("/api/admin/organizations", "post"),
        ("/api/admin/organizations", "get"),
        ("/api/admin/organizations/{id}/tier", "put"),
        ("/api/admin/organizations/{id}/egress-address", "put"),
        ("/api/admin/organizations/{id}/egress-address", "delete"),
        ("/api/admin/organizations/{id}/keys", "post"),
        ("/api/admin/organizations/{id}/keys/{key_id}", "delete"),
        ("/api/admin/runners", "get"),
        ("/api/admin/runners", "post"),
        ("/api/runners/heartbeat", "post"),
        ("/api/admin/runners/{name}/draining", "put"),
        ("/api/sandbox", "post"),
        ("/api/sandbox", "get"),
        ("/api/sandbox/{id_or_name}", "get"),
        ("/api/sandbox/{id_or_name}", "delete"),
        ("/api/sandbox/{id_or_name}/network-settings", "post"),
        ("/api/sandbox/{id_or_name}/process/execute", "post"),
        ("/api/sandbox/{id_or_name}/network/explain", "get"),
        ("/api/sandbox/{id_or_name}/network/grants", "post"),
        ("/api/sandbox/{id_or_name}/network/grants", "get"),
        (
            "/api/sandbox/{id_or_name}/network/grants/{grant_id}",
            "delete",
        ),
        ("/api/sandbox/{id_or_name}/network/test", "post"),
        ("/api/sandbox/{id_or_name}/network/events", "get"),
        ("/api/sandbox/{id_or_name}/network/usage", "get"),
        ("/health", "get"),
        ("/metrics", "get"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing from {paths:?}");
        assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
    }
    // Every documented operation is routed: without a key it is refused
    // (401), never "no such route".
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id_or_name}", "x")
                .replace("{id}", "x")
                .replace("{key_id}", "x")
                .replace("{name}", "x")
                .replace("{grant_id}", "x");
            let (s, v) = api.call(&method.to_uppercase(), &concrete, None, Send::Nothing);
            let open = path == "/health";
            assert!(
                if open { s == 200 } else { s == 401 },
                "{method} {path}: {s} {v}"
            );
        }
    }
    // Every $ref points at a schema the document has.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "$ref" {
                        out.push(x.as_str().unwrap().to_string());
                    }
                    refs(x, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} does not resolve"
        );
    }
    assert!(parsed
        .components
        .unwrap()
        .security_schemes
        .contains_key("bearer"));

    // Health and metrics; metrics are the operator's, not a tenant's.
    let (s, h) = api.call("GET", "/health", None, Send::Nothing);
    assert_eq!((s, h["status"].as_str()), (200, Some("ok")));
    let (acme, k) = api.organization("acme", 3);
    let (s, e) = api.call("GET", "/metrics", Some(&k), Send::Nothing);
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{e}"
    );
    let (s, _) = api.call("GET", "/metrics", None, Send::Nothing);
    assert_eq!(s, 401);
    api.sandbox(&k, json!({"name": "m", "networkBlockAll": true}));
    // Traffic: one connection let out, one denied.
    api.sandbox(&k, json!({"name": "o"}));
    assert!(api.echoes(&k, "o", "198.51.100.10"));
    assert!(!api.echoes(&k, "o", "203.0.113.200"));
    // The deny event arrives as it is logged; the allowed count with the
    // kernel's next sample (once a second).
    let denied = "sandgate_network_events_total{kind=\"connection\",reason=\"always_denied:203.0.113.192/26\"}";
    let allowed = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("sandgate_connections_allowed_total{by=\"policy\"} "))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut text = api.metrics();
    while !(text.contains(denied) && allowed(&text) >= 1) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        text = api.metrics();
    }
    assert!(text.contains(denied), "{text}");
    assert!(allowed(&text) >= 1, "{text}");
    assert!(
        text.contains("sandgate_sandboxes{state=\"running\",mode=\"blocked\"} 1"),
        "{text}"
    );
    assert!(text.contains("sandgate_sandboxes_created_total 2"));
    assert!(
        text.contains("route=\"/api/sandbox\",status=\"201\"} 2"),
        "{text}"
    );
    // Three: the refused one of the route check above, and the creates.
    assert!(text.contains("sandgate_http_request_duration_seconds_count{method=\"POST\",route=\"/api/sandbox\"} 3"), "{text}");
    assert!(
        text.contains("route=\"/api/sandbox\",status=\"401\"} 1"),
        "{text}"
    );
    // The sandboxes' gauge follows deletes and tier changes as they
    // happen (kept in memory, not counted from the store).
    let mode_of_o = api.get("/api/sandbox/o", &k).1["effectiveNetwork"]["mode"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.contains(&format!(
            "sandgate_sandboxes{{state=\"running\",mode=\"{mode_of_o}\"}} 1"
        )),
        "{text}"
    );
    assert_eq!(api.delete("/api/sandbox/m", &k).0, 204);
    let (s, _) = api.call(
        "PUT",
        &format!("/api/admin/organizations/{acme}/tier"),
        Some(ADMIN),
        Send::Json(json!({"tier": 1})),
    );
    assert_eq!(s, 200);
    let text = api.metrics();
    for line in [
        "sandgate_sandboxes{state=\"running\",mode=\"blocked\"} 0".to_string(),
        format!("sandgate_sandboxes{{state=\"running\",mode=\"{mode_of_o}\"}} 0"),
        "sandgate_sandboxes{state=\"running\",mode=\"restricted\"} 1".to_string(),
        "sandgate_sandboxes_deleted_total 1".to_string(),
    ] {
        assert!(text.contains(&line), "{line} in {text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn the_sandboxs_own_addresses_are_no_egress_and_a_network_test_of_them_agrees() {
    let api = Api::start();
    let (_, key) = api.organization("acme", 3);
    for (name, body) in [
        ("open", json!({"name": "open"})),
        ("none", json!({"name": "none", "networkBlockAll": true})),
    ] {
        api.sandbox(&key, body);
        // Its own addresses, as its interface has them.
        let out = api.exec(&key, name, "ip -o addr show dev eth0");
        let own: Vec<String> = out["stdout"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "inet" || w[0] == "inet6")
            .map(|w| w[1].split('/').next().unwrap().to_string())
            .filter(|a| !a.starts_with("fe80"))
            .collect();
        assert_eq!(own.len(), 2, "{out}");
        let targets: Vec<String> = ["127.0.0.1".to_string(), "[::1]".to_string()]
            .into_iter()
            .chain(own.iter().map(|a| {
                if a.contains(':') {
                    format!("[{a}]")
                } else {
                    a.clone()
                }
            }))
            .map(|d| format!("{d}:80"))
            .collect();
        for t in &targets {
            assert_eq!(
                api.explain(&key, name, t),
                (true, "not_egress".to_string()),
                "{name} {t}"
            );
        }
        // A probe of them reaches the sandbox's own stack: the rows agree.
        let (s, t) = api.post(
            &format!("/api/sandbox/{name}/network/test"),
            &key,
            json!({ "targets": targets }),
        );
        assert_eq!(s, 200, "{t}");
        assert_eq!(t["ok"], true, "{t}");
        for row in t["results"].as_array().unwrap() {
            assert_eq!(
                (&row["reason"], &row["observed"]),
                (&json!("not_egress"), &json!(true)),
                "{row}"
            );
        }
    }
}

#[test]
fn the_host_metadata_services_and_internal_networks_stay_closed_whatever_the_list() {
    use sandgate_lab::addrs::*;
    let api = Api::start();
    let (_, key) = api.organization("acme", 3);
    // A list as wide as a list can be (the internet, both families) and an
    // open sandbox: neither reaches the host, a metadata service or the
    // operator's internal network (lab stand-ins of each).
    api.sandbox(
        &key,
        json!({"name": "wide", "networkAllowList": "0.0.0.0/0,::/0"}),
    );
    api.sandbox(&key, json!({"name": "open"}));
    let host4 = HOST_LINK4.addr().to_string();
    let host6 = format!("[{}]", HOST_LINK6.addr());
    let meta6 = format!("[{METADATA_SERVER6}]");
    let cases = [
        (host4.as_str(), "always_denied:host"),
        (host6.as_str(), "always_denied:host"),
        ("203.0.113.254", "always_denied:metadata"),
        (meta6.as_str(), "always_denied:metadata"),
        ("203.0.113.200", "always_denied:203.0.113.192/26"),
    ];
    for id in ["wide", "open"] {
        for (dest, reason) in cases {
            assert_eq!(
                api.explain(&key, id, &format!("{dest}:7")),
                (false, reason.to_string()),
                "{id} {dest}"
            );
        }
        // What explain says is what the kernel does: every row of a
        // network test agrees, and none is reached.
        let targets: Vec<String> = cases.iter().map(|(d, _)| format!("{d}:7")).collect();
        let (s, t) = api.post(
            &format!("/api/sandbox/{id}/network/test"),
            &key,
            json!({ "targets": targets }),
        );
        assert_eq!(s, 200, "{t}");
        assert_eq!(t["ok"], true, "{t}");
        for row in t["results"].as_array().unwrap() {
            assert_eq!(row["observed"], false, "{row}");
        }
    }
    // A denied connection to the metadata stand-in is an event naming why.
    assert!(!api.echoes(&key, "wide", "203.0.113.254"));
    let seen = api.events(&key, "wide", true, |e| e["destination"] == "203.0.113.254");
    assert_eq!(seen.last().unwrap()["reason"], "always_denied:metadata");

    // The host's addresses are kept current: one added to the host is
    // always denied within moments, and no longer once it is gone.
    let extra: ipnet::IpNet = "192.0.2.77/32".parse().unwrap();
    let lo = api
        .lab()
        .host()
        .run(|| {
            let mut rt = sandgate_netns::Rtnl::open()?;
            let lo = rt.link_index("lo")?.unwrap();
            rt.add_address(lo, extra)?;
            Ok(lo)
        })
        .unwrap();
    let wait_for = |want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let got = api.explain(&key, "open", "192.0.2.77:7");
            if got.1 == want || std::time::Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    assert_eq!(
        wait_for("always_denied:host"),
        (false, "always_denied:host".into())
    );
    api.lab()
        .host()
        .run(|| sandgate_netns::Rtnl::open()?.delete_address(lo, extra))
        .unwrap();
    assert_eq!(wait_for("open"), (true, "open".into()));
}

#[test]
fn scoped_keys_do_what_their_scopes_allow_and_nothing_more() {
    let api = Api::start();
    let (org, full) = api.organization("acme", 3);
    api.sandbox(&full, json!({"name": "box"}));
    let key_with = |scopes: Value| -> String {
        let (s, v) = api.call(
            "POST",
            &format!("/api/admin/organizations/{org}/keys"),
            Some(ADMIN),
            Send::Json(json!({ "scopes": scopes })),
        );
        assert_eq!(s, 201, "{v}");
        v["key"].as_str().unwrap().to_string()
    };
    // A key for code inside a sandbox: it may read and run, not widen.
    let inside = key_with(json!(["sandboxes:read", "sandboxes:exec"]));
    assert_eq!(api.get("/api/sandbox/box", &inside).0, 200);
    assert_eq!(api.exec(&inside, "box", "echo ran")["stdout"], "ran\n");
    let refused = |status: u16, e: &Value, scope: &str| {
        assert_eq!(
            (
                status,
                e["error"]["code"].as_str(),
                e["error"]["scope"].as_str()
            ),
            (403, Some("insufficient_scope"), Some(scope)),
            "{e}"
        );
    };
    let (s, e) = api.post(
        "/api/sandbox/box/network-settings",
        &inside,
        json!({"networkAllowList": ""}),
    );
    refused(s, &e, "network:write");
    let (s, e) = api.post("/api/sandbox", &inside, json!({"name": "more"}));
    refused(s, &e, "sandboxes:write");
    let (s, e) = api.delete("/api/sandbox/box", &inside);
    refused(s, &e, "sandboxes:write");
    // Secrets: stored and removed with `secrets:write` only.
    let secret = json!({"name": "GH", "value": "v", "hosts": ["api.example.com"]});
    let (s, e) = api.post("/api/secrets", &inside, secret.clone());
    refused(s, &e, "secrets:write");
    assert_eq!(api.post("/api/secrets", &full, secret).0, 201);
    let (s, e) = api.delete("/api/secrets/GH", &inside);
    refused(s, &e, "secrets:write");
    assert_eq!(api.get("/api/secrets", &inside).0, 200);
    // A key that may make sandboxes but not set their network: it gets
    // the tier's default network, or blocks one off, and sets no list.
    let maker = key_with(json!(["sandboxes:write", "sandboxes:read"]));
    let (s, e) = api.post(
        "/api/sandbox",
        &maker,
        json!({"name": "listed", "networkAllowList": "192.0.2.10/32"}),
    );
    refused(s, &e, "network:write");
    let (s, v) = api.post("/api/sandbox", &maker, json!({"name": "plain"}));
    assert_eq!(s, 201, "{v}");
    // A secret held is a secret sent: a sandbox takes one with
    // `secrets:write` only.
    let (s, e) = api.post(
        "/api/sandbox",
        &maker,
        json!({"name": "holding", "secrets": ["GH"]}),
    );
    refused(s, &e, "secrets:write");
    let (s, v) = api.post(
        "/api/sandbox",
        &maker,
        json!({"name": "cut-off", "networkBlockAll": true}),
    );
    assert_eq!(s, 201, "{v}");
    let (s, e) = api.post(
        "/api/sandbox/cut-off/process/execute",
        &maker,
        json!({"command": "true"}),
    );
    refused(s, &e, "sandboxes:exec");
    // The key from before scopes (no field) has them all.
    assert_eq!(
        api.post(
            "/api/sandbox/box/network-settings",
            &full,
            json!({"networkBlockAll": true})
        )
        .0,
        200
    );
    // Scopes are checked when the key is made.
    for (body, status, code) in [
        (json!({"scopes": ["sandboxes:root"]}), 400, "invalid_scope"),
        (json!({"scopes": []}), 400, "invalid_scope"),
        (json!({"scope": ["sandboxes:read"]}), 422, "invalid_request"),
        (json!({"scopes": "sandboxes:read"}), 422, "invalid_request"),
    ] {
        let (s, e) = api.call(
            "POST",
            &format!("/api/admin/organizations/{org}/keys"),
            Some(ADMIN),
            Send::Json(body.clone()),
        );
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {e}"
        );
    }
    // Unknown query fields are refused too, never ignored.
    let (s, e) = api.get(
        "/api/sandbox/box/network/explain?dest=192.0.2.10&verbose=1",
        &full,
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{e}"
    );
}
