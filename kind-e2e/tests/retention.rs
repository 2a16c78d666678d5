//! Network identity that survives recreation, on the local cluster: StatefulSet pods and
//! KubeVirt VMs keep their port, IP resource and addresses across pod deletion, scale changes and
//! VM stop/start, and release them when their workload no longer needs them. The test plays
//! virt-controller: it creates VirtualMachine and VirtualMachineInstance objects and the launcher
//! pods KubeVirt would. Each case is verified through the pod's annotations, the IP resource and
//! `ovn-nbctl`. One cluster and one controller serve all cases, in order.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kind_e2e::Cluster;
use kind_e2e::kubevirt::VirtController;
use kind_e2e::pods::SANDBOX_FAILURE_REASON;
use kind_e2e::portkeeper::{
    Controller, annotation, controller_binary, controller_log, events, install_kubevirt,
    ip_resource, kubectl, kubectl_apply, kubevirt_api, nb_addresses, nbctl, prepare_cluster,
    run_on_cluster, wait_for, warnings,
};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const NS: &str = "keep";
/// The cluster's one node.
const NODE: &str = "node1";
const CIDR: &str = "10.16.0.0/16";
const CONTROLLER_ARGS: &[&str] = &["--retention-interval", "2"];

/// One nic as OVN and its IP resource show it; the two must agree.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Nic {
    ip: String,
    mac: String,
    subnet: String,
}

/// Reads nic `name` (`<pod-or-vm>.keep`) from its IP resource and checks the port against it:
/// `lsp-get-addresses` and the port's `ls` in `list logical_switch_port`.
async fn nic(cluster: &Cluster, client: &Client, name: &str) -> Nic {
    let resource = ip_resource(client, name)
        .await
        .unwrap_or_else(|| panic!("IP resource {name}"));
    let spec = &resource["spec"];
    let nic = Nic {
        ip: spec["ipAddress"].as_str().unwrap().to_owned(),
        mac: spec["macAddress"].as_str().unwrap().to_owned(),
        subnet: spec["subnet"].as_str().unwrap().to_owned(),
    };
    assert_eq!(
        nbctl(cluster, &["lsp-get-addresses", name]),
        format!("{} {}", nic.mac, nic.ip),
        "{name}: port and IP resource disagree"
    );
    let listed = nbctl(
        cluster,
        &[
            "--columns=external_ids",
            "list",
            "logical_switch_port",
            name,
        ],
    );
    assert!(
        listed.contains(&format!("ls={}", nic.subnet)),
        "{name}: {listed} lacks ls={}",
        nic.subnet
    );
    nic
}

/// The pod's annotations must show `nic`.
fn annotated(p: &Pod, nic: &Nic) {
    assert_eq!(annotation(p, "allocated"), Some("true"), "{}", p.name_any());
    assert_eq!(annotation(p, "ip_address"), Some(nic.ip.as_str()));
    assert_eq!(annotation(p, "mac_address"), Some(nic.mac.as_str()));
    assert_eq!(annotation(p, "logical_switch"), Some(nic.subnet.as_str()));
}

fn port_exists(cluster: &Cluster, name: &str) -> bool {
    !nbctl(
        cluster,
        &[
            "--bare",
            "--columns=name",
            "find",
            "Logical_Switch_Port",
            &format!("name={name}"),
        ],
    )
    .is_empty()
}

/// Waits until nic `name` has neither an IP resource nor a port.
async fn released(cluster: &Cluster, client: &Client, name: &str) {
    wait_for(&format!("{name} released"), async || {
        (ip_resource(client, name).await.is_none() && !port_exists(cluster, name)).then_some(())
    })
    .await
}

/// Waits until nic `name` is released and a `NetworkIdentityReleased` Event about one of
/// `objects` says why (its message names `why`).
async fn released_because(
    cluster: &Cluster,
    client: &Client,
    name: &str,
    objects: &[&str],
    why: &str,
) {
    released(cluster, client, name).await;
    identity_event(client, objects, "NetworkIdentityReleased", why).await;
}

/// Waits for a Normal Event `reason` about one of `objects` whose message names `needle`.
async fn identity_event(client: &Client, objects: &[&str], reason: &str, needle: &str) -> String {
    wait_for(
        &format!("{reason} event naming {needle} on {objects:?}"),
        async || {
            for object in objects {
                let found = events(client, NS, object)
                    .await
                    .into_iter()
                    .find(|(_, r, m)| r == reason && m.contains(needle));
                if let Some((_, _, message)) = found {
                    return Some(message);
                }
            }
            None
        },
    )
    .await
}

