//! Transactions against a real standalone ovsdb-server with the OVN NB schema: every operation
//! kind, every condition function and mutator, the error shapes the server really sends, the bare
//! one-element set, and 1,000 transactions pipelined on one connection.

mod support;

use std::sync::Arc;

use ovsdb_client::protocol::datum::{Atom, Uuid, Value};
use ovsdb_client::protocol::operation::{
    Condition, Delete, ErrorKind, Insert, Mutate, Mutation, Operation, OperationResult, Select,
    TransactError, Update, Wait, WaitUntil, parse_results, transact_params,
};
use ovsdb_client::protocol::row::Row;
use ovsdb_client::protocol::schema::DatabaseSchema;
use ovsdb_client::runtime::connection::{CallError, Connection, ConnectionOptions};
use ovsdb_client::runtime::transport::{self, Remote};
use serde_json::json;
use support::{NB_DB, Standalone};

/// A connection plus the schema the server reported, as the tests' client.
struct Nb {
    connection: Connection,
    schema: DatabaseSchema,
}

impl Nb {
    async fn connect(remote: &str) -> Self {
        let remote = Remote::parse(remote).unwrap();
        let stream = transport::connect(&remote, None).await.unwrap();
        let connection = Connection::start(
            remote,
            stream,
            ConnectionOptions::default(),
            Arc::new(|_| Ok(())),
        )
        .unwrap();
        let schema = connection
            .call("get_schema", &json!([NB_DB]))
            .await
            .unwrap();
        let schema = DatabaseSchema::from_json(&schema).unwrap();
        Self { connection, schema }
    }

    async fn transact(&self, ops: Vec<Operation>) -> Result<Vec<OperationResult>, TransactError> {
        let reply = self
            .connection
            .call("transact", &transact_params(NB_DB, &ops))
            .await
            .expect("transact reply");
        parse_results(&ops, &reply, Some(&self.schema))
    }

    async fn select_one(&self, table: &str, condition: Condition) -> Row {
        let results = self
            .transact(vec![Select::new(table).filter(condition).into()])
            .await
            .unwrap();
        let rows = results[0].rows().unwrap();
        assert_eq!(rows.len(), 1, "expected one {table} row: {rows:?}");
        rows[0].clone()
    }
}

fn string_set(items: &[&str]) -> Value {
    Value::set(items.iter().copied())
}

fn lsp(name: &str, addresses: &[&str]) -> Row {
    Row::new()
        .with("name", name)
        .with("addresses", string_set(addresses))
        .with("external_ids", Value::map([("pod", format!("ns/{name}"))]))
}

/// Insert a port and reference it from the switch in the same transaction (LSP is non-root).
fn add_port(switch: Uuid, row: Row, name: &str) -> Vec<Operation> {
    vec![
        Insert::new("Logical_Switch_Port", row)
            .uuid_name(name)
            .into(),
        Mutate::new("Logical_Switch")
            .filter(Condition::uuid_is(switch))
            .mutation(Mutation::insert(
                "ports",
                Value::set([Atom::named_uuid(name)]),
            ))
            .into(),
    ]
}

async fn new_switch(nb: &Nb, name: &str) -> Uuid {
    let results = nb
        .transact(vec![
            Insert::new("Logical_Switch", Row::new().with("name", name)).into(),
        ])
        .await
        .unwrap();
    results[0].uuid().unwrap()
}

fn error_kind(result: Result<Vec<OperationResult>, TransactError>) -> (TransactError, ErrorKind) {
    let error = result.expect_err("the transaction must fail");
    let kind = error.ovsdb_error().expect("a server error").kind.clone();
    (error, kind)
}

