//! The local cluster's proof, against a real control plane and real OVN.
//!
//! One cluster serves the whole binary (brought up by the first trial that needs it); trials run
//! one at a time in the order below, and the last one tears the cluster down and checks that
//! nothing of it is left. If a trial is filtered out or fails, the cluster is still torn down
//! before the binary exits. Without root the binary fails, unless `PORTKEEPER_ALLOW_SKIP=1` makes
//! the trials ignored.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod};
use kind_e2e::dataplane;
use kind_e2e::examples;
use kind_e2e::harness::client_from_kubeconfig;
use kind_e2e::pods::SANDBOX_FAILURE_REASON;
use kind_e2e::portkeeper::{annotation, ovs_interfaces};
use kind_e2e::{Cluster, ClusterOptions, Provider, Shared};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::json;

type TestResult = Result<(), Failed>;

const NS: &str = "proof";

/// The pods' container: the local agent runs none, a kind node runs this (it has `ip` and `ping`).
static CONTAINER: LazyLock<serde_json::Value> = LazyLock::new(
    || json!({"name": "main", "image": "busybox:1.36", "command": ["sleep", "86400"]}),
);

static CLUSTER: Shared<Cluster> = Shared::new();

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let local = Provider::from_env().unwrap_or(Provider::Local) == Provider::Local;
    let runnable = !local || kind_e2e::harness::privileged("the local cluster e2e");
    // Trials that use the local cluster's own machinery (its IPAM folder, restarts, tear-down).
    let local_only = |t: Trial| if local { t } else { t.with_ignored_flag(true) };
    let trials: Vec<Trial> = vec![
        trial(
            "nodes_are_ready_and_are_ovn_chassis",
            nodes_are_ready_and_are_ovn_chassis,
        ),
        trial(
            "every_example_pod_is_wired_as_annotated_and_reaches_the_other_node",
            every_example_pod_is_wired_as_annotated_and_reaches_the_other_node,
        ),
        trial(
            "statefulset_and_deployment_pods_run_with_addresses",
            statefulset_and_deployment_pods_run_with_addresses,
        ),
        trial(
            "two_pods_on_one_node_ping_and_talk_tcp",
            two_pods_on_one_node_ping_and_talk_tcp,
        ),
        trial(
            "peers_talk_tcp_across_nodes_in_both_families",
            peers_talk_tcp_across_nodes_in_both_families,
        ),
        local_only(trial(
            "deleted_statefulset_pod_comes_back_under_its_name",
            deleted_statefulset_pod_comes_back_under_its_name,
        )),
        trial(
            "host_network_pod_gets_its_node_address",
            host_network_pod_gets_its_node_address,
        ),
        local_only(trial(
            "cni_failure_is_an_event_and_is_retried",
            cni_failure_is_an_event_and_is_retried,
        )),
        local_only(trial(
            "restarted_node_agent_keeps_pods_and_wires_new_ones",
            restarted_node_agent_keeps_pods_and_wires_new_ones,
        )),
        local_only(trial(
            "sandbox_broken_while_agent_was_down_is_rebuilt",
            sandbox_broken_while_agent_was_down_is_rebuilt,
        )),
        local_only(trial(
            "restarted_nb_database_keeps_its_data",
            restarted_nb_database_keeps_its_data,
        )),
        local_only(trial(
            "pods_keep_their_network_through_component_restarts",
            pods_keep_their_network_through_component_restarts,
        )),
        local_only(trial(
            "down_leaves_no_process_namespace_or_port",
            down_leaves_no_process_namespace_or_port,
        )),
    ]
    .into_iter()
    .map(|t| {
        if runnable {
            t
        } else {
            t.with_ignored_flag(true)
        }
    })
    .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    drop(CLUSTER.take());
    conclusion.exit();
}

