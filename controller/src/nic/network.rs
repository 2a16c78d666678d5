//! A pod's networks: the primary one, and one per attachment network it selects
//! (`k8s.v1.cni.cncf.io/networks`) that a Subnet of provider `<nad>.<ns>.ovn` serves. Each is a
//! nic of its own, `<pod>.<ns>.<provider>`, with its own annotations
//! (`<provider>.kubernetes.io/...`), port, IP resource and engine binding.
//!
//! An attachment no Subnet serves belongs to another CNI plugin (a macvlan network, say) and is
//! left alone, as Kube-OVN leaves networks of other types.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use portkeeper_api::Subnet;
use portkeeper_api::allocation::port_name;
use portkeeper_api::annotations::{DEFAULT_PROVIDER, NetworkKeys, allocated_providers};
use portkeeper_api::networks::{self, Attachment, NETWORKS};
use portkeeper_api::request::{AddressRequest, AnnotationError, NetworkRequest};
use portkeeper_engine::{EngineError, NicKey};

use super::naming::name;
use crate::error::{RejectReason, Rejection};

/// One network of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// The network's annotation keys (its provider among them).
    pub keys: NetworkKeys,
    /// The nic: `<name>.<ns>` on the primary network, `<name>.<ns>.<provider>` on another.
    pub key: NicKey,
    /// For an attachment network: the selection and the Subnet serving it.
    pub attachment: Option<Served>,
}

/// An attachment network a Subnet serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// The pod's selection of it.
    pub selection: Attachment,
    /// The Subnet: the one the provider's `logical_switch` names, else the one whose provider
    /// is the attachment's.
    pub subnet: String,
}

impl Network {
    /// The pod's request on this network: its annotations, with the selection's `ips` and
    /// `mac` in place of `ip_address` and `mac_address` (Kube-OVN copies them over).
    pub fn request(&self, pod: &Pod) -> Result<NetworkRequest, AnnotationError> {
        let mut request = NetworkRequest::from_annotations(&self.keys, pod.annotations())?;
        if let Some(served) = &self.attachment {
            if let Some(ips) = served.selection.ips {
                request.addresses = AddressRequest::Static(ips);
            }
            if let Some(mac) = served.selection.mac {
                request.mac = Some(mac);
            }
        }
        Ok(request)
    }
}

/// The attachments a pod selects; an absent annotation selects none.
pub fn attachments(pod: &Pod) -> Result<Vec<Attachment>, networks::NetworksError> {
    match pod.annotations().get(NETWORKS) {
        None => Ok(Vec::new()),
        Some(value) => networks::parse(value, &pod.namespace().unwrap_or_default()),
    }
}

/// The primary network of a pod.
pub fn primary(pod: &Pod) -> Network {
    Network {
        keys: NetworkKeys::primary(),
        key: port_name(
            &name(pod),
            &pod.namespace().unwrap_or_default(),
            DEFAULT_PROVIDER,
        ),
        attachment: None,
    }
}

/// The networks portkeeper allocates for a pod, the primary one first, then its attachments
/// in the annotation's order. A bad networks annotation, or an attachment whose Subnet cannot
/// serve it, refuses the pod as a whole: nothing is allocated until it is fixed.
pub fn networks(pod: &Pod, subnets: &[Arc<Subnet>]) -> Result<Vec<Network>, Rejection> {
    let invalid = |message: String| Rejection {
        reason: RejectReason::InvalidAnnotation,
        message,
    };
    let mut out = vec![primary(pod)];
    let (pod_name, namespace) = (name(pod), pod.namespace().unwrap_or_default());
    for selection in attachments(pod).map_err(|e| invalid(e.to_string()))? {
        let provider = selection.provider();
        let keys = NetworkKeys::for_provider(&provider);
        let Some(subnet) = serving_subnet(pod, &selection, &keys, subnets)? else {
            continue;
        };
        out.push(Network {
            key: port_name(&pod_name, &namespace, &provider),
            keys,
            attachment: Some(Served { selection, subnet }),
        });
    }
    Ok(out)
}

