//! Subnets and IPPools: into the engine, into OVN (a switch per subnet with its gateway on the
//! cluster router), their address counters and ranges back into their status, and Kube-OVN's
//! namespace annotations.
//!
//! Each is a kube-runtime controller over its cache with its pure decisions beside it
//! ([`plan`]): a Subnet or IPPool is applied when it changes and its status ([`status`]) is
//! republished every [`STATUS_PERIOD`], because its counters move as pods come and go; a
//! namespace is annotated when it or any Subnet or IPPool changes. A deleted Subnet or IPPool,
//! which no controller sees, is removed by [`remove_deleted`] on every deletion and every
//! period, until no holder is left.

pub mod plan;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use parking_lot::Mutex;
use portkeeper_api::{IPPool, Subnet, SubnetSpec};
use portkeeper_engine::{MacAddress, PoolSpec};
use serde_json::json;

use crate::admission;
use crate::config::Config;
use crate::context::{Context, FIELD_MANAGER};
use crate::dhcp;
use crate::error::Error;
use crate::ovn::{Northbound, SwitchSpec, ids};
use crate::plan::SubnetNetwork;
use crate::stores::AddressingTriggers;
use crate::takeover;

/// How often a Subnet's or IPPool's counters are republished, and a failed one retried.
pub const STATUS_PERIOD: Duration = Duration::from_secs(2);
/// How soon an IPPool whose Subnet is about to be applied is looked at again.
const POOL_WAITS_FOR_SUBNET: Duration = Duration::from_millis(100);

