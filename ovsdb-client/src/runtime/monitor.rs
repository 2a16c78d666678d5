//! Monitor requests and the decoding of their replies and notifications.
//!
//! The client asks for `monitor_cond_since` and steps down to `monitor_cond`, then
//! plain `monitor`, when the server answers `unknown method`. With
//! `monitor_cond_since` it resumes from the last transaction id it applied (taken
//! from the reply and from every `update3`): `found=true` means the reply is only
//! the delta since then, `found=false` means it is the whole database, which
//! replaces the cache. Updates that arrive before the monitor reply has been
//! applied are buffered and replayed after it, in order.
//!
//! `update2`/`update3` notifications and `monitor_cond`/`monitor_cond_since`
//! replies are decoded straight from the JSON text into typed rows, with each
//! column's schema type, without an intermediate JSON tree.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Value as Json, json};

use crate::protocol::datum::Uuid;
use crate::protocol::jsonrpc::RawNotification;
use crate::protocol::operation::Condition;
use crate::protocol::row::{Row, RowSeed, object_seed};
use crate::protocol::schema::{DatabaseSchema, TableSchema};
use crate::runtime::cache::{Batch, Cache, Inconsistent, MonitorTables, RowUpdate};

/// The monitor flavours, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MonitorMethod {
    /// `monitor_cond_since` (OVS 2.12+): resumable, `update3` notifications.
    CondSince,
    /// `monitor_cond` (OVS 2.6+): `update2` notifications with diffs.
    Cond,
    /// RFC 7047 `monitor`: `update` notifications with old/new rows.
    Plain,
}

impl MonitorMethod {
    /// The JSON-RPC method name.
    pub fn name(self) -> &'static str {
        match self {
            MonitorMethod::CondSince => "monitor_cond_since",
            MonitorMethod::Cond => "monitor_cond",
            MonitorMethod::Plain => "monitor",
        }
    }

    /// The next older method to try after `unknown method`.
    pub fn fallback(self) -> Option<Self> {
        match self {
            MonitorMethod::CondSince => Some(MonitorMethod::Cond),
            MonitorMethod::Cond => Some(MonitorMethod::Plain),
            MonitorMethod::Plain => None,
        }
    }
}

/// The `params` of a monitor request.
pub(crate) fn request_params(
    method: MonitorMethod,
    db: &str,
    monitor_id: &str,
    tables: &MonitorTables,
    conditions: &BTreeMap<String, Vec<Condition>>,
    last_txn_id: Option<Uuid>,
) -> Json {
    let requests: serde_json::Map<String, Json> = tables
        .iter()
        .map(|(table, columns)| {
            let mut request = serde_json::Map::new();
            if let Some(columns) = columns {
                request.insert("columns".into(), json!(columns));
            }
            if let Some(conditions) = conditions.get(table)
                && method != MonitorMethod::Plain
            {
                request.insert("where".into(), json!(conditions));
            }
            (table.clone(), Json::Array(vec![Json::Object(request)]))
        })
        .collect();
    let mut params = vec![json!(db), json!(monitor_id), Json::Object(requests)];
    if method == MonitorMethod::CondSince {
        params.push(json!(last_txn_id.unwrap_or(Uuid::nil()).to_string()));
    }
    Json::Array(params)
}

/// A decoded monitor reply.
#[derive(Debug)]
pub(crate) struct InitialState {
    /// Whether the server found our last transaction id (the batch is a delta).
    pub found: bool,
    /// The server's last transaction id, when it reports one.
    pub last_txn_id: Option<Uuid>,
    /// The rows or changes.
    pub batch: Batch,
}

/// Why a monitor message cannot be used.
pub(crate) fn bad(what: impl Into<String>) -> Inconsistent {
    Inconsistent(what.into())
}

