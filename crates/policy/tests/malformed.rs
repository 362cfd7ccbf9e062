//! Every malformed list the brief names, and more: each refused with its
//! code, a message that names the entry, and the fix where there is one.

#![allow(clippy::unwrap_used)]

use sandgate_policy::{
    DomainAllowList, DomainList, ErrorCode, NetworkAllowList, NetworkList, PolicyConfig, Ranges,
    SettingsRequest,
};

struct Case {
    input: &'static str,
    /// The text the message must quote (the bad entry).
    names: &'static str,
    /// Words of the diagnosis the message must carry.
    why: &'static str,
    /// A suggestion the error must carry, if any.
    suggestion: Option<&'static str>,
}

const fn case(input: &'static str, names: &'static str, why: &'static str) -> Case {
    Case {
        input,
        names,
        why,
        suggestion: None,
    }
}

const fn fix(
    input: &'static str,
    names: &'static str,
    why: &'static str,
    suggestion: &'static str,
) -> Case {
    Case {
        input,
        names,
        why,
        suggestion: Some(suggestion),
    }
}

const EMPTY: &str = "empty entry";
const HOST_BITS: &str = "host bits set";
const LEADING_ZERO: &str = "leading zero";
const RANGE: &str = "out of range";
const NOT_DECIMAL: &str = "not a plain decimal number";
const DENIED: &str = "always denied";

const NETWORK: &[Case] = &[
    fix(
        "192.168.1.5/24",
        "192.168.1.5/24",
        HOST_BITS,
        "192.168.1.0/24",
    ),
    fix("10.1.2.3/8", "10.1.2.3/8", HOST_BITS, "10.0.0.0/8"),
    fix(
        "2001:db8::1/32",
        "2001:db8::1/32",
        HOST_BITS,
        "2001:db8::/32",
    ),
    case("192.0.2.0/24,,198.51.100.0/24", "position 2", EMPTY),
    case("192.0.2.0/24,", "position 2", EMPTY),
    case(",192.0.2.0/24", "position 1", EMPTY),
    case(" , ", "position 1", EMPTY),
    fix("01.2.3.4", "01.2.3.4", LEADING_ZERO, "1.2.3.4"),
    fix(
        "192.168.001.0/24",
        "192.168.001.0/24",
        LEADING_ZERO,
        "192.168.1.0/24",
    ),
    fix("010.0.0.0/8", "010.0.0.0/8", LEADING_ZERO, "10.0.0.0/8"),
    case("1.2.3.4/33", "1.2.3.4/33", RANGE),
    case("2001:db8::/129", "2001:db8::/129", RANGE),
    case("1.2.3.4/-1", "1.2.3.4/-1", NOT_DECIMAL),
    case("1.2.3.4/+8", "1.2.3.4/+8", NOT_DECIMAL),
    case("1.2.3.4/0x10", "1.2.3.4/0x10", NOT_DECIMAL),
    case("1.2.3.4/32a", "1.2.3.4/32a", NOT_DECIMAL),
    fix("10.0.0.0/08", "10.0.0.0/08", LEADING_ZERO, "10.0.0.0/8"),
    // The obvious fix of /024 has host bits set; the fix of the fix is offered.
    fix("1.2.3.4/024", "1.2.3.4/024", LEADING_ZERO, "1.2.3.0/24"),
    fix("1.2.3.4/", "1.2.3.4/", "empty prefix", "1.2.3.4/32"),
    case("1.2.3.4/24/8", "1.2.3.4/24/8", "more than one '/'"),
    case("1.2.3.4//32", "1.2.3.4//32", "more than one '/'"),
    case("/24", "/24", "no address"),
    case("256.1.1.1", "256.1.1.1", "greater than 255"),
    case("1.2.3", "1.2.3", "exactly four"),
    case("1.2.3.4.5", "1.2.3.4.5", "exactly four"),
    case("1..3.4", "1..3.4", "empty octet"),
    case("1.2.3.4.", "1.2.3.4.", "exactly four"),
    case("example.com", "example.com", "domainAllowList"),
    case("localhost", "localhost", "not an IPv4 or IPv6"),
    fix("1.2.3.4 /32", "1.2.3.4 /32", "white space", "1.2.3.4/32"),
    fix("1.2.3.4/3 2", "1.2.3.4/3 2", "white space", "1.2.3.4/32"),
    case("2001:db8::g/64", "2001:db8::g/64", "not a valid IPv6"),
    case("2001:db8:::1", "2001:db8:::1", "not a valid IPv6"),
    case("fe80::1%eth0", "fe80::1%eth0", "zone index"),
    fix("[2001:db8::1]", "[2001:db8::1]", "brackets", "2001:db8::1"),
    fix("192.0.2.1:80", "192.0.2.1:80", "port", "192.0.2.1"),
    case("*", "\"*\"", "not an IPv4 or IPv6"),
    case("0x7f.0.0.1", "0x7f.0.0.1", "hexadecimal"),
    case("１.2.3.4", "１.2.3.4", "not an IPv4 or IPv6"),
    case("127.0.0.1", "127.0.0.0/8", DENIED),
    case("169.254.169.254/32", "169.254.169.254/32", DENIED),
    case("169.254.0.0/24", "169.254.0.0/16", DENIED),
    case("::1", "::1/128", DENIED),
    case("ff02::1", "ff00::/8", DENIED),
    case("::ffff:10.0.0.1", "::ffff:0.0.0.0/96", DENIED),
    case("224.0.0.0/4", "224.0.0.0/4", DENIED),
    case("198.18.4.0/24", "198.18.0.0/15", DENIED),
    // The obvious fix is always denied: no fix is offered.
    case("00.0.0.0/8", "00.0.0.0/8", LEADING_ZERO),
    fix(
        "192.0.2.0/24,192.0.2.1/24",
        "192.0.2.1/24",
        HOST_BITS,
        "192.0.2.0/24",
    ),
    case(
        "192.0.2.1,192.0.2.2,192.0.2.3,192.0.2.4,192.0.2.5,192.0.2.6",
        "6 entries",
        "at most 5",
    ),
];

