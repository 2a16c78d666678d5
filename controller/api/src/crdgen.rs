//! Renders the committed CRD YAML from the Rust types: the `kubeovn.io` CRDs portkeeper serves
//! (`yamls/`) and the KubeVirt CRDs the local test cluster needs (`kind-e2e/crds/`).
//!
//! `cargo run -p portkeeper-api --bin crdgen` rewrites the files; the `crd_drift` test fails when
//! the committed files differ from what the types produce.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{Value, json};

use crate::ip::IP;
use crate::ippool::IPPool;
use crate::kubevirt::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration};
use crate::subnet::Subnet;

/// Path (relative to the repository root) of the kubeovn.io CRDs portkeeper serves.
pub const KUBEOVN_CRDS_PATH: &str = "yamls/crds.yaml";
/// Path (relative to the repository root) of the KubeVirt CRDs used only by the local test
/// cluster; a real cluster gets them from KubeVirt itself.
pub const KUBEVIRT_TEST_CRDS_PATH: &str = "kind-e2e/crds/kubevirt.yaml";
/// The command that regenerates both files, printed when they drift.
pub const REGENERATE_COMMAND: &str = "cargo run -p portkeeper-api --bin crdgen";

const HEADER: &str = "# Generated from the Rust types in controller/api; do not edit.\n# Regenerate with: cargo run -p portkeeper-api --bin crdgen\n";

/// The `kubeovn.io/v1` CRDs (Subnet, IP, IPPool) as one multi-document YAML file.
pub fn kubeovn_crds_yaml() -> String {
    render([Subnet::crd(), IP::crd(), IPPool::crd()].map(to_value))
}

/// Removes `default` from every schema node. Defaults come from `#[serde(default)]` and add
/// nothing (the types fill them in on read), and a v1.20 API server rejects an empty-string
/// default as `null`.
fn strip_defaults(schema: &mut Value) {
    let Some(node) = schema.as_object_mut() else {
        return;
    };
    node.remove("default");
    if let Some(props) = node.get_mut("properties").and_then(Value::as_object_mut) {
        props.values_mut().for_each(strip_defaults);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = node.get_mut(key) {
            strip_defaults(child);
        }
    }
}

/// The KubeVirt CRDs for the local cluster: our partial schemas, with unknown fields preserved
/// under `spec` and `status` so a test can play virt-controller with KubeVirt's full objects.
pub fn kubevirt_test_crds_yaml() -> String {
    render(
        [
            VirtualMachine::crd(),
            VirtualMachineInstance::crd(),
            VirtualMachineInstanceMigration::crd(),
        ]
        .map(|crd| {
            let mut value = to_value(crd);
            preserve_unknown_fields(&mut value);
            value
        }),
    )
}

fn to_value(crd: CustomResourceDefinition) -> Value {
    let mut value = serde_json::to_value(crd).expect("a CRD always serialises");
    if let Some(versions) = value
        .pointer_mut("/spec/versions")
        .and_then(Value::as_array_mut)
    {
        for version in versions {
            if let Some(schema) = version.pointer_mut("/schema/openAPIV3Schema") {
                strip_defaults(schema);
            }
        }
    }
    value
}

fn preserve_unknown_fields(crd: &mut Value) {
    let Some(versions) = crd
        .pointer_mut("/spec/versions")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for version in versions {
        if let Some(props) = version
            .pointer_mut("/schema/openAPIV3Schema/properties")
            .and_then(Value::as_object_mut)
        {
            for part in ["spec", "status"] {
                if let Some(schema) = props.get_mut(part).and_then(Value::as_object_mut) {
                    schema.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
                }
            }
        }
    }
}

fn render<const N: usize>(docs: [Value; N]) -> String {
    let mut out = String::from(HEADER);
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc).expect("JSON values always render as YAML"));
    }
    out
}