/// Waits for pod `name` (a new incarnation when `not_uid` is given) to be allocated.
async fn allocated_fresh(pods: &Api<Pod>, name: &str, not_uid: Option<&str>) -> Pod {
    wait_for(&format!("{name} allocated"), async || {
        let p = pods.get_opt(name).await.ok()??;
        let fresh = not_uid.is_none_or(|u| p.uid().as_deref() != Some(u));
        (fresh
            && p.metadata.deletion_timestamp.is_none()
            && annotation(&p, "allocated") == Some("true"))
        .then_some(p)
    })
    .await
}

async fn delete_pod(pods: &Api<Pod>, name: &str) {
    pods.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

/// Creates a StatefulSet whose pods are only replaced when deleted (`OnDelete`), so a template
/// change reaches a pod exactly when the test recreates it. `spec` is merged into its spec.
async fn statefulset(
    sets: &Api<StatefulSet>,
    name: &str,
    replicas: u32,
    pool: Option<&str>,
    spec: Value,
) {
    let annotations = pool.map_or(json!({}), |p| json!({ "ovn.kubernetes.io/ip_pool": p }));
    let mut set = json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": { "name": name, "namespace": NS },
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "updateStrategy": { "type": "OnDelete" },
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name }, "annotations": annotations },
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{ "name": "c", "image": "busybox" }],
                },
            },
        },
    });
    if let (Some(into), Some(extra)) = (set["spec"].as_object_mut(), spec.as_object()) {
        into.extend(extra.clone());
    }
    sets.create(
        &PostParams::default(),
        &serde_json::from_value(set).unwrap(),
    )
    .await
    .unwrap();
}

async fn scale(sets: &Api<StatefulSet>, name: &str, replicas: u32) {
    sets.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
    )
    .await
    .unwrap();
}

/// Pods `<set>-<ordinal>` for `ordinals`, all allocated.
async fn members(pods: &Api<Pod>, set: &str, ordinals: impl Iterator<Item = u64>) -> Vec<Pod> {
    let mut out = Vec::new();
    for ordinal in ordinals {
        out.push(allocated_fresh(pods, &format!("{set}-{ordinal}"), None).await);
    }
    out
}

/// One VM, whose VMIs and launcher pods the test makes as virt-controller does.
struct Vm<'a> {
    name: &'static str,
    virt: &'a VirtController,
}

impl<'a> Vm<'a> {
    async fn create(virt: &'a VirtController, name: &'static str) -> Self {
        virt.create_vm(name).await;
        Vm { name, virt }
    }

    /// A launcher pod `virt-launcher-<vm>-<suffix>` of the VMI `vmi_uid` on the node; returns its
    /// name once it is allocated.
    async fn launcher(&self, vmi_uid: &str, suffix: &str) -> String {
        let name = format!("virt-launcher-{}-{suffix}", self.name);
        self.virt
            .launcher(self.name, vmi_uid, &name, None, Some(NODE))
            .await;
        name
    }

    /// A stop: the launcher pod and the VMI go, the VM stays.
    async fn stop(&self, launcher: &str) {
        self.virt.stop(self.name, launcher).await;
    }

    fn nic(&self) -> String {
        format!("{}.{NS}", self.name)
    }
}

/// Starts `vm` with one launcher pod and waits for it to be allocated and routed; returns the pod
/// and the VMI's UID.
async fn run_vm(vm: &Vm<'_>, suffix: &str) -> (Pod, String) {
    let vmi = vm.virt.start(vm.name, None).await;
    let launcher = vm.launcher(&vmi, suffix).await;
    let pods = &vm.virt.pods;
    allocated_fresh(pods, &launcher, None).await;
    // A pod may be allocated before it is wired; `routed` follows once it is on a node.
    let p = wait_for(&format!("{launcher} routed"), async || {
        let p = pods.get(&launcher).await.ok()?;
        (annotation(&p, "routed") == Some("true")).then_some(p)
    })
    .await;
    assert_eq!(annotation(&p, "virtualmachine"), Some(vm.name));
    (p, vmi)
}

#[test]
fn retention() {
    run_on_cluster(1, PathBuf::from(env!("CARGO_BIN_EXE_node-agent")), 2, cases);
}

