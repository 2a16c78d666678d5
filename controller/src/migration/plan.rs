//! The pure half of live migration: from what KubeVirt's objects say now to the two options of
//! the VM's port that OVN needs. It reads no clock and keeps no memory of earlier calls, so a
//! controller restarted in the middle of a migration computes exactly what an uninterrupted one
//! would, and a missed event costs nothing but latency.
//!
//! The options over a migration's life:
//! - in progress (`Scheduling` … `Running`) with the target pod bound to a node:
//!   `requested-chassis=<source>,<target>` and `activation-strategy=rarp`, so OVN binds the port
//!   on both chassis and opens the target once the VM announces itself there with a RARP;
//! - `Succeeded`: `requested-chassis=<target>`; `Failed`: `requested-chassis=<source>`; in both
//!   cases without `activation-strategy`, and only while the losing launcher pod still exists
//!   (its interface could otherwise claim the port back);
//! - otherwise neither option, so a VM started again on any node binds there.

use std::collections::{BTreeMap, BTreeSet};

use portkeeper_api::kubevirt::MigrationState;

use crate::ovn::{ObservedPort, ids};

/// `options:requested-chassis`: the chassis allowed to bind the port, main one first.
pub const REQUESTED_CHASSIS: &str = "requested-chassis";
/// `options:activation-strategy`: how an additional chassis is unblocked.
pub const ACTIVATION_STRATEGY: &str = "activation-strategy";
/// The activation strategy for live migration: the target opens on the VM's first RARP.
pub const RARP: &str = "rarp";

/// A VMIM phase, reduced to what the port options depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Not started as far as the network is concerned: `Pending`, unset, or a phase of a
    /// decentralized (cross-cluster) migration, which portkeeper does not drive.
    NotStarted,
    /// `Scheduling`, `Scheduled`, `PreparingTarget`, `TargetReady` or `Running`.
    InProgress,
    /// The VM runs on the target.
    Succeeded,
    /// The VM stayed on the source.
    Failed,
}

impl Phase {
    /// Reads `status.phase` of a VMIM.
    pub fn of(phase: Option<&str>) -> Phase {
        match phase {
            Some("Scheduling" | "Scheduled" | "PreparingTarget" | "TargetReady" | "Running") => {
                Phase::InProgress
            }
            Some("Succeeded") => Phase::Succeeded,
            Some("Failed") => Phase::Failed,
            _ => Phase::NotStarted,
        }
    }
}

/// One VirtualMachineInstanceMigration of the VMI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// VMIM name, for Events and logs.
    pub name: String,
    /// VMIM UID: what target pods and `migrationState` refer to.
    pub uid: String,
    /// Its phase.
    pub phase: Phase,
    /// Creation time (seconds since the epoch); orders migrations, the name breaks ties.
    pub created: i64,
}

/// One virt-launcher pod of the VM, as long as it exists (terminating ones included: their
/// interface may still be plugged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LauncherPod {
    /// Pod name.
    pub name: String,
    /// `spec.nodeName`, once bound.
    pub node: Option<String>,
    /// Label `kubevirt.io/migrationJobUID`: set on a migration's target pod.
    pub migration_uid: Option<String>,
}

/// The VMI's status fields that matter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vmi {
    /// `status.nodeName`: the source during a migration, the target after a success.
    pub node: Option<String>,
    /// `status.migrationState`: describes the latest migration, which may not be the one at hand.
    pub state: Option<MigrationState>,
}

impl Vmi {
    /// The migration state, only if it belongs to the migration `uid` (never a stale one).
    fn state_of(&self, uid: &str) -> Option<&MigrationState> {
        self.state
            .as_ref()
            .filter(|s| s.migration_uid.as_deref() == Some(uid))
    }

    /// How the VMI says the migration `uid` ended, if it says it did.
    fn verdict(&self, uid: &str) -> Option<Outcome> {
        let state = self.state_of(uid)?;
        if state.failed == Some(true) {
            Some(Outcome::Failed)
        } else if state.completed == Some(true) {
            Some(Outcome::Succeeded)
        } else {
            None
        }
    }
}

