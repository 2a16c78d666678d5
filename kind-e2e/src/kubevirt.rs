//! Playing KubeVirt's virt-controller and virt-handler on the local cluster, which has KubeVirt's
//! CRDs but not KubeVirt: VirtualMachineInstances, their launcher pods (bound to nodes as the
//! scheduler does), migrations stepped through their phases together with the VMI's
//! `status.migrationState`. The writes are the ones KubeVirt makes, so portkeeper sees what it
//! would see in a real cluster.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::portkeeper::{allocated, kubevirt_api, sleeping_container, wait_for};

/// The scheduler of launcher pods created without a node: one that does not exist, so they stay
/// unbound until [`VirtController::bind`] binds them.
pub const NO_SCHEDULER: &str = "portkeeper-e2e-manual";

/// virt-controller for the VMs of one namespace.
pub struct VirtController {
    namespace: String,
    pub vms: Api<DynamicObject>,
    pub vmis: Api<DynamicObject>,
    pub migrations: Api<DynamicObject>,
    pub pods: Api<Pod>,
}

impl VirtController {
    pub fn new(client: &Client, namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            vms: kubevirt_api(client, namespace, "VirtualMachine"),
            vmis: kubevirt_api(client, namespace, "VirtualMachineInstance"),
            migrations: kubevirt_api(client, namespace, "VirtualMachineInstanceMigration"),
            pods: Api::namespaced(client.clone(), namespace),
        }
    }

    /// Creates a VirtualMachine `vm` (`runStrategy: Always`, an empty template); returns its UID.
    pub async fn create_vm(&self, vm: &str) -> String {
        self.vms
            .create(
                &PostParams::default(),
                &object(json!({
                    "apiVersion": "kubevirt.io/v1",
                    "kind": "VirtualMachine",
                    "metadata": { "name": vm, "namespace": self.namespace },
                    "spec": { "runStrategy": "Always", "template": { "metadata": {}, "spec": {} } },
                })),
            )
            .await
            .expect("create VM")
            .uid()
            .expect("a VM has a UID")
    }

    /// A start of the existing VM `vm`: a VMI owned by it, carrying its template's annotations;
    /// returns the VMI's UID. With `placement` (launcher pod, node), the VMI runs on that node in
    /// that launcher pod (see [`Self::launcher`]).
    pub async fn start(&self, vm: &str, placement: Option<(&str, &str)>) -> String {
        let owner = self.vms.get(vm).await.expect("get VM");
        let annotations = owner.data["spec"]["template"]["metadata"]["annotations"].clone();
        let vmi = self
            .vmis
            .create(
                &PostParams::default(),
                &object(json!({
                    "apiVersion": "kubevirt.io/v1",
                    "kind": "VirtualMachineInstance",
                    "metadata": {
                        "name": vm,
                        "namespace": self.namespace,
                        "annotations": if annotations.is_null() { json!({}) } else { annotations },
                        "ownerReferences": [{
                            "apiVersion": "kubevirt.io/v1",
                            "kind": "VirtualMachine",
                            "name": vm,
                            "uid": owner.uid().expect("a VM has a UID"),
                            "controller": true,
                        }],
                    },
                    "spec": {},
                })),
            )
            .await
            .expect("create VMI");
        let vmi_uid = vmi.uid().expect("a VMI has a UID");
        if let Some((launcher, node)) = placement {
            self.vmi_status(vm, json!({ "phase": "Running", "nodeName": node }))
                .await;
            self.launcher(vm, &vmi_uid, launcher, None, Some(node))
                .await;
        }
        vmi_uid
    }

    /// Creates a launcher pod `name` of `vm`'s VMI `vmi_uid`, labelled and annotated as KubeVirt
    /// does (the VMI's annotations included), and waits until portkeeper allocated it. A
    /// migration's target when `migration` (name, UID) is given; bound to `node`, or left unbound
    /// for [`Self::bind`].
    pub async fn launcher(
        &self,
        vm: &str,
        vmi_uid: &str,
        name: &str,
        migration: Option<(&str, &str)>,
        node: Option<&str>,
    ) -> Pod {
        let mut labels = json!({
            "kubevirt.io": "virt-launcher",
            "vm.kubevirt.io/name": vm,
            "kubevirt.io/created-by": vmi_uid,
        });
        let vmi = self.vmis.get(vm).await.expect("get VMI");
        let mut annotations = json!(vmi.annotations());
        annotations["kubevirt.io/domain"] = json!(vm);
        if let Some((job, uid)) = migration {
            labels["kubevirt.io/migrationJobUID"] = json!(uid);
            annotations["kubevirt.io/migrationJobName"] = json!(job);
        }
        let mut spec = json!({
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "schedulerName": NO_SCHEDULER,
            // virt-launcher's stand-in: the pod's network is the VM's, its process only keeps it up.
            "containers": [sleeping_container("compute")],
        });
        if let Some(node) = node {
            spec["nodeName"] = json!(node);
        }
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
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
        .expect("a launcher pod");
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .expect("create launcher pod");
        allocated(&self.pods, name).await
    }

    /// Binds a pod to a node as the scheduler does (`pods/<name>/binding`).
    pub async fn bind(&self, pod: &str, node: &str) {
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": { "name": pod, "namespace": self.namespace },
            "target": { "apiVersion": "v1", "kind": "Node", "name": node },
        });
        self.pods
            .create_subresource::<Value, Value>("binding", pod, &PostParams::default(), &binding)
            .await
            .expect("bind pod");
    }

    /// Deletes a launcher pod at once and waits until it is gone.
    pub async fn delete_pod(&self, name: &str) {
        self.pods
            .delete(name, &DeleteParams::default().grace_period(0))
            .await
            .expect("delete pod");
        wait_for(&format!("{name} gone"), async || {
            self.pods.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
    }

    /// A stop: the launcher pod and the VMI go, the VM stays.
    pub async fn stop(&self, vm: &str, launcher: &str) {
        self.delete_pod(launcher).await;
        self.vmis
            .delete(vm, &DeleteParams::default())
            .await
            .expect("delete VMI");
        wait_for(&format!("VMI {vm} gone"), async || {
            self.vmis.get_opt(vm).await.ok()?.is_none().then_some(())
        })
        .await;
    }

    /// Creates a VMIM `name` for `vm`; returns its UID.
    pub async fn migrate(&self, vm: &str, name: &str) -> String {
        self.migrations
            .create(
                &PostParams::default(),
                &object(json!({
                    "apiVersion": "kubevirt.io/v1",
                    "kind": "VirtualMachineInstanceMigration",
                    "metadata": {
                        "name": name,
                        "namespace": self.namespace,
                        "labels": { "kubevirt.io/vmi-name": vm },
                    },
                    "spec": { "vmiName": vm },
                })),
            )
            .await
            .expect("create VMIM")
            .uid()
            .expect("a VMIM has a UID")
    }

    /// Moves a VMIM to `phase`, as virt-controller does.
    pub async fn phase(&self, migration: &str, phase: &str) {
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
    pub async fn vmi_status(&self, vm: &str, status: Value) {
        self.vmis
            .patch_status(
                vm,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .expect("patch VMI status");
    }

    /// The VMI's `migrationState` for migration `uid` between launcher pods `pods` (source,
    /// target) on `nodes` (source, target).
    pub async fn migration_state(
        &self,
        vm: &str,
        uid: &str,
        pods: (&str, &str),
        nodes: (&str, &str),
    ) {
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

    /// Ends a migration as KubeVirt does: the VMI's state first (running on `node`), then the
    /// VMIM's phase.
    pub async fn finish(&self, vm: &str, migration: &str, succeeded: bool, node: &str) {
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
}

fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).expect("a KubeVirt object")
}
