//! A live migration played end to end on the local cluster, with traffic through it: KubeVirt's
//! objects as virt-controller writes them ([`VirtController`]), launcher pods wired by the
//! cluster's CNI, QEMU's side of the switch-over ([`Traffic`]), and the probes' verdict. Shared
//! by the live-migration dataplane e2e and its benchmark, so both play the same migration.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};

use crate::Cluster;
use crate::dataplane::{node_of, wait_running};
use crate::kubevirt::VirtController;
use crate::portkeeper::{annotation, lsp_options, wait_for};
use crate::vm::{Instance, Judged, Mark, Traffic, pod_netns};

/// How long both launcher pods exist before the switch-over (QEMU's pre-copy). Real migrations
/// take seconds to minutes; a short one understates what a migration without multi-chassis
/// binding loses.
pub const PRECOPY: Duration = Duration::from_secs(1);
/// How long the traffic runs on after the losing launcher pod is gone, for late losses.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Who keeps the VM's port right during a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// KubeVirt's VirtualMachineInstanceMigration drives portkeeper's migration options.
    Options,
    /// The same pods and switch-over without a VirtualMachineInstanceMigration, so no options:
    /// the port binds wherever an interface claims it, as under a controller without
    /// multi-chassis binding support.
    Naive,
}

/// How a migration ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The target takes over: QEMU switches over, the source pod goes.
    Succeeded,
    /// The target pod is removed before any switch-over; the VM stays on the source.
    Failed,
}

/// What a migration did to the traffic.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// From the migration's start until [`SETTLE`] after the losing launcher pod was gone.
    pub judged: Judged,
    /// The streams' position at the switch-over, if there was one.
    pub switch_over: Option<Mark>,
}

/// A VM that runs in one launcher pod, with probes streaming between it and a prober pod.
pub struct LiveVm<'a> {
    cluster: &'a Cluster,
    virt: &'a VirtController,
    vm: String,
    vmi_uid: String,
    traffic: Traffic,
    /// The launcher pod the VM runs in, and the VM's copy there.
    running: (Pod, Instance),
    migrations: u32,
}

