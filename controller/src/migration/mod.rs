//! KubeVirt live migration: keeps the two options of a VM's port that let OVN bind it on the
//! source and the target chassis at once (`requested-chassis`, `activation-strategy`) in step
//! with the VM's VirtualMachineInstanceMigrations.
//!
//! [`plan`] decides from the objects as they are now; this module watches them, maps nodes to
//! chassis, and writes only the keys that differ. Every trigger (a VMI, a VMIM, a launcher pod,
//! a node's chassis) re-plans the whole VM, so the order and the loss of events do not matter:
//! a target pod bound late, a restart mid-migration, a stale `migrationState` or the deletion of
//! an old launcher pod all end in the options the current objects call for.
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
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use portkeeper_api::kubevirt::{
    ANNOTATION_DOMAIN, LABEL_APP, LABEL_MIGRATION_JOB_UID, LABEL_VM_NAME, LAUNCHER_APP,
    VirtualMachineInstance, VirtualMachineInstanceMigration,
};
use portkeeper_engine::NicKey;

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

/// One VMI (by namespace and name): the unit that is planned and written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct VmKey {
    namespace: String,
    name: String,
}

/// What the watches ask the worker to do.
enum Trigger {
    /// Re-plan one VM.
    Vm(VmKey),
    /// Re-plan every VM (a node's chassis changed, or the periodic resync).
    All,
}

/// The caches the planner reads.
struct Watched {
    vmis: Store<VirtualMachineInstance>,
    migrations: Store<VirtualMachineInstanceMigration>,
    pods: Store<Pod>,
    /// `None` when Nodes may not be read: every node then maps to its name.
    nodes: Option<Store<Node>>,
}

/// Runs live-migration support until the task is dropped. Only the leader runs it (it is
/// started after the lease is held).
pub async fn run<N: Northbound>(ctx: Arc<Context<N>>) {
    wait_for_kubevirt(&ctx.client).await;
    let (tx, rx) = unbounded();
    let nodes_readable = nodes_readable(&ctx.client).await;
    let (watched, watches) = start_watches(&ctx.client, &tx, nodes_readable);
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
    let resync = tx.clone();
    tasks.spawn(async move {
        // The first tick fires at once: it also covers ports whose VMI is already gone.
        let mut tick = tokio::time::interval(RESYNC);
        loop {
            tick.tick().await;
            if resync.unbounded_send(Trigger::All).is_err() {
                return;
            }
        }
    });
    work(&ctx, &watched, rx, tx).await;
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
                "cannot read Nodes (grant get/list/watch on nodes); node names stand for OVN \
                 chassis names in live migration"
            );
            false
        }
        Ok(_) | Err(_) => true,
    }
}

fn start_watches(
    client: &Client,
    tx: &UnboundedSender<Trigger>,
    watch_nodes: bool,
) -> (Watched, Vec<BoxFuture<'static, ()>>) {
    let mut watches = Vec::new();
    let send = |tx: &UnboundedSender<Trigger>, key: Option<VmKey>| {
        if let Some(key) = key {
            let _ = tx.unbounded_send(Trigger::Vm(key));
        }
    };
    let t = tx.clone();
    let vmis = watch(
        Api::<VirtualMachineInstance>::all(client.clone()),
        watcher::Config::default(),
        &mut watches,
        touched(move |vmi: &VirtualMachineInstance| send(&t, key_of(vmi, vmi.name_any()))),
    );
    let t = tx.clone();
    let migrations = watch(
        Api::<VirtualMachineInstanceMigration>::all(client.clone()),
        watcher::Config::default(),
        &mut watches,
        touched(move |m: &VirtualMachineInstanceMigration| {
            send(&t, key_of(m, m.spec.vmi_name.clone()))
        }),
    );
    let t = tx.clone();
    let pods = watch(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels(&format!("{LABEL_APP}={LAUNCHER_APP}")),
        &mut watches,
        touched(move |pod: &Pod| send(&t, vmi_of(pod).and_then(|name| key_of(pod, name)))),
    );
    let t = tx.clone();
    let mut known: HashMap<String, String> = HashMap::new();
    let nodes = watch_nodes.then(|| {
        watch(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            &mut watches,
            touched(move |node: &Node| {
                let name = node.name_any();
                let chassis = chassis_of(&name, Some(node));
                if known
                    .insert(name, chassis.clone())
                    .is_some_and(|c| c != chassis)
                {
                    let _ = t.unbounded_send(Trigger::All);
                }
            }),
        )
    });
    (
        Watched {
            vmis,
            migrations,
            pods,
            nodes,
        },
        watches,
    )
}

fn key_of(object: &impl ResourceExt, name: String) -> Option<VmKey> {
    Some(VmKey {
        namespace: object.namespace()?,
        name,
    })
}

/// Calls `on_object` with every object a watch event applies or deletes.
fn touched<K>(
    mut on_object: impl FnMut(&K) + Send + 'static,
) -> impl FnMut(&watcher::Event<K>) + Send + 'static {
    move |event| match event {
        watcher::Event::Apply(object)
        | watcher::Event::Delete(object)
        | watcher::Event::InitApply(object) => on_object(object),
        watcher::Event::Init | watcher::Event::InitDone => {}
    }
}

