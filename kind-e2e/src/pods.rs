//! The pod half of the kubelet: every pod bound to this node gets a network namespace wired by the
//! CNI plugin, its addresses in `status`, and `Running`/`Ready`; a deleted pod gets `DEL`, loses its
//! namespace, and its deletion is completed.
//!
//! Deletions do not rely on the reconciler alone. A pod deleted with no grace period is gone from
//! the API (and from the controller's cache) right away, and kube-runtime drops a reconcile whose
//! object is no longer cached, so such a pod would never get its `DEL`. A second watch therefore
//! follows which pods exist: a `Deleted` event tears the sandbox down at once, and after every
//! (re)list, and periodically, sandboxes of pods that exist in neither view are removed. Operations
//! on one sandbox are serialized, so a `DEL` waits for an `ADD` still in flight.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use portkeeper_api::networks;
use serde_json::{Value, json};
use tokio::sync::OwnedMutexGuard;

use crate::Error;
use crate::cni::{Attachment, CniRuntime, result_ips};
use crate::multus;
use crate::node::time_now;
use crate::sandbox::{Sandbox, SandboxStore, create_netns, delete_netns, write_resolv_conf};

/// The reason kubelet gives when a pod's network cannot be set up; tools and people grep for it.
pub const SANDBOX_FAILURE_REASON: &str = "FailedCreatePodSandBox";
const IFNAME: &str = "eth0";
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often sandboxes whose pod is gone are looked for, besides after each (re)list.
const ORPHAN_SWEEP_PERIOD: Duration = Duration::from_secs(10);

/// Everything the pod reconciler needs.
pub struct PodAgent {
    pub client: Client,
    pub node_name: String,
    pub node_ip: String,
    pub cni: CniRuntime,
    pub sandboxes: SandboxStore,
    /// Prefix of every network namespace this agent makes (`<prefix><pod uid>`).
    pub netns_prefix: String,
    failures: Mutex<HashMap<String, u32>>,
    /// Sandboxes made or verified (CNI `CHECK`) by this process; others come from a previous run.
    verified: Mutex<HashSet<String>>,
    /// One lock per pod UID: setting up and tearing down a sandbox never overlap.
    sandbox_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl PodAgent {
    pub fn new(
        client: Client,
        node_name: String,
        node_ip: String,
        cni: CniRuntime,
        sandboxes: SandboxStore,
        netns_prefix: String,
    ) -> Self {
        Self {
            client,
            node_name,
            node_ip,
            cni,
            sandboxes,
            netns_prefix,
            failures: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashSet::new()),
            sandbox_locks: Mutex::new(HashMap::new()),
        }
    }

