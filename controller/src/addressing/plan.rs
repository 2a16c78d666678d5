//! Pure decisions for Subnets and IPPools: what the engine and OVN are given, the spec fields
//! filled in, the namespace annotations, the holders a deleted Subnet still has, and the
//! conditions written back. No I/O here.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use portkeeper_api::annotations::{self, NetworkKeys};
use portkeeper_api::{Condition, IPPool, Subnet};
use portkeeper_engine::{Engine, MacAddress, PoolSpec};
use serde_json::json;

use crate::error::Error;
use crate::plan::SubnetNetwork;

/// The engine's view of a Subnet.
pub fn engine_subnet(
    subnet: &Subnet,
    network: &SubnetNetwork,
    gateway_mac: Option<MacAddress>,
) -> portkeeper_engine::SubnetSpec {
    portkeeper_engine::SubnetSpec {
        name: subnet.name_any(),
        cidr_block: subnet.spec.cidr_block.clone(),
        gateway: network.gateway.to_string(),
        exclude_ips: subnet.spec.exclude_ips.clone(),
        gateway_mac,
    }
}

/// The engine's view of an IPPool.
pub fn engine_pool(pool: &IPPool) -> PoolSpec {
    PoolSpec {
        name: pool.name_any(),
        subnet: pool.spec.subnet.clone(),
        ips: pool.spec.ips.clone(),
    }
}

/// The router port of a subnet's gateway, named as Kube-OVN names it.
pub fn router_port_name(router: &str, subnet: &str) -> String {
    format!("{router}-{subnet}")
}

/// The spec fields Kube-OVN fills in when a Subnet leaves them out: `gateway` (the first usable
/// address of each family), `excludeIps` (the gateways) and `protocol` (`IPv4`, `IPv6` or
/// `Dual`). Only missing fields are returned, so the patch never overwrites what a user wrote
/// and never sends an empty value (the apiserver refuses empty strings).
pub fn spec_defaults(
    subnet: &Subnet,
    network: &SubnetNetwork,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    if subnet.spec.gateway.trim().is_empty() {
        out.insert("gateway".into(), network.gateway.to_string().into());
    }
    if subnet.spec.exclude_ips.is_empty() {
        let gateways: Vec<String> = network.gateway.addresses().map(|a| a.to_string()).collect();
        out.insert("excludeIps".into(), gateways.into());
    }
    if subnet.spec.protocol.trim().is_empty() {
        let protocol = match (network.block.v4, network.block.v6) {
            (Some(_), Some(_)) => "Dual",
            (None, Some(_)) => "IPv6",
            _ => "IPv4",
        };
        out.insert("protocol".into(), protocol.into());
    }
    out
}

/// Kube-OVN's namespace annotations: the bound subnets (`logical_switch`, else the default
/// subnet), their CIDRs (`;`-joined), their excludeIps (`,` inside a subnet, `;` between) and the
/// bound IPPools (`ip_pool`, removed when none). `None` removes a key.
///
/// The subnets keep the order `written` (the annotation's current value) gives them, so a user
/// who reorders the list is obeyed; newly bound subnets are appended (see
/// [`crate::plan::bound_subnets`]).
pub fn namespace_annotations(
    namespace: &str,
    subnets: &[Arc<Subnet>],
    pools: &[Arc<IPPool>],
    default_subnet: &str,
    written: Option<&str>,
) -> BTreeMap<String, Option<String>> {
    let keys = NetworkKeys::primary();
    let mut bound =
        crate::plan::bound_subnets(subnets.iter().map(|s| s.as_ref()), namespace, written);
    if bound.is_empty() {
        let default = subnets
            .iter()
            .find(|s| s.spec.default)
            .map(|s| s.name_any())
            .unwrap_or_else(|| default_subnet.to_owned());
        bound.extend(
            subnets
                .iter()
                .map(|s| s.as_ref())
                .filter(|s| s.name_any() == default),
        );
    }
    let mut pool_names: Vec<String> = pools
        .iter()
        .filter(|p| p.spec.namespaces.iter().any(|n| n == namespace))
        .map(|p| p.name_any())
        .collect();
    pool_names.sort();
    let join = |f: &dyn Fn(&Subnet) -> String, sep: &str| {
        bound.iter().map(|s| f(s)).collect::<Vec<_>>().join(sep)
    };
    BTreeMap::from([
        (
            keys.logical_switch.clone(),
            Some(join(&|s| s.name_any(), ",")),
        ),
        (
            keys.cidr.clone(),
            Some(join(&|s| s.spec.cidr_block.clone(), ";")),
        ),
        (
            annotations::key(annotations::DEFAULT_PROVIDER, annotations::EXCLUDE_IPS),
            Some(join(&|s| s.spec.exclude_ips.join(","), ";")),
        ),
        (
            keys.ip_pool.clone(),
            (!pool_names.is_empty()).then(|| pool_names.join(",")),
        ),
    ])
}

