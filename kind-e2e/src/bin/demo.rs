//! `dev/demo`'s story on the local cluster `kind-e2e/local/up` brought up (its run folder is
//! `PORTKEEPER_RUN_DIR`, default `kind-e2e/local/.run`). Exits non-zero when a step failed.

use std::path::PathBuf;
use std::process::ExitCode;

use kind_e2e::Cluster;
use kind_e2e::harness::local_scripts;

fn main() -> ExitCode {
    let run_dir = std::env::var_os("PORTKEEPER_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| local_scripts().join(".run"));
    let cluster = match Cluster::attach_local(&run_dir) {
        Ok(cluster) => cluster,
        Err(e) => {
            eprintln!("no local cluster in {}: {e}", run_dir.display());
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    if runtime.block_on(kind_e2e::demo::run(&cluster)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