/// Everything the options of one VM's port depend on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// The VMI; `None` when the VM is stopped or gone.
    pub vmi: Option<Vmi>,
    /// The VMIMs whose `spec.vmiName` is this VMI.
    pub migrations: Vec<Migration>,
    /// The VM's launcher pods.
    pub pods: Vec<LauncherPod>,
}

/// The two managed options; `None` means absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortOptions {
    /// `requested-chassis`.
    pub requested_chassis: Option<String>,
    /// `activation-strategy`.
    pub activation_strategy: Option<String>,
}

/// How a finished migration ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The VM runs on the target.
    Succeeded,
    /// The VM stayed on the source.
    Failed,
}

/// What the options serve, which also says why they are what they are.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Nothing to serve: no VMI, no migration, or no launcher pod left that could contend.
    Idle,
    /// A migration in progress with its target bound: both chassis, target blocked until RARP.
    Migrating {
        /// VMIM name.
        migration: String,
        /// Source chassis (main binding).
        source: String,
        /// Target chassis (additional binding).
        target: String,
    },
    /// A finished migration whose losing launcher pod still exists: pinned to the winner.
    Settled {
        /// VMIM name (or UID when only the VMI's `migrationState` is left).
        migration: String,
        /// How it ended.
        outcome: Outcome,
        /// The chassis the VM runs on.
        chassis: String,
    },
}

impl Stage {
    /// The options this stage needs.
    pub fn options(&self) -> PortOptions {
        match self {
            Stage::Idle => PortOptions::default(),
            Stage::Migrating { source, target, .. } => PortOptions {
                requested_chassis: Some(format!("{source},{target}")),
                activation_strategy: Some(RARP.to_owned()),
            },
            Stage::Settled { chassis, .. } => PortOptions {
                requested_chassis: Some(chassis.clone()),
                activation_strategy: None,
            },
        }
    }

    /// The Event reason announcing that the port took this stage's options.
    pub fn reason(&self) -> &'static str {
        match self {
            Stage::Idle => "PortUnpinned",
            Stage::Migrating { .. } => "PortMigrating",
            Stage::Settled {
                outcome: Outcome::Succeeded,
                ..
            } => "PortMigrated",
            Stage::Settled {
                outcome: Outcome::Failed,
                ..
            } => "PortRolledBack",
        }
    }

    /// A sentence for Events and logs.
    pub fn describe(&self) -> String {
        match self {
            Stage::Idle => "no migration needs the port pinned".to_owned(),
            Stage::Migrating {
                migration,
                source,
                target,
            } => format!(
                "migration {migration} in progress: bound on {source} and {target}, {target} \
                 activated by the VM's RARP"
            ),
            Stage::Settled {
                migration,
                outcome: Outcome::Succeeded,
                chassis,
            } => format!("migration {migration} succeeded: pinned to the target {chassis}"),
            Stage::Settled {
                migration,
                outcome: Outcome::Failed,
                chassis,
            } => format!("migration {migration} failed: pinned back to the source {chassis}"),
        }
    }
}

