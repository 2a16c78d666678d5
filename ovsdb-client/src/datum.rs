//! OVSDB values: atoms, sets and maps, and their RFC 7047 JSON encoding.
//!
//! The server sends a one-element set as the bare atom and an optional scalar as
//! either `["set",[]]` or the bare atom, so JSON alone cannot say whether `"x"` is a
//! string or a set of strings. [`Value::from_json`] decodes what the JSON says;
//! [`Value::from_json_typed`] (or [`Value::coerce`]) uses the schema column type to
//! give the canonical form: an [`Value::Atom`] for scalar columns (`min` = `max` = 1),
//! a [`Value::Map`] for maps, and a [`Value::Set`] for everything else, with integers
//! widened to reals where the column is real.
//!
//! Sets and maps are kept as sorted vectors: cheaper than tree nodes for the small
//! collections OVN rows hold, and equality is structural.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
pub use uuid::Uuid;

use crate::schema::{AtomicType, BaseType, ColumnType};

/// A value that does not fit the JSON encoding or the schema type it was decoded with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DatumError(pub(crate) String);

impl DatumError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }

    /// The human-readable reason.
    pub fn message(&self) -> &str {
        &self.0
    }
}

/// One scalar OVSDB value.
///
/// Strings are `Arc<str>` so a row, an index key and an event can share them.
/// `Real` compares like the server (`-0.0 == 0.0`) and otherwise with
/// [`f64::total_cmp`], so atoms have a total order and can be set members; a
/// non-finite real has no JSON form and encodes as `null`.
#[derive(Debug, Clone)]
pub enum Atom {
    /// A 64-bit signed integer.
    Integer(i64),
    /// A double-precision float.
    Real(f64),
    /// `true` or `false`.
    Boolean(bool),
    /// A UTF-8 string.
    String(Arc<str>),
    /// A row UUID, `["uuid","…"]` on the wire.
    Uuid(Uuid),
    /// A reference to a row inserted earlier in the same transaction,
    /// `["named-uuid","…"]` on the wire.
    NamedUuid(Arc<str>),
}

impl Atom {
    /// A string atom.
    pub fn string(s: impl Into<Arc<str>>) -> Self {
        Self::String(s.into())
    }

    /// A named-uuid atom (the `uuid-name` of an insert in the same transaction).
    pub fn named_uuid(name: impl Into<Arc<str>>) -> Self {
        Self::NamedUuid(name.into())
    }

    /// The string, if this is a string atom.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an integer atom.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Self::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The number, if this is a real or an integer atom.
    pub fn as_real(&self) -> Option<f64> {
        match self {
            Self::Real(r) => Some(*r),
            Self::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The boolean, if this is a boolean atom.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// The UUID, if this is a uuid atom (not a named-uuid).
    pub fn as_uuid(&self) -> Option<Uuid> {
        match self {
            Self::Uuid(u) => Some(*u),
            _ => None,
        }
    }

    /// The atomic type this atom belongs to (`NamedUuid` is a `uuid`).
    pub fn atomic_type(&self) -> AtomicType {
        match self {
            Self::Integer(_) => AtomicType::Integer,
            Self::Real(_) => AtomicType::Real,
            Self::Boolean(_) => AtomicType::Boolean,
            Self::String(_) => AtomicType::String,
            Self::Uuid(_) | Self::NamedUuid(_) => AtomicType::Uuid,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Self::Integer(_) => 0,
            Self::Real(_) => 1,
            Self::Boolean(_) => 2,
            Self::String(_) => 3,
            Self::Uuid(_) => 4,
            Self::NamedUuid(_) => 5,
        }
    }

    /// The RFC 7047 JSON form.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Self::Integer(i) => J::from(*i),
            Self::Real(r) => J::from(*r),
            Self::Boolean(b) => J::Bool(*b),
            Self::String(s) => J::String(s.to_string()),
            Self::Uuid(u) => serde_json::json!(["uuid", u.to_string()]),
            Self::NamedUuid(n) => serde_json::json!(["named-uuid", &**n]),
        }
    }

