//! KubeVirt live migration: keeps the two options of a VM's port that let OVN bind it on the
//! source and the target chassis at once (`requested-chassis`, `activation-strategy`) in step
//! with the VM's VirtualMachineInstanceMigrations.
//!
//! [`plan`] decides from the objects as they are now; this module watches them, maps nodes to
//! chassis, and writes only the keys that differ. A kube-runtime controller over VMIs plans a VM
//! whenever its VMI, one of its VMIMs or launcher pods, or a node's chassis changes, so the order
//! and the loss of events do not matter: a target pod bound late, a restart mid-migration, a
//! stale `migrationState` or the deletion of an old launcher pod all end in the options the
//! current objects call for. A VM whose VMI is gone (which no controller over VMIs sees) is
//! planned by the orphan pass, on every deletion and periodically.
//!
//! KubeVirt is optional: until its API is served the module waits quietly (one log line), and
//! nothing else in the controller depends on it.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use portkeeper_api::allocation::port_name;
use portkeeper_api::annotations::DEFAULT_PROVIDER;
use portkeeper_api::kubevirt::{
    ANNOTATION_DOMAIN, LABEL_APP, LABEL_MIGRATION_JOB_UID, LABEL_VM_NAME, LAUNCHER_APP,
    VirtualMachineInstance, VirtualMachineInstanceMigration,
};

use crate::context::Context;
use crate::error::Error;
use crate::nic;
use crate::ovn::{Northbound, ids};
use crate::stores::watch;
use plan::{LauncherPod, Migration, Observed, Phase, PortOptions, Vmi};

pub use portkeeper_api::annotations::NODE_CHASSIS as NODE_CHASSIS_ANNOTATION;

/// How often the KubeVirt API is looked for while it is absent.
const KUBEVIRT_POLL: Duration = Duration::from_secs(10);
/// Every VM is re-planned this often, which also repairs options changed behind our back.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon the orphan pass tries again after a failed write.
const ORPHAN_RETRY: Duration = Duration::from_secs(1);

/// A node's OVN chassis name: the [`NODE_CHASSIS_ANNOTATION`] when the node has it, else the
/// node name. The fallback is Kube-OVN's convention (system-id = node name), and OVN also
/// matches `requested-chassis` against a chassis' hostname, which is the node name by default.
pub fn chassis_of(node_name: &str, node: Option<&Node>) -> String {
    node.and_then(|n| n.annotations().get(NODE_CHASSIS_ANNOTATION))
        .filter(|c| !c.is_empty())
        .cloned()
        .unwrap_or_else(|| node_name.to_owned())
}

/// The VMI a launcher pod runs: its VMI owner, else the `kubevirt.io/domain` annotation, else
/// the `vm.kubevirt.io/name` label.
pub fn vmi_of(pod: &Pod) -> Option<String> {
    pod.owner_references()
        .iter()
        .find(|o| o.kind == "VirtualMachineInstance" && o.api_version.starts_with("kubevirt.io/"))
        .map(|o| o.name.clone())
        .or_else(|| pod.annotations().get(ANNOTATION_DOMAIN).cloned())
        .or_else(|| pod.labels().get(LABEL_VM_NAME).cloned())
}

/// One VM (by namespace and the name of its VMI): the unit that is planned and written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct VmKey {
    namespace: String,
    name: String,
}

/// The caches the planner reads.
struct Watched {
    vmis: Store<VirtualMachineInstance>,
    migrations: Store<VirtualMachineInstanceMigration>,
    pods: Store<Pod>,
    /// `None` when Nodes may not be read: every node then maps to its name.
    nodes: Option<Store<Node>>,
}

/// What the watches hand to the VMI controller and the orphan pass.
struct Triggers {
    /// VMIs created or changed.
    vmis: UnboundedReceiver<VirtualMachineInstance>,
    /// The VMI of a VMIM or launcher pod that changed.
    related: UnboundedReceiver<ObjectRef<VirtualMachineInstance>>,
    /// A node's chassis changed: every VM is planned again.
    chassis: UnboundedReceiver<()>,
    /// A VMI, VMIM or launcher pod was deleted: a VM without a VMI may need its options cleared.
    deleted: UnboundedReceiver<()>,
}

