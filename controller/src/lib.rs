//! The portkeeper controller: watches pods, namespaces and the `kubeovn.io/v1` addressing
//! resources, allocates each nic's IP and MAC with the address engine, realises it as an OVN
//! logical switch port, and publishes it on the pod with Kube-OVN's annotations.
//!
//! Reconcilers are functions from observed state to actions ([`plan`] holds the pure
//! decisions); [`ovn::Northbound`] is the seam to OVN. The module map, from a pod to its port,
//! is in `docs/architecture.md`.

pub mod addressing;
pub mod admission;
pub mod allocate;
pub mod config;
pub mod context;
pub mod dhcp;
pub mod error;
pub mod events;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod migration;
#[cfg(test)]
mod mock_api;
pub mod nic;
pub mod ovn;
pub mod plan;
pub mod pod;
pub mod rebuild;
pub mod reservation;
pub mod retention;
pub mod run;
pub mod stores;
pub mod takeover;
pub mod term;
pub mod webhook;

pub use config::Config;
pub use error::{Error, RejectReason, Rejection};
