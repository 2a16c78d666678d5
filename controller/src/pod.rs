//! The pod reconciler: observed pod → port, IP resource, annotations (in that order), and the
//! settling of a deleted pod's nic.
//!
//! Crash safety comes from the order and from idempotency by name: the port and the IP resource
//! are named after the nic, so a retry after a crash rewrites the same objects, and `allocated`
//! is written last, in the one annotation patch, so a pod is never marked allocated before its
//! port and IP resource exist.
//!
//! StatefulSet pods and virt-launcher pods carry an identity owned by their workload
//! ([`crate::nic::holder`]); it is reclaimed by the workload's next pod and decided by
//! [`crate::retention`] when no pod holds it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use portkeeper_api::IP;
use portkeeper_api::allocation::port_name;
use portkeeper_api::annotations::allocated_providers;
use portkeeper_api::request::{AddressRequest, NetworkRequest};
use portkeeper_engine::{Engine, IpRequest, Lease, NicKey};
use serde_json::json;

use crate::allocate::claim_checked;
use crate::context::{Context, FIELD_MANAGER};
use crate::dhcp;
use crate::error::{Error, RejectReason, Rejection};
use crate::nic::holder::{self, live_holder};
use crate::nic::target::{self, Addressing};
use crate::nic::{self, Network, NicRecord, Owner, reserve};
use crate::ovn::{Northbound, ids};
use crate::plan::{self, NodeFacts, PodFacts, SubnetNetwork, Target};
use crate::retention::{self, Decision};
use crate::takeover;

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

async fn allocate<N: Northbound>(pod: &Pod, ctx: &Context<N>) -> Result<(), Error> {
    if nic::finished(pod) {
        return release_finished(pod, ctx).await;
    }
    if !nic::wants_address(pod) {
        return Ok(());
    }
    let networks = match nic::networks(pod, &ctx.stores.subnets.state()) {
        Ok(n) => n,
        Err(r) => {
            ctx.warn(&pod.object_ref(&()), "Allocate", &r).await;
            return Err(Error::Rejected(r));
        }
    };
    for network in &networks {
        allocate_nic(pod, ctx, network).await?;
    }
    Ok(())
}