/// Decodes the reply to a monitor request.
pub(crate) fn decode_reply(
    method: MonitorMethod,
    schema: &DatabaseSchema,
    reply: &RawValue,
) -> Result<InitialState, Inconsistent> {
    match method {
        MonitorMethod::CondSince => {
            let (found, last_txn_id, updates): (bool, Cow<'_, str>, &RawValue) =
                serde_json::from_str(reply.get()).map_err(|e| {
                    bad(format!(
                        "monitor_cond_since reply is not [found, last-txn-id, updates]: {e}"
                    ))
                })?;
            Ok(InitialState {
                found,
                last_txn_id: txn_id(&last_txn_id)?,
                batch: decode_updates2(schema, updates)?,
            })
        }
        MonitorMethod::Cond => Ok(InitialState {
            found: false,
            last_txn_id: None,
            batch: decode_updates2(schema, reply)?,
        }),
        MonitorMethod::Plain => Ok(InitialState {
            found: false,
            last_txn_id: None,
            batch: decode_updates(schema, &parse(reply)?)?,
        }),
    }
}

fn parse(raw: &RawValue) -> Result<Json, Inconsistent> {
    serde_json::from_str(raw.get()).map_err(|e| bad(e.to_string()))
}

fn txn_id(text: &str) -> Result<Option<Uuid>, Inconsistent> {
    let id =
        Uuid::parse_str(text).map_err(|e| bad(format!("last transaction id {text:?}: {e}")))?;
    Ok((!id.is_nil()).then_some(id))
}

/// A decoded update notification for our monitor.
#[derive(Debug)]
pub(crate) struct Update {
    /// From `update3`: the transaction id after this update.
    pub last_txn_id: Option<Uuid>,
    /// The changes.
    pub batch: Batch,
}

/// What a notification means for a monitor with id `monitor_id`.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// Row changes for this monitor.
    Update(Update),
    /// The server cancelled this monitor (database removed or converted).
    Canceled,
    /// A notification for something else (another monitor, a lock).
    NotOurs,
}

/// The id of the monitor a notification is for: its first parameter. Our monitor
/// ids are plain strings, so this reads only the start of the parameters, not the
/// updates after it; a notification whose rest is malformed fails when decoded.
pub(crate) fn monitor_id_of<'a>(notification: &RawNotification<'a>) -> Option<&'a str> {
    let json_whitespace = [' ', '\t', '\n', '\r'];
    let rest = notification
        .params
        .get()
        .trim_start_matches(json_whitespace)
        .strip_prefix('[')?
        .trim_start_matches(json_whitespace)
        .strip_prefix('"')?;
    let end = rest.find(['"', '\\'])?;
    rest[end..].starts_with('"').then(|| &rest[..end])
}

/// Decodes `update`, `update2`, `update3` and `monitor_canceled` notifications
/// for any of the monitors `monitor_ids`.
pub(crate) fn decode_notification(
    schema: &DatabaseSchema,
    monitor_ids: &[&str],
    notification: &RawNotification<'_>,
) -> Result<Decoded, Inconsistent> {
    if !monitor_id_of(notification).is_some_and(|id| monitor_ids.contains(&id)) {
        return Ok(Decoded::NotOurs);
    }
    let method = &*notification.method;
    let malformed = |e: serde_json::Error| bad(format!("malformed {method} notification: {e}"));
    let params = notification.params.get();
    match method {
        "update" => {
            let (_, updates): (IgnoredAny, Json) =
                serde_json::from_str(params).map_err(malformed)?;
            Ok(Decoded::Update(Update {
                last_txn_id: None,
                batch: decode_updates(schema, &updates)?,
            }))
        }
        "update2" | "update3" => {
            let mut update = Update {
                last_txn_id: None,
                batch: Vec::new(),
            };
            UpdateParams {
                schema,
                update: &mut update,
                with_txn_id: method == "update3",
            }
            .deserialize(&mut serde_json::Deserializer::from_str(params))
            .map_err(malformed)?;
            Ok(Decoded::Update(update))
        }
        "monitor_canceled" => Ok(Decoded::Canceled),
        _ => Ok(Decoded::NotOurs),
    }
}

