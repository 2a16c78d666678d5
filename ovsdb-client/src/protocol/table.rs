//! The [`Table`] trait that generated typed rows implement, and the conversions
//! between typed column fields and [`Value`]s.
//!
//! Conversions are tolerant where the wire is ambiguous (a bare atom for a set, a
//! one-element set for a scalar, an integer for a real) and strict otherwise: a
//! wrong atom type or a set where a map belongs is an error naming the table and
//! the column. Extra columns in a row are ignored.

use std::collections::{BTreeMap, BTreeSet};

use crate::protocol::datum::{Atom, DatumError, Uuid, Value};
use crate::protocol::operation::{Condition, Insert, Operation, Update, Wait, WaitUntil};
use crate::protocol::row::{Row, RowError};
use crate::protocol::schema::DatabaseSchema;

/// A typed row of one table, generated from a pinned schema.
pub trait Table: Sized + Clone + Send + Sync + 'static {
    /// The table name on the wire.
    const TABLE: &'static str;

    /// The columns the typed row reads (without `_uuid`): what a monitor or a
    /// `select` must ask for.
    const COLUMNS: &'static [&'static str];

    /// The row's `_uuid`.
    fn uuid(&self) -> Uuid;

    /// Builds the typed row from `row` and its uuid (from the cache key or the
    /// `_uuid` column). Fails on a missing or mistyped column; ignores extras.
    fn from_uuid_row(uuid: Uuid, row: &Row) -> Result<Self, RowError>;

    /// Every schema column in canonical form, without `_uuid`: the `row` of an
    /// `insert`. Immutable columns are included, so trim them for an `update`.
    fn to_row(&self) -> Row;

    /// Builds the typed row from a row that carries its `_uuid` column (as
    /// `select` results do).
    fn from_row(row: &Row) -> Result<Self, RowError> {
        let uuid = column(row, Self::TABLE, "_uuid")?;
        Self::from_uuid_row(uuid, row)
    }
}

/// The `insert` of a typed row of a table of `schema`, with the row's uuid as the
/// client-chosen uuid unless it is nil.
///
/// Columns holding an empty set or map where the schema allows none (`min` 0) are
/// left out: the server gives an omitted column its default, which for those
/// columns is exactly that, and a typical row's request (and the server's work
/// parsing it) shrinks by half.
pub fn insert_row<T: Table>(row: &T, schema: &DatabaseSchema) -> Insert {
    let table = schema.table(T::TABLE);
    let mut columns = row.to_row();
    columns.retain(|column, value| {
        let empty = match value {
            Value::Set(set) => set.is_empty(),
            Value::Map(map) => map.is_empty(),
            Value::Atom(_) => false,
        };
        let optional = || {
            table
                .and_then(|t| t.column(column))
                .is_some_and(|c| c.ty.min == 0)
        };
        !(empty && optional())
    });
    let insert = Insert::new(T::TABLE, columns);
    if row.uuid().is_nil() {
        insert
    } else {
        insert.uuid(row.uuid())
    }
}

/// The columns whose values differ between `old` and `new`, with `new`'s values:
/// the `row` of an `update` that turns one into the other.
pub fn changes<T: Table>(old: &T, new: &T) -> Row {
    let before = old.to_row();
    new.to_row()
        .iter()
        .filter(|(name, value)| before.get(name) != Some(value))
        .map(|(name, value)| (name.to_owned(), value.clone()))
        .collect()
}

