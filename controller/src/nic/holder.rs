//! Who holds a nic: the workload or pod the engine holds it under, what its port and IP
//! resource record about that holder, and which live pod uses it now.
//!
//! A virt-launcher pod is keyed by its VM, so every launcher pod of one VM (a migration's source
//! and target included) shares one port, one IP resource and one MAC, held in the engine under
//! the VM's UID. A StatefulSet pod is held under its StatefulSet's UID; such identities outlive
//! their pod (see [`crate::retention`]), and their IP resource and port record the workload as
//! `Kind/name/uid`. Any other pod is held under its own UID and releases with it.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use portkeeper_engine::{Lease, NicKey};

use super::naming::{self, launcher_vm, wants_address};
use super::network::keys_of;
use crate::context::Context;
use crate::ovn::Northbound;
use crate::plan::Ordinal;
use crate::stores::Stores;

/// Annotation on IP resources recording the UID of the pod that last wrote it, so that a
/// restart can tell a recreated pod from the one that held the address.
pub const POD_UID: &str = "portkeeper.io/pod-uid";
/// `external_ids` key on ports recording the owning pod's UID.
pub const PORT_POD_UID: &str = "pod_uid";

/// IP resource annotation recording the workload that owns a retained identity.
pub const OWNER_ANNOTATION: &str = "portkeeper.io/owner";
/// Port `external_ids` key recording the same.
pub const OWNER_PORT_KEY: &str = "owner";

/// The kinds of workload whose pods keep their identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OwnerKind {
    /// `apps/v1` StatefulSet: one identity per ordinal.
    StatefulSet,
    /// `kubevirt.io/v1` VirtualMachine: one identity shared by all its launcher pods.
    VirtualMachine,
}

impl OwnerKind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::StatefulSet => "StatefulSet",
            OwnerKind::VirtualMachine => "VirtualMachine",
        }
    }

    /// The `apiVersion` of the kind.
    pub fn api_version(self) -> &'static str {
        match self {
            OwnerKind::StatefulSet => "apps/v1",
            OwnerKind::VirtualMachine => "kubevirt.io/v1",
        }
    }
}

/// The workload a nic belongs to, as recorded on its IP resource and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Its kind.
    pub kind: OwnerKind,
    /// Its name (in the nic's namespace).
    pub name: String,
    /// Its UID: a recreated workload of the same name is another owner.
    pub uid: String,
}

impl Owner {
    /// Reads the recorded form `Kind/name/uid`.
    pub fn parse(value: &str) -> Option<Owner> {
        let mut parts = value.splitn(3, '/');
        let kind = match parts.next()? {
            "StatefulSet" => OwnerKind::StatefulSet,
            "VirtualMachine" => OwnerKind::VirtualMachine,
            _ => return None,
        };
        let name = parts.next().filter(|n| !n.is_empty())?.to_owned();
        let uid = parts.next().filter(|u| !u.is_empty())?.to_owned();
        Some(Owner { kind, name, uid })
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind.as_str(), self.name, self.uid)
    }
}