/// Decodes `<table-updates2>` (`initial`/`insert`/`modify`/`delete`) straight from
/// its JSON text.
pub(crate) fn decode_updates2(
    schema: &DatabaseSchema,
    updates: &RawValue,
) -> Result<Batch, Inconsistent> {
    let mut batch = Vec::new();
    let mut de = serde_json::Deserializer::from_str(updates.get());
    TableUpdates2 {
        schema,
        batch: &mut batch,
    }
    .deserialize(&mut de)
    .map_err(|e| bad(e.to_string()))?;
    Ok(batch)
}

/// Differential check for the fuzzer: the monitor id read from the start of a
/// notification's parameters is the first parameter of the whole array when that is
/// a string without escapes, and decoding the notification as `update`, `update2`
/// and `update3` must not panic.
#[cfg(fuzzing)]
pub fn fuzz_notification(schema: &DatabaseSchema, text: &str) {
    let Ok(params) = serde_json::from_str::<&RawValue>(text) else {
        return;
    };
    for method in ["update", "update2", "update3", "monitor_canceled"] {
        let notification = RawNotification {
            method: method.into(),
            params,
        };
        let id = monitor_id_of(&notification);
        if let Ok(Json::Array(items)) = serde_json::from_str::<Json>(text) {
            let first = items.first().and_then(Json::as_str);
            let plain = serde_json::from_str::<Vec<&RawValue>>(text)
                .ok()
                .and_then(|raw| raw.first().map(|v| !v.get().contains('\\')));
            let expected = first.filter(|_| plain == Some(true));
            assert_eq!(id, expected, "{text}");
        }
        let _ = decode_notification(schema, &[id.unwrap_or("m")], &notification);
    }
}

/// Differential check for the fuzzer: `<table-updates2>` decoded straight from
/// text must not panic, and every whole row must equal the same row decoded
/// through a JSON tree by [`Row::from_json_typed`].
#[cfg(fuzzing)]
pub fn fuzz_updates2(schema: &DatabaseSchema, text: &str) {
    let Ok(raw) = serde_json::from_str::<&RawValue>(text) else {
        return;
    };
    let Ok(batch) = decode_updates2(schema, raw) else {
        return;
    };
    let tree: Json = serde_json::from_str(text).expect("decoded text is JSON");
    let tables = tree.as_object().expect("decoded updates are an object");
    let entries = tables
        .values()
        .filter_map(Json::as_object)
        .map(|rows| rows.len());
    if entries.sum::<usize>() != batch.len() {
        return; // duplicate keys, which the tree collapses
    }
    for (table, uuid, change) in batch {
        let RowUpdate::Insert(row) = change else {
            continue;
        };
        let rows = tables[&table].as_object().expect("rows are an object");
        let mut same_uuid = rows
            .iter()
            .filter(|(key, _)| Uuid::parse_str(key).ok() == Some(uuid));
        let (Some((_, update)), None) = (same_uuid.next(), same_uuid.next()) else {
            continue;
        };
        let json = update.get("insert").or_else(|| update.get("initial"));
        let json = json.expect("an insert comes from insert or initial");
        assert_eq!(decode_row(schema, &table, json).as_ref(), Ok(&row));
    }
}

object_seed!(TableUpdates2 => (), TableRows => (), RowUpdate2 => RowUpdate);

/// `{table: {uuid: row-update2}}`, appended to a batch.
/// The parameters of `update2` (`[<id>, <table-updates2>]`) or `update3`
/// (`[<id>, <last-txn-id>, <table-updates2>]`), decoded in one pass over the text.
struct UpdateParams<'s> {
    schema: &'s DatabaseSchema,
    update: &'s mut Update,
    with_txn_id: bool,
}

impl<'de> Visitor<'de> for UpdateParams<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the parameters of an update2 or update3 notification")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let missing = |what: &str| de::Error::custom(format!("no {what}"));
        seq.next_element::<IgnoredAny>()?
            .ok_or_else(|| missing("monitor id"))?;
        if self.with_txn_id {
            let id: Cow<'de, str> = seq
                .next_element()?
                .ok_or_else(|| missing("last transaction id"))?;
            self.update.last_txn_id = txn_id(&id).map_err(de::Error::custom)?;
        }
        let updates = TableUpdates2 {
            schema: self.schema,
            batch: &mut self.update.batch,
        };
        seq.next_element_seed(updates)?
            .ok_or_else(|| missing("table updates"))?;
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for UpdateParams<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