    /// Watches the pods bound to this node and reconciles them until the watch ends.
    pub async fn run(self: Arc<Self>) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.node_name));
        let controller = Controller::new(pods.clone(), config.clone());
        let deletions = tokio::spawn(follow_deletions(
            self.clone(),
            pods,
            config,
            controller.store(),
        ));
        controller
            .run(reconcile, error_policy, self)
            .for_each(|res| async move {
                match res {
                    // Logged by `error_policy`, and handled by `follow_deletions`, respectively.
                    Ok(_)
                    | Err(controller::Error::ReconcilerFailed(..))
                    | Err(controller::Error::ObjectNotFound(_)) => {}
                    Err(e) => tracing::warn!(error = %e, "pod watch"),
                }
            })
            .await;
        deletions.abort();
    }

    /// Holds the pod's sandbox lock until the guard is dropped.
    async fn lock_sandbox(&self, uid: &str) -> OwnedMutexGuard<()> {
        let lock = self
            .sandbox_locks
            .lock()
            .expect("not poisoned")
            .entry(uid.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// The CNI call of `sandbox`'s primary network (eth0).
    fn attachment(&self, sandbox: &Sandbox) -> Attachment {
        self.attachment_on(sandbox, IFNAME)
    }

    /// The CNI call of `sandbox`'s interface `ifname`.
    fn attachment_on(&self, sandbox: &Sandbox, ifname: &str) -> Attachment {
        let args: BTreeMap<String, String> = [
            ("K8S_POD_NAMESPACE", sandbox.namespace.as_str()),
            ("K8S_POD_NAME", sandbox.name.as_str()),
            ("K8S_POD_INFRA_CONTAINER_ID", sandbox.container_id.as_str()),
            ("K8S_POD_UID", sandbox.uid.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Attachment {
            container_id: sandbox.container_id.clone(),
            netns: sandbox.netns_path(),
            ifname: ifname.into(),
            args,
        }
    }

    /// Makes the pod's namespace and runs `ADD`; on failure undoes what it did.
    async fn set_up(&self, pod: &Pod, uid: &str) -> Result<Sandbox, Error> {
        let _lock = self.lock_sandbox(uid).await;
        let mut sandbox = Sandbox {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: uid.into(),
            netns: format!("{}{uid}", self.netns_prefix),
            container_id: uid.replace('-', ""),
            result: None,
            attachments: Vec::new(),
        };
        self.sandboxes.save(&sandbox)?;
        create_netns(&sandbox.netns).await?;
        match self.add_networks(pod, &mut sandbox).await {
            Ok(()) => {
                self.verified
                    .lock()
                    .expect("not poisoned")
                    .insert(uid.to_string());
                let ips = result_ips(sandbox.result.as_ref().unwrap_or(&Value::Null));
                tracing::info!(pod = %format!("{}/{}", sandbox.namespace, sandbox.name),
                    ips = ?ips, attachments = sandbox.attachments.len(), "sandbox ready");
                Ok(sandbox)
            }
            Err(e) => {
                if let Err(cleanup) = self.tear_down_locked(uid).await {
                    tracing::warn!(error = %cleanup, "cleanup after failed ADD");
                }
                Err(e)
            }
        }
    }

    /// What Multus does: the pod's attachment networks resolved first (a bad selection or a
    /// missing definition fails before any `ADD`), then `ADD` of the primary network and of each
    /// attachment network in the pod's order, each step recorded in the sandbox.
    async fn add_networks(&self, pod: &Pod, sandbox: &mut Sandbox) -> Result<(), Error> {
        sandbox.attachments = multus::resolve(&self.client, pod).await?;
        self.sandboxes.save(sandbox)?;
        let primary = self.cni.add(&self.attachment(sandbox)).await?;
        // The pod's resolver follows the primary network, as Multus reports the default
        // network's DNS.
        write_resolv_conf(&sandbox.netns, &primary)?;
        sandbox.result = Some(primary);
        self.sandboxes.save(sandbox)?;
        for index in 0..sandbox.attachments.len() {
            let delegate = &sandbox.attachments[index];
            let runtime = self.cni.delegate(delegate.config_list()?);
            let call = self.attachment_on(sandbox, &delegate.interface);
            let result = runtime.add(&call).await?;
            sandbox.attachments[index].result = Some(result);
            self.sandboxes.save(sandbox)?;
        }
        Ok(())
    }

    /// Checks, once per agent run, a sandbox made by an earlier run (CNI `CHECK`); a broken one is
    /// torn down so that it is made again.
    async fn still_intact(&self, sandbox: Sandbox) -> Result<Option<Sandbox>, Error> {
        if self
            .verified
            .lock()
            .expect("not poisoned")
            .contains(&sandbox.uid)
        {
            return Ok(Some(sandbox));
        }
        let intact = match self.check_networks(&sandbox).await {
            Ok(()) => sandbox.netns_path().exists(),
            Err(e) => {
                tracing::warn!(pod = %format!("{}/{}", sandbox.namespace, sandbox.name),
                    error = %e, "sandbox from an earlier run failed CHECK; recreating it");
                false
            }
        };
        if !intact {
            self.tear_down(&sandbox.uid).await?;
            return Ok(None);
        }
        self.verified
            .lock()
            .expect("not poisoned")
            .insert(sandbox.uid.clone());
        Ok(Some(sandbox))
    }

    /// `CHECK` of the primary network, then of each attachment network, in order.
    async fn check_networks(&self, sandbox: &Sandbox) -> Result<(), Error> {
        let cached = sandbox.result.clone().unwrap_or(Value::Null);
        self.cni.check(&self.attachment(sandbox), &cached).await?;
        for delegate in &sandbox.attachments {
            let cached = delegate.result.clone().unwrap_or(Value::Null);
            let call = self.attachment_on(sandbox, &delegate.interface);
            self.cni
                .delegate(delegate.config_list()?)
                .check(&call, &cached)
                .await?;
        }
        Ok(())
    }

    /// Runs `DEL`, removes the namespace and forgets the sandbox; a missing sandbox is fine.
    async fn tear_down(&self, uid: &str) -> Result<(), Error> {
        let lock = self.lock_sandbox(uid).await;
        self.tear_down_locked(uid).await?;
        // Forget the lock unless someone waits on it (the map and `lock` hold the only references).
        let mut locks = self.sandbox_locks.lock().expect("not poisoned");
        if locks.get(uid).is_some_and(|l| Arc::strong_count(l) == 2) {
            locks.remove(uid);
        }
        drop(lock);
        Ok(())
    }

    /// [`Self::tear_down`] for a caller already holding the pod's sandbox lock.
    async fn tear_down_locked(&self, uid: &str) -> Result<(), Error> {
        let Some(sandbox) = self.sandboxes.load(uid)? else {
            return Ok(());
        };
        for delegate in sandbox.attachments.iter().rev() {
            let call = self.attachment_on(&sandbox, &delegate.interface);
            self.cni
                .delegate(delegate.config_list()?)
                .del(&call, delegate.result.as_ref())
                .await?;
        }
        let att = self.attachment(&sandbox);
        self.cni.del(&att, sandbox.result.as_ref()).await?;
        delete_netns(&sandbox.netns).await?;
        self.sandboxes.remove(uid)?;
        self.verified.lock().expect("not poisoned").remove(uid);
        tracing::info!(pod = %format!("{}/{}", sandbox.namespace, sandbox.name), "sandbox removed");
        Ok(())
    }

    /// Completes a graceful deletion once the sandbox is gone, as the kubelet does.
    async fn finish_deletion(&self, pod: &Pod, uid: &str) -> Result<(), Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.into()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes addresses, `Running` and `Ready` into the pod's status, and the interfaces of
    /// `sandbox` (none for a host-network pod) into its `network-status`, unless already there.
    async fn report_running(
        &self,
        pod: &Pod,
        ips: &[String],
        sandbox: Option<&Sandbox>,
    ) -> Result<(), Error> {
        let network_status = sandbox.map(|s| {
            let primary = s.result.clone().unwrap_or(Value::Null);
            multus::network_status(&self.cni.config().name, &primary, &s.attachments).to_string()
        });
        let status = pod.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let reported: Vec<String> = status
            .pod_ips
            .iter()
            .flatten()
            .map(|p| p.ip.clone())
            .collect();
        let published = pod.annotations().get(networks::NETWORK_STATUS);
        if ready
            && status.phase.as_deref() == Some("Running")
            && reported == ips
            && published == network_status.as_ref()
        {
            return Ok(());
        }
        let now = time_now();
        let started = status
            .start_time
            .map(serde_json::to_value)
            .transpose()?
            .unwrap_or_else(|| now.clone());
        let condition =
            |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now});
        let spec = pod.spec.clone().unwrap_or_default();
        let containers: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "image": c.image.clone().unwrap_or_default(),
                    "imageID": "",
                    "containerID": format!("portkeeper://{}", pod.uid().unwrap_or_default()),
                    "ready": true,
                    "started": true,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": started}},
                })
            })
            .collect();
        let conditions = ["Initialized", "Ready", "ContainersReady", "PodScheduled"].map(condition);
        let mut patch = json!({
            "status": {
                "phase": "Running",
                "hostIP": self.node_ip,
                "podIP": ips.first(),
                "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                "startTime": started,
                "conditions": conditions,
                "containerStatuses": containers,
            }
        });
        if let Some(value) = network_status {
            // Multus writes network-status through the status subresource too.
            patch["metadata"] = json!({ "annotations": { (networks::NETWORK_STATUS): value } });
        }
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        api.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
        Ok(())
    }

    /// Records a Warning event on the pod, as kubelet does when a sandbox cannot be made.
    async fn report_sandbox_failure(&self, pod: &Pod, error: &Error) {
        let namespace = pod.namespace().unwrap_or_default();
        let now = time_now();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let event = json!({
            "metadata": {"name": format!("{}.{nanos:x}", pod.name_any()), "namespace": namespace},
            "involvedObject": {
                "apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": pod.name_any(),
                "uid": pod.uid(), "resourceVersion": pod.resource_version(),
            },
            "reason": SANDBOX_FAILURE_REASON,
            "message": format!("Failed to create pod sandbox: {error}"),
            "type": "Warning",
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": "portkeeper-node-agent", "reportingInstance": self.node_name,
        });
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let created = match serde_json::from_value::<Event>(event) {
            Ok(event) => api
                .create(&PostParams::default(), &event)
                .await
                .map(drop)
                .map_err(Error::from),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = created {
            tracing::warn!(error = %e, "could not record sandbox failure event");
        }
    }
}

