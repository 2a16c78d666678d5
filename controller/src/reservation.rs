//! The reservation loop: an IP resource a user creates to hold an address for a future pod is
//! allocated when it appears ([`crate::nic::reserve`]); one that cannot be (no such Subnet, an
//! address taken or outside the Subnet) gets a Warning Event and is retried with backoff. A
//! deleted reservation frees its address unless a pod of its name holds it.

use std::sync::Arc;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use portkeeper_api::{IP, annotations};
use portkeeper_engine::NicKey;

use crate::context::Context;
use crate::error::Error;
use crate::nic::{self, holder, reserve};
use crate::ovn::Northbound;

/// Allocates every reservation the IP resource watch reports, until the task is dropped.
pub async fn run<N: Northbound>(ctx: Arc<Context<N>>, applied: UnboundedReceiver<IP>) {
    let store = ctx.stores.ips.clone();
    Controller::for_stream(applied.map(Ok), store)
        .run(reconcile, retry, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

async fn reconcile<N: Northbound>(ip: Arc<IP>, ctx: Arc<Context<N>>) -> Result<Action, Error> {
    if ip.metadata.deletion_timestamp.is_some() || !reserve::is_reservation(&ip, &ctx.stores) {
        return Ok(Action::await_change());
    }
    match reserve::reserve(&ctx, &ip).await {
        Ok(()) => {
            ctx.succeeded(&ip.uid().unwrap_or_default());
            Ok(Action::await_change())
        }
        Err(Error::Rejected(r)) => {
            // Events about a custom resource live in its namespace; a cluster-scoped one's in
            // `default`.
            let mut reference = ip.object_ref(&());
            reference.namespace.get_or_insert_with(|| "default".into());
            ctx.warn(&reference, "Reserve", &r).await;
            Err(Error::Rejected(r))
        }
        Err(e) => Err(e),
    }
}

fn retry<N: Northbound>(ip: Arc<IP>, error: &Error, ctx: Arc<Context<N>>) -> Action {
    tracing::warn!(ip = %ip.name_any(), %error, "reservation not allocated");
    Action::requeue(ctx.backoff(&ip.uid().unwrap_or_default()))
}

/// A deleted reservation frees what it held, unless a pod of its name holds it now (the pod
/// keeps it, as any pod keeps its addresses).
pub async fn deleted<N: Northbound>(ctx: &Context<N>, ip: &IP) -> Result<(), Error> {
    if ip
        .labels()
        .get(annotations::LABEL_IP_RESERVED)
        .map(String::as_str)
        != Some("true")
    {
        return Ok(());
    }
    let key = NicKey::from(ip.name_any().as_str());
    let uid = ip.uid().unwrap_or_default();
    let _guard = ctx.locks.lock(key.as_str()).await;
    if let Some(lease) = ctx.engine.lease(&key).filter(|l| l.uid == uid)
        && holder::live_holder(&ctx.stores, &lease, "").is_none()
    {
        nic::release(ctx, &key, Some(&uid)).await?;
    }
    Ok(())
}
