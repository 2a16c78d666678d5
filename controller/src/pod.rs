//! The pod reconciler: observed pod → port, IP resource, annotations (in that order), and the
//! release of a deleted pod's nic.
//!
//! Crash safety comes from the order and from idempotency by name: the port and the IP resource
//! are named after the nic, so a retry after a crash rewrites the same objects, and `allocated`
//! is written last, in the one annotation patch, so a pod is never marked allocated before its
//! port and IP resource exist.
//!
//! StatefulSet pods and virt-launcher pods carry an identity owned by their workload
//! ([`identity`]); it is reclaimed by the workload's next pod and decided by
//! [`crate::retention`] when no pod holds it.

pub mod identity;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use portkeeper_api::request::NetworkRequest;
use portkeeper_api::{IP, IPPool, Subnet, annotations};
use portkeeper_engine::{IpRequest, Lease, NicKey};
use serde_json::json;

use crate::allocate::{FOREIGN_PORT_OWNER, claim_checked};
use crate::context::{Context, FIELD_MANAGER};
use crate::error::Error;
use crate::northbound::{Northbound, port_spec};
use crate::plan::{self, Catalog, Ordinal, PodFacts, SubnetNetwork, Target};
use crate::retention::{Decision, OWNER_ANNOTATION, OWNER_PORT_KEY, Owner, OwnerKind};

/// Annotation on IP resources recording the UID of the pod that last wrote it, so that a
/// restart can tell a recreated pod from the one that held the address.
pub const POD_UID: &str = "portkeeper.io/pod-uid";
/// `external_ids` key on ports recording the owning pod's UID.
pub const PORT_POD_UID: &str = "pod_uid";

/// Allocates a pod's primary nic, or confirms it is in place.
pub async fn reconcile<N: Northbound>(
    pod: Arc<Pod>,
    ctx: Arc<Context<N>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = allocate(&pod, &ctx).await;
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.succeeded(&pod.uid().unwrap_or_default());
    }
    result.map(|()| Action::await_change())
}

/// Retries a failed pod with per-pod exponential backoff.
pub fn error_policy<N: Northbound>(pod: Arc<Pod>, error: &Error, ctx: Arc<Context<N>>) -> Action {
    ctx.metrics.failed(error.metric_label());
    if !matches!(error, Error::Rejected(_)) {
        tracing::warn!(pod = %pod.name_any(), namespace = ?pod.namespace(), %error, "reconcile failed");
    }
    Action::requeue(ctx.backoff(&pod.uid().unwrap_or_default()))
}

/// Whether a pod needs (or keeps) addresses: not host-network, not finished, not terminating.
pub fn wants_address(pod: &Pod) -> bool {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    !host_network && !finished && pod.metadata.deletion_timestamp.is_none()
}

/// The nic key of a pod's primary network: `<pod>.<ns>`, or `<vm>.<ns>` for a virt-launcher
/// pod, so every launcher pod of a VM shares one port, IP resource and MAC. The one place a
/// key is computed.
pub fn nic_key(pod: &Pod) -> NicKey {
    NicKey::new(
        &identity::nic_name(pod),
        &pod.namespace().unwrap_or_default(),
        None,
    )
}

/// What the port and the IP resource record about a nic's holder.
struct NicRecord<'a> {
    /// The nic's name part: the pod, or the VM.
    name: &'a str,
    /// The pod's namespace.
    namespace: &'a str,
    /// The writing pod's UID.
    pod_uid: &'a str,
    /// The workload owning the identity, if it outlives the pod.
    owner: Option<&'a Owner>,
}

impl NicRecord<'_> {
    /// Kube-OVN's IP resource `podType`.
    fn pod_type(&self) -> &'static str {
        match self.owner.map(|o| o.kind) {
            Some(OwnerKind::StatefulSet) => "StatefulSet",
            Some(OwnerKind::VirtualMachine) => "VirtualMachine",
            None => "",
        }
    }
}