#[tokio::test]
async fn every_operation_kind_round_trips() {
    let server = Standalone::start();
    let nb = Nb::connect(&server.unix).await;

    // insert (uuid-name) + insert with a client-chosen uuid + mutate the parent, one transaction.
    let chosen = Uuid::new_v4();
    let ops = vec![
        Insert::new("Logical_Switch", Row::new().with("name", "ls1"))
            .uuid_name("ls")
            .into(),
        Insert::new(
            "Logical_Switch_Port",
            lsp("p1", &["0a:00:00:00:00:01 10.0.0.1"]),
        )
        .uuid(chosen)
        .into(),
        Mutate::new("Logical_Switch")
            .filter(Condition::eq("name", "ls1"))
            .mutation(Mutation::insert("ports", Value::set([Atom::from(chosen)])))
            .into(),
        Operation::comment("portkeeper integration test"),
        Operation::Commit { durable: false },
    ];
    let results = nb.transact(ops).await.unwrap();
    let switch = results[0].uuid().unwrap();
    assert_eq!(results[1], OperationResult::Inserted(chosen));
    assert_eq!(results[2], OperationResult::Count(1));
    assert_eq!(results[3], OperationResult::Done);
    assert_eq!(results[4], OperationResult::Done);

    // select with columns.
    let results = nb
        .transact(vec![
            Select::new("Logical_Switch_Port")
                .filter(Condition::eq("name", "p1"))
                .columns(["_uuid", "name"])
                .into(),
        ])
        .await
        .unwrap();
    let rows = results[0].rows().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].uuid(), Some(chosen));
    assert!(
        rows[0].get("addresses").is_none(),
        "columns limits the projection"
    );

    // update.
    let results = nb
        .transact(vec![
            Update::new("Logical_Switch_Port", Row::new().with("type", "localport"))
                .filter(Condition::uuid_is(chosen))
                .into(),
        ])
        .await
        .unwrap();
    assert_eq!(results[0], OperationResult::Count(1));
    let row = nb
        .select_one("Logical_Switch_Port", Condition::uuid_is(chosen))
        .await;
    assert_eq!(row.get("type"), Some(&Value::from(Atom::from("localport"))));

    // wait: == succeeds on the current value, != fails with "timed out".
    let current = Row::new().with("type", "localport");
    let wait = |until| {
        Wait::new(
            "Logical_Switch_Port",
            ["type"],
            until,
            vec![current.clone()],
        )
        .filter(Condition::uuid_is(chosen))
    };
    nb.transact(vec![wait(WaitUntil::Equal).into()])
        .await
        .unwrap();
    let (error, kind) = error_kind(nb.transact(vec![wait(WaitUntil::NotEqual).into()]).await);
    assert_eq!(kind, ErrorKind::TimedOut);
    assert!(error.is_timed_out());

    // abort: a dry run that changes nothing.
    let (_, kind) = error_kind(
        nb.transact(vec![
            Update::new("Logical_Switch_Port", Row::new().with("type", "router"))
                .filter(Condition::uuid_is(chosen))
                .into(),
            Operation::Abort,
        ])
        .await,
    );
    assert_eq!(kind, ErrorKind::Aborted);
    let row = nb
        .select_one("Logical_Switch_Port", Condition::uuid_is(chosen))
        .await;
    assert_eq!(row.get("type"), Some(&Value::from(Atom::from("localport"))));

    // assert: this session holds no lock.
    let (_, kind) = error_kind(
        nb.transact(vec![Operation::Assert {
            lock: "nosuchlock".into(),
        }])
        .await,
    );
    assert_eq!(kind, ErrorKind::NotOwner);

    // delete a root row; the server garbage-collects the port it referenced.
    let results = nb
        .transact(vec![
            Delete::new("Logical_Switch")
                .filter(Condition::uuid_is(switch))
                .into(),
        ])
        .await
        .unwrap();
    assert_eq!(results[0], OperationResult::Count(1));
    let results = nb
        .transact(vec![
            Select::new("Logical_Switch_Port")
                .filter(Condition::Constant(true))
                .into(),
        ])
        .await
        .unwrap();
    assert!(
        results[0].rows().unwrap().is_empty(),
        "port not collected: {results:?}"
    );
}

