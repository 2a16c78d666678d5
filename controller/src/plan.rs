//! Pure decisions for one pod nic: which subnet, what to ask the engine for, and what to write
//! back. No I/O here, so every rule of Kube-OVN's subnet choice is unit-tested.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use portkeeper_api::allocation::Allocation;
use portkeeper_api::annotations::DEFAULT_PROVIDER;
use portkeeper_api::dns::PodDns;
use portkeeper_api::request::{AddressRequest, NetworkRequest};
use portkeeper_api::{IPPool, IPSpec, Subnet};
use portkeeper_engine::affinity::{NoPool, PoolCandidate, first_for_node};
use portkeeper_engine::parse::{CidrBlock, parse_cidr_block, parse_ip_address};
use portkeeper_engine::{
    AffinityError, Claim, DualAddress, EngineError, FamilyRequest, IpPoolAnnotation, IpRequest,
    Lease, ListPick, MacRequest, NicKey, NodeAffinity,
};

use crate::error::{RejectReason, Rejection};

/// A StatefulSet pod's position, for `ip_pool` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ordinal {
    /// The number after the last `-` of the pod name.
    pub ordinal: u64,
    /// The StatefulSet's `spec.ordinals.start`.
    pub start: u64,
}

/// The pod facts a decision depends on.
#[derive(Clone, Copy, Debug)]
pub struct PodFacts<'a> {
    /// Pod name.
    pub name: &'a str,
    /// Pod namespace.
    pub namespace: &'a str,
    /// Pod UID: the owner the engine records.
    pub uid: &'a str,
    /// Pod annotations.
    pub annotations: &'a BTreeMap<String, String>,
    /// Set for StatefulSet pods.
    pub ordinal: Option<Ordinal>,
    /// The namespace's `logical_switch` annotation: the order its bound subnets are tried in.
    pub namespace_subnets: Option<&'a str>,
    /// The node the pod is bound to (`spec.nodeName`), for pools and subnets with node affinity.
    pub node: Option<NodeFacts<'a>>,
}

/// A pod's node as node affinity sees it.
#[derive(Clone, Copy, Debug)]
pub struct NodeFacts<'a> {
    /// The node's name.
    pub name: &'a str,
    /// Its labels (none when the Node is not in the cache).
    pub labels: &'a BTreeMap<String, String>,
}

/// The addressing resources a subnet choice looks at.
#[derive(Clone, Copy, Debug)]
pub struct Catalog<'a> {
    /// Every Subnet.
    pub subnets: &'a [Arc<Subnet>],
    /// Every IPPool.
    pub pools: &'a [Arc<IPPool>],
    /// Subnet used when nothing else applies and no Subnet has `spec.default`.
    pub default_subnet: &'a str,
}

impl<'a> Catalog<'a> {
    /// The Subnet named `name`.
    pub fn subnet(&self, name: &str) -> Option<&'a Subnet> {
        self.subnets
            .iter()
            .map(Arc::as_ref)
            .find(|s| s.metadata.name.as_deref() == Some(name))
    }

    fn pool(&self, name: &str) -> Option<&'a IPPool> {
        self.pools
            .iter()
            .map(Arc::as_ref)
            .find(|p| p.metadata.name.as_deref() == Some(name))
    }

    /// Primary-network subnets, sorted by name so choices are deterministic.
    fn primary_subnets(&self) -> Vec<&'a Subnet> {
        let mut out: Vec<&Subnet> = self
            .subnets
            .iter()
            .map(Arc::as_ref)
            .filter(|s| s.spec.provider_or_default() == DEFAULT_PROVIDER)
            .collect();
        out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        out
    }

    fn default_subnet_name(&self) -> String {
        self.primary_subnets()
            .into_iter()
            .find(|s| s.spec.default)
            .and_then(|s| s.metadata.name.clone())
            .unwrap_or_else(|| self.default_subnet.to_owned())
    }
}

/// Where a nic's addresses come from: the subnet and the engine request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The Subnet (and logical switch) name.
    pub subnet: String,
    /// How the engine picks the IPs.
    pub ip: IpRequest,
}

/// Chooses the subnet as Kube-OVN does: the pod's `logical_switch`, else a named pool's subnet,
/// else the namespace's bound pools and subnets, else the default subnet. `has_room` and
/// `pool_has_room` say whether a subnet or a pool still has a free address (from the engine,
/// never from possibly stale status).
///
/// Node affinity (portkeeper's extension) applies on top: an `ip_pools` list takes the first
/// pool that admits the pod's node and has room ([`first_for_node`]); a chosen Subnet with
/// `nodeAffinity` must admit the node, and pools that do not are dropped from the choice. A pod
/// that needs a node and has none yet gets [`RejectReason::AwaitingNode`]: nothing to publish,
/// it is chosen again once bound.
pub fn choose_target(
    request: &NetworkRequest,
    pod: &PodFacts<'_>,
    catalog: &Catalog<'_>,
    has_room: impl Fn(&str) -> bool,
    pool_has_room: impl Fn(&str) -> bool,
) -> Result<Target, Rejection> {
    if let AddressRequest::PoolList(pools) = &request.addresses {
        return pool_list_target(pools, request, pod, catalog, pool_has_room);
    }
    let target = choose_by_annotations(request, pod, catalog, has_room)?;
    admit_node(target, pod, catalog)
}