    /// Decodes an atom from JSON without a schema: integers stay integers, and
    /// `["uuid",…]`/`["named-uuid",…]` become uuid atoms.
    pub fn from_json(json: &serde_json::Value) -> Result<Self, DatumError> {
        Atom::deserialize(json).map_err(|e| DatumError::new(e.to_string()))
    }

    /// Decodes an atom of the given base type: an integer is accepted for a real,
    /// anything else of the wrong type is an error.
    pub fn from_json_typed(json: &serde_json::Value, ty: &BaseType) -> Result<Self, DatumError> {
        Self::from_json(json)?.coerce(ty.atomic)
    }

    /// Converts to the given atomic type where the wire form is ambiguous (an
    /// integer for a real column); fails on any other mismatch.
    pub fn coerce(self, ty: AtomicType) -> Result<Self, DatumError> {
        match (self, ty) {
            (Self::Integer(i), AtomicType::Real) => Ok(Self::Real(i as f64)),
            (atom, ty) if atom.atomic_type() == ty => Ok(atom),
            (atom, ty) => Err(DatumError::new(format!(
                "expected {ty}, found {} {}",
                atom.atomic_type(),
                atom.to_json()
            ))),
        }
    }
}

impl PartialEq for Atom {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Atom {}

impl PartialOrd for Atom {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Atom {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Integer(a), Self::Integer(b)) => a.cmp(b),
            // As the server compares them: -0.0 == 0.0.
            (Self::Real(a), Self::Real(b)) if a == b => Ordering::Equal,
            (Self::Real(a), Self::Real(b)) => a.total_cmp(b),
            (Self::Boolean(a), Self::Boolean(b)) => a.cmp(b),
            (Self::String(a), Self::String(b)) => a.cmp(b),
            (Self::Uuid(a), Self::Uuid(b)) => a.cmp(b),
            (Self::NamedUuid(a), Self::NamedUuid(b)) => a.cmp(b),
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }
}

impl std::hash::Hash for Atom {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.rank().hash(state);
        match self {
            Self::Integer(i) => i.hash(state),
            Self::Real(r) => (if *r == 0.0 { 0.0f64 } else { *r }).to_bits().hash(state),
            Self::Boolean(b) => b.hash(state),
            Self::String(s) | Self::NamedUuid(s) => s.hash(state),
            Self::Uuid(u) => u.hash(state),
        }
    }
}

impl fmt::Display for Atom {
    /// Shows the atom as `ovn-nbctl` would: strings bare, uuids bare.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Integer(i) => write!(f, "{i}"),
            Self::Real(r) => write!(f, "{r}"),
            Self::Boolean(b) => write!(f, "{b}"),
            Self::String(s) => f.write_str(s),
            Self::Uuid(u) => write!(f, "{u}"),
            Self::NamedUuid(n) => write!(f, "@{n}"),
        }
    }
}

impl From<i64> for Atom {
    fn from(v: i64) -> Self {
        Self::Integer(v)
    }
}

impl From<f64> for Atom {
    fn from(v: f64) -> Self {
        Self::Real(v)
    }
}

impl From<bool> for Atom {
    fn from(v: bool) -> Self {
        Self::Boolean(v)
    }
}

impl From<&str> for Atom {
    fn from(v: &str) -> Self {
        Self::String(v.into())
    }
}

impl From<String> for Atom {
    fn from(v: String) -> Self {
        Self::String(v.into())
    }
}

impl From<Arc<str>> for Atom {
    fn from(v: Arc<str>) -> Self {
        Self::String(v)
    }
}

impl From<Uuid> for Atom {
    fn from(v: Uuid) -> Self {
        Self::Uuid(v)
    }
}

/// A set of atoms, sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Set(Vec<Atom>);

impl Set {
    /// The empty set.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set has no element.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `atom` is a member.
    pub fn contains(&self, atom: &Atom) -> bool {
        self.0.binary_search(atom).is_ok()
    }

