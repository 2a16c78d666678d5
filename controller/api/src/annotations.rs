//! Kube-OVN's annotation keys, spelled exactly as Kube-OVN spells them.
//!
//! Every per-network key exists as `<provider>.kubernetes.io/<suffix>`; for the default network the
//! provider is `ovn`, which gives the familiar `ovn.kubernetes.io/<suffix>`. The docs in
//! `docs/annotations.md` give each key's format, an example and the errors it can produce.

/// The provider of the primary (default) network.
pub const DEFAULT_PROVIDER: &str = "ovn";

/// Suffix of the static address request / allocated addresses (`v4`, `v6` or `v4,v6`). In and out.
pub const IP_ADDRESS: &str = "ip_address";
/// Suffix of the static MAC request / allocated MAC. In and out.
pub const MAC_ADDRESS: &str = "mac_address";
/// Suffix of the pool request: an IPPool name, or an address list (`a,b` or `v4a,v6a;v4b,v6b`). In.
pub const IP_POOL: &str = "ip_pool";
/// Suffix of portkeeper's ordered IPPool list (`pool-a,pool-b`): the pod is allocated once bound
/// to a node, from the first pool whose node affinity admits the node and that has room. In.
pub const IP_POOLS: &str = "ip_pools";
/// Suffix of portkeeper's DNS settings for the CNI result, the Subnet's `spec.dns` as JSON. Out.
pub const DNS: &str = "dns";
/// Suffix of the requested subnet; rewritten with the subnet actually used. In and out.
pub const LOGICAL_SWITCH: &str = "logical_switch";
/// Suffix of the requested single family on a dual-stack subnet: `ipv4` or `ipv6`. In.
pub const IP_FAMILY: &str = "ip_family";
/// Suffix of the "addresses, port and IP resource all exist" gate, `"true"`. Out, written last.
pub const ALLOCATED: &str = "allocated";
/// Suffix of the "port is wired for its node" flag, `"true"`. Out.
pub const ROUTED: &str = "routed";
/// Suffix of the subnet's CIDR block (`v4cidr[,v6cidr]`). Out.
pub const CIDR: &str = "cidr";
/// Suffix of the subnet's gateway (`v4gw[,v6gw]`). Out.
pub const GATEWAY: &str = "gateway";
/// Suffix of the port-security request, `"true"` to pin the port to its MAC and addresses. In.
pub const PORT_SECURITY: &str = "port_security";
/// Suffix of the VM name written on KubeVirt launcher pods, read by the CNI for its `iface-id`. Out.
pub const VIRTUAL_MACHINE: &str = "virtualmachine";
/// Suffix of the namespace's excluded addresses, per bound subnet (`a,b;c`). Out, on namespaces.
pub const EXCLUDE_IPS: &str = "exclude_ips";

/// The full key `<provider>.kubernetes.io/<suffix>`.
pub fn key(provider: &str, suffix: &str) -> String {
    format!("{provider}.kubernetes.io/{suffix}")
}

/// The providers whose nic `annotations` mark allocated (`<provider>.kubernetes.io/allocated`
/// is `"true"`): the primary `ovn` and every attachment network, sorted.
pub fn allocated_providers(annotations: &std::collections::BTreeMap<String, String>) -> Vec<&str> {
    let suffix = format!(".kubernetes.io/{ALLOCATED}");
    annotations
        .iter()
        .filter(|(_, v)| v.as_str() == "true")
        .filter_map(|(k, _)| k.strip_suffix(suffix.as_str()))
        .filter(|p| !p.is_empty())
        .collect()
}

/// Node annotation holding the node's OVN chassis name (its Open_vSwitch
/// `external_ids:system-id`): written by portkeeper's node daemon, read by live migration.
pub const NODE_CHASSIS: &str = "ovn.kubernetes.io/chassis";

