//! OVN Northbound, the one seam between the controller and OVN.
//!
//! The reconcilers read and write through the small [`Northbound`] trait and the desired-state
//! types here; [`OvnNorthbound`] implements it over `ovsdb-client` (reads from a monitored
//! replica, [`index`] keeps it indexed), and [`Measured`] is how the reconcilers hold it: every
//! write timed into `nb_transaction_seconds` under its [`NbOp`], every failure a typed
//! [`NbError`].

mod index;
mod measured;
#[cfg(test)]
pub mod memory;
mod northbound;
mod ovsdb;

pub use measured::Measured;
pub use northbound::{
    DhcpScope, DhcpSpec, NbError, NbFailure, NbOp, Northbound, ObservedDhcp, ObservedPort,
    PortSpec, SwitchSpec, VENDOR, ids, port_spec,
};
pub use ovsdb::{Fence, OvnNorthbound, WRITER_LOCK};
