//! Scale benchmark on the local cluster, with the controller binary (bench profile) as a child
//! process, each figure beside its floor from the same run:
//!
//! 1. Floors, from minimal clients. The fair floor writes what the controller writes, with its
//!    concurrency: N pod creations (32 in flight, as the burst creates them), and for each
//!    created pod, by 16 workers (the controller's default): the NB port insert, the IP
//!    resource by server-side apply, the allocation annotations by PATCH. The minimal floor
//!    (the figure of earlier rounds) omits the IP resource and creates, inserts and patches in
//!    one sequence per pod with 32 in flight.
//! 2. Bursts, one per variant (`PORTKEEPER_BENCH_VARIANTS`, default `single,grouped`: the
//!    controller with one NB transaction per write, then with group commit; `default` passes
//!    no flag, for another commit's build), each by its own
//!    controller into its own namespace: N pods created at once; time from the first creation
//!    to every pod annotated `allocated=true` (written only after the pod's port is in NB and
//!    its IP resource exists), and p50/p99 per pod. The controller's own metrics (reconcile and
//!    NB transaction time, rejections, failures) are printed beside it.
//! 3. Scale, at each checkpoint (`PORTKEEPER_BENCH_CHECKPOINTS`, default TOTAL): more pods until
//!    that many are allocated (a sustained rate), the memory, `PORTKEEPER_BENCH_SAMPLE` (20)
//!    pods allocated one at a time (latency without queueing), then (a) a restart from a fresh
//!    Lease: the controller SIGKILLed and started again, time from process start to `/readyz`
//!    200 and its memory. The start-up floor is a minimal client's list of every pod and IP
//!    resource plus a full NB replica load.
//! 4. Takeovers at the last checkpoint: (b) a standby waiting on the leader's Lease, the leader
//!    SIGKILLed; (c) a rolling update, the old replica SIGTERMed once the new one runs. Time from
//!    the signal to the new leader's `/readyz` 200.
//!
//! Pods name a scheduler that does not exist, so they stay unscheduled: no node work, and the
//! machine stays within limits at 10,000 pods. Floor pods use the host network, so the
//! controller leaves them alone.
//!
//! ```sh
//! cargo bench -p portkeeper-controller --bench burst          # N = 1000, TOTAL = 10000
//! PORTKEEPER_BENCH_PODS=200 PORTKEEPER_BENCH_TOTAL_PODS=1000 cargo bench -p portkeeper-controller --bench burst
//! PORTKEEPER_BENCH_CHECKPOINTS=10000,25000,50000 PORTKEEPER_BENCH_VARIANTS=grouped cargo bench -p portkeeper-controller --bench burst
//! ```
//!
//! `PORTKEEPER_CONTROLLER_BIN=<path>` runs another build of the controller (another commit's,
//! built with `cargo build --profile bench`), so two versions are measured in one load.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kind_e2e::portkeeper::{Controller, controller_log};
use kind_e2e::{Cluster, ClusterOptions};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use ovsdb_client::protocol::datum::Uuid;
use ovsdb_client::protocol::table::Table;
use ovsdb_client::tables::nb::{
    LogicalRouter, LogicalRouterPort, LogicalSwitch, LogicalSwitchPort, add_switch_port,
};
use portkeeper_api::allocation::Allocation;
use portkeeper_api::annotations::{DEFAULT_PROVIDER, NetworkKeys};
use portkeeper_api::{IP, IPSpec};
use portkeeper_engine::parse::{parse_cidr_block, parse_ip_address};
use serde_json::json;

const CONCURRENCY: usize = 32;
/// The controller's default `--workers`, the fair floor's allocation concurrency.
const WORKERS: usize = 16;
const CIDR: &str = "10.16.0.0/16";
const NS: &str = "burst";

