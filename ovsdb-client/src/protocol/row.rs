//! Rows: column name → [`Value`], as a small vector sorted by name.
//!
//! Column names are `Arc<str>`, so rows decoded with a schema share their keys with
//! it; rows are meant to be held as `Arc<Row>` by caches and handed out without
//! copying.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::protocol::datum::{DatumError, Uuid, Value};
use crate::protocol::schema::{ColumnSchema, TableSchema};

/// A row that does not fit its table: not an object, a missing column, or a
/// column whose value has the wrong type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// The JSON row is not an object.
    #[error("table {table}: a row must be a JSON object, found {found}")]
    NotAnObject {
        /// Table the row belongs to.
        table: String,
        /// Short description of what was found.
        found: String,
    },
    /// A column the typed model needs is absent.
    #[error("table {table}: row lacks column {column}")]
    MissingColumn {
        /// Table name.
        table: String,
        /// Column name.
        column: String,
    },
    /// A column's value does not match its type.
    #[error("table {table} column {column}: {source}")]
    BadColumn {
        /// Table name.
        table: String,
        /// Column name.
        column: String,
        /// What is wrong with the value.
        source: DatumError,
    },
}

/// One row: values by column name.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Row {
    columns: Vec<(Arc<str>, Value)>,
}

impl Row {
    /// An empty row.
    pub fn new() -> Self {
        Self::default()
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.columns.binary_search_by(|(k, _)| (**k).cmp(name))
    }

    /// A row from columns already sorted by name, without duplicates (generated
    /// typed tables build their rows this way).
    pub(crate) fn from_sorted_columns(columns: Vec<(Arc<str>, Value)>) -> Self {
        debug_assert!(columns.windows(2).all(|w| w[0].0 < w[1].0));
        Self { columns }
    }

    /// The value of a column.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.position(name).ok().map(|i| &self.columns[i].1)
    }

    /// Sets a column, returning its previous value.
    pub fn insert(&mut self, name: impl Into<Arc<str>>, value: impl Into<Value>) -> Option<Value> {
        let name = name.into();
        let value = value.into();
        match self.position(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.columns[i].1, value)),
            Err(i) => {
                self.columns.insert(i, (name, value));
                None
            }
        }
    }

    /// Builder form of [`Row::insert`].
    pub fn with(mut self, name: impl Into<Arc<str>>, value: impl Into<Value>) -> Self {
        self.insert(name, value);
        self
    }

    /// A mutable reference to a column's value.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        self.position(name).ok().map(|i| &mut self.columns[i].1)
    }

    /// Removes a column, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        self.position(name).ok().map(|i| self.columns.remove(i).1)
    }

    /// Keeps only the columns for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &Value) -> bool) {
        self.columns.retain(|(k, v)| keep(k, v));
    }

    /// Number of columns present.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether no column is present.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Columns in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.columns.iter().map(|(k, v)| (&**k, v))
    }

    /// The `_uuid` column, if present and a uuid.
    pub fn uuid(&self) -> Option<Uuid> {
        self.get("_uuid")?.as_atom()?.as_uuid()
    }

    /// Adds the default value of every schema column the row lacks. Monitor
    /// `initial` and `insert` rows omit columns that hold their default.
    pub fn fill_defaults(&mut self, table: &TableSchema) {
        self.fill_defaults_of(table.columns.values());
    }

    /// [`Row::fill_defaults`] for some columns only, given in name order. One pass
    /// and at most one allocation: this runs for every row a monitor inserts.
    pub(crate) fn fill_defaults_of<'a>(
        &mut self,
        columns: impl IntoIterator<Item = &'a ColumnSchema> + Clone,
    ) {
        let missing = columns
            .clone()
            .into_iter()
            .filter(|col| self.position(&col.name).is_err())
            .count();
        if missing == 0 {
            return;
        }
        let mut filled = Vec::with_capacity(self.columns.len() + missing);
        let mut present = std::mem::take(&mut self.columns).into_iter().peekable();
        for col in columns {
            while let Some(next) = present.next_if(|(name, _)| **name < *col.name) {
                filled.push(next);
            }
            match present.next_if(|(name, _)| **name == *col.name) {
                Some(next) => filled.push(next),
                None => filled.push((col.name.clone(), col.ty.default_value())),
            }
        }
        filled.extend(present);
        self.columns = filled;
    }

    /// The JSON object form, as `insert`/`update` rows and `select` results use.
    pub fn to_json(&self) -> Json {
        Json::Object(
            self.iter()
                .map(|(k, v)| (k.to_owned(), v.to_json()))
                .collect(),
        )
    }

    /// Decodes a JSON object without a schema (see [`Value::from_json`]).
    pub fn from_json(json: &Json) -> Result<Self, RowError> {
        let obj = object(json, "?")?;
        obj.iter()
            .map(|(k, v)| {
                Value::from_json(v)
                    .map(|v| (Arc::<str>::from(k.as_str()), v))
                    .map_err(|source| RowError::BadColumn {
                        table: "?".into(),
                        column: k.clone(),
                        source,
                    })
            })
            .collect()
    }

    /// Decodes a JSON object with the table's schema, giving every known column its
    /// canonical form (see [`Value::coerce`]). Columns the schema does not know
    /// (a newer server) are kept, decoded without a type.
    pub fn from_json_typed(json: &Json, table: &TableSchema) -> Result<Self, RowError> {
        let obj = object(json, &table.name)?;
        let mut columns = Vec::with_capacity(obj.len());
        for (k, v) in obj {
            let bad = |source| RowError::BadColumn {
                table: table.name.clone(),
                column: k.clone(),
                source,
            };
            let entry = match table.column(k) {
                Some(col) => (
                    col.name.clone(),
                    Value::from_json_typed(v, &col.ty).map_err(bad)?,
                ),
                None => (Arc::from(k.as_str()), Value::from_json(v).map_err(bad)?),
            };
            columns.push(entry);
        }
        columns.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { columns })
    }

    /// Brings every known column into its canonical form for `table` (for rows
    /// built by hand or decoded without a schema).
    pub fn coerce(self, table: &TableSchema) -> Result<Self, RowError> {
        let columns = self
            .columns
            .into_iter()
            .map(|(k, v)| match table.column(&k) {
                Some(col) => v
                    .coerce(&col.ty)
                    .map(|v| (col.name.clone(), v))
                    .map_err(|source| RowError::BadColumn {
                        table: table.name.clone(),
                        column: k.to_string(),
                        source,
                    }),
                None => Ok((k, v)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { columns })
    }
}

fn object<'a>(json: &'a Json, table: &str) -> Result<&'a serde_json::Map<String, Json>, RowError> {
    json.as_object().ok_or_else(|| RowError::NotAnObject {
        table: table.to_owned(),
        found: match json {
            Json::Null => "null".into(),
            Json::Bool(_) => "a boolean".into(),
            Json::Number(_) => "a number".into(),
            Json::String(_) => "a string".into(),
            Json::Array(_) => "an array".into(),
            Json::Object(_) => "an object".into(),
        },
    })
}

