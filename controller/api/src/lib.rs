//! Kubernetes-facing vocabulary of portkeeper: the `kubeovn.io/v1` addressing CRDs (Subnet, IP,
//! IPPool), the subset of KubeVirt it reads, Kube-OVN's annotation keys, the typed reading of
//! a pod's addressing request from those annotations, its attachment networks, and the
//! allocation written back (the contract between the controller and the CNI daemon).
//!
//! The Rust types here are the source of truth for the CRD YAML in `yamls/`; see [`crdgen`].

pub mod allocation;
pub mod annotations;
pub mod condition;
pub mod crdgen;
pub mod dhcp;
pub mod dns;
pub mod ip;
pub mod ippool;
pub mod kubevirt;
pub mod networks;
pub mod request;
pub mod subnet;

pub use condition::Condition;
pub use ip::{IP, IPSpec};
pub use ippool::{IPPool, IPPoolSpec, IPPoolStatus};
pub use subnet::{Subnet, SubnetSpec, SubnetStatus};
