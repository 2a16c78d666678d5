//! Publishing the node's OVN chassis name on its Node object, for the controller's live migration.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use std::time::Duration;

use portkeeper_api::annotations::NODE_CHASSIS as CHASSIS_ANNOTATION;

/// Sets the annotation, retrying with backoff (up to 30 s between tries) until the API server accepts it.
pub async fn publish(client: kube::Client, node: String, chassis: String) {
    let nodes: Api<Node> = Api::all(client);
    let patch = serde_json::json!({"metadata": {"annotations": {CHASSIS_ANNOTATION: &chassis}}});
    let mut delay = Duration::from_millis(500);
    loop {
        match nodes
            .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(%node, %chassis, "published the node's chassis name");
                return;
            }
            Err(e) => {
                tracing::warn!(%node, error = %e, retry_in = ?delay, "cannot annotate the node with its chassis name");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}
