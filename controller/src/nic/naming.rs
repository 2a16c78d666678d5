//! A pod's nic key and name: the one place the controller computes them.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use portkeeper_api::allocation::port_name;
use portkeeper_api::annotations::DEFAULT_PROVIDER;
use portkeeper_api::kubevirt;
use portkeeper_engine::{Lease, NicKey};

use crate::stores::Stores;

/// Whether a pod needs (or keeps) addresses: not host-network, not finished, not terminating.
pub fn wants_address(pod: &Pod) -> bool {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    !host_network && !finished(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// Whether a pod reached a terminal phase (`Succeeded` or `Failed`, e.g. a Job's pod): its
/// containers never run again, whatever its `restartPolicy`.
pub fn finished(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
}

/// The nic key of a pod's primary network: `<pod>.<ns>`, or `<vm>.<ns>` for a virt-launcher
/// pod, so every launcher pod of a VM shares one port, IP resource and MAC. The one place the
/// controller computes a key, by the contract's port-name rule.
pub fn key(pod: &Pod) -> NicKey {
    port_name(
        &name(pod),
        &pod.namespace().unwrap_or_default(),
        DEFAULT_PROVIDER,
    )
}

/// The name part of a pod's nic key, port and IP resource: the VM for launcher pods, else the
/// pod.
pub fn name(pod: &Pod) -> String {
    launcher_vm(pod).map_or_else(|| pod.name_any(), str::to_owned)
}

/// The VM a virt-launcher pod runs, from KubeVirt's labels.
pub fn launcher_vm(pod: &Pod) -> Option<&str> {
    let labels = pod.labels();
    if labels.get(kubevirt::LABEL_APP).map(String::as_str) != Some(kubevirt::LAUNCHER_APP) {
        return None;
    }
    labels
        .get(kubevirt::LABEL_VM_NAME)
        .map(String::as_str)
        .filter(|n| !n.is_empty())
}

/// The name (pod or VM) and namespace of a nic key `<name>.<ns>[.<provider>]`, where
/// `provider` is the provider of the nic's Subnet. A namespace has no `.`, a pod name may.
pub fn split<'a>(key: &'a NicKey, provider: &str) -> Option<(&'a str, &'a str)> {
    let key = key.as_str();
    let rest = if provider == DEFAULT_PROVIDER {
        key
    } else {
        key.strip_suffix(provider)
            .and_then(|r| r.strip_suffix('.'))
            .unwrap_or(key)
    };
    rest.rsplit_once('.')
}

/// The provider of a Subnet as the caches hold it (`ovn` when unknown).
pub fn provider_of(stores: &Stores, subnet: &str) -> String {
    stores.subnet(subnet).map_or_else(
        || DEFAULT_PROVIDER.to_owned(),
        |s| s.spec.provider_or_default().to_owned(),
    )
}

/// The name (pod or VM) and namespace a lease's nic belongs to, and its provider: as its IP
/// resource records them when there is one (also for a Subnet already deleted), else by its
/// Subnet's provider.
pub fn holder_of(stores: &Stores, lease: &Lease) -> Option<(String, String, String)> {
    let key = lease.key.as_str();
    if let Some(ip) = stores.ips.get(&ObjectRef::new(key))
        && !ip.spec.pod_name.is_empty()
        && !ip.spec.namespace.is_empty()
        && let Some(rest) = key.strip_prefix(&format!("{}.{}", ip.spec.pod_name, ip.spec.namespace))
        && (rest.is_empty() || rest.starts_with('.'))
    {
        let provider = rest.strip_prefix('.').unwrap_or(DEFAULT_PROVIDER);
        return Some((
            ip.spec.pod_name.clone(),
            ip.spec.namespace.clone(),
            provider.to_owned(),
        ));
    }
    let provider = provider_of(stores, &lease.subnet);
    let (name, namespace) = split(&lease.key, &provider)?;
    Some((name.to_owned(), namespace.to_owned(), provider))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_name_and_namespace_by_their_provider() {
        let key = |s: &str| NicKey::from(s);
        assert_eq!(split(&key("web.shop"), "ovn"), Some(("web", "shop")));
        assert_eq!(split(&key("a.b.shop"), "ovn"), Some(("a.b", "shop")));
        assert_eq!(
            split(&key("web.shop.blue.nets.ovn"), "blue.nets.ovn"),
            Some(("web", "shop"))
        );
        assert_eq!(
            split(&key("w.x.shop.blue.nets.ovn"), "blue.nets.ovn"),
            Some(("w.x", "shop"))
        );
        assert_eq!(
            split(&key("web.shop"), "blue.nets.ovn"),
            Some(("web", "shop")),
            "a primary nic on an attachment's Subnet still splits"
        );
        assert_eq!(split(&key("web"), "ovn"), None);
    }
}