impl<K: Into<Arc<str>>> FromIterator<(K, Value)> for Row {
    /// Later entries win over earlier ones for the same column.
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(iter: I) -> Self {
        let mut row = Row::new();
        for (k, v) in iter {
            row.insert(k, v);
        }
        row
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.columns.len()))?;
        for (k, v) in &self.columns {
            map.serialize_entry(&**k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = Row;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an OVSDB row object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
                let mut row = Row::new();
                while let Some((k, v)) = map.next_entry::<std::borrow::Cow<'de, str>, Value>()? {
                    if row.insert(&*k, v).is_some() {
                        return Err(de::Error::custom(format!("duplicate column {k:?}")));
                    }
                }
                Ok(row)
            }
        }
        d.deserialize_map(RowVisitor)
    }
}

/// Decodes a row straight from JSON text with its table's column types, as
/// [`Row::from_json_typed`] does from a JSON tree (untyped for a table the schema
/// lacks). A `modify` diff is decoded without the column's bounds, since a set
/// diff may hold more elements than the column allows.
pub(crate) struct RowSeed<'s> {
    table: &'s str,
    schema: Option<&'s TableSchema>,
    diff: bool,
}

impl<'s> RowSeed<'s> {
    /// A whole row (`initial`, `insert`).
    pub(crate) fn whole(table: &'s str, schema: Option<&'s TableSchema>) -> Self {
        Self {
            table,
            schema,
            diff: false,
        }
    }

    /// A `modify` diff.
    pub(crate) fn diff(table: &'s str, schema: Option<&'s TableSchema>) -> Self {
        Self {
            table,
            schema,
            diff: true,
        }
    }
}

/// Implements `DeserializeSeed` for seeds that read a JSON object and are their
/// own visitor (`visit_map`).
macro_rules! object_seed {
    ($($seed:ident => $value:ty),* $(,)?) => {$(
        impl<'de> serde::de::DeserializeSeed<'de> for $seed<'_> {
            type Value = $value;

            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<$value, D::Error> {
                d.deserialize_map(self)
            }
        }
    )*};
}
pub(crate) use object_seed;

