//! The `Client` against a real standalone ovsdb-server, side by side with `ovn-nbctl`: what the
//! client writes is what users see, what others write reaches the client's cache and event
//! stream, map diffs (including a deleted key) are applied right, and 1,000 concurrent
//! transactions are read-your-writes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ovsdb_client::Client;
use ovsdb_client::protocol::datum::{Uuid, Value};
use ovsdb_client::protocol::operation::Insert;
use ovsdb_client::protocol::row::Row;
use ovsdb_client::protocol::table::Table;
use ovsdb_client::runtime::cache::{Event, EventStream};
use ovsdb_client::tables::nb::{LogicalSwitch, LogicalSwitchPort, add_switch_port};
use support::{NB_DB, Standalone};

const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(remote: &str) -> Client {
    Client::builder(remote, NB_DB)
        .index(LogicalSwitchPort::TABLE, &["external_ids:pod"])
        .connect()
        .await
        .expect("connect to ovsdb-server")
}

async fn create_switch(client: &Client, name: &str) -> Uuid {
    let switch = LogicalSwitch {
        name: name.into(),
        ..Default::default()
    };
    let results = client
        .transact(&[Insert::new(LogicalSwitch::TABLE, switch.to_row()).into()])
        .await
        .unwrap();
    results[0].uuid().unwrap()
}

fn port(name: &str, address: &str, pod: &str) -> LogicalSwitchPort {
    LogicalSwitchPort {
        name: name.into(),
        addresses: BTreeSet::from([address.to_owned()]),
        external_ids: BTreeMap::from([
            ("pod".to_owned(), pod.to_owned()),
            ("vendor".to_owned(), "portkeeper".to_owned()),
        ]),
        ..Default::default()
    }
}

fn cached_port(client: &Client, name: &str) -> Option<LogicalSwitchPort> {
    let rows = client
        .cache()
        .find(LogicalSwitchPort::TABLE, &["name"], &[Value::from(name)])?;
    rows.first()
        .map(|row| LogicalSwitchPort::from_row(row).expect("typed port"))
}

/// Waits for the next row event on `table` matching `wanted`, failing after a timeout.
async fn next_event(
    events: &mut EventStream,
    table: &str,
    wanted: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no matching {table} event within {EVENT_TIMEOUT:?}"))
            .expect("event stream open");
        if let Event::Lagged { missed } = event {
            panic!("subscriber lagged by {missed} events in a quiet test");
        }
        if event.table() == Some(table) && wanted(&event) {
            return event;
        }
    }
}

async fn next_update(events: &mut EventStream) -> Event {
    next_event(events, LogicalSwitchPort::TABLE, |e| {
        matches!(e, Event::Update { .. })
    })
    .await
}

fn row_name(row: &Row) -> Option<String> {
    row.get("name")?.as_atom()?.as_str().map(str::to_owned)
}

