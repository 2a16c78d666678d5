//! `dev/demo`'s story, told on a running local cluster: what a Kube-OVN user checks, each step
//! done as a user does it (the example manifests, `kubectl`, KubeVirt's writes), verified through
//! Kubernetes, OVN and the pods' own interfaces and pings, and printed in a few lines. A step that
//! fails is reported and the story goes on; the summary table ends it.

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};

use crate::Cluster;
use crate::dataplane::{self, Peers, node_of, pod_ips};
use crate::examples;
use crate::kubevirt::VirtController;
use crate::portkeeper::{
    annotation, install_kubevirt, ip_resource, kubectl_apply, lsp_options, nbctl, node_chassis,
    ovs_interfaces, repo_root, sbctl, wait_for,
};

/// The namespace of the examples and of the demo's own pods.
const NS: &str = "default";
const VM: &str = "vm1";

/// Tells the story on `cluster`; true when every step passed.
pub async fn run(cluster: &Cluster) -> bool {
    let client = cluster.client().await.expect("a client for the cluster");
    let mut story = Story::new();
    let d = Demo {
        cluster,
        client: client.clone(),
        pods: Api::namespaced(client, NS),
    };

    let peers = story
        .step("the cluster and a peer pod per node", async |say: &Say| {
            d.cluster_and_peers(say).await
        })
        .await;
    let peers = peers.as_ref();
    story
        .step(
            "HTTP to nginx:alpine across nodes and on one node",
            async |say: &Say| d.http(say, needed(peers)).await,
        )
        .await;
    story
        .step(
            "static IP and MAC (MAC given in upper case)",
            async |say: &Say| d.static_ip(say, needed(peers)).await,
        )
        .await;
    story
        .step(
            "Deployment from an ip_pool list, one address taken",
            async |say: &Say| d.pool_list(say, needed(peers)).await,
        )
        .await;
    story
        .step("IPPool", async |say: &Say| {
            d.ippool(say, needed(peers)).await
        })
        .await;
    story
        .step("Subnet bound to a namespace", async |say: &Say| {
            d.namespace_subnet(say, needed(peers)).await
        })
        .await;
    story
        .step("dual stack, and one family only", async |say: &Say| {
            d.dual_stack(say, needed(peers)).await
        })
        .await;
    story
        .step(
            "logical_switch, mac_address, port_security",
            async |say: &Say| d.more_annotations(say, needed(peers)).await,
        )
        .await;
    story
        .step(
            "StatefulSet pod deleted and recreated",
            async |say: &Say| d.statefulset(say, needed(peers)).await,
        )
        .await;
    let launcher = story
        .step("KubeVirt VM stopped and started", async |say: &Say| {
            d.vm_stop_start(say, needed(peers)).await
        })
        .await;
    story
        .step(
            "live migration node1 -> node2 under ping",
            async |say: &Say| {
                d.live_migration(say, needed(peers), needed(launcher.as_deref()))
                    .await
            },
        )
        .await;
    story
        .step(
            "OVN's view: ovn-nbctl show, ovn-sbctl show",
            async |say: &Say| d.ovn_view(say).await,
        )
        .await;
    story.summary()
}

/// What an earlier step made; a later step that needs it fails when that step failed.
fn needed<T: ?Sized>(made: Option<&T>) -> &T {
    made.expect("an earlier step this one builds on failed")
}

/// The steps run so far and their outcome.
struct Story {
    steps: Vec<(String, Result<(), String>, Duration)>,
}

/// The message of the last panic, kept by the hook [`Story::new`] installs instead of printing it.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