/// Allocates one nic of a pod (its primary one or an attachment's), or confirms it is in place.
async fn allocate_nic<N: Northbound>(
    pod: &Pod,
    ctx: &Context<N>,
    network: &Network,
) -> Result<(), Error> {
    let (name, namespace, uid) = (
        pod.name_any(),
        pod.namespace().unwrap_or_default(),
        pod.uid().unwrap_or_default(),
    );
    let key = &network.key;
    let owner = holder::owner_of(pod, &ctx.stores);
    let holder = holder::holder_uid(pod, owner.as_ref());
    let nic_name = nic::name(pod);
    let reserved = reserve::reserved_subnet(&ctx.stores, key);
    let record = NicRecord {
        name: &nic_name,
        namespace: &namespace,
        pod_uid: &uid,
        owner: owner.as_ref(),
        reserved: reserved.is_some(),
    };
    let _guard = ctx.locks.lock(key.as_str()).await;
    let keys = &network.keys;
    let annotations = pod.annotations();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let allocated = annotations.get(&keys.allocated).map(String::as_str) == Some("true");

    let held = ctx.engine.lease(key).filter(|l| l.uid == holder);
    if allocated
        && let Some(lease) = held
        && let Some(port) = ctx.nb.port(key.as_str())
    {
        if port.external_ids.get(ids::VENDOR).map(String::as_str) == Some(takeover::KUBE_OVN_VENDOR)
        {
            adopt(ctx, pod, network, &record, &lease).await?;
        }
        if node.is_some() && annotations.get(&keys.routed).map(String::as_str) != Some("true") {
            record
                .apply_ip(&ctx.client, &lease, node.as_deref())
                .await?;
            patch_annotations(
                &ctx.client,
                pod,
                BTreeMap::from([(keys.routed.clone(), "true".into())]),
            )
            .await?;
        }
        return port_dhcp(ctx, pod, network).await;
    }

    let reference = pod.object_ref(&());
    let rejected = |r| Error::Rejected(r);
    let request = match network.request(pod) {
        Ok(r) => r,
        Err(e) => {
            let r = e.into();
            ctx.warn(&reference, "Allocate", &r).await;
            return Err(rejected(r));
        }
    };
    let addressing = Addressing::of(&ctx.stores);
    let catalog = addressing.catalog(&ctx.config.default_ls);
    let node_object = node.as_deref().and_then(|n| ctx.stores.node(n));
    let no_labels = BTreeMap::new();
    let bound = node.as_deref().map(|name| NodeFacts {
        name,
        labels: node_object.as_ref().map_or(&no_labels, |n| n.labels()),
    });
    let chosen = match &network.attachment {
        None => choose(ctx, pod, &holder, &request, &catalog, bound),
        Some(served) => Ok(plan::attachment_target(
            &request,
            &served.subnet,
            holder::statefulset_ordinal(pod, &ctx.stores),
        )),
    };
    let target = match chosen {
        Ok(t) => t,
        Err(r) if r.reason == RejectReason::AwaitingNode => {
            tracing::debug!(pod = %name, %namespace, "{}", r.message);
            return Ok(());
        }
        Err(r) => {
            ctx.warn(&reference, "Allocate", &r).await;
            return Err(rejected(r));
        }
    };
    if !allocated && let Err(r) = take_over(ctx, pod, key, &holder).await? {
        ctx.warn(&reference, "Allocate", &r).await;
        return Err(rejected(r));
    }
    let target = match owner.as_ref() {
        Some(owner) => follow_subnet(ctx, pod, key, owner, target).await?,
        None => target,
    };
    let planned = Ok(plan::claim(target, key.clone(), &request, &holder))
        .and_then(|claim| {
            let statics = !matches!(claim.ip, IpRequest::Dynamic | IpRequest::Pools(_));
            claim_checked(&ctx.engine, &ctx.nb, &claim, |subnet, ip, except| {
                statics
                    .then(|| target::ip_resource_holder(&ctx.stores, subnet, ip, except))
                    .flatten()
            })
        })
        .and_then(|lease| {
            let subnet = catalog.subnet(&lease.subnet).ok_or_else(|| {
                portkeeper_engine::EngineError::UnknownSubnet {
                    subnet: lease.subnet.clone(),
                }
            })?;
            let network = SubnetNetwork::of(subnet)?;
            let routed = node.is_some();
            let mut allocation = plan::allocation(&lease, &network, routed, nic::launcher_vm(pod))?;
            allocation.dns = plan::subnet_dns(subnet)?;
            Ok((allocation, lease))
        });
    let (allocation, lease) = match planned {
        Ok(v) => v,
        Err(r) => {
            ctx.warn(&reference, "Allocate", &r).await;
            return Err(rejected(r));
        }
    };

    record
        .write_port(ctx, &lease, request.port_security)
        .await?;
    record
        .apply_ip(&ctx.client, &lease, node.as_deref())
        .await?;
    patch_annotations(&ctx.client, pod, allocation.to_annotations(keys)).await?;
    ctx.metrics.allocations.inc();
    tracing::debug!(pod = %name, %namespace, nic = %key, addresses = %lease.addresses(), "allocated");
    port_dhcp(ctx, pod, network).await
}

/// The port's OVN DHCP as the pod's annotations and its Subnet ask for. Bad options become an
/// `InvalidAnnotation` Warning Event and leave the port's DHCP as it was; the addresses stand.
async fn port_dhcp<N: Northbound>(
    ctx: &Context<N>,
    pod: &Pod,
    network: &Network,
) -> Result<(), Error> {
    let (key, keys) = (&network.key, &network.keys);
    match dhcp::apply_port(ctx, key.as_str(), keys, pod.annotations()).await {
        Err(Error::Dhcp(e)) => {
            let r = Rejection {
                reason: RejectReason::InvalidAnnotation,
                message: e.to_string(),
            };
            ctx.warn(&pod.object_ref(&()), "Allocate", &r).await;
            Err(Error::Rejected(r))
        }
        other => other,
    }
}

