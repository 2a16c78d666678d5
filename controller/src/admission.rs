//! The rules a Subnet or IPPool must pass before it is stored: applied by the validating
//! webhook at the door and again by the controller to whatever got past it (the webhook may be
//! down, or may not be installed). Pure: they read specs only, and the engine's own parsers and
//! pool rules decide, so the webhook and the controller say the same thing.

use std::net::IpAddr;

use ipnet::IpNet;
use kube::ResourceExt;
use portkeeper_api::{IPPool, Subnet};
use portkeeper_engine::parse::{IpRange, parse_cidr_block, parse_pool_entry};
use portkeeper_engine::{Engine, PoolSpec};

/// The VPC a Subnet belongs to: its `spec.vpc`, the cluster router when empty.
fn vpc<'a>(subnet: &'a Subnet, cluster_router: &'a str) -> &'a str {
    if subnet.spec.vpc.is_empty() {
        cluster_router
    } else {
        &subnet.spec.vpc
    }
}

fn networks(subnet: &Subnet) -> Vec<IpNet> {
    parse_cidr_block(&subnet.spec.cidr_block)
        .map(|b| {
            [b.v4.map(IpNet::V4), b.v6.map(IpNet::V6)]
                .into_iter()
                .flatten()
                .collect()
        })
        .unwrap_or_default()
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Whether `a` came before `b`: created earlier, or at the same second with a lower name. Of
/// two overlapping Subnets the later one is refused.
pub fn precedes(a: &Subnet, b: &Subnet) -> bool {
    let key = |s: &Subnet| {
        (
            s.metadata.creation_timestamp.as_ref().map(|t| t.0),
            s.name_any(),
        )
    };
    key(a) < key(b)
}

/// Why `subnet` cannot be realised: a `cidrBlock`, `gateway` or `excludeIps` that does not
/// parse (the engine's own error), or a CIDR overlapping one of `others` in the same VPC (the
/// VPC is `cluster_router` when `spec.vpc` is empty). An empty `cidrBlock` (Kube-OVN's MAC-only
/// subnet) is not refused here: it is kept and reported as not ready.
pub fn subnet_refusal<'a>(
    subnet: &Subnet,
    others: impl IntoIterator<Item = &'a Subnet>,
    cluster_router: &str,
) -> Option<String> {
    let name = subnet.name_any();
    if let Some(Err(e)) = subnet
        .spec
        .node_affinity
        .as_ref()
        .map(|a| a.node_affinity())
    {
        return Some(format!("subnet {name}: {e}"));
    }
    if let Some(Err(e)) = subnet.spec.dns.as_ref().map(|d| d.validate()) {
        return Some(format!("subnet {name}: {e}"));
    }
    if subnet.spec.cidr_block.trim().is_empty() {
        return None;
    }
    let spec = portkeeper_engine::SubnetSpec {
        name: name.clone(),
        cidr_block: subnet.spec.cidr_block.clone(),
        gateway: subnet.spec.gateway.clone(),
        exclude_ips: subnet.spec.exclude_ips.clone(),
        gateway_mac: None,
    };
    if let Err(e) = Engine::new().upsert_subnet(&spec) {
        return Some(e.to_string());
    }
    let own = networks(subnet);
    let here = vpc(subnet, cluster_router);
    others
        .into_iter()
        .filter(|o| o.name_any() != name && vpc(o, cluster_router) == here)
        .find_map(|other| {
            let theirs = networks(other);
            let (mine, hit) = own
                .iter()
                .find_map(|m| theirs.iter().find(|t| overlap(m, t)).map(|t| (m, t)))?;
            Some(format!(
                "subnet {name} cidrBlock {mine} overlaps subnet {} ({hit}) in VPC {here}",
                other.name_any()
            ))
        })
}

