//! The controller's allocation as written on the pod, and waiting for it with a watch.

use crate::cni::{CniError, ErrorCode, PodRef};
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use portkeeper_api::allocation as contract;
use portkeeper_api::annotations::NetworkKeys;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// Everything the node needs to wire the pod, from its allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// Addresses with the prefix length of their subnet, v4 before v6 as annotated.
    pub addresses: Vec<IpNet>,
    /// Gateways, one per family present.
    pub gateways: Vec<IpAddr>,
    /// The MAC.
    pub mac: [u8; 6],
    /// The OVN logical switch port name: `<pod>.<ns>`, or `<vm>.<ns>` for a KubeVirt launcher pod.
    pub iface_id: String,
}

/// Reads the allocation of the primary network (the contract in `portkeeper-api`); `Ok(None)`
/// until `allocated` is `"true"`.
pub fn from_annotations(
    pod: &PodRef,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<Allocation>, CniError> {
    let keys = NetworkKeys::primary();
    let Some(allocated) =
        contract::Allocation::from_annotations(&keys, annotations).map_err(|e| {
            CniError::new(
                ErrorCode::AllocationUnavailable,
                format!("pod {}/{} {e}", pod.namespace, pod.name),
            )
        })?
    else {
        return Ok(None);
    };
    Ok(Some(Allocation {
        addresses: allocated.networks(),
        gateways: allocated.gateways(),
        mac: macaddr::MacAddr6::from(allocated.mac).into_array(),
        iface_id: allocated
            .port_name(&keys, &pod.name, &pod.namespace)
            .to_string(),
    }))
}

/// Waits up to `timeout` for the pod's allocation, watching only that pod (field selector on its name).
///
/// A pod whose UID differs from the one the runtime passed is a newer pod of the same name: the
/// runtime's sandbox is stale, so the wait fails at once instead of wiring the wrong pod.
pub async fn wait(client: Client, pod: &PodRef, timeout: Duration) -> Result<Allocation, CniError> {
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", pod.name));
    let mut pods = watcher(api, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    let wait_for = async {
        loop {
            match pods.try_next().await {
                Ok(Some(seen)) => {
                    if let (Some(want), Some(got)) = (&pod.uid, &seen.metadata.uid)
                        && want != got
                    {
                        return Err(CniError::new(
                            ErrorCode::UnknownContainer,
                            format!(
                                "pod {}/{} now has UID {got}, not {want}: the sandbox belongs to a deleted pod",
                                pod.namespace, pod.name
                            ),
                        ));
                    }
                    let annotations = seen.metadata.annotations.unwrap_or_default();
                    if let Some(allocation) = from_annotations(pod, &annotations)? {
                        return Ok(allocation);
                    }
                }
                Ok(None) => return Err(CniError::new(ErrorCode::IoFailure, "the pod watch ended")),
                Err(e) => {
                    tracing::warn!(namespace = %pod.namespace, pod = %pod.name, error = %e, "pod watch failed; retrying");
                }
            }
        }
    };
    tokio::time::timeout(timeout, wait_for).await.unwrap_or_else(|_| {
        Err(CniError::new(
            ErrorCode::AllocationUnavailable,
            format!(
                "pod {}/{} got no address allocation (ovn.kubernetes.io/allocated=true) within {} s: check that portkeeper-controller runs and the pod's events",
                pod.namespace,
                pod.name,
                timeout.as_secs()
            ),
        ))
    })
}

/// How the daemon turns the contract into what it wires; the contract's own rules (every key,
/// each provider, every malformed value) are tested in `portkeeper-api`.
#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: "web-0".into(),
            uid: None,
        }
    }

    /// A single-stack allocation as the controller writes it, with `changed` keys replaced.
    fn written(changed: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut values = BTreeMap::from([
            ("allocated", "true"),
            ("ip_address", "10.16.0.15"),
            ("mac_address", "00:00:00:53:6b:b6"),
            ("cidr", "10.16.0.0/16"),
            ("gateway", "10.16.0.1"),
            ("logical_switch", "ovn-default"),
        ]);
        values.extend(changed.iter().copied());
        values
            .into_iter()
            .map(|(k, v)| (format!("ovn.kubernetes.io/{k}"), v.to_owned()))
            .collect()
    }

    #[test]
    fn nothing_to_wire_until_allocated() {
        let pending = written(&[("allocated", "false")]);
        assert_eq!(from_annotations(&pod(), &pending).unwrap(), None);
    }

    #[test]
    fn the_allocation_becomes_prefixed_addresses_gateways_mac_bytes_and_the_port() {
        let a = from_annotations(&pod(), &written(&[])).unwrap().unwrap();
        assert_eq!(a.addresses, vec!["10.16.0.15/16".parse::<IpNet>().unwrap()]);
        assert_eq!(a.gateways, vec!["10.16.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.mac, [0, 0, 0, 0x53, 0x6b, 0xb6]);
        assert_eq!(a.iface_id, "web-0.default");
        let vm = written(&[("virtualmachine", "vm1")]);
        let a = from_annotations(&pod(), &vm).unwrap().unwrap();
        assert_eq!(a.iface_id, "vm1.default");
    }

    #[test]
    fn a_malformed_allocation_is_unavailable_and_names_pod_and_key() {
        let multicast = written(&[("mac_address", "01:00:5e:00:00:01")]);
        let err = from_annotations(&pod(), &multicast).unwrap_err();
        assert_eq!(err.code, ErrorCode::AllocationUnavailable);
        assert!(
            err.msg.contains("default/web-0") && err.msg.contains("ovn.kubernetes.io/mac_address"),
            "{}",
            err.msg
        );
    }
}
