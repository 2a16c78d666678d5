//! portkeeper's own CNI on the local cluster: the controller allocates, each node's
//! `portkeeper-daemon` (its veths and abstract socket in the node's namespace) wires pods into OVN,
//! and the node agents run `portkeeper-cni` as a runtime does.
//!
//! One cluster serves the whole binary; trials run one at a time in the order below. When a trial
//! fails, the cluster's and portkeeper's logs are copied to `$TMPDIR/portkeeper-cni-e2e-logs`
//! before the cluster is torn down. Without root the binary fails, unless `PORTKEEPER_ALLOW_SKIP=1`
//! makes the trials ignored.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kind_e2e::dataplane::{self, pod_ips, wait_running};
use kind_e2e::harness::client_from_kubeconfig;
use kind_e2e::pods::SANDBOX_FAILURE_REASON;
use kind_e2e::portkeeper::{self, annotation, kubectl_apply, wait_for};
use kind_e2e::{Cluster, ClusterOptions, Shared};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{Value, json};

const GATEWAY: &str = "10.16.0.1";
/// How long a gracefully deleted pod's port and veth may outlive the request.
const CLEANUP_BOUND: Duration = Duration::from_secs(30);
/// How long those of a pod deleted with no grace period may: well inside the node agent's 10 s
/// orphan sweep, so the deletion itself must bring the `DEL`.
const IMMEDIATE_CLEANUP_BOUND: Duration = Duration::from_secs(5);

static SETUP: Shared<Portkeeper> = Shared::new();

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let runnable = kind_e2e::harness::privileged("the CNI e2e");
    let trials = [
        trial(
            "nodes_publish_their_chassis_name",
            nodes_publish_their_chassis_name,
        ),
        trial(
            "pods_get_exactly_their_annotated_addresses_and_bind_on_their_chassis",
            pods_get_exactly_their_annotated_addresses,
        ),
        trial(
            "pods_ping_on_one_node_across_nodes_and_the_gateway",
            pods_ping_on_one_node_across_nodes_and_the_gateway,
        ),
        trial(
            "dual_stack_pods_get_both_families_and_ping_across_nodes",
            dual_stack_pods_get_both_families_and_ping_across_nodes,
        ),
        trial(
            "statefulset_pod_recreated_with_a_new_mac_answers_the_first_ping",
            statefulset_pod_recreated_with_a_new_mac_answers_the_first_ping,
        ),
        trial(
            "bad_cni_inputs_give_errors_and_leave_nothing",
            bad_cni_inputs_give_errors_and_leave_nothing,
        ),
        trial(
            "pod_whose_allocation_never_comes_gets_an_event_and_leaves_nothing",
            pod_whose_allocation_never_comes_gets_an_event_and_leaves_nothing,
        ),
        trial(
            "deleted_pods_leave_no_port_or_veth",
            deleted_pods_leave_no_port_or_veth,
        ),
        // Last: trials run in this order (one thread).
        trial(
            "the_cluster_is_consistent_at_the_end",
            |client| async move {
                let nb = with(|s| s.cluster.nb_remote().to_owned());
                portkeeper::assert_consistent_through(&client, &nb).await;
            },
        ),
    ]
    .into_iter()
    .map(|t| t.with_ignored_flag(!runnable))
    .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(setup) = SETUP.take() {
        if conclusion.has_failed() {
            setup.keep_logs();
        }
        drop(setup);
    }
    conclusion.exit();
}