/// Creates the default Subnet from the flags if it does not exist (Kube-OVN's `--default-cidr`).
pub async fn ensure_default_subnet(client: &Client, config: &Config) -> Result<(), Error> {
    let Some(cidr) = &config.default_cidr else {
        return Ok(());
    };
    let api: Api<Subnet> = Api::all(client.clone());
    if api.get_opt(&config.default_ls).await?.is_some() {
        return Ok(());
    }
    let subnet = Subnet::new(
        &config.default_ls,
        SubnetSpec {
            cidr_block: cidr.clone(),
            exclude_ips: config
                .default_exclude_ips
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            default: true,
            provider: "ovn".into(),
            vpc: config.cluster_router.clone(),
            ..SubnetSpec::default()
        },
    );
    match api.create(&PostParams::default(), &subnet).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Remembers what was last pushed, so unchanged specs cost nothing.
#[derive(Default)]
pub struct Applied {
    subnets: Mutex<HashMap<String, (portkeeper_engine::SubnetSpec, SwitchSpec)>>,
    pools: Mutex<HashMap<String, PoolSpec>>,
    /// Deleted Subnets whose remaining holders were already told.
    told: Mutex<HashSet<String>>,
}

/// What the Subnet, IPPool and namespace controllers share.
pub struct Addressing<N> {
    /// The controller's context.
    pub ctx: Arc<Context<N>>,
    /// What was last pushed.
    pub applied: Applied,
}

/// Applies every Subnet, then every IPPool (whose Subnet is then known), removes what was
/// deleted, and annotates every namespace: the start-up pass, before any pod is allocated.
pub async fn apply_all<N: Northbound>(state: &Arc<Addressing<N>>) {
    for subnet in state.ctx.stores.subnets.state() {
        let _ = reconcile_subnet(subnet, state.clone()).await;
    }
    for pool in state.ctx.stores.pools.state() {
        let _ = reconcile_pool(pool, state.clone()).await;
    }
    remove_deleted(state).await;
    for namespace in state.ctx.stores.namespaces.state() {
        let _ = reconcile_namespace(namespace, state.clone()).await;
    }
}

/// Runs the Subnet, IPPool and namespace controllers and the removal of deleted ones until the
/// task is dropped.
pub async fn run<N: Northbound>(state: Arc<Addressing<N>>, triggers: AddressingTriggers) {
    let stores = &state.ctx.stores;
    let subnets = Controller::for_stream(triggers.subnets.map(Ok), stores.subnets.clone()).run(
        reconcile_subnet,
        retry,
        state.clone(),
    );
    let pools = Controller::for_stream(triggers.pools.map(Ok), stores.pools.clone()).run(
        reconcile_pool,
        retry,
        state.clone(),
    );
    let namespaces = Controller::for_stream(triggers.namespaces.map(Ok), stores.namespaces.clone())
        .reconcile_all_on(triggers.changed)
        .run(reconcile_namespace, retry, state.clone());
    tokio::join!(
        drain(subnets),
        drain(pools),
        drain(namespaces),
        removals(&state, triggers.deleted),
    );
}

async fn drain<T>(results: impl Stream<Item = T>) {
    results.for_each(|_| futures::future::ready(())).await;
}

/// A failed Subnet, IPPool or namespace is looked at again after [`STATUS_PERIOD`].
fn retry<K: Resource<DynamicType = ()>, N>(
    object: Arc<K>,
    error: &Error,
    _: Arc<Addressing<N>>,
) -> Action {
    tracing::debug!(kind = %K::kind(&()), name = %object.name_any(), %error, "retrying");
    Action::requeue(STATUS_PERIOD)
}

/// Applies a Subnet and publishes its status; looked at again after [`STATUS_PERIOD`] to
/// republish its counters.
async fn reconcile_subnet<N: Northbound>(
    subnet: Arc<Subnet>,
    state: Arc<Addressing<N>>,
) -> Result<Action, Error> {
    let ctx = &state.ctx;
    takeover::drop_kube_ovn_finalizers(&ctx.client, subnet.as_ref()).await?;
    let result = match apply_subnet(ctx, &state.applied, &subnet).await {
        Ok(()) => dhcp::apply_subnet(ctx, &subnet).await,
        Err(e) => Err(e),
    };
    let rows = result.as_ref().ok().cloned();
    let result = result.map(drop);
    status::outcome(ctx, subnet.as_ref(), &result, |status| {
        if let Some(rows) = rows {
            rows.publish(status);
        }
    })
    .await;
    result.map(|()| Action::requeue(STATUS_PERIOD))
}

/// Applies an IPPool and publishes its status, like [`reconcile_subnet`]. A pool whose Subnet
/// exists but is not applied yet (nor refused) waits for it instead of failing.
async fn reconcile_pool<N: Northbound>(
    pool: Arc<IPPool>,
    state: Arc<Addressing<N>>,
) -> Result<Action, Error> {
    let (ctx, applied) = (&state.ctx, &state.applied);
    takeover::drop_kube_ovn_finalizers(&ctx.client, pool.as_ref()).await?;
    let spec = plan::engine_pool(&pool);
    let subnet_pending = !applied.subnets.lock().contains_key(&spec.subnet)
        && ctx
            .stores
            .subnets
            .get(&kube::runtime::reflector::ObjectRef::new(&spec.subnet))
            .is_some_and(|subnet| !failed(&subnet));
    if subnet_pending {
        return Ok(Action::requeue(POOL_WAITS_FOR_SUBNET));
    }
    let result = if applied.pools.lock().get(&spec.name) == Some(&spec) {
        Ok(())
    } else {
        ctx.engine
            .upsert_pool(&spec)
            .map_err(Error::from)
            .map(|()| {
                applied.pools.lock().insert(spec.name.clone(), spec.clone());
            })
    };
    status::outcome(ctx, pool.as_ref(), &result, |_| {}).await;
    result.map(|()| Action::requeue(STATUS_PERIOD))
}

/// Whether a Subnet's status says its last apply failed.
fn failed(subnet: &Subnet) -> bool {
    subnet.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False")
    })
}

/// Writes Kube-OVN's namespace annotations ([`plan::namespace_annotations`]) where they differ.
async fn reconcile_namespace<N: Northbound>(
    namespace: Arc<Namespace>,
    state: Arc<Addressing<N>>,
) -> Result<Action, Error> {
    let ctx = &state.ctx;
    let name = namespace.name_any();
    let current = namespace.annotations();
    let written = current.get(&ctx.keys.logical_switch).map(String::as_str);
    let wanted = plan::namespace_annotations(
        &name,
        &ctx.stores.subnets.state(),
        &ctx.stores.pools.state(),
        &ctx.config.default_ls,
        written,
    );
    if wanted.iter().all(|(k, v)| current.get(k) == v.as_ref()) {
        return Ok(Action::await_change());
    }
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    // Conditional on the version read: a user's edit of the order that the cache has not
    // caught up with is never overwritten (a conflict is retried on the fresher copy).
    let body = json!({ "metadata": {
        "annotations": wanted,
        "resourceVersion": namespace.resource_version(),
    } });
    if let Err(e) = Api::<Namespace>::all(ctx.client.clone())
        .patch(&name, &params, &Patch::Merge(body))
        .await
    {
        tracing::warn!(namespace = %name, error = %e, "namespace annotation update failed");
        return Err(e.into());
    }
    Ok(Action::await_change())
}

