//! KubeVirt live migration on a two-node local cluster. The test plays virt-controller and
//! virt-handler (`kind_e2e::kubevirt`): it writes VirtualMachines, VMIs and their launcher pods (binding them to nodes
//! as the scheduler does), creates VirtualMachineInstanceMigrations and steps their phases
//! together with the VMI's `status.migrationState`. At each step the VM's port is checked with
//! `ovn-nbctl lsp-get-options`, the chassis OVN resolved with `ovn-sbctl`, and every launcher pod
//! of a VM is checked to carry the same addresses on one port and one IP resource.
//!
//! Cases run in order on one cluster: a full migration, a failed one rolling back, a target pod
//! created only after `PreparingTarget`, a second migration during which an old launcher pod is
//! deleted (with the VMI's `migrationState` still describing the first), and a controller
//! SIGKILLed mid-migration twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node};
use kind_e2e::Cluster;
use kind_e2e::kubevirt::VirtController;
use kind_e2e::portkeeper::{
    Controller, allocated, annotation, controller_binary, events, install_kubevirt, ip_resource,
    kubectl, lsp_options, nb_addresses, nbctl, node_chassis, port_names, repo_root, run_on_cluster,
    sbctl, wait_for,
};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const NS: &str = "migrate";
const CIDR: &str = "10.17.0.0/16";
/// The annotation portkeeper's node daemon writes.
const NODE_CHASSIS: &str = "ovn.kubernetes.io/chassis";

#[test]
fn live_migration() {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_node-agent"));
    run_on_cluster(2, agent, 3, cases);
}

/// The KubeVirt side of the test, and the chassis each node maps to.
struct KubeVirt<'a> {
    cluster: &'a Cluster,
    client: Client,
    virt: VirtController,
    chassis: BTreeMap<String, String>,
}

/// The two managed options of a port, as `lsp-get-options` shows them.
type Options = BTreeMap<String, String>;

/// One VM running on node1 and one migration of it, as the test drives them.
struct Flight {
    vm: String,
    vmi_uid: String,
    migration: String,
    uid: String,
    source: String,
    target: String,
}

