//! Property tests of the data model: JSON round trips, schema-typed decoding of
//! the forms the server sends, update2 diffs, and typed NB rows; and the typed
//! tables and port helpers against a real ovsdb-server, driven with the OVS
//! `ovsdb-client` tool so only this crate's data layer is under test.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use ovsdb_client::protocol::datum::{Atom, Map, Set, Uuid, Value};
use ovsdb_client::protocol::operation::{
    Condition, ErrorKind, Operation, OperationResult, Select, TransactError, Wait, parse_results,
    transact_params,
};
use ovsdb_client::protocol::row::{Row, RowError};
use ovsdb_client::protocol::table::{Table, update_ops};
use ovsdb_client::protocol::types::{AtomicType, BaseType, ColumnType};
use ovsdb_client::tables::nb::{self, LogicalRouterPort, LogicalSwitchPort};
use ovsdb_client::tables::server_db::Database;
use ovsdb_client::tables::vswitch::{Bridge, Interface};
use proptest::prelude::*;
use serde_json::json;

fn atomic_type() -> impl Strategy<Value = AtomicType> {
    prop_oneof![
        Just(AtomicType::Integer),
        Just(AtomicType::Real),
        Just(AtomicType::Boolean),
        Just(AtomicType::String),
        Just(AtomicType::Uuid),
    ]
}

fn real() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("JSON has no NaN or infinity", |r| r.is_finite())
}

fn atom_of(ty: AtomicType) -> BoxedStrategy<Atom> {
    match ty {
        AtomicType::Integer => any::<i64>().prop_map(Atom::Integer).boxed(),
        AtomicType::Real => real().prop_map(Atom::Real).boxed(),
        AtomicType::Boolean => any::<bool>().prop_map(Atom::Boolean).boxed(),
        AtomicType::String => any::<String>().prop_map(Atom::from).boxed(),
        AtomicType::Uuid => any::<u128>()
            .prop_map(|n| Atom::Uuid(Uuid::from_u128(n)))
            .boxed(),
    }
}

fn any_atom() -> impl Strategy<Value = Atom> {
    prop_oneof![
        atomic_type().prop_flat_map(atom_of),
        "[a-z_][a-z0-9_]{0,12}".prop_map(Atom::named_uuid),
    ]
}

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any_atom().prop_map(Value::Atom),
        prop::collection::vec(any_atom(), 0..6).prop_map(|v| Value::Set(v.into_iter().collect())),
        prop::collection::vec((any_atom(), any_atom()), 0..6)
            .prop_map(|v| Value::Map(v.into_iter().collect())),
    ]
}

fn column_type() -> impl Strategy<Value = ColumnType> {
    (
        atomic_type(),
        prop::option::of(atomic_type()),
        0u64..=1,
        prop_oneof![Just(Some(1u64)), Just(Some(3)), Just(None)],
    )
        .prop_map(|(key, value, min, max)| ColumnType {
            key: BaseType::new(key),
            value: value.map(BaseType::new),
            min,
            // A map or set of at most one with min 1 is still a valid type.
            max,
        })
}

/// A column type and a canonical value of that type.
fn typed_value() -> impl Strategy<Value = (ColumnType, Value)> {
    column_type().prop_flat_map(|ty| {
        let max = ty.max.unwrap_or(5) as usize;
        let min = ty.min as usize;
        let key = atom_of(ty.key.atomic);
        let value = match &ty.value {
            Some(v) => prop::collection::vec((key, atom_of(v.atomic)), min..=max)
                .prop_map(|kv| Value::Map(kv.into_iter().collect()))
                .boxed(),
            None => prop::collection::vec(key, min..=max)
                .prop_map(|v| Value::Set(v.into_iter().collect()))
                .boxed(),
        };
        let ty2 = ty.clone();
        value
            // Duplicates may shrink a set below min.
            .prop_filter("at least min elements", move |v| {
                v.set_elements().len() >= ty2.min as usize
                    || v.as_map().is_some_and(|m| m.len() >= min)
            })
            .prop_map(move |v| {
                let v = match v {
                    Value::Set(s) if ty.is_scalar() => {
                        Value::Atom(s.into_iter().next().expect("min 1"))
                    }
                    other => other,
                };
                (ty.clone(), v)
            })
    })
}