/// The stage of a VM's port. `chassis` maps a node name to its OVN chassis name.
pub fn plan(observed: &Observed, chassis: impl Fn(&str) -> String) -> Stage {
    let Some(vmi) = &observed.vmi else {
        return Stage::Idle;
    };
    // The VMI's state is authoritative: a migration it reports finished is finished, even while
    // its VMIM still shows a running phase.
    let mut started: Vec<Migration> = observed
        .migrations
        .iter()
        .filter(|m| m.phase != Phase::NotStarted)
        .map(|m| Migration {
            phase: match (m.phase, vmi.verdict(&m.uid)) {
                (Phase::InProgress, Some(Outcome::Succeeded)) => Phase::Succeeded,
                (Phase::InProgress, Some(Outcome::Failed)) => Phase::Failed,
                (phase, _) => phase,
            },
            ..m.clone()
        })
        .collect();
    started.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    // KubeVirt runs one migration of a VMI at a time; an in-progress VMIM older than a finished
    // one is a leftover and is ignored.
    let history = settled(observed, vmi, &started, &chassis);
    let Some(current) = started.last().filter(|m| m.phase == Phase::InProgress) else {
        return history;
    };
    let state = vmi.state_of(&current.uid);
    let is_target = |p: &&LauncherPod| p.migration_uid.as_deref() == Some(current.uid.as_str());
    let target = observed
        .pods
        .iter()
        .filter(is_target)
        .find_map(|p| p.node.clone())
        .or_else(|| state?.target_node.clone());
    let source = state
        .and_then(|s| s.source_node.clone())
        .or_else(|| vmi.node.clone())
        .or_else(|| {
            observed
                .pods
                .iter()
                .filter(|p| !is_target(p))
                .find_map(|p| p.node.clone())
        });
    match (source.map(|s| chassis(&s)), target.map(|t| chassis(&t))) {
        (Some(source), Some(target)) if source != target => Stage::Migrating {
            migration: current.name.clone(),
            source,
            target,
        },
        // No target bound yet (or nowhere to move): whatever the earlier history needs.
        _ => history,
    }
}

/// The stage left by the latest finished migration, judged by the VMIM's phase, or by the VMI's
/// `migrationState` when that migration's VMIM is gone.
fn settled(
    observed: &Observed,
    vmi: &Vmi,
    started: &[Migration],
    chassis: &impl Fn(&str) -> String,
) -> Stage {
    let finished = started.iter().rev().find_map(|m| match m.phase {
        Phase::Succeeded => Some((m.name.clone(), m.uid.clone(), Outcome::Succeeded)),
        Phase::Failed => Some((m.name.clone(), m.uid.clone(), Outcome::Failed)),
        Phase::InProgress | Phase::NotStarted => None,
    });
    let orphan_state = || {
        let state = vmi.state.as_ref()?;
        let uid = state.migration_uid.clone()?;
        let known = observed.migrations.iter().any(|m| m.uid == uid);
        let outcome = vmi.verdict(&uid)?;
        (!known).then(|| (uid.clone(), uid, outcome))
    };
    let Some((name, uid, outcome)) = finished.or_else(orphan_state) else {
        return Stage::Idle;
    };
    let state = vmi.state_of(&uid);
    let is_target = |p: &&LauncherPod| {
        p.migration_uid.as_deref() == Some(uid.as_str())
            || state.and_then(|s| s.target_pod.as_deref()) == Some(p.name.as_str())
    };
    let pods = &observed.pods;
    let (winner, loser_exists) = match outcome {
        Outcome::Succeeded => (
            state
                .and_then(|s| s.target_node.clone())
                .or_else(|| pods.iter().filter(is_target).find_map(|p| p.node.clone()))
                .or_else(|| vmi.node.clone()),
            pods.iter().any(|p| !is_target(&p)),
        ),
        Outcome::Failed => (
            state
                .and_then(|s| s.source_node.clone())
                .or_else(|| vmi.node.clone())
                .or_else(|| {
                    pods.iter()
                        .filter(|p| !is_target(p))
                        .find_map(|p| p.node.clone())
                }),
            pods.iter().any(|p| is_target(&p)),
        ),
    };
    match winner {
        Some(node) if loser_exists => Stage::Settled {
            migration: name,
            outcome,
            chassis: chassis(&node),
        },
        _ => Stage::Idle,
    }
}

/// The ports the options of the VM `vm` in `namespace` go on, among `candidates`: every port
/// portkeeper made for the VM, one per NIC (its `pod` external id is `<namespace>/<vm>`, the
/// rule by which Kube-OVN pins every port of a VM), and no port of another VM or another system.
pub fn vm_ports<'a>(
    namespace: &str,
    vm: &str,
    candidates: impl IntoIterator<Item = &'a ObservedPort>,
) -> BTreeSet<String> {
    let owner = format!("{namespace}/{vm}");
    candidates
        .into_iter()
        .filter(|p| p.is_ours() && p.external_ids.get(ids::POD) == Some(&owner))
        .map(|p| p.name.clone())
        .collect()
}

