//! Checks a transaction against the schema before it is sent, so a bad value (a
//! typo in a column, a string where a uuid belongs, a VLAN tag out of range)
//! becomes a clear local error naming the operation, table and column instead of
//! a round trip and a server error.
//!
//! The checks mirror what ovsdb-server rejects at parse time: unknown tables and
//! columns, values of the wrong type or outside their constraints, writes to
//! immutable or implicit columns, mutators and comparisons that do not apply to
//! a column's type, and `named-uuid` references with no matching `uuid-name`.
//! Deferred checks (unique indexes, referential integrity) stay with the server.

use std::collections::BTreeSet;

use crate::protocol::datum::{Atom, Value};
use crate::protocol::operation::{Condition, Function, Mutation, Mutator, Operation};
use crate::protocol::row::Row;
use crate::protocol::schema::{DatabaseSchema, TableSchema};
use crate::protocol::types::{AtomicType, ColumnType};

/// An operation the server would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operation {index} ({op}){}: {reason}", table.as_ref().map(|t| format!(" on {t}")).unwrap_or_default())]
pub struct InvalidOperation {
    /// Position in the transaction.
    pub index: usize,
    /// The operation's name.
    pub op: &'static str,
    /// Its table, if it has one.
    pub table: Option<String>,
    /// What is wrong, naming the column.
    pub reason: String,
}

/// Checks every operation of a transaction against `schema`.
pub fn validate(operations: &[Operation], schema: &DatabaseSchema) -> Result<(), InvalidOperation> {
    let mut declared = BTreeSet::new();
    for op in operations {
        if let Operation::Insert(i) = op
            && let Some(name) = &i.uuid_name
        {
            declared.insert(name.as_str());
        }
    }
    let mut seen_names = BTreeSet::new();
    for (index, op) in operations.iter().enumerate() {
        let fail = |reason: String| InvalidOperation {
            index,
            op: op.name(),
            table: op.table().map(str::to_owned),
            reason,
        };
        let table = match op.table() {
            Some(name) => Some(
                schema
                    .table(name)
                    .ok_or_else(|| fail(format!("no table {name} in {}", schema.name)))?,
            ),
            None => None,
        };
        check_operation(op, table, &declared, &mut seen_names).map_err(fail)?;
    }
    Ok(())
}

fn check_operation<'a>(
    op: &'a Operation,
    table: Option<&TableSchema>,
    declared: &BTreeSet<&str>,
    seen_names: &mut BTreeSet<&'a str>,
) -> Result<(), String> {
    let Some(table) = table else {
        return Ok(());
    };
    let refs = |v: &Value| check_named_uuids(v, declared);
    match op {
        Operation::Insert(i) => {
            if let Some(name) = &i.uuid_name {
                if !is_identifier(name) {
                    return Err(format!(
                        "uuid-name {name:?} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)"
                    ));
                }
                if !seen_names.insert(name) {
                    return Err(format!("uuid-name {name:?} is used by an earlier insert"));
                }
            }
            check_row(table, &i.row, Write::Insert)?;
            i.row.iter().try_for_each(|(_, v)| refs(v))
        }
        Operation::Update(u) => {
            check_conditions(table, &u.conditions, declared)?;
            check_row(table, &u.row, Write::Update)?;
            u.row.iter().try_for_each(|(_, v)| refs(v))
        }
        Operation::Mutate(m) => {
            check_conditions(table, &m.conditions, declared)?;
            for mutation in &m.mutations {
                check_mutation(table, mutation)?;
                refs(&mutation.value)?;
            }
            Ok(())
        }
        Operation::Delete(d) => check_conditions(table, &d.conditions, declared),
        Operation::Select(s) => {
            check_conditions(table, &s.conditions, declared)?;
            s.columns
                .iter()
                .flatten()
                .try_for_each(|c| column(table, c).map(drop))
        }
        Operation::Wait(w) => {
            check_conditions(table, &w.conditions, declared)?;
            for c in &w.columns {
                column(table, c)?;
            }
            for row in &w.rows {
                for (name, value) in row.iter() {
                    if !w.columns.iter().any(|c| c == name) {
                        return Err(format!(
                            "wait row has column {name}, which is not in \"columns\""
                        ));
                    }
                    check_value(table, name, value)?;
                }
            }
            Ok(())
        }
        Operation::Commit { .. }
        | Operation::Abort
        | Operation::Comment(_)
        | Operation::Assert { .. } => Ok(()),
    }
}

#[derive(PartialEq)]
enum Write {
    Insert,
    Update,
}

fn column<'t>(table: &'t TableSchema, name: &str) -> Result<&'t ColumnType, String> {
    table
        .column(name)
        .map(|c| &c.ty)
        .ok_or_else(|| format!("no column {name} in table {}", table.name))
}

fn check_value(table: &TableSchema, name: &str, value: &Value) -> Result<(), String> {
    let ty = column(table, name)?;
    value
        .clone()
        .coerce(ty)
        .and_then(|v| v.validate(ty))
        .map_err(|e| format!("column {name}: {e}"))
}