#[tokio::test]
async fn a_port_made_by_the_client_shows_in_ovn_nbctl() {
    let server = Standalone::start();
    let client = connect(&server.unix).await;
    let switch = create_switch(&client, "ls1").await;
    let vm = port("vm1-eth0", "0a:00:00:00:00:05 10.0.0.5", "ns/vm1");

    let results = client
        .transact(&add_switch_port(switch, &vm, None))
        .await
        .unwrap();
    let uuid = results[0].uuid().unwrap();

    // Read-your-writes: the cache shows the port as soon as the transaction returns.
    let cached = cached_port(&client, "vm1-eth0").expect("port in cache after transact");
    assert_eq!(cached.uuid, uuid);
    let by_pod = client.cache().find(
        LogicalSwitchPort::TABLE,
        &["external_ids:pod"],
        &[Value::from("ns/vm1")],
    );
    assert_eq!(by_pod.map(|rows| rows.len()), Some(1));

    let show = server.nbctl(&["show"]);
    assert!(show.contains("switch") && show.contains("(ls1)"), "{show}");
    assert!(show.contains("port vm1-eth0"), "{show}");
    assert!(
        show.contains("addresses: [\"0a:00:00:00:00:05 10.0.0.5\"]"),
        "{show}"
    );
    let external_ids = server.nbctl(&["get", "Logical_Switch_Port", "vm1-eth0", "external_ids"]);
    assert_eq!(external_ids.trim(), r#"{pod="ns/vm1", vendor=portkeeper}"#);
    assert_eq!(
        server.nbctl(&["lsp-get-ls", "vm1-eth0"]).trim(),
        format!("{switch} (ls1)")
    );
}

#[tokio::test]
async fn a_port_made_by_ovn_nbctl_reaches_the_cache_and_the_event_stream() {
    let server = Standalone::start();
    let client = connect(&server.unix).await;
    let mut events = client.subscribe();

    server.nbctl(&[
        "ls-add",
        "ls1",
        "--",
        "lsp-add",
        "ls1",
        "p1",
        "--",
        "lsp-set-addresses",
        "p1",
        "0a:00:00:00:00:07 10.0.0.7",
        "--",
        "set",
        "Logical_Switch_Port",
        "p1",
        "external_ids:pod=ns/p1",
    ]);

    let event = next_event(&mut events, LogicalSwitchPort::TABLE, |e| {
        matches!(e, Event::Insert { .. })
    })
    .await;
    let Event::Insert { row, .. } = event else {
        unreachable!()
    };
    let inserted = LogicalSwitchPort::from_row(&row).unwrap();
    assert_eq!(inserted.name, "p1");
    assert_eq!(
        inserted.addresses,
        BTreeSet::from(["0a:00:00:00:00:07 10.0.0.7".to_owned()])
    );

    let by_pod = client
        .cache()
        .find(
            LogicalSwitchPort::TABLE,
            &["external_ids:pod"],
            &[Value::from("ns/p1")],
        )
        .expect("client index exists");
    assert_eq!(by_pod.len(), 1);
    let switches = client.cache().list_typed::<LogicalSwitch>();
    let ls1 = switches
        .into_iter()
        .map(Result::unwrap)
        .find(|ls| ls.name == "ls1")
        .expect("switch cached");
    assert_eq!(ls1.ports, BTreeSet::from([inserted.uuid]));

    // And its deletion by ovn-nbctl too.
    server.nbctl(&["lsp-del", "p1"]);
    let event = next_event(&mut events, LogicalSwitchPort::TABLE, |e| {
        matches!(e, Event::Delete { .. })
    })
    .await;
    let Event::Delete { row, .. } = event else {
        unreachable!()
    };
    assert_eq!(row_name(&row).as_deref(), Some("p1"));
    assert!(cached_port(&client, "p1").is_none());
}

#[tokio::test]
async fn map_set_and_optional_diffs_are_applied_like_the_server() {
    let server = Standalone::start();
    let client = connect(&server.unix).await;
    let switch = create_switch(&client, "ls1").await;
    let mut vm = port("vm1", "0a:00:00:00:00:05 10.0.0.5", "ns/vm1");
    vm.options = BTreeMap::from([("requested-chassis".to_owned(), "node-a".to_owned())]);
    client
        .transact(&add_switch_port(switch, &vm, None))
        .await
        .unwrap();
    let mut events = client.subscribe();

    let options = |client: &Client| cached_port(client, "vm1").unwrap().options;
    let expect_options = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>()
    };

    // Another client adds a key and replaces one: the live-migration shape.
    server.nbctl(&[
        "set",
        "Logical_Switch_Port",
        "vm1",
        "options:requested-chassis=node-a,node-b",
        "options:activation-strategy=rarp",
    ]);
    next_update(&mut events).await;
    assert_eq!(
        options(&client),
        expect_options(&[
            ("activation-strategy", "rarp"),
            ("requested-chassis", "node-a,node-b")
        ])
    );

    // Deleting a key arrives as a diff carrying the removed key with its old value.
    server.nbctl(&[
        "remove",
        "Logical_Switch_Port",
        "vm1",
        "options",
        "activation-strategy",
    ]);
    let Event::Update { old, new, .. } = next_update(&mut events).await else {
        unreachable!()
    };
    assert_eq!(
        options(&client),
        expect_options(&[("requested-chassis", "node-a,node-b")])
    );
    let typed_old = LogicalSwitchPort::from_row(&old).unwrap();
    let typed_new = LogicalSwitchPort::from_row(&new).unwrap();
    assert!(typed_old.options.contains_key("activation-strategy"));
    assert!(!typed_new.options.contains_key("activation-strategy"));

    // Replace the last key with a new value, then clear the map.
    server.nbctl(&[
        "set",
        "Logical_Switch_Port",
        "vm1",
        "options:requested-chassis=node-b",
    ]);
    next_update(&mut events).await;
    assert_eq!(
        options(&client),
        expect_options(&[("requested-chassis", "node-b")])
    );
    server.nbctl(&["clear", "Logical_Switch_Port", "vm1", "options"]);
    next_update(&mut events).await;
    assert!(options(&client).is_empty());

    // Set diffs too: add a second address, then remove the first.
    server.nbctl(&[
        "add",
        "Logical_Switch_Port",
        "vm1",
        "addresses",
        "\"0a:00:00:00:00:06 10.0.0.6\"",
    ]);
    next_update(&mut events).await;
    server.nbctl(&[
        "remove",
        "Logical_Switch_Port",
        "vm1",
        "addresses",
        "\"0a:00:00:00:00:05 10.0.0.5\"",
    ]);
    next_update(&mut events).await;
    let cached = cached_port(&client, "vm1").unwrap();
    assert_eq!(
        cached.addresses,
        BTreeSet::from(["0a:00:00:00:00:06 10.0.0.6".to_owned()])
    );
    // Optional columns carry the new value, not a difference: change one, then clear it.
    server.nbctl(&[
        "set",
        "Logical_Switch_Port",
        "vm1",
        "tag_request=5",
        "enabled=false",
    ]);
    next_update(&mut events).await;
    server.nbctl(&[
        "set",
        "Logical_Switch_Port",
        "vm1",
        "tag_request=7",
        "enabled=true",
    ]);
    next_update(&mut events).await;
    let cached = cached_port(&client, "vm1").unwrap();
    assert_eq!((cached.tag_request, cached.enabled), (Some(7), Some(true)));
    server.nbctl(&[
        "clear",
        "Logical_Switch_Port",
        "vm1",
        "tag_request",
        "enabled",
    ]);
    next_update(&mut events).await;
    let cached = cached_port(&client, "vm1").unwrap();
    assert_eq!((cached.tag_request, cached.enabled), (None, None));

    // The cache equals what the server holds.
    let listed = server.nbctl(&["get", "Logical_Switch_Port", "vm1", "addresses"]);
    assert_eq!(listed.trim(), r#"["0a:00:00:00:00:06 10.0.0.6"]"#);
}

#[tokio::test]
async fn a_thousand_concurrent_transactions_are_each_read_your_writes() {
    const PORTS: usize = 1_000;
    let server = Standalone::start();
    let client = connect(&server.unix).await;
    let switch = create_switch(&client, "ls1").await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..PORTS {
        let client = client.clone();
        tasks.spawn(async move {
            let name = format!("p{i}");
            let lsp = port(
                &name,
                &format!(
                    "0a:00:00:00:{:02x}:{:02x} 10.0.{}.{}",
                    i / 256,
                    i % 256,
                    i / 256,
                    i % 256
                ),
                &format!("ns/{name}"),
            );
            let uuid = client
                .transact(&add_switch_port(switch, &lsp, None))
                .await
                .unwrap()[0]
                .uuid()
                .unwrap();
            let cached = cached_port(&client, &name).expect("read-your-writes");
            assert_eq!(cached.uuid, uuid);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(client.cache().read().len(LogicalSwitchPort::TABLE), PORTS);
    assert_eq!(server.nbctl(&["lsp-list", "ls1"]).lines().count(), PORTS);
    let metrics = client.metrics();
    assert!(metrics.txn_committed >= PORTS as u64, "{metrics:?}");
}