/// What the VMI controller and the orphan pass share.
struct Migrations<N> {
    ctx: Arc<Context<N>>,
    watched: Watched,
}

/// Runs live-migration support until the task is dropped. Only the leader runs it (it is
/// started after the lease is held).
pub async fn run<N: Northbound>(ctx: Arc<Context<N>>) {
    wait_for_kubevirt(&ctx.client).await;
    let nodes_readable = nodes_readable(&ctx.client).await;
    let (watched, triggers, watches) = start_watches(&ctx.client, nodes_readable);
    let mut tasks = tokio::task::JoinSet::new();
    for w in watches {
        tasks.spawn(w);
    }
    let ready = [
        Some(watched.vmis.wait_until_ready().boxed()),
        Some(watched.migrations.wait_until_ready().boxed()),
        Some(watched.pods.wait_until_ready().boxed()),
        watched.nodes.as_ref().map(|n| n.wait_until_ready().boxed()),
    ];
    for ready in ready.into_iter().flatten() {
        if ready.await.is_err() {
            return;
        }
    }
    ctx.metrics.synced("kubevirt");
    tracing::info!("live-migration support started");
    let state = Arc::new(Migrations { ctx, watched });
    let vmis = Controller::for_stream(triggers.vmis.map(Ok), state.watched.vmis.clone())
        .reconcile_on(triggers.related)
        .reconcile_all_on(triggers.chassis)
        .run(reconcile_vmi, retry, state.clone())
        .for_each(|_| futures::future::ready(()));
    tokio::join!(vmis, orphans(&state, triggers.deleted));
}

/// Waits until the API server serves VMIs and VMIMs, logging the absence once.
async fn wait_for_kubevirt(client: &Client) {
    let mut logged = false;
    loop {
        let params = ListParams::default().limit(1);
        let vmis = Api::<VirtualMachineInstance>::all(client.clone());
        let migrations = Api::<VirtualMachineInstanceMigration>::all(client.clone());
        let served = futures::try_join!(
            vmis.list_metadata(&params),
            migrations.list_metadata(&params),
        );
        match served {
            Ok(_) => return,
            Err(e) if !logged => {
                logged = true;
                match &e {
                    kube::Error::Api(s) if s.code == 404 => tracing::info!(
                        "KubeVirt is not installed (no kubevirt.io/v1 VMIs or VMIMs); live-migration \
                         support starts when it is"
                    ),
                    _ => tracing::warn!(error = %e, "cannot list KubeVirt objects; retrying"),
                }
            }
            Err(_) => {}
        }
        tokio::time::sleep(KUBEVIRT_POLL).await;
    }
}

/// Whether Nodes may be listed; a 403 (RBAC without `nodes`) is logged once, and the node name
/// then stands for the chassis name. Any other answer counts as readable (the watch retries).
async fn nodes_readable(client: &Client) -> bool {
    let api = Api::<Node>::all(client.clone());
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Err(kube::Error::Api(e)) if e.code == 403 => {
            tracing::warn!(
                "cannot read Nodes (grant list/watch on nodes); node names stand for OVN \
                 chassis names in live migration"
            );
            false
        }
        Ok(_) | Err(_) => true,
    }
}