fn check_row(table: &TableSchema, row: &Row, write: Write) -> Result<(), String> {
    for (name, value) in row.iter() {
        if name == "_uuid" || name == "_version" {
            return Err(format!("column {name} cannot be written"));
        }
        if write == Write::Update && table.columns.get(name).is_some_and(|c| !c.mutable) {
            return Err(format!("column {name} is immutable"));
        }
        check_value(table, name, value)?;
    }
    Ok(())
}

fn check_conditions(
    table: &TableSchema,
    conditions: &[Condition],
    declared: &BTreeSet<&str>,
) -> Result<(), String> {
    for condition in conditions {
        let Condition::Clause {
            column: name,
            function,
            value,
        } = condition
        else {
            continue;
        };
        let ty = column(table, name)?;
        check_named_uuids(value, declared)?;
        let numeric = matches!(ty.key.atomic, AtomicType::Integer | AtomicType::Real);
        let ordered = matches!(
            function,
            Function::Lt | Function::Le | Function::Ge | Function::Gt
        );
        if ordered && !(numeric && ty.value.is_none() && ty.max == Some(1)) {
            return Err(format!(
                "\"{}\" applies only to integer and real columns, not to column {name}",
                function.as_str()
            ));
        }
        // Comparisons take the column's type, except that includes/excludes take
        // any number of elements.
        let value_ty = match function {
            Function::Includes | Function::Excludes => unbounded(ty),
            _ => ty.clone(),
        };
        value
            .clone()
            .coerce(&value_ty)
            .map_err(|e| format!("condition on column {name}: {e}"))?;
    }
    Ok(())
}

fn unbounded(ty: &ColumnType) -> ColumnType {
    ColumnType {
        min: 0,
        max: None,
        ..ty.clone()
    }
}

fn check_mutation(table: &TableSchema, mutation: &Mutation) -> Result<(), String> {
    let name = &*mutation.column;
    let col = table
        .columns
        .get(name)
        .ok_or_else(|| format!("no mutable column {name} in table {}", table.name))?;
    if !col.mutable {
        return Err(format!("column {name} is immutable"));
    }
    let ty = &col.ty;
    let bad = |what: &str| {
        Err(format!(
            "\"{}\" does not apply to column {name} ({what})",
            mutation.mutator.as_str()
        ))
    };
    let value_ty = match mutation.mutator {
        Mutator::Add | Mutator::Sub | Mutator::Mul | Mutator::Div | Mutator::Rem => {
            if ty.value.is_some() {
                return bad("a map");
            }
            match ty.key.atomic {
                AtomicType::Integer => {}
                AtomicType::Real if mutation.mutator != Mutator::Rem => {}
                other => return bad(other.as_str()),
            }
            // The operand is one atom of the element type.
            ColumnType::scalar(ty.key.atomic)
        }
        Mutator::Insert | Mutator::Delete => {
            if ty.is_scalar() {
                return bad("a scalar");
            }
            let as_map_keys = mutation.mutator == Mutator::Delete
                && ty.value.is_some()
                && !matches!(mutation.value, Value::Map(_));
            if as_map_keys {
                // Deleting map keys given as a set of keys.
                ColumnType {
                    value: None,
                    ..unbounded(ty)
                }
            } else {
                unbounded(ty)
            }
        }
    };
    mutation
        .value
        .clone()
        .coerce(&value_ty)
        .map_err(|e| format!("mutation of column {name}: {e}"))
        .map(drop)
}