async fn allocate<N: Northbound>(pod: &Pod, ctx: &Context<N>) -> Result<(), Error> {
    if !wants_address(pod) {
        return Ok(());
    }
    let (name, namespace, uid) = (
        pod.name_any(),
        pod.namespace().unwrap_or_default(),
        pod.uid().unwrap_or_default(),
    );
    let key = nic_key(pod);
    let owner = identity::owner_of(pod, &ctx.stores);
    let holder = identity::holder_uid(pod, owner.as_ref());
    let nic_name = identity::nic_name(pod);
    let record = NicRecord {
        name: &nic_name,
        namespace: &namespace,
        pod_uid: &uid,
        owner: owner.as_ref(),
    };
    let _guard = ctx.locks.lock(key.as_str()).await;
    let keys = &ctx.keys;
    let annotations = pod.annotations();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let allocated = annotations.get(&keys.allocated).map(String::as_str) == Some("true");

    let held = ctx.engine.lease(&key).filter(|l| l.uid == holder);
    if allocated
        && let Some(lease) = held
        && ctx.nb.port(key.as_str()).is_some()
    {
        if node.is_some() && annotations.get(&keys.routed).map(String::as_str) != Some("true") {
            apply_ip(&ctx.client, &record, &lease, node.as_deref()).await?;
            patch_annotations(
                &ctx.client,
                pod,
                BTreeMap::from([(keys.routed.clone(), "true".into())]),
            )
            .await?;
        }
        return Ok(());
    }

    let reference = pod.object_ref(&());
    let rejected = |r| Error::Rejected(r);
    let request = match NetworkRequest::from_annotations(keys, annotations) {
        Ok(r) => r,
        Err(e) => {
            let r = e.into();
            ctx.warn(&reference, "Allocate", &r).await;
            return Err(rejected(r));
        }
    };
    let addressing = Addressing::of(ctx);
    let catalog = addressing.catalog(&ctx.config.default_ls);
    let written_order = ctx.stores.namespace_subnets(&namespace, keys);
    let facts = PodFacts {
        name: &name,
        namespace: &namespace,
        uid: &holder,
        annotations,
        ordinal: statefulset_ordinal(pod, ctx),
        namespace_subnets: written_order.as_deref(),
    };
    let target = match plan::choose_target(&request, &facts, &catalog, |s| has_room(ctx, s)) {
        Ok(t) => t,
        Err(r) => {
            ctx.warn(&reference, "Allocate", &r).await;
            return Err(rejected(r));
        }
    };
    if !allocated && let Err(r) = take_over(ctx, pod, &key, &holder).await? {
        ctx.warn(&reference, "Allocate", &r).await;
        return Err(rejected(r));
    }
    let target = match owner.as_ref() {
        Some(owner) => follow_subnet(ctx, pod, &key, owner, target).await?,
        None => target,
    };
    let planned = Ok(plan::claim(target, key.clone(), &request, &holder))
        .and_then(|claim| {
            let statics = !matches!(claim.ip, IpRequest::Dynamic | IpRequest::Pools(_));
            claim_checked(
                &ctx.engine,
                ctx.nb.as_ref(),
                &claim,
                |subnet, ip, except| {
                    statics
                        .then(|| ip_resource_holder(ctx, subnet, ip, except))
                        .flatten()
                },
            )
        })
        .and_then(|lease| {
            let subnet = catalog.subnet(&lease.subnet).ok_or_else(|| {
                portkeeper_engine::EngineError::UnknownSubnet {
                    subnet: lease.subnet.clone(),
                }
            })?;
            Ok((SubnetNetwork::of(subnet)?, lease))
        });
    let (network, lease) = match planned {
        Ok(v) => v,
        Err(r) => {
            ctx.warn(&reference, "Allocate", &r).await;
            return Err(rejected(r));
        }
    };

    write_port(ctx, &lease, &record, request.port_security).await?;
    apply_ip(&ctx.client, &record, &lease, node.as_deref()).await?;
    let written = plan::allocated_annotations(
        keys,
        &lease,
        &network,
        node.is_some(),
        identity::launcher_vm(pod),
    );
    patch_annotations(&ctx.client, pod, written).await?;
    ctx.metrics.allocations.inc();
    tracing::debug!(pod = %name, %namespace, addresses = %plan::ip_address_value(&lease), "allocated");
    Ok(())
}

/// A nic still held by another holder (an earlier workload of the same name, or an earlier pod):
/// a workload-owned identity its owner still keeps refuses the pod (`Ok(Err)`); one its owner
/// no longer keeps is released first, so the pod starts fresh. An earlier plain pod's binding is
/// left to the engine, which hands it to the new UID.
async fn take_over<N: Northbound>(
    ctx: &Context<N>,
    pod: &Pod,
    key: &NicKey,
    holder: &str,
) -> Result<Result<(), crate::error::Rejection>, Error> {
    let Some(existing) = ctx.engine.lease(key).filter(|l| l.uid != holder) else {
        return Ok(Ok(()));
    };
    let Some(recorded) = identity::recorded_owner(ctx, key).filter(|o| o.uid == existing.uid)
    else {
        return Ok(Ok(()));
    };
    let decision = identity::decide_nic(ctx, &existing, &recorded, &pod.name_any());
    if let Decision::Keep(why) = decision {
        return Ok(Err(crate::error::Rejection {
            reason: crate::error::RejectReason::AddressConflict,
            message: format!(
                "AddressConflict: {key} ({}) is kept for {} {}: {why}; pod {} has another owner and cannot take it",
                plan::ip_address_value(&existing),
                recorded.kind.as_str(),
                recorded.name,
                pod.name_any(),
            ),
        }));
    }
    release_nic(ctx, key, Some(&existing.uid)).await?;
    identity::announce(ctx, &existing, &recorded, &decision, Some(pod)).await;
    Ok(Ok(()))
}