fn choose_by_annotations(
    request: &NetworkRequest,
    pod: &PodFacts<'_>,
    catalog: &Catalog<'_>,
    has_room: impl Fn(&str) -> bool,
) -> Result<Target, Rejection> {
    let ip = ip_request(request, pod.ordinal);

    if let Some(name) = &request.logical_switch {
        let subnet = catalog
            .subnet(name)
            .ok_or_else(|| EngineError::UnknownSubnet {
                subnet: name.clone(),
            })?;
        let ip = match ip {
            Some(ip) => ip,
            None => namespace_pools(catalog, pod.namespace, Some(name))
                .map_or(IpRequest::Dynamic, IpRequest::Pools),
        };
        return Ok(Target {
            subnet: subnet_name(subnet),
            ip,
        });
    }

    if let AddressRequest::Pool(IpPoolAnnotation::Named(pool)) = &request.addresses {
        let found = catalog
            .pool(pool)
            .ok_or_else(|| EngineError::UnknownPool { pool: pool.clone() })?;
        return Ok(Target {
            subnet: found.spec.subnet.clone(),
            ip: IpRequest::Pools(vec![pool.clone()]),
        });
    }

    if ip.is_none()
        && let Some((subnet, pools)) = namespace_pools_with_subnet(catalog, pod.namespace)
    {
        return Ok(Target {
            subnet,
            ip: IpRequest::Pools(pools),
        });
    }

    let bound = bound_subnets(
        catalog.subnets.iter().map(Arc::as_ref),
        pod.namespace,
        pod.namespace_subnets,
    );
    let wanted = requested_addresses(&request.addresses);
    let chosen = if wanted.is_empty() {
        bound
            .iter()
            .find(|s| has_room(&subnet_name(s)))
            .or(bound.first())
    } else {
        bound
            .iter()
            .find(|s| contains_any(s, &wanted))
            .or(bound.first())
    };
    let subnet = chosen.map_or_else(|| catalog.default_subnet_name(), |s| subnet_name(s));
    if catalog.subnet(&subnet).is_none() {
        return Err(EngineError::UnknownSubnet { subnet }.into());
    }
    Ok(Target {
        subnet,
        ip: ip.unwrap_or(IpRequest::Dynamic),
    })
}

/// The engine request of an explicit `ip_address` or `ip_pool`; `None` when the pod asks for
/// any address. A StatefulSet pod takes its ordinal's entry of an `ip_pool` list.
fn ip_request(request: &NetworkRequest, ordinal: Option<Ordinal>) -> Option<IpRequest> {
    match &request.addresses {
        AddressRequest::Any | AddressRequest::PoolList(_) => None,
        AddressRequest::Static(addresses) => Some(IpRequest::Static(*addresses)),
        AddressRequest::Pool(IpPoolAnnotation::Named(pool)) => {
            Some(IpRequest::Pools(vec![pool.clone()]))
        }
        AddressRequest::Pool(IpPoolAnnotation::List(entries)) => Some(IpRequest::List {
            entries: entries.clone(),
            pick: match ordinal {
                Some(o) => ListPick::Ordinal {
                    ordinal: o.ordinal,
                    start: o.start,
                },
                None => ListPick::FirstFree,
            },
        }),
    }
}

/// Where an attachment network's nic is served: always its own Subnet (the one of its
/// provider, [`crate::nic::network`] finds it), with the addresses its request names. Namespace
/// bindings are the primary network's, as in Kube-OVN.
pub fn attachment_target(
    request: &NetworkRequest,
    subnet: &str,
    ordinal: Option<Ordinal>,
) -> Target {
    Target {
        subnet: subnet.to_owned(),
        ip: ip_request(request, ordinal).unwrap_or(IpRequest::Dynamic),
    }
}

/// The rejection of a pod that must wait for its node.
fn awaiting_node(what: String) -> Rejection {
    Rejection {
        reason: RejectReason::AwaitingNode,
        message: format!(
            "AwaitingNode: {what} has node affinity; allocated once the pod is bound to a node"
        ),
    }
}

/// A pod's node refused by node affinity: `NoPoolForNode`, or `NoAvailableAddress` when every
/// pool that admits the node is full.
fn not_for_node(node: &NodeFacts<'_>, what: String, why: &NoPool) -> Rejection {
    let error = if why.exhausted() {
        "NoAvailableAddress"
    } else {
        "NoPoolForNode"
    };
    Rejection {
        reason: RejectReason::AcquireAddressFailed,
        message: format!(
            "{error}: {what} has no pool for node {} (labels {}): {why}",
            node.name,
            label_list(node.labels)
        ),
    }
}

