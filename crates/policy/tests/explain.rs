//! `explain`: the verdict and reason code for addresses and names in every
//! mode.

#![allow(clippy::unwrap_used)]

use sandgate_policy::{
    Catalog, CompiledPolicy, Destination, ErrorCode, PolicyConfig, SettingsRequest, Target,
};

struct Fixture {
    config: PolicyConfig,
    catalog: Catalog,
}

impl Fixture {
    fn new() -> Self {
        // The default sandbox subnets, an operator's internal network and
        // metadata service, plus the host's public addresses as a running
        // host adds them.
        let config = PolicyConfig::from_toml(
            r#"extra_always_denied = [{ cidr = "203.0.113.64/26", label = "management network" }]
               metadata_services = ["192.0.2.254", "2001:db8:face::/64"]"#,
        )
        .unwrap()
        .with_host_addresses([
            "203.0.113.7".parse().unwrap(),
            "2001:db8:ffff::1".parse().unwrap(),
        ]);
        Fixture {
            config,
            catalog: Catalog::builtin(),
        }
    }

    /// (allowed, reason code) for `dest` under a sandbox of `tier` with
    /// these settings.
    fn explain(&self, tier: u8, request: SettingsRequest<'_>, dest: &str) -> (bool, String) {
        let settings = self.config.settings_for_create(tier, &request).unwrap();
        let policy = self.config.resolve(tier, &settings).unwrap();
        let compiled = CompiledPolicy::new(policy, &self.catalog, &self.config);
        let verdict = compiled.explain(&dest.parse().unwrap());
        assert!(!verdict.rule.is_empty());
        (verdict.allowed, verdict.reason.code())
    }

    fn essential(&self, category: &str) -> String {
        self.catalog.category_by_id(category).unwrap().hosts[0]
            .base()
            .to_string()
    }
}

fn open() -> SettingsRequest<'static> {
    SettingsRequest::default()
}

fn allow(nal: &'static str, dal: &'static str) -> SettingsRequest<'static> {
    SettingsRequest {
        network_allow_list: Some(nal),
        domain_allow_list: Some(dal),
        ..Default::default()
    }
}

fn blocked() -> SettingsRequest<'static> {
    SettingsRequest {
        network_block_all: Some(true),
        ..Default::default()
    }
}

fn is(allowed: bool, code: &str) -> (bool, String) {
    (allowed, code.to_string())
}

#[test]
fn always_denied_wins_in_every_mode_even_over_a_wide_list() {
    let f = Fixture::new();
    let wide = allow("0.0.0.0/0,::/0", "");
    for (req, tier) in [(open(), 3), (wide, 3), (open(), 1)] {
        assert_eq!(
            f.explain(tier, req, "169.254.169.254:80"),
            is(false, "always_denied:metadata")
        );
        for meta in [
            "[fd00:ec2::254]:80",
            "168.63.129.16:80",
            "100.100.100.200:80",
        ] {
            assert_eq!(
                f.explain(tier, req, meta),
                is(false, "always_denied:metadata"),
                "{meta}"
            );
        }
        assert_eq!(
            f.explain(tier, req, "169.254.1.1:80"),
            is(false, "always_denied:169.254.0.0/16")
        );
        assert_eq!(
            f.explain(tier, req, "0.1.2.3"),
            is(false, "always_denied:0.0.0.0/8")
        );
        assert_eq!(
            f.explain(tier, req, "224.0.0.251"),
            is(false, "always_denied:224.0.0.0/4")
        );
        assert_eq!(
            f.explain(tier, req, "255.255.255.255"),
            is(false, "always_denied:255.255.255.255/32")
        );
        assert_eq!(
            f.explain(tier, req, "[fe80::1]:22"),
            is(false, "always_denied:fe80::/10")
        );
        assert_eq!(
            f.explain(tier, req, "ff02::1"),
            is(false, "always_denied:ff00::/8")
        );
        // IPv6 spellings of IPv4 destinations: the mapped one is the
        // IPv4 address (a socket connects to it over IPv4); the others
        // are IPv6 addresses a translator would carry, always denied.
        assert_eq!(
            f.explain(tier, req, "::ffff:169.254.169.254"),
            is(false, "always_denied:metadata")
        );
        assert_eq!(
            f.explain(tier, req, "[::ffff:169.254.1.1]:80"),
            is(false, "always_denied:169.254.0.0/16")
        );
        assert_eq!(
            f.explain(tier, req, "::a9fe:a9fe"),
            is(false, "always_denied:::/96")
        );
        assert_eq!(
            f.explain(tier, req, "64:ff9b::a00:1"),
            is(false, "always_denied:64:ff9b::/96")
        );
        // The host, as the running host adds it.
        for host in [
            "203.0.113.7:443",
            "[2001:db8:ffff::1]:22",
            "[::ffff:203.0.113.7]:80",
        ] {
            assert_eq!(
                f.explain(tier, req, host),
                is(false, "always_denied:host"),
                "{host}"
            );
        }
        // The operator's metadata services and internal networks.
        for meta in ["192.0.2.254:80", "[2001:db8:face::9]:80"] {
            assert_eq!(
                f.explain(tier, req, meta),
                is(false, "always_denied:metadata"),
                "{meta}"
            );
        }
        assert_eq!(
            f.explain(tier, req, "203.0.113.70:443"),
            is(false, "always_denied:203.0.113.64/26")
        );
        // Other sandboxes: the default sandbox subnets.
        assert_eq!(
            f.explain(tier, req, "198.18.0.9:22"),
            is(false, "always_denied:198.18.0.0/15")
        );
        assert_eq!(
            f.explain(tier, req, "2001:db8:5a00::9"),
            is(false, "always_denied:2001:db8:5a00::/48")
        );
    }
}

