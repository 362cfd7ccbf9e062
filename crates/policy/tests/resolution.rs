//! Every row of the resolution order of REQUIREMENTS.md section 1, the tier refusal,
//! update semantics and the operator's tier table.

#![allow(clippy::unwrap_used)]

use sandgate_policy::{
    ErrorCode, Mode, NetworkSettings, PolicyConfig, SettingsRequest, TierNetwork,
};

const LIST: &str = "192.0.2.0/24";
const DOMAINS: &str = "*.example.com";

fn request(
    block: Option<bool>,
    nal: Option<&'static str>,
    dal: Option<&'static str>,
) -> SettingsRequest<'static> {
    SettingsRequest {
        network_block_all: block,
        network_allow_list: nal,
        domain_allow_list: dal,
        ..Default::default()
    }
}

fn create(
    tier: u8,
    r: SettingsRequest<'_>,
) -> Result<sandgate_policy::EffectivePolicy, sandgate_policy::PolicyError> {
    let config = PolicyConfig::default();
    let settings = config.settings_for_create(tier, &r)?;
    config.resolve(tier, &settings)
}

#[test]
fn block_all_wins_for_every_tier_and_over_lists() {
    for tier in 1..=4 {
        let p = create(tier, request(Some(true), None, None)).unwrap();
        assert_eq!(p.mode, Mode::Blocked, "tier {tier}");
        assert!(!p.essential_services);
        assert!(p.network_allow_list.is_empty() && p.domain_allow_list.is_empty());
    }
    for tier in 3..=4 {
        let p = create(tier, request(Some(true), Some(LIST), Some(DOMAINS))).unwrap();
        assert_eq!(p.mode, Mode::Blocked);
        assert!(
            p.network_allow_list.is_empty(),
            "a blocked policy carries no active list"
        );
        let inactive: Vec<_> = p
            .inactive
            .iter()
            .map(|i| (i.setting, i.reason, i.value.as_str()))
            .collect();
        assert_eq!(
            inactive,
            vec![
                ("networkAllowList", "blocked", LIST),
                ("domainAllowList", "blocked", DOMAINS)
            ]
        );
    }
}

#[test]
fn tiers_one_and_two_are_restricted_and_refuse_lists_with_403() {
    for tier in 1..=2 {
        let p = create(tier, request(None, None, None)).unwrap();
        assert_eq!(p.mode, Mode::Restricted);
        assert!(p.essential_services);
        assert!(p.inactive.is_empty());
        // An explicit empty list is no list, and is not refused.
        assert_eq!(
            create(tier, request(Some(false), Some(""), Some(" ")))
                .unwrap()
                .mode,
            Mode::Restricted
        );
        for (nal, dal, field) in [
            (Some(LIST), None, "networkAllowList"),
            (None, Some(DOMAINS), "domainAllowList"),
            (
                Some(LIST),
                Some(DOMAINS),
                "networkAllowList and domainAllowList",
            ),
        ] {
            let err = create(tier, request(None, nal, dal)).unwrap_err();
            assert_eq!(err.code, ErrorCode::NetworkRestrictedByTier);
            assert_eq!(err.http_status(), 403);
            assert!(err.message.contains(field), "{}", err.message);
            assert!(
                err.message.contains(&format!("tier {tier}")),
                "{}",
                err.message
            );
            assert!(err.message.contains("tier 3 lifts"), "{}", err.message);
        }
        // Block-all with a list: the list could never apply; refused too.
        let err = create(tier, request(Some(true), Some(LIST), None)).unwrap_err();
        assert_eq!(err.code, ErrorCode::NetworkRestrictedByTier);
    }
}

#[test]
fn the_tier_refusal_comes_before_syntax_errors() {
    let err = create(1, request(None, Some("not-an-address"), None)).unwrap_err();
    assert_eq!(err.code, ErrorCode::NetworkRestrictedByTier);
}

