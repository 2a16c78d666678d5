//! The session: one live connection at a time, re-established forever.
//!
//! The session task walks the remotes in shuffled order. For each it dials,
//! declares itself `set_db_change_aware`, checks the server's `_Server.Database`
//! row (see [`crate::runtime::cluster`]), fetches the schema and starts the data monitor,
//! resuming from the last transaction id. Only then is the connection handed to
//! callers. When the connection ends (server gone, probe unanswered, leadership
//! moved, cache inconsistent) in-flight calls fail with a retriable error and the
//! session starts over with the other remotes first. It sleeps with jittered
//! exponential backoff after a round in which every remote failed, and after a
//! connection that ended too soon to prove itself (see [`Backoff::after_session`]);
//! a connection lost because its server went away or stopped being usable is
//! followed at once by the other remotes, so a raft leader change costs an
//! election, not a backoff. It never gives up and never panics; it stops only when
//! the client is dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use rand::seq::SliceRandom;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::protocol::jsonrpc::RawNotification;
use crate::protocol::operation::Condition;
use crate::protocol::schema::DatabaseSchema;
use crate::runtime::cache::{Cache, MonitorTables};
use crate::runtime::cluster::{ClusterView, Refusal, SERVER_COLUMNS, ServerDatabase};
use crate::runtime::connection::{
    CallError, CloseReason, Coalescing, Connection, ConnectionOptions, NotificationHandler,
};
use crate::runtime::error::Error;
use crate::runtime::lock::LockRegistry;
use crate::runtime::metrics::Metrics;
use crate::runtime::monitor::{self, Decoded, MonitorMethod, MonitorState};
use crate::runtime::transport::{self, Remote};

/// How long a connection must have lived for a loss on the client's side (an
/// update it could not apply, a caller's request) to reset the backoff: such a
/// fault may recur with every server.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// The least a connection must have lived for its server's going away to reset
/// the backoff (and the current backoff window, whichever is longer): a server
/// that drops connections right after accepting them gets no reconnect storm.
const PROVEN_CONNECTION: Duration = Duration::from_secs(1);
/// The most a reconnection waits after a lost connection that proved itself, so
/// many clients that lost the same server do not all arrive at once.
const RECONNECT_JITTER: Duration = Duration::from_millis(50);

/// Prefix of the data monitor's ids; each new monitor (after a condition change,
/// a cancellation or a reconnection) gets the next number.
const DATA_MONITOR: &str = "portkeeper-data";
/// Monitor id of the `_Server.Database` monitor.
const SERVER_MONITOR: &str = "portkeeper-server";

/// Which tables to monitor.
#[derive(Debug, Clone)]
pub enum TableSelection {
    /// Every table of the server's schema, every column.
    All,
    /// The listed tables; `None` columns means all of a table's columns.
    Only(MonitorTables),
}

/// Everything the session needs to (re)connect.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    pub remotes: Vec<Remote>,
    pub database: String,
    pub leader_only: bool,
    pub tables: TableSelection,
    pub probe_interval: Option<Duration>,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub max_message_size: usize,
    pub coalescing: Option<Coalescing>,
}

/// What callers see of the session.
#[derive(Debug, Clone)]
pub(crate) enum Link {
    /// No usable connection right now.
    Down,
    /// A connection with its monitor established.
    Up(Arc<Connection>),
    /// The client was dropped.
    Shutdown,
}

struct ServerWatch {
    generation: u64,
    schema: Arc<DatabaseSchema>,
    cache: Cache,
    state: MonitorState,
}

pub(crate) struct Session {
    config: SessionConfig,
    tls: Option<TlsConnector>,
    pub(crate) cache: Arc<Cache>,
    pub(crate) metrics: Arc<Metrics>,
    link: watch::Sender<Link>,
    monitor: Mutex<MonitorState>,
    data_schema: Mutex<Option<Arc<DatabaseSchema>>>,
    method: Mutex<MonitorMethod>,
    server: Mutex<Option<ServerWatch>>,
    cluster: Mutex<ClusterView>,
    current_server: Mutex<Option<ServerDatabase>>,
    generation: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Why the last connection attempt's server was refused, or why the server
    /// of the live connection stopped being usable, if it was or did.
    last_refusal: Mutex<Option<Refusal>>,
    shutdown: CancellationToken,
    /// Data monitor ids whose updates are applied: the current one, plus the
    /// next during a `monitor_cond_change` (updates may arrive under either).
    monitor_ids: Mutex<Vec<String>>,
    next_monitor: AtomicU64,
    /// The caller's monitor conditions per table (clauses are or-ed), kept for
    /// the monitor of every new connection.
    conditions: Mutex<BTreeMap<String, Vec<Condition>>>,
    /// One monitor change at a time.
    monitor_change: tokio::sync::Mutex<()>,
    pub(crate) locks: LockRegistry,
}

