//! Subnets and IPPools: into the engine, into OVN (a switch per subnet with its gateway on the
//! cluster router), and their address counters and ranges back into their status.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;
use portkeeper_api::annotations::{self, NetworkKeys};
use portkeeper_api::{Condition, IPPool, IPPoolStatus, Subnet, SubnetSpec, SubnetStatus};
use portkeeper_engine::{AddressStatus, MacAddress, PoolSpec};
use serde_json::json;

use crate::config::Config;
use crate::context::{Context, FIELD_MANAGER};
use crate::error::Error;
use crate::ovn::{Northbound, SwitchSpec, ids};
use crate::plan::SubnetNetwork;

/// How often counters are republished even without a Subnet or IPPool event.
const STATUS_PERIOD: Duration = Duration::from_secs(2);

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

/// The engine's view of a Subnet.
pub fn engine_subnet(
    subnet: &Subnet,
    network: &SubnetNetwork,
    gateway_mac: Option<MacAddress>,
) -> portkeeper_engine::SubnetSpec {
    portkeeper_engine::SubnetSpec {
        name: subnet.name_any(),
        cidr_block: subnet.spec.cidr_block.clone(),
        gateway: network.gateway.to_string(),
        exclude_ips: subnet.spec.exclude_ips.clone(),
        gateway_mac,
    }
}

/// The engine's view of an IPPool.
pub fn engine_pool(pool: &IPPool) -> PoolSpec {
    PoolSpec {
        name: pool.name_any(),
        subnet: pool.spec.subnet.clone(),
        ips: pool.spec.ips.clone(),
    }
}

/// The router port of a subnet's gateway, named as Kube-OVN names it.
pub fn router_port_name(router: &str, subnet: &str) -> String {
    format!("{router}-{subnet}")
}

