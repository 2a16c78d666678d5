//! Applying the manifests of `yamls/examples/` as a user does, and waiting for what they make to
//! run: their pods, the pods of their Deployments and StatefulSets, and their KubeVirt VMs, which
//! are started by playing virt-controller ([`crate::kubevirt`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::Cluster;
use crate::dataplane::{self, Peers, is_running, wait_running};
use crate::kubevirt::VirtController;
use crate::portkeeper::{install_kubevirt, repo_root, wait_for};

/// The example manifests, in name order.
pub fn manifests() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(repo_root().join("yamls/examples"))
        .expect("yamls/examples")
        .map(|e| e.expect("a folder entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    paths
}

/// The objects `kubectl apply -f manifest` applied, as the API server returned them.
pub fn kubectl_apply_file(cluster: &Cluster, manifest: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", cluster.kubeconfig())
        .args(["apply", "-o", "json", "-f"])
        .arg(manifest)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl apply -f {}: {}",
        manifest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let applied: Value = serde_json::from_slice(&out.stdout).expect("kubectl's JSON");
    match applied["kind"].as_str() {
        Some("List") => applied["items"].as_array().cloned().unwrap_or_default(),
        _ => vec![applied],
    }
}

/// Applies `manifest` and waits until each of its pods, the pods of its workloads and the
/// launcher pod of each of its VMs (started on `vm_node`) run; returns those pods.
pub async fn apply(cluster: &Cluster, client: &Client, manifest: &Path, vm_node: &str) -> Vec<Pod> {
    let mut running = Vec::new();
    for object in kubectl_apply_file(cluster, manifest) {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        match object["kind"].as_str().unwrap_or_default() {
            "Pod" => running.push(wait_running(&pods, name, None).await),
            "Deployment" | "StatefulSet" => {
                running.extend(workload_pods(&pods, &object).await);
            }
            "VirtualMachine" => {
                let launcher = format!("virt-launcher-{name}-1");
                VirtController::new(client, namespace)
                    .start(name, Some((&launcher, vm_node)))
                    .await;
                running.push(wait_running(&pods, &launcher, None).await);
            }
            _ => {}
        }
    }
    running
}

/// Waits until `spec.replicas` pods of a Deployment or StatefulSet run, and returns them.
async fn workload_pods(pods: &Api<Pod>, workload: &Value) -> Vec<Pod> {
    let replicas = workload["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
    let selector = workload["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("a workload selects its pods by label")
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",");
    let name = workload["metadata"]["name"].as_str().unwrap_or_default();
    wait_for(&format!("{replicas} running pods of {name}"), async || {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .ok()?;
        let mut live: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        live.sort_by_key(ResourceExt::name_any);
        (live.len() == replicas && live.iter().all(is_running)).then_some(live)
    })
    .await
}

/// Applies every example manifest in name order (VMs started on node1) and checks each pod they
/// make: wired as annotated ([`dataplane::assert_wired_as_annotated`]) and reaching, in each of its
/// families, a peer pod on the other node and its gateway. Returns how many pods were checked.
pub async fn assert_every_example_wired(cluster: &Cluster, client: &Client) -> usize {
    install_kubevirt(cluster, client).await;
    let peers = Peers::start(cluster, client, "default").await;
    let mut checked = 0;
    for manifest in manifests() {
        let file = manifest
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let pods = apply(cluster, client, &manifest, "node1").await;
        assert!(!pods.is_empty(), "{file} makes pods");
        for p in pods {
            let eth0 = dataplane::assert_wired_as_annotated(cluster, &p);
            let reached = peers.assert_reach(cluster, &p);
            eprintln!(
                "{file}: {}/{} on {}: eth0 {} {:?}; reached {reached}",
                p.namespace().unwrap_or_default(),
                p.name_any(),
                dataplane::node_of(&p),
                eth0.mac,
                eth0.addresses,
            );
            checked += 1;
        }
    }
    assert!(checked >= manifests().len());
    checked
}