/// (namespace, pod, message) for each pod nic still holding an address in the deleted `subnet`.
pub fn deleted_subnet_holders(engine: &Engine, subnet: &str) -> Vec<(String, String, String)> {
    engine
        .snapshot()
        .records
        .into_iter()
        .filter(|r| r.lease.subnet == subnet)
        .filter_map(|r| {
            let (pod, namespace) = r.lease.key.as_str().rsplit_once('.')?;
            let held = r.lease.addresses().to_string();
            let message = subnet_deleted_message(subnet, r.lease.key.as_str(), &held);
            Some((namespace.to_owned(), pod.to_owned(), message))
        })
        .collect()
}

/// The `SubnetDeleted` Event text for one holder of a deleted Subnet.
pub fn subnet_deleted_message(subnet: &str, holder: &str, held: &str) -> String {
    format!(
        "SubnetDeleted: subnet {subnet} was deleted while {holder} holds {held} in it; its switch stays in OVN until every holder is gone"
    )
}

/// The condition type naming the spec fields portkeeper keeps but does not implement.
pub const UNSUPPORTED: &str = "Unsupported";

/// The status conditions of a Subnet or IPPool: `Ready` from the last apply, and `Unsupported`
/// while the spec sets fields portkeeper does not implement. A condition whose content is
/// unchanged keeps its timestamps.
pub fn conditions(
    previous: &[Condition],
    error: Option<&Error>,
    unsupported: &[&str],
) -> Vec<Condition> {
    let ready = match error {
        None => ("True", "ReconcileSucceeded", String::new()),
        Some(e) => ("False", "ReconcileFailed", e.to_string()),
    };
    let mut out = vec![condition(previous, "Ready", ready)];
    if let Some(message) = unsupported_message(unsupported) {
        out.push(condition(
            previous,
            UNSUPPORTED,
            ("True", "FieldsNotImplemented", message),
        ));
    }
    out
}

/// What the `Unsupported` condition and the Warning Event say about `fields`.
pub fn unsupported_message(fields: &[&str]) -> Option<String> {
    (!fields.is_empty()).then(|| {
        format!(
            "portkeeper does not implement {}; kept in the spec, without effect",
            fields.join(", ")
        )
    })
}

fn condition(
    previous: &[Condition],
    type_: &str,
    (status, reason, message): (&str, &str, String),
) -> Condition {
    if let Some(old) = previous.iter().find(|c| c.type_ == type_)
        && old.status == status
        && old.reason == reason
        && old.message == message
    {
        return old.clone();
    }
    let now = Timestamp::now().to_string();
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
        observed_generation: None,
    }
}