const DOMAIN: &[Case] = &[
    case("*", "\"*\"", "bare '*'"),
    case("*.", "\"*.\"", "bare '*'"),
    case("a.*.example.com", "a.*.example.com", "whole first label"),
    case("*example.com", "*example.com", "whole first label"),
    case("**.example.com", "**.example.com", "whole first label"),
    case("*.*.example.com", "*.*.example.com", "whole first label"),
    case("example.com,,example.net", "position 2", EMPTY),
    case("example.com,", "position 2", EMPTY),
    case("192.0.2.1", "192.0.2.1", "networkAllowList"),
    case("2001:db8::1", "2001:db8::1", "networkAllowList"),
    case("192.0.2.0/24", "192.0.2.0/24", "networkAllowList"),
    fix("example.com:443", "example.com:443", "port", "example.com"),
    fix(
        "https://example.com/path",
        "https://example.com/path",
        "URL",
        "example.com",
    ),
    fix(
        "example.com/path",
        "example.com/path",
        "path",
        "example.com",
    ),
    fix(
        "user@example.com",
        "user@example.com",
        "user part",
        "example.com",
    ),
    case("exa mple.com", "exa mple.com", "white space"),
    case("example..com", "example..com", "empty label"),
    case(".example.com", ".example.com", "empty label"),
    case("example.com..", "example.com..", "empty label"),
    case("-example.com", "-example.com", "hyphen"),
    case("example-.com", "example-.com", "hyphen"),
    case("ex_ample.com", "ex_ample.com", "contains '_'"),
    case("exämple.com", "exämple.com", "xn--"),
    case("localhost", "localhost", "single-label"),
    case("example.123", "example.123", "all-numeric"),
    case(
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com",
        "at most 63",
    ),
];