/// Remembers what was last pushed, so unchanged specs cost nothing.
#[derive(Default)]
pub struct Applied {
    subnets: Mutex<HashMap<String, (portkeeper_engine::SubnetSpec, SwitchSpec)>>,
    pools: Mutex<HashMap<String, PoolSpec>>,
    /// Deleted Subnets whose remaining holders were already told.
    told: Mutex<std::collections::HashSet<String>>,
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
        Err(_) => deleted_subnet_holders(&ctx.engine, name),
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
        .delete_switch(name, router, &router_port_name(router, name))
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

/// (namespace, pod, message) for each pod nic still holding an address in the deleted `subnet`.
pub fn deleted_subnet_holders(
    engine: &portkeeper_engine::Engine,
    subnet: &str,
) -> Vec<(String, String, String)> {
    engine
        .snapshot()
        .records
        .into_iter()
        .filter(|r| r.lease.subnet == subnet)
        .filter_map(|r| {
            let (pod, namespace) = r.lease.key.as_str().rsplit_once('.')?;
            let held = r.lease.addresses().to_string();
            let message = subnet_deleted_message(subnet, r.lease.key.as_str(), &held);
            Some((namespace.to_owned(), pod.to_owned(), message))
        })
        .collect()
}

/// The holders of the switch of a Subnet the engine does not know (deleted while the
/// controller was down), as [`deleted_subnet_holders`] gives them: each port of a pod that
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
            let message = subnet_deleted_message(subnet, &port.name, &held);
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

fn subnet_deleted_message(subnet: &str, holder: &str, held: &str) -> String {
    format!(
        "SubnetDeleted: subnet {subnet} was deleted while {holder} holds {held} in it; its switch stays in OVN until every holder is gone"
    )
}

/// Applies every Subnet and IPPool whenever one changes, and republishes status periodically.
pub async fn run<N: Northbound>(
    ctx: std::sync::Arc<Context<N>>,
    mut triggers: UnboundedReceiver<()>,
) {
    let applied = Applied::default();
    let mut tick = tokio::time::interval(STATUS_PERIOD);
    loop {
        tokio::select! {
            t = triggers.next() => if t.is_none() { return },
            _ = tick.tick() => {}
        }
        while triggers.try_recv().is_ok() {}
        sync(&ctx, &applied).await;
    }
}

/// One pass over every Subnet and IPPool.
pub async fn sync<N: Northbound>(ctx: &Context<N>, applied: &Applied) {
    let subnets = ctx.stores.subnets.state();
    for subnet in &subnets {
        let result = sync_subnet(ctx, applied, subnet).await;
        let status = match &result {
            Ok(()) => ctx.engine.subnet_status(&subnet.name_any()).ok(),
            Err(_) => None,
        };
        publish_subnet_status(ctx, subnet, status, result.err()).await;
    }
    let names: Vec<String> = subnets.iter().map(|s| s.name_any()).collect();
    // Subnets applied by this process, and switches made by an earlier one (a Subnet deleted
    // while the controller was down), that no Subnet names any more.
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

    let pools = ctx.stores.pools.state();
    for pool in &pools {
        let spec = engine_pool(pool);
        let result = if applied.pools.lock().get(&spec.name) == Some(&spec) {
            Ok(())
        } else {
            ctx.engine.upsert_pool(&spec).map(|()| {
                applied.pools.lock().insert(spec.name.clone(), spec.clone());
            })
        };
        let status = match &result {
            Ok(()) => ctx.engine.pool_status(&spec.name).ok(),
            Err(_) => None,
        };
        publish_pool_status(ctx, pool, status, result.err().map(Error::from)).await;
    }
    sync_namespaces(ctx, &subnets, &pools).await;
    let names: Vec<String> = pools.iter().map(|p| p.name_any()).collect();
    applied.pools.lock().retain(|name, _| {
        names.contains(name) || {
            if let Err(e) = ctx.engine.remove_pool(name) {
                tracing::warn!(pool = %name, error = %e, "could not remove IPPool");
            }
            false
        }
    });
}

async fn sync_subnet<N: Northbound>(
    ctx: &Context<N>,
    applied: &Applied,
    subnet: &Subnet,
) -> Result<(), Error> {
    let name = subnet.name_any();
    let network = SubnetNetwork::of(subnet)?;
    backfill_spec(ctx, subnet, &network).await;
    let router_port = router_port_name(&ctx.config.cluster_router, &name);
    let previous = applied.subnets.lock().get(&name).cloned();
    let gateway_mac = previous
        .as_ref()
        .map(|(_, s)| s.router_port_mac)
        .or_else(|| ctx.nb.router_port_mac(&router_port))
        .unwrap_or_else(|| MacAddress::random(&mut rand::rng()));
    let spec = engine_subnet(subnet, &network, Some(gateway_mac));
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

/// The spec fields Kube-OVN fills in when a Subnet leaves them out: `gateway` (the first usable
/// address of each family), `excludeIps` (the gateways) and `protocol` (`IPv4`, `IPv6` or
/// `Dual`). Only missing fields are returned, so the patch never overwrites what a user wrote
/// and never sends an empty value (the apiserver refuses empty strings).
pub fn spec_defaults(
    subnet: &Subnet,
    network: &SubnetNetwork,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    if subnet.spec.gateway.trim().is_empty() {
        out.insert("gateway".into(), network.gateway.to_string().into());
    }
    if subnet.spec.exclude_ips.is_empty() {
        let gateways: Vec<String> = network.gateway.addresses().map(|a| a.to_string()).collect();
        out.insert("excludeIps".into(), gateways.into());
    }
    if subnet.spec.protocol.trim().is_empty() {
        let protocol = match (network.block.v4, network.block.v6) {
            (Some(_), Some(_)) => "Dual",
            (None, Some(_)) => "IPv6",
            _ => "IPv4",
        };
        out.insert("protocol".into(), protocol.into());
    }
    out
}

/// Writes [`spec_defaults`] into the Subnet; a failure is logged and retried with the next pass.
async fn backfill_spec<N>(ctx: &Context<N>, subnet: &Subnet, network: &SubnetNetwork) {
    let defaults = spec_defaults(subnet, network);
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

/// Kube-OVN's namespace annotations: the bound subnets (`logical_switch`, else the default
/// subnet), their CIDRs (`;`-joined), their excludeIps (`,` inside a subnet, `;` between) and the
/// bound IPPools (`ip_pool`, removed when none). `None` removes a key.
///
/// The subnets keep the order `written` (the annotation's current value) gives them, so a user
/// who reorders the list is obeyed; newly bound subnets are appended (see
/// [`crate::plan::bound_subnets`]).
pub fn namespace_annotations(
    namespace: &str,
    subnets: &[std::sync::Arc<Subnet>],
    pools: &[std::sync::Arc<IPPool>],
    default_subnet: &str,
    written: Option<&str>,
) -> BTreeMap<String, Option<String>> {
    let keys = NetworkKeys::primary();
    let mut bound =
        crate::plan::bound_subnets(subnets.iter().map(|s| s.as_ref()), namespace, written);
    if bound.is_empty() {
        let default = subnets
            .iter()
            .find(|s| s.spec.default)
            .map(|s| s.name_any())
            .unwrap_or_else(|| default_subnet.to_owned());
        bound.extend(
            subnets
                .iter()
                .map(|s| s.as_ref())
                .filter(|s| s.name_any() == default),
        );
    }
    let mut pool_names: Vec<String> = pools
        .iter()
        .filter(|p| p.spec.namespaces.iter().any(|n| n == namespace))
        .map(|p| p.name_any())
        .collect();
    pool_names.sort();
    let join = |f: &dyn Fn(&Subnet) -> String, sep: &str| {
        bound.iter().map(|s| f(s)).collect::<Vec<_>>().join(sep)
    };
    BTreeMap::from([
        (
            keys.logical_switch.clone(),
            Some(join(&|s| s.name_any(), ",")),
        ),
        (
            keys.cidr.clone(),
            Some(join(&|s| s.spec.cidr_block.clone(), ";")),
        ),
        (
            annotations::key(annotations::DEFAULT_PROVIDER, annotations::EXCLUDE_IPS),
            Some(join(&|s| s.spec.exclude_ips.join(","), ";")),
        ),
        (
            keys.ip_pool.clone(),
            (!pool_names.is_empty()).then(|| pool_names.join(",")),
        ),
    ])
}

async fn sync_namespaces<N>(
    ctx: &Context<N>,
    subnets: &[std::sync::Arc<Subnet>],
    pools: &[std::sync::Arc<IPPool>],
) {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    for namespace in ctx.stores.namespaces.state() {
        let name = namespace.name_any();
        let current = namespace.annotations();
        let written = current.get(&ctx.keys.logical_switch).map(String::as_str);
        let wanted = namespace_annotations(&name, subnets, pools, &ctx.config.default_ls, written);
        if wanted.iter().all(|(k, v)| current.get(k) == v.as_ref()) {
            continue;
        }
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        let body = json!({ "metadata": { "annotations": wanted } });
        if let Err(e) = api.patch(&name, &params, &Patch::Merge(body)).await {
            tracing::warn!(namespace = %name, error = %e, "namespace annotation update failed");
        }
    }
}

fn count(n: u128) -> f64 {
    n as f64
}

/// The condition type naming the spec fields portkeeper keeps but does not implement.
pub const UNSUPPORTED: &str = "Unsupported";

/// The status conditions of a Subnet or IPPool: `Ready` from the last apply, and `Unsupported`
/// while the spec sets fields portkeeper does not implement. A condition whose content is
/// unchanged keeps its timestamps.
pub fn conditions(
    previous: &[Condition],
    error: Option<&Error>,
    unsupported: &[&str],
) -> Vec<Condition> {
    let ready = match error {
        None => ("True", "ReconcileSucceeded", String::new()),
        Some(e) => ("False", "ReconcileFailed", e.to_string()),
    };
    let mut out = vec![condition(previous, "Ready", ready)];
    if let Some(message) = unsupported_message(unsupported) {
        out.push(condition(
            previous,
            UNSUPPORTED,
            ("True", "FieldsNotImplemented", message),
        ));
    }
    out
}

/// What the `Unsupported` condition and the Warning Event say about `fields`.
pub fn unsupported_message(fields: &[&str]) -> Option<String> {
    (!fields.is_empty()).then(|| {
        format!(
            "portkeeper does not implement {}; kept in the spec, without effect",
            fields.join(", ")
        )
    })
}

fn condition(
    previous: &[Condition],
    type_: &str,
    (status, reason, message): (&str, &str, String),
) -> Condition {
    if let Some(old) = previous.iter().find(|c| c.type_ == type_)
        && old.status == status
        && old.reason == reason
        && old.message == message
    {
        return old.clone();
    }
    let now = Timestamp::now().to_string();
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
        observed_generation: None,
    }
}

/// One Warning Event when the `Unsupported` condition appears or names other fields; none
/// while it is unchanged (also across restarts: the condition lives in the status).
async fn announce_unsupported<N, K>(
    ctx: &Context<N>,
    object: &K,
    old: &[Condition],
    new: &[Condition],
) where
    K: kube::Resource<DynamicType = ()>,
{
    let find = |list: &[Condition]| {
        list.iter()
            .find(|c| c.type_ == UNSUPPORTED)
            .map(|c| c.message.clone())
    };
    let Some(message) = find(new) else { return };
    if find(old).as_ref() == Some(&message) {
        return;
    }
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: UNSUPPORTED.into(),
        note: Some(message),
        action: "Apply".into(),
        secondary: None,
    };
    // The API server takes an Event about a custom resource only when the Event's namespace
    // matches the object's, so one about a cluster-scoped object names `default` for both.
    let mut reference = object.object_ref(&());
    reference.namespace.get_or_insert_with(|| "default".into());
    ctx.events.publish(&reference, event).await;
}

/// Copies the engine's counters into a Subnet or IPPool status: both carry the same fields,
/// under different JSON spellings.
macro_rules! copy_counters {
    ($status:ident, $c:ident) => {
        $status.v4_available_ips = count($c.v4_available_ips);
        $status.v4_using_ips = count($c.v4_using_ips);
        $status.v6_available_ips = count($c.v6_available_ips);
        $status.v6_using_ips = count($c.v6_using_ips);
        $status.v4_available_ip_range = $c.v4_available_ip_range;
        $status.v4_using_ip_range = $c.v4_using_ip_range;
        $status.v6_available_ip_range = $c.v6_available_ip_range;
        $status.v6_using_ip_range = $c.v6_using_ip_range;
    };
}

async fn publish_subnet_status<N>(
    ctx: &Context<N>,
    subnet: &Subnet,
    counters: Option<AddressStatus>,
    error: Option<Error>,
) {
    let old = subnet.status.clone().unwrap_or_default();
    let unsupported = subnet.spec.unsupported_fields(&ctx.config.cluster_router);
    let mut status = SubnetStatus {
        conditions: conditions(&old.conditions, error.as_ref(), &unsupported),
        ..old.clone()
    };
    announce_unsupported(ctx, subnet, &old.conditions, &status.conditions).await;
    if let Some(c) = counters {
        copy_counters!(status, c);
    }
    if status == old {
        return;
    }
    if let Some(e) = &error {
        tracing::warn!(subnet = %subnet.name_any(), error = %e, "subnet not ready");
    }
    let api: Api<Subnet> = Api::all(ctx.client.clone());
    let body = status_body(
        &status,
        &[
            "v4availableIPrange",
            "v4usingIPrange",
            "v6availableIPrange",
            "v6usingIPrange",
        ],
    );
    patch_status(api, &subnet.name_any(), body).await;
}

async fn publish_pool_status<N>(
    ctx: &Context<N>,
    pool: &IPPool,
    counters: Option<AddressStatus>,
    error: Option<Error>,
) {
    let old = pool.status.clone().unwrap_or_default();
    let mut status = IPPoolStatus {
        conditions: conditions(
            &old.conditions,
            error.as_ref(),
            &pool.spec.unsupported_fields(),
        ),
        ..old.clone()
    };
    announce_unsupported(ctx, pool, &old.conditions, &status.conditions).await;
    if let Some(c) = counters {
        copy_counters!(status, c);
    }
    if status == old {
        return;
    }
    if let Some(e) = &error {
        tracing::warn!(ippool = %pool.name_any(), error = %e, "ippool not ready");
    }
    let api: Api<IPPool> = Api::all(ctx.client.clone());
    let body = status_body(
        &status,
        &[
            "v4AvailableIPRange",
            "v4UsingIPRange",
            "v6AvailableIPRange",
            "v6UsingIPRange",
        ],
    );
    patch_status(api, &pool.name_any(), body).await;
}

/// The merge-patch body of a status: empty strings are not serialised, so each emptied
/// `range` key is sent as `null`, which removes it.
fn status_body(status: &impl serde::Serialize, ranges: &[&str]) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        for key in ranges {
            map.entry(*key).or_insert(serde_json::Value::Null);
        }
    }
    json!({ "status": value })
}

