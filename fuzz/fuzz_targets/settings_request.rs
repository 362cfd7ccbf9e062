//! A create or update body as the API decodes it, then as the policy
//! validates and resolves it for every tier: never a panic, and an accepted
//! create resolves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgate_policy::{PolicyConfig, SettingsRequest};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let field = |k: &str| body.get(k).and_then(|v| v.as_str());
    let request = SettingsRequest {
        network_block_all: body.get("networkBlockAll").and_then(|v| v.as_bool()),
        network_allow_list: field("networkAllowList"),
        domain_allow_list: field("domainAllowList"),
    };
    let config = PolicyConfig::default();
    for tier in 0..=5 {
        if let Ok(settings) = config.settings_for_create(tier, &request) {
            config
                .resolve(tier, &settings)
                .expect("accepted settings resolve");
            let _ = config.settings_for_update(tier, &settings, &request);
        }
    }
});