fn trial<F, Fut>(name: &'static str, body: F) -> Trial
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: Future<Output = TestResult>,
{
    Trial::test(name, move || {
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(async move {
            let kubeconfig = with_cluster(|c| c.kubeconfig().to_path_buf())?;
            let client = client_from_kubeconfig(&kubeconfig).await?;
            body(client).await
        })
    })
}

/// Brings the shared cluster up (on first use) and runs `f` on it; a failed start fails every
/// later trial too.
fn with_cluster<T>(f: impl FnOnce(&Cluster) -> T) -> Result<T, Failed> {
    let up = || {
        let opts = ClusterOptions {
            node_agent: Some(env!("CARGO_BIN_EXE_node-agent").into()),
            ..ClusterOptions::default()
        };
        let started = Instant::now();
        let cluster = Cluster::up(opts).map_err(|e| format!("cluster did not start: {e}"))?;
        eprintln!("cluster up in {:.1}s", started.elapsed().as_secs_f64());
        Ok(cluster)
    };
    Ok(CLUSTER.with(up, f)?)
}

/// Polls until `check` yields a value, or fails with the last observation after `timeout`.
async fn wait_for<T, Fut>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> Result<T, Failed>
where
    Fut: Future<Output = Result<Result<T, String>, Failed>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await? {
            Ok(value) => return Ok(value),
            Err(seen) if Instant::now() >= deadline => {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {what}; last seen: {seen}"
                )
                .into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

fn is_running_with_ip(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ready
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status.and_then(|s| s.pod_ip.as_ref()).is_some()
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

async fn running_pods(client: &Client, selector: &str, want: usize) -> Result<Vec<Pod>, Failed> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    wait_for(
        Duration::from_secs(90),
        &format!("{want} running pods {selector}"),
        || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default().labels(selector)).await?;
                let running: Vec<Pod> = list
                    .items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .collect();
                let summary: Vec<String> = running
                    .iter()
                    .map(|p| {
                        format!(
                            "{}:{:?}:{}",
                            p.name_any(),
                            p.status.as_ref().and_then(|s| s.phase.clone()),
                            pod_ip(p)
                        )
                    })
                    .collect();
                if running.len() == want && running.iter().all(is_running_with_ip) {
                    Ok(Ok(running))
                } else {
                    Ok(Err(summary.join(", ")))
                }
            }
        },
    )
    .await
}

fn exec_ok(namespace: &str, pod: &str, cmd: &[&str]) -> Result<String, Failed> {
    let out = with_cluster(|c| c.pod_exec(namespace, pod, cmd))??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{cmd:?} in {namespace}/{pod} failed: {}{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into())
    }
}

