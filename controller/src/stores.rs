//! The watched caches (reflectors) and the triggers they feed.
//!
//! Each resource is watched once. Pod events are split: applied pods trigger the pod
//! controller, deleted pods go to the release worker; Subnet and IPPool events trigger the
//! addressing loop. Nothing is acted on until every cache reports synced.

use std::fmt::Debug;
use std::hash::Hash;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use portkeeper_api::{IP, IPPool, Subnet};
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::metrics::Metrics;

/// Read-only views of every watched resource.
#[derive(Clone)]
pub struct Stores {
    /// Pods, all namespaces.
    pub pods: Store<Pod>,
    /// Namespaces.
    pub namespaces: Store<Namespace>,
    /// Subnets.
    pub subnets: Store<Subnet>,
    /// IP resources.
    pub ips: Store<IP>,
    /// IPPools.
    pub pools: Store<IPPool>,
    /// StatefulSets, for ordinals (and, later, retention).
    pub statefulsets: Store<StatefulSet>,
}

/// What the watches hand to the workers.
pub struct Triggers {
    /// Pods created or changed.
    pub applied_pods: UnboundedReceiver<Pod>,
    /// Pods deleted.
    pub deleted_pods: UnboundedReceiver<Pod>,
    /// Subnet or IPPool changed.
    pub addressing: UnboundedReceiver<()>,
}

/// The running watches.
pub type Watches = Vec<BoxFuture<'static, ()>>;

/// Starts one watch per resource. The returned futures must be polled (spawned) for the stores
/// to fill.
pub fn start(client: &Client) -> (Stores, Triggers, Watches) {
    let (applied_tx, applied_pods) = unbounded();
    let (deleted_tx, deleted_pods) = unbounded();
    let (addressing_tx, addressing) = unbounded();
    let mut watches = Watches::new();

    let pods = watch(
        Api::<Pod>::all(client.clone()),
        &mut watches,
        move |event| match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                let _ = applied_tx.unbounded_send(pod.clone());
            }
            watcher::Event::Delete(pod) => {
                let _ = deleted_tx.unbounded_send(pod.clone());
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        },
    );
    let subnets = watch(
        Api::<Subnet>::all(client.clone()),
        &mut watches,
        notify(addressing_tx.clone()),
    );
    let pools = watch(
        Api::<IPPool>::all(client.clone()),
        &mut watches,
        notify(addressing_tx),
    );
    let namespaces = watch(Api::<Namespace>::all(client.clone()), &mut watches, |_| {});
    let ips = watch(Api::<IP>::all(client.clone()), &mut watches, |_| {});
    let statefulsets = watch(
        Api::<StatefulSet>::all(client.clone()),
        &mut watches,
        |_| {},
    );
    (
        Stores {
            pods,
            namespaces,
            subnets,
            ips,
            pools,
            statefulsets,
        },
        Triggers {
            applied_pods,
            deleted_pods,
            addressing,
        },
        watches,
    )
}

/// A watch callback that pings `tx` on every change.
fn notify<K>(tx: UnboundedSender<()>) -> impl FnMut(&watcher::Event<K>) + Send + 'static {
    move |event| {
        if !matches!(event, watcher::Event::Init) {
            let _ = tx.unbounded_send(());
        }
    }
}

fn watch<K>(
    api: Api<K>,
    watches: &mut Watches,
    mut on_event: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(move |event| {
            match event {
                Ok(event) => on_event(&event),
                Err(e) => tracing::warn!(%kind, error = %e, "watch error; retrying"),
            }
            futures::future::ready(())
        });
    watches.push(stream.boxed());
    reader
}

impl Stores {
    /// Waits until every cache holds a full list.
    pub async fn wait_synced(&self, metrics: &Metrics) -> Result<(), Error> {
        let dropped = |e: reflector::store::WriterDropped| Error::Cache(e.to_string());
        self.pods.wait_until_ready().await.map_err(dropped)?;
        metrics.synced("pods");
        self.namespaces.wait_until_ready().await.map_err(dropped)?;
        metrics.synced("namespaces");
        self.subnets.wait_until_ready().await.map_err(dropped)?;
        metrics.synced("subnets");
        self.ips.wait_until_ready().await.map_err(dropped)?;
        metrics.synced("ips");
        self.pools.wait_until_ready().await.map_err(dropped)?;
        metrics.synced("ippools");
        self.statefulsets
            .wait_until_ready()
            .await
            .map_err(dropped)?;
        metrics.synced("statefulsets");
        Ok(())
    }

    /// A pod by namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<Pod>> {
        self.pods
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }
}
