//! Property tests: random migration histories played the way virt-controller and virt-handler
//! play them, with the target pod created and bound at any phase, the VMI's `migrationState`
//! written late (so it is stale meanwhile), old launcher pods deleted at any time, and a
//! controller that misses any stretch of events.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const NODES: [&str; 3] = ["node1", "node2", "node3"];
const IN_PROGRESS: [&str; 5] = [
    "Scheduling",
    "Scheduled",
    "PreparingTarget",
    "TargetReady",
    "Running",
];

fn chassis(node: &str) -> String {
    format!("ch-{node}")
}

/// How one migration unfolds, as indices into its in-progress phases.
#[derive(Clone, Debug)]
struct Script {
    target_offset: usize,
    end: Option<Outcome>,
    reached: usize,
    pod_created_at: usize,
    bound_after: usize,
    state_after: usize,
    delete_old_pod_at: Option<usize>,
    delete_loser: bool,
}

prop_compose! {
    fn script()(
        target_offset in 1..NODES.len(),
        end in prop_oneof![
            Just(Some(Outcome::Succeeded)),
            Just(Some(Outcome::Failed)),
            Just(None),
        ],
        reached in 1..=IN_PROGRESS.len(),
        pod_created_at in 0..=IN_PROGRESS.len(),
        bound_after in 0..3usize,
        state_after in 0..3usize,
        delete_old_pod_at in proptest::option::of(0..IN_PROGRESS.len()),
        delete_loser in any::<bool>(),
    ) -> Script {
        Script {
            target_offset,
            end,
            reached,
            pod_created_at,
            bound_after,
            state_after,
            delete_old_pod_at,
            delete_loser,
        }
    }
}

/// The world as KubeVirt keeps it, plus the truth the options are judged against.
#[derive(Clone, Debug)]
struct World {
    observed: Observed,
    /// Where the VM runs.
    vm_node: String,
    /// The launcher pod running the VM.
    running_pod: String,
    /// The in-progress migration's bound target node, if any.
    bound_target: Option<String>,
    /// The losing pod of the latest finished migration.
    loser: Option<String>,
}

impl World {
    fn new() -> Self {
        World {
            observed: Observed {
                vmi: Some(Vmi {
                    node: Some("node1".into()),
                    state: None,
                }),
                migrations: Vec::new(),
                pods: vec![LauncherPod {
                    name: "first".into(),
                    node: Some("node1".into()),
                    migration_uid: None,
                }],
            },
            vm_node: "node1".into(),
            running_pod: "first".into(),
            bound_target: None,
            loser: None,
        }
    }

    fn vmi(&mut self) -> &mut Vmi {
        self.observed.vmi.as_mut().unwrap()
    }

    fn delete_pod(&mut self, name: &str) {
        self.observed.pods.retain(|p| p.name != name);
        if self.loser.as_deref() == Some(name) {
            self.loser = None;
        }
    }

    /// Deletes a launcher pod that is neither running the VM nor the current target.
    fn delete_an_old_pod(&mut self, current_target: &str) {
        let old = self
            .observed
            .pods
            .iter()
            .map(|p| p.name.clone())
            .find(|n| *n != self.running_pod && n != current_target);
        if let Some(name) = old {
            self.delete_pod(&name);
        }
    }
}

/// Every state the world passes through while the scripts play.
fn play(scripts: &[Script]) -> Vec<World> {
    let mut world = World::new();
    let mut states = vec![world.clone()];
    let last = scripts.len() - 1;
    for (i, s) in scripts.iter().enumerate() {
        let (name, uid) = (format!("m{i}"), format!("uid-m{i}"));
        let target_pod = format!("{name}-target");
        let source_pod = world.running_pod.clone();
        let from = NODES.iter().position(|n| *n == world.vm_node).unwrap();
        let target = NODES[(from + s.target_offset) % NODES.len()].to_owned();
        // Only the last migration may be left unfinished; an earlier one must end first.
        let end = if i == last {
            s.end
        } else {
            s.end.or(Some(Outcome::Failed))
        };
        let bind_at = s.pod_created_at + s.bound_after;
        let state_at = bind_at + s.state_after;
        world.observed.migrations.push(Migration {
            name: name.clone(),
            uid: uid.clone(),
            phase: Phase::NotStarted,
            created: i as i64,
        });
        let reached = if end == Some(Outcome::Succeeded) {
            IN_PROGRESS.len()
        } else {
            s.reached
        };
        let write_state = |w: &mut World| {
            w.vmi().state = Some(MigrationState {
                migration_uid: Some(uid.clone()),
                source_node: Some(w.vm_node.clone()),
                target_node: Some(target.clone()),
                source_pod: Some(source_pod.clone()),
                target_pod: Some(target_pod.clone()),
                completed: None,
                failed: None,
            });
        };
        for (k, phase) in IN_PROGRESS.iter().enumerate().take(reached) {
            world.observed.migrations[i].phase = Phase::of(Some(phase));
            states.push(world.clone());
            if k == s.pod_created_at {
                world.observed.pods.push(LauncherPod {
                    name: target_pod.clone(),
                    node: None,
                    migration_uid: Some(uid.clone()),
                });
                states.push(world.clone());
            }
            if k == bind_at {
                let pod = world
                    .observed
                    .pods
                    .iter_mut()
                    .find(|p| p.name == target_pod);
                if let Some(pod) = pod {
                    pod.node = Some(target.clone());
                    world.bound_target = Some(target.clone());
                    states.push(world.clone());
                }
            }
            if k == state_at && world.bound_target.is_some() {
                write_state(&mut world);
                states.push(world.clone());
            }
            if s.delete_old_pod_at == Some(k) {
                world.delete_an_old_pod(&target_pod);
                states.push(world.clone());
            }
        }
        let Some(outcome) = end else { break };
        if outcome == Outcome::Succeeded && world.bound_target.is_none() {
            // virt-controller cannot succeed without a target: it exists and is bound by now.
            if !world.observed.pods.iter().any(|p| p.name == target_pod) {
                world.observed.pods.push(LauncherPod {
                    name: target_pod.clone(),
                    node: None,
                    migration_uid: Some(uid.clone()),
                });
            }
            let pod = world
                .observed
                .pods
                .iter_mut()
                .find(|p| p.name == target_pod)
                .unwrap();
            pod.node = Some(target.clone());
            world.bound_target = Some(target.clone());
            states.push(world.clone());
        }
        if world.bound_target.is_some()
            && world
                .vmi()
                .state
                .as_ref()
                .and_then(|st| st.migration_uid.as_deref())
                != Some(uid.as_str())
        {
            write_state(&mut world);
        }
        let has_target = world.observed.pods.iter().any(|p| p.name == target_pod);
        // The model's truth changes with the first object that tells the verdict: the VMI's
        // state when this migration wrote one (KubeVirt updates it first), else the VMIM.
        let settle = |w: &mut World| {
            w.bound_target = None;
            match outcome {
                Outcome::Succeeded => {
                    w.vm_node = target.clone();
                    w.vmi().node = Some(target.clone());
                    w.running_pod = target_pod.clone();
                    w.loser = Some(source_pod.clone());
                }
                Outcome::Failed => w.loser = has_target.then(|| target_pod.clone()),
            }
        };
        let recorded = match world
            .vmi()
            .state
            .as_mut()
            .filter(|st| st.migration_uid.as_deref() == Some(uid.as_str()))
        {
            Some(state) => {
                state.completed = Some(true);
                state.failed = Some(outcome == Outcome::Failed);
                true
            }
            None => false,
        };
        if recorded {
            settle(&mut world);
            states.push(world.clone());
        }
        world.observed.migrations[i].phase = match outcome {
            Outcome::Succeeded => Phase::Succeeded,
            Outcome::Failed => Phase::Failed,
        };
        if !recorded {
            settle(&mut world);
        }
        states.push(world.clone());
        if s.delete_loser
            && let Some(loser) = world.loser.clone()
        {
            world.delete_pod(&loser);
            states.push(world.clone());
        }
    }
    states
}

