//! Subnet `cidrBlock`: never panics; an accepted block is normalised (no
//! host bits), at most one CIDR per family, and its printed form parses
//! back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portkeeper_engine::parse::parse_cidr_block;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(block) = parse_cidr_block(text) {
        if let Some(v4) = block.v4 {
            assert_eq!(v4, v4.trunc());
            assert!(v4.prefix_len() < 32);
        }
        if let Some(v6) = block.v6 {
            assert_eq!(v6, v6.trunc());
            assert!(v6.prefix_len() < 128);
        }
        let printed = block.to_string();
        assert_eq!(
            parse_cidr_block(&printed),
            Ok(block),
            "{text:?} -> {printed:?}"
        );
    }
});