/// The writes that turn a port's current `options` into `desired`, touching no other key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptionChanges {
    /// Keys to set to these values.
    pub set: BTreeMap<String, String>,
    /// Keys to remove.
    pub remove: Vec<String>,
}

impl OptionChanges {
    /// True when the port already has the desired options.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// The difference between a port's `options` and the desired managed options.
pub fn changes(current: &BTreeMap<String, String>, desired: &PortOptions) -> OptionChanges {
    let mut out = OptionChanges::default();
    for (key, want) in [
        (REQUESTED_CHASSIS, &desired.requested_chassis),
        (ACTIVATION_STRATEGY, &desired.activation_strategy),
    ] {
        match (current.get(key), want) {
            (Some(have), Some(want)) if have == want => {}
            (_, Some(want)) => {
                out.set.insert(key.to_owned(), want.clone());
            }
            (Some(_), None) => out.remove.push(key.to_owned()),
            (None, None) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chassis names differ from node names, so a test can tell which one was used.
    fn chassis(node: &str) -> String {
        format!("ch-{node}")
    }

    fn migration(name: &str, phase: &str, created: i64) -> Migration {
        Migration {
            name: name.into(),
            uid: format!("uid-{name}"),
            phase: Phase::of(Some(phase)),
            created,
        }
    }

    fn pod(name: &str, node: Option<&str>, migration: Option<&str>) -> LauncherPod {
        LauncherPod {
            name: name.into(),
            node: node.map(Into::into),
            migration_uid: migration.map(|m| format!("uid-{m}")),
        }
    }

    fn state(migration: &str, source: &str, target: &str, end: Option<Outcome>) -> MigrationState {
        MigrationState {
            migration_uid: Some(format!("uid-{migration}")),
            source_node: Some(source.into()),
            target_node: Some(target.into()),
            source_pod: Some(format!("{migration}-source")),
            target_pod: Some(format!("{migration}-target")),
            completed: end.map(|_| true),
            failed: end.map(|o| o == Outcome::Failed),
        }
    }

    fn vmi(node: &str, state: Option<MigrationState>) -> Option<Vmi> {
        Some(Vmi {
            node: Some(node.into()),
            state,
        })
    }

    fn options(stage: &Stage) -> (Option<String>, Option<String>) {
        let o = stage.options();
        (o.requested_chassis, o.activation_strategy)
    }

    fn dual(source: &str, target: &str) -> (Option<String>, Option<String>) {
        (
            Some(format!("ch-{source},ch-{target}")),
            Some("rarp".into()),
        )
    }

    fn pinned(node: &str) -> (Option<String>, Option<String>) {
        (Some(format!("ch-{node}")), None)
    }

    const NONE: (Option<String>, Option<String>) = (None, None);

    #[test]
    fn phases_parse_as_kubevirt_spells_them() {
        for p in [
            "Scheduling",
            "Scheduled",
            "PreparingTarget",
            "TargetReady",
            "Running",
        ] {
            assert_eq!(Phase::of(Some(p)), Phase::InProgress, "{p}");
        }
        assert_eq!(Phase::of(Some("Succeeded")), Phase::Succeeded);
        assert_eq!(Phase::of(Some("Failed")), Phase::Failed);
        for p in [None, Some(""), Some("Pending"), Some("WaitingForSync")] {
            assert_eq!(Phase::of(p), Phase::NotStarted, "{p:?}");
        }
    }

    #[test]
    fn no_vmi_or_no_migration_leaves_the_port_unpinned() {
        assert_eq!(plan(&Observed::default(), chassis), Stage::Idle);
        let running = Observed {
            vmi: vmi("node1", None),
            pods: vec![pod("src", Some("node1"), None)],
            ..Default::default()
        };
        assert_eq!(plan(&running, chassis), Stage::Idle);
        let stopped = Observed {
            migrations: vec![migration("m1", "Running", 1)],
            pods: vec![pod("tgt", Some("node2"), Some("m1"))],
            ..Default::default()
        };
        assert_eq!(plan(&stopped, chassis), Stage::Idle);
    }

    #[test]
    fn every_in_progress_phase_binds_both_chassis_once_the_target_is_bound() {
        for phase in [
            "Scheduling",
            "Scheduled",
            "PreparingTarget",
            "TargetReady",
            "Running",
        ] {
            let mut o = Observed {
                vmi: vmi("node1", None),
                migrations: vec![migration("m1", phase, 1)],
                pods: vec![
                    pod("src", Some("node1"), None),
                    pod("tgt", None, Some("m1")),
                ],
            };
            assert_eq!(options(&plan(&o, chassis)), NONE, "{phase}, target unbound");
            o.pods[1].node = Some("node2".into());
            let stage = plan(&o, chassis);
            assert_eq!(options(&stage), dual("node1", "node2"), "{phase}");
            assert_eq!(stage.reason(), "PortMigrating");
        }
    }

    #[test]
    fn a_target_pod_bound_late_is_still_served() {
        // Kube-OVN sets the options only in `Scheduling`; here the phase has moved on.
        let o = Observed {
            vmi: vmi("node1", Some(state("m1", "node1", "node2", None))),
            migrations: vec![migration("m1", "Running", 1)],
            pods: vec![
                pod("src", Some("node1"), None),
                pod("tgt", Some("node2"), Some("m1")),
            ],
        };
        assert_eq!(options(&plan(&o, chassis)), dual("node1", "node2"));
    }

    #[test]
    fn the_target_node_may_come_from_the_matching_migration_state() {
        let o = Observed {
            vmi: vmi("node1", Some(state("m1", "node1", "node2", None))),
            migrations: vec![migration("m1", "PreparingTarget", 1)],
            pods: vec![pod("src", Some("node1"), None)],
        };
        assert_eq!(options(&plan(&o, chassis)), dual("node1", "node2"));
    }

    #[test]
    fn a_verdict_pins_the_winner_until_the_losing_pod_is_gone() {
        // (outcome, phase, winner, index of the losing pod, Event reason)
        for (outcome, phase, winner, loser, reason) in [
            (Outcome::Succeeded, "Succeeded", "node2", 0, "PortMigrated"),
            (Outcome::Failed, "Failed", "node1", 1, "PortRolledBack"),
        ] {
            let mut o = Observed {
                vmi: vmi(winner, Some(state("m1", "node1", "node2", Some(outcome)))),
                migrations: vec![migration("m1", phase, 1)],
                pods: vec![
                    pod("m1-source", Some("node1"), None),
                    pod("m1-target", Some("node2"), Some("m1")),
                ],
            };
            let stage = plan(&o, chassis);
            assert_eq!(options(&stage), pinned(winner), "{phase}");
            assert_eq!(stage.reason(), reason);
            o.pods.remove(loser);
            assert_eq!(plan(&o, chassis), Stage::Idle, "{phase}, loser gone");
        }
    }

    #[test]
    fn the_vmi_verdict_counts_before_the_migration_object_catches_up() {
        for (outcome, node, want) in [
            (Outcome::Succeeded, "node2", "node2"),
            (Outcome::Failed, "node1", "node1"),
        ] {
            let o = Observed {
                vmi: vmi(node, Some(state("m1", "node1", "node2", Some(outcome)))),
                migrations: vec![migration("m1", "Running", 1)],
                pods: vec![
                    pod("m1-source", Some("node1"), None),
                    pod("m1-target", Some("node2"), Some("m1")),
                ],
            };
            assert_eq!(options(&plan(&o, chassis)), pinned(want), "{outcome:?}");
        }
    }

    #[test]
    fn a_failure_before_any_target_existed_pins_nothing() {
        let o = Observed {
            vmi: vmi("node1", None),
            migrations: vec![migration("m1", "Failed", 1)],
            pods: vec![pod("src", Some("node1"), None)],
        };
        assert_eq!(plan(&o, chassis), Stage::Idle);
    }

    #[test]
    fn a_stale_migration_state_is_never_used_for_a_new_migration() {
        // m1 moved the VM node1 → node2; m2 (node2 → node3) has not written its state yet.
        let o = Observed {
            vmi: vmi(
                "node2",
                Some(state("m1", "node1", "node2", Some(Outcome::Succeeded))),
            ),
            migrations: vec![
                migration("m1", "Succeeded", 1),
                migration("m2", "Scheduled", 2),
            ],
            pods: vec![
                pod("m1-target", Some("node2"), Some("m1")),
                pod("m2-target", Some("node3"), Some("m2")),
            ],
        };
        assert_eq!(options(&plan(&o, chassis)), dual("node2", "node3"));
        // Once finished, a stale state does not turn into a verdict for m2 either.
        let mut done = o.clone();
        done.migrations[1].phase = Phase::Failed;
        assert_eq!(options(&plan(&done, chassis)), pinned("node2"));
    }

    #[test]
    fn deleting_an_old_launcher_pod_keeps_the_current_migration() {
        let mut o = Observed {
            vmi: vmi("node2", Some(state("m2", "node2", "node1", None))),
            migrations: vec![
                migration("m1", "Succeeded", 1),
                migration("m2", "Running", 2),
            ],
            pods: vec![
                pod("m1-source", Some("node1"), None),
                pod("m1-target", Some("node2"), Some("m1")),
                pod("m2-target", Some("node1"), Some("m2")),
            ],
        };
        let before = plan(&o, chassis);
        assert_eq!(options(&before), dual("node2", "node1"));
        o.pods.remove(0);
        assert_eq!(plan(&o, chassis), before);
    }

    #[test]
    fn a_state_whose_migration_object_is_gone_still_pins() {
        let o = Observed {
            vmi: vmi(
                "node2",
                Some(state("m1", "node1", "node2", Some(Outcome::Succeeded))),
            ),
            migrations: vec![],
            pods: vec![
                pod("m1-source", Some("node1"), None),
                pod("m1-target", Some("node2"), Some("m1")),
            ],
        };
        let stage = plan(&o, chassis);
        assert_eq!(options(&stage), pinned("node2"));
        assert!(stage.describe().contains("uid-m1"), "{}", stage.describe());
    }

    #[test]
    fn a_migration_onto_the_same_chassis_needs_no_options() {
        let o = Observed {
            vmi: vmi("node1", None),
            migrations: vec![migration("m1", "Running", 1)],
            pods: vec![
                pod("src", Some("node1"), None),
                pod("tgt", Some("node1b"), Some("m1")),
            ],
        };
        assert_eq!(plan(&o, |_: &str| "same".to_owned()), Stage::Idle);
    }

    #[test]
    fn an_in_progress_leftover_older_than_a_finished_migration_is_ignored() {
        let o = Observed {
            vmi: vmi(
                "node2",
                Some(state("m2", "node1", "node2", Some(Outcome::Succeeded))),
            ),
            migrations: vec![
                migration("m1", "Running", 1),
                migration("m2", "Succeeded", 2),
            ],
            pods: vec![
                pod("m1-target", Some("node3"), Some("m1")),
                pod("m2-target", Some("node2"), Some("m2")),
            ],
        };
        assert_eq!(options(&plan(&o, chassis)), pinned("node2"));
    }

    #[test]
    fn changes_touch_only_the_managed_keys() {
        let current = BTreeMap::from([
            ("iface-id-ver".to_owned(), "7".to_owned()),
            (REQUESTED_CHASSIS.to_owned(), "a,b".to_owned()),
            (ACTIVATION_STRATEGY.to_owned(), "rarp".to_owned()),
        ]);
        let idle = changes(&current, &PortOptions::default());
        assert!(idle.set.is_empty());
        assert_eq!(idle.remove, vec![REQUESTED_CHASSIS, ACTIVATION_STRATEGY]);
        let pin = changes(
            &current,
            &PortOptions {
                requested_chassis: Some("b".into()),
                activation_strategy: None,
            },
        );
        assert_eq!(
            pin.set,
            BTreeMap::from([(REQUESTED_CHASSIS.into(), "b".into())])
        );
        assert_eq!(pin.remove, vec![ACTIVATION_STRATEGY]);
        let same = PortOptions {
            requested_chassis: Some("a,b".into()),
            activation_strategy: Some("rarp".into()),
        };
        assert!(changes(&current, &same).is_empty());
    }
}

#[cfg(test)]
mod ports {
    use proptest::prelude::*;

    use super::*;
    use crate::ovn::VENDOR;

    /// A port named `name` whose `pod` external id is `pod`, made by portkeeper or not.
    fn port(name: &str, pod: &str, ours: bool) -> ObservedPort {
        let vendor = if ours { VENDOR } else { "kube-ovn" };
        ObservedPort {
            name: name.into(),
            external_ids: BTreeMap::from([
                (ids::VENDOR.to_owned(), vendor.to_owned()),
                (ids::POD.to_owned(), pod.to_owned()),
            ]),
            ..Default::default()
        }
    }

    #[test]
    fn every_nic_of_the_vm_and_nothing_else() {
        let candidates = [
            port("vm1.ns", "ns/vm1", true),
            port("vm1.ns.net1.ns.ovn", "ns/vm1", true),
            port("vm1.ns.net2.other.ovn", "ns/vm1", true),
            port("vm10.ns", "ns/vm10", true),
            port("vm1.other", "other/vm1", true),
            port("vm1.ns.legacy", "ns/vm1", false),
        ];
        assert_eq!(
            vm_ports("ns", "vm1", &candidates),
            BTreeSet::from([
                "vm1.ns".to_owned(),
                "vm1.ns.net1.ns.ovn".to_owned(),
                "vm1.ns.net2.other.ovn".to_owned(),
            ])
        );
    }

    proptest! {
        /// Whatever ports exist (the VM's NICs, other VMs' in the same or another namespace,
        /// other systems'), every port of the VM is selected and given exactly the stage's
        /// options, and no other port is touched.
        #[test]
        fn the_options_reach_every_port_of_the_vm(
            ports in proptest::collection::vec(
                (0..3usize, 0..2usize, 0..4usize, any::<bool>(), any::<bool>()),
                0..12,
            ),
            migrating in any::<bool>(),
        ) {
            // Port names are unique in Northbound.
            let mut names = BTreeSet::new();
            let candidates: Vec<ObservedPort> = ports
                .iter()
                .enumerate()
                .map(|(i, &(vm, ns, nic, ours, pinned))| {
                    let (vm, ns) = (["vm", "vm2", "v"][vm], ["ns", "ns2"][ns]);
                    let name = match nic {
                        0 => format!("{vm}.{ns}"),
                        n => format!("{vm}.{ns}.net{n}.{ns}.ovn.{i}"),
                    };
                    let mut p = port(&name, &format!("{ns}/{vm}"), ours);
                    if pinned {
                        p.options.insert(REQUESTED_CHASSIS.into(), "ch-old".into());
                    }
                    p
                })
                .filter(|p| names.insert(p.name.clone()))
                .collect();
            let desired = if migrating {
                Stage::Migrating {
                    migration: "m".into(),
                    source: "ch-a".into(),
                    target: "ch-b".into(),
                }
            } else {
                Stage::Idle
            }
            .options();
            let selected = vm_ports("ns", "vm", &candidates);
            for p in &candidates {
                let of_vm = p.is_ours() && p.external_ids[ids::POD] == "ns/vm";
                prop_assert_eq!(selected.contains(&p.name), of_vm, "{}", p.name);
                let mut options = p.options.clone();
                if selected.contains(&p.name) {
                    let c = changes(&options, &desired);
                    options.extend(c.set);
                    options.retain(|k, _| !c.remove.contains(k));
                    prop_assert_eq!(options.get(REQUESTED_CHASSIS), desired.requested_chassis.as_ref());
                    prop_assert_eq!(
                        options.get(ACTIVATION_STRATEGY),
                        desired.activation_strategy.as_ref()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod properties;
