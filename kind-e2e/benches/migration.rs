//! How long a VM's traffic stops when it live-migrates: portkeeper's migration options against
//! the same migration without them, side by side in one run.
//!
//! A three-node local cluster (portkeeper's controller and CNI), two VMs migrating back and forth
//! between node1 and node2, one after the other, and a prober pod on node3 streaming a numbered
//! UDP probe to each VM every 10 ms while each VM streams one back (`kind_e2e::migration`). One
//! VM migrates as KubeVirt drives it (a VirtualMachineInstanceMigration, so portkeeper sets
//! `requested-chassis` and `activation-strategy=rarp`); the other migrates identically but with
//! no VirtualMachineInstanceMigration, so its port carries no options (what a controller
//! without multi-chassis binding support gives). Per migration and direction: probes lost
//! (the gap, at 10 ms a probe), duplicated and reordered, from the start of the migration until
//! a second after the losing launcher pod is gone.
//!
//! `cargo bench -p portkeeper-kind-e2e --bench migration [-- --migrations N]` (root; N defaults
//! to 20 per VM).

use std::time::Duration;

use kind_e2e::dataplane::Peers;
use kind_e2e::kubevirt::VirtController;
use kind_e2e::migration::{Ending, LiveVm, Mode, Outcome};
use kind_e2e::portkeeper::{Controller, controller_binary, load_average, prepare_cluster};
use kind_e2e::probe::{Verdict, quantile};
use kind_e2e::vm::INTERVAL;
use kind_e2e::{Cluster, ClusterOptions};

const NS: &str = "bench";
const CIDR: &str = "10.19.0.0/16";

fn main() {
    let migrations = migrations_arg();
    let cluster = Cluster::up(ClusterOptions {
        nodes: 3,
        node_agent: Some(env!("CARGO_BIN_EXE_node-agent").into()),
        controller: false,
        ..ClusterOptions::default()
    })
    .expect("local cluster up");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(run(&cluster, migrations))
    }));
    drop(runtime);
    cluster.down().expect("cluster down");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// `--migrations N` (cargo bench passes `--bench` too, which is ignored).
fn migrations_arg() -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--migrations")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(20)
}

async fn run(cluster: &Cluster, migrations: u32) {
    let client = prepare_cluster(cluster, NS, true).await;
    let _controller = Controller::start(&controller_binary(), cluster, CIDR, 0, &[]);
    Peers::start(cluster, &client, NS).await;
    let prober = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), NS)
        .get("peer-node3")
        .await
        .expect("the prober pod");
    let virt = VirtController::new(&client, NS);
    let mut rows = [
        (
            Mode::Options,
            LiveVm::start(cluster, &virt, "with-options", "node1", &prober, 7207).await,
            Vec::new(),
        ),
        (
            Mode::Naive,
            LiveVm::start(cluster, &virt, "naive", "node1", &prober, 7208).await,
            Vec::new(),
        ),
    ];
    let load_before = load_average();
    for i in 0..migrations {
        let to = if i % 2 == 0 { "node2" } else { "node1" };
        for (mode, vm, outcomes) in &mut rows {
            let out = vm.migrate(to, *mode, Ending::Succeeded).await;
            eprintln!(
                "{} migration {} → {to}: gap {:?} / {:?} (prober → VM / VM → prober)",
                vm.name(),
                i + 1,
                out.judged.to_vm.gap(INTERVAL),
                out.judged.to_prober.gap(INTERVAL),
            );
            outcomes.push(out);
        }
    }
    println!(
        "load average before: {load_before}; after: {}",
        load_average()
    );
    println!(
        "| port options | migrations | gap prober → VM p50 / p99 / max | gap VM → prober p50 / p99 / max | worse way p50 / p99 / max | duplicates | reordered |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (mode, _, outcomes) in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            match mode {
                Mode::Options => "portkeeper (`requested-chassis` + `activation-strategy=rarp`)",
                Mode::Naive => "none (naive)",
            },
            outcomes.len(),
            spread(outcomes, |o| o.judged.to_vm.gap(INTERVAL)),
            spread(outcomes, |o| o.judged.to_prober.gap(INTERVAL)),
            spread(outcomes, |o| {
                o.judged
                    .to_vm
                    .gap(INTERVAL)
                    .max(o.judged.to_prober.gap(INTERVAL))
            }),
            total(outcomes, |v| v.duplicates),
            total(outcomes, |v| v.reordered),
        );
    }
}

/// `p50 / p99 / max` in milliseconds.
fn spread(outcomes: &[Outcome], value: impl Fn(&Outcome) -> Duration) -> String {
    let values: Vec<Duration> = outcomes.iter().map(value).collect();
    let ms = |q: f64| quantile(&values, q).map_or(0, |d| d.as_millis());
    format!("{} / {} / {} ms", ms(0.5), ms(0.99), ms(1.0))
}

/// A count summed over both directions of every migration.
fn total(outcomes: &[Outcome], count: impl Fn(&Verdict) -> u64) -> u64 {
    outcomes
        .iter()
        .map(|o| count(&o.judged.to_vm) + count(&o.judged.to_prober))
        .sum()
}
