//! Feeds arbitrary bytes, parsed as JSON, to every data-layer decoder: datums
//! (untyped and against every column type of the OVN NB schema), rows, typed NB
//! and `_Server` rows, schemas, error objects, `transact` results and the schema
//! checks of operations built from decoded rows; `transact` results and
//! `<table-updates2>` also through the fast paths that decode straight from JSON
//! text, which must agree with the tree-based decoders. None of them may panic,
//! and whatever decodes must re-encode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ovsdb_client::protocol::datum::Value;
use ovsdb_client::tables::nb;
use ovsdb_client::protocol::operation::{
    Delete, Insert, Mutate, Operation, OvsdbError, Select, Update, Wait, WaitUntil,
    parse_raw_results, parse_results,
};
use ovsdb_client::protocol::row::Row;
use ovsdb_client::protocol::schema::DatabaseSchema;
use ovsdb_client::tables::server_db;
use ovsdb_client::protocol::table::Table;
use ovsdb_client::protocol::validate::validate;

fn decode(json: &serde_json::Value) {
    if let Ok(v) = Value::from_json(json) {
        assert_eq!(Value::from_json(&v.to_json()).as_ref(), Ok(&v));
    }
    let schema = nb::schema();
    for table in schema.tables.values() {
        for column in table.columns.values() {
            if let Ok(v) = Value::from_json_typed(json, &column.ty) {
                let _ = v.validate(&column.ty);
                let mut diffed = column.ty.default_value();
                let _ = diffed.apply_diff(v, &column.ty);
            }
        }
        if let Ok(mut row) = Row::from_json_typed(json, table) {
            row.fill_defaults(table);
            if table.name == nb::LogicalSwitchPort::TABLE
                && let Ok(lsp) = nb::LogicalSwitchPort::from_uuid_row(Default::default(), &row)
            {
                let back = lsp.to_row();
                assert_eq!(
                    nb::LogicalSwitchPort::from_uuid_row(lsp.uuid, &back).as_ref(),
                    Ok(&lsp)
                );
            }
        }
    }
    if let Ok(row) =
        Row::from_json_typed(json, server_db::schema().table("Database").expect("pinned"))
    {
        let _ = server_db::Database::from_uuid_row(Default::default(), &row);
    }
    if let Ok(row) = Row::from_json(json) {
        // Untyped rows, as a caller might build them, through the schema checks.
        for table in schema.tables.keys() {
            let ops = [
                Insert::new(table.as_str(), row.clone()).into(),
                Update::new(table.as_str(), row.clone()).into(),
                Wait::new(
                    table.as_str(),
                    row.iter().map(|(k, _)| k),
                    WaitUntil::Equal,
                    vec![row.clone()],
                )
                .into(),
            ];
            let _ = validate(&ops, schema);
        }
    }
    let _ = DatabaseSchema::from_json(json);
    let _ = OvsdbError::from_json(json);
    let ops: Vec<Operation> = vec![
        Insert::new("Logical_Switch_Port", Row::new()).into(),
        Select::new("Logical_Switch_Port").into(),
        Update::new("Logical_Switch", Row::new()).into(),
        Mutate::new("Logical_Switch").into(),
        Delete::new("ACL").into(),
        Wait::new("NB_Global", ["name"], WaitUntil::Equal, vec![]).into(),
        Operation::Commit { durable: false },
    ];
    let raw = serde_json::value::to_raw_value(json).expect("a value re-encodes");
    for n in 0..=ops.len() {
        let tree = parse_results(&ops[..n], json, Some(schema));
        let _ = parse_results(&ops[..n], json, None);
        // The fast path agrees with the tree path whenever either succeeds.
        let text = parse_raw_results(&ops[..n], &raw, Some(schema));
        if tree.is_ok() || text.is_ok() {
            assert_eq!(text, tree);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        decode(&json);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        ovsdb_client::runtime::fuzz_updates2(nb::schema(), text);
        ovsdb_client::runtime::fuzz_notification(nb::schema(), text);
    }
});
