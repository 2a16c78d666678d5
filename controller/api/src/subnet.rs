//! `kubeovn.io/v1` Subnet: one address range, realised as one OVN logical switch.
//!
//! Field names and JSON spellings follow Kube-OVN exactly so existing manifests apply unchanged.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Condition;

/// The user's description of a subnet.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "Subnet",
    doc = "A Kube-OVN compatible subnet: one address range, realised as one OVN logical switch.",
    plural = "subnets",
    status = "SubnetStatus",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"Protocol","type":"string","jsonPath":".spec.protocol"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidrBlock"}"#,
    printcolumn = r#"{"name":"Default","type":"boolean","jsonPath":".spec.default"}"#,
    printcolumn = r#"{"name":"V4Used","type":"number","jsonPath":".status.v4usingIPs"}"#,
    printcolumn = r#"{"name":"V4Available","type":"number","jsonPath":".status.v4availableIPs"}"#,
    printcolumn = r#"{"name":"V6Used","type":"number","jsonPath":".status.v6usingIPs"}"#,
    printcolumn = r#"{"name":"V6Available","type":"number","jsonPath":".status.v6availableIPs"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SubnetSpec {
    /// `v4cidr`, `v6cidr` or `v4cidr,v6cidr`.
    pub cidr_block: String,
    /// Gateway per family, in the order of `cidrBlock`; empty means the first usable address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    /// Addresses never handed out at random: entries `ip` or `first..last`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_ips: Vec<String>,
    /// `IPv4`, `IPv6` or `Dual`; derived from `cidrBlock` when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Namespaces whose pods take addresses from this subnet by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Whether this is the cluster's default subnet.
    #[serde(default)]
    pub default: bool,
    /// Network provider; `ovn` (the default) for the primary network.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
    /// The VPC (OVN logical router) this subnet belongs to; portkeeper has one cluster router.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vpc: String,
    /// Kube-OVN's `distributed`/`centralized` egress choice, accepted and kept for compatibility.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway_type: String,
}

/// Address accounting and readiness, published by the controller.
///
/// Counts are JSON numbers (as in Kube-OVN) because IPv6 counts exceed 64 bits.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SubnetStatus {
    /// Readiness and failure conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// IPv4 addresses still available for allocation.
    #[serde(rename = "v4availableIPs", default)]
    pub v4_available_ips: f64,
    /// IPv4 addresses in use.
    #[serde(rename = "v4usingIPs", default)]
    pub v4_using_ips: f64,
    /// IPv4 available addresses as a range list (`a-b,c`).
    #[serde(
        rename = "v4availableIPrange",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub v4_available_ip_range: String,
    /// IPv4 addresses in use as a range list.
    #[serde(
        rename = "v4usingIPrange",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub v4_using_ip_range: String,
    /// IPv6 addresses still available for allocation.
    #[serde(rename = "v6availableIPs", default)]
    pub v6_available_ips: f64,
    /// IPv6 addresses in use.
    #[serde(rename = "v6usingIPs", default)]
    pub v6_using_ips: f64,
    /// IPv6 available addresses as a range list.
    #[serde(
        rename = "v6availableIPrange",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub v6_available_ip_range: String,
    /// IPv6 addresses in use as a range list.
    #[serde(
        rename = "v6usingIPrange",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub v6_using_ip_range: String,
}

impl SubnetSpec {
    /// The provider, with Kube-OVN's default `ovn` when unset.
    pub fn provider_or_default(&self) -> &str {
        if self.provider.is_empty() {
            crate::annotations::DEFAULT_PROVIDER
        } else {
            &self.provider
        }
    }
}
