//! The in-memory replica of the monitored tables.
//!
//! Rows are `Arc<Row>`: a read hands out shared pointers, never deep copies, and
//! an update replaces a row's pointer rather than editing it in place, so a row a
//! caller holds never changes under it. Each table keeps the schema's unique
//! indexes and the client's own (non-unique) indexes, including indexes on one
//! key of a map column such as `external_ids:pod`.
//!
//! Every change is also published on a bounded event stream. A subscriber that
//! falls behind is never silently skipped: it receives [`Event::Lagged`] and must
//! re-read the cache, which is always at least as new as any event.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};
use tokio::sync::{broadcast, watch};

use crate::protocol::datum::{Atom, Uuid, Value};
use crate::protocol::row::Row;
use crate::protocol::schema::{ColumnSchema, DatabaseSchema, TableSchema, UUID_COLUMN};
use crate::protocol::table::Table;
use crate::protocol::types::ColumnType;
use crate::runtime::metrics::Metrics;

/// Which tables and columns to monitor: `None` columns means all of them.
pub type MonitorTables = BTreeMap<String, Option<Vec<String>>>;

/// One component of an index: a whole column, or one key of a map column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IndexColumn {
    /// The column's whole value.
    Column(String),
    /// The value stored under `key` in map column `column`; rows without the key
    /// are not in the index.
    MapKey {
        /// The map column, e.g. `external_ids`.
        column: String,
        /// The key, e.g. `pod`.
        key: String,
    },
}

impl IndexColumn {
    /// Parses `name` or `column:key` (the latter for a map key).
    pub fn parse(spec: &str) -> Self {
        match spec.split_once(':') {
            Some((column, key)) => IndexColumn::MapKey {
                column: column.to_owned(),
                key: key.to_owned(),
            },
            None => IndexColumn::Column(spec.to_owned()),
        }
    }

    fn column_name(&self) -> &str {
        match self {
            IndexColumn::Column(c) | IndexColumn::MapKey { column: c, .. } => c,
        }
    }
}

impl fmt::Display for IndexColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexColumn::Column(c) => f.write_str(c),
            IndexColumn::MapKey { column, key } => write!(f, "{column}:{key}"),
        }
    }
}

/// A client-declared index on one table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexSpec {
    /// The table.
    pub table: String,
    /// The indexed columns, in lookup-key order.
    pub columns: Vec<IndexColumn>,
}

impl IndexSpec {
    /// An index on `table` over `columns`, each `name` or `map_column:key`.
    pub fn new(table: impl Into<String>, columns: &[&str]) -> Self {
        Self {
            table: table.into(),
            columns: columns.iter().map(|c| IndexColumn::parse(c)).collect(),
        }
    }
}

/// One change to the cache, as published to subscribers.
#[derive(Debug, Clone)]
pub enum Event {
    /// A row appeared.
    Insert {
        /// Its table.
        table: Arc<str>,
        /// The new row (with `_uuid`).
        row: Arc<Row>,
    },
    /// A row changed.
    Update {
        /// Its table.
        table: Arc<str>,
        /// The row before the change.
        old: Arc<Row>,
        /// The row after the change.
        new: Arc<Row>,
    },
    /// A row disappeared.
    Delete {
        /// Its table.
        table: Arc<str>,
        /// The row as it was last seen.
        row: Arc<Row>,
    },
    /// The monitor was (re)established and the cache now matches the server.
    /// `full` is true when the whole database was reloaded; the changes that
    /// reload implied were published as inserts, updates and deletes before it.
    Synced {
        /// Whether this was a full reload rather than an incremental resume.
        full: bool,
    },
    /// This subscriber fell behind and missed `missed` events. Re-read what it
    /// needs from the cache, which already holds every missed change.
    Lagged {
        /// How many events were skipped.
        missed: u64,
    },
}

impl Event {
    /// The table of a row event.
    pub fn table(&self) -> Option<&str> {
        match self {
            Event::Insert { table, .. }
            | Event::Update { table, .. }
            | Event::Delete { table, .. } => Some(table),
            Event::Synced { .. } | Event::Lagged { .. } => None,
        }
    }
}

/// A subscription to cache events.
pub struct EventStream {
    receiver: broadcast::Receiver<Event>,
    metrics: Arc<Metrics>,
}