/// A running pod that kube-ovn-controller allocated, taken over as it is: its port is rewritten
/// in place with the same name, switch, addresses and MAC and portkeeper's `external_ids`, and
/// its IP resource gets portkeeper's records (same spec) without Kube-OVN's finalizer. From
/// then on portkeeper releases them like its own.
async fn adopt<N: Northbound>(
    ctx: &Context<N>,
    pod: &Pod,
    network: &Network,
    record: &NicRecord<'_>,
    lease: &Lease,
) -> Result<(), Error> {
    let port_security = network.request(pod).is_ok_and(|r| r.port_security);
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    record.apply_ip(&ctx.client, lease, node).await?;
    let ips: Api<IP> = Api::all(ctx.client.clone());
    if let Some(ip) = ips.get_opt(lease.key.as_str()).await? {
        takeover::drop_kube_ovn_finalizers(&ctx.client, &ip).await?;
    }
    // The port last: its vendor marks the adoption done, so an adoption cut short (an error,
    // a restart) runs again in full.
    record.write_port(ctx, lease, port_security).await?;
    tracing::info!(pod = %pod.name_any(), nic = %lease.key, addresses = %lease.addresses(), "taken over from Kube-OVN");
    Ok(())
}

/// Where a pod's request is served: its reservation's Subnet when it asks for nothing else, else
/// the Subnet chosen from `catalog` as Kube-OVN chooses it, with the namespace's subnet order,
/// the StatefulSet ordinal and, for node affinity, the node the pod is bound to (`node`). The pod
/// reconciler and the admission webhook both decide here, so a refusal reads the same at
/// `kubectl apply` as in the pod's Event.
pub fn choose<N>(
    ctx: &Context<N>,
    pod: &Pod,
    holder: &str,
    request: &NetworkRequest,
    catalog: &plan::Catalog<'_>,
    node: Option<NodeFacts<'_>>,
) -> Result<Target, Rejection> {
    // A pod that asks for nothing in particular goes where its reservation is.
    if request.addresses == AddressRequest::Any
        && request.logical_switch.is_none()
        && let Some(subnet) = reserve::reserved_subnet(&ctx.stores, &nic::key(pod))
    {
        return Ok(Target {
            subnet,
            ip: IpRequest::Dynamic,
        });
    }
    let (name, namespace) = (pod.name_any(), pod.namespace().unwrap_or_default());
    let written_order = ctx.stores.namespace_subnets(&namespace, &ctx.keys);
    let facts = PodFacts {
        name: &name,
        namespace: &namespace,
        uid: holder,
        annotations: pod.annotations(),
        ordinal: holder::statefulset_ordinal(pod, &ctx.stores),
        namespace_subnets: written_order.as_deref(),
        node,
    };
    plan::choose_target(
        request,
        &facts,
        catalog,
        |s| target::has_room(&ctx.engine, s),
        |p| target::pool_has_room(&ctx.engine, p),
    )
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
) -> Result<Result<(), Rejection>, Error> {
    let Some(existing) = ctx.engine.lease(key).filter(|l| l.uid != holder) else {
        return Ok(Ok(()));
    };
    let Some(recorded) = holder::recorded_owner(ctx, key).filter(|o| o.uid == existing.uid) else {
        return Ok(Ok(()));
    };
    let decision = retention::decide_nic(ctx, &existing, &recorded, &pod.name_any());
    if let Decision::Keep(why) = decision {
        return Ok(Err(Rejection {
            reason: RejectReason::AddressConflict,
            message: format!(
                "AddressConflict: {key} ({}) is kept for {} {}: {why}; pod {} has another owner and cannot take it",
                existing.addresses(),
                recorded.kind.as_str(),
                recorded.name,
                pod.name_any(),
            ),
        }));
    }
    nic::release(ctx, key, Some(&existing.uid)).await?;
    retention::announce(ctx, &existing, &recorded, &decision, Some(pod)).await;
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
    if live_holder(&ctx.stores, &existing, &pod.name_any()).is_some() {
        return Ok(Target {
            subnet: existing.subnet,
            ip: IpRequest::Dynamic,
        });
    }
    nic::release(ctx, key, Some(&existing.uid)).await?;
    let decision = Decision::Release(format!(
        "{} {} now selects subnet {}; allocating there",
        owner.kind.as_str(),
        owner.name,
        target.subnet
    ));
    retention::announce(ctx, &existing, owner, &decision, Some(pod)).await;
    Ok(target)
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

/// Settles a deleted pod's nics, each on its own: compare-and-swap on the holder, so a late
/// delete of an old incarnation never frees what a new pod of the same name holds. A plain pod's
/// nic is released; a workload-owned one is decided by [`retention::decide`] (kept while the
/// workload still needs it, with an Event either way); a launcher pod's nic stays while another
/// launcher pod of the VM runs.
pub async fn release_deleted<N: Northbound>(pod: &Pod, ctx: &Context<N>) -> Result<(), Error> {
    for key in nic::keys_of(pod) {
        release_deleted_nic(pod, ctx, &key).await?;
    }
    Ok(())
}

async fn release_deleted_nic<N: Northbound>(
    pod: &Pod,
    ctx: &Context<N>,
    key: &NicKey,
) -> Result<(), Error> {
    let uid = pod.uid().unwrap_or_default();
    let _guard = ctx.locks.lock(key.as_str()).await;
    let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let Some(lease) = ctx.engine.lease(key) else {
        return Ok(());
    };
    let owner = holder::recorded_owner(ctx, key).filter(|o| o.uid == lease.uid);
    if let Some(current) = ctx.stores.pod(&namespace, &name)
        && current.uid().as_deref() != Some(uid.as_str())
    {
        if let Some(owner) = owner {
            let decision = Decision::Keep(format!("pod {name} was recreated and takes it over"));
            retention::announce(ctx, &lease, &owner, &decision, Some(&current)).await;
        }
        return Ok(());
    }
    if let Some(owner) = owner {
        retention::settle(ctx, &lease, &owner, &name, None).await?;
        return Ok(());
    }
    if nic::launcher_vm(pod).is_some() {
        if live_holder(&ctx.stores, &lease, &name).is_none() {
            nic::release(ctx, key, Some(&lease.uid)).await?;
        }
        return Ok(());
    }
    let holder = holder::holder_uid(pod, holder::owner_of(pod, &ctx.stores).as_ref());
    nic::release(ctx, key, Some(&holder)).await
}

/// A pod that finished (a Job's pod, `Succeeded` or `Failed`) never runs again: its nics are
/// released now, as Kube-OVN does, not when the pod object is deleted, so Job-heavy namespaces do
/// not exhaust their subnets. The engine reuses the address only after every never-used one.
/// A StatefulSet's or VM's identity is not the pod's to give up: its workload replaces the pod,
/// and retention decides when the pod object goes.
async fn release_finished<N: Northbound>(pod: &Pod, ctx: &Context<N>) -> Result<(), Error> {
    if holder::owner_of(pod, &ctx.stores).is_some() || nic::launcher_vm(pod).is_some() {
        return Ok(());
    }
    let uid = pod.uid().unwrap_or_default();
    for key in nic::keys_of(pod) {
        let _guard = ctx.locks.lock(key.as_str()).await;
        if ctx.engine.lease(&key).is_some_and(|l| l.uid == uid) {
            nic::release(ctx, &key, Some(&uid)).await?;
            tracing::debug!(pod = %pod.name_any(), nic = %key, "finished pod released its addresses");
        }
    }
    Ok(())
}

/// Allocated nics (of any network) whose binding the engine holds but whose port is missing from
/// Northbound (someone ran `ovn-nbctl lsp-del`), with their pod and the lease their port must be
/// rebuilt from.
pub fn vanished_ports<N: Northbound>(
    pods: &[Arc<Pod>],
    engine: &Engine,
    nb: &N,
) -> Vec<(Arc<Pod>, Lease)> {
    pods.iter()
        .filter(|p| nic::wants_address(p))
        .flat_map(|p| {
            let (name, namespace) = (nic::name(p), p.namespace().unwrap_or_default());
            allocated_providers(p.annotations())
                .into_iter()
                .filter_map(move |provider| {
                    let lease = engine.lease(&port_name(&name, &namespace, provider))?;
                    nb.port(lease.key.as_str())
                        .is_none()
                        .then(|| (p.clone(), lease))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Gives every pod of [`vanished_ports`] its port back with the addresses the engine holds for
/// it (the pod's reconcile rewrites the port; the claim returns the binding it already has),
/// with a `PortRestored` Event on the pod. Runs after every garbage collection, at start too.
pub async fn restore_vanished_ports<N: Northbound>(ctx: &Arc<Context<N>>) -> usize {
    let vanished = vanished_ports(&ctx.stores.pods.state(), &ctx.engine, &ctx.nb);
    let count = vanished.len();
    for (p, lease) in vanished {
        let note = format!(
            "port {} was missing from OVN Northbound; recreated with its addresses {} in subnet {}",
            lease.key,
            plan::port_addresses(&lease),
            lease.subnet
        );
        tracing::warn!(nic = %lease.key, "{note}");
        ctx.note(&p.object_ref(&()), "PortRestored", "Restore", note)
            .await;
        if let Err(e) = reconcile(p, ctx.clone()).await {
            tracing::warn!(nic = %lease.key, error = %e, "restoring a vanished port failed; retried at the next collection");
        }
    }
    count
}

/// The pods bound to `node` that are not allocated yet: after its labels change, those waiting
/// on node affinity (or refused by it) are chosen again.
pub fn awaiting_node(
    stores: &crate::stores::Stores,
    node: &str,
    keys: &portkeeper_api::annotations::NetworkKeys,
) -> Vec<ObjectRef<Pod>> {
    stores
        .pods_where("", |p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                && p.annotations().get(&keys.allocated).map(String::as_str) != Some("true")
                && nic::wants_address(p)
        })
        .iter()
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// The exact annotation patch portkeeper sends, pinned with a mock API server: the URL, the
/// field manager, the content type and the body. Behaviour is tested against a real API server in
/// `kind-e2e/tests/controller_addressing.rs`.
#[cfg(test)]
mod request_shape_tests {
    use super::*;
    use crate::mock_api;

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
        let sent =
            mock_api::patched(&mut handle, patch_annotations(&client, &pod, values), reply).await;
        assert_eq!(
            sent.uri,
            "/api/v1/namespaces/shop/pods/web?&fieldManager=portkeeper-controller"
        );
        assert_eq!(sent.content_type, "application/merge-patch+json");
        assert_eq!(
            sent.body,
            json!({ "metadata": { "annotations": {
                "ovn.kubernetes.io/allocated": "true",
                "ovn.kubernetes.io/ip_address": "10.16.0.2",
            } } })
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocated_pod_whose_port_vanished_is_found_with_its_lease() {
        use crate::ovn::memory::MemoryNb;
        use portkeeper_engine::Claim;
        let engine = Engine::new();
        engine
            .upsert_subnet(&portkeeper_engine::SubnetSpec {
                name: "net1".into(),
                cidr_block: "10.0.0.0/24".into(),
                ..Default::default()
            })
            .unwrap();
        let pod = |name: &str, allocated: bool| -> Arc<Pod> {
            let mut annotations = serde_json::Map::new();
            if allocated {
                annotations.insert("ovn.kubernetes.io/allocated".into(), "true".into());
            }
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": { "name": name, "namespace": "ns", "uid": format!("{name}-uid"),
                        "annotations": annotations },
                }))
                .unwrap(),
            )
        };
        let pods = [
            pod("kept", true),
            pod("vanished", true),
            pod("pending", false),
        ];
        let nb = MemoryNb::default();
        for p in &pods {
            let key = nic::key(p);
            let lease = engine
                .claim(&Claim::dynamic("net1", key, &p.uid().unwrap()))
                .unwrap();
            if p.name_any() == "kept" {
                nb.add_foreign(lease.key.as_str(), "net1", &plan::port_addresses(&lease));
            }
        }
        let found = vanished_ports(&pods, &engine, &nb);
        assert_eq!(found.len(), 1, "only the allocated pod without a port");
        let (p, lease) = &found[0];
        assert_eq!(p.name_any(), "vanished");
        assert_eq!(lease.key.as_str(), "vanished.ns");
        assert_eq!(Some(lease.clone()), engine.lease(&lease.key));
    }
}
