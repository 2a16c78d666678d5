//! portkeeper installed as a user installs it, on real nodes: a local cluster whose nodes run a
//! kubelet and a containerd each (`up --kubelet`), with yamls/crds.yaml, rbac.yaml,
//! controller.yaml and daemonset.yaml applied (the NB address substituted). The controller runs
//! as the Deployment (2 replicas, one leader), the daemon as the DaemonSet that installs the CNI
//! plugin and conflist on its node; every pod here is started by a kubelet through containerd and
//! portkeeper-cni, and every image is the local one of kind-e2e/images/build, served by each
//! node's own registry. One cluster serves the cases, in order; the consistency check ends them,
//! and no request of the controller's service account may have been refused.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kind_e2e::dataplane::{self, wait_running};
use kind_e2e::demo::port_row;
use kind_e2e::examples;
use kind_e2e::portkeeper::{
    allocated, annotation, assert_consistent, assert_roles_sufficient, kubectl, kubectl_apply,
    nbctl, ovs_interfaces, prepare_cluster, wait_for,
};
use kind_e2e::{Cluster, ClusterOptions};
use kube::api::DeleteParams;
use kube::{Api, Client, ResourceExt};

const NS: &str = "real";
/// The standby must have allocated a new pod this long after the leader's pod was deleted.
const FAILOVER: Duration = Duration::from_secs(20);

#[test]
fn real_nodes() {
    if !kind_e2e::harness::privileged("the real nodes e2e") {
        return;
    }
    let cluster = Cluster::up(ClusterOptions {
        nodes: 2,
        kubelet: true,
        ..ClusterOptions::default()
    })
    .expect("local cluster with real nodes up");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(cases(&cluster))
    }));
    drop(runtime);
    let result = result.and_then(|()| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_roles_sufficient(&cluster)
        }))
    });
    if result.is_err() {
        print_logs(&cluster);
    }
    cluster.down().expect("cluster down");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn cases(cluster: &Cluster) {
    let client = prepare_cluster(cluster, NS, false).await;
    deployed_on_every_node(cluster, &client).await;
    static_pod_answers_ping_and_http(cluster, &client).await;
    let checked = examples::assert_every_example_wired(cluster, &client).await;
    eprintln!("every example manifest: {checked} pods wired as annotated, reaching node to node");
    standby_takes_over(cluster, &client).await;
    statefulset_pod_keeps_identity(cluster, &client).await;
    assert_consistent(cluster).await;
}

/// The Deployment and the DaemonSet are Ready, and the DaemonSet put the plugin and the conflist
/// of its ConfigMap into each node's CNI folders (the node's own, seen from the host).
async fn deployed_on_every_node(cluster: &Cluster, client: &Client) {
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    let status = ds.get("portkeeper-cni").await.unwrap().status.unwrap();
    assert_eq!(
        status.number_ready,
        cluster.nodes().len() as i32,
        "{status:?}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "kube-system");
    let status = deployments
        .get("portkeeper-controller")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.ready_replicas, Some(2), "{status:?}");

    let config: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let conflist = config
        .get("portkeeper-cni-config")
        .await
        .unwrap()
        .data
        .unwrap()["01-portkeeper.conflist"]
        .clone();
    for node in cluster.nodes() {
        let fs = cluster.node_dir(node).join("fs");
        let installed = std::fs::read_to_string(fs.join("cni-conf/01-portkeeper.conflist"))
            .unwrap_or_else(|e| panic!("{node}: conflist not installed: {e}"));
        assert_eq!(
            installed, conflist,
            "{node}: conflist differs from the ConfigMap"
        );
        let plugin = fs.join("cni-bin/portkeeper-cni");
        let meta = std::fs::metadata(&plugin)
            .unwrap_or_else(|e| panic!("{node}: {} not installed: {e}", plugin.display()));
        assert!(meta.len() > 0, "{node}: empty plugin");
    }
}

/// A pod with a static IP and MAC, started by node2's kubelet, gets them on its `eth0` (read
/// through `pod-exec`); pods on node1 ping it and fetch its page over HTTP, and so does a pod on
/// node2. The clients name `image: busybox` (pulled `Always`, from the node's own registry).
async fn static_pod_answers_ping_and_http(cluster: &Cluster, client: &Client) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    kubectl_apply(
        cluster,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: {NS}
  annotations:
    ovn.kubernetes.io/ip_address: 10.16.0.50
    ovn.kubernetes.io/mac_address: 00:00:00:aa:bb:50
spec:
  nodeSelector: {{kubernetes.io/hostname: node2}}
  containers:
    - name: web
      image: docker.io/library/nginx:alpine
"#
        ),
    );
    let server = wait_running(&pods, "server", None).await;
    let status = server.status.as_ref().unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some("10.16.0.50"));
    assert_eq!(
        annotation(&server, "mac_address"),
        Some("00:00:00:aa:bb:50")
    );
    assert_eq!(
        nbctl(cluster, &["lsp-get-addresses", &format!("server.{NS}")]),
        "00:00:00:aa:bb:50 10.16.0.50"
    );
    dataplane::assert_wired_as_annotated(cluster, &server);

    // TCP is retried a few times: the first attempt may meet flows still being installed; a
    // datapath that drops TCP fails all of them. (busybox 1.35's `wget -T` crashes: `timeout`.)
    let fetch = "for i in 1 2 3; do timeout 10 wget -q -O - http://10.16.0.50/ | grep -q 'Welcome to nginx' && exit 0; sleep 1; done; exit 1";
    let clients = [
        (
            "ping-across",
            "node1",
            r#"[ping, -c, "3", -W, "2", 10.16.0.50]"#.to_owned(),
        ),
        ("http-across", "node1", format!("[sh, -c, \"{fetch}\"]")),
        ("http-same-node", "node2", format!("[sh, -c, \"{fetch}\"]")),
    ];
    for (name, node, command) in &clients {
        kubectl_apply(
            cluster,
            &format!(
                r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {NS}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  restartPolicy: Never
  containers:
    - name: client
      image: busybox
      command: {command}
"#
            ),
        );
    }
    for (name, node, _) in &clients {
        let phase = wait_for(&format!("{name} finished"), async || {
            let p = pods.get(name).await.ok()?;
            let phase = p.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        })
        .await;
        assert_eq!(
            phase, "Succeeded",
            "{name} on {node} could not reach the server at 10.16.0.50"
        );
    }
}

