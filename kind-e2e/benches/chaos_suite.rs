//! Chaos figures under churn: pods created and deleted without pause, the leading controller
//! killed with SIGKILL every 5 s (two replicas always running), and in turn, one at a time: the
//! Northbound database's fault (its raft leader SIGKILLed, or the standalone server restarted),
//! an API server restart, ovn-controller and CNI daemon restarts on the VM's node, a StatefulSet
//! deleted and recreated, and a VM live-migrated (the harness plays virt-controller). A prober pod
//! streams numbered UDP probes to the VM and back every 10 ms throughout, so the longest run of
//! lost probes around a restart is how long a running pod lost connectivity. Prints one line per
//! fault and a summary; ends with the consistency check (`run_on_cluster_with`): 0 duplicates,
//! 0 leaks. A benchmark, not a test: it fails only if something never happens or the check fails.
//!
//! Run as root: `cargo test -p portkeeper-kind-e2e --bench chaos_suite` (a debug build, as the e2e
//! tests). Settings: `PORTKEEPER_CHAOS_CHURN`, pods created in all (default 1000);
//! `PORTKEEPER_CHAOS_RATE`, pods created per second (default 10); `PORTKEEPER_CHAOS_LIVE`, churned
//! pods alive at once (default 50); `PORTKEEPER_CHAOS_NB`, `raft` (default) or `standalone`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kind_e2e::dataplane::Peers;
use kind_e2e::kubevirt::VirtController;
use kind_e2e::migration::{Ending, LiveVm, Mode};
use kind_e2e::portkeeper::{
    Controller, allocated, controller_binary, load_average, plain_pod, prepare_cluster,
    run_on_cluster_with, setting, wait_for,
};
use kind_e2e::probe::Verdict;
use kind_e2e::vm::{INTERVAL, Judged};
use kind_e2e::{Cluster, ClusterOptions};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use tokio::task::JoinHandle;

const NS: &str = "chaos";
const CIDR: &str = "10.16.0.0/16";
/// Seconds between two faults of the schedule.
const BETWEEN_FAULTS: Duration = Duration::from_secs(5);
/// How often the leading controller is killed.
const CONTROLLER_KILLS: Duration = Duration::from_secs(5);
/// Replicas of the StatefulSet recreated in the schedule.
const SET_REPLICAS: u32 = 3;

fn main() {
    let raft = std::env::var("PORTKEEPER_CHAOS_NB").map_or(true, |v| v != "standalone");
    let options = ClusterOptions {
        nodes: 2,
        raft,
        controller: false,
        node_agent: Some(PathBuf::from(env!("CARGO_BIN_EXE_node-agent"))),
        ..ClusterOptions::default()
    };
    run_on_cluster_with(options, 4, async |cluster: &Cluster| {
        cases(cluster, raft).await
    });
}