impl EventStream {
    /// The next event; `None` once the client is gone. Falling behind yields
    /// [`Event::Lagged`] rather than silently skipping.
    pub async fn recv(&mut self) -> Option<Event> {
        match self.receiver.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                self.metrics.lagged(missed);
                Some(Event::Lagged { missed })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// An event already waiting, without blocking.
    pub fn try_recv(&mut self) -> Option<Event> {
        match self.receiver.try_recv() {
            Ok(event) => Some(event),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                self.metrics.lagged(missed);
                Some(Event::Lagged { missed })
            }
            Err(_) => None,
        }
    }
}

/// The cache cannot follow the server any more; the monitor must start over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cache inconsistent: {0}")]
pub struct Inconsistent(pub String);

/// One row change decoded from a monitor message.
#[derive(Debug, Clone)]
pub(crate) enum RowUpdate {
    /// A whole row (`initial`, `insert`, or RFC `new` without `old`), defaults filled.
    Insert(Row),
    /// An update2/update3 `modify`: per-column diffs.
    Modify(Row),
    /// An RFC `update` modification: the new values of the changed columns.
    Replace(Row),
    /// The row is gone.
    Delete,
}

/// Changes to apply together, in order.
pub(crate) type Batch = Vec<(String, Uuid, RowUpdate)>;

struct Index {
    columns: Vec<IndexColumn>,
    unique: bool,
    entries: HashMap<Vec<Value>, Vec<Uuid>>,
}

impl Index {
    fn key(&self, row: &Row) -> Option<Vec<Value>> {
        // Sized exactly: the index keeps this vector for as long as the row is cached.
        let mut key = Vec::with_capacity(self.columns.len());
        for column in &self.columns {
            key.push(match column {
                IndexColumn::Column(name) => row.get(name)?.clone(),
                IndexColumn::MapKey { column, key } => {
                    Value::Atom(row.get(column)?.as_map()?.get_str(key)?.clone())
                }
            });
        }
        Some(key)
    }

    /// Files `row` under its key; returns the key if the index is unique, for the
    /// check at the end of the batch.
    fn add(&mut self, uuid: Uuid, row: &Row) -> Option<Vec<Value>> {
        let key = self.key(row)?;
        let checked = self.unique.then(|| key.clone());
        let slot = self.entries.entry(key).or_default();
        if !slot.contains(&uuid) {
            slot.push(uuid);
        }
        checked
    }

    fn remove(&mut self, uuid: Uuid, row: &Row) {
        if let Some(key) = self.key(row)
            && let Some(slot) = self.entries.get_mut(&key)
        {
            slot.retain(|u| *u != uuid);
            if slot.is_empty() {
                self.entries.remove(&key);
            }
        }
    }
}

struct TableCache {
    name: Arc<str>,
    schema: Arc<TableSchema>,
    /// The monitored columns in name order; `None` is all of them.
    columns: Option<Vec<ColumnSchema>>,
    rows: HashMap<Uuid, Arc<Row>>,
    indexes: Vec<Index>,
}

impl TableCache {
    fn new(
        schema: &TableSchema,
        columns: Option<Vec<String>>,
        client_indexes: &[IndexSpec],
    ) -> Self {
        let mut indexes: Vec<Index> = schema
            .indexes
            .iter()
            .map(|cols| Index {
                columns: cols
                    .iter()
                    .map(|c| IndexColumn::Column(c.clone()))
                    .collect(),
                unique: true,
                entries: HashMap::new(),
            })
            .collect();
        for spec in client_indexes.iter().filter(|s| s.table == schema.name) {
            if !indexes.iter().any(|i| i.columns == spec.columns) {
                indexes.push(Index {
                    columns: spec.columns.clone(),
                    unique: false,
                    entries: HashMap::new(),
                });
            }
        }
        let columns = columns.map(|names| {
            let mut columns: Vec<ColumnSchema> = names
                .iter()
                .filter_map(|name| schema.column(name).cloned())
                .collect();
            columns.sort_by(|a, b| a.name.cmp(&b.name));
            columns.dedup_by(|a, b| a.name == b.name);
            columns
        });
        Self {
            name: Arc::from(schema.name.as_str()),
            schema: Arc::new(schema.clone()),
            columns,
            rows: HashMap::new(),
            indexes,
        }
    }

    /// Stores `row`, keeping indexes in step; returns the previous row. Keys of
    /// unique indexes that gained a row go to `touched` for a check at batch end.
    fn put(
        &mut self,
        uuid: Uuid,
        row: Arc<Row>,
        touched: &mut Vec<(Arc<str>, usize, Vec<Value>)>,
    ) -> Option<Arc<Row>> {
        let old = self.rows.insert(uuid, row.clone());
        for (i, index) in self.indexes.iter_mut().enumerate() {
            if let Some(old) = &old {
                index.remove(uuid, old);
            }
            if let Some(key) = index.add(uuid, &row) {
                touched.push((self.name.clone(), i, key));
            }
        }
        old
    }

