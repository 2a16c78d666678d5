//! Burst benchmark on the local cluster: N pods created at once, measured from the first
//! creation to every pod annotated `allocated=true` (which portkeeper writes only after the
//! pod's port is in NB and its IP resource exists), with p50/p99 per pod; then the controller's
//! time from start to ready with those pods allocated.
//!
//! In the same run, the floor: the same N pod creations plus one bare annotation PATCH and one
//! NB port insert per pod, from a minimal client with the same concurrency.
//!
//! ```sh
//! cargo bench -p portkeeper-controller --bench burst            # N = 1000
//! PORTKEEPER_BENCH_PODS=200 cargo bench -p portkeeper-controller --bench burst
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kind_e2e::{Cluster, ClusterOptions};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use ovsdb_client::nb::{LogicalSwitch, LogicalSwitchPort, add_switch_port};
use ovsdb_client::table::Table;
use portkeeper_controller::Config;
use portkeeper_controller::ovn::OvnNorthbound;
use serde_json::json;

const CONCURRENCY: usize = 32;

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "bench": "burst" } },
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{ "name": "c", "image": "busybox" }],
        },
    }))
    .unwrap()
}

async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap(),
    )
    .await
    .unwrap();
}

async fn create_all(pods: &Api<Pod>, n: usize) -> HashMap<String, Instant> {
    futures::stream::iter(0..n)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let name = format!("p-{i}");
                let at = Instant::now();
                pods.create(&PostParams::default(), &pod(&name))
                    .await
                    .unwrap();
                (name, at)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_controller(
    cluster: &Cluster,
    client: Client,
    port: u16,
    identity: &str,
) -> tokio::task::JoinHandle<()> {
    let config = Config::parse_from([
        "portkeeper-controller",
        "--ovn-nb-db",
        cluster.nb_remote(),
        "--default-cidr",
        "10.16.0.0/16",
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--lease-namespace",
        "default",
        "--lease-duration",
        "3",
        "--identity",
        identity,
    ]);
    let nb = Arc::new(OvnNorthbound::start(cluster.nb_remote()).unwrap());
    tokio::spawn(async move {
        if let Err(e) = portkeeper_controller::run::run(config, client, nb).await {
            eprintln!("controller stopped: {e}");
        }
    })
}

/// Time from `since` until `/readyz` answers 200 after having answered 503 (a fresh leader).
async fn ready_after(port: u16, since: Instant) -> Duration {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let mut seen_not_ready = false;
    loop {
        let status = tokio::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
            .output()
            .await
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if status == "503" {
            seen_not_ready = true;
        }
        if status == "200" && seen_not_ready {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn controller_burst(
    cluster: &Cluster,
    client: &Client,
    n: usize,
) -> (Duration, Vec<Duration>, Duration) {
    namespace(client, "burst").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "burst");
    let port = free_port();
    let controller = start_controller(cluster, client.clone(), port, "bench-1");
    ready_after(port, Instant::now()).await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = {
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            let mut stream = watcher(pods, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Ok(Some(p)) = stream.try_next().await {
                let done = p
                    .annotations()
                    .get("ovn.kubernetes.io/allocated")
                    .map(String::as_str)
                    == Some("true");
                if done && seen.insert(p.name_any()) {
                    let _ = tx.send((p.name_any(), Instant::now()));
                }
            }
        })
    };
    let started = Instant::now();
    let created = create_all(&pods, n).await;
    let mut done: HashMap<String, Instant> = HashMap::new();
    while done.len() < n {
        let (name, at) = rx.recv().await.expect("watch ended");
        done.insert(name, at);
    }
    let total = done.values().max().unwrap().duration_since(started);
    watch.abort();
    let mut latencies: Vec<Duration> = created
        .iter()
        .map(|(name, at)| done[name].duration_since(*at))
        .collect();
    latencies.sort();

    controller.abort();
    let _ = controller.await;
    let port = free_port();
    let restarted = Instant::now();
    let controller = start_controller(cluster, client.clone(), port, "bench-2");
    let startup = ready_after(port, restarted).await;
    controller.abort();
    (total, latencies, startup)
}

async fn floor(cluster: &Cluster, client: &Client, n: usize) -> Duration {
    namespace(client, "floor").await;
    let out = cluster.ovn_nbctl(&["ls-add", "floor"]).unwrap();
    assert!(out.status.success());
    let nb = ovsdb_client::client::Client::builder(cluster.nb_remote(), "OVN_Northbound")
        .monitor(LogicalSwitch::TABLE, &[])
        .monitor(LogicalSwitchPort::TABLE, &[])
        .connect()
        .await
        .unwrap();
    let switch = nb
        .cache()
        .read()
        .iter(LogicalSwitch::TABLE)
        .find(|(_, r)| LogicalSwitch::from_row(r).is_ok_and(|s| s.name == "floor"))
        .map(|(u, _)| *u)
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "floor");
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (pods, nb) = (pods.clone(), nb.clone());
            async move {
                let name = format!("p-{i}");
                pods.create(&PostParams::default(), &pod(&name))
                    .await
                    .unwrap();
                let port = LogicalSwitchPort {
                    name: format!("{name}.floor"),
                    addresses: [format!(
                        "0a:58:0a:20:{:02x}:{:02x} 10.32.{}.{}",
                        i / 256,
                        i % 256,
                        i / 256,
                        i % 256
                    )]
                    .into(),
                    external_ids: BTreeMap::from([("pod".to_owned(), format!("floor/{name}"))]),
                    ..Default::default()
                };
                nb.transact(&add_switch_port(switch, &port, None))
                    .await
                    .unwrap();
                let body = json!({ "metadata": { "annotations": {
                    "ovn.kubernetes.io/allocated": "true",
                    "ovn.kubernetes.io/ip_address": format!("10.32.{}.{}", i / 256, i % 256),
                } } });
                pods.patch(&name, &PatchParams::default(), &Patch::Merge(body))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    started.elapsed()
}

fn main() {
    let n: usize = std::env::var("PORTKEEPER_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let cluster = Cluster::up(ClusterOptions {
        nodes: 1,
        ..Default::default()
    })
    .expect("local cluster up");
    let crds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../yamls/crds.yaml");
    let status = std::process::Command::new("kubectl")
        .env("KUBECONFIG", cluster.kubeconfig())
        .args(["apply", "-f", crds.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(async {
        let client = cluster.client().await.unwrap();
        let floor = floor(&cluster, &client, n).await;
        let (total, latencies, startup) = controller_burst(&cluster, &client, n).await;
        (floor, total, latencies, startup)
    });
    drop(runtime);
    cluster.down().expect("cluster down");
    let (floor, total, latencies, startup) = result;
    println!("pods: {n}, client concurrency {CONCURRENCY}");
    println!(
        "controller burst: {:.2} s total, per pod p50 {:.0} ms, p99 {:.0} ms",
        total.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "floor (create + PATCH + NB insert per pod): {:.2} s",
        floor.as_secs_f64()
    );
    println!(
        "ratio controller / floor: {:.2}",
        total.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "controller restart to ready with {n} allocated pods: {:.3} s",
        startup.as_secs_f64()
    );
}
