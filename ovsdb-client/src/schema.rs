//! Database schemas (`.ovsschema`, or the reply to `get_schema`), per RFC 7047 §3.2.
//!
//! Everything the server may omit gets its RFC default here, so callers never
//! re-derive it: `mutable` defaults to true, `min`/`max` to 1, `refType` to strong,
//! and `isRoot` follows the compatibility rule (if no table says `isRoot`, every
//! table is a root; otherwise an omitted `isRoot` means false). The implicit
//! `_uuid` and `_version` columns are reachable through [`TableSchema::column`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use serde_json::Value as Json;

use crate::datum::{Atom, Set, Uuid, Value};

/// A schema that does not follow RFC 7047 §3.2; the message names the table and
/// column at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid OVSDB schema: {0}")]
pub struct SchemaError(String);

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

    fn parse(json: &Json) -> Result<Self, String> {
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

/// One column of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSchema {
    /// Column name, shared with every decoded row's key.
    pub name: Arc<str>,
    /// Its type.
    pub ty: ColumnType,
    /// Not persisted to disk.
    pub ephemeral: bool,
    /// Whether `update`/`mutate` may change it after insert.
    pub mutable: bool,
}

impl ColumnSchema {
    fn from_json(name: &str, json: &Json) -> Result<Self, String> {
        let obj = json.as_object().ok_or("a column must be an object")?;
        let ty = ColumnType::parse(obj.get("type").ok_or("missing \"type\"")?)?;
        let flag = |k: &str, default: bool| -> Result<bool, String> {
            obj.get(k)
                .map(|v| {
                    v.as_bool()
                        .ok_or_else(|| format!("\"{k}\" must be a boolean"))
                })
                .transpose()
                .map(|v| v.unwrap_or(default))
        };
        Ok(Self {
            name: name.into(),
            ty,
            ephemeral: flag("ephemeral", false)?,
            mutable: flag("mutable", true)?,
        })
    }
}

/// The implicit `_uuid` column every table has.
pub(crate) static UUID_COLUMN: LazyLock<ColumnSchema> = LazyLock::new(|| ColumnSchema {
    name: "_uuid".into(),
    ty: ColumnType::scalar(AtomicType::Uuid),
    ephemeral: false,
    mutable: false,
});

static VERSION_COLUMN: LazyLock<ColumnSchema> = LazyLock::new(|| ColumnSchema {
    name: "_version".into(),
    ty: ColumnType::scalar(AtomicType::Uuid),
    ephemeral: false,
    mutable: false,
});

/// One table of a database.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    /// Table name.
    pub name: String,
    /// Declared columns (without `_uuid` and `_version`).
    pub columns: BTreeMap<String, ColumnSchema>,
    /// Row limit, if any.
    pub max_rows: Option<u64>,
    /// Whether rows live without being referenced; non-root rows are garbage
    /// collected when no strong reference points at them. Already resolved with
    /// the RFC compatibility rule.
    pub is_root: bool,
    /// Unique indexes, each a list of column names.
    pub indexes: Vec<Vec<String>>,
}

impl TableSchema {
    /// A declared column, or the implicit `_uuid`/`_version`.
    pub fn column(&self, name: &str) -> Option<&ColumnSchema> {
        match name {
            "_uuid" => Some(&UUID_COLUMN),
            "_version" => Some(&VERSION_COLUMN),
            _ => self.columns.get(name),
        }
    }

