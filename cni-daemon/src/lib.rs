//! CNI plugin and node daemon that wire each pod's interface into OVS/OVN.
//!
//! The plugin (`portkeeper-cni`) validates what the container runtime passes and forwards it over a
//! root-only unix socket ([`protocol`]) to the node daemon (`portkeeper-daemon`), which waits for the
//! controller's allocation, builds the pod's interface and attaches it to `br-int`.

pub mod cni;
pub mod daemon;
pub mod plugin;
pub mod protocol;