    /// Adds `atom`; returns false if it was already present.
    pub fn insert(&mut self, atom: Atom) -> bool {
        match self.0.binary_search(&atom) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, atom);
                true
            }
        }
    }

    /// Removes `atom`; returns false if it was absent.
    pub fn remove(&mut self, atom: &Atom) -> bool {
        match self.0.binary_search(atom) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// The elements in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Atom> {
        self.0.iter()
    }

    /// The elements in order, as a slice.
    pub fn as_slice(&self) -> &[Atom] {
        &self.0
    }

    /// The elements in order, by value.
    pub fn into_vec(self) -> Vec<Atom> {
        self.0
    }
}

impl FromIterator<Atom> for Set {
    fn from_iter<I: IntoIterator<Item = Atom>>(iter: I) -> Self {
        let mut v: Vec<Atom> = iter.into_iter().collect();
        v.sort();
        v.dedup();
        Self(v)
    }
}

impl IntoIterator for Set {
    type Item = Atom;
    type IntoIter = std::vec::IntoIter<Atom>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Set {
    type Item = &'a Atom;
    type IntoIter = std::slice::Iter<'a, Atom>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A map from atoms to atoms, sorted by key, one entry per key.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Map(Vec<(Atom, Atom)>);

impl Map {
    /// The empty map.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the map has no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, key: &Atom) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(key))
    }

    /// The value for `key`.
    pub fn get(&self, key: &Atom) -> Option<&Atom> {
        self.position(key).ok().map(|i| &self.0[i].1)
    }

    /// The value for a string key, the common case (`external_ids`, `options`).
    pub fn get_str(&self, key: &str) -> Option<&Atom> {
        self.0
            .binary_search_by(|(k, _)| match k {
                Atom::String(s) => (**s).cmp(key),
                other => other.rank().cmp(&3),
            })
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Sets `key` to `value`, returning the previous value.
    pub fn insert(&mut self, key: Atom, value: Atom) -> Option<Atom> {
        match self.position(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &Atom) -> Option<Atom> {
        self.position(key).ok().map(|i| self.0.remove(i).1)
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Atom, &Atom)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The entries in key order, as a slice.
    pub fn as_slice(&self) -> &[(Atom, Atom)] {
        &self.0
    }
}

impl FromIterator<(Atom, Atom)> for Map {
    /// Later entries win over earlier ones with the same key.
    fn from_iter<I: IntoIterator<Item = (Atom, Atom)>>(iter: I) -> Self {
        let mut v: Vec<(Atom, Atom)> = iter.into_iter().collect();
        // Stable sort keeps input order among equal keys; keep the last of each run.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Atom, Atom)> = Vec::with_capacity(v.len());
        for (k, val) in v {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = val,
                _ => out.push((k, val)),
            }
        }
        Self(out)
    }
}

impl IntoIterator for Map {
    type Item = (Atom, Atom);
    type IntoIter = std::vec::IntoIter<(Atom, Atom)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// An OVSDB datum: the value of one column.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// A scalar, or a one-element set as the server sends it.
    Atom(Atom),
    /// A set, encoded `["set",[…]]`.
    Set(Set),
    /// A map, encoded `["map",[[k,v],…]]`.
    Map(Map),
}

impl Value {
    /// The empty set, which is also "absent" for an optional column.
    pub fn empty_set() -> Self {
        Self::Set(Set::new())
    }

    /// A set of the given atoms.
    pub fn set<A: Into<Atom>>(atoms: impl IntoIterator<Item = A>) -> Self {
        Self::Set(atoms.into_iter().map(Into::into).collect())
    }

    /// A map of the given entries.
    pub fn map<K: Into<Atom>, V: Into<Atom>>(entries: impl IntoIterator<Item = (K, V)>) -> Self {
        Self::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// A uuid atom.
    pub fn uuid(u: Uuid) -> Self {
        Self::Atom(Atom::Uuid(u))
    }

    /// A named-uuid atom.
    pub fn named_uuid(name: impl Into<Arc<str>>) -> Self {
        Self::Atom(Atom::named_uuid(name))
    }

    /// The atom, if this is a bare atom or a one-element set.
    pub fn as_atom(&self) -> Option<&Atom> {
        match self {
            Self::Atom(a) => Some(a),
            Self::Set(s) if s.len() == 1 => s.iter().next(),
            _ => None,
        }
    }

    /// The map, if this is a map.
    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Self::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The elements when this is read as a set: a bare atom is a one-element set.
    /// Empty for a map.
    pub fn set_elements(&self) -> &[Atom] {
        match self {
            Self::Atom(a) => std::slice::from_ref(a),
            Self::Set(s) => s.as_slice(),
            Self::Map(_) => &[],
        }
    }

    /// The RFC 7047 JSON form. A [`Value::Set`] is always `["set",[…]]`, even with one
    /// element, so JSON → [`Value`] → JSON is lossless without a schema.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Self::Atom(a) => a.to_json(),
            Self::Set(s) => J::Array(vec![
                J::from("set"),
                J::Array(s.iter().map(Atom::to_json).collect()),
            ]),
            Self::Map(m) => J::Array(vec![
                J::from("map"),
                J::Array(
                    m.iter()
                        .map(|(k, v)| J::Array(vec![k.to_json(), v.to_json()]))
                        .collect(),
                ),
            ]),
        }
    }

    /// Decodes a datum from JSON without a schema: a bare atom stays [`Value::Atom`].
    pub fn from_json(json: &serde_json::Value) -> Result<Self, DatumError> {
        Value::deserialize(json).map_err(|e| DatumError::new(e.to_string()))
    }

    /// Decodes a datum of the given column type into its canonical form (see the
    /// module doc).
    pub fn from_json_typed(json: &serde_json::Value, ty: &ColumnType) -> Result<Self, DatumError> {
        Self::from_json(json)?.coerce(ty)
    }

    /// Brings an untyped datum into the canonical form for `ty`: scalar columns hold
    /// an atom, map columns a map, all other columns a set; integers become reals
    /// in real columns. Fails on a wrong atom type, a set where a map is expected
    /// (other than the empty set), or more elements than the column allows.
    pub fn coerce(self, ty: &ColumnType) -> Result<Self, DatumError> {
        match &ty.value {
            Some(value_ty) => {
                let map = match self {
                    Self::Map(m) => m,
                    Self::Set(s) if s.is_empty() => Map::new(),
                    other => {
                        return Err(DatumError::new(format!(
                            "expected a map, found {}",
                            other.to_json()
                        )));
                    }
                };
                let needs_work = map.iter().any(|(k, v)| {
                    k.atomic_type() != ty.key.atomic || v.atomic_type() != value_ty.atomic
                });
                let map = if needs_work {
                    map.into_iter()
                        .map(|(k, v)| Ok((k.coerce(ty.key.atomic)?, v.coerce(value_ty.atomic)?)))
                        .collect::<Result<Map, DatumError>>()?
                } else {
                    map
                };
                check_count(map.len(), ty)?;
                Ok(Self::Map(map))
            }
            None => {
                let set = match self {
                    Self::Atom(a) => Set(vec![a.coerce(ty.key.atomic)?]),
                    Self::Set(s) => {
                        if s.iter().all(|a| a.atomic_type() == ty.key.atomic) {
                            s
                        } else {
                            s.into_iter()
                                .map(|a| a.coerce(ty.key.atomic))
                                .collect::<Result<Set, DatumError>>()?
                        }
                    }
                    Self::Map(m) => {
                        return Err(DatumError::new(format!(
                            "expected {}, found a map",
                            if ty.is_scalar() { "an atom" } else { "a set" }
                        ))
                        .with_json(&Self::Map(m)));
                    }
                };
                check_count(set.len(), ty)?;
                if ty.is_scalar() {
                    Ok(Self::Atom(set.0.into_iter().next().ok_or_else(|| {
                        DatumError::new("expected exactly one value, found an empty set")
                    })?))
                } else {
                    Ok(Self::Set(set))
                }
            }
        }
    }

    /// Applies an RFC 7047 `update2`/`update3` `modify` diff for a column of type
    /// `ty`: a column holding at most one value (scalar or optional) takes the new
    /// value, as ovsdb-server sends it (`ovsdb_datum_diff` diffs only columns with
    /// `max > 1`; a cleared optional column arrives as `["set",[]]`); a set column
    /// takes the symmetric difference; a map column adds absent keys, removes keys
    /// given with their current value, and replaces keys given with another value.
    pub fn apply_diff(&mut self, diff: Value, ty: &ColumnType) -> Result<(), DatumError> {
        let diff = diff.coerce_diff(ty)?;
        if ty.max == Some(1) {
            *self = diff;
            return Ok(());
        }
        let current = match (std::mem::replace(self, Value::empty_set()), &ty.value) {
            // The cache holds canonical values: skip a pass over a large set.
            (current @ Value::Map(_), Some(_)) | (current @ Value::Set(_), None) => current,
            (current, _) => current.coerce(ty)?,
        };
        match (current, diff) {
            (Value::Map(mut map), Value::Map(d)) => {
                for (k, v) in d {
                    match map.get(&k) {
                        Some(old) if *old == v => {
                            map.remove(&k);
                        }
                        _ => {
                            map.insert(k, v);
                        }
                    }
                }
                *self = Value::Map(map);
            }
            (Value::Set(mut set), Value::Set(d)) => {
                for a in d {
                    if !set.remove(&a) {
                        set.insert(a);
                    }
                }
                *self = Value::Set(set);
            }
            _ => unreachable!("coerce yields maps for map columns and sets otherwise"),
        }
        Ok(())
    }

    /// Coerces a diff, which may hold more elements than the column allows.
    fn coerce_diff(self, ty: &ColumnType) -> Result<Self, DatumError> {
        if ty.max == Some(1) {
            return self.coerce(ty);
        }
        let unbounded = ColumnType {
            min: 0,
            max: None,
            ..ty.clone()
        };
        self.coerce(&unbounded)
    }
}

impl DatumError {
    fn with_json(self, value: &Value) -> Self {
        Self(format!("{}: {}", self.0, value.to_json()))
    }
}

fn check_count(n: usize, ty: &ColumnType) -> Result<(), DatumError> {
    if let Some(max) = ty.max
        && n as u64 > max
    {
        return Err(DatumError::new(format!(
            "{n} values where at most {max} are allowed"
        )));
    }
    Ok(())
}

impl From<Atom> for Value {
    fn from(a: Atom) -> Self {
        Self::Atom(a)
    }
}

impl From<Set> for Value {
    fn from(s: Set) -> Self {
        Self::Set(s)
    }
}

impl From<Map> for Value {
    fn from(m: Map) -> Self {
        Self::Map(m)
    }
}

macro_rules! value_from_atom {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Self::Atom(v.into())
            }
        }
    )*};
}
value_from_atom!(i64, f64, bool, &str, String, Arc<str>, Uuid);

