//! Subnet `excludeIps` and IPPool `ips` entries (`,`-separated here so
//! one input holds several): never panic; an accepted range is of one
//! family, ordered, and its printed form parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portkeeper_engine::Family;
use portkeeper_engine::parse::{parse_exclude_ips, parse_pool_entry};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let entries: Vec<&str> = text.split(',').collect();
    if let Ok(ranges) = parse_exclude_ips(&entries) {
        for range in ranges {
            assert_eq!(Family::of(range.start), Family::of(range.end));
            assert!(range.start <= range.end);
            assert_eq!(parse_exclude_ips(&[range.to_string()]), Ok(vec![range]));
        }
    }
    for entry in entries {
        if let Ok(range) = parse_pool_entry(entry) {
            assert_eq!(Family::of(range.start), Family::of(range.end));
            assert!(range.start <= range.end);
        }
    }
});
