//! `ip_pool` annotation: never panics; a list has at least one entry, no
//! address twice, and each entry at most one address per family; a list
//! written back in `v4,v6;…` form parses to the same entries.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use portkeeper_engine::parse::{IpPoolAnnotation, parse_ip_pool};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_ip_pool(text) {
        Ok(IpPoolAnnotation::Named(name)) => {
            assert!(!name.is_empty() && !name.contains([',', ';', ':']));
        }
        Ok(IpPoolAnnotation::List(entries)) => {
            assert!(!entries.is_empty());
            let mut seen = HashSet::new();
            for entry in &entries {
                assert!(!entry.is_empty());
                for addr in entry.addresses() {
                    assert!(seen.insert(addr), "{addr} twice in {text:?}");
                }
            }
            let printed = entries
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(";");
            assert_eq!(
                parse_ip_pool(&format!("{printed};")),
                Ok(IpPoolAnnotation::List(entries)),
                "{text:?} -> {printed:?}"
            );
        }
        Err(_) => {}
    }
});