impl Serialize for Atom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Integer(i) => s.serialize_i64(*i),
            Self::Real(r) => s.serialize_f64(*r),
            Self::Boolean(b) => s.serialize_bool(*b),
            Self::String(v) => s.serialize_str(v),
            Self::Uuid(u) => {
                let mut text = Uuid::encode_buffer();
                ("uuid", &*u.hyphenated().encode_lower(&mut text)).serialize(s)
            }
            Self::NamedUuid(n) => (&"named-uuid", &**n).serialize(s),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Elements<'a, T>(&'a [T]);
        impl<T: Serialize> Serialize for Elements<'_, T> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for e in self.0 {
                    seq.serialize_element(e)?;
                }
                seq.end()
            }
        }
        match self {
            Self::Atom(a) => a.serialize(s),
            Self::Set(set) => ("set", Elements(set.as_slice())).serialize(s),
            Self::Map(map) => ("map", Elements(map.as_slice())).serialize(s),
        }
    }
}

/// What a JSON array may be at the current position.
#[derive(Clone, Copy)]
enum Allowed {
    AtomOnly,
    AnyDatum,
}

struct DatumVisitor(Allowed);

impl<'de> Visitor<'de> for DatumVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Allowed::AtomOnly => f.write_str("an OVSDB atom"),
            Allowed::AnyDatum => f.write_str("an OVSDB atom, set or map"),
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Atom(Atom::Boolean(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Atom(Atom::Integer(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(|i| Value::Atom(Atom::Integer(i)))
            .map_err(|_| E::custom(format!("integer {v} is out of the 64-bit signed range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Atom(Atom::Real(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Atom(Atom::String(v.into())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let tag: std::borrow::Cow<'de, str> = seq
            .next_element()?
            .ok_or_else(|| de::Error::custom("empty array is not an OVSDB value"))?;
        let value = match (&*tag, self.0) {
            ("uuid", _) => {
                let s: std::borrow::Cow<'de, str> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("[\"uuid\"] lacks its UUID string"))?;
                let u = Uuid::try_parse(&s)
                    .map_err(|e| de::Error::custom(format!("invalid UUID {s:?}: {e}")))?;
                Value::Atom(Atom::Uuid(u))
            }
            ("named-uuid", _) => {
                let s: std::borrow::Cow<'de, str> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("[\"named-uuid\"] lacks its name"))?;
                Value::Atom(Atom::NamedUuid((*s).into()))
            }
            ("set", Allowed::AnyDatum) => {
                let atoms: Vec<Atom> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("[\"set\"] lacks its element array"))?;
                Value::Set(atoms.into_iter().collect())
            }
            ("map", Allowed::AnyDatum) => {
                let pairs: Vec<(Atom, Atom)> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("[\"map\"] lacks its pair array"))?;
                Value::Map(pairs.into_iter().collect())
            }
            ("set" | "map", Allowed::AtomOnly) => {
                return Err(de::Error::custom(format!(
                    "a {tag} cannot appear inside a set or map"
                )));
            }
            (other, _) => {
                return Err(de::Error::custom(format!(
                    "unknown OVSDB value tag {other:?} (expected uuid, named-uuid, set or map)"
                )));
            }
        };
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!(
                "[\"{tag}\", …] has more than two elements"
            )));
        }
        Ok(value)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DatumVisitor(Allowed::AnyDatum))
    }
}