fn check(
    field: &str,
    code: ErrorCode,
    case: &Case,
    result: Result<String, sandgate_policy::PolicyError>,
) {
    let err = match result {
        Ok(list) => panic!("{field} {:?} was accepted as {list:?}", case.input),
        Err(e) => e,
    };
    assert_eq!(err.code, code, "{field} {:?}: {}", case.input, err.message);
    assert_eq!(err.http_status(), 400);
    assert_eq!(err.field, Some(field));
    assert!(
        err.message.contains(case.names),
        "{field} {:?}: message {:?} does not name {:?}",
        case.input,
        err.message,
        case.names
    );
    assert!(
        err.message.contains(case.why),
        "{field} {:?}: message {:?} does not say {:?}",
        case.input,
        err.message,
        case.why
    );
    let offered: Vec<_> = err
        .problems
        .iter()
        .filter_map(|p| p.suggestion.as_deref())
        .collect();
    if case.suggestion.is_none() {
        assert!(
            offered.is_empty(),
            "{field} {:?}: unexpected fix {offered:?}",
            case.input
        );
    }
    if let Some(s) = case.suggestion {
        let found: Vec<_> = err
            .problems
            .iter()
            .filter_map(|p| p.suggestion.as_deref())
            .collect();
        assert!(
            found.contains(&s) && err.message.contains(s),
            "{field} {:?}: expected the fix {s:?}, got {found:?} / {:?}",
            case.input,
            err.message
        );
    }
}

#[test]
fn malformed_network_allow_lists_are_refused_with_the_entry_named() {
    let config = PolicyConfig::default();
    let ranges = config.ranges();
    for c in NETWORK {
        let r = NetworkAllowList::parse(c.input, 5, ranges).map(|l| l.to_string());
        check("networkAllowList", ErrorCode::InvalidNetworkAllowList, c, r);
    }
}

#[test]
fn malformed_domain_allow_lists_are_refused_with_the_entry_named() {
    for c in DOMAIN {
        let r = DomainAllowList::parse(c.input, 50).map(|l| l.to_string());
        check("domainAllowList", ErrorCode::InvalidDomainAllowList, c, r);
    }
}

/// The deny lists take the allow lists' grammar: every malformed case is
/// refused with the deny list's own code and field, and a message that
/// points to the other deny list where the allow list's pointed to the
/// other allow list.
#[test]
fn malformed_deny_lists_are_refused_like_allow_lists_with_their_own_codes() {
    let config = PolicyConfig::default();
    let ranges = config.ranges();
    let deny = |c: &Case| Case {
        why: match c.why {
            "domainAllowList" => "domainDenyList",
            "networkAllowList" => "networkDenyList",
            why => why,
        },
        ..*c
    };
    for c in NETWORK {
        let r = NetworkList::parse_deny(c.input, 5, ranges).map(|l| l.to_string());
        check(
            "networkDenyList",
            ErrorCode::InvalidNetworkDenyList,
            &deny(c),
            r,
        );
    }
    for c in DOMAIN {
        let r = DomainList::parse_deny(c.input, 50).map(|l| l.to_string());
        check(
            "domainDenyList",
            ErrorCode::InvalidDomainDenyList,
            &deny(c),
            r,
        );
    }
}

#[test]
fn deny_lists_are_refused_to_restricted_tiers_and_limited_per_tier() {
    let config = PolicyConfig::from_toml("network_deny_list_max = 2").unwrap();
    for (network, domain) in [(Some("192.0.2.0/24"), None), (None, Some("example.com"))] {
        let request = SettingsRequest {
            network_deny_list: network,
            domain_deny_list: domain,
            ..Default::default()
        };
        let err = config.settings_for_create(1, &request).unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::NetworkRestrictedByTier,
            "{}",
            err.message
        );
        assert_eq!(err.http_status(), 403);
        assert!(config.settings_for_create(3, &request).is_ok());
    }
    // Turning the essential services off only narrows: any tier may.
    let off = SettingsRequest {
        essential_services: Some(false),
        ..Default::default()
    };
    assert!(
        !config
            .settings_for_create(1, &off)
            .unwrap()
            .essential_services
    );
    let three = SettingsRequest {
        network_deny_list: Some("192.0.2.1,192.0.2.2,192.0.2.3"),
        ..Default::default()
    };
    let err = config.settings_for_create(3, &three).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidNetworkDenyList);
    assert!(err.message.contains("at most 2"), "{}", err.message);
}