async fn cases(cluster: &Cluster, raft: bool) -> Vec<Controller> {
    let churn_total: u32 = setting("PORTKEEPER_CHAOS_CHURN", 1000);
    let rate: u32 = setting("PORTKEEPER_CHAOS_RATE", 10);
    let live_cap: usize = setting("PORTKEEPER_CHAOS_LIVE", 50);
    let client = prepare_cluster(cluster, NS, true).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let load_before = load_average();

    let killer = Killer::start(cluster, Api::namespaced(client.clone(), "kube-system"));
    Peers::start(cluster, &client, NS).await;
    let prober = pods.get("peer-node2").await.expect("the prober pod");
    let virt = VirtController::new(&client, NS);
    let mut vm = LiveVm::start(cluster, &virt, "vm", "node1", &prober, 7207).await;
    statefulset(&sets, "web").await;
    for i in 0..SET_REPLICAS {
        allocated(&pods, &format!("web-{i}")).await;
    }

    let churn = tokio::spawn(churn(pods.clone(), churn_total, rate, live_cap));
    let started = Instant::now();
    let mut lines = Vec::new();
    let mut markers = 0;
    let mut step = 0;
    while !churn.is_finished() {
        tokio::time::sleep(BETWEEN_FAULTS).await;
        let fault = FAULTS[step % FAULTS.len()];
        step += 1;
        let line = match fault {
            Fault::Northbound => {
                let what = northbound_fault(cluster, raft);
                let took = next_allocation(&pods, &mut markers).await;
                format!("{what}: next allocation {:.2} s after", took.as_secs_f64())
            }
            Fault::ApiServer => {
                let at = Instant::now();
                cluster
                    .restart("apiserver")
                    .expect("restart the API server");
                let down = at.elapsed();
                let took = next_allocation(&pods, &mut markers).await;
                format!(
                    "API server restarted ({:.1} s until ready): next allocation {:.2} s after it was ready",
                    down.as_secs_f64(),
                    took.as_secs_f64()
                )
            }
            Fault::OvnController | Fault::Daemon => {
                let component = match fault {
                    Fault::OvnController => format!("ovn-controller-{}", vm.node()),
                    _ => format!("daemon-{}", vm.node()),
                };
                let from = vm.mark();
                cluster.restart(&component).expect("restart");
                tokio::time::sleep(Duration::from_secs(2)).await;
                format!(
                    "{component} restarted: VM <-> prober {}",
                    longest_gaps(&vm.judge_since(from))
                )
            }
            Fault::StatefulSet => {
                let took = recreate(&sets, &pods, "web").await;
                format!(
                    "StatefulSet web ({SET_REPLICAS} pods) deleted and recreated: all allocated {:.1} s after the delete",
                    took.as_secs_f64()
                )
            }
            Fault::Migration => {
                let to = if vm.node() == "node1" {
                    "node2"
                } else {
                    "node1"
                };
                let outcome = vm.migrate(to, Mode::Options, Ending::Succeeded).await;
                format!("VM migrated to {to}: {}", longest_gaps(&outcome.judged))
            }
        };
        println!("{:>5.0} s  {line}", started.elapsed().as_secs_f64());
        lines.push((fault, line));
    }
    let (created, deleted, failed, live) = churn.await.expect("the churn task");
    let settle = Instant::now();
    for name in &live {
        allocated(&pods, name).await;
    }
    let settled = settle.elapsed();
    let (replicas, kills, exits) = killer.stop().await;
    println!(
        "churn {:.0} s: {created} pods created ({failed} creations refused while the API server was down), {deleted} deleted, {} live pods all allocated {:.1} s after the churn stopped",
        started.elapsed().as_secs_f64(),
        live.len(),
        settled.as_secs_f64()
    );
    println!(
        "controller: {kills} leader SIGKILLs ({exits} replicas ended on their own); faults injected: {}",
        FAULTS
            .iter()
            .map(|f| format!("{f:?} x{}", lines.iter().filter(|(g, _)| g == f).count()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "load average before: {load_before}; after: {}",
        load_average()
    );
    drop(vm);
    replicas
}

/// The faults of the schedule, injected one at a time in this order, over and over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Northbound,
    ApiServer,
    OvnController,
    Daemon,
    StatefulSet,
    Migration,
}

const FAULTS: [Fault; 6] = [
    Fault::Northbound,
    Fault::ApiServer,
    Fault::OvnController,
    Fault::Daemon,
    Fault::StatefulSet,
    Fault::Migration,
];

/// SIGKILL to the NB raft leader (started again at once, as a supervisor would), or a restart
/// of the standalone NB server; says which.
fn northbound_fault(cluster: &Cluster, raft: bool) -> String {
    if !raft {
        cluster.restart("nb").expect("restart nb");
        return "NB standalone server restarted".into();
    }
    let leader = cluster.nb_raft_leader().expect("a raft leader");
    cluster
        .kill(&format!("nb-{leader}"))
        .expect("SIGKILL the NB leader");
    cluster
        .start(&format!("nb-{leader}"))
        .expect("the killed NB server starts again");
    format!("NB raft leader nb-{leader} SIGKILLed")
}

/// Creates a marker pod and returns how long it took to be allocated.
async fn next_allocation(pods: &Api<Pod>, markers: &mut u32) -> Duration {
    let name = format!("marker-{markers}");
    *markers += 1;
    let at = Instant::now();
    wait_for(&format!("{name} created"), async || {
        match pods
            .create(&PostParams::default(), &plain_pod(NS, &name))
            .await
        {
            // A creation whose reply was lost to an API server restart may have gone through.
            Ok(_) => Some(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Some(()),
            Err(_) => None,
        }
    })
    .await;
    allocated(pods, &name).await;
    let took = at.elapsed();
    let _ = pods.delete(&name, &DeleteParams::default()).await;
    took
}

/// Creates `rate` pods a second, deleting the oldest beyond `live_cap`, until `total` were
/// created; a creation the API server refuses (while it restarts) is counted and skipped.
/// Returns (created, deleted, refused, the live pods' names).
async fn churn(
    pods: Api<Pod>,
    total: u32,
    rate: u32,
    live_cap: usize,
) -> (u32, u32, u32, Vec<String>) {
    let (mut created, mut deleted, mut refused) = (0, 0, 0);
    let mut live = VecDeque::new();
    let pause = Duration::from_millis(1000 / u64::from(rate.max(1)));
    let mut attempt = 0;
    while created < total {
        let name = format!("p{attempt}");
        attempt += 1;
        match pods
            .create(&PostParams::default(), &plain_pod(NS, &name))
            .await
        {
            Ok(_) => {
                created += 1;
                live.push_back(name);
            }
            Err(_) => refused += 1,
        }
        if live.len() > live_cap {
            let old = live.pop_front().expect("a live pod");
            match pods.delete(&old, &DeleteParams::default()).await {
                Ok(_) => deleted += 1,
                Err(_) => live.push_front(old),
            }
        }
        tokio::time::sleep(pause).await;
    }
    (created, deleted, refused, live.into())
}

async fn statefulset(sets: &Api<StatefulSet>, name: &str) {
    let set = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": { "name": name, "namespace": NS },
        "spec": {
            "replicas": SET_REPLICAS,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{ "name": "c", "image": "busybox" }],
                },
            },
        },
    }))
    .expect("a StatefulSet");
    wait_for("StatefulSet created", async || {
        sets.create(&PostParams::default(), &set).await.ok()
    })
    .await;
}