impl Session {
    pub(crate) fn new(
        config: SessionConfig,
        tls: Option<TlsConnector>,
        cache: Arc<Cache>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            tls,
            cache,
            metrics,
            link: watch::Sender::new(Link::Down),
            monitor: Mutex::new(MonitorState::default()),
            data_schema: Mutex::new(None),
            method: Mutex::new(MonitorMethod::CondSince),
            server: Mutex::new(None),
            cluster: Mutex::new(ClusterView::default()),
            current_server: Mutex::new(None),
            generation: AtomicU64::new(0),
            last_error: Mutex::new(None),
            last_refusal: Mutex::new(None),
            shutdown: CancellationToken::new(),
            monitor_ids: Mutex::new(Vec::new()),
            next_monitor: AtomicU64::new(0),
            conditions: Mutex::new(BTreeMap::new()),
            monitor_change: tokio::sync::Mutex::new(()),
            locks: LockRegistry::default(),
        })
    }

    /// Starts the session task.
    pub(crate) fn spawn(self: &Arc<Self>) {
        let session = self.clone();
        let span = info_span!("ovsdb_session", database = %self.config.database);
        tokio::spawn(async move { session.run().await }.instrument(span));
    }

    /// Stops the session task and closes the connection.
    pub(crate) fn shut_down(&self) {
        self.shutdown.cancel();
        self.link.send_replace(Link::Shutdown);
    }

    pub(crate) fn database(&self) -> &str {
        &self.config.database
    }

    /// The current connection, if the session is up.
    pub(crate) fn current(&self) -> Option<Arc<Connection>> {
        match &*self.link.borrow() {
            Link::Up(conn) if !conn.is_closed() => Some(conn.clone()),
            _ => None,
        }
    }

    /// The `_Server.Database` row of the server in use.
    pub(crate) fn server_database(&self) -> Option<ServerDatabase> {
        self.current().and(self.current_server.lock().clone())
    }

    /// Drops the current connection; the session reconnects (to another remote first).
    pub(crate) fn disconnect(&self, why: &str) {
        if let Some(conn) = self.current() {
            conn.close(why);
        }
    }

    /// Waits for an established connection until `deadline`.
    pub(crate) async fn wait_ready(&self, deadline: Instant) -> Result<Arc<Connection>, Error> {
        let started = Instant::now();
        let mut link = self.link.subscribe();
        loop {
            match &*link.borrow_and_update() {
                Link::Up(conn) if !conn.is_closed() => return Ok(conn.clone()),
                Link::Shutdown => return Err(Error::Shutdown),
                _ => {}
            }
            match tokio::time::timeout_at(deadline, link.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Shutdown),
                Err(_) => {
                    return Err(Error::NotConnected {
                        waited: started.elapsed(),
                        last_error: self.last_error.lock().clone(),
                    });
                }
            }
        }
    }

    async fn run(self: Arc<Self>) {
        let mut order = self.config.remotes.clone();
        order.shuffle(&mut rand::rng());
        let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max);
        while !self.shutdown.is_cancelled() {
            let mut used = None;
            let mut all_other_cluster = !order.is_empty();
            for (i, remote) in order.iter().enumerate() {
                if self.shutdown.is_cancelled() {
                    return;
                }
                let attempt =
                    tokio::time::timeout(self.config.connect_timeout, self.establish(remote));
                let outcome = attempt.await;
                let refusal = self.last_refusal.lock().take();
                let conn = match (outcome, refusal) {
                    (Ok(Ok(conn)), _) => conn,
                    (Ok(Err(e)), refusal) => {
                        all_other_cluster &= refusal == Some(Refusal::WrongCluster);
                        self.connect_failed(remote, e);
                        continue;
                    }
                    (Err(_), _) => {
                        all_other_cluster = false;
                        let limit = self.config.connect_timeout;
                        self.connect_failed(
                            remote,
                            format!("handshake took longer than {limit:?}"),
                        );
                        continue;
                    }
                };
                self.metrics.connected();
                info!(%remote, "connected");
                let up_since = Instant::now();
                self.link.send_replace(Link::Up(conn.clone()));
                let reason = tokio::select! {
                    reason = conn.closed() => reason,
                    _ = self.shutdown.cancelled() => {
                        conn.close("client shut down");
                        return;
                    }
                };
                let moved = self.last_refusal.lock().take();
                self.link.send_replace(Link::Down);
                self.locks.disconnected();
                self.metrics.disconnected();
                *self.last_error.lock() = Some(format!("{remote}: {reason}"));
                warn!(%remote, %reason, "disconnected; reconnecting");
                used = Some((i, up_since.elapsed(), Ending::of(&reason, moved.is_some())));
                break;
            }
            match used {
                // Try the other remotes before this one again: a server that just
                // lost leadership may be busy writing a snapshot.
                Some((i, lived, ending)) => {
                    let remote = order.remove(i);
                    order.push(remote);
                    let pause = backoff.after_session(ending, lived);
                    debug!(?pause, ?lived, ?ending, "reconnecting");
                    self.metrics.waited_after_loss(pause);
                    self.sleep(pause).await;
                }
                None => {
                    if all_other_cluster {
                        // Every server belongs to a cluster other than the one we
                        // saw first: the database was recreated (or restored), so
                        // its ids and indexes start over. Follow it.
                        warn!("every server belongs to a new cluster; forgetting the old one");
                        *self.cluster.lock() = ClusterView::default();
                    }
                    let pause = backoff.next_delay();
                    debug!(?pause, "every remote failed; backing off");
                    self.metrics.backed_off(pause);
                    self.sleep(pause).await;
                }
            }
        }
    }

    async fn sleep(&self, pause: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    fn connect_failed(&self, remote: &Remote, error: String) {
        self.metrics.connect_failed();
        warn!(%remote, %error, "connection attempt failed");
        *self.last_error.lock() = Some(format!("{remote}: {error}"));
    }

    fn handler(self: &Arc<Self>, generation: u64) -> NotificationHandler {
        let session: Weak<Self> = Arc::downgrade(self);
        Arc::new(move |notification| match session.upgrade() {
            Some(session) => session.on_notification(generation, notification),
            None => Err("client dropped".into()),
        })
    }

    fn on_notification(
        self: &Arc<Self>,
        generation: u64,
        notification: RawNotification<'_>,
    ) -> Result<(), String> {
        if generation == self.generation.load(Ordering::SeqCst)
            && self
                .locks
                .on_notification(&notification.method, notification.params.get())
        {
            return Ok(());
        }
        let schema = self.data_schema.lock().clone();
        let Some(schema) = schema else { return Ok(()) };
        let decoded = {
            let ids = self.monitor_ids.lock();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            monitor::decode_notification(&schema, &ids, &notification)
        };
        match decoded {
            Ok(Decoded::Update(update)) => self
                .monitor
                .lock()
                .on_update(generation, update, &self.cache)
                .map_err(|e| e.to_string()),
            Ok(Decoded::NotOurs) => self.on_server_notification(generation, &notification),
            Ok(Decoded::Canceled) => self.on_canceled(generation),
            Err(e) => {
                self.monitor.lock().last_txn_id = None;
                Err(e.to_string())
            }
        }
    }

    /// The server cancelled the data monitor (the database was converted or
    /// replaced): monitor it again on the same connection, from scratch, with the
    /// schema it has now. Until then updates are buffered as on a new connection.
    fn on_canceled(self: &Arc<Self>, generation: u64) -> Result<(), String> {
        let Some(conn) = self.current() else {
            self.monitor.lock().last_txn_id = None;
            return Err("the server cancelled the data monitor during the handshake".into());
        };
        info!("the server cancelled the data monitor; monitoring again");
        self.monitor_ids.lock().clear();
        let session = self.clone();
        tokio::spawn(
            async move {
                let _change = session.monitor_change.lock().await;
                session.monitor.lock().last_txn_id = None;
                if let Err(e) = session.start_data_monitor(&conn, generation).await {
                    warn!(error = %e, "monitoring again failed; reconnecting");
                    conn.close(format!("re-monitor after monitor_canceled: {e}"));
                }
            }
            .in_current_span(),
        );
        Ok(())
    }

    fn new_monitor_id(&self) -> String {
        let n = self.next_monitor.fetch_add(1, Ordering::SeqCst);
        format!("{DATA_MONITOR}-{n}")
    }

    /// Replaces the monitor conditions of `table` with `monitor_cond_change`; the
    /// server then sends the rows that left (as deletes) and entered (as inserts)
    /// the condition, which the cache applies before this returns.
    pub(crate) async fn change_conditions(
        &self,
        table: &str,
        conditions: Vec<Condition>,
        deadline: Instant,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let _change = self.monitor_change.lock().await;
        let monitored = match &self.config.tables {
            TableSelection::All => self.cache.schema().table(table).is_some(),
            TableSelection::Only(tables) => tables.contains_key(table),
        };
        if !monitored {
            return Err(Error::Config(format!("table {table} is not monitored")));
        }
        self.conditions
            .lock()
            .insert(table.to_owned(), conditions.clone());
        let conn = self.wait_ready(deadline).await?;
        if *self.method.lock() == MonitorMethod::Plain {
            return Err(Error::Protocol(
                "the server has no conditional monitoring (monitor_cond)".into(),
            ));
        }
        let new = self.new_monitor_id();
        let old = {
            let mut ids = self.monitor_ids.lock();
            let old = ids.last().cloned().unwrap_or_default();
            ids.push(new.clone());
            old
        };
        let params = json!([old, new, {table: [{"where": conditions}]}]);
        let reply =
            tokio::time::timeout_at(deadline, conn.call_raw("monitor_cond_change", &params))
                .await
                .map_err(|_| Error::Timeout(deadline.saturating_duration_since(started)));
        let mut ids = self.monitor_ids.lock();
        match reply {
            Ok(Ok(_)) => {
                ids.retain(|id| *id == new);
                Ok(())
            }
            Ok(Err(e)) => {
                ids.retain(|id| *id != new);
                Err(e.into())
            }
            Err(timeout) => Err(timeout),
        }
    }

    /// Cancels the data monitor (`monitor_cancel`) and monitors again from
    /// scratch on the same connection, replacing the cache.
    pub(crate) async fn resync(&self, deadline: Instant) -> Result<(), Error> {
        let started = Instant::now();
        let _change = self.monitor_change.lock().await;
        let conn = self.wait_ready(deadline).await?;
        let generation = self.generation.load(Ordering::SeqCst);
        let old = std::mem::take(&mut *self.monitor_ids.lock());
        for id in old {
            match conn.call_raw("monitor_cancel", &[id]).await {
                Ok(_) | Err(CallError::Rpc(_)) => {}
                Err(lost) => return Err(lost.into()),
            }
        }
        self.monitor.lock().last_txn_id = None;
        let monitoring = self.start_data_monitor(&conn, generation);
        match tokio::time::timeout_at(deadline, monitoring).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                conn.close(format!("re-monitor failed: {e}"));
                Err(Error::Protocol(e))
            }
            Err(_) => {
                conn.close("re-monitor timed out");
                Err(Error::Timeout(deadline.saturating_duration_since(started)))
            }
        }
    }

    fn on_server_notification(
        &self,
        generation: u64,
        notification: &RawNotification<'_>,
    ) -> Result<(), String> {
        let mut server = self.server.lock();
        let Some(watch) = server.as_mut().filter(|w| w.generation == generation) else {
            return Ok(());
        };
        match monitor::decode_notification(&watch.schema, &[SERVER_MONITOR], notification)
            .map_err(|e| e.to_string())?
        {
            Decoded::Update(update) => {
                watch
                    .state
                    .on_update(generation, update, &watch.cache)
                    .map_err(|e| e.to_string())?;
                if watch.state.established {
                    self.check_server(&watch.cache).map_err(|refusal| {
                        let message = format!("leadership moved: {refusal}");
                        *self.last_refusal.lock() = Some(refusal);
                        message
                    })?;
                }
                Ok(())
            }
            Decoded::Canceled => Err("the server cancelled the _Server monitor".into()),
            Decoded::NotOurs => {
                debug!(method = %notification.method, "ignoring notification");
                Ok(())
            }
        }
    }

    /// Evaluates the server's `_Server.Database` row for our database.
    fn check_server(&self, server_cache: &Cache) -> Result<(), crate::runtime::cluster::Refusal> {
        let db = server_cache
            .rows("Database")
            .iter()
            .filter_map(|row| ServerDatabase::from_row(row))
            .find(|db| db.name == self.config.database);
        let verdict = self
            .cluster
            .lock()
            .evaluate(db.as_ref(), self.config.leader_only);
        *self.current_server.lock() = db;
        verdict
    }

    async fn establish(self: &Arc<Self>, remote: &Remote) -> Result<Arc<Connection>, String> {
        self.last_refusal.lock().take();
        let stream = transport::connect(remote, self.tls.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut monitor = self.monitor.lock();
            monitor.generation = generation;
            monitor.established = false;
            monitor.buffered.clear();
        }
        let options = ConnectionOptions {
            probe_interval: self.config.probe_interval.filter(|_| remote.is_network()),
            max_message_size: self.config.max_message_size,
            coalescing: self.config.coalescing,
        };
        let conn = Arc::new(
            Connection::start(remote.clone(), stream, options, self.handler(generation))
                .map_err(|e| format!("setting up the connection to {remote}: {e}"))?,
        );
        if let Err(e) = conn.call("set_db_change_aware", &json!([true])).await {
            match e {
                CallError::Rpc(e) => {
                    debug!(error = %e, "server does not support set_db_change_aware")
                }
                lost => return Err(lost.to_string()),
            }
        }
        self.watch_server(&conn, generation).await?;

        self.start_data_monitor(&conn, generation).await?;
        self.locks
            .reacquire(&conn)
            .await
            .map_err(|e| format!("lock: {e}"))?;
        if conn.is_closed() {
            return Err(conn
                .close_reason()
                .map(|r| r.to_string())
                .unwrap_or_default());
        }
        Ok(conn)
    }

    /// Fetches the schema and starts the data monitor on `conn` (resuming from the
    /// last transaction id when there is one), then applies its reply to the cache.
    async fn start_data_monitor(
        &self,
        conn: &Arc<Connection>,
        generation: u64,
    ) -> Result<(), String> {
        let schema_json = conn
            .call("get_schema", &[&self.config.database])
            .await
            .map_err(|e| format!("get_schema: {e}"))?;
        let schema =
            Arc::new(DatabaseSchema::from_json(&schema_json).map_err(|e| format!("schema: {e}"))?);
        let tables = self.monitor_tables(&schema)?;
        let previous = self.data_schema.lock().replace(schema.clone());
        if previous.as_deref().is_some_and(|p| *p != *schema) {
            info!("database schema changed; reloading the whole cache");
            self.monitor.lock().last_txn_id = None;
        }

        {
            let mut state = self.monitor.lock();
            if state.generation != generation {
                return Err("superseded by a newer connection".into());
            }
            state.established = false;
            state.buffered.clear();
        }
        let monitor_id = self.new_monitor_id();
        *self.monitor_ids.lock() = vec![monitor_id.clone()];
        let conditions = self.conditions.lock().clone();
        let mut method = *self.method.lock();
        let reply = loop {
            let last_txn_id = self.monitor.lock().last_txn_id;
            let params = monitor::request_params(
                method,
                &self.config.database,
                &monitor_id,
                &tables,
                &conditions,
                last_txn_id,
            );
            match conn.call_raw(method.name(), &params).await {
                Ok(reply) => break reply,
                Err(CallError::Rpc(e)) if e.is_unknown_method() => match method.fallback() {
                    Some(older) => {
                        info!(
                            from = method.name(),
                            to = older.name(),
                            "server lacks monitor method; falling back"
                        );
                        method = older;
                        *self.method.lock() = older;
                    }
                    None => return Err(format!("{}: {e}", method.name())),
                },
                Err(e) => return Err(format!("{}: {e}", method.name())),
            }
        };
        let initial = monitor::decode_reply(method, &schema, &reply).map_err(|e| e.to_string())?;
        let resumed = initial.found;
        let full = {
            let mut state = self.monitor.lock();
            if state.generation != generation {
                return Err("superseded by a newer connection".into());
            }
            state
                .establish(initial, schema, &tables, &self.cache)
                .map_err(|e| e.to_string())?
        };
        info!(method = method.name(), resumed, full, "monitor established");
        Ok(())
    }

    /// Monitors `_Server.Database` on the new connection and checks the server.
    async fn watch_server(
        self: &Arc<Self>,
        conn: &Arc<Connection>,
        generation: u64,
    ) -> Result<(), String> {
        let schema_json = match conn.call("get_schema", &json!(["_Server"])).await {
            Ok(schema) => schema,
            Err(CallError::Rpc(e)) => {
                // A server from before _Server existed is standalone.
                debug!(error = %e, "no _Server database; assuming a standalone server");
                *self.server.lock() = None;
                *self.current_server.lock() = None;
                return Ok(());
            }
            Err(e) => return Err(format!("get_schema _Server: {e}")),
        };
        let schema = Arc::new(
            DatabaseSchema::from_json(&schema_json).map_err(|e| format!("_Server schema: {e}"))?,
        );
        let mut tables = MonitorTables::new();
        tables.insert(
            "Database".into(),
            Some(SERVER_COLUMNS.iter().map(|c| (*c).to_owned()).collect()),
        );
        *self.server.lock() = Some(ServerWatch {
            generation,
            schema: schema.clone(),
            cache: Cache::new(
                schema.clone(),
                &tables,
                Vec::new(),
                16,
                Arc::new(Metrics::default()),
            ),
            state: MonitorState {
                generation,
                ..MonitorState::default()
            },
        });
        let mut method = MonitorMethod::Cond;
        let reply = loop {
            let params = monitor::request_params(
                method,
                "_Server",
                SERVER_MONITOR,
                &tables,
                &BTreeMap::new(),
                None,
            );
            match conn.call_raw(method.name(), &params).await {
                Ok(reply) => break reply,
                Err(CallError::Rpc(e))
                    if e.is_unknown_method() && method == MonitorMethod::Cond =>
                {
                    method = MonitorMethod::Plain;
                }
                Err(e) => return Err(format!("_Server {}: {e}", method.name())),
            }
        };
        let initial = monitor::decode_reply(method, &schema, &reply).map_err(|e| e.to_string())?;
        let mut server = self.server.lock();
        let watch = server
            .as_mut()
            .filter(|w| w.generation == generation)
            .ok_or("superseded by a newer connection")?;
        watch
            .state
            .establish(initial, schema, &tables, &watch.cache)
            .map_err(|e| e.to_string())?;
        self.check_server(&watch.cache).map_err(|refusal| {
            let message = refusal.to_string();
            *self.last_refusal.lock() = Some(refusal);
            message
        })
    }

    fn monitor_tables(&self, schema: &DatabaseSchema) -> Result<MonitorTables, String> {
        match &self.config.tables {
            TableSelection::All => Ok(schema.tables.keys().map(|t| (t.clone(), None)).collect()),
            TableSelection::Only(tables) => {
                for (table, columns) in tables {
                    let ts = schema
                        .table(table)
                        .ok_or_else(|| format!("the server's schema has no table {table}"))?;
                    for column in columns.iter().flatten() {
                        if ts.column(column).is_none() {
                            return Err(format!(
                                "the server's table {table} has no column {column}"
                            ));
                        }
                    }
                }
                Ok(tables.clone())
            }
        }
    }
}

