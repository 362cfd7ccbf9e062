//! Runtime classes through the API (docs/REQUIREMENTS.md, "Runtime
//! classes"): the classes each tier may use, the default and what a
//! create may ask, a runner that cannot run a class never given one, and
//! a sandbox under gVisor made and run by the real runner in the lab.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, ADMIN};
use sandgate_contract::RuntimeClass;
use sandgate_testkit::double::RunnerDouble;
use serde_json::json;

/// Tier 3 may use both classes (runc by default), tier 1 runc alone.
fn classes(cfg: &mut sandgate_server::ServerConfig) {
    cfg.policy = sandgate_policy::PolicyConfig::from_toml(
        r#"[tiers.1]
           network = "restricted"
           [tiers.3]
           network = "configurable"
           runtime_classes = ["runc", "runsc"]"#,
    )
    .unwrap();
}

#[test]
fn a_create_gets_its_tiers_default_class_or_one_the_tier_allows() {
    let api = Api::with_double(classes);
    let (_, k3) = api.organization("acme", 3);
    let (_, k1) = api.organization("small", 1);
    let plain = api.sandbox(&k3, json!({"name": "plain"}));
    assert_eq!(plain["runtimeClass"], "runc", "{plain}");
    let gvisor = api.sandbox(&k3, json!({"name": "gvisor", "runtimeClass": "runsc"}));
    assert_eq!(gvisor["runtimeClass"], "runsc", "{gvisor}");
    let held = api.double().held(gvisor["id"].as_str().unwrap()).unwrap();
    assert_eq!(held.runtime_class, RuntimeClass::Runsc);
    // As stored: read back.
    let (_, again) = api.get("/api/sandbox/gvisor", &k3);
    assert_eq!(again["runtimeClass"], "runsc", "{again}");
    // A class the tier does not allow, or none that exists, is refused.
    let (s, e) = api.post(
        "/api/sandbox",
        &k1,
        json!({"name": "x", "runtimeClass": "runsc"}),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("runtime_class_not_allowed")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tier 1 does not allow runsc (it allows runc)"),
        "{e}"
    );
    let (s, e) = api.post(
        "/api/sandbox",
        &k3,
        json!({"name": "x", "runtimeClass": "gvisor"}),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (422, Some("invalid_request")),
        "{e}"
    );
    assert!(
        e["error"]["message"].as_str().unwrap().contains("runsc"),
        "{e}"
    );
    // A runner whose host cannot run the class says so; nothing is left.
    api.double().set_without(RuntimeClass::Runsc);
    let (s, e) = api.post(
        "/api/sandbox",
        &k3,
        json!({"name": "y", "runtimeClass": "runsc"}),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (503, Some("runtime_class_unavailable")),
        "{e}"
    );
    let (_, list) = api.get("/api/sandbox", &k3);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

#[test]
fn a_runner_older_than_runtime_classes_is_never_given_one_other_than_runc() {
    let api = Api::with_double(classes);
    let (_, k) = api.organization("acme", 3);
    // The only runner reads no class in a create: it would run runc
    // while the sandbox says runsc. Its capacity tells.
    api.double().set_predates_classes();
    let (s, e) = api.post(
        "/api/sandbox",
        &k,
        json!({"name": "g", "runtimeClass": "runsc"}),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (503, Some("runtime_class_unavailable")),
        "{e}"
    );
    let (_, list) = api.get("/api/sandbox", &k);
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    // runc it runs.
    let v = api.sandbox(&k, json!({"name": "plain"}));
    assert_eq!(v["runtimeClass"], "runc", "{v}");
}

#[test]
fn a_class_goes_only_to_runners_that_can_run_it() {
    let (api, doubles) = Api::with_fleet_and(
        &["a", "b"],
        |_, cfg| RunnerDouble::new(&["busybox"], cfg.policy.clone()),
        classes,
    );
    // a has more room, but no gVisor.
    doubles[0].set_without(RuntimeClass::Runsc);
    doubles[1].set_slots(10);
    let (_, k) = api.organization("acme", 3);
    for i in 0..3 {
        let v = api.sandbox(
            &k,
            json!({"name": format!("g{i}"), "runtimeClass": "runsc"}),
        );
        assert_eq!(v["runner"], "b", "{v}");
    }
    let v = api.sandbox(&k, json!({"name": "plain"}));
    assert_eq!(v["runner"], "a", "{v}");
    // The operator sees what each runner can run.
    let (_, runners) = api.get("/api/admin/runners", ADMIN);
    assert_eq!(runners[0]["runtimeClasses"], json!(["runc"]), "{runners}");
    assert_eq!(
        runners[1]["runtimeClasses"],
        json!(["runc", "runsc"]),
        "{runners}"
    );
    // With no runner that can, the create says so.
    doubles[1].set_without(RuntimeClass::Runsc);
    let (s, e) = api.post(
        "/api/sandbox",
        &k,
        json!({"name": "none", "runtimeClass": "runsc"}),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (503, Some("runtime_class_unavailable")),
        "{e}"
    );
}

#[test]
fn a_sandbox_under_gvisor_runs_in_the_lab_and_reaches_only_what_its_policy_allows() {
    let api = Api::start_with(|cfg| {
        let mut repr = sandgate_lab::lab_policy_repr(None);
        repr.runtime_classes = Some(vec![RuntimeClass::Runsc, RuntimeClass::Runc]);
        cfg.policy = sandgate_policy::PolicyConfig::from_repr(repr).unwrap();
    });
    let (_, k) = api.organization("acme", 3);
    let v = api.sandbox(
        &k,
        json!({"name": "g", "networkAllowList": sandgate_lab::addrs::SERVER4.to_string() + "/32"}),
    );
    assert_eq!(v["runtimeClass"], "runsc", "{v}");
    // gVisor's kernel answers, not the host's.
    let dmesg = api.exec(&k, "g", "dmesg | head -1");
    assert!(
        dmesg["stdout"].as_str().unwrap().contains("gVisor"),
        "{dmesg}"
    );
    assert!(api.echoes(&k, "g", &sandgate_lab::addrs::SERVER4.to_string()));
    assert!(!api.echoes(&k, "g", &sandgate_lab::addrs::SERVER4_B.to_string()));
}