async fn nodes_are_ready_and_are_ovn_chassis(client: Client) -> TestResult {
    let expected = with_cluster(|c| c.nodes().to_vec())?;
    let nodes: Api<Node> = Api::all(client);
    let list = nodes.list(&ListParams::default()).await?;
    let names: Vec<String> = list.items.iter().map(|n| n.name_any()).collect();
    assert_eq!(names, expected);
    for node in &list.items {
        let status = node.status.as_ref().expect("node status");
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready");
        assert_eq!(
            ready.map(|c| c.status.as_str()),
            Some("True"),
            "{} Ready",
            node.name_any()
        );
        let pods = status.allocatable.as_ref().and_then(|a| a.get("pods"));
        assert_eq!(
            pods.map(|q| q.0.as_str()),
            Some("110"),
            "{} allocatable pods",
            node.name_any()
        );
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        assert!(
            taints.is_empty(),
            "{} still tainted: {taints:?}",
            node.name_any()
        );
        let out =
            with_cluster(|c| c.ovn_sbctl(&["get", "chassis", &node.name_any(), "hostname"]))??;
        assert!(
            out.status.success(),
            "no OVN chassis {}: {}",
            node.name_any(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .trim_matches('"'),
            node.name_any()
        );
    }
    Ok(())
}

/// After `up` with its defaults, every pod an example manifest makes (a VM's launcher pod too)
/// runs with exactly the addresses and MAC portkeeper annotated, in its status and on its `eth0`,
/// and reaches a pod on the other node and its gateway.
async fn every_example_pod_is_wired_as_annotated_and_reaches_the_other_node(
    client: Client,
) -> TestResult {
    let cluster = with_cluster(Cluster::handle)?;
    examples::assert_every_example_wired(&cluster, &client).await;
    Ok(())
}

/// Each component restarted in turn, central and on node1: running pods keep reaching each other
/// across nodes and their gateway, and a pod created afterwards on node1 is wired as annotated.
async fn pods_keep_their_network_through_component_restarts(client: Client) -> TestResult {
    let cluster = with_cluster(Cluster::handle)?;
    let default: Api<Pod> = Api::default_namespaced(client.clone());
    let to = default.get("peer-node2").await?;
    for component in [
        "etcd",
        "apiserver",
        "controller-manager",
        "scheduler",
        "nb",
        "sb",
        "northd",
        "controller",
        "ovsdb-node1",
        "vswitchd-node1",
        "ovn-controller-node1",
        "daemon-node1",
    ] {
        cluster.restart(component)?;
        for ip in dataplane::pod_ips(&to) {
            wait_for(
                Duration::from_secs(60),
                &format!("peer-node1 to reach {ip} after restarting {component}"),
                || async {
                    let (ok, out) = dataplane::ping(&cluster, "default", "peer-node1", ip);
                    Ok(if ok { Ok(()) } else { Err(out) })
                },
            )
            .await?;
        }
        eprintln!("restarted {component}: peer-node1 reaches peer-node2");
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "after-restarts", "namespace": NS, "labels": {"app": "after-restarts"}},
        "spec": {"nodeName": "node1", "containers": [*CONTAINER]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let new = running_pods(&client, "app=after-restarts", 1)
        .await?
        .remove(0);
    dataplane::assert_wired_as_annotated(&cluster, &new);
    let gateway = annotation(&new, "gateway").ok_or("no gateway")?;
    for target in [dataplane::pod_ips(&to)[0], gateway] {
        dataplane::assert_pings(&cluster, &new, target, "after the restarts");
    }
    Ok(())
}

async fn statefulset_and_deployment_pods_run_with_addresses(client: Client) -> TestResult {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
        )
        .await?;
    let template = |app: &str| {
        json!({
            "metadata": {"labels": {"app": app}},
            "spec": {"containers": [*CONTAINER]},
        })
    };
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"serviceName": "web", "replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": template("web")},
    }))?;
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "api", "namespace": NS},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}}, "template": template("api")},
    }))?;
    Api::<StatefulSet>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &sts)
        .await?;
    Api::<Deployment>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &deploy)
        .await?;

    let web = running_pods(&client, "app=web", 3).await?;
    let api = running_pods(&client, "app=api", 2).await?;
    let mut web_names: Vec<String> = web.iter().map(|p| p.name_any()).collect();
    web_names.sort();
    assert_eq!(web_names, ["web-0", "web-1", "web-2"]);

    let all: Vec<&Pod> = web.iter().chain(&api).collect();
    let used_nodes: HashSet<String> = all.iter().map(|p| node_of(p)).collect();
    let known: HashSet<String> = with_cluster(|c| c.nodes().iter().cloned().collect())?;
    assert!(
        used_nodes.len() >= 2 && used_nodes.is_subset(&known),
        "the scheduler spreads the pods over the nodes: {used_nodes:?} of {known:?}"
    );
    let ips: HashSet<String> = all.iter().map(|p| pod_ip(p)).collect();
    assert_eq!(ips.len(), all.len(), "every pod has its own address");
    for pod in all {
        let host_ip = pod.status.as_ref().and_then(|s| s.host_ip.clone());
        assert!(host_ip.is_some(), "{} has a hostIP", pod.name_any());
        // portkeeper's allocation is what the pod runs with: status, eth0 address and MAC.
        with_cluster(|c| dataplane::assert_wired_as_annotated(c, pod))?;
    }
    Ok(())
}

async fn two_pods_on_one_node_ping_and_talk_tcp(client: Client) -> TestResult {
    let pods = Api::<Pod>::namespaced(client, NS)
        .list(&ListParams::default())
        .await?;
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for pod in pods.items.iter().filter(|p| is_running_with_ip(p)) {
        by_node.entry(node_of(pod)).or_default().push(pod);
    }
    let (node, pair) = by_node
        .iter()
        .find(|(_, pods)| pods.len() >= 2)
        .ok_or("no node holds two running pods")?;
    let (from, to) = (pair[0], pair[1]);
    let out = exec_ok(
        NS,
        &from.name_any(),
        &["ping", "-c", "3", "-W", "2", &pod_ip(to)],
    )?;
    assert!(
        out.contains(" 0% packet loss"),
        "ping {} -> {} on {node}: {out}",
        from.name_any(),
        to.name_any()
    );
    with_cluster(|c| dataplane::assert_tcp(c, from, to, &pod_ip(to)))?;
    Ok(())
}