object_seed!(RowSeed => Row);

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = Row;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a row of table {} (an object)", self.table)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
        let mut columns: Vec<(Arc<str>, Value)> = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let bad = |e: &dyn fmt::Display| {
                de::Error::custom(format!("table {} column {name}: {e}", self.table))
            };
            let column = self.schema.and_then(|t| t.column(&name));
            let value = match column {
                Some(col) if !self.diff => map
                    .next_value_seed(crate::protocol::types::TypedSeed(&col.ty))
                    .map_err(|e| bad(&e))?,
                Some(col) if col.ty.is_scalar() => map
                    .next_value::<Value>()
                    .map_err(|e| bad(&e))?
                    .coerce(&col.ty)
                    .map_err(|e| bad(&e))?,
                _ => map.next_value::<Value>().map_err(|e| bad(&e))?,
            };
            let key = column.map_or_else(|| Arc::from(&*name), |c| c.name.clone());
            columns.push((key, value));
        }
        columns.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = columns.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(de::Error::custom(format!(
                "table {}: duplicate column {:?}",
                self.table, pair[0].0
            )));
        }
        Ok(Row { columns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::schema::DatabaseSchema;
    use serde_json::json;

    fn nb() -> DatabaseSchema {
        DatabaseSchema::parse(include_str!("../../schemas/ovn-nb.ovsschema")).unwrap()
    }

    #[test]
    fn typed_decode_of_a_monitor_row() {
        let nb = nb();
        let lsp = nb.table("Logical_Switch_Port").unwrap();
        let json = json!({"name": "vm2-eth0", "addresses": "0a:00:00:00:00:07 10.0.0.7", "up": true, "future_column": 5});
        let mut row = Row::from_json_typed(&json, lsp).unwrap();
        assert_eq!(
            row.get("addresses"),
            Some(&Value::set(["0a:00:00:00:00:07 10.0.0.7"]))
        );
        assert_eq!(row.get("up"), Some(&Value::set([true])));
        assert_eq!(row.get("future_column"), Some(&Value::from(5)));
        row.fill_defaults(lsp);
        assert_eq!(row.get("options"), Some(&Value::map::<&str, &str>([])));
        assert_eq!(row.get("type"), Some(&Value::from("")));
        assert_eq!(row.get("tag"), Some(&Value::empty_set()));
        assert_eq!(row.len(), lsp.columns.len() + 1);
    }

    proptest::proptest! {
        /// The one-pass merge gives what inserting each missing default in turn
        /// gives, for any subset of columns present and any subset filled.
        #[test]
        fn filling_defaults_in_one_pass_matches_inserting_each(
            present in proptest::collection::vec(proptest::bool::ANY, 17),
            wanted in proptest::collection::vec(proptest::bool::ANY, 17),
        ) {
            let nb = nb();
            let lsp = nb.table("Logical_Switch_Port").unwrap();
            let mut row = Row::new().with("_uuid", Value::from(1)).with("zz_extra", 2);
            for (col, _) in lsp.columns.values().zip(&present).filter(|(_, p)| **p) {
                row.insert(col.name.clone(), Value::from(7));
            }
            let chosen: Vec<&ColumnSchema> = lsp
                .columns
                .values()
                .zip(wanted.iter().cycle())
                .filter(|(_, w)| **w)
                .map(|(c, _)| c)
                .collect();
            let mut expected = row.clone();
            for col in &chosen {
                if expected.get(&col.name).is_none() {
                    expected.insert(col.name.clone(), col.ty.default_value());
                }
            }
            row.fill_defaults_of(chosen.iter().copied());
            proptest::prop_assert_eq!(row, expected);
        }
    }

    #[test]
    fn errors_name_table_and_column() {
        let nb = nb();
        let lsp = nb.table("Logical_Switch_Port").unwrap();
        let err = Row::from_json_typed(&json!({"up": "yes"}), lsp).unwrap_err();
        assert_eq!(
            err.to_string(),
            "table Logical_Switch_Port column up: expected boolean, found string \"yes\""
        );
        let err = Row::from_json_typed(&json!([1]), lsp).unwrap_err();
        assert!(matches!(err, RowError::NotAnObject { .. }));
    }

    #[test]
    fn serde_matches_to_json() {
        let row = Row::new()
            .with("name", "ls1")
            .with("ports", Value::empty_set());
        assert_eq!(serde_json::to_value(&row).unwrap(), row.to_json());
        let back: Row = serde_json::from_value(row.to_json()).unwrap();
        assert_eq!(back, row);
        assert_eq!(Row::from_json(&row.to_json()).unwrap(), row);
    }
}
