//! Which network identities outlive their pod, and acting on it.
//!
//! A StatefulSet pod's nic and every launcher pod of a KubeVirt VM are owned by the workload, not
//! by the pod (see [`crate::nic::holder`]). When no live pod holds such a nic, [`decide`] (pure)
//! says whether it is kept for the next pod or released; this module gathers its facts from the
//! caches, releases what is not kept and publishes the Events. It runs when a pod departs, when
//! a pod asks for an identity another holder keeps, on every StatefulSet or VM change, and
//! periodically ([`sweep`]), so it never depends on a pod's delete event alone.

mod decide;

pub use decide::{Decision, Facts, Observed, SubnetFit, decide};

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::Api;
use kube::{Resource, ResourceExt};
use portkeeper_api::IP;
use portkeeper_api::annotations::DEFAULT_PROVIDER;
use portkeeper_api::request::NetworkRequest;
use portkeeper_engine::{Lease, NicKey};

use crate::context::Context;
use crate::error::Error;
use crate::nic::holder::{live_holder, ordinal_of, statefulset_start};
use crate::nic::target::{self, Addressing};
use crate::nic::{self, OWNER_ANNOTATION, OWNER_PORT_KEY, Owner, OwnerKind};
use crate::ovn::Northbound;
use crate::plan::{self, Ordinal, PodFacts};
use crate::stores::Stores;

/// Event reason when a departed pod's identity is kept for its workload's next pod.
pub const REASON_KEPT: &str = "NetworkIdentityKept";
/// Event reason when a workload's identity is released.
pub const REASON_RELEASED: &str = "NetworkIdentityReleased";

/// What the caches say of `owner` now.
fn observe(stores: &Stores, namespace: &str, owner: &Owner) -> Observed {
    let seen = |meta: &kube::api::ObjectMeta| match (&meta.uid, &meta.deletion_timestamp) {
        (_, Some(_)) => Some(Observed::Gone),
        (Some(uid), None) if *uid != owner.uid => Some(Observed::Recreated),
        _ => None,
    };
    match owner.kind {
        OwnerKind::StatefulSet => {
            let Some(set) = stores.statefulset(namespace, &owner.name) else {
                return Observed::Gone;
            };
            seen(&set.metadata).unwrap_or_else(|| {
                let spec = set.spec.as_ref();
                Observed::StatefulSet {
                    start: statefulset_start(Some(&set)),
                    replicas: spec.and_then(|s| s.replicas).map_or(1, |r| r.max(0) as u64),
                }
            })
        }
        OwnerKind::VirtualMachine if !stores.watches_virtual_machines() => Observed::Unobservable,
        OwnerKind::VirtualMachine => match stores.virtual_machine(namespace, &owner.name) {
            None => Observed::Gone,
            Some(vm) => seen(&vm.metadata).unwrap_or(Observed::VirtualMachine),
        },
    }
}

/// The annotations the owner's next pod will carry: the StatefulSet's pod template or the VM's
/// VMI template.
fn template_annotations(
    stores: &Stores,
    namespace: &str,
    owner: &Owner,
) -> BTreeMap<String, String> {
    match owner.kind {
        OwnerKind::StatefulSet => stores.statefulset(namespace, &owner.name).and_then(|s| {
            s.spec
                .as_ref()?
                .template
                .metadata
                .as_ref()?
                .annotations
                .clone()
        }),
        OwnerKind::VirtualMachine => {
            stores
                .virtual_machine(namespace, &owner.name)
                .and_then(|vm| {
                    Some(
                        vm.spec
                            .template
                            .as_ref()?
                            .metadata
                            .as_ref()?
                            .annotations
                            .clone(),
                    )
                })
        }
    }
    .unwrap_or_default()
}

