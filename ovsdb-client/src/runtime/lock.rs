//! OVSDB locks (RFC 7047 §4.1.8–4.1.10): `lock`, `steal`, `unlock` and the
//! server's `locked` / `stolen` notifications.
//!
//! A lock belongs to a session on one server, so the client keeps a registry of
//! the locks its caller asked for and requests each again (with `lock`) on every
//! new connection. A [`Lock`](crate::runtime::client::Lock) handle (the client's)
//! shows the current [`LockState`] and lets the caller await a change; while the
//! connection is down the state is [`LockState::Waiting`], because nobody can tell
//! whether another client took the lock meanwhile. Writes that must only happen under the lock carry an
//! [`crate::protocol::operation::Operation::Assert`], which the server refuses with `not
//! owner` when this session does not hold it.

use std::collections::HashMap;

use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::runtime::connection::{CallError, Connection};
use crate::runtime::error::Error;

/// Where a lock stands for this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// Requested but not held: another session holds it, or the connection is
    /// down and the request will be sent again on the next one.
    Waiting,
    /// This session holds the lock.
    Locked,
    /// Another client took it with `steal`. The server keeps our request queued:
    /// the lock comes back (as [`LockState::Locked`]) when the thief releases it.
    Stolen,
}

/// The client's requested locks, by name.
#[derive(Default)]
pub(crate) struct LockRegistry {
    locks: Mutex<HashMap<String, watch::Sender<LockState>>>,
}

/// The reply to `lock` and `steal`.
#[derive(Deserialize)]
struct LockReply {
    locked: bool,
}

impl LockRegistry {
    pub(crate) fn register(&self, name: &str) -> Result<watch::Receiver<LockState>, Error> {
        let mut locks = self.locks.lock();
        if locks.contains_key(name) {
            return Err(Error::Config(format!(
                "lock {name:?} is already requested by this client"
            )));
        }
        let (state, receiver) = watch::channel(LockState::Waiting);
        locks.insert(name.to_owned(), state);
        Ok(receiver)
    }

    pub(crate) fn set(&self, name: &str, state: LockState) {
        if let Some(sender) = self.locks.lock().get(name) {
            sender.send_replace(state);
        }
    }

    pub(crate) fn forget(&self, name: &str) -> bool {
        self.locks.lock().remove(name).is_some()
    }

    /// Applies a `locked` or `stolen` notification; `false` if it is neither.
    pub(crate) fn on_notification(&self, method: &str, params: &str) -> bool {
        let state = match method {
            "locked" => LockState::Locked,
            "stolen" => LockState::Stolen,
            _ => return false,
        };
        match serde_json::from_str::<(String,)>(params) {
            Ok((name,)) => {
                debug!(lock = %name, ?state, "lock notification");
                self.set(&name, state);
            }
            Err(e) => warn!(method, error = %e, "malformed lock notification"),
        }
        true
    }

    /// The connection ended: no lock is held any more.
    pub(crate) fn disconnected(&self) {
        for state in self.locks.lock().values() {
            state.send_if_modified(|s| {
                std::mem::replace(s, LockState::Waiting) != LockState::Waiting
            });
        }
    }

    /// Requests every registered lock again on a new connection.
    pub(crate) async fn reacquire(&self, conn: &Connection) -> Result<(), CallError> {
        let names: Vec<String> = self.locks.lock().keys().cloned().collect();
        for name in names {
            match request(conn, "lock", &name).await {
                Ok(state) => self.set(&name, state),
                // A refusal concerns this lock only, not the connection.
                Err(CallError::Rpc(e)) => warn!(lock = %name, error = %e, "lock request refused"),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

pub(crate) async fn request(
    conn: &Connection,
    method: &str,
    name: &str,
) -> Result<LockState, CallError> {
    let reply = conn.call_raw(method, &[name]).await?;
    let reply: LockReply =
        serde_json::from_str(reply.get()).map_err(|e| CallError::Json(e.to_string()))?;
    Ok(if reply.locked {
        LockState::Locked
    } else {
        LockState::Waiting
    })
}
