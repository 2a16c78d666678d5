//! One status publisher for the resources whose status carries the engine's address counters
//! and a Ready condition: Subnet and IPPool (the same fields under different JSON spellings).

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use portkeeper_api::{Condition, IPPool, IPPoolStatus, Subnet, SubnetStatus};
use portkeeper_engine::{AddressStatus, Engine};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::plan::{UNSUPPORTED, conditions, status_body};
use crate::context::{Context, FIELD_MANAGER};
use crate::error::Error;

/// A resource whose status counts its addresses.
pub trait Counted:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// Its status type.
    type Status: Serialize + Clone + PartialEq + Default;
    /// The JSON names of the four range fields: an emptied one is sent as `null`, which removes
    /// it (empty strings are not serialised).
    const RANGES: [&'static str; 4];
    /// The status as the cache has it.
    fn status(&self) -> Option<&Self::Status>;
    /// The spec fields set that portkeeper keeps but does not implement.
    fn unsupported(&self, cluster_router: &str) -> Vec<&'static str>;
    /// The status' conditions.
    fn conditions(status: &mut Self::Status) -> &mut Vec<Condition>;
    /// The engine's counters of the object named `name`, once it is applied.
    fn counters(engine: &Engine, name: &str) -> Option<AddressStatus>;
    /// Copies the engine's counters into the status.
    fn count(status: &mut Self::Status, counters: &AddressStatus);
}

fn count(n: u128) -> f64 {
    n as f64
}

/// Implements [`Counted`] for a kind whose status carries the counters under its own JSON
/// spelling of the range fields, with the engine's counters read by `$counters` and the
/// unimplemented spec fields listed by `$unsupported`.
macro_rules! counted {
    ($kind:ty, $status:ty, $ranges:expr, $counters:ident, |$object:ident, $router:ident| $unsupported:expr) => {
        impl Counted for $kind {
            type Status = $status;
            const RANGES: [&'static str; 4] = $ranges;
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
            fn unsupported(&self, cluster_router: &str) -> Vec<&'static str> {
                let ($object, $router) = (self, cluster_router);
                $unsupported
            }
            fn counters(engine: &Engine, name: &str) -> Option<AddressStatus> {
                engine.$counters(name).ok()
            }
            fn conditions(status: &mut $status) -> &mut Vec<Condition> {
                &mut status.conditions
            }
            fn count(status: &mut $status, c: &AddressStatus) {
                status.v4_available_ips = count(c.v4_available_ips);
                status.v4_using_ips = count(c.v4_using_ips);
                status.v6_available_ips = count(c.v6_available_ips);
                status.v6_using_ips = count(c.v6_using_ips);
                status.v4_available_ip_range = c.v4_available_ip_range.clone();
                status.v4_using_ip_range = c.v4_using_ip_range.clone();
                status.v6_available_ip_range = c.v6_available_ip_range.clone();
                status.v6_using_ip_range = c.v6_using_ip_range.clone();
            }
        }
    };
}

counted!(
    Subnet,
    SubnetStatus,
    [
        "v4availableIPrange",
        "v4usingIPrange",
        "v6availableIPrange",
        "v6usingIPrange",
    ],
    subnet_status,
    |subnet, router| subnet.spec.unsupported_fields(router)
);

counted!(
    IPPool,
    IPPoolStatus,
    [
        "v4AvailableIPRange",
        "v4UsingIPRange",
        "v6AvailableIPRange",
        "v6UsingIPRange",
    ],
    pool_status,
    |pool, _router| pool.spec.unsupported_fields()
);

/// Publishes the outcome of applying `object`: on success with the engine's counters, on
/// failure with the error in its `Ready` condition; `amend` adds what else the pass found out
/// (a Subnet's DHCP rows). Refused DHCP options leave the addresses applied and served, so they
/// are still counted.
pub async fn outcome<N, K: Counted>(
    ctx: &Context<N>,
    object: &K,
    result: &Result<(), Error>,
    amend: impl FnOnce(&mut K::Status),
) {
    let counters = match result {
        Ok(()) | Err(Error::Dhcp(_)) => K::counters(&ctx.engine, &object.name_any()),
        Err(_) => None,
    };
    publish(ctx, object, counters, result.as_ref().err(), amend).await;
}

/// Writes the object's status after a pass: the conditions (`Ready`, with `error` when the pass
/// failed; `Unsupported` while the spec sets fields portkeeper does not implement; each
/// announced once by a Warning Event) and the engine's `counters` when there are any. Nothing is written
/// when nothing changed; a failed write is logged and retried with the next pass.
async fn publish<N, K: Counted>(
    ctx: &Context<N>,
    object: &K,
    counters: Option<AddressStatus>,
    error: Option<&Error>,
    amend: impl FnOnce(&mut K::Status),
) {
    let old = object.status().cloned().unwrap_or_default();
    let mut status = old.clone();
    amend(&mut status);
    let unsupported = object.unsupported(&ctx.config.cluster_router);
    let previous = K::conditions(&mut status).clone();
    *K::conditions(&mut status) = conditions(&previous, error, &unsupported);
    announce(ctx, object, &previous, K::conditions(&mut status)).await;
    if let Some(c) = counters {
        K::count(&mut status, &c);
    }
    if status == old {
        return;
    }
    let (kind, name) = (K::kind(&()), object.name_any());
    if let Some(e) = error {
        tracing::warn!(%kind, %name, error = %e, "not ready");
    }
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let body = status_body(&status, &K::RANGES);
    let api: Api<K> = Api::all(ctx.client.clone());
    if let Err(e) = api.patch_status(&name, &params, &Patch::Merge(body)).await {
        tracing::warn!(%kind, %name, error = %e, "status update failed");
    }
}

/// The conditions that are announced: (type, status, Event reason). `Unsupported` names spec
/// fields without effect; `Ready` false says why the object is not applied.
const ANNOUNCED: [(&str, &str, &str); 2] = [
    (UNSUPPORTED, "True", UNSUPPORTED),
    ("Ready", "False", "ReconcileFailed"),
];

/// One Warning Event when an [`ANNOUNCED`] condition appears or changes its message; none while
/// it is unchanged (also across restarts: the conditions live in the status).
async fn announce<N, K>(ctx: &Context<N>, object: &K, old: &[Condition], new: &[Condition])
where
    K: kube::Resource<DynamicType = ()>,
{
    for (type_, status, reason) in ANNOUNCED {
        let find = |list: &[Condition]| {
            list.iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| c.message.clone())
        };
        let Some(message) = find(new) else { continue };
        if find(old).as_ref() == Some(&message) {
            continue;
        }
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: reason.into(),
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
}
