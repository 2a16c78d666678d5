//! The [`Client`]: a session, its cache and its metrics behind one handle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use crate::protocol::framing::DEFAULT_MAX_MESSAGE_SIZE;
use crate::protocol::operation::Condition;
use crate::protocol::schema::DatabaseSchema;
use crate::runtime::cache::{Cache, EventStream, IndexSpec, MonitorTables};
use crate::runtime::cluster::ServerDatabase;
use crate::runtime::connection::{CallError, Coalescing};
use crate::runtime::error::Error;
use crate::runtime::lock::{self, LockRegistry, LockState};
use crate::runtime::metrics::{Metrics, MetricsSnapshot};
use crate::runtime::session::{Session, SessionConfig, TableSelection};
use crate::runtime::transport::{Remote, TlsConfig};

/// Configures and starts a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    remotes: Result<Vec<Remote>, String>,
    database: String,
    leader_only: bool,
    tls: Option<TlsConfig>,
    probe_interval: Option<Duration>,
    connect_timeout: Duration,
    request_timeout: Duration,
    backoff: (Duration, Duration),
    tables: Option<MonitorTables>,
    indexes: Vec<IndexSpec>,
    event_capacity: usize,
    max_message_size: usize,
    coalescing: Option<Coalescing>,
}

impl ClientBuilder {
    /// Leader-only mode (the default): use only the raft leader, and move when
    /// leadership moves. Off, any connected, up-to-date member is used.
    pub fn leader_only(mut self, on: bool) -> Self {
        self.leader_only = on;
        self
    }

    /// Certificates for `ssl:` remotes.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Our own inactivity probe on tcp/ssl connections (default 5 s): after this
    /// long without traffic send an `echo`, and reconnect if nothing arrives for
    /// another interval. `None` disables it. Unix sockets are never probed.
    pub fn probe_interval(mut self, interval: Option<Duration>) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Reply batching under a deep pipeline (default: pause 1 ms after each read
    /// while 64 or more transactions are in flight); `None` reads every reply as it
    /// arrives. See [`Coalescing`].
    pub fn coalescing(mut self, coalescing: Option<Coalescing>) -> Self {
        self.coalescing = coalescing;
        self
    }

    /// Bound on one connection attempt, handshake and initial monitor included
    /// (default 60 s), and how long [`ClientBuilder::connect`] waits.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Default deadline of a transaction, waiting for a reconnection included
    /// (default 30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Reconnect backoff bounds (default 250 ms to 8 s, jittered).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max);
        self
    }

    /// Monitors `table`; an empty `columns` means every column. Without any call
    /// every table of the schema is monitored.
    pub fn monitor(mut self, table: &str, columns: &[&str]) -> Self {
        let columns =
            (!columns.is_empty()).then(|| columns.iter().map(|c| (*c).to_owned()).collect());
        self.tables
            .get_or_insert_with(BTreeMap::new)
            .insert(table.to_owned(), columns);
        self
    }

    /// Adds a cache index on `table` over `columns` (`name` or `map_column:key`).
    /// Schema indexes exist without being declared.
    pub fn index(mut self, table: &str, columns: &[&str]) -> Self {
        self.indexes.push(IndexSpec::new(table, columns));
        self
    }

    /// How many events a subscriber may fall behind before it gets
    /// [`crate::runtime::cache::Event::Lagged`] (default 65,536).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Largest message accepted from the server (default 1 GiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Starts the client; it connects in the background. Must run inside a tokio runtime.
    pub fn start(self) -> Result<Client, Error> {
        let remotes = self.remotes.map_err(Error::Config)?;
        if remotes.is_empty() {
            return Err(Error::Config("no remote given".into()));
        }
        let needs_tls = remotes.iter().any(|r| matches!(r, Remote::Ssl { .. }));
        let tls = match (&self.tls, needs_tls) {
            (Some(tls), true) => Some(tls.connector().map_err(|e| Error::Config(e.to_string()))?),
            (None, true) => {
                return Err(Error::Config(
                    "ssl: remotes need a TLS configuration".into(),
                ));
            }
            (_, false) => None,
        };
        let metrics = Arc::new(Metrics::default());
        let placeholder = Arc::new(DatabaseSchema {
            name: self.database.clone(),
            version: None,
            cksum: None,
            tables: BTreeMap::new(),
        });
        let cache = Arc::new(Cache::new(
            placeholder,
            &MonitorTables::new(),
            self.indexes,
            self.event_capacity,
            metrics.clone(),
        ));
        let config = SessionConfig {
            remotes,
            database: self.database,
            leader_only: self.leader_only,
            tables: self
                .tables
                .map_or(TableSelection::All, TableSelection::Only),
            probe_interval: self.probe_interval,
            connect_timeout: self.connect_timeout,
            backoff_min: self.backoff.0,
            backoff_max: self.backoff.1,
            max_message_size: self.max_message_size,
            coalescing: self.coalescing,
        };
        let session = Session::new(config, tls, cache, metrics);
        session.spawn();
        Ok(Client {
            inner: Arc::new(Inner {
                session,
                request_timeout: self.request_timeout,
            }),
        })
    }

    /// Starts the client and waits until it is connected and its cache is loaded.
    pub async fn connect(self) -> Result<Client, Error> {
        let timeout = self.connect_timeout;
        let client = self.start()?;
        client.wait_connected(timeout).await?;
        Ok(client)
    }
}

struct Inner {
    session: Arc<Session>,
    request_timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.session.shut_down();
    }
}

