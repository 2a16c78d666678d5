//! Node-affinity pools and Subnet DNS on a two-node local cluster. IPPools carry a
//! `nodeAffinity` (Spiderpool's filter) and pods name an ordered `ip_pools` list: a pod is
//! allocated once the scheduler (or its own `spec.nodeName`) binds it, from the first pool that
//! admits its node and has room; a node no pool admits is a Warning Event and nothing else. A
//! changed node label lets a refused pod through. Everything holds through a controller
//! restart. The Subnet's `spec.dns` (with the node's resolv.conf filling the rest) reaches the
//! CNI result and the pod's `/etc/resolv.conf`.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kind_e2e::Cluster;
use kind_e2e::dataplane::{node_of, pod_ips, wait_running};
use kind_e2e::portkeeper::{
    Controller, allocated, annotation, controller_binary, kubectl, kubectl_apply, port_names,
    prepare_cluster, run_on_cluster, wait_for, warnings,
};
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

const NS: &str = "zones";
const CIDR: &str = "10.16.0.0/16";

#[test]
fn node_affinity_pools() {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_node-agent"));
    run_on_cluster(2, agent, 2, cases);
}

/// Creates `name` asking for `pools`, bound to `node` directly (`spec.nodeName`) or left to the
/// scheduler with a node selector.
async fn pod(pods: &Api<Pod>, name: &str, pools: &str, placement: Placement) {
    let mut spec = json!({
        "automountServiceAccountToken": false,
        "containers": [{"name": "c", "image": "busybox"}],
    });
    match placement {
        Placement::Pinned(node) => spec["nodeName"] = json!(node),
        Placement::Selected(key, value) => spec["nodeSelector"] = json!({ key: value }),
    }
    let object = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS,
            "annotations": {"ovn.kubernetes.io/ip_pools": pools}},
        "spec": spec,
    }))
    .unwrap();
    pods.create(&PostParams::default(), &object).await.unwrap();
}

enum Placement {
    /// `spec.nodeName`: bound at creation, the scheduler never sees it.
    Pinned(&'static str),
    /// `spec.nodeSelector`: bound by the scheduler.
    Selected(&'static str, &'static str),
}

/// Waits for the pod to run with an allocated address, and returns that address.
async fn address(pods: &Api<Pod>, name: &str) -> (Pod, String) {
    allocated(pods, name).await;
    let p = wait_running(pods, name, None).await;
    let ip = annotation(&p, "ip_address").unwrap().to_owned();
    assert_eq!(
        pod_ips(&p),
        vec![ip.as_str()],
        "{name}: runs with its address"
    );
    (p, ip)
}

/// Waits for portkeeper's refusal of the pod, and checks it changed nothing: no allocation, no
/// port.
async fn refused(cluster: &Cluster, client: &kube::Client, pods: &Api<Pod>, name: &str) -> String {
    let message = wait_for(&format!("a Warning Event on {name}"), async || {
        warnings(client, NS, name)
            .await
            .into_iter()
            .find(|(reason, _)| reason == "AcquireAddressFailed")
            .map(|(_, message)| message)
    })
    .await;
    let p = pods.get(name).await.unwrap();
    assert_eq!(annotation(&p, "allocated"), None, "{name}: {message}");
    assert_eq!(annotation(&p, "ip_address"), None, "{name}");
    assert_eq!(
        port_names(cluster, &format!("external_ids:pod=\"{NS}/{name}\"")),
        "",
        "{name}: no port"
    );
    message
}

/// The CNI result the node agent keeps for the pod (its sandbox record).
fn cni_result(cluster: &Cluster, p: &Pod) -> Value {
    let record = cluster
        .node_dir(node_of(p))
        .join("agent")
        .join(format!("{}.json", p.uid().unwrap()));
    let sandbox: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    sandbox["result"].clone()
}

async fn cases(cluster: &Cluster) -> Controller {
    let bin = controller_binary();
    let client = prepare_cluster(cluster, NS, false).await;
    let controller = Controller::start(&bin, cluster, CIDR, 0, &[]);
    kubectl_apply(
        cluster,
        "apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata:\n  name: zone-net\nspec:\n  \
         cidrBlock: 10.40.0.0/24\n  dns:\n    nameservers: [10.96.0.10]\n    fromNode: true\n\
         ---\napiVersion: kubeovn.io/v1\nkind: IPPool\nmetadata:\n  name: only-node2\nspec:\n  \
         subnet: zone-net\n  ips: [10.40.0.10..10.40.0.11]\n  nodeAffinity:\n    matchLabels:\n      \
         kubernetes.io/hostname: node2\n\
         ---\napiVersion: kubeovn.io/v1\nkind: IPPool\nmetadata:\n  name: first\nspec:\n  \
         subnet: zone-net\n  ips: [10.40.0.20]\n  nodeAffinity:\n    matchExpressions:\n    \
         - {key: zone, operator: In, values: [b]}\n\
         ---\napiVersion: kubeovn.io/v1\nkind: IPPool\nmetadata:\n  name: second\nspec:\n  \
         subnet: zone-net\n  ips: [10.40.0.30..10.40.0.32]\n\
         ---\napiVersion: kubeovn.io/v1\nkind: IPPool\nmetadata:\n  name: zone-c\nspec:\n  \
         subnet: zone-net\n  ips: [10.40.0.40]\n  nodeAffinity:\n    matchLabels: {zone: c}\n",
    );
    kubectl(
        cluster,
        &["label", "node", "node2", "zone=b", "--overwrite"],
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);

    println!("case: a pod the scheduler binds to node2 gets the node2-only pool's address");
    pod(
        &pods,
        "on-node2",
        "only-node2",
        Placement::Selected("kubernetes.io/hostname", "node2"),
    )
    .await;
    let (on_node2, ip) = address(&pods, "on-node2").await;
    assert_eq!(node_of(&on_node2), "node2");
    assert_eq!(ip, "10.40.0.10");

    println!(
        "case: the Subnet's DNS, filled from node2's resolv.conf, is in the CNI result and the pod"
    );
    assert_eq!(
        cni_result(cluster, &on_node2)["dns"],
        json!({"nameservers": ["10.96.0.10"], "search": ["node2.node.local"], "options": ["ndots:1"]})
    );
    let out = cluster
        .pod_exec(NS, "on-node2", &["cat", "/etc/resolv.conf"])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "nameserver 10.96.0.10\nsearch node2.node.local\noptions ndots:1\n"
    );

