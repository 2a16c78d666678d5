//! Kubernetes-facing vocabulary of portkeeper: the `kubeovn.io/v1` addressing CRDs (Subnet, IP,
//! IPPool), the subset of KubeVirt it reads, Kube-OVN's annotation keys, the typed reading of
//! a pod's addressing request from those annotations, and the allocation written back (the
//! contract between the controller and the CNI daemon).
//!
//! The Rust types here are the source of truth for the CRD YAML in `yamls/`; see [`crdgen`].

pub mod allocation;
pub mod annotations;
pub mod crdgen;
pub mod ip;
pub mod ippool;
pub mod kubevirt;
pub mod request;
pub mod subnet;

pub use ip::{IP, IPSpec};
pub use ippool::{IPPool, IPPoolSpec, IPPoolStatus};
pub use subnet::{Subnet, SubnetSpec, SubnetStatus};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A status condition, with Kube-OVN's field names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// RFC 3339 time of the last update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<String>,
    /// RFC 3339 time the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The `metadata.generation` the condition was computed from (newer Kube-OVN writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
