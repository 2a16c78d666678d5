//! The node agent reads a plugin's result from its stdout: addresses are taken from any JSON
//! without panicking, and only from `ips` entries.
#![no_main]

use kind_e2e::cni::result_ips;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(result) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let ips = result_ips(&result);
    let listed = result.get("ips").and_then(|v| v.as_array()).map_or(0, Vec::len);
    assert!(ips.len() <= listed);
});
