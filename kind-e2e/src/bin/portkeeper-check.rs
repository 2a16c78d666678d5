//! `portkeeper-check`: the consistency check of [`kind_e2e::consistency`] against a live cluster.
//! Exits 0 when every address is held once and nothing leaked, 1 with each finding otherwise.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kind_e2e::consistency;
use ovsdb_client::runtime::transport::TlsArgs;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Checks that every IP and MAC is held exactly once across pods, IP resources, \
             OVN Northbound ports and Subnet counters, and that no port or IP resource leaked. \
             Credentials come from KUBECONFIG (or the in-cluster service account)."
)]
struct Args {
    /// OVN Northbound database: comma-separated `tcp:host:port`, `ssl:host:port` or `unix:path`.
    #[arg(long, env = "OVN_NB_DB")]
    ovn_nb_db: String,
    /// Certificate files for an `ssl:` Northbound.
    #[command(flatten)]
    tls: TlsArgs,
    /// Seconds to keep checking while findings remain (changes in flight settle); 0 checks once.
    #[arg(long, default_value_t = 0)]
    settle: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(report) => {
            println!("{report}");
            if report.is_consistent() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("portkeeper-check: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &Args) -> Result<consistency::Report, Box<dyn std::error::Error>> {
    let client = kube::Client::try_default().await?;
    let nb = consistency::connect_northbound(&args.ovn_nb_db, args.tls.config()?).await?;
    let report = consistency::settle(&client, &nb, Duration::from_secs(args.settle)).await?;
    Ok(report)
}
