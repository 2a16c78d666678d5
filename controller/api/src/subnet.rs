//! `kubeovn.io/v1` Subnet: one address range, realised as one OVN logical switch.
//!
//! Field names and JSON spellings follow Kube-OVN exactly so existing manifests apply unchanged.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::condition::Condition;

/// The user's description of a subnet: every field of Kube-OVN's `SubnetSpec`, so a Subnet
/// exported from Kube-OVN applies unchanged and keeps every field. What portkeeper does with each
/// field is in docs/compatibility.md; [`SubnetSpec::unsupported_fields`] names the ones a Subnet
/// sets that have no effect here.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "Subnet",
    doc = "A Kube-OVN compatible subnet: one address range, realised as one OVN logical switch.",
    plural = "subnets",
    shortname = "subnet",
    status = "SubnetStatus",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"Vpc","type":"string","jsonPath":".spec.vpc"}"#,
    printcolumn = r#"{"name":"Vlan","type":"string","jsonPath":".spec.vlan"}"#,
    printcolumn = r#"{"name":"Protocol","type":"string","jsonPath":".spec.protocol"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidrBlock"}"#,
    printcolumn = r#"{"name":"Private","type":"boolean","jsonPath":".spec.private"}"#,
    printcolumn = r#"{"name":"NAT","type":"boolean","jsonPath":".spec.natOutgoing"}"#,
    printcolumn = r#"{"name":"Default","type":"boolean","jsonPath":".spec.default"}"#,
    printcolumn = r#"{"name":"GatewayType","type":"string","jsonPath":".spec.gatewayType"}"#,
    printcolumn = r#"{"name":"V4Used","type":"number","jsonPath":".status.v4usingIPs"}"#,
    printcolumn = r#"{"name":"V4Available","type":"number","jsonPath":".status.v4availableIPs"}"#,
    printcolumn = r#"{"name":"V6Used","type":"number","jsonPath":".status.v6usingIPs"}"#,
    printcolumn = r#"{"name":"V6Available","type":"number","jsonPath":".status.v6availableIPs"}"#,
    printcolumn = r#"{"name":"ExcludeIPs","type":"string","jsonPath":".spec.excludeIps"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SubnetSpec {
    /// Whether this is the cluster's default subnet. Honoured.
    #[serde(default)]
    pub default: bool,
    /// The VPC (OVN logical router) of the subnet. portkeeper has one cluster router: empty or
    /// its name is honoured, any other VPC is not implemented.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vpc: String,
    /// `IPv4`, `IPv6` or `Dual`; derived from `cidrBlock` (and written back) when empty. Honoured.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Namespaces whose pods take addresses from this subnet by default. Honoured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// `v4cidr`, `v6cidr` or `v4cidr,v6cidr`. Honoured; empty (Kube-OVN's MAC-only subnet) is
    /// not implemented and leaves the Subnet not ready.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cidr_block: String,
    /// Gateway per family, in the order of `cidrBlock`; empty means the first usable address.
    /// Honoured (the address of the subnet's router port).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    /// Addresses never handed out at random: entries `ip` or `first..last`. Honoured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_ips: Vec<String>,
    /// Network provider: `ovn` (the default) is the primary network; `<nad>.<ns>.ovn` serves the
    /// attachment network of the NetworkAttachmentDefinition `<ns>/<nad>` (one port per pod).
    /// Both are honoured; an IPAM-only provider (`<nad>.<ns>`, no OVN ports) is not implemented.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
    /// `distributed` or `centralized` egress. portkeeper routes no egress; `centralized` is not
    /// implemented.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway_type: String,
    /// Gateway nodes of a centralized gateway. Not implemented.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway_node: String,
    /// Label selectors choosing the gateway nodes. Not implemented.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_node_selectors: Vec<LabelSelector>,
    /// SNAT of egress traffic. Not implemented.
    #[serde(default)]
    pub nat_outgoing: bool,
    /// External egress gateway addresses. Not implemented.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub external_egress_gateway: String,
    /// Policy-routing priority of the external egress gateway. Not implemented.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub policy_routing_priority: u32,
    /// Policy-routing table of the external egress gateway. Not implemented.
    #[serde(
        rename = "policyRoutingTableID",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub policy_routing_table_id: u32,
    /// Pod interface MTU. Not implemented (the CNI configuration sets the MTU).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u32,
    /// Refuse traffic from outside the subnet (and `allowSubnets`). Not implemented.
    #[serde(default)]
    pub private: bool,
    /// CIDRs a private subnet accepts traffic from. Not implemented.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_subnets: Vec<String>,
    /// The Vlan (underlay) the subnet is bridged to. Not implemented: portkeeper subnets are
    /// overlay switches.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vlan: String,
    /// Virtual IPs reserved in the subnet. Not implemented.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<String>,
    /// Use a physical gateway of an underlay subnet. Not implemented.
    #[serde(default, skip_serializing_if = "is_false")]
    pub logical_gateway: bool,
    /// Skip the CNI's gateway check. portkeeper's CNI does not check the gateway, so this is
    /// honoured whatever its value.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disable_gateway_check: bool,
    /// Keep the subnet out of OVN interconnection. portkeeper interconnects nothing, so this is
    /// honoured whatever its value.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disable_inter_connection: bool,
    /// OVN DHCP for the subnet's ports (see `docs/dhcp.md`).
    #[serde(rename = "enableDHCP", default, skip_serializing_if = "is_false")]
    pub enable_dhcp: bool,
    /// DHCPv4 options (`key=value,…`) of the subnet; Kube-OVN's defaults fill in the rest.
    #[serde(
        rename = "dhcpV4Options",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub dhcp_v4_options: String,
    /// DHCPv6 options (`key=value,…`) of the subnet.
    #[serde(
        rename = "dhcpV6Options",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub dhcp_v6_options: String,
    /// IPv6 router advertisements on the gateway port. Not implemented.
    #[serde(rename = "enableIPv6RA", default, skip_serializing_if = "is_false")]
    pub enable_ipv6_ra: bool,
    /// IPv6 router advertisement options. Not implemented.
    #[serde(
        rename = "ipv6RAConfigs",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv6_ra_configs: String,
    /// ACLs on the subnet's switch. Not implemented.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acls: Vec<Acl>,
    /// East-west traffic inside a private subnet. Not implemented.
    #[serde(rename = "allowEWTraffic", default, skip_serializing_if = "is_false")]
    pub allow_ew_traffic: bool,
    /// Per-destination NAT rules. Not implemented.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nat_outgoing_policy_rules: Vec<NatOutgoingPolicyRule>,
    /// The underlay-to-overlay interconnection address. Not implemented.
    #[serde(
        rename = "u2oInterconnectionIP",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub u2o_interconnection_ip: String,
    /// Underlay-to-overlay interconnection. Not implemented.
    #[serde(
        rename = "u2oInterconnection",
        default,
        skip_serializing_if = "is_false"
    )]
    pub u2o_interconnection: bool,
    /// Underlay-to-overlay interconnection options. Not implemented.
    #[serde(
        rename = "u2oFeatures",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub u2o_features: Option<U2OFeatures>,
    /// OVN load balancers on the subnet's switch (Kube-OVN's default: on). Not implemented:
    /// services are left to kube-proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_lb: Option<bool>,
    /// ECMP across the gateways of a centralized gateway. Not implemented.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_ecmp: bool,
    /// Multicast snooping on the switch. Not implemented.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_multicast_snoop: bool,
    /// LoadBalancer service addresses from this subnet. Not implemented.
    #[serde(
        rename = "enableExternalLBAddress",
        default,
        skip_serializing_if = "is_false"
    )]
    pub enable_external_lb_address: bool,
    /// The VPC route table of the subnet. Not implemented.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub route_table: String,
    /// Namespaces bound by label. Not implemented (bind by `namespaces`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,
    /// The node network of an underlay subnet. Not implemented.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_network: String,
    /// portkeeper's extension (Spiderpool's `nodeAffinity`): only pods bound to a node whose
    /// labels match may take addresses here, and they are allocated once bound. Unset: any node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<LabelSelector>,
    /// portkeeper's extension: the DNS settings the CNI result gives the subnet's pods. Unset:
    /// none (an empty `dns` in the result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<crate::dns::SubnetDns>,
}