#[test]
fn tiers_three_and_four_with_a_list_are_allowlist() {
    for tier in 3..=4 {
        for (nal, dal) in [
            (Some(LIST), None),
            (None, Some(DOMAINS)),
            (Some(LIST), Some(DOMAINS)),
        ] {
            let p = create(tier, request(Some(false), nal, dal)).unwrap();
            assert_eq!(p.mode, Mode::Allowlist);
            assert!(
                p.essential_services,
                "essential services stay reachable with an allow list"
            );
            assert_eq!(p.network_allow_list.to_string(), nal.unwrap_or(""));
            assert_eq!(p.domain_allow_list.to_string(), dal.unwrap_or(""));
            assert!(p.inactive.is_empty());
        }
    }
}

#[test]
fn tiers_three_and_four_otherwise_are_open() {
    for tier in 3..=4 {
        for r in [
            request(None, None, None),
            request(Some(false), Some(""), Some("")),
        ] {
            let p = create(tier, r).unwrap();
            assert_eq!(p.mode, Mode::Open);
            assert!(p.essential_services);
        }
    }
}

#[test]
fn a_tier_change_keeps_stored_lists_inactive_with_the_reason() {
    let config = PolicyConfig::default();
    let stored = config
        .settings_for_create(3, &request(None, Some(LIST), Some(DOMAINS)))
        .unwrap();
    assert_eq!(config.resolve(3, &stored).unwrap().mode, Mode::Allowlist);
    let downgraded = config.resolve(1, &stored).unwrap();
    assert_eq!(downgraded.mode, Mode::Restricted);
    assert!(downgraded.network_allow_list.is_empty());
    let reasons: Vec<_> = downgraded
        .inactive
        .iter()
        .map(|i| (i.setting, i.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("networkAllowList", "restricted_by_tier"),
            ("domainAllowList", "restricted_by_tier")
        ]
    );
    // Back up: the lists take effect again.
    assert_eq!(config.resolve(4, &stored).unwrap().mode, Mode::Allowlist);
}

#[test]
fn an_update_replaces_what_it_sends_and_keeps_the_rest() {
    let config = PolicyConfig::default();
    let stored = config
        .settings_for_create(3, &request(None, Some(LIST), Some(DOMAINS)))
        .unwrap();
    let updated = config
        .settings_for_update(3, &stored, &request(None, Some("198.51.100.0/24"), None))
        .unwrap();
    assert_eq!(updated.network_allow_list.to_string(), "198.51.100.0/24");
    assert_eq!(updated.domain_allow_list.to_string(), DOMAINS);
    assert!(!updated.network_block_all);
    let blocked = config
        .settings_for_update(3, &updated, &request(Some(true), None, None))
        .unwrap();
    assert!(blocked.network_block_all);
    assert_eq!(blocked.network_allow_list, updated.network_allow_list);
    let cleared = config
        .settings_for_update(3, &blocked, &request(Some(false), Some(""), Some("")))
        .unwrap();
    assert_eq!(cleared, NetworkSettings::default());
    assert_eq!(config.resolve(3, &cleared).unwrap().mode, Mode::Open);
}

#[test]
fn an_update_that_sets_nothing_is_refused_and_a_bad_one_changes_nothing() {
    let config = PolicyConfig::default();
    let stored = NetworkSettings::default();
    let err = config
        .settings_for_update(3, &stored, &SettingsRequest::default())
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidNetworkSettings);
    assert_eq!(err.http_status(), 400);
    // A tier-1 organization may still block or unblock.
    let r = config
        .settings_for_update(1, &stored, &request(Some(true), None, None))
        .unwrap();
    assert_eq!(config.resolve(1, &r).unwrap().mode, Mode::Blocked);
}

#[test]
fn an_unknown_tier_is_refused() {
    let err = create(9, request(None, None, None)).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidTier);
    assert!(
        err.message.contains("tier 9") && err.message.contains("1, 2, 3, 4"),
        "{}",
        err.message
    );
}