async fn reconcile(pod: Arc<Pod>, agent: Arc<PodAgent>) -> Result<Action, Error> {
    let uid = pod.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if pod.metadata.deletion_timestamp.is_some() {
        agent.tear_down(&uid).await?;
        agent.finish_deletion(&pod, &uid).await?;
        return Ok(Action::await_change());
    }
    if matches!(phase, Some("Succeeded" | "Failed")) {
        agent.tear_down(&uid).await?;
        return Ok(Action::await_change());
    }
    let (ips, sandbox): (Vec<String>, Option<Sandbox>) = if host_network {
        (vec![agent.node_ip.clone()], None)
    } else {
        let existing = match agent.sandboxes.load(&uid)? {
            Some(sandbox) if sandbox.result.is_some() => agent.still_intact(sandbox).await?,
            _ => None,
        };
        let sandbox = match existing {
            Some(sandbox) => sandbox,
            None => match agent.set_up(&pod, &uid).await {
                Ok(sandbox) => sandbox,
                Err(e) => {
                    agent.report_sandbox_failure(&pod, &e).await;
                    return Err(e);
                }
            },
        };
        let result = sandbox.result.clone().unwrap_or(Value::Null);
        let ips = result_ips(&result)
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        (ips, Some(sandbox))
    };
    agent.report_running(&pod, &ips, sandbox.as_ref()).await?;
    agent.failures.lock().expect("not poisoned").remove(&uid);
    Ok(Action::await_change())
}