impl KubeVirt<'_> {
    /// Starts `vm` on node1 and creates the migration `<vm>-mig` (not yet in any phase).
    async fn flight(&self, vm: &str) -> Flight {
        self.virt.create_vm(vm).await;
        let vmi_uid = self
            .virt
            .start(vm, Some((&format!("{vm}-a"), "node1")))
            .await;
        let migration = format!("{vm}-mig");
        let uid = self.virt.migrate(vm, &migration).await;
        Flight {
            vm: vm.to_owned(),
            vmi_uid,
            migration,
            uid,
            source: format!("{vm}-a"),
            target: format!("{vm}-b"),
        }
    }

    /// Creates the flight's target pod, bound to `node` or left for [`Self::bind`].
    async fn add_target(&self, f: &Flight, node: Option<&str>) {
        self.virt
            .launcher(
                &f.vm,
                &f.vmi_uid,
                &f.target,
                Some((&f.migration, &f.uid)),
                node,
            )
            .await;
    }

    /// The VMI's `migrationState` for the flight, from node `source` to `target`.
    async fn record_state(&self, f: &Flight, source: &str, target: &str) {
        self.virt
            .migration_state(&f.vm, &f.uid, (&f.source, &f.target), (source, target))
            .await;
    }

    /// Steps the flight's migration through `phases`.
    async fn phases(&self, f: &Flight, phases: &[&str]) {
        for phase in phases {
            self.virt.phase(&f.migration, phase).await;
        }
    }

    fn dual(&self, source: &str, target: &str) -> Options {
        Options::from([
            (
                "requested-chassis".into(),
                format!("{},{}", self.chassis[source], self.chassis[target]),
            ),
            ("activation-strategy".into(), "rarp".into()),
        ])
    }

    fn pinned(&self, node: &str) -> Options {
        Options::from([("requested-chassis".into(), self.chassis[node].clone())])
    }

    /// Waits until the VM's port has exactly `want` as its options.
    async fn options_become(&self, vm: &str, want: &Options) {
        let port = format!("{vm}.{NS}");
        wait_for(&format!("{port} options {want:?}"), async || {
            (lsp_options(self.cluster, &port) == *want).then_some(())
        })
        .await;
    }

    /// Asserts the port keeps `want` for a while (nothing must change it).
    async fn options_stay(&self, vm: &str, want: &Options) {
        let port = format!("{vm}.{NS}");
        for _ in 0..15 {
            assert_eq!(lsp_options(self.cluster, &port), *want, "{port} options");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// OVN resolved the port's requested chassis to the chassis the nodes run.
    fn southbound_binds(&self, vm: &str, main: &str, additional: &[&str]) {
        let port = format!("{vm}.{NS}");
        let column = |name: &str| {
            sbctl(
                self.cluster,
                &[
                    "--bare",
                    &format!("--columns={name}"),
                    "find",
                    "Port_Binding",
                    &format!("logical_port={port}"),
                ],
            )
        };
        let names = |uuids: String| -> Vec<String> {
            uuids
                .split_whitespace()
                .map(|uuid| sbctl(self.cluster, &["get", "Chassis", uuid, "name"]))
                .map(|n| n.trim_matches('"').to_owned())
                .collect()
        };
        assert_eq!(
            names(column("requested_chassis")),
            vec![self.chassis[main].clone()]
        );
        let want: Vec<String> = additional
            .iter()
            .map(|n| self.chassis[*n].clone())
            .collect();
        assert_eq!(names(column("requested_additional_chassis")), want);
    }

    /// Every given launcher pod of `vm` carries the same IP and MAC, which are those of the one
    /// IP resource `<vm>.<ns>` and the one port of the VM; no pod has a port or IP resource of
    /// its own, and no IP is on two ports.
    async fn one_identity(&self, vm: &str, pods: &[&str]) {
        let port = format!("{vm}.{NS}");
        let mut seen = Vec::new();
        for name in pods {
            let p = self.virt.pods.get(name).await.unwrap();
            let ip = annotation(&p, "ip_address").expect("ip_address").to_owned();
            let mac = annotation(&p, "mac_address")
                .expect("mac_address")
                .to_owned();
            seen.push((ip, mac));
            let own = format!("{name}.{NS}");
            assert!(
                ip_resource(&self.client, &own).await.is_none(),
                "{own} IP resource"
            );
            assert_eq!(port_names(self.cluster, &format!("name={own}")), "");
        }
        seen.dedup();
        assert_eq!(seen.len(), 1, "{vm}'s pods {pods:?} carry {seen:?}");
        let (ip, mac) = &seen[0];
        let resource = ip_resource(&self.client, &port).await.expect("IP resource");
        assert_eq!(resource["spec"]["ipAddress"], json!(ip));
        assert_eq!(resource["spec"]["macAddress"], json!(mac));
        assert_eq!(
            port_names(self.cluster, &format!("external_ids:pod=\"{NS}/{vm}\"")),
            port,
            "one port for {vm}"
        );
        assert_eq!(
            nbctl(self.cluster, &["lsp-get-addresses", &port]),
            format!("{mac} {ip}")
        );
        let addresses = nb_addresses(self.cluster);
        assert_eq!(
            addresses.iter().filter(|a| *a == ip).count(),
            1,
            "{ip} on one port: {addresses:?}"
        );
    }

    /// The reasons of the Events on the VMI `vm`.
    /// Waits until the VM has an Event of each reason (an Event is recorded after the change it
    /// reports, so it may trail the Northbound state the test saw).
    async fn recorded(&self, vm: &str, reasons: &[&str]) {
        wait_for(&format!("{reasons:?} Events on {vm}"), async || {
            let seen: Vec<String> = events(&self.client, NS, vm)
                .await
                .into_iter()
                .map(|(_, reason, _)| reason)
                .collect();
            reasons
                .iter()
                .all(|r| seen.iter().any(|s| s == r))
                .then_some(())
        })
        .await
    }
}

/// Each node's chassis name from its Open_vSwitch database, once the node's portkeeper-daemon has
/// published it on the Node, where the controller reads it.
async fn published_chassis(cluster: &Cluster, client: &Client) -> BTreeMap<String, String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut chassis = BTreeMap::new();
    for node in cluster.nodes() {
        let name = node_chassis(cluster, node);
        assert_eq!(
            sbctl(cluster, &["get", "Chassis", &name, "name"]).trim_matches('"'),
            name
        );
        let published = wait_for(&format!("{node}'s chassis annotation"), async || {
            let current = nodes.get(node).await.ok()?;
            current.annotations().get(NODE_CHASSIS).cloned()
        })
        .await;
        assert_eq!(published, name, "{node}'s published chassis");
        chassis.insert(node.clone(), name);
    }
    chassis
}