#[test]
fn there_are_at_least_forty_malformed_cases() {
    assert!(NETWORK.len() + DOMAIN.len() >= 40);
}

#[test]
fn every_bad_entry_of_a_list_is_reported() {
    let err = NetworkAllowList::parse(
        "192.0.2.0/24, 10.0.0.1/8, , 300.1.1.1",
        5,
        &Ranges::default(),
    )
    .unwrap_err();
    let entries: Vec<_> = err
        .problems
        .iter()
        .map(|p| (p.position, p.entry.as_str()))
        .collect();
    assert_eq!(entries, vec![(2, "10.0.0.1/8"), (3, ""), (4, "300.1.1.1")]);
    assert!(err.message.contains("2 more problems"), "{}", err.message);
}

#[test]
fn too_long_a_domain_list_is_refused_at_the_limit_plus_one() {
    let names: Vec<String> = (0..51).map(|i| format!("host{i}.example.com")).collect();
    let err = DomainAllowList::parse(&names.join(","), 50).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidDomainAllowList);
    assert!(err.message.contains("51 entries") && err.message.contains("at most 50"));
    assert!(DomainAllowList::parse(&names[..50].join(","), 50).is_ok());
}

#[test]
fn a_name_longer_than_253_characters_is_refused() {
    let label = "a".repeat(60);
    let name = format!("{label}.{label}.{label}.{label}.example.com");
    assert!(name.len() > 253);
    let err = DomainAllowList::parse(&name, 50).unwrap_err();
    assert!(err.message.contains("at most 253"), "{}", err.message);
}

#[test]
fn the_operator_can_raise_the_network_limit() {
    let six = "192.0.2.1,192.0.2.2,192.0.2.3,192.0.2.4,192.0.2.5,192.0.2.6";
    let request = SettingsRequest {
        network_allow_list: Some(six),
        ..Default::default()
    };
    let err = PolicyConfig::default()
        .settings_for_create(3, &request)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidNetworkAllowList);
    let raised = PolicyConfig::from_toml("network_allow_list_max = 10").unwrap();
    let settings = raised.settings_for_create(3, &request).unwrap();
    assert_eq!(settings.network_allow_list.nets().len(), 6);
}

#[test]
fn hostile_lists_cost_little_and_report_little() {
    // Far too many entries: refused before any entry is parsed.
    let many = vec!["bad..name"; 100_000].join(",");
    let err = DomainAllowList::parse(&many, 50).unwrap_err();
    assert!(err.message.contains("100000 entries"), "{}", err.message);
    assert_eq!(err.problems.len(), 1);
    // Many bad entries under the raw cap: at most 20 reported, all counted.
    let bad: Vec<String> = (0..200).map(|i| format!("bad..name{i}.example")).collect();
    let err = DomainAllowList::parse(&bad.join(","), 50).unwrap_err();
    assert_eq!(err.problems.len(), 20);
    assert!(err.message.contains("200 problems"), "{}", err.message);
    // Duplicates merge in linear time: 200 copies of 5 entries pass.
    let dup = ["192.0.2.1,192.0.2.2,192.0.2.3,192.0.2.4,192.0.2.5"; 4].join(",");
    assert_eq!(
        NetworkAllowList::parse(&dup, 5, &Ranges::default())
            .unwrap()
            .nets()
            .len(),
        5
    );
}