/// `kubectl delete pod` of the replica that holds the Lease: the other replica takes the Lease,
/// and a pod created once it has is allocated, all within [`FAILOVER`] of the deletion (until its
/// pod is gone, the old leader may still allocate: that proves nothing).
async fn standby_takes_over(cluster: &Cluster, client: &Client) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let holder = async || {
        leases
            .get("portkeeper-controller")
            .await
            .ok()?
            .spec?
            .holder_identity
    };
    let old = wait_for("a leader", holder).await;
    let deleted = Instant::now();
    kubectl(
        cluster,
        &["-n", "kube-system", "delete", "pod", &old, "--wait=false"],
    );
    let new = wait_for("another replica to lead", async || {
        holder().await.filter(|h| *h != old)
    })
    .await;
    let took_over = deleted.elapsed();
    kubectl_apply(
        cluster,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: after-failover
  namespace: {NS}
spec:
  containers:
    - name: sleep
      image: busybox
      command: [sleep, "3600"]
"#
        ),
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    allocated(&pods, "after-failover").await;
    let took = deleted.elapsed();
    eprintln!(
        "leader {old} deleted; {new} led after {took_over:?}, allocated a new pod after {took:?}"
    );
    assert!(took <= FAILOVER, "new pod allocated only after {took:?}");
    wait_running(&pods, "after-failover", None).await;
}

/// A StatefulSet pod deleted through the API is recreated by the StatefulSet controller and a
/// kubelet, and keeps its IP, MAC (on its `eth0` too) and logical switch port; the kubelet's
/// removal of the old sandbox ran the plugin's DEL, so one OVS interface is left for the port.
async fn statefulset_pod_keeps_identity(cluster: &Cluster, client: &Client) {
    kubectl_apply(
        cluster,
        &format!(
            r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
  namespace: {NS}
spec:
  serviceName: web
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: docker.io/library/nginx:alpine
"#
        ),
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let port = format!("web-0.{NS}");
    let before = wait_running(&pods, "web-0", None).await;
    let identity = |p: &Pod| {
        (
            annotation(p, "ip_address").map(str::to_owned),
            annotation(p, "mac_address").map(str::to_owned),
            p.status.as_ref().and_then(|s| s.pod_ip.clone()),
        )
    };
    let row = port_row(cluster, &port);
    assert!(!row.is_empty(), "no port {port}");
    let wiring = dataplane::assert_wired_as_annotated(cluster, &before);

    pods.delete("web-0", &DeleteParams::default())
        .await
        .unwrap();
    let after = wait_running(&pods, "web-0", before.uid().as_deref()).await;
    assert_eq!(identity(&after), identity(&before));
    assert_eq!(
        identity(&after).0,
        identity(&after).2,
        "podIP differs from the annotation"
    );
    assert_eq!(port_row(cluster, &port), row, "the port row was replaced");
    assert_eq!(
        dataplane::assert_wired_as_annotated(cluster, &after),
        wiring,
        "web-0 keeps its eth0 address and MAC"
    );
    let condition = format!("external_ids:iface-id={port}");
    let interfaces: Vec<(String, String)> = wait_for("the old sandbox's DEL", async || {
        let found: Vec<(String, String)> = cluster
            .nodes()
            .iter()
            .flat_map(|node| {
                ovs_interfaces(cluster, node, &condition)
                    .into_iter()
                    .map(|i| (node.to_string(), i))
            })
            .collect();
        (found.len() == 1).then_some(found)
    })
    .await;
    eprintln!("web-0 recreated; OVS interfaces for {port}: {interfaces:?}");
}

/// The nodes' kubelet and containerd logs, and the pods' logs (the controller's and daemon's).
fn print_logs(cluster: &Cluster) {
    let logs = cluster.run_dir().join("log");
    for node in cluster.nodes() {
        for component in [format!("kubelet-{node}"), format!("containerd-{node}")] {
            let path = logs.join(format!("{component}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- {component} (last 40 lines)");
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
        let pod_logs = cluster.node_dir(node).join("fs/log-pods");
        for entry in walk(&pod_logs) {
            if entry.to_string_lossy().contains("kube-system_portkeeper") {
                let text = std::fs::read_to_string(&entry).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- {}", entry.display());
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
        }
    }
}

/// The files under a folder.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let p = e.path();
            if p.is_dir() { walk(&p) } else { vec![p] }
        })
        .collect()
}
