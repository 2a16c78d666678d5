//! The watched caches (reflectors) and the triggers they feed.
//!
//! Each resource is watched once. Pod events are split: applied pods trigger the pod
//! controller, deleted pods go to the release worker; applied Subnets, IPPools and namespaces
//! trigger their controllers, any Subnet or IPPool change re-annotates every namespace, and a
//! deleted one is removed; StatefulSet and VirtualMachine events trigger the retention sweep,
//! and deleted IP resources go to the retention worker; a Node whose labels change names itself,
//! so its pods waiting on node affinity are looked at again. Nothing is acted on until every
//! cache reports synced, and the triggers stay shut until this replica leads ([`Gate`]): a
//! standby fills its stores ahead, so a takeover does not wait for the initial lists.
//!
//! A watch that cannot resume (410 Gone after an etcd compaction, an API server restarted with a
//! new watch cache) lists again, and a list has no delete events: an object deleted meanwhile
//! just is not in it. Each watch therefore compares the list with what it held before and
//! reports every object that vanished as deleted, so a pod deleted during a relist is released
//! at once rather than by the next garbage collection.
//!
//! KubeVirt is optional: VirtualMachines are watched once the `kubevirt.io/v1` API is served,
//! from start-up or, when KubeVirt is installed later, from the next check (every 10 s).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use portkeeper_api::kubevirt::VirtualMachine;
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
    /// StatefulSets, for ordinals and retention.
    pub statefulsets: Store<StatefulSet>,
    /// Nodes, for the node affinity of pools and subnets (their labels).
    pub nodes: Store<Node>,
    /// VirtualMachines, for retention; set once KubeVirt is served and the store holds a full
    /// list.
    pub virtual_machines: Arc<OnceLock<Store<VirtualMachine>>>,
}

/// What the watches hand to the workers.
pub struct Triggers {
    /// Pods created or changed.
    pub applied_pods: UnboundedReceiver<Pod>,
    /// Pods deleted.
    pub deleted_pods: UnboundedReceiver<Pod>,
    /// What the Subnet, IPPool and namespace controllers act on.
    pub addressing: AddressingTriggers,
    /// A StatefulSet or VirtualMachine changed or was deleted.
    pub workloads: UnboundedReceiver<()>,
    /// IP resources created or changed.
    pub applied_ips: UnboundedReceiver<IP>,
    /// IP resources deleted.
    pub deleted_ips: UnboundedReceiver<IP>,
    /// Nodes whose labels changed (or that appeared): their pods waiting on node affinity are
    /// looked at again.
    pub relabelled_nodes: UnboundedReceiver<String>,
}

/// What drives the Subnet, IPPool and namespace controllers.
pub struct AddressingTriggers {
    /// Subnets created or changed.
    pub subnets: UnboundedReceiver<Subnet>,
    /// IPPools created or changed.
    pub pools: UnboundedReceiver<IPPool>,
    /// Namespaces created or changed.
    pub namespaces: UnboundedReceiver<Namespace>,
    /// Any Subnet or IPPool change: every namespace is looked at again.
    pub changed: UnboundedReceiver<()>,
    /// A Subnet or IPPool was deleted.
    pub deleted: UnboundedReceiver<()>,
}

/// The running watches.
pub type Watches = Vec<BoxFuture<'static, ()>>;

/// A trigger's sender that passes nothing on until the triggers are [opened](Gate::open).
#[derive(Clone)]
struct Gated<T> {
    tx: UnboundedSender<T>,
    open: Arc<AtomicBool>,
}

impl<T> Gated<T> {
    fn send(&self, item: T) {
        if self.open.load(Ordering::SeqCst) {
            let _ = self.tx.unbounded_send(item);
        }
    }

    /// Passes `item` on whether or not the gate is open (what opening it replays).
    fn force(&self, item: T) {
        let _ = self.tx.unbounded_send(item);
    }
}

