//! The I/O layer, bottom up: a [`transport`] stream, split into halves, carries a
//! JSON-RPC [`connection`]; a session keeps one connection to the right cluster
//! member alive, monitors the database into the [`cache`] and re-requests the
//! [`lock`]s; the [`client`] is the handle users hold, [`transaction`] adds
//! preconditions and retries on top of it, and [`group`] sends the transactions of
//! concurrent callers as one. [`error`] and [`metrics`] are what the layer reports.

pub mod cache;
pub mod client;
pub(crate) mod cluster;
pub mod connection;
pub mod error;
pub mod group;
pub(crate) mod halves;
pub mod lock;
pub mod metrics;
pub(crate) mod monitor;
pub(crate) mod session;
pub mod transaction;
pub mod transport;

#[cfg(fuzzing)]
pub use monitor::{fuzz_notification, fuzz_updates2};
