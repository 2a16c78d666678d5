//! The node agent reads a CNI configuration file: any bytes either parse into a list whose every
//! plugin has a type, or give an error, and a parsed list always yields plugin stdin that names
//! the list and its version.
#![no_main]

use kind_e2e::cni::NetworkConfigList;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(list) = NetworkConfigList::parse(data) else {
        return;
    };
    assert!(!list.plugins.is_empty());
    let prev = serde_json::json!({"cniVersion": list.cni_version, "ips": []});
    for index in 0..list.plugins.len() {
        for prev in [None, Some(&prev)] {
            let conf = list.plugin_config(index, prev);
            assert_eq!(conf["name"], list.name.as_str());
            assert_eq!(conf["cniVersion"], list.cni_version.as_str());
            assert!(conf["type"].is_string());
            assert_eq!(conf.get("prevResult"), prev);
        }
    }
});
