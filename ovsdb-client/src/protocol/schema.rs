//! Database schemas (`.ovsschema`, or the reply to `get_schema`), per RFC 7047 §3.2.
//!
//! Everything the server may omit gets its RFC default here, so callers never
//! re-derive it: `mutable` defaults to true, `min`/`max` to 1, `refType` to strong,
//! and `isRoot` follows the compatibility rule (if no table says `isRoot`, every
//! table is a root; otherwise an omitted `isRoot` means false). The implicit
//! `_uuid` and `_version` columns are reachable through [`TableSchema::column`].

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use serde_json::Value as Json;

use super::types::{AtomicType, ColumnType, SchemaError};

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
    use crate::protocol::datum::{Atom, Value};
    use crate::protocol::types::RefType;
    use serde_json::json;

    const NB: &str = include_str!("../../schemas/ovn-nb.ovsschema");
    const SB: &str = include_str!("../../schemas/ovn-sb.ovsschema");
    const VSWITCH: &str = include_str!("../../schemas/vswitch.ovsschema");

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
