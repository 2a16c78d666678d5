//! A pod's network as users check it: from inside its namespace (`eth0`, `ping`) and from OVN
//! (which chassis binds its port). Shared by the e2e suite and `dev/demo`, so both judge the data
//! plane the same way. The checks panic with what they saw, as test assertions do.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Cluster;
use crate::portkeeper::{annotation, kubectl_apply, sbctl, sleeping_container, wait_for};

/// Runs `cmd` in the pod's network namespace; (success, stdout and stderr).
pub fn exec(cluster: &Cluster, namespace: &str, pod: &str, cmd: &[&str]) -> (bool, String) {
    let out = cluster
        .pod_exec(namespace, pod, cmd)
        .unwrap_or_else(|e| panic!("pod-exec {namespace}/{pod}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// One ping from the pod to `to`; (answered, ping's output).
pub fn ping(cluster: &Cluster, namespace: &str, pod: &str, to: &str) -> (bool, String) {
    exec(cluster, namespace, pod, &["ping", "-c", "1", "-W", "2", to])
}

/// Pings `to` from `p` and fails with ping's output when no answer comes.
pub fn assert_pings(cluster: &Cluster, p: &Pod, to: &str, what: &str) {
    let namespace = p.namespace().unwrap_or_default();
    let (ok, out) = ping(cluster, &namespace, &p.name_any(), to);
    assert!(ok, "{namespace}/{} -> {to} ({what}): {out}", p.name_any());
}

/// The port of [`tcp`]'s listener, and the line it answers with.
const TCP_PORT: &str = "7007";
const TCP_GREETING: &str = "portkeeper-tcp";

/// Checks that a TCP connection from pod `from` to `addr`, an address of pod `to`, reaches a
/// listener there and carries its line back: this machine's busybox `nc -l` in `to`'s network
/// namespace (run as [`exec`] runs `ip` and `ping`) answers one connection. Pings alone do not show
/// that TCP's checksums survive the datapath. Fails with what the client saw.
pub fn assert_tcp(cluster: &Cluster, from: &Pod, to: &Pod, addr: &str) {
    let (to_ns, to_name) = (to.namespace().unwrap_or_default(), to.name_any());
    let (from_ns, from_name) = (from.namespace().unwrap_or_default(), from.name_any());
    let mut listener = cluster
        .pod_command(
            &to_ns,
            &to_name,
            &[
                "busybox",
                "nc",
                "-l",
                "-p",
                TCP_PORT,
                "-e",
                "echo",
                TCP_GREETING,
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start a listener in {to_ns}/{to_name}: {e}"));
    // Until the listener listens the connection is refused; a datapath that breaks TCP makes each
    // attempt time out instead.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let seen = loop {
        let (_, out) = exec(
            cluster,
            &from_ns,
            &from_name,
            &["timeout", "5", "busybox", "nc", "-w", "4", addr, TCP_PORT],
        );
        if out.trim() == TCP_GREETING || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let _ = listener.kill();
    let _ = listener.wait();
    assert_eq!(
        seen.trim(),
        TCP_GREETING,
        "TCP {from_ns}/{from_name} -> {to_name} at {addr}:{TCP_PORT}"
    );
}

/// Whether the pod runs: `Running`, `Ready` and an address in its status.
pub fn is_running(p: &Pod) -> bool {
    let Some(status) = p.status.as_ref() else {
        return false;
    };
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    ready && status.phase.as_deref() == Some("Running") && status.pod_ip.is_some()
}

/// Waits until pod `name` (of any UID but `not_uid`) runs, and returns it.
pub async fn wait_running(pods: &Api<Pod>, name: &str, not_uid: Option<&str>) -> Pod {
    wait_for(&format!("pod {name} Running and Ready"), async || {
        let p = pods.get_opt(name).await.ok().flatten()?;
        (is_running(&p) && p.uid().as_deref() != not_uid).then_some(p)
    })
    .await
}

/// The pod's annotated addresses (`ip_address`), in annotation order.
pub fn pod_ips(p: &Pod) -> Vec<&str> {
    annotation(p, "ip_address")
        .unwrap_or_else(|| panic!("{} has no ip_address", p.name_any()))
        .split(',')
        .collect()
}

/// The node a pod is bound to.
pub fn node_of(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

/// The chassis the SB database binds `port` to (empty when unbound).
pub fn bound_chassis(cluster: &Cluster, port: &str) -> String {
    let uuid = sbctl(
        cluster,
        &[
            "--bare",
            "--columns=chassis",
            "find",
            "port_binding",
            &format!("logical_port={port}"),
        ],
    );
    if uuid.is_empty() {
        return uuid;
    }
    sbctl(
        cluster,
        &["--bare", "--columns=name", "list", "chassis", &uuid],
    )
}

/// A pod's interface as seen from inside its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eth0 {
    pub mac: String,
    /// Global addresses with their prefix lengths, e.g. `10.16.0.15/16`.
    pub addresses: BTreeSet<String>,
}

/// Reads `eth0` of the pod.
pub fn eth0(cluster: &Cluster, namespace: &str, pod: &str) -> Eth0 {
    let (ok, link) = exec(
        cluster,
        namespace,
        pod,
        &["ip", "-o", "link", "show", "eth0"],
    );
    assert!(ok, "{namespace}/{pod} has no eth0: {link}");
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let (ok, addrs) = exec(
        cluster,
        namespace,
        pod,
        &["ip", "-o", "addr", "show", "dev", "eth0", "scope", "global"],
    );
    assert!(ok, "{addrs}");
    let addresses = addrs
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .map(str::to_owned)
        .collect();
    Eth0 { mac, addresses }
}

/// Checks that the pod's status and `eth0` carry exactly its annotated addresses (with their
/// subnets' prefix lengths, from `cidr`) and MAC; returns that `eth0`.
pub fn assert_wired_as_annotated(cluster: &Cluster, p: &Pod) -> Eth0 {
    let name = p.name_any();
    let namespace = p.namespace().unwrap_or_default();
    let ips = pod_ips(p);
    let status = p.status.as_ref().expect("pod status");
    let reported: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|i| i.ip.as_str())
        .collect();
    assert_eq!(reported, ips, "pod {name} status podIPs");
    assert_eq!(
        status.pod_ip.as_deref(),
        Some(ips[0]),
        "pod {name} status podIP"
    );
    let cidrs = annotation(p, "cidr").expect("cidr");
    let annotated: BTreeSet<String> = ips
        .iter()
        .map(|ip| {
            let v6 = |text: &str| text.contains(':');
            let prefix = cidrs
                .split(',')
                .find(|c| v6(c) == v6(ip))
                .and_then(|c| c.split('/').nth(1))
                .unwrap_or_else(|| panic!("{name}: no cidr for {ip}"));
            format!("{ip}/{prefix}")
        })
        .collect();
    let mac = annotation(p, "mac_address")
        .expect("mac_address")
        .to_lowercase();
    let seen = eth0(cluster, &namespace, &name);
    assert_eq!(seen.mac, mac, "pod {name} eth0 MAC");
    assert_eq!(seen.addresses, annotated, "pod {name} eth0 addresses");
    seen
}

/// One pod on each node, on a dual-stack subnet of their own, for pings across nodes in both
/// families: a pod anywhere pings the peer on another node.
pub struct Peers {
    by_node: BTreeMap<String, Pod>,
}

impl Peers {
    /// The peers' subnet and its blocks.
    pub const SUBNET: &'static str = "peers";
    pub const CIDR: &'static str = "10.30.0.0/24,fd00:10:30::/64";

    /// Creates the subnet and a pod `peer-<node>` bound to each node in `namespace`, and waits
    /// until they run.
    pub async fn start(cluster: &Cluster, client: &Client, namespace: &str) -> Self {
        kubectl_apply(
            cluster,
            &format!(
                "apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata:\n  name: {}\nspec:\n  cidrBlock: {}\n",
                Self::SUBNET,
                Self::CIDR
            ),
        );
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        for node in cluster.nodes() {
            let pod = serde_json::from_value(json!({
                "metadata": {
                    "name": format!("peer-{node}"),
                    "labels": {"app": "peer"},
                    "annotations": {"ovn.kubernetes.io/logical_switch": Self::SUBNET},
                },
                "spec": {
                    "nodeName": node,
                    "terminationGracePeriodSeconds": 0,
                    "automountServiceAccountToken": false,
                    "containers": [sleeping_container("c")],
                },
            }))
            .expect("a pod");
            pods.create(&PostParams::default(), &pod)
                .await
                .expect("create a peer pod");
        }
        let mut by_node = BTreeMap::new();
        for node in cluster.nodes() {
            let p = wait_running(&pods, &format!("peer-{node}"), None).await;
            assert_wired_as_annotated(cluster, &p);
            by_node.insert(node.clone(), p);
        }
        Self { by_node }
    }

    /// The peer on `node`.
    pub fn on_node(&self, node: &str) -> &Pod {
        self.by_node
            .get(node)
            .unwrap_or_else(|| panic!("no peer on {node}"))
    }

    /// The peer on a node other than `node`.
    pub fn on_other_node(&self, node: &str) -> &Pod {
        self.by_node
            .iter()
            .find(|(n, _)| *n != node)
            .map(|(_, p)| p)
            .expect("a cluster of two nodes or more")
    }

    /// From `p`: pings the peer on another node and `p`'s gateway, in each family `p` has;
    /// returns what answered, e.g. `peer-node2 10.30.0.3, gateway 10.16.0.1`.
    pub fn assert_reach(&self, cluster: &Cluster, p: &Pod) -> String {
        let peer = self.on_other_node(node_of(p));
        let v6 = |ip: &str| ip.contains(':');
        let mut answered = Vec::new();
        for ip in pod_ips(p) {
            let to = pod_ips(peer)
                .into_iter()
                .find(|peer_ip| v6(peer_ip) == v6(ip))
                .expect("the peers are dual-stack");
            assert_pings(
                cluster,
                p,
                to,
                &format!("{} on {}", peer.name_any(), node_of(peer)),
            );
            answered.push(format!("{} {to}", peer.name_any()));
        }
        // A dual-stack subnet's pod of one family (`ip_family`) has only that family's gateway.
        let families: BTreeSet<bool> = pod_ips(p).iter().map(|ip| v6(ip)).collect();
        let gateways = annotation(p, "gateway").expect("gateway").split(',');
        for gateway in gateways.filter(|g| families.contains(&v6(g))) {
            assert_pings(cluster, p, gateway, "its gateway");
            answered.push(format!("gateway {gateway}"));
        }
        answered.join(", ")
    }
}