/// Returns the running controller, so the final consistency check sees its last writes.
async fn cases(cluster: &Cluster) -> Controller {
    let bin = controller_binary();
    // KubeVirt comes after the controller, as when it is installed on a running cluster.
    let client = prepare_cluster(cluster, NS, false).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let mut controller = Controller::start(&bin, cluster, CIDR, 0, CONTROLLER_ARGS);

    statefulset_cases(cluster, &client, &pods, &sets).await;

    println!("case: a StatefulSet deleted while the controller is down is released at start");
    statefulset(&sets, "gone", 2, None, json!({})).await;
    members(&pods, "gone", 0..2).await;
    let db0 = nic(cluster, &client, "db-0.keep").await;
    controller.kill();
    sets.delete("gone", &DeleteParams::default()).await.unwrap();
    wait_for("the pods of gone deleted", async || {
        let left = pods
            .list(&kube::api::ListParams::default().labels("app=gone"))
            .await
            .ok()?;
        left.items.is_empty().then_some(())
    })
    .await;
    assert!(ip_resource(&client, "gone-0.keep").await.is_some());
    controller = Controller::start(&bin, cluster, CIDR, 1, CONTROLLER_ARGS);
    released(cluster, &client, "gone-0.keep").await;
    released_because(cluster, &client, "gone-1.keep", &["gone"], "is gone").await;
    assert_eq!(
        nic(cluster, &client, "db-0.keep").await,
        db0,
        "a live StatefulSet keeps its identity across the restart"
    );

    println!("case: KubeVirt installed while the controller runs turns VM retention on");
    install_kubevirt(cluster, &client).await;
    wait_for("the controller watching VirtualMachines", async || {
        std::fs::read_to_string(controller_log(cluster, 1))
            .ok()?
            .contains("VM retention is on")
            .then_some(())
    })
    .await;
    vm_cases(cluster, &client, &pods).await;

    let all = nb_addresses(cluster);
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        all.len(),
        unique.len(),
        "an address held twice in NB: {all:?}"
    );
    controller
}