#[test]
fn open_mode_allows_public_and_denies_private() {
    let f = Fixture::new();
    assert_eq!(f.explain(4, open(), "192.0.2.10:443"), is(true, "open"));
    assert_eq!(f.explain(4, open(), "[2001:db8::10]:443"), is(true, "open"));
    assert_eq!(
        f.explain(4, open(), "www.example.com:443"),
        is(true, "open")
    );
    for private in [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "fd00::1",
    ] {
        assert_eq!(
            f.explain(4, open(), private),
            is(false, "private_range"),
            "{private}"
        );
    }
}

#[test]
fn restricted_mode_reaches_the_catalog_by_name_only() {
    let f = Fixture::new();
    for category in ["npm", "python", "ubuntu-debian", "docker", "ai-ml"] {
        let name = f.essential(category);
        assert_eq!(
            f.explain(1, open(), &format!("{name}:443")),
            is(true, &format!("essential_service:{category}"))
        );
        assert_eq!(
            f.explain(2, open(), &format!("sub.{name}")),
            is(false, "restricted_by_tier")
        );
    }
    assert_eq!(
        f.explain(1, open(), "www.example.com"),
        is(false, "restricted_by_tier")
    );
    assert_eq!(
        f.explain(1, open(), "192.0.2.10:443"),
        is(false, "restricted_by_tier")
    );
    assert_eq!(f.explain(1, open(), "10.0.0.1"), is(false, "private_range"));
}