/// Why `pool` cannot be used: its Subnet is missing (`subnet` is `None`), an entry of `ips`
/// does not parse or lies outside the Subnet's CIDRs, or it shares an address with another pool
/// of the Subnet (the engine's own overlap rule, with its message).
pub fn pool_refusal<'a>(
    pool: &IPPool,
    subnet: Option<&Subnet>,
    others: impl IntoIterator<Item = &'a IPPool>,
) -> Option<String> {
    let name = pool.name_any();
    let Some(subnet) = subnet else {
        return Some(format!(
            "ippool {name}: subnet {} does not exist",
            pool.spec.subnet
        ));
    };
    if let Some(Err(e)) = pool.spec.node_affinity.as_ref().map(|a| a.node_affinity()) {
        return Some(format!("ippool {name}: {e}"));
    }
    let nets = networks(subnet);
    for entry in &pool.spec.ips {
        let range = match parse_pool_entry(entry) {
            Ok(r) => r,
            Err(e) => return Some(format!("ippool {name}: {e}")),
        };
        if !nets.iter().any(|n| inside(&range, n)) {
            return Some(format!(
                "ippool {name}: {entry} is outside subnet {} ({})",
                pool.spec.subnet, subnet.spec.cidr_block
            ));
        }
    }
    let engine = Engine::new();
    let subnet_spec = portkeeper_engine::SubnetSpec {
        name: pool.spec.subnet.clone(),
        cidr_block: subnet.spec.cidr_block.clone(),
        ..Default::default()
    };
    engine.upsert_subnet(&subnet_spec).ok()?;
    let spec = |p: &IPPool| PoolSpec {
        name: p.name_any(),
        subnet: p.spec.subnet.clone(),
        ips: p.spec.ips.clone(),
    };
    for other in others
        .into_iter()
        .filter(|o| o.spec.subnet == pool.spec.subnet && o.name_any() != name)
    {
        // Another pool that the engine refuses on its own is not this pool's fault.
        let _ = engine.upsert_pool(&spec(other));
    }
    engine.upsert_pool(&spec(pool)).err().map(|e| e.to_string())
}

