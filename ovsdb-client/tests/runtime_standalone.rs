//! The runtime (session, monitor, cache, transactions) against a real standalone
//! ovsdb-server with the OVN Northbound schema.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ovsdb_client::Client;
use ovsdb_client::protocol::datum::{Atom, Uuid, Value};
use ovsdb_client::protocol::operation::{
    Condition, Insert, Mutate, Mutation, Operation, OperationResult,
};
use ovsdb_client::protocol::row::Row;
use ovsdb_client::runtime::cache::Event;
use ovsdb_client::runtime::transaction::{wait_absent, wait_unchanged};
use support::{NB_DB, Standalone};
use tokio::time::{Instant, timeout};

const LS: &str = "Logical_Switch";
const LSP: &str = "Logical_Switch_Port";

/// Waits (bounded) for an event matching `pred`, failing the test on timeout.
async fn expect_event(
    events: &mut ovsdb_client::runtime::cache::EventStream,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no event: {what}"))
            .expect("stream open");
        if pred(&event) {
            return event;
        }
    }
}

fn string(s: &str) -> Value {
    Atom::string(s).into()
}

fn inserted(results: &[OperationResult], index: usize) -> Uuid {
    results[index].uuid().expect("insert result")
}

#[tokio::test]
async fn cache_and_events_follow_nbctl_and_client_writes() {
    let nb = Standalone::start();
    let client = Client::builder(&nb.unix, NB_DB)
        .index(LSP, &["external_ids:pod"])
        .connect()
        .await
        .expect("connect");
    let mut events = client.subscribe();

    // A port made by ovn-nbctl shows up in the cache, the event stream and the
    // client's map-key index.
    nb.nbctl(&["ls-add", "ls1"]);
    nb.nbctl(&[
        "lsp-add",
        "ls1",
        "p1",
        "--",
        "lsp-set-addresses",
        "p1",
        "0a:00:00:00:00:01 10.0.0.1",
        "--",
        "set",
        "logical_switch_port",
        "p1",
        "external_ids:pod=ns/a",
        "external_ids:vendor=pk",
    ]);
    let Event::Insert { row, .. } = expect_event(
        &mut events,
        "p1 insert",
        |e| matches!(e, Event::Insert { table, .. } if &**table == LSP),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(row.get("name"), Some(&string("p1")));
    assert_eq!(
        row.get("addresses"),
        Some(&Value::set(["0a:00:00:00:00:01 10.0.0.1"])),
        "one-element set"
    );
    let by_pod = client
        .cache()
        .find(LSP, &["external_ids:pod"], &[string("ns/a")])
        .expect("index declared");
    assert_eq!(by_pod.len(), 1);
    let p1 = by_pod[0].uuid().unwrap();

    // Removing one map key arrives as a map diff; the index follows it.
    nb.nbctl(&["remove", "logical_switch_port", "p1", "external_ids", "pod"]);
    expect_event(
        &mut events,
        "p1 update",
        |e| matches!(e, Event::Update { table, .. } if &**table == LSP),
    )
    .await;
    let row = client.cache().get(LSP, p1).unwrap();
    assert_eq!(
        row.get("external_ids"),
        Some(&Value::map([("vendor", "pk")]))
    );
    assert!(
        client
            .cache()
            .find(LSP, &["external_ids:pod"], &[string("ns/a")])
            .unwrap()
            .is_empty()
    );

    // A port made by the client: insert + mutate of the parent in one
    // transaction; the cache shows it as soon as transact returns.
    let ls1 = client
        .cache()
        .rows(LS)
        .iter()
        .find(|r| r.get("name") == Some(&string("ls1")))
        .and_then(|r| r.uuid())
        .expect("ls1 cached");
    let ops: Vec<Operation> = vec![
        Insert::new(
            LSP,
            Row::new()
                .with("name", Atom::string("p2"))
                .with("addresses", Value::set(["0a:00:00:00:00:02 10.0.0.2"]))
                .with("external_ids", Value::map([("pod", "ns/b")])),
        )
        .uuid_name("p2")
        .into(),
        Mutate::new(LS)
            .filter(Condition::uuid_is(ls1))
            .mutation(Mutation::insert(
                "ports",
                Value::set([Atom::named_uuid("p2")]),
            ))
            .into(),
    ];
    let results = client.transact(&ops).await.expect("transact");
    let p2 = inserted(&results, 0);
    let cached = client.cache().get(LSP, p2).expect("read-your-writes");
    assert_eq!(
        cached.get("external_ids"),
        Some(&Value::map([("pod", "ns/b")]))
    );
    let ls = client.cache().get(LS, ls1).unwrap();
    assert_eq!(ls.get("ports").unwrap().set_elements().len(), 2);

    let show = nb.nbctl(&["show"]);
    assert!(show.contains("port p2"), "{show}");
    assert!(show.contains("0a:00:00:00:00:02 10.0.0.2"), "{show}");
    assert_eq!(
        nb.nbctl(&["get", "logical_switch_port", "p2", "external_ids:pod"])
            .trim(),
        "\"ns/b\""
    );

    // ovn-nbctl deleting the port: the client sees the delete and the index empties.
    nb.nbctl(&["lsp-del", "p2"]);
    expect_event(
        &mut events,
        "p2 delete",
        |e| matches!(e, Event::Delete { table, .. } if &**table == LSP),
    )
    .await;
    assert!(client.cache().get(LSP, p2).is_none());
    assert!(
        client
            .cache()
            .find(LSP, &["external_ids:pod"], &[string("ns/b")])
            .unwrap()
            .is_empty()
    );
    let m = client.metrics();
    assert_eq!((m.connects, m.full_resyncs), (1, 1));
}

#[tokio::test]
async fn thousand_concurrent_transactions_each_read_their_own_write() {
    let nb = Standalone::start();
    let client = Client::builder(&nb.tcp, NB_DB)
        .connect()
        .await
        .expect("connect");
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let op = Insert::new(LS, Row::new().with("name", Atom::string(format!("ls-{i}"))));
                let results = client.transact(&[op.into()]).await.expect("transact");
                let uuid = inserted(&results, 0);
                client.cache().get(LS, uuid).is_some()
            })
        })
        .collect();
    let mut visible = 0;
    for task in tasks {
        visible += usize::from(task.await.unwrap());
    }
    assert_eq!(
        visible, 1000,
        "every transaction saw its row in the cache on return"
    );
    assert_eq!(client.cache().read().len(LS), 1000);
    let listed = nb.nbctl(&["ls-list"]).lines().count();
    assert_eq!(listed, 1000);
    let m = client.metrics();
    assert_eq!(m.txn_committed, 1000);
    assert_eq!(m.latency_count, 1000);
}