/// Encodes an atom as ovsdb-server does: reals with integral values print
/// without a fraction, so they arrive as JSON integers.
fn server_atom(a: &Atom) -> serde_json::Value {
    match a {
        Atom::Real(r) if r.fract() == 0.0 && r.abs() < 1e15 => json!(*r as i64),
        other => other.to_json(),
    }
}

/// Encodes a value as ovsdb-server does: one-element sets as the bare atom.
fn server_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Atom(a) => server_atom(a),
        Value::Set(s) if s.len() == 1 => server_atom(&s.as_slice()[0]),
        Value::Set(s) => json!(["set", s.iter().map(server_atom).collect::<Vec<_>>()]),
        Value::Map(m) => json!([
            "map",
            m.iter()
                .map(|(k, v)| json!([server_atom(k), server_atom(v)]))
                .collect::<Vec<_>>()
        ]),
    }
}

/// The update2 diff the server sends for a change from `old` to `new`: the new
/// value for columns of at most one element, a difference otherwise.
fn server_diff(old: &Value, new: &Value, ty: &ColumnType) -> Value {
    if ty.max == Some(1) {
        return new.clone();
    }
    match (old, new) {
        (Value::Map(o), Value::Map(n)) => {
            let mut d = Map::new();
            for (k, v) in o.iter() {
                match n.get(k) {
                    Some(nv) if nv == v => {}
                    Some(nv) => {
                        d.insert(k.clone(), nv.clone());
                    }
                    None => {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
            for (k, v) in n.iter() {
                if o.get(k).is_none() {
                    d.insert(k.clone(), v.clone());
                }
            }
            Value::Map(d)
        }
        (Value::Set(o), Value::Set(n)) => Value::Set(
            o.iter()
                .filter(|a| !n.contains(a))
                .chain(n.iter().filter(|a| !o.contains(a)))
                .cloned()
                .collect::<Set>(),
        ),
        _ => unreachable!("canonical values of one type"),
    }
}

proptest! {
    #[test]
    fn value_json_round_trip(v in any_value()) {
        prop_assert_eq!(Value::from_json(&v.to_json()), Ok(v.clone()));
        prop_assert_eq!(serde_json::to_value(&v).unwrap(), v.to_json());
    }

    #[test]
    fn value_text_round_trip_without_reals(v in any_value().prop_filter("reals may lose a ULP in text", |v| {
        !v.to_json().to_string().contains(['.', 'e', 'E'])
            || matches!(v, Value::Atom(Atom::String(_)))
    })) {
        let text = serde_json::to_string(&v).unwrap();
        prop_assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }

    #[test]
    fn typed_decode_of_server_forms((ty, v) in typed_value()) {
        prop_assert_eq!(Value::from_json_typed(&server_json(&v), &ty), Ok(v.clone()));
        prop_assert_eq!(Value::from_json_typed(&v.to_json(), &ty), Ok(v.clone()));
        prop_assert_eq!(v.validate(&ty), Ok(()));
    }

    #[test]
    fn update2_diff_applies((ty, old) in typed_value(), keep in any::<u64>(), rotate in 0usize..5) {
        // Another value of the same type: some elements dropped and, for maps,
        // the surviving keys given other entries' values.
        let keep = |i: usize| (keep >> (i % 64)) & 1 == 0;
        let new = match &old {
            Value::Map(m) => {
                let values: Vec<&Atom> = m.iter().map(|(_, v)| v).collect();
                Value::Map(m.iter().enumerate()
                    .filter(|(i, _)| keep(*i))
                    .map(|(i, (k, _))| (k.clone(), values[(i + rotate) % values.len()].clone()))
                    .collect())
            }
            Value::Set(s) => Value::Set(s.iter().enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(_, a)| a.clone())
                .collect()),
            atom => atom.clone(),
        };
        for (from, to) in [(&old, &new), (&new, &old)] {
            let diff = server_diff(from, to, &ty);
            let mut applied = from.clone();
            applied.apply_diff(Value::from_json(&server_json(&diff)).unwrap(), &ty).unwrap();
            prop_assert_eq!(&applied, to);
        }
    }

    #[test]
    fn typed_lsp_round_trip(
        name in "[a-z0-9.-]{1,20}",
        addresses in prop::collection::btree_set("[0-9a-f:]{17} [0-9.]{7,15}", 0..3),
        options in prop::collection::btree_map("[a-z-]{1,10}", ".{0,10}", 0..4),
        external_ids in prop::collection::btree_map("[a-z_]{1,10}", ".{0,10}", 0..4),
        tag_request in prop::option::of(0i64..4096),
        up in prop::option::of(any::<bool>()),
        uuid in any::<u128>(),
        ha in prop::option::of(any::<u128>()),
    ) {
        let port = LogicalSwitchPort {
            uuid: Uuid::from_u128(uuid),
            name,
            addresses,
            options,
            external_ids,
            tag_request,
            up,
            ha_chassis_group: ha.map(Uuid::from_u128),
            ..Default::default()
        };
        let table = nb::schema().table(LogicalSwitchPort::TABLE).unwrap();
        let row = port.to_row().with("_uuid", port.uuid);
        // As we send it, and as the server sends it back.
        for json in [row.to_json(), server_json_row(&row)] {
            let decoded = Row::from_json_typed(&json, table).unwrap();
            prop_assert_eq!(LogicalSwitchPort::from_row(&decoded), Ok(port.clone()));
        }
    }
}

fn server_json_row(row: &Row) -> serde_json::Value {
    serde_json::Value::Object(
        row.iter()
            .map(|(k, v)| (k.to_owned(), server_json(v)))
            .collect(),
    )
}

#[test]
fn typed_rows_tolerate_extra_columns_and_name_missing_or_mistyped_ones() {
    let table = nb::schema().table("Logical_Switch").unwrap();
    let mut row = Row::from_json_typed(
        &json!({"name": "ls1", "ports": ["uuid", "2d25bea0-c336-47f9-b995-c480b3f42f55"],
                "other_config": ["map", [["subnet", "10.0.0.0/24"]]], "column_from_the_future": 1}),
        table,
    )
    .unwrap();
    row.fill_defaults(table);
    let ls = nb::LogicalSwitch::from_uuid_row(Uuid::nil(), &row).unwrap();
    assert_eq!(ls.name, "ls1");
    assert_eq!(ls.ports.len(), 1);
    assert_eq!(ls.other_config["subnet"], "10.0.0.0/24");

    let mut missing = row.clone();
    missing.remove("ports");
    assert_eq!(
        nb::LogicalSwitch::from_uuid_row(Uuid::nil(), &missing).unwrap_err(),
        RowError::MissingColumn {
            table: "Logical_Switch".into(),
            column: "ports".into()
        }
    );
    let mut mistyped = row.clone();
    mistyped.insert("name", 7);
    assert_eq!(
        nb::LogicalSwitch::from_uuid_row(Uuid::nil(), &mistyped)
            .unwrap_err()
            .to_string(),
        "table Logical_Switch column name: expected string, found integer 7"
    );
    assert!(matches!(
        nb::LogicalSwitch::from_row(&row),
        Err(RowError::MissingColumn { column, .. }) if column == "_uuid"
    ));
}

#[test]
fn required_nb_tables_are_typed() {
    let schema = nb::schema();
    for table in [
        nb::LogicalSwitch::TABLE,
        nb::LogicalSwitchPort::TABLE,
        nb::LogicalRouter::TABLE,
        nb::LogicalRouterPort::TABLE,
        nb::DhcpOptions::TABLE,
        nb::NbGlobal::TABLE,
        nb::AddressSet::TABLE,
        nb::PortGroup::TABLE,
        nb::Acl::TABLE,
    ] {
        let t = schema.table(table).unwrap();
        // Every column of a default row converts both ways.
        let mut row = Row::new();
        row.fill_defaults(t);
        assert_eq!(row.len(), t.columns.len(), "{table}");
    }
    let mut row = Row::new();
    row.fill_defaults(schema.table("DHCP_Options").unwrap());
    let d = nb::DhcpOptions::from_uuid_row(Uuid::nil(), &row).unwrap();
    assert_eq!(d.to_row(), row);
    let lsp_columns: Vec<&str> = schema.tables["Logical_Switch_Port"]
        .columns
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        <LogicalSwitchPort as Table>::COLUMNS,
        lsp_columns.as_slice()
    );
    assert_eq!(nb::DATABASE, "OVN_Northbound");
    assert_eq!(schema.tables.len(), 30);
}

#[test]
fn keyword_columns_get_a_suffix() {
    let lsp = LogicalSwitchPort {
        type_: "router".into(),
        ..Default::default()
    };
    assert_eq!(lsp.to_row().get("type"), Some(&Value::from("router")));
    let acl = nb::Acl {
        match_: "ip4".into(),
        ..Default::default()
    };
    assert_eq!(acl.to_row().get("match"), Some(&Value::from("ip4")));
}

#[test]
fn server_database_rows_decode() {
    let schema = ovsdb_client::tables::server_db::schema();
    let table = schema.table(Database::TABLE).unwrap();
    let clustered = Row::from_json_typed(
        &json!({"name":"OVN_Northbound","model":"clustered","connected":true,"leader":true,
                "cid":["uuid","5dfd0aed-0000-4000-8000-000000000000"],
                "sid":["uuid","77bea15c-0000-4000-8000-000000000000"],"index":3,"schema":["set",[]]}),
        table,
    )
    .unwrap();
    let db = Database::from_uuid_row(Uuid::nil(), &clustered).unwrap();
    assert!(db.connected && db.leader);
    assert_eq!(db.model, "clustered");
    assert_eq!(db.index, Some(3));
    assert!(db.sid.is_some() && db.schema.is_none());

    let mut standalone = Row::from_json_typed(
        &json!({"name":"OVN_Northbound","model":"standalone","connected":true,"leader":true,
                "cid":["set",[]],"sid":["set",[]],"index":["set",[]]}),
        table,
    )
    .unwrap();
    standalone.fill_defaults(table);
    let db = Database::from_uuid_row(Uuid::nil(), &standalone).unwrap();
    assert_eq!((db.cid, db.sid, db.index), (None, None, None));
}

#[test]
fn vswitch_tables_are_typed() {
    let schema = ovsdb_client::tables::vswitch::schema();
    for name in [Bridge::TABLE, Interface::TABLE, "Port", "Open_vSwitch"] {
        let t = schema.table(name).unwrap();
        let mut row = Row::new();
        row.fill_defaults(t);
        assert_eq!(row.len(), t.columns.len());
    }
    let mut row = Row::new();
    row.fill_defaults(schema.table("Interface").unwrap());
    row.insert("name", "veth0");
    row.insert("external_ids", Value::map([("iface-id", "pod1")]));
    let iface = Interface::from_uuid_row(Uuid::nil(), &row).unwrap();
    assert_eq!(iface.external_ids["iface-id"], "pod1");
    assert_eq!(iface.to_row(), row);
}

#[test]
fn switch_port_helpers_build_one_transaction() {
    let switch: Uuid = "e75a0303-d68b-4a80-837d-722079cb8f29".parse().unwrap();
    let port = LogicalSwitchPort {
        name: "vm1-eth0".into(),
        addresses: BTreeSet::from(["0a:00:00:00:00:05 10.0.0.5".to_string()]),
        external_ids: BTreeMap::from([("pod".to_string(), "ns/vm1".to_string())]),
        ..Default::default()
    };
    let guard = Wait::absent(
        LogicalSwitchPort::TABLE,
        vec![Condition::eq("name", "vm1-eth0")],
    );
    let ops = nb::add_switch_port(switch, &port, Some(guard));
    let wire: Vec<_> = ops.iter().map(Operation::to_json).collect();
    assert_eq!(wire[0]["op"], "wait");
    assert_eq!(wire[1]["op"], "insert");
    assert_eq!(wire[1]["table"], "Logical_Switch_Port");
    assert_eq!(
        wire[1]["row"]["addresses"],
        json!(["set", ["0a:00:00:00:00:05 10.0.0.5"]])
    );
    assert_eq!(
        wire[1]["row"]["external_ids"],
        json!(["map", [["pod", "ns/vm1"]]])
    );
    let name = wire[1]["uuid-name"].as_str().unwrap();
    assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    assert_eq!(
        wire[2],
        json!({"op":"mutate","table":"Logical_Switch",
               "where":[["_uuid","==",["uuid","e75a0303-d68b-4a80-837d-722079cb8f29"]]],
               "mutations":[["ports","insert",["set",[["named-uuid", name]]]]]})
    );
    // Two ports in one transaction get distinct uuid-names.
    let other = LogicalSwitchPort {
        name: "vm1.eth0".into(),
        ..Default::default()
    };
    let other_ops = nb::add_switch_port(switch, &other, None);
    assert_ne!(other_ops[0].to_json()["uuid-name"], name);

    let port_uuid: Uuid = "148aa517-2b8e-4530-90cb-07ac82408f16".parse().unwrap();
    assert_eq!(
        nb::remove_switch_port(switch, port_uuid, None)[0].to_json(),
        json!({"op":"mutate","table":"Logical_Switch",
               "where":[["_uuid","==",["uuid","e75a0303-d68b-4a80-837d-722079cb8f29"]]],
               "mutations":[["ports","delete",["set",[["uuid","148aa517-2b8e-4530-90cb-07ac82408f16"]]]]]})
    );

    let lrp = LogicalRouterPort {
        uuid: port_uuid,
        name: "lrp1".into(),
        mac: "0a:00:00:00:00:01".into(),
        ..Default::default()
    };
    let ops = nb::add_router_port(switch, &lrp, None);
    assert_eq!(
        ops[0].to_json()["uuid"],
        "148aa517-2b8e-4530-90cb-07ac82408f16"
    );
    assert_eq!(ops[1].to_json()["table"], "Logical_Router");
    assert_eq!(
        ops[1].to_json()["mutations"][0][2],
        json!(["set", [["uuid", "148aa517-2b8e-4530-90cb-07ac82408f16"]]])
    );
    assert_eq!(
        nb::remove_router_port(switch, port_uuid, None)[0].to_json()["table"],
        "Logical_Router"
    );
}

/// Runs one transaction with the OVS `ovsdb-client transact` tool.
fn transact(
    server: &support::Standalone,
    ops: &[Operation],
) -> Result<Vec<OperationResult>, TransactError> {
    let params = transact_params(nb::DATABASE, ops).to_string();
    let out = support::run("ovsdb-client", &["transact", &server.unix, &params]);
    let result: serde_json::Value = serde_json::from_str(out.trim()).expect("transact prints JSON");
    parse_results(ops, &result, Some(nb::schema()))
}

fn select_all<T: Table>(server: &support::Standalone) -> Vec<T> {
    let results = transact(server, &[Select::new(T::TABLE).into()]).expect("select");
    results[0]
        .rows()
        .expect("select returns rows")
        .iter()
        .map(|row| T::from_row(row).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn one_named<T: Table>(server: &support::Standalone, name: &str) -> T {
    let ops = [Select::new(T::TABLE)
        .filter(Condition::eq("name", name))
        .into()];
    let results = transact(server, &ops).expect("select");
    let rows = results[0].rows().expect("rows");
    assert_eq!(rows.len(), 1, "{} rows named {name}", T::TABLE);
    T::from_row(&rows[0]).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn typed_rows_decode_what_ovn_nbctl_writes() {
    let server = support::Standalone::start();
    server.nbctl(&[
        "ls-add",
        "ls1",
        "--",
        "set",
        "Logical_Switch",
        "ls1",
        "other_config:subnet=10.0.0.0/24",
    ]);
    server.nbctl(&[
        "lsp-add",
        "ls1",
        "p1",
        "--",
        "lsp-set-addresses",
        "p1",
        "0a:00:00:00:00:05 10.0.0.5",
        "--",
        "lsp-set-options",
        "p1",
        "requested-chassis=node-a,node-b",
        "activation-strategy=rarp",
    ]);
    server.nbctl(&["lsp-add", "ls1", "p2", "--", "lsp-set-type", "p2", "router"]);
    server.nbctl(&[
        "lr-add",
        "lr1",
        "--",
        "lrp-add",
        "lr1",
        "lrp1",
        "0a:00:00:00:00:01",
        "10.0.0.1/24",
        "fd00::1/64",
    ]);
    server.nbctl(&["dhcp-options-create", "10.0.0.0/24", "k=v"]);
    server.nbctl(&[
        "create",
        "Address_Set",
        "name=as1",
        "addresses=\"10.0.0.5\",\"10.0.0.6\"",
    ]);
    server.nbctl(&["pg-add", "pg1", "p1"]);
    server.nbctl(&[
        "acl-add",
        "ls1",
        "to-lport",
        "1000",
        "ip4.dst == 10.0.0.5",
        "allow-related",
    ]);
    server.nbctl(&["set", "NB_Global", ".", "options:mac_prefix=0a:00:00"]);

    let ls: nb::LogicalSwitch = one_named(&server, "ls1");
    assert_eq!(ls.other_config["subnet"], "10.0.0.0/24");
    assert_eq!(ls.ports.len(), 2);
    assert_eq!(ls.acls.len(), 1);
    let p1: LogicalSwitchPort = one_named(&server, "p1");
    assert_eq!(
        p1.addresses,
        BTreeSet::from(["0a:00:00:00:00:05 10.0.0.5".to_string()])
    );
    assert_eq!(p1.options["requested-chassis"], "node-a,node-b");
    assert_eq!(p1.options["activation-strategy"], "rarp");
    assert_eq!((p1.up, p1.tag, p1.type_.as_str()), (None, None, ""));
    assert!(ls.ports.contains(&p1.uuid));
    let p2: LogicalSwitchPort = one_named(&server, "p2");
    assert_eq!(p2.type_, "router");
    let lrp: LogicalRouterPort = one_named(&server, "lrp1");
    assert_eq!(
        lrp.networks,
        BTreeSet::from(["10.0.0.1/24".to_string(), "fd00::1/64".to_string()])
    );
    let lr: nb::LogicalRouter = one_named(&server, "lr1");
    assert_eq!(lr.ports, BTreeSet::from([lrp.uuid]));
    let dhcp: Vec<nb::DhcpOptions> = select_all(&server);
    assert_eq!((dhcp.len(), dhcp[0].cidr.as_str()), (1, "10.0.0.0/24"));
    assert_eq!(dhcp[0].external_ids["k"], "v");
    let set: nb::AddressSet = one_named(&server, "as1");
    assert_eq!(set.addresses.len(), 2);
    let pg: nb::PortGroup = one_named(&server, "pg1");
    assert_eq!(pg.ports, BTreeSet::from([p1.uuid]));
    let acls: Vec<nb::Acl> = select_all(&server);
    assert_eq!(
        (acls[0].priority, acls[0].action.as_str()),
        (1000, "allow-related")
    );
    assert_eq!(acls[0].match_, "ip4.dst == 10.0.0.5");
    let global: Vec<nb::NbGlobal> = select_all(&server);
    assert_eq!(global[0].options["mac_prefix"], "0a:00:00");
}

#[test]
fn port_helpers_against_a_real_server() {
    let server = support::Standalone::start();
    server.nbctl(&["ls-add", "ls1", "--", "lr-add", "lr1"]);
    let ls: nb::LogicalSwitch = one_named(&server, "ls1");
    let lr: nb::LogicalRouter = one_named(&server, "lr1");

    // Insert + mutate in one transaction, guarded against replays.
    let port = LogicalSwitchPort {
        name: "vm1-eth0".into(),
        addresses: BTreeSet::from(["0a:00:00:00:00:05 10.0.0.5".to_string()]),
        external_ids: BTreeMap::from([("pod".to_string(), "ns/vm1".to_string())]),
        ..Default::default()
    };
    let guard = || {
        Some(Wait::absent(
            LogicalSwitchPort::TABLE,
            vec![Condition::eq("name", "vm1-eth0")],
        ))
    };
    let ops = nb::add_switch_port(ls.uuid, &port, guard());
    let results = transact(&server, &ops).expect("add port");
    let port_uuid = results[1].uuid().expect("insert result");
    assert_eq!(results[2].count(), Some(1));
    assert_eq!(
        server.nbctl(&["lsp-get-addresses", "vm1-eth0"]).trim(),
        "0a:00:00:00:00:05 10.0.0.5"
    );
    assert_eq!(
        server
            .nbctl(&["get", "Logical_Switch_Port", "vm1-eth0", "external_ids:pod"])
            .trim(),
        "\"ns/vm1\""
    );
    assert!(server.nbctl(&["show"]).contains("port vm1-eth0"));
    let stored: LogicalSwitchPort = one_named(&server, "vm1-eth0");
    assert_eq!(
        stored,
        LogicalSwitchPort {
            uuid: port_uuid,
            ..port.clone()
        }
    );

    // A guarded update writes only what changed; a second one from the same
    // (now stale) read is refused.
    let mut moved = stored.clone();
    moved.addresses = BTreeSet::from(["0a:00:00:00:00:05 10.0.0.50".to_string()]);
    moved
        .options
        .insert("requested-chassis".into(), "node-b".into());
    let results = transact(&server, &update_ops(&stored, &moved, true)).expect("update");
    assert_eq!(results[1].count(), Some(1));
    assert_eq!(one_named::<LogicalSwitchPort>(&server, "vm1-eth0"), moved);
    let mut elsewhere = stored.clone();
    elsewhere
        .options
        .insert("requested-chassis".into(), "node-c".into());
    let stale = transact(&server, &update_ops(&stored, &elsewhere, true)).unwrap_err();
    assert!(stale.is_timed_out(), "{stale}");
    assert_eq!(one_named::<LogicalSwitchPort>(&server, "vm1-eth0"), moved);

    let replay = transact(&server, &nb::add_switch_port(ls.uuid, &port, guard())).unwrap_err();
    assert!(replay.is_timed_out(), "{replay}");
    assert!(matches!(
        replay,
        TransactError::Operation {
            index: 0,
            op: "wait",
            ..
        }
    ));
    // Without the guard the unique index on name catches it at commit.
    let unguarded = transact(&server, &nb::add_switch_port(ls.uuid, &port, None)).unwrap_err();
    assert_eq!(
        unguarded.ovsdb_error().unwrap().kind,
        ErrorKind::ConstraintViolation,
        "{unguarded}"
    );
    assert!(matches!(unguarded, TransactError::Commit { .. }));

    // A client-chosen uuid is kept, and a replay is a duplicate uuid.
    let chosen = LogicalSwitchPort {
        uuid: Uuid::new_v4(),
        name: "vm2-eth0".into(),
        ..Default::default()
    };
    let results =
        transact(&server, &nb::add_switch_port(ls.uuid, &chosen, None)).expect("add chosen");
    assert_eq!(results[0].uuid(), Some(chosen.uuid));
    let dup = transact(&server, &nb::add_switch_port(ls.uuid, &chosen, None)).unwrap_err();
    assert_eq!(
        dup.ovsdb_error().unwrap().kind,
        ErrorKind::DuplicateUuid,
        "{dup}"
    );

    // An insert without the parent mutate is collected at commit.
    let orphan = nb::add_switch_port(
        ls.uuid,
        &LogicalSwitchPort {
            name: "orphan".into(),
            ..Default::default()
        },
        None,
    );
    transact(&server, &orphan[..1]).expect("insert alone succeeds");
    assert!(!server.nbctl(&["show"]).contains("orphan"));

    // Delete by dereferencing: the row is garbage-collected.
    let results =
        transact(&server, &nb::remove_switch_port(ls.uuid, port_uuid, None)).expect("remove port");
    assert_eq!(results[0].count(), Some(1));
    let left = transact(
        &server,
        &[Select::new(LogicalSwitchPort::TABLE)
            .filter(Condition::uuid_is(port_uuid))
            .into()],
    )
    .expect("select");
    assert_eq!(left[0].rows().map(<[Row]>::len), Some(0));
    assert_eq!(server.nbctl(&["lsp-list", "ls1"]).lines().count(), 1);

    // The same for a router port.
    let lrp = LogicalRouterPort {
        name: "lrp1".into(),
        mac: "0a:00:00:00:00:01".into(),
        networks: BTreeSet::from(["10.0.0.1/24".to_string()]),
        ..Default::default()
    };
    let results =
        transact(&server, &nb::add_router_port(lr.uuid, &lrp, None)).expect("add router port");
    let lrp_uuid = results[0].uuid().unwrap();
    assert!(server.nbctl(&["lrp-list", "lr1"]).contains("(lrp1)"));
    transact(&server, &nb::remove_router_port(lr.uuid, lrp_uuid, None))
        .expect("remove router port");
    assert_eq!(server.nbctl(&["lrp-list", "lr1"]).trim(), "");
}