/// Removes deleted Subnets and IPPools on every deletion and every [`STATUS_PERIOD`].
async fn removals<N: Northbound>(state: &Arc<Addressing<N>>, mut deleted: UnboundedReceiver<()>) {
    let mut tick = tokio::time::interval(STATUS_PERIOD);
    loop {
        tokio::select! {
            d = deleted.next() => if d.is_none() { return },
            _ = tick.tick() => {}
        }
        while deleted.try_recv().is_ok() {}
        remove_deleted(state).await;
        if let Err(e) = dhcp::collect_garbage(&state.ctx).await {
            tracing::warn!(error = %e, "removing unused DHCP_Options rows failed; retrying");
        }
    }
}

/// Removes from the engine and OVN every Subnet applied by this process, or whose switch an
/// earlier one made (deleted while the controller was down), that no Subnet names any more,
/// and every IPPool no longer there.
pub async fn remove_deleted<N: Northbound>(state: &Addressing<N>) {
    let (ctx, applied) = (&state.ctx, &state.applied);
    let names: HashSet<String> = ctx
        .stores
        .subnets
        .state()
        .iter()
        .map(|s| s.name_any())
        .collect();
    let mut deleted: Vec<String> = applied
        .subnets
        .lock()
        .keys()
        .cloned()
        .chain(ctx.nb.subnet_switches())
        .filter(|name| !names.contains(name))
        .collect();
    deleted.sort();
    deleted.dedup();
    for name in deleted {
        remove_deleted_subnet(ctx, applied, &name).await;
    }
    let pools: HashSet<String> = ctx
        .stores
        .pools
        .state()
        .iter()
        .map(|p| p.name_any())
        .collect();
    applied.pools.lock().retain(|name, _| {
        pools.contains(name) || {
            if let Err(e) = ctx.engine.remove_pool(name) {
                tracing::warn!(pool = %name, error = %e, "could not remove IPPool");
            }
            false
        }
    });
}

/// A deleted Subnet leaves the engine and OVN (its switch, the switch's ports and its gateway
/// router port, only those portkeeper made) once no nic holds an address in it. Until then it
/// stays, so no pod loses its network under it: each holding pod gets one `SubnetDeleted`
/// Warning Event, and the removal is retried with every pass until the last holder is gone.
///
/// A Subnet deleted while the controller was down is not in the engine; its switch is found in
/// OVN, and its holders are the switch's ports of pods that still exist and the ports portkeeper
/// did not make. Once the pods are gone, garbage collection removes their ports and the switch
/// follows.
async fn remove_deleted_subnet<N: Northbound>(ctx: &Context<N>, applied: &Applied, name: &str) {
    let holders = match ctx.engine.remove_subnet(name) {
        Ok(()) => Vec::new(),
        Err(portkeeper_engine::EngineError::UnknownSubnet { .. }) => switch_holders(ctx, name),
        Err(_) => plan::deleted_subnet_holders(&ctx.engine, name),
    };
    if !holders.is_empty() {
        if !applied.told.lock().insert(name.to_owned()) {
            return;
        }
        for (namespace, pod, message) in holders {
            tracing::warn!(subnet = %name, %namespace, %pod, "{message}");
            if let Some(p) = ctx.stores.pod(&namespace, &pod) {
                let reference = kube::Resource::object_ref(p.as_ref(), &());
                let event = kube::runtime::events::Event {
                    type_: kube::runtime::events::EventType::Warning,
                    reason: "SubnetDeleted".into(),
                    note: Some(message),
                    action: "Release".into(),
                    secondary: None,
                };
                ctx.events.publish(&reference, event).await;
            }
        }
        return;
    }
    let router = &ctx.config.cluster_router;
    match ctx
        .nb
        .delete_switch(name, router, &plan::router_port_name(router, name))
        .await
    {
        Ok(()) => {
            tracing::info!(subnet = %name, "deleted Subnet removed from OVN");
            applied.subnets.lock().remove(name);
            applied.told.lock().remove(name);
        }
        Err(e) => {
            tracing::warn!(subnet = %name, error = %e, "removing a deleted Subnet's switch failed; retrying")
        }
    }
}

