//! The portkeeper controller binary: flags, logging, then [`portkeeper_controller::run::run`].

use std::sync::Arc;

use clap::Parser;
use portkeeper_controller::Config;
use portkeeper_controller::leader;
use portkeeper_controller::ovn::{Fence, OvnNorthbound};
use portkeeper_controller::term::Term;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = Config::parse();
    let mut kube_config = kube::Config::infer().await?;
    // Names the replica in the API server's audit log.
    let agent = format!(
        "portkeeper-controller/{} ({})",
        env!("CARGO_PKG_VERSION"),
        config.identity()
    );
    kube_config
        .headers
        .push((http::header::USER_AGENT, agent.parse()?));
    let term = Term::default();
    let client = leader::fenced_client(kube_config.clone(), term.clone())?;
    let lease_client = kube::Client::try_from(kube_config)?;
    let fence = Fence::new(term.clone(), &config.identity());
    let mut nb = OvnNorthbound::start(&config.ovn_nb_db, config.tls.config()?, Some(fence))?;
    if let Some(group) = config.nb_group() {
        nb = nb.grouped(group);
    }
    let nb = Arc::new(nb);
    // In a container the controller is PID 1, which ignores a signal it does not handle: without
    // this, `kubectl delete pod` waits the whole grace period and then SIGKILLs it.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = portkeeper_controller::run::run(config, client, lease_client, term, nb) => result?,
        _ = terminate.recv() => tracing::info!("SIGTERM: exiting; another replica leads once the Lease expires"),
    }
    Ok(())
}