impl<'a> LiveVm<'a> {
    /// Starts the VM `vm` on `node` and the probes between it and `prober`, a running pod, on
    /// UDP port `port` (one per VM sharing a prober).
    pub async fn start(
        cluster: &'a Cluster,
        virt: &'a VirtController,
        vm: &str,
        node: &str,
        prober: &Pod,
        port: u16,
    ) -> LiveVm<'a> {
        virt.create_vm(vm).await;
        let launcher = format!("{vm}-0");
        let vmi_uid = virt.start(vm, Some((&launcher, node))).await;
        let pod = wait_running(&virt.pods, &launcher, None).await;
        let (traffic, first) = Traffic::start(
            (&netns(cluster, prober), address(prober)),
            (&netns(cluster, &pod), address(&pod)),
            mac(&pod),
            port,
        )
        .unwrap_or_else(|e| panic!("probes between {} and {vm}: {e}", prober.name_any()));
        LiveVm {
            cluster,
            virt,
            vm: vm.to_owned(),
            vmi_uid,
            traffic,
            running: (pod, first),
            migrations: 0,
        }
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.vm
    }

    /// The node the VM runs on.
    pub fn node(&self) -> &str {
        node_of(&self.running.0)
    }

    /// The launcher pod the VM runs in.
    pub fn launcher(&self) -> &Pod {
        &self.running.0
    }

    /// The traffic's position now, to judge a stretch of it with [`LiveVm::judge_since`].
    pub fn mark(&self) -> Mark {
        self.traffic.mark()
    }

    /// What the traffic between the VM and its prober lost since `from`.
    pub fn judge_since(&self, from: Mark) -> Judged {
        self.traffic.judge(from, self.traffic.mark())
    }

    /// The VM's port.
    pub fn port(&self) -> String {
        let namespace = self.running.0.namespace().unwrap_or_default();
        format!("{}.{namespace}", self.vm)
    }

    /// Migrates the VM to `to` as KubeVirt does, the port kept by `mode`, ending as `ending`
    /// says; returns what the traffic saw.
    pub async fn migrate(&mut self, to: &str, mode: Mode, ending: Ending) -> Outcome {
        self.migrations += 1;
        let from = self.node().to_owned();
        let name = format!("{}-m{}", self.vm, self.migrations);
        let target_pod = format!("{}-{}", self.vm, self.migrations);
        let start = self.traffic.mark();
        let uid = match mode {
            Mode::Options => {
                let uid = self.virt.migrate(&self.vm, &name).await;
                self.virt.phase(&name, "Scheduling").await;
                uid
            }
            // KubeVirt labels the target with its migration's UID; here none exists.
            Mode::Naive => format!("00000000-0000-0000-0000-{:012}", self.migrations),
        };
        self.virt
            .launcher(
                &self.vm,
                &self.vmi_uid,
                &target_pod,
                Some((&name, &uid)),
                None,
            )
            .await;
        self.virt.bind(&target_pod, to).await;
        if mode == Mode::Options {
            self.virt
                .migration_state(
                    &self.vm,
                    &uid,
                    (&self.running.0.name_any(), &target_pod),
                    (&from, to),
                )
                .await;
            for phase in ["Scheduled", "PreparingTarget"] {
                self.virt.phase(&name, phase).await;
            }
        }
        let target = wait_running(&self.virt.pods, &target_pod, None).await;
        if mode == Mode::Options {
            self.options_become(&dual(&from, to)).await;
        }
        let target_netns = netns(self.cluster, &target);
        let instance = self
            .traffic
            .plug(&target_netns)
            .unwrap_or_else(|e| panic!("the VM's copy in {target_pod}: {e}"));
        if mode == Mode::Options {
            for phase in ["TargetReady", "Running"] {
                self.virt.phase(&name, phase).await;
            }
        }
        tokio::time::sleep(PRECOPY).await;
        let (switch_over, losing) = match ending {
            Ending::Succeeded => {
                let mark = self.traffic.switch_over(instance, &target_netns);
                self.finish(mode, &name, true, to).await;
                let source = std::mem::replace(&mut self.running, (target, instance));
                (Some(mark), source)
            }
            Ending::Failed => {
                self.finish(mode, &name, false, &from).await;
                (None, (target, instance))
            }
        };
        self.traffic.unplug(losing.1);
        end_launcher(&self.virt.pods, &losing.0.name_any()).await;
        if mode == Mode::Options {
            self.options_become(&BTreeMap::new()).await;
        }
        tokio::time::sleep(SETTLE).await;
        Outcome {
            judged: self.traffic.judge(start, self.traffic.mark()),
            switch_over,
        }
    }

    async fn finish(&self, mode: Mode, migration: &str, succeeded: bool, node: &str) {
        match mode {
            Mode::Options => self.virt.finish(&self.vm, migration, succeeded, node).await,
            Mode::Naive => {
                self.virt
                    .vmi_status(&self.vm, serde_json::json!({ "nodeName": node }))
                    .await
            }
        }
    }

    async fn options_become(&self, want: &BTreeMap<String, String>) {
        let port = self.port();
        wait_for(&format!("{port} options {want:?}"), async || {
            (lsp_options(self.cluster, &port) == *want).then_some(())
        })
        .await;
    }
}

/// Ends a launcher pod as its QEMU exiting does: its node tears the sandbox down (CNI `DEL`
/// removes the VM's interface there) before the pod object goes. A deletion with a grace period
/// has the node agent do exactly that; one without would remove the object at once and leave
/// the interface behind for a moment.
async fn end_launcher(pods: &Api<Pod>, name: &str) {
    pods.delete(name, &DeleteParams::default().grace_period(1))
        .await
        .unwrap_or_else(|e| panic!("delete launcher pod {name}: {e}"));
    wait_for(&format!("{name} gone"), async || {
        pods.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// The options portkeeper gives the VM's port while it migrates from `from` to `to` (node names
/// are chassis names on the local cluster).
fn dual(from: &str, to: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("requested-chassis".to_owned(), format!("{from},{to}")),
        ("activation-strategy".to_owned(), "rarp".to_owned()),
    ])
}

fn netns(cluster: &Cluster, pod: &Pod) -> PathBuf {
    pod_netns(cluster.netns_prefix(), &pod.uid().expect("a pod has a UID"))
}

/// A pod's first (IPv4) address.
pub fn address(pod: &Pod) -> IpAddr {
    annotation(pod, "ip_address")
        .and_then(|ips| ips.split(',').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{} has no ip_address", pod.name_any()))
}

fn mac(pod: &Pod) -> [u8; 6] {
    let text = annotation(pod, "mac_address")
        .unwrap_or_else(|| panic!("{} has no mac_address", pod.name_any()));
    let mut mac = [0; 6];
    for (byte, hex) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("MAC {text}"));
    }
    mac
}