/// TCP across nodes, in both families: the peer on node1 connects to the one on node2.
async fn peers_talk_tcp_across_nodes_in_both_families(client: Client) -> TestResult {
    let default: Api<Pod> = Api::default_namespaced(client);
    let (from, to) = (
        default.get("peer-node1").await?,
        default.get("peer-node2").await?,
    );
    for ip in dataplane::pod_ips(&to) {
        with_cluster(|c| dataplane::assert_tcp(c, &from, &to, ip))?;
    }
    Ok(())
}

/// A StatefulSet pod deleted comes back under its name with the same address and MAC (portkeeper
/// keeps its identity); the old sandbox is gone and its `DEL` removed the old OVS interface.
async fn deleted_statefulset_pod_comes_back_under_its_name(client: Client) -> TestResult {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let old = pods.get("web-1").await?;
    let old_uid = old.uid().expect("uid");
    let old_wiring = with_cluster(|c| dataplane::assert_wired_as_annotated(c, &old))?;
    pods.delete("web-1", &DeleteParams::default()).await?;
    let new = wait_for(Duration::from_secs(60), "web-1 to come back", || {
        let pods = pods.clone();
        let old_uid = old_uid.clone();
        async move {
            Ok(match pods.get_opt("web-1").await? {
                Some(p) if p.uid().as_deref() != Some(&old_uid) && is_running_with_ip(&p) => Ok(p),
                Some(p) => Err(format!(
                    "uid {:?} phase {:?}",
                    p.uid(),
                    p.status.and_then(|s| s.phase)
                )),
                None => Err("absent".into()),
            })
        }
    })
    .await?;
    assert_eq!(pod_ip(&new), pod_ip(&old), "web-1 keeps its address");
    let new_wiring = with_cluster(|c| dataplane::assert_wired_as_annotated(c, &new))?;
    assert_eq!(
        new_wiring, old_wiring,
        "web-1 keeps its eth0 address and MAC"
    );
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.contains(&old_uid),
        "the old web-1 sandbox {old_uid} is gone: {netns}"
    );
    let interfaces = with_cluster(|c| {
        c.nodes()
            .iter()
            .map(|node| ovs_interfaces(c, node, &format!("external_ids:iface-id=web-1.{NS}")).len())
            .sum::<usize>()
    })?;
    assert_eq!(interfaces, 1, "one OVS interface for web-1 on all nodes");
    running_pods(&client, "app=web", 3).await?;
    Ok(())
}

async fn host_network_pod_gets_its_node_address(client: Client) -> TestResult {
    let node = with_cluster(|c| c.nodes().last().cloned())?.ok_or("no nodes")?;
    let node_ip = Api::<Node>::all(client.clone())
        .get(&node)
        .await?
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address)
        .ok_or("node has no InternalIP")?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "host-net", "namespace": NS, "labels": {"app": "host-net"}},
        "spec": {"nodeName": node, "hostNetwork": true, "containers": [*CONTAINER]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let pod = running_pods(&client, "app=host-net", 1).await?.remove(0);
    assert_eq!(
        pod_ip(&pod),
        node_ip,
        "a host-network pod reports its node's address"
    );
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let uid = pod.uid().expect("uid");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&uid),
        "no sandbox namespace for a host-network pod"
    );
    Ok(())
}

