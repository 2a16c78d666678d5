//! The portkeeper node agent: plays the kubelet for one node of the local cluster. It registers
//! the Node, gives each pod bound to it a network namespace wired by the configured CNI plugin, and
//! reports the pod Running with its addresses. Credentials come from `KUBECONFIG`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kind_e2e::cni::{CniRuntime, NetworkConfigList};
use kind_e2e::node::{self, NodeSpec};
use kind_e2e::pods::PodAgent;
use kind_e2e::sandbox::SandboxStore;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "portkeeper node agent (a kubelet stand-in for the local cluster)"
)]
struct Args {
    /// Name of the Node to register.
    #[arg(long)]
    node_name: String,
    /// Address reported as the Node's InternalIP and the pods' hostIP.
    #[arg(long)]
    node_ip: String,
    /// CNI network configuration list (.conflist), or a single .conf.
    #[arg(long)]
    cni_conflist: PathBuf,
    /// Folder(s) holding CNI plugin binaries, colon separated (CNI_PATH).
    #[arg(long, default_value = "/opt/cni/bin:/usr/lib/cni")]
    cni_bin_dir: String,
    /// Where sandbox records are kept across restarts.
    #[arg(long)]
    state_dir: PathBuf,
    /// Prefix of the pods' network namespace names.
    #[arg(long, default_value = "pk-")]
    netns_prefix: String,
    /// Network namespace (ip netns name) to run CNI plugins in: the node's own host namespace.
    #[arg(long)]
    host_netns: Option<String>,
    #[arg(long, default_value = "8")]
    cpu: String,
    #[arg(long, default_value = "16Gi")]
    memory: String,
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Seconds between Node status and Lease heartbeats.
    #[arg(long, default_value_t = 10)]
    heartbeat_seconds: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = NetworkConfigList::load(&args.cni_conflist)?;
    let cni = CniRuntime::new(config, std::env::split_paths(&args.cni_bin_dir).collect())
        .with_host_netns(args.host_netns.clone());
    let sandboxes = SandboxStore::open(&args.state_dir)?;
    let client = kube::Client::try_default().await?;

    let spec = NodeSpec {
        name: args.node_name.clone(),
        internal_ip: args.node_ip.clone(),
        cpu: args.cpu,
        memory: args.memory,
        max_pods: args.max_pods,
        ready_since: node::time_now(),
    };
    let mut attempt = 0;
    while let Err(e) = node::register(&client, &spec).await {
        attempt += 1;
        let delay = kind_e2e::pods::backoff(attempt);
        tracing::warn!(error = %e, retry_in = ?delay, "node registration failed");
        tokio::time::sleep(delay).await;
    }
    tracing::info!(node = %spec.name, "node ready");
    tokio::spawn(node::heartbeat(
        client.clone(),
        spec,
        Duration::from_secs(args.heartbeat_seconds),
    ));

    let agent = Arc::new(PodAgent::new(
        client,
        args.node_name,
        args.node_ip,
        cni,
        sandboxes,
        args.netns_prefix,
    ));
    tokio::select! {
        _ = agent.run() => Err("pod watch ended".into()),
        _ = shutdown_signal() => {
            tracing::info!("stopping; pod sandboxes are kept for the next start");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