/// A workload's identity held in another subnet than its pod now asks for moves there: released
/// here, allocated fresh by the caller. While another pod of the workload still runs on it (a
/// migration's source), the pod joins that subnet instead, keeping the addresses it holds.
async fn follow_subnet<N: Northbound>(
    ctx: &Context<N>,
    pod: &Pod,
    key: &NicKey,
    owner: &Owner,
    target: Target,
) -> Result<Target, Error> {
    let Some(existing) = ctx
        .engine
        .lease(key)
        .filter(|l| l.uid == owner.uid && l.subnet != target.subnet)
    else {
        return Ok(target);
    };
    if identity::live_holder(&ctx.stores, key, &pod.name_any()).is_some() {
        return Ok(Target {
            subnet: existing.subnet,
            ip: IpRequest::Dynamic,
        });
    }
    release_nic(ctx, key, Some(&existing.uid)).await?;
    let decision = Decision::Release(format!(
        "{} {} now selects subnet {}; allocating there",
        owner.kind.as_str(),
        owner.name,
        target.subnet
    ));
    identity::announce(ctx, &existing, owner, &decision, Some(pod)).await;
    Ok(target)
}

/// The Subnets and IPPools as the caches hold them now, for one subnet choice.
struct Addressing {
    subnets: Vec<Arc<Subnet>>,
    pools: Vec<Arc<IPPool>>,
}

impl Addressing {
    fn of<N>(ctx: &Context<N>) -> Self {
        Addressing {
            subnets: ctx.stores.subnets.state(),
            pools: ctx.stores.pools.state(),
        }
    }

    fn catalog<'a>(&'a self, default_subnet: &'a str) -> Catalog<'a> {
        Catalog {
            subnets: &self.subnets,
            pools: &self.pools,
            default_subnet,
        }
    }
}

fn has_room<N>(ctx: &Context<N>, subnet: &str) -> bool {
    ctx.engine
        .subnet_status(subnet)
        .is_ok_and(|s| s.v4_available_ips > 0 || s.v6_available_ips > 0)
}

/// The ordinal and `spec.ordinals.start` of a StatefulSet pod.
fn statefulset_ordinal<N>(pod: &Pod, ctx: &Context<N>) -> Option<Ordinal> {
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "StatefulSet" && o.api_version.starts_with("apps/"))?;
    let ordinal = crate::retention::ordinal_of(&pod.name_any(), &owner.name)?;
    let set = ctx.stores.statefulset(&pod.namespace()?, &owner.name);
    Some(Ordinal {
        ordinal,
        start: identity::statefulset_start(set.as_deref()),
    })
}

/// Another IP resource holding `ip` in `subnet`.
fn ip_resource_holder<N>(
    ctx: &Context<N>,
    subnet: &str,
    ip: IpAddr,
    except: &str,
) -> Option<String> {
    let text = ip.to_string();
    ctx.stores.ips.state().into_iter().find_map(|r| {
        let name = r.name_any();
        (name != except && r.spec.subnet == subnet && r.spec.addresses().contains(&text.as_str()))
            .then_some(name)
    })
}

async fn write_port<N: Northbound>(
    ctx: &Context<N>,
    lease: &Lease,
    record: &NicRecord<'_>,
    port_security: bool,
) -> Result<(), Error> {
    let mut spec = port_spec(
        lease.key.as_str(),
        &lease.subnet,
        &format!("{}/{}", record.namespace, record.name),
        plan::port_addresses(lease),
        port_security,
    );
    spec.external_ids
        .insert(PORT_POD_UID.to_owned(), record.pod_uid.to_owned());
    if let Some(owner) = record.owner {
        spec.external_ids
            .insert(OWNER_PORT_KEY.to_owned(), owner.to_string());
    }
    let started = Instant::now();
    let result = ctx.nb.upsert_port(&spec).await;
    ctx.metrics
        .nb_transaction("upsert_port", started.elapsed().as_secs_f64());
    result.map_err(|e| Error::Northbound(e.to_string()))
}

