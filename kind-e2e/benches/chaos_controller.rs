//! Chaos figure: the leading controller killed with SIGKILL every 5 s while pods are created and
//! deleted, two replicas always running (a new one started after each kill, as a Deployment
//! would). Prints how long the last pods waited for an address after the churn stopped, and ends
//! with the consistency check (`run_on_cluster_with`): 0 duplicates, 0 leaks. Run as root:
//! `cargo test -p portkeeper-kind-e2e --bench chaos_controller` (`PORTKEEPER_CHAOS_KILLS`,
//! default 6; `PORTKEEPER_CHAOS_PODS`, pods created per second, default 10).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kind_e2e::portkeeper::{
    Controller, allocated, controller_binary, create_pod, prepare_cluster, run_on_cluster_with,
    setting,
};
use kind_e2e::{Cluster, ClusterOptions};
use kube::api::{Api, DeleteParams};

const NS: &str = "churn";
const CIDR: &str = "10.16.0.0/16";

fn main() {
    let options = ClusterOptions {
        nodes: 1,
        controller: false,
        node_agent: Some(PathBuf::from(env!("CARGO_BIN_EXE_node-agent"))),
        ..ClusterOptions::default()
    };
    run_on_cluster_with(options, 2, cases);
}

async fn cases(cluster: &Cluster) -> Vec<Controller> {
    let kills: u32 = setting("PORTKEEPER_CHAOS_KILLS", 6);
    let per_second: u32 = setting("PORTKEEPER_CHAOS_PODS", 10);
    let bin = controller_binary();
    let client = prepare_cluster(cluster, NS, false).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let mut replicas: VecDeque<(u32, Controller)> = (0..2)
        .map(|g| (g, Controller::start(&bin, cluster, CIDR, g, &[])))
        .collect();
    let (mut created, mut deleted, mut live) = (0u32, 0u32, VecDeque::new());
    let started = Instant::now();
    for kill in 0..kills {
        // Five seconds of churn: create `per_second` pods a second, delete the oldest beyond 50.
        for _ in 0..5 * per_second {
            let name = format!("p{created}");
            create_pod(&pods, NS, &name).await;
            created += 1;
            live.push_back(name);
            if live.len() > 50 {
                let old = live.pop_front().unwrap();
                pods.delete(&old, &DeleteParams::default()).await.unwrap();
                deleted += 1;
            }
            tokio::time::sleep(Duration::from_millis(1000 / u64::from(per_second))).await;
        }
        let holder = leases
            .get_opt("portkeeper-controller")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity);
        let leader = replicas
            .iter()
            .position(|(g, _)| holder.as_deref() == Some(format!("e2e-{g}").as_str()));
        match leader {
            Some(i) => {
                let (g, controller) = replicas.remove(i).unwrap();
                controller.kill();
                println!("kill {kill}: SIGKILL of leader e2e-{g}");
            }
            None => println!("kill {kill}: no live replica holds the Lease yet; none killed"),
        }
        let generation = kill + 2;
        replicas.push_back((
            generation,
            Controller::start(&bin, cluster, CIDR, generation, &[]),
        ));
    }
    let churn = started.elapsed();
    let settle = Instant::now();
    for name in &live {
        allocated(&pods, name).await;
    }
    println!(
        "churn {:.0} s: {created} pods created, {deleted} deleted, {kills} leader kills; the {} live pods all allocated {:.1} s after the churn stopped",
        churn.as_secs_f64(),
        live.len(),
        settle.elapsed().as_secs_f64()
    );
    replicas.into_iter().map(|(_, c)| c).collect()
}