/// Exponential backoff per pod: 1 s, 2 s, 4 s … up to 30 s.
fn error_policy(pod: Arc<Pod>, error: &Error, agent: Arc<PodAgent>) -> Action {
    let uid = pod.uid().unwrap_or_default();
    let mut failures = agent.failures.lock().expect("not poisoned");
    let count = failures.entry(uid).or_insert(0);
    *count += 1;
    let delay = backoff(*count);
    tracing::warn!(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
        error = %error, retry_in = ?delay, "pod not set up");
    Action::requeue(delay)
}

/// The retry delay after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(5)).min(MAX_BACKOFF)
}

/// Follows which pods bound to this node exist, through a watch of its own: tears down the
/// sandbox of each deleted pod at once, and after every (re)list and every
/// [`ORPHAN_SWEEP_PERIOD`] the sandboxes whose pod this watch and the controller's cache both lack.
///
/// Both views are consulted because they advance independently: the controller may already be
/// setting up a pod this watch has not seen yet.
async fn follow_deletions(
    agent: Arc<PodAgent>,
    pods: Api<Pod>,
    config: watcher::Config,
    cached: Store<Pod>,
) {
    let mut live: Option<HashSet<String>> = None;
    let mut listing = HashSet::new();
    let mut events = std::pin::pin!(watcher(pods, config).default_backoff());
    let mut sweep = tokio::time::interval(ORPHAN_SWEEP_PERIOD);
    loop {
        tokio::select! {
            event = events.next() => match event {
                None => return,
                Some(Err(e)) => tracing::warn!(error = %e, "pod deletion watch"),
                Some(Ok(watcher::Event::Init)) => listing.clear(),
                Some(Ok(watcher::Event::InitApply(pod))) => listing.extend(pod.uid()),
                Some(Ok(watcher::Event::InitDone)) => {
                    let listed = live.insert(std::mem::take(&mut listing));
                    remove_orphans(&agent, listed, &cached).await;
                }
                Some(Ok(watcher::Event::Apply(pod))) => {
                    if let Some(live) = live.as_mut() {
                        live.extend(pod.uid());
                    }
                }
                Some(Ok(watcher::Event::Delete(pod))) => {
                    let Some(uid) = pod.uid() else { continue };
                    if let Some(live) = live.as_mut() {
                        live.remove(&uid);
                    }
                    let agent = agent.clone();
                    tokio::spawn(async move {
                        if let Err(e) = agent.tear_down(&uid).await {
                            tracing::warn!(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
                                error = %e, "removing the sandbox of a deleted pod");
                        }
                    });
                }
            },
            _ = sweep.tick() => {
                if let Some(live) = &live {
                    remove_orphans(&agent, live, &cached).await;
                }
            }
        }
    }
}

