//! The `Client` against a real three-server raft cluster of the NB database on loopback:
//! leader-only selection, a `kill -9` of the leader under 1,000 in-flight port creations with
//! idempotent retries, and `monitor_cond_since` resume with `found=true` and `found=false`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ovsdb_client::Client;
use ovsdb_client::Error;
use ovsdb_client::protocol::datum::{Uuid, Value};
use ovsdb_client::protocol::operation::{Condition, Insert, Wait};
use ovsdb_client::protocol::table::Table;
use ovsdb_client::runtime::cache::{Event, EventStream};
use ovsdb_client::runtime::transport::Remote;
use ovsdb_client::tables::nb::{LogicalSwitch, LogicalSwitchPort, add_switch_port};
use support::{Cluster, NB_DB};

const PORTS: usize = 1_000;

fn fast_reconnect(builder: ovsdb_client::ClientBuilder) -> ovsdb_client::ClientBuilder {
    builder
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .connect_timeout(Duration::from_secs(30))
        .request_timeout(Duration::from_secs(60))
}

fn port(i: usize) -> LogicalSwitchPort {
    let name = format!("pod-{i}");
    LogicalSwitchPort {
        addresses: BTreeSet::from([format!(
            "0a:58:0a:10:{:02x}:{:02x} 10.16.{}.{}",
            i / 256,
            i % 256,
            i / 256,
            i % 256
        )]),
        external_ids: BTreeMap::from([("pod".to_owned(), format!("ns/{name}"))]),
        name,
        ..Default::default()
    }
}

/// Creating a port is safe to replay: the `wait` fails with `timed out` when a port of that name
/// already exists, i.e. when an earlier attempt committed after all.
fn create_port_idempotently(
    switch: Uuid,
    port: &LogicalSwitchPort,
) -> Vec<ovsdb_client::protocol::operation::Operation> {
    let absent = Wait::absent(
        LogicalSwitchPort::TABLE,
        vec![Condition::eq("name", port.name.as_str())],
    );
    add_switch_port(switch, port, Some(absent))
}

async fn create_switch(client: &Client, name: &str) -> Uuid {
    let switch = LogicalSwitch {
        name: name.into(),
        ..Default::default()
    };
    client
        .transact(&[Insert::new(LogicalSwitch::TABLE, switch.to_row()).into()])
        .await
        .unwrap()[0]
        .uuid()
        .unwrap()
}

fn member_remote(cluster: &Cluster, index: usize) -> Remote {
    Remote::parse(&cluster.members[index].remote()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_only_lands_on_the_leader() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader();

    // Remotes are shuffled: whatever order they are tried in, the client ends on the leader.
    for _ in 0..5 {
        let client = fast_reconnect(Client::builder(&cluster.remotes(), NB_DB))
            .connect()
            .await
            .unwrap();
        assert_eq!(
            client.connected_remote(),
            Some(member_remote(&cluster, leader))
        );
        let server = client.server_database().expect("_Server.Database row");
        assert!(
            server.is_clustered() && server.leader && server.connected,
            "{server:?}"
        );
        create_switch(&client, "lands-on-leader").await;
    }
    let listed = support::nbctl(&cluster.members[leader].unix(), &["ls-list"]);
    assert_eq!(listed.matches("lands-on-leader").count(), 5, "{listed}");

    // A follower alone is refused in leader-only mode, and accepted without it.
    let follower = (leader + 1) % 3;
    let only_follower = cluster.members[follower].remote();
    let refused = Client::builder(&only_follower, NB_DB)
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await;
    match refused {
        Err(Error::NotConnected { last_error, .. }) => {
            let why = last_error.unwrap_or_default();
            assert!(why.contains("not the cluster leader"), "{why}");
        }
        other => panic!("a follower was accepted in leader-only mode: {other:?}"),
    }
    let client = Client::builder(&only_follower, NB_DB)
        .leader_only(false)
        .connect()
        .await
        .unwrap();
    assert_eq!(
        client.connected_remote(),
        Some(member_remote(&cluster, follower))
    );
    assert!(!client.server_database().unwrap().leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_a_thousand_in_flight_transactions_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::start(3);
    let old_leader = cluster.leader();
    let client = fast_reconnect(Client::builder(&cluster.remotes(), NB_DB))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        client.connected_remote(),
        Some(member_remote(&cluster, old_leader))
    );
    let switch = create_switch(&client, "ls1").await;
    let mut events = client.subscribe();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..PORTS {
        let client = client.clone();
        tasks.spawn(async move {
            let outcome = client
                .transact(&create_port_idempotently(switch, &port(i)))
                .await;
            (i, outcome)
        });
    }
    // Kill the leader once the first commits show up, with most transactions still in flight.
    wait_for_inserts(&mut events, 20).await;
    cluster.kill(old_leader);

    let mut committed = 0;
    let mut to_retry = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (i, outcome) = done.unwrap();
        match outcome {
            Ok(_) => committed += 1,
            Err(e) if e.is_retriable() => to_retry.push(i),
            Err(e) => panic!("port {i}: neither committed nor retriable: {e}"),
        }
    }
    assert!(
        !to_retry.is_empty(),
        "the kill hit no transaction ({committed} committed): nothing was proven"
    );
    assert!(committed > 0, "no transaction committed before the kill");

    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, old_leader);
    client
        .wait_connected(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        client.connected_remote(),
        Some(member_remote(&cluster, new_leader))
    );

    // Retry the uncertain ones; a retry whose first attempt did commit finds the port there.
    let mut already_there = 0;
    for &i in &to_retry {
        match client
            .transact(&create_port_idempotently(switch, &port(i)))
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_precondition_failed() => already_there += 1,
            Err(e) => panic!("retry of port {i} failed: {e}"),
        }
    }
    eprintln!(
        "{committed} committed at once, {} retried ({already_there} had committed before the kill)",
        to_retry.len()
    );

    let names = cluster.nbctl(&["--bare", "--columns=name", "list", "Logical_Switch_Port"]);
    let names: Vec<&str> = names.lines().filter(|l| !l.is_empty()).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(names.len(), PORTS, "ports on the server");
    assert_eq!(unique.len(), PORTS, "duplicated port names");
    assert_eq!(
        unique,
        (0..PORTS)
            .map(|i| port(i).name)
            .collect::<BTreeSet<_>>()
            .iter()
            .map(String::as_str)
            .collect()
    );
    let ports_of_switch = cluster.nbctl(&["lsp-list", "ls1"]);
    assert_eq!(ports_of_switch.lines().count(), PORTS);
    assert_eq!(
        client.cache().read().len(LogicalSwitchPort::TABLE),
        PORTS,
        "client cache"
    );
    assert!(client.metrics().connects >= 2, "{:?}", client.metrics());
}