#[test]
fn the_operator_can_change_the_tier_table() {
    let config = PolicyConfig::from_toml(
        r#"
        network_allow_list_max = 2
        [tiers."1"]
        network = "restricted"
        [tiers."2"]
        network = "configurable"
        network_allow_list_max = 3
        [tiers."7"]
        network = "configurable"
        "#,
    )
    .unwrap();
    assert_eq!(config.tier(2).unwrap().network, TierNetwork::Configurable);
    assert_eq!(config.tier(2).unwrap().network_allow_list_max, 3);
    assert_eq!(config.tier(7).unwrap().network_allow_list_max, 2);
    assert_eq!(config.tier(3).unwrap_err().code, ErrorCode::InvalidTier);
    let three = request(None, Some("192.0.2.1,192.0.2.2,192.0.2.3"), None);
    assert_eq!(
        config
            .resolve(2, &config.settings_for_create(2, &three).unwrap())
            .unwrap()
            .mode,
        Mode::Allowlist
    );
    assert_eq!(
        config.settings_for_create(7, &three).unwrap_err().code,
        ErrorCode::InvalidNetworkAllowList
    );
    let err = config.settings_for_create(1, &three).unwrap_err();
    assert!(err.message.contains("tier 2 lifts"), "{}", err.message);
}

#[test]
fn bad_operator_configuration_is_refused_with_a_clear_message() {
    for (text, needle) in [
        (
            r#"[tiers."x"]
            network = "restricted""#,
            "\"x\"",
        ),
        (
            r#"[tiers."01"]
            network = "restricted""#,
            "\"01\"",
        ),
        (
            r#"[tiers."1"]
            network = "wide-open""#,
            "wide-open",
        ),
        ("tiers = {}", "empty"),
        (
            "network_allow_list_maximum = 3",
            "network_allow_list_maximum",
        ),
        (
            r#"extra_always_denied = [{ cidr = "198.18.0.1/15", label = "sandboxes" }]"#,
            "198.18.0.0/15",
        ),
        (
            r#"extra_always_denied = [{ cidr = "sandboxes", label = "x" }]"#,
            "sandboxes",
        ),
    ] {
        let err = PolicyConfig::from_toml(text).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidConfig, "{text}");
        assert!(err.message.contains(needle), "{text}: {}", err.message);
    }
}

#[test]
fn an_effective_policy_crosses_to_a_runner_whole_but_for_what_only_the_api_shows() {
    let cases = [
        (
            4,
            request(
                None,
                Some("192.0.2.0/24,2001:db8::/48"),
                Some("*.example.com,example.org"),
            ),
        ),
        (3, request(Some(true), Some(LIST), Some(DOMAINS))),
        (1, request(None, None, None)),
        (2, request(None, None, None)),
    ];
    for (tier, r) in cases {
        let p = create(tier, r).unwrap();
        let text = serde_json::to_string(&p).unwrap();
        let back: sandgate_policy::EffectivePolicy = serde_json::from_str(&text).unwrap();
        let mut expected = p.clone();
        // Which stored settings are inactive, and why, is the API's to say.
        expected.inactive.clear();
        assert_eq!(back, expected, "{text}");
    }
    // A pattern that is no name is refused, not read as something else.
    let mut v =
        serde_json::to_value(create(4, request(None, None, Some(DOMAINS))).unwrap()).unwrap();
    v["domainAllowList"] = serde_json::json!(["exa mple.com"]);
    assert!(serde_json::from_value::<sandgate_policy::EffectivePolicy>(v).is_err());
}

