//! portkeeper's local cluster: the node agent that plays the kubelet, and the harness the
//! end-to-end suite drives clusters with.
//!
//! - [`cni`] runs CNI plugins as a container runtime does.
//! - [`dataplane`] checks a pod's network from inside and from OVN; [`dhcp`] asks OVN's DHCP
//!   for a lease from inside.
//! - [`demo`] tells `dev/demo`'s story.
//! - [`examples`] applies `yamls/examples/` and waits for what they make to run.
//! - [`sandbox`] keeps one network namespace per pod and what was done to it.
//! - [`node`] registers the Node and keeps it Ready.
//! - [`pods`] reconciles the pods bound to the node; [`multus`] adds their attachment networks,
//!   as Multus does.
//! - [`harness`] brings a cluster up and down for tests (`Cluster::up`).
//! - [`portkeeper`] runs portkeeper's binaries on a cluster and reads back their results.
//! - [`kubevirt`] plays KubeVirt's virt-controller.
//! - [`migration`] plays a live migration end to end: [`vm`] a VM's network through it, with
//!   probes [`probe`] judges.
//! - [`consistency`] checks that every address is held once and nothing leaked (also the
//!   `portkeeper-check` command).
//! - [`writers`] reads who wrote when from the API server's audit log and Northbound's log;
//!   [`rbac`] which permissions portkeeper's service accounts used, against the shipped roles.

pub mod cni;
pub mod consistency;
pub mod dataplane;
pub mod demo;
pub mod dhcp;
pub mod examples;
pub mod harness;
pub mod kubevirt;
pub mod migration;
pub mod multus;
pub mod node;
pub mod pods;
pub mod portkeeper;
pub mod probe;
pub mod rbac;
pub mod sandbox;
pub mod vm;
pub mod writers;

pub use harness::{Cluster, ClusterOptions, HarnessError, NbSsl, Provider, Shared};

/// Errors of the node agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Cni(#[from] cni::CniError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("pod has no {0}")]
    MissingField(&'static str),
    /// An attachment network cannot be set up (bad selection, missing definition).
    #[error("attachment networks: {0}")]
    Network(String),
}