/// Deletes the StatefulSet with its pods (foreground), creates it again (a new owner, so fresh
/// identities) and waits until its pods are allocated; returns how long that took.
async fn recreate(sets: &Api<StatefulSet>, pods: &Api<Pod>, name: &str) -> Duration {
    let at = Instant::now();
    let _ = sets.delete(name, &DeleteParams::foreground()).await;
    wait_for(
        &format!("StatefulSet {name} and its pods gone"),
        async || {
            let set = sets.get_opt(name).await.ok()?;
            let mut left = 0;
            for i in 0..SET_REPLICAS {
                left += usize::from(pods.get_opt(&format!("{name}-{i}")).await.ok()?.is_some());
            }
            (set.is_none() && left == 0).then_some(())
        },
    )
    .await;
    statefulset(sets, name).await;
    for i in 0..SET_REPLICAS {
        allocated(pods, &format!("{name}-{i}")).await;
    }
    at.elapsed()
}

/// The longest run of lost probes each way, as time at one probe per [`INTERVAL`].
fn longest_gaps(judged: &Judged) -> String {
    let longest = |v: &Verdict| {
        let run = v.lost.iter().map(|r| r.end - r.start).max().unwrap_or(0);
        INTERVAL * u32::try_from(run).unwrap_or(u32::MAX)
    };
    format!(
        "longest gap {} ms prober -> VM, {} ms VM -> prober ({} and {} probes lost in all)",
        longest(&judged.to_vm).as_millis(),
        longest(&judged.to_prober).as_millis(),
        judged.to_vm.lost_count(),
        judged.to_prober.lost_count()
    )
}

/// Kills the replica holding the Lease every [`CONTROLLER_KILLS`] and keeps two replicas running
/// (a new one for each killed or exited), as a Deployment would.
struct Killer {
    stopping: Arc<AtomicBool>,
    task: JoinHandle<(Vec<Controller>, u32, u32)>,
}

impl Killer {
    fn start(cluster: &Cluster, leases: Api<Lease>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let cluster = cluster.handle();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let bin = controller_binary();
            let mut generation = 0;
            let mut replicas: Vec<(u32, Controller)> = Vec::new();
            let (mut kills, mut exits) = (0, 0);
            loop {
                let before = replicas.len();
                replicas.retain_mut(|(_, c)| c.exited_within(Duration::ZERO).is_none());
                exits += u32::try_from(before - replicas.len()).unwrap_or(0);
                while replicas.len() < 2 {
                    replicas.push((
                        generation,
                        Controller::start(&bin, &cluster, CIDR, generation, &[]),
                    ));
                    generation += 1;
                }
                if stopped.load(Ordering::SeqCst) {
                    return (replicas.into_iter().map(|(_, c)| c).collect(), kills, exits);
                }
                tokio::time::sleep(CONTROLLER_KILLS).await;
                let holder = leases
                    .get_opt("portkeeper-controller")
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec?.holder_identity);
                if let Some(i) = replicas
                    .iter()
                    .position(|(g, _)| holder.as_deref() == Some(format!("e2e-{g}").as_str()))
                {
                    replicas.remove(i).1.kill();
                    kills += 1;
                }
            }
        });
        Self {
            stopping: stop,
            task,
        }
    }

    /// Stops killing; returns the running replicas, the kills and the replicas that exited.
    async fn stop(self) -> (Vec<Controller>, u32, u32) {
        self.stopping.store(true, Ordering::SeqCst);
        self.task.await.expect("the killer task")
    }
}