    fn from_json(name: &str, json: &Json) -> Result<(Self, Option<bool>), String> {
        let obj = json.as_object().ok_or("a table must be an object")?;
        let cols = obj
            .get("columns")
            .and_then(Json::as_object)
            .ok_or("missing \"columns\" object")?;
        let mut columns = BTreeMap::new();
        for (cname, cjson) in cols {
            let col = ColumnSchema::from_json(cname, cjson)
                .map_err(|e| format!("column {cname}: {e}"))?;
            columns.insert(cname.clone(), col);
        }
        let max_rows = obj
            .get("maxRows")
            .map(|v| {
                v.as_u64()
                    .filter(|n| *n >= 1)
                    .ok_or("\"maxRows\" must be a positive integer")
            })
            .transpose()?;
        let is_root = obj
            .get("isRoot")
            .map(|v| v.as_bool().ok_or("\"isRoot\" must be a boolean"))
            .transpose()?;
        let mut indexes = Vec::new();
        if let Some(ix) = obj.get("indexes") {
            for index in ix.as_array().ok_or("\"indexes\" must be an array")? {
                let cols = index
                    .as_array()
                    .ok_or("each index must be an array of column names")?
                    .iter()
                    .map(|c| {
                        let c = c.as_str().ok_or("index column names must be strings")?;
                        if c != "_uuid" && !columns.contains_key(c) {
                            return Err(format!("index names unknown column {c:?}"));
                        }
                        Ok(c.to_owned())
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                if cols.is_empty() {
                    return Err("an index must name at least one column".into());
                }
                indexes.push(cols);
            }
        }
        Ok((
            Self {
                name: name.to_owned(),
                columns,
                max_rows,
                is_root: is_root.unwrap_or(false),
                indexes,
            },
            is_root,
        ))
    }
}

/// A whole database schema.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseSchema {
    /// Database name, e.g. `OVN_Northbound`.
    pub name: String,
    /// Schema version (`x.y.z`); optional on the wire.
    pub version: Option<String>,
    /// Checksum, if present.
    pub cksum: Option<String>,
    /// Tables by name.
    pub tables: BTreeMap<String, TableSchema>,
}

impl DatabaseSchema {
    /// Parses a schema from its JSON text (an `.ovsschema` file).
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        let json: Json =
            serde_json::from_str(text).map_err(|e| SchemaError(format!("not JSON: {e}")))?;
        Self::from_json(&json)
    }

    /// Parses a schema from JSON (e.g. a `get_schema` result).
    pub fn from_json(json: &Json) -> Result<Self, SchemaError> {
        let obj = json
            .as_object()
            .ok_or_else(|| SchemaError("a schema must be an object".into()))?;
        let name = obj
            .get("name")
            .and_then(Json::as_str)
            .ok_or_else(|| SchemaError("missing string \"name\"".into()))?
            .to_owned();
        let opt_str = |k: &str| -> Result<Option<String>, SchemaError> {
            obj.get(k)
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| SchemaError(format!("\"{k}\" must be a string")))
                })
                .transpose()
        };
        let version = opt_str("version")?;
        let cksum = opt_str("cksum")?;
        let tjson = obj
            .get("tables")
            .and_then(Json::as_object)
            .ok_or_else(|| SchemaError(format!("database {name}: missing \"tables\" object")))?;
        let mut tables = BTreeMap::new();
        let mut any_is_root = false;
        for (tname, t) in tjson {
            let (table, is_root) = TableSchema::from_json(tname, t)
                .map_err(|e| SchemaError(format!("table {tname}: {e}")))?;
            any_is_root |= is_root.is_some();
            tables.insert(tname.clone(), table);
        }
        if !any_is_root {
            for t in tables.values_mut() {
                t.is_root = true;
            }
        }
        for t in tables.values() {
            for c in t.columns.values() {
                for base in std::iter::once(&c.ty.key).chain(c.ty.value.as_ref()) {
                    if let Some(r) = &base.ref_table
                        && !tables.contains_key(r)
                    {
                        return Err(SchemaError(format!(
                            "table {} column {}: refTable {r:?} is not a table of {name}",
                            t.name, c.name
                        )));
                    }
                }
            }
        }
        Ok(Self {
            name,
            version,
            cksum,
            tables,
        })
    }

    /// A table by name.
    pub fn table(&self, name: &str) -> Option<&TableSchema> {
        self.tables.get(name)
    }
}

impl std::str::FromStr for DatabaseSchema {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, SchemaError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NB: &str = include_str!("../schemas/ovn-nb.ovsschema");
    const SB: &str = include_str!("../schemas/ovn-sb.ovsschema");
    const VSWITCH: &str = include_str!("../schemas/vswitch.ovsschema");