/// IP label: the subnet of the addresses.
pub const LABEL_SUBNET: &str = "ovn.kubernetes.io/subnet";
/// IP label: the node of the pod.
pub const LABEL_NODE_NAME: &str = "ovn.kubernetes.io/node-name";
/// IP label: `"true"` on IPs a user reserved, `"false"` on those the controller created.
pub const LABEL_IP_RESERVED: &str = "ovn.kubernetes.io/ip_reserved";

/// Every key of one network (provider), computed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkKeys {
    /// The provider these keys belong to.
    pub provider: String,
    /// `<provider>.kubernetes.io/ip_address`
    pub ip_address: String,
    /// `<provider>.kubernetes.io/mac_address`
    pub mac_address: String,
    /// `<provider>.kubernetes.io/ip_pool`
    pub ip_pool: String,
    /// `<provider>.kubernetes.io/ip_pools`
    pub ip_pools: String,
    /// `<provider>.kubernetes.io/dns`
    pub dns: String,
    /// `<provider>.kubernetes.io/logical_switch`
    pub logical_switch: String,
    /// `<provider>.kubernetes.io/ip_family`
    pub ip_family: String,
    /// `<provider>.kubernetes.io/allocated`
    pub allocated: String,
    /// `<provider>.kubernetes.io/routed`
    pub routed: String,
    /// `<provider>.kubernetes.io/cidr`
    pub cidr: String,
    /// `<provider>.kubernetes.io/gateway`
    pub gateway: String,
    /// `<provider>.kubernetes.io/port_security`
    pub port_security: String,
    /// `<provider>.kubernetes.io/virtualmachine`
    pub virtual_machine: String,
}

impl NetworkKeys {
    /// The keys of `provider`'s network.
    pub fn for_provider(provider: &str) -> Self {
        Self {
            provider: provider.to_owned(),
            ip_address: key(provider, IP_ADDRESS),
            mac_address: key(provider, MAC_ADDRESS),
            ip_pool: key(provider, IP_POOL),
            ip_pools: key(provider, IP_POOLS),
            dns: key(provider, DNS),
            logical_switch: key(provider, LOGICAL_SWITCH),
            ip_family: key(provider, IP_FAMILY),
            allocated: key(provider, ALLOCATED),
            routed: key(provider, ROUTED),
            cidr: key(provider, CIDR),
            gateway: key(provider, GATEWAY),
            port_security: key(provider, PORT_SECURITY),
            virtual_machine: key(provider, VIRTUAL_MACHINE),
        }
    }

    /// The keys of the primary network (`ovn.kubernetes.io/...`).
    pub fn primary() -> Self {
        Self::for_provider(DEFAULT_PROVIDER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_keys_are_kube_ovns() {
        let k = NetworkKeys::primary();
        assert_eq!(k.ip_address, "ovn.kubernetes.io/ip_address");
        assert_eq!(k.allocated, "ovn.kubernetes.io/allocated");
        assert_eq!(k.logical_switch, "ovn.kubernetes.io/logical_switch");
    }

    #[test]
    fn allocated_providers_are_read_from_the_allocated_keys() {
        let annotations = [
            ("ovn.kubernetes.io/allocated", "true"),
            ("a.ns.ovn.kubernetes.io/allocated", "true"),
            ("b.ns.ovn.kubernetes.io/allocated", "false"),
            ("c.ns.ovn.kubernetes.io/ip_address", "10.0.0.1"),
            (".kubernetes.io/allocated", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(allocated_providers(&annotations), vec!["a.ns.ovn", "ovn"]);
    }

    #[test]
    fn provider_prefixed_keys() {
        let k = NetworkKeys::for_provider("attachnet.default.ovn");
        assert_eq!(
            k.ip_address,
            "attachnet.default.ovn.kubernetes.io/ip_address"
        );
        assert_eq!(
            k.mac_address,
            "attachnet.default.ovn.kubernetes.io/mac_address"
        );
    }
}
