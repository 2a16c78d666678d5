//! The pure decision: whether a workload-owned nic that no live pod holds is kept for the
//! workload's next pod or released, from what is observed now (never from the pod's delete
//! event alone), so a scale-down or a workload deleted while the controller was down is settled
//! by the next sweep.

use crate::nic::{Owner, OwnerKind};

/// The owner's current state, as the caches show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// No such object (or it is being deleted).
    Gone,
    /// An object of that name with another UID: the workload was recreated.
    Recreated,
    /// A StatefulSet with these ordinals: `start .. start + replicas`.
    StatefulSet {
        /// `spec.ordinals.start` (0 when unset).
        start: u64,
        /// `spec.replicas` (1 when unset).
        replicas: u64,
    },
    /// The VM exists.
    VirtualMachine,
    /// The owner's kind cannot be read (KubeVirt not installed, or no RBAC to read it): nothing
    /// says it is gone.
    Unobservable,
}

/// Whether the nic's held subnet and address still fit what its workload asks for now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubnetFit {
    /// Same subnet, address inside its CIDR (or nothing decidable: keep).
    Fits,
    /// The workload's template or its namespace now selects another subnet.
    Moved {
        /// The subnet it would get now.
        to: String,
    },
    /// The held address is outside the subnet's current CIDR, or the subnet is gone.
    Outside,
}

/// Everything [`decide`] looks at for one retained nic.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    /// The recorded owner.
    pub owner: &'a Owner,
    /// The nic's StatefulSet ordinal (from its name), for StatefulSet owners.
    pub ordinal: Option<u64>,
    /// The owner now.
    pub observed: Observed,
    /// The held subnet against the current request.
    pub fit: SubnetFit,
    /// Another live pod that holds the nic right now (a launcher pod of the same VM).
    pub live_pod: Option<&'a str>,
}

/// The verdict for a nic no live pod needs, with the reason its Event states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Keep port, IP resource and engine binding for the owner's next pod.
    Keep(String),
    /// Release them.
    Release(String),
}

impl Decision {
    /// Whether the identity stays.
    pub fn keeps(&self) -> bool {
        matches!(self, Decision::Keep(_))
    }
}

