//! The controller's allocation as written on the pod, and waiting for it with a watch.

use crate::cni::config::DEFAULT_PROVIDER;
use crate::cni::{CniError, ErrorCode, PodRef};
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use portkeeper_api::allocation as contract;
use portkeeper_api::annotations::NetworkKeys;
use portkeeper_api::dns::PodDns;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// Everything the node needs to wire the pod, from its allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// Addresses with the prefix length of their subnet, v4 before v6 as annotated.
    pub addresses: Vec<IpNet>,
    /// Default-route next hops, one per family present; none on an attachment network, whose
    /// interface gets its subnet's route only (the pod's default route stays on eth0).
    pub gateways: Vec<IpAddr>,
    /// The MAC.
    pub mac: [u8; 6],
    /// The OVN logical switch port name: `<pod>.<ns>`, or `<vm>.<ns>` for a KubeVirt launcher pod,
    /// with `.<provider>` appended on an attachment network: each nic binds its own port.
    pub iface_id: String,
    /// The Subnet's DNS settings for the CNI result, if it has any.
    pub dns: Option<PodDns>,
}

/// Reads the allocation of `provider`'s network (the contract in `portkeeper-api`); `Ok(None)`
/// until its `allocated` is `"true"`.
pub fn from_annotations(
    pod: &PodRef,
    provider: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<Allocation>, CniError> {
    let keys = NetworkKeys::for_provider(provider);
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
        gateways: if provider == DEFAULT_PROVIDER {
            allocated.gateways()
        } else {
            Vec::new()
        },
        mac: macaddr::MacAddr6::from(allocated.mac).into_array(),
        iface_id: allocated
            .port_name(&keys, &pod.name, &pod.namespace)
            .to_string(),
        dns: allocated.dns,
    }))
}

/// Waits up to `timeout` for the pod's allocation, watching only that pod (field selector on its name).
///
/// A pod whose UID differs from the one the runtime passed is a newer pod of the same name: the
/// runtime's sandbox is stale, so the wait fails at once instead of wiring the wrong pod.
pub async fn wait(
    client: Client,
    pod: &PodRef,
    provider: &str,
    timeout: Duration,
) -> Result<Allocation, CniError> {
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
                    if let Some(allocation) = from_annotations(pod, provider, &annotations)? {
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
                "pod {}/{} got no address allocation ({}=true) within {} s: check that portkeeper-controller runs, the pod's events{}",
                pod.namespace,
                pod.name,
                NetworkKeys::for_provider(provider).allocated,
                timeout.as_secs(),
                if provider == DEFAULT_PROVIDER {
                    String::new()
                } else {
                    format!(", and that a Subnet has provider {provider}")
                }
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
        assert_eq!(from_annotations(&pod(), "ovn", &pending).unwrap(), None);
    }

    #[test]
    fn the_allocation_becomes_prefixed_addresses_gateways_mac_bytes_and_the_port() {
        let a = from_annotations(&pod(), "ovn", &written(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(a.addresses, vec!["10.16.0.15/16".parse::<IpNet>().unwrap()]);
        assert_eq!(a.gateways, vec!["10.16.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.mac, [0, 0, 0, 0x53, 0x6b, 0xb6]);
        assert_eq!(a.iface_id, "web-0.default");
        let vm = written(&[("virtualmachine", "vm1")]);
        let a = from_annotations(&pod(), "ovn", &vm).unwrap().unwrap();
        assert_eq!(a.iface_id, "vm1.default");
    }

    #[test]
    fn an_attachment_reads_its_own_keys_binds_its_own_port_and_routes_nothing() {
        let mut annotations = written(&[]);
        let attached: Vec<(String, String)> = written(&[
            ("ip_address", "10.9.0.7"),
            ("cidr", "10.9.0.0/24"),
            ("gateway", "10.9.0.1"),
            ("mac_address", "02:00:00:00:00:07"),
            ("logical_switch", "blue"),
        ])
        .into_iter()
        .map(|(k, v)| {
            (
                k.replace("ovn.kubernetes.io/", "blue.shop.ovn.kubernetes.io/"),
                v,
            )
        })
        .collect();
        assert_eq!(
            from_annotations(&pod(), "blue.shop.ovn", &annotations).unwrap(),
            None,
            "the primary network's allocation is not the attachment's"
        );
        annotations.extend(attached);
        let a = from_annotations(&pod(), "blue.shop.ovn", &annotations)
            .unwrap()
            .unwrap();
        assert_eq!(a.iface_id, "web-0.default.blue.shop.ovn");
        assert_eq!(a.addresses, vec!["10.9.0.7/24".parse::<IpNet>().unwrap()]);
        assert_eq!(a.mac, [2, 0, 0, 0, 0, 7]);
        assert!(a.gateways.is_empty(), "eth0 keeps the default route");
        let primary = from_annotations(&pod(), "ovn", &annotations)
            .unwrap()
            .unwrap();
        assert_eq!(primary.iface_id, "web-0.default");
        assert_eq!(primary.gateways.len(), 1);
    }

    #[test]
    fn a_malformed_allocation_is_unavailable_and_names_pod_and_key() {
        let multicast = written(&[("mac_address", "01:00:5e:00:00:01")]);
        let err = from_annotations(&pod(), "ovn", &multicast).unwrap_err();
        assert_eq!(err.code, ErrorCode::AllocationUnavailable);
        assert!(
            err.msg.contains("default/web-0") && err.msg.contains("ovn.kubernetes.io/mac_address"),
            "{}",
            err.msg
        );
    }
}
