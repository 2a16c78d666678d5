//! A pod's annotations read as a network request (`portkeeper-api` `NetworkRequest`): never
//! panics; a request it accepts is one the controller can act on (a non-empty subnet name, a
//! unicast non-zero MAC, a static address of the requested family), and a refusal names the
//! annotation key, as the pod's `InvalidAnnotation` Event must.
//!
//! Input: one value per line, for `logical_switch`, `ip_address`, `mac_address`, `ip_pool`,
//! `ip_family`, `port_security` and `ip_pools` in that order; a line starting with `-` leaves the
//! key out.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use portkeeper_api::annotations::NetworkKeys;
use portkeeper_api::request::{AddressRequest, NetworkRequest};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let keys = NetworkKeys::primary();
    let order = [
        &keys.logical_switch,
        &keys.ip_address,
        &keys.mac_address,
        &keys.ip_pool,
        &keys.ip_family,
        &keys.port_security,
        &keys.ip_pools,
    ];
    let annotations: BTreeMap<String, String> = order
        .iter()
        .zip(text.split('\n'))
        .filter(|(_, v)| !v.starts_with('-'))
        .map(|(k, v)| ((*k).clone(), v.to_owned()))
        .collect();
    match NetworkRequest::from_annotations(&keys, &annotations) {
        Ok(request) => {
            if let Some(subnet) = &request.logical_switch {
                assert!(!subnet.is_empty() && subnet.trim() == subnet);
            }
            if let Some(mac) = request.mac {
                assert!(!mac.is_multicast(), "{mac} accepted");
                assert_ne!(mac.to_string(), "00:00:00:00:00:00");
            }
            if let AddressRequest::Static(addresses) = &request.addresses {
                assert!(addresses.addresses().next().is_some());
                if let Some(family) = request.family {
                    assert!(addresses.get(family).is_some());
                }
            }
            if let AddressRequest::PoolList(pools) = &request.addresses {
                assert!(!pools.is_empty());
            }
            if request.port_security {
                assert_eq!(annotations[&keys.port_security].trim(), "true");
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                order.iter().any(|k| message.contains(k.as_str())),
                "{message:?} names no annotation key"
            );
        }
    }
});
