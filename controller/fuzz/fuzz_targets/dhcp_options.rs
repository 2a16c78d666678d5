//! Kube-OVN DHCP options text (Subnet `dhcpV4Options`/`dhcpV6Options`, pod
//! `dhcp-v4-options`/`dhcp-v6-options`): never panics, and an accepted text
//! written back as `key=value` entries reads back to the same options.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portkeeper_api::dhcp::{Family, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let family = if first & 1 == 0 { Family::V4 } else { Family::V6 };
    if let Ok(options) = parse(family, text) {
        let written: Vec<String> = options
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace(',', ";")))
            .collect();
        assert_eq!(parse(family, &written.join(",")), Ok(options), "{text:?}");
    }
});
