//! A pod's `k8s.v1.cni.cncf.io/networks` annotation (`portkeeper-api` `networks::parse`), in
//! either form: never panics; what it accepts has one attachment per network and per interface,
//! valid names and interface names, and reads the same again from its JSON form; a refusal names
//! the annotation, as the pod's `InvalidAnnotation` Event must.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use portkeeper_api::networks::{self, NETWORKS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match networks::parse(text, "pods") {
        Ok(all) => {
            let providers: BTreeSet<String> = all.iter().map(|a| a.provider()).collect();
            let interfaces: BTreeSet<&str> = all.iter().map(|a| a.interface.as_str()).collect();
            assert_eq!(providers.len(), all.len());
            assert_eq!(interfaces.len(), all.len());
            for a in &all {
                assert!(!a.name.is_empty() && !a.namespace.contains(['.', '/']));
                assert!((1..=15).contains(&a.interface.len()));
                assert!(!a.interface.contains(['/', ':']));
                if let Some(mac) = a.mac {
                    assert!(!mac.is_multicast());
                }
            }
            let json: Vec<serde_json::Value> = all
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "name": a.name,
                        "namespace": a.namespace,
                        "interface": a.interface,
                        "ips": a.ips.map(|ips| ips.addresses().map(|ip| ip.to_string()).collect::<Vec<_>>()),
                        "mac": a.mac.map(|m| m.to_string()),
                    })
                })
                .collect();
            let again = networks::parse(&serde_json::Value::from(json).to_string(), "other");
            assert_eq!(again.as_ref(), Ok(&all), "{text:?} and its JSON form differ");
        }
        Err(e) => assert!(e.to_string().contains(NETWORKS), "{e}"),
    }
});