fn label_list(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "none".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A pool's and its Subnet's node affinity, each validated (a selector that does not validate
/// admits no node).
fn affinities<'a>(
    pool: Option<&'a IPPool>,
    subnet: Option<&'a Subnet>,
) -> Vec<Result<NodeAffinity, AffinityError>> {
    pool.and_then(|p| p.spec.node_affinity.as_ref())
        .into_iter()
        .chain(subnet.and_then(|s| s.spec.node_affinity.as_ref()))
        .map(|selector| selector.node_affinity())
        .collect()
}

/// `ip_pools`: the first pool (of `logical_switch`'s subnet, when set) that admits the pod's node
/// and has room.
fn pool_list_target(
    names: &[String],
    request: &NetworkRequest,
    pod: &PodFacts<'_>,
    catalog: &Catalog<'_>,
    pool_has_room: impl Fn(&str) -> bool,
) -> Result<Target, Rejection> {
    let mut pools = Vec::with_capacity(names.len());
    for name in names {
        let pool = catalog
            .pool(name)
            .ok_or_else(|| EngineError::UnknownPool { pool: name.clone() })?;
        if request
            .logical_switch
            .as_ref()
            .is_none_or(|s| *s == pool.spec.subnet)
        {
            pools.push((name.as_str(), pool));
        }
    }
    let list = names.join(",");
    if pools.is_empty() {
        return Err(Rejection {
            reason: RejectReason::AcquireAddressFailed,
            message: format!(
                "AcquireAddressFailed: no IPPool of ip_pools {list} is in subnet {} (logical_switch)",
                request.logical_switch.as_deref().unwrap_or_default()
            ),
        });
    }
    let Some(node) = pod.node else {
        return Err(awaiting_node(format!("ip_pools {list}")));
    };
    let checks: Vec<_> = pools
        .iter()
        .map(|&(_, pool)| affinities(Some(pool), catalog.subnet(&pool.spec.subnet)))
        .collect();
    let candidates: Vec<PoolCandidate<'_>> = pools
        .iter()
        .zip(&checks)
        .map(|(&(name, _), checks)| PoolCandidate {
            name,
            affinities: checks.iter().map(Result::as_ref).collect(),
            has_room: pool_has_room(name),
        })
        .collect();
    match first_for_node(&candidates, node.labels) {
        Ok(i) => Ok(Target {
            subnet: pools[i].1.spec.subnet.clone(),
            ip: IpRequest::Pools(vec![pools[i].0.to_owned()]),
        }),
        Err(none) => Err(not_for_node(&node, format!("ip_pools {list}"), &none)),
    }
}

/// Node affinity on a chosen target: its Subnet must admit the pod's node, and the pools it
/// names that do not are dropped (the engine tries the rest in order). Targets without affinity
/// pass unchanged, bound or not.
fn admit_node(
    target: Target,
    pod: &PodFacts<'_>,
    catalog: &Catalog<'_>,
) -> Result<Target, Rejection> {
    let subnet = catalog.subnet(&target.subnet);
    let pools: Vec<&str> = match &target.ip {
        IpRequest::Pools(pools) => pools.iter().map(String::as_str).collect(),
        _ => Vec::new(),
    };
    let pool_checks: Vec<_> = pools
        .iter()
        .map(|name| affinities(catalog.pool(name), None))
        .collect();
    let subnet_checks = affinities(None, subnet);
    if subnet_checks.is_empty() && pool_checks.iter().all(Vec::is_empty) {
        return Ok(target);
    }
    let what = if pools.is_empty() {
        format!("subnet {}", target.subnet)
    } else {
        format!("subnet {} with pools {}", target.subnet, pools.join(","))
    };
    let Some(node) = pod.node else {
        return Err(awaiting_node(what));
    };
    let subnet_candidate = [PoolCandidate {
        name: &target.subnet,
        affinities: subnet_checks.iter().map(Result::as_ref).collect(),
        has_room: true,
    }];
    if let Err(none) = first_for_node(&subnet_candidate, node.labels) {
        return Err(not_for_node(&node, what, &none));
    }
    if pools.is_empty() {
        return Ok(target);
    }
    let candidates: Vec<PoolCandidate<'_>> = pools
        .iter()
        .zip(&pool_checks)
        .map(|(name, checks)| PoolCandidate {
            name,
            affinities: checks.iter().map(Result::as_ref).collect(),
            has_room: true,
        })
        .collect();
    if let Err(none) = first_for_node(&candidates, node.labels) {
        return Err(not_for_node(&node, what, &none));
    }
    let admitting: Vec<String> = (0..candidates.len())
        .filter(|&i| first_for_node(&candidates[i..=i], node.labels).is_ok())
        .map(|i| pools[i].to_owned())
        .collect();
    Ok(Target {
        ip: IpRequest::Pools(admitting),
        ..target
    })
}

/// The primary-network subnets bound to `namespace` (listing it in `spec.namespaces`), in the
/// order `written` (the namespace's `logical_switch` annotation, `,`-separated) gives them, as
/// Kube-OVN tries them; subnets bound since it was written follow, oldest first.
pub fn bound_subnets<'a>(
    subnets: impl Iterator<Item = &'a Subnet>,
    namespace: &str,
    written: Option<&str>,
) -> Vec<&'a Subnet> {
    let written: Vec<&str> = written
        .map(|w| w.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let mut bound: Vec<&Subnet> = subnets
        .filter(|s| s.spec.provider_or_default() == DEFAULT_PROVIDER)
        .filter(|s| s.spec.namespaces.iter().any(|n| n == namespace))
        .collect();
    bound.sort_by_cached_key(|s| {
        let name = subnet_name(s);
        let position = written
            .iter()
            .position(|w| *w == name)
            .unwrap_or(usize::MAX);
        let created = s.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (position, created, name)
    });
    bound
}