impl<'de> Deserialize<'de> for Atom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(DatumVisitor(Allowed::AtomOnly))? {
            Value::Atom(a) => Ok(a),
            _ => Err(de::Error::custom("expected an atom")),
        }
    }
}

/// Deserializes a datum straight into the canonical form for a column type,
/// without an intermediate `serde_json::Value`.
pub struct TypedSeed<'a>(pub &'a ColumnType);

impl<'de> DeserializeSeed<'de> for TypedSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)?
            .coerce(self.0)
            .map_err(de::Error::custom)
    }
}

impl Value {
    /// Checks the value against the column's constraints (enum, ranges, lengths,
    /// element counts) as the server would, so a bad value is caught before it is
    /// sent. Expects the canonical form for `ty`.
    pub fn validate(&self, ty: &ColumnType) -> Result<(), DatumError> {
        let (n, keys, values): (usize, Vec<&Atom>, Vec<&Atom>) = match self {
            Value::Atom(a) => (1, vec![a], vec![]),
            Value::Set(s) => (s.len(), s.iter().collect(), vec![]),
            Value::Map(m) => (
                m.len(),
                m.iter().map(|(k, _)| k).collect(),
                m.iter().map(|(_, v)| v).collect(),
            ),
        };
        if (n as u64) < ty.min {
            return Err(DatumError::new(format!(
                "{n} values where at least {} are required",
                ty.min
            )));
        }
        check_count(n, ty)?;
        for k in keys {
            ty.key.validate(k)?;
        }
        if let Some(vt) = &ty.value {
            for v in values {
                vt.validate(v)?;
            }
        }
        Ok(())
    }
}