/// An OVSDB client: a self-healing session, the monitored cache and metrics.
/// Cloning is cheap and shares everything; the session stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("database", &self.database())
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Client {
    /// A builder for `remotes` (comma-separated `tcp:`, `ssl:`, `unix:`) and `database`.
    pub fn builder(remotes: &str, database: &str) -> ClientBuilder {
        ClientBuilder {
            remotes: Remote::parse_list(remotes).map_err(|e| e.to_string()),
            database: database.to_owned(),
            leader_only: true,
            tls: None,
            probe_interval: Some(Duration::from_secs(5)),
            connect_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            backoff: (Duration::from_millis(250), Duration::from_secs(8)),
            tables: None,
            indexes: Vec::new(),
            event_capacity: 65_536,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            coalescing: Some(Coalescing::default()),
        }
    }

    pub(crate) fn session(&self) -> &Session {
        &self.inner.session
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// The database this client serves.
    pub fn database(&self) -> &str {
        self.inner.session.database()
    }

    /// The replica of the monitored tables.
    pub fn cache(&self) -> &Cache {
        &self.inner.session.cache
    }

    /// The schema the server reported on the last connect.
    pub fn schema(&self) -> Arc<DatabaseSchema> {
        self.cache().schema()
    }

    /// Subscribes to cache changes.
    pub fn subscribe(&self) -> EventStream {
        self.cache().subscribe()
    }

    /// A copy of the counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.session.metrics.snapshot()
    }

    /// Whether a connection with an established monitor is up.
    pub fn is_connected(&self) -> bool {
        self.inner.session.current().is_some()
    }

    /// The remote in use, if connected.
    pub fn connected_remote(&self) -> Option<Remote> {
        self.inner.session.current().map(|c| c.remote().clone())
    }

    /// What the server in use reports about our database (`_Server.Database`).
    pub fn server_database(&self) -> Option<ServerDatabase> {
        self.inner.session.server_database()
    }

    /// Waits until connected with the cache loaded, at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), Error> {
        self.inner
            .session
            .wait_ready(Instant::now() + timeout)
            .await
            .map(drop)
    }

    /// Drops the current connection; the session reconnects, other remotes first.
    pub fn reconnect(&self, why: &str) {
        self.inner.session.disconnect(why);
    }

    /// Sends any JSON-RPC request (e.g. `list_dbs`) and returns its raw result.
    pub async fn call(&self, method: &str, params: Json) -> Result<Json, Error> {
        let deadline = Instant::now() + self.inner.request_timeout;
        let conn = self.inner.session.wait_ready(deadline).await?;
        match tokio::time::timeout_at(deadline, conn.call(method, &params)).await {
            Err(_) => Err(Error::Timeout(self.inner.request_timeout)),
            Ok(result) => result.map_err(Error::from),
        }
    }

    /// Monitors only the rows of `table` matching any of `conditions` (they are
    /// or-ed; `[Condition::Constant(false)]` monitors none, an empty list all),
    /// with `monitor_cond_change`. When this returns the cache holds exactly the
    /// matching rows; the conditions also apply to every later connection.
    pub async fn set_monitor_condition(
        &self,
        table: &str,
        conditions: Vec<Condition>,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + self.inner.request_timeout;
        self.inner
            .session
            .change_conditions(table, conditions, deadline)
            .await
    }

    /// Cancels the data monitor (`monitor_cancel`) and monitors again from
    /// scratch on the same connection, replacing the cache (subscribers see the
    /// differences and [`crate::runtime::cache::Event::Synced`] `{ full: true }`).
    pub async fn resync(&self) -> Result<(), Error> {
        let deadline = Instant::now() + self.inner.request_timeout;
        self.inner.session.resync(deadline).await
    }

    pub(crate) fn locks(&self) -> &LockRegistry {
        &self.inner.session.locks
    }

    /// Round-trips an `echo`.
    pub async fn echo(&self) -> Result<(), Error> {
        self.call("echo", Json::Array(Vec::new())).await.map(drop)
    }
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
            tokio::time::timeout_at(deadline, lock::request(&conn, method, name))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_errors_are_reported_before_any_connection() {
        let bad_remote = Client::builder("tcp:nohost", "db").start().unwrap_err();
        assert!(
            matches!(&bad_remote, Error::Config(m) if m.contains("expected HOST:PORT")),
            "{bad_remote}"
        );
        let no_tls = Client::builder("ssl:127.0.0.1:1", "db")
            .start()
            .unwrap_err();
        assert!(
            matches!(&no_tls, Error::Config(m) if m.contains("TLS")),
            "{no_tls}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_gives_not_connected_with_the_last_error() {
        let dir = tempfile::tempdir().unwrap();
        let remote = format!("unix:{}", dir.path().join("absent.sock").display());
        let client = Client::builder(&remote, "db")
            .backoff(Duration::from_millis(10), Duration::from_millis(20))
            .start()
            .unwrap();
        let err = client
            .wait_connected(Duration::from_millis(300))
            .await
            .unwrap_err();
        let Error::NotConnected { last_error, .. } = &err else {
            panic!("{err}")
        };
        assert!(
            last_error
                .as_deref()
                .is_some_and(|e| e.contains("absent.sock")),
            "{err}"
        );
        assert!(err.is_retriable() && !err.may_have_committed());
        let m = client.metrics();
        assert!(m.connect_failures >= 2 && m.connects == 0, "{m:?}");
        // A transaction waits for the session only until its deadline.
        let started = Instant::now();
        let err = client
            .transact_until(&[], Instant::now() + Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotConnected { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
