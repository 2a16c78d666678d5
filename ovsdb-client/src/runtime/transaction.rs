//! Transactions: per-operation results, read-your-writes, optimistic retries and
//! idempotency helpers.
//!
//! Read-your-writes: the connection applies every monitor update on its reader
//! task before it completes the call that the next message answers, and
//! ovsdb-server sends the update a transaction causes before the transaction's
//! reply. So when [`Client::transact`] returns, the cache already shows the
//! transaction's effect on every monitored table.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span};

use crate::protocol::datum::Uuid;
use crate::protocol::operation::{self, Condition, Operation, OperationResult, Wait, WaitUntil};
use crate::protocol::row::Row;
use crate::runtime::cache::CacheView;
use crate::runtime::client::Client;
use crate::runtime::connection::CallError;
use crate::runtime::error::Error;
use crate::runtime::metrics::TxnOutcome;

impl Client {
    /// Runs `operations` as one transaction with the default deadline.
    pub async fn transact(&self, operations: &[Operation]) -> Result<Vec<OperationResult>, Error> {
        self.transact_until(operations, Instant::now() + self.request_timeout())
            .await
    }

    /// Runs `operations` as one transaction, waiting for a connection if needed,
    /// all before `deadline`. Returns one result per operation, or the first
    /// failing operation (or the commit) as [`Error::Transaction`].
    pub async fn transact_until(
        &self,
        operations: &[Operation],
        deadline: Instant,
    ) -> Result<Vec<OperationResult>, Error> {
        let span = debug_span!("ovsdb_transact", ops = operations.len());
        async {
            let conn = self.session().wait_ready(deadline).await?;
            let params = operation::TransactParams {
                database: self.database(),
                operations,
            };
            let started = Instant::now();
            let reply = tokio::time::timeout_at(deadline, conn.call_raw("transact", &params)).await;
            let metrics = &self.session().metrics;
            let (outcome, result) = match reply {
                Err(_) => (
                    TxnOutcome::ConnectionLost,
                    Err(Error::Timeout(deadline.saturating_duration_since(started))),
                ),
                Ok(Err(e @ CallError::ConnectionLost { .. })) => {
                    (TxnOutcome::ConnectionLost, Err(e.into()))
                }
                Ok(Err(e)) => (TxnOutcome::Failed, Err(e.into())),
                Ok(Ok(reply)) => {
                    let schema = self.cache().schema();
                    match operation::parse_raw_results(operations, &reply, Some(&schema)) {
                        Ok(results) => (TxnOutcome::Committed, Ok(results)),
                        Err(e) => (TxnOutcome::Failed, Err(Error::Transaction(e))),
                    }
                }
            };
            metrics.transaction(outcome, started.elapsed());
            if let Err(e) = &result {
                debug!(error = %e, "transaction failed");
            }
            result
        }
        .instrument(span)
        .await
    }