/// The holders of the switch of a Subnet the engine does not know (deleted while the
/// controller was down), as [`plan::deleted_subnet_holders`] gives them: each port of a pod that
/// still exists, and each port portkeeper did not make (with no pod to tell).
fn switch_holders<N: Northbound>(ctx: &Context<N>, subnet: &str) -> Vec<(String, String, String)> {
    ctx.nb
        .ports_on_switch(subnet)
        .into_iter()
        .filter(|port| port.kind != "router")
        .filter_map(|port| {
            let held = port
                .ips()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let message = plan::subnet_deleted_message(subnet, &port.name, &held);
            if !port.is_ours() {
                return Some((String::new(), String::new(), message));
            }
            let (namespace, pod) = port.external_ids.get(ids::POD)?.split_once('/')?;
            ctx.stores
                .pod(namespace, pod)
                .map(|_| (namespace.to_owned(), pod.to_owned(), message))
        })
        .collect()
}

/// Applies a Subnet to the engine and OVN, unless it is as last applied.
async fn apply_subnet<N: Northbound>(
    ctx: &Context<N>,
    applied: &Applied,
    subnet: &Subnet,
) -> Result<(), Error> {
    let name = subnet.name_any();
    let subnets = ctx.stores.subnets.state();
    let earlier = subnets
        .iter()
        .map(AsRef::as_ref)
        .filter(|other| admission::precedes(other, subnet));
    if let Some(why) = admission::subnet_refusal(subnet, earlier, &ctx.config.cluster_router) {
        return Err(Error::Refused(why));
    }
    let network = SubnetNetwork::of(subnet)?;
    backfill_spec(ctx, subnet, &network).await;
    let router_port = plan::router_port_name(&ctx.config.cluster_router, &name);
    let previous = applied.subnets.lock().get(&name).cloned();
    let gateway_mac = previous
        .as_ref()
        .map(|(_, s)| s.router_port_mac)
        .or_else(|| ctx.nb.router_port_mac(&router_port))
        .unwrap_or_else(|| MacAddress::random(&mut rand::rng()));
    let spec = plan::engine_subnet(subnet, &network, Some(gateway_mac));
    let switch = SwitchSpec {
        name: name.clone(),
        router: ctx.config.cluster_router.clone(),
        router_port,
        router_port_mac: gateway_mac,
        networks: network.router_networks(),
    };
    if previous.as_ref() == Some(&(spec.clone(), switch.clone())) {
        return Ok(());
    }
    let stranded = ctx.engine.upsert_subnet(&spec)?;
    for s in stranded {
        tracing::warn!(subnet = %name, nic = %s.key, address = %s.address, reason = ?s.reason,
            "holder no longer fits its subnet; kept until it is released");
    }
    ctx.nb.ensure_switch(&switch).await?;
    applied.subnets.lock().insert(name, (spec, switch));
    Ok(())
}

/// Writes [`plan::spec_defaults`] into the Subnet; a failure is logged and retried with the next pass.
async fn backfill_spec<N>(ctx: &Context<N>, subnet: &Subnet, network: &SubnetNetwork) {
    let defaults = plan::spec_defaults(subnet, network);
    if defaults.is_empty() {
        return;
    }
    let api: Api<Subnet> = Api::all(ctx.client.clone());
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let body = json!({ "spec": defaults });
    if let Err(e) = api
        .patch(&subnet.name_any(), &params, &Patch::Merge(body))
        .await
    {
        tracing::warn!(subnet = %subnet.name_any(), error = %e, "could not fill in the Subnet's defaults");
    }
}