async fn wait_for_inserts(events: &mut EventStream, count: usize) {
    let mut seen = 0;
    while seen < count {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Some(Event::Insert { table, .. })) if &*table == LogicalSwitchPort::TABLE => {
                seen += 1
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("only {seen} ports committed"),
        }
    }
}

/// Events until the next `Synced`, and whether that resync was full.
async fn events_until_synced(events: &mut EventStream) -> (Vec<Event>, bool) {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Some(Event::Synced { full })) => return (seen, full),
            Ok(Some(Event::Lagged { missed })) => panic!("lagged by {missed}"),
            Ok(Some(event)) => seen.push(event),
            Ok(None) | Err(_) => panic!("no resync; saw {seen:?}"),
        }
    }
}

fn switch_names(client: &Client) -> BTreeSet<String> {
    client
        .cache()
        .list_typed::<LogicalSwitch>()
        .into_iter()
        .map(|ls| ls.unwrap().name)
        .collect()
}

fn server_switch_names(cluster: &Cluster) -> BTreeSet<String> {
    cluster
        .nbctl(&["--bare", "--columns=name", "list", "Logical_Switch"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_cond_since_resumes_with_found_true_and_reloads_with_found_false() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    let follower = (leader + 1) % 3;
    // A database large enough that one small transaction stays in the server's history (it
    // keeps at most as many atoms as the database holds).
    let mut create: Vec<String> = Vec::new();
    for i in 0..50 {
        create.extend(["--".into(), "ls-add".into(), format!("base-{i}")]);
    }
    let create: Vec<&str> = create.iter().skip(1).map(String::as_str).collect();
    cluster.nbctl(&create);

    // The client reads from the follower only, so killing it forces a reconnect to it.
    let client = fast_reconnect(
        Client::builder(&cluster.members[follower].unix(), NB_DB).leader_only(false),
    )
    .connect()
    .await
    .unwrap();
    assert_eq!(switch_names(&client).len(), 50);
    let mut events = client.subscribe();
    let before = client.metrics();

    // found=true: one change while the client is away comes back as a delta.
    cluster.kill(follower);
    cluster.nbctl(&["ls-add", "while-away-1"]);
    cluster.restart(follower);
    let (changes, full) = events_until_synced(&mut events).await;
    assert!(
        !full,
        "expected an incremental resume (found=true); events: {changes:?}"
    );
    let inserted: Vec<_> = changes
        .iter()
        .filter(|e| matches!(e, Event::Insert { .. }))
        .collect();
    assert_eq!(
        inserted.len(),
        1,
        "only the missed row arrives: {changes:?}"
    );
    assert!(
        changes.iter().all(|e| !matches!(e, Event::Delete { .. })),
        "{changes:?}"
    );
    assert_eq!(switch_names(&client), server_switch_names(&cluster));
    let resumed = client.metrics();
    assert_eq!(
        resumed.incremental_resyncs,
        before.incremental_resyncs + 1,
        "{resumed:?}"
    );
    assert_eq!(resumed.full_resyncs, before.full_resyncs);

    // found=false: more changes than the history holds; the cache is replaced, and rows that
    // vanished meanwhile are reported deleted.
    cluster.kill(follower);
    for i in 0..20 {
        cluster.nbctl(&["ls-del", &format!("base-{i}")]);
    }
    for i in 0..110 {
        cluster.nbctl(&["ls-add", &format!("later-{i}")]);
    }
    cluster.restart(follower);
    let (changes, full) = events_until_synced(&mut events).await;
    assert!(full, "expected a full reload (found=false)");
    let deleted: BTreeSet<String> = changes
        .iter()
        .filter_map(|e| match e {
            Event::Delete { table, row } if &**table == LogicalSwitch::TABLE => row
                .get("name")
                .and_then(Value::as_atom)
                .and_then(|a| a.as_str())
                .map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(
        deleted,
        (0..20)
            .map(|i| format!("base-{i}"))
            .collect::<BTreeSet<_>>()
    );
    assert_eq!(switch_names(&client), server_switch_names(&cluster));
    let reloaded = client.metrics();
    assert_eq!(
        reloaded.full_resyncs,
        resumed.full_resyncs + 1,
        "{reloaded:?}"
    );
}
