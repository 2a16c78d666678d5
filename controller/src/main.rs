//! The portkeeper controller binary: flags, logging, then [`portkeeper_controller::run::run`].

use std::sync::Arc;

use clap::Parser;
use portkeeper_controller::Config;
use portkeeper_controller::ovn::OvnNorthbound;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = Config::parse();
    let client = kube::Client::try_default().await?;
    let nb = Arc::new(OvnNorthbound::start(&config.ovn_nb_db)?);
    portkeeper_controller::run::run(config, client, nb).await?;
    Ok(())
}