fn start_watches(
    client: &Client,
    watch_nodes: bool,
) -> (Watched, Triggers, Vec<BoxFuture<'static, ()>>) {
    let (vmis_tx, vmis_rx) = unbounded();
    let (related_tx, related) = unbounded();
    let (chassis_tx, chassis) = unbounded();
    let (deleted_tx, deleted) = unbounded();
    let mut watches = Vec::new();
    let d = deleted_tx.clone();
    let vmis = watch(
        Api::<VirtualMachineInstance>::all(client.clone()),
        watcher::Config::default(),
        &mut watches,
        move |event| match event {
            watcher::Event::Apply(vmi) | watcher::Event::InitApply(vmi) => {
                let _ = vmis_tx.unbounded_send(vmi.clone());
            }
            watcher::Event::Delete(_) => {
                let _ = d.unbounded_send(());
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        },
    );
    let (t, d) = (related_tx.clone(), deleted_tx.clone());
    let migrations = watch(
        Api::<VirtualMachineInstanceMigration>::all(client.clone()),
        watcher::Config::default(),
        &mut watches,
        touched(d, move |m: &VirtualMachineInstanceMigration| {
            send_vmi(&t, key_of(m, m.spec.vmi_name.clone()))
        }),
    );
    let t = related_tx;
    let pods = watch(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels(&format!("{LABEL_APP}={LAUNCHER_APP}")),
        &mut watches,
        touched(deleted_tx, move |pod: &Pod| {
            send_vmi(&t, vmi_of(pod).and_then(|name| key_of(pod, name)))
        }),
    );
    let mut known: HashMap<String, String> = HashMap::new();
    let nodes = watch_nodes.then(|| {
        watch(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            &mut watches,
            move |event: &watcher::Event<Node>| {
                let (watcher::Event::Apply(node) | watcher::Event::InitApply(node)) = event else {
                    return;
                };
                let name = node.name_any();
                let chassis = chassis_of(&name, Some(node));
                if known
                    .insert(name, chassis.clone())
                    .is_some_and(|c| c != chassis)
                {
                    let _ = chassis_tx.unbounded_send(());
                }
            },
        )
    });
    (
        Watched {
            vmis,
            migrations,
            pods,
            nodes,
        },
        Triggers {
            vmis: vmis_rx,
            related,
            chassis,
            deleted,
        },
        watches,
    )
}

fn send_vmi(tx: &UnboundedSender<ObjectRef<VirtualMachineInstance>>, key: Option<VmKey>) {
    if let Some(key) = key {
        let _ = tx.unbounded_send(ObjectRef::new(&key.name).within(&key.namespace));
    }
}

/// Calls `on_object` with every object a watch event applies or deletes, and pings `deleted`
/// on a deletion.
fn touched<K>(
    deleted: UnboundedSender<()>,
    mut on_object: impl FnMut(&K) + Send + 'static,
) -> impl FnMut(&watcher::Event<K>) + Send + 'static {
    move |event| match event {
        watcher::Event::Apply(object) | watcher::Event::InitApply(object) => on_object(object),
        watcher::Event::Delete(object) => {
            on_object(object);
            let _ = deleted.unbounded_send(());
        }
        watcher::Event::Init | watcher::Event::InitDone => {}
    }
}

/// Plans a VM whose VMI exists and writes its port options; planned again every [`RESYNC`],
/// which also repairs options changed behind our back.
async fn reconcile_vmi<N: Northbound>(
    vmi: Arc<VirtualMachineInstance>,
    state: Arc<Migrations<N>>,
) -> Result<Action, Error> {
    let key = VmKey {
        namespace: vmi.namespace().unwrap_or_default(),
        name: vmi.name_any(),
    };
    reconcile(&state, &key).await?;
    state.ctx.succeeded(&vmi.uid().unwrap_or_default());
    Ok(Action::requeue(RESYNC))
}

/// Retries a VM whose options were not written, with the per-object backoff.
fn retry<N: Northbound>(
    vmi: Arc<VirtualMachineInstance>,
    error: &Error,
    state: Arc<Migrations<N>>,
) -> Action {
    state.ctx.metrics.failed(error.metric_label());
    let delay = state.ctx.backoff(&vmi.uid().unwrap_or_default());
    tracing::warn!(vmi = %vmi.name_any(), namespace = ?vmi.namespace(), %error, retry_in = ?delay, "migration options not written");
    Action::requeue(delay)
}

/// VMs without a VMI (stopped, deleted) whose port may still carry options: planned on every
/// deletion and every [`RESYNC`] (at once at start); a failure is tried again after
/// [`ORPHAN_RETRY`].
async fn orphans<N: Northbound>(state: &Migrations<N>, mut deleted: UnboundedReceiver<()>) {
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            d = deleted.next() => if d.is_none() { return },
            () = tokio::time::sleep(wait) => {}
        }
        while deleted.try_recv().is_ok() {}
        let mut failed = false;
        for key in orphan_keys(state) {
            if let Err(e) = reconcile(state, &key).await {
                state.ctx.metrics.failed(e.metric_label());
                tracing::warn!(vmi = %key.name, namespace = %key.namespace, error = %e, "migration options not written");
                failed = true;
            }
        }
        wait = if failed { ORPHAN_RETRY } else { RESYNC };
    }
}

