//! `ip_address` annotation: never panics; an accepted value prints in
//! Kube-OVN's `v4,v6` form and parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portkeeper_engine::parse::parse_ip_address;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(addrs) = parse_ip_address(text) {
        assert!(!addrs.is_empty());
        let printed = addrs.to_string();
        assert_eq!(
            parse_ip_address(&printed),
            Ok(addrs),
            "{text:?} -> {printed:?}"
        );
    }
});