/// Why an established connection ended, as far as reconnecting is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The server went away (closed, reset, stopped answering the probe) or
    /// stopped being one we use (it lost the raft leadership or its cluster):
    /// another member can serve at once.
    ServerSide,
    /// The client dropped it (an update it could not apply, a message it could
    /// not read, a caller's request): the same may happen with every server.
    ClientSide,
}

impl Ending {
    /// Classifies a close reason; `refused` is true when the server was dropped
    /// because its `_Server.Database` row stopped qualifying.
    pub(crate) fn of(reason: &CloseReason, refused: bool) -> Self {
        match reason {
            CloseReason::Eof | CloseReason::Io(_) | CloseReason::ProbeTimeout(_) => {
                Ending::ServerSide
            }
            CloseReason::Handler(_) if refused => Ending::ServerSide,
            _ => Ending::ClientSide,
        }
    }
}

/// Exponential backoff with jitter: each delay is drawn from the upper half of a
/// window that doubles from `min` to `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    window: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Self {
            min,
            max: max.max(min),
            window: min,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.window = self.min;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let window = self.window;
        self.window = (self.window * 2).min(self.max);
        let half = window / 2;
        half + window.mul_f64(rand::rng().random_range(0.0..=0.5))
    }

    /// The pause before reconnecting after an established connection that lived
    /// `lived` ended. A connection proves itself by living at least as long as
    /// the wait the backoff would now impose (and [`PROVEN_CONNECTION`]) when its
    /// server went away, [`STABLE_CONNECTION`] when the client dropped it; its loss
    /// then resets the backoff and the next connection is tried at once (after a
    /// few ms of jitter). Any other loss counts as one more failed attempt, so a
    /// server that keeps dropping fresh connections is retried no faster than the
    /// backoff allows.
    pub(crate) fn after_session(&mut self, ending: Ending, lived: Duration) -> Duration {
        let proven = match ending {
            Ending::ServerSide => lived >= self.window.max(PROVEN_CONNECTION),
            Ending::ClientSide => lived >= STABLE_CONNECTION,
        };
        if proven {
            self.reset();
            RECONNECT_JITTER.mul_f64(rand::rng().random_range(0.0..=1.0))
        } else {
            self.next_delay()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        for d in &delays {
            assert!(*d <= Duration::from_secs(1), "{d:?}");
        }
        assert!(
            delays[7] >= Duration::from_millis(500),
            "reached the cap window: {delays:?}"
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(8);

    /// The window a fresh backoff has reached after `attempts` failed ones.
    fn grown(attempts: usize) -> Backoff {
        let mut b = Backoff::new(MIN, MAX);
        for _ in 0..attempts {
            b.next_delay();
        }
        b
    }

    #[test]
    fn a_server_lost_after_a_short_proven_session_is_followed_at_once_every_time() {
        // Raft leader kills a few seconds apart, each followed by an election
        // during which three rounds of attempts fail.
        let mut b = Backoff::new(MIN, MAX);
        for kill in 0..20 {
            let pause = b.after_session(Ending::ServerSide, Duration::from_secs(3));
            assert!(pause <= RECONNECT_JITTER, "kill {kill}: {pause:?}");
            let election: Duration = (0..3).map(|_| b.next_delay()).sum();
            assert!(
                election <= Duration::from_millis(1750),
                "kill {kill}: the election's failed rounds back off from the minimum: {election:?}"
            );
        }
    }

    #[test]
    fn a_session_must_outlive_the_current_window_and_the_floor() {
        // After four failed rounds the window is 4 s: a 3 s session is not proof.
        let mut b = grown(4);
        let pause = b.after_session(Ending::ServerSide, Duration::from_secs(3));
        assert!(pause >= Duration::from_secs(2), "{pause:?}");
        let mut b = grown(4);
        assert!(b.after_session(Ending::ServerSide, Duration::from_secs(5)) <= RECONNECT_JITTER);
        // A fresh backoff's window is 250 ms, but the floor is 1 s.
        let mut b = Backoff::new(MIN, MAX);
        assert!(b.after_session(Ending::ServerSide, Duration::from_millis(500)) >= MIN / 2);
    }

    #[test]
    fn a_server_that_drops_fresh_connections_gets_no_storm() {
        let mut b = Backoff::new(MIN, MAX);
        let pauses: Vec<Duration> = (0..8)
            .map(|_| b.after_session(Ending::ServerSide, Duration::from_millis(100)))
            .collect();
        assert!(pauses[0] >= MIN / 2, "{pauses:?}");
        assert!(pauses[7] >= MAX / 2, "grew to the cap: {pauses:?}");
    }

    #[test]
    fn a_client_side_loss_needs_a_stable_connection() {
        let mut b = Backoff::new(MIN, MAX);
        assert!(b.after_session(Ending::ClientSide, Duration::from_secs(5)) >= MIN / 2);
        assert!(b.after_session(Ending::ClientSide, Duration::from_secs(5)) >= MIN);
        assert!(b.after_session(Ending::ClientSide, STABLE_CONNECTION) <= RECONNECT_JITTER);
        assert!(b.next_delay() <= MIN, "the loss reset the backoff");
    }

    #[test]
    fn losses_are_classified_by_who_ended_the_connection() {
        let server = [
            CloseReason::Eof,
            CloseReason::Io("connection reset by peer".into()),
            CloseReason::ProbeTimeout(Duration::from_secs(5)),
        ];
        for reason in &server {
            assert_eq!(Ending::of(reason, false), Ending::ServerSide, "{reason}");
        }
        let moved = CloseReason::Handler("leadership moved: not the leader".into());
        assert_eq!(Ending::of(&moved, true), Ending::ServerSide);
        let client = [
            CloseReason::Handler("row does not exist".into()),
            CloseReason::Decode("not JSON".into()),
            CloseReason::Requested("test".into()),
        ];
        for reason in &client {
            assert_eq!(Ending::of(reason, false), Ending::ClientSide, "{reason}");
        }
    }

    #[test]
    fn degenerate_backoff_bounds_do_not_panic() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_millis(1));
        }
    }
}
