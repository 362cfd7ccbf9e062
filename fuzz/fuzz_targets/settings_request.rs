//! A create or update body as the API decodes it, then as the policy
//! validates and resolves it for every tier: never a panic; an accepted
//! create resolves to a policy a runner accepts, and its canonical text,
//! read back as a store would, is the same settings (HTTP rules included).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgate_policy::{PolicyConfig, SettingsRequest, StoredSettings};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let field = |k: &str| body.get(k).and_then(|v| v.as_str());
    let flag = |k: &str| body.get(k).and_then(|v| v.as_bool());
    // A budget: absent, null (back to the tier's), or a count.
    let count = |k: &str| match body.get(k) {
        None => None,
        Some(serde_json::Value::Null) => Some(None),
        Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some),
    };
    // Rules that are no rules in form are the API's 422; the rest go to
    // the policy.
    let http_rules: Option<Vec<sandgate_policy::HttpRuleRequest>> = match body.get("httpRules") {
        None => None,
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(r) => Some(r),
            Err(_) => return,
        },
    };
    let request = SettingsRequest {
        network_block_all: flag("networkBlockAll"),
        network_allow_list: field("networkAllowList"),
        domain_allow_list: field("domainAllowList"),
        network_deny_list: field("networkDenyList"),
        domain_deny_list: field("domainDenyList"),
        essential_services: flag("essentialServices"),
        egress_mbps: count("egressMbps"),
        transfer_quota_mib: count("transferQuotaMiB"),
        max_connections: count("maxConnections"),
        new_connections_per_second: count("newConnectionsPerSecond"),
        network_approvals: flag("networkApprovals"),
        approval_hold_seconds: body
            .get("approvalHoldSeconds")
            .and_then(|v| v.as_u64())
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        http_rules: http_rules.as_deref(),
    };
    let config = PolicyConfig::default();
    for tier in 0..=5 {
        if let Ok(settings) = config.settings_for_create(tier, &request) {
            let policy = config
                .resolve(tier, &settings)
                .expect("accepted settings resolve");
            config
                .check_effective(&policy)
                .expect("a resolved policy is one a runner accepts");
            let texts = [
                settings.network_allow_list.to_string(),
                settings.domain_allow_list.to_string(),
                settings.network_deny_list.to_string(),
                settings.domain_deny_list.to_string(),
                settings.http_rules.to_stored(),
            ];
            let stored = config
                .stored_settings(&StoredSettings {
                    network_block_all: settings.network_block_all,
                    network_allow_list: &texts[0],
                    domain_allow_list: &texts[1],
                    network_deny_list: &texts[2],
                    domain_deny_list: &texts[3],
                    essential_services: settings.essential_services,
                    egress_mbps: settings.egress_mbps,
                    transfer_quota_mib: settings.transfer_quota_mib,
                    max_connections: settings.max_connections,
                    new_connections_per_second: settings.new_connections_per_second,
                    network_approvals: settings.network_approvals,
                    approval_hold_seconds: settings.approval_hold_seconds,
                    http_rules: &texts[4],
                })
                .expect("canonical settings read back");
            assert_eq!(stored, settings);
            let _ = config.settings_for_update(tier, &settings, &request);
        }
    }
});
