//! The validating admission webhook: mistakes refused when they are made, at `kubectl apply`,
//! instead of an Event on an object that already exists.
//!
//! It refuses a Subnet whose CIDR overlaps another Subnet of its VPC or does not parse, an
//! IPPool outside its Subnet or overlapping another pool ([`crate::admission`]), and a pod whose
//! addressing annotations the controller would refuse ([`pod`]), with the message the pod's
//! Event would carry. It decides from the leader's caches and engine, so it is served only by
//! the leader once it is ready; a standby answers nothing.
//!
//! The controller keeps every check of its own: with `failurePolicy: Ignore` (yamls/webhook.yaml)
//! a webhook that is down, slow or not installed lets requests through, and the controller
//! refuses them as before. `Fail` would stop every pod creation in the cluster while the
//! controller is down, the controller's own pods included.

mod lookup;
mod pod;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, http::StatusCode};
use kube::api::{Api, DynamicObject};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use portkeeper_api::{IPPool, Subnet};
use serde::de::DeserializeOwned;

pub use tls::TlsFiles;

use crate::admission;
use crate::context::Context;
use crate::ovn::Northbound;

/// The path the webhook configuration calls.
pub const PATH: &str = "/validate";

/// The pod label naming a replica's role, `leader` or `standby`: the webhook Service of
/// yamls/webhook.yaml selects `leader`, the one replica with an engine to decide with.
pub const ROLE_LABEL: &str = "portkeeper.io/role";

/// Labels this replica's own pod (`pod` in `namespace`) with its role. A standby marks itself at
/// start, so a restarted former leader stops receiving webhook calls; the leader marks itself
/// once it serves. Best effort: outside a pod (no pod of that name) it logs and carries on.
pub async fn mark_role(client: &kube::Client, namespace: &str, pod: &str, leader: bool) {
    let role = if leader { "leader" } else { "standby" };
    let body = serde_json::json!({ "metadata": { "labels": { ROLE_LABEL: role } } });
    let params = kube::api::PatchParams {
        field_manager: Some(crate::context::FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    match pods
        .patch(pod, &params, &kube::api::Patch::Merge(body))
        .await
    {
        Ok(_) => tracing::info!(%pod, %role, "webhook role marked"),
        Err(e) => {
            tracing::info!(%pod, %role, error = %e, "webhook role not marked (not running as that pod?)")
        }
    }
}

/// Serves the webhook on `addr` with the certificate in `files` until the process ends.
pub async fn serve<N: Northbound>(
    addr: SocketAddr,
    files: TlsFiles,
    ctx: Arc<Context<N>>,
) -> std::io::Result<()> {
    let listener = tls::TlsListener::bind(addr, files).await?;
    tracing::info!(%addr, path = PATH, "serving the validating admission webhook");
    let app = Router::new()
        .route(PATH, post(validate::<N>))
        .with_state(ctx);
    axum::serve(listener, app).await
}

async fn validate<N: Northbound>(
    State(ctx): State<Arc<Context<N>>>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> (StatusCode, Json<AdmissionReview<DynamicObject>>) {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            let invalid = AdmissionResponse::invalid(e.to_string()).into_review();
            return (StatusCode::BAD_REQUEST, Json(invalid));
        }
    };
    let response = AdmissionResponse::from(&request);
    let response = match refusal(&ctx, &request).await {
        Some(message) => {
            tracing::info!(kind = %request.kind.kind, name = %request.name, %message, "admission refused");
            ctx.metrics.rejected("AdmissionRefused");
            response.deny(message)
        }
        None => response,
    };
    (StatusCode::OK, Json(response.into_review()))
}

/// Why the request must be refused; `None` lets it through (also for anything this webhook does
/// not judge, or cannot read).
async fn refusal<N: Northbound>(
    ctx: &Context<N>,
    request: &AdmissionRequest<DynamicObject>,
) -> Option<String> {
    let object = request.object.as_ref()?;
    match (request.kind.group.as_str(), request.kind.kind.as_str()) {
        ("", "Pod") if request.operation == Operation::Create => {
            let mut pod: k8s_openapi::api::core::v1::Pod = typed(object)?;
            if pod.metadata.namespace.is_none() {
                pod.metadata.namespace = request.namespace.clone();
            }
            pod::refusal(ctx, &pod).await
        }
        ("kubeovn.io", "Subnet") => {
            let subnet: Subnet = typed(object)?;
            let others = ctx.stores.subnets.state();
            admission::subnet_refusal(
                &subnet,
                others.iter().map(AsRef::as_ref),
                &ctx.config.cluster_router,
            )
        }
        ("kubeovn.io", "IPPool") => {
            let pool: IPPool = typed(object)?;
            let name = &pool.spec.subnet;
            let subnet = lookup::current(ctx.stores.subnet(name), &ctx.client, name).await;
            let others = ctx.stores.pools.state();
            admission::pool_refusal(&pool, subnet.as_deref(), others.iter().map(AsRef::as_ref))
        }
        _ => None,
    }
}

/// The object of a request as its type; `None` (let through) if it does not read as one.
fn typed<K: DeserializeOwned>(object: &DynamicObject) -> Option<K> {
    serde_json::to_value(object)
        .and_then(serde_json::from_value)
        .ok()
}
