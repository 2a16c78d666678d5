//! Pure address engine for portkeeper: subnets, IPPools, static claims and
//! MACs, with no I/O, no async runtime and no Kubernetes types.
//!
//! The controller feeds it Subnet and IPPool specs and asks it, per nic
//! (`<pod-or-vm>.<namespace>[.<provider>]`, Kube-OVN's identity), for
//! addresses. The engine guarantees:
//!
//! * one holder per address per subnet, and one holder per MAC cluster-wide;
//! * the same key gets the same addresses back (idempotent claims), which is
//!   how StatefulSet pods and VMs keep their identity;
//! * releases are compare-and-swap on the owner's UID and the binding's
//!   generation, so a late delete of an old incarnation frees nothing;
//! * dynamic allocation takes the lowest never-used address and reuses
//!   released ones last, oldest first;
//! * a subnet change never forgets a holder, and a rebuild from observed
//!   records reports every collision instead of overwriting;
//! * costs are O(log n) per claim and memory is O(holders + ranges), so a
//!   /64 with a million holders is fine.
//!
//! The parsers for Kube-OVN's annotation and CRD strings live in [`parse`]
//! and [`MacAddress::parse`], shared with the CNI daemon.
//!
//! ```
//! use portkeeper_engine::{Claim, Engine, IpRequest, NicKey, SubnetSpec, parse};
//!
//! let engine = Engine::new();
//! engine.upsert_subnet(&SubnetSpec {
//!     name: "ovn-default".into(),
//!     cidr_block: "10.16.0.0/16,fd00:10:16::/64".into(),
//!     exclude_ips: vec!["10.16.0.2..10.16.0.9".into()],
//!     ..SubnetSpec::default()
//! })?;
//!
//! // A pod without annotations: lowest free address of each family.
//! let key = NicKey::new("web-0", "shop", None);
//! let lease = engine.claim(&Claim::dynamic("ovn-default", key.clone(), "uid-1"))?;
//! assert_eq!(lease.v4.unwrap().to_string(), "10.16.0.10");
//! assert_eq!(lease.v6.unwrap().to_string(), "fd00:10:16::2");
//!
//! // Claiming again, even as a new incarnation, returns the same binding.
//! let again = engine.claim(&Claim::dynamic("ovn-default", key.clone(), "uid-2"))?;
//! assert_eq!(again.addresses(), lease.addresses());
//! assert_eq!(again.mac, lease.mac);
//!
//! // A late release by the old incarnation changes nothing.
//! assert!(engine.release(&key, &lease.owner()).is_err());
//! engine.release(&key, &again.owner())?;
//!
//! // A static claim from an `ip_address` annotation, inside excludeIps.
//! let mut pinned = Claim::dynamic("ovn-default", NicKey::new("db", "shop", None), "uid-3");
//! pinned.ip = IpRequest::Static(parse::parse_ip_address("10.16.0.5")?);
//! assert_eq!(engine.claim(&pinned)?.v4.unwrap().to_string(), "10.16.0.5");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod affinity;
mod engine;
mod error;
mod family;
mod hash;
mod mac;
pub mod parse;
mod ranges;
mod request;
mod subnet;

pub use affinity::{AffinityError, NodeAffinity};
pub use engine::{ConflictOn, Engine, RebuildReport, RecordConflict, Snapshot};
pub use error::{EngineError, ErrorKind, Holding, MacHolder};
pub use family::Family;
pub use mac::{MacAddress, MacError};
pub use parse::{DualAddress, IpPoolAnnotation, ParseError};
pub use request::{
    Claim, FamilyRequest, IpRequest, Lease, ListPick, MacRequest, NicKey, Owner, Record,
    RecordSource,
};
pub use subnet::{AddressStatus, PoolSpec, Stranded, StrandedReason, SubnetSpec};