fn subnet_name(subnet: &Subnet) -> String {
    subnet.metadata.name.clone().unwrap_or_default()
}

/// Pools bound to `namespace` (sorted by name), restricted to `subnet` when given.
fn namespace_pools(
    catalog: &Catalog<'_>,
    namespace: &str,
    subnet: Option<&str>,
) -> Option<Vec<String>> {
    let mut pools: Vec<&IPPool> = catalog
        .pools
        .iter()
        .map(Arc::as_ref)
        .filter(|p| p.spec.namespaces.iter().any(|n| n == namespace))
        .filter(|p| subnet.is_none_or(|s| p.spec.subnet == s))
        .collect();
    pools.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let names: Vec<String> = pools
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    (!names.is_empty()).then_some(names)
}

/// The namespace's bound pools that share the first bound pool's subnet, and that subnet.
fn namespace_pools_with_subnet(
    catalog: &Catalog<'_>,
    namespace: &str,
) -> Option<(String, Vec<String>)> {
    let all = namespace_pools(catalog, namespace, None)?;
    let subnet = catalog.pool(&all[0])?.spec.subnet.clone();
    let pools = namespace_pools(catalog, namespace, Some(&subnet))?;
    Some((subnet, pools))
}

fn requested_addresses(request: &AddressRequest) -> Vec<IpAddr> {
    match request {
        AddressRequest::Static(a) => a.addresses().collect(),
        AddressRequest::Pool(IpPoolAnnotation::List(entries)) => {
            entries.iter().flat_map(|e| e.addresses()).collect()
        }
        _ => Vec::new(),
    }
}

fn contains_any(subnet: &Subnet, addresses: &[IpAddr]) -> bool {
    parse_cidr_block(&subnet.spec.cidr_block).is_ok_and(|block| {
        addresses.iter().any(|a| match a {
            IpAddr::V4(v4) => block.v4.is_some_and(|n| n.contains(v4)),
            IpAddr::V6(v6) => block.v6.is_some_and(|n| n.contains(v6)),
        })
    })
}

/// The engine claim for a nic.
pub fn claim(target: Target, key: NicKey, request: &NetworkRequest, uid: &str) -> Claim {
    Claim {
        subnet: target.subnet,
        key,
        uid: uid.to_owned(),
        ip: target.ip,
        family: request
            .family
            .map_or(FamilyRequest::Subnet, FamilyRequest::Only),
        mac: request.mac.map_or(MacRequest::Generate, MacRequest::Static),
    }
}

/// A subnet's parsed CIDRs and effective gateways: what the router port and the pod's
/// `cidr`/`gateway` annotations are made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubnetNetwork {
    /// The CIDRs, normalised.
    pub block: CidrBlock,
    /// The gateway of each family: `spec.gateway`, or the first usable address.
    pub gateway: DualAddress,
}

impl SubnetNetwork {
    /// Reads a Subnet spec; a bad `cidrBlock` or `gateway` is the engine's `InvalidSubnet` error.
    pub fn of(subnet: &Subnet) -> Result<Self, EngineError> {
        let name = subnet_name(subnet);
        let invalid = |field, source| EngineError::InvalidSubnet {
            subnet: name.clone(),
            field,
            source,
        };
        let block =
            parse_cidr_block(&subnet.spec.cidr_block).map_err(|e| invalid("cidrBlock", e))?;
        let mut gateway = if subnet.spec.gateway.trim().is_empty() {
            DualAddress::default()
        } else {
            parse_ip_address(&subnet.spec.gateway).map_err(|e| invalid("gateway", e))?
        };
        if gateway.v4.is_none() {
            gateway.v4 = block
                .v4
                .map(|n| Ipv4Addr::from(u32::from(n.network()).wrapping_add(1)));
        }
        if gateway.v6.is_none() {
            gateway.v6 = block
                .v6
                .map(|n| Ipv6Addr::from(u128::from(n.network()).wrapping_add(1)));
        }
        Ok(Self { block, gateway })
    }

