//! A pod's nic key and name: the one place the controller computes them.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use portkeeper_api::allocation::port_name;
use portkeeper_api::annotations::DEFAULT_PROVIDER;
use portkeeper_api::kubevirt;
use portkeeper_engine::NicKey;

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
