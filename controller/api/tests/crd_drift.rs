//! The committed CRD YAML must be exactly what the Rust types generate.

use std::path::Path;

use portkeeper_api::crdgen;

fn assert_committed(path: &str, generated: &str) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        committed == generated,
        "{path} differs from the Rust types; regenerate with: {}",
        crdgen::REGENERATE_COMMAND
    );
}

#[test]
fn kubeovn_crds_match_types() {
    assert_committed(crdgen::KUBEOVN_CRDS_PATH, &crdgen::kubeovn_crds_yaml());
}

#[test]
fn kubevirt_test_crds_match_types() {
    assert_committed(
        crdgen::KUBEVIRT_TEST_CRDS_PATH,
        &crdgen::kubevirt_test_crds_yaml(),
    );
}