/// Every VM without a VMI that a VMIM, a launcher pod or one of our ports with a managed option
/// still names.
fn orphan_keys<N: Northbound>(state: &Migrations<N>) -> BTreeSet<VmKey> {
    let watched = &state.watched;
    let from_migrations = watched
        .migrations
        .state()
        .into_iter()
        .filter_map(|m| key_of(m.as_ref(), m.spec.vmi_name.clone()));
    let from_pods = watched
        .pods
        .state()
        .into_iter()
        .filter_map(|p| vmi_of(&p).and_then(|name| key_of(p.as_ref(), name)));
    let from_ports = state
        .ctx
        .nb
        .ports()
        .into_iter()
        .filter(|p| p.is_ours() && has_managed_option(&p.options))
        .filter_map(|p| {
            let (namespace, name) = p.external_ids.get(ids::POD)?.split_once('/')?;
            Some(VmKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
        });
    from_migrations
        .chain(from_pods)
        .chain(from_ports)
        .filter(|key| {
            watched
                .vmis
                .get(&ObjectRef::new(&key.name).within(&key.namespace))
                .is_none()
        })
        .collect()
}

fn key_of(object: &impl ResourceExt, name: String) -> Option<VmKey> {
    Some(VmKey {
        namespace: object.namespace()?,
        name,
    })
}

fn has_managed_option(options: &BTreeMap<String, String>) -> bool {
    options.contains_key(plan::REQUESTED_CHASSIS) || options.contains_key(plan::ACTIVATION_STRATEGY)
}

/// What the caches say about one VM, in the planner's terms.
fn observe(
    watched: &Watched,
    key: &VmKey,
) -> (Option<Arc<VirtualMachineInstance>>, Vec<Arc<Pod>>, Observed) {
    let vmi = watched
        .vmis
        .get(&ObjectRef::new(&key.name).within(&key.namespace));
    let migrations = watched
        .migrations
        .state()
        .into_iter()
        .filter(|m| key_of(m.as_ref(), m.spec.vmi_name.clone()).as_ref() == Some(key))
        .map(|m| Migration {
            name: m.name_any(),
            uid: m.uid().unwrap_or_default(),
            phase: Phase::of(m.status.as_ref().and_then(|s| s.phase.as_deref())),
            created: m
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second()),
        })
        .collect();
    let pods: Vec<Arc<Pod>> = watched
        .pods
        .state()
        .into_iter()
        .filter(|p| vmi_of(p).and_then(|name| key_of(p.as_ref(), name)).as_ref() == Some(key))
        .collect();
    let observed = Observed {
        vmi: vmi.as_ref().map(|v| {
            let status = v.status.clone().unwrap_or_default();
            Vmi {
                node: status.node_name,
                state: status.migration_state,
            }
        }),
        migrations,
        pods: pods
            .iter()
            .map(|p| LauncherPod {
                name: p.name_any(),
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                migration_uid: p.labels().get(LABEL_MIGRATION_JOB_UID).cloned(),
            })
            .collect(),
    };
    (vmi, pods, observed)
}