    println!(
        "case: a pod pinned to node1 that names the node2-only pool gets a Warning Event and no address"
    );
    pod(
        &pods,
        "pinned-node1",
        "only-node2",
        Placement::Pinned("node1"),
    )
    .await;
    let message = refused(cluster, &client, &pods, "pinned-node1").await;
    assert!(
        message.starts_with("NoPoolForNode: ip_pools only-node2 has no pool for node node1")
            && message.contains("kubernetes.io/hostname=node2 does not admit the node"),
        "{message}"
    );

    println!("case: a fallback list is honoured in order: first pool, then (full) the second");
    pod(
        &pods,
        "fallback-1",
        "first,second",
        Placement::Selected("zone", "b"),
    )
    .await;
    assert_eq!(address(&pods, "fallback-1").await.1, "10.40.0.20");
    pod(
        &pods,
        "fallback-2",
        "first,second",
        Placement::Selected("zone", "b"),
    )
    .await;
    assert_eq!(address(&pods, "fallback-2").await.1, "10.40.0.30");
    println!("case: a node the first pool does not admit takes the second");
    pod(
        &pods,
        "fallback-node1",
        "first,second",
        Placement::Pinned("node1"),
    )
    .await;
    assert_eq!(address(&pods, "fallback-node1").await.1, "10.40.0.31");

    println!("case: a pod its node cannot serve yet is allocated once the node's label changes");
    pod(&pods, "relabel", "zone-c", Placement::Pinned("node1")).await;
    let message = refused(cluster, &client, &pods, "relabel").await;
    assert!(message.contains("zone-c: nodeAffinity zone=c"), "{message}");
    kubectl(
        cluster,
        &["label", "node", "node1", "zone=c", "--overwrite"],
    );
    assert_eq!(address(&pods, "relabel").await.1, "10.40.0.40");

    println!("case: a pod no node can take stays unbound and unallocated, with no Event of ours");
    pod(
        &pods,
        "unbound",
        "second",
        Placement::Selected("zone", "nowhere"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let unbound = pods.get("unbound").await.unwrap();
    assert_eq!(unbound.spec.as_ref().unwrap().node_name, None);
    assert_eq!(annotation(&unbound, "allocated"), None);
    assert!(
        warnings(&client, NS, "unbound")
            .await
            .iter()
            .all(|(r, _)| r != "AcquireAddressFailed")
    );

    println!(
        "case: the controller restarts; allocations stay, a pod created meanwhile follows the pools"
    );
    let before: Vec<(String, String)> = pods
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| Some((p.name_any(), annotation(p, "ip_address")?.to_owned())))
        .collect();
    controller.kill();
    pod(
        &pods,
        "after-restart",
        "only-node2,second",
        Placement::Pinned("node2"),
    )
    .await;
    let controller = Controller::start(&bin, cluster, CIDR, 1, &[]);
    assert_eq!(address(&pods, "after-restart").await.1, "10.40.0.11");
    pod(
        &pods,
        "pool-full",
        "only-node2,second",
        Placement::Pinned("node2"),
    )
    .await;
    assert_eq!(address(&pods, "pool-full").await.1, "10.40.0.32");
    for (name, ip) in &before {
        let p = pods.get(name).await.unwrap();
        assert_eq!(
            annotation(&p, "ip_address"),
            Some(ip.as_str()),
            "{name} keeps its address"
        );
    }
    let p = pods.get("pinned-node1").await.unwrap();
    assert_eq!(
        annotation(&p, "allocated"),
        None,
        "still refused after the restart"
    );
    let unbound = pods.get("unbound").await.unwrap();
    assert_eq!(
        annotation(&unbound, "allocated"),
        None,
        "still unbound, still unallocated"
    );
    controller
}
