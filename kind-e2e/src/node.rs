//! The Node object: registration, readiness and heartbeat, as a kubelet keeps them.
//!
//! The scheduler only binds pods to a Node that has allocatable resources, a `Ready=True`
//! condition and no `node.kubernetes.io/not-ready` taint. That taint is added at registration by
//! the apiserver's admission and normally lifted by the node-lifecycle controller; a kubelet may
//! not touch its own taints (NodeRestriction), so `kind-e2e/local/up` plays that controller's
//! part and lifts it once the Node is Ready.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::Error;

const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_SECONDS: i32 = 40;

/// What the agent reports about its node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub internal_ip: String,
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
    /// When the agent started reporting Ready: the conditions' `lastTransitionTime`.
    pub ready_since: Value,
}

impl NodeSpec {
    fn status(&self, now: &Value) -> Value {
        let resources = json!({
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": self.max_pods.to_string(),
            "ephemeral-storage": "100Gi",
        });
        let condition = |kind: &str, status: &str, reason: &str, message: &str| {
            json!({
                "type": kind, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": self.ready_since,
            })
        };
        json!({
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "node agent reports no memory pressure"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "node agent reports no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "node agent reports no PID pressure"),
                condition("Ready", "True", "KubeletReady", "portkeeper node agent is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.internal_ip},
                {"type": "Hostname", "address": self.name},
            ],
            "nodeInfo": {
                "architecture": std::env::consts::ARCH,
                "bootID": "",
                "containerRuntimeVersion": "portkeeper-node-agent://0.1",
                "kernelVersion": "",
                "kubeProxyVersion": "",
                "kubeletVersion": concat!("portkeeper-node-agent-", env!("CARGO_PKG_VERSION")),
                "machineID": "",
                "operatingSystem": std::env::consts::OS,
                "osImage": "",
                "systemUUID": "",
            },
        })
    }
}

/// Creates the Node if missing and reports it Ready.
pub async fn register(client: &Client, spec: &NodeSpec) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(&spec.name).await?.is_none() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": spec.name,
                "labels": {
                    "kubernetes.io/hostname": spec.name,
                    "kubernetes.io/os": std::env::consts::OS,
                    "kubernetes.io/arch": go_arch(),
                },
            },
        }))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => tracing::info!(node = %spec.name, "registered node"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    report_status(client, spec).await
}

async fn report_status(client: &Client, spec: &NodeSpec) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = time_now();
    nodes
        .patch_status(
            &spec.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": spec.status(&now) })),
        )
        .await?;
    Ok(())
}

async fn renew_lease(client: &Client, name: &str) -> Result<(), Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = serde_json::to_value(MicroTime(Timestamp::now()))?;
    let spec = json!({
        "holderIdentity": name,
        "leaseDurationSeconds": LEASE_SECONDS,
        "renewTime": now,
    });
    if leases.get_opt(name).await?.is_some() {
        leases
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await?;
    } else {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": LEASE_NAMESPACE },
            "spec": spec,
        }))?;
        leases.create(&PostParams::default(), &lease).await?;
    }
    Ok(())
}

/// Keeps the Node registered and Ready and its Lease renewed, forever.
pub async fn heartbeat(client: Client, spec: NodeSpec, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Err(e) = register(&client, &spec).await {
            tracing::warn!(error = %e, "node heartbeat failed");
        }
        if let Err(e) = renew_lease(&client, &spec.name).await {
            tracing::warn!(error = %e, "node lease renewal failed");
        }
    }
}

/// Now, serialized as the apiserver expects a `Time` (RFC 3339, whole seconds).
pub fn time_now() -> Value {
    serde_json::to_value(Time(Timestamp::now())).expect("a timestamp serializes")
}

/// The architecture name Kubernetes uses (Go's `GOARCH`).
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
