//! KubeVirt live migration on a two-node local cluster. The test plays virt-controller and
//! virt-handler: it writes VirtualMachines, VMIs and their launcher pods (binding them to nodes
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

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kind_e2e::Cluster;
use kind_e2e::portkeeper::{
    Controller, allocated, annotation, controller_binary, events, install_kubevirt, ip_resource,
    kubectl, kubevirt_api, lsp_options, nb_addresses, nbctl, node_chassis, port_names, repo_root,
    run_on_cluster, sbctl, wait_for,
};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const NS: &str = "migrate";
const CIDR: &str = "10.17.0.0/16";
/// A scheduler that does not exist: target pods stay unbound until the test binds them.
const NO_SCHEDULER: &str = "portkeeper-e2e-manual";
/// The annotation portkeeper's node daemon writes; the test writes it when no daemon runs.
const CHASSIS_ANNOTATION: &str = "ovn.kubernetes.io/chassis";

#[test]
fn live_migration() {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_node-agent"));
    run_on_cluster(2, agent, 3, cases);
}

/// The KubeVirt side of the test, and the chassis each node maps to.
struct KubeVirt<'a> {
    cluster: &'a Cluster,
    client: Client,
    vms: Api<DynamicObject>,
    vmis: Api<DynamicObject>,
    migrations: Api<DynamicObject>,
    pods: Api<Pod>,
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
        let vmi_uid = self.start_vm(vm).await;
        let migration = format!("{vm}-mig");
        let uid = self.migrate(vm, &migration).await;
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
        self.launcher(
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
        self.migration_state(&f.vm, &f.uid, (&f.source, &f.target), (source, target))
            .await;
    }

    /// Steps the flight's migration through `phases`.
    async fn phases(&self, f: &Flight, phases: &[&str]) {
        for phase in phases {
            self.phase(&f.migration, phase).await;
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

    /// A VM running on node1: VM, VMI (status Running on node1) and its launcher pod, allocated.
    async fn start_vm(&self, vm: &str) -> String {
        let created = self
            .vms
            .create(
                &PostParams::default(),
                &object(json!({
                    "apiVersion": "kubevirt.io/v1",
                    "kind": "VirtualMachine",
                    "metadata": { "name": vm, "namespace": NS },
                    "spec": { "runStrategy": "Always" },
                })),
            )
            .await
            .expect("create VM");
        let vmi = self
            .vmis
            .create(
                &PostParams::default(),
                &object(json!({
                    "apiVersion": "kubevirt.io/v1",
                    "kind": "VirtualMachineInstance",
                    "metadata": {
                        "name": vm,
                        "namespace": NS,
                        "ownerReferences": [{
                            "apiVersion": "kubevirt.io/v1",
                            "kind": "VirtualMachine",
                            "name": vm,
                            "uid": created.uid().unwrap(),
                            "controller": true,
                        }],
                    },
                    "spec": {},
                })),
            )
            .await
            .expect("create VMI");
        let vmi_uid = vmi.uid().unwrap();
        self.vmi_status(vm, json!({ "phase": "Running", "nodeName": "node1" }))
            .await;
        self.launcher(vm, &vmi_uid, &format!("{vm}-a"), None, Some("node1"))
            .await;
        vmi_uid
    }

    /// Creates a launcher pod of `vm`: a migration's target when `migration` (name, UID) is
    /// given, bound to `node` or left for [`Self::bind`].
    async fn launcher(
        &self,
        vm: &str,
        vmi_uid: &str,
        name: &str,
        migration: Option<(&str, &str)>,
        node: Option<&str>,
    ) {
        let mut labels = json!({
            "kubevirt.io": "virt-launcher",
            "vm.kubevirt.io/name": vm,
            "kubevirt.io/created-by": vmi_uid,
        });
        let mut annotations = json!({ "kubevirt.io/domain": vm });
        if let Some((job, uid)) = migration {
            labels["kubevirt.io/migrationJobUID"] = json!(uid);
            annotations["kubevirt.io/migrationJobName"] = json!(job);
        }
        let mut spec = json!({
            "automountServiceAccountToken": false,
            "schedulerName": NO_SCHEDULER,
            "containers": [{ "name": "compute", "image": "busybox" }],
        });
        if let Some(node) = node {
            spec["nodeName"] = json!(node);
        }
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [{
                    "apiVersion": "kubevirt.io/v1",
                    "kind": "VirtualMachineInstance",
                    "name": vm,
                    "uid": vmi_uid,
                    "controller": true,
                }],
            },
            "spec": spec,
        }))
        .unwrap();
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .expect("create launcher pod");
        allocated(&self.pods, name).await;
    }

    /// Binds a pod to a node as the scheduler does (`pods/<name>/binding`).
    async fn bind(&self, pod: &str, node: &str) {
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": { "name": pod, "namespace": NS },
            "target": { "apiVersion": "v1", "kind": "Node", "name": node },
        });
        self.pods
            .create_subresource::<Value, Value>("binding", pod, &PostParams::default(), &binding)
            .await
            .expect("bind pod");
    }

    /// Deletes a launcher pod at once and waits until it is gone.
    async fn delete_pod(&self, name: &str) {
        self.pods
            .delete(name, &DeleteParams::default().grace_period(0))
            .await
            .expect("delete pod");
        wait_for(&format!("{name} gone"), async || {
            self.pods.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
    }

    /// Creates a VMIM for `vm`; returns its UID.
    async fn migrate(&self, vm: &str, name: &str) -> String {
        let created = self
            .migrations
            .create(
                &PostParams::default(),
                &object(json!({
                    "apiVersion": "kubevirt.io/v1",
                    "kind": "VirtualMachineInstanceMigration",
                    "metadata": {
                        "name": name,
                        "namespace": NS,
                        "labels": { "kubevirt.io/vmi-name": vm },
                    },
                    "spec": { "vmiName": vm },
                })),
            )
            .await
            .expect("create VMIM");
        created.uid().unwrap()
    }

    /// Moves a VMIM to `phase`, as virt-controller does.
    async fn phase(&self, migration: &str, phase: &str) {
        self.migrations
            .patch_status(
                migration,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "phase": phase } })),
            )
            .await
            .expect("patch VMIM status");
    }

    /// Merges `status` into the VMI's status, as virt-handler and virt-controller do.
    async fn vmi_status(&self, vm: &str, status: Value) {
        self.vmis
            .patch_status(
                vm,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .expect("patch VMI status");
    }

    /// The VMI's `migrationState` for a migration from node `source` to `target`.
    async fn migration_state(&self, vm: &str, uid: &str, pods: (&str, &str), nodes: (&str, &str)) {
        self.vmi_status(
            vm,
            json!({ "migrationState": {
                "migrationUid": uid,
                "sourcePod": pods.0,
                "targetPod": pods.1,
                "sourceNode": nodes.0,
                "targetNode": nodes.1,
                "completed": false,
                "failed": false,
            }}),
        )
        .await;
    }

    /// Ends a migration as KubeVirt does: the VMI's state first, then the VMIM's phase.
    async fn finish(&self, vm: &str, migration: &str, succeeded: bool, node: &str) {
        self.vmi_status(
            vm,
            json!({
                "nodeName": node,
                "migrationState": { "completed": true, "failed": !succeeded },
            }),
        )
        .await;
        self.phase(migration, if succeeded { "Succeeded" } else { "Failed" })
            .await;
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
            let p = self.pods.get(name).await.unwrap();
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
    async fn reasons(&self, vm: &str) -> Vec<String> {
        events(&self.client, NS, vm)
            .await
            .into_iter()
            .map(|(_, reason, _)| reason)
            .collect()
    }
}

fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}

