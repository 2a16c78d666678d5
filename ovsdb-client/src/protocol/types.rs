//! The OVSDB type system (RFC 7047 §3.2 `<type>`): atomic, base and column
//! types, and what a type does to a datum — decode it into its canonical form
//! (see [`super::datum`]), check its constraints, apply an `update2`/`update3`
//! diff. Values know nothing of types; the schema names columns and gives each a
//! type from here.

use std::fmt;
use std::sync::LazyLock;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer};
use serde_json::Value as Json;

use super::datum::{Atom, DatumError, Map, Set, Uuid, Value};

/// A schema that does not follow RFC 7047 §3.2; the message names the table and
/// column at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid OVSDB schema: {0}")]
pub struct SchemaError(pub(crate) String);

/// The five OVSDB atomic types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AtomicType {
    /// 64-bit signed integer.
    Integer,
    /// Double-precision float.
    Real,
    /// Boolean.
    Boolean,
    /// UTF-8 string.
    String,
    /// Row UUID (possibly a reference).
    Uuid,
}

impl AtomicType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "integer" => Self::Integer,
            "real" => Self::Real,
            "boolean" => Self::Boolean,
            "string" => Self::String,
            "uuid" => Self::Uuid,
            _ => return None,
        })
    }

    /// The name used in schemas.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Integer => "integer",
            Self::Real => "real",
            Self::Boolean => "boolean",
            Self::String => "string",
            Self::Uuid => "uuid",
        }
    }

    /// The value a scalar column of this type holds when never set.
    pub fn default_atom(self) -> Atom {
        match self {
            Self::Integer => Atom::Integer(0),
            Self::Real => Atom::Real(0.0),
            Self::Boolean => Atom::Boolean(false),
            Self::String => {
                // Every row a monitor inserts gets its empty strings from here.
                static EMPTY: LazyLock<Atom> = LazyLock::new(|| Atom::string(""));
                EMPTY.clone()
            }
            Self::Uuid => Atom::Uuid(Uuid::nil()),
        }
    }
}

impl fmt::Display for AtomicType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a reference keeps its target alive (strong) or is dropped when the
/// target goes away (weak).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RefType {
    /// Deleting a referenced row fails; referenced non-root rows stay alive.
    #[default]
    Strong,
    /// The reference disappears with its target.
    Weak,
}

/// The type of a set member, map key or map value, with its constraints.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseType {
    /// The atomic type.
    pub atomic: AtomicType,
    /// The allowed values, if restricted.
    pub enum_values: Option<Set>,
    /// Lowest allowed integer.
    pub min_integer: Option<i64>,
    /// Highest allowed integer.
    pub max_integer: Option<i64>,
    /// Lowest allowed real.
    pub min_real: Option<f64>,
    /// Highest allowed real.
    pub max_real: Option<f64>,
    /// Shortest allowed string, in characters.
    pub min_length: Option<u64>,
    /// Longest allowed string, in characters.
    pub max_length: Option<u64>,
    /// The table a uuid refers to.
    pub ref_table: Option<String>,
    /// Strong or weak, meaningful only with `ref_table`.
    pub ref_type: RefType,
}

impl BaseType {
    /// An unconstrained base type.
    pub fn new(atomic: AtomicType) -> Self {
        Self {
            atomic,
            enum_values: None,
            min_integer: None,
            max_integer: None,
            min_real: None,
            max_real: None,
            min_length: None,
            max_length: None,
            ref_table: None,
            ref_type: RefType::Strong,
        }
    }