struct TableUpdates2<'s> {
    schema: &'s DatabaseSchema,
    batch: &'s mut Batch,
}

impl<'de> Visitor<'de> for TableUpdates2<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("table updates: an object of tables")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(table) = map.next_key::<Cow<'de, str>>()? {
            map.next_value_seed(TableRows {
                table: &table,
                schema: self.schema.table(&table),
                batch: self.batch,
            })?;
        }
        Ok(())
    }
}

/// `{uuid: row-update2}` of one table.
struct TableRows<'s> {
    table: &'s str,
    schema: Option<&'s TableSchema>,
    batch: &'s mut Batch,
}

impl<'de> Visitor<'de> for TableRows<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "updates of {}: an object of rows", self.table)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(uuid) = map.next_key::<Cow<'de, str>>()? {
            let uuid = Uuid::parse_str(&uuid).map_err(|e| {
                de::Error::custom(format!("row uuid {uuid:?} in {}: {e}", self.table))
            })?;
            let change = map.next_value_seed(RowUpdate2 {
                table: self.table,
                schema: self.schema,
                uuid,
            })?;
            self.batch.push((self.table.to_owned(), uuid, change));
        }
        Ok(())
    }
}

/// One `{"initial"|"insert"|"modify"|"delete": …}`.
struct RowUpdate2<'s> {
    table: &'s str,
    schema: Option<&'s TableSchema>,
    uuid: Uuid,
}

impl<'de> Visitor<'de> for RowUpdate2<'_> {
    type Value = RowUpdate;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a one-member row update for {} {}",
            self.table, self.uuid
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RowUpdate, A::Error> {
        let unknown = || {
            de::Error::custom(format!(
                "unknown row update for {} {}",
                self.table, self.uuid
            ))
        };
        let kind = map.next_key::<Cow<'de, str>>()?.ok_or_else(unknown)?;
        let change = match &*kind {
            "initial" | "insert" => {
                RowUpdate::Insert(map.next_value_seed(RowSeed::whole(self.table, self.schema))?)
            }
            "modify" => {
                RowUpdate::Modify(map.next_value_seed(RowSeed::diff(self.table, self.schema))?)
            }
            "delete" => {
                map.next_value::<IgnoredAny>()?;
                RowUpdate::Delete
            }
            _ => return Err(unknown()),
        };
        if map.next_key::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!(
                "row update for {} {} is not a one-member object",
                self.table, self.uuid
            )));
        }
        Ok(change)
    }
}

/// Every `(table, uuid, row-update)` of an RFC 7047 `<table-updates>` object, in order.
fn each_row(updates: &Json) -> Result<Vec<(&str, Uuid, &Json)>, Inconsistent> {
    let tables = updates
        .as_object()
        .ok_or_else(|| bad("table updates are not an object"))?;
    let mut out = Vec::new();
    for (table, rows) in tables {
        let rows = rows
            .as_object()
            .ok_or_else(|| bad(format!("updates of {table} are not an object")))?;
        for (uuid, update) in rows {
            let uuid = Uuid::parse_str(uuid)
                .map_err(|e| bad(format!("row uuid {uuid:?} in {table}: {e}")))?;
            out.push((table.as_str(), uuid, update));
        }
    }
    Ok(out)
}

/// Decodes a row with its table's column types (untyped for a table the schema lacks).
/// Omitted default values are filled in by the cache, which knows the monitored columns.
fn decode_row(schema: &DatabaseSchema, table: &str, json: &Json) -> Result<Row, Inconsistent> {
    match schema.table(table) {
        Some(ts) => Row::from_json_typed(json, ts).map_err(|e| bad(e.to_string())),
        None => Row::from_json(json).map_err(|e| bad(e.to_string())),
    }
}