#[tokio::test]
async fn every_condition_function_and_mutator() {
    let server = Standalone::start();
    let nb = Nb::connect(&server.unix).await;
    let results = nb
        .transact(vec![
            Insert::new("NB_Global", Row::new().with("nb_cfg", 10i64)).into(),
        ])
        .await
        .unwrap();
    let global = results[0].uuid().unwrap();

    let nb_cfg = |expected: i64| {
        let nb = &nb;
        async move {
            let row = nb.select_one("NB_Global", Condition::uuid_is(global)).await;
            assert_eq!(row.get("nb_cfg"), Some(&Value::from(Atom::from(expected))));
        }
    };
    let mutate = |mutation: Mutation| {
        Operation::from(
            Mutate::new("NB_Global")
                .filter(Condition::uuid_is(global))
                .mutation(mutation),
        )
    };
    for (mutation, expected) in [
        (Mutation::add("nb_cfg", 5i64), 15),
        (Mutation::mul("nb_cfg", 2i64), 30),
        (Mutation::sub("nb_cfg", 3i64), 27),
        (Mutation::div("nb_cfg", 2i64), 13),
        (Mutation::rem("nb_cfg", 5i64), 3),
    ] {
        nb.transact(vec![mutate(mutation)]).await.unwrap();
        nb_cfg(expected).await;
    }
    nb.transact(vec![
        mutate(Mutation::insert(
            "external_ids",
            Value::map([("a", "1"), ("b", "2")]),
        )),
        mutate(Mutation::delete("external_ids", Value::set(["a"]))),
    ])
    .await
    .unwrap();
    let row = nb.select_one("NB_Global", Condition::uuid_is(global)).await;
    assert_eq!(row.get("external_ids"), Some(&Value::map([("b", "2")])));

    // Each function must select the row when true and not when false.
    let matches = |condition: Condition| {
        let nb = &nb;
        async move {
            let results = nb
                .transact(vec![
                    Select::new("NB_Global")
                        .filter(Condition::uuid_is(global))
                        .filter(condition)
                        .into(),
                ])
                .await
                .unwrap();
            results[0].rows().unwrap().len() == 1
        }
    };
    let cases = [
        (Condition::eq("nb_cfg", 3i64), Condition::eq("nb_cfg", 4i64)),
        (Condition::ne("nb_cfg", 4i64), Condition::ne("nb_cfg", 3i64)),
        (Condition::lt("nb_cfg", 4i64), Condition::lt("nb_cfg", 3i64)),
        (Condition::le("nb_cfg", 3i64), Condition::le("nb_cfg", 2i64)),
        (Condition::gt("nb_cfg", 2i64), Condition::gt("nb_cfg", 3i64)),
        (Condition::ge("nb_cfg", 3i64), Condition::ge("nb_cfg", 4i64)),
        (
            Condition::includes("external_ids", Value::map([("b", "2")])),
            Condition::includes("external_ids", Value::map([("b", "3")])),
        ),
        (
            Condition::excludes("external_ids", Value::map([("a", "1")])),
            Condition::excludes("external_ids", Value::map([("b", "2")])),
        ),
        (Condition::Constant(true), Condition::Constant(false)),
    ];
    for (true_case, false_case) in cases {
        assert!(
            matches(true_case.clone()).await,
            "{true_case:?} should match"
        );
        assert!(
            !matches(false_case.clone()).await,
            "{false_case:?} should not match"
        );
    }
}