/// Creates or updates the nic's IP resource by server-side apply.
async fn apply_ip(
    client: &kube::Client,
    record: &NicRecord<'_>,
    lease: &Lease,
    node: Option<&str>,
) -> Result<(), Error> {
    let mut labels = BTreeMap::from([
        (annotations::LABEL_SUBNET.to_owned(), lease.subnet.clone()),
        (
            annotations::LABEL_IP_RESERVED.to_owned(),
            "false".to_owned(),
        ),
        (lease.subnet.clone(), String::new()),
    ]);
    if let Some(node) = node {
        labels.insert(annotations::LABEL_NODE_NAME.to_owned(), node.to_owned());
    }
    let mut recorded = BTreeMap::from([(POD_UID, record.pod_uid.to_owned())]);
    if let Some(owner) = record.owner {
        recorded.insert(OWNER_ANNOTATION, owner.to_string());
    }
    let body = json!({
        "apiVersion": "kubeovn.io/v1",
        "kind": "IP",
        "metadata": {
            "name": lease.key.as_str(),
            "labels": labels,
            "annotations": recorded,
        },
        "spec": plan::ip_spec(record.name, record.namespace, lease, node, record.pod_type()),
    });
    Api::<IP>::all(client.clone())
        .patch(
            lease.key.as_str(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
    Ok(())
}

/// Writes `values` into the pod's annotations with one merge patch.
async fn patch_annotations(
    client: &kube::Client,
    pod: &Pod,
    values: BTreeMap<String, String>,
) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let body = json!({ "metadata": { "annotations": values } });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    api.patch(&pod.name_any(), &params, &Patch::Merge(body))
        .await?;
    Ok(())
}

/// Whether a live pod or a workload keeps a nic that garbage collection found without its pod.
pub fn keeps_identity<N: Northbound>(ctx: &Context<N>, lease: &Lease) -> bool {
    identity::keeps_identity(ctx, lease)
}

/// Settles a deleted pod's nic: compare-and-swap on the holder, so a late delete of an old
/// incarnation never frees what a new pod of the same name holds. A plain pod's nic is
/// released; a workload-owned one is decided by [`crate::retention::decide`] (kept while the
/// workload still needs it, with an Event either way); a launcher pod's nic stays while another
/// launcher pod of the VM runs.
pub async fn release_deleted<N: Northbound>(pod: &Pod, ctx: &Context<N>) -> Result<(), Error> {
    let key = nic_key(pod);
    let uid = pod.uid().unwrap_or_default();
    let _guard = ctx.locks.lock(key.as_str()).await;
    let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let Some(lease) = ctx.engine.lease(&key) else {
        return Ok(());
    };
    let owner = identity::recorded_owner(ctx, &key).filter(|o| o.uid == lease.uid);
    if let Some(current) = ctx.stores.pod(&namespace, &name)
        && current.uid().as_deref() != Some(uid.as_str())
    {
        if let Some(owner) = owner {
            let decision = Decision::Keep(format!("pod {name} was recreated and takes it over"));
            identity::announce(ctx, &lease, &owner, &decision, Some(&current)).await;
        }
        return Ok(());
    }
    if let Some(owner) = owner {
        identity::settle(ctx, &lease, &owner, &name, None).await?;
        return Ok(());
    }
    if identity::launcher_vm(pod).is_some() {
        if identity::live_holder(&ctx.stores, &key, &name).is_none() {
            release_nic(ctx, &key, Some(&lease.uid)).await?;
        }
        return Ok(());
    }
    let holder = identity::holder_uid(pod, identity::owner_of(pod, &ctx.stores).as_ref());
    release_nic(ctx, &key, Some(&holder)).await
}

/// Deletes a nic's port (if portkeeper made it for this owner) and IP resource, then frees the
/// engine binding. `uid` limits the release to that owner; `None` releases whoever holds it
/// (garbage collection of a nic whose pod is gone). Callers hold the nic's lock.
pub async fn release_nic<N: Northbound>(
    ctx: &Context<N>,
    key: &NicKey,
    uid: Option<&str>,
) -> Result<(), Error> {
    let lease = ctx.engine.lease(key);
    if let (Some(l), Some(uid)) = (&lease, uid)
        && l.uid != uid
    {
        return Ok(());
    }
    if lease.as_ref().is_some_and(|l| l.uid == FOREIGN_PORT_OWNER) {
        return Ok(());
    }
    if let Some(port) = ctx.nb.port(key.as_str())
        && port.is_ours()
        && uid.is_none_or(|u| identity::port_holder(&port.external_ids).is_none_or(|p| p == u))
    {
        let started = Instant::now();
        let result = ctx.nb.delete_port(key.as_str()).await;
        ctx.metrics
            .nb_transaction("delete_port", started.elapsed().as_secs_f64());
        result.map_err(|e| Error::Northbound(e.to_string()))?;
    }
    let ips: Api<IP> = Api::all(ctx.client.clone());
    if let Some(ip) = ips.get_opt(key.as_str()).await?
        && uid.is_none_or(|u| identity::recorded_holder(ip.annotations()).is_none_or(|p| p == u))
    {
        match ips.delete(key.as_str(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(lease) = lease
        && ctx.engine.release(key, &lease.owner()).is_ok()
    {
        ctx.metrics.releases.inc();
    }
    Ok(())
}

/// The exact requests portkeeper sends, pinned with a mock API server: the URL, the field
/// manager, the content type and the body. Behaviour is tested against a real API server in
/// `kind-e2e/tests/controller_addressing.rs`.
#[cfg(test)]
mod request_shape_tests {
    use super::*;
    use crate::mock_api;
    use http::Method;
    use portkeeper_engine::MacAddress;

    fn lease() -> Lease {
        Lease {
            subnet: "ovn-default".into(),
            key: NicKey::new("web", "shop", None),
            uid: "u-1".into(),
            generation: 1,
            v4: Some("10.16.0.2".parse().unwrap()),
            v6: None,
            mac: Some(MacAddress::parse("0a:58:0a:10:00:02").unwrap()),
        }
    }

    #[tokio::test]
    async fn annotations_are_one_merge_patch_with_our_field_manager() {
        let (client, mut handle) = mock_api::client();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "web", "namespace": "shop", "uid": "u-1" }
        }))
        .unwrap();
        let values = BTreeMap::from([
            ("ovn.kubernetes.io/allocated".to_owned(), "true".to_owned()),
            (
                "ovn.kubernetes.io/ip_address".to_owned(),
                "10.16.0.2".to_owned(),
            ),
        ]);
        let reply = serde_json::to_value(&pod).unwrap();
        let (sent, server) = tokio::join!(
            patch_annotations(&client, &pod, values),
            mock_api::answer(&mut handle, |_| reply)
        );
        sent.unwrap();
        let (parts, body) = server;
        assert_eq!(parts.method, Method::PATCH);
        assert_eq!(
            parts.uri.to_string(),
            "/api/v1/namespaces/shop/pods/web?&fieldManager=portkeeper-controller"
        );
        assert_eq!(
            parts.headers["content-type"],
            "application/merge-patch+json"
        );
        assert_eq!(
            body,
            json!({ "metadata": { "annotations": {
                "ovn.kubernetes.io/allocated": "true",
                "ovn.kubernetes.io/ip_address": "10.16.0.2",
            } } })
        );
    }

    #[tokio::test]
    async fn ip_resource_is_server_side_applied_with_force() {
        let (client, mut handle) = mock_api::client();
        let record = NicRecord {
            name: "web",
            namespace: "shop",
            pod_uid: "u-1",
            owner: None,
        };
        let reply = json!({
            "apiVersion": "kubeovn.io/v1", "kind": "IP",
            "metadata": { "name": "web.shop" }, "spec": {}
        });
        let lease = lease();
        let (sent, server) = tokio::join!(
            apply_ip(&client, &record, &lease, Some("node1")),
            mock_api::answer(&mut handle, |_| reply)
        );
        sent.unwrap();
        let (parts, body) = server;
        assert_eq!(parts.method, Method::PATCH);
        assert_eq!(
            parts.uri.to_string(),
            "/apis/kubeovn.io/v1/ips/web.shop?&force=true&fieldManager=portkeeper-controller"
        );
        assert_eq!(
            parts.headers["content-type"],
            "application/apply-patch+yaml"
        );
        assert_eq!(
            body,
            json!({
                "apiVersion": "kubeovn.io/v1",
                "kind": "IP",
                "metadata": {
                    "name": "web.shop",
                    "labels": {
                        "ovn.kubernetes.io/subnet": "ovn-default",
                        "ovn.kubernetes.io/ip_reserved": "false",
                        "ovn.kubernetes.io/node-name": "node1",
                        "ovn-default": "",
                    },
                    "annotations": { "portkeeper.io/pod-uid": "u-1" },
                },
                "spec": {
                    "podName": "web",
                    "namespace": "shop",
                    "subnet": "ovn-default",
                    "nodeName": "node1",
                    "ipAddress": "10.16.0.2",
                    "v4IpAddress": "10.16.0.2",
                    "macAddress": "0a:58:0a:10:00:02",
                },
            })
        );
    }
}
