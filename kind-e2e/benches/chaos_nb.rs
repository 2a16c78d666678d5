//! Chaos figure: the NB raft leader killed with SIGKILL while the controller runs, and the time from
//! the kill to the next pod allocation (issue goal: under 5 s). A benchmark, not a test: it prints
//! the figures and ends with the consistency check (`run_on_cluster_with`), failing only if an
//! allocation never comes or the check fails. Run as root:
//! `cargo test -p portkeeper-kind-e2e --bench chaos_nb` (a debug build, as the e2e tests;
//! `PORTKEEPER_CHAOS_ROUNDS`, default 5; `PORTKEEPER_CHAOS_PAUSE`, seconds between a round's
//! allocation and the next kill, default 15; kills closer together also measure how
//! `ovsdb-client` backs off when connections keep being lost).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kind_e2e::portkeeper::{
    Controller, allocated, controller_binary, create_pod, prepare_cluster, run_on_cluster_with,
    setting,
};
use kind_e2e::{Cluster, ClusterOptions};
use kube::api::Api;

const NS: &str = "chaos";
const CIDR: &str = "10.16.0.0/16";

fn main() {
    let options = ClusterOptions {
        nodes: 1,
        raft: true,
        controller: false,
        node_agent: Some(PathBuf::from(env!("CARGO_BIN_EXE_node-agent"))),
        ..ClusterOptions::default()
    };
    run_on_cluster_with(options, 1, cases);
}

async fn cases(cluster: &Cluster) -> Controller {
    let rounds = setting("PORTKEEPER_CHAOS_ROUNDS", 5);
    let pause = Duration::from_secs(setting("PORTKEEPER_CHAOS_PAUSE", 15));
    let client = prepare_cluster(cluster, NS, false).await;
    let pods: Api<Pod> = Api::namespaced(client, NS);
    let controller = Controller::start(&controller_binary(), cluster, CIDR, 0, &[]);
    create(&pods, "warm").await;
    allocated(&pods, "warm").await;
    let mut figures = Vec::new();
    for round in 0..rounds {
        let leader = cluster.nb_raft_leader().expect("a raft leader");
        let name = format!("after-kill-{round}");
        let killed = Instant::now();
        cluster
            .kill(&format!("nb-{leader}"))
            .expect("SIGKILL the NB leader");
        create(&pods, &name).await;
        allocated(&pods, &name).await;
        let took = killed.elapsed();
        println!(
            "round {round}: NB leader nb-{leader} killed (SIGKILL), next allocation after {:.2} s",
            took.as_secs_f64()
        );
        figures.push(took.as_secs_f64());
        cluster
            .start(&format!("nb-{leader}"))
            .expect("the killed NB server starts again");
        tokio::time::sleep(pause).await;
    }
    figures.sort_by(f64::total_cmp);
    println!(
        "NB leader SIGKILL -> next allocation over {rounds} rounds, {} s apart at least: min {:.2} s, median {:.2} s, max {:.2} s",
        pause.as_secs(),
        figures[0],
        figures[figures.len() / 2],
        figures[figures.len() - 1]
    );
    controller
}

async fn create(pods: &Api<Pod>, name: &str) {
    create_pod(pods, NS, name).await;
}