/// Whether `lease` still fits what the owner's next pod would ask for. An unreadable request
/// (bad template annotation, unknown subnet) decides nothing: the pod gets its Event when it
/// comes, and the identity is kept meanwhile.
fn fit<N: Northbound>(
    ctx: &Context<N>,
    namespace: &str,
    owner: &Owner,
    ordinal: Option<u64>,
    lease: &Lease,
    provider: &str,
) -> SubnetFit {
    if provider != DEFAULT_PROVIDER {
        // An attachment's Subnet is fixed by its provider: only its address can stop fitting.
        return stranded_fit(ctx, lease);
    }
    let annotations = template_annotations(&ctx.stores, namespace, owner);
    let Ok(request) = NetworkRequest::from_annotations(&ctx.keys, &annotations) else {
        return SubnetFit::Fits;
    };
    let start = statefulset_start(ctx.stores.statefulset(namespace, &owner.name).as_deref());
    let written_order = ctx.stores.namespace_subnets(namespace, &ctx.keys);
    let facts = PodFacts {
        name: lease.key.as_str(),
        namespace,
        uid: &owner.uid,
        annotations: &annotations,
        ordinal: ordinal.map(|ordinal| Ordinal { ordinal, start }),
        namespace_subnets: written_order.as_deref(),
        // A future pod's node is unknown: a choice that needs one decides nothing (Fits).
        node: None,
    };
    let room = |s: &str| s == lease.subnet || target::has_room(&ctx.engine, s);
    let pool_room = |p: &str| target::pool_has_room(&ctx.engine, p);
    let addressing = Addressing::of(&ctx.stores);
    let catalog = addressing.catalog(&ctx.config.default_ls);
    match plan::choose_target(&request, &facts, &catalog, room, pool_room) {
        Err(_) => SubnetFit::Fits,
        Ok(t) if t.subnet != lease.subnet => SubnetFit::Moved { to: t.subnet },
        Ok(_) => stranded_fit(ctx, lease),
    }
}

/// `Outside` when the held address no longer fits its Subnet (or the Subnet is gone).
fn stranded_fit<N: Northbound>(ctx: &Context<N>, lease: &Lease) -> SubnetFit {
    let stranded = ctx
        .engine
        .stranded(&lease.subnet)
        .map_or(true, |s| s.iter().any(|x| x.key == lease.key));
    if stranded {
        SubnetFit::Outside
    } else {
        SubnetFit::Fits
    }
}

/// Decides whether the nic `key`, held by `lease` for `owner`, is kept; `except` is a pod that
/// does not count as a live holder (the one departing or asking).
pub fn decide_nic<N: Northbound>(
    ctx: &Context<N>,
    lease: &Lease,
    owner: &Owner,
    except: &str,
) -> Decision {
    let (name, namespace, provider) = nic::holder_of(&ctx.stores, lease)
        .unwrap_or_else(|| (String::new(), String::new(), DEFAULT_PROVIDER.to_owned()));
    let live = live_holder(&ctx.stores, lease, except);
    let ordinal = match owner.kind {
        OwnerKind::StatefulSet => ordinal_of(&name, &owner.name),
        OwnerKind::VirtualMachine => None,
    };
    let fit = match live {
        Some(_) => SubnetFit::Fits,
        None => fit(ctx, &namespace, owner, ordinal, lease, &provider),
    };
    decide(&Facts {
        owner,
        ordinal,
        observed: observe(&ctx.stores, &namespace, owner),
        fit,
        live_pod: live.as_deref(),
    })
}

/// A reference to the owner, for Events once its pod is gone.
fn owner_reference(owner: &Owner, namespace: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(owner.kind.api_version().to_owned()),
        kind: Some(owner.kind.as_str().to_owned()),
        name: Some(owner.name.clone()),
        namespace: Some(namespace.to_owned()),
        uid: Some(owner.uid.clone()),
        ..Default::default()
    }
}

/// Publishes the decision as an Event: on `pod` when there is one, else on the owner.
pub async fn announce<N: Northbound>(
    ctx: &Context<N>,
    lease: &Lease,
    owner: &Owner,
    decision: &Decision,
    pod: Option<&Pod>,
) {
    let namespace = nic::holder_of(&ctx.stores, lease).map_or_else(String::new, |(_, ns, _)| ns);
    let reference = pod.map_or_else(|| owner_reference(owner, &namespace), |p| p.object_ref(&()));
    let addresses = format!(
        "{} ({}, MAC {})",
        lease.key,
        lease.addresses(),
        lease.mac.map(|m| m.to_string()).unwrap_or_default()
    );
    let (reason, note) = match decision {
        Decision::Keep(why) => (REASON_KEPT, format!("kept {addresses}: {why}")),
        Decision::Release(why) => (REASON_RELEASED, format!("released {addresses}: {why}")),
    };
    tracing::info!(nic = %lease.key, %owner, %note, "retention");
    ctx.note_distinct(&reference, reason, "Retain", note).await;
}

