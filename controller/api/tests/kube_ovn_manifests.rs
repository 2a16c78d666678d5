//! A Subnet and an IPPool exported from Kube-OVN (`tests/data/kube-ovn-export.yaml`, every spec
//! and status field set) fit the generated CRD schemas exactly: no field would be refused by
//! strict validation or pruned by the API server. The e2e `kube_ovn_compat` applies the same file
//! to a real API server.

use std::collections::BTreeSet;

use kube::CustomResourceExt;
use portkeeper_api::{IPPool, Subnet};
use serde::Deserialize;
use serde_json::Value;

const EXPORT: &str = include_str!("data/kube-ovn-export.yaml");

/// The 41 JSON names of Kube-OVN's `SubnetSpec` (pkg/apis/kubeovn/v1/subnet.go).
const KUBE_OVN_SUBNET_SPEC: [&str; 41] = [
    "default",
    "vpc",
    "protocol",
    "namespaces",
    "cidrBlock",
    "gateway",
    "excludeIps",
    "provider",
    "gatewayType",
    "gatewayNode",
    "gatewayNodeSelectors",
    "natOutgoing",
    "externalEgressGateway",
    "policyRoutingPriority",
    "policyRoutingTableID",
    "mtu",
    "private",
    "allowSubnets",
    "vlan",
    "vips",
    "logicalGateway",
    "disableGatewayCheck",
    "disableInterConnection",
    "enableDHCP",
    "dhcpV4Options",
    "dhcpV6Options",
    "enableIPv6RA",
    "ipv6RAConfigs",
    "acls",
    "allowEWTraffic",
    "natOutgoingPolicyRules",
    "u2oInterconnectionIP",
    "u2oInterconnection",
    "u2oFeatures",
    "enableLb",
    "enableEcmp",
    "enableMulticastSnoop",
    "enableExternalLBAddress",
    "routeTable",
    "namespaceSelectors",
    "nodeNetwork",
];

fn exported() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(EXPORT)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect()
}

fn schema(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let crd = serde_json::to_value(crd).unwrap();
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
        .unwrap()
        .clone()
}

/// Every path in `value` that `schema` does not declare, or declares with another type.
fn misfits(path: &str, value: &Value, schema: &Value, out: &mut Vec<String>) {
    let declared = schema.get("type").and_then(Value::as_str);
    let fits = match (declared, value) {
        (Some("object"), Value::Object(map)) => {
            for (key, child) in map {
                let child_schema = schema
                    .pointer(&format!("/properties/{key}"))
                    .or_else(|| schema.get("additionalProperties"));
                match child_schema {
                    Some(s) => misfits(&format!("{path}.{key}"), child, s, out),
                    None => out.push(format!("{path}.{key}: not declared")),
                }
            }
            true
        }
        (Some("array"), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                misfits(&format!("{path}[{i}]"), item, &schema["items"], out);
            }
            true
        }
        (Some("string"), Value::String(_)) | (Some("boolean"), Value::Bool(_)) => true,
        (Some("integer"), Value::Number(n)) => n.is_i64() || n.is_u64(),
        (Some("number"), Value::Number(_)) => true,
        _ => false,
    };
    if !fits {
        out.push(format!("{path}: {value} is not a {declared:?}"));
    }
}

#[test]
fn the_export_sets_all_41_subnet_spec_fields() {
    let subnet = &exported()[0];
    let keys: BTreeSet<&str> = subnet["spec"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, KUBE_OVN_SUBNET_SPEC.into_iter().collect());
}

/// The Subnet fields portkeeper adds to Kube-OVN's (docs/compatibility.md, "portkeeper's
/// extensions").
const PORTKEEPER_SUBNET_SPEC: [&str; 2] = ["nodeAffinity", "dns"];

#[test]
fn the_subnet_crd_declares_exactly_kube_ovns_spec_and_the_extensions() {
    let schema = schema(&Subnet::crd());
    let declared: BTreeSet<&str> = schema
        .pointer("/properties/spec/properties")
        .and_then(Value::as_object)
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        declared,
        KUBE_OVN_SUBNET_SPEC
            .into_iter()
            .chain(PORTKEEPER_SUBNET_SPEC)
            .collect()
    );
    assert!(
        schema.pointer("/properties/spec/required").is_none(),
        "Kube-OVN requires no spec field (a MAC-only subnet has no cidrBlock)"
    );
}

#[test]
fn every_exported_field_fits_the_schemas() {
    let docs = exported();
    for (doc, crd) in docs.iter().zip([Subnet::crd(), IPPool::crd()]) {
        let mut out = Vec::new();
        for part in ["spec", "status"] {
            misfits(
                part,
                &doc[part],
                &schema(&crd)["properties"][part],
                &mut out,
            );
        }
        assert!(out.is_empty(), "{}: {out:#?}", crd.spec.names.kind);
    }
}

#[test]
fn the_types_read_the_export_and_name_what_is_not_implemented() {
    let docs = exported();
    let subnet: Subnet = serde_json::from_value(docs[0].clone()).unwrap();
    assert_eq!(subnet.spec.cidr_block, "10.70.0.0/24");
    assert_eq!(subnet.spec.policy_routing_table_id, 1000);
    assert_eq!(subnet.spec.enable_lb, Some(true));
    assert_eq!(subnet.spec.acls[0].match_, "ip4.src == 10.71.0.0/24");
    assert_eq!(
        subnet
            .status
            .as_ref()
            .unwrap()
            .kube_ovn
            .u2o_interconnection_vpc,
        "ovn-cluster"
    );
    assert_eq!(
        subnet.spec.unsupported_fields("ovn-cluster"),
        [
            "gatewayType",
            "gatewayNode",
            "gatewayNodeSelectors",
            "natOutgoing",
            "externalEgressGateway",
            "policyRoutingPriority",
            "policyRoutingTableID",
            "private",
            "allowSubnets",
            "vlan",
            "vips",
            "ipv6RAConfigs",
            "acls",
            "allowEWTraffic",
            "natOutgoingPolicyRules",
            "u2oInterconnectionIP",
            "u2oInterconnection",
            "u2oFeatures",
            "enableLb",
            "enableEcmp",
            "enableMulticastSnoop",
            "enableExternalLBAddress",
            "routeTable",
            "namespaceSelectors",
            "nodeNetwork",
        ]
    );
    // Another VPC than the cluster router is not implemented either.
    assert!(
        subnet
            .spec
            .unsupported_fields("other-router")
            .contains(&"vpc")
    );

    let pool: IPPool = serde_json::from_value(docs[1].clone()).unwrap();
    assert_eq!(pool.spec.unsupported_fields(), ["enableAddressSet"]);
}

#[test]
fn a_plain_subnet_uses_nothing_unsupported() {
    let subnet: Subnet = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubeovn.io/v1", "kind": "Subnet",
        "metadata": { "name": "plain" },
        "spec": {
            "cidrBlock": "10.80.0.0/24", "default": false, "natOutgoing": false,
            "private": false, "gatewayNode": "", "gatewayType": "distributed",
            "provider": "ovn", "vpc": "ovn-cluster", "enableLb": false,
            "u2oFeatures": {}, "disableGatewayCheck": true,
        }
    }))
    .unwrap();
    assert!(subnet.spec.unsupported_fields("ovn-cluster").is_empty());
}