#[test]
fn a_runner_takes_only_policies_its_configuration_resolves() {
    let config = PolicyConfig::default();
    let mut resolved = Vec::new();
    for tier in 1..=4 {
        for r in [
            request(None, None, None),
            request(Some(true), None, None),
            request(None, Some(LIST), None),
            request(None, None, Some(DOMAINS)),
        ] {
            if let Ok(p) = create(tier, r) {
                assert_eq!(config.check_effective(&p), Ok(()), "{p:?}");
                resolved.push(p);
            }
        }
    }
    let open = create(4, request(None, None, None)).unwrap();
    let listed = create(4, request(None, Some(LIST), None)).unwrap();
    let restricted = create(1, request(None, None, None)).unwrap();
    assert_eq!(restricted.mode, Mode::Restricted);
    let mut wider = open.clone();
    wider.fair_shares.connections *= 10;
    let mut open_on_restricted = restricted.clone();
    open_on_restricted.mode = Mode::Open;
    let mut lists_in_open = listed.clone();
    lists_in_open.mode = Mode::Open;
    let mut no_tier = open.clone();
    no_tier.tier = 99;
    let mut blocked_with_essentials = create(4, request(Some(true), None, None)).unwrap();
    blocked_with_essentials.essential_services = true;
    for (what, p) in [
        ("wider fair shares", wider),
        ("open on a restricted tier", open_on_restricted),
        ("lists active in open mode", lists_in_open),
        ("a tier not configured", no_tier),
        ("essential services while blocked", blocked_with_essentials),
    ] {
        assert!(config.check_effective(&p).is_err(), "{what}");
    }
    // Host bits on the wire are refused, not read as the wider network.
    let mut v = serde_json::to_value(&listed).unwrap();
    v["networkAllowList"] = serde_json::json!(["192.0.2.5/0"]);
    assert!(serde_json::from_value::<sandgate_policy::EffectivePolicy>(v).is_err());
}

