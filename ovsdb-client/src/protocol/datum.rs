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

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
pub use uuid::Uuid;

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

/// `From` impls that wrap a value in an enum variant, converting it with `into` first.
macro_rules! from_variant {
    ($target:ident: $($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for $target {
            fn from(v: $t) -> Self {
                Self::$variant(v.into())
            }
        }
    )*};
}

from_variant!(Atom:
    i64 => Integer,
    f64 => Real,
    bool => Boolean,
    &str => String,
    String => String,
    Arc<str> => String,
    Uuid => Uuid,
);

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
}

from_variant!(Value: Atom => Atom, Set => Set, Map => Map);
from_variant!(Value:
    i64 => Atom,
    f64 => Atom,
    bool => Atom,
    &str => Atom,
    String => Atom,
    Arc<str> => Atom,
    Uuid => Atom,
);

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