async fn cases(cluster: &Cluster) {
    let bin = controller_binary();
    let crds = repo_root().join("yamls/crds.yaml");
    kubectl(cluster, &["apply", "-f", crds.to_str().unwrap()]);
    let client = cluster.client().await.unwrap();
    install_kubevirt(cluster, &client).await;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &object_ns())
        .await
        .unwrap();
    let kv = KubeVirt {
        cluster,
        chassis: published_chassis(cluster, &client).await,
        virt: VirtController::new(&client, NS),
        client: client.clone(),
    };
    let controller = Controller::start(&bin, cluster, CIDR, 0, &[]);
    full_migration(&kv).await;
    failed_migration(&kv).await;
    second_migration(&kv, late_target_pod(&kv).await).await;
    drop(restart_mid_migration(&kv, &bin, controller).await);
}

async fn full_migration(kv: &KubeVirt<'_>) {
    println!("case: a full migration node1 → node2");
    let f = kv.flight("vm-full").await;
    let vm = f.vm.as_str();
    kv.phases(&f, &["Scheduling"]).await;
    kv.add_target(&f, None).await;
    kv.options_stay(vm, &Options::new()).await;
    kv.virt.bind(&f.target, "node2").await;
    kv.options_become(vm, &kv.dual("node1", "node2")).await;
    kv.southbound_binds(vm, "node1", &["node2"]);
    for phase in ["Scheduled", "PreparingTarget", "TargetReady", "Running"] {
        kv.phases(&f, &[phase]).await;
        if phase == "Scheduled" {
            kv.record_state(&f, "node1", "node2").await;
        }
        kv.options_stay(vm, &kv.dual("node1", "node2")).await;
    }
    // A later reconcile of the target pod rewrites its port; the options must survive it.
    kv.virt
        .pods
        .patch(
            &f.target,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": {
                "ovn.kubernetes.io/allocated": null,
            }}})),
        )
        .await
        .unwrap();
    allocated(&kv.virt.pods, &f.target).await;
    kv.options_stay(vm, &kv.dual("node1", "node2")).await;
    kv.one_identity(vm, &[&f.source, &f.target]).await;
    kv.virt.finish(vm, &f.migration, true, "node2").await;
    kv.options_become(vm, &kv.pinned("node2")).await;
    kv.southbound_binds(vm, "node2", &[]);
    kv.recorded(vm, &["PortMigrating", "PortMigrated"]).await;
    // Once the source pod is gone nothing can contend: a VM started again anywhere binds.
    kv.virt.delete_pod(&f.source).await;
    kv.options_become(vm, &Options::new()).await;
    kv.one_identity(vm, &[&f.target]).await;
}

async fn failed_migration(kv: &KubeVirt<'_>) {
    println!("case: a failed migration rolls back to the source");
    let f = kv.flight("vm-fail").await;
    let vm = f.vm.as_str();
    kv.phases(&f, &["Scheduling"]).await;
    kv.add_target(&f, None).await;
    kv.virt.bind(&f.target, "node2").await;
    kv.options_become(vm, &kv.dual("node1", "node2")).await;
    kv.phases(&f, &["Scheduled"]).await;
    kv.record_state(&f, "node1", "node2").await;
    kv.phases(&f, &["PreparingTarget"]).await;
    kv.one_identity(vm, &[&f.source, &f.target]).await;
    kv.virt.finish(vm, &f.migration, false, "node1").await;
    kv.options_become(vm, &kv.pinned("node1")).await;
    kv.southbound_binds(vm, "node1", &[]);
    kv.recorded(vm, &["PortRolledBack"]).await;
    kv.virt.delete_pod(&f.target).await;
    kv.options_become(vm, &Options::new()).await;
    kv.one_identity(vm, &[&f.source]).await;
}