#[tokio::test]
async fn idle_tcp_session_survives_the_servers_probe_and_ours() {
    let nb = Standalone::start();
    // Only the server probes (every 5 s); the client must answer its echo.
    let answering = Client::builder(&nb.tcp, NB_DB)
        .probe_interval(None)
        .connect()
        .await
        .expect("connect");
    // The client probes every second; the server answers.
    let probing = Client::builder(&nb.tcp, NB_DB)
        .probe_interval(Some(Duration::from_secs(1)))
        .connect()
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_secs(12)).await;
    for client in [&answering, &probing] {
        client.echo().await.expect("still connected");
        let m = client.metrics();
        assert_eq!((m.connects, m.disconnects), (1, 0), "{m:?}");
    }
}

#[tokio::test]
async fn probe_drops_a_hung_server_and_the_session_recovers() {
    let nb = Standalone::start();
    let client = Client::builder(&nb.tcp, NB_DB)
        .probe_interval(Some(Duration::from_millis(300)))
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect");
    let pid = nb.server.pid() as libc::pid_t;
    // SAFETY: signals a child process this test started, by its pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let stalled = Instant::now();
    while client.is_connected() {
        assert!(
            stalled.elapsed() < Duration::from_secs(5),
            "probe never fired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A transaction while the server hangs waits for the session, bounded by its deadline.
    let op: Operation = Insert::new(LS, Row::new().with("name", Atom::string("late"))).into();
    let err = client
        .transact_until(
            std::slice::from_ref(&op),
            Instant::now() + Duration::from_millis(500),
        )
        .await
        .unwrap_err();
    assert!(err.is_retriable(), "{err}");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    client
        .wait_connected(Duration::from_secs(20))
        .await
        .expect("reconnected");
    let results = client
        .transact(&[op])
        .await
        .expect("transact after recovery");
    assert!(client.cache().get(LS, inserted(&results, 0)).is_some());
    let m = client.metrics();
    assert!(m.disconnects >= 1 && m.connects >= 2, "{m:?}");
}

#[tokio::test]
async fn reconnect_to_a_standalone_server_reloads_the_whole_cache() {
    let nb = Standalone::start();
    nb.nbctl(&["ls-add", "before"]);
    let client = Client::builder(&nb.unix, NB_DB)
        .connect()
        .await
        .expect("connect");
    let mut events = client.subscribe();
    client.reconnect("test");
    expect_event(&mut events, "resync", |e| {
        matches!(e, Event::Synced { full: true })
    })
    .await;
    // Standalone servers keep no transaction history: every resume is found=false.
    let m = client.metrics();
    assert_eq!(
        (m.full_resyncs, m.incremental_resyncs, m.connects),
        (2, 0, 2),
        "{m:?}"
    );
    assert_eq!(client.cache().read().len(LS), 1);
}

#[tokio::test]
async fn optimistic_retry_rebuilds_from_the_refreshed_cache() {
    let nb = Standalone::start();
    nb.nbctl(&["ls-add", "sw"]);
    let client = Client::builder(&nb.unix, NB_DB)
        .connect()
        .await
        .expect("connect");
    let sw = client.cache().rows(LS)[0].clone();
    // A stale precondition: another writer changes the switch after we read it.
    nb.nbctl(&[
        "set",
        "logical_switch",
        "sw",
        "other_config:subnet=10.0.0.0/24",
    ]);
    let stale = wait_unchanged(LS, &sw, &["other_config"]).unwrap();
    let err = client.transact(&[stale]).await.unwrap_err();
    assert!(err.is_precondition_failed(), "{err}");

    // The retrying helper: another writer commits between our read and our
    // commit on the first attempt; the retry rebuilds from the refreshed cache.
    let builds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = builds.clone();
    let results = client
        .transact_with_retry(Instant::now() + Duration::from_secs(10), |view| {
            let attempt = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let row = view.rows(LS)[0].clone();
            if attempt == 0 {
                nb.nbctl(&[
                    "set",
                    "logical_switch",
                    "sw",
                    "other_config:subnet=10.1.0.0/24",
                ]);
            }
            let mut ops: Vec<Operation> = wait_unchanged(LS, &row, &["other_config"])
                .into_iter()
                .collect();
            ops.push(
                Mutate::new(LS)
                    .filter(Condition::uuid_is(row.uuid().unwrap()))
                    .mutation(Mutation::insert(
                        "other_config",
                        Value::map([("exclude_ips", "10.1.0.1")]),
                    ))
                    .into(),
            );
            ops
        })
        .await
        .expect("retry succeeds");
    assert_eq!(results[1].count(), Some(1));
    assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(client.metrics().txn_retries, 1);
    let config = nb.nbctl(&["get", "logical_switch", "sw", "other_config"]);
    assert!(
        config.contains("10.1.0.0/24") && config.contains("exclude_ips"),
        "{config}"
    );

    // wait-for-absence makes a replayed create fail instead of duplicating.
    let create = |name: &str| -> Vec<Operation> {
        vec![
            wait_absent(LS, vec![Condition::eq("name", Atom::string(name))]),
            Insert::new(LS, Row::new().with("name", Atom::string(name))).into(),
        ]
    };
    client
        .transact(&create("once"))
        .await
        .expect("first create");
    let replay = client.transact(&create("once")).await.unwrap_err();
    assert!(replay.is_precondition_failed(), "{replay}");
    assert_eq!(nb.nbctl(&["ls-list"]).matches("(once)").count(), 1);
}

#[tokio::test]
async fn monitoring_selected_columns_and_a_bad_table_is_a_clear_error() {
    let nb = Standalone::start();
    nb.nbctl(&[
        "ls-add",
        "cols",
        "--",
        "set",
        "logical_switch",
        "cols",
        "other_config:a=b",
    ]);
    let client = Client::builder(&nb.unix, NB_DB)
        .monitor(LS, &["name"])
        .connect()
        .await
        .expect("connect");
    let row = client.cache().rows(LS)[0].clone();
    assert_eq!(row.get("name"), Some(&string("cols")));
    assert!(
        row.get("other_config").is_none(),
        "only the monitored column"
    );
    assert!(client.cache().rows(LSP).is_empty());

    let err = Client::builder(&nb.unix, NB_DB)
        .monitor("No_Such_Table", &[])
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no table No_Such_Table"), "{err}");
}

#[tokio::test]
async fn lagging_subscriber_gets_an_explicit_signal() {
    let nb = Standalone::start();
    let client = Client::builder(&nb.unix, NB_DB)
        .event_capacity(8)
        .connect()
        .await
        .expect("connect");
    let mut events = client.subscribe();
    for i in 0..20 {
        let op = Insert::new(LS, Row::new().with("name", Atom::string(format!("l{i}"))));
        client.transact(&[op.into()]).await.unwrap();
    }
    let first = timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    let Event::Lagged { missed } = first else {
        panic!("expected Lagged first, got {first:?}")
    };
    assert_eq!(missed, 12);
    assert_eq!(
        client.cache().read().len(LS),
        20,
        "the cache holds everything missed"
    );
    assert_eq!(client.metrics().lagged_events, 12);
}
