//! `networkAllowList` and `domainAllowList` parsing: never a panic, and a
//! list that parses re-parses from its canonical text to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgate_policy::{DomainAllowList, NetworkAllowList, PolicyConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = PolicyConfig::default();
    if let Ok(list) = NetworkAllowList::parse(text, 10, config.ranges()) {
        let again = NetworkAllowList::parse(&list.to_string(), 10, config.ranges())
            .expect("a canonical network list parses");
        assert_eq!(again, list);
    }
    if let Ok(list) = DomainAllowList::parse(text, 10) {
        let again =
            DomainAllowList::parse(&list.to_string(), 10).expect("a canonical domain list parses");
        assert_eq!(again, list);
    }
});