/// Decides `lease` for `owner` and acts: releases what is not kept, and says so. Callers hold
/// the nic's lock.
pub async fn settle<N: Northbound>(
    ctx: &Context<N>,
    lease: &Lease,
    owner: &Owner,
    except: &str,
    pod: Option<&Pod>,
) -> Result<(), Error> {
    let decision = decide_nic(ctx, lease, owner, except);
    if !decision.keeps() {
        nic::release(ctx, &lease.key, Some(&lease.uid)).await?;
    }
    announce(ctx, lease, owner, &decision, pod).await;
    Ok(())
}

/// Every workload-owned nic that no live pod holds is decided again; those whose owner is gone,
/// recreated or scaled below them, or whose subnet moved, are released. Runs at start, on every
/// StatefulSet or VM change and periodically, so it never depends on a pod's delete event.
pub async fn sweep<N: Northbound>(ctx: &Context<N>) -> Result<usize, Error> {
    let mut owned: BTreeMap<String, Owner> = BTreeMap::new();
    for ip in ctx.stores.ips.state() {
        if let Some(owner) = ip
            .annotations()
            .get(OWNER_ANNOTATION)
            .and_then(|o| Owner::parse(o))
        {
            owned.insert(ip.name_any(), owner);
        }
    }
    for port in ctx.nb.ports() {
        if let Some(owner) = port
            .external_ids
            .get(OWNER_PORT_KEY)
            .and_then(|o| Owner::parse(o))
            && port.is_ours()
        {
            owned.entry(port.name.clone()).or_insert(owner);
        }
    }
    let in_use: HashSet<NicKey> = ctx
        .stores
        .pods
        .state()
        .iter()
        .filter(|p| nic::wants_address(p))
        .flat_map(|p| nic::keys_of(p))
        .collect();
    let mut released = 0;
    for (name, owner) in owned {
        let key = NicKey::from(name.as_str());
        if in_use.contains(&key) {
            continue;
        }
        let _guard = ctx.locks.lock(key.as_str()).await;
        let Some(lease) = ctx.engine.lease(&key).filter(|l| l.uid == owner.uid) else {
            continue;
        };
        let decision = decide_nic(ctx, &lease, &owner, "");
        if decision.keeps() {
            continue;
        }
        nic::release(ctx, &key, Some(&lease.uid)).await?;
        let (pod_name, namespace, _) = nic::holder_of(&ctx.stores, &lease).unwrap_or_default();
        let pod = ctx.stores.pod(&namespace, &pod_name);
        announce(ctx, &lease, &owner, &decision, pod.as_deref()).await;
        released += 1;
    }
    Ok(released)
}

/// A workload-owned IP resource was deleted. If no live pod holds the nic, the user asked for a
/// fresh address (Kube-OVN's "delete the IP while the VM is stopped"): release port and binding.
pub async fn ip_deleted<N: Northbound>(ctx: &Context<N>, ip: &IP) -> Result<(), Error> {
    let Some(owner) = ip
        .annotations()
        .get(OWNER_ANNOTATION)
        .and_then(|o| Owner::parse(o))
    else {
        return Ok(());
    };
    let key = NicKey::from(ip.name_any().as_str());
    let _guard = ctx.locks.lock(key.as_str()).await;
    let Some(lease) = ctx.engine.lease(&key).filter(|l| l.uid == owner.uid) else {
        return Ok(());
    };
    if live_holder(&ctx.stores, &lease, "").is_some() {
        return Ok(());
    }
    let api: Api<IP> = Api::all(ctx.client.clone());
    if api.get_opt(key.as_str()).await?.is_some() {
        return Ok(());
    }
    nic::release(ctx, &key, Some(&lease.uid)).await?;
    let decision = Decision::Release(format!(
        "its IP resource was deleted while no pod of {} {} ran",
        owner.kind.as_str(),
        owner.name
    ));
    announce(ctx, &lease, &owner, &decision, None).await;
    Ok(())
}