#[test]
fn a_tier_may_keep_name_admitted_addresses_to_the_name_checked_ports() {
    let config = PolicyConfig::from_toml(
        r#"name_admitted_other_ports = "deny"
           [tiers.3]
           network = "configurable"
           [tiers.4]
           network = "configurable"
           name_admitted_other_ports = "allow""#,
    )
    .unwrap();
    let settings = config
        .settings_for_create(3, &request(None, None, Some(DOMAINS)))
        .unwrap();
    let three = config.resolve(3, &settings).unwrap();
    let four = config.resolve(4, &settings).unwrap();
    assert!(three.name_ports_only && !four.name_ports_only);
    // A runner refuses a policy wider than its tier's rule, and takes a
    // narrower one.
    let mut forged = three.clone();
    forged.name_ports_only = false;
    assert!(config.check_effective(&forged).is_err());
    let mut narrower = four.clone();
    narrower.name_ports_only = true;
    assert!(config.check_effective(&narrower).is_ok());
    assert!(PolicyConfig::from_toml(r#"name_admitted_other_ports = "maybe""#).is_err());
}

#[test]
fn a_budget_is_asked_within_the_tier_and_a_lower_tier_bounds_what_was_asked() {
    let config = PolicyConfig::from_toml(
        r#"budgets = { egress_mbps = 50 }
           [tiers.1]
           network = "restricted"
           [tiers.3]
           network = "configurable"
           budgets = { max_egress_mbps = 100 }
           [tiers.4]
           network = "configurable"
           budgets = { max_egress_mbps = 1000 }"#,
    )
    .unwrap();
    let asked = |mbps: Option<Option<u32>>| SettingsRequest {
        egress_mbps: mbps,
        ..Default::default()
    };
    // The default, or what is asked; any tier may ask for less.
    let on = |tier: u8, r: SettingsRequest<'_>| {
        let s = config.settings_for_create(tier, &r)?;
        config.resolve(tier, &s)
    };
    assert_eq!(on(3, asked(None)).unwrap().budgets.egress_mbps, Some(50));
    assert_eq!(
        on(1, asked(Some(Some(5)))).unwrap().budgets.egress_mbps,
        Some(5)
    );
    assert_eq!(
        on(1, asked(Some(Some(500)))).unwrap().budgets.egress_mbps,
        Some(500)
    );
    let err = on(3, asked(Some(Some(101)))).unwrap_err();
    assert_eq!(err.code, ErrorCode::BudgetExceedsTier);
    assert_eq!(
        on(3, asked(Some(Some(0)))).unwrap_err().code,
        ErrorCode::InvalidBudget
    );
    // Asked on tier 4, then moved to tier 3: the lower maximum is in force
    // and the stored value is reported inactive.
    let settings = config
        .settings_for_create(4, &asked(Some(Some(800))))
        .unwrap();
    let moved = config.resolve(3, &settings).unwrap();
    assert_eq!(moved.budgets.egress_mbps, Some(100));
    assert!(moved
        .inactive
        .iter()
        .any(|i| i.setting == "egressMbps" && i.reason == "tier_maximum"));
    // An update of another field keeps it, and passes; null goes back to
    // the default.
    let kept = config
        .settings_for_update(3, &settings, &request(None, Some(LIST), None))
        .unwrap();
    assert_eq!(kept.egress_mbps, Some(800));
    let back = config
        .settings_for_update(3, &kept, &asked(Some(None)))
        .unwrap();
    assert_eq!(
        config.resolve(3, &back).unwrap().budgets.egress_mbps,
        Some(50)
    );
    // A runner refuses a policy above its tier's maximum, or none where
    // the tier has one.
    let mut forged = moved.clone();
    forged.budgets.egress_mbps = Some(101);
    assert!(config.check_effective(&forged).is_err());
    forged.budgets.egress_mbps = None;
    assert!(config.check_effective(&forged).is_err());
    assert!(config.check_effective(&moved).is_ok());
}

#[test]
fn a_transfer_quota_is_asked_within_the_tier_and_a_runner_refuses_one_forged() {
    let config = PolicyConfig::from_toml(
        r#"budgets = { transfer_quota_mib = 1024, transfer_period_seconds = 3600 }
           [tiers.3]
           network = "configurable"
           budgets = { max_transfer_quota_mib = 2048 }
           [tiers.4]
           network = "configurable"
           budgets = { max_transfer_quota_mib = 8192 }"#,
    )
    .unwrap();
    let asked = |mib: Option<Option<u32>>| SettingsRequest {
        transfer_quota_mib: mib,
        ..Default::default()
    };
    let on = |tier: u8, r: SettingsRequest<'_>| {
        let s = config.settings_for_create(tier, &r)?;
        config.resolve(tier, &s)
    };
    let default = on(3, asked(None)).unwrap();
    assert_eq!(
        (
            default.budgets.transfer_quota_mib,
            default.budgets.transfer_period_seconds
        ),
        (Some(1024), Some(3600))
    );
    assert_eq!(
        on(3, asked(Some(Some(10))))
            .unwrap()
            .budgets
            .transfer_quota_mib,
        Some(10)
    );
    let err = on(3, asked(Some(Some(2049)))).unwrap_err();
    assert_eq!(
        (err.code, err.field),
        (ErrorCode::BudgetExceedsTier, Some("transferQuotaMiB"))
    );
    // Asked on tier 4, moved to tier 3: the lower maximum, the stored
    // value inactive.
    let settings = config
        .settings_for_create(4, &asked(Some(Some(4096))))
        .unwrap();
    let moved = config.resolve(3, &settings).unwrap();
    assert_eq!(moved.budgets.transfer_quota_mib, Some(2048));
    assert!(moved
        .inactive
        .iter()
        .any(|i| i.setting == "transferQuotaMiB" && i.reason == "tier_maximum"));
    // A runner refuses a quota above the tier's, none where the tier has a
    // maximum, and a period that is not the tier's.
    assert!(config.check_effective(&moved).is_ok());
    for forge in [
        |p: &mut sandgate_policy::EffectivePolicy| p.budgets.transfer_quota_mib = Some(2049),
        |p: &mut sandgate_policy::EffectivePolicy| p.budgets.transfer_quota_mib = None,
        |p: &mut sandgate_policy::EffectivePolicy| p.budgets.transfer_period_seconds = Some(60),
    ] {
        let mut forged = moved.clone();
        forge(&mut forged);
        assert!(
            config.check_effective(&forged).is_err(),
            "{:?}",
            forged.budgets
        );
    }
}