fn gated<T>(open: &Arc<AtomicBool>) -> (Gated<T>, UnboundedReceiver<T>) {
    let (tx, rx) = unbounded();
    let open = open.clone();
    (Gated { tx, open }, rx)
}

/// Holds the triggers shut while the stores fill, so a standby can watch (reads only) before it
/// leads without queueing every change it sees. See [`Gate::open`].
pub struct Gate {
    open: Arc<AtomicBool>,
    pods: Gated<Pod>,
    ips: Gated<IP>,
    subnets: Gated<Subnet>,
    pools: Gated<IPPool>,
    namespaces: Gated<Namespace>,
    changed: Gated<()>,
    workloads: Gated<()>,
}

impl Gate {
    /// Opens the triggers: every change from now on is passed on, and every object already in a
    /// store is passed on once, as its initial list would have been. A store applies a change
    /// before its trigger looks at the gate, so a change either finds the gate open or is in the
    /// stores read here. Deletions seen while shut are not replayed: the start-up garbage
    /// collection finds what they left.
    pub fn open(&self, stores: &Stores) {
        self.open.store(true, Ordering::SeqCst);
        for pod in stores.pods.state() {
            self.pods.force(pod_trigger(&pod));
        }
        for ip in stores.ips.state() {
            self.ips.force(ip_trigger(&ip));
        }
        for subnet in stores.subnets.state() {
            self.subnets.force(Subnet::clone(&subnet));
        }
        for pool in stores.pools.state() {
            self.pools.force(IPPool::clone(&pool));
        }
        for namespace in stores.namespaces.state() {
            self.namespaces.force(Namespace::clone(&namespace));
        }
        self.changed.force(());
        self.workloads.force(());
    }
}

/// Starts one watch per resource, its triggers shut until [`Gate::open`]. The returned futures
/// must be polled (spawned) for the stores to fill.
pub async fn start(client: &Client) -> (Stores, Triggers, Watches, Gate) {
    let open = Arc::new(AtomicBool::new(false));
    let (applied_tx, applied_pods) = gated(&open);
    let (deleted_tx, deleted_pods) = gated(&open);
    let (subnets_tx, applied_subnets) = gated(&open);
    let (pools_tx, applied_pools) = gated(&open);
    let (namespaces_tx, applied_namespaces) = gated(&open);
    let (changed_tx, changed) = gated(&open);
    let (removed_tx, removed) = gated(&open);
    let (workloads_tx, workloads) = gated(&open);
    let (applied_ip_tx, applied_ips) = gated(&open);
    let (deleted_ip_tx, deleted_ips) = gated(&open);
    let (relabelled_tx, relabelled_nodes) = gated(&open);
    let gate = Gate {
        open,
        pods: applied_tx.clone(),
        ips: applied_ip_tx.clone(),
        subnets: subnets_tx.clone(),
        pools: pools_tx.clone(),
        namespaces: namespaces_tx.clone(),
        changed: changed_tx.clone(),
        workloads: workloads_tx.clone(),
    };
    let mut watches = Watches::new();

    let pods = watch(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default(),
        &mut watches,
        move |event| match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                applied_tx.send(pod_trigger(pod));
            }
            watcher::Event::Delete(pod) => deleted_tx.send(pod.clone()),
            watcher::Event::Init | watcher::Event::InitDone => {}
        },
    );
    let subnets = watch(
        Api::<Subnet>::all(client.clone()),
        watcher::Config::default(),
        &mut watches,
        addressing_event(subnets_tx, changed_tx.clone(), removed_tx.clone()),
    );
    let pools = watch(
        Api::<IPPool>::all(client.clone()),
        watcher::Config::default(),
        &mut watches,
        addressing_event(pools_tx, changed_tx, removed_tx),
    );
    let namespaces = watch(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        &mut watches,
        move |event| {
            if let watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) = event {
                namespaces_tx.send(ns.clone());
            }
        },
    );
    let ips = watch(
        Api::<IP>::all(client.clone()),
        watcher::Config::default(),
        &mut watches,
        move |event| match event {
            watcher::Event::Apply(ip) | watcher::Event::InitApply(ip) => {
                applied_ip_tx.send(ip_trigger(ip));
            }
            watcher::Event::Delete(ip) => deleted_ip_tx.send(ip.clone()),
            watcher::Event::Init | watcher::Event::InitDone => {}
        },
    );
    let mut labels_seen: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    let nodes = watch(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        &mut watches,
        move |event: &watcher::Event<Node>| match event {
            watcher::Event::Apply(node) | watcher::Event::InitApply(node) => {
                let name = node.name_any();
                if labels_seen.get(&name) != Some(node.labels()) {
                    labels_seen.insert(name.clone(), node.labels().clone());
                    relabelled_tx.send(name);
                }
            }
            watcher::Event::Delete(node) => {
                labels_seen.remove(&node.name_any());
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        },
    );
    let statefulsets = watch(
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
        &mut watches,
        notify(workloads_tx.clone()),
    );
    let virtual_machines = Arc::new(OnceLock::new());
    if kubevirt_served(client, true).await != Served::No {
        let store = watch(
            Api::<VirtualMachine>::all(client.clone()),
            watcher::Config::default(),
            &mut watches,
            notify(workloads_tx),
        );
        let _ = virtual_machines.set(store);
    } else {
        tracing::info!(
            "kubevirt.io/v1 VirtualMachines are not served; VM retention is off until they are"
        );
        let later = watch_virtual_machines_once_served(
            client.clone(),
            virtual_machines.clone(),
            workloads_tx,
        );
        watches.push(later.boxed());
    }
    (
        Stores {
            pods,
            namespaces,
            subnets,
            ips,
            pools,
            statefulsets,
            nodes,
            virtual_machines,
        },
        Triggers {
            applied_pods,
            deleted_pods,
            addressing: AddressingTriggers {
                subnets: applied_subnets,
                pools: applied_pools,
                namespaces: applied_namespaces,
                changed,
                deleted: removed,
            },
            workloads,
            applied_ips,
            deleted_ips,
            relabelled_nodes,
        },
        watches,
        gate,
    )
}

