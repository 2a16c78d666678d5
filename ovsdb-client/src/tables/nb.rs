//! Typed rows of the OVN Northbound database, generated at build time from the
//! pinned `schemas/ovn-nb.ovsschema` (OVN 23.03, `OVN_Northbound` 7.0.0).
//!
//! A server with a newer schema is fine: extra columns and tables are ignored,
//! and only a missing or retyped column fails, naming the table and column.

include!(concat!(env!("OUT_DIR"), "/ovn_nb.rs"));

use crate::protocol::nonroot::{ParentRef, insert_child, remove_child};
use crate::protocol::operation::{Insert, Operation, Wait};
use crate::protocol::table::insert_row;

/// A `uuid-name` unique to `name` and valid as an OVSDB identifier.
fn uuid_name_for(prefix: &str, name: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(prefix.len() + 1 + 2 * name.len());
    s.push_str(prefix);
    s.push('_');
    for b in name.bytes() {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// The insert for a new child row (see [`insert_row`]), by a `uuid-name` derived
/// from the row's name when it has no client-chosen uuid (unique per name, so
/// several ports can be added in one transaction).
fn child_insert<T: Table>(row: &T, prefix: &str, name: &str) -> Insert {
    let insert = insert_row(row, schema());
    if row.uuid().is_nil() {
        insert.uuid_name(uuid_name_for(prefix, name))
    } else {
        insert
    }
}

/// Creates `port` on the switch `switch`: the port insert plus the
/// `Logical_Switch.ports` mutate, in one transaction, as `ovn-nbctl lsp-add` does.
/// A non-nil `port.uuid` is used as the client-chosen row uuid. `precondition`
/// goes first, e.g. [`Wait::absent`] on the port name to make a replay fail with
/// `timed out` instead of a unique-index violation.
pub fn add_switch_port(
    switch: Uuid,
    port: &LogicalSwitchPort,
    precondition: Option<Wait>,
) -> Vec<Operation> {
    insert_child(
        &ParentRef::by_uuid(LogicalSwitch::TABLE, switch, "ports"),
        child_insert(port, "lsp", &port.name),
        precondition,
    )
}

/// Deletes the port `port` of switch `switch` by dropping it from
/// `Logical_Switch.ports`; the server garbage-collects the row.
pub fn remove_switch_port(switch: Uuid, port: Uuid, precondition: Option<Wait>) -> Vec<Operation> {
    remove_child(
        &ParentRef::by_uuid(LogicalSwitch::TABLE, switch, "ports"),
        port,
        precondition,
    )
}

/// Creates `port` on the router `router` (insert plus `Logical_Router.ports`
/// mutate); see [`add_switch_port`].
pub fn add_router_port(
    router: Uuid,
    port: &LogicalRouterPort,
    precondition: Option<Wait>,
) -> Vec<Operation> {
    insert_child(
        &ParentRef::by_uuid(LogicalRouter::TABLE, router, "ports"),
        child_insert(port, "lrp", &port.name),
        precondition,
    )
}

/// Deletes the port `port` of router `router` by dropping it from
/// `Logical_Router.ports`.
pub fn remove_router_port(router: Uuid, port: Uuid, precondition: Option<Wait>) -> Vec<Operation> {
    remove_child(
        &ParentRef::by_uuid(LogicalRouter::TABLE, router, "ports"),
        port,
        precondition,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::LogicalSwitchPort;
    use crate::protocol::datum::Uuid;
    use crate::protocol::operation::Operation;
    use crate::protocol::table::update_ops;

    #[test]
    fn update_ops_write_only_what_changed() {
        let old = LogicalSwitchPort {
            uuid: Uuid::from_u128(7),
            name: "p".into(),
            addresses: BTreeSet::from(["0a:00:00:00:00:05 10.0.0.5".to_string()]),
            ..Default::default()
        };
        assert!(update_ops(&old, &old.clone(), true).is_empty());
        let mut new = old.clone();
        new.addresses = BTreeSet::from(["0a:00:00:00:00:06 10.0.0.6".to_string()]);
        new.external_ids.insert("pod".into(), "ns/p".into());
        let wire: Vec<_> = update_ops(&old, &new, true)
            .iter()
            .map(Operation::to_json)
            .collect();
        let uuid = json!(["uuid", "00000000-0000-0000-0000-000000000007"]);
        assert_eq!(
            wire,
            vec![
                json!({"op":"wait","table":"Logical_Switch_Port","where":[["_uuid","==",uuid]],"timeout":0,
                       "columns":["addresses","external_ids"],"until":"==",
                       "rows":[{"addresses":["set",["0a:00:00:00:00:05 10.0.0.5"]],"external_ids":["map",[]]}]}),
                json!({"op":"update","table":"Logical_Switch_Port","where":[["_uuid","==",uuid]],
                       "row":{"addresses":["set",["0a:00:00:00:00:06 10.0.0.6"]],"external_ids":["map",[["pod","ns/p"]]]}}),
            ]
        );
        assert_eq!(update_ops(&old, &new, false).len(), 1);
    }
}