/// Each node's chassis name from its Open_vSwitch database, published on the Node as the node
/// daemon would (unless a daemon already did).
async fn publish_chassis(cluster: &Cluster, client: &Client) -> BTreeMap<String, String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut chassis = BTreeMap::new();
    for node in cluster.nodes() {
        let name = node_chassis(cluster, node);
        assert_eq!(
            sbctl(cluster, &["get", "Chassis", &name, "name"]).trim_matches('"'),
            name
        );
        let current = nodes.get(node).await.unwrap();
        match current.annotations().get(CHASSIS_ANNOTATION) {
            Some(published) => assert_eq!(*published, name, "{node}'s published chassis"),
            None => {
                nodes
                    .patch(
                        node,
                        &PatchParams::default(),
                        &Patch::Merge(
                            json!({ "metadata": { "annotations": { CHASSIS_ANNOTATION: name } } }),
                        ),
                    )
                    .await
                    .unwrap();
            }
        }
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
        chassis: publish_chassis(cluster, &client).await,
        vms: kubevirt_api(&client, NS, "VirtualMachine"),
        vmis: kubevirt_api(&client, NS, "VirtualMachineInstance"),
        migrations: kubevirt_api(&client, NS, "VirtualMachineInstanceMigration"),
        pods: Api::namespaced(client.clone(), NS),
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
    kv.bind(&f.target, "node2").await;
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
    kv.pods
        .patch(
            &f.target,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": {
                "ovn.kubernetes.io/allocated": null,
            }}})),
        )
        .await
        .unwrap();
    allocated(&kv.pods, &f.target).await;
    kv.options_stay(vm, &kv.dual("node1", "node2")).await;
    kv.one_identity(vm, &[&f.source, &f.target]).await;
    kv.finish(vm, &f.migration, true, "node2").await;
    kv.options_become(vm, &kv.pinned("node2")).await;
    kv.southbound_binds(vm, "node2", &[]);
    let reasons = kv.reasons(vm).await;
    for reason in ["PortMigrating", "PortMigrated"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} in {reasons:?}"
        );
    }
    // Once the source pod is gone nothing can contend: a VM started again anywhere binds.
    kv.delete_pod(&f.source).await;
    kv.options_become(vm, &Options::new()).await;
    kv.one_identity(vm, &[&f.target]).await;
}