/// What the options must be in `world`, judged from the model's truth (where the VM runs, which
/// target is bound, which pods could contend), not from the objects the planner reads.
fn check(world: &World, stage: &Stage) -> Result<(), TestCaseError> {
    let o = stage.options();
    let running = chassis(&world.vm_node);
    if let Some(target) = &world.bound_target
        && *target != world.vm_node
    {
        prop_assert_eq!(
            o.requested_chassis,
            Some(format!("{running},{}", chassis(target)))
        );
        prop_assert_eq!(o.activation_strategy.as_deref(), Some(RARP));
        return Ok(());
    }
    prop_assert_eq!(o.activation_strategy, None, "no target is bound");
    let contenders = world
        .observed
        .pods
        .iter()
        .any(|p| p.name != world.running_pod);
    match o.requested_chassis {
        Some(rc) => {
            prop_assert_eq!(&rc, &running, "pinned anywhere but where the VM runs");
            prop_assert!(contenders, "pinned with no launcher pod to contend");
        }
        None => prop_assert!(
            world.loser.is_none(),
            "the losing pod {:?} still exists but nothing is pinned",
            world.loser
        ),
    }
    Ok(())
}

fn desired(world: &World) -> PortOptions {
    plan(&world.observed, chassis).options()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_history_keeps_the_port_where_the_vm_runs(
        scripts in proptest::collection::vec(script(), 1..4)
    ) {
        for world in play(&scripts) {
            check(&world, &plan(&world.observed, chassis))?;
        }
    }

    #[test]
    fn the_order_objects_are_listed_in_does_not_matter(
        scripts in proptest::collection::vec(script(), 1..4)
    ) {
        for world in play(&scripts) {
            let mut reversed = world.observed.clone();
            reversed.migrations.reverse();
            reversed.pods.reverse();
            prop_assert_eq!(plan(&reversed, chassis), plan(&world.observed, chassis));
        }
    }

    #[test]
    fn a_restarted_controller_converges_on_the_uninterrupted_options(
        scripts in proptest::collection::vec(script(), 1..4),
        down in (0usize..40, 0usize..40),
        junk in proptest::option::of("[a-z,]{0,8}"),
    ) {
        let states = play(&scripts);
        let (from, to) = (down.0.min(down.1), down.0.max(down.1).min(states.len()));
        let start = BTreeMap::from([("iface-id-ver".to_owned(), "1".to_owned())]);
        let (mut always, mut restarted) = (start.clone(), start);
        for (step, world) in states.iter().enumerate() {
            let want = desired(world);
            always = apply(&always, &changes(&always, &want));
            if step == from {
                // Whatever the controller left behind when it died, or someone wrote meanwhile.
                if let Some(junk) = &junk {
                    restarted.insert(REQUESTED_CHASSIS.to_owned(), junk.clone());
                }
            }
            if !(from..to).contains(&step) {
                restarted = apply(&restarted, &changes(&restarted, &want));
                prop_assert_eq!(&restarted, &always, "step {}", step);
                prop_assert_eq!(restarted.get("iface-id-ver").map(String::as_str), Some("1"));
            }
        }
    }
}

/// `options` after `changes`, as OVN stores them.
fn apply(current: &BTreeMap<String, String>, changes: &OptionChanges) -> BTreeMap<String, String> {
    let mut out = current.clone();
    for key in &changes.remove {
        out.remove(key);
    }
    out.extend(changes.set.clone());
    out
}
