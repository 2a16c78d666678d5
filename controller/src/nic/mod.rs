//! The nic: the unit portkeeper allocates, one per pod and network ([`network`]: the primary
//! network and each attachment network a Subnet serves). A nic is a key (`<pod>.<ns>`, or
//! `<vm>.<ns>` for every launcher pod of a KubeVirt VM, with `.<provider>` appended on an
//! attachment network), an engine binding held
//! under its holder's UID ([`holder`]), a Logical_Switch_Port and an IP resource of that name
//! ([`objects`]), and the Subnet its addresses come from ([`target`]).
//!
//! Everything that acts on a nic goes through this module: retention, the pod reconciler, the
//! start-up rebuild and garbage collection, live migration. Of those, only the pod reconciler
//! calls another: it asks [`crate::retention`] before it takes over or releases an identity a
//! workload owns.

pub mod holder;
mod naming;
pub mod network;
pub mod objects;
pub mod reserve;
pub mod target;

pub use holder::{OWNER_ANNOTATION, OWNER_PORT_KEY, Owner, OwnerKind, POD_UID, PORT_POD_UID};
pub use naming::{finished, holder_of, key, launcher_vm, name, provider_of, split, wants_address};
pub use network::{Network, keys_of, networks};
pub use objects::{NicRecord, release};
