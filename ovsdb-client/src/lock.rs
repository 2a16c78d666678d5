//! OVSDB locks (RFC 7047 §4.1.8–4.1.10): `lock`, `steal`, `unlock` and the
//! server's `locked` / `stolen` notifications.
//!
//! A lock belongs to a session on one server, so the client keeps a registry of
//! the locks its caller asked for and requests each again (with `lock`) on every
//! new connection. A [`Lock`] handle shows the current [`LockState`] and lets the
//! caller await a change; while the connection is down the state is
//! [`LockState::Waiting`], because nobody can tell whether another client took the
//! lock meanwhile. Writes that must only happen under the lock carry an
//! [`crate::operation::Operation::Assert`], which the server refuses with `not
//! owner` when this session does not hold it.

use std::collections::HashMap;

use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::client::Client;
use crate::connection::{CallError, Connection};
use crate::error::Error;

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
    fn register(&self, name: &str) -> Result<watch::Receiver<LockState>, Error> {
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

    fn set(&self, name: &str, state: LockState) {
        if let Some(sender) = self.locks.lock().get(name) {
            sender.send_replace(state);
        }
    }

    fn forget(&self, name: &str) -> bool {
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

async fn request(conn: &Connection, method: &str, name: &str) -> Result<LockState, CallError> {
    let reply = conn.call_raw(method, &[name]).await?;
    let reply: LockReply =
        serde_json::from_str(reply.get()).map_err(|e| CallError::Json(e.to_string()))?;
    Ok(if reply.locked {
        LockState::Locked
    } else {
        LockState::Waiting
    })
}

/// A lock this client asked for. Dropping it releases the lock (best effort, in
/// the background); [`Lock::unlock`] releases it and reports the outcome.
#[derive(Debug)]
pub struct Lock {
    name: String,
    client: Client,
    state: watch::Receiver<LockState>,
    released: bool,
}

impl Lock {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current state.
    pub fn state(&self) -> LockState {
        *self.state.borrow()
    }

    /// Whether this session holds the lock right now.
    pub fn is_locked(&self) -> bool {
        self.state() == LockState::Locked
    }

    /// Waits until the state differs from the last one seen through this handle,
    /// and returns it.
    pub async fn changed(&mut self) -> Result<LockState, Error> {
        self.state.changed().await.map_err(|_| Error::Shutdown)?;
        Ok(*self.state.borrow_and_update())
    }

    /// Waits until this session holds the lock.
    pub async fn acquired(&mut self) -> Result<(), Error> {
        self.state
            .wait_for(|s| *s == LockState::Locked)
            .await
            .map(drop)
            .map_err(|_| Error::Shutdown)
    }

    /// Releases the lock (or withdraws the request) and forgets it.
    pub async fn unlock(mut self) -> Result<(), Error> {
        self.released = true;
        self.client.locks().forget(&self.name);
        let Some(conn) = self.client.session().current() else {
            // No connection, no lock: the server dropped it with the session.
            return Ok(());
        };
        match conn.call_raw("unlock", &[&self.name]).await {
            Ok(_) | Err(CallError::ConnectionLost { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.released || !self.client.locks().forget(&self.name) {
            return;
        }
        let (Some(conn), Ok(runtime)) = (
            self.client.session().current(),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        runtime.spawn(async move {
            if let Err(e) = conn.call_raw("unlock", &[&name]).await {
                debug!(lock = %name, error = %e, "unlock of a dropped lock handle failed");
            }
        });
    }
}

impl Client {
    /// Asks for the lock `name`: the handle says whether it is held now
    /// ([`LockState::Locked`]) or queued behind its owner
    /// ([`LockState::Waiting`]); await [`Lock::acquired`] for the latter. The
    /// request is repeated on every reconnection until the handle is released.
    pub async fn lock(&self, name: &str) -> Result<Lock, Error> {
        self.request_lock("lock", name).await
    }

    /// Takes the lock `name` from its owner, which receives `stolen`.
    pub async fn steal(&self, name: &str) -> Result<Lock, Error> {
        self.request_lock("steal", name).await
    }

    async fn request_lock(&self, method: &str, name: &str) -> Result<Lock, Error> {
        let state = self.locks().register(name)?;
        let lock = Lock {
            name: name.to_owned(),
            client: self.clone(),
            state,
            released: false,
        };
        // Registered first, so a reconnection in between repeats the request.
        let reply = async {
            let deadline = tokio::time::Instant::now() + self.request_timeout();
            let conn = self.session().wait_ready(deadline).await?;
            if lock.state.has_changed().unwrap_or(false) {
                // A connection made meanwhile already asked for it.
                return Ok(None);
            }
            tokio::time::timeout_at(deadline, request(&conn, method, name))
                .await
                .map_err(|_| Error::Timeout(self.request_timeout()))?
                .map(Some)
                .map_err(Error::from)
        };
        match reply.await {
            Ok(Some(state)) => {
                self.locks().set(name, state);
                Ok(lock)
            }
            Ok(None) => Ok(lock),
            // The lock stays registered: the next connection asks for it again.
            Err(e) if e.is_retriable() => Ok(lock),
            Err(e) => {
                let mut lock = lock;
                lock.released = true;
                self.locks().forget(name);
                Err(e)
            }
        }
    }
}