/// A Kubernetes label selector, as Kube-OVN's `gatewayNodeSelectors` and `namespaceSelectors`
/// hold them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must all match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Expressions that must all match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

impl LabelSelector {
    /// The selector as a node affinity, validated as Kubernetes validates a label selector.
    pub fn node_affinity(
        &self,
    ) -> Result<portkeeper_engine::NodeAffinity, portkeeper_engine::AffinityError> {
        portkeeper_engine::NodeAffinity::parse(
            self.match_labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
            self.match_expressions
                .iter()
                .map(|e| (e.key.as_str(), e.operator.as_str(), e.values.as_slice())),
        )
    }
}

/// One `matchExpressions` entry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// The values of `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// One ACL of a subnet's switch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Acl {
    /// `from-lport` or `to-lport`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub direction: String,
    /// 0 to 32767.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub priority: i64,
    /// An OVN match expression.
    #[serde(rename = "match", default, skip_serializing_if = "String::is_empty")]
    pub match_: String,
    /// `allow-related`, `allow-stateless`, `allow`, `drop` or `reject`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
}

/// One per-destination NAT rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct NatOutgoingPolicyRule {
    /// The traffic the rule applies to.
    #[serde(rename = "match", default)]
    pub match_: NatOutgoingPolicyMatch,
    /// `nat` or `forward`.
    #[serde(default)]
    pub action: String,
}

