//! A node's `resolv.conf` (`parse_resolv_conf`) and a pod's `dns` annotation
//! (`PodDns::from_annotation`): never panic; what the resolv.conf reader keeps is usable (name
//! servers are addresses, domains and options one word each) and written back as a resolv.conf
//! it reads the same; an accepted annotation is written back to the same settings, and the node
//! only fills what the Subnet leaves empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portkeeper_api::dns::{PodDns, parse_resolv_conf};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let node = parse_resolv_conf(text);
    for word in node.search.iter().chain(&node.options).chain(&node.domain) {
        assert!(
            !word.is_empty() && !word.contains(char::is_whitespace),
            "{word:?}"
        );
    }
    assert_eq!(parse_resolv_conf(&node.to_resolv_conf()), node, "{text:?}");
    if let Ok(pod) = PodDns::from_annotation(text) {
        assert_eq!(
            PodDns::from_annotation(&pod.to_annotation()),
            Ok(pod.clone())
        );
        let merged = pod.on_node(Some(&node));
        if !pod.dns.nameservers.is_empty() || !pod.from_node {
            assert_eq!(merged.nameservers, pod.dns.nameservers);
        }
        if pod.from_node && pod.dns.search.is_empty() {
            assert_eq!(merged.search, node.search);
        }
    }
});