/// The ordinal of a StatefulSet pod name `<set>-<n>`.
pub fn ordinal_of(pod_name: &str, set: &str) -> Option<u64> {
    pod_name.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

/// The workload that owns a pod's identity, when the identity outlives the pod. A launcher pod
/// whose VM is not (yet) in the cache has none: its identity then lives as long as its pods.
pub fn owner_of(pod: &Pod, stores: &Stores) -> Option<Owner> {
    let namespace = pod.namespace().unwrap_or_default();
    if let Some(vm) = launcher_vm(pod) {
        let uid = stores.virtual_machine(&namespace, vm)?.uid()?;
        return Some(Owner {
            kind: OwnerKind::VirtualMachine,
            name: vm.to_owned(),
            uid,
        });
    }
    let set = statefulset_of(pod)?;
    ordinal_of(&pod.name_any(), &set.name)?;
    Some(Owner {
        kind: OwnerKind::StatefulSet,
        name: set.name.clone(),
        uid: set.uid.clone(),
    })
}

fn statefulset_of(
    pod: &Pod,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    pod.owner_references()
        .iter()
        .find(|o| o.kind == "StatefulSet" && o.api_version.starts_with("apps/"))
}

/// The ordinal and `spec.ordinals.start` of a StatefulSet pod.
pub fn statefulset_ordinal(pod: &Pod, stores: &Stores) -> Option<Ordinal> {
    let owner = statefulset_of(pod)?;
    let ordinal = ordinal_of(&pod.name_any(), &owner.name)?;
    let set = stores.statefulset(&pod.namespace()?, &owner.name);
    Some(Ordinal {
        ordinal,
        start: statefulset_start(set.as_deref()),
    })
}

/// `spec.ordinals.start` of a StatefulSet (0 when unset or unknown).
pub fn statefulset_start(set: Option<&StatefulSet>) -> u64 {
    set.and_then(|s| s.spec.as_ref()?.ordinals.as_ref()?.start)
        .map_or(0, |s| s.max(0) as u64)
}

/// The UID the engine holds a pod's nic under: its workload's, else (launcher pods of a VMI
/// without a VM) the VMI's, else the pod's own.
pub fn holder_uid(pod: &Pod, owner: Option<&Owner>) -> String {
    if let Some(owner) = owner {
        return owner.uid.clone();
    }
    launcher_vm(pod)
        .and_then(|_| {
            pod.owner_references()
                .iter()
                .find(|o| o.kind == "VirtualMachineInstance")
                .map(|o| o.uid.clone())
        })
        .or_else(|| pod.uid())
        .unwrap_or_default()
}

/// The holder an IP resource records: its owner's UID, else its pod's.
pub fn recorded_holder(annotations: &BTreeMap<String, String>) -> Option<String> {
    holder_in(annotations, OWNER_ANNOTATION, POD_UID)
}

/// The holder a port records in its `external_ids`: its owner's UID, else its pod's.
pub fn port_holder(external_ids: &BTreeMap<String, String>) -> Option<String> {
    holder_in(external_ids, OWNER_PORT_KEY, PORT_POD_UID)
}

fn holder_in(record: &BTreeMap<String, String>, owner: &str, pod_uid: &str) -> Option<String> {
    record
        .get(owner)
        .and_then(|o| Owner::parse(o))
        .map(|o| o.uid)
        .or_else(|| record.get(pod_uid).cloned())
}

/// The workload a nic's IP resource (or, without one, its port) records.
pub fn recorded_owner<N: Northbound>(ctx: &Context<N>, key: &NicKey) -> Option<Owner> {
    let from_ip = ctx
        .stores
        .ips
        .get(&ObjectRef::new(key.as_str()))
        .and_then(|ip| ip.annotations().get(OWNER_ANNOTATION).cloned());
    let from_port = || {
        ctx.nb
            .port(key.as_str())
            .filter(|p| p.is_ours())
            .and_then(|p| p.external_ids.get(OWNER_PORT_KEY).cloned())
    };
    Owner::parse(&from_ip.or_else(from_port)?)
}

/// Whether something still keeps `lease`: a workload recorded as its owner (the retention sweep
/// decides those) or a live pod of its key. Garbage collection leaves such nics alone.
pub fn keeps_identity<N: Northbound>(ctx: &Context<N>, lease: &Lease) -> bool {
    recorded_owner(ctx, &lease.key).is_some_and(|o| o.uid == lease.uid)
        || live_holder(&ctx.stores, lease, "").is_some()
}

/// A live pod (other than `except`) one of whose nics is the lease's: the pod of that name, or
/// a launcher pod of the VM of that name.
pub fn live_holder(stores: &Stores, lease: &Lease, except: &str) -> Option<String> {
    let (name, namespace, _) = naming::holder_of(stores, lease)?;
    let key = &lease.key;
    let live = |p: &Pod| p.name_any() != except && wants_address(p) && keys_of(p).contains(key);
    if let Some(p) = stores.pod(&namespace, &name) {
        return live(&p).then(|| p.name_any());
    }
    stores
        .pods_where(&namespace, |p| {
            launcher_vm(p) == Some(name.as_str()) && live(p)
        })
        .first()
        .map(|p| p.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_record_round_trips_and_rejects_junk() {
        let o = Owner {
            kind: OwnerKind::VirtualMachine,
            name: "web".into(),
            uid: "u1".into(),
        };
        assert_eq!(o.to_string(), "VirtualMachine/web/u1");
        assert_eq!(Owner::parse(&o.to_string()), Some(o));
        for bad in [
            "",
            "Pod/a/b",
            "StatefulSet/a",
            "StatefulSet//u",
            "StatefulSet/a/",
        ] {
            assert_eq!(Owner::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn ordinals_parse_only_after_the_set_name() {
        assert_eq!(ordinal_of("web-12", "web"), Some(12));
        assert_eq!(ordinal_of("web-x", "web"), None);
        assert_eq!(ordinal_of("webby-1", "web"), None);
        assert_eq!(ordinal_of("my-web-1", "my-web"), Some(1));
    }
}