/// The traffic a NAT rule applies to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct NatOutgoingPolicyMatch {
    /// Source addresses or CIDRs, comma separated.
    #[serde(rename = "srcIPs", default, skip_serializing_if = "String::is_empty")]
    pub src_ips: String,
    /// Destination addresses or CIDRs, comma separated.
    #[serde(rename = "dstIPs", default, skip_serializing_if = "String::is_empty")]
    pub dst_ips: String,
}

/// A NAT rule as Kube-OVN's status reports it, with its id.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct NatOutgoingPolicyRuleStatus {
    /// The rule's id.
    #[serde(rename = "ruleID", default)]
    pub rule_id: String,
    /// The traffic the rule applies to.
    #[serde(rename = "match", default)]
    pub match_: NatOutgoingPolicyMatch,
    /// `nat` or `forward`.
    #[serde(default)]
    pub action: String,
}

/// Underlay-to-overlay interconnection options.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct U2OFeatures {
    /// Only overlay CIDRs use the interconnection route.
    #[serde(default, skip_serializing_if = "is_false")]
    pub overlay_only_routing: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
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
    /// Kube-OVN's status fields for its other features (centralized gateway, underlay-to-overlay,
    /// NAT rules, multicast): declared so a Subnet exported with its status applies, and kept as
    /// written; and the Subnet's OVN DHCP rows, which portkeeper writes.
    #[serde(flatten)]
    pub kube_ovn: KubeOvnSubnetStatus,
}

/// The status fields Kube-OVN's controller writes for its other features.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct KubeOvnSubnetStatus {
    /// The active gateway node of a centralized gateway.
    #[serde(
        rename = "activateGateway",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub activate_gateway: String,
    /// The OVN DHCP_Options row of the subnet's IPv4 DHCP (empty with DHCP off).
    #[serde(
        rename = "dhcpV4OptionsUUID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub dhcp_v4_options_uuid: String,
    /// The OVN DHCP_Options row of the subnet's IPv6 DHCP.
    #[serde(
        rename = "dhcpV6OptionsUUID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub dhcp_v6_options_uuid: String,
    /// The underlay-to-overlay interconnection address.
    #[serde(
        rename = "u2oInterconnectionIP",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub u2o_interconnection_ip: String,
    /// The underlay-to-overlay interconnection MAC.
    #[serde(
        rename = "u2oInterconnectionMAC",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub u2o_interconnection_mac: String,
    /// The VPC of the underlay-to-overlay interconnection.
    #[serde(
        rename = "u2oInterconnectionVPC",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub u2o_interconnection_vpc: String,
    /// The NAT rules in force, with their ids.
    #[serde(
        rename = "natOutgoingPolicyRules",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub nat_outgoing_policy_rules: Vec<NatOutgoingPolicyRuleStatus>,
    /// The multicast querier's address.
    #[serde(
        rename = "mcastQuerierIP",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub mcast_querier_ip: String,
    /// The multicast querier's MAC.
    #[serde(
        rename = "mcastQuerierMAC",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub mcast_querier_mac: String,
}

