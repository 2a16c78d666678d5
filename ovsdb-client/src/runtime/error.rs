//! The one error type of the client's runtime API.

use std::time::Duration;

use crate::protocol::jsonrpc::RpcError;
use crate::protocol::operation::TransactError;
use crate::runtime::connection::CallError;

/// Why a client call failed. [`Error::is_retriable`] and
/// [`Error::may_have_committed`] tell a caller what it may do next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server refused the transaction; nothing was committed.
    #[error(transparent)]
    Transaction(#[from] TransactError),
    /// The connection ended while the request was outstanding. With
    /// `may_have_committed` the server may have executed it: retry only an
    /// idempotent transaction (a `wait` precondition or a client-chosen uuid).
    #[error("connection lost ({reason}); {}", if *may_have_committed { "the request may have committed" } else { "the request was not sent" })]
    ConnectionLost {
        /// Whether the request may have reached the server.
        may_have_committed: bool,
        /// Why the connection ended.
        reason: String,
    },
    /// No usable connection came up before the deadline.
    #[error("not connected after {:?}{}", waited, last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    NotConnected {
        /// How long the call waited.
        waited: Duration,
        /// The last connection failure, if any.
        last_error: Option<String>,
    },
    /// The deadline passed while the request was outstanding; it may still commit.
    #[error("request timed out after {0:?}; it may have committed")]
    Timeout(Duration),
    /// The server rejected the request at the JSON-RPC level.
    #[error("server error: {0}")]
    Rpc(#[from] RpcError),
    /// The client was shut down.
    #[error("client is shut down")]
    Shutdown,
    /// The configuration cannot work (bad remote, TLS files, unknown table or column).
    #[error("configuration: {0}")]
    Config(String),
    /// The server's answer made no sense (bad schema, bad monitor reply).
    #[error("protocol: {0}")]
    Protocol(String),
}

impl Error {
    /// Whether trying again later can succeed: lost connections, timeouts, and a
    /// failed `wait` precondition (`timed out`) once the cache caught up.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::ConnectionLost { .. } | Error::NotConnected { .. } | Error::Timeout(_) => true,
            Error::Transaction(e) => e.is_timed_out(),
            _ => false,
        }
    }

    /// Whether the failed request may nevertheless have been committed.
    pub fn may_have_committed(&self) -> bool {
        match self {
            Error::ConnectionLost {
                may_have_committed, ..
            } => *may_have_committed,
            Error::Timeout(_) => true,
            _ => false,
        }
    }

    /// Whether a `wait` precondition failed (the caller's view was stale).
    pub fn is_precondition_failed(&self) -> bool {
        matches!(self, Error::Transaction(e) if e.is_timed_out())
    }
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Rpc(e) => Error::Rpc(e),
            CallError::Json(e) => Error::Protocol(e),
            CallError::ConnectionLost { sent, reason } => Error::ConnectionLost {
                may_have_committed: sent,
                reason: reason.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_guidance() {
        let lost = Error::ConnectionLost {
            may_have_committed: true,
            reason: "eof".into(),
        };
        assert!(lost.is_retriable() && lost.may_have_committed());
        let unsent = Error::ConnectionLost {
            may_have_committed: false,
            reason: "eof".into(),
        };
        assert!(unsent.is_retriable() && !unsent.may_have_committed());
        assert!(!Error::Shutdown.is_retriable());
        assert!(lost.to_string().contains("may have committed"));
    }
}
