//! The controller's allocation as written on the pod, and waiting for it with a watch.

use crate::cni::{CniError, ErrorCode, PodRef};
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use portkeeper_api::annotations::NetworkKeys;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// Everything the node needs to wire the pod, read from its annotations.
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

/// Reads the allocation of the primary network; `Ok(None)` until `allocated` is `"true"`.
pub fn from_annotations(
    pod: &PodRef,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<Allocation>, CniError> {
    let keys = NetworkKeys::primary();
    if annotations.get(&keys.allocated).map(String::as_str) != Some("true") {
        return Ok(None);
    }
    let get = |key: &str| {
        annotations
            .get(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad(pod, key, "is missing although allocated is true"))
    };
    let ips = split_parse::<IpAddr>(pod, &keys.ip_address, get(&keys.ip_address)?)?;
    let cidrs = split_parse::<IpNet>(pod, &keys.cidr, get(&keys.cidr)?)?;
    let gateways = split_parse::<IpAddr>(pod, &keys.gateway, get(&keys.gateway)?)?;
    let mac_text = get(&keys.mac_address)?;
    let mac: macaddr::MacAddr6 = mac_text.parse().map_err(|_| {
        bad(
            pod,
            &keys.mac_address,
            &format!("{mac_text:?} is not a MAC address"),
        )
    })?;
    if mac.is_multicast() || mac.is_nil() {
        return Err(bad(
            pod,
            &keys.mac_address,
            &format!("{mac_text:?} is not a unicast MAC"),
        ));
    }
    let mut addresses = Vec::with_capacity(ips.len());
    for ip in &ips {
        let cidr = cidrs
            .iter()
            .find(|c| c.addr().is_ipv4() == ip.is_ipv4())
            .ok_or_else(|| {
                bad(
                    pod,
                    &keys.cidr,
                    &format!("has no subnet of the family of {ip}"),
                )
            })?;
        if !cidr.contains(ip) {
            return Err(bad(
                pod,
                &keys.ip_address,
                &format!("{ip} is outside the subnet {cidr}"),
            ));
        }
        addresses.push(
            IpNet::new(*ip, cidr.prefix_len()).expect("prefix length taken from a valid network"),
        );
    }
    let mut gateways_by_family = Vec::new();
    for ip in &ips {
        let gateway = gateways
            .iter()
            .find(|g| g.is_ipv4() == ip.is_ipv4())
            .ok_or_else(|| {
                bad(
                    pod,
                    &keys.gateway,
                    &format!("has no gateway of the family of {ip}"),
                )
            })?;
        if !gateways_by_family.contains(gateway) {
            gateways_by_family.push(*gateway);
        }
    }
    if ips.iter().filter(|ip| ip.is_ipv4()).count() > 1
        || ips.iter().filter(|ip| ip.is_ipv6()).count() > 1
    {
        return Err(bad(
            pod,
            &keys.ip_address,
            "holds more than one address of a family",
        ));
    }
    let owner = annotations
        .get(&keys.virtual_machine)
        .filter(|v| !v.is_empty())
        .unwrap_or(&pod.name);
    Ok(Some(Allocation {
        addresses,
        gateways: gateways_by_family,
        mac: mac.into_array(),
        iface_id: format!("{owner}.{}", pod.namespace),
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

fn split_parse<T: std::str::FromStr>(
    pod: &PodRef,
    key: &str,
    value: &str,
) -> Result<Vec<T>, CniError> {
    value
        .split(',')
        .map(|part| {
            part.trim().parse::<T>().map_err(|_| {
                bad(
                    pod,
                    key,
                    &format!("entry {part:?} of {value:?} does not parse"),
                )
            })
        })
        .collect()
}

fn bad(pod: &PodRef, key: &str, why: &str) -> CniError {
    CniError::new(
        ErrorCode::AllocationUnavailable,
        format!("pod {}/{} annotation {key} {why}", pod.namespace, pod.name),
    )
}

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

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("ovn.kubernetes.io/{k}"), v.to_string()))
            .collect()
    }

    fn dual() -> Vec<(&'static str, &'static str)> {
        vec![
            ("allocated", "true"),
            ("ip_address", "10.16.0.15,fd00:10:16::f"),
            ("mac_address", "00:00:00:53:6b:b6"),
            ("cidr", "10.16.0.0/16,fd00:10:16::/64"),
            ("gateway", "10.16.0.1,fd00:10:16::1"),
            ("logical_switch", "ovn-default"),
        ]
    }

    #[test]
    fn not_allocated_yet() {
        assert_eq!(from_annotations(&pod(), &BTreeMap::new()).unwrap(), None);
        assert_eq!(
            from_annotations(&pod(), &annotations(&[("allocated", "false")])).unwrap(),
            None
        );
    }

    #[test]
    fn dual_stack_allocation() {
        let a = from_annotations(&pod(), &annotations(&dual()))
            .unwrap()
            .unwrap();
        assert_eq!(
            a.addresses,
            vec![
                "10.16.0.15/16".parse::<IpNet>().unwrap(),
                "fd00:10:16::f/64".parse().unwrap()
            ]
        );
        assert_eq!(
            a.gateways,
            vec![
                "10.16.0.1".parse::<IpAddr>().unwrap(),
                "fd00:10:16::1".parse().unwrap()
            ]
        );
        assert_eq!(a.mac, [0, 0, 0, 0x53, 0x6b, 0xb6]);
        assert_eq!(a.iface_id, "web-0.default");
    }

    #[test]
    fn single_stack_v6_from_dual_subnet_uses_only_its_family() {
        let mut pairs = dual();
        pairs[1] = ("ip_address", "fd00:10:16::f");
        let a = from_annotations(&pod(), &annotations(&pairs))
            .unwrap()
            .unwrap();
        assert_eq!(a.addresses.len(), 1);
        assert_eq!(a.gateways, vec!["fd00:10:16::1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn vm_pods_use_the_vm_name() {
        let mut pairs = dual();
        pairs.push(("virtualmachine", "vm1"));
        assert_eq!(
            from_annotations(&pod(), &annotations(&pairs))
                .unwrap()
                .unwrap()
                .iface_id,
            "vm1.default"
        );
    }

    #[test]
    fn malformed_allocations_name_the_key() {
        let cases: Vec<(&str, &str, &str)> = vec![
            ("ip_address", "10.16.0.300", "ip_address"),
            ("ip_address", "", "ip_address"),
            ("ip_address", "10.17.0.1", "ip_address"),
            ("ip_address", "10.16.0.2,10.16.0.3", "ip_address"),
            ("mac_address", "zz:00:00:00:00:00", "mac_address"),
            ("mac_address", "01:00:5e:00:00:01", "mac_address"),
            ("cidr", "10.16.0.0/16", "cidr"),
            ("cidr", "10.16.0.0/99,fd00:10:16::/64", "cidr"),
            ("gateway", "10.16.0.1", "gateway"),
        ];
        for (key, value, named) in cases {
            let mut pairs = dual();
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, value));
            let err = from_annotations(&pod(), &annotations(&pairs)).unwrap_err();
            assert_eq!(err.code, ErrorCode::AllocationUnavailable);
            assert!(err.msg.contains(named), "{key}={value}: {}", err.msg);
        }
    }
}
