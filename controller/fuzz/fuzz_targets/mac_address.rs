//! `mac_address` annotation: never panics; an accepted MAC is unicast,
//! not all-zero, prints in lower-case colon form and parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portkeeper_engine::MacAddress;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mac) = MacAddress::parse(text) {
        assert!(!mac.is_multicast());
        assert_ne!(mac.octets(), [0; 6]);
        let printed = mac.to_string();
        assert_eq!(printed.len(), 17);
        assert!(
            printed
                .bytes()
                .all(|b| b == b':' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(printed, text.trim().to_ascii_lowercase().replace('-', ":"));
        assert_eq!(MacAddress::parse(&printed), Ok(mac));
    }
});