async fn failed_migration(kv: &KubeVirt<'_>) {
    println!("case: a failed migration rolls back to the source");
    let f = kv.flight("vm-fail").await;
    let vm = f.vm.as_str();
    kv.phases(&f, &["Scheduling"]).await;
    kv.add_target(&f, None).await;
    kv.bind(&f.target, "node2").await;
    kv.options_become(vm, &kv.dual("node1", "node2")).await;
    kv.phases(&f, &["Scheduled"]).await;
    kv.record_state(&f, "node1", "node2").await;
    kv.phases(&f, &["PreparingTarget"]).await;
    kv.one_identity(vm, &[&f.source, &f.target]).await;
    kv.finish(vm, &f.migration, false, "node1").await;
    kv.options_become(vm, &kv.pinned("node1")).await;
    kv.southbound_binds(vm, "node1", &[]);
    assert!(kv.reasons(vm).await.iter().any(|r| r == "PortRolledBack"));
    kv.delete_pod(&f.target).await;
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
    kv.finish(vm, &f.migration, true, "node2").await;
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
    let uid = kv.migrate(vm, "vm-late-back").await;
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
    kv.delete_pod(&first.source).await;
    kv.options_stay(vm, &kv.dual("node2", "node1")).await;
    kv.phases(&next, &["Scheduled"]).await;
    kv.record_state(&next, "node2", "node1").await;
    kv.phases(&next, &["Running"]).await;
    kv.options_stay(vm, &kv.dual("node2", "node1")).await;
    kv.finish(vm, &next.migration, true, "node1").await;
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
    kv.bind(&f.target, "node2").await;
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
    kv.finish(vm, &f.migration, true, "node2").await;
    let controller = Controller::start(bin, kv.cluster, CIDR, 2, &[]);
    kv.options_become(vm, &kv.pinned("node2")).await;
    kv.one_identity(vm, &[&f.source, &f.target]).await;
    controller
}

fn object_ns() -> Namespace {
    serde_json::from_value(json!({ "metadata": { "name": NS } })).unwrap()
}
