//! The portkeeper controller: watches pods, namespaces and the `kubeovn.io/v1` addressing
//! resources, allocates each nic's IP and MAC with the address engine, realises it as an OVN
//! logical switch port, and publishes it on the pod with Kube-OVN's annotations.

pub mod allocate;
pub mod error;
pub mod northbound;
pub mod plan;

pub use error::{Error, RejectReason, Rejection};
