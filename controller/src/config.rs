//! Command-line flags (each also settable from the environment).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ovsdb_client::runtime::group::GroupConfig;
use ovsdb_client::runtime::transport::TlsArgs;

/// portkeeper-controller: pod addresses as OVN logical switch ports, Kube-OVN compatible.
#[derive(Clone, Debug, Parser)]
#[command(version, about)]
pub struct Config {
    /// OVN Northbound database: comma-separated `tcp:host:port`, `ssl:host:port` or `unix:path`.
    #[arg(
        long,
        env = "OVN_NB_DB",
        default_value = "unix:/var/run/ovn/ovnnb_db.sock"
    )]
    pub ovn_nb_db: String,

    /// Subnet used by pods with no other choice, when no Subnet has `spec.default: true`.
    #[arg(long, env = "PORTKEEPER_DEFAULT_LS", default_value = "ovn-default")]
    pub default_ls: String,

    /// CIDR block of the default subnet; when set, the Subnet is created if missing.
    #[arg(long, env = "PORTKEEPER_DEFAULT_CIDR")]
    pub default_cidr: Option<String>,

    /// Excluded addresses of the default subnet when it is created (`ip` or `a..b`, comma separated).
    #[arg(long, env = "PORTKEEPER_DEFAULT_EXCLUDE_IPS", default_value = "")]
    pub default_exclude_ips: String,

    /// The cluster logical router that holds every subnet's gateway.
    #[arg(long, env = "PORTKEEPER_CLUSTER_ROUTER", default_value = "ovn-cluster")]
    pub cluster_router: String,

    /// Seconds between garbage collections of portkeeper's own orphaned ports and IP resources
    /// (one also runs at start); 0 disables the periodic run.
    #[arg(long, env = "PORTKEEPER_GC_INTERVAL", default_value_t = 360)]
    pub gc_interval: u64,

    /// Seconds between retention sweeps, which release StatefulSet and VM identities whose
    /// workload is gone or scaled below them (one also runs at start and on every StatefulSet or
    /// VM change).
    #[arg(long, env = "PORTKEEPER_RETENTION_INTERVAL", default_value_t = 30)]
    pub retention_interval: u64,

    /// Parallel pod reconciles.
    #[arg(long, env = "PORTKEEPER_WORKERS", default_value_t = 16)]
    pub workers: u16,

    /// Group commit: concurrent Northbound writes (of different pods) sent as one OVSDB
    /// transaction, each with its own result and error.
    #[arg(long, env = "PORTKEEPER_NB_GROUP_COMMIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub nb_group_commit: bool,

    /// Most writes in one grouped Northbound transaction.
    #[arg(long, env = "PORTKEEPER_NB_GROUP_MAX_WRITES", default_value_t = 256)]
    pub nb_group_max_writes: u16,

    /// Grouped Northbound transactions outstanding at once; a write that finds fewer is sent
    /// at once, the others wait for the next one.
    #[arg(long, env = "PORTKEEPER_NB_GROUP_IN_FLIGHT", default_value_t = 1)]
    pub nb_group_in_flight: u16,

    /// Milliseconds the first write of a grouped transaction waits for others (0: none).
    #[arg(long, env = "PORTKEEPER_NB_GROUP_LINGER_MS", default_value_t = 0)]
    pub nb_group_linger_ms: u64,

    /// Address of the metrics and health server (plain HTTP, unauthenticated): loopback unless
    /// set, e.g. to the node's address for the kubelet's probes (the shipped Deployment does).
    #[arg(
        long,
        env = "PORTKEEPER_METRICS_ADDR",
        default_value = "127.0.0.1:10660"
    )]
    pub metrics_addr: SocketAddr,

    /// Address of the validating admission webhook (HTTPS); unset, no webhook is served.
    /// Needs `--webhook-cert-file` and `--webhook-key-file`. See yamls/webhook.yaml.
    #[arg(long, env = "PORTKEEPER_WEBHOOK_ADDR", requires_all = ["webhook_cert_file", "webhook_key_file"])]
    pub webhook_addr: Option<SocketAddr>,

    /// PEM certificate chain of the webhook (re-read when the file changes).
    #[arg(long, env = "PORTKEEPER_WEBHOOK_CERT_FILE")]
    pub webhook_cert_file: Option<std::path::PathBuf>,

    /// PEM private key of the webhook certificate (re-read when the file changes).
    #[arg(long, env = "PORTKEEPER_WEBHOOK_KEY_FILE")]
    pub webhook_key_file: Option<std::path::PathBuf>,

    /// Leader-election Lease name.
    #[arg(
        long,
        env = "PORTKEEPER_LEASE_NAME",
        default_value = "portkeeper-controller"
    )]
    pub lease_name: String,

    /// Namespace of the Lease (the controller's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub lease_namespace: String,

    /// This replica's identity in the Lease (its pod name); defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a silent leader keeps the Lease.
    #[arg(long, env = "PORTKEEPER_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,

    /// Certificate files for an `ssl:` Northbound.
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl Config {
    /// The Lease duration.
    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.lease_duration.max(3))
    }

    /// How Northbound writes are grouped, if they are.
    pub fn nb_group(&self) -> Option<GroupConfig> {
        self.nb_group_commit.then(|| GroupConfig {
            max_members: usize::from(self.nb_group_max_writes.max(1)),
            in_flight: usize::from(self.nb_group_in_flight.max(1)),
            linger: Duration::from_millis(self.nb_group_linger_ms),
            ..GroupConfig::default()
        })
    }

    /// The GC period, if periodic GC is on.
    pub fn gc_interval(&self) -> Option<Duration> {
        (self.gc_interval > 0).then(|| Duration::from_secs(self.gc_interval))
    }

    /// The period of the retention sweep (at least a second).
    pub fn retention_interval(&self) -> Duration {
        Duration::from_secs(self.retention_interval.max(1))
    }

    /// Where and with which certificate to serve the webhook, if it is on.
    pub fn webhook(&self) -> Option<(SocketAddr, crate::webhook::tls::TlsFiles)> {
        let files = crate::webhook::tls::TlsFiles {
            cert: self.webhook_cert_file.clone()?,
            key: self.webhook_key_file.clone()?,
        };
        Some((self.webhook_addr?, files))
    }

    /// This replica's identity.
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| format!("portkeeper-{}", std::process::id()))
        })
    }
}