/// Decodes RFC 7047 `<table-updates>` (`old`/`new` pairs).
pub(crate) fn decode_updates(
    schema: &DatabaseSchema,
    updates: &Json,
) -> Result<Batch, Inconsistent> {
    let mut batch = Vec::new();
    for (table, uuid, update) in each_row(updates)? {
        let old = update.get("old");
        let change = match update.get("new") {
            Some(new) if old.is_none() => RowUpdate::Insert(decode_row(schema, table, new)?),
            Some(new) => {
                // `new` may carry every column; `old` names the ones that changed.
                let new = decode_row(schema, table, new)?;
                let changed: Vec<&str> = old
                    .and_then(Json::as_object)
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let mut replace = Row::new();
                for column in changed {
                    let value = match new.get(column) {
                        Some(v) => v.clone(),
                        None => schema
                            .table(table)
                            .and_then(|t| t.column(column))
                            .map(|c| c.ty.default_value())
                            .ok_or_else(|| {
                                bad(format!("{table} column {column} missing from new row"))
                            })?,
                    };
                    replace.insert(column, value);
                }
                RowUpdate::Replace(replace)
            }
            None => RowUpdate::Delete,
        };
        batch.push((table.to_owned(), uuid, change));
    }
    Ok(batch)
}

/// Per-connection monitor progress, guarded together with cache application so
/// that buffered updates and the initial state are applied in server order.
#[derive(Debug, Default)]
pub(crate) struct MonitorState {
    /// The connection whose updates are accepted; older connections are ignored.
    pub generation: u64,
    /// Whether the monitor reply has been applied on this connection.
    pub established: bool,
    /// Updates that arrived before the reply was applied.
    pub buffered: Vec<Update>,
    /// The last transaction id applied, for `monitor_cond_since` resume.
    pub last_txn_id: Option<Uuid>,
}

impl MonitorState {
    /// Applies or buffers an update for connection `generation`.
    pub fn on_update(
        &mut self,
        generation: u64,
        update: Update,
        cache: &Cache,
    ) -> Result<(), Inconsistent> {
        if generation != self.generation {
            return Ok(());
        }
        if !self.established {
            self.buffered.push(update);
            return Ok(());
        }
        self.apply(update, cache)
    }

    fn apply(&mut self, update: Update, cache: &Cache) -> Result<(), Inconsistent> {
        if let Err(e) = cache.apply(update.batch) {
            self.last_txn_id = None;
            return Err(e);
        }
        if update.last_txn_id.is_some() {
            self.last_txn_id = update.last_txn_id;
        }
        Ok(())
    }