fn trial<Fut>(name: &'static str, body: fn(Client) -> Fut) -> Trial
where
    Fut: Future<Output = ()> + 'static,
{
    Trial::test(name, move || {
        let kubeconfig = with_setup(|s| s.cluster.kubeconfig().to_path_buf())?;
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(async move {
            let client = client_from_kubeconfig(&kubeconfig).await?;
            body(client).await;
            Ok(())
        })
    })
}

/// The local cluster as `up` makes it: portkeeper's controller, and on each node its daemon and
/// `portkeeper-cni` as the CNI network.
struct Portkeeper {
    cluster: Cluster,
    /// The `portkeeper-cni` binary as the node agents run it.
    plugin: PathBuf,
    /// The prefix of every network namespace of this cluster.
    prefix: String,
}

impl Portkeeper {
    fn start() -> Result<Self, String> {
        let started = Instant::now();
        let cluster = Cluster::up(ClusterOptions {
            node_agent: Some(env!("CARGO_BIN_EXE_node-agent").into()),
            ..ClusterOptions::default()
        })
        .map_err(|e| e.to_string())?;
        eprintln!("cluster up in {:.1}s", started.elapsed().as_secs_f64());
        Ok(Self {
            plugin: cluster.run_dir().join("cni-bin/portkeeper-cni"),
            prefix: cluster.netns_prefix().to_owned(),
            cluster,
        })
    }

    /// The network namespace of `node`.
    fn node_netns(&self, node: &str) -> String {
        format!("{}{node}", self.prefix)
    }

    /// Every `pk…` port on each node's `br-int` and `pk…` link in each node's namespace.
    fn wiring(&self) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for node in self.cluster.nodes() {
            let db = format!(
                "--db=unix:{}",
                self.cluster.node_dir(node).join("db.sock").display()
            );
            let ports = stdout(&run("ovs-vsctl", &[&db, "list-ports", "br-int"]));
            let links = stdout(&run("ip", &["-n", &self.node_netns(node), "-o", "link"]));
            let links = links.lines().filter_map(|l| l.split(": ").nth(1));
            found.extend(
                ports
                    .lines()
                    .map(|p| format!("{node} port {p}"))
                    .chain(
                        links.map(|l| format!("{node} link {}", l.split('@').next().unwrap_or(l))),
                    )
                    .filter(|what| what.split(' ').nth(2).is_some_and(|n| n.starts_with("pk"))),
            );
        }
        found
    }

    /// Copies the cluster's and portkeeper's logs out of the run folder, which goes with the cluster.
    fn keep_logs(&self) {
        let kept = std::env::temp_dir().join("portkeeper-cni-e2e-logs");
        let _ = std::fs::remove_dir_all(&kept);
        let _ = std::fs::create_dir_all(&kept);
        let run = self.cluster.run_dir();
        let logs = std::fs::read_dir(run.join("log"))
            .into_iter()
            .chain(std::fs::read_dir(run))
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"));
        for entry in logs {
            let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
        }
        eprintln!("logs kept in {}", kept.display());
    }
}

/// Starts the shared setup (on first use) and runs `f` on it; a failed start fails every later
/// trial too.
fn with_setup<T>(f: impl FnOnce(&Portkeeper) -> T) -> Result<T, Failed> {
    let start = || {
        Portkeeper::start().map_err(|e| format!("starting the cluster with portkeeper failed: {e}"))
    };
    Ok(SETUP.with(start, f)?)
}