fn check_named_uuids(value: &Value, declared: &BTreeSet<&str>) -> Result<(), String> {
    let atoms: Box<dyn Iterator<Item = &Atom>> = match value {
        Value::Map(m) => Box::new(m.iter().flat_map(|(k, v)| [k, v])),
        other => Box::new(other.set_elements().iter()),
    };
    for atom in atoms {
        if let Atom::NamedUuid(n) = atom
            && !declared.contains(&**n)
        {
            return Err(format!(
                "[\"named-uuid\",{n:?}] names no insert's uuid-name in this transaction"
            ));
        }
    }
    Ok(())
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::datum::Uuid;
    use crate::protocol::operation::{Delete, Insert, Mutate, Select, Update, Wait, WaitUntil};

    fn nb() -> DatabaseSchema {
        DatabaseSchema::parse(include_str!("../../schemas/ovn-nb.ovsschema")).unwrap()
    }

    fn reason(ops: Vec<Operation>) -> String {
        validate(&ops, &nb()).unwrap_err().to_string()
    }

    #[test]
    fn a_well_formed_port_transaction_passes() {
        let switch = Uuid::from_u128(1);
        let ops = vec![
            Wait::absent("Logical_Switch_Port", vec![Condition::eq("name", "p")]).into(),
            Insert::new(
                "Logical_Switch_Port",
                Row::new()
                    .with("name", "p")
                    .with("addresses", "0a:00:00:00:00:05 10.0.0.5")
                    .with("tag_request", Value::set([100]))
                    .with("options", Value::map([("requested-chassis", "a")])),
            )
            .uuid_name("new_lsp")
            .into(),
            Mutate::new("Logical_Switch")
                .filter(Condition::uuid_is(switch))
                .mutation(Mutation::insert(
                    "ports",
                    Value::set([Atom::named_uuid("new_lsp")]),
                ))
                .into(),
            Mutate::new("Logical_Switch_Port")
                .filter(Condition::eq("name", "p"))
                .mutation(Mutation::delete(
                    "options",
                    Value::set(["requested-chassis"]),
                ))
                .mutation(Mutation::add("tag_request", 1))
                .into(),
            Select::new("Logical_Switch_Port")
                .filter(Condition::includes(
                    "external_ids",
                    Value::map([("pod", "ns/p")]),
                ))
                .filter(Condition::lt("tag_request", 5))
                .columns(["_uuid", "name"])
                .into(),
            Operation::comment("ok"),
        ];
        validate(&ops, &nb()).unwrap();
    }

    #[test]
    fn bad_operations_are_named() {
        assert_eq!(
            reason(vec![Delete::new("Logical_Swich").into()]),
            "operation 0 (delete) on Logical_Swich: no table Logical_Swich in OVN_Northbound"
        );
        assert_eq!(
            reason(vec![
                Operation::comment("c"),
                Insert::new("Logical_Switch_Port", Row::new().with("nam", "x")).into()
            ]),
            "operation 1 (insert) on Logical_Switch_Port: no column nam in table Logical_Switch_Port"
        );
        assert_eq!(
            reason(vec![
                Insert::new("Logical_Switch_Port", Row::new().with("tag_request", 5000)).into()
            ]),
            "operation 0 (insert) on Logical_Switch_Port: column tag_request: 5000 is not in the valid range 0 to 4095"
        );
        assert_eq!(
            reason(vec![
                Insert::new("Logical_Switch", Row::new().with("ports", "not-a-uuid")).into()
            ]),
            "operation 0 (insert) on Logical_Switch: column ports: expected uuid, found string \"not-a-uuid\""
        );
        assert!(
            reason(vec![
                Insert::new("ACL", Row::new().with("action", "permit")).into()
            ])
            .contains("allowed values")
        );
        assert!(
            reason(vec![
                Insert::new("ACL", Row::new().with("_uuid", Value::uuid(Uuid::nil()))).into()
            ])
            .contains("cannot be written")
        );
        assert!(
            reason(vec![
                Insert::new("ACL", Row::new()).uuid_name("bad-name").into()
            ])
            .contains("not an identifier")
        );
        assert!(
            reason(vec![
                Insert::new("ACL", Row::new()).uuid_name("a").into(),
                Insert::new("ACL", Row::new()).uuid_name("a").into()
            ])
            .contains("earlier insert")
        );
        assert!(
            reason(vec![
                Mutate::new("Logical_Switch")
                    .mutation(Mutation::insert(
                        "ports",
                        Value::set([Atom::named_uuid("nowhere")])
                    ))
                    .into()
            ])
            .contains("names no insert")
        );
        assert!(
            reason(vec![
                Mutate::new("Logical_Switch")
                    .mutation(Mutation::add("name", "x"))
                    .into()
            ])
            .contains("string")
        );
        assert!(
            reason(vec![
                Mutate::new("Logical_Switch")
                    .mutation(Mutation::insert("name", "x"))
                    .into()
            ])
            .contains("scalar")
        );
        assert!(
            reason(vec![
                Mutate::new("Logical_Switch")
                    .mutation(Mutation::add("external_ids", 1))
                    .into()
            ])
            .contains("a map")
        );
        assert!(
            reason(vec![
                Select::new("Logical_Switch")
                    .filter(Condition::lt("name", "x"))
                    .into()
            ])
            .contains("only to integer")
        );
        assert!(
            reason(vec![
                Select::new("Logical_Switch")
                    .filter(Condition::eq("name", 1))
                    .into()
            ])
            .contains("condition on column name")
        );
        assert!(
            reason(vec![Select::new("Logical_Switch").columns(["nope"]).into()])
                .contains("no column nope")
        );
        let wait = Wait::new(
            "Logical_Switch",
            ["name"],
            WaitUntil::Equal,
            vec![Row::new().with("ports", Value::empty_set())],
        );
        assert!(reason(vec![wait.into()]).contains("not in \"columns\""));
    }

    #[test]
    fn immutable_columns_cannot_be_updated() {
        let vs = DatabaseSchema::parse(include_str!("../../schemas/vswitch.ovsschema")).unwrap();
        let (table, column) = vs
            .tables
            .values()
            .flat_map(|t| t.columns.values().map(move |c| (t, c)))
            .find(|(_, c)| !c.mutable)
            .expect("vswitch has immutable columns");
        let row = Row::new().with(column.name.clone(), column.ty.default_value());
        let err = validate(&[Update::new(table.name.clone(), row).into()], &vs).unwrap_err();
        assert!(err.reason.contains("immutable"), "{err}");
    }
}