    /// Router-port networks: each gateway with its subnet's prefix length.
    pub fn router_networks(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let (Some(gw), Some(net)) = (self.gateway.v4, self.block.v4) {
            out.push(format!("{gw}/{}", net.prefix_len()));
        }
        if let (Some(gw), Some(net)) = (self.gateway.v6, self.block.v6) {
            out.push(format!("{gw}/{}", net.prefix_len()));
        }
        out
    }
}

/// The port's `addresses` entry: `"MAC IP [IP]"`.
pub fn port_addresses(lease: &Lease) -> String {
    let mut parts: Vec<String> = lease.mac.iter().map(ToString::to_string).collect();
    parts.extend(lease.addresses().addresses().map(|a| a.to_string()));
    parts.join(" ")
}

/// The allocation published on the pod once the port and the IP resource exist (written in one
/// merge patch, `allocated` among it). A launcher pod also names its VM, which tells the CNI
/// daemon that its interface is the VM's port. A lease without a MAC cannot be published: the
/// CNI daemon could not wire it.
pub fn allocation(
    lease: &Lease,
    network: &SubnetNetwork,
    routed: bool,
    virtual_machine: Option<&str>,
) -> Result<Allocation, Rejection> {
    let mac = lease.mac.ok_or_else(|| Rejection {
        reason: RejectReason::AcquireAddressFailed,
        message: format!(
            "AcquireAddressFailed: {} was granted no MAC in subnet {}",
            lease.key, lease.subnet
        ),
    })?;
    Ok(Allocation {
        subnet: lease.subnet.clone(),
        addresses: lease.addresses(),
        cidr: network.block,
        gateway: network.gateway,
        mac,
        routed,
        virtual_machine: virtual_machine.map(str::to_owned),
        dns: None,
    })
}

/// The Subnet's DNS settings for its pods' CNI results; a `spec.dns` that does not validate
/// refuses the allocation, naming the Subnet and the value.
pub fn subnet_dns(subnet: &Subnet) -> Result<Option<PodDns>, Rejection> {
    subnet
        .spec
        .dns
        .as_ref()
        .map(|d| d.validate())
        .transpose()
        .map_err(|e| Rejection {
            reason: RejectReason::AcquireAddressFailed,
            message: format!(
                "AcquireAddressFailed: subnet {} spec.dns is invalid: {e}",
                subnet_name(subnet)
            ),
        })
}

