//! The node daemon: one per node (a DaemonSet), serving the CNI plugin on a root-only unix socket.

use clap::Parser;
use ovsdb_client::runtime::transport::TlsArgs;
use portkeeper_cni::cni::config::DEFAULT_DAEMON_SOCKET;
use portkeeper_cni::daemon::netns::Netns;
use portkeeper_cni::daemon::ovs::Ovs;
use portkeeper_cni::daemon::{Daemon, KubeAllocations, Settings, chassis, server};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Wires pods into OVN on this node for the portkeeper CNI plugin.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// This node's name, as registered in Kubernetes.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The unix socket the plugin talks to (its directory is made root-only).
    #[arg(long, default_value = DEFAULT_DAEMON_SOCKET)]
    socket: PathBuf,
    /// The node's Open_vSwitch database (`unix:`, `tcp:` or `ssl:`).
    #[arg(long, default_value = "unix:/run/openvswitch/db.sock")]
    ovs_db: String,
    /// Certificate files for an `ssl:` Open_vSwitch database.
    #[command(flatten)]
    tls: TlsArgs,
    /// The OVN integration bridge.
    #[arg(long, default_value = "br-int")]
    bridge: String,
    /// Pod interface MTU when the network configuration sets none (1400 leaves room for Geneve).
    #[arg(long, default_value_t = 1400)]
    mtu: u32,
    /// Network namespace (a path, e.g. /run/netns/node1) holding this node's ovs-vswitchd and the
    /// pods' host ends, when it is not the daemon's own (several nodes on one machine). The socket is
    /// bound there too, which makes an abstract `@name` socket per node.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Seconds ADD waits for the controller's allocation.
    #[arg(long, default_value_t = 60)]
    allocation_timeout: u64,
    /// Seconds ADD waits for ovn-controller to install the port.
    #[arg(long, default_value_t = 30)]
    install_timeout: u64,
    /// The node's resolv.conf, read for Subnets whose `spec.dns.fromNode` is set (in the
    /// DaemonSet, a hostNetwork pod's own /etc/resolv.conf is the kubelet's copy of the node's).
    #[arg(long, default_value = "/etc/resolv.conf")]
    node_resolv_conf: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let kube = kube::Client::try_default().await?;
    let tls = args.tls.config().map_err(anyhow::Error::msg)?;
    let ovs = Ovs::connect(&args.ovs_db, &args.bridge, Duration::from_secs(60), tls).await?;
    match ovs.system_id() {
        Some(chassis_name) => {
            tokio::spawn(chassis::publish(
                kube.clone(),
                args.node_name.clone(),
                chassis_name,
            ));
        }
        None => tracing::warn!(
            "Open_vSwitch has no external_ids:system-id; the node's chassis name is not published"
        ),
    }
    let settings = Settings {
        default_mtu: args.mtu,
        allocation_timeout: Duration::from_secs(args.allocation_timeout),
        install_timeout: Duration::from_secs(args.install_timeout),
    };
    let node_netns = args.netns.as_deref().map(Netns::open).transpose()?;
    let daemon = Arc::new(
        Daemon::new(KubeAllocations(kube), ovs, settings, node_netns.as_ref())?
            .with_node_resolv_conf(args.node_resolv_conf),
    );
    let listener = match &node_netns {
        Some(netns) => netns.enter_sync(|| server::bind(&args.socket))??,
        None => server::bind(&args.socket)?,
    };
    tracing::info!(socket = %args.socket.display(), node = %args.node_name, "serving CNI requests");
    tokio::select! {
        served = server::serve(listener, daemon) => served?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
    }
    Ok(())
}