#[tokio::test]
async fn error_shapes_are_typed_and_keep_the_servers_words() {
    let server = Standalone::start();
    let nb = Nb::connect(&server.unix).await;
    let switch = new_switch(&nb, "ls1").await;

    // Operation errors: the failing operation's index and the server's details.
    let bad_column = Insert::new("Logical_Switch_Port", Row::new().with("nam", "x"));
    match nb.transact(vec![bad_column.into()]).await {
        Err(TransactError::Operation {
            index: 0,
            op: "insert",
            error,
        }) => {
            assert_eq!(error.kind, ErrorKind::UnknownColumn);
            assert!(error.details.unwrap().contains("nam"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let (_, kind) = error_kind(
        nb.transact(add_port(
            switch,
            lsp("p-bad-tag", &[]).with("tag_request", 5000i64),
            "p",
        ))
        .await,
    );
    assert_eq!(kind, ErrorKind::ConstraintViolation);
    let twice = Insert::new("Logical_Switch", Row::new().with("name", "dup")).uuid_name("a");
    match nb.transact(vec![twice.clone().into(), twice.into()]).await {
        Err(TransactError::Operation {
            index: 1, error, ..
        }) => {
            assert_eq!(error.kind, ErrorKind::DuplicateUuidName)
        }
        other => panic!("unexpected {other:?}"),
    }
    let chosen = Uuid::new_v4();
    let with_uuid = || Insert::new("Logical_Switch", Row::new().with("name", "u")).uuid(chosen);
    nb.transact(vec![with_uuid().into()]).await.unwrap();
    let (_, kind) = error_kind(nb.transact(vec![with_uuid().into()]).await);
    assert_eq!(kind, ErrorKind::DuplicateUuid);

    // Commit errors: every operation succeeded, the trailing element carries the error.
    nb.transact(add_port(switch, lsp("p1", &[]), "p"))
        .await
        .unwrap();
    match nb.transact(add_port(switch, lsp("p1", &[]), "p")).await {
        Err(TransactError::Commit { error }) => {
            assert_eq!(error.kind, ErrorKind::ConstraintViolation);
            assert!(error.details.unwrap().contains("index on column \"name\""));
        }
        other => panic!("duplicate port name: unexpected {other:?}"),
    }
    let dangling = Mutate::new("Logical_Switch")
        .filter(Condition::uuid_is(switch))
        .mutation(Mutation::insert(
            "ports",
            Value::set([Atom::from(Uuid::new_v4())]),
        ));
    match nb.transact(vec![dangling.into()]).await {
        Err(TransactError::Commit { error }) => {
            assert_eq!(error.kind, ErrorKind::ReferentialIntegrityViolation)
        }
        other => panic!("dangling reference: unexpected {other:?}"),
    }

    // JSON-RPC errors: an object (unknown database) and a bare string (unknown method).
    let ops = [Operation::comment("x")];
    match nb
        .connection
        .call("transact", &transact_params("No_Such_DB", &ops))
        .await
    {
        Err(CallError::Rpc(error)) => {
            assert_eq!(error.error, "unknown database");
            assert!(error.details.unwrap().contains("No_Such_DB"));
        }
        other => panic!("unexpected {other:?}"),
    }
    match nb.connection.call("no_such_method", &json!([])).await {
        Err(CallError::Rpc(error)) => {
            assert!(error.is_unknown_method());
            assert_eq!(error.details, None);
        }
        other => panic!("unexpected {other:?}"),
    }
    // The connection survived every error.
    assert!(nb.connection.close_reason().is_none());
}

#[tokio::test]
async fn one_element_sets_decode_from_the_bare_atom_form() {
    let server = Standalone::start();
    let nb = Nb::connect(&server.unix).await;
    let switch = new_switch(&nb, "ls1").await;
    nb.transact(add_port(
        switch,
        lsp("one", &["0a:00:00:00:00:01 10.0.0.1"]),
        "p",
    ))
    .await
    .unwrap();
    nb.transact(add_port(
        switch,
        lsp("two", &["0a:00:00:00:00:02 10.0.0.2", "unknown"]),
        "p",
    ))
    .await
    .unwrap();

    // What the server sends really is the bare atom, for a string set and for a uuid set.
    let raw = nb
        .connection
        .call(
            "transact",
            &json!([NB_DB, {"op": "select", "table": "Logical_Switch_Port",
                            "where": [["name", "==", "one"]], "columns": ["addresses"]},
                           {"op": "select", "table": "Logical_Switch",
                            "where": [["_uuid", "==", ["uuid", switch.to_string()]]], "columns": ["ports"]}]),
        )
        .await
        .unwrap();
    assert_eq!(
        raw[0]["rows"][0]["addresses"],
        json!("0a:00:00:00:00:01 10.0.0.1")
    );

    let one = nb
        .select_one("Logical_Switch_Port", Condition::eq("name", "one"))
        .await;
    let addresses = one.get("addresses").unwrap();
    assert_eq!(
        addresses.set_elements(),
        &[Atom::from("0a:00:00:00:00:01 10.0.0.1")]
    );
    let two = nb
        .select_one("Logical_Switch_Port", Condition::eq("name", "two"))
        .await;
    assert_eq!(two.get("addresses").unwrap().set_elements().len(), 2);

    // A switch with exactly one port: the bare ["uuid", …] form.
    let lone = new_switch(&nb, "lone").await;
    let port = nb
        .transact(add_port(lone, lsp("only", &[]), "p"))
        .await
        .unwrap()[0]
        .uuid()
        .unwrap();
    let raw = nb
        .connection
        .call(
            "transact",
            &json!([NB_DB, {"op": "select", "table": "Logical_Switch",
                            "where": [["_uuid", "==", ["uuid", lone.to_string()]]], "columns": ["ports"]}]),
        )
        .await
        .unwrap();
    assert_eq!(
        raw[0]["rows"][0]["ports"],
        json!(["uuid", port.to_string()])
    );
    let row = nb
        .select_one("Logical_Switch", Condition::uuid_is(lone))
        .await;
    assert_eq!(
        row.get("ports").unwrap().set_elements(),
        &[Atom::from(port)]
    );
}

#[tokio::test]
async fn a_thousand_pipelined_transactions_on_one_connection() {
    const PORTS: usize = 1_000;
    let server = Standalone::start();
    let nb = Arc::new(Nb::connect(&server.unix).await);
    let switch = new_switch(&nb, "ls1").await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..PORTS {
        let nb = nb.clone();
        tasks.spawn(async move {
            let name = format!("p{i}");
            let results = nb
                .transact(add_port(switch, lsp(&name, &[]), "p"))
                .await
                .unwrap();
            results[0].uuid().unwrap()
        });
    }
    let mut uuids = Vec::new();
    while let Some(uuid) = tasks.join_next().await {
        uuids.push(uuid.unwrap());
    }
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), PORTS);
    let listed = server.nbctl(&["lsp-list", "ls1"]);
    assert_eq!(listed.lines().count(), PORTS, "{listed}");
}