    /// Monitor `initial`/`insert` rows omit columns holding their default value:
    /// put the defaults of the monitored columns back.
    fn fill_defaults(&self, row: &mut Row) {
        match &self.columns {
            None => row.fill_defaults(&self.schema),
            Some(columns) => row.fill_defaults_of(columns),
        }
    }

    fn take(&mut self, uuid: Uuid) -> Option<Arc<Row>> {
        let old = self.rows.remove(&uuid)?;
        for index in &mut self.indexes {
            index.remove(uuid, &old);
        }
        Some(old)
    }

    fn find(&self, columns: &[IndexColumn], key: &[Value]) -> Option<Vec<Arc<Row>>> {
        let index = self.indexes.iter().find(|i| i.columns == columns)?;
        let key = self.canonical_key(columns, key)?;
        Some(
            index
                .entries
                .get(&key)
                .map(|uuids| {
                    uuids
                        .iter()
                        .filter_map(|u| self.rows.get(u).cloned())
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    /// Brings a caller's lookup key into the form rows are indexed by (e.g. an
    /// optional column's atom into a one-element set).
    fn canonical_key(&self, columns: &[IndexColumn], key: &[Value]) -> Option<Vec<Value>> {
        if columns.len() != key.len() {
            return None;
        }
        columns
            .iter()
            .zip(key)
            .map(|(col, value)| {
                let ty: Option<&ColumnType> = self.schema.column(col.column_name()).map(|c| &c.ty);
                match (col, ty) {
                    (IndexColumn::Column(_), Some(ty)) => value.clone().coerce(ty).ok(),
                    (IndexColumn::MapKey { .. }, Some(ty)) => {
                        let atom: &Atom = value.as_atom()?;
                        let atomic = ty.value.as_ref()?.atomic;
                        atom.clone().coerce(atomic).ok().map(Value::Atom)
                    }
                    (_, None) => Some(value.clone()),
                }
            })
            .collect()
    }
}

struct State {
    schema: Arc<DatabaseSchema>,
    tables: HashMap<String, TableCache>,
}

/// The replica. Cheap to share (`Arc`); reads take a short read lock.
pub struct Cache {
    state: RwLock<State>,
    client_indexes: Vec<IndexSpec>,
    events: broadcast::Sender<Event>,
    version: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("version", &*self.version.borrow())
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// An empty cache for `tables` of `schema`, with the client's indexes.
    /// `event_capacity` bounds how far a subscriber may fall behind before it
    /// receives [`Event::Lagged`].
    pub(crate) fn new(
        schema: Arc<DatabaseSchema>,
        tables: &MonitorTables,
        client_indexes: Vec<IndexSpec>,
        event_capacity: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (events, _) = broadcast::channel(event_capacity.max(1));
        let cache = Self {
            state: RwLock::new(State {
                schema: schema.clone(),
                tables: HashMap::new(),
            }),
            client_indexes,
            events,
            version: watch::Sender::new(0),
            metrics,
        };
        cache.state.write().tables = cache.empty_tables(&schema, tables);
        cache
    }

    fn empty_tables(
        &self,
        schema: &DatabaseSchema,
        tables: &MonitorTables,
    ) -> HashMap<String, TableCache> {
        tables
            .iter()
            .filter_map(|(name, columns)| Some((schema.table(name)?, columns)))
            .map(|(t, columns)| {
                let cache = TableCache::new(t, columns.clone(), &self.client_indexes);
                (t.name.clone(), cache)
            })
            .collect()
    }

    /// Subscribes to changes from now on.
    ///
    /// The events of a change are queued before the cache releases its write lock, so
    /// once a [`Cache::read`] view exists, every event of the state it shows is already
    /// in each stream: draining a stream while holding a view brings a follower (such
    /// as a derived index) exactly to the view's state. This ordering is part of the
    /// contract.
    pub fn subscribe(&self) -> EventStream {
        EventStream {
            receiver: self.events.subscribe(),
            metrics: self.metrics.clone(),
        }
    }

    /// The schema the cache was last loaded with.
    pub fn schema(&self) -> Arc<DatabaseSchema> {
        self.state.read().schema.clone()
    }

    /// A consistent read view across tables. It holds a read lock and so delays
    /// updates: keep it briefly (clone the `Arc`s you need and drop it).
    pub fn read(&self) -> CacheView<'_> {
        CacheView {
            state: self.state.read(),
        }
    }

    /// One row by uuid.
    pub fn get(&self, table: &str, uuid: Uuid) -> Option<Arc<Row>> {
        self.read().get(table, uuid)
    }

    /// Every row of a table (shared pointers, no deep copies).
    pub fn rows(&self, table: &str) -> Vec<Arc<Row>> {
        self.read().rows(table)
    }

    /// Rows whose indexed columns equal `key`, through a schema or client index
    /// named by its columns (`name`, `map_column:key`). `None` when no such index exists.
    pub fn find(&self, table: &str, columns: &[&str], key: &[Value]) -> Option<Vec<Arc<Row>>> {
        self.read().find(table, columns, key)
    }

    /// One typed row by uuid; `None` if absent, an error if it does not decode.
    pub fn get_typed<T: Table>(
        &self,
        uuid: Uuid,
    ) -> Option<Result<T, crate::protocol::row::RowError>> {
        let row = self.get(T::TABLE, uuid)?;
        Some(T::from_uuid_row(uuid, &row))
    }

    /// Every row of `T`'s table, typed; rows that fail to decode are returned as errors.
    pub fn list_typed<T: Table>(&self) -> Vec<Result<T, crate::protocol::row::RowError>> {
        self.rows(T::TABLE)
            .iter()
            .map(|row| T::from_row(row))
            .collect()
    }

    /// Increases with every applied change; see [`Cache::changed_after`].
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Waits until the cache has applied a change after `version`.
    pub async fn changed_after(&self, version: u64) {
        let mut rx = self.version.subscribe();
        let _ = rx.wait_for(|v| *v > version).await;
    }

    fn publish(&self, events: Vec<Event>) {
        self.version.send_modify(|v| *v += 1);
        for event in events {
            // No receiver is fine: nobody subscribed.
            let _ = self.events.send(event);
        }
    }

    /// Applies one monitor message. Changes are applied and published in order;
    /// on error the cache holds the changes before the failing one and must be
    /// rebuilt by a full resync.
    pub(crate) fn apply(&self, batch: Batch) -> Result<(), Inconsistent> {
        let mut state = self.state.write();
        let mut events = Vec::with_capacity(batch.len());
        let mut touched = Vec::new();
        let rows = batch.len();
        let subscribed = self.events.receiver_count() > 0;
        let result = apply_changes(
            &mut state,
            batch,
            subscribed.then_some(&mut events),
            &mut touched,
        )
        .and_then(|()| check_unique(&state, &touched));
        self.metrics.update_applied(rows);
        self.publish(events);
        result
    }

    /// Replaces the whole content (a full resync, e.g. `found=false`): publishes
    /// deletes for rows that vanished, inserts for new rows and updates for
    /// changed ones, then swaps the tables in at once.
    pub(crate) fn replace(
        &self,
        schema: Arc<DatabaseSchema>,
        tables: &MonitorTables,
        batch: Batch,
    ) -> Result<(), Inconsistent> {
        let mut fresh = State {
            schema: schema.clone(),
            tables: self.empty_tables(&schema, tables),
        };
        let mut touched = Vec::new();
        apply_changes(&mut fresh, batch, None, &mut touched)?;
        check_unique(&fresh, &touched)?;
        let mut state = self.state.write();
        let mut events = Vec::new();
        for (name, old) in &state.tables {
            let new = fresh.tables.get(name);
            for (uuid, row) in &old.rows {
                match new.and_then(|t| t.rows.get(uuid)) {
                    None => events.push(Event::Delete {
                        table: old.name.clone(),
                        row: row.clone(),
                    }),
                    Some(new_row) if new_row != row => events.push(Event::Update {
                        table: old.name.clone(),
                        old: row.clone(),
                        new: new_row.clone(),
                    }),
                    Some(_) => {}
                }
            }
        }
        for (name, new) in &fresh.tables {
            let old = state.tables.get(name);
            for (uuid, row) in &new.rows {
                if old.is_none_or(|t| !t.rows.contains_key(uuid)) {
                    events.push(Event::Insert {
                        table: new.name.clone(),
                        row: row.clone(),
                    });
                }
            }
        }
        *state = fresh;
        self.publish(events);
        Ok(())
    }

    /// Announces that the monitor is (re)established.
    pub(crate) fn synced(&self, full: bool) {
        self.metrics.resynced(full);
        self.publish(vec![Event::Synced { full }]);
    }
}

/// Applies a batch in order. With `events`, every change is recorded for
/// subscribers; without (nobody subscribed), a modified row nobody else holds is
/// edited in place instead of copied, which matters for rows with large sets such
/// as a switch's `ports`.
fn apply_changes(
    state: &mut State,
    batch: Batch,
    mut events: Option<&mut Vec<Event>>,
    touched: &mut Vec<(Arc<str>, usize, Vec<Value>)>,
) -> Result<(), Inconsistent> {
    for (table_name, uuid, update) in batch {
        let Some(table) = state.tables.get_mut(&table_name) else {
            // A table we did not ask for (or that the schema lacks): nothing to keep.
            continue;
        };
        let name = table.name.clone();
        let event = match update {
            RowUpdate::Insert(mut row) => {
                // `_uuid` first: filling the defaults then sizes the row once.
                row.insert(UUID_COLUMN.name.clone(), Value::uuid(uuid));
                table.fill_defaults(&mut row);
                let row = Arc::new(row);
                match table.put(uuid, row.clone(), touched) {
                    None => Event::Insert { table: name, row },
                    Some(old) => Event::Update {
                        table: name,
                        old,
                        new: row,
                    },
                }
            }
            RowUpdate::Modify(diff) | RowUpdate::Replace(diff) if diff.is_empty() => {
                if !table.rows.contains_key(&uuid) {
                    return Err(missing(&table_name, uuid));
                }
                continue;
            }
            RowUpdate::Modify(diff) => {
                let schema = table.schema.clone();
                modify_row(table, uuid, events.is_some(), touched, |row| {
                    for (column, change) in diff.iter() {
                        match (row.get_mut(column), schema.column(column)) {
                            (Some(current), Some(col)) => {
                                current.apply_diff(change.clone(), &col.ty).map_err(|e| {
                                    Inconsistent(format!(
                                        "{table_name} {uuid} column {column}: {e}"
                                    ))
                                })?
                            }
                            _ => {
                                row.insert(column, change.clone());
                            }
                        }
                    }
                    Ok(())
                })?
            }
            RowUpdate::Replace(new_values) => {
                modify_row(table, uuid, events.is_some(), touched, |row| {
                    for (column, value) in new_values.iter() {
                        row.insert(column, value.clone());
                    }
                    Ok(())
                })?
            }
            RowUpdate::Delete => {
                let row = table.take(uuid).ok_or_else(|| missing(&table_name, uuid))?;
                Event::Delete { table: name, row }
            }
        };
        if let Some(events) = events.as_deref_mut() {
            events.push(event);
        }
    }
    Ok(())
}

/// Replaces row `uuid` by `edit` applied to it, keeping the indexes in step, and
/// returns the update event. With `keep_old` the old row survives for the event;
/// otherwise it is edited in place when no reader holds it. If `edit` fails the row
/// is left out of the table (the cache is about to be reloaded) and, with
/// `keep_old`, the error is returned after nothing else changed.
fn modify_row(
    table: &mut TableCache,
    uuid: Uuid,
    keep_old: bool,
    touched: &mut Vec<(Arc<str>, usize, Vec<Value>)>,
    edit: impl FnOnce(&mut Row) -> Result<(), Inconsistent>,
) -> Result<Event, Inconsistent> {
    let old = table.take(uuid).ok_or_else(|| missing(&table.name, uuid))?;
    let (mut row, old) = if keep_old {
        (Row::clone(&old), Some(old))
    } else {
        let row = Arc::try_unwrap(old).unwrap_or_else(|shared| Row::clone(&shared));
        (row, None)
    };
    if let Err(e) = edit(&mut row) {
        if let Some(old) = old {
            // Put the untouched row back so subscribers' view stays the cache's.
            table.put(uuid, old, touched);
        }
        return Err(e);
    }
    let row = Arc::new(row);
    table.put(uuid, row.clone(), touched);
    Ok(Event::Update {
        table: table.name.clone(),
        old: old.unwrap_or_else(|| row.clone()),
        new: row,
    })
}

fn missing(table: &str, uuid: Uuid) -> Inconsistent {
    Inconsistent(format!(
        "update for row {uuid} of {table}, which the cache does not hold"
    ))
}

/// After a whole batch, each touched key of a unique index must name one row
/// (within a batch a row may briefly share a key with one deleted later in it).
fn check_unique(
    state: &State,
    touched: &[(Arc<str>, usize, Vec<Value>)],
) -> Result<(), Inconsistent> {
    for (table, index, key) in touched {
        let Some(cache) = state.tables.get(&**table) else {
            continue;
        };
        let index = &cache.indexes[*index];
        if index.entries.get(key).is_some_and(|rows| rows.len() > 1) {
            let cols: Vec<String> = index.columns.iter().map(ToString::to_string).collect();
            return Err(Inconsistent(format!(
                "rows of {table} share one value of the unique index ({})",
                cols.join(", ")
            )));
        }
    }
    Ok(())
}

/// A consistent read view of the cache (see [`Cache::read`]).
pub struct CacheView<'a> {
    state: RwLockReadGuard<'a, State>,
}

impl CacheView<'_> {
    /// One row by uuid.
    pub fn get(&self, table: &str, uuid: Uuid) -> Option<Arc<Row>> {
        self.state.tables.get(table)?.rows.get(&uuid).cloned()
    }

    /// Every row of a table.
    pub fn rows(&self, table: &str) -> Vec<Arc<Row>> {
        self.state
            .tables
            .get(table)
            .map(|t| t.rows.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Iterates a table's rows without collecting them.
    pub fn iter(&self, table: &str) -> impl Iterator<Item = (&Uuid, &Arc<Row>)> {
        self.state
            .tables
            .get(table)
            .into_iter()
            .flat_map(|t| t.rows.iter())
    }

    /// Number of rows in a table.
    pub fn len(&self, table: &str) -> usize {
        self.state.tables.get(table).map_or(0, |t| t.rows.len())
    }

    /// Whether a table holds no rows (or is not monitored).
    pub fn is_empty(&self, table: &str) -> bool {
        self.len(table) == 0
    }

    /// Index lookup; see [`Cache::find`].
    pub fn find(&self, table: &str, columns: &[&str], key: &[Value]) -> Option<Vec<Arc<Row>>> {
        let columns: Vec<IndexColumn> = columns.iter().map(|c| IndexColumn::parse(c)).collect();
        self.state.tables.get(table)?.find(&columns, key)
    }

    /// The uuids of rows whose indexed columns equal `key`, without cloning rows.
    pub fn find_uuids(
        &self,
        table: &str,
        columns: &[&str],
        key: &[Value],
    ) -> Option<HashSet<Uuid>> {
        Some(
            self.find(table, columns, key)?
                .iter()
                .filter_map(|r| r.uuid())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::datum::Atom;

    fn schema() -> Arc<DatabaseSchema> {
        let text = include_str!("../../schemas/ovn-nb.ovsschema");
        Arc::new(DatabaseSchema::parse(text).unwrap())
    }

    fn tables(names: &[&str]) -> MonitorTables {
        names.iter().map(|t| ((*t).to_owned(), None)).collect()
    }

    fn cache(capacity: usize) -> Cache {
        Cache::new(
            schema(),
            &tables(&["Logical_Switch", "Logical_Switch_Port"]),
            vec![IndexSpec::new("Logical_Switch_Port", &["external_ids:pod"])],
            capacity,
            Arc::new(Metrics::default()),
        )
    }

    fn lsp(name: &str, pod: Option<&str>) -> Row {
        let table = schema();
        let mut row = Row::new().with("name", Atom::string(name));
        if let Some(pod) = pod {
            row.insert("external_ids", Value::map([("pod", pod)]));
        }
        row.fill_defaults(table.table("Logical_Switch_Port").unwrap());
        row.coerce(table.table("Logical_Switch_Port").unwrap())
            .unwrap()
    }

    fn u(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn insert(table: &str, n: u128, row: Row) -> (String, Uuid, RowUpdate) {
        (table.to_owned(), u(n), RowUpdate::Insert(row))
    }

    fn modify(n: u128, diff: Row) -> (String, Uuid, RowUpdate) {
        (
            "Logical_Switch_Port".to_owned(),
            u(n),
            RowUpdate::Modify(diff),
        )
    }

    fn delete(n: u128) -> (String, Uuid, RowUpdate) {
        ("Logical_Switch_Port".to_owned(), u(n), RowUpdate::Delete)
    }

    fn drain(stream: &mut EventStream) -> Vec<Event> {
        std::iter::from_fn(|| stream.try_recv()).collect()
    }

    #[test]
    fn insert_modify_delete_keep_indexes_and_publish_events() {
        let cache = cache(16);
        let mut events = cache.subscribe();
        cache
            .apply(vec![insert(
                "Logical_Switch_Port",
                1,
                lsp("p1", Some("ns/a")),
            )])
            .unwrap();
        let by_pod = |pod: &str| {
            cache
                .find(
                    "Logical_Switch_Port",
                    &["external_ids:pod"],
                    &[Value::from(Atom::string(pod))],
                )
                .unwrap()
        };
        assert_eq!(by_pod("ns/a").len(), 1);
        let by_name = cache
            .find(
                "Logical_Switch_Port",
                &["name"],
                &[Atom::string("p1").into()],
            )
            .unwrap();
        assert_eq!(by_name[0].uuid(), Some(u(1)));

        // A map diff that deletes `pod` (sent with its old value) and adds `owner`.
        let diff = Row::new().with(
            "external_ids",
            Value::map([("pod", "ns/a"), ("owner", "x")]),
        );
        cache.apply(vec![modify(1, diff)]).unwrap();
        assert!(
            by_pod("ns/a").is_empty(),
            "index follows the deleted map key"
        );
        let row = cache.get("Logical_Switch_Port", u(1)).unwrap();
        assert_eq!(row.get("external_ids"), Some(&Value::map([("owner", "x")])));

        cache.apply(vec![delete(1)]).unwrap();
        assert!(cache.get("Logical_Switch_Port", u(1)).is_none());
        assert!(
            cache
                .find(
                    "Logical_Switch_Port",
                    &["name"],
                    &[Atom::string("p1").into()]
                )
                .unwrap()
                .is_empty()
        );

        let kinds: Vec<&str> = drain(&mut events)
            .iter()
            .map(|e| match e {
                Event::Insert { .. } => "insert",
                Event::Update { .. } => "update",
                Event::Delete { .. } => "delete",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["insert", "update", "delete"]);
    }

    #[test]
    fn set_diff_is_a_symmetric_difference() {
        let cache = cache(16);
        let mut row = lsp("p1", None);
        row.insert("addresses", Value::set(["a", "b"]));
        cache
            .apply(vec![insert("Logical_Switch_Port", 1, row)])
            .unwrap();
        let diff = Row::new().with("addresses", Value::set(["b", "c"]));
        cache.apply(vec![modify(1, diff)]).unwrap();
        let row = cache.get("Logical_Switch_Port", u(1)).unwrap();
        assert_eq!(row.get("addresses"), Some(&Value::set(["a", "c"])));
    }

    #[test]
    fn a_held_row_never_changes_under_its_reader() {
        let cache = cache(16);
        cache
            .apply(vec![insert("Logical_Switch_Port", 1, lsp("p1", None))])
            .unwrap();
        let held = cache.get("Logical_Switch_Port", u(1)).unwrap();
        let diff = Row::new().with("name", Atom::string("p2"));
        cache.apply(vec![modify(1, diff)]).unwrap();
        assert_eq!(held.get("name"), Some(&Value::from(Atom::string("p1"))));
        let now = cache.get("Logical_Switch_Port", u(1)).unwrap();
        assert_eq!(now.get("name"), Some(&Value::from(Atom::string("p2"))));
    }

    #[test]
    fn modify_or_delete_of_an_unknown_row_is_inconsistent() {
        let cache = cache(16);
        let diff = Row::new().with("name", Atom::string("p2"));
        assert!(cache.apply(vec![modify(9, diff)]).is_err());
        assert!(cache.apply(vec![delete(9)]).is_err());
    }

    #[test]
    fn unique_index_allows_a_swap_within_one_batch_but_not_a_clash() {
        let cache = cache(16);
        cache
            .apply(vec![insert("Logical_Switch_Port", 1, lsp("p", None))])
            .unwrap();
        // Same name moves to a new row while the old one is deleted in the same batch.
        cache
            .apply(vec![
                insert("Logical_Switch_Port", 2, lsp("p", None)),
                delete(1),
            ])
            .unwrap();
        let err = cache
            .apply(vec![insert("Logical_Switch_Port", 3, lsp("p", None))])
            .unwrap_err();
        assert!(err.0.contains("unique index (name)"), "{err}");
    }

    #[test]
    fn in_place_modify_without_subscribers_keeps_indexes_and_uniqueness() {
        let cache = cache(16);
        cache
            .apply(vec![
                insert("Logical_Switch_Port", 1, lsp("a", Some("ns/a"))),
                insert("Logical_Switch_Port", 2, lsp("b", None)),
            ])
            .unwrap();
        let rename = Row::new()
            .with("name", Atom::string("c"))
            .with("external_ids", Value::map([("pod", "ns/a")]));
        cache.apply(vec![modify(1, rename)]).unwrap();
        let by_name = |n: &str| {
            cache
                .find("Logical_Switch_Port", &["name"], &[Atom::string(n).into()])
                .unwrap()
                .len()
        };
        assert_eq!((by_name("a"), by_name("c")), (0, 1));
        assert!(
            cache
                .find(
                    "Logical_Switch_Port",
                    &["external_ids:pod"],
                    &[Atom::string("ns/a").into()]
                )
                .unwrap()
                .is_empty()
        );
        let clash = Row::new().with("name", Atom::string("c"));
        let err = cache.apply(vec![modify(2, clash)]).unwrap_err();
        assert!(err.0.contains("unique index (name)"), "{err}");
    }

    #[test]
    fn replace_publishes_deletes_for_vanished_rows() {
        let cache = cache(16);
        cache
            .apply(vec![
                insert("Logical_Switch_Port", 1, lsp("stays", None)),
                insert("Logical_Switch_Port", 2, lsp("vanishes", None)),
                insert("Logical_Switch_Port", 3, lsp("changes", None)),
            ])
            .unwrap();
        let mut events = cache.subscribe();
        let tables = tables(&["Logical_Switch", "Logical_Switch_Port"]);
        cache
            .replace(
                schema(),
                &tables,
                vec![
                    insert("Logical_Switch_Port", 1, lsp("stays", None)),
                    insert("Logical_Switch_Port", 3, lsp("changed", None)),
                    insert("Logical_Switch_Port", 4, lsp("new", None)),
                ],
            )
            .unwrap();
        let mut seen: Vec<(String, Uuid)> = drain(&mut events)
            .iter()
            .map(|e| match e {
                Event::Insert { row, .. } => ("insert".into(), row.uuid().unwrap()),
                Event::Update { new, .. } => ("update".into(), new.uuid().unwrap()),
                Event::Delete { row, .. } => ("delete".into(), row.uuid().unwrap()),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("delete".into(), u(2)),
                ("insert".into(), u(4)),
                ("update".into(), u(3))
            ]
        );
        assert_eq!(cache.read().len("Logical_Switch_Port"), 3);
        assert!(
            cache
                .find(
                    "Logical_Switch_Port",
                    &["name"],
                    &[Atom::string("vanishes").into()]
                )
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_lagging_subscriber_is_told_not_skipped() {
        let cache = cache(4);
        let mut events = cache.subscribe();
        for n in 0..10 {
            cache
                .apply(vec![insert(
                    "Logical_Switch_Port",
                    n,
                    lsp(&format!("p{n}"), None),
                )])
                .unwrap();
        }
        let first = events.try_recv().unwrap();
        assert!(matches!(first, Event::Lagged { missed: 6 }), "{first:?}");
        assert_eq!(drain(&mut events).len(), 4);
        assert_eq!(cache.metrics.snapshot().lagged_events, 6);
    }

    #[test]
    fn a_view_never_shows_a_row_whose_event_is_not_queued_yet() {
        const ROWS: u128 = 1_000;
        let cache = Arc::new(cache(2 * ROWS as usize));
        let mut events = cache.subscribe();
        let writer = std::thread::spawn({
            let cache = cache.clone();
            move || {
                for n in 0..ROWS {
                    let row = lsp(&format!("p{n}"), None);
                    cache
                        .apply(vec![insert("Logical_Switch_Port", n, row)])
                        .unwrap();
                }
            }
        });
        let mut seen = 0;
        while seen < ROWS as usize {
            let view = cache.read();
            let shown = view.len("Logical_Switch_Port");
            seen += drain(&mut events).len();
            assert!(
                seen >= shown,
                "the view shows {shown} rows, events told of {seen}"
            );
        }
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn changed_after_wakes_on_the_next_change_only() {
        let cache = Arc::new(cache(4));
        let version = cache.version();
        let waiter = tokio::spawn({
            let cache = cache.clone();
            async move { cache.changed_after(version).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        cache
            .apply(vec![insert("Logical_Switch_Port", 1, lsp("p", None))])
            .unwrap();
        waiter.await.unwrap();
        assert_eq!(cache.version(), version + 1);
        // Already past: returns at once.
        cache.changed_after(version).await;
    }

    #[test]
    fn lookup_key_is_canonicalised_for_optional_columns() {
        let cache = Cache::new(
            schema(),
            &tables(&["Logical_Switch_Port"]),
            vec![IndexSpec::new("Logical_Switch_Port", &["tag_request"])],
            4,
            Arc::new(Metrics::default()),
        );
        let mut row = lsp("p", None);
        row.insert("tag_request", Value::set([Atom::from(7i64)]));
        cache
            .apply(vec![insert("Logical_Switch_Port", 1, row)])
            .unwrap();
        let hits = cache
            .find(
                "Logical_Switch_Port",
                &["tag_request"],
                &[Atom::from(7i64).into()],
            )
            .unwrap();
        assert_eq!(hits.len(), 1);
        assert!(
            cache
                .find("Logical_Switch_Port", &["type"], &[Atom::string("").into()])
                .is_none()
        );
    }
}
