//! `kubeovn.io/v1` IP: the durable record of one nic's addresses, named like its OVN port.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One nic's addresses and owner. The object is named `<pod>.<ns>[.<provider>]`, like the port.
///
/// Every field is always serialised (Kube-OVN writes them all, and readers expect the keys).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "IP",
    doc = "One nic's addresses and owner, named like its OVN logical switch port.",
    plural = "ips",
    shortname = "ip",
    printcolumn = r#"{"name":"V4IP","type":"string","jsonPath":".spec.v4IpAddress"}"#,
    printcolumn = r#"{"name":"V6IP","type":"string","jsonPath":".spec.v6IpAddress"}"#,
    printcolumn = r#"{"name":"Mac","type":"string","jsonPath":".spec.macAddress"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Subnet","type":"string","jsonPath":".spec.subnet"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPSpec {
    /// Pod name, or the VM name for a KubeVirt launcher pod.
    #[serde(default)]
    pub pod_name: String,
    /// The pod's namespace.
    #[serde(default)]
    pub namespace: String,
    /// The Subnet the addresses belong to.
    #[serde(default)]
    pub subnet: String,
    /// Always empty; kept because Kube-OVN's readers expect the key.
    #[serde(default)]
    pub attach_subnets: Vec<String>,
    /// The node the pod runs on, when known.
    #[serde(default)]
    pub node_name: String,
    /// All addresses, comma separated (deprecated in Kube-OVN, still written).
    #[serde(default)]
    pub ip_address: String,
    /// The IPv4 address, if any.
    #[serde(rename = "v4IpAddress", default)]
    pub v4_ip_address: String,
    /// The IPv6 address, if any.
    #[serde(rename = "v6IpAddress", default)]
    pub v6_ip_address: String,
    /// Always empty; kept because Kube-OVN's readers expect the key.
    #[serde(default)]
    pub attach_ips: Vec<String>,
    /// The nic's MAC address.
    #[serde(default)]
    pub mac_address: String,
    /// Always empty; kept because Kube-OVN's readers expect the key.
    #[serde(default)]
    pub attach_macs: Vec<String>,
    /// The sandbox container id, when a CNI reports it.
    #[serde(rename = "containerID", default)]
    pub container_id: String,
    /// `""`, `StatefulSet` or `VirtualMachine`: what decides retention.
    #[serde(default)]
    pub pod_type: String,
}

/// `spec.podType` of a StatefulSet pod's IP.
pub const POD_TYPE_STATEFULSET: &str = "StatefulSet";
/// `spec.podType` of a KubeVirt VM's IP.
pub const POD_TYPE_VIRTUAL_MACHINE: &str = "VirtualMachine";

impl IPSpec {
    /// The addresses recorded in this IP, v4 first, taken from the per-family fields and,
    /// for objects written by old Kube-OVN versions, from `ipAddress`.
    pub fn addresses(&self) -> Vec<&str> {
        let mut out: Vec<&str> = [self.v4_ip_address.as_str(), self.v6_ip_address.as_str()]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect();
        if out.is_empty() {
            out = self
                .ip_address
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .collect();
        }
        out
    }
}
