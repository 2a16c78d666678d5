//! `kubeovn.io/v1` IP: the durable record of one nic's addresses, named like its OVN port.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One nic's addresses and owner. The object is named `<pod>.<ns>[.<provider>]`, like the port.
///
/// Empty fields are left out: Kube-OVN's readers treat a missing key as empty, and the local
/// v1.20 test API server rejects empty strings as `null`.
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
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    /// The pod's namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The Subnet the addresses belong to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subnet: String,
    /// Always empty; kept because Kube-OVN's readers expect the key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attach_subnets: Vec<String>,
    /// The node the pod runs on, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// All addresses, comma separated (deprecated in Kube-OVN, still written).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip_address: String,
    /// The IPv4 address, if any.
    #[serde(
        rename = "v4IpAddress",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub v4_ip_address: String,
    /// The IPv6 address, if any.
    #[serde(
        rename = "v6IpAddress",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub v6_ip_address: String,
    /// Always empty; kept because Kube-OVN's readers expect the key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attach_ips: Vec<String>,
    /// The nic's MAC address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
    /// Always empty; kept because Kube-OVN's readers expect the key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attach_macs: Vec<String>,
    /// The sandbox container id, when a CNI reports it.
    #[serde(
        rename = "containerID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub container_id: String,
    /// `""`, `StatefulSet` or `VirtualMachine`: what decides retention.
    #[serde(default, skip_serializing_if = "String::is_empty")]
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
