//! Fuzzes everything the runtime hands the plugin: the `CNI_*` environment and the stdin configuration.
//!
//! Input layout: `KEY=VALUE` lines for the environment, an empty line, then the stdin bytes.
//! The plugin must never panic, must answer every failure with a CNI error object, and must only
//! forward requests that satisfy the CNI rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portkeeper_cni::cni::invocation::validate_ifname;
use portkeeper_cni::plugin;
use portkeeper_cni::protocol::DaemonResponse;
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (env_part, stdin) = match split {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let env: HashMap<String, String> = String::from_utf8_lossy(env_part)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let outcome = plugin::run(|k| env.get(k).cloned(), stdin, |socket, request| {
        assert!(socket.is_absolute() || portkeeper_cni::cni::config::abstract_name(socket).is_some());
        assert!(validate_ifname(&request.ifname).is_ok());
        assert!(!request.container_id.is_empty());
        assert!(portkeeper_cni::cni::config::is_valid_provider(&request.provider));
        if let Some(netns) = &request.netns {
            assert!(netns.is_absolute());
        }
        Ok(DaemonResponse::Done)
    });
    match (&outcome.stdout, outcome.success) {
        (Some(json), false) => {
            assert!(json["code"].as_u64().is_some_and(|c| c > 0));
            assert!(json["msg"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(json["cniVersion"].is_string());
        }
        (Some(json), true) => assert!(json["cniVersion"].is_string()),
        (None, success) => assert!(success),
    }
});