#[test]
fn allowlist_mode_allows_its_lists_and_the_catalog() {
    let f = Fixture::new();
    let req = allow(
        "192.0.2.0/24,10.0.0.0/8,2001:db8:1::/48",
        "*.example.com,example.net",
    );
    assert_eq!(
        f.explain(3, req, "192.0.2.99:8443"),
        is(true, "allow_list:192.0.2.0/24")
    );
    assert_eq!(
        f.explain(3, req, "10.9.9.9"),
        is(true, "allow_list:10.0.0.0/8")
    );
    assert_eq!(
        f.explain(3, req, "[2001:db8:1::5]:443"),
        is(true, "allow_list:2001:db8:1::/48")
    );
    assert_eq!(
        f.explain(3, req, "198.51.100.1"),
        is(false, "not_in_allow_list")
    );
    // IPv6 outside the list is denied: no way around an IPv4 list.
    assert_eq!(
        f.explain(3, req, "2001:db8:2::1"),
        is(false, "not_in_allow_list")
    );
    assert_eq!(f.explain(3, req, "192.168.1.1"), is(false, "private_range"));
    assert_eq!(
        f.explain(3, req, "a.example.com"),
        is(true, "domain_allow_list:*.example.com")
    );
    assert_eq!(
        f.explain(3, req, "A.B.Example.Com."),
        is(true, "domain_allow_list:*.example.com")
    );
    assert_eq!(
        f.explain(3, req, "example.com"),
        is(false, "not_in_allow_list")
    );
    assert_eq!(
        f.explain(3, req, "example.net:443"),
        is(true, "domain_allow_list:example.net")
    );
    assert_eq!(
        f.explain(3, req, "www.example.net"),
        is(false, "not_in_allow_list")
    );
    let name = f.essential("git");
    assert_eq!(f.explain(3, req, &name), is(true, "essential_service:git"));
    // The most specific list entry is reported.
    let nested = allow("10.0.0.0/8,10.1.0.0/16", "");
    assert_eq!(
        f.explain(3, nested, "10.1.2.3"),
        is(true, "allow_list:10.1.0.0/16")
    );
}

#[test]
fn a_wide_entry_does_not_open_private_ranges_but_an_entry_inside_does() {
    let f = Fixture::new();
    let wide = allow("0.0.0.0/0,::/0", "");
    assert_eq!(
        f.explain(3, wide, "192.0.2.1"),
        is(true, "allow_list:0.0.0.0/0")
    );
    assert_eq!(
        f.explain(3, wide, "2001:db8::1"),
        is(true, "allow_list:::/0")
    );
    for private in [
        "10.0.0.1",
        "172.16.5.5",
        "192.168.1.1",
        "100.64.0.1",
        "fd00::1",
    ] {
        assert_eq!(
            f.explain(3, wide, private),
            is(false, "private_range"),
            "{private}"
        );
    }
    // A range that straddles a private range opens only its public part.
    let straddle = allow("10.0.0.0/7", "");
    assert_eq!(
        f.explain(3, straddle, "11.0.0.1"),
        is(true, "allow_list:10.0.0.0/7")
    );
    assert_eq!(
        f.explain(3, straddle, "10.0.0.1"),
        is(false, "private_range")
    );
    // Entries inside a private range open it, the whole range or a part.
    let inside = allow("0.0.0.0/0,192.168.1.0/24,10.0.0.0/8", "");
    assert_eq!(
        f.explain(3, inside, "192.168.1.7"),
        is(true, "allow_list:192.168.1.0/24")
    );
    assert_eq!(
        f.explain(3, inside, "192.168.2.7"),
        is(false, "private_range")
    );
    assert_eq!(
        f.explain(3, inside, "10.200.0.1"),
        is(true, "allow_list:10.0.0.0/8")
    );
}

#[test]
fn the_default_configuration_denies_other_sandboxes() {
    let config = PolicyConfig::default();
    let catalog = Catalog::builtin();
    let policy = config.resolve(3, &Default::default()).unwrap();
    let compiled = CompiledPolicy::new(policy, &catalog, &config);
    for other in ["198.18.0.1", "198.19.255.254", "2001:db8:5a00::2"] {
        let v = compiled.explain(&other.parse().unwrap());
        assert!(!v.allowed, "{other}: {}", v.rule);
        assert!(v.reason.code().starts_with("always_denied:"), "{other}");
    }
    // And no allow list can name them.
    let err = config
        .settings_for_create(3, &allow("198.18.0.0/16", ""))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidNetworkAllowList);
    assert!(err.message.contains("198.18.0.0/15"), "{}", err.message);
}

#[test]
fn blocked_mode_denies_everything_even_dns_and_the_catalog() {
    let f = Fixture::new();
    let name = f.essential("python");
    for dest in [
        name.as_str(),
        "192.0.2.1:443",
        "192.0.2.1:53",
        "[2001:db8::1]:53",
        "www.example.com",
    ] {
        assert_eq!(
            f.explain(3, blocked(), dest),
            is(false, "blocked"),
            "{dest}"
        );
    }
}

