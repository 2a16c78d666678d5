//! `kubeovn.io/v1` IPPool: a named slice of one subnet that pods or namespaces opt into.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// The pool's addresses and the namespaces confined to it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "IPPool",
    doc = "A named slice of one subnet's addresses that pods or namespaces opt into.",
    plural = "ippools",
    shortname = "ippool",
    status = "IPPoolStatus",
    printcolumn = r#"{"name":"Subnet","type":"string","jsonPath":".spec.subnet"}"#,
    printcolumn = r#"{"name":"EnableAddressSet","type":"boolean","jsonPath":".spec.enableAddressSet"}"#,
    printcolumn = r#"{"name":"IPs","type":"string","jsonPath":".spec.ips"}"#,
    printcolumn = r#"{"name":"V4Used","type":"number","jsonPath":".status.v4UsingIPs"}"#,
    printcolumn = r#"{"name":"V4Available","type":"number","jsonPath":".status.v4AvailableIPs"}"#,
    printcolumn = r#"{"name":"V6Used","type":"number","jsonPath":".status.v6UsingIPs"}"#,
    printcolumn = r#"{"name":"V6Available","type":"number","jsonPath":".status.v6AvailableIPs"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// The Subnet the pool is carved from.
    pub subnet: String,
    /// Namespaces whose pods (without their own `ip_pool`) must take addresses from this pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Entries `ip`, `first..last` or a CIDR; families may be mixed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// Kube-OVN keeps an OVN address set of the pool's addresses for ACLs. Not implemented.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_address_set: bool,
    /// portkeeper's extension (Spiderpool's `nodeAffinity`): a label selector over Node labels.
    /// Only pods bound to a matching node may take the pool's addresses, and they are allocated
    /// once bound. Unset: any node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<crate::subnet::LabelSelector>,
}

impl IPPoolSpec {
    /// The fields this IPPool sets that portkeeper does not implement (see
    /// [`crate::subnet::SubnetSpec::unsupported_fields`]).
    pub fn unsupported_fields(&self) -> Vec<&'static str> {
        [("enableAddressSet", self.enable_address_set)]
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect()
    }
}

/// Pool accounting, published by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// IPv4 addresses of the pool still available.
    #[serde(rename = "v4AvailableIPs", default)]
    pub v4_available_ips: f64,
    /// IPv4 available addresses as a range list.
    #[serde(
        rename = "v4AvailableIPRange",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub v4_available_ip_range: String,
    /// IPv4 addresses of the pool in use.
    #[serde(rename = "v4UsingIPs", default)]
    pub v4_using_ips: f64,
    /// IPv4 addresses in use as a range list.
    #[serde(
        rename = "v4UsingIPRange",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub v4_using_ip_range: String,
    /// IPv6 addresses of the pool still available.
    #[serde(rename = "v6AvailableIPs", default)]
    pub v6_available_ips: f64,
    /// IPv6 available addresses as a range list.
    #[serde(
        rename = "v6AvailableIPRange",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub v6_available_ip_range: String,
    /// IPv6 addresses of the pool in use.
    #[serde(rename = "v6UsingIPs", default)]
    pub v6_using_ips: f64,
    /// IPv6 addresses in use as a range list.
    #[serde(
        rename = "v6UsingIPRange",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub v6_using_ip_range: String,
    /// Readiness and failure conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