#[test]
fn connection_budgets_narrow_the_tiers_fair_shares_and_never_widen_them() {
    let config = PolicyConfig::from_toml(
        r#"[tiers.1]
           network = "restricted"
           fair_shares = { connections = 64, new_connections_per_second = 50 }
           [tiers.3]
           network = "configurable"
           fair_shares = { connections = 512, new_connections_per_second = 100 }"#,
    )
    .unwrap();
    let asked = |c: Option<Option<u32>>, r: Option<Option<u32>>| SettingsRequest {
        max_connections: c,
        new_connections_per_second: r,
        ..Default::default()
    };
    let on = |tier: u8, r: SettingsRequest<'_>| {
        let s = config.settings_for_create(tier, &r)?;
        config.resolve(tier, &s)
    };
    // Nothing asked: the tier's; less: that, on any tier (it only narrows).
    let shares = on(3, asked(None, None)).unwrap().fair_shares;
    assert_eq!(
        (shares.connections, shares.new_connections_per_second),
        (512, 100)
    );
    let narrow = on(1, asked(Some(Some(10)), Some(Some(5)))).unwrap();
    assert_eq!(
        (
            narrow.fair_shares.connections,
            narrow.fair_shares.new_connections_per_second
        ),
        (10, 5)
    );
    // The rest of the shares stay the tier's.
    assert_eq!(
        narrow.fair_shares.dns_queries_per_second,
        on(1, asked(None, None))
            .unwrap()
            .fair_shares
            .dns_queries_per_second
    );
    // More than the tier's, or 0, is refused naming the field.
    for (r, code, field) in [
        (
            asked(Some(Some(65)), None),
            ErrorCode::BudgetExceedsTier,
            "maxConnections",
        ),
        (
            asked(None, Some(Some(51))),
            ErrorCode::BudgetExceedsTier,
            "newConnectionsPerSecond",
        ),
        (
            asked(Some(Some(0)), None),
            ErrorCode::InvalidBudget,
            "maxConnections",
        ),
    ] {
        let err = on(1, r).unwrap_err();
        assert_eq!((err.code, err.field), (code, Some(field)), "{err:?}");
    }
    // Asked on tier 3, moved to tier 1: the tier's share is in force and
    // the stored value inactive; null goes back to the tier's.
    let settings = config
        .settings_for_create(3, &asked(Some(Some(300)), None))
        .unwrap();
    let moved = config.resolve(1, &settings).unwrap();
    assert_eq!(moved.fair_shares.connections, 64);
    assert!(moved
        .inactive
        .iter()
        .any(|i| i.setting == "maxConnections" && i.reason == "tier_maximum"));
    let back = config
        .settings_for_update(3, &settings, &asked(Some(None), None))
        .unwrap();
    assert_eq!(
        config.resolve(3, &back).unwrap().fair_shares.connections,
        512
    );
    // A runner takes narrower shares, and refuses wider ones or any other
    // share changed.
    assert!(config.check_effective(&narrow).is_ok());
    let mut forged = narrow.clone();
    forged.fair_shares.connections = 65;
    assert!(config.check_effective(&forged).is_err());
    let mut forged = narrow.clone();
    forged.fair_shares.dns_in_flight += 1;
    assert!(config.check_effective(&forged).is_err());
    let mut forged = narrow;
    forged.fair_shares.new_connections_per_second = 0;
    assert!(config.check_effective(&forged).is_err());
}