/// Plans and writes VMs one at a time as triggers arrive (migrations are rare, and one writer
/// per port keeps the writes ordered); a failure is retried with a per-VM backoff.
async fn work<N: Northbound>(
    ctx: &Context<N>,
    watched: &Watched,
    mut rx: UnboundedReceiver<Trigger>,
    tx: UnboundedSender<Trigger>,
) {
    let mut failures: HashMap<VmKey, u32> = HashMap::new();
    while let Some(first) = rx.next().await {
        let (mut pending, mut everything) = (BTreeSet::new(), false);
        let mut next = Some(first);
        while let Some(trigger) = next {
            match trigger {
                Trigger::Vm(key) => {
                    pending.insert(key);
                }
                Trigger::All => everything = true,
            }
            next = rx.try_recv().ok();
        }
        // Indexed after the triggers are taken: each was sent after its cache was updated.
        let by_vm = ByVm::index(watched);
        if everything {
            pending.extend(all_keys(ctx, watched, &by_vm));
        }
        for key in pending {
            match reconcile(ctx, watched, &by_vm, &key).await {
                Ok(()) => {
                    failures.remove(&key);
                }
                Err(e) => {
                    ctx.metrics.failed(e.metric_label());
                    let n = failures.entry(key.clone()).or_default();
                    *n = n.saturating_add(1);
                    let delay = Duration::from_millis(500 << (*n - 1).min(6));
                    tracing::warn!(vmi = %key.name, namespace = %key.namespace, error = %e, retry_in = ?delay, "migration options not written");
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.unbounded_send(Trigger::Vm(key));
                    });
                }
            }
        }
    }
}

/// Every VM that might need its options changed: each VMI, each VM named by a VMIM or a launcher
/// pod, and each of our ports that carries a managed option (its VMI may be gone).
fn all_keys<N: Northbound>(ctx: &Context<N>, watched: &Watched, by_vm: &ByVm) -> BTreeSet<VmKey> {
    let mut keys: BTreeSet<VmKey> = by_vm
        .migrations
        .keys()
        .chain(by_vm.pods.keys())
        .cloned()
        .collect();
    keys.extend(
        watched
            .vmis
            .state()
            .iter()
            .filter_map(|v| key_of(v.as_ref(), v.name_any())),
    );
    keys.extend(
        ctx.nb
            .ports()
            .into_iter()
            .filter(|p| p.is_ours() && has_managed_option(&p.options))
            .filter_map(|p| {
                let (namespace, name) = p.external_ids.get(ids::POD)?.split_once('/')?;
                Some(VmKey {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }),
    );
    keys
}

/// The VMIMs and launcher pods of each VM, indexed once per batch of triggers.
#[derive(Default)]
struct ByVm {
    migrations: HashMap<VmKey, Vec<Arc<VirtualMachineInstanceMigration>>>,
    pods: HashMap<VmKey, Vec<Arc<Pod>>>,
}

impl ByVm {
    fn index(watched: &Watched) -> Self {
        let mut by_vm = ByVm::default();
        for m in watched.migrations.state() {
            if let Some(key) = key_of(m.as_ref(), m.spec.vmi_name.clone()) {
                by_vm.migrations.entry(key).or_default().push(m);
            }
        }
        for p in watched.pods.state() {
            if let Some(key) = vmi_of(&p).and_then(|name| key_of(p.as_ref(), name)) {
                by_vm.pods.entry(key).or_default().push(p);
            }
        }
        by_vm
    }
}

fn has_managed_option(options: &BTreeMap<String, String>) -> bool {
    options.contains_key(plan::REQUESTED_CHASSIS) || options.contains_key(plan::ACTIVATION_STRATEGY)
}

/// What the caches say about one VM, in the planner's terms.
fn observe(
    watched: &Watched,
    by_vm: &ByVm,
    key: &VmKey,
) -> (Option<Arc<VirtualMachineInstance>>, Vec<Arc<Pod>>, Observed) {
    let vmi = watched
        .vmis
        .get(&ObjectRef::new(&key.name).within(&key.namespace));
    let migrations = by_vm
        .migrations
        .get(key)
        .into_iter()
        .flatten()
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
    let pods = by_vm.pods.get(key).cloned().unwrap_or_default();
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
async fn reconcile<N: Northbound>(
    ctx: &Context<N>,
    watched: &Watched,
    by_vm: &ByVm,
    key: &VmKey,
) -> Result<(), Error> {
    let (vmi, pods, observed) = observe(watched, by_vm, key);
    let stage = plan::plan(&observed, |node| {
        let known = watched
            .nodes
            .as_ref()
            .and_then(|n| n.get(&ObjectRef::new(node)));
        chassis_of(node, known.as_deref())
    });
    let desired = stage.options();
    // The port every launcher pod of the VM shares; the VMI's own name covers a VM whose pods
    // are all gone.
    let ports: BTreeSet<String> = pods
        .iter()
        .map(|p| nic::key(p).as_str().to_owned())
        .chain([NicKey::new(&key.name, &key.namespace, None)
            .as_str()
            .to_owned()])
        .collect();
    for name in ports {
        let Some(port) = ctx.nb.port(&name).filter(|p| p.is_ours()) else {
            continue;
        };
        let changes = plan::changes(&port.options, &desired);
        if changes.is_empty() {
            continue;
        }
        ctx.nb
            .update_port_options(&name, &changes.set, &changes.remove)
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
