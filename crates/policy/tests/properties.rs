//! Properties: canonical lists re-parse to themselves, and the trie matcher
//! agrees with a naive reference on random names and patterns.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use sandgate_policy::{
    DomainAllowList, DomainName, DomainPattern, NameMatcher, NetworkAllowList, Ranges,
};
use std::net::{Ipv4Addr, Ipv6Addr};

/// A valid network entry, spelled in one of the accepted ways.
fn network_entry() -> impl Strategy<Value = String> {
    let v4 = (any::<u32>(), prop::option::of(0u8..=32)).prop_map(|(bits, prefix)| {
        let addr = Ipv4Addr::from(bits);
        match prefix {
            None => addr.to_string(),
            Some(p) => {
                let net = ipnet::Ipv4Net::new(addr, p).unwrap().trunc();
                net.to_string()
            }
        }
    });
    let v6 = (any::<u128>(), prop::option::of(0u8..=128), any::<bool>()).prop_map(
        |(bits, prefix, upper)| {
            let addr = Ipv6Addr::from(bits);
            let text = match prefix {
                None => addr.to_string(),
                Some(p) => ipnet::Ipv6Net::new(addr, p).unwrap().trunc().to_string(),
            };
            if upper {
                text.to_uppercase()
            } else {
                text
            }
        },
    );
    prop_oneof![v4, v6]
}

fn is_always_denied(entry: &str) -> bool {
    let entry = entry.to_lowercase();
    let net: ipnet::IpNet = entry
        .parse()
        .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .unwrap();
    Ranges::default().always_denied_covering(&net).is_some()
}

fn label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?"
}

/// A valid domain entry in any accepted spelling.
fn domain_entry() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(label(), 1..4),
        "[a-zA-Z]{2,6}",
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(labels, tld, wildcard, dot)| {
            let mut name = labels.join(".");
            name.push('.');
            name.push_str(&tld);
            if dot {
                name.push('.');
            }
            if wildcard {
                format!("*.{name}")
            } else {
                name
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn canonical_network_lists_reparse_to_themselves(
        entries in prop::collection::vec(network_entry(), 0..5),
        pad in "[ \t]{0,2}",
    ) {
        let entries: Vec<String> = entries.into_iter().filter(|e| !is_always_denied(e)).collect();
        let input = entries.iter().map(|e| format!("{pad}{e}{pad}")).collect::<Vec<_>>().join(",");
        let ranges = Ranges::default();
        let list = NetworkAllowList::parse(&input, 5, &ranges)
            .map_err(|e| TestCaseError::fail(format!("{input:?}: {}", e.message)))?;
        let canonical = list.to_string();
        let again = NetworkAllowList::parse(&canonical, 5, &ranges).unwrap();
        prop_assert_eq!(&again, &list);
        prop_assert_eq!(again.to_string(), canonical);
    }

    #[test]
    fn canonical_domain_lists_reparse_to_themselves(
        entries in prop::collection::vec(domain_entry(), 0..8),
    ) {
        let input = entries.join(" , ");
        let list = DomainAllowList::parse(&input, 50)
            .map_err(|e| TestCaseError::fail(format!("{input:?}: {}", e.message)))?;
        let canonical = list.to_string();
        let again = DomainAllowList::parse(&canonical, 50).unwrap();
        prop_assert_eq!(&again, &list);
        prop_assert_eq!(again.to_string(), canonical);
    }

    #[test]
    fn arbitrary_text_never_panics_and_what_parses_round_trips(
        input in "[0-9a-fA-F.:/, *%x\\[\\]-]{0,40}",
    ) {
        let ranges = Ranges::default();
        if let Ok(list) = NetworkAllowList::parse(&input, 5, &ranges) {
            prop_assert_eq!(NetworkAllowList::parse(&list.to_string(), 5, &ranges).unwrap(), list);
        }
        if let Ok(list) = DomainAllowList::parse(&input, 50) {
            prop_assert_eq!(DomainAllowList::parse(&list.to_string(), 50).unwrap(), list);
        }
    }

    #[test]
    fn the_trie_agrees_with_the_naive_reference(
        patterns in prop::collection::vec(small_pattern(), 0..30),
        names in prop::collection::vec(small_name(), 1..30),
    ) {
        let mut matcher = NameMatcher::new();
        for (i, p) in patterns.iter().enumerate() {
            matcher.insert(p, i);
        }
        for name in &names {
            let expected = naive(&patterns, name);
            let found = matcher.find(name.as_str()).map(|m| m.value);
            // Compare the patterns: equal patterns at different indexes are
            // the same rule, and the first one inserted is kept.
            prop_assert_eq!(
                found.map(|i| &patterns[i]),
                expected.map(|i| &patterns[i]),
                "name {}", name
            );
            prop_assert_eq!(found, expected);
        }
    }
}

/// A name as a resolver might hand it over: the labels of a small name in
/// any case, maybe a trailing dot, maybe an empty or over-long label.
fn raw_name() -> impl Strategy<Value = String> {
    (small_name(), any::<bool>(), 0u8..8, any::<u64>()).prop_map(|(name, dot, flaw, case_bits)| {
        let mut text: String = name
            .as_str()
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if case_bits >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        match flaw {
            0 => text.insert(0, '.'),
            1 => text = text.replacen('.', "..", 1),
            2 => text = format!("{}.{text}", "a".repeat(64)),
            _ => {}
        }
        if dot {
            text.push('.');
        }
        text
    })
}

proptest! {
    #[test]
    fn the_trie_agrees_with_the_reference_on_raw_names(
        patterns in prop::collection::vec(small_pattern(), 0..30),
        names in prop::collection::vec(raw_name(), 1..30),
    ) {
        let mut matcher = NameMatcher::new();
        for (i, p) in patterns.iter().enumerate() {
            matcher.insert(p, i);
        }
        for raw in &names {
            // What the reference says of the name, once validated; a name
            // that does not validate (empty or long label) matches nothing.
            let expected = DomainName::parse(raw).ok().and_then(|n| naive(&patterns, &n));
            let found = matcher.find(raw).map(|m| m.value);
            prop_assert_eq!(found.map(|i| &patterns[i]), expected.map(|i| &patterns[i]), "name {}", raw);
        }
    }
}

/// Labels from a small alphabet, so that names and patterns collide often.
fn small_labels() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "example", "com", "x-1"]),
        1..5,
    )
}