fn with<T>(f: impl FnOnce(&Portkeeper) -> T) -> T {
    with_setup(f).expect("the setup was made by the trial's start")
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` in the network namespace of pod `default/<pod>`; (success, stdout and stderr).
fn exec(pod: &str, cmd: &[&str]) -> (bool, String) {
    with(|s| dataplane::exec(&s.cluster, "default", pod, cmd))
}

fn ping(from: &str, to: &str) -> (bool, String) {
    with(|s| dataplane::ping(&s.cluster, "default", from, to))
}

fn pod_manifest(name: &str, node: &str, annotations: &[(&str, &str)], grace: u32) -> Pod {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "cni-e2e"}, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "none"}],
            "terminationGracePeriodSeconds": grace
        }
    }))
    .unwrap()
}

/// The pods the address and traffic trials share: `a` (static IP and MAC) and `b` on node1, `c`
/// on node2; made on first use.
async fn shared_pods(client: &Client) -> [Pod; 3] {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let static_address = [
        ("ovn.kubernetes.io/ip_address", "10.16.0.100"),
        ("ovn.kubernetes.io/mac_address", "02:00:00:00:01:00"),
    ];
    let wanted = [
        ("a", "node1", &static_address[..]),
        ("b", "node1", &[][..]),
        ("c", "node2", &[][..]),
    ];
    for (name, node, annotations) in wanted {
        if pods.get_opt(name).await.unwrap().is_none() {
            pods.create(
                &PostParams::default(),
                &pod_manifest(name, node, annotations, 0),
            )
            .await
            .expect("create pod");
        }
    }
    let mut running = Vec::new();
    for (name, _, _) in wanted {
        running.push(wait_running(&pods, name, None).await);
    }
    running.try_into().unwrap()
}

/// The chassis the SB database binds `port` to.
fn bound_chassis(port: &str) -> String {
    with(|s| dataplane::bound_chassis(&s.cluster, port))
}

async fn nodes_publish_their_chassis_name(client: Client) {
    let nodes: Api<Node> = Api::all(client);
    for node in with(|s| s.cluster.nodes().to_vec()) {
        let system_id = with(|s| {
            let db = format!(
                "--db=unix:{}",
                s.cluster.node_dir(&node).join("db.sock").display()
            );
            let out = run(
                "ovs-vsctl",
                &[&db, "get", "open_vswitch", ".", "external_ids:system-id"],
            );
            stdout(&out).trim().trim_matches('"').to_owned()
        });
        let registered = with(|s| {
            stdout(
                &s.cluster
                    .ovn_sbctl(&["--bare", "--columns=name", "list", "chassis"])
                    .unwrap(),
            )
        });
        assert!(
            registered.split_whitespace().any(|c| c == system_id),
            "chassis {system_id} of {node} is not in the SB: {registered}"
        );
        let published = wait_for(&format!("{node}'s chassis annotation"), async || {
            let n = nodes.get(&node).await.ok()?;
            n.annotations().get("ovn.kubernetes.io/chassis").cloned()
        })
        .await;
        assert_eq!(published, system_id, "{node}'s ovn.kubernetes.io/chassis");
    }
}

fn assert_wired_as_annotated(p: &Pod) {
    with(|s| dataplane::assert_wired_as_annotated(&s.cluster, p));
}

async fn pods_get_exactly_their_annotated_addresses(client: Client) {
    let pods = shared_pods(&client).await;
    for p in &pods {
        assert_wired_as_annotated(p);
    }
    assert_eq!(pod_ips(&pods[0]), ["10.16.0.100"]);
    assert_eq!(
        annotation(&pods[0], "mac_address"),
        Some("02:00:00:00:01:00")
    );
    for (p, node) in pods.iter().zip(["node1", "node1", "node2"]) {
        let port = format!("{}.default", p.name_any());
        assert_eq!(bound_chassis(&port), node, "{port} binding");
    }
}

async fn pods_ping_on_one_node_across_nodes_and_the_gateway(client: Client) {
    let [_, b, c] = shared_pods(&client).await;
    for (to, what) in [
        (pod_ips(&b)[0], "a -> b on node1"),
        (pod_ips(&c)[0], "a (node1) -> c (node2) through Geneve"),
        (GATEWAY, "a -> the subnet gateway"),
    ] {
        let (ok, out) = ping("a", to);
        assert!(ok, "{what} ({to}): {out}");
    }
    let (ok, out) = ping("c", GATEWAY);
    assert!(ok, "c (node2) -> the subnet gateway: {out}");
}

/// Pods of a dual-stack subnet on both nodes: both families on `eth0`, and traffic in both
/// families between the nodes and to the subnet's gateways.
async fn dual_stack_pods_get_both_families_and_ping_across_nodes(client: Client) {
    with(|s| {
        kubectl_apply(
            &s.cluster,
            "apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata:\n  name: dual\nspec:\n  cidrBlock: 10.18.0.0/24,fd00:10:18::/64\n",
        )
    });
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let unwired = with(Portkeeper::wiring);
    let mut running = Vec::new();
    for (name, node) in [("dual-1", "node1"), ("dual-2", "node2")] {
        let manifest = pod_manifest(
            name,
            node,
            &[("ovn.kubernetes.io/logical_switch", "dual")],
            0,
        );
        pods.create(&PostParams::default(), &manifest)
            .await
            .unwrap();
        running.push(wait_running(&pods, name, None).await);
    }
    for p in &running {
        assert_wired_as_annotated(p);
        assert_eq!(pod_ips(p).len(), 2, "{} is dual-stack", p.name_any());
    }
    let gateways = annotation(&running[0], "gateway").expect("gateway");
    for to in pod_ips(&running[1]).into_iter().chain(gateways.split(',')) {
        let (ok, out) = ping("dual-1", to);
        assert!(ok, "dual-1 (node1) -> {to}: {out}");
    }
    let names = running
        .iter()
        .map(ResourceExt::name_any)
        .collect::<Vec<_>>();
    delete_and_wait(&pods, &names, 0, &unwired, CLEANUP_BOUND).await;
}

const STATEFULSET_IP: &str = "10.16.0.150";

fn statefulset(mac: &str) -> String {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "serviceName": "web", "replicas": 1, "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {
                    "ovn.kubernetes.io/ip_address": STATEFULSET_IP,
                    "ovn.kubernetes.io/mac_address": mac,
                }},
                "spec": {
                    "nodeName": "node1",
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "c", "image": "none"}]
                }
            }
        }
    })
    .to_string()
}

/// Kube-OVN's fixed-IP recreation case: the peer still holds the old MAC in its neighbour table,
/// and the recreated pod must answer anyway, on the first packet.
async fn statefulset_pod_recreated_with_a_new_mac_answers_the_first_ping(client: Client) {
    shared_pods(&client).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let (old_mac, new_mac) = ("02:00:00:00:02:01", "02:00:00:00:02:02");
    with(|s| kubectl_apply(&s.cluster, &statefulset(old_mac)));
    let first = wait_running(&pods, "web-0", None).await;
    assert_eq!(annotation(&first, "mac_address"), Some(old_mac));
    assert_eq!(pod_ips(&first), [STATEFULSET_IP]);
    let (ok, out) = ping("b", STATEFULSET_IP);
    assert!(ok, "b -> web-0 before the change: {out}");
    let (_, neigh) = exec("b", &["ip", "neigh", "show", STATEFULSET_IP]);
    assert!(neigh.contains(old_mac), "b's neighbour entry: {neigh}");

    with(|s| kubectl_apply(&s.cluster, &statefulset(new_mac)));
    match pods.delete("web-0", &DeleteParams::default()).await {
        Err(kube::Error::Api(e)) if e.code != 404 => panic!("delete web-0: {e}"),
        _ => {}
    }
    let old_uid = first.uid().unwrap();
    let second = wait_running(&pods, "web-0", Some(&old_uid)).await;
    let (ok, out) = ping("b", STATEFULSET_IP);
    assert_eq!(annotation(&second, "mac_address"), Some(new_mac));
    assert_eq!(pod_ips(&second), [STATEFULSET_IP]);
    assert!(
        ok,
        "the first ping to web-0 after it came back with {new_mac}: {out}"
    );
    let (_, neigh) = exec("b", &["ip", "neigh", "show", STATEFULSET_IP]);
    assert!(neigh.contains(new_mac), "b's neighbour entry: {neigh}");
}

/// One plugin call on node1 as its runtime makes it.
fn plugin(command: &str, netns: &Path, pod: &str, stdin: &str) -> Value {
    use std::io::Write;
    let (plugin, node_netns) = with(|s| (s.plugin.clone(), s.node_netns("node1")));
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node_netns])
        .arg(&plugin)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("e2e{pod}"))
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap())
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run portkeeper-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        !out.status.success(),
        "{command} for {pod} succeeded: {printed}"
    );
    printed
}

async fn bad_cni_inputs_give_errors_and_leave_nothing(client: Client) {
    let pods: Api<Pod> = Api::default_namespaced(client);
    let unwired = with(Portkeeper::wiring);
    // A pod that exists and is allocated, so only the one bad input differs.
    pods.create(
        &PostParams::default(),
        &pod_manifest("target", "node2", &[], 0),
    )
    .await
    .expect("create pod");
    wait_running(&pods, "target", None).await;
    let netns = with(|s| format!("{}bad-input", s.prefix));
    run("ip", &["netns", "add", &netns]);
    let netns_path = Path::new("/run/netns").join(&netns);
    let before = with(Portkeeper::wiring);
    // The nodes' own configuration, one field changed at a time.
    let conflist = with(|s| std::fs::read(s.cluster.run_dir().join("cni/portkeeper.conflist")))
        .expect("the nodes' conflist");
    let good = serde_json::from_slice::<Value>(&conflist).unwrap()["plugins"][0].clone();
    let config = |version: &str| {
        let mut c = good.clone();
        c["cniVersion"] = json!(version);
        c["name"] = json!("portkeeper");
        c.to_string()
    };
    let missing = Path::new("/run/netns/portkeeper-e2e-no-such-netns");
    for (what, pod_netns, pod, stdin, code) in [
        (
            "malformed config",
            netns_path.as_path(),
            "target",
            "{\"cniVersion\":",
            6,
        ),
        (
            "unknown CNI version",
            &netns_path,
            "target",
            &config("9.9.9"),
            1,
        ),
        ("missing netns", missing, "target", &config("1.0.0"), 3),
        (
            "allocation that never comes",
            &netns_path,
            "ghost",
            &config("1.0.0"),
            100,
        ),
    ] {
        let error = plugin("ADD", pod_netns, pod, stdin);
        assert_eq!(error["code"], code, "{what}: {error}");
        let msg = error["msg"].as_str().unwrap_or_default();
        assert!(!msg.is_empty(), "{what}: an error needs a message: {error}");
        let links = stdout(&run("ip", &["-n", &netns, "-o", "link"]));
        assert!(
            !links.contains("eth0"),
            "{what} left an interface in the pod namespace: {links}"
        );
        assert_eq!(
            with(Portkeeper::wiring),
            before,
            "{what} left wiring on the nodes"
        );
    }
    run("ip", &["netns", "delete", &netns]);
    delete_and_wait(&pods, &["target".into()], 0, &unwired, CLEANUP_BOUND).await;
}

async fn pod_whose_allocation_never_comes_gets_an_event_and_leaves_nothing(client: Client) {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let before = with(Portkeeper::wiring);
    let stranded = pod_manifest(
        "stranded",
        "node2",
        &[("ovn.kubernetes.io/logical_switch", "no-such-subnet")],
        0,
    );
    pods.create(&PostParams::default(), &stranded)
        .await
        .unwrap();
    let message = wait_for("the stranded pod's sandbox failure event", async || {
        portkeeper::warnings(&client, "default", "stranded")
            .await
            .into_iter()
            .find(|(reason, _)| reason == SANDBOX_FAILURE_REASON)
            .map(|(_, message)| message)
    })
    .await;
    assert!(
        message.contains("code 100") && message.contains("allocation"),
        "the event should carry the daemon's allocation error: {message}"
    );
    let p = pods.get("stranded").await.unwrap();
    assert_ne!(
        p.status.and_then(|s| s.phase).as_deref(),
        Some("Running"),
        "a pod without an allocation must not run"
    );
    assert_eq!(with(Portkeeper::wiring), before, "a failed ADD left wiring");
    delete_and_wait(&pods, &["stranded".into()], 0, &before, CLEANUP_BOUND).await;
}

/// Deletes `names` with `grace` seconds (0: gone from the API at once) and waits up to `bound`
/// until the pods and their network namespaces are gone and the nodes' wiring is `expected` again.
async fn delete_and_wait(
    pods: &Api<Pod>,
    names: &[String],
    grace: u32,
    expected: &BTreeSet<String>,
    bound: Duration,
) {
    let prefix = with(|s| s.prefix.clone());
    let mut netns = Vec::new();
    for name in names {
        if let Some(uid) = pods.get(name).await.unwrap().uid() {
            netns.push(Path::new("/run/netns").join(format!("{prefix}{uid}")));
        }
    }
    let params = DeleteParams {
        grace_period_seconds: Some(grace),
        ..DeleteParams::default()
    };
    for name in names {
        pods.delete(name, &params).await.unwrap();
    }
    let deleted = Instant::now();
    loop {
        let wiring = with(Portkeeper::wiring);
        let mut remaining = Vec::new();
        for name in names {
            if pods.get_opt(name).await.unwrap().is_some() {
                remaining.push(name.as_str());
            }
        }
        let kept: Vec<&PathBuf> = netns.iter().filter(|path| path.exists()).collect();
        if &wiring == expected && remaining.is_empty() && kept.is_empty() {
            eprintln!(
                "{names:?} (grace {grace} s) cleaned up in {:.2} s",
                deleted.elapsed().as_secs_f64()
            );
            return;
        }
        assert!(
            deleted.elapsed() < bound,
            "{bound:?} after deleting {names:?} (grace {grace} s): pods left {remaining:?}, \
             network namespaces left {kept:?}, wiring left {:?}, missing {:?}",
            wiring.difference(expected).collect::<Vec<_>>(),
            expected.difference(&wiring).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Running pods deleted with no grace period (gone from the API before the node agent's
/// reconciler sees the deletion; before the fix their `DEL` never came) and gracefully (the agent
/// runs `DEL`, then completes the deletion): each loses its port, veth and namespace.
async fn deleted_pods_leave_no_port_or_veth(client: Client) {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    for (grace, bound) in [(0, IMMEDIATE_CLEANUP_BOUND), (30, CLEANUP_BOUND)] {
        let before = with(Portkeeper::wiring);
        let names: Vec<String> = (0..4).map(|i| format!("del-{grace}-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            let node = ["node1", "node2"][i % 2];
            pods.create(
                &PostParams::default(),
                &pod_manifest(name, node, &[], grace),
            )
            .await
            .unwrap();
        }
        for name in &names {
            wait_running(&pods, name, None).await;
        }
        let wired = with(Portkeeper::wiring);
        assert_eq!(
            wired.difference(&before).count(),
            names.len() * 2,
            "one br-int port and one host veth per pod: {wired:?}"
        );
        delete_and_wait(&pods, &names, grace, &before, bound).await;
    }
}
