//! Operation lists for rows of non-root tables (`isRoot: false`), such as logical
//! switch and router ports.
//!
//! The server garbage-collects a non-root row as soon as no strong reference
//! points at it, at commit. So a child must be inserted in the same transaction
//! that adds it to its parent's column (an insert alone "succeeds" and the row is
//! gone), and the way to delete one is to drop the parent's reference: a direct
//! `delete` of a still-referenced row fails with a referential integrity
//! violation. These functions only build operations; send them with any client.

use std::sync::Arc;

use crate::protocol::datum::{Atom, Uuid, Value};
use crate::protocol::operation::{Condition, Insert, Mutate, Mutation, Operation, Wait};

/// The parent side of a reference: the `column` of the `table` rows matched by
/// `conditions`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentRef {
    /// Parent table, e.g. `Logical_Switch`.
    pub table: String,
    /// Selects the parent row(s).
    pub conditions: Vec<Condition>,
    /// The set-of-references column, e.g. `ports`.
    pub column: Arc<str>,
}

impl ParentRef {
    /// The parent with this uuid (what `ovn-nbctl` does: switch names are not unique).
    pub fn by_uuid(table: impl Into<String>, uuid: Uuid, column: impl Into<Arc<str>>) -> Self {
        Self {
            table: table.into(),
            conditions: vec![Condition::uuid_is(uuid)],
            column: column.into(),
        }
    }

    /// Whichever parent rows currently reference `child` in `column`: removal
    /// without knowing the parent.
    pub fn referencing(table: impl Into<String>, column: impl Into<Arc<str>>, child: Uuid) -> Self {
        let column = column.into();
        Self {
            table: table.into(),
            conditions: vec![Condition::includes(column.clone(), Value::set([child]))],
            column,
        }
    }
}

/// Inserts a child row and adds it to its parent's column, in one transaction:
/// `[precondition?, insert, mutate parent insert]`.
///
/// The parent references the child by the insert's `uuid-name` (set to `"child"`
/// if the insert has neither a `uuid-name` nor a client-chosen `uuid`), or by its
/// client-chosen uuid. The insert's uuid is the result at index 0 (or 1 with a
/// precondition), and the mutate's count says how many parents took it: 0 means
/// the parent is gone and the child was collected.
pub fn insert_child(
    parent: &ParentRef,
    mut child: Insert,
    precondition: Option<Wait>,
) -> Vec<Operation> {
    let reference = match (&child.uuid_name, child.uuid) {
        (Some(name), _) => Atom::named_uuid(name.as_str()),
        (None, Some(uuid)) => Atom::Uuid(uuid),
        (None, None) => {
            child.uuid_name = Some("child".into());
            Atom::named_uuid("child")
        }
    };
    precondition
        .map(Operation::from)
        .into_iter()
        .chain([
            child.into(),
            Mutate {
                table: parent.table.clone(),
                conditions: parent.conditions.clone(),
                mutations: vec![Mutation::insert(
                    parent.column.clone(),
                    Value::set([reference]),
                )],
            }
            .into(),
        ])
        .collect()
}

/// Drops the parent's reference to `child`, so the server collects it at commit:
/// `[precondition?, mutate parent delete]`. The mutate's count is the number of
/// parents matched (not whether the child was a member).
pub fn remove_child(parent: &ParentRef, child: Uuid, precondition: Option<Wait>) -> Vec<Operation> {
    precondition
        .map(Operation::from)
        .into_iter()
        .chain([Mutate {
            table: parent.table.clone(),
            conditions: parent.conditions.clone(),
            mutations: vec![Mutation::delete(parent.column.clone(), Value::set([child]))],
        }
        .into()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::row::Row;
    use serde_json::json;

    const LS: &str = "e75a0303-d68b-4a80-837d-722079cb8f29";
    const LSP: &str = "148aa517-2b8e-4530-90cb-07ac82408f16";

    fn wire(ops: &[Operation]) -> Vec<serde_json::Value> {
        ops.iter().map(Operation::to_json).collect()
    }

    #[test]
    fn insert_child_matches_ovn_nbctl_lsp_add() {
        let parent = ParentRef::by_uuid("Logical_Switch", LS.parse().unwrap(), "ports");
        let child = Insert::new("Logical_Switch_Port", Row::new().with("name", "vm3-eth0"))
            .uuid_name("rowb453ed6f_7025_4ac4_a8be_a883897207b4");
        assert_eq!(
            wire(&insert_child(&parent, child, None)),
            vec![
                json!({"uuid-name":"rowb453ed6f_7025_4ac4_a8be_a883897207b4","table":"Logical_Switch_Port","op":"insert",
                       "row":{"name":"vm3-eth0"}}),
                json!({"mutations":[["ports","insert",["set",[["named-uuid","rowb453ed6f_7025_4ac4_a8be_a883897207b4"]]]]],
                       "where":[["_uuid","==",["uuid",LS]]],"table":"Logical_Switch","op":"mutate"}),
            ]
        );
    }

    #[test]
    fn insert_child_with_guard_and_chosen_uuid() {
        let parent = ParentRef::by_uuid("Logical_Switch", LS.parse().unwrap(), "ports");
        let guard = Wait::absent("Logical_Switch_Port", vec![Condition::eq("name", "p")]);
        let ops = insert_child(
            &parent,
            Insert::new("Logical_Switch_Port", Row::new().with("name", "p"))
                .uuid(LSP.parse().unwrap()),
            Some(guard),
        );
        let w = wire(&ops);
        assert_eq!(w.len(), 3);
        assert_eq!(w[0]["op"], "wait");
        assert_eq!(w[1]["uuid"], LSP);
        assert_eq!(
            w[2]["mutations"],
            json!([["ports", "insert", ["set", [["uuid", LSP]]]]])
        );
        // No name and no uuid: a uuid-name is made up.
        let ops = insert_child(
            &parent,
            Insert::new("Logical_Switch_Port", Row::new()),
            None,
        );
        assert_eq!(wire(&ops)[0]["uuid-name"], "child");
        assert_eq!(
            wire(&ops)[1]["mutations"][0][2],
            json!(["set", [["named-uuid", "child"]]])
        );
    }

    #[test]
    fn remove_child_dereferences() {
        let lsp: Uuid = LSP.parse().unwrap();
        let by_uuid = ParentRef::by_uuid("Logical_Switch", LS.parse().unwrap(), "ports");
        assert_eq!(
            wire(&remove_child(&by_uuid, lsp, None)),
            vec![
                json!({"op":"mutate","table":"Logical_Switch","where":[["_uuid","==",["uuid",LS]]],
                        "mutations":[["ports","delete",["set",[["uuid",LSP]]]]]})
            ]
        );
        let anywhere = ParentRef::referencing("Logical_Switch", "ports", lsp);
        let guard = Wait::new(
            "Logical_Switch_Port",
            ["_uuid"],
            crate::protocol::operation::WaitUntil::NotEqual,
            vec![],
        )
        .filter(Condition::uuid_is(lsp));
        assert_eq!(
            wire(&remove_child(&anywhere, lsp, Some(guard))),
            vec![
                json!({"op":"wait","table":"Logical_Switch_Port","where":[["_uuid","==",["uuid",LSP]]],
                       "columns":["_uuid"],"until":"!=","rows":[],"timeout":0}),
                json!({"op":"mutate","table":"Logical_Switch","where":[["ports","includes",["set",[["uuid",LSP]]]]],
                       "mutations":[["ports","delete",["set",[["uuid",LSP]]]]]}),
            ]
        );
    }
}
