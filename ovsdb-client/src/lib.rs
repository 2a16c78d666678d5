//! Async OVSDB (RFC 7047) client with a monitored cache and typed OVN Northbound tables.
//!
//! Three layers, each using only the ones before it (checked by `dev/module-graph`):
//!
//! - [`protocol`]: the wire and data model, no I/O — values ([`protocol::datum`]) and their
//!   types ([`protocol::types`]), schemas, rows, operations, the typed-row mapping
//!   ([`protocol::table`]), client-side validation, JSON-RPC messages and framing.
//! - [`tables`]: typed rows generated from the pinned schemas ([`tables::nb`],
//!   [`tables::vswitch`], [`tables::server_db`]).
//! - [`runtime`]: transport, connection, session, cache, locks, the [`Client`] and
//!   transactions with retries.
//!
//! The runtime API in one place:
//!
//! - [`Client::builder`] takes comma-separated remotes (`tcp:`, `ssl:`, `unix:`,
//!   IPv6 in brackets) and the database; options set leader-only mode, TLS
//!   ([`runtime::transport::TlsConfig`]), the probe interval, deadlines, backoff, the
//!   tables and columns to monitor and client indexes. [`ClientBuilder::connect`] returns
//!   once the cache is loaded; the session then reconnects on its own, forever.
//! - [`Client::transact`] runs [`protocol::operation::Operation`]s and returns one
//!   [`protocol::operation::OperationResult`] each, after the cache shows the
//!   transaction's effect. [`Client::transact_with_retry`] rebuilds a transaction from the
//!   cache after a failed precondition or a lost connection;
//!   [`runtime::transaction::wait_unchanged`] and [`runtime::transaction::wait_absent`]
//!   build the preconditions that make replays safe.
//! - [`Client::cache`] reads shared rows ([`runtime::cache::Cache::get`], `rows`, `find`
//!   through schema or client indexes such as `external_ids:pod`, typed `get_typed`).
//! - [`Client::subscribe`] streams [`runtime::cache::Event`]s, with an explicit
//!   [`runtime::cache::Event::Lagged`] instead of silent drops.
//! - [`Client::lock`] / [`Client::steal`] return a [`runtime::client::Lock`] whose
//!   [`runtime::lock::LockState`] follows the server's `locked`/`stolen` notifications
//!   and is requested again after every reconnection.
//! - [`Client::set_monitor_condition`] narrows or widens what the cache holds of a table
//!   (`monitor_cond_change`); [`Client::resync`] cancels the monitor and loads it again; a
//!   `monitor_canceled` from the server is followed by a new monitor.
//! - [`Client::metrics`] returns plain counters; [`Error`] says whether a failure is
//!   retriable and whether it may have committed.
//!
//! ```no_run
//! use std::time::Duration;
//! use ovsdb_client::Client;
//! use ovsdb_client::protocol::datum::Atom;
//! use ovsdb_client::protocol::operation::{Condition, Insert};
//! use ovsdb_client::protocol::row::Row;
//! use ovsdb_client::runtime::transaction::wait_absent;
//!
//! # async fn demo() -> Result<(), ovsdb_client::Error> {
//! let client = Client::builder("tcp:127.0.0.1:6641,tcp:127.0.0.1:6643", "OVN_Northbound")
//!     .index("Logical_Switch_Port", &["external_ids:pod"])
//!     .probe_interval(Some(Duration::from_secs(5)))
//!     .connect()
//!     .await?;
//! let results = client
//!     .transact(&[
//!         wait_absent("Logical_Switch", vec![Condition::eq("name", Atom::string("ls1"))]),
//!         Insert::new("Logical_Switch", Row::new().with("name", Atom::string("ls1"))).into(),
//!     ])
//!     .await?;
//! let uuid = results[1].uuid().expect("insert result");
//! assert!(client.cache().get("Logical_Switch", uuid).is_some());
//! # Ok(())
//! # }
//! ```

pub mod protocol;
pub mod runtime;
pub mod tables;

pub use runtime::client::{Client, ClientBuilder};
pub use runtime::error::Error;