/// With portkeeper's controller stopped no allocation comes, so the daemon fails the plugin's ADD:
/// the pod gets the node's Event and does not run; once the controller is back the retried ADD
/// wires it.
async fn cni_failure_is_an_event_and_is_retried(client: Client) -> TestResult {
    with_cluster(|c| c.stop("controller"))??;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "starved", "namespace": NS, "labels": {"app": "starved"}},
        "spec": {"nodeName": "node1", "containers": [*CONTAINER]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let event = wait_for(
        Duration::from_secs(60),
        "a FailedCreatePodSandBox event",
        || {
            let events = events.clone();
            async move {
                let list = events
                    .list(&ListParams::default().fields("involvedObject.name=starved"))
                    .await?;
                Ok(list
                    .items
                    .into_iter()
                    .find(|e| e.reason.as_deref() == Some(SANDBOX_FAILURE_REASON))
                    .ok_or_else(|| "no event yet".to_string()))
            }
        },
    )
    .await;
    let still_pending = pods.get("starved").await.map(|p| !is_running_with_ip(&p));
    with_cluster(|c| c.start("controller"))??;
    let event = event?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let message = event.message.unwrap_or_default();
    assert!(
        message.contains("allocation"),
        "event names the daemon's error: {message}"
    );
    assert!(
        still_pending?,
        "the pod is not Running while its sandbox fails"
    );
    let running = running_pods(&client, "app=starved", 1).await?;
    with_cluster(|c| dataplane::assert_wired_as_annotated(c, &running[0]))?;
    Ok(())
}

async fn restarted_node_agent_keeps_pods_and_wires_new_ones(client: Client) -> TestResult {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let before: BTreeMap<String, String> = pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| node_of(p) == "node1")
        .map(|p| (p.name_any(), pod_ip(p)))
        .collect();
    assert!(!before.is_empty(), "node1 runs pods");
    with_cluster(|c| c.restart("agent-node1"))??;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "after-restart", "namespace": NS, "labels": {"app": "after-restart"}},
        "spec": {"nodeName": "node1", "containers": [*CONTAINER]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let new = running_pods(&client, "app=after-restart", 1).await?;
    let after: BTreeMap<String, String> = pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| before.contains_key(&p.name_any()) && is_running_with_ip(p))
        .map(|p| (p.name_any(), pod_ip(p)))
        .collect();
    assert_eq!(
        after, before,
        "pods on node1 keep running with their addresses"
    );
    let (old_name, old_ip) = before.iter().next().expect("non-empty");
    let out = exec_ok(
        NS,
        &new[0].name_any(),
        &["ping", "-c", "2", "-W", "2", old_ip],
    )?;
    assert!(
        out.contains(" 0% packet loss"),
        "new pod reaches {old_name}: {out}"
    );
    Ok(())
}

/// The agent CHECKs sandboxes made by its previous run: one whose namespace vanished while the
/// agent was stopped is torn down and made again, and the pod's status follows.
async fn sandbox_broken_while_agent_was_down_is_rebuilt(client: Client) -> TestResult {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod = pods.get("after-restart").await?;
    let uid = pod.uid().expect("uid");
    with_cluster(|c| c.stop("agent-node1"))??;
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let name = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|n| n.ends_with(&uid))
        .map(str::to_string)
        .ok_or("the pod's namespace exists")?;
    let deleted = std::process::Command::new("ip")
        .args(["netns", "delete", &name])
        .status()?;
    assert!(deleted.success(), "deleting {name}");
    with_cluster(|c| c.start("agent-node1"))??;
    wait_for(
        Duration::from_secs(60),
        "the sandbox to be rebuilt",
        || async {
            Ok(if std::path::Path::new("/run/netns").join(&name).exists() {
                Ok(())
            } else {
                Err("namespace still missing".to_string())
            })
        },
    )
    .await?;
    // The status follows the rebuilt sandbox: the reported podIP is the one on the new eth0.
    wait_for(
        Duration::from_secs(30),
        "podIP to match the rebuilt eth0",
        || {
            let pods = pods.clone();
            let uid = uid.clone();
            async move {
                let pod = pods.get("after-restart").await?;
                assert_eq!(
                    pod.uid().as_deref(),
                    Some(uid.as_str()),
                    "the same pod, not a new one"
                );
                let ip = pod_ip(&pod);
                let listed = exec_ok(
                    NS,
                    "after-restart",
                    &["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
                )?;
                Ok(
                    if is_running_with_ip(&pod) && listed.contains(&format!(" {ip}/")) {
                        Ok(())
                    } else {
                        Err(format!("reported {ip}, eth0: {listed}"))
                    },
                )
            }
        },
    )
    .await
}