/// How often the VirtualMachine API is looked for while it is not served.
const KUBEVIRT_CHECK: Duration = Duration::from_secs(10);

/// Starts the VirtualMachine watch once KubeVirt's API is served, so installing KubeVirt after
/// portkeeper turns VM retention on without a restart. The store is published only once it
/// holds a full list: until then identities held for VMs count as unobservable and are kept.
async fn watch_virtual_machines_once_served(
    client: Client,
    slot: Arc<OnceLock<Store<VirtualMachine>>>,
    workloads: Gated<()>,
) {
    let mut check = tokio::time::interval(KUBEVIRT_CHECK);
    check.tick().await;
    loop {
        check.tick().await;
        // Only a real answer: an API server restarting meanwhile is no sign of KubeVirt.
        if kubevirt_served(&client, false).await == Served::Yes {
            break;
        }
    }
    let mut watches = Watches::new();
    let store = watch(
        Api::<VirtualMachine>::all(client),
        watcher::Config::default(),
        &mut watches,
        notify(workloads.clone()),
    );
    let publish = async move {
        if store.wait_until_ready().await.is_ok() {
            let _ = slot.set(store);
            tracing::info!("kubevirt.io/v1 VirtualMachines are served; VM retention is on");
            workloads.send(());
        }
    };
    futures::future::join(publish, futures::future::join_all(watches)).await;
}

/// What the API server answered about `kubevirt.io/v1` VirtualMachines.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    /// Served, and portkeeper may read them.
    Yes,
    /// Not installed (404), or portkeeper may not read them (403).
    No,
    /// No answer (an error of the connection or the server).
    Unknown,
}