async fn patch_status<K>(api: Api<K>, name: &str, body: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    if let Err(e) = api.patch_status(name, &params, &Patch::Merge(body)).await {
        tracing::warn!(%name, error = %e, "status update failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portkeeper_api::IPPoolSpec;
    use std::sync::Arc;

    fn subnet(
        name: &str,
        cidr: &str,
        namespaces: &[&str],
        exclude: &[&str],
        default: bool,
    ) -> Arc<Subnet> {
        Arc::new(Subnet::new(
            name,
            SubnetSpec {
                cidr_block: cidr.into(),
                namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
                exclude_ips: exclude.iter().map(|s| s.to_string()).collect(),
                default,
                ..Default::default()
            },
        ))
    }

    #[test]
    fn missing_spec_fields_get_kube_ovn_defaults_and_nothing_else() {
        let s = subnet("d", "10.16.0.0/16,fd00::/64", &[], &[], false);
        let d = spec_defaults(&s, &SubnetNetwork::of(&s).unwrap());
        assert_eq!(d["gateway"], "10.16.0.1,fd00::1");
        assert_eq!(d["excludeIps"], serde_json::json!(["10.16.0.1", "fd00::1"]));
        assert_eq!(d["protocol"], "Dual");
        let mut written = (*s).clone();
        written.spec.gateway = "10.16.0.254".into();
        written.spec.exclude_ips = vec!["10.16.0.10..10.16.0.20".into()];
        written.spec.protocol = "Dual".into();
        assert!(spec_defaults(&written, &SubnetNetwork::of(&written).unwrap()).is_empty());
        let v6 = subnet("v6", "fd00::/64", &[], &[], false);
        assert_eq!(
            spec_defaults(&v6, &SubnetNetwork::of(&v6).unwrap())["protocol"],
            "IPv6"
        );
    }

    #[test]
    fn the_gateway_in_exclude_ips_is_not_counted_twice() {
        let engine = portkeeper_engine::Engine::new();
        let counts = |exclude: Vec<String>| {
            engine
                .upsert_subnet(&portkeeper_engine::SubnetSpec {
                    name: "n".into(),
                    cidr_block: "10.40.0.0/24".into(),
                    gateway: "10.40.0.1".into(),
                    exclude_ips: exclude,
                    ..Default::default()
                })
                .unwrap();
            engine.subnet_status("n").unwrap().v4_available_ips
        };
        assert_eq!(counts(vec![]), counts(vec!["10.40.0.1".into()]));
    }

    #[test]
    fn a_deleted_subnet_names_each_remaining_holder() {
        let engine = portkeeper_engine::Engine::new();
        for (name, cidr) in [("gone", "10.30.0.0/24"), ("kept", "10.31.0.0/24")] {
            engine
                .upsert_subnet(&portkeeper_engine::SubnetSpec {
                    name: name.into(),
                    cidr_block: cidr.into(),
                    ..Default::default()
                })
                .unwrap();
        }
        for (subnet, key) in [("gone", "web.shop"), ("kept", "db.shop")] {
            engine
                .claim(&portkeeper_engine::Claim::dynamic(
                    subnet,
                    portkeeper_engine::NicKey::from(key),
                    "u",
                ))
                .unwrap();
        }
        let holders = deleted_subnet_holders(&engine, "gone");
        assert_eq!(holders.len(), 1);
        let (namespace, pod, message) = &holders[0];
        assert_eq!((namespace.as_str(), pod.as_str()), ("shop", "web"));
        assert!(
            message.contains("subnet gone") && message.contains("10.30.0.2"),
            "{message}"
        );
        assert!(engine.remove_subnet("gone").is_err(), "refused while held");
    }

    #[test]
    fn unsupported_fields_are_a_condition_of_their_own() {
        let fresh = conditions(&[], None, &["natOutgoing", "vlan"]);
        assert_eq!(fresh.len(), 2);
        assert_eq!(
            (fresh[0].type_.as_str(), fresh[0].status.as_str()),
            ("Ready", "True")
        );
        let unsupported = &fresh[1];
        assert_eq!(unsupported.type_, UNSUPPORTED);
        assert_eq!(unsupported.status, "True");
        assert!(
            unsupported.message.contains("natOutgoing, vlan"),
            "{}",
            unsupported.message
        );
        // Unchanged conditions keep their timestamps; a failure changes only Ready.
        let mut aged = fresh.clone();
        for c in &mut aged {
            c.last_transition_time = Some("2020-01-01T00:00:00Z".into());
        }
        assert_eq!(conditions(&aged, None, &["natOutgoing", "vlan"]), aged);
        let failed = conditions(
            &aged,
            Some(&Error::Cache("x".into())),
            &["natOutgoing", "vlan"],
        );
        assert_eq!(failed[0].status, "False");
        assert_eq!(failed[1], aged[1]);
        // Once the fields are gone, so is the condition.
        assert_eq!(conditions(&aged, None, &[]).len(), 1);
    }

    #[test]
    fn namespace_annotations_as_kube_ovn_writes_them() {
        let subnets = vec![
            subnet("ovn-default", "10.16.0.0/16", &[], &["10.16.0.1"], true),
            subnet(
                "b",
                "10.18.0.0/24",
                &["shop"],
                &["10.18.0.1", "10.18.0.5..10.18.0.9"],
                false,
            ),
            subnet("a", "10.17.0.0/24", &["shop"], &[], false),
        ];
        let pools = vec![Arc::new(IPPool::new(
            "p1",
            IPPoolSpec {
                subnet: "a".into(),
                namespaces: vec!["shop".into()],
                ..Default::default()
            },
        ))];
        let a = namespace_annotations("shop", &subnets, &pools, "ovn-default", None);
        let get = |k: &str| a[&format!("ovn.kubernetes.io/{k}")].clone();
        assert_eq!(get("logical_switch").as_deref(), Some("a,b"));
        assert_eq!(get("cidr").as_deref(), Some("10.17.0.0/24;10.18.0.0/24"));
        assert_eq!(
            get("exclude_ips").as_deref(),
            Some(";10.18.0.1,10.18.0.5..10.18.0.9")
        );
        assert_eq!(get("ip_pool").as_deref(), Some("p1"));

        // The order written in the namespace stays, with CIDRs and excludeIps in that order.
        let a = namespace_annotations("shop", &subnets, &pools, "ovn-default", Some("b,a"));
        let get = |k: &str| a[&format!("ovn.kubernetes.io/{k}")].clone();
        assert_eq!(get("logical_switch").as_deref(), Some("b,a"));
        assert_eq!(get("cidr").as_deref(), Some("10.18.0.0/24;10.17.0.0/24"));

        let a = namespace_annotations("other", &subnets, &pools, "ovn-default", None);
        assert_eq!(
            a["ovn.kubernetes.io/logical_switch"].as_deref(),
            Some("ovn-default")
        );
        assert_eq!(a["ovn.kubernetes.io/ip_pool"], None);
    }
}
