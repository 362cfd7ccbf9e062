//! `explain`'s destinations (`ADDRESS_OR_NAME[:PORT]`): never a panic, and
//! one that parses parses again from its own text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgate_policy::Destination;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(dest) = text.parse::<Destination>() {
        let again: Destination = dest
            .to_string()
            .parse()
            .expect("a destination's text parses");
        assert_eq!(again.to_string(), dest.to_string());
    }
});
