//! What Multus does for a pod, done by the node agent (Multus is not in Debian; the kind
//! scripts install the real one): read the pod's `k8s.v1.cni.cncf.io/networks` selection (with
//! portkeeper's own reader, the controller's), fetch each NetworkAttachmentDefinition's CNI
//! configuration, run it as a delegate after the primary network with the selection's interface
//! name (`net1`, `net2`… unless named), `CHECK` it in order and `DEL` it in reverse before the
//! primary network, and publish every interface in `k8s.v1.cni.cncf.io/network-status`.
//!
//! The configuration read at `ADD` is kept in the sandbox record, so `CHECK` and `DEL` run the
//! same delegate even when the NetworkAttachmentDefinition changed or is gone, as Multus caches it.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::{Client, ResourceExt};
use portkeeper_api::networks;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Error;
use crate::cni::NetworkConfigList;

/// The NetworkAttachmentDefinition resource (`k8s.cni.cncf.io/v1`).
pub fn nad_resource() -> ApiResource {
    ApiResource {
        group: "k8s.cni.cncf.io".into(),
        version: "v1".into(),
        api_version: "k8s.cni.cncf.io/v1".into(),
        kind: "NetworkAttachmentDefinition".into(),
        plural: "network-attachment-definitions".into(),
    }
}

/// One attachment of a sandbox: which network, on which interface, with which configuration,
/// and its `ADD` result once it succeeded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttachedNetwork {
    /// `<namespace>/<name>` of the NetworkAttachmentDefinition.
    pub network: String,
    /// The interface inside the pod.
    pub interface: String,
    /// The NetworkAttachmentDefinition's CNI configuration as read at `ADD`.
    pub config: String,
    /// The delegate's `ADD` result; `None` until it succeeded.
    pub result: Option<Value>,
}

impl AttachedNetwork {
    /// The delegate's configuration list.
    pub fn config_list(&self) -> Result<NetworkConfigList, Error> {
        NetworkConfigList::parse(self.config.as_bytes()).map_err(|reason| {
            Error::Network(format!(
                "NetworkAttachmentDefinition {}: config is not a CNI configuration: {reason}",
                self.network
            ))
        })
    }
}

/// The attachments `pod` selects, in order, each with its NetworkAttachmentDefinition's
/// configuration. A bad selection or a missing definition is an error naming it.
pub async fn resolve(client: &Client, pod: &Pod) -> Result<Vec<AttachedNetwork>, Error> {
    let Some(value) = pod.annotations().get(networks::NETWORKS) else {
        return Ok(Vec::new());
    };
    let selected = networks::parse(value, &pod.namespace().unwrap_or_default())
        .map_err(|e| Error::Network(e.to_string()))?;
    let mut out = Vec::with_capacity(selected.len());
    for attachment in selected {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &attachment.namespace, &nad_resource());
        let network = format!("{}/{}", attachment.namespace, attachment.name);
        let definition = api.get_opt(&attachment.name).await?.ok_or_else(|| {
            Error::Network(format!("NetworkAttachmentDefinition {network} not found"))
        })?;
        let config = definition.data["spec"]["config"]
            .as_str()
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| {
                Error::Network(format!(
                    "NetworkAttachmentDefinition {network} has no spec.config"
                ))
            })?
            .to_owned();
        let delegate = AttachedNetwork {
            network,
            interface: attachment.interface,
            config,
            result: None,
        };
        delegate.config_list()?;
        out.push(delegate);
    }
    Ok(out)
}

/// Multus's `network-status`: the primary network (`default: true`) and every attachment, each
/// with its interface, addresses and MAC as its CNI result gives them.
pub fn network_status(primary: &str, result: &Value, attached: &[AttachedNetwork]) -> Value {
    let mut out = vec![entry(primary, result, true)];
    out.extend(
        attached
            .iter()
            .filter_map(|a| Some(entry(&a.network, a.result.as_ref()?, false))),
    );
    Value::Array(out)
}

/// One element: the result's interface inside the sandbox, and the addresses on it.
fn entry(name: &str, result: &Value, default: bool) -> Value {
    let interfaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    let index = interfaces
        .iter()
        .position(|i| i["sandbox"].as_str().is_some_and(|s| !s.is_empty()));
    let interface = index.map(|i| &interfaces[i]);
    let ips: Vec<&str> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|ip| match ip["interface"].as_u64() {
            Some(i) => Some(i as usize) == index,
            None => true,
        })
        .filter_map(|ip| ip["address"].as_str()?.split('/').next())
        .collect();
    let mut status = json!({
        "name": name,
        "interface": interface.and_then(|i| i["name"].as_str()),
        "ips": ips,
        "mac": interface.and_then(|i| i["mac"].as_str()),
        "dns": {},
    });
    if default {
        status["default"] = json!(true);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ifname: &str, mac: &str, ip: &str) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "veth-host", "mac": "0a:00:00:00:00:01"},
                {"name": ifname, "mac": mac, "sandbox": "/run/netns/p"},
            ],
            "ips": [{"address": ip, "interface": 1}],
        })
    }

    #[test]
    fn network_status_lists_the_primary_network_then_each_attachment() {
        let attached = [
            AttachedNetwork {
                network: "nets/blue".into(),
                interface: "net1".into(),
                config: "{}".into(),
                result: Some(result("net1", "02:00:00:00:00:07", "10.9.0.7/24")),
            },
            AttachedNetwork {
                network: "nets/red".into(),
                interface: "net2".into(),
                config: "{}".into(),
                result: None,
            },
        ];
        let status = network_status(
            "portkeeper",
            &result("eth0", "0a:58:0a:10:00:05", "10.16.0.5/16"),
            &attached,
        );
        assert_eq!(
            status,
            json!([
                {"name": "portkeeper", "interface": "eth0", "ips": ["10.16.0.5"],
                 "mac": "0a:58:0a:10:00:05", "dns": {}, "default": true},
                {"name": "nets/blue", "interface": "net1", "ips": ["10.9.0.7"],
                 "mac": "02:00:00:00:00:07", "dns": {}},
            ]),
            "an attachment without a result yet is not listed"
        );
    }

    #[test]
    fn a_definition_config_must_be_a_cni_configuration() {
        let bad = AttachedNetwork {
            network: "nets/blue".into(),
            interface: "net1".into(),
            config: r#"{"cniVersion":"1.0.0"}"#.into(),
            result: None,
        };
        let err = bad.config_list().unwrap_err().to_string();
        assert!(err.contains("nets/blue"), "{err}");
        let good = AttachedNetwork {
            config: r#"{"cniVersion":"1.0.0","name":"blue","type":"kube-ovn","provider":"blue.nets.ovn"}"#
                .into(),
            ..bad
        };
        assert_eq!(good.config_list().unwrap().plugins.len(), 1);
    }
}