/// Whether the API server serves `kubevirt.io/v1` VirtualMachines that portkeeper may read; a 403
/// is logged when `warn_forbidden`. At start-up an unknown answer counts as served, so a transient
/// error cannot switch VM retention off (the watch then retries); the later checks wait for a
/// real answer.
async fn kubevirt_served(client: &Client, warn_forbidden: bool) -> Served {
    let api: Api<VirtualMachine> = Api::all(client.clone());
    match api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
    {
        Ok(_) => Served::Yes,
        Err(kube::Error::Api(e)) if e.code == 404 => Served::No,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            if warn_forbidden {
                tracing::warn!(error = %e, "may not list kubevirt.io VirtualMachines (see yamls/rbac.yaml)");
            }
            Served::No
        }
        Err(_) => Served::Unknown,
    }
}

/// A Subnet or IPPool watch callback: an applied object goes to its controller, every change
/// pings `changed`, and a deletion pings `removed`.
fn addressing_event<K: Clone + Send + 'static>(
    applied: Gated<K>,
    changed: Gated<()>,
    removed: Gated<()>,
) -> impl FnMut(&watcher::Event<K>) + Send + 'static {
    move |event| {
        match event {
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                applied.send(object.clone());
            }
            watcher::Event::Delete(_) => removed.send(()),
            watcher::Event::Init | watcher::Event::InitDone => return,
        }
        changed.send(());
    }
}

/// What a trigger needs of an object: which one it is. The controllers fed by triggers read the
/// object itself from the store; a whole copy in the trigger was a second copy of every pod and
/// IP resource of the initial list, queued until the controllers started.
fn reference(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..ObjectMeta::default()
    }
}

/// The pod controller's trigger for `pod` (see [`reference`]).
fn pod_trigger(pod: &Pod) -> Pod {
    Pod {
        metadata: reference(&pod.metadata),
        ..Pod::default()
    }
}

/// The reservation controller's trigger for `ip` (see [`reference`]).
fn ip_trigger(ip: &IP) -> IP {
    IP {
        metadata: reference(&ip.metadata),
        spec: Default::default(),
    }
}

/// A watch callback that pings `tx` on every change.
fn notify<K>(tx: Gated<()>) -> impl FnMut(&watcher::Event<K>) + Send + 'static {
    move |event| {
        if !matches!(event, watcher::Event::Init) {
            tx.send(());
        }
    }
}

/// A store of the objects `api` and `config` select, kept by a watch pushed onto `watches`;
/// `on_event` sees every event after the store has applied it, and a `Delete` for each object
/// a relist found gone (see the module's comment).
pub(crate) fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    watches: &mut Watches,
    mut on_event: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let held = reader.clone();
    let mut before_relist = Vec::new();
    let stream = watcher(api, config)
        .default_backoff()
        // Nothing reads who wrote which field, and every stored object carried it.
        .modify(|object: &mut K| object.meta_mut().managed_fields = None)
        .reflect(writer)
        .for_each(move |event| {
            match event {
                Ok(event) => {
                    on_event(&event);
                    match event {
                        // The store keeps the old objects until the list is complete.
                        watcher::Event::Init => before_relist = held.state(),
                        watcher::Event::InitDone => {
                            let gone = vanished(std::mem::take(&mut before_relist), &held);
                            if !gone.is_empty() {
                                tracing::info!(%kind, count = gone.len(), "deleted while the watch listed again");
                            }
                            for object in gone {
                                on_event(&watcher::Event::Delete(object));
                            }
                        }
                        _ => {}
                    }
                }
                Err(e) => tracing::warn!(%kind, error = %e, "watch error; retrying"),
            }
            futures::future::ready(())
        });
    watches.push(stream.boxed());
    reader
}