impl Story {
    fn new() -> Self {
        std::panic::set_hook(Box::new(|info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
        }));
        Self { steps: Vec::new() }
    }

    /// Runs one step, printing its title, what it says and its outcome; `None` when it failed.
    async fn step<T>(&mut self, title: &str, body: impl AsyncFnOnce(&Say) -> T) -> Option<T> {
        let number = self.steps.len() + 1;
        println!("\n[{number}] {title}");
        let started = Instant::now();
        let say = Say;
        let outcome = AssertUnwindSafe(body(&say)).catch_unwind().await;
        let elapsed = started.elapsed();
        let (result, value) = match outcome {
            Ok(value) => (Ok(()), Some(value)),
            Err(_) => {
                let message = LAST_PANIC
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .unwrap_or_default();
                (Err(message), None)
            }
        };
        match &result {
            Ok(()) => println!("    PASS ({:.1} s)", elapsed.as_secs_f64()),
            Err(message) => println!("    FAIL ({:.1} s): {message}", elapsed.as_secs_f64()),
        }
        self.steps.push((title.to_owned(), result, elapsed));
        let _ = std::io::stdout().flush();
        value
    }

    /// Prints the summary table; true when every step passed.
    fn summary(&self) -> bool {
        let width = self
            .steps
            .iter()
            .map(|(t, _, _)| t.len())
            .max()
            .unwrap_or(0);
        println!("\nSummary");
        println!("  #  {:width$}  result  time", "step");
        for (i, (title, result, elapsed)) in self.steps.iter().enumerate() {
            let verdict = if result.is_ok() { "PASS" } else { "FAIL" };
            println!(
                "{:>3}  {title:width$}  {verdict:6}  {:5.1} s",
                i + 1,
                elapsed.as_secs_f64()
            );
        }
        let failed = self.steps.iter().filter(|(_, r, _)| r.is_err()).count();
        let total: Duration = self.steps.iter().map(|(_, _, d)| *d).sum();
        println!(
            "  {} of {} steps passed in {:.0} s",
            self.steps.len() - failed,
            self.steps.len(),
            total.as_secs_f64()
        );
        failed == 0
    }
}

/// Prints a step's lines: a short label, then what was done or seen.
struct Say;

impl Say {
    fn line(&self, label: &str, text: impl std::fmt::Display) {
        println!("    {label:<9} {text}");
    }
}

struct Demo<'a> {
    cluster: &'a Cluster,
    client: Client,
    pods: Api<Pod>,
}