/// Decides whether a workload-owned nic is kept. Order: a live pod of the owner always keeps it;
/// then the owner must exist with the recorded UID; then a StatefulSet ordinal must be within
/// `start .. start + replicas`; then the held subnet must still fit.
pub fn decide(facts: &Facts<'_>) -> Decision {
    let owner = facts.owner;
    let what = format!("{} {}", owner.kind.as_str(), owner.name);
    if let Some(pod) = facts.live_pod {
        return Decision::Keep(format!("pod {pod} of {what} still uses it"));
    }
    let within = match (&facts.observed, owner.kind) {
        (Observed::Unobservable, _) => {
            return Decision::Keep(format!(
                "{what} cannot be read (its API is not served or not readable); kept until it can be"
            ));
        }
        (Observed::Gone, _) => return Decision::Release(format!("{what} is gone")),
        (Observed::Recreated, _) => {
            return Decision::Release(format!(
                "{what} was deleted and recreated (the recorded UID {} is gone)",
                owner.uid
            ));
        }
        (Observed::StatefulSet { start, replicas }, OwnerKind::StatefulSet) => {
            let Some(ordinal) = facts.ordinal else {
                return Decision::Keep(format!("{what} exists (ordinal not readable)"));
            };
            if ordinal < *start || ordinal >= start.saturating_add(*replicas) {
                return Decision::Release(format!(
                    "ordinal {ordinal} is outside {what}'s ordinals {start}..{} (scaled down)",
                    start.saturating_add(*replicas)
                ));
            }
            format!(
                "ordinal {ordinal} is within {what}'s ordinals {start}..{}",
                start + replicas
            )
        }
        (Observed::VirtualMachine, OwnerKind::VirtualMachine) => format!("{what} still exists"),
        _ => return Decision::Release(format!("{what} is gone")),
    };
    match &facts.fit {
        SubnetFit::Fits => Decision::Keep(within),
        SubnetFit::Moved { to } => Decision::Release(format!(
            "{what} now selects subnet {to}; the next pod is allocated there"
        )),
        SubnetFit::Outside => Decision::Release(format!(
            "the held address no longer fits its subnet; the next pod of {what} gets a new one"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portkeeper_engine::{Claim, Engine, IpRequest, ListPick, NicKey, SubnetSpec, parse};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn owner(kind: OwnerKind) -> Owner {
        Owner {
            kind,
            name: "web".into(),
            uid: "u1".into(),
        }
    }

    fn facts(owner: &Owner, ordinal: Option<u64>, observed: Observed) -> Facts<'_> {
        Facts {
            owner,
            ordinal,
            observed,
            fit: SubnetFit::Fits,
            live_pod: None,
        }
    }

    #[test]
    fn statefulset_rules() {
        let o = owner(OwnerKind::StatefulSet);
        let set = |start, replicas| Observed::StatefulSet { start, replicas };
        assert!(decide(&facts(&o, Some(2), set(0, 3))).keeps());
        assert!(!decide(&facts(&o, Some(3), set(0, 3))).keeps());
        assert!(decide(&facts(&o, Some(12), set(10, 3))).keeps());
        assert!(!decide(&facts(&o, Some(9), set(10, 3))).keeps());
        assert!(!decide(&facts(&o, Some(13), set(10, 3))).keeps());
        assert!(!decide(&facts(&o, Some(0), Observed::Gone)).keeps());
        let Decision::Release(why) = decide(&facts(&o, Some(0), Observed::Recreated)) else {
            panic!("a recreated StatefulSet releases");
        };
        assert!(why.contains("recreated"), "{why}");
        let mut moved = facts(&o, Some(0), set(0, 3));
        moved.fit = SubnetFit::Moved { to: "net2".into() };
        assert!(!decide(&moved).keeps());
        moved.fit = SubnetFit::Outside;
        assert!(!decide(&moved).keeps());
    }

    #[test]
    fn vm_rules() {
        let o = owner(OwnerKind::VirtualMachine);
        assert!(decide(&facts(&o, None, Observed::VirtualMachine)).keeps());
        assert!(!decide(&facts(&o, None, Observed::Gone)).keeps());
        let mut live = facts(&o, None, Observed::Gone);
        live.live_pod = Some("virt-launcher-web-abcde");
        assert!(decide(&live).keeps(), "a running launcher pod keeps it");
        let mut moved = facts(&o, None, Observed::VirtualMachine);
        moved.fit = SubnetFit::Moved { to: "net2".into() };
        let Decision::Release(why) = decide(&moved) else {
            panic!("a moved VM releases");
        };
        assert!(why.contains("net2"), "{why}");
        let mut unreadable = facts(&o, None, Observed::Unobservable);
        unreadable.fit = SubnetFit::Moved { to: "net2".into() };
        assert!(
            decide(&unreadable).keeps(),
            "a VM that cannot be read keeps its identity, whatever its unreadable template says"
        );
    }

    /// What a user does to a StatefulSet with an `ip_pool` list.
    #[derive(Clone, Debug)]
    enum Step {
        Scale(u64),
        DeletePod(u64),
        Recreate,
        Delete,
        Create,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u64..6).prop_map(Step::Scale),
            2 => (0u64..6).prop_map(Step::DeletePod),
            1 => Just(Step::Recreate),
            1 => Just(Step::Delete),
            1 => Just(Step::Create),
        ]
    }

    /// Plays the StatefulSet controller, the pods and portkeeper against a real engine: live pods
    /// claim their entry, deleted pods and every nic no pod holds go through [`decide`].
    struct World {
        engine: Engine,
        entries: Vec<parse::DualAddress>,
        start: u64,
        set: Option<(String, u64)>,
        generation: u32,
        live: BTreeMap<u64, String>,
        retained: BTreeMap<u64, Owner>,
    }

    impl World {
        fn observed(&self, owner: &Owner) -> Observed {
            match &self.set {
                None => Observed::Gone,
                Some((uid, _)) if *uid != owner.uid => Observed::Recreated,
                Some((_, replicas)) => Observed::StatefulSet {
                    start: self.start,
                    replicas: *replicas,
                },
            }
        }

        fn key(ordinal: u64) -> NicKey {
            NicKey::new(&format!("web-{ordinal}"), "shop", None)
        }

        /// One sweep: every retained nic without a live pod is decided.
        fn sweep(&mut self) {
            let held: Vec<(u64, Owner)> = self
                .retained
                .iter()
                .filter(|(o, _)| !self.live.contains_key(o))
                .map(|(o, w)| (*o, w.clone()))
                .collect();
            for (ordinal, owner) in held {
                let decision = decide(&Facts {
                    owner: &owner,
                    ordinal: Some(ordinal),
                    observed: self.observed(&owner),
                    fit: SubnetFit::Fits,
                    live_pod: None,
                });
                if !decision.keeps() {
                    let lease = self.engine.lease(&Self::key(ordinal)).unwrap();
                    self.engine
                        .release(&Self::key(ordinal), &lease.owner())
                        .unwrap();
                    self.retained.remove(&ordinal);
                }
            }
        }

        /// The StatefulSet controller: pods for every ordinal in range, none outside.
        fn converge(&mut self) {
            let wanted: Vec<u64> = match &self.set {
                Some((_, replicas)) => (self.start..self.start + replicas).collect(),
                None => Vec::new(),
            };
            self.live.retain(|o, _| wanted.contains(o));
            self.sweep();
            let Some((uid, _)) = self.set.clone() else {
                return;
            };
            for ordinal in wanted {
                self.live.entry(ordinal).or_insert_with(|| uid.clone());
                let claim = Claim {
                    ip: IpRequest::List {
                        entries: self.entries.clone(),
                        pick: ListPick::Ordinal {
                            ordinal,
                            start: self.start,
                        },
                    },
                    ..Claim::dynamic("net", Self::key(ordinal), &uid)
                };
                let lease = self.engine.claim(&claim).expect("a pod's entry is free");
                let entry = &self.entries[(ordinal - self.start) as usize];
                assert_eq!(lease.v4, entry.v4, "ordinal {ordinal} takes its entry");
                self.retained.insert(
                    ordinal,
                    Owner {
                        kind: OwnerKind::StatefulSet,
                        name: "web".into(),
                        uid: uid.clone(),
                    },
                );
            }
        }

        fn apply(&mut self, step: &Step) {
            match step {
                Step::Scale(n) => {
                    if let Some(set) = &mut self.set {
                        set.1 = (*n).min(self.entries.len() as u64);
                    }
                }
                Step::DeletePod(o) => {
                    self.live.remove(&(self.start + o));
                    self.sweep();
                }
                Step::Recreate | Step::Create => {
                    if matches!(step, Step::Create) && self.set.is_some() {
                        return;
                    }
                    let replicas = self.set.as_ref().map_or(2, |s| s.1);
                    self.generation += 1;
                    self.live.clear();
                    self.set = Some((format!("uid-{}", self.generation), replicas));
                }
                Step::Delete => {
                    self.set = None;
                    self.live.clear();
                }
            }
            self.converge();
        }
    }

    proptest! {
        /// Over any sequence of scales, pod deletions and StatefulSet deletions and recreations:
        /// an ordinal's entry is held iff the set exists with that UID and the ordinal is in
        /// range, every live pod gets exactly its entry, and no address ever has two holders.
        #[test]
        fn scale_sequences_keep_exactly_what_the_rules_say(
            start in prop_oneof![Just(0u64), Just(10u64)],
            steps in proptest::collection::vec(step(), 1..40),
        ) {
            let engine = Engine::new();
            engine.upsert_subnet(&SubnetSpec {
                name: "net".into(),
                cidr_block: "10.0.0.0/24".into(),
                ..SubnetSpec::default()
            }).unwrap();
            let entries = (0..5)
                .map(|i| parse::parse_ip_address(&format!("10.0.0.{}", 10 + i)).unwrap())
                .collect();
            let mut world = World {
                engine,
                entries,
                start,
                set: Some(("uid-0".into(), 3)),
                generation: 0,
                live: BTreeMap::new(),
                retained: BTreeMap::new(),
            };
            world.converge();
            for step in &steps {
                let before: BTreeMap<u64, _> = (start..start + 6)
                    .filter_map(|o| Some((o, world.engine.lease(&World::key(o))?)))
                    .collect();
                let set_before = world.set.clone();
                world.apply(step);
                let expected: Vec<u64> = match &world.set {
                    Some((_, replicas)) => (start..start + replicas).collect(),
                    None => Vec::new(),
                };
                // Kept means kept: an ordinal in range under the same set before and after the
                // step (its pod deleted or not) has the very same binding, MAC included.
                if let (Some((uid, _)), Some((uid_after, _))) = (&set_before, &world.set)
                    && uid == uid_after
                {
                    for (o, lease) in &before {
                        if expected.contains(o) {
                            let after = world.engine.lease(&World::key(*o));
                            prop_assert_eq!(after.as_ref(), Some(lease), "ordinal {} kept across {:?}", o, step);
                        }
                    }
                }
                let held: Vec<u64> = (start..start + 6)
                    .filter(|o| world.engine.lease(&World::key(*o)).is_some())
                    .collect();
                prop_assert_eq!(&held, &expected, "after {:?}", step);
                let addresses: std::collections::BTreeSet<_> = held
                    .iter()
                    .map(|o| world.engine.lease(&World::key(*o)).unwrap().v4)
                    .collect();
                prop_assert_eq!(addresses.len(), held.len(), "one holder per address");
                for o in &held {
                    let uid = &world.engine.lease(&World::key(*o)).unwrap().uid;
                    prop_assert_eq!(Some(uid), world.set.as_ref().map(|s| &s.0), "owner is the current set");
                }
            }
        }
    }
}