/// The Subnet serving an attachment, or `None` when none does (another plugin's network).
fn serving_subnet(
    pod: &Pod,
    selection: &Attachment,
    keys: &NetworkKeys,
    subnets: &[Arc<Subnet>],
) -> Result<Option<String>, Rejection> {
    let provider = &keys.provider;
    let subnet_name = |s: &Subnet| s.metadata.name.clone().unwrap_or_default();
    if let Some(wanted) = pod.annotations().get(&keys.logical_switch) {
        let wanted = wanted.trim();
        let subnet = subnets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(wanted))
            .ok_or_else(|| {
                Rejection::from(EngineError::UnknownSubnet {
                    subnet: wanted.to_owned(),
                })
            })?;
        if subnet.spec.provider_or_default() != provider {
            return Err(Rejection {
                reason: RejectReason::AcquireAddressFailed,
                message: format!(
                    "annotation {} names subnet {wanted}, whose provider is {}, not the attachment's {provider}",
                    keys.logical_switch,
                    subnet.spec.provider_or_default()
                ),
            });
        }
        return Ok(Some(wanted.to_owned()));
    }
    let mut serving: Vec<&Subnet> = subnets
        .iter()
        .map(Arc::as_ref)
        .filter(|s| s.spec.provider_or_default() == provider)
        .collect();
    serving.sort_by_key(|s| subnet_name(s));
    if let Some(subnet) = serving.first() {
        return Ok(Some(subnet_name(subnet)));
    }
    let ipam_only = selection.ipam_provider();
    if let Some(subnet) = subnets
        .iter()
        .find(|s| s.spec.provider_or_default() == ipam_only)
    {
        return Err(Rejection {
            reason: RejectReason::AcquireAddressFailed,
            message: format!(
                "attachment {}/{} is served by subnet {} with the IPAM-only provider {ipam_only}, which portkeeper does not serve; give the Subnet provider {provider}",
                selection.namespace,
                selection.name,
                subnet_name(subnet),
            ),
        });
    }
    Ok(None)
}