#[test]
fn port_53_goes_to_the_dns_service_in_every_mode_but_blocked() {
    let f = Fixture::new();
    assert_eq!(
        f.explain(1, open(), "198.51.100.53:53"),
        is(true, "dns_service")
    );
    assert_eq!(
        f.explain(3, allow("192.0.2.0/24", ""), "203.0.113.53:53"),
        is(true, "dns_service")
    );
    assert_eq!(
        f.explain(3, open(), "[2001:db8::53]:53"),
        is(true, "dns_service")
    );
    // A hard-coded resolver in a private range is still the DNS service.
    assert_eq!(
        f.explain(3, open(), "10.0.0.53:53"),
        is(true, "dns_service")
    );
    // So is the metadata address, another sandbox and the gateway: the
    // redirect happens before any filter.
    assert_eq!(
        f.explain(3, open(), "169.254.169.254:53"),
        is(true, "dns_service")
    );
    assert_eq!(
        f.explain(1, open(), "198.18.0.0:53"),
        is(true, "dns_service")
    );
    assert_eq!(
        f.explain(3, open(), "[fe80::1]:53"),
        is(true, "dns_service")
    );
    // Loopback stays inside the sandbox (no egress, no redirect);
    // multicast and broadcast are not unicast: no redirect, always denied.
    assert_eq!(
        f.explain(3, open(), "127.0.0.53:53"),
        is(true, "not_egress")
    );
    assert_eq!(
        f.explain(3, open(), "224.0.0.251:53"),
        is(false, "always_denied:224.0.0.0/4")
    );
    assert_eq!(
        f.explain(3, open(), "255.255.255.255:53"),
        is(false, "always_denied:255.255.255.255/32")
    );
}

#[test]
fn destinations_parse_strictly() {
    let ok = [
        ("192.0.2.1", "192.0.2.1"),
        ("192.0.2.1:443", "192.0.2.1:443"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:DB8::1]:443", "[2001:db8::1]:443"),
        ("Example.COM.", "example.com"),
        ("example.com:8080", "example.com:8080"),
    ];
    for (text, shown) in ok {
        let d: Destination = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(d.to_string(), shown);
    }
    assert!(matches!(
        "192.0.2.1".parse::<Destination>().unwrap().target,
        Target::Address(_)
    ));
    for bad in [
        "",
        " ",
        "[192.0.2.1]:443",
        "[example.com]:443",
        "192.0.2.1:0",
        "192.0.2.1:65536",
        "192.0.2.1:http",
        "[2001:db8::1",
        "[2001:db8::1]443",
        "a..b",
        "256.1.1.1",
        "1.2.3",
        "exa mple.com",
        "example.com:",
    ] {
        let err = bad.parse::<Destination>().unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidDestination, "{bad}");
        assert!(
            err.message.contains(&format!("\"{bad}\"")),
            "{}",
            err.message
        );
    }
}

#[test]
fn the_sandboxs_loopback_and_own_addresses_are_no_egress_in_any_mode() {
    let f = Fixture::new();
    let own: [std::net::IpAddr; 2] = [
        "198.18.0.2".parse().unwrap(),
        "2001:db8:5a00::2".parse().unwrap(),
    ];
    for (req, tier) in [
        (open(), 3),
        (allow("192.0.2.0/24", ""), 3),
        (open(), 1),
        (blocked(), 3),
    ] {
        let settings = f.config.settings_for_create(tier, &req).unwrap();
        let policy = f.config.resolve(tier, &settings).unwrap();
        let compiled = CompiledPolicy::new(policy, &f.catalog, &f.config).with_own_addresses(&own);
        for dest in [
            "127.0.0.1:80",
            "127.1.2.3",
            "[::1]:22",
            "0.0.0.0:7",
            "[::]:7",
            "198.18.0.2:80",
            "[2001:db8:5a00::2]:443",
            "[::ffff:198.18.0.2]:80",
            "[::ffff:127.0.0.1]:80",
        ] {
            let v = compiled.explain(&dest.parse().unwrap());
            assert_eq!(
                (v.allowed, v.reason.code()),
                is(true, "not_egress"),
                "{dest}: {}",
                v.rule
            );
        }
        // Another sandbox's address is egress (and denied), and a
        // mapped spelling says what it spells.
        let v = compiled.explain(&"198.18.0.6:80".parse().unwrap());
        assert!(!v.allowed, "{}", v.rule);
        let v = compiled.explain(&"[::ffff:127.0.0.1]:80".parse().unwrap());
        assert!(
            v.rule.contains("IPv4-mapped spelling of 127.0.0.1"),
            "{}",
            v.rule
        );
    }
}

