//! A pod's allocation annotations read as the CNI daemon reads them (`portkeeper-api`
//! `Allocation::from_annotations`): never panics; an allocation it accepts is one the daemon can
//! wire (every address inside its family's CIDR with a gateway of its family) and is written back
//! to exactly the same allocation; a refusal names the annotation key.
//!
//! Input: one value per line, for `ip_address`, `cidr`, `gateway`, `mac_address`,
//! `logical_switch`, `routed`, `virtualmachine` and `dns` in that order; a line starting with `-`
//! leaves the key out. `allocated` is always `"true"`.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use portkeeper_api::allocation::Allocation;
use portkeeper_api::annotations::NetworkKeys;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let keys = NetworkKeys::primary();
    let order = [
        &keys.ip_address,
        &keys.cidr,
        &keys.gateway,
        &keys.mac_address,
        &keys.logical_switch,
        &keys.routed,
        &keys.virtual_machine,
        &keys.dns,
    ];
    let mut annotations: BTreeMap<String, String> = order
        .iter()
        .zip(text.split('\n'))
        .filter(|(_, v)| !v.starts_with('-'))
        .map(|(k, v)| ((*k).clone(), v.to_owned()))
        .collect();
    annotations.insert(keys.allocated.clone(), "true".into());
    match Allocation::from_annotations(&keys, &annotations) {
        Ok(Some(allocation)) => {
            let networks = allocation.networks();
            assert_eq!(networks.len(), allocation.addresses.addresses().count());
            assert_eq!(allocation.gateways().len(), networks.len());
            for net in &networks {
                assert!(allocation.cidr.get(portkeeper_engine::Family::of(net.addr())).is_some());
            }
            let written = allocation.to_annotations(&keys);
            assert_eq!(
                Allocation::from_annotations(&keys, &written),
                Ok(Some(allocation))
            );
        }
        Ok(None) => unreachable!("allocated is true"),
        Err(e) => {
            assert!(order.contains(&&e.key), "{e} names no annotation key");
        }
    }
});