#[test]
fn approvals_are_in_force_with_an_allow_list_only_and_refused_on_a_restricted_tier() {
    let asked =
        |block: Option<bool>, dal: Option<&'static str>, hold: Option<u32>| SettingsRequest {
            network_block_all: block,
            domain_allow_list: dal,
            network_approvals: Some(true),
            approval_hold_seconds: hold,
            ..Default::default()
        };
    // In allowlist mode: in force, with its hold.
    let p = create(3, asked(None, Some(DOMAINS), Some(30))).unwrap();
    assert_eq!(p.approvals.as_ref().map(|a| a.hold_seconds), Some(30));
    assert!(p.inactive.is_empty(), "{:?}", p.inactive);
    PolicyConfig::default().check_effective(&p).unwrap();
    // Open and blocked: stored, inactive, and why.
    for (block, dal, reason) in [(None, None, "open"), (Some(true), Some(DOMAINS), "blocked")] {
        let p = create(4, asked(block, dal, None)).unwrap();
        assert_eq!(p.approvals, None);
        let inactive: Vec<_> = p
            .inactive
            .iter()
            .filter(|i| i.setting == "networkApprovals")
            .collect();
        assert_eq!(inactive.len(), 1, "{:?}", p.inactive);
        assert_eq!(inactive[0].reason, reason);
    }
    // A restricted tier may not ask; turning them off is no request.
    for tier in [1, 2] {
        let e = create(tier, asked(None, None, None)).unwrap_err();
        assert_eq!(e.code, ErrorCode::NetworkRestrictedByTier, "tier {tier}");
        assert_eq!(e.field, Some("networkApprovals"));
        let off = SettingsRequest {
            network_approvals: Some(false),
            ..Default::default()
        };
        assert_eq!(create(tier, off).unwrap().approvals, None);
    }
    // A hold is 0 to 60 seconds.
    let e = create(3, asked(None, Some(DOMAINS), Some(61))).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidApprovalHold);
    // A runner refuses approvals outside allowlist mode, or a longer hold.
    let mut p = create(3, asked(None, Some(DOMAINS), Some(5))).unwrap();
    p.approvals = Some(sandgate_policy::Approvals {
        hold_seconds: 61,
        declined: Vec::new(),
    });
    assert!(PolicyConfig::default().check_effective(&p).is_err());
    let mut open = create(3, request(None, None, None)).unwrap();
    open.approvals = Some(sandgate_policy::Approvals {
        hold_seconds: 0,
        declined: Vec::new(),
    });
    assert!(PolicyConfig::default().check_effective(&open).is_err());
    // Denied names ride with approvals, and are names.
    let p = create(3, asked(None, Some(DOMAINS), Some(5)))
        .unwrap()
        .with_declined(vec!["_dmarc.example.org".into()]);
    assert!(p.approvals.as_ref().unwrap().declined("_dmarc.example.org"));
    PolicyConfig::default().check_effective(&p).unwrap();
    let odd = p.clone().with_declined(vec!["bad name".into()]);
    assert!(PolicyConfig::default().check_effective(&odd).is_err());
    let too_many = p.with_declined((0..=100).map(|i| format!("n{i}.example.org")).collect());
    assert!(PolicyConfig::default().check_effective(&too_many).is_err());
    // Without approvals in force, there is nothing to carry them.
    let open = create(3, request(None, None, None)).unwrap();
    assert_eq!(
        open.with_declined(vec!["x.example.org".into()]).approvals,
        None
    );
}

#[test]
fn runtime_classes_are_listed_for_every_tier_or_one_and_the_first_is_the_default() {
    use sandgate_policy::RuntimeClass::{Runc, Runsc};
    let config = PolicyConfig::from_toml(
        r#"runtime_classes = ["runc", "runsc"]
           [tiers.1]
           network = "restricted"
           runtime_classes = ["runsc"]
           [tiers.3]
           network = "configurable""#,
    )
    .unwrap();
    let classes = |tier| config.tier(tier).unwrap().runtime_classes;
    assert_eq!(classes(1).resolve(1, None).unwrap(), Runsc);
    let refused = classes(1).resolve(1, Some(Runc)).unwrap_err();
    assert_eq!(refused.code, ErrorCode::RuntimeClassNotAllowed);
    assert_eq!(classes(3).resolve(3, None).unwrap(), Runc);
    assert_eq!(classes(3).resolve(3, Some(Runsc)).unwrap(), Runsc);
    // By default, runc alone.
    let plain = PolicyConfig::default();
    assert_eq!(plain.tier(4).unwrap().runtime_classes.allowed(), [Runc]);
    // A class that does not exist, or none, is the operator's error.
    for bad in [r#"runtime_classes = ["gvisor"]"#, "runtime_classes = []"] {
        let e = PolicyConfig::from_toml(bad).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig, "{bad}");
    }
}