    fn from_json(json: &Json) -> Result<Self, String> {
        let obj = match json {
            Json::String(s) => {
                return AtomicType::parse(s)
                    .map(Self::new)
                    .ok_or_else(|| format!("unknown atomic type {s:?}"));
            }
            Json::Object(obj) => obj,
            other => {
                return Err(format!(
                    "a base type must be a string or object, not {other}"
                ));
            }
        };
        let ty = obj
            .get("type")
            .and_then(Json::as_str)
            .ok_or("a base type object needs a string \"type\"")?;
        let mut base =
            Self::new(AtomicType::parse(ty).ok_or_else(|| format!("unknown atomic type {ty:?}"))?);
        let int = |k: &str| -> Result<Option<i64>, String> {
            obj.get(k)
                .map(|v| {
                    v.as_i64()
                        .ok_or_else(|| format!("\"{k}\" must be an integer"))
                })
                .transpose()
        };
        let uint = |k: &str| -> Result<Option<u64>, String> {
            obj.get(k)
                .map(|v| {
                    v.as_u64()
                        .ok_or_else(|| format!("\"{k}\" must be a non-negative integer"))
                })
                .transpose()
        };
        let real = |k: &str| -> Result<Option<f64>, String> {
            obj.get(k)
                .map(|v| {
                    v.as_f64()
                        .ok_or_else(|| format!("\"{k}\" must be a number"))
                })
                .transpose()
        };
        base.min_integer = int("minInteger")?;
        base.max_integer = int("maxInteger")?;
        base.min_real = real("minReal")?;
        base.max_real = real("maxReal")?;
        base.min_length = uint("minLength")?;
        base.max_length = uint("maxLength")?;
        if let Some(e) = obj.get("enum") {
            let unbounded = ColumnType {
                key: Self::new(base.atomic),
                value: None,
                min: 0,
                max: None,
            };
            let set = match Value::from_json_typed(e, &unbounded)
                .map_err(|err| format!("bad \"enum\": {err}"))?
            {
                Value::Set(s) => s,
                _ => unreachable!("an unbounded set type coerces to a set"),
            };
            base.enum_values = Some(set);
        }
        if let Some(t) = obj.get("refTable") {
            if base.atomic != AtomicType::Uuid {
                return Err("\"refTable\" is only allowed on uuid".into());
            }
            base.ref_table = Some(
                t.as_str()
                    .ok_or("\"refTable\" must be a string")?
                    .to_owned(),
            );
        }
        if let Some(t) = obj.get("refType") {
            base.ref_type = match t.as_str() {
                Some("strong") => RefType::Strong,
                Some("weak") => RefType::Weak,
                _ => {
                    return Err(format!(
                        "\"refType\" must be \"strong\" or \"weak\", not {t}"
                    ));
                }
            };
        }
        Ok(base)
    }
}

/// A column type: a set of `key` (or a map from `key` to `value`) holding between
/// `min` and `max` elements.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnType {
    /// The set member or map key type.
    pub key: BaseType,
    /// The map value type; `None` for sets and scalars.
    pub value: Option<BaseType>,
    /// Fewest elements (0 or 1).
    pub min: u64,
    /// Most elements; `None` is `"unlimited"`.
    pub max: Option<u64>,
}

impl ColumnType {
    /// A scalar column of the given atomic type.
    pub fn scalar(atomic: AtomicType) -> Self {
        Self {
            key: BaseType::new(atomic),
            value: None,
            min: 1,
            max: Some(1),
        }
    }

    /// Exactly one atom, no value type: stored and sent as a bare atom.
    pub fn is_scalar(&self) -> bool {
        self.value.is_none() && self.min == 1 && self.max == Some(1)
    }

    /// Zero or one atom: absent is the empty set.
    pub fn is_optional(&self) -> bool {
        self.value.is_none() && self.min == 0 && self.max == Some(1)
    }

    /// A map column.
    pub fn is_map(&self) -> bool {
        self.value.is_some()
    }

    /// A set column that may hold more than one element.
    pub fn is_set(&self) -> bool {
        self.value.is_none() && self.max != Some(1)
    }

    /// The value of a column that was never set (what `initial` rows omit).
    pub fn default_value(&self) -> Value {
        if self.value.is_some() {
            Value::Map(Default::default())
        } else if self.min == 0 {
            Value::empty_set()
        } else {
            Value::Atom(self.key.atomic.default_atom())
        }
    }

    /// Parses the `"type"` member of a column.
    pub fn from_json(json: &Json) -> Result<Self, SchemaError> {
        Self::parse(json).map_err(SchemaError)
    }

    pub(crate) fn parse(json: &Json) -> Result<Self, String> {
        let obj = match json {
            Json::Object(obj) => obj,
            _ => {
                return Ok(Self {
                    key: BaseType::from_json(json)?,
                    ..Self::scalar(AtomicType::Integer)
                });
            }
        };
        let key = BaseType::from_json(obj.get("key").ok_or("a column type object needs \"key\"")?)
            .map_err(|e| format!("key: {e}"))?;
        let value = obj
            .get("value")
            .map(BaseType::from_json)
            .transpose()
            .map_err(|e| format!("value: {e}"))?;
        let min = match obj.get("min") {
            None => 1,
            Some(m) => match m.as_u64() {
                Some(n @ (0 | 1)) => n,
                _ => return Err(format!("\"min\" must be 0 or 1, not {m}")),
            },
        };
        let max = match obj.get("max") {
            None => Some(1),
            Some(Json::String(s)) if s == "unlimited" => None,
            Some(m) => match m.as_u64() {
                Some(n) if n >= 1 && n >= min => Some(n),
                _ => {
                    return Err(format!(
                        "\"max\" must be a positive integer ≥ min or \"unlimited\", not {m}"
                    ));
                }
            },
        };
        Ok(Self {
            key,
            value,
            min,
            max,
        })
    }
}

impl Atom {
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

impl Value {
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
                    Self::Atom(a) => std::iter::once(a.coerce(ty.key.atomic)?).collect(),
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
                    Ok(Self::Atom(set.into_iter().next().ok_or_else(|| {
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