async fn restarted_nb_database_keeps_its_data(_client: Client) -> TestResult {
    let run = |args: &[&str]| -> Result<String, Failed> {
        let out = with_cluster(|c| c.ovn_nbctl(args))??;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "ovn-nbctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into())
        }
    };
    run(&["ls-add", "e2e-restart"])?;
    with_cluster(|c| c.restart("nb"))??;
    let switches = run(&["ls-list"])?;
    assert!(
        switches.contains("(e2e-restart)"),
        "switch survives the restart: {switches}"
    );
    Ok(())
}

/// What the cluster holds on this machine, read from its run folder before tear-down.
struct Footprint {
    processes: Vec<(String, u32, String)>,
    ports: Vec<u16>,
    netns_prefix: String,
}

fn footprint(cluster: &Cluster) -> Result<Footprint, Failed> {
    let dir = cluster.run_dir();
    let mut processes = Vec::new();
    for entry in std::fs::read_dir(dir.join("pid"))? {
        let entry = entry?;
        let text = std::fs::read_to_string(entry.path())?;
        let mut fields = text.split_whitespace();
        let pid: u32 = fields.next().ok_or("empty pid file")?.parse()?;
        let start = fields
            .next()
            .ok_or("pid file has no start time")?
            .to_string();
        processes.push((entry.file_name().to_string_lossy().into_owned(), pid, start));
    }
    let state = std::fs::read_to_string(dir.join("state"))?;
    let ports = state
        .lines()
        .filter_map(|l| l.strip_prefix("PK_PORT="))
        .map(str::parse)
        .collect::<Result<Vec<u16>, _>>()?;
    let netns_prefix = state
        .lines()
        .find_map(|l| l.strip_prefix("PK_PREFIX="))
        .ok_or("no PK_PREFIX in state")?
        .to_string();
    Ok(Footprint {
        processes,
        ports,
        netns_prefix,
    })
}

fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    // A zombie has exited and holds nothing; it only waits for its parent to reap it.
    (fields.first() != Some(&"Z")).then(|| fields.get(19).map(|s| s.to_string()))?
}

fn listening_ports() -> Result<HashSet<u16>, Failed> {
    let mut ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) == Some(&"0A") {
                let port = fields[1]
                    .rsplit(':')
                    .next()
                    .ok_or("bad /proc/net/tcp line")?;
                ports.insert(u16::from_str_radix(port, 16)?);
            }
        }
    }
    Ok(ports)
}

async fn down_leaves_no_process_namespace_or_port(_client: Client) -> TestResult {
    let cluster = CLUSTER.take().ok_or("no cluster to tear down")?;
    let run_dir = cluster.run_dir().to_path_buf();
    let before = footprint(&cluster)?;
    assert!(
        before.processes.len() >= 10,
        "the cluster ran its processes: {:?}",
        before.processes
    );
    let listening = listening_ports()?;
    assert!(
        before.ports.iter().any(|p| listening.contains(p)),
        "the cluster listened on its ports"
    );
    let started = Instant::now();
    cluster.down()?;
    eprintln!("down in {:.1}s", started.elapsed().as_secs_f64());

    let alive: Vec<_> = before
        .processes
        .iter()
        .filter(|(_, pid, start)| process_start(*pid).as_ref() == Some(start))
        .collect();
    assert!(alive.is_empty(), "processes left running: {alive:?}");
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let left: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter(|l| l.starts_with(&before.netns_prefix))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "network namespaces left: {left:?}");
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()?;
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains(&before.netns_prefix),
        "links left in the root namespace: {links}"
    );
    let listening = listening_ports()?;
    let open: Vec<&u16> = before
        .ports
        .iter()
        .filter(|p| listening.contains(p))
        .collect();
    assert!(open.is_empty(), "ports still listening: {open:?}");
    assert!(
        !run_dir.exists(),
        "run folder {} removed",
        run_dir.display()
    );
    Ok(())
}
