//! The accepted forms of REQUIREMENTS.md section 1 and their canonical echo.

#![allow(clippy::unwrap_used)]

use sandgate_policy::{DomainAllowList, NetworkAllowList, Ranges};

fn network(input: &str) -> String {
    NetworkAllowList::parse(input, 5, &Ranges::default())
        .unwrap_or_else(|e| panic!("{input:?} refused: {}", e.message))
        .to_string()
}

fn domains(input: &str) -> String {
    DomainAllowList::parse(input, 50)
        .unwrap_or_else(|e| panic!("{input:?} refused: {}", e.message))
        .to_string()
}

#[test]
fn the_reference_example_is_accepted_as_written() {
    let spec = "208.80.154.232/32,199.16.156.103/32,192.168.1.0/24";
    assert_eq!(network(spec), spec);
    assert_eq!(
        network("208.80.154.232/32,199.16.156.103/32,10.0.0.0/8"),
        "208.80.154.232/32,199.16.156.103/32,10.0.0.0/8"
    );
}

#[test]
fn network_entries_are_canonicalized() {
    let cases = [
        // Bare addresses become /32 and /128.
        ("192.0.2.1", "192.0.2.1/32"),
        ("2001:db8::1", "2001:db8::1/128"),
        // Prefix bounds.
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("::/0", "::/0"),
        ("192.0.2.7/32", "192.0.2.7/32"),
        ("2001:db8::/128", "2001:db8::/128"),
        // IPv6 is lowercased and compressed (RFC 5952).
        ("2001:DB8:0:0:0:0:0:0/32", "2001:db8::/32"),
        ("2001:0db8:0000::/48", "2001:db8::/48"),
        // White space around entries is trimmed.
        (
            "  192.0.2.0/24 ,\t198.51.100.0/24  ",
            "192.0.2.0/24,198.51.100.0/24",
        ),
        // Duplicates after normalization are merged, first position kept.
        (
            "192.0.2.1, 198.51.100.0/24, 192.0.2.1/32",
            "192.0.2.1/32,198.51.100.0/24",
        ),
        ("2001:db8::1,2001:DB8:0::1/128", "2001:db8::1/128"),
        // Private ranges may be listed.
        (
            "10.0.0.0/8,172.16.0.0/12,fc00::/7",
            "10.0.0.0/8,172.16.0.0/12,fc00::/7",
        ),
    ];
    for (input, canonical) in cases {
        assert_eq!(network(input), canonical, "{input:?}");
    }
}

#[test]
fn empty_lists_mean_no_list() {
    for input in ["", " ", "\t"] {
        assert!(NetworkAllowList::parse(input, 5, &Ranges::default())
            .unwrap()
            .is_empty());
        assert!(DomainAllowList::parse(input, 50).unwrap().is_empty());
    }
}

#[test]
fn five_distinct_entries_pass_even_with_duplicates() {
    let input = "192.0.2.1,192.0.2.2,192.0.2.3,192.0.2.4,192.0.2.5,192.0.2.1/32";
    assert_eq!(
        network(input),
        "192.0.2.1/32,192.0.2.2/32,192.0.2.3/32,192.0.2.4/32,192.0.2.5/32"
    );
}

#[test]
fn domain_entries_are_canonicalized() {
    let cases = [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("*.Example.com.", "*.example.com"),
        ("*.com", "*.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("123.example.com", "123.example.com"),
        (" example.com , *.example.net ", "example.com,*.example.net"),
        (
            "example.com,EXAMPLE.com.,*.example.com",
            "example.com,*.example.com",
        ),
    ];
    for (input, canonical) in cases {
        assert_eq!(domains(input), canonical, "{input:?}");
    }
}
