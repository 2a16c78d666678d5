//! What allocating after binding costs a CNI ADD: node-affinity pools (allocated once the pod is
//! bound to a node) against ordinary pods (allocated at creation, before the scheduler binds
//! them: Kube-OVN's way), side by side in one run on a two-node local cluster.
//!
//! Both kinds go through the scheduler (a `kubernetes.io/hostname` node selector), one of each
//! at a time, alternating: ordinary pods land on node1, node-affinity pods (`ip_pools` naming a
//! pool bound to node2) on node2, so each node's daemon log holds one kind. Per kind: the ADD's
//! wait for the allocation and the whole ADD (the daemon's own `ADD phases` timings), and the
//! time from the pod's creation to `allocated`.
//!
//! `cargo bench -p portkeeper-kind-e2e --bench affinity_add` (root; `PORTKEEPER_AFFINITY_PODS`
//! pods of each kind, 30 by default).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kind_e2e::dataplane::wait_running;
use kind_e2e::portkeeper::{
    Controller, allocated, controller_binary, kubectl_apply, prepare_cluster, run_on_cluster_with,
    setting,
};
use kind_e2e::probe::quantile;
use kind_e2e::{Cluster, ClusterOptions};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

const NS: &str = "bench";
const CIDR: &str = "10.16.0.0/16";

fn main() {
    let options = ClusterOptions {
        nodes: 2,
        controller: false,
        node_agent: Some(PathBuf::from(env!("CARGO_BIN_EXE_node-agent"))),
        ..ClusterOptions::default()
    };
    run_on_cluster_with(options, 1, run);
}

async fn run(cluster: &Cluster) -> Controller {
    let pods_per_kind: usize = setting("PORTKEEPER_AFFINITY_PODS", 30);
    let client = prepare_cluster(cluster, NS, false).await;
    let controller = Controller::start(&controller_binary(), cluster, CIDR, 0, &[]);
    kubectl_apply(
        cluster,
        "apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata:\n  name: bench-net\nspec:\n  \
         cidrBlock: 10.41.0.0/16\n\
         ---\napiVersion: kubeovn.io/v1\nkind: IPPool\nmetadata:\n  name: node2-pool\nspec:\n  \
         subnet: bench-net\n  ips: [10.41.1.0/24]\n  nodeAffinity:\n    matchLabels:\n      \
         kubernetes.io/hostname: node2\n",
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mut to_allocated: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for i in 0..pods_per_kind {
        for (kind, (node, annotations)) in [
            (
                "node1",
                json!({"ovn.kubernetes.io/logical_switch": "bench-net"}),
            ),
            ("node2", json!({"ovn.kubernetes.io/ip_pools": "node2-pool"})),
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("{node}-{i}");
            let object = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": NS, "annotations": annotations},
                "spec": {"automountServiceAccountToken": false,
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [{"name": "c", "image": "busybox"}]},
            }))
            .unwrap();
            let created = Instant::now();
            pods.create(&PostParams::default(), &object).await.unwrap();
            allocated(&pods, &name).await;
            to_allocated[kind].push(created.elapsed());
            wait_running(&pods, &name, None).await;
        }
    }
    println!("{pods_per_kind} pods of each kind, one at a time, through the scheduler:");
    println!("| What | kind | p50 | p90 | max |");
    println!("|---|---|---|---|---|");
    for (kind, node, label) in [
        (0, "node1", "allocated at creation (Kube-OVN's way)"),
        (1, "node2", "node-affinity pool, allocated after binding"),
    ] {
        let phases = add_phases(cluster, node);
        println!(
            "({node}: {} ADDs logged for {pods_per_kind} pods)",
            phases.len()
        );
        let waits: Vec<Duration> = phases.iter().map(|p| p.0).collect();
        let totals: Vec<Duration> = phases.iter().map(|p| p.1).collect();
        row("ADD: wait for the allocation", label, waits);
        row("ADD: total", label, totals);
        row("creation to allocated", label, to_allocated[kind].clone());
    }
    println!("load average: {}", load_average());
    controller
}

fn row(what: &str, kind: &str, values: Vec<Duration>) {
    let ms = |q: f64| {
        let d = quantile(&values, q).unwrap_or_default();
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    };
    println!(
        "| {what} | {kind} | {} | {} | {} |",
        ms(0.5),
        ms(0.9),
        ms(1.0)
    );
}

/// `(allocation wait, whole ADD)` of every ADD the node's daemon logged (`ADD phases`).
fn add_phases(cluster: &Cluster, node: &str) -> Vec<(Duration, Duration)> {
    let log = cluster.run_dir().join(format!("log/daemon-{node}.log"));
    std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("ADD phases"))
        .map(|l| {
            let field = |name: &str| {
                let start = l.find(&format!("{name}: ")).expect(name) + name.len() + 2;
                let end = l[start..].find([',', ' ', '}']).unwrap() + start;
                duration(&l[start..end])
            };
            let parts = [
                "allocation",
                "interface",
                "attach",
                "ovn_installed",
                "announce",
            ];
            (field("allocation"), parts.iter().map(|p| field(p)).sum())
        })
        .collect()
}

/// A `Duration`'s `Debug` form: `1.5s`, `12.3ms`, `45µs`, `7ns`.
fn duration(text: &str) -> Duration {
    let (number, unit) = text
        .find(|c: char| c.is_alphabetic() || c == 'µ')
        .map(|i| text.split_at(i))
        .unwrap();
    let value: f64 = number.parse().unwrap();
    let seconds = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "µs" | "us" => value / 1e6,
        "ns" => value / 1e9,
        other => panic!("unit {other} in {text}"),
    };
    Duration::from_secs_f64(seconds)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