/// Tears down every sandbox whose pod is neither in `live` nor in the controller's cache.
async fn remove_orphans(agent: &PodAgent, live: &HashSet<String>, cached: &Store<Pod>) {
    let sandboxes = match agent.sandboxes.list() {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "listing sandboxes");
            return;
        }
    };
    let cached: HashSet<String> = cached.state().iter().filter_map(|p| p.uid()).collect();
    for sandbox in sandboxes
        .into_iter()
        .filter(|s| !live.contains(&s.uid) && !cached.contains(&s.uid))
    {
        let pod = format!("{}/{}", sandbox.namespace, sandbox.name);
        tracing::info!(%pod, "removing orphaned sandbox");
        if let Err(e) = agent.tear_down(&sandbox.uid).await {
            tracing::warn!(%pod, error = %e, "removing orphaned sandbox");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why [`follow_deletions`] never awaits `Store::wait_until_ready`: in kube-runtime 5.0 the
    /// readiness is a oneshot receiver that keeps one waker, so of two tasks waiting at once (the
    /// controller's runner is always one) only the last to poll is woken. The agent's orphan sweep
    /// once waited like this and never ran. If this test fails, kube-runtime wakes every waiter.
    #[tokio::test]
    async fn store_readiness_wakes_only_the_last_of_two_waiters() {
        let (reader, mut writer) = kube::runtime::reflector::store::<Pod>();
        let wait = |store: Store<Pod>| tokio::spawn(async move { store.wait_until_ready().await });
        let first = wait(reader.clone());
        let second = wait(reader.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let patience = Duration::from_secs(1);
        assert!(tokio::time::timeout(patience, second).await.is_ok());
        assert!(
            tokio::time::timeout(patience, first).await.is_err(),
            "the first waiter was woken too"
        );
        assert!(
            reader.wait_until_ready().await.is_ok(),
            "a later waiter sees it at once"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
