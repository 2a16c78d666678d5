//! Feeds arbitrary bytes, parsed as JSON, to every data-layer decoder: datums
//! (untyped and against every column type of the OVN NB schema), rows, schemas,
//! typed NB tables and `transact` results. None of them may panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use ovsdb_client::datum::Value;
use ovsdb_client::row::Row;
use ovsdb_client::schema::DatabaseSchema;

static NB: LazyLock<DatabaseSchema> = LazyLock::new(|| {
    DatabaseSchema::parse(include_str!("../../schemas/ovn-nb.ovsschema")).expect("pinned schema")
});

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(v) = Value::from_json(&json) {
        // What decodes must re-encode to JSON that decodes to the same value.
        assert_eq!(Value::from_json(&v.to_json()).as_ref(), Ok(&v));
    }
    for table in NB.tables.values() {
        for column in table.columns.values() {
            if let Ok(v) = Value::from_json_typed(&json, &column.ty) {
                let _ = v.validate(&column.ty);
                let mut diffed = column.ty.default_value();
                let _ = diffed.apply_diff(v, &column.ty);
            }
        }
        if let Ok(mut row) = Row::from_json_typed(&json, table) {
            row.fill_defaults(table);
        }
    }
    let _ = Row::from_json(&json);
    let _ = DatabaseSchema::from_json(&json);
});
