//! Async OVSDB (RFC 7047) client with a monitored cache and typed OVN Northbound tables.
//!
//! The runtime API in one place:
//!
//! - [`client::Client::builder`] takes comma-separated remotes (`tcp:`, `ssl:`, `unix:`,
//!   IPv6 in brackets) and the database; options set leader-only mode, TLS
//!   ([`transport::TlsConfig`]), the probe interval, deadlines, backoff, the tables and
//!   columns to monitor and client indexes. [`client::ClientBuilder::connect`] returns once
//!   the cache is loaded; the session then reconnects on its own, forever.
//! - [`client::Client::transact`] runs [`operation::Operation`]s and returns one
//!   [`operation::OperationResult`] each, after the cache shows the transaction's effect.
//!   [`client::Client::transact_with_retry`] rebuilds a transaction from the cache after a
//!   failed precondition or a lost connection; [`transaction::wait_unchanged`] and
//!   [`transaction::wait_absent`] build the preconditions that make replays safe.
//! - [`client::Client::cache`] reads shared rows ([`cache::Cache::get`], `rows`, `find`
//!   through schema or client indexes such as `external_ids:pod`, typed `get_typed`).
//! - [`client::Client::subscribe`] streams [`cache::Event`]s, with an explicit
//!   [`cache::Event::Lagged`] instead of silent drops.
//! - [`client::Client::lock`] / [`client::Client::steal`] return a [`lock::Lock`] whose
//!   [`lock::LockState`] follows the server's `locked`/`stolen` notifications and is
//!   requested again after every reconnection.
//! - [`client::Client::set_monitor_condition`] narrows or widens what the cache holds of a
//!   table (`monitor_cond_change`); [`client::Client::resync`] cancels the monitor and loads
//!   it again; a `monitor_canceled` from the server is followed by a new monitor.
//! - [`client::Client::metrics`] returns plain counters; [`error::Error`] says whether a
//!   failure is retriable and whether it may have committed.
//!
//! ```no_run
//! use std::time::Duration;
//! use ovsdb_client::client::Client;
//! use ovsdb_client::datum::Atom;
//! use ovsdb_client::operation::{Condition, Insert};
//! use ovsdb_client::row::Row;
//! use ovsdb_client::transaction::wait_absent;
//!
//! # async fn demo() -> Result<(), ovsdb_client::error::Error> {
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

pub mod cache;
pub mod client;
pub mod cluster;
pub mod connection;
pub mod datum;
pub mod error;
pub mod framing;
mod halves;
pub mod jsonrpc;
pub mod lock;
pub mod metrics;
pub mod monitor;
pub mod nb;
pub mod nonroot;
pub mod operation;
pub mod row;
pub mod schema;
pub mod server_db;
pub mod session;
pub mod table;
pub mod transaction;
pub mod transport;
pub mod validate;
pub mod vswitch;