fn inside(range: &IpRange, net: &IpNet) -> bool {
    let contains = |a: &IpAddr| net.contains(a);
    contains(&range.start) && contains(&range.end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portkeeper_api::{IPPoolSpec, SubnetSpec};

    fn subnet(name: &str, cidr: &str, vpc: &str) -> Subnet {
        Subnet::new(
            name,
            SubnetSpec {
                cidr_block: cidr.into(),
                vpc: vpc.into(),
                ..Default::default()
            },
        )
    }

    fn pool(name: &str, subnet: &str, ips: &[&str]) -> IPPool {
        IPPool::new(
            name,
            IPPoolSpec {
                subnet: subnet.into(),
                ips: ips.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn overlapping_subnets_of_one_vpc_are_refused() {
        let existing = [
            subnet("ovn-default", "10.16.0.0/16", ""),
            subnet("dual", "10.30.0.0/24,fd00:30::/64", "ovn-cluster"),
            subnet("elsewhere", "10.40.0.0/24", "tenant-b"),
        ];
        let refusal = |s: &Subnet| subnet_refusal(s, &existing, "ovn-cluster");
        let inside = subnet("inside", "10.16.5.0/24", "");
        assert_eq!(
            refusal(&inside).as_deref(),
            Some(
                "subnet inside cidrBlock 10.16.5.0/24 overlaps subnet ovn-default (10.16.0.0/16) in VPC ovn-cluster"
            )
        );
        let around = subnet("around", "10.0.0.0/8", "ovn-cluster");
        assert!(refusal(&around).unwrap().contains("ovn-default"));
        let v6 = subnet("v6", "fd00:30::/48", "");
        assert!(
            refusal(&v6)
                .unwrap()
                .contains("overlaps subnet dual (fd00:30::/64)")
        );
        // Another VPC may reuse the range; its own VPC may not.
        assert_eq!(refusal(&subnet("b2", "10.16.0.0/24", "tenant-c")), None);
        assert!(refusal(&subnet("b3", "10.40.0.0/25", "tenant-b")).is_some());
        assert_eq!(refusal(&subnet("apart", "10.17.0.0/16", "")), None);
        // An update of a subnet is not compared with itself.
        assert_eq!(refusal(&subnet("ovn-default", "10.16.0.0/15", "")), None);
    }

    #[test]
    fn unparsable_specs_are_refused_with_the_engines_message() {
        let refusal = |s: &Subnet| subnet_refusal(s, [], "ovn-cluster").unwrap_or_default();
        assert!(refusal(&subnet("bad", "10.16.0.0/33", "")).contains("cidrBlock"));
        let mut gw = subnet("gw", "10.16.0.0/24", "");
        gw.spec.gateway = "10.99.0.1".into();
        assert!(refusal(&gw).contains("gateway"), "{}", refusal(&gw));
        let mut ex = subnet("ex", "10.16.0.0/24", "");
        ex.spec.exclude_ips = vec!["10.16.0.9..10.16.0.3".into()];
        assert!(refusal(&ex).contains("excludeIps"), "{}", refusal(&ex));
        let mut zone = subnet("zone", "10.16.0.0/24", "");
        zone.spec.node_affinity = Some(portkeeper_api::subnet::LabelSelector {
            match_labels: [("zone".to_owned(), "a b".to_owned())].into(),
            ..Default::default()
        });
        assert!(refusal(&zone).contains("\"a b\""), "{}", refusal(&zone));
        let mut dns = subnet("dns", "10.16.0.0/24", "");
        dns.spec.dns = Some(portkeeper_api::dns::SubnetDns {
            nameservers: vec!["ns1".into()],
            ..Default::default()
        });
        assert!(
            refusal(&dns).contains("nameserver \"ns1\""),
            "{}",
            refusal(&dns)
        );
        // Kube-OVN's MAC-only subnet has no cidrBlock: kept, not refused.
        assert_eq!(
            subnet_refusal(&subnet("mac", "", ""), [], "ovn-cluster"),
            None
        );
    }

    #[test]
    fn a_pool_must_lie_in_its_subnet_and_apart_from_the_others() {
        let net = subnet("net1", "10.50.0.0/24,fd00:50::/64", "");
        let others = [
            pool("a", "net1", &["10.50.0.10..10.50.0.19"]),
            pool("x", "other", &["10.50.0.30"]),
        ];
        let refusal = |p: &IPPool| pool_refusal(p, Some(&net), &others);
        assert_eq!(
            refusal(&pool("ok", "net1", &["10.50.0.20/30", "fd00:50::5"])),
            None
        );
        assert_eq!(
            refusal(&pool("out", "net1", &["10.50.1.5"])).as_deref(),
            Some("ippool out: 10.50.1.5 is outside subnet net1 (10.50.0.0/24,fd00:50::/64)")
        );
        assert!(refusal(&pool("half", "net1", &["10.50.0.250..10.50.1.3"])).is_some());
        let overlapping = refusal(&pool("b", "net1", &["10.50.0.15..10.50.0.25"])).unwrap();
        assert!(
            overlapping.contains('a') && overlapping.contains("10.50.0.15"),
            "{overlapping}"
        );
        // A pool of another subnet never overlaps.
        assert_eq!(refusal(&pool("c", "net1", &["10.50.0.30"])), None);
        // The pool itself, updated, is not compared with its old version.
        assert_eq!(
            refusal(&pool("a", "net1", &["10.50.0.10..10.50.0.29"])),
            None
        );
        assert!(refusal(&pool("bad", "net1", &["10.50.0.x"])).is_some());
        let mut zone = pool("zone", "net1", &[]);
        zone.spec.node_affinity = Some(portkeeper_api::subnet::LabelSelector {
            match_expressions: vec![portkeeper_api::subnet::LabelSelectorRequirement {
                key: "zone".into(),
                operator: "Gt".into(),
                values: vec!["1".into()],
            }],
            ..Default::default()
        });
        assert!(
            refusal(&zone)
                .unwrap()
                .starts_with("ippool zone: nodeAffinity operator \"Gt\"")
        );
        assert_eq!(
            pool_refusal(&pool("lost", "nope", &[]), None, []).as_deref(),
            Some("ippool lost: subnet nope does not exist")
        );
    }
}