impl Demo<'_> {
    fn example(&self, name: &str) -> std::path::PathBuf {
        repo_root().join("yamls/examples").join(name)
    }

    /// Applies an example manifest and waits for its pods (a VM's launcher on node1).
    async fn apply(&self, say: &Say, example: &str) -> Vec<Pod> {
        let pods =
            examples::apply(self.cluster, &self.client, &self.example(example), "node1").await;
        let names: Vec<String> = pods.iter().map(ResourceExt::name_any).collect();
        say.line(
            "applied",
            format!("yamls/examples/{example}: {}", names.join(", ")),
        );
        pods
    }

    /// Checks one pod end to end and prints what each side says: its annotations and status, its
    /// OVN port and binding, its `eth0`, and pings to a peer on the other node and its gateway.
    fn show_pod(&self, say: &Say, peers: &Peers, p: &Pod) {
        let name = p.name_any();
        let port = port_of(p);
        let ips = pod_ips(p).join(",");
        let mac = annotation(p, "mac_address").unwrap_or_default();
        say.line(
            "k8s",
            format!(
                "{name} on {}: ip_address {ips}, mac_address {mac}, logical_switch {}; status.podIPs {}",
                node_of(p),
                annotation(p, "logical_switch").unwrap_or_default(),
                status_ips(p)
            ),
        );
        let addresses = nbctl(self.cluster, &["lsp-get-addresses", &port]);
        let chassis = wait_bound(self.cluster, &port);
        say.line(
            "ovn",
            format!("port {port}: addresses \"{addresses}\", bound to chassis {chassis}"),
        );
        assert_eq!(
            chassis,
            node_chassis(self.cluster, node_of(p)),
            "{port} is bound on its pod's node"
        );
        let eth0 = dataplane::assert_wired_as_annotated(self.cluster, p);
        let on_eth0: Vec<&str> = eth0.addresses.iter().map(String::as_str).collect();
        say.line("eth0", format!("{} {}", eth0.mac, on_eth0.join(" ")));
        say.line(
            "ping",
            format!("answered: {}", peers.assert_reach(self.cluster, p)),
        );
    }

    async fn cluster_and_peers(&self, say: &Say) -> Peers {
        let nodes: Api<Node> = Api::all(self.client.clone());
        for node in self.cluster.nodes() {
            let chassis = node_chassis(self.cluster, node);
            let encap = sbctl(
                self.cluster,
                &[
                    "--bare",
                    "--columns=ip",
                    "find",
                    "encap",
                    &format!("chassis_name={chassis}"),
                ],
            );
            let published = wait_for(&format!("{node}'s chassis annotation"), async || {
                let n = nodes.get(node).await.ok()?;
                n.annotations().get("ovn.kubernetes.io/chassis").cloned()
            })
            .await;
            assert_eq!(published, chassis, "{node} publishes its chassis");
            say.line(
                node,
                format!(
                    "Ready, OVN chassis {chassis} (geneve {encap}), portkeeper-daemon published ovn.kubernetes.io/chassis={published}"
                ),
            );
        }
        self.show_deployment(say).await;
        install_kubevirt(self.cluster, &self.client).await;
        say.line(
            "kubevirt",
            "CRDs installed; this demo plays virt-controller",
        );
        let peers = Peers::start(self.cluster, &self.client, NS).await;
        for node in self.cluster.nodes() {
            let other = self
                .cluster
                .nodes()
                .iter()
                .find(|n| *n != node)
                .expect("two nodes");
            let peer = peers.on_other_node(other);
            say.line(
                "peer",
                format!(
                    "{} on {node}: {} (subnet {}, {})",
                    peer.name_any(),
                    pod_ips(peer).join(","),
                    Peers::SUBNET,
                    Peers::CIDR
                ),
            );
        }
        peers
    }

    /// portkeeper as `yamls/` deploys it, when it does (real nodes): the DaemonSet's pod Ready on
    /// every node, both controller replicas Ready, one of them holding the Lease.
    async fn show_deployment(&self, say: &Say) {
        let system: Api<Pod> = Api::namespaced(self.client.clone(), "kube-system");
        let daemons = system
            .list(&ListParams::default().labels("app=portkeeper-cni"))
            .await
            .expect("list the daemon's pods");
        if daemons.items.is_empty() {
            say.line(
                "portkeeper",
                "no DaemonSet pods: this cluster runs portkeeper as host processes",
            );
            return;
        }
        let leader = Api::<Lease>::namespaced(self.client.clone(), "kube-system")
            .get("portkeeper-controller")
            .await
            .ok()
            .and_then(|l| l.spec?.holder_identity)
            .unwrap_or_default();
        let controllers = system
            .list(&ListParams::default().labels("app.kubernetes.io/name=portkeeper-controller"))
            .await
            .expect("list the controller's pods");
        for p in daemons.items.iter().chain(&controllers.items) {
            let role = if p.name_any() == leader {
                ", holds the Lease"
            } else {
                ""
            };
            say.line(
                "deployed",
                format!(
                    "kube-system/{} on {}: {}{role}",
                    p.name_any(),
                    node_of(p),
                    if dataplane::is_running(p) {
                        "Running, Ready"
                    } else {
                        "not ready"
                    },
                ),
            );
        }
        let ready = |pods: &[Pod]| pods.iter().filter(|p| dataplane::is_running(p)).count();
        assert_eq!(
            ready(&daemons.items),
            self.cluster.nodes().len(),
            "the DaemonSet's pod ready on every node"
        );
        assert_eq!(
            ready(&controllers.items),
            2,
            "both controller replicas ready"
        );
        assert!(
            controllers.items.iter().any(|p| p.name_any() == leader),
            "a controller replica holds the Lease (holder: {leader:?})"
        );
    }

    /// The nginx stand-in on node2 serves its page to the peers on node1 and node2, over TCP
    /// through OVN (the pods' checksum offload is off on the userspace datapath).
    async fn http(&self, say: &Say, peers: &Peers) {
        kubectl_apply(
            self.cluster,
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx\n  namespace: {NS}\nspec:\n  nodeName: node2\n  containers:\n    - name: nginx\n      image: docker.io/library/nginx:alpine\n"
            ),
        );
        let nginx = dataplane::wait_running(&self.pods, "nginx", None).await;
        let ip = pod_ips(&nginx)[0];
        say.line(
            "k8s",
            format!("nginx (docker.io/library/nginx:alpine) on node2 at {ip}"),
        );
        let url = format!("http://{ip}/");
        for node in self.cluster.nodes() {
            let client = peers.on_node(node);
            let (ok, page) = dataplane::exec(
                self.cluster,
                NS,
                &client.name_any(),
                // busybox 1.35's `wget -T` crashes: `timeout` bounds it instead.
                &["timeout", "10", "busybox", "wget", "-q", "-O", "-", &url],
            );
            let title = page
                .lines()
                .find(|l| l.contains("<h1>"))
                .unwrap_or_default()
                .to_owned();
            assert!(
                ok && title.contains("Welcome to nginx"),
                "{} fetched: {page}",
                client.name_any()
            );
            say.line(
                "http",
                format!(
                    "{} on {node}: GET http://{ip}/ -> {title}",
                    client.name_any()
                ),
            );
        }
    }

    async fn static_ip(&self, say: &Say, peers: &Peers) {
        let pods = self.apply(say, "ip_address.yaml").await;
        let p = &pods[0];
        assert_eq!(pod_ips(p), ["10.16.0.15"], "the requested address");
        assert_eq!(
            annotation(p, "mac_address"),
            Some("02:00:0a:10:00:0f"),
            "the requested MAC, normalised"
        );
        self.show_pod(say, peers, p);
    }

    async fn pool_list(&self, say: &Say, peers: &Peers) {
        let pods = self.apply(say, "ip_pool-list.yaml").await;
        let mut ips: Vec<&str> = pods.iter().flat_map(pod_ips).collect();
        ips.sort();
        say.line(
            "pool",
            format!(
                "10.16.0.15,10.16.0.16,10.16.0.17; 10.16.0.15 is static-ip's -> {}",
                ips.join(", ")
            ),
        );
        assert_eq!(ips, ["10.16.0.16", "10.16.0.17"], "the free pool entries");
        for p in &pods {
            self.show_pod(say, peers, p);
        }
    }

    async fn ippool(&self, say: &Say, peers: &Peers) {
        let pods = self.apply(say, "ip_pool-named.yaml").await;
        for p in &pods {
            let last: u8 = pod_ips(p)[0]
                .strip_prefix("10.16.0.")
                .and_then(|n| n.parse().ok())
                .unwrap_or_default();
            assert!(
                (200..=209).contains(&last),
                "{} is outside web-pool",
                p.name_any()
            );
        }
        say.line(
            "pool",
            "IPPool web-pool: 10.16.0.200..10.16.0.209, every address inside it",
        );
        for p in &pods {
            self.show_pod(say, peers, p);
        }
    }

    async fn namespace_subnet(&self, say: &Say, peers: &Peers) {
        let pods = self.apply(say, "namespace-binding.yaml").await;
        let p = &pods[0];
        assert_eq!(annotation(p, "logical_switch"), Some("team-a"));
        assert!(
            pod_ips(p)[0].starts_with("10.19.0."),
            "an address of team-a"
        );
        say.line(
            "subnet",
            "team-a (10.19.0.0/24, namespaces: [team-a]) for a pod without annotations",
        );
        self.show_pod(say, peers, p);
    }

    async fn dual_stack(&self, say: &Say, peers: &Peers) {
        let pods = self.apply(say, "ip_family.yaml").await;
        for p in &pods {
            let families = pod_ips(p)
                .iter()
                .map(|ip| if ip.contains(':') { "v6" } else { "v4" })
                .collect::<Vec<_>>();
            let want: &[&str] = if p.name_any() == "v6-only" {
                &["v6"]
            } else {
                &["v4", "v6"]
            };
            assert_eq!(families, want, "{}'s families", p.name_any());
            self.show_pod(say, peers, p);
        }
    }

    async fn more_annotations(&self, say: &Say, peers: &Peers) {
        for example in [
            "logical_switch.yaml",
            "mac_address.yaml",
            "port_security.yaml",
        ] {
            for p in self.apply(say, example).await {
                self.show_pod(say, peers, &p);
            }
        }
        let port_security = nbctl(self.cluster, &["lsp-get-port-security", "secured.default"]);
        assert_eq!(
            port_security,
            nbctl(self.cluster, &["lsp-get-addresses", "secured.default"]),
            "port security pins the port's own MAC and address"
        );
        say.line(
            "ovn",
            format!("secured.default port_security \"{port_security}\""),
        );
    }

    async fn statefulset(&self, say: &Say, peers: &Peers) {
        let pods = self.apply(say, "statefulset.yaml").await;
        let old = pods.iter().find(|p| p.name_any() == "db-1").expect("db-1");
        self.show_pod(say, peers, old);
        let row = port_row(self.cluster, "db-1.default");
        say.line(
            "ovn",
            format!("db-1.default is Logical_Switch_Port row {row}"),
        );
        self.pods
            .delete("db-1", &DeleteParams::default())
            .await
            .expect("delete db-1");
        let old_uid = old.uid();
        say.line(
            "did",
            "kubectl delete pod db-1; the StatefulSet controller makes it again",
        );
        let new = dataplane::wait_running(&self.pods, "db-1", old_uid.as_deref()).await;
        let running = Instant::now();
        // A real kubelet (1.20) may remove the old pod from the API before it removes its
        // sandbox; until that DEL the old interface keeps claiming the port on its node.
        wait_one_interface(self.cluster, "db-1.default").await;
        let del = running.elapsed();
        let node = node_chassis(self.cluster, node_of(&new));
        wait_for("db-1.default bound on the new pod's node", async || {
            (dataplane::bound_chassis(self.cluster, "db-1.default") == node).then_some(())
        })
        .await;
        say.line(
            "del",
            format!(
                "the old db-1's interface removed (its DEL) {:.1} s after the new db-1 ran",
                del.as_secs_f64()
            ),
        );
        let same = |key: &str| {
            assert_eq!(annotation(&new, key), annotation(old, key), "db-1's {key}");
        };
        same("ip_address");
        same("mac_address");
        assert_eq!(
            port_row(self.cluster, "db-1.default"),
            row,
            "the same port row"
        );
        say.line(
            "k8s",
            format!(
                "db-1 is back (uid {} -> {}): same ip_address and mac_address",
                short(old_uid.as_deref()),
                short(new.uid().as_deref())
            ),
        );
        say.line("ovn", format!("db-1.default is still row {row}"));
        self.show_pod(say, peers, &new);
    }

    /// Returns the VM's running launcher pod, on node1.
    async fn vm_stop_start(&self, say: &Say, peers: &Peers) -> String {
        let virt = VirtController::new(&self.client, NS);
        let first = self.apply(say, "vm.yaml").await.remove(0);
        self.show_pod(say, peers, &first);
        let port = format!("{VM}.{NS}");
        let row = port_row(self.cluster, &port);
        let identity = (
            annotation(&first, "ip_address").map(str::to_owned),
            annotation(&first, "mac_address").map(str::to_owned),
        );
        say.line(
            "ovn",
            format!("{port} is row {row}; the launcher pod has no port of its own"),
        );
        virt.stop(VM, &first.name_any()).await;
        let kept = ip_resource(&self.client, &port)
            .await
            .expect("the VM's IP resource");
        say.line(
            "stop",
            format!(
                "launcher pod and VMI deleted; IP {port} kept ({} {}), port row {}",
                kept["spec"]["ipAddress"].as_str().unwrap_or_default(),
                kept["spec"]["macAddress"].as_str().unwrap_or_default(),
                port_row(self.cluster, &port)
            ),
        );
        let launcher = format!("virt-launcher-{VM}-2");
        virt.start(VM, Some((&launcher, "node1"))).await;
        let again = dataplane::wait_running(&self.pods, &launcher, None).await;
        assert_eq!(
            (
                annotation(&again, "ip_address").map(str::to_owned),
                annotation(&again, "mac_address").map(str::to_owned)
            ),
            identity,
            "the VM's address and MAC after the start"
        );
        assert_eq!(port_row(self.cluster, &port), row, "the same port row");
        say.line(
            "start",
            format!("new VMI, launcher {launcher}: same ip_address, mac_address and port row"),
        );
        self.show_pod(say, peers, &again);
        launcher
    }

    async fn live_migration(&self, say: &Say, peers: &Peers, source: &str) {
        let virt = VirtController::new(&self.client, NS);
        let port = format!("{VM}.{NS}");
        let vm_pod = self.pods.get(source).await.expect("the VM's launcher pod");
        let vm_ip = pod_ips(&vm_pod)[0].to_owned();
        let pinger = peers.on_other_node("node2").name_any();
        let target = format!("virt-launcher-{VM}-3");
        let (node1, node2) = (
            node_chassis(self.cluster, "node1"),
            node_chassis(self.cluster, "node2"),
        );
        say.line(
            "ping",
            format!("{pinger} pings the VM at {vm_ip} every 0.2 s from now on"),
        );
        let ping = Pinger::start(self.cluster, &pinger, &vm_ip);
        let replies = |pod: &str| echo_replies(self.cluster, pod);
        let before = replies(source);

        let uid = virt.migrate(VM, "vm1-migration").await;
        virt.phase("vm1-migration", "Scheduling").await;
        let vmi_uid = virt.vmis.get(VM).await.expect("VMI").uid().expect("uid");
        virt.launcher(
            VM,
            &vmi_uid,
            &target,
            Some(("vm1-migration", &uid)),
            Some("node2"),
        )
        .await;
        dataplane::wait_running(&self.pods, &target, None).await;
        let during = options_become(
            self.cluster,
            &port,
            &format!("{node1},{node2}"),
            Some("rarp"),
        )
        .await;
        say.line(
            "migrate",
            format!("VMIM vm1-migration Scheduling; target launcher {target} on node2"),
        );
        say.line("ovn", format!("{port} options: {during}"));
        let target_before = replies(&target);
        for phase in ["Scheduled", "PreparingTarget", "TargetReady", "Running"] {
            if phase == "Scheduled" {
                virt.migration_state(VM, &uid, (source, &target), ("node1", "node2"))
                    .await;
            }
            virt.phase("vm1-migration", phase).await;
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let still = options_as_text(&lsp_options(self.cluster, &port));
        assert_eq!(still, during, "the options through the migration");
        say.line(
            "phases",
            "Scheduled, PreparingTarget, TargetReady, Running: options unchanged",
        );
        let sb_main = sb_chassis(self.cluster, &port, "requested_chassis");
        let sb_additional = sb_chassis(self.cluster, &port, "requested_additional_chassis");
        assert_eq!(
            (sb_main.as_str(), sb_additional.as_str()),
            (node1.as_str(), node2.as_str())
        );
        say.line("ovn-sb", format!("Port_Binding {port}: requested_chassis {sb_main}, requested_additional_chassis {sb_additional}"));
        let answered_source = replies(source) - before;
        let answered_target = replies(&target) - target_before;

        virt.finish(VM, "vm1-migration", true, "node2").await;
        let after = options_become(self.cluster, &port, &node2, None).await;
        say.line(
            "done",
            format!("VMI on node2, VMIM Succeeded; {port} options: {after}"),
        );
        wait_for(&format!("{port} bound on {node2}"), async || {
            (dataplane::bound_chassis(self.cluster, &port) == node2).then_some(())
        })
        .await;
        let target_mid = replies(&target);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let answered_after = replies(&target) - target_mid;
        let (sent, received) = ping.stop();
        say.line(
            "ping",
            format!(
                "{received}/{sent} answered; during the migration {answered_source} replies from node1's launcher, {answered_target} from node2's; after it {answered_after} from node2's"
            ),
        );
        assert!(
            answered_source > 0,
            "the source answered during the migration"
        );
        assert!(answered_after > 0, "the target answers after the migration");
        assert!(
            received * 10 >= sent * 9,
            "at most a tenth of the pings lost: {received}/{sent}"
        );
        virt.delete_pod(source).await;
        let deleted = Instant::now();
        let unpinned = options_become(self.cluster, &port, "", None).await;
        say.line(
            "cleanup",
            format!("source launcher deleted; {port} options: {unpinned}"),
        );
        // Deleted at once, the source launcher leaves the API before node1's kubelet removes its
        // sandbox; until that DEL its interface may claim the unpinned port back.
        let iface = format!("external_ids:iface-id={port}");
        wait_for(
            "the source launcher's interface gone from node1",
            async || {
                ovs_interfaces(self.cluster, "node1", &iface)
                    .is_empty()
                    .then_some(())
            },
        )
        .await;
        let del = deleted.elapsed();
        wait_for(&format!("{port} bound on node2"), async || {
            (dataplane::bound_chassis(self.cluster, &port) == node2).then_some(())
        })
        .await;
        say.line(
            "del",
            format!(
                "node1's kubelet removed the source's interface {:.1} s after its pod left the API; {port} bound on node2",
                del.as_secs_f64()
            ),
        );
        let moved = self.pods.get(&target).await.expect("the target launcher");
        self.show_pod(say, peers, &moved);
    }

    async fn ovn_view(&self, say: &Say) {
        let nb = nbctl(self.cluster, &["show"]);
        let sb = sbctl(self.cluster, &["show"]);
        println!("    ovn-nbctl show:");
        for line in nb.lines() {
            println!("      {line}");
        }
        println!("    ovn-sbctl show:");
        for line in sb.lines() {
            println!("      {line}");
        }
        let running = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .expect("list pods");
        let mut checked = 0;
        for p in running.items.iter().filter(|p| dataplane::is_running(p)) {
            let port = port_of(p);
            if annotation(p, "virtualmachine").is_some()
                || p.spec.as_ref().and_then(|s| s.host_network) == Some(true)
            {
                continue;
            }
            assert!(
                nb.contains(&format!("port {port}")),
                "{port} in ovn-nbctl show"
            );
            assert_eq!(
                dataplane::bound_chassis(self.cluster, &port),
                node_chassis(self.cluster, node_of(p)),
                "{port} bound on its pod's node"
            );
            checked += 1;
        }
        say.line(
            "checked",
            format!(
                "{checked} running pods: each has its port in NB, bound on its node's chassis in SB"
            ),
        );
    }
}

