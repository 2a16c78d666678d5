//! A pod at admission: refused when the controller would refuse it for its addressing
//! annotations, with the message of the Event it would get. The same code decides
//! ([`crate::pod::choose`], [`crate::allocate::check_claim`]), on what the leader knows now.
//!
//! Only definite mistakes are refused: an annotation that does not parse, a Subnet or IPPool
//! that does not exist, a static address or MAC that is taken, outside its subnet or pool, or
//! otherwise unusable. A dynamic request is never refused (a full subnet may have room by the
//! time the pod is scheduled), nor one whose Subnet the engine has not applied yet.

use k8s_openapi::api::core::v1::Pod;
use portkeeper_api::request::{AddressRequest, NetworkRequest};
use portkeeper_api::{IPPool, Subnet};
use portkeeper_engine::{IpPoolAnnotation, IpRequest, MacRequest};

use super::lookup::current;
use crate::allocate::check_claim;
use crate::context::Context;
use crate::error::{RejectReason, Rejection};
use crate::nic::{self, holder, target};
use crate::ovn::Northbound;
use crate::plan;

/// Why `pod` must not be created; `None` lets it through.
pub async fn refusal<N: Northbound>(ctx: &Context<N>, pod: &Pod) -> Option<String> {
    if !nic::wants_address(pod) {
        return None;
    }
    let request =
        match NetworkRequest::from_annotations(&ctx.keys, kube::ResourceExt::annotations(pod)) {
            Ok(r) => r,
            Err(e) => return Some(denial(&e.into())),
        };
    let owner = holder::owner_of(pod, &ctx.stores);
    let holder = holder::holder_uid(pod, owner.as_ref());
    let addressing = with_named(ctx, &request).await;
    let catalog = addressing.catalog(&ctx.config.default_ls);
    // Node affinity is left to the controller: a node's labels may change before the pod runs.
    let chosen = match crate::pod::choose(ctx, pod, &holder, &request, &catalog, None) {
        Ok(t) => t,
        Err(r) if r.reason == RejectReason::AwaitingNode => return None,
        Err(r) => return Some(denial(&r)),
    };
    if ctx.engine.subnet_status(&chosen.subnet).is_err() {
        return None;
    }
    let claim = plan::claim(chosen, nic::key(pod), &request, &holder);
    let fixed = !matches!(claim.ip, IpRequest::Dynamic | IpRequest::Pools(_))
        || matches!(claim.mac, MacRequest::Static(_));
    if !fixed {
        return None;
    }
    check_claim(&ctx.engine, &ctx.nb, &claim, |subnet, ip, except| {
        target::ip_resource_holder(&ctx.stores, subnet, ip, except)
    })
    .err()
    .map(|r| denial(&r))
}

/// The refusal as the user reads it: the Event's reason, then its message.
fn denial(r: &Rejection) -> String {
    let reason = r.reason.as_str();
    if r.message.starts_with(reason) {
        r.message.clone()
    } else {
        format!("{reason}: {}", r.message)
    }
}

/// The cached Subnets and IPPools, plus the ones the request names that the caches do not hold
/// yet: a manifest that creates a Subnet and a pod using it is applied in one go, faster than a
/// watch delivers the Subnet.
async fn with_named<N>(ctx: &Context<N>, request: &NetworkRequest) -> target::Addressing {
    let cached = target::Addressing::of(&ctx.stores);
    let (stores, client) = (&ctx.stores, &ctx.client);
    let mut subnets = Vec::new();
    let mut pools = Vec::new();
    if let AddressRequest::Pool(IpPoolAnnotation::Named(name)) = &request.addresses
        && stores.pool(name).is_none()
        && let Some(pool) = current::<IPPool>(None, client, name).await
    {
        let subnet = &pool.spec.subnet;
        if stores.subnet(subnet).is_none() {
            subnets.extend(current::<Subnet>(None, client, subnet).await);
        }
        pools.push(pool);
    }
    if let Some(name) = &request.logical_switch
        && stores.subnet(name).is_none()
    {
        subnets.extend(current::<Subnet>(None, client, name).await);
    }
    cached.with(subnets, pools)
}