/// Every nic a pod holds or asks for: the primary one, each attachment it selects, and each
/// network its annotations mark allocated (one it no longer selects included). What a deleted
/// pod releases and what counts as a live pod's nic.
pub fn keys_of(pod: &Pod) -> BTreeSet<NicKey> {
    let (pod_name, namespace) = (name(pod), pod.namespace().unwrap_or_default());
    let mut out = BTreeSet::from([primary(pod).key]);
    for selection in attachments(pod).unwrap_or_default() {
        out.insert(port_name(&pod_name, &namespace, &selection.provider()));
    }
    for provider in allocated_providers(pod.annotations()) {
        out.insert(port_name(&pod_name, &namespace, provider));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "web", "namespace": "shop", "uid": "u", "annotations": annotations }
        }))
        .unwrap()
    }

    fn subnet(name: &str, provider: &str) -> Arc<Subnet> {
        let mut s = Subnet::new(name, Default::default());
        s.spec.provider = provider.into();
        s.spec.cidr_block = "10.9.0.0/24".into();
        Arc::new(s)
    }

    fn subnets() -> Vec<Arc<Subnet>> {
        vec![
            subnet("ovn-default", ""),
            subnet("blue", "blue.shop.ovn"),
            subnet("red", "red.nets.ovn"),
            subnet("red2", "red.nets.ovn"),
            subnet("mac", "macvlan.shop"),
        ]
    }

    #[test]
    fn the_primary_network_comes_first_then_each_served_attachment_in_order() {
        let p = pod(json!({ NETWORKS: "nets/red@data, blue, other" }));
        let all = networks(&p, &subnets()).unwrap();
        let got: Vec<(&str, &str, Option<&str>)> = all
            .iter()
            .map(|n| {
                (
                    n.key.as_str(),
                    n.keys.provider.as_str(),
                    n.attachment.as_ref().map(|a| a.subnet.as_str()),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("web.shop", "ovn", None),
                ("web.shop.red.nets.ovn", "red.nets.ovn", Some("red")),
                ("web.shop.blue.shop.ovn", "blue.shop.ovn", Some("blue")),
            ],
            "`other` has no Subnet: another plugin's network"
        );
        assert_eq!(
            all[1].attachment.as_ref().unwrap().selection.interface,
            "data"
        );
        assert_eq!(
            all[1].keys.ip_address,
            "red.nets.ovn.kubernetes.io/ip_address"
        );
    }

    #[test]
    fn the_provider_logical_switch_picks_a_subnet_of_the_same_provider() {
        let p = pod(json!({
            NETWORKS: "nets/red",
            "red.nets.ovn.kubernetes.io/logical_switch": "red2",
        }));
        let all = networks(&p, &subnets()).unwrap();
        assert_eq!(all[1].attachment.as_ref().unwrap().subnet, "red2");
        for (wanted, reason) in [
            ("blue", RejectReason::AcquireAddressFailed),
            ("nowhere", RejectReason::AcquireAddressFailed),
        ] {
            let p = pod(json!({
                NETWORKS: "nets/red",
                "red.nets.ovn.kubernetes.io/logical_switch": wanted,
            }));
            let err = networks(&p, &subnets()).unwrap_err();
            assert_eq!(err.reason, reason, "{err}");
            assert!(err.message.contains(wanted), "{err}");
        }
    }

    #[test]
    fn a_bad_annotation_or_an_ipam_only_subnet_refuses_the_pod() {
        let err = networks(&pod(json!({ NETWORKS: "a/b/c" })), &subnets()).unwrap_err();
        assert_eq!(err.reason, RejectReason::InvalidAnnotation);
        assert!(err.message.contains(NETWORKS));
        let err = networks(&pod(json!({ NETWORKS: "macvlan" })), &subnets()).unwrap_err();
        assert_eq!(err.reason, RejectReason::AcquireAddressFailed);
        assert!(err.message.contains("macvlan.shop"), "{err}");
    }

    #[test]
    fn the_selection_s_ips_and_mac_win_over_the_provider_annotations() {
        let p = pod(json!({
            NETWORKS: r#"[{"name":"blue","ips":["10.9.0.7"],"mac":"02:00:00:00:00:07"}]"#,
            "blue.shop.ovn.kubernetes.io/ip_address": "10.9.0.8",
            "blue.shop.ovn.kubernetes.io/ip_family": "ipv4",
        }));
        let all = networks(&p, &subnets()).unwrap();
        let request = all[1].request(&p).unwrap();
        assert_eq!(
            request.addresses,
            AddressRequest::Static(portkeeper_engine::parse::parse_ip_address("10.9.0.7").unwrap())
        );
        assert_eq!(request.mac.unwrap().to_string(), "02:00:00:00:00:07");
        let primary = all[0].request(&p).unwrap();
        assert_eq!(primary.addresses, AddressRequest::Any);
    }

    #[test]
    fn a_pod_s_keys_include_what_it_selects_and_what_it_was_allocated() {
        let p = pod(json!({
            NETWORKS: "blue",
            "old.shop.ovn.kubernetes.io/allocated": "true",
        }));
        let keys: Vec<String> = keys_of(&p).iter().map(|k| k.to_string()).collect();
        assert_eq!(
            keys,
            vec![
                "web.shop",
                "web.shop.blue.shop.ovn",
                "web.shop.old.shop.ovn"
            ]
        );
        let bad = pod(json!({ NETWORKS: "a/b/c" }));
        assert_eq!(
            keys_of(&bad).len(),
            1,
            "a bad annotation still names the primary nic"
        );
    }
}