/// Waits until one OVS interface across the nodes is left for `port`: the one of the pod that
/// holds it now, an earlier pod's removed by its node's DEL.
async fn wait_one_interface(cluster: &Cluster, port: &str) {
    let iface = format!("external_ids:iface-id={port}");
    wait_for(&format!("one OVS interface for {port}"), async || {
        let count: usize = cluster
            .nodes()
            .iter()
            .map(|node| ovs_interfaces(cluster, node, &iface).len())
            .sum();
        (count == 1).then_some(())
    })
    .await;
}

/// The OVN port of a pod: `<pod>.<ns>`, or `<vm>.<ns>` for a KubeVirt launcher pod.
fn port_of(p: &Pod) -> String {
    let owner = annotation(p, "virtualmachine")
        .map(str::to_owned)
        .unwrap_or_else(|| p.name_any());
    format!("{owner}.{}", p.namespace().unwrap_or_default())
}

fn status_ips(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| {
            ips.iter()
                .map(|i| i.ip.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn short(uid: Option<&str>) -> &str {
    uid.and_then(|u| u.get(..8)).unwrap_or("?")
}

/// The `_uuid` of a Logical_Switch_Port row.
pub fn port_row(cluster: &Cluster, port: &str) -> String {
    nbctl(
        cluster,
        &[
            "--bare",
            "--columns=_uuid",
            "find",
            "Logical_Switch_Port",
            &format!("name={port}"),
        ],
    )
}

/// Waits until the SB binds `port` to a chassis, and returns that chassis.
fn wait_bound(cluster: &Cluster, port: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let chassis = dataplane::bound_chassis(cluster, port);
        if !chassis.is_empty() || Instant::now() > deadline {
            return chassis;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The chassis names in a Port_Binding column of `port` (`requested_chassis`, …).
fn sb_chassis(cluster: &Cluster, port: &str, column: &str) -> String {
    let uuids = sbctl(
        cluster,
        &[
            "--bare",
            &format!("--columns={column}"),
            "find",
            "Port_Binding",
            &format!("logical_port={port}"),
        ],
    );
    uuids
        .split_whitespace()
        .map(|uuid| {
            sbctl(cluster, &["get", "Chassis", uuid, "name"])
                .trim_matches('"')
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn options_as_text(options: &std::collections::BTreeMap<String, String>) -> String {
    if options.is_empty() {
        return "(none)".into();
    }
    options
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits until `port`'s options are `requested-chassis=<chassis>` (none when empty) and, when
/// given, `activation-strategy`; returns them as text.
async fn options_become(
    cluster: &Cluster,
    port: &str,
    chassis: &str,
    activation: Option<&str>,
) -> String {
    let mut want = std::collections::BTreeMap::new();
    if !chassis.is_empty() {
        want.insert("requested-chassis".to_owned(), chassis.to_owned());
    }
    if let Some(strategy) = activation {
        want.insert("activation-strategy".to_owned(), strategy.to_owned());
    }
    wait_for(&format!("{port} options {want:?}"), async || {
        (lsp_options(cluster, port) == want).then_some(())
    })
    .await;
    options_as_text(&want)
}

/// The ICMP echo replies a pod has sent so far (`OutEchoReps` of its namespace's
/// `/proc/net/snmp`).
fn echo_replies(cluster: &Cluster, pod: &str) -> u64 {
    let (ok, out) = dataplane::exec(cluster, NS, pod, &["cat", "/proc/net/snmp"]);
    assert!(ok, "{pod}'s ICMP counters: {out}");
    let mut icmp = out.lines().filter(|l| l.starts_with("Icmp: "));
    let (names, values) = (
        icmp.next().unwrap_or_default(),
        icmp.next().unwrap_or_default(),
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "OutEchoReps")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("no OutEchoReps in {pod}'s /proc/net/snmp: {out}"))
}

/// A ping running in a pod until stopped (killed if never stopped, e.g. when its step fails).
struct Pinger {
    child: Option<Child>,
}

impl Pinger {
    fn start(cluster: &Cluster, pod: &str, to: &str) -> Self {
        let child = cluster
            .pod_command(NS, pod, &["ping", "-i", "0.2", "-W", "1", to])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ping");
        Self { child: Some(child) }
    }

    /// Stops the ping as Ctrl-C does; (sent, received) from its statistics.
    fn stop(mut self) -> (u64, u64) {
        let child = self.child.take().expect("a running ping");
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().expect("ping's output");
        let text = String::from_utf8_lossy(&out.stdout);
        let count = |word: &str| {
            text.lines()
                .find(|l| l.contains("packets transmitted"))
                .and_then(|l| l.split(", ").find(|f| f.ends_with(word)))
                .and_then(|f| f.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("ping's statistics: {text}"))
        };
        (count("packets transmitted"), count("received"))
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