    /// Optimistic concurrency: builds the transaction from the cache with `build`,
    /// runs it, and builds and runs it again, until `deadline`, when it failed
    /// retriably: a `wait` precondition `timed out` while the cache has moved on
    /// since the build (another writer got in between), or the connection was
    /// lost (the next attempt waits for the session and sees the resynced cache).
    ///
    /// A precondition that fails although the cache has not moved is returned at
    /// once: the server sends the update for every commit before its reply to a
    /// later transaction, so the cache was current and a rebuild would fail the
    /// same way (e.g. the row a create guards against already exists).
    ///
    /// `build` must make the transaction safe to replay: guard what it read with
    /// [`wait_unchanged`] / [`wait_absent`] preconditions or use client-chosen
    /// uuids, so that a transaction that did commit before a connection loss fails
    /// its precondition (or finds its row) on the retry instead of applying twice.
    pub async fn transact_with_retry<F>(
        &self,
        deadline: Instant,
        build: F,
    ) -> Result<Vec<OperationResult>, Error>
    where
        F: FnMut(&CacheView<'_>) -> Vec<Operation>,
    {
        self.retry_until(deadline, build, |operations| async move {
            self.transact_until(&operations, deadline).await
        })
        .await
    }

    /// The loop of [`Client::transact_with_retry`], each attempt sent by `send` (alone, or in a
    /// [group](crate::runtime::group)).
    pub(crate) async fn retry_until<F, S, R>(
        &self,
        deadline: Instant,
        mut build: F,
        mut send: S,
    ) -> Result<Vec<OperationResult>, Error>
    where
        F: FnMut(&CacheView<'_>) -> Vec<Operation>,
        S: FnMut(Vec<Operation>) -> R,
        R: std::future::Future<Output = Result<Vec<OperationResult>, Error>>,
    {
        loop {
            let version = self.cache().version();
            let operations = build(&self.cache().read());
            let error = match send(operations).await {
                Err(e) if e.is_retriable() && Instant::now() < deadline => e,
                other => return other,
            };
            if error.is_precondition_failed() && self.cache().version() == version {
                return Err(error);
            }
            self.session().metrics.retried();
            debug!(error = %error, "retrying transaction");
            if !error.is_precondition_failed() {
                // Lost connection: the next attempt waits for the session to come back.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A precondition that `row` (as the cache holds it, with its `_uuid`) still has
/// the same values in `columns`; the transaction fails with `timed out` otherwise.
pub fn wait_unchanged(table: &str, row: &Row, columns: &[&str]) -> Option<Operation> {
    let uuid = row.uuid()?;
    let mut expected = Row::new();
    for column in columns {
        expected.insert(*column, row.get(column)?.clone());
    }
    Some(
        Wait::new(
            table,
            columns.iter().copied(),
            WaitUntil::Equal,
            vec![expected],
        )
        .filter(Condition::uuid_is(uuid))
        .into(),
    )
}

/// A precondition that no row of `table` matches `conditions`: a replayed create
/// fails with `timed out` instead of creating a duplicate.
pub fn wait_absent(table: &str, conditions: Vec<Condition>) -> Operation {
    Wait::absent(table, conditions).into()
}

/// A fresh uuid for an insert with a client-chosen uuid: replaying the insert
/// fails with `duplicate uuid` instead of creating a second row.
pub fn new_row_uuid() -> Uuid {
    Uuid::new_v4()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::datum::{Atom, Value};

    #[test]
    fn wait_unchanged_pins_the_row_and_columns() {
        let uuid = Uuid::from_u128(5);
        let row = Row::new()
            .with("_uuid", Value::uuid(uuid))
            .with("ports", Value::set([Atom::Uuid(Uuid::from_u128(1))]))
            .with("name", Atom::string("ls"));
        let op = wait_unchanged("Logical_Switch", &row, &["ports"]).unwrap();
        let json = op.to_json();
        assert_eq!(json["op"], "wait");
        assert_eq!(json["until"], "==");
        assert_eq!(json["columns"], serde_json::json!(["ports"]));
        assert_eq!(
            json["where"],
            serde_json::json!([["_uuid", "==", ["uuid", uuid.to_string()]]])
        );
        assert_eq!(
            json["rows"][0]["ports"],
            serde_json::json!(["set", [["uuid", Uuid::from_u128(1).to_string()]]])
        );
        assert!(wait_unchanged("Logical_Switch", &row, &["missing"]).is_none());
        assert!(wait_unchanged("Logical_Switch", &Row::new(), &["ports"]).is_none());
    }

    #[test]
    fn wait_absent_compares_against_no_rows() {
        let op = wait_absent(
            "Logical_Switch_Port",
            vec![Condition::new(
                "name",
                operation::Function::Eq,
                Atom::string("p"),
            )],
        );
        let json = op.to_json();
        assert_eq!(json["rows"], serde_json::json!([]));
        assert_eq!(json["columns"], serde_json::json!(["name"]));
    }
}