/// The objects of `before` that `after` no longer holds: gone, or replaced by a new object of
/// the same name (another uid).
fn vanished<K>(before: Vec<Arc<K>>, after: &Store<K>) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    before
        .into_iter()
        .filter(|old| {
            after
                .get(&reflector::ObjectRef::from_obj(old.as_ref()))
                .is_none_or(|now| now.uid() != old.uid())
        })
        .map(Arc::unwrap_or_clone)
        .collect()
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
        self.nodes.wait_until_ready().await.map_err(dropped)?;
        metrics.synced("nodes");
        if let Some(vms) = self.virtual_machines.get() {
            vms.wait_until_ready().await.map_err(dropped)?;
            metrics.synced("virtualmachines");
        }
        Ok(())
    }

    /// Waits (at most 10 s) until the default Subnet, when the controller makes it, is in the
    /// store: it may have been created after the initial list.
    pub async fn wait_for_default_subnet(&self, config: &crate::config::Config) {
        if config.default_cidr.is_none() {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.subnet(&config.default_ls).is_none() {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(subnet = %config.default_ls, "the default Subnet is not in the watch cache yet");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A pod by namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<Pod>> {
        self.pods
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// The `logical_switch` annotation of a namespace: its bound subnets in the order they are
    /// tried.
    pub fn namespace_subnets(
        &self,
        namespace: &str,
        keys: &portkeeper_api::annotations::NetworkKeys,
    ) -> Option<String> {
        self.namespaces
            .get(&reflector::ObjectRef::new(namespace))?
            .annotations()
            .get(&keys.logical_switch)
            .cloned()
    }

    /// A Subnet by name.
    pub fn subnet(&self, name: &str) -> Option<Arc<Subnet>> {
        self.subnets.get(&reflector::ObjectRef::new(name))
    }

    /// An IPPool by name.
    pub fn pool(&self, name: &str) -> Option<Arc<IPPool>> {
        self.pools.get(&reflector::ObjectRef::new(name))
    }

    /// A Node by name.
    pub fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.get(&reflector::ObjectRef::new(name))
    }

    /// A StatefulSet by namespace and name.
    pub fn statefulset(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<StatefulSet>> {
        self.statefulsets
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// Whether VirtualMachines are watched and their store holds a full list.
    pub fn watches_virtual_machines(&self) -> bool {
        self.virtual_machines.get().is_some()
    }

    /// A VirtualMachine by namespace and name (never, without KubeVirt).
    pub fn virtual_machine(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<std::sync::Arc<VirtualMachine>> {
        self.virtual_machines
            .get()?
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// Pods of `namespace` (all pods when the namespace is empty) matching `keep`.
    pub fn pods_where(
        &self,
        namespace: &str,
        keep: impl Fn(&Pod) -> bool,
    ) -> Vec<std::sync::Arc<Pod>> {
        self.pods
            .state()
            .into_iter()
            .filter(|p| namespace.is_empty() || p.namespace().as_deref() == Some(namespace))
            .filter(|p| keep(p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.uid = Some(uid.into());
        pod
    }

    fn listed(writer: &mut reflector::store::Writer<Pod>, pods: &[Pod]) {
        writer.apply_watcher_event(&watcher::Event::Init);
        for pod in pods {
            writer.apply_watcher_event(&watcher::Event::InitApply(pod.clone()));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
    }

    #[test]
    fn a_relist_reports_the_objects_it_no_longer_holds() {
        let (reader, mut writer) = reflector::store();
        listed(&mut writer, &[pod("a", "1"), pod("b", "2"), pod("c", "3")]);
        let before = reader.state();
        // b was deleted, c deleted and created again under the same name, d is new.
        listed(&mut writer, &[pod("a", "1"), pod("c", "4"), pod("d", "5")]);
        let mut gone: Vec<(String, String)> = vanished(before, &reader)
            .iter()
            .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
            .collect();
        gone.sort();
        assert_eq!(
            gone,
            [
                ("b".to_owned(), "2".to_owned()),
                ("c".to_owned(), "3".to_owned())
            ]
        );
    }

    #[test]
    fn the_first_list_reports_nothing() {
        let (reader, mut writer) = reflector::store();
        let before = reader.state();
        listed(&mut writer, &[pod("a", "1")]);
        assert!(vanished(before, &reader).is_empty());
    }
}