fn pod(name: &str, host_network: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "bench": "burst" } },
        "spec": {
            "schedulerName": "portkeeper-bench-unscheduled",
            "hostNetwork": host_network,
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

async fn create_all(pods: &Api<Pod>, range: Range<usize>) -> HashMap<String, Instant> {
    futures::stream::iter(range)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let name = format!("p-{i}");
                let at = Instant::now();
                pods.create(&PostParams::default(), &pod(&name, false))
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

fn start_controller(cluster: &Cluster, generation: u32, lease: &str, extra: &[&str]) -> Controller {
    let bin = std::env::var_os("PORTKEEPER_CONTROLLER_BIN").map_or_else(
        || Path::new(env!("CARGO_BIN_EXE_portkeeper-controller")).to_path_buf(),
        std::path::PathBuf::from,
    );
    let duration = LEASE_SECONDS.to_string();
    let mut args = vec![
        "--lease-name",
        lease,
        "--lease-duration",
        &duration,
        "--gc-interval",
        "0",
    ];
    args.extend_from_slice(extra);
    Controller::start(&bin, cluster, CIDR, generation, &args)
}

/// `curl` of one controller URL: (HTTP status, body).
async fn get(url: &str) -> (String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", url])
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", ""));
    (status.to_owned(), body.to_owned())
}

/// Waits until the controller is ready as leader (`/readyz` 200 after it published
/// `portkeeper_startup_seconds`; a standby is ready too, so 200 alone does not say it); the
/// time since `since`.
async fn ready_after(controller: &Controller, since: Instant) -> Duration {
    loop {
        let (_, metrics) = get(&controller.url("metrics")).await;
        let started = metrics
            .lines()
            .find_map(|l| l.strip_prefix("portkeeper_startup_seconds "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|v| v > 0.0);
        if started && get(&controller.url("readyz")).await.0 == "200" {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every allocated pod of the namespace, by name, with the moment the watch saw it allocated.
fn watch_allocated(pods: Api<Pod>) -> tokio::sync::mpsc::UnboundedReceiver<(String, Instant)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut stream = watcher(pods, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Ok(Some(p)) = stream.try_next().await {
            let done = p
                .annotations()
                .get("ovn.kubernetes.io/allocated")
                .is_some_and(|v| v == "true");
            if done && seen.insert(p.name_any()) && tx.send((p.name_any(), Instant::now())).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Creates the pods of `range` and waits until every one is allocated: (first creation to last
/// allocation, per-pod creation-to-allocation times sorted, first creation to the last creation's
/// answer).
async fn burst(
    allocated: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
    pods: &Api<Pod>,
    range: Range<usize>,
) -> (Duration, Vec<Duration>, Duration) {
    let started = Instant::now();
    let n = range.len();
    let creating = async {
        let created = create_all(pods, range).await;
        (created, started.elapsed())
    };
    let ((created, creation), done) = tokio::join!(creating, async {
        let mut done: HashMap<String, Instant> = HashMap::new();
        while done.len() < n {
            let (name, at) = allocated.recv().await.expect("watch ended");
            done.insert(name, at);
        }
        done
    });
    let total = done.values().max().unwrap().duration_since(started);
    let mut latencies: Vec<Duration> = created
        .iter()
        .map(|(name, at)| done[name].saturating_duration_since(*at))
        .collect();
    latencies.sort();
    (total, latencies, creation)
}

async fn nb_client(cluster: &Cluster) -> ovsdb_client::Client {
    ovsdb_client::Client::builder(cluster.nb_remote(), "OVN_Northbound")
        .monitor(LogicalSwitch::TABLE, &[])
        .monitor(LogicalSwitchPort::TABLE, &[])
        .monitor(LogicalRouter::TABLE, &[])
        .monitor(LogicalRouterPort::TABLE, &[])
        .connect()
        .await
        .unwrap()
}

/// A floor's own namespace and switch (the uuid of the switch).
async fn floor_place(
    cluster: &Cluster,
    client: &Client,
    name: &str,
) -> (ovsdb_client::Client, Uuid) {
    namespace(client, name).await;
    let out = cluster.ovn_nbctl(&["ls-add", name]).unwrap();
    assert!(out.status.success());
    let nb = nb_client(cluster).await;
    let switch = nb
        .cache()
        .read()
        .iter(LogicalSwitch::TABLE)
        .find(|(_, r)| LogicalSwitch::from_row(r).is_ok_and(|s| s.name == name))
        .map(|(u, _)| *u)
        .unwrap();
    (nb, switch)
}

/// Pod `i` of a floor: its address (outside the controller's CIDR) and MAC.
fn floor_address(i: usize) -> (String, String) {
    (
        format!("10.32.{}.{}", i / 256, i % 256),
        format!("0a:58:0a:20:{:02x}:{:02x}", i / 256, i % 256),
    )
}

async fn insert_port(
    nb: &ovsdb_client::Client,
    switch: Uuid,
    name: &str,
    namespace: &str,
    i: usize,
) {
    let (address, mac) = floor_address(i);
    let port = LogicalSwitchPort {
        name: format!("{name}.{namespace}"),
        addresses: [format!("{mac} {address}")].into(),
        port_security: [format!("{mac} {address}")].into(),
        external_ids: BTreeMap::from([
            ("vendor".to_owned(), "floor".to_owned()),
            ("pod".to_owned(), format!("{namespace}/{name}")),
        ]),
        ..Default::default()
    };
    nb.transact(&add_switch_port(switch, &port, None))
        .await
        .unwrap();
}

/// The minimal floor: per pod, create, NB insert and a two-key PATCH in one sequence.
async fn floor(cluster: &Cluster, client: &Client, n: usize) -> Duration {
    let (nb, switch) = floor_place(cluster, client, "floor").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "floor");
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (pods, nb) = (pods.clone(), nb.clone());
            async move {
                let name = format!("p-{i}");
                pods.create(&PostParams::default(), &pod(&name, true))
                    .await
                    .unwrap();
                insert_port(&nb, switch, &name, "floor", i).await;
                let body = json!({ "metadata": { "annotations": {
                    "ovn.kubernetes.io/allocated": "true",
                    "ovn.kubernetes.io/ip_address": floor_address(i).0,
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

/// The fair floor: the controller's writes for each pod (NB port, IP resource by server-side
/// apply, the allocation's annotations), by 16 workers fed as the pods are created (32
/// creations in flight). Its IP resources are deleted afterwards, so the controller's start-up
/// does not read them. Returns the total and the per-pod creation → annotated times, sorted.
async fn fair_floor(cluster: &Cluster, client: &Client, n: usize) -> (Duration, Vec<Duration>) {
    const NAMESPACE: &str = "fair-floor";
    let (nb, switch) = floor_place(cluster, client, NAMESPACE).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let ips: Api<IP> = Api::all(client.clone());
    let keys = NetworkKeys::for_provider(DEFAULT_PROVIDER);
    let (created_tx, created_rx) = futures::channel::mpsc::unbounded();
    let started = Instant::now();
    let creating = pods.clone();
    // The stream owns the sender: the channel ends once every pod is created.
    let create = futures::stream::iter(0..n)
        .map(move |i| {
            let (pods, created_tx) = (creating.clone(), created_tx.clone());
            async move {
                let name = format!("p-{i}");
                let at = Instant::now();
                pods.create(&PostParams::default(), &pod(&name, true))
                    .await
                    .unwrap();
                created_tx.unbounded_send((i, at)).unwrap();
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>();
    let allocate = created_rx
        .map(|(i, at)| {
            let (pods, ips, nb, keys) = (pods.clone(), ips.clone(), nb.clone(), &keys);
            async move {
                let name = format!("p-{i}");
                let (address, mac) = floor_address(i);
                insert_port(&nb, switch, &name, NAMESPACE, i).await;
                let key = format!("{name}.{NAMESPACE}");
                let spec = IPSpec {
                    pod_name: name.clone(),
                    namespace: NAMESPACE.to_owned(),
                    subnet: NAMESPACE.to_owned(),
                    ip_address: address.clone(),
                    v4_ip_address: address.clone(),
                    mac_address: mac.clone(),
                    pod_type: String::new(),
                    ..IPSpec::default()
                };
                let body = json!({
                    "apiVersion": "kubeovn.io/v1",
                    "kind": "IP",
                    "metadata": { "name": key, "labels": { "bench": NAMESPACE } },
                    "spec": spec,
                });
                ips.patch(
                    &key,
                    &PatchParams::apply("floor").force(),
                    &Patch::Apply(body),
                )
                .await
                .unwrap();
                let allocation = Allocation {
                    subnet: NAMESPACE.to_owned(),
                    addresses: parse_ip_address(&address).unwrap(),
                    cidr: parse_cidr_block("10.32.0.0/16").unwrap(),
                    gateway: parse_ip_address("10.32.0.1").unwrap(),
                    mac: mac.parse().unwrap(),
                    routed: false,
                    virtual_machine: None,
                    dns: None,
                };
                let body =
                    json!({ "metadata": { "annotations": allocation.to_annotations(keys) } });
                pods.patch(&name, &PatchParams::default(), &Patch::Merge(body))
                    .await
                    .unwrap();
                at.elapsed()
            }
        })
        .buffer_unordered(WORKERS)
        .collect::<Vec<Duration>>();
    let ((), mut latencies) = tokio::join!(
        async {
            create.await;
        },
        allocate
    );
    let elapsed = started.elapsed();
    latencies.sort();
    ips.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels(&format!("bench={NAMESPACE}")),
    )
    .await
    .unwrap();
    (elapsed, latencies)
}

/// What any controller must read before it can allocate: every pod and IP resource, and a full
/// NB replica.
async fn startup_floor(cluster: &Cluster, client: &Client) -> (Duration, usize) {
    let (pods, ips) = (
        Api::<Pod>::all(client.clone()),
        Api::<IP>::all(client.clone()),
    );
    let params = ListParams::default();
    let started = Instant::now();
    let (pods, ips, _nb) = tokio::join!(pods.list(&params), ips.list(&params), nb_client(cluster));
    let count = pods.unwrap().items.len() + ips.unwrap().items.len();
    (started.elapsed(), count)
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The controller's own account: sums and counts of its latency histograms, and its counters.
async fn print_metrics(controller: &Controller, label: &str) {
    let (_, text) = get(&controller.url("metrics")).await;
    let value = |line: &str| line.rsplit(' ').next()?.parse::<f64>().ok();
    let mut histograms: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    println!("controller metrics ({label}):");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, rest) = line.split_once(' ').unwrap_or((line, ""));
        if let Some(base) = name.split('{').next().and_then(|n| n.strip_suffix("_sum")) {
            let key = format!("{base}{}", labels(name));
            histograms.entry(key).or_default().0 = value(rest).unwrap_or(0.0);
        } else if let Some(base) = name
            .split('{')
            .next()
            .and_then(|n| n.strip_suffix("_count"))
        {
            let key = format!("{base}{}", labels(name));
            histograms.entry(key).or_default().1 = value(rest).unwrap_or(0.0);
        } else if name.ends_with("_total")
            || name.contains("_total{")
            || name.contains("startup")
            || name.contains("nb_group_commit")
        {
            println!("  {line}");
        }
    }
    for (name, (sum, count)) in histograms {
        if count > 0.0 {
            println!(
                "  {name}: {count} × mean {:.2} ms (sum {sum:.2} s)",
                sum / count * 1e3
            );
        }
    }
}

fn labels(name: &str) -> &str {
    name.find('{').map_or("", |i| &name[i..])
}

fn warnings_in_log(cluster: &Cluster, generation: u32) -> usize {
    std::fs::read_to_string(controller_log(cluster, generation))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn millis(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// One burst of the controller: group commit of Northbound writes on or off, or the binary's
/// defaults (no flag: another commit's build may not know it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// One transaction per write.
    Single,
    /// Concurrent writes in one transaction.
    Grouped,
    /// No flag given.
    Default,
}

impl Variant {
    fn parse(name: &str) -> Self {
        match name.trim() {
            "single" => Variant::Single,
            "grouped" => Variant::Grouped,
            "default" => Variant::Default,
            other => panic!("PORTKEEPER_BENCH_VARIANTS: unknown variant {other:?}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Variant::Single => "single",
            Variant::Grouped => "grouped",
            Variant::Default => "default",
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Variant::Single => &["--nb-group-commit=false"],
            Variant::Grouped => &["--nb-group-commit=true"],
            Variant::Default => &[],
        }
    }
}

/// The bursts to run, in order (`PORTKEEPER_BENCH_VARIANTS`, default `single,grouped`).
fn variants() -> Vec<Variant> {
    std::env::var("PORTKEEPER_BENCH_VARIANTS")
        .unwrap_or_else(|_| "single,grouped".to_owned())
        .split(',')
        .map(Variant::parse)
        .collect()
}

async fn run(cluster: &Cluster, n: usize, total: usize) {
    let client = cluster.client().await.unwrap();
    let floor = floor(cluster, &client, n).await;
    let (fair, fair_latencies) = fair_floor(cluster, &client, n).await;
    println!("pods: {n}, client concurrency {CONCURRENCY}");
    println!(
        "minimal floor (create + NB insert + PATCH per pod): {:.2} s",
        floor.as_secs_f64()
    );
    println!(
        "fair floor (create; NB insert + IP apply + allocation PATCH by {WORKERS} workers): {:.2} s, per pod p50 {}, p99 {}, max {}",
        fair.as_secs_f64(),
        millis(percentile(&fair_latencies, 0.50)),
        millis(percentile(&fair_latencies, 0.99)),
        millis(*fair_latencies.last().unwrap()),
    );

    // Each variant bursts into its own namespace with its own controller; the last one's
    // controller goes on to the fill.
    let variants = variants();
    let mut generation = 0;
    let mut last = None;
    for (i, variant) in variants.iter().enumerate() {
        let namespace_name = format!("{NS}-{}", variant.name());
        namespace(&client, &namespace_name).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace_name);
        let lease = format!("portkeeper-bench-{}", variant.name());
        let controller = start_controller(cluster, generation, &lease, variant.flags());
        ready_after(&controller, Instant::now()).await;
        let mut allocated = watch_allocated(pods.clone());
        let (elapsed, latencies, creation) = burst(&mut allocated, &pods, 0..n).await;
        println!(
            "controller burst, {} NB writes: {:.2} s total (the last creation answered at {:.2} s), per pod p50 {}, p99 {}, max {}",
            variant.name(),
            elapsed.as_secs_f64(),
            creation.as_secs_f64(),
            millis(percentile(&latencies, 0.50)),
            millis(percentile(&latencies, 0.99)),
            millis(*latencies.last().unwrap()),
        );
        println!(
            "  ratio to the fair floor: {:.2}; to the minimal floor: {:.2}",
            elapsed.as_secs_f64() / fair.as_secs_f64(),
            elapsed.as_secs_f64() / floor.as_secs_f64()
        );
        print_metrics(&controller, &format!("after the {} burst", variant.name())).await;
        println!(
            "controller warnings logged: {}",
            warnings_in_log(cluster, generation)
        );
        if i + 1 == variants.len() {
            last = Some((controller, pods, allocated, generation));
        } else {
            controller.kill();
        }
        generation += 1;
    }
    let (mut controller, pods, mut allocated, last_generation) =
        last.expect("at least one variant");
    println!(
        "controller warnings logged: {}",
        warnings_in_log(cluster, last_generation)
    );
    // Every variant allocated n pods; the fill goes on in the last one's namespace.
    let mut count = n * variants.len();
    let mut next = n;
    let sample = env_usize("PORTKEEPER_BENCH_SAMPLE", 20);
    for checkpoint in checkpoints(total) {
        if checkpoint > count {
            let more = checkpoint - count;
            let (elapsed, _, _) = burst(&mut allocated, &pods, next..next + more).await;
            (next, count) = (next + more, checkpoint);
            println!(
                "[{count} pods] fill: {more} more allocated in {:.2} s ({:.0} pods/s)",
                elapsed.as_secs_f64(),
                more as f64 / elapsed.as_secs_f64()
            );
        }
        let (rss, peak) = memory(controller.pid());
        println!(
            "[{count} pods] controller memory after allocating them: RSS {rss:.1} MiB, peak {peak:.1} MiB"
        );
        let latencies = one_by_one(&mut allocated, &pods, next..next + sample).await;
        (next, count) = (next + sample, count + sample);
        println!(
            "[{count} pods] allocation latency, {sample} pods one at a time: p50 {}, p99 {}, max {}",
            millis(percentile(&latencies, 0.50)),
            millis(percentile(&latencies, 0.99)),
            millis(*latencies.last().unwrap()),
        );
        controller.kill();

        // (a) A fresh Lease: no takeover to wait for.
        let (listed, objects) = startup_floor(cluster, &client).await;
        generation += 1;
        let started = Instant::now();
        let lease = format!("portkeeper-bench-{generation}");
        controller = start_controller(cluster, generation, &lease, &[]);
        let startup = ready_after(&controller, started).await;
        let (rss, peak) = memory(controller.pid());
        println!(
            "[{count} pods] (a) start to ready, fresh Lease: {:.3} s; start-up floor (list {objects} pods and IP resources + load the NB replica) {:.3} s, ratio {:.2}",
            startup.as_secs_f64(),
            listed.as_secs_f64(),
            startup.as_secs_f64() / listed.as_secs_f64()
        );
        println!("[{count} pods] controller memory at ready: RSS {rss:.1} MiB, peak {peak:.1} MiB");
        print_metrics(&controller, &format!("after the restart at {count} pods")).await;
        println!(
            "controller warnings logged after the restart: {}",
            warnings_in_log(cluster, generation)
        );
    }

    // (b) The leader crashes; a standby waiting on the same Lease takes over. (c) A rolling
    // update: the new replica starts, then the old one gets SIGTERM.
    let lease = format!("portkeeper-bench-{generation}");
    for (label, signal) in [
        ("(b) leader SIGKILLed", "KILL"),
        ("(c) rolling update, old replica SIGTERMed", "TERM"),
    ] {
        generation += 1;
        let standby = start_controller(cluster, generation, &lease, &[]);
        while get(&standby.url("readyz")).await.0 != "200" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let signalled = Instant::now();
        controller.signal(signal);
        let takeover = ready_after(&standby, signalled).await;
        controller.kill();
        println!(
            "[{count} pods] {label} -> standby ready: {:.3} s (Lease duration {LEASE_SECONDS} s)",
            takeover.as_secs_f64()
        );
        controller = standby;
    }
    print_metrics(&controller, "after the takeovers").await;
    controller.kill();
}

/// The Lease duration the benchmark's controllers run with (`Controller::start`'s default).
const LEASE_SECONDS: u64 = 5;

/// The pod counts at which the scale figures are taken (`PORTKEEPER_BENCH_CHECKPOINTS`, comma
/// separated; default the total alone), ascending.
fn checkpoints(total: usize) -> Vec<usize> {
    let mut points: Vec<usize> = std::env::var("PORTKEEPER_BENCH_CHECKPOINTS")
        .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_else(|_| vec![total]);
    points.sort_unstable();
    points
}

/// Creates the pods of `range` one after another, each once the previous one is allocated: the
/// allocation latency without queueing, sorted.
async fn one_by_one(
    allocated: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
    pods: &Api<Pod>,
    range: Range<usize>,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for i in range {
        let name = format!("p-{i}");
        let at = Instant::now();
        pods.create(&PostParams::default(), &pod(&name, false))
            .await
            .unwrap();
        loop {
            let (done, when) = allocated.recv().await.expect("watch ended");
            if done == name {
                latencies.push(when.duration_since(at));
                break;
            }
        }
    }
    latencies.sort();
    latencies
}

fn main() {
    let n = env_usize("PORTKEEPER_BENCH_PODS", 1000);
    let total = env_usize("PORTKEEPER_BENCH_TOTAL_PODS", 10_000).max(n);
    let cluster = Cluster::up(ClusterOptions {
        nodes: 1,
        controller: false,
        ..Default::default()
    })
    .expect("local cluster up");
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../yamls/crds.yaml");
    let status = std::process::Command::new("kubectl")
        .env("KUBECONFIG", cluster.kubeconfig())
        .args(["apply", "-f", crds.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(run(&cluster, n, total))
    }));
    drop(runtime);
    cluster.down().expect("cluster down");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
