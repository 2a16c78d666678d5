//! Writes the generated CRD YAML files (run from anywhere inside the repository).

use std::path::{Path, PathBuf};

use portkeeper_api::crdgen;

fn main() -> std::io::Result<()> {
    let root = repo_root();
    for (path, body) in [
        (crdgen::KUBEOVN_CRDS_PATH, crdgen::kubeovn_crds_yaml()),
        (
            crdgen::KUBEVIRT_TEST_CRDS_PATH,
            crdgen::kubevirt_test_crds_yaml(),
        ),
    ] {
        let file = root.join(path);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&file, body)?;
        println!("wrote {path}");
    }
    Ok(())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
