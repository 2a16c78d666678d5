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
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kind_e2e::portkeeper::{
    Controller, annotation, controller_binary, events, ip_resource, kubectl, kubevirt_api,
    kubevirt_crds, lsp_options, nb_addresses, nbctl, node_chassis, print_controller_logs,
    repo_root, wait_for,
};
use kind_e2e::{Cluster, ClusterOptions};
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
    let cluster = Cluster::up(ClusterOptions {
        nodes: 2,
        node_agent: Some(PathBuf::from(env!("CARGO_BIN_EXE_node-agent"))),
        ..Default::default()
    })
    .expect("local cluster up");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(cases(&cluster))
    }));
    drop(runtime);
    if result.is_err() {
        print_controller_logs(&cluster, 3);
    }
    cluster.down().expect("cluster down");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
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

impl KubeVirt<'_> {
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
            .create_subresource::<Value, Value>(
                "binding",
                pod,
                &PostParams::default(),
                &binding,
            )
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
            assert_eq!(find_ports(self.cluster, &format!("name={own}")), "");
        }
        seen.dedup();
        assert_eq!(seen.len(), 1, "{vm}'s pods {pods:?} carry {seen:?}");
        let (ip, mac) = &seen[0];
        let resource = ip_resource(&self.client, &port).await.expect("IP resource");
        assert_eq!(resource["spec"]["ipAddress"], json!(ip));
        assert_eq!(resource["spec"]["macAddress"], json!(mac));
        assert_eq!(
            find_ports(self.cluster, &format!("external_ids:pod=\"{NS}/{vm}\"")),
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

async fn allocated(pods: &Api<Pod>, name: &str) -> Pod {
    wait_for(&format!("{name} allocated"), async || {
        let p = pods.get(name).await.ok()?;
        (annotation(&p, "allocated") == Some("true")).then_some(p)
    })
    .await
}

fn find_ports(cluster: &Cluster, condition: &str) -> String {
    nbctl(
        cluster,
        &[
            "--bare",
            "--columns=name",
            "find",
            "Logical_Switch_Port",
            condition,
        ],
    )
}

fn sbctl(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster.ovn_sbctl(args).expect("run ovn-sbctl");
    assert!(
        out.status.success(),
        "ovn-sbctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
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
    kubectl(cluster, &["apply", "-f", kubevirt_crds().to_str().unwrap()]);
    let client = cluster.client().await.unwrap();
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
    let none = Options::new();
    let mut controller = Controller::start(&bin, cluster, CIDR, 0, &[]);

    println!("case: a full migration node1 → node2");
    let vm = "vm-full";
    let vmi = kv.start_vm(vm).await;
    let (source, target) = (format!("{vm}-a"), format!("{vm}-b"));
    let uid = kv.migrate(vm, "mig-full").await;
    kv.phase("mig-full", "Scheduling").await;
    kv.launcher(vm, &vmi, &target, Some(("mig-full", &uid)), None)
        .await;
    kv.options_stay(vm, &none).await;
    kv.bind(&target, "node2").await;
    kv.options_become(vm, &kv.dual("node1", "node2")).await;
    kv.southbound_binds(vm, "node1", &["node2"]);
    for phase in ["Scheduled", "PreparingTarget", "TargetReady", "Running"] {
        kv.phase("mig-full", phase).await;
        if phase == "Scheduled" {
            kv.migration_state(vm, &uid, (&source, &target), ("node1", "node2"))
                .await;
        }
        kv.options_stay(vm, &kv.dual("node1", "node2")).await;
    }
    // A later reconcile of the target pod rewrites its port; the options must survive it.
    kv.pods
        .patch(
            &target,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": {
                "ovn.kubernetes.io/allocated": null,
            }}})),
        )
        .await
        .unwrap();
    allocated(&kv.pods, &target).await;
    kv.options_stay(vm, &kv.dual("node1", "node2")).await;
    kv.one_identity(vm, &[&source, &target]).await;
    kv.finish(vm, "mig-full", true, "node2").await;
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
    kv.delete_pod(&source).await;
    kv.options_become(vm, &none).await;
    kv.one_identity(vm, &[&target]).await;

    println!("case: a failed migration rolls back to the source");
    let vm = "vm-fail";
    let vmi = kv.start_vm(vm).await;
    let (source, target) = (format!("{vm}-a"), format!("{vm}-b"));
    let uid = kv.migrate(vm, "mig-fail").await;
    kv.phase("mig-fail", "Scheduling").await;
    kv.launcher(vm, &vmi, &target, Some(("mig-fail", &uid)), None)
        .await;
    kv.bind(&target, "node2").await;
    kv.options_become(vm, &kv.dual("node1", "node2")).await;
    kv.phase("mig-fail", "Scheduled").await;
    kv.migration_state(vm, &uid, (&source, &target), ("node1", "node2"))
        .await;
    kv.phase("mig-fail", "PreparingTarget").await;
    kv.one_identity(vm, &[&source, &target]).await;
    kv.finish(vm, "mig-fail", false, "node1").await;
    kv.options_become(vm, &kv.pinned("node1")).await;
    kv.southbound_binds(vm, "node1", &[]);
    assert!(kv.reasons(vm).await.iter().any(|r| r == "PortRolledBack"));
    kv.delete_pod(&target).await;
    kv.options_become(vm, &none).await;
    kv.one_identity(vm, &[&source]).await;

    println!("case: the target pod appears only after PreparingTarget");
    let vm = "vm-late";
    let vmi = kv.start_vm(vm).await;
    let (source, target) = (format!("{vm}-a"), format!("{vm}-b"));
    let uid = kv.migrate(vm, "mig-late").await;
    for phase in ["Scheduling", "Scheduled", "PreparingTarget"] {
        kv.phase("mig-late", phase).await;
    }
    kv.options_stay(vm, &none).await;
    kv.launcher(vm, &vmi, &target, Some(("mig-late", &uid)), Some("node2"))
        .await;
    kv.options_become(vm, &kv.dual("node1", "node2")).await;
    kv.migration_state(vm, &uid, (&source, &target), ("node1", "node2"))
        .await;
    for phase in ["TargetReady", "Running"] {
        kv.phase("mig-late", phase).await;
    }
    kv.finish(vm, "mig-late", true, "node2").await;
    kv.options_become(vm, &kv.pinned("node2")).await;
    kv.one_identity(vm, &[&source, &target]).await;

    println!(
        "case: a second migration, an old launcher pod deleted meanwhile, stale migrationState"
    );
    // The VMI's migrationState still describes mig-late (node1 → node2, completed) while
    // mig-back (node2 → node1) starts; the old source pod on node1 is deleted mid-way.
    let back = format!("{vm}-c");
    let uid = kv.migrate(vm, "mig-back").await;
    kv.phase("mig-back", "Scheduling").await;
    kv.launcher(vm, &vmi, &back, Some(("mig-back", &uid)), Some("node1"))
        .await;
    kv.options_become(vm, &kv.dual("node2", "node1")).await;
    kv.delete_pod(&source).await;
    kv.options_stay(vm, &kv.dual("node2", "node1")).await;
    kv.phase("mig-back", "Scheduled").await;
    kv.migration_state(vm, &uid, (&target, &back), ("node2", "node1"))
        .await;
    kv.phase("mig-back", "Running").await;
    kv.options_stay(vm, &kv.dual("node2", "node1")).await;
    kv.finish(vm, "mig-back", true, "node1").await;
    kv.options_become(vm, &kv.pinned("node1")).await;
    kv.one_identity(vm, &[&target, &back]).await;

    println!("case: the controller is SIGKILLed mid-migration, twice");
    let vm = "vm-restart";
    let vmi = kv.start_vm(vm).await;
    let (source, target) = (format!("{vm}-a"), format!("{vm}-b"));
    let uid = kv.migrate(vm, "mig-restart").await;
    kv.phase("mig-restart", "Scheduling").await;
    kv.launcher(vm, &vmi, &target, Some(("mig-restart", &uid)), None)
        .await;
    controller.kill();
    // While it is down the target is bound and the migration runs.
    kv.bind(&target, "node2").await;
    kv.phase("mig-restart", "Scheduled").await;
    kv.migration_state(vm, &uid, (&source, &target), ("node1", "node2"))
        .await;
    kv.phase("mig-restart", "Running").await;
    assert_eq!(lsp_options(cluster, &format!("{vm}.{NS}")), none);
    controller = Controller::start(&bin, cluster, CIDR, 1, &[]);
    kv.options_become(vm, &kv.dual("node1", "node2")).await;
    controller.kill();
    // And while it is down again the migration succeeds.
    kv.finish(vm, "mig-restart", true, "node2").await;
    controller = Controller::start(&bin, cluster, CIDR, 2, &[]);
    kv.options_become(vm, &kv.pinned("node2")).await;
    kv.one_identity(vm, &[&source, &target]).await;
    drop(controller);
}

fn object_ns() -> Namespace {
    serde_json::from_value(json!({ "metadata": { "name": NS } })).unwrap()
}