/// Plans one VM and writes the options of its port(s) that differ.
async fn reconcile<N: Northbound>(state: &Migrations<N>, key: &VmKey) -> Result<(), Error> {
    let (ctx, watched) = (&state.ctx, &state.watched);
    let (vmi, pods, observed) = observe(watched, key);
    let stage = plan::plan(&observed, |node| {
        let known = watched
            .nodes
            .as_ref()
            .and_then(|n| n.get(&ObjectRef::new(node)));
        chassis_of(node, known.as_deref())
    });
    let desired = stage.options();
    // The ports of the launcher pods' nics, every network's; a VM whose pods are all gone is
    // looked for among all ports (rare: only an orphan pass gets here). Of these, every port of
    // the VM takes the options.
    let candidates: Vec<_> = if pods.is_empty() {
        ctx.nb.ports()
    } else {
        let names: BTreeSet<String> = pods
            .iter()
            .flat_map(|p| nic::keys_of(p))
            .map(|k| k.as_str().to_owned())
            .chain([port_name(&key.name, &key.namespace, DEFAULT_PROVIDER)
                .as_str()
                .to_owned()])
            .collect();
        names.iter().filter_map(|n| ctx.nb.port(n)).collect()
    };
    let of_vm = plan::vm_ports(&key.namespace, &key.name, &candidates);
    for port in candidates.iter().filter(|p| of_vm.contains(&p.name)) {
        let name = &port.name;
        let changes = plan::changes(&port.options, &desired);
        if changes.is_empty() {
            continue;
        }
        ctx.nb
            .update_port_options(name, &changes.set, &changes.remove)
            .await?;
        ctx.metrics.migration_options_written(stage.reason());
        let note = format!("port {name}: {}; {}", render(&desired), stage.describe());
        tracing::info!(vmi = %key.name, namespace = %key.namespace, "{note}");
        if let Some(vmi) = &vmi {
            ctx.note(&vmi.object_ref(&()), stage.reason(), "MigratePort", note)
                .await;
        }
    }
    Ok(())
}

/// `requested-chassis=… activation-strategy=…`, saying which are cleared.
fn render(options: &PortOptions) -> String {
    let show = |key: &str, value: &Option<String>| {
        value
            .as_ref()
            .map_or_else(|| format!("{key} cleared"), |v| format!("{key}={v}"))
    };
    format!(
        "{} {}",
        show(plan::REQUESTED_CHASSIS, &options.requested_chassis),
        show(plan::ACTIVATION_STRATEGY, &options.activation_strategy)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(annotation: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("node1".into());
        if let Some(value) = annotation {
            n.metadata.annotations = Some(BTreeMap::from([(
                NODE_CHASSIS_ANNOTATION.to_owned(),
                value.to_owned(),
            )]));
        }
        n
    }

    #[test]
    fn a_node_maps_to_its_published_chassis_else_its_name() {
        assert_eq!(chassis_of("node1", Some(&node(Some("a1b2")))), "a1b2");
        assert_eq!(chassis_of("node1", Some(&node(Some("")))), "node1");
        assert_eq!(chassis_of("node1", Some(&node(None))), "node1");
        assert_eq!(chassis_of("node1", None), "node1");
    }

    #[test]
    fn a_launcher_pod_names_its_vmi_by_owner_then_domain_then_label() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "virt-launcher-x",
                "labels": { LABEL_VM_NAME: "by-label" },
                "annotations": { ANNOTATION_DOMAIN: "by-domain" },
                "ownerReferences": [{
                    "apiVersion": "kubevirt.io/v1",
                    "kind": "VirtualMachineInstance",
                    "name": "by-owner",
                    "uid": "u",
                }],
            },
        }))
        .unwrap();
        assert_eq!(vmi_of(&pod).as_deref(), Some("by-owner"));
        let mut unowned = pod.clone();
        unowned.metadata.owner_references = None;
        assert_eq!(vmi_of(&unowned).as_deref(), Some("by-domain"));
        unowned.metadata.annotations = None;
        assert_eq!(vmi_of(&unowned).as_deref(), Some("by-label"));
        unowned.metadata.labels = None;
        assert_eq!(vmi_of(&unowned), None);
    }

    #[test]
    fn event_notes_name_what_is_set_and_what_is_cleared() {
        let dual = PortOptions {
            requested_chassis: Some("a,b".into()),
            activation_strategy: Some("rarp".into()),
        };
        assert_eq!(
            render(&dual),
            "requested-chassis=a,b activation-strategy=rarp"
        );
        let pinned = PortOptions {
            requested_chassis: Some("b".into()),
            activation_strategy: None,
        };
        assert_eq!(
            render(&pinned),
            "requested-chassis=b activation-strategy cleared"
        );
        assert_eq!(
            render(&PortOptions::default()),
            "requested-chassis cleared activation-strategy cleared"
        );
    }
}
