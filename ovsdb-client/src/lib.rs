//! Async OVSDB (RFC 7047) client with a monitored cache and typed OVN Northbound tables.

pub mod client;
pub mod cluster;
pub mod connection;
pub mod error;
pub mod framing;
pub mod cache;
pub mod jsonrpc;
pub mod metrics;
pub mod monitor;
pub mod session;
pub mod transaction;
pub mod transport;
pub mod datum;
pub mod row;
pub mod schema;
pub mod table;
pub mod operation;
pub mod nb;
pub mod nonroot;
pub mod server_db;
pub mod vswitch;
pub mod validate;