impl BaseType {
    /// Checks one atom against this base type's constraints.
    pub fn validate(&self, atom: &Atom) -> Result<(), DatumError> {
        if atom.atomic_type() != self.atomic {
            return Err(DatumError::new(format!(
                "expected {}, found {}",
                self.atomic,
                atom.to_json()
            )));
        }
        if let Some(allowed) = &self.enum_values
            && !allowed.contains(atom)
        {
            return Err(DatumError::new(format!(
                "{} is not one of the allowed values {}",
                atom.to_json(),
                Value::Set(allowed.clone()).to_json()
            )));
        }
        match atom {
            Atom::Integer(i)
                if self.min_integer.is_some_and(|m| *i < m)
                    || self.max_integer.is_some_and(|m| *i > m) =>
            {
                Err(DatumError::new(format!(
                    "{i} is not in the valid range {} to {}",
                    self.min_integer.unwrap_or(i64::MIN),
                    self.max_integer.unwrap_or(i64::MAX)
                )))
            }
            Atom::Real(r)
                if self.min_real.is_some_and(|m| *r < m)
                    || self.max_real.is_some_and(|m| *r > m) =>
            {
                Err(DatumError::new(format!("{r} is out of the valid range")))
            }
            Atom::String(s)
                if self
                    .min_length
                    .is_some_and(|m| (s.chars().count() as u64) < m)
                    || self
                        .max_length
                        .is_some_and(|m| s.chars().count() as u64 > m) =>
            {
                Err(DatumError::new(format!(
                    "{s:?} length {} is not in the valid range {} to {}",
                    s.chars().count(),
                    self.min_length.unwrap_or(0),
                    self.max_length
                        .map_or("unlimited".to_string(), |m| m.to_string())
                )))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn col(ty: serde_json::Value) -> ColumnType {
        ColumnType::from_json(&ty).unwrap()
    }

    #[test]
    fn wire_forms() {
        let u = Uuid::parse_str("148aa517-2b8e-4530-90cb-07ac82408f16").unwrap();
        assert_eq!(
            Value::uuid(u).to_json(),
            json!(["uuid", "148aa517-2b8e-4530-90cb-07ac82408f16"])
        );
        assert_eq!(
            Value::named_uuid("new_lsp").to_json(),
            json!(["named-uuid", "new_lsp"])
        );
        assert_eq!(
            Value::set(["0a:00:00:00:00:05 10.0.0.5"]).to_json(),
            json!(["set", ["0a:00:00:00:00:05 10.0.0.5"]])
        );
        assert_eq!(
            Value::map([
                ("requested-chassis", "node-a,node-b"),
                ("activation-strategy", "rarp")
            ])
            .to_json(),
            json!([
                "map",
                [
                    ["activation-strategy", "rarp"],
                    ["requested-chassis", "node-a,node-b"]
                ]
            ])
        );
        assert_eq!(Value::empty_set().to_json(), json!(["set", []]));
        // serde and to_json agree.
        let v = Value::map([(Atom::from("k"), Atom::Uuid(u))]);
        assert_eq!(serde_json::to_value(&v).unwrap(), v.to_json());
    }

    #[test]
    fn bare_atom_is_one_element_set_with_schema() {
        let addresses = col(json!({"key": "string", "min": 0, "max": "unlimited"}));
        let v = Value::from_json_typed(&json!("0a:00:00:00:00:07 10.0.0.7"), &addresses).unwrap();
        assert_eq!(v, Value::set(["0a:00:00:00:00:07 10.0.0.7"]));

        let ports = col(
            json!({"key": {"type": "uuid", "refTable": "Logical_Switch_Port"}, "min": 0, "max": "unlimited"}),
        );
        let v = Value::from_json_typed(
            &json!(["uuid", "2d25bea0-c336-47f9-b995-c480b3f42f55"]),
            &ports,
        )
        .unwrap();
        assert_eq!(v.set_elements().len(), 1);
        assert!(matches!(v, Value::Set(_)));
    }

    #[test]
    fn optional_scalar_forms() {
        let up = col(json!({"key": "boolean", "min": 0, "max": 1}));
        assert_eq!(
            Value::from_json_typed(&json!(["set", []]), &up).unwrap(),
            Value::empty_set()
        );
        assert_eq!(
            Value::from_json_typed(&json!(true), &up).unwrap(),
            Value::set([true])
        );
        assert!(Value::from_json_typed(&json!(["set", [true, false]]), &up).is_err());
    }

    #[test]
    fn integer_widens_to_real_but_not_back() {
        let real = col(json!("real"));
        assert_eq!(
            Value::from_json_typed(&json!(3), &real).unwrap(),
            Value::from(3.0)
        );
        let int = col(json!("integer"));
        assert!(Value::from_json_typed(&json!(3.5), &int).is_err());
        assert_eq!(
            Value::from_json_typed(&json!(["set", [7]]), &int).unwrap(),
            Value::from(7)
        );
    }

    #[test]
    fn mistyped_and_malformed_are_errors() {
        let s = col(json!("string"));
        assert!(Value::from_json_typed(&json!(1), &s).is_err());
        assert!(Value::from_json_typed(&json!(["map", []]), &s).is_err());
        for bad in [
            json!(null),
            json!({}),
            json!([]),
            json!(["uuid"]),
            json!(["uuid", "not-a-uuid"]),
            json!(["set", [["set", []]]]),
            json!(["set", [1], 2]),
            json!(["bogus", 1]),
            json!(18446744073709551615u64),
        ] {
            assert!(Value::from_json(&bad).is_err(), "{bad} should not decode");
        }
    }

    #[test]
    fn map_diff_semantics() {
        let options =
            col(json!({"key": "string", "value": "string", "min": 0, "max": "unlimited"}));
        let mut v = Value::map([("a", "1"), ("b", "2")]);
        // add c, remove b (sent with its old value), replace a.
        v.apply_diff(Value::map([("c", "3"), ("b", "2"), ("a", "9")]), &options)
            .unwrap();
        assert_eq!(v, Value::map([("a", "9"), ("c", "3")]));
    }

    #[test]
    fn set_and_scalar_diff_semantics() {
        let ports = col(json!({"key": "string", "min": 0, "max": "unlimited"}));
        let mut v = Value::set(["x", "y"]);
        v.apply_diff(Value::Atom("y".into()), &ports).unwrap();
        assert_eq!(v, Value::set(["x"]));
        v.apply_diff(Value::set(["x", "z"]), &ports).unwrap();
        assert_eq!(v, Value::set(["z"]));

        // An optional column gets the new value, not a difference (as ovsdb-server
        // 3.1 sends it: `"up":true`, and `["set",[]]` once cleared).
        let up = col(json!({"key": "boolean", "min": 0, "max": 1}));
        let mut v = Value::set([false]);
        v.apply_diff(Value::Atom(true.into()), &up).unwrap();
        assert_eq!(v, Value::set([true]));
        v.apply_diff(Value::empty_set(), &up).unwrap();
        assert_eq!(v, Value::empty_set());

        let name = col(json!("string"));
        let mut v = Value::from("old");
        v.apply_diff(Value::from("new"), &name).unwrap();
        assert_eq!(v, Value::from("new"));
    }

    #[test]
    fn validate_constraints() {
        let tag = col(
            json!({"key": {"type": "integer", "minInteger": 0, "maxInteger": 4095}, "min": 0, "max": 1}),
        );
        assert!(Value::set([5000]).validate(&tag).is_err());
        assert!(Value::set([4095]).validate(&tag).is_ok());
        let en = col(json!({"key": {"type": "string", "enum": ["set", ["allow", "drop"]]}}));
        assert!(Value::from("allow").validate(&en).is_ok());
        assert!(Value::from("reject").validate(&en).is_err());
    }
}