/// The IP resource spec for a nic: `pod_name` is the nic's name part (the VM for launcher
/// pods, as Kube-OVN records it).
pub fn ip_spec(
    pod_name: &str,
    namespace: &str,
    lease: &Lease,
    node: Option<&str>,
    pod_type: &str,
) -> IPSpec {
    let addresses = lease.addresses();
    IPSpec {
        pod_name: pod_name.to_owned(),
        namespace: namespace.to_owned(),
        subnet: lease.subnet.clone(),
        node_name: node.unwrap_or_default().to_owned(),
        ip_address: addresses.to_string(),
        v4_ip_address: addresses.v4.map(|a| a.to_string()).unwrap_or_default(),
        v6_ip_address: addresses.v6.map(|a| a.to_string()).unwrap_or_default(),
        mac_address: lease.mac.map(|m| m.to_string()).unwrap_or_default(),
        pod_type: pod_type.to_owned(),
        ..IPSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portkeeper_api::annotations::NetworkKeys;
    use portkeeper_api::{IPPoolSpec, SubnetSpec};

    fn subnet(name: &str, cidr: &str, namespaces: &[&str], default: bool) -> Arc<Subnet> {
        Arc::new(Subnet::new(
            name,
            SubnetSpec {
                cidr_block: cidr.into(),
                namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
                default,
                ..Default::default()
            },
        ))
    }

    fn pool(name: &str, subnet: &str, namespaces: &[&str]) -> Arc<IPPool> {
        Arc::new(IPPool::new(
            name,
            IPPoolSpec {
                subnet: subnet.into(),
                namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        ))
    }

    struct Case {
        subnets: Vec<Arc<Subnet>>,
        pools: Vec<Arc<IPPool>>,
        written_order: Option<&'static str>,
        /// The pod's node and its labels.
        node: Option<(&'static str, BTreeMap<String, String>)>,
        /// Pools without a free address.
        full_pools: Vec<&'static str>,
    }

    impl Case {
        fn choose(&self, annotations: &[(&str, &str)]) -> Result<Target, Rejection> {
            self.choose_with(annotations, None, |_| true)
        }

        fn choose_with(
            &self,
            annotations: &[(&str, &str)],
            ordinal: Option<Ordinal>,
            has_room: impl Fn(&str) -> bool,
        ) -> Result<Target, Rejection> {
            let annotations: BTreeMap<String, String> = annotations
                .iter()
                .map(|(k, v)| (format!("ovn.kubernetes.io/{k}"), v.to_string()))
                .collect();
            let request =
                NetworkRequest::from_annotations(&NetworkKeys::primary(), &annotations).unwrap();
            let pod = PodFacts {
                name: "web-1",
                namespace: "shop",
                uid: "u1",
                annotations: &annotations,
                ordinal,
                namespace_subnets: self.written_order,
                node: self
                    .node
                    .as_ref()
                    .map(|(name, labels)| NodeFacts { name, labels }),
            };
            let catalog = Catalog {
                subnets: &self.subnets,
                pools: &self.pools,
                default_subnet: "ovn-default",
            };
            choose_target(&request, &pod, &catalog, has_room, |p| {
                !self.full_pools.contains(&p)
            })
        }
    }

    fn cluster() -> Case {
        Case {
            subnets: vec![
                subnet("ovn-default", "10.16.0.0/16", &[], true),
                subnet("net1", "10.17.0.0/24", &[], false),
                subnet("shop-a", "10.18.0.0/24", &["shop"], false),
                subnet("shop-b", "10.19.0.0/24", &["shop"], false),
                subnet("other", "10.20.0.0/24", &["other"], false),
            ],
            pools: vec![pool("pool-x", "net1", &[])],
            written_order: None,
            node: None,
            full_pools: Vec::new(),
        }
    }

    fn selector(labels: &[(&str, &str)]) -> Option<portkeeper_api::subnet::LabelSelector> {
        Some(portkeeper_api::subnet::LabelSelector {
            match_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
    }

    /// Zone pools: `zone-a` in net1 for zone a, `zone-b` in shop-a for zone b, `anywhere` in net1.
    fn zones() -> Case {
        let mut c = cluster();
        let mut zone_a = (*pool("zone-a", "net1", &[])).clone();
        zone_a.spec.node_affinity = selector(&[("zone", "a")]);
        let mut zone_b = (*pool("zone-b", "shop-a", &[])).clone();
        zone_b.spec.node_affinity = selector(&[("zone", "b")]);
        c.pools.extend([
            Arc::new(zone_a),
            Arc::new(zone_b),
            pool("anywhere", "net1", &[]),
        ]);
        c
    }

    fn on(c: &mut Case, node: &'static str, zone: &str) {
        c.node = Some((node, BTreeMap::from([("zone".to_owned(), zone.to_owned())])));
    }

    #[test]
    fn a_pool_list_waits_for_the_node_then_takes_the_first_admitting_pool() {
        let mut c = zones();
        let r = c.choose(&[("ip_pools", "zone-a,zone-b")]).unwrap_err();
        assert_eq!(r.reason, RejectReason::AwaitingNode);
        on(&mut c, "node2", "b");
        let t = c.choose(&[("ip_pools", "zone-a,zone-b")]).unwrap();
        assert_eq!(t.subnet, "shop-a");
        assert_eq!(t.ip, IpRequest::Pools(vec!["zone-b".into()]));
        on(&mut c, "node1", "a");
        let t = c.choose(&[("ip_pools", "zone-a,zone-b")]).unwrap();
        assert_eq!(
            (t.subnet.as_str(), t.ip),
            ("net1", IpRequest::Pools(vec!["zone-a".into()]))
        );
    }

    #[test]
    fn a_full_first_pool_falls_back_to_the_next() {
        let mut c = zones();
        on(&mut c, "node1", "a");
        c.full_pools = vec!["zone-a"];
        let t = c.choose(&[("ip_pools", "zone-a,anywhere")]).unwrap();
        assert_eq!(t.ip, IpRequest::Pools(vec!["anywhere".into()]));
        c.full_pools = vec!["zone-a", "anywhere"];
        let r = c.choose(&[("ip_pools", "zone-a,anywhere")]).unwrap_err();
        assert_eq!(r.reason, RejectReason::AcquireAddressFailed);
        assert!(
            r.message.starts_with("NoAvailableAddress: "),
            "{}",
            r.message
        );
    }

    #[test]
    fn a_node_no_pool_admits_gets_a_clear_refusal() {
        let mut c = zones();
        on(&mut c, "node1", "a");
        let r = c.choose(&[("ip_pools", "zone-b")]).unwrap_err();
        assert_eq!(r.reason, RejectReason::AcquireAddressFailed);
        assert_eq!(
            r.message,
            "NoPoolForNode: ip_pools zone-b has no pool for node node1 (labels zone=a): zone-b: \
             nodeAffinity zone=b does not admit the node"
        );
        let r = c.choose(&[("ip_pool", "zone-b")]).unwrap_err();
        assert!(
            r.message
                .starts_with("NoPoolForNode: subnet shop-a with pools zone-b"),
            "{}",
            r.message
        );
        let r = c.choose(&[("ip_pools", "zone-a,missing")]).unwrap_err();
        assert!(
            r.message.contains("ippool missing does not exist"),
            "{}",
            r.message
        );
    }

    #[test]
    fn subnet_affinity_gates_every_way_into_the_subnet() {
        let mut c = zones();
        let mut net1 = (*c.subnets[1]).clone();
        net1.spec.node_affinity = selector(&[("zone", "a")]);
        c.subnets[1] = Arc::new(net1);
        let r = c.choose(&[("logical_switch", "net1")]).unwrap_err();
        assert_eq!(r.reason, RejectReason::AwaitingNode);
        on(&mut c, "node2", "b");
        let r = c.choose(&[("logical_switch", "net1")]).unwrap_err();
        assert!(
            r.message
                .starts_with("NoPoolForNode: subnet net1 has no pool for node node2"),
            "{}",
            r.message
        );
        // `anywhere` sits in net1, so the list passes over it on a zone-b node.
        let t = c.choose(&[("ip_pools", "anywhere,zone-b")]).unwrap();
        assert_eq!(t.ip, IpRequest::Pools(vec!["zone-b".into()]));
        on(&mut c, "node1", "a");
        assert_eq!(
            c.choose(&[("logical_switch", "net1")]).unwrap().subnet,
            "net1"
        );
        // Without affinity, nothing waits for a node.
        c.node = None;
        assert_eq!(c.choose(&[]).unwrap().subnet, "shop-a");
    }

    #[test]
    fn namespace_pools_that_do_not_admit_the_node_are_dropped() {
        let mut c = zones();
        let mut shared = (*pool("shop-any", "shop-a", &["shop"])).clone();
        shared.spec.node_affinity = selector(&[("zone", "a")]);
        let mut zone_b = (*c.pools[2]).clone();
        zone_b.spec.namespaces = vec!["shop".into()];
        c.pools[2] = Arc::new(zone_b);
        c.pools.push(Arc::new(shared));
        on(&mut c, "node2", "b");
        let t = c.choose(&[]).unwrap();
        assert_eq!(t.ip, IpRequest::Pools(vec!["zone-b".into()]));
    }

    #[test]
    fn an_attachment_is_served_by_its_subnet_with_its_own_request() {
        let keys = NetworkKeys::for_provider("blue.shop.ovn");
        let read = |pairs: &[(&str, &str)]| {
            let annotations: BTreeMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (format!("blue.shop.ovn.kubernetes.io/{k}"), v.to_string()))
                .collect();
            NetworkRequest::from_annotations(&keys, &annotations).unwrap()
        };
        let ordinal = Some(Ordinal {
            ordinal: 1,
            start: 0,
        });
        assert_eq!(
            attachment_target(&read(&[]), "blue", ordinal),
            Target {
                subnet: "blue".into(),
                ip: IpRequest::Dynamic
            }
        );
        let t = attachment_target(&read(&[("ip_pool", "10.9.0.5,10.9.0.6")]), "blue", ordinal);
        assert!(
            matches!(&t.ip, IpRequest::List { entries, pick: ListPick::Ordinal { ordinal: 1, start: 0 } } if entries.len() == 2),
            "{t:?}"
        );
        let t = attachment_target(&read(&[("ip_address", "10.9.0.7")]), "blue", None);
        assert!(matches!(t.ip, IpRequest::Static(_)), "{t:?}");
    }

    #[test]
    fn logical_switch_wins() {
        let t = cluster()
            .choose(&[("logical_switch", "net1"), ("ip_pool", "pool-x")])
            .unwrap();
        assert_eq!(t.subnet, "net1");
        assert_eq!(t.ip, IpRequest::Pools(vec!["pool-x".into()]));
    }

    #[test]
    fn unknown_logical_switch_is_acquire_failure() {
        let r = cluster().choose(&[("logical_switch", "nope")]).unwrap_err();
        assert_eq!(r.reason, RejectReason::AcquireAddressFailed);
        assert!(
            r.message.contains("subnet nope does not exist"),
            "{}",
            r.message
        );
    }

    #[test]
    fn named_pool_picks_its_subnet() {
        let t = cluster().choose(&[("ip_pool", "pool-x")]).unwrap();
        assert_eq!(t.subnet, "net1");
        let r = cluster()
            .choose(&[("ip_pool", "pool-missing")])
            .unwrap_err();
        assert_eq!(r.reason, RejectReason::AcquireAddressFailed);
        assert!(r.message.contains("ippool pool-missing does not exist"));
    }

    #[test]
    fn namespace_binding_first_with_room() {
        let c = cluster();
        assert_eq!(c.choose(&[]).unwrap().subnet, "shop-a");
        let t = c.choose_with(&[], None, |s| s != "shop-a").unwrap();
        assert_eq!(t.subnet, "shop-b");
        assert_eq!(t.ip, IpRequest::Dynamic);
        // With no room anywhere the first bound subnet is kept, so the engine reports exhaustion.
        assert_eq!(
            c.choose_with(&[], None, |_| false).unwrap().subnet,
            "shop-a"
        );
    }

    #[test]
    fn the_namespace_order_as_written_wins_over_names() {
        let mut c = cluster();
        c.written_order = Some("shop-b,shop-a");
        assert_eq!(c.choose(&[]).unwrap().subnet, "shop-b");
        let t = c.choose_with(&[], None, |s| s != "shop-b").unwrap();
        assert_eq!(t.subnet, "shop-a");
        // A subnet bound after the annotation was written comes last.
        c.subnets
            .push(subnet("shop-0", "10.21.0.0/24", &["shop"], false));
        let bound: Vec<String> =
            bound_subnets(c.subnets.iter().map(Arc::as_ref), "shop", c.written_order)
                .into_iter()
                .map(subnet_name)
                .collect();
        assert_eq!(bound, ["shop-b", "shop-a", "shop-0"]);
    }

    #[test]
    fn static_address_finds_its_bound_subnet() {
        let t = cluster().choose(&[("ip_address", "10.19.0.7")]).unwrap();
        assert_eq!(t.subnet, "shop-b");
    }

    #[test]
    fn namespace_pools_confine_plain_pods() {
        let mut c = cluster();
        c.pools.push(pool("shop-pool", "shop-b", &["shop"]));
        let t = c.choose(&[]).unwrap();
        assert_eq!(t.subnet, "shop-b");
        assert_eq!(t.ip, IpRequest::Pools(vec!["shop-pool".into()]));
        // A static address is not confined.
        let t = c.choose(&[("ip_address", "10.18.0.9")]).unwrap();
        assert_eq!(t.subnet, "shop-a");
    }

    #[test]
    fn default_subnet_when_unbound() {
        let mut c = cluster();
        c.subnets
            .retain(|s| !s.spec.namespaces.contains(&"shop".to_owned()));
        assert_eq!(c.choose(&[]).unwrap().subnet, "ovn-default");
        c.subnets.clear();
        let r = c.choose(&[]).unwrap_err();
        assert!(r.message.contains("subnet ovn-default does not exist"));
    }

    #[test]
    fn statefulset_list_uses_ordinal_and_start() {
        let t = cluster()
            .choose_with(
                &[("ip_pool", "10.18.0.10,10.18.0.11")],
                Some(Ordinal {
                    ordinal: 11,
                    start: 10,
                }),
                |_| true,
            )
            .unwrap();
        assert_eq!(t.subnet, "shop-a");
        assert!(matches!(
            t.ip,
            IpRequest::List {
                pick: ListPick::Ordinal {
                    ordinal: 11,
                    start: 10
                },
                ..
            }
        ));
    }

    #[test]
    fn network_values() {
        let s = subnet("d", "fd00:10:16::/64,10.16.0.0/16", &[], false);
        let n = SubnetNetwork::of(&s).unwrap();
        assert_eq!(n.block.to_string(), "10.16.0.0/16,fd00:10:16::/64");
        assert_eq!(n.gateway.to_string(), "10.16.0.1,fd00:10:16::1");
        assert_eq!(
            n.router_networks(),
            vec!["10.16.0.1/16".to_owned(), "fd00:10:16::1/64".to_owned()]
        );
        let mut s = (*s).clone();
        s.spec.gateway = "10.16.0.254".into();
        assert_eq!(
            SubnetNetwork::of(&s).unwrap().gateway.to_string(),
            "10.16.0.254,fd00:10:16::1"
        );
        s.spec.cidr_block = "10.16.0.0/33".into();
        assert!(SubnetNetwork::of(&s).is_err());
    }

    #[test]
    fn written_values_use_kube_ovn_formats() {
        let lease = Lease {
            subnet: "ovn-default".into(),
            key: NicKey::new("web-1", "shop", None),
            uid: "u1".into(),
            generation: 1,
            v4: Some("10.16.0.2".parse().unwrap()),
            v6: Some("fd00::2".parse().unwrap()),
            mac: Some(portkeeper_engine::MacAddress::parse("0A:58:0A:10:00:02").unwrap()),
        };
        assert_eq!(
            port_addresses(&lease),
            "0a:58:0a:10:00:02 10.16.0.2 fd00::2"
        );
        let s = subnet("ovn-default", "10.16.0.0/16,fd00::/64", &[], true);
        let network = SubnetNetwork::of(&s).unwrap();
        let a = allocation(&lease, &network, false, Some("vm1"))
            .unwrap()
            .to_annotations(&NetworkKeys::primary());
        assert_eq!(a["ovn.kubernetes.io/allocated"], "true");
        assert_eq!(a["ovn.kubernetes.io/ip_address"], "10.16.0.2,fd00::2");
        assert_eq!(a["ovn.kubernetes.io/mac_address"], "0a:58:0a:10:00:02");
        assert_eq!(a["ovn.kubernetes.io/cidr"], "10.16.0.0/16,fd00::/64");
        assert_eq!(a["ovn.kubernetes.io/gateway"], "10.16.0.1,fd00::1");
        assert_eq!(a["ovn.kubernetes.io/logical_switch"], "ovn-default");
        assert!(!a.contains_key("ovn.kubernetes.io/routed"));
        assert_eq!(a["ovn.kubernetes.io/virtualmachine"], "vm1");
        let unwirable = Lease { mac: None, ..lease };
        let r = allocation(&unwirable, &network, false, None).unwrap_err();
        assert_eq!(r.reason, RejectReason::AcquireAddressFailed);
        assert!(r.message.contains("no MAC"), "{}", r.message);
    }
}