fn with_deny(
    base: SettingsRequest<'static>,
    network: &'static str,
    domain: &'static str,
) -> SettingsRequest<'static> {
    SettingsRequest {
        network_deny_list: Some(network),
        domain_deny_list: Some(domain),
        ..base
    }
}

#[test]
fn deny_lists_win_over_the_allow_lists_and_the_catalog_in_every_mode() {
    let f = Fixture::new();
    let git = f.essential("git");
    let git_pattern: &'static str = Box::leak(git.clone().into_boxed_str());
    let table: &[(SettingsRequest<'static>, u8, &str, (bool, &str))] = &[
        // allowlist: the deny list carves out of the allow list and
        // out of the catalog.
        (
            with_deny(
                allow("192.0.2.0/24", "*.example.com"),
                "192.0.2.128/25",
                "bad.example.com",
            ),
            3,
            "192.0.2.200:443",
            (false, "network_deny_list:192.0.2.128/25"),
        ),
        (
            with_deny(
                allow("192.0.2.0/24", "*.example.com"),
                "192.0.2.128/25",
                "bad.example.com",
            ),
            3,
            "192.0.2.7",
            (true, "allow_list:192.0.2.0/24"),
        ),
        (
            with_deny(
                allow("192.0.2.0/24", "*.example.com"),
                "192.0.2.128/25",
                "bad.example.com",
            ),
            3,
            "bad.example.com",
            (false, "domain_deny_list:bad.example.com"),
        ),
        (
            with_deny(
                allow("192.0.2.0/24", "*.example.com"),
                "",
                "*.bad.example.com",
            ),
            3,
            "x.y.bad.example.com:443",
            (false, "domain_deny_list:*.bad.example.com"),
        ),
        (
            with_deny(
                allow("192.0.2.0/24", "*.example.com"),
                "",
                "*.bad.example.com",
            ),
            3,
            "good.example.com",
            (true, "domain_allow_list:*.example.com"),
        ),
        (
            with_deny(allow("192.0.2.0/24", ""), "", git_pattern),
            3,
            &git,
            (false, "domain_deny_list:"),
        ),
        // open: they subtract from the internet.
        (
            with_deny(open(), "198.51.100.0/24,2001:db8:bad::/48", "example.org"),
            4,
            "198.51.100.9",
            (false, "network_deny_list:198.51.100.0/24"),
        ),
        (
            with_deny(open(), "198.51.100.0/24,2001:db8:bad::/48", "example.org"),
            4,
            "[2001:db8:bad::1]:443",
            (false, "network_deny_list:2001:db8:bad::/48"),
        ),
        (
            with_deny(open(), "198.51.100.0/24", ""),
            4,
            "::ffff:198.51.100.9",
            (false, "network_deny_list:198.51.100.0/24"),
        ),
        (
            with_deny(open(), "198.51.100.0/24,2001:db8:bad::/48", "example.org"),
            4,
            "example.org",
            (false, "domain_deny_list:example.org"),
        ),
        (
            with_deny(open(), "198.51.100.0/24,2001:db8:bad::/48", "example.org"),
            4,
            "192.0.2.1",
            (true, "open"),
        ),
        // The always-denied ranges still come first; DNS still goes to
        // the DNS service.
        (
            with_deny(open(), "0.0.0.0/0", ""),
            3,
            "169.254.169.254",
            (false, "always_denied:metadata"),
        ),
        (
            with_deny(open(), "0.0.0.0/0", ""),
            3,
            "192.0.2.1:53",
            (true, "dns_service"),
        ),
    ];
    for (request, tier, dest, (allowed, code)) in table {
        let (a, c) = f.explain(*tier, *request, dest);
        assert_eq!(a, *allowed, "{dest}: {c}");
        assert!(c.starts_with(code), "{dest}: {c}, expected {code}");
    }
}

#[test]
fn essential_services_off_leaves_the_allow_list_alone() {
    let f = Fixture::new();
    let git = f.essential("git");
    let off = SettingsRequest {
        essential_services: Some(false),
        ..allow("", "example.net")
    };
    assert_eq!(f.explain(3, off, &git), is(false, "not_in_allow_list"));
    assert_eq!(
        f.explain(3, off, "example.net"),
        is(true, "domain_allow_list:example.net")
    );
    // In a restricted tier nothing is left but the sandbox's own address.
    let off = SettingsRequest {
        essential_services: Some(false),
        ..open()
    };
    assert_eq!(f.explain(1, off, &git), is(false, "restricted_by_tier"));
    // Open mode reaches every name: the setting is kept, and inactive.
    let settings = f.config.settings_for_create(3, &off).unwrap();
    let policy = f.config.resolve(3, &settings).unwrap();
    assert!(policy
        .inactive
        .iter()
        .any(|i| i.setting == "essentialServices" && i.reason == "open"));
    assert_eq!(f.explain(3, off, &git), is(true, "open"));
}

#[test]
fn deny_lists_stay_in_force_after_a_downgrade_and_go_quiet_when_blocked() {
    let f = Fixture::new();
    let settings = f
        .config
        .settings_for_create(3, &with_deny(open(), "198.51.100.0/24", "example.org"))
        .unwrap();
    // Downgraded to a restricted tier: the deny list only narrows, so it
    // stays in force (an essential service it names stays denied).
    let restricted = f.config.resolve(1, &settings).unwrap();
    assert_eq!(restricted.network_deny_list.to_string(), "198.51.100.0/24");
    assert!(restricted.inactive.is_empty());
    assert!(f.config.check_effective(&restricted).is_ok());
    let blocked = f
        .config
        .resolve(
            3,
            &sandgate_policy::NetworkSettings {
                network_block_all: true,
                ..settings
            },
        )
        .unwrap();
    assert!(blocked.network_deny_list.is_empty() && blocked.domain_deny_list.is_empty());
    let inactive: Vec<_> = blocked.inactive.iter().map(|i| i.setting).collect();
    assert_eq!(inactive, ["networkDenyList", "domainDenyList"]);
    // A runner refuses a blocked policy that carries deny lists, or
    // essential services (what a resolution never gives).
    let mut forged = blocked.clone();
    forged.essential_services = true;
    assert!(f.config.check_effective(&forged).is_err());
}

#[test]
fn explain_says_when_a_names_requests_are_limited_by_http_rules() {
    let f = Fixture::new();
    let rules = [sandgate_policy::HttpRuleRequest {
        host: "api.example.com".into(),
        methods: Some(vec!["GET".into()]),
        paths: None,
    }];
    let request = SettingsRequest {
        domain_allow_list: Some("*.example.com"),
        http_rules: Some(&rules),
        ..Default::default()
    };
    let settings = f.config.settings_for_create(3, &request).unwrap();
    let policy = f.config.resolve(3, &settings).unwrap();
    let compiled = CompiledPolicy::new(policy, &f.catalog, &f.config);
    let ruled = compiled.explain(&"api.example.com".parse().unwrap());
    assert!(ruled.allowed);
    assert_eq!(ruled.reason.code(), "domain_allow_list:*.example.com");
    assert!(ruled.rule.contains("httpRules"), "{}", ruled.rule);
    let free = compiled.explain(&"www.example.com".parse().unwrap());
    assert!(
        free.allowed && !free.rule.contains("httpRules"),
        "{}",
        free.rule
    );
    // A name allowed by a rule of names passes the gateway on the
    // name-checked ports, and explain says so.
    for rule in [&ruled.rule, &free.rule] {
        assert!(rule.contains("passes the gateway"), "{rule}");
    }
}
