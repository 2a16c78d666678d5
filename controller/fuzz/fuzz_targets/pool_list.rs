//! `ip_pools` annotation (`parse_pool_list`): never panics; an accepted list is non-empty, holds
//! each name once, every name an IPPool name (never an address, no separators or blanks), and
//! written back with `,` it reads the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portkeeper_engine::parse::parse_pool_list;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(pools) = parse_pool_list(text) {
        assert!(!pools.is_empty());
        for (i, pool) in pools.iter().enumerate() {
            assert!(!pool.is_empty() && pool.len() <= 253, "{pool:?}");
            assert!(!pool.contains([',', ';', ':', ' ']), "{pool:?}");
            assert!(pool.parse::<std::net::IpAddr>().is_err(), "{pool:?}");
            assert!(!pools[..i].contains(pool), "{pool} twice in {text:?}");
        }
        assert_eq!(parse_pool_list(&pools.join(",")), Ok(pools));
    }
});
