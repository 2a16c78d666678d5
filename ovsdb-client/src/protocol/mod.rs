//! The wire and data layer, with no I/O: OVSDB values and their types, schemas,
//! rows, operations and the typed-row mapping ([`table`]), checked against a schema
//! ([`validate`]) before sending, and the JSON-RPC messages ([`jsonrpc`]) and their
//! framing on a byte stream ([`framing`]). The runtime and the generated tables
//! build on it; it builds on nothing else in the crate.

pub mod datum;
pub mod framing;
pub mod jsonrpc;
pub mod nonroot;
pub mod operation;
pub mod row;
pub mod schema;
pub mod table;
pub mod types;
pub mod validate;