fn small_name() -> impl Strategy<Value = DomainName> {
    (small_labels(), prop::sample::select(vec!["com", "org"])).prop_map(|(labels, tld)| {
        DomainName::parse(&format!("{}.{tld}", labels.join("."))).unwrap()
    })
}

fn small_pattern() -> impl Strategy<Value = DomainPattern> {
    (small_name(), any::<bool>()).prop_map(|(name, wildcard)| {
        if wildcard {
            DomainPattern::Wildcard(name)
        } else {
            DomainPattern::Exact(name)
        }
    })
}

/// The reference: scan every pattern; an exact match wins, else the
/// wildcard with the longest base; among equal patterns the first.
fn naive(patterns: &[DomainPattern], name: &DomainName) -> Option<usize> {
    let hits = || patterns.iter().enumerate().filter(|(_, p)| p.matches(name));
    hits()
        .find(|(_, p)| !p.is_wildcard())
        .or_else(|| {
            hits().fold(
                None,
                |best: Option<(usize, &DomainPattern)>, (i, p)| match best {
                    Some((_, b)) if b.base().as_str().len() >= p.base().as_str().len() => best,
                    _ => Some((i, p)),
                },
            )
        })
        .map(|(i, _)| i)
}

#[test]
fn the_naive_reference_itself_is_right() {
    let p = |s: &str| DomainPattern::parse(s).unwrap();
    let n = |s: &str| DomainName::parse(s).unwrap();
    let pats = [
        p("*.example.com"),
        p("*.a.example.com"),
        p("b.a.example.com"),
    ];
    assert_eq!(naive(&pats, &n("x.example.com")), Some(0));
    assert_eq!(naive(&pats, &n("x.a.example.com")), Some(1));
    assert_eq!(naive(&pats, &n("b.a.example.com")), Some(2));
    assert_eq!(naive(&pats, &n("example.com")), None);
    assert_eq!(naive(&pats, &n("xexample.com")), None);
}