impl SubnetSpec {
    /// The fields this Subnet sets (to anything but their Kube-OVN default) that portkeeper does
    /// not implement, by their JSON names in Kube-OVN's order. They are kept in the spec and
    /// reported on the status (condition `Unsupported`) and in one Warning Event.
    /// `cluster_router` is the one VPC portkeeper serves.
    pub fn unsupported_fields(&self, cluster_router: &str) -> Vec<&'static str> {
        let s = self;
        let fields = [
            ("vpc", !s.vpc.is_empty() && s.vpc != cluster_router),
            ("provider", !s.serves_ovn_ports()),
            ("gatewayType", s.gateway_type == "centralized"),
            ("gatewayNode", !s.gateway_node.trim().is_empty()),
            ("gatewayNodeSelectors", !s.gateway_node_selectors.is_empty()),
            ("natOutgoing", s.nat_outgoing),
            (
                "externalEgressGateway",
                !s.external_egress_gateway.is_empty(),
            ),
            ("policyRoutingPriority", s.policy_routing_priority != 0),
            ("policyRoutingTableID", s.policy_routing_table_id != 0),
            // The pod interface's MTU is the CNI's; the Subnet's is what its DHCP offers.
            ("mtu", s.mtu != 0 && !s.enable_dhcp),
            ("private", s.private),
            ("allowSubnets", !s.allow_subnets.is_empty()),
            ("vlan", !s.vlan.is_empty()),
            ("vips", !s.vips.is_empty()),
            ("logicalGateway", s.logical_gateway),
            ("enableIPv6RA", s.enable_ipv6_ra),
            ("ipv6RAConfigs", !s.ipv6_ra_configs.is_empty()),
            ("acls", !s.acls.is_empty()),
            ("allowEWTraffic", s.allow_ew_traffic),
            (
                "natOutgoingPolicyRules",
                !s.nat_outgoing_policy_rules.is_empty(),
            ),
            ("u2oInterconnectionIP", !s.u2o_interconnection_ip.is_empty()),
            ("u2oInterconnection", s.u2o_interconnection),
            (
                "u2oFeatures",
                s.u2o_features
                    .as_ref()
                    .is_some_and(|f| f.overlay_only_routing),
            ),
            ("enableLb", s.enable_lb == Some(true)),
            ("enableEcmp", s.enable_ecmp),
            ("enableMulticastSnoop", s.enable_multicast_snoop),
            ("enableExternalLBAddress", s.enable_external_lb_address),
            ("routeTable", !s.route_table.is_empty()),
            ("namespaceSelectors", !s.namespace_selectors.is_empty()),
            ("nodeNetwork", !s.node_network.is_empty()),
        ];
        fields
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect()
    }

    /// Whether the Subnet's nics are OVN ports: the primary provider `ovn`, or an attachment
    /// network's `<nad>.<ns>.ovn`, as Kube-OVN tells an OVN Subnet from an IPAM-only one.
    pub fn serves_ovn_ports(&self) -> bool {
        let provider = self.provider_or_default();
        provider == crate::annotations::DEFAULT_PROVIDER
            || provider
                .strip_suffix(crate::networks::OVN_SUFFIX)
                .is_some_and(|p| p.ends_with('.') && p.len() > 1)
    }

    /// The provider, with Kube-OVN's default `ovn` when unset.
    pub fn provider_or_default(&self) -> &str {
        if self.provider.is_empty() {
            crate::annotations::DEFAULT_PROVIDER
        } else {
            &self.provider
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ovn_and_attachment_providers_serve_ports_ipam_only_ones_do_not() {
        let spec = |provider: &str| SubnetSpec {
            provider: provider.into(),
            ..Default::default()
        };
        for provider in ["", "ovn", "attachnet.default.ovn"] {
            assert!(spec(provider).serves_ovn_ports(), "{provider}");
            assert!(
                !spec(provider)
                    .unsupported_fields("ovn-cluster")
                    .contains(&"provider"),
                "{provider}"
            );
        }
        for provider in ["macvlan.default", ".ovn", "xovn", "ovn.x"] {
            assert!(!spec(provider).serves_ovn_ports(), "{provider}");
            assert!(
                spec(provider)
                    .unsupported_fields("ovn-cluster")
                    .contains(&"provider")
            );
        }
    }
}
