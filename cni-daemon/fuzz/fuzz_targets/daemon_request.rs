//! Fuzzes the daemon's decoding of a request read from its socket: never a panic, always a clear error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portkeeper_cni::protocol::{DaemonRequest, decode};

fuzz_target!(|data: &[u8]| {
    if let Err(err) = decode::<DaemonRequest>(data, "request") {
        assert!(!err.msg.is_empty());
    }
});