/// Leaves the VM on node2 with both launcher pods, for [`second_migration`].
async fn late_target_pod(kv: &KubeVirt<'_>) -> Flight {
    println!("case: the target pod appears only after PreparingTarget");
    let f = kv.flight("vm-late").await;
    let vm = f.vm.as_str();
    kv.phases(&f, &["Scheduling", "Scheduled", "PreparingTarget"])
        .await;
    kv.options_stay(vm, &Options::new()).await;
    kv.add_target(&f, Some("node2")).await;
    kv.options_become(vm, &kv.dual("node1", "node2")).await;
    kv.record_state(&f, "node1", "node2").await;
    kv.phases(&f, &["TargetReady", "Running"]).await;
    kv.virt.finish(vm, &f.migration, true, "node2").await;
    kv.options_become(vm, &kv.pinned("node2")).await;
    kv.one_identity(vm, &[&f.source, &f.target]).await;
    f
}

/// The VMI's `migrationState` still describes `first` (node1 → node2, completed) while the next
/// migration (node2 → node1) starts; the old source pod on node1 is deleted mid-way.
async fn second_migration(kv: &KubeVirt<'_>, first: Flight) {
    println!(
        "case: a second migration, an old launcher pod deleted meanwhile, stale migrationState"
    );
    let vm = first.vm.as_str();
    let uid = kv.virt.migrate(vm, "vm-late-back").await;
    let next = Flight {
        vm: vm.to_owned(),
        vmi_uid: first.vmi_uid.clone(),
        migration: "vm-late-back".into(),
        uid,
        source: first.target.clone(),
        target: format!("{vm}-c"),
    };
    kv.phases(&next, &["Scheduling"]).await;
    kv.add_target(&next, Some("node1")).await;
    kv.options_become(vm, &kv.dual("node2", "node1")).await;
    kv.virt.delete_pod(&first.source).await;
    kv.options_stay(vm, &kv.dual("node2", "node1")).await;
    kv.phases(&next, &["Scheduled"]).await;
    kv.record_state(&next, "node2", "node1").await;
    kv.phases(&next, &["Running"]).await;
    kv.options_stay(vm, &kv.dual("node2", "node1")).await;
    kv.virt.finish(vm, &next.migration, true, "node1").await;
    kv.options_become(vm, &kv.pinned("node1")).await;
    kv.one_identity(vm, &[&next.source, &next.target]).await;
}

/// Kills the controller before the target is bound and again before the migration succeeds;
/// each new generation starts on a migration that moved on while nothing watched it.
async fn restart_mid_migration(
    kv: &KubeVirt<'_>,
    bin: &Path,
    controller: Controller,
) -> Controller {
    println!("case: the controller is SIGKILLed mid-migration, twice");
    let f = kv.flight("vm-restart").await;
    let vm = f.vm.as_str();
    kv.phases(&f, &["Scheduling"]).await;
    kv.add_target(&f, None).await;
    controller.kill();
    kv.virt.bind(&f.target, "node2").await;
    kv.phases(&f, &["Scheduled"]).await;
    kv.record_state(&f, "node1", "node2").await;
    kv.phases(&f, &["Running"]).await;
    assert_eq!(
        lsp_options(kv.cluster, &format!("{vm}.{NS}")),
        Options::new()
    );
    let controller = Controller::start(bin, kv.cluster, CIDR, 1, &[]);
    kv.options_become(vm, &kv.dual("node1", "node2")).await;
    controller.kill();
    kv.virt.finish(vm, &f.migration, true, "node2").await;
    let controller = Controller::start(bin, kv.cluster, CIDR, 2, &[]);
    kv.options_become(vm, &kv.pinned("node2")).await;
    kv.one_identity(vm, &[&f.source, &f.target]).await;
    controller
}

fn object_ns() -> Namespace {
    serde_json::from_value(json!({ "metadata": { "name": NS } })).unwrap()
}