    /// Applies the monitor reply (replacing the cache unless it is a found delta),
    /// then the buffered updates. Returns whether this was a full reload.
    pub fn establish(
        &mut self,
        initial: InitialState,
        schema: Arc<DatabaseSchema>,
        tables: &MonitorTables,
        cache: &Cache,
    ) -> Result<bool, Inconsistent> {
        let full = !initial.found;
        let applied = if full {
            cache.replace(schema, tables, initial.batch)
        } else {
            cache.apply(initial.batch)
        };
        if let Err(e) = applied {
            self.last_txn_id = None;
            return Err(e);
        }
        self.last_txn_id = initial.last_txn_id;
        for update in std::mem::take(&mut self.buffered) {
            self.apply(update, cache)?;
        }
        self.established = true;
        cache.synced(full);
        Ok(full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::datum::{Atom, Value};
    use crate::runtime::cache::{Event, IndexSpec};
    use crate::runtime::metrics::Metrics;

    fn schema() -> Arc<DatabaseSchema> {
        Arc::new(DatabaseSchema::parse(include_str!("../../schemas/ovn-nb.ovsschema")).unwrap())
    }

    fn tables() -> MonitorTables {
        ["Logical_Switch", "Logical_Switch_Port"]
            .iter()
            .map(|t| ((*t).to_owned(), None))
            .collect()
    }

    fn cache() -> Cache {
        Cache::new(
            schema(),
            &tables(),
            vec![IndexSpec::new("Logical_Switch_Port", &["external_ids:pod"])],
            64,
            Arc::new(Metrics::default()),
        )
    }

    const LS: &str = "dfe6395f-7d6e-49bc-8ece-07bfb747323a";
    const LSP: &str = "2d25bea0-c336-47f9-b995-c480b3f42f55";

    fn uuid(s: &str) -> Uuid {
        Uuid::parse_str(s).unwrap()
    }

    fn establish(state: &mut MonitorState, cache: &Cache, reply: Json) -> bool {
        let initial = decode_reply(MonitorMethod::CondSince, &schema(), &raw(&reply)).unwrap();
        state
            .establish(initial, schema(), &tables(), cache)
            .unwrap()
    }

    /// The last transaction id of the initial loads below.
    const TXN: &str = "4953213a-a174-4d2f-96cf-ae35ce618cdf";

    /// A cache and monitor loaded from scratch with the `initial` rows (by table) at [`TXN`].
    fn loaded(initial: Json) -> (Cache, MonitorState) {
        let cache = cache();
        let mut state = MonitorState::default();
        establish(&mut state, &cache, json!([false, TXN, initial]));
        (cache, state)
    }

    /// An owned notification, as the connection would lend it to the handler.
    struct TestNotification {
        method: String,
        params: Box<RawValue>,
    }

    impl TestNotification {
        fn raw(&self) -> RawNotification<'_> {
            RawNotification {
                method: Cow::Borrowed(&self.method),
                params: &self.params,
            }
        }
    }

    fn raw(json: &Json) -> Box<RawValue> {
        serde_json::value::to_raw_value(json).unwrap()
    }

    fn notification(method: &str, params: Json) -> TestNotification {
        TestNotification {
            method: method.into(),
            params: raw(&params),
        }
    }

    fn update(state: &mut MonitorState, cache: &Cache, n: TestNotification) {
        let Decoded::Update(u) = decode_notification(&schema(), &["mon"], &n.raw()).unwrap() else {
            panic!("not an update")
        };
        let generation = state.generation;
        state.on_update(generation, u, cache).unwrap();
    }

    #[test]
    fn request_params_per_method() {
        let mut t = MonitorTables::new();
        t.insert("Logical_Switch".into(), Some(vec!["name".into()]));
        t.insert("NB_Global".into(), None);
        let conditions = BTreeMap::new();
        let params = |method, db, id| request_params(method, db, "m", &t, &conditions, id);
        let since = params(MonitorMethod::CondSince, "OVN_Northbound", None);
        assert_eq!(
            since,
            json!(["OVN_Northbound", "m",
                {"Logical_Switch": [{"columns": ["name"]}], "NB_Global": [{}]},
                "00000000-0000-0000-0000-000000000000"])
        );
        let id = uuid(LS);
        let since = params(MonitorMethod::CondSince, "db", Some(id));
        assert_eq!(since[3], json!(LS));
        let plain = params(MonitorMethod::Plain, "db", Some(id));
        assert_eq!(plain.as_array().unwrap().len(), 3);
    }

    #[test]
    fn captured_update3_applies_ports_mutation_and_tracks_txn_id() {
        let cache = cache();
        let mut state = MonitorState::default();
        let full = establish(
            &mut state,
            &cache,
            json!([false, TXN,
                {"Logical_Switch": {LS: {"initial": {"name": "ls-cl"}}}}]),
        );
        assert!(full);
        assert_eq!(state.last_txn_id, Some(uuid(TXN)));
        let ls = cache.get("Logical_Switch", uuid(LS)).unwrap();
        assert_eq!(
            ls.get("ports"),
            Some(&Value::empty_set()),
            "defaults are filled"
        );

        update(
            &mut state,
            &cache,
            notification(
                "update3",
                json!(["mon", "1b613307-5e27-4117-8e6c-53e94a9dc8dc", {
                    "Logical_Switch": {LS: {"modify": {"ports": ["uuid", LSP]}}},
                    "Logical_Switch_Port": {LSP: {"insert": {"name": "vm2-eth0",
                        "addresses": "0a:00:00:00:00:07 10.0.0.7"}}}}]),
            ),
        );
        assert_eq!(
            state.last_txn_id,
            Some(uuid("1b613307-5e27-4117-8e6c-53e94a9dc8dc"))
        );
        let ls = cache.get("Logical_Switch", uuid(LS)).unwrap();
        assert_eq!(ls.get("ports"), Some(&Value::set([Atom::Uuid(uuid(LSP))])));
        let lsp = cache.get("Logical_Switch_Port", uuid(LSP)).unwrap();
        assert_eq!(
            lsp.get("addresses"),
            Some(&Value::set(["0a:00:00:00:00:07 10.0.0.7"])),
            "one-element set arrives as a bare atom"
        );
    }

    #[test]
    fn captured_map_diffs_add_then_delete_a_key() {
        let (cache, mut state) =
            loaded(json!({"Logical_Switch_Port": {LSP: {"initial": {"name": "p"}}}}));
        let modify = |options: Json| {
            notification(
                "update2",
                json!(["mon", {"Logical_Switch_Port": {LSP: {"modify": {"options": options}}}}]),
            )
        };
        update(
            &mut state,
            &cache,
            modify(json!([
                "map",
                [
                    ["activation-strategy", "rarp"],
                    ["requested-chassis", "node-a,node-b"]
                ]
            ])),
        );
        update(
            &mut state,
            &cache,
            modify(json!(["map", [["activation-strategy", "rarp"]]])),
        );
        let row = cache.get("Logical_Switch_Port", uuid(LSP)).unwrap();
        assert_eq!(
            row.get("options"),
            Some(&Value::map([("requested-chassis", "node-a,node-b")]))
        );
        // A key present with another value is replaced.
        update(
            &mut state,
            &cache,
            modify(json!(["map", [["requested-chassis", "node-b"]]])),
        );
        let row = cache.get("Logical_Switch_Port", uuid(LSP)).unwrap();
        assert_eq!(
            row.get("options"),
            Some(&Value::map([("requested-chassis", "node-b")]))
        );
    }

    #[test]
    fn updates_before_the_reply_are_buffered_then_replayed_in_order() {
        let cache = cache();
        let mut state = MonitorState::default();
        let early = notification(
            "update3",
            json!(["mon", "11111111-1111-1111-1111-111111111111",
                {"Logical_Switch": {LS: {"modify": {"name": "renamed"}}}}]),
        );
        update(&mut state, &cache, early);
        assert!(
            cache.get("Logical_Switch", uuid(LS)).is_none(),
            "not applied before the reply"
        );
        establish(
            &mut state,
            &cache,
            json!([false, TXN,
                {"Logical_Switch": {LS: {"initial": {"name": "ls"}}}}]),
        );
        let ls = cache.get("Logical_Switch", uuid(LS)).unwrap();
        assert_eq!(ls.get("name"), Some(&Value::from(Atom::string("renamed"))));
        assert_eq!(
            state.last_txn_id,
            Some(uuid("11111111-1111-1111-1111-111111111111"))
        );
    }

    #[test]
    fn stale_connection_updates_are_ignored() {
        let cache = cache();
        let mut state = MonitorState {
            generation: 2,
            ..MonitorState::default()
        };
        establish(&mut state, &cache, json!([false, TXN, {}]));
        let n = notification(
            "update2",
            json!(["mon", {"Logical_Switch": {LS: {"insert": {"name": "x"}}}}]),
        );
        let Decoded::Update(u) = decode_notification(&schema(), &["mon"], &n.raw()).unwrap() else {
            panic!()
        };
        state.on_update(1, u, &cache).unwrap();
        assert!(cache.get("Logical_Switch", uuid(LS)).is_none());
    }

    #[test]
    fn resume_found_true_applies_a_delta_and_keeps_rows() {
        let (cache, state) = loaded(json!({"Logical_Switch": {LS: {"initial": {"name": "kept"}}}}));
        let mut events = cache.subscribe();
        let mut state = MonitorState {
            generation: 1,
            last_txn_id: state.last_txn_id,
            ..MonitorState::default()
        };
        let other = "ca32aaaa-0000-0000-0000-000000000000";
        let full = establish(
            &mut state,
            &cache,
            json!([true, "48236a53-0000-0000-0000-000000000000",
                {"Logical_Switch": {other: {"insert": {"name": "after-X"}}}}]),
        );
        assert!(!full);
        assert!(cache.get("Logical_Switch", uuid(LS)).is_some());
        assert!(cache.get("Logical_Switch", uuid(other)).is_some());
        let first = events.try_recv().unwrap();
        assert!(matches!(first, Event::Insert { .. }), "{first:?}");
        assert!(matches!(
            events.try_recv().unwrap(),
            Event::Synced { full: false }
        ));
    }

    #[test]
    fn resume_found_false_replaces_and_deletes_vanished_rows() {
        let (cache, mut state) =
            loaded(json!({"Logical_Switch": {LS: {"initial": {"name": "gone"}}}}));
        let mut events = cache.subscribe();
        let full = establish(
            &mut state,
            &cache,
            json!([false, "00000000-0000-0000-0000-000000000000", {}]),
        );
        assert!(full);
        assert_eq!(state.last_txn_id, None, "nil id means no resume point");
        assert!(cache.get("Logical_Switch", uuid(LS)).is_none());
        assert!(matches!(events.try_recv().unwrap(), Event::Delete { .. }));
        assert!(matches!(
            events.try_recv().unwrap(),
            Event::Synced { full: true }
        ));
    }

    #[test]
    fn rfc_update_old_new_pairs() {
        let cache = cache();
        let mut state = MonitorState::default();
        let initial = decode_reply(
            MonitorMethod::Plain,
            &schema(),
            &raw(
                &json!({"Logical_Switch": {LS: {"new": {"name": "ls-cl", "ports": ["set", []]}}}}),
            ),
        )
        .unwrap();
        state
            .establish(initial, schema(), &tables(), &cache)
            .unwrap();
        update(
            &mut state,
            &cache,
            notification(
                "update",
                json!(["mon", {"Logical_Switch": {LS: {"new": {"name": "ls-cl-renamed", "ports": ["set", []]}, "old": {"name": "ls-cl"}}}}]),
            ),
        );
        let ls = cache.get("Logical_Switch", uuid(LS)).unwrap();
        assert_eq!(
            ls.get("name"),
            Some(&Value::from(Atom::string("ls-cl-renamed")))
        );
        update(
            &mut state,
            &cache,
            notification(
                "update",
                json!(["mon", {"Logical_Switch": {LS: {"old": {"name": "x"}}}}]),
            ),
        );
        assert!(cache.get("Logical_Switch", uuid(LS)).is_none());
    }

    #[test]
    fn other_monitors_and_cancellation() {
        let n = notification("update2", json!(["other", {}]));
        assert!(matches!(
            decode_notification(&schema(), &["mon"], &n.raw()).unwrap(),
            Decoded::NotOurs
        ));
        let n = notification("monitor_canceled", json!(["mon"]));
        assert!(matches!(
            decode_notification(&schema(), &["mon"], &n.raw()).unwrap(),
            Decoded::Canceled
        ));
        let n = notification("locked", json!(["lock"]));
        assert!(matches!(
            decode_notification(&schema(), &["mon"], &n.raw()).unwrap(),
            Decoded::NotOurs
        ));
    }

    #[test]
    fn malformed_updates_are_errors() {
        for bad in [
            json!(["mon", "not-a-uuid", {}]),
            json!(["mon", TXN, {"Logical_Switch": {"zz": {"insert": {}}}}]),
            json!(["mon", TXN, {"Logical_Switch": {LS: {"upsert": {}}}}]),
            json!(["mon", TXN, {"Logical_Switch": {LS: {"insert": {"name": 7}}}}]),
            json!(["mon", TXN, []]),
        ] {
            let n = notification("update3", bad.clone());
            assert!(
                decode_notification(&schema(), &["mon"], &n.raw()).is_err(),
                "{bad}"
            );
        }
    }
}