/// Updates row `old.uuid()` to `new`, writing only the changed columns; empty
/// when nothing changed. With `guarded`, a `wait` first requires the changed
/// columns to still hold `old`'s values, so a write based on a stale read fails
/// with `timed out` instead of overwriting someone else's change.
pub fn update_ops<T: Table>(old: &T, new: &T, guarded: bool) -> Vec<Operation> {
    let changed = changes(old, new);
    if changed.is_empty() {
        return Vec::new();
    }
    let columns: Vec<&str> = changed.iter().map(|(name, _)| name).collect();
    let mut ops = Vec::with_capacity(2);
    if guarded {
        let before = old.to_row();
        let expected: Row = columns
            .iter()
            .filter_map(|c| before.get(c).map(|v| (*c, v.clone())))
            .collect();
        ops.push(
            Wait::new(
                T::TABLE,
                columns.iter().copied(),
                WaitUntil::Equal,
                vec![expected],
            )
            .filter(Condition::uuid_is(old.uuid()))
            .into(),
        );
    }
    ops.push(
        Update::new(T::TABLE, changed)
            .filter(Condition::uuid_is(old.uuid()))
            .into(),
    );
    ops
}

/// Reads one column of `row` as `T`, with an error naming `table` and `column`.
/// Used by generated code.
pub fn column<T: ColumnValue>(row: &Row, table: &str, column: &str) -> Result<T, RowError> {
    let value = row.get(column).ok_or_else(|| RowError::MissingColumn {
        table: table.to_owned(),
        column: column.to_owned(),
    })?;
    T::from_value(value).map_err(|source| RowError::BadColumn {
        table: table.to_owned(),
        column: column.to_owned(),
        source,
    })
}

/// One atom's Rust type.
pub trait AtomValue: Sized {
    /// Converts from an atom, failing on the wrong atomic type.
    fn from_atom(atom: &Atom) -> Result<Self, DatumError>;
    /// Converts to an atom.
    fn to_atom(&self) -> Atom;
}

fn wrong(expected: &str, atom: &Atom) -> DatumError {
    DatumError::new(format!(
        "expected {expected}, found {} {}",
        atom.atomic_type(),
        atom.to_json()
    ))
}

impl AtomValue for i64 {
    fn from_atom(atom: &Atom) -> Result<Self, DatumError> {
        atom.as_integer().ok_or_else(|| wrong("integer", atom))
    }
    fn to_atom(&self) -> Atom {
        Atom::Integer(*self)
    }
}

impl AtomValue for f64 {
    fn from_atom(atom: &Atom) -> Result<Self, DatumError> {
        atom.as_real().ok_or_else(|| wrong("real", atom))
    }
    fn to_atom(&self) -> Atom {
        Atom::Real(*self)
    }
}

impl AtomValue for bool {
    fn from_atom(atom: &Atom) -> Result<Self, DatumError> {
        atom.as_bool().ok_or_else(|| wrong("boolean", atom))
    }
    fn to_atom(&self) -> Atom {
        Atom::Boolean(*self)
    }
}

impl AtomValue for String {
    fn from_atom(atom: &Atom) -> Result<Self, DatumError> {
        atom.as_str()
            .map(str::to_owned)
            .ok_or_else(|| wrong("string", atom))
    }
    fn to_atom(&self) -> Atom {
        Atom::string(self.as_str())
    }
}

impl AtomValue for Uuid {
    fn from_atom(atom: &Atom) -> Result<Self, DatumError> {
        atom.as_uuid().ok_or_else(|| wrong("uuid", atom))
    }
    fn to_atom(&self) -> Atom {
        Atom::Uuid(*self)
    }
}

/// A whole column's Rust type: an atom, `Option<atom>`, a set or a map.
pub trait ColumnValue: Sized {
    /// Converts from a column value (any of its wire forms).
    fn from_value(value: &Value) -> Result<Self, DatumError>;
    /// Converts to the canonical column value.
    fn to_value(&self) -> Value;
}

fn describe(value: &Value) -> String {
    match value {
        Value::Atom(a) => format!("{} {}", a.atomic_type(), a.to_json()),
        other => other.to_json().to_string(),
    }
}