    #[test]
    fn ovn_nb_roots_follow_the_compatibility_rule() {
        let s = DatabaseSchema::parse(NB).unwrap();
        assert_eq!(s.name, "OVN_Northbound");
        assert_eq!(s.version.as_deref(), Some("7.0.0"));
        assert_eq!(s.tables.len(), 30);
        let roots: Vec<&str> = s
            .tables
            .values()
            .filter(|t| t.is_root)
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(
            roots,
            [
                "Address_Set",
                "BFD",
                "Chassis_Template_Var",
                "Copp",
                "DHCP_Options",
                "DNS",
                "HA_Chassis_Group",
                "Load_Balancer",
                "Load_Balancer_Group",
                "Logical_Router",
                "Logical_Switch",
                "Meter",
                "Mirror",
                "NB_Global",
                "Port_Group",
                "Static_MAC_Binding"
            ]
        );
        assert!(!s.tables["Connection"].is_root);
        assert!(!s.tables["SSL"].is_root);
    }

    #[test]
    fn ovn_nb_column_details() {
        let s = DatabaseSchema::parse(NB).unwrap();
        let lsp = &s.tables["Logical_Switch_Port"];
        assert_eq!(lsp.indexes, vec![vec!["name".to_string()]]);
        assert!(lsp.column("_uuid").unwrap().ty.is_scalar());
        let addresses = &lsp.columns["addresses"].ty;
        assert!(addresses.is_set() && addresses.min == 0 && addresses.max.is_none());
        let tag = &lsp.columns["tag_request"].ty;
        assert!(tag.is_optional());
        assert_eq!(
            (tag.key.min_integer, tag.key.max_integer),
            (Some(0), Some(4095))
        );
        let dhcp = &lsp.columns["dhcpv4_options"].ty.key;
        assert_eq!(dhcp.ref_table.as_deref(), Some("DHCP_Options"));
        assert_eq!(dhcp.ref_type, RefType::Weak);
        let ports = &s.tables["Logical_Switch"].columns["ports"].ty.key;
        assert_eq!(ports.ref_type, RefType::Strong);
        assert!(s.tables["Logical_Switch"].indexes.is_empty());
        assert!(lsp.columns["name"].mutable);
        let acl_action = &s.tables["ACL"].columns["action"].ty.key;
        assert!(
            acl_action
                .enum_values
                .as_ref()
                .unwrap()
                .contains(&Atom::from("allow-related"))
        );
        assert!(
            s.tables["Logical_Switch_Port"].columns["options"]
                .ty
                .is_map()
        );
    }

    #[test]
    fn parses_sb_and_vswitch() {
        let sb = DatabaseSchema::parse(SB).unwrap();
        assert_eq!(sb.name, "OVN_Southbound");
        let vs = DatabaseSchema::parse(VSWITCH).unwrap();
        assert_eq!(vs.name, "Open_vSwitch");
        // vswitch has immutable and ephemeral columns and object-form base types.
        assert!(
            vs.tables
                .values()
                .flat_map(|t| t.columns.values())
                .any(|c| !c.mutable)
        );
        assert!(
            vs.tables
                .values()
                .flat_map(|t| t.columns.values())
                .any(|c| c.ephemeral)
        );
        assert!(vs.tables["Open_vSwitch"].is_root);
        assert!(!vs.tables["Port"].is_root);
    }

    #[test]
    fn all_roots_when_no_table_says_is_root() {
        let s = DatabaseSchema::from_json(&json!({
            "name": "t", "tables": {"A": {"columns": {}}, "B": {"columns": {"x": {"type": "integer"}}}}
        }))
        .unwrap();
        assert!(s.tables.values().all(|t| t.is_root));
        assert_eq!(s.version, None);
        assert_eq!(
            s.tables["B"].columns["x"].ty.default_value(),
            Value::from(0)
        );
    }

    #[test]
    fn errors_name_table_and_column() {
        let err = DatabaseSchema::from_json(&json!({
            "name": "t", "tables": {"A": {"columns": {"x": {"type": {"key": "int"}}}}}
        }))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid OVSDB schema: table A: column x: key: unknown atomic type \"int\""
        );
        let err = DatabaseSchema::from_json(&json!({
            "name": "t", "tables": {"A": {"columns": {"r": {"type": {"key": {"type": "uuid", "refTable": "Nope"}}}}}}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("refTable \"Nope\""), "{err}");
        for bad in [
            json!(null),
            json!({"name": 1}),
            json!({"name": "x"}),
            json!({"name": "x", "tables": {"A": {}}}),
        ] {
            assert!(DatabaseSchema::from_json(&bad).is_err());
        }
    }
}