async fn statefulset_cases(
    cluster: &Cluster,
    client: &Client,
    pods: &Api<Pod>,
    sets: &Api<StatefulSet>,
) {
    println!("case (§8.2): a StatefulSet pod deleted comes back with the same address and MAC");
    statefulset(sets, "web", 3, None, json!({})).await;
    let web = members(pods, "web", 0..3).await;
    let before = nic(cluster, client, "web-2.keep").await;
    annotated(&web[2], &before);
    let web0 = nic(cluster, client, "web-0.keep").await;
    delete_pod(pods, "web-2").await;
    let again = allocated_fresh(pods, "web-2", web[2].uid().as_deref()).await;
    annotated(&again, &before);
    assert_eq!(nic(cluster, client, "web-2.keep").await, before);
    identity_event(
        client,
        &["web", "web-2"],
        "NetworkIdentityKept",
        "web-2.keep",
    )
    .await;

    println!("case (§8.2): scale 3 → 1 releases ordinals 1 and 2; scale back to 3");
    scale(sets, "web", 1).await;
    released(cluster, client, "web-1.keep").await;
    released_because(
        cluster,
        client,
        "web-2.keep",
        &["web", "web-2"],
        "web-2.keep",
    )
    .await;
    assert_eq!(nic(cluster, client, "web-0.keep").await, web0);
    scale(sets, "web", 3).await;
    members(pods, "web", 0..3).await;

    println!("case: a StatefulSet deleted and recreated (new UID) starts with fresh addresses");
    let old = pods.get("web-0").await.unwrap();
    sets.delete("web", &DeleteParams::default()).await.unwrap();
    wait_for("StatefulSet web deleted", async || {
        sets.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await;
    statefulset(sets, "web", 1, None, json!({})).await;
    let fresh = allocated_fresh(pods, "web-0", old.uid().as_deref()).await;
    let now = nic(cluster, client, "web-0.keep").await;
    annotated(&fresh, &now);
    assert_ne!(
        now.ip, web0.ip,
        "the recreated StatefulSet's pod is another owner"
    );
    identity_event(
        client,
        &["web", "web-0"],
        "NetworkIdentityReleased",
        "web-0.keep",
    )
    .await;

    println!("case: a 3-entry pool scaled 3 → 1 → 3: ordinals 1 and 2 get their entries back");
    let pool = "10.16.5.10,10.16.5.11,10.16.5.12";
    statefulset(sets, "db", 3, Some(pool), json!({})).await;
    for (i, p) in members(pods, "db", 0..3).await.iter().enumerate() {
        let n = nic(cluster, client, &format!("db-{i}.keep")).await;
        assert_eq!(n.ip, format!("10.16.5.1{i}"));
        annotated(p, &n);
    }
    scale(sets, "db", 1).await;
    released(cluster, client, "db-1.keep").await;
    released(cluster, client, "db-2.keep").await;
    scale(sets, "db", 3).await;
    for (i, p) in members(pods, "db", 0..3).await.iter().enumerate() {
        let n = nic(cluster, client, &format!("db-{i}.keep")).await;
        assert_eq!(n.ip, format!("10.16.5.1{i}"), "db-{i} gets entry {i} back");
        annotated(p, &n);
    }

    println!("case: a pool change on the template moves each pod at its next recreation");
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(
            json!({ "spec": { "template": { "metadata": { "annotations": {
            "ovn.kubernetes.io/ip_pool": "10.16.6.10,10.16.6.11,10.16.6.12"
        } } } } }),
        ),
    )
    .await
    .unwrap();
    let running = pods.get("db-0").await.unwrap();
    assert_eq!(annotation(&running, "ip_address"), Some("10.16.5.10"));
    for i in 0..3 {
        let old = pods.get(&format!("db-{i}")).await.unwrap();
        delete_pod(pods, &old.name_any()).await;
        let p = allocated_fresh(pods, &old.name_any(), old.uid().as_deref()).await;
        let n = nic(cluster, client, &format!("db-{i}.keep")).await;
        assert_eq!(
            n.ip,
            format!("10.16.6.1{i}"),
            "db-{i} moved to its new entry"
        );
        annotated(&p, &n);
    }
    let held = nb_addresses(cluster);
    assert!(
        !held.iter().any(|a| a.starts_with("10.16.5.")),
        "the old entries are free: {held:?}"
    );

    println!("case: spec.ordinals.start with a pool: ordinal i takes entry i - start");
    statefulset(
        sets,
        "ord",
        2,
        Some("10.16.7.10,10.16.7.11,10.16.7.12"),
        json!({ "ordinals": { "start": 10 } }),
    )
    .await;
    let stored = sets.get("ord").await.unwrap();
    let start = stored
        .spec
        .and_then(|s| s.ordinals)
        .and_then(|o| o.start)
        .unwrap_or(0) as u64;
    println!("  the API server keeps ordinals.start = {start} (a v1.20 server drops the field)");
    for (i, p) in members(pods, "ord", start..start + 2)
        .await
        .iter()
        .enumerate()
    {
        let n = nic(cluster, client, &format!("{}.keep", p.name_any())).await;
        assert_eq!(n.ip, format!("10.16.7.1{i}"), "{}", p.name_any());
        annotated(p, &n);
    }
}

async fn vm_cases(cluster: &Cluster, client: &Client, pods: &Api<Pod>) {
    let virt = VirtController::new(client, NS);
    let vm1 = Vm::create(&virt, "vm1").await;
    let vm2 = Vm::create(&virt, "vm2").await;
    let vm3 = Vm::create(&virt, "vm3").await;

    println!("case (§8.4.1): a VM's launcher pod deleted; the next one has the same IP and MAC");
    let (first, vmi) = run_vm(&vm1, "a").await;
    let one = nic(cluster, client, &vm1.nic()).await;
    annotated(&first, &one);
    assert_eq!(annotation(&first, "routed"), Some("true"));
    let resource = ip_resource(client, &vm1.nic()).await.unwrap();
    assert_eq!(resource["spec"]["podName"], json!("vm1"));
    assert_eq!(resource["spec"]["podType"], json!("VirtualMachine"));
    let ids = nbctl(
        cluster,
        &["get", "Logical_Switch_Port", &vm1.nic(), "external_ids"],
    );
    assert!(ids.contains("pod=\"keep/vm1\""), "{ids}");
    delete_pod(pods, &first.name_any()).await;
    let second = vm1.launcher(&vmi, "b").await;
    let p = allocated_fresh(pods, &second, None).await;
    annotated(&p, &one);
    assert_eq!(nic(cluster, client, &vm1.nic()).await, one);

    println!("case: two launcher pods of one VM at once share the port, IP and MAC");
    let target = vm1.launcher(&vmi, "c").await;
    let p = allocated_fresh(pods, &target, None).await;
    annotated(&p, &one);
    assert!(warnings(client, NS, &target).await.is_empty());
    delete_pod(pods, &second).await;
    identity_event(client, &["vm1"], "NetworkIdentityKept", "still uses it").await;
    assert_eq!(nic(cluster, client, &vm1.nic()).await, one);

    println!("case (§8.4.2): VM stop keeps the IP resource; start brings the same IP and MAC");
    let spec_before = ip_resource(client, &vm1.nic()).await.unwrap()["spec"].clone();
    vm1.stop(&target).await;
    identity_event(
        client,
        &["vm1"],
        "NetworkIdentityKept",
        "VirtualMachine vm1 still exists",
    )
    .await;
    assert_eq!(nic(cluster, client, &vm1.nic()).await, one);

    println!("case: a pod of another owner cannot take a stopped VM's identity");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": { "name": "vm1", "namespace": NS },
            "spec": {
                "automountServiceAccountToken": false,
                "containers": [{ "name": "c", "image": "busybox" }],
            },
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let (reason, message) = wait_for("AddressConflict on pod vm1", async || {
        warnings(client, NS, "vm1")
            .await
            .into_iter()
            .find(|(r, _)| r != SANDBOX_FAILURE_REASON)
    })
    .await;
    assert_eq!(reason, "AddressConflict", "{message}");
    assert!(
        message.contains("vm1.keep") && message.contains("VirtualMachine vm1"),
        "{message}"
    );
    assert_eq!(
        annotation(&pods.get("vm1").await.unwrap(), "allocated"),
        None
    );
    delete_pod(pods, "vm1").await;
    assert_eq!(nic(cluster, client, &vm1.nic()).await, one);

    let (p, _) = run_vm(&vm1, "d").await;
    annotated(&p, &one);
    let spec_after = ip_resource(client, &vm1.nic()).await.unwrap()["spec"].clone();
    assert_eq!(spec_after, spec_before, "the IP resource spec is unchanged");

    println!("case (§8.4.3–5): subnet changes and a deleted IP resource move stopped VMs");
    let (two_pod, _) = run_vm(&vm2, "a").await;
    let two = nic(cluster, client, &vm2.nic()).await;
    let (three_pod, _) = run_vm(&vm3, "a").await;
    let three = nic(cluster, client, &vm3.nic()).await;
    vm2.stop(&two_pod.name_any()).await;
    vm3.stop(&three_pod.name_any()).await;
    identity_event(client, &["vm3"], "NetworkIdentityKept", "vm3.keep").await;
    assert!(ip_resource(client, &vm3.nic()).await.unwrap()["spec"]["ipAddress"] != json!(""));
    kubectl(cluster, &["delete", "ips.kubeovn.io", &vm3.nic()]);
    released_because(
        cluster,
        client,
        &vm3.nic(),
        &["vm3"],
        "IP resource was deleted",
    )
    .await;

    kubectl_apply(
        cluster,
        &format!(
            "apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata:\n  name: keep-net\nspec:\n  cidrBlock: 10.17.0.0/24\n  protocol: IPv4\n  namespaces: [\"{NS}\"]\n"
        ),
    );
    wait_for("subnet keep-net in OVN", async || {
        nbctl(
            cluster,
            &[
                "--bare",
                "--columns=name",
                "find",
                "Logical_Switch",
                "name=keep-net",
            ],
        )
        .contains("keep-net")
        .then_some(())
    })
    .await;

    // §8.4.3: the namespace subnet changed while vm1 runs; its stop releases.
    vm1.stop(&p.name_any()).await;
    released_because(cluster, client, &vm1.nic(), &["vm1"], "keep-net").await;
    for (vm, old, suffix) in [(&vm1, &one, "e"), (&vm2, &two, "b"), (&vm3, &three, "b")] {
        let (p, _) = run_vm(vm, suffix).await;
        let moved = nic(cluster, client, &vm.nic()).await;
        assert_eq!(
            moved.subnet, "keep-net",
            "{} moved to the namespace subnet",
            vm.name
        );
        assert!(moved.ip.starts_with("10.17.0."), "{moved:?}");
        assert_ne!(moved.ip, old.ip);
        annotated(&p, &moved);
        if vm.name == "vm1" {
            vm.stop(&p.name_any()).await;
        }
    }

    println!("case: VM deletion releases its identity");
    for vm in [&vm1, &vm2] {
        kubevirt_api(client, NS, "VirtualMachine")
            .delete(vm.name, &DeleteParams::default())
            .await
            .unwrap();
    }
    released_because(
        cluster,
        client,
        &vm1.nic(),
        &["vm1"],
        "VirtualMachine vm1 is gone",
    )
    .await;
    // vm2 was running: the garbage collector deletes its VMI and launcher pod after the VM.
    released_because(
        cluster,
        client,
        &vm2.nic(),
        &["vm2"],
        "VirtualMachine vm2 is gone",
    )
    .await;
    assert_eq!(nic(cluster, client, &vm3.nic()).await.subnet, "keep-net");
}