/// The merge-patch body of a status: empty strings are not serialised, so each emptied
/// `range` key is sent as `null`, which removes it.
pub fn status_body(status: &impl serde::Serialize, ranges: &[&str]) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        for key in ranges {
            map.entry(*key).or_insert(serde_json::Value::Null);
        }
    }
    json!({ "status": value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portkeeper_api::{IPPoolSpec, SubnetSpec};

    fn subnet(
        name: &str,
        cidr: &str,
        namespaces: &[&str],
        exclude: &[&str],
        default: bool,
    ) -> Arc<Subnet> {
        Arc::new(Subnet::new(
            name,
            SubnetSpec {
                cidr_block: cidr.into(),
                namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
                exclude_ips: exclude.iter().map(|s| s.to_string()).collect(),
                default,
                ..Default::default()
            },
        ))
    }

    #[test]
    fn missing_spec_fields_get_kube_ovn_defaults_and_nothing_else() {
        let s = subnet("d", "10.16.0.0/16,fd00::/64", &[], &[], false);
        let d = spec_defaults(&s, &SubnetNetwork::of(&s).unwrap());
        assert_eq!(d["gateway"], "10.16.0.1,fd00::1");
        assert_eq!(d["excludeIps"], serde_json::json!(["10.16.0.1", "fd00::1"]));
        assert_eq!(d["protocol"], "Dual");
        let mut written = (*s).clone();
        written.spec.gateway = "10.16.0.254".into();
        written.spec.exclude_ips = vec!["10.16.0.10..10.16.0.20".into()];
        written.spec.protocol = "Dual".into();
        assert!(spec_defaults(&written, &SubnetNetwork::of(&written).unwrap()).is_empty());
        let v6 = subnet("v6", "fd00::/64", &[], &[], false);
        assert_eq!(
            spec_defaults(&v6, &SubnetNetwork::of(&v6).unwrap())["protocol"],
            "IPv6"
        );
    }

    #[test]
    fn the_gateway_in_exclude_ips_is_not_counted_twice() {
        let engine = portkeeper_engine::Engine::new();
        let counts = |exclude: Vec<String>| {
            engine
                .upsert_subnet(&portkeeper_engine::SubnetSpec {
                    name: "n".into(),
                    cidr_block: "10.40.0.0/24".into(),
                    gateway: "10.40.0.1".into(),
                    exclude_ips: exclude,
                    ..Default::default()
                })
                .unwrap();
            engine.subnet_status("n").unwrap().v4_available_ips
        };
        assert_eq!(counts(vec![]), counts(vec!["10.40.0.1".into()]));
    }

    #[test]
    fn a_deleted_subnet_names_each_remaining_holder() {
        let engine = portkeeper_engine::Engine::new();
        for (name, cidr) in [("gone", "10.30.0.0/24"), ("kept", "10.31.0.0/24")] {
            engine
                .upsert_subnet(&portkeeper_engine::SubnetSpec {
                    name: name.into(),
                    cidr_block: cidr.into(),
                    ..Default::default()
                })
                .unwrap();
        }
        for (subnet, key) in [("gone", "web.shop"), ("kept", "db.shop")] {
            engine
                .claim(&portkeeper_engine::Claim::dynamic(
                    subnet,
                    portkeeper_engine::NicKey::from(key),
                    "u",
                ))
                .unwrap();
        }
        let holders = deleted_subnet_holders(&engine, "gone");
        assert_eq!(holders.len(), 1);
        let (namespace, pod, message) = &holders[0];
        assert_eq!((namespace.as_str(), pod.as_str()), ("shop", "web"));
        assert!(
            message.contains("subnet gone") && message.contains("10.30.0.2"),
            "{message}"
        );
        assert!(engine.remove_subnet("gone").is_err(), "refused while held");
    }

    #[test]
    fn unsupported_fields_are_a_condition_of_their_own() {
        let fresh = conditions(&[], None, &["natOutgoing", "vlan"]);
        assert_eq!(fresh.len(), 2);
        assert_eq!(
            (fresh[0].type_.as_str(), fresh[0].status.as_str()),
            ("Ready", "True")
        );
        let unsupported = &fresh[1];
        assert_eq!(unsupported.type_, UNSUPPORTED);
        assert_eq!(unsupported.status, "True");
        assert!(
            unsupported.message.contains("natOutgoing, vlan"),
            "{}",
            unsupported.message
        );
        // Unchanged conditions keep their timestamps; a failure changes only Ready.
        let mut aged = fresh.clone();
        for c in &mut aged {
            c.last_transition_time = Some("2020-01-01T00:00:00Z".into());
        }
        assert_eq!(conditions(&aged, None, &["natOutgoing", "vlan"]), aged);
        let failed = conditions(
            &aged,
            Some(&Error::Cache("x".into())),
            &["natOutgoing", "vlan"],
        );
        assert_eq!(failed[0].status, "False");
        assert_eq!(failed[1], aged[1]);
        // Once the fields are gone, so is the condition.
        assert_eq!(conditions(&aged, None, &[]).len(), 1);
    }

    #[test]
    fn namespace_annotations_as_kube_ovn_writes_them() {
        let subnets = vec![
            subnet("ovn-default", "10.16.0.0/16", &[], &["10.16.0.1"], true),
            subnet(
                "b",
                "10.18.0.0/24",
                &["shop"],
                &["10.18.0.1", "10.18.0.5..10.18.0.9"],
                false,
            ),
            subnet("a", "10.17.0.0/24", &["shop"], &[], false),
        ];
        let pools = vec![Arc::new(IPPool::new(
            "p1",
            IPPoolSpec {
                subnet: "a".into(),
                namespaces: vec!["shop".into()],
                ..Default::default()
            },
        ))];
        let a = namespace_annotations("shop", &subnets, &pools, "ovn-default", None);
        let get = |k: &str| a[&format!("ovn.kubernetes.io/{k}")].clone();
        assert_eq!(get("logical_switch").as_deref(), Some("a,b"));
        assert_eq!(get("cidr").as_deref(), Some("10.17.0.0/24;10.18.0.0/24"));
        assert_eq!(
            get("exclude_ips").as_deref(),
            Some(";10.18.0.1,10.18.0.5..10.18.0.9")
        );
        assert_eq!(get("ip_pool").as_deref(), Some("p1"));

        // The order written in the namespace stays, with CIDRs and excludeIps in that order.
        let a = namespace_annotations("shop", &subnets, &pools, "ovn-default", Some("b,a"));
        let get = |k: &str| a[&format!("ovn.kubernetes.io/{k}")].clone();
        assert_eq!(get("logical_switch").as_deref(), Some("b,a"));
        assert_eq!(get("cidr").as_deref(), Some("10.18.0.0/24;10.17.0.0/24"));

        let a = namespace_annotations("other", &subnets, &pools, "ovn-default", None);
        assert_eq!(
            a["ovn.kubernetes.io/logical_switch"].as_deref(),
            Some("ovn-default")
        );
        assert_eq!(a["ovn.kubernetes.io/ip_pool"], None);
    }
}
