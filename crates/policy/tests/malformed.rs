//! Every malformed list the brief names, and more: each refused with its
//! code, a message that names the entry, and the fix where there is one.

#![allow(clippy::unwrap_used)]

use sandgate_policy::{
    DomainAllowList, ErrorCode, NetworkAllowList, PolicyConfig, Ranges, SettingsRequest,
};

struct Case {
    input: &'static str,
    /// The text the message must quote (the bad entry).
    names: &'static str,
    /// A suggestion the error must carry, if any.
    suggestion: Option<&'static str>,
}

const fn case(input: &'static str, names: &'static str) -> Case {
    Case {
        input,
        names,
        suggestion: None,
    }
}

const fn fix(input: &'static str, names: &'static str, suggestion: &'static str) -> Case {
    Case {
        input,
        names,
        suggestion: Some(suggestion),
    }
}

const NETWORK: &[Case] = &[
    fix("192.168.1.5/24", "192.168.1.5/24", "192.168.1.0/24"),
    fix("10.1.2.3/8", "10.1.2.3/8", "10.0.0.0/8"),
    fix("2001:db8::1/32", "2001:db8::1/32", "2001:db8::/32"),
    case("192.0.2.0/24,,198.51.100.0/24", "empty entry at position 2"),
    case("192.0.2.0/24,", "empty entry at position 2"),
    case(",192.0.2.0/24", "empty entry at position 1"),
    case(" , ", "empty entry at position 1"),
    fix("01.2.3.4", "01.2.3.4", "1.2.3.4"),
    fix("192.168.001.0/24", "192.168.001.0/24", "192.168.1.0/24"),
    fix("010.0.0.0/8", "010.0.0.0/8", "10.0.0.0/8"),
    case("1.2.3.4/33", "1.2.3.4/33"),
    case("2001:db8::/129", "2001:db8::/129"),
    case("1.2.3.4/-1", "1.2.3.4/-1"),
    case("1.2.3.4/+8", "1.2.3.4/+8"),
    case("1.2.3.4/0x10", "1.2.3.4/0x10"),
    fix("10.0.0.0/08", "10.0.0.0/08", "10.0.0.0/8"),
    case("1.2.3.4/", "1.2.3.4/"),
    case("1.2.3.4/24/8", "1.2.3.4/24/8"),
    case("1.2.3.4//32", "1.2.3.4//32"),
    case("/24", "/24"),
    case("256.1.1.1", "256.1.1.1"),
    case("1.2.3", "1.2.3"),
    case("1.2.3.4.5", "1.2.3.4.5"),
    case("1..3.4", "1..3.4"),
    case("1.2.3.4.", "1.2.3.4."),
    case("example.com", "example.com"),
    case("localhost", "localhost"),
    fix("1.2.3.4 /32", "1.2.3.4 /32", "1.2.3.4/32"),
    case("2001:db8::g/64", "2001:db8::g/64"),
    case("fe80::1%eth0", "fe80::1%eth0"),
    fix("[2001:db8::1]", "[2001:db8::1]", "2001:db8::1"),
    case("1.2.3.4:80", "1.2.3.4:80"),
    case("2001:db8:::1", "2001:db8:::1"),
    case("*", "\"*\""),
    case("0x7f.0.0.1", "0x7f.0.0.1"),
    case("1.2.3.4/32a", "1.2.3.4/32a"),
    case("1.2.3.4/3 2", "1.2.3.4/3 2"),
    case("１.2.3.4", "１.2.3.4"),
    case("127.0.0.1", "127.0.0.0/8"),
    case("169.254.169.254/32", "169.254.0.0/16"),
    case("::1", "::1/128"),
    case("ff02::1", "ff00::/8"),
    case("::ffff:10.0.0.1", "::ffff:0.0.0.0/96"),
    case("224.0.0.0/4", "224.0.0.0/4"),
    case("192.0.2.0/24,192.0.2.1/24", "192.0.2.1/24"),
    case(
        "192.0.2.1,192.0.2.2,192.0.2.3,192.0.2.4,192.0.2.5,192.0.2.6",
        "at most 5",
    ),
];

const DOMAIN: &[Case] = &[
    case("*", "\"*\""),
    case("*.", "\"*.\""),
    case("a.*.example.com", "a.*.example.com"),
    case("*example.com", "*example.com"),
    case("**.example.com", "**.example.com"),
    case("*.*.example.com", "*.*.example.com"),
    case("example.com,,example.net", "empty entry at position 2"),
    case("example.com,", "empty entry at position 2"),
    case("192.0.2.1", "192.0.2.1"),
    case("2001:db8::1", "2001:db8::1"),
    case("192.0.2.0/24", "192.0.2.0/24"),
    fix("example.com:443", "example.com:443", "example.com"),
    fix(
        "https://example.com/path",
        "https://example.com/path",
        "example.com",
    ),
    fix("example.com/path", "example.com/path", "example.com"),
    fix("user@example.com", "user@example.com", "example.com"),
    case("exa mple.com", "exa mple.com"),
    case("example..com", "example..com"),
    case(".example.com", ".example.com"),
    case("example.com..", "example.com.."),
    case("-example.com", "-example.com"),
    case("example-.com", "example-.com"),
    case("ex_ample.com", "ex_ample.com"),
    case("exämple.com", "exämple.com"),
    case("localhost", "localhost"),
    case("example.123", "example.123"),
    case(
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com",
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
    let ranges = Ranges::default();
    for c in NETWORK {
        let r = NetworkAllowList::parse(c.input, 5, &ranges).map(|l| l.to_string());
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