macro_rules! scalar_column {
    ($($t:ty),*) => {$(
        impl ColumnValue for $t {
            fn from_value(value: &Value) -> Result<Self, DatumError> {
                match value.as_atom() {
                    Some(a) => <$t>::from_atom(a),
                    None => Err(DatumError::new(format!(
                        "expected exactly one value, found {}",
                        describe(value)
                    ))),
                }
            }
            fn to_value(&self) -> Value {
                Value::Atom(self.to_atom())
            }
        }
    )*};
}
scalar_column!(i64, f64, bool, String, Uuid);

fn set_atoms(value: &Value) -> Result<&[Atom], DatumError> {
    match value {
        Value::Map(m) if m.is_empty() => Ok(&[]),
        Value::Map(_) => Err(DatumError::new(format!(
            "expected a set, found {}",
            describe(value)
        ))),
        other => Ok(other.set_elements()),
    }
}

impl<T: AtomValue> ColumnValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, DatumError> {
        match set_atoms(value)? {
            [] => Ok(None),
            [a] => T::from_atom(a).map(Some),
            _ => Err(DatumError::new(format!(
                "expected at most one value, found {}",
                describe(value)
            ))),
        }
    }
    fn to_value(&self) -> Value {
        Value::Set(self.iter().map(T::to_atom).collect())
    }
}

impl<T: AtomValue + Ord> ColumnValue for BTreeSet<T> {
    fn from_value(value: &Value) -> Result<Self, DatumError> {
        set_atoms(value)?.iter().map(T::from_atom).collect()
    }
    fn to_value(&self) -> Value {
        Value::Set(self.iter().map(T::to_atom).collect())
    }
}

/// Sets of reals (not `Ord`), in ascending order.
impl ColumnValue for Vec<f64> {
    fn from_value(value: &Value) -> Result<Self, DatumError> {
        set_atoms(value)?.iter().map(f64::from_atom).collect()
    }
    fn to_value(&self) -> Value {
        Value::Set(self.iter().map(f64::to_atom).collect())
    }
}

impl<K: AtomValue + Ord, V: AtomValue> ColumnValue for BTreeMap<K, V> {
    fn from_value(value: &Value) -> Result<Self, DatumError> {
        match value {
            Value::Map(m) => m
                .iter()
                .map(|(k, v)| Ok((K::from_atom(k)?, V::from_atom(v)?)))
                .collect(),
            Value::Set(s) if s.is_empty() => Ok(BTreeMap::new()),
            other => Err(DatumError::new(format!(
                "expected a map, found {}",
                describe(other)
            ))),
        }
    }
    fn to_value(&self) -> Value {
        Value::Map(
            self.iter()
                .map(|(k, v)| (k.to_atom(), v.to_atom()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_ambiguities_are_accepted() {
        assert_eq!(String::from_value(&Value::set(["x"])).unwrap(), "x");
        assert_eq!(
            Option::<i64>::from_value(&Value::empty_set()).unwrap(),
            None
        );
        assert_eq!(Option::<i64>::from_value(&Value::from(3)).unwrap(), Some(3));
        assert_eq!(f64::from_value(&Value::from(3)).unwrap(), 3.0);
        assert_eq!(
            BTreeSet::<String>::from_value(&Value::from("a")).unwrap(),
            BTreeSet::from(["a".to_string()])
        );
        assert!(
            BTreeMap::<String, String>::from_value(&Value::empty_set())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn mismatches_are_errors() {
        assert!(String::from_value(&Value::empty_set()).is_err());
        assert!(String::from_value(&Value::from(1)).is_err());
        assert!(Option::<bool>::from_value(&Value::set([true, false])).is_err());
        assert!(BTreeSet::<String>::from_value(&Value::map([("a", "b")])).is_err());
        assert!(BTreeMap::<String, String>::from_value(&Value::set(["a"])).is_err());
        let row = Row::new().with("n", 1);
        let err = column::<String>(&row, "T", "n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "table T column n: expected string, found integer 1"
        );
        let err = column::<String>(&row, "T", "m").unwrap_err();
        assert_eq!(err.to_string(), "table T: row lacks column m");
    }
}
